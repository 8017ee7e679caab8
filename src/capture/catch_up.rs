//! `causal.catch_up`: seals what is committed, then places the sealed entries in batches.

use crate::catalog::group::Group;
use crate::error::CausalError;
use crate::pg::spi::run_prepared;

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
    use crate::error::OrReport;
    let f = "causal.catch_up";
    if let Some(m) = max_rows.filter(|m| *m < 0) {
        CausalError::BadArgument { parameter: "max_rows", why: format!("{m} is not a number of rows") }.report(f);
    }
    let per_group = max_rows.map(|m| usize::try_from(m).unwrap_or(usize::MAX));
    // Every transaction committed before the call becomes entries first.
    crate::capture::seal_committed().or_report(f);
    if per_group == Some(0) {
        return 0;
    }
    let groups: Vec<String> = match grp {
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
    let mut placed = 0;
    for name_or_id in groups {
        let group = Group::find(&name_or_id).or_report(f);
        use crate::replay::placement::{catch_up_at_most, LockHeld};
        let place = |lock| {
            crate::pg::spi::without_jit(|| catch_up_at_most(&group, per_group, lock))
                .map_err(CausalError::from)
                .and_then(|r| r)
                .or_report(f)
        };
        // The sealer's lock first: placing holds the group's row, which sealers lock after it.
        crate::capture::seal::lock_sealer();
        crate::capture::lock_group_shared(&group.id).or_report(f);
        let before = std::time::Instant::now();
        let mut done = place(LockHeld::Shared);
        if done.needs_exclusive {
            crate::capture::lock_group_exclusive(&group.id).or_report(f);
            done.entries += place(LockHeld::Exclusive).entries;
        }
        let n = done.entries;
        placed += n as i64;
        if n > 0 {
            pgrx::debug1!("pg_causal: placed {n} entries of group {} in {:?}", group.id, before.elapsed());
        }
    }
    placed
}
