//! `causal.replicate`: derives a table's replicated schema from the Postgres catalog and
//! records it as a signed schema entry of the group.

use std::ffi::CString;

use pgrx::prelude::*;
use pgrx::PgRelation;
use serde_json::Value;

use causal_core::payload::Op;
use causal_core::schema::{Check, Column, ColumnType, ForeignKey, TableSchema, Unique};

use crate::author::members::append_ops;
use crate::catalog::group::Group;
use crate::catalog::tables::group_table_name;
use crate::error::{CausalError, OrReport};
use crate::pg::spi::get_opt;

/// Whether a stored expression tree (`pg_node_tree` text) calls only immutable functions.
pub fn is_immutable(node_tree: &str) -> Result<bool, CausalError> {
    let c = CString::new(node_tree).map_err(|_| CausalError::Corrupt("expression with NUL".into()))?;
    // SAFETY: `c` is a valid C string holding a node tree Postgres wrote; stringToNode
    // allocates in the current memory context and contain_mutable_functions only reads it.
    let mutable = unsafe {
        let node = pg_sys::stringToNode(c.as_ptr()) as *mut pg_sys::Node;
        pg_sys::contain_mutable_functions(node)
    };
    Ok(!mutable)
}

fn names(sql: &str, relid: pg_sys::Oid, conoid: pg_sys::Oid) -> Result<Vec<String>, CausalError> {
    Ok(get_opt::<Vec<String>>(sql, &[relid.into(), conoid.into()])?.unwrap_or_default())
}

/// Reads the schema of `relid` from the catalog, refusing what pg_causal cannot replicate.
///
/// Expressions are read with `search_path` set to `pg_catalog` alone, so `pg_get_expr`
/// qualifies every function that is not a built-in (and the expression language refuses it),
/// and with `standard_conforming_strings` on, so literals read the same everywhere. The schema
/// must then pass the checks every replica makes on import (`causal_core::schema_check`).
pub fn derive_schema(group: &Group, relid: pg_sys::Oid) -> Result<TableSchema, CausalError> {
    let schema = crate::pg::spi::with_setting("search_path", "pg_catalog", || {
        crate::pg::spi::with_setting("standard_conforming_strings", "on", || derive_schema_pinned(group, relid))
    })???;
    causal_core::schema_check::check_schema(&schema)
        .map_err(|what| CausalError::UnsafeSchema { table: schema.table.clone(), what })?;
    Ok(schema)
}

