//! Sets of fresh rows (`causal.fresh_rows`, catalog.sql): the rows that one entry inserted and
//! no entry wrote since, kept per placement run and table as sorted keys with the node ids of
//! their inserting entries, instead of a `row_meta` row each.
//!
//! A row in a set reads as the `row_meta` row it stands for would: no values kept, metadata
//! `{"i": <node id>, "p": true}` ([`raw_row`]). A `row_meta` row of the same key comes first
//! (reads probe `row_meta`, then the sets for the keys it lacks). The sets of one table are
//! disjoint between their bounds in (octet_length(key), key) order ([`key_order`]), so a key
//! is in at most one: the last set that starts at or before it.
//!
//! Only rows whose table keeps no lookup values go into sets (a row of a table with UNIQUE
//! constraints, foreign keys or a rule scanning it keeps values `row_meta_lookup_*` indexes
//! find it by). Placing writes a set per run and table ([`write`]) of the rows it created,
//! unless their keys fall within an existing set's bounds; [`remove`] takes out the keys a
//! rewind made absent.
//!
//! A catalog not upgraded yet has no `causal.fresh_rows` (`catalog::shape`): then every row
//! is a `row_meta` row.

use std::cmp::Ordering;
use std::rc::Rc;

use super::*;

/// Keys per set at most: reading one key decodes its whole set.
const SET_KEYS: usize = 1_000;

/// Decoded sets kept by one replica; beyond this many, the cache starts again.
const KEPT_SETS: usize = 64;

/// Sets read per statement when reading all of a table's.
const SET_PAGE: i64 = 50;

