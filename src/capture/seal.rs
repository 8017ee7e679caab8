//! The sealer: turns committed transactions, read from the WAL in commit order, into signed
//! entries of their groups.
//!
//! Each transaction that wrote replicated tables becomes one entry per group it wrote, signed
//! by its author (the identity its capture trigger named) and appended after the group's
//! frontier as it is at that point of the commit order. That holds because everything that
//! moves a frontier other than sealing — imports of remote history and administrative entries
//! (membership, schema, rules) — seals first, under the group's lock taken exclusively, which
//! waits for the writers in flight ([`lock_group_exclusive`]). The entries wait to be placed
//! by the engine in batches (`causal.catch_up`), as deferred local commits.
//!
//! Exactly once: the position sealed to is stored in `causal.capture_state` in the same
//! transaction as the entries, and a transaction is sealed only if its commit ends after it.
//! The slot is told a position only once it is committed and flushed (on the next run), so
//! after a crash the slot hands back at most what is already sealed, which is skipped.
//!
//! Sealers exclude each other with an advisory lock taken before any group's lock.

use std::cell::Cell;

use pgrx::prelude::*;

use causal_core::membership::derive_meta_of;
use causal_core::op_text::OpText;

use causal_core::handoff::Commit;

use super::decode::{decode, Flow};
use super::encode::RowOp;
use crate::catalog::group::Group;
use crate::error::CausalError;

/// How many row operations are decoded at most before they are sealed (a larger transaction
/// is read whole); decoding then reads on.
const ROWS_PER_BATCH: usize = 200_000;

thread_local! {
    /// Set while sealing: what sealing calls (appends) must not seal again.
    static SEALING: Cell<bool> = const { Cell::new(false) };
    /// Set when this transaction moved the sealed position: it is not committed yet, so the
    /// slot must not be told it.
    static MOVED: Cell<bool> = const { Cell::new(false) };
    /// The WAL position this backend's last sealing run decoded to: while nothing is written
    /// after it, there is nothing to seal (the sync worker asks every few milliseconds).
    static DECODED_TO: Cell<u64> = const { Cell::new(0) };
}

/// Forgets, at the end of a transaction, that it moved the sealed position.
pub fn xact_ended() {
    MOVED.with(|m| m.set(false));
}

/// What a sealing run did.
#[derive(Default, Debug, Clone, Copy)]
pub struct Sealed {
    pub transactions: usize,
    pub entries: usize,
}

/// How much WAL an idle sealing run may leave for the next to read again.
const IDLE_REREAD_BYTES: u64 = 16 << 20;

/// How often a sealer that keeps finding commits logs the running transactions.
const RUNNING_XACTS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// How often a sealer that finds no commits logs the running transactions while the slot
/// holds more than [`IDLE_REREAD_BYTES`] of WAL: rarely so, and it lets that WAL go within a
/// few runs.
const RUNNING_XACTS_EVERY_IDLE: std::time::Duration = std::time::Duration::from_millis(50);

thread_local! {
    static RUNNING_XACTS_LOGGED: Cell<Option<std::time::Instant>> = const { Cell::new(None) };
}

/// Writes a record of the running transactions (as the background writer does every 15 s),
/// at most every [`RUNNING_XACTS_EVERY`] while commits keep coming. A decoding context made
/// afresh (the first run of a backend, or one after another backend decoded the slot) starts
/// at the slot's restart position, which only moves to such a record: with one every 15 s,
/// each run read up to 15 s of WAL again (sealing calls of up to 1.2 s at 5k commits/s,
/// bench/seal_lag.sh). With one every 250 ms, a fresh context reads about that much again.
/// Each record also costs the decoding backend that reads it a snapshot written to disk and
/// the slot's state saved, each a file written and flushed: at one every 50 ms, a quarter of
/// the sync worker's decoding backend's profile at 6,000 single-row commits/s. At 250 ms,
/// decoding took 13.0-14.2 µs per commit against 14.0-17.3 (bench/worker_cpu.sh, four runs
/// each, builds alternated).
fn log_running_transactions(every: std::time::Duration) {
    let due = RUNNING_XACTS_LOGGED.with(|l| l.get().is_none_or(|t| t.elapsed() >= every));
    if !due {
        return;
    }
    // SAFETY: what pg_log_standby_snapshot() (PostgreSQL 16) does from a backend; wal_level is
    // logical here (capture needs it), so standby information is logged.
    unsafe {
        if !pg_sys::RecoveryInProgress() {
            pg_sys::LogStandbySnapshot();
        }
    }
    RUNNING_XACTS_LOGGED.with(|l| l.set(Some(std::time::Instant::now())));
}

