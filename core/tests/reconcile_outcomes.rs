//! The required reconciliation outcomes (a–k of the issue), on in-memory replicas, in every
//! delivery order. The extension's integration tests repeat them on real databases.

mod support;

use causal_core::entry::Entry;
use causal_core::identity::Keypair;
use causal_core::payload::Op;
use causal_core::reconcile::{CancelCode, Status};
use serde_json::json;
use support::*;

/// Feeds `setup` and then the concurrent branches, in every interleaving of the branches (each
/// branch keeps its own order), to fresh replicas; asserts they all end in the same state and
/// returns one of them.
fn converge(genesis: &Entry, setup: &[Entry], branches: &[Vec<Entry>]) -> Site {
    let mut items: Vec<(usize, usize)> = Vec::new();
    for (b, branch) in branches.iter().enumerate() {
        for i in 0..branch.len() {
            items.push((b, i));
        }
    }
    let mut result: Option<Site> = None;
    let mut digest = None;
    let mut orders = 0;
    for perm in permutations(items.len()) {
        // Keep only interleavings that respect each branch's order.
        let seq: Vec<(usize, usize)> = perm.iter().map(|&p| items[p]).collect();
        let mut next = vec![0; branches.len()];
        if !seq.iter().all(|&(b, i)| {
            let ok = next[b] == i;
            next[b] += 1;
            ok
        }) {
            continue;
        }
        orders += 1;
        let mut site = Site::new(genesis);
        site.receive(setup);
        for (b, i) in seq {
            site.receive(std::slice::from_ref(&branches[b][i]));
        }
        assert_eq!(site.replica.values_not_derived().unwrap(), None, "values not derived from the metadata");
        let d = site.replica.state_digest();
        match digest {
            None => digest = Some(d),
            Some(x) => {
                if x != d {
                    let first = result.as_ref().unwrap();
                    for e in setup.iter().chain(branches.iter().flatten()) {
                        eprintln!(
                            "{:?}\n  first: {:?}\n  this:  {:?}",
                            e.hash,
                            first.replica.verdict(&e.hash),
                            site.replica.verdict(&e.hash)
                        );
                    }
                    panic!("delivery orders disagree");
                }
            }
        }
        result.get_or_insert(site);
    }
    // And everything at once.
    let mut site = Site::new(genesis);
    site.receive(setup);
    let all: Vec<Entry> = branches.iter().flatten().cloned().collect();
    site.receive(&all);
    assert_eq!(digest, Some(site.replica.state_digest()), "a single bundle disagrees");
    assert!(orders >= 2 || items.len() < 2);
    result.expect("at least one order")
}

fn products() -> Op {
    schema_op(
        "products",
        json!({"columns": [col("sku", "text", true), col("name", "text", false), col("price", "numeric", false)],
               "primaryKey": ["sku"], "unique": [{"name": "products_name_key", "columns": ["name"]}]}),
    )
}

struct Fixture {
    admin: Keypair,
    genesis: Entry,
    a: Site,
    setup: Vec<Entry>,
}

fn fixture(ops: Vec<Vec<Op>>) -> Fixture {
    let admin = Keypair::generate();
    let genesis = genesis(&admin);
    let mut a = Site::new(&genesis);
    let setup = ops.into_iter().map(|o| a.write(&admin, o)).collect();
    Fixture { admin, genesis, a, setup }
}

impl Fixture {
    fn site(&self) -> Site {
        let mut s = Site::new(&self.genesis);
        s.receive(&self.setup);
        s
    }
}

#[test]
fn a_same_column_concurrent_updates() {
    let f = fixture(vec![vec![products()], vec![insert("products", json!({"sku": "A", "price": "1.00"}))]]);
    let (mut a, mut b) = (f.site(), f.site());
    let ua = a.write(&f.admin, vec![update("products", json!({"sku": "A"}), json!({"price": "2.00"}))]);
    let ub = b.write(&f.admin, vec![update("products", json!({"sku": "A"}), json!({"price": "3.00"}))]);
    let site = converge(&f.genesis, &f.setup, &[vec![ua.clone()], vec![ub.clone()]]);
    assert_eq!(site.status(&ua), Status::Ok);
    assert_eq!(site.status(&ub), Status::Ok);
    // The winner is the later of the two in the canonical order (same height: larger hash).
    let winner = if ua.hash > ub.hash { "2.00" } else { "3.00" };
    assert_eq!(site.row("products", json!(["A"])).unwrap()["price"], json!(winner));
    // A causally later write wins whatever the hashes.
    a.sync_from(&b);
    let later = a.write(&f.admin, vec![update("products", json!({"sku": "A"}), json!({"price": "9.00"}))]);
    b.receive(&[ua, later]);
    assert_eq!(b.row("products", json!(["A"])).unwrap()["price"], json!("9.00"));
    assert_eq!(a.replica.state_digest(), b.replica.state_digest());
}

