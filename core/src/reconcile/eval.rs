//! Evaluating rules and comparing encoded values.
//!
//! Values are compared by the type of the column they come from: numeric columns (integers,
//! numeric, floating point) as decimals, everything else as text. A comparison with NULL is
//! false, as in SQL (the rule language has no negation, so "unknown" never turns into "yes").

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::rules::{CmpOp, Operand, Rule};
use crate::schema::{ColumnType, TableSchema};

/// A comparable value.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum V {
    Null,
    Text(String),
    Num(String),
    Bool(bool),
}

fn is_numeric(ty: &ColumnType) -> bool {
    matches!(
        ty,
        ColumnType::Int2
            | ColumnType::Int4
            | ColumnType::Int8
            | ColumnType::Numeric { .. }
            | ColumnType::Float4
            | ColumnType::Float8
    )
}

/// The comparable form of a column's encoded value.
pub(super) fn column_value(schema: &TableSchema, row: Option<&Map<String, Value>>, column: &str) -> V {
    let Some(v) = row.and_then(|r| r.get(column)) else { return V::Null };
    let numeric = schema.column(column).is_some_and(|c| is_numeric(&c.ty));
    match v {
        Value::Null => V::Null,
        Value::Bool(b) => V::Bool(*b),
        Value::Number(n) => V::Num(n.to_string()),
        Value::String(s) if numeric => V::Num(s.clone()),
        Value::String(s) => V::Text(s.clone()),
        other => V::Text(other.to_string()),
    }
}

/// Parses a decimal (with an optional exponent) into sign, integer digits and fraction digits
/// without leading/trailing zeros.
fn decimal_parts(s: &str) -> Option<(bool, String, String)> {
    let s = s.trim();
    if s.contains(['e', 'E']) {
        return None;
    }
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if (int.is_empty() && frac.is_empty()) || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int = int.trim_start_matches('0').to_string();
    let frac = frac.trim_end_matches('0').to_string();
    let zero = int.is_empty() && frac.is_empty();
    Some((neg && !zero, int, frac))
}

fn cmp_decimal(a: &str, b: &str) -> Option<Ordering> {
    let (Some((an, ai, af)), Some((bn, bi, bf))) = (decimal_parts(a), decimal_parts(b)) else {
        let (x, y) = (a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?);
        return x.partial_cmp(&y);
    };
    if an != bn {
        return Some(if an { Ordering::Less } else { Ordering::Greater });
    }
    let magnitude = ai.len().cmp(&bi.len()).then_with(|| ai.cmp(&bi)).then_with(|| af.cmp(&bf));
    Some(if an { magnitude.reverse() } else { magnitude })
}

