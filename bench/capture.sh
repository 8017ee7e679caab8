#!/usr/bin/env bash
# The write path: pgbench against an identical plain table and a replicated table, in the same
# cluster and the same run. Prints, each beside the plain figure:
#   1. end to end, synchronous_commit off and on, for (a) single-row INSERT transactions and
#      (b) 1,000-row INSERT ... SELECT ones: rows committed / (pgbench time + the time until
#      causal.catch_up() returns), with that time split into sealing and placing;
#   2. bytes on disk per row, the replicated table plus what schema causal grew by, against
#      the plain table, after the same 20k single-row and 50k bulk rows went into each;
#   3. the gain from 1 to 4 clients (single-row, end to end), replicated against plain;
#   4. end to end again with the sync worker sealing and placing while pgbench runs, with
#      synchronous_commit off, on, and on with fsync on (commits wait for the disk).
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

source "$ROOT/bench/bytes_per_row.sh"
bytes_per_row

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
# The benchmark clusters run with fsync off (scripts/common.sh): synchronous_commit on then
# only makes a commit wait for its WAL to reach the OS, and both tables stay CPU-bound. The
# last mode turns fsync on, so that a commit waits for the disk, as it does on a server that
# runs synchronous_commit on.
printf '| synchronous_commit | workload | plain rows/s | replicated rows/s at commit (ratio) | left after pgbench | end to end rows/s | end to end / plain |\n|---|---|---|---|---|---|---|\n'
for mode in off on "on, fsync on"; do
    sc="${mode%%,*}"
    fsync=off; [ "$mode" = "on, fsync on" ] && fsync=on
    bench_psql -c "ALTER SYSTEM SET synchronous_commit = $sc" -c "ALTER SYSTEM SET fsync = $fsync" \
        -c "SELECT pg_reload_conf()" >/dev/null
    for w in single bulk; do
        rows=1; [ "$w" = bulk ] && rows=1000
        p=$(bench_tps "${w}_plain" "$CLIENTS" -T "$SECS")
        r=$(bench_tps "${w}_replicated" "$CLIENTS" -T "$SECS")
        t=$(secs_of place)
        awk -v sc="$mode" -v w="$w" -v p="$p" -v r="$r" -v rows="$rows" -v t="$t" -v secs="$SECS" 'BEGIN {
            total = r * rows * secs; both = total / (secs + t)
            printf "| %s | %s | %.0f | %.0f (%.2f) | %.1f s | %.0f | %.2f |\n", sc,
                (w == "single" ? "(a) single-row INSERT" : "(b) 1,000-row INSERT ... SELECT"),
                p * rows, r * rows, r / p, t, both, both / (p * rows) }'
    done
done
bench_psql -c "ALTER SYSTEM SET synchronous_commit = off" -c "ALTER SYSTEM SET fsync = off" \
    -c "SELECT pg_reload_conf()" >/dev/null
entries=$(bench_value "SELECT count(*) FROM causal.dag_entries")
say "The group now holds $entries entries"
bench_json
