//! Property tests: the chain/clock index answers every query exactly as the naive
//! reachability implementation does, on random DAGs and in any topological insertion order.

use std::collections::BTreeSet;

use causal_core::dag::naive::NaiveDag;
use causal_core::entry::{meta, Meta};
use causal_core::{Dag, EntryHash, HashAlgorithm, MemStore, MetaFilter, Position};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use serde_json::json;

/// How one node is made: indices into the earlier nodes for its predecessors, and a tag.
#[derive(Clone, Debug)]
struct NodePlan {
    preds: Vec<Index>,
    tag: u8,
    /// Start a new root instead of attaching (only used when `preds` is empty).
    root: bool,
}

fn plan_strategy(max_nodes: usize) -> impl Strategy<Value = Vec<NodePlan>> {
    let node = (prop::collection::vec(any::<Index>(), 0..4), 0u8..6, prop::bool::weighted(0.05))
        .prop_map(|(preds, tag, root)| NodePlan { preds, tag, root });
    prop::collection::vec(node, 1..max_nodes)
}

struct Built {
    /// Per node: hash, minimal prev, meta; in creation order.
    nodes: Vec<(EntryHash, Position, Meta)>,
    naive: NaiveDag,
}

fn tag_meta(tag: u8) -> Meta {
    let t = format!("t{}", tag % 3);
    if tag >= 3 {
        meta([("tag", vec![t.as_str(), "barrier"])])
    } else {
        meta([("tag", vec![t.as_str()])])
    }
}

/// Builds the DAG a plan describes, in the naive implementation, keeping prevs minimal.
fn build(plan: &[NodePlan], alg: HashAlgorithm) -> Built {
    let mut naive = NaiveDag::new();
    let mut nodes: Vec<(EntryHash, Position, Meta)> = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        let mut chosen: Position = BTreeSet::new();
        if i > 0 {
            for ix in &p.preds {
                chosen.insert(nodes[ix.index(i)].0);
            }
            // Mostly extend something recent, as real histories do.
            if chosen.is_empty() && !p.root {
                chosen.insert(nodes[i - 1].0);
            }
        }
        let prev = naive.minimal_cover(&chosen);
        let m = tag_meta(p.tag);
        let payload = json!({ "n": i, "tag": p.tag });
        let hash = causal_core::Entry::new(alg, payload, prev.clone(), m.clone()).unwrap().hash;
        naive.add(hash, &prev, &m);
        nodes.push((hash, prev, m));
    }
    Built { nodes, naive }
}

/// Appends the nodes to an indexed DAG in the given order (a permutation that respects
/// predecessors).
fn index(built: &Built, order: &[usize], alg: HashAlgorithm) -> Dag<MemStore> {
    let mut dag = Dag::new(MemStore::new(), alg);
    for &i in order {
        let (hash, prev, m) = &built.nodes[i];
        let app = dag.append(json!({ "n": i, "tag": tag_of(m) }), m.clone(), prev.clone()).unwrap();
        assert_eq!(app.hash, *hash);
    }
    dag
}

fn tag_of(m: &Meta) -> u8 {
    let t = m["tag"].iter().find(|t| t.starts_with('t')).unwrap();
    let base: u8 = t[1..].parse().unwrap();
    if m["tag"].contains("barrier") {
        base + 3
    } else {
        base
    }
}

/// A topological order other than creation order: repeatedly take a random ready node.
fn shuffled_order(built: &Built, picks: &[Index]) -> Vec<usize> {
    let n = built.nodes.len();
    let pos: std::collections::HashMap<EntryHash, usize> =
        built.nodes.iter().enumerate().map(|(i, n)| (n.0, i)).collect();
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    let mut k = 0;
    while order.len() < n {
        let ready: Vec<usize> =
            (0..n).filter(|&i| !placed[i] && built.nodes[i].1.iter().all(|p| placed[pos[p]])).collect();
        let pick = picks.get(k).map_or(0, |ix| ix.index(ready.len()));
        k += 1;
        placed[ready[pick]] = true;
        order.push(ready[pick]);
    }
    order
}

fn pick_position(built: &Built, picks: &[Index]) -> Position {
    picks.iter().map(|ix| built.nodes[ix.index(built.nodes.len())].0).collect()
}

