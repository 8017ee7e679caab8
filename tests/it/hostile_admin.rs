//! A hostile group admin against a member: entries the admin signs with its valid key, built
//! by hand, and tricks with stock SQL. Each attack must be refused (the entry rejected with a
//! reason, or the import refused) and leave the member's data and host untouched.

use causal_core::entry::{Entry, Meta, Position};
use causal_core::identity::Keypair;
use causal_core::payload::{Op, SignedPayload};
use causal_core::{EntryHash, GroupId, HashAlgorithm};
use causal_integration::postgres::Client;
use causal_integration::{sqlstate, Cluster};
use serde_json::{json, Value};

fn import(db: &mut Client, bundle: &[u8]) -> Value {
    let s: String = db.query_one("SELECT causal.import($1)::text", &[&bundle]).unwrap().get(0);
    serde_json::from_str(&s).unwrap()
}

fn export(db: &mut Client) -> Vec<u8> {
    db.query_one("SELECT causal.export('shop')", &[]).unwrap().get(0)
}

fn reasons(r: &Value) -> Vec<String> {
    r["rejected"].as_array().unwrap().iter().map(|x| x["reason"].as_str().unwrap().to_string()).collect()
}

/// The admin's node (A) with a group `shop` and table `products`, and the member (B) with a
/// table `victim` of its own and the group's history.
struct Scene {
    _a_node: Cluster,
    _b_node: Cluster,
    b: Client,
    admin: Keypair,
    group: GroupId,
    tip: EntryHash,
    products: Value,
}

impl Scene {
    fn new(name: &str) -> Scene {
        let (a_node, b_node) = (Cluster::start(&format!("{name}-a"), &[]), Cluster::start(&format!("{name}-b"), &[]));
        let (mut a, mut b) = (a_node.connect("postgres"), b_node.connect("postgres"));
        a.batch_execute(
            "CREATE EXTENSION pg_causal; COMMIT; SELECT causal.create_group('shop');
             CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2) CHECK (price >= 0));
             SELECT causal.replicate('shop', 'products');
             INSERT INTO products VALUES ('A', 'Widget', 9.99);",
        )
        .unwrap();
        b.batch_execute(
            "CREATE EXTENSION pg_causal;
             CREATE TABLE victim (id int PRIMARY KEY, secret text); INSERT INTO victim VALUES (1, 'mine');",
        )
        .unwrap();
        let bundle = export(&mut a);
        assert_eq!(import(&mut b, &bundle)["rejected"], json!([]));
        let secret: Vec<u8> =
            a.query_one("SELECT secret_key FROM causal.identity_keys WHERE is_node", &[]).unwrap().get(0);
        let admin = Keypair::from_secret_bytes(&secret).unwrap();
        let group: String = a.query_one("SELECT group_id FROM causal.groups", &[]).unwrap().get(0);
        let tip: Vec<String> = a.query_one("SELECT causal.frontier('shop')", &[]).unwrap().get(0);
        let products: String = a.query_one("SELECT causal.describe('products')::text", &[]).unwrap().get(0);
        Scene {
            _a_node: a_node,
            _b_node: b_node,
            b,
            admin,
            group: group.parse().unwrap(),
            tip: tip[0].parse().unwrap(),
            products: serde_json::from_str(&products).unwrap(),
        }
    }

    /// Imports one entry the admin signs at the tip; returns the import's report.
    fn forge(&mut self, ops: Vec<Op>) -> Value {
        let prev: Position = [self.tip].into();
        let p = SignedPayload::sign(&self.admin, &self.group, ops, &prev).unwrap();
        let e = Entry::new(HashAlgorithm::Blake3, p.to_value(), prev, Meta::new()).unwrap();
        let bundle = json!({
            "format": "pg_causal-bundle/1", "group": self.group.to_b64(), "hashAlgorithm": "blake3",
            "entries": [e.to_wire()],
        });
        import(&mut self.b, &serde_json::to_vec(&bundle).unwrap())
    }

    fn schema_op(table: &str, schema: Value) -> Op {
        Op::Schema { table: table.into(), schema }
    }

    /// A new table's schema (modelled on products) under `table`, altered by `f`.
    fn new_table(&self, table: &str, f: impl FnOnce(&mut Value)) -> Op {
        let mut s = self.products.clone();
        s["table"] = json!(table);
        s["check"] = json!([]);
        f(&mut s);
        Scene::schema_op(table, s)
    }

    /// The member's own data and host, untouched.
    fn assert_untouched(&mut self) {
        let secret: String = self.b.query_one("SELECT secret FROM victim WHERE id = 1", &[]).unwrap().get(0);
        assert_eq!(secret, "mine");
        let triggers: i64 = self
            .b
            .query_one(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'products'::regclass \
                 AND tgname IN ('causal_lock', 'causal_no_truncate')",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(triggers, 2);
        let slots: i64 = self.b.query_one("SELECT count(*) FROM pg_replication_slots", &[]).unwrap().get(0);
        assert_eq!(slots, 0);
        assert!(!std::path::Path::new("/tmp/pg_causal_pwned").exists());
    }
}

