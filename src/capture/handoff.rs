//! The sync worker's sealing, split over two backends: one decodes the WAL and hands the
//! decoded commits over (`causal._decode_commits`), the other signs and stores them
//! (`causal._seal_decoded`). Decoding resets every catalog cache of its backend around each
//! run, so a backend that decodes plans its statements again after every run; the one that
//! seals never decodes and keeps them. Why, and the form handed over: `causal_core::handoff`.
//!
//! Exactly once still rests on the sealed position (`causal.capture_state`), stored with the
//! entries: the sealing side skips commits that end at or before it, and the decoding side
//! tells the slot only that position, after flushing the WAL. When the commits it handed over
//! were not all sealed (the sealing transaction failed), its next run reads them again from
//! the slot's restart position.

use std::cell::Cell;

use causal_core::handoff::{Batch, Commit};
use pgrx::prelude::*;

use super::decode::{decode, Flow};
use super::seal;
use crate::error::{CausalError, OrReport};

thread_local! {
    /// Where the last commit this backend handed over ends.
    static HANDED_TO: Cell<u64> = const { Cell::new(0) };
    /// The sealed position this backend last read.
    static SEALED_SEEN: Cell<u64> = const { Cell::new(0) };
    /// Where this backend's last run that read to the end of the WAL stopped: while nothing is
    /// written after it, there is nothing to decode.
    static DECODED_TO: Cell<u64> = const { Cell::new(0) };
}

/// The most row operations one call hands over (a larger transaction goes whole).
const MAX_ROWS: i32 = 200_000;

/// Decodes committed transactions not sealed yet, up to about `max_rows` row operations, and
/// returns them in the form `causal._seal_decoded` takes: the sync worker's decoding backend.
#[pg_extern(name = "_decode_commits")]
fn decode_commits_sql(max_rows: i32) -> Vec<u8> {
    let f = "causal._decode_commits";
    worker_only(f).or_report(f);
    let rows = usize::try_from(max_rows.clamp(1, MAX_ROWS)).unwrap_or(1);
    decode_commits(rows).or_report(f).encode()
}

/// Seals commits `causal._decode_commits` returned (those not sealed meanwhile); returns how
/// many transactions it sealed: the sync worker's sealing backend.
#[pg_extern(name = "_seal_decoded")]
fn seal_decoded_sql(batch: &[u8]) -> i64 {
    let f = "causal._seal_decoded";
    worker_only(f).or_report(f);
    let batch = Batch::decode(batch).map_err(CausalError::from).or_report(f);
    seal::seal_handed(batch.commits).or_report(f).transactions as i64
}

/// Only the sync worker's roles: a batch is signed as whoever it names.
fn worker_only(function: &'static str) -> Result<(), CausalError> {
    // SAFETY: reads of the session's user, on the backend's thread.
    let (superuser, user) = unsafe { (pg_sys::superuser(), pg_sys::GetUserId()) };
    if superuser || user == crate::pg::spi::extension_owner()? {
        Ok(())
    } else {
        Err(CausalError::WorkerOnly(function))
    }
}

fn decode_commits(max_rows: usize) -> Result<Batch, CausalError> {
    // SAFETY: reads of the backend's own state.
    let read_only = unsafe { pg_sys::RecoveryInProgress() || pg_sys::XactReadOnly };
    // Nothing written since the last run read to the end, and what it handed over is known
    // sealed: nothing to do. (A sealing call that failed before it wrote anything leaves no
    // WAL behind, and what it was handed must be handed again.)
    let all_sealed = HANDED_TO.with(Cell::get) <= SEALED_SEEN.with(Cell::get);
    // SAFETY: reads the WAL module's shared state.
    if read_only || (all_sealed && unsafe { pg_sys::GetXLogInsertRecPtr() } <= DECODED_TO.with(Cell::get)) {
        return Ok(Batch::default());
    }
    super::slot::ensure(false)?;
    if !super::slot::exists()? {
        return Ok(Batch::default());
    }
    // One decoder of the slot at a time, in-process sealers included.
    seal::lock_sealer();
    // Decoding is sealing's first half: shown as such in causal.progress (the sealing side
    // counts the transactions).
    let _progress = crate::pg::progress::Progress::start("sealing", "", "transactions", None);
    let slot = super::slot::slot_name();
    let end_of_wal = seal::flushed_end_of_wal();
    // What the last sealing commit published, else what is stored. Published may lag what is
    // stored, never lead it: then this run hands over commits sealed already (the sealing side
    // skips them) and tells the slot less than it could.
    let sealed = match crate::pg::sealed_position::published() {
        Some(lsn) => lsn,
        None => seal::sealed_lsn(&slot)?,
    };
    SEALED_SEEN.with(|s| s.set(sealed));
    if HANDED_TO.with(Cell::get) > sealed {
        // What this backend handed over last was not sealed: read it again.
        super::decode::read_again();
    }
    HANDED_TO.with(|h| h.set(sealed));
    let mut batch = Batch::default();
    let mut take = |txns: Vec<Commit>| -> Result<Flow, CausalError> {
        batch.commits.extend(txns.into_iter().filter(|t| t.end_lsn > sealed));
        Ok(Flow::Stop)
    };
    // The sealed position is committed, and flushed just now: the slot may let go of the WAL
    // before it.
    let to_end = decode(&slot, sealed, end_of_wal, max_rows, Some(sealed), &mut take)?;
    batch.more = !to_end;
    if to_end {
        DECODED_TO.with(|d| d.set(end_of_wal));
    }
    if let Some(last) = batch.commits.last() {
        HANDED_TO.with(|h| h.set(last.end_lsn));
    }
    seal::after_decoding(end_of_wal, !batch.commits.is_empty());
    Ok(batch)
}
