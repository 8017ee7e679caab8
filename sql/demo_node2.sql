-- Node 2 of scripts/demo.sh: import node 1's history, air-gapped style.
\pset footer off
CREATE EXTENSION pg_causal;
\set ECHO none
\echo 'SELECT causal.import(<the bundle node 1 exported>) AS import_result;'
SELECT causal.import(decode(:'bundle', 'base64')) AS import_result;
\set ECHO queries
-- The group, its tables and their rows arrived, verified entry by entry.
SELECT name, tables, entry_count FROM causal.groups;
SELECT * FROM products ORDER BY sku;
SELECT causal.verify('shop') AS history_verifies;
