//! The reconciliation engine (`causal_core::reconcile`) over Postgres: the journal in
//! `causal.journal`, rows and their causal metadata in `causal.row_meta`, and the user
//! tables, which replay writes under `session_replication_role = replica` (so neither capture
//! nor user triggers fire, as with logical replication).
//!
//! Every import and every local commit runs the engine in its own transaction, so the tables
//! always equal the group's view at the frontier, and a crash leaves all of a run or none.
//! [`placement`] runs it for an import, a local commit or the backlog of local commits.
//!
//! Uses [`crate::catalog`] and [`crate::pg`].

mod derived;
mod entry_names;
mod fresh_rows;
pub mod frontier;
mod hooks;
pub mod journal_runs;
mod meta_rows;
pub mod placement;
pub mod row_check;
mod user_rows;

use entry_names::EntryNames;
use meta_rows::*;
use user_rows::*;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use pgrx::{pg_sys, JsonB};
use serde_json::{json, Map, Value};

use causal_core::reconcile::{
    self, Changes, JournalEntry, OrderKey, ReconcileError, ReplicaStore, RowKey, RowState, Status, UndoRecord, Verdict,
};
use causal_core::schema::{ColumnType, TableSchema};
use causal_core::{Dag, DagStore, EntryHash};

use crate::catalog::group::Group;
use crate::catalog::store::SpiStore;
use crate::error::CausalError;
use crate::pg::direct::{Cell, Inserter};
use crate::pg::spi::{exec_prepared, exec_prepared_count, get_prepared, run_prepared};
use causal_core::sql_expr::sql_literal;
use causal_core::sql_name::quote_ident;

thread_local! {
    /// Each group's resolved authority, with the authority version it was resolved at (the
    /// group's state counts the entries carrying authority). Forgotten when a transaction
    /// aborts: the run that resolved it may not have been applied.
    static AUTHORITY: RefCell<crate::pg::xact::ScopedMap<String, (u32, std::rc::Rc<reconcile::Authority>)>> =
        RefCell::default();
}

/// Forgets the authorities resolved in undone work: the run that resolved one may not have
/// been applied, and its version will be reached again by other entries.
pub fn forget(undone: crate::pg::xact::Undone) {
    AUTHORITY.with(|a| a.borrow_mut().forget(undone));
}

fn store_err(e: impl std::fmt::Display) -> ReconcileError {
    ReconcileError::Store(e.to_string())
}

/// The owner of a group's table, by its name in the group (looked up once per engine run).
pub fn owner_of(table: &str) -> Result<Option<pg_sys::Oid>, ReconcileError> {
    crate::pg::spi::table_owner(&sql_table(table)?).map_err(store_err)
}

/// A group's replica state in the catalog.
pub struct SpiReplica {
    pub(crate) group: String,
    /// The group's number (`group_defs.grp`), which keys its rows.
    pub(crate) num: i32,
    pub(crate) dag: Dag<SpiStore>,
    /// Entries written locally in this transaction: their rows are already in the tables. A
    /// set: a placement run asks about each of its entries (a list made a run of 20,000
    /// single-row entries quadratic, a third of placing's time in a profile).
    pub(crate) local: causal_core::FastSet<EntryHash>,
    /// The owners of the group's tables, found in this run: replay writes and checks a table
    /// as its owner.
    owners: RefCell<HashMap<String, Option<pg_sys::Oid>>>,
    /// The group's authority over its stored entries, once known: rows' values are derived
    /// with it (their columns' defaults).
    authority: RefCell<Option<std::rc::Rc<reconcile::Authority>>>,
    /// Payloads read to derive rows' values, kept for the run.
    payloads: RefCell<derived::Payloads>,
    /// What the run read of the sets of fresh rows (`fresh_rows`).
    fresh: RefCell<fresh_rows::FreshCache>,
}

fn undo_from(v: &Value, names: &EntryNames) -> Result<Vec<UndoRecord>, ReconcileError> {
    let bad = || ReconcileError::Corrupt(format!("bad undo record {v}"));
    let records = v.as_array().ok_or_else(bad)?;
    names.prepare_reads(records.iter().filter_map(|r| r.get("b").and_then(|b| b.get("m"))))?;
    let mut out = Vec::new();
    for r in records {
        let before =
            match r.get("b") {
                None | Some(Value::Null) => None,
                Some(b) => Some(names.state(
                    b.get("v").and_then(Value::as_object).cloned().ok_or_else(bad)?,
                    b.get("m").ok_or_else(bad)?,
                )?),
            };
        out.push(UndoRecord {
            table: r.get("t").and_then(Value::as_str).ok_or_else(bad)?.to_string(),
            key: RowKey::from_stored(r.get("k").and_then(Value::as_str).ok_or_else(bad)?.to_string()),
            before,
        });
    }
    Ok(out)
}

/// A height as the catalog stores it (`int4`), as the engine counts it.
fn stored_height(height: i32) -> Result<u32, ReconcileError> {
    u32::try_from(height).map_err(|_| ReconcileError::Corrupt(format!("negative height {height}")))
}

fn node_i32(id: causal_core::dag::NodeId) -> Result<i32, ReconcileError> {
    i32::try_from(id.0).map_err(|_| ReconcileError::Corrupt(format!("node id {id} out of range")))
}

fn parse_hash(s: &str) -> Result<EntryHash, ReconcileError> {
    s.parse().map_err(|_| ReconcileError::Corrupt(format!("bad hash {s}")))
}

