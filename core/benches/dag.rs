//! DAG index benchmarks: fork position and minimal cover on random branching DAGs of 10k,
//! 100k and 1M entries, and append throughput in memory. The naive reachability
//! implementation is measured on the same 10k DAGs in the same run, as a baseline.
//!
//! The DAG shape follows the reference implementation's benchmark: a trunk of 20% of the
//! entries, then two branches of 40% each grown from the trunk's frontier. Growth happens in
//! runs of 1 to 6 sibling entries that share their predecessors, which are either the whole
//! current frontier (half the time) or a random part of it, so the DAG keeps branching and
//! merging.
//!
//! `CAUSAL_BENCH_SIZES=10000,100000` limits the sizes.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Duration;

use causal_core::dag::naive::NaiveDag;
use causal_core::entry::{meta, Meta};
use causal_core::{Dag, HashAlgorithm, MemStore, Position};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

struct Branching {
    dag: Dag<MemStore>,
    a: Position,
    b: Position,
}

/// Appends `count` entries starting from `start`, returning the resulting frontier.
fn grow(dag: &mut Dag<MemStore>, rng: &mut SmallRng, count: usize, start: Position, next: &mut usize) -> Position {
    let mut frontier = start;
    let mut made = 0;
    while made < count {
        let mut after: Position = if rng.gen_bool(0.5) {
            std::mem::take(&mut frontier)
        } else {
            let picked: Position = frontier.iter().filter(|_| rng.gen_bool(0.7)).copied().collect();
            frontier.retain(|h| !picked.contains(h));
            picked
        };
        if after.is_empty() {
            after = std::mem::take(&mut frontier);
        }
        let run = rng.gen_range(1..=6).min(count - made);
        for _ in 0..run {
            let n = *next;
            *next += 1;
            let payload = json!({ "id": format!("{n}:{}", rng.gen::<u32>()) });
            let tag = meta([("tag", vec![if n.is_multiple_of(7) { "barrier" } else { "plain" }])]);
            let h = dag.append(payload, tag, after.clone()).expect("append").hash;
            frontier.insert(h);
        }
        made += run;
    }
    frontier
}

fn branching(seed: u64, size: usize) -> Branching {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut dag = Dag::new(MemStore::new(), HashAlgorithm::Blake3);
    let mut next = 0;
    let trunk = grow(&mut dag, &mut rng, size / 5, Position::new(), &mut next);
    let a = grow(&mut dag, &mut rng, size * 2 / 5, trunk.clone(), &mut next);
    let b = grow(&mut dag, &mut rng, size * 2 / 5, trunk, &mut next);
    Branching { dag, a, b }
}

