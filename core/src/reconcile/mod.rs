//! Reconciliation: the verdict of every entry and the tables at the frontier (docs/SEMANTICS.md).
//!
//! This is the one implementation of the group's view. The extension and the convergence
//! property tests both drive it through [`ReplicaStore`]; nothing here performs I/O.
//!
//! In short:
//! - Entries are replayed in the **canonical order**: by height (longest path from the genesis,
//!   a Lamport clock), then by hash. It is a topological order and a pure function of the DAG.
//! - **Authority** (membership, rules, schemas) is resolved first, over the few entries that
//!   carry it ([`authority`]).
//! - Every data entry is then checked in the **view at its position seen from the frontier**:
//!   what its author saw (its causal past), minus what concurrent barrier operations (deletes,
//!   member removals, rule changes) take away, plus what entries earlier in the canonical order
//!   wrote (so duplicate keys and merged rows are detected once, by the later entry). An entry
//!   whose operations do not all pass is cancelled whole ([`replay`]).
//! - State is kept per row with its causal metadata ([`RowState`]), and every applied entry
//!   keeps an undo record, so a late entry only rewinds and replays what lies above its fork.

pub mod authority;
pub mod cancel;
pub mod derived_values;
mod eval;
pub mod membership_view;
pub mod memory;
mod removal_conflicts;
mod replay;
mod void_deletes;

use std::collections::BTreeMap;

use crate::{FastMap as HashMap, FastSet as HashSet};
use std::rc::Rc;

use serde_json::{json, Map, Value};

use crate::dag::{Dag, DagError, DagStore};
use crate::entry::Position;
use crate::hash::EntryHash;
use crate::json::canonical_string;
use crate::payload::{Op, PayloadError, SignedPayload};
use crate::schema::TableSchema;

pub use authority::{carries_authority, Authority};
pub use cancel::{Cancel, CancelCode};

/// The identity of a row: the canonical JSON array of its primary-key values, in key order
/// (`["A"]`, `[1,"x"]`). Made by [`row_key`] from a row, or read back from storage, where it
/// was written from one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct RowKey(String);

