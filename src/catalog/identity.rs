//! Identities: ed25519 key pairs kept in `causal.identity_keys`, the node identity created by
//! `CREATE EXTENSION`, and which roles may author as which identity.

use pgrx::prelude::*;

use causal_core::identity::Keypair;

use crate::error::{CausalError, OrReport};
use crate::guc;
use crate::pg::spi::{get_opt, get_prepared};

extension_sql_file!("../../sql/catalog.sql", name = "catalog", bootstrap);

/// The name of the node identity.
pub const NODE_IDENTITY: &str = "node";

/// An identity this session may sign with.
#[derive(Clone)]
pub struct Author {
    pub keypair: Keypair,
}

fn insert_identity(name: &str, is_node: bool) -> Result<String, CausalError> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed != name || name.len() > 63 {
        return Err(CausalError::InvalidName { what: "identity", name: name.chars().take(80).collect() });
    }
    let exists = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM causal.identity_keys WHERE name = $1)",
        &[name.into()],
    )?
    .unwrap_or(false);
    if exists {
        return Err(CausalError::DuplicateIdentity(name.to_string()));
    }
    let keypair = Keypair::generate();
    let key_id = keypair.public().key_id().to_b64();
    Spi::run_with_args(
        "INSERT INTO causal.identity_keys (name, key_id, public_key, secret_key, is_node) VALUES ($1, $2, $3, $4, $5)",
        &[
            name.into(),
            key_id.clone().into(),
            keypair.public().to_b64().into(),
            keypair.secret_bytes().to_vec().into(),
            is_node.into(),
        ],
    )?;
    Ok(key_id)
}

/// Creates the node identity if there is none. `CREATE EXTENSION` runs it.
#[pg_extern(name = "_init_node_identity")]
fn init_node_identity() {
    let has_node = Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM causal.identity_keys WHERE is_node)")
        .map_err(CausalError::from)
        .or_report("causal._init_node_identity");
    if has_node != Some(true) {
        insert_identity(NODE_IDENTITY, true).or_report("causal._init_node_identity");
    }
}

extension_sql!(
    "SELECT causal._init_node_identity();\n",
    name = "node_identity",
    requires = [init_node_identity],
    finalize
);

/// The key id of this database's node identity.
#[pg_extern(stable)]
fn node_id() -> String {
    get_opt::<String>("SELECT key_id FROM causal.identity_keys WHERE is_node", &[])
        .map_err(CausalError::from)
        .or_report("causal.node_id")
        .ok_or_else(|| CausalError::UnknownIdentity(NODE_IDENTITY.into()))
        .or_report("causal.node_id")
}

/// Creates a new identity and returns its key id.
#[pg_extern]
fn create_identity(name: &str) -> String {
    insert_identity(name, false).or_report("causal.create_identity")
}

/// Lets `role` (and its members) author entries as `identity` (a name or key id).
#[pg_extern]
fn grant_identity(identity: &str, role: &str) {
    let name = identity_name(identity).or_report("causal.grant_identity");
    let role_exists =
        Spi::get_one_with_args::<bool>("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", &[role.into()])
            .map_err(CausalError::from)
            .or_report("causal.grant_identity");
    if role_exists != Some(true) {
        CausalError::UnknownRole(role.to_string()).report("causal.grant_identity");
    }
    Spi::run_with_args(
        "INSERT INTO causal.identity_grants (identity, role_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[name.into(), role.into()],
    )
    .map_err(CausalError::from)
    .or_report("causal.grant_identity");
}

/// The name of the identity `identity` names (by name or key id).
fn identity_name(identity: &str) -> Result<String, CausalError> {
    get_opt::<String>("SELECT name FROM causal.identity_keys WHERE name = $1 OR key_id = $1", &[identity.into()])?
        .ok_or_else(|| CausalError::UnknownIdentity(identity.chars().take(80).collect()))
}

