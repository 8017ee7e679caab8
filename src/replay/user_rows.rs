//! Writing the group's view into the user tables: new rows inserted (without SQL where the
//! table allows), the others upserted or deleted through SQL.

use super::*;

/// The text of an encoded value as Postgres reads it for the column (what `->>` gives: a
/// string's contents, any other value's JSON text; NULL for null or absent).
pub(super) fn column_text(v: Option<&Value>) -> Option<String> {
    column_text_ref(v).map(std::borrow::Cow::into_owned)
}

/// [`column_text`], borrowing strings.
pub(super) fn column_text_ref(v: Option<&Value>) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(std::borrow::Cow::Borrowed(s)),
        Some(other) => Some(std::borrow::Cow::Owned(other.to_string())),
    }
}

/// Writes rows new to the group's view. The table cannot hold their keys unless a row was
/// written there outside pg_causal (with `session_replication_role = replica`, say), so they
/// are inserted without ON CONFLICT, whose speculative insertion cost a tenth of an import's
/// replay; in a subtransaction, so that should the table hold one of their keys after all,
/// the insert is undone and the rows are upserted (the view's row replaces the stray one).
pub(super) fn insert_new_rows(
    table: &str,
    schema: &TableSchema,
    rows: &[&Map<String, Value>],
) -> Result<(), ReconcileError> {
    let relid = get_prepared::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[table.into()]).map_err(store_err)?;
    let insert = || -> Result<(), CausalError> {
        if let Some(relid) = relid {
            if insert_rows_direct(relid, schema, rows)? {
                return Ok(());
            }
        }
        let (sql, args) = write_rows_sql(table, schema, rows, false);
        Ok(exec_prepared(&sql, &args)?)
    };
    match crate::pg::spi::unless_unique_violation(insert) {
        Some(done) => done.map_err(store_err),
        None => upsert_rows(table, schema, rows),
    }
}

/// Inserts `rows` into the table `relid` without SQL, as COPY does (`Inserter::open_user_table`,
/// which says when that is the same as the INSERT of `write_rows_sql`). Each value goes to its
/// column type's input function as the text the INSERT casts. Returns false, having written
/// nothing, for a table that must be written through SQL.
pub(super) fn insert_rows_direct(
    relid: pg_sys::Oid,
    schema: &TableSchema,
    rows: &[&Map<String, Value>],
) -> Result<bool, CausalError> {
    let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    let Some((mut inserter, order)) = Inserter::open_user_table(relid, &columns) else { return Ok(false) };
    let mut texts: Vec<Option<std::borrow::Cow<str>>> = Vec::with_capacity(order.len());
    for row in rows {
        texts.clear();
        texts.extend(order.iter().map(|i| i.and_then(|i| column_text_ref(row.get(columns[i])))));
        let cells: Vec<Cell> =
            texts.iter().map(|t| t.as_deref().map_or(Cell::Null(pg_sys::InvalidOid), Cell::Input)).collect();
        inserter.push(&cells)?;
    }
    inserter.finish();
    Ok(true)
}

pub(super) fn upsert_rows(
    table: &str,
    schema: &TableSchema,
    rows: &[&Map<String, Value>],
) -> Result<(), ReconcileError> {
    let (sql, args) = write_rows_sql(table, schema, rows, true);
    exec_prepared(&sql, &args).map_err(store_err)
}

/// The statement that inserts (or, with `upsert`, upserts) `rows` into `table`, and its
/// arguments: one text array per column, each element cast to the column's type in SQL (no
/// JSON is parsed on the Postgres side).
pub(super) fn write_rows_sql(
    table: &str,
    schema: &TableSchema,
    rows: &[&Map<String, Value>],
    upsert: bool,
) -> (String, Vec<pgrx::datum::DatumWithOid<'static>>) {
    let cols: Vec<String> = schema.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let params: Vec<String> = (1..=schema.columns.len()).map(|i| format!("${i}::text[]")).collect();
    let fields: Vec<String> = (1..=schema.columns.len()).map(|i| format!("f{i}")).collect();
    let exprs: Vec<String> =
        schema.columns.iter().zip(&fields).map(|(c, f)| decode_field(&format!("x.{f}"), &c.ty)).collect();
    let non_key: Vec<String> = schema
        .columns
        .iter()
        .filter(|c| !schema.primary_key.contains(&c.name))
        .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(&c.name)))
        .collect();
    let action =
        if non_key.is_empty() { "DO NOTHING".to_string() } else { format!("DO UPDATE SET {}", non_key.join(", ")) };
    let pk: Vec<String> = schema.primary_key.iter().map(|c| quote_ident(c)).collect();
    let conflict = if upsert { format!(" ON CONFLICT ({}) {action}", pk.join(", ")) } else { String::new() };
    let sql = format!(
        "INSERT INTO {table} ({}) SELECT {} FROM unnest({}) AS x({}){conflict}",
        cols.join(", "),
        exprs.join(", "),
        params.join(", "),
        fields.join(", "),
    );
    let args: Vec<pgrx::datum::DatumWithOid> = schema
        .columns
        .iter()
        .map(|c| rows.iter().map(|r| column_text(r.get(&c.name))).collect::<Vec<Option<String>>>().into())
        .collect();
    (sql, args)
}
