#!/usr/bin/env bash
# The write path: pgbench against an identical plain table and a replicated table, in the same
# cluster and the same run. Prints, each beside the plain figure:
#   1. end to end, synchronous_commit off and on, for (a) single-row INSERT transactions and
#      (b) 1,000-row INSERT ... SELECT ones: rows committed / (pgbench time + the time until
#      causal.catch_up() returns), with that time split into sealing and placing;
#   2. bytes on disk per row, the replicated table plus what schema causal grew by, against
#      the plain table, after the same 20k single-row and 50k bulk rows went into each;
#   3. the gain from 1 to 4 clients (single-row, end to end), replicated against plain;
#   4. end to end again with the sync worker sealing and placing while pgbench runs.
# Until 4, no sync worker runs: the time after pgbench is all the sealing and placing the
# commits left.
# Usage: bash bench/capture.sh [seconds per run, default 20] [clients, default 2]
source "$(dirname "$0")/../scripts/common.sh"
ensure_setup
install_extension
bench_log capture
SECS="${1:-20}"
CLIENTS="${2:-2}"
DIR="$RUN_DIR/bench"
stop_clusters_under "$DIR"
rm -rf "$DIR"
PORT="$(free_port)"
# The cluster's data (several GB after 20 s runs) goes too, unless CAUSAL_KEEP_BENCH is set.
trap 'stop_cluster "$DIR/node"; [ -n "${CAUSAL_KEEP_BENCH:-}" ] || rm -rf "$DIR"' EXIT
printf 'shared_buffers = 256MB\nmax_wal_size = 4GB\n' | start_cluster "$DIR/node" "$PORT"
BENCH_NODE="$DIR/node"
BENCH_PORT="$PORT"
bench_tables
secs_of() { # command... -> seconds it took
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}
place() { bench_psql -c "SELECT causal.catch_up()"; }
# Seconds to seal what the commits left (causal.log seals every committed transaction before it
# reads), then to place it: in one session, as the worker's backend does both. (A backend of
# its own for placing first reads every node the sealer's backend had cached: about 36 µs per
# single-row entry instead of 20.)
seal_and_place() {
    bench_psql -c '\timing on' -c "SELECT count(*) FROM causal.log('bench', 1)" -c "SELECT causal.catch_up()" |
        awk '/^Time:/ { printf "%.2f ", $2 / 1000 }'
}

say "pgbench: $SECS s per run, $CLIENTS clients, $(nproc) cores"
printf '| synchronous_commit | workload | plain rows/s | replicated rows/s at commit | sealing | placing | replicated rows/s end to end | end to end / plain |\n|---|---|---|---|---|---|---|---|\n'
for sc in off on; do
    bench_psql -c "ALTER SYSTEM SET synchronous_commit = $sc" -c "SELECT pg_reload_conf()" >/dev/null
    for w in single bulk; do
        rows=1; [ "$w" = bulk ] && rows=1000
        p=$(bench_tps "${w}_plain" "$CLIENTS" -T "$SECS")
        r=$(bench_tps "${w}_replicated" "$CLIENTS" -T "$SECS")
        read -r s t <<<"$(seal_and_place)"
        awk -v sc="$sc" -v w="$w" -v p="$p" -v r="$r" -v rows="$rows" -v s="$s" -v t="$t" -v secs="$SECS" 'BEGIN {
            total = r * rows * secs; both = total / (secs + s + t)
            printf "| %s | %s | %.0f | %.0f (%.2f) | %.1f s | %.1f s | %.0f | %.2f |\n", sc,
                (w == "single" ? "(a) single-row INSERT" : "(b) 1,000-row INSERT ... SELECT"),
                p * rows, r * rows, r / p, s, t, both, both / (p * rows) }'
    done
done
bench_psql -c "ALTER SYSTEM SET synchronous_commit = off" -c "SELECT pg_reload_conf()" >/dev/null

# Bytes per row: the same rows into fresh tables of a database of their own, so that what
# earlier runs left in schema causal does not count (a hash index grows by doubling its
# buckets: how much of that falls into a window depends on what came before). Schema causal
# is measured before and after.
bench_psql -c "CREATE DATABASE sizes" >/dev/null
sizes_psql() { as_postgres psql -X -q -h "$DIR/node/sock" -p "$PORT" -U postgres -d sizes -v ON_ERROR_STOP=1 "$@"; }
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

# Clients 1 -> 4, single-row, end to end.
say "Clients 1 -> 4: single-row INSERT, synchronous_commit off, end to end"
printf '| table | 1 client rows/s | 4 clients rows/s | gain |\n|---|---|---|---|\n'
declare -A gain
for t in plain replicated; do
    out=""
    for c in 1 4; do
        tps=$(bench_tps "single_$t" "$c" -T "$SECS")
        extra=0
        [ "$t" = replicated ] && extra=$(seal_and_place | awk '{ print $1 + $2 }')
        out="$out $(awk -v tps="$tps" -v secs="$SECS" -v x="$extra" 'BEGIN { printf "%.0f", tps * secs / (secs + x) }')"
    done
    read -r one four <<<"$out"
    gain[$t]=$(awk -v a="$one" -v b="$four" 'BEGIN { printf "%.2f", b / a }')
    printf '| %s | %s | %s | %s |\n' "$t" "$one" "$four" "${gain[$t]}"
done
awk -v r="${gain[replicated]}" -v p="${gain[plain]}" 'BEGIN { printf "Ratio of gains, replicated / plain: %.2f\n", r / p }'
# End to end with the sync worker sealing and placing while pgbench runs, as on a node: the
# cluster restarts with the worker loaded, and what it has not done when pgbench ends (sealed
# and placed by causal.catch_up()) is the tail.
say "End to end with the sync worker running: $SECS s per run, $CLIENTS clients"
restart_with_sync_worker "$DIR/node"
place >/dev/null
printf '| synchronous_commit | workload | plain rows/s | replicated rows/s at commit (ratio) | left after pgbench | end to end rows/s | end to end / plain |\n|---|---|---|---|---|---|---|\n'
for sc in off on; do
    bench_psql -c "ALTER SYSTEM SET synchronous_commit = $sc" -c "SELECT pg_reload_conf()" >/dev/null
    for w in single bulk; do
        rows=1; [ "$w" = bulk ] && rows=1000
        p=$(bench_tps "${w}_plain" "$CLIENTS" -T "$SECS")
        r=$(bench_tps "${w}_replicated" "$CLIENTS" -T "$SECS")
        t=$(secs_of place)
        awk -v sc="$sc" -v w="$w" -v p="$p" -v r="$r" -v rows="$rows" -v t="$t" -v secs="$SECS" 'BEGIN {
            total = r * rows * secs; both = total / (secs + t)
            printf "| %s | %s | %.0f | %.0f (%.2f) | %.1f s | %.0f | %.2f |\n", sc,
                (w == "single" ? "(a) single-row INSERT" : "(b) 1,000-row INSERT ... SELECT"),
                p * rows, r * rows, r / p, t, both, both / (p * rows) }'
    done
done
bench_psql -c "ALTER SYSTEM SET synchronous_commit = off" -c "SELECT pg_reload_conf()" >/dev/null
entries=$(bench_value "SELECT count(*) FROM causal.dag_entries")
say "The group now holds $entries entries"
bench_json