impl RowKey {
    /// A key as stored: the canonical text [`row_key`] made.
    pub fn from_stored(text: String) -> RowKey {
        RowKey(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a text is not a row key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a row key: expected the canonical JSON array of primary-key values")]
pub struct ParseRowKeyError(pub String);

impl std::str::FromStr for RowKey {
    type Err = ParseRowKeyError;
    /// A key as text: the canonical JSON of a non-empty array, as [`row_key`] writes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseRowKeyError(s.chars().take(64).collect());
        let value = crate::json::parse(s).map_err(|_| bad())?;
        let canonical = crate::json::canonical_string(&value).map_err(|_| bad())?;
        match value.as_array() {
            Some(items) if !items.is_empty() && canonical == s => Ok(RowKey(canonical)),
            _ => Err(bad()),
        }
    }
}

impl std::borrow::Borrow<str> for RowKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A row with its causal metadata. A deleted row is kept as a tombstone (`deleted_by` set,
/// `values` empty) so that later entries can be told who deleted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowState {
    /// The non-NULL columns.
    pub values: Map<String, Value>,
    /// The entry whose insert created this incarnation of the row.
    pub inserted_by: EntryHash,
    /// For every column written since (set or unset), the entry that wrote it last.
    pub writers: BTreeMap<String, EntryHash>,
    pub deleted_by: Option<EntryHash>,
}

impl RowState {
    pub fn is_live(&self) -> bool {
        self.deleted_by.is_none()
    }

    /// The metadata as JSON (`{"i": inserted_by, "w": {col: writer}, "d": deleted_by}`), each
    /// entry named by its hash.
    pub fn meta_value(&self) -> Value {
        let named: Result<Value, std::convert::Infallible> = self.meta_value_with(|h| Ok(json!(h.to_b64())));
        named.unwrap_or_else(|never| match never {})
    }

    /// [`RowState::meta_value`] with each entry named by `name`: a store may name entries by
    /// numbers of its own, which take a fraction of a hash's space in every row.
    pub fn meta_value_with<E>(&self, mut name: impl FnMut(&EntryHash) -> Result<Value, E>) -> Result<Value, E> {
        let mut m = Map::new();
        m.insert("i".into(), name(&self.inserted_by)?);
        if !self.writers.is_empty() {
            let mut w = Map::new();
            for (c, h) in &self.writers {
                w.insert(c.clone(), name(h)?);
            }
            m.insert("w".into(), Value::Object(w));
        }
        if let Some(d) = &self.deleted_by {
            m.insert("d".into(), name(d)?);
        }
        Ok(Value::Object(m))
    }

    /// The entries this state names: who inserted the row, wrote its columns, deleted it.
    pub fn entries(&self) -> impl Iterator<Item = &EntryHash> {
        std::iter::once(&self.inserted_by).chain(self.writers.values()).chain(self.deleted_by.as_ref())
    }

    /// The entries [`RowState::meta_value_with`] names in `meta`, each once, in no order.
    pub fn meta_names(meta: &Value) -> Vec<&Value> {
        let mut out: Vec<&Value> = ["i", "d"].iter().filter_map(|k| meta.get(*k)).collect();
        if let Some(Value::Object(w)) = meta.get("w") {
            out.extend(w.values());
        }
        out
    }

    /// Reads [`RowState::meta_value`] back, with the row's values.
    pub fn from_meta(values: Map<String, Value>, meta: &Value) -> Result<RowState, ReconcileError> {
        RowState::from_meta_with(values, meta, |v| {
            v.as_str()
                .and_then(|s| s.parse::<EntryHash>().ok())
                .ok_or_else(|| ReconcileError::Corrupt(format!("bad row metadata {meta}")))
        })
    }

    /// Reads [`RowState::meta_value_with`] back: `hash` turns each name into its entry.
    pub fn from_meta_with(
        values: Map<String, Value>,
        meta: &Value,
        mut hash: impl FnMut(&Value) -> Result<EntryHash, ReconcileError>,
    ) -> Result<RowState, ReconcileError> {
        let bad = || ReconcileError::Corrupt(format!("bad row metadata {meta}"));
        let inserted_by = hash(meta.get("i").ok_or_else(bad)?)?;
        let mut writers = BTreeMap::new();
        if let Some(w) = meta.get("w") {
            for (c, h) in w.as_object().ok_or_else(bad)? {
                writers.insert(c.clone(), hash(h)?);
            }
        }
        let deleted_by = meta.get("d").map(hash).transpose()?;
        Ok(RowState { values, inserted_by, writers, deleted_by })
    }
}

/// The canonical key of a row from its primary-key values (`None` when one is missing).
pub fn row_key(schema: &TableSchema, row: &Map<String, Value>) -> Option<RowKey> {
    let values: Option<Vec<Value>> = schema.primary_key.iter().map(|c| row.get(c).cloned()).collect();
    canonical_string(&Value::Array(values?)).ok().map(RowKey)
}

/// An entry's place in the canonical order: height first, then hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderKey {
    pub height: u32,
    pub hash: EntryHash,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Cancelled => "cancelled",
        }
    }
}

/// An entry's verdict: ok, or cancelled with a human reason, the entries responsible, the
/// kind of conflict and, when one operation failed, its table and row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: Status,
    pub reason: Option<String>,
    pub responsible: Vec<EntryHash>,
    /// `None` when ok (and in records stored before kinds were recorded).
    pub code: Option<CancelCode>,
    /// The table and row of the operation that failed.
    pub row: Option<(String, RowKey)>,
}

impl Verdict {
    pub fn ok() -> Verdict {
        Verdict { status: Status::Ok, reason: None, responsible: Vec::new(), code: None, row: None }
    }

    pub fn cancelled(c: Cancel) -> Verdict {
        Verdict {
            status: Status::Cancelled,
            reason: Some(c.reason),
            responsible: c.responsible,
            code: Some(c.code),
            row: None,
        }
    }

    /// The same verdict, naming the row whose operation failed.
    pub fn at_row(mut self, table: &str, key: Option<RowKey>) -> Verdict {
        self.row = key.map(|k| (table.to_string(), k));
        self
    }

    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}

/// The state of one row before an entry touched it (`None`: the row did not exist).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UndoRecord {
    pub table: String,
    pub key: RowKey,
    pub before: Option<RowState>,
}

