//! Physical failover: a streaming standby promoted to primary carries on as the same node (its
//! key and DAG are tables, replicated like any other). On PostgreSQL 15 a standby has no
//! logical slots, so the promoted node creates its capture slot again; WAL between the last
//! sealed position and the new slot is never decoded. What the transactions in that span did
//! is in the tables, and the node seals it from there.

use causal_integration::postgres::Client;
use causal_integration::{sqlstate, wait_until, Cluster};

fn entries(db: &mut Client) -> i64 {
    db.query_one("SELECT count(*) FROM causal.dag_entries", &[]).unwrap().get(0)
}

fn skus(db: &mut Client, query: &str) -> Vec<String> {
    let mut out: Vec<String> = db.query(query, &[]).unwrap().iter().map(|r| r.get(0)).collect();
    out.sort();
    out
}

/// The extension, group `shop` and its replicated table `products`, in a transaction that
/// writes no row of it: the first write, in a transaction of its own, creates the capture slot.
fn shop(db: &mut Client) {
    db.batch_execute(
        "CREATE EXTENSION pg_causal;
         SELECT causal.create_group('shop');
         CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, note text);
         SELECT causal.replicate('shop', 'products');",
    )
    .unwrap();
}

/// [`shop`] with one row, sealed; then the capture slot is dropped by hand. Returns how many
/// entries there are.
fn sealed_then_slot_dropped(a: &mut Client) -> i64 {
    shop(a);
    a.batch_execute("INSERT INTO products VALUES ('first', 'sealed', NULL)").unwrap();
    a.batch_execute("SELECT causal.catch_up()").unwrap();
    let sealed_entries = entries(a);
    a.batch_execute("SELECT pg_drop_replication_slot('pg_causal_' || oid) FROM pg_database WHERE datname = 'postgres'")
        .unwrap();
    sealed_entries
}

#[test]
fn a_promoted_standby_seals_what_the_lost_slot_never_decoded() {
    let primary = Cluster::start("failover-primary", &[]);
    let mut p = primary.connect("postgres");
    shop(&mut p);
    p.batch_execute(
        "INSERT INTO products VALUES ('sealed', 'before the failover', NULL), ('renamed', 'old name', 'n'),
                                     ('dropped', 'goes away', NULL)",
    )
    .unwrap();
    p.batch_execute("SELECT causal.catch_up()").unwrap();
    let node: String = p.query_one("SELECT causal.node_id()", &[]).unwrap().get(0);
    let sealed_entries = entries(&mut p);

    let standby = Cluster::standby_of(&primary, "failover-standby");
    // Committed on the primary and replicated, but not sealed before the primary goes.
    p.batch_execute("INSERT INTO products VALUES ('unsealed', 'committed, not sealed', NULL)").unwrap();
    p.batch_execute("UPDATE products SET name = 'new name', note = NULL WHERE sku = 'renamed'").unwrap();
    p.batch_execute("DELETE FROM products WHERE sku = 'dropped'").unwrap();
    let mut s = standby.connect("postgres");
    wait_until("the standby has the unsealed transactions", || {
        s.query_one("SELECT count(*) FROM products WHERE sku IN ('unsealed', 'dropped') OR name = 'new name'", &[])
            .map(|r| r.get::<_, i64>(0) == 2)
            .unwrap_or(false)
    });
    primary.kill9();
    standby.promote();
    let mut s = standby.connect("postgres");
    wait_until("the promoted node accepts writes", || {
        s.query_one("SELECT NOT pg_is_in_recovery()", &[]).map(|r| r.get::<_, bool>(0)).unwrap_or(false)
    });

    // The same node: key, group and history came with the data.
    let same: String = s.query_one("SELECT causal.node_id()", &[]).unwrap().get(0);
    assert_eq!(same, node);
    assert_eq!(entries(&mut s), sealed_entries);
    // Until the slot exists again, writes to replicated tables are refused: what they commit
    // must be either in the tables the span is read from or in the new slot's WAL.
    let err = s.batch_execute("INSERT INTO products VALUES ('early', 'too early', NULL)").unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("55000"), "{err:?}");

    // The first sealing run creates the slot and seals what the span did, from the tables.
    s.batch_execute("SELECT causal.catch_up()").unwrap();
    let r = s
        .query_one(
            "SELECT unsealed_from IS NOT NULL AND unsealed_to IS NOT NULL, recaptured_rows FROM causal.capture_status",
            &[],
        )
        .unwrap();
    assert!(r.get::<_, bool>(0), "no unsealed span recorded");
    assert_eq!(r.get::<_, Option<i64>>(1), Some(3));
    assert!(standby.log().contains("sealed from the tables"), "no report in the log");
    assert_eq!(entries(&mut s), sealed_entries + 1);
    let row = s.query_one("SELECT payload FROM causal.entries ORDER BY node_id DESC LIMIT 1", &[]).unwrap();
    let payload = causal_core::json::parse(&row.get::<_, String>(0)).unwrap();
    let (_, node_key) = causal_integration::node_identity(&mut s);
    assert_eq!(payload["author"], node_key.as_str());
    let mut ops: Vec<String> = payload["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| format!("{} {}", o["op"].as_str().unwrap(), o.get("row").or(o.get("key")).unwrap()["sku"]))
        .collect();
    ops.sort();
    assert_eq!(ops, ["delete \"dropped\"", "insert \"unsealed\"", "update \"renamed\""]);
    let update = payload["ops"].as_array().unwrap().iter().find(|o| o["op"] == "update").unwrap();
    assert_eq!(update["set"]["name"], "new name");
    assert_eq!(update["unset"], serde_json::json!(["note"]));

    // Writes go on, sealed and verified; the group's view is the table.
    s.batch_execute("INSERT INTO products VALUES ('after', 'on the promoted node', NULL)").unwrap();
    s.batch_execute("SELECT causal.catch_up()").unwrap();
    assert_eq!(entries(&mut s), sealed_entries + 2);
    assert!(s.query_one("SELECT causal.verify('shop')", &[]).unwrap().get::<_, bool>(0));
    let table = skus(&mut s, "SELECT sku FROM products");
    assert_eq!(table, ["after", "renamed", "sealed", "unsealed"]);
    assert_eq!(skus(&mut s, "SELECT r ->> 'sku' FROM causal.snapshot('products') r"), table);
}

