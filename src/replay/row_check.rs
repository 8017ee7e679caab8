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
            let page: Vec<RawRow> = run_prepared(
                "SELECT key, vals, meta FROM causal.row_meta \
                 WHERE grp = $1 AND table_name = $2 AND (octet_length(key), key) > ($3, $4) \
                 ORDER BY octet_length(key), key LIMIT $5",
                &[group.num.into(), schema.table.as_str().into(), after.0.into(), after.1.as_str().into(), PAGE.into()],
                false,
                read_rows,
            )?;
            let Some(last) = page.last().and_then(|r| r.0.clone()) else { break };
            let full = page.len() as i64 == PAGE;
            after = (i32::try_from(last.len()).unwrap_or(i32::MAX), last);
            for (key, row) in to_states(page, &names).map_err(err)? {
                let derived = derive_values(replica.dag(), &auth, schema, &key, &row, |h| {
                    if let Some(p) = payloads.get(h) {
                        return Ok(Rc::clone(p));
                    }
                    if payloads.len() >= KEPT_PAYLOADS {
                        payloads.clear();
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
