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
-- placing run in any session, and per group the sync worker is fetching, with what is done of
-- how much (docs/OPERATIONS.md).
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
LEFT JOIN causal.group_defs g ON g.group_id = p.group_id
UNION ALL
-- The sync worker's fetches as a whole, from its last report (every few seconds): 'joining' a
-- group this database does not have yet, 'fetching' missing history of one it has.
SELECT w.pid,
       CASE WHEN g.grp IS NULL THEN 'joining' ELSE 'fetching' END,
       g.name,
       s.group_id,
       s.imported,
       s.imported + s.to_fetch,
       round(100.0 * s.imported / (s.imported + s.to_fetch), 1),
       NULL::timestamptz,
       coalesce(s.last_progress, w.reported_at)
FROM causal.sync_group_state s
JOIN causal.sync_worker w ON w.reported_at > now() - interval '10 seconds'
LEFT JOIN causal.group_defs g ON g.group_id = s.group_id
WHERE s.to_fetch > 0;
GRANT SELECT ON causal.progress TO PUBLIC;
"#,
    name = "progress_view",
    requires = [_progress, "catalog"]
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// A group the worker is fetching shows as one row, with what it imported of what it knows
    /// of; a group it has all of shows none.
    #[pg_test]
    fn the_sync_workers_fetch_of_a_group_shows_in_causal_progress() {
        let report = serde_json::json!({
            "pid": 4242, "peer_id": "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
            "addresses": [], "started_at_ms": 0, "peers": [],
            "groups": [
                {"group": "wanted-group", "present": false, "to_fetch": 30, "imported": 10,
                 "last_progress_ms": 0, "peers": 1},
                {"group": "complete-group", "present": true, "to_fetch": 0, "imported": 5,
                 "last_progress_ms": 0, "peers": 1}
            ]
        });
        Spi::run_with_args("SELECT causal._sync_report($1)", &[pgrx::JsonB(report).into()]).unwrap();
        let row = Spi::get_three::<i32, String, String>(
            "SELECT pid, operation, format('%s/%s %s%%', done, total, percent) FROM causal.progress \
             WHERE group_id = 'wanted-group'",
        )
        .unwrap();
        assert_eq!(row, (Some(4242), Some("joining".to_string()), Some("10/40 25.0%".to_string())));
        let others =
            Spi::get_one::<i64>("SELECT count(*) FROM causal.progress WHERE group_id = 'complete-group'").unwrap();
        assert_eq!(others, Some(0));
    }
}
