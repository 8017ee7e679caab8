//! Backup and restore: a node dumped with pg_dump and restored into a fresh database carries
//! on as the same node, with the same key, history and tables.

use causal_integration::Cluster;

#[test]
fn a_restored_dump_carries_on_as_the_same_node() {
    let node = Cluster::start("backup", &[]);
    let mut db = node.connect("postgres");
    db.batch_execute(
        "CREATE EXTENSION pg_causal;
         SELECT causal.create_group('shop');
         CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2));
         SELECT causal.replicate('shop', 'products');
         SELECT causal.allow('products', 'insert', 'new.price >= 0');",
    )
    .unwrap();
    for i in 0..3 {
        db.batch_execute(&format!("INSERT INTO products VALUES ('p{i}', 'n{i}', {i})")).unwrap();
    }
    db.batch_execute("UPDATE products SET price = 9 WHERE sku = 'p1'; SELECT causal.catch_up()").unwrap();
    let facts = |db: &mut causal_integration::postgres::Client| -> (String, Vec<String>, i64, String) {
        let r = db
            .query_one(
                "SELECT causal.node_id(), causal.frontier('shop'), (SELECT count(*) FROM causal.dag_entries), \
                        (SELECT string_agg(sku || price, ',' ORDER BY sku) FROM products)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    let before = facts(&mut db);

    let file = node.dir.join("dump.custom");
    let file = file.to_str().unwrap();
    let out = node.client_tool("pg_dump", &["-Fc", "-f", file, "postgres"]);
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    db.batch_execute("CREATE DATABASE restored").unwrap();
    let out = node.client_tool("pg_restore", &["--exit-on-error", "-d", "restored", file]);
    assert!(out.status.success(), "pg_restore: {}", String::from_utf8_lossy(&out.stderr));

    let mut back = node.connect("restored");
    back.batch_execute("SELECT causal.catch_up()").unwrap();
    assert_eq!(facts(&mut back), before, "same node key, frontier, history and rows");
    let intact: bool = back.query_one("SELECT causal.verify('shop')", &[]).unwrap().get(0);
    assert!(intact);

    // It goes on writing after its restored frontier, with its rules.
    back.batch_execute("INSERT INTO products VALUES ('p9', 'new', 1)").unwrap();
    back.batch_execute("SELECT causal.catch_up()").unwrap();
    let (hash, prev): (String, Vec<String>) = {
        let r = back.query_one("SELECT hash, prev FROM causal.log('shop', 1)", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert!(!hash.is_empty());
    assert_eq!(prev, before.1, "the new entry follows the restored frontier");
    let refused = back.batch_execute("INSERT INTO products VALUES ('bad', 'x', -1)");
    assert!(refused.is_err(), "the rule holds after restore");
}
