-- pg_causal catalog. Owned by the extension's owner; other roles get no rights except those
-- granted below, so only the extension's functions (running as the owner, or as a caller
-- the owner trusts) write these tables.

-- Identities: ed25519 key pairs this database can author entries with.
CREATE TABLE causal.identity_keys (
    name        text PRIMARY KEY CHECK (name <> ''),
    key_id      text NOT NULL UNIQUE,
    public_key  text NOT NULL,
    secret_key  bytea NOT NULL,
    is_node     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX identity_keys_one_node ON causal.identity_keys (is_node) WHERE is_node;
-- pg_restore loads the dumped node identity after CREATE EXTENSION made a fresh one: the
-- fresh one gives way if it never signed anything, so a restored database is the same node.
CREATE FUNCTION causal._restored_node_identity() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NEW.is_node THEN
        DELETE FROM causal.identity_keys k
         WHERE k.is_node AND k.key_id <> NEW.key_id
           AND NOT EXISTS (SELECT 1 FROM causal.entries e WHERE (e.payload::jsonb ->> 'author') = k.key_id);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER restored_node_identity BEFORE INSERT ON causal.identity_keys
    FOR EACH ROW EXECUTE FUNCTION causal._restored_node_identity();
REVOKE ALL ON causal.identity_keys FROM PUBLIC;
-- Everyone may see who exists; only the owner and superusers read secret keys.
GRANT SELECT (name, key_id, public_key, is_node, created_at) ON causal.identity_keys TO PUBLIC;

-- Which roles may author as which identity (superusers may use any).
CREATE TABLE causal.identity_grants (
    identity    text NOT NULL REFERENCES causal.identity_keys (name) ON DELETE CASCADE,
    role_name   name NOT NULL,
    PRIMARY KEY (identity, role_name)
);
REVOKE ALL ON causal.identity_grants FROM PUBLIC;
GRANT SELECT ON causal.identity_grants TO PUBLIC;

CREATE VIEW causal.identities AS
    SELECT name, key_id, public_key, is_node, created_at FROM causal.identity_keys;
GRANT SELECT ON causal.identities TO PUBLIC;

-- pg_dump keeps the catalog's contents.
SELECT pg_catalog.pg_extension_config_dump('causal.identity_keys', '');
SELECT pg_catalog.pg_extension_config_dump('causal.identity_grants', '');

-- Groups: one DAG each. group_id is the hash of the genesis entry.
-- The group row also holds the DAG's running state, read and updated (under a row lock) on
-- every append: entry count, chain lengths, frontier (node ids), a counter of the entries that
-- carry authority (membership, schema, rules; resolved authority is cached until it moves), and
-- how many entries (in node-id order) the reconciliation engine has placed: local commits of
-- plain data are placed later, in batches (docs/SEMANTICS.md, "Deferred placement").
-- Each group also has a number, local to this database, that the per-entry and per-row tables
-- below use in place of the 44-character group id: every index on them leads with the group,
-- and an integer there makes their keys shorter and their comparisons cheaper.
CREATE SEQUENCE causal.group_numbers AS integer;
CREATE TABLE causal.group_defs (
    group_id           text PRIMARY KEY,
    grp                integer NOT NULL UNIQUE DEFAULT nextval('causal.group_numbers'),
    name               text NOT NULL UNIQUE CHECK (name <> ''),
    hash_algorithm     text NOT NULL CHECK (hash_algorithm IN ('blake3', 'sha-256')),
    entry_count        integer NOT NULL DEFAULT 0,
    chain_lens         integer[] NOT NULL DEFAULT '{}',
    frontier           integer[] NOT NULL DEFAULT '{}',
    authority_version  integer NOT NULL DEFAULT 0,
    reconciled_count   integer NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now()
);

-- DAG entries and their index (see docs/DAG_INDEX.md). node_id is dense per group in append
-- order; chain/seq/clock are the chain-and-clock index; preds are the node ids of the
-- header's predecessors, whose hashes are read through them (a predecessor is always stored
-- before the entries that name it) rather than kept again in every row.
--
-- Their text keys (hashes, group ids, row keys) use the "C" collation: they are compared byte
-- by byte, and a btree probe does not pay for locale-aware comparison (which had been most of
-- the cost of reading 1,000 rows' metadata by key).
--
-- The per-entry and per-row tables below (dag_entries, journal, dag_entry_tags, row_meta)
-- carry no foreign keys: only pg_causal's functions write them, always together in one
-- transaction, and a foreign-key check per row would cost each imported entry several
-- extra index probes. Like Postgres's own catalogs, their integrity is the code's job.
CREATE TABLE causal.dag_entries (
    grp         integer NOT NULL,               -- group_defs.grp
    node_id     integer NOT NULL,
    chain       integer NOT NULL,
    seq         integer NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    -- The payload's author (entry_authors.author), when its text starts with the author's key:
    -- `payload` then keeps the text after it, with the fragments operations repeat written as
    -- one control character each (causal_core::stored_payload; the view causal.entries shows
    -- the text as hashed).
    author      integer,
    hash        bytea NOT NULL,
    payload_hash bytea NOT NULL,                -- the header's payload hash; empty: the text's digest
    links       bytea NOT NULL,                 -- predecessors (node ids) and clock, packed
    payload     text COMPRESSION lz4 NOT NULL,  -- the payload's JSON text as hashed, or coded (author)
    PRIMARY KEY (grp, node_id) WITH (fillfactor = 100),
    UNIQUE (grp, chain, seq) WITH (fillfactor = 100)
);
-- An entry row keeps what only it knows compactly: a single-row entry's row took 348 bytes
-- with its predecessors and clock as two int4[] (25 bytes each, 4 packed), its hash and
-- payload hash in Base64 (45 bytes each; 33 as bytea, and the payload hash 1 when it is the
-- digest of the payload text, which a local commit's is), its author's 44-character key in the payload text, and 42 bytes of
-- syntax around a single row's values (3 coded). Columns are ordered so that none needs
-- padding, and none is NULL but a genesis entry's author: a NULL makes the tuple's header 8
-- bytes longer (its null bitmap no longer fits beside the header's 23 bytes). Rows are never updated and both btrees take
-- new keys in order (node ids; a chain's sequence numbers), so a leaf page split at the right
-- edge keeps the old page full instead of 90% full (the default fillfactor).

-- The authors of stored entries, numbered in this database (dag_entries.author).
CREATE SEQUENCE causal.entry_author_numbers AS integer;
CREATE TABLE causal.entry_authors (
    author      integer PRIMARY KEY DEFAULT nextval('causal.entry_author_numbers'),
    key_id      text COLLATE "C" NOT NULL UNIQUE
);
-- Entries are found by hash through a hash index. Hashes are random, so a btree took each
-- new one at a random place, and its cost grew with the table: inserting 100k rows of this
-- shape after 100k took 428 ms with a btree on (grp, hash), 237 ms with this index instead
-- (a btree on sha-256 hashes in Base64; 2-core machine). A hash index cannot be unique: an
-- entry is stored once per group by the code (content addressing; every append checks, under
-- the group's lock, that the hash is not stored yet). Lookups write
-- `hash = causal._hash_bytes($h) AND grp + 0 = $g` ($h in Base64), so that the planner uses
-- this index alone (see SpiStore::node_id). A hash index grows by allocating whole phases of
-- buckets, so its size per key swings with the table's size; with 32-byte keys it took 37–61
-- bytes per key at the default fillfactor (75) and 34–50 at 90 over 10k–800k keys, with 11%
-- and 16% of the buckets overflowing into a second page (measured 2026-12-08).
CREATE INDEX dag_entries_hash ON causal.dag_entries USING hash (hash) WITH (fillfactor = 90);

-- The reconciliation journal (docs/SEMANTICS.md), one row per entry the engine has placed
-- (or a run of `journal_runs`, below, for entries placed in a line with all their rows new):
-- its place in the canonical order (height, then hash), its verdict, the entries responsible
-- for a cancellation, and the prior states of the rows it changed, so a late concurrent entry
-- can rewind it. Entries are immutable; this is what reconciliation rewrites, kept narrow.
-- Rows are keyed by the entry's node id, and ordered by height alone: ties are few (entries
-- of one height are concurrent) and are put in hash order by the engine. Both keys are
-- integers that grow as history does, so an import adds to the right of both indexes (keyed
-- by the hash, the two took random places and a decode per row).
CREATE TABLE causal.journal (
    grp         integer NOT NULL,
    node_id     integer NOT NULL,               -- dag_entries.node_id (the hash is there)
    height      integer,
    status      text NOT NULL DEFAULT 'ok',
    reason      text,
    responsible text[],
    undo        text,                           -- JSON; read only by the engine ('': all rows new)
    -- Of a cancellation: {"code", "table", "key"}, the kind of conflict (docs/SQL_API.md)
    -- and the row of the operation that failed, if one did.
    cause       jsonb,
    PRIMARY KEY (grp, node_id)
);
CREATE INDEX journal_order ON causal.journal (grp, height);

-- Metadata tags per entry, for the filtered cover searches: 'key' or 'key=value'.
CREATE TABLE causal.dag_entry_tags (
    grp      integer NOT NULL,
    tag      text COLLATE "C" NOT NULL,
    chain    integer NOT NULL,
    seq      integer NOT NULL,
    PRIMARY KEY (grp, tag, chain, seq)
);

-- Tables replicated in a group, with their recorded schema.
CREATE TABLE causal.replicated_tables (
    group_id    text NOT NULL REFERENCES causal.group_defs (group_id) ON DELETE CASCADE,
    table_name  text NOT NULL,
    relid       oid,
    schema      jsonb NOT NULL,
    PRIMARY KEY (group_id, table_name)
) WITH (user_catalog_table = true);
-- user_catalog_table: the sealer's decoder reads it as it was when each decoded transaction
-- committed (logical decoding reads only catalogs, and keeps their old rows for it).
-- relid is this database's oid of the table. A row whose relid names no table of that name
-- (pg_restore loads rows dumped from another database, where oids differ) gets the oid of
-- the table of that name here, or NULL.
CREATE FUNCTION causal._replicated_table_relid() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    parts text[];
BEGIN
    IF NEW.relid IS NOT NULL AND EXISTS (
        SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = NEW.relid
           AND NEW.table_name = CASE WHEN n.nspname = 'public' THEN format('%I', c.relname)
                                     ELSE format('%I.%I', n.nspname, c.relname) END) THEN
        RETURN NEW;
    END IF;
    parts := parse_ident(NEW.table_name);
    IF cardinality(parts) = 1 THEN
        parts := ARRAY['public'] || parts;
    END IF;
    NEW.relid := (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = parts[1] AND c.relname = parts[2]);
    RETURN NEW;
END $$;
CREATE TRIGGER replicated_table_relid BEFORE INSERT ON causal.replicated_tables
    FOR EACH ROW EXECUTE FUNCTION causal._replicated_table_relid();

-- Where the sealer is in the WAL: every transaction whose commit record ends at or before
-- sealed_lsn has its entries (one row per database; the slot is causal_slot_name()).
-- unsealed_from/unsealed_to: WAL never decoded, found when the slot had to be created again
-- past sealed_lsn (a standby promoted after a failover, or a slot dropped by hand);
-- recaptured_rows: how many rows its commits changed in replicated tables, sealed from the
-- tables then (NULL if that failed: they are in the tables and in no entry; docs/OPERATIONS.md).
CREATE TABLE causal.capture_state (
    slot_name         text PRIMARY KEY,
    sealed_lsn        pg_lsn NOT NULL DEFAULT '0/0',
    sealed_at         timestamptz,
    last_commit_time  timestamptz,
    transactions      bigint NOT NULL DEFAULT 0,
    unsealed_from     pg_lsn,
    unsealed_to       pg_lsn,
    unsealed_found_at timestamptz,
    recaptured_rows   bigint
);
REVOKE ALL ON causal.capture_state FROM PUBLIC;
GRANT SELECT ON causal.capture_state TO PUBLIC;

-- How far sealing is behind the WAL, and how much WAL the slot keeps.
CREATE VIEW causal.capture_status AS
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
GRANT SELECT ON causal.capture_status TO PUBLIC;

REVOKE ALL ON causal.group_defs, causal.dag_entries, causal.entry_authors, causal.dag_entry_tags, causal.journal, causal.replicated_tables FROM PUBLIC;
GRANT SELECT ON causal.group_defs, causal.dag_entries, causal.entry_authors, causal.dag_entry_tags, causal.journal, causal.replicated_tables TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('causal.group_defs', '');
SELECT pg_catalog.pg_extension_config_dump('causal.group_numbers', '');
SELECT pg_catalog.pg_extension_config_dump('causal.dag_entries', '');
SELECT pg_catalog.pg_extension_config_dump('causal.entry_authors', '');
SELECT pg_catalog.pg_extension_config_dump('causal.entry_author_numbers', '');
SELECT pg_catalog.pg_extension_config_dump('causal.dag_entry_tags', '');
SELECT pg_catalog.pg_extension_config_dump('causal.journal', '');
SELECT pg_catalog.pg_extension_config_dump('causal.replicated_tables', '');

-- The rule in force for each table and operation (the latest causal.allow).
CREATE TABLE causal.table_rules (
    group_id    text NOT NULL,
    table_name  text NOT NULL,
    operation   text NOT NULL CHECK (operation IN ('insert', 'update', 'delete')),
    rule        text NOT NULL,
    PRIMARY KEY (group_id, table_name, operation),
    FOREIGN KEY (group_id, table_name) REFERENCES causal.replicated_tables (group_id, table_name) ON DELETE CASCADE
);
-- The replicated rows as the group's view has them, with their causal metadata: which entry
-- inserted this incarnation, which entry last wrote each column, which entry deleted it (a
-- tombstone keeps `meta.d`). Keys are the canonical JSON arrays of the primary-key values.
-- `vals` holds, where `meta.p` is true, only the values of the columns that UNIQUE constraints
-- and foreign keys look rows up by: the other values follow from the metadata and the entries
-- it names, and are derived when a row is read. The rows of a table that a rule scans keep all
-- their values, as rows written by 0.1.0 do. The user tables hold the rows; replay writes both.
CREATE TABLE causal.row_meta (
    grp        integer NOT NULL,
    table_name text COLLATE "C" NOT NULL,
    key        text COLLATE "C" NOT NULL,
    vals       jsonb NOT NULL,
    meta       jsonb NOT NULL
);
-- Rows are found by key through a btree on (octet_length(key), key). Keys are JSON texts of
-- the primary-key values: for the common serial or identity key, ordering by length first puts
-- them in numeric order ("[9]" before "[10]"), so new rows go to the right edge of the index
-- and a probe for a key not stored yet reads pages just read. Keyed by the text alone, a
-- btree took rows at places spread over the index, and a hash index at random places: 3M
-- rows in 1,000-row statements took 9.5 s with a hash index on key, 7.0 s with a btree on
-- key, 6.3 s with this one, whose index is also the smallest (32 bytes per row, against 34
-- and 54), and placing 1,000-row local commits spent a quarter of its time in hash index
-- pages at 3.5M rows (2-core machine). The index is not unique: (grp, table_name, key) is
-- kept unique by replay, the table's only writer, which inserts a row only when its read
-- (under the group's lock) found none, and otherwise updates it. Lookups write
-- `octet_length(key) = octet_length($k) AND key = $k AND grp + 0 = $g AND table_name || '' =
-- $t`, so that the planner uses this index alone. Reading all rows of one table
-- (causal.snapshot at the frontier) scans the whole table, or the partial indexes below where
-- the table has some.
CREATE INDEX row_meta_key ON causal.row_meta (octet_length(key), key);
-- Rows are also looked up by the columns of UNIQUE constraints and foreign keys: each such
-- set gets a partial expression index per group and table when the schema is recorded
-- (row_meta_lookup_*, made by the extension).
REVOKE ALL ON causal.row_meta FROM PUBLIC;
GRANT SELECT ON causal.row_meta TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('causal.row_meta', '');

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

REVOKE ALL ON causal.table_rules FROM PUBLIC;
GRANT SELECT ON causal.table_rules TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('causal.table_rules', '');

-- Sync (docs/SYNC.md). Peers to dial, added with causal.add_peer; groups to fetch from peers,
-- asked for with causal.join_group. The worker reads both and hears of changes by NOTIFY.
CREATE TABLE causal.peer_addresses (
    address  text PRIMARY KEY,
    peer_id  text NOT NULL,
    added_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE causal.wanted_groups (
    group_id     text PRIMARY KEY,
    requested_at timestamptz NOT NULL DEFAULT now()
);
-- What the running sync worker last reported (every second or so). Unlogged: it describes
-- the present and is rebuilt by the worker after a crash.
CREATE UNLOGGED TABLE causal.sync_worker (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    pid         integer NOT NULL,
    peer_id     text NOT NULL,
    addresses   text[] NOT NULL,
    started_at  timestamptz NOT NULL,
    reported_at timestamptz NOT NULL,
    queues      jsonb NOT NULL DEFAULT '{}',
    notifications_dropped bigint NOT NULL DEFAULT 0,
    resyncs     bigint NOT NULL DEFAULT 0
);
CREATE UNLOGGED TABLE causal.sync_peer_state (
    peer_id          text PRIMARY KEY,
    address          text,
    connected        boolean NOT NULL,
    last_seen        timestamptz,
    entries_received bigint NOT NULL,
    entries_rejected bigint NOT NULL,
    banned_until     timestamptz,
    score            integer NOT NULL,
    bytes_in         bigint NOT NULL DEFAULT 0,
    bytes_out        bigint NOT NULL DEFAULT 0,
    entries_sent     bigint NOT NULL DEFAULT 0,
    last_offence     text,
    last_offence_at  timestamptz,
    last_error       text,
    last_error_at    timestamptz
);
CREATE UNLOGGED TABLE causal.sync_group_state (
    group_id      text PRIMARY KEY,
    present       boolean NOT NULL,
    to_fetch      bigint NOT NULL,
    imported      bigint NOT NULL,
    last_progress timestamptz,
    peers         integer NOT NULL
);
REVOKE ALL ON causal.peer_addresses, causal.wanted_groups, causal.sync_worker, causal.sync_peer_state,
    causal.sync_group_state FROM PUBLIC;
GRANT SELECT ON causal.peer_addresses, causal.wanted_groups, causal.sync_worker, causal.sync_peer_state,
    causal.sync_group_state TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('causal.peer_addresses', '');
SELECT pg_catalog.pg_extension_config_dump('causal.wanted_groups', '');

-- The sync worker, in the style of pg_stat_*: whether it runs, since when, and the depth of
-- each of its bounded queues (by label) as it last reported them (every few seconds).
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

-- One row per peer the worker knows: traffic both ways, entries, offences and ban state.
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

-- Peers known from causal.add_peer or seen by the worker.
CREATE VIEW causal.peers AS
SELECT coalesce(s.peer_id, a.peer_id) AS peer_id,
       coalesce(a.address, s.address) AS address,
       coalesce(s.connected, false) AS connected,
       s.last_seen,
       coalesce(s.entries_received, 0) AS entries_received,
       coalesce(s.entries_rejected, 0) AS entries_rejected,
       coalesce(s.banned_until > now(), false) AS banned
FROM causal.sync_peer_state s FULL JOIN causal.peer_addresses a ON a.peer_id = s.peer_id;
GRANT SELECT ON causal.peers TO PUBLIC;

-- Entries the engine cancelled: what an application reads after a
-- notification on channel causal_cancelled (docs/SEMANTICS.md). `local` says whether this
-- database holds the author's key: a write made here, committed, and later cancelled.
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

-- Per group, a function of this database's called with each cancellation as it is placed
-- (causal.set_cancellation_hook). Local configuration: never replicated.
CREATE TABLE causal.cancellation_hooks (
    group_id   text PRIMARY KEY,
    hook       regprocedure NOT NULL,
    run_as     regrole NOT NULL,
    set_at     timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON causal.cancellation_hooks FROM PUBLIC;
GRANT SELECT ON causal.cancellation_hooks TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('causal.cancellation_hooks', '');

-- One row per group, in the style of pg_stat_*: its size, what waits, what was cancelled,
-- and how far this database's sealing is behind the WAL (the same for every group).
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