type JournalRow =
    (Option<String>, Option<i32>, Option<String>, Option<String>, Option<Vec<String>>, Option<String>, Option<String>);

/// The undo text of an entry all of whose rows are new: what the engine's records would say,
/// one per row its inserts create, each with no prior state. Empty, so that such an entry's
/// journal row is 8 bytes shorter (40 bytes of tuple, the next alignment step down from 48).
const FRESH_UNDO: &str = "";

fn journal_row(
    r: JournalRow,
    names: &EntryNames,
    fresh: impl FnOnce(&EntryHash) -> Result<Vec<UndoRecord>, ReconcileError>,
) -> Result<Option<(EntryHash, JournalEntry)>, ReconcileError> {
    let (Some(hash), Some(height), Some(status)) = (r.0, r.1, r.2) else { return Ok(None) };
    let hash = parse_hash(&hash)?;
    let responsible = r.4.unwrap_or_default().iter().map(|h| parse_hash(h)).collect::<Result<Vec<_>, _>>()?;
    let (code, row) = match r.6 {
        Some(c) => meta_rows::read_cause(&c)?,
        None => (None, None),
    };
    let status = if status == "ok" { Status::Ok } else { Status::Cancelled };
    let verdict = Verdict { status, reason: r.3, responsible, code, row };
    let undo = match r.5 {
        Some(u) if u == FRESH_UNDO => fresh(&hash)?,
        Some(u) => {
            let v = causal_core::json::parse(&u).map_err(|e| ReconcileError::Corrupt(format!("undo record: {e}")))?;
            undo_from(&v, names)?
        }
        None => Vec::new(),
    };
    let height = stored_height(height)?;
    Ok(Some((hash, JournalEntry { order: OrderKey { height, hash }, verdict, undo })))
}

fn read_journal(tuples: pgrx::spi::SpiTupleTable<'_>) -> Result<Vec<JournalRow>, pgrx::spi::Error> {
    let mut out = Vec::new();
    for t in tuples {
        out.push((t.get(1)?, t.get(2)?, t.get(3)?, t.get(4)?, t.get(5)?, t.get(6)?, t.get(7)?));
    }
    Ok(out)
}

/// The journal's `cause` as text, for a select list (NULL in a catalog not upgraded yet).
fn cause_column(qualifier: &str) -> String {
    if crate::catalog::shape::journal_has_cause() {
        format!("{qualifier}cause::text")
    } else {
        "NULL::text".to_string()
    }
}

/// The SQL expression that turns field `c` of the JSON object `r` into the column's type.
fn decode_expr(c: &str, ty: &ColumnType) -> String {
    decode_field(&format!("(r->>{})", sql_literal(c)), ty)
}

/// The SQL expression that turns a JSON text `field` (an encoded value) into `ty`.
fn decode_field(field: &str, ty: &ColumnType) -> String {
    match ty {
        ColumnType::Bytea => format!("pg_catalog.decode({field}, 'base64')"),
        other => format!("CAST({field} AS {})", causal_core::sql_expr::qualified_type(other)),
    }
}

/// A group's table name as SQL: quoted and qualified, so it names the same table whatever
/// the session's `search_path`.
fn sql_table(table: &str) -> Result<String, ReconcileError> {
    causal_core::sql_name::TableName::parse("table", table)
        .map(|t| t.to_sql())
        .map_err(|e| ReconcileError::Corrupt(e.to_string()))
}

thread_local! {
    /// Per (table, schema digest): the CHECK-evaluating statement.
    static CHECK_SQL: RefCell<HashMap<String, String>> = RefCell::new(HashMap::new());
}

/// The statement that names the first CHECK constraint a row violates. The expressions are
/// written from their parsed trees (`causal_core::sql_expr`), never from the recorded text.
fn check_sql(schema: &TableSchema) -> Result<String, ReconcileError> {
    let key = format!("{}:{}", schema.table, schema.to_value());
    if let Some(s) = CHECK_SQL.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(s);
    }
    let projection: Vec<String> =
        schema.columns.iter().map(|c| format!("{} AS {}", decode_expr(&c.name, &c.ty), quote_ident(&c.name))).collect();
    let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    let mut cases = Vec::new();
    for c in &schema.checks {
        let e = causal_core::sql_expr::parse(&c.expression, causal_core::sql_expr::Use::Check { columns: &columns })
            .map_err(|e| ReconcileError::Corrupt(format!("CHECK constraint {} of {}: {e}", c.name, schema.table)))?;
        cases.push(format!("WHEN ({}) IS FALSE THEN {}", e.to_sql(), sql_literal(&c.name)));
    }
    let sql = format!(
        "SELECT CASE {} END FROM (SELECT {} FROM (SELECT $1::pg_catalog.jsonb AS r) AS x) AS t",
        cases.join(" "),
        projection.join(", ")
    );
    CHECK_SQL.with(|c| c.borrow_mut().insert(key, sql.clone()));
    Ok(sql)
}

