//! Concurrent removals that remove each other's authors, decided by seniority
//! (docs/SEMANTICS.md §3).
//!
//! A removal R1 **attacks** a removal R2 when R1 removes R2's author and the two are
//! concurrent: if R1 stands, R2's author was no longer an admin when R2 was made. Attacks can
//! form cycles (two admins removing each other, or a ring of any length), where "a removal
//! wins over what the removed did concurrently" has no answer by itself.
//!
//! The answer here depends on the entries only through the **seniority** of each removal's
//! author: the canonical position (height, hash) of the admin grant in force for that author
//! in the removal's history (the genesis for the first admin). An older grant is more senior.
//! Padding a branch with entries moves the removal, never the grant, so it changes nothing.
//!
//! The conflicts are decided as an argumentation framework, to a fixpoint:
//! 1. a removal none of whose attackers stands, stands; a removal attacked by one that stands
//!    falls (the grounded part, which needs no tiebreak);
//! 2. when only cycles are left, the undecided removal whose author is most senior stands and
//!    its attackers fall; then back to 1.
//!
//! Every removal ends decided, and the outcome does not depend on delivery order, heights of
//! the removals, or the order of the input.

use std::collections::{BTreeMap, BTreeSet};

use crate::dag::{Dag, DagStore};
use crate::hash::EntryHash;
use crate::identity::KeyId;

use super::{OrderKey, ReconcileError};

/// A removal, as the conflict resolution sees it.
#[derive(Clone, Debug)]
pub struct Removal {
    pub entry: EntryHash,
    pub order: OrderKey,
    pub author: KeyId,
    pub removed: KeyId,
    /// The author's seniority: the order key of the admin grant in force in the removal's
    /// history (`None`: no grant there; least senior).
    pub seniority: Option<OrderKey>,
}

/// The outcome: the removals that fall, each with the removals that made it fall.
pub type Fallen = BTreeMap<EntryHash, Vec<EntryHash>>;

/// Decides the conflicts among `removals`.
pub fn resolve<S: DagStore>(dag: &Dag<S>, removals: &[Removal]) -> Result<Fallen, ReconcileError> {
    // attackers[i]: the removals that attack removal i.
    let mut attackers: Vec<Vec<usize>> = vec![Vec::new(); removals.len()];
    for (i, r2) in removals.iter().enumerate() {
        for (j, r1) in removals.iter().enumerate() {
            if i != j
                && r1.removed == r2.author
                && !dag.precedes(&r1.entry, &r2.entry)?
                && !dag.precedes(&r2.entry, &r1.entry)?
            {
                attackers[i].push(j);
            }
        }
    }
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum State {
        Undecided,
        Stands,
        Falls,
    }
    let mut state = vec![State::Undecided; removals.len()];
    // For a removal that fell to the tiebreak: the senior removal it attacked.
    let mut lost_to: Vec<Option<usize>> = vec![None; removals.len()];
    loop {
        // 1. The grounded part.
        let mut changed = true;
        while changed {
            changed = false;
            for i in 0..removals.len() {
                if state[i] != State::Undecided {
                    continue;
                }
                if attackers[i].iter().any(|&j| state[j] == State::Stands) {
                    state[i] = State::Falls;
                    changed = true;
                } else if attackers[i].iter().all(|&j| state[j] == State::Falls) {
                    state[i] = State::Stands;
                    changed = true;
                }
            }
        }
        // 2. Cycles: the most senior undecided author's removal stands (ties: canonical order).
        let pick = (0..removals.len())
            .filter(|&i| state[i] == State::Undecided)
            .min_by_key(|&i| (removals[i].seniority.is_none(), removals[i].seniority, removals[i].order));
        let Some(i) = pick else { break };
        state[i] = State::Stands;
        for &j in &attackers[i] {
            if state[j] == State::Undecided {
                state[j] = State::Falls;
                lost_to[j] = Some(i);
            }
        }
    }
    let mut fallen = Fallen::new();
    for (i, r) in removals.iter().enumerate() {
        if state[i] == State::Falls {
            let by: BTreeSet<EntryHash> = attackers[i]
                .iter()
                .filter(|&&j| state[j] == State::Stands)
                .chain(lost_to[i].iter())
                .map(|&j| removals[j].entry)
                .collect();
            fallen.insert(r.entry, by.into_iter().collect());
        }
    }
    Ok(fallen)
}
