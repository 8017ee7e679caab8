//! DAG entries: a payload at a position, addressed by the hash of its header.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

use crate::hash::{EntryHash, Hash, HashAlgorithm};
use crate::json::JsonError;

/// A point in causal history: a set of entry hashes. Entry headers always carry a *minimal*
/// position (no member is in the history of another).
pub type Position = BTreeSet<EntryHash>;

/// Local indexing metadata of an entry: a map from keys to sets of strings. It is derived
/// from the payload, never hashed and never sent.
pub type Meta = BTreeMap<String, BTreeSet<String>>;

/// The hashed part of an entry: the payload's hash and the predecessor position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub payload_hash: Hash,
    pub prev: Position,
}

impl Header {
    /// The canonical text of `{"payloadHash": ..., "prevEntryHashes": {h: "", ...}}`.
    ///
    /// Written directly: Base64 text needs no escaping, and ASCII strings sort the same way by
    /// bytes and by UTF-16 units, so this equals the canonical serialization of the header
    /// literal (a unit test checks that).
    pub fn canonical(&self) -> String {
        let mut prev: Vec<String> = self.prev.iter().map(EntryHash::to_b64).collect();
        prev.sort_unstable();
        let mut out = String::with_capacity(40 + 50 * (prev.len() + 1));
        out.push_str("{\"payloadHash\":\"");
        out.push_str(&self.payload_hash.to_b64());
        out.push_str("\",\"prevEntryHashes\":{");
        for (i, h) in prev.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(h);
            out.push_str("\":\"\"");
        }
        out.push_str("}}");
        out
    }

    /// The header as a JSON literal.
    pub fn to_literal(&self) -> Value {
        let prev: serde_json::Map<String, Value> =
            self.prev.iter().map(|h| (h.to_b64(), Value::String(String::new()))).collect();
        serde_json::json!({ "payloadHash": self.payload_hash.to_b64(), "prevEntryHashes": prev })
    }

    pub fn entry_hash(&self, alg: HashAlgorithm) -> EntryHash {
        EntryHash(alg.digest(self.canonical().as_bytes()))
    }
}

/// One entry of a DAG.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub hash: EntryHash,
    pub header: Header,
    pub payload: Value,
    pub meta: Meta,
}

impl Entry {
    /// Builds the entry for `payload` at `prev`, computing both hashes.
    pub fn new(alg: HashAlgorithm, payload: Value, prev: Position, meta: Meta) -> Result<Entry, JsonError> {
        let payload_hash = alg.hash_literal(&payload)?;
        let header = Header { payload_hash, prev };
        Ok(Entry { hash: header.entry_hash(alg), header, payload, meta })
    }

    /// [`Entry::new`] for a payload whose canonical text the caller already has (it must be
    /// `canonical_string(&payload)`; see [`crate::payload::SignedPayload::sign_encoded`]).
    pub fn with_canonical_payload(
        alg: HashAlgorithm,
        payload: Value,
        canonical: &str,
        prev: Position,
        meta: Meta,
    ) -> Entry {
        let payload_hash = alg.digest(canonical.as_bytes());
        let header = Header { payload_hash, prev };
        Entry { hash: header.entry_hash(alg), header, payload, meta }
    }

    /// Recomputes both hashes and says which one, if any, does not match.
    pub fn verify_hashes(&self, alg: HashAlgorithm) -> Result<(), HashMismatch> {
        verify_hashes(alg, &self.hash, &self.header, &self.payload)
    }
}

/// Recomputes the payload hash of `payload` and the hash of `header`, and says which one, if
/// any, differs from what the entry states.
pub fn verify_hashes(
    alg: HashAlgorithm,
    hash: &EntryHash,
    header: &Header,
    payload: &Value,
) -> Result<(), HashMismatch> {
    let payload_hash = alg.hash_literal(payload).map_err(HashMismatch::Payload)?;
    if payload_hash != header.payload_hash {
        return Err(HashMismatch::PayloadHash { stated: header.payload_hash, actual: payload_hash });
    }
    let entry_hash = header.entry_hash(alg);
    if entry_hash != *hash {
        return Err(HashMismatch::EntryHash { stated: *hash, actual: entry_hash });
    }
    Ok(())
}

