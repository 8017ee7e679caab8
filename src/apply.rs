//! The catalog effects of imported entries: tables created or altered from recorded schemas,
//! rules, unreplications. Rows are written by replay (`crate::replay`).

use pgrx::prelude::*;

use causal_core::payload::Op;
use causal_core::schema::TableSchema;
use serde_json::Value;

use crate::error::CausalError;
use crate::group::Group;
use crate::rules::quote_ident;
use crate::spi_util::get_opt;

fn local_schema(group: &Group, table: &str) -> Result<TableSchema, CausalError> {
    local_schema_by_name(&group.id, table)
}

/// The DDL that creates a table with a recorded schema.
fn create_table_sql(s: &TableSchema) -> String {
    let cols = |c: &[String]| c.iter().map(|x| quote_ident(x)).collect::<Vec<_>>().join(", ");
    let mut parts: Vec<String> = s
        .columns
        .iter()
        .map(|c| {
            let mut d = format!("{} {}", quote_ident(&c.name), c.ty.sql_name());
            if c.not_null {
                d.push_str(" NOT NULL");
            }
            if let Some(def) = &c.default {
                d.push_str(&format!(" DEFAULT {def}"));
            }
            d
        })
        .collect();
    parts.push(format!("PRIMARY KEY ({})", cols(&s.primary_key)));
    for u in &s.uniques {
        parts.push(format!("CONSTRAINT {} UNIQUE ({})", quote_ident(&u.name), cols(&u.columns)));
    }
    for c in &s.checks {
        parts.push(format!("CONSTRAINT {} CHECK {}", quote_ident(&c.name), c.expression));
    }
    for f in &s.foreign_keys {
        parts.push(format!(
            "CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({})",
            quote_ident(&f.name),
            cols(&f.columns),
            f.references,
            cols(&f.referenced_columns)
        ));
    }
    format!("CREATE TABLE {} ({})", s.table, parts.join(", "))
}

/// Sequences that defaults draw from (`nextval('name'::regclass)`), so a created table's
/// defaults work here too.
fn sequences_of(s: &TableSchema) -> Vec<String> {
    s.columns
        .iter()
        .filter_map(|c| c.default.as_deref())
        .filter_map(|d| {
            d.strip_prefix("nextval('")?.split_once("'::regclass)").map(|(name, _)| name.replace("''", "'"))
        })
        .collect()
}

fn apply_schema(group: &Group, table: &str, schema_value: &Value) -> Result<(), CausalError> {
    let schema = TableSchema::from_value(schema_value).map_err(|e| CausalError::Corrupt(e.to_string()))?;
    let relid = get_opt::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[table.into()])?;
    let replicated_here = get_opt::<bool>(
        "SELECT true FROM causal.replicated_tables WHERE group_id = $1 AND table_name = $2",
        &[group.id.clone().into(), table.into()],
    )?
    .is_some();
    let relid = match relid {
        None => {
            for seq in sequences_of(&schema) {
                Spi::run(&format!("CREATE SEQUENCE IF NOT EXISTS {seq}"))?;
            }
            Spi::run(&create_table_sql(&schema))?;
            get_opt::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[table.into()])?
                .ok_or_else(|| CausalError::Corrupt(format!("created table {table} vanished")))?
        }
        Some(relid) if replicated_here => {
            // A schema change: add the columns this table does not have yet.
            let local = local_schema(group, table)?;
            for c in schema.columns.iter().filter(|c| local.column(&c.name).is_none()) {
                let mut d = format!("ALTER TABLE {table} ADD COLUMN {} {}", quote_ident(&c.name), c.ty.sql_name());
                if let Some(def) = &c.default {
                    d.push_str(&format!(" DEFAULT {def}"));
                }
                if c.not_null {
                    d.push_str(" NOT NULL");
                }
                Spi::run(&d)?;
                if let Some(v) = &c.default_value {
                    fill_default(group, table, &c.name, v)?;
                }
            }
            relid
        }
        Some(relid) => {
            let mut existing = crate::replicate::derive_schema(group, relid)?;
            let mut expected = schema.clone();
            for c in existing.columns.iter_mut().chain(expected.columns.iter_mut()) {
                c.default_value = None;
            }
            if existing != expected {
                return Err(CausalError::TableMismatch(table.to_string()));
            }
            // The group's history defines the table's rows; rows it already holds would stay
            // here alone, outside the group's view.
            let rel = get_opt::<String>("SELECT $1::regclass::text", &[relid.into()])?.unwrap_or_default();
            if get_opt::<bool>(&format!("SELECT true FROM {rel} LIMIT 1"), &[])?.is_some() {
                return Err(CausalError::TableHasRows(table.to_string()));
            }
            relid
        }
    };
    if replicated_here {
        Spi::run_with_args(
            "UPDATE causal.replicated_tables SET schema = $3 WHERE group_id = $1 AND table_name = $2",
            &[group.id.clone().into(), table.into(), pgrx::JsonB(schema_value.clone()).into()],
        )?;
    } else {
        Spi::run_with_args(
            "INSERT INTO causal.replicated_tables (group_id, table_name, relid, schema) VALUES ($1, $2, $3, $4)",
            &[group.id.clone().into(), table.into(), relid.into(), pgrx::JsonB(schema_value.clone()).into()],
        )?;
        crate::capture::install_triggers(relid)?;
    }
    crate::replay::ensure_lookup_indexes(group, &schema)
}

