-- pg_causal 0.1.0 -> 0.2.0
--
-- The capture state records WAL that was never decoded (a slot created again after a
-- failover) and how many rows its commits changed, sealed from the tables; the sync worker's state gains traffic, offences and queue depths, shown by the
-- new views causal.stat_worker and causal.stat_peers. And the data format: the sealer now signs only each author's
-- last entry of a sealing run, and the entries before it carry no signature (a later entry
-- of the same author covers them). Entries written by 0.1.0 are all signed and stay valid.
-- Bundles are written in format pg_causal-bundle/2 and the sync protocol is
-- /pg_causal/sync/2: nodes still on 0.1.0 refuse both, so upgrade every node of a group.
-- A cancellation records its kind and row (journal.cause, shown by causal.cancellations and
-- sent on causal_cancelled), and a group may have a cancellation hook. Journal records of
-- entries placed in a line (consecutive node ids and heights) with all their rows new are kept as runs
-- (causal.journal_runs); the records 0.1.0 wrote stay rows.

ALTER TABLE causal.capture_state
    ADD COLUMN unsealed_from pg_lsn,
    ADD COLUMN unsealed_to pg_lsn,
    ADD COLUMN unsealed_found_at timestamptz,
    ADD COLUMN recaptured_rows bigint;

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
       s.unsealed_found_at,
       s.recaptured_rows
FROM causal.capture_state s
LEFT JOIN pg_catalog.pg_replication_slots r USING (slot_name);

ALTER TABLE causal.sync_worker
    ADD COLUMN queues jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN notifications_dropped bigint NOT NULL DEFAULT 0,
    ADD COLUMN resyncs bigint NOT NULL DEFAULT 0;
ALTER TABLE causal.sync_peer_state
    ADD COLUMN bytes_in bigint NOT NULL DEFAULT 0,
    ADD COLUMN bytes_out bigint NOT NULL DEFAULT 0,
    ADD COLUMN entries_sent bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_offence text,
    ADD COLUMN last_offence_at timestamptz,
    ADD COLUMN last_error text,
    ADD COLUMN last_error_at timestamptz;

CREATE VIEW causal.stat_worker AS
SELECT w.pid,
       w.peer_id,
       w.addresses,
       w.started_at,
       w.reported_at - w.started_at AS uptime,
       w.reported_at,
       w.reported_at > now() - interval '10 seconds' AS running,
       w.queues,
       w.notifications_dropped,
       w.resyncs
FROM causal.sync_worker w;
GRANT SELECT ON causal.stat_worker TO PUBLIC;

CREATE VIEW causal.stat_peers AS
SELECT p.peer_id,
       p.address,
       p.connected,
       p.last_seen,
       p.bytes_in,
       p.bytes_out,
       p.entries_received AS entries_in,
       p.entries_sent AS entries_out,
       p.entries_rejected,
       p.last_offence,
       p.last_offence_at,
       p.score,
       p.banned_until,
       coalesce(p.banned_until > now(), false) AS banned,
       p.last_error,
       p.last_error_at
FROM causal.sync_peer_state p;
GRANT SELECT ON causal.stat_peers TO PUBLIC;

ALTER TABLE causal.journal ADD COLUMN cause jsonb;

CREATE OR REPLACE VIEW causal.cancellations AS
SELECT g.name AS group_name,
       g.group_id,
       e.hash AS entry,
       e.payload::jsonb ->> 'author' AS author,
       EXISTS (SELECT 1 FROM causal.identity_keys k WHERE k.key_id = e.payload::jsonb ->> 'author') AS local,
       j.reason,
       j.responsible AS cancelled_by,
       e.received_at AS stored_at,
       j.cause ->> 'code' AS code,
       j.cause ->> 'table' AS table_name,
       j.cause ->> 'key' AS row_key
FROM causal.journal j
JOIN causal.dag_entries e ON e.grp = j.grp AND e.node_id = j.node_id
JOIN causal.group_defs g ON g.grp = j.grp
WHERE j.status = 'cancelled';

