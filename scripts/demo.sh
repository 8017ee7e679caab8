#!/usr/bin/env bash
# The main job: sets up, builds and installs pg_causal, starts three throwaway PostgreSQL
# clusters on loopback (each with pg_causal preloaded and its sync worker listening on a port
# of its own), and runs a scripted story: a shared group, live replication, a partition with
# concurrent writes, a revocation that cancels a concurrent insert, reconnection, and
# convergence. The clusters keep running afterwards; `bash scripts/demo.sh stop` stops them.
source "$(dirname "$0")/common.sh"
DEMO_DIR="$RUN_DIR/demo"

if [ "${1:-}" = "stop" ]; then
    stop_clusters_under "$DEMO_DIR"
    say "Stopped the demo clusters under $DEMO_DIR"
    exit 0
fi

ensure_setup
install_extension

stop_clusters_under "$DEMO_DIR"
rm -rf "$DEMO_DIR"
trap 'say "The demo failed; stopping its clusters"; stop_clusters_under "$DEMO_DIR"' ERR
declare -A PORT P2P
for n in 1 2 3; do
    PORT[$n]="$(free_port)"
    P2P[$n]="$(free_port)"
    printf "shared_preload_libraries = 'pg_causal'\ncausal.listen_addresses = '/ip4/127.0.0.1/tcp/%s'\n" "${P2P[$n]}" |
        start_cluster "$DEMO_DIR/node$n" "${PORT[$n]}"
done
say "Three clusters, each with its sync worker: node1 on port ${PORT[1]}, node2 on ${PORT[2]}, node3 on ${PORT[3]} (under $DEMO_DIR)"

# on N SQL...: runs SQL on node N, echoing it; q N SQL: one value, quietly.
on() {
    local n="$1"
    shift
    printf '\n\033[1;36m-- node%s\033[0m\n' "$n"
    as_postgres psql -X -h "$DEMO_DIR/node$n/sock" -p "${PORT[$n]}" -U postgres -d postgres --echo-queries \
        -v ON_ERROR_STOP=1 -P footer=off "$@"
}
q() { local n="$1"; shift; as_postgres psql -X -h "$DEMO_DIR/node$n/sock" -p "${PORT[$n]}" -U postgres -d postgres -At -v ON_ERROR_STOP=1 -c "$*"; }
# wait_until WHAT SHELL-CONDITION: polls for up to a minute.
wait_until() {
    local what="$1" cond="$2"
    for _ in $(seq 1 600); do
        if eval "$cond"; then
            echo "   ... $what"
            return 0
        fi
        sleep 0.1
    done
    die "timed out waiting until $what"
}
# (A node that has not received the group yet has no frontier for it: not equal, no error.)
same_frontier() {
    [ "$(q 1 "SELECT causal.frontier('$G')")" = \
      "$(q "$1" "SELECT CASE WHEN EXISTS (SELECT 1 FROM causal.groups WHERE group_id = '$G') THEN causal.frontier('$G') END")" ]
}

say "1. Every node has an identity; node1 creates the group 'shop' and its tables"
for n in 1 2 3; do q "$n" "CREATE EXTENSION pg_causal" >/dev/null; done
on 1 -c "SELECT name, key_id FROM causal.identities" \
     -c "SELECT causal.create_group('shop') AS group_id" \
     -c "CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2) CHECK (price >= 0))" \
     -c "CREATE TABLE writers (key_id text PRIMARY KEY, note text)" \
     -c "CREATE TABLE orders (id int PRIMARY KEY, sku text NOT NULL REFERENCES products (sku), qty int NOT NULL CHECK (qty > 0))" \
     -c "SELECT causal.replicate('shop', t) FROM unnest(array['products', 'writers', 'orders']) t" \
     -c "SELECT causal.allow('orders', 'insert', \$\$exists(writers where writers.key_id = \$author)\$\$)"
G="$(q 1 "SELECT group_id FROM causal.groups WHERE name = 'shop'")"
K2="$(q 2 "SELECT public_key FROM causal.identities WHERE is_node")"
K3="$(q 3 "SELECT public_key FROM causal.identities WHERE is_node")"
ID3="$(q 3 "SELECT key_id FROM causal.identities WHERE is_node")"
on 1 -c "SELECT causal.add_member('shop', '$K2', 'node2')" -c "SELECT causal.add_member('shop', '$K3', 'node3')" \
     -c "INSERT INTO products VALUES ('P1', 'Widget', 9.99), ('P2', 'Gadget', 24.50)" \
     -c "INSERT INTO writers VALUES ('$ID3', 'node3 may place orders')"