fn apply_op(group: &Group, op: &Op) -> Result<(), CausalError> {
    match op {
        Op::Schema { table, schema } => apply_schema(group, table, schema)?,
        Op::Rule { table, operation, rule } => Spi::run_with_args(
            "INSERT INTO causal.table_rules (group_id, table_name, operation, rule) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (group_id, table_name, operation) DO UPDATE SET rule = EXCLUDED.rule",
            &[group.id.clone().into(), table.clone().into(), operation.clone().into(), rule.clone().into()],
        )?,
        Op::Unreplicate { table } => {
            if let Some(rel) = get_opt::<String>("SELECT to_regclass($1)::text", &[table.clone().into()])? {
                Spi::run(&format!("DROP TRIGGER IF EXISTS causal_capture ON {rel}; DROP TRIGGER IF EXISTS causal_no_truncate ON {rel}; DROP TRIGGER IF EXISTS causal_lock ON {rel};"))?;
            }
            Spi::run_with_args(
                "DELETE FROM causal.replicated_tables WHERE group_id = $1 AND table_name = $2",
                &[group.id.clone().into(), table.clone().into()],
            )?;
        }
        // Membership lives in the DAG; rows are written by replay (crate::replay).
        Op::AddMember { .. } | Op::RemoveMember { .. } | Op::Insert { .. } | Op::Update { .. } | Op::Delete { .. } => {}
    }
    Ok(())
}

/// Applies the catalog effects of imported entries, in order: tables created or altered from
/// recorded schemas, rules, unreplications. Rows are replayed afterwards by the engine.
///
/// Runs with `session_replication_role = replica`, so the extension's own event triggers do
/// not record these ALTERs as new local schema entries.
pub fn apply_catalog(group: &Group, entries: &[causal_core::reconcile::NewEntry]) -> Result<(), CausalError> {
    let catalog_ops: Vec<&Op> = entries
        .iter()
        .flat_map(|(_, _, p)| p.ops.iter())
        .filter(|op| matches!(op, Op::Schema { .. } | Op::Rule { .. } | Op::Unreplicate { .. }))
        .collect();
    if catalog_ops.is_empty() {
        return Ok(());
    }
    crate::spi_util::with_replica_role(|| catalog_ops.into_iter().try_for_each(|op| apply_op(group, op)))??;
    // Capture's cached view of the tables and rules (every backend's) is now stale.
    crate::capture::tables_changed()
}

/// The schema of a replicated table as this database has it, by the group's name for it.
pub fn local_schema_by_name(group_id: &str, table: &str) -> Result<TableSchema, CausalError> {
    let s = get_opt::<pgrx::JsonB>(
        "SELECT schema FROM causal.replicated_tables WHERE group_id = $1 AND table_name = $2",
        &[group_id.into(), table.into()],
    )?
    .ok_or_else(|| CausalError::NotReplicated(table.to_string()))?;
    TableSchema::from_value(&s.0).map_err(|e| CausalError::Corrupt(e.to_string()))
}

/// Postgres fills an added column's default into the existing rows; replay's copy of the rows
/// (`causal.row_meta`) gets the same value, so both stay equal.
pub fn fill_default(group: &Group, table: &str, column: &str, value: &Value) -> Result<(), CausalError> {
    Spi::run_with_args(
        "UPDATE causal.row_meta SET vals = vals || jsonb_build_object($3::text, $4::jsonb) \
         WHERE grp = $1 AND table_name = $2 AND NOT meta ? 'd' AND NOT vals ? $3",
        &[group.num.into(), table.into(), column.into(), pgrx::JsonB(value.clone()).into()],
    )?;
    Ok(())
}
