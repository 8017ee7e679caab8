//! Replicated table schemas and the canonical encoding of column values.
//!
//! A schema is derived from a Postgres table by the extension and recorded in the group's DAG.
//! Values travel as JSON literals. Canonical JSON has no `null`, so a NULL is an absent key
//! (rows) or a name in an `unset` list (updates). Every value is encoded losslessly:
//!
//! | Postgres type | Encoding |
//! |---|---|
//! | text, varchar(n), uuid, date | JSON string (uuid lower case; date `YYYY-MM-DD`) |
//! | smallint, integer | JSON number |
//! | bigint, numeric(p,s) | canonical decimal string (`-12.50` → `"-12.50"` keeps the scale) |
//! | double precision, real | JSON number; `"NaN"`, `"Infinity"`, `"-Infinity"` as strings |
//! | boolean | JSON boolean |
//! | timestamp, timestamptz | ISO-8601 with microseconds; timestamptz in UTC with `Z` |
//! | bytea | standard Base64 string |
//! | jsonb | the jsonb's text, as a JSON string |

use serde_json::{json, Map, Value};

/// A supported column type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Varchar(Option<u32>),
    Int2,
    Int4,
    Int8,
    Numeric { precision: Option<u32>, scale: Option<u32> },
    Float8,
    Float4,
    Bool,
    Date,
    Timestamp,
    Timestamptz,
    Uuid,
    Bytea,
    Jsonb,
}

/// The names users write, for error messages.
pub const SUPPORTED_TYPES: &str = "text, varchar(n), smallint, integer, bigint, numeric(p,s), double precision, real, boolean, date, timestamp, timestamptz, uuid, bytea, jsonb";

impl ColumnType {
    /// The SQL spelling, as `format_type` writes it.
    pub fn sql_name(&self) -> String {
        match self {
            ColumnType::Text => "text".into(),
            ColumnType::Varchar(None) => "character varying".into(),
            ColumnType::Varchar(Some(n)) => format!("character varying({n})"),
            ColumnType::Int2 => "smallint".into(),
            ColumnType::Int4 => "integer".into(),
            ColumnType::Int8 => "bigint".into(),
            ColumnType::Numeric { precision: Some(p), scale } => format!("numeric({p},{})", scale.unwrap_or(0)),
            ColumnType::Numeric { .. } => "numeric".into(),
            ColumnType::Float8 => "double precision".into(),
            ColumnType::Float4 => "real".into(),
            ColumnType::Bool => "boolean".into(),
            ColumnType::Date => "date".into(),
            ColumnType::Timestamp => "timestamp without time zone".into(),
            ColumnType::Timestamptz => "timestamp with time zone".into(),
            ColumnType::Uuid => "uuid".into(),
            ColumnType::Bytea => "bytea".into(),
            ColumnType::Jsonb => "jsonb".into(),
        }
    }

    /// Reads `format_type(atttypid, atttypmod)` output; `None` for an unsupported type.
    pub fn from_sql_name(name: &str) -> Option<ColumnType> {
        let (base, args) = match name.find('(') {
            Some(i) if name.ends_with(')') => (&name[..i], Some(&name[i + 1..name.len() - 1])),
            _ => (name, None),
        };
        let nums: Vec<u32> =
            args.map(|a| a.split(',').filter_map(|x| x.trim().parse().ok()).collect()).unwrap_or_default();
        Some(match (base.trim(), nums.as_slice()) {
            ("text", []) => ColumnType::Text,
            ("character varying", []) => ColumnType::Varchar(None),
            ("character varying", [n]) => ColumnType::Varchar(Some(*n)),
            ("smallint", []) => ColumnType::Int2,
            ("integer", []) => ColumnType::Int4,
            ("bigint", []) => ColumnType::Int8,
            ("numeric", []) => ColumnType::Numeric { precision: None, scale: None },
            ("numeric", [p]) => ColumnType::Numeric { precision: Some(*p), scale: Some(0) },
            ("numeric", [p, s]) => ColumnType::Numeric { precision: Some(*p), scale: Some(*s) },
            ("double precision", []) => ColumnType::Float8,
            ("real", []) => ColumnType::Float4,
            ("boolean", []) => ColumnType::Bool,
            ("date", []) => ColumnType::Date,
            ("timestamp without time zone", []) => ColumnType::Timestamp,
            ("timestamp with time zone", []) => ColumnType::Timestamptz,
            ("uuid", []) => ColumnType::Uuid,
            ("bytea", []) => ColumnType::Bytea,
            ("jsonb", []) => ColumnType::Jsonb,
            _ => return None,
        })
    }
}