/// The name of the identity this session authors as (`causal.author`, else the node
/// identity), after checking that the calling role may use it: it must be a superuser or a
/// member of a role the identity was granted to. Reads no secret, so it works for any role.
pub fn check_author_grant() -> Result<String, CausalError> {
    let name = match guc::author() {
        Some(w) => identity_name(&w)?,
        None => NODE_IDENTITY.to_string(),
    };
    // The role that called us, even inside SECURITY DEFINER functions.
    let caller = unsafe { pg_sys::GetOuterUserId() };
    if GRANTED.with(|g| g.borrow().contains(&(caller, name.clone()))) {
        return Ok(name);
    }
    let allowed = get_prepared::<bool>(
        "SELECT (SELECT rolsuper FROM pg_roles WHERE oid = $1) \
             OR EXISTS (SELECT 1 FROM causal.identity_grants g \
                        WHERE g.identity = $2 AND pg_has_role($1, g.role_name, 'MEMBER'))",
        &[caller.into(), name.clone().into()],
    )?
    .unwrap_or(false);
    if !allowed {
        let role = get_opt::<String>("SELECT rolname::text FROM pg_roles WHERE oid = $1", &[caller.into()])?
            .unwrap_or_default();
        return Err(CausalError::IdentityNotGranted { identity: name, role });
    }
    // Looked up each time a pair is kept (rarely): an oid kept across transactions could be
    // that of a table whose creation rolled back.
    let oid = unsafe {
        pg_sys::get_relname_relid(c"identity_grants".as_ptr(), pg_sys::get_namespace_oid(c"causal".as_ptr(), false))
    };
    GRANTS_OID.with(|o| o.set(oid));
    GRANTED.with(|g| g.borrow_mut().insert((caller, name.clone())));
    Ok(name)
}

thread_local! {
    /// (role, identity) pairs found allowed, so a commit does not ask again (the query cost
    /// about 8 µs of a single-row commit's backend CPU). Only what was allowed is kept: a new
    /// grant needs no invalidation. What can take a use away clears it: any change to roles
    /// or role memberships (syscache callbacks), a changed or deleted grant (the
    /// `causal_grants_changed` trigger sends a relcache invalidation of
    /// `causal.identity_grants`), and an aborted transaction or subtransaction (which may
    /// have granted).
    static GRANTED: std::cell::RefCell<std::collections::HashSet<(pg_sys::Oid, String)>> = Default::default();
    /// The oid of `causal.identity_grants`, once known.
    static GRANTS_OID: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
}

/// Forgets every (role, identity) pair found allowed.
pub fn forget_grants() {
    GRANTED.with(|g| g.borrow_mut().clear());
    GRANTS_OID.with(|o| o.set(pg_sys::InvalidOid));
}

/// Relcache invalidation of `relid` (`InvalidOid`: of every relation): forgets the grants
/// found allowed if it is `causal.identity_grants`.
pub fn relcache_changed(relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid || relid == GRANTS_OID.with(std::cell::Cell::get) {
        forget_grants();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_roles_changed(_arg: pg_sys::Datum, _cacheid: std::ffi::c_int, _hash: u32) {
    forget_grants();
}

/// Registers the callbacks that clear the grants found allowed; called from `_PG_init`.
pub fn register_callbacks() {
    unsafe {
        for cache in [
            pg_sys::SysCacheIdentifier::AUTHOID,
            pg_sys::SysCacheIdentifier::AUTHMEMMEMROLE,
            pg_sys::SysCacheIdentifier::AUTHMEMROLEMEM,
        ] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as std::ffi::c_int,
                Some(on_roles_changed),
                pg_sys::Datum::from(0usize),
            );
        }
    }
}

/// Statement trigger on `causal.identity_grants` (UPDATE, DELETE, TRUNCATE): tells every
/// backend, at commit, to forget the grants it found allowed.
#[pg_trigger]
fn _grants_changed<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, CausalError> {
    let relid = trigger.relid().map_err(|e| CausalError::Corrupt(e.to_string()))?;
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    Ok(None)
}

extension_sql!(
    r#"
CREATE TRIGGER causal_grants_changed AFTER UPDATE OR DELETE OR TRUNCATE ON causal.identity_grants
    FOR EACH STATEMENT EXECUTE FUNCTION causal._grants_changed();
"#,
    name = "grants_changed_trigger",
    requires = ["catalog", _grants_changed]
);

