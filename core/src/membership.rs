//! Group membership as replicated data, and the metadata every replica derives from payloads.
//!
//! Each entry that changes a member's status (the genesis for the first admin, `add-member`,
//! `remove-member`) is tagged `member=<key id>`. A key's status at a position is read from the
//! last such changes in the position's history (the filtered cover). When changes are
//! concurrent, removal wins: it is a barrier operation. A member is an admin when every one of
//! those last changes adds it as an admin.

use serde_json::Value;

use crate::dag::{Dag, DagError, DagStore, MetaFilter};
use crate::entry::{Meta, Position};
use crate::identity::{KeyId, PublicKey};
use crate::payload::{Op, PayloadError, SignedPayload};

/// The tag key of membership changes.
pub const MEMBER_TAG: &str = "member";
/// The tag key of schema entries (`schema=<table>`, also on unreplicate).
pub const SCHEMA_TAG: &str = "schema";
/// The tag key of rule entries (`rule=<table>`).
pub const RULE_TAG: &str = "rule";
/// The tag key every barrier operation carries (`kind=barrier`).
pub const KIND_TAG: &str = "kind";

/// Metadata derived from a payload. Deterministic, so every replica indexes alike.
pub fn derive_meta(payload: &SignedPayload) -> Meta {
    derive_meta_of(payload.genesis.as_deref(), &payload.ops)
}

/// [`derive_meta`] of a payload's parts (its genesis fields, if any, and its operations).
pub fn derive_meta_of(genesis: Option<&crate::payload::Genesis>, ops: &[Op]) -> Meta {
    let mut meta = Meta::new();
    let mut tag = |k: &str, v: String| {
        meta.entry(k.to_string()).or_default().insert(v);
    };
    if let Some(g) = genesis {
        tag(MEMBER_TAG, g.admin.key_id().to_b64());
        tag(KIND_TAG, "barrier".into());
    }
    for op in ops {
        match op {
            Op::AddMember { public_key, .. } => tag(MEMBER_TAG, public_key.key_id().to_b64()),
            Op::RemoveMember { key_id } => {
                tag(MEMBER_TAG, key_id.to_b64());
                tag(KIND_TAG, "barrier".into());
            }
            // Schema and rule changes are searched separately (the schema of a table at a
            // position is its last schema entry there), so they carry different tags.
            Op::Schema { table, .. } | Op::Unreplicate { table } => {
                tag(KIND_TAG, "barrier".into());
                tag(SCHEMA_TAG, table.clone());
            }
            Op::Rule { table, .. } => {
                tag(KIND_TAG, "barrier".into());
                tag(RULE_TAG, table.clone());
            }
            Op::Delete { table, .. } => {
                tag(KIND_TAG, "barrier".into());
                tag("table", table.clone());
            }
            // Plain row writes are not searched by tag (rows keep their own causal metadata),
            // so they add no index rows.
            Op::Insert { .. } | Op::Update { .. } => {}
        }
    }
    meta
}

/// A key's standing in a group at a position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub live: bool,
    pub admin: bool,
    /// The key, known from the add (or the genesis) that made it a member.
    pub public_key: Option<PublicKey>,
}

/// Why membership could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(transparent)]
    Dag(#[from] DagError),
    #[error("stored entry {hash} has an invalid payload: {source}")]
    Payload { hash: String, source: PayloadError },
}

/// The status of `key` at `position` (usually an entry's predecessors).
pub fn member_at<S: DagStore>(dag: &Dag<S>, position: &Position, key: &KeyId) -> Result<MemberStatus, MembershipError> {
    let filter = MetaFilter::tag(MEMBER_TAG, &key.to_b64());
    let last = dag.cover_with_filter(position, &filter, None)?;
    member_status(dag, &last, key)
}

/// The status of `key` given `last`, the latest entries tagged with its membership at some
/// position (the filtered cover that [`member_at`] computes).
pub fn member_status<S: DagStore>(dag: &Dag<S>, last: &Position, key: &KeyId) -> Result<MemberStatus, MembershipError> {
    let mut status = MemberStatus { live: !last.is_empty(), admin: !last.is_empty(), public_key: None };
    for h in last {
        let Some(entry) = dag.entry(h)? else { continue };
        let payload = decode(&entry.payload, h)?;
        let mut saw = false;
        if let Some(g) = &payload.genesis {
            if g.admin.key_id() == *key {
                status.public_key = Some(g.admin);
                saw = true;
            }
        }
        for op in &payload.ops {
            match op {
                Op::AddMember { public_key, admin, .. } if public_key.key_id() == *key => {
                    status.public_key = Some(*public_key);
                    status.admin &= *admin;
                    saw = true;
                }
                Op::RemoveMember { key_id } if key_id == key => {
                    status.live = false;
                    saw = true;
                }
                _ => {}
            }
        }
        if !saw {
            status.live = false;
        }
    }
    status.admin &= status.live;
    Ok(status)
}

