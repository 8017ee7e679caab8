//! Moving history between databases without a network, below the SQL API (`api/exchange.rs`):
//! writing bundles, and reading, validating, storing and placing imported ones. Uses capture
//! (to seal and lock before an import), replay, schema, author, catalog and pg.
//!
//! - [`export`]: a group's history as a bundle.
//! - [`validate`]: checks of each imported entry against history at its position.
//! - [`import`]: reading a bundle, storing the valid entries, placing them.

mod export;
mod import;
mod validate;

pub use export::export_bundle;
pub use import::import_bundle;
