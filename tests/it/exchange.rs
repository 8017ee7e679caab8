//! Export and import between two real databases, and tampered bundles.

use causal_core::entry::{Entry, Meta, Position};
use causal_core::identity::Keypair;
use causal_core::payload::{Op, SignedPayload};
use causal_core::{EntryHash, GroupId, HashAlgorithm};
use causal_integration::postgres::Client;
use causal_integration::{node_identity, sqlstate, Cluster, ENTRY_PREV};
use serde_json::{json, Value};

fn rows(db: &mut Client) -> Vec<(String, String, String)> {
    db.query("SELECT sku, name, coalesce(price::text, 'NULL') FROM products ORDER BY sku", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn frontier(db: &mut Client) -> Vec<String> {
    db.batch_execute("SELECT causal.catch_up()").unwrap();
    db.query_one("SELECT causal.frontier('shop')", &[]).unwrap().get(0)
}

fn export(db: &mut Client, since: Option<Vec<String>>) -> Vec<u8> {
    db.query_one("SELECT causal.export('shop', $1)", &[&since]).unwrap().get(0)
}

fn import(db: &mut Client, bundle: &[u8]) -> Value {
    let s: String = db.query_one("SELECT causal.import($1)::text", &[&bundle]).unwrap().get(0);
    serde_json::from_str(&s).unwrap()
}

/// Five entries: genesis, schema, and three transactions (each statement commits alone).
fn setup_a(db: &mut Client) {
    for stmt in [
        "CREATE EXTENSION pg_causal",
        "SELECT causal.create_group('shop')",
        "CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2) CHECK (price >= 0))",
        "SELECT causal.replicate('shop', 'products')",
        "INSERT INTO products VALUES ('A', 'Widget', 9.99), ('B', 'Gadget', 0.50)",
        "UPDATE products SET price = NULL WHERE sku = 'B'",
        "INSERT INTO products VALUES ('C', 'it''s \\ quoted', 1)",
    ] {
        db.batch_execute(stmt).unwrap();
    }
}

#[test]
fn history_moves_between_databases() {
    let (a_node, b_node) = (Cluster::start("xa", &[]), Cluster::start("xb", &[]));
    let (mut a, mut b) = (a_node.connect("postgres"), b_node.connect("postgres"));
    setup_a(&mut a);
    b.batch_execute("CREATE EXTENSION pg_causal").unwrap();

    let r = import(&mut b, &export(&mut a, None));
    assert_eq!(r["accepted"], 5, "{r}");
    assert_eq!(
        (r["replayed"].as_i64(), r["rewound"].as_i64(), r["cancelled"].as_i64()),
        (Some(5), Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(r["rejected"], json!([]), "{r}");
    assert_eq!(rows(&mut a), rows(&mut b));
    assert_eq!(frontier(&mut a), frontier(&mut b));
    let ok: bool = b.query_one("SELECT causal.verify('shop')", &[]).unwrap().get(0);
    assert!(ok);
    let described: String = b.query_one("SELECT causal.describe('products')::text", &[]).unwrap().get(0);
    let described_a: String = a.query_one("SELECT causal.describe('products')::text", &[]).unwrap().get(0);
    assert_eq!(described, described_a);

    // Again: everything is a duplicate and nothing changes.
    let r = import(&mut b, &export(&mut a, None));
    assert_eq!((r["accepted"].as_i64(), r["duplicates"].as_i64()), (Some(0), Some(5)), "{r}");

    // Incremental: only what B lacks.
    a.batch_execute("BEGIN; DELETE FROM products WHERE sku = 'A'; INSERT INTO products VALUES ('D', 'new', 3); COMMIT")
        .unwrap();
    let since = frontier(&mut b);
    let r = import(&mut b, &export(&mut a, Some(since)));
    assert_eq!(
        (r["accepted"].as_i64(), r["duplicates"].as_i64(), r["replayed"].as_i64()),
        (Some(1), Some(0), Some(1)),
        "{r}"
    );
    assert_eq!(rows(&mut a), rows(&mut b));
}

/// A rule entry recorded after the schema must not hide the schema at later positions.
#[test]
fn rules_between_schema_and_rows_import_cleanly() {
    let (a_node, b_node) = (Cluster::start("xr-a", &[]), Cluster::start("xr-b", &[]));
    let (mut a, mut b) = (a_node.connect("postgres"), b_node.connect("postgres"));
    setup_a(&mut a);
    a.batch_execute("SELECT causal.allow('products', 'insert', 'true')").unwrap();
    a.batch_execute("INSERT INTO products VALUES ('E', 'after the rule', 2)").unwrap();
    b.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    let r = import(&mut b, &export(&mut a, None));
    assert_eq!(r["rejected"], json!([]), "{r}");
    assert_eq!(rows(&mut a), rows(&mut b));
    let rule: String = b.query_one("SELECT rule FROM causal.table_rules", &[]).unwrap().get(0);
    assert_eq!(rule, "true");
}

#[test]
fn a_malformed_bundle_stores_nothing() {
    let node = Cluster::start("xbad", &[]);
    let mut db = node.connect("postgres");
    db.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    for bundle in [
        b"garbage".to_vec(),
        br#"{"format":"pg_causal-bundle/1","group":"x","hashAlgorithm":"blake3","entries":[{"hash":1}]}"#.to_vec(),
    ] {
        let err = db.query_one("SELECT causal.import($1)", &[&bundle]).unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("22023"), "{err:?}");
    }
    let n: i64 = db.query_one("SELECT count(*) FROM causal.dag_entries", &[]).unwrap().get(0);
    assert_eq!(n, 0);
}

/// A bundle from A, with entries appended or altered by hand.
struct Forge {
    group: GroupId,
    alg: HashAlgorithm,
    bundle: Value,
}

impl Forge {
    fn from(bytes: &[u8]) -> Forge {
        let bundle: Value = serde_json::from_slice(bytes).unwrap();
        Forge { group: bundle["group"].as_str().unwrap().parse().unwrap(), alg: HashAlgorithm::Blake3, bundle }
    }

    fn entries(&mut self) -> &mut Vec<Value> {
        self.bundle["entries"].as_array_mut().unwrap()
    }

    fn last_hash(&mut self) -> EntryHash {
        self.entries().last().unwrap()["hash"].as_str().unwrap().parse().unwrap()
    }

    /// Appends an entry signed by `key` at `prev`, with hashes made right.
    fn push_signed(&mut self, key: &Keypair, ops: Vec<Op>, prev: Position) -> EntryHash {
        let p = SignedPayload::sign(key, &self.group, ops, &prev).unwrap();
        let e = Entry::new(self.alg, p.to_value(), prev, Meta::new()).unwrap();
        self.entries().push(e.to_wire());
        e.hash
    }

    /// Appends an entry of `key`'s without a signature, for a later one of `key`'s to cover.
    fn push_unsigned(&mut self, key: &Keypair, ops: Vec<Op>, prev: Position) -> EntryHash {
        let p = SignedPayload::unsigned(key.public().key_id(), ops);
        let e = Entry::new(self.alg, p.to_value(), prev, Meta::new()).unwrap();
        self.entries().push(e.to_wire());
        e.hash
    }

    fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.bundle).unwrap()
    }
}

/// An entry may go unsigned only when a later signed entry of its own author, in the same
/// bundle, covers it: a run covered so is stored; an entry nobody covers, one "covered" by
/// another author's signature, and a run longer than the bound are refused.
#[test]
fn unsigned_entries_need_their_authors_signature_after_them() {
    let (a_node, b_node) = (Cluster::start("xu-a", &[]), Cluster::start("xu-b", &[]));
    let (mut a, mut b) = (a_node.connect("postgres"), b_node.connect("postgres"));
    setup_a(&mut a);
    b.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    let admin_secret: Vec<u8> =
        a.query_one("SELECT secret_key FROM causal.identity_keys WHERE is_node", &[]).unwrap().get(0);
    let admin = Keypair::from_secret_bytes(&admin_secret).unwrap();
    a.batch_execute("SELECT causal.create_identity('bob')").unwrap();
    let (bob_pk, bob_secret): (String, Vec<u8>) = {
        let r = a.query_one("SELECT i.public_key, k.secret_key FROM causal.identities i JOIN causal.identity_keys k USING (name) WHERE name = 'bob'", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    let bob = Keypair::from_secret_bytes(&bob_secret).unwrap();
    a.execute("SELECT causal.add_member('shop', $1, 'bob')", &[&bob_pk]).unwrap();
    let clean = export(&mut a, None);
    let r = import(&mut b, &clean);
    assert_eq!(reasons(&r).len(), 0, "{r}");

    // A run of two unsigned entries and the signed one that covers them.
    let mut f = Forge::from(&clean);
    let tip = f.last_hash();
    let u1 = f.push_unsigned(&admin, vec![insert_op("u1")], [tip].into());
    let u2 = f.push_unsigned(&admin, vec![insert_op("u2")], [u1].into());
    f.push_signed(&admin, vec![insert_op("s3")], [u2].into());
    let r = import(&mut b, &f.bytes());
    assert_eq!((r["accepted"].as_i64(), reasons(&r).len()), (Some(3), 0), "{r}");

    // Unsigned, with nothing after it.
    let mut f = Forge::from(&export(&mut b, None));
    let tip = f.last_hash();
    f.push_unsigned(&admin, vec![insert_op("alone")], [tip].into());
    let r = import(&mut b, &f.bytes());
    let why = reasons(&r);
    assert_eq!(why.len(), 1, "{r}");
    assert!(why[0].contains("covers it"), "{r}");

    // Claiming the admin, followed by bob's signed entry: bob cannot vouch for the admin.
    let mut f = Forge::from(&export(&mut b, None));
    let tip = f.last_hash();
    let claimed = f.push_unsigned(&admin, vec![insert_op("claimed")], [tip].into());
    f.push_signed(&bob, vec![insert_op("bobs")], [claimed].into());
    let r = import(&mut b, &f.bytes());
    let why = reasons(&r);
    assert_eq!(why.len(), 2, "{r}");
    assert!(why.iter().any(|w| w.contains("covers it")), "{r}");

    // A run of 256 unsigned entries: the bound is 255.
    let mut f = Forge::from(&export(&mut b, None));
    let mut tip = f.last_hash();
    for i in 0..256 {
        tip = f.push_unsigned(&admin, vec![insert_op(&format!("run{i}"))], [tip].into());
    }
    f.push_signed(&admin, vec![insert_op("run-end")], [tip].into());
    let r = import(&mut b, &f.bytes());
    let why = reasons(&r);
    assert!(why.iter().any(|w| w.contains("in a row")), "{r}");
    let forged: i64 = b
        .query_one("SELECT count(*) FROM products WHERE sku IN ('alone', 'claimed', 'bobs') OR sku LIKE 'run%'", &[])
        .unwrap()
        .get(0);
    assert_eq!(forged, 0);
    assert!(b.query_one("SELECT causal.verify('shop')", &[]).unwrap().get::<_, bool>(0));
}

fn insert_op(sku: &str) -> Op {
    Op::Insert { table: "products".into(), row: json!({"sku": sku, "name": "forged"}).as_object().cloned().unwrap() }
}

fn reasons(r: &Value) -> Vec<String> {
    r["rejected"].as_array().unwrap().iter().map(|x| x["reason"].as_str().unwrap().to_string()).collect()
}

#[test]
fn tampered_bundles_are_rejected_and_nothing_valid_is_lost() {
    let (a_node, b_node) = (Cluster::start("xt-a", &[]), Cluster::start("xt-b", &[]));
    let (mut a, mut b) = (a_node.connect("postgres"), b_node.connect("postgres"));
    setup_a(&mut a);
    b.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    let admin_secret: Vec<u8> =
        a.query_one("SELECT secret_key FROM causal.identity_keys WHERE is_node", &[]).unwrap().get(0);
    let admin = Keypair::from_secret_bytes(&admin_secret).unwrap();
    let clean = export(&mut a, None);

    // 1. A flipped byte in a payload: that entry and what follows it are rejected, and so are
    //    the unsigned entries its signature was to cover (A sealed its three transactions in
    //    one run: the last one carries the run's signature).
    let mut f = Forge::from(&clean);
    let last = f.entries().len() - 1;
    f.entries()[last]["payload"]["ops"][0]["row"]["name"] = json!("it's \\ quotex");
    let r = import(&mut b, &f.bytes());
    assert_eq!(r["accepted"], 2, "{r}");
    let why = reasons(&r);
    assert!(why[0].contains("payload hash mismatch"), "{r}");
    assert!(why[1..].iter().all(|w| w.contains("covers it")) && why.len() == 3, "{r}");
    // The valid prefix arrived; importing the clean bundle now completes it.
    let r = import(&mut b, &clean);
    assert_eq!(r["accepted"], 3, "{r}");
    assert_eq!(rows(&mut a), rows(&mut b));

    // 1b. A payload that is no JSON value (a lone surrogate escape): entries keep their
    //     payloads as text until they are checked, so that entry is refused then, alone,
    //     and the entries before it are stored (a whole-bundle parse had refused them all).
    let mut f = Forge::from(&clean);
    let tip = f.last_hash();
    f.push_signed(&admin, vec![insert_op("S")], [tip].into());
    let text = String::from_utf8(f.bytes()).unwrap();
    let at = text.rfind("\"payload\":{").unwrap() + "\"payload\":{".len();
    let broken = format!("{}\"x\":\"\\udbbb\",{}", &text[..at], &text[at..]);
    let r = import(&mut b, broken.as_bytes());
    assert_eq!((r["accepted"].as_i64(), r["duplicates"].as_i64()), (Some(0), Some(5)), "{r}");
    let why = reasons(&r);
    assert_eq!(why.len(), 1, "{r}");
    assert!(why[0].contains("payload is not JSON"), "{r}");

    // 2. Right hashes, wrong signature (signed by someone else, claiming the admin).
    let mut f = Forge::from(&clean);
    let tip = f.last_hash();
    let mallory = Keypair::generate();
    let p = SignedPayload::sign(&mallory, &f.group, vec![insert_op("M")], &[tip].into()).unwrap();
    let mut v = p.to_value();
    v["author"] = json!(admin.public().key_id().to_b64());
    let e = Entry::new(f.alg, v, [tip].into(), Meta::new()).unwrap();
    f.entries().push(e.to_wire());
    // A dependent of the forged entry.
    let forged = e.hash;
    f.push_signed(&admin, vec![insert_op("N")], [forged].into());
    let r = import(&mut b, &f.bytes());
    let why = reasons(&r);
    assert_eq!(why.len(), 2, "{r}");
    assert!(why[0].contains("signature does not verify"), "{r}");
    assert!(why[1].contains("depends on rejected entry"), "{r}");

    // 3. An unknown author.
    let mut f = Forge::from(&clean);
    let tip = f.last_hash();
    f.push_signed(&mallory, vec![insert_op("M")], [tip].into());
    let r = import(&mut b, &f.bytes());
    assert!(reasons(&r)[0].contains("not a live member"), "{r}");

    // 4. A missing predecessor.
    let mut f = Forge::from(&clean);
    let ghost = EntryHash(HashAlgorithm::Blake3.digest(b"ghost"));
    f.push_signed(&admin, vec![insert_op("G")], [ghost].into());
    let r = import(&mut b, &f.bytes());
    assert!(reasons(&r)[0].contains("missing predecessor"), "{r}");

    // 5. A signed operation replayed at another position: same payload, different prev.
    let mut f = Forge::from(&clean);
    let entries = f.entries().clone();
    let second_to_last: EntryHash = entries[entries.len() - 2]["hash"].as_str().unwrap().parse().unwrap();
    let tip = f.last_hash();
    let signed_at_tip = SignedPayload::sign(&admin, &f.group, vec![insert_op("R")], &[tip].into()).unwrap();
    let replayed = Entry::new(f.alg, signed_at_tip.to_value(), [second_to_last].into(), Meta::new()).unwrap();
    f.entries().push(replayed.to_wire());
    let r = import(&mut b, &f.bytes());
    assert!(reasons(&r)[0].contains("signature does not verify"), "{r}");

    // 6. A removed member's later entry. Bob is added, then removed; an entry bob signs
    //    after the removal is refused, while one he signed before it stays valid.
    a.batch_execute("SELECT causal.create_identity('bob')").unwrap();
    let (bob_pk, bob_secret): (String, Vec<u8>) = {
        let r = a.query_one("SELECT i.public_key, k.secret_key FROM causal.identities i JOIN causal.identity_keys k USING (name) WHERE name = 'bob'", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    let bob = Keypair::from_secret_bytes(&bob_secret).unwrap();
    a.execute("SELECT causal.add_member('shop', $1, 'bob')", &[&bob_pk]).unwrap();
    let mut f = Forge::from(&export(&mut a, None));
    let after_add = f.last_hash();
    let before_removal = f.push_signed(&bob, vec![insert_op("bob1")], [after_add].into());
    let removal =
        f.push_signed(&admin, vec![Op::RemoveMember { key_id: bob.public().key_id() }], [before_removal].into());
    f.push_signed(&bob, vec![insert_op("bob2")], [removal].into());
    let r = import(&mut b, &f.bytes());
    let why = reasons(&r);
    assert_eq!(why.len(), 1, "{r}");
    assert!(why[0].contains("not a live member"), "{r}");
    let skus: Vec<String> =
        b.query("SELECT sku FROM products WHERE name = 'forged'", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(skus, vec!["bob1"]);

    // 7. A long bundle, checked on other threads a chunk (256 entries) at a time while the
    //    backend stores the chunks before, and in the backend alone, with a tampered entry in
    //    its third chunk: the 400 entries before it are stored; it and its 299 dependents are
    //    refused, across chunk boundaries.
    for threads in [2, 0] {
        b.batch_execute(&format!("SET causal.verify_threads = {threads}")).unwrap();
        let mut f = Forge::from(&export(&mut a, None));
        let mut tip = f.last_hash();
        for i in 0..700 {
            tip = f.push_signed(&admin, vec![insert_op(&format!("long{threads}-{i}"))], [tip].into());
        }
        let bad = f.entries().len() - 300;
        f.entries()[bad]["payload"]["ops"][0]["row"]["name"] = json!("tampered");
        let r = import(&mut b, &f.bytes());
        let why = reasons(&r);
        assert_eq!(why.len(), 300, "{r}");
        assert!(why[0].contains("payload hash mismatch"), "{r}");
        assert!(why[1..].iter().all(|w| w.contains("depends on rejected entry")), "{r}");
        let stored: i64 = b
            .query_one("SELECT count(*) FROM products WHERE sku LIKE $1", &[&format!("long{threads}-%")])
            .unwrap()
            .get(0);
        assert_eq!(stored, 400);
    }
    // 8. A member's values that Postgres would refuse (replay casts them): each such entry is
    //    refused, alone, and the import goes on (before, they reached replay's cast, whose
    //    error failed the whole import).
    let mut f = Forge::from(&export(&mut a, None));
    let tip = f.last_hash();
    let row = |v: Value| Op::Insert { table: "products".into(), row: v.as_object().cloned().unwrap() };
    f.push_signed(&admin, vec![row(json!({"sku": "P", "name": "too dear", "price": "123456789012"}))], [tip].into());
    f.push_signed(&admin, vec![row(json!({"sku": "Q", "name": "nul \u{0} inside"}))], [tip].into());
    f.push_signed(&admin, vec![row(json!({"sku": "V", "name": "valid", "price": "12345678.99"}))], [tip].into());
    let r = import(&mut b, &f.bytes());
    let why = reasons(&r);
    assert_eq!((r["accepted"].as_i64(), why.len()), (Some(1), 2), "{r}");
    assert!(why[0].contains("price") && why[0].contains("numeric(10,2)"), "{r}");
    assert!(why[1].contains("NUL"), "{r}");
    let price: String = b.query_one("SELECT price::text FROM products WHERE sku = 'V'", &[]).unwrap().get(0);
    assert_eq!(price, "12345678.99");

    let ok: bool = b.query_one("SELECT causal.verify('shop')", &[]).unwrap().get(0);
    assert!(ok);
}

/// Every supported type, with values that a lossy or re-parsing replay would change, arrives
/// identical (each column compared as text), and an update and a NULL arrive too.
#[test]
fn every_supported_type_replays_exactly() {
    let (a_node, b_node) = (Cluster::start("ta", &[]), Cluster::start("tb", &[]));
    let (mut a, mut b) = (a_node.connect("postgres"), b_node.connect("postgres"));
    for stmt in [
        "CREATE EXTENSION pg_causal",
        "SELECT causal.create_group('shop')",
        "CREATE TABLE typed (id bigint PRIMARY KEY, t text, v varchar(12), s smallint, i integer, \
         n numeric(12,4), d double precision, r real, b boolean, dt date, ts timestamp, tz timestamptz, \
         u uuid, by bytea, j jsonb)",
        "SELECT causal.replicate('shop', 'typed')",
        "INSERT INTO typed VALUES (9007199254740993, E'line\\n\"quoted\" \\\\ ünï', 'short', -32768, 2147483647, \
         -12345678.1200, 0.1, 3.4028235e38, true, '2024-02-29', '2024-02-29 23:59:59.123456', \
         '2024-02-29 23:59:59.123456+05:30', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10', \
         '{\"k\": [1, 2.50, \"x\"], \"n\": null}')",
        "INSERT INTO typed (id, j) VALUES (2, '\"just a string\"')",
        "INSERT INTO typed (id) VALUES (3)",
        "UPDATE typed SET t = 'changed', by = '\\x' WHERE id = 2",
    ] {
        a.batch_execute(stmt).unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    b.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    let bundle: Vec<u8> = a.query_one("SELECT causal.export('shop')", &[]).unwrap().get(0);
    let r = import(&mut b, &bundle);
    assert_eq!(r["rejected"], json!([]), "{r}");
    let text = |db: &mut Client| -> Vec<String> {
        db.query("SELECT x::text FROM typed x ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect()
    };
    let (at_a, at_b) = (text(&mut a), text(&mut b));
    assert_eq!(at_a.len(), 3);
    assert_eq!(at_a, at_b);
}

/// An import in a transaction that has already written the group's tables is refused: replay
/// would overwrite rows whose entry is only made at commit. Nothing is stored, and the same
/// import succeeds on its own. Writes after an import in one transaction are fine.
#[test]
fn an_import_after_writes_to_the_group_in_the_same_transaction_is_refused() {
    let (a_node, b_node) = (Cluster::start("xwa", &[]), Cluster::start("xwb", &[]));
    let (mut a, mut b) = (a_node.connect("postgres"), b_node.connect("postgres"));
    setup_a(&mut a);
    b.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    let (b_key, _) = node_identity(&mut b);
    a.execute("SELECT causal.add_member('shop', $1)", &[&b_key]).unwrap();
    let r = import(&mut b, &export(&mut a, None));
    assert_eq!(r["rejected"], json!([]), "{r}");
    let since = frontier(&mut a);
    a.batch_execute("INSERT INTO products VALUES ('X', 'remote', 1)").unwrap();
    let bundle = export(&mut a, Some(since));

    let mut tx = b.transaction().unwrap();
    tx.batch_execute("INSERT INTO products VALUES ('X', 'local', 2)").unwrap();
    let err = tx.query_one("SELECT causal.import($1)::text", &[&bundle]).unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25000"), "{err}");
    let message = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(message.contains("already written replicated tables of group shop"), "{message}");
    tx.rollback().unwrap();

    let before: i64 = b.query_one("SELECT count(*) FROM causal.dag_entries", &[]).unwrap().get(0);
    let r = import(&mut b, &bundle);
    assert_eq!(r["accepted"], 1, "{r}");
    let after: i64 = b.query_one("SELECT count(*) FROM causal.dag_entries", &[]).unwrap().get(0);
    assert_eq!(after, before + 1);
    assert_eq!(rows(&mut b).iter().find(|r| r.0 == "X").map(|r| r.1.clone()), Some("remote".to_string()));

    // Writes after an import in the same transaction are captured after the imported history.
    let since = frontier(&mut a);
    a.batch_execute("INSERT INTO products VALUES ('Z', 'remote', 1)").unwrap();
    let bundle = export(&mut a, Some(since));
    let z_hash = frontier(&mut a);
    let mut tx = b.transaction().unwrap();
    tx.query_one("SELECT causal.import($1)::text", &[&bundle]).unwrap();
    tx.batch_execute("INSERT INTO products VALUES ('Y', 'local', 2)").unwrap();
    tx.commit().unwrap();
    b.batch_execute("SELECT causal.catch_up()").unwrap();
    let prev: Vec<String> = b
        .query_one(&format!("SELECT {ENTRY_PREV} FROM causal.entries e ORDER BY e.node_id DESC LIMIT 1"), &[])
        .unwrap()
        .get(0);
    assert_eq!(prev, z_hash, "the local entry follows the imported one");
    let skus: Vec<String> = rows(&mut b).into_iter().map(|r| r.0).collect();
    assert!(skus.contains(&"Y".to_string()) && skus.contains(&"Z".to_string()), "{skus:?}");
    let not_ok: i64 = b.query_one("SELECT count(*) FROM causal.log('shop') WHERE status <> 'ok'", &[]).unwrap().get(0);
    assert_eq!(not_ok, 0);
}

/// A table that already holds rows when it is replicated brings them into the group: another
/// database that imports the history gets the table with its rows.
#[test]
fn replicating_a_table_with_rows_brings_them_to_other_databases() {
    let (a_node, b_node) = (Cluster::start("xra", &[]), Cluster::start("xrb", &[]));
    let (mut a, mut b) = (a_node.connect("postgres"), b_node.connect("postgres"));
    a.batch_execute(
        "CREATE EXTENSION pg_causal;
         SELECT causal.create_group('shop');
         CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2) CHECK (price >= 0));
         INSERT INTO products SELECT 'k' || i, 'item ' || i, i FROM generate_series(1, 500) i;",
    )
    .unwrap();
    a.batch_execute("SELECT causal.replicate('shop', 'products')").unwrap();
    b.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    let r = import(&mut b, &export(&mut a, None));
    assert_eq!(r["rejected"], json!([]), "{r}");
    assert_eq!(r["cancelled"], 0, "{r}");
    let (at_a, at_b) = (rows(&mut a), rows(&mut b));
    assert_eq!(at_a.len(), 500);
    assert_eq!(at_a, at_b);
}

/// An importing database may already have a table of the same name: whatever its shape or
/// rows, it is not taken over (42P07) and nothing is stored (tests/it/hostile_admin.rs has the
/// empty matching case). Once the local table is renamed, the import creates the group's.
#[test]
fn an_existing_table_is_refused() {
    let (a_node, b_node) = (Cluster::start("xta", &[]), Cluster::start("xtb", &[]));
    let (mut a, mut b) = (a_node.connect("postgres"), b_node.connect("postgres"));
    setup_a(&mut a);
    let bundle = export(&mut a, None);
    b.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    let entries =
        |b: &mut Client| -> i64 { b.query_one("SELECT count(*) FROM causal.dag_entries", &[]).unwrap().get(0) };
    let code = |b: &mut Client| {
        let err = b.query_one("SELECT causal.import($1)::text", &[&bundle]).unwrap_err();
        sqlstate(&err)
    };

    b.batch_execute("CREATE TABLE products (sku text PRIMARY KEY, name text)").unwrap();
    assert_eq!(code(&mut b).as_deref(), Some("42P07"), "a table of another shape");
    assert_eq!(entries(&mut b), 0);

    b.batch_execute(
        "DROP TABLE products;
         CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2) CHECK (price >= 0));
         INSERT INTO products VALUES ('L', 'local only', 1);",
    )
    .unwrap();
    assert_eq!(code(&mut b).as_deref(), Some("42P07"), "a table that holds rows");
    assert_eq!(entries(&mut b), 0);

    b.batch_execute("ALTER TABLE products RENAME TO local_products").unwrap();
    let r = import(&mut b, &bundle);
    assert_eq!(r["accepted"], 5, "{r}");
    assert_eq!(rows(&mut a), rows(&mut b));
    let kept: i64 = b.query_one("SELECT count(*) FROM local_products", &[]).unwrap().get(0);
    assert_eq!(kept, 1);
}

/// A row written into a replicated table outside pg_causal (triggers off, so it has no entry)
/// whose key a remote insert then uses: the import does not fail on the key, and the table
/// takes the group's row, as the view has it. (Rows new to the view are inserted without
/// ON CONFLICT; a clash rolls that back and upserts.)
#[test]
fn an_import_replaces_a_stray_row_with_the_views() {
    let (a_node, b_node) = (Cluster::start("xs-a", &[]), Cluster::start("xs-b", &[]));
    let (mut a, mut b) = (a_node.connect("postgres"), b_node.connect("postgres"));
    setup_a(&mut a);
    b.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    assert_eq!(import(&mut b, &export(&mut a, None))["rejected"], json!([]));
    b.batch_execute(
        "SET session_replication_role = replica; INSERT INTO products VALUES ('S', 'stray', 5), ('T', 'other', 6); \
         RESET session_replication_role",
    )
    .unwrap();
    let since = frontier(&mut a);
    a.batch_execute("INSERT INTO products VALUES ('S', 'from a', 1), ('U', 'also from a', 2)").unwrap();
    let r = import(&mut b, &export(&mut a, Some(since)));
    assert_eq!((r["accepted"].as_i64(), r["cancelled"].as_i64()), (Some(1), Some(0)), "{r}");
    let mut expected = rows(&mut a);
    expected.push(("T".into(), "other".into(), "6.00".into())); // outside the group, untouched
    expected.sort();
    assert_eq!(rows(&mut b), expected);
}
