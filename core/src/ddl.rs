//! The DDL a replica runs for a group's tables, built from checked structures
//! ([`crate::schema_check`]), one statement per string. Every name is quoted and qualified,
//! every type, function and operator is `pg_catalog`'s, and expressions are written from their
//! parsed trees ([`crate::sql_expr`]), never pasted from an entry.

use serde_json::Value;

use crate::schema::{Column, ColumnType, TableSchema};
use crate::schema_check::parse_default;
use crate::sql_expr::{self, qualified_type, sql_literal, Use};
use crate::sql_name::{quote_ident, TableName};

fn table_name(text: &str) -> Result<TableName, String> {
    TableName::parse("table", text).map_err(|e| e.to_string())
}

fn column_list(cols: &[String]) -> String {
    cols.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
}

/// A column's definition, without its default.
fn column_def(c: &Column) -> String {
    format!("{} {}{}", quote_ident(&c.name), qualified_type(&c.ty), if c.not_null { " NOT NULL" } else { "" })
}

/// The statements that create a table from a checked schema: its schema if it is not
/// `public`, the sequences its defaults draw from, then the table with its constraints.
pub fn create_table(s: &TableSchema) -> Result<Vec<String>, String> {
    let name = table_name(&s.table)?;
    let mut statements = Vec::new();
    if name.schema != "public" {
        statements.push(format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&name.schema)));
    }
    let mut parts = Vec::new();
    for c in &s.columns {
        let mut d = column_def(c);
        if let Some(e) = parse_default(&s.table, c)? {
            if let Some(seq) = e.sequence() {
                statements.push(format!("CREATE SEQUENCE IF NOT EXISTS {}", seq.to_sql()));
            }
            d.push_str(&format!(" DEFAULT {}", e.to_sql()));
        }
        parts.push(d);
    }
    parts.push(format!("PRIMARY KEY ({})", column_list(&s.primary_key)));
    for u in &s.uniques {
        parts.push(format!("CONSTRAINT {} UNIQUE ({})", quote_ident(&u.name), column_list(&u.columns)));
    }
    let columns: Vec<&str> = s.columns.iter().map(|c| c.name.as_str()).collect();
    for c in &s.checks {
        let e = sql_expr::parse(&c.expression, Use::Check { columns: &columns })
            .map_err(|e| format!("CHECK constraint {}: {e}", c.name))?;
        parts.push(format!("CONSTRAINT {} CHECK ({})", quote_ident(&c.name), e.to_sql()));
    }
    for f in &s.foreign_keys {
        parts.push(format!(
            "CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({})",
            quote_ident(&f.name),
            column_list(&f.columns),
            table_name(&f.references)?.to_sql(),
            column_list(&f.referenced_columns)
        ));
    }
    statements.push(format!("CREATE TABLE {} ({})", name.to_sql(), parts.join(", ")));
    Ok(statements)
}

/// An encoded value as a typed SQL constant (for the types whose encoding is their text).
pub fn value_constant(ty: &ColumnType, v: &Value) -> Result<String, String> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => return Err(format!("{other} is not a constant of type {}", ty.sql_name())),
    };
    match ty {
        ColumnType::Bytea | ColumnType::Jsonb | ColumnType::Timestamp | ColumnType::Timestamptz => {
            Err(format!("a default of type {} is not filled in by replay", ty.sql_name()))
        }
        _ => Ok(format!("CAST({} AS {})", sql_literal(&text), qualified_type(ty))),
    }
}

