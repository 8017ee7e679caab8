//! Reconciliation outcomes (a–k) on real databases exchanging history with
//! `causal.export`/`causal.import`, in every delivery order. After the exchange every replica
//! has identical tables, identical `causal.log` statuses and reasons, and identical frontiers.
//!
//! Each test runs one cluster holding several databases: the writers, plus one observer per
//! order in which the writers' bundles can arrive.

use causal_integration::postgres::Client;
use causal_integration::{sqlstate, Cluster};
use serde_json::{json, Value};

struct Net {
    node: Cluster,
    dbs: Vec<Client>,
    writers: usize,
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

impl Net {
    /// `writers` databases that write concurrently, and one observer per delivery order.
    fn new(name: &str, writers: usize) -> Net {
        let node = Cluster::start(name, &[]);
        let mut admin = node.connect("postgres");
        let total = writers + permutations(writers).len();
        let mut dbs = Vec::new();
        for i in 0..total {
            admin.batch_execute(&format!("CREATE DATABASE r{i}")).unwrap();
            // Writer 1 and every other observer place each imported entry in an engine run
            // of its own (the others place a bundle in one run): the outcome must not
            // depend on how an import is split into runs.
            if i == 1 || (i >= writers && (i - writers).is_multiple_of(2)) {
                admin.batch_execute(&format!("ALTER DATABASE r{i} SET causal.import_run_rows = 1")).unwrap();
            }
            let mut c = node.connect(&format!("r{i}"));
            c.batch_execute("CREATE EXTENSION pg_causal").unwrap();
            dbs.push(c);
        }
        dbs[0].batch_execute("SELECT causal.create_group('g')").unwrap();
        Net { node, dbs, writers }
    }

    fn exec(&mut self, db: usize, sql: &str) {
        self.dbs[db].batch_execute(sql).unwrap_or_else(|e| panic!("r{db}: {sql}: {e:?}"));
    }

    fn text(&mut self, db: usize, sql: &str) -> String {
        self.dbs[db].query_one(sql, &[]).unwrap_or_else(|e| panic!("r{db}: {sql}: {e:?}")).get(0)
    }

    /// The public key of an identity of database `db` (its node identity when `name` is None).
    fn public_key(&mut self, db: usize, name: Option<&str>) -> (String, String) {
        let row = match name {
            None => self.dbs[db].query_one("SELECT key_id, public_key FROM causal.identities WHERE is_node", &[]),
            Some(n) => {
                self.dbs[db].query_one("SELECT key_id, public_key FROM causal.identities WHERE name = $1", &[&n])
            }
        }
        .unwrap();
        (row.get(0), row.get(1))
    }

    fn frontier(&mut self, db: usize) -> Vec<String> {
        self.dbs[db].batch_execute("SELECT causal.catch_up()").unwrap();
        self.dbs[db].query_one("SELECT causal.frontier('g')", &[]).unwrap().get(0)
    }

    fn export(&mut self, db: usize, since: Option<Vec<String>>) -> Vec<u8> {
        self.dbs[db].query_one("SELECT causal.export('g', $1)", &[&since]).unwrap().get(0)
    }

    fn import(&mut self, db: usize, bundle: &[u8]) -> Value {
        let s: String = self.dbs[db]
            .query_one("SELECT causal.import($1)::text", &[&bundle])
            .unwrap_or_else(|e| panic!("r{db}: import: {e:?}"))
            .get(0);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["rejected"], serde_json::json!([]), "r{db}: {v}");
        // A database placing each entry in a run of its own did (see `Net::new`; an adopted
        // group's genesis shares the first entry's run).
        let one_per_run = self.text(db, "SELECT current_setting('causal.import_run_rows')") == "1";
        let (accepted, runs) = (v["accepted"].as_u64().unwrap(), v["runs"].as_u64().unwrap());
        if one_per_run {
            assert!(runs <= accepted && runs + 1 >= accepted, "r{db}: {v}");
        } else {
            assert_eq!(runs, accepted.min(1), "r{db}: {v}");
        }
        v
    }