/// Evaluates the table's CHECK constraints on an encoded row in Postgres: the first violated.
/// A CHECK that raises an error on the row (a division by zero, say) counts as violated, with
/// the error as its reason: an INSERT of the row would fail the same way, and the failure
/// must cancel the entry on every replica rather than stop the import.
///
/// Evaluated as the table's `owner` (`spi_util::as_role`), as an INSERT into it would be checked.
pub fn violated_check(
    schema: &TableSchema,
    row: &Map<String, Value>,
    owner: Option<pg_sys::Oid>,
) -> Result<Option<String>, ReconcileError> {
    let sql = check_sql(schema)?;
    let row = JsonB(Value::Object(row.clone()));
    let run = move || {
        run_prepared(&sql, &[row.into()], false, |mut rows| match rows.next() {
            Some(r) => r.get::<String>(1),
            None => Ok(None),
        })
    };
    match crate::pg::spi::as_role(owner, || crate::pg::spi::catching(run)) {
        Ok(found) => found.map_err(store_err),
        Err(message) => Ok(Some(format!("a CHECK constraint raised an error ({message})"))),
    }
}

impl SpiReplica {
    pub fn new(group: &Group) -> SpiReplica {
        SpiReplica::over(group, group.dag(), Vec::new())
    }

    /// The replica of `group` over `dag`, with `local` the entries this transaction wrote.
    pub fn over(group: &Group, dag: Dag<SpiStore>, local: Vec<EntryHash>) -> SpiReplica {
        let local = local.into_iter().collect();
        SpiReplica {
            group: group.id.clone(),
            num: group.num,
            dag,
            local,
            owners: RefCell::default(),
            authority: RefCell::default(),
            payloads: RefCell::default(),
            fresh: RefCell::default(),
        }
    }

    /// The authority rows' values are derived with: the run's (which it resolved or found
    /// kept before reading any row), else that of the placed entries (a read outside a run,
    /// when every stored entry carrying authority is placed: they are placed as they are
    /// stored).
    fn derivation_authority(&self) -> Result<std::rc::Rc<reconcile::Authority>, ReconcileError> {
        if let Some(a) = self.authority.borrow().as_ref() {
            return Ok(a.clone());
        }
        if let Some(a) = self.kept_authority() {
            return Ok(a);
        }
        let a = std::rc::Rc::new(reconcile::placed_authority(self)?);
        self.use_authority(&a);
        Ok(a)
    }

    /// Derives rows' values with `authority` from now on (a run resolved or found it). Payloads
    /// indexed by another authority's schemas are read again.
    fn use_authority(&self, authority: &std::rc::Rc<reconcile::Authority>) {
        let mut current = self.authority.borrow_mut();
        if !current.as_ref().is_some_and(|a| std::rc::Rc::ptr_eq(a, authority)) {
            *current = Some(authority.clone());
            self.payloads.borrow_mut().clear();
        }
    }

    /// The undo records of entry `h`, all of whose rows were new when it was placed: one per
    /// row its operations write, each with no prior state. (Its operations are inserts, and
    /// updates or deletes of rows it inserted itself; a cancelled entry's record holds no undo.)
    fn fresh_undo(&self, h: &EntryHash) -> Result<Vec<UndoRecord>, ReconcileError> {
        let auth = self.derivation_authority()?;
        let mut out: Vec<UndoRecord> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for op in &self.payload(h)?.ops {
            let Some((table, cols)) = op.row() else { continue };
            let key = auth
                .schema(table)
                .and_then(|s| reconcile::row_key(s, cols))
                .ok_or_else(|| ReconcileError::Corrupt(format!("entry {h}: a row of {table} without its key")))?;
            if seen.insert((table.to_string(), key.clone())) {
                out.push(UndoRecord { table: table.to_string(), key, before: None });
            }
        }
        Ok(out)
    }

    /// Rows of `table` as read, with all their values (`derived`).
    fn with_values(&self, table: &str, rows: Vec<StoredRow>) -> Result<Vec<(RowKey, RowState)>, ReconcileError> {
        if !rows.iter().any(|r| r.2) {
            return Ok(rows.into_iter().map(|(k, s, _)| (k, s)).collect());
        }
        let auth = self.derivation_authority()?;
        derived::derive_all(self, &auth, &mut self.payloads.borrow_mut(), table, rows)
    }

