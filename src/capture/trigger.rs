//! The triggers on replicated tables. They record nothing: the WAL is the record of what a
//! transaction wrote, and the sealer reads it after commit ([`super::seal`]). They do what
//! must happen before commit:
//!
//! - `causal_lock` (BEFORE, per statement): takes the group's write lock shared, so imports
//!   and administrative entries, which take it exclusively, never interleave with a writer in
//!   flight; and, at the transaction's first write to the group, checks that the calling role
//!   may author as the session's identity and that the identity is a live member, then names
//!   the author in the WAL with a transactional logical message (once per transaction).
//! - `causal_rules` (AFTER, per row): checks the table's rules, when it has any, refusing a
//!   write its author may not make at once.
//! - `causal_no_truncate`: TRUNCATE is not a row change, and is refused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::prelude::*;
use pgrx::JsonB;

use causal_core::rules::Operation;
use causal_core::schema::TableSchema;

use super::encode::Codec;
use crate::capture::rule_check::RuleInput;
use crate::catalog::identity::check_author_grant;
use crate::error::{CausalError, OrReport};
use crate::pg::spi::{get_opt, run_prepared};

/// What the triggers need of a replicated table. Kept for the backend's life and dropped when
/// the table's relcache entry is invalidated (any ALTER TABLE), or all at once when the
/// catalog of replicated tables or their rules changes ([`crate::catalog::tables::tables_changed`]).
pub struct TableInfo {
    pub group_id: Rc<str>,
    codec: Codec,
    /// The second key of the group's advisory lock.
    lock_key: i32,
    /// Rule text by operation name; absent means any live member may write.
    rules: HashMap<String, String>,
}

/// What this transaction has done so far, for the triggers.
#[derive(Default)]
struct Writing {
    /// The key id of the author named in the WAL, and the subtransaction that wrote the message.
    author: Option<(String, pg_sys::SubTransactionId)>,
    /// The groups written, each with the subtransaction that first wrote it.
    groups: Vec<(Rc<str>, pg_sys::SubTransactionId)>,
}

thread_local! {
    static TABLES: RefCell<HashMap<pg_sys::Oid, Rc<TableInfo>>> = RefCell::new(HashMap::new());
    static WRITING: RefCell<Writing> = RefCell::default();
}

/// Fails with [`CausalError::WritesFirst`] if this transaction has written tables of the
/// group `group_id`: `action` would come before those writes in the group's history, though
/// they were made without it.
pub fn refuse_after_writes(group_id: &str, action: &'static str) -> Result<(), CausalError> {
    if !WRITING.with(|w| w.borrow().groups.iter().any(|(g, _)| &**g == group_id)) {
        return Ok(());
    }
    let name = get_opt::<String>("SELECT name FROM causal.group_defs WHERE group_id = $1", &[group_id.into()])?;
    Err(CausalError::WritesFirst { group: name.unwrap_or_else(|| group_id.to_string()), action })
}

/// Relcache callback: forgets what a change to a table, or to the catalog, may have changed.
unsafe extern "C-unwind" fn on_relcache(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    crate::catalog::identity::relcache_changed(relid);
    crate::catalog::shape::forget();
    if relid == pg_sys::InvalidOid && super::decode::own_reset() {
        // Decoding dropped every cache entry; what pg_causal keeps was read from a catalog
        // that did not change (under the current snapshot, or for decoding under the
        // historic one where its context is).
        return;
    }
    super::decode::relcache_changed(relid);
    forget_catalog(relid);
}

/// Forgets what pg_causal keeps of the catalog that a change to relation `relid` (every
/// relation for `InvalidOid`) may have changed.
pub(super) fn forget_catalog(relid: pg_sys::Oid) {
    let catalog = crate::catalog::tables::known_catalog_oid();
    TABLES.with(|t| {
        let mut t = t.borrow_mut();
        // A backend that has not learnt the catalog's oid cannot tell its invalidation from
        // another table's: it takes any for one.
        if relid == pg_sys::InvalidOid || relid == catalog || catalog == pg_sys::InvalidOid {
            t.clear();
            crate::catalog::authority_version::forget();
            // A group may have been left: the groups found go too. (Their DAGs' caches are
            // by group number, which a group joined again does not get back.)
            crate::catalog::group::clear_cache();
        } else {
            t.remove(&relid);
        }
    });
}

pub fn table_info(relid: pg_sys::Oid) -> Result<Rc<TableInfo>, CausalError> {
    if let Some(info) = TABLES.with(|t| t.borrow().get(&relid).cloned()) {
        return Ok(info);
    }
    crate::catalog::tables::catalog_oid()?;
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
    let lock_key = crate::pg::lock::group_lock_key(&group_id)?;
    let info = Rc::new(TableInfo { group_id: group_id.into(), codec: Codec::new(schema), lock_key, rules });
    TABLES.with(|t| t.borrow_mut().insert(relid, info.clone()));
    Ok(info)
}

