//! Moving history between databases without a network: `causal.export` and `causal.import`.
//!
//! A bundle is UTF-8 JSON:
//! `{"format": "pg_causal-bundle/1", "group": "<id>", "hashAlgorithm": "...", "entries": [...]}`
//! with entries in wire form (`{hash, header, payload}`), predecessors first.

use pgrx::prelude::*;
use serde_json::{json, Value};

use causal_core::dag::DagStore;
use causal_core::Hash;

use crate::error::{CausalError, OrReport};
use crate::group::Group;

/// The bundle format tag.
pub const BUNDLE_FORMAT: &str = "pg_causal-bundle/1";

fn export_bundle(grp: &str, since: Option<Vec<String>>) -> Result<Vec<u8>, CausalError> {
    let group = Group::find(grp)?;
    let dag = group.dag();
    // Entries of `since` this database does not know say nothing about what to leave out.
    let mut known = causal_core::Position::new();
    for h in since.unwrap_or_default() {
        if let Ok(hash) = h.parse::<Hash>() {
            if dag.contains(&hash)? {
                known.insert(hash);
            }
        }
    }
    let total = dag.len()?;
    let mut entries = Vec::new();
    for id in 0..total {
        let id = u32::try_from(id).map_err(|_| CausalError::Corrupt("too many entries".into()))?;
        let node = dag.store().node(id).map_err(causal_core::DagError::from)?;
        if !known.is_empty() && dag.in_history(&node.hash, &known)? {
            continue;
        }
        let entry = dag.store().entry(id).map_err(causal_core::DagError::from)?;
        entries.push(entry.to_wire());
    }
    let bundle = json!({
        "format": BUNDLE_FORMAT,
        "group": group.id,
        "hashAlgorithm": group.algorithm.name(),
        "entries": entries,
    });
    serde_json::to_vec(&bundle).map_err(|e| CausalError::Corrupt(e.to_string()))
}

/// Every entry of the group that is not in the history of `since` (all of them when `since`
/// is NULL), predecessors first, as a bundle for `causal.import`.
#[pg_extern]
fn export(grp: &str, since: default!(Option<Vec<String>>, "NULL")) -> Vec<u8> {
    export_bundle(grp, since).or_report("causal.export")
}

/// Reads a bundle's header and entries, refusing a malformed bundle outright.
pub fn parse_bundle(bytes: &[u8]) -> Result<(String, String, Vec<Value>), CausalError> {
    let bad = |why: &str| CausalError::BadBundle(why.to_string());
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
    let v = causal_core::json::parse(text).map_err(|e| bad(&format!("not JSON: {e}")))?;
    if v["format"] != BUNDLE_FORMAT {
        return Err(bad(&format!("format is not {BUNDLE_FORMAT}")));
    }
    let group = v["group"].as_str().ok_or_else(|| bad("group is missing"))?.to_string();
    let alg = v["hashAlgorithm"].as_str().ok_or_else(|| bad("hashAlgorithm is missing"))?.to_string();
    let entries = v["entries"].as_array().ok_or_else(|| bad("entries is missing"))?.clone();
    Ok((group, alg, entries))
}

use std::collections::HashSet;

use causal_core::entry::{Entry, Position};
use causal_core::membership::{derive_meta, member_at};
use causal_core::payload::{Op, SignedPayload};
use causal_core::schema::TableSchema;
use causal_core::{DagError, HashAlgorithm, MetaFilter};

use crate::spi_util::get_opt;

/// The schema of `table` at `position`: the last schema entry for it in that history.
fn schema_at(
    dag: &causal_core::Dag<crate::store::SpiStore>,
    position: &Position,
    table: &str,
) -> Result<Option<TableSchema>, String> {
    let filter = MetaFilter::tag(causal_core::membership::SCHEMA_TAG, table);
    let last = dag.cover_with_filter(position, &filter, None).map_err(|e| e.to_string())?;
    // Concurrent schema changes of one table: reconciliation decides; here take any that
    // defines the table (all must agree for a fast-forward anyway).
    for h in last {
        let Some(entry) = dag.entry(&h).map_err(|e| e.to_string())? else { continue };
        let Ok(p) = SignedPayload::from_value(&entry.payload) else { continue };
        for op in p.ops.iter().rev() {
            match op {
                Op::Schema { table: t, schema } if t == table => {
                    return TableSchema::from_value(schema).map(Some).map_err(|e| e.to_string());
                }
                Op::Unreplicate { table: t } if t == table => return Ok(None),
                _ => {}
            }
        }
    }
    Ok(None)
}

