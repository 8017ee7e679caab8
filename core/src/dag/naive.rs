//! A deliberately plain implementation of the DAG queries, computed from the definitions by
//! explicit reachability sets. It is the oracle for the property tests and the baseline of the
//! benchmarks; nothing in production uses it.

use std::collections::{HashMap, HashSet};

use super::{ForkPosition, MetaFilter};
use crate::entry::{Meta, Position};
use crate::hash::EntryHash;

#[derive(Default, Clone, Debug)]
pub struct NaiveDag {
    preds: HashMap<EntryHash, Vec<EntryHash>>,
    meta: HashMap<EntryHash, Meta>,
    order: Vec<EntryHash>,
}

impl NaiveDag {
    pub fn new() -> NaiveDag {
        NaiveDag::default()
    }

    pub fn add(&mut self, hash: EntryHash, prev: &Position, meta: &Meta) {
        if self.preds.insert(hash, prev.iter().copied().collect()).is_none() {
            self.order.push(hash);
        }
        self.meta.insert(hash, meta.clone());
    }

    /// `H(p)`: `p` and everything before it.
    pub fn history(&self, p: &Position) -> HashSet<EntryHash> {
        let mut seen: HashSet<EntryHash> = HashSet::new();
        let mut stack: Vec<EntryHash> = p.iter().copied().collect();
        while let Some(h) = stack.pop() {
            if seen.insert(h) {
                stack.extend(self.preds.get(&h).into_iter().flatten().copied());
            }
        }
        seen
    }

    /// Members of `set` that are in the strict history of no other member: one walk over
    /// the history of all the members' predecessors.
    pub fn maximal(&self, set: &HashSet<EntryHash>) -> Position {
        let preds: Position = set.iter().flat_map(|h| self.preds.get(h).into_iter().flatten().copied()).collect();
        let below = self.history(&preds);
        set.iter().filter(|h| !below.contains(h)).copied().collect()
    }

    pub fn minimal_cover(&self, p: &Position) -> Position {
        self.maximal(&p.iter().copied().collect())
    }

    pub fn frontier(&self) -> Position {
        self.maximal(&self.order.iter().copied().collect())
    }

    pub fn fork_position(&self, a: &Position, b: &Position) -> ForkPosition {
        let ha = self.history(a);
        let hb = self.history(b);
        let both: HashSet<EntryHash> = ha.intersection(&hb).copied().collect();
        let mut fp = ForkPosition { common_frontier: self.maximal(&both), ..Default::default() };
        for (only, fork) in [(ha.difference(&hb), &mut fp.fork_a), (hb.difference(&ha), &mut fp.fork_b)] {
            for n in only {
                let preds = &self.preds[n];
                if preds.is_empty() {
                    fork.insert(*n);
                }
                for p in preds {
                    if both.contains(p) {
                        fork.insert(*n);
                        fp.common.insert(*p);
                    }
                }
            }
        }
        fp
    }

    pub fn meet(&self, positions: &[Position]) -> Position {
        let mut iter = positions.iter().map(|p| self.history(p));
        let Some(mut acc) = iter.next() else {
            return Position::new();
        };
        for h in iter {
            acc.retain(|x| h.contains(x));
        }
        self.maximal(&acc)
    }

    /// Maximal matching entries of `H(from)`, optionally only those concurrent to every
    /// member of `concurrent_to`.
    pub fn filtered_cover(&self, from: &Position, concurrent_to: Option<&Position>, filter: &MetaFilter) -> Position {
        let mut taken: HashSet<EntryHash> =
            self.history(from).into_iter().filter(|h| filter.matches(&self.meta[h])).collect();
        if let Some(others) = concurrent_to {
            for o in others {
                let before = self.history(&[*o].into());
                taken.retain(|x| !before.contains(x) && !self.history(&[*x].into()).contains(o));
            }
        }
        self.maximal(&taken)
    }
}