say "2. The nodes become peers (addresses from causal.node_addresses()); node2 and node3 join the group over the network"
A1="$(q 1 "SELECT (causal.node_addresses())[1]")"
A2="$(q 2 "SELECT (causal.node_addresses())[1]")"
A3="$(q 3 "SELECT (causal.node_addresses())[1]")"
on 2 -c "SELECT causal.add_peer('$A1'), causal.add_peer('$A3')" -c "SELECT causal.join_group('$G')"
on 3 -c "SELECT causal.add_peer('$A1'), causal.add_peer('$A2')" -c "SELECT causal.join_group('$G')"
q 1 "SELECT causal.add_peer('$A2'), causal.add_peer('$A3')" >/dev/null
wait_until "node2 and node3 hold the group, its tables and rows" "same_frontier 2 && same_frontier 3"
wait_until "node3 reports both peers connected" "[ \"\$(q 3 'SELECT count(*) FROM causal.peers WHERE connected')\" = 2 ]"
on 3 -c "SELECT * FROM products ORDER BY sku" -c "SELECT peer_id, connected, entries_received FROM causal.peers ORDER BY peer_id"

say "3. Live: a write on node2 appears on node1 and node3"
on 2 -c "INSERT INTO products VALUES ('P3', 'Gizmo', 5.00)"
wait_until "node1 and node3 see it" "[ \"\$(q 1 \"SELECT count(*) FROM products WHERE sku = 'P3'\")\" = 1 ] && [ \"\$(q 3 \"SELECT count(*) FROM products WHERE sku = 'P3'\")\" = 1 ]"
on 1 -c "SELECT * FROM products ORDER BY sku"

say "4. A partition: node3 is cut off (every side forgets the other)"
CUT="$(q 1 "SELECT now()")"
q 1 "SELECT causal.remove_peer('$A3')" >/dev/null
q 2 "SELECT causal.remove_peer('$A3')" >/dev/null
on 3 -c "SELECT causal.remove_peer('$A1'), causal.remove_peer('$A2')"
# A report newer than the cut, with no connected peer.
cut_off() { [ "$(q "$1" "SELECT count(*) FROM causal.peers WHERE connected AND peer_id = '$2'") $(q "$1" "SELECT reported_at > '$CUT' FROM causal.sync_worker")" = "0 t" ]; }
P1="$(q 1 "SELECT causal.node_peer_id()")"; P2="$(q 2 "SELECT causal.node_peer_id()")"; P3="$(q 3 "SELECT causal.node_peer_id()")"
wait_until "node3 is disconnected from node1 and node2" "cut_off 3 $P1 && cut_off 3 $P2 && cut_off 1 $P3 && cut_off 2 $P3"

say "5. Concurrent writes while partitioned"
echo "   node1 and node3 both reprice P1; node2 renames it (another column)."
echo "   node1 revokes node3's right to place orders, while node3, not knowing, places one."
on 1 -c "UPDATE products SET price = 11.00 WHERE sku = 'P1'" -c "DELETE FROM writers WHERE key_id = '$ID3'"
on 2 -c "UPDATE products SET name = 'Widget Pro' WHERE sku = 'P1'"
on 3 -c "UPDATE products SET price = 12.50 WHERE sku = 'P1'" -c "INSERT INTO orders VALUES (1, 'P2', 3)" \
     -c "SELECT * FROM orders"

say "6. Reconnect"
on 3 -c "SELECT causal.add_peer('$A1'), causal.add_peer('$A2')"
q 1 "SELECT causal.add_peer('$A3')" >/dev/null
q 2 "SELECT causal.add_peer('$A3')" >/dev/null
wait_until "all three frontiers are equal" "same_frontier 2 && same_frontier 3"

say "7. Converged: the same tables and the same verdicts on every node"
for n in 1 2 3; do
    on "$n" -c "SELECT * FROM products ORDER BY sku" -c "SELECT count(*) AS orders FROM orders"
done
on 1 -c "SELECT left(hash, 10) AS hash, op, status, reason FROM causal.log('shop', 6)"
CANCELLED="$(q 1 "SELECT hash FROM causal.log('shop', 1000) WHERE status = 'cancelled' LIMIT 1")"
on 3 -c "SELECT jsonb_pretty(causal.explain('$CANCELLED'))"
on 1 -c "SELECT group_name, worker, entries_imported FROM causal.sync_status"

trap - ERR
say "Demo finished. The three nodes keep running and syncing:"
for n in 1 2 3; do
    echo "   node$n:  sudo -u postgres psql -h $DEMO_DIR/node$n/sock -p ${PORT[$n]} -U postgres -d postgres"
done
echo "   Try an INSERT INTO products on one node and SELECT it on another."
echo "   Stop everything with:  bash scripts/demo.sh stop"