/// The sealer's lock: one sealer at a time per database, taken before any group's lock. A
/// placing call takes it first too (`causal.catch_up`): it may seal while it holds a group's
/// row, and sealers lock group rows.
pub fn lock_sealer() {
    // Straight from the lock manager: a statement would give the transaction an xid, and a
    // sealing run that finds nothing would write a commit record, which the next run reads.
    crate::pg::lock::lock_advisory(1667331444, 0, pg_sys::ExclusiveLock);
}

/// Seals every transaction committed before the call. Does nothing inside a seal, in a
/// read-only transaction or on a standby, and when the slot does not exist yet (no write can
/// have been made without it).
pub fn seal_committed() -> Result<Sealed, CausalError> {
    seal_committed_with(true)
}

/// [`seal_committed`], creating the slot first if it does not exist and `create_slot` says
/// so. Creating it waits for every transaction running in the cluster to end; without it,
/// nothing was written here to seal.
fn seal_committed_with(create_slot: bool) -> Result<Sealed, CausalError> {
    if !may_seal() {
        return Ok(Sealed::default());
    }
    // SAFETY: reads the WAL module's shared state.
    if unsafe { pg_sys::GetXLogInsertRecPtr() } <= DECODED_TO.with(Cell::get) {
        return Ok(Sealed::default());
    }
    if create_slot {
        super::slot::ensure(false)?;
    }
    if !super::slot::exists()? {
        return Ok(Sealed::default());
    }
    sealing(seal_locked)
}

/// Whether this backend may seal now: not inside a seal, nor in a read-only transaction or on
/// a standby.
fn may_seal() -> bool {
    // SAFETY: reads of the backend's own state.
    let read_only = unsafe { pg_sys::RecoveryInProgress() || pg_sys::XactReadOnly };
    !SEALING.with(Cell::get) && !read_only
}

/// Runs `seal` as the extension's owner, marked as sealing (so that appends do not seal again).
/// What sealing writes (entries, the sealed position) is pg_causal's own bookkeeping, not a
/// change to capture: marked with the replay origin, the next run's decoding drops it record
/// by record before it reaches the reorder buffer, rather than decode every entry and index
/// row only for the plugin to ignore them.
fn sealing(seal: impl FnOnce() -> Result<Sealed, CausalError>) -> Result<Sealed, CausalError> {
    SEALING.with(|s| s.set(true));
    let result = crate::pg::spi::as_extension_owner(|| crate::pg::spi::with_replay_origin(seal));
    SEALING.with(|s| s.set(false));
    result?
}

/// Seals transactions another backend decoded (`handoff`), those that end after the position
/// sealed to. Does nothing inside a seal, in a read-only transaction or on a standby.
pub fn seal_handed(txns: Vec<Commit>) -> Result<Sealed, CausalError> {
    if !may_seal() {
        return Ok(Sealed::default());
    }
    sealing(|| {
        lock_sealer();
        let mut progress = crate::pg::progress::Progress::start("sealing", "", "transactions", None);
        let slot = super::slot::slot_name();
        let mut sealed = sealed_lsn(&slot)?;
        let mut total = Sealed::default();
        seal_in_order(&slot, txns, &mut sealed, &mut total, &mut progress)?;
        Ok(total)
    })
}

fn seal_locked() -> Result<Sealed, CausalError> {
    lock_sealer();
    // Shown in causal.progress (no group: a run seals every group's commits).
    let mut progress = crate::pg::progress::Progress::start("sealing", "", "transactions", None);
    let slot = super::slot::slot_name();
    let end_of_wal = flushed_end_of_wal();
    let mut sealed = sealed_lsn(&slot)?;
    let start = sealed;
    // What was sealed before this transaction is committed, and flushed just now.
    let confirm = (!MOVED.with(Cell::get)).then_some(sealed);
    let mut total = Sealed::default();
    let mut seal_batch = |txns: Vec<Commit>| -> Result<Flow, CausalError> {
        seal_in_order(&slot, txns, &mut sealed, &mut total, &mut progress)?;
        Ok(Flow::ReadOn)
    };
    decode(&slot, start, end_of_wal, ROWS_PER_BATCH, confirm, &mut seal_batch)?;
    DECODED_TO.with(|d| d.set(end_of_wal));
    after_decoding(end_of_wal, total.transactions > 0);
    if total.transactions > 0 {
        pgrx::debug1!("pg_causal: sealed {} transactions into {} entries", total.transactions, total.entries);
    }
    Ok(total)
}