/// Crafted signed schema entries: SQL text in a CHECK, a default or a table name, functions
/// with side effects, a reserved schema, a foreign key out of the group, non-additive
/// changes. Each is rejected with a reason; nothing of it runs on the member.
#[test]
fn crafted_schema_entries_are_rejected_and_run_nothing() {
    let mut s = Scene::new("ha-schema");
    let attacks: Vec<(&str, Op, &str)> = vec![
        (
            "SQL in a CHECK",
            s.new_table("t1", |v| {
                v["check"] = json!([{"name": "c", "expression": "(true)); DROP TABLE victim; CREATE TABLE pwned (x int); --"}])
            }),
            "CHECK constraint",
        ),
        ("SQL in a table name", s.new_table("t2 (x int); DROP TABLE victim; --", |_| {}), "not a valid name"),
        (
            "a side-effecting CHECK",
            s.new_table("t3", |v| {
                v["check"] = json!([{"name": "c", "expression": "(lo_export(lo_from_bytea(0, '\\x41'::bytea), '/tmp/pg_causal_pwned') > 0)"}])
            }),
            "not among the functions",
        ),
        (
            "query_to_xml in a CHECK",
            s.new_table("t4", |v| {
                v["check"] = json!([{"name": "c", "expression": "(length((query_to_xml('select pg_reload_conf()', true, true, ''))::text) > 0)"}])
            }),
            "not among the functions",
        ),
        (
            "a default that reads a file",
            s.new_table("t5", |v| v["columns"][1]["default"] = json!("pg_read_file('/etc/passwd')")),
            "not among the functions",
        ),
        ("the extension's catalog", s.new_table("causal.peer_addresses", |_| {}), "schema causal"),
        ("a system catalog", s.new_table("pg_catalog.pg_authid", |_| {}), "schema pg_catalog"),
        (
            "a foreign key out of the group",
            s.new_table("t6", |v| {
                v["foreignKeys"] = json!([{"name": "f", "columns": ["sku"], "references": "victim", "referencedColumns": ["id"]}])
            }),
            "not a table of the group",
        ),
        (
            "a CHECK that does not type-check",
            s.new_table("t7", |v| v["check"] = json!([{"name": "c", "expression": "(name > 5)"}])),
            "does not type-check",
        ),
        (
            "a retyped column",
            {
                let mut v = s.products.clone();
                v["columns"][2]["type"] = json!("text");
                Scene::schema_op("products", v)
            },
            "changes or drops existing columns",
        ),
        (
            "a dropped column",
            {
                let mut v = s.products.clone();
                v["columns"].as_array_mut().unwrap().pop();
                v["check"] = json!([]);
                Scene::schema_op("products", v)
            },
            "changes or drops",
        ),
        ("an op for another table's schema", Scene::schema_op("other", s.products.clone()), "holds the schema of products"),
        ("unreplicating a table of no group", Op::Unreplicate { table: "victim".into() }, "not replicated"),
        (
            "a rule that does not parse",
            Op::Rule { table: "products".into(), operation: "insert".into(), rule: "new.nope = 'x'".into() },
            "does not parse",
        ),
    ];
    for (what, op, expected) in attacks {
        let r = s.forge(vec![op]);
        assert_eq!(r["accepted"], 0, "{what}: {r}");
        let why = reasons(&r);
        assert!(why.len() == 1 && why[0].contains(expected), "{what}: {r}");
        s.assert_untouched();
    }
    let tables: i64 =
        s.b.query_one(
            "SELECT count(*) FROM pg_class WHERE relname IN ('pwned', 't1', 't2', 't3', 't4', 't5', 't6', 't7')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
    // A well-formed schema entry still goes through.
    let ok = s.new_table("t8", |_| {});
    let r = s.forge(vec![ok]);
    assert_eq!((r["accepted"].as_i64(), r["rejected"].clone()), (Some(1), json!([])), "{r}");
}

/// A member's own table of the group's table name, even an empty one that matches, is never
/// taken over: the import is refused (42P07) and stores nothing.
#[test]
fn an_existing_table_is_never_adopted() {
    let (a_node, b_node) = (Cluster::start("ha-adopt-a", &[]), Cluster::start("ha-adopt-b", &[]));
    let (mut a, mut b) = (a_node.connect("postgres"), b_node.connect("postgres"));
    a.batch_execute(
        "CREATE EXTENSION pg_causal; COMMIT; SELECT causal.create_group('shop');
         CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL);
         SELECT causal.replicate('shop', 'products');",
    )
    .unwrap();
    b.batch_execute("CREATE EXTENSION pg_causal; CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL)")
        .unwrap();
    let bundle = export(&mut a);
    let err = b.query_one("SELECT causal.import($1)", &[&bundle]).unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42P07"), "{err:?}");
    let n: i64 = b.query_one("SELECT count(*) FROM causal.dag_entries", &[]).unwrap().get(0);
    assert_eq!(n, 0);
    let triggers: i64 =
        b.query_one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'products'::regclass", &[]).unwrap().get(0);
    assert_eq!(triggers, 0);
    b.batch_execute("ALTER TABLE products RENAME TO my_products").unwrap();
    assert_eq!(import(&mut b, &bundle)["rejected"], json!([]));
}