impl UndoRecord {
    /// The JSON text of `records` as the journal stores them, `[{"b": before, "k": key, "t":
    /// table}]` with `before` as `{"m": metadata, "v": values}` (metadata as `meta` writes
    /// it) or `null`: written straight from the records, without copying each row's values
    /// into a JSON tree first (a thousand-row entry built a thousand of them).
    pub fn journal_text<E>(
        records: &[UndoRecord],
        mut meta: impl FnMut(&RowState) -> Result<Value, E>,
    ) -> Result<String, E> {
        // serde_json writes into a Vec without failing, and writes UTF-8 (so the lossy
        // conversion below changes nothing; it only never loses the record).
        fn write(out: &mut Vec<u8>, v: &(impl serde::Serialize + ?Sized)) {
            let _ = serde_json::to_writer(out, v);
        }
        let mut out: Vec<u8> = Vec::with_capacity(records.len() * 48);
        out.push(b'[');
        for (i, r) in records.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"b\":");
            match &r.before {
                Some(b) => {
                    out.extend_from_slice(b"{\"m\":");
                    write(&mut out, &meta(b)?);
                    out.extend_from_slice(b",\"v\":");
                    write(&mut out, &b.values);
                    out.push(b'}');
                }
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"k\":");
            write(&mut out, r.key.as_str());
            out.extend_from_slice(b",\"t\":");
            write(&mut out, r.table.as_str());
            out.push(b'}');
        }
        out.push(b']');
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// What the journal keeps per replayed entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    pub order: OrderKey,
    pub verdict: Verdict,
    /// The prior states of the rows the entry changed (empty when it is cancelled).
    pub undo: Vec<UndoRecord>,
}

/// A failure of reconciliation: storage, or a stored entry that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Dag(#[from] DagError),
    #[error("stored entry {hash} has an invalid payload: {source}")]
    Payload { hash: String, source: PayloadError },
    #[error("replica storage failed: {0}")]
    Store(String),
    #[error("replica state is inconsistent: {0}")]
    Corrupt(String),
}

/// What the engine changes in one run; the store applies it atomically.
#[derive(Debug, Default)]
pub struct Changes {
    /// Journal records of every entry (re)evaluated in this run.
    pub journal: Vec<(EntryHash, JournalEntry)>,
    /// The entries among `journal` placed for the first time (no record of them existed).
    pub first_placed: HashSet<EntryHash>,
    /// Final states of the rows touched, by table and key.
    pub rows: Vec<RowChange>,
    /// Table schemas in force after this run, for the tables whose schema changed.
    pub schemas: Vec<TableSchema>,
    /// Verdicts of authority entries that changed.
    pub authority: Vec<(EntryHash, Verdict)>,
    /// Counters for progress reports and benchmarks.
    pub stats: Stats,
}

/// Applies `op` to `rows` (live rows of `schema`'s table, by key) if it writes that table, as
/// an entry whose verdict is ok does: for folding a linear stretch of history into a view.
pub fn fold_op(rows: &mut BTreeMap<RowKey, Map<String, Value>>, schema: &TableSchema, op: &Op) {
    match op {
        Op::Insert { table, row } if *table == schema.table => {
            if let Some(k) = row_key(schema, row) {
                rows.insert(k, row.clone());
            }
        }
        Op::Update { table, key, set, unset } if *table == schema.table => {
            if let Some(r) = row_key(schema, key).and_then(|k| rows.get_mut(&k)) {
                r.extend(set.iter().map(|(c, v)| (c.clone(), v.clone())));
                for c in unset {
                    r.remove(c);
                }
            }
        }
        Op::Delete { table, key } if *table == schema.table => {
            if let Some(k) = row_key(schema, key) {
                rows.remove(&k);
            }
        }
        _ => {}
    }
}

/// The final state of one row a run touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    pub table: String,
    pub key: RowKey,
    /// `None`: the row is gone, not even a tombstone.
    pub state: Option<RowState>,
    /// Whether the store held the row (or its tombstone) before the run. A store may insert
    /// a row it did not hold without looking for it first.
    pub was_stored: bool,
}

/// How much a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries replayed (new and revisited).
    pub replayed: u64,
    /// Previously applied entries rewound.
    pub rewound: u64,
    /// Row operations applied.
    pub row_ops: u64,
    pub cancelled: u64,
}

/// Storage for a replica: the DAG, the journal, and the rows with their metadata. Reads see
/// the state before the run; [`ReplicaStore::apply`] writes a run's [`Changes`].
pub trait ReplicaStore {
    type Dag: DagStore;

