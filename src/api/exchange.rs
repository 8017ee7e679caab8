//! Moving history between databases without a network: `causal.export` and `causal.import`.
//!
//! A bundle is UTF-8 JSON:
//! `{"format": "pg_causal-bundle/2", "group": "<id>", "hashAlgorithm": "...", "entries": [...]}`
//! with entries in wire form (`{hash, header, payload}`), predecessors first.

use pgrx::prelude::*;

use crate::error::{CausalError, OrReport};

/// Every entry of the group that is not in the history of `since` (all of them when `since`
/// is NULL), predecessors first, as a bundle for `causal.import`.
#[pg_extern]
fn export(grp: &str, since: default!(Option<Vec<String>>, "NULL")) -> Vec<u8> {
    // Every transaction committed before the call is in the bundle.
    crate::capture::seal_committed().or_report("causal.export");
    crate::exchange::export_bundle(grp, since).or_report("causal.export")
}

/// Validates and stores the entries of a bundle from `causal.export`. Returns
/// `{"accepted": n, "duplicates": n, "replayed": n, "rewound": n, "cancelled": n,
/// "rejected": [{"hash", "reason"}]}`. Entries that depend on a rejected entry are rejected
/// too. A malformed bundle is an error that stores nothing. In the same transaction, the
/// engine reconciles: verdicts are (re)computed above the fork and the tables are replayed to
/// the group's view at the new frontier (`replayed` entries, `rewound` applied ones undone,
/// `cancelled` among those replayed).
#[pg_extern]
fn import(bundle: &[u8]) -> pgrx::JsonB {
    // Everything an import writes is replay or bookkeeping: with the replay origin, the
    // capture decoder skips it record by record.
    let result =
        crate::pg::spi::without_jit(|| crate::pg::spi::with_replay_origin(|| crate::exchange::import_bundle(bundle)))
            .map_err(CausalError::from);
    pgrx::JsonB(result.and_then(|r| r).or_report("causal.import"))
}
