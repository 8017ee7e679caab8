#!/usr/bin/env bash
# Import (reconciliation) throughput: a remote bundle of N row operations is imported into a
# database that shares the group's setup, in one causal.import transaction.
#   - N single-row entries, and N/100 entries of 100 rows, that conflict with nothing;
#   - the same N single-row entries while the importer has written N/10 concurrent entries
#     whose keys collide with 10% of them (duplicate primary keys: one side is cancelled);
#   - a fresh database importing the whole N-entry history (genesis and schema included).
# Each time is one statement: reading the bundle's file, causal.import, and its commit.
# Usage: bash bench/import.sh [N, default 100000]
source "$(dirname "$0")/../scripts/common.sh"
ensure_setup
install_extension
bench_log import
N="${1:-100000}"
DIR="$RUN_DIR/bench-import"
stop_clusters_under "$DIR"
rm -rf "$DIR"
PORT="$(free_port)"
# The cluster's data goes too, unless CAUSAL_KEEP_BENCH is set.
trap 'stop_cluster "$DIR/node"; [ -n "${CAUSAL_KEEP_BENCH:-}" ] || rm -rf "$DIR"' EXIT
printf 'shared_buffers = 512MB\nmax_wal_size = 8GB\nsynchronous_commit = off\n' | start_cluster "$DIR/node" "$PORT"
sql() { local db="$1"; shift; as_postgres psql -X -q -t -A -h "$DIR/node/sock" -p "$PORT" -U postgres -d "$db" -v ON_ERROR_STOP=1 "$@"; }
for db in src single bulk conflict fresh; do
    sql postgres -c "CREATE DATABASE $db" >/dev/null
    sql "$db" -c "CREATE EXTENSION pg_causal" >/dev/null
done
sql src -c "SELECT causal.create_group('bench');
            CREATE TABLE items (id integer PRIMARY KEY, payload text NOT NULL, n integer);
            SELECT causal.replicate('bench', 'items');
            CREATE PROCEDURE one_row_each(lo int, hi int) LANGUAGE plpgsql AS \$\$
            BEGIN FOR i IN lo..hi LOOP INSERT INTO items VALUES (i, 'row ' || i, i); COMMIT; END LOOP; END \$\$;
            CREATE PROCEDURE hundred_rows_each(lo int, hi int) LANGUAGE plpgsql AS \$\$
            BEGIN FOR b IN 0..((hi - lo + 1) / 100 - 1) LOOP
                INSERT INTO items SELECT i, 'row ' || i, i FROM generate_series(lo + b * 100, lo + b * 100 + 99) i; COMMIT;
            END LOOP; END \$\$;" >/dev/null
conflict_key=$(sql conflict -c "SELECT public_key FROM causal.identities WHERE is_node")
sql src -c "SELECT causal.add_member('bench', '$conflict_key')" >/dev/null
setup_bundle="$DIR/setup.bundle"
# Bundles are files of the bundle's bytes (JSON text, printed unaligned by psql; the newline
# after it is whitespace to the JSON reader), read by the timed statement itself.
export_to() { # file [since]
    local since="${2:+, '$2'}"
    sql src -c "SELECT convert_from(causal.export('bench'$since), 'UTF8')" >"$1"
}
export_to "$setup_bundle"
import_file() { # db file -> seconds (reading the file, import, commit), and the import's result
    local db="$1" file="$2"
    sql "$db" -c "\\timing on" -c "SELECT causal.import(pg_read_binary_file('$file'))::text" | tr '\n' ' '
}
chmod 644 "$setup_bundle"
for db in single bulk conflict; do import_file "$db" "$setup_bundle" >/dev/null; done
since=$(sql src -c "SELECT causal.frontier('bench')::text")

say "Writing $N single-row transactions at the source"
sql src -c "CALL one_row_each(1, $N)"
after_single=$(sql src -c "SELECT causal.frontier('bench')::text")
single="$DIR/single.bundle"
export_to "$single" "$since"
all="$DIR/all.bundle"
export_to "$all"
say "Writing $N rows as 100-row transactions at the source"
sql src -c "CALL hundred_rows_each($((N + 1)), $((2 * N)))"
bulk_only="$DIR/bulk_only.bundle"
export_to "$bulk_only" "$after_single"
chmod 644 "$DIR"/*.bundle

say "The importer of the conflicting run writes $((N / 10)) concurrent rows whose keys collide"
sql conflict -c "CREATE PROCEDURE colliding(n int) LANGUAGE plpgsql AS \$\$
                 BEGIN FOR i IN 1..n LOOP INSERT INTO items VALUES (i * 10, 'local ' || i, -i); COMMIT; END LOOP; END \$\$;"
sql conflict -c "CALL colliding($((N / 10)))"
# Its own commits are placed first (the sync worker would have done it), so the timed import
# measures the import.
sql conflict -c "SELECT causal.catch_up()" >/dev/null

ms() { sed -n 's/.*Time: \([0-9.]*\) ms.*/\1/p' | tail -1; }
report() { # label rows result: fails unless the import accepted every entry it was given
    local t accepted; t=$(printf '%s' "$3" | ms)
    accepted=$(printf '%s' "$3" | sed -n 's/.*"accepted": \([0-9]*\).*/\1/p')
    [ -n "$accepted" ] && [ "$accepted" -gt 0 ] || die "import for '$1' accepted nothing: $3"
    awk -v l="$1" -v r="$2" -v t="$t" -v a="$accepted" 'BEGIN { printf "| %s | %d | %.2f | %.0f | %d |\n", l, r, t / 1000, r / (t / 1000), a }'
}
# Nothing left for autovacuum or the checkpointer from the setup's writes, so neither runs on
# the second core during a timed import; each import's own database is vacuumed after it,
# untimed, for the same reason. Each database also seals what the WAL holds so far (no sync
# worker runs here, which would have done it): an import seals first, and would otherwise
# decode every other database's earlier imports in this cluster's WAL, inside its time.
settle() {
    for db in "$@"; do sql "$db" -c "VACUUM ANALYZE" >/dev/null; done
    sql postgres -c "CHECKPOINT" >/dev/null
    for db in "$@"; do sql "$db" -c "SELECT causal.catch_up()" >/dev/null; done
}
settle src single bulk conflict fresh
say "Importing (one causal.import each; times include validation, reconciliation and commit)"
printf '| import | row operations | seconds | row-ops/s | entries accepted |\n|---|---|---|---|---|\n'
r=$(import_file single "$single"); report "$N single-row entries, no conflict" "$N" "$r"
settle single
echo "    $(printf '%s' "$r" | grep -o '"ms": {[^}]*}')"
# The 100-row entries follow the single-row ones; import those first, untimed.
import_file bulk "$single" >/dev/null
settle bulk
r=$(import_file bulk "$bulk_only"); report "$((N / 100)) entries of 100 rows, no conflict" "$N" "$r"
settle bulk
r=$(import_file conflict "$single"); report "$N single-row entries, 10% conflicting" "$N" "$r"
settle conflict
echo "    conflict run: $(printf '%s' "$r" | sed 's/Time:.*//' | tr -s ' ' | cut -c1-300)"
r=$(import_file fresh "$all"); report "fresh database, whole $N-entry history" "$N" "$r"
cancelled=$(sql conflict -c "SELECT count(*) FROM causal.log('bench', 10000000) WHERE status = 'cancelled'")
rows=$(sql conflict -c "SELECT count(*) FROM items")
say "Conflicting run: $cancelled entries cancelled, $rows rows in the table"
bench_json
