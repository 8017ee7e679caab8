//! Validating imported entries against history: membership, schemas and rules at each
//! entry's position, and the keys that sign them.

use std::collections::HashMap;
use std::rc::Rc;

use serde_json::Value;

use causal_core::dag::cover_cache::CoverCache;
use causal_core::entry::Position;
use causal_core::identity::{KeyId, PublicKey};
use causal_core::membership::{member_status, MemberStatus, MEMBER_TAG, SCHEMA_TAG};
use causal_core::payload::{Op, PayloadError, SignedPayload};
use causal_core::precheck::Prechecked;
use causal_core::schema::TableSchema;
use causal_core::wire::WireEntry;
use causal_core::{Dag, EntryHash, FastMap, GroupId};

use crate::catalog::group::Group;
use crate::catalog::store::SpiStore;
use crate::error::CausalError;

/// A group's authority entries with their order keys.
type AuthorityInput = Vec<(causal_core::reconcile::OrderKey, SignedPayload)>;

/// Answers about entries' positions during one import: who is a member and what each table's
/// schema is. Covers come from a [`CoverCache`] (no query for an entry that extends a chain),
/// and each distinct cover is decoded once. Asked once per entry, so a lookup allocates
/// nothing once its answer is known.
#[derive(Default)]
pub(super) struct Positions {
    /// The group, for the membership view with verdicts (`Positions::member`'s slow path).
    group: Option<Group>,
    /// The group's authority entries with order keys, by the authority version they were read at.
    authority: Option<(u32, Rc<AuthorityInput>)>,
    /// Statuses from the membership view, by (authority entries in the position's past, key).
    viewed: FastMap<(Vec<EntryHash>, KeyId), MemberStatus>,
    pub(super) covers: CoverCache,
    members: FastMap<(Position, KeyId), MemberStatus>,
    schemas: FastMap<Position, FastMap<String, Rc<Option<TableSchema>>>>,
    key_texts: FastMap<KeyId, String>,
}

impl Positions {
    /// The answers for one import into `group`.
    pub(super) fn for_group(group: Group) -> Positions {
        Positions { group: Some(group), ..Positions::default() }
    }

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
pub(super) fn schema_in(dag: &Dag<SpiStore>, last: &Position, table: &str) -> Result<Option<TableSchema>, String> {
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
pub(super) fn known_keys(group_id: &str, entries: &[WireEntry]) -> Result<HashMap<KeyId, PublicKey>, CausalError> {
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
    let sql = format!(
        "SELECT DISTINCT {} FROM causal.dag_entry_tags t JOIN causal.dag_entries e \
         ON e.grp = t.grp AND e.chain = t.chain AND e.seq = t.seq \
         WHERE t.grp = (SELECT grp FROM causal.group_defs WHERE group_id = $1) AND t.tag = 'member'",
        crate::catalog::entry_row::payload_sql()
    );
    let stored: Vec<Option<String>> = crate::pg::spi::run_prepared(&sql, &[group_id.into()], false, |rows| {
        rows.map(|r| r.get::<String>(1)).collect::<Result<Vec<_>, _>>()
    })?;
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
pub(super) fn validate(
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
pub(super) fn check_schema_op(
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
pub(super) fn check_rule_op(
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