#[test]
fn b_different_columns_merge() {
    let f = fixture(vec![vec![products()], vec![insert("products", json!({"sku": "A", "name": "w", "price": "1"}))]]);
    let (mut a, mut b) = (f.site(), f.site());
    let ua = a.write(&f.admin, vec![update("products", json!({"sku": "A"}), json!({"name": "widget"}))]);
    let ub = b.write(&f.admin, vec![update("products", json!({"sku": "A"}), json!({"price": "5"}))]);
    let site = converge(&f.genesis, &f.setup, &[vec![ua], vec![ub]]);
    assert_eq!(site.row("products", json!(["A"])).unwrap(), obj(json!({"sku": "A", "name": "widget", "price": "5"})));
}

#[test]
fn c_delete_beats_concurrent_update() {
    let f = fixture(vec![vec![products()], vec![insert("products", json!({"sku": "A", "price": "1"}))]]);
    let (mut a, mut b) = (f.site(), f.site());
    let d = a.write(&f.admin, vec![delete("products", json!({"sku": "A"}))]);
    let u = b.write(&f.admin, vec![update("products", json!({"sku": "A"}), json!({"price": "5"}))]);
    let site = converge(&f.genesis, &f.setup, &[vec![d.clone()], vec![u.clone()]]);
    assert_eq!(site.row("products", json!(["A"])), None);
    assert_eq!(site.status(&d), Status::Ok);
    assert_eq!(site.status(&u), Status::Cancelled);
    assert!(site.reason(&u).contains("deleted by concurrent entry") || site.reason(&u).contains("deleted by entry"));
    assert_eq!(site.cause(&u), (Some(CancelCode::RowGone), Some(("products".into(), r#"["A"]"#.into()))));
}

fn parents_children() -> Vec<Op> {
    vec![
        schema_op("parents", json!({"columns": [col("id", "integer", true)], "primaryKey": ["id"]})),
        schema_op(
            "children",
            json!({"columns": [col("id", "integer", true), col("parent", "integer", false)], "primaryKey": ["id"],
                   "foreignKeys": [{"name": "children_parent_fkey", "columns": ["parent"], "references": "parents", "referencedColumns": ["id"]}]}),
        ),
    ]
}

#[test]
fn d_foreign_key_target_deleted_concurrently() {
    let f = fixture(vec![parents_children(), vec![insert("parents", json!({"id": 1}))]]);
    let (mut a, mut b) = (f.site(), f.site());
    let d = a.write(&f.admin, vec![delete("parents", json!({"id": 1}))]);
    let c = b.write(&f.admin, vec![insert("children", json!({"id": 10, "parent": 1}))]);
    assert_eq!(b.status(&c), Status::Ok);
    let site = converge(&f.genesis, &f.setup, &[vec![d.clone()], vec![c.clone()]]);
    assert_eq!(site.row("parents", json!([1])), None);
    assert_eq!(site.row("children", json!([10])), None);
    assert_eq!(site.status(&c), Status::Cancelled);
    assert!(site.reason(&c).contains("children_parent_fkey"), "{}", site.reason(&c));
    assert_eq!(site.cause(&c), (Some(CancelCode::ForeignKeyViolation), Some(("children".into(), "[10]".into()))));
    // A delete of a parent whose child the author saw is refused.
    let mut s = f.site();
    s.write(&f.admin, vec![insert("children", json!({"id": 11, "parent": 1}))]);
    let bad = s.write(&f.admin, vec![delete("parents", json!({"id": 1}))]);
    assert_eq!(s.status(&bad), Status::Cancelled);
    assert!(s.reason(&bad).contains("still references"));
    assert_eq!(s.cause(&bad).0, Some(CancelCode::ForeignKeyViolation));
}

#[test]
fn e_duplicate_primary_and_unique_keys() {
    let f = fixture(vec![vec![products()]]);
    let (mut a, mut b) = (f.site(), f.site());
    let ia = a.write(&f.admin, vec![insert("products", json!({"sku": "X", "name": "from a"}))]);
    let ib = b.write(&f.admin, vec![insert("products", json!({"sku": "X", "name": "from b"}))]);
    let site = converge(&f.genesis, &f.setup, &[vec![ia.clone()], vec![ib.clone()]]);
    let (won, lost) = if ia.hash < ib.hash { (&ia, &ib) } else { (&ib, &ia) };
    assert_eq!(site.status(won), Status::Ok);
    assert_eq!(site.status(lost), Status::Cancelled);
    assert!(site.reason(lost).contains("duplicate primary key"));
    assert_eq!(site.cause(lost), (Some(CancelCode::UniqueViolation), Some(("products".into(), r#"["X"]"#.into()))));
    assert_eq!(site.cause(won), (None, None));
    let name = if won == &ia { "from a" } else { "from b" };
    assert_eq!(site.row("products", json!(["X"])).unwrap()["name"], json!(name));

    // Unique constraint on another column.
    let (mut a, mut b) = (f.site(), f.site());
    let ua = a.write(&f.admin, vec![insert("products", json!({"sku": "P", "name": "same"}))]);
    let ub = b.write(&f.admin, vec![insert("products", json!({"sku": "Q", "name": "same"}))]);
    let site = converge(&f.genesis, &f.setup, &[vec![ua.clone()], vec![ub.clone()]]);
    let statuses = [site.status(&ua), site.status(&ub)];
    assert_eq!(statuses.iter().filter(|s| **s == Status::Ok).count(), 1);
    let lost = if statuses[0] == Status::Ok { &ub } else { &ua };
    assert!(site.reason(lost).contains("products_name_key"), "{}", site.reason(lost));
    assert_eq!(site.cause(lost).0, Some(CancelCode::UniqueViolation));
}

#[test]
fn f_check_on_the_merged_row() {
    let ranges = schema_op(
        "ranges",
        json!({"columns": [col("id", "integer", true), col("lo", "integer", false), col("hi", "integer", false)],
               "primaryKey": ["id"], "check": [{"name": "ranges_check", "expression": "CHECK ((lo <= hi))"}]}),
    );
    let f = fixture(vec![vec![ranges], vec![insert("ranges", json!({"id": 1, "lo": 1, "hi": 10}))]]);
    let (mut a, mut b) = (f.site(), f.site());
    let ua = a.write(&f.admin, vec![update("ranges", json!({"id": 1}), json!({"lo": 5}))]);
    let ub = b.write(&f.admin, vec![update("ranges", json!({"id": 1}), json!({"hi": 3}))]);
    assert_eq!((a.status(&ua), b.status(&ub)), (Status::Ok, Status::Ok));
    let site = converge(&f.genesis, &f.setup, &[vec![ua.clone()], vec![ub.clone()]]);
    let row = site.row("ranges", json!([1])).unwrap();
    assert!(row["lo"].as_i64().unwrap() <= row["hi"].as_i64().unwrap(), "{row:?}");
    let cancelled: Vec<&Entry> = [&ua, &ub].into_iter().filter(|e| site.status(e) == Status::Cancelled).collect();
    assert_eq!(cancelled.len(), 1);
    assert!(site.reason(cancelled[0]).contains("ranges_check"));
    assert_eq!(site.cause(cancelled[0]), (Some(CancelCode::CheckViolation), Some(("ranges".into(), "[1]".into()))));
}

fn wiki(bob: &Keypair) -> Vec<Vec<Op>> {
    vec![
        vec![
            schema_op(
                "caps",
                json!({"columns": [col("id", "integer", true), col("label", "text", true), col("grantee", "text", true)], "primaryKey": ["id"]}),
            ),
            schema_op(
                "pages",
                json!({"columns": [col("id", "integer", true), col("title", "text", false)], "primaryKey": ["id"]}),
            ),
        ],
        vec![Op::Rule {
            table: "pages".into(),
            operation: "insert".into(),
            rule: "exists(caps where caps.label = 'writer' and caps.grantee = $author)".into(),
        }],
        vec![add_member(bob, false)],
        vec![insert("caps", json!({"id": 1, "label": "writer", "grantee": bob.public().key_id().to_b64()}))],
    ]
}

#[test]
fn g_revoked_permission() {
    let bob = Keypair::generate();
    let mut f = fixture(wiki(&bob));
    // Bob writes a page before the revocation; it stays.
    let early = f.a.write(&bob, vec![insert("pages", json!({"id": 1, "title": "early"}))]);
    assert_eq!(f.a.status(&early), Status::Ok);
    f.setup.push(early);
    let (mut a, mut b) = (f.site(), f.site());
    let revoke = a.write(&f.admin, vec![delete("caps", json!({"id": 1}))]);
    let page = b.write(&bob, vec![insert("pages", json!({"id": 2, "title": "late"}))]);
    assert_eq!(b.status(&page), Status::Ok);
    let site = converge(&f.genesis, &f.setup, &[vec![revoke.clone()], vec![page.clone()]]);
    assert_eq!(site.status(&page), Status::Cancelled);
    assert!(site.reason(&page).contains("not allowed by the rule"), "{}", site.reason(&page));
    assert_eq!(site.cause(&page).0, Some(CancelCode::RuleViolation));
    // The revocation is named when it comes later in the canonical order (the rule saw the
    // capability and a concurrent delete took it away). When it comes earlier, the capability
    // is already a tombstone without values, and the reason names the rule only.
    let responsible = &site.replica.verdict(&page.hash).unwrap().responsible;
    assert!(responsible.is_empty() || responsible == &vec![revoke.hash], "{responsible:?}");
    assert!(site.row("pages", json!([1])).is_some());
    assert!(site.row("pages", json!([2])).is_none());
    // Without the rule's support, bob cannot write at all.
    let mut s = f.site();
    s.receive(&[revoke]);
    let after = s.write(&bob, vec![insert("pages", json!({"id": 3}))]);
    assert_eq!(s.status(&after), Status::Cancelled);
}

#[test]
fn h_removed_member() {
    let m = Keypair::generate();
    let mut f = fixture(vec![vec![products()], vec![add_member(&m, false)]]);
    let before = f.a.write(&m, vec![insert("products", json!({"sku": "before"}))]);
    f.setup.push(before.clone());
    let (mut a, mut b) = (f.site(), f.site());
    let removal = a.write(&f.admin, vec![Op::RemoveMember { key_id: m.public().key_id() }]);
    let w = b.write(&m, vec![insert("products", json!({"sku": "during"}))]);
    let site = converge(&f.genesis, &f.setup, &[vec![removal.clone()], vec![w.clone()]]);
    assert_eq!(site.status(&w), Status::Cancelled);
    assert!(site.reason(&w).contains("removed from the group"));
    assert_eq!(site.cause(&w), (Some(CancelCode::AuthorRemoved), None));
    assert_eq!(site.status(&before), Status::Ok);
    assert!(site.row("products", json!(["before"])).is_some());
    assert!(site.row("products", json!(["during"])).is_none());
}

#[test]
fn i_atomic_transfer() {
    let accounts = schema_op(
        "accounts",
        json!({"columns": [col("id", "integer", true), col("balance", "integer", true)], "primaryKey": ["id"]}),
    );
    let f = fixture(vec![
        vec![accounts],
        vec![insert("accounts", json!({"id": 1, "balance": 100})), insert("accounts", json!({"id": 2, "balance": 0}))],
    ]);
    let (mut a, mut b) = (f.site(), f.site());
    let close = a.write(&f.admin, vec![delete("accounts", json!({"id": 2}))]);
    let transfer = b.write(
        &f.admin,
        vec![
            update("accounts", json!({"id": 1}), json!({"balance": 70})),
            update("accounts", json!({"id": 2}), json!({"balance": 30})),
        ],
    );
    let site = converge(&f.genesis, &f.setup, &[vec![close], vec![transfer.clone()]]);
    assert_eq!(site.status(&transfer), Status::Cancelled);
    assert_eq!(site.row("accounts", json!([1])).unwrap()["balance"], json!(100), "half a transfer was applied");
}

/// `products` with a column `stock` added, NOT NULL DEFAULT 0.
fn with_stock() -> Op {
    schema_op(
        "products",
        json!({"columns": [col("sku", "text", true), col("name", "text", false), col("price", "numeric", false),
                           {"name": "stock", "type": "integer", "notNull": true, "default": "0", "defaultValue": 0}],
               "primaryKey": ["sku"], "unique": [{"name": "products_name_key", "columns": ["name"]}]}),
    )
}

#[test]
fn j_added_column_default_for_concurrent_rows() {
    let f = fixture(vec![vec![products()], vec![insert("products", json!({"sku": "old"}))]]);
    let (mut a, mut b) = (f.site(), f.site());
    let alter = a.write(&f.admin, vec![with_stock()]);
    let rows =
        b.write(&f.admin, vec![insert("products", json!({"sku": "new1"})), insert("products", json!({"sku": "new2"}))]);
    let site = converge(&f.genesis, &f.setup, &[vec![alter], vec![rows.clone()]]);
    assert_eq!(site.status(&rows), Status::Ok);
    assert_eq!(site.row("products", json!(["new1"])).unwrap()["stock"], json!(0));
    assert_eq!(site.row("products", json!(["new2"])).unwrap()["stock"], json!(0));
}

/// A row stored before its table gains a column with a default has that default, as
/// PostgreSQL's `ALTER TABLE ... ADD COLUMN ... DEFAULT` gives it (and the extension's row
/// metadata with it), whether the replica held the row before the change or receives both
/// together.
#[test]
fn j_added_column_default_for_rows_stored_before() {
    let f = fixture(vec![vec![products()], vec![insert("products", json!({"sku": "old"}))]]);
    let mut a = f.site();
    let alter = a.write(&f.admin, vec![with_stock()]);
    let mut b = Site::new(&f.genesis);
    b.receive(&[f.setup.clone(), vec![alter]].concat());
    for site in [&a, &b] {
        assert_eq!(site.row("products", json!(["old"])).and_then(|r| r.get("stock").cloned()), Some(json!(0)));
        assert_eq!(site.replica.values_not_derived().unwrap(), None);
    }
    assert_eq!(a.replica.state_digest(), b.replica.state_digest());
}

/// A row stored before its table gained a column with a default keeps the default when an
/// entry that updated it is rewound and replayed: the row as the undo record kept it, from
/// before the column existed, must not take the default away.
#[test]
fn j_added_column_default_survives_a_rewind() {
    let f = fixture(vec![vec![products()], vec![insert("products", json!({"sku": "old"}))]]);
    let mut a = f.site();
    let price = a.write(&f.admin, vec![update("products", json!({"sku": "old"}), json!({"price": "5.00"}))]);
    let alter = a.write(&f.admin, vec![with_stock()]);
    // An entry concurrent with both and before the update in the canonical order: a replica
    // that placed the update first rewinds it to place this one.
    let early = (0..)
        .map(|n| f.site().write(&f.admin, vec![insert("products", json!({"sku": format!("c{n}")}))]))
        .find(|e| e.hash < price.hash)
        .expect("an entry before the update");
    let site = converge(&f.genesis, &f.setup, &[vec![price, alter], vec![early]]);
    assert_eq!(site.row("products", json!(["old"])).and_then(|r| r.get("stock").cloned()), Some(json!(0)));
}

#[test]
fn k_verdicts_flip_back() {
    let bob = Keypair::generate();
    let x = Keypair::generate();
    let mut ops = wiki(&bob);
    ops.push(vec![add_member(&x, true)]);
    let f = fixture(ops);
    let (mut a, mut b, mut c) = (f.site(), f.site(), f.site());
    let remove_x = a.write(&f.admin, vec![Op::RemoveMember { key_id: x.public().key_id() }]);
    let revoke = b.write(&x, vec![delete("caps", json!({"id": 1}))]);
    let page = c.write(&bob, vec![insert("pages", json!({"id": 5}))]);
    // Before the removal is known, the page is cancelled by the revocation...
    let mut partial = f.site();
    partial.receive(&[revoke.clone(), page.clone()]);
    assert_eq!(partial.status(&page), Status::Cancelled);
    assert!(partial.row("pages", json!([5])).is_none());
    // ...and it comes back when the revocation is itself cancelled.
    partial.receive(std::slice::from_ref(&remove_x));
    assert_eq!(partial.status(&revoke), Status::Cancelled);
    assert_eq!(partial.status(&page), Status::Ok);
    assert!(partial.row("pages", json!([5])).is_some());
    assert!(partial.row("caps", json!([1])).is_some());
    let site = converge(&f.genesis, &f.setup, &[vec![remove_x], vec![revoke], vec![page]]);
    assert_eq!(site.replica.state_digest(), partial.replica.state_digest());
}

#[test]
fn mutual_removal_keeps_one_admin() {
    let y = Keypair::generate();
    let f = fixture(vec![vec![add_member(&y, true)]]);
    let (mut a, mut b) = (f.site(), f.site());
    let ra = a.write(&f.admin, vec![Op::RemoveMember { key_id: y.public().key_id() }]);
    let rb = b.write(&y, vec![Op::RemoveMember { key_id: f.admin.public().key_id() }]);
    let site = converge(&f.genesis, &f.setup, &[vec![ra.clone()], vec![rb.clone()]]);
    let ok: Vec<Status> = [&ra, &rb].iter().map(|e| site.status(e)).collect();
    assert_eq!(ok.iter().filter(|s| **s == Status::Ok).count(), 1, "exactly one removal survives");
}

/// Of two admins removing each other, the one with the older admin grant wins, however
/// long either branch is: padding a branch with entries raises its removal's height, never
/// its author's seniority.
#[test]
fn mutual_removal_is_won_by_the_older_grant_whatever_the_padding() {
    let y = Keypair::generate();
    for (pad_admin, pad_y) in [(0, 0), (0, 4), (4, 0)] {
        let f = fixture(vec![vec![add_member(&y, true)], vec![products()]]);
        let (mut a, mut b) = (f.site(), f.site());
        let mut branch_a = Vec::new();
        for i in 0..pad_admin {
            branch_a.push(a.write(&f.admin, vec![insert("products", json!({"sku": format!("a{i}")}))]));
        }
        let ra = a.write(&f.admin, vec![Op::RemoveMember { key_id: y.public().key_id() }]);
        branch_a.push(ra.clone());
        let mut branch_b = Vec::new();
        for i in 0..pad_y {
            branch_b.push(b.write(&y, vec![insert("products", json!({"sku": format!("y{i}")}))]));
        }
        let rb = b.write(&y, vec![Op::RemoveMember { key_id: f.admin.public().key_id() }]);
        branch_b.push(rb.clone());
        let mut site = Site::new(&f.genesis);
        site.receive(&f.setup);
        site.receive(&branch_b);
        site.receive(&branch_a);
        assert_eq!(site.status(&ra), Status::Ok, "padding {pad_admin}/{pad_y}: {}", site.reason(&ra));
        assert_eq!(site.status(&rb), Status::Cancelled, "padding {pad_admin}/{pad_y}");
        assert!(site.reason(&rb).contains("older admin grant"), "{}", site.reason(&rb));
    }
}

/// A ring of three admins, each removing the next, concurrently: the most senior admin's
/// removal stands and the two aimed at its attackers' authors fall, in every delivery order
/// and whatever the heights.
#[test]
fn a_removal_ring_is_decided_by_seniority() {
    let (q, r) = (Keypair::generate(), Keypair::generate());
    let f = fixture(vec![vec![add_member(&q, true)], vec![add_member(&r, true)], vec![products()]]);
    let (mut a, mut b, mut c) = (f.site(), f.site(), f.site());
    let rp = a.write(&f.admin, vec![Op::RemoveMember { key_id: q.public().key_id() }]);
    let pad1 = b.write(&q, vec![insert("products", json!({"sku": "pad1"}))]);
    let pad2 = b.write(&q, vec![insert("products", json!({"sku": "pad2"}))]);
    let rq = b.write(&q, vec![Op::RemoveMember { key_id: r.public().key_id() }]);
    let pad = c.write(&r, vec![insert("products", json!({"sku": "pad3"}))]);
    let rr = c.write(&r, vec![Op::RemoveMember { key_id: f.admin.public().key_id() }]);
    let site = converge(&f.genesis, &f.setup, &[vec![rp.clone()], vec![pad1, pad2, rq.clone()], vec![pad, rr.clone()]]);
    assert_eq!(site.status(&rp), Status::Ok, "{}", site.reason(&rp));
    assert_eq!(site.status(&rq), Status::Cancelled);
    assert_eq!(site.status(&rr), Status::Cancelled);
}

/// A delete of an older incarnation of a row (deleted and inserted again concurrently) does
/// not cancel a concurrent update of the new incarnation, even when the delete comes later in
/// the canonical order (here: its branch is taller).
#[test]
fn a_delete_of_an_older_incarnation_spares_the_new_one() {
    let f = fixture(vec![vec![products()], vec![insert("products", json!({"sku": "p", "price": "1"}))]]);
    let (mut a, mut b) = (f.site(), f.site());
    let mut branch_a = Vec::new();
    for i in 0..4 {
        branch_a.push(a.write(&f.admin, vec![insert("products", json!({"sku": format!("pad{i}")}))]));
    }
    let old_delete = a.write(&f.admin, vec![delete("products", json!({"sku": "p"}))]);
    branch_a.push(old_delete.clone());
    let b1 = b.write(&f.admin, vec![delete("products", json!({"sku": "p"}))]);
    let b2 = b.write(&f.admin, vec![insert("products", json!({"sku": "p", "price": "2"}))]);
    let b3 = b.write(&f.admin, vec![update("products", json!({"sku": "p"}), json!({"price": "3"}))]);
    let site = converge(&f.genesis, &f.setup, &[branch_a, vec![b1, b2, b3.clone()]]);
    assert_eq!(site.status(&b3), Status::Ok, "{}", site.reason(&b3));
    assert_eq!(site.row("products", json!(["p"])).map(|r| r["price"].clone()), Some(json!("3")));
}

/// A delete that is cancelled itself (its author's capability was revoked concurrently, so
/// the delete rule refuses it) takes nothing away from a concurrent update of the row, wherever
/// the canonical order puts it (the reference's "a voided delete does not kill").
#[test]
fn a_cancelled_delete_cancels_nothing() {
    let (bob, carol) = (Keypair::generate(), Keypair::generate());
    for pad in [0, 2] {
        let mut ops = wiki(&bob);
        ops.push(vec![Op::Rule {
            table: "pages".into(),
            operation: "delete".into(),
            rule: "exists(caps where caps.label = 'writer' and caps.grantee = $author)".into(),
        }]);
        ops.push(vec![add_member(&carol, false)]);
        let mut f = fixture(ops);
        // Bob (a writer) writes the page.
        let page = f.a.write(&bob, vec![insert("pages", json!({"id": 1, "title": "first"}))]);
        assert_eq!(f.a.status(&page), Status::Ok);
        f.setup.push(page);
        let (mut a, mut b, mut c) = (f.site(), f.site(), f.site());
        let revoke = a.write(&f.admin, vec![delete("caps", json!({"id": 1}))]);
        let mut branch_b = Vec::new();
        for i in 0..pad {
            branch_b.push(b.write(&f.admin, vec![insert("caps", json!({"id": 10 + i, "label": "x", "grantee": "y"}))]));
        }
        let gone = b.write(&bob, vec![delete("pages", json!({"id": 1}))]);
        branch_b.push(gone.clone());
        let edit = c.write(&carol, vec![update("pages", json!({"id": 1}), json!({"title": "edited"}))]);
        let site = converge(&f.genesis, &f.setup, &[vec![revoke], branch_b, vec![edit.clone()]]);
        assert_eq!(site.status(&gone), Status::Cancelled, "pad {pad}: {} / {}", site.reason(&gone), site.reason(&edit));
        assert_eq!(site.status(&edit), Status::Ok, "pad {pad}: {}", site.reason(&edit));
        assert_eq!(site.row("pages", json!([1])).map(|r| r["title"].clone()), Some(json!("edited")));
    }
}

#[test]
fn late_concurrent_entry_rewinds_only_above_the_fork() {
    let f = fixture(vec![vec![products()]]);
    let (mut a, mut b) = (f.site(), f.site());
    for i in 0..50 {
        a.write(&f.admin, vec![insert("products", json!({"sku": format!("a{i}")}))]);
    }
    let late = b.write(&f.admin, vec![insert("products", json!({"sku": "b"}))]);
    let before = a.replica.totals;
    a.receive(std::slice::from_ref(&late));
    let delta_replayed = a.replica.totals.replayed - before.replayed;
    // Height 3 sorts before a's entries of height >= 4: those are revisited, nothing below.
    assert!(delta_replayed <= 51, "replayed {delta_replayed}");
    assert_eq!(a.replica.table("products").len(), 51);
    // A fast-forward replays exactly one entry.
    let before = a.replica.totals;
    a.write(&f.admin, vec![insert("products", json!({"sku": "z"}))]);
    assert_eq!(a.replica.totals.replayed - before.replayed, 1);
    assert_eq!(a.replica.totals.rewound, before.rewound);
}
