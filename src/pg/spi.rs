//! SPI helpers. Hot statements are prepared once per backend and kept (`SPI_keepplan`); the
//! plan cache replans them if the catalog changes under them.
//!
//! A kept plan chosen while a catalog table was nearly empty (a sequential scan, say) would
//! otherwise stay in use as the table grows, until an ANALYZE invalidates it. So each plan is
//! prepared again after 64, 256, 1024, ... uses (then every 2^20): planning follows the
//! tables' growth at a cost that vanishes as the counts grow.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::{DatumWithOid, FromDatum, IntoDatum};
use pgrx::pg_sys::PgOid;
use pgrx::spi::{self, OwnedPreparedStatement, Spi, SpiTupleTable};

struct KeptPlan {
    plan: Rc<OwnedPreparedStatement>,
    uses: u64,
}

thread_local! {
    static PLANS: RefCell<HashMap<String, KeptPlan>> = RefCell::new(HashMap::new());
}

/// Whether a plan used `uses` times should be prepared again.
fn replan_due(uses: u64) -> bool {
    if uses < 64 {
        false
    } else if uses <= 1 << 20 {
        uses.is_power_of_two() && uses.trailing_zeros().is_multiple_of(2)
    } else {
        uses.is_multiple_of(1 << 20)
    }
}

/// Runs a kept plan of `sql` (prepared on first use with the types of `args`) and hands the
/// result to `f`. `mutating` statements write.
pub fn run_prepared<R>(
    sql: &str,
    args: &[DatumWithOid],
    mutating: bool,
    f: impl FnOnce(SpiTupleTable<'_>) -> Result<R, spi::Error>,
) -> Result<R, spi::Error> {
    Spi::connect_mut(|client| {
        // The kept plan, unless it is missing or due to be prepared again; and its use count.
        let (cached, uses) = PLANS.with(|p| match p.borrow_mut().get_mut(sql) {
            Some(kept) => {
                kept.uses += 1;
                (if replan_due(kept.uses) { None } else { Some(kept.plan.clone()) }, kept.uses)
            }
            None => (None, 1),
        });
        let plan = match cached {
            Some(plan) => plan,
            None => {
                let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
                let prepared = if mutating { client.prepare_mut(sql, &types)? } else { client.prepare(sql, &types)? };
                let plan = Rc::new(prepared.keep());
                PLANS.with(|p| p.borrow_mut().insert(sql.to_string(), KeptPlan { plan: plan.clone(), uses }));
                plan
            }
        };
        let table = if mutating { client.update(&*plan, None, args)? } else { client.select(&*plan, None, args)? };
        f(table)
    })
}

/// The first column of the first row of a kept plan, or `None` (no row, or NULL).
pub fn get_prepared<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Result<Option<T>, spi::Error> {
    run_prepared(sql, args, false, |mut rows| match rows.next() {
        Some(row) => row.get::<T>(1),
        None => Ok(None),
    })
}

/// Executes a writing statement through a kept plan.
pub fn exec_prepared(sql: &str, args: &[DatumWithOid]) -> Result<(), spi::Error> {
    run_prepared(sql, args, true, |_| Ok(()))
}

/// [`exec_prepared`], returning how many rows the statement processed.
pub fn exec_prepared_count(sql: &str, args: &[DatumWithOid]) -> Result<usize, spi::Error> {
    run_prepared(sql, args, true, |t| Ok(t.len()))
}

/// The first column of the first row, or `None` when there is no row or it is NULL.
pub fn get_opt<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Result<Option<T>, spi::Error> {
    match Spi::get_one_with_args::<T>(sql, args) {
        Err(spi::Error::InvalidPosition) => Ok(None),
        other => other,
    }
}

/// Runs `f` with the setting `name` at `value` for this transaction, and gives it back its
/// previous value afterwards (if `f` fails, the transaction's abort undoes both).
/// Straight through the settings module, as `current_setting` and `set_config(..., true)` do
/// (a statement each was parsed and planned at every placing call); an unknown or forbidden
/// setting raises their errors.
pub fn with_setting<T>(name: &str, value: &str, f: impl FnOnce() -> T) -> Result<T, spi::Error> {
    // Names and values are pg_causal's own, without NUL (an empty name is refused as unknown).
    let cname = std::ffi::CString::new(name).unwrap_or_default();
    let cvalue = std::ffi::CString::new(value).unwrap_or_default();
    // SAFETY: reads a setting by name, on the backend's thread; the answer is copied.
    let before = unsafe {
        let p = pgrx::pg_sys::GetConfigOptionByName(cname.as_ptr(), std::ptr::null_mut(), false);
        (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_owned())
    };
    if before.as_deref() == Some(cvalue.as_c_str()) {
        return Ok(f());
    }
    set_local(&cname, &cvalue);
    let result = f();
    if let Some(before) = before {
        set_local(&cname, &before);
    }
    Ok(result)
}

/// `SET LOCAL name = value`, as `set_config(name, value, true)` does it.
fn set_local(name: &std::ffi::CStr, value: &std::ffi::CStr) {
    use pgrx::pg_sys;
    // SAFETY: the call set_config_by_name makes, on the backend's thread; errors are raised.
    unsafe {
        let context = if pg_sys::superuser() { pg_sys::GucContext::PGC_SUSET } else { pg_sys::GucContext::PGC_USERSET };
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            context,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            0,
            false,
        );
    }
}