/// The order of keys in `row_meta_key` and in sets: by length in bytes, then bytes.
pub(super) fn key_order(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// A set as stored.
pub(super) struct FreshSet {
    pub(super) first: String,
    pub(super) last: String,
    pub(super) keys: Vec<String>,
    pub(super) nodes: Vec<i32>,
}

impl FreshSet {
    /// The inserting node of `key`, if the set holds it.
    fn node_of(&self, key: &str) -> Option<i32> {
        self.keys.binary_search_by(|k| key_order(k, key)).ok().map(|i| self.nodes[i])
    }

    /// Whether `key` lies within the set's bounds.
    fn covers(&self, key: &str) -> bool {
        key_order(&self.first, key) != Ordering::Greater && key_order(key, &self.last) != Ordering::Greater
    }

    fn from_row(
        first: Option<String>,
        last: Option<String>,
        keys: Option<Vec<Option<String>>>,
        nodes: Option<Vec<Option<i32>>>,
    ) -> Result<FreshSet, ReconcileError> {
        let bad = |why: &str| ReconcileError::Corrupt(format!("a set of fresh rows {why}"));
        let (Some(first), Some(last), Some(keys), Some(nodes)) = (first, last, keys, nodes) else {
            return Err(bad("has NULL columns"));
        };
        let keys: Vec<String> = keys.into_iter().collect::<Option<_>>().ok_or_else(|| bad("has a NULL key"))?;
        let nodes: Vec<i32> = nodes.into_iter().collect::<Option<_>>().ok_or_else(|| bad("has a NULL node"))?;
        let set = FreshSet { first, last, keys, nodes };
        if set.keys.len() != set.nodes.len() {
            return Err(bad(&format!(
                "starting at {} has {} keys and {} nodes",
                set.first,
                set.keys.len(),
                set.nodes.len()
            )));
        }
        if set.keys.windows(2).any(|w| key_order(&w[0], &w[1]) != Ordering::Less)
            || !set.keys.iter().all(|k| set.covers(k))
        {
            return Err(bad(&format!("starting at {} has keys out of order or out of bounds", set.first)));
        }
        Ok(set)
    }

    /// Its rows as `row_meta` rows, but those `shadowed` (by `row_meta` rows of their keys).
    fn raw_rows(&self, shadowed: &std::collections::HashSet<String>) -> Vec<RawRow> {
        self.keys
            .iter()
            .zip(&self.nodes)
            .filter(|(k, _)| !shadowed.contains(k.as_str()))
            .map(|(k, n)| raw_row(k, *n))
            .collect()
    }
}

/// The `row_meta` row a set's row stands for.
fn raw_row(key: &str, node: i32) -> RawRow {
    (Some(key.to_string()), Some(JsonB(Value::Object(Map::new()))), Some(JsonB(set_row_meta(node))))
}

/// The metadata of a set's row, inserted by the entry of node `node`: no values kept.
pub(super) fn set_row_meta(node: i32) -> Value {
    serde_json::json!({"i": node, PARTIAL: true})
}

/// The node id of the entry that inserted a row to be written (of a table that keeps no
/// lookup values), if the row can go into a set: it keeps no values (`partial`, and `kept`
/// empty) and its metadata names its inserter only.
pub(super) fn set_node(meta: &Value, partial: bool, kept: &Map<String, Value>) -> Option<i32> {
    let m = meta.as_object()?;
    if !partial || !kept.is_empty() || m.len() != 1 {
        return None;
    }
    m.get("i")?.as_i64().and_then(|n| i32::try_from(n).ok())
}

/// What one replica has learned of the sets in a run: the last key of each table's sets,
/// sets decoded, and the rows it read from sets with their inserters' node ids.
#[derive(Default)]
pub(super) struct FreshCache {
    tops: HashMap<String, Option<String>>,
    sets: HashMap<(String, String), Rc<FreshSet>>,
    read: HashMap<(String, String), i32>,
}

impl FreshCache {
    /// Forgets all of it: the run wrote the sets.
    pub(super) fn clear(&mut self) {
        *self = FreshCache::default();
    }

    /// The inserter's node of a row the run read from a set.
    pub(super) fn read_from_set(&self, table: &str, key: &str) -> Option<i32> {
        self.read.get(&(table.to_string(), key.to_string())).copied()
    }
}

/// The last key any set of `table` covers, if it has sets.
fn top(cache: &mut FreshCache, grp: i32, table: &str) -> Result<Option<String>, ReconcileError> {
    if let Some(t) = cache.tops.get(table) {
        return Ok(t.clone());
    }
    if !crate::catalog::shape::has_fresh_row_sets() {
        return Ok(None);
    }
    let top = last_key(grp, table, None)?;
    cache.tops.insert(table.to_string(), top.clone());
    Ok(top)
}

/// The last key of the last set of `table` that starts at or before `at` (of its last set,
/// without `at`).
fn last_key(grp: i32, table: &str, at: Option<&str>) -> Result<Option<String>, ReconcileError> {
    let (sql, args) = match at {
        Some(at) => (
            "SELECT last_key FROM causal.fresh_rows WHERE grp = $1 AND table_name = $2 \
             AND (octet_length(first_key), first_key) <= (octet_length($3), $3) \
             ORDER BY octet_length(first_key) DESC, first_key DESC LIMIT 1",
            vec![grp.into(), table.into(), at.into()],
        ),
        None => (
            "SELECT last_key FROM causal.fresh_rows WHERE grp = $1 AND table_name = $2 \
             ORDER BY octet_length(first_key) DESC, first_key DESC LIMIT 1",
            vec![grp.into(), table.into()],
        ),
    };
    get_prepared::<String>(sql, &args).map_err(store_err)
}

/// For each of `keys`, the first key of the set that may hold it (the last starting at or
/// before it), with the set's last key.
pub(super) const CANDIDATE_SETS: &str = "SELECT k.key, s.first_key, s.last_key FROM unnest($3::text[]) AS k(key) \
     CROSS JOIN LATERAL (SELECT first_key, last_key FROM causal.fresh_rows \
     WHERE grp = $1 AND table_name = $2 AND (octet_length(first_key), first_key) <= (octet_length(k.key), k.key) \
     ORDER BY octet_length(first_key) DESC, first_key DESC LIMIT 1) s";

/// The sets of group `$1` and table `$2` that start at the keys `$3`.
pub(super) const SETS_BY_FIRST: &str = "SELECT s.first_key, s.last_key, s.keys, s.nodes FROM unnest($3::text[]) AS f(k) \
     CROSS JOIN LATERAL (SELECT first_key, last_key, keys, nodes FROM causal.fresh_rows \
     WHERE grp = $1 AND table_name = $2 AND octet_length(first_key) = octet_length(f.k) AND first_key = f.k OFFSET 0) s";

type SetRow = (Option<String>, Option<String>, Option<Vec<Option<String>>>, Option<Vec<Option<i32>>>);

fn read_sets(tuples: pgrx::spi::SpiTupleTable<'_>) -> Result<Vec<SetRow>, pgrx::spi::Error> {
    let mut out = Vec::new();
    for t in tuples {
        out.push((t.get(1)?, t.get(2)?, t.get(3)?, t.get(4)?));
    }
    Ok(out)
}

/// The sets that may hold each of `keys` (sorted in key order), decoded: (key, set).
fn sets_for<'k>(
    cache: &mut FreshCache,
    grp: i32,
    table: &str,
    keys: &[&'k str],
) -> Result<Vec<(&'k str, Rc<FreshSet>)>, ReconcileError> {
    let Some(top) = top(cache, grp, table)? else { return Ok(Vec::new()) };
    // Keys past every set need no probe: new serial keys, the common case.
    let keys: Vec<&str> = keys.iter().copied().filter(|k| key_order(k, &top) != Ordering::Greater).collect();
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let found: Vec<(Option<String>, Option<String>, Option<String>)> = probing_by_key(|| {
        run_prepared(
            CANDIDATE_SETS,
            &[grp.into(), table.into(), keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().into()],
            false,
            |rows| rows.map(|r| Ok((r.get(1)?, r.get(2)?, r.get(3)?))).collect::<Result<Vec<_>, pgrx::spi::Error>>(),
        )
    })
    .map_err(store_err)?;
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (key, first, last) in found {
        let (Some(key), Some(first), Some(last)) = (key, first, last) else { continue };
        if key_order(&key, &last) != Ordering::Greater {
            wanted.push((key, first));
        }
    }
    let mut missing: Vec<String> = wanted
        .iter()
        .map(|(_, f)| f.clone())
        .filter(|f| !cache.sets.contains_key(&(table.to_string(), f.clone())))
        .collect();
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        if cache.sets.len() + missing.len() > KEPT_SETS {
            cache.sets.clear();
        }
        let rows = probing_by_key(|| {
            run_prepared(SETS_BY_FIRST, &[grp.into(), table.into(), missing.into()], false, read_sets)
        })
        .map_err(store_err)?;
        for (f, l, k, n) in rows {
            let set = FreshSet::from_row(f, l, k, n)?;
            cache.sets.insert((table.to_string(), set.first.clone()), Rc::new(set));
        }
    }
    let asked: HashMap<&str, &'k str> = keys.iter().map(|k| (*k, *k)).collect();
    let mut out = Vec::with_capacity(wanted.len());
    for (key, first) in wanted {
        let set = cache.sets.get(&(table.to_string(), first.clone())).cloned().ok_or_else(|| {
            ReconcileError::Corrupt(format!("the set of fresh rows of {table} at {first} went missing"))
        })?;
        if let Some(k) = asked.get(key.as_str()) {
            out.push((*k, set));
        }
    }
    Ok(out)
}

