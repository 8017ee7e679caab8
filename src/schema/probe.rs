//! Asks this database's parser whether a received schema's expressions type-check and are
//! immutable, before the schema entry is stored: the expression language
//! (`causal_core::sql_expr`) keeps out everything with a side effect, but whether `a > b`
//! resolves, and to an immutable operator, depends on the column types, which only Postgres
//! knows. A schema that fails is rejected with its entry, on every replica alike, instead of
//! making the DDL fail later (which would stop every member's import of the group).
//!
//! Each expression is parsed and analysed as a query over a row of NULLs of the table's
//! column types (`SPI_prepare`, which neither plans nor runs it), in a subtransaction whose
//! errors are the answer.

use std::ffi::CString;

use pgrx::pg_sys;
use pgrx::prelude::*;

use causal_core::schema::TableSchema;
use causal_core::schema_check::{is_generator, parse_default};
use causal_core::sql_expr::{self, qualified_type, Use};
use causal_core::sql_name::quote_ident;

/// Parses and analyses `sql` without running it; `true` when it calls only immutable
/// functions.
fn analyse(sql: &str) -> Result<bool, String> {
    let c = CString::new(sql).map_err(|_| "expression with NUL".to_string())?;
    crate::pg::spi::catching(move || {
        Spi::connect(|_| {
            // SAFETY: inside an SPI connection; the plan and the lists it holds are read here
            // and freed before the connection ends.
            unsafe {
                let plan = pg_sys::SPI_prepare(c.as_ptr(), 0, std::ptr::null_mut());
                if plan.is_null() {
                    return false;
                }
                let sources = pg_sys::SPI_plan_get_plan_sources(plan);
                let mut immutable = true;
                for source in list_ptrs(sources) {
                    let source = source as *mut pg_sys::CachedPlanSource;
                    for query in list_ptrs((*source).query_list) {
                        if pg_sys::contain_mutable_functions(query as *mut pg_sys::Node) {
                            immutable = false;
                        }
                    }
                }
                pg_sys::SPI_freeplan(plan);
                immutable
            }
        })
    })
}

/// The pointers a `List` holds.
///
/// # Safety
/// `list` is null or a valid pointer list.
unsafe fn list_ptrs(list: *mut pg_sys::List) -> Vec<*mut std::ffi::c_void> {
    if list.is_null() {
        return Vec::new();
    }
    let n = (*list).length as usize;
    (0..n).map(|i| (*(*list).elements.add(i)).ptr_value).collect()
}

/// Checks every CHECK and default of a schema in this database: each must type-check over the
/// table's columns, CHECKs and constant defaults must be immutable.
pub fn probe_schema(schema: &TableSchema) -> Result<(), String> {
    let row: Vec<String> = schema
        .columns
        .iter()
        .map(|c| format!("CAST(NULL AS {}) AS {}", qualified_type(&c.ty), quote_ident(&c.name)))
        .collect();
    let from = format!("(SELECT {}) AS t", row.join(", "));
    let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    for c in &schema.checks {
        let e = sql_expr::parse(&c.expression, Use::Check { columns: &columns }).map_err(|e| e.to_string())?;
        let what = format!("CHECK constraint {:?} of {}", c.name, schema.table);
        match analyse(&format!("SELECT 1 FROM {from} WHERE {}", e.to_sql())) {
            Ok(true) => {}
            Ok(false) => return Err(format!("{what} is not immutable here ({})", c.expression)),
            Err(why) => return Err(format!("{what} does not type-check: {why}")),
        }
    }
    for c in &schema.columns {
        let Some(e) = parse_default(&schema.table, c)? else { continue };
        let what = format!("the default of column {:?} of {}", c.name, schema.table);
        match analyse(&format!("SELECT CAST({} AS {})", e.to_sql(), qualified_type(&c.ty))) {
            Ok(immutable) if immutable || is_generator(&e) => {}
            Ok(_) => return Err(format!("{what} is not immutable here ({})", c.default.as_deref().unwrap_or(""))),
            Err(why) => return Err(format!("{what} does not type-check: {why}")),
        }
    }
    Ok(())
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use causal_core::schema::{Check, Column, ColumnType, TableSchema};
    use pgrx::prelude::*;

    fn table(check: &str, default: Option<&str>) -> TableSchema {
        TableSchema {
            table: "t".into(),
            columns: vec![
                Column { name: "id".into(), ty: ColumnType::Int4, not_null: true, default: None, default_value: None },
                Column {
                    name: "ts".into(),
                    ty: ColumnType::Timestamptz,
                    not_null: false,
                    default: default.map(Into::into),
                    default_value: None,
                },
                Column {
                    name: "name".into(),
                    ty: ColumnType::Text,
                    not_null: false,
                    default: None,
                    default_value: None,
                },
            ],
            primary_key: vec!["id".into()],
            uniques: vec![],
            checks: vec![Check { name: "c".into(), expression: check.into() }],
            foreign_keys: vec![],
        }
    }

    #[pg_test]
    fn expressions_are_checked_without_being_run() {
        assert_eq!(super::probe_schema(&table("(id > 0)", Some("now()"))), Ok(()));
        assert_eq!(super::probe_schema(&table("(length(name) < (1 / 0))", None)), Ok(()));
        // A comparison that does not resolve, and one that resolves to a stable operator.
        let e = super::probe_schema(&table("(name > 5)", None)).unwrap_err();
        assert!(e.contains("does not type-check") && e.contains("operator does not exist"), "{e}");
        let e = super::probe_schema(&table("(ts > '2026-01-01'::date)", None)).unwrap_err();
        assert!(e.contains("not immutable"), "{e}");
        // Still in the same transaction, nothing was left behind.
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM pg_class WHERE relname = 't'").unwrap(), Some(0));
    }
}
