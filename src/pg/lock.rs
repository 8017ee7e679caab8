//! The advisory lock that orders a group's local writers against its imports.

use pgrx::pg_sys;

use crate::error::CausalError;

/// The advisory lock that orders a group's local writers against its imports: local writes
/// take it shared before their first row lock, an import takes it exclusively before anything
/// else. Without it, an import (group row, then user rows) and a local transaction (user rows,
/// then the group row at commit) could deadlock.
pub const GROUP_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(1667331443, $1::int4)";

/// The first key of every group's advisory lock.
const GROUP_LOCK_CLASS: u32 = 1667331443;

/// The second key of a group's advisory lock (the first is [`GROUP_LOCK_CLASS`]): the first
/// four bytes of the group id's hash.
pub fn group_lock_key(group_id: &str) -> Result<i32, CausalError> {
    let h: causal_core::GroupId = group_id.parse().map_err(|e| CausalError::Corrupt(format!("group id: {e}")))?;
    let b = h.as_bytes();
    Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Takes the group write lock of key `lock_key` exclusively, as imports and administrative
/// appends do (see [`lock_advisory`]): writers in flight finish first, later ones wait.
pub fn lock_group_exclusive(lock_key: i32) {
    lock_advisory(GROUP_LOCK_CLASS, lock_key, pg_sys::ExclusiveLock);
}

/// Takes the group write lock of key `lock_key` shared (see [`lock_advisory`]).
pub fn lock_group_shared(lock_key: i32) {
    lock_advisory(GROUP_LOCK_CLASS, lock_key, pg_sys::ShareLock);
}

/// Takes the transaction-level advisory lock `(class, key)` in `mode`, straight from the lock
/// manager (the tag `pg_advisory_xact_lock(class, key)` would build).
pub fn lock_advisory(class: u32, key: i32, mode: u32) {
    let tag = pg_sys::LOCKTAG {
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: class,
        locktag_field3: key as u32,
        locktag_field4: 2,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    unsafe { pg_sys::LockAcquire(&tag, mode as pg_sys::LOCKMODE, false, false) };
}
