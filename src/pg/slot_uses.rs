//! How many times each replication slot has been taken for decoding, across backends.
//!
//! A backend may keep its decoding context between sealing runs (`capture::decode`), so that
//! the next run reads on from where the last stopped instead of reading the WAL again from the
//! slot's restart position. That is only right if no other backend decoded the slot since:
//! another run moves the slot on, and a new decoding context deletes the slot's spilled
//! transactions, which a kept context may still need. Every run that takes a slot counts one
//! use here, by the slot's place in Postgres's array of slots; a kept context is reused only if
//! the count is where its own run left it. Slots whose places share a counter (past
//! [`COUNTERS`]) only cost each other a fresh context. The counts live in shared memory, which
//! exists only when pg_causal is preloaded; elsewhere [`taken`] says nothing is known, and no
//! context is kept.

use pgrx::{pg_guard, pg_shmem_init, pg_sys, PGRXSharedMemory, PgLwLock};

/// How many counters there are (one per slot place, modulo this).
const COUNTERS: usize = 64;

#[derive(Clone, Copy)]
pub struct Uses([u64; COUNTERS]);

impl Default for Uses {
    fn default() -> Self {
        Uses([0; COUNTERS])
    }
}

// SAFETY: plain data without pointers, the same in every process.
unsafe impl PGRXSharedMemory for Uses {}

static USES: PgLwLock<Uses> = unsafe { PgLwLock::new(c"pg_causal slot uses") };

/// Requests the shared memory; from [`super::shmem::init`], only while preloading.
// pgrx's macro tests features of Postgres versions this crate does not declare (pg18).
#[allow(unexpected_cfgs)]
pub(super) fn request_shared_memory() {
    pg_shmem_init!(USES);
}

/// Counts a use of the slot this backend holds (`MyReplicationSlot`). Returns the count before
/// and after this use, or `None` without shared memory or a slot.
pub fn taken() -> Option<(u64, u64)> {
    if !super::shmem::ready() {
        return None;
    }
    // SAFETY: both pointers are Postgres's own, into the array of slots in shared memory, set
    // for the server's life (the array) and while this backend holds a slot (its own).
    let place = unsafe {
        let (mine, ctl) = (pg_sys::MyReplicationSlot, pg_sys::ReplicationSlotCtl);
        if mine.is_null() || ctl.is_null() {
            return None;
        }
        let base = (*ctl).replication_slots.as_ptr() as usize;
        (mine as usize).checked_sub(base)? / std::mem::size_of::<pg_sys::ReplicationSlot>()
    };
    let i = place % COUNTERS;
    let mut uses = USES.exclusive();
    let before = uses.0[i];
    uses.0[i] = before.wrapping_add(1);
    Some((before, before.wrapping_add(1)))
}