pub(super) fn compare(a: &V, b: &V) -> Option<Ordering> {
    match (a, b) {
        (V::Null, _) | (_, V::Null) => None,
        (V::Num(x), V::Num(y)) | (V::Num(x), V::Text(y)) | (V::Text(x), V::Num(y)) => cmp_decimal(x, y),
        (V::Text(x), V::Text(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (V::Bool(x), V::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

pub(super) fn holds(op: CmpOp, a: &V, b: &V) -> bool {
    let Some(o) = compare(a, b) else { return false };
    match op {
        CmpOp::Eq => o == Ordering::Equal,
        CmpOp::Ne => o != Ordering::Equal,
        CmpOp::Lt => o == Ordering::Less,
        CmpOp::Le => o != Ordering::Greater,
        CmpOp::Gt => o == Ordering::Greater,
        CmpOp::Ge => o != Ordering::Less,
    }
}

/// The rows a rule's `exists` may see: visible in the writer's view.
pub(super) trait RuleRows {
    type Error;
    /// Visible live rows of `table` whose columns equal `equal` (a pre-filter; the engine
    /// re-checks the whole condition).
    fn visible_rows(&mut self, table: &str, equal: &[(String, Value)]) -> Result<Vec<Map<String, Value>>, Self::Error>;
    fn schema(&self, table: &str) -> Option<TableSchema>;
}

/// What a rule is evaluated against.
pub(super) struct RuleInput<'a> {
    pub target: &'a TableSchema,
    pub new: Option<&'a Map<String, Value>>,
    pub old: Option<&'a Map<String, Value>>,
    pub author: &'a str,
}

fn operand(o: &Operand, input: &RuleInput<'_>, scanned: Option<(&TableSchema, &Map<String, Value>)>) -> V {
    match o {
        Operand::New(c) => column_value(input.target, input.new, c),
        Operand::Old(c) => column_value(input.target, input.old, c),
        Operand::Author => V::Text(input.author.to_string()),
        Operand::Scanned(c) => match scanned {
            Some((schema, row)) => column_value(schema, Some(row), c),
            None => V::Null,
        },
        Operand::Text(s) => V::Text(s.clone()),
        Operand::Number(n) => V::Num(n.clone()),
        Operand::Bool(b) => V::Bool(*b),
    }
}

/// Equalities `scanned.col = <value known before scanning>` at the top of a condition, with
/// the value in the column's own encoding, for pushing down into the scan.
fn pushdown(cond: &Rule, input: &RuleInput<'_>, scanned: &TableSchema) -> Vec<(String, Value)> {
    let conjuncts: Vec<&Rule> = match cond {
        Rule::And(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut out = Vec::new();
    for c in conjuncts {
        let Rule::Compare { left, op: CmpOp::Eq, right } = c else { continue };
        let (col, other) = match (left, right) {
            (Operand::Scanned(col), o) | (o, Operand::Scanned(col)) if !matches!(o, Operand::Scanned(_)) => (col, o),
            _ => continue,
        };
        let text_column = scanned
            .column(col)
            .is_some_and(|c| matches!(c.ty, ColumnType::Text | ColumnType::Varchar(_) | ColumnType::Uuid));
        if !text_column {
            continue;
        }
        if let V::Text(s) = operand(other, input, None) {
            out.push((col.clone(), Value::String(s)));
        }
    }
    out
}

/// Whether `rule` holds.
pub(super) fn rule_holds<R: RuleRows>(
    rule: &Rule,
    input: &RuleInput<'_>,
    rows: &mut R,
    scanned: Option<(&TableSchema, &Map<String, Value>)>,
) -> Result<bool, R::Error> {
    Ok(match rule {
        Rule::True => true,
        Rule::And(items) => {
            for r in items {
                if !rule_holds(r, input, rows, scanned)? {
                    return Ok(false);
                }
            }
            true
        }
        Rule::Or(items) => {
            for r in items {
                if rule_holds(r, input, rows, scanned)? {
                    return Ok(true);
                }
            }
            false
        }
        Rule::Compare { left, op, right } => {
            holds(*op, &operand(left, input, scanned), &operand(right, input, scanned))
        }
        Rule::Exists { table, condition } => {
            let Some(schema) = rows.schema(table) else { return Ok(false) };
            let equal = pushdown(condition, input, &schema);
            for row in rows.visible_rows(table, &equal)? {
                if rule_holds(condition, input, rows, Some((&schema, &row)))? {
                    return Ok(true);
                }
            }
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_compare_by_value() {
        assert_eq!(cmp_decimal("10", "9.99"), Some(Ordering::Greater));
        assert_eq!(cmp_decimal("-1.50", "-1.5"), Some(Ordering::Equal));
        assert_eq!(cmp_decimal("-2", "-10"), Some(Ordering::Greater));
        assert_eq!(cmp_decimal("0.0", "-0"), Some(Ordering::Equal));
        assert_eq!(cmp_decimal("1e3", "999"), Some(Ordering::Greater));
        assert!(holds(CmpOp::Le, &V::Num("5".into()), &V::Num("10".into())));
        assert!(!holds(CmpOp::Eq, &V::Null, &V::Null));
        assert!(holds(CmpOp::Ne, &V::Text("a".into()), &V::Text("b".into())));
    }
}