    /// How this replica's row metadata names entries.
    fn names(&self) -> EntryNames<'_> {
        EntryNames { store: self.dag.store() }
    }

    /// The owner of the group's table `table`, found once per run.
    fn owner(&self, table: &str) -> Result<Option<pg_sys::Oid>, ReconcileError> {
        if let Some(o) = self.owners.borrow().get(table) {
            return Ok(*o);
        }
        let owner = owner_of(table)?;
        self.owners.borrow_mut().insert(table.to_string(), owner);
        Ok(owner)
    }

    /// Writes the rows of a run into the user tables: live rows are upserted, the others
    /// (gone or tombstoned) deleted.
    fn write_user_tables(&self, changes: &Changes) -> Result<(), ReconcileError> {
        // Per table: keys of rows to delete (JSON texts), the values of live rows to upsert,
        // and those of live rows new to the view (inserted, see `insert_new_rows`).
        type Slot<'c> = (Vec<&'c str>, Vec<&'c Map<String, Value>>, Vec<&'c Map<String, Value>>);
        let mut per_table: BTreeMap<&str, Slot> = BTreeMap::new();
        let local_only = changes.journal.iter().all(|(h, j)| self.local.contains(h) && j.verdict.is_ok());
        if local_only {
            return Ok(()); // the local transaction's own writes are already in the tables
        }
        let resync = self.cancelled_local_rows(changes)?;
        for row in &changes.rows {
            let slot = per_table.entry(row.table.as_str()).or_default();
            match &row.state {
                Some(r) if r.is_live() && !row.was_stored => slot.2.push(&r.values),
                Some(r) if r.is_live() => slot.1.push(&r.values),
                _ => slot.0.push(row.key.as_str()),
            }
        }
        for (table, (deletes, upserts)) in &resync {
            let slot = per_table.entry(table.as_str()).or_default();
            slot.0.extend(deletes.iter().map(RowKey::as_str));
            slot.1.extend(upserts.iter());
        }
        if per_table.is_empty() {
            return Ok(());
        }
        crate::pg::spi::with_replica_role(|| {
            for (name, (deletes, upserts, inserts)) in &per_table {
                let schema = crate::catalog::tables::local_schema_by_name(&self.group, name).map_err(store_err)?;
                let table = &sql_table(name)?;
                let owner = self
                    .owner(name)?
                    .ok_or_else(|| ReconcileError::Corrupt(format!("replicated table {name} is missing")))?;
                // The table's constraints, defaults and index expressions run with its owner's
                // rights (spi_util::as_role).
                crate::pg::spi::as_role(Some(owner), || -> Result<(), ReconcileError> {
                    let pk_cols: Vec<&str> = schema.primary_key.iter().map(String::as_str).collect();
                    if !deletes.is_empty() {
                        let cond: Vec<String> = pk_cols
                            .iter()
                            .enumerate()
                            .map(|(i, c)| {
                                // Keys are JSON arrays of the primary-key values, in key order.
                                let ty = schema.column(c).map(|x| x.ty.clone()).unwrap_or(ColumnType::Text);
                                format!("t.{} = {}", quote_ident(c), decode_field(&format!("(r->>{i})"), &ty))
                            })
                            .collect();
                        let sql = format!(
                            "DELETE FROM {table} t USING unnest($1::text[]::jsonb[]) r WHERE {}",
                            cond.join(" AND ")
                        );
                        exec_prepared(&sql, &[deletes.clone().into()]).map_err(store_err)?;
                    }
                    if !upserts.is_empty() {
                        upsert_rows(table, &schema, upserts)?;
                    }
                    if !inserts.is_empty() {
                        insert_new_rows(table, &schema, inserts)?;
                    }
                    Ok(())
                })?;
            }
            Ok(())
        })
        .map_err(store_err)?
    }
}

impl SpiReplica {
    /// The rows of local commits that this run cancelled when it first placed them, as the
    /// view now has them: (keys to delete, live rows to write back) per table. Such a commit's
    /// own transaction wrote its rows into the tables, and a cancelled entry changes no row of
    /// the view, so the run's row changes do not cover them (docs/SEMANTICS.md §10).
    fn cancelled_local_rows(&self, changes: &Changes) -> Result<BTreeMap<String, RowsToWrite>, ReconcileError> {
        let mut keys: BTreeMap<String, Vec<RowKey>> = BTreeMap::new();
        for (h, j) in &changes.journal {
            if !self.local.contains(h) || j.verdict.is_ok() || !changes.first_placed.contains(h) {
                continue;
            }
            let sql = format!(
                "SELECT {} FROM causal.dag_entries e WHERE {} AND e.grp + 0 = $1",
                crate::catalog::entry_row::payload_sql(),
                crate::catalog::entry_row::hash_equals_sql("e", "$2")
            );
            let payload = run_prepared(&sql, &[self.num.into(), h.to_b64().into()], false, |mut rows| {
                rows.next().map(|r| r.get::<String>(1)).transpose().map(Option::flatten)
            })
            .map_err(store_err)?
            .ok_or_else(|| ReconcileError::Corrupt(format!("local entry {h} is not stored")))?;
            let value = causal_core::json::parse(&payload).map_err(store_err)?;
            let ops = causal_core::payload::SignedPayload::from_owned(value)
                .map_err(|source| ReconcileError::Payload { hash: h.to_b64(), source })?
                .ops;
            for op in &ops {
                let Some((table, cols)) = op.row() else { continue };
                // A table no longer in the group is this database's alone: nothing to resync.
                let Ok(schema) = crate::catalog::tables::local_schema_by_name(&self.group, table) else { continue };
                if let Some(k) = causal_core::reconcile::row_key(&schema, cols) {
                    keys.entry(table.to_string()).or_default().push(k);
                }
            }
        }
        if keys.is_empty() {
            return Ok(BTreeMap::new()); // the common case: every entry placed as it was written
        }
        let changed: std::collections::HashSet<(&str, &str)> =
            changes.rows.iter().map(|r| (r.table.as_str(), r.key.as_str())).collect();
        let mut out: BTreeMap<String, RowsToWrite> = BTreeMap::new();
        for (table, mut ks) in keys {
            ks.retain(|k| !changed.contains(&(table.as_str(), k.as_str())));
            ks.sort();
            ks.dedup();
            let states: HashMap<RowKey, RowState> = self.rows(&table, &ks)?.into_iter().collect();
            let slot = out.entry(table).or_default();
            for k in ks {
                match states.get(&k) {
                    Some(s) if s.is_live() => slot.1.push(s.values.clone()),
                    _ => slot.0.push(k),
                }
            }
        }
        Ok(out)
    }
}

/// Keys of rows to delete, and live rows to write, in one table.
type RowsToWrite = (Vec<RowKey>, Vec<Map<String, Value>>);