    fn dag(&self) -> &Dag<Self::Dag>;
    /// The journal record of an entry, if it has been replayed.
    fn journal(&self, h: &EntryHash) -> Result<Option<JournalEntry>, ReconcileError>;
    /// The order key of an entry, if it has been replayed: its journal record's, which a store
    /// may read without the rest of the record (an undo record can take reading the entry's
    /// payload to spell out).
    fn order(&self, h: &EntryHash) -> Result<Option<OrderKey>, ReconcileError> {
        Ok(self.journal(h)?.map(|j| j.order))
    }
    /// Journal records with an order key `>= from`, ascending.
    fn journal_from(&self, from: &OrderKey) -> Result<Vec<(EntryHash, JournalEntry)>, ReconcileError>;
    /// Hashes of every stored entry carrying authority (genesis, membership, schema, rules).
    fn authority_entries(&self) -> Result<Vec<EntryHash>, ReconcileError>;
    /// The authority an earlier run resolved, if the store kept it and no entry carrying
    /// authority has been stored since. Authority depends only on those entries, so a run
    /// whose new entries carry none may reuse it. Stores that keep nothing answer `None`.
    fn kept_authority(&self) -> Option<Rc<Authority>> {
        None
    }
    /// Offers the authority a run resolved (over every stored entry) to later runs.
    fn keep_authority(&self, _authority: &Rc<Authority>) {}
    /// Decoded payload of a stored entry (the store may cache).
    fn payload(&self, h: &EntryHash) -> Result<SignedPayload, ReconcileError> {
        let entry = self.dag().entry(h)?.ok_or(ReconcileError::Dag(DagError::UnknownEntry(*h)))?;
        SignedPayload::from_value(&entry.payload).map_err(|source| ReconcileError::Payload { hash: h.to_b64(), source })
    }
    /// Rows by key (missing keys are simply absent from the answer); tombstones included.
    fn rows(&self, table: &str, keys: &[RowKey]) -> Result<Vec<(RowKey, RowState)>, ReconcileError>;
    /// Live rows whose columns equal the given values.
    fn rows_where(&self, table: &str, equal: &[(String, Value)]) -> Result<Vec<(RowKey, RowState)>, ReconcileError>;
    /// The name of the first CHECK constraint of `schema` that `row` (complete, encoded)
    /// violates, if any. CHECK expressions are SQL; only the host can evaluate them.
    fn violated_check(&self, schema: &TableSchema, row: &Map<String, Value>) -> Result<Option<String>, ReconcileError>;
    fn apply(&mut self, changes: &Changes) -> Result<(), ReconcileError>;
}

/// The authority of the placed authority entries, each at its journaled place in the order:
/// what a run resolves, without entries stored and not placed yet.
pub fn placed_authority<R: ReplicaStore>(store: &R) -> Result<Authority, ReconcileError> {
    let mut input = Vec::new();
    for h in store.authority_entries()? {
        if let Some(order) = store.order(&h)? {
            input.push((order, store.payload(&h)?));
        }
    }
    Authority::resolve(store.dag(), input)
}

/// Computes the height of an entry from its predecessors' (journaled or just computed).
fn height_of<R: ReplicaStore>(
    store: &R,
    prev: &Position,
    fresh: &HashMap<EntryHash, u32>,
) -> Result<u32, ReconcileError> {
    let mut h = 0u32;
    for p in prev {
        let ph = match fresh.get(p) {
            Some(x) => *x,
            None => store
                .order(p)?
                .map(|o| o.height)
                .ok_or_else(|| ReconcileError::Corrupt(format!("predecessor {} has not been replayed", p.to_b64())))?,
        };
        h = h.max(ph.saturating_add(1));
    }
    Ok(h)
}

/// Brings the replica's tables and verdicts up to date after `new` entries (already stored
/// in the DAG, predecessors first) arrived. Returns what changed, after applying it.
pub fn reconcile<R: ReplicaStore>(store: &mut R, new: &[EntryHash]) -> Result<Changes, ReconcileError> {
    let changes = plan(store, new)?;
    store.apply(&changes)?;
    Ok(changes)
}

/// An entry just stored, decoded: its hash, predecessors and payload.
pub type NewEntry = (EntryHash, Position, SignedPayload);

/// Computes a run's changes without applying them.
pub fn plan<R: ReplicaStore>(store: &R, new: &[EntryHash]) -> Result<Changes, ReconcileError> {
    let mut decoded = Vec::with_capacity(new.len());
    for h in new {
        let entry = store.dag().entry(h)?.ok_or(ReconcileError::Dag(DagError::UnknownEntry(*h)))?;
        let payload = SignedPayload::from_value(&entry.payload)
            .map_err(|source| ReconcileError::Payload { hash: h.to_b64(), source })?;
        decoded.push((*h, entry.header.prev.clone(), payload));
    }
    plan_decoded(store, decoded)
}