/// A column of a replicated table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub not_null: bool,
    /// The default as SQL text (`pg_get_expr` of the default), if any.
    pub default: Option<String>,
    /// The default's encoded value when it is a constant: what replay fills in for rows
    /// written by entries that did not know the column (see docs/SEMANTICS.md).
    pub default_value: Option<Value>,
}

/// A UNIQUE constraint (the primary key is kept apart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unique {
    pub name: String,
    pub columns: Vec<String>,
}

/// A CHECK constraint; its expression is kept as SQL text and re-evaluated on merged rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub expression: String,
}

/// A FOREIGN KEY to another table of the same group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignKey {
    pub name: String,
    pub columns: Vec<String>,
    pub references: String,
    pub referenced_columns: Vec<String>,
}

/// The replicated schema of one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSchema {
    pub table: String,
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    pub uniques: Vec<Unique>,
    pub checks: Vec<Check>,
    pub foreign_keys: Vec<ForeignKey>,
}

/// Why a schema, a row or a value does not fit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("{0} is missing or malformed in the schema")]
    Malformed(String),
    #[error("column {column:?} of {table}: {reason}")]
    BadValue { table: String, column: String, reason: String },
    #[error("{table} has no column {column:?}")]
    UnknownColumn { table: String, column: String },
    #[error("column {column:?} of {table} may not be NULL")]
    NotNull { table: String, column: String },
}

impl TableSchema {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// Whether rows are looked up by column `name` other than by primary key: it belongs to a
    /// UNIQUE constraint or a foreign key (the engine finds colliding and referencing rows by
    /// those columns' values).
    pub fn is_lookup_column(&self, name: &str) -> bool {
        self.uniques.iter().any(|u| u.columns.iter().any(|c| c == name))
            || self.foreign_keys.iter().any(|f| f.columns.iter().any(|c| c == name))
    }

    /// Whether any column is a lookup column ([`TableSchema::is_lookup_column`]).
    pub fn has_lookup_columns(&self) -> bool {
        !self.uniques.is_empty() || !self.foreign_keys.is_empty()
    }

    /// The schema as a JSON literal (what the schema entry records).
    pub fn to_value(&self) -> Value {
        let columns: Vec<Value> = self
            .columns
            .iter()
            .map(|c| {
                let mut m = Map::new();
                m.insert("name".into(), json!(c.name));
                m.insert("type".into(), json!(c.ty.sql_name()));
                m.insert("notNull".into(), json!(c.not_null));
                if let Some(d) = &c.default {
                    m.insert("default".into(), json!(d));
                }
                if let Some(v) = &c.default_value {
                    m.insert("defaultValue".into(), v.clone());
                }
                Value::Object(m)
            })
            .collect();
        json!({
            "table": self.table,
            "columns": columns,
            "primaryKey": self.primary_key,
            "unique": self.uniques.iter().map(|u| json!({"name": u.name, "columns": u.columns})).collect::<Vec<_>>(),
            "check": self.checks.iter().map(|c| json!({"name": c.name, "expression": c.expression})).collect::<Vec<_>>(),
            "foreignKeys": self.foreign_keys.iter().map(|f| json!({
                "name": f.name, "columns": f.columns, "references": f.references, "referencedColumns": f.referenced_columns
            })).collect::<Vec<_>>(),
        })
    }

