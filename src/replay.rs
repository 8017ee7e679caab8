//! The reconciliation engine (`causal_core::reconcile`) over Postgres: the journal in
//! `causal.journal`, rows and their causal metadata in `causal.row_meta`, and the user
//! tables, which replay writes under `session_replication_role = replica` (so neither capture
//! nor user triggers fire, as with logical replication).
//!
//! Every import and every local commit runs the engine in its own transaction, so the tables
//! always equal the group's view at the frontier, and a crash leaves all of a run or none.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use pgrx::{pg_sys, JsonB};
use serde_json::{json, Map, Value};

use causal_core::reconcile::{
    self, Changes, JournalEntry, OrderKey, ReconcileError, ReplicaStore, RowKey, RowState, Status, UndoRecord, Verdict,
};
use causal_core::schema::{ColumnType, TableSchema};
use causal_core::{Dag, DagStore, Hash};

use crate::direct::{Cell, Inserter};
use crate::error::CausalError;
use crate::group::Group;
use crate::spi_util::{exec_prepared, exec_prepared_count, get_prepared, run_prepared};
use crate::store::SpiStore;
use causal_core::sql_expr::sql_literal;
use causal_core::sql_name::quote_ident;

thread_local! {
    /// Each group's resolved authority, with the authority version it was resolved at (the
    /// group's state counts the entries carrying authority). Forgotten when a transaction
    /// aborts: the run that resolved it may not have been applied.
    static AUTHORITY: RefCell<crate::xact::ScopedMap<String, (u32, std::rc::Rc<reconcile::Authority>)>> =
        RefCell::default();
}

/// Forgets the authorities resolved in undone work: the run that resolved one may not have
/// been applied, and its version will be reached again by other entries.
pub fn forget(undone: crate::xact::Undone) {
    AUTHORITY.with(|a| a.borrow_mut().forget(undone));
}

fn store_err(e: impl std::fmt::Display) -> ReconcileError {
    ReconcileError::Store(e.to_string())
}

/// The owner of a group's table, by its name in the group (looked up once per engine run).
pub fn owner_of(table: &str) -> Result<Option<pg_sys::Oid>, ReconcileError> {
    crate::spi_util::table_owner(&sql_table(table)?).map_err(store_err)
}

/// A group's replica state in the catalog.
pub struct SpiReplica {
    pub(crate) group: String,
    /// The group's number (`group_defs.grp`), which keys its rows.
    pub(crate) num: i32,
    pub(crate) dag: Dag<SpiStore>,
    /// Entries written locally in this transaction: their rows are already in the tables.
    pub(crate) local: Vec<Hash>,
    /// The owners of the group's tables, found in this run: replay writes and checks a table
    /// as its owner.
    owners: RefCell<HashMap<String, Option<pg_sys::Oid>>>,
}

fn undo_value(u: &[UndoRecord]) -> Value {
    Value::Array(
        u.iter()
            .map(|r| {
                json!({"t": r.table, "k": r.key, "b": r.before.as_ref().map(|b| json!({"v": b.values, "m": b.meta_value()}))})
            })
            .collect(),
    )
}

fn undo_from(v: &Value) -> Result<Vec<UndoRecord>, ReconcileError> {
    let bad = || ReconcileError::Corrupt(format!("bad undo record {v}"));
    let mut out = Vec::new();
    for r in v.as_array().ok_or_else(bad)? {
        let before = match r.get("b") {
            None | Some(Value::Null) => None,
            Some(b) => Some(RowState::from_meta(
                b.get("v").and_then(Value::as_object).cloned().ok_or_else(bad)?,
                b.get("m").ok_or_else(bad)?,
            )?),
        };
        out.push(UndoRecord {
            table: r.get("t").and_then(Value::as_str).ok_or_else(bad)?.to_string(),
            key: r.get("k").and_then(Value::as_str).ok_or_else(bad)?.to_string(),
            before,
        });
    }
    Ok(out)
}

fn node_i32(id: causal_core::dag::NodeId) -> Result<i32, ReconcileError> {
    i32::try_from(id).map_err(|_| ReconcileError::Corrupt(format!("node id {id} out of range")))
}

fn parse_hash(s: &str) -> Result<Hash, ReconcileError> {
    s.parse().map_err(|_| ReconcileError::Corrupt(format!("bad hash {s}")))
}

type JournalRow = (Option<String>, Option<i32>, Option<String>, Option<String>, Option<Vec<String>>, Option<String>);

