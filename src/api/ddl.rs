//! DDL on replicated tables: DROP is refused until `causal.unreplicate`; ALTER TABLE may only
//! append columns that are nullable or have a constant default (recorded as a new schema
//! entry); `causal.unreplicate` takes a table out of its group.

use pgrx::prelude::*;
use pgrx::PgRelation;

use causal_core::payload::Op;

use crate::api::replicate::derive_schema;
use crate::author::members::append_ops;
use crate::catalog::group::Group;
use crate::catalog::tables::group_table_name;
use crate::error::{CausalError, OrReport};
use crate::pg::spi::get_opt;

/// Called after every ALTER TABLE of a replicated table.
fn schema_changed(relid: pg_sys::Oid) -> Result<(), CausalError> {
    let Some((group_id, old)) = crate::catalog::tables::recorded(relid)? else { return Ok(()) };
    let group = Group::find(&group_id)?;
    let mut new = derive_schema(&group, relid)
        .map_err(|e| CausalError::UnsupportedAlter { table: old.table.clone(), what: e.to_string() })?;
    // The catalog does not know the encoded defaults recorded for added columns; keep them.
    for c in new.columns.iter_mut() {
        if let Some(o) = old.column(&c.name) {
            c.default_value = o.default_value.clone();
        }
    }
    if new == old {
        return Ok(());
    }
    let refuse = |what: String| Err(CausalError::UnsupportedAlter { table: old.table.clone(), what });
    if new.table != old.table {
        return refuse(format!("it renames the table to {}", new.table));
    }
    // Postgres gives the new column's default to rows this transaction wrote before, but their
    // entry, made at commit after the schema entry, would carry them without it.
    crate::capture::refuse_after_writes(&group.id, "add a column to one of them")?;
    let same_prefix = new.columns.len() > old.columns.len() && new.columns[..old.columns.len()] == old.columns[..];
    let same_constraints = new.primary_key == old.primary_key
        && new.uniques == old.uniques
        && new.checks == old.checks
        && new.foreign_keys == old.foreign_keys;
    if !same_prefix || !same_constraints {
        return refuse("it changes existing columns or constraints".into());
    }
    let old_len = old.columns.len();
    for c in new.columns[old_len..].iter_mut() {
        // Every replica fills the column in for rows written concurrently, so its default
        // must give the same value everywhere: no default, or an immutable expression.
        let tree = get_opt::<String>(
            "SELECT d.adbin::text FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
             WHERE d.adrelid = $1 AND a.attname = $2",
            &[relid.into(), c.name.clone().into()],
        )?;
        let constant = match &tree {
            Some(t) => crate::api::replicate::is_immutable(t)?,
            None => false,
        };
        if tree.is_some() && !constant {
            return refuse(format!("new column {} has a default that is not immutable", c.name));
        }
        if c.not_null && tree.is_none() {
            return refuse(format!("new column {} is NOT NULL without a default", c.name));
        }
        if let Some(expr) = &c.default {
            // Rows written concurrently, by entries that did not know the column, get this value.
            c.default_value = Some(encode_default(expr, &c.ty)?.ok_or_else(|| CausalError::UnsupportedAlter {
                table: old.table.clone(),
                what: format!(
                    "new column {} has a default of type {}, which replay cannot fill in for concurrent rows",
                    c.name,
                    c.ty.sql_name()
                ),
            })?);
        }
    }
    // Rows of local commits not placed yet reach `row_meta` first, so they get the default too.
    crate::replay::placement::catch_up(&group)?;
    for c in &new.columns[old_len..] {
        if let Some(v) = &c.default_value {
            crate::schema::apply::fill_default(&group, &new.table, &c.name, v)?;
        }
    }
    let value = new.to_value();
    append_ops(&group, vec![Op::Schema { table: new.table.clone(), schema: value.clone() }], true)?;
    Spi::run_with_args(
        "UPDATE causal.replicated_tables SET schema = $2 WHERE relid = $1",
        &[relid.into(), pgrx::JsonB(value).into()],
    )?;
    crate::catalog::tables::ensure_lookup_indexes(&group, &new)?;
    crate::catalog::tables::tables_changed()
}

