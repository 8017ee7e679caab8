//! The database's logical replication slot, from which the sealer reads committed
//! transactions. One per database, named [`slot_name`], decoded by this library's output plugin
//! ([`super::decode`]). It exists from the first write to a replicated table on: a write made
//! while it did not exist could never be sealed, so writes wait for it. When it has to be
//! created again (a failover, a slot dropped by hand), a sealing run does it, and seals what
//! the WAL it never decoded did from the tables ([`super::recapture`]); writes are refused
//! until then.

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
    // A slot existed before if this database sealed: the transactions committed after its
    // last sealing run are read from the tables (`recapture`), and nothing may commit to a
    // replicated table between the snapshot they are read with and the new slot's start. A
    // writer cannot wait for that inside its own transaction (if it rolled back, what the
    // tables hold would be in no entry), so it is refused until a sealing run did it.
    let sealed_before = sealed_lsn_text()?;
    if sealed_before.is_some() && required {
        return Err(CausalError::CaptureSlotLost(slot_name()));
    }
    if sealed_before.is_some() {
        lock_every_group()?;
    }
    let snapshot = sealed_before.is_some().then(|| {
        // No other sealer may seal commits after the new slot's start before the tables are
        // read; and the snapshot comes before the slot, so it sees everything before it.
        super::seal::lock_sealer();
        // SAFETY: registered, so it stays valid until unregistered below.
        unsafe { pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot()) }
    });
    let start = match super::decode::create_slot(&slot_name()) {
        Ok(start) => start,
        Err(e) => {
            // SAFETY: registered above.
            snapshot.into_iter().for_each(|s| unsafe { pg_sys::UnregisterSnapshot(s) });
            return Err(e);
        }
    };
    pgrx::log!("pg_causal: created the capture slot {}", slot_name());
    KNOWN.with(|k| k.set(true));
    let Some(snapshot) = snapshot else { return Ok(()) };
    // The capture trigger runs as the writing role, which may not write the catalog; what is
    // sealed here is pg_causal's own bookkeeping, which the next sealing run does not decode.
    let sealed = crate::pg::spi::as_extension_owner(|| {
        crate::pg::spi::with_replay_origin(|| seal_unsealed_span(start, snapshot))
    });
    // SAFETY: registered above.
    unsafe { pg_sys::UnregisterSnapshot(snapshot) };
    sealed?
}

/// Takes every group's write lock exclusively until the transaction ends, before the tables
/// are read and the slot created again: a writer still in flight finishes first, and one that
/// begins waits for the new slot. Writers are refused while the slot is missing, but a session
/// that saw the slot before it was dropped by hand does not look again; without the locks, its
/// commit between the snapshot and the slot's start would be in neither. (Straight from the
/// lock manager, and the read is a plain SELECT: the transaction must get no xid.)
fn lock_every_group() -> Result<(), CausalError> {
    let ids =
        crate::pg::spi::run_prepared("SELECT group_id FROM causal.group_defs ORDER BY group_id", &[], false, |rows| {
            rows.map(|r| r.get::<String>(1)).collect::<Result<Vec<_>, _>>()
        })?;
    for id in ids.into_iter().flatten() {
        crate::pg::lock::lock_group_exclusive(crate::pg::lock::group_lock_key(&id)?);
    }
    Ok(())
}

/// The position this database sealed to, if it ever sealed. (A read-only statement: one
/// through `Spi::get_one` would give the transaction an xid, and the slot could not be created.)
fn sealed_lsn_text() -> Result<Option<String>, CausalError> {
    Ok(crate::pg::spi::get_prepared::<String>(
        "SELECT sealed_lsn::text FROM causal.capture_state WHERE slot_name = $1",
        &[slot_name().into()],
    )?)
}

/// After the slot was created again at `start`, past the position this database sealed to
/// (the slot was lost: a standby promoted after a failover, on PostgreSQL 15, has none; or it
/// was dropped by hand): the WAL between was never decoded and never will be. What its
/// commits did to replicated tables is sealed from the tables as `snapshot` sees them
/// ([`super::recapture`]). The span, and how many rows it changed, are recorded in
/// `causal.capture_state` (shown by `causal.capture_status`) and reported; sealing goes on
/// from `start`. If reading the span fails, it is reported and sealing goes on without it.
fn seal_unsealed_span(start: u64, snapshot: pg_sys::Snapshot) -> Result<(), CausalError> {
    let slot = slot_name();
    let Some(sealed) = sealed_lsn_text()? else { return Ok(()) };
    let start_text = super::seal::lsn_text(start);
    let behind =
        get_opt::<bool>("SELECT $1::pg_lsn < $2::pg_lsn", &[sealed.clone().into(), start_text.clone().into()])?;
    if behind != Some(true) {
        return Ok(());
    }
    use crate::error::OrReport;
    let rows = crate::pg::spi::catching(std::panic::AssertUnwindSafe(|| {
        super::recapture::seal_from_tables(snapshot).or_report("pg_causal: sealing from the tables")
    }));
    let span = format!(
        "pg_causal: the capture slot {slot} was created again at {start_text}, past the sealed position {sealed} \
         (this node was promoted after a failover, or the slot was dropped)"
    );
    match &rows {
        Ok(n) => pgrx::warning!(
            "{span}; what the transactions committed between them did to replicated tables ({n} rows) was sealed \
             from the tables, as entries of the node identity. See causal.capture_status and docs/OPERATIONS.md (failover)."
        ),
        Err(e) => pgrx::warning!(
            "{span}; transactions committed between them are not sealed into any group's history: reading them from \
             the tables failed: {e}. See causal.capture_status and docs/OPERATIONS.md (failover)."
        ),
    }
    let rows = rows.ok().map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    if crate::catalog::shape::capture_state_records_spans() {
        pgrx::Spi::run_with_args(
            "UPDATE causal.capture_state SET unsealed_from = sealed_lsn, unsealed_to = $2::pg_lsn, \
             unsealed_found_at = now(), recaptured_rows = $3, sealed_lsn = $2::pg_lsn WHERE slot_name = $1",
            &[slot.into(), start_text.into(), rows.into()],
        )?;
    } else {
        pgrx::Spi::run_with_args(
            "UPDATE causal.capture_state SET sealed_lsn = $2::pg_lsn WHERE slot_name = $1",
            &[slot.into(), start_text.into()],
        )?;
    }
    // Published at commit, as a sealing transaction's position is: the decoding backend would
    // otherwise start from the old one, behind the slot.
    crate::pg::sealed_position::stored(start);
    Ok(())
}
