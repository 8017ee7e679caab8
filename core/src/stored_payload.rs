//! How the catalog stores a payload's text: without its author, and with the fragments every
//! operation repeats written as one character each.
//!
//! Every data entry's payload begins with its author's key: canonical JSON sorts `author`
//! before `ops` and `signature`, so its text starts `{"author":"<44 characters of Base64>"`.
//! That is 55 bytes of each payload, the same in nearly every entry of a node. The catalog
//! keeps the key once, numbers it, and stores the rest ([`store`]).
//!
//! The rest is mostly operations, whose canonical text repeats the same syntax around the
//! values: a single-row insert's is `,"ops":[{"op":"insert","row":{` + the row +
//! `},"table":"` + the table + `"}]}`. The rest is stored with each fragment of [`FRAGMENTS`]
//! written as one control character. JSON text never holds a control character raw (strings
//! escape them, and only tab, newline and carriage return may stand between tokens), and
//! those three are not used, so the coded text is still text and [`load`] gives back exactly
//! the text that was stored: what was hashed and signed is unchanged. A text that does not
//! start with an author key in plain Base64, or that holds a character used as a code (it is
//! not JSON then), is stored whole.

use std::borrow::Cow;

/// What a payload's text starts with when [`store`] can take its author out.
const PREFIX: &str = "{\"author\":\"";

/// Longest author text taken out: a key's Base64 is 44 characters.
const MAX_KEY: usize = 64;

/// The fragments written as one character each, the first as `\u{1}`, the next as `\u{2}`,
/// and so on, skipping tab, newline and carriage return. Stored rows depend on this list:
/// fragments may be added at its end, never changed or removed. Where two could start at the
/// same place, the longer comes first.
pub const FRAGMENTS: &[&str] = &[
    ",\"ops\":[{\"op\":\"insert\",\"row\":{",
    ",\"ops\":[{\"key\":{",
    "\"},{\"op\":\"insert\",\"row\":{",
    "\"},{\"key\":{",
    "},\"op\":\"update\",\"set\":{",
    "},\"op\":\"delete\",\"table\":\"",
    "},\"table\":\"",
    "\"}],\"signature\":\"",
    "\"}]}",
];

/// The character that stands for fragment `i`.
fn code(i: usize) -> char {
    let mut c = 1 + i as u32;
    for skipped in [0x09, 0x0a, 0x0d] {
        if c >= skipped {
            c += 1;
        }
    }
    char::from_u32(c).unwrap_or('\u{1}')
}

/// Whether `c` stands for a fragment, and which.
fn fragment_of(c: char) -> Option<&'static str> {
    let n = c as u32;
    if n == 0 || n >= 0x20 || matches!(n, 0x09 | 0x0a | 0x0d) {
        return None;
    }
    let skipped = [0x09, 0x0a, 0x0d].iter().filter(|&&s| n > s).count() as u32;
    FRAGMENTS.get((n - 1 - skipped) as usize).copied()
}

/// The author's key and the stored form of the rest of `payload`, when `payload` starts with
/// an author key in plain Base64 followed by the next field or the object's end. [`load`]
/// gives `payload` back from them.
pub fn store(payload: &str) -> Option<(&str, String)> {
    let (key, rest) = split_author(payload)?;
    if rest.chars().any(|c| fragment_of(c).is_some()) {
        return None;
    }
    Some((key, code_fragments(rest)))
}

/// The payload text that [`store`] made `key` and `stored` of.
pub fn load(key: &str, stored: &str) -> String {
    let rest = expand_fragments(stored);
    let mut out = String::with_capacity(PREFIX.len() + key.len() + 1 + rest.len());
    out.push_str(PREFIX);
    out.push_str(key);
    out.push('"');
    out.push_str(&rest);
    out
}

fn split_author(payload: &str) -> Option<(&str, &str)> {
    let after = payload.strip_prefix(PREFIX)?;
    let end = after.find('"')?;
    let (key, rest) = (&after[..end], &after[end + 1..]);
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_');
    let fits = !key.is_empty() && key.len() <= MAX_KEY && key.chars().all(plain);
    (fits && (rest.starts_with(',') || rest.starts_with('}'))).then_some((key, rest))
}