/// An entry whose payload is held as the JSON text to store, not as a value: a local commit
/// writes its payload's text once ([`crate::op_text`]) and never needs the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedEntry {
    pub hash: EntryHash,
    pub header: Header,
    /// JSON text of the payload; it parses to a value whose canonical text hashes to
    /// `header.payload_hash`.
    pub payload_text: String,
    pub meta: Meta,
}

impl EncodedEntry {
    /// The entry for a payload whose canonical text is `canonical` and whose stored text is
    /// `payload_text` (the caller guarantees they are the same value), at `prev`.
    pub fn new(alg: HashAlgorithm, canonical: &str, payload_text: String, prev: Position, meta: Meta) -> EncodedEntry {
        let header = Header { payload_hash: alg.digest(canonical.as_bytes()), prev };
        EncodedEntry { hash: header.entry_hash(alg), header, payload_text, meta }
    }

    /// The entry with its payload parsed.
    pub fn decode(self) -> Result<Entry, JsonError> {
        let payload = crate::json::parse(&self.payload_text)?;
        Ok(Entry { hash: self.hash, header: self.header, payload, meta: self.meta })
    }
}

/// Most predecessors an entry may name. A minimal cover is an antichain, so this bounds how
/// many concurrent branches one entry can merge; it keeps a hostile entry from costing
/// unbounded work.
pub const MAX_PREDECESSORS: usize = 1024;

