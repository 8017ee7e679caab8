//! Writing and reading the engine's own rows: journal records and `causal.row_meta`, in
//! batches, and the statements that probe them by key.

use super::*;

/// The columns of `causal.journal`, in table order.
pub(super) const JOURNAL_COLUMNS: &[(&str, pg_sys::Oid)] = &[
    ("grp", pg_sys::INT4OID),
    ("node_id", pg_sys::INT4OID),
    ("height", pg_sys::INT4OID),
    ("status", pg_sys::TEXTOID),
    ("reason", pg_sys::TEXTOID),
    ("responsible", pg_sys::TEXTARRAYOID),
    ("undo", pg_sys::TEXTOID),
    ("cause", pg_sys::JSONBOID),
];

// Statements on `row_meta` rows by key. Each key is a probe of the btree on
// `(octet_length(key), key)` (catalog.sql says why it is keyed by length first): `grp + 0`
// and `table_name || ''` keep the planner from combining it with another index (a partial
// lookup index covers a whole table), and `OFFSET 0` keeps a LATERAL subquery a probe per key
// rather than a join the planner may run as a scan of the table (see `rows`). Deletes and
// updates reach the row found by its tid. Those of many keys run under `probing_by_key`.
// The `tests` module checks their generic plans.

/// Runs `f`, a statement of many probes by key, with bitmap scans off: without statistics
/// (a table that grew in this transaction) the planner expects a probe to find 0.5% of the
/// table and plans a bitmap scan, which builds and frees a bitmap per probe, where an index
/// scan finds the row.
pub(super) fn probing_by_key<T>(f: impl FnOnce() -> Result<T, pgrx::spi::Error>) -> Result<T, pgrx::spi::Error> {
    crate::pg::spi::with_setting("enable_bitmapscan", "off", f)?
}

/// The probe for the `row_meta` row of group `$1`, table `$t` and key `$k` (SQL expressions),
/// selecting `$cols`: one text for the three statements below, so that they plan alike.
macro_rules! row_probe {
    ($cols:literal, $t:literal, $k:literal) => {
        concat!(
            "(SELECT ",
            $cols,
            " FROM causal.row_meta WHERE octet_length(key) = octet_length(",
            $k,
            ") AND key = ",
            $k,
            " AND grp + 0 = $1 AND table_name || '' = ",
            $t,
            " OFFSET 0)"
        )
    };
}

/// The rows of group `$1` and table `$2` with the keys `$3`.
pub(super) const ROWS_BY_KEYS: &str = concat!(
    "SELECT m.key, m.vals, m.meta FROM unnest($3::text[]) AS k(key) CROSS JOIN LATERAL ",
    row_probe!("key, vals, meta", "$2", "k.key"),
    " m"
);

/// The keys of `$3` that group `$1` and table `$2` have rows of.
pub(super) const SHADOWED_KEYS: &str = concat!(
    "SELECT m.key FROM unnest($3::text[]) AS k(key) CROSS JOIN LATERAL ",
    row_probe!("key", "$2", "k.key"),
    " m"
);

/// The row of group `$1`, table `$2` and key `$3`.
pub(super) const ROW_BY_KEY: &str = "SELECT key, vals, meta FROM causal.row_meta \
     WHERE octet_length(key) = octet_length($3) AND key = $3 AND grp + 0 = $1 AND table_name || '' = $2";

/// Deletes the rows of group `$1` with the tables and keys `$2` and `$3` (pairwise).
pub(super) const DELETE_ROWS: &str = concat!(
    "DELETE FROM causal.row_meta m USING (SELECT r.tid FROM unnest($2::text[], $3::text[]) AS x(t, k) CROSS JOIN LATERAL ",
    row_probe!("ctid AS tid", "x.t", "x.k"),
    " r) d WHERE m.ctid = d.tid"
);

/// Sets the values `$4` and metadata `$5` (JSON texts) of the rows of group `$1` with the
/// tables and keys `$2` and `$3`.
pub(super) const UPDATE_ROWS: &str = concat!(
    "UPDATE causal.row_meta m SET vals = d.v::jsonb, meta = d.m::jsonb FROM (SELECT r.tid, x.v, x.m ",
    "FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS x(t, k, v, m) CROSS JOIN LATERAL ",
    row_probe!("ctid AS tid", "x.t", "x.k"),
    " r) d WHERE m.ctid = d.tid"
);

