//! Canonical JSON, byte-compatible with the Hyper Hyper Space v3 DAG format.
//!
//! A *literal* is a JSON value without `null`: booleans, finite numbers, strings, arrays and
//! objects. Its canonical text is what gets hashed, so two implementations must agree on every
//! byte. The rules (spec §2.2, plus two behaviours of the reference implementation that the
//! spec does not state; the conformance vectors are the authority):
//!
//! - no whitespace;
//! - numbers are IEEE-754 doubles written as ECMAScript's `Number::toString` writes them
//!   (`-0` is `0`); NaN and infinities are refused;
//! - strings escape only `\` and `"`; every other character, control characters included, is
//!   written as it is;
//! - object keys are sorted by UTF-16 code units (JavaScript's default sort), not by UTF-8
//!   bytes or code points;
//! - array elements are written in the lexicographic order of their index *strings*, so an
//!   array of 11 or more elements is permuted (`[0..=11]` becomes `[0,1,10,11,2,...]`). The
//!   canonical form is only hashed, never sent, so no data is lost.

use serde_json::Value;
use std::cmp::Ordering;

/// Why a JSON value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("null is not a valid literal (at {path})")]
    Null { path: String },
    #[error("the number {number} at {path} is not finite")]
    NonFinite { number: String, path: String },
    #[error("invalid JSON text: {0}")]
    Syntax(String),
}

/// Serializes a literal canonically.
pub fn canonical_string(value: &Value) -> Result<String, JsonError> {
    let mut out = String::with_capacity(64);
    write_value(value, &mut out, &mut PathTracker::default())?;
    Ok(out)
}

/// Parses JSON text into a value, keeping numbers exactly as written until they are
/// canonicalized (so an out-of-range number is reported as non-finite, not silently clamped).
pub fn parse(text: &str) -> Result<Value, JsonError> {
    serde_json::from_str(text).map_err(|e| JsonError::Syntax(e.to_string()))
}