fn journal_row(r: JournalRow) -> Result<Option<(Hash, JournalEntry)>, ReconcileError> {
    let (Some(hash), Some(height), Some(status)) = (r.0, r.1, r.2) else { return Ok(None) };
    let hash = parse_hash(&hash)?;
    let responsible = r.4.unwrap_or_default().iter().map(|h| parse_hash(h)).collect::<Result<Vec<_>, _>>()?;
    let verdict =
        Verdict { status: if status == "ok" { Status::Ok } else { Status::Cancelled }, reason: r.3, responsible };
    let undo = match r.5 {
        Some(u) => {
            undo_from(&causal_core::json::parse(&u).map_err(|e| ReconcileError::Corrupt(format!("undo record: {e}")))?)?
        }
        None => Vec::new(),
    };
    let height = u32::try_from(height).map_err(|_| ReconcileError::Corrupt("negative height".into()))?;
    Ok(Some((hash, JournalEntry { order: OrderKey { height, hash }, verdict, undo })))
}

fn read_journal(tuples: pgrx::spi::SpiTupleTable<'_>) -> Result<Vec<JournalRow>, pgrx::spi::Error> {
    let mut out = Vec::new();
    for t in tuples {
        out.push((t.get(1)?, t.get(2)?, t.get(3)?, t.get(4)?, t.get(5)?, t.get(6)?));
    }
    Ok(out)
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
    match crate::spi_util::as_role(owner, || crate::spi_util::catching(run)) {
        Ok(found) => found.map_err(store_err),
        Err(message) => Ok(Some(format!("a CHECK constraint raised an error ({message})"))),
    }
}

impl SpiReplica {
    pub fn new(group: &Group) -> SpiReplica {
        SpiReplica::over(group, group.dag(), Vec::new())
    }