impl SpiReplica {
    /// Tells listeners on `causal_cancelled`, at commit, of each entry this run cancels that
    /// was not cancelled before: a JSON object with the group's name and id, the entry's hash,
    /// its author's key id, whether this database holds the author's key (a local write), and
    /// the reason. Called before the journal is written.
    fn announce_cancellations(&self, cancelled: &[(i32, &EntryHash, &Verdict, bool)]) -> Result<(), ReconcileError> {
        if cancelled.is_empty() {
            return Ok(());
        }
        let rewritten: Vec<i32> = cancelled.iter().filter(|c| c.3).map(|c| c.0).collect();
        let already: std::collections::HashSet<i32> = if rewritten.is_empty() {
            Default::default()
        } else {
            run_prepared(
                "SELECT node_id FROM causal.journal WHERE grp = $1 AND node_id = ANY($2) AND status = 'cancelled'",
                &[self.num.into(), rewritten.into()],
                false,
                |rows| rows.map(|r| r.get::<i32>(1)).filter_map(Result::transpose).collect::<Result<_, _>>(),
            )
            .map_err(store_err)?
        };
        let news: Vec<&(i32, &EntryHash, &Verdict, bool)> =
            cancelled.iter().filter(|c| !already.contains(&c.0)).collect();
        if news.is_empty() {
            return Ok(());
        }
        let name = get_prepared::<String>("SELECT name FROM causal.group_defs WHERE grp = $1", &[self.num.into()])
            .map_err(store_err)?
            .unwrap_or_default();
        // The key ids this database holds: an entry signed by one is a write made here.
        let local_keys: std::collections::HashSet<String> =
            run_prepared("SELECT key_id FROM causal.identity_keys", &[], false, |rows| {
                rows.map(|r| r.get::<String>(1)).filter_map(Result::transpose).collect::<Result<_, _>>()
            })
            .map_err(store_err)?;
        let hook = if crate::catalog::shape::has_cancellation_hooks() {
            hooks::cancellation_hook(&self.group).map_err(store_err)?
        } else {
            None
        };
        for (_, hash, verdict, _) in news {
            let author = self
                .dag
                .entry(hash)
                .map_err(store_err)?
                .and_then(|e| e.payload.get("author").and_then(Value::as_str).map(str::to_string));
            let local = author.as_ref().is_some_and(|a| local_keys.contains(a));
            // A notification carries at most 8000 bytes: the reason and key are cut to fit.
            let cut = |s: &str, n: usize| -> String { s.chars().take(n).collect() };
            let reason = cut(verdict.reason.as_deref().unwrap_or_default(), 2000);
            let (table, key) = match &verdict.row {
                Some((t, k)) => (Some(t.as_str()), Some(cut(k.as_str(), 2000))),
                None => (None, None),
            };
            let payload = json!({
                "group": name, "group_id": self.group, "entry": hash.to_b64(),
                "author": author, "local": local,
                "code": verdict.code.map(|c| c.as_str()),
                "sqlstate": verdict.code.and_then(|c| c.sqlstate()),
                "table": table, "key": key, "reason": reason,
            });
            crate::pg::notify::notify_on(crate::pg::notify::CANCELLED_CHANNEL, &payload.to_string())
                .map_err(store_err)?;
            if let Some(hook) = &hook {
                hook.call(&payload);
            }
        }
        Ok(())
    }
}

impl ReplicaStore for SpiReplica {
    type Dag = SpiStore;

    fn dag(&self) -> &Dag<SpiStore> {
        &self.dag
    }

    fn kept_authority(&self) -> Option<std::rc::Rc<reconcile::Authority>> {
        let version = self.dag.store().authority_version().ok()?;
        let kept = AUTHORITY.with(|a| match a.borrow().get(&self.group) {
            Some((v, auth)) if *v == version => Some(auth.clone()),
            _ => None,
        })?;
        self.use_authority(&kept);
        Some(kept)
    }

    fn keep_authority(&self, authority: &std::rc::Rc<reconcile::Authority>) {
        self.use_authority(authority);
        if let Ok(version) = self.dag.store().authority_version() {
            AUTHORITY.with(|a| a.borrow_mut().insert(self.group.clone(), (version, authority.clone())));
        }
    }

    fn journal(&self, h: &EntryHash) -> Result<Option<JournalEntry>, ReconcileError> {
        let Some(id) = self.dag.store().node_id(h).map_err(store_err)? else { return Ok(None) };
        // Records are keyed by node id; the row takes back the hash it was asked for ($3), in
        // the shape `journal_from` reads too.
        let rows = run_prepared(
            &format!(
                "SELECT $3::text, height, status, reason, responsible, undo, {} FROM causal.journal \
                 WHERE grp = $1 AND node_id = $2",
                cause_column("")
            ),
            &[self.num.into(), node_i32(id)?.into(), h.to_b64().into()],
            false,
            read_journal,
        )
        .map_err(store_err)?;
        // A `journal` row comes first; else a run may hold the record.
        let row = match rows.into_iter().next() {
            Some(r) => Some(r),
            None => journal_runs::record(self.num, id, h.to_b64())?,
        };
        match row {
            Some(r) => Ok(journal_row(r, &self.names(), |h| self.fresh_undo(h))?.map(|(_, j)| j)),
            None => Ok(None),
        }
    }

    fn order(&self, h: &EntryHash) -> Result<Option<OrderKey>, ReconcileError> {
        let Some(id) = self.dag.store().node_id(h).map_err(store_err)? else { return Ok(None) };
        let node = node_i32(id)?;
        let height = match crate::pg::spi::get_prepared::<i32>(
            "SELECT height FROM causal.journal WHERE grp = $1 AND node_id = $2",
            &[self.num.into(), node.into()],
        )
        .map_err(store_err)?
        {
            Some(height) => Some(height),
            None => journal_runs::height(self.num, node)?,
        };
        height.map(|height| Ok(OrderKey { height: stored_height(height)?, hash: *h })).transpose()
    }

