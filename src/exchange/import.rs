//! Importing a bundle: reading it, checking and storing its entries, and placing them.

use std::collections::HashSet;

use pgrx::prelude::*;
use serde_json::{json, Value};

use causal_core::dag::closure::StoredProbe;
use causal_core::entry::{EncodedEntry, Position};
use causal_core::membership::derive_meta;
use causal_core::payload::SignedPayload;
use causal_core::precheck::{precheck_stream, Prechecked};
use causal_core::reconcile::NewEntry;
use causal_core::signature_cover::CoverTracker;
use causal_core::wire::{WireBundle, WireEntry};
use causal_core::{Dag, DagError, EntryHash, GroupId, HashAlgorithm};

use crate::catalog::group::Group;
use crate::catalog::store::SpiStore;
use crate::error::CausalError;
use crate::pg::spi::get_opt;

use super::validate::*;

/// Creates the group from the genesis in the bundle.
fn adopt_group(group_id: &str, alg: HashAlgorithm, entries: &[WireEntry]) -> Result<Group, CausalError> {
    let bad = |why: String| CausalError::BadBundle(why);
    let genesis = entries
        .iter()
        .find(|e| e.hash.to_b64() == group_id)
        .ok_or_else(|| CausalError::UnknownGroup(format!("{group_id} (the bundle does not hold its genesis)")))?
        .decode()
        .map_err(|e| bad(format!("genesis: {e}")))?;
    genesis.verify_hashes(alg).map_err(|e| bad(format!("genesis: {e}")))?;
    let payload = SignedPayload::from_value(&genesis.payload).map_err(|e| bad(format!("genesis: {e}")))?;
    let g = payload.genesis.clone().ok_or_else(|| bad("the group's first entry is not a genesis".into()))?;
    if !genesis.header.prev.is_empty() || g.hash_algorithm != alg.name() {
        return Err(bad("the genesis does not match the bundle's group".into()));
    }
    payload.verify(&g.admin, None, &Position::new()).map_err(|e| bad(format!("genesis: {e}")))?;
    if get_opt::<bool>("SELECT true FROM causal.group_defs WHERE name = $1", &[g.name.clone().into()])?.is_some() {
        return Err(CausalError::DuplicateGroup(g.name));
    }
    crate::catalog::group::insert_group(group_id, &g.name, alg)?;
    let group = Group::find(group_id)?;
    let mut e = genesis;
    e.meta = derive_meta(&payload);
    group.dag().insert(e)?;
    Ok(group)
}

