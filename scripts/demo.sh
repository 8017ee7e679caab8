#!/usr/bin/env bash
# The main job: sets up, builds and installs pg_causal, starts a throwaway PostgreSQL cluster
# on a free loopback port, runs a short scripted SQL session and stops the cluster.
source "$(dirname "$0")/common.sh"
ensure_setup
install_extension

DEMO_DIR="$RUN_DIR/demo"
stop_clusters_under "$DEMO_DIR"
rm -rf "$DEMO_DIR"
PORT="$(free_port)"
trap 'stop_cluster "$DEMO_DIR/node1"' EXIT
say "Starting a throwaway cluster in $DEMO_DIR/node1 on 127.0.0.1:$PORT"
start_cluster "$DEMO_DIR/node1" "$PORT" </dev/null

say "Scripted SQL session"
as_postgres psql -X -h "$DEMO_DIR/node1/sock" -p "$PORT" -U postgres -d postgres \
    --echo-queries -v ON_ERROR_STOP=1 -f - <"$ROOT/sql/demo.sql"

say "Stopping the cluster"
stop_cluster "$DEMO_DIR/node1"
trap - EXIT
say "Demo finished"