/// Why a JSON value is not an entry (or header) in wire form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{0} must be a JSON object")]
    NotAnObject(&'static str),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("unexpected field {field:?} in {within}")]
    Unexpected { field: String, within: &'static str },
    #[error("{field} is not a hash: {reason}")]
    BadHash { field: &'static str, reason: String },
    #[error("prevEntryHashes must be a set: an object whose values are all \"\"")]
    NotASet,
    #[error("an entry may name at most {MAX_PREDECESSORS} predecessors; this one names {0}")]
    TooManyPredecessors(usize),
    /// The text is not an entry's JSON ([`crate::wire::WireEntry::parse`]).
    #[error("{0}")]
    Syntax(String),
}

impl Header {
    /// Reads a header from its JSON form, refusing anything but exactly the two fields.
    pub fn from_literal(v: &Value) -> Result<Header, WireError> {
        let obj = v.as_object().ok_or(WireError::NotAnObject("header"))?;
        for k in obj.keys() {
            if k != "payloadHash" && k != "prevEntryHashes" {
                return Err(WireError::Unexpected { field: k.chars().take(64).collect(), within: "header" });
            }
        }
        let payload_hash = parse_hash(obj.get("payloadHash"), "header.payloadHash")?;
        let prev_obj = obj
            .get("prevEntryHashes")
            .ok_or(WireError::Missing("header.prevEntryHashes"))?
            .as_object()
            .ok_or(WireError::NotASet)?;
        if prev_obj.len() > MAX_PREDECESSORS {
            return Err(WireError::TooManyPredecessors(prev_obj.len()));
        }
        let mut prev = Position::new();
        for (k, val) in prev_obj {
            if val.as_str() != Some("") {
                return Err(WireError::NotASet);
            }
            let h = k
                .parse::<EntryHash>()
                .map_err(|e| WireError::BadHash { field: "header.prevEntryHashes", reason: e.to_string() })?;
            prev.insert(h);
        }
        Ok(Header { payload_hash, prev })
    }
}

fn parse_hash<H: std::str::FromStr<Err = crate::hash::ParseHashError>>(
    v: Option<&Value>,
    field: &'static str,
) -> Result<H, WireError> {
    let s = v
        .ok_or(WireError::Missing(field))?
        .as_str()
        .ok_or(WireError::BadHash { field, reason: "not a string".into() })?;
    s.parse().map_err(|e: crate::hash::ParseHashError| WireError::BadHash { field, reason: e.to_string() })
}

impl Entry {
    /// The wire form `{"hash": ..., "header": {...}, "payload": ...}` (metadata is local and
    /// never sent).
    pub fn to_wire(&self) -> Value {
        serde_json::json!({ "hash": self.hash.to_b64(), "header": self.header.to_literal(), "payload": self.payload })
    }

    /// Reads an entry from its wire form. The hashes are *not* checked here; call
    /// [`Entry::verify_hashes`] (or insert it into a DAG, which does).
    pub fn from_wire(v: &Value) -> Result<Entry, WireError> {
        let obj = v.as_object().ok_or(WireError::NotAnObject("entry"))?;
        for k in obj.keys() {
            if k != "hash" && k != "header" && k != "payload" {
                return Err(WireError::Unexpected { field: k.chars().take(64).collect(), within: "entry" });
            }
        }
        let hash = parse_hash(obj.get("hash"), "hash")?;
        let header = Header::from_literal(obj.get("header").ok_or(WireError::Missing("header"))?)?;
        let payload = obj.get("payload").ok_or(WireError::Missing("payload"))?.clone();
        Ok(Entry { hash, header, payload, meta: Meta::new() })
    }
}

/// A stated hash that does not match the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashMismatch {
    #[error("payload is not a literal: {0}")]
    Payload(JsonError),
    #[error("payload hash mismatch: header says {stated}, payload hashes to {actual}")]
    PayloadHash { stated: Hash, actual: Hash },
    #[error("entry hash mismatch: entry says {stated}, header hashes to {actual}")]
    EntryHash { stated: EntryHash, actual: EntryHash },
}

/// Builds a `Meta` from `(key, values)` pairs.
pub fn meta<'a, I, V>(pairs: I) -> Meta
where
    I: IntoIterator<Item = (&'a str, V)>,
    V: IntoIterator<Item = &'a str>,
{
    pairs.into_iter().map(|(k, vs)| (k.to_string(), vs.into_iter().map(str::to_string).collect())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::canonical_string;
    use serde_json::json;

    #[test]
    fn direct_header_text_equals_canonical_literal() {
        let alg = HashAlgorithm::Sha256;
        let a = Entry::new(alg, json!({"op": "hello"}), Position::new(), Meta::new()).unwrap();
        let b = Entry::new(alg, json!({"op": "b"}), Position::new(), Meta::new()).unwrap();
        let c = Entry::new(alg, json!({"op": "world"}), [a.hash, b.hash].into(), Meta::new()).unwrap();
        for e in [&a, &b, &c] {
            assert_eq!(e.header.canonical(), canonical_string(&e.header.to_literal()).unwrap());
            e.verify_hashes(alg).unwrap();
        }
        assert!(a.header.canonical().ends_with("\"prevEntryHashes\":{}}"));
    }

    #[test]
    fn wire_form_round_trips_and_is_strict() {
        let alg = HashAlgorithm::Blake3;
        let a = Entry::new(alg, json!({"n": 1}), Position::new(), Meta::new()).unwrap();
        let b = Entry::new(alg, json!({"n": 2}), [a.hash].into(), Meta::new()).unwrap();
        let back = Entry::from_wire(&b.to_wire()).unwrap();
        assert_eq!(back, b);
        back.verify_hashes(alg).unwrap();

        let mut w = b.to_wire();
        w["extra"] = json!(1);
        assert!(matches!(Entry::from_wire(&w), Err(WireError::Unexpected { .. })));
        let mut w = b.to_wire();
        w["header"]["prevEntryHashes"][a.hash.to_b64()] = json!("x");
        assert_eq!(Entry::from_wire(&w), Err(WireError::NotASet));
        let mut w = b.to_wire();
        w["hash"] = json!("short");
        assert!(matches!(Entry::from_wire(&w), Err(WireError::BadHash { field: "hash", .. })));
        assert_eq!(Entry::from_wire(&json!([])), Err(WireError::NotAnObject("entry")));
        let mut w = b.to_wire();
        w.as_object_mut().unwrap().remove("payload");
        assert_eq!(Entry::from_wire(&w), Err(WireError::Missing("payload")));
    }

    #[test]
    fn tampering_is_detected() {
        let alg = HashAlgorithm::Blake3;
        let mut e = Entry::new(alg, json!({"n": 1}), Position::new(), Meta::new()).unwrap();
        e.payload = json!({"n": 2});
        assert!(matches!(e.verify_hashes(alg), Err(HashMismatch::PayloadHash { .. })));
    }
}
