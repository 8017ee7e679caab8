//! Reading committed transactions from the WAL: this library's logical decoding output plugin
//! and the loop that drives it over the database's slot ([`decode`]).
//!
//! The plugin writes no output. It runs in the backend that decodes (the sealer: a
//! `causal.catch_up` call, the sync worker's, or any function that seals first), and hands
//! each committed transaction to it as a [`Commit`]: its row changes to replicated tables,
//! encoded per group, and its author, which the capture trigger wrote into the transaction as
//! a transactional logical message. Transactions with a replication origin (pg_causal's own
//! replays, and any native subscription's applies) are filtered out. Which tables are
//! replicated, and their schemas, are read from `causal.replicated_tables` as of each
//! transaction's commit (it is a user catalog table, which decoding may read).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::prelude::*;

use causal_core::handoff::Commit;

use super::encode::{Codec, RowOp, Unchanged};
use crate::error::{CausalError, OrReport};

/// The prefix of the logical message that names a transaction's author (an identity name).
pub const AUTHOR_PREFIX: &str = "pg_causal.author";

/// A replicated table as decoding sees it.
struct DecodeTable {
    group_id: String,
    codec: Codec,
}

thread_local! {
    static CURRENT: RefCell<Option<Commit>> = const { RefCell::new(None) };
    static DONE: RefCell<Vec<Commit>> = const { RefCell::new(Vec::new()) };
    static DONE_ROWS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Whether this decoding run handed any transaction to its caller yet.
    static DELIVERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The slot's restart position after the last decoding run.
    static RESTART_LSN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Tables by relid (`None`: not replicated), as the catalog had them where the decoding
    /// context is in the WAL: kept with a kept context (whose next run reads on from there),
    /// dropped with it, and dropped when a decoded or a live transaction changed the table or
    /// the catalog of replicated tables (relcache invalidations; decoding runs a decoded
    /// transaction's at its place in the commit order). Looking a table up took a query,
    /// planned again after every run's cache resets: a sixth of the decoding backend's time
    /// under a steady load of single-row commits, when each run looked its tables up again.
    static TABLES: RefCell<HashMap<pg_sys::Oid, Option<Rc<DecodeTable>>>> = RefCell::new(HashMap::new());
}

/// Relcache callback: forgets what decoding knew of `relid`; of every table for `InvalidOid`
/// and for the catalog of replicated tables (a change to it may concern any table), or when
/// this backend has not learnt the catalog's oid (it cannot tell its invalidation apart).
pub fn relcache_changed(relid: pg_sys::Oid) {
    let catalog = crate::catalog::tables::known_catalog_oid();
    TABLES.with(|t| {
        let mut t = t.borrow_mut();
        if relid == pg_sys::InvalidOid || relid == catalog || catalog == pg_sys::InvalidOid {
            t.clear();
        } else {
            t.remove(&relid);
        }
    });
}

/// Forgets every table decoding knew: its context starts afresh, possibly further back in the
/// WAL.
fn forget_tables() {
    TABLES.with(|t| t.borrow_mut().clear());
}

fn table(relid: pg_sys::Oid) -> Result<Option<Rc<DecodeTable>>, CausalError> {
    if let Some(t) = TABLES.with(|t| t.borrow().get(&relid).cloned()) {
        return Ok(t);
    }
    let found = crate::catalog::tables::recorded(relid)?
        .map(|(group_id, schema)| Rc::new(DecodeTable { group_id, codec: Codec::new(schema) }));
    TABLES.with(|t| t.borrow_mut().insert(relid, found.clone()));
    Ok(found)
}