#[pg_extern(name = "_schema_changed")]
fn schema_changed_sql(relid: pg_sys::Oid) {
    schema_changed(relid).or_report("causal ALTER TABLE check");
}

fn unreplicate_table(relid: pg_sys::Oid) -> Result<String, CausalError> {
    let name = group_table_name(relid)?;
    let Some((group_id, _)) = crate::catalog::tables::recorded(relid)? else {
        return Err(CausalError::NotReplicated(name));
    };
    if let Some(referrer) = get_opt::<String>(
        "SELECT table_name FROM causal.replicated_tables WHERE group_id = $1 AND relid <> $2 \
           AND schema -> 'foreignKeys' @> jsonb_build_array(jsonb_build_object('references', $3::text)) LIMIT 1",
        &[group_id.clone().into(), relid.into(), name.clone().into()],
    )? {
        return Err(CausalError::StillReferenced { table: name, referrer });
    }
    let group = Group::find(&group_id)?;
    crate::capture::refuse_after_writes(&group.id, "take one of them out of the group")?;
    let hash = append_ops(&group, vec![Op::Unreplicate { table: name.clone() }], true)?;
    crate::catalog::tables::remove_triggers(relid)?;
    Spi::run_with_args("DELETE FROM causal.replicated_tables WHERE relid = $1", &[relid.into()])?;
    crate::catalog::tables::tables_changed()?;
    Ok(hash.to_b64())
}

/// Takes a table out of its group (a signed schema entry, by an admin). The table and its rows
/// stay; they are no longer captured. Returns the entry's hash.
#[pg_extern]
fn unreplicate(tbl: PgRelation) -> String {
    // Closed first: the table's replica identity is reset, which ALTER TABLE refuses while
    // the session holds the relation open.
    let relid = tbl.oid();
    drop(tbl);
    unreplicate_table(relid).or_report("causal.unreplicate")
}

