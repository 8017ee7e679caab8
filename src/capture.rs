//! Capture: every committed transaction that writes replicated tables becomes one signed entry
//! per group.
//!
//! - An AFTER ROW trigger (`causal._capture`) encodes each change from the tuple and buffers it
//!   in backend memory, tagged with the subtransaction that made it.
//! - A transaction callback registered in `_PG_init` runs at PRE_COMMIT: it switches to the
//!   extension's owner (as a SECURITY DEFINER function would) and signs the buffered operations
//!   as one entry per group at that group's frontier (`append_ops` locks the group row, so concurrent
//!   transactions get entries in commit order). If that fails, the commit fails.
//! - Aborting a subtransaction drops what it buffered; aborting the transaction drops all.
//! - While replaying remote history the trigger records nothing.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::{AnyNumeric, JsonB};
use serde_json::{json, Map, Value};

use causal_core::membership::derive_meta_of;
use causal_core::op_text::{Field, InsertWriter, OpText};
use causal_core::payload::Op;
use causal_core::rules::Operation;
use causal_core::schema::{format_date, format_timestamp, ColumnType, TableSchema};

use crate::error::{CausalError, OrReport};
use crate::group::Group;
use crate::identity::check_author_grant;
use crate::members::{append_ops_as, append_texts_as};
use crate::rule_check::RuleInput;
use crate::spi_util::{get_opt, run_prepared};

struct Pending {
    /// The group's id, shared with the table's [`TableInfo`] (not copied for every row).
    group_id: std::rc::Rc<str>,
    subxact: pg_sys::SubTransactionId,
    op: PendingOp,
    /// The table has rules: its entry is placed by the engine at commit, so a write that the
    /// engine would cancel fails there (rules read other tables, which Postgres does not check).
    ruled: bool,
}

/// A buffered change: an insert into a table without rules is written as text at once (it is
/// only signed and stored at commit); anything else is kept as an operation.
enum PendingOp {
    Decoded(Op),
    Text(OpText),
}

impl PendingOp {
    fn into_op(self) -> Result<Op, CausalError> {
        match self {
            PendingOp::Decoded(op) => Ok(op),
            PendingOp::Text(t) => t.to_op().map_err(|e| CausalError::Corrupt(format!("a captured insert: {e}"))),
        }
    }
}

/// What capture needs of a replicated table. Kept for the backend's life and dropped when
/// the table's relcache entry is invalidated (any ALTER TABLE), or all at once when the
/// catalog of replicated tables or their rules changes ([`tables_changed`]).
pub struct TableInfo {
    /// The group's id, shared by the changes buffered for this table.
    pub group_id: std::rc::Rc<str>,
    pub schema: TableSchema,
    /// The attribute number of each schema column in the table's tuples, in schema order;
    /// found on the first row encoded (the entry is dropped when the table changes).
    attnums: std::cell::OnceCell<Vec<std::num::NonZeroUsize>>,
    /// The second key of the group's advisory lock ([`group_lock_key`]).
    lock_key: i32,
    /// Rule text by operation name; absent means any live member may write.
    rules: HashMap<String, String>,
    /// Writes the table's inserts as text, columns in schema order.
    inserts: InsertWriter,
}

thread_local! {
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    /// Replicated tables by relid, across transactions (see [`TableInfo`]).
    static TABLES: RefCell<HashMap<pg_sys::Oid, std::rc::Rc<TableInfo>>> = RefCell::new(HashMap::new());
    /// Set while applying remote history: nothing is captured.
    static REPLAYING: Cell<bool> = const { Cell::new(false) };
    /// This transaction's author (identity name and key id), once checked.
    static AUTHOR: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
    /// Groups this transaction has appended restricting entries to ([`restricting_entry`]).
    static RESTRICTED: RefCell<Vec<std::rc::Rc<str>>> = const { RefCell::new(Vec::new()) };
}

/// Notes that this transaction appended to `group_id` an entry that can cancel row changes
/// after it: a rule, or taking a table out of the group. The transaction's row changes, whose
/// entry comes after that one at commit whatever the order of the statements, are then placed
/// at commit rather than later, so a change the new entry refuses fails the commit instead of
/// being cancelled after it (with its row left in the table).
pub fn restricting_entry(group_id: &str) {
    RESTRICTED.with(|a| {
        let mut a = a.borrow_mut();
        if !a.iter().any(|g| &**g == group_id) {
            a.push(group_id.into());
        }
    });
}

/// Fails with [`CausalError::WritesFirst`] if this transaction has buffered changes to tables
/// of the group `group_id`: `action` would come before them in the group's history.
pub fn refuse_after_writes(group_id: &str, action: &'static str) -> Result<(), CausalError> {
    if !PENDING.with(|p| p.borrow().iter().any(|e| &*e.group_id == group_id)) {
        return Ok(());
    }
    let name = get_opt::<String>("SELECT name FROM causal.group_defs WHERE group_id = $1", &[group_id.into()])?;
    Err(CausalError::WritesFirst { group: name.unwrap_or_else(|| group_id.to_string()), action })
}

/// Checks, once per transaction, that the calling role may author as the session's identity.
fn ensure_author() -> Result<(), CausalError> {
    if AUTHOR.with(|a| a.borrow().is_none()) {
        let name = check_author_grant()?;
        let key_id = crate::identity::key_id_of(&name)?;
        AUTHOR.with(|a| *a.borrow_mut() = Some((name, key_id)));
    }
    Ok(())
}

/// Buffers a change of `info`'s table for this transaction's entry.
fn buffer(info: &TableInfo, subxact: pg_sys::SubTransactionId, op: PendingOp) {
    let ruled = !info.rules.is_empty();
    PENDING.with(|p| p.borrow_mut().push(Pending { group_id: info.group_id.clone(), subxact, op, ruled }));
}

fn clear() {
    PENDING.with(|p| p.borrow_mut().clear());
    RESTRICTED.with(|a| a.borrow_mut().clear());
    AUTHOR.with(|a| *a.borrow_mut() = None);
}

