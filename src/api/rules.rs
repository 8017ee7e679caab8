//! `causal.allow`: rules that say who may write what, recorded as schema entries.

use pgrx::prelude::*;
use pgrx::PgRelation;

use causal_core::payload::Op;
use causal_core::rules::{parse_rule, Operation};

use crate::author::members::append_ops;
use crate::capture::rule_check::group_tables;
use crate::catalog::group::Group;
use crate::catalog::tables::group_table_name;
use crate::error::{CausalError, OrReport};
use crate::pg::spi::get_opt;

fn operations(operation: &str) -> Result<Vec<Operation>, CausalError> {
    Ok(match operation.to_ascii_lowercase().as_str() {
        "insert" => vec![Operation::Insert],
        "update" => vec![Operation::Update],
        "delete" => vec![Operation::Delete],
        "all" => vec![Operation::Insert, Operation::Update, Operation::Delete],
        other => return Err(CausalError::BadOperation(other.chars().take(40).collect())),
    })
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
    // Writes already made were checked without the rule, and their entry comes after it.
    crate::capture::refuse_after_writes(&group.id, "declare a rule for them")?;
    let hash = append_ops(&group, recorded, true)?;
    for op in ops {
        crate::catalog::tables::record_rule(&group_id, &table, op.name(), rule)?;
    }
    crate::catalog::tables::tables_changed()?;
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
        crate::testing::capture_slot();
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
