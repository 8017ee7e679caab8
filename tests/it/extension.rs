//! The extension skeleton in a real cluster, seen from a client.

use causal_integration::postgres::Client;
use causal_integration::{sqlstate, Cluster};

fn node_with_extension(name: &str) -> (Cluster, Client) {
    let node = Cluster::start(name, &[]);
    let mut db = node.connect("postgres");
    db.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    (node, db)
}

#[test]
fn create_extension_makes_a_fixed_causal_schema() {
    let (_node, mut db) = node_with_extension("skeleton");

    let version: String = db.query_one("SELECT causal.version()", &[]).unwrap().get(0);
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    let (schema, relocatable): (String, bool) = {
        let row = db
            .query_one(
                "SELECT n.nspname, e.extrelocatable FROM pg_extension e \
                 JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_causal'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(schema, "causal");
    assert!(!relocatable);

    let err = db.batch_execute("CREATE SCHEMA elsewhere; ALTER EXTENSION pg_causal SET SCHEMA elsewhere").unwrap_err();
    let msg = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_else(|| err.to_string());
    assert!(msg.contains("does not support SET SCHEMA"), "{msg}");

    db.batch_execute("DROP EXTENSION pg_causal").unwrap();
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE proname = 'hash' AND pronamespace::regnamespace::text = 'causal'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[test]
fn hash_errors_reach_the_client_with_sqlstate_and_hint() {
    let (_node, mut db) = node_with_extension("skeleton-errors");

    let h: String = db.query_one("SELECT causal.hash('{\"op\":\"hello\"}'::jsonb, 'sha-256')", &[]).unwrap().get(0);
    let again: String =
        db.query_one("SELECT causal.hash('{ \"op\" : \"hello\" }'::jsonb, 'sha-256')", &[]).unwrap().get(0);
    assert_eq!(h, again);
    assert_eq!(h.len(), 44);

    for (sql, needle) in [
        ("SELECT causal.hash('1'::jsonb, 'md5')", "unknown hash algorithm \"md5\""),
        ("SELECT causal.hash('[1e400]'::jsonb)", "is not finite"),
        ("SELECT causal.hash('{\"a\": null}'::jsonb)", "null is not a valid literal (at $.a)"),
    ] {
        let err = db.query_one(sql, &[]).unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("22023"), "{sql}: {err}");
        let db_err = err.as_db_error().unwrap();
        assert!(db_err.message().contains(needle), "{sql}: {}", db_err.message());
        assert!(db_err.hint().is_some(), "{sql} has no hint");
    }
    // The session is still usable after the errors.
    let one: i32 = db.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
}

/// Removing pg_causal from a table or from the database leaves the user's tables as plain
/// tables, with their rows, constraints and indexes, writable as before.
#[test]
fn removal_leaves_plain_tables_with_their_data() {
    let (_node, mut db) = node_with_extension("removal");
    db.batch_execute(
        "SELECT causal.create_group('g');
         CREATE TABLE kept (id int PRIMARY KEY, v text CHECK (v <> 'x'));
         CREATE TABLE dropped (id int PRIMARY KEY, kept_id int REFERENCES kept (id));
         SELECT causal.replicate('g', 'kept'); SELECT causal.replicate('g', 'dropped');
         INSERT INTO kept VALUES (1, 'a'), (2, 'b'); INSERT INTO dropped VALUES (10, 1);",
    )
    .unwrap();
    let shape = |db: &mut Client, table: &str| -> (i64, i64, i64) {
        let row = db
            .query_one(
                "SELECT (SELECT count(*) FROM pg_constraint WHERE conrelid = $1::text::regclass), \
                        (SELECT count(*) FROM pg_index WHERE indrelid = $1::text::regclass), \
                        (SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::text::regclass AND tgname LIKE 'causal_%')",
                &[&table],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(shape(&mut db, "kept").2, 2, "capture triggers while replicated (no rules: no row trigger)");
    db.batch_execute("SELECT causal.allow('kept', 'insert', 'new.id > 0')").unwrap();
    assert_eq!(shape(&mut db, "kept").2, 3, "the row trigger comes with the first rule");

    // Out of the group, one table: a plain table again.
    db.batch_execute("SELECT causal.unreplicate('dropped')").unwrap();
    assert_eq!(shape(&mut db, "dropped"), (2, 1, 0));
    db.batch_execute("INSERT INTO dropped VALUES (11, 2)").unwrap();

    // A plain DROP EXTENSION names what depends on it; with CASCADE only pg_causal's
    // triggers go, and the tables stay whole.
    let err = db.batch_execute("DROP EXTENSION pg_causal").unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("2BP01"), "{err:?}");
    db.batch_execute("DROP EXTENSION pg_causal CASCADE").unwrap();
    assert_eq!(shape(&mut db, "kept"), (2, 1, 0));
    let rows: i64 = db.query_one("SELECT count(*) FROM kept", &[]).unwrap().get(0);
    assert_eq!(rows, 2);
    db.batch_execute("INSERT INTO kept VALUES (3, 'c')").unwrap();
    let refused = db.batch_execute("INSERT INTO kept VALUES (4, 'x')").unwrap_err();
    assert_eq!(sqlstate(&refused).as_deref(), Some("23514"), "the CHECK constraint stays");
    // Nothing of pg_causal's is left; Postgres keeps the schema it created for the extension,
    // empty, as it does for every extension whose control file names one.
    let left: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'causal'::regnamespace) \
                  + (SELECT count(*) FROM pg_proc WHERE pronamespace = 'causal'::regnamespace)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[test]
fn leaving_a_group_keeps_its_tables_as_plain_tables() {
    let (node, mut db) = node_with_extension("leave");
    db.batch_execute(
        "SELECT causal.create_group('g'); SELECT causal.create_group('other');
         CREATE TABLE kept (id int PRIMARY KEY, v text CHECK (v <> 'x'));
         CREATE TABLE elsewhere (id int PRIMARY KEY);
         SELECT causal.replicate('g', 'kept'); SELECT causal.replicate('other', 'elsewhere');
         SELECT causal.allow('kept', 'insert', 'new.id > 0');
         INSERT INTO kept VALUES (1, 'a'), (2, 'b'); INSERT INTO elsewhere VALUES (1);
         SELECT causal.catch_up();",
    )
    .unwrap();
    // Another session knows the group.
    let mut other = node.connect("postgres");
    other.batch_execute("SELECT count(*) FROM causal.log('g')").unwrap();

    db.batch_execute("SELECT causal.leave_group('g')").unwrap();

    let (triggers, identity): (i64, String) = {
        let row = db
            .query_one(
                "SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'kept'::regclass AND tgname LIKE 'causal_%'), \
                        (SELECT relreplident::text FROM pg_class WHERE oid = 'kept'::regclass)",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((triggers, identity.as_str()), (0, "d"), "a plain table again");
    let rows: i64 = db.query_one("SELECT count(*) FROM kept", &[]).unwrap().get(0);
    assert_eq!(rows, 2);
    let refused = db.batch_execute("INSERT INTO kept VALUES (3, 'x')").unwrap_err();
    assert_eq!(sqlstate(&refused).as_deref(), Some("23514"), "the CHECK constraint stays");
    let left: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM causal.groups WHERE name = 'g') \
                  + (SELECT count(*) FROM causal.replicated_tables WHERE table_name = 'kept') \
                  + (SELECT count(*) FROM causal.placed_rows WHERE table_name = 'kept')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "nothing of the group is left");

    // Writes to it are plain writes now; the other group goes on.
    let entries = |db: &mut Client| -> i64 {
        db.batch_execute("SELECT causal.catch_up()").unwrap();
        db.query_one("SELECT count(*) FROM causal.dag_entries", &[]).unwrap().get(0)
    };
    let before = entries(&mut db);
    db.batch_execute("INSERT INTO kept VALUES (4, 'd')").unwrap();
    assert_eq!(entries(&mut db), before);
    db.batch_execute("INSERT INTO elsewhere VALUES (2)").unwrap();
    assert_eq!(entries(&mut db), before + 1);

    // The other session no longer finds the group; the name can be used again.
    let err = other.batch_execute("SELECT count(*) FROM causal.log('g')").unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42704"), "{err:?}");
    db.batch_execute("SELECT causal.create_group('g'); SELECT causal.replicate('g', 'kept')").unwrap();
    let rejoined = entries(&mut db);
    db.batch_execute("INSERT INTO kept VALUES (5, 'e')").unwrap();
    assert_eq!(entries(&mut db), rejoined + 1);
}
