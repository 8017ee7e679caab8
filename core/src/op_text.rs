//! Operations written as text once, for a local commit that only stores its entry.
//!
//! A commit signs its operations' canonical text, hashes the payload's canonical text, and
//! stores the payload as JSON text. Built from [`Op`] values, each row is made into a JSON map,
//! walked for the canonical text, and serialized again for storage. An [`OpText`] is written
//! once: its canonical text, which is also its stored text whenever the two agree (plain
//! strings, integers and booleans; [`canonical_is_plain`]); only an operation whose canonical
//! text is not ordinary JSON of the same value keeps a second, serialized text.
//! [`InsertWriter`] writes an insert's text straight from its column values.
//!
//! The texts are byte for byte what the [`Op`] path produces: the same canonical payload, so
//! the same hashes and signature, and a stored text that parses to the same payload value
//! (tests below, and in `tests/op_text.rs`).

use serde_json::{Map, Value};

use crate::entry::Position;
use crate::hash::GroupId;
use crate::identity::{KeyId, Keypair};
use crate::json::{
    array_order, canonical_is_plain, canonical_string, cmp_utf16, parse, write_canonical, write_string, JsonError,
};
use crate::payload::{sign_ops_text, Op, PayloadError};

/// One operation's texts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpText {
    /// The canonical text: what is signed and hashed.
    canonical: String,
    /// The text to store, when the canonical text is not ordinary JSON of the same value.
    stored: Option<String>,
}

impl OpText {
    /// The texts of an operation.
    pub fn from_op(op: &Op) -> Result<OpText, JsonError> {
        let value = op.to_value();
        let canonical = canonical_string(&value)?;
        let stored = if canonical_is_plain(&value) { None } else { Some(value.to_string()) };
        Ok(OpText { canonical, stored })
    }

    /// An operation's texts as [`OpText::canonical`] and [`OpText::stored_if_different`] gave
    /// them, handed over from another backend (`handoff`). They are taken as they are: the
    /// canonical text is what gets signed.
    pub fn from_texts(canonical: String, stored: Option<String>) -> OpText {
        OpText { canonical, stored }
    }

    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The text to store, when it is not the canonical text.
    pub fn stored_if_different(&self) -> Option<&str> {
        self.stored.as_deref()
    }

    /// JSON text of the operation, to store or send.
    pub fn stored(&self) -> &str {
        self.stored.as_deref().unwrap_or(&self.canonical)
    }

    /// The operation, decoded again (for a commit that the engine places at once).
    pub fn to_op(&self) -> Result<Op, PayloadError> {
        let value = parse(self.stored()).map_err(|e| PayloadError::Malformed(e.to_string()))?;
        Op::from_value(&value)
    }
}

/// Writes the insert operations of one table from column values, in the column order given
/// to [`InsertWriter::new`].
#[derive(Clone, Debug)]
pub struct InsertWriter {
    table: String,
    columns: Vec<String>,
    /// Column indexes in canonical key order, with each key's canonical text and `:`.
    order: Vec<(usize, String)>,
    /// `},"table":"<table>"}`.
    suffix: String,
    /// Whether the table and column names are plain JSON strings in canonical form.
    names_plain: bool,
}

