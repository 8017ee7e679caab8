//! Reading and writing what placement keeps in the catalog, at memory speed, each beside the
//! form it replaced: a stored payload decoded from its JSON text (the tree's rows moved into
//! the operations, or copied), and a journal undo record written as text (straight from the
//! records, or through a JSON tree). Placing local commits reads every payload back and
//! writes an undo record per entry.

use std::hint::black_box;
use std::time::Duration;

#[path = "../tests/support/mod.rs"]
mod support;

use causal_core::entry::Position;
use causal_core::identity::Keypair;
use causal_core::payload::SignedPayload;
use causal_core::reconcile::{RowKey, UndoRecord};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use support::*;

/// A payload of `rows` inserts shaped like `bench/capture.sh`'s rows, as stored.
fn payload_text(rows: usize) -> String {
    let admin = Keypair::generate();
    let g = genesis(&admin);
    let ops = (0..rows)
        .map(|id| insert("t", json!({"id": id.to_string(), "payload": "benchmark row", "n": id % 100})))
        .collect();
    let prev: Position = std::iter::once(g.hash).collect();
    let e = signed(&admin, &causal_core::GroupId::of_genesis(g.hash), ops, prev);
    causal_core::json::canonical_string(&e.payload).expect("canonical")
}

fn decoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("stored payload to operations");
    group.sample_size(30).measurement_time(Duration::from_secs(4));
    for rows in [1, 1000] {
        let text = payload_text(rows);
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(format!("{rows} rows, copied out of the tree"), |b| {
            b.iter(|| {
                let v = causal_core::json::parse(black_box(&text)).expect("json");
                black_box(SignedPayload::from_value(&v).expect("payload"))
            })
        });
        group.bench_function(format!("{rows} rows, moved out of the tree"), |b| {
            b.iter(|| {
                let v = causal_core::json::parse(black_box(&text)).expect("json");
                black_box(SignedPayload::from_owned(v).expect("payload"))
            })
        });
    }
    group.finish();
}

/// The undo record of an entry inserting `rows` new rows.
fn undo_of_inserts(rows: usize) -> Vec<UndoRecord> {
    (0..rows)
        .map(|id| UndoRecord { table: "t".into(), key: RowKey::from_stored(format!("[{id}]")), before: None })
        .collect()
}

fn undo_text(c: &mut Criterion) {
    let mut group = c.benchmark_group("undo record to text");
    group.sample_size(30).measurement_time(Duration::from_secs(4));
    let records = undo_of_inserts(1000);
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("1000 inserts, through a JSON tree", |b| {
        b.iter(|| {
            let tree: Vec<Value> =
                black_box(&records).iter().map(|r| json!({"t": r.table, "k": r.key.as_str(), "b": null})).collect();
            black_box(Value::Array(tree).to_string())
        })
    });
    group.bench_function("1000 inserts, written straight", |b| {
        b.iter(|| black_box(UndoRecord::journal_text(black_box(&records), |r| Ok::<_, ()>(r.meta_value()))))
    });
    group.finish();
}

criterion_group!(benches, decoding, undo_text);
criterion_main!(benches);