    /// Reads a schema recorded by [`TableSchema::to_value`], strictly.
    pub fn from_value(v: &Value) -> Result<TableSchema, SchemaError> {
        let m = |what: &str| SchemaError::Malformed(what.to_string());
        let s = |v: &Value, what: &str| v.as_str().map(str::to_string).ok_or_else(|| m(what));
        let strs = |v: &Value, what: &str| -> Result<Vec<String>, SchemaError> {
            v.as_array().ok_or_else(|| m(what))?.iter().map(|x| s(x, what)).collect()
        };
        let arr = |key: &str| v.get(key).and_then(Value::as_array).ok_or_else(|| m(key));
        let mut columns = Vec::new();
        for c in arr("columns")? {
            let type_name = s(&c["type"], "columns[].type")?;
            columns.push(Column {
                name: s(&c["name"], "columns[].name")?,
                ty: ColumnType::from_sql_name(&type_name).ok_or_else(|| m(&format!("column type {type_name:?}")))?,
                not_null: c["notNull"].as_bool().ok_or_else(|| m("columns[].notNull"))?,
                default: c.get("default").map(|d| s(d, "columns[].default")).transpose()?,
                default_value: c.get("defaultValue").cloned(),
            });
        }
        let schema = TableSchema {
            table: s(&v["table"], "table")?,
            columns,
            primary_key: strs(&v["primaryKey"], "primaryKey")?,
            uniques: arr("unique")?
                .iter()
                .map(|u| {
                    Ok(Unique {
                        name: s(&u["name"], "unique[].name")?,
                        columns: strs(&u["columns"], "unique[].columns")?,
                    })
                })
                .collect::<Result<_, SchemaError>>()?,
            checks: arr("check")?
                .iter()
                .map(|c| {
                    Ok(Check {
                        name: s(&c["name"], "check[].name")?,
                        expression: s(&c["expression"], "check[].expression")?,
                    })
                })
                .collect::<Result<_, SchemaError>>()?,
            foreign_keys: arr("foreignKeys")?
                .iter()
                .map(|f| {
                    Ok(ForeignKey {
                        name: s(&f["name"], "foreignKeys[].name")?,
                        columns: strs(&f["columns"], "foreignKeys[].columns")?,
                        references: s(&f["references"], "foreignKeys[].references")?,
                        referenced_columns: strs(&f["referencedColumns"], "foreignKeys[].referencedColumns")?,
                    })
                })
                .collect::<Result<_, SchemaError>>()?,
        };
        if schema.primary_key.is_empty() || schema.primary_key.iter().any(|k| schema.column(k).is_none()) {
            return Err(m("primaryKey"));
        }
        Ok(schema)
    }

    /// Checks the encoded values of a row (an object of non-NULL columns) against the schema:
    /// every column exists, every value has its type's encoding, NOT NULL columns are present.
    pub fn check_row(&self, row: &Map<String, Value>, complete: bool) -> Result<(), SchemaError> {
        for (name, value) in row {
            let col = self
                .column(name)
                .ok_or_else(|| SchemaError::UnknownColumn { table: self.table.clone(), column: name.clone() })?;
            check_value(&col.ty, value).map_err(|reason| SchemaError::BadValue {
                table: self.table.clone(),
                column: name.clone(),
                reason,
            })?;
        }
        if complete {
            for c in self.columns.iter().filter(|c| c.not_null) {
                if !row.contains_key(&c.name) {
                    return Err(SchemaError::NotNull { table: self.table.clone(), column: c.name.clone() });
                }
            }
        }
        Ok(())
    }
}

fn is_canonical_decimal(s: &str, integer_only: bool) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    digits(int)
        && (int == "0" || !int.starts_with('0'))
        && match frac {
            None => true,
            Some(f) => !integer_only && digits(f),
        }
        && s != "-0"
}

