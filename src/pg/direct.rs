//! Rows of pg_causal's own catalog tables written without SQL, the way COPY writes them:
//! tuples are formed from typed values, stored with `heap_multi_insert` (one WAL record per
//! page filled, not per row) and indexed with the executor's `ExecInsertIndexTuples` (which
//! keeps unique checks, expression and partial indexes working as an INSERT would).
//!
//! An INSERT through SPI costs each statement a plan-cache check, an executor start and end,
//! and each row an `unnest` into a tuple store and a cast per array column. What remains is
//! the heap and index work itself (three quarters of an entry row's insert is its three
//! unique btree inserts).
//!
//! Only tables without triggers or CHECK constraints are written this way (pg_causal's
//! per-entry catalog); what an INSERT would check is checked here: the caller's privilege,
//! and that the table has the columns the caller writes, in order and by type.

use pgrx::pg_sys;
use pgrx::IntoDatum;

use crate::error::CausalError;

/// Opens `causal.<table>` with a row-exclusive lock, after checking that the current user has
/// `privilege` on it (an ACL_* bit), as the statement it stands for would check.
unsafe fn open_catalog_table(table: &str, privilege: u32) -> Result<pg_sys::Relation, CausalError> {
    let wrong = |what: String| CausalError::Corrupt(format!("catalog table causal.{table}: {what}"));
    let ns = pg_sys::get_namespace_oid(c"causal".as_ptr(), false);
    let name = std::ffi::CString::new(table).map_err(|e| wrong(e.to_string()))?;
    let relid = pg_sys::get_relname_relid(name.as_ptr(), ns);
    if relid == pg_sys::InvalidOid {
        return Err(wrong("missing".into()));
    }
    let acl = pg_sys::pg_class_aclcheck(relid, pg_sys::GetUserId(), privilege as pg_sys::AclMode);
    if acl != pg_sys::AclResult::ACLCHECK_OK {
        pg_sys::aclcheck_error(acl, pg_sys::ObjectType::OBJECT_TABLE, name.as_ptr());
    }
    Ok(pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE))
}

