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

/// A group `shop` with a replicated `products (sku text PRIMARY KEY, name text NOT NULL,
/// price numeric(10,2))`.
pub fn shop_with_products() {
    Spi::run(
        "SELECT causal.create_group('shop'); \
         CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2)); \
         SELECT causal.replicate('shop', 'products');",
    )
    .unwrap();
}
