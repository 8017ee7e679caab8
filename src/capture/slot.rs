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
    let start = super::decode::create_slot(&slot_name())?;
    pgrx::log!("pg_causal: created the capture slot {}", slot_name());
    KNOWN.with(|k| k.set(true));
    // The capture trigger runs as the writing role, which may not write the catalog.
    crate::pg::spi::as_extension_owner(|| record_unsealed_gap(start))?
}

/// After the slot was created at `start`: if this database sealed before, up to a position
/// before `start` (the slot was lost: a standby promoted after a failover, on PostgreSQL 15,
/// has none; or it was dropped by hand), the WAL between was never decoded and never will be.
/// Commits to replicated tables in it are in the tables and in no entry. The span is recorded
/// in `causal.capture_state` (shown by `causal.capture_status`) and reported, and sealing goes
/// on from `start`.
fn record_unsealed_gap(start: u64) -> Result<(), CausalError> {
    let slot = slot_name();
    let Some(sealed) = get_opt::<String>(
        "SELECT sealed_lsn::text FROM causal.capture_state WHERE slot_name = $1",
        &[slot.clone().into()],
    )?
    else {
        return Ok(());
    };
    let start_text = super::seal::lsn_text(start);
    let behind =
        get_opt::<bool>("SELECT $1::pg_lsn < $2::pg_lsn", &[sealed.clone().into(), start_text.clone().into()])?;
    if behind != Some(true) {
        return Ok(());
    }
    pgrx::Spi::run_with_args(
        "UPDATE causal.capture_state SET unsealed_from = sealed_lsn, unsealed_to = $2::pg_lsn, \
         unsealed_found_at = now(), sealed_lsn = $2::pg_lsn WHERE slot_name = $1",
        &[slot.clone().into(), start_text.clone().into()],
    )?;
    pgrx::warning!(
        "pg_causal: the capture slot {slot} was created again at {start_text}, past the sealed position {sealed}; \
         transactions committed between them (before a failover, or while the slot was missing) are not sealed \
         into any group's history. See causal.capture_status and docs/OPERATIONS.md (failover)."
    );
    Ok(())
}
