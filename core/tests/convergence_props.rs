//! Convergence: replicas that write concurrently and exchange history in random partial orders
//! end in the identical state (rows, every verdict, frontier), compared by a content digest.
//!
//! The operations are drawn from small key spaces so that they collide: same-column updates,
//! duplicate primary and unique keys, foreign keys whose targets are deleted, CHECKs on merged
//! rows, rule-gated inserts whose capability is revoked, member removals (including of admins
//! who revoke), and multi-operation entries.

mod support;

use causal_core::entry::Entry;
use causal_core::identity::Keypair;
use causal_core::payload::Op;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use serde_json::json;
use support::*;

const REGRESSIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/convergence_props.txt");

/// `CAUSAL_CONVERGENCE_CASES`, else `CAUSAL_PROPTEST_CASES`, else 256.
fn cases() -> u32 {
    ["CAUSAL_CONVERGENCE_CASES", "CAUSAL_PROPTEST_CASES"]
        .iter()
        .find_map(|v| std::env::var(v).ok().and_then(|v| v.parse().ok()))
        .unwrap_or(256)
}

/// One random row operation, over small key spaces.
#[derive(Clone, Debug)]
enum RowOp {
    InsertProduct {
        sku: u8,
        name: u8,
        price: u8,
    },
    UpdatePrice {
        sku: u8,
        price: u8,
    },
    UpdateName {
        sku: u8,
        name: u8,
    },
    /// Sets the product's name to NULL.
    ClearName {
        sku: u8,
    },
    DeleteProduct {
        sku: u8,
    },
    InsertParent {
        id: u8,
    },
    DeleteParent {
        id: u8,
    },
    InsertChild {
        id: u8,
        parent: u8,
    },
    SetLo {
        lo: u8,
    },
    SetHi {
        hi: u8,
    },
    Grant {
        id: u8,
        who: u8,
    },
    Revoke {
        id: u8,
    },
    InsertPage {
        id: u8,
    },
    DeletePage {
        id: u8,
    },
}

#[derive(Clone, Debug)]
enum Step {
    /// A write at a site by one of the keys.
    Write { site: Index, author: Index, ops: Vec<RowOp> },
    /// A key that may be an admin (the admin, the co-admin, or writer 2 once promoted) removes
    /// any key, the admin included: concurrent steps make mutual removals and removal rings.
    Remove { site: Index, by: Index, who: Index },
    /// The admin re-adds a member, as an admin or not.
    Readd { site: Index, who: Index, admin: bool },
    /// A site receives part of another's history: a prefix of the entries it lacks.
    Sync { from: Index, to: Index, part: Index },
}

