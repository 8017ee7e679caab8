//! The row of an entry (`causal.dag_entries`) and how SQL reads it in either catalog.
//!
//! Since 0.2.0 a row keeps its hash as bytes, its predecessors and clock packed in `links`
//! ([`causal_core::dag::links`]), its payload hash as bytes, or empty when it is the digest of
//! the payload's text (a local commit's text is canonical, so it always is), and its payload
//! text, when it starts with the author's key, without the key and with the fragments
//! operations repeat coded ([`causal_core::stored_payload`]): `author` then numbers the key in
//! `causal.entry_authors`. A 0.1.0 catalog, until `ALTER EXTENSION pg_causal UPDATE`, has both
//! hashes in Base64, `preds` and `clock` as `int4[]`, and the payload whole. Everything that
//! reads entry rows in SQL takes its expressions from here; the view `causal.entries` shows
//! rows decoded.

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::prelude::*;

use causal_core::dag::{links, NodeId};
use causal_core::hash::{Hash, HashAlgorithm};
use causal_core::stored_payload;

use crate::error::CausalError;
use crate::error::OrReport;
use crate::pg::spi::get_prepared;

/// Whether entry rows have the packed form of 0.2.0.
pub fn packed() -> bool {
    super::shape::dag_entries_packed()
}

/// SQL for the hash in Base64 of the entry row aliased `alias`.
pub fn hash_sql(alias: &str) -> String {
    if packed() {
        format!("encode({alias}.hash, 'base64')")
    } else {
        format!("{alias}.hash")
    }
}

/// SQL saying that the entry row aliased `alias` has the hash whose Base64 is `base64` (a
/// parameter or a column); text that is not a hash matches no row. The hash index serves it.
pub fn hash_equals_sql(alias: &str, base64: &str) -> String {
    if packed() {
        format!("{alias}.hash = causal._hash_bytes({base64})")
    } else {
        format!("{alias}.hash = {base64}")
    }
}

/// SQL for the payload text of the entry row aliased `e`, as hashed.
pub fn payload_sql() -> &'static str {
    if packed() {
        "causal._entry_payload(e.author, e.payload)"
    } else {
        "e.payload"
    }
}

/// SQL for the author number of the entry row aliased `e` (for [`payload_text`]).
pub fn author_sql() -> &'static str {
    if packed() {
        "e.author"
    } else {
        "NULL::int4"
    }
}

/// SQL for the predecessors' node ids (`int4[]`) of the entry row aliased `e`.
pub fn preds_sql() -> &'static str {
    if packed() {
        "causal._entry_preds(e.node_id, e.links)"
    } else {
        "e.preds"
    }
}

/// SQL for the payload hash in Base64 of the entry row aliased `e`.
pub fn payload_hash_sql() -> &'static str {
    if packed() {
        "causal._entry_payload_hash(e.grp, e.author, e.payload, e.payload_hash)"
    } else {
        "e.payload_hash"
    }
}

/// SQL for the predecessors' hashes (`text[]`, in no particular order) of the entry row
/// aliased `e`, read by the primary key.
pub fn prev_hashes_sql() -> String {
    format!(
        "ARRAY(SELECT {} FROM causal.dag_entries p WHERE p.grp = e.grp AND p.node_id = ANY ({}))",
        hash_sql("p"),
        preds_sql()
    )
}

thread_local! {
    /// The hash algorithm of each group number seen (numbers are never reused).
    static ALGORITHMS: RefCell<HashMap<i32, HashAlgorithm>> = RefCell::new(HashMap::new());
    /// Author numbers read or given in this backend, both ways. Dropped when work is undone,
    /// which may have numbered a key that is then gone.
    static AUTHORS: RefCell<(HashMap<String, i32>, HashMap<i32, String>)> = RefCell::new(Default::default());
}

/// Forgets the author numbers known (work that numbered one was undone).
pub fn forget_authors() {
    AUTHORS.with(|a| {
        let mut a = a.borrow_mut();
        a.0.clear();
        a.1.clear();
    });
}

