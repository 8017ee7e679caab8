//! Building signed entries and in-memory replicas for the reconciliation tests.
#![allow(dead_code)]

use causal_core::entry::{Entry, Position};
use causal_core::hash::{GroupId, HashAlgorithm};
use causal_core::identity::Keypair;
use causal_core::membership::derive_meta;
use causal_core::payload::{Genesis, Op, SignedPayload};
use causal_core::reconcile::memory::MemReplica;
use causal_core::reconcile::{CancelCode, Status};
use serde_json::{json, Map, Value};

pub const ALG: HashAlgorithm = HashAlgorithm::Blake3;

pub fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("an object")
}

pub fn genesis(admin: &Keypair) -> Entry {
    let g = Genesis { name: "g".into(), hash_algorithm: "blake3".into(), seed: "seed".into(), admin: admin.public() };
    let p = SignedPayload::sign_genesis(admin, g).unwrap();
    Entry::new(ALG, p.to_value(), Position::new(), derive_meta(&p)).unwrap()
}

pub fn signed(by: &Keypair, group: &GroupId, ops: Vec<Op>, prev: Position) -> Entry {
    let p = SignedPayload::sign(by, group, ops, &prev).unwrap();
    Entry::new(ALG, p.to_value(), prev, derive_meta(&p)).unwrap()
}

/// A site: a replica and the entries it wrote.
pub struct Site {
    pub replica: MemReplica,
    pub group: GroupId,
}

impl Site {
    pub fn new(genesis: &Entry) -> Site {
        let mut replica = MemReplica::new(ALG);
        replica.receive(std::slice::from_ref(genesis)).unwrap();
        Site { replica, group: GroupId::of_genesis(genesis.hash) }
    }

    /// Writes an entry at this site's frontier.
    pub fn write(&mut self, by: &Keypair, ops: Vec<Op>) -> Entry {
        let prev = self.replica.dag_mut().frontier().unwrap();
        let e = signed(by, &self.group, ops, prev);
        self.replica.receive(std::slice::from_ref(&e)).unwrap();
        e
    }

    pub fn receive(&mut self, entries: &[Entry]) {
        self.replica.receive(entries).unwrap();
    }

    pub fn sync_from(&mut self, other: &Site) {
        let all = other.replica.entries();
        self.replica.receive(&all).unwrap();
    }

    pub fn status(&self, e: &Entry) -> Status {
        self.replica.verdict(&e.hash).expect("a verdict").status
    }

    pub fn reason(&self, e: &Entry) -> String {
        self.replica.verdict(&e.hash).and_then(|v| v.reason.clone()).unwrap_or_default()
    }

    /// The kind of conflict that cancelled `e`, and the table and row of its failed operation.
    pub fn cause(&self, e: &Entry) -> (Option<CancelCode>, Option<(String, String)>) {
        let v = self.replica.verdict(&e.hash).expect("a verdict");
        (v.code, v.row.as_ref().map(|(t, k)| (t.clone(), k.to_string())))
    }

    pub fn row(&self, table: &str, key: Value) -> Option<Map<String, Value>> {
        let k = causal_core::json::canonical_string(&key).unwrap();
        self.replica.table(table).get(k.as_str()).cloned()
    }
}

pub fn schema_op(table: &str, v: Value) -> Op {
    let mut s = v;
    s["table"] = json!(table);
    for k in ["unique", "check", "foreignKeys"] {
        if s.get(k).is_none() {
            s[k] = json!([]);
        }
    }
    Op::Schema { table: table.into(), schema: s }
}

pub fn col(name: &str, ty: &str, not_null: bool) -> Value {
    json!({"name": name, "type": ty, "notNull": not_null})
}

pub fn insert(table: &str, row: Value) -> Op {
    Op::Insert { table: table.into(), row: obj(row) }
}

pub fn update(table: &str, key: Value, set: Value) -> Op {
    Op::Update { table: table.into(), key: obj(key), set: obj(set), unset: vec![] }
}

pub fn delete(table: &str, key: Value) -> Op {
    Op::Delete { table: table.into(), key: obj(key) }
}

pub fn add_member(k: &Keypair, admin: bool) -> Op {
    Op::AddMember { public_key: k.public(), name: None, admin }
}

/// Every permutation of `0..n`.
pub fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}