    /// Everything `db` has, to every other database.
    fn share_from(&mut self, db: usize) {
        let bundle = self.export(db, None);
        for i in 0..self.dbs.len() {
            if i != db {
                self.import(i, &bundle);
            }
        }
    }

    /// Exchanges what each writer wrote since the common frontier: each writer gets the others'
    /// bundles, and each observer gets all of them in its own order. Then checks convergence.
    fn exchange(&mut self) {
        // The last observer has seen none of the concurrent writes.
        let last = self.dbs.len() - 1;
        let common = self.frontier(last);
        let bundles: Vec<Vec<u8>> = (0..self.writers).map(|w| self.export(w, Some(common.clone()))).collect();
        for w in 0..self.writers {
            for k in 1..self.writers {
                let from = (w + k) % self.writers;
                self.import(w, &bundles[from]);
            }
        }
        for (o, order) in permutations(self.writers).into_iter().enumerate() {
            for from in order {
                self.import(self.writers + o, &bundles[from]);
            }
        }
        self.assert_converged();
    }

    /// Tables, log statuses and frontiers of every database equal database 0's, and each
    /// database's placed rows (`causal.placed_rows`) are as many as its tables' and verify.
    fn assert_converged(&mut self) {
        let state = |net: &mut Net, db: usize| -> String {
            let tables: Vec<String> = net.dbs[db]
                .query("SELECT table_name FROM causal.tables ORDER BY 1", &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut out = String::new();
            for t in tables {
                let rows = net.text(db, &format!("SELECT coalesce(string_agg(to_jsonb(x)::text, E'\\n' ORDER BY to_jsonb(x)::text), '') FROM {t} x"));
                out.push_str(&format!("{t}:\n{rows}\n"));
                let (placed, in_table) = (
                    net.count(
                        db,
                        &format!("SELECT count(*) FROM causal.placed_rows WHERE table_name = '{t}' AND NOT meta ? 'd'"),
                    ),
                    net.count(db, &format!("SELECT count(*) FROM {t}")),
                );
                assert_eq!(placed, in_table, "r{db}: live placed rows of {t}");
            }
            let verified: bool = net.dbs[db].query_one("SELECT causal.verify('g')", &[]).unwrap().get(0);
            assert!(verified, "r{db}: causal.verify");
            out.push_str(&net.text(
                db,
                "SELECT string_agg(hash || ' ' || status || ' ' || coalesce(reason, ''), E'\\n' ORDER BY hash) FROM causal.log('g', 100000)",
            ));
            out.push_str(&format!("\n{:?}", net.frontier(db)));
            out
        };
        let first = state(self, 0);
        for db in 1..self.dbs.len() {
            assert_eq!(state(self, db), first, "r{db} differs from r0");
        }
    }

    /// Status and reason of the newest entry written at `db` (before the exchange).
    fn last_entry(&mut self, db: usize) -> String {
        self.text(db, "SELECT hash FROM causal.log('g', 1)")
    }

    fn status(&mut self, db: usize, hash: &str) -> (String, String) {
        let r = self.dbs[db]
            .query_one("SELECT status, coalesce(reason, '') FROM causal.log('g', 100000) WHERE hash = $1", &[&hash])
            .unwrap();
        (r.get(0), r.get(1))
    }

    fn count(&mut self, db: usize, sql: &str) -> i64 {
        self.dbs[db].batch_execute("SELECT causal.catch_up()").unwrap();
        self.dbs[db].query_one(sql, &[]).unwrap().get(0)
    }

    /// Makes the node identities of databases 1.. members (admins when `admin`), and shares.
    fn members(&mut self, admin: bool) {
        for db in 1..self.dbs.len() {
            let (_, pk) = self.public_key(db, None);
            self.dbs[0].execute("SELECT causal.add_member('g', $1, NULL, $2)", &[&pk, &admin]).unwrap();
        }
    }
}

const PRODUCTS: &str = "CREATE TABLE products (sku text PRIMARY KEY, name text UNIQUE, price numeric(10,2)); \
                        SELECT causal.replicate('g', 'products');";

fn two_writers(name: &str, ddl: &str) -> Net {
    let mut net = Net::new(name, 2);
    net.exec(0, ddl);
    net.members(true);
    net
}

#[test]
fn a_same_column_concurrent_updates_keep_one_value() {
    let mut net = two_writers("rc-a", PRODUCTS);
    net.exec(0, "INSERT INTO products VALUES ('A', 'w', 1)");
    net.share_from(0);
    net.exec(0, "UPDATE products SET price = 2 WHERE sku = 'A'");
    net.exec(1, "UPDATE products SET price = 3 WHERE sku = 'A'");
    let (ea, eb) = (net.last_entry(0), net.last_entry(1));
    net.exchange();
    assert_eq!(net.status(0, &ea).0, "ok");
    assert_eq!(net.status(0, &eb).0, "ok");
    let price = net.text(0, "SELECT price::text FROM products");
    assert!(price == "2.00" || price == "3.00", "{price}");
}

#[test]
fn b_c_per_column_merge_and_delete_wins() {
    let mut net = two_writers("rc-bc", PRODUCTS);
    net.exec(0, "INSERT INTO products VALUES ('A', 'w', 1), ('B', 'x', 1)");
    net.share_from(0);
    // Each statement commits alone (one entry each).
    net.exec(0, "UPDATE products SET name = 'widget' WHERE sku = 'A'");
    net.exec(0, "DELETE FROM products WHERE sku = 'B'");
    net.exec(1, "UPDATE products SET price = 5 WHERE sku = 'A'");
    net.exec(1, "UPDATE products SET price = 7 WHERE sku = 'B'");
    let update_b = net.last_entry(1);
    net.exchange();
    assert_eq!(net.text(0, "SELECT name || ' ' || price FROM products WHERE sku = 'A'"), "widget 5.00");
    assert_eq!(net.count(0, "SELECT count(*) FROM products WHERE sku = 'B'"), 0);
    let (status, reason) = net.status(0, &update_b);
    assert_eq!(status, "cancelled");
    assert!(reason.contains("deleted"), "{reason}");
}

const PARENTS_CHILDREN: &str = "CREATE TABLE parents (id int PRIMARY KEY); \
                                CREATE TABLE children (id int PRIMARY KEY, parent int REFERENCES parents (id)); \
                                SELECT causal.replicate('g', 'parents'); SELECT causal.replicate('g', 'children');";

#[test]
fn d_foreign_key_target_deleted_concurrently() {
    let mut net = two_writers("rc-d", PARENTS_CHILDREN);
    net.exec(0, "INSERT INTO parents VALUES (1)");
    net.share_from(0);
    net.exec(0, "DELETE FROM parents WHERE id = 1");
    net.exec(1, "INSERT INTO children VALUES (10, 1)");
    let child = net.last_entry(1);
    net.exchange();
    assert_eq!(net.count(0, "SELECT count(*) FROM parents"), 0);
    assert_eq!(net.count(1, "SELECT count(*) FROM children"), 0);
    let (status, reason) = net.status(1, &child);
    assert_eq!(status, "cancelled");
    assert!(reason.contains("children_parent_fkey"), "{reason}");
}

#[test]
fn e_duplicate_keys_keep_one_row() {
    let mut net = two_writers("rc-e", PRODUCTS);
    net.share_from(0);
    net.exec(0, "INSERT INTO products VALUES ('X', 'from a', 1)");
    net.exec(0, "INSERT INTO products VALUES ('P', 'same', 1)");
    net.exec(1, "INSERT INTO products VALUES ('X', 'from b', 2)");
    net.exec(1, "INSERT INTO products VALUES ('Q', 'same', 1)");
    net.exchange();
    assert_eq!(net.count(0, "SELECT count(*) FROM products WHERE sku = 'X'"), 1);
    assert_eq!(net.count(0, "SELECT count(*) FROM products WHERE name = 'same'"), 1);
    let reasons = net.text(0, "SELECT string_agg(reason, ' | ') FROM causal.log('g') WHERE status = 'cancelled'");
    assert!(reasons.contains("duplicate primary key"), "{reasons}");
    assert!(reasons.contains("products_name_key"), "{reasons}");
}

/// As (e), in a table without UNIQUE constraints or foreign keys, whose new rows placing keeps
/// in sets of fresh rows: rewinds take the cancelled rows out of their sets again.
#[test]
fn e_duplicate_keys_keep_one_row_of_a_table_without_lookups() {
    let mut net = two_writers(
        "rc-e2",
        "CREATE TABLE notes (id int PRIMARY KEY, body text); SELECT causal.replicate('g', 'notes');",
    );
    net.share_from(0);
    net.exec(0, "INSERT INTO notes SELECT i, 'a' FROM generate_series(1, 20) i");
    net.exec(0, "UPDATE notes SET body = 'a2' WHERE id = 3");
    net.exec(0, "INSERT INTO notes VALUES (40, 'a')");
    net.exec(1, "INSERT INTO notes VALUES (5, 'b'), (30, 'b')");
    net.exec(1, "INSERT INTO notes VALUES (31, 'b')");
    net.exchange();
    assert_eq!(net.count(0, "SELECT count(*) FROM notes WHERE id = 5"), 1);
    let reasons = net.text(0, "SELECT string_agg(reason, ' | ') FROM causal.log('g') WHERE status = 'cancelled'");
    assert!(reasons.contains("duplicate primary key"), "{reasons}");
    // The writers placed their own rows first, in sets; both keep only the view's rows.
    for db in 0..2 {
        let sets = net.count(db, "SELECT count(*) FROM causal.fresh_rows");
        assert!(sets > 0, "r{db}: no set of fresh rows");
    }
}

#[test]
fn f_check_on_the_merged_row() {
    let mut net = two_writers(
        "rc-f",
        "CREATE TABLE ranges (id int PRIMARY KEY, lo int, hi int, CHECK (lo <= hi)); SELECT causal.replicate('g', 'ranges');",
    );
    net.exec(0, "INSERT INTO ranges VALUES (1, 1, 10)");
    net.share_from(0);
    net.exec(0, "UPDATE ranges SET lo = 5 WHERE id = 1");
    net.exec(1, "UPDATE ranges SET hi = 3 WHERE id = 1");
    net.exchange();
    assert_eq!(net.count(0, "SELECT count(*) FROM ranges WHERE lo <= hi"), 1);
    let reasons = net.text(0, "SELECT string_agg(reason, ' | ') FROM causal.log('g') WHERE status = 'cancelled'");
    assert!(reasons.contains("ranges_check"), "{reasons}");
    assert_eq!(net.count(0, "SELECT count(*) FROM causal.log('g') WHERE status = 'cancelled'"), 1);
}

const WIKI: &str = "CREATE TABLE caps (id int PRIMARY KEY, label text NOT NULL, grantee text NOT NULL); \
                    CREATE TABLE pages (id int PRIMARY KEY, title text); \
                    SELECT causal.replicate('g', 'caps'); SELECT causal.replicate('g', 'pages'); \
                    SELECT causal.allow('pages', 'insert', $$exists(caps where caps.label = 'writer' and caps.grantee = $author)$$);";

/// Creates identity bob on database `db`, makes him a member and gives him a writer cap.
fn bob(net: &mut Net, db: usize) {
    net.exec(db, "SELECT causal.create_identity('bob')");
    let (key_id, pk) = net.public_key(db, Some("bob"));
    net.dbs[0].execute("SELECT causal.add_member('g', $1, 'bob')", &[&pk]).unwrap();
    net.dbs[0].execute("INSERT INTO caps VALUES (1, 'writer', $1)", &[&key_id]).unwrap();
}

#[test]
fn g_revoked_permission_cancels_the_concurrent_insert() {
    let mut net = two_writers("rc-g", WIKI);
    bob(&mut net, 1);
    net.share_from(0);
    net.exec(1, "SET causal.author = 'bob'; INSERT INTO pages VALUES (1, 'early')");
    net.share_from(1);
    net.exec(0, "DELETE FROM caps WHERE id = 1");
    net.exec(1, "SET causal.author = 'bob'; INSERT INTO pages VALUES (2, 'late')");
    let late = net.last_entry(1);
    net.exchange();
    assert_eq!(net.text(0, "SELECT string_agg(title, ',' ORDER BY id) FROM pages"), "early");
    let (status, reason) = net.status(0, &late);
    assert_eq!(status, "cancelled");
    assert!(reason.contains("not allowed by the rule"), "{reason}");
    let explain = net.text(0, &format!("SELECT causal.explain('{late}')::text"));
    assert!(explain.contains("\"responsible\""), "{explain}");
}

#[test]
fn h_removed_member_keeps_earlier_writes() {
    let mut net = Net::new("rc-h", 2);
    net.exec(0, PRODUCTS);
    net.members(false);
    net.share_from(0);
    net.exec(1, "INSERT INTO products VALUES ('before', NULL, 1)");
    net.share_from(1);
    let (m, _) = net.public_key(1, None);
    net.dbs[0].execute("SELECT causal.remove_member('g', $1)", &[&m]).unwrap();
    net.exec(1, "INSERT INTO products VALUES ('during', NULL, 1)");
    let during = net.last_entry(1);
    net.exchange();
    assert_eq!(net.text(0, "SELECT string_agg(sku, ',') FROM products"), "before");
    let (status, reason) = net.status(0, &during);
    assert_eq!(status, "cancelled");
    assert!(reason.contains("removed from the group"), "{reason}");
}

#[test]
fn i_a_transfer_is_never_half_applied() {
    let mut net = two_writers(
        "rc-i",
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); SELECT causal.replicate('g', 'accounts');",
    );
    net.exec(0, "INSERT INTO accounts VALUES (1, 100), (2, 0)");
    net.share_from(0);
    net.exec(0, "DELETE FROM accounts WHERE id = 2");
    net.exec(
        1,
        "BEGIN; UPDATE accounts SET balance = 70 WHERE id = 1; UPDATE accounts SET balance = 30 WHERE id = 2; COMMIT",
    );
    let transfer = net.last_entry(1);
    net.exchange();
    assert_eq!(net.status(0, &transfer).0, "cancelled");
    assert_eq!(net.count(0, "SELECT balance::bigint FROM accounts WHERE id = 1"), 100);
}

