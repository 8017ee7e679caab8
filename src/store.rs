//! `DagStore` over the catalog tables `causal.dag_entries` and `causal.dag_entry_tags`, so the
//! extension runs the same DAG algorithms as `causal-core` does in memory. Nodes and entries
//! read during one call are cached.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::prelude::*;
use pgrx::spi;

use causal_core::dag::{ChainId, Clock, DagStore, MetaTag, Node, NodeId, Seq, StoreError};
use causal_core::entry::{Entry, Header, Meta};
use causal_core::Hash;

use crate::spi_util::get_opt;

/// One group's DAG, stored in the catalog.
pub struct SpiStore {
    group: String,
    nodes: RefCell<HashMap<NodeId, Rc<Node>>>,
    entries: RefCell<HashMap<NodeId, Rc<Entry>>>,
}

fn backend(e: spi::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

fn to_i32(n: u32) -> Result<i32, StoreError> {
    i32::try_from(n).map_err(|_| StoreError::Full(format!("{n} does not fit the catalog's integer columns")))
}

fn to_u32(n: i32) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|_| corrupt(format!("negative id {n}")))
}

/// The catalog spelling of a metadata tag.
pub fn tag_text(tag: &MetaTag) -> String {
    match &tag.value {
        Some(v) => format!("{}={v}", tag.key),
        None => tag.key.clone(),
    }
}

impl SpiStore {
    pub fn new(group: &str) -> SpiStore {
        SpiStore { group: group.to_string(), nodes: RefCell::default(), entries: RefCell::default() }
    }

    fn count(&self, sql: &str, args: &[pgrx::datum::DatumWithOid]) -> Result<u32, StoreError> {
        let n = get_opt::<i64>(sql, args).map_err(backend)?.unwrap_or(0);
        u32::try_from(n).map_err(|_| corrupt(format!("count {n} out of range")))
    }
}

impl DagStore for SpiStore {
    type NodeRef<'a> = Rc<Node>;
    type EntryRef<'a> = Rc<Entry>;

    fn len(&self) -> Result<u64, StoreError> {
        Ok(u64::from(self.count(
            "SELECT coalesce(max(node_id) + 1, 0)::bigint FROM causal.dag_entries WHERE group_id = $1",
            &[self.group.clone().into()],
        )?))
    }

    fn node_id(&self, hash: &Hash) -> Result<Option<NodeId>, StoreError> {
        get_opt::<i32>(
            "SELECT node_id FROM causal.dag_entries WHERE group_id = $1 AND hash = $2",
            &[self.group.clone().into(), hash.to_b64().into()],
        )
        .map_err(backend)?
        .map(to_u32)
        .transpose()
    }

    fn node(&self, id: NodeId) -> Result<Rc<Node>, StoreError> {
        if let Some(n) = self.nodes.borrow().get(&id) {
            return Ok(n.clone());
        }
        let row = Spi::connect(|client| {
            let mut rows = client.select(
                "SELECT hash, chain, seq, preds, clock FROM causal.dag_entries WHERE group_id = $1 AND node_id = $2",
                Some(1),
                &[self.group.clone().into(), to_i32(id).map_err(|_| spi::Error::InvalidPosition)?.into()],
            )?;
            match rows.next() {
                None => Ok(None),
                Some(r) => Ok(Some((
                    r.get::<String>(1)?,
                    r.get::<i32>(2)?,
                    r.get::<i32>(3)?,
                    r.get::<Vec<i32>>(4)?,
                    r.get::<Vec<i32>>(5)?,
                ))),
            }
        })
        .map_err(backend)?;
        let Some((hash, chain, seq, Some(preds), Some(clock))) = row else {
            return Err(corrupt(format!("node {id} of group {} is missing", self.group)));
        };
        let node = Rc::new(Node {
            hash: hash.and_then(|h| h.parse().ok()).ok_or_else(|| corrupt(format!("node {id} has a bad hash")))?,
            chain: to_u32(chain.ok_or_else(|| corrupt("chain is NULL"))?)?,
            seq: to_u32(seq.ok_or_else(|| corrupt("seq is NULL"))?)?,
            preds: preds.into_iter().map(to_u32).collect::<Result<_, _>>()?,
            clock: Clock(clock.into_iter().map(to_u32).collect::<Result<_, _>>()?),
        });
        self.nodes.borrow_mut().insert(id, node.clone());
        Ok(node)
    }

