//! Which entries of an incoming batch are stored already, asked with few lookups.
//!
//! A store takes an entry only once it holds every predecessor of that entry, and never drops
//! one. So the stored set is closed under predecessors: an entry with a predecessor that is
//! not stored cannot be stored either. An import asks the store in two rounds:
//!
//! 1. the predecessors that lie outside the batch, and the batch entries none of whose
//!    predecessors are in the batch ([`StoredProbe::first_round`]);
//! 2. the batch entries the first answers leave open ([`StoredProbe::second_round`]): those
//!    whose predecessors were all found stored.
//!
//! A batch of new history (the common case) is settled by the first round, which asks about
//! its boundary only; a batch the store mostly holds (history sent twice) asks about every
//! entry, as a single round would.

use std::collections::HashMap;

use crate::entry::Position;
use crate::hash::EntryHash;

/// What the store says of a hash: stored, absent, or not asked yet.
pub type Known = Option<bool>;

/// A batch of entries (hash and predecessors), in the order they arrived.
pub struct StoredProbe<'a> {
    batch: Vec<(&'a EntryHash, &'a Position)>,
    /// Each hash's first position in the batch.
    index: HashMap<&'a EntryHash, usize>,
}

impl<'a> StoredProbe<'a> {
    pub fn new(batch: impl IntoIterator<Item = (&'a EntryHash, &'a Position)>) -> Self {
        let batch: Vec<_> = batch.into_iter().collect();
        let mut index = HashMap::with_capacity(batch.len());
        for (i, (h, _)) in batch.iter().enumerate() {
            index.entry(*h).or_insert(i);
        }
        StoredProbe { batch, index }
    }

    /// The hashes to ask first: predecessors outside the batch, and the batch entries with no
    /// predecessor in the batch. Sorted, without repeats.
    pub fn first_round(&self) -> Vec<EntryHash> {
        let mut ask = Vec::new();
        for (h, prev) in &self.batch {
            let mut inside = false;
            for p in prev.iter() {
                if self.index.contains_key(p) {
                    inside = true;
                } else {
                    ask.push(*p);
                }
            }
            if !inside {
                ask.push(**h);
            }
        }
        ask.sort_unstable();
        ask.dedup();
        ask
    }

