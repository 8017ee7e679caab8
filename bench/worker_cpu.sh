#!/usr/bin/env bash
# The sync worker's CPU per local commit, by backend: pgbench writes single-row INSERT
# transactions to a replicated table at a fixed rate (2 clients, synchronous_commit off), and
# each of the worker's database backends (decoding, sealing, placing, the rest) is timed from
# /proc over the run, per entry stored meanwhile. The rate is fixed so that the figures of two
# builds compare: the worker's per-run costs are shared by the commits that arrive in a run.
# Usage: bash bench/worker_cpu.sh [commits per second, default 6000] [seconds, default 10]
#        [runs, default 2]
source "$(dirname "$0")/../scripts/common.sh"
ensure_setup
install_extension
bench_log worker_cpu
RATE="${1:-6000}"
SECS="${2:-10}"
RUNS="${3:-2}"
DIR="$RUN_DIR/bench-worker-cpu"
stop_clusters_under "$DIR"
rm -rf "$DIR"
PORT="$(free_port)"
# The cluster's data goes too, unless CAUSAL_KEEP_BENCH is set.
trap 'stop_cluster "$DIR/node"; [ -n "${CAUSAL_KEEP_BENCH:-}" ] || rm -rf "$DIR"' EXIT
printf "shared_buffers = 256MB\nmax_wal_size = 4GB\nsynchronous_commit = off\nshared_preload_libraries = 'pg_causal'\ncausal.database = 'postgres'\n" |
    start_cluster "$DIR/node" "$PORT"
BENCH_NODE="$DIR/node"
BENCH_PORT="$PORT"
bench_tables
tick_us=$((1000000 / $(getconf CLK_TCK)))
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# What a backend of the worker runs: the last statement it ran, named by its function.
role_of() {
    case "$1" in
        *_decode_commits*) echo decoding ;;
        *_seal_decoded*) echo sealing ;;
        *_place_sealed*|*catch_up*) echo placing ;;
        *) echo other ;;
    esac
}

# A short warm-up: the worker's backends connect and prepare their statements.
bench_tps single_replicated 2 -T 2 >/dev/null
bench_psql -c "SELECT causal.catch_up()" >/dev/null
sleep 1
say "Worker CPU per commit, $RATE single-row commits/s for $SECS s"
printf '| run | commits/s achieved | decoding µs | sealing µs | placing µs | other µs | worker total µs |\n|---|---|---|---|---|---|---|\n'
for run in $(seq 1 "$RUNS"); do
    declare -A before=()
    pids=$(bench_value "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE application_name = 'pg_causal sync worker'")
    for p in $pids; do before[$p]=$(cpu_ticks "$p"); done
    e0=$(bench_value "SELECT count(*) FROM causal.dag_entries")
    tps=$(bench_tps single_replicated 2 -T "$SECS" --rate="$RATE")
    e1=$(bench_value "SELECT count(*) FROM causal.dag_entries")
    declare -A per_role=([decoding]=0 [sealing]=0 [placing]=0 [other]=0)
    for p in $pids; do
        role=$(role_of "$(bench_value "SELECT query FROM pg_stat_activity WHERE pid = $p")")
        per_role[$role]=$((per_role[$role] + $(cpu_ticks "$p") - before[$p]))
    done
    awk -v run="$run" -v tps="$tps" -v n=$((e1 - e0)) -v t="$tick_us" -v d="${per_role[decoding]}" \
        -v s="${per_role[sealing]}" -v p="${per_role[placing]}" -v o="${per_role[other]}" 'BEGIN {
        printf "| %d | %.0f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", run, tps, d*t/n, s*t/n, p*t/n, o*t/n, (d+s+p+o)*t/n }'
    bench_psql -c "SELECT causal.catch_up()" >/dev/null
    unset before per_role
done
bench_json
