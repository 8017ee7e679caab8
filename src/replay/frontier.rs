//! The group's view of one table at the frontier: the rows placement keeps in
//! `causal.row_meta`, with the local commits the engine has not placed yet applied on top.
//! Those extend the frontier one after the other, so applying their operations in order is
//! their placement.

use std::collections::BTreeMap;

use pgrx::{JsonB, Spi};
use serde_json::{Map, Value};

use causal_core::reconcile::{fold_op, RowKey};

use crate::catalog::group::Group;
use crate::error::CausalError;

/// The live rows of `table` (its name in group `group_id`) in the group's view at the
/// frontier, by key, each in the encoded form entries hold (NULL columns left out).
pub fn frontier_view(group_id: &str, table: &str) -> Result<BTreeMap<RowKey, Map<String, Value>>, CausalError> {
    let mut view: BTreeMap<RowKey, Map<String, Value>> = Spi::connect(|client| {
        let rows = client.select(
            "SELECT key, vals FROM causal.row_meta \
             WHERE grp = (SELECT grp FROM causal.group_defs WHERE group_id = $1) AND table_name = $2 AND NOT meta ? 'd'",
            None,
            &[group_id.into(), table.into()],
        )?;
        let mut out = BTreeMap::new();
        for r in rows {
            if let (Some(k), Some(JsonB(Value::Object(v)))) = (r.get::<String>(1)?, r.get::<JsonB>(2)?) {
                out.insert(RowKey::from_stored(k), v);
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })?;
    let dag = Group::find(group_id)?.dag();
    let state = dag.store().state().map_err(causal_core::DagError::from)?;
    if state.reconciled_count >= state.entry_count {
        return Ok(view);
    }
    let schema = crate::catalog::tables::local_schema_by_name(group_id, table)?;
    for (_, _, payload) in
        super::placement::unplaced_entries(dag.store(), group_id, state.reconciled_count, state.entry_count)?
    {
        for op in &payload.ops {
            fold_op(&mut view, &schema, op);
        }
    }
    Ok(view)
}