// Postgres's own functions, called as C: the page reader and segment callbacks are handed to
// the WAL reader as function pointers (pgrx's bindings wrap them as Rust functions).
extern "C-unwind" {
    fn read_local_xlog_page(
        state: *mut pg_sys::XLogReaderState,
        target_page: pg_sys::XLogRecPtr,
        req_len: std::ffi::c_int,
        target_rec: pg_sys::XLogRecPtr,
        cur_page: *mut std::ffi::c_char,
    ) -> std::ffi::c_int;
    fn wal_segment_open(state: *mut pg_sys::XLogReaderState, next_seg: pg_sys::XLogSegNo, tli: *mut pg_sys::TimeLineID);
    fn wal_segment_close(state: *mut pg_sys::XLogReaderState);
    fn LogicalDecodingProcessRecord(ctx: *mut pg_sys::LogicalDecodingContext, record: *mut pg_sys::XLogReaderState);
    fn LogLogicalMessage(
        prefix: *const std::ffi::c_char,
        message: *const std::ffi::c_char,
        size: usize,
        transactional: bool,
    ) -> pg_sys::XLogRecPtr;
}

/// Writes the transactional message naming this transaction's author.
pub fn log_author(identity: &str) {
    let prefix = std::ffi::CString::new(AUTHOR_PREFIX).unwrap_or_default();
    // SAFETY: both buffers outlive the call; the message is copied into the WAL.
    unsafe { LogLogicalMessage(prefix.as_ptr(), identity.as_ptr().cast(), identity.len(), true) };
}

/// The output plugin's entry point, looked up by name when a slot of plugin `pg_causal` is
/// decoded.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn _PG_output_plugin_init(cb: *mut pg_sys::OutputPluginCallbacks) {
    (*cb).startup_cb = Some(startup);
    (*cb).begin_cb = Some(begin);
    (*cb).change_cb = Some(change);
    (*cb).commit_cb = Some(commit);
    (*cb).message_cb = Some(message);
    (*cb).filter_by_origin_cb = Some(filter_by_origin);
}

#[pg_guard]
unsafe extern "C-unwind" fn startup(
    _ctx: *mut pg_sys::LogicalDecodingContext,
    options: *mut pg_sys::OutputPluginOptions,
    _is_init: bool,
) {
    (*options).output_type = pg_sys::OutputPluginOutputType::OUTPUT_PLUGIN_BINARY_OUTPUT;
    (*options).receive_rewrites = false;
    CURRENT.with(|c| *c.borrow_mut() = None);
}

#[pg_guard]
unsafe extern "C-unwind" fn begin(_ctx: *mut pg_sys::LogicalDecodingContext, _txn: *mut pg_sys::ReorderBufferTXN) {
    CURRENT.with(|c| *c.borrow_mut() = Some(Commit::default()));
}

#[pg_guard]
unsafe extern "C-unwind" fn filter_by_origin(
    _ctx: *mut pg_sys::LogicalDecodingContext,
    origin: pg_sys::RepOriginId,
) -> bool {
    origin != pg_sys::InvalidRepOriginId as pg_sys::RepOriginId
}

#[pg_guard]
unsafe extern "C-unwind" fn message(
    _ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    _lsn: pg_sys::XLogRecPtr,
    transactional: bool,
    prefix: *const std::ffi::c_char,
    size: pg_sys::Size,
    content: *const std::ffi::c_char,
) {
    if !transactional || std::ffi::CStr::from_ptr(prefix).to_bytes() != AUTHOR_PREFIX.as_bytes() {
        return;
    }
    let bytes = std::slice::from_raw_parts(content.cast::<u8>(), size);
    let name = String::from_utf8_lossy(bytes).into_owned();
    CURRENT.with(|c| {
        if let Some(t) = c.borrow_mut().as_mut() {
            t.author.get_or_insert(name);
        }
    });
}

/// The tuple in a change's buffer, if there is one.
unsafe fn tuple_of(buf: *mut pg_sys::ReorderBufferTupleBuf) -> Option<pg_sys::HeapTuple> {
    if buf.is_null() {
        None
    } else {
        Some(&mut (*buf).tuple)
    }
}

