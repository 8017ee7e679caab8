//! Every configuration setting of pg_causal, in one place (documented in docs/CONFIGURATION.md).

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `causal.author`: the identity (name or key id) that signs this session's writes. Empty
/// means the node identity.
pub static AUTHOR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `causal.import_run_rows`: how many row operations an import stores before the engine
/// places them (and again at the end): smaller runs hold less memory and overlap more of the
/// checks, larger ones pay the engine's per-run costs less often.
pub static IMPORT_RUN_ROWS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// `causal.verify_threads`: how many threads check the hashes and signatures of an imported
/// batch while the backend stores the entries already checked (pure computation, no
/// database access from those threads); 0 checks them in the backend.
pub static VERIFY_THREADS: GucSetting<i32> = GucSetting::<i32>::new(1);

/// `causal.listen_addresses`: multiaddrs the sync worker listens on (comma-separated).
pub static LISTEN_ADDRESSES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `causal.peers`: multiaddrs (with `/p2p/<peer id>`) the sync worker dials (comma-separated),
/// besides those added with `causal.add_peer`.
pub static PEERS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `causal.database`: the database whose groups the background worker syncs.
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// `causal.seal_poll_interval`: milliseconds between the background worker's looks at the WAL
/// for local commits when none woke it. Committing backends wake it, so this is a safety net.
pub static SEAL_POLL_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(500);

/// Registers the settings; called from `_PG_init`.
pub fn register() {
    GucRegistry::define_string_guc(
        c"causal.listen_addresses",
        c"Multiaddrs the sync worker listens on, comma-separated.",
        c"For example /ip4/0.0.0.0/tcp/4001. Empty: the worker listens nowhere and only dials out. Read when the background worker starts (a change in postgresql.conf applies when it restarts).",
        &LISTEN_ADDRESSES,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"causal.peers",
        c"Multiaddrs of peers the sync worker dials, comma-separated, each ending in /p2p/<peer id>.",
        c"Added to the peers from causal.add_peer. Read when the background worker starts (a change in postgresql.conf applies when it restarts).",
        &PEERS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"causal.database",
        c"Database whose groups the background sync worker serves.",
        c"The worker waits, quietly, until CREATE EXTENSION pg_causal has run there.",
        &DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"causal.import_run_rows",
        c"Row operations an import stores before the reconciliation engine places them.",
        c"The engine places an import's entries in runs of about this many row operations while the next entries are checked, and the rest at the end; the outcome is the same for any value.",
        &IMPORT_RUN_ROWS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"causal.verify_threads",
        c"Threads that verify the hashes and signatures of imported entries.",
        c"The checks that need no database access run on this many threads besides the backend, which stores what they have checked meanwhile; 0 runs them in the backend.",
        &VERIFY_THREADS,
        0,
        64,
        // It starts threads in the backend: a superuser's decision.
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"causal.seal_poll_interval",
        c"Milliseconds between the background worker's looks at the WAL for local commits to seal, when no commit woke it.",
        c"Each commit that wrote replicated tables wakes the worker, so this only bounds the delay if a wakeup is missed. Read when the background worker starts.",
        &SEAL_POLL_INTERVAL,
        1,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"causal.author",
        c"Identity that signs this session's writes to replicated tables.",
        c"A name or key id from causal.identities. Empty means the node identity. A role may use only identities granted to it with causal.grant_identity; superusers may use any.",
        &AUTHOR,
        GucContext::Userset,
        GucFlags::default(),
    );
    // Every `causal.` name is ours: a misspelt setting (`causal.autor`) is an error rather
    // than a placeholder that silently does nothing.
    // SAFETY: called from _PG_init, on the backend's thread, with a static C string.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"causal".as_ptr()) };
}

/// The current value of `causal.author`, if set and not empty.
pub fn author() -> Option<String> {
    AUTHOR.get().and_then(|c| c.into_string().ok()).filter(|s| !s.is_empty())
}

/// The current value of `causal.import_run_rows`.
pub fn import_run_rows() -> usize {
    usize::try_from(IMPORT_RUN_ROWS.get()).unwrap_or(1).max(1)
}

/// The current value of `causal.verify_threads`.
pub fn verify_threads() -> usize {
    usize::try_from(VERIFY_THREADS.get()).unwrap_or(0)
}

fn list(setting: &GucSetting<Option<CString>>) -> Vec<String> {
    setting
        .get()
        .and_then(|c| c.into_string().ok())
        .map(|s| s.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_string).collect())
        .unwrap_or_default()
}

/// `causal.listen_addresses`, split.
pub fn listen_addresses() -> Vec<String> {
    list(&LISTEN_ADDRESSES)
}

/// `causal.peers`, split.
pub fn peers() -> Vec<String> {
    list(&PEERS)
}

/// `causal.seal_poll_interval`.
pub fn seal_poll_interval() -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(SEAL_POLL_INTERVAL.get()).unwrap_or(500).max(1))
}

/// `causal.database`.
pub fn database() -> String {
    DATABASE.get().and_then(|c| c.into_string().ok()).filter(|s| !s.is_empty()).unwrap_or_else(|| "postgres".into())
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::testing::outcome;

    /// A misspelt `causal.` setting is refused, not kept as a placeholder.
    #[pg_test]
    fn the_causal_prefix_is_reserved() {
        let s = outcome("SET causal.autor = 'x'");
        assert!(s.starts_with("42602") && s.contains("causal.autor"), "{s}");
        assert_eq!(outcome("SET causal.import_run_rows = 5000"), "ok");
    }

    /// Settings that start threads are for superusers.
    #[pg_test]
    fn thread_settings_are_superuser_only() {
        Spi::run("CREATE ROLE causal_guc_tester").unwrap();
        Spi::run("SET ROLE causal_guc_tester").unwrap();
        let s = outcome("SET causal.verify_threads = 8");
        Spi::run("RESET ROLE").unwrap();
        assert!(s.starts_with("42501"), "{s}");
    }
}
