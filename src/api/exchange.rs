//! Moving history between databases without a network: `causal.export` and `causal.import`.
//!
//! A bundle is UTF-8 JSON:
//! `{"format": "pg_causal-bundle/2", "group": "<id>", "hashAlgorithm": "...", "entries": [...]}`
//! with entries in wire form (`{hash, header, payload}`), predecessors first.

use pgrx::prelude::*;
use serde_json::{json, Value};

use causal_core::dag::DagStore;
use causal_core::{EntryHash, GroupId};

use crate::catalog::group::Group;
use crate::error::{CausalError, OrReport};

pub use causal_core::BUNDLE_FORMAT;

fn export_bundle(grp: &str, since: Option<Vec<String>>) -> Result<Vec<u8>, CausalError> {
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

/// Every entry of the group that is not in the history of `since` (all of them when `since`
/// is NULL), predecessors first, as a bundle for `causal.import`.
#[pg_extern]
fn export(grp: &str, since: default!(Option<Vec<String>>, "NULL")) -> Vec<u8> {
    // Every transaction committed before the call is in the bundle.
    crate::capture::seal_committed().or_report("causal.export");
    export_bundle(grp, since).or_report("causal.export")
}

use std::collections::{HashMap, HashSet};

use causal_core::dag::closure::StoredProbe;
use causal_core::dag::cover_cache::CoverCache;
use causal_core::entry::{EncodedEntry, Position};
use causal_core::identity::{KeyId, PublicKey};
use causal_core::membership::{derive_meta, member_status, MemberStatus, MEMBER_TAG, SCHEMA_TAG};
use causal_core::payload::{Op, PayloadError, SignedPayload};
use causal_core::precheck::{precheck_stream, Prechecked};
use causal_core::reconcile::NewEntry;
use causal_core::schema::TableSchema;
use causal_core::signature_cover::CoverTracker;
use causal_core::wire::{WireBundle, WireEntry};
use causal_core::{Dag, DagError, FastMap, HashAlgorithm};
use std::rc::Rc;

use crate::catalog::store::SpiStore;

use crate::pg::spi::get_opt;

/// Answers about entries' positions during one import: who is a member and what each table's
/// schema is. Covers come from a [`CoverCache`] (no query for an entry that extends a chain),
/// and each distinct cover is decoded once. Asked once per entry, so a lookup allocates
/// nothing once its answer is known.
/// A group's authority entries with their order keys.
type AuthorityInput = Vec<(causal_core::reconcile::OrderKey, SignedPayload)>;

#[derive(Default)]
struct Positions {
    /// The group, for the membership view with verdicts (`Positions::member`'s slow path).
    group: Option<Group>,
    /// The group's authority entries with order keys, by the authority version they were read at.
    authority: Option<(u32, Rc<AuthorityInput>)>,
    /// Statuses from the membership view, by (authority entries in the position's past, key).
    viewed: FastMap<(Vec<EntryHash>, KeyId), MemberStatus>,
    covers: CoverCache,
    members: FastMap<(Position, KeyId), MemberStatus>,
    schemas: FastMap<Position, FastMap<String, Rc<Option<TableSchema>>>>,
    key_texts: FastMap<KeyId, String>,
}

impl Positions {
    /// The status of `key` at `position`. The index of membership changes answers first; where
    /// it finds the key removed (or, with `need_admin`, not an admin), the membership view with
    /// verdicts answers too, so a removal the group cancelled removes no one. Either answer is
    /// a function of the position's past, so every replica admits the same entries.
    fn member(
        &mut self,
        dag: &Dag<SpiStore>,
        position: &Position,
        key: &KeyId,
        need_admin: bool,
    ) -> Result<MemberStatus, String> {
        let status = self.indexed_member(dag, position, key)?;
        if status.live && (status.admin || !need_admin) {
            return Ok(status);
        }
        let view = self.viewed_member(dag, position, key)?;
        Ok(MemberStatus {
            live: status.live || view.live,
            admin: (status.live && status.admin) || view.admin,
            public_key: status.public_key.or(view.public_key),
        })
    }

    fn viewed_member(&mut self, dag: &Dag<SpiStore>, position: &Position, key: &KeyId) -> Result<MemberStatus, String> {
        let Some(group) = self.group.clone() else { return Err("no group for the membership view".into()) };
        let version = dag.store().authority_version().map_err(|e| e.to_string())?;
        if self.authority.as_ref().is_none_or(|(v, _)| *v != version) {
            dag.store().flush_pending().map_err(|e| e.to_string())?;
            let input = crate::author::members::authority_input(&group).map_err(|e| e.to_string())?;
            self.authority = Some((version, Rc::new(input)));
        }
        let input = self.authority.as_ref().map(|(_, i)| i.clone()).unwrap_or_default();
        let mut past = Vec::new();
        for (o, _) in input.iter() {
            if causal_core::reconcile::membership_view::within(dag, &o.hash, position).map_err(|e| e.to_string())? {
                past.push(o.hash);
            }
        }
        let slot = (past, *key);
        if let Some(s) = self.viewed.get(&slot) {
            return Ok(s.clone());
        }
        let status = causal_core::reconcile::membership_view::member_in_view(dag, &input, position, key)
            .map_err(|e| e.to_string())?;
        self.viewed.insert(slot, status.clone());
        Ok(status)
    }

    fn indexed_member(
        &mut self,
        dag: &Dag<SpiStore>,
        position: &Position,
        key: &KeyId,
    ) -> Result<MemberStatus, String> {
        let text = self.key_texts.entry(*key).or_insert_with(|| key.to_b64());
        let last = self.covers.cover(dag, position, MEMBER_TAG, text).map_err(|e| e.to_string())?;
        let slot = (last, *key);
        if let Some(s) = self.members.get(&slot) {
            return Ok(s.clone());
        }
        let status = member_status(dag, &slot.0, key).map_err(|e| e.to_string())?;
        self.members.insert(slot, status.clone());
        Ok(status)
    }

    /// The schema of `table` at `position`: the last schema entry for it in that history.
    fn schema(
        &mut self,
        dag: &Dag<SpiStore>,
        position: &Position,
        table: &str,
    ) -> Result<Rc<Option<TableSchema>>, String> {
        let last = self.covers.cover(dag, position, SCHEMA_TAG, table).map_err(|e| e.to_string())?;
        if let Some(s) = self.schemas.get(&last).and_then(|m| m.get(table)) {
            return Ok(s.clone());
        }
        let schema = Rc::new(schema_in(dag, &last, table)?);
        self.schemas.entry(last).or_default().insert(table.to_string(), schema.clone());
        Ok(schema)
    }
}

/// The schema of `table` defined by the entries `last` (the latest schema entries for it).
fn schema_in(dag: &Dag<SpiStore>, last: &Position, table: &str) -> Result<Option<TableSchema>, String> {
    // Concurrent schema changes of one table: reconciliation decides; here take any that
    // defines the table (all must agree for a fast-forward anyway).
    for h in last {
        let Some(entry) = dag.entry(h).map_err(|e| e.to_string())? else { continue };
        let Ok(p) = SignedPayload::from_value(&entry.payload) else { continue };
        for op in p.ops.iter().rev() {
            match op {
                Op::Schema { table: t, schema } if t == table => {
                    return TableSchema::from_value(schema).map(Some).map_err(|e| e.to_string());
                }
                Op::Unreplicate { table: t } if t == table => return Ok(None),
                _ => {}
            }
        }
    }
    Ok(None)
}

/// The public keys this import can check signatures with before walking history: every key
/// the group's stored membership entries and the bundle name. (A key's id is its hash, so any
/// record of a key is the right one; whether its holder may write is decided per entry.)
fn known_keys(group_id: &str, entries: &[WireEntry]) -> Result<HashMap<KeyId, PublicKey>, CausalError> {
    fn collect(payload: &Value, keys: &mut HashMap<KeyId, PublicKey>) {
        let found = payload["admin"]["publicKey"].as_str().into_iter().chain(
            payload["ops"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|op| op["op"] == "add-member")
                .filter_map(|op| op["publicKey"].as_str()),
        );
        for text in found {
            if let Ok(k) = PublicKey::from_b64(text) {
                keys.insert(k.key_id(), k);
            }
        }
    }
    let mut keys = HashMap::new();
    let stored: Vec<Option<String>> = crate::pg::spi::run_prepared(
        "SELECT DISTINCT e.payload FROM causal.dag_entry_tags t JOIN causal.dag_entries e \
         ON e.grp = t.grp AND e.chain = t.chain AND e.seq = t.seq \
         WHERE t.grp = (SELECT grp FROM causal.group_defs WHERE group_id = $1) AND t.tag = 'member'",
        &[group_id.into()],
        false,
        |rows| rows.map(|r| r.get::<String>(1)).collect::<Result<Vec<_>, _>>(),
    )?;
    for text in stored.into_iter().flatten() {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            collect(&v, &mut keys);
        }
    }
    // Only payloads that can name a key are parsed here (the others are parsed once, on the
    // checking threads). One that spells its field names with escapes is parsed too; and a
    // key missed here would only be looked up later, entry by entry.
    for e in entries {
        let text = e.payload;
        if text.contains("add-member") || text.contains("admin") || text.contains('\\') {
            if let Ok(v) = causal_core::json::parse(text) {
                collect(&v, &mut keys);
            }
        }
    }
    Ok(keys)
}

