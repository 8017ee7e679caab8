//! Placing entries: running the reconciliation engine over the catalog (`SpiReplica`) for an
//! import, a local commit, or the backlog of local commits left for later, and applying what
//! it decided in the same transaction.

use causal_core::dag::NodeId;
use causal_core::payload::SignedPayload;
use causal_core::reconcile::{self, Changes, ReconcileError, ReplicaStore};
use causal_core::{Dag, EntryHash};

use crate::catalog::group::Group;
use crate::catalog::store::SpiStore;
use crate::error::CausalError;
use crate::replay::SpiReplica;

/// What one reconciliation did, and how long its two halves took.
pub struct Reconciled {
    pub changes: Changes,
    /// The engine's run (reads through SPI, computes verdicts and row states).
    pub plan: std::time::Duration,
    /// Writing the journal, `row_meta` and the user tables.
    pub apply: std::time::Duration,
}

/// Reconciles a group after an import stored `new` entries (decoded, predecessors first).
pub fn reconcile_imported(group: &Group, new: Vec<reconcile::NewEntry>) -> Result<Reconciled, CausalError> {
    let mut replica = SpiReplica::new(group);
    let upto = replica.dag.store().state().map_err(causal_core::DagError::from)?.entry_count;
    run_engine(&mut replica, upto, |r| reconcile::plan_decoded(r, new).map_err(engine_err))
}

/// The stored payload text of entry `hash` of `group`, decoded.
pub(super) fn decode_payload(group: &str, hash: &EntryHash, text: &str) -> Result<SignedPayload, CausalError> {
    let corrupt = |e: String| CausalError::Corrupt(format!("group {group}: entry {hash}: {e}"));
    let value = causal_core::json::parse(text).map_err(|e| corrupt(e.to_string()))?;
    SignedPayload::from_owned(value).map_err(|e| corrupt(e.to_string()))
}

/// The stored entries of `store`'s group with node ids from `from` up to (not including) `to`,
/// decoded, in node-id order (predecessors first): local commits the engine has not placed
/// yet. Hashes and predecessors come from the entries' nodes, read with the payloads in one
/// statement and kept for the engine, which asks for them next (reading each entry's hash and
/// predecessors as text again made placing single-row entries about 8% slower).
pub fn unplaced_entries(
    store: &SpiStore,
    group: &str,
    from: u32,
    to: u32,
) -> Result<Vec<reconcile::NewEntry>, CausalError> {
    use causal_core::DagStore;
    let rows = store.nodes_with_payloads(NodeId(from), NodeId(to)).map_err(causal_core::DagError::from)?;
    let mut out = Vec::with_capacity(rows.len());
    for (node, payload) in rows {
        let mut prev = causal_core::entry::Position::new();
        for p in &node.preds {
            prev.insert(store.node(*p).map_err(causal_core::DagError::from)?.hash);
        }
        let payload = decode_payload(group, &node.hash, &payload)?;
        out.push((node.hash, prev, payload));
    }
    Ok(out)
}

/// How many row operations one engine run places at most while catching up (an entry is never
/// split, so a larger one runs alone). The engine holds a run's rows in memory: bounded runs
/// keep that memory small and its maps in cache. With the engine fixes made together with
/// them, they halved the cost per row of placing a backlog of millions of rows, which one run
/// over all of it had spent largely on page faults and the allocator.
const PLACEMENT_RUN_ROWS: usize = 20_000;

/// How many entries are read from the catalog at a time while catching up.
const PLACEMENT_PAGE: u32 = 64;

/// Places the group's local commits that the engine has not placed yet (see
/// [`SpiStore::mark_reconciled`]), whose rows are already in the tables: in engine runs of at
/// most [`PLACEMENT_RUN_ROWS`] row operations, oldest first, each recorded as placed when it
/// is applied. Returns how many entries it placed. It locks the group's row itself; an import
/// and an administrative append hold the group's lock exclusively first, so no local writer is
/// mid-way. A long catch-up reports its progress in the server log.
pub fn catch_up(group: &Group) -> Result<usize, CausalError> {
    let placed = crate::pg::spi::without_jit(|| catch_up_at_most(group, None, LockHeld::Exclusive))??;
    Ok(placed.entries)
}

