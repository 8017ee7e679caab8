//! The worker's database tasks, each on a connection of its own: reads that serve peers
//! (and frontier reads), imports of fetched entries, and sealing and placing local commits.

use super::*;

pub(super) async fn serve_reads(db: Db, mut rx: mpsc::Receiver<Read>, tx: mpsc::Sender<DbResult>) {
    while let Some(job) = rx.recv().await {
        let result = match job {
            Read::Serve(Serve::Headers { peer, group, request_id, start, limits, max, with_payloads, forward }) => {
                match db.read_headers(&group, &start, &limits, max, with_payloads, forward).await {
                    Ok((headers, complete, payloads)) => {
                        DbResult::Headers { peer, group, request_id, headers, complete, payloads }
                    }
                    Err(e) => {
                        tracing::warn!("serving headers: {e}");
                        continue;
                    }
                }
            }
            Read::Serve(Serve::Payloads { peer, group, request_id, hashes }) => {
                match db.read_payloads(&group, &hashes).await {
                    Ok(payloads) => DbResult::Payloads { peer, group, request_id, payloads },
                    Err(e) => {
                        tracing::warn!("serving payloads: {e}");
                        continue;
                    }
                }
            }
            Read::Stored { group, hashes } => {
                let stored = db.stored(&group, &hashes).await.unwrap_or_else(|e| {
                    tracing::warn!("checking which announced entries are stored: {e}");
                    Vec::new()
                });
                DbResult::Stored { group, asked: hashes, stored }
            }
            Read::Frontier { group } => match db.group(&group).await {
                Ok(Some(g)) => DbResult::Frontier { group, hash_algorithm: g.hash_algorithm, frontier: g.frontier },
                Ok(None) => DbResult::FrontierFailed { group },
                Err(e) => {
                    tracing::warn!("reading a frontier: {e}");
                    DbResult::FrontierFailed { group }
                }
            },
        };
        if tx.send(result).await.is_err() {
            return;
        }
    }
}

/// Frontier reads under way, and whether the group changed again since each began.
#[derive(Default)]
pub(super) struct FrontierReads {
    running: HashMap<String, bool>,
}

impl FrontierReads {
    /// A commit changed `group`: whether to start a read now (none is under way).
    pub(super) fn wanted(&mut self, group: &str) -> bool {
        match self.running.get_mut(group) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                self.running.insert(group.to_string(), false);
                true
            }
        }
    }

    /// A read could not be queued: none is under way.
    pub(super) fn forget(&mut self, group: &str) {
        self.running.remove(group);
    }

    /// A read of `group` returned: whether to start another (the group changed meanwhile).
    pub(super) fn done(&mut self, group: &str) -> bool {
        match self.running.get_mut(group) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                self.running.remove(group);
                false
            }
        }
    }
}

/// A bundle to import (see `Action::Import`).
pub(super) struct ImportJob {
    pub(super) group: String,
    pub(super) hash_algorithm: String,
    pub(super) hashes: Vec<String>,
    pub(super) bundle: Vec<u8>,
    pub(super) epoch: u64,
}

/// Runs imports in the order given. Once one of a group fails, the others of its epoch
/// queued behind it (which may build on it) are reported failed without running.
pub(super) async fn run_imports(db: Db, mut rx: mpsc::Receiver<ImportJob>, tx: mpsc::Sender<DbResult>) {
    let mut failed: HashMap<String, u64> = HashMap::new();
    while let Some(ImportJob { group, hash_algorithm, hashes, bundle, epoch }) = rx.recv().await {
        if failed.get(&group) == Some(&epoch) {
            let error = "an earlier import of this group failed".to_string();
            if tx.send(DbResult::ImportFailed { group, epoch, error }).await.is_err() {
                return;
            }
            continue;
        }
        let started = std::time::Instant::now();
        let n = hashes.len();
        let result = match db.import(&group, hashes, bundle).await {
            Ok(outcome) => {
                DbResult::Imported { group, epoch, hash_algorithm, outcome, entries: n, took: started.elapsed() }
            }
            Err(e) => {
                failed.insert(group.clone(), epoch);
                DbResult::ImportFailed { group, epoch, error: e.to_string() }
            }
        };
        if tx.send(result).await.is_err() {
            return;
        }
    }
}

