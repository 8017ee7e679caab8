//! The bodies of the fuzz targets in `fuzz/`. They live here so that the saved corpus and
//! crash inputs also run as ordinary tests (`tests/fuzz_corpus.rs`). Each takes arbitrary
//! bytes from outside and must never panic; each asserts what must hold of its output.

use crate::dag::{Dag, MemStore};
use crate::entry::Entry;
use crate::hash::{Hash, HashAlgorithm};
use crate::identity::{PublicKey, Signature};
use crate::json::{canonical_string, parse};
use crate::payload::SignedPayload;
use crate::wire::{WireBundle, WireEntry};

/// A fuzz target: its name and its body.
pub type Target = (&'static str, fn(&[u8]));

/// The fuzz targets by name, for the corpus replay.
pub const TARGETS: &[Target] = &[
    ("canonical_json", canonical_json),
    ("entry_wire", entry_wire),
    ("bundle", bundle),
    ("key_material", key_material),
    ("group_payload", group_payload),
];

/// JSON text from outside, canonicalized: either refused, or a canonical text that does not
/// depend on how the value was spelled (here: respelled by serde_json, escapes and all).
pub fn canonical_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(value) = parse(text) else { return };
    if let Ok(canonical) = canonical_string(&value) {
        let respelled = serde_json::to_string_pretty(&value).expect("a parsed value serializes");
        let again = parse(&respelled).ok().and_then(|v| canonical_string(&v).ok());
        assert_eq!(again.as_deref(), Some(canonical.as_str()), "canonical form depends on spelling");
        for alg in HashAlgorithm::ALL {
            assert_eq!(alg.hash_literal(&value).ok(), Some(alg.digest(canonical.as_bytes())));
        }
    }
}

/// An entry in wire form from a peer: decoded, its hashes checked, and inserted into a DAG
/// that holds its predecessors only if they are named nowhere (so mostly refused). Whatever is
/// accepted must be exactly what was sent.
pub fn entry_wire(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The decoder imports use: what it accepts with a payload that parses, the value-based
    // one accepts alike. (It reads the payload's text only for its extent, so a string
    // escape that is not a character, such as a lone surrogate, shows when the payload is
    // parsed, and the entry is refused then.)
    let wire = WireEntry::parse(text).ok().and_then(|w| w.decode().ok());
    let Ok(value) = parse(text) else {
        assert!(wire.is_none(), "WireEntry accepts text that is not JSON");
        return;
    };
    let Ok(entry) = Entry::from_wire(&value) else {
        assert!(wire.is_none(), "WireEntry accepts what Entry::from_wire refuses");
        return;
    };
    if let Some(w) = wire {
        assert_eq!(w, entry, "WireEntry reads another entry");
    }
    for alg in HashAlgorithm::ALL {
        let mut dag = Dag::new(MemStore::new(), alg);
        if let Ok(app) = dag.insert(entry.clone()) {
            assert_eq!(app.hash, entry.hash);
            assert!(entry.header.prev.is_empty(), "accepted an entry whose predecessors are missing");
            assert_eq!(dag.entry(&entry.hash).ok().flatten().map(|e| e.payload), Some(entry.payload.clone()));
        }
    }
}

/// A bundle from `causal.import`'s caller: refused whole, or its entries read one by one
/// exactly as the entry decoder reads them alone.
pub fn bundle(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(b) = WireBundle::parse(text) else { return };
    for e in &b.entries {
        let again = format!(
            "{{\"hash\":\"{}\",\"header\":{},\"payload\":{}}}",
            e.hash.to_b64(),
            e.header.to_literal(),
            e.payload
        );
        assert_eq!(WireEntry::parse(&again).as_ref(), Ok(e), "an entry reads differently alone");
    }
}

/// Hashes, public keys and signatures in text or binary form.
pub fn key_material(data: &[u8]) {
    if let Ok(pk) = PublicKey::deserialize(data) {
        assert_eq!(PublicKey::deserialize(&pk.serialize()).ok(), Some(pk));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(h) = text.parse::<Hash>() {
        assert_eq!(h.to_b64(), text);
    }
    if let Ok(pk) = PublicKey::from_b64(text) {
        assert_eq!(PublicKey::from_b64(&pk.to_b64()).ok(), Some(pk));
    }
    if let Ok(sig) = Signature::from_b64(text) {
        assert_eq!(Signature::from_b64(&sig.to_b64()).ok(), Some(sig));
    }
}

/// A group payload from a peer: decoded strictly; whatever decodes must encode back to a
/// payload that decodes to the same thing.
pub fn group_payload(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(value) = parse(text) else { return };
    if let Ok(p) = SignedPayload::from_value(&value) {
        assert_eq!(SignedPayload::from_value(&p.to_value()).ok(), Some(p));
    }
}