/// [`plan`] for callers that hold the new entries decoded already (an import has just
/// validated them), predecessors first.
pub fn plan_decoded<R: ReplicaStore>(store: &R, new: Vec<NewEntry>) -> Result<Changes, ReconcileError> {
    // 1. Order keys of the new entries.
    let mut fresh: HashMap<EntryHash, u32> = HashMap::default();
    let mut new_keys = Vec::with_capacity(new.len());
    for (h, prev, payload) in new {
        // Callers pass entries just stored, so none has a journal record yet.
        if fresh.contains_key(&h) {
            continue;
        }
        let height = height_of(store, &prev, &fresh)?;
        fresh.insert(h, height);
        new_keys.push((OrderKey { height, hash: h }, Rc::new(payload)));
    }
    let new_set: HashSet<EntryHash> = new_keys.iter().map(|k| k.0.hash).collect();

    // 2. Authority over the whole group (few entries), and what changed in it. When no new
    // entry carries authority, a kept resolution is still exact and nothing in it changed.
    let mut changed_authority = Vec::new();
    let mut authority_changes = Vec::new();
    let kept = if new_keys.iter().any(|(_, p)| carries_authority(p)) { None } else { store.kept_authority() };
    let authority = match kept {
        Some(a) => a,
        None => {
            let a =
                Rc::new(resolve_authority(store, &fresh, &new_set, &mut changed_authority, &mut authority_changes)?);
            store.keep_authority(&a);
            a
        }
    };
    let order_of = |h: &EntryHash| order_key(store, &fresh, h);
    // 3. The rewind point: the earliest entry whose verdict or effect may change.
    let Some(mut start) = new_keys.iter().map(|k| k.0).min() else {
        return Ok(Changes { authority: authority_changes, ..Default::default() });
    };
    let frontier = store.dag().frontier()?;
    let bound = |b: &EntryHash, start: &mut OrderKey| -> Result<(), ReconcileError> {
        // Entries not in history(b) are concurrent to b or after it; the earliest of them in
        // the canonical order is among the minimal ones, the fork of (frontier, {b}).
        let fork = store.dag().fork_position(&frontier, &[*b].into())?;
        for h in fork.fork_a {
            *start = (*start).min(order_of(&h)?);
        }
        Ok(())
    };
    for (k, p) in &new_keys {
        if replay::is_barrier(p) {
            bound(&k.hash, &mut start)?;
        }
    }
    for h in &changed_authority {
        bound(h, &mut start)?;
    }
    // A single new entry that is now the whole frontier (a local commit) has every stored
    // entry in its history, so it is last in the canonical order: nothing journaled follows.
    let mut region =
        if new_keys.len() == 1 && start == new_keys[0].0 && frontier.len() == 1 && frontier.contains(&start.hash) {
            new_keys.iter().map(|(k, p)| (*k, Rc::clone(p), None)).collect()
        } else {
            load_region(store, &start, &new_keys)?
        };
    // Every delete in the region may now count differently for the entries concurrent to it
    // (its verdict may change, and a cancelled delete counts for nothing): widen to the fork
    // of each, until stable. The region then starts where no delete reaches back across.
    let mut widened: HashSet<EntryHash> =
        new_keys.iter().filter(|(_, p)| replay::is_barrier(p)).map(|(k, _)| k.hash).collect();
    loop {
        let before = start;
        for (key, payload, _) in &region {
            if replay::is_barrier(payload) && !authority.is_authority(&key.hash) && widened.insert(key.hash) {
                bound(&key.hash, &mut start)?;
            }
        }
        if start == before {
            break;
        }
        region = load_region(store, &start, &new_keys)?;
    }

    // 4. Rewind and replay.
    let mut changes = replay::Replay::new(store, &authority).run(&region)?;
    changes.authority = authority_changes;
    Ok(changes)
}

