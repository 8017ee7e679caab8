//! Upgrades: every released version's SQL (`sql/released/pg_causal--<v>.sql`), brought to the
//! current version with `ALTER EXTENSION pg_causal UPDATE` through the scripts in `sql/`, gives
//! the catalog a fresh install gives, and keeps every group, entry and key.

use std::path::PathBuf;

use causal_integration::postgres::Client;
use causal_integration::Cluster;

const CURRENT: &str = env!("CARGO_PKG_VERSION");

/// The released versions whose SQL the repository keeps.
fn released() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sql/released");
    let mut versions: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|f| f.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("pg_causal--")?.strip_suffix(".sql").map(str::to_string))
        .filter(|v| !v.contains("--"))
        .collect();
    versions.sort();
    versions
}

/// Everything the extension's SQL defines in schema causal, one line per object, sorted:
/// functions (signature, result, volatility, security, settings, body, grants), tables and
/// views with their columns, constraints, indexes, triggers, view definitions, the tables
/// pg_dump includes, and the extension's members.
const CATALOG: &str = r#"
SELECT string_agg(d, E'\n' ORDER BY d) FROM (
  SELECT 'function ' || p.oid::regprocedure::text || ' returns ' || pg_get_function_result(p.oid)
         || ' ' || p.provolatile::text || ' ' || p.prosecdef || ' ' || p.proisstrict || ' '
         || coalesce(array_to_string(p.proconfig, ','), '') || ' ' || md5(p.prosrc)
         || ' ' || coalesce(p.proacl::text, '')
  FROM pg_proc p WHERE p.pronamespace = 'causal'::regnamespace
  UNION ALL
  SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(c.relacl::text, '') || ' ('
         || coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                                        || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                                        || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), ''),
                                        ', ' ORDER BY a.attnum)
                      FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '') || ')'
  FROM pg_class c WHERE c.relnamespace = 'causal'::regnamespace
  UNION ALL
  SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'causal'::regnamespace
  UNION ALL
  SELECT 'index ' || pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'causal'::regnamespace
  UNION ALL
  SELECT 'trigger ' || pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  WHERE c.relnamespace = 'causal'::regnamespace AND NOT t.tgisinternal
  UNION ALL
  SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid)
  FROM pg_class c WHERE c.relnamespace = 'causal'::regnamespace AND c.relkind IN ('v', 'm')
  UNION ALL
  SELECT 'dumped ' || x.rel::regclass::text || ' ' || coalesce(x.cond, '')
  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(rel, cond) WHERE e.extname = 'pg_causal'
  UNION ALL
  SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
  FROM pg_depend d JOIN pg_extension e ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid
  WHERE e.extname = 'pg_causal' AND d.deptype = 'e'
) x(d)"#;

fn catalog(db: &mut Client) -> String {
    db.query_one(CATALOG, &[]).unwrap().get(0)
}

fn version(db: &mut Client) -> String {
    db.query_one("SELECT extversion FROM pg_extension WHERE extname = 'pg_causal'", &[]).unwrap().get(0)
}

/// A released version brought up to date has exactly the catalog of a fresh install: a catalog
/// change without its upgrade script fails here.
#[test]
fn every_released_version_upgrades_to_the_catalog_of_a_fresh_install() {
    let node = Cluster::start("upgrade-catalog", &[]);
    let mut db = node.connect("postgres");
    db.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    assert_eq!(version(&mut db), CURRENT);
    let fresh = catalog(&mut db);
    let versions = released();
    assert!(!versions.is_empty(), "sql/released holds no released version");
    for (i, old) in versions.iter().enumerate() {
        let name = format!("from_{i}");
        db.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let mut up = node.connect(&name);
        up.batch_execute(&format!("CREATE EXTENSION pg_causal VERSION '{old}'")).unwrap();
        assert_eq!(&version(&mut up), old);
        up.batch_execute("ALTER EXTENSION pg_causal UPDATE").unwrap();
        assert_eq!(version(&mut up), CURRENT);
        let upgraded = catalog(&mut up);
        assert!(fresh.lines().count() > 100, "the catalog description is too short:\n{fresh}");
        if upgraded != fresh {
            let (f, u): (Vec<&str>, Vec<&str>) = (fresh.lines().collect(), upgraded.lines().collect());
            let missing: Vec<&&str> = f.iter().filter(|l| !u.contains(l)).collect();
            let extra: Vec<&&str> = u.iter().filter(|l| !f.contains(l)).collect();
            panic!(
                "{old} -> {CURRENT} differs from a fresh install\nonly fresh: {missing:#?}\nonly upgraded: {extra:#?}"
            );
        }
    }
}

/// A node created at the previous version keeps its group, history, key and tables through the
/// upgrade, goes on writing, verifies, and a fresh node imports its whole history.
#[test]
fn an_upgraded_node_keeps_its_history_and_carries_on() {
    let versions = released();
    let old = versions.last().expect("a released version");
    let node = Cluster::start("upgrade-data", &[]);
    let mut db = node.connect("postgres");
    db.batch_execute(&format!(
        "CREATE EXTENSION pg_causal VERSION '{old}';
         SELECT causal.create_group('shop');
         CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2));
         SELECT causal.replicate('shop', 'products');"
    ))
    .unwrap();
    db.batch_execute("INSERT INTO products VALUES ('a', 'before', 1)").unwrap();
    db.batch_execute("SELECT causal.catch_up()").unwrap();
    let facts = |db: &mut Client| -> (String, Vec<String>, i64) {
        let r = db
            .query_one(
                "SELECT causal.node_id(), causal.frontier('shop'), (SELECT count(*) FROM causal.dag_entries)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    let before = facts(&mut db);
    db.batch_execute("ALTER EXTENSION pg_causal UPDATE").unwrap();
    assert_eq!(version(&mut db), CURRENT);
    assert_eq!(facts(&mut db), before);
    // The rows were rebuilt packed: every entry after the genesis has its author numbered.
    let numbered: i64 = db.query_one("SELECT count(author) FROM causal.dag_entries", &[]).unwrap().get(0);
    assert_eq!(numbered, before.2 - 1);
    for i in 0..5 {
        db.batch_execute(&format!("INSERT INTO products VALUES ('b{i}', 'after', {i})")).unwrap();
    }
    db.batch_execute("SELECT causal.catch_up()").unwrap();
    assert!(db.query_one("SELECT causal.verify('shop')", &[]).unwrap().get::<_, bool>(0));
    let logged: i64 = db.query_one("SELECT count(*) FROM causal.log('shop')", &[]).unwrap().get(0);
    assert_eq!(logged, before.2 + 5);

    let peer = Cluster::start("upgrade-peer", &[]);
    let mut p = peer.connect("postgres");
    p.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    let bundle: Vec<u8> = db.query_one("SELECT causal.export('shop')", &[]).unwrap().get(0);
    let r: String = p.query_one("SELECT causal.import($1)::text", &[&bundle]).unwrap().get(0);
    let r: serde_json::Value = serde_json::from_str(&r).unwrap();
    assert_eq!(r["rejected"], serde_json::json!([]), "{r}");
    let rows: i64 = p.query_one("SELECT count(*) FROM products", &[]).unwrap().get(0);
    assert_eq!(rows, 6);
}