/// The shortest time between the starts of two placing rounds: commits that come faster are
/// taken together by the next round rather than each by a call of its own. Each round costs a
/// sealing run's and two transactions' fixed work (decoding resets the sealing backend's
/// catalog caches, which are read again), so under a steady load of single-row commits rounds
/// 2 ms apart kept the worker's backend busy with calls of a few commits each.
const PLACING_GAP: Duration = Duration::from_millis(10);

/// Rows placed per placing call: each call is a transaction that sealing (and the group's
/// imports) wait for, so it stays short (about 15-20 ms at the 28-40 µs per single-row entry
/// measured for placement, docs/BENCHMARKS.md). Sealing runs before each call, in a
/// transaction (and a backend) of its own, so the entries of new commits do not wait for a
/// backlog to be placed. At half of plain's rate, 500 halved the sealing lag's p99 against 2,000, and 250
/// did no better (bench/seal_lag.sh, docs/BENCHMARKS.md).
const PLACEMENT_ROWS_PER_CALL: i64 = 500;

/// What [`place_local_commits`] asks of the database: a trait so that a test can stand in for it.
pub(super) trait LocalCommits {
    /// Seals what is committed.
    fn seal(&self) -> impl std::future::Future<Output = Result<(), DbError>> + Send;
    /// Places about `max_rows` rows of what is sealed; returns how many entries.
    fn place(&self, max_rows: i64) -> impl std::future::Future<Output = Result<i64, DbError>> + Send;
}

/// The worker's three backends for local commits: one decodes the WAL, one seals what it
/// decoded, one places what is sealed. Each decoding run resets every catalog cache of its
/// backend before and after (as `pg_logical_slot_get_changes` does), so every statement that
/// backend runs afterwards is planned again and every catalog relation's cache entry rebuilt:
/// half of the worker's database time under a steady load of single-row commits, when one
/// backend did all three (docs/BENCHMARKS.md). Backends that never decode keep their plans.
pub(super) struct SealerAndPlacer {
    pub decoder: Db,
    pub sealer: Db,
    pub placer: Db,
}

impl LocalCommits for SealerAndPlacer {
    async fn seal(&self) -> Result<(), DbError> {
        loop {
            let batch = self.decoder.decode_commits(super::queues::DECODED_ROWS).await?;
            let Some((more, commits)) = causal_core::handoff::Batch::peek(&batch) else {
                return Err(DbError::Unexpected("causal._decode_commits"));
            };
            if commits > 0 {
                self.sealer.seal_decoded(&batch).await?;
            }
            if !more {
                return Ok(());
            }
        }
    }
    async fn place(&self, max_rows: i64) -> Result<i64, DbError> {
        match self.placer.place_sealed(max_rows).await? {
            Some(n) => Ok(n),
            // A run would cancel a local commit: `causal.catch_up` waits for the writers and
            // seals first, taking the sealer's lock before the group's, as sealers do.
            None => self.sealer.catch_up(max_rows).await,
        }
    }
}

