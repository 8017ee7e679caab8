//! `DagStore` over the catalog: `causal.dag_entries`, `causal.dag_entry_tags`, and the running
//! state kept in the group's row of `causal.group_defs` (entry count, chain lengths, frontier,
//! membership version). Every statement runs through a kept plan. Nodes never change once
//! committed, so they are cached for the backend's life; the cache is dropped when a
//! transaction aborts (its nodes, and their ids, are gone).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::pg_sys;
use pgrx::spi;

use causal_core::dag::{links, ChainId, Clock, DagStore, MetaTag, Node, NodeId, Seq, StoreError};
use causal_core::entry::{EncodedEntry, Entry, Header, Meta};
use causal_core::hash::Hash;
use causal_core::membership::{MEMBER_TAG, RULE_TAG, SCHEMA_TAG};
use causal_core::EntryHash;
// The caches' maps hash node ids and entry hashes with foldhash (lookups by hash with SipHash
// were 9% of the engine's time in an import).
use causal_core::{FastMap, FastSet};

use super::entry_row;
use crate::pg::direct::{Cell, Inserter};
use crate::pg::spi::{exec_prepared, get_prepared, run_prepared};

/// One group's cached nodes and the node ids of their hashes.
#[derive(Default)]
struct NodeCache {
    nodes: FastMap<NodeId, Rc<Node>>,
    ids: FastMap<EntryHash, NodeId>,
    /// The first node id stored in each subtransaction that stored any, in order: ids are
    /// given in order, so a subtransaction's entries are those from its mark on.
    marks: Vec<(crate::pg::xact::Kept, NodeId)>,
}

impl NodeCache {
    /// Notes that node `id` is being stored now.
    fn mark(&mut self, id: NodeId) {
        let now = crate::pg::xact::now();
        if self.marks.last().is_none_or(|(s, _)| *s != now) {
            self.marks.push((now, id));
        }
    }

    /// Drops the nodes stored by undone work, and what was read of them.
    fn forget(&mut self, undone: crate::pg::xact::Undone) {
        let Some(from) = self.marks.iter().find(|(s, _)| undone.covers(*s)).map(|(_, id)| *id) else {
            return;
        };
        self.nodes.retain(|id, _| *id < from);
        self.ids.retain(|_, id| *id < from);
        self.marks.retain(|(s, _)| !undone.covers(*s));
    }
}

thread_local! {
    /// Per group number (never reused: a group left and joined again gets a new one). A store
    /// holds its group's cache, so a lookup hashes no group id.
    static CACHES: RefCell<HashMap<i32, Rc<RefCell<NodeCache>>>> = RefCell::new(HashMap::new());
}

/// Forgets the nodes that undone work stored (all cached nodes when a transaction aborts).
/// The caches are changed in place, since a store may still hold one.
pub fn forget(undone: crate::pg::xact::Undone) {
    // Undone work may have raised an authority version, or numbered an author.
    super::authority_version::forget();
    entry_row::forget_authors();
    if undone != crate::pg::xact::Undone::Transaction {
        CACHES.with(|c| {
            for cache in c.borrow().values() {
                if let Ok(mut cache) = cache.try_borrow_mut() {
                    cache.forget(undone);
                }
            }
        });
        return;
    }
    clear_cache();
}

/// Forgets every cached node.
pub fn clear_cache() {
    CACHES.with(|c| {
        for cache in c.borrow().values() {
            if let Ok(mut cache) = cache.try_borrow_mut() {
                *cache = NodeCache::default();
            }
        }
        c.borrow_mut().clear();
    });
}

/// The running state of a group's DAG, as kept in its row.
#[derive(Clone, Debug)]
pub struct GroupState {
    pub entry_count: u32,
    pub chain_lens: Vec<u32>,
    pub frontier: Vec<NodeId>,
    pub authority_version: u32,
    /// How many entries, in node-id order, the reconciliation engine has placed (journal and
    /// `row_meta` are current up to there). Local commits of plain data leave the rest to be
    /// placed later, in a batch ((`replay::catch_up`)).
    pub reconciled_count: u32,
}

/// One group's DAG, stored in the catalog.
pub struct SpiStore {
    group: String,
    /// The group's number (`group_defs.grp`), which keys its rows.
    num: i32,
    cache: Rc<RefCell<NodeCache>>,
    state: RefCell<Option<GroupState>>,
    entries: RefCell<FastMap<NodeId, Rc<Entry>>>,
    /// While set, the running state is kept in memory and written by `write_state` (an import
    /// stores thousands of entries in one transaction; rewriting one row that often is slow),
    /// and new entries' rows wait in `pending` to be written in one statement.
    defer_state: std::cell::Cell<bool>,
    pending: RefCell<PendingRows>,
    /// Hashes known not to be stored (from [`SpiStore::prefetch_ids`]), so asking costs nothing.
    absent: RefCell<FastSet<EntryHash>>,
    /// Where the group's row is, while this store holds it locked ([`SpiStore::lock`]): the
    /// state is written there without SQL.
    locked_row: std::cell::Cell<Option<pg_sys::ItemPointerData>>,
}

