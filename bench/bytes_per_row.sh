# Sourced by bench/capture.sh and bench/bytes.sh: bytes_per_row measures, in the cluster
# bench_psql reaches, the bytes on disk per row of a plain and a replicated table after the same
# 20k single-row and 50k bulk rows went into each, and where schema causal's growth went.
bytes_per_row() {
    # Bytes per row: the same rows into fresh tables of a database of their own, so that what
    # earlier runs left in schema causal does not count (a hash index grows by doubling its
    # buckets: how much of that falls into a window depends on what came before). Schema causal
    # is measured before and after.
    bench_psql -c "CREATE DATABASE sizes" >/dev/null
    sizes_psql() { as_postgres psql -X -q -h "$BENCH_NODE/sock" -p "$BENCH_PORT" -U postgres -d sizes -v ON_ERROR_STOP=1 "$@"; }
    sizes_value() { sizes_psql -t -A -c "$1"; }
    sizes_psql -c "CREATE EXTENSION pg_causal; SELECT causal.create_group('sizes');
              CREATE TABLE size_plain (id bigserial PRIMARY KEY, payload text NOT NULL, n integer);
              CREATE TABLE size_replicated (id bigserial PRIMARY KEY, payload text NOT NULL, n integer);
              SELECT causal.replicate('sizes', 'size_replicated');" >/dev/null
    causal_bytes() { sizes_value "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c WHERE c.relnamespace = 'causal'::regnamespace AND c.relkind IN ('r', 'm')"; }
    before=$(causal_bytes)
    # Each relation of schema causal (heap with its TOAST, and each index) before, for the split below.
    sizes_psql -c "CREATE TABLE size_before AS SELECT c.relname, pg_table_size(c.oid) AS bytes FROM pg_class c
        WHERE c.relnamespace = 'causal'::regnamespace AND c.relkind IN ('r', 'i')" >/dev/null
    for t in plain replicated; do
        sed "s/INTO $t /INTO size_$t /" "$ROOT/bench/single_$t.sql" >"$DIR/size_single_$t.sql"
        sed "s/INTO $t /INTO size_$t /" "$ROOT/bench/bulk_$t.sql" >"$DIR/size_bulk_$t.sql"
        as_postgres "$PG_BIN/pgbench" -n -h "$DIR/node/sock" -p "$PORT" -U postgres -c 2 -j 2 -t 10000 -f "$DIR/size_single_$t.sql" sizes >/dev/null 2>&1
        as_postgres "$PG_BIN/pgbench" -n -h "$DIR/node/sock" -p "$PORT" -U postgres -c 2 -j 2 -t 25 -f "$DIR/size_bulk_$t.sql" sizes >/dev/null 2>&1
    done
    sizes_psql -c "SELECT causal.catch_up()" >/dev/null
    sizes_psql -c "VACUUM" >/dev/null
    after=$(causal_bytes)
    plain_bytes=$(sizes_value "SELECT pg_total_relation_size('size_plain')")
    repl_bytes=$(sizes_value "SELECT pg_total_relation_size('size_replicated')")
    nrows=$(sizes_value "SELECT count(*) FROM size_replicated")
    say "Bytes on disk per row: 20k single-row and 50k bulk rows into each table"
    printf '| rows | plain bytes/row | replicated table bytes/row | schema causal grew, bytes/row | replicated with history / plain |\n|---|---|---|---|---|\n'
    awk -v n="$nrows" -v p="$plain_bytes" -v r="$repl_bytes" -v c="$((after - before))" 'BEGIN {
        printf "| %d | %.0f | %.0f | %.0f | %.2f |\n", n, p / n, r / n, c / n, (r + c) / p }'
    say "Where schema causal's growth went, per row (heaps with their TOAST, and indexes)"
    printf '| relation | bytes/row |\n|---|---|\n'
    sizes_value "SELECT '| ' || c.relname || ' | ' || round((pg_table_size(c.oid) - coalesce(b.bytes, 0)) / $nrows.0) || ' |'
        FROM pg_class c LEFT JOIN size_before b USING (relname)
        WHERE c.relnamespace = 'causal'::regnamespace AND c.relkind IN ('r', 'i')
          AND pg_table_size(c.oid) - coalesce(b.bytes, 0) >= $nrows
        ORDER BY pg_table_size(c.oid) - coalesce(b.bytes, 0) DESC"
    # The capture slot of database sizes would keep WAL from being recycled for the rest of the run.
    sizes_psql -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = 'sizes'" >/dev/null
    bench_psql -c "DROP DATABASE sizes" >/dev/null
}