/// Relcache callback: forgets what a change to a table, or to the catalog, may have changed.
unsafe extern "C-unwind" fn on_relcache(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    crate::identity::relcache_changed(relid);
    let catalog = crate::tables::known_catalog_oid();
    TABLES.with(|t| {
        let mut t = t.borrow_mut();
        if relid == pg_sys::InvalidOid || relid == catalog {
            t.clear();
        } else {
            t.remove(&relid);
        }
    });
}

pub fn table_info(relid: pg_sys::Oid) -> Result<std::rc::Rc<TableInfo>, CausalError> {
    if let Some(info) = TABLES.with(|t| t.borrow().get(&relid).cloned()) {
        return Ok(info);
    }
    crate::tables::catalog_oid()?;
    let row = run_prepared(
        "SELECT group_id, schema FROM causal.replicated_tables WHERE relid = $1",
        &[relid.into()],
        false,
        |mut rows| match rows.next() {
            None => Ok(None),
            Some(r) => Ok(Some((r.get::<String>(1)?, r.get::<JsonB>(2)?))),
        },
    )?;
    let Some((Some(group_id), Some(schema))) = row else {
        return Err(CausalError::NotReplicated(format!("{relid:?}")));
    };
    let schema = TableSchema::from_value(&schema.0).map_err(|e| CausalError::Corrupt(e.to_string()))?;
    let rules = run_prepared(
        "SELECT operation, rule FROM causal.table_rules WHERE group_id = $1 AND table_name = $2",
        &[group_id.clone().into(), schema.table.clone().into()],
        false,
        |rows| {
            rows.filter_map(|r| match (r.get::<String>(1), r.get::<String>(2)) {
                (Ok(Some(op)), Ok(Some(rule))) => Some(Ok((op, rule))),
                (Err(e), _) | (_, Err(e)) => Some(Err(e)),
                _ => None,
            })
            .collect::<Result<HashMap<_, _>, _>>()
        },
    )?;
    let lock_key = crate::group_lock::group_lock_key(&group_id)?;
    let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    let inserts = InsertWriter::new(&schema.table, &columns);
    let info = std::rc::Rc::new(TableInfo {
        group_id: group_id.into(),
        inserts,
        schema,
        attnums: std::cell::OnceCell::new(),
        lock_key,
        rules,
    });
    TABLES.with(|t| t.borrow_mut().insert(relid, info.clone()));
    Ok(info)
}

fn float(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        serde_json::Number::from_f64(v).map_or(json!("NaN"), Value::Number)
    }
}

/// Encodes one column of a tuple; `None` for NULL.
fn encode_column(
    tuple: &PgHeapTuple<'_, impl pgrx::WhoAllocated>,
    attno: std::num::NonZeroUsize,
    name: &str,
    ty: &ColumnType,
) -> Result<Option<Value>, CausalError> {
    let bad = |e: pgrx::datum::TryFromDatumError| CausalError::Corrupt(format!("column {name}: {e}"));
    Ok(match ty {
        ColumnType::Text | ColumnType::Varchar(_) => {
            tuple.get_by_index::<String>(attno).map_err(bad)?.map(Value::String)
        }
        ColumnType::Int2 => tuple.get_by_index::<i16>(attno).map_err(bad)?.map(|v| json!(v)),
        ColumnType::Int4 => tuple.get_by_index::<i32>(attno).map_err(bad)?.map(|v| json!(v)),
        ColumnType::Int8 => tuple.get_by_index::<i64>(attno).map_err(bad)?.map(|v| json!(v.to_string())),
        ColumnType::Numeric { .. } => {
            tuple.get_by_index::<AnyNumeric>(attno).map_err(bad)?.map(|v| json!(v.to_string()))
        }
        ColumnType::Float8 => tuple.get_by_index::<f64>(attno).map_err(bad)?.map(float),
        ColumnType::Float4 => tuple.get_by_index::<f32>(attno).map_err(bad)?.map(|v| float(f64::from(v))),
        ColumnType::Bool => tuple.get_by_index::<bool>(attno).map_err(bad)?.map(Value::Bool),
        ColumnType::Date => tuple.get_by_index::<pgrx::datum::Date>(attno).map_err(bad)?.map(|d| {
            if d.is_infinity() {
                json!("infinity")
            } else if d.is_neg_infinity() {
                json!("-infinity")
            } else {
                json!(format_date(d.to_pg_epoch_days()))
            }
        }),
        ColumnType::Timestamp => tuple.get_by_index::<pgrx::datum::Timestamp>(attno).map_err(bad)?.map(|t| {
            if t.is_infinity() {
                json!("infinity")
            } else if t.is_neg_infinity() {
                json!("-infinity")
            } else {
                json!(format_timestamp(t.into_inner(), false))
            }
        }),
        ColumnType::Timestamptz => {
            tuple.get_by_index::<pgrx::datum::TimestampWithTimeZone>(attno).map_err(bad)?.map(|t| {
                if t.is_infinity() {
                    json!("infinity")
                } else if t.is_neg_infinity() {
                    json!("-infinity")
                } else {
                    json!(format_timestamp(t.into_inner(), true))
                }
            })
        }
        ColumnType::Uuid => tuple.get_by_index::<pgrx::datum::Uuid>(attno).map_err(bad)?.map(|u| {
            let b = u.as_bytes();
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            json!(format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]))
        }),
        ColumnType::Bytea => tuple
            .get_by_index::<&[u8]>(attno)
            .map_err(bad)?
            .map(|b| json!(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b))),
        ColumnType::Jsonb => match tuple.get_by_index::<JsonB>(attno).map_err(bad)? {
            Some(j) => Some(json!(serde_json::to_string(&j.0)
                .map_err(|e| CausalError::Corrupt(format!("column {name}: jsonb not serializable: {e}")))?)),
            None => None,
        },
    })
}

fn encode_row(
    tuple: &PgHeapTuple<'_, impl pgrx::WhoAllocated>,
    info: &TableInfo,
) -> Result<Map<String, Value>, CausalError> {
    let values = column_values(tuple, info)?;
    Ok(info.schema.columns.iter().zip(values).filter_map(|(c, v)| v.map(|v| (c.name.clone(), v))).collect())
}