/// The number of author `key`, given now if it has none.
fn author_number(key: &str) -> Result<i32, CausalError> {
    if let Some(n) = AUTHORS.with(|a| a.borrow().0.get(key).copied()) {
        return Ok(n);
    }
    let known = get_prepared::<i32>("SELECT author FROM causal.entry_authors WHERE key_id = $1", &[key.into()])?;
    let n = match known {
        Some(n) => n,
        // DO UPDATE returns the row a concurrent transaction inserted too (DO NOTHING would
        // not); it writes only for a key seen here for the first time.
        None => get_prepared::<i32>(
            "INSERT INTO causal.entry_authors AS a (key_id) VALUES ($1) \
             ON CONFLICT (key_id) DO UPDATE SET key_id = a.key_id RETURNING a.author",
            &[key.into()],
        )?
        .ok_or_else(|| CausalError::Corrupt(format!("author {key} got no number")))?,
    };
    AUTHORS.with(|a| {
        let mut a = a.borrow_mut();
        a.0.insert(key.to_string(), n);
        a.1.insert(n, key.to_string());
    });
    Ok(n)
}

/// The key of author number `n`.
fn author_key(n: i32) -> Result<String, CausalError> {
    if let Some(k) = AUTHORS.with(|a| a.borrow().1.get(&n).cloned()) {
        return Ok(k);
    }
    let key = get_prepared::<String>("SELECT key_id FROM causal.entry_authors WHERE author = $1", &[n.into()])?
        .ok_or_else(|| CausalError::Corrupt(format!("entry author number {n} is not in causal.entry_authors")))?;
    AUTHORS.with(|a| {
        let mut a = a.borrow_mut();
        a.0.insert(key.clone(), n);
        a.1.insert(n, key.clone());
    });
    Ok(key)
}

/// What a payload text is stored as: its author's number and the rest of the text, or no
/// number and the whole text (always so in a 0.1.0 catalog).
pub fn stored_payload(payload: String) -> Result<(Option<i32>, String), CausalError> {
    if !packed() {
        return Ok((None, payload));
    }
    let Some((key, stored)) = stored_payload::store(&payload) else {
        return Ok((None, payload));
    };
    Ok((Some(author_number(key)?), stored))
}

/// The payload text that [`stored_payload`] stored as `author` and `stored`.
pub fn payload_text(author: Option<i32>, stored: String) -> Result<String, CausalError> {
    match author {
        None => Ok(stored),
        Some(n) => Ok(stored_payload::load(&author_key(n)?, &stored)),
    }
}

/// The hash algorithm of group number `grp`.
fn group_algorithm(grp: i32) -> Result<HashAlgorithm, CausalError> {
    if let Some(alg) = ALGORITHMS.with(|a| a.borrow().get(&grp).copied()) {
        return Ok(alg);
    }
    let name = get_prepared::<String>("SELECT hash_algorithm FROM causal.group_defs WHERE grp = $1", &[grp.into()])?
        .ok_or_else(|| CausalError::Corrupt(format!("no group has number {grp}")))?;
    let alg = HashAlgorithm::parse(&name).map_err(|e| CausalError::Corrupt(e.to_string()))?;
    ALGORITHMS.with(|a| a.borrow_mut().insert(grp, alg));
    Ok(alg)
}

/// Whether an entry of group `grp` need not store its payload hash: the hash is the digest of
/// the payload's text, which happens whenever that text is canonical (a local commit's, or
/// an imported one sent canonical). A 0.1.0 catalog stores every hash.
pub fn payload_hash_implied(grp: i32, payload: &str, payload_hash: &Hash) -> Result<bool, CausalError> {
    Ok(packed() && group_algorithm(grp)?.digest(payload.as_bytes()) == *payload_hash)
}

/// The payload hash of an entry row in Base64: the stored one, or the digest of its payload
/// text (`causal._entry_payload_hash(grp, author, payload, payload_hash)`).
#[pg_extern(stable, parallel_safe)]
fn _entry_payload_hash(
    grp: i32,
    author: Option<i32>,
    payload: Option<String>,
    payload_hash: Option<&[u8]>,
) -> Option<String> {
    let f = "causal._entry_payload_hash";
    if let Some(bytes) = payload_hash.filter(|b| !b.is_empty()) {
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CausalError::Corrupt(format!("a payload hash of group {grp} is not 32 bytes")))
            .or_report(f);
        return Some(Hash(bytes).to_b64());
    }
    let text = payload_text(author, payload?).or_report(f);
    Some(group_algorithm(grp).or_report(f).digest(text.as_bytes()).to_b64())
}

