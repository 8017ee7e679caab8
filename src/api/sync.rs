//! The SQL side of live sync: peers and groups to fetch (which the sync worker reads), the
//! node's libp2p addresses, the reads that serve peers' requests, the worker's status report,
//! and the notification that wakes the worker when a group changes. The worker itself is in
//! `sync-worker/` (crate `causal-sync`); it reaches the database only through these functions
//! and `causal.import`, like any client.

use pgrx::prelude::*;
use serde_json::Value;

use causal_core::dag::{ChainId, Seq};
use causal_core::identity::PublicKey;
use causal_core::{EntryHash, GroupId};

use crate::catalog::entry_row;
use crate::catalog::group::Group;
use crate::error::{CausalError, OrReport};
use crate::pg::spi::get_opt;

fn node_public_key() -> Result<PublicKey, CausalError> {
    let text = get_opt::<String>("SELECT public_key FROM causal.identity_keys WHERE is_node", &[])?
        .ok_or_else(|| CausalError::Corrupt("the node identity is missing".into()))?;
    PublicKey::from_b64(&text).map_err(CausalError::BadPublicKey)
}

/// This node's libp2p peer id, derived from its node identity (the sync worker's identity).
#[pg_extern(stable)]
fn node_peer_id() -> String {
    node_public_key().or_report("causal.node_peer_id").libp2p_peer_id()
}

/// The multiaddrs (ending in `/p2p/<peer id>`) this node's sync worker listens on, to hand to
/// other nodes for `causal.add_peer`. While a worker runs, what it reported; otherwise the
/// configured `causal.listen_addresses`.
#[pg_extern(stable)]
fn node_addresses() -> Vec<String> {
    let f = "causal.node_addresses";
    let reported = get_opt::<Vec<String>>(
        "SELECT addresses FROM causal.sync_worker WHERE reported_at > now() - interval '30 seconds'",
        &[],
    )
    .or_report(f);
    if let Some(a) = reported.filter(|a| !a.is_empty()) {
        return a;
    }
    let peer = node_public_key().or_report(f).libp2p_peer_id();
    crate::guc::listen_addresses().into_iter().map(|a| format!("{}/p2p/{peer}", a.trim_end_matches('/'))).collect()
}

/// Checks a peer address: a multiaddr that ends in `/p2p/<peer id>`. Returns the peer id.
pub fn peer_of_address(address: &str) -> Result<String, CausalError> {
    let bad =
        |why: &str| CausalError::BadAddress { address: address.chars().take(200).collect(), why: why.to_string() };
    if !address.starts_with('/') {
        return Err(bad("a multiaddr starts with /"));
    }
    let Some((_, peer)) = address.rsplit_once("/p2p/") else {
        return Err(bad("it does not end in /p2p/<peer id>"));
    };
    if peer.is_empty() || peer.contains('/') {
        return Err(bad("it does not end in /p2p/<peer id>"));
    }
    match bs58::decode(peer).into_vec() {
        Ok(bytes) if bytes.len() >= 2 && bytes.len() <= 128 => Ok(peer.to_string()),
        _ => Err(bad("the peer id is not base58")),
    }
}

/// Adds a peer for the sync worker to dial and keep connected; takes effect at once. The
/// address is a multiaddr with `/p2p/<peer id>`, as `causal.node_addresses()` gives on that
/// node. Returns false if it was already there.
#[pg_extern]
fn add_peer(address: &str) -> bool {
    let f = "causal.add_peer";
    let peer = peer_of_address(address).or_report(f);
    if peer == node_public_key().or_report(f).libp2p_peer_id() {
        CausalError::BadAddress { address: address.to_string(), why: "it is this node's own address".into() }.report(f);
    }
    let added = get_opt::<bool>(
        "INSERT INTO causal.peer_addresses (address, peer_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
        &[address.into(), peer.into()],
    )
    .or_report(f)
    .unwrap_or(false);
    crate::pg::notify::notify("peers").or_report(f);
    added
}

/// Forgets a peer added with `causal.add_peer`; the worker disconnects it. Returns false if
/// there was no such peer.
#[pg_extern]
fn remove_peer(address: &str) -> bool {
    let f = "causal.remove_peer";
    let removed =
        get_opt::<bool>("DELETE FROM causal.peer_addresses WHERE address = $1 RETURNING true", &[address.into()])
            .or_report(f)
            .unwrap_or(false);
    crate::pg::notify::notify("peers").or_report(f);
    removed
}