#[test]
fn j_added_column_default_reaches_concurrent_rows() {
    let mut net = two_writers("rc-j", PRODUCTS);
    net.exec(0, "INSERT INTO products VALUES ('old', NULL, 1)");
    net.share_from(0);
    net.exec(0, "ALTER TABLE products ADD COLUMN stock integer NOT NULL DEFAULT 0");
    net.exec(1, "INSERT INTO products VALUES ('new1', NULL, 1), ('new2', NULL, 2)");
    net.exchange();
    for db in 0..net.dbs.len() {
        assert_eq!(net.count(db, "SELECT count(*) FROM products WHERE stock = 0"), 3, "r{db}");
    }
}

#[test]
fn k_a_cancelled_revocation_brings_the_insert_back() {
    let mut net = Net::new("rc-k", 3);
    net.exec(0, WIKI);
    net.members(true); // r1's node identity (X) is an admin
    bob(&mut net, 2);
    net.share_from(0);
    let (x, _) = net.public_key(1, None);
    net.dbs[0].execute("SELECT causal.remove_member('g', $1)", &[&x]).unwrap();
    net.exec(1, "DELETE FROM caps WHERE id = 1");
    let revoke = net.last_entry(1);
    net.exec(2, "SET causal.author = 'bob'; INSERT INTO pages VALUES (5, 'kept')");
    let page = net.last_entry(2);
    // An observer that sees the revocation and the page first cancels the page...
    let common = net.frontier(3);
    let (b1, b2) = (net.export(1, Some(common.clone())), net.export(2, Some(common)));
    net.import(3, &b1);
    net.import(3, &b2);
    assert_eq!(net.status(3, &page).0, "cancelled");
    assert_eq!(net.count(3, "SELECT count(*) FROM pages"), 0);
    // ...and brings it back when the revoker's removal arrives. (The full exchange below
    // delivers the rest to this observer and every order to the others.)
    net.exchange();
    assert_eq!(net.status(3, &revoke).0, "cancelled");
    assert_eq!(net.status(3, &page).0, "ok");
    assert_eq!(net.count(3, "SELECT count(*) FROM pages WHERE id = 5"), 1);
    assert_eq!(net.count(0, "SELECT count(*) FROM caps"), 1);
}

