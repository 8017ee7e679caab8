//! Capture on a real cluster: one signed entry per committed transaction, none for a rollback,
//! entries in commit order, COPY and multi-row statements.

use causal_core::entry::Position;
use causal_core::identity::PublicKey;
use causal_core::payload::SignedPayload;
use causal_core::{Entry, GroupId, HashAlgorithm};
use causal_integration::postgres::Client;
use causal_integration::{node_identity, sqlstate, wait_until, Cluster, ENTRY_PREV};

fn setup(db: &mut Client) {
    db.batch_execute(
        "CREATE EXTENSION pg_causal;
         SELECT causal.create_group('shop');
         CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2) CHECK (price >= 0));
         SELECT causal.replicate('shop', 'products');",
    )
    .unwrap();
}

fn count(db: &mut Client) -> i64 {
    db.batch_execute("SELECT causal.catch_up()").unwrap();
    db.query_one("SELECT count(*) FROM causal.dag_entries", &[]).unwrap().get(0)
}

/// (hash, prev, payload) of the newest entry.
fn newest(db: &mut Client) -> (String, Vec<String>, serde_json::Value) {
    db.batch_execute("SELECT causal.catch_up()").unwrap();
    let row = db
        .query_one(
            &format!("SELECT e.hash, {ENTRY_PREV}, e.payload FROM causal.entries e ORDER BY e.node_id DESC LIMIT 1"),
            &[],
        )
        .unwrap();
    let payload: String = row.get(2);
    (row.get(0), row.get(1), causal_core::json::parse(&payload).unwrap())
}

#[test]
fn one_signed_entry_per_committed_transaction() {
    let node = Cluster::start("capture", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    let base = count(&mut db);

    db.batch_execute("INSERT INTO products VALUES ('A', 'Widget', 9.99)").unwrap();
    assert_eq!(count(&mut db), base + 1);

    db.batch_execute("BEGIN; INSERT INTO products VALUES ('B', 'b', 1), ('C', 'c', 2); UPDATE products SET price = 3 WHERE sku = 'B'; COMMIT;")
        .unwrap();
    assert_eq!(count(&mut db), base + 2);
    let (_, _, payload) = newest(&mut db);
    assert_eq!(payload["ops"].as_array().unwrap().len(), 3);

    db.batch_execute("BEGIN; INSERT INTO products VALUES ('D', 'd', 1); ROLLBACK;").unwrap();
    assert_eq!(count(&mut db), base + 2);

    // A failing statement aborts the transaction: no entry, and the table is unchanged.
    assert!(db
        .batch_execute(
            "BEGIN; INSERT INTO products VALUES ('E', 'e', 1); INSERT INTO products VALUES ('F', 'f', -1); COMMIT;"
        )
        .is_err());
    db.batch_execute("ROLLBACK").unwrap();
    assert_eq!(count(&mut db), base + 2);

    // COPY and INSERT ... SELECT are one entry each.
    let mut w = db.copy_in("COPY products (sku, name, price) FROM STDIN").unwrap();
    use std::io::Write;
    for i in 0..100 {
        writeln!(w, "copy{i}\tcopied\t{i}.50").unwrap();
    }
    w.finish().unwrap();
    assert_eq!(count(&mut db), base + 3);
    assert_eq!(newest(&mut db).2["ops"].as_array().unwrap().len(), 100);
    db.batch_execute("INSERT INTO products SELECT 'bulk' || g, 'bulk', g FROM generate_series(1, 1000) g").unwrap();
    assert_eq!(count(&mut db), base + 4);
    assert_eq!(newest(&mut db).2["ops"].as_array().unwrap().len(), 1000);

    // Every entry is a chain on the last: prev is the frontier at commit, and it verifies.
    let group_id: String = db.query_one("SELECT group_id FROM causal.group_defs", &[]).unwrap().get(0);
    let group: GroupId = group_id.parse().unwrap();
    let (pk, _) = node_identity(&mut db);
    let pk = PublicKey::from_b64(&pk).unwrap();
    let rows = db
        .query(&format!("SELECT e.hash, {ENTRY_PREV}, e.payload FROM causal.entries e ORDER BY e.node_id"), &[])
        .unwrap();
    for pair in rows.windows(2) {
        let prev: Vec<String> = pair[1].get(1);
        assert_eq!(prev, vec![pair[0].get::<_, String>(0)]);
    }
    for row in rows.iter().skip(1) {
        let prev: Position = row.get::<_, Vec<String>>(1).iter().map(|h| h.parse().unwrap()).collect();
        let payload = causal_core::json::parse(&row.get::<_, String>(2)).unwrap();
        let entry = Entry::new(HashAlgorithm::Blake3, payload.clone(), prev.clone(), Default::default()).unwrap();
        assert_eq!(entry.hash.to_b64(), row.get::<_, String>(0));
        SignedPayload::from_value(&payload).unwrap().verify(&pk, Some(&group), &prev).unwrap();
    }
}

#[test]
fn concurrent_transactions_get_entries_in_commit_order() {
    let node = Cluster::start("capture-order", &[]);
    let mut a = node.connect("postgres");
    setup(&mut a);
    let mut b = node.connect("postgres");
    a.batch_execute("BEGIN; INSERT INTO products VALUES ('a', 'a', 1);").unwrap();
    b.batch_execute("BEGIN; INSERT INTO products VALUES ('b', 'b', 1);").unwrap();
    b.batch_execute("COMMIT").unwrap();
    a.batch_execute("COMMIT").unwrap();
    a.batch_execute("SELECT causal.catch_up()").unwrap();
    let rows = a
        .query(
            &format!("SELECT e.hash, {ENTRY_PREV}, e.payload FROM causal.entries e ORDER BY e.node_id DESC LIMIT 2"),
            &[],
        )
        .unwrap();
    let (last, before) = (&rows[0], &rows[1]);
    let last_payload = causal_core::json::parse(&last.get::<_, String>(2)).unwrap();
    let before_payload = causal_core::json::parse(&before.get::<_, String>(2)).unwrap();
    assert_eq!(before_payload["ops"][0]["row"]["sku"], "b");
    assert_eq!(last_payload["ops"][0]["row"]["sku"], "a");
    assert_eq!(last.get::<_, Vec<String>>(1), vec![before.get::<_, String>(0)]);
    let tips: i64 = a.query_one("SELECT cardinality(causal.frontier('shop'))::bigint", &[]).unwrap().get(0);
    assert_eq!(tips, 1);
}

/// A session caches what capture knows of a table (its group, schema and rules) across
/// transactions; a rule, a new column, or unreplicate in another session must reach it.
#[test]
fn another_sessions_schema_and_rule_changes_reach_a_warm_session() {
    let node = Cluster::start("capture-cache", &[]);
    let mut a = node.connect("postgres");
    setup(&mut a);
    let mut b = node.connect("postgres");
    // Session b captures a write: its cache now holds the table.
    b.batch_execute("INSERT INTO products VALUES ('a', 'a', 1)").unwrap();

    // A rule declared in session a is enforced in b's next transaction.
    a.batch_execute("SELECT causal.allow('products', 'insert', $$new.price < 100$$)").unwrap();
    let err = b.batch_execute("INSERT INTO products VALUES ('b', 'b', 500)").unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err:?}");
    b.batch_execute("INSERT INTO products VALUES ('b', 'b', 5)").unwrap();

    // A column added in session a is captured by b.
    a.batch_execute("ALTER TABLE products ADD COLUMN note text").unwrap();
    b.batch_execute("INSERT INTO products VALUES ('c', 'c', 1, 'hello')").unwrap();
    let (_, _, payload) = newest(&mut a);
    assert_eq!(payload["ops"][0]["row"]["note"], "hello");

    // Unreplicated in session a, the table is no longer captured by b.
    let before = count(&mut a);
    a.batch_execute("SELECT causal.unreplicate('products')").unwrap();
    let after_unreplicate = count(&mut a);
    assert_eq!(after_unreplicate, before + 1);
    b.batch_execute("INSERT INTO products VALUES ('d', 'd', 1, NULL)").unwrap();
    assert_eq!(count(&mut a), after_unreplicate);
}