/// Flushes the WAL written so far and returns where it ends: everything committed before the
/// call is in it, and decoding reads only what is flushed.
pub(super) fn flushed_end_of_wal() -> u64 {
    // SAFETY: plain calls into the WAL module, on the backend's thread.
    // The insert position can point just past the header of a page nothing is written on
    // yet, which XLogFlush refuses to wait for: flush to the page's start then (a record
    // ending inside that header's span is sealed by the next run).
    unsafe {
        let insert = pg_sys::GetXLogInsertRecPtr();
        let offset = insert % u64::from(pg_sys::XLOG_BLCKSZ);
        let long_header = std::mem::size_of::<pg_sys::XLogLongPageHeaderData>() as u64;
        pg_sys::XLogFlush(if offset <= long_header { insert - offset } else { insert });
        pg_sys::GetFlushRecPtr(std::ptr::null_mut())
    }
}

/// After a decoding run that read to `end_of_wal`: runs that found transactions log the
/// running transactions (at most every [`RUNNING_XACTS_EVERY`]), and idle ones too when the
/// next run would otherwise read much WAL again (written to other tables meanwhile), at most
/// every [`RUNNING_XACTS_EVERY_IDLE`]: the slot's restart position moves only to such a
/// record, and takes two runs' confirmations to get there.
pub(super) fn after_decoding(end_of_wal: u64, found: bool) {
    if end_of_wal.saturating_sub(super::decode::restart_lsn()) > IDLE_REREAD_BYTES {
        log_running_transactions(RUNNING_XACTS_EVERY_IDLE);
    } else if found {
        log_running_transactions(RUNNING_XACTS_EVERY);
    }
}

/// Seals `txns` (in commit order) that end after `sealed`, moving it on, and records the
/// position sealed to in the same transaction.
pub(super) fn seal_in_order(
    slot: &str,
    txns: Vec<Commit>,
    sealed: &mut u64,
    total: &mut Sealed,
    progress: &mut crate::pg::progress::Progress,
) -> Result<(), CausalError> {
    let (mut last_commit, mut transactions) = (None, 0i64);
    let mut appender = crate::author::members::SealAppender::default();
    for txn in txns {
        if txn.end_lsn <= *sealed {
            continue;
        }
        let (end, time) = (txn.end_lsn, txn.commit_time);
        total.entries += seal_txn(&mut appender, txn)?;
        total.transactions += 1;
        transactions += 1;
        *sealed = end;
        last_commit = Some(time);
    }
    appender.finish()?;
    progress.add(transactions);
    if let Some(time) = last_commit {
        crate::pg::spi::exec_prepared(
            "INSERT INTO causal.capture_state AS s (slot_name, sealed_lsn, sealed_at, last_commit_time, transactions) \
             VALUES ($1, $2::text::pg_lsn, now(), $3, $4) ON CONFLICT (slot_name) DO UPDATE \
             SET sealed_lsn = EXCLUDED.sealed_lsn, sealed_at = now(), last_commit_time = EXCLUDED.last_commit_time, \
             transactions = s.transactions + EXCLUDED.transactions",
            &[slot.into(), lsn_text(*sealed).into(), timestamp(time).into(), transactions.into()],
        )?;
        MOVED.with(|m| m.set(true));
        crate::pg::sealed_position::stored(*sealed);
        // The entries are visible once this transaction commits, and a peer may fetch them at
        // once: they must be durable by then. Lost in a crash, the same transactions would be
        // sealed again, perhaps into other entries (a run signs each author's last entry
        // only), duplicates of what the peer holds. So this commit flushes the WAL even when
        // synchronous_commit is off, as CREATE DATABASE's does.
        // SAFETY: sets a flag of the current transaction, on the backend's thread.
        unsafe { pg_sys::ForceSyncCommit() };
    }
    Ok(())
}

fn timestamp(pg_micros: i64) -> Option<pgrx::datum::TimestampWithTimeZone> {
    pgrx::datum::TimestampWithTimeZone::try_from(pg_micros).ok()
}

