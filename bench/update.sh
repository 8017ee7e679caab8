#!/usr/bin/env bash
# Updates of placed rows: pgbench single-row UPDATE transactions on random rows of a plain
# table and of an identical replicated one (N rows each, the replicated ones placed), in the
# same cluster and run, synchronous_commit off. First without the sync worker: the time to
# seal and place what the replicated updates left, split, and placing per update. Then with
# the worker sealing and placing (in calls of a few hundred commits) while pgbench runs, and
# what is left when it ends. End to end / plain = updates committed / (pgbench time + the time
# until causal.catch_up() returns), over plain's updates per second.
# Usage: bash bench/update.sh [rows, default 200000] [seconds, default 5] [clients, default 2]
source "$(dirname "$0")/../scripts/common.sh"
ensure_setup
install_extension
bench_log update
ROWS="${1:-200000}"
SECS="${2:-5}"
CLIENTS="${3:-2}"
DIR="$RUN_DIR/bench-update"
stop_clusters_under "$DIR"
rm -rf "$DIR"
PORT="$(free_port)"
trap 'stop_cluster "$DIR/node"; [ -n "${CAUSAL_KEEP_BENCH:-}" ] || rm -rf "$DIR"' EXIT
printf 'shared_buffers = 256MB\nmax_wal_size = 4GB\nsynchronous_commit = off\n' | start_cluster "$DIR/node" "$PORT"
BENCH_NODE="$DIR/node"
BENCH_PORT="$PORT"
bench_tables
say "Filling both tables with $ROWS rows (the replicated ones in 1,000-row commits, placed)"
bench_psql -c "INSERT INTO plain (payload, n) SELECT 'row ' || i, i FROM generate_series(1, $ROWS) i" \
    -c "CREATE PROCEDURE fill(total int) LANGUAGE plpgsql AS \$\$
        BEGIN FOR b IN 1..((total + 999) / 1000) LOOP
            INSERT INTO replicated (payload, n) SELECT 'row ' || i, i FROM generate_series(1, least(1000, total - (b - 1) * 1000)) i;
            COMMIT;
        END LOOP; END \$\$" \
    -c "CALL fill($ROWS)" -c "SELECT causal.catch_up()" -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null
for t in plain replicated; do
    printf '\\set id random(1, %d)\nUPDATE %s SET n = n + 1 WHERE id = :id;\n' "$ROWS" "$t" >"$DIR/update_$t.sql"
done
chmod 644 "$DIR"/update_*.sql
tps() { # table -> transactions per second
    as_postgres "$PG_BIN/pgbench" -n -h "$DIR/node/sock" -p "$PORT" -U postgres -c "$CLIENTS" -j "$CLIENTS" \
        -T "$SECS" -f "$DIR/update_$1.sql" postgres 2>/dev/null | awk '/^tps = / { printf "%.1f", $3 }'
}
say "pgbench: single-row UPDATEs of random rows, $SECS s per run, $CLIENTS clients, $(nproc) cores"
p=$(tps plain)
r=$(tps replicated)
read -r s t <<<"$(bench_psql -c '\timing on' -c "SELECT count(*) FROM causal.log('bench', 1)" \
    -c "SELECT causal.catch_up()" | awk '/^Time:/ { printf "%.2f ", $2 / 1000 }')"
printf '| plain updates/s | replicated updates/s at commit (ratio) | sealing | placing | placing per update | end to end / plain |\n|---|---|---|---|---|---|\n'
awk -v p="$p" -v r="$r" -v s="$s" -v t="$t" -v secs="$SECS" 'BEGIN {
    total = r * secs; both = total / (secs + s + t)
    printf "| %.0f | %.0f (%.2f) | %.1f s | %.1f s | %.1f µs | %.2f |\n", p, r, r / p, s, t, t * 1e6 / total, both / p }'
say "With the sync worker sealing and placing while pgbench runs"
restart_with_sync_worker "$DIR/node"
bench_psql -c "SELECT causal.catch_up()" >/dev/null
p=$(tps plain)
r=$(tps replicated)
t=$(bench_psql -c '\timing on' -c "SELECT causal.catch_up()" | awk '/^Time:/ { printf "%.2f", $2 / 1000 }')
printf '| plain updates/s | replicated updates/s at commit (ratio) | left after pgbench | end to end / plain |\n|---|---|---|---|\n'
awk -v p="$p" -v r="$r" -v t="$t" -v secs="$SECS" 'BEGIN {
    printf "| %.0f | %.0f (%.2f) | %.1f s | %.2f |\n", p, r, r / p, t, r * secs / (secs + t) / p }'
bench_json
