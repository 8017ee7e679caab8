//! A row's values as a function of its metadata and the history it names.
//!
//! The engine keeps, for each row, the entry that inserted its incarnation and, per column
//! written since, the entry that wrote it last (`RowState`). That determines the values:
//!
//! - a tombstone has none;
//! - a column with a writer holds what that entry's last operation on the row did to it (a
//!   set gives the value, an unset NULL);
//! - any other column holds what the inserting entry's last insert of the row gave it, or,
//!   when that insert left it out, the column's default if the schema entry that added the
//!   column is not in the insert's history (docs/SEMANTICS.md, section 5), else NULL.
//!
//! So a store need not keep a copy of the values beside the metadata: it can derive them
//! from the payloads, and the property tests check that the values the engine computes as it
//! replays are exactly these.

use serde_json::{Map, Value};

use crate::dag::{Dag, DagStore};
use crate::hash::EntryHash;
use crate::payload::{Op, SignedPayload};
use crate::schema::TableSchema;

use super::{row_key, Authority, ReconcileError, RowKey, RowState};

/// The operations of `payload` on row `key` of `schema`'s table, in order.
fn ops_on<'p>(payload: &'p SignedPayload, schema: &TableSchema, key: &RowKey) -> Vec<&'p Op> {
    payload
        .ops
        .iter()
        .filter(|op| {
            let (t, k) = match op {
                Op::Insert { table, row } => (table, row),
                Op::Update { table, key, .. } | Op::Delete { table, key } => (table, key),
                _ => return false,
            };
            *t == schema.table && row_key(schema, k).as_ref() == Some(key)
        })
        .collect()
}

/// The values of `row` (key `key` of the table `schema` describes), derived from its metadata
/// and the payloads of the entries it names (`payload`), with the group's authority for the
/// columns' defaults.
pub fn derive_values<S: DagStore>(
    dag: &Dag<S>,
    auth: &Authority,
    schema: &TableSchema,
    key: &RowKey,
    row: &RowState,
    mut payload: impl FnMut(&EntryHash) -> Result<SignedPayload, ReconcileError>,
) -> Result<Map<String, Value>, ReconcileError> {
    if !row.is_live() {
        return Ok(Map::new());
    }
    let missing = |entry: &EntryHash, what: &str| {
        ReconcileError::Corrupt(format!("row {key} of {}: entry {} has no {what} of it", schema.table, entry.to_b64()))
    };
    let inserting = payload(&row.inserted_by)?;
    let inserted = ops_on(&inserting, schema, key)
        .into_iter()
        .rev()
        .find_map(|op| match op {
            Op::Insert { row, .. } => Some(row),
            _ => None,
        })
        .ok_or_else(|| missing(&row.inserted_by, "insert"))?;
    let mut values = inserted.clone();
    for c in &schema.columns {
        if values.contains_key(&c.name) || row.writers.contains_key(&c.name) {
            continue;
        }
        if let (Some(v), Some(added)) = (&c.default_value, auth.column_added_by(&schema.table, &c.name)) {
            if !dag.precedes(&added, &row.inserted_by)? {
                values.insert(c.name.clone(), v.clone());
            }
        }
    }
    // Each writer's payload once, for all the columns it wrote.
    let mut writers: Vec<&EntryHash> = row.writers.values().collect();
    writers.sort_unstable();
    writers.dedup();
    for w in writers {
        let written = payload(w)?;
        let ops = ops_on(&written, schema, key);
        for (c, _) in row.writers.iter().filter(|(_, x)| *x == w) {
            let mut last: Option<Option<&Value>> = None;
            for op in &ops {
                if let Op::Update { set, unset, .. } = op {
                    if let Some(v) = set.get(c) {
                        last = Some(Some(v));
                    } else if unset.contains(c) {
                        last = Some(None);
                    }
                }
            }
            match last {
                Some(Some(v)) => {
                    values.insert(c.clone(), v.clone());
                }
                Some(None) => {
                    values.remove(c);
                }
                None => return Err(missing(w, &format!("write of column {c}"))),
            }
        }
    }
    Ok(values)
}
