//! Physical failover: a streaming standby promoted to primary carries on as the same node (its
//! key and DAG are tables, replicated like any other). On PostgreSQL 15 a standby has no
//! logical slots, so the promoted node creates its capture slot again; WAL between the last
//! sealed position and the new slot is never decoded, and the node records that span.

use causal_integration::postgres::Client;
use causal_integration::Cluster;

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out waiting until {what}");
}

fn entries(db: &mut Client) -> i64 {
    db.query_one("SELECT count(*) FROM causal.dag_entries", &[]).unwrap().get(0)
}

#[test]
fn a_promoted_standby_carries_on_and_records_what_it_could_not_seal() {
    let primary = Cluster::start("failover-primary", &[]);
    let mut p = primary.connect("postgres");
    p.batch_execute(
        "CREATE EXTENSION pg_causal;
         SELECT causal.create_group('shop');
         CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL);
         SELECT causal.replicate('shop', 'products');",
    )
    .unwrap();
    p.batch_execute("INSERT INTO products VALUES ('sealed', 'before the failover')").unwrap();
    p.batch_execute("SELECT causal.catch_up()").unwrap();
    let node: String = p.query_one("SELECT causal.node_id()", &[]).unwrap().get(0);
    let sealed_entries = entries(&mut p);

    let standby = Cluster::standby_of(&primary, "failover-standby");
    // Committed on the primary and replicated, but not sealed before the primary goes.
    p.batch_execute("INSERT INTO products VALUES ('unsealed', 'committed, not sealed')").unwrap();
    let mut s = standby.connect("postgres");
    wait_until("the standby has both rows", || {
        s.query_one("SELECT count(*) FROM products", &[]).map(|r| r.get::<_, i64>(0) == 2).unwrap_or(false)
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
    // The first seal creates the slot again and records the span it can never decode.
    s.batch_execute("SELECT causal.catch_up()").unwrap();
    let (from, to): (Option<String>, Option<String>) = {
        let r = s.query_one("SELECT unsealed_from::text, unsealed_to::text FROM causal.capture_status", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert!(from.is_some() && to.is_some(), "no unsealed span recorded: {from:?} {to:?}");
    assert!(standby.log().contains("are not sealed into any group's history"), "no warning in the log");
    // Writes go on, sealed and verified; the unsealed row is in the table and in no entry.
    s.batch_execute("INSERT INTO products VALUES ('after', 'on the promoted node')").unwrap();
    s.batch_execute("SELECT causal.catch_up()").unwrap();
    assert_eq!(entries(&mut s), sealed_entries + 1);
    assert!(s.query_one("SELECT causal.verify('shop')", &[]).unwrap().get::<_, bool>(0));
    let rows: i64 = s.query_one("SELECT count(*) FROM products", &[]).unwrap().get(0);
    assert_eq!(rows, 3);
}