/// The attribute number of each schema column in `tuple`'s table, in schema order.
fn attnums<'i>(
    tuple: &PgHeapTuple<'_, impl pgrx::WhoAllocated>,
    info: &'i TableInfo,
) -> Result<&'i [std::num::NonZeroUsize], CausalError> {
    if let Some(a) = info.attnums.get() {
        return Ok(a);
    }
    let mut found = Vec::with_capacity(info.schema.columns.len());
    for c in &info.schema.columns {
        let (attno, _) = tuple
            .get_attribute_by_name(&c.name)
            .ok_or_else(|| CausalError::Corrupt(format!("column {} is not in table {}", c.name, info.schema.table)))?;
        found.push(attno);
    }
    Ok(info.attnums.get_or_init(|| found))
}

/// Each schema column of a tuple as a field for [`InsertWriter::write_fields`], in schema
/// order: text borrowed from the tuple, small integers and booleans as they are, any other
/// type encoded as [`encode_column`] does.
fn column_fields<'t>(
    tuple: &'t PgHeapTuple<'_, impl pgrx::WhoAllocated>,
    info: &TableInfo,
) -> Result<Vec<Field<'t>>, CausalError> {
    let attnums = attnums(tuple, info)?;
    let mut fields = Vec::with_capacity(attnums.len());
    for (c, attno) in info.schema.columns.iter().zip(attnums) {
        let bad = |e: pgrx::datum::TryFromDatumError| CausalError::Corrupt(format!("column {}: {e}", c.name));
        let field = match c.ty {
            ColumnType::Text | ColumnType::Varchar(_) => {
                tuple.get_by_index::<&str>(*attno).map_err(bad)?.map(Field::Str)
            }
            ColumnType::Int2 => tuple.get_by_index::<i16>(*attno).map_err(bad)?.map(|v| Field::Int(v.into())),
            ColumnType::Int4 => tuple.get_by_index::<i32>(*attno).map_err(bad)?.map(|v| Field::Int(v.into())),
            ColumnType::Bool => tuple.get_by_index::<bool>(*attno).map_err(bad)?.map(Field::Bool),
            _ => encode_column(tuple, *attno, &c.name, &c.ty)?.map(Field::Value),
        };
        fields.push(field.unwrap_or(Field::Null));
    }
    Ok(fields)
}

/// The encoded value of each schema column of a tuple, in schema order; `None` for NULL.
fn column_values(
    tuple: &PgHeapTuple<'_, impl pgrx::WhoAllocated>,
    info: &TableInfo,
) -> Result<Vec<Option<Value>>, CausalError> {
    let attnums = attnums(tuple, info)?;
    info.schema.columns.iter().zip(attnums).map(|(c, attno)| encode_column(tuple, *attno, &c.name, &c.ty)).collect()
}

fn key_of(row: &Map<String, Value>, schema: &TableSchema) -> Map<String, Value> {
    schema.primary_key.iter().filter_map(|k| row.get(k).map(|v| (k.clone(), v.clone()))).collect()
}

fn capture(trigger: &PgTrigger<'_>) -> Result<(), CausalError> {
    if REPLAYING.with(Cell::get) {
        return Ok(());
    }
    let relid = trigger.relid().map_err(|e| CausalError::Corrupt(e.to_string()))?;
    let info = table_info(relid)?;
    ensure_author()?;
    let kind = trigger.op().map_err(|e| CausalError::Corrupt(e.to_string()))?;
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    if info.rules.is_empty() && matches!(kind, PgTriggerOperation::Insert) {
        // No rule to check (the common case, and the cheapest path): the row is written as
        // the operation's text at once, without building a JSON map of it.
        let new = trigger.new().ok_or_else(|| CausalError::Corrupt("INSERT without NEW".into()))?;
        buffer(&info, subxact, PendingOp::Text(info.inserts.write_fields(&column_fields(&new, &info)?)?));
        return Ok(());
    }
    let author = AUTHOR.with(|a| a.borrow().as_ref().map(|(_, k)| k.clone())).unwrap_or_default();
    let check = |op: Operation, new: Option<&Map<String, Value>>, old: Option<&Map<String, Value>>| {
        let Some(rule) = info.rules.get(op.name()) else { return Ok(()) };
        let input = RuleInput { schema: &info.schema, new, old, author: &author };
        crate::rule_check::check_write(&info.group_id, op, rule, &input)
    };
    let schema = &info.schema;
    let table = schema.table.clone();
    let mut ops: Vec<PendingOp> = Vec::new();
    match kind {
        PgTriggerOperation::Insert => {
            let new = trigger.new().ok_or_else(|| CausalError::Corrupt("INSERT without NEW".into()))?;
            let row = encode_row(&new, &info)?;
            check(Operation::Insert, Some(&row), None)?;
            ops.push(PendingOp::Decoded(Op::Insert { table, row }));
        }
        PgTriggerOperation::Update => {
            let old =
                encode_row(&trigger.old().ok_or_else(|| CausalError::Corrupt("UPDATE without OLD".into()))?, &info)?;
            let new =
                encode_row(&trigger.new().ok_or_else(|| CausalError::Corrupt("UPDATE without NEW".into()))?, &info)?;
            check(Operation::Update, Some(&new), Some(&old))?;
            let (old_key, new_key) = (key_of(&old, schema), key_of(&new, schema));
            if old_key != new_key {
                // A changed primary key is a different row: delete the old, insert the new.
                ops.push(PendingOp::Decoded(Op::Delete { table: table.clone(), key: old_key }));
                ops.push(PendingOp::Decoded(Op::Insert { table, row: new }));
            } else {
                let set: Map<String, Value> =
                    new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
                let unset: Vec<String> = old.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
                if !set.is_empty() || !unset.is_empty() {
                    ops.push(PendingOp::Decoded(Op::Update { table, key: new_key, set, unset }));
                }
            }
        }
        PgTriggerOperation::Delete => {
            let old =
                encode_row(&trigger.old().ok_or_else(|| CausalError::Corrupt("DELETE without OLD".into()))?, &info)?;
            ops.push(PendingOp::Decoded(Op::Delete { table, key: key_of(&old, schema) }));
        }
        PgTriggerOperation::Truncate => {
            return Err(CausalError::Truncate(schema.table.clone()));
        }
    }
    for op in ops {
        buffer(&info, subxact, op);
    }
    Ok(())
}