#[test]
fn ungranted_roles_cannot_write_replicated_tables() {
    let node = Cluster::start("capture-roles", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    db.batch_execute(
        "CREATE ROLE app LOGIN; GRANT USAGE ON SCHEMA causal TO app; GRANT ALL ON products TO app;
         SELECT causal.create_identity('app_id');",
    )
    .unwrap();
    let before = count(&mut db);
    let mut app = node.connect_as("app", "postgres");
    let err = app.batch_execute("INSERT INTO products VALUES ('x', 'x', 1)").unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err:?}");
    // Granted, and made a member of the group, the role writes; the entry is signed by app_id.
    db.batch_execute("SELECT causal.grant_identity('app_id', 'app')").unwrap();
    let pk: String =
        db.query_one("SELECT public_key FROM causal.identities WHERE name = 'app_id'", &[]).unwrap().get(0);
    db.execute("SELECT causal.add_member('shop', $1)", &[&pk]).unwrap();
    app.batch_execute("SET causal.author = 'app_id'; INSERT INTO products VALUES ('x', 'x', 1)").unwrap();
    assert_eq!(count(&mut db), before + 2);
    let key_id: String =
        db.query_one("SELECT key_id FROM causal.identities WHERE name = 'app_id'", &[]).unwrap().get(0);
    assert_eq!(newest(&mut db).2["author"], key_id.as_str());
}