/// How the caller holds the group's write lock (`pg::lock`) while placing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LockHeld {
    /// Writers may be mid-way: a run that would write rows of the user tables is not applied.
    Shared,
    /// No writer is mid-way and every committed transaction is sealed.
    Exclusive,
}

/// What a placing call did.
#[derive(Default, Debug)]
pub struct Placed {
    pub entries: usize,
    /// Placing stopped before a run that cancels a local commit: that run puts rows of the
    /// user tables back to the view, which only a holder of the exclusive lock may do.
    pub needs_exclusive: bool,
}

/// [`catch_up`], stopping after the first run that brings the rows placed to `max_rows` or
/// more (`None`: no bound), with the group's write lock held as `lock` says.
pub fn catch_up_at_most(group: &Group, max_rows: Option<usize>, lock: LockHeld) -> Result<Placed, CausalError> {
    // The journal and row metadata it writes are bookkeeping: the capture decoder skips them
    // by their origin, as it skips its own entries.
    crate::pg::spi::with_replay_origin(|| place_at_most(group, max_rows, lock))
}

fn place_at_most(group: &Group, max_rows: Option<usize>, lock: LockHeld) -> Result<Placed, CausalError> {
    let dag = group.dag();
    let state = dag.store().lock().map_err(causal_core::DagError::from)?;
    let (start, end) = (state.reconciled_count, state.entry_count);
    if start >= end {
        return Ok(Placed::default());
    }
    let mut replica = SpiReplica::over(group, dag, Vec::new());
    let (placed_to, needs_exclusive) = place_backlog(&mut replica, start, end, max_rows, lock)?;
    Ok(Placed { entries: (placed_to - start) as usize, needs_exclusive })
}

/// Places the stored entries with node ids `start..end`, local commits whose rows are in the
/// tables already, in bounded runs (see [`catch_up`]), and stops early once `max_rows` rows
/// are placed. Returns the node id up to which entries are placed, and whether it stopped
/// before a run that needs the exclusive lock (see [`Placed`]).
fn place_backlog(
    replica: &mut SpiReplica,
    start: u32,
    end: u32,
    max_rows: Option<usize>,
    lock: LockHeld,
) -> Result<(u32, bool), CausalError> {
    let mut pending: std::collections::VecDeque<reconcile::NewEntry> = std::collections::VecDeque::new();
    let (mut read_to, mut placed_to) = (start, start);
    let mut progress =
        crate::pg::progress::Progress::start("placing", &replica.group, "entries", Some(i64::from(end - start)));
    let mut placed_rows = 0;
    let run_rows_at_most = max_rows.map_or(PLACEMENT_RUN_ROWS, |m| m.clamp(1, PLACEMENT_RUN_ROWS));
    while placed_to < end && max_rows.is_none_or(|m| placed_rows < m) {
        // Read pages until the pending entries hold a run's worth of rows, or none are left.
        let mut rows: usize = pending.iter().map(|e| e.2.ops.len()).sum();
        while rows < run_rows_at_most && read_to < end {
            let to = read_to.saturating_add(PLACEMENT_PAGE).min(end);
            let page = unplaced_entries(replica.dag.store(), &replica.group, read_to, to)?;
            if page.len() as u32 != to - read_to {
                return Err(CausalError::Corrupt(format!(
                    "group {}: entries {read_to}..{to} are not all stored",
                    replica.group
                )));
            }
            rows += page.iter().map(|e| e.2.ops.len()).sum::<usize>();
            pending.extend(page);
            read_to = to;
        }
        let mut run = Vec::new();
        let mut run_rows = 0;
        while let Some(e) = pending.front() {
            if !run.is_empty() && run_rows + e.2.ops.len() > run_rows_at_most {
                break;
            }
            run_rows += e.2.ops.len();
            run.extend(pending.pop_front());
        }
        let run_len = run.len() as u32;
        replica.local = run.iter().map(|e| e.0).collect();
        let started = std::time::Instant::now();
        let changes = reconcile::plan_decoded(replica, run).map_err(engine_err)?;
        if lock == LockHeld::Shared && cancels_local(replica, &changes) {
            return Ok((placed_to, true));
        }
        apply_run(replica, placed_to + run_len, changes, started)?;
        placed_to += run_len;
        placed_rows += run_rows;
        progress.set(i64::from(placed_to - start));
    }
    Ok((placed_to, false))
}