/// Row trigger on replicated tables: buffers the change for this transaction's entry.
#[pg_trigger]
fn _capture<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, CausalError> {
    capture(trigger).or_report("causal._capture");
    Ok(None)
}

/// Statement trigger refusing TRUNCATE of replicated tables.
#[pg_trigger]
fn _refuse_truncate<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, CausalError> {
    let name = trigger.table_name().unwrap_or_default();
    CausalError::Truncate(name).report("causal._refuse_truncate")
}

/// Signs and appends this transaction's buffered changes: one entry per group. The commit hook
/// runs it as the extension's owner (it writes the catalog and reads the author's key); the
/// author is checked against the role that made the changes.
fn flush() {
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    // Per group: its operations, and whether any of them touched a table with rules.
    let mut by_group: Vec<(std::rc::Rc<str>, Vec<PendingOp>, bool)> = Vec::new();
    for p in pending {
        match by_group.iter_mut().find(|(g, _, _)| *g == p.group_id) {
            Some((_, ops, ruled)) => {
                ops.push(p.op);
                *ruled |= p.ruled;
            }
            None => by_group.push((p.group_id, vec![p.op], p.ruled)),
        }
    }
    if by_group.is_empty() {
        return;
    }
    // The trigger checked the role's grant of this identity when it buffered the first change.
    let signer = match AUTHOR.with(|a| a.borrow().as_ref().map(|(name, _)| name.clone())) {
        Some(name) => crate::identity::author_named(&name),
        None => crate::identity::current_author(),
    }
    .or_report("causal commit");
    for (group_id, ops, ruled) in by_group {
        let group = Group::find(&group_id).or_report("causal commit");
        let restricted = RESTRICTED.with(|a| a.borrow().contains(&group_id));
        if ruled || restricted {
            // The engine places the entry now, and checks the rules there (including one this
            // transaction declared before committing).
            let ops = ops.into_iter().map(PendingOp::into_op).collect::<Result<Vec<_>, _>>().or_report("causal commit");
            append_ops_as(&group, ops, false, &signer, false).or_report("causal commit");
        } else {
            // Without rules, Postgres's constraints checked these rows at the frontier, which
            // is where the entry goes: the engine places it later, in a batch
            // (replay::catch_up). The entry is stored as text, signed over the same text.
            let (texts, meta) = texts_of(ops).or_report("causal commit");
            append_texts_as(&group, &texts, meta, &signer).or_report("causal commit");
        }
    }
}

/// The operations' texts, and the entry's metadata (which only decoded operations carry:
/// a delete is a barrier; inserts have none).
fn texts_of(ops: Vec<PendingOp>) -> Result<(Vec<OpText>, causal_core::entry::Meta), CausalError> {
    let mut meta = causal_core::entry::Meta::new();
    let mut texts = Vec::with_capacity(ops.len());
    for op in ops {
        texts.push(match op {
            PendingOp::Text(t) => t,
            PendingOp::Decoded(op) => {
                for (k, v) in derive_meta_of(None, std::slice::from_ref(&op)) {
                    meta.entry(k).or_default().extend(v);
                }
                OpText::from_op(&op)?
            }
        });
    }
    Ok((texts, meta))
}

/// The same flush, callable from SQL (tests run inside one transaction and flush by hand).
#[pg_extern(security_definer)]
#[search_path(pg_catalog, @extschema@)]
fn _flush() {
    flush();
}

thread_local! {
    static OWNER: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
}

/// The role that owns the extension (and so the catalog).
fn extension_owner() -> pg_sys::Oid {
    if let Some(o) = OWNER.with(Cell::get) {
        return o;
    }
    let owner = get_opt::<pg_sys::Oid>("SELECT extowner FROM pg_extension WHERE extname = 'pg_causal'", &[])
        .map_err(CausalError::from)
        .or_report("causal commit")
        .unwrap_or(pg_sys::BOOTSTRAP_SUPERUSERID.into());
    OWNER.with(|o| o.set(Some(owner)));
    owner
}

/// Runs the flush as the extension's owner, as a SECURITY DEFINER function would. If it fails,
/// the transaction's abort restores the user.
unsafe fn flush_as_owner() {
    let owner = extension_owner();
    let (mut saved_user, mut saved_context) = (pg_sys::InvalidOid, 0);
    pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
    pg_sys::SetUserIdAndSecContext(owner, saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    flush();
    pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT if PENDING.with(|p| !p.borrow().is_empty()) => {
            // Statements have finished, so there is no active snapshot; SPI needs one. If the
            // flush fails, the abort that follows releases it.
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            flush_as_owner();
            pg_sys::PopActiveSnapshot();
        }
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE if PENDING.with(|p| !p.borrow().is_empty()) => {
            clear();
            CausalError::Prepare.report("causal commit");
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            clear();
            crate::xact::aborted(crate::xact::Undone::Transaction);
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PREPARE => clear(),
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        PENDING.with(|p| p.borrow_mut().retain(|e| e.subxact < my_subid));
        crate::xact::aborted(crate::xact::Undone::subtransaction(my_subid));
    }
}

/// Registers the transaction callbacks; called from `_PG_init`.
pub fn register_callbacks() {
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
        pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache), pg_sys::Datum::from(0usize));
    }
}

/// Statement trigger (BEFORE, so before any row lock) on replicated tables: takes the group's
/// write lock shared, straight from the lock manager (the tag `pg_advisory_xact_lock_shared`
/// would build).
#[pg_trigger]
fn _lock_group<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, CausalError> {
    let relid = trigger.relation().map(|r| r.oid()).map_err(|e| CausalError::Corrupt(e.to_string()))?;
    let info = table_info(relid).or_report("causal._lock_group");
    crate::group_lock::lock_group_shared(info.lock_key);
    Ok(None)
}

