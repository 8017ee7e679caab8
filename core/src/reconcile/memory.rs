//! An in-memory replica: the reference host of the engine, for tests and the convergence
//! property test. The extension implements the same [`ReplicaStore`] over Postgres tables.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

use crate::dag::{Dag, MemStore};
use crate::entry::Entry;
use crate::hash::{EntryHash, Hash, HashAlgorithm};
use crate::json::canonical_string;
use crate::membership::derive_meta;
use crate::payload::SignedPayload;
use crate::schema::TableSchema;

use super::authority::carries_authority;
use super::eval::{compare, V};
use super::{reconcile, Changes, JournalEntry, OrderKey, ReconcileError, ReplicaStore, RowKey, RowState, Verdict};

/// Evaluates a table's CHECK constraints on a row: the name of the first one violated.
pub type Checker = Box<dyn Fn(&TableSchema, &Map<String, Value>) -> Option<String>>;

/// A replica held in memory.
pub struct MemReplica {
    dag: Dag<MemStore>,
    journal: HashMap<EntryHash, JournalEntry>,
    order: BTreeMap<OrderKey, EntryHash>,
    authority: Vec<EntryHash>,
    rows: BTreeMap<String, BTreeMap<RowKey, RowState>>,
    payloads: HashMap<EntryHash, SignedPayload>,
    /// The columns each table has here: a recorded schema adds its new columns, as the
    /// extension alters its tables (columns are never dropped).
    columns: HashMap<String, std::collections::BTreeSet<String>>,
    checker: Option<Checker>,
    /// The authority a run resolved, with the number of authority entries it saw (they are
    /// only ever added), as the SQL store keeps it with its authority version.
    kept: std::cell::RefCell<Option<(usize, std::rc::Rc<super::Authority>)>>,
    /// Totals over every run, for tests that look at the work done.
    pub totals: super::Stats,
}

impl MemReplica {
    pub fn new(alg: HashAlgorithm) -> MemReplica {
        MemReplica {
            dag: Dag::new(MemStore::new(), alg),
            journal: HashMap::new(),
            order: BTreeMap::new(),
            authority: Vec::new(),
            rows: BTreeMap::new(),
            payloads: HashMap::new(),
            columns: HashMap::new(),
            kept: Default::default(),
            checker: None,
            totals: Default::default(),
        }
    }

    /// Uses `checker` for CHECK constraints instead of the built-in evaluator of simple
    /// comparisons (the extension passes Postgres's own evaluation).
    pub fn with_checker(mut self, checker: Checker) -> MemReplica {
        self.checker = Some(checker);
        self
    }

    /// The live rows of `table` in the view at `at` seen from this replica's frontier: the
    /// entries of `at`'s history whose verdict (from here) is ok, folded in canonical order.
    pub fn view_at(&self, table: &str, at: &crate::entry::Position) -> Result<Vec<Map<String, Value>>, ReconcileError> {
        let schema = self.authority_schema(table)?;
        let mut rows: BTreeMap<RowKey, Map<String, Value>> = BTreeMap::new();
        for h in self.order.values() {
            if !self.dag.in_history(h, at)? || !self.journal.get(h).is_some_and(|j| j.verdict.is_ok()) {
                continue;
            }
            let (Some(p), Some(schema)) = (self.payloads.get(h), schema.as_ref()) else { continue };
            for op in &p.ops {
                super::fold_op(&mut rows, schema, op);
            }
        }
        Ok(rows.into_values().collect())
    }

    fn authority_schema(&self, table: &str) -> Result<Option<TableSchema>, ReconcileError> {
        Ok(super::placed_authority(self)?.schema(table).cloned())
    }

    pub fn dag_mut(&mut self) -> &mut Dag<MemStore> {
        &mut self.dag
    }

    /// Stores entries (predecessors first; ones already present are skipped) and reconciles.
    pub fn receive(&mut self, entries: &[Entry]) -> Result<Changes, ReconcileError> {
        let mut new = Vec::new();
        for e in entries {
            if self.dag.contains(&e.hash)? {
                continue;
            }
            let payload = SignedPayload::from_value(&e.payload)
                .map_err(|source| ReconcileError::Payload { hash: e.hash.to_b64(), source })?;
            let mut e = e.clone();
            e.meta = derive_meta(&payload);
            self.dag.insert(e.clone())?;
            if carries_authority(&payload) {
                self.authority.push(e.hash);
            }
            self.add_columns(&payload);
            self.payloads.insert(e.hash, payload);
            new.push(e.hash);
        }
        let changes = reconcile(self, &new)?;
        let t = &mut self.totals;
        t.replayed += changes.stats.replayed;
        t.rewound += changes.stats.rewound;
        t.row_ops += changes.stats.row_ops;
        t.cancelled += changes.stats.cancelled;
        Ok(changes)
    }