/// A check of one row operation against the table's schema at the entry's position.
type RowCheck<'a> = dyn Fn(&TableSchema) -> Result<(), String> + 'a;

/// Why an entry is invalid at its position, if it is. `pre` holds the storage-free checks
/// (hashes, decoding and, when the author's key was known, the signature).
fn validate(
    dag: &Dag<SpiStore>,
    positions: &mut Positions,
    group_id: &GroupId,
    prev: &Position,
    pre: Prechecked,
) -> Result<SignedPayload, String> {
    let (payload, signed) = match pre {
        Prechecked::Invalid(reason) => return Err(reason),
        // The import stores an unsigned entry only once a signature covers it, and hands it
        // here as `Signed` then.
        Prechecked::Unsigned(p) => return Err(PayloadError::Uncovered { author: p.author }.to_string()),
        Prechecked::Signed(p) => (p, true),
        Prechecked::UnknownAuthor(p) => (p, false),
    };
    let needs_admin = payload.ops.iter().any(causal_core::reconcile::authority::is_authority_op);
    let status = positions.member(dag, prev, &payload.author, needs_admin)?;
    let Some(key) = status.public_key.filter(|_| status.live) else {
        return Err(format!("author {} is not a live member at the entry's position", payload.author));
    };
    if !signed {
        if let Err(err) = payload.verify(&key, Some(group_id), prev) {
            return Err(err.to_string());
        }
    }
    if needs_admin && !status.admin {
        return Err(format!("author {} is not an admin at the entry's position", payload.author));
    }
    // One schema lookup per table per entry (a 100-row entry touches one table).
    let mut schemas: HashMap<&str, Rc<Option<TableSchema>>> = HashMap::new();
    for op in &payload.ops {
        match op {
            Op::Schema { table, schema } => check_schema_op(dag, positions, prev, table, schema)?,
            Op::Rule { table, operation, rule } => check_rule_op(dag, positions, prev, table, operation, rule)?,
            Op::Unreplicate { table } if positions.schema(dag, prev, table)?.is_none() => {
                return Err(format!("table {table} is not replicated at the entry's position"));
            }
            _ => {}
        }
        let (table, check): (&str, Box<RowCheck>) = match op {
            Op::Insert { table, row } => (table, Box::new(move |s| s.check_row(row, true).map_err(|e| e.to_string()))),
            Op::Update { table, key, set, unset } => (
                table,
                Box::new(move |s| {
                    s.check_row(key, false).and_then(|_| s.check_row(set, false)).map_err(|e| e.to_string())?;
                    match unset.iter().find(|c| s.column(c).is_none_or(|col| col.not_null)) {
                        Some(c) => Err(format!("column {c} of {} cannot be set to NULL", s.table)),
                        None => Ok(()),
                    }
                }),
            ),
            Op::Delete { table, key } => (table, Box::new(move |s| s.check_row(key, false).map_err(|e| e.to_string()))),
            _ => continue,
        };
        if !schemas.contains_key(table) {
            schemas.insert(table, positions.schema(dag, prev, table)?);
        }
        match schemas.get(table).map(|s| s.as_ref()) {
            Some(Some(schema)) => {
                check(schema)?;
            }
            _ => return Err(format!("table {table} is not replicated at the entry's position")),
        }
    }
    Ok(payload)
}

