//! Sealing and placing local commits: two tasks, each on connections of its own, so that
//! sealing new commits does not wait for a backlog to be placed.
//!
//! - The sealing task turns what is committed into signed entries (decoded in one backend,
//!   sealed in another: `causal._decode_commits`, `causal._seal_decoded`). Commits wake it;
//!   rounds start at most every [`SEALING_GAP`]. Each batch it seals wakes the placing task.
//! - The placing task places what is sealed (`causal._place_sealed`), in calls of about
//!   [`PLACEMENT_ROWS_PER_CALL`] rows, until the backlog is empty. A run that would cancel a
//!   local commit goes to `causal.catch_up` on the sealing connection, which waits for the
//!   writers and seals first.
//!
//! A sealing round still waits for a placing call that holds the group's row, so calls are
//! short ([`PLACEMENT_ROWS_PER_CALL`]), and no call starts while a round runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::db::{Db, DbError};

/// The shortest time between the starts of two sealing rounds: commits that come faster are
/// taken together by the next round rather than each by a round of its own. Each round costs a
/// decoding run's fixed work (decoding resets its backend's catalog caches) and a sealing
/// transaction, so under a steady load of single-row commits rounds 2 ms apart kept the
/// worker's backend busy with rounds of a few commits each.
const SEALING_GAP: Duration = Duration::from_millis(10);

/// Rows placed per placing call. A call holds the group's row locked (as every placing run
/// does) and a sealing round waits for it, so calls stay short: 15-20 ms at the 28-40 µs per
/// single-row entry measured for placement (docs/BENCHMARKS.md). With 500, sealing rounds
/// waited more than 5 ms for a call 227 times in 20 s of seal_lag.sh's load (median 15 ms, at
/// most 34 ms), and the lag's p99 with synchronous_commit on was 38-64 ms; with 150, such
/// waits were 10 to 22 and the p99 23-29 ms, but the calls' fixed cost took 5-10% of the
/// writers' throughput with the worker running (single-row pgbench, builds alternated).
/// A bulk entry is never split, so a call places at least one.
const PLACEMENT_ROWS_PER_CALL: i64 = 500;

/// How often the placing task looks for sealed commits when no sealing round wakes it: other
/// sessions seal too (`causal.catch_up`, `causal.log`, an import's first step).
const PLACING_POLL: Duration = Duration::from_secs(1);

/// What the sealing task asks of the database: a trait so that a test can stand in for it.
pub(super) trait SealCommits {
    /// Seals one batch of what is committed; returns how many commits it sealed and whether
    /// more were left for the next batch.
    fn seal_batch(&self) -> impl std::future::Future<Output = Result<(i64, bool), DbError>> + Send;
}

/// What the placing task asks of the database.
pub(super) trait PlaceCommits {
    /// Places about `max_rows` rows of what is sealed; returns how many entries.
    fn place(&self, max_rows: i64) -> impl std::future::Future<Output = Result<i64, DbError>> + Send;
}

/// The worker's backends for sealing: one decodes the WAL, one seals what it decoded. Each
/// decoding run resets every catalog cache of its backend before and after (as
/// `pg_logical_slot_get_changes` does), so every statement that backend runs afterwards is
/// planned again: half of the worker's database time under a steady load of single-row
/// commits, when one backend did all of it (docs/BENCHMARKS.md). Backends that never decode
/// keep their plans.
pub(super) struct Sealer {
    pub decoder: Db,
    pub sealer: Arc<Db>,
}

impl SealCommits for Sealer {
    async fn seal_batch(&self) -> Result<(i64, bool), DbError> {
        let batch = self.decoder.decode_commits(super::queues::DECODED_ROWS).await?;
        let Some((more, commits)) = causal_core::handoff::Batch::peek(&batch) else {
            return Err(DbError::Unexpected("causal._decode_commits"));
        };
        if commits > 0 {
            self.sealer.seal_decoded(&batch).await?;
        }
        Ok((i64::try_from(commits).unwrap_or(i64::MAX), more))
    }
}

/// The worker's backend for placing, and the sealing one for runs only `causal.catch_up` may
/// place (it shares that connection with the sealing task; the server runs their statements
/// one after the other).
pub(super) struct Placer {
    pub placer: Db,
    pub sealer: Arc<Db>,
}

impl PlaceCommits for Placer {
    async fn place(&self, max_rows: i64) -> Result<i64, DbError> {
        match self.placer.place_sealed(max_rows).await? {
            Some(n) => Ok(n),
            // A run would cancel a local commit: `causal.catch_up` waits for the writers and
            // seals first, taking the sealer's lock before the group's, as sealers do.
            None => self.sealer.catch_up(max_rows).await,
        }
    }
}