/// Whether a run cancels one of the local commits it places: their rows are in the tables,
/// and applying the run writes them back to the view.
fn cancels_local(replica: &SpiReplica, changes: &Changes) -> bool {
    changes.journal.iter().any(|(h, j)| !j.verdict.is_ok() && replica.local.contains(h))
}

/// Reconciles a group after a local commit stored `entry` (decoded), whose rows are already
/// in the tables, together with the group's earlier local commits not placed yet. If the
/// engine would cancel `entry`, the commit fails (23000).
/// `dag` is the one the entry was appended through (its state and caches are current).
pub fn reconcile_local(
    group: &Group,
    dag: Dag<SpiStore>,
    entry: reconcile::NewEntry,
) -> Result<Reconciled, CausalError> {
    let hash = entry.0;
    let state = dag.store().state().map_err(causal_core::DagError::from)?;
    // The entry itself is the last stored; those before it may wait to be placed (a few: see
    // `place_long_backlog`).
    let mut new = if state.reconciled_count + 1 < state.entry_count {
        let mut earlier = unplaced_entries(dag.store(), &group.id, state.reconciled_count, state.entry_count)?;
        earlier.retain(|e| e.0 != hash);
        earlier
    } else {
        Vec::new()
    };
    new.push(entry);
    let local = new.iter().map(|e| e.0).collect();
    let mut replica = SpiReplica::over(group, dag, local);
    run_engine(&mut replica, state.entry_count, |r| {
        let changes = reconcile::plan_decoded(r, new).map_err(engine_err)?;
        match changes.journal.iter().find(|(h, j)| *h == hash && !j.verdict.is_ok()) {
            Some((_, j)) => Err(CausalError::Cancelled(j.verdict.reason.clone().unwrap_or_default())),
            None => Ok(changes),
        }
    })
}

/// Before a local commit that is placed at once is appended through `dag` (whose group row
/// is locked): places the earlier local commits still waiting, in bounded runs, if there are
/// more than a few. The few that remain go into the commit's own run ([`reconcile_local`]).
/// Placing them first keeps that run small, and a commit carrying authority is never stored
/// while runs that do not include it resolve the group's authority.
pub fn place_long_backlog(group: &Group, dag: Dag<SpiStore>) -> Result<Dag<SpiStore>, CausalError> {
    let state = dag.store().state().map_err(causal_core::DagError::from)?;
    if state.entry_count.saturating_sub(state.reconciled_count) <= SMALL_BACKLOG {
        return Ok(dag);
    }
    let mut replica = SpiReplica::over(group, dag, Vec::new());
    place_backlog(&mut replica, state.reconciled_count, state.entry_count, None, LockHeld::Exclusive)?;
    Ok(replica.dag)
}

/// How many earlier unplaced entries a local commit placed at once takes into its own run.
const SMALL_BACKLOG: u32 = 8;

fn engine_err(e: ReconcileError) -> CausalError {
    CausalError::Reconcile(e.to_string())
}

/// Plans a run on `replica`, then applies it, timing both halves. Afterwards the entries
/// before node id `placed_to` count as placed.
fn run_engine(
    replica: &mut SpiReplica,
    placed_to: u32,
    plan: impl FnOnce(&SpiReplica) -> Result<Changes, CausalError>,
) -> Result<Reconciled, CausalError> {
    let started = std::time::Instant::now();
    let changes = plan(replica)?;
    apply_run(replica, placed_to, changes, started)
}

/// Applies a planned run (planning began at `started`); afterwards the entries before node id
/// `placed_to` count as placed.
fn apply_run(
    replica: &mut SpiReplica,
    placed_to: u32,
    changes: Changes,
    started: std::time::Instant,
) -> Result<Reconciled, CausalError> {
    let planned = started.elapsed();
    replica.apply(&changes).map_err(engine_err)?;
    replica.dag.store().mark_reconciled(placed_to).map_err(causal_core::DagError::from)?;
    Ok(Reconciled { changes, plan: planned, apply: started.elapsed() - planned })
}