CREATE TABLE causal.cancellation_hooks (
    group_id   text PRIMARY KEY,
    hook       regprocedure NOT NULL,
    run_as     regrole NOT NULL,
    set_at     timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON causal.cancellation_hooks FROM PUBLIC;
GRANT SELECT ON causal.cancellation_hooks TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('causal.cancellation_hooks', '');

CREATE FUNCTION causal.set_cancellation_hook(
	"grp" TEXT,
	"hook" TEXT
) RETURNS bool
LANGUAGE c
AS 'MODULE_PATHNAME', 'set_cancellation_hook_wrapper';

-- Long operations under way (shared memory; see causal.progress).
CREATE FUNCTION causal._progress() RETURNS TABLE (
	"pid" INT,
	"operation" TEXT,
	"group_id" TEXT,
	"done" bigint,
	"total" bigint,
	"started_ms" bigint,
	"updated_ms" bigint
)
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', '_progress_wrapper';

CREATE VIEW causal.progress AS
SELECT p.pid,
       p.operation,
       g.name AS group_name,
       p.group_id,
       p.done,
       p.total,
       CASE WHEN p.total > 0 THEN round(100.0 * p.done / p.total, 1) END AS percent,
       to_timestamp(p.started_ms / 1000.0) AS started_at,
       to_timestamp(p.updated_ms / 1000.0) AS updated_at
FROM causal._progress() p
LEFT JOIN causal.group_defs g ON g.group_id = p.group_id
UNION ALL
-- The sync worker's fetches as a whole, from its last report (every few seconds): 'joining' a
-- group this database does not have yet, 'fetching' missing history of one it has.
SELECT w.pid,
       CASE WHEN g.grp IS NULL THEN 'joining' ELSE 'fetching' END,
       g.name,
       s.group_id,
       s.imported,
       s.imported + s.to_fetch,
       round(100.0 * s.imported / (s.imported + s.to_fetch), 1),
       NULL::timestamptz,
       coalesce(s.last_progress, w.reported_at)
FROM causal.sync_group_state s
JOIN causal.sync_worker w ON w.reported_at > now() - interval '10 seconds'
LEFT JOIN causal.group_defs g ON g.group_id = s.group_id
WHERE s.to_fetch > 0;
GRANT SELECT ON causal.progress TO PUBLIC;

-- The sync worker's placing call: places sealed local commits without sealing first.
CREATE FUNCTION causal."_place_sealed"(
	"max_rows" bigint
) RETURNS bigint
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'place_sealed_wrapper';

-- The sync worker's sealing in two backends: one decodes, the other seals what it decoded.
CREATE FUNCTION causal."_decode_commits"(
	"max_rows" INT
) RETURNS bytea
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'decode_commits_sql_wrapper';

CREATE FUNCTION causal."_seal_decoded"(
	"batch" bytea
) RETURNS bigint
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'seal_decoded_sql_wrapper';

-- Row metadata is found by a btree on (octet_length(key), key): new serial keys go to its
-- right edge, where the hash index took each at a random page (see catalog.sql).
DROP INDEX causal.row_meta_key;
CREATE INDEX row_meta_key ON causal.row_meta (octet_length(key), key);

-- Entry rows are packed (catalog.sql, src/catalog/entry_row.rs): predecessors and clock in
-- `links`, the hash and payload hash as bytes, the author's key numbered in
-- causal.entry_authors and cut from the payload text (rows written from now on also code the
-- fragments operations repeat, and keep no payload hash that is the text's digest;
-- causal_core::stored_payload); the predecessors' hashes (`prev`) are no longer kept (readers
-- take them from the predecessors' node ids). The table is rebuilt in the new column order,
-- with the two views that read it.
CREATE FUNCTION causal."_entry_payload"(
	"author" INT,
	"payload" TEXT
) RETURNS TEXT
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_entry_payload_wrapper';

CREATE FUNCTION causal."_entry_payload_hash"(
	"grp" INT,
	"author" INT,
	"payload" TEXT,
	"payload_hash" bytea
) RETURNS TEXT
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_entry_payload_hash_wrapper';

CREATE FUNCTION causal."_hash_bytes"(
	"hash" TEXT
) RETURNS bytea
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_hash_bytes_wrapper';

CREATE FUNCTION causal."_entry_preds"(
	"node_id" INT,
	"links" bytea
) RETURNS INT[]
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_entry_preds_wrapper';

CREATE FUNCTION causal."_entry_clock"(
	"node_id" INT,
	"links" bytea
) RETURNS INT[]
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_entry_clock_wrapper';

CREATE FUNCTION causal."_pack_entry_links"(
	"node_id" INT,
	"preds" INT[],
	"clock" INT[]
) RETURNS bytea
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_pack_entry_links_wrapper';

CREATE SEQUENCE causal.entry_author_numbers AS integer;
CREATE TABLE causal.entry_authors (
    author      integer PRIMARY KEY DEFAULT nextval('causal.entry_author_numbers'),
    key_id      text COLLATE "C" NOT NULL UNIQUE
);
-- The same test as causal_core::stored_payload::store: the payload starts with the author's
-- key in plain Base64, followed by the next field or the object's end, and holds no control
-- character that stands for a fragment. Rows written before keep their fragments uncoded.
INSERT INTO causal.entry_authors (key_id)
SELECT DISTINCT k FROM causal.dag_entries e,
       LATERAL (SELECT (regexp_match(e.payload, '^\{"author":"([A-Za-z0-9+/=_-]{1,64})"[,}]'))[1]) AS x(k)
WHERE k IS NOT NULL ORDER BY k;

DROP VIEW causal.cancellations;
DROP VIEW causal.stat_groups;
ALTER TABLE causal.dag_entries RENAME TO dag_entries_0_1;
ALTER INDEX causal.dag_entries_pkey RENAME TO dag_entries_0_1_pkey;
ALTER INDEX causal.dag_entries_grp_chain_seq_key RENAME TO dag_entries_0_1_grp_chain_seq_key;
ALTER INDEX causal.dag_entries_hash RENAME TO dag_entries_0_1_hash;
CREATE TABLE causal.dag_entries (
    grp         integer NOT NULL,
    node_id     integer NOT NULL,
    chain       integer NOT NULL,
    seq         integer NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    author      integer,
    hash        bytea NOT NULL,
    payload_hash bytea NOT NULL,
    links       bytea NOT NULL,
    payload     text COMPRESSION lz4 NOT NULL,
    PRIMARY KEY (grp, node_id) WITH (fillfactor = 100),
    UNIQUE (grp, chain, seq) WITH (fillfactor = 100)
);
INSERT INTO causal.dag_entries
SELECT e.grp, e.node_id, e.chain, e.seq, e.received_at, a.author, decode(e.hash, 'base64'), decode(e.payload_hash, 'base64'),
       causal._pack_entry_links(e.node_id, e.preds, e.clock),
       CASE WHEN a.author IS NULL THEN e.payload ELSE substr(e.payload, 13 + length(a.key_id)) END
FROM causal.dag_entries_0_1 e
LEFT JOIN causal.entry_authors a
       ON a.key_id = (regexp_match(e.payload, '^\{"author":"([A-Za-z0-9+/=_-]{1,64})"[,}]'))[1]
      AND e.payload !~ '[\x01-\x08\x0b\x0c\x0e-\x1f]';
-- A member table dropped alone would stay in the extension's list of tables pg_dump dumps.
ALTER EXTENSION pg_causal DROP TABLE causal.dag_entries_0_1;
DROP TABLE causal.dag_entries_0_1;
CREATE INDEX dag_entries_hash ON causal.dag_entries USING hash (hash) WITH (fillfactor = 90);
REVOKE ALL ON causal.dag_entries, causal.entry_authors FROM PUBLIC;
GRANT SELECT ON causal.dag_entries, causal.entry_authors TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('causal.dag_entries', '');
SELECT pg_catalog.pg_extension_config_dump('causal.entry_authors', '');
SELECT pg_catalog.pg_extension_config_dump('causal.entry_author_numbers', '');
ANALYZE causal.dag_entries;

CREATE OR REPLACE FUNCTION causal._restored_node_identity() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NEW.is_node THEN
        DELETE FROM causal.identity_keys k
         WHERE k.is_node AND k.key_id <> NEW.key_id
           AND NOT EXISTS (SELECT 1 FROM causal.entries e WHERE (e.payload::jsonb ->> 'author') = k.key_id);
    END IF;
    RETURN NEW;
END $$;

CREATE VIEW causal.cancellations AS
SELECT g.name AS group_name,
       g.group_id,
       encode(e.hash, 'base64') AS entry,
       a.author,
       EXISTS (SELECT 1 FROM causal.identity_keys k WHERE k.key_id = a.author) AS local,
       j.reason,
       j.responsible AS cancelled_by,
       e.received_at AS stored_at,
       j.cause ->> 'code' AS code,
       j.cause ->> 'table' AS table_name,
       j.cause ->> 'key' AS row_key
FROM causal.journal j
JOIN causal.dag_entries e ON e.grp = j.grp AND e.node_id = j.node_id
JOIN causal.group_defs g ON g.grp = j.grp
CROSS JOIN LATERAL (SELECT CASE WHEN e.author IS NULL THEN e.payload::jsonb ->> 'author'
                                ELSE (SELECT k.key_id FROM causal.entry_authors k WHERE k.author = e.author) END) AS a(author)
WHERE j.status = 'cancelled';
GRANT SELECT ON causal.cancellations TO PUBLIC;

CREATE VIEW causal.stat_groups AS
SELECT g.name AS group_name,
       g.group_id,
       g.entry_count::bigint AS entries,
       pg_catalog.cardinality(g.frontier) AS frontier_size,
       (g.entry_count - g.reconciled_count)::bigint AS unplaced,
       (SELECT count(*) FROM causal.journal j WHERE j.grp = g.grp AND j.status = 'cancelled') AS cancelled,
       (SELECT max(e.received_at) FROM causal.dag_entries e WHERE e.grp = g.grp) AS last_entry_at,
       c.unsealed_wal_bytes,
       c.last_sealing_delay
FROM causal.group_defs g
LEFT JOIN causal.capture_status c ON true;
GRANT SELECT ON causal.stat_groups TO PUBLIC;

-- Entry rows decoded (src/catalog/entry_row.rs).
CREATE VIEW causal.entries AS
SELECT e.grp,
       e.node_id,
       encode(e.hash, 'base64') AS hash,
       causal._entry_payload(e.author, e.payload) AS payload,
       causal._entry_payload_hash(e.grp, e.author, e.payload, e.payload_hash) AS payload_hash,
       e.chain,
       e.seq,
       causal._entry_preds(e.node_id, e.links) AS preds,
       causal._entry_clock(e.node_id, e.links) AS clock,
       e.received_at
FROM causal.dag_entries e;
GRANT SELECT ON causal.entries TO PUBLIC;

-- Rows that one entry inserted and no entry wrote since, kept as sets: per group and table,
-- the sorted keys of the rows a placement run created and, at the same positions, the node
-- ids of the entries that inserted them. Such a row is what a `row_meta` row with no values
-- kept and metadata `{"i": <node id>, "p": true}` says, in about 8 bytes instead of 134
-- (heap and index), and it is only written for tables with no UNIQUE constraint, no foreign
-- key and no rule scanning them (the others keep lookup values). A `row_meta` row of the same
-- key comes first: an update, delete or merge writes one, and the set's entry is left as it is.
-- Sets of one table are disjoint in (octet_length(key), key) order, between their bounds
-- first_key and last_key, so the one set that may hold a key is the last that starts at or
-- before it (one probe of the index below). A placement run whose new keys fall inside an
-- existing set's bounds writes those keys as `row_meta` rows instead. Keys a rewind removes
-- are taken out of their set; its bounds stay. When a rule comes to scan a table, its sets
-- become `row_meta` rows with all their values.
CREATE TABLE causal.fresh_rows (
    grp        integer NOT NULL,
    table_name text COLLATE "C" NOT NULL,
    first_key  text COLLATE "C" NOT NULL,
    last_key   text COLLATE "C" NOT NULL,
    keys       text[] COMPRESSION lz4 COLLATE "C" NOT NULL,
    nodes      integer[] COMPRESSION lz4 NOT NULL
);
CREATE UNIQUE INDEX fresh_rows_first ON causal.fresh_rows (grp, table_name, octet_length(first_key), first_key);
REVOKE ALL ON causal.fresh_rows FROM PUBLIC;
GRANT SELECT ON causal.fresh_rows TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('causal.fresh_rows', '');

-- Every placed row with its causal metadata, whether `row_meta` or a set of fresh rows holds it.
CREATE VIEW causal.placed_rows AS
SELECT grp, table_name, key, vals, meta FROM causal.row_meta
UNION ALL
SELECT f.grp, f.table_name, k.key, '{}'::jsonb, jsonb_build_object('i', k.node, 'p', true)
  FROM causal.fresh_rows f CROSS JOIN LATERAL unnest(f.keys, f.nodes) AS k(key, node)
 WHERE NOT EXISTS (SELECT FROM causal.row_meta m
                    WHERE octet_length(m.key) = octet_length(k.key) AND m.key = k.key
                      AND m.grp = f.grp AND m.table_name = f.table_name);
GRANT SELECT ON causal.placed_rows TO PUBLIC;

-- Journal records kept as runs: entries with node ids first_node to last_node, placed for the
-- first time in one placing run, each of height one more than the one before it (as a
-- writer's commits and a peer's imported commits are, each on the one before), whose rows
-- were all new and which stand. Each is what a `journal` row of height
-- first_height + (node_id - first_node), status 'ok' and an empty undo says, in about a byte
-- instead of 68 (a tuple and two index entries). A `journal` row of the same entry comes
-- first: when an entry of a run is rewound and placed again, its record is written as a row,
-- and the run is left as it is (an entry's height never changes: it is its place in the DAG).
-- Runs are found by node id (the last one starting at or before it) and by their last
-- height, for the records from a height on.
CREATE TABLE causal.journal_runs (
    grp          integer NOT NULL,
    first_node   integer NOT NULL,
    last_node    integer NOT NULL,
    first_height integer NOT NULL,
    PRIMARY KEY (grp, first_node),
    CHECK (last_node >= first_node)
);
CREATE INDEX journal_runs_last_height ON causal.journal_runs (grp, (first_height + (last_node - first_node)));
REVOKE ALL ON causal.journal_runs FROM PUBLIC;
GRANT SELECT ON causal.journal_runs TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('causal.journal_runs', '');
