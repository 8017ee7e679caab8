#!/usr/bin/env bash
# Capture overhead: pgbench against an identical plain table and a replicated table, in the
# same cluster and the same run, with synchronous_commit on and off.
#   (a) single-row INSERT transactions      (b) 1,000-row INSERT ... SELECT transactions
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
# The cluster's data (about 15 GB after a 15 s run) goes too, unless CAUSAL_KEEP_BENCH is set.
trap 'stop_cluster "$DIR/node"; [ -n "${CAUSAL_KEEP_BENCH:-}" ] || rm -rf "$DIR"' EXIT
printf 'shared_buffers = 256MB\nmax_wal_size = 4GB\n' | start_cluster "$DIR/node" "$PORT"
psql_() { as_postgres psql -X -q -h "$DIR/node/sock" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
psql_ -c "CREATE EXTENSION pg_causal; SELECT causal.create_group('bench');
          CREATE TABLE plain (id bigserial PRIMARY KEY, payload text NOT NULL, n integer);
          CREATE TABLE replicated (id bigserial PRIMARY KEY, payload text NOT NULL, n integer);
          SELECT causal.replicate('bench', 'replicated');" >/dev/null

run() { # script -> transactions per second
    as_postgres "$PG_BIN/pgbench" -n -h "$DIR/node/sock" -p "$PORT" -U postgres -c "$CLIENTS" -j "$CLIENTS" \
        -T "$SECS" -f - postgres <"$ROOT/bench/$1.sql" 2>/dev/null | awk '/^tps = / { printf "%.1f", $3 }'
}

# Plain data commits leave their placement by the reconciliation engine (journal, row_meta)
# for later, in batches. After each replicated run, the backlog is placed with
# causal.catch_up() and timed, so the cost the commits deferred is reported too.
place() { # -> seconds that placing the backlog took
    local t0 t1
    t0=$(date +%s.%N)
    psql_ -c "SELECT causal.catch_up()" >/dev/null
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}

say "pgbench: $SECS s per run, $CLIENTS clients, $(nproc) cores"
printf '| synchronous_commit | workload | plain rows/s | replicated rows/s (commits) | replicated/plain | placing the backlog afterwards | rows/s including placement | ratio including placement |\n|---|---|---|---|---|---|---|---|\n'
for sc in off on; do
    psql_ -c "ALTER SYSTEM SET synchronous_commit = $sc" -c "SELECT pg_reload_conf()" >/dev/null
    for w in single bulk; do
        rows=1; [ "$w" = bulk ] && rows=1000
        p=$(run "${w}_plain"); r=$(run "${w}_replicated"); t=$(place)
        awk -v sc="$sc" -v w="$w" -v p="$p" -v r="$r" -v rows="$rows" -v t="$t" -v secs="$SECS" 'BEGIN {
            total = r * rows * secs; both = total / (secs + t)
            printf "| %s | %s | %.0f | %.0f | %.2f | %.0f rows in %.1f s | %.0f | %.2f |\n", sc,
                (w == "single" ? "(a) single-row INSERT" : "(b) 1,000-row INSERT ... SELECT"),
                p * rows, r * rows, r / p, total, t, both, both / (p * rows) }'
    done
done
entries=$(psql_ -t -A -c "SELECT count(*) FROM causal.dag_entries")
say "The replicated table's group now holds $entries entries"
bench_json