/// Asks the sync worker to fetch a group this database does not have yet (its genesis, its
/// members, its tables and its history) from the connected peers. Progress shows in
/// `causal.sync_status`. Returns the group id.
#[pg_extern]
fn join_group(group_id: &str) -> String {
    let f = "causal.join_group";
    if group_id.parse::<GroupId>().is_err() {
        CausalError::BadGroupId(group_id.chars().take(80).collect()).report(f);
    }
    if Group::find(group_id).is_ok() {
        pgrx::notice!("group {group_id} is already here; the sync worker keeps it up to date");
        return group_id.to_string();
    }
    Spi::run_with_args(
        "INSERT INTO causal.wanted_groups (group_id) VALUES ($1) ON CONFLICT DO NOTHING",
        &[group_id.into()],
    )
    .map_err(CausalError::from)
    .or_report(f);
    crate::pg::notify::notify("join").or_report(f);
    group_id.to_string()
}

/// What is stored of one entry: its header (predecessors and payload hash) and, when asked
/// for, its payload text (as stored, as hashed).
struct StoredEntry {
    prev: Vec<String>,
    payload_hash: String,
    payload: Option<String>,
}

/// Rows `(hash, prev, payload_hash, payload)` read as stored entries by hash.
fn stored_entries(
    rows: pgrx::spi::SpiTupleTable<'_>,
) -> Result<std::collections::HashMap<String, StoredEntry>, pgrx::spi::Error> {
    let mut out = std::collections::HashMap::new();
    for r in rows {
        let (hash, prev, payload_hash) = (r.get::<String>(1)?, r.get::<Vec<String>>(2)?, r.get::<String>(3)?);
        if let (Some(hash), Some(payload_hash)) = (hash, payload_hash) {
            let payload = r.get::<String>(4)?;
            out.insert(hash, StoredEntry { prev: prev.unwrap_or_default(), payload_hash, payload });
        }
    }
    Ok(out)
}

/// The stored entries of `group` among `hashes`, in one query, with their payloads when
/// `with_payloads`.
fn entries_by_hash(
    group_id: &str,
    hashes: &[String],
    with_payloads: bool,
) -> Result<std::collections::HashMap<String, StoredEntry>, CausalError> {
    // One index lookup per hash: `hash = ANY($2)` under a generic plan made on stale
    // statistics scanned the whole group instead. `OFFSET 0` keeps the LATERAL subquery a
    // per-row probe; without it the subquery is pulled up into a join, which such a plan can
    // run as a scan too.
    let sql = format!(
        "SELECT {}, {}, {}, CASE WHEN $3 THEN {} END \
         FROM (SELECT grp FROM causal.group_defs WHERE group_id = $1) g CROSS JOIN unnest($2::text[]) AS h(b64) \
         CROSS JOIN LATERAL (SELECT * FROM causal.dag_entries d WHERE d.grp = g.grp AND {} OFFSET 0) e",
        entry_row::hash_sql("e"),
        entry_row::prev_hashes_sql(),
        entry_row::payload_hash_sql(),
        entry_row::payload_sql(),
        entry_row::hash_equals_sql("d", "h.b64")
    );
    let rows = crate::pg::spi::run_prepared(
        &sql,
        &[group_id.into(), hashes.to_vec().into(), with_payloads.into()],
        false,
        stored_entries,
    )?;
    Ok(rows)
}

/// Runs of consecutive places on one chain, as `(chains, from, to)` columns: a walk's places,
/// read as ranges. Places further apart than [`RUN_GAP`] start a new run, so a walk that
/// took a few entries far down a chain does not read everything in between.
fn chain_runs(positions: &[(ChainId, Seq)]) -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    let mut sorted = positions.to_vec();
    sorted.sort_unstable();
    let mut runs: Vec<(ChainId, Seq, Seq)> = Vec::new();
    for (chain, seq) in sorted {
        match runs.last_mut() {
            Some((c, _, to)) if *c == chain && seq <= to.saturating_add(RUN_GAP) => *to = seq,
            _ => runs.push((chain, seq, seq)),
        }
    }
    let n = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    (
        runs.iter().map(|r| n(r.0)).collect(),
        runs.iter().map(|r| n(r.1)).collect(),
        runs.iter().map(|r| n(r.2)).collect(),
    )
}

/// See [`chain_runs`].
const RUN_GAP: Seq = 32;