/// A schema entry's checks at its position (`causal_core::schema_check`), then this
/// database's parser's verdict on its expressions (`crate::schema::probe`).
fn check_schema_op(
    dag: &Dag<SpiStore>,
    positions: &mut Positions,
    prev: &Position,
    table: &str,
    schema: &Value,
) -> Result<(), String> {
    let new = TableSchema::from_value(schema).map_err(|e| format!("schema of {table}: {e}"))?;
    let previous = positions.schema(dag, prev, table)?;
    let mut table_at = |t: &str| positions.schema(dag, prev, t).map(|s| (*s).clone());
    causal_core::schema_check::check_schema_entry(table, &new, previous.as_ref().as_ref(), &mut table_at)?;
    crate::schema::probe::probe_schema(&new)
}

/// The tables a rule may name, as they are at its entry's position.
struct RuleScopeAt<'a> {
    target: Vec<String>,
    others: std::cell::RefCell<(&'a mut Positions, &'a Dag<SpiStore>, &'a Position)>,
}

impl causal_core::rules::RuleScope for RuleScopeAt<'_> {
    fn target_columns(&self) -> &[String] {
        &self.target
    }

    fn table_columns(&self, table: &str) -> Option<Vec<String>> {
        let mut others = self.others.borrow_mut();
        let (positions, dag, prev) = &mut *others;
        positions.schema(dag, prev, table).ok().and_then(|s| s.as_ref().as_ref().map(TableSchema::column_names))
    }
}