/// At a transaction's first write to `info`'s group: checks the author and names it in the
/// WAL (once per transaction), and checks that it is a live member of the group.
fn begin_write(info: &TableInfo) -> Result<(), CausalError> {
    // What is written under the replay origin is never sealed: a write that reaches this
    // trigger then (from a cancellation hook, say) would be in the table and in no entry.
    if crate::pg::spi::replaying() {
        return Err(CausalError::WriteWhilePlacing(info.codec.schema.table.clone()));
    }
    if WRITING.with(|w| w.borrow().groups.iter().any(|(g, _)| *g == info.group_id)) {
        return Ok(());
    }
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    let author = WRITING.with(|w| w.borrow().author.as_ref().map(|(k, _)| k.clone()));
    let key_id = match author {
        Some(k) => k,
        None => {
            // The slot must exist before anything it should seal is committed. First: it can
            // only be created while the transaction has no xid, which a query may give it.
            super::slot::ensure(true)?;
            let name = check_author_grant()?;
            let key_id = crate::catalog::identity::key_id_of(&name)?;
            super::decode::log_author(&name);
            WRITING.with(|w| w.borrow_mut().author = Some((key_id.clone(), subxact)));
            key_id
        }
    };
    crate::author::members::check_writer(&info.group_id, &key_id)?;
    WRITING.with(|w| w.borrow_mut().groups.push((info.group_id.clone(), subxact)));
    Ok(())
}

/// Statement trigger (BEFORE, so before any row lock) on replicated tables.
#[pg_trigger]
fn _lock_group<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, CausalError> {
    let relid = trigger.relation().map(|r| r.oid()).map_err(|e| CausalError::Corrupt(e.to_string()))?;
    let info = table_info(relid).or_report("causal._lock_group");
    crate::pg::lock::lock_group_shared(info.lock_key);
    begin_write(&info).or_report("causal._lock_group");
    Ok(None)
}

fn check_rules(trigger: &PgTrigger<'_>) -> Result<(), CausalError> {
    let relid = trigger.relid().map_err(|e| CausalError::Corrupt(e.to_string()))?;
    let info = table_info(relid)?;
    if info.rules.is_empty() {
        return Ok(());
    }
    let author = WRITING.with(|w| w.borrow().author.as_ref().map(|(k, _)| k.clone())).unwrap_or_default();
    let row = |t: Option<PgHeapTuple<'_, AllocatedByPostgres>>| t.map(|t| info.codec.row(&t, None)).transpose();
    let (op, new, old) = match trigger.op().map_err(|e| CausalError::Corrupt(e.to_string()))? {
        PgTriggerOperation::Insert => (Operation::Insert, row(trigger.new())?, None),
        PgTriggerOperation::Update => (Operation::Update, row(trigger.new())?, row(trigger.old())?),
        PgTriggerOperation::Delete => (Operation::Delete, None, row(trigger.old())?),
        PgTriggerOperation::Truncate => return Err(CausalError::Truncate(info.codec.schema.table.clone())),
    };
    let Some(rule) = info.rules.get(op.name()) else { return Ok(()) };
    let input = RuleInput { schema: &info.codec.schema, new: new.as_ref(), old: old.as_ref(), author: &author };
    crate::capture::rule_check::check_write(&info.group_id, op, rule, &input)
}

/// Row trigger on replicated tables: refuses a write the table's rules do not allow.
#[pg_trigger]
fn _check_rules<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, CausalError> {
    check_rules(trigger).or_report("causal._check_rules");
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

fn clear() {
    WRITING.with(|w| *w.borrow_mut() = Writing::default());
    super::seal::xact_ended();
    crate::pg::sealed_position::transaction_ended(false);
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE if WRITING.with(|w| !w.borrow().groups.is_empty()) => {
            clear();
            CausalError::Prepare.report("causal commit");
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            clear();
            crate::pg::spi::replay_origin_reset();
            crate::pg::xact::aborted(crate::pg::xact::Undone::Transaction);
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT => {
            crate::pg::sealed_position::transaction_ended(true);
            // Committed: the sealer reads it from the WAL; wake it rather than wait for its poll.
            if WRITING.with(|w| !w.borrow().groups.is_empty()) {
                crate::pg::wake::wake_worker();
            }
            clear();
        }
        pg_sys::XactEvent::XACT_EVENT_PREPARE => clear(),
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
        // The undone subtransaction's WAL is skipped by decoding, its author message too.
        WRITING.with(|w| {
            let mut w = w.borrow_mut();
            w.groups.retain(|(_, s)| *s < my_subid);
            if w.author.as_ref().is_some_and(|(_, s)| *s >= my_subid) {
                w.author = None;
            }
        });
        crate::pg::xact::aborted(crate::pg::xact::Undone::subtransaction(my_subid));
        crate::pg::sealed_position::subtransaction_aborted();
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

/// The most rows `causal.replicate` takes into the group with the calling transaction: they
/// all go into one entry.
pub const MAX_EXISTING_ROWS: u64 = 1_000_000;

/// Appends every row of `relid` as inserts of one entry, signed by the session's author:
/// `causal.replicate` of a table that holds rows puts them in the group, after the table's
/// schema entry. Returns how many rows.
pub fn append_existing_rows(relid: pg_sys::Oid) -> Result<u64, CausalError> {
    let info = table_info(relid)?;
    let mut texts = Vec::new();
    crate::pg::scan::each_row(relid, None, |tuple| {
        if texts.len() as u64 >= MAX_EXISTING_ROWS {
            return Err(CausalError::Unsupported {
                table: info.codec.schema.table.clone(),
                what: format!(
                    "it holds more than {MAX_EXISTING_ROWS} rows, which would all go into one entry; \
                     replicate an empty copy and load the rows in batches of transactions"
                ),
            });
        }
        texts.push(info.codec.insert_text(tuple)?);
        Ok(())
    })?;
    if texts.is_empty() {
        return Ok(0);
    }
    let group = crate::catalog::group::Group::find(&info.group_id)?;
    let author = crate::catalog::identity::current_author()?;
    let rows = texts.len() as u64;
    crate::author::members::append_sealed(&group, texts, causal_core::entry::Meta::new(), &author)?;
    Ok(rows)
}
