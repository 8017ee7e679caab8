//! Progress of long operations (an import, placing a backlog of local commits), shown the way
//! `pg_stat_progress_*` shows Postgres's own: each running operation has a slot in shared
//! memory, which the view `causal.progress` reads from any session, and a LOG line every
//! [`LOG_EVERY`] while it lasts. Shared memory exists only when pg_causal is in
//! `shared_preload_libraries`; elsewhere there are only the log lines.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgrx::{pg_guard, pg_shmem_init, pg_sys, PGRXSharedMemory, PgLwLock};

/// How many operations can show at once; more run, but only log.
const SLOTS: usize = 64;

/// How often a running operation logs its progress.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// One running operation. Text is kept NUL-padded in fixed arrays (shared memory holds no
/// pointers).
#[derive(Clone, Copy)]
pub struct Slot {
    pid: i32,
    operation: [u8; 32],
    group: [u8; 64],
    done: i64,
    /// -1: unknown.
    total: i64,
    started_ms: i64,
    updated_ms: i64,
}

impl Slot {
    const EMPTY: Slot =
        Slot { pid: 0, operation: [0; 32], group: [0; 64], done: 0, total: -1, started_ms: 0, updated_ms: 0 };
}

#[derive(Clone, Copy)]
pub struct Slots([Slot; SLOTS]);

impl Default for Slots {
    fn default() -> Self {
        Slots([Slot::EMPTY; SLOTS])
    }
}

// SAFETY: plain data without pointers, the same in every process.
unsafe impl PGRXSharedMemory for Slots {}

static PROGRESS: PgLwLock<Slots> = unsafe { PgLwLock::new(c"pg_causal progress") };

thread_local! {
    /// The slots this backend's running operations hold.
    static HELD: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Requests the shared memory; from [`super::shmem::init`], only while preloading.
// pgrx's macro tests features of Postgres versions this crate does not declare (pg18).
#[allow(unexpected_cfgs)]
pub(super) fn request_shared_memory() {
    pg_shmem_init!(PROGRESS);
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn fill<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    // Cut at a character boundary, so the text reads back as UTF-8.
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&text.as_bytes()[..end]);
    out
}

fn read(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A running operation's progress, released when dropped (also when an error unwinds).
pub struct Progress {
    operation: &'static str,
    group: String,
    unit: &'static str,
    done: i64,
    total: Option<i64>,
    started: Instant,
    logged: Instant,
    slot: Option<usize>,
}

impl Progress {
    /// Starts showing `operation` on `group`, counting `unit`s, of `total` if known.
    pub fn start(operation: &'static str, group: &str, unit: &'static str, total: Option<i64>) -> Progress {
        let slot = claim(operation, group, total);
        let now = Instant::now();
        Progress { operation, group: group.to_string(), unit, done: 0, total, started: now, logged: now, slot }
    }

    /// `n` more units are done.
    pub fn add(&mut self, n: i64) {
        self.set(self.done.saturating_add(n));
    }

    /// `done` units are done.
    pub fn set(&mut self, done: i64) {
        self.done = done;
        if let Some(i) = self.slot {
            let mut slots = PROGRESS.exclusive();
            let s = &mut slots.0[i];
            s.done = done;
            s.updated_ms = now_ms();
        }
        if self.logged.elapsed() >= LOG_EVERY {
            self.logged = Instant::now();
            let of = self.total.map(|t| format!(" of {t}")).unwrap_or_default();
            pgrx::log!(
                "pg_causal: {} of group {}: {} {}{of} after {} s",
                self.operation,
                self.group,
                self.done,
                self.unit,
                self.started.elapsed().as_secs()
            );
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            PROGRESS.exclusive().0[i] = Slot::EMPTY;
            HELD.with(|h| h.borrow_mut().retain(|s| *s != i));
        }
        if self.started.elapsed() >= LOG_EVERY {
            pgrx::log!(
                "pg_causal: {} of group {} ended: {} {} in {} s",
                self.operation,
                self.group,
                self.done,
                self.unit,
                self.started.elapsed().as_secs()
            );
        }
    }
}

/// Whether a backend of this pid runs.
fn alive(pid: i32) -> bool {
    // SAFETY: looks the pid up in the proc array, under its lock.
    !unsafe { pg_sys::BackendPidGetProc(pid) }.is_null()
}

fn claim(operation: &str, group: &str, total: Option<i64>) -> Option<usize> {
    if !super::shmem::ready() {
        return None;
    }
    // SAFETY: this backend's pid, set at its start.
    let pid = unsafe { pg_sys::MyProcPid };
    let mut slots = PROGRESS.exclusive();
    let i = HELD.with(|h| {
        let mut held = h.borrow_mut();
        // A slot of this pid that this backend does not hold was left by an earlier backend
        // of the same pid, which a FATAL error ended without unwinding: it would show as
        // running, so it goes. Operations nest (an import places): each has a slot.
        for (i, s) in slots.0.iter_mut().enumerate() {
            if s.pid == pid && !held.contains(&i) {
                *s = Slot::EMPTY;
            }
        }
        let i = slots.0.iter().position(|s| s.pid == 0 || (s.pid != pid && !alive(s.pid)))?;
        held.push(i);
        Some(i)
    })?;
    let now = now_ms();
    slots.0[i] = Slot {
        pid,
        operation: fill(operation),
        group: fill(group),
        done: 0,
        total: total.unwrap_or(-1),
        started_ms: now,
        updated_ms: now,
    };
    Some(i)
}

/// A running operation, as `causal.progress` shows it.
pub struct Shown {
    pub pid: i32,
    pub operation: String,
    pub group: String,
    pub done: i64,
    pub total: Option<i64>,
    pub started_ms: i64,
    pub updated_ms: i64,
}

/// The operations running now (none without shared memory).
pub fn running() -> Vec<Shown> {
    if !super::shmem::ready() {
        return Vec::new();
    }
    let slots = PROGRESS.share();
    slots
        .0
        .iter()
        .filter(|s| s.pid != 0 && alive(s.pid))
        .map(|s| Shown {
            pid: s.pid,
            operation: read(&s.operation),
            group: read(&s.group),
            done: s.done,
            total: (s.total >= 0).then_some(s.total),
            started_ms: s.started_ms,
            updated_ms: s.updated_ms,
        })
        .collect()
}
