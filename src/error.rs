//! Errors at the SQL boundary. Every failure a user can cause is a `CausalError`, reported
//! with a SQLSTATE that fits it, a message that names the object, and a hint where one helps.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

use causal_core::hash::UnknownAlgorithm;
use causal_core::json::JsonError;

#[derive(Debug, thiserror::Error)]
pub enum CausalError {
    #[error(transparent)]
    UnknownAlgorithm(#[from] UnknownAlgorithm),
    #[error("value has no canonical form: {0}")]
    NotALiteral(#[from] JsonError),
}

impl CausalError {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            CausalError::UnknownAlgorithm(_) => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            CausalError::NotALiteral(_) => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        }
    }

    pub fn hint(&self) -> Option<&'static str> {
        match self {
            CausalError::UnknownAlgorithm(_) => Some("Use 'blake3' or 'sha-256'."),
            CausalError::NotALiteral(JsonError::Null { .. }) => {
                Some("Canonical JSON has no null; leave the key out or use a string.")
            }
            CausalError::NotALiteral(JsonError::NonFinite { .. }) => {
                Some("Numbers are IEEE-754 doubles; write very large or precise values as strings.")
            }
            CausalError::NotALiteral(JsonError::Syntax(_)) => None,
        }
    }

    /// Raises the error in Postgres. Does not return.
    pub fn report(self, function: &'static str) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), self.to_string(), function);
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR-level reports do not return")
    }
}

/// Unwraps a result at the SQL boundary, raising the error as a Postgres ERROR.
pub trait OrReport<T> {
    fn or_report(self, function: &'static str) -> T;
}

impl<T, E: Into<CausalError>> OrReport<T> for Result<T, E> {
    fn or_report(self, function: &'static str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.into().report(function),
        }
    }
}
