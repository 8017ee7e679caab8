//! The position each database's last sealing transaction sealed to, published in shared
//! memory as that transaction commits, so the sync worker's decoding backend need not read
//! `causal.capture_state` before every run. Each run reset its caches, so that read was a
//! query parsed and planned again, with its relation's cache entries built again: a sixth of
//! that backend's time under a steady load of single-row commits.
//!
//! The table stays the truth; what is published may only lag it. A reader that finds the
//! published position older than the stored one reads back a few transactions it need not
//! (the sealer skips what is sealed) and tells the slot less than it could: both harmless.
//! Newer would be wrong (the slot could let go of WAL not sealed), so a position is published
//! only once the transaction that stored it committed (sealing commits flush the WAL), never
//! when a subtransaction that stored one was rolled back, and only for the extension that
//! stored it (a database where pg_causal was dropped and created again starts unpublished).
//! The memory exists only when pg_causal is preloaded; elsewhere nothing is published and
//! readers read the table.

use std::cell::Cell;

use pgrx::{pg_guard, pg_shmem_init, pg_sys, PGRXSharedMemory, PgLwLock};

/// How many databases' positions are kept; past that, the others read the table.
const DATABASES: usize = 64;

#[derive(Clone, Copy, Default)]
struct Published {
    database: u32,
    extension: u32,
    lsn: u64,
}

#[derive(Clone, Copy)]
pub struct Positions([Published; DATABASES]);

impl Default for Positions {
    fn default() -> Self {
        Positions([Published::default(); DATABASES])
    }
}

// SAFETY: plain data without pointers, the same in every process.
unsafe impl PGRXSharedMemory for Positions {}

static POSITIONS: PgLwLock<Positions> = unsafe { PgLwLock::new(c"pg_causal sealed positions") };

thread_local! {
    /// The position this transaction stored, to publish when it commits, with its key (looked
    /// up as it was stored: the catalog is not read at commit).
    static PENDING: Cell<Option<Published>> = const { Cell::new(None) };
}

/// Requests the shared memory; from [`super::shmem::init`], only while preloading.
// pgrx's macro tests features of Postgres versions this crate does not declare (pg18).
#[allow(unexpected_cfgs)]
pub(super) fn request_shared_memory() {
    pg_shmem_init!(POSITIONS);
}

/// This database and the extension's oid in it, if pg_causal is installed.
fn key() -> Option<(u32, u32)> {
    // SAFETY: the backend's database, and a catalog lookup by name, on the backend's thread.
    let (database, extension) =
        unsafe { (pg_sys::MyDatabaseId, pg_sys::get_extension_oid(c"pg_causal".as_ptr(), true)) };
    (extension != pg_sys::InvalidOid).then(|| (database.to_u32(), extension.to_u32()))
}

/// Notes that this transaction stored `lsn` as the position sealed to: published if it commits.
pub fn stored(lsn: u64) {
    if !super::shmem::ready() {
        return;
    }
    let pending = key().map(|(database, extension)| Published { database, extension, lsn });
    PENDING.with(|p| p.set(pending));
}

/// At the end of a transaction: publishes what it stored if it `committed`, and forgets it.
/// Called from the transaction callback: it reads no catalog and raises no error.
pub fn transaction_ended(committed: bool) {
    let Some(published) = PENDING.with(Cell::take) else { return };
    if !committed {
        return;
    }
    let mut positions = POSITIONS.exclusive();
    let mine = positions.0.iter().position(|p| p.database == published.database);
    if let Some(i) = mine.or_else(|| positions.0.iter().position(|p| p.database == 0)) {
        positions.0[i] = published;
    }
}

/// A subtransaction was rolled back: what it stored is undone, and what the transaction stored
/// before it is not known here, so nothing is published.
pub fn subtransaction_aborted() {
    PENDING.with(|p| p.set(None));
}

/// The position published for this database by the extension installed now, if any.
pub fn published() -> Option<u64> {
    if !super::shmem::ready() {
        return None;
    }
    let (database, extension) = key()?;
    let positions = POSITIONS.share();
    positions.0.iter().find(|p| p.database == database && p.extension == extension).map(|p| p.lsn)
}