/// One value of a row to insert.
#[derive(Clone, Copy)]
pub enum Cell<'a> {
    Int4(i32),
    Text(&'a str),
    TextArray(&'a [String]),
    Int4Array(&'a [i32]),
    Bytea(&'a [u8]),
    /// A `jsonb` value, built from the JSON value without a text form (see [`jsonb_datum`]).
    Jsonb(&'a serde_json::Value),
    /// A `jsonb` object, built from its members likewise.
    JsonbObject(&'a serde_json::Map<String, serde_json::Value>),
    /// A value of a user table's column, as text for the column type's input function (see
    /// [`Inserter::open_user_table`]).
    Input(&'a str),
    /// `now()`: the transaction's start time, as a column default would give it.
    Now,
    /// NULL in a column of this type.
    Null(pg_sys::Oid),
}

impl Cell<'_> {
    fn type_oid(&self) -> pg_sys::Oid {
        match self {
            Cell::Int4(_) => pg_sys::INT4OID,
            Cell::Text(_) => pg_sys::TEXTOID,
            Cell::TextArray(_) => pg_sys::TEXTARRAYOID,
            Cell::Int4Array(_) => pg_sys::INT4ARRAYOID,
            Cell::Bytea(_) => pg_sys::BYTEAOID,
            Cell::Jsonb(_) | Cell::JsonbObject(_) => pg_sys::JSONBOID,
            Cell::Now => pg_sys::TIMESTAMPTZOID,
            Cell::Input(_) => pg_sys::InvalidOid,
            Cell::Null(oid) => *oid,
        }
    }

    /// The datum, allocated in the current memory context: `Ok(None)` for NULL, `Err` when
    /// the value could not be formed.
    fn datum(&self) -> Result<Option<pg_sys::Datum>, ()> {
        let formed = match self {
            Cell::Int4(v) => Some(pg_sys::Datum::from(*v)),
            Cell::Text(s) => (*s).into_datum(),
            Cell::TextArray(v) => v.iter().map(String::as_str).collect::<Vec<&str>>().into_datum(),
            Cell::Int4Array(v) => v.to_vec().into_datum(),
            Cell::Bytea(v) => (*v).into_datum(),
            // SAFETY: builds a datum in the current memory context from the value alone.
            Cell::Jsonb(v) => Some(unsafe { jsonb_datum(v)? }),
            // SAFETY: as for `Jsonb`.
            Cell::JsonbObject(m) => Some(unsafe {
                let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
                pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(push_jsonb_object(&mut state, m)?))
            }),
            Cell::Now => Some(pg_sys::Datum::from(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() })),
            // Formed by the inserter, which holds the column's input function.
            Cell::Input(_) => None,
            Cell::Null(_) => return Ok(None),
        };
        formed.map(Some).ok_or(())
    }
}

/// The `jsonb` datum of a JSON value, in the current memory context: the value is pushed
/// into Postgres's in-memory form (`pushJsonbValue`, which sorts an object's keys and keeps
/// the last of duplicates, as `jsonb_in` does) and flattened (`JsonbValueToJsonb`). Writing
/// the value as text and parsing it with `jsonb_in` cost about twice as much. Numbers go
/// through `numeric_in` as `jsonb_in` sends them (integers that fit `int8` directly), so the
/// datum is the one `jsonb_in` makes of the value's JSON text. `Err` for text holding a NUL
/// character, which `jsonb_in` refuses too (a `text` cannot hold one).
pub unsafe fn jsonb_datum(value: &serde_json::Value) -> Result<pg_sys::Datum, ()> {
    use pg_sys::JsonbIteratorToken as Tok;
    let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
    let root = match value {
        serde_json::Value::Object(_) | serde_json::Value::Array(_) => push_jsonb(&mut state, value, Tok::WJB_VALUE)?,
        scalar => {
            // A scalar at the top is stored as a one-element "raw scalar" array.
            let mut array: pg_sys::JsonbValue = std::mem::zeroed();
            array.type_ = pg_sys::jbvType::jbvArray;
            array.val.array.rawScalar = true;
            array.val.array.nElems = 1;
            pg_sys::pushJsonbValue(&mut state, Tok::WJB_BEGIN_ARRAY, &mut array);
            push_jsonb(&mut state, scalar, Tok::WJB_ELEM)?;
            pg_sys::pushJsonbValue(&mut state, Tok::WJB_END_ARRAY, std::ptr::null_mut())
        }
    };
    Ok(pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(root)))
}

/// Pushes `value` as an object's value or an array's element (`token`); containers as their
/// begin, contents and end. Returns what the last push returned (the whole value, once its
/// outermost container ends). Strings are read in place, so `value` must outlive the parse
/// state's use.
unsafe fn push_jsonb(
    state: &mut *mut pg_sys::JsonbParseState,
    value: &serde_json::Value,
    token: pg_sys::JsonbIteratorToken::Type,
) -> Result<*mut pg_sys::JsonbValue, ()> {
    use pg_sys::JsonbIteratorToken as Tok;
    use serde_json::Value;
    let mut scalar: pg_sys::JsonbValue = std::mem::zeroed();
    match value {
        Value::Object(map) => return push_jsonb_object(state, map),
        Value::Array(items) => {
            pg_sys::pushJsonbValue(state, Tok::WJB_BEGIN_ARRAY, std::ptr::null_mut());
            for v in items {
                push_jsonb(state, v, Tok::WJB_ELEM)?;
            }
            return Ok(pg_sys::pushJsonbValue(state, Tok::WJB_END_ARRAY, std::ptr::null_mut()));
        }
        Value::Null => scalar.type_ = pg_sys::jbvType::jbvNull,
        Value::Bool(b) => {
            scalar.type_ = pg_sys::jbvType::jbvBool;
            scalar.val.boolean = *b;
        }
        Value::String(s) => scalar = jsonb_string(s)?,
        Value::Number(n) => {
            scalar.type_ = pg_sys::jbvType::jbvNumeric;
            scalar.val.numeric = match n.as_i64() {
                Some(i) => pg_sys::int64_to_numeric(i),
                None => {
                    let text = std::ffi::CString::new(n.to_string()).map_err(|_| ())?;
                    let d = pgrx::fcinfo::direct_function_call_as_datum(
                        pg_sys::numeric_in,
                        &[
                            Some(pg_sys::Datum::from(text.as_ptr())),
                            Some(pg_sys::Datum::from(pg_sys::InvalidOid)),
                            Some(pg_sys::Datum::from(-1i32)),
                        ],
                    )
                    .ok_or(())?;
                    d.cast_mut_ptr()
                }
            };
        }
    }
    Ok(pg_sys::pushJsonbValue(state, token, &mut scalar))
}

/// Pushes an object (see [`push_jsonb`]).
unsafe fn push_jsonb_object(
    state: &mut *mut pg_sys::JsonbParseState,
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<*mut pg_sys::JsonbValue, ()> {
    use pg_sys::JsonbIteratorToken as Tok;
    pg_sys::pushJsonbValue(state, Tok::WJB_BEGIN_OBJECT, std::ptr::null_mut());
    for (k, v) in map {
        let mut key = jsonb_string(k)?;
        pg_sys::pushJsonbValue(state, Tok::WJB_KEY, &mut key);
        push_jsonb(state, v, Tok::WJB_VALUE)?;
    }
    Ok(pg_sys::pushJsonbValue(state, Tok::WJB_END_OBJECT, std::ptr::null_mut()))
}

/// A string scalar that points into `s`.
unsafe fn jsonb_string(s: &str) -> Result<pg_sys::JsonbValue, ()> {
    if s.contains('\0') {
        return Err(());
    }
    let mut v: pg_sys::JsonbValue = std::mem::zeroed();
    v.type_ = pg_sys::jbvType::jbvString;
    v.val.string.len = i32::try_from(s.len()).map_err(|_| ())?;
    v.val.string.val = s.as_ptr() as *mut std::ffi::c_char;
    Ok(v)
}

/// For [`Inserter::open_user_table`]: the index in `columns` of each of `rel`'s columns, if
/// rows of `columns` can be inserted into `rel` without SQL.
unsafe fn user_table_order(rel: pg_sys::Relation, columns: &[&str]) -> Option<Vec<Option<usize>>> {
    let form = (*rel).rd_rel;
    if (*form).relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char || (*form).relispartition {
        return None;
    }
    let triggers = (*rel).trigdesc;
    if !triggers.is_null() {
        let all = std::slice::from_raw_parts((*triggers).triggers, (*triggers).numtriggers as usize);
        let fires = |t: &pg_sys::Trigger| {
            t.tgenabled == pg_sys::TRIGGER_FIRES_ALWAYS as std::ffi::c_char
                || t.tgenabled == pg_sys::TRIGGER_FIRES_ON_REPLICA as std::ffi::c_char
        };
        if all.iter().any(fires) {
            return None;
        }
    }
    let desc = (*rel).rd_att;
    let constr = (*desc).constr;
    if !constr.is_null() && (*constr).has_generated_stored {
        return None;
    }
    let mut order = Vec::with_capacity((*desc).natts as usize);
    let mut found = 0;
    for a in (*desc).attrs.as_slice((*desc).natts as usize) {
        if a.attisdropped {
            order.push(None);
            continue;
        }
        let name = std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_bytes();
        let i = columns.iter().position(|c| c.as_bytes() == name)?;
        let plain_type = INPUT_TYPES.contains(&a.atttypid) && !(a.atttypid == pg_sys::VARCHAROID && a.atttypmod >= 0);
        if !plain_type || a.attgenerated != 0 || a.attidentity == pg_sys::ATTRIBUTE_IDENTITY_ALWAYS as std::ffi::c_char
        {
            return None;
        }
        order.push(Some(i));
        found += 1;
    }
    (found == columns.len()).then_some(order)
}

/// A copy, in the current memory context, of a varlena datum that is not TOASTed.
unsafe fn copy_varlena(d: pg_sys::Datum) -> pg_sys::Datum {
    let from = d.cast_mut_ptr::<pg_sys::varlena>();
    let size = pgrx::varlena::varsize_any(from);
    let to = pg_sys::palloc(size);
    std::ptr::copy_nonoverlapping(from as *const u8, to as *mut u8, size);
    pg_sys::Datum::from(to)
}

/// Tuples buffered before each `heap_multi_insert`. Each buffered tuple has a slot of its own,
/// made when an `Inserter` first needs it and kept for its later batches: with COPY's 1,000,
/// the sealer made a slot per entry of its batches of a few hundred (5% of its CPU with their
/// drops, under a steady load of single-row commits). `heap_multi_insert` writes one WAL
/// record per page it fills either way.
const BATCH: usize = 128;

/// The first (kept) block of the batch's memory context, and of the one values are parsed in.
const BATCH_BLOCK: usize = 1 << 20;
const SCRATCH_BLOCK: usize = 64 << 10;

/// An open insertion into one catalog table. Rows are buffered and written in batches;
/// [`Inserter::finish`] writes the rest and closes the table and its indexes.
pub struct Inserter {
    rel: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    rri: *mut pg_sys::ResultRelInfo,
    bistate: pg_sys::BulkInsertState,
    slots: Vec<*mut pg_sys::TupleTableSlot>,
    used: usize,
    /// Holds the buffered rows' datums; reset after each batch.
    batch_cx: pg_sys::MemoryContext,
    /// Where a `jsonb` value is built (its in-memory form is left behind); reset after each
    /// value, whose datum is copied to `batch_cx`.
    scratch_cx: pg_sys::MemoryContext,
    cid: pg_sys::CommandId,
    natts: usize,
    /// Per column of a user table, its type's input function (for [`Cell::Input`]); empty for
    /// catalog tables.
    inputs: Vec<Option<ColumnInput>>,
    /// Whether rows are checked against NOT NULL and CHECK constraints (user tables).
    check_constraints: bool,
    /// Per column of a catalog table that has dropped columns, whether it is dropped (the
    /// caller's cells are those of the others); empty when none is.
    dropped: Vec<bool>,
    closed: bool,
}

/// A column type's text input function, as a cast from text calls it.
struct ColumnInput {
    finfo: pg_sys::FmgrInfo,
    ioparam: pg_sys::Oid,
    typmod: i32,
}

/// The column types whose text form [`Cell::Input`] takes: those a replicated table may have
/// (`causal_core::schema::ColumnType`) whose input function does what replay's SQL cast from
/// text does, but `bytea` (Base64 in the view) and `varchar(n)` (an explicit cast truncates,
/// an input function refuses).
const INPUT_TYPES: &[pg_sys::Oid] = &[
    pg_sys::TEXTOID,
    pg_sys::VARCHAROID,
    pg_sys::INT2OID,
    pg_sys::INT4OID,
    pg_sys::INT8OID,
    pg_sys::NUMERICOID,
    pg_sys::FLOAT4OID,
    pg_sys::FLOAT8OID,
    pg_sys::BOOLOID,
    pg_sys::DATEOID,
    pg_sys::TIMESTAMPOID,
    pg_sys::TIMESTAMPTZOID,
    pg_sys::UUIDOID,
    pg_sys::JSONBOID,
];

impl Inserter {
    /// Opens `causal.<table>` for inserting rows of `columns` (names and types, in table
    /// order), after checking the caller may insert into it.
    pub fn open(table: &str, columns: &[(&str, pg_sys::Oid)]) -> Result<Inserter, CausalError> {
        let wrong = |what: String| CausalError::Corrupt(format!("catalog table causal.{table}: {what}"));
        unsafe {
            let rel = open_catalog_table(table, pg_sys::ACL_INSERT)?;
            let desc = (*rel).rd_att;
            let natts = (*desc).natts as usize;
            let attrs = (*desc).attrs.as_slice(natts);
            // A column dropped by an upgrade (ALTER TABLE ... DROP COLUMN) keeps its place in
            // the tuple: it gets NULL, and `columns` names only the others.
            let live: Vec<&pg_sys::FormData_pg_attribute> = attrs.iter().filter(|a| !a.attisdropped).collect();
            let shape_ok = live.len() == columns.len()
                && live.iter().zip(columns).all(|(a, (n, ty))| {
                    a.atttypid == *ty && std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() == n.as_bytes()
                });
            let dropped = if live.len() < natts { attrs.iter().map(|a| a.attisdropped).collect() } else { Vec::new() };
            // Rows written here skip the executor: no triggers fire and no CHECK constraint
            // is evaluated, so a table with either is not written this way.
            let constr = (*desc).constr;
            let has_triggers = !(*rel).trigdesc.is_null() || (!constr.is_null() && (*constr).num_check > 0);
            if !shape_ok || has_triggers || (*(*rel).rd_rel).relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char {
                pg_sys::table_close(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                return Err(wrong("its columns, triggers or checks are not the ones pg_causal made".into()));
            }
            let mut inserter = Inserter::with_estate(rel, pg_sys::CreateExecutorState(), Vec::new(), false);
            inserter.dropped = dropped;
            Ok(inserter)
        }
    }

    /// Opens the user table `relid` for inserting rows of `columns` (its replicated columns,
    /// by name) the way an INSERT under `session_replication_role = replica` inserts them,
    /// when that INSERT would do nothing but store the rows, index them (unique and exclusion
    /// constraints included) and check their NOT NULL and CHECK constraints. Returns, with the
    /// inserter, the index in `columns` of each of the table's columns (`None` for a dropped
    /// one); cells are given as [`Cell::Input`] or [`Cell::Null`].
    ///
    /// `None` (and nothing opened) when the INSERT would do more or differently, and replay
    /// writes the rows through SQL: without the table-level INSERT privilege (column
    /// privileges, or the error, are the INSERT's), with row-level security in force, for a
    /// partitioned table or a partition, with a trigger that fires for replicas (`ENABLE
    /// REPLICA` or `ALWAYS`), a deferrable unique or exclusion constraint, with generated or
    /// `GENERATED ALWAYS` identity columns, columns
    /// that are not among `columns` (an INSERT gives them their defaults) or of a type
    /// outside [`INPUT_TYPES`].
    pub fn open_user_table(relid: pg_sys::Oid, columns: &[&str]) -> Option<(Inserter, Vec<Option<usize>>)> {
        unsafe {
            let acl = pg_sys::pg_class_aclcheck(relid, pg_sys::GetUserId(), pg_sys::ACL_INSERT as pg_sys::AclMode);
            if acl != pg_sys::AclResult::ACLCHECK_OK
                || pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, true)
                    == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
            {
                return None;
            }
            let rel = pg_sys::try_table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            if rel.is_null() {
                return None;
            }
            let Some(order) = user_table_order(rel, columns) else {
                pg_sys::table_close(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                return None;
            };
            let desc = (*rel).rd_att;
            let natts = (*desc).natts as usize;
            let estate = pg_sys::CreateExecutorState();
            let cx = (*estate).es_query_cxt;
            let mut inputs = Vec::with_capacity(natts);
            for a in (*desc).attrs.as_slice(natts) {
                if a.attisdropped {
                    inputs.push(None);
                    continue;
                }
                let (mut func, mut ioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
                pg_sys::getTypeInputInfo(a.atttypid, &mut func, &mut ioparam);
                let mut finfo: pg_sys::FmgrInfo = std::mem::zeroed();
                pg_sys::fmgr_info_cxt(func, &mut finfo, cx);
                inputs.push(Some(ColumnInput { finfo, ioparam, typmod: a.atttypmod }));
            }
            let constr = (*desc).constr;
            let check = !constr.is_null() && ((*constr).has_not_null || (*constr).num_check > 0);
            let inserter = Inserter::with_estate(rel, estate, inputs, check);
            // A deferred unique check is an event queued by the INSERT; none is queued here.
            let n = (*inserter.rri).ri_NumIndices as usize;
            let indexes =
                if n == 0 { &[][..] } else { std::slice::from_raw_parts((*inserter.rri).ri_IndexRelationDescs, n) };
            if indexes.iter().any(|&ix| !(*(*ix).rd_index).indimmediate) {
                drop(inserter);
                return None;
            }
            // ExecConstraints names the failing row's columns through the range table.
            let rte = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblEntry>()) as *mut pg_sys::RangeTblEntry;
            (*rte).type_ = pg_sys::NodeTag::T_RangeTblEntry;
            (*rte).rtekind = pg_sys::RTEKind::RTE_RELATION;
            (*rte).relid = relid;
            (*rte).relkind = (*(*rel).rd_rel).relkind;
            (*rte).rellockmode = pg_sys::RowExclusiveLock as i32;
            (*rte).requiredPerms = pg_sys::ACL_INSERT as pg_sys::AclMode;
            let old = pg_sys::MemoryContextSwitchTo(cx);
            pg_sys::ExecInitRangeTable(estate, pg_sys::lappend(std::ptr::null_mut(), rte.cast()));
            pg_sys::MemoryContextSwitchTo(old);
            Some((inserter, order))
        }
    }

    /// An inserter on `rel`, opened and checked by the caller, in the executor state `estate`.
    unsafe fn with_estate(
        rel: pg_sys::Relation,
        estate: *mut pg_sys::EState,
        inputs: Vec<Option<ColumnInput>>,
        check_constraints: bool,
    ) -> Inserter {
        let natts = (*(*rel).rd_att).natts as usize;
        let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>()) as *mut pg_sys::ResultRelInfo;
        (*rri).type_ = pg_sys::NodeTag::T_ResultRelInfo;
        pg_sys::InitResultRelInfo(rri, rel, 1, std::ptr::null_mut(), 0);
        pg_sys::ExecOpenIndices(rri, false);
        // Both contexts keep their first block when reset, sized so that a batch (and
        // one value's parse) fits in it: with the default 8 kB, each batch's memory was
        // freed to the C library and taken back from the kernel, and the page faults of
        // that were three fifths of parsing jsonb values here.
        let batch_cx = pg_sys::AllocSetContextCreateExtended(
            pg_sys::CurrentMemoryContext,
            c"pg_causal direct insert".as_ptr(),
            BATCH_BLOCK,
            BATCH_BLOCK,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        // Not a child of `batch_cx`: resetting a context deletes its children.
        let scratch_cx = pg_sys::AllocSetContextCreateExtended(
            pg_sys::CurrentMemoryContext,
            c"pg_causal direct insert value".as_ptr(),
            SCRATCH_BLOCK,
            SCRATCH_BLOCK,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        Inserter {
            rel,
            estate,
            rri,
            bistate: pg_sys::GetBulkInsertState(),
            slots: Vec::new(),
            used: 0,
            batch_cx,
            scratch_cx,
            cid: pg_sys::GetCurrentCommandId(true),
            natts,
            inputs,
            check_constraints,
            dropped: Vec::new(),
            closed: false,
        }
    }

    /// Buffers one row (its cells in column order; a catalog table's dropped columns have
    /// none).
    pub fn push(&mut self, row: &[Cell<'_>]) -> Result<(), CausalError> {
        if !self.dropped.is_empty() {
            let live = self.dropped.iter().filter(|d| !**d).count();
            if row.len() != live {
                return Err(CausalError::Corrupt(format!("{} values for {live} columns", row.len())));
            }
            let mut cells = row.iter();
            let full: Vec<Cell<'_>> = self
                .dropped
                .iter()
                .map(|&d| {
                    if d {
                        Cell::Null(pg_sys::InvalidOid)
                    } else {
                        cells.next().copied().unwrap_or(Cell::Null(pg_sys::InvalidOid))
                    }
                })
                .collect();
            return self.push_all(&full);
        }
        self.push_all(row)
    }

    /// [`Inserter::push`] with a cell for every column, dropped ones included.
    fn push_all(&mut self, row: &[Cell<'_>]) -> Result<(), CausalError> {
        if row.len() != self.natts {
            return Err(CausalError::Corrupt(format!("{} values for {} columns", row.len(), self.natts)));
        }
        unsafe {
            let desc = (*self.rel).rd_att;
            // A user table's cells are typed by its columns (`open_user_table`).
            let user_table = !self.inputs.is_empty();
            for (c, a) in row.iter().zip((*desc).attrs.as_slice(self.natts)) {
                if user_table {
                    if !matches!(c, Cell::Input(_) | Cell::Null(_)) {
                        return Err(CausalError::Corrupt("a user table's values are given as text or NULL".into()));
                    }
                    continue;
                }
                if c.type_oid() != a.atttypid {
                    let column = std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_string_lossy();
                    return Err(CausalError::Corrupt(format!("a value of the wrong type for catalog column {column}")));
                }
                // heap_multi_insert does not check NOT NULL; an INSERT would.
                if matches!(c, Cell::Null(_)) && a.attnotnull {
                    let column = std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_string_lossy();
                    return Err(CausalError::Corrupt(format!("NULL for catalog column {column}, which is NOT NULL")));
                }
            }
            if self.used == self.slots.len() {
                self.slots.push(pg_sys::table_slot_create(self.rel, std::ptr::null_mut()));
            }
            let slot = self.slots[self.used];
            if let Some(clear) = (*(*slot).tts_ops).clear {
                clear(slot);
            }
            let old = pg_sys::MemoryContextSwitchTo(self.batch_cx);
            let values = std::slice::from_raw_parts_mut((*slot).tts_values, self.natts);
            let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, self.natts);
            let mut missing = None;
            for (i, c) in row.iter().enumerate() {
                let datum = if let Cell::Jsonb(_) | Cell::JsonbObject(_) = c {
                    pg_sys::MemoryContextSwitchTo(self.scratch_cx);
                    let parsed = c.datum();
                    pg_sys::MemoryContextSwitchTo(self.batch_cx);
                    let copied = parsed.map(|d| d.map(|d| copy_varlena(d)));
                    pg_sys::MemoryContextReset(self.scratch_cx);
                    copied
                } else if let Cell::Input(text) = c {
                    self.input(i, text)
                } else {
                    c.datum()
                };
                match datum {
                    Ok(Some(d)) => {
                        values[i] = d;
                        nulls[i] = false;
                    }
                    Ok(None) => {
                        values[i] = pg_sys::Datum::from(0);
                        nulls[i] = true;
                    }
                    Err(()) => missing = Some(i),
                }
            }
            pg_sys::MemoryContextSwitchTo(old);
            if let Some(i) = missing {
                let column = std::ffi::CStr::from_ptr((*desc).attrs.as_slice(self.natts)[i].attname.data.as_ptr());
                return Err(CausalError::Corrupt(format!(
                    "no value could be formed for catalog column {}",
                    column.to_string_lossy()
                )));
            }
            pg_sys::ExecStoreVirtualTuple(slot);
            if self.check_constraints {
                // As an INSERT checks them, before the row is stored (an error if one fails).
                pg_sys::ExecConstraints(self.rri, slot, self.estate);
                pg_sys::MemoryContextReset((*pg_sys::MakePerTupleExprContext(self.estate)).ecxt_per_tuple_memory);
            }
            self.used += 1;
            if self.used == BATCH {
                self.write_batch();
            }
        }
        Ok(())
    }

    /// The datum of column `i` from its text, by the column type's input function (in the
    /// current memory context; a value the type refuses raises the error a cast raises).
    unsafe fn input(&mut self, i: usize, text: &str) -> Result<Option<pg_sys::Datum>, ()> {
        let Some(Some(input)) = self.inputs.get_mut(i) else { return Err(()) };
        // The input function reads a NUL-terminated string; text cannot hold NUL itself.
        let text = std::ffi::CString::new(text).map_err(|_| ())?;
        let d = pg_sys::InputFunctionCall(&mut input.finfo, text.as_ptr() as *mut _, input.ioparam, input.typmod);
        Ok(Some(d))
    }

    /// Stores the buffered rows and their index entries.
    fn write_batch(&mut self) {
        if self.used == 0 {
            return;
        }
        unsafe {
            pg_sys::heap_multi_insert(self.rel, self.slots.as_mut_ptr(), self.used as i32, self.cid, 0, self.bistate);
            for &slot in &self.slots[..self.used] {
                let recheck = pg_sys::ExecInsertIndexTuples(
                    self.rri,
                    slot,
                    self.estate,
                    false,
                    false,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                );
                if !recheck.is_null() {
                    pg_sys::list_free(recheck);
                }
                let econtext = (*self.estate).es_per_tuple_exprcontext;
                if !econtext.is_null() {
                    pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
                }
            }
            for &slot in &self.slots[..self.used] {
                if let Some(clear) = (*(*slot).tts_ops).clear {
                    clear(slot);
                }
            }
            pg_sys::MemoryContextReset(self.batch_cx);
        }
        self.used = 0;
    }

    /// Writes what is buffered and closes the table.
    pub fn finish(mut self) {
        self.write_batch();
        self.close();
    }

    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        unsafe {
            for &slot in &self.slots {
                pg_sys::ExecDropSingleTupleTableSlot(slot);
            }
            pg_sys::FreeBulkInsertState(self.bistate);
            pg_sys::ExecCloseIndices(self.rri);
            pg_sys::FreeExecutorState(self.estate);
            pg_sys::MemoryContextDelete(self.scratch_cx);
            pg_sys::MemoryContextDelete(self.batch_cx);
            pg_sys::table_close(self.rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        }
    }
}

impl Drop for Inserter {
    /// An inserter dropped without [`Inserter::finish`] (an error on the way) writes nothing
    /// more; the transaction is failing, and its abort undoes what was written.
    fn drop(&mut self) {
        // During an abort the resource owner releases the table and buffers itself; closing
        // here would touch them twice. Only a normal drop (no error) closes.
        if !std::thread::panicking() {
            self.close();
        }
    }
}

/// Replaces `columns` of the row at `tid` in `causal.<table>`, a row the caller holds locked
/// (`SELECT ... FOR UPDATE`), without SQL: the new version is written with
/// `CatalogTupleUpdate` (a heap-only update when no indexed column changes, as here).
/// Returns the new version's tid, or `None` when the row at `tid` is no longer the newest
/// version (something else updated it in this transaction); the caller then updates through
/// SQL. No trigger fires and no CHECK constraint is evaluated, so only columns that no CHECK
/// reads may be written this way; the table may have no triggers but internal ones (of
/// foreign keys that reference it), and the columns written may not be indexed.
pub fn update_locked_row(
    table: &str,
    tid: pg_sys::ItemPointerData,
    columns: &[(&str, Cell<'_>)],
) -> Result<Option<pg_sys::ItemPointerData>, CausalError> {
    let wrong = |what: String| CausalError::Corrupt(format!("catalog table causal.{table}: {what}"));
    unsafe {
        let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
        let rel = open_catalog_table(table, pg_sys::ACL_UPDATE)?;
        let desc = (*rel).rd_att;
        let natts = (*desc).natts as usize;
        let attrs = (*desc).attrs.as_slice(natts);
        let mut replace = vec![false; natts];
        let mut values = vec![pg_sys::Datum::from(0usize); natts];
        let mut nulls = vec![false; natts];
        // Only internal triggers may be skipped: those of foreign keys that reference this
        // table, which act only when a referenced key changes, and no indexed column (every
        // referenced key is indexed) is written here.
        let trigdesc = (*rel).trigdesc;
        let user_trigger = !trigdesc.is_null()
            && std::slice::from_raw_parts((*trigdesc).triggers, (*trigdesc).numtriggers as usize)
                .iter()
                .any(|t| !t.tgisinternal);
        let indexed = pg_sys::RelationGetIndexAttrBitmap(rel, pg_sys::IndexAttrBitmapKind::INDEX_ATTR_BITMAP_ALL);
        let mut problem = if user_trigger { Some("it has triggers".to_string()) } else { None };
        for (column, cell) in columns {
            if problem.is_some() {
                break;
            }
            match attrs.iter().position(|a| {
                !a.attisdropped && std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() == column.as_bytes()
            }) {
                Some(i)
                    if pg_sys::bms_is_member(i as i32 + 1 - pg_sys::FirstLowInvalidHeapAttributeNumber, indexed) =>
                {
                    problem = Some(format!("column {column} is indexed"))
                }
                Some(i) if attrs[i].atttypid == cell.type_oid() => match cell.datum() {
                    Ok(Some(d)) => {
                        replace[i] = true;
                        values[i] = d;
                    }
                    _ => problem = Some(format!("no value could be formed for column {column}")),
                },
                _ => problem = Some(format!("no column {column} of that type")),
            }
        }
        if let Some(p) = problem {
            pg_sys::table_close(rel, lock);
            return Err(wrong(p));
        }
        // The locked version, whatever the snapshot: it is the newest unless this transaction
        // updated the row since (then its t_ctid points further).
        let mut old: pg_sys::HeapTupleData = std::mem::zeroed();
        old.t_self = tid;
        let mut buffer: pg_sys::Buffer = 0;
        let found = pg_sys::heap_fetch(rel, &raw mut pg_sys::SnapshotAnyData, &mut old, &mut buffer, true);
        if !found || old.t_data.is_null() {
            if buffer != 0 {
                pg_sys::ReleaseBuffer(buffer);
            }
            pg_sys::table_close(rel, lock);
            return Ok(None);
        }
        let newest = {
            let next = (*old.t_data).t_ctid;
            next.ip_blkid.bi_hi == tid.ip_blkid.bi_hi
                && next.ip_blkid.bi_lo == tid.ip_blkid.bi_lo
                && next.ip_posid == tid.ip_posid
        };
        let new = if newest {
            Some(pg_sys::heap_modify_tuple(
                &mut old,
                desc,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
                replace.as_mut_ptr(),
            ))
        } else {
            None
        };
        pg_sys::ReleaseBuffer(buffer);
        let Some(new) = new else {
            pg_sys::table_close(rel, lock);
            return Ok(None);
        };
        let mut otid = tid;
        pg_sys::CatalogTupleUpdate(rel, &mut otid, new);
        let new_tid = (*new).t_self;
        pg_sys::heap_freetuple(new);
        pg_sys::table_close(rel, lock);
        Ok(Some(new_tid))
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[path = "direct_tests.rs"]
mod pg_tests;