/// The stored entries of `group` at `positions` (a walk's), read by chain ranges rather than
/// one index probe per hash; the rows in a range that are not in the walk are dropped later.
fn entries_by_position(
    group: &Group,
    positions: &[(ChainId, Seq)],
    with_payloads: bool,
) -> Result<std::collections::HashMap<String, StoredEntry>, CausalError> {
    let (chains, from, to) = chain_runs(positions);
    // `OFFSET 0` keeps each range a probe of the (grp, chain, seq) index (see above).
    let sql = format!(
        "SELECT {}, {}, {}, CASE WHEN $5 THEN {} END \
         FROM unnest($2::int[], $3::int[], $4::int[]) AS r(chain, lo, hi) \
         CROSS JOIN LATERAL (SELECT * FROM causal.dag_entries \
         WHERE grp = $1 AND chain = r.chain AND seq BETWEEN r.lo AND r.hi OFFSET 0) e",
        entry_row::hash_sql("e"),
        entry_row::prev_hashes_sql(),
        entry_row::payload_hash_sql(),
        entry_row::payload_sql()
    );
    let rows = crate::pg::spi::run_prepared(
        &sql,
        &[group.num.into(), chains.into(), from.into(), to.into(), with_payloads.into()],
        false,
        stored_entries,
    )?;
    Ok(rows)
}

fn hashes(list: &[String]) -> Vec<EntryHash> {
    list.iter().filter_map(|h| h.parse().ok()).collect()
}

/// Serves a peer's header request (sync protocol): the headers of the entries reachable from
/// `start` that are not in the history of `limits`, at most `max`, breadth first from
/// `start` (the spec's walk) or, when `forward`, oldest first (pg_causal's extension: each
/// answer can be imported at once); then a row saying whether the walk was complete; then,
/// when `with_payloads` and the walk was complete or `forward`, the payloads, predecessors
/// first. Rows are `(kind, hash, body)` with kind `header`, `complete` or `payload`; bodies
/// are JSON text.
#[pg_extern(stable)]
fn _sync_headers(
    grp: &str,
    start: Vec<String>,
    limits: Vec<String>,
    max: i32,
    with_payloads: bool,
    forward: default!(bool, false),
) -> TableIterator<'static, (name!(kind, String), name!(hash, Option<String>), name!(body, String))> {
    let f = "causal._sync_headers";
    let group = Group::find(grp).or_report(f);
    let dag = group.dag();
    let max = usize::try_from(max).unwrap_or(0);
    let walk = if forward {
        dag.walk_forward(&hashes(&start), &hashes(&limits), max)
    } else {
        dag.walk_back(&hashes(&start), &hashes(&limits), max)
    };
    let walk = walk.map_err(CausalError::from).or_report(f);
    // One read for every entry the walk found (headers as stored; payloads only when they
    // go with the answer), then headers in walk order.
    let texts: Vec<String> = walk.hashes.iter().map(EntryHash::to_b64).collect();
    let send_payloads = with_payloads && (walk.complete || forward);
    let mut found = entries_by_position(&group, &walk.positions, send_payloads).or_report(f);
    let mut rows = Vec::with_capacity(walk.hashes.len() * 2 + 1);
    let mut payloads = Vec::with_capacity(walk.hashes.len());
    for h in &texts {
        let Some(e) = found.remove(h) else { continue };
        let prev_set: serde_json::Map<String, Value> =
            e.prev.into_iter().map(|p| (p, Value::String(String::new()))).collect();
        let header = serde_json::json!({"payloadHash": e.payload_hash, "prevEntryHashes": prev_set});
        rows.push(("header".to_string(), Some(h.clone()), header.to_string()));
        if let Some(p) = e.payload {
            payloads.push((h.clone(), p));
        }
    }
    rows.push(("complete".to_string(), None, walk.complete.to_string()));
    // A backward walk found the deepest entries last; a forward one, first.
    if !forward {
        payloads.reverse();
    }
    for (h, p) in payloads {
        rows.push(("payload".to_string(), Some(h), p));
    }
    TableIterator::new(rows)
}

/// The hashes among `hashes_asked` that the group's DAG holds (the sync worker asks before it
/// walks back from hashes a peer announced).
#[pg_extern(stable)]
fn _sync_stored(grp: &str, hashes_asked: Vec<String>) -> Vec<String> {
    let f = "causal._sync_stored";
    let group = Group::find(grp).or_report(f);
    let found = entries_by_hash(&group.id, &hashes_asked, false).or_report(f);
    hashes_asked.into_iter().filter(|h| found.contains_key(h)).collect()
}