/// Entry and tag rows not yet written, column by column (entry rows go in through
/// [`Inserter`], tag rows through one `unnest` insert). Reads find pending entries in the
/// node, id and entry caches; a read that goes to SQL flushes first.
#[derive(Default)]
struct PendingRows {
    node_id: Vec<i32>,
    hash: Vec<EntryHash>,
    /// The predecessors' hashes, written only into a catalog not upgraded yet, whose entry
    /// rows still have them (`shape::dag_entries_have_prev`).
    prev: Vec<Vec<EntryHash>>,
    /// The payload text as stored, and the author's number when taken out of it
    /// (`entry_row::stored_payload`).
    payload: Vec<String>,
    author: Vec<Option<i32>>,
    payload_hash: Vec<Hash>,
    /// Whether the payload hash is the digest of the payload's text (then not stored).
    payload_hash_implied: Vec<bool>,
    chain: Vec<i32>,
    seq: Vec<i32>,
    /// Packed predecessors and clock (0.2.0), or both as arrays (0.1.0).
    links: Vec<Vec<u8>>,
    preds: Vec<Vec<i32>>,
    clock: Vec<Vec<i32>>,
    tag: Vec<String>,
    tag_chain: Vec<i32>,
    tag_seq: Vec<i32>,
}

/// The columns a node read selects, in the catalog at hand (`entry_row::packed`):
/// `node_id, hash, chain, seq` and the packed `links`, or `preds, clock` in a 0.1.0 catalog.
fn node_columns(packed: bool) -> &'static str {
    if packed {
        "node_id, hash, chain, seq, links"
    } else {
        "node_id, hash, chain, seq, preds, clock"
    }
}

/// The columns of [`node_columns`], as read.
struct NodeRow {
    id: Option<i32>,
    hash: Option<Result<EntryHash, String>>,
    chain: Option<i32>,
    seq: Option<i32>,
    links: Result<(Vec<NodeId>, Clock), String>,
}

/// A row of [`node_columns`]`(packed)`; the shape is asked once per statement, not per row.
fn node_row(r: &spi::SpiHeapTupleData<'_>, packed: bool) -> Result<NodeRow, spi::Error> {
    let id: Option<i32> = r.get(1)?;
    let links = if packed {
        match (id, r.get::<&[u8]>(5)?) {
            (Some(id), Some(bytes)) => entry_row::unpack_links(id, bytes).map_err(|e| e.to_string()),
            _ => Err("no links".to_string()),
        }
    } else {
        match (r.get::<Vec<i32>>(5)?, r.get::<Vec<i32>>(6)?) {
            (Some(preds), Some(clock)) => {
                to_u32s(preds).and_then(|preds| Ok((preds, Clock(to_u32s(clock)?)))).map_err(|e| e.to_string())
            }
            _ => Err("no predecessors or clock".to_string()),
        }
    };
    Ok(NodeRow { id, hash: entry_row::read_hash(r, 2, packed)?, chain: r.get(3)?, seq: r.get(4)?, links })
}