/// Two admins remove each other while apart. The log keeps the removal by the admin with the
/// older grant (the group's creator), and every reader agrees with it: `causal.members` lists
/// that admin, who can still write and add members, and every database takes its new entries.
/// (The index of membership changes alone counts the cancelled removal too, and showed no
/// admin at all: the group was frozen.)
#[test]
fn a_mutual_removal_does_not_freeze_the_group() {
    let mut net = two_writers("rc-mutual", PRODUCTS);
    net.share_from(0);
    let (a_key, _) = net.public_key(0, None);
    let (b_key, _) = net.public_key(1, None);
    net.exec(0, &format!("SELECT causal.remove_member('g', '{b_key}')"));
    net.exec(1, &format!("SELECT causal.remove_member('g', '{a_key}')"));
    net.exchange();
    for db in 0..net.dbs.len() {
        let members = net.text(db, "SELECT string_agg(key_id || ':' || admin, ',') FROM causal.members('g')");
        // The observers' node identities are admins too (`Net::members`), untouched.
        assert!(members.contains(&format!("{a_key}:true")) && !members.contains(&b_key), "r{db}: {members}");
    }
    net.exec(0, "INSERT INTO products VALUES ('after', 'x', 1)");
    net.exec(0, "SELECT causal.create_identity('carol')");
    let (_, carol) = net.public_key(0, Some("carol"));
    net.dbs[0].execute("SELECT causal.add_member('g', $1, 'carol')", &[&carol]).unwrap();
    net.share_from(0);
    for db in 0..net.dbs.len() {
        assert_eq!(net.count(db, "SELECT count(*) FROM products WHERE sku = 'after'"), 1, "r{db}");
        assert_eq!(net.text(db, "SELECT causal.verify('g')::text"), "true", "r{db}");
    }
}

