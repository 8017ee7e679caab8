//! The narrow storage interface the DAG index runs on.
//!
//! Every entry is a *node* of the index. Nodes are numbered densely in append order
//! ([`NodeId`]), which is a topological order. Each node belongs to exactly one *chain*: a
//! totally ordered set of nodes (each one in the history of the next), numbered from 1 by
//! [`Seq`]. A node's *clock* records, for every chain, the highest sequence number of that
//! chain in the node's history (itself included); chains it has not seen read as 0.
//!
//! Because a chain is totally ordered, the part of a chain inside any history is a prefix of
//! the chain. So a clock describes a history exactly, and `x ∈ history(y)` is the single
//! comparison `clock(y)[chain(x)] >= seq(x)`. The algorithms in [`super::Dag`] are built on that.
//!
//! A store keeps nodes, entries, the members of each chain by sequence number, an index from
//! metadata tags to the sequence numbers that carry them (per chain, ascending), and the
//! frontier. The in-memory store is [`super::MemStore`]; the extension implements the same
//! trait over Postgres tables.

use std::ops::Deref;

use crate::entry::{EncodedEntry, Entry};
use crate::hash::EntryHash;

/// Dense number of a node, in append order, from 0. A type of its own, so a node number is
/// never taken for a chain, a sequence number or a count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The node's place in append order, as an index.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The node at index `i` of append order, if it fits.
    pub fn at(i: usize) -> Option<NodeId> {
        u32::try_from(i).ok().map(NodeId)
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for NodeId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(NodeId)
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(NodeId)
    }
}
/// Number of a chain, from 0.
pub type ChainId = u32;
/// Position of a node in its chain, from 1. Sequence 0 means "nothing of this chain".
pub type Seq = u32;

/// A node of the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub hash: EntryHash,
    pub chain: ChainId,
    pub seq: Seq,
    /// The entry's direct predecessors (its header's `prev`).
    pub preds: Vec<NodeId>,
    /// `clock[c]` is the highest sequence number of chain `c` in this node's history.
    pub clock: Clock,
}

/// A vector clock over chains. Entries past the end read as 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Clock(pub Vec<Seq>);

impl Clock {
    #[inline]
    pub fn get(&self, chain: ChainId) -> Seq {
        self.0.get(chain as usize).copied().unwrap_or(0)
    }

    pub fn set(&mut self, chain: ChainId, seq: Seq) {
        let i = chain as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, 0);
        }
        self.0[i] = seq;
    }

    /// Pointwise maximum: the clock of the union of two histories.
    pub fn join(&mut self, other: &Clock) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a = (*a).max(*b);
        }
    }

    /// Pointwise minimum: the clock of the intersection of two histories.
    pub fn meet(&self, other: &Clock) -> Clock {
        let mut out: Vec<Seq> = self.0.iter().zip(&other.0).map(|(a, b)| *a.min(b)).collect();
        while out.last() == Some(&0) {
            out.pop();
        }
        Clock(out)
    }

    /// Number of chains this clock can name (past that, every chain reads 0).
    pub fn width(&self) -> ChainId {
        self.0.len() as ChainId
    }

    /// `x ∈ history(self)`.
    #[inline]
    pub fn covers(&self, chain: ChainId, seq: Seq) -> bool {
        self.get(chain) >= seq
    }
}

/// A metadata tag the store indexes: a key (`value: None` matches any value) or a key and one
/// of its values.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetaTag {
    pub key: String,
    pub value: Option<String>,
}

/// A failure of the storage below the index.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's own contents contradict each other (a chain member or node is missing).
    #[error("the DAG index is inconsistent: {0}")]
    Corrupt(String),
    /// The backing storage failed.
    #[error("DAG storage failed: {0}")]
    Backend(#[from] Box<dyn std::error::Error + Send + Sync>),
    /// The store cannot hold more nodes or chains.
    #[error("the DAG index is full: {0}")]
    Full(String),
}

/// Storage for entries and the chain/clock index. Implementations must be consistent with the
/// contract in the module documentation; they contain no algorithm beyond lookups.
pub trait DagStore {
    /// A borrowed or cached node.
    type NodeRef<'a>: Deref<Target = Node>
    where
        Self: 'a;
    /// A borrowed or loaded entry.
    type EntryRef<'a>: Deref<Target = Entry>
    where
        Self: 'a;

    /// Number of nodes.
    fn len(&self) -> Result<u64, StoreError>;
    /// Whether the store holds no node.
    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
    fn node_id(&self, hash: &EntryHash) -> Result<Option<NodeId>, StoreError>;
    fn node(&self, id: NodeId) -> Result<Self::NodeRef<'_>, StoreError>;
    fn entry(&self, id: NodeId) -> Result<Self::EntryRef<'_>, StoreError>;

    /// Number of chains (chain ids are `0..chain_count`).
    fn chain_count(&self) -> Result<ChainId, StoreError>;
    /// Number of nodes in a chain; 0 for a chain that does not exist.
    fn chain_len(&self, chain: ChainId) -> Result<Seq, StoreError>;
    /// The node at `seq` (1-based) of `chain`.
    fn chain_member(&self, chain: ChainId, seq: Seq) -> Result<NodeId, StoreError>;
    /// The nodes at `lo..=hi` of `chain`, in order (`hi` at most the chain's length). A store
    /// that reads nodes one query at a time can read them in one.
    fn chain_members(&self, chain: ChainId, lo: Seq, hi: Seq) -> Result<Vec<NodeId>, StoreError> {
        (lo.max(1)..=hi).map(|s| self.chain_member(chain, s)).collect()
    }

    /// The highest sequence number in `lo..=hi` of a node of `chain` whose metadata carries
    /// `tag`, if any.
    fn latest_tagged(&self, tag: &MetaTag, chain: ChainId, lo: Seq, hi: Seq) -> Result<Option<Seq>, StoreError>;

    /// The nodes that are in no other node's `preds`.
    fn frontier(&self) -> Result<Vec<NodeId>, StoreError>;

    /// A hint: the nodes of `chain` at `lo..=hi` (those that exist) will be read soon. A store
    /// that reads nodes one query at a time can load them in one; the default does nothing.
    fn prefetch_chain(&self, chain: ChainId, lo: Seq, hi: Seq) -> Result<(), StoreError> {
        let _ = (chain, lo, hi);
        Ok(())
    }

    /// Stores a new node and its entry under the next id, appends it to its chain, indexes its
    /// metadata and updates the frontier. The caller has checked that `node` is valid and new.
    fn insert(&mut self, node: Node, entry: Entry) -> Result<NodeId, StoreError>;

    /// [`DagStore::insert`] for an entry whose payload is JSON text. A store that keeps the
    /// text as it is overrides this; the default parses it.
    fn insert_encoded(&mut self, node: Node, entry: EncodedEntry) -> Result<NodeId, StoreError> {
        let entry = entry.decode().map_err(|e| StoreError::Corrupt(format!("payload text: {e}")))?;
        self.insert(node, entry)
    }
}
