#!/usr/bin/env bash
# The main job: sets up, builds and installs pg_causal, starts two throwaway PostgreSQL
# clusters on free loopback ports, runs a scripted story (a group, replicated tables, a rule,
# signed history on node 1; export, then import into node 2) and stops both clusters.
source "$(dirname "$0")/common.sh"
ensure_setup
install_extension

DEMO_DIR="$RUN_DIR/demo"
stop_clusters_under "$DEMO_DIR"
rm -rf "$DEMO_DIR"
trap 'stop_cluster "$DEMO_DIR/node1"; stop_cluster "$DEMO_DIR/node2"' EXIT
PORT1="$(free_port)"
start_cluster "$DEMO_DIR/node1" "$PORT1" </dev/null
PORT2="$(free_port)"
start_cluster "$DEMO_DIR/node2" "$PORT2" </dev/null
say "Two throwaway clusters: node1 on 127.0.0.1:$PORT1, node2 on 127.0.0.1:$PORT2 (under $DEMO_DIR)"

psql_on() { local port="$1" node="$2"; shift 2; as_postgres psql -X -h "$DEMO_DIR/$node/sock" -p "$port" -U postgres -d postgres "$@"; }

say "Node 1: a group, replicated tables, a rule, and signed history"
psql_on "$PORT1" node1 --echo-queries -v ON_ERROR_STOP=1 -f - <"$ROOT/sql/demo.sql"

say "Export node 1's history as a bundle, and import it into node 2"
BUNDLE="$(psql_on "$PORT1" node1 -At -v ON_ERROR_STOP=1 -c "SELECT encode(causal.export('shop'), 'base64')")"
psql_on "$PORT2" node2 --echo-queries -v ON_ERROR_STOP=1 -v bundle="$BUNDLE" -f - <"$ROOT/sql/demo_node2.sql"

say "Stopping both clusters"
stop_cluster "$DEMO_DIR/node1"
stop_cluster "$DEMO_DIR/node2"
trap - EXIT
say "Demo finished. Live peer-to-peer sync replaces the export/import step once the sync worker lands."
