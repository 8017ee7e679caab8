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

use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::{Map, Value};

use crate::dag::{Dag, DagStore};
use crate::hash::EntryHash;
use crate::payload::{Op, SignedPayload};
use crate::schema::TableSchema;

use super::{row_key, Authority, ReconcileError, RowKey, RowState};

/// An entry's payload with its row operations found by table and key, decoded once for all
/// the rows that name the entry (a bulk entry is named by each of its rows).
pub struct PayloadRows {
    payload: SignedPayload,
    by_row: crate::FastMap<(String, RowKey), Vec<usize>>,
}

impl PayloadRows {
    /// Indexes `payload`'s row operations by the key each names, per the schemas of `auth`.
    pub fn new(payload: SignedPayload, auth: &Authority) -> PayloadRows {
        let mut by_row: crate::FastMap<(String, RowKey), Vec<usize>> = Default::default();
        for (i, op) in payload.ops.iter().enumerate() {
            let Some((table, k)) = op.row() else { continue };
            if let Some(key) = auth.schema(table).and_then(|s| row_key(s, k)) {
                by_row.entry((table.to_string(), key)).or_default().push(i);
            }
        }
        PayloadRows { payload, by_row }
    }

    /// The operations on row `key` of `table`, in order.
    fn ops_on(&self, table: &str, key: &RowKey) -> Vec<&Op> {
        self.by_row
            .get(&(table.to_string(), key.clone()))
            .map(|ix| ix.iter().filter_map(|&i| self.payload.ops.get(i)).collect())
            .unwrap_or_default()
    }
}

/// Fills into `values` (a row of the table `schema` describes) the defaults of the columns
/// that the insert by `inserted_by` left out and could not have known: a column with a default
/// whose schema change is not in the insert's history (docs/SEMANTICS.md, section 5). Columns
/// in `written` have a writer of their own and are left alone.
pub(super) fn fill_added_defaults<S: DagStore>(
    dag: &Dag<S>,
    auth: &Authority,
    schema: &TableSchema,
    inserted_by: &EntryHash,
    written: &BTreeMap<String, EntryHash>,
    values: &mut Map<String, Value>,
) -> Result<(), ReconcileError> {
    for c in &schema.columns {
        if values.contains_key(&c.name) || written.contains_key(&c.name) {
            continue;
        }
        if let (Some(v), Some(added)) = (&c.default_value, auth.column_added_by(&schema.table, &c.name)) {
            if !dag.precedes(&added, inserted_by)? {
                values.insert(c.name.clone(), v.clone());
            }
        }
    }
    Ok(())
}

/// The values of `row` (key `key` of the table `schema` describes), derived from its metadata
/// and the payloads of the entries it names (`payload`, indexed by row and perhaps shared
/// between rows), with the group's authority for the columns' defaults.
pub fn derive_values<S: DagStore>(
    dag: &Dag<S>,
    auth: &Authority,
    schema: &TableSchema,
    key: &RowKey,
    row: &RowState,
    mut payload: impl FnMut(&EntryHash) -> Result<Rc<PayloadRows>, ReconcileError>,
) -> Result<Map<String, Value>, ReconcileError> {
    if !row.is_live() {
        return Ok(Map::new());
    }
    let missing = |entry: &EntryHash, what: &str| {
        ReconcileError::Corrupt(format!("row {key} of {}: entry {} has no {what} of it", schema.table, entry.to_b64()))
    };
    let inserting = payload(&row.inserted_by)?;
    let inserted = inserting
        .ops_on(&schema.table, key)
        .into_iter()
        .rev()
        .find_map(|op| match op {
            Op::Insert { row, .. } => Some(row),
            _ => None,
        })
        .ok_or_else(|| missing(&row.inserted_by, "insert"))?;
    let mut values = inserted.clone();
    fill_added_defaults(dag, auth, schema, &row.inserted_by, &row.writers, &mut values)?;
    // Each writer's payload once, for all the columns it wrote.
    let mut writers: Vec<&EntryHash> = row.writers.values().collect();
    writers.sort_unstable();
    writers.dedup();
    for w in writers {
        let written = payload(w)?;
        let ops = written.ops_on(&schema.table, key);
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