/// Checks one encoded value against a column type; the error says what is wrong. A value
/// that passes is one Postgres takes for the column (replay casts it from this text): a
/// value it would refuse is refused here, so that a peer's entry carrying one is rejected or
/// cancelled, rather than making the import of its history fail.
pub fn check_value(ty: &ColumnType, v: &Value) -> Result<(), String> {
    let want = |what: &str| Err(format!("expected {what}, got {}", short(v)));
    // No Postgres text holds the NUL character.
    if v.as_str().is_some_and(|s| s.contains('\0')) {
        return Err("a string may not contain the NUL character (U+0000)".into());
    }
    match ty {
        ColumnType::Text => v.as_str().map(|_| ()).ok_or(()).or_else(|_| want("a string")),
        ColumnType::Jsonb => match v.as_str() {
            Some(s) => check_jsonb_text(s),
            None => want("a string"),
        },
        ColumnType::Varchar(limit) => match v.as_str() {
            Some(s) if limit.is_none_or(|n| s.chars().count() <= n as usize) => Ok(()),
            Some(_) => Err(format!("longer than {} characters", limit.unwrap_or(0))),
            None => want("a string"),
        },
        ColumnType::Int2 | ColumnType::Int4 => {
            let range = if *ty == ColumnType::Int2 {
                i16::MIN as i64..=i16::MAX as i64
            } else {
                i32::MIN as i64..=i32::MAX as i64
            };
            match v.as_i64() {
                Some(n) if range.contains(&n) => Ok(()),
                _ => want(&format!("an integer in {}..={}", range.start(), range.end())),
            }
        }
        ColumnType::Int8 => match v.as_str() {
            Some(s) if is_canonical_decimal(s, true) && s.parse::<i64>().is_ok() => Ok(()),
            _ => want("a bigint as a canonical decimal string"),
        },
        ColumnType::Numeric { precision, scale } => match v.as_str() {
            Some("NaN") => Ok(()),
            Some("Infinity" | "-Infinity") if precision.is_none() => Ok(()),
            Some("Infinity" | "-Infinity") => Err("numeric(p,s) cannot hold an infinite value".into()),
            Some(s) if is_canonical_decimal(s, false) || s == "-0" => check_numeric_fits(s, *precision, *scale),
            _ => want("a numeric as a decimal string"),
        },
        ColumnType::Float8 => match v {
            Value::Number(n) if n.as_f64().is_some_and(f64::is_finite) => Ok(()),
            Value::String(s) if matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") => Ok(()),
            _ => want("a number, \"NaN\", \"Infinity\" or \"-Infinity\""),
        },
        ColumnType::Float4 => match v {
            // Postgres refuses a real that overflows, or underflows to zero.
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.is_finite() && f.abs() <= f64::from(f32::MAX) && (f == 0.0 || f as f32 != 0.0) => Ok(()),
                _ => want("a number in the range of real"),
            },
            Value::String(s) if matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") => Ok(()),
            _ => want("a number, \"NaN\", \"Infinity\" or \"-Infinity\""),
        },
        ColumnType::Bool => v.as_bool().map(|_| ()).ok_or(()).or_else(|_| want("a boolean")),
        ColumnType::Date => match v.as_str() {
            Some("infinity" | "-infinity") => Ok(()),
            Some(s) if parse_date(s).is_some() => Ok(()),
            _ => want("a date YYYY-MM-DD (with \" BC\" before year 1), as Postgres has them"),
        },
        ColumnType::Timestamp | ColumnType::Timestamptz => {
            let utc = *ty == ColumnType::Timestamptz;
            match v.as_str() {
                Some("infinity" | "-infinity") => Ok(()),
                Some(s) if parse_timestamp(s, utc).is_some() => Ok(()),
                _ => want(if utc {
                    "a UTC timestamp YYYY-MM-DDTHH:MM:SS.ffffffZ, as Postgres has them"
                } else {
                    "a timestamp YYYY-MM-DDTHH:MM:SS.ffffff, as Postgres has them"
                }),
            }
        }
        ColumnType::Uuid => match v.as_str() {
            Some(s)
                if s.len() == 36
                    && s.bytes().enumerate().all(|(i, b)| {
                        if matches!(i, 8 | 13 | 18 | 23) {
                            b == b'-'
                        } else {
                            b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
                        }
                    }) =>
            {
                Ok(())
            }
            _ => want("a lower-case uuid"),
        },
        ColumnType::Bytea => match v.as_str() {
            Some(s) if base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).is_ok() => Ok(()),
            _ => want("Base64"),
        },
    }
}

/// A `jsonb` value's text: JSON that Postgres takes (it refuses `\u0000` in a string, and
/// nesting deeper than serde_json's limit is refused here before its parser would be asked).
fn check_jsonb_text(s: &str) -> Result<(), String> {
    let value: Value = serde_json::from_str(s).map_err(|e| format!("not JSON for a jsonb column: {e}"))?;
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    if has_nul(&value) {
        return Err("a jsonb string may not contain the NUL character (\\u0000)".into());
    }
    Ok(())
}