/// Serves a peer's payload request: the payloads (JSON text) of the entries found.
#[pg_extern(stable)]
fn _sync_payloads(
    grp: &str,
    hashes_wanted: Vec<String>,
) -> TableIterator<'static, (name!(hash, String), name!(payload, String))> {
    let f = "causal._sync_payloads";
    let group = Group::find(grp).or_report(f);
    let found = entries_by_hash(&group.id, &hashes_wanted, true).or_report(f);
    let rows: Vec<(String, String)> = hashes_wanted
        .iter()
        .filter_map(|h| found.get(h).and_then(|e| e.payload.clone()).map(|p| (h.clone(), p)))
        .collect();
    TableIterator::new(rows)
}

/// The sync worker's report: `{pid, peer_id, addresses, started_at, peers: [...], groups:
/// [...]}`; replaces what the views show.
#[pg_extern]
fn _sync_report(report: pgrx::JsonB) {
    let f = "causal._sync_report";
    let r = report.0;
    let text = |v: &Value| v.as_str().map(str::to_string);
    let run = |sql: &str, args: &[pgrx::datum::DatumWithOid]| {
        Spi::run_with_args(sql, args).map_err(CausalError::from).or_report(f)
    };
    run(
        "INSERT INTO causal.sync_worker (pid, peer_id, addresses, started_at, reported_at, queues, \
         notifications_dropped, resyncs) \
         VALUES ($1, $2, $3, to_timestamp($4::double precision / 1000), now(), $5, $6, $7) ON CONFLICT (id) DO UPDATE SET pid = EXCLUDED.pid, \
         peer_id = EXCLUDED.peer_id, addresses = EXCLUDED.addresses, started_at = EXCLUDED.started_at, reported_at = now(), \
         queues = EXCLUDED.queues, notifications_dropped = EXCLUDED.notifications_dropped, resyncs = EXCLUDED.resyncs",
        &[
            (r["pid"].as_i64().unwrap_or(0) as i32).into(),
            text(&r["peer_id"]).unwrap_or_default().into(),
            r["addresses"].as_array().into_iter().flatten().filter_map(text).collect::<Vec<_>>().into(),
            r["started_at_ms"].as_f64().unwrap_or(0.0).into(),
            pgrx::JsonB(if r["queues"].is_object() { r["queues"].clone() } else { Value::Object(Default::default()) }).into(),
            r["notifications_dropped"].as_i64().unwrap_or(0).into(),
            r["resyncs"].as_i64().unwrap_or(0).into(),
        ],
    );
    run("DELETE FROM causal.sync_peer_state", &[]);
    run(
        "INSERT INTO causal.sync_peer_state (peer_id, address, connected, last_seen, entries_received, entries_rejected, \
         banned_until, score, bytes_in, bytes_out, entries_sent, last_offence, last_offence_at, last_error, last_error_at) \
         SELECT p->>'peer_id', p->>'address', (p->>'connected')::boolean, \
         to_timestamp((p->>'last_seen_ms')::double precision / 1000), (p->>'entries_received')::bigint, \
         (p->>'entries_rejected')::bigint, to_timestamp((p->>'banned_until_ms')::double precision / 1000), \
         (p->>'score')::int, coalesce((p->>'bytes_in')::bigint, 0), coalesce((p->>'bytes_out')::bigint, 0), \
         coalesce((p->>'entries_sent')::bigint, 0), p->>'last_offence', \
         to_timestamp((p->>'last_offence_ms')::double precision / 1000), p->>'last_error', \
         to_timestamp((p->>'last_error_ms')::double precision / 1000) FROM jsonb_array_elements($1) p",
        &[pgrx::JsonB(r["peers"].clone()).into()],
    );
    run("DELETE FROM causal.sync_group_state", &[]);
    run(
        "INSERT INTO causal.sync_group_state (group_id, present, to_fetch, imported, last_progress, peers) \
         SELECT g->>'group', (g->>'present')::boolean, (g->>'to_fetch')::bigint, (g->>'imported')::bigint, \
         to_timestamp(nullif((g->>'last_progress_ms')::double precision, 0) / 1000), (g->>'peers')::int \
         FROM jsonb_array_elements($1) g",
        &[pgrx::JsonB(r["groups"].clone()).into()],
    );
}