    fn entry(&self, id: NodeId) -> Result<Rc<Entry>, StoreError> {
        if let Some(e) = self.entries.borrow().get(&id) {
            return Ok(e.clone());
        }
        let row = Spi::connect(|client| {
            let mut rows = client.select(
                "SELECT hash, prev, payload, coalesce((SELECT array_agg(t.tag) FROM causal.dag_entry_tags t \
                   WHERE t.group_id = e.group_id AND t.chain = e.chain AND t.seq = e.seq), '{}') \
                 FROM causal.dag_entries e WHERE group_id = $1 AND node_id = $2",
                Some(1),
                &[self.group.clone().into(), to_i32(id).map_err(|_| spi::Error::InvalidPosition)?.into()],
            )?;
            match rows.next() {
                None => Ok(None),
                Some(r) => Ok(Some((
                    r.get::<String>(1)?,
                    r.get::<Vec<String>>(2)?,
                    r.get::<String>(3)?,
                    r.get::<Vec<String>>(4)?,
                ))),
            }
        })
        .map_err(backend)?;
        let Some((Some(hash), Some(prev), Some(payload), tags)) = row else {
            return Err(corrupt(format!("entry {id} of group {} is missing", self.group)));
        };
        let parse = |h: &str| h.parse::<Hash>().map_err(|e| corrupt(e.to_string()));
        let payload_value = causal_core::json::parse(&payload).map_err(|e| corrupt(e.to_string()))?;
        let mut meta = Meta::new();
        for tag in tags.unwrap_or_default() {
            match tag.split_once('=') {
                Some((k, v)) => meta.entry(k.to_string()).or_default().insert(v.to_string()),
                None => meta.entry(tag).or_default().is_empty(),
            };
        }
        let payload_hash = {
            // The payload hash is not stored: recompute it (it is part of the header).
            let alg = crate::group::algorithm_of(&self.group).map_err(|e| corrupt(e.to_string()))?;
            alg.hash_literal(&payload_value).map_err(|e| corrupt(e.to_string()))?
        };
        let entry = Rc::new(Entry {
            hash: parse(&hash)?,
            header: Header { payload_hash, prev: prev.iter().map(|h| parse(h)).collect::<Result<_, _>>()? },
            payload: payload_value,
            meta,
        });
        self.entries.borrow_mut().insert(id, entry.clone());
        Ok(entry)
    }

    fn chain_count(&self) -> Result<ChainId, StoreError> {
        self.count(
            "SELECT coalesce(max(chain) + 1, 0)::bigint FROM causal.dag_entries WHERE group_id = $1",
            &[self.group.clone().into()],
        )
    }

    fn chain_len(&self, chain: ChainId) -> Result<Seq, StoreError> {
        self.count(
            "SELECT coalesce(max(seq), 0)::bigint FROM causal.dag_entries WHERE group_id = $1 AND chain = $2",
            &[self.group.clone().into(), to_i32(chain)?.into()],
        )
    }

    fn chain_member(&self, chain: ChainId, seq: Seq) -> Result<NodeId, StoreError> {
        get_opt::<i32>(
            "SELECT node_id FROM causal.dag_entries WHERE group_id = $1 AND chain = $2 AND seq = $3",
            &[self.group.clone().into(), to_i32(chain)?.into(), to_i32(seq)?.into()],
        )
        .map_err(backend)?
        .map(to_u32)
        .transpose()?
        .ok_or_else(|| corrupt(format!("chain member {chain}:{seq} of group {} is missing", self.group)))
    }

    fn latest_tagged(&self, tag: &MetaTag, chain: ChainId, lo: Seq, hi: Seq) -> Result<Option<Seq>, StoreError> {
        get_opt::<i32>(
            "SELECT max(seq) FROM causal.dag_entry_tags WHERE group_id = $1 AND tag = $2 AND chain = $3 AND seq BETWEEN $4 AND $5",
            &[self.group.clone().into(), tag_text(tag).into(), to_i32(chain)?.into(), to_i32(lo)?.into(), to_i32(hi)?.into()],
        )
        .map_err(backend)?
        .map(to_u32)
        .transpose()
    }

    fn frontier(&self) -> Result<Vec<NodeId>, StoreError> {
        let ids = get_opt::<Vec<i32>>(
            "SELECT coalesce(array_agg(node_id ORDER BY node_id), '{}') FROM causal.dag_entries WHERE group_id = $1 AND is_tip",
            &[self.group.clone().into()],
        )
        .map_err(backend)?
        .unwrap_or_default();
        ids.into_iter().map(to_u32).collect()
    }

