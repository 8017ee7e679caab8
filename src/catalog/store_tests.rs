//! The `#[pg_test]`s of `catalog/store.rs`.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use causal_core::entry::{meta, Position};
    use causal_core::{Dag, HashAlgorithm, MemStore, MetaFilter};

    use super::super::SpiStore;

    /// 20,000 entry rows of group number 1, node ids 0 to 19999, hashes the SHA-256 of 'h0' to
    /// 'h19999', in a table without statistics.
    fn fill_group_one() {
        Spi::run(
            "INSERT INTO causal.dag_entries (grp, node_id, hash, payload, payload_hash, chain, seq, links) \
             SELECT 1, i, sha256(convert_to('h' || i, 'UTF8')), '{}', 'p', 0, i, '\\x0000' FROM generate_series(0, 19999) i",
        )
        .unwrap();
    }

    /// A lookup by hash is planned on the hash index alone, even as a generic plan over a
    /// table without statistics, where the group's primary-key range looks selective (once
    /// ANDed in, every lookup read all of it).
    #[pg_test]
    fn a_lookup_by_hash_uses_the_hash_index_alone() {
        fill_group_one();
        let h77 = "encode(sha256('h77'::bytea), 'base64')";
        let plan = crate::testing::generic_plan(
            "by_hash",
            "int, text",
            &super::super::node_id_by_hash_sql(),
            &format!("1, {h77}"),
        );
        assert!(plan.contains("dag_entries_hash") && !plan.contains("BitmapAnd"), "{plan}");
        assert_eq!(Spi::get_one::<i32>(&format!("EXECUTE by_hash(1, {h77})")).unwrap(), Some(77));
        // Text that is not a hash finds nothing.
        assert!(!matches!(Spi::get_one::<i32>("EXECUTE by_hash(1, 'not a hash')"), Ok(Some(_))));
        Spi::run("DEALLOCATE by_hash").unwrap();
    }

    /// A group's node cache outlives its stores, but not beyond a bound: a store made when
    /// the cache holds more nodes than that keeps only the newest half.
    #[pg_test]
    fn the_node_cache_stays_bounded_across_stores() {
        Spi::run("INSERT INTO causal.group_defs (group_id, name, hash_algorithm) VALUES ('g', 'g', 'sha-256')")
            .unwrap();
        let num = Spi::get_one::<i32>("SELECT grp FROM causal.group_defs WHERE group_id = 'g'").unwrap().unwrap();
        let max = super::super::NODE_CACHE_MAX;
        let mut dag = Dag::new(SpiStore::new("g", num), HashAlgorithm::Sha256);
        dag.store().defer_state_writes();
        let m = meta([("tag", vec!["plain"])]);
        let mut prev = Position::new();
        for i in 0..max + 10 {
            let e = dag.append(serde_json::json!({ "n": i }), m.clone(), prev).unwrap();
            prev = [e.hash].into();
        }
        dag.store().write_state().unwrap();
        assert_eq!(dag.store().cached_nodes(), max + 10);
        // The next store keeps the newest half.
        let next = Dag::new(SpiStore::new("g", num), HashAlgorithm::Sha256);
        assert_eq!(next.store().cached_nodes(), max / 2 + 1);
        assert_eq!(next.frontier().unwrap(), prev);
        // Nothing is lost: the oldest node is read back from the catalog.
        let first = next.walk_back(&[*prev.iter().next().unwrap()], &[], usize::MAX).unwrap();
        assert_eq!(first.hashes.len(), max + 10);
    }

    /// Nodes read by id are found through the primary key, also in a generic plan made over a
    /// table without statistics.
    #[pg_test]
    fn nodes_by_id_are_read_through_the_primary_key() {
        fill_group_one();
        let plan =
            crate::testing::generic_plan("by_ids", "int, int[]", &super::super::nodes_by_ids_sql(true), "1, '{7, 77}'");
        assert!(plan.contains("dag_entries_pkey") && !plan.contains("Seq Scan on dag_entries"), "{plan}");
        Spi::run("DEALLOCATE by_ids").unwrap();
        let sql = super::super::nodes_by_ids_sql(true).replace("$1", "1").replace("$2", "'{7, 77, 20000}'");
        let ids =
            Spi::get_one::<String>(&format!("SELECT string_agg(node_id::text, ',' ORDER BY node_id) FROM ({sql}) x"));
        assert_eq!(ids.unwrap().as_deref(), Some("7,77"));
    }

    /// The same pseudo-random DAG in memory and in the catalog answers every query alike.
    #[pg_test]
    fn spi_store_answers_like_the_memory_store() {
        Spi::run("INSERT INTO causal.group_defs (group_id, name, hash_algorithm) VALUES ('g', 'g', 'sha-256')")
            .unwrap();
        let alg = HashAlgorithm::Sha256;
        let mut mem = Dag::new(MemStore::new(), alg);
        let num = Spi::get_one::<i32>("SELECT grp FROM causal.group_defs WHERE group_id = 'g'").unwrap().unwrap();
        let mut spi = Dag::new(SpiStore::new("g", num), alg);
        let mut state: u64 = 0x9e3779b97f4a7c15;
        let mut rand = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut hashes = Vec::new();
        for i in 0..150 {
            let mut chosen = Position::new();
            for _ in 0..(1 + rand(3)) {
                if !hashes.is_empty() {
                    let k = hashes.len() - 1 - rand(hashes.len().min(12));
                    chosen.insert(hashes[k]);
                }
            }
            let prev = mem.minimal_cover(&chosen).unwrap();
            let tag = if i % 5 == 0 { "barrier" } else { "plain" };
            let m = meta([("tag", vec![tag])]);
            let a = mem.append(serde_json::json!({ "n": i }), m.clone(), prev.clone()).unwrap();
            let b = spi.append(serde_json::json!({ "n": i }), m, prev).unwrap();
            assert_eq!(a, b);
            hashes.push(a.hash);
        }
        assert_eq!(mem.frontier().unwrap(), spi.frontier().unwrap());
        let barrier = MetaFilter::tag("tag", "barrier");
        for _ in 0..30 {
            let p: Position = (0..1 + rand(3)).map(|_| hashes[rand(hashes.len())]).collect();
            let q: Position = (0..1 + rand(3)).map(|_| hashes[rand(hashes.len())]).collect();
            assert_eq!(mem.minimal_cover(&p).unwrap(), spi.minimal_cover(&p).unwrap());
            assert_eq!(mem.fork_position(&p, &q).unwrap(), spi.fork_position(&p, &q).unwrap());
            assert_eq!(
                mem.cover_with_filter(&p, &barrier, None).unwrap(),
                spi.cover_with_filter(&p, &barrier, None).unwrap()
            );
            assert_eq!(
                mem.concurrent_cover_with_filter(&p, &q, &barrier, None).unwrap(),
                spi.concurrent_cover_with_filter(&p, &q, &barrier, None).unwrap()
            );
        }
        // A fresh store (no cache) reads back the same entries.
        let fresh = Dag::new(SpiStore::new("g", num), alg);
        for h in hashes.iter().step_by(17) {
            assert_eq!(mem.entry(h).unwrap(), fresh.entry(h).unwrap());
        }
        // Header walks load chain ranges at once (`prefetch_chain`) from a cold cache, and
        // walk exactly as in memory, truncated or not.
        for max in [1, 7, 40, 1000] {
            super::super::clear_cache();
            let fresh = Dag::new(SpiStore::new("g", num), alg);
            let start = [hashes[hashes.len() - 1 - rand(5)]];
            let limits = [hashes[rand(hashes.len() / 2)]];
            let expected = mem.walk_back(&start, &limits, max).unwrap();
            assert_eq!(expected, fresh.walk_back(&start, &limits, max).unwrap());
            assert!(expected.complete || max < 150);
            super::super::clear_cache();
            let fresh = Dag::new(SpiStore::new("g", num), alg);
            assert_eq!(
                mem.walk_forward(&start, &limits, max).unwrap(),
                fresh.walk_forward(&start, &limits, max).unwrap()
            );
        }
    }

    /// A local commit's entry row is packed: its author numbered and cut from the payload, the
    /// fragments of its operation coded, no payload hash (its text's digest), predecessors and
    /// clock in a few bytes; `causal.entries` and the store read it back as it was hashed.
    #[pg_test]
    fn a_local_commit_is_stored_packed_and_read_back_as_hashed() {
        crate::testing::shop_with_products();
        crate::testing::local_commit(
            "shop",
            "INSERT INTO products VALUES ('A', 'Widget', 9.99)",
            r#"[{"op":"insert","table":"products","row":{"sku":"A","name":"Widget","price":"9.99"}}]"#,
        );
        let row = crate::testing::one(
            "SELECT format('%s|%s|%s|%s', a.key_id = k.key_id, e.payload_hash = '', octet_length(e.links), \
                    e.payload) \
             FROM causal.dag_entries e JOIN causal.entry_authors a USING (author), causal.identity_keys k \
             WHERE k.is_node ORDER BY e.node_id DESC LIMIT 1",
        );
        // The end is `"}]}`, or `"}],"signature":"` with the signature, each coded too.
        let stored = "t|t|4|\u{1}\"name\":\"Widget\",\"price\":\"9.99\",\"sku\":\"A\"\u{7}products";
        assert!(row == format!("{stored}\u{b}") || row.starts_with(&format!("{stored}\u{8}")), "{row:?}");
        let (payload, payload_hash) = Spi::get_two::<String, String>(
            "SELECT payload, payload_hash FROM causal.entries ORDER BY node_id DESC LIMIT 1",
        )
        .unwrap();
        let (payload, payload_hash) = (payload.unwrap(), payload_hash.unwrap());
        assert!(payload.starts_with("{\"author\":\"") && payload.contains(r#"{"op":"insert","row":{"name":"Widget""#));
        assert_eq!(HashAlgorithm::Blake3.digest(payload.as_bytes()).to_b64(), payload_hash);
        // The store gives the entry as hashed: its hashes verify.
        let group = crate::catalog::group::Group::find("shop").unwrap();
        let dag = group.dag();
        let head = *dag.frontier().unwrap().iter().next().unwrap();
        dag.entry(&head).unwrap().unwrap().verify_hashes(HashAlgorithm::Blake3).unwrap();
        assert_eq!(Spi::get_one::<bool>("SELECT causal.verify('shop')").unwrap(), Some(true));
    }
}
