//! Every configuration setting of pg_causal, in one place (documented in docs/CONFIGURATION.md).

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `causal.author`: the identity (name or key id) that signs this session's writes. Empty
/// means the node identity.
pub static AUTHOR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Registers the settings; called from `_PG_init`.
pub fn register() {
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
