//! Tests of the schema expression language (`sql_expr.rs`).

use super::*;

const COLS: &[&str] = &["price", "name", "status", "qty", "Odd Name", "data"];

fn check(text: &str) -> Result<String, ExprError> {
    parse(text, Use::Check { columns: COLS }).map(|e| e.to_sql())
}

fn default(text: &str) -> Result<String, ExprError> {
    parse(text, Use::Default).map(|e| e.to_sql())
}

/// What `pg_get_expr` writes for ordinary constraints parses, and comes out qualified.
#[test]
fn pg_get_expr_forms_are_read() {
    assert_eq!(
        check("(price >= (0)::numeric)").unwrap(),
        "(\"price\" OPERATOR(pg_catalog.>=) CAST(0 AS pg_catalog.numeric))"
    );
    assert_eq!(
        check("((length(name) > 0) AND (length(name) < 100))").unwrap(),
        "((pg_catalog.length(\"name\") OPERATOR(pg_catalog.>) 0) AND (pg_catalog.length(\"name\") OPERATOR(pg_catalog.<) 100))"
    );
    assert_eq!(
        check("(status = ANY (ARRAY['a'::text, 'b'::text]))").unwrap(),
        "(\"status\" OPERATOR(pg_catalog.=) ANY (ARRAY[CAST('a' AS pg_catalog.text), CAST('b' AS pg_catalog.text)]))"
    );
    check("((status)::text = ANY ((ARRAY['a'::character varying, 'b'::character varying])::text[]))").unwrap();
    check("((qty IS NOT NULL) OR (price IS NULL))").unwrap();
    check("(qty > '-1'::integer)").unwrap();
    check("((price * (2)::numeric) <= (1000.5)::numeric)").unwrap();
    check("(\"Odd Name\" ~~ 'a%'::text)").unwrap();
    check("(NOT (name ~ '^[a-z]+$'::text))").unwrap();
    check("((data -> 'k'::text) IS NOT NULL)").unwrap();
    check("(CASE WHEN (qty > 0) THEN true ELSE false END)").unwrap();
    check("(COALESCE(qty, 0) >= 0)").unwrap();
    check("((price)::double precision < '1e10'::double precision)").unwrap();
    check("(pg_catalog.lower(name) = name)").unwrap();
    // The constraint-definition form that older schema entries recorded.
    assert_eq!(check("CHECK ((qty <= price))").unwrap(), check("(qty <= price)").unwrap());
    assert_eq!(check("CHECK ((qty > 0)) NOT VALID").unwrap(), check("(qty > 0)").unwrap());
    assert_eq!(default("0").unwrap(), "0");
    assert_eq!(default("'x'::text").unwrap(), "CAST('x' AS pg_catalog.text)");
    assert_eq!(default("now()").unwrap(), "pg_catalog.now()");
    assert_eq!(default("CURRENT_TIMESTAMP").unwrap(), "CURRENT_TIMESTAMP");
    assert_eq!(default("gen_random_uuid()").unwrap(), "pg_catalog.gen_random_uuid()");
    assert_eq!(
        default("nextval('public.products_id_seq'::regclass)").unwrap(),
        "pg_catalog.nextval(CAST('\"public\".\"products_id_seq\"' AS pg_catalog.regclass))"
    );
    default("'2026-11-22'::date").unwrap();
}

/// The attacks seen against the text-pasting design are refused, each with a reason.
#[test]
fn crafted_expressions_are_refused() {
    for bad in [
        "(true)); DROP TABLE victim; --",
        "true); DROP TABLE victim",
        "(price > 0) -- comment",
        "(price > 0) /* c */",
        "(query_to_xml('select 1', true, true, '') IS NOT NULL)",
        "(length(query_to_xml('x', true, true, '')::text) > 0)",
        "(lo_export(1, '/tmp/x') > 0)",
        "(pg_reload_conf())",
        "(public.lower(name) = name)",
        "(pg_catalog.pg_read_file('/etc/passwd') IS NOT NULL)",
        "((SELECT 1) = 1)",
        "(EXISTS (SELECT 1))",
        "($1 > 0)",
        "(other.col > 0)",
        "(ctid IS NOT NULL)",
        "(nope > 0)",
        "(now() > '2020-01-01'::timestamptz)",
        "(CURRENT_TIMESTAMP IS NOT NULL)",
        "(random() > 0.5)",
        "(price::point IS NULL)",
        "(name IS DISTINCT FROM 'x')",
        "(CASE name WHEN 'a' THEN true END)",
        "'unterminated",
        "(price > 0",
        "",
        "(price > 0) (qty > 0)",
        "nextval('causal.row_meta'::regclass)",
        "nextval('x; DROP TABLE y'::regclass)",
    ] {
        assert!(check(bad).is_err(), "CHECK {bad:?} was accepted as {:?}", check(bad));
    }
    for bad in [
        "pg_read_file('/etc/passwd')",
        "(price + 1)",
        "lower(nextval('s'::regclass)::text)",
        "query_to_xml('x', true, true, '')",
    ] {
        assert!(default(bad).is_err(), "DEFAULT {bad:?} was accepted");
    }
    let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
    assert!(check(&deep).is_err());
    assert!(check(&"1 + ".repeat(5000)).is_err());
}

/// A string with a backslash reads the same whatever standard_conforming_strings says.
#[test]
fn literals_do_not_depend_on_standard_conforming_strings() {
    assert_eq!(default("'a\\'::text").unwrap(), "CAST(E'a\\\\' AS pg_catalog.text)");
    assert_eq!(default("'it''s'::text").unwrap(), "CAST('it''s' AS pg_catalog.text)");
}
