//! Journal records kept as runs (`causal.journal_runs`, catalog.sql): entries of consecutive
//! node ids placed for the first time in one placing run, each of height one more than the one
//! before it (a writer's commits, each on the one before), whose rows were all new and which
//! stand. Such an entry's record says nothing a run cannot: its height (the run's first plus
//! its place in the run), status 'ok', and an empty undo (its inserts give it). A run of a
//! placing call's single-row local commits takes one small row where each commit took a
//! `journal` row and two index entries. A `journal` row of the same entry comes first.
//!
//! Uses [`crate::pg`].

use causal_core::reconcile::{OrderKey, ReconcileError};
use causal_core::EntryHash;

use crate::pg::spi::{exec_prepared, get_prepared};

use super::{node_i32, store_err, stored_height, JournalRow, FRESH_UNDO};

/// Entries with node ids `first_node..=last_node`, of heights from `first_height` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Run {
    pub first_node: i32,
    pub last_node: i32,
    pub first_height: i32,
}

/// Whether this catalog keeps runs (0.2.0; `catalog::shape`).
pub(super) fn kept() -> bool {
    crate::catalog::shape::has_journal_runs()
}

/// The runs that `records` (node id, height), sorted by node id, make: each next record's node
/// id and height one more than the one before it.
pub(super) fn runs_of(records: &[(i32, i32)]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for &(node, height) in records {
        match out.last_mut() {
            Some(r)
                if Some(node) == r.last_node.checked_add(1)
                    && Some(height) == r.first_height.checked_add(r.last_node - r.first_node + 1) =>
            {
                r.last_node = node;
            }
            _ => out.push(Run { first_node: node, last_node: node, first_height: height }),
        }
    }
    out
}

/// Stores `runs` of group `grp`.
pub(super) fn write(grp: i32, runs: &[Run]) -> Result<(), ReconcileError> {
    if runs.is_empty() {
        return Ok(());
    }
    let firsts: Vec<i32> = runs.iter().map(|r| r.first_node).collect();
    let lasts: Vec<i32> = runs.iter().map(|r| r.last_node).collect();
    let heights: Vec<i32> = runs.iter().map(|r| r.first_height).collect();
    exec_prepared(
        "INSERT INTO causal.journal_runs (grp, first_node, last_node, first_height) \
         SELECT $1, f, l, h FROM unnest($2::int[], $3::int[], $4::int[]) AS x(f, l, h)",
        &[grp.into(), firsts.into(), lasts.into(), heights.into()],
    )
    .map_err(store_err)
}

/// The height of entry `node` of group `grp` if a run holds its record.
pub(super) fn height(grp: i32, node: i32) -> Result<Option<i32>, ReconcileError> {
    if !kept() {
        return Ok(None);
    }
    get_prepared::<i32>(
        "SELECT r.first_height + ($2 - r.first_node) FROM (SELECT first_node, last_node, first_height \
         FROM causal.journal_runs WHERE grp = $1 AND first_node <= $2 ORDER BY first_node DESC LIMIT 1) r \
         WHERE r.last_node >= $2",
        &[grp.into(), node.into()],
    )
    .map_err(store_err)
}

/// The order key of entry `hash` (node `node`) if a run holds its record and no `journal` row
/// does: what a row written for it must keep.
pub(super) fn held_order(grp: i32, node: i32, hash: &EntryHash) -> Result<Option<OrderKey>, ReconcileError> {
    let Some(height) = height(grp, node)? else { return Ok(None) };
    let row =
        get_prepared::<i32>("SELECT 1 FROM causal.journal WHERE grp = $1 AND node_id = $2", &[grp.into(), node.into()])
            .map_err(store_err)?;
    Ok(match row {
        Some(_) => None,
        None => Some(OrderKey { height: stored_height(height)?, hash: *hash }),
    })
}

/// The record of entry `hash` (node `node`) if a run holds it, in the shape `journal` rows are
/// read in.
pub(super) fn record(
    grp: i32,
    node: causal_core::dag::NodeId,
    hash: String,
) -> Result<Option<JournalRow>, ReconcileError> {
    Ok(height(grp, node_i32(node)?)?.map(|h| fresh_row(hash, h)))
}

fn fresh_row(hash: String, height: i32) -> JournalRow {
    (Some(hash), Some(height), Some("ok".to_string()), None, None, Some(FRESH_UNDO.to_string()), None)
}

/// The records runs hold of group `grp`'s entries of height `from` or more that no `journal`
/// row holds, with their hashes in Base64, in the shape `journal` rows are read in.
pub(super) fn records_from(grp: i32, from: i32) -> Result<Vec<JournalRow>, ReconcileError> {
    if !kept() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {}, r.first_height + (e.node_id - r.first_node) FROM causal.journal_runs r \
         JOIN causal.dag_entries e ON e.grp = r.grp AND e.node_id BETWEEN r.first_node AND r.last_node \
         WHERE r.grp = $1 AND r.first_height + (r.last_node - r.first_node) >= $2 \
         AND r.first_height + (e.node_id - r.first_node) >= $2 \
         AND NOT EXISTS (SELECT 1 FROM causal.journal j WHERE j.grp = e.grp AND j.node_id = e.node_id)",
        crate::catalog::entry_row::hash_sql("e")
    );
    let rows = crate::pg::spi::run_prepared(&sql, &[grp.into(), from.into()], false, |rows| {
        rows.map(|r| Ok((r.get::<String>(1)?, r.get::<i32>(2)?))).collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .map_err(store_err)?;
    rows.into_iter()
        .map(|(hash, height)| match (hash, height) {
            (Some(hash), Some(height)) => Ok(fresh_row(hash, height)),
            _ => Err(ReconcileError::Corrupt(format!("a journal run of group number {grp} names no entry"))),
        })
        .collect()
}

/// SQL for the height of the entry row aliased `e` if a run holds its record (NULL in a
/// catalog without runs): beside a `journal` row's height, which comes first.
pub fn height_sql(e: &str) -> String {
    if kept() {
        // The last run starting at or before the entry, then whether it reaches it: a filter
        // inside the ordered scan would read every earlier run of an entry no run holds.
        format!(
            "(SELECT r.first_height + ({e}.node_id - r.first_node) FROM (SELECT first_node, last_node, \
             first_height FROM causal.journal_runs WHERE grp = {e}.grp AND first_node <= {e}.node_id \
             ORDER BY first_node DESC LIMIT 1) r WHERE r.last_node >= {e}.node_id)"
        )
    } else {
        "NULL::int4".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_nodes_of_consecutive_heights_make_one_run() {
        let runs = runs_of(&[(5, 10), (6, 11), (7, 12), (9, 13), (10, 14), (11, 16), (12, 17)]);
        assert_eq!(
            runs,
            vec![
                Run { first_node: 5, last_node: 7, first_height: 10 },
                Run { first_node: 9, last_node: 10, first_height: 13 },
                Run { first_node: 11, last_node: 12, first_height: 16 },
            ]
        );
        assert!(runs_of(&[]).is_empty());
        assert_eq!(runs_of(&[(i32::MAX, 1)]), vec![Run { first_node: i32::MAX, last_node: i32::MAX, first_height: 1 }]);
    }
}