/// A member whose session reads strings the old way (standard_conforming_strings off) imports
/// a CHECK with a backslash in a literal: the constraint means what it meant on the admin's
/// node, and nothing else runs.
#[test]
fn literals_mean_the_same_with_standard_conforming_strings_off() {
    let (a_node, b_node) = (Cluster::start("ha-scs-a", &[]), Cluster::start("ha-scs-b", &[]));
    let (mut a, mut b) = (a_node.connect("postgres"), b_node.connect("postgres"));
    a.batch_execute(
        r"CREATE EXTENSION pg_causal; COMMIT; SELECT causal.create_group('shop');
          CREATE TABLE notes (id int PRIMARY KEY, body text CHECK (body <> 'x\' AND body <> 'y'));
          SELECT causal.replicate('shop', 'notes');",
    )
    .unwrap();
    b.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    let bundle = export(&mut a);
    b.batch_execute("SET standard_conforming_strings = off").unwrap();
    assert_eq!(import(&mut b, &bundle)["rejected"], json!([]));
    b.batch_execute("RESET standard_conforming_strings").unwrap();
    let def = |db: &mut Client| -> String {
        db.query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'notes'::regclass AND contype = 'c'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let (on_a, on_b) = (def(&mut a), def(&mut b));
    assert!(on_a.contains(r"'x\'::text"), "{on_a}");
    assert!(on_b.contains(r"'x\'::text") && on_b.contains("'y'::text"), "{on_b}");
    let tables: i64 = b.query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", &[]).unwrap().get(0);
    assert_eq!(tables, 1);
}

/// Replay writes a member's table with the rights of the table's owner, not the importer's
/// (a superuser here): an index expression of the member's, which refuses to run as a
/// superuser, lets the admin's row in. (Run as the importer, it stopped the import.)
#[test]
fn replay_runs_with_the_table_owners_rights() {
    let mut s = Scene::new("ha-owner");
    s.b.batch_execute(
        "CREATE ROLE app NOLOGIN; ALTER TABLE products OWNER TO app;
         CREATE FUNCTION not_as_superuser(t text) RETURNS text IMMUTABLE LANGUAGE plpgsql AS $$
         BEGIN
           IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
             RAISE EXCEPTION 'ran as superuser %', current_user;
           END IF;
           RETURN t;
         END $$;
         CREATE INDEX products_guard ON products (not_as_superuser(name));",
    )
    .unwrap();
    let insert = Op::Insert {
        table: "products".into(),
        row: json!({"sku": "B", "name": "Gadget", "price": "1.50"}).as_object().cloned().unwrap_or_default(),
    };
    let r = s.forge(vec![insert]);
    assert_eq!((r["accepted"].as_i64(), r["rejected"].clone()), (Some(1), json!([])), "{r}");
    let name: String = s.b.query_one("SELECT name FROM products WHERE sku = 'B'", &[]).unwrap().get(0);
    assert_eq!(name, "Gadget");
    let owner: String =
        s.b.query_one("SELECT tableowner::text FROM pg_tables WHERE tablename = 'products'", &[]).unwrap().get(0);
    assert_eq!(owner, "app");
    s.assert_untouched();
}