/// Why an entry is invalid at its position, if it is.
fn validate(
    dag: &causal_core::Dag<crate::store::SpiStore>,
    group_id: &Hash,
    alg: HashAlgorithm,
    e: &Entry,
) -> Option<String> {
    if let Err(err) = e.verify_hashes(alg) {
        return Some(err.to_string());
    }
    let payload = match SignedPayload::from_value(&e.payload) {
        Ok(p) => p,
        Err(err) => return Some(format!("invalid payload: {err}")),
    };
    if payload.genesis.is_some() {
        return Some("a second genesis entry".into());
    }
    let prev = &e.header.prev;
    let status = match member_at(dag, prev, &payload.author) {
        Ok(s) => s,
        Err(err) => return Some(err.to_string()),
    };
    let Some(key) = status.public_key.filter(|_| status.live) else {
        return Some(format!("author {} is not a live member at the entry's position", payload.author));
    };
    if let Err(err) = payload.verify(&key, Some(group_id), prev) {
        return Some(err.to_string());
    }
    for op in &payload.ops {
        let admin_op = matches!(
            op,
            Op::AddMember { .. }
                | Op::RemoveMember { .. }
                | Op::Schema { .. }
                | Op::Rule { .. }
                | Op::Unreplicate { .. }
        );
        if admin_op && !status.admin {
            return Some(format!("author {} is not an admin at the entry's position", payload.author));
        }
        let (table, check): (&str, Box<dyn Fn(&TableSchema) -> Result<(), String>>) = match op {
            Op::Insert { table, row } => (table, Box::new(move |s| s.check_row(row, true).map_err(|e| e.to_string()))),
            Op::Update { table, key, set, unset } => (
                table,
                Box::new(move |s| {
                    s.check_row(key, false).and_then(|_| s.check_row(set, false)).map_err(|e| e.to_string())?;
                    match unset.iter().find(|c| s.column(c).is_none_or(|col| col.not_null)) {
                        Some(c) => Err(format!("column {c} of {} cannot be set to NULL", s.table)),
                        None => Ok(()),
                    }
                }),
            ),
            Op::Delete { table, key } => (table, Box::new(move |s| s.check_row(key, false).map_err(|e| e.to_string()))),
            _ => continue,
        };
        match schema_at(dag, prev, table) {
            Ok(Some(schema)) => {
                if let Err(err) = check(&schema) {
                    return Some(err);
                }
            }
            Ok(None) => return Some(format!("table {table} is not replicated at the entry's position")),
            Err(err) => return Some(err),
        }
    }
    None
}

/// Creates the group from the genesis in the bundle.
fn adopt_group(group_id: &str, alg: HashAlgorithm, entries: &[Entry]) -> Result<Group, CausalError> {
    let bad = |why: String| CausalError::BadBundle(why);
    let genesis = entries
        .iter()
        .find(|e| e.hash.to_b64() == group_id)
        .ok_or_else(|| CausalError::UnknownGroup(format!("{group_id} (the bundle does not hold its genesis)")))?;
    genesis.verify_hashes(alg).map_err(|e| bad(format!("genesis: {e}")))?;
    let payload = SignedPayload::from_value(&genesis.payload).map_err(|e| bad(format!("genesis: {e}")))?;
    let g = payload.genesis.clone().ok_or_else(|| bad("the group's first entry is not a genesis".into()))?;
    if !genesis.header.prev.is_empty() || g.hash_algorithm != alg.name() {
        return Err(bad("the genesis does not match the bundle's group".into()));
    }
    payload.verify(&g.admin, None, &Position::new()).map_err(|e| bad(format!("genesis: {e}")))?;
    if get_opt::<bool>("SELECT true FROM causal.group_defs WHERE name = $1", &[g.name.clone().into()])?.is_some() {
        return Err(CausalError::DuplicateGroup(g.name));
    }
    Spi::run_with_args(
        "INSERT INTO causal.group_defs (group_id, name, hash_algorithm) VALUES ($1, $2, $3)",
        &[group_id.into(), g.name.into(), alg.name().into()],
    )?;
    let group = Group::find(group_id)?;
    let mut e = genesis.clone();
    e.meta = derive_meta(&payload);
    group.dag().insert(e)?;
    Ok(group)
}

