//! Every configuration setting of pg_causal, in one place (documented in docs/CONFIGURATION.md).

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `causal.author`: the identity (name or key id) that signs this session's writes. Empty
/// means the node identity.
pub static AUTHOR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `causal.verify_threads`: how many threads check the hashes and signatures of an imported
/// batch (pure computation, no database access from those threads).
pub static VERIFY_THREADS: GucSetting<i32> = GucSetting::<i32>::new(2);

/// Registers the settings; called from `_PG_init`.
pub fn register() {
    GucRegistry::define_int_guc(
        c"causal.verify_threads",
        c"Threads that verify the hashes and signatures of imported entries.",
        c"The checks that need no database access run on this many threads; 1 runs them in the backend alone.",
        &VERIFY_THREADS,
        1,
        64,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"causal.author",
        c"Identity that signs this session's writes to replicated tables.",
        c"A name or key id from causal.identities. Empty means the node identity. A role may use only identities granted to it with causal.grant_identity; superusers may use any.",
        &AUTHOR,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// The current value of `causal.author`, if set and not empty.
pub fn author() -> Option<String> {
    AUTHOR.get().and_then(|c| c.into_string().ok()).filter(|s| !s.is_empty())
}

/// The current value of `causal.verify_threads`.
pub fn verify_threads() -> usize {
    usize::try_from(VERIFY_THREADS.get()).unwrap_or(1).max(1)
}