#[test]
fn a_slot_dropped_by_hand_is_created_again_and_what_it_missed_sealed() {
    let node = Cluster::start("slot-dropped", &[]);
    let mut a = node.connect("postgres");
    let sealed_entries = sealed_then_slot_dropped(&mut a);
    // A session that saw the slot before writes on: its commit is in no slot's WAL.
    a.batch_execute("INSERT INTO products VALUES ('missed', 'while the slot was gone', NULL)").unwrap();
    // A new session may not write until the slot is back; a sealing run brings it back and
    // seals what it missed from the table.
    let mut b = node.connect("postgres");
    let err = b.batch_execute("UPDATE products SET note = 'x' WHERE sku = 'first'").unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("55000"), "{err:?}");
    b.batch_execute("SELECT causal.catch_up()").unwrap();
    let recaptured: Option<i64> = b.query_one("SELECT recaptured_rows FROM causal.capture_status", &[]).unwrap().get(0);
    assert_eq!(recaptured, Some(1));
    assert_eq!(entries(&mut b), sealed_entries + 1);
    b.batch_execute("UPDATE products SET note = 'x' WHERE sku = 'first'").unwrap();
    b.batch_execute("SELECT causal.catch_up()").unwrap();
    assert_eq!(entries(&mut b), sealed_entries + 2);
    assert!(b.query_one("SELECT causal.verify('shop')", &[]).unwrap().get::<_, bool>(0));
    assert_eq!(
        skus(&mut b, "SELECT r ->> 'sku' FROM causal.snapshot('products') r"),
        skus(&mut b, "SELECT sku FROM products")
    );
}

/// A session that saw the slot before it was dropped by hand writes without looking again. If
/// its transaction commits while a sealing run creates the slot again (after the run's
/// snapshot of the tables, before the slot's start), its rows are in neither: the run must
/// wait for it first. Here the writer is mid-transaction when the run begins, and commits
/// while the run waits.
#[test]
fn a_writer_in_flight_while_the_slot_is_created_again_is_not_lost() {
    let node = Cluster::start("slot-writer-in-flight", &[]);
    let mut a = node.connect("postgres");
    let sealed_entries = sealed_then_slot_dropped(&mut a);
    a.batch_execute("BEGIN; INSERT INTO products VALUES ('in flight', 'committed during the run', NULL)").unwrap();
    let run = std::thread::spawn({
        let mut b = node.connect("postgres");
        move || b.batch_execute("SELECT causal.catch_up()").map_err(|e| e.to_string())
    });
    let mut watch = node.connect("postgres");
    wait_until("the sealing run waits for the writer", || {
        let n: i64 = watch
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%causal.catch_up%' AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
        n > 0
    });
    a.batch_execute("COMMIT").unwrap();
    run.join().unwrap().unwrap();
    a.batch_execute("SELECT causal.catch_up()").unwrap();
    assert_eq!(entries(&mut a), sealed_entries + 1);
    assert!(a.query_one("SELECT causal.verify('shop')", &[]).unwrap().get::<_, bool>(0));
    assert_eq!(
        skus(&mut a, "SELECT r ->> 'sku' FROM causal.snapshot('products') r"),
        skus(&mut a, "SELECT sku FROM products")
    );
}
