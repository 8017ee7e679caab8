//! The checks a schema entry must pass before any replica stores it: every name valid, every
//! expression in the language of [`crate::sql_expr`], every foreign key inside the group, and
//! a change of a table already replicated only adding columns (docs/SEMANTICS.md §3).
//!
//! The checks read only the entry and the group's schemas at the entry's position, so every
//! honest replica reaches the same answer about the same entry. What they let through is what
//! [`crate::ddl`] can turn into DDL that Postgres accepts on a database that does not hold
//! the table yet.

use std::collections::HashSet;

use crate::schema::{check_value, Column, ColumnType, TableSchema};
use crate::sql_expr::{self, Expr, Use};
use crate::sql_name::{check_ident, TableName};

/// Postgres's limit on a table's columns.
pub const MAX_COLUMNS: usize = 1600;

fn no_duplicates<'a>(what: &str, names: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
    let mut seen = HashSet::new();
    for n in names {
        if !seen.insert(n.as_str()) {
            return Err(format!("{what} {n:?} appears twice"));
        }
    }
    Ok(())
}

fn columns_exist(schema: &TableSchema, what: &str, cols: &[String]) -> Result<(), String> {
    if cols.is_empty() {
        return Err(format!("{what} names no column"));
    }
    no_duplicates(&format!("a column of {what}"), cols)?;
    match cols.iter().find(|c| schema.column(c).is_none()) {
        Some(c) => Err(format!("{what} names {c:?}, which is not a column of {}", schema.table)),
        None => Ok(()),
    }
}

/// Whether a foreign key column of type `a` may reference one of type `b` (Postgres needs an
/// equality operator between them).
fn comparable(a: &ColumnType, b: &ColumnType) -> bool {
    use ColumnType as T;
    let family = |t: &ColumnType| match t {
        T::Int2 | T::Int4 | T::Int8 => 1,
        T::Text | T::Varchar(_) => 2,
        T::Numeric { .. } => 3,
        T::Float4 | T::Float8 => 4,
        T::Timestamp => 5,
        T::Timestamptz => 6,
        T::Date => 7,
        T::Uuid => 8,
        T::Bool => 9,
        T::Bytea => 10,
        T::Jsonb => 11,
    };
    family(a) == family(b)
}

/// A column's default, parsed in the expression language (`None`: the column has none).
pub fn parse_default(table: &str, c: &Column) -> Result<Option<Expr>, String> {
    let Some(text) = &c.default else { return Ok(None) };
    sql_expr::parse(text, Use::Default)
        .map(Some)
        .map_err(|e| format!("default of column {:?} of {table} ({text}): {e}", c.name))
}

/// Whether a default draws a value where the row is written (the clock, a uuid, a sequence).
pub fn is_generator(e: &Expr) -> bool {
    fn walk(e: &Expr) -> bool {
        match e {
            Expr::SqlValue(_) | Expr::NextVal(_) => true,
            Expr::Call(f, args) => sql_expr::DEFAULT_GENERATORS.contains(f) || args.iter().any(walk),
            Expr::Cast(x, _) | Expr::Unary(_, x) | Expr::Not(x) | Expr::Is { expr: x, .. } => walk(x),
            Expr::Binary(_, a, b) | Expr::Quantified { left: a, array: b, .. } => walk(a) || walk(b),
            Expr::And(v) | Expr::Or(v) | Expr::Array(v) | Expr::Coalesce(v) => v.iter().any(walk),
            Expr::Case { whens, otherwise } => {
                whens.iter().any(|(c, v)| walk(c) || walk(v)) || otherwise.as_deref().is_some_and(walk)
            }
            Expr::Column(_) | Expr::Const(_) => false,
        }
    }
    walk(e)
}

/// Checks a table's schema on its own: names, keys, constraints and expressions.
pub fn check_schema(schema: &TableSchema) -> Result<(), String> {
    let table = &schema.table;
    TableName::parse("table", table).map_err(|e| e.to_string())?;
    if schema.columns.is_empty() || schema.columns.len() > MAX_COLUMNS {
        return Err(format!("{table} must have 1 to {MAX_COLUMNS} columns"));
    }
    for c in &schema.columns {
        check_ident("column", &c.name).map_err(|e| e.to_string())?;
        if matches!(c.name.as_str(), "tableoid" | "cmax" | "xmax" | "cmin" | "xmin" | "ctid") {
            return Err(format!("column {:?} of {table} has the name of a system column", c.name));
        }
        parse_default(table, c)?;
        if let Some(v) = &c.default_value {
            check_value(&c.ty, v).map_err(|e| format!("recorded default of column {:?} of {table}: {e}", c.name))?;
        }
    }
    no_duplicates("column", schema.columns.iter().map(|c| &c.name))?;
    columns_exist(schema, "the primary key", &schema.primary_key)?;
    let names: Vec<&String> = schema
        .uniques
        .iter()
        .map(|u| &u.name)
        .chain(schema.checks.iter().map(|c| &c.name))
        .chain(schema.foreign_keys.iter().map(|f| &f.name))
        .collect();
    for n in &names {
        check_ident("constraint", n).map_err(|e| e.to_string())?;
    }
    no_duplicates("constraint", names)?;
    for u in &schema.uniques {
        columns_exist(schema, &format!("unique constraint {:?}", u.name), &u.columns)?;
    }
    let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    for c in &schema.checks {
        sql_expr::parse(&c.expression, Use::Check { columns: &columns })
            .map_err(|e| format!("CHECK constraint {:?} of {table} ({}): {e}", c.name, c.expression))?;
    }
    for f in &schema.foreign_keys {
        columns_exist(schema, &format!("foreign key {:?}", f.name), &f.columns)?;
        TableName::parse("referenced table", &f.references).map_err(|e| e.to_string())?;
        if f.columns.len() != f.referenced_columns.len() {
            return Err(format!(
                "foreign key {:?} of {table} pairs {} columns with {}",
                f.name,
                f.columns.len(),
                f.referenced_columns.len()
            ));
        }
    }
    Ok(())
}