/// A local commit wakes the sync worker: `NOTIFY causal_sync, 'group:<id>'` reaches a
/// listening session once the transaction commits, and not for a rollback.
#[test]
fn sealing_a_commit_notifies_listeners_of_its_group() {
    let node = Cluster::start("capture-notify", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    let group: String = db.query_one("SELECT group_id FROM causal.groups WHERE name = 'shop'", &[]).unwrap().get(0);
    let mut listener = node.connect("postgres");
    listener.batch_execute("LISTEN causal_sync").unwrap();
    let received = |listener: &mut Client| -> Vec<(String, String)> {
        use causal_integration::postgres::fallible_iterator::FallibleIterator;
        let mut n = listener.notifications();
        let mut out = Vec::new();
        let mut it = n.timeout_iter(std::time::Duration::from_millis(500));
        while let Ok(Some(m)) = it.next() {
            out.push((m.channel().to_string(), m.payload().to_string()));
        }
        out
    };
    db.batch_execute("BEGIN; INSERT INTO products VALUES ('R', 'Rolled back', 1); ROLLBACK").unwrap();
    assert_eq!(received(&mut listener), vec![], "a rolled-back transaction notifies nobody");
    // The commit itself notifies nobody: a NOTIFY would serialize committing transactions.
    db.batch_execute("INSERT INTO products VALUES ('A', 'Widget', 9.99)").unwrap();
    assert_eq!(received(&mut listener), vec![], "a commit is not announced before it is sealed");
    db.batch_execute("SELECT causal.catch_up()").unwrap();
    assert_eq!(received(&mut listener), vec![("causal_sync".to_string(), format!("group:{group}"))]);
}

/// A rule declared by another session while a transaction that wrote the group is open waits
/// for it: the transaction was checked without the rule, so its entry comes before the rule's
/// (it is in the rule's predecessors) and stays; the rule applies to what follows.
#[test]
fn a_rule_declared_concurrently_waits_for_the_writers_in_flight() {
    let node = Cluster::start("capture-concurrent-rule", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    let mut writer = node.connect("postgres");
    let mut tx = writer.transaction().unwrap();
    tx.batch_execute("INSERT INTO products VALUES ('cheap', 'c', 1)").unwrap();
    let conn = node.connection_string("postgres");
    let admin = std::thread::spawn(move || {
        let mut db = causal_integration::postgres::Client::connect(&conn, causal_integration::postgres::NoTls).unwrap();
        db.batch_execute("SELECT causal.allow('products', 'insert', 'new.price > 100')").unwrap();
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!admin.is_finished(), "the rule waits for the open writer");
    tx.commit().unwrap();
    admin.join().unwrap();
    db.batch_execute("SELECT causal.catch_up('shop')").unwrap();
    let log = db.query("SELECT op, status FROM causal.log('shop', 2)", &[]).unwrap();
    let log: Vec<(String, String)> = log.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(log[0].0, "rule insert on products", "{log:?}");
    assert_eq!(log[1], ("insert products (sku=cheap)".to_string(), "ok".to_string()), "{log:?}");
    let in_table: i64 = db.query_one("SELECT count(*) FROM products", &[]).unwrap().get(0);
    assert_eq!(in_table, 1);
    let err = db.batch_execute("INSERT INTO products VALUES ('cheap2', 'c', 1)").unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err:?}");
}

/// Hashes of every entry, in storage order.
fn hashes(db: &mut Client) -> Vec<String> {
    db.query("SELECT hash FROM causal.entries ORDER BY node_id", &[]).unwrap().iter().map(|r| r.get(0)).collect()
}

#[test]
fn a_crash_between_commit_and_sealing_loses_no_transaction() {
    let node = Cluster::start("capture-crash-unsealed", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    let base = count(&mut db);
    // Committed (and flushed: synchronous_commit is on), never sealed: no worker runs here.
    for i in 0..20 {
        db.batch_execute(&format!("INSERT INTO products VALUES ('k{i}', 'n', {i})")).unwrap();
    }
    node.kill9();
    node.restart();
    let mut db = node.connect("postgres");
    assert_eq!(count(&mut db), base + 20, "every committed transaction is sealed after the crash");
    assert!(db.query_one("SELECT causal.verify('shop')", &[]).unwrap().get::<_, bool>(0));
}

#[test]
fn a_crash_after_sealing_makes_no_duplicate_entry() {
    let node = Cluster::start("capture-crash-sealed", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    for i in 0..10 {
        db.batch_execute(&format!("INSERT INTO products VALUES ('k{i}', 'n', {i})")).unwrap();
    }
    // Sealed and committed; the slot is told only on the next sealing run, which the crash
    // prevents: decoding hands the same transactions back after restart.
    let before = hashes(&mut {
        db.batch_execute("SELECT causal.catch_up()").unwrap();
        db
    });
    node.kill9();
    node.restart();
    let mut db = node.connect("postgres");
    db.batch_execute("INSERT INTO products VALUES ('after', 'n', 1)").unwrap();
    db.batch_execute("SELECT causal.catch_up()").unwrap();
    let after = hashes(&mut db);
    assert_eq!(after.len(), before.len() + 1, "only the new transaction was sealed");
    assert_eq!(&after[..before.len()], &before[..]);
    let dup: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT payload FROM causal.dag_entries GROUP BY payload HAVING count(*) > 1) d",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(dup, 0);
}

/// Entries are visible to the sync worker once their sealing transaction commits, and a peer
/// may fetch them at once: they must be durable by then, whatever synchronous_commit says.
/// Otherwise a crash loses them, and sealing the same transactions again may make other
/// entries (a sealing run signs only each author's last entry), duplicates of what the peer
/// holds.
#[test]
fn entries_visible_before_a_crash_survive_it_with_synchronous_commit_off() {
    let node = Cluster::start("capture-crash-async", &["synchronous_commit = off", "wal_writer_delay = '10s'"]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    db.batch_execute("SELECT causal.catch_up()").unwrap();
    for i in 0..10 {
        db.batch_execute(&format!("INSERT INTO products VALUES ('k{i}', 'n', {i})")).unwrap();
    }
    db.batch_execute("SELECT causal.catch_up(NULL, 0)").unwrap();
    let seen = hashes(&mut db);
    node.kill9();
    node.restart();
    let mut db = node.connect("postgres");
    assert_eq!(hashes(&mut db), seen, "the entries seen before the crash are stored after it");
}

#[test]
fn replicate_refuses_without_logical_wal() {
    let node = Cluster::start("capture-wal-level", &["wal_level = replica"]);
    let mut db = node.connect("postgres");
    db.batch_execute(
        "CREATE EXTENSION pg_causal; SELECT causal.create_group('shop');
         CREATE TABLE products (sku text PRIMARY KEY)",
    )
    .unwrap();
    let err = db.batch_execute("SELECT causal.replicate('shop', 'products')").unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("55000"), "{err:?}");
    let message = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(message.contains("wal_level = logical"), "{message}");
}

#[test]
fn a_rolled_back_savepoint_takes_its_rows_and_nothing_else() {
    let node = Cluster::start("capture-savepoint", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    let base = count(&mut db);
    // The author message of the first write is in the undone savepoint: the next write
    // names the author again.
    db.batch_execute(
        "BEGIN; SAVEPOINT s; INSERT INTO products VALUES ('X', 'x', 1); ROLLBACK TO SAVEPOINT s;
         INSERT INTO products VALUES ('Y', 'y', 1); COMMIT;",
    )
    .unwrap();
    assert_eq!(count(&mut db), base + 1);
    let (_, _, payload) = newest(&mut db);
    assert_eq!(payload["ops"].as_array().unwrap().len(), 1);
    assert_eq!(payload["ops"][0]["row"]["sku"], "Y");
    let (_, node_key) = node_identity(&mut db);
    assert_eq!(payload["author"], node_key.as_str());
}

#[test]
fn an_author_missing_at_sealing_time_does_not_stop_sealing() {
    let node = Cluster::start("capture-lost-author", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    db.batch_execute(
        "SELECT causal.create_identity('alice');
         SELECT causal.add_member('shop', (SELECT public_key FROM causal.identities WHERE name = 'alice'));",
    )
    .unwrap();
    let base = count(&mut db);
    // A superuser removes the author's key between its write and the sealing of it: the
    // transaction is sealed (by the node identity, with a warning) and sealing goes on.
    db.batch_execute(
        "BEGIN; SET LOCAL causal.author = 'alice'; INSERT INTO products VALUES ('A', 'a', 1);
         DELETE FROM causal.identity_keys WHERE name = 'alice'; COMMIT;",
    )
    .unwrap();
    assert_eq!(count(&mut db), base + 1);
    let (_, _, payload) = newest(&mut db);
    let (_, node_key) = node_identity(&mut db);
    assert_eq!(payload["author"], node_key.as_str());
    db.batch_execute("INSERT INTO products VALUES ('B', 'b', 1)").unwrap();
    assert_eq!(count(&mut db), base + 2);
}

/// (page, line) of the group's catalog row: every update of the row writes a new version.
fn group_row_position(db: &mut Client) -> (i64, i64) {
    let row = db
        .query_one(
            "SELECT (ctid::text::point)[0]::bigint, (ctid::text::point)[1]::bigint FROM causal.group_defs WHERE name = 'shop'",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn sealing_many_transactions_updates_the_group_row_once() {
    let node = Cluster::start("capture-seal-batch", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    let base = count(&mut db);
    db.batch_execute("VACUUM causal.group_defs").unwrap();
    let before = group_row_position(&mut db);
    for i in 0..60 {
        db.batch_execute(&format!("INSERT INTO products VALUES ('k{i}', 'n', 1)")).unwrap();
    }
    // Sealing 60 transactions in one run: the group's running state is written at its end,
    // not once per entry (each version of the row made every later lookup of it slower).
    db.batch_execute("SELECT count(*) FROM causal.log('shop', 1)").unwrap();
    let after = group_row_position(&mut db);
    assert_eq!(after.0, before.0, "the group row moved to another page: {before:?} -> {after:?}");
    assert!(after.1 - before.1 <= 3, "the group row was rewritten {} times", after.1 - before.1);
    assert_eq!(count(&mut db), base + 60);
}

/// A sealing run signs each author's last entry of a run and leaves the others unsigned, for
/// that signature to cover: with bob's transactions between the node's, every change of
/// author closes a run. Everything verifies, and a peer importing the history accepts it.
#[test]
fn a_sealing_run_signs_each_authors_last_entry_only() {
    let node = Cluster::start("capture-batch-sign", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    db.batch_execute(
        "SELECT causal.create_identity('bob');
         SELECT causal.add_member('shop', (SELECT public_key FROM causal.identities WHERE name = 'bob'), 'bob');",
    )
    .unwrap();
    let base = count(&mut db);
    // node x5, bob x3, node x2: runs of 5, 3 and 2 entries, so three signatures.
    let authors = ["", "", "", "", "", "bob", "bob", "bob", "", ""];
    for (i, author) in authors.iter().enumerate() {
        db.batch_execute(&format!("SET causal.author = '{author}'; INSERT INTO products VALUES ('r{i}', 'n', 1)"))
            .unwrap();
    }
    assert_eq!(count(&mut db), base + 10);
    let rows = db.query("SELECT payload FROM causal.entries ORDER BY node_id DESC LIMIT 10", &[]).unwrap();
    let mut signed: Vec<bool> = rows
        .iter()
        .map(|r| causal_core::json::parse(&r.get::<_, String>(0)).unwrap().get("signature").is_some())
        .collect();
    signed.reverse();
    let expected = [false, false, false, false, true, false, false, true, false, true];
    assert_eq!(signed, expected);
    assert!(db.query_one("SELECT causal.verify('shop')", &[]).unwrap().get::<_, bool>(0));

    let peer = Cluster::start("capture-batch-sign-peer", &[]);
    let mut p = peer.connect("postgres");
    p.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    let bundle: Vec<u8> = db.query_one("SELECT causal.export('shop')", &[]).unwrap().get(0);
    let r: String = p.query_one("SELECT causal.import($1)::text", &[&bundle]).unwrap().get(0);
    let r: serde_json::Value = serde_json::from_str(&r).unwrap();
    assert_eq!(r["rejected"], serde_json::json!([]), "{r}");
    let n: i64 = p.query_one("SELECT count(*) FROM products", &[]).unwrap().get(0);
    assert_eq!(n, 10);
    assert!(p.query_one("SELECT causal.verify('shop')", &[]).unwrap().get::<_, bool>(0));
}

/// What sealing and placing write (entries, journal, row metadata) is not decoded again by
/// the next sealing run: it carries the replay origin, and decoding drops it before the
/// reorder buffer. Before, a run decoded every catalog row the runs before it wrote: after a
/// bulk placement, sealing one later transaction read through all of it.
#[test]
fn the_sealer_does_not_decode_its_own_bookkeeping() {
    let node = Cluster::start("capture-own-writes", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    db.batch_execute("INSERT INTO products SELECT 'bulk' || g, 'bulk', 1 FROM generate_series(1, 2000) g").unwrap();
    for i in 0..50 {
        db.batch_execute(&format!("INSERT INTO products VALUES ('k{i}', 'n', 1)")).unwrap();
    }
    db.batch_execute("SELECT causal.catch_up()").unwrap();
    let decoded = |db: &mut Client| -> i64 {
        db.query_one("SELECT total_bytes FROM pg_stat_replication_slots WHERE slot_name LIKE 'pg_causal%'", &[])
            .unwrap()
            .get(0)
    };
    let before = decoded(&mut db);
    db.batch_execute("INSERT INTO products VALUES ('one', 'n', 1)").unwrap();
    db.batch_execute("SELECT causal.catch_up()").unwrap();
    let grew = decoded(&mut db) - before;
    // One single-row transaction, plus the logical message naming its author.
    assert!(grew < 2_000, "the sealer decoded {grew} bytes for one single-row transaction");
}

#[test]
fn a_sealer_that_waited_for_another_does_not_seal_its_transactions_again() {
    let node = Cluster::start("capture-two-sealers", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    let base = count(&mut db);
    // The second sealer's session has sealed before: what it looked up is cached, and its next
    // sealing run gives its transaction no xid before it reads the sealed position.
    let mut second = node.connect("postgres");
    second.batch_execute("SELECT causal.catch_up()").unwrap();
    db.batch_execute("INSERT INTO products VALUES ('A', 'a', 1)").unwrap();
    // The first sealer seals the insert and keeps the sealer's lock until it commits.
    db.batch_execute("BEGIN; SELECT count(*) FROM causal.log('shop', 1)").unwrap();
    // The second starts its statement now, then waits for that lock.
    let waiter = std::thread::spawn(move || {
        second.batch_execute("SELECT count(*) FROM causal.log('shop', 1)").map_err(|e| e.to_string())
    });
    let mut watch = node.connect("postgres");
    let start = std::time::Instant::now();
    loop {
        let waiting: i64 = watch
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%causal.log%'",
                &[],
            )
            .unwrap()
            .get(0);
        if waiting == 1 {
            break;
        }
        if start.elapsed() > std::time::Duration::from_secs(10) {
            let rows = watch.query("SELECT coalesce(wait_event_type, '-') || ' ' || coalesce(wait_event, '-') || ' ' || state || ' ' || query FROM pg_stat_activity WHERE backend_type = 'client backend'", &[]).unwrap();
            let rows: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            panic!("the second sealer never waited: {rows:#?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    db.batch_execute("COMMIT").unwrap();
    waiter.join().unwrap().unwrap();
    assert_eq!(count(&mut db), base + 1, "one entry for one transaction");
}

#[test]
fn a_backlog_larger_than_a_sealing_batch_is_sealed_in_one_pass() {
    let node = Cluster::start("capture-big-backlog", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    let base = count(&mut db);
    // 450k row operations: the sealer seals them in batches of 200k between WAL records,
    // then reads on.
    for i in 0..3 {
        db.batch_execute(&format!(
            "INSERT INTO products SELECT 'k{i}-' || g, 'n', 1 FROM generate_series(1, 150000) g"
        ))
        .unwrap();
        db.batch_execute(&format!("INSERT INTO products VALUES ('single{i}', 's', 1)")).unwrap();
    }
    assert_eq!(count(&mut db), base + 6);
    let rows: Vec<i64> = db
        .query("SELECT jsonb_array_length(payload::jsonb -> 'ops')::bigint FROM causal.entries ORDER BY node_id DESC LIMIT 6", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, vec![1, 150000, 1, 150000, 1, 150000]);
    let ok: bool = db.query_one("SELECT causal.verify('shop')", &[]).unwrap().get(0);
    assert!(ok);
}

/// `causal.catch_up(NULL, 0)` seals and places nothing (the sync worker seals so between
/// placing calls): the entry is stored, the group counts it unplaced, and a later catch_up
/// places it. A negative bound is refused.
#[test]
fn catch_up_with_no_rows_seals_without_placing() {
    let node = Cluster::start("seal-only", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    let entries =
        |db: &mut Client| -> i64 { db.query_one("SELECT count(*) FROM causal.dag_entries", &[]).unwrap().get(0) };
    let unplaced = |db: &mut Client| -> i64 {
        db.query_one("SELECT unplaced FROM causal.stat_groups WHERE group_name = 'shop'", &[]).unwrap().get(0)
    };
    db.batch_execute("SELECT causal.catch_up()").unwrap();
    let before = entries(&mut db);
    db.batch_execute("INSERT INTO products VALUES ('S', 'sealed', 1)").unwrap();
    let placed: i64 = db.query_one("SELECT causal.catch_up(NULL, 0)", &[]).unwrap().get(0);
    assert_eq!((placed, entries(&mut db), unplaced(&mut db)), (0, before + 1, 1));
    let placed: i64 = db.query_one("SELECT causal.catch_up()", &[]).unwrap().get(0);
    assert_eq!((placed, unplaced(&mut db)), (1, 0));
    let err = db.query_one("SELECT causal.catch_up(NULL, -1)", &[]).unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22023"), "{err}");
}

/// WAL written to tables outside any group is let go: a sealing run that finds nothing to
/// seal confirms what it read and logs the running transactions, so the slot's restart
/// position moves past that WAL and the next run does not read it again (each run decodes
/// from there). Before, the slot held it until the next replicated commit was sealed.
#[test]
fn an_idle_sealing_run_lets_the_slot_move_past_other_tables_wal() {
    let node = Cluster::start("idle-slot", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    db.batch_execute("INSERT INTO products VALUES ('A', 'a', 1); SELECT causal.catch_up()").unwrap();
    db.batch_execute(
        "CREATE TABLE other (id int, pad text);
         INSERT INTO other SELECT i, repeat('x', 200) FROM generate_series(1, 100000) i;",
    )
    .unwrap();
    let behind = |db: &mut Client| -> i64 {
        db.query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots \
             WHERE slot_type = 'logical'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    assert!(behind(&mut db) > 16 << 20, "the other table's rows wrote more WAL than that");
    // The slot takes a new restart position from a record of running transactions that a
    // run decoded, at the confirmation after it, and keeps one candidate at a time: the
    // record the first idle run logs becomes the restart position two runs later. An idle
    // run logs one at most every 50 ms (seal.rs, RUNNING_XACTS_EVERY_IDLE), and on a fast
    // machine three runs take less than that: the runs here are spaced out.
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        db.batch_execute("SELECT causal.catch_up()").unwrap();
    }
    let left = behind(&mut db);
    assert!(left < 1 << 20, "the slot still keeps {left} bytes of WAL");
    // And what comes next is sealed as before.
    db.batch_execute("INSERT INTO products VALUES ('B', 'b', 2)").unwrap();
    assert_eq!(count(&mut db), 4);
}

/// Placing local commits writes only pg_causal's catalog: it takes the group's lock shared, as
/// writers do, and neither waits for a writer in flight nor makes one wait. Before, it took the
/// lock exclusively, and every writer of the group waited for each placing call.
#[test]
fn placing_neither_waits_for_writers_nor_blocks_them() {
    let node = Cluster::start("place-beside-writers", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    db.batch_execute("INSERT INTO products VALUES ('A', 'a', 1)").unwrap();
    db.batch_execute("INSERT INTO products VALUES ('B', 'b', 2)").unwrap();
    db.batch_execute("SELECT causal.catch_up(NULL, 0)").unwrap();
    let mut writer = node.connect("postgres");
    let mut tx = writer.transaction().unwrap();
    tx.batch_execute("INSERT INTO products VALUES ('C', 'c', 3)").unwrap();
    // The writer holds the group's lock shared until it commits; placing must not wait for it.
    db.batch_execute("SET statement_timeout = '5s'").unwrap();
    let placed: i64 = db.query_one("SELECT causal.catch_up('shop', 1000)", &[]).unwrap().get(0);
    assert_eq!(placed, 2, "the two sealed commits are placed beside the open writer");
    // A writer may start while a placing call is open, and commit.
    let mut placer = node.connect("postgres");
    let mut placing = placer.transaction().unwrap();
    tx.batch_execute("INSERT INTO products VALUES ('D', 'd', 4)").unwrap();
    tx.commit().unwrap();
    let placed: i64 = placing.query_one("SELECT causal.catch_up('shop', 1000)", &[]).unwrap().get(0);
    assert_eq!(placed, 1, "the writer's commit, sealed by the call, is placed");
    let mut other = node.connect("postgres");
    other.batch_execute("SET statement_timeout = '5s'; INSERT INTO products VALUES ('E', 'e', 5)").unwrap();
    placing.commit().unwrap();
    db.batch_execute("SELECT causal.catch_up()").unwrap();
    let not_ok: i64 =
        db.query_one("SELECT count(*) FROM causal.log('shop', 100) WHERE status <> 'ok'", &[]).unwrap().get(0);
    let rows: i64 = db.query_one("SELECT count(*) FROM products", &[]).unwrap().get(0);
    assert_eq!((not_ok, rows), (0, 5));
    let ok: bool = db.query_one("SELECT causal.verify('shop')", &[]).unwrap().get(0);
    assert!(ok);
}

/// A member removed in another session is refused at its next write at once (42501), even in
/// a session that checked it before, and even when that write waited for the removal's
/// transaction to end. (Sessions keep the member checks they made while the group's
/// authority is unchanged, and learn of a change through the catalog's invalidation.)
#[test]
fn a_member_removed_elsewhere_is_refused_at_its_next_write() {
    let node = Cluster::start("capture-removed-member", &[]);
    let mut admin = node.connect("postgres");
    setup(&mut admin);
    admin
        .batch_execute(
            "SELECT causal.create_identity('bob');
             SELECT causal.add_member('shop', (SELECT public_key FROM causal.identities WHERE name = 'bob'), 'bob');
             SELECT causal.create_identity('carol');
             SELECT causal.add_member('shop', (SELECT public_key FROM causal.identities WHERE name = 'carol'), 'carol');",
        )
        .unwrap();
    let key = |db: &mut Client, name: &str| -> String {
        db.query_one("SELECT key_id FROM causal.identities WHERE name = $1", &[&name]).unwrap().get(0)
    };
    let (bob, carol) = (key(&mut admin, "bob"), key(&mut admin, "carol"));
    let mut writer = node.connect("postgres");
    writer.batch_execute("SET causal.author = 'bob'; INSERT INTO products VALUES ('b1', 'n', 1)").unwrap();
    admin.execute("SELECT causal.remove_member('shop', $1)", &[&bob]).unwrap();
    let refused = writer.batch_execute("INSERT INTO products VALUES ('b2', 'n', 1)").unwrap_err();
    assert_eq!(sqlstate(&refused).as_deref(), Some("42501"), "{refused}");

    // Carol's write waits for the removal's transaction, which holds the group's lock.
    writer.batch_execute("SET causal.author = 'carol'; INSERT INTO products VALUES ('c1', 'n', 1)").unwrap();
    admin.batch_execute("BEGIN").unwrap();
    admin.execute("SELECT causal.remove_member('shop', $1)", &[&carol]).unwrap();
    let waiting = std::thread::spawn(move || {
        let r = writer.batch_execute("INSERT INTO products VALUES ('c2', 'n', 1)");
        r.map_err(|e| sqlstate(&e))
    });
    let mut watch = node.connect("postgres");
    wait_until("carol's write waits for the group's lock", || {
        let n: i64 = watch
            .query_one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted", &[])
            .unwrap()
            .get(0);
        n > 0
    });
    admin.batch_execute("COMMIT").unwrap();
    assert_eq!(waiting.join().unwrap(), Err(Some("42501".to_string())));
    let n: i64 = admin.query_one("SELECT count(*) FROM products WHERE sku IN ('b2', 'c2')", &[]).unwrap().get(0);
    assert_eq!(n, 0);
}

/// A cluster with pg_causal preloaded, as a node runs it: a sealing backend keeps its decoding
/// context between runs (`capture::decode`). The sync worker serves database `postgres`; these
/// tests seal in database `app`, where only their own sessions decode the slot.
fn preloaded(name: &str) -> (Cluster, Client) {
    let node = Cluster::start(name, &["shared_preload_libraries = 'pg_causal'", "logical_decoding_work_mem = '64kB'"]);
    let mut postgres = node.connect("postgres");
    postgres.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    postgres.batch_execute("CREATE DATABASE app").unwrap();
    let mut db = node.connect("app");
    setup(&mut db);
    (node, db)
}

/// A run that reads on from where the session's last run stopped must not skip what that run
/// sealed in work that was then rolled back: the next run reads it again.
#[test]
fn a_sealing_run_rolled_back_leaves_its_transactions_to_the_next() {
    let (node, mut db) = preloaded("kept-context-rollback");
    let base = count(&mut db);
    let mut other = node.connect("app");
    other.batch_execute("INSERT INTO products VALUES ('A', 'a', 1)").unwrap();
    db.batch_execute("BEGIN; SELECT causal.catch_up(NULL, 0); ROLLBACK").unwrap();
    other.batch_execute("INSERT INTO products VALUES ('B', 'b', 2)").unwrap();
    assert_eq!(count(&mut db), base + 2, "both inserts sealed, the one rolled back included");
    // Within a savepoint too.
    other.batch_execute("INSERT INTO products VALUES ('C', 'c', 3)").unwrap();
    db.batch_execute("BEGIN; SAVEPOINT s; SELECT causal.catch_up(NULL, 0); ROLLBACK TO s; COMMIT").unwrap();
    assert_eq!(count(&mut db), base + 3);
    let ok: bool = db.query_one("SELECT causal.verify('shop')", &[]).unwrap().get(0);
    assert!(ok);
}

/// A sealing backend keeps what it learnt of tables with its decoding context: a table its
/// last run saw written while it was not replicated is captured once it is.
#[test]
fn a_table_replicated_after_a_kept_context_saw_it_is_captured() {
    let (node, mut db) = preloaded("kept-context-tables");
    db.batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text)").unwrap();
    let mut other = node.connect("app");
    other
        .batch_execute(
            "BEGIN; INSERT INTO products VALUES ('N', 'n', 1); INSERT INTO notes VALUES (1, 'before'); COMMIT",
        )
        .unwrap();
    // This session's run decodes that transaction, and learns that notes is not replicated.
    let base = count(&mut db);
    db.batch_execute("SELECT causal.replicate('shop', 'notes')").unwrap();
    other.batch_execute("INSERT INTO notes VALUES (2, 'after')").unwrap();
    assert_eq!(count(&mut db), base + 3, "the schema entry, the row notes held, then the insert");
    let (_, _, payload) = newest(&mut db);
    assert_eq!(payload["ops"][0]["table"], "notes");
    assert_eq!(payload["ops"][0]["row"]["id"], 2);
}

/// The sync worker's decoding backend starts from the position the last sealing commit
/// published: never from one a rolled-back subtransaction stored, or it would skip commits no
/// entry holds, and tell the slot to let go of their WAL.
#[test]
fn a_position_sealed_in_a_rolled_back_savepoint_is_not_published() {
    let (node, mut db) = preloaded("sealed-position-savepoint");
    let mut other = node.connect("app");
    // Sealed and committed: its position is published.
    other.batch_execute("INSERT INTO products VALUES ('R', 'r', 1)").unwrap();
    let base = count(&mut db);
    other.batch_execute("INSERT INTO products VALUES ('S', 's', 1)").unwrap();
    db.batch_execute("BEGIN; SAVEPOINT s; SELECT causal.catch_up(NULL, 0); ROLLBACK TO s; COMMIT").unwrap();
    let mut worker = node.connect("app");
    let sealed: i64 =
        worker.query_one("SELECT causal._seal_decoded(causal._decode_commits(1000))", &[]).unwrap().get(0);
    assert_eq!(sealed, 1, "the insert is handed over and sealed");
    assert_eq!(count(&mut db), base + 1);
}

/// A transaction in progress across sealing runs is read in pieces, and spilled to disk past
/// `logical_decoding_work_mem`. When another session decodes the slot meanwhile, its context
/// deletes the slot's spilled changes: the first session's next run must start afresh rather
/// than read on without them (Postgres takes missing spill files for changes never spilled).
#[test]
fn a_transaction_spilled_while_another_session_seals_is_sealed_whole() {
    let (node, mut db) = preloaded("kept-context-spill");
    let base = count(&mut db);
    let mut writer = node.connect("app");
    let mut other = node.connect("app");
    // The other session spills nothing: the files it deletes as it starts are not written again.
    other.batch_execute("SET logical_decoding_work_mem = '1GB'").unwrap();
    db.batch_execute("SELECT causal.catch_up(NULL, 0)").unwrap();
    writer
        .batch_execute(
            "BEGIN; INSERT INTO products SELECT 'k' || g, repeat('n', 100), 1 FROM generate_series(1, 5000) g",
        )
        .unwrap();
    // A run flushes the WAL and reads to its end: the rows not committed yet, spilled.
    db.batch_execute("SELECT causal.catch_up(NULL, 0)").unwrap();
    other.batch_execute("SELECT causal.catch_up(NULL, 0)").unwrap();
    writer.batch_execute("COMMIT").unwrap();
    assert_eq!(count(&mut db), base + 1);
    let ops: i64 = db
        .query_one(
            "SELECT jsonb_array_length(payload::jsonb -> 'ops')::bigint FROM causal.entries ORDER BY node_id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ops, 5000, "every row of the transaction is in its entry");
}

/// The entries stored, without sealing first.
fn stored(db: &mut Client) -> i64 {
    db.query_one("SELECT count(*) FROM causal.dag_entries", &[]).unwrap().get(0)
}

/// The sync worker decodes in one backend and seals in another (`causal._decode_commits`,
/// `causal._seal_decoded`). Commits handed over whose sealing failed are handed over again;
/// commits another session sealed meanwhile are not sealed twice.
#[test]
fn decoded_commits_whose_sealing_failed_are_handed_over_again() {
    let (node, mut db) = preloaded("handoff-again");
    let (mut decoder, mut sealer) = (node.connect("app"), node.connect("app"));
    db.batch_execute("SELECT causal.catch_up(NULL, 0)").unwrap();
    let base = stored(&mut db);
    let decode = |decoder: &mut Client| -> Vec<u8> {
        decoder.query_one("SELECT causal._decode_commits(1000)", &[]).unwrap().get(0)
    };
    // A sealing call that fails before it writes anything leaves no WAL behind: what it was
    // handed is handed over again all the same. (Runs that hand something over log the
    // running transactions, at most every 250 ms: the second run here, right after the
    // first, writes nothing after the WAL it read.)
    db.batch_execute("INSERT INTO products VALUES ('X', 'x', 1)").unwrap();
    let x = decode(&mut decoder);
    let _: i64 = sealer.query_one("SELECT causal._seal_decoded($1)", &[&x]).unwrap().get(0);
    db.batch_execute("INSERT INTO products VALUES ('A', 'a', 1)").unwrap();
    let first = decode(&mut decoder);
    assert_eq!(decode(&mut decoder), first);
    sealer.batch_execute("BEGIN").unwrap();
    let sealed: i64 = sealer.query_one("SELECT causal._seal_decoded($1)", &[&first]).unwrap().get(0);
    assert_eq!(sealed, 1);
    sealer.batch_execute("ROLLBACK").unwrap();
    assert_eq!(stored(&mut db), base + 1);
    db.batch_execute("INSERT INTO products VALUES ('B', 'b', 2)").unwrap();
    let again = decode(&mut decoder);
    let sealed: i64 = sealer.query_one("SELECT causal._seal_decoded($1)", &[&again]).unwrap().get(0);
    assert_eq!(sealed, 2, "the commit handed over before is handed over again");
    assert_eq!(stored(&mut db), base + 3);
    // Sealed by another session between decoding and sealing: sealed once.
    db.batch_execute("INSERT INTO products VALUES ('C', 'c', 3)").unwrap();
    let third = decode(&mut decoder);
    db.batch_execute("SELECT causal.catch_up(NULL, 0)").unwrap();
    let sealed: i64 = sealer.query_one("SELECT causal._seal_decoded($1)", &[&third]).unwrap().get(0);
    assert_eq!(sealed, 0);
    assert_eq!(stored(&mut db), base + 4);
    // Nothing new: an empty batch.
    let nothing = decode(&mut decoder);
    let sealed: i64 = sealer.query_one("SELECT causal._seal_decoded($1)", &[&nothing]).unwrap().get(0);
    assert_eq!(sealed, 0);
    let ok: bool = db.query_one("SELECT causal.verify('shop')", &[]).unwrap().get(0);
    assert!(ok);
}

/// A batch is signed as the authors it names, so only the worker's roles (a superuser, the
/// extension's owner) may hand one in; bytes that are not a batch seal nothing.
#[test]
fn only_the_workers_roles_hand_over_decoded_commits() {
    let node = Cluster::start("handoff-roles", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    db.batch_execute("CREATE ROLE app LOGIN; GRANT USAGE ON SCHEMA causal TO app; SELECT causal.catch_up()").unwrap();
    let base = stored(&mut db);
    db.batch_execute("INSERT INTO products VALUES ('A', 'a', 1)").unwrap();
    let batch: Vec<u8> = db.query_one("SELECT causal._decode_commits(1000)", &[]).unwrap().get(0);
    let mut app = node.connect_as("app", "postgres");
    for call in ["SELECT causal._seal_decoded($1)", "SELECT causal._decode_commits(1000) = $1"] {
        let err = app.query_one(call, &[&batch]).unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{call}: {err:?}");
    }
    let mut cut = batch.clone();
    cut.pop();
    let err = db.query_one("SELECT causal._seal_decoded($1)", &[&cut]).unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22023"), "{err:?}");
    assert_eq!(stored(&mut db), base);
    let sealed: i64 = db.query_one("SELECT causal._seal_decoded($1)", &[&batch]).unwrap().get(0);
    assert_eq!(sealed, 1);
    assert_eq!(stored(&mut db), base + 1);
}

/// Once a rule scans a table, the rows of that table kept in sets of fresh rows become
/// `row_meta` rows with all their values (a rule check filters on any column), and its sets go:
/// at the end of the first placing run with rows after the rule.
#[test]
fn a_table_a_rule_comes_to_scan_keeps_all_its_values() {
    let node = Cluster::start("rule-scan-sets", &[]);
    let mut db = node.connect("postgres");
    setup(&mut db);
    db.batch_execute("INSERT INTO products VALUES ('A', 'alice', 1), ('B', 'bob', 2)").unwrap();
    let text = |db: &mut Client, sql: &str| -> String { db.query_one(sql, &[]).unwrap().get(0) };
    db.batch_execute("SELECT causal.catch_up()").unwrap();
    let sets = "SELECT count(*)::text FROM causal.fresh_rows WHERE table_name = 'products'";
    assert_eq!(text(&mut db, sets), "1");
    db.batch_execute(
        "CREATE TABLE notes (id int PRIMARY KEY, body text); SELECT causal.replicate('shop', 'notes');
         SELECT causal.allow('notes', 'delete', 'exists(products where products.name = $author)');",
    )
    .unwrap();
    db.batch_execute("INSERT INTO notes VALUES (1, 'n')").unwrap();
    db.batch_execute("SELECT causal.catch_up()").unwrap();
    assert_eq!(text(&mut db, sets), "0");
    let kept = text(
        &mut db,
        "SELECT string_agg(key || vals::text || (meta ? 'p')::text, ' ' ORDER BY key) FROM causal.row_meta \
         WHERE table_name = 'products'",
    );
    assert_eq!(
        kept,
        r#"["A"]{"sku": "A", "name": "alice", "price": "1.00"}false ["B"]{"sku": "B", "name": "bob", "price": "2.00"}false"#
    );
    let verified: bool = db.query_one("SELECT causal.verify('shop')", &[]).unwrap().get(0);
    assert!(verified);
}
