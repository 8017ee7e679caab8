#!/usr/bin/env bash
# Runs every test: causal-core's unit, property and conformance tests, the sync worker's
# tests, the #[pg_test]s inside PostgreSQL, and the integration tests against real clusters.
# CI (.ci/run) runs exactly this script.
#
# CAUSAL_PROPTEST_CASES sets the number of random cases per property (default 1000 here).
source "$(dirname "$0")/common.sh"
ensure_setup
cd "$ROOT"

IT_DIR="$RUN_DIR/it-clusters"
PGRX_DATA="$RUN_DIR/pgrx-test-data"
cleanup() { stop_clusters_under "$IT_DIR"; stop_clusters_under "$PGRX_DATA"; }
trap cleanup EXIT
cleanup
rm -rf "$IT_DIR"

export CAUSAL_PROPTEST_CASES="${CAUSAL_PROPTEST_CASES:-1000}"
# The convergence property (3-5 replicas, random writes and partial exchanges) runs more.
export CAUSAL_CONVERGENCE_CASES="${CAUSAL_CONVERGENCE_CASES:-3000}"

# Every step's output is also kept, to add up the results at the end.
RESULTS="$(mktemp)"
trap 'cleanup; rm -f "$RESULTS"' EXIT
step() { "$@" 2>&1 | tee -a "$RESULTS"; }

say "Formatting (cargo fmt --all --check)"
cargo fmt --all --check || die "code is not formatted: run cargo fmt --all"

say "Lints (cargo clippy --workspace --all-targets --features pg$PG_MAJOR -- -D warnings)"
cargo clippy --release --workspace --all-targets --features "pg$PG_MAJOR" -- -D warnings ||
    die "clippy found problems (above)"

say "causal-core: unit, property ($CAUSAL_PROPTEST_CASES cases each) and conformance tests"
step cargo test --release -p causal-core -- --nocapture

say "causal-sync: unit tests"
step cargo test --release -p causal-sync

say "pg_causal: #[pg_test]s inside PostgreSQL $PG_MAJOR"
mkdir -p "$PGRX_DATA"
chmod 755 "$RUN_DIR"
[ "$(id -u)" -ne 0 ] || chown postgres:postgres "$PGRX_DATA"
step cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$PGRX_DATA"

install_extension

say "Integration tests against real clusters (in $IT_DIR)"
export CAUSAL_IT_DIR="$IT_DIR" CAUSAL_PG_BIN="$PG_BIN"
step cargo test --release -p causal-integration -- --test-threads=2

# One closing line for the whole run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$RESULTS"