extension_sql!(
    r#"
CREATE FUNCTION causal._guard_drop() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    FOR r IN SELECT * FROM pg_event_trigger_dropped_objects() WHERE object_type = 'table' LOOP
        IF EXISTS (SELECT 1 FROM causal.replicated_tables WHERE relid = r.objid) THEN
            RAISE EXCEPTION 'table % is replicated and cannot be dropped', r.object_identity
                USING ERRCODE = 'dependent_objects_still_exist',
                      HINT = format('Run SELECT causal.unreplicate(%L) first.', r.object_identity);
        END IF;
    END LOOP;
END $$;
CREATE EVENT TRIGGER causal_guard_drop ON sql_drop EXECUTE FUNCTION causal._guard_drop();

CREATE FUNCTION causal._guard_alter() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    FOR r IN SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
             WHERE command_tag = 'ALTER TABLE' AND objid IN (SELECT relid FROM causal.replicated_tables) LOOP
        PERFORM causal._schema_changed(r.objid);
    END LOOP;
END $$;
CREATE EVENT TRIGGER causal_guard_alter ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION causal._guard_alter();
"#,
    name = "ddl_guards",
    requires = [schema_changed_sql, "catalog"]
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::testing::{outcome, shop_with_products as setup};

    #[pg_test]
    fn add_column_records_a_new_schema_entry() {
        setup();
        assert_eq!(outcome("ALTER TABLE products ADD COLUMN stock integer DEFAULT 0"), "ok");
        assert_eq!(outcome("ALTER TABLE products ADD COLUMN note text"), "ok");
        let cols = Spi::get_one::<i32>("SELECT jsonb_array_length(causal.describe('products') -> 'columns')")
            .unwrap()
            .unwrap();
        assert_eq!(cols, 5);
        let ops = Spi::get_one::<Vec<String>>("SELECT array_agg(op) FROM causal.log('shop', 2)").unwrap().unwrap();
        assert_eq!(ops, vec!["schema products", "schema products"]);
        // Statistics targets and the like change nothing replicated: no entry.
        assert_eq!(outcome("ALTER TABLE products ALTER COLUMN name SET STATISTICS 500"), "ok");
        assert_eq!(Spi::get_one::<i64>("SELECT entry_count FROM causal.groups").unwrap(), Some(4));
    }

    /// A date default is recorded in the value encoding (ISO), whatever the session's DateStyle.
    #[pg_test]
    fn a_date_default_is_recorded_in_iso_form() {
        setup();
        Spi::run("SET DateStyle = 'SQL, DMY'").unwrap();
        assert_eq!(outcome("ALTER TABLE products ADD COLUMN since date DEFAULT '2026-11-22'"), "ok");
        let recorded = Spi::get_one::<String>(
            "SELECT c ->> 'defaultValue' FROM jsonb_array_elements(causal.describe('products') -> 'columns') c \
             WHERE c ->> 'name' = 'since'",
        );
        assert_eq!(recorded.unwrap().as_deref(), Some("2026-11-22"));
        assert_eq!(Spi::get_one::<String>("SHOW DateStyle").unwrap().as_deref(), Some("SQL, DMY"));
    }

    #[pg_test]
    fn other_alters_are_refused() {
        setup();
        let s = outcome("ALTER TABLE products ALTER COLUMN price TYPE numeric(12,2)");
        assert!(s.starts_with("0A000") && s.contains("ALTER TABLE of replicated table products"), "{s}");
        assert!(outcome("ALTER TABLE products DROP COLUMN price").starts_with("0A000"));
        assert!(outcome("ALTER TABLE products ADD COLUMN t timestamptz DEFAULT now()").starts_with("0A000"));
        assert!(outcome("ALTER TABLE products ADD CONSTRAINT pos CHECK (price > 0)").starts_with("0A000"));
        let s = outcome("ALTER TABLE products RENAME TO goods");
        assert!(s.starts_with("0A000") && s.contains("renames the table to goods"), "{s}");
    }

    #[pg_test]
    fn drop_is_refused_until_unreplicate() {
        setup();
        let s = outcome("DROP TABLE products");
        assert!(s.starts_with("2BP01") && s.contains("products"), "{s}");
        Spi::run("SELECT causal.unreplicate('products')").unwrap();
        assert_eq!(outcome("DROP TABLE products"), "ok");
        assert_eq!(
            Spi::get_one::<String>("SELECT op FROM causal.log('shop', 1)").unwrap().unwrap(),
            "unreplicate products"
        );
    }

    #[pg_test]
    fn unreplicate_refuses_a_table_others_reference() {
        setup();
        Spi::run("CREATE TABLE orders (id int PRIMARY KEY, sku text REFERENCES products); SELECT causal.replicate('shop', 'orders');")
            .unwrap();
        let s = outcome("PERFORM causal.unreplicate('products')");
        assert!(s.contains("orders"), "{s}");
    }
}

/// The encoded value of a constant default, for the types whose text form is their encoding.
fn encode_default(expr: &str, ty: &causal_core::schema::ColumnType) -> Result<Option<serde_json::Value>, CausalError> {
    use causal_core::schema::ColumnType as T;
    use serde_json::{json, Value};
    // A date's text follows DateStyle; the encoding is ISO's (`causal_core::schema::format_date`).
    let sql = format!("SELECT (({expr})::{})::text", ty.sql_name());
    let Some(text) = crate::pg::spi::with_setting("DateStyle", "ISO", || get_opt::<String>(&sql, &[]))?? else {
        return Ok(None);
    };
    Ok(match ty {
        T::Text | T::Varchar(_) | T::Uuid | T::Date | T::Int8 | T::Numeric { .. } => Some(Value::String(text)),
        T::Int2 | T::Int4 => text.parse::<i64>().ok().map(|v| json!(v)),
        T::Bool => Some(Value::Bool(text == "true")),
        T::Float4 | T::Float8 => text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number),
        T::Timestamp | T::Timestamptz | T::Bytea | T::Jsonb => None,
    })
}