    /// The replica of `group` over `dag`, with `local` the entries this transaction wrote.
    pub fn over(group: &Group, dag: Dag<SpiStore>, local: Vec<Hash>) -> SpiReplica {
        SpiReplica { group: group.id.clone(), num: group.num, dag, local, owners: RefCell::default() }
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
                _ => slot.0.push(&row.key),
            }
        }
        for (table, (deletes, upserts)) in &resync {
            let slot = per_table.entry(table.as_str()).or_default();
            slot.0.extend(deletes.iter().map(String::as_str));
            slot.1.extend(upserts.iter());
        }
        if per_table.is_empty() {
            return Ok(());
        }
        crate::spi_util::with_replica_role(|| {
            for (name, (deletes, upserts, inserts)) in &per_table {
                let schema = crate::tables::local_schema_by_name(&self.group, name).map_err(store_err)?;
                let table = &sql_table(name)?;
                let owner = self
                    .owner(name)?
                    .ok_or_else(|| ReconcileError::Corrupt(format!("replicated table {name} is missing")))?;
                // The table's constraints, defaults and index expressions run with its owner's
                // rights (spi_util::as_role).
                crate::spi_util::as_role(Some(owner), || -> Result<(), ReconcileError> {
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
            let payload = run_prepared(
                "SELECT payload FROM causal.dag_entries WHERE hash = $2 AND grp + 0 = $1",
                &[self.num.into(), h.to_b64().into()],
                false,
                |mut rows| rows.next().map(|r| r.get::<String>(1)).transpose().map(Option::flatten),
            )
            .map_err(store_err)?
            .ok_or_else(|| ReconcileError::Corrupt(format!("local entry {h} is not stored")))?;
            let value = causal_core::json::parse(&payload).map_err(store_err)?;
            let ops = causal_core::payload::SignedPayload::from_value(&value)
                .map_err(|source| ReconcileError::Payload { hash: h.to_b64(), source })?
                .ops;
            for op in &ops {
                let (table, cols) = match op {
                    causal_core::payload::Op::Insert { table, row } => (table, row),
                    causal_core::payload::Op::Update { table, key, .. }
                    | causal_core::payload::Op::Delete { table, key } => (table, key),
                    _ => continue,
                };
                // A table no longer in the group is this database's alone: nothing to resync.
                let Ok(schema) = crate::tables::local_schema_by_name(&self.group, table) else { continue };
                if let Some(k) = causal_core::reconcile::row_key(&schema, cols) {
                    keys.entry(table.clone()).or_default().push(k);
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

/// The text of an encoded value as Postgres reads it for the column (what `->>` gives: a
/// string's contents, any other value's JSON text; NULL for null or absent).
fn column_text(v: Option<&Value>) -> Option<String> {
    column_text_ref(v).map(std::borrow::Cow::into_owned)
}

/// [`column_text`], borrowing strings.
fn column_text_ref(v: Option<&Value>) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(std::borrow::Cow::Borrowed(s)),
        Some(other) => Some(std::borrow::Cow::Owned(other.to_string())),
    }
}

/// Writes rows new to the group's view. The table cannot hold their keys unless a row was
/// written there outside pg_causal (with `session_replication_role = replica`, say), so they
/// are inserted without ON CONFLICT, whose speculative insertion cost a tenth of an import's
/// replay; in a subtransaction, so that should the table hold one of their keys after all,
/// the insert is undone and the rows are upserted (the view's row replaces the stray one).
fn insert_new_rows(table: &str, schema: &TableSchema, rows: &[&Map<String, Value>]) -> Result<(), ReconcileError> {
    let relid = get_prepared::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[table.into()]).map_err(store_err)?;
    let insert = || -> Result<(), CausalError> {
        if let Some(relid) = relid {
            if insert_rows_direct(relid, schema, rows)? {
                return Ok(());
            }
        }
        let (sql, args) = write_rows_sql(table, schema, rows, false);
        Ok(exec_prepared(&sql, &args)?)
    };
    match crate::spi_util::unless_unique_violation(insert) {
        Some(done) => done.map_err(store_err),
        None => upsert_rows(table, schema, rows),
    }
}

/// Inserts `rows` into the table `relid` without SQL, as COPY does (`Inserter::open_user_table`,
/// which says when that is the same as the INSERT of `write_rows_sql`). Each value goes to its
/// column type's input function as the text the INSERT casts. Returns false, having written
/// nothing, for a table that must be written through SQL.
fn insert_rows_direct(
    relid: pg_sys::Oid,
    schema: &TableSchema,
    rows: &[&Map<String, Value>],
) -> Result<bool, CausalError> {
    let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    let Some((mut inserter, order)) = Inserter::open_user_table(relid, &columns) else { return Ok(false) };
    let mut texts: Vec<Option<std::borrow::Cow<str>>> = Vec::with_capacity(order.len());
    for row in rows {
        texts.clear();
        texts.extend(order.iter().map(|i| i.and_then(|i| column_text_ref(row.get(columns[i])))));
        let cells: Vec<Cell> =
            texts.iter().map(|t| t.as_deref().map_or(Cell::Null(pg_sys::InvalidOid), Cell::Input)).collect();
        inserter.push(&cells)?;
    }
    inserter.finish();
    Ok(true)
}

fn upsert_rows(table: &str, schema: &TableSchema, rows: &[&Map<String, Value>]) -> Result<(), ReconcileError> {
    let (sql, args) = write_rows_sql(table, schema, rows, true);
    exec_prepared(&sql, &args).map_err(store_err)
}

/// The statement that inserts (or, with `upsert`, upserts) `rows` into `table`, and its
/// arguments: one text array per column, each element cast to the column's type in SQL (no
/// JSON is parsed on the Postgres side).
fn write_rows_sql(
    table: &str,
    schema: &TableSchema,
    rows: &[&Map<String, Value>],
    upsert: bool,
) -> (String, Vec<pgrx::datum::DatumWithOid<'static>>) {
    let cols: Vec<String> = schema.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let params: Vec<String> = (1..=schema.columns.len()).map(|i| format!("${i}::text[]")).collect();
    let fields: Vec<String> = (1..=schema.columns.len()).map(|i| format!("f{i}")).collect();
    let exprs: Vec<String> =
        schema.columns.iter().zip(&fields).map(|(c, f)| decode_field(&format!("x.{f}"), &c.ty)).collect();
    let non_key: Vec<String> = schema
        .columns
        .iter()
        .filter(|c| !schema.primary_key.contains(&c.name))
        .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(&c.name)))
        .collect();
    let action =
        if non_key.is_empty() { "DO NOTHING".to_string() } else { format!("DO UPDATE SET {}", non_key.join(", ")) };
    let pk: Vec<String> = schema.primary_key.iter().map(|c| quote_ident(c)).collect();
    let conflict = if upsert { format!(" ON CONFLICT ({}) {action}", pk.join(", ")) } else { String::new() };
    let sql = format!(
        "INSERT INTO {table} ({}) SELECT {} FROM unnest({}) AS x({}){conflict}",
        cols.join(", "),
        exprs.join(", "),
        params.join(", "),
        fields.join(", "),
    );
    let args: Vec<pgrx::datum::DatumWithOid> = schema
        .columns
        .iter()
        .map(|c| rows.iter().map(|r| column_text(r.get(&c.name))).collect::<Vec<Option<String>>>().into())
        .collect();
    (sql, args)
}

impl ReplicaStore for SpiReplica {
    type Dag = SpiStore;

    fn dag(&self) -> &Dag<SpiStore> {
        &self.dag
    }

    fn kept_authority(&self) -> Option<std::rc::Rc<reconcile::Authority>> {
        let version = self.dag.store().authority_version().ok()?;
        AUTHORITY.with(|a| match a.borrow().get(&self.group) {
            Some((v, auth)) if *v == version => Some(auth.clone()),
            _ => None,
        })
    }

    fn keep_authority(&self, authority: &std::rc::Rc<reconcile::Authority>) {
        if let Ok(version) = self.dag.store().authority_version() {
            AUTHORITY.with(|a| a.borrow_mut().insert(self.group.clone(), (version, authority.clone())));
        }
    }

    fn journal(&self, h: &Hash) -> Result<Option<JournalEntry>, ReconcileError> {
        let Some(id) = self.dag.store().node_id(h).map_err(store_err)? else { return Ok(None) };
        // Records are keyed by node id; the row takes back the hash it was asked for ($3), in
        // the shape `journal_from` reads too.
        let rows = run_prepared(
            "SELECT $3::text, height, status, reason, responsible, undo FROM causal.journal WHERE grp = $1 AND node_id = $2",
            &[self.num.into(), node_i32(id)?.into(), h.to_b64().into()],
            false,
            read_journal,
        )
        .map_err(store_err)?;
        match rows.into_iter().next() {
            Some(r) => Ok(journal_row(r)?.map(|(_, j)| j)),
            None => Ok(None),
        }
    }

    fn journal_from(&self, from: &OrderKey) -> Result<Vec<(Hash, JournalEntry)>, ReconcileError> {
        // The index orders by height only; entries of one height are put in hash order here.
        let rows = run_prepared(
            "SELECT e.hash, j.height, j.status, j.reason, j.responsible, j.undo FROM causal.journal j \
             JOIN causal.dag_entries e ON e.grp = j.grp AND e.node_id = j.node_id \
             WHERE j.grp = $1 AND j.height >= $2 ORDER BY j.height",
            &[self.num.into(), i32::try_from(from.height).unwrap_or(i32::MAX).into()],
            false,
            read_journal,
        )
        .map_err(store_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            if let Some(x) = journal_row(r)? {
                if x.1.order >= *from {
                    out.push(x);
                }
            }
        }
        out.sort_by_key(|(_, j)| j.order);
        Ok(out)
    }

    fn authority_entries(&self) -> Result<Vec<Hash>, ReconcileError> {
        let hashes = run_prepared(
            "SELECT DISTINCT e.hash FROM causal.dag_entry_tags t JOIN causal.dag_entries e \
             ON e.grp = t.grp AND e.chain = t.chain AND e.seq = t.seq \
             WHERE t.grp = $1 AND t.tag IN ('member', 'schema', 'rule')",
            &[self.num.into()],
            false,
            |rows| rows.map(|r| r.get::<String>(1)).collect::<Result<Vec<_>, _>>(),
        )
        .map_err(store_err)?;
        hashes.into_iter().flatten().map(|h| parse_hash(&h)).collect()
    }

    fn rows(&self, table: &str, keys: &[RowKey]) -> Result<Vec<(RowKey, RowState)>, ReconcileError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Each key is a probe of the hash index on `key` (see ROWS_BY_KEYS): a few keys (a
        // local commit) are read one by one, more through a LATERAL join. With
        // `key = ANY(...)`, a generic plan made while the table's statistics were stale scanned
        // every key of the table instead. A LATERAL subquery is pulled up into a plain join,
        // which such a plan runs as a scan too, unless `OFFSET 0` keeps it a per-key probe
        // (without the branch and the `OFFSET 0`, 100k local commits took minutes, not one).
        if keys.len() <= 8 {
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                let rows =
                    run_prepared(ROW_BY_KEY, &[self.num.into(), table.into(), k.clone().into()], false, read_rows)
                        .map_err(store_err)?;
                out.extend(to_states(rows)?);
            }
            return Ok(out);
        }
        let rows = probing_by_key(|| {
            run_prepared(ROWS_BY_KEYS, &[self.num.into(), table.into(), keys.to_vec().into()], false, read_rows)
        })
        .map_err(store_err)?;
        to_states(rows)
    }

    fn rows_where(&self, table: &str, equal: &[(String, Value)]) -> Result<Vec<(RowKey, RowState)>, ReconcileError> {
        // Group and table are literals, so the plan can use the partial index that
        // `ensure_lookup_indexes` made for these columns.
        let mut sql = format!(
            "SELECT key, vals, meta FROM causal.row_meta WHERE grp = {} AND table_name = {} AND NOT meta ? 'd'",
            self.num,
            sql_literal(table)
        );
        for (i, (c, _)) in equal.iter().enumerate() {
            sql.push_str(&format!(" AND (vals -> {}) = ${}", sql_literal(c), i + 1));
        }
        let args: Vec<pgrx::datum::DatumWithOid> = equal.iter().map(|(_, v)| JsonB(v.clone()).into()).collect();
        let rows = run_prepared(&sql, &args, false, read_rows).map_err(store_err)?;
        to_states(rows)
    }

    fn violated_check(&self, schema: &TableSchema, row: &Map<String, Value>) -> Result<Option<String>, ReconcileError> {
        violated_check(schema, row, self.owner(&schema.table)?)
    }

    fn apply(&mut self, changes: &Changes) -> Result<(), ReconcileError> {
        // The journal: the records of this run, then authority verdicts that changed for
        // entries outside it (their order and undo records stay as they were). Entries placed
        // for the first time get a plain insert; the others' records are rewritten.
        let mut seen: std::collections::HashSet<&Hash> = std::collections::HashSet::new();
        let (mut first, mut again) = (JournalBatch::default(), JournalBatch::default());
        let records = changes
            .journal
            .iter()
            .map(|(h, j)| (h, Some(&j.order), &j.verdict, Some(&j.undo)))
            .chain(changes.authority.iter().map(|(h, v)| (h, None, v, None)));
        for (h, order, verdict, undo) in records {
            if !seen.insert(h) {
                continue;
            }
            let batch = if order.is_some() && changes.first_placed.contains(h) { &mut first } else { &mut again };
            let id =
                self.dag.store().node_id(h).map_err(store_err)?.ok_or_else(|| {
                    ReconcileError::Corrupt(format!("journal record for entry {h}, which is not stored"))
                })?;
            batch.push(node_i32(id)?, order, verdict, undo);
        }
        const RECORDS: &str =
            "INSERT INTO causal.journal AS j (grp, node_id, height, status, reason, responsible, undo) \
             SELECT $1, n, o, s, r, string_to_array(p, ' '), u \
             FROM unnest($2::int[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[]) AS x(n, o, s, r, p, u)";
        if !first.node_ids.is_empty() {
            // New records are plain inserts: written directly, as entry rows are.
            first.write_direct(self.num).map_err(store_err)?;
        }
        if !again.node_ids.is_empty() {
            // A record without a height only changes a verdict: the row keeps its order and undo.
            exec_prepared(
                &format!(
                    "{RECORDS} ON CONFLICT (grp, node_id) DO UPDATE SET height = coalesce(EXCLUDED.height, j.height), \
                     status = EXCLUDED.status, reason = EXCLUDED.reason, responsible = EXCLUDED.responsible, \
                     undo = CASE WHEN EXCLUDED.height IS NULL THEN j.undo ELSE EXCLUDED.undo END"
                ),
                &again.into_args(self.num),
            )
            .map_err(store_err)?;
        }
        // Rows and their metadata. Rows the catalog did not hold are inserted without looking
        // for a conflict first (the group's lock keeps anyone else from adding them
        // meanwhile); the others are upserted.
        let mut new = RowBatch::default();
        let mut stored = RowBatch::default();
        let (mut del_t, mut del_k) = (Vec::new(), Vec::new());
        for row in &changes.rows {
            match &row.state {
                Some(r) => {
                    let batch = if row.was_stored { &mut stored } else { &mut new };
                    batch.tables.push(row.table.as_str());
                    batch.keys.push(row.key.as_str());
                    batch.values.push(&r.values);
                    batch.metas.push(r.meta_value());
                }
                None => {
                    if row.was_stored {
                        del_t.push(row.table.as_str());
                        del_k.push(row.key.as_str());
                    }
                }
            }
        }
        // Rows the run read are deleted or updated where they are: each key is a probe of the
        // hash index (as in `rows`), and the row found is reached by its tid. Every one must
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
        self.write_user_tables(changes)
    }
}

/// The columns of `causal.journal`, in table order.
const JOURNAL_COLUMNS: &[(&str, pg_sys::Oid)] = &[
    ("grp", pg_sys::INT4OID),
    ("node_id", pg_sys::INT4OID),
    ("height", pg_sys::INT4OID),
    ("status", pg_sys::TEXTOID),
    ("reason", pg_sys::TEXTOID),
    ("responsible", pg_sys::TEXTARRAYOID),
    ("undo", pg_sys::TEXTOID),
];

// Statements on `row_meta` rows by key. Each key is a probe of the hash index on `key`:
// `grp + 0` and `table_name || ''` keep the planner from combining it with another index (a
// partial lookup index covers a whole table), and `OFFSET 0` keeps a LATERAL subquery a probe
// per key rather than a join the planner may run as a scan of the table (see `rows`). Deletes
// and updates reach the row found by its tid. Those of many keys run under `probing_by_key`.
// The `tests` module checks their generic plans.

/// Runs `f`, a statement of many probes by key, with bitmap scans off: without statistics
/// (a table that grew in this transaction) the planner expects a probe to find 0.5% of the
/// table and plans a bitmap scan, which builds and frees a bitmap per probe, where an index
/// scan finds the row.
fn probing_by_key<T>(f: impl FnOnce() -> Result<T, pgrx::spi::Error>) -> Result<T, pgrx::spi::Error> {
    crate::spi_util::with_setting("enable_bitmapscan", "off", f)?
}

/// The probe for the `row_meta` row of group `$1`, table `$t` and key `$k` (SQL expressions),
/// selecting `$cols`: one text for the three statements below, so that they plan alike.
macro_rules! row_probe {
    ($cols:literal, $t:literal, $k:literal) => {
        concat!(
            "(SELECT ",
            $cols,
            " FROM causal.row_meta WHERE key = ",
            $k,
            " AND grp + 0 = $1 AND table_name || '' = ",
            $t,
            " OFFSET 0)"
        )
    };
}

/// The rows of group `$1` and table `$2` with the keys `$3`.
const ROWS_BY_KEYS: &str = concat!(
    "SELECT m.key, m.vals, m.meta FROM unnest($3::text[]) AS k(key) CROSS JOIN LATERAL ",
    row_probe!("key, vals, meta", "$2", "k.key"),
    " m"
);

/// The row of group `$1`, table `$2` and key `$3`.
const ROW_BY_KEY: &str =
    "SELECT key, vals, meta FROM causal.row_meta WHERE key = $3 AND grp + 0 = $1 AND table_name || '' = $2";

/// Deletes the rows of group `$1` with the tables and keys `$2` and `$3` (pairwise).
const DELETE_ROWS: &str = concat!(
    "DELETE FROM causal.row_meta m USING (SELECT r.tid FROM unnest($2::text[], $3::text[]) AS x(t, k) CROSS JOIN LATERAL ",
    row_probe!("ctid AS tid", "x.t", "x.k"),
    " r) d WHERE m.ctid = d.tid"
);

/// Sets the values `$4` and metadata `$5` (JSON texts) of the rows of group `$1` with the
/// tables and keys `$2` and `$3`.
const UPDATE_ROWS: &str = concat!(
    "UPDATE causal.row_meta m SET vals = d.v::jsonb, meta = d.m::jsonb FROM (SELECT r.tid, x.v, x.m ",
    "FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS x(t, k, v, m) CROSS JOIN LATERAL ",
    row_probe!("ctid AS tid", "x.t", "x.k"),
    " r) d WHERE m.ctid = d.tid"
);

/// The columns of `causal.row_meta`, in table order.
const ROW_META_COLUMNS: &[(&str, pg_sys::Oid)] = &[
    ("grp", pg_sys::INT4OID),
    ("table_name", pg_sys::TEXTOID),
    ("key", pg_sys::TEXTOID),
    ("vals", pg_sys::JSONBOID),
    ("meta", pg_sys::JSONBOID),
];

/// Journal records to write, as parallel arrays for `unnest`.
#[derive(Default)]
struct JournalBatch {
    node_ids: Vec<i32>,
    heights: Vec<Option<i32>>,
    statuses: Vec<&'static str>,
    reasons: Vec<Option<String>>,
    /// The entries responsible for a cancellation (Base64 hashes), `None` when there are none.
    blamed: Vec<Option<Vec<String>>>,
    undos: Vec<Option<String>>,
}

impl JournalBatch {
    fn push(&mut self, id: i32, order: Option<&OrderKey>, verdict: &Verdict, undo: Option<&Vec<UndoRecord>>) {
        self.node_ids.push(id);
        self.heights.push(order.map(|o| i32::try_from(o.height).unwrap_or(i32::MAX)));
        self.statuses.push(verdict.status.as_str());
        self.reasons.push(verdict.reason.clone());
        self.blamed.push(if verdict.responsible.is_empty() {
            None
        } else {
            Some(verdict.responsible.iter().map(Hash::to_b64).collect())
        });
        self.undos.push(match undo {
            Some(u) if !u.is_empty() => Some(undo_value(u).to_string()),
            _ => None,
        });
    }

    /// Inserts the records as new rows of `causal.journal`, without SQL (`direct.rs`).
    fn write_direct(&self, group: i32) -> Result<(), CausalError> {
        let mut rows = Inserter::open("journal", JOURNAL_COLUMNS)?;
        for i in 0..self.node_ids.len() {
            rows.push(&[
                Cell::Int4(group),
                Cell::Int4(self.node_ids[i]),
                self.heights[i].map_or(Cell::Null(pg_sys::INT4OID), Cell::Int4),
                Cell::Text(self.statuses[i]),
                self.reasons[i].as_deref().map_or(Cell::Null(pg_sys::TEXTOID), Cell::Text),
                self.blamed[i].as_deref().map_or(Cell::Null(pg_sys::TEXTARRAYOID), Cell::TextArray),
                self.undos[i].as_deref().map_or(Cell::Null(pg_sys::TEXTOID), Cell::Text),
            ])?;
        }
        rows.finish();
        Ok(())
    }

    fn into_args(self, group: i32) -> [pgrx::datum::DatumWithOid<'static>; 7] {
        [
            group.into(),
            self.node_ids.into(),
            self.heights.into(),
            self.statuses.into(),
            self.reasons.into(),
            // `unnest` takes no ragged arrays: each list goes as one space-separated text.
            self.blamed.into_iter().map(|b| b.map(|b| b.join(" "))).collect::<Vec<_>>().into(),
            self.undos.into(),
        ]
    }
}

/// `row_meta` rows to write, as parallel arrays.
#[derive(Default)]
struct RowBatch<'c> {
    tables: Vec<&'c str>,
    keys: Vec<&'c str>,
    values: Vec<&'c Map<String, Value>>,
    metas: Vec<Value>,
}