/// Places local commits of plain data that wait for the reconciliation engine (docs/SEMANTICS.md,
/// "Deferred placement"), so the backlog does not grow until the next import: woken by local
/// commits, after a short pause that lets commits gather, and once a second regardless. Logs
/// its progress while a backlog lasts.
pub(super) async fn place_local_commits(db: impl LocalCommits, commits: super::CommitWakeups, poll: Duration) {
    // After a failure, retries come less and less often (up to once a minute, commits do not
    // wake them), and the same error is logged again only at the 1st, 2nd, 4th, 8th ... try.
    let (mut failures, mut last_error) = (0u32, None::<String>);
    let mut last_start = tokio::time::Instant::now();
    // The first round runs at once: what was committed while no worker ran is sealed now.
    let mut started_up = false;
    loop {
        if !started_up {
            started_up = true;
        } else if failures == 0 {
            // Local commits do not NOTIFY (that serializes committing transactions): in the
            // background worker they set its latch, which wakes this; otherwise they are
            // sealed from the WAL within a poll. An idle poll costs a comparison of WAL
            // positions in the database.
            let _ = tokio::time::timeout(poll, commits.notified.notified()).await;
            tokio::time::sleep_until(last_start + PLACING_GAP).await;
        } else {
            tokio::time::sleep(Duration::from_secs((1u64 << failures.min(6)).min(60))).await;
        }
        let started = std::time::Instant::now();
        last_start = tokio::time::Instant::now();
        let (mut placed, mut reported) = (0i64, std::time::Instant::now());
        // Commits from here on wake the next round; those before it are sealed by this one.
        (commits.arm)();
        loop {
            let placing = match db.seal().await {
                Ok(()) => db.place(PLACEMENT_ROWS_PER_CALL).await,
                Err(e) => Err(e),
            };
            match placing {
                Ok(n) => {
                    if failures > 0 {
                        tracing::info!(failures, "placing local commits works again");
                        (failures, last_error) = (0, None);
                    }
                    placed += n;
                    // A call that placed less than it could has emptied the backlog: the next
                    // round waits for commits to gather (`PLACING_GAP`). Calling again at once
                    // placed a few commits per call under a steady load, each call paying the
                    // fixed cost of a sealing run and a transaction.
                    if n < PLACEMENT_ROWS_PER_CALL {
                        break;
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let text = e.to_string();
                    if last_error.as_deref() != Some(text.as_str()) || failures.is_power_of_two() {
                        tracing::warn!(failures, "placing local commits failed: {text}");
                    }
                    last_error = Some(text);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A database where a commit lands just after the sealer looked at the WAL, before its
    /// call returns: after it, the round only places and ends. The commit wakes the
    /// sealer as a committing backend does (`pg::wake`): only if armed, disarming it.
    #[derive(Clone, Default)]
    struct Racing {
        committed: Arc<AtomicU64>,
        sealed: Arc<AtomicU64>,
        armed: Arc<AtomicBool>,
        notified: Arc<tokio::sync::Notify>,
        /// Commits still to land, one per look at the WAL that finds nothing new.
        to_come: Arc<AtomicU64>,
    }

    impl Racing {
        fn commit(&self) {
            self.committed.fetch_add(1, Ordering::SeqCst);
            if self.armed.swap(false, Ordering::SeqCst) {
                self.notified.notify_one();
            }
        }

        /// Seals what is committed; a commit still to come lands just after.
        fn look_at_the_wal(&self) {
            let seen = self.committed.load(Ordering::SeqCst);
            self.sealed.store(seen, Ordering::SeqCst);
            if self.to_come.load(Ordering::SeqCst) > 0 {
                self.to_come.fetch_sub(1, Ordering::SeqCst);
                self.commit();
            }
        }

        fn wakeups(&self) -> crate::node::CommitWakeups {
            let armed = self.armed.clone();
            crate::node::CommitWakeups {
                notified: self.notified.clone(),
                arm: Arc::new(move || armed.store(true, Ordering::SeqCst)),
            }
        }
    }

    impl LocalCommits for Racing {
        async fn seal(&self) -> Result<(), DbError> {
            self.look_at_the_wal();
            Ok(())
        }
        async fn place(&self, _max_rows: i64) -> Result<i64, DbError> {
            Ok(0)
        }
    }

    /// Every commit that lands as a round ends is sealed by a later round, with
    /// no poll (an hour here) to fall back on.
    #[tokio::test]
    async fn a_commit_landing_as_a_round_ends_is_sealed_without_a_poll() {
        let db = Racing::default();
        db.to_come.store(25, Ordering::SeqCst);
        let task = tokio::spawn(place_local_commits(db.clone(), db.wakeups(), Duration::from_secs(3600)));
        db.commit();
        tokio::time::sleep(Duration::from_secs(1)).await;
        task.abort();
        assert_eq!(db.to_come.load(Ordering::SeqCst), 0);
        assert_eq!(db.sealed.load(Ordering::SeqCst), 26, "committed {}", db.committed.load(Ordering::SeqCst));
    }
}