/// The bytes of an entry hash given in Base64, or NULL if it is not one
/// (`causal._hash_bytes(hash)`: entry rows keep hashes as bytes).
#[pg_extern(immutable, strict, parallel_safe)]
fn _hash_bytes(hash: &str) -> Option<Vec<u8>> {
    hash.parse::<causal_core::EntryHash>().ok().map(|h| h.as_bytes().to_vec())
}

/// An entry hash read from a row: bytes when `packed` (0.2.0), else Base64 (0.1.0).
pub fn read_hash(
    r: &pgrx::spi::SpiHeapTupleData<'_>,
    column: usize,
    packed: bool,
) -> Result<Option<Result<causal_core::EntryHash, String>>, pgrx::spi::Error> {
    if packed {
        Ok(r.get::<&[u8]>(column)?.map(|b| {
            <[u8; 32]>::try_from(b)
                .map(|b| causal_core::EntryHash(Hash(b)))
                .map_err(|_| format!("a hash of {} bytes", b.len()))
        }))
    } else {
        Ok(r.get::<String>(column)?.map(|t| t.parse().map_err(|_| format!("bad hash {t}"))))
    }
}

/// Reads a row's packed links.
pub fn unpack_links(node: i32, bytes: &[u8]) -> Result<(Vec<NodeId>, causal_core::dag::Clock), CausalError> {
    let id = u32::try_from(node).map_err(|_| CausalError::Corrupt(format!("node id {node} is negative")))?;
    links::unpack(NodeId(id), bytes).map_err(|e| CausalError::Corrupt(format!("links of node {node}: {e}")))
}

/// The predecessors' node ids of an entry row (`causal._entry_preds(node_id, links)`).
#[pg_extern(immutable, strict, parallel_safe)]
fn _entry_preds(node_id: i32, links: &[u8]) -> Vec<i32> {
    let (preds, _) = unpack_links(node_id, links).or_report("causal._entry_preds");
    preds.iter().map(|p| p.0 as i32).collect()
}

/// The clock of an entry row (`causal._entry_clock(node_id, links)`).
#[pg_extern(immutable, strict, parallel_safe)]
fn _entry_clock(node_id: i32, links: &[u8]) -> Vec<i32> {
    let (_, clock) = unpack_links(node_id, links).or_report("causal._entry_clock");
    clock.0.iter().map(|&s| s as i32).collect()
}

/// The payload text of an entry row as hashed (`causal._entry_payload(author, payload)`).
#[pg_extern(stable, parallel_safe)]
fn _entry_payload(author: Option<i32>, payload: Option<String>) -> Option<String> {
    payload.map(|p| payload_text(author, p).or_report("causal._entry_payload"))
}

/// Packs an entry row's predecessors and clock as `links` (the upgrade from 0.1.0 rewrites
/// entry rows with it).
#[pg_extern(immutable, strict, parallel_safe)]
fn _pack_entry_links(node_id: i32, preds: Vec<i32>, clock: Vec<i32>) -> Vec<u8> {
    let f = "causal._pack_entry_links";
    let number = |n: i32| u32::try_from(n).map_err(|_| CausalError::Corrupt(format!("negative number {n} in links")));
    let node = NodeId(number(node_id).or_report(f));
    let preds: Vec<NodeId> = preds.into_iter().map(|p| number(p).map(NodeId)).collect::<Result<_, _>>().or_report(f);
    let clock = causal_core::dag::Clock(clock.into_iter().map(number).collect::<Result<_, _>>().or_report(f));
    links::pack(node, &preds, &clock).map_err(|e| CausalError::Corrupt(e.to_string())).or_report(f)
}

extension_sql!(
    r#"
-- Entry rows decoded: the payload text as hashed, the payload hash in Base64, predecessors
-- and clock as node ids and sequence numbers.
CREATE VIEW causal.entries AS
SELECT e.grp,
       e.node_id,
       encode(e.hash, 'base64') AS hash,
       causal._entry_payload(e.author, e.payload) AS payload,
       causal._entry_payload_hash(e.grp, e.author, e.payload, e.payload_hash) AS payload_hash,
       e.chain,
       e.seq,
       causal._entry_preds(e.node_id, e.links) AS preds,
       causal._entry_clock(e.node_id, e.links) AS clock,
       e.received_at
FROM causal.dag_entries e;
GRANT SELECT ON causal.entries TO PUBLIC;
"#,
    name = "entries_view",
    requires = [_entry_payload, _entry_payload_hash, _entry_preds, _entry_clock]
);
