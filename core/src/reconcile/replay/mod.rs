//! Rewinding and replaying a region of the canonical order.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::hash::{EntryHash, Hash};
use crate::identity::KeyId;
use crate::payload::{Op, SignedPayload};
use crate::rules::{parse_rule, Operation, Rule};
use crate::schema::{SchemaError, TableSchema};

use super::authority::{carries_authority, Authority, AuthorityScope};
use super::derived_values::fill_added_defaults;
use super::eval::{rule_holds, RuleInput, RuleRows};
use super::void_deletes::{next_void, segment_starts, CancelledDelete, Voided};
mod constraints;
mod overlay;

use overlay::{Overlay, Written};

use super::{
    row_key, Cancel, CancelCode, Changes, JournalEntry, OrderKey, ReconcileError, RegionEntry, ReplicaStore, RowChange,
    RowKey, RowState, UndoRecord, Verdict,
};

/// Whether an entry carries a barrier operation: one whose effect a concurrent entry must
/// take into account (a delete, or any authority change).
pub(super) fn is_barrier(p: &SignedPayload) -> bool {
    carries_authority(p) || p.ops.iter().any(|op| matches!(op, Op::Delete { .. }))
}

fn short(h: &impl std::fmt::Display) -> String {
    h.to_string().chars().take(10).collect()
}

/// A row of a table: the table's name is shared (a clone is a count, not a copy of the
/// name), since every row the run touches is held under it in several maps.
type Slot = (Rc<str>, RowKey);

use std::cell::RefCell;
use std::rc::Rc;

use crate::FastMap as HashMap;
use crate::FastSet as HashSet;

/// Row states by table and key (`None`: no row at all).
type RowMap = HashMap<Slot, Option<RowState>>;

/// The kind of cancellation a row's schema check gives.
fn schema_code(e: &SchemaError) -> CancelCode {
    match e {
        SchemaError::NotNull { .. } => CancelCode::NotNullViolation,
        _ => CancelCode::InvalidOperation,
    }
}

pub(super) struct Replay<'a, R: ReplicaStore> {
    store: &'a R,
    auth: &'a Authority,
    /// Row states as changed by this run.
    overlay: Overlay,
    /// Row states read from the store.
    cache: RowMap,
    /// Rows deleted by barrier entries of the region whose author stands: slot -> (region
    /// index, entry).
    lookahead: HashMap<Slot, Vec<(usize, EntryHash)>>,
    /// Region indices of the deletes in `lookahead`.
    lookahead_deletes: Vec<usize>,
    /// Deletes of `lookahead` that made a row invisible to an entry, in this round.
    counted: RefCell<HashSet<EntryHash>>,
    /// Deletes that ended up cancelled and so count for nothing (`void_deletes`).
    voided: Voided,
    rules: HashMap<(String, String, String), Option<Rule>>,
    /// The key id of the author of the entry being replayed (written out only for a rule).
    author: KeyId,
    /// Tables found replicated at the position of the entry being replayed.
    replicated: Vec<String>,
    /// The map each entry's writes are collected in, kept between entries so its memory is
    /// allocated once per run, not once per entry.
    scratch: RowMap,
    /// The names of the group's tables, shared by every slot of the run (`slot`).
    table_names: Vec<Rc<str>>,
}

impl<'a, R: ReplicaStore> Replay<'a, R> {
    pub(super) fn new(store: &'a R, auth: &'a Authority) -> Self {
        Replay {
            store,
            auth,
            overlay: Overlay::default(),
            cache: HashMap::default(),
            lookahead: HashMap::default(),
            lookahead_deletes: Vec::new(),
            counted: RefCell::new(HashSet::default()),
            voided: HashMap::default(),
            rules: HashMap::default(),
            author: KeyId(Hash([0; 32])),
            replicated: Vec::new(),
            scratch: HashMap::default(),
            table_names: auth.tables().map(|t| Rc::from(t.table.as_str())).collect(),
        }
    }