/// Retries after failures, less and less often (up to once a minute), logging the same error
/// again only at the 1st, 2nd, 4th, 8th ... try.
#[derive(Default)]
struct Failures {
    count: u32,
    last_error: Option<String>,
}

impl Failures {
    fn failed(&mut self, what: &str, e: &DbError) {
        self.count = self.count.saturating_add(1);
        let text = e.to_string();
        if self.last_error.as_deref() != Some(text.as_str()) || self.count.is_power_of_two() {
            tracing::warn!(failures = self.count, "{what} failed: {text}");
        }
        self.last_error = Some(text);
    }

    fn worked(&mut self, what: &str) {
        if self.count > 0 {
            tracing::info!(failures = self.count, "{what} works again");
            *self = Failures::default();
        }
    }

    /// How long to wait before the next try, if the last one failed.
    fn backoff(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_secs((1u64 << self.count.min(6)).min(60)))
    }
}

/// Seals local commits: woken by commits (after a short pause that lets commits gather), and
/// once a `poll` regardless. Every batch that sealed something wakes the placing task
/// (`sealed`).
pub(super) async fn seal_local_commits(
    db: impl SealCommits,
    commits: super::CommitWakeups,
    poll: Duration,
    sealed: Arc<Notify>,
    sealing: tokio::sync::watch::Sender<bool>,
) {
    let mut failures = Failures::default();
    let mut last_start = tokio::time::Instant::now();
    // The first round runs at once: what was committed while no worker ran is sealed now.
    let mut started_up = false;
    loop {
        if !started_up {
            started_up = true;
        } else if let Some(wait) = failures.backoff() {
            tokio::time::sleep(wait).await;
        } else {
            // Local commits do not NOTIFY (that serializes committing transactions): in the
            // background worker they set its latch, which wakes this; otherwise they are
            // sealed from the WAL within a poll. An idle poll costs a comparison of WAL
            // positions in the database.
            let _ = tokio::time::timeout(poll, commits.notified.notified()).await;
            tokio::time::sleep_until(last_start + SEALING_GAP).await;
        }
        last_start = tokio::time::Instant::now();
        // Commits from here on wake the next round; those before it are sealed by this one.
        (commits.arm)();
        sealing.send_replace(true);
        loop {
            match db.seal_batch().await {
                Ok((n, more)) => {
                    failures.worked("sealing local commits");
                    if n > 0 {
                        sealed.notify_one();
                    }
                    if !more {
                        break;
                    }
                }
                Err(e) => {
                    failures.failed("sealing local commits", &e);
                    break;
                }
            }
        }
        sealing.send_replace(false);
    }
}

/// Places local commits of plain data that wait for the reconciliation engine (docs/SEMANTICS.md,
/// "Deferred placement"), so the backlog does not grow until the next import: woken by each
/// sealed batch, and once a `poll` regardless. Logs its progress while a backlog lasts.
pub(super) async fn place_sealed_commits(
    db: impl PlaceCommits,
    sealed: Arc<Notify>,
    poll: Duration,
    mut sealing: tokio::sync::watch::Receiver<bool>,
) {
    let mut failures = Failures::default();
    loop {
        match failures.backoff() {
            Some(wait) => tokio::time::sleep(wait).await,
            None => {
                let _ = tokio::time::timeout(poll, sealed.notified()).await;
            }
        }
        let started = std::time::Instant::now();
        let (mut placed, mut reported) = (0i64, std::time::Instant::now());
        loop {
            // A placing call does not start while a sealing round runs: the round has the
            // CPU to itself, and its commits' entries are not late for a call.
            let _ = sealing.wait_for(|s| !*s).await;
            match db.place(PLACEMENT_ROWS_PER_CALL).await {
                Ok(n) => {
                    failures.worked("placing local commits");
                    placed += n;
                    // A call that placed less than it could has emptied the backlog: the next
                    // round waits for a sealed batch.
                    if n < PLACEMENT_ROWS_PER_CALL {
                        break;
                    }
                }
                Err(e) => {
                    failures.failed("placing local commits", &e);
                    break;
                }
            }
            if reported.elapsed() >= Duration::from_secs(10) {
                reported = std::time::Instant::now();
                tracing::info!(placed, seconds = started.elapsed().as_secs(), "placing local commits");
            }
        }
        if placed > 0 {
            tracing::debug!(placed, took_ms = started.elapsed().as_millis() as u64, "placed local commits");
        }
    }
}

/// Starts both tasks.
pub(super) fn spawn(sealer: Sealer, placer: Placer, commits: super::CommitWakeups, poll: Duration) {
    start(sealer, placer, commits, poll, PLACING_POLL);
}

