//! Placement: the reconciliation engine's run over a linear backlog of local commits, on the
//! in-memory replica: 100 entries inserting 1,000 new rows each (the shape `bench/capture.sh`'s
//! workload (b) leaves behind), and 20,000 entries of one new row each (a single-row import's
//! shape, `bench/import.sh`). This is the engine's own share; the extension adds the reads and
//! writes of its catalog tables.

use std::hint::black_box;
use std::time::Duration;

#[path = "../tests/support/mod.rs"]
mod support;

use causal_core::entry::Position;
use causal_core::identity::Keypair;
use causal_core::membership::derive_meta;
use causal_core::payload::SignedPayload;
use causal_core::reconcile::memory::MemReplica;
use causal_core::reconcile::{plan_decoded, NewEntry};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;
use support::*;

/// `(entries, rows per entry)` of each case.
const CASES: [(usize, usize); 2] = [(100, 1000), (20_000, 1)];

fn backlog(entries_n: usize, rows: usize) -> (Vec<causal_core::entry::Entry>, Vec<causal_core::entry::Entry>) {
    let admin = Keypair::generate();
    let g = genesis(&admin);
    let mut site = Site::new(&g);
    let schema = site.write(
        &admin,
        vec![schema_op(
            "t",
            json!({"columns": [col("id", "bigint", true), col("payload", "text", true), col("n", "integer", false)],
                   "primaryKey": ["id"]}),
        )],
    );
    let mut prev: Position = std::iter::once(schema.hash).collect();
    let mut entries = Vec::with_capacity(entries_n);
    for e in 0..entries_n {
        let ops = (0..rows)
            .map(|r| {
                let id = e * rows + r;
                insert(
                    "t",
                    json!({"id": id.to_string(), "payload": format!("row {id} of the benchmark"), "n": id % 100}),
                )
            })
            .collect();
        let entry = signed(&admin, &causal_core::GroupId::of_genesis(g.hash), ops, prev);
        prev = std::iter::once(entry.hash).collect();
        entries.push(entry);
    }
    (vec![g, schema], entries)
}

fn placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("placement");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    for (n, rows) in CASES {
        let (base, entries) = backlog(n, rows);
        group.throughput(Throughput::Elements((n * rows) as u64));
        group.bench_function(format!("linear backlog, {n} entries of {rows} new rows"), |b| {
            b.iter_batched(
                || {
                    let mut replica = MemReplica::new(ALG);
                    replica.receive(&base).expect("genesis and schema");
                    let mut decoded: Vec<NewEntry> = Vec::with_capacity(entries.len());
                    for e in &entries {
                        let payload = SignedPayload::from_value(&e.payload).expect("a payload");
                        let mut stored = e.clone();
                        stored.meta = derive_meta(&payload);
                        replica.dag_mut().insert(stored).expect("stored");
                        decoded.push((e.hash, e.header.prev.clone(), payload));
                    }
                    (replica, decoded)
                },
                // The replica is handed back so that it is dropped outside the timed routine.
                |(replica, decoded)| {
                    let changes = plan_decoded(&replica, decoded).expect("planned");
                    (replica, black_box(changes))
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, placement);
criterion_main!(benches);
