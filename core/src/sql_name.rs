//! Names that reach SQL from the network: a group's table names, column and constraint names,
//! sequence names. They are data: each is validated here and written into SQL only through
//! [`quote_ident`] or [`TableName::to_sql`], never pasted as received.
//!
//! A group names a table `name` when it lives in schema `public`, else `schema.name`, each
//! part written as Postgres's `format('%I')` writes it (quoted when it must be). Parsing such
//! a name gives its parts back; [`TableName::to_sql`] writes them quoted and qualified, so the
//! text means the same relation whatever the session's `search_path`.

use std::fmt;

/// Postgres truncates identifiers to 63 bytes (NAMEDATALEN - 1). A longer name would name
/// another object than the one the entry meant, so it is refused rather than truncated.
pub const MAX_IDENT_BYTES: usize = 63;

/// Schemas a group may not place a table (or a sequence) in: the extension's own catalog and
/// Postgres's system schemas. Names starting with `pg_` are reserved by Postgres as well.
const RESERVED_SCHEMAS: &[&str] = &["causal", "information_schema"];

/// Why a name is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} {name:?} is not a valid name: {reason}")]
    Invalid { what: &'static str, name: String, reason: String },
    #[error("{what} {name:?} is in schema {schema}, where pg_causal never creates or writes tables")]
    ReservedSchema { what: &'static str, name: String, schema: String },
}

/// An identifier quoted for SQL: `"name"`, with inner quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Checks one identifier (column, constraint, sequence or table name part, unquoted).
pub fn check_ident(what: &'static str, name: &str) -> Result<(), NameError> {
    let bad = |reason: &str| Err(NameError::Invalid { what, name: name.to_string(), reason: reason.to_string() });
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_IDENT_BYTES {
        return bad("it is longer than 63 bytes, and Postgres would truncate it");
    }
    if name.contains('\0') {
        return bad("it contains the NUL character");
    }
    Ok(())
}

fn plain_ident(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'$'))
}

/// Reads one part of a qualified name: a plain lower-case identifier or a quoted one. Returns
/// the part and the rest of the text.
fn read_part<'s>(what: &'static str, text: &'s str, whole: &str) -> Result<(String, &'s str), NameError> {
    let bad = |reason: &str| NameError::Invalid { what, name: whole.to_string(), reason: reason.to_string() };
    if let Some(rest) = text.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if rest[i + 1..].starts_with('"') {
                    out.push('"');
                    chars.next();
                } else {
                    return Ok((out, &rest[i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        Err(bad("a quoted part is not closed"))
    } else {
        let end = text.find('.').unwrap_or(text.len());
        let part = &text[..end];
        if !plain_ident(part) {
            return Err(bad("an unquoted part must be lower-case letters, digits, _ or $, not starting with a digit"));
        }
        Ok((part.to_string(), &text[end..]))
    }
}

/// A table (or sequence) named by a group: its schema and its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// Parses a group's name for a table (`name`, `schema.name`, parts quoted as `%I` quotes
    /// them) and refuses names in reserved schemas.
    pub fn parse(what: &'static str, text: &str) -> Result<TableName, NameError> {
        let (first, rest) = read_part(what, text, text)?;
        let (schema, name) = match rest.strip_prefix('.') {
            None if rest.is_empty() => ("public".to_string(), first),
            Some(after) => {
                let (second, rest) = read_part(what, after, text)?;
                if !rest.is_empty() {
                    return Err(NameError::Invalid {
                        what,
                        name: text.to_string(),
                        reason: "it has more than two parts".into(),
                    });
                }
                (first, second)
            }
            None => {
                return Err(NameError::Invalid {
                    what,
                    name: text.to_string(),
                    reason: "unexpected text after the name".into(),
                })
            }
        };
        check_ident(what, &schema)?;
        check_ident(what, &name)?;
        if schema.starts_with("pg_") || RESERVED_SCHEMAS.contains(&schema.as_str()) {
            return Err(NameError::ReservedSchema { what, name: text.to_string(), schema });
        }
        Ok(TableName { schema, name })
    }

    /// The name quoted and qualified: `"schema"."name"`.
    pub fn to_sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_sql())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_parse_to_their_parts() {
        let t = TableName::parse("table", "products").unwrap();
        assert_eq!((t.schema.as_str(), t.name.as_str()), ("public", "products"));
        assert_eq!(t.to_sql(), "\"public\".\"products\"");
        let t = TableName::parse("table", "\"Shop\".\"Order \"\"x\"\"\"").unwrap();
        assert_eq!((t.schema.as_str(), t.name.as_str()), ("Shop", "Order \"x\""));
        assert_eq!(t.to_sql(), "\"Shop\".\"Order \"\"x\"\"\"");
        assert_eq!(TableName::parse("table", "app.items").unwrap().schema, "app");
    }

    #[test]
    fn crafted_names_are_refused() {
        for bad in [
            "",
            "victim; DROP TABLE x",
            "products(id)",
            "Products",
            "a.b.c",
            "\"open",
            "x\"y",
            "1abc",
            "a..b",
            "a.",
            "causal.peer_addresses",
            "pg_catalog.pg_class",
            "pg_toast.t",
            "information_schema.x",
            "\"causal\".\"row_meta\"",
            "\"a\u{0}\"",
        ] {
            assert!(TableName::parse("table", bad).is_err(), "{bad:?}");
        }
        let long = "a".repeat(64);
        assert!(TableName::parse("table", &long).is_err());
        assert!(TableName::parse("table", &"a".repeat(63)).is_ok());
    }
}
