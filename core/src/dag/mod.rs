//! The causal DAG: append-only, content-addressed entries and the queries the type layer and
//! the sync protocol need (minimal cover, frontier, fork position, meet, and the two filtered
//! cover searches), answered from the chain/clock index without walking the history.

pub mod closure;
pub mod cover_cache;
pub mod links;
mod mem;
pub mod naive;
mod query;
mod store;
pub mod walk;

pub use mem::MemStore;
pub use store::{ChainId, Clock, DagStore, MetaTag, Node, NodeId, Seq, StoreError};

use serde_json::Value;

use crate::entry::{EncodedEntry, Entry, HashMismatch, Meta, Position};
use crate::hash::{EntryHash, HashAlgorithm};
use crate::json::JsonError;

/// Where two positions' histories diverge (DAG spec §5.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForkPosition {
    /// Minimal cover of `history(A) ∩ history(B)`.
    pub common_frontier: Position,
    /// Entries of the intersection with a direct successor only in A's or only in B's history.
    pub common: Position,
    /// Entries only in A's history whose direct predecessors include one in the intersection
    /// (or that have no predecessors).
    pub fork_a: Position,
    /// The same for B.
    pub fork_b: Position,
}

/// Which entries a cover search may take, by their metadata: every key in `keys` must be
/// present and every `(key, value)` in `values` must be in the entry's set for that key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaFilter {
    pub keys: Vec<String>,
    pub values: Vec<(String, String)>,
}

impl MetaFilter {
    /// Entries whose `key` set contains `value`.
    pub fn tag(key: &str, value: &str) -> MetaFilter {
        MetaFilter { keys: vec![], values: vec![(key.to_string(), value.to_string())] }
    }

    pub fn matches(&self, meta: &Meta) -> bool {
        self.keys.iter().all(|k| meta.contains_key(k))
            && self.values.iter().all(|(k, v)| meta.get(k).is_some_and(|set| set.contains(v)))
    }

    /// The single indexed tag that drives a search, and whether it is the whole filter.
    fn driving_tag(&self) -> Option<(MetaTag, bool)> {
        let only = self.keys.len() + self.values.len() == 1;
        if let Some((k, v)) = self.values.first() {
            Some((MetaTag { key: k.clone(), value: Some(v.clone()) }, only))
        } else {
            self.keys.first().map(|k| (MetaTag { key: k.clone(), value: None }, only))
        }
    }
}

/// Why the DAG refused an operation.
#[derive(Debug, thiserror::Error)]
pub enum DagError {
    #[error("entry {0} is not in this DAG")]
    UnknownEntry(EntryHash),
    #[error("entry {entry} names predecessor {missing}, which is not in this DAG")]
    MissingPredecessor { entry: EntryHash, missing: EntryHash },
    #[error("entry {entry} lists predecessor {redundant}, which is already in the history of another predecessor (prev must be a minimal cover)")]
    NotMinimalCover { entry: EntryHash, redundant: EntryHash },
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error(transparent)]
    Hash(#[from] HashMismatch),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Outcome of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub hash: EntryHash,
    /// False when the entry was already present (appending is idempotent).
    pub new: bool,
}

/// A DAG over a store.
#[derive(Debug, Clone)]
pub struct Dag<S> {
    store: S,
    alg: HashAlgorithm,
}

impl<S: DagStore> Dag<S> {
    pub fn new(store: S, alg: HashAlgorithm) -> Dag<S> {
        Dag { store, alg }
    }

