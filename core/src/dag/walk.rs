//! The header walk that serves a sync `header-request` (hhs3 sync spec §4), sharpened: besides
//! stopping at the requester's `limits`, it stops at anything in their history that this DAG
//! knows. A requester whose `limits` is its frontier therefore gets exactly the entries it
//! lacks, and a walk that reaches only known history answers empty and complete.

use std::collections::{HashMap, HashSet, VecDeque};

use super::{ChainId, Dag, DagError, DagStore, Seq};
use crate::hash::EntryHash;

/// The result of a walk: entry hashes in breadth-first order from `start`, each entry's place
/// in its chain, and whether the walk finished (`false`: it stopped at `max`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    pub hashes: Vec<EntryHash>,
    /// `(chain, seq)` of each of `hashes`, in the same order.
    pub positions: Vec<(ChainId, Seq)>,
    pub complete: bool,
}

/// Nodes a walk asks the store to load at once the first time it goes down a chain; each
/// further load on that chain asks for twice as many (at most what the walk may still
/// collect), so a long linear history costs a few reads and a short branch little.
const FIRST_PREFETCH: Seq = 64;

impl<S: DagStore> Dag<S> {
    /// Walks back breadth first from the `start` entries this DAG holds, leaving out `limits`
    /// and everything in the history of the `limits` it holds, collecting at most `max`.
    pub fn walk_back(&self, start: &[EntryHash], limits: &[EntryHash], max: usize) -> Result<Walk, DagError> {
        let limit_set: HashSet<EntryHash> = limits.iter().copied().collect();
        let mut known = Vec::new();
        for h in limits {
            if let Some(id) = self.store.node_id(h)? {
                known.push(id);
            }
        }
        let below = self.position_clock(&known)?;
        let mut queue: VecDeque<EntryHash> = VecDeque::new();
        for h in start {
            if self.store.node_id(h)?.is_some() {
                queue.push_back(*h);
            }
        }
        let mut seen: HashSet<EntryHash> = HashSet::new();
        let mut hashes = Vec::new();
        let mut positions = Vec::new();
        // Per chain: the seqs loaded at once so far (lo..=hi) and the size of the next load.
        let mut loaded: HashMap<ChainId, (Seq, Seq, Seq)> = HashMap::new();
        while let Some(h) = queue.pop_front() {
            if limit_set.contains(&h) || !seen.insert(h) {
                continue;
            }
            let Some(id) = self.store.node_id(&h)? else { continue };
            let node = self.store.node(id)?;
            if below.covers(node.chain, node.seq) {
                continue;
            }
            if hashes.len() >= max {
                return Ok(Walk { hashes, positions, complete: false });
            }
            hashes.push(h);
            positions.push((node.chain, node.seq));
            // Its chain's earlier members are the likely next steps: load them together.
            let (chain, next) = (node.chain, node.seq.saturating_sub(1));
            let floor = below.get(chain).saturating_add(1);
            let remaining = Seq::try_from(max - hashes.len()).unwrap_or(Seq::MAX);
            let (lo, hi, size) = loaded.get(&chain).copied().unwrap_or((Seq::MAX, 0, FIRST_PREFETCH));
            if next >= floor && remaining > 0 && !(lo..=hi).contains(&next) {
                let from = floor.max(next.saturating_sub(size.min(remaining) - 1));
                self.store.prefetch_chain(chain, from, next)?;
                // The loaded range grows when the new one touches it, else the new one replaces it.
                let touches = from <= hi.saturating_add(1) && lo <= next.saturating_add(1);
                let (lo, hi) = if touches { (from.min(lo), next.max(hi)) } else { (from, next) };
                loaded.insert(chain, (lo, hi, size.saturating_mul(2)));
            }
            // The node's predecessors are the entry's `prev`, resolved: no entry read needed.
            let preds: Vec<_> = node.preds.clone();
            for p in preds {
                queue.push_back(self.store.node(p)?.hash);
            }
        }
        Ok(Walk { hashes, positions, complete: true })
    }
}