/// The rows of `table` with `keys` (none of them in `row_meta`) that sets hold, as `row_meta`
/// rows; each is remembered as read from a set.
pub(super) fn lookup(
    cache: &mut FreshCache,
    grp: i32,
    table: &str,
    keys: &[&str],
) -> Result<Vec<RawRow>, ReconcileError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (key, set) in sets_for(cache, grp, table, keys)? {
        if let Some(node) = set.node_of(key) {
            cache.read.insert((table.to_string(), key.to_string()), node);
            out.push(raw_row(key, node));
        }
    }
    Ok(out)
}

/// The keys of `keys` that have a `row_meta` row in group `grp` and `table`.
fn shadowed(grp: i32, table: &str, keys: &[String]) -> Result<std::collections::HashSet<String>, ReconcileError> {
    if keys.is_empty() {
        return Ok(Default::default());
    }
    probing_by_key(|| {
        run_prepared(SHADOWED_KEYS, &[grp.into(), table.into(), keys.to_vec().into()], false, |rows| {
            rows.filter_map(|r| r.get::<String>(1).transpose()).collect::<Result<_, _>>()
        })
    })
    .map_err(store_err)
}

/// Calls `f` with the rows of the sets of `table`, as `row_meta` rows, a set at a time in key
/// order, leaving out those with a `row_meta` row, until it returns false. A set that does not
/// read, or overlaps the one before it, goes to `bad` instead, described (it returns whether to
/// go on). Returns whether every set was read.
pub(super) fn each_set(
    grp: i32,
    table: &str,
    f: &mut dyn FnMut(Vec<RawRow>) -> Result<bool, ReconcileError>,
    bad: &mut dyn FnMut(String) -> Result<bool, ReconcileError>,
) -> Result<bool, ReconcileError> {
    if !crate::catalog::shape::has_fresh_row_sets() {
        return Ok(true);
    }
    let mut after: (i32, String) = (-1, String::new());
    let mut last_before: Option<String> = None;
    loop {
        let page = run_prepared(
            "SELECT first_key, last_key, keys, nodes FROM causal.fresh_rows \
             WHERE grp = $1 AND table_name = $2 AND (octet_length(first_key), first_key) > ($3, $4) \
             ORDER BY octet_length(first_key), first_key LIMIT $5",
            &[grp.into(), table.into(), after.0.into(), after.1.as_str().into(), SET_PAGE.into()],
            false,
            read_sets,
        )
        .map_err(store_err)?;
        let full = page.len() as i64 == SET_PAGE;
        for (first, last, keys, nodes) in page {
            let Some(at) = first.clone() else { continue };
            after = (i32::try_from(at.len()).unwrap_or(i32::MAX), at.clone());
            let set = match FreshSet::from_row(first, last, keys, nodes) {
                Ok(set) if last_before.as_deref().is_some_and(|l| key_order(l, &set.first) != Ordering::Less) => {
                    Err(format!("the set of fresh rows starting at {at} overlaps the one before it"))
                }
                Ok(set) => Ok(set),
                Err(e) => Err(e.to_string()),
            };
            let set = match set {
                Ok(set) => set,
                Err(problem) => {
                    if !bad(problem)? {
                        return Ok(false);
                    }
                    continue;
                }
            };
            last_before = Some(set.last.clone());
            let rows = set.raw_rows(&shadowed(grp, table, &set.keys)?);
            if !rows.is_empty() && !f(rows)? {
                return Ok(false);
            }
        }
        if !full {
            return Ok(true);
        }
    }
}

