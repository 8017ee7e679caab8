//! Waking the sync worker: notifications on its channel.

use pgrx::pg_sys;

use crate::error::CausalError;

/// The channel the sync worker listens on.
pub const CHANNEL: &str = "causal_sync";

/// Wakes the sync worker after `group` changed (at commit; Postgres folds repeats).
pub fn notify_changed(group_id: &str) -> Result<(), CausalError> {
    notify(&format!("group:{group_id}"))
}

pub fn notify(what: &str) -> Result<(), CausalError> {
    use pgrx::IntoDatum;
    // pg_notify called directly, not through a statement: every local commit notifies, and
    // the statement cost more than the notification itself.
    unsafe {
        pgrx::fcinfo::direct_function_call_as_datum(pg_sys::pg_notify, &[CHANNEL.into_datum(), what.into_datum()])
    };
    Ok(())
}
