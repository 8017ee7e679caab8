//! The storage-free checks of incoming entries (`precheck_stream`), step by step, over 2,000
//! single-row entries: entry and payload hashes, strict payload decoding, the signing message,
//! and the ed25519 verification. Importing single-row entries spends most of its precheck time
//! here.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

#[path = "../tests/support/mod.rs"]
mod support;

use causal_core::entry::{Entry, Position};
use causal_core::hash::HashAlgorithm;
use causal_core::identity::Keypair;
use causal_core::payload::{signing_message, SignedPayload};
use causal_core::precheck::precheck_stream;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;
use support::*;

const ENTRIES: usize = 2000;

fn entries() -> (Keypair, Entry, Vec<Entry>) {
    let admin = Keypair::generate();
    let g = genesis(&admin);
    let mut prev: Position = std::iter::once(g.hash).collect();
    let mut out = Vec::with_capacity(ENTRIES);
    for id in 0..ENTRIES {
        let ops = vec![insert("items", json!({"id": id.to_string(), "payload": format!("row {id}"), "n": id}))];
        let e = signed(&admin, &causal_core::GroupId::of_genesis(g.hash), ops, prev);
        prev = std::iter::once(e.hash).collect();
        out.push(e);
    }
    (admin, g, out)
}

fn precheck(c: &mut Criterion) {
    let (admin, g, entries) = entries();
    let keys: HashMap<_, _> = std::iter::once((admin.public().key_id(), admin.public())).collect();
    let payloads: Vec<SignedPayload> =
        entries.iter().map(|e| SignedPayload::from_value(&e.payload).expect("payload")).collect();
    let mut group = c.benchmark_group("precheck");
    group.throughput(Throughput::Elements(ENTRIES as u64));
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    group.bench_function("verify_hashes", |b| {
        b.iter(|| entries.iter().all(|e| e.verify_hashes(HashAlgorithm::Blake3).is_ok()))
    });
    group.bench_function("decode_payload", |b| {
        b.iter(|| entries.iter().filter(|e| SignedPayload::from_value(&e.payload).is_ok()).count())
    });
    group.bench_function("signing_message", |b| {
        b.iter(|| {
            entries
                .iter()
                .zip(&payloads)
                .filter(|(e, p)| {
                    signing_message(
                        Some(&causal_core::GroupId::of_genesis(g.hash)),
                        None,
                        &p.author,
                        &p.ops,
                        &e.header.prev,
                    )
                    .is_ok()
                })
                .count()
        })
    });
    group.bench_function("verify_signature", |b| {
        b.iter(|| {
            entries.iter().zip(&payloads).all(|(e, p)| {
                p.verify(&admin.public(), Some(&causal_core::GroupId::of_genesis(g.hash)), &e.header.prev).is_ok()
            })
        })
    });
    // All of it, on the calling thread (0) or on that many other threads, in chunks of 256
    // as an import does; the entries are copied outside the timed part.
    for workers in [0, 1, 2] {
        group.bench_function(format!("precheck_stream/{workers}"), |b| {
            b.iter_batched(
                || entries.clone(),
                |entries| {
                    let mut n = 0;
                    let r: Result<(), ()> = precheck_stream(
                        entries,
                        HashAlgorithm::Blake3,
                        &causal_core::GroupId::of_genesis(g.hash),
                        &keys,
                        workers,
                        256,
                        |part| {
                            n += black_box(part).len();
                            Ok(())
                        },
                    );
                    (r, n)
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, precheck);
criterion_main!(benches);
