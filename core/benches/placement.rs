//! Placement: the reconciliation engine's run over a linear backlog of local commits, each
//! inserting 1,000 new rows (the shape `bench/capture.sh`'s workload (b) leaves behind), on the
//! in-memory replica. This is the engine's own share of placing a backlog; the extension adds
//! the reads and writes of its catalog tables.

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

const ENTRIES: usize = 100;
const ROWS: usize = 1000;

fn backlog() -> (Vec<causal_core::entry::Entry>, Vec<causal_core::entry::Entry>) {
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
    let mut entries = Vec::with_capacity(ENTRIES);
    for e in 0..ENTRIES {
        let ops = (0..ROWS)
            .map(|r| {
                let id = e * ROWS + r;
                insert(
                    "t",
                    json!({"id": id.to_string(), "payload": format!("row {id} of the benchmark"), "n": id % 100}),
                )
            })
            .collect();
        let entry = signed(&admin, &g.hash, ops, prev);
        prev = std::iter::once(entry.hash).collect();
        entries.push(entry);
    }
    (vec![g, schema], entries)
}

fn placement(c: &mut Criterion) {
    let (base, entries) = backlog();
    let mut group = c.benchmark_group("placement");
    group.throughput(Throughput::Elements((ENTRIES * ROWS) as u64));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    group.bench_function(format!("linear backlog, {ENTRIES} entries of {ROWS} new rows"), |b| {
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
            |(replica, decoded)| black_box(plan_decoded(&replica, decoded).expect("planned")),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, placement);
criterion_main!(benches);