/// Every row of `table` that its sets hold and `row_meta` does not.
pub(super) fn all_rows(cache: &mut FreshCache, grp: i32, table: &str) -> Result<Vec<RawRow>, ReconcileError> {
    if top(cache, grp, table)?.is_none() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    each_set(
        grp,
        table,
        &mut |rows| {
            out.extend(rows);
            Ok(true)
        },
        &mut |problem| Err(ReconcileError::Corrupt(problem)),
    )?;
    Ok(out)
}

/// Stores the new rows `fresh` (key, inserter's node id) of `table` as sets, in chunks of
/// [`SET_KEYS`] keys. Returns the rows that must be `row_meta` rows instead: those within the
/// bounds of a set already stored.
pub(super) fn write<'k>(
    grp: i32,
    table: &str,
    mut fresh: Vec<(&'k str, i32)>,
) -> Result<Vec<(&'k str, i32)>, ReconcileError> {
    if !crate::catalog::shape::has_fresh_row_sets() {
        return Ok(fresh);
    }
    fresh.sort_unstable_by(|a, b| key_order(a.0, b.0));
    let (Some(lo), Some(hi)) = (fresh.first().map(|r| r.0), fresh.last().map(|r| r.0)) else {
        return Ok(Vec::new());
    };
    // The only set that can overlap [lo, hi] is the last one starting at or before hi.
    let mut explicit = Vec::new();
    if let Some(last) = last_key(grp, table, Some(hi))?.filter(|last| key_order(last, lo) != Ordering::Less) {
        // They overlap: keys past every set still make one; the rest go to row_meta.
        let top = last_key(grp, table, None)?.unwrap_or(last);
        let split = fresh.partition_point(|r| key_order(r.0, &top) != Ordering::Greater);
        explicit = fresh.drain(..split).collect();
    }
    for chunk in fresh.chunks(SET_KEYS) {
        let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else { continue };
        let keys: Vec<String> = chunk.iter().map(|r| r.0.to_string()).collect();
        let nodes: Vec<i32> = chunk.iter().map(|r| r.1).collect();
        exec_prepared(
            "INSERT INTO causal.fresh_rows (grp, table_name, first_key, last_key, keys, nodes) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[grp.into(), table.into(), first.0.into(), last.0.into(), keys.into(), nodes.into()],
        )
        .map_err(store_err)?;
    }
    Ok(explicit)
}

