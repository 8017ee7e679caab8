//! `causal-core`: the I/O-free heart of pg_causal.
//!
//! - [`json`]: canonical JSON, byte-compatible with the Hyper Hyper Space v3 DAG format;
//! - [`hash`]: B64Hash digests (sha-256, blake3);
//! - [`entry`]: entries, headers and positions;
//! - [`identity`]: ed25519 keys, KeyIds and signatures;
//! - [`dag`]: the DAG, its storage trait, an in-memory store and the indexed queries.
//!
//! Nothing here performs I/O; storage is behind [`dag::DagStore`].

#![forbid(unsafe_code)]

pub mod dag;
pub mod ddl;
pub mod entry;
#[doc(hidden)]
pub mod fuzzing;
pub mod handoff;
pub mod hash;
pub mod identity;
pub mod json;
pub mod membership;
pub mod op_text;
pub mod payload;
pub mod precheck;
pub mod reconcile;
pub mod rules;
pub mod schema;
pub mod schema_check;
pub mod signature_cover;
pub mod sql_expr;
pub mod sql_name;
pub mod stored_payload;
pub mod wire;

pub use dag::{Appended, Dag, DagError, DagStore, ForkPosition, MemStore, MetaFilter};
pub use entry::{Entry, Header, Meta, Position};
pub use hash::{EntryHash, GroupId, Hash, HashAlgorithm};

/// Hash maps and sets keyed by entry hashes, node ids, keys and row slots. foldhash is several
/// times cheaper than the standard SipHash on such keys, and its seed is random per process,
/// so keys chosen by a hostile peer cannot be aimed at collisions in advance.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The format name of a bundle of entries, as `causal.export` writes and `causal.import` reads
/// it (the sync worker writes one per import): `{"format", "group", "hashAlgorithm",
/// "entries": [wire entries, predecessors first]}`. Format 2 may hold entries covered by a
/// later signature of their author ([`signature_cover`]); format 1 (pg_causal 0.1.0) holds
/// signed entries only, and is read too.
pub const BUNDLE_FORMAT: &str = "pg_causal-bundle/2";

/// The bundle formats this version reads.
pub const READ_BUNDLE_FORMATS: &[&str] = &["pg_causal-bundle/1", BUNDLE_FORMAT];