impl<S: DagStore> Dag<S> {
    /// The oldest-first counterpart of [`Dag::walk_back`], for pg_causal's `forward` header
    /// requests: of the entries in the history of the `start` entries this DAG holds and not
    /// in the history of the `limits` it holds, the first `max` in node order. Node order is
    /// the order entries were stored in, so every entry comes after its predecessors: each
    /// answer holds, besides what the requester has, everything its entries depend on, and
    /// can be imported at once. `complete` says nothing is left after it.
    pub fn walk_forward(&self, start: &[EntryHash], limits: &[EntryHash], max: usize) -> Result<Walk, DagError> {
        let ids = |hashes: &[EntryHash]| -> Result<Vec<_>, DagError> {
            let mut out = Vec::new();
            for h in hashes {
                if let Some(id) = self.store.node_id(h)? {
                    out.push(id);
                }
            }
            Ok(out)
        };
        let below = self.position_clock(&ids(limits)?)?;
        let top = self.position_clock(&ids(start)?)?;
        // On each chain the part to send is `below + 1 ..= top` (a chain is a path, and a
        // history holds a prefix of every chain), and node ids grow along a chain: the answer
        // is a merge of the chains by node id. Each chain is read a page at a time (the first
        // small, each next one twice the last), so a wide DAG costs about what is sent plus a
        // page per chain, not `max` per chain.
        struct Cursor {
            chain: ChainId,
            /// The next seq to read, and the last to send.
            next: Seq,
            hi: Seq,
            page: Seq,
            read: std::collections::VecDeque<(super::NodeId, Seq)>,
        }
        // A page never asks for more than the answer still needs.
        let load = |c: &mut Cursor, needed: usize| -> Result<(), DagError> {
            let size = c.page.min(Seq::try_from(needed).unwrap_or(Seq::MAX)).max(1);
            let to = c.hi.min(c.next.saturating_add(size - 1));
            let ids = self.store.chain_members(c.chain, c.next, to)?;
            c.read.extend(ids.into_iter().zip(c.next..=to));
            c.next = to.saturating_add(1);
            c.page = c.page.saturating_mul(2);
            Ok(())
        };
        let mut cursors: Vec<Cursor> = Vec::new();
        let mut heads = std::collections::BinaryHeap::new();
        for chain in 0..top.width() {
            let (lo, hi) = (below.get(chain).saturating_add(1), top.get(chain));
            if lo > hi {
                continue;
            }
            let mut c = Cursor { chain, next: lo, hi, page: FIRST_PREFETCH, read: Default::default() };
            if max > 0 {
                load(&mut c, max)?;
            }
            if let Some((id, _)) = c.read.front() {
                heads.push(std::cmp::Reverse((*id, cursors.len())));
            }
            cursors.push(c);
        }
        let mut found: Vec<(super::NodeId, ChainId, Seq)> = Vec::new();
        while found.len() < max {
            let Some(std::cmp::Reverse((_, i))) = heads.pop() else { break };
            let c = &mut cursors[i];
            let Some((id, seq)) = c.read.pop_front() else { continue };
            found.push((id, c.chain, seq));
            if c.read.is_empty() && c.next <= c.hi && found.len() < max {
                load(c, max - found.len())?;
            }
            if let Some((next, _)) = c.read.front() {
                heads.push(std::cmp::Reverse((*next, i)));
            }
        }
        let left_over = cursors.iter().any(|c| !c.read.is_empty() || c.next <= c.hi);
        let mut hashes = Vec::with_capacity(found.len());
        for (id, ..) in &found {
            hashes.push(self.store.node(*id)?.hash);
        }
        let positions = found.iter().map(|(_, c, s)| (*c, *s)).collect();
        Ok(Walk { hashes, positions, complete: !left_over })
    }
}

#[cfg(test)]
mod tests {
    use crate::dag::{ChainId, MetaTag, NodeId, Seq, StoreError};
    use crate::entry::{Meta, Position};
    use crate::{Dag, EntryHash, HashAlgorithm, MemStore};
    use serde_json::json;

