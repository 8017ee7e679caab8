//! Capture: every committed transaction that writes replicated tables becomes one signed entry
//! per group it wrote, sealed from the WAL after it commits.
//!
//! - [`trigger`]: the triggers on replicated tables, which check a write before it commits
//!   (the author's grant and membership, the table's rules) and name its author in the WAL.
//! - [`decode`]: the logical decoding output plugin and the loop that reads the database's
//!   slot ([`slot`]) in commit order.
//! - [`seal`]: signs each decoded transaction as entries at the frontier, exactly once.
//! - [`encode`]: tuples as the operations entries hold.
//! - [`recapture`]: what the WAL no longer has (the slot was lost), sealed from the tables.
//! - [`rule_check`]: a local write checked against its table's rule, before it commits.
//! - [`catch_up`]: the SQL function that seals, then places what waits.
//! - [`handoff`]: the sync worker's sealing, decoded in one backend and sealed in another.
//!
//! Uses [`crate::author`] (appending), [`crate::replay`] (placing) and below.
//!
//! Local transactions pay nothing at commit beyond what Postgres logs (with the whole old row
//! for updates and deletes: replicated tables have REPLICA IDENTITY FULL), so writers do not
//! wait for each other; signing happens off the commit path.

pub mod catch_up;
pub mod decode;
pub mod encode;
pub mod handoff;
pub mod recapture;
pub mod rule_check;
pub mod seal;
pub mod slot;
pub mod trigger;

pub use seal::{lock_group_exclusive, lock_group_shared, seal_committed};
pub use trigger::{append_existing_rows, refuse_after_writes, register_callbacks};