unsafe fn encode_change(
    relation: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) -> Result<(), CausalError> {
    let Some(table) = table((*relation).rd_id)? else { return Ok(()) };
    let desc = (*relation).rd_att;
    let wrap = |t: pg_sys::HeapTuple| PgHeapTuple::from_heap_tuple(pgrx::PgTupleDesc::from_pg_unchecked(desc), t);
    let tp = (*change).data.tp;
    let (old, new) = (tuple_of(tp.oldtuple), tuple_of(tp.newtuple));
    let codec = &table.codec;
    use pg_sys::ReorderBufferChangeType::*;
    let ops = match (*change).action {
        REORDER_BUFFER_CHANGE_INSERT => {
            let new = new.ok_or_else(|| CausalError::Corrupt("a decoded insert without its row".into()))?;
            vec![RowOp::Text(codec.insert_text(&wrap(new))?)]
        }
        REORDER_BUFFER_CHANGE_UPDATE => {
            let new_raw = new.ok_or_else(|| CausalError::Corrupt("a decoded update without its row".into()))?;
            // Replicated tables log the whole old row (REPLICA IDENTITY FULL), so an update
            // records the columns it changed. Without it, every column counts as written.
            let old = match old {
                Some(o) => codec.row(&wrap(o), None)?,
                None => serde_json::Map::new(),
            };
            let unchanged = Unchanged { old: &old, tuple: new_raw, desc };
            let new = codec.row(&wrap(new_raw), Some(&unchanged))?;
            codec.update_ops(old, new)
        }
        REORDER_BUFFER_CHANGE_DELETE => {
            let old = old.ok_or_else(|| CausalError::Corrupt("a decoded delete without its key".into()))?;
            vec![codec.delete_op(&codec.row(&wrap(old), None)?)]
        }
        _ => return Ok(()),
    };
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(txn) = c.as_mut() else { return };
        match txn.groups.iter_mut().find(|(g, _)| *g == table.group_id) {
            Some((_, list)) => list.extend(ops),
            None => txn.groups.push((table.group_id.clone(), ops)),
        }
    });
    Ok(())
}

#[pg_guard]
unsafe extern "C-unwind" fn change(
    _ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    relation: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    encode_change(relation, change).or_report("pg_causal decoding");
}

#[pg_guard]
unsafe extern "C-unwind" fn commit(
    _ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    _commit_lsn: pg_sys::XLogRecPtr,
) {
    let Some(mut done) = CURRENT.with(|c| c.borrow_mut().take()) else { return };
    if done.groups.is_empty() {
        return;
    }
    done.end_lsn = (*txn).end_lsn;
    done.commit_time = (*txn).xact_time.commit_time;
    DONE_ROWS.with(|r| r.set(r.get() + done.rows()));
    DONE.with(|d| d.borrow_mut().push(done));
}

#[pg_guard]
unsafe extern "C-unwind" fn prepare_write(
    _ctx: *mut pg_sys::LogicalDecodingContext,
    _lsn: pg_sys::XLogRecPtr,
    _xid: pg_sys::TransactionId,
    _last: bool,
) {
}

#[pg_guard]
unsafe extern "C-unwind" fn do_write(
    _ctx: *mut pg_sys::LogicalDecodingContext,
    _lsn: pg_sys::XLogRecPtr,
    _xid: pg_sys::TransactionId,
    _last: bool,
) {
}

/// Takes the transactions decoded so far.
fn take_done() -> Vec<Commit> {
    DONE_ROWS.with(|r| r.set(0));
    DONE.with(|d| std::mem::take(&mut *d.borrow_mut()))
}

/// What decoding does after a batch its caller took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Reads on to the end of the WAL asked for.
    ReadOn,
    /// Stops here; a kept decoding context reads on from here in the next run.
    Stop,
}

/// A caller's handling of decoded transactions, in commit order.
pub type OnBatch<'a> = &'a mut dyn FnMut(Vec<Commit>) -> Result<Flow, CausalError>;

/// Makes the next run start afresh from the slot's restart position, as if no context were
/// kept: a caller that handed transactions on learnt that they were not sealed.
pub fn read_again() {
    KEPT.with(|k| {
        if let Some(mut kept) = k.get() {
            kept.stale = true;
            k.set(Some(kept));
        }
    });
}

