//! Looking at a group's history: `causal.log`, `causal.entry` and `causal.verify`.

use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};

use causal_core::entry::{Entry, Meta, Position};
use causal_core::membership::member_at;
use causal_core::payload::SignedPayload;
use causal_core::{EntryHash, GroupId};

use crate::catalog::entry_row;
use crate::catalog::group::Group;
use crate::error::{CausalError, OrReport};

/// Primary-key columns per replicated table of a group, for summaries.
fn primary_keys(group: &Group) -> Result<HashMap<String, Vec<String>>, CausalError> {
    let mut out = HashMap::new();
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT table_name, ARRAY(SELECT jsonb_array_elements_text(schema -> 'primaryKey')) \
             FROM causal.replicated_tables WHERE group_id = $1",
            None,
            &[group.id.clone().into()],
        )?;
        for r in rows {
            if let (Some(t), Some(k)) = (r.get::<String>(1)?, r.get::<Vec<String>>(2)?) {
                out.insert(t, k);
            }
        }
        Ok::<_, pgrx::spi::Error>(())
    })?;
    Ok(out)
}

/// Predecessor hashes in the order of a [`Position`] (the header's), as the frontier lists
/// them; a text that is not a hash (none should be) comes first.
fn in_position_order(mut prev: Vec<String>) -> Vec<String> {
    prev.sort_by_cached_key(|h| h.parse::<EntryHash>().ok());
    prev
}

fn parse_position(prev: &[String]) -> Result<Position, CausalError> {
    prev.iter().map(|h| h.parse::<EntryHash>().map_err(|e| CausalError::Corrupt(e.to_string()))).collect()
}

/// The group's entries, newest first: hash, predecessors, author key id, a short summary of
/// the operations, status (`ok` or `cancelled`) and the reason for a cancellation.
#[pg_extern]
#[allow(clippy::type_complexity)] // the row type pgrx spells out for SQL
fn log(
    grp: &str,
    max_entries: default!(i32, 100),
) -> TableIterator<
    'static,
    (
        name!(hash, String),
        name!(prev, Vec<String>),
        name!(author, Option<String>),
        name!(op, String),
        name!(status, String),
        name!(reason, Option<String>),
    ),
