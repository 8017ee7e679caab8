//! The group's view of one table at the frontier: the rows placement keeps in
//! `causal.row_meta`, with the local commits the engine has not placed yet applied on top.
//! Those extend the frontier one after the other, so applying their operations in order is
//! their placement.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use causal_core::reconcile::{fold_op, ReconcileError, RowKey};

use crate::catalog::group::Group;
use crate::error::CausalError;

/// The live rows of `table` (its name in group `group_id`) in the group's view at the
/// frontier, by key, each in the encoded form entries hold (NULL columns left out).
pub fn frontier_view(group_id: &str, table: &str) -> Result<BTreeMap<RowKey, Map<String, Value>>, CausalError> {
    let group = Group::find(group_id)?;
    let replica = super::SpiReplica::new(&group);
    let mut view = BTreeMap::new();
    let err = |e: ReconcileError| CausalError::Reconcile(e.to_string());
    let auth = replica.derivation_authority().map_err(err)?;
    if auth.schema(table).is_some() {
        let mut payloads = super::derived::Payloads::default();
        let mut rows = |page| {
            let rows = super::meta_rows::to_states(page, &replica.names())?;
            let live: Vec<_> = rows.into_iter().filter(|(_, r, _)| r.is_live()).collect();
            for (key, row) in super::derived::derive_all(&replica, &auth, &mut payloads, table, live)? {
                view.insert(key, row.values);
            }
            Ok(true)
        };
        super::row_check::each_page(&replica, table, &mut rows, &mut |problem| Err(ReconcileError::Corrupt(problem)))
            .map_err(err)?;
    }
    let dag = group.dag();
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