/// Runs `f` as a replay: with `session_replication_role = replica` (for this transaction), so
/// neither ordinary triggers nor event triggers fire, and with the replication origin that
/// marks what `f` writes as not to be captured again (see [`with_replay_origin`]); restores
/// both afterwards.
pub fn with_replica_role<T>(f: impl FnOnce() -> T) -> Result<T, spi::Error> {
    with_setting("session_replication_role", "replica", || with_replay_origin(f))
}

/// Runs `f` with this session's replication origin set to `DoNotReplicateId`: every WAL
/// record `f` writes carries it, and the capture decoder skips records with an origin, as
/// native replication skips what its apply worker wrote. It is not a real origin, so the
/// commit records no progress of one. A transaction's abort resets it
/// ([`replay_origin_reset`]).
pub fn with_replay_origin<T>(f: impl FnOnce() -> T) -> T {
    /// Gives the origin back when dropped, also when an error unwinds through `f`.
    struct Restore(u16);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: as below.
            unsafe { pgrx::pg_sys::replorigin_session_origin = self.0 };
        }
    }
    // SAFETY: a backend-local global, read and written on the backend's thread.
    let _restore = Restore(unsafe { pgrx::pg_sys::replorigin_session_origin });
    unsafe { pgrx::pg_sys::replorigin_session_origin = pgrx::pg_sys::DoNotReplicateId as u16 };
    f()
}

/// Whether this session writes under the replay origin now (inside [`with_replay_origin`]).
pub fn replaying() -> bool {
    // SAFETY: as in `with_replay_origin`.
    unsafe { pgrx::pg_sys::replorigin_session_origin == pgrx::pg_sys::DoNotReplicateId as u16 }
}

/// After an abort in [`with_replay_origin`]: the session's writes are its own again.
pub fn replay_origin_reset() {
    // SAFETY: as in `with_replay_origin`.
    unsafe {
        if pgrx::pg_sys::replorigin_session_origin == pgrx::pg_sys::DoNotReplicateId as u16 {
            pgrx::pg_sys::replorigin_session_origin = pgrx::pg_sys::InvalidRepOriginId as u16;
        }
    }
}

/// Runs `f` as the owner of the table `relid`, in a security-restricted operation, as Postgres
/// runs a table owner's code during maintenance (and logical replication applies as the table
/// owner): what replay and imported DDL evaluate on a user table (its CHECK constraints, its
/// defaults, its index expressions) runs with that role's rights, not the importer's, and
/// cannot change role, create temporary objects or leave session state behind. An error in
/// `f` aborts the (sub)transaction, whose abort restores the user.
pub fn as_owner_of<T>(relid: pgrx::pg_sys::Oid, f: impl FnOnce() -> T) -> Result<T, spi::Error> {
    let owner =
        get_opt::<pgrx::pg_sys::Oid>("SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1", &[relid.into()])?;
    Ok(as_role(owner, f))
}

