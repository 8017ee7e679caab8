//! Entries and bundles as they arrive, read without building a JSON value for the whole text.
//!
//! [`Entry::from_wire`] takes a parsed [`Value`]. A bundle of 100k entries parsed that way
//! is a tree of about a million small maps: most of an import's memory, and on a fresh
//! backend most of its parsing time went to the page faults of allocating it. Here a bundle
//! is split into its entries' texts, and an entry keeps its payload as text ([`WireEntry`]);
//! the payload is parsed where it is checked, a chunk at a time, and that value is dropped
//! once the payload is decoded.
//!
//! What this module accepts, [`Entry::from_wire`] accepts too, with the same hash, header and
//! payload (the `entry_wire` fuzz target and the tests below check it), with one difference
//! each way:
//! - a field named twice in an entry or header is refused (a JSON value keeps the last);
//! - the payload's text is read only for its extent, so a string escape in it that is no
//!   character (a lone surrogate, `"\udbbb"`) is found when the payload is parsed: that
//!   entry is refused then, by the checks, where a parsed bundle was refused whole.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::entry::{Entry, Header, Meta, Position, WireError, MAX_PREDECESSORS};
use crate::hash::EntryHash;
use crate::json::JsonError;

/// An entry in wire form with its hash and header decoded and its payload still JSON text
/// (borrowed from the bundle).
#[derive(Clone, Debug, PartialEq)]
pub struct WireEntry<'a> {
    pub hash: EntryHash,
    pub header: Header,
    /// The payload's JSON text exactly as it came: it parses to the payload value.
    pub payload: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFields<'a> {
    #[serde(borrow)]
    hash: Cow<'a, str>,
    #[serde(borrow)]
    header: HeaderFields<'a>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderFields<'a> {
    #[serde(rename = "payloadHash", borrow)]
    payload_hash: Cow<'a, str>,
    #[serde(rename = "prevEntryHashes")]
    prev: PrevSet,
}

/// `prevEntryHashes`: an object whose keys are hashes and whose values are all `""`.
struct PrevSet(Position);

impl<'de> Deserialize<'de> for PrevSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PrevSet, D::Error> {
        struct SetVisitor;
        impl<'de> Visitor<'de> for SetVisitor {
            type Value = PrevSet;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of hashes whose values are \"\"")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<PrevSet, M::Error> {
                let mut prev = Position::new();
                while let Some((key, value)) = map.next_entry::<Cow<'de, str>, Value>()? {
                    if value.as_str() != Some("") {
                        return Err(de::Error::custom(WireError::NotASet));
                    }
                    let h = key.parse::<EntryHash>().map_err(|e| {
                        de::Error::custom(WireError::BadHash { field: "header.prevEntryHashes", reason: e.to_string() })
                    })?;
                    prev.insert(h);
                    // Counted as it grows, so a hostile header costs no more than the bound.
                    if prev.len() > MAX_PREDECESSORS {
                        return Err(de::Error::custom(WireError::TooManyPredecessors(prev.len())));
                    }
                }
                Ok(PrevSet(prev))
            }
        }
        d.deserialize_any(SetVisitor)
    }
}

fn hash_field<H: std::str::FromStr<Err = crate::hash::ParseHashError>>(
    text: &str,
    field: &'static str,
) -> Result<H, WireError> {
    text.parse().map_err(|e: crate::hash::ParseHashError| WireError::BadHash { field, reason: e.to_string() })
}

