//! The `#[pg_test]`s of `replay/mod.rs`.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use serde_json::{json, Value};

    use causal_core::schema::{check_value, ColumnType};

    /// Row metadata names entries by node id, a few bytes where a Base64 hash took 44
    /// characters. Metadata written by hash, as earlier versions did (with all the row's
    /// values), is still read: an update of such a row is placed, and its metadata is written
    /// again with node ids.
    #[pg_test]
    fn row_metadata_names_entries_by_node_id_and_still_reads_hashes() {
        crate::testing::shop_with_products();
        crate::testing::local_commit(
            "shop",
            "INSERT INTO products VALUES ('A', 'Widget', 9.99), ('B', 'Gadget', 1)",
            r#"[{"op":"insert","table":"products","row":{"sku":"A","name":"Widget","price":"9.99"}},
                {"op":"insert","table":"products","row":{"sku":"B","name":"Gadget","price":"1.00"}}]"#,
        );
        Spi::run("SELECT causal.catch_up()").unwrap();
        // Placing kept the new rows in a set of fresh rows: here they are row_meta rows.
        Spi::run(
            "INSERT INTO causal.row_meta (grp, table_name, key, vals, meta) \
             SELECT grp, table_name, key, vals, meta FROM causal.placed_rows",
        )
        .unwrap();
        let named_by = |key: &str, field: &str| {
            crate::testing::one(&format!(
                "SELECT jsonb_typeof(meta -> '{field}') || ' ' || coalesce((SELECT e.hash FROM causal.entries e \
                 WHERE e.grp = m.grp AND (e.node_id::text = meta ->> '{field}' OR e.hash = meta ->> '{field}')), '?') \
                 FROM causal.row_meta m WHERE key = '[\"{key}\"]'"
            ))
        };
        let inserter = crate::testing::one("SELECT hash FROM causal.entries ORDER BY node_id DESC LIMIT 1");
        assert_eq!(named_by("A", "i"), format!("number {inserter}"));
        // Row B as an earlier version wrote it: the inserting entry named by hash.
        Spi::run(
            "UPDATE causal.row_meta m SET meta = jsonb_build_object('i', e.hash), \
             vals = '{\"sku\": \"B\", \"name\": \"Gadget\", \"price\": \"1.00\"}' FROM causal.entries e \
             WHERE m.key = '[\"B\"]' AND e.grp = m.grp AND e.node_id = (m.meta ->> 'i')::int",
        )
        .unwrap();
        assert_eq!(named_by("B", "i"), format!("string {inserter}"));
        crate::testing::local_commit(
            "shop",
            "UPDATE products SET name = 'Gizmo' WHERE sku = 'B'",
            r#"[{"op":"update","table":"products","key":{"sku":"B"},"set":{"name":"Gizmo"},"unset":[]}]"#,
        );
        Spi::run("SELECT causal.catch_up()").unwrap();
        let updater = crate::testing::one("SELECT hash FROM causal.entries ORDER BY node_id DESC LIMIT 1");
        assert_eq!(named_by("B", "i"), format!("number {inserter}"));
        let writer = crate::testing::one(
            "SELECT e.hash FROM causal.row_meta m JOIN causal.entries e \
             ON e.grp = m.grp AND e.node_id = (m.meta -> 'w' ->> 'name')::int WHERE m.key = '[\"B\"]'",
        );
        assert_eq!(writer, updater);
        assert_eq!(crate::testing::one("SELECT name FROM products WHERE sku = 'B'"), "Gizmo");
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(true));
    }

    /// The shop with three single-row local commits placed (products A, B and C); returns how
    /// many `journal` rows there were before them.
    fn three_products_placed() -> String {
        crate::testing::shop_with_products();
        let before = crate::testing::one("SELECT count(*)::text FROM causal.journal");
        for sku in ["A", "B", "C"] {
            crate::testing::local_commit(
                "shop",
                &format!("INSERT INTO products VALUES ('{sku}', 'Widget', 1)"),
                &format!(
                    r#"[{{"op":"insert","table":"products","row":{{"sku":"{sku}","name":"Widget","price":"1.00"}}}}]"#
                ),
            );
        }
        Spi::run("SELECT causal.catch_up()").unwrap();
        before
    }

    /// An entry's order key read alone (its height) is the one its whole journal record gives,
    /// for every placed entry; an entry not placed has none.
    #[pg_test]
    fn an_order_key_read_alone_is_the_journal_records() {
        use causal_core::reconcile::ReplicaStore;
        three_products_placed();
        let group = crate::catalog::group::Group::find("shop").unwrap();
        let replica = super::super::SpiReplica::new(&group);
        let hashes: Vec<String> = Spi::connect(|c| {
            c.select("SELECT hash FROM causal.entries ORDER BY node_id", None, &[])
                .unwrap()
                .map(|r| r.get::<String>(1).unwrap().unwrap())
                .collect()
        });
        assert!(hashes.len() >= 4, "{hashes:?}");
        for h in &hashes {
            let h: causal_core::EntryHash = h.parse().unwrap();
            let whole = replica.journal(&h).unwrap().map(|j| j.order);
            assert!(whole.is_some(), "entry {h} is placed");
            assert_eq!(replica.order(&h).unwrap(), whole, "entry {h}");
        }
        let unknown = causal_core::EntryHash(causal_core::Hash([7; 32]));
        assert_eq!(replica.order(&unknown).unwrap(), None);
    }

    /// Local commits placed one after the other, each with all its rows new, keep their
    /// journal records as one run: no `journal` row each, and every reader (the engine's
    /// record, its order key, `causal.entry`) sees what the rows said. A commit that updates a
    /// row it did not insert gets a `journal` row and ends the run.
    #[pg_test]
    fn records_of_entries_placed_in_a_line_are_kept_as_a_run() {
        use causal_core::reconcile::ReplicaStore;
        let one = crate::testing::one;
        let rows_before = three_products_placed();
        assert_eq!(one("SELECT count(*)::text FROM causal.journal"), rows_before, "no journal row per commit");
        assert_eq!(one("SELECT count(*)::text FROM causal.journal_runs"), "1");
        assert_eq!(one("SELECT (last_node - first_node)::text FROM causal.journal_runs"), "2");
        let group = crate::catalog::group::Group::find("shop").unwrap();
        let replica = super::super::SpiReplica::new(&group);
        let last: causal_core::EntryHash =
            one("SELECT hash FROM causal.entries ORDER BY node_id DESC LIMIT 1").parse().unwrap();
        let record = replica.journal(&last).unwrap().expect("a run holds the last commit's record");
        assert!(record.verdict.is_ok());
        assert_eq!(record.undo.len(), 1, "its undo: the one row it inserted, new");
        assert!(record.undo[0].before.is_none());
        assert_eq!(replica.order(&last).unwrap(), Some(record.order));
        let height: i64 =
            one("SELECT max(first_height + last_node - first_node)::text FROM causal.journal_runs").parse().unwrap();
        assert_eq!(i64::from(record.order.height), height);
        let shown = one(&format!("SELECT causal.explain('{}')::text", last.to_b64()));
        assert!(shown.contains(&format!(r#""height": {height}"#)) && shown.contains(r#""status": "ok""#), "{shown}");
        // The engine's records from the run's first height on include all three.
        let first = causal_core::reconcile::OrderKey {
            height: record.order.height - 2,
            hash: causal_core::EntryHash(causal_core::Hash([0; 32])),
        };
        assert_eq!(replica.journal_from(&first).unwrap().len(), 3);
        // An update of a row placed before: a record with its row's prior state, as a row.
        crate::testing::local_commit(
            "shop",
            "UPDATE products SET name = 'Gizmo' WHERE sku = 'A'",
            r#"[{"op":"update","table":"products","key":{"sku":"A"},"set":{"name":"Gizmo"},"unset":[]}]"#,
        );
        Spi::run("SELECT causal.catch_up()").unwrap();
        assert_eq!(
            one("SELECT count(*)::text FROM causal.journal"),
            (rows_before.parse::<i64>().unwrap() + 1).to_string()
        );
        assert_eq!(one("SELECT count(*)::text FROM causal.journal_runs"), "1");
        assert_eq!(replica.journal_from(&first).unwrap().len(), 4);
    }

    /// `row_meta` keeps of a row's values only those rows are looked up by (UNIQUE and
    /// foreign-key columns); every read derives the rest from the history. An update placed on
    /// a stored row merges into the derived values, and the view at the frontier, the user
    /// table and `causal.verify` agree. The rows of a table a rule scans keep all their values.
    /// A kept value that differs from the history's is flagged.
    #[pg_test]
    fn row_meta_keeps_lookup_values_only_and_reads_derive_the_rest() {
        crate::testing::capture_slot();
        Spi::run(
            "SELECT causal.create_group('shop'); \
             CREATE TABLE items (id int PRIMARY KEY, code text UNIQUE, note text, qty int NOT NULL); \
             SELECT causal.replicate('shop', 'items'); \
             CREATE TABLE grants (id int PRIMARY KEY, who text); SELECT causal.replicate('shop', 'grants'); \
             SELECT causal.allow('items', 'delete', 'exists(grants where grants.who = $author)');",
        )
        .unwrap();
        crate::testing::local_commit(
            "shop",
            "INSERT INTO items VALUES (1, 'a', 'first', 5), (2, 'b', NULL, 7)",
            r#"[{"op":"insert","table":"items","row":{"id":1,"code":"a","note":"first","qty":5}},
                {"op":"insert","table":"items","row":{"id":2,"code":"b","qty":7}}]"#,
        );
        Spi::run("SELECT causal.catch_up()").unwrap();
        let kept =
            |key: &str| crate::testing::one(&format!("SELECT vals::text FROM causal.row_meta WHERE key = '[{key}]'"));
        assert_eq!(kept("1"), r#"{"code": "a"}"#);
        assert_eq!(kept("2"), r#"{"code": "b"}"#);
        // An entry whose rows are all new keeps no list of them for undoing it: a run of
        // records holds its record (`journal_runs`).
        let last_undo = || {
            crate::testing::one("SELECT undo FROM causal.journal WHERE undo IS NOT NULL ORDER BY node_id DESC LIMIT 1")
        };
        assert_eq!(
            crate::testing::one(
                "SELECT (max(last_node) = (SELECT max(node_id) FROM causal.dag_entries))::text FROM causal.journal_runs"
            ),
            "true"
        );
        crate::testing::local_commit(
            "shop",
            "UPDATE items SET qty = 6, note = 'changed' WHERE id = 1",
            r#"[{"op":"update","table":"items","key":{"id":1},"set":{"qty":6,"note":"changed"},"unset":[]}]"#,
        );
        crate::testing::local_commit(
            "shop",
            "UPDATE items SET code = 'c' WHERE id = 2",
            r#"[{"op":"update","table":"items","key":{"id":2},"set":{"code":"c"},"unset":[]}]"#,
        );
        Spi::run("SELECT causal.catch_up()").unwrap();
        assert!(last_undo().starts_with(r#"[{"b":{"m":"#), "{}", last_undo());
        assert_eq!(kept("1"), r#"{"code": "a"}"#);
        assert_eq!(kept("2"), r#"{"code": "c"}"#);
        let snapshot = crate::testing::one(
            "SELECT string_agg(s::text, ' ' ORDER BY s ->> 'id') FROM causal.snapshot('items'::regclass) s",
        );
        assert_eq!(snapshot, r#"{"id": 1, "qty": 6, "code": "a", "note": "changed"} {"id": 2, "qty": 7, "code": "c"}"#);
        assert_eq!(crate::testing::one("SELECT note || qty FROM items WHERE id = 1"), "changed6");
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(true));
        // The unique value moved from 'b' to 'c': a row taking 'b' now collides with nothing.
        crate::testing::local_commit(
            "shop",
            "INSERT INTO items VALUES (3, 'b', NULL, 1)",
            r#"[{"op":"insert","table":"items","row":{"id":3,"code":"b","qty":1}}]"#,
        );
        Spi::run("SELECT causal.catch_up()").unwrap();
        assert_eq!(crate::testing::one("SELECT count(*)::text FROM causal.journal WHERE status = 'cancelled'"), "0");
        // The rows of the table the rule scans keep all their values.
        crate::testing::local_commit(
            "shop",
            "INSERT INTO grants VALUES (11, 'after')",
            r#"[{"op":"insert","table":"grants","row":{"id":11,"who":"after"}}]"#,
        );
        Spi::run("SELECT causal.catch_up()").unwrap();
        let grants = crate::testing::one(
            "SELECT key || vals::text || (meta ? 'p')::text FROM causal.row_meta WHERE table_name = 'grants'",
        );
        assert_eq!(grants, r#"[11]{"id": 11, "who": "after"}false"#);
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(true));
        Spi::run("UPDATE causal.row_meta SET vals = '{\"code\": \"z\"}' WHERE key = '[1]'").unwrap();
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(false));
    }

    /// A row that one entry inserted and no entry wrote since has no `row_meta` row: placing
    /// keeps it in a set of fresh rows (per run and table: sorted keys and their inserters'
    /// node ids). Reads find it there. A new key within a set's bounds, and a row an entry
    /// writes again, get `row_meta` rows, which come first; `causal.placed_rows`, the view at
    /// the frontier, the user table and `causal.verify` agree throughout.
    #[pg_test]
    fn fresh_rows_are_kept_in_sets_and_row_meta_rows_come_first() {
        crate::testing::shop_with_products();
        let one = crate::testing::one;
        let insert = |sku: &str, name: &str| {
            crate::testing::local_commit(
                "shop",
                &format!("INSERT INTO products VALUES ('{sku}', '{name}', 1)"),
                &format!(
                    r#"[{{"op":"insert","table":"products","row":{{"sku":"{sku}","name":"{name}","price":"1.00"}}}}]"#
                ),
            );
        };
        insert("A", "a");
        insert("C", "c");
        Spi::run("SELECT causal.catch_up()").unwrap();
        let stored = || {
            one("SELECT (SELECT count(*) FROM causal.row_meta) || ' ' ||                  (SELECT coalesce(string_agg(array_to_string(keys, ','), ' ' ORDER BY first_key), '-') FROM causal.fresh_rows)")
        };
        assert_eq!(stored(), r#"0 ["A"],["C"]"#);
        let inserter = |sku: &str| {
            one(&format!(
                "SELECT e.payload::jsonb -> 'ops' -> 0 -> 'row' ->> 'name' FROM causal.placed_rows p                  JOIN causal.entries e ON e.grp = p.grp AND e.node_id = (p.meta ->> 'i')::int                  WHERE p.key = '[\"{sku}\"]'"
            ))
        };
        assert_eq!(inserter("C"), "c");
        // B falls within the set's bounds: a row_meta row. D starts a set of its own.
        insert("B", "b");
        Spi::run("SELECT causal.catch_up()").unwrap();
        insert("D", "d");
        Spi::run("SELECT causal.catch_up()").unwrap();
        assert_eq!(stored(), r#"1 ["A"],["C"] ["D"]"#);
        assert_eq!(
            one("SELECT string_agg(key, ' ' ORDER BY key) FROM causal.placed_rows"),
            r#"["A"] ["B"] ["C"] ["D"]"#
        );
        // An update of a row in a set is read from the set and gets a row_meta row.
        crate::testing::local_commit(
            "shop",
            "UPDATE products SET name = 'changed' WHERE sku = 'C'",
            r#"[{"op":"update","table":"products","key":{"sku":"C"},"set":{"name":"changed"},"unset":[]}]"#,
        );
        Spi::run("SELECT causal.catch_up()").unwrap();
        assert_eq!(stored(), r#"2 ["A"],["C"] ["D"]"#);
        assert_eq!(
            one("SELECT meta ? 'w' || ' ' || count(*) OVER () FROM causal.placed_rows WHERE key = '[\"C\"]'"),
            "true 1"
        );
        let snapshot = one(
            "SELECT string_agg(s ->> 'sku' || '=' || (s ->> 'name'), ' ' ORDER BY s ->> 'sku')              FROM causal.snapshot('products'::regclass) s",
        );
        assert_eq!(snapshot, "A=a B=b C=changed D=d");
        assert_eq!(one("SELECT string_agg(sku || '=' || name, ' ' ORDER BY sku) FROM products"), snapshot);
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(true));
        // A set naming an entry that did not insert its row is flagged.
        let set_a = "WHERE first_key = '[\"A\"]'";
        Spi::run(&format!("CREATE TEMP TABLE saved AS SELECT nodes FROM causal.fresh_rows {set_a}")).unwrap();
        Spi::run(&format!("UPDATE causal.fresh_rows SET nodes = ARRAY[nodes[2], nodes[1]] {set_a}")).unwrap();
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(false));
        // A set that does not read, or overlaps the one before it, is reported, not an error.
        Spi::run(&format!("UPDATE causal.fresh_rows SET nodes = nodes[1:1] {set_a}")).unwrap();
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(false));
        Spi::run(&format!("UPDATE causal.fresh_rows SET nodes = (SELECT nodes FROM saved) {set_a}")).unwrap();
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(true));
        Spi::run("UPDATE causal.fresh_rows SET first_key = '[\"B\"]' WHERE first_key = '[\"D\"]'").unwrap();
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(false));
    }

    /// The statements that find the set of fresh rows that may hold a key are probes of
    /// `fresh_rows_first`, as generic plans too, and find the right set.
    #[pg_test]
    fn fresh_row_sets_are_found_by_probes_of_their_index() {
        Spi::run(
            "INSERT INTO causal.fresh_rows SELECT 1, 't', '[' || i * 10 || ']', '[' || (i * 10 + 5) || ']', \
             ARRAY['[' || i * 10 || ']', '[' || (i * 10 + 5) || ']'], ARRAY[i, i] FROM generate_series(1, 5000) i",
        )
        .unwrap();
        // (statement, the key asked for, the column of the set's first key, the set found)
        let statements = [
            ("candidate_sets", super::super::fresh_rows::CANDIDATE_SETS, "[1003]", 2, "[1000]"),
            ("sets_by_first", super::super::fresh_rows::SETS_BY_FIRST, "[1000]", 1, "[1000]"),
        ];
        for (name, sql, key, column, first) in statements {
            Spi::run("SET LOCAL enable_bitmapscan = off").unwrap();
            let args = format!("1, 't', ARRAY['{key}']");
            let plan = crate::testing::generic_plan(name, "int, text, text[]", sql, &args);
            assert!(plan.contains("fresh_rows_first") && !plan.contains("Seq Scan"), "{name}: {plan}");
            let found = Spi::connect(|c| {
                let rows = c.select(&format!("EXECUTE {name}({args})"), None, &[])?;
                rows.map(|r| r.get::<String>(column)).collect::<Result<Vec<_>, _>>()
            })
            .unwrap();
            assert_eq!(found, vec![Some(first.to_string())], "{name}");
            Spi::run(&format!("DEALLOCATE {name}")).unwrap();
        }
    }

    /// Every value the validator takes for a column, Postgres takes in replay's cast: a value
    /// it would refuse never reaches replay (where it would fail the whole import).
    #[pg_test]
    fn values_the_validator_takes_are_ones_postgres_takes() {
        use ColumnType as T;
        let numeric = |p, s| T::Numeric { precision: Some(p), scale: Some(s) };
        let candidates: Vec<(ColumnType, Vec<Value>)> = vec![
            (T::Text, vec![json!("plain"), json!("caf\u{e9}"), json!("nul \u{0} inside")]),
            (
                T::Jsonb,
                vec![
                    json!("{\"a\": [1, 2.5, null]}"),
                    json!("not json"),
                    json!("{\"a\": \"\\u0000\"}"),
                    json!("\"\\u00e9\""),
                    json!("[".repeat(200) + &"]".repeat(200)),
                ],
            ),
            (
                T::Uuid,
                vec![
                    json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                    json!("------------------------------------"),
                    json!("a0eebc999c0b4ef8bb6d6bb9bd380a11----"),
                ],
            ),
            (
                T::Date,
                vec![
                    json!("2024-02-29"),
                    json!("2026-02-29"),
                    json!("2026-13-01"),
                    json!("0001-12-31 BC"),
                    json!("4714-11-24 BC"),
                    json!("4714-11-23 BC"),
                    json!("5874897-12-31"),
                    json!("5874898-01-01"),
                    json!("infinity"),
                ],
            ),
            (
                T::Timestamp,
                vec![
                    json!("2026-01-01T00:00:00.000000"),
                    json!("2026-01-01T24:00:00.000000"),
                    json!("294276-12-31T23:59:59.999999"),
                    json!("294277-01-01T00:00:00.000000"),
                    json!("0044-03-15T12:00:00.000000 BC"),
                ],
            ),
            (T::Timestamptz, vec![json!("2024-02-29T23:59:59.999999Z"), json!("2026-02-30T00:00:00.000000Z")]),
            (T::Float4, vec![json!(3.4e38), json!(1e39), json!(1e-40), json!(1e-50), json!("NaN")]),
            (
                numeric(5, 2),
                vec![
                    json!("999.994"),
                    json!("999.995"),
                    json!("1000"),
                    json!("-999.99"),
                    json!("Infinity"),
                    json!("NaN"),
                ],
            ),
            (numeric(2, 5), vec![json!("0.00012"), json!("0.0012")]),
            (T::Int4, vec![json!(2147483647), json!(2147483648i64)]),
        ];
        let (mut taken, mut refused) = (0, 0);
        for (ty, values) in candidates {
            for v in values {
                let text = match &v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                // The statement a DO block runs; text with NUL cannot be sent at all.
                let postgres = if text.contains('\0') {
                    "refused".to_string()
                } else {
                    crate::testing::outcome(&format!("PERFORM $v${text}$v$::{}", ty.sql_name()))
                };
                let ours = check_value(&ty, &v);
                assert!(ours.is_err() || postgres == "ok", "{ty:?} {v}: taken here, Postgres says {postgres}");
                if ours.is_ok() {
                    taken += 1;
                } else {
                    refused += 1;
                }
            }
        }
        assert!(taken >= 15 && refused >= 15, "{taken} taken, {refused} refused");
    }

    /// The statements on `row_meta` rows by key are probes of the key index `row_meta_key`,
    /// even as generic plans over a table without statistics that a partial lookup index
    /// covers whole (which makes the group and table look selective), and they touch exactly
    /// their rows.
    #[pg_test]
    fn row_meta_statements_by_key_probe_the_key_index() {
        Spi::run(
            "INSERT INTO causal.row_meta (grp, table_name, key, vals, meta) \
             SELECT 1, 't', '[' || i || ']', jsonb_build_object('id', i, 'u', i), '{}' FROM generate_series(0, 19999) i; \
             CREATE INDEX row_meta_lookup_test ON causal.row_meta ((vals -> 'u')) WHERE grp = 1 AND table_name = 't'",
        )
        .unwrap();
        let statements = [
            ("rows_by_keys", super::super::ROWS_BY_KEYS, "int, text, text[]", "1, 't', ARRAY['[5]', '[77]', '[x]']"),
            ("row_by_key", super::super::ROW_BY_KEY, "int, text, text", "1, 't', '[77]'"),
            (
                "update_rows",
                super::super::UPDATE_ROWS,
                "int, text[], text[], text[], text[]",
                "1, ARRAY['t'], ARRAY['[9]'], ARRAY['{\"id\": 9, \"u\": 90}'], ARRAY['{}']",
            ),
            (
                "delete_rows",
                super::super::DELETE_ROWS,
                "int, text[], text[]",
                "1, ARRAY['t', 't'], ARRAY['[5]', '[77]']",
            ),
        ];
        // As `probing_by_key` runs them (the single-key read is planned with bitmap scans on).
        for (name, sql, types, args) in statements {
            let bitmaps = if name == "row_by_key" { "on" } else { "off" };
            Spi::run(&format!("SET LOCAL enable_bitmapscan = {bitmaps}")).unwrap();
            let plan = crate::testing::generic_plan(name, types, sql, args);
            assert!(
                plan.contains("row_meta_key") && !plan.contains("Seq Scan") && !plan.contains("BitmapAnd"),
                "{name}: {plan}"
            );
            if name.ends_with("_rows") {
                assert!(plan.contains("Tid Scan"), "{name}: {plan}");
            }
            if bitmaps == "off" {
                assert!(plan.contains("\"Index Scan\"") && !plan.contains("Bitmap"), "{name}: {plan}");
            }
        }
        let count = |sql: &str| Spi::get_one::<i64>(sql).unwrap().unwrap_or(-1);
        let found = Spi::connect(|c| {
            c.select("EXECUTE rows_by_keys(1, 't', ARRAY['[5]', '[77]', '[x]'])", None, &[]).map(|t| t.len())
        });
        assert_eq!(found.unwrap(), 2);
        Spi::run("EXECUTE update_rows(1, ARRAY['t'], ARRAY['[9]'], ARRAY['{\"id\": 9, \"u\": 90}'], ARRAY['{}'])")
            .unwrap();
        assert_eq!(count("SELECT (vals ->> 'u')::int8 FROM causal.row_meta WHERE key = '[9]'"), 90);
        assert_eq!(count("SELECT count(*) FROM causal.row_meta WHERE (vals ->> 'u')::int = 9"), 0);
        Spi::run("EXECUTE delete_rows(1, ARRAY['t', 't'], ARRAY['[5]', '[77]'])").unwrap();
        assert_eq!(count("SELECT count(*) FROM causal.row_meta"), 19998);
        assert_eq!(count("SELECT count(*) FROM causal.row_meta WHERE key IN ('[5]', '[77]')"), 0);
        for (name, ..) in statements {
            Spi::run(&format!("DEALLOCATE {name}")).unwrap();
        }
    }
}