fn sizes() -> Vec<usize> {
    std::env::var("CAUSAL_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000])
}

fn naive_of(dag: &Dag<MemStore>) -> NaiveDag {
    let mut naive = NaiveDag::new();
    for e in dag.store().entries() {
        naive.add(e.hash, &e.header.prev, &e.meta);
    }
    naive
}

fn bench_queries(c: &mut Criterion) {
    for size in sizes() {
        let instances = if size >= 1_000_000 { 1 } else { 4 };
        eprintln!("building {instances} branching DAG(s) of {size} entries");
        let cases: Vec<Branching> = (0..instances).map(|i| branching(93 + i as u64, size)).collect();
        for case in &cases {
            let fp = case.dag.fork_position(&case.a, &case.b).unwrap();
            let chains = causal_core::DagStore::chain_count(case.dag.store()).unwrap();
            eprintln!(
                "  {size}: {chains} chains; fork: {} common, {} forkA, {} forkB; frontier {}",
                fp.common.len(),
                fp.fork_a.len(),
                fp.fork_b.len(),
                case.dag.frontier().unwrap().len()
            );
        }

        let mut group = c.benchmark_group("fork_position");
        group.sample_size(50).measurement_time(Duration::from_secs(5));
        group.bench_with_input(BenchmarkId::new("chain_clock_index", size), &cases, |bench, cases| {
            let mut i = 0;
            bench.iter(|| {
                let case = &cases[i % cases.len()];
                i += 1;
                black_box(case.dag.fork_position(&case.a, &case.b).unwrap())
            })
        });
        if size <= 10_000 {
            let naives: Vec<NaiveDag> = cases.iter().map(|c| naive_of(&c.dag)).collect();
            group.bench_with_input(BenchmarkId::new("naive_reachability", size), &cases, |bench, cases| {
                let mut i = 0;
                bench.iter(|| {
                    let k = i % cases.len();
                    i += 1;
                    black_box(naives[k].fork_position(&cases[k].a, &cases[k].b))
                })
            });
        }
        group.finish();

        // The positions the reference benchmarks minimal cover on: each branch tip, their
        // union, and the whole frontier.
        let positions: Vec<(usize, Position)> = cases
            .iter()
            .enumerate()
            .flat_map(|(k, c)| {
                let union: Position = c.a.union(&c.b).copied().collect();
                [c.a.clone(), c.b.clone(), union, c.dag.frontier().unwrap()].into_iter().map(move |p| (k, p))
            })
            .collect();
        let mut group = c.benchmark_group("minimal_cover");
        group.sample_size(50).measurement_time(Duration::from_secs(5));
        group.bench_with_input(BenchmarkId::new("chain_clock_index", size), &positions, |bench, positions| {
            let mut i = 0;
            bench.iter(|| {
                let (k, p) = &positions[i % positions.len()];
                i += 1;
                black_box(cases[*k].dag.minimal_cover(p).unwrap())
            })
        });
        group.finish();
    }
}

fn bench_append(c: &mut Criterion) {
    const N: usize = 100_000;
    // Pre-plan the DAG (payloads and predecessor choices), so only appending is measured.
    let plan = branching(7, N);
    let entries: Vec<(Value, Meta, BTreeSet<_>)> =
        plan.dag.store().entries().map(|e| (e.payload.clone(), e.meta.clone(), e.header.prev.clone())).collect();
    drop(plan);
    let mut group = c.benchmark_group("append_in_memory");
    group.sample_size(10).measurement_time(Duration::from_secs(10)).throughput(Throughput::Elements(N as u64));
    group.bench_function(BenchmarkId::new("hash_and_index", N), |bench| {
        bench.iter_batched(
            || entries.clone(),
            |entries| {
                let mut dag = Dag::new(MemStore::new(), HashAlgorithm::Blake3);
                for (payload, meta, prev) in entries {
                    dag.append(payload, meta, prev).unwrap();
                }
                black_box(dag)
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// What a commit must do while it holds its group's lock, because the signature binds the
/// predecessor set: sign a one-row transaction's payload and hash the entry.
fn bench_sign(c: &mut Criterion) {
    use causal_core::identity::Keypair;
    use causal_core::payload::{Op, SignedPayload};
    let key = Keypair::generate();
    let alg = HashAlgorithm::Blake3;
    let group = causal_core::GroupId(alg.digest(b"group"));
    let prev: Position = [causal_core::EntryHash(alg.digest(b"tip"))].into();
    let row = json!({"id": "42", "payload": "benchmark row", "n": 42}).as_object().cloned().unwrap();
    let ops = vec![Op::Insert { table: "replicated".into(), row }];
    let mut g = c.benchmark_group("commit_critical_section");
    g.bench_function("ed25519_sign_only", |b| {
        let msg =
            causal_core::payload::signing_message(Some(&group), None, &key.public().key_id(), &ops, &prev).unwrap();
        b.iter(|| black_box(key.sign(&msg)))
    });
    g.bench_function("sign_payload_and_hash_entry", |b| {
        b.iter(|| {
            let p = SignedPayload::sign(&key, &group, ops.clone(), &prev).unwrap();
            black_box(causal_core::Entry::new(alg, p.to_value(), prev.clone(), Meta::new()).unwrap().hash)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_queries, bench_append, bench_sign);
criterion_main!(benches);
