-- pg_causal 0.1.0 -> 0.2.0
--
-- The capture state records WAL that was never decoded (a slot created again after a
-- failover). And the data format: the sealer now signs only each author's
-- last entry of a sealing run, and the entries before it carry no signature (a later entry
-- of the same author covers them). Entries written by 0.1.0 are all signed and stay valid.
-- Bundles are written in format pg_causal-bundle/2 and the sync protocol is
-- /pg_causal/sync/2: nodes still on 0.1.0 refuse both, so upgrade every node of a group.

ALTER TABLE causal.capture_state
    ADD COLUMN unsealed_from pg_lsn,
    ADD COLUMN unsealed_to pg_lsn,
    ADD COLUMN unsealed_found_at timestamptz;

CREATE OR REPLACE VIEW causal.capture_status AS
SELECT s.slot_name,
       s.sealed_lsn,
       pg_catalog.pg_current_wal_lsn() AS current_lsn,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.sealed_lsn) AS unsealed_wal_bytes,
       s.transactions AS transactions_sealed,
       s.sealed_at,
       s.last_commit_time AS last_sealed_commit_time,
       s.sealed_at - s.last_commit_time AS last_sealing_delay,
       r.restart_lsn,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), r.restart_lsn) AS retained_wal_bytes,
       s.unsealed_from,
       s.unsealed_to,
       s.unsealed_found_at
FROM causal.capture_state s
LEFT JOIN pg_catalog.pg_replication_slots r USING (slot_name);