    fn insert(&mut self, node: Node, entry: Entry) -> Result<NodeId, StoreError> {
        let id = u32::try_from(self.len()?).map_err(|_| StoreError::Full("too many entries".into()))?;
        let payload = serde_json::to_string(&entry.payload).map_err(|e| corrupt(e.to_string()))?;
        let prev: Vec<String> = entry.header.prev.iter().map(Hash::to_b64).collect();
        let preds: Vec<i32> = node.preds.iter().map(|p| to_i32(*p)).collect::<Result<_, _>>()?;
        let clock: Vec<i32> = node.clock.0.iter().map(|s| to_i32(*s)).collect::<Result<_, _>>()?;
        Spi::run_with_args(
            "INSERT INTO causal.dag_entries (group_id, node_id, hash, prev, payload, chain, seq, preds, clock) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                self.group.clone().into(),
                to_i32(id)?.into(),
                node.hash.to_b64().into(),
                prev.into(),
                payload.into(),
                to_i32(node.chain)?.into(),
                to_i32(node.seq)?.into(),
                preds.clone().into(),
                clock.into(),
            ],
        )
        .map_err(backend)?;
        if !preds.is_empty() {
            Spi::run_with_args(
                "UPDATE causal.dag_entries SET is_tip = false WHERE group_id = $1 AND node_id = ANY($2) AND is_tip",
                &[self.group.clone().into(), preds.into()],
            )
            .map_err(backend)?;
        }
        for (key, values) in &entry.meta {
            let mut tags = vec![key.clone()];
            tags.extend(values.iter().map(|v| format!("{key}={v}")));
            for tag in tags {
                Spi::run_with_args(
                    "INSERT INTO causal.dag_entry_tags (group_id, tag, chain, seq) VALUES ($1, $2, $3, $4)",
                    &[self.group.clone().into(), tag.into(), to_i32(node.chain)?.into(), to_i32(node.seq)?.into()],
                )
                .map_err(backend)?;
            }
        }
        self.nodes.borrow_mut().insert(id, Rc::new(node));
        Ok(id)
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use causal_core::entry::{meta, Position};
    use causal_core::{Dag, HashAlgorithm, MemStore, MetaFilter};

    use super::SpiStore;

    /// The same pseudo-random DAG in memory and in the catalog answers every query alike.
    #[pg_test]
    fn spi_store_answers_like_the_memory_store() {
        Spi::run("INSERT INTO causal.group_defs (group_id, name, hash_algorithm) VALUES ('g', 'g', 'sha-256')")
            .unwrap();
        let alg = HashAlgorithm::Sha256;
        let mut mem = Dag::new(MemStore::new(), alg);
        let mut spi = Dag::new(SpiStore::new("g"), alg);
        let mut state: u64 = 0x9e3779b97f4a7c15;
        let mut rand = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut hashes = Vec::new();
        for i in 0..150 {
            let mut chosen = Position::new();
            for _ in 0..(1 + rand(3)) {
                if !hashes.is_empty() {
                    let k = hashes.len() - 1 - rand(hashes.len().min(12));
                    chosen.insert(hashes[k]);
                }
            }
            let prev = mem.minimal_cover(&chosen).unwrap();
            let tag = if i % 5 == 0 { "barrier" } else { "plain" };
            let m = meta([("tag", vec![tag])]);
            let a = mem.append(serde_json::json!({ "n": i }), m.clone(), prev.clone()).unwrap();
            let b = spi.append(serde_json::json!({ "n": i }), m, prev).unwrap();
            assert_eq!(a, b);
            hashes.push(a.hash);
        }
        assert_eq!(mem.frontier().unwrap(), spi.frontier().unwrap());
        let barrier = MetaFilter::tag("tag", "barrier");
        for _ in 0..30 {
            let p: Position = (0..1 + rand(3)).map(|_| hashes[rand(hashes.len())]).collect();
            let q: Position = (0..1 + rand(3)).map(|_| hashes[rand(hashes.len())]).collect();
            assert_eq!(mem.minimal_cover(&p).unwrap(), spi.minimal_cover(&p).unwrap());
            assert_eq!(mem.fork_position(&p, &q).unwrap(), spi.fork_position(&p, &q).unwrap());
            assert_eq!(
                mem.cover_with_filter(&p, &barrier, None).unwrap(),
                spi.cover_with_filter(&p, &barrier, None).unwrap()
            );
            assert_eq!(
                mem.concurrent_cover_with_filter(&p, &q, &barrier, None).unwrap(),
                spi.concurrent_cover_with_filter(&p, &q, &barrier, None).unwrap()
            );
        }
        // A fresh store (no cache) reads back the same entries.
        let fresh = Dag::new(SpiStore::new("g"), alg);
        for h in hashes.iter().step_by(17) {
            assert_eq!(mem.entry(h).unwrap(), fresh.entry(h).unwrap());
        }
    }
}