fn check_queries(dag: &Dag<MemStore>, built: &Built, positions: &[Position]) -> Result<(), TestCaseError> {
    let naive = &built.naive;
    prop_assert_eq!(dag.frontier().unwrap(), naive.frontier());
    for p in positions {
        let history = naive.history(p);
        for (x, _, _) in &built.nodes {
            prop_assert_eq!(dag.in_history(x, p).unwrap(), history.contains(x));
            if let Some(y) = p.iter().next() {
                prop_assert_eq!(dag.precedes(x, y).unwrap(), naive.history(&[*y].into()).contains(x));
            }
        }
    }
    for p in positions {
        prop_assert_eq!(dag.minimal_cover(p).unwrap(), naive.minimal_cover(p));
    }
    for a in positions {
        for b in positions {
            prop_assert_eq!(dag.fork_position(a, b).unwrap(), naive.fork_position(a, b));
        }
    }
    prop_assert_eq!(dag.meet(positions).unwrap(), naive.meet(positions));
    let filters = [
        MetaFilter::tag("tag", "t0"),
        MetaFilter::tag("tag", "barrier"),
        MetaFilter::default(),
        MetaFilter {
            keys: vec!["tag".into()],
            values: vec![("tag".into(), "barrier".into()), ("tag".into(), "t1".into())],
        },
    ];
    for from in positions {
        for f in &filters {
            prop_assert_eq!(dag.cover_with_filter(from, f, None).unwrap(), naive.filtered_cover(from, None, f));
            for to in positions {
                prop_assert_eq!(
                    dag.concurrent_cover_with_filter(from, to, f, None).unwrap(),
                    naive.filtered_cover(from, Some(to), f)
                );
            }
        }
    }
    Ok(())
}

/// Failing cases found so far; they are replayed before new random cases.
const REGRESSIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/index_props.txt");

fn cases() -> u32 {
    std::env::var("CAUSAL_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn index_matches_naive(
        plan in plan_strategy(60),
        picks in prop::collection::vec(prop::collection::vec(any::<Index>(), 0..4), 1..5),
    ) {
        let alg = HashAlgorithm::Blake3;
        let built = build(&plan, alg);
        let order: Vec<usize> = (0..built.nodes.len()).collect();
        let dag = index(&built, &order, alg);
        let positions: Vec<Position> = picks.iter().map(|p| pick_position(&built, p)).collect();
        check_queries(&dag, &built, &positions)?;
    }

    #[test]
    fn answers_do_not_depend_on_insertion_order(
        plan in plan_strategy(40),
        shuffle in prop::collection::vec(any::<Index>(), 40),
        picks in prop::collection::vec(prop::collection::vec(any::<Index>(), 1..4), 1..4),
    ) {
        let alg = HashAlgorithm::Sha256;
        let built = build(&plan, alg);
        let order = shuffled_order(&built, &shuffle);
        let dag = index(&built, &order, alg);
        let positions: Vec<Position> = picks.iter().map(|p| pick_position(&built, p)).collect();
        check_queries(&dag, &built, &positions)?;
    }
}

#[test]
fn appends_are_validated() {
    let alg = HashAlgorithm::Blake3;
    let mut dag = Dag::new(MemStore::new(), alg);
    let a = dag.append(json!({"a": 1}), Meta::new(), Position::new()).unwrap().hash;
    let b = dag.append(json!({"b": 1}), Meta::new(), [a].into()).unwrap().hash;
    // Idempotent.
    assert!(!dag.append(json!({"b": 1}), Meta::new(), [a].into()).unwrap().new);
    // Non-minimal prev.
    let err = dag.append(json!({"c": 1}), Meta::new(), [a, b].into()).unwrap_err();
    assert!(err.to_string().contains("minimal cover"), "{err}");
    // Unknown predecessor.
    let ghost = EntryHash(alg.digest(b"ghost"));
    let err = dag.append(json!({"c": 1}), Meta::new(), [ghost].into()).unwrap_err();
    assert!(err.to_string().contains("not in this DAG"), "{err}");
    // A tampered entry is refused with the hash named.
    let mut e = dag.entry(&b).unwrap().unwrap();
    e.payload = json!({"b": 2});
    let mut other = Dag::new(MemStore::new(), alg);
    other.append(json!({"a": 1}), Meta::new(), Position::new()).unwrap();
    assert!(other.insert(e).unwrap_err().to_string().contains("payload hash mismatch"));
    assert_eq!(dag.len().unwrap(), 2);
}

#[test]
fn unknown_hashes_in_queries_are_errors_not_panics() {
    let alg = HashAlgorithm::Blake3;
    let mut dag = Dag::new(MemStore::new(), alg);
    let a = dag.append(json!({"a": 1}), Meta::new(), Position::new()).unwrap().hash;
    let ghost: Position = [EntryHash(alg.digest(b"ghost"))].into();
    assert!(dag.minimal_cover(&ghost).is_err());
    assert!(dag.fork_position(&[a].into(), &ghost).is_err());
    assert!(dag.cover_with_filter(&ghost, &MetaFilter::default(), None).is_err());
    assert!(dag.concurrent_cover_with_filter(&[a].into(), &ghost, &MetaFilter::default(), None).is_err());
}