extension_sql!(
    r#"
-- One row per group (and per group being joined): its frontier, the worker's state, and the
-- sync progress the worker last reported.
CREATE VIEW causal.sync_status AS
WITH worker AS (
    SELECT CASE
             WHEN w.reported_at > now() - interval '10 seconds' THEN 'running (pid ' || w.pid || ')'
             WHEN current_setting('shared_preload_libraries') ~ 'pg_causal' THEN 'not running (starting, stopped, or restarting)'
             ELSE 'no worker runs: pg_causal is not in shared_preload_libraries (the causal-sync binary can serve instead)'
           END AS worker
    FROM (SELECT 1) x LEFT JOIN causal.sync_worker w ON true
), groups AS (
    SELECT g.name AS group_name, g.group_id FROM causal.group_defs g
    UNION ALL
    SELECT NULL, w.group_id FROM causal.wanted_groups w
    WHERE NOT EXISTS (SELECT 1 FROM causal.group_defs g WHERE g.group_id = w.group_id)
)
SELECT gr.group_name,
       gr.group_id,
       CASE WHEN gr.group_name IS NULL THEN '{}'::text[] ELSE causal.frontier(gr.group_id) END AS frontier,
       (SELECT worker FROM worker) AS worker,
       coalesce(s.peers, 0) AS peers_with_group,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('peer_id', p.peer_id, 'connected', p.connected,
               'entries_received', p.entries_received, 'entries_rejected', p.entries_rejected,
               'banned', coalesce(p.banned_until > now(), false)) ORDER BY p.peer_id), '[]')
        FROM causal.sync_peer_state p) AS peer_states,
       coalesce(s.to_fetch, 0) AS entries_to_fetch,
       coalesce(s.imported, 0) AS entries_imported,
       s.last_progress
