//! Row values from their metadata and the history it names
//! (`causal_core::reconcile::derived_values`).
//!
//! `causal.row_meta` keeps beside a row's metadata only the values the engine looks rows up
//! by: the columns of UNIQUE constraints and foreign keys ([`kept_values`]), which its partial
//! `row_meta_lookup_*` indexes cover. A copy of every value was the largest part of each row
//! of it; the rest follows from the metadata and the payloads of the entries it names, so a
//! read derives it. The payloads a read needs are loaded in one statement and kept for the
//! rest of the run ([`Payloads`]).
//!
//! The rows of a table that a rule scans (`exists`) keep all their values: a rule filters on
//! any column, and deriving every row of the table for each check would cost far more than
//! the copy. So do rows written by 0.1.0. Their metadata does not carry [`PARTIAL`], and they
//! are read as they are.

use std::rc::Rc;

use causal_core::reconcile::derived_values::{derive_values, PayloadRows};
use causal_core::reconcile::Authority;

use super::*;
use crate::catalog::entry_row;

/// Decoded payloads kept by one replica (one run, or one pass of `causal.verify`): the rows
/// of a bulk entry share one. Beyond this many, those the next read does not need are dropped.
const KEPT_PAYLOADS: usize = 4_096;

/// The decoded payloads of entries that rows name, indexed by row, for one authority.
#[derive(Default)]
pub(super) struct Payloads {
    kept: HashMap<EntryHash, Rc<PayloadRows>>,
}

impl Payloads {
    pub(super) fn clear(&mut self) {
        self.kept.clear();
    }

    /// Reads the payloads of `wanted` that are not kept, in one statement.
    fn load(
        &mut self,
        replica: &SpiReplica,
        auth: &Authority,
        mut wanted: Vec<EntryHash>,
    ) -> Result<(), ReconcileError> {
        wanted.sort_unstable();
        wanted.dedup();
        // Room for this read first: what it names and was kept stays kept.
        let missing = wanted.iter().filter(|h| !self.kept.contains_key(h)).count();
        if self.kept.len() + missing > KEPT_PAYLOADS {
            self.kept.retain(|h, _| wanted.binary_search(h).is_ok());
        }
        wanted.retain(|h| !self.kept.contains_key(h));
        if wanted.is_empty() {
            return Ok(());
        }
        let store = replica.dag.store();
        let mut ids = Vec::with_capacity(wanted.len());
        for h in &wanted {
            match store.node_id(h).map_err(store_err)? {
                Some(id) => ids.push(node_i32(id)?),
                None => return Err(ReconcileError::Dag(causal_core::DagError::UnknownEntry(*h))),
            }
        }
        let sql = format!(
            "SELECT {}, e.payload, {} FROM causal.dag_entries e WHERE e.grp = $1 AND e.node_id = ANY ($2)",
            entry_row::hash_sql("e"),
            entry_row::author_sql()
        );
        let texts: Vec<(Option<String>, Option<String>, Option<i32>)> =
            run_prepared(&sql, &[replica.num.into(), ids.into()], false, |t| {
                t.map(|r| Ok((r.get::<String>(1)?, r.get::<String>(2)?, r.get::<i32>(3)?))).collect()
            })
            .map_err(store_err)?;
        for (hash, text, author) in texts {
            let (Some(hash), Some(text)) = (hash, text) else { continue };
            let h = parse_hash(&hash)?;
            let text = entry_row::payload_text(author, text).map_err(store_err)?;
            let payload = super::placement::decode_payload(&replica.group, &h, &text).map_err(store_err)?;
            self.kept.insert(h, Rc::new(PayloadRows::new(payload, auth)));
        }
        Ok(())
    }

    /// The payload of `h`: kept, or read now (an entry a read did not name).
    fn get(
        &mut self,
        replica: &SpiReplica,
        auth: &Authority,
        h: &EntryHash,
    ) -> Result<Rc<PayloadRows>, ReconcileError> {
        if let Some(p) = self.kept.get(h) {
            return Ok(Rc::clone(p));
        }
        let p = Rc::new(PayloadRows::new(replica.payload(h)?, auth));
        self.kept.insert(*h, Rc::clone(&p));
        Ok(p)
    }
}

/// A row read: its key, its state with all its values (or why its history does not give
/// them), the values kept with it, and whether those were partial.
pub(super) type DerivedRow = (RowKey, Result<RowState, ReconcileError>, Map<String, Value>, bool);

/// Derives the values of every live row of `rows` (rows of `table`, as read), kept partial or
/// not: `causal.verify` compares them with those kept.
pub(super) fn derive(
    replica: &SpiReplica,
    auth: &Authority,
    payloads: &mut Payloads,
    table: &str,
    rows: Vec<StoredRow>,
) -> Result<Vec<DerivedRow>, ReconcileError> {
    let schema = schema_of(auth, table)?;
    payloads.load(replica, auth, named(rows.iter()))?;
    let mut out = Vec::with_capacity(rows.len());
    for (key, mut row, partial) in rows {
        let kept = std::mem::take(&mut row.values);
        let derived = derive_values(replica.dag(), auth, schema, &key, &row, |h| payloads.get(replica, auth, h));
        let state = derived.map(|values| RowState { values, ..row });
        out.push((key, state, kept, partial));
    }
    Ok(out)
}

/// The rows of `rows` (of `table`, as read) with all their values: those kept partial
/// derived, the others as kept.
pub(super) fn derive_all(
    replica: &SpiReplica,
    auth: &Authority,
    payloads: &mut Payloads,
    table: &str,
    rows: Vec<StoredRow>,
) -> Result<Vec<(RowKey, RowState)>, ReconcileError> {
    if !rows.iter().any(|r| r.2) {
        return Ok(rows.into_iter().map(|(k, s, _)| (k, s)).collect());
    }
    let schema = schema_of(auth, table)?;
    payloads.load(replica, auth, named(rows.iter().filter(|r| r.2)))?;
    let mut out = Vec::with_capacity(rows.len());
    for (key, row, partial) in rows {
        if !partial {
            out.push((key, row));
            continue;
        }
        let values = derive_values(replica.dag(), auth, schema, &key, &row, |h| payloads.get(replica, auth, h))?;
        out.push((key, RowState { values, ..row }));
    }
    Ok(out)
}

fn schema_of<'a>(auth: &'a Authority, table: &str) -> Result<&'a TableSchema, ReconcileError> {
    auth.schema(table)
        .ok_or_else(|| ReconcileError::Corrupt(format!("rows of {table}, which the group does not replicate")))
}

/// The entries the live rows of `rows` name.
fn named<'r>(rows: impl Iterator<Item = &'r StoredRow>) -> Vec<EntryHash> {
    rows.filter(|r| r.1.is_live()).flat_map(|r| r.1.entries()).copied().collect()
}

/// The values `causal.row_meta` keeps of a row of the table `schema` describes, and whether
/// they are partial: all of them if a rule scans the table (`complete`), else its lookup
/// columns' (`TableSchema::is_lookup_column`).
pub(super) fn kept_values(
    schema: &TableSchema,
    complete: bool,
    values: &Map<String, Value>,
) -> (Map<String, Value>, bool) {
    if complete {
        return (values.clone(), false);
    }
    (lookup_values(schema, values), true)
}

/// The values of `values` in lookup columns.
pub(super) fn lookup_values(schema: &TableSchema, values: &Map<String, Value>) -> Map<String, Value> {
    values.iter().filter(|(c, _)| schema.is_lookup_column(c)).map(|(c, v)| (c.clone(), v.clone())).collect()
}
