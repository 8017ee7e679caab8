//! pg_causal: the PostgreSQL edge. SQL functions, error reporting and (later) triggers,
//! storage over SPI and the background worker. The algorithms live in `causal-core`.

mod apply;
mod capture;
mod ddl;
mod error;
mod exchange;
mod functions;
mod group;
mod guc;
mod history;
mod identity;
mod members;
mod replay;
mod replicate;
mod rules;
mod spi_util;
mod store;
#[cfg(any(test, feature = "pg_test"))]
mod testing;
mod view;

::pgrx::pg_module_magic!(name, version);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::register();
    capture::register_callbacks();
}

pub use error::CausalError;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
