//! `causal.catch_up`: seals what is committed, then places the sealed entries in batches; and
//! `causal._place_sealed`, the sync worker's placing call, which only places.

use crate::catalog::group::Group;
use crate::error::{CausalError, OrReport};
use crate::pg::spi::run_prepared;
use crate::replay::placement::{catch_up_at_most, LockHeld, Placed};

/// Places the local commits that the engine has not placed yet, in every group or in `grp`;
/// returns how many. Local commits of plain data are placed in batches: before an import, an
/// administrative entry or a schema change of their group, when the sync worker gets to them,
/// or when this is called. Takes each group's lock shared, as its writers do: their rows are in
/// the tables already, and placing writes only pg_causal's catalog. Only a run that cancels a
/// local commit, and so puts rows of the tables back to the view, waits for the writers: it
/// takes the lock exclusively, seals what they committed, and places from there. With `max_rows`, it stops in each group once about that
/// many rows are placed (whole entries, in bounded runs), so the lock is held briefly; the
/// sync worker calls it so, again and again, until nothing is left. `max_rows` 0 seals and
/// places nothing: the entries are durable when the call's transaction commits, without
/// waiting for placement.
#[pgrx::pg_extern(name = "catch_up")]
fn catch_up_groups(grp: pgrx::default!(Option<&str>, "NULL"), max_rows: pgrx::default!(Option<i64>, "NULL")) -> i64 {
    let f = "causal.catch_up";
    let per_group = rows_per_group(max_rows, f);
    // Every transaction committed before the call becomes entries first.
    crate::capture::seal_committed().or_report(f);
    if per_group == Some(0) {
        return 0;
    }
    let mut placed = 0;
    for group in groups_to_place(grp, f) {
        // The sealer's lock first: placing holds the group's row, which sealers lock after it.
        crate::capture::seal::lock_sealer();
        let mut done = place_shared(&group, per_group, f);
        if done.needs_exclusive {
            crate::capture::lock_group_exclusive(&group.id).or_report(f);
            done.entries += place(&group, per_group, LockHeld::Exclusive, f).entries;
        }
        placed += done.entries as i64;
    }
    placed
}

/// Places sealed local commits, in every group, about `max_rows` rows per group at most; returns
/// how many entries, or NULL when a run would cancel a local commit: that needs
/// `causal.catch_up`, which waits for the writers and seals first. It neither seals nor takes
/// the sealer's lock, so the sync worker calls it in a backend of its own while another seals:
/// sealing decodes the WAL, and each decoding run resets the backend's caches, after which
/// every statement placing runs would be planned again (half of the worker's time under a
/// steady load of single-row commits, docs/BENCHMARKS.md).
#[pgrx::pg_extern(name = "_place_sealed")]
fn place_sealed(max_rows: i64) -> Option<i64> {
    let f = "causal._place_sealed";
    let per_group = rows_per_group(Some(max_rows), f);
    let mut placed = 0;
    for group in groups_to_place(None, f) {
        let done = place_shared(&group, per_group, f);
        placed += done.entries as i64;
        if done.needs_exclusive {
            return None;
        }
    }
    Some(placed)
}

fn rows_per_group(max_rows: Option<i64>, f: &'static str) -> Option<usize> {
    if let Some(m) = max_rows.filter(|m| *m < 0) {
        CausalError::BadArgument { parameter: "max_rows", why: format!("{m} is not a number of rows") }.report(f);
    }
    max_rows.map(|m| usize::try_from(m).unwrap_or(usize::MAX))
}

/// `grp`, or every group with entries left to place.
fn groups_to_place(grp: Option<&str>, f: &'static str) -> Vec<Group> {
    let ids: Vec<String> = match grp {
        Some(g) => vec![g.to_string()],
        None => run_prepared(
            "SELECT group_id FROM causal.group_defs WHERE reconciled_count < entry_count ORDER BY group_id",
            &[],
            false,
            |rows| rows.map(|r| r.get::<String>(1)).collect::<Result<Vec<_>, _>>(),
        )
        .map_err(CausalError::from)
        .or_report(f)
        .into_iter()
        .flatten()
        .collect(),
    };
    ids.iter().map(|id| Group::find(id).or_report(f)).collect()
}

/// Places with the group's lock taken shared, as its writers take it.
fn place_shared(group: &Group, per_group: Option<usize>, f: &'static str) -> Placed {
    crate::capture::lock_group_shared(&group.id).or_report(f);
    let before = std::time::Instant::now();
    let done = place(group, per_group, LockHeld::Shared, f);
    if done.entries > 0 {
        pgrx::debug1!("pg_causal: placed {} entries of group {} in {:?}", done.entries, group.id, before.elapsed());
    }
    done
}

fn place(group: &Group, per_group: Option<usize>, lock: LockHeld, f: &'static str) -> Placed {
    crate::pg::spi::without_jit(|| catch_up_at_most(group, per_group, lock))
        .map_err(CausalError::from)
        .and_then(|r| r)
        .or_report(f)
}