fn decode(payload: &Value, hash: &crate::hash::EntryHash) -> Result<SignedPayload, MembershipError> {
    SignedPayload::from_value(payload).map_err(|source| MembershipError::Payload { hash: hash.to_b64(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Entry;
    use crate::hash::{EntryHash, GroupId, HashAlgorithm};
    use crate::identity::Keypair;
    use crate::payload::Genesis;
    use crate::MemStore;

    struct G {
        dag: Dag<MemStore>,
        id: GroupId,
    }

    impl G {
        fn new(admin: &Keypair) -> G {
            let alg = HashAlgorithm::Blake3;
            let g =
                Genesis { name: "g".into(), hash_algorithm: "blake3".into(), seed: "s".into(), admin: admin.public() };
            let p = SignedPayload::sign_genesis(admin, g).unwrap();
            let e = Entry::new(alg, p.to_value(), Position::new(), derive_meta(&p)).unwrap();
            let mut dag = Dag::new(MemStore::new(), alg);
            let id = GroupId::of_genesis(dag.insert(e).unwrap().hash);
            G { dag, id }
        }

        fn append(&mut self, by: &Keypair, ops: Vec<Op>, prev: Position) -> EntryHash {
            let p = SignedPayload::sign(by, &self.id, ops, &prev).unwrap();
            self.dag.append(p.to_value(), derive_meta(&p), prev).unwrap().hash
        }
    }

    #[test]
    fn add_remove_and_concurrent_removal_wins() {
        let admin = Keypair::generate();
        let bob = Keypair::generate();
        let mut g = G::new(&admin);
        let root: Position = [g.id.genesis()].into();
        let a = admin.public().key_id();
        let b = bob.public().key_id();
        assert_eq!(
            member_at(&g.dag, &root, &a).unwrap(),
            MemberStatus { live: true, admin: true, public_key: Some(admin.public()) }
        );
        assert!(!member_at(&g.dag, &root, &b).unwrap().live);

        let add =
            g.append(&admin, vec![Op::AddMember { public_key: bob.public(), name: None, admin: false }], root.clone());
        let s = member_at(&g.dag, &[add].into(), &b).unwrap();
        assert!(s.live && !s.admin);
        assert_eq!(s.public_key, Some(bob.public()));

        // Concurrently: one admin re-adds bob as admin, another removes him. Removal wins.
        let readd =
            g.append(&admin, vec![Op::AddMember { public_key: bob.public(), name: None, admin: true }], [add].into());
        let remove = g.append(&admin, vec![Op::RemoveMember { key_id: b }], [add].into());
        assert!(member_at(&g.dag, &[readd].into(), &b).unwrap().admin);
        assert!(!member_at(&g.dag, &[remove].into(), &b).unwrap().live);
        let both: Position = [readd, remove].into();
        let s = member_at(&g.dag, &both, &b).unwrap();
        assert!(!s.live && !s.admin);
        // A later add after the merge brings him back.
        let back = g.append(&admin, vec![Op::AddMember { public_key: bob.public(), name: None, admin: false }], both);
        assert!(member_at(&g.dag, &[back].into(), &b).unwrap().live);
    }

    #[test]
    fn meta_marks_barriers_and_members() {
        let admin = Keypair::generate();
        let p = SignedPayload::sign(
            &admin,
            &GroupId(HashAlgorithm::Blake3.digest(b"g")),
            vec![
                Op::RemoveMember { key_id: admin.public().key_id() },
                Op::Delete { table: "t".into(), key: Default::default() },
            ],
            &Position::new(),
        )
        .unwrap();
        let m = derive_meta(&p);
        assert!(m[KIND_TAG].contains("barrier"));
        let rule = SignedPayload::sign(
            &admin,
            &GroupId(HashAlgorithm::Blake3.digest(b"g")),
            vec![Op::Rule { table: "t".into(), operation: "insert".into(), rule: "true".into() }],
            &Position::new(),
        )
        .unwrap();
        let rm = derive_meta(&rule);
        assert!(rm[RULE_TAG].contains("t") && !rm.contains_key(SCHEMA_TAG), "a rule must not look like a schema entry");
        assert!(m[MEMBER_TAG].contains(&admin.public().key_id().to_b64()));
        assert!(m["table"].contains("t"));
    }
}
