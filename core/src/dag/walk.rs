//! The header walk that serves a sync `header-request` (hhs3 sync spec §4), sharpened: besides
//! stopping at the requester's `limits`, it stops at anything in their history that this DAG
//! knows. A requester whose `limits` is its frontier therefore gets exactly the entries it
//! lacks, and a walk that reaches only known history answers empty and complete.

use std::collections::{HashSet, VecDeque};

use super::{Dag, DagError, DagStore};
use crate::hash::Hash;

/// The result of a walk: entry hashes in breadth-first order from `start`, and whether the
/// walk finished (`false`: it stopped at `max`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    pub hashes: Vec<Hash>,
    pub complete: bool,
}

impl<S: DagStore> Dag<S> {
    /// Walks back breadth first from the `start` entries this DAG holds, leaving out `limits`
    /// and everything in the history of the `limits` it holds, collecting at most `max`.
    pub fn walk_back(&self, start: &[Hash], limits: &[Hash], max: usize) -> Result<Walk, DagError> {
        let limit_set: HashSet<Hash> = limits.iter().copied().collect();
        let mut known = Vec::new();
        for h in limits {
            if let Some(id) = self.store.node_id(h)? {
                known.push(id);
            }
        }
        let below = self.position_clock(&known)?;
        let mut queue: VecDeque<Hash> = VecDeque::new();
        for h in start {
            if self.store.node_id(h)?.is_some() {
                queue.push_back(*h);
            }
        }
        let mut seen: HashSet<Hash> = HashSet::new();
        let mut hashes = Vec::new();
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
                return Ok(Walk { hashes, complete: false });
            }
            hashes.push(h);
            // The node's predecessors are the entry's `prev`, resolved: no entry read needed.
            let preds: Vec<_> = node.preds.clone();
            for p in preds {
                queue.push_back(self.store.node(p)?.hash);
            }
        }
        Ok(Walk { hashes, complete: true })
    }
}

#[cfg(test)]
mod tests {
    use crate::entry::{Meta, Position};
    use crate::{Dag, HashAlgorithm, MemStore};
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
        let unknown = HashAlgorithm::Blake3.digest(b"elsewhere");
        let w = dag.walk_back(&[m], &[unknown], 100).unwrap();
        assert_eq!(w.hashes.len(), 5);
        // Truncated at max, and a start this DAG lacks is skipped.
        let w = dag.walk_back(&[unknown, m], &[], 2).unwrap();
        assert_eq!(w, super::Walk { hashes: vec![m, a2], complete: false });
        // Nothing to send when the requester is ahead.
        let w = dag.walk_back(&[a1], &[m], 10).unwrap();
        assert_eq!(w, super::Walk { hashes: vec![], complete: true });
    }
}