/// Whether every hash of `prev` is stored (storage errors propagate).
fn all_present(dag: &causal_core::Dag<crate::catalog::store::SpiStore>, prev: &Position) -> Result<bool, CausalError> {
    for p in prev {
        if !dag.contains(p)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Entries checked per chunk before they are stored (see `precheck_stream`): small enough
/// that storing starts early, large enough that a batch of signatures is still cheap.
const PRECHECK_CHUNK: usize = 256;

pub fn import_bundle<'b>(bytes: &'b [u8]) -> Result<Value, CausalError> {
    let parsing = std::time::Instant::now();
    // Entries keep their payloads as text until they are checked (see `causal_core::wire`).
    let text = std::str::from_utf8(bytes).map_err(|_| CausalError::BadBundle("not UTF-8".into()))?;
    let WireBundle { group: group_id, hash_algorithm: alg_name, entries } =
        WireBundle::parse(text).map_err(|e| CausalError::BadBundle(e.to_string()))?;
    let alg = HashAlgorithm::parse(&alg_name).map_err(|e| CausalError::BadBundle(e.to_string()))?;
    let gid: GroupId = group_id.parse().map_err(|_| CausalError::BadBundle("group is not a hash".into()))?;
    let (group, adopted) = match Group::find(&group_id) {
        Ok(g) if g.algorithm != alg => {
            return Err(CausalError::BadBundle("hash algorithm differs from the group's".into()))
        }
        Ok(g) => (g, false),
        Err(CausalError::UnknownGroup(_)) => (adopt_group(&group_id, alg, &entries)?, true),
        Err(e) => return Err(e),
    };
    // Replay would overwrite rows this transaction wrote, whose entry is sealed after commit.
    crate::capture::refuse_after_writes(&group.id, "import the group's history")?;
    let parsed = parsing.elapsed();
    let started = std::time::Instant::now();
    // Local writers of the group finish first, and new ones wait for this import.
    // Committed local transactions are sealed first, under the lock.
    crate::capture::lock_group_exclusive(&group.id)?;
    // Local commits not placed yet are placed first: the engine's view must include them. (A
    // group adopted from this bundle has none; its genesis is placed with the bundle.)
    if !adopted {
        crate::replay::placement::catch_up(&group)?;
    }
    let mut dag = group.dag();
    dag.store().lock().map_err(DagError::from)?;
    dag.store().defer_state_writes();
    // The entries stored by this import and not placed yet, decoded, predecessors first.
    let mut unplaced = Unplaced::default();
    if adopted {
        if let Some(g) = dag.entry(&gid.genesis())? {
            let p =
                SignedPayload::from_value(&g.payload).map_err(|e| CausalError::BadBundle(format!("genesis: {e}")))?;
            unplaced.push((g.hash, g.header.prev, p));
        }
    }
    let (mut accepted, mut duplicates) = (if adopted { 1 } else { 0 }, 0);
    let mut rejected: Vec<(EntryHash, String)> = Vec::new();
    let mut rejected_set: HashSet<EntryHash> = HashSet::new();
    let mut checking = std::time::Duration::ZERO;
    let pending: Vec<WireEntry> = entries.into_iter().filter(|e| !(adopted && e.hash == gid.genesis())).collect();
    let keys = known_keys(&group_id, &pending)?;
    // Which of the bundle's entries (and their predecessors) are stored. The stored set is
    // closed under predecessors, so the bundle's boundary is asked first, and the rest only
    // where that leaves it open (`StoredProbe`): new history costs two lookups, not one per
    // entry.
    {
        let probe = StoredProbe::new(pending.iter().map(|e| (&e.hash, &e.header.prev)));
        dag.store().prefetch_ids(&probe.first_round()).map_err(DagError::from)?;
        let (ask, absent) = probe.second_round(|h| dag.store().known(h));
        dag.store().prefetch_ids(&ask).map_err(DagError::from)?;
        for h in absent {
            dag.store().assume_absent(h);
        }
    }
    let mut positions = Positions::for_group(group.clone());
    // Unsigned entries wait for a signature of their author that covers them, later in the
    // bundle (`causal_core::signature_cover`); `released` says that one came.
    let mut covers = CoverTracker::new();
    let mut covered: HashSet<EntryHash> = HashSet::new();
    let released = std::cell::Cell::new(false);
    // Stores one prechecked entry whose turn has come; gives it back if a predecessor is not
    // stored yet (it comes later in the bundle, or is missing) or it waits for its signature.
    let mut place = |dag: &mut causal_core::Dag<crate::catalog::store::SpiStore>,
                     e: WireEntry<'b>,
                     pre: Prechecked|
     -> Result<Placed<'b>, CausalError> {
        if dag.contains(&e.hash)? {
            duplicates += 1;
            return Ok(Placed::Not);
        }
        if let Some(bad) = e.header.prev.iter().find(|p| rejected_set.contains(*p)) {
            rejected_set.insert(e.hash);
            rejected.push((e.hash, format!("depends on rejected entry {bad}")));
            return Ok(Placed::Not);
        }
        let pre = match pre {
            // Wrong whatever comes before it (and so never a cover for an unsigned entry).
            Prechecked::Invalid(reason) => {
                rejected_set.insert(e.hash);
                rejected.push((e.hash, reason));
                return Ok(Placed::Not);
            }
            // Its author's signature on a later entry covers it: its authorship is established.
            Prechecked::Unsigned(p) if covered.remove(&e.hash) => Prechecked::Signed(p),
            Prechecked::Unsigned(p) => {
                if !covers.is_held(&e.hash) {
                    if let Err(err) = covers.hold(e.hash, p.author, e.header.prev.clone()) {
                        rejected_set.insert(e.hash);
                        rejected.push((e.hash, err.to_string()));
                        return Ok(Placed::Not);
                    }
                }
                return Ok(Placed::Waiting(e, Prechecked::Unsigned(p)));
            }
            Prechecked::Signed(p) => {
                let newly = covers.vouch(&p.author, &e.header.prev);
                if !newly.is_empty() {
                    released.set(true);
                    covered.extend(newly);
                }
                Prechecked::Signed(p)
            }
            other => other,
        };
        if !all_present(dag, &e.header.prev)? {
            return Ok(Placed::Waiting(e, pre));
        }
        let t = std::time::Instant::now();
        let verdict = validate(dag, &mut positions, &gid, &e.header.prev, pre);
        checking += t.elapsed();
        match verdict {
            Err(reason) => {
                rejected_set.insert(e.hash);
                rejected.push((e.hash, reason));
            }
            Ok(payload) => {
                let meta = derive_meta(&payload);
                let (hash, prev) = (e.hash, e.header.prev.clone());
                // Its hashes were verified by the precheck; the payload is stored as it came,
                // which parses to the value they were computed from.
                let entry =
                    EncodedEntry { hash, header: e.header, payload_text: e.payload.to_owned(), meta: meta.clone() };
                match dag.insert_encoded(entry) {
                    Ok(_) => {
                        positions.covers.appended(hash, &prev, &meta);
                        accepted += 1;
                        return Ok(Placed::Stored((hash, prev, payload)));
                    }
                    Err(err) => {
                        rejected_set.insert(hash);
                        rejected.push((hash, err.to_string()));
                    }
                }
            }
        }
        Ok(Placed::Not)
    };
    // Stored entries wait here for the engine, which places them (rows, verdicts) every
    // `causal.import_run_rows` row operations while the next chunks are checked, and once more at
    // the end: the checks on the other threads overlap the engine's work as well as the
    // storing. Placing history in runs gives the view that placing it at once would (the
    // view is a function of the history, not of how it arrived; docs/SEMANTICS.md).
    let mut waiting: Vec<(WireEntry, Prechecked)> = Vec::new();
    let (mut in_place, stream_started) = (std::time::Duration::ZERO, std::time::Instant::now());
    let workers = crate::guc::verify_threads();
    let run_rows = crate::guc::import_run_rows();
    let mut progress =
        crate::pg::progress::Progress::start("importing", &group.id, "entries checked", Some(pending.len() as i64));
    precheck_stream(pending, alg, &gid, &keys, workers, PRECHECK_CHUNK, |part| {
        let t = std::time::Instant::now();
        progress.add(part.len() as i64);
        for (e, pre) in part {
            match place(&mut dag, e, pre)? {
                Placed::Stored(n) => unplaced.add(n, run_rows, &group, &dag)?,
                Placed::Waiting(e, pre) => waiting.push((e, pre)),
                Placed::Not => {}
            }
        }
        // A signature came for entries that wait: they go now, with it.
        if released.replace(false) {
            place_waiting(&mut place, &mut dag, &mut waiting, &mut unplaced, run_rows, &group)?;
        }
        // Their rows are written with the run that places them (`Unplaced::place` writes the
        // pending rows first): one insertion per run, not per chunk.
        in_place += t.elapsed();
        Ok::<(), CausalError>(())
    })?;
    // The time this thread waited for the checks, or made them itself (`precheck_stream`).
    let precheck = stream_started.elapsed().saturating_sub(in_place);
    // Entries that came before their predecessors in the bundle.
    place_waiting(&mut place, &mut dag, &mut waiting, &mut unplaced, run_rows, &group)?;
    for (e, _) in waiting {
        if covers.is_held(&e.hash) {
            rejected.push((e.hash, "unsigned, and no later entry of its author in the bundle covers it".into()));
            continue;
        }
        let mut missing = String::new();
        for p in &e.header.prev {
            if !dag.contains(p)? {
                missing = p.to_b64();
                break;
            }
        }
        rejected.push((e.hash, format!("missing predecessor {missing}")));
    }
    unplaced.place(&group, &dag)?;
    // The rows and state of what the last run did not cover (rejected or duplicate entries).
    dag.store().write_state().map_err(DagError::from)?;
    let stored_and_placed = started.elapsed();
    if accepted > 0 {
        crate::pg::notify::notify_changed(&group.id)?;
    }
    if accepted >= 1000 {
        // A large import changes the catalog's size a lot; fresh statistics keep the plans of
        // the next commits and imports on their indexes (autovacuum may be a minute away).
        // Only when the entries doubled since they were last analyzed (the row count the last
        // ANALYZE recorded; an ANALYZE of some columns does not reset n_mod_since_analyze):
        // with the bar at a fifth, a catch-up of 100k entries in imports of 5000 analyzed in 4
        // or 5 of its 21 imports, which took 325-610 ms against about 210 ms for the others.
        // The plans that matter probe indexes whatever the statistics say (see `rows` in
        // replay.rs).
        let stale = get_opt::<bool>(
            "SELECT s.n_live_tup > greatest(1000, c.reltuples * 2) FROM pg_stat_user_tables s \
             JOIN pg_class c ON c.oid = s.relid WHERE s.relid = 'causal.dag_entries'::regclass",
            &[],
        )?
        .unwrap_or(true);
        if stale {
            // Only the columns that plans filter on (and row_meta whole, for the statistics of
            // its lookup indexes' expressions): sampling payloads, predecessor lists and undo
            // records took two thirds of this step's time (440 -> 220 ms at 100k entries), and
            // autovacuum gathers those columns' statistics later. A sample of 3,000 rows
            // (statistics target 10, for this statement only) is enough to keep plans on
            // their indexes, and costs a tenth of the default's 30,000 (58 -> 6 ms at 100k
            // entries with warm caches; in a catch-up, imports that analyzed took 100-350 ms
            // longer than the others).
            // (A catalog not upgraded yet has no sets of fresh rows: catalog::shape.)
            let mut sets =
                if crate::catalog::shape::has_fresh_row_sets() { ", causal.fresh_rows" } else { "" }.to_string();
            if crate::catalog::shape::has_journal_runs() {
                sets.push_str(", causal.journal_runs");
            }
            crate::pg::spi::with_setting("default_statistics_target", "10", || {
                Spi::run(&format!(
                    "ANALYZE causal.dag_entries (grp, node_id, hash, chain, seq), causal.dag_entry_tags, \
                     causal.journal (grp, node_id, height, status), causal.row_meta{sets}"
                ))
            })??;
        }
    }
    let Unplaced { placed, cancelled, runs, catalog, plan, apply, .. } = unplaced;
    // Storing is what the stream and the late entries took, less the checks and placing.
    let storing = stored_and_placed.saturating_sub(checking + precheck + catalog + plan + apply);
    Ok(json!({
        "group": group_id,
        "accepted": accepted,
        "duplicates": duplicates,
        "replayed": placed.replayed,
        "rewound": placed.rewound,
        "cancelled": cancelled,
        "runs": runs,
        "rejected": rejected.iter().map(|(h, r)| json!({"hash": h.to_b64(), "reason": r})).collect::<Vec<_>>(),
        "ms": {"parse": parsed.as_millis() as u64, "precheck": precheck.as_millis() as u64, "validate": checking.as_millis() as u64,
               "store": storing.as_millis() as u64, "catalog": catalog.as_millis() as u64,
               "reconcile": plan.as_millis() as u64, "replay": apply.as_millis() as u64},
    }))
}