/// The columns of `causal.row_meta`, in table order.
pub(super) const ROW_META_COLUMNS: &[(&str, pg_sys::Oid)] = &[
    ("grp", pg_sys::INT4OID),
    ("table_name", pg_sys::TEXTOID),
    ("key", pg_sys::TEXTOID),
    ("vals", pg_sys::JSONBOID),
    ("meta", pg_sys::JSONBOID),
];

/// The journal's `cause` of a verdict: `{"code", "table", "key"}` for a cancellation.
pub(super) fn cause_value(verdict: &Verdict) -> Option<serde_json::Value> {
    let code = verdict.code?;
    let (table, key) = match &verdict.row {
        Some((t, k)) => (Some(t.as_str()), Some(k.as_str())),
        None => (None, None),
    };
    Some(serde_json::json!({"code": code.as_str(), "table": table, "key": key}))
}

/// A journal record's `cause`, as [`cause_value`] wrote it: the kind and the row.
pub(super) type Cause = (Option<causal_core::reconcile::CancelCode>, Option<(String, RowKey)>);

pub(super) fn read_cause(text: &str) -> Result<Cause, ReconcileError> {
    let v = causal_core::json::parse(text).map_err(|e| ReconcileError::Corrupt(format!("journal cause: {e}")))?;
    let code = v.get("code").and_then(Value::as_str).and_then(causal_core::reconcile::CancelCode::parse);
    let row = match (v.get("table").and_then(Value::as_str), v.get("key").and_then(Value::as_str)) {
        (Some(t), Some(k)) => Some((t.to_string(), RowKey::from_stored(k.to_string()))),
        _ => None,
    };
    Ok((code, row))
}

/// Journal records to write, as parallel arrays for `unnest`.
#[derive(Default)]
pub(super) struct JournalBatch {
    pub(super) node_ids: Vec<i32>,
    pub(super) heights: Vec<Option<i32>>,
    pub(super) statuses: Vec<&'static str>,
    pub(super) reasons: Vec<Option<String>>,
    /// The entries responsible for a cancellation (Base64 hashes), `None` when there are none.
    pub(super) blamed: Vec<Option<Vec<String>>>,
    pub(super) undos: Vec<Option<String>>,
    /// Of a cancellation: its kind and row (`cause_value`).
    pub(super) causes: Vec<Option<serde_json::Value>>,
}

impl JournalBatch {
    pub(super) fn push(&mut self, id: i32, order: Option<&OrderKey>, verdict: &Verdict, undo: Option<String>) {
        self.node_ids.push(id);
        self.heights.push(order.map(|o| i32::try_from(o.height).unwrap_or(i32::MAX)));
        self.statuses.push(verdict.status.as_str());
        self.reasons.push(verdict.reason.clone());
        self.blamed.push(if verdict.responsible.is_empty() {
            None
        } else {
            Some(verdict.responsible.iter().map(EntryHash::to_b64).collect())
        });
        self.undos.push(undo);
        self.causes.push(cause_value(verdict));
    }

    /// Inserts the records as new rows of `causal.journal`, without SQL (`direct.rs`).
    pub(super) fn write_direct(&self, group: i32) -> Result<(), CausalError> {
        // A catalog not upgraded yet has no `cause` column (catalog::shape).
        let with_cause = crate::catalog::shape::journal_has_cause();
        let columns = if with_cause { JOURNAL_COLUMNS } else { &JOURNAL_COLUMNS[..JOURNAL_COLUMNS.len() - 1] };
        let mut rows = Inserter::open("journal", columns)?;
        for i in 0..self.node_ids.len() {
            let cells = [
                Cell::Int4(group),
                Cell::Int4(self.node_ids[i]),
                self.heights[i].map_or(Cell::Null(pg_sys::INT4OID), Cell::Int4),
                Cell::Text(self.statuses[i]),
                self.reasons[i].as_deref().map_or(Cell::Null(pg_sys::TEXTOID), Cell::Text),
                self.blamed[i].as_deref().map_or(Cell::Null(pg_sys::TEXTARRAYOID), Cell::TextArray),
                self.undos[i].as_deref().map_or(Cell::Null(pg_sys::TEXTOID), Cell::Text),
                self.causes[i].as_ref().map_or(Cell::Null(pg_sys::JSONBOID), Cell::Jsonb),
            ];
            rows.push(&cells[..columns.len()])?;
        }
        rows.finish();
        Ok(())
    }