fn derive_schema_pinned(group: &Group, relid: pg_sys::Oid) -> Result<TableSchema, CausalError> {
    let table = group_table_name(relid)?;
    let is_table =
        get_opt::<bool>("SELECT relkind = 'r' FROM pg_class WHERE oid = $1", &[relid.into()])?.unwrap_or(false);
    if !is_table {
        return Err(CausalError::Unsupported { table, what: "it is not an ordinary table".into() });
    }
    let mut columns = Vec::new();
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    pg_get_expr(d.adbin, d.adrelid), a.attgenerated <> '' OR a.attidentity <> '' \
             FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            None,
            &[relid.into()],
        )?;
        for r in rows {
            let name = r.get::<String>(1)?.unwrap_or_default();
            let type_name = r.get::<String>(2)?.unwrap_or_default();
            let generated = r.get::<bool>(5)?.unwrap_or(false);
            columns.push((name, type_name, r.get::<bool>(3)?.unwrap_or(false), r.get::<String>(4)?, generated));
        }
        Ok::<_, pgrx::spi::Error>(())
    })?;
    let mut schema_columns = Vec::new();
    for (name, type_name, not_null, default, generated) in columns {
        if generated {
            return Err(CausalError::Unsupported {
                table,
                what: format!(
                    "column {name} is generated or an identity column; replicate plain columns with defaults instead"
                ),
            });
        }
        let ty = ColumnType::from_sql_name(&type_name).ok_or_else(|| CausalError::UnsupportedType {
            table: table.clone(),
            column: name.clone(),
            type_name: type_name.clone(),
        })?;
        schema_columns.push(Column { name, ty, not_null, default, default_value: None });
    }

    let key_cols = "SELECT coalesce(array_agg(a.attname::text ORDER BY k.ord), '{}') \
                    FROM pg_constraint c, unnest(c.conkey) WITH ORDINALITY k(attnum, ord) \
                    JOIN pg_attribute a ON a.attnum = k.attnum \
                    WHERE c.oid = $2 AND a.attrelid = $1";
    let mut primary_key = Vec::new();
    let mut uniques = Vec::new();
    let mut checks = Vec::new();
    let mut foreign_keys = Vec::new();
    let mut constraints = Vec::new();
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT c.oid, c.conname::text, c.contype::text, pg_get_expr(c.conbin, c.conrelid), c.conbin::text, \
                    c.confrelid \
             FROM pg_constraint c WHERE c.conrelid = $1 AND c.contype IN ('p', 'u', 'c', 'f') ORDER BY c.conname",
            None,
            &[relid.into()],
        )?;
        for r in rows {
            constraints.push((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<String>(4)?,
                r.get::<String>(5)?,
                r.get::<pg_sys::Oid>(6)?.unwrap_or(pg_sys::InvalidOid),
            ));
        }
        Ok::<_, pgrx::spi::Error>(())
    })?;
    for (oid, name, kind, expression, tree, confrelid) in constraints {
        match kind.as_str() {
            "p" => primary_key = names(key_cols, relid, oid)?,
            "u" => uniques.push(Unique { name, columns: names(key_cols, relid, oid)? }),
            "c" => {
                let (Some(expression), Some(tree)) = (expression, tree) else { continue };
                if !is_immutable(&tree)? {
                    return Err(CausalError::MutableCheck { table, constraint: name, expression });
                }
                checks.push(Check { name, expression });
            }
            "f" => {
                let references = group_table_name(confrelid)?;
                let replicated = get_opt::<bool>(
                    "SELECT true FROM causal.replicated_tables WHERE group_id = $1 AND relid = $2",
                    &[group.id.clone().into(), confrelid.into()],
                )?
                .is_some()
                    || confrelid == relid;
                if !replicated {
                    return Err(CausalError::ForeignKeyOutsideGroup { table, constraint: name, references });
                }
                let referenced_columns = get_opt::<Vec<String>>(
                    "SELECT coalesce(array_agg(a.attname::text ORDER BY k.ord), '{}') \
                     FROM pg_constraint c CROSS JOIN LATERAL unnest(c.confkey) WITH ORDINALITY k(attnum, ord) \
                     JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum WHERE c.oid = $1",
                    &[oid.into()],
                )?
                .unwrap_or_default();
                foreign_keys.push(ForeignKey {
                    name,
                    columns: names(key_cols, relid, oid)?,
                    references,
                    referenced_columns,
                });
            }
            _ => {}
        }
    }
    if primary_key.is_empty() {
        return Err(CausalError::NoPrimaryKey(table));
    }
    Ok(TableSchema { table, columns: schema_columns, primary_key, uniques, checks, foreign_keys })
}

fn replicate_table(grp: &str, relid: pg_sys::Oid) -> Result<String, CausalError> {
    let group = Group::find(grp)?;
    let name = group_table_name(relid)?;
    if let Some(other) = get_opt::<String>(
        "SELECT g.name FROM causal.replicated_tables t JOIN causal.group_defs g USING (group_id) WHERE t.relid = $1",
        &[relid.into()],
    )? {
        return Err(CausalError::AlreadyReplicated { table: name, group: other });
    }
    let schema = derive_schema(&group, relid)?;
    let value: Value = schema.to_value();
    // Its writes are captured from the WAL, by logical decoding.
    crate::capture::slot::check_wal_level()?;
    let hash = append_ops(&group, vec![Op::Schema { table: name.clone(), schema: value.clone() }], true)?;
    Spi::run_with_args(
        "INSERT INTO causal.replicated_tables (group_id, table_name, relid, schema) VALUES ($1, $2, $3, $4)",
        &[group.id.clone().into(), name.into(), relid.into(), pgrx::JsonB(value).into()],
    )?;
    crate::catalog::tables::install_triggers(relid)?;
    crate::catalog::tables::ensure_lookup_indexes(&group, &schema)?;
    crate::catalog::tables::tables_changed()?;
    // Rows the table already holds become inserts of an entry after the schema's.
    crate::capture::append_existing_rows(relid)?;
    // The slot that captures its writes, if this transaction may still create it (else the
    // first write does).
    crate::capture::slot::ensure(false)?;
    Ok(hash.to_b64())
}