/// The capture slot's restart position as the last decoding run left it: the next run reads
/// the WAL from there.
pub fn restart_lsn() -> u64 {
    RESTART_LSN.with(std::cell::Cell::get)
}

/// Decodes the slot `slot` from `start` (transactions whose commit record starts before it
/// are skipped) to `end_of_wal`, in one pass, handing the committed transactions to
/// `on_batch` whenever they hold `batch_rows` row operations or more, and at the end. (A
/// pass per batch would read the WAL again from the slot's restart position each time.)
/// `on_batch` runs between two WAL records, outside decoding, and may use SPI; it may stop
/// the run ([`Flow::Stop`]). With `confirm`, first tells the slot that everything up to it is
/// sealed and durable, so it may let go of the WAL before it; a run that hands over no
/// transaction confirms all it read. Returns whether it read to `end_of_wal`.
pub fn decode(
    slot: &str,
    start: u64,
    end_of_wal: u64,
    batch_rows: usize,
    confirm: Option<u64>,
    on_batch: OnBatch<'_>,
) -> Result<bool, CausalError> {
    let name = std::ffi::CString::new(slot).map_err(|_| CausalError::Corrupt("slot name".into()))?;
    take_done();
    DELIVERED.with(|d| d.set(false));
    // SAFETY: the sequence pg_logical_slot_get_changes runs (slotfuncs.c / logicalfuncs.c), on
    // this backend's thread: acquire the slot, create a decoding context, read records up to
    // the flushed end of WAL, free the context and release the slot. An error raised in
    // between is cleaned up by the transaction's abort (which releases the slot) after the
    // catch below drops the caches decoding filled.
    let _quiet = QuietDecodingLog::new();
    let mut stopped = false;
    let failed = unsafe {
        pg_sys::ReplicationSlotAcquire(name.as_ptr(), true);
        let old_owner = pg_sys::CurrentResourceOwner;
        let call_memory = pg_sys::CurrentMemoryContext;
        PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
            let mut failed = None;
            let ctx = context_for(start);
            let reader = (*ctx).reader;
            // Reading and decoding allocate what the reader and the reorder buffer keep (the
            // reader's buffers, records held until the next read): for a kept context, in its
            // own memory, as a walsender does in the memory of its streaming command.
            let decoding_memory = kept_as(ctx).map_or(call_memory, |k| k.memory);
            reset_caches();
            // The reader's position moves with each record read (clippy cannot see it).
            #[allow(clippy::while_immutable_condition)]
            while (*reader).EndRecPtr < end_of_wal {
                let mut errm: *mut std::ffi::c_char = std::ptr::null_mut();
                pg_sys::MemoryContextSwitchTo(decoding_memory);
                let record = pg_sys::XLogReadRecord(reader, &mut errm);
                if !errm.is_null() {
                    pg_sys::MemoryContextSwitchTo(call_memory);
                    let msg = std::ffi::CStr::from_ptr(errm).to_string_lossy().into_owned();
                    CausalError::Corrupt(format!("could not read the WAL for capture: {msg}"))
                        .report("pg_causal decoding");
                }
                if !record.is_null() {
                    LogicalDecodingProcessRecord(ctx, reader);
                }
                pg_sys::MemoryContextSwitchTo(call_memory);
                if DONE_ROWS.with(std::cell::Cell::get) >= batch_rows {
                    // Between records no historic snapshot is set up: what decoding cached
                    // under one is dropped before and after the caller's statements.
                    let txns = take_done();
                    DELIVERED.with(|d| d.set(d.get() || !txns.is_empty()));
                    pg_sys::CurrentResourceOwner = old_owner;
                    reset_caches();
                    let flow = on_batch(txns);
                    reset_caches();
                    match flow {
                        Ok(Flow::ReadOn) => {}
                        Ok(Flow::Stop) => {
                            stopped = true;
                            break;
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                pgrx::check_for_interrupts!();
            }
            pg_sys::CurrentResourceOwner = old_owner;
            if failed.is_none() {
                // A run that found nothing to seal has nothing to make durable first: all
                // of the WAL it read is consumed, so the slot may let it go (and its restart
                // position move on) rather than hold it for the next run to read again.
                let idle = !DELIVERED.with(std::cell::Cell::get) && DONE.with(|d| d.borrow().is_empty());
                if let Some(lsn) = confirm {
                    pg_sys::LogicalConfirmReceivedLocation(if idle { lsn.max((*reader).EndRecPtr) } else { lsn });
                    pg_sys::ReplicationSlotMarkDirty();
                }
            }
            RESTART_LSN.with(|r| r.set((*pg_sys::MyReplicationSlot).data.restart_lsn));
            // After a batch its caller refused, the next run starts afresh: it reads again
            // what this one read past the position sealed.
            if failed.is_some() || !keep_context(ctx) {
                forget_tables();
                if kept_as(ctx).is_some() {
                    drop_kept_context(true);
                } else {
                    pg_sys::FreeDecodingContext(ctx);
                }
            }
            pg_sys::ReplicationSlotRelease();
            reset_caches();
            failed
        }))
        .catch_others(|e| {
            // Whatever decoding left half done, the next run starts afresh.
            pg_sys::MemoryContextSwitchTo(call_memory);
            drop_kept_context(false);
            forget_tables();
            reset_caches();
            e.rethrow()
        })
        .execute()
    };
    if let Some(e) = failed {
        return Err(e);
    }
    let txns = take_done();
    if !txns.is_empty() {
        on_batch(txns)?;
    }
    Ok(!stopped)
}