/// An entry of a bundle waiting for its predecessors or its signature, with its checks.
type WaitingEntry<'b> = (WireEntry<'b>, Prechecked);

/// Tries the entries that wait again, in bundle order, until a pass stores none; leaves the
/// ones that still wait in `waiting`.
fn place_waiting<'b>(
    place: &mut impl FnMut(&mut Dag<SpiStore>, WireEntry<'b>, Prechecked) -> Result<Placed<'b>, CausalError>,
    dag: &mut Dag<SpiStore>,
    waiting: &mut Vec<WaitingEntry<'b>>,
    unplaced: &mut Unplaced,
    run_rows: usize,
    group: &Group,
) -> Result<(), CausalError> {
    loop {
        let mut progress = false;
        let mut still = Vec::new();
        for (e, pre) in std::mem::take(waiting) {
            match place(dag, e, pre)? {
                Placed::Stored(n) => {
                    unplaced.add(n, run_rows, group, dag)?;
                    progress = true;
                }
                Placed::Waiting(e, pre) => still.push((e, pre)),
                Placed::Not => progress = true,
            }
        }
        *waiting = still;
        if !progress || waiting.is_empty() {
            return Ok(());
        }
    }
}

/// What became of one entry of a bundle when its turn came.
enum Placed<'b> {
    /// Stored, to be placed by the engine.
    Stored(NewEntry),
    /// A predecessor is not stored yet: tried again later.
    Waiting(WireEntry<'b>, Prechecked),
    /// A duplicate, or rejected.
    Not,
}

