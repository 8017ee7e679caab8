#!/usr/bin/env bash
# Live sync benchmarks, on throwaway clusters on this machine, in one run:
#   a. commit-to-visible latency between two nodes under a steady load of single-row
#      transactions (p50, p99);
#   b. catch-up: a node N transactions behind catches up; the same with PostgreSQL's native
#      logical replication (publication/subscription) between two clusters set up alike.
# Usage: bash bench/sync.sh [N, default 100000] [load seconds, default 20] [rate per second, default 50]
source "$(dirname "$0")/../scripts/common.sh"
ensure_setup
install_extension
bench_log sync
N="${1:-100000}"
SECONDS_OF_LOAD="${2:-20}"
RATE="${3:-50}"
DIR="$RUN_DIR/bench-sync"
stop_clusters_under "$DIR"
rm -rf "$DIR"
# The clusters' data goes too, unless CAUSAL_KEEP_BENCH is set.
trap 'stop_clusters_under "$DIR"; [ -n "${CAUSAL_KEEP_BENCH:-}" ] || rm -rf "$DIR"' EXIT
declare -A PORT P2P
conf() { # node p2p-port
    printf "shared_buffers = 512MB\nmax_wal_size = 8GB\nsynchronous_commit = off\nwal_level = logical\n"
    printf "shared_preload_libraries = 'pg_causal'\ncausal.listen_addresses = '/ip4/127.0.0.1/tcp/%s'\n" "$1"
}
for n in a b; do
    PORT[$n]="$(free_port)"
    P2P[$n]="$(free_port)"
    conf "${P2P[$n]}" | start_cluster "$DIR/$n" "${PORT[$n]}"
done
sql() { local n="$1"; shift; as_postgres psql -X -q -t -A -h "$DIR/$n/sock" -p "${PORT[$n]}" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
wait_until() { # what condition [timeout seconds]
    local t0=$SECONDS
    until eval "$2"; do
        [ $((SECONDS - t0)) -lt "${3:-600}" ] || die "timed out waiting until $1"
        sleep 0.05
    done
}

say "Two nodes with their sync workers; a group with one table"
for n in a b; do sql "$n" -c "CREATE EXTENSION pg_causal"; done
sql a -c "SELECT causal.create_group('bench')" >/dev/null
sql a -c "CREATE TABLE items (id bigint PRIMARY KEY, payload text NOT NULL, written_at timestamptz NOT NULL DEFAULT clock_timestamp());
          SELECT causal.replicate('bench', 'items');" >/dev/null
G="$(sql a -c "SELECT group_id FROM causal.groups")"
sql a -c "SELECT causal.add_member('bench', '$(sql b -c "SELECT public_key FROM causal.identities WHERE is_node")')" >/dev/null
AA="$(sql a -c "SELECT (causal.node_addresses())[1]")"
AB="$(sql b -c "SELECT (causal.node_addresses())[1]")"
sql a -c "SELECT causal.add_peer('$AB')" >/dev/null
sql b -c "SELECT causal.add_peer('$AA')" -c "SELECT causal.join_group('$G')" >/dev/null
# (Until b has joined, it does not know the group; that error only means "not yet".)
same() { [ "$(sql a -c "SELECT causal.frontier('$G')")" = "$(sql b -c "SELECT coalesce(causal.frontier('$G'), '{}')" 2>/dev/null)" ]; }
# wait_in NODE CONDITION: waits until the SQL condition holds on NODE, polled every 50 ms
# inside one session (a psql per poll would cost a third of a core on this 2-core machine,
# taken from whichever system is being measured).
wait_in() {
    sql "$1" -c "DO \$\$ BEGIN WHILE NOT ($2) LOOP PERFORM pg_sleep(0.05); END LOOP; END \$\$"
}
wait_until "node b joined" same 60
# On b, an ALWAYS trigger (it fires during replay, as with logical replication) stamps when
# each row is written there, inside the import transaction that makes it visible.
sql b -c "CREATE TABLE arrivals (id bigint PRIMARY KEY, arrived_at timestamptz NOT NULL);
          CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS \$\$
          BEGIN INSERT INTO arrivals VALUES (NEW.id, clock_timestamp()); RETURN NEW; END \$\$;
          CREATE TRIGGER stamp AFTER INSERT ON items FOR EACH ROW EXECUTE FUNCTION stamp();
          ALTER TABLE items ENABLE ALWAYS TRIGGER stamp;"

say "a. Latency: $RATE single-row transactions per second on a for $SECONDS_OF_LOAD s"
TOTAL=$((RATE * SECONDS_OF_LOAD))
sql a -c "CREATE PROCEDURE steady(n int, per_second int) LANGUAGE plpgsql AS \$\$
          DECLARE t0 timestamptz := clock_timestamp();
          BEGIN FOR i IN 1..n LOOP
              INSERT INTO items (id, payload) VALUES (i, 'row ' || i); COMMIT;
              PERFORM pg_sleep(greatest(0, extract(epoch FROM t0 + (i * interval '1 second' / per_second) - clock_timestamp())));
          END LOOP; END \$\$;"
sql a -c "CALL steady($TOTAL, $RATE)"
wait_until "b has every row" "[ \"\$(sql b -c 'SELECT count(*) FROM arrivals')\" = $TOTAL ]" 120
# Both clusters run on this machine, so their clocks are one clock.
sql a -c "COPY (SELECT id, written_at FROM items) TO STDOUT" >"$DIR/written.tsv"
sql b -c "CREATE TEMP TABLE written (id bigint, written_at timestamptz);
          COPY written FROM STDIN;
          SELECT '| ' || $RATE || ' tx/s for ' || $SECONDS_OF_LOAD || ' s | ' || count(*) || ' | ' ||
                 round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) || ' | ' ||
                 round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1) || ' | ' ||
                 round(max(ms)::numeric, 1) || ' |'
          FROM (SELECT extract(epoch FROM r.arrived_at - w.written_at) * 1000 AS ms
                FROM arrivals r JOIN written w USING (id)) x;" <"$DIR/written.tsv" >"$DIR/latency.txt"
