#!/usr/bin/env bash
# Runs every test: causal-core's unit, property and conformance tests, the sync worker's
# tests, the #[pg_test]s inside PostgreSQL, and the integration tests against real clusters.
# CI (.ci/run) runs exactly this script.
#
# CAUSAL_PROPTEST_CASES sets the number of random cases per property (default 1000 here).
source "$(dirname "$0")/common.sh"
ensure_setup
cd "$ROOT"

IT_DIR="$ROOT/target/it-clusters"
cleanup() { stop_clusters_under "$IT_DIR"; stop_clusters_under "$ROOT/target/pgrx-test-data"; }
trap cleanup EXIT
cleanup
rm -rf "$IT_DIR"

export CAUSAL_PROPTEST_CASES="${CAUSAL_PROPTEST_CASES:-1000}"

say "causal-core: unit, property ($CAUSAL_PROPTEST_CASES cases each) and conformance tests"
cargo test --release -p causal-core

say "causal-sync: unit tests"
cargo test --release -p causal-sync

say "pg_causal: #[pg_test]s inside PostgreSQL $PG_MAJOR"
PGRX_DATA="$ROOT/target/pgrx-test-data"
mkdir -p "$PGRX_DATA"
[ "$(id -u)" -ne 0 ] || chown postgres:postgres "$PGRX_DATA"
cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$PGRX_DATA"

install_extension

say "Integration tests against real clusters (in $IT_DIR)"
export CAUSAL_IT_DIR="$IT_DIR" CAUSAL_PG_BIN="$PG_BIN"
cargo test --release -p causal-integration -- --test-threads=2
