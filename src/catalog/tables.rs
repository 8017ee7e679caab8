//! The catalog of replicated tables (`causal.replicated_tables`): their schemas as this
//! database has them, the triggers that capture them, the lookup indexes replay reads them by,
//! and telling every backend when they change.

use std::cell::Cell;

use pgrx::prelude::*;

use causal_core::schema::TableSchema;
use causal_core::sql_expr::sql_literal;

use crate::catalog::group::Group;
use crate::error::CausalError;
use crate::pg::spi::get_opt;

thread_local! {
    static CATALOG_OID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// The oid of `causal.replicated_tables` if this backend has looked it up (`InvalidOid` if not).
pub fn known_catalog_oid() -> pg_sys::Oid {
    CATALOG_OID.with(Cell::get)
}

/// Tells every backend (at commit; this one at once) that replicated tables or their rules
/// changed. Whatever writes `causal.replicated_tables` or `causal.table_rules` calls it.
pub fn tables_changed() -> Result<(), CausalError> {
    let oid = catalog_oid()?;
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(oid) };
    Ok(())
}

/// The oid of `causal.replicated_tables`, whose relcache invalidations say that replicated
/// tables or rules changed.
pub fn catalog_oid() -> Result<pg_sys::Oid, CausalError> {
    let oid = CATALOG_OID.with(Cell::get);
    if oid != pg_sys::InvalidOid {
        return Ok(oid);
    }
    let oid = crate::pg::spi::get_prepared::<pg_sys::Oid>("SELECT 'causal.replicated_tables'::regclass::oid", &[])?
        .ok_or_else(|| CausalError::Corrupt("causal.replicated_tables is missing".into()))?;
    CATALOG_OID.with(|c| c.set(oid));
    Ok(oid)
}

/// Creates the locking and TRUNCATE triggers on a newly replicated table (the rule trigger
/// comes with its first rule, [`record_rule`]: a row trigger costs every row), and has its
/// updates and deletes log the whole old row (REPLICA IDENTITY FULL), from which capture
/// tells the columns an update changed.
pub fn install_triggers(relid: pg_sys::Oid) -> Result<(), CausalError> {
    let rel = get_opt::<String>("SELECT $1::regclass::text", &[relid.into()])?
        .ok_or_else(|| CausalError::Corrupt("relation vanished".into()))?;
    Spi::run(&format!(
        "ALTER TABLE {rel} REPLICA IDENTITY FULL; \
         CREATE TRIGGER causal_lock BEFORE INSERT OR UPDATE OR DELETE ON {rel} FOR EACH STATEMENT EXECUTE FUNCTION causal._lock_group(); \
         CREATE TRIGGER causal_no_truncate BEFORE TRUNCATE ON {rel} FOR EACH STATEMENT EXECUTE FUNCTION causal._refuse_truncate();"
    ))?;
    Ok(())
}

/// Records the rule of `operation` on the group's table `table` (replacing the one before),
/// and gives the table its row trigger that checks local writes against rules, if it has
/// none yet. The caller calls [`tables_changed`].
pub fn record_rule(group_id: &str, table: &str, operation: &str, rule: &str) -> Result<(), CausalError> {
    Spi::run_with_args(
        "INSERT INTO causal.table_rules (group_id, table_name, operation, rule) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (group_id, table_name, operation) DO UPDATE SET rule = EXCLUDED.rule",
        &[group_id.into(), table.into(), operation.into(), rule.into()],
    )?;
    let missing = get_opt::<String>(
        "SELECT t.relid::regclass::text FROM causal.replicated_tables t \
         WHERE t.group_id = $1 AND t.table_name = $2 AND t.relid IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g WHERE g.tgrelid = t.relid AND g.tgname = 'causal_rules')",
        &[group_id.into(), table.into()],
    )?;
    if let Some(rel) = missing {
        Spi::run(&format!(
            "CREATE TRIGGER causal_rules AFTER INSERT OR UPDATE OR DELETE ON {rel} FOR EACH ROW EXECUTE FUNCTION causal._check_rules()"
        ))?;
    }
    Ok(())
}

