#!/usr/bin/env bash
# Bytes on disk per row, alone (bench/capture.sh measures the same among its other figures):
# a plain and a replicated table after the same 20k single-row and 50k bulk rows went into
# each, and where schema causal's growth went, relation by relation. About a minute.
# Usage: bash bench/bytes.sh
source "$(dirname "$0")/../scripts/common.sh"
ensure_setup
install_extension
bench_log bytes
DIR="$RUN_DIR/bench-bytes"
stop_clusters_under "$DIR"
rm -rf "$DIR"
PORT="$(free_port)"
trap 'stop_cluster "$DIR/node"; rm -rf "$DIR"' EXIT
printf 'shared_buffers = 256MB\nmax_wal_size = 4GB\nsynchronous_commit = off\n' | start_cluster "$DIR/node" "$PORT"
BENCH_NODE="$DIR/node"
BENCH_PORT="$PORT"
source "$ROOT/bench/bytes_per_row.sh"
bytes_per_row
bench_json