/// Compares two strings by their UTF-16 code units, as JavaScript's default sort does.
pub fn cmp_utf16(a: &str, b: &str) -> Ordering {
    // Strings that are all below U+E000 compare the same way in UTF-8 and UTF-16; only
    // characters at or above U+E000 need the slower walk.
    if a.is_ascii() && b.is_ascii() {
        return a.as_bytes().cmp(b.as_bytes());
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

/// Formats a finite double as ECMAScript's `Number::toString` does.
pub fn format_number(n: f64) -> Option<String> {
    if !n.is_finite() {
        return None;
    }
    if n == 0.0 {
        return Some("0".to_string());
    }
    let mut buf = ryu_js::Buffer::new();
    Some(buf.format_finite(n).to_string())
}

/// Appends the canonical text of a literal to `out` (as [`canonical_string`] returns it).
pub fn write_canonical(value: &Value, out: &mut String) -> Result<(), JsonError> {
    write_value(value, out, &mut PathTracker::default())
}

/// Whether a literal's canonical text is also ordinary JSON text of the same value, so it can
/// be stored and sent as it is: no control character in any string or key (the canonical form
/// leaves them raw, which JSON does not allow), no number but an exact integer (others are
/// written the ECMAScript way), and no array of more than 10 elements (permuted).
pub fn canonical_is_plain(value: &Value) -> bool {
    let plain_str = |s: &str| !s.bytes().any(|b| b < 0x20);
    match value {
        Value::Null => false,
        Value::Bool(_) => true,
        // Integers are written as JSON reads them, except a zero written `-0`.
        Value::Number(n) => match exact_integer(n) {
            Some(0) => n.to_string() == "0",
            Some(_) => true,
            None => false,
        },
        Value::String(s) => plain_str(s),
        Value::Array(items) => items.len() <= 10 && items.iter().all(canonical_is_plain),
        Value::Object(map) => map.iter().all(|(k, v)| plain_str(k) && canonical_is_plain(v)),
    }
}

/// The order in which the reference writes an array of `len` elements: by index string.
///
/// Made without formatting or sorting (a 1,000-operation entry asks for it at every commit):
/// `0`, then a depth-first walk of the decimal prefix tree of `1..len`, which visits numbers in
/// the order of their strings (`1, 10, 100, 101, ..., 11, ...`).
pub fn array_order(len: usize) -> Vec<usize> {
    let mut order = Vec::with_capacity(len);
    if len <= 10 {
        order.extend(0..len);
        return order;
    }
    order.push(0);
    let mut n = 1;
    while order.len() < len {
        order.push(n);
        if n * 10 < len {
            n *= 10; // the first extension of n
        } else {
            // The next sibling, climbing while n is a last digit or the sibling is out of range.
            while n % 10 == 9 || n + 1 >= len {
                n /= 10;
            }
            n += 1;
        }
    }
    order
}

/// Long number texts (Postgres writes `1e400` as 401 digits) are cut for error messages.
fn abbreviate(text: &str) -> String {
    const KEEP: usize = 24;
    if text.len() <= KEEP + 8 {
        text.to_string()
    } else {
        format!("{}... ({} characters)", &text[..KEEP], text.len())
    }
}

/// Where the writer is, for error messages: borrowed keys and indexes, rendered only when an
/// error needs them (writing allocates nothing for it).
#[derive(Default)]
struct PathTracker<'v> {
    segments: Vec<Segment<'v>>,
}

enum Segment<'v> {
    Key(&'v str),
    Index(usize),
}

impl PathTracker<'_> {
    fn render(&self) -> String {
        if self.segments.is_empty() {
            return "the top level".to_string();
        }
        let mut out = String::from("$");
        for s in &self.segments {
            match s {
                Segment::Key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
}

/// The canonical text of an integer that a double represents exactly (|n| <= 2^53), which is
/// how ECMAScript writes it; None for any other number.
fn exact_integer(n: &serde_json::Number) -> Option<i64> {
    const MAX_EXACT: i64 = 1 << 53;
    n.as_i64().filter(|i| (-MAX_EXACT..=MAX_EXACT).contains(i))
}

/// Appends the canonical text of the string `s` (escaping only `\\` and `"`).
pub fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_value<'v>(value: &'v Value, out: &mut String, path: &mut PathTracker<'v>) -> Result<(), JsonError> {
    match value {
        Value::Null => return Err(JsonError::Null { path: path.render() }),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = exact_integer(n) {
                use std::fmt::Write;
                let _ = write!(out, "{i}");
                return Ok(());
            }
            let text = n.to_string();
            let as_double = n.as_f64().or_else(|| text.parse::<f64>().ok());
            match as_double.and_then(format_number) {
                Some(s) => out.push_str(&s),
                None => return Err(JsonError::NonFinite { number: abbreviate(&text), path: path.render() }),
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            let mut write_item = |k: usize, i: usize, out: &mut String| {
                if k > 0 {
                    out.push(',');
                }
                path.segments.push(Segment::Index(i));
                write_value(&items[i], out, path)?;
                path.segments.pop();
                Ok(())
            };
            if items.len() > 10 {
                for (k, i) in array_order(items.len()).into_iter().enumerate() {
                    write_item(k, i, out)?;
                }
            } else {
                for i in 0..items.len() {
                    write_item(i, i, out)?;
                }
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            let mut write_member = |k: usize, key: &'v String, item: &'v Value, out: &mut String| {
                if k > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                path.segments.push(Segment::Key(key));
                write_value(item, out, path)?;
                path.segments.pop();
                Ok::<(), JsonError>(())
            };
            // The map iterates in byte order, which is UTF-16 order unless a key holds a
            // character at or above U+E000: sort only then.
            let ordered = map.keys().zip(map.keys().skip(1)).all(|(a, b)| cmp_utf16(a, b) != Ordering::Greater);
            if ordered {
                for (k, (key, item)) in map.iter().enumerate() {
                    write_member(k, key, item, out)?;
                }
            } else {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_by(|a, b| cmp_utf16(a, b));
                for (k, key) in keys.into_iter().enumerate() {
                    write_member(k, key, &map[key.as_str()], out)?;
                }
            }
            out.push('}');
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_order_is_the_order_of_index_strings() {
        for len in (0..1200).chain([9_999, 10_000, 10_001, 12_345]) {
            let mut by_string: Vec<usize> = (0..len).collect();
            by_string.sort_by_cached_key(|i| i.to_string());
            assert_eq!(array_order(len), by_string, "length {len}");
        }
    }
    use serde_json::json;

    fn canon(text: &str) -> String {
        canonical_string(&parse(text).unwrap()).unwrap()
    }

    #[test]
    fn spec_examples() {
        assert_eq!(canon(r#"{"b":1,"a":2}"#), r#"{"a":2,"b":1}"#);
        assert_eq!(canon("42.0"), "42");
        assert_eq!(canon("0.1"), "0.1");
        assert_eq!(canon("-0"), "0");
        assert_eq!(canon("-0.0"), "0");
        assert_eq!(canon("1e21"), "1e+21");
        assert_eq!(canon("1e20"), "100000000000000000000");
        assert_eq!(canon("5e-7"), "5e-7");
        assert_eq!(canon("[3, 1, 2]"), "[3,1,2]");
        assert_eq!(canon(r#""say \"hi\"""#), r#""say \"hi\"""#);
    }

    #[test]
    fn control_characters_are_not_escaped() {
        assert_eq!(canonical_string(&json!("a\nb\u{0}")).unwrap(), "\"a\nb\u{0}\"");
    }

    #[test]
    fn keys_sort_by_utf16_units() {
        assert_eq!(
            canonical_string(&json!({"\u{ffff}": 1, "🎉": 2, "a": 3})).unwrap(),
            "{\"a\":3,\"🎉\":2,\"\u{ffff}\":1}"
        );
    }

    #[test]
    fn long_arrays_use_index_string_order() {
        let v: Value = (0..12).collect::<Vec<i32>>().into();
        assert_eq!(canonical_string(&v).unwrap(), "[0,1,10,11,2,3,4,5,6,7,8,9]");
    }

    /// The rules written as plainly as possible: every object's keys sorted, every number
    /// through the double formatter. The writer's shortcuts must give the same bytes.
    fn plain_canonical(v: &Value) -> String {
        match v {
            Value::Null => unreachable!("no nulls are generated"),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => format_number(n.to_string().parse::<f64>().unwrap()).unwrap(),
            Value::String(s) => {
                let mut out = String::new();
                write_string(s, &mut out);
                out
            }
            Value::Array(items) => {
                let parts: Vec<String> =
                    array_order(items.len()).into_iter().map(|i| plain_canonical(&items[i])).collect();
                format!("[{}]", parts.join(","))
            }
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
                let parts: Vec<String> = keys
                    .into_iter()
                    .map(|k| {
                        let mut out = String::new();
                        write_string(k, &mut out);
                        format!("{out}:{}", plain_canonical(&map[k.as_str()]))
                    })
                    .collect();
                format!("{{{}}}", parts.join(","))
            }
        }
    }

    fn literal() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let key = prop_oneof!["[a-z]{0,3}", "[\\u{0}-\\u{ffff}]{0,2}", "[🎉\\u{e000}\\u{ffff}a]{1,2}"];
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ((1i64 << 53) - 3..(1i64 << 53) + 3).prop_map(Value::from),
            (-(1i64 << 53) - 3..-(1i64 << 53) + 3).prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "[a-z\"\\\\]{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 40, 13, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..13).prop_map(Value::from),
                proptest::collection::btree_map(key.clone(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn the_writer_matches_the_plain_rules(v in literal()) {
            proptest::prop_assert_eq!(canonical_string(&v).unwrap(), plain_canonical(&v));
        }
    }

    #[test]
    fn null_and_out_of_range_numbers_are_refused() {
        assert!(matches!(
            canonical_string(&json!({"a": [1, null]})),
            Err(JsonError::Null { path }) if path == "$.a[1]"
        ));
        let huge = parse("1e400").unwrap();
        assert!(matches!(canonical_string(&huge), Err(JsonError::NonFinite { .. })));
    }
}