/// A rule entry's checks at its position: its table is replicated there, and the rule parses
/// against the group's tables (a rule that does not would refuse every local write).
fn check_rule_op(
    dag: &Dag<SpiStore>,
    positions: &mut Positions,
    prev: &Position,
    table: &str,
    operation: &str,
    rule: &str,
) -> Result<(), String> {
    use causal_core::rules::Operation;
    let Some(schema) = positions.schema(dag, prev, table)?.as_ref().clone() else {
        return Err(format!("rule for table {table}, which is not replicated at the entry's position"));
    };
    let operation = match operation {
        "insert" => Operation::Insert,
        "update" => Operation::Update,
        "delete" => Operation::Delete,
        other => return Err(format!("rule for unknown operation {:?}", other.chars().take(40).collect::<String>())),
    };
    let scope = RuleScopeAt { target: schema.column_names(), others: std::cell::RefCell::new((positions, dag, prev)) };
    causal_core::rules::parse_rule(rule, operation, &scope)
        .map(|_| ())
        .map_err(|e| format!("rule for {} on {table} does not parse: {e}", operation.name()))
}

/// Creates the group from the genesis in the bundle.
fn adopt_group(group_id: &str, alg: HashAlgorithm, entries: &[WireEntry]) -> Result<Group, CausalError> {
    let bad = |why: String| CausalError::BadBundle(why);
    let genesis = entries
        .iter()
        .find(|e| e.hash.to_b64() == group_id)
        .ok_or_else(|| CausalError::UnknownGroup(format!("{group_id} (the bundle does not hold its genesis)")))?
        .decode()
        .map_err(|e| bad(format!("genesis: {e}")))?;
    genesis.verify_hashes(alg).map_err(|e| bad(format!("genesis: {e}")))?;
    let payload = SignedPayload::from_value(&genesis.payload).map_err(|e| bad(format!("genesis: {e}")))?;
    let g = payload.genesis.clone().ok_or_else(|| bad("the group's first entry is not a genesis".into()))?;
    if !genesis.header.prev.is_empty() || g.hash_algorithm != alg.name() {
        return Err(bad("the genesis does not match the bundle's group".into()));
    }
    payload.verify(&g.admin, None, &Position::new()).map_err(|e| bad(format!("genesis: {e}")))?;
    if get_opt::<bool>("SELECT true FROM causal.group_defs WHERE name = $1", &[g.name.clone().into()])?.is_some() {
        return Err(CausalError::DuplicateGroup(g.name));
    }
    crate::catalog::group::insert_group(group_id, &g.name, alg)?;
    let group = Group::find(group_id)?;
    let mut e = genesis;
    e.meta = derive_meta(&payload);
    group.dag().insert(e)?;
    Ok(group)
}