FROM groups gr LEFT JOIN causal.sync_group_state s ON s.group_id = gr.group_id;
GRANT SELECT ON causal.sync_status TO PUBLIC;
"#,
    name = "sync_status_view",
    requires = ["groups_view"]
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn peers_are_added_checked_and_removed() {
        let me = Spi::get_one::<String>("SELECT causal.node_peer_id()").unwrap().unwrap();
        assert!(me.starts_with("12D3KooW"), "{me}");
        let addr = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        assert_eq!(Spi::get_one_with_args::<bool>("SELECT causal.add_peer($1)", &[addr.into()]).unwrap(), Some(true));
        assert_eq!(Spi::get_one_with_args::<bool>("SELECT causal.add_peer($1)", &[addr.into()]).unwrap(), Some(false));
        let n = Spi::get_one::<i64>("SELECT count(*) FROM causal.peers WHERE NOT connected").unwrap();
        assert_eq!(n, Some(1));
        assert_eq!(
            Spi::get_one_with_args::<bool>("SELECT causal.remove_peer($1)", &[addr.into()]).unwrap(),
            Some(true)
        );
        assert_eq!(
            Spi::get_one_with_args::<bool>("SELECT causal.remove_peer($1)", &[addr.into()]).unwrap(),
            Some(false)
        );
    }

    #[pg_test(error = "invalid peer address \"/ip4/127.0.0.1/tcp/4001\": it does not end in /p2p/<peer id>")]
    fn an_address_without_a_peer_id_is_refused() {
        Spi::run("SELECT causal.add_peer('/ip4/127.0.0.1/tcp/4001')").unwrap();
    }

    /// The worker's report reaches the pg_stat-style views: queue depths by label, traffic,
    /// entries both ways, the last offence, the ban and the last error.
    #[pg_test]
    fn the_workers_report_shows_in_stat_worker_and_stat_peers() {
        Spi::run(
            r#"SELECT causal._sync_report('{"pid": 42, "peer_id": "12D3KooWme", "addresses": ["/ip4/127.0.0.1/tcp/1"],
                "started_at_ms": 1700000000000,
                "queues": {"inbound_frames": 3, "database_imports": 1}, "notifications_dropped": 2, "resyncs": 1,
                "peers": [{"peer_id": "12D3KooWpeer", "address": null, "connected": false, "last_seen_ms": 1700000000000,
                           "entries_received": 10, "entries_rejected": 1, "entries_sent": 7, "banned_until_ms": 4102444800000,
                           "score": 100, "bytes_in": 2048, "bytes_out": 512, "last_offence": "invalid entry",
                           "last_offence_ms": 1700000001000,
                           "last_error": "the peer runs pg_causal 0.1.0", "last_error_ms": 1700000002000}],
                "groups": []}'::jsonb)"#,
        )
        .unwrap();
        let worker = Spi::get_one::<String>(
            "SELECT pid || ' ' || running || ' ' || (queues->>'inbound_frames') || ' ' || notifications_dropped \
             || ' ' || (uptime > interval '0') FROM causal.stat_worker",
        )
        .unwrap();
        assert_eq!(worker.as_deref(), Some("42 true 3 2 true"));
        let peer = Spi::get_one::<String>(
            "SELECT concat_ws(' ', bytes_in, bytes_out, entries_in, entries_out, entries_rejected, last_offence, banned, \
             last_error_at > last_offence_at, last_error) FROM causal.stat_peers WHERE peer_id = '12D3KooWpeer'",
        )
        .unwrap();
        assert_eq!(peer.as_deref(), Some("2048 512 10 7 1 invalid entry t t the peer runs pg_causal 0.1.0"));
    }

    #[pg_test]
    fn without_a_worker_the_status_says_so() {
        Spi::run("SELECT causal.create_group('g')").unwrap();
        let w =
            Spi::get_one::<String>("SELECT worker FROM causal.sync_status WHERE group_name = 'g'").unwrap().unwrap();
        assert!(w.starts_with("no worker runs"), "{w}");
    }

    #[pg_test]
    fn headers_and_payloads_are_served_for_a_walk() {
        let g = Spi::get_one::<String>("SELECT causal.create_group('g')").unwrap().unwrap();
        let rows = Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM causal._sync_headers($1, causal.frontier($1), '{}', 10, true)",
            &[g.clone().into()],
        )
        .unwrap();
        // One header, the completeness row, one payload.
        assert_eq!(rows, Some(3));
        let none = Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM causal._sync_headers($1, causal.frontier($1), causal.frontier($1), 10, true) WHERE kind <> 'complete'",
            &[g.into()],
        )
        .unwrap();
        assert_eq!(none, Some(0));
    }

    /// Every header served hashes to its entry's hash, a truncated walk says so, and the walk's
    /// places are read back as runs of each chain.
    #[pg_test]
    fn served_headers_hash_to_their_entries() {
        use causal_core::entry::Header;
        use causal_core::HashAlgorithm;
        let g = Spi::get_one::<String>("SELECT causal.create_group('g')").unwrap().unwrap();
        for i in 0..5 {
            Spi::run(&format!("SELECT causal.create_identity('m{i}')")).unwrap();
            Spi::run(&format!(
                "SELECT causal.add_member('g', (SELECT public_key FROM causal.identities WHERE name = 'm{i}'))"
            ))
            .unwrap();
        }
        let entries = Spi::get_one::<i64>("SELECT count(*) FROM causal.dag_entries").unwrap().unwrap();
        assert_eq!(entries, 6);
        let served = |max: i32| -> Vec<(String, Option<String>, String)> {
            Spi::connect(|c| {
                c.select(
                    "SELECT kind, hash, body FROM causal._sync_headers($1, causal.frontier($1), '{}', $2, false)",
                    None,
                    &[g.clone().into(), max.into()],
                )
                .unwrap()
                .map(|r| {
                    (
                        r.get::<String>(1).unwrap().unwrap(),
                        r.get::<String>(2).unwrap(),
                        r.get::<String>(3).unwrap().unwrap(),
                    )
                })
                .collect()
            })
        };
        let rows = served(100);
        let headers: Vec<_> = rows.iter().filter(|r| r.0 == "header").collect();
        assert_eq!(headers.len(), 6);
        for (_, hash, body) in &headers {
            let header = Header::from_literal(&serde_json::from_str(body).unwrap()).unwrap();
            assert_eq!(Some(header.entry_hash(HashAlgorithm::Blake3).to_b64()), *hash);
        }
        assert_eq!(rows.last().map(|r| (r.0.as_str(), r.2.as_str())), Some(("complete", "true")));
        let rows = served(2);
        assert_eq!(rows.iter().filter(|r| r.0 == "header").count(), 2);
        assert_eq!(rows.last().map(|r| (r.0.as_str(), r.2.as_str())), Some(("complete", "false")));
    }

    #[test]
    fn a_walks_places_are_read_as_runs() {
        let (chains, from, to) = super::chain_runs(&[(0, 5), (0, 3), (1, 2), (0, 4), (0, 90), (1, 1)]);
        assert_eq!((chains, from, to), (vec![0, 0, 1], vec![3, 90, 1], vec![5, 90, 2]));
    }

    #[pg_test]
    fn joining_a_group_records_the_wish() {
        let id = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        Spi::run(&format!("SELECT causal.join_group('{id}')")).unwrap();
        let n = Spi::get_one::<i64>("SELECT count(*) FROM causal.sync_status WHERE group_name IS NULL").unwrap();
        assert_eq!(n, Some(1));
    }
}