/// Whether a canonical decimal fits `numeric(precision, scale)` once rounded to `scale`
/// digits after the point, as Postgres rounds it (half away from zero).
fn check_numeric_fits(s: &str, precision: Option<u32>, scale: Option<u32>) -> Result<(), String> {
    let Some(p) = precision else { return Ok(()) };
    let scale = scale.unwrap_or(0);
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let mut digits: Vec<u8> =
        int.bytes().chain(frac.bytes().chain(std::iter::repeat(b'0')).take(scale as usize)).collect();
    // Round on the first dropped digit.
    if frac.as_bytes().get(scale as usize).is_some_and(|d| *d >= b'5') {
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    // The rounded value is `digits` x 10^-scale; it fits when it is below 10^(p - scale),
    // that is when `digits` has at most p significant digits.
    let significant = digits.iter().skip_while(|d| **d == b'0').count();
    if significant > p as usize {
        return Err(format!("does not fit numeric({p},{scale})"));
    }
    Ok(())
}

/// Days from 1970-01-01 of a proleptic Gregorian date (the inverse of `civil_from_days`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The first day Postgres has (4714-11-24 BC, Julian day 0), in days from 2000-01-01.
const FIRST_PG_DAY: i64 = -2_451_545;

/// A canonical date (`format_date`'s form) within Postgres's range: its days from 2000-01-01.
fn parse_date(s: &str) -> Option<i64> {
    let (ymd, bc) = match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    };
    let mut parts = ymd.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() < 4 || m.len() != 2 || d.len() != 2 || ![y, m, d].iter().all(|p| p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let (y, m, d): (i64, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if y == 0 || !(1..=12).contains(&m) || d == 0 || y > 5_874_897 {
        return None;
    }
    let year = if bc { 1 - y } else { y };
    let days = days_from_civil(year, m, d) - PG_EPOCH_DAYS;
    // A day past the month's end comes back as another date, and is not canonical.
    let canonical = i32::try_from(days).ok().map(format_date)?;
    (canonical == s && days >= FIRST_PG_DAY).then_some(days)
}

/// A canonical timestamp (`format_timestamp`'s form, with `Z` when `utc`) within Postgres's
/// range.
fn parse_timestamp(s: &str, utc: bool) -> Option<i64> {
    let (body, bc) = match s.strip_suffix(" BC") {
        Some(rest) => (rest, " BC"),
        None => (s, ""),
    };
    let body = if utc { body.strip_suffix('Z')? } else { body };
    let (date, time) = body.split_once('T')?;
    let days = parse_date(&format!("{date}{bc}"))?;
    let t = time.as_bytes();
    if t.len() != 15 || t[2] != b':' || t[5] != b':' || t[8] != b'.' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = time.get(r)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok()).flatten()
    };
    let (h, mi, sec, us) = (num(0..2)?, num(3..5)?, num(6..8)?, num(9..15)?);
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let micros = days.checked_mul(86_400_000_000)?.checked_add(((h * 60 + mi) * 60 + sec) * 1_000_000 + us)?;
    // Postgres's timestamps end before 294277-01-01 00:00:00.
    let end = (days_from_civil(294_277, 1, 1) - PG_EPOCH_DAYS) * 86_400_000_000;
    (micros < end && format_timestamp(micros, utc) == s).then_some(micros)
}

/// Days between 1970-01-01 and Postgres's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// (year, month, day) of a day count from 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn format_ymd(days_since_pg_epoch: i64) -> (String, &'static str) {
    let (y, m, d) = civil_from_days(days_since_pg_epoch + PG_EPOCH_DAYS);
    // Postgres has no year 0: year 0 is 1 BC.
    if y <= 0 {
        (format!("{:04}-{m:02}-{d:02}", 1 - y), " BC")
    } else {
        (format!("{y:04}-{m:02}-{d:02}"), "")
    }
}

/// A Postgres `date` (days since 2000-01-01) as `YYYY-MM-DD` (with ` BC` before year 1).
pub fn format_date(days_since_pg_epoch: i32) -> String {
    let (ymd, era) = format_ymd(i64::from(days_since_pg_epoch));
    format!("{ymd}{era}")
}

