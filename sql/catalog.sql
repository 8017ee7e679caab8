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
