//! The catalog effects of imported entries: tables created or altered from recorded schemas,
//! rules, unreplications. Rows are written by replay (`crate::replay`).

use pgrx::prelude::*;

use causal_core::payload::Op;
use causal_core::schema::TableSchema;
use serde_json::Value;

use crate::catalog::group::Group;
use crate::error::CausalError;
use crate::pg::spi::get_opt;

fn local_schema(group: &Group, table: &str) -> Result<TableSchema, CausalError> {
    crate::catalog::tables::local_schema_by_name(&group.id, table)
}

/// Runs DDL built by `causal_core::ddl`, one statement per call, with `search_path` and
/// `standard_conforming_strings` pinned (the statements qualify and quote everything anyway).
fn run_ddl(statements: &[String]) -> Result<(), CausalError> {
    crate::pg::spi::with_setting("search_path", "pg_catalog", || {
        crate::pg::spi::with_setting("standard_conforming_strings", "on", || {
            statements.iter().try_for_each(|s| Spi::run(s).map_err(CausalError::from))
        })
    })???;
    Ok(())
}

/// This group's table `table`, if this database replicates it.
fn group_relid(group: &Group, table: &str) -> Result<Option<pg_sys::Oid>, CausalError> {
    Ok(get_opt::<pg_sys::Oid>(
        "SELECT relid FROM causal.replicated_tables WHERE group_id = $1 AND table_name = $2",
        &[group.id.clone().into(), table.into()],
    )?)
}

fn apply_schema(group: &Group, table: &str, schema_value: &Value) -> Result<(), CausalError> {
    let schema = TableSchema::from_value(schema_value).map_err(|e| CausalError::Corrupt(e.to_string()))?;
    // Import checked the entry (`causal_core::schema_check`); a stored one that fails now
    // was stored by an older version, and is not turned into DDL.
    causal_core::schema_check::check_schema(&schema)
        .map_err(|what| CausalError::UnsafeSchema { table: table.to_string(), what })?;
    let name = causal_core::sql_name::TableName::parse("table", table)
        .map_err(|e| CausalError::UnsafeSchema { table: table.to_string(), what: e.to_string() })?;
    let replicated_here = group_relid(group, table)?;
    let relid = match replicated_here {
        Some(relid) => {
            // A schema change: add the columns this table does not have yet.
            let local = local_schema(group, table)?;
            for c in schema.columns.iter().filter(|c| local.column(&c.name).is_none()) {
                let ddl = causal_core::ddl::add_column(table, c)
                    .map_err(|what| CausalError::UnsafeSchema { table: table.to_string(), what })?;
                // As the table's owner: its default is evaluated for every existing row.
                crate::pg::spi::as_owner_of(relid, || run_ddl(&ddl))??;
                if let Some(v) = &c.default_value {
                    fill_default(group, table, &c.name, v)?;
                }
            }
            relid
        }
        None => {
            let qualified = name.to_sql();
            if let Some(relid) = get_opt::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[qualified.clone().into()])? {
                // The member's own table (or one of another group) is never taken over.
                if let Some(other) = get_opt::<String>(
                    "SELECT g.name FROM causal.replicated_tables t JOIN causal.group_defs g USING (group_id) WHERE t.relid = $1",
                    &[relid.into()],
                )? {
                    return Err(CausalError::AlreadyReplicated { table: table.to_string(), group: other });
                }
                return Err(CausalError::TableExists(table.to_string()));
            }
            let ddl = causal_core::ddl::create_table(&schema)
                .map_err(|what| CausalError::UnsafeSchema { table: table.to_string(), what })?;
            crate::pg::spi::as_role(None, || run_ddl(&ddl))?;
            get_opt::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[qualified.into()])?
                .ok_or_else(|| CausalError::Corrupt(format!("created table {table} vanished")))?
        }
    };
    if replicated_here.is_some() {
        Spi::run_with_args(
            "UPDATE causal.replicated_tables SET schema = $3 WHERE group_id = $1 AND table_name = $2",
            &[group.id.clone().into(), table.into(), pgrx::JsonB(schema_value.clone()).into()],
        )?;
    } else {
        Spi::run_with_args(
            "INSERT INTO causal.replicated_tables (group_id, table_name, relid, schema) VALUES ($1, $2, $3, $4)",
            &[group.id.clone().into(), table.into(), relid.into(), pgrx::JsonB(schema_value.clone()).into()],
        )?;
        crate::catalog::tables::install_triggers(relid)?;
    }
    crate::catalog::tables::ensure_lookup_indexes(group, &schema)
}

fn apply_op(group: &Group, op: &Op) -> Result<(), CausalError> {
    match op {
        Op::Schema { table, schema } => apply_schema(group, table, schema)?,
        Op::Rule { table, operation, rule } => crate::catalog::tables::record_rule(&group.id, table, operation, rule)?,
        Op::Unreplicate { table } => {
            // Only this group's table: a name alone could reach a table of another group.
            if let Some(relid) = group_relid(group, table)? {
                crate::catalog::tables::remove_triggers(relid)?;
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
    crate::pg::spi::with_replica_role(|| catalog_ops.into_iter().try_for_each(|op| apply_op(group, op)))??;
    // Capture's cached view of the tables and rules (every backend's) is now stale.
    crate::catalog::tables::tables_changed()
}

/// Postgres fills an added column's default into the existing rows; the rows of
/// `causal.row_meta` that keep all their values get the same value, so both stay equal (those
/// that keep only the values lookups need derive it, `replay::derived`).
pub fn fill_default(group: &Group, table: &str, column: &str, value: &Value) -> Result<(), CausalError> {
    Spi::run_with_args(
        "UPDATE causal.row_meta SET vals = vals || jsonb_build_object($3::text, $4::jsonb) \
         WHERE grp = $1 AND table_name = $2 AND NOT meta ? 'd' AND NOT meta ? 'p' AND NOT vals ? $3",
        &[group.num.into(), table.into(), column.into(), pgrx::JsonB(value.clone()).into()],
    )?;
    Ok(())
}
