-- The scripted session of scripts/demo.sh. It runs against a throwaway cluster.
\pset footer off
CREATE EXTENSION pg_causal;
\dx pg_causal
SELECT causal.version();

-- Canonical JSON hashing, byte-compatible with the Hyper Hyper Space v3 DAG format:
-- key order, whitespace and number spelling do not change the hash.
SELECT causal.hash('{"b": 1, "a": [1, 2.50]}') AS blake3,
       causal.hash('{"a":[1,2.5],"b":1}')      AS same_value_respelled;
SELECT causal.hash('{"op":"hello"}', 'sha-256') AS sha256;

-- Bad input gets a clear error with SQLSTATE 22023 and a hint.
\set VERBOSITY verbose
\set ON_ERROR_STOP 0
SELECT causal.hash('1', 'md5');
SELECT causal.hash('{"price": null}');
\set ON_ERROR_STOP 1
\set VERBOSITY default