/// The identity this session authors as, with its key. Reading the key needs the extension
/// owner's rights, so callers run as SECURITY DEFINER.
pub fn current_author() -> Result<Author, CausalError> {
    author_named(&check_author_grant()?)
}

thread_local! {
    /// Key pairs and key ids by identity name. An identity's keys never change (identities
    /// are neither renamed nor dropped), so they are kept for the backend's life, unless the
    /// work that read them is undone: it may have created the identity, and a later one of
    /// the same name has other keys.
    static KEYPAIRS: std::cell::RefCell<crate::pg::xact::ScopedMap<String, Keypair>> = Default::default();
    static KEY_IDS: std::cell::RefCell<crate::pg::xact::ScopedMap<String, String>> = Default::default();
}

/// Forgets the keys read in undone work.
pub fn forget_keys(undone: crate::pg::xact::Undone) {
    KEYPAIRS.with(|k| k.borrow_mut().forget(undone));
    KEY_IDS.with(|k| k.borrow_mut().forget(undone));
}

/// The identity `name` with its key, for a caller that checked the grant already. Reading
/// the key needs the extension owner's rights.
pub fn author_named(name: &str) -> Result<Author, CausalError> {
    if let Some(keypair) = KEYPAIRS.with(|k| k.borrow().get(name).cloned()) {
        return Ok(Author { keypair });
    }
    let secret =
        get_prepared::<Vec<u8>>("SELECT secret_key FROM causal.identity_keys WHERE name = $1", &[name.into()])?
            .ok_or_else(|| CausalError::UnknownIdentity(name.to_string()))?;
    let keypair =
        Keypair::from_secret_bytes(&secret).map_err(|e| CausalError::Corrupt(format!("identity {name}: {e}")))?;
    KEYPAIRS.with(|k| k.borrow_mut().insert(name.to_string(), keypair.clone()));
    Ok(Author { keypair })
}

/// The key id (Base64) of the identity `name`; readable by any role.
pub fn key_id_of(name: &str) -> Result<String, CausalError> {
    if let Some(id) = KEY_IDS.with(|k| k.borrow().get(name).cloned()) {
        return Ok(id);
    }
    let id = get_prepared::<String>("SELECT key_id FROM causal.identity_keys WHERE name = $1", &[name.into()])?
        .ok_or_else(|| CausalError::UnknownIdentity(name.to_string()))?;
    KEY_IDS.with(|k| k.borrow_mut().insert(name.to_string(), id.clone()));
    Ok(id)
}

