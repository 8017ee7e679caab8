//! Which catalog this database has: the library can be newer than the extension's catalog
//! until `ALTER EXTENSION pg_causal UPDATE` runs (docs/OPERATIONS.md, "Upgrade"), and then
//! works without what the newer catalog adds. Looked up in the system caches, which is cheap
//! enough to ask at every use and always current (an upgrade in another session shows at once).

use std::ffi::CStr;

use pgrx::pg_sys;

/// The oid of table `causal.<table>`, if it exists.
fn relation(table: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: system cache lookups by name, on the backend's thread; a missing name gives
    // InvalidOid (missing_ok).
    unsafe {
        let ns = pg_sys::get_namespace_oid(c"causal".as_ptr(), true);
        if ns == pg_sys::InvalidOid {
            return None;
        }
        let rel = pg_sys::get_relname_relid(table.as_ptr(), ns);
        (rel != pg_sys::InvalidOid).then_some(rel)
    }
}

/// Whether `causal.<table>` has column `column`.
fn has_column(table: &CStr, column: &CStr) -> bool {
    relation(table).is_some_and(|rel| {
        // SAFETY: as above.
        unsafe { pg_sys::get_attnum(rel, column.as_ptr()) != pg_sys::InvalidAttrNumber as i16 }
    })
}

/// Whether the journal records a cancellation's kind and row (`journal.cause`, 0.2.0).
pub fn journal_has_cause() -> bool {
    has_column(c"journal", c"cause")
}

/// Whether the capture state records a span of WAL that was never decoded, and how many rows
/// were sealed from the tables for it (`capture_state.recaptured_rows`, 0.2.0).
pub fn capture_state_records_spans() -> bool {
    has_column(c"capture_state", c"recaptured_rows")
}

/// Whether groups can have cancellation hooks (`causal.cancellation_hooks`, 0.2.0).
pub fn has_cancellation_hooks() -> bool {
    relation(c"cancellation_hooks").is_some()
}

/// Whether entry rows keep their predecessors' hashes (`dag_entries.prev`, dropped in 0.2.0:
/// readers take them from the predecessors' node ids, `preds`).
pub fn dag_entries_have_prev() -> bool {
    has_column(c"dag_entries", c"prev")
}

/// Whether rows can be kept in sets of fresh rows (`causal.fresh_rows`, 0.2.0).
pub fn has_fresh_row_sets() -> bool {
    relation(c"fresh_rows").is_some()
}

/// Whether entry rows are packed (`dag_entries.links`, 0.2.0; see `entry_row`).
pub fn dag_entries_packed() -> bool {
    has_column(c"dag_entries", c"links")
}
