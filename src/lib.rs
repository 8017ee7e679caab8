//! pg_causal: the PostgreSQL edge. SQL functions, error reporting and (later) triggers,
//! storage over SPI and the background worker. The algorithms live in `causal-core`.

mod error;
mod functions;

::pgrx::pg_module_magic!(name, version);

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
