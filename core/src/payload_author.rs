//! A payload's author, stored apart from its text.
//!
//! Every data entry's payload begins with its author's key: canonical JSON sorts `author`
//! before `ops` and `signature`, so its text starts `{"author":"<44 characters of Base64>"`.
//! That is 55 bytes of each stored payload, the same in nearly every entry of a node. The
//! catalog keeps the key once, numbers it, and stores each payload without that prefix
//! ([`split`]); [`join`] gives the exact text back, so what was hashed and signed is
//! unchanged. A payload that does not start that way (a genesis entry, or text that arrived
//! with other spacing) is stored whole.

/// What a payload's text starts with when [`split`] can take its author out.
const PREFIX: &str = "{\"author\":\"";

/// Longest author text taken out: a key's Base64 is 44 characters.
const MAX_KEY: usize = 64;

/// The author's key and the rest of `payload`, when `payload` starts with an author key in
/// plain Base64 followed by the next field or the object's end. `join(key, rest)` is
/// `payload` again.
pub fn split(payload: &str) -> Option<(&str, &str)> {
    let after = payload.strip_prefix(PREFIX)?;
    let end = after.find('"')?;
    let (key, rest) = (&after[..end], &after[end + 1..]);
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_');
    let fits = !key.is_empty() && key.len() <= MAX_KEY && key.chars().all(plain);
    (fits && (rest.starts_with(',') || rest.starts_with('}'))).then_some((key, rest))
}

/// The payload text that [`split`] cut into `key` and `rest`.
pub fn join(key: &str, rest: &str) -> String {
    let mut out = String::with_capacity(PREFIX.len() + key.len() + 1 + rest.len());
    out.push_str(PREFIX);
    out.push_str(key);
    out.push('"');
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "rIIjvrCrJU2COWmxmiKitqk+hZGV67a7UP6N6l3z1f8=";

    #[test]
    fn an_entry_payload_loses_its_author_prefix() {
        let payload = format!(r#"{{"author":"{KEY}","ops":[{{"op":"insert","row":{{"id":"4"}},"table":"t"}}]}}"#);
        let (key, rest) = split(&payload).unwrap();
        assert_eq!(key, KEY);
        assert_eq!(rest, r#","ops":[{"op":"insert","row":{"id":"4"},"table":"t"}]}"#);
        assert_eq!(join(key, rest), payload);
        assert_eq!(split(&format!(r#"{{"author":"{KEY}"}}"#)), Some((KEY, "}")));
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
        ] {
            assert_eq!(split(text), None, "{text}");
        }
        let long = format!(r#"{{"author":"{}","ops":[]}}"#, "a".repeat(MAX_KEY + 1));
        assert_eq!(split(&long), None);
    }

    proptest! {
        #[test]
        fn what_is_split_joins_back(text in r#"\{"author":"[A-Za-z0-9+/=]{0,70}("[,}].{0,40})?"#) {
            if let Some((key, rest)) = split(&text) {
                prop_assert_eq!(join(key, rest), text);
            }
        }
    }
}