/// Resolves the authority of every stored entry, noting which verdicts differ from the
/// journal's (`changed`; `changes` for those journaled before this run).
fn resolve_authority<R: ReplicaStore>(
    store: &R,
    fresh: &HashMap<EntryHash, u32>,
    new_set: &HashSet<EntryHash>,
    changed: &mut Vec<EntryHash>,
    changes: &mut Vec<(EntryHash, Verdict)>,
) -> Result<Authority, ReconcileError> {
    let mut authority_hashes = store.authority_entries()?;
    authority_hashes.sort();
    authority_hashes.dedup();
    let order_of = |h: &EntryHash| order_key(store, fresh, h);
    let mut authority_input = Vec::with_capacity(authority_hashes.len());
    for h in &authority_hashes {
        authority_input.push((order_of(h)?, store.payload(h)?));
    }
    let authority = Authority::resolve(store.dag(), authority_input)?;
    for (h, verdict) in authority.verdicts() {
        let before = if new_set.contains(h) { None } else { store.journal(h)?.map(|j| j.verdict) };
        if before.as_ref() != Some(verdict) {
            changed.push(*h);
            if before.is_some() {
                changes.push((*h, verdict.clone()));
            }
        }
    }
    Ok(authority)
}

/// An entry's order key: computed by this run, or from its journal record.
fn order_key<R: ReplicaStore>(
    store: &R,
    fresh: &HashMap<EntryHash, u32>,
    h: &EntryHash,
) -> Result<OrderKey, ReconcileError> {
    if let Some(height) = fresh.get(h) {
        return Ok(OrderKey { height: *height, hash: *h });
    }
    store.order(h)?.ok_or_else(|| ReconcileError::Corrupt(format!("entry {} has no order", h.to_b64())))
}

/// The entries from `start` on in canonical order: journaled ones with their old records, and
/// the new ones. Payloads are shared, not copied: a region can hold millions of rows.
type RegionEntry = (OrderKey, Rc<SignedPayload>, Option<JournalEntry>);

fn load_region<R: ReplicaStore>(
    store: &R,
    start: &OrderKey,
    new_keys: &[(OrderKey, Rc<SignedPayload>)],
) -> Result<Vec<RegionEntry>, ReconcileError> {
    let mut region = Vec::with_capacity(new_keys.len());
    for (h, j) in store.journal_from(start)? {
        region.push((j.order, Rc::new(store.payload(&h)?), Some(j)));
    }
    for (k, p) in new_keys {
        if k >= start {
            region.push((*k, Rc::clone(p), None));
        }
    }
    region.sort_by_key(|e| e.0);
    Ok(region)
}

#[cfg(test)]
mod tests {

    /// The journal's undo text, written straight from the records, is the JSON a tree of
    /// the same records would print.
    #[test]
    fn undo_text_is_the_json_of_its_records() {
        let h = |b: u8| EntryHash(crate::hash::Hash([b; 32]));
        let before = RowState {
            values: json!({"id": 1, "s": "é \" \\ \u{1}", "n": null}).as_object().cloned().unwrap(),
            inserted_by: h(1),
            writers: [("s".to_string(), h(2))].into_iter().collect(),
            deleted_by: Some(h(3)),
        };
        let records = vec![
            UndoRecord { table: "t\"q".into(), key: RowKey::from_stored("[1]".into()), before: Some(before.clone()) },
            UndoRecord { table: "t".into(), key: RowKey::from_stored("[\"é\"]".into()), before: None },
        ];
        let text = UndoRecord::journal_text(&records, |r| Ok::<_, ()>(r.meta_value())).unwrap();
        let tree = json!([
            {"t": "t\"q", "k": "[1]", "b": {"v": before.values, "m": before.meta_value()}},
            {"t": "t", "k": "[\"é\"]", "b": null},
        ]);
        assert_eq!(text, tree.to_string());
        assert_eq!(UndoRecord::journal_text(&[], |r| Ok::<_, ()>(r.meta_value())).unwrap(), "[]");
    }
    use super::*;

    #[test]
    fn row_keys_parse_only_from_their_canonical_text() {
        let schema_key = r#"["A",1]"#;
        assert_eq!(schema_key.parse::<RowKey>().map(|k| k.to_string()).as_deref(), Ok(schema_key));
        for bad in ["", "[]", "{\"a\":1}", "[1, 2]", "\"A\"", "[1"] {
            assert!(bad.parse::<RowKey>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_ids_read_back_what_they_write() {
        let id = crate::dag::NodeId(42);
        assert_eq!(id.to_string().parse::<crate::dag::NodeId>(), Ok(id));
        assert_eq!(serde_json::to_string(&id).unwrap(), "42");
        assert_eq!(serde_json::from_str::<crate::dag::NodeId>("42").unwrap(), id);
    }
}
