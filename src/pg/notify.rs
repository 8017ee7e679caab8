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
    notify_on(CHANNEL, what)
}

/// The channel on which applications hear that an entry was cancelled (docs/SEMANTICS.md).
pub const CANCELLED_CHANNEL: &str = "causal_cancelled";

/// Sends `payload` on `channel` at commit (Postgres folds repeats within a transaction).
pub fn notify_on(channel: &str, payload: &str) -> Result<(), CausalError> {
    use pgrx::IntoDatum;
    // pg_notify called directly, not through a statement: every local commit notifies, and
    // the statement cost more than the notification itself.
    unsafe {
        pgrx::fcinfo::direct_function_call_as_datum(pg_sys::pg_notify, &[channel.into_datum(), payload.into_datum()])
    };
    Ok(())
}
