//! Small SPI helpers.

use pgrx::datum::{DatumWithOid, FromDatum, IntoDatum};
use pgrx::spi::{self, Spi};

/// The first column of the first row, or `None` when there is no row or it is NULL.
pub fn get_opt<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Result<Option<T>, spi::Error> {
    match Spi::get_one_with_args::<T>(sql, args) {
        Err(spi::Error::InvalidPosition) => Ok(None),
        other => other,
    }
}