    fn journal_from(&self, from: &OrderKey) -> Result<Vec<(EntryHash, JournalEntry)>, ReconcileError> {
        // The index orders by height only; entries of one height are put in hash order here.
        let from_height = i32::try_from(from.height).unwrap_or(i32::MAX);
        let mut rows = run_prepared(
            &format!(
                "SELECT {}, j.height, j.status, j.reason, j.responsible, j.undo, {} FROM causal.journal j \
                 JOIN causal.dag_entries e ON e.grp = j.grp AND e.node_id = j.node_id \
                 WHERE j.grp = $1 AND j.height >= $2 ORDER BY j.height",
                crate::catalog::entry_row::hash_sql("e"),
                cause_column("j.")
            ),
            &[self.num.into(), from_height.into()],
            false,
            read_journal,
        )
        .map_err(store_err)?;
        // And the records runs hold (of entries without a `journal` row).
        rows.extend(journal_runs::records_from(self.num, from_height)?);
        let mut out = Vec::with_capacity(rows.len());
        let names = self.names();
        for r in rows {
            if let Some(x) = journal_row(r, &names, |h| self.fresh_undo(h))? {
                if x.1.order >= *from {
                    out.push(x);
                }
            }
        }
        out.sort_by_key(|(_, j)| j.order);
        Ok(out)
    }

    fn authority_entries(&self) -> Result<Vec<EntryHash>, ReconcileError> {
        let sql = format!(
            "SELECT DISTINCT {} FROM causal.dag_entry_tags t JOIN causal.dag_entries e \
             ON e.grp = t.grp AND e.chain = t.chain AND e.seq = t.seq \
             WHERE t.grp = $1 AND t.tag IN ('member', 'schema', 'rule')",
            crate::catalog::entry_row::hash_sql("e")
        );
        let hashes = run_prepared(&sql, &[self.num.into()], false, |rows| {
            rows.map(|r| r.get::<String>(1)).collect::<Result<Vec<_>, _>>()
        })
        .map_err(store_err)?;
        hashes.into_iter().flatten().map(|h| parse_hash(&h)).collect()
    }

    fn rows(&self, table: &str, keys: &[RowKey]) -> Result<Vec<(RowKey, RowState)>, ReconcileError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Each key is a probe of the key index `row_meta_key` (see ROWS_BY_KEYS): a few keys (a
        // local commit) are read one by one, more through a LATERAL join. With
        // `key = ANY(...)`, a generic plan made while the table's statistics were stale scanned
        // every key of the table instead. A LATERAL subquery is pulled up into a plain join,
        // which such a plan runs as a scan too, unless `OFFSET 0` keeps it a per-key probe
        // (without the branch and the `OFFSET 0`, 100k local commits took minutes, not one).
        let mut rows = Vec::with_capacity(keys.len());
        if keys.len() <= 8 {
            for k in keys {
                rows.extend(
                    run_prepared(ROW_BY_KEY, &[self.num.into(), table.into(), k.as_str().into()], false, read_rows)
                        .map_err(store_err)?,
                );
            }
        } else {
            rows = probing_by_key(|| {
                run_prepared(
                    ROWS_BY_KEYS,
                    &[self.num.into(), table.into(), keys.iter().map(RowKey::to_string).collect::<Vec<_>>().into()],
                    false,
                    read_rows,
                )
            })
            .map_err(store_err)?;
        }
        // The keys row_meta does not hold may be in a set of fresh rows.
        if rows.len() < keys.len() {
            let found: std::collections::HashSet<&str> = rows.iter().filter_map(|r| r.0.as_deref()).collect();
            let missing: Vec<&str> = keys.iter().map(RowKey::as_str).filter(|k| !found.contains(k)).collect();
            let in_sets = fresh_rows::lookup(&mut self.fresh.borrow_mut(), self.num, table, &missing)?;
            rows.extend(in_sets);
        }
        self.with_values(table, to_states(rows, &self.names())?)
    }

    fn rows_where(&self, table: &str, equal: &[(String, Value)]) -> Result<Vec<(RowKey, RowState)>, ReconcileError> {
        // Group and table are literals, so the plan can use the partial index that
        // `ensure_lookup_indexes` made for these columns. Every row keeps its lookup columns;
        // a row that keeps only those (`derived`) matches a condition on another column once
        // its values are derived.
        let auth = self.derivation_authority()?;
        let lookup = |c: &str| auth.schema(table).is_some_and(|s| s.is_lookup_column(c));
        let mut sql = format!(
            "SELECT key, vals, meta FROM causal.row_meta WHERE grp = {} AND table_name = {} AND NOT meta ? 'd'",
            self.num,
            sql_literal(table)
        );
        for (i, (c, _)) in equal.iter().enumerate() {
            let condition = format!("(vals -> {}) = ${}", sql_literal(c), i + 1);
            if lookup(c) {
                sql.push_str(&format!(" AND {condition}"));
            } else {
                sql.push_str(&format!(" AND (meta ? {} OR {condition})", sql_literal(PARTIAL)));
            }
        }
        let args: Vec<pgrx::datum::DatumWithOid> = equal.iter().map(|(_, v)| JsonB(v.clone()).into()).collect();
        let mut rows = run_prepared(&sql, &args, false, read_rows).map_err(store_err)?;
        // Rows in sets of fresh rows keep no values: each is derived and checked below. (Only a
        // table a rule came to scan after its rows were placed has both sets and lookups.)
        rows.extend(fresh_rows::all_rows(&mut self.fresh.borrow_mut(), self.num, table)?);
        let rows = to_states(rows, &self.names())?;
        // `with_values` keeps the rows' order: the flags still line up.
        let partial: Vec<bool> = rows.iter().map(|r| r.2).collect();
        let rows = self.with_values(table, rows)?;
        Ok(rows
            .into_iter()
            .zip(partial)
            .filter(|((_, r), partial)| !partial || equal.iter().all(|(c, v)| r.values.get(c) == Some(v)))
            .map(|(row, _)| row)
            .collect())
    }

