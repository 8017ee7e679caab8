//! `causal.leave_group`: this database stops taking part in a group. Its tables stay, as
//! plain tables with their rows, constraints and indexes; the group's history here goes.

use pgrx::prelude::*;

use crate::catalog::group::Group;
use crate::error::{CausalError, OrReport};

/// Leaves the group `grp` (a name or id): its tables lose pg_causal's triggers and replica
/// identity and become plain tables, with their data; the group's entries, journal and row
/// metadata are deleted here, and the sync worker stops syncing it. Other members are not
/// told (an admin removes a member with `causal.remove_member`). Joining again later starts
/// from the group's history as peers hold it. Returns true.
#[pg_extern]
fn leave_group(grp: &str) -> bool {
    leave(grp).or_report("causal.leave_group");
    true
}

fn leave(grp: &str) -> Result<(), CausalError> {
    let group = Group::find(grp)?;
    crate::capture::refuse_after_writes(&group.id, "leave the group")?;
    // What is committed is sealed, and the writers in flight commit first: none is left
    // half-captured.
    crate::capture::lock_group_exclusive(&group.id)?;
    // As the caller: only a role that may write pg_causal's catalog (its owner, a superuser)
    // and alter the tables can leave.
    drop_group(&group)?;
    crate::catalog::tables::tables_changed()?;
    crate::catalog::group::clear_cache();
    crate::pg::notify::notify(&format!("leave:{}", group.id))?;
    Ok(())
}

fn drop_group(group: &Group) -> Result<(), CausalError> {
    let relids = crate::pg::spi::run_prepared(
        "SELECT relid FROM causal.replicated_tables WHERE group_id = $1 AND relid IS NOT NULL",
        &[group.id.clone().into()],
        false,
        |rows| rows.filter_map(|r| r.get::<pg_sys::Oid>(1).transpose()).collect::<Result<Vec<_>, _>>(),
    )?;
    for relid in relids {
        crate::catalog::tables::remove_triggers(relid)?;
    }
    for sql in [
        "DELETE FROM causal.row_meta WHERE grp = $1",
        "DELETE FROM causal.journal WHERE grp = $1",
        "DELETE FROM causal.dag_entry_tags WHERE grp = $1",
        "DELETE FROM causal.dag_entries WHERE grp = $1",
    ] {
        Spi::run_with_args(sql, &[group.num.into()])?;
    }
    // A catalog not upgraded yet has no sets of fresh rows (catalog::shape).
    if crate::catalog::shape::has_journal_runs() {
        Spi::run_with_args("DELETE FROM causal.journal_runs WHERE grp = $1", &[group.num.into()])?;
    }
    if crate::catalog::shape::has_fresh_row_sets() {
        Spi::run_with_args("DELETE FROM causal.fresh_rows WHERE grp = $1", &[group.num.into()])?;
    }
    for sql in [
        // The replicated tables and their rules go with the group's row.
        "DELETE FROM causal.group_defs WHERE group_id = $1",
        "DELETE FROM causal.wanted_groups WHERE group_id = $1",
        "DELETE FROM causal.sync_group_state WHERE group_id = $1",
    ] {
        Spi::run_with_args(sql, &[group.id.clone().into()])?;
    }
    Ok(())
}