    pub fn hash_algorithm(&self) -> HashAlgorithm {
        self.alg
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn into_store(self) -> S {
        self.store
    }

    pub fn len(&self) -> Result<u64, DagError> {
        Ok(self.store.len()?)
    }

    pub fn is_empty(&self) -> Result<bool, DagError> {
        Ok(self.len()? == 0)
    }

    pub fn contains(&self, hash: &EntryHash) -> Result<bool, DagError> {
        Ok(self.store.node_id(hash)?.is_some())
    }

    pub fn entry(&self, hash: &EntryHash) -> Result<Option<Entry>, DagError> {
        match self.store.node_id(hash)? {
            Some(id) => Ok(Some(self.store.entry(id)?.clone())),
            None => Ok(None),
        }
    }

    /// The hash `payload` would get at `prev`, without appending.
    pub fn entry_hash(&self, payload: &Value, prev: &Position) -> Result<EntryHash, DagError> {
        Ok(Entry::new(self.alg, payload.clone(), prev.clone(), Meta::new())?.hash)
    }

    /// Appends `payload` after `prev`, which must name entries of this DAG and be a minimal
    /// cover. Appending an entry that is already present changes nothing.
    pub fn append(&mut self, payload: Value, meta: Meta, prev: Position) -> Result<Appended, DagError> {
        let entry = Entry::new(self.alg, payload, prev, meta)?;
        self.insert_checked(entry)
    }

    /// Adds an entry received from elsewhere: both hashes are recomputed and must match.
    pub fn insert(&mut self, entry: Entry) -> Result<Appended, DagError> {
        entry.verify_hashes(self.alg)?;
        self.insert_checked(entry)
    }

    /// Inserts an entry whose hashes the caller has already verified (for example in a
    /// parallel batch check); otherwise as [`Dag::insert`].
    pub fn insert_verified(&mut self, entry: Entry) -> Result<Appended, DagError> {
        self.insert_checked(entry)
    }

    fn insert_checked(&mut self, entry: Entry) -> Result<Appended, DagError> {
        let hash = entry.hash;
        let Some(node) = self.new_node(hash, &entry.header.prev)? else {
            return Ok(Appended { hash, new: false });
        };
        self.store.insert(node, entry)?;
        Ok(Appended { hash, new: true })
    }

    /// Inserts an entry whose payload is text, built by the caller from trusted parts (a
    /// local commit): its hashes are not recomputed. Otherwise as [`Dag::insert`].
    pub fn insert_encoded(&mut self, entry: EncodedEntry) -> Result<Appended, DagError> {
        let hash = entry.hash;
        let Some(node) = self.new_node(hash, &entry.header.prev)? else {
            return Ok(Appended { hash, new: false });
        };
        self.store.insert_encoded(node, entry)?;
        Ok(Appended { hash, new: true })
    }

    /// The index node an entry `hash` at `prev` gets; None if the entry is stored already.
    fn new_node(&self, hash: EntryHash, prev: &Position) -> Result<Option<Node>, DagError> {
        if self.store.node_id(&hash)?.is_some() {
            return Ok(None);
        }
        let mut preds = Vec::with_capacity(prev.len());
        for p in prev {
            match self.store.node_id(p)? {
                Some(id) => preds.push(id),
                None => return Err(DagError::MissingPredecessor { entry: hash, missing: *p }),
            }
        }
        if let Some(redundant) = self.first_dominated(&preds)? {
            let redundant = self.store.node(redundant)?.hash;
            return Err(DagError::NotMinimalCover { entry: hash, redundant });
        }

        // The new node's history is the union of its predecessors' histories.
        let mut clock = Clock::default();
        for p in &preds {
            clock.join(&self.store.node(*p)?.clock);
        }
        // Join the lowest-numbered chain whose last node is already in this history: the chain
        // stays totally ordered, and chains are reused, so their number follows the DAG's
        // width rather than its length.
        let chains = self.store.chain_count()?;
        let mut chain = chains;
        for c in 0..chains.min(clock.width()) {
            let len = self.store.chain_len(c)?;
            if len > 0 && clock.get(c) == len {
                chain = c;
                break;
            }
        }
        let seq =
            self.store.chain_len(chain)?.checked_add(1).ok_or_else(|| StoreError::Full("chain too long".into()))?;
        clock.set(chain, seq);
        Ok(Some(Node { hash, chain, seq, preds, clock }))
    }

    /// The DAG's frontier: the minimal cover of all its entries.
    pub fn frontier(&self) -> Result<Position, DagError> {
        self.hashes(self.store.frontier()?)
    }

    /// `a ∈ history(b)`: whether `a` is `b` or comes before it.
    pub fn precedes(&self, a: &EntryHash, b: &EntryHash) -> Result<bool, DagError> {
        let (a, b) = (self.resolve_one(a)?, self.resolve_one(b)?);
        let a = self.store.node(a)?;
        Ok(self.store.node(b)?.clock.covers(a.chain, a.seq))
    }

    /// Whether `h` is in `history(position)`.
    pub fn in_history(&self, h: &EntryHash, position: &Position) -> Result<bool, DagError> {
        let node = self.store.node(self.resolve_one(h)?)?;
        let clock = self.position_clock(&self.resolve(position)?)?;
        Ok(clock.covers(node.chain, node.seq))
    }

    fn resolve_one(&self, h: &EntryHash) -> Result<NodeId, DagError> {
        self.store.node_id(h)?.ok_or(DagError::UnknownEntry(*h))
    }

    fn resolve(&self, position: &Position) -> Result<Vec<NodeId>, DagError> {
        position.iter().map(|h| self.resolve_one(h)).collect()
    }

    fn hashes(&self, ids: impl IntoIterator<Item = NodeId>) -> Result<Position, DagError> {
        ids.into_iter().map(|id| Ok(self.store.node(id)?.hash)).collect()
    }

    /// The clock of `history(ids)`.
    fn position_clock(&self, ids: &[NodeId]) -> Result<Clock, DagError> {
        let mut clock = Clock::default();
        for id in ids {
            clock.join(&self.store.node(*id)?.clock);
        }
        Ok(clock)
    }
}