/// The key id this session would sign with; fails as a write would if it may not. It runs as
/// the extension's owner to read the key, and checks the grants of the role that called it.
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, @extschema@)]
fn current_author_id() -> String {
    current_author().or_report("causal.current_author_id").keypair.public().key_id().to_b64()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::one;
    use pgrx::prelude::*;

    #[pg_test]
    fn create_extension_made_a_node_identity() {
        let node = one("SELECT causal.node_id()");
        assert_eq!(node.len(), 44);
        assert_eq!(one("SELECT key_id FROM causal.identities WHERE name = 'node' AND is_node"), node);
        // Superusers author as the node identity by default.
        assert_eq!(one("SELECT causal.current_author_id()"), node);
    }

    #[pg_test]
    fn identities_are_created_listed_and_chosen_by_guc() {
        let alice = one("SELECT causal.create_identity('alice')");
        let pk = one("SELECT public_key FROM causal.identities WHERE name = 'alice'");
        let parsed = causal_core::identity::PublicKey::from_b64(&pk).unwrap();
        assert_eq!(parsed.key_id().to_b64(), alice);
        Spi::run("SET causal.author = 'alice'").unwrap();
        assert_eq!(one("SELECT causal.current_author_id()"), alice);
        Spi::run(&format!("SET causal.author = '{alice}'")).unwrap();
        assert_eq!(one("SELECT causal.current_author_id()"), alice);
        Spi::run("RESET causal.author").unwrap();
    }

    #[pg_test(error = "identity \"alice\" already exists")]
    fn duplicate_identity_names_are_refused() {
        Spi::run("SELECT causal.create_identity('alice')").unwrap();
        Spi::run("SELECT causal.create_identity('alice')").unwrap();
    }

    #[pg_test(error = "unknown identity \"nobody\"")]
    fn unknown_author_is_an_error() {
        Spi::run("SET causal.author = 'nobody'").unwrap();
        Spi::run("SELECT causal.current_author_id()").unwrap();
    }

    #[pg_test(error = "role \"ghost\" does not exist")]
    fn grant_to_unknown_role_is_refused() {
        Spi::run("SELECT causal.grant_identity('node', 'ghost')").unwrap();
    }

    #[pg_test]
    fn ungranted_roles_get_42501_and_granted_roles_may_author() {
        Spi::run("CREATE ROLE app_writer; CREATE ROLE app_other").unwrap();
        Spi::run("SELECT causal.create_identity('writer')").unwrap();
        Spi::run("SELECT causal.grant_identity('writer', 'app_writer')").unwrap();
        Spi::run("GRANT USAGE ON SCHEMA causal TO app_writer, app_other").unwrap();
        let state = |role: &str| -> String {
            Spi::run(&format!(
                "DO $$ BEGIN SET LOCAL ROLE {role}; SET LOCAL causal.author = 'writer'; \
                 BEGIN PERFORM causal.current_author_id(); PERFORM set_config('t.s', 'ok', true); \
                 EXCEPTION WHEN OTHERS THEN PERFORM set_config('t.s', SQLSTATE, true); END; RESET ROLE; END $$"
            ))
            .unwrap();
            one("SELECT current_setting('t.s')")
        };
        let (writer, other) = (state("app_writer"), state("app_other"));
        assert_eq!((writer.as_str(), other.as_str()), ("ok", "42501"));
        // What was found allowed is kept, and forgotten when a use is taken away: a deleted
        // grant, a revoked role membership.
        assert_eq!(state("app_writer"), "ok");
        Spi::run("DELETE FROM causal.identity_grants WHERE role_name = 'app_writer'").unwrap();
        assert_eq!(state("app_writer"), "42501");
        Spi::run(
            "SELECT causal.grant_identity('writer', 'app_writer'); CREATE ROLE app_member; \
                  GRANT app_writer TO app_member; GRANT USAGE ON SCHEMA causal TO app_member",
        )
        .unwrap();
        assert_eq!(state("app_member"), "ok");
        Spi::run("REVOKE app_writer FROM app_member").unwrap();
        assert_eq!(state("app_member"), "42501");
        // A grant made in a transaction that rolls back is not kept either.
        Spi::run(
            "DO $$ BEGIN BEGIN PERFORM causal.grant_identity('writer', 'app_other'); \
             SET LOCAL ROLE app_other; SET LOCAL causal.author = 'writer'; PERFORM causal.current_author_id(); \
             RAISE EXCEPTION 'undo'; EXCEPTION WHEN OTHERS THEN NULL; END; RESET ROLE; END $$",
        )
        .unwrap();
        assert_eq!(state("app_other"), "42501");
    }

    #[pg_test]
    fn secret_keys_are_not_readable_by_other_roles() {
        Spi::run("CREATE ROLE snooper; GRANT USAGE ON SCHEMA causal TO snooper").unwrap();
        Spi::run(
            "DO $$ BEGIN SET LOCAL ROLE snooper; \
             BEGIN PERFORM secret_key FROM causal.identity_keys; PERFORM set_config('t.s', 'read', true); \
             EXCEPTION WHEN insufficient_privilege THEN PERFORM set_config('t.s', 'denied', true); END; \
             PERFORM set_config('t.n', (SELECT count(*)::text FROM causal.identities), true); RESET ROLE; END $$",
        )
        .unwrap();
        assert_eq!(one("SELECT current_setting('t.s')"), "denied");
        assert_eq!(one("SELECT current_setting('t.n')"), "1");
    }
}