printf '| load | rows | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n'
cat "$DIR/latency.txt"

say "b. Catch-up: b falls $N single-row transactions behind, then reconnects"
sql b -c "DROP TRIGGER stamp ON items"
sql a -c "SELECT causal.remove_peer('$AB')" >/dev/null
sql b -c "SELECT causal.remove_peer('$AA')" >/dev/null
sleep 2
sql a -c "CREATE PROCEDURE one_each(lo bigint, hi bigint) LANGUAGE plpgsql AS \$\$
          BEGIN FOR i IN lo..hi LOOP INSERT INTO items (id, payload) VALUES (i, 'row ' || i); COMMIT; END LOOP; END \$\$;"
sql a -c "CALL one_each($((TOTAL + 1)), $((TOTAL + N)))"
# The clock starts before a finishes sealing what it committed (its worker seals while the
# procedure runs; what is left is sealed here, timed): native replication decodes inside its
# timed window too. (causal.log seals first; placing a's own commits is not needed to send
# them.) The frontier to wait for is read once everything is sealed.
t0=$(date +%s.%N)
sql a -c "SELECT count(*) FROM causal.log('$G', 1)" >/dev/null
FA="$(sql a -c "SELECT causal.frontier('$G')")"
sql b -c "SELECT causal.add_peer('$AA')" >/dev/null
sql a -c "SELECT causal.add_peer('$AB')" >/dev/null
wait_in b "causal.frontier('$G')::text = '$FA'"
t1=$(date +%s.%N)
causal_s=$(echo "$t1 - $t0" | bc)

say "   native logical replication, same machine, same settings"
# The subscriber's launcher waits wal_retrieve_retry_interval (5 s by default) before it
# starts an apply worker again for a subscription whose worker ran recently: re-enabled within
# that interval, native replication would idle for seconds before applying anything, which
# measures the launcher, not replication. The subscriber lowers it to 50 ms.
for n in p s; do
    PORT[$n]="$(free_port)"
    { printf "shared_buffers = 512MB\nmax_wal_size = 8GB\nsynchronous_commit = off\nwal_level = logical\n"
      if [ "$n" = s ]; then printf "wal_retrieve_retry_interval = 50ms\n"; fi; } | start_cluster "$DIR/$n" "${PORT[$n]}"
    sql "$n" -c "CREATE TABLE items (id bigint PRIMARY KEY, payload text NOT NULL, written_at timestamptz NOT NULL DEFAULT clock_timestamp())"
done
sql p -c "CREATE PUBLICATION pub FOR TABLE items"
sql s -c "CREATE SUBSCRIPTION sub CONNECTION 'host=127.0.0.1 port=${PORT[p]} user=postgres dbname=postgres' PUBLICATION pub"
sleep 2
sql s -c "ALTER SUBSCRIPTION sub DISABLE"
sleep 1
sql p -c "CREATE PROCEDURE one_each(lo bigint, hi bigint) LANGUAGE plpgsql AS \$\$
          BEGIN FOR i IN lo..hi LOOP INSERT INTO items (id, payload) VALUES (i, 'row ' || i); COMMIT; END LOOP; END \$\$;"
sql p -c "CALL one_each(1, $N)"
t0=$(date +%s.%N)
sql s -c "ALTER SUBSCRIPTION sub ENABLE"
wait_in s "(SELECT count(*) FROM items) = $N"
t1=$(date +%s.%N)
native_s=$(echo "$t1 - $t0" | bc)
printf '| catch-up of %d single-row transactions | seconds | rows/s |\n|---|---|---|\n' "$N"
awk -v n="$N" -v c="$causal_s" -v p="$native_s" 'BEGIN {
    printf "| pg_causal (every hash and signature verified, reconciled) | %.1f | %.0f |\n", c, n / c
    printf "| native logical replication | %.1f | %.0f |\n", p, n / p }'
bench_json