    fn violated_check(&self, schema: &TableSchema, row: &Map<String, Value>) -> Result<Option<String>, ReconcileError> {
        violated_check(schema, row, self.owner(&schema.table)?)
    }

    fn apply(&mut self, changes: &Changes) -> Result<(), ReconcileError> {
        // The journal: the records of this run, then authority verdicts that changed for
        // entries outside it (their order and undo records stay as they were). Entries placed
        // for the first time get a plain insert; the others' records are rewritten.
        // Row metadata names entries by node id: those of this run's rows are found at once.
        let names = self.names();
        let states = changes.rows.iter().filter_map(|r| r.state.as_ref());
        let befores = changes.journal.iter().flat_map(|(_, j)| j.undo.iter().filter_map(|u| u.before.as_ref()));
        names.prepare_names(states.chain(befores).flat_map(RowState::entries))?;
        let mut seen: std::collections::HashSet<&EntryHash> = std::collections::HashSet::new();
        let (mut first, mut again) = (JournalBatch::default(), JournalBatch::default());
        let records = changes
            .journal
            .iter()
            .map(|(h, j)| (h, Some(&j.order), &j.verdict, Some(&j.undo)))
            .chain(changes.authority.iter().map(|(h, v)| (h, None, v, None)));
        // Entries cancelled by this run, with whether they were placed before (then they are
        // news only if they were not cancelled already).
        let mut cancelled: Vec<(i32, &EntryHash, &Verdict, bool)> = Vec::new();
        // Records that runs can hold (`journal_runs`): (node id, height) of entries placed for
        // the first time, standing, with all their rows new.
        let runs_kept = journal_runs::kept();
        let mut in_runs: Vec<(i32, i32)> = Vec::new();
        for (h, order, verdict, undo) in records {
            if !seen.insert(h) {
                continue;
            }
            let is_first = order.is_some() && changes.first_placed.contains(h);
            let batch = if is_first { &mut first } else { &mut again };
            let id =
                self.dag.store().node_id(h).map_err(store_err)?.ok_or_else(|| {
                    ReconcileError::Corrupt(format!("journal record for entry {h}, which is not stored"))
                })?;
            // An entry whose rows were all new (inserts of keys the view did not hold) needs no
            // list of them: its inserts give it (`fresh_undo`).
            let mut undo = match undo {
                Some(u) if !u.is_empty() && u.iter().all(|r| r.before.is_none()) => Some(FRESH_UNDO.to_string()),
                Some(u) if !u.is_empty() => Some(UndoRecord::journal_text(u, |b| names.meta(b))?),
                _ => None,
            };
            let node = node_i32(id)?;
            let fresh = verdict.is_ok() && undo.as_deref() == Some(FRESH_UNDO);
            if let Some(o) = order.filter(|_| is_first && runs_kept && fresh) {
                let height = i32::try_from(o.height)
                    .map_err(|_| ReconcileError::Corrupt(format!("entry {h}: height {} out of range", o.height)))?;
                in_runs.push((node, height));
                continue;
            }
            // A verdict alone (authority changed) of an entry whose record a run holds: the row,
            // which comes first, takes the run's height and empty undo with it.
            let held = match order {
                None if runs_kept => journal_runs::held_order(self.num, node, h)?,
                _ => None,
            };
            if held.is_some() {
                undo = Some(FRESH_UNDO.to_string());
            }
            batch.push(node, order.or(held.as_ref()), verdict, undo);
            if !verdict.is_ok() {
                cancelled.push((node, h, verdict, !is_first));
            }
        }
        in_runs.sort_unstable();
        journal_runs::write(self.num, &journal_runs::runs_of(&in_runs))?;
        self.announce_cancellations(&cancelled)?;
        // A catalog not upgraded yet has no `cause` column (catalog::shape): $8 is then unused.
        let (cause_column, cause_value, cause_update) = if crate::catalog::shape::journal_has_cause() {
            (", cause", ", c::jsonb", "cause = EXCLUDED.cause, ")
        } else {
            ("", "", "")
        };
        let records = format!(
            "INSERT INTO causal.journal AS j (grp, node_id, height, status, reason, responsible, undo{cause_column}) \
             SELECT $1, n, o, s, r, string_to_array(p, ' '), u{cause_value} \
             FROM unnest($2::int[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) \
             AS x(n, o, s, r, p, u, c)"
        );
        if !first.node_ids.is_empty() {
            // New records are plain inserts: written directly, as entry rows are.
            first.write_direct(self.num).map_err(store_err)?;
        }
        if !again.node_ids.is_empty() {
            // A record without a height only changes a verdict: the row keeps its order and undo.
            exec_prepared(
                &format!(
                    "{records} ON CONFLICT (grp, node_id) DO UPDATE SET height = coalesce(EXCLUDED.height, j.height), \
                     status = EXCLUDED.status, reason = EXCLUDED.reason, responsible = EXCLUDED.responsible, \
                     {cause_update}\
                     undo = CASE WHEN EXCLUDED.height IS NULL THEN j.undo ELSE EXCLUDED.undo END"
                ),
                &again.into_args(self.num),
            )
            .map_err(store_err)?;
        }
        // Rows and their metadata. Rows the catalog did not hold are inserted without looking
        // for a conflict first (the group's lock keeps anyone else from adding them
        // meanwhile); the others are upserted.
        // Of the values, those rows are looked up by, unless a rule scans the table (`derived`).
        let auth = if changes.rows.is_empty() { None } else { Some(self.derivation_authority()?) };
        let scanned = auth.as_ref().map(|a| a.rule_scanned_tables()).unwrap_or_default();
        let mut new = RowBatch::default();
        let mut stored = RowBatch::default();
        let (mut del_t, mut del_k) = (Vec::new(), Vec::new());
        // Rows new to the catalog that can go into sets of fresh rows, and rows to take out
        // of sets, per table.
        let mut to_sets: BTreeMap<&str, Vec<(&str, i32)>> = BTreeMap::new();
        let mut out_of_sets: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut fresh = std::mem::take(&mut *self.fresh.borrow_mut());
        for row in &changes.rows {
            let in_set = if row.was_stored { fresh.read_from_set(&row.table, row.key.as_str()) } else { None };
            match &row.state {
                Some(r) => {
                    let schema = auth.as_ref().and_then(|a| a.schema(&row.table));
                    let (kept, partial) = match schema {
                        Some(schema) if r.is_live() => {
                            derived::kept_values(schema, scanned.contains(&row.table), &r.values)
                        }
                        _ => (r.values.clone(), false),
                    };
                    let mut meta = names.meta(r)?;
                    // Only rows of tables that keep no lookup values go into sets (a table a rule
                    // scans keeps all values: `partial` is false).
                    let node = if schema.is_none_or(TableSchema::has_lookup_columns) {
                        None
                    } else {
                        fresh_rows::set_node(&meta, partial, &kept)
                    };
                    match (node, in_set) {
                        (Some(node), _) if !row.was_stored => {
                            to_sets.entry(row.table.as_str()).or_default().push((row.key.as_str(), node));
                            continue;
                        }
                        // The row its set holds, unchanged (a rewind placed its insert again).
                        (Some(node), Some(was)) if node == was => continue,
                        _ => {}
                    }
                    // A row read from a set gets a row_meta row, which comes first from now on.
                    let batch = if row.was_stored && in_set.is_none() { &mut stored } else { &mut new };
                    batch.tables.push(row.table.as_str());
                    batch.keys.push(row.key.as_str());
                    if let (true, Value::Object(m)) = (partial, &mut meta) {
                        m.insert(PARTIAL.into(), Value::Bool(true));
                    }
                    batch.values.push(kept);
                    batch.metas.push(meta);
                }
                None if row.was_stored => {
                    if in_set.is_none() {
                        del_t.push(row.table.as_str());
                        del_k.push(row.key.as_str());
                    }
                    // A row_meta row may shadow a set's row of the same key: both go.
                    out_of_sets.entry(row.table.as_str()).or_default().push(row.key.as_str());
                }
                None => {}
            }
        }
        for (table, keys) in &out_of_sets {
            fresh_rows::remove(&mut fresh, self.num, table, keys)?;
        }
        for (table, rows) in to_sets {
            // Keys within the bounds of a stored set are written as row_meta rows.
            for (key, node) in fresh_rows::write(self.num, table, rows)? {
                new.tables.push(table);
                new.keys.push(key);
                new.values.push(Map::new());
                new.metas.push(fresh_rows::set_row_meta(node));
            }
        }
        // What the run read of the sets is stale now.
        drop(fresh);
        // Rows the run read are deleted or updated where they are: each key is a probe of the
        // key index (as in `rows`), and the row found is reached by its tid. Every one must
        // be found; one missing means the catalog changed under the group's lock.
        let expect = |what: &str, done: usize, wanted: usize| {
            if done == wanted {
                Ok(())
            } else {
                Err(ReconcileError::Corrupt(format!("{what} {wanted} rows of causal.row_meta, found {done}")))
            }
        };
        if !del_k.is_empty() {
            let wanted = del_k.len();
            let args = [self.num.into(), del_t.into(), del_k.into()];
            let done = probing_by_key(|| exec_prepared_count(DELETE_ROWS, &args)).map_err(store_err)?;
            expect("deleting", done, wanted)?;
        }
        if !new.keys.is_empty() {
            new.write_direct(self.num).map_err(store_err)?;
        }
        if !stored.keys.is_empty() {
            let wanted = stored.keys.len();
            let args = stored.into_args(self.num).map_err(store_err)?;
            let done = probing_by_key(|| exec_prepared_count(UPDATE_ROWS, &args)).map_err(store_err)?;
            expect("updating", done, wanted)?;
        }
        // A table a rule scans keeps all its rows' values, those in sets too.
        for table in &scanned {
            fresh_rows::make_complete(self, table)?;
        }
        self.write_user_tables(changes)
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;
