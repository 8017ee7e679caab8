//! Which deletes count for nothing: a delete that ends up cancelled takes nothing away from
//! the entries concurrent to it (docs/SEMANTICS.md §4, "void deletes").
//!
//! A delete D later in the canonical order than a concurrent entry E is counted against E
//! before D's own verdict is known. When D then turns out cancelled, the region is replayed
//! again with D left out ("void"), from the start of D's **segment**.
//!
//! Segments cut the region where no delete reaches back: a segment boundary lies before
//! index `i` when every delete at or after `i` has every entry before `i` in its history. A
//! delete is only ever counted against entries of its own segment, so replaying a segment
//! again changes nothing before it, and the boundaries are a function of the DAG, not of
//! where a replica's region happens to start (that start is a boundary itself: the rewind
//! point is widened to the fork of every delete above it). So every replica takes the same
//! decisions, in the same order, whatever its history of arrivals.
//!
//! In a segment, the deletes to void are decided like this, from the verdicts of one replay:
//! - only cancelled deletes that some entry counted (they made a row invisible to it) matter:
//!   voiding any other changes nothing;
//! - those whose cancellation does not blame another counted, cancelled delete are voided
//!   first (they are cancelled on their own grounds);
//! - when every one blames another (deletes that cancel one another in a cycle), all of them
//!   are voided, as the reference denies a whole cycle.
//!
//! Each round voids at least one more delete, so the rounds end.

use super::{Cancel, CancelCode};
use crate::hash::EntryHash;
use crate::{FastMap as HashMap, FastSet as HashSet};

/// For each region index, the index its segment starts at. `reach` lists, for each delete
/// that counts, `(earliest index concurrent to it, its own index)`.
pub(super) fn segment_starts(len: usize, reach: &[(usize, usize)]) -> Vec<usize> {
    // The furthest delete index each position is tied to.
    let mut tied = vec![0usize; len];
    let mut any = vec![false; len];
    for &(from, to) in reach {
        if from < to && to < len {
            tied[from] = tied[from].max(to);
            any[from] = true;
        }
    }
    let mut starts = Vec::with_capacity(len);
    let (mut start, mut end) = (0usize, 0usize);
    for i in 0..len {
        if i > end || i == 0 {
            start = i;
            end = i;
        }
        if any[i] {
            end = end.max(tied[i]);
        }
        starts.push(start);
    }
    starts
}

/// A delete of the region that counted and ended cancelled.
pub(super) struct CancelledDelete {
    pub index: usize,
    pub hash: EntryHash,
    pub code: CancelCode,
    pub reason: String,
    pub responsible: Vec<EntryHash>,
    /// Whether some entry counted it (it made a row invisible to that entry).
    pub counted_by_another: bool,
}

/// A delete to void, with the reason it stays cancelled for and the entries responsible.
pub(super) type ToVoid = (EntryHash, Cancel);

/// The deletes to void in the first segment that needs it (with that segment's start), and
/// the reason each is cancelled for; `None` when no segment needs any. `cancelled` is in
/// region order.
pub(super) fn next_void(cancelled: &[CancelledDelete], segment_start: &[usize]) -> Option<(usize, Vec<ToVoid>)> {
    let first = cancelled.iter().find(|c| c.counted_by_another)?;
    let segment = segment_start[first.index];
    let in_segment: Vec<&CancelledDelete> =
        cancelled.iter().filter(|c| segment_start.get(c.index) == Some(&segment)).collect();
    let cancelled_set: HashSet<EntryHash> = in_segment.iter().map(|c| c.hash).collect();
    let counted: Vec<&&CancelledDelete> = in_segment.iter().filter(|c| c.counted_by_another).collect();
    let grounded: Vec<ToVoid> = counted
        .iter()
        .filter(|c| !c.responsible.iter().any(|r| cancelled_set.contains(r)))
        .map(|c| (c.hash, Cancel::new(c.code, c.reason.clone(), c.responsible.clone())))
        .collect();
    if !grounded.is_empty() {
        return Some((segment, grounded));
    }
    // A cycle: every counted one is cancelled because of another cancelled delete.
    let mut members: Vec<EntryHash> = in_segment.iter().map(|c| c.hash).collect();
    members.sort();
    let names: Vec<String> = members.iter().map(|h| h.to_b64().chars().take(10).collect()).collect();
    let reason = format!(
        "it is one of the concurrent deletes {} that cancel one another: none of them counts",
        names.join(", ")
    );
    let voided = counted
        .iter()
        .map(|c| {
            let others = members.iter().filter(|m| **m != c.hash).copied().collect();
            (c.hash, Cancel::new(CancelCode::ConflictingDeletes, reason.clone(), others))
        })
        .collect();
    Some((segment, voided))
}

/// Deletes left out, with the reason each stays cancelled for.
pub(super) type Voided = HashMap<EntryHash, Cancel>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_join_what_a_delete_reaches_back_to() {
        // Delete at 4 concurrent with 2; delete at 3 concurrent with 1: one segment 1..=4.
        assert_eq!(segment_starts(7, &[(2, 4), (1, 3)]), vec![0, 1, 1, 1, 1, 5, 6]);
        assert_eq!(segment_starts(3, &[]), vec![0, 1, 2]);
        // A delete with nothing concurrent before it ties nothing.
        assert_eq!(segment_starts(3, &[(2, 2), (5, 1)]), vec![0, 1, 2]);
    }

    fn cd(index: usize, hash: u8, responsible: &[u8], counted: bool) -> CancelledDelete {
        CancelledDelete {
            index,
            hash: EntryHash(crate::Hash([hash; 32])),
            code: CancelCode::RowGone,
            reason: format!("r{hash}"),
            responsible: responsible.iter().map(|b| EntryHash(crate::Hash([*b; 32]))).collect(),
            counted_by_another: counted,
        }
    }

    #[test]
    fn grounded_deletes_are_voided_before_a_cycle() {
        let starts = segment_starts(6, &[(0, 3), (4, 5)]);
        // 1 is cancelled because of 2, which is cancelled on its own grounds (by entry 9).
        let c = vec![cd(1, 1, &[2], true), cd(2, 2, &[9], true), cd(5, 5, &[], true)];
        let (seg, v) = next_void(&c, &starts).unwrap();
        assert_eq!(seg, 0);
        assert_eq!(v.iter().map(|x| x.0).collect::<Vec<_>>(), vec![EntryHash(crate::Hash([2; 32]))]);
        // A mutual pair: both voided.
        let c = vec![cd(1, 1, &[2], true), cd(2, 2, &[1], true)];
        let (_, v) = next_void(&c, &starts).unwrap();
        assert_eq!(v.len(), 2);
        // Nothing counted: nothing to do.
        assert!(next_void(&[cd(1, 1, &[], false)], &starts).is_none());
    }
}