/// Whether every hash of `prev` is stored (storage errors propagate).
fn all_present(dag: &causal_core::Dag<crate::catalog::store::SpiStore>, prev: &Position) -> Result<bool, CausalError> {
    for p in prev {
        if !dag.contains(p)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Entries checked per chunk before they are stored (see `precheck_stream`): small enough
/// that storing starts early, large enough that a batch of signatures is still cheap.
const PRECHECK_CHUNK: usize = 256;

fn import_bundle<'b>(bytes: &'b [u8]) -> Result<Value, CausalError> {
    let parsing = std::time::Instant::now();
    // Entries keep their payloads as text until they are checked (see `causal_core::wire`).
    let text = std::str::from_utf8(bytes).map_err(|_| CausalError::BadBundle("not UTF-8".into()))?;
    let WireBundle { group: group_id, hash_algorithm: alg_name, entries } =
        WireBundle::parse(text).map_err(|e| CausalError::BadBundle(e.to_string()))?;
    let alg = HashAlgorithm::parse(&alg_name).map_err(|e| CausalError::BadBundle(e.to_string()))?;
    let gid: GroupId = group_id.parse().map_err(|_| CausalError::BadBundle("group is not a hash".into()))?;
    let (group, adopted) = match Group::find(&group_id) {
        Ok(g) if g.algorithm != alg => {
            return Err(CausalError::BadBundle("hash algorithm differs from the group's".into()))
        }
        Ok(g) => (g, false),
        Err(CausalError::UnknownGroup(_)) => (adopt_group(&group_id, alg, &entries)?, true),
        Err(e) => return Err(e),
    };
    // Replay would overwrite rows this transaction wrote, whose entry is sealed after commit.
    crate::capture::refuse_after_writes(&group.id, "import the group's history")?;
    let parsed = parsing.elapsed();
    let started = std::time::Instant::now();
    // Local writers of the group finish first, and new ones wait for this import.
    // Committed local transactions are sealed first, under the lock.
    crate::capture::lock_group_exclusive(&group.id)?;
    // Local commits not placed yet are placed first: the engine's view must include them. (A
    // group adopted from this bundle has none; its genesis is placed with the bundle.)
    if !adopted {
        crate::replay::placement::catch_up(&group)?;
    }
    let mut dag = group.dag();
    dag.store().lock().map_err(DagError::from)?;
    dag.store().defer_state_writes();
    // The entries stored by this import and not placed yet, decoded, predecessors first.
    let mut unplaced = Unplaced::default();
    if adopted {
        if let Some(g) = dag.entry(&gid.genesis())? {
            let p =
                SignedPayload::from_value(&g.payload).map_err(|e| CausalError::BadBundle(format!("genesis: {e}")))?;
            unplaced.push((g.hash, g.header.prev, p));
        }
    }
    let (mut accepted, mut duplicates) = (if adopted { 1 } else { 0 }, 0);
    let mut rejected: Vec<(EntryHash, String)> = Vec::new();
    let mut rejected_set: HashSet<EntryHash> = HashSet::new();
    let mut checking = std::time::Duration::ZERO;
    let pending: Vec<WireEntry> = entries.into_iter().filter(|e| !(adopted && e.hash == gid.genesis())).collect();
    let keys = known_keys(&group_id, &pending)?;
    // Which of the bundle's entries (and their predecessors) are stored. The stored set is
    // closed under predecessors, so the bundle's boundary is asked first, and the rest only
    // where that leaves it open (`StoredProbe`): new history costs two lookups, not one per
    // entry.
    {
        let probe = StoredProbe::new(pending.iter().map(|e| (&e.hash, &e.header.prev)));
        dag.store().prefetch_ids(&probe.first_round()).map_err(DagError::from)?;
        let (ask, absent) = probe.second_round(|h| dag.store().known(h));
        dag.store().prefetch_ids(&ask).map_err(DagError::from)?;
        for h in absent {
            dag.store().assume_absent(h);
        }
    }
    let mut positions = Positions { group: Some(group.clone()), ..Positions::default() };
    // Unsigned entries wait for a signature of their author that covers them, later in the
    // bundle (`causal_core::signature_cover`); `released` says that one came.
    let mut covers = CoverTracker::new();
    let mut covered: HashSet<EntryHash> = HashSet::new();
    let released = std::cell::Cell::new(false);
    // Stores one prechecked entry whose turn has come; gives it back if a predecessor is not
    // stored yet (it comes later in the bundle, or is missing) or it waits for its signature.
    let mut place = |dag: &mut causal_core::Dag<crate::catalog::store::SpiStore>,
                     e: WireEntry<'b>,
                     pre: Prechecked|
     -> Result<Placed<'b>, CausalError> {
        if dag.contains(&e.hash)? {
            duplicates += 1;
            return Ok(Placed::Not);
        }
        if let Some(bad) = e.header.prev.iter().find(|p| rejected_set.contains(*p)) {
            rejected_set.insert(e.hash);
            rejected.push((e.hash, format!("depends on rejected entry {bad}")));
            return Ok(Placed::Not);
        }
        let pre = match pre {
            // Wrong whatever comes before it (and so never a cover for an unsigned entry).
            Prechecked::Invalid(reason) => {
                rejected_set.insert(e.hash);
                rejected.push((e.hash, reason));
                return Ok(Placed::Not);
            }
            // Its author's signature on a later entry covers it: its authorship is established.
            Prechecked::Unsigned(p) if covered.remove(&e.hash) => Prechecked::Signed(p),
            Prechecked::Unsigned(p) => {
                if !covers.is_held(&e.hash) {
                    if let Err(err) = covers.hold(e.hash, p.author, e.header.prev.clone()) {
                        rejected_set.insert(e.hash);
                        rejected.push((e.hash, err.to_string()));
                        return Ok(Placed::Not);
                    }
                }
                return Ok(Placed::Waiting(e, Prechecked::Unsigned(p)));
            }
            Prechecked::Signed(p) => {
                let newly = covers.vouch(&p.author, &e.header.prev);
                if !newly.is_empty() {
                    released.set(true);
                    covered.extend(newly);
                }
                Prechecked::Signed(p)
            }
            other => other,
        };
        if !all_present(dag, &e.header.prev)? {
            return Ok(Placed::Waiting(e, pre));
        }
        let t = std::time::Instant::now();
        let verdict = validate(dag, &mut positions, &gid, &e.header.prev, pre);
        checking += t.elapsed();
        match verdict {
            Err(reason) => {
                rejected_set.insert(e.hash);
                rejected.push((e.hash, reason));
            }
            Ok(payload) => {
                let meta = derive_meta(&payload);
                let (hash, prev) = (e.hash, e.header.prev.clone());
                // Its hashes were verified by the precheck; the payload is stored as it came,
                // which parses to the value they were computed from.
                let entry =
                    EncodedEntry { hash, header: e.header, payload_text: e.payload.to_owned(), meta: meta.clone() };
                match dag.insert_encoded(entry) {
                    Ok(_) => {
                        positions.covers.appended(hash, &prev, &meta);
                        accepted += 1;
                        return Ok(Placed::Stored((hash, prev, payload)));
                    }
                    Err(err) => {
                        rejected_set.insert(hash);
                        rejected.push((hash, err.to_string()));
                    }
                }
            }
        }
        Ok(Placed::Not)
    };
    // Stored entries wait here for the engine, which places them (rows, verdicts) every
    // `causal.import_run_rows` row operations while the next chunks are checked, and once more at
    // the end: the checks on the other threads overlap the engine's work as well as the
    // storing. Placing history in runs gives the view that placing it at once would (the
    // view is a function of the history, not of how it arrived; docs/SEMANTICS.md).
    let mut waiting: Vec<(WireEntry, Prechecked)> = Vec::new();
    let (mut in_place, stream_started) = (std::time::Duration::ZERO, std::time::Instant::now());
    let workers = crate::guc::verify_threads();
    let run_rows = crate::guc::import_run_rows();
    let mut progress =
        crate::pg::progress::Progress::start("importing", &group.id, "entries checked", Some(pending.len() as i64));
    precheck_stream(pending, alg, &gid, &keys, workers, PRECHECK_CHUNK, |part| {
        let t = std::time::Instant::now();
        progress.add(part.len() as i64);
        for (e, pre) in part {
            match place(&mut dag, e, pre)? {
                Placed::Stored(n) => unplaced.add(n, run_rows, &group, &dag)?,
                Placed::Waiting(e, pre) => waiting.push((e, pre)),
                Placed::Not => {}
            }
        }
        // A signature came for entries that wait: they go now, with it.
        if released.replace(false) {
            place_waiting(&mut place, &mut dag, &mut waiting, &mut unplaced, run_rows, &group)?;
        }
        // Their rows are written with the run that places them (`Unplaced::place` writes the
        // pending rows first): one insertion per run, not per chunk.
        in_place += t.elapsed();
        Ok::<(), CausalError>(())
    })?;
    // The time this thread waited for the checks, or made them itself (`precheck_stream`).
    let precheck = stream_started.elapsed().saturating_sub(in_place);
    // Entries that came before their predecessors in the bundle.
    place_waiting(&mut place, &mut dag, &mut waiting, &mut unplaced, run_rows, &group)?;
    for (e, _) in waiting {
        if covers.is_held(&e.hash) {
            rejected.push((e.hash, "unsigned, and no later entry of its author in the bundle covers it".into()));
            continue;
        }
        let mut missing = String::new();
        for p in &e.header.prev {
            if !dag.contains(p)? {
                missing = p.to_b64();
                break;
            }
        }
        rejected.push((e.hash, format!("missing predecessor {missing}")));
    }
    unplaced.place(&group, &dag)?;
    // The rows and state of what the last run did not cover (rejected or duplicate entries).
    dag.store().write_state().map_err(DagError::from)?;
    let stored_and_placed = started.elapsed();
    if accepted > 0 {
        crate::pg::notify::notify_changed(&group.id)?;
    }
    if accepted >= 1000 {
        // A large import changes the catalog's size a lot; fresh statistics keep the plans of
        // the next commits and imports on their indexes (autovacuum may be a minute away).
        // Only when the entries doubled since they were last analyzed (the row count the last
        // ANALYZE recorded; an ANALYZE of some columns does not reset n_mod_since_analyze):
        // with the bar at a fifth, a catch-up of 100k entries in imports of 5000 analyzed in 4
        // or 5 of its 21 imports, which took 325-610 ms against about 210 ms for the others.
        // The plans that matter probe indexes whatever the statistics say (see `rows` in
        // replay.rs).
        let stale = get_opt::<bool>(
            "SELECT s.n_live_tup > greatest(1000, c.reltuples * 2) FROM pg_stat_user_tables s \
             JOIN pg_class c ON c.oid = s.relid WHERE s.relid = 'causal.dag_entries'::regclass",
            &[],
        )?
        .unwrap_or(true);
        if stale {
            // Only the columns that plans filter on (and row_meta whole, for the statistics of
            // its lookup indexes' expressions): sampling payloads, predecessor lists and undo
            // records took two thirds of this step's time (440 -> 220 ms at 100k entries), and
            // autovacuum gathers those columns' statistics later. A sample of 3,000 rows
            // (statistics target 10, for this statement only) is enough to keep plans on
            // their indexes, and costs a tenth of the default's 30,000 (58 -> 6 ms at 100k
            // entries with warm caches; in a catch-up, imports that analyzed took 100-350 ms
            // longer than the others).
            crate::pg::spi::with_setting("default_statistics_target", "10", || {
                Spi::run(
                    "ANALYZE causal.dag_entries (grp, node_id, hash, chain, seq), causal.dag_entry_tags, \
                     causal.journal (grp, node_id, height, status), causal.row_meta",
                )
            })??;
        }
    }
    let Unplaced { placed, cancelled, runs, catalog, plan, apply, .. } = unplaced;
    // Storing is what the stream and the late entries took, less the checks and placing.
    let storing = stored_and_placed.saturating_sub(checking + precheck + catalog + plan + apply);
    Ok(json!({
        "group": group_id,
        "accepted": accepted,
        "duplicates": duplicates,
        "replayed": placed.replayed,
        "rewound": placed.rewound,
        "cancelled": cancelled,
        "runs": runs,
        "rejected": rejected.iter().map(|(h, r)| json!({"hash": h.to_b64(), "reason": r})).collect::<Vec<_>>(),
        "ms": {"parse": parsed.as_millis() as u64, "precheck": precheck.as_millis() as u64, "validate": checking.as_millis() as u64,
               "store": storing.as_millis() as u64, "catalog": catalog.as_millis() as u64,
               "reconcile": plan.as_millis() as u64, "replay": apply.as_millis() as u64},
    }))
}

