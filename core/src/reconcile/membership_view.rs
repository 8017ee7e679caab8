//! Membership as the engine decides it, for readers outside a reconciliation run: who is a
//! member, and an admin, at a position of the DAG seen from that position (its causal past
//! alone), with every membership entry's verdict taken into account.
//!
//! The index of membership changes (`membership::member_at`) reads the latest changes of a
//! key whatever their verdicts. After two admins removed each other, one removal is
//! cancelled; read that way, both admins would look removed and the group would be frozen.
//! These functions resolve the group's authority (`Authority::resolve`) over the entries in
//! the position's past, so a cancelled removal removes no one. Being a function of that past
//! alone, the answer is the same on every replica, whatever else it holds.

use std::collections::HashMap;

use crate::dag::{Dag, DagStore};
use crate::entry::Position;
use crate::hash::EntryHash;
use crate::identity::KeyId;
use crate::membership::MemberStatus;
use crate::payload::SignedPayload;

use super::{Authority, OrderKey, ReconcileError};

/// Whether `h` is in `position` or in its causal past.
pub fn within<S: DagStore>(dag: &Dag<S>, h: &EntryHash, position: &Position) -> Result<bool, ReconcileError> {
    for p in position {
        if p == h || dag.precedes(h, p)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The status of `key` at `position`, seen from `position`. `authority` holds the group's
/// authority entries (genesis, membership, rule and schema entries) with their order keys;
/// those outside the position's past are left out here.
pub fn member_in_view<S: DagStore>(
    dag: &Dag<S>,
    authority: &[(OrderKey, SignedPayload)],
    position: &Position,
    key: &KeyId,
) -> Result<MemberStatus, ReconcileError> {
    let mut past = Vec::new();
    for (o, p) in authority {
        if within(dag, &o.hash, position)? {
            past.push((*o, p.clone()));
        }
    }
    Authority::resolve(dag, past)?.status_at(dag, key, position)
}

/// The heights of `hashes` (longest path from the genesis), from `known` heights where it has
/// them and else from their predecessors', walking down without recursion.
pub fn heights<S: DagStore>(
    dag: &Dag<S>,
    hashes: &[EntryHash],
    known: &mut dyn FnMut(&EntryHash) -> Result<Option<u32>, ReconcileError>,
) -> Result<HashMap<EntryHash, u32>, ReconcileError> {
    let mut done: HashMap<EntryHash, u32> = HashMap::new();
    let mut prevs: HashMap<EntryHash, Vec<EntryHash>> = HashMap::new();
    let mut stack: Vec<EntryHash> = hashes.to_vec();
    while let Some(h) = stack.last().copied() {
        if done.contains_key(&h) {
            stack.pop();
            continue;
        }
        if let Some(height) = known(&h)? {
            done.insert(h, height);
            stack.pop();
            continue;
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = prevs.entry(h) {
            let entry =
                dag.entry(&h)?.ok_or_else(|| ReconcileError::Corrupt(format!("entry {} is not stored", h.to_b64())))?;
            slot.insert(entry.header.prev.iter().copied().collect());
        }
        let waiting: Vec<EntryHash> = prevs[&h].iter().filter(|p| !done.contains_key(*p)).copied().collect();
        if waiting.is_empty() {
            let height = prevs[&h].iter().map(|p| done[p] + 1).max().unwrap_or(0);
            done.insert(h, height);
            stack.pop();
        } else {
            stack.extend(waiting);
        }
    }
    Ok(hashes.iter().filter_map(|h| done.get(h).map(|v| (*h, *v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{GroupId, HashAlgorithm};
    use crate::identity::Keypair;
    use crate::membership::{derive_meta, member_at};
    use crate::payload::{Genesis, Op};
    use crate::MemStore;

    struct G {
        dag: Dag<MemStore>,
        group: GroupId,
        authority: Vec<(OrderKey, SignedPayload)>,
    }

    impl G {
        fn append(&mut self, by: &Keypair, ops: Vec<Op>, prev: Position) -> EntryHash {
            let p = SignedPayload::sign(by, &self.group, ops, &prev).unwrap();
            let h = self.dag.append(p.to_value(), derive_meta(&p), prev).unwrap().hash;
            let hs = heights(&self.dag, &[h], &mut |_| Ok(None)).unwrap();
            self.authority.push((OrderKey { height: hs[&h], hash: h }, p));
            h
        }
    }

    /// After two admins remove each other, the index of changes shows both removed; the view
    /// with verdicts shows the admin with the older grant, still an admin.
    #[test]
    fn a_cancelled_removal_removes_no_one() {
        let (p, q) = (Keypair::generate(), Keypair::generate());
        let alg = HashAlgorithm::Blake3;
        let g = Genesis { name: "g".into(), hash_algorithm: "blake3".into(), seed: "s".into(), admin: p.public() };
        let gp = SignedPayload::sign_genesis(&p, g).unwrap();
        let mut dag = Dag::new(MemStore::new(), alg);
        let root = dag.append(gp.to_value(), derive_meta(&gp), Position::new()).unwrap().hash;
        let group = GroupId::of_genesis(root);
        let mut s = G { dag, group, authority: vec![(OrderKey { height: 0, hash: root }, gp)] };
        let add = s.append(&p, vec![Op::AddMember { public_key: q.public(), name: None, admin: true }], [root].into());
        let rp = s.append(&p, vec![Op::RemoveMember { key_id: q.public().key_id() }], [add].into());
        let rq = s.append(&q, vec![Op::RemoveMember { key_id: p.public().key_id() }], [add].into());
        let frontier: Position = [rp, rq].into();
        assert!(
            !member_at(&s.dag, &frontier, &p.public().key_id()).unwrap().live,
            "the index counts the cancelled removal"
        );
        let sp = member_in_view(&s.dag, &s.authority, &frontier, &p.public().key_id()).unwrap();
        assert!(sp.live && sp.admin && sp.public_key == Some(p.public()), "{sp:?}");
        let sq = member_in_view(&s.dag, &s.authority, &frontier, &q.public().key_id()).unwrap();
        assert!(!sq.live);
        // Seen from q's removal alone (before p's is known), p is removed there.
        let at_rq: Position = [rq].into();
        assert!(!member_in_view(&s.dag, &s.authority, &at_rq, &p.public().key_id()).unwrap().live);
        assert_eq!(heights(&s.dag, &[rq], &mut |_| Ok(None)).unwrap()[&rq], 2);
    }
}
