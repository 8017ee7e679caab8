//! pg_causal's shared memory: the worker's latch ([`super::wake`]), the progress slots
//! ([`super::progress`]), the count of the capture slot's uses ([`super::slot_uses`]) and the
//! positions sealed to ([`super::sealed_position`]). It exists only when pg_causal is in
//! `shared_preload_libraries`; elsewhere [`ready`] is false and each does without it.

use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::pg_sys;

/// Set in the postmaster, before it forks, once the shared memory was requested.
static READY: AtomicBool = AtomicBool::new(false);

/// Requests every piece of shared memory; from `_PG_init`, only while preloading.
pub fn init() {
    // SAFETY: reading a flag Postgres sets before loading preloaded libraries.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    super::wake::request_shared_memory();
    super::slot_uses::request_shared_memory();
    super::sealed_position::request_shared_memory();
    super::progress::request_shared_memory();
    READY.store(true, Ordering::Relaxed);
}

/// Whether the shared memory exists in this server.
pub fn ready() -> bool {
    READY.load(Ordering::Relaxed)
}
