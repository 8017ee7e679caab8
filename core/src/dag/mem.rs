//! An in-memory [`DagStore`].

use std::collections::{BTreeSet, HashMap};

use super::store::{ChainId, DagStore, MetaTag, Node, NodeId, Seq, StoreError};
use crate::entry::Entry;
use crate::hash::EntryHash;

/// Keeps everything in vectors and hash maps. Used by tests, benchmarks, the convergence
/// simulator and as a scratch DAG when validating bundles.
#[derive(Default, Debug, Clone)]
pub struct MemStore {
    nodes: Vec<Node>,
    entries: Vec<Entry>,
    ids: HashMap<EntryHash, NodeId>,
    chains: Vec<Vec<NodeId>>,
    tags: HashMap<MetaTag, HashMap<ChainId, Vec<Seq>>>,
    frontier: BTreeSet<NodeId>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Entries in append order (a topological order).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    fn missing(what: &str, id: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt(format!("{what} {id} is not stored"))
    }
}

impl DagStore for MemStore {
    type NodeRef<'a> = &'a Node;
    type EntryRef<'a> = &'a Entry;

    fn len(&self) -> Result<u64, StoreError> {
        Ok(self.nodes.len() as u64)
    }

    fn node_id(&self, hash: &EntryHash) -> Result<Option<NodeId>, StoreError> {
        Ok(self.ids.get(hash).copied())
    }

    fn node(&self, id: NodeId) -> Result<&Node, StoreError> {
        self.nodes.get(id.index()).ok_or_else(|| Self::missing("node", id))
    }

    fn entry(&self, id: NodeId) -> Result<&Entry, StoreError> {
        self.entries.get(id.index()).ok_or_else(|| Self::missing("entry of node", id))
    }

    fn chain_count(&self) -> Result<ChainId, StoreError> {
        Ok(self.chains.len() as ChainId)
    }

    fn chain_len(&self, chain: ChainId) -> Result<Seq, StoreError> {
        Ok(self.chains.get(chain as usize).map_or(0, |c| c.len() as Seq))
    }

    fn chain_member(&self, chain: ChainId, seq: Seq) -> Result<NodeId, StoreError> {
        seq.checked_sub(1)
            .and_then(|i| self.chains.get(chain as usize)?.get(i as usize).copied())
            .ok_or_else(|| Self::missing("chain member", format!("{chain}:{seq}")))
    }

    fn latest_tagged(&self, tag: &MetaTag, chain: ChainId, lo: Seq, hi: Seq) -> Result<Option<Seq>, StoreError> {
        let Some(seqs) = self.tags.get(tag).and_then(|per_chain| per_chain.get(&chain)) else {
            return Ok(None);
        };
        let end = seqs.partition_point(|s| *s <= hi);
        Ok(end.checked_sub(1).map(|i| seqs[i]).filter(|s| *s >= lo))
    }

    fn frontier(&self) -> Result<Vec<NodeId>, StoreError> {
        Ok(self.frontier.iter().copied().collect())
    }

    fn insert(&mut self, node: Node, entry: Entry) -> Result<NodeId, StoreError> {
        let id = NodeId::at(self.nodes.len()).ok_or_else(|| StoreError::Full("more than 2^32 nodes".into()))?;
        let chain = node.chain as usize;
        if chain > self.chains.len() || self.chain_len(node.chain)? + 1 != node.seq {
            return Err(StoreError::Corrupt(format!("node {} does not extend chain {}", node.hash, node.chain)));
        }
        if chain == self.chains.len() {
            self.chains.push(Vec::new());
        }
        self.chains[chain].push(id);
        for (key, values) in &entry.meta {
            let mut tags = vec![MetaTag { key: key.clone(), value: None }];
            tags.extend(values.iter().map(|v| MetaTag { key: key.clone(), value: Some(v.clone()) }));
            for tag in tags {
                self.tags.entry(tag).or_default().entry(node.chain).or_default().push(node.seq);
            }
        }
        for p in &node.preds {
            self.frontier.remove(p);
        }
        self.frontier.insert(id);
        self.ids.insert(node.hash, id);
        self.nodes.push(node);
        self.entries.push(entry);
        Ok(id)
    }
}