/// The owner of the table `qualified` (a quoted, qualified name), if it exists.
pub fn table_owner(qualified: &str) -> Result<Option<pgrx::pg_sys::Oid>, spi::Error> {
    get_prepared::<pgrx::pg_sys::Oid>(
        "SELECT relowner FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass($1)",
        &[qualified.into()],
    )
}

/// Runs `f` as `role` (the current user when `None`), in a security-restricted operation (see
/// [`as_owner_of`]).
pub fn as_role<T>(role: Option<pgrx::pg_sys::Oid>, f: impl FnOnce() -> T) -> T {
    // SAFETY: reads the backend's own user id, on its thread.
    let role = role.unwrap_or_else(|| unsafe { pgrx::pg_sys::GetUserId() });
    let (mut saved_user, mut saved_context) = (pgrx::pg_sys::InvalidOid, 0);
    // SAFETY: as SECURITY DEFINER functions and VACUUM do, on the backend's thread; the saved
    // pair is restored after `f`, and by the (sub)transaction's abort if `f` raises.
    unsafe {
        pgrx::pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pgrx::pg_sys::SetUserIdAndSecContext(
            role,
            saved_context
                | pgrx::pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pgrx::pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    let result = f();
    unsafe { pgrx::pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    result
}

thread_local! {
    static EXTENSION_OWNER: std::cell::Cell<Option<pgrx::pg_sys::Oid>> = const { std::cell::Cell::new(None) };
}

/// The role that owns the extension (and so the catalog).
pub fn extension_owner() -> Result<pgrx::pg_sys::Oid, spi::Error> {
    if let Some(o) = EXTENSION_OWNER.with(std::cell::Cell::get) {
        return Ok(o);
    }
    let owner = get_opt::<pgrx::pg_sys::Oid>("SELECT extowner FROM pg_extension WHERE extname = 'pg_causal'", &[])?
        .unwrap_or(pgrx::pg_sys::BOOTSTRAP_SUPERUSERID.into());
    EXTENSION_OWNER.with(|o| o.set(Some(owner)));
    Ok(owner)
}

/// Runs `f` as the extension's owner, as a SECURITY DEFINER function of the extension would:
/// what capture and sealing do on behalf of any writer (read identity keys, write the
/// catalog, create the slot). An error in `f` aborts the (sub)transaction, whose abort
/// restores the user.
pub fn as_extension_owner<T>(f: impl FnOnce() -> T) -> Result<T, spi::Error> {
    let owner = extension_owner()?;
    let (mut saved_user, mut saved_context) = (pgrx::pg_sys::InvalidOid, 0);
    // SAFETY: as SECURITY DEFINER functions do, on the backend's thread; restored after `f`.
    unsafe {
        pgrx::pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pgrx::pg_sys::SetUserIdAndSecContext(owner, saved_context | pgrx::pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    let result = f();
    unsafe { pgrx::pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    Ok(result)
}

/// Runs `f` with JIT compilation off (for this transaction), and restores the setting after.
/// pg_causal's own statements are index probes and batch writes that JIT never pays back: the
/// planner's cost estimate for reading a run's rows crossed `jit_above_cost`, and each run
/// compiled its expressions (and the first loaded LLVM): 7% of the engine's samples in a
/// profile of a 100k-entry import.
pub fn without_jit<T>(f: impl FnOnce() -> T) -> Result<T, spi::Error> {
    with_setting("jit", "off", f)
}

/// How a subtransaction ended.
enum SubOutcome<T> {
    Done(T),
    /// An error it raised, with its SQLSTATE and message; the subtransaction was rolled back.
    Failed(pgrx::PgSqlErrorCode, String),
}

/// Runs `f` in a subtransaction. It is released when `f` completes and rolled back when `f`
/// raises, whatever the error: no subtransaction is left open behind the caller.
fn in_subtransaction<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> SubOutcome<T> {
    // SAFETY: the subtransaction is begun and ended here, on the backend's thread; the memory
    // context and resource owner are the caller's again afterwards, as PL/Python and PL/Perl
    // restore them around theirs.
    unsafe {
        let context = pgrx::pg_sys::CurrentMemoryContext;
        let owner = pgrx::pg_sys::CurrentResourceOwner;
        pgrx::pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pgrx::pg_sys::MemoryContextSwitchTo(context);
        let outcome = pgrx::PgTryBuilder::new(move || SubOutcome::Done(f()))
            .catch_others(|e| match e {
                pgrx::pg_sys::panic::CaughtError::PostgresError(r)
                | pgrx::pg_sys::panic::CaughtError::ErrorReport(r)
                | pgrx::pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => {
                    SubOutcome::Failed(r.sql_error_code(), r.message().to_string())
                }
            })
            .execute();
        match outcome {
            SubOutcome::Done(_) => pgrx::pg_sys::ReleaseCurrentSubTransaction(),
            SubOutcome::Failed(..) => pgrx::pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pgrx::pg_sys::MemoryContextSwitchTo(context);
        pgrx::pg_sys::CurrentResourceOwner = owner;
        outcome
    }
}

/// Runs `f` in a subtransaction: `Some` of its result when it completes, `None` when it raised
/// a unique violation (23505), which the subtransaction's rollback undoes. Any other error is
/// raised again after the rollback, as it would have been without the subtransaction.
pub fn unless_unique_violation<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<T> {
    match in_subtransaction(f) {
        SubOutcome::Done(v) => Some(v),
        SubOutcome::Failed(pgrx::PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, _) => None,
        SubOutcome::Failed(code, message) => {
            pgrx::pg_sys::panic::ErrorReport::new(code, message, "pg_causal").report(pgrx::PgLogLevel::ERROR);
            unreachable!("ERROR-level reports do not return")
        }
    }
}

/// Runs `f` in a subtransaction and turns any error it raises into `Err` with its message,
/// after rolling the subtransaction back: for checks whose failure is an answer, not a fault.
pub fn catching<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    match in_subtransaction(f) {
        SubOutcome::Done(v) => Ok(v),
        SubOutcome::Failed(_, message) => Err(message),
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[test]
    fn replans_follow_a_geometric_schedule() {
        let due: Vec<u64> = (1..=5000).filter(|u| super::replan_due(*u)).collect();
        assert_eq!(due, vec![64, 256, 1024, 4096]);
        assert!(super::replan_due(1 << 20));
        assert!(super::replan_due(3 << 20));
        assert!(!super::replan_due((1 << 20) + 1));
    }

    /// A unique violation inside is undone and reported as `None`; what completes is kept.
    #[pg_test]
    fn a_unique_violation_is_undone_and_reported() {
        Spi::run("CREATE TABLE u (id int PRIMARY KEY); INSERT INTO u VALUES (1)").unwrap();
        let clash = super::unless_unique_violation(|| Spi::run("INSERT INTO u VALUES (2), (1)"));
        assert!(clash.is_none());
        let fine = super::unless_unique_violation(|| Spi::run("INSERT INTO u VALUES (3)"));
        assert!(matches!(fine, Some(Ok(()))));
        let rows = Spi::get_one::<String>("SELECT string_agg(id::text, ',' ORDER BY id) FROM u").unwrap();
        assert_eq!(rows.as_deref(), Some("1,3"));
    }

    /// An error other than a unique violation rolls the subtransaction back before it is
    /// raised again: a caller that catches it is not left inside a subtransaction.
    #[pg_test]
    fn other_errors_leave_no_subtransaction_open() {
        Spi::run("CREATE TABLE v (id int PRIMARY KEY)").unwrap();
        // SAFETY: reads the backend's transaction nesting level.
        let level = || unsafe { pgrx::pg_sys::GetCurrentTransactionNestLevel() };
        let before = level();
        let caught = super::catching(|| super::unless_unique_violation(|| Spi::run("INSERT INTO v VALUES (1 / 0)")));
        assert!(caught.unwrap_err().contains("division by zero"));
        assert_eq!(level(), before);
        assert_eq!(super::catching(|| 7).unwrap(), 7);
    }

    /// JIT is off inside and back to the session's setting after, whatever it was.
    #[pg_test]
    fn without_jit_turns_jit_off_and_restores_it() {
        let jit = || Spi::get_one::<String>("SELECT current_setting('jit')").unwrap().unwrap();
        for setting in ["on", "off"] {
            Spi::run(&format!("SET jit = {setting}")).unwrap();
            let inside = super::without_jit(jit).unwrap();
            assert_eq!((inside.as_str(), jit()), ("off", setting.to_string()));
        }
    }
}
