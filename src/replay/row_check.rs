//! Checking `causal.row_meta` against the history: a row's values are a function of its
//! metadata and the entries it names (`causal_core::reconcile::derived_values`), and the
//! values kept beside the metadata (all of them, or its lookup columns', `derived`) must be
//! exactly those.
//! `causal.verify` reports each row whose history does not give its values, or whose kept
//! values differ (a damaged catalog, or a row written by a faulty version).

use super::*;

/// Rows read per statement.
const PAGE: i64 = 5_000;

/// The rows of group `group`'s tables (its placed view) whose history does not give their
/// values, or whose kept values differ from those it gives, each described; at most `limit`.
pub fn rows_not_derived(group: &Group, limit: usize) -> Result<Vec<String>, CausalError> {
    let replica = SpiReplica::new(group);
    let err = |e: ReconcileError| CausalError::Reconcile(e.to_string());
    let auth = std::rc::Rc::new(reconcile::placed_authority(&replica).map_err(err)?);
    replica.use_authority(&auth);
    let mut payloads = derived::Payloads::default();
    let out = RefCell::new(Vec::new());
    for schema in auth.tables() {
        // A set of fresh rows that does not read, or overlaps the one before, is its problem.
        let mut bad_set = |problem: String| -> Result<bool, ReconcileError> {
            let mut out = out.borrow_mut();
            out.push(format!("table {}: {problem}", schema.table));
            Ok(out.len() < limit)
        };
        let mut problems = |page: Vec<RawRow>| -> Result<bool, ReconcileError> {
            let mut out = out.borrow_mut();
            // Row by row, so that metadata that does not read is one row's problem.
            let names = replica.names();
            names.prepare_reads(page.iter().filter_map(|r| r.2.as_ref().map(|m| &m.0)))?;
            let mut rows = Vec::with_capacity(page.len());
            for raw in page {
                let key = raw.0.clone().unwrap_or_default();
                match to_states(vec![raw], &names) {
                    Ok(row) => rows.extend(row),
                    Err(e) => {
                        out.push(format!("row {key} of table {}: {e}", schema.table));
                        if out.len() >= limit {
                            return Ok(false);
                        }
                    }
                }
            }
            for (key, state, kept, partial) in derived::derive(&replica, &auth, &mut payloads, &schema.table, rows)? {
                let problem = match state {
                    Ok(row) => {
                        let given = if partial { derived::lookup_values(schema, &row.values) } else { row.values };
                        if given == kept {
                            continue;
                        }
                        format!(
                            "kept values {} differ from {} that its metadata and history give",
                            Value::Object(kept),
                            Value::Object(given)
                        )
                    }
                    Err(e) => e.to_string(),
                };
                out.push(format!("row {key} of table {}: {problem}", schema.table));
                if out.len() >= limit {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        if !each_page(&replica, &schema.table, &mut problems, &mut bad_set).map_err(err)? {
            break;
        }
    }
    Ok(out.into_inner())
}

/// Calls `f` with the rows of `table` in `replica`'s group as stored, tombstones included, a
/// page at a time: those of row_meta in the order of its key index, then those of the sets of
/// fresh rows row_meta does not hold, a set at a time; until it returns false. A set that does
/// not read, or overlaps the one before it, goes to `bad` instead, described (it returns
/// whether to go on). Returns whether every page was read.
pub(super) fn each_page(
    replica: &SpiReplica,
    table: &str,
    f: &mut dyn FnMut(Vec<RawRow>) -> Result<bool, ReconcileError>,
    bad: &mut dyn FnMut(String) -> Result<bool, ReconcileError>,
) -> Result<bool, ReconcileError> {
    Ok(each_row_meta_page(replica, table, f)? && super::fresh_rows::each_set(replica.num, table, f, bad)?)
}

fn each_row_meta_page(
    replica: &SpiReplica,
    table: &str,
    f: &mut dyn FnMut(Vec<RawRow>) -> Result<bool, ReconcileError>,
) -> Result<bool, ReconcileError> {
    let mut after: (i32, String) = (-1, String::new());
    loop {
        // Along row_meta's index: a plan that scanned and sorted the table's rows for each
        // page made reading them quadratic.
        let page: Vec<RawRow> = crate::pg::spi::with_setting("enable_seqscan", "off", || {
            probing_by_key(|| {
                run_prepared(
                    "SELECT key, vals, meta FROM causal.row_meta \
                     WHERE grp + 0 = $1 AND table_name || '' = $2 AND (octet_length(key), key) > ($3, $4) \
                     ORDER BY octet_length(key), key LIMIT $5",
                    &[replica.num.into(), table.into(), after.0.into(), after.1.as_str().into(), PAGE.into()],
                    false,
                    read_rows,
                )
            })
        })
        .map_err(store_err)?
        .map_err(store_err)?;
        let Some(last) = page.last().and_then(|r| r.0.clone()) else { return Ok(true) };
        let full = page.len() as i64 == PAGE;
        after = (i32::try_from(last.len()).unwrap_or(i32::MAX), last);
        if !f(page)? {
            return Ok(false);
        }
        if !full {
            return Ok(true);
        }
    }
}
