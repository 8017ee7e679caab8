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

/// The order in which the reference writes an array of `len` elements: by index string.
fn array_order(len: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if len > 10 {
        order.sort_by_cached_key(|i| i.to_string());
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

#[derive(Default)]
struct PathTracker {
    segments: Vec<String>,
}

impl PathTracker {
    fn render(&self) -> String {
        if self.segments.is_empty() {
            "the top level".to_string()
        } else {
            format!("${}", self.segments.concat())
        }
    }
}

fn write_string(s: &str, out: &mut String) {
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

fn write_value(value: &Value, out: &mut String, path: &mut PathTracker) -> Result<(), JsonError> {
    match value {
        Value::Null => return Err(JsonError::Null { path: path.render() }),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
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
            for (k, i) in array_order(items.len()).into_iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                path.segments.push(format!("[{i}]"));
                write_value(&items[i], out, path)?;
                path.segments.pop();
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| cmp_utf16(a, b));
            out.push('{');
            for (k, key) in keys.into_iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                path.segments.push(format!(".{key}"));
                write_value(&map[key.as_str()], out, path)?;
                path.segments.pop();
            }
            out.push('}');
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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