/// Starts the sealing task (polling every `seal_poll`) and the placing task (every
/// `place_poll`), wired together; returns their handles.
fn start(
    sealer: impl SealCommits + Send + 'static,
    placer: impl PlaceCommits + Send + 'static,
    commits: super::CommitWakeups,
    seal_poll: Duration,
    place_poll: Duration,
) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
    let sealed = Arc::new(Notify::new());
    let (sealing, sealing_rx) = tokio::sync::watch::channel(false);
    (
        tokio::spawn(seal_local_commits(sealer, commits, seal_poll, sealed.clone(), sealing)),
        tokio::spawn(place_sealed_commits(placer, sealed, place_poll, sealing_rx)),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;

    /// A database where a commit lands just after the sealer looked at the WAL, before its
    /// call returns: after it, the round ends. The commit wakes the sealer as a committing
    /// backend does (`pg::wake`): only if armed, disarming it.
    #[derive(Clone, Default)]
    struct Racing {
        committed: Arc<AtomicU64>,
        sealed: Arc<AtomicU64>,
        placed: Arc<AtomicU64>,
        armed: Arc<AtomicBool>,
        notified: Arc<Notify>,
        /// Commits still to land, one per look at the WAL.
        to_come: Arc<AtomicU64>,
        /// How long a placing call takes.
        placing_takes: Duration,
    }

    impl Racing {
        fn commit(&self) {
            self.committed.fetch_add(1, Ordering::SeqCst);
            if self.armed.swap(false, Ordering::SeqCst) {
                self.notified.notify_one();
            }
        }

        /// Both tasks over this database, with no poll (an hour) to fall back on.
        fn start(&self) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
            let hour = Duration::from_secs(3600);
            start(self.clone(), self.clone(), self.wakeups(), hour, hour)
        }

        fn wakeups(&self) -> crate::node::CommitWakeups {
            let armed = self.armed.clone();
            crate::node::CommitWakeups {
                notified: self.notified.clone(),
                arm: Arc::new(move || armed.store(true, Ordering::SeqCst)),
            }
        }
    }

    impl SealCommits for Racing {
        /// Seals what is committed; a commit still to come lands just after.
        async fn seal_batch(&self) -> Result<(i64, bool), DbError> {
            let seen = self.committed.load(Ordering::SeqCst);
            let before = self.sealed.swap(seen, Ordering::SeqCst);
            if self.to_come.load(Ordering::SeqCst) > 0 {
                self.to_come.fetch_sub(1, Ordering::SeqCst);
                self.commit();
            }
            Ok((i64::try_from(seen - before).unwrap_or(0), false))
        }
    }

    impl PlaceCommits for Racing {
        async fn place(&self, _max_rows: i64) -> Result<i64, DbError> {
            tokio::time::sleep(self.placing_takes).await;
            let sealed = self.sealed.load(Ordering::SeqCst);
            let before = self.placed.swap(sealed, Ordering::SeqCst);
            Ok(i64::try_from(sealed - before).unwrap_or(0))
        }
    }

    /// Every commit that lands as a round ends is sealed by a later round, with no poll (an
    /// hour here) to fall back on, and placed without a poll either.
    #[tokio::test(start_paused = true)]
    async fn a_commit_landing_as_a_round_ends_is_sealed_and_placed_without_a_poll() {
        let db = Racing::default();
        db.to_come.store(25, Ordering::SeqCst);
        let (sealing, placing) = db.start();
        db.commit();
        tokio::time::sleep(Duration::from_secs(1)).await;
        sealing.abort();
        placing.abort();
        assert_eq!(db.to_come.load(Ordering::SeqCst), 0);
        assert_eq!(db.sealed.load(Ordering::SeqCst), 26, "committed {}", db.committed.load(Ordering::SeqCst));
        assert_eq!(db.placed.load(Ordering::SeqCst), 26);
    }

    /// Commits are sealed while a long placing call is under way: sealing does not wait for
    /// placing.
    #[tokio::test(start_paused = true)]
    async fn commits_are_sealed_while_placing_is_under_way() {
        let db = Racing { placing_takes: Duration::from_millis(800), ..Racing::default() };
        let (sealing, placing) = db.start();
        db.commit();
        // The first round seals it, and a placing call starts; commits land meanwhile.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..3 {
            db.commit();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let sealed_during_placing = db.sealed.load(Ordering::SeqCst);
        let placed_meanwhile = db.placed.load(Ordering::SeqCst);
        sealing.abort();
        placing.abort();
        assert_eq!(placed_meanwhile, 0, "the first placing call is still under way");
        assert_eq!(sealed_during_placing, 4, "every commit sealed without waiting for placing");
    }
}