fn row_op() -> impl Strategy<Value = RowOp> {
    prop_oneof![
        (0u8..3, 0u8..3, 0u8..5).prop_map(|(sku, name, price)| RowOp::InsertProduct { sku, name, price }),
        (0u8..3, 0u8..5).prop_map(|(sku, price)| RowOp::UpdatePrice { sku, price }),
        (0u8..3, 0u8..3).prop_map(|(sku, name)| RowOp::UpdateName { sku, name }),
        (0u8..3).prop_map(|sku| RowOp::ClearName { sku }),
        (0u8..3).prop_map(|sku| RowOp::DeleteProduct { sku }),
        (0u8..2).prop_map(|id| RowOp::InsertParent { id }),
        (0u8..2).prop_map(|id| RowOp::DeleteParent { id }),
        (0u8..3, 0u8..2).prop_map(|(id, parent)| RowOp::InsertChild { id, parent }),
        (0u8..10).prop_map(|lo| RowOp::SetLo { lo }),
        (0u8..10).prop_map(|hi| RowOp::SetHi { hi }),
        (0u8..2, 0u8..3).prop_map(|(id, who)| RowOp::Grant { id, who }),
        (0u8..2).prop_map(|id| RowOp::Revoke { id }),
        (0u8..4).prop_map(|id| RowOp::InsertPage { id }),
        (0u8..4).prop_map(|id| RowOp::DeletePage { id }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (any::<Index>(), any::<Index>(), prop::collection::vec(row_op(), 1..3))
            .prop_map(|(site, author, ops)| Step::Write { site, author, ops }),
        2 => (any::<Index>(), any::<Index>(), any::<Index>()).prop_map(|(site, by, who)| Step::Remove { site, by, who }),
        1 => (any::<Index>(), any::<Index>(), any::<Index>()).prop_map(|(from, to, part)| Step::Sync { from, to, part }),
        1 => (any::<Index>(), any::<Index>(), any::<bool>()).prop_map(|(site, who, admin)| Step::Readd { site, who, admin }),
        4 => (any::<Index>(), any::<Index>(), any::<Index>()).prop_map(|(from, to, part)| Step::Sync { from, to, part }),
    ]
}

fn keys() -> Vec<Keypair> {
    // Fixed keys: 0 the admin, 1 a co-admin, 2 and 3 writers.
    (1u8..=4).map(|i| Keypair::from_secret_bytes(&[i; 32]).unwrap()).collect()
}

fn setup_ops(keys: &[Keypair]) -> Vec<Vec<Op>> {
    vec![
        vec![
            schema_op(
                "products",
                json!({"columns": [col("sku", "text", true), col("name", "text", false), col("price", "integer", false)],
                       "primaryKey": ["sku"], "unique": [{"name": "products_name_key", "columns": ["name"]}]}),
            ),
            schema_op("parents", json!({"columns": [col("id", "integer", true)], "primaryKey": ["id"]})),
            schema_op(
                "children",
                json!({"columns": [col("id", "integer", true), col("parent", "integer", false)], "primaryKey": ["id"],
                       "foreignKeys": [{"name": "children_parent_fkey", "columns": ["parent"], "references": "parents", "referencedColumns": ["id"]}]}),
            ),
            schema_op(
                "ranges",
                json!({"columns": [col("id", "integer", true), col("lo", "integer", false), col("hi", "integer", false)],
                       "primaryKey": ["id"], "check": [{"name": "ranges_check", "expression": "CHECK ((lo <= hi))"}]}),
            ),
            schema_op(
                "caps",
                json!({"columns": [col("id", "integer", true), col("label", "text", true), col("grantee", "text", true)], "primaryKey": ["id"]}),
            ),
            schema_op("pages", json!({"columns": [col("id", "integer", true)], "primaryKey": ["id"]})),
        ],
        // Writers may write pages and revoke capabilities, each other's included: concurrent
        // revocations make deletes that cancel one another.
        ["pages:insert", "pages:delete", "caps:delete"]
            .iter()
            .map(|t| {
                let (table, operation) = t.split_once(':').unwrap_or_default();
                Op::Rule {
                    table: table.into(),
                    operation: operation.into(),
                    rule: "exists(caps where caps.label = 'writer' and caps.grantee = $author)".into(),
                }
            })
            .collect(),
        vec![add_member(&keys[1], true), add_member(&keys[2], false), add_member(&keys[3], false)],
        vec![
            insert("ranges", json!({"id": 1, "lo": 3, "hi": 6})),
            insert("caps", json!({"id": 0, "label": "writer", "grantee": keys[2].public().key_id().to_b64()})),
            insert("products", json!({"sku": "s0", "price": 1})),
            insert("products", json!({"sku": "s1", "price": 1})),
            insert("parents", json!({"id": 0})),
            insert("parents", json!({"id": 1})),
        ],
    ]
}

fn to_op(op: &RowOp, keys: &[Keypair]) -> Op {
    match *op {
        RowOp::InsertProduct { sku, name, price } => {
            insert("products", json!({"sku": format!("s{sku}"), "name": format!("n{name}"), "price": price}))
        }
        RowOp::UpdatePrice { sku, price } => {
            update("products", json!({"sku": format!("s{sku}")}), json!({"price": price}))
        }
        RowOp::UpdateName { sku, name } => {
            update("products", json!({"sku": format!("s{sku}")}), json!({"name": format!("n{name}")}))
        }
        RowOp::ClearName { sku } => Op::Update {
            table: "products".into(),
            key: obj(json!({"sku": format!("s{sku}")})),
            set: Default::default(),
            unset: vec!["name".into()],
        },
        RowOp::DeleteProduct { sku } => delete("products", json!({"sku": format!("s{sku}")})),
        RowOp::InsertParent { id } => insert("parents", json!({"id": id})),
        RowOp::DeleteParent { id } => delete("parents", json!({"id": id})),
        RowOp::InsertChild { id, parent } => insert("children", json!({"id": id, "parent": parent})),
        RowOp::SetLo { lo } => update("ranges", json!({"id": 1}), json!({"lo": lo})),
        RowOp::SetHi { hi } => update("ranges", json!({"id": 1}), json!({"hi": hi})),
        RowOp::Grant { id, who } => insert(
            "caps",
            json!({"id": id + 1, "label": "writer", "grantee": keys[who as usize + 1].public().key_id().to_b64()}),
        ),
        RowOp::Revoke { id } => delete("caps", json!({"id": id})),
        RowOp::InsertPage { id } => insert("pages", json!({"id": id})),
        RowOp::DeletePage { id } => delete("pages", json!({"id": id})),
    }
}

/// Every row's stored values are those its metadata and the history determine
/// (`causal_core::reconcile::derived_values`): a store may keep the metadata alone.
fn values_derived(sites: &[Site], when: &str) -> Result<(), TestCaseError> {
    for (i, s) in sites.iter().enumerate() {
        let mismatch = s.replica.values_not_derived().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(mismatch.is_none(), "site {} {}: {:?}", i, when, mismatch);
    }
    Ok(())
}

fn run(n_sites: usize, steps: &[Step]) -> Result<(), TestCaseError> {
    let keys = keys();
    let genesis = genesis(&keys[0]);
    let mut origin = Site::new(&genesis);
    let setup: Vec<Entry> = setup_ops(&keys).into_iter().map(|o| origin.write(&keys[0], o)).collect();
    let mut sites: Vec<Site> = (0..n_sites)
        .map(|_| {
            let mut s = Site::new(&genesis);
            s.receive(&setup);
            s
        })
        .collect();
    for step in steps {
        match step {
            Step::Write { site, author, ops } => {
                let s = site.index(n_sites);
                let ops = ops.iter().map(|o| to_op(o, &keys)).collect();
                sites[s].write(&keys[author.index(keys.len())], ops);
            }
            Step::Remove { site, by, who } => {
                let by = by.index(3);
                let who = who.index(keys.len());
                sites[site.index(n_sites)]
                    .write(&keys[by], vec![Op::RemoveMember { key_id: keys[who].public().key_id() }]);
            }
            Step::Readd { site, who, admin } => {
                let who = 1 + who.index(keys.len() - 1);
                sites[site.index(n_sites)].write(&keys[0], vec![add_member(&keys[who], *admin || who == 1)]);
            }
            Step::Sync { from, to, part } => {
                let (f, t) = (from.index(n_sites), to.index(n_sites));
                if f == t {
                    continue;
                }
                let missing: Vec<Entry> = sites[f]
                    .replica
                    .entries()
                    .into_iter()
                    .filter(|e| !sites[t].replica.dag_mut().contains(&e.hash).unwrap())
                    .collect();
                let n = part.index(missing.len() + 1);
                sites[t].receive(&missing[..n]);
            }
        }
        values_derived(&sites, "during the steps")?;
    }
    // Full exchange, each site pulling from the others in its own order.
    for t in 0..n_sites {
        for k in 1..n_sites {
            let f = (t + k) % n_sites;
            let all = sites[f].replica.entries();
            sites[t].receive(&all);
        }
    }
    for t in 0..n_sites {
        let all = sites[(t + 1) % n_sites].replica.entries();
        sites[t].receive(&all);
    }
    let digest = sites[0].replica.state_digest();
    if std::env::var("CAUSAL_CONVERGENCE_STATS").is_ok() {
        let t = sites[0].replica.totals;
        let rows: usize = ["products", "parents", "children", "ranges", "caps", "pages"]
            .iter()
            .map(|x| sites[0].replica.table(x).len())
            .sum();
        eprintln!(
            "entries {} replayed {} rewound {} cancelled {} rows {}",
            sites[0].replica.entries().len(),
            t.replayed,
            t.rewound,
            t.cancelled,
            rows
        );
    }
    for (i, s) in sites.iter().enumerate() {
        prop_assert_eq!(s.replica.state_digest(), digest, "site {} differs from site 0", i);
    }
    // A fresh replica receiving the whole history at once agrees too.
    let mut fresh = Site::new(&genesis);
    let all = sites[0].replica.entries();
    fresh.receive(&all);
    prop_assert_eq!(fresh.replica.state_digest(), digest, "a fresh replica differs");
    values_derived(&sites, "after the exchange")?;
    values_derived(std::slice::from_ref(&fresh), "receiving everything at once")?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn replicas_converge(n_sites in 3usize..=5, steps in prop::collection::vec(step(), 1..40)) {
        run(n_sites, &steps)?;
    }
}
