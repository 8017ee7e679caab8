-- Node 1 of scripts/demo.sh: a group, a replicated table, a rule, some history.
\pset footer off
CREATE EXTENSION pg_causal;
SELECT causal.node_id() AS node1_key_id;

-- Canonical JSON hashing, byte-compatible with the Hyper Hyper Space v3 DAG format.
SELECT causal.hash('{"b": 1, "a": [1, 2.50]}') AS blake3,
       causal.hash('{"a":[1,2.5],"b":1}')      AS same_value_respelled;

-- A replication group; its id is the hash of its signed genesis entry.
SELECT causal.create_group('shop') AS group_id;

-- Tables go into the group; their schema is derived from the catalog.
CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2) CHECK (price >= 0));
CREATE TABLE editors (key_id text PRIMARY KEY, role text NOT NULL);
SELECT causal.replicate('shop', 'editors');
SELECT causal.replicate('shop', 'products');
SELECT group_name, table_name, columns, primary_key FROM causal.tables;

-- Only editors may insert products.
SELECT causal.allow('products', 'insert', $$exists(editors where editors.key_id = $author)$$);

-- Refused: this node is not an editor yet (42501, before anything is committed).
\set ON_ERROR_STOP 0
INSERT INTO products VALUES ('A', 'Widget', 9.99);
\set ON_ERROR_STOP 1

INSERT INTO editors VALUES (causal.node_id(), 'editor');
-- One transaction, one signed entry.
BEGIN;
INSERT INTO products VALUES ('A', 'Widget', 9.99), ('B', 'Gadget', 24.50);
UPDATE products SET price = 8.99 WHERE sku = 'A';
COMMIT;

SELECT left(hash, 12) AS hash, op, status FROM causal.log('shop');
SELECT causal.verify('shop') AS history_verifies;