/// An entry of a bundle waiting for its predecessors or its signature, with its checks.
type WaitingEntry<'b> = (WireEntry<'b>, Prechecked);

/// Tries the entries that wait again, in bundle order, until a pass stores none; leaves the
/// ones that still wait in `waiting`.
fn place_waiting<'b>(
    place: &mut impl FnMut(&mut Dag<SpiStore>, WireEntry<'b>, Prechecked) -> Result<Placed<'b>, CausalError>,
    dag: &mut Dag<SpiStore>,
    waiting: &mut Vec<WaitingEntry<'b>>,
    unplaced: &mut Unplaced,
    run_rows: usize,
    group: &Group,
) -> Result<(), CausalError> {
    loop {
        let mut progress = false;
        let mut still = Vec::new();
        for (e, pre) in std::mem::take(waiting) {
            match place(dag, e, pre)? {
                Placed::Stored(n) => {
                    unplaced.add(n, run_rows, group, dag)?;
                    progress = true;
                }
                Placed::Waiting(e, pre) => still.push((e, pre)),
                Placed::Not => progress = true,
            }
        }
        *waiting = still;
        if !progress || waiting.is_empty() {
            return Ok(());
        }
    }
}

/// What became of one entry of a bundle when its turn came.
enum Placed<'b> {
    /// Stored, to be placed by the engine.
    Stored(NewEntry),
    /// A predecessor is not stored yet: tried again later.
    Waiting(WireEntry<'b>, Prechecked),
    /// A duplicate, or rejected.
    Not,
}