/// A Postgres timestamp (microseconds since 2000-01-01 00:00:00) as ISO-8601 with
/// microseconds; `utc` adds the `Z` of timestamptz.
pub fn format_timestamp(micros_since_pg_epoch: i64, utc: bool) -> String {
    let days = micros_since_pg_epoch.div_euclid(86_400_000_000);
    let rest = micros_since_pg_epoch.rem_euclid(86_400_000_000);
    let (h, mi, s, us) = (rest / 3_600_000_000, rest / 60_000_000 % 60, rest / 1_000_000 % 60, rest % 1_000_000);
    let (ymd, era) = format_ymd(days);
    format!("{ymd}T{h:02}:{mi:02}:{s:02}.{us:06}{}{era}", if utc { "Z" } else { "" })
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn products() -> TableSchema {
        TableSchema {
            table: "products".into(),
            columns: vec![
                Column { name: "sku".into(), ty: ColumnType::Text, not_null: true, default: None, default_value: None },
                Column {
                    name: "name".into(),
                    ty: ColumnType::Text,
                    not_null: true,
                    default: None,
                    default_value: None,
                },
                Column {
                    name: "price".into(),
                    ty: ColumnType::Numeric { precision: Some(10), scale: Some(2) },
                    not_null: false,
                    default: Some("0".into()),
                    default_value: Some(json!(0)),
                },
            ],
            primary_key: vec!["sku".into()],
            uniques: vec![],
            checks: vec![Check { name: "products_price_check".into(), expression: "(price >= (0)::numeric)".into() }],
            foreign_keys: vec![],
        }
    }

    #[test]
    fn schema_round_trips() {
        let s = products();
        assert_eq!(TableSchema::from_value(&s.to_value()).unwrap(), s);
        let mut v = s.to_value();
        v["primaryKey"] = json!(["nope"]);
        assert!(TableSchema::from_value(&v).is_err());
    }

    #[test]
    fn lookup_columns_are_those_of_uniques_and_foreign_keys() {
        let mut s = products();
        assert!(["sku", "name", "price"].iter().all(|c| !s.is_lookup_column(c)));
        s.uniques.push(Unique { name: "u".into(), columns: vec!["name".into()] });
        s.foreign_keys.push(ForeignKey {
            name: "f".into(),
            columns: vec!["price".into()],
            references: "prices".into(),
            referenced_columns: vec!["amount".into()],
        });
        assert!(s.is_lookup_column("name") && s.is_lookup_column("price"));
        assert!(!s.is_lookup_column("sku") && !s.is_lookup_column("amount"));
    }

    #[test]
    fn type_names_round_trip() {
        for t in [
            ColumnType::Text,
            ColumnType::Varchar(Some(20)),
            ColumnType::Numeric { precision: Some(10), scale: Some(2) },
            ColumnType::Numeric { precision: None, scale: None },
            ColumnType::Timestamptz,
            ColumnType::Float4,
        ] {
            assert_eq!(ColumnType::from_sql_name(&t.sql_name()), Some(t));
        }
        assert_eq!(ColumnType::from_sql_name("point"), None);
        assert_eq!(ColumnType::from_sql_name("integer[]"), None);
    }

    #[test]
    fn rows_are_checked() {
        let s = products();
        let row = |v: Value| v.as_object().cloned().unwrap();
        s.check_row(&row(json!({"sku": "A", "name": "Widget", "price": "9.99"})), true).unwrap();
        assert!(matches!(s.check_row(&row(json!({"sku": "A"})), true), Err(SchemaError::NotNull { .. })));
        assert!(matches!(
            s.check_row(&row(json!({"sku": "A", "name": "W", "price": 9.99})), true),
            Err(SchemaError::BadValue { .. })
        ));
        assert!(matches!(
            s.check_row(&row(json!({"sku": "A", "name": "W", "x": "1"})), true),
            Err(SchemaError::UnknownColumn { .. })
        ));
        s.check_row(&row(json!({"price": "-0.50"})), false).unwrap();
    }

    #[test]
    fn dates_and_timestamps() {
        assert_eq!(format_date(0), "2000-01-01");
        assert_eq!(format_date(-1), "1999-12-31");
        assert_eq!(format_date(366), "2001-01-01");
        assert_eq!(format_date(-730_119), "0001-01-01");
        assert_eq!(format_date(-730_120), "0001-12-31 BC");
        assert_eq!(format_timestamp(0, true), "2000-01-01T00:00:00.000000Z");
        assert_eq!(format_timestamp(-1, false), "1999-12-31T23:59:59.999999");
        // 2024-02-29 12:34:56.789012 UTC
        let micros = ((8825i64 * 86_400 + 12 * 3600 + 34 * 60 + 56) * 1_000_000) + 789_012;
        assert_eq!(format_timestamp(micros, true), "2024-02-29T12:34:56.789012Z");
    }

    /// Values Postgres would refuse for the column are refused here (replay casts them).
    #[test]
    fn values_postgres_refuses() {
        use ColumnType as T;
        let numeric = |p, s| T::Numeric { precision: Some(p), scale: Some(s) };
        let refused: &[(ColumnType, Value)] = &[
            (T::Text, json!("a\u{0}b")),
            (T::Varchar(None), json!("\u{0}")),
            (T::Jsonb, json!("not json")),
            (T::Jsonb, json!("{\"a\": \"\\u0000\"}")),
            (T::Jsonb, json!("[".repeat(200) + &"]".repeat(200))),
            (T::Uuid, json!("------------------------------------")),
            (T::Uuid, json!("a0eebc999c0b4ef8bb6d6bb9bd380a11----")),
            (T::Date, json!("2026-13-01")),
            (T::Date, json!("2026-02-29")),
            (T::Date, json!("2026-1-01")),
            (T::Date, json!("0000-01-01")),
            (T::Date, json!("4714-11-23 BC")),
            (T::Date, json!("5874898-01-01")),
            (T::Date, json!("2026-01-01 junk")),
            (T::Timestamp, json!("2026-01-01T24:00:00.000000")),
            (T::Timestamp, json!("2026-01-01T00:00:00")),
            (T::Timestamp, json!("294277-01-01T00:00:00.000000")),
            (T::Timestamptz, json!("2026-01-01T00:00:60.000000Z")),
            (T::Timestamptz, json!("2026-02-30T00:00:00.000000Z")),
            (T::Float4, json!(1e39)),
            (T::Float4, json!(1e-50)),
            (numeric(5, 2), json!("1000")),
            (numeric(5, 2), json!("999.995")),
            (numeric(3, 0), json!("-1000")),
            (numeric(2, 2), json!("0.999")),
            (numeric(2, 5), json!("0.0012")),
            (numeric(5, 2), json!("Infinity")),
        ];
        for (ty, v) in refused {
            assert!(check_value(ty, v).is_err(), "{ty:?} {v}");
        }
        let taken: &[(ColumnType, Value)] = &[
            (T::Jsonb, json!("{\"a\": [1, 2.5, null, \"\\u00e9\"]}")),
            (T::Uuid, json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
            (T::Date, json!("2024-02-29")),
            (T::Date, json!("0001-01-01")),
            (T::Date, json!("0001-12-31 BC")),
            (T::Date, json!("4714-11-24 BC")),
            (T::Date, json!("5874897-12-31")),
            (T::Date, json!("infinity")),
            (T::Timestamp, json!("294276-12-31T23:59:59.999999")),
            (T::Timestamp, json!("0044-03-15T12:00:00.000000 BC")),
            (T::Timestamptz, json!("2024-02-29T23:59:59.999999Z")),
            (T::Float4, json!(3.4e38)),
            (T::Float4, json!(1e-40)),
            (T::Float4, json!(0.0)),
            (numeric(5, 2), json!("999.994")),
            (numeric(5, 2), json!("-999.99")),
            (numeric(2, 2), json!("0.994")),
            (numeric(2, 5), json!("0.00012")),
            (numeric(5, 2), json!("NaN")),
            (T::Numeric { precision: None, scale: None }, json!("-Infinity")),
        ];
        for (ty, v) in taken {
            assert!(check_value(ty, v).is_ok(), "{ty:?} {v}: {:?}", check_value(ty, v));
        }
    }

    #[test]
    fn value_encodings() {
        assert!(check_value(&ColumnType::Int8, &json!("9223372036854775807")).is_ok());
        assert!(check_value(&ColumnType::Int8, &json!("9223372036854775808")).is_err());
        assert!(check_value(&ColumnType::Int8, &json!("007")).is_err());
        assert!(check_value(&ColumnType::Int4, &json!(2147483648i64)).is_err());
        assert!(check_value(&ColumnType::Float8, &json!("NaN")).is_ok());
        assert!(check_value(&ColumnType::Timestamptz, &json!("2024-01-01T00:00:00.000000Z")).is_ok());
        assert!(check_value(&ColumnType::Timestamp, &json!("2024-01-01T00:00:00.000000Z")).is_err());
        assert!(check_value(&ColumnType::Uuid, &json!("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11")).is_err());
        assert!(check_value(&ColumnType::Varchar(Some(2)), &json!("abc")).is_err());
    }
}