impl<'a> WireEntry<'a> {
    /// Reads one entry's wire text (`{"hash", "header", "payload"}`). The hashes are not
    /// checked here (see [`crate::precheck`]).
    pub fn parse(text: &'a str) -> Result<WireEntry<'a>, WireError> {
        let fields: EntryFields<'a> = serde_json::from_str(text).map_err(|e| WireError::Syntax(e.to_string()))?;
        Self::from_fields(fields)
    }

    /// [`WireEntry::parse`] for an entry's text inside a bundle.
    pub fn from_raw(raw: &'a RawValue) -> Result<WireEntry<'a>, WireError> {
        Self::parse(raw.get())
    }

    fn from_fields(fields: EntryFields<'a>) -> Result<WireEntry<'a>, WireError> {
        Ok(WireEntry {
            hash: hash_field(&fields.hash, "hash")?,
            header: Header {
                payload_hash: hash_field(&fields.header.payload_hash, "header.payloadHash")?,
                prev: fields.header.prev.0,
            },
            payload: fields.payload.get(),
        })
    }

    /// The payload as a value.
    pub fn payload_value(&self) -> Result<Value, JsonError> {
        crate::json::parse(self.payload)
    }

    /// The entry with its payload parsed.
    pub fn decode(&self) -> Result<Entry, JsonError> {
        Ok(Entry { hash: self.hash, header: self.header.clone(), payload: self.payload_value()?, meta: Meta::new() })
    }
}

/// Why a bundle cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("not JSON: {0}")]
    Syntax(String),
    #[error("format {found:?} is not one this version reads ({readable})", readable = crate::READ_BUNDLE_FORMATS.join(", "))]
    Format { found: String },
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("entry {index}: {error}")]
    Entry { index: usize, error: WireError },
}

#[derive(Deserialize)]
struct BundleFields<'a> {
    #[serde(borrow, default)]
    format: Option<&'a RawValue>,
    #[serde(borrow, default)]
    group: Option<&'a RawValue>,
    #[serde(rename = "hashAlgorithm", borrow, default)]
    hash_algorithm: Option<&'a RawValue>,
    #[serde(borrow, default)]
    entries: Option<&'a RawValue>,
}

/// A bundle (`{"format", "group", "hashAlgorithm", "entries"}`) with its entries read.
#[derive(Debug)]
pub struct WireBundle<'a> {
    pub group: String,
    pub hash_algorithm: String,
    pub entries: Vec<WireEntry<'a>>,
}

/// A string field of the bundle; anything else (or nothing) is missing.
fn string_field(raw: Option<&RawValue>, name: &'static str) -> Result<String, BundleError> {
    raw.and_then(|r| serde_json::from_str::<String>(r.get()).ok()).ok_or(BundleError::Missing(name))
}

/// [`BundleFields`] with the entries read as a list in the same pass: a well-formed bundle's
/// text is scanned once here, not twice. Anything it refuses is read again the other way, for
/// the precise error.
#[derive(Deserialize)]
struct BundleList<'a> {
    #[serde(borrow)]
    format: &'a RawValue,
    #[serde(borrow)]
    group: &'a RawValue,
    #[serde(rename = "hashAlgorithm", borrow)]
    hash_algorithm: &'a RawValue,
    #[serde(borrow)]
    entries: Vec<&'a RawValue>,
}

impl<'a> WireBundle<'a> {
    /// Reads a bundle; any malformed part refuses the whole of it. Fields other than the four
    /// are ignored.
    pub fn parse(text: &'a str) -> Result<WireBundle<'a>, BundleError> {
        if let Ok(list) = serde_json::from_str::<BundleList<'a>>(text) {
            if string_field(Some(list.format), "format").is_ok_and(|f| crate::READ_BUNDLE_FORMATS.contains(&f.as_str()))
            {
                let group = string_field(Some(list.group), "group")?;
                let hash_algorithm = string_field(Some(list.hash_algorithm), "hashAlgorithm")?;
                let entries = read_entries(&list.entries)?;
                return Ok(WireBundle { group, hash_algorithm, entries });
            }
        }
        let fields: BundleFields<'a> = serde_json::from_str(text).map_err(|e| BundleError::Syntax(e.to_string()))?;
        let format = string_field(fields.format, "format")?;
        if !crate::READ_BUNDLE_FORMATS.contains(&format.as_str()) {
            return Err(BundleError::Format { found: format.chars().take(64).collect() });
        }
        let group = string_field(fields.group, "group")?;
        let hash_algorithm = string_field(fields.hash_algorithm, "hashAlgorithm")?;
        let raw: Vec<&'a RawValue> =
            fields.entries.and_then(|r| serde_json::from_str(r.get()).ok()).ok_or(BundleError::Missing("entries"))?;
        let entries = read_entries(&raw)?;
        Ok(WireBundle { group, hash_algorithm, entries })
    }
}

/// Entries read per thread at least: below this, one thread reads them all.
const ENTRIES_PER_READER: usize = 4096;

