#!/usr/bin/env bash
# Backend CPU per inserted row, replicated table against an identical plain table, one
# pgbench client (synchronous_commit off), for capture.sh's two workloads: (a) single-row
# INSERT transactions (a row is a transaction) and (b) 1,000-row INSERT ... SELECT ones. CPU
# is the backend's utime + stime from /proc over a window of the run; the rows inserted in
# the window come from the table's id sequence, which counts them as they happen.
# Usage: bash bench/commit_cpu.sh [seconds per window, default 5] [windows per table, default 3]
source "$(dirname "$0")/../scripts/common.sh"
ensure_setup
install_extension
bench_log commit_cpu
SECS="${1:-5}"
ROUNDS="${2:-3}"
DIR="$RUN_DIR/bench-commit"
stop_clusters_under "$DIR"
rm -rf "$DIR"
PORT="$(free_port)"
# The cluster's data goes too, unless CAUSAL_KEEP_BENCH is set.
trap 'stop_cluster "$DIR/node"; [ -n "${CAUSAL_KEEP_BENCH:-}" ] || rm -rf "$DIR"' EXIT
printf 'shared_buffers = 256MB\nmax_wal_size = 4GB\nsynchronous_commit = off\n' | start_cluster "$DIR/node" "$PORT"
psql_() { as_postgres psql -X -q -t -A -h "$DIR/node/sock" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
psql_ -c "CREATE EXTENSION pg_causal; SELECT causal.create_group('bench');
          CREATE TABLE plain (id bigserial PRIMARY KEY, payload text NOT NULL, n integer);
          CREATE TABLE replicated (id bigserial PRIMARY KEY, payload text NOT NULL, n integer);
          SELECT causal.replicate('bench', 'replicated');" >/dev/null
tick_us=$((1000000 / $(getconf CLK_TCK)))

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

measure() { # workload table -> microseconds of backend CPU per row
    local workload="$1" table="$2" pid c0 n0 c1 n1
    as_postgres "$PG_BIN/pgbench" -n -h "$DIR/node/sock" -p "$PORT" -U postgres -c 1 -j 1 -T $((SECS + 3)) \
        -f - postgres <"$ROOT/bench/${workload}_$table.sql" >/dev/null 2>&1 &
    local bench=$!
    sleep 1.5
    pid=$(psql_ -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench'")
    [ -n "$pid" ] || die "no pgbench backend found"
    c0=$(cpu_ticks "$pid"); n0=$(psql_ -c "SELECT last_value FROM ${table}_id_seq")
    sleep "$SECS"
    c1=$(cpu_ticks "$pid"); n1=$(psql_ -c "SELECT last_value FROM ${table}_id_seq")
    wait "$bench"
    awk -v c=$((c1 - c0)) -v n=$((n1 - n0)) -v t="$tick_us" 'BEGIN { printf "%.2f", c * t / n }'
}

say "Backend CPU per inserted row, one client, $SECS s windows"
printf '| workload | run | plain µs/row | replicated µs/row | replicated − plain |\n|---|---|---|---|---|\n'
for w in single bulk; do
    for r in $(seq 1 "$ROUNDS"); do
        p=$(measure "$w" plain); q=$(measure "$w" replicated)
        awk -v w="$w" -v r="$r" -v p="$p" -v q="$q" 'BEGIN {
            printf "| %s | %d | %.2f | %.2f | %.2f |\n", (w == "single" ? "(a) single-row" : "(b) 1,000-row"), r, p, q, q - p }'
    done
done
bench_json
