//! pg_causal: the PostgreSQL edge. SQL functions, error reporting, capture from the WAL,
//! storage over SPI and the sync background worker, in layers (below). The algorithms live in `causal-core`; the network
//! edge in `causal-sync`.

// The layers, from the bottom: each imports only those above it in this list
// (tests/it/layers.rs checks it).
mod api;
mod author;
mod capture;
mod catalog;
mod error;
mod exchange;
mod guc;
mod pg;
mod replay;
mod schema;
#[cfg(any(test, feature = "pg_test"))]
mod testing;
mod worker;

::pgrx::pg_module_magic!(name, version);

/// Rust's allocations (decoded entries, the engine's maps) use mimalloc: an import allocates
/// and frees millions of small objects, where glibc's allocator spent a tenth of the time.
/// Postgres's own memory (palloc) is untouched.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::register();
    capture::register_callbacks();
    author::members::register_capture(capture::lock_group_exclusive, || capture::slot::ensure(false));
    pg::xact::subscribe(catalog::group::forget);
    pg::xact::subscribe(author::members::forget);
    pg::xact::subscribe(replay::forget);
    pg::xact::subscribe(catalog::identity::forget_keys);
    // Undone work may have granted what was found allowed in it: forget every grant found.
    pg::xact::subscribe(|_| catalog::identity::forget_grants());
    pg::xact::subscribe(catalog::store::forget);
    // Undone work may have sealed what a kept decoding context has read past.
    pg::xact::subscribe(capture::decode::forget);
    // Undone work may have created or dropped what the catalog's shape was found to be.
    pg::xact::subscribe(|_| catalog::shape::forget());
    catalog::identity::register_callbacks();
    catalog::shape::register_callbacks();
    pg::shmem::init();
    worker::register();
}

pub use error::CausalError;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["wal_level = logical", "output_plugin_libraries = 'pgoutput, test_decoding, pg_causal'"]
    }
}