/// Takes the rows of `table` with `keys` out of the sets that hold them (a rewind removed
/// them from the view). A set left empty is deleted; the others keep their bounds.
pub(super) fn remove(cache: &mut FreshCache, grp: i32, table: &str, keys: &[&str]) -> Result<(), ReconcileError> {
    let mut per_set: BTreeMap<String, (Rc<FreshSet>, std::collections::HashSet<&str>)> = BTreeMap::new();
    for (key, set) in sets_for(cache, grp, table, keys)? {
        if set.node_of(key).is_some() {
            per_set.entry(set.first.clone()).or_insert_with(|| (set.clone(), Default::default())).1.insert(key);
        }
    }
    for (first, (set, gone)) in per_set {
        let (keys, nodes): (Vec<String>, Vec<i32>) = set
            .keys
            .iter()
            .zip(&set.nodes)
            .filter(|(k, _)| !gone.contains(k.as_str()))
            .map(|(k, n)| (k.clone(), *n))
            .unzip();
        let at = [grp.into(), table.into(), first.as_str().into()];
        if keys.is_empty() {
            exec_prepared(
                "DELETE FROM causal.fresh_rows WHERE grp = $1 AND table_name = $2 \
                 AND octet_length(first_key) = octet_length($3) AND first_key = $3",
                &at,
            )
            .map_err(store_err)?;
        } else {
            let [g, t, f] = at;
            exec_prepared(
                "UPDATE causal.fresh_rows SET keys = $4, nodes = $5 WHERE grp = $1 AND table_name = $2 \
                 AND octet_length(first_key) = octet_length($3) AND first_key = $3",
                &[g, t, f, keys.into(), nodes.into()],
            )
            .map_err(store_err)?;
        }
    }
    cache.clear();
    Ok(())
}

/// Writes the rows of `table` that its sets hold (and `row_meta` does not) as `row_meta`
/// rows with all their values, and deletes its sets: a rule has come to scan the table, and
/// a rule check reads rows by any column. Without this, every check would derive every row
/// in the table's sets. Called at the end of a run, after its own rows are written.
pub(super) fn make_complete(replica: &SpiReplica, table: &str) -> Result<(), ReconcileError> {
    if top(&mut FreshCache::default(), replica.num, table)?.is_none() {
        return Ok(());
    }
    let auth = replica.derivation_authority()?;
    let names = replica.names();
    let mut written = 0usize;
    let mut write = |page: Vec<RawRow>| -> Result<bool, ReconcileError> {
        let rows = to_states(page, &names)?;
        let rows = derived::derive_all(replica, &auth, &mut replica.payloads.borrow_mut(), table, rows)?;
        let mut batch = RowBatch::default();
        for (key, state) in &rows {
            batch.tables.push(table);
            batch.keys.push(key.as_str());
            batch.values.push(state.values.clone());
            batch.metas.push(names.meta(state)?);
        }
        batch.write_direct(replica.num).map_err(store_err)?;
        written += rows.len();
        Ok(true)
    };
    each_set(replica.num, table, &mut write, &mut |problem| Err(ReconcileError::Corrupt(problem)))?;
    exec_prepared(
        "DELETE FROM causal.fresh_rows WHERE grp = $1 AND table_name = $2",
        &[replica.num.into(), table.into()],
    )
    .map_err(store_err)?;
    pgrx::log!(
        "pg_causal: group {}: {written} rows of {table}, which a rule now scans, keep all their values",
        replica.group
    );
    Ok(())
}