/// Entries an import has stored and the engine has not placed yet, and what its runs did.
#[derive(Default)]
struct Unplaced {
    entries: Vec<NewEntry>,
    rows: usize,
    placed: causal_core::reconcile::Stats,
    cancelled: usize,
    /// The engine's runs.
    runs: usize,
    catalog: std::time::Duration,
    plan: std::time::Duration,
    apply: std::time::Duration,
}

impl Unplaced {
    fn push(&mut self, entry: NewEntry) {
        self.rows += entry.2.ops.len().max(1);
        self.entries.push(entry);
    }

    /// [`Unplaced::push`], then a run of the engine once `run_rows` row operations wait.
    fn add(&mut self, entry: NewEntry, run_rows: usize, group: &Group, dag: &Dag<SpiStore>) -> Result<(), CausalError> {
        self.push(entry);
        if self.rows >= run_rows {
            self.place(group, dag)?;
        }
        Ok(())
    }

    /// Applies the catalog changes among the entries, then places them all. `dag` is the
    /// import's store: its state row is written first (the engine reads it), and its own copy
    /// learns how far entries are placed.
    fn place(&mut self, group: &Group, dag: &Dag<SpiStore>) -> Result<(), CausalError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        // The next run's list starts at this one's size, so it does not grow by copying.
        let capacity = self.entries.len();
        let entries = std::mem::replace(&mut self.entries, Vec::with_capacity(capacity));
        self.rows = 0;
        // The state row as the engine will read it; then the import goes on keeping its
        // state in memory.
        dag.store().write_state().map_err(DagError::from)?;
        dag.store().defer_state_writes();
        let t = std::time::Instant::now();
        crate::schema::apply::apply_catalog(group, &entries)?;
        self.catalog += t.elapsed();
        let run = crate::replay::placement::reconcile_imported(group, entries)?;
        let upto = dag.store().state().map_err(DagError::from)?.entry_count;
        dag.store().mark_reconciled(upto).map_err(DagError::from)?;
        self.placed.replayed += run.changes.stats.replayed;
        self.placed.rewound += run.changes.stats.rewound;
        self.cancelled += run.changes.journal.iter().filter(|(_, j)| !j.verdict.is_ok()).count();
        self.plan += run.plan;
        self.apply += run.apply;
        self.runs += 1;
        Ok(())
    }
}