/// Removes the triggers from a table, and its REPLICA IDENTITY FULL (by oid, so never from another table of the
/// same name).
pub fn remove_triggers(relid: pg_sys::Oid) -> Result<(), CausalError> {
    let Some(rel) = get_opt::<String>("SELECT $1::regclass::text", &[relid.into()])? else { return Ok(()) };
    Spi::run(&format!(
        "ALTER TABLE {rel} REPLICA IDENTITY DEFAULT; \
         DROP TRIGGER IF EXISTS causal_rules ON {rel}; DROP TRIGGER IF EXISTS causal_no_truncate ON {rel}; \
         DROP TRIGGER IF EXISTS causal_lock ON {rel};"
    ))?;
    Ok(())
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

/// The name a table has in its group: `name` in schema public, else `schema.name`, quoted as
/// SQL would need it.
pub fn group_table_name(relid: pg_sys::Oid) -> Result<String, CausalError> {
    get_opt::<String>(
        "SELECT CASE WHEN n.nspname = 'public' THEN format('%I', c.relname) ELSE format('%I.%I', n.nspname, c.relname) END \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[relid.into()],
    )?
    .ok_or_else(|| CausalError::Corrupt(format!("relation {relid:?} vanished")))
}

/// Creates, for each set of columns the engine looks rows up by (a UNIQUE constraint's, a
/// foreign key's), a partial expression index on `causal.row_meta` covering this group's rows
/// of `schema`'s table. Called whenever a table's schema is recorded. (A GIN index over every
/// value of every row did this job before, and cost each written row about 3.5 µs.)
pub fn ensure_lookup_indexes(group: &Group, schema: &TableSchema) -> Result<(), CausalError> {
    let mut sets: Vec<Vec<String>> = schema
        .uniques
        .iter()
        .map(|u| u.columns.clone())
        .chain(schema.foreign_keys.iter().map(|f| f.columns.clone()))
        .map(|mut cols| {
            cols.sort();
            cols
        })
        .collect();
    sets.sort();
    sets.dedup();
    for cols in sets {
        let exprs: Vec<String> = cols.iter().map(|c| format!("(vals -> {})", sql_literal(c))).collect();
        let name = lookup_index_name(&group.id, &schema.table, &cols);
        pgrx::Spi::run(&format!(
            "CREATE INDEX IF NOT EXISTS {name} ON causal.row_meta ({}) WHERE grp = {} AND table_name = {}",
            exprs.join(", "),
            group.num,
            sql_literal(&schema.table)
        ))?;
    }
    Ok(())
}

/// A stable name for a lookup index, from a digest of group, table and columns.
fn lookup_index_name(group_id: &str, table: &str, cols: &[String]) -> String {
    let parts: Vec<&str> = [group_id, table].into_iter().chain(cols.iter().map(String::as_str)).collect();
    let digest = causal_core::HashAlgorithm::Blake3.digest(parts.join("\0").as_bytes());
    let hex: String = digest.as_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("row_meta_lookup_{hex}")
}

/// The group and recorded schema of the replicated table `relid`, if it is one. A read-only
/// select (logical decoding, which calls it, may not give its transaction an xid).
pub fn recorded(relid: pg_sys::Oid) -> Result<Option<(String, TableSchema)>, CausalError> {
    let row = pgrx::Spi::connect(|client| {
        let mut rows = client.select(
            "SELECT group_id, schema FROM causal.replicated_tables WHERE relid = $1",
            Some(1),
            &[relid.into()],
        )?;
        match rows.next() {
            None => Ok::<_, pgrx::spi::Error>(None),
            Some(r) => Ok(Some((r.get::<String>(1)?, r.get::<pgrx::JsonB>(2)?))),
        }
    })?;
    match row {
        Some((Some(g), Some(s))) => {
            Ok(Some((g, TableSchema::from_value(&s.0).map_err(|e| CausalError::Corrupt(e.to_string()))?)))
        }
        _ => Ok(None),
    }
}
