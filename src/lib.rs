//! pg_causal: the PostgreSQL edge. SQL functions, error reporting, capture triggers, storage
//! over SPI and the sync background worker. The algorithms live in `causal-core`; the network
//! edge in `causal-sync`.

mod apply;
mod capture;
mod ddl;
mod direct;
mod error;
mod exchange;
mod functions;
mod group;
mod group_lock;
mod guc;
mod history;
mod identity;
mod members;
mod notify;
mod placement;
mod replay;
mod replicate;
mod rule_check;
mod rules;
mod schema_probe;
mod spi_util;
mod store;
mod sync;
mod tables;
#[cfg(any(test, feature = "pg_test"))]
mod testing;
mod view;
mod worker;
mod xact;

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
    members::register_capture(capture::lock_group_exclusive, || capture::slot::ensure(false));
    xact::subscribe(group::forget);
    xact::subscribe(members::forget);
    xact::subscribe(replay::forget);
    xact::subscribe(identity::forget_keys);
    // Undone work may have granted what was found allowed in it: forget every grant found.
    xact::subscribe(|_| identity::forget_grants());
    xact::subscribe(store::forget);
    identity::register_callbacks();
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
