//! Sealing what the WAL no longer has. When the capture slot is created again past the sealed
//! position (a standby promoted after a failover has none on PostgreSQL 15, or the slot was
//! dropped by hand), the transactions committed in between are in the tables and will never be
//! decoded. Their net effect is the difference between each replicated table and its group's
//! view at the frontier; it is sealed as one entry per group, authored by the node identity,
//! so the group receives it and the tables equal the view again.
//!
//! The difference is exact only if no write to a replicated table commits between the table
//! scan's snapshot and the new slot's start: writers refuse while the slot is missing and a
//! slot existed before ([`super::slot::ensure`]), the snapshot is taken before the slot is
//! created, and the sealer's lock keeps other sealers from sealing commits after it meanwhile.

use std::collections::BTreeMap;

use pgrx::pg_sys;
use serde_json::{Map, Value};

use causal_core::reconcile::{row_key, RowKey};
use causal_core::schema::TableSchema;

use super::encode::{Codec, RowOp};
use crate::error::CausalError;
use crate::pg::spi::run_prepared;

/// The most rows a recapture seals (they go into one entry per group).
const MAX_RECAPTURED_ROWS: usize = super::trigger::MAX_EXISTING_ROWS as usize;

/// Seals the difference between every replicated table, as `snapshot` sees it, and its
/// group's view at the frontier, as entries of the node identity. Returns how many rows
/// differed.
pub fn seal_from_tables(snapshot: pg_sys::Snapshot) -> Result<u64, CausalError> {
    let tables = run_prepared(
        "SELECT relid, group_id, schema FROM causal.replicated_tables ORDER BY group_id, relid",
        &[],
        false,
        |rows| {
            rows.map(|r| Ok((r.get::<pg_sys::Oid>(1)?, r.get::<String>(2)?, r.get::<pgrx::JsonB>(3)?)))
                .collect::<Result<Vec<_>, pgrx::spi::Error>>()
        },
    )?;
    let mut groups: BTreeMap<String, Vec<(pg_sys::Oid, TableSchema)>> = BTreeMap::new();
    for (relid, group_id, schema) in tables {
        let (Some(relid), Some(group_id), Some(schema)) = (relid, group_id, schema) else { continue };
        let schema = TableSchema::from_value(&schema.0).map_err(|e| CausalError::Corrupt(e.to_string()))?;
        groups.entry(group_id).or_default().push((relid, schema));
    }
    let author = crate::catalog::identity::author_named(crate::catalog::identity::NODE_IDENTITY)?;
    let mut total = 0u64;
    for (group_id, tables) in groups {
        let (ops, rows) = group_difference(&group_id, tables, snapshot)?;
        if ops.is_empty() {
            continue;
        }
        total += rows as u64;
        let group = crate::catalog::group::Group::find(&group_id)?;
        let (texts, meta) = super::seal::texts_of(ops)?;
        crate::author::members::append_sealed(&group, texts, meta, &author)?;
    }
    Ok(total)
}

/// The operations that turn the group's view into its tables (inserts and updates with the
/// tables a foreign key references first, then deletes in the opposite order), and how many
/// rows they change.
fn group_difference(
    group_id: &str,
    tables: Vec<(pg_sys::Oid, TableSchema)>,
    snapshot: pg_sys::Snapshot,
) -> Result<(Vec<RowOp>, usize), CausalError> {
    let mut writes = Vec::new();
    let mut deletes = Vec::new();
    let mut rows = 0usize;
    for (relid, schema) in referenced_first(tables) {
        let (w, d) = table_difference(group_id, relid, schema, snapshot, &mut rows)?;
        writes.extend(w);
        deletes.push(d);
    }
    writes.extend(deletes.into_iter().rev().flatten());
    Ok((writes, rows))
}

/// The tables in an order where each comes after those its foreign keys reference (within
/// the group; a cycle keeps the order it was given).
fn referenced_first(mut tables: Vec<(pg_sys::Oid, TableSchema)>) -> Vec<(pg_sys::Oid, TableSchema)> {
    let mut ordered: Vec<(pg_sys::Oid, TableSchema)> = Vec::with_capacity(tables.len());
    while !tables.is_empty() {
        let ready = tables.iter().position(|(_, s)| {
            s.foreign_keys.iter().all(|fk| {
                fk.references == s.table
                    || ordered.iter().any(|(_, o)| o.table == fk.references)
                    || !tables.iter().any(|(_, t)| t.table == fk.references)
            })
        });
        ordered.push(tables.remove(ready.unwrap_or(0)));
    }
    ordered
}

/// One table's inserts and updates, and its deletes.
fn table_difference(
    group_id: &str,
    relid: pg_sys::Oid,
    schema: TableSchema,
    snapshot: pg_sys::Snapshot,
    rows: &mut usize,
) -> Result<(Vec<RowOp>, Vec<RowOp>), CausalError> {
    let table = schema.table.clone();
    let mut view: BTreeMap<RowKey, Map<String, Value>> = crate::replay::frontier::frontier_view(group_id, &table)?;
    let codec = Codec::new(schema);
    let mut writes = Vec::new();
    let too_many = |table: &str| CausalError::Unsupported {
        table: table.to_string(),
        what: format!("more than {MAX_RECAPTURED_ROWS} of its rows differ from the group's view"),
    };
    crate::pg::scan::each_row(relid, Some(snapshot), |tuple| {
        let row = codec.row(tuple, None)?;
        let key = row_key(&codec.schema, &row)
            .ok_or_else(|| CausalError::Corrupt(format!("a row of {table} without its primary key")))?;
        let ops = match view.remove(&key) {
            None => vec![RowOp::Decoded(causal_core::payload::Op::Insert { table: table.clone(), row })],
            Some(old) if old == row => Vec::new(),
            Some(old) => codec.update_ops(old, row),
        };
        *rows += usize::from(!ops.is_empty());
        if *rows > MAX_RECAPTURED_ROWS {
            return Err(too_many(&table));
        }
        writes.extend(ops);
        Ok(())
    })?;
    *rows += view.len();
    if *rows > MAX_RECAPTURED_ROWS {
        return Err(too_many(&table));
    }
    let deletes = view.values().map(|old| codec.delete_op(old)).collect();
    Ok((writes, deletes))
}
