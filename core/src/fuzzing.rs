//! The bodies of the fuzz targets in `fuzz/`. They live here so that the saved corpus and
//! crash inputs also run as ordinary tests (`tests/fuzz_corpus.rs`). Each takes arbitrary
//! bytes from outside and must never panic; each asserts what must hold of its output.

use crate::dag::{Dag, MemStore};
use crate::entry::Entry;
use crate::hash::{EntryHash, HashAlgorithm};
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
    ("column_value", column_value),
    ("schema_entry", schema_entry),
    ("handoff", handoff),
    ("stored_entry", stored_entry),
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
    let parsed = WireEntry::parse(text).ok();
    // An import stores the payload's text as `stored_payload` codes it: it loads back exactly.
    if let Some(w) = &parsed {
        if let Some((key, stored)) = crate::stored_payload::store(w.payload) {
            assert_eq!(crate::stored_payload::load(key, &stored), w.payload);
        }
    }
    let wire = parsed.and_then(|w| w.decode().ok());
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
    if let Ok(h) = text.parse::<EntryHash>() {
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
    let decoded = SignedPayload::from_value(&value);
    // Decoding an owned value accepts and refuses the same payloads, with the same error.
    let owned = SignedPayload::from_owned(value);
    assert_eq!(owned.as_ref().map_err(ToString::to_string), decoded.as_ref().map_err(ToString::to_string));
    if let Ok(p) = decoded {
        assert_eq!(SignedPayload::from_value(&p.to_value()).ok(), Some(p));
    }
}

/// A column value from a peer's row operation, checked against a column type chosen by the
/// first byte (numeric's precision and scale by the next two); the rest is the value's JSON
/// text. The check never panics, and what a type takes, a wider type takes too: a longer
/// `varchar`, `text`, a `numeric` with one more digit or none, `double precision` for
/// `real`, `integer` for `smallint`, and `timestamptz` for a `timestamp` read as UTC.
pub fn column_value(data: &[u8]) {
    use crate::schema::{check_value, ColumnType as T};
    let [kind, p, s, rest @ ..] = data else { return };
    let ty = match kind % 16 {
        0 => T::Text,
        1 => T::Varchar(Some(u32::from(*p % 8))),
        2 => T::Int2,
        3 => T::Int4,
        4 => T::Int8,
        5 => T::Numeric { precision: Some(u32::from(*p % 40) + 1), scale: Some(u32::from(*s % 20)) },
        6 => T::Numeric { precision: None, scale: None },
        7 => T::Float8,
        8 => T::Float4,
        9 => T::Bool,
        10 => T::Date,
        11 => T::Timestamp,
        12 => T::Timestamptz,
        13 => T::Uuid,
        14 => T::Bytea,
        _ => T::Jsonb,
    };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    // The value as JSON, or else the text itself as a string.
    let value = parse(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()));
    if check_value(&ty, &value).is_err() {
        return;
    }
    let wider: Vec<(T, serde_json::Value)> = match &ty {
        T::Varchar(Some(n)) => vec![(T::Varchar(Some(n + 1)), value.clone()), (T::Text, value.clone())],
        T::Numeric { precision: Some(p), scale } => vec![
            (T::Numeric { precision: Some(p + 1), scale: *scale }, value.clone()),
            (T::Numeric { precision: None, scale: None }, value.clone()),
        ],
        T::Float4 => vec![(T::Float8, value.clone())],
        T::Int2 => vec![(T::Int4, value.clone())],
        T::Timestamp => match value.as_str() {
            Some("infinity" | "-infinity") | None => vec![],
            Some(s) => {
                let utc = match s.strip_suffix(" BC") {
                    Some(body) => format!("{body}Z BC"),
                    None => format!("{s}Z"),
                };
                vec![(T::Timestamptz, serde_json::Value::String(utc))]
            }
        },
        _ => vec![],
    };
    for (w, v) in wider {
        assert!(check_value(&w, &v).is_ok(), "{ty:?} takes {value} but {w:?} refuses {v}");
    }
}

/// Whether SQL text is one statement: no `;` outside string literals and quoted identifiers.
fn one_statement(sql: &str) -> bool {
    let (mut in_str, mut in_ident) = (false, false);
    for c in sql.chars() {
        match c {
            '\'' if !in_ident => in_str = !in_str,
            '"' if !in_str => in_ident = !in_ident,
            ';' if !in_str && !in_ident => return false,
            _ => {}
        }
    }
    !in_str && !in_ident
}

/// A schema entry from a (possibly hostile) admin, as import checks it: the first line is the
/// table name the operation gives, the rest the recorded schema as JSON, or an expression. What
/// the checks accept must turn into DDL, each statement one statement, with each CHECK written
/// from its parsed tree; an expression the language reads is written as one SQL expression.
pub fn schema_entry(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (op_table, rest) = text.split_once('\n').unwrap_or((text, ""));
    let columns = ["a", "b", "Odd \"c\""];
    for usage in [crate::sql_expr::Use::Check { columns: &columns }, crate::sql_expr::Use::Default] {
        if let Ok(e) = crate::sql_expr::parse(rest, usage) {
            assert!(one_statement(&e.to_sql()), "expression {rest:?} wrote {}", e.to_sql());
        }
    }
    let Ok(value) = parse(rest) else { return };
    let Ok(schema) = crate::schema::TableSchema::from_value(&value) else { return };
    let mut none = |_: &str| Ok(None);
    if crate::schema_check::check_schema_entry(op_table, &schema, None, &mut none).is_ok() {
        let statements = crate::ddl::create_table(&schema).expect("a checked schema has DDL");
        for s in &statements {
            assert!(one_statement(s), "{s}");
        }
        let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        for c in &schema.checks {
            let written = crate::sql_expr::parse(&c.expression, crate::sql_expr::Use::Check { columns: &columns })
                .expect("a checked CHECK parses")
                .to_sql();
            assert!(statements.last().is_some_and(|s| s.contains(&format!("CHECK ({written})"))), "{statements:?}");
        }
    }
}

/// Decoded commits handed from the decoding backend to the sealing one (`handoff`): refused, or
/// read in the one form that encodes back to the same bytes.
pub fn handoff(data: &[u8]) {
    if let Ok(batch) = crate::handoff::Batch::decode(data) {
        assert_eq!(batch.encode(), data, "a batch read back is written differently");
    }
}

/// The packed columns of an entry row, which any role can hand to the SQL functions that read
/// them (`causal._entry_preds`, `causal._entry_payload`): the first 4 bytes are a node id, the
/// rest packed links, and the same bytes as text a stored payload. Links are refused or
/// unpack to what packs back the same; a stored payload loads whatever it holds, and what
/// `store` makes of a payload loads back exactly.
pub fn stored_entry(data: &[u8]) {
    use crate::dag::{links, NodeId};
    if let Some((id, rest)) = data.split_first_chunk::<4>() {
        let node = NodeId(u32::from_le_bytes(*id));
        if let Ok((preds, clock)) = links::unpack(node, rest) {
            assert_eq!(links::pack(node, &preds, &clock).ok().as_deref(), Some(rest), "links do not re-encode");
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::stored_payload::load("key", text);
    if let Some((key, stored)) = crate::stored_payload::store(text) {
        assert_eq!(crate::stored_payload::load(key, &stored), text);
    }
}