#[test]
fn the_application_hears_of_a_cancelled_write() {
    let mut net = two_writers("rc-notice", PARENTS_CHILDREN);
    net.exec(0, "INSERT INTO parents VALUES (1)");
    net.share_from(0);
    let mut listener = net.node.connect("r1");
    listener.batch_execute("LISTEN causal_cancelled").unwrap();
    // And a hook of r1's hears it too: a function of this database's, run as its setter.
    net.exec(
        1,
        "CREATE TABLE heard (rec jsonb);
         CREATE FUNCTION on_cancel(r jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO heard VALUES (r) $$;
         SELECT causal.set_cancellation_hook('g', 'on_cancel(jsonb)')",
    );
    net.exec(0, "DELETE FROM parents WHERE id = 1");
    net.exec(1, "INSERT INTO children VALUES (10, 1)");
    let child = net.last_entry(1);
    net.exchange();

    // r1 wrote the child, committed it, and learns that it was cancelled: once.
    let notes: Vec<Value> = {
        use causal_integration::postgres::fallible_iterator::FallibleIterator;
        let mut n = listener.notifications();
        let mut it = n.timeout_iter(std::time::Duration::from_millis(500));
        let mut out = Vec::new();
        while let Ok(Some(m)) = it.next() {
            assert_eq!(m.channel(), "causal_cancelled");
            out.push(serde_json::from_str(m.payload()).unwrap());
        }
        out
    };
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["entry"], child.as_str());
    assert_eq!(notes[0]["group"], "g");
    assert_eq!(notes[0]["local"], true);
    assert!(notes[0]["reason"].as_str().unwrap().contains("children_parent_fkey"), "{notes:?}");
    // The kind of conflict, with the SQLSTATE the insert would have failed with, and its row.
    assert_eq!(
        (&notes[0]["code"], &notes[0]["sqlstate"], &notes[0]["table"], &notes[0]["key"]),
        (&json!("foreign_key_violation"), &json!("23503"), &json!("children"), &json!("[10]")),
        "{notes:?}"
    );
    let heard = net.text(1, "SELECT string_agg(rec::text, ',') FROM heard");
    assert_eq!(serde_json::from_str::<Value>(&heard).unwrap(), notes[0], "the hook gets the same record");

    // The view says the same, here and (not a local write there) on the writer of the delete.
    let here = net.text(1, "SELECT entry || ' ' || local || ' ' || group_name FROM causal.cancellations");
    assert_eq!(here, format!("{child} true g"));
    let there = net.text(0, "SELECT entry || ' ' || local FROM causal.cancellations");
    assert_eq!(there, format!("{child} false"));
    let cause = net.text(1, "SELECT concat_ws(' ', code, table_name, row_key) FROM causal.cancellations");
    assert_eq!(cause, "foreign_key_violation children [10]");
    let explained = net.text(1, &format!("SELECT causal.explain('{child}') ->> 'code'"));
    assert_eq!(explained, "foreign_key_violation");
    // And the group's statistics count it.
    assert_eq!(net.count(1, "SELECT cancelled FROM causal.stat_groups WHERE group_name = 'g'"), 1);
    let shape = net.text(
        1,
        "SELECT (entries = (SELECT entry_count FROM causal.groups WHERE name = 'g') AND frontier_size >= 1 \
                 AND unplaced = 0 AND last_entry_at IS NOT NULL)::text FROM causal.stat_groups",
    );
    assert_eq!(shape, "true");
}