/// Entries an import has stored and the engine has not placed yet, and what its runs did.
#[derive(Default)]
struct Unplaced {
    entries: Vec<NewEntry>,
    rows: usize,
    placed: causal_core::reconcile::Stats,
    cancelled: usize,
    /// The engine's runs.
    runs: usize,
    catalog: std::time::Duration,
    plan: std::time::Duration,
    apply: std::time::Duration,
}

impl Unplaced {
    fn push(&mut self, entry: NewEntry) {
        self.rows += entry.2.ops.len().max(1);
        self.entries.push(entry);
    }

    /// [`Unplaced::push`], then a run of the engine once `run_rows` row operations wait.
    fn add(&mut self, entry: NewEntry, run_rows: usize, group: &Group, dag: &Dag<SpiStore>) -> Result<(), CausalError> {
        self.push(entry);
        if self.rows >= run_rows {
            self.place(group, dag)?;
        }
        Ok(())
    }

    /// Applies the catalog changes among the entries, then places them all. `dag` is the
    /// import's store: its state row is written first (the engine reads it), and its own copy
    /// learns how far entries are placed.
    fn place(&mut self, group: &Group, dag: &Dag<SpiStore>) -> Result<(), CausalError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        // The next run's list starts at this one's size, so it does not grow by copying.
        let capacity = self.entries.len();
        let entries = std::mem::replace(&mut self.entries, Vec::with_capacity(capacity));
        self.rows = 0;
        // The state row as the engine will read it; then the import goes on keeping its
        // state in memory.
        dag.store().write_state().map_err(DagError::from)?;
        dag.store().defer_state_writes();
        let t = std::time::Instant::now();
        crate::schema::apply::apply_catalog(group, &entries)?;
        self.catalog += t.elapsed();
        let run = crate::replay::placement::reconcile_imported(group, entries)?;
        let upto = dag.store().state().map_err(DagError::from)?.entry_count;
        dag.store().mark_reconciled(upto).map_err(DagError::from)?;
        self.placed.replayed += run.changes.stats.replayed;
        self.placed.rewound += run.changes.stats.rewound;
        self.cancelled += run.changes.journal.iter().filter(|(_, j)| !j.verdict.is_ok()).count();
        self.plan += run.plan;
        self.apply += run.apply;
        self.runs += 1;
        Ok(())
    }
}

/// Validates and stores the entries of a bundle from `causal.export`. Returns
/// `{"accepted": n, "duplicates": n, "replayed": n, "rewound": n, "cancelled": n,
/// "rejected": [{"hash", "reason"}]}`. Entries that depend on a rejected entry are rejected
/// too. A malformed bundle is an error that stores nothing. In the same transaction, the
/// engine reconciles: verdicts are (re)computed above the fork and the tables are replayed to
/// the group's view at the new frontier (`replayed` entries, `rewound` applied ones undone,
/// `cancelled` among those replayed).
#[pg_extern]
fn import(bundle: &[u8]) -> pgrx::JsonB {
    // Everything an import writes is replay or bookkeeping: with the replay origin, the
    // capture decoder skips it record by record.
    let result = crate::pg::spi::without_jit(|| crate::pg::spi::with_replay_origin(|| import_bundle(bundle)))
        .map_err(CausalError::from);
    pgrx::JsonB(result.and_then(|r| r).or_report("causal.import"))
}