impl RowBatch<'_> {
    /// Inserts the rows as new rows of `causal.row_meta`, without SQL (`direct.rs`).
    fn write_direct(&self, group: i32) -> Result<(), CausalError> {
        let mut rows = Inserter::open("row_meta", ROW_META_COLUMNS)?;
        for i in 0..self.keys.len() {
            rows.push(&[
                Cell::Int4(group),
                Cell::Text(self.tables[i]),
                Cell::Text(self.keys[i]),
                Cell::JsonbObject(self.values[i]),
                Cell::Jsonb(&self.metas[i]),
            ])?;
        }
        rows.finish();
        Ok(())
    }

    /// The statement arguments for `unnest`: values and metadata as JSON texts.
    fn into_args(self, group: i32) -> Result<[pgrx::datum::DatumWithOid<'static>; 5], serde_json::Error> {
        let values = self.values.iter().map(serde_json::to_string).collect::<Result<Vec<String>, _>>()?;
        let metas: Vec<String> = self.metas.iter().map(Value::to_string).collect();
        Ok([group.into(), self.tables.into(), self.keys.into(), values.into(), metas.into()])
    }
}

type RawRow = (Option<String>, Option<JsonB>, Option<JsonB>);

fn read_rows(tuples: pgrx::spi::SpiTupleTable<'_>) -> Result<Vec<RawRow>, pgrx::spi::Error> {
    let mut out = Vec::new();
    for t in tuples {
        out.push((t.get(1)?, t.get(2)?, t.get(3)?));
    }
    Ok(out)
}

