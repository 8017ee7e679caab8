//! Checking a local write against its table's rule, synchronously, before it commits: the rule
//! becomes one SQL boolean expression over the local tables.

use pgrx::prelude::*;

use causal_core::rules::{parse_rule, Operation, RuleScope};
use causal_core::schema::TableSchema;
use causal_core::sql_expr::sql_literal;
use causal_core::sql_name::quote_ident;

use crate::error::CausalError;

/// The tables of one group, for checking rules.
pub struct GroupTables {
    target_columns: Vec<String>,
    others: Vec<TableSchema>,
}

impl RuleScope for GroupTables {
    fn target_columns(&self) -> &[String] {
        &self.target_columns
    }

    fn table_columns(&self, table: &str) -> Option<Vec<String>> {
        self.others.iter().find(|t| t.table == table).map(TableSchema::column_names)
    }
}

/// Loads the schema of `table` and of every table of its group.
pub fn group_tables(group_id: &str, table: &str) -> Result<GroupTables, CausalError> {
    let mut all = Vec::new();
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT schema FROM causal.replicated_tables WHERE group_id = $1",
            None,
            &[group_id.into()],
        )?;
        for r in rows {
            if let Some(s) = r.get::<pgrx::JsonB>(1)? {
                all.push(s.0);
            }
        }
        Ok::<_, pgrx::spi::Error>(())
    })?;
    let all: Vec<TableSchema> = all
        .iter()
        .map(TableSchema::from_value)
        .collect::<Result<_, _>>()
        .map_err(|e| CausalError::Corrupt(e.to_string()))?;
    let target = all.iter().find(|t| t.table == table).ok_or_else(|| CausalError::NotReplicated(table.to_string()))?;
    Ok(GroupTables { target_columns: target.column_names(), others: all })
}

/// The values a rule reads while checking one write.
pub struct RuleInput<'a> {
    pub schema: &'a TableSchema,
    pub new: Option<&'a serde_json::Map<String, serde_json::Value>>,
    pub old: Option<&'a serde_json::Map<String, serde_json::Value>>,
    pub author: &'a str,
}

fn value_sql(schema: &TableSchema, column: &str, row: Option<&serde_json::Map<String, serde_json::Value>>) -> String {
    match row.and_then(|r| r.get(column)) {
        Some(v) => value_literal(schema, column, v),
        None => match schema.column(column) {
            Some(col) => format!("NULL::{}", col.ty.sql_name()),
            None => "NULL".into(),
        },
    }
}

/// An encoded column value as a typed SQL literal.
pub fn value_literal(schema: &TableSchema, column: &str, v: &serde_json::Value) -> String {
    use causal_core::schema::ColumnType;
    let Some(col) = schema.column(column) else { return "NULL".into() };
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match col.ty {
        ColumnType::Bytea => format!("decode({}, 'base64')", sql_literal(&text)),
        _ => format!("{}::{}", sql_literal(&text), col.ty.sql_name()),
    }
}

/// The rule as one SQL boolean expression over the local tables.
pub fn rule_sql(rule: &causal_core::rules::Rule, input: &RuleInput<'_>, depth: usize) -> String {
    use causal_core::rules::{Operand, Rule};
    let operand = |o: &Operand| match o {
        Operand::New(c) => value_sql(input.schema, c, input.new),
        Operand::Old(c) => value_sql(input.schema, c, input.old),
        Operand::Author => sql_literal(input.author),
        Operand::Scanned(c) => format!("x{}.{}", depth, quote_ident(c)),
        Operand::Text(s) => sql_literal(s),
        Operand::Number(n) => sql_literal(n),
        Operand::Bool(b) => b.to_string(),
    };
    match rule {
        Rule::True => "true".into(),
        Rule::And(parts) => {
            format!("({})", parts.iter().map(|p| rule_sql(p, input, depth)).collect::<Vec<_>>().join(" AND "))
        }
        Rule::Or(parts) => {
            format!("({})", parts.iter().map(|p| rule_sql(p, input, depth)).collect::<Vec<_>>().join(" OR "))
        }
        Rule::Compare { left, op, right } => format!("({} {} {})", operand(left), op.symbol(), operand(right)),
        Rule::Exists { table, condition } => {
            // The rule named a table of the group (checked when it was parsed); the name is
            // written quoted and qualified, so it means that table whatever the search_path.
            let target = causal_core::sql_name::TableName::parse("table", table)
                .map(|t| t.to_sql())
                .unwrap_or_else(|_| quote_ident(table));
            format!("EXISTS (SELECT 1 FROM {target} AS x{} WHERE {})", depth + 1, rule_sql(condition, input, depth + 1))
        }
    }
}

/// Checks a write against its table's rule `text` for `operation`.
pub fn check_write(group_id: &str, operation: Operation, text: &str, input: &RuleInput<'_>) -> Result<(), CausalError> {
    let table = &input.schema.table;
    let scope = group_tables(group_id, table)?;
    let rule =
        parse_rule(text, operation, &scope).map_err(|e| CausalError::BadRule { table: table.clone(), error: e })?;
    let sql = format!("SELECT {}", rule_sql(&rule, input, 0));
    if Spi::get_one::<bool>(&sql)? == Some(true) {
        Ok(())
    } else {
        Err(CausalError::RuleDenied { table: table.clone(), operation: operation.name(), rule: text.to_string() })
    }
}
