//! Long operations under way: the view `causal.progress`.

use pgrx::prelude::*;

/// The operations under way in any session (`pg::progress`): importing, placing and sealing, with
/// what is done of how much. Empty unless pg_causal is in `shared_preload_libraries`.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)] // the row type pgrx spells out for SQL
fn _progress() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(operation, String),
        name!(group_id, String),
        name!(done, i64),
        name!(total, Option<i64>),
        name!(started_ms, i64),
        name!(updated_ms, i64),
    ),
> {
    let rows: Vec<_> = crate::pg::progress::running()
        .into_iter()
        .map(|s| (s.pid, s.operation, s.group, s.done, s.total, s.started_ms, s.updated_ms))
        .collect();
    TableIterator::new(rows)
}

extension_sql!(
    r#"
-- Long operations under way, in the style of pg_stat_progress_*: one row per import, sealing or
-- placing run in any session, with what is done of how much (docs/OPERATIONS.md).
CREATE VIEW causal.progress AS
SELECT p.pid,
       p.operation,
       g.name AS group_name,
       p.group_id,
       p.done,
       p.total,
       CASE WHEN p.total > 0 THEN round(100.0 * p.done / p.total, 1) END AS percent,
       to_timestamp(p.started_ms / 1000.0) AS started_at,
       to_timestamp(p.updated_ms / 1000.0) AS updated_at
FROM causal._progress() p
LEFT JOIN causal.group_defs g ON g.group_id = p.group_id;
GRANT SELECT ON causal.progress TO PUBLIC;
"#,
    name = "progress_view",
    requires = [_progress, "catalog"]
);
