//! Reading every row of a table as of a snapshot, without SQL: a sequential heap scan that
//! hands each tuple to the caller, with the values it detoasts freed after each row.

use pgrx::heap_tuple::PgHeapTuple;
use pgrx::{pg_sys, PgMemoryContexts, PgTupleDesc};

/// A tuple of the scanned table, valid during the call it is handed to.
pub type ScannedTuple<'a> = PgHeapTuple<'a, pgrx::AllocatedByPostgres>;

/// Calls `f` with every row of `relid` visible to `snapshot` (the active snapshot if `None`),
/// in the heap's order, until `f` fails. Each call runs in a memory context emptied after it,
/// so values stored out of line and detoasted for it do not pile up.
pub fn each_row<E>(
    relid: pg_sys::Oid,
    snapshot: Option<pg_sys::Snapshot>,
    mut f: impl FnMut(&ScannedTuple<'_>) -> Result<(), E>,
) -> Result<(), E> {
    // SAFETY: the relation is opened, scanned and closed here, on the backend's thread, with a
    // lock that keeps it from being dropped meanwhile; a tuple is used only during its call.
    unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        use pg_sys::ScanOptions::*;
        let flags = SO_TYPE_SEQSCAN | SO_ALLOW_STRAT | SO_ALLOW_SYNC | SO_ALLOW_PAGEMODE;
        let snapshot = snapshot.unwrap_or_else(|| pg_sys::GetActiveSnapshot());
        let scan = pg_sys::heap_beginscan(rel, snapshot, 0, std::ptr::null_mut(), std::ptr::null_mut(), flags);
        let mut row_memory = PgMemoryContexts::new("pg_causal scanned row");
        let mut read = || -> Result<(), E> {
            loop {
                let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
                if tuple.is_null() {
                    return Ok(());
                }
                let result = row_memory.switch_to(|_| {
                    let t = PgHeapTuple::from_heap_tuple(PgTupleDesc::from_pg_unchecked((*rel).rd_att), tuple);
                    f(&t)
                });
                row_memory.reset();
                result?;
            }
        };
        let result = read();
        pg_sys::heap_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        result
    }
}