/// Checks a schema entry for `op_table` at its position: `previous` is the table's schema
/// there (if it is replicated), `table_at` gives any other table's.
pub fn check_schema_entry(
    op_table: &str,
    new: &TableSchema,
    previous: Option<&TableSchema>,
    table_at: &mut dyn FnMut(&str) -> Result<Option<TableSchema>, String>,
) -> Result<(), String> {
    if new.table != op_table {
        return Err(format!("the schema entry for {op_table} holds the schema of {}", new.table));
    }
    check_schema(new)?;
    for f in &new.foreign_keys {
        let target = if f.references == new.table { Some(new.clone()) } else { table_at(&f.references)? };
        let Some(target) = target else {
            return Err(format!(
                "foreign key {:?} of {} references {}, which is not a table of the group at this entry",
                f.name, new.table, f.references
            ));
        };
        columns_exist(&target, &format!("foreign key {:?}", f.name), &f.referenced_columns)?;
        let key_like = target.primary_key == f.referenced_columns
            || target.uniques.iter().any(|u| u.columns == f.referenced_columns);
        if !key_like {
            return Err(format!(
                "foreign key {:?} of {} references columns of {} that are not its primary key or a unique key",
                f.name, new.table, target.table
            ));
        }
        for (c, r) in f.columns.iter().zip(&f.referenced_columns) {
            let (Some(a), Some(b)) = (new.column(c), target.column(r)) else { continue };
            if !comparable(&a.ty, &b.ty) {
                return Err(format!(
                    "foreign key {:?} of {} pairs column {c} ({}) with {r} ({})",
                    f.name,
                    new.table,
                    a.ty.sql_name(),
                    b.ty.sql_name()
                ));
            }
        }
    }
    if let Some(old) = previous {
        check_additive(old, new)?;
    }
    Ok(())
}