    #[test]
    fn walks_only_what_the_requester_lacks() {
        // g <- a1 <- a2 (ours: the requester knows a1) and g <- b1 (concurrent).
        let mut dag = Dag::new(MemStore::new(), HashAlgorithm::Blake3);
        let g = dag.append(json!("g"), Meta::new(), Position::new()).unwrap().hash;
        let a1 = dag.append(json!("a1"), Meta::new(), [g].into()).unwrap().hash;
        let a2 = dag.append(json!("a2"), Meta::new(), [a1].into()).unwrap().hash;
        let b1 = dag.append(json!("b1"), Meta::new(), [g].into()).unwrap().hash;
        let m = dag.append(json!("m"), Meta::new(), [a2, b1].into()).unwrap().hash;
        let w = dag.walk_back(&[m], &[a1], 100).unwrap();
        assert!(w.complete);
        assert_eq!(w.hashes, vec![m, a2, b1]);
        // A limit this DAG does not know is just a limit.
        let unknown = EntryHash(HashAlgorithm::Blake3.digest(b"elsewhere"));
        let w = dag.walk_back(&[m], &[unknown], 100).unwrap();
        assert_eq!(w.hashes.len(), 5);
        // Truncated at max, and a start this DAG lacks is skipped.
        let w = dag.walk_back(&[unknown, m], &[], 2).unwrap();
        assert_eq!((w.hashes, w.complete), (vec![m, a2], false));
        assert_eq!(w.positions.len(), 2);
        // Nothing to send when the requester is ahead.
        let w = dag.walk_back(&[a1], &[m], 10).unwrap();
        assert_eq!(w, super::Walk { hashes: vec![], positions: vec![], complete: true });
        // Forward: the same entries, oldest first, in chunks that each follow what came before.
        let w = dag.walk_forward(&[m], &[a1], 100).unwrap();
        assert!(w.complete);
        assert_eq!(w.hashes, vec![a2, b1, m]);
        let w = dag.walk_forward(&[m], &[a1], 2).unwrap();
        assert_eq!((w.hashes, w.complete), (vec![a2, b1], false));
        let w = dag.walk_forward(&[m], &[a1, a2, b1], 2).unwrap();
        assert_eq!((w.hashes, w.complete), (vec![m], true));
        let w = dag.walk_forward(&[a1], &[m], 10).unwrap();
        assert_eq!(w, super::Walk { hashes: vec![], positions: vec![], complete: true });
        assert!(!dag.walk_forward(&[m], &[], 0).unwrap().complete);
    }

    /// A store that counts the chain members it is asked for.
    struct Counting {
        inner: MemStore,
        members_read: std::cell::Cell<usize>,
    }

    impl crate::dag::DagStore for Counting {
        type NodeRef<'a> = &'a crate::dag::Node;
        type EntryRef<'a> = &'a crate::entry::Entry;
        fn len(&self) -> Result<u64, StoreError> {
            self.inner.len()
        }
        fn node_id(&self, hash: &EntryHash) -> Result<Option<NodeId>, StoreError> {
            self.inner.node_id(hash)
        }
        fn node(&self, id: NodeId) -> Result<&crate::dag::Node, StoreError> {
            self.inner.node(id)
        }
        fn entry(&self, id: NodeId) -> Result<&crate::entry::Entry, StoreError> {
            self.inner.entry(id)
        }
        fn chain_count(&self) -> Result<ChainId, StoreError> {
            self.inner.chain_count()
        }
        fn chain_len(&self, chain: ChainId) -> Result<Seq, StoreError> {
            self.inner.chain_len(chain)
        }
        fn chain_member(&self, chain: ChainId, seq: Seq) -> Result<NodeId, StoreError> {
            self.members_read.set(self.members_read.get() + 1);
            self.inner.chain_member(chain, seq)
        }
        fn latest_tagged(&self, tag: &MetaTag, chain: ChainId, lo: Seq, hi: Seq) -> Result<Option<Seq>, StoreError> {
            self.inner.latest_tagged(tag, chain, lo, hi)
        }
        fn frontier(&self) -> Result<Vec<NodeId>, StoreError> {
            self.inner.frontier()
        }
        fn insert(&mut self, node: crate::dag::Node, entry: crate::entry::Entry) -> Result<NodeId, StoreError> {
            self.inner.insert(node, entry)
        }
    }