/// A cancellation hook that fails, or that writes the group's tables (which would be in no
/// entry), is reported and undone; placement goes on and the verdict stands.
#[test]
fn a_failing_hook_stops_nothing_and_cannot_write_the_group() {
    let mut net = two_writers("rc-hook", PARENTS_CHILDREN);
    net.share_from(0);
    net.exec(1, "CREATE TABLE heard (n int)");
    assert_eq!(
        net.dbs[1]
            .execute("SELECT causal.set_cancellation_hook('g', 'no_such_fn(jsonb)')", &[])
            .map_err(|e| sqlstate(&e))
            .err(),
        Some(Some("42883".to_string()))
    );
    net.exec(1, "CREATE FUNCTION two(a jsonb, b int) RETURNS void LANGUAGE sql AS 'SELECT 1'");
    assert_eq!(
        net.dbs[1]
            .execute("SELECT causal.set_cancellation_hook('g', 'two(jsonb, int)')", &[])
            .map_err(|e| sqlstate(&e))
            .err(),
        Some(Some("42P13".to_string()))
    );
    for (round, body) in [
        (2, "INSERT INTO heard VALUES (1); INSERT INTO parents VALUES (99)"),
        (3, "INSERT INTO heard VALUES (1); SELECT 1 / 0"),
    ] {
        net.exec(1, &format!("CREATE OR REPLACE FUNCTION bad_hook(r jsonb) RETURNS void LANGUAGE sql AS $${body}$$"));
        net.exec(1, "SELECT causal.set_cancellation_hook('g', 'bad_hook(jsonb)')");
        net.exec(0, &format!("INSERT INTO parents VALUES ({round})"));
        net.share_from(0);
        net.exec(0, &format!("DELETE FROM parents WHERE id = {round}"));
        net.exec(1, &format!("INSERT INTO children VALUES ({round}0, {round})"));
        let child = net.last_entry(1);
        net.exchange();
        let status = net.text(1, &format!("SELECT code FROM causal.cancellations WHERE entry = '{child}'"));
        assert_eq!(status, "foreign_key_violation", "round {round}");
        assert_eq!(net.count(1, "SELECT count(*) FROM heard"), 0, "round {round}: the hook's writes are undone");
        assert_eq!(net.count(1, "SELECT count(*) FROM parents WHERE id = 99"), 0);
        assert_eq!(net.text(1, "SELECT causal.verify('g')::text"), "true");
    }
    // Cleared: no hook is called any more.
    assert!(net.dbs[1].query_one("SELECT causal.set_cancellation_hook('g', NULL)", &[]).unwrap().get::<_, bool>(0));
    assert_eq!(net.count(1, "SELECT count(*) FROM causal.cancellation_hooks"), 0);
}
