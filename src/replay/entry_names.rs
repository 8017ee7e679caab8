//! How `causal.row_meta` and the journal's undo records name the entries in a row's metadata
//! (who inserted it, wrote each column, deleted it): by their node ids in this database
//! (`dag_entries.node_id`), a number in a few bytes where a Base64 hash took 44 characters in
//! every row. Metadata is never sent anywhere, and node ids are kept by dump and restore.
//! Rows written by earlier versions name entries by hash; both forms are read.

use causal_core::dag::NodeId;
use causal_core::reconcile::{ReconcileError, RowState};
use causal_core::{DagStore, EntryHash};
use serde_json::{json, Value};

use crate::catalog::store::SpiStore;

use super::store_err;

/// Names entries for metadata written through `store`, and reads names back.
pub(super) struct EntryNames<'s> {
    pub(super) store: &'s SpiStore,
}

impl EntryNames<'_> {
    /// Finds the node ids of `hashes`, in one query for those not cached, before they are
    /// named.
    pub(super) fn prepare_names<'h>(&self, hashes: impl Iterator<Item = &'h EntryHash>) -> Result<(), ReconcileError> {
        let hashes: Vec<EntryHash> = hashes.copied().collect();
        self.store.prefetch_ids(&hashes).map_err(store_err)
    }

    /// An entry's name: its node id, or its hash where it has none (it always has one: an
    /// entry is stored before any row names it).
    pub(super) fn name(&self, h: &EntryHash) -> Result<Value, ReconcileError> {
        Ok(match self.store.node_id(h).map_err(store_err)? {
            Some(id) => json!(id.0),
            None => json!(h.to_b64()),
        })
    }

    /// A row's metadata with entries named by node id.
    pub(super) fn meta(&self, r: &RowState) -> Result<Value, ReconcileError> {
        r.meta_value_with(|h| self.name(h))
    }

    /// Reads the nodes named in `metas`, in one query for those not cached, before their
    /// names are read back.
    pub(super) fn prepare_reads<'v>(&self, metas: impl Iterator<Item = &'v Value>) -> Result<(), ReconcileError> {
        let ids: Vec<NodeId> = metas
            .flat_map(RowState::meta_names)
            .filter_map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()).map(NodeId))
            .collect();
        self.store.prefetch_nodes(&ids).map_err(store_err)
    }

    /// The entry a name in metadata stands for.
    pub(super) fn hash(&self, v: &Value) -> Result<EntryHash, ReconcileError> {
        let bad = || ReconcileError::Corrupt(format!("bad entry {v} in row metadata"));
        match v {
            Value::String(s) => s.parse().map_err(|_| bad()),
            Value::Number(n) => {
                let id = n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(bad)?;
                Ok(self.store.node(NodeId(id)).map_err(store_err)?.hash)
            }
            _ => Err(bad()),
        }
    }

    /// A row's state from its values and metadata.
    pub(super) fn state(
        &self,
        values: serde_json::Map<String, Value>,
        meta: &Value,
    ) -> Result<RowState, ReconcileError> {
        RowState::from_meta_with(values, meta, |v| self.hash(v))
    }
}