    /// A forward walk over a wide DAG reads about what it sends plus a small page per chain,
    /// not `max` entries of every chain.
    #[test]
    fn a_forward_walk_reads_little_more_than_it_sends() {
        let store = Counting { inner: MemStore::new(), members_read: Default::default() };
        let mut dag = Dag::new(store, HashAlgorithm::Blake3);
        let g = dag.append(json!("g"), Meta::new(), Position::new()).unwrap().hash;
        // 20 writers, each on its own branch from the genesis, taking turns.
        let mut tips = vec![g; 20];
        for i in 0..400 {
            for (w, tip) in tips.iter_mut().enumerate() {
                *tip = dag.append(json!([w, i]), Meta::new(), [*tip].into()).unwrap().hash;
            }
        }
        dag.store().members_read.set(0);
        let w = dag.walk_forward(&tips, &[g], 500).unwrap();
        assert_eq!((w.hashes.len(), w.complete), (500, false));
        // Oldest first: the first 25 turns of every writer (the first writer's chain starts
        // with the genesis).
        assert!(w.positions.iter().all(|(_, seq)| *seq <= 26), "{:?}", w.positions.iter().max_by_key(|p| p.1));
        let read = dag.store().members_read.get();
        assert!(read <= 500 + 20 * 64, "{read} chain members read for 500 sent");
        // Down one chain, pages grow but never past what the answer needs.
        dag.store().members_read.set(0);
        let w = dag.walk_forward(&tips[..1], &[g], 300).unwrap();
        assert_eq!(w.hashes.len(), 300);
        assert_eq!(dag.store().members_read.get(), 300);
    }

    /// Forward walks in chunks, each asked with the last chunk's entries added to the limits,
    /// bring exactly what a backward walk brings, every entry after its predecessors.
    #[test]
    fn forward_chunks_cover_the_backward_walk() {
        use std::collections::HashSet;
        let mut dag = Dag::new(MemStore::new(), HashAlgorithm::Blake3);
        let g = dag.append(json!("g"), Meta::new(), Position::new()).unwrap().hash;
        let mut all = vec![g];
        let mut state: u64 = 0x2545f4914f6cdd1d;
        let mut rand = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for i in 0..300 {
            let mut prev = Position::new();
            for _ in 0..1 + rand(3) {
                prev.insert(all[all.len() - 1 - rand(all.len().min(20))]);
            }
            let prev = dag.minimal_cover(&prev).unwrap();
            all.push(dag.append(json!(i), Meta::new(), prev).unwrap().hash);
        }
        let frontier: Vec<_> = dag.frontier().unwrap().into_iter().collect();
        for (known, max) in [(0, 7), (50, 1), (120, 33), (299, 5)] {
            let limits = vec![all[known]];
            let back: HashSet<_> = dag.walk_back(&frontier, &limits, 10_000).unwrap().hashes.into_iter().collect();
            let mut have: HashSet<EntryHash> = HashSet::new();
            let mut limits_now = limits.clone();
            loop {
                let w = dag.walk_forward(&frontier, &limits_now, max).unwrap();
                assert!(w.hashes.len() <= max);
                for h in &w.hashes {
                    let e = dag.entry(h).unwrap().unwrap();
                    for p in &e.header.prev {
                        assert!(have.contains(p) || !back.contains(p), "{h} came before its predecessor {p}");
                    }
                    assert!(have.insert(*h), "{h} sent twice");
                }
                limits_now.extend(w.hashes.iter().copied());
                if w.complete {
                    break;
                }
            }
            assert_eq!(have, back, "known {known}, max {max}");
        }
    }
}
