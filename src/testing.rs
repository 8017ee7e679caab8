//! Helpers shared by the `#[pg_test]`s.

use pgrx::prelude::*;

/// The single text value a query returns.
pub fn one(sql: &str) -> String {
    Spi::get_one::<String>(sql).unwrap().unwrap()
}

/// Runs statements in a DO block: `ok`, or the SQLSTATE and message they failed with.
pub fn outcome(stmts: &str) -> String {
    Spi::run(&format!(
        "DO $outcome$ BEGIN {stmts}; PERFORM set_config('causal_test.outcome', 'ok', false); \
         EXCEPTION WHEN OTHERS THEN PERFORM set_config('causal_test.outcome', SQLSTATE || ' ' || SQLERRM, false); \
         END $outcome$"
    ))
    .unwrap();
    one("SELECT current_setting('causal_test.outcome')")
}

/// Creates the capture slot if it does not exist. Called first in a pg_test, whose
/// transaction has no xid yet (pgrx's `Spi::run` would give it one). The database has one
/// slot, and pg_tests run side by side: those that seal (and so decode from it) take turns,
/// each holding a lock until its transaction ends. A backend that decoded keeps the slot
/// until it exits (its decoding context is kept for its next run), so the next one also waits
/// (up to 30 s) for the slot to be free.
pub fn capture_slot() {
    crate::capture::slot::ensure(true).unwrap();
    Spi::run("SELECT pg_advisory_xact_lock(721600)").unwrap();
    let name = crate::capture::slot::slot_name();
    for _ in 0..3000 {
        let busy = Spi::get_one_with_args::<bool>(
            "SELECT active_pid IS NOT NULL AND active_pid <> pg_backend_pid() FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[name.as_str().into()],
        );
        if !matches!(busy, Ok(Some(true))) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the capture slot {name} stayed in use by another backend");
}

/// A pg_test's transaction never commits, so the sealer never reads its writes: this runs
/// `sql` (row changes of group `grp`) and appends the entry the sealer would make of them,
/// `ops` (a JSON array of operations), signed by the node identity and left for placement.
pub fn local_commit(grp: &str, sql: &str, ops: &str) {
    Spi::run(sql).unwrap();
    let group = crate::catalog::group::Group::find(grp).unwrap();
    let ops: Vec<serde_json::Value> = serde_json::from_str(ops).unwrap();
    let ops = ops.iter().map(|o| causal_core::payload::Op::from_value(o).unwrap()).collect();
    let author = crate::catalog::identity::author_named(crate::catalog::identity::NODE_IDENTITY).unwrap();
    crate::author::members::append_ops_as(&group, ops, false, &author, true).unwrap();
}

/// A group `shop` with a replicated `products (sku text PRIMARY KEY, name text NOT NULL,
/// price numeric(10,2))`.
pub fn shop_with_products() {
    capture_slot();
    Spi::run(
        "SELECT causal.create_group('shop'); \
         CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2)); \
         SELECT causal.replicate('shop', 'products');",
    )
    .unwrap();
}

/// The generic plan (EXPLAIN, as JSON text) of `sql` prepared as `name` with parameter
/// `types` and run with `args`, as a statement kept by `spi_util::run_prepared` is planned
/// once it goes generic. The statement stays prepared (DEALLOCATE `name` when done).
pub fn generic_plan(name: &str, types: &str, sql: &str, args: &str) -> String {
    Spi::run(&format!("SET LOCAL plan_cache_mode = force_generic_plan; PREPARE {name}({types}) AS {sql}")).unwrap();
    Spi::get_one::<pgrx::Json>(&format!("EXPLAIN (FORMAT JSON) EXECUTE {name}({args})")).unwrap().unwrap().0.to_string()
}