    /// The columns a recorded schema adds to a table held here, with their defaults filled
    /// into the live rows stored already: what `ALTER TABLE ... ADD COLUMN ... DEFAULT` does to
    /// the extension's table and its row metadata, before the engine replays the entries.
    fn add_columns(&mut self, payload: &SignedPayload) {
        for op in &payload.ops {
            let crate::payload::Op::Schema { table, schema } = op else { continue };
            let Ok(schema) = TableSchema::from_value(schema) else { continue };
            let known = self.columns.entry(table.clone()).or_default();
            let first = known.is_empty();
            for c in &schema.columns {
                if !known.insert(c.name.clone()) || first {
                    continue;
                }
                let (Some(v), Some(rows)) = (&c.default_value, self.rows.get_mut(table)) else { continue };
                for r in rows.values_mut().filter(|r| r.is_live()) {
                    r.values.entry(c.name.clone()).or_insert_with(|| v.clone());
                }
            }
        }
    }

    /// The first row whose stored values differ from those its metadata and the history
    /// determine ([`super::derived_values`]), described; `None` when every row agrees.
    pub fn values_not_derived(&self) -> Result<Option<String>, ReconcileError> {
        let auth = super::placed_authority(self)?;
        for (table, rows) in &self.rows {
            let Some(schema) = auth.schema(table) else { continue };
            for (key, row) in rows {
                let derived = super::derived_values::derive_values(&self.dag, &auth, schema, key, row, |h| {
                    Ok(std::rc::Rc::new(super::derived_values::PayloadRows::new(self.payload(h)?, &auth)))
                })?;
                if derived != row.values {
                    return Ok(Some(format!(
                        "row {key} of {table}: stored {:?}, derived {derived:?}, metadata {}",
                        row.values,
                        row.meta_value()
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Every stored entry, predecessors first.
    pub fn entries(&self) -> Vec<Entry> {
        self.order.values().filter_map(|h| self.dag.entry(h).ok().flatten()).collect()
    }

    pub fn verdict(&self, h: &EntryHash) -> Option<&Verdict> {
        self.journal.get(h).map(|j| &j.verdict)
    }

    /// The live rows of a table, by key.
    pub fn table(&self, table: &str) -> BTreeMap<RowKey, Map<String, Value>> {
        self.rows
            .get(table)
            .map(|t| t.iter().filter(|(_, r)| r.is_live()).map(|(k, r)| (k.clone(), r.values.clone())).collect())
            .unwrap_or_default()
    }

    /// A digest of the replica's observable state: live rows, every verdict, the frontier.
    pub fn state_digest(&self) -> Hash {
        let mut tables = Map::new();
        for (t, rows) in &self.rows {
            let live: Map<String, Value> = rows
                .iter()
                .filter(|(_, r)| r.is_live())
                .map(|(k, r)| (k.to_string(), Value::Object(r.values.clone())))
                .collect();
            if !live.is_empty() {
                tables.insert(t.clone(), Value::Object(live));
            }
        }
        let verdicts: Map<String, Value> = self
            .journal
            .iter()
            .map(|(h, j)| {
                (h.to_b64(), json!([j.verdict.status.as_str(), j.verdict.reason.clone().unwrap_or_default()]))
            })
            .collect();
        let frontier: Vec<String> =
            self.dag.frontier().map(|f| f.iter().map(EntryHash::to_b64).collect()).unwrap_or_default();
        let all = json!({"tables": tables, "verdicts": verdicts, "frontier": frontier});
        HashAlgorithm::Sha256.digest(canonical_string(&all).unwrap_or_default().as_bytes())
    }
}

/// A tiny evaluator for CHECK expressions of the form `a <op> b` (columns or numbers, with
/// optional parentheses), enough for tests. Anything else is taken as satisfied.
fn simple_check(expression: &str, schema: &TableSchema, row: &Map<String, Value>) -> bool {
    let e = expression.trim().trim_start_matches("CHECK").trim().trim_start_matches('(').trim_end_matches(')').trim();
    for op in ["<=", ">=", "<>", "=", "<", ">"] {
        if let Some((a, b)) = e.split_once(op) {
            let val = |t: &str| -> V {
                let t = t.trim().trim_matches(|c| c == '(' || c == ')');
                if schema.column(t).is_some() {
                    super::eval::column_value(schema, Some(row), t)
                } else {
                    V::Num(t.to_string())
                }
            };
            let (x, y) = (val(a), val(b));
            let Some(o) = compare(&x, &y) else { return true }; // NULL passes a CHECK
            use std::cmp::Ordering::*;
            return match op {
                "<=" => o != Greater,
                ">=" => o != Less,
                "<>" => o != Equal,
                "=" => o == Equal,
                "<" => o == Less,
                _ => o == Greater,
            };
        }
    }
    true
}

impl ReplicaStore for MemReplica {
    type Dag = MemStore;

    fn dag(&self) -> &Dag<MemStore> {
        &self.dag
    }

    fn journal(&self, h: &EntryHash) -> Result<Option<JournalEntry>, ReconcileError> {
        Ok(self.journal.get(h).cloned())
    }

    fn journal_from(&self, from: &OrderKey) -> Result<Vec<(EntryHash, JournalEntry)>, ReconcileError> {
        Ok(self.order.range(*from..).filter_map(|(_, h)| self.journal.get(h).map(|j| (*h, j.clone()))).collect())
    }

    fn authority_entries(&self) -> Result<Vec<EntryHash>, ReconcileError> {
        Ok(self.authority.clone())
    }

    fn kept_authority(&self) -> Option<std::rc::Rc<super::Authority>> {
        match &*self.kept.borrow() {
            Some((n, a)) if *n == self.authority.len() => Some(a.clone()),
            _ => None,
        }
    }

    fn keep_authority(&self, authority: &std::rc::Rc<super::Authority>) {
        *self.kept.borrow_mut() = Some((self.authority.len(), authority.clone()));
    }

    fn payload(&self, h: &EntryHash) -> Result<SignedPayload, ReconcileError> {
        self.payloads.get(h).cloned().ok_or_else(|| ReconcileError::Corrupt(format!("no payload for {}", h.to_b64())))
    }

    fn rows(&self, table: &str, keys: &[RowKey]) -> Result<Vec<(RowKey, RowState)>, ReconcileError> {
        let Some(t) = self.rows.get(table) else { return Ok(Vec::new()) };
        Ok(keys.iter().filter_map(|k| t.get(k).map(|r| (k.clone(), r.clone()))).collect())
    }

    fn rows_where(&self, table: &str, equal: &[(String, Value)]) -> Result<Vec<(RowKey, RowState)>, ReconcileError> {
        let Some(t) = self.rows.get(table) else { return Ok(Vec::new()) };
        Ok(t.iter()
            .filter(|(_, r)| r.is_live() && equal.iter().all(|(c, v)| r.values.get(c) == Some(v)))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect())
    }

    fn violated_check(&self, schema: &TableSchema, row: &Map<String, Value>) -> Result<Option<String>, ReconcileError> {
        if let Some(check) = &self.checker {
            return Ok(check(schema, row));
        }
        Ok(schema.checks.iter().find(|c| !simple_check(&c.expression, schema, row)).map(|c| c.name.clone()))
    }

    fn apply(&mut self, changes: &Changes) -> Result<(), ReconcileError> {
        for (h, j) in &changes.journal {
            self.order.insert(j.order, *h);
            self.journal.insert(*h, j.clone());
        }
        for (h, v) in &changes.authority {
            if let Some(j) = self.journal.get_mut(h) {
                j.verdict = v.clone();
            }
        }
        for c in &changes.rows {
            let table = self.rows.entry(c.table.clone()).or_default();
            match &c.state {
                Some(r) => {
                    let held = table.insert(c.key.clone(), r.clone()).is_some();
                    if held && !c.was_stored {
                        return Err(ReconcileError::Corrupt(format!(
                            "row {} of {} was stored already",
                            c.key, c.table
                        )));
                    }
                }
                None => {
                    table.remove(&c.key);
                }
            }
        }
        Ok(())
    }
}