/// Whether every hash of `prev` is stored (storage errors propagate).
fn all_present(dag: &causal_core::Dag<crate::store::SpiStore>, prev: &Position) -> Result<bool, CausalError> {
    for p in prev {
        if !dag.contains(p)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn import_bundle(bytes: &[u8]) -> Result<Value, CausalError> {
    let (group_id, alg_name, raw) = parse_bundle(bytes)?;
    let alg = HashAlgorithm::parse(&alg_name).map_err(|e| CausalError::BadBundle(e.to_string()))?;
    let entries: Vec<Entry> = raw
        .iter()
        .enumerate()
        .map(|(i, v)| Entry::from_wire(v).map_err(|e| CausalError::BadBundle(format!("entry {i}: {e}"))))
        .collect::<Result<_, _>>()?;
    let gid: Hash = group_id.parse().map_err(|_| CausalError::BadBundle("group is not a hash".into()))?;
    let (group, adopted) = match Group::find(&group_id) {
        Ok(g) if g.algorithm != alg => {
            return Err(CausalError::BadBundle("hash algorithm differs from the group's".into()))
        }
        Ok(g) => (g, false),
        Err(CausalError::UnknownGroup(_)) => (adopt_group(&group_id, alg, &entries)?, true),
        Err(e) => return Err(e),
    };
    let started = std::time::Instant::now();
    let mut dag = group.dag();
    dag.store().lock().map_err(DagError::from)?;
    dag.store().defer_state_writes();
    let mut stored: Vec<Entry> = Vec::new();
    if adopted {
        if let Some(g) = dag.entry(&gid)? {
            stored.push(g);
        }
    }
    let (mut accepted, mut duplicates) = (if adopted { 1 } else { 0 }, 0);
    let mut rejected: Vec<(Hash, String)> = Vec::new();
    let mut rejected_set: HashSet<Hash> = HashSet::new();
    let mut pending: Vec<Entry> = entries.into_iter().filter(|e| !(adopted && e.hash == gid)).collect();
    loop {
        let mut progress = false;
        let mut waiting = Vec::new();
        for e in pending {
            if dag.contains(&e.hash)? {
                duplicates += 1;
                progress = true;
            } else if let Some(bad) = e.header.prev.iter().find(|p| rejected_set.contains(*p)) {
                rejected_set.insert(e.hash);
                rejected.push((e.hash, format!("depends on rejected entry {bad}")));
                progress = true;
            } else if all_present(&dag, &e.header.prev)? {
                progress = true;
                match validate(&dag, &gid, alg, &e) {
                    Some(reason) => {
                        rejected_set.insert(e.hash);
                        rejected.push((e.hash, reason));
                    }
                    None => {
                        let mut entry = e;
                        if let Ok(p) = SignedPayload::from_value(&entry.payload) {
                            entry.meta = derive_meta(&p);
                        }
                        match dag.insert(entry.clone()) {
                            Ok(_) => {
                                accepted += 1;
                                stored.push(entry);
                            }
                            Err(err) => {
                                rejected_set.insert(entry.hash);
                                rejected.push((entry.hash, err.to_string()));
                            }
                        }
                    }
                }
            } else {
                waiting.push(e);
            }
        }
        pending = waiting;
        if !progress || pending.is_empty() {
            break;
        }
    }
    for e in pending {
        let mut missing = String::new();
        for p in &e.header.prev {
            if !dag.contains(p)? {
                missing = p.to_b64();
                break;
            }
        }
        rejected.push((e.hash, format!("missing predecessor {missing}")));
    }
    // Tables and rules first, then the engine replays rows and verdicts (one transaction).
    dag.store().write_state().map_err(DagError::from)?;
    let validated = started.elapsed();
    crate::apply::apply_catalog(&group, &stored)?;
    let hashes: Vec<Hash> = stored.iter().map(|e| e.hash).collect();
    let changes = crate::replay::reconcile_group(&group, &hashes, false)?;
    let reconciled = started.elapsed() - validated;
    Ok(json!({
        "group": group_id,
        "accepted": accepted,
        "duplicates": duplicates,
        "replayed": changes.stats.replayed,
        "rewound": changes.stats.rewound,
        "cancelled": changes.journal.iter().filter(|(_, j)| !j.verdict.is_ok()).count(),
        "rejected": rejected.iter().map(|(h, r)| json!({"hash": h.to_b64(), "reason": r})).collect::<Vec<_>>(),
        "ms": {"validate_and_store": validated.as_millis() as u64, "reconcile": reconciled.as_millis() as u64},
    }))
}

/// Validates and stores the entries of a bundle from `causal.export`. Returns
/// `{"accepted": n, "duplicates": n, "replayed": n, "rewound": n, "cancelled": n,
/// "rejected": [{"hash", "reason"}]}`. Entries that depend on a rejected entry are rejected
/// too. A malformed bundle is an error that stores nothing. In the same transaction, the
/// engine reconciles: verdicts are (re)computed above the fork and the tables are replayed to
/// the group's view at the new frontier (`replayed` entries, `rewound` applied ones undone,
/// `cancelled` among those replayed).
#[pg_extern]
fn import(bundle: &[u8]) -> pgrx::JsonB {
    pgrx::JsonB(import_bundle(bundle).or_report("causal.import"))
}
