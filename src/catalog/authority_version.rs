//! Each group's authority version, as the capture trigger reads it at a transaction's first
//! write to the group: kept per backend, and dropped whenever any backend raises a version.
//!
//! A group's authority version counts its stored entries that carry authority (membership,
//! schemas, rules). A member's status at the frontier depends only on those entries, so the
//! trigger's member check is kept by version (`author::members`). Reading the version from
//! `causal.group_defs` was one SQL statement per writing transaction: a sixth of a single-row
//! INSERT's backend time. A store that raises a version ([`raised`]) sends the catalog's
//! relcache invalidation (the one [`super::tables::tables_changed`] sends), which every backend
//! takes in at its next lock of a relation, or at [`current`]'s explicit call: a change
//! committed while a writer waited for the group's lock is seen, as a fresh read would.

use std::cell::RefCell;

use causal_core::FastMap;
use pgrx::pg_sys;

use crate::error::CausalError;
use crate::pg::spi::get_prepared;

thread_local! {
    /// By group number (`group_defs.grp`).
    static VERSIONS: RefCell<FastMap<i32, u32>> = RefCell::default();
}

/// The authority version of group number `num`, as committed (or raised by this transaction).
pub fn current(num: i32) -> Result<u32, CausalError> {
    // SAFETY: takes in pending invalidations, as Postgres does when it locks a relation; on
    // the backend's thread, inside a transaction.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    if let Some(v) = VERSIONS.with(|v| v.borrow().get(&num).copied()) {
        return Ok(v);
    }
    let v = get_prepared::<i32>("SELECT authority_version FROM causal.group_defs WHERE grp = $1", &[num.into()])?
        .ok_or_else(|| CausalError::Corrupt(format!("group number {num} has no row in causal.group_defs")))?;
    let v = u32::try_from(v).map_err(|_| CausalError::Corrupt(format!("group number {num}: authority version {v}")))?;
    VERSIONS.with(|m| m.borrow_mut().insert(num, v));
    Ok(v)
}

/// Called when this transaction raises a group's authority version: this backend forgets the
/// versions it kept at once, every other one when the transaction commits.
pub fn raised() -> Result<(), CausalError> {
    forget();
    super::tables::tables_changed()
}

/// Forgets every version kept: on the catalog's invalidation, and when work is undone (it may
/// have raised one).
pub fn forget() {
    VERSIONS.with(|v| v.borrow_mut().clear());
}
