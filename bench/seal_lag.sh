#!/usr/bin/env bash
# Sealing lag under load: how long after its commit a local transaction is in the group's
# history, with the background worker sealing (woken by commits), while pgbench writes
# single-row INSERT transactions at half the rate the plain table takes in the same cluster.
#
# Each transaction's lag is exact: the commit time of the sealing transaction that stored its
# entry minus its own commit time (track_commit_timestamp; the entry is matched to its row by
# the row's id). Prints, for synchronous_commit off and on: the plain rate, the load offered
# and achieved, how many transactions, and the lag's median, 99th percentile and maximum.
# Usage: bash bench/seal_lag.sh [seconds per run, default 10] [clients, default 2]
#        [divisor of the plain rate for the offered load, default 2]
source "$(dirname "$0")/../scripts/common.sh"
ensure_setup
install_extension
bench_log seal_lag
SECS="${1:-10}"
CLIENTS="${2:-2}"
DIV="${3:-2}"
DIR="$RUN_DIR/bench-lag"
stop_clusters_under "$DIR"
rm -rf "$DIR"
PORT="$(free_port)"
trap 'stop_cluster "$DIR/node"; [ -n "${CAUSAL_KEEP_BENCH:-}" ] || rm -rf "$DIR"' EXIT
printf "shared_buffers = 256MB\nmax_wal_size = 4GB\nlog_min_duration_statement = '${CAUSAL_LOG_SLOWER_THAN:--1}'\nshared_preload_libraries = 'pg_causal'\ncausal.database = 'postgres'\ntrack_commit_timestamp = on\n" |
    start_cluster "$DIR/node" "$PORT"
BENCH_NODE="$DIR/node"
BENCH_PORT="$PORT"
bench_tables

# Waits until the worker has sealed every committed transaction (no catch_up: that would seal
# the tail itself), for at most a minute; says how long it waited.
wait_sealed() {
    local want="$1" t0 t1 n
    t0=$(date +%s.%N)
    for _ in $(seq 1 600); do
        n=$(bench_value "SELECT count(*) FROM causal.dag_entries")
        [ "$n" -ge "$want" ] && break
        sleep 0.1
    done
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }'
}

say "pgbench: $SECS s per run, $CLIENTS clients, $(nproc) cores; the sync worker seals"
printf '| synchronous_commit | plain tx/s | offered tx/s (plain / %s) |' "$DIV"
printf ' achieved tx/s | transactions | lag p50 | lag p99 | lag max | tail sealed after the run |\n|---|---|---|---|---|---|---|---|---|\n'
for sc in off on; do
    bench_psql -c "ALTER SYSTEM SET synchronous_commit = $sc" -c "SELECT pg_reload_conf()" >/dev/null
    bench_psql -c "TRUNCATE plain" >/dev/null
    p=$(bench_tps single_plain "$CLIENTS" -T "$SECS")
    rate=$(awk -v p="$p" -v d="$DIV" 'BEGIN { printf "%d", p / d }')
    first=$(bench_value "SELECT coalesce(max(id), 0) FROM replicated")
    before=$(bench_value "SELECT count(*) FROM causal.dag_entries")
    a=$(bench_tps single_replicated "$CLIENTS" -T "$SECS" --rate="$rate")
    rows=$(bench_value "SELECT count(*) FROM replicated WHERE id > $first")
    # Each committed transaction becomes one entry.
    tail=$(wait_sealed $((before + rows)))
    read -r n p50 p99 max < <(bench_value "
        SELECT count(*), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY lag)::numeric, 1),
               round(percentile_cont(0.99) WITHIN GROUP (ORDER BY lag)::numeric, 1), round(max(lag)::numeric, 1)
        FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(d.xmin) - pg_xact_commit_timestamp(r.xmin)) * 1000 AS lag
              FROM replicated r
              JOIN causal.entries e ON (e.payload::jsonb #>> '{ops,0,row,id}')::bigint = r.id
                                       AND e.payload::jsonb #>> '{ops,0,table}' = 'replicated'
              -- The view has no xmin: the sealing transaction's is the entry row's.
              JOIN causal.dag_entries d ON d.grp = e.grp AND d.node_id = e.node_id
              WHERE r.id > $first) x" | tr '|' ' ')
    printf '| %s | %.0f | %s | %.0f | %s | %s ms | %s ms | %s ms | %s s |\n' "$sc" "$p" "$rate" "$a" "$n" "$p50" "$p99" "$max" "$tail"
done
bench_json