fn to_states(rows: Vec<RawRow>) -> Result<Vec<(RowKey, RowState)>, ReconcileError> {
    let mut out = Vec::with_capacity(rows.len());
    for (k, v, m) in rows {
        let (Some(k), Some(v), Some(m)) = (k, v, m) else { continue };
        let values = match v.0 {
            Value::Object(o) => o,
            _ => Map::new(),
        };
        out.push((k, RowState::from_meta(values, &m.0)?));
    }
    Ok(out)
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use serde_json::{json, Value};

    use causal_core::schema::{check_value, ColumnType};

    /// Every value the validator takes for a column, Postgres takes in replay's cast: a value
    /// it would refuse never reaches replay (where it would fail the whole import).
    #[pg_test]
    fn values_the_validator_takes_are_ones_postgres_takes() {
        use ColumnType as T;
        let numeric = |p, s| T::Numeric { precision: Some(p), scale: Some(s) };
        let candidates: Vec<(ColumnType, Vec<Value>)> = vec![
            (T::Text, vec![json!("plain"), json!("caf\u{e9}"), json!("nul \u{0} inside")]),
            (
                T::Jsonb,
                vec![
                    json!("{\"a\": [1, 2.5, null]}"),
                    json!("not json"),
                    json!("{\"a\": \"\\u0000\"}"),
                    json!("\"\\u00e9\""),
                    json!("[".repeat(200) + &"]".repeat(200)),
                ],
            ),
            (
                T::Uuid,
                vec![
                    json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                    json!("------------------------------------"),
                    json!("a0eebc999c0b4ef8bb6d6bb9bd380a11----"),
                ],
            ),
            (
                T::Date,
                vec![
                    json!("2024-02-29"),
                    json!("2026-02-29"),
                    json!("2026-13-01"),
                    json!("0001-12-31 BC"),
                    json!("4714-11-24 BC"),
                    json!("4714-11-23 BC"),
                    json!("5874897-12-31"),
                    json!("5874898-01-01"),
                    json!("infinity"),
                ],
            ),
            (
                T::Timestamp,
                vec![
                    json!("2026-01-01T00:00:00.000000"),
                    json!("2026-01-01T24:00:00.000000"),
                    json!("294276-12-31T23:59:59.999999"),
                    json!("294277-01-01T00:00:00.000000"),
                    json!("0044-03-15T12:00:00.000000 BC"),
                ],
            ),
            (T::Timestamptz, vec![json!("2024-02-29T23:59:59.999999Z"), json!("2026-02-30T00:00:00.000000Z")]),
            (T::Float4, vec![json!(3.4e38), json!(1e39), json!(1e-40), json!(1e-50), json!("NaN")]),
            (
                numeric(5, 2),
                vec![
                    json!("999.994"),
                    json!("999.995"),
                    json!("1000"),
                    json!("-999.99"),
                    json!("Infinity"),
                    json!("NaN"),
                ],
            ),
            (numeric(2, 5), vec![json!("0.00012"), json!("0.0012")]),
            (T::Int4, vec![json!(2147483647), json!(2147483648i64)]),
        ];
        let (mut taken, mut refused) = (0, 0);
        for (ty, values) in candidates {
            for v in values {
                let text = match &v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                // The statement a DO block runs; text with NUL cannot be sent at all.
                let postgres = if text.contains('\0') {
                    "refused".to_string()
                } else {
                    crate::testing::outcome(&format!("PERFORM $v${text}$v$::{}", ty.sql_name()))
                };
                let ours = check_value(&ty, &v);
                assert!(ours.is_err() || postgres == "ok", "{ty:?} {v}: taken here, Postgres says {postgres}");
                if ours.is_ok() {
                    taken += 1;
                } else {
                    refused += 1;
                }
            }
        }
        assert!(taken >= 15 && refused >= 15, "{taken} taken, {refused} refused");
    }

    /// The statements on `row_meta` rows by key are probes of the hash index on `key`, even as
    /// generic plans over a table without statistics that a partial lookup index covers whole
    /// (which makes the group and table look selective), and they touch exactly their rows.
    #[pg_test]
    fn row_meta_statements_by_key_probe_the_key_index() {
        Spi::run(
            "INSERT INTO causal.row_meta (grp, table_name, key, vals, meta) \
             SELECT 1, 't', '[' || i || ']', jsonb_build_object('id', i, 'u', i), '{}' FROM generate_series(0, 19999) i; \
             CREATE INDEX row_meta_lookup_test ON causal.row_meta ((vals -> 'u')) WHERE grp = 1 AND table_name = 't'",
        )
        .unwrap();
        let statements = [
            ("rows_by_keys", super::ROWS_BY_KEYS, "int, text, text[]", "1, 't', ARRAY['[5]', '[77]', '[x]']"),
            ("row_by_key", super::ROW_BY_KEY, "int, text, text", "1, 't', '[77]'"),
            (
                "update_rows",
                super::UPDATE_ROWS,
                "int, text[], text[], text[], text[]",
                "1, ARRAY['t'], ARRAY['[9]'], ARRAY['{\"id\": 9, \"u\": 90}'], ARRAY['{}']",
            ),
            ("delete_rows", super::DELETE_ROWS, "int, text[], text[]", "1, ARRAY['t', 't'], ARRAY['[5]', '[77]']"),
        ];
        // As `probing_by_key` runs them (the single-key read is planned with bitmap scans on).
        for (name, sql, types, args) in statements {
            let bitmaps = if name == "row_by_key" { "on" } else { "off" };
            Spi::run(&format!("SET LOCAL enable_bitmapscan = {bitmaps}")).unwrap();
            let plan = crate::testing::generic_plan(name, types, sql, args);
            assert!(
                plan.contains("row_meta_key") && !plan.contains("Seq Scan") && !plan.contains("BitmapAnd"),
                "{name}: {plan}"
            );
            if name.ends_with("_rows") {
                assert!(plan.contains("Tid Scan"), "{name}: {plan}");
            }
            if bitmaps == "off" {
                assert!(plan.contains("\"Index Scan\"") && !plan.contains("Bitmap"), "{name}: {plan}");
            }
        }
        let count = |sql: &str| Spi::get_one::<i64>(sql).unwrap().unwrap_or(-1);
        let found = Spi::connect(|c| {
            c.select("EXECUTE rows_by_keys(1, 't', ARRAY['[5]', '[77]', '[x]'])", None, &[]).map(|t| t.len())
        });
        assert_eq!(found.unwrap(), 2);
        Spi::run("EXECUTE update_rows(1, ARRAY['t'], ARRAY['[9]'], ARRAY['{\"id\": 9, \"u\": 90}'], ARRAY['{}'])")
            .unwrap();
        assert_eq!(count("SELECT (vals ->> 'u')::int8 FROM causal.row_meta WHERE key = '[9]'"), 90);
        assert_eq!(count("SELECT count(*) FROM causal.row_meta WHERE (vals ->> 'u')::int = 9"), 0);
        Spi::run("EXECUTE delete_rows(1, ARRAY['t', 't'], ARRAY['[5]', '[77]'])").unwrap();
        assert_eq!(count("SELECT count(*) FROM causal.row_meta"), 19998);
        assert_eq!(count("SELECT count(*) FROM causal.row_meta WHERE key IN ('[5]', '[77]')"), 0);
        for (name, ..) in statements {
            Spi::run(&format!("DEALLOCATE {name}")).unwrap();
        }
    }
}
