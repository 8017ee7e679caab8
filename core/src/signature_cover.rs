//! Which unsigned entries a signature covers.
//!
//! An entry may carry no signature when a later entry of the *same author* vouches for it
//! (see [`crate::payload`]): the later entry's signature covers its predecessor hashes, and
//! each hash covers an entry's author, operations and predecessors. So a verified signature of
//! author A on entry Y establishes every unsigned entry claiming A that is reached from Y
//! through unsigned entries claiming A: Y's predecessors of author A, their predecessors of
//! author A, and so on. Nothing else is covered: an unsigned entry of another author among
//! Y's predecessors is not (A cannot sign for B), and neither is an entry reached through a
//! signed one (that one's own signature speaks for its past).
//!
//! An unsigned entry is valid only once covered, and only while its run of unsigned entries
//! of one author stays within [`MAX_UNSIGNED_RUN`]: the sealer signs at least that often, and
//! a receiver never holds more than that many entries of one author's run waiting for their
//! signature. Both rules are functions of the history alone, so every replica agrees.
//!
//! [`CoverTracker`] follows entries in topological order (predecessors first): unsigned
//! entries are held, and each entry whose authorship is established (a verified signature)
//! releases the held entries it covers.

use crate::entry::Position;
use crate::hash::EntryHash;
use crate::identity::KeyId;
use crate::FastMap;

/// The longest run of unsigned entries of one author (each one a predecessor of the next)
/// before a signed one; the sealer signs at least every `MAX_UNSIGNED_RUN + 1` entries.
pub const MAX_UNSIGNED_RUN: usize = 255;

/// Why an unsigned entry cannot be held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("more than {MAX_UNSIGNED_RUN} unsigned entries of author {author} in a row")]
pub struct RunTooLong {
    pub author: KeyId,
}

/// Unsigned entries waiting for a signature of their author that covers them.
#[derive(Default, Debug)]
pub struct CoverTracker {
    /// Each held entry's author, predecessors, and the length of its run of unsigned entries.
    held: FastMap<EntryHash, (KeyId, Position, usize)>,
}

impl CoverTracker {
    pub fn new() -> CoverTracker {
        CoverTracker::default()
    }

    /// An unsigned entry of `author` at `prev` arrived: it is held until covered. Refused when
    /// it would make its author's run of unsigned entries longer than [`MAX_UNSIGNED_RUN`].
    pub fn hold(&mut self, hash: EntryHash, author: KeyId, prev: Position) -> Result<(), RunTooLong> {
        let before = prev
            .iter()
            .filter_map(|p| self.held.get(p))
            .filter(|(a, _, _)| *a == author)
            .map(|(_, _, run)| *run)
            .max()
            .unwrap_or(0);
        if before >= MAX_UNSIGNED_RUN {
            return Err(RunTooLong { author });
        }
        self.held.insert(hash, (author, prev, before + 1));
        Ok(())
    }

    /// An entry of `author` at `prev` whose signature verified: releases and returns the held
    /// entries it covers.
    pub fn vouch(&mut self, author: &KeyId, prev: &Position) -> Vec<EntryHash> {
        let mut covered = Vec::new();
        let mut next: Vec<EntryHash> = prev.iter().copied().collect();
        while let Some(h) = next.pop() {
            if self.held.get(&h).is_some_and(|(a, _, _)| a == author) {
                if let Some((_, p, _)) = self.held.remove(&h) {
                    next.extend(p.iter().copied());
                    covered.push(h);
                }
            }
        }
        covered
    }

    /// Whether `hash` is held (unsigned, not covered yet).
    pub fn is_held(&self, hash: &EntryHash) -> bool {
        self.held.contains_key(hash)
    }

    /// The entries still held.
    pub fn held(&self) -> impl Iterator<Item = &EntryHash> {
        self.held.keys()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashAlgorithm;
    use crate::identity::Keypair;

    fn h(n: u32) -> EntryHash {
        EntryHash(HashAlgorithm::Blake3.digest(&n.to_be_bytes()))
    }

    fn at(hashes: &[EntryHash]) -> Position {
        hashes.iter().copied().collect()
    }

    /// A signature covers the author's run of unsigned entries behind it, through a merge
    /// with another author's entry, and nothing of the other author's.
    #[test]
    fn a_signature_covers_its_authors_unsigned_run_only() {
        let (a, b) = (Keypair::generate().public().key_id(), Keypair::generate().public().key_id());
        let mut t = CoverTracker::new();
        t.hold(h(1), a, at(&[h(0)])).unwrap();
        t.hold(h(2), b, at(&[h(0)])).unwrap();
        t.hold(h(3), a, at(&[h(1), h(2)])).unwrap();
        // b's entry 2 is not covered by a's signature on 4, which names it as a predecessor.
        let mut covered = t.vouch(&a, &at(&[h(3)]));
        covered.sort();
        let mut expected = vec![h(1), h(3)];
        expected.sort();
        assert_eq!(covered, expected);
        assert!(t.is_held(&h(2)));
        // Another author's signature does not cover a's entries either.
        t.hold(h(5), a, at(&[h(4)])).unwrap();
        assert!(t.vouch(&b, &at(&[h(5), h(2)])) == vec![h(2)]);
        assert!(t.is_held(&h(5)));
        assert_eq!(t.held().count(), 1);
    }

    /// The run of unsigned entries is bounded; a signature resets it.
    #[test]
    fn a_run_longer_than_the_bound_is_refused() {
        let a = Keypair::generate().public().key_id();
        let mut t = CoverTracker::new();
        for n in 1..=MAX_UNSIGNED_RUN as u32 {
            t.hold(h(n), a, at(&[h(n - 1)])).unwrap();
        }
        let last = MAX_UNSIGNED_RUN as u32;
        assert_eq!(t.hold(h(last + 1), a, at(&[h(last)])), Err(RunTooLong { author: a }));
        assert_eq!(t.vouch(&a, &at(&[h(last)])).len(), MAX_UNSIGNED_RUN);
        assert!(t.is_empty());
        t.hold(h(last + 2), a, at(&[h(last + 1)])).unwrap();
    }
}