    /// The run's shared copy of a table's name.
    fn table_name(&self, table: &str) -> Rc<str> {
        self.table_names.iter().find(|t| ***t == *table).map_or_else(|| Rc::from(table), Rc::clone)
    }

    /// The slot of row `key` of `table`.
    pub(super) fn slot(&self, table: &str, key: RowKey) -> Slot {
        (self.table_name(table), key)
    }

    fn schema(&self, table: &str) -> Option<&'a TableSchema> {
        self.auth.schema(table)
    }

    fn key_of(&self, table: &str, key: &Map<String, Value>) -> Option<RowKey> {
        self.schema(table).and_then(|s| row_key(s, key))
    }

    pub(super) fn run(mut self, region: &[RegionEntry]) -> Result<Changes, ReconcileError> {
        let mut changes = Changes::default();
        self.prefetch(region)?;
        // Rewind: undo the applied entries of the region, latest first.
        for (_, _, journal) in region.iter().rev() {
            if let Some(j) = journal {
                if j.verdict.is_ok() && !j.undo.is_empty() {
                    changes.stats.rewound += 1;
                }
                for u in j.undo.iter().rev() {
                    let slot = self.slot(&u.table, u.key.clone());
                    let before = self.with_defaults(&u.table, u.before.clone())?;
                    self.rewrite(slot, before);
                }
            }
        }
        // Deletes whose author stands count for every concurrent entry, even earlier ones.
        let mut standing = Vec::with_capacity(region.len());
        for (i, (order, payload, _)) in region.iter().enumerate() {
            let is_auth = self.auth.is_authority(&order.hash);
            let s = if is_auth {
                Ok(())
            } else {
                self.auth.standing(self.store.dag(), &payload.author, &order.hash, false)?
            };
            if !is_auth && s.is_ok() {
                let mut any = false;
                for op in &payload.ops {
                    if let Op::Delete { table, key } = op {
                        if let Some(k) = self.key_of(table, key) {
                            let slot = self.slot(table, k);
                            self.lookahead.entry(slot).or_default().push((i, order.hash));
                            any = true;
                        }
                    }
                }
                if any {
                    self.lookahead_deletes.push(i);
                }
            }
            standing.push(s);
        }
        // Replay; then again from the first segment where a cancelled delete was counted,
        // without it, until none is (void_deletes).
        changes.first_placed.reserve(region.len());
        let mut segments: Option<Vec<usize>> = None;
        let mut from = 0;
        loop {
            self.replay_from(region, &standing, from, &mut changes)?;
            let cancelled = self.cancelled_deletes(&changes);
            if !cancelled.iter().any(|c| c.counted_by_another) {
                break;
            }
            if segments.is_none() {
                segments = Some(self.segments(region)?);
            }
            let Some((start, voided)) = next_void(&cancelled, segments.as_deref().unwrap_or_default()) else {
                break;
            };
            for (h, cancel) in voided {
                self.voided.insert(h, cancel);
            }
            self.rewind_to(region, start, &mut changes);
            from = start;
        }
        changes.rows = self
            .overlay
            .into_rows()
            .into_iter()
            .map(|(slot, w)| RowChange {
                table: slot.0.to_string(),
                key: slot.1,
                state: w.state,
                was_stored: w.was_stored,
            })
            .collect();
        Ok(changes)
    }

    /// Replays the region from index `from` on (the journal holds the entries before it).
    fn replay_from(
        &mut self,
        region: &[RegionEntry],
        standing: &[Result<(), Cancel>],
        from: usize,
        changes: &mut Changes,
    ) -> Result<(), ReconcileError> {
        for (i, ((order, payload, recorded), standing)) in region.iter().zip(standing).enumerate().skip(from) {
            changes.stats.replayed += 1;
            if recorded.is_none() {
                changes.first_placed.insert(order.hash);
            }
            let (verdict, undo) = if let Some(v) = self.auth.verdict(&order.hash) {
                (v.clone(), Vec::new())
            } else if let Some(cancel) = self.voided.get(&order.hash) {
                (Verdict::cancelled(cancel.clone()), Vec::new())
            } else {
                match standing {
                    Err(c) => (Verdict::cancelled(c.clone()), Vec::new()),
                    Ok(()) => self.apply_entry(i, order, payload, changes)?,
                }
            };
            if !verdict.is_ok() {
                changes.stats.cancelled += 1;
            }
            changes.journal.push((order.hash, JournalEntry { order: *order, verdict, undo }));
        }
        Ok(())
    }

    /// The deletes that counted for concurrent entries in this round and ended cancelled.
    fn cancelled_deletes(&self, changes: &Changes) -> Vec<CancelledDelete> {
        let counted = self.counted.borrow();
        let mut out = Vec::new();
        for &i in &self.lookahead_deletes {
            let Some((hash, j)) = changes.journal.get(i) else { continue };
            if j.verdict.is_ok() || self.voided.contains_key(hash) || self.auth.verdict(hash).is_some() {
                continue;
            }
            out.push(CancelledDelete {
                index: i,
                hash: *hash,
                code: j.verdict.code.unwrap_or(CancelCode::RowGone),
                reason: j.verdict.reason.clone().unwrap_or_default(),
                responsible: j.verdict.responsible.clone(),
                counted_by_another: counted.contains(hash),
            });
        }
        out
    }

    /// The start of each index's segment (void_deletes): a delete ties together every index
    /// from the earliest entry concurrent to it up to its own.
    fn segments(&self, region: &[RegionEntry]) -> Result<Vec<usize>, ReconcileError> {
        let frontier = self.store.dag().frontier()?;
        let index: HashMap<EntryHash, usize> = region.iter().enumerate().map(|(i, e)| (e.0.hash, i)).collect();
        let mut reach = Vec::with_capacity(self.lookahead_deletes.len());
        for &j in &self.lookahead_deletes {
            let h = region[j].0.hash;
            let fork = self.store.dag().fork_position(&frontier, &[h].into())?;
            // Entries before the region are in every region delete's history (the rewind point
            // is widened to the fork of each), so one not in the region means index 0.
            let earliest = fork.fork_a.iter().map(|f| index.get(f).copied().unwrap_or(0)).fold(j, usize::min);
            reach.push((earliest, j));
        }
        Ok(segment_starts(region.len(), &reach))
    }

    /// Undoes what this run replayed from index `start` on, latest first.
    fn rewind_to(&mut self, region: &[RegionEntry], start: usize, changes: &mut Changes) {
        while changes.journal.len() > start {
            let Some((_, j)) = changes.journal.pop() else { break };
            if j.verdict.is_ok() {
                let ops = region.get(changes.journal.len()).map_or(0, |e| e.1.ops.len() as u64);
                changes.stats.row_ops = changes.stats.row_ops.saturating_sub(ops);
            } else {
                changes.stats.cancelled = changes.stats.cancelled.saturating_sub(1);
            }
            for u in j.undo.into_iter().rev() {
                let slot = self.slot(&u.table, u.key);
                // Taken in this run, after the store's rows had every added column.
                self.rewrite(slot, u.before);
            }
        }
        let mut counted = self.counted.borrow_mut();
        for e in region.iter().skip(start) {
            counted.remove(&e.0.hash);
        }
    }

    /// A row as an undo record kept it, with the defaults of the columns added since that
    /// its incarnation's insert did not know (docs/SEMANTICS.md, section 5): the record was
    /// taken before the schema change, and the store filled them into its rows only.
    fn with_defaults(&self, table: &str, state: Option<RowState>) -> Result<Option<RowState>, ReconcileError> {
        let Some(mut row) = state else { return Ok(None) };
        if let (true, Some(schema)) = (row.is_live(), self.schema(table)) {
            let dag = self.store.dag();
            fill_added_defaults(dag, self.auth, schema, &row.inserted_by, &row.writers, &mut row.values)?;
        }
        Ok(Some(row))
    }

    /// Sets a row's state in the overlay (an undo record's `before`, when rewinding).
    fn rewrite(&mut self, slot: Slot, state: Option<RowState>) {
        if let Some(w) = self.overlay.get_mut(&slot) {
            w.state = state;
            return;
        }
        // Every slot the run writes was read first; one it somehow was not is upserted.
        let was_stored = !matches!(self.cache.get(&slot), Some(None));
        self.overlay.insert(slot, Written { state, was_stored });
    }

    /// Reads every row the region touches, one request per table.
    fn prefetch<'r>(&mut self, region: &'r [RegionEntry]) -> Result<(), ReconcileError> {
        let mut wanted: BTreeMap<&'r str, Vec<RowKey>> = BTreeMap::new();
        for (_, payload, journal) in region {
            for op in &payload.ops {
                let Some((table, cols)) = op.row() else { continue };
                if let Some(k) = self.key_of(table, cols) {
                    wanted.entry(table).or_default().push(k);
                }
            }
            if let Some(j) = journal {
                for u in &j.undo {
                    wanted.entry(&u.table).or_default().push(u.key.clone());
                }
            }
        }
        // Sized once: growing these maps row by row rehashed every key again and again.
        let total: usize = wanted.values().map(Vec::len).sum();
        self.cache.reserve(total);
        self.overlay.reserve(total);
        // The cache is empty: this is the run's first read.
        for (table, mut keys) in wanted {
            keys.sort_unstable();
            keys.dedup();
            let found = self.store.rows(table, &keys)?;
            let name = self.table_name(table);
            for k in keys {
                self.cache.insert((Rc::clone(&name), k), None);
            }
            for (k, row) in found {
                self.cache.insert((Rc::clone(&name), k), Some(row));
            }
        }
        Ok(())
    }

    fn read(&mut self, local: &RowMap, slot: &Slot) -> Result<Option<RowState>, ReconcileError> {
        if let Some(s) =
            local.get(slot).or_else(|| self.overlay.get(slot).map(|w| &w.state)).or_else(|| self.cache.get(slot))
        {
            return Ok(s.clone());
        }
        let found = self.store.rows(&slot.0, std::slice::from_ref(&slot.1))?.into_iter().next().map(|(_, r)| r);
        self.cache.insert(slot.clone(), found.clone());
        Ok(found)
    }

    /// Whether the entry at region index `i` sees `row`: the row is live, its incarnation is
    /// in the entry's causal past (or the entry's own), and no concurrent delete takes it away.
    fn visible(
        &self,
        slot: &Slot,
        row: &RowState,
        i: usize,
        h: &EntryHash,
    ) -> Result<Result<(), Cancel>, ReconcileError> {
        if let Some(d) = &row.deleted_by {
            return Ok(Err(Cancel::new(
                CancelCode::RowGone,
                format!("it was deleted by entry {}", short(d)),
                vec![*d],
            )));
        }
        if row.inserted_by != *h && !self.store.dag().precedes(&row.inserted_by, h)? {
            return Ok(Err(Cancel::new(
                CancelCode::RowGone,
                format!("its current version was inserted by concurrent entry {}", short(&row.inserted_by)),
                vec![row.inserted_by],
            )));
        }
        if let Some(deletes) = self.lookahead.get(slot) {
            for (j, d) in deletes {
                // A delete acts only on the incarnation it saw: one that the row's current
                // incarnation is not in the history of (deleted and inserted again
                // concurrently) takes nothing away from it.
                if *j > i
                    && d != h
                    && !self.voided.contains_key(d)
                    && !self.store.dag().precedes(h, d)?
                    && self.store.dag().precedes(&row.inserted_by, d)?
                {
                    self.counted.borrow_mut().insert(*d);
                    return Ok(Err(Cancel::new(
                        CancelCode::RowGone,
                        format!("it was deleted by concurrent entry {}", short(d)),
                        vec![*d],
                    )));
                }
            }
        }
        Ok(Ok(()))
    }

    fn rows_where(
        &mut self,
        local: &RowMap,
        table: &str,
        equal: &[(String, Value)],
    ) -> Result<Vec<(RowKey, RowState)>, ReconcileError> {
        let matches = |r: &RowState| r.is_live() && equal.iter().all(|(c, v)| r.values.get(c) == Some(v));
        let mut out: BTreeMap<RowKey, RowState> = BTreeMap::new();
        for (k, _) in self.store.rows_where(table, equal)? {
            let slot = self.slot(table, k.clone());
            if let Some(r) = self.read(local, &slot)? {
                if matches(&r) {
                    out.insert(k, r);
                }
            }
        }
        // The run's writes, then this entry's.
        let overlay = self.overlay.iter().map(|(slot, w)| (slot, &w.state));
        for ((t, k), r) in overlay.chain(local.iter()) {
            if **t != *table {
                continue;
            }
            match r {
                Some(r) if matches(r) => {
                    out.insert(k.clone(), r.clone());
                }
                _ => {
                    out.remove(k);
                }
            }
        }
        // `read` already gave the current version of what the store matched, and the layers
        // above were applied in order (this entry's writes last).
        Ok(out.into_iter().collect())
    }

    fn apply_entry(
        &mut self,
        i: usize,
        order: &OrderKey,
        payload: &SignedPayload,
        changes: &mut Changes,
    ) -> Result<(Verdict, Vec<UndoRecord>), ReconcileError> {
        let mut local = std::mem::take(&mut self.scratch);
        local.reserve(payload.ops.len());
        let outcome = self.apply_entry_with(i, order, payload, changes, &mut local);
        local.clear();
        self.scratch = local;
        outcome
    }

    fn apply_entry_with(
        &mut self,
        i: usize,
        order: &OrderKey,
        payload: &SignedPayload,
        changes: &mut Changes,
        local: &mut RowMap,
    ) -> Result<(Verdict, Vec<UndoRecord>), ReconcileError> {
        let h = order.hash;
        self.author = payload.author;
        self.replicated.clear();
        let mut deleted: Vec<(String, RowState)> = Vec::new();
        for op in &payload.ops {
            let outcome = match op {
                Op::Insert { table, row } => self.insert(i, &h, table, row, local)?,
                Op::Update { table, key, set, unset } => self.update(i, &h, table, key, set, unset, local)?,
                Op::Delete { table, key } => self.delete(i, &h, table, key, local, &mut deleted)?,
                _ => Err(Cancel::new(
                    CancelCode::InvalidOperation,
                    "authority operations cannot be mixed with row operations".to_string(),
                    vec![],
                )),
            };
            if let Err(c) = outcome {
                let at = op.row().map(|(table, key)| (table, self.key_of(table, key)));
                let verdict = Verdict::cancelled(c);
                return Ok((
                    match at {
                        Some((table, key)) => verdict.at_row(table, key),
                        None => verdict,
                    },
                    Vec::new(),
                ));
            }
        }
        if let Err(c) = self.restrict(i, &h, &deleted, local)? {
            return Ok((Verdict::cancelled(c), Vec::new()));
        }
        // The entry stands: its rows join the overlay, and the undo record keeps what each
        // was before, in key order.
        let mut written: Vec<(Slot, Option<RowState>)> = local.drain().collect();
        written.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut undo: Vec<UndoRecord> = Vec::with_capacity(written.len());
        for (slot, after) in written {
            if let Some(current) = self.overlay.get_mut(&slot) {
                let before = std::mem::replace(&mut current.state, after);
                undo.push(UndoRecord { table: slot.0.to_string(), key: slot.1, before });
                continue;
            }
            // Not written by the run yet: what it was is what the store holds.
            let before = match self.cache.get(&slot) {
                Some(b) => b.clone(),
                None => self.read(&RowMap::default(), &slot)?,
            };
            let was_stored = before.is_some();
            undo.push(UndoRecord { table: slot.0.to_string(), key: slot.1.clone(), before });
            self.overlay.insert(slot, Written { state: after, was_stored });
        }
        changes.stats.row_ops += payload.ops.len() as u64;
        Ok((Verdict::ok(), undo))
    }

    /// The table's schema, if the table is replicated at the position of entry `h` (the one
    /// being replayed: what was found is kept for its other operations).
    fn table_for(&mut self, h: &EntryHash, table: &str) -> Result<Result<&'a TableSchema, Cancel>, ReconcileError> {
        let Some(schema) = self.schema(table) else {
            return Ok(Err(Cancel::new(
                CancelCode::TableNotReplicated,
                format!("table {table} is not replicated in the group"),
                vec![],
            )));
        };
        if !self.replicated.iter().any(|t| t == table) {
            if !self.auth.replicated_at(self.store.dag(), table, h)? {
                return Ok(Err(Cancel::new(
                    CancelCode::TableNotReplicated,
                    format!("table {table} is not replicated at the entry's position"),
                    vec![],
                )));
            }
            self.replicated.push(table.to_string());
        }
        Ok(Ok(schema))
    }

    fn insert(
        &mut self,
        i: usize,
        h: &EntryHash,
        table: &str,
        row: &Map<String, Value>,
        local: &mut RowMap,
    ) -> Result<Result<(), Cancel>, ReconcileError> {
        let schema = match self.table_for(h, table)? {
            Ok(s) => s,
            Err(c) => return Ok(Err(c)),
        };
        let mut full = row.clone();
        fill_added_defaults(self.store.dag(), self.auth, schema, h, &BTreeMap::new(), &mut full)?;
        if let Err(e) = schema.check_row(&full, true) {
            return Ok(Err(Cancel::new(schema_code(&e), format!("insert into {table}: {e}"), vec![])));
        }
        let Some(key) = row_key(schema, &full) else {
            return Ok(Err(Cancel::new(
                CancelCode::InvalidOperation,
                format!("insert into {table} has no primary key value"),
                vec![],
            )));
        };
        let slot = self.slot(table, key.clone());
        if let Some(existing) = self.read(local, &slot)? {
            if existing.is_live() {
                return Ok(Err(Cancel::new(
                    CancelCode::UniqueViolation,
                    format!(
                        "duplicate primary key {key} in {table}: the row was already inserted by entry {}",
                        short(&existing.inserted_by)
                    ),
                    vec![existing.inserted_by],
                )));
            }
        }
        if let Err(c) = self.uniques(local, schema, &key, &full, None)? {
            return Ok(Err(c));
        }
        if let Err(c) = self.foreign_keys(i, h, local, schema, &full, None)? {
            return Ok(Err(c));
        }
        if let Err(c) = self.rules(i, h, local, schema, Operation::Insert, Some(&full), None)? {
            return Ok(Err(c));
        }
        if let Err(c) = self.checks(schema, &full)? {
            return Ok(Err(c));
        }
        local
            .insert(slot, Some(RowState { values: full, inserted_by: *h, writers: BTreeMap::new(), deleted_by: None }));
        Ok(Ok(()))
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        i: usize,
        h: &EntryHash,
        table: &str,
        key: &Map<String, Value>,
        set: &Map<String, Value>,
        unset: &[String],
        local: &mut RowMap,
    ) -> Result<Result<(), Cancel>, ReconcileError> {
        let schema = match self.table_for(h, table)? {
            Ok(s) => s,
            Err(c) => return Ok(Err(c)),
        };
        let Some(k) = row_key(schema, key) else {
            return Ok(Err(Cancel::new(
                CancelCode::InvalidOperation,
                format!("update of {table} has no primary key value"),
                vec![],
            )));
        };
        if set.keys().chain(unset.iter()).any(|c| schema.primary_key.contains(c)) {
            return Ok(Err(Cancel::new(
                CancelCode::InvalidOperation,
                format!("update of {table} {k} changes the primary key"),
                vec![],
            )));
        }
        let slot = self.slot(table, k.clone());
        let Some(current) = self.read(local, &slot)? else {
            return Ok(Err(Cancel::new(
                CancelCode::RowGone,
                format!("update of {table} {k}: the row does not exist in the entry's view"),
                vec![],
            )));
        };
        if let Err(gone) = self.visible(&slot, &current, i, h)? {
            let why = gone.reason;
            return Ok(Err(Cancel::new(
                gone.code,
                format!("update of {table} {k}: the row is gone, {why}"),
                gone.responsible,
            )));
        }
        let mut next = current.clone();
        for (c, v) in set {
            next.values.insert(c.clone(), v.clone());
            next.writers.insert(c.clone(), *h);
        }
        for c in unset {
            next.values.remove(c);
            next.writers.insert(c.clone(), *h);
        }
        if let Err(e) = schema.check_row(&next.values, true) {
            return Ok(Err(Cancel::new(schema_code(&e), format!("update of {table} {k}: {e}"), vec![])));
        }
        let changed: Vec<String> = set.keys().cloned().chain(unset.iter().cloned()).collect();
        if let Err(c) = self.uniques(local, schema, &k, &next.values, Some(&changed))? {
            return Ok(Err(c));
        }
        if let Err(c) = self.foreign_keys(i, h, local, schema, &next.values, Some(&changed))? {
            return Ok(Err(c));
        }
        if let Err(c) = self.rules(i, h, local, schema, Operation::Update, Some(&next.values), Some(&current.values))? {
            return Ok(Err(c));
        }
        if let Err(Cancel { code, reason: why, .. }) = self.checks(schema, &next.values)? {
            // Name the writers of the columns this entry did not see: the merge partners.
            let mut others: Vec<EntryHash> = Vec::new();
            for w in current.writers.values().chain(std::iter::once(&current.inserted_by)) {
                if w != h && !self.store.dag().precedes(w, h)? && !others.contains(w) {
                    others.push(*w);
                }
            }
            let merged = if others.is_empty() {
                String::new()
            } else {
                format!(" (merged with concurrent entry {})", others.iter().map(short).collect::<Vec<_>>().join(", "))
            };
            return Ok(Err(Cancel::new(code, format!("update of {table} {k}: {why}{merged}"), others)));
        }
        local.insert(slot, Some(next));
        Ok(Ok(()))
    }

    fn delete(
        &mut self,
        i: usize,
        h: &EntryHash,
        table: &str,
        key: &Map<String, Value>,
        local: &mut RowMap,
        deleted: &mut Vec<(String, RowState)>,
    ) -> Result<Result<(), Cancel>, ReconcileError> {
        let schema = match self.table_for(h, table)? {
            Ok(s) => s,
            Err(c) => return Ok(Err(c)),
        };
        let Some(k) = row_key(schema, key) else {
            return Ok(Err(Cancel::new(
                CancelCode::InvalidOperation,
                format!("delete from {table} has no primary key value"),
                vec![],
            )));
        };
        let slot = self.slot(table, k);
        let Some(current) = self.read(local, &slot)? else { return Ok(Ok(())) };
        // Deleting a row that is already gone, or an incarnation the author never saw, does
        // nothing (deletes are idempotent and only remove what their author saw).
        if !current.is_live() || (current.inserted_by != *h && !self.store.dag().precedes(&current.inserted_by, h)?) {
            return Ok(Ok(()));
        }
        if let Err(c) = self.rules(i, h, local, schema, Operation::Delete, None, Some(&current.values))? {
            return Ok(Err(c));
        }
        deleted.push((table.to_string(), current.clone()));
        let tomb = RowState {
            values: Map::new(),
            inserted_by: current.inserted_by,
            writers: BTreeMap::new(),
            deleted_by: Some(*h),
        };
        local.insert(slot, Some(tomb));
        Ok(Ok(()))
    }
}