/// Puts a table into a group: derives its schema (columns, primary key, NOT NULL, defaults,
/// CHECK, UNIQUE, FOREIGN KEY) and records it as a signed schema entry. Returns the entry's
/// hash.
#[pg_extern]
fn replicate(grp: &str, tbl: PgRelation) -> String {
    // Closed first: the table's replica identity is set, which ALTER TABLE refuses while the
    // session holds the relation open.
    let relid = tbl.oid();
    drop(tbl);
    replicate_table(grp, relid).or_report("causal.replicate")
}

/// The replicated schema of a table, as recorded in its group.
#[pg_extern(stable)]
fn describe(tbl: PgRelation) -> pgrx::JsonB {
    let f = "causal.describe";
    let tbl = tbl.oid();
    let schema = get_opt::<pgrx::JsonB>("SELECT schema FROM causal.replicated_tables WHERE relid = $1", &[tbl.into()])
        .map_err(CausalError::from)
        .or_report(f);
    match schema {
        Some(s) => s,
        None => {
            let name = group_table_name(tbl).unwrap_or_else(|_| format!("{tbl:?}"));
            CausalError::NotReplicated(name).report(f)
        }
    }
}

extension_sql!(
    r#"
CREATE VIEW causal.tables AS
SELECT g.name AS group_name, t.table_name, t.relid::regclass AS relation,
       jsonb_array_length(t.schema -> 'columns') AS columns,
       ARRAY(SELECT jsonb_array_elements_text(t.schema -> 'primaryKey')) AS primary_key
FROM causal.replicated_tables t JOIN causal.group_defs g USING (group_id);
GRANT SELECT ON causal.tables TO PUBLIC;
"#,
    name = "tables_view",
    requires = ["catalog"]
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn setup() {
        crate::testing::capture_slot();
        Spi::run("SELECT causal.create_group('shop')").unwrap();
    }

    #[pg_test]
    fn replicate_derives_the_schema() {
        setup();
        Spi::run(
            "CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2) CHECK (price >= 0), \
             stock integer DEFAULT 0, code varchar(8) UNIQUE, added timestamptz, tags jsonb, blob bytea, id uuid, ok boolean, \
             d date, f double precision, r real, b bigint, s smallint, ts timestamp)",
        )
        .unwrap();
        Spi::run("SELECT causal.replicate('shop', 'products')").unwrap();
        let schema = Spi::get_one::<pgrx::JsonB>("SELECT causal.describe('products')").unwrap().unwrap().0;
        let parsed = causal_core::schema::TableSchema::from_value(&schema).unwrap();
        assert_eq!(parsed.table, "products");
        assert_eq!(parsed.primary_key, vec!["sku"]);
        assert_eq!(parsed.columns.len(), 16);
        assert!(parsed.column("name").unwrap().not_null);
        assert_eq!(parsed.column("stock").unwrap().default.as_deref(), Some("0"));
        assert_eq!(parsed.uniques[0].columns, vec!["code"]);
        assert_eq!(parsed.checks[0].expression, "(price >= (0)::numeric)");
        let (tables, entries) =
            Spi::get_two::<Vec<String>, i64>("SELECT tables, entry_count FROM causal.groups").unwrap();
        assert_eq!(tables.unwrap(), vec!["products"]);
        assert_eq!(entries.unwrap(), 2);
        assert_eq!(Spi::get_one::<i32>("SELECT columns FROM causal.tables").unwrap().unwrap(), 16);
    }

    #[pg_test(
        error = "table child cannot be replicated: its foreign key child_p_fkey references parent, which is not replicated in the same group"
    )]
    fn foreign_key_outside_the_group_is_named() {
        setup();
        Spi::run("CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE child (id int PRIMARY KEY, p int REFERENCES parent)")
            .unwrap();
        Spi::run("SELECT causal.replicate('shop', 'child')").unwrap();
    }

    #[pg_test]
    fn foreign_keys_within_the_group_are_recorded() {
        setup();
        Spi::run("CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE child (id int PRIMARY KEY, p int REFERENCES parent)")
            .unwrap();
        Spi::run("SELECT causal.replicate('shop', 'parent'); SELECT causal.replicate('shop', 'child')").unwrap();
        let fk =
            Spi::get_one::<pgrx::JsonB>("SELECT causal.describe('child') -> 'foreignKeys' -> 0").unwrap().unwrap().0;
        assert_eq!(fk["references"], "parent");
        assert_eq!(fk["columns"][0], "p");
        assert_eq!(fk["referencedColumns"][0], "id");
        // The engine finds a deleted parent's children through a partial index on row_meta.
        let lookups = Spi::get_one::<Vec<String>>(
            "SELECT array_agg(indexdef) FROM pg_indexes WHERE schemaname = 'causal' AND indexname LIKE 'row_meta_lookup_%'",
        )
        .unwrap()
        .unwrap();
        assert_eq!(lookups.len(), 1, "{lookups:?}");
        assert!(lookups[0].contains("(vals -> 'p'::text)") && lookups[0].contains("'child'::text"), "{lookups:?}");
    }

    #[pg_test(error = "table t has no primary key; pg_causal identifies rows by their primary key")]
    fn a_primary_key_is_required() {
        setup();
        Spi::run("CREATE TABLE t (a int)").unwrap();
        Spi::run("SELECT causal.replicate('shop', 't')").unwrap();
    }

    #[pg_test(error = "column p of table t has type point, which pg_causal does not replicate")]
    fn unsupported_types_are_named() {
        setup();
        Spi::run("CREATE TABLE t (id int PRIMARY KEY, p point)").unwrap();
        Spi::run("SELECT causal.replicate('shop', 't')").unwrap();
    }

    #[pg_test(
        error = "CHECK constraint t_ts_check of table t is not deterministic: (ts < now()) calls a function that is not immutable"
    )]
    fn mutable_checks_are_refused() {
        setup();
        Spi::run("CREATE TABLE t (id int PRIMARY KEY, ts timestamptz CHECK (ts < now()))").unwrap();
        Spi::run("SELECT causal.replicate('shop', 't')").unwrap();
    }

    /// A function of the user's own in a CHECK is refused, even one that shadows a built-in
    /// in the session's search_path: the expression is read with search_path = pg_catalog,
    /// so the function shows up qualified, and the expression language refuses it.
    #[pg_test]
    fn functions_outside_pg_catalog_are_refused() {
        use crate::testing::outcome;
        setup();
        Spi::run(
            "CREATE FUNCTION public.length(text) RETURNS integer IMMUTABLE LANGUAGE sql AS 'SELECT 1'; \
             SET search_path = public, pg_catalog; \
             CREATE TABLE t (id int PRIMARY KEY, name text CHECK (length(name) > 0))",
        )
        .unwrap();
        let s = outcome("PERFORM causal.replicate('shop', 't')");
        Spi::run("RESET search_path").unwrap();
        assert!(s.starts_with("0A000") && s.contains("public.length"), "{s}");
        Spi::run(
            "CREATE FUNCTION public.ok(integer) RETURNS boolean IMMUTABLE LANGUAGE sql AS 'SELECT true'; \
             CREATE TABLE u (id int PRIMARY KEY CHECK (ok(id)))",
        )
        .unwrap();
        let s = outcome("PERFORM causal.replicate('shop', 'u')");
        assert!(s.starts_with("0A000") && s.contains("public.ok"), "{s}");
    }

    /// Defaults are checked too: one that reads a file is refused; the clock, a uuid and a
    /// sequence are allowed (each replica receives the value, never the call).
    #[pg_test]
    fn defaults_are_checked() {
        use crate::testing::outcome;
        setup();
        Spi::run("CREATE TABLE f (id int PRIMARY KEY, body text DEFAULT pg_read_file('/etc/hostname'))").unwrap();
        let s = outcome("PERFORM causal.replicate('shop', 'f')");
        assert!(s.starts_with("0A000") && s.contains("pg_read_file"), "{s}");
        Spi::run(
            "CREATE TABLE g (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), u uuid DEFAULT gen_random_uuid(), \
             n integer DEFAULT (2 + 3), t text DEFAULT 'it''s')",
        )
        .unwrap();
        assert_eq!(outcome("PERFORM causal.replicate('shop', 'g')"), "ok");
    }

    #[pg_test(error = "table t is already replicated in group shop")]
    fn a_table_is_replicated_once() {
        setup();
        Spi::run("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
        Spi::run("SELECT causal.replicate('shop', 't')").unwrap();
        Spi::run("SELECT causal.replicate('shop', 't')").unwrap();
    }
}
