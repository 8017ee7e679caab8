//! Looking at reconciled history: `causal.explain` and `causal.snapshot`.

use pgrx::prelude::*;
use pgrx::{JsonB, PgRelation};

use serde_json::{json, Value};

use causal_core::entry::{Entry, Position};
use causal_core::payload::SignedPayload;
use causal_core::reconcile::memory::MemReplica;
use causal_core::EntryHash;

use crate::catalog::group::Group;
use crate::error::{CausalError, OrReport};
use crate::pg::spi::get_opt;

type EntryRow = (String, String, Option<String>, Option<Vec<String>>, Option<i32>, String, Option<pgrx::JsonB>);

fn entry_row(hash: &str) -> Result<Option<EntryRow>, CausalError> {
    Ok(Spi::connect(|client| {
        // A catalog not upgraded yet has no `cause` column (catalog::shape).
        let cause = if crate::catalog::shape::journal_has_cause() { "j.cause" } else { "NULL::jsonb" };
        let payload = crate::catalog::entry_row::payload_sql();
        let hash_is = crate::catalog::entry_row::hash_equals_sql("e", "$1");
        // A run of records may hold the entry's (`journal_runs`): its height then comes from there.
        let run_height = crate::replay::journal_runs::height_sql("e");
        let mut rows = client.select(
            &format!(
                "SELECT g.group_id, coalesce(j.status, 'ok'), j.reason, j.responsible, \
                 CASE WHEN j.node_id IS NULL THEN {run_height} ELSE j.height END, {payload}, {cause} \
                 FROM causal.dag_entries e JOIN causal.group_defs g USING (grp) \
                 LEFT JOIN causal.journal j ON j.grp = e.grp AND j.node_id = e.node_id \
                 WHERE {hash_is}"
            ),
            Some(1),
            &[hash.into()],
        )?;
        match rows.next() {
            None => Ok::<_, pgrx::spi::Error>(None),
            Some(r) => Ok(Some((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?,
                r.get::<Vec<String>>(4)?,
                r.get::<i32>(5)?,
                r.get::<String>(6)?.unwrap_or_default(),
                r.get::<pgrx::JsonB>(7)?,
            ))),
        }
    })?)
}

fn summary(payload: &str) -> (Option<String>, String) {
    match causal_core::json::parse(payload).ok().and_then(|v| SignedPayload::from_owned(v).ok()) {
        Some(p) => (Some(p.author.to_b64()), p.summary(|_| Vec::new())),
        None => (None, "unreadable payload".into()),
    }
}

fn explain_entry(hash: &str) -> Result<Option<Value>, CausalError> {
    let Some((group, status, reason, responsible, height, payload, cause)) = entry_row(hash)? else {
        return Ok(None);
    };
    let cause = cause.map(|c| c.0).unwrap_or(Value::Null);
    let (author, op) = summary(&payload);
    let mut blamed = Vec::new();
    for h in responsible.unwrap_or_default() {
        let detail = match entry_row(&h)? {
            Some((_, s, _, _, _, p, _)) => {
                let (a, o) = summary(&p);
                json!({"hash": h, "author": a, "op": o, "status": s})
            }
            None => json!({"hash": h}),
        };
        blamed.push(detail);
    }
    Ok(Some(json!({
        "hash": hash, "group": group, "author": author, "op": op, "status": status, "reason": reason,
        "code": cause.get("code"), "table": cause.get("table"), "key": cause.get("key"),
        "responsible": blamed, "order": {"height": height},
    })))
}

/// Why an entry has its verdict: `{hash, group, author, op, status, reason, code, table, key,
/// responsible: [{hash, author, op, status}], order: {height}}`. NULL for an unknown entry.
#[pg_extern(stable)]
fn explain(entry: &str) -> Option<JsonB> {
    explain_entry(entry).or_report("causal.explain").map(JsonB)
}

fn parse_position(hashes: &[String]) -> Result<Position, CausalError> {
    hashes
        .iter()
        .map(|h| h.parse::<EntryHash>().map_err(|_| CausalError::BadBundle(format!("{h} is not an entry hash"))))
        .collect()
}

fn snapshot_rows(
    relid: pg_sys::Oid,
    at: Option<Vec<String>>,
    from: Option<Vec<String>>,
) -> Result<Vec<Value>, CausalError> {
    let table = crate::catalog::tables::group_table_name(relid)?;
    let group_id =
        get_opt::<String>("SELECT group_id FROM causal.replicated_tables WHERE relid = $1", &[relid.into()])?
            .ok_or_else(|| CausalError::NotReplicated(table.clone()))?;
    if at.is_none() && from.is_none() {
        return frontier_rows(&group_id, &table);
    }
    let group = Group::find(&group_id)?;
    let dag = group.dag();
    let from = match from {
        Some(f) => parse_position(&f)?,
        None => dag.frontier()?,
    };
    let at = match at {
        Some(a) => parse_position(&a)?,
        None => from.clone(),
    };
    for h in at.iter().chain(from.iter()) {
        if !dag.contains(h)? {
            return Err(CausalError::BadBundle(format!("entry {} is not in group {}", h.to_b64(), group.id)));
        }
    }
    for h in &at {
        if !dag.in_history(h, &from)? {
            return Err(CausalError::BadBundle(format!(
                "at_version entry {} is not in the history of from_version",
                h.to_b64()
            )));
        }
    }
    // Replay the history of `from` in memory with the same engine, then fold `at`'s history.
    let hashes: Vec<String> = Spi::connect(|client| {
        let sql = format!(
            "SELECT {} FROM causal.dag_entries e WHERE e.grp = $1 ORDER BY e.node_id",
            crate::catalog::entry_row::hash_sql("e")
        );
        let rows = client.select(&sql, None, &[group.num.into()])?;
        rows.map(|r| r.get::<String>(1).map(Option::unwrap_or_default)).collect::<Result<Vec<_>, _>>()
    })?;
    let mut entries: Vec<Entry> = Vec::new();
    for h in hashes {
        let hash: EntryHash = h.parse().map_err(|_| CausalError::Corrupt(format!("stored hash {h}")))?;
        if dag.in_history(&hash, &from)? {
            if let Some(e) = dag.entry(&hash)? {
                entries.push(e);
            }
        }
    }
    let mut replica = MemReplica::new(group.algorithm).with_checker(Box::new(|schema, row| {
        let owner = crate::replay::owner_of(&schema.table).ok().flatten();
        crate::replay::violated_check(schema, row, owner).ok().flatten()
    }));
    replica.receive(&entries).map_err(|e| CausalError::Reconcile(e.to_string()))?;
    let rows = replica.view_at(&table, &at).map_err(|e| CausalError::Reconcile(e.to_string()))?;
    Ok(rows.into_iter().map(Value::Object).collect())
}

/// The view at the frontier, sorted by key, bytewise.
fn frontier_rows(group_id: &str, table: &str) -> Result<Vec<Value>, CausalError> {
    let view = crate::replay::frontier::frontier_view(group_id, table)?;
    Ok(view.into_values().map(Value::Object).collect())
}

/// The rows of a replicated table in the group's view at `at_version` seen from
/// `from_version` (both default to the frontier), one jsonb object per row in the encoded form.
#[pg_extern(stable)]
fn snapshot(
    tbl: PgRelation,
    at_version: default!(Option<Vec<String>>, "NULL"),
    from_version: default!(Option<Vec<String>>, "NULL"),
) -> SetOfIterator<'static, JsonB> {
    let rows = snapshot_rows(tbl.oid(), at_version, from_version).or_report("causal.snapshot");
    SetOfIterator::new(rows.into_iter().map(JsonB))
}
