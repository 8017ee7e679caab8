//! Cancellation hooks: per group, a function of this database's that placing calls with each
//! newly cancelled entry (the record `causal_cancelled` carries), in the placing transaction.
//!
//! The hook runs as the role that set it, in a security-restricted operation, inside a
//! subtransaction: an error in it is reported as a WARNING and undone, and never stops
//! placement. It may not write the group's tables (`capture::trigger` refuses writes made
//! under the replay origin: they would be in no entry).

use pgrx::pg_sys;
use serde_json::Value;

use crate::error::CausalError;
use crate::pg::spi::{as_role, catching, get_opt};

/// A group's hook, ready to call.
pub(super) struct Hook {
    /// The function's qualified, quoted name.
    function: String,
    run_as: pg_sys::Oid,
}

/// The hook of group `group_id`, if one is set and its function still exists.
pub(super) fn cancellation_hook(group_id: &str) -> Result<Option<Hook>, CausalError> {
    let row = get_opt::<pgrx::JsonB>(
        "SELECT jsonb_build_object('f', quote_ident(n.nspname) || '.' || quote_ident(p.proname), \
                                   'r', h.run_as::oid::int8) \
         FROM causal.cancellation_hooks h \
         JOIN pg_catalog.pg_proc p ON p.oid = h.hook \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE h.group_id = $1",
        &[group_id.into()],
    )?;
    let Some(pgrx::JsonB(v)) = row else { return Ok(None) };
    let (Some(function), Some(run_as)) = (v["f"].as_str(), v["r"].as_i64()) else { return Ok(None) };
    let run_as = u32::try_from(run_as).map_err(|_| CausalError::Corrupt(format!("hook role {run_as}")))?;
    Ok(Some(Hook { function: function.to_string(), run_as: pg_sys::Oid::from(run_as) }))
}

impl Hook {
    /// Calls the hook with `record`; a failure is reported and undone.
    pub(super) fn call(&self, record: &Value) {
        let sql = format!("SELECT {}($1::jsonb)", self.function);
        let text = record.to_string();
        let outcome = catching(std::panic::AssertUnwindSafe(|| {
            as_role(Some(self.run_as), || pgrx::Spi::run_with_args(&sql, &[text.clone().into()]))
        }));
        let failure = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(message) => message,
        };
        pgrx::warning!(
            "pg_causal: the cancellation hook {} failed for entry {}: {failure}",
            self.function,
            record.get("entry").and_then(Value::as_str).unwrap_or("?")
        );
    }
}
