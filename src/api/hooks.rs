//! Telling the application through a function: `causal.set_cancellation_hook`.

use pgrx::prelude::*;

use crate::catalog::group::Group;
use crate::error::{CausalError, OrReport, HOOK_MISSING, HOOK_NOT_EXECUTABLE, HOOK_SIGNATURE};
use crate::pg::spi::get_opt;

/// Sets the function of this database that placing calls, in the placing transaction, with
/// each newly cancelled entry of group `grp`: one `jsonb` argument, the record the
/// `causal_cancelled` notification carries. `hook` names it as `regprocedure` text, e.g.
/// `'app.on_cancel(jsonb)'`; NULL clears the hook. The hook runs as the role that sets it; an
/// error in it is a WARNING and is undone, and placement goes on. Local configuration: it is
/// never replicated. Returns whether the group had a hook before.
#[pg_extern]
fn set_cancellation_hook(grp: &str, hook: Option<&str>) -> bool {
    let f = "causal.set_cancellation_hook";
    let group = Group::find(grp).or_report(f);
    let had =
        get_opt::<bool>("SELECT true FROM causal.cancellation_hooks WHERE group_id = $1", &[group.id.clone().into()])
            .map_err(CausalError::from)
            .or_report(f)
            .is_some();
    let Some(hook) = hook else {
        Spi::run_with_args("DELETE FROM causal.cancellation_hooks WHERE group_id = $1", &[group.id.into()])
            .map_err(CausalError::from)
            .or_report(f);
        return had;
    };
    check_hook(hook).or_report(f);
    Spi::run_with_args(
        "INSERT INTO causal.cancellation_hooks (group_id, hook, run_as) \
         VALUES ($1, pg_catalog.to_regprocedure($2), current_user::regrole) \
         ON CONFLICT (group_id) DO UPDATE SET hook = EXCLUDED.hook, run_as = EXCLUDED.run_as, set_at = now()",
        &[group.id.into(), hook.into()],
    )
    .map_err(CausalError::from)
    .or_report(f);
    had
}

/// The function exists, takes exactly one jsonb argument, and the current role may call it.
fn check_hook(hook: &str) -> Result<(), CausalError> {
    let bad = |why| CausalError::BadHook { hook: hook.chars().take(200).collect(), why };
    let shape = get_opt::<String>(
        "SELECT CASE WHEN p.pronargs <> 1 OR p.proargtypes[0] <> 'jsonb'::regtype THEN 'signature' \
                     WHEN NOT has_function_privilege(p.oid, 'EXECUTE') THEN 'privilege' ELSE 'ok' END \
         FROM pg_catalog.pg_proc p WHERE p.oid = pg_catalog.to_regprocedure($1)",
        &[hook.into()],
    )?;
    match shape.as_deref() {
        None => Err(bad(HOOK_MISSING)),
        Some("signature") => Err(bad(HOOK_SIGNATURE)),
        Some("privilege") => Err(bad(HOOK_NOT_EXECUTABLE)),
        _ => Ok(()),
    }
}