/// The statements that add a column to a replicated table. Existing rows get the recorded
/// default value, as a constant (nothing is evaluated per row); new local rows get the default
/// expression.
pub fn add_column(table: &str, c: &Column) -> Result<Vec<String>, String> {
    let name = table_name(table)?.to_sql();
    let default = parse_default(table, c)?;
    let mut first = format!("ALTER TABLE {name} ADD COLUMN {}", column_def(c));
    let mut statements = Vec::new();
    match (&default, &c.default_value) {
        (Some(e), Some(v)) => {
            first.push_str(&format!(" DEFAULT {}", value_constant(&c.ty, v)?));
            statements.push(first);
            statements.push(format!(
                "ALTER TABLE {name} ALTER COLUMN {} SET DEFAULT {}",
                quote_ident(&c.name),
                e.to_sql()
            ));
        }
        (None, None) if !c.not_null => statements.push(first),
        _ => return Err(format!("added column {} of {table} has no constant default to fill in", c.name)),
    }
    Ok(statements)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Check, ForeignKey, Unique};
    use serde_json::json;

    fn col(name: &str, ty: ColumnType) -> Column {
        Column { name: name.into(), ty, not_null: false, default: None, default_value: None }
    }

    #[test]
    fn create_table_quotes_and_qualifies_everything() {
        let mut id = col("id", ColumnType::Int8);
        id.not_null = true;
        id.default = Some("nextval('app.\"Items_id_seq\"'::regclass)".into());
        let s = TableSchema {
            table: "app.\"Items\"".into(),
            columns: vec![id, col("name", ColumnType::Varchar(Some(20))), col("parent", ColumnType::Int8)],
            primary_key: vec!["id".into()],
            uniques: vec![Unique { name: "items_name_key".into(), columns: vec!["name".into()] }],
            checks: vec![Check { name: "c".into(), expression: "(length((name)::text) > 0)".into() }],
            foreign_keys: vec![ForeignKey {
                name: "f".into(),
                columns: vec!["parent".into()],
                references: "app.\"Items\"".into(),
                referenced_columns: vec!["id".into()],
            }],
        };
        assert_eq!(
            create_table(&s).unwrap(),
            vec![
                "CREATE SCHEMA IF NOT EXISTS \"app\"".to_string(),
                "CREATE SEQUENCE IF NOT EXISTS \"app\".\"Items_id_seq\"".to_string(),
                "CREATE TABLE \"app\".\"Items\" (\"id\" pg_catalog.int8 NOT NULL DEFAULT \
                 pg_catalog.nextval(CAST('\"app\".\"Items_id_seq\"' AS pg_catalog.regclass)), \
                 \"name\" pg_catalog.varchar(20), \"parent\" pg_catalog.int8, PRIMARY KEY (\"id\"), \
                 CONSTRAINT \"items_name_key\" UNIQUE (\"name\"), CONSTRAINT \"c\" CHECK \
                 ((pg_catalog.length(CAST(\"name\" AS pg_catalog.text)) OPERATOR(pg_catalog.>) 0)), \
                 CONSTRAINT \"f\" FOREIGN KEY (\"parent\") REFERENCES \"app\".\"Items\" (\"id\"))"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn crafted_text_never_reaches_the_ddl() {
        let mut s = TableSchema {
            table: "t".into(),
            columns: vec![col("id", ColumnType::Int4)],
            primary_key: vec!["id".into()],
            uniques: vec![],
            checks: vec![Check { name: "x".into(), expression: "(true)); DROP TABLE victim; --".into() }],
            foreign_keys: vec![],
        };
        assert!(create_table(&s).is_err());
        s.checks.clear();
        s.table = "t; DROP TABLE victim".into();
        assert!(create_table(&s).is_err());
    }

    #[test]
    fn added_columns_fill_existing_rows_with_a_constant() {
        let mut c = col("stock", ColumnType::Int4);
        c.not_null = true;
        c.default = Some("(1 + 1)".into());
        c.default_value = Some(json!(2));
        assert_eq!(
            add_column("products", &c).unwrap(),
            vec![
                "ALTER TABLE \"public\".\"products\" ADD COLUMN \"stock\" pg_catalog.int4 NOT NULL DEFAULT CAST('2' AS pg_catalog.int4)",
                "ALTER TABLE \"public\".\"products\" ALTER COLUMN \"stock\" SET DEFAULT (1 OPERATOR(pg_catalog.+) 1)",
            ]
        );
        c.default_value = None;
        assert!(add_column("products", &c).is_err());
    }
}