/// An LSN as Postgres writes it.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The position sealed to (`0/0` before the first seal).
pub(super) fn sealed_lsn(slot: &str) -> Result<u64, CausalError> {
    // Read-only, so that a run that seals nothing writes nothing (not even a commit record);
    // and under the newest snapshot: a read-only statement would otherwise see the snapshot
    // of the statement that called the sealer, taken before the sealer's lock, and miss what
    // the sealer before it committed (it would seal those transactions again).
    // SAFETY: a snapshot pushed and popped around one query, on the backend's thread.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot()) };
    let read = crate::pg::spi::get_prepared::<String>(
        "SELECT sealed_lsn::text FROM causal.capture_state WHERE slot_name = $1",
        &[slot.into()],
    );
    unsafe { pg_sys::PopActiveSnapshot() };
    let Some(text) = read? else {
        return Ok(0);
    };
    parse_lsn(&text).ok_or_else(|| CausalError::Corrupt(format!("causal.capture_state: sealed_lsn {text:?}")))
}

/// The identity that signs a transaction named as written by `author`. Identities are never
/// dropped through the API; should a superuser delete the author's key before its
/// transaction is sealed, the node identity signs it, with a warning, rather than stopping
/// sealing for good.
fn signer_of(author: Option<&str>) -> Result<crate::catalog::identity::Author, CausalError> {
    let node = crate::catalog::identity::NODE_IDENTITY;
    match crate::catalog::identity::author_named(author.unwrap_or(node)) {
        Err(CausalError::UnknownIdentity(name)) if name != node => {
            pgrx::warning!("pg_causal: the author {name:?} of a committed transaction no longer exists; the node identity signs it");
            crate::catalog::identity::author_named(node)
        }
        other => other,
    }
}

/// Appends one transaction's entries, one per group it wrote. Returns how many.
fn seal_txn(appender: &mut crate::author::members::SealAppender, txn: Commit) -> Result<usize, CausalError> {
    let signer = signer_of(txn.author.as_deref())?;
    let mut entries = 0;
    for (group_id, ops) in txn.groups {
        let group = match Group::find(&group_id) {
            Ok(g) => g,
            // The group was dropped here since: nothing to seal into.
            Err(CausalError::UnknownGroup(_)) => continue,
            Err(e) => return Err(e),
        };
        let (texts, meta) = texts_of(ops)?;
        appender.append(&group, texts, meta, &signer)?;
        entries += 1;
    }
    Ok(entries)
}

/// The operations' texts, and the entry's metadata (which only decoded operations carry: a
/// delete is a barrier; inserts have none).
pub fn texts_of(ops: Vec<RowOp>) -> Result<(Vec<OpText>, causal_core::entry::Meta), CausalError> {
    let mut meta = causal_core::entry::Meta::new();
    let mut texts = Vec::with_capacity(ops.len());
    for op in ops {
        texts.push(match op {
            RowOp::Text(t) => t,
            RowOp::Decoded(op) => {
                for (k, v) in derive_meta_of(None, std::slice::from_ref(&op)) {
                    meta.entry(k).or_default().extend(v);
                }
                OpText::from_op(&op)?
            }
        });
    }
    Ok((texts, meta))
}

/// Takes the group's lock shared, as its writers do (for placing local commits, which writes
/// no row of theirs).
pub fn lock_group_shared(group_id: &str) -> Result<(), CausalError> {
    crate::pg::lock::lock_group_shared(crate::pg::lock::group_lock_key(group_id)?);
    Ok(())
}

/// Takes the group's lock exclusively, as imports and administrative appends do: seals what
/// is committed, waits for the group's writers in flight to commit, and seals again, so the
/// frontier the caller goes on from includes every local commit before it.
/// It does not create the capture slot: that waits for every transaction running in the
/// cluster to end. Without the slot, writers are refused (they need it to be captured), and
/// what was committed before it went missing is sealed by the run that creates it again
/// (`slot::ensure`, the sync worker's or `causal.catch_up`).
pub fn lock_group_exclusive(group_id: &str) -> Result<(), CausalError> {
    seal_committed_with(false)?;
    Spi::run_with_args(crate::pg::lock::GROUP_LOCK_SQL, &[crate::pg::lock::group_lock_key(group_id)?.into()])?;
    seal_committed_with(false)?;
    Ok(())
}
