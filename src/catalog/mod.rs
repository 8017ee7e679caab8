//! The catalog: what pg_causal keeps in its own tables, read and written over SPI. Uses only
//! [`crate::pg`], [`crate::error`] and [`crate::guc`].
//!
//! - [`store`]: the DAG store of a group (`causal.dag_entries`, tags, running state).
//! - [`entry_row`]: an entry row's packed columns, and SQL that reads them in either catalog.
//! - [`group`]: groups, their numbers and DAGs.
//! - [`tables`]: replicated tables, their schemas, triggers and lookup indexes.
//! - [`identity`]: key pairs, the node identity, grants of identities to roles.
//! - [`shape`]: what an older catalog, not yet upgraded, lacks.

pub mod authority_version;
pub mod entry_row;
pub mod group;
pub mod identity;
pub mod shape;
pub mod store;
pub mod tables;
