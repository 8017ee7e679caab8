//! The worker's database tasks, each on a connection of its own: reads that serve peers
//! (and frontier reads), and imports of fetched entries. Local commits have their own tasks
//! (`local_commits`).

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
