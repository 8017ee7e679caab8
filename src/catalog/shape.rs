//! Which catalog this database has: the library can be newer than the extension's catalog
//! until `ALTER EXTENSION pg_causal UPDATE` runs (docs/OPERATIONS.md, "Upgrade"), and then
//! works without what the newer catalog adds. Looked up in the system caches, and the answers
//! kept until the catalog of relations or columns changes ([`forget`]: an upgrade in another
//! session shows at the next lock this one takes). Sealing asked several times per entry:
//! about 4% of the sealing backend's CPU under a steady load of single-row commits.

use std::cell::Cell;
use std::ffi::CStr;

use pgrx::pg_sys;

/// The questions answered so far, by [`Question`].
const QUESTIONS: usize = 7;

#[derive(Clone, Copy)]
enum Question {
    JournalCause,
    CaptureSpans,
    CancellationHooks,
    EntriesPrev,
    FreshRowSets,
    EntriesPacked,
    JournalRuns,
}

thread_local! {
    static ANSWERS: [Cell<Option<bool>>; QUESTIONS] = const { [const { Cell::new(None) }; QUESTIONS] };
}

/// The kept answer to `q`, or `look` asked now and kept.
fn answer(q: Question, look: impl FnOnce() -> bool) -> bool {
    ANSWERS.with(|a| {
        let cell = &a[q as usize];
        cell.get().unwrap_or_else(|| {
            let found = look();
            cell.set(Some(found));
            found
        })
    })
}

/// Forgets every answer: a relation or a column was created, changed or dropped (relcache and
/// `pg_class`/`pg_attribute` syscache callbacks), or decoding reset the caches.
pub fn forget() {
    ANSWERS.with(|a| a.iter().for_each(|c| c.set(None)));
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_catalog_changed(_arg: pg_sys::Datum, _cacheid: std::ffi::c_int, _hash: u32) {
    forget();
}

/// Registers the syscache callbacks that clear the answers; called from `_PG_init`.
pub fn register_callbacks() {
    // SAFETY: called once from _PG_init, on the backend's thread.
    unsafe {
        for cache in [pg_sys::SysCacheIdentifier::RELNAMENSP, pg_sys::SysCacheIdentifier::ATTNAME] {
            pg_sys::CacheRegisterSyscacheCallback(cache as i32, Some(on_catalog_changed), pg_sys::Datum::from(0usize));
        }
    }
}

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
    answer(Question::JournalCause, || has_column(c"journal", c"cause"))
}

/// Whether the capture state records a span of WAL that was never decoded, and how many rows
/// were sealed from the tables for it (`capture_state.recaptured_rows`, 0.2.0).
pub fn capture_state_records_spans() -> bool {
    answer(Question::CaptureSpans, || has_column(c"capture_state", c"recaptured_rows"))
}

/// Whether groups can have cancellation hooks (`causal.cancellation_hooks`, 0.2.0).
pub fn has_cancellation_hooks() -> bool {
    answer(Question::CancellationHooks, || relation(c"cancellation_hooks").is_some())
}

/// Whether entry rows keep their predecessors' hashes (`dag_entries.prev`, dropped in 0.2.0:
/// readers take them from the predecessors' node ids, `preds`).
pub fn dag_entries_have_prev() -> bool {
    answer(Question::EntriesPrev, || has_column(c"dag_entries", c"prev"))
}

/// Whether rows can be kept in sets of fresh rows (`causal.fresh_rows`, 0.2.0).
pub fn has_fresh_row_sets() -> bool {
    answer(Question::FreshRowSets, || relation(c"fresh_rows").is_some())
}

/// Whether journal records can be kept as runs (`causal.journal_runs`, 0.2.0).
pub fn has_journal_runs() -> bool {
    answer(Question::JournalRuns, || relation(c"journal_runs").is_some())
}

/// Whether entry rows are packed (`dag_entries.links`, 0.2.0; see `entry_row`).
pub fn dag_entries_packed() -> bool {
    answer(Question::EntriesPacked, || has_column(c"dag_entries", c"links"))
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// A kept answer goes with the catalog change that makes it wrong, within the transaction
    /// that makes it as in later ones: a table renamed or created, a column added or dropped.
    #[pg_test]
    fn answers_follow_the_catalog() {
        assert!(super::has_fresh_row_sets() && !super::dag_entries_have_prev());
        Spi::run("ALTER TABLE causal.fresh_rows RENAME TO fresh_rows_elsewhere").unwrap();
        assert!(!super::has_fresh_row_sets());
        Spi::run("ALTER TABLE causal.fresh_rows_elsewhere RENAME TO fresh_rows").unwrap();
        assert!(super::has_fresh_row_sets());
        Spi::run("ALTER TABLE causal.dag_entries ADD COLUMN prev text").unwrap();
        assert!(super::dag_entries_have_prev());
        Spi::run("ALTER TABLE causal.dag_entries DROP COLUMN prev").unwrap();
        assert!(!super::dag_entries_have_prev());
    }
}