/// The most rows `causal.replicate` takes into the group with the calling transaction: they
/// all go into that transaction's one entry.
pub const MAX_EXISTING_ROWS: u64 = 1_000_000;

/// Buffers every row of `relid` as an insert of this transaction, as the capture trigger would
/// have: `causal.replicate` of a table that holds rows puts them in the group, in the calling
/// transaction's entry, after the table's schema entry. Returns how many rows.
pub fn capture_existing_rows(relid: pg_sys::Oid) -> Result<u64, CausalError> {
    let info = table_info(relid)?;
    ensure_author()?;
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    let mut rows = 0u64;
    unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        use pg_sys::ScanOptions::*;
        let flags = SO_TYPE_SEQSCAN | SO_ALLOW_STRAT | SO_ALLOW_SYNC | SO_ALLOW_PAGEMODE;
        let scan = pg_sys::heap_beginscan(
            rel,
            pg_sys::GetActiveSnapshot(),
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            flags,
        );
        // Values stored out of line are detoasted into this context, emptied after each row.
        let mut row_memory = pgrx::PgMemoryContexts::new("causal.replicate rows");
        let mut read = || -> Result<(), CausalError> {
            loop {
                let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
                if tuple.is_null() {
                    return Ok(());
                }
                rows += 1;
                if rows > MAX_EXISTING_ROWS {
                    return Err(CausalError::Unsupported {
                        table: info.schema.table.clone(),
                        what: format!(
                            "it holds more than {MAX_EXISTING_ROWS} rows, which would all go into one entry; \
                             replicate an empty copy and load the rows in batches of transactions"
                        ),
                    });
                }
                let text = row_memory.switch_to(|_| -> Result<OpText, CausalError> {
                    let t = PgHeapTuple::from_heap_tuple(pgrx::PgTupleDesc::from_pg_unchecked((*rel).rd_att), tuple);
                    Ok(info.inserts.write_fields(&column_fields(&t, &info)?)?)
                });
                row_memory.reset();
                buffer(&info, subxact, PendingOp::Text(text?));
            }
        };
        let result = read();
        pg_sys::heap_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        result?;
    }
    Ok(rows)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn setup() {
        Spi::run(
            "SELECT causal.create_group('shop'); \
             CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2) CHECK (price >= 0), \
               added timestamptz, ok boolean, n bigint, f double precision); \
             SELECT causal.replicate('shop', 'products');",
        )
        .unwrap();
    }

    fn entries() -> i64 {
        Spi::get_one::<i64>("SELECT count(*) FROM causal.dag_entries").unwrap().unwrap()
    }

    fn last_ops() -> serde_json::Value {
        let p = Spi::get_one::<String>("SELECT payload FROM causal.dag_entries ORDER BY node_id DESC LIMIT 1")
            .unwrap()
            .unwrap();
        causal_core::json::parse(&p).unwrap()["ops"].clone()
    }

    #[pg_test]
    fn writes_are_buffered_until_commit() {
        setup();
        let before = entries();
        Spi::run("INSERT INTO products VALUES ('A', 'Widget', 9.99, '2024-02-29 12:34:56.789012+00', true, 9007199254740993, 'NaN')")
            .unwrap();
        // The pg_test runs inside one transaction, so nothing is flushed yet...
        assert_eq!(entries(), before);
        // ...until the flush the commit would run.
        Spi::run("SELECT causal._flush()").unwrap();
        assert_eq!(entries(), before + 1);
        let ops = last_ops();
        assert_eq!(ops.as_array().unwrap().len(), 1);
        let row = &ops[0]["row"];
        assert_eq!(ops[0]["op"], "insert");
        assert_eq!(row["price"], "9.99");
        assert_eq!(row["added"], "2024-02-29T12:34:56.789012Z");
        assert_eq!(row["n"], "9007199254740993");
        assert_eq!(row["f"], "NaN");
        assert_eq!(row["ok"], true);
    }

    #[pg_test]
    fn updates_record_changed_columns_and_deletes_record_keys() {
        setup();
        Spi::run("INSERT INTO products (sku, name, price) VALUES ('A', 'Widget', 1); SELECT causal._flush();").unwrap();
        Spi::run("UPDATE products SET price = 2, added = NULL WHERE sku = 'A'; UPDATE products SET price = NULL WHERE sku = 'A'; DELETE FROM products WHERE sku = 'A'; SELECT causal._flush();").unwrap();
        let ops = last_ops();
        assert_eq!(ops[0]["op"], "update");
        assert_eq!(ops[0]["set"], serde_json::json!({"price": "2.00"}));
        assert_eq!(ops[1]["unset"], serde_json::json!(["price"]));
        assert_eq!(ops[2], serde_json::json!({"op": "delete", "table": "products", "key": {"sku": "A"}}));
    }

    #[pg_test]
    fn rolled_back_savepoints_leave_nothing() {
        setup();
        Spi::run(
            "DO $$ BEGIN \
               BEGIN INSERT INTO products VALUES ('X', 'x', 1); RAISE EXCEPTION 'undo'; EXCEPTION WHEN OTHERS THEN NULL; END; \
               INSERT INTO products VALUES ('Y', 'y', 1); \
             END $$; SELECT causal._flush();",
        )
        .unwrap();
        let ops = last_ops();
        assert_eq!(ops.as_array().unwrap().len(), 1);
        assert_eq!(ops[0]["row"]["sku"], "Y");
    }

    fn count(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql).unwrap().unwrap()
    }

    /// Inserts into a table without rules are written as text in the trigger and signed as
    /// text at commit. Values whose canonical form is not ordinary JSON (control characters,
    /// doubles) and an entry long enough for its canonical operations to be
    /// permuted still give an entry that verifies, reads back in commit order, and places
    /// the rows the table holds.
    #[pg_test]
    fn inserts_written_as_text_verify_and_read_back() {
        setup();
        Spi::run(
            "INSERT INTO products (sku, name, price, added, ok, n, f) \
             SELECT 'k' || i, CASE WHEN i % 3 = 0 THEN E'tab\\there\\nline ' || i ELSE 'plain \"q\" \\\\ ' || i END, \
                    i, '2026-11-22 10:00:00+00', i % 2 = 0, 9007199254740993 + i, \
                    (ARRAY[1e21, 0.1, 5, -0.0, 1.5e17])[1 + i % 5] \
             FROM generate_series(1, 12) i; \
             DELETE FROM products WHERE sku = 'k4'; \
             INSERT INTO products (sku, name) VALUES ('\u{1F389}', 'party'); \
             SELECT causal._flush();",
        )
        .unwrap();
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(true));
        let ops = last_ops();
        let ops = ops.as_array().unwrap();
        assert_eq!(ops.len(), 14);
        for (i, op) in ops.iter().take(12).enumerate() {
            assert_eq!(op["op"], "insert");
            assert_eq!(op["row"]["sku"], format!("k{}", i + 1), "operations stay in commit order");
        }
        assert_eq!(ops[2]["row"]["name"], "tab\there\nline 3");
        assert_eq!(ops[12]["op"], "delete");
        assert_eq!(ops[13]["row"]["sku"], "\u{1F389}");
        // The delete makes the entry a barrier, as an entry built from operations would be.
        assert_eq!(
            count(
                "SELECT count(*) FROM causal.dag_entry_tags t JOIN causal.dag_entries e USING (grp, chain, seq) \
                 WHERE e.node_id = (SELECT max(node_id) FROM causal.dag_entries) AND t.tag = 'kind=barrier'"
            ),
            1
        );
        assert_eq!(count("SELECT causal.catch_up('shop')"), 1);
        let joined = "SELECT count(*) FROM products p JOIN causal.snapshot('products') s ON s->>'sku' = p.sku";
        assert_eq!(count(joined), 12);
        let differing = format!(
            "{joined} WHERE s->>'name' <> p.name OR (s->>'n')::int8 <> p.n OR (s->>'f')::float8 IS DISTINCT FROM p.f"
        );
        assert_eq!(count(&differing), 0, "the placed rows are the table's rows");
    }

    /// An insert written as text into a table without rules, in a transaction that also
    /// writes a table with rules of the same group: the entry is placed at commit, so the
    /// text is decoded back into its operation for the engine.
    #[pg_test]
    fn a_text_insert_beside_a_ruled_table_is_placed_at_commit() {
        setup();
        Spi::run(
            "CREATE TABLE notes (id int PRIMARY KEY, body text); \
             SELECT causal.replicate('shop', 'notes'); \
             SELECT causal.allow('notes', 'insert', 'new.id > 0');",
        )
        .unwrap();
        Spi::run(
            "INSERT INTO products (sku, name, price) VALUES ('A', E'two\\nlines', 1); \
             INSERT INTO notes VALUES (1, 'first'); SELECT causal._flush();",
        )
        .unwrap();
        assert_eq!(
            count("SELECT (entry_count - reconciled_count)::int8 FROM causal.group_defs WHERE name = 'shop'"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM causal.row_meta WHERE table_name IN ('products', 'notes')"), 2);
        let name = Spi::get_one::<String>("SELECT vals->>'name' FROM causal.row_meta WHERE table_name = 'products'");
        assert_eq!(name.unwrap().as_deref(), Some("two\nlines"));
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(true));
    }

    /// A rule declared after an insert in the same transaction: the rule's entry is appended
    /// when declared, the rows' entry at commit, after it, so the rule applies to the insert
    /// (docs/SQL_API.md, "What is recorded"). The rows' entry is then placed at commit, so an
    /// insert the rule refuses fails the commit (before, it was placed later and cancelled,
    /// and its row stayed in the table).
    #[pg_test(
        error = "the transaction would be cancelled in its group: insert on products is not allowed by the rule new.price > 100"
    )]
    fn a_rule_declared_after_an_insert_in_its_transaction_applies_to_it() {
        setup();
        Spi::run(
            "INSERT INTO products (sku, name, price) VALUES ('cheap', 'c', 1); \
             SELECT causal.allow('products', 'insert', 'new.price > 100'); \
             SELECT causal._flush();",
        )
        .unwrap();
    }

    /// The same with an insert the rule allows: placed at commit, nothing left to place.
    #[pg_test]
    fn an_insert_before_a_rule_it_satisfies_is_placed_at_commit() {
        setup();
        Spi::run(
            "INSERT INTO products (sku, name, price) VALUES ('dear', 'd', 500); \
             SELECT causal.allow('products', 'insert', 'new.price > 100'); \
             SELECT causal._flush();",
        )
        .unwrap();
        assert_eq!(
            count("SELECT (entry_count - reconciled_count)::int8 FROM causal.group_defs WHERE name = 'shop'"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM causal.log('shop') WHERE status <> 'ok'"), 0);
        assert_eq!(count("SELECT count(*) FROM causal.row_meta WHERE table_name = 'products'"), 1);
    }

    /// Taking a table out of the group after writing it in the same transaction: the rows'
    /// entry would follow the table's removal, so the commit fails.
    #[pg_test(
        error = "the transaction would be cancelled in its group: table products is not replicated at the entry's position"
    )]
    fn writes_before_unreplicate_in_one_transaction_fail_the_commit() {
        setup();
        Spi::run(
            "INSERT INTO products (sku, name, price) VALUES ('A', 'a', 1); \
             SELECT causal.unreplicate('products'); \
             SELECT causal._flush();",
        )
        .unwrap();
    }

    /// `INSERT ... ON CONFLICT DO UPDATE`: the row that existed is recorded as an update, the
    /// new one as an insert, in the order Postgres processed them; placed, the view is the
    /// table.
    #[pg_test]
    fn an_upsert_records_updates_and_inserts_in_order() {
        setup();
        Spi::run("INSERT INTO products (sku, name, price) VALUES ('A', 'old', 1); SELECT causal._flush();").unwrap();
        Spi::run(
            "INSERT INTO products (sku, name, price) VALUES ('B', 'new', 2), ('A', 'renamed', 3) \
             ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price; \
             SELECT causal._flush();",
        )
        .unwrap();
        let ops = last_ops();
        let kinds: Vec<&str> = ops.as_array().unwrap().iter().map(|o| o["op"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["insert", "update"]);
        assert_eq!(ops[0]["row"]["sku"], "B");
        assert_eq!(ops[1]["key"]["sku"], "A");
        assert_eq!(ops[1]["set"]["name"], "renamed");
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(true));
        assert_eq!(count("SELECT causal.catch_up('shop')"), 2);
        let view =
            "SELECT string_agg(s->>'sku' || ':' || (s->>'name') || ':' || (s->>'price'), ',' ORDER BY s->>'sku') \
                    FROM causal.snapshot('products') s";
        assert_eq!(Spi::get_one::<String>(view).unwrap().as_deref(), Some("A:renamed:3.00,B:new:2.00"));
    }

    /// A text value stored out of line and compressed (TOAST) is read whole by the text path.
    #[pg_test]
    fn a_toasted_text_value_is_captured_whole() {
        setup();
        Spi::run(
            "INSERT INTO products (sku, name) VALUES ('big', repeat('0123456789', 20000) || 'end'); \
             SELECT causal._flush();",
        )
        .unwrap();
        let ops = last_ops();
        let name = ops[0]["row"]["name"].as_str().unwrap();
        assert_eq!(name.len(), 200_003);
        assert!(name.ends_with("9end"));
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(true));
    }

    /// ADD COLUMN after row changes in the same transaction: Postgres would give the earlier
    /// rows the default, their entry (made at commit, after the schema entry) would not, and
    /// the table would differ from the view. Refused.
    #[pg_test(
        error = "this transaction has already written replicated tables of group shop, so it cannot add a column to one of them"
    )]
    fn add_column_after_row_changes_in_one_transaction_is_refused() {
        setup();
        Spi::run(
            "INSERT INTO products (sku, name, price) VALUES ('A', 'a', 1); \
             ALTER TABLE products ADD COLUMN color text DEFAULT 'red';",
        )
        .unwrap();
    }

    /// In the other order, the rows carry the new column's value.
    #[pg_test]
    fn add_column_before_row_changes_in_one_transaction_is_captured() {
        setup();
        Spi::run(
            "ALTER TABLE products ADD COLUMN color text DEFAULT 'red'; \
             INSERT INTO products (sku, name, price) VALUES ('A', 'a', 1); \
             SELECT causal._flush(); SELECT causal.catch_up('shop');",
        )
        .unwrap();
        let view = "SELECT s->>'color' FROM causal.snapshot('products') s WHERE s->>'sku' = 'A'";
        assert_eq!(Spi::get_one::<String>(view).unwrap().as_deref(), Some("red"));
    }

    /// `causal.replicate` of a table that already holds rows takes them into the group: they
    /// are inserts of the calling transaction's entry, after the schema entry.
    #[pg_test]
    fn replicating_a_table_takes_its_rows_into_the_group() {
        Spi::run(
            "SELECT causal.create_group('shop'); \
             CREATE TABLE t (id int PRIMARY KEY, v text, n bigint); \
             INSERT INTO t VALUES (1, 'a', NULL), (2, E'line\\nbreak', 9007199254740993), (3, NULL, 3), \
                                  (4, repeat('toasted ', 20000), 4), (5, repeat('again ', 30000), 5); \
             SELECT causal.replicate('shop', 't'); \
             SELECT causal._flush();",
        )
        .unwrap();
        let ops = last_ops();
        let ops = ops.as_array().unwrap();
        assert_eq!(ops.len(), 5);
        assert!(ops.iter().all(|o| o["op"] == "insert" && o["table"] == "t"));
        // Values stored out of line are read whole (each row is read in a context reset after it).
        let long: Vec<usize> = ops.iter().filter_map(|o| o["row"]["v"].as_str()).map(str::len).collect();
        assert!(long.contains(&160_000) && long.contains(&180_000), "{long:?}");
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(true));
        Spi::run("SELECT causal.catch_up('shop')").unwrap();
        assert_eq!(count("SELECT count(*) FROM causal.snapshot('t')"), 5, "the view holds the table's rows");
        let differing = "SELECT count(*) FROM t JOIN causal.snapshot('t') s ON (s->>'id')::int = t.id \
                         WHERE s->>'v' IS DISTINCT FROM t.v OR (s->>'n')::int8 IS DISTINCT FROM t.n";
        assert_eq!(count(differing), 0);
    }

    /// Fault injection: the view holds a row the table does not (written into `row_meta`
    /// directly), so a local insert of the same key, which Postgres accepted, is cancelled
    /// when the engine first places it. Placement puts the table's row back to the view's.
    #[pg_test]
    fn a_local_commit_cancelled_at_placement_gives_its_rows_back_to_the_view() {
        setup();
        Spi::run(
            "INSERT INTO causal.row_meta (grp, table_name, key, vals, meta) \
             SELECT grp, 'products', '[\"X\"]', '{\"sku\": \"X\", \"name\": \"view\"}', \
                    jsonb_build_object('i', (SELECT hash FROM causal.dag_entries d WHERE d.grp = g.grp AND node_id = 1)) \
             FROM causal.group_defs g WHERE name = 'shop'; \
             INSERT INTO products (sku, name, price) VALUES ('X', 'local', 1), ('Y', 'kept', 2); \
             SELECT causal._flush();",
        )
        .unwrap();
        assert_eq!(count("SELECT causal.catch_up('shop')"), 1);
        assert_eq!(
            Spi::get_one::<String>("SELECT status FROM causal.log('shop', 1)").unwrap().as_deref(),
            Some("cancelled")
        );
        // The entry is cancelled whole: X goes back to the view's row, Y (new) goes away.
        let table = "SELECT string_agg(sku || ':' || name, ',' ORDER BY sku) FROM products";
        assert_eq!(Spi::get_one::<String>(table).unwrap().as_deref(), Some("X:view"));
    }

    #[pg_test]
    fn plain_data_commits_are_placed_later_in_a_batch() {
        setup();
        let unplaced = "SELECT (entry_count - reconciled_count)::int8 FROM causal.group_defs WHERE name = 'shop'";
        assert_eq!(count(unplaced), 0);
        Spi::run("INSERT INTO products (sku, name, price) VALUES ('A', 'Widget', 1); SELECT causal._flush();").unwrap();
        Spi::run("UPDATE products SET price = 2 WHERE sku = 'A'; INSERT INTO products (sku, name) VALUES ('B', 'Bolt'); SELECT causal._flush();").unwrap();
        Spi::run("DELETE FROM products WHERE sku = 'B'; INSERT INTO products (sku, name) VALUES ('C', 'Cog'); SELECT causal._flush();").unwrap();
        // Three entries wait to be placed: no journal rows, no row metadata yet...
        assert_eq!(count(unplaced), 3);
        assert_eq!(count("SELECT count(*) FROM causal.row_meta WHERE table_name = 'products'"), 0);
        // ...but the view at the frontier already has them, and the log shows them ok.
        let view =
            "SELECT string_agg(s->>'sku' || ':' || coalesce(s->>'price', '-'), ',') FROM causal.snapshot('products') s";
        assert_eq!(Spi::get_one::<String>(view).unwrap().unwrap(), "A:2.00,C:-");
        assert_eq!(count("SELECT count(*) FROM causal.log('shop') WHERE status <> 'ok'"), 0);
        // One batch places all three.
        assert_eq!(count("SELECT causal.catch_up('shop')"), 3);
        assert_eq!(count(unplaced), 0);
        assert_eq!(count("SELECT count(*) FROM causal.journal j JOIN causal.group_defs g USING (grp) WHERE g.name = 'shop' AND status = 'ok'"), 5);
        assert_eq!(Spi::get_one::<String>(view).unwrap().unwrap(), "A:2.00,C:-");
        assert_eq!(count("SELECT count(*) FROM causal.row_meta WHERE table_name = 'products' AND NOT meta ? 'd'"), 2);
        assert_eq!(count("SELECT causal.catch_up()"), 0);
    }

    #[pg_test]
    fn administrative_entries_place_earlier_commits_first() {
        setup();
        Spi::run("INSERT INTO products (sku, name, price) VALUES ('A', 'Widget', 1); SELECT causal._flush();").unwrap();
        Spi::run("SELECT causal.allow('products', 'insert', 'true')").unwrap();
        assert_eq!(
            count("SELECT (entry_count - reconciled_count)::int8 FROM causal.group_defs WHERE name = 'shop'"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM causal.row_meta WHERE table_name = 'products'"), 1);
        // A table with rules is placed at its commit.
        Spi::run("INSERT INTO products (sku, name, price) VALUES ('B', 'Bolt', 1); SELECT causal._flush();").unwrap();
        assert_eq!(
            count("SELECT (entry_count - reconciled_count)::int8 FROM causal.group_defs WHERE name = 'shop'"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM causal.row_meta WHERE table_name = 'products'"), 2);
    }

    #[pg_test]
    fn a_long_backlog_is_placed_in_bounded_runs_with_the_same_outcome() {
        setup();
        let unplaced = "SELECT (entry_count - reconciled_count)::int8 FROM causal.group_defs WHERE name = 'shop'";
        // Three commits of 12,000 rows: no two fit in one run (20,000 rows), so catch_up
        // places them in three runs. Then a dozen small commits, more than a local commit
        // takes into its own run, which the rule entry below places before itself.
        for batch in 0..3 {
            Spi::run(&format!(
                "INSERT INTO products (sku, name, price) SELECT 'k' || ({batch} * 12000 + i), 'n', i % 100 \
                 FROM generate_series(1, 12000) i; SELECT causal._flush();"
            ))
            .unwrap();
        }
        Spi::run("UPDATE products SET price = 7 WHERE sku = 'k5'; SELECT causal._flush();").unwrap();
        assert_eq!(count(unplaced), 4);
        // A bounded call stops after the run that reaches its rows: the first entry alone.
        assert_eq!(count("SELECT causal.catch_up('shop', 1)"), 1);
        assert_eq!(count(unplaced), 3);
        assert_eq!(count("SELECT causal.catch_up('shop')"), 3);
        assert_eq!(count(unplaced), 0);
        assert_eq!(count("SELECT count(*) FROM causal.row_meta WHERE table_name = 'products'"), 36000);
        assert_eq!(count("SELECT count(*) FROM causal.row_meta WHERE table_name = 'products' AND meta ? 'w'"), 1);
        for i in 1..=12 {
            Spi::run(&format!("DELETE FROM products WHERE sku = 'k{i}'; SELECT causal._flush();")).unwrap();
        }
        assert_eq!(count(unplaced), 12);
        Spi::run("SELECT causal.allow('products', 'insert', 'true')").unwrap();
        assert_eq!(count(unplaced), 0);
        assert_eq!(count("SELECT count(*) FROM causal.row_meta WHERE table_name = 'products' AND meta ? 'd'"), 12);
        assert_eq!(count("SELECT count(*) FROM causal.log('shop', 1000) WHERE status <> 'ok'"), 0);
        // What row_meta holds is what the table holds.
        assert_eq!(
            count(
                "SELECT count(*) FROM (SELECT key FROM causal.row_meta WHERE table_name = 'products' AND NOT meta ? 'd' \
                 EXCEPT SELECT jsonb_build_array(sku)::text FROM products) d"
            ),
            0
        );
        assert_eq!(count("SELECT count(*) FROM products"), 35988);
    }

    #[pg_test(error = "invalid value for max_rows: 0 is not a positive number of rows")]
    fn catch_up_refuses_a_bound_below_one_row() {
        setup();
        Spi::run("SELECT causal.catch_up(NULL, 0)").unwrap();
    }

    #[pg_test(error = "TRUNCATE of replicated table products is not allowed")]
    fn truncate_is_refused() {
        setup();
        Spi::run("TRUNCATE products").unwrap();
    }
}
