//! `causal.allow`: rules that say who may write what, recorded as schema entries.

use pgrx::prelude::*;
use pgrx::{PgRelation, PgSqlErrorCode};

use causal_core::payload::Op;
use causal_core::rules::{parse_rule, Operation, RuleError, RuleErrorKind, RuleScope};
use causal_core::schema::TableSchema;

use crate::error::{CausalError, OrReport};
use crate::group::Group;
use crate::members::append_ops;
use crate::replicate::group_table_name;
use crate::spi_util::get_opt;

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

fn operations(operation: &str) -> Result<Vec<Operation>, CausalError> {
    Ok(match operation.to_ascii_lowercase().as_str() {
        "insert" => vec![Operation::Insert],
        "update" => vec![Operation::Update],
        "delete" => vec![Operation::Delete],
        "all" => vec![Operation::Insert, Operation::Update, Operation::Delete],
        other => return Err(CausalError::BadOperation(other.chars().take(40).collect())),
    })
}

/// The SQLSTATE a rule error gets.
pub fn rule_sqlstate(e: &RuleError) -> PgSqlErrorCode {
    match e.kind {
        RuleErrorKind::Syntax => PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
        RuleErrorKind::UnknownTable | RuleErrorKind::UnknownColumn => PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
    }
}

fn allow_rule(relid: pg_sys::Oid, operation: &str, rule: &str) -> Result<String, CausalError> {
    let table = group_table_name(relid)?;
    let group_id =
        get_opt::<String>("SELECT group_id FROM causal.replicated_tables WHERE relid = $1", &[relid.into()])?
            .ok_or_else(|| CausalError::NotReplicated(table.clone()))?;
    let group = Group::find(&group_id)?;
    let scope = group_tables(&group_id, &table)?;
    let ops = operations(operation)?;
    let mut recorded = Vec::new();
    for op in &ops {
        parse_rule(rule, *op, &scope).map_err(|e| CausalError::BadRule { table: table.clone(), error: e })?;
        recorded.push(Op::Rule { table: table.clone(), operation: op.name().to_string(), rule: rule.to_string() });
    }
    let hash = append_ops(&group, recorded, true)?;
    crate::capture::restricting_entry(&group.id);
    for op in ops {
        Spi::run_with_args(
            "INSERT INTO causal.table_rules (group_id, table_name, operation, rule) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (group_id, table_name, operation) DO UPDATE SET rule = EXCLUDED.rule",
            &[group_id.clone().into(), table.clone().into(), op.name().into(), rule.into()],
        )?;
    }
    crate::capture::tables_changed()?;
    Ok(hash.to_b64())
}

/// Declares the rule that writes of `operation` (insert, update, delete or all) to `tbl` must
/// satisfy. The rule is parsed and checked now, and recorded as a signed schema entry (by an
/// admin). It replaces the table's previous rule for that operation. Returns the entry's hash.
#[pg_extern]
fn allow(tbl: PgRelation, operation: &str, rule: &str) -> String {
    allow_rule(tbl.oid(), operation, rule).or_report("causal.allow")
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn setup() {
        Spi::run(
            "SELECT causal.create_group('wiki'); \
             CREATE TABLE caps (id int PRIMARY KEY, label text NOT NULL, grantee text NOT NULL); \
             CREATE TABLE pages (id int PRIMARY KEY, title text, owner text); \
             SELECT causal.replicate('wiki', 'caps'); SELECT causal.replicate('wiki', 'pages');",
        )
        .unwrap();
    }

    #[pg_test]
    fn rules_are_checked_and_recorded() {
        setup();
        Spi::run("SELECT causal.allow('pages', 'insert', $$exists(caps where caps.label = 'writer' and caps.grantee = $author)$$)")
            .unwrap();
        Spi::run("SELECT causal.allow('pages', 'all', $$true$$)").unwrap();
        let rules = Spi::get_one::<Vec<String>>(
            "SELECT array_agg(operation || ':' || rule ORDER BY operation) FROM causal.table_rules",
        )
        .unwrap()
        .unwrap();
        assert_eq!(rules, vec!["delete:true", "insert:true", "update:true"]);
        let op = Spi::get_one::<String>("SELECT op FROM causal.log('wiki', 1)").unwrap().unwrap();
        assert_eq!(op, "3 ops: rule insert on pages; rule update on pages; rule delete on pages");
    }

    #[pg_test]
    fn rules_are_enforced_before_commit() {
        setup();
        let node = Spi::get_one::<String>("SELECT causal.node_id()").unwrap().unwrap();
        Spi::run("SELECT causal.allow('pages', 'insert', $$exists(caps where caps.label = 'writer' and caps.grantee = $author)$$)")
            .unwrap();
        Spi::run("SELECT causal.allow('pages', 'update', $$new.owner = old.owner$$)").unwrap();
        // No writer cap yet: refused with 42501, naming table, operation and rule.
        let denied = sqlstate_of_stmt("INSERT INTO pages VALUES (1, 'hello', 'me')");
        assert!(
            denied.starts_with("42501") && denied.contains("insert into pages") && denied.contains("caps.label"),
            "{denied}"
        );
        Spi::run(&format!("INSERT INTO caps VALUES (1, 'writer', '{node}')")).unwrap();
        Spi::run("INSERT INTO pages VALUES (1, 'hello', 'me')").unwrap();
        assert_eq!(sqlstate_of_stmt("UPDATE pages SET title = 'changed' WHERE id = 1"), "ok");
        assert!(sqlstate_of_stmt("UPDATE pages SET owner = 'thief' WHERE id = 1").starts_with("42501"));
    }

    use crate::testing::outcome as sqlstate_of_stmt;

    fn sqlstate_of(expr: &str) -> String {
        sqlstate_of_stmt(&format!("PERFORM {expr}"))
    }

    #[pg_test]
    fn bad_rules_get_42601_or_42703_with_a_position() {
        setup();
        let s = sqlstate_of("causal.allow('pages', 'insert', $$new.title = $$)");
        assert!(s.starts_with("42601") && s.contains("at position 13"), "{s}");
        let s = sqlstate_of("causal.allow('pages', 'insert', $$exists(capz where label = 'x')$$)");
        assert!(s.starts_with("42703") && s.contains("capz") && s.contains("at position 8"), "{s}");
        let s = sqlstate_of("causal.allow('pages', 'insert', $$new.nope = 'x'$$)");
        assert!(s.starts_with("42703") && s.contains("nope"), "{s}");
        let s = sqlstate_of("causal.allow('pages', 'truncate', 'true')");
        assert!(s.starts_with("22023"), "{s}");
        // Nothing was recorded by the refused calls.
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM causal.table_rules").unwrap(), Some(0));
    }
}

/// Quoting for SQL text, from core (`sql_expr::sql_literal` is safe whatever
/// `standard_conforming_strings` says).
pub use causal_core::sql_expr::sql_literal;
pub use causal_core::sql_name::quote_ident;

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