/// `text` with every fragment, leftmost first, written as its character.
fn code_fragments(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut from, mut at) = (0, 0);
    while at < bytes.len() {
        // Every fragment starts with one of these.
        if matches!(bytes[at], b',' | b'"' | b'}') {
            if let Some(i) = FRAGMENTS.iter().position(|f| bytes[at..].starts_with(f.as_bytes())) {
                out.push_str(&text[from..at]);
                out.push(code(i));
                at += FRAGMENTS[i].len();
                from = at;
                continue;
            }
        }
        at += 1;
    }
    out.push_str(&text[from..]);
    out
}

/// `stored` with every fragment's character written out.
fn expand_fragments(stored: &str) -> Cow<'_, str> {
    if !stored.bytes().any(|b| b < 0x20) {
        return Cow::Borrowed(stored);
    }
    let mut out = String::with_capacity(stored.len() + 64);
    for c in stored.chars() {
        match fragment_of(c) {
            Some(f) => out.push_str(f),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "rIIjvrCrJU2COWmxmiKitqk+hZGV67a7UP6N6l3z1f8=";

    #[test]
    fn a_single_row_insert_keeps_its_values_and_little_else() {
        let payload = format!(
            r#"{{"author":"{KEY}","ops":[{{"op":"insert","row":{{"id":"4","n":42,"payload":"benchmark row"}},"table":"replicated"}}]}}"#
        );
        let (key, stored) = store(&payload).unwrap();
        assert_eq!(key, KEY);
        assert_eq!(stored, "\u{1}\"id\":\"4\",\"n\":42,\"payload\":\"benchmark row\"\u{7}replicated\u{b}");
        assert_eq!(load(key, &stored), payload);
        assert_eq!(store(&format!(r#"{{"author":"{KEY}"}}"#)), Some((KEY, "}".to_string())));
    }

    #[test]
    fn every_fragment_has_a_code_of_its_own_that_is_not_whitespace() {
        let codes: Vec<char> = (0..FRAGMENTS.len()).map(code).collect();
        for (i, c) in codes.iter().enumerate() {
            assert!((*c as u32) < 0x20 && !matches!(*c, '\t' | '\n' | '\r'), "{c:?}");
            assert_eq!(fragment_of(*c), Some(FRAGMENTS[i]));
        }
        assert_eq!(fragment_of('\t'), None);
        assert_eq!(fragment_of('a'), None);
        // Fragments may be added up to the last free control character.
        assert!(FRAGMENTS.len() <= 28);
    }

    #[test]
    fn other_texts_are_kept_whole() {
        for text in [
            r#"{"group":"g","author":"k"}"#,
            r#"{ "author":"k","ops":[]}"#,
            r#"{"author":"k\u0041","ops":[]}"#,
            r#"{"author":"","ops":[]}"#,
            r#"{"author":"k"x"#,
            r#"{"author":"k"#,
            r#"{"author":1,"ops":[]}"#,
            "{\"author\":\"k\",\"ops\":[\"\u{1}\"]}",
        ] {
            assert_eq!(store(text), None, "{text:?}");
        }
        let long = format!(r#"{{"author":"{}","ops":[]}}"#, "a".repeat(MAX_KEY + 1));
        assert_eq!(store(&long), None);
    }

    #[test]
    fn updates_deletes_and_many_rows_are_coded_too() {
        let payload = format!(
            r#"{{"author":"{KEY}","ops":[{{"key":{{"id":"1"}},"op":"update","set":{{"n":2}},"table":"t"}},{{"key":{{"id":"2"}},"op":"delete","table":"t"}},{{"op":"insert","row":{{"id":"3"}},"table":"t"}},{{"op":"insert","row":{{"id":"4"}},"table":"t"}}],"signature":"c2ln"}}"#
        );
        let (key, stored) = store(&payload).unwrap();
        assert!(stored.len() < payload.len() - key.len() - 100, "{stored:?}");
        assert_eq!(load(key, &stored), payload);
    }

    proptest! {
        #[test]
        fn what_is_stored_loads_back(text in r#"\{"author":"[A-Za-z0-9+/=]{0,70}("[,}]([,"{}:\[\]a-z]|ops|op|insert|row|key|table|set|update|delete|signature){0,40})?"#) {
            if let Some((key, stored)) = store(&text) {
                prop_assert_eq!(load(key, &stored), text);
            }
        }
    }
}
