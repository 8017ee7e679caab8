//! The `#[pg_test]`s of `pg/direct.rs`.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use super::super::{Cell, Inserter};

    const ENTRY: &[(&str, pgrx::pg_sys::Oid)] = crate::catalog::store::ENTRY_COLUMNS;

    fn entry_row<'a>(node: i32, hash: &'a str, links: &'a [u8]) -> Vec<Cell<'a>> {
        vec![
            Cell::Int4(7),
            Cell::Int4(node),
            Cell::Int4(0),
            Cell::Int4(node + 1),
            Cell::Now,
            Cell::Null(pgrx::pg_sys::INT4OID),
            Cell::Bytea(hash.as_bytes()),
            Cell::Bytea(b"payload-hash"),
            Cell::Bytea(links),
            Cell::Text("{\"ops\":[]}"),
        ]
    }

    /// More rows than one batch: every row reads back as given, and every index finds it.
    #[pg_test]
    fn rows_read_back_as_given_and_are_indexed() {
        let mut rows = Inserter::open("dag_entries", ENTRY).unwrap();
        let hashes: Vec<String> = (0..2500).map(|i| format!("h{i}")).collect();
        for (i, h) in hashes.iter().enumerate() {
            let links = [(i % 256) as u8, 9];
            rows.push(&entry_row(i as i32, h, &links)).unwrap();
        }
        rows.finish();
        let count = |sql: &str| Spi::get_one::<i64>(sql).unwrap().unwrap();
        assert_eq!(count("SELECT count(*) FROM causal.dag_entries WHERE grp = 7"), 2500);
        // Through each of the three indexes.
        Spi::run("SET LOCAL enable_seqscan = off").unwrap();
        assert_eq!(count("SELECT node_id::int8 FROM causal.dag_entries WHERE grp = 7 AND hash = 'h1234'::bytea"), 1234);
        assert_eq!(count("SELECT node_id::int8 FROM causal.dag_entries WHERE grp = 7 AND node_id = 2499"), 2499);
        assert_eq!(
            count("SELECT node_id::int8 FROM causal.dag_entries WHERE grp = 7 AND chain = 0 AND seq = 1001"),
            1000
        );
        let row = Spi::get_one::<String>(
            "SELECT format('%s|%s|%s|%s|%s', payload, encode(links, 'hex'), encode(payload_hash, 'escape'), \
             author IS NULL, received_at = now()) FROM causal.dag_entries WHERE grp = 7 AND node_id = 1001",
        )
        .unwrap()
        .unwrap();
        assert_eq!(row, "{\"ops\":[]}|e909|payload-hash|t|t");
    }

    /// A catalog table with a column an upgrade dropped takes rows of its other columns: the
    /// dropped one stays NULL, and the rest read back in their places.
    #[pg_test]
    fn a_dropped_column_is_skipped() {
        Spi::run("ALTER TABLE causal.dag_entries ADD COLUMN gone text[], ADD COLUMN after_gone int").unwrap();
        Spi::run("ALTER TABLE causal.dag_entries DROP COLUMN after_gone").unwrap();
        Spi::run("ALTER TABLE causal.dag_entries DROP COLUMN gone").unwrap();
        let mut rows = Inserter::open("dag_entries", ENTRY).unwrap();
        for i in 0..3 {
            rows.push(&entry_row(i, &format!("d{i}"), &[i as u8, 5])).unwrap();
        }
        rows.finish();
        let row = Spi::get_one::<String>(
            "SELECT string_agg(format('%s|%s|%s', encode(hash, 'escape'), encode(links, 'hex'), received_at = now()), ' ' ORDER BY node_id) \
             FROM causal.dag_entries WHERE grp = 7",
        )
        .unwrap()
        .unwrap();
        assert_eq!(row, "d0|0005|t d1|0105|t d2|0205|t");
        // A row of the wrong length is refused, not stored.
        let mut rows = Inserter::open("dag_entries", ENTRY).unwrap();
        assert!(rows.push(&entry_row(9, "d9", &[])[..4]).is_err());
        rows.finish();
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM causal.dag_entries WHERE grp = 7").unwrap(), Some(3));
    }

    #[pg_test(error = "duplicate key value violates unique constraint \"dag_entries_pkey\"")]
    fn a_duplicate_key_fails_as_an_insert_would() {
        let mut rows = Inserter::open("dag_entries", ENTRY).unwrap();
        rows.push(&entry_row(0, "one", &[])).unwrap();
        rows.push(&entry_row(0, "other", &[])).unwrap();
        rows.finish();
    }

    #[pg_test(error = "permission denied for table dag_entries")]
    fn a_role_without_the_insert_privilege_is_refused() {
        Spi::run("CREATE ROLE causal_direct_reader; SET ROLE causal_direct_reader").unwrap();
        let _ = Inserter::open("dag_entries", ENTRY);
    }

    /// A `jsonb` built from a JSON value is, byte for byte, the one `jsonb_in` makes of the
    /// value's text; text with a NUL character is refused, as `jsonb_in` refuses it.
    #[pg_test]
    fn jsonb_built_from_a_value_is_the_one_parsed_from_its_text() {
        let values = [
            r#"{"sku": "A-1", "name": "caf\u00e9 \"quoted\" \\ tab\t", "price": 12.50, "stock": 7, "ok": true, "gone": null}"#,
            r#"{"b": 1, "aa": 2, "a": 3, "": 4, "ab": [1, [2, {}], {"z": [], "y": -0}], "big": 123456789012345678901234567890}"#,
            r#"{"f": 1.0, "g": -2.5e-7, "h": 1e300, "i": -9223372036854775808, "j": 18446744073709551615, "k": 0.1}"#,
            r#"[]"#,
            r#"{}"#,
            r#"[1, "two", null, false, {"x": {"y": {"z": [[]]}}}]"#,
            r#""a lone string""#,
            r#"42"#,
            r#"null"#,
            r#"true"#,
        ];
        for text in values {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            let canonical = std::ffi::CString::new(value.to_string()).unwrap();
            unsafe {
                let built = super::super::jsonb_datum(&value).unwrap();
                let parsed = pgrx::fcinfo::direct_function_call_as_datum(
                    pg_sys::jsonb_in,
                    &[Some(pg_sys::Datum::from(canonical.as_ptr()))],
                )
                .unwrap();
                let bytes = |d: pg_sys::Datum| {
                    let p = d.cast_mut_ptr::<pg_sys::varlena>();
                    std::slice::from_raw_parts(p as *const u8, pgrx::varlena::varsize_any(p)).to_vec()
                };
                assert_eq!(bytes(built), bytes(parsed), "{text}");
                if let serde_json::Value::Object(m) = &value {
                    assert_eq!(bytes(Cell::JsonbObject(m).datum().unwrap().unwrap()), bytes(parsed), "{text}");
                }
            }
        }
        let with_nul = serde_json::json!({"a": "x\u{0}y"});
        assert!(unsafe { super::super::jsonb_datum(&with_nul) }.is_err());
        let nul_key = serde_json::json!({"a\u{0}": 1});
        assert!(unsafe { super::super::jsonb_datum(&nul_key) }.is_err());
    }

    fn relid(table: &str) -> pg_sys::Oid {
        Spi::get_one::<pg_sys::Oid>(&format!("SELECT '{table}'::regclass::oid")).unwrap().unwrap()
    }

    /// Inserts rows of texts into `table` directly; false if the table must be written
    /// through SQL.
    fn insert_texts(table: &str, columns: &[&str], rows: &[Vec<Option<&str>>]) -> bool {
        let Some((mut inserter, order)) = Inserter::open_user_table(relid(table), columns) else { return false };
        for row in rows {
            let cells: Vec<Cell> = order
                .iter()
                .map(|i| i.and_then(|i| row[i]).map_or(Cell::Null(pg_sys::InvalidOid), Cell::Input))
                .collect();
            inserter.push(&cells).unwrap();
        }
        inserter.finish();
        true
    }

    /// Rows written into a user table directly read back as an INSERT of the same texts cast
    /// to the column types stores them, in a table with a dropped column, and are indexed.
    #[pg_test]
    fn user_table_rows_are_the_ones_an_insert_of_their_texts_stores() {
        let columns = "id int PRIMARY KEY, gone int, name text NOT NULL, price numeric(10,2) CHECK (price >= 0), n bigint, \
             s smallint, f float8, r real, ok boolean, d date, ts timestamp(3), tz timestamptz, u uuid, j jsonb, v varchar";
        Spi::run(&format!(
            "CREATE TABLE direct_t ({columns}); CREATE TABLE sql_t ({columns}); \
             ALTER TABLE direct_t DROP COLUMN gone; ALTER TABLE sql_t DROP COLUMN gone; CREATE INDEX ON direct_t (name)"
        ))
        .unwrap();
        let names = ["id", "name", "price", "n", "s", "f", "r", "ok", "d", "ts", "tz", "u", "j", "v"];
        let rows: Vec<Vec<Option<&str>>> = vec![
            vec![
                Some("1"),
                Some("café"),
                Some("12.345"),
                Some("9007199254740993"),
                Some("-7"),
                Some("1.5e300"),
                Some("0.1"),
                Some("true"),
                Some("2026-11-22"),
                Some("2026-11-22 10:11:12.34567"),
                Some("2026-11-22T10:11:12+02:00"),
                Some("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
                Some(r#"{"b": [1, 2.50], "a": null}"#),
                Some("x"),
            ],
            vec![
                Some("2"),
                Some(""),
                None,
                None,
                None,
                Some("NaN"),
                Some("-Infinity"),
                Some("f"),
                None,
                None,
                None,
                None,
                Some("[]"),
                None,
            ],
        ];
        assert!(insert_texts("direct_t", &names, &rows));
        for row in &rows {
            let values: Vec<String> =
                row.iter().map(|v| v.map_or("NULL".to_string(), |t| format!("'{}'", t.replace('\'', "''")))).collect();
            Spi::run(&format!("INSERT INTO sql_t ({}) VALUES ({})", names.join(", "), values.join(", "))).unwrap();
        }
        let differ = Spi::get_one::<i64>(
            "SELECT count(*) FROM ((TABLE direct_t EXCEPT TABLE sql_t) UNION ALL (TABLE sql_t EXCEPT TABLE direct_t)) x",
        );
        assert_eq!(differ.unwrap(), Some(0));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM direct_t WHERE name = 'café'").unwrap(), Some(1));
        assert_eq!(
            Spi::get_one::<String>("SELECT price::text FROM direct_t WHERE id = 1").unwrap().as_deref(),
            Some("12.35")
        );
    }

    /// What an INSERT refuses is refused with its error: a CHECK, NOT NULL, a duplicate key,
    /// a value the type does not take.
    #[pg_test]
    fn user_table_rows_are_checked_as_an_insert_checks_them() {
        Spi::run("CREATE TABLE c (id int PRIMARY KEY, lo int NOT NULL, hi int, CONSTRAINT lo_le_hi CHECK (lo <= hi))")
            .unwrap();
        let cols = ["id", "lo", "hi"];
        // Each attempt in a subtransaction, rolled back when it fails (as replay's are).
        let attempt = |row: Vec<Option<&'static str>>| unsafe {
            let (context, owner) = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
            pg_sys::BeginInternalSubTransaction(std::ptr::null());
            pg_sys::MemoryContextSwitchTo(context);
            let failed = PgTryBuilder::new(|| {
                insert_texts("c", &cols, std::slice::from_ref(&row));
                None
            })
            .catch_others(|e| match e {
                pgrx::pg_sys::panic::CaughtError::PostgresError(r) => {
                    Some((r.sql_error_code(), r.message().to_string()))
                }
                _ => Some((PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, String::new())),
            })
            .execute();
            if failed.is_none() {
                pg_sys::ReleaseCurrentSubTransaction();
            } else {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            failed
        };
        let (code, message) = attempt(vec![Some("1"), Some("5"), Some("3")]).unwrap();
        assert_eq!(code, PgSqlErrorCode::ERRCODE_CHECK_VIOLATION);
        assert!(message.contains("lo_le_hi"), "{message}");
        let (code, _) = attempt(vec![Some("1"), None, Some("3")]).unwrap();
        assert_eq!(code, PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION);
        let (code, _) = attempt(vec![Some("one"), Some("1"), Some("3")]).unwrap();
        assert_eq!(code, PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION);
        assert!(attempt(vec![Some("1"), Some("1"), Some("3")]).is_none());
        let (code, _) = attempt(vec![Some("1"), Some("2"), Some("3")]).unwrap();
        assert_eq!(code, PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION);
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM c").unwrap(), Some(1));
    }

    /// Tables an INSERT would write differently, or do more for, are left to SQL.
    #[pg_test]
    fn user_tables_that_need_an_insert_are_not_written_directly() {
        Spi::run(
            "CREATE TABLE plain (id int PRIMARY KEY, v text); \
             CREATE TABLE fk (id int PRIMARY KEY, p int REFERENCES plain); \
             CREATE TABLE extra (id int PRIMARY KEY, v text, added int DEFAULT 7); \
             CREATE TABLE gen (id int PRIMARY KEY, v text, g int GENERATED ALWAYS AS (id * 2) STORED); \
             CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text); \
             CREATE TABLE short (id int PRIMARY KEY, v varchar(3)); \
             CREATE TABLE bin (id int PRIMARY KEY, v bytea); \
             CREATE TABLE deferred (id int PRIMARY KEY, v text UNIQUE DEFERRABLE INITIALLY DEFERRED); \
             CREATE TABLE parts (id int PRIMARY KEY, v text) PARTITION BY RANGE (id); \
             CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (100); \
             CREATE TABLE trig (id int PRIMARY KEY, v text); \
             CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$; \
             CREATE TRIGGER t BEFORE INSERT ON trig FOR EACH ROW EXECUTE FUNCTION noop(); \
             CREATE TABLE trig_r (LIKE trig); CREATE TRIGGER t BEFORE INSERT ON trig_r FOR EACH ROW EXECUTE FUNCTION noop(); \
             ALTER TABLE trig_r ENABLE REPLICA TRIGGER t",
        )
        .unwrap();
        let row = vec![vec![Some("1"), Some("x")]];
        // Triggers that do not fire for replicas (foreign keys' checks, plain user triggers) do
        // not stand in the way, as they do not under replay's replica role.
        for direct in ["plain", "fk", "trig"] {
            let cols: &[&str] = if direct == "fk" { &["id", "p"] } else { &["id", "v"] };
            assert!(
                insert_texts(direct, cols, &[vec![Some("1"), if direct == "fk" { Some("1") } else { Some("x") }]]),
                "{direct}"
            );
        }
        for by_sql in ["extra", "gen", "ident", "short", "bin", "deferred", "parts", "parts_1", "trig_r"] {
            assert!(!insert_texts(by_sql, &["id", "v"], &row), "{by_sql}");
        }
        assert!(!insert_texts("plain", &["id", "v", "missing"], &row));
    }

    #[pg_test]
    fn values_that_do_not_fit_the_columns_are_refused() {
        // Columns out of order.
        let mut swapped = ENTRY.to_vec();
        swapped.swap(0, 1);
        let Err(err) = Inserter::open("dag_entries", &swapped) else { panic!("refused") };
        assert!(err.to_string().contains("causal.dag_entries"), "{err}");
        // A value of the wrong type.
        let mut rows = Inserter::open("dag_entries", ENTRY).unwrap();
        let mut row = entry_row(0, "h", &[]);
        row[1] = Cell::Text("not a number");
        let err = rows.push(&row).expect_err("refused");
        assert!(err.to_string().contains("node_id"), "{err}");
        rows.finish();
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM causal.dag_entries WHERE grp = 7").unwrap(), Some(0));
    }

    /// A locked row is updated in place; a tid that is no longer the newest version is
    /// refused (the caller falls back to SQL), and so is a column that is not there.
    #[pg_test]
    fn a_locked_row_is_updated_in_place_once_per_version() {
        Spi::run("INSERT INTO causal.group_defs (group_id, name, hash_algorithm) VALUES ('g', 'g', 'blake3')").unwrap();
        let tid = Spi::get_one::<pgrx::pg_sys::ItemPointerData>(
            "SELECT ctid FROM causal.group_defs WHERE group_id = 'g' FOR UPDATE",
        )
        .unwrap()
        .unwrap();
        let lens = [3, 4];
        let new = super::super::update_locked_row(
            "group_defs",
            tid,
            &[("entry_count", Cell::Int4(7)), ("chain_lens", Cell::Int4Array(&lens))],
        )
        .unwrap()
        .expect("the newest version");
        let row = Spi::get_one_with_args::<String>(
            "SELECT format('%s|%s|%s|%s', entry_count, chain_lens, name, ctid = $1) FROM causal.group_defs WHERE group_id = 'g'",
            &[new.into()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(row, "7|{3,4}|g|t");
        // The old version is not the newest any more.
        let again = super::super::update_locked_row("group_defs", tid, &[("entry_count", Cell::Int4(8))]).unwrap();
        assert!(again.is_none());
        let err =
            super::super::update_locked_row("group_defs", new, &[("nothing", Cell::Int4(8))]).expect_err("refused");
        assert!(err.to_string().contains("no column nothing"), "{err}");
        let err = super::super::update_locked_row("group_defs", new, &[("grp", Cell::Int4(8))]).expect_err("refused");
        assert!(err.to_string().contains("column grp is indexed"), "{err}");
        assert_eq!(
            Spi::get_one::<i32>("SELECT entry_count FROM causal.group_defs WHERE group_id = 'g'").unwrap(),
            Some(7)
        );
    }
}
