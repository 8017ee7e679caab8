//! Checking `causal.row_meta` against the history: a row's values are a function of its
//! metadata and the entries it names (`causal_core::reconcile::derived_values`), so the values
//! stored beside the metadata must be exactly those. `causal.verify` reports each row that
//! differs (a damaged catalog, or a row written by a faulty version).

use std::rc::Rc;

use causal_core::reconcile::derived_values::{derive_values, PayloadRows};

use super::*;

/// Rows read per statement.
const PAGE: i64 = 5_000;
/// Decoded payloads kept while checking: the rows of a bulk entry share one.
const KEPT_PAYLOADS: usize = 4_096;

/// The rows of group `group`'s tables (its placed view) whose stored values differ from what
/// their metadata and the history give, each described; at most `limit` of them.
pub fn rows_not_derived(group: &Group, limit: usize) -> Result<Vec<String>, CausalError> {
    let replica = SpiReplica::new(group);
    let err = |e: ReconcileError| CausalError::Reconcile(e.to_string());
    let auth = reconcile::placed_authority(&replica).map_err(err)?;
    let names = replica.names();
    let mut payloads: HashMap<EntryHash, Rc<PayloadRows>> = HashMap::new();
    let mut out = Vec::new();
    for schema in auth.tables() {
        // Keyset pages in the order of row_meta's index.
        let mut after: (i32, String) = (-1, String::new());
        loop {
            // Along row_meta's index: a plan that scanned and sorted the table's rows for each
            // page made the check quadratic.
            let page: Vec<RawRow> = crate::pg::spi::with_setting("enable_seqscan", "off", || {
                probing_by_key(|| {
                    run_prepared(
                        "SELECT key, vals, meta FROM causal.row_meta \
                         WHERE grp + 0 = $1 AND table_name || '' = $2 AND (octet_length(key), key) > ($3, $4) \
                         ORDER BY octet_length(key), key LIMIT $5",
                        &[
                            group.num.into(),
                            schema.table.as_str().into(),
                            after.0.into(),
                            after.1.as_str().into(),
                            PAGE.into(),
                        ],
                        false,
                        read_rows,
                    )
                })
            })??;
            let Some(last) = page.last().and_then(|r| r.0.clone()) else { break };
            let full = page.len() as i64 == PAGE;
            after = (i32::try_from(last.len()).unwrap_or(i32::MAX), last);
            let rows = to_states(page, &names).map_err(err)?;
            load_payloads(&replica, &auth, &rows, &mut payloads)?;
            for (key, row) in rows {
                // Every entry the page names was loaded; one that was not is read and kept.
                let derived = derive_values(replica.dag(), &auth, schema, &key, &row, |h| {
                    if let Some(p) = payloads.get(h) {
                        return Ok(Rc::clone(p));
                    }
                    let p = Rc::new(PayloadRows::new(replica.payload(h)?, &auth));
                    payloads.insert(*h, Rc::clone(&p));
                    Ok(p)
                });
                let problem = match derived {
                    Ok(values) if values == row.values => continue,
                    Ok(values) => format!(
                        "stored values {} differ from {} that its metadata and history give",
                        Value::Object(row.values),
                        Value::Object(values)
                    ),
                    Err(e) => e.to_string(),
                };
                out.push(format!("row {key} of table {}: {problem}", schema.table));
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            if !full {
                break;
            }
        }
    }
    Ok(out)
}

/// Reads the payloads of the entries `rows` name and `kept` lacks, in one statement, indexed
/// by row (a statement per entry cost more than deriving the values).
fn load_payloads(
    replica: &SpiReplica,
    auth: &reconcile::Authority,
    rows: &[(RowKey, RowState)],
    kept: &mut HashMap<EntryHash, Rc<PayloadRows>>,
) -> Result<(), CausalError> {
    let mut wanted: Vec<EntryHash> =
        rows.iter().filter(|(_, r)| r.is_live()).flat_map(|(_, r)| r.entries()).copied().collect();
    wanted.sort_unstable();
    wanted.dedup();
    // Room for the page first: what it names and was kept stays kept.
    let missing = wanted.iter().filter(|h| !kept.contains_key(h)).count();
    if kept.len() + missing > KEPT_PAYLOADS {
        kept.retain(|h, _| wanted.binary_search(h).is_ok());
    }
    wanted.retain(|h| !kept.contains_key(h));
    if wanted.is_empty() {
        return Ok(());
    }
    let store = replica.dag.store();
    let mut ids = Vec::with_capacity(wanted.len());
    for h in &wanted {
        if let Some(id) = store.node_id(h).map_err(causal_core::DagError::from)? {
            ids.push(i32::try_from(id.0).map_err(|_| CausalError::Corrupt(format!("node id {} out of range", id.0)))?);
        }
    }
    let texts: Vec<(Option<String>, Option<String>)> = run_prepared(
        "SELECT hash, payload FROM causal.dag_entries WHERE grp = $1 AND node_id = ANY ($2)",
        &[replica.num.into(), ids.into()],
        false,
        |t| t.map(|r| Ok((r.get::<String>(1)?, r.get::<String>(2)?))).collect(),
    )?;
    for (hash, text) in texts {
        let (Some(hash), Some(text)) = (hash, text) else { continue };
        let h: EntryHash = hash.parse().map_err(|_| {
            CausalError::Corrupt(format!("group {}: stored entry hash {hash:?} is not a hash", replica.group))
        })?;
        let payload = super::placement::decode_payload(&replica.group, &h, &text)?;
        kept.insert(h, Rc::new(PayloadRows::new(payload, auth)));
    }
    Ok(())
}