impl InsertWriter {
    pub fn new(table: &str, columns: &[&str]) -> InsertWriter {
        let mut order: Vec<usize> = (0..columns.len()).collect();
        order.sort_by(|a, b| cmp_utf16(columns[*a], columns[*b]));
        let key = |name: &str| {
            let mut k = canonical_string(&Value::String(name.to_string())).unwrap_or_default();
            k.push(':');
            k
        };
        let plain = |name: &str| canonical_is_plain(&Value::String(name.to_string()));
        InsertWriter {
            table: table.to_string(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            order: order.into_iter().map(|i| (i, key(columns[i]))).collect(),
            suffix: format!(
                "}},\"table\":{}}}",
                canonical_string(&Value::String(table.to_string())).unwrap_or_default()
            ),
            names_plain: plain(table) && columns.iter().all(|c| plain(c)),
        }
    }

    /// The insert of a row whose column values (`None` for NULL) are `values`, one per column.
    pub fn write(&self, values: &[Option<Value>]) -> Result<OpText, JsonError> {
        let fields: Vec<Field<'_>> = values.iter().map(|v| v.as_ref().map_or(Field::Null, Field::of)).collect();
        self.write_fields(&fields)
    }

    /// [`InsertWriter::write`] from fields, which borrow strings instead of owning them.
    pub fn write_fields(&self, fields: &[Field<'_>]) -> Result<OpText, JsonError> {
        if fields.len() != self.columns.len() {
            return Err(JsonError::Syntax(format!(
                "{} values for the {} columns of {}",
                fields.len(),
                self.columns.len(),
                self.table
            )));
        }
        let mut canonical = String::with_capacity(64 + 24 * fields.len());
        canonical.push_str("{\"op\":\"insert\",\"row\":{");
        let mut plain = self.names_plain;
        let mut first = true;
        for (i, key) in &self.order {
            let field = &fields[*i];
            if matches!(field, Field::Null) {
                continue;
            }
            if !first {
                canonical.push(',');
            }
            first = false;
            canonical.push_str(key);
            plain &= field.write(&mut canonical)?;
        }
        canonical.push_str(&self.suffix);
        let stored = if plain {
            None
        } else {
            let row: Map<String, Value> =
                self.columns.iter().zip(fields).filter_map(|(c, v)| v.to_value().map(|v| (c.clone(), v))).collect();
            Some(Op::Insert { table: self.table.clone(), row }.into_value().to_string())
        };
        Ok(OpText { canonical, stored })
    }
}

/// One column value of a row for [`InsertWriter::write_fields`].
#[derive(Clone, Debug, PartialEq)]
pub enum Field<'a> {
    /// SQL NULL: the column is left out of the row.
    Null,
    Bool(bool),
    /// An integer; beyond ±2^53 it is written as [`Field::Value`] would write the number.
    Int(i64),
    Str(&'a str),
    /// Any other literal.
    Value(Value),
}

impl<'a> Field<'a> {
    /// The narrowest cell for a value (a string is borrowed).
    pub fn of(v: &'a Value) -> Field<'a> {
        match v {
            Value::Bool(b) => Field::Bool(*b),
            Value::String(s) => Field::Str(s),
            Value::Number(n) => match n.as_i64() {
                Some(i) if n.to_string() == i.to_string() => Field::Int(i),
                _ => Field::Value(v.clone()),
            },
            _ => Field::Value(v.clone()),
        }
    }

    fn to_value(&self) -> Option<Value> {
        match self {
            Field::Null => None,
            Field::Bool(b) => Some(Value::Bool(*b)),
            Field::Int(i) => Some(Value::from(*i)),
            Field::Str(s) => Some(Value::String(s.to_string())),
            Field::Value(v) => Some(v.clone()),
        }
    }

    /// Appends the cell's canonical text; says whether that is also ordinary JSON text of it.
    fn write(&self, out: &mut String) -> Result<bool, JsonError> {
        const MAX_EXACT: i64 = 1 << 53;
        match self {
            Field::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Field::Int(i) if (-MAX_EXACT..=MAX_EXACT).contains(i) => {
                use std::fmt::Write;
                let _ = write!(out, "{i}");
            }
            Field::Str(s) => {
                write_string(s, out);
                return Ok(!s.bytes().any(|b| b < 0x20));
            }
            Field::Value(v) => {
                write_canonical(v, out)?;
                return Ok(canonical_is_plain(v));
            }
            Field::Null | Field::Int(_) => {
                let v = self.to_value().unwrap_or(Value::Null);
                write_canonical(&v, out)?;
                return Ok(canonical_is_plain(&v));
            }
        }
        Ok(true)
    }
}

/// A payload signed from operation texts: what [`crate::payload::SignedPayload::sign_encoded`]
/// gives, as text.
pub struct SignedText {
    /// The payload's canonical text (its hash is the payload hash).
    pub canonical: String,
    /// The payload as JSON text to store; it parses to the payload's value.
    pub stored: String,
}

/// Signs `ops` by `keypair` at `prev` of `group`, as
/// [`crate::payload::SignedPayload::sign_encoded`] signs the same operations.
pub fn sign_op_texts(
    keypair: &Keypair,
    group: &GroupId,
    ops: &[OpText],
    prev: &Position,
) -> Result<SignedText, JsonError> {
    let (canonical_ops, stored_ops) = ops_texts(ops);
    let signed = sign_ops_text(keypair, group, &canonical_ops, prev)?;
    let canonical = signed.payload_text(&canonical_ops);
    let stored = stored_ops.map(|t| signed.payload_text(&t)).unwrap_or_else(|| canonical.clone());
    Ok(SignedText { canonical, stored })
}

/// `ops` by `author` as an unsigned payload (`{"author", "ops"}`), for an entry that a later
/// signed entry of the same author covers ([`crate::signature_cover`]).
pub fn unsigned_op_texts(author: &KeyId, ops: &[OpText]) -> Result<SignedText, JsonError> {
    let (canonical_ops, stored_ops) = ops_texts(ops);
    let author_text = crate::json::canonical_string(&Value::String(author.to_b64()))?;
    let wrap = |ops_text: &str| {
        let mut out = String::with_capacity(ops_text.len() + 80);
        out.push_str("{\"author\":");
        out.push_str(&author_text);
        out.push_str(",\"ops\":");
        out.push_str(ops_text);
        out.push('}');
        out
    };
    let canonical = wrap(&canonical_ops);
    let stored = stored_ops.map(|t| wrap(&t)).unwrap_or_else(|| canonical.clone());
    Ok(SignedText { canonical, stored })
}

/// The operations' array as canonical text, and as text to store when that differs.
fn ops_texts(ops: &[OpText]) -> (String, Option<String>) {
    let len: usize = ops.iter().map(|o| o.canonical.len() + 1).sum();
    let mut canonical_ops = String::with_capacity(len + 2);
    canonical_ops.push('[');
    for (k, i) in array_order(ops.len()).into_iter().enumerate() {
        if k > 0 {
            canonical_ops.push(',');
        }
        canonical_ops.push_str(&ops[i].canonical);
    }
    canonical_ops.push(']');
    if ops.len() <= 10 && ops.iter().all(|o| o.stored.is_none()) {
        // Then the canonical text is the ordinary text: the same members in the same order.
        return (canonical_ops, None);
    }
    let mut stored_ops = String::with_capacity(len + 2);
    stored_ops.push('[');
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            stored_ops.push(',');
        }
        stored_ops.push_str(op.stored());
    }
    stored_ops.push(']');
    (canonical_ops, Some(stored_ops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::SignedPayload;
    use serde_json::json;

    fn row(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn an_insert_is_written_as_the_op_path_writes_it() {
        let w = InsertWriter::new("items", &["id", "payload", "n", "é", "\u{ffff}", "🎉"]);
        let cases: Vec<Vec<Option<Value>>> = vec![
            vec![Some(json!(1)), Some(json!("a")), None, Some(json!(true)), Some(json!("x")), Some(json!("y"))],
            vec![Some(json!(-7)), Some(json!("tab\there")), Some(json!(0)), None, None, None],
            vec![Some(json!(2)), Some(json!("q\"uo\\te")), Some(json!(1.5)), None, None, None],
            vec![Some(json!("123456789012345678901")), None, None, None, None, None],
        ];
        for values in cases {
            let text = w.write(&values).unwrap();
            let names = ["id", "payload", "n", "é", "\u{ffff}", "🎉"];
            let r = row(&names.iter().zip(&values).filter_map(|(n, v)| v.clone().map(|v| (*n, v))).collect::<Vec<_>>());
            let op = Op::Insert { table: "items".into(), row: r };
            assert_eq!(text.canonical(), canonical_string(&op.to_value()).unwrap());
            assert_eq!(parse(text.stored()).unwrap(), op.to_value(), "{}", text.stored());
            assert_eq!(text.to_op().unwrap(), op);
        }
    }

    #[test]
    fn texts_that_are_not_plain_json_keep_a_stored_form() {
        let w = InsertWriter::new("t", &["a"]);
        assert!(w.write(&[Some(json!("plain"))]).unwrap().stored.is_none());
        // A control character is raw in canonical text, which JSON text may not hold.
        let t = w.write(&[Some(json!("line\nbreak"))]).unwrap();
        assert!(t.canonical().contains('\n'));
        assert!(!t.stored().contains('\n'));
        // A number other than an integer is written the ECMAScript way in canonical form.
        assert!(w.write(&[Some(json!(1e21))]).unwrap().stored.is_some());
        // An integer beyond 2^53 is a double in canonical form, and exact in the stored text.
        let big = w.write_fields(&[Field::Int((1 << 53) + 1)]).unwrap();
        let op = Op::Insert { table: "t".into(), row: row(&[("a", json!((1i64 << 53) + 1))]) };
        assert_eq!(big.canonical(), canonical_string(&op.to_value()).unwrap());
        assert_eq!(parse(big.stored()).unwrap(), op.to_value());
        let named = InsertWriter::new("t", &["new\nline"]);
        assert!(named.write(&[Some(json!(1))]).unwrap().stored.is_some());
    }

    #[test]
    fn a_signed_text_payload_matches_the_value_path() {
        let kp = Keypair::generate();
        let group = crate::GroupId(crate::hash::HashAlgorithm::Blake3.digest(b"group"));
        let prev: Position = [crate::EntryHash(crate::hash::HashAlgorithm::Blake3.digest(b"p"))].into_iter().collect();
        let w = InsertWriter::new("items", &["id", "payload"]);
        for n in [1usize, 3, 10, 11, 25] {
            let mut ops = Vec::new();
            let mut texts = Vec::new();
            for i in 0..n {
                let s = if i % 7 == 3 { format!("r\u{1}{i}") } else { format!("row {i}") };
                let values = vec![Some(json!(i)), Some(json!(s))];
                texts.push(w.write(&values).unwrap());
                ops.push(Op::Insert { table: "items".into(), row: row(&[("id", json!(i)), ("payload", json!(s))]) });
            }
            let key = Op::Delete { table: "items".into(), key: row(&[("id", json!(0))]) };
            texts.push(OpText::from_op(&key).unwrap());
            ops.push(key);
            let signed = sign_op_texts(&kp, &group, &texts, &prev).unwrap();
            let encoded = SignedPayload::sign_encoded(&kp, &group, ops, &prev).unwrap();
            assert_eq!(signed.canonical, encoded.canonical, "{n} ops");
            assert_eq!(parse(&signed.stored).unwrap(), encoded.value, "{n} ops");
            let decoded = SignedPayload::from_value(&parse(&signed.stored).unwrap()).unwrap();
            assert_eq!(decoded, encoded.payload);
        }
    }

    /// An unsigned payload written from texts is the value path's unsigned payload, byte for
    /// byte in canonical form, and decodes back to it.
    #[test]
    fn an_unsigned_text_payload_matches_the_value_path() {
        let author = Keypair::generate().public().key_id();
        let w = InsertWriter::new("items", &["id", "payload"]);
        for n in [1usize, 11] {
            let texts: Vec<OpText> =
                (0..n).map(|i| w.write(&[Some(json!(i)), Some(json!("a\u{1}"))]).unwrap()).collect();
            let ops: Vec<Op> = (0..n)
                .map(|i| Op::Insert {
                    table: "items".into(),
                    row: row(&[("id", json!(i)), ("payload", json!("a\u{1}"))]),
                })
                .collect();
            let text = unsigned_op_texts(&author, &texts).unwrap();
            let value = SignedPayload::unsigned(author, ops).to_value();
            assert_eq!(text.canonical, canonical_string(&value).unwrap(), "{n} ops");
            assert_eq!(parse(&text.stored).unwrap(), value, "{n} ops");
            let decoded = SignedPayload::from_value(&value).unwrap();
            assert_eq!(decoded.signature, None);
            assert_eq!(decoded.author, author);
        }
    }

    #[test]
    fn an_encoded_entry_is_stored_as_the_value_entry_is() {
        use crate::dag::{Dag, DagStore, MemStore};
        use crate::entry::{EncodedEntry, Entry, Meta};
        let alg = crate::hash::HashAlgorithm::Sha256;
        let kp = Keypair::generate();
        let group = crate::GroupId(alg.digest(b"group"));
        let w = InsertWriter::new("items", &["id"]);
        let texts: Vec<OpText> = (0..12).map(|i| w.write(&[Some(json!(i))]).unwrap()).collect();
        let ops: Vec<Op> =
            (0..12).map(|i| Op::Insert { table: "items".into(), row: row(&[("id", json!(i))]) }).collect();
        let signed = sign_op_texts(&kp, &group, &texts, &Position::new()).unwrap();
        let encoded = SignedPayload::sign_encoded(&kp, &group, ops, &Position::new()).unwrap();
        let by_text = EncodedEntry::new(alg, &signed.canonical, signed.stored, Position::new(), Meta::new());
        let by_value = Entry::new(alg, encoded.value, Position::new(), Meta::new()).unwrap();
        assert_eq!(by_text.hash, by_value.hash);
        let mut dag = Dag::new(MemStore::new(), alg);
        let appended = dag.insert_encoded(by_text.clone()).unwrap();
        assert!(appended.new);
        assert!(!dag.insert_encoded(by_text).unwrap().new, "a second insert finds it stored");
        let stored = dag.store().entry(crate::dag::NodeId(0)).unwrap();
        assert_eq!(stored.hash, by_value.hash);
        assert_eq!(stored.payload, by_value.payload);
        stored.verify_hashes(alg).unwrap();
    }
}