    pub(super) fn into_args(self, group: i32) -> [pgrx::datum::DatumWithOid<'static>; 8] {
        [
            group.into(),
            self.node_ids.into(),
            self.heights.into(),
            self.statuses.into(),
            self.reasons.into(),
            // `unnest` takes no ragged arrays: each list goes as one space-separated text.
            self.blamed.into_iter().map(|b| b.map(|b| b.join(" "))).collect::<Vec<_>>().into(),
            self.undos.into(),
            self.causes.into_iter().map(|c| c.map(|c| c.to_string())).collect::<Vec<_>>().into(),
        ]
    }
}

/// `row_meta` rows to write, as parallel arrays.
#[derive(Default)]
pub(super) struct RowBatch<'c> {
    pub(super) tables: Vec<&'c str>,
    pub(super) keys: Vec<&'c str>,
    /// The values kept of each row: its lookup columns' (`derived::lookup_values`).
    pub(super) values: Vec<Map<String, Value>>,
    pub(super) metas: Vec<Value>,
}

impl RowBatch<'_> {
    /// Inserts the rows as new rows of `causal.row_meta`, without SQL (`direct.rs`).
    pub(super) fn write_direct(&self, group: i32) -> Result<(), CausalError> {
        let mut rows = Inserter::open("row_meta", ROW_META_COLUMNS)?;
        for i in 0..self.keys.len() {
            rows.push(&[
                Cell::Int4(group),
                Cell::Text(self.tables[i]),
                Cell::Text(self.keys[i]),
                Cell::JsonbObject(&self.values[i]),
                Cell::Jsonb(&self.metas[i]),
            ])?;
        }
        rows.finish();
        Ok(())
    }

    /// The statement arguments for `unnest`: values and metadata as JSON texts.
    pub(super) fn into_args(self, group: i32) -> Result<[pgrx::datum::DatumWithOid<'static>; 5], serde_json::Error> {
        let values = self.values.iter().map(serde_json::to_string).collect::<Result<Vec<String>, _>>()?;
        let metas: Vec<String> = self.metas.iter().map(Value::to_string).collect();
        Ok([group.into(), self.tables.into(), self.keys.into(), values.into(), metas.into()])
    }
}

pub(super) type RawRow = (Option<String>, Option<JsonB>, Option<JsonB>);

pub(super) fn read_rows(tuples: pgrx::spi::SpiTupleTable<'_>) -> Result<Vec<RawRow>, pgrx::spi::Error> {
    let mut out = Vec::new();
    for t in tuples {
        out.push((t.get(1)?, t.get(2)?, t.get(3)?));
    }
    Ok(out)
}

/// A row as read from `row_meta`: its key, its state with the values kept, and whether those
/// are only the values lookups need (the metadata says so, `PARTIAL`): then the others are
/// derived (`derived`).
pub(super) type StoredRow = (RowKey, RowState, bool);

/// The field of a row's metadata that says its kept values are partial.
pub(super) const PARTIAL: &str = "p";

pub(super) fn to_states(rows: Vec<RawRow>, names: &EntryNames) -> Result<Vec<StoredRow>, ReconcileError> {
    names.prepare_reads(rows.iter().filter_map(|r| r.2.as_ref().map(|m| &m.0)))?;
    let mut out = Vec::with_capacity(rows.len());
    for (k, v, m) in rows {
        let (Some(k), Some(v), Some(m)) = (k, v, m) else { continue };
        let values = match v.0 {
            Value::Object(o) => o,
            _ => Map::new(),
        };
        let partial = m.0.get(PARTIAL).is_some_and(|p| p == &Value::Bool(true));
        out.push((RowKey::from_stored(k), names.state(values, &m.0)?, partial));
    }
    Ok(out)
}
