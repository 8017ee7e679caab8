//! The SQL API, the top layer: the `#[pg_extern]` functions a user calls, grouped by what the
//! user does, on top of every layer below.
//!
//! - [`replicate`], [`rules`], [`ddl`]: putting tables into a group, rules, DDL on them.
//! - [`history`], [`view`]: looking at history and at the reconciled view.
//! - [`hooks`]: a function called with each cancellation.
//! - [`progress`]: long operations under way.
//! - [`exchange`]: export and import of history without a network.
//! - [`sync`]: peers, groups to fetch and what the sync worker reads.
//! - [`leave`]: leaving a group, its tables kept as plain tables.
//! - [`functions`]: small stateless functions.

pub mod ddl;
pub mod exchange;
pub mod functions;
pub mod history;
pub mod hooks;
pub mod leave;
pub mod progress;
pub mod replicate;
pub mod rules;
pub mod sync;
pub mod view;