thread_local! {
    /// While decoding resets the backend's caches itself ([`reset_caches`]): how many resets
    /// the relcache callbacks have seen in it.
    static RESETTING: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// Called by the relcache callback for a reset of every entry: whether it is decoding's own
/// ([`reset_caches`]), which leaves pg_causal's caches as they are. Only the first in a reset
/// is: rebuilding the caches takes locks, which take in pending invalidations, and a reset
/// among them (the backend fell behind the invalidation queue) may stand for any change.
pub fn own_reset() -> bool {
    RESETTING.with(|r| match r.get() {
        Some(seen) => {
            r.set(Some(seen + 1));
            true
        }
        None => false,
    })
}

/// Drops every catalog cache entry, as `pg_logical_slot_get_changes` does before and after
/// decoding: entries made under the current snapshot must not serve decoding, nor entries made
/// under decoding's historic snapshots what follows. The catalog itself did not change, so
/// caches that pg_causal filled from it under the current snapshot may stay ([`own_reset`]);
/// each run made the sync worker read them again, at a cost above that of sealing a
/// transaction. A second reset seen meanwhile came from the invalidation queue: then they go.
///
/// # Safety
/// On the backend's thread.
unsafe fn reset_caches() {
    /// Ends the window however the reset ends (an error unwinds through it).
    struct Window;
    impl Drop for Window {
        fn drop(&mut self) {
            RESETTING.with(|r| r.set(None));
        }
    }
    RESETTING.with(|r| r.set(Some(0)));
    let window = Window;
    pg_sys::InvalidateSystemCaches();
    let seen = RESETTING.with(std::cell::Cell::get).unwrap_or(0);
    drop(window);
    if seen > 1 {
        super::trigger::forget_catalog(pg_sys::InvalidOid);
        relcache_changed(pg_sys::InvalidOid);
    }
}

/// A decoding context kept between runs (see [`crate::pg::slot_uses`]): its last run left the
/// slot's use count at `uses`, in (sub)transaction `at`, and everything it allocated lives in
/// `memory`. It is `stale` once that work is undone: what the run sealed is rolled back, so
/// the next run must read those transactions again, from the slot's restart position.
#[derive(Clone, Copy)]
struct KeptContext {
    ctx: *mut pg_sys::LogicalDecodingContext,
    memory: pg_sys::MemoryContext,
    slot: *mut pg_sys::ReplicationSlot,
    uses: u64,
    at: crate::pg::xact::Kept,
    stale: bool,
}

/// Marks the kept decoding context stale if its last run was in undone work.
pub fn forget(undone: crate::pg::xact::Undone) {
    KEPT.with(|k| {
        if let Some(mut kept) = k.get() {
            if undone.covers(kept.at) {
                kept.stale = true;
                k.set(Some(kept));
            }
        }
    });
}

thread_local! {
    /// This backend's kept decoding context, if any.
    static KEPT: std::cell::Cell<Option<KeptContext>> = const { std::cell::Cell::new(None) };
    /// The slot's use count as this run took it: `(before, after)`, or `None` without shared
    /// memory (then no context is kept).
    static TAKEN: std::cell::Cell<Option<(u64, u64)>> = const { std::cell::Cell::new(None) };
}

/// The decoding context for this run, with the slot held: the one the last run of this backend
/// kept, if no other run took the slot since, read on from where it stopped. Otherwise a new
/// one reading from the slot's restart position, skipping what commits before `start`: what
/// `pg_logical_slot_get_changes` does at every call. Reading on saves reading the WAL since the
/// restart position again, and the decoding of every transaction in it, at every run: under a
/// steady load, that was several times what a run had to seal.
///
/// # Safety
/// On the backend's thread, with the slot acquired by this backend.
unsafe fn context_for(start: u64) -> *mut pg_sys::LogicalDecodingContext {
    let taken = crate::pg::slot_uses::taken();
    TAKEN.with(|t| t.set(taken));
    if let Some(kept) = KEPT.with(std::cell::Cell::get) {
        let current = !kept.stale
            && taken.is_some_and(|(before, _)| before == kept.uses)
            && kept.slot == pg_sys::MyReplicationSlot;
        if current {
            return kept.ctx;
        }
        drop_kept_context(true);
    }
    forget_tables();
    let mut routine = pg_sys::XLogReaderRoutine {
        page_read: Some(read_local_xlog_page),
        segment_open: Some(wal_segment_open),
        segment_close: Some(wal_segment_close),
    };
    // A context that may be kept is made in memory of its own, which outlives the transaction.
    let memory = if taken.is_some() {
        pg_sys::AllocSetContextCreateInternal(
            pg_sys::TopMemoryContext,
            c"pg_causal decoding".as_ptr(),
            0,
            8 * 1024,
            8 * 1024 * 1024,
        )
    } else {
        pg_sys::CurrentMemoryContext
    };
    let kept = taken.map(|_| KeptContext {
        ctx: std::ptr::null_mut(), // set below; an error before leaves only `memory` to delete
        memory,
        slot: pg_sys::MyReplicationSlot,
        uses: 0,
        at: crate::pg::xact::now(),
        stale: true, // until its run went well (`keep_context`)
    });
    KEPT.with(|k| k.set(kept));
    let old = pg_sys::MemoryContextSwitchTo(memory);
    let ctx = pg_sys::CreateDecodingContext(
        start,
        std::ptr::null_mut(),
        false,
        &mut routine,
        Some(prepare_write),
        Some(do_write),
        None,
    );
    pg_sys::MemoryContextSwitchTo(old);
    pg_sys::XLogBeginRead((*ctx).reader, (*pg_sys::MyReplicationSlot).data.restart_lsn);
    KEPT.with(|k| k.set(kept.map(|kept| KeptContext { ctx, ..kept })));
    ctx
}

/// The kept context, if `ctx` is it.
fn kept_as(ctx: *mut pg_sys::LogicalDecodingContext) -> Option<KeptContext> {
    KEPT.with(std::cell::Cell::get).filter(|k| k.ctx == ctx)
}

/// After a run that went well: keeps `ctx` for the next run if it is the kept one (so made in
/// memory of its own), noting the use count this run left and the (sub)transaction it ran in.
/// Returns whether it was kept.
///
/// # Safety
/// On the backend's thread.
unsafe fn keep_context(ctx: *mut pg_sys::LogicalDecodingContext) -> bool {
    let (Some(mut kept), Some((_, after))) = (kept_as(ctx), TAKEN.with(std::cell::Cell::get)) else {
        return false;
    };
    kept.uses = after;
    kept.at = crate::pg::xact::now();
    kept.stale = false;
    KEPT.with(|k| k.set(Some(kept)));
    true
}

/// Forgets the kept decoding context, if any. With `orderly`, the slot is held and the context
/// is whole: it is freed as Postgres frees one (closing its WAL segment, deleting the slot's
/// spilled transactions). Otherwise (after an error, half way through a record perhaps) its
/// memory is deleted and its WAL segment closed; spilled transactions left behind are deleted
/// by the next context made for the slot.
///
/// # Safety
/// On the backend's thread.
unsafe fn drop_kept_context(orderly: bool) {
    let Some(kept) = KEPT.with(|k| k.take()) else { return };
    if kept.ctx.is_null() {
        // Its making failed: nothing but memory to let go of.
    } else if orderly {
        pg_sys::FreeDecodingContext(kept.ctx);
    } else {
        let reader = (*kept.ctx).reader;
        if !reader.is_null() && (*reader).seg.ws_file >= 0 {
            libc::close((*reader).seg.ws_file);
        }
    }
    pg_sys::MemoryContextDelete(kept.memory);
}

/// Keeps the LOG lines every decoding start writes ("starting logical decoding for slot",
/// "logical decoding found consistent point") out of the server log while it lives: the sync
/// worker seals every few milliseconds while commits come. A server set to log DEBUG
/// messages still gets them. Errors are logged where they are caught, after it is dropped.
struct QuietDecodingLog(Option<i32>);

impl QuietDecodingLog {
    fn new() -> Self {
        // SAFETY: a backend-local setting variable, read and written on the backend's thread.
        unsafe {
            let level = pg_sys::log_min_messages;
            if level >= pg_sys::WARNING as i32 {
                pg_sys::log_min_messages = pg_sys::FATAL as i32;
                return QuietDecodingLog(Some(level));
            }
        }
        QuietDecodingLog(None)
    }
}

impl Drop for QuietDecodingLog {
    fn drop(&mut self) {
        if let Some(level) = self.0 {
            // SAFETY: as in `new`.
            unsafe { pg_sys::log_min_messages = level };
        }
    }
}

/// Creates the logical slot `slot` for this database, decoded by this library's plugin: what
/// `pg_create_logical_replication_slot` does, without its privilege check (the caller is
/// pg_causal, on behalf of a writer). Fails in a transaction that has an xid; waits for the
/// transactions running now to end.
/// Creates the slot; returns the position its decoding starts from.
pub fn create_slot(slot: &str) -> Result<u64, CausalError> {
    let name = std::ffi::CString::new(slot).map_err(|_| CausalError::Corrupt("slot name".into()))?;
    // SAFETY: the sequence of create_logical_replication_slot (slotfuncs.c), on this backend's
    // thread; an error raised in it drops the ephemeral slot at abort.
    unsafe {
        pg_sys::CheckLogicalDecodingRequirements();
        pg_sys::ReplicationSlotCreate(name.as_ptr(), true, pg_sys::ReplicationSlotPersistency::RS_EPHEMERAL, false);
        let mut routine = pg_sys::XLogReaderRoutine {
            page_read: Some(read_local_xlog_page),
            segment_open: Some(wal_segment_open),
            segment_close: Some(wal_segment_close),
        };
        let ctx = pg_sys::CreateInitDecodingContext(
            c"pg_causal".as_ptr(),
            std::ptr::null_mut(),
            false,
            pg_sys::InvalidXLogRecPtr as u64,
            &mut routine,
            Some(prepare_write),
            Some(do_write),
            None,
        );
        pg_sys::DecodingContextFindStartpoint(ctx);
        pg_sys::FreeDecodingContext(ctx);
        // A slot made again where a dropped one was is another slot: a context kept for the
        // old one must not read on in it.
        crate::pg::slot_uses::taken();
        pg_sys::ReplicationSlotPersist();
        // The slot is this backend's until released.
        let start = (*pg_sys::MyReplicationSlot).data.confirmed_flush;
        pg_sys::ReplicationSlotRelease();
        Ok(start)
    }
}
