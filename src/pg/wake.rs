//! Waking the background worker's sealer at commit, without writing anything.
//!
//! A transaction that wrote replicated tables commits with no extra writes: its changes are
//! sealed later, from the WAL. So that sealing starts at once rather than at the worker's next
//! poll, the committing backend sets the worker's latch. The worker's process number is kept
//! in a word of shared memory, which exists only when pg_causal is in
//! `shared_preload_libraries` (the only case in which there is a worker); elsewhere waking is
//! a no-op. A stale number (the worker restarted) sets another process's latch, which is a
//! harmless spurious wakeup.
//!
//! Only the first commit after the sealer last looked at the WAL sets the latch: the sealer
//! arms the wakeup ([`arm_wakeup`]) before each look, and a commit disarms it as it wakes the
//! worker. Commits that find it disarmed are sealed by the round already under way or woken.

use std::sync::atomic::{AtomicU32, Ordering};

use pgrx::{pg_guard, pg_shmem_init, pg_sys, PgAtomic};

/// The worker's `pgprocno` + 1, or 0 while no worker runs.
static WORKER_PROC: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"pg_causal worker proc") };

/// 1 while the next commit is to wake the worker: set by the worker before it looks at the WAL,
/// cleared by the commit that wakes it.
static WAKE_ARMED: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"pg_causal wake armed") };

/// Requests the shared memory; from [`super::shmem::init`], only while preloading.
// pgrx's macro tests features of Postgres versions this crate does not declare (pg18).
#[allow(unexpected_cfgs)]
pub(super) fn request_shared_memory() {
    pg_shmem_init!(WORKER_PROC);
    pg_shmem_init!(WAKE_ARMED);
}

/// Called by the worker's sealer before it looks at the WAL: the next commit wakes it. Safe
/// on any thread (it only stores into shared memory).
pub fn arm_wakeup() {
    if super::shmem::ready() {
        WAKE_ARMED.get().store(1, Ordering::SeqCst);
    }
}

/// Called by the worker once started: commits wake this process from now on.
pub fn worker_started() {
    if !super::shmem::ready() {
        return;
    }
    // SAFETY: MyProc is this process's PGPROC, set up before a worker with shared memory
    // access runs its main function.
    let procno = unsafe { (*pg_sys::MyProc).pgprocno };
    if let Ok(n) = u32::try_from(procno) {
        WORKER_PROC.get().store(n + 1, Ordering::Release);
    }
}

/// Called by the worker as it stops.
pub fn worker_stopped() {
    if super::shmem::ready() {
        WORKER_PROC.get().store(0, Ordering::Release);
    }
}

/// Sets the worker's latch, if a worker runs and its sealer is armed. Cheap (a load, and for
/// the first commit after the sealer armed, one signal); called after commit.
pub fn wake_worker() {
    if !super::shmem::ready() {
        return;
    }
    let n = WORKER_PROC.get().load(Ordering::Acquire);
    if n == 0 || WAKE_ARMED.get().swap(0, Ordering::SeqCst) == 0 {
        return;
    }
    // SAFETY: ProcGlobal->allProcs holds MaxBackends + auxiliary processes PGPROCs for the
    // server's life; the index was a valid pgprocno when the worker stored it, and
    // allProcCount bounds it. SetLatch on a latch owned by another process is how Postgres
    // itself wakes processes.
    unsafe {
        let global = pg_sys::ProcGlobal;
        if global.is_null() || n > (*global).allProcCount {
            return;
        }
        let proc = (*global).allProcs.add((n - 1) as usize);
        pg_sys::SetLatch(&raw mut (*proc).procLatch);
    }
}