> {
    let f = "causal.log";
    // Every transaction committed before the call is in the log.
    crate::capture::seal_committed().or_report(f);
    let group = Group::find(grp).or_report(f);
    let keys = primary_keys(&group).or_report(f);
    let mut out = Vec::new();
    Spi::connect(|client| {
        let sql = format!(
            "SELECT {}, {}, {}, coalesce(j.status, 'ok'), j.reason FROM causal.dag_entries e \
             LEFT JOIN causal.journal j ON j.grp = e.grp AND j.node_id = e.node_id \
             WHERE e.grp = $1 ORDER BY e.node_id DESC LIMIT $2",
            entry_row::hash_sql("e"),
            entry_row::prev_hashes_sql(),
            entry_row::payload_sql()
        );
        let rows = client.select(&sql, None, &[group.num.into(), max_entries.max(0).into()])?;
        for r in rows {
            let payload = r.get::<String>(3)?.unwrap_or_default();
            let decoded = causal_core::json::parse(&payload).ok().and_then(|v| SignedPayload::from_owned(v).ok());
            let (author, op) = match decoded {
                Some(p) => (Some(p.author.to_b64()), p.summary(|t| keys.get(t).cloned().unwrap_or_default())),
                None => (None, "undecodable payload".to_string()),
            };
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                in_position_order(r.get::<Vec<String>>(2)?.unwrap_or_default()),
                author,
                op,
                r.get::<String>(4)?.unwrap_or_default(),
                r.get::<String>(5)?,
            ));
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .map_err(CausalError::from)
    .or_report(f);
    TableIterator::new(out)
}

/// One entry: its group, hash, header (payload hash and predecessor set), payload, author and
/// status. NULL if no group has an entry with that hash.
#[pg_extern(stable)]
fn entry(hash: &str) -> Option<JsonB> {
    let f = "causal.entry";
    let row = Spi::connect(|client| {
        let sql = format!(
            "SELECT g.group_id, {}, {}, coalesce(j.status, 'ok'), j.reason, g.hash_algorithm \
             FROM causal.dag_entries e JOIN causal.group_defs g USING (grp) \
             LEFT JOIN causal.journal j ON j.grp = e.grp AND j.node_id = e.node_id WHERE {}",
            entry_row::prev_hashes_sql(),
            entry_row::payload_sql(),
            entry_row::hash_equals_sql("e", "$1")
        );
        let mut rows = client.select(&sql, Some(1), &[hash.into()])?;
        match rows.next() {
            None => Ok::<_, pgrx::spi::Error>(None),
            Some(r) => Ok(Some((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<Vec<String>>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<String>(4)?.unwrap_or_default(),
                r.get::<String>(5)?,
                r.get::<String>(6)?.unwrap_or_default(),
            ))),
        }
    })
    .map_err(CausalError::from)
    .or_report(f)?;
    let (group, prev, payload, status, reason, alg) = row;
    let payload: Value = causal_core::json::parse(&payload).map_err(CausalError::from).or_report(f);
    let alg = causal_core::HashAlgorithm::parse(&alg).map_err(CausalError::from).or_report(f);
    let header = Entry::new(alg, payload.clone(), parse_position(&prev).or_report(f), Meta::new())
        .map_err(CausalError::from)
        .or_report(f)
        .header
        .to_literal();
    let author = SignedPayload::from_value(&payload).ok().map(|p| p.author.to_b64());
    Some(JsonB(json!({
        "group": group, "hash": hash, "header": header, "payload": payload,
        "author": author, "status": status, "reason": reason,
    })))
}

/// A stored entry that passed its own checks: its hash, author and predecessors, and whether
/// it carries its signature (else a later entry's must cover it).
struct CheckedEntry {
    hash: EntryHash,
    author: causal_core::identity::KeyId,
    prev: causal_core::Position,
    signed: bool,
}

/// Checks one stored entry on its own (all but whether a later signature covers an unsigned
/// one); the problem, if any.
fn check_entry(
    group: &Group,
    dag: &causal_core::Dag<crate::catalog::store::SpiStore>,
    hash: &str,
    prev: &[String],
    payload: &str,
) -> Result<CheckedEntry, String> {
    let prev = parse_position(prev).map_err(|e| format!("bad predecessor list: {e}"))?;
    let value = causal_core::json::parse(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let entry_hash = match Entry::new(group.algorithm, value.clone(), prev.clone(), Meta::new()) {
        Ok(e) if e.hash.to_b64() == hash => e.hash,
        Ok(e) => return Err(format!("hash mismatch: stored {hash}, content hashes to {}", e.hash)),
        Err(e) => return Err(format!("payload has no canonical form: {e}")),
    };
    let signed = SignedPayload::from_value(&value).map_err(|e| format!("payload is not a group payload: {e}"))?;
    let checked = CheckedEntry { hash: entry_hash, author: signed.author, prev, signed: signed.signature.is_some() };
    if let Some(genesis) = &signed.genesis {
        if hash != group.id {
            return Err("a second genesis entry".into());
        }
        signed.verify(&genesis.admin, None, &checked.prev).map_err(|e| e.to_string())?;
        return Ok(checked);
    }
    let group_id: GroupId = group.id.parse().map_err(|e| format!("group id: {e}"))?;
    let mut status = member_at(dag, &checked.prev, &signed.author).map_err(|e| e.to_string())?;
    if !status.live {
        // The index counts a removal the group cancelled; the view with verdicts does not.
        let view = crate::author::members::status_in_view(group, dag, &checked.prev, &signed.author)
            .map_err(|e| e.to_string())?;
        if view.live {
            status = view;
        }
    }
    match (status.live, status.public_key) {
        (true, Some(_)) if !checked.signed => Ok(checked),
        (true, Some(key)) => {
            signed.verify(&key, Some(&group_id), &checked.prev).map(|_| checked).map_err(|e| e.to_string())
        }
        _ => Err(format!("author {} is not a live member at the entry's position", signed.author)),
    }
}

/// Recomputes every hash and signature of the group's history, and checks that every placed
/// row's values are those its metadata and the history give. Returns false, with a WARNING
/// per problem, if anything fails.
#[pg_extern]
fn verify(grp: &str) -> bool {
    let f = "causal.verify";
    // Every transaction committed before the call is verified.
    crate::capture::seal_committed().or_report(f);
    let group = Group::find(grp).or_report(f);
    let dag = group.dag();
    let mut rows = Vec::new();
    Spi::connect(|client| {
        let sql = format!(
            "SELECT {}, {}, {} FROM causal.dag_entries e WHERE e.grp = $1 ORDER BY e.node_id",
            entry_row::hash_sql("e"),
            entry_row::prev_hashes_sql(),
            entry_row::payload_sql()
        );
        let table = client.select(&sql, None, &[group.num.into()])?;
        for r in table {
            rows.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<Vec<String>>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .map_err(CausalError::from)
    .or_report(f);
    let mut ok = true;
    // Rows come predecessors first: an unsigned entry waits here for a signature of its
    // author that covers it (`causal_core::signature_cover`).
    let mut covers = causal_core::signature_cover::CoverTracker::new();
    for (hash, prev, payload) in rows {
        let problem = match check_entry(&group, &dag, &hash, &prev, &payload) {
            Ok(c) if c.signed => {
                covers.vouch(&c.author, &c.prev);
                None
            }
            Ok(c) => covers.hold(c.hash, c.author, c.prev).err().map(|e| e.to_string()),
            Err(problem) => Some(problem),
        };
        if let Some(problem) = problem {
            pgrx::warning!("causal.verify: entry {hash} of group {grp}: {problem}");
            ok = false;
        }
    }
    for hash in covers.held() {
        pgrx::warning!(
            "causal.verify: entry {hash} of group {grp}: unsigned, and no later entry of its author covers it"
        );
        ok = false;
    }
    for problem in crate::replay::row_check::rows_not_derived(&group, ROW_PROBLEMS_SHOWN).or_report(f) {
        pgrx::warning!("causal.verify: group {grp}: {problem}");
        ok = false;
    }
    ok
}

/// How many rows whose values differ from their history `causal.verify` names, at most.
const ROW_PROBLEMS_SHOWN: usize = 100;

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn setup() {
        crate::testing::capture_slot();
        Spi::run(
            "SELECT causal.create_group('shop'); \
             CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2)); \
             SELECT causal.replicate('shop', 'products');",
        )
        .unwrap();
        crate::testing::local_commit(
            "shop",
            "INSERT INTO products VALUES ('A', 'Widget', 9.99), ('B', 'Gadget', 1)",
            r#"[{"op":"insert","table":"products","row":{"sku":"A","name":"Widget","price":"9.99"}},
                {"op":"insert","table":"products","row":{"sku":"B","name":"Gadget","price":"1.00"}}]"#,
        );
        crate::testing::local_commit(
            "shop",
            "INSERT INTO products VALUES ('C', 'x', 1)",
            r#"[{"op":"insert","table":"products","row":{"sku":"C","name":"x","price":"1.00"}}]"#,
        );
    }

    #[pg_test]
    fn log_lists_newest_first_with_summaries() {
        setup();
        let ops = Spi::get_one::<Vec<String>>("SELECT array_agg(op) FROM causal.log('shop')").unwrap().unwrap();
        assert_eq!(
            ops,
            vec![
                "insert products (sku=C)",
                "2 ops: insert products (sku=A); insert products (sku=B)",
                "schema products",
                "create group shop"
            ]
        );
        let n = Spi::get_one::<i64>("SELECT count(*) FROM causal.log('shop', 2)").unwrap().unwrap();
        assert_eq!(n, 2);
        let statuses =
            Spi::get_one::<Vec<String>>("SELECT array_agg(DISTINCT status) FROM causal.log('shop')").unwrap().unwrap();
        assert_eq!(statuses, vec!["ok"]);
    }

    #[pg_test]
    fn entry_shows_header_payload_and_author() {
        setup();
        let e = Spi::get_one::<pgrx::JsonB>("SELECT causal.entry((SELECT hash FROM causal.log('shop', 1)))")
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(e["payload"]["ops"][0]["row"]["sku"], "C");
        assert_eq!(e["author"], Spi::get_one::<String>("SELECT causal.node_id()").unwrap().unwrap().as_str());
        assert_eq!(e["header"]["prevEntryHashes"].as_object().unwrap().len(), 1);
        assert!(Spi::get_one::<pgrx::JsonB>("SELECT causal.entry('nope')").unwrap().is_none());
    }

    #[pg_test]
    fn verify_accepts_a_clean_history_and_flags_tampering() {
        setup();
        // One entry of 12 operations: the canonical form (which is hashed) orders arrays of 11
        // or more elements unlike the array itself, so what is stored must be the payload,
        // not the canonical text it was hashed from.
        let ops: Vec<String> = (1..=12)
            .map(|i| format!(r#"{{"op":"insert","table":"products","row":{{"sku":"m{i}","name":"many"}}}}"#))
            .collect();
        crate::testing::local_commit(
            "shop",
            "INSERT INTO products (sku, name) SELECT 'm' || i, 'many' FROM generate_series(1, 12) i",
            &format!("[{}]", ops.join(",")),
        );
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(true));
        Spi::run("UPDATE causal.dag_entries SET payload = replace(payload, 'Widget', 'Wodget') WHERE payload LIKE '%Widget%'").unwrap();
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(false));
    }

    #[pg_test]
    fn verify_flags_row_values_that_their_history_does_not_give() {
        setup();
        Spi::run("SELECT causal.catch_up()").unwrap();
        let placed = Spi::get_one::<i64>("SELECT count(*) FROM causal.placed_rows WHERE key = '[\"B\"]'").unwrap();
        assert_eq!(placed, Some(1), "the rows are placed");
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(true));
        // Placing kept the new rows in a set of fresh rows: as row_meta rows (which come
        // first), they can be tampered with one by one.
        Spi::run(
            "INSERT INTO causal.row_meta (grp, table_name, key, vals, meta) \
             SELECT grp, table_name, key, vals, meta FROM causal.placed_rows p \
             WHERE NOT EXISTS (SELECT FROM causal.row_meta m WHERE m.key = p.key)",
        )
        .unwrap();
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(true));
        // Row B said to be inserted by the entry that inserted C: that entry has no insert of B.
        Spi::run(
            "UPDATE causal.row_meta SET meta = (SELECT meta FROM causal.row_meta WHERE key = '[\"C\"]') \
             WHERE key = '[\"B\"]'",
        )
        .unwrap();
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(false));
        // Metadata that does not read is that row's problem, not an error of the whole check.
        Spi::run("UPDATE causal.row_meta SET meta = '{\"i\": 99999}' WHERE key = '[\"A\"]'").unwrap();
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(false));
    }
}
