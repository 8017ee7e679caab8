//! Writing a group's history as a bundle (`causal.export`).

use serde_json::json;

use causal_core::dag::DagStore;
use causal_core::EntryHash;

use crate::catalog::group::Group;
use crate::error::CausalError;

pub use causal_core::BUNDLE_FORMAT;

/// Every entry of group `grp` not in the history of `since`, predecessors first, as a bundle.
pub fn export_bundle(grp: &str, since: Option<Vec<String>>) -> Result<Vec<u8>, CausalError> {
    let group = Group::find(grp)?;
    let dag = group.dag();
    // Entries of `since` this database does not know say nothing about what to leave out.
    let mut known = causal_core::Position::new();
    for h in since.unwrap_or_default() {
        if let Ok(hash) = h.parse::<EntryHash>() {
            if dag.contains(&hash)? {
                known.insert(hash);
            }
        }
    }
    let total = dag.len()?;
    let mut entries = Vec::new();
    for id in 0..total {
        let id =
            causal_core::dag::NodeId::at(id as usize).ok_or_else(|| CausalError::Corrupt("too many entries".into()))?;
        let node = dag.store().node(id).map_err(causal_core::DagError::from)?;
        if !known.is_empty() && dag.in_history(&node.hash, &known)? {
            continue;
        }
        let entry = dag.store().entry(id).map_err(causal_core::DagError::from)?;
        entries.push(entry.to_wire());
    }
    let bundle = json!({
        "format": BUNDLE_FORMAT,
        "group": group.id,
        "hashAlgorithm": group.algorithm.name(),
        "entries": entries,
    });
    serde_json::to_vec(&bundle).map_err(|e| CausalError::Corrupt(e.to_string()))
}