fn backend(e: spi::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// Numbers the catalog keeps in int4 columns: counts, chains, sequence numbers and node ids.
trait CatalogInt: Copy + std::fmt::Display {
    fn from_u32(n: u32) -> Self;
    fn as_u32(self) -> u32;
}

impl CatalogInt for u32 {
    fn from_u32(n: u32) -> Self {
        n
    }
    fn as_u32(self) -> u32 {
        self
    }
}

impl CatalogInt for NodeId {
    fn from_u32(n: u32) -> Self {
        NodeId(n)
    }
    fn as_u32(self) -> u32 {
        self.0
    }
}

fn to_i32<N: CatalogInt>(n: N) -> Result<i32, StoreError> {
    i32::try_from(n.as_u32()).map_err(|_| StoreError::Full(format!("{n} does not fit the catalog's integer columns")))
}

fn to_u32<N: CatalogInt>(n: i32) -> Result<N, StoreError> {
    u32::try_from(n).map(N::from_u32).map_err(|_| corrupt(format!("negative id {n}")))
}

fn to_u32s<N: CatalogInt>(v: Vec<i32>) -> Result<Vec<N>, StoreError> {
    v.into_iter().map(to_u32).collect()
}

fn to_i32s<N: CatalogInt>(v: &[N]) -> Result<Vec<i32>, StoreError> {
    v.iter().map(|x| to_i32(*x)).collect()
}

/// The catalog spelling of a metadata tag.
pub fn tag_text(tag: &MetaTag) -> String {
    match &tag.value {
        Some(v) => format!("{}={v}", tag.key),
        None => tag.key.clone(),
    }
}

const STATE_SQL: &str = "SELECT entry_count, chain_lens, frontier, authority_version, reconciled_count \
     FROM causal.group_defs WHERE group_id = $1";
const STATE_LOCK_SQL: &str = "SELECT entry_count, chain_lens, frontier, authority_version, reconciled_count, ctid \
     FROM causal.group_defs WHERE group_id = $1 FOR UPDATE";

/// How many nodes a group's cache keeps between stores. A store begins with the cache its
/// predecessors left and adds every node it reads or stores, so a long-running process (the
/// background worker seals, places and imports for weeks) would otherwise hold every node
/// of the group: about 0.5 KB each, 180 MB after 300k single-row commits. A full cache keeps
/// its newest half (recent history, where the frontier is and what placing reads next).
/// The `#[pg_test]`s run with a small bound, so that they also read through dropped caches.
pub const NODE_CACHE_MAX: usize = if cfg!(feature = "pg_test") { 1_000 } else { 50_000 };

impl SpiStore {
    pub fn new(group: &str, num: i32) -> SpiStore {
        let cache = CACHES.with(|c| Rc::clone(c.borrow_mut().entry(num).or_default()));
        // A store borrows the cache only within its own calls, so none is borrowed here.
        if let Ok(mut c) = cache.try_borrow_mut() {
            if c.nodes.len() > NODE_CACHE_MAX || c.ids.len() > NODE_CACHE_MAX {
                let newest = c.nodes.keys().chain(c.ids.values()).map(|id| id.0).max().unwrap_or(0);
                let keep_from = newest.saturating_sub((NODE_CACHE_MAX / 2) as u32);
                c.nodes.retain(|id, _| id.0 >= keep_from);
                c.ids.retain(|_, id| id.0 >= keep_from);
            }
        }
        SpiStore {
            group: group.to_string(),
            num,
            cache,
            state: RefCell::new(None),
            entries: RefCell::default(),
            defer_state: std::cell::Cell::new(false),
            pending: RefCell::default(),
            absent: RefCell::default(),
            locked_row: std::cell::Cell::new(None),
        }
    }

    fn load_state(&self, sql: &'static str, locking: bool) -> Result<GroupState, StoreError> {
        let row = run_prepared(sql, &[self.group.clone().into()], locking, |mut rows| match rows.next() {
            None => Ok(None),
            Some(r) => {
                if locking {
                    self.locked_row.set(r.get::<pg_sys::ItemPointerData>(6)?);
                }
                Ok(Some((
                    r.get::<i32>(1)?,
                    r.get::<Vec<i32>>(2)?,
                    r.get::<Vec<i32>>(3)?,
                    r.get::<i32>(4)?,
                    r.get::<i32>(5)?,
                )))
            }
        })
        .map_err(backend)?;
        let Some((Some(count), Some(lens), Some(frontier), Some(version), Some(reconciled))) = row else {
            return Err(corrupt(format!("group {} has no state row", self.group)));
        };
        Ok(GroupState {
            entry_count: to_u32(count)?,
            chain_lens: to_u32s(lens)?,
            frontier: to_u32s(frontier)?,
            authority_version: to_u32(version)?,
            reconciled_count: to_u32(reconciled)?,
        })
    }

    /// Records that `hash` is not stored, so the duplicate check of an append costs no query.
    pub fn assume_absent(&self, hash: EntryHash) {
        self.absent.borrow_mut().insert(hash);
    }

    /// How many nodes this store's group has in its cache.
    #[cfg(any(test, feature = "pg_test"))]
    pub fn cached_nodes(&self) -> usize {
        self.cache.borrow().nodes.len()
    }

    /// What this store knows of `hash` without asking: stored, absent, or not known.
    pub fn known(&self, hash: &EntryHash) -> Option<bool> {
        if self.cache.borrow().ids.contains_key(hash) {
            Some(true)
        } else if self.absent.borrow().contains(hash) {
            Some(false)
        } else {
            None
        }
    }

    /// Keeps the running state in memory until [`SpiStore::write_state`].
    pub fn defer_state_writes(&self) {
        self.defer_state.set(true);
    }

    /// Learns in one query which of `hashes` are stored: their node ids are cached, and the
    /// others are remembered as absent until inserted.
    pub fn prefetch_ids(&self, hashes: &[EntryHash]) -> Result<(), StoreError> {
        let mut unknown: Vec<EntryHash> = {
            let c = self.cache.borrow();
            hashes.iter().filter(|h| !c.ids.contains_key(*h)).copied().collect()
        };
        unknown.sort();
        unknown.dedup();
        if unknown.is_empty() {
            return Ok(());
        }
        let texts: Vec<String> = unknown.iter().map(EntryHash::to_b64).collect();
        // One index lookup per hash (see `entries_by_hash` in sync.rs for why not ANY).
        let packed = entry_row::packed();
        let sql = format!(
            "SELECT e.hash, e.node_id FROM unnest($2::text[]) AS h(b64) CROSS JOIN LATERAL \
             (SELECT hash, node_id FROM causal.dag_entries d WHERE {} AND grp + 0 = $1 OFFSET 0) e",
            entry_row::hash_equals_sql("d", "h.b64")
        );
        let found = run_prepared(&sql, &[self.num.into(), texts.into()], false, |rows| {
            rows.map(|r| Ok((entry_row::read_hash(&r, 1, packed)?, r.get::<i32>(2)?)))
                .collect::<Result<Vec<_>, spi::Error>>()
        })
        .map_err(backend)?;
        let mut stored = std::collections::HashSet::new();
        for (h, id) in found {
            let (Some(h), Some(id)) = (h, id) else { continue };
            let h = h.map_err(|e| corrupt(format!("an entry of group {}: {e}", self.group)))?;
            let id = to_u32(id)?;
            self.cache.borrow_mut().ids.insert(h, id);
            stored.insert(h);
        }
        self.absent.borrow_mut().extend(unknown.into_iter().filter(|h| !stored.contains(h)));
        Ok(())
    }

    /// Reads the nodes `ids` that are not cached in one statement, and caches them.
    pub fn prefetch_nodes(&self, ids: &[NodeId]) -> Result<(), StoreError> {
        let mut missing: Vec<i32> = {
            let c = self.cache.borrow();
            ids.iter().filter(|id| !c.nodes.contains_key(*id)).map(|id| to_i32(*id)).collect::<Result<_, _>>()?
        };
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        self.flush()?;
        let packed = entry_row::packed();
        let rows = run_prepared(&nodes_by_ids_sql(packed), &[self.num.into(), missing.into()], false, |rows| {
            rows.map(|r| node_row(&r, packed)).collect::<Result<Vec<_>, spi::Error>>()
        })
        .map_err(backend)?;
        for row in rows {
            let (id, node) = self.node_from_row(row)?;
            self.remember(id, node);
        }
        Ok(())
    }

    /// The entries with node ids `from..to` as nodes (cached, as [`SpiStore::prefetch_nodes`]
    /// caches them) with their payload texts, in node-id order, in one statement: placing reads
    /// both for each page of entries, which took a statement for each before.
    pub fn nodes_with_payloads(&self, from: NodeId, to: NodeId) -> Result<Vec<(Rc<Node>, String)>, StoreError> {
        self.flush()?;
        // The payload and its author's number after the node's columns, last.
        let packed = entry_row::packed();
        let sql = format!(
            "SELECT {}, e.payload, {} FROM causal.dag_entries e \
             WHERE e.grp = $1 AND e.node_id >= $2 AND e.node_id < $3 ORDER BY e.node_id",
            node_columns(packed),
            entry_row::author_sql()
        );
        let rows = run_prepared(&sql, &[self.num.into(), to_i32(from)?.into(), to_i32(to)?.into()], false, |rows| {
            rows.map(|r| {
                let n = r.columns();
                Ok((node_row(&r, packed)?, r.get::<String>(n - 1)?, r.get::<i32>(n)?))
            })
            .collect::<Result<Vec<_>, spi::Error>>()
        })
        .map_err(backend)?;
        let mut out = Vec::with_capacity(rows.len());
        for (row, payload, author) in rows {
            let (id, node) = self.node_from_row(row)?;
            let payload =
                payload.ok_or_else(|| corrupt(format!("entry {id} of group {} has no payload", self.group)))?;
            let payload = entry_row::payload_text(author, payload).map_err(|e| StoreError::Backend(Box::new(e)))?;
            out.push((self.remember(id, node), payload));
        }
        Ok(out)
    }

    /// Reads the nodes at `lo..=hi` of `chain` in one statement, caches them, and returns their
    /// ids in chain order.
    fn load_chain(&self, chain: ChainId, lo: Seq, hi: Seq) -> Result<Vec<NodeId>, StoreError> {
        if lo > hi {
            return Ok(Vec::new());
        }
        self.flush()?;
        let packed = entry_row::packed();
        let sql = format!(
            "SELECT {} FROM causal.dag_entries WHERE grp = $1 AND chain = $2 AND seq BETWEEN $3 AND $4 ORDER BY seq",
            node_columns(packed)
        );
        let rows = run_prepared(
            &sql,
            &[self.num.into(), to_i32(chain)?.into(), to_i32(lo)?.into(), to_i32(hi)?.into()],
            false,
            |rows| rows.map(|r| node_row(&r, packed)).collect::<Result<Vec<_>, spi::Error>>(),
        )
        .map_err(backend)?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in rows {
            let (id, node) = self.node_from_row(row)?;
            self.remember(id, node);
            ids.push(id);
        }
        Ok(ids)
    }

    /// A node read with [`node_row`], checked.
    fn node_from_row(&self, row: NodeRow) -> Result<(NodeId, Node), StoreError> {
        let NodeRow { id: Some(id), hash: Some(hash), chain: Some(chain), seq: Some(seq), links } = row else {
            return Err(corrupt(format!("a node of group {} has a null column", self.group)));
        };
        let (preds, clock) = links.map_err(|e| corrupt(format!("node {id} of group {}: {e}", self.group)))?;
        let id = to_u32(id)?;
        let node = Node {
            hash: hash.map_err(|e| corrupt(format!("node {id} of group {}: {e}", self.group)))?,
            chain: to_u32(chain)?,
            seq: to_u32(seq)?,
            preds,
            clock,
        };
        Ok((id, node))
    }

    /// Caches a node read from the catalog (the one cached already, if any, is kept) and its
    /// id by hash: the frontier is read by node id and named by hash next.
    fn remember(&self, id: NodeId, node: Node) -> Rc<Node> {
        let mut cache = self.cache.borrow_mut();
        let node = cache.nodes.entry(id).or_insert_with(|| Rc::new(node)).clone();
        cache.ids.insert(node.hash, id);
        node
    }

    /// Writes the pending entry and tag rows.
    fn flush(&self) -> Result<(), StoreError> {
        let p = std::mem::take(&mut *self.pending.borrow_mut());
        if !p.node_id.is_empty() {
            write_entry_rows(self.num, &p).map_err(|e| StoreError::Backend(Box::new(e)))?;
        }
        if !p.tag.is_empty() {
            exec_prepared(
                "INSERT INTO causal.dag_entry_tags (grp, tag, chain, seq) \
                 SELECT $1, t, c, s FROM unnest($2::text[], $3::int[], $4::int[]) AS x(t, c, s)",
                &[self.num.into(), p.tag.into(), p.tag_chain.into(), p.tag_seq.into()],
            )
            .map_err(backend)?;
        }
        Ok(())
    }

    /// Writes the pending rows and the running state kept in memory, and stops deferring.
    pub fn write_state(&self) -> Result<(), StoreError> {
        self.defer_state.set(false);
        self.flush()?;
        match self.state.borrow().as_ref() {
            Some(s) => self.write_state_row(s),
            None => Ok(()),
        }
    }

    /// Locks the group's row (so appends to the group queue up) and loads its state.
    pub fn lock(&self) -> Result<GroupState, StoreError> {
        let state = self.load_state(STATE_LOCK_SQL, true)?;
        *self.state.borrow_mut() = Some(state.clone());
        Ok(state)
    }

    /// Records that the engine has placed every stored entry before node id `placed_to`.
    pub fn mark_reconciled(&self, placed_to: u32) -> Result<(), StoreError> {
        let mut state = self.state()?;
        let placed_to = placed_to.min(state.entry_count);
        if state.reconciled_count >= placed_to {
            return Ok(());
        }
        state.reconciled_count = placed_to;
        if !self.defer_state.get() {
            self.write_state_row(&state)?;
        }
        *self.state.borrow_mut() = Some(state);
        Ok(())
    }

    /// Writes the entries and tags not written yet, so that statements over the catalog see
    /// every stored entry (the membership view reads the authority entries by tag).
    pub fn flush_pending(&self) -> Result<(), StoreError> {
        self.flush()
    }

    /// The group's authority version: how many stored entries carry authority.
    pub fn authority_version(&self) -> Result<u32, StoreError> {
        Ok(self.state()?.authority_version)
    }

    /// The group's running state (read once per store; under the row lock after [`SpiStore::lock`]).
    pub fn state(&self) -> Result<GroupState, StoreError> {
        self.with_state(GroupState::clone)
    }

    /// Reads the running state without copying it (the DAG index asks for chain lengths
    /// several times per entry stored).
    fn with_state<T>(&self, read: impl FnOnce(&GroupState) -> T) -> Result<T, StoreError> {
        if let Some(s) = self.state.borrow().as_ref() {
            return Ok(read(s));
        }
        let state = self.load_state(STATE_SQL, false)?;
        let out = read(&state);
        *self.state.borrow_mut() = Some(state);
        Ok(out)
    }
}

impl SpiStore {
    /// Writes the group's running state into its row: in place when this store holds the row
    /// locked and nothing else updated it since (a local commit: about 9 us less than the
    /// UPDATE statement, inside the section that commits of the group take one at a time),
    /// else through SQL.
    fn write_state_row(&self, state: &GroupState) -> Result<(), StoreError> {
        if let Some(tid) = self.locked_row.get() {
            let (lens, frontier) = (to_i32s(&state.chain_lens)?, to_i32s(&state.frontier)?);
            let written = crate::pg::direct::update_locked_row(
                "group_defs",
                tid,
                &[
                    ("entry_count", Cell::Int4(to_i32(state.entry_count)?)),
                    ("chain_lens", Cell::Int4Array(&lens)),
                    ("frontier", Cell::Int4Array(&frontier)),
                    ("authority_version", Cell::Int4(to_i32(state.authority_version)?)),
                    ("reconciled_count", Cell::Int4(to_i32(state.reconciled_count)?)),
                ],
            )
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
            self.locked_row.set(written);
            if written.is_some() {
                return Ok(());
            }
        }
        exec_prepared(
            "UPDATE causal.group_defs SET entry_count = $2, chain_lens = $3, frontier = $4, authority_version = $5, \
             reconciled_count = $6 WHERE group_id = $1",
            &[
                self.group.clone().into(),
                to_i32(state.entry_count)?.into(),
                to_i32s(&state.chain_lens)?.into(),
                to_i32s(&state.frontier)?.into(),
                to_i32(state.authority_version)?.into(),
                to_i32(state.reconciled_count)?.into(),
            ],
        )
        .map_err(backend)
    }
}

/// The nodes of group `$1` with the node ids `$2`: one scan of the primary key for all of them.
fn nodes_by_ids_sql(packed: bool) -> String {
    format!("SELECT {} FROM causal.dag_entries WHERE grp = $1 AND node_id = ANY($2)", node_columns(packed))
}

/// An entry's node id by its hash (`$1` the group's number, `$2` the hash in Base64).
fn node_id_by_hash_sql() -> String {
    format!("SELECT node_id FROM causal.dag_entries d WHERE {} AND grp + 0 = $1", entry_row::hash_equals_sql("d", "$2"))
}

/// The columns of `causal.dag_entries`, in table order.
pub(crate) const ENTRY_COLUMNS: &[(&str, pg_sys::Oid)] = &[
    ("grp", pg_sys::INT4OID),
    ("node_id", pg_sys::INT4OID),
    ("chain", pg_sys::INT4OID),
    ("seq", pg_sys::INT4OID),
    ("received_at", pg_sys::TIMESTAMPTZOID),
    ("author", pg_sys::INT4OID),
    ("hash", pg_sys::BYTEAOID),
    ("payload_hash", pg_sys::BYTEAOID),
    ("links", pg_sys::BYTEAOID),
    ("payload", pg_sys::TEXTOID),
];

/// The columns of `causal.dag_entries` in a 0.1.0 catalog, in table order.
const ENTRY_COLUMNS_0_1: &[(&str, pg_sys::Oid)] = &[
    ("grp", pg_sys::INT4OID),
    ("node_id", pg_sys::INT4OID),
    ("hash", pg_sys::TEXTOID),
    ("payload", pg_sys::TEXTOID),
    ("payload_hash", pg_sys::TEXTOID),
    ("chain", pg_sys::INT4OID),
    ("seq", pg_sys::INT4OID),
    ("preds", pg_sys::INT4ARRAYOID),
    ("clock", pg_sys::INT4ARRAYOID),
    ("received_at", pg_sys::TIMESTAMPTZOID),
];

/// Inserts entry rows without SQL (see `direct.rs`): for a local commit's single entry and
/// for an import's thousands alike.
fn write_entry_rows(grp: i32, p: &PendingRows) -> Result<(), crate::error::CausalError> {
    if entry_row::packed() {
        let mut rows = Inserter::open("dag_entries", ENTRY_COLUMNS)?;
        for i in 0..p.node_id.len() {
            rows.push(&[
                Cell::Int4(grp),
                Cell::Int4(p.node_id[i]),
                Cell::Int4(p.chain[i]),
                Cell::Int4(p.seq[i]),
                Cell::Now,
                p.author[i].map_or(Cell::Null(pg_sys::INT4OID), Cell::Int4),
                Cell::Bytea(p.hash[i].as_bytes()),
                // Empty, not NULL: a NULL would make the tuple's header 8 bytes longer (its
                // null bitmap no longer fits beside the header's 23 bytes).
                Cell::Bytea(if p.payload_hash_implied[i] { &[] } else { p.payload_hash[i].as_bytes() }),
                Cell::Bytea(&p.links[i]),
                Cell::Text(&p.payload[i]),
            ])?;
        }
        rows.finish();
        return Ok(());
    }
    // A 0.1.0 catalog; one not upgraded from before has `prev` after `hash`.
    let prev: Option<Vec<Vec<String>>> = crate::catalog::shape::dag_entries_have_prev()
        .then(|| p.prev.iter().map(|hashes| hashes.iter().map(EntryHash::to_b64).collect()).collect());
    let mut columns = ENTRY_COLUMNS_0_1.to_vec();
    if prev.is_some() {
        columns.insert(3, ("prev", pg_sys::TEXTARRAYOID));
    }
    let mut rows = Inserter::open("dag_entries", &columns)?;
    for i in 0..p.node_id.len() {
        let (hash, payload_hash) = (p.hash[i].to_b64(), p.payload_hash[i].to_b64());
        let mut cells = vec![
            Cell::Int4(grp),
            Cell::Int4(p.node_id[i]),
            Cell::Text(&hash),
            Cell::Text(&p.payload[i]),
            Cell::Text(&payload_hash),
            Cell::Int4(p.chain[i]),
            Cell::Int4(p.seq[i]),
            Cell::Int4Array(&p.preds[i]),
            Cell::Int4Array(&p.clock[i]),
            Cell::Now,
        ];
        if let Some(prev) = &prev {
            cells.insert(3, Cell::TextArray(&prev[i]));
        }
        rows.push(&cells)?;
    }
    rows.finish();
    Ok(())
}

impl DagStore for SpiStore {
    type NodeRef<'a> = Rc<Node>;
    type EntryRef<'a> = Rc<Entry>;

    fn len(&self) -> Result<u64, StoreError> {
        self.with_state(|s| u64::from(s.entry_count))
    }

    fn node_id(&self, hash: &EntryHash) -> Result<Option<NodeId>, StoreError> {
        if let Some(id) = self.cache.borrow().ids.get(hash).copied() {
            return Ok(Some(id));
        }
        if self.absent.borrow().contains(hash) {
            return Ok(None);
        }
        // By the hash index alone: `grp + 0` keeps the planner from adding a bitmap scan of
        // the group's whole primary-key range to it (it did, and each lookup read every entry
        // of the group: an import that rewound 10k entries took 6.7 s instead of 0.9 s).
        let id = get_prepared::<i32>(&node_id_by_hash_sql(), &[self.num.into(), hash.to_b64().into()])
            .map_err(backend)?
            .map(to_u32)
            .transpose()?;
        if let Some(id) = id {
            self.cache.borrow_mut().ids.insert(*hash, id);
        }
        Ok(id)
    }

    fn node(&self, id: NodeId) -> Result<Rc<Node>, StoreError> {
        if let Some(n) = self.cache.borrow().nodes.get(&id).cloned() {
            return Ok(n);
        }
        let packed = entry_row::packed();
        let sql = format!("SELECT {} FROM causal.dag_entries WHERE grp = $1 AND node_id = $2", node_columns(packed));
        let row = run_prepared(&sql, &[self.num.into(), to_i32(id)?.into()], false, |mut rows| {
            rows.next().map(|r| node_row(&r, packed)).transpose()
        })
        .map_err(backend)?;
        let Some(row) = row else {
            return Err(corrupt(format!("node {id} of group {} is missing", self.group)));
        };
        let (id, node) = self.node_from_row(row)?;
        Ok(self.remember(id, node))
    }

    fn entry(&self, id: NodeId) -> Result<Rc<Entry>, StoreError> {
        if let Some(e) = self.entries.borrow().get(&id) {
            return Ok(e.clone());
        }
        // A pending entry that was not kept in the cache is read back once its row is written.
        let pending_from = self.pending.borrow().node_id.first().copied();
        if pending_from.is_some_and(|first| i64::from(id.0) >= i64::from(first)) {
            self.flush()?;
        }
        let sql = format!(
            "SELECT {}, {}, {}, coalesce((SELECT array_agg(t.tag) FROM causal.dag_entry_tags t \
               WHERE t.grp = e.grp AND t.chain = e.chain AND t.seq = e.seq), '{{}}'), {} \
             FROM causal.dag_entries e WHERE grp = $1 AND node_id = $2",
            entry_row::hash_sql("e"),
            entry_row::prev_hashes_sql(),
            entry_row::payload_sql(),
            entry_row::payload_hash_sql()
        );
        let row = run_prepared(&sql, &[self.num.into(), to_i32(id)?.into()], false, |mut rows| match rows.next() {
            None => Ok(None),
            Some(r) => Ok(Some((
                r.get::<String>(1)?,
                r.get::<Vec<String>>(2)?,
                r.get::<String>(3)?,
                r.get::<Vec<String>>(4)?,
                r.get::<String>(5)?,
            ))),
        })
        .map_err(backend)?;
        let Some((Some(hash), Some(prev), Some(payload), tags, Some(payload_hash))) = row else {
            return Err(corrupt(format!("entry {id} of group {} is missing", self.group)));
        };
        fn parse<H: std::str::FromStr<Err = causal_core::hash::ParseHashError>>(h: &str) -> Result<H, StoreError> {
            h.parse::<H>().map_err(|e| corrupt(e.to_string()))
        }
        let payload_value = causal_core::json::parse(&payload).map_err(|e| corrupt(e.to_string()))?;
        let mut meta = Meta::new();
        for tag in tags.unwrap_or_default() {
            match tag.split_once('=') {
                Some((k, v)) => meta.entry(k.to_string()).or_default().insert(v.to_string()),
                None => meta.entry(tag).or_default().is_empty(),
            };
        }
        // The header as stored; `causal.verify` recomputes both hashes from the payload.
        let entry = Rc::new(Entry {
            hash: parse(&hash)?,
            header: Header {
                payload_hash: parse(&payload_hash)?,
                prev: prev.iter().map(|h| parse(h)).collect::<Result<_, _>>()?,
            },
            payload: payload_value,
            meta,
        });
        self.entries.borrow_mut().insert(id, entry.clone());
        Ok(entry)
    }

    fn chain_count(&self) -> Result<ChainId, StoreError> {
        self.with_state(|s| s.chain_lens.len() as ChainId)
    }

    fn chain_len(&self, chain: ChainId) -> Result<Seq, StoreError> {
        self.with_state(|s| s.chain_lens.get(chain as usize).copied().unwrap_or(0))
    }

    fn chain_member(&self, chain: ChainId, seq: Seq) -> Result<NodeId, StoreError> {
        self.flush()?;
        get_prepared::<i32>(
            "SELECT node_id FROM causal.dag_entries WHERE grp = $1 AND chain = $2 AND seq = $3",
            &[self.num.into(), to_i32(chain)?.into(), to_i32(seq)?.into()],
        )
        .map_err(backend)?
        .map(to_u32)
        .transpose()?
        .ok_or_else(|| corrupt(format!("chain member {chain}:{seq} of group {} is missing", self.group)))
    }

    fn latest_tagged(&self, tag: &MetaTag, chain: ChainId, lo: Seq, hi: Seq) -> Result<Option<Seq>, StoreError> {
        self.flush()?;
        get_prepared::<i32>(
            "SELECT max(seq) FROM causal.dag_entry_tags WHERE grp = $1 AND tag = $2 AND chain = $3 AND seq BETWEEN $4 AND $5",
            &[self.num.into(), tag_text(tag).into(), to_i32(chain)?.into(), to_i32(lo)?.into(), to_i32(hi)?.into()],
        )
        .map_err(backend)?
        .map(to_u32)
        .transpose()
    }

    fn frontier(&self) -> Result<Vec<NodeId>, StoreError> {
        Ok(self.state()?.frontier)
    }

    /// One range read instead of a query per node (a sync header walk goes down chains).
    fn prefetch_chain(&self, chain: ChainId, lo: Seq, hi: Seq) -> Result<(), StoreError> {
        self.load_chain(chain, lo, hi).map(|_| ())
    }

    fn chain_members(&self, chain: ChainId, lo: Seq, hi: Seq) -> Result<Vec<NodeId>, StoreError> {
        let ids = self.load_chain(chain, lo, hi)?;
        if ids.len() != (lo.max(1)..=hi).count() {
            return Err(corrupt(format!("chain {chain} of group {} lacks members in {lo}..={hi}", self.group)));
        }
        Ok(ids)
    }

    fn insert(&mut self, node: Node, entry: Entry) -> Result<NodeId, StoreError> {
        let payload = serde_json::to_string(&entry.payload).map_err(|e| corrupt(e.to_string()))?;
        let (header, meta) = (entry.header.clone(), entry.meta.clone());
        self.insert_text(node, &header, payload, &meta, |_| Ok(entry))
    }

    fn insert_encoded(&mut self, node: Node, entry: EncodedEntry) -> Result<NodeId, StoreError> {
        let EncodedEntry { hash, header, payload_text, meta } = entry;
        self.insert_text(node, &header, payload_text, &meta, |text| {
            let payload = causal_core::json::parse(text).map_err(|e| corrupt(format!("payload text: {e}")))?;
            Ok(Entry { hash, header: header.clone(), payload, meta: meta.clone() })
        })
    }
}

impl SpiStore {
    /// Stores a node with its entry's payload text. `entry` gives the decoded entry, from that
    /// text, when it is to be kept in the cache (a tagged entry during an import).
    fn insert_text(
        &mut self,
        node: Node,
        header: &Header,
        payload: String,
        meta: &Meta,
        entry: impl FnOnce(&str) -> Result<Entry, StoreError>,
    ) -> Result<NodeId, StoreError> {
        let mut state = self.state()?;
        let id = NodeId(state.entry_count);
        // Entries with tags (membership, schema, rules) are read again while an import goes
        // on, so they stay in the cache; a plain data entry's payload is not read (the engine
        // gets it decoded), and keeping 100k of them doubled an import's memory.
        let cached = if self.defer_state.get() && !meta.is_empty() { Some(entry(&payload)?) } else { None };
        let tags: Vec<String> = meta
            .iter()
            .flat_map(|(key, values)| {
                std::iter::once(key.clone()).chain(values.iter().map(move |v| format!("{key}={v}")))
            })
            .collect();
        {
            let mut p = self.pending.borrow_mut();
            p.node_id.push(to_i32(id)?);
            p.hash.push(node.hash);
            p.prev.push(header.prev.iter().copied().collect());
            let implied = entry_row::payload_hash_implied(self.num, &payload, &header.payload_hash)
                .map_err(|e| StoreError::Backend(Box::new(e)))?;
            let (author, payload) = entry_row::stored_payload(payload).map_err(|e| StoreError::Backend(Box::new(e)))?;
            p.payload.push(payload);
            p.author.push(author);
            p.payload_hash.push(header.payload_hash);
            p.payload_hash_implied.push(implied);
            p.chain.push(to_i32(node.chain)?);
            p.seq.push(to_i32(node.seq)?);
            if entry_row::packed() {
                p.links.push(links::pack(id, &node.preds, &node.clock).map_err(|e| corrupt(e.to_string()))?);
            } else {
                p.preds.push(to_i32s(&node.preds)?);
                p.clock.push(to_i32s(&node.clock.0)?);
            }
            for tag in tags {
                p.tag.push(tag);
                p.tag_chain.push(to_i32(node.chain)?);
                p.tag_seq.push(to_i32(node.seq)?);
            }
        }
        let carries_authority = [MEMBER_TAG, SCHEMA_TAG, RULE_TAG].iter().any(|t| meta.contains_key(*t));
        if self.defer_state.get() {
            if let Some(e) = cached {
                self.entries.borrow_mut().insert(id, Rc::new(e));
            }
        } else {
            self.flush()?;
        }
        // Update the running state and write it back.
        state.entry_count += 1;
        let c = node.chain as usize;
        if state.chain_lens.len() <= c {
            state.chain_lens.resize(c + 1, 0);
        }
        state.chain_lens[c] = node.seq;
        state.frontier.retain(|f| !node.preds.contains(f));
        state.frontier.push(id);
        if carries_authority {
            state.authority_version += 1;
            super::authority_version::raised().map_err(|e| StoreError::Backend(Box::new(e)))?;
        }
        if !self.defer_state.get() {
            self.write_state_row(&state)?;
        }
        *self.state.borrow_mut() = Some(state);
        self.absent.borrow_mut().remove(&node.hash);
        let mut cache = self.cache.borrow_mut();
        cache.mark(id);
        cache.ids.insert(node.hash, id);
        cache.nodes.insert(id, Rc::new(node));
        Ok(id)
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[path = "store_tests.rs"]
mod pg_tests;