    /// After the first round: the batch entries still to ask, and those that cannot be stored
    /// because a predecessor is not. `known` answers for every hash asked so far.
    ///
    /// An entry that comes before one of its predecessors in the batch is asked rather than
    /// inferred (its predecessor's status is not settled when it is reached).
    pub fn second_round(&self, known: impl Fn(&EntryHash) -> Known) -> (Vec<EntryHash>, Vec<EntryHash>) {
        // Per batch position: Some(false) when surely absent, Some(true) when stored.
        let mut status: Vec<Known> = Vec::with_capacity(self.batch.len());
        let (mut ask, mut absent) = (Vec::new(), Vec::new());
        for (i, (h, prev)) in self.batch.iter().enumerate() {
            let s = match known(h) {
                Some(s) => Some(s),
                None => {
                    let missing = prev.iter().any(|p| match self.index.get(p) {
                        Some(&j) if j < i => status[j] == Some(false),
                        Some(_) => false,
                        None => known(p) == Some(false),
                    });
                    if missing {
                        absent.push(**h);
                        Some(false)
                    } else if self.index.get(*h) == Some(&i) {
                        ask.push(**h);
                        None
                    } else {
                        // A repeat of an earlier batch entry: its status is the first one's.
                        status[self.index[*h]]
                    }
                }
            };
            status.push(s);
        }
        ask.sort_unstable();
        ask.dedup();
        absent.sort_unstable();
        absent.dedup();
        (ask, absent)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use super::*;
    use crate::hash::HashAlgorithm;

    fn h(n: u32) -> EntryHash {
        EntryHash(HashAlgorithm::Blake3.digest(&n.to_le_bytes()))
    }

    /// Runs both rounds against a stored set; returns what was asked and what was settled.
    fn settle(batch: &[(EntryHash, Position)], stored: &HashSet<EntryHash>) -> (usize, HashMap<EntryHash, bool>) {
        let probe = StoredProbe::new(batch.iter().map(|(h, p)| (h, p)));
        let first = probe.first_round();
        let mut known: HashMap<EntryHash, bool> = first.iter().map(|h| (*h, stored.contains(h))).collect();
        let (ask, absent) = probe.second_round(|h| known.get(h).copied());
        let asked = first.len() + ask.len();
        for a in &ask {
            known.insert(*a, stored.contains(a));
        }
        for a in absent {
            assert!(known.insert(a, false).is_none(), "an entry was both asked and inferred");
        }
        (asked, known)
    }

    fn chain(from: u32, to: u32, root_prev: EntryHash) -> Vec<(EntryHash, Position)> {
        (from..to).map(|i| (h(i), [if i == from { root_prev } else { h(i - 1) }].into())).collect()
    }

    #[test]
    fn new_history_is_settled_by_its_boundary() {
        let stored: HashSet<EntryHash> = [h(0)].into();
        let batch = chain(1, 1001, h(0));
        let (asked, known) = settle(&batch, &stored);
        assert_eq!(asked, 2, "the outside predecessor and the first entry");
        assert!(batch.iter().all(|(e, _)| !known[e]));
    }

    #[test]
    fn history_sent_twice_is_asked_entry_by_entry() {
        let batch = chain(1, 101, h(0));
        let stored: HashSet<EntryHash> = (0..101).map(h).collect();
        let (asked, known) = settle(&batch, &stored);
        assert_eq!(asked, 101);
        assert!(batch.iter().all(|(e, _)| known[e]));
    }

    #[test]
    fn an_overlap_then_new_entries() {
        // 0..=50 stored; the batch repeats 41..=50 and brings 51..=99.
        let stored: HashSet<EntryHash> = (0..=50).map(h).collect();
        let batch = chain(41, 100, h(40));
        let (_, known) = settle(&batch, &stored);
        for i in 41..100 {
            assert_eq!(known[&h(i)], i <= 50, "entry {i}");
        }
    }

    proptest! {
        /// Whatever the DAG, the stored set (closed under predecessors) and the batch order,
        /// every batch entry is settled, and settled right.
        #[test]
        fn every_entry_is_settled_as_the_store_has_it(
            preds in prop::collection::vec(prop::collection::vec(any::<prop::sample::Index>(), 0..3), 1..40),
            stored_share in 0usize..=100,
            batch_from in any::<prop::sample::Index>(),
            shuffle in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let n = preds.len();
            // Entry i's predecessors are earlier entries (a DAG); entry 0 has none.
            let prev: Vec<Position> = preds
                .iter()
                .enumerate()
                .map(|(i, ps)| if i == 0 { Position::new() } else { ps.iter().map(|x| h(x.index(i) as u32)).collect() })
                .collect();
            // Stored: a prefix-closed set, entries taken in order while their predecessors are.
            let mut stored = HashSet::new();
            for (i, ps) in prev.iter().enumerate() {
                if (i * 100) / n < stored_share && ps.iter().all(|p| stored.contains(p)) {
                    stored.insert(h(i as u32));
                }
            }
            let from = batch_from.index(n);
            let mut batch: Vec<(EntryHash, Position)> = (from..n).map(|i| (h(i as u32), prev[i].clone())).collect();
            if shuffle {
                // A deterministic shuffle: some entries come before their predecessors.
                let mut x = seed | 1;
                for i in (1..batch.len()).rev() {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    batch.swap(i, (x % (i as u64 + 1)) as usize);
                }
            }
            let (_, known) = settle(&batch, &stored);
            for (e, _) in &batch {
                prop_assert_eq!(known.get(e).copied(), Some(stored.contains(e)));
            }
        }
    }
}