/// A change of a replicated table may only append columns that are nullable or have a
/// constant default, whose value every replica fills in for rows written concurrently.
pub fn check_additive(old: &TableSchema, new: &TableSchema) -> Result<(), String> {
    let table = &new.table;
    let same =
        |a: &Column, b: &Column| a.name == b.name && a.ty == b.ty && a.not_null == b.not_null && a.default == b.default;
    if new.columns.len() < old.columns.len() || !old.columns.iter().zip(&new.columns).all(|(a, b)| same(a, b)) {
        return Err(format!(
            "the schema entry for {table} changes or drops existing columns; only added columns are allowed"
        ));
    }
    if new.primary_key != old.primary_key
        || new.uniques != old.uniques
        || new.checks != old.checks
        || new.foreign_keys != old.foreign_keys
    {
        return Err(format!(
            "the schema entry for {table} changes its keys or constraints; only added columns are allowed"
        ));
    }
    for c in &new.columns[old.columns.len()..] {
        let default = parse_default(table, c)?;
        if let Some(d) = &default {
            if is_generator(d) {
                return Err(format!(
                    "added column {:?} of {table} has a default that differs between replicas",
                    c.name
                ));
            }
            if c.default_value.is_none() {
                return Err(format!("added column {:?} of {table} has a default without its recorded value", c.name));
            }
        } else if c.not_null {
            return Err(format!("added column {:?} of {table} is NOT NULL without a default", c.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Check, ForeignKey, Unique};
    use serde_json::json;

    fn col(name: &str, ty: ColumnType) -> Column {
        Column { name: name.into(), ty, not_null: false, default: None, default_value: None }
    }

    fn products() -> TableSchema {
        TableSchema {
            table: "products".into(),
            columns: vec![
                col("sku", ColumnType::Text),
                col("price", ColumnType::Numeric { precision: Some(10), scale: Some(2) }),
            ],
            primary_key: vec!["sku".into()],
            uniques: vec![],
            checks: vec![Check { name: "products_price_check".into(), expression: "(price >= (0)::numeric)".into() }],
            foreign_keys: vec![],
        }
    }

    fn orders() -> TableSchema {
        TableSchema {
            table: "orders".into(),
            columns: vec![col("id", ColumnType::Int4), col("sku", ColumnType::Text)],
            primary_key: vec!["id".into()],
            uniques: vec![],
            checks: vec![],
            foreign_keys: vec![ForeignKey {
                name: "orders_sku_fkey".into(),
                columns: vec!["sku".into()],
                references: "products".into(),
                referenced_columns: vec!["sku".into()],
            }],
        }
    }

    fn none(_: &str) -> Result<Option<TableSchema>, String> {
        Ok(None)
    }

    #[test]
    fn an_ordinary_schema_passes() {
        check_schema_entry("products", &products(), None, &mut none).unwrap();
        let mut lookup = |t: &str| Ok((t == "products").then(products));
        check_schema_entry("orders", &orders(), None, &mut lookup).unwrap();
    }

    #[test]
    fn foreign_keys_stay_inside_the_group() {
        let err = check_schema_entry("orders", &orders(), None, &mut none).unwrap_err();
        assert!(err.contains("not a table of the group"), "{err}");
        let mut o = orders();
        o.foreign_keys[0].references = "causal.peer_addresses".into();
        assert!(check_schema_entry("orders", &o, None, &mut none).unwrap_err().contains("causal"));
        let mut o = orders();
        o.foreign_keys[0].referenced_columns = vec!["price".into()];
        let mut lookup = |t: &str| Ok((t == "products").then(products));
        assert!(check_schema_entry("orders", &o, None, &mut lookup).unwrap_err().contains("not its primary key"));
        let mut o = orders();
        o.columns[1].ty = ColumnType::Bool;
        assert!(check_schema_entry("orders", &o, None, &mut lookup).unwrap_err().contains("pairs column"));
    }

    #[test]
    fn only_additive_changes_pass() {
        let old = products();
        let mut retyped = products();
        retyped.columns[1].ty = ColumnType::Float8;
        assert!(check_additive(&old, &retyped).unwrap_err().contains("changes or drops"));
        let mut dropped = products();
        dropped.columns.pop();
        assert!(check_additive(&old, &dropped).is_err());
        let mut constrained = products();
        constrained.uniques.push(Unique { name: "u".into(), columns: vec!["price".into()] });
        assert!(check_additive(&old, &constrained).unwrap_err().contains("constraints"));
        let mut added = products();
        added.columns.push(col("note", ColumnType::Text));
        check_additive(&old, &added).unwrap();
        let mut c = col("stock", ColumnType::Int4);
        c.not_null = true;
        added.columns.push(c.clone());
        assert!(check_additive(&old, &added).unwrap_err().contains("NOT NULL without a default"));
        added.columns.pop();
        c.default = Some("0".into());
        c.default_value = Some(json!(0));
        added.columns.push(c);
        check_additive(&old, &added).unwrap();
        let mut clock = col("at", ColumnType::Timestamptz);
        clock.default = Some("now()".into());
        added.columns.push(clock);
        assert!(check_additive(&old, &added).unwrap_err().contains("differs between replicas"));
    }

    #[test]
    fn crafted_schemas_are_refused() {
        type Change = Box<dyn Fn(&mut TableSchema)>;
        let cases: Vec<(&str, Change)> = vec![
            ("table name", Box::new(|s| s.table = "products; DROP TABLE victim".into())),
            ("reserved schema", Box::new(|s| s.table = "causal.peer_addresses".into())),
            ("check text", Box::new(|s| s.checks[0].expression = "(true)); DROP TABLE victim; --".into())),
            (
                "check function",
                Box::new(|s| s.checks[0].expression = "(query_to_xml('x', true, true, '') IS NULL)".into()),
            ),
            ("default", Box::new(|s| s.columns[1].default = Some("pg_read_file('/etc/passwd')".into()))),
            ("duplicate column", Box::new(|s| s.columns.push(col("sku", ColumnType::Text)))),
            ("system column", Box::new(|s| s.columns.push(col("ctid", ColumnType::Text)))),
            ("long column", Box::new(|s| s.columns.push(col(&"c".repeat(64), ColumnType::Text)))),
            (
                "duplicate constraint",
                Box::new(|s| {
                    s.uniques.push(Unique { name: "products_price_check".into(), columns: vec!["price".into()] })
                }),
            ),
            (
                "bad default value",
                Box::new(|s| {
                    s.columns[1].default = Some("0".into());
                    s.columns[1].default_value = Some(json!("abc"));
                }),
            ),
        ];
        for (what, mutate) in cases {
            let mut s = products();
            mutate(&mut s);
            assert!(check_schema_entry(&s.table.clone(), &s, None, &mut none).is_err(), "{what} was accepted");
        }
        let s = products();
        assert!(check_schema_entry("orders", &s, None, &mut none)
            .unwrap_err()
            .contains("holds the schema of products"));
    }
}
