//! The database's logical replication slot, from which the sealer reads committed
//! transactions. One per database, named [`slot_name`], decoded by this library's output plugin
//! ([`super::decode`]). It exists from the first write to a replicated table on: a write made
//! while it did not exist could never be sealed, so writes wait for it.

use std::cell::Cell;

use pgrx::pg_sys;

use crate::error::CausalError;
use crate::pg::spi::get_opt;

thread_local! {
    /// Set once the slot is known to exist. A slot is only dropped by hand (see
    /// docs/OPERATIONS.md), and then writes are not sealed until it is created again.
    static KNOWN: Cell<bool> = const { Cell::new(false) };
}

/// The slot of this database: `pg_causal_<database oid>`.
pub fn slot_name() -> String {
    // SAFETY: set once the backend is connected to its database.
    format!("pg_causal_{}", unsafe { pg_sys::MyDatabaseId }.to_u32())
}

/// Whether the slot exists.
pub fn exists() -> Result<bool, CausalError> {
    if KNOWN.with(Cell::get) {
        return Ok(true);
    }
    let name = std::ffi::CString::new(slot_name()).map_err(|_| CausalError::Corrupt("slot name".into()))?;
    // SAFETY: looks the name up in shared memory under the slots' control lock. (Not the
    // pg_replication_slots view: a query over it gives the transaction an xid, after which
    // the slot could not be created.)
    let found = !unsafe { pg_sys::SearchNamedReplicationSlot(name.as_ptr(), true) }.is_null();
    KNOWN.with(|k| k.set(found));
    Ok(found)
}

/// Fails unless the server logs what logical decoding needs.
pub fn check_wal_level() -> Result<(), CausalError> {
    // SAFETY: a postmaster setting, read-only after startup.
    let level = unsafe { pg_sys::wal_level };
    if level < pg_sys::WalLevel::WAL_LEVEL_LOGICAL as i32 {
        let name = get_opt::<String>("SELECT current_setting('wal_level')", &[])?.unwrap_or_default();
        return Err(CausalError::WalLevel(name));
    }
    Ok(())
}

/// Creates the slot if it does not exist. Creating a logical slot is only possible in a
/// transaction that has not written yet (and it waits for the transactions running now to
/// end); with `required`, failing that (or a `wal_level` below `logical`) is an error, else
/// it is left for later.
pub fn ensure(required: bool) -> Result<(), CausalError> {
    if exists()? {
        return Ok(());
    }
    if let Err(e) = check_wal_level() {
        return if required { Err(e) } else { Ok(()) };
    }
    // SAFETY: reads the backend's own transaction state.
    let has_xid = unsafe { pg_sys::GetTopTransactionIdIfAny() } != pg_sys::InvalidTransactionId;
    if has_xid {
        return if required { Err(CausalError::NoCaptureSlot(slot_name())) } else { Ok(()) };
    }
    // Serialized, so two backends do not both try; the second then finds it. (Straight from
    // the lock manager: a statement here would give the transaction an xid.)
    crate::pg::lock::lock_advisory(1667331444, 1, pg_sys::ExclusiveLock);
    KNOWN.with(|k| k.set(false));
    if exists()? {
        return Ok(());
    }
    super::decode::create_slot(&slot_name())?;
    pgrx::log!("pg_causal: created the capture slot {}", slot_name());
    KNOWN.with(|k| k.set(true));
    Ok(())
}
