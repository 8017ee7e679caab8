//! The shared Postgres plumbing, the bottom layer: it uses nothing of pg_causal but
//! [`crate::error`].
//!
//! - [`spi`]: SPI helpers (kept plans, settings and roles for a call, catching errors).
//! - [`direct`]: rows of pg_causal's catalog written and updated without SQL.
//! - [`xact`]: what a backend keeps across statements, forgotten when work is undone; the one
//!   registry each cache subscribes to.
//! - [`lock`]: the advisory locks (a group's write lock, the sealer's), from the lock manager.
//! - [`notify`]: notifications to the sync worker and to applications.
//! - [`progress`]: long operations shown in `causal.progress` and logged.
//! - [`scan`]: every row of a table as of a snapshot, without SQL.
//! - [`shmem`]: the shared memory of the three below and of `progress`, when preloaded.
//! - [`sealed_position`]: the position each database's last sealing commit sealed to.
//! - [`slot_uses`]: how often the capture slot was taken, so a kept decoding context knows
//!   whether it is still current.
//! - [`wake`]: setting the worker's latch at commit, so sealing starts at once.

pub mod direct;
pub mod lock;
pub mod notify;
pub mod progress;
pub mod scan;
pub mod sealed_position;
pub mod shmem;
pub mod slot_uses;
pub mod spi;
pub mod wake;
pub mod xact;