/// Reads the entries' texts, the second half on another thread when there are many (a 100k
/// bundle is read in about half the time); the error is the first entry's that fails.
fn read_entries<'a>(raw: &[&'a RawValue]) -> Result<Vec<WireEntry<'a>>, BundleError> {
    let read = |offset: usize, part: &[&'a RawValue]| -> Result<Vec<WireEntry<'a>>, BundleError> {
        part.iter()
            .enumerate()
            .map(|(i, r)| WireEntry::from_raw(r).map_err(|error| BundleError::Entry { index: offset + i, error }))
            .collect()
    };
    if raw.len() < 2 * ENTRIES_PER_READER {
        return read(0, raw);
    }
    let (first, second) = raw.split_at(raw.len() / 2);
    let (a, b) = std::thread::scope(|s| {
        let other = s.spawn(|| read(first.len(), second));
        let mine = read(0, first);
        // A panic on the other thread (none is expected: reading returns errors) is read
        // again here rather than lost.
        (mine, other.join().unwrap_or_else(|_| read(first.len(), second)))
    });
    let mut entries = a?;
    entries.extend(b?);
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashAlgorithm;
    use serde_json::json;

    fn entry(payload: Value, prev: Position) -> Entry {
        Entry::new(HashAlgorithm::Blake3, payload, prev, Meta::new()).expect("entry")
    }

    #[test]
    fn reads_what_from_wire_reads() {
        let a = entry(json!({"n": 1, "s": "x\u{1}y", "big": 12345678901234567890u64}), Position::new());
        let b = entry(json!([1, 2.5, "z", {"k": [true]}]), [a.hash].into_iter().collect());
        for e in [&a, &b] {
            let text = e.to_wire().to_string();
            let w = WireEntry::parse(&text).expect("parses");
            assert_eq!(w.decode().expect("payload"), Entry::from_wire(&crate::json::parse(&text).unwrap()).unwrap());
            assert_eq!(&w.decode().unwrap(), e);
        }
    }

    #[test]
    fn refuses_what_from_wire_refuses() {
        let a = entry(json!({"n": 1}), Position::new());
        let good = a.to_wire();
        let mut cases = Vec::new();
        let mut extra = good.clone();
        extra["extra"] = json!(1);
        cases.push(extra);
        let mut no_payload = good.clone();
        no_payload.as_object_mut().unwrap().remove("payload");
        cases.push(no_payload);
        let mut bad_hash = good.clone();
        bad_hash["hash"] = json!("nope");
        cases.push(bad_hash);
        let mut not_set = good.clone();
        not_set["header"]["prevEntryHashes"] = json!({a.hash.to_b64(): "x"});
        cases.push(not_set);
        let mut header_extra = good.clone();
        header_extra["header"]["more"] = json!(0);
        cases.push(header_extra);
        let mut prev_array = good.clone();
        prev_array["header"]["prevEntryHashes"] = json!([a.hash.to_b64()]);
        cases.push(prev_array);
        cases.push(json!([1, 2]));
        for c in cases {
            assert!(Entry::from_wire(&c).is_err(), "from_wire accepts {c}");
            assert!(WireEntry::parse(&c.to_string()).is_err(), "WireEntry accepts {c}");
        }
        // Too many predecessors, counted while reading.
        let many: serde_json::Map<String, Value> = (0..=MAX_PREDECESSORS)
            .map(|i| (HashAlgorithm::Blake3.digest(&i.to_le_bytes()).to_b64(), json!("")))
            .collect();
        let mut wide = good.clone();
        wide["header"]["prevEntryHashes"] = Value::Object(many);
        assert!(matches!(
            WireEntry::parse(&wide.to_string()),
            Err(WireError::Syntax(m)) if m.contains("at most")
        ));
    }

    /// A payload whose text is not a JSON value (a lone surrogate) is read, and fails when
    /// the payload is parsed.
    #[test]
    fn a_payload_escape_is_checked_when_parsed() {
        let text = r#"{"hash":"jyS7yZgEcWXymVGADADH7c7IO/LbJLLUER+y0SyauKY=","header":{"payloadHash":"d6FrPmyGUNaWLbSxLDhashSh0VNBKfzZyBuRVgnzCfM=","prevEntryHashes":{}},"payload":{"a":"\udbbb"}}"#;
        assert!(crate::json::parse(text).is_err());
        let w = WireEntry::parse(text).expect("read");
        assert!(w.payload_value().is_err());
    }

    #[test]
    fn a_field_named_twice_is_refused() {
        let a = entry(json!({"n": 1}), Position::new());
        let text = a.to_wire().to_string();
        let twice = format!("{{\"hash\":\"{}\",{}", a.hash.to_b64(), &text[1..]);
        assert!(WireEntry::parse(&twice).is_err());
    }

    /// A bundle large enough to be read on two threads reads as one thread reads it, and its
    /// first bad entry is the one reported.
    #[test]
    fn a_large_bundle_reads_alike_on_two_threads() {
        let mut prev = Position::new();
        let mut wires = Vec::new();
        let mut expected = Vec::new();
        for n in 0..(2 * ENTRIES_PER_READER + 3) {
            let e = entry(json!({"n": n}), prev.clone());
            prev = [e.hash].into_iter().collect();
            wires.push(e.to_wire());
            expected.push(e);
        }
        let bundle = |entries: &[Value]| {
            json!({"format": crate::BUNDLE_FORMAT, "group": "g", "hashAlgorithm": "blake3", "entries": entries})
                .to_string()
        };
        let text = bundle(&wires);
        let read = WireBundle::parse(&text).expect("bundle");
        let decoded: Vec<Entry> = read.entries.iter().map(|e| e.decode().unwrap()).collect();
        assert_eq!(decoded, expected);
        let late = wires.len() - 2;
        wires[late]["hash"] = json!("bad");
        wires[late + 1]["hash"] = json!("bad");
        let text = bundle(&wires);
        assert!(matches!(WireBundle::parse(&text), Err(BundleError::Entry { index, .. }) if index == late));
        wires[5]["hash"] = json!("bad");
        let text = bundle(&wires);
        assert!(matches!(WireBundle::parse(&text), Err(BundleError::Entry { index: 5, .. })));
    }

    #[test]
    fn bundles() {
        let a = entry(json!({"n": 1}), Position::new());
        let b = entry(json!({"n": 2}), [a.hash].into_iter().collect());
        let text = json!({"format": crate::BUNDLE_FORMAT, "group": "g", "hashAlgorithm": "blake3", "other": 1,
                          "entries": [a.to_wire(), b.to_wire()]})
        .to_string();
        let bundle = WireBundle::parse(&text).expect("bundle");
        assert_eq!((bundle.group.as_str(), bundle.hash_algorithm.as_str()), ("g", "blake3"));
        let decoded: Vec<Entry> = bundle.entries.iter().map(|e| e.decode().unwrap()).collect();
        assert_eq!(decoded, vec![a.clone(), b]);
        let refuse = |v: Value| WireBundle::parse(&v.to_string()).map(|_| ()).unwrap_err();
        assert_eq!(
            refuse(json!({"format": "x", "group": "g", "hashAlgorithm": "h", "entries": []})),
            BundleError::Format { found: "x".into() }
        );
        // A bundle of the first format (signed entries only) is read too.
        let v1 = json!({"format": "pg_causal-bundle/1", "group": "g", "hashAlgorithm": "h", "entries": []});
        assert!(WireBundle::parse(&v1.to_string()).is_ok());
        assert_eq!(
            refuse(json!({"format": crate::BUNDLE_FORMAT, "hashAlgorithm": "h", "entries": []})),
            BundleError::Missing("group")
        );
        assert_eq!(
            refuse(json!({"format": crate::BUNDLE_FORMAT, "group": "g", "hashAlgorithm": "h", "entries": {}})),
            BundleError::Missing("entries")
        );
        assert!(matches!(
            refuse(
                json!({"format": crate::BUNDLE_FORMAT, "group": "g", "hashAlgorithm": "h", "entries": [a.to_wire(), 5]})
            ),
            BundleError::Entry { index: 1, .. }
        ));
        assert!(matches!(WireBundle::parse("{\"format\":"), Err(BundleError::Syntax(_))));
    }
}
