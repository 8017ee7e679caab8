//! Authority: who is a member, who is an admin, which rules and schemas are in force.
//!
//! Authority entries are the genesis and the entries that add or remove members, declare
//! rules, or record schemas. They are few, so they are all resolved in memory on every run, in
//! the canonical order:
//!
//! - The genesis is ok by fiat; its author is the first admin.
//! - A membership or rule entry is ok when its author is a live admin in its view: the ok
//!   authority entries of its causal past, minus the members removed by concurrent removals.
//!   A concurrent removal earlier in the canonical order counts when it is ok; one later in
//!   the order counts whatever its own verdict (it cannot be known yet). So of two admins who
//!   remove each other concurrently, the removal later in the canonical order survives.
//! - A schema entry is always ok (structure only grows: a column, once added, stays).

use std::collections::{BTreeMap, BTreeSet};

use super::HashMap;

use crate::dag::{Dag, DagStore};
use crate::hash::EntryHash;
use crate::identity::{KeyId, PublicKey};
use crate::payload::{Op, SignedPayload};
use crate::schema::TableSchema;

use super::{removal_conflicts, Cancel, CancelCode, OrderKey, ReconcileError, Verdict};

#[derive(Clone, Debug)]
enum Change {
    Add { admin: bool, key: PublicKey },
    Remove,
}

#[derive(Clone, Debug)]
struct MemberChange {
    entry: EntryHash,
    order: OrderKey,
    key: KeyId,
    change: Change,
}

#[derive(Clone, Debug)]
struct RuleDecl {
    entry: EntryHash,
    table: String,
    operation: String,
    rule: String,
}

#[derive(Clone, Debug)]
struct SchemaDecl {
    entry: EntryHash,
    order: OrderKey,
    table: String,
    /// `None` for an unreplicate.
    schema: Option<TableSchema>,
}

/// The resolved authority of a group.
#[derive(Debug, Default)]
pub struct Authority {
    verdicts: BTreeMap<EntryHash, Verdict>,
    members: Vec<MemberChange>,
    rules: Vec<RuleDecl>,
    schemas: Vec<SchemaDecl>,
    /// Per table: the schema in force at the frontier (union of columns), and which schema
    /// entry first added each column.
    tables: HashMap<String, (TableSchema, HashMap<String, EntryHash>)>,
}

/// Whether a key may write: `Err` carries the reason and the entries responsible.
pub type Standing = Result<(), Cancel>;

fn short(h: &impl std::fmt::Display) -> String {
    h.to_string().chars().take(10).collect()
}

/// The items of a causal past that no other item follows: the last changes on every path.
fn last_of<'x, T, S: DagStore>(
    dag: &Dag<S>,
    past: &[&'x T],
    entry: impl Fn(&T) -> EntryHash,
) -> Result<Vec<&'x T>, ReconcileError> {
    let mut last = Vec::new();
    for c in past {
        let mut superseded = false;
        for d in past {
            if entry(d) != entry(c) && dag.precedes(&entry(c), &entry(d))? {
                superseded = true;
                break;
            }
        }
        if !superseded {
            last.push(*c);
        }
    }
    Ok(last)
}

/// Whether an operation carries authority (only an admin may make it).
pub fn is_authority_op(op: &Op) -> bool {
    matches!(
        op,
        Op::AddMember { .. } | Op::RemoveMember { .. } | Op::Rule { .. } | Op::Schema { .. } | Op::Unreplicate { .. }
    )
}

/// Whether a payload carries authority.
pub fn carries_authority(p: &SignedPayload) -> bool {
    p.genesis.is_some() || p.ops.iter().any(is_authority_op)
}

impl Authority {
    /// Resolves the verdicts of all authority entries of a group.
    pub fn resolve<S: DagStore>(
        dag: &Dag<S>,
        mut entries: Vec<(OrderKey, SignedPayload)>,
    ) -> Result<Authority, ReconcileError> {
        entries.sort_by_key(|e| e.0);
        let mut all_changes = Vec::new();
        for (order, p) in &entries {
            if let Some(g) = &p.genesis {
                all_changes.push(MemberChange {
                    entry: order.hash,
                    order: *order,
                    key: g.admin.key_id(),
                    change: Change::Add { admin: true, key: g.admin },
                });
            }
            for op in &p.ops {
                match op {
                    Op::AddMember { public_key, admin, .. } => all_changes.push(MemberChange {
                        entry: order.hash,
                        order: *order,
                        key: public_key.key_id(),
                        change: Change::Add { admin: *admin, key: *public_key },
                    }),
                    Op::RemoveMember { key_id } => all_changes.push(MemberChange {
                        entry: order.hash,
                        order: *order,
                        key: *key_id,
                        change: Change::Remove,
                    }),
                    _ => {}
                }
            }
        }
        // Removals whose authors remove each other concurrently are decided first, by
        // seniority (`removal_conflicts`). A removal that stands there but is cancelled by the
        // pass (its author was not an admin in its view) is taken out and the conflicts
        // decided again, until nothing changes; each round takes out at least one removal.
        let authors: HashMap<EntryHash, KeyId> = entries.iter().map(|(o, p)| (o.hash, p.author)).collect();
        let mut removals = Vec::new();
        for c in all_changes.iter().filter(|c| matches!(c.change, Change::Remove)) {
            let Some(author) = authors.get(&c.entry).copied() else { continue };
            let mut seniority = None;
            for g in
                all_changes.iter().filter(|g| g.key == author && matches!(g.change, Change::Add { admin: true, .. }))
            {
                if (g.entry == c.entry || dag.precedes(&g.entry, &c.entry)?) && seniority.is_none_or(|s| g.order > s) {
                    seniority = Some(g.order);
                }
            }
            removals.push(removal_conflicts::Removal {
                entry: c.entry,
                order: c.order,
                author,
                removed: c.key,
                seniority,
            });
        }
        let mut excluded: BTreeSet<EntryHash> = BTreeSet::new();
        loop {
            let live: Vec<removal_conflicts::Removal> =
                removals.iter().filter(|r| !excluded.contains(&r.entry)).cloned().collect();
            let fallen = removal_conflicts::resolve(dag, &live)?;
            let a = Authority::pass(dag, &entries, &all_changes, &fallen, &excluded)?;
            let newly: Vec<EntryHash> = live
                .iter()
                .filter(|r| !fallen.contains_key(&r.entry) && a.verdicts.get(&r.entry).is_some_and(|v| !v.is_ok()))
                .map(|r| r.entry)
                .collect();
            if newly.is_empty() {
                return Ok(a);
            }
            excluded.extend(newly);
        }
    }

    /// One pass over the authority entries in canonical order, with the removal conflicts
    /// decided (`fallen`); `excluded` removals are cancelled anyway and count for nothing.
    fn pass<S: DagStore>(
        dag: &Dag<S>,
        entries: &[(OrderKey, SignedPayload)],
        all_changes: &[MemberChange],
        fallen: &removal_conflicts::Fallen,
        excluded: &BTreeSet<EntryHash>,
    ) -> Result<Authority, ReconcileError> {
        let mut a = Authority::default();
        for (order, p) in entries {
            let h = order.hash;
            let verdict = if p.genesis.is_some()
                || p.ops.iter().all(|op| matches!(op, Op::Schema { .. } | Op::Unreplicate { .. }))
            {
                Verdict::ok()
            } else {
                // Removals later in the order count against the author unless they fell in a
                // conflict (or are cancelled anyway).
                let pending: Vec<&MemberChange> = all_changes
                    .iter()
                    .filter(|c| c.order > *order && !fallen.contains_key(&c.entry) && !excluded.contains(&c.entry))
                    .collect();
                if let Some(by) = fallen.get(&h) {
                    let first = by.first().map(short).unwrap_or_default();
                    Verdict::cancelled(Cancel::new(
                        CancelCode::AuthorRemoved,
                        format!(
                            "author {} was removed concurrently by entry {first}, which stands: of admins removing each other, the one with the older admin grant wins",
                            short(&p.author.0)
                        ),
                        by.clone(),
                    ))
                } else {
                    match a.standing_with(dag, &p.author, &h, true, &pending)? {
                        Ok(()) => Verdict::ok(),
                        Err(c) => Verdict::cancelled(c),
                    }
                }
            };
            let ok = verdict.is_ok();
            a.verdicts.insert(h, verdict);
            if !ok {
                continue;
            }
            a.members.extend(all_changes.iter().filter(|c| c.entry == h).cloned());
            for op in &p.ops {
                match op {
                    Op::Rule { table, operation, rule } => a.rules.push(RuleDecl {
                        entry: h,
                        table: table.clone(),
                        operation: operation.clone(),
                        rule: rule.clone(),
                    }),
                    Op::Schema { table, schema } => {
                        let parsed = TableSchema::from_value(schema).map_err(|e| {
                            ReconcileError::Corrupt(format!("schema entry {} for {table}: {e}", h.to_b64()))
                        })?;
                        a.schemas.push(SchemaDecl {
                            entry: h,
                            order: *order,
                            table: table.clone(),
                            schema: Some(parsed),
                        });
                    }
                    Op::Unreplicate { table } => {
                        a.schemas.push(SchemaDecl { entry: h, order: *order, table: table.clone(), schema: None })
                    }
                    _ => {}
                }
            }
        }
        a.build_tables();
        Ok(a)
    }

    fn build_tables(&mut self) {
        let mut sorted: Vec<&SchemaDecl> = self.schemas.iter().collect();
        sorted.sort_by_key(|d| d.order);
        for d in sorted {
            let Some(schema) = &d.schema else { continue };
            let slot = self.tables.entry(d.table.clone()).or_insert_with(|| (schema.clone(), HashMap::default()));
            // The latest schema in the order, plus any column only a concurrent one added.
            let mut merged = schema.clone();
            for c in &slot.0.columns {
                if merged.column(&c.name).is_none() {
                    merged.columns.push(c.clone());
                }
            }
            for c in &schema.columns {
                slot.1.entry(c.name.clone()).or_insert(d.entry);
            }
            slot.0 = merged;
        }
    }

    pub fn verdicts(&self) -> &BTreeMap<EntryHash, Verdict> {
        &self.verdicts
    }

    pub fn is_authority(&self, h: &EntryHash) -> bool {
        self.verdicts.contains_key(h)
    }

    pub fn verdict(&self, h: &EntryHash) -> Option<&Verdict> {
        self.verdicts.get(h)
    }

    /// The schema of a table at the frontier.
    pub fn schema(&self, table: &str) -> Option<&TableSchema> {
        self.tables.get(table).map(|t| &t.0)
    }

    /// Every table with a schema.
    pub fn tables(&self) -> impl Iterator<Item = &TableSchema> {
        self.tables.values().map(|t| &t.0)
    }

    /// The schema entry that first added `column` to `table`.
    pub fn column_added_by(&self, table: &str, column: &str) -> Option<EntryHash> {
        self.tables.get(table).and_then(|t| t.1.get(column).copied())
    }

    /// The status of `key` at `position` seen from the entries this authority was resolved
    /// from: its last `ok` membership changes there (cancelled ones count for nothing). A
    /// removal among them makes it no member; it is an admin when all of them add it as one.
    pub fn status_at<S: DagStore>(
        &self,
        dag: &Dag<S>,
        key: &KeyId,
        position: &crate::entry::Position,
    ) -> Result<crate::membership::MemberStatus, ReconcileError> {
        let mut past = Vec::new();
        for c in self.members.iter().filter(|c| c.key == *key) {
            let mut inside = false;
            for p in position {
                if *p == c.entry || dag.precedes(&c.entry, p)? {
                    inside = true;
                    break;
                }
            }
            if inside {
                past.push(c);
            }
        }
        let last = last_of(dag, &past, |c: &MemberChange| c.entry)?;
        let live = !last.is_empty() && last.iter().all(|c| matches!(c.change, Change::Add { .. }));
        let admin = live && last.iter().all(|c| matches!(c.change, Change::Add { admin: true, .. }));
        let public_key = self.members.iter().rev().find_map(|c| match &c.change {
            Change::Add { key: k, .. } if c.key == *key => Some(*k),
            _ => None,
        });
        Ok(crate::membership::MemberStatus { live, admin, public_key })
    }

    /// Whether `key` is a live member (an admin, if `need_admin`) in the view of entry `at`.
    pub fn standing<S: DagStore>(
        &self,
        dag: &Dag<S>,
        key: &KeyId,
        at: &EntryHash,
        need_admin: bool,
    ) -> Result<Standing, ReconcileError> {
        self.standing_with(dag, key, at, need_admin, &[])
    }

    fn standing_with<S: DagStore>(
        &self,
        dag: &Dag<S>,
        key: &KeyId,
        at: &EntryHash,
        need_admin: bool,
        pending: &[&MemberChange],
    ) -> Result<Standing, ReconcileError> {
        let mine: Vec<&MemberChange> = self.members.iter().filter(|c| c.key == *key && c.entry != *at).collect();
        let mut past = Vec::new();
        let mut concurrent_removals = Vec::new();
        for c in &mine {
            if dag.precedes(&c.entry, at)? {
                past.push(*c);
            } else if !dag.precedes(at, &c.entry)? && matches!(c.change, Change::Remove) {
                concurrent_removals.push(c.entry);
            }
        }
        for c in pending.iter().filter(|c| c.key == *key && c.entry != *at && matches!(c.change, Change::Remove)) {
            if !dag.precedes(&c.entry, at)? && !dag.precedes(at, &c.entry)? {
                concurrent_removals.push(c.entry);
            }
        }
        let last = last_of(dag, &past, |c: &MemberChange| c.entry)?;
        // The author's name is spelled out only for a cancellation.
        let who = || short(&key.0);
        if last.is_empty() {
            return Ok(Err(Cancel::new(
                CancelCode::NotAMember,
                format!("author {} is not a member of the group at the entry's position", who()),
                vec![],
            )));
        }
        if let Some(r) = last.iter().find(|c| matches!(c.change, Change::Remove)) {
            return Ok(Err(Cancel::new(
                CancelCode::AuthorRemoved,
                format!("author {} was removed from the group by entry {}", who(), short(&r.entry)),
                vec![r.entry],
            )));
        }
        if !concurrent_removals.is_empty() {
            concurrent_removals.sort();
            concurrent_removals.dedup();
            return Ok(Err(Cancel::new(
                CancelCode::AuthorRemoved,
                format!(
                    "author {} was removed from the group by concurrent entry {}",
                    who(),
                    short(&concurrent_removals[0])
                ),
                concurrent_removals,
            )));
        }
        if need_admin && !last.iter().all(|c| matches!(c.change, Change::Add { admin: true, .. })) {
            return Ok(Err(Cancel::new(
                CancelCode::NotAnAdmin,
                format!("author {} is not an admin at the entry's position", who()),
                vec![],
            )));
        }
        Ok(Ok(()))
    }

    /// The tables that some rule of the group scans with `exists` (whatever its verdict or
    /// place; a rule that does not parse scans none).
    pub fn rule_scanned_tables(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for r in &self.rules {
            let Some(operation) = crate::rules::Operation::from_name(&r.operation) else { continue };
            let target = self.schema(&r.table).map(TableSchema::column_names).unwrap_or_default();
            if let Ok(rule) = crate::rules::parse_rule(&r.rule, operation, &AuthorityScope { target, auth: self }) {
                rule.scanned_tables(&mut out);
            }
        }
        out
    }

    /// The rules a write of `operation` on `table` by entry `at` must satisfy: the last ok
    /// rule declarations of its causal past, and every ok concurrent one.
    pub fn rules_for<S: DagStore>(
        &self,
        dag: &Dag<S>,
        table: &str,
        operation: &str,
        at: &EntryHash,
    ) -> Result<Vec<(EntryHash, String)>, ReconcileError> {
        let decls: Vec<&RuleDecl> =
            self.rules.iter().filter(|r| r.table == table && r.operation == operation).collect();
        if decls.is_empty() {
            return Ok(Vec::new());
        }
        let mut past = Vec::new();
        let mut out = Vec::new();
        for r in &decls {
            if dag.precedes(&r.entry, at)? {
                past.push(*r);
            } else if !dag.precedes(at, &r.entry)? {
                out.push((r.entry, r.rule.clone()));
            }
        }
        for r in last_of(dag, &past, |r: &RuleDecl| r.entry)? {
            out.push((r.entry, r.rule.clone()));
        }
        Ok(out)
    }

    /// Whether `table` is replicated in the view of entry `at`: a schema entry for it is in
    /// the causal past, and the last ones there are not unreplications.
    pub fn replicated_at<S: DagStore>(
        &self,
        dag: &Dag<S>,
        table: &str,
        at: &EntryHash,
    ) -> Result<bool, ReconcileError> {
        let mut past = Vec::new();
        for d in self.schemas.iter().filter(|d| d.table == table) {
            if dag.precedes(&d.entry, at)? {
                past.push(d);
            }
        }
        let last = last_of(dag, &past, |d: &SchemaDecl| d.entry)?;
        Ok(!last.is_empty() && last.iter().all(|d| d.schema.is_some()))
    }
}

/// The tables a rule of a table may read, as the authority has them.
pub(crate) struct AuthorityScope<'a> {
    /// The columns of the table the rule guards.
    pub(crate) target: Vec<String>,
    pub(crate) auth: &'a Authority,
}

impl crate::rules::RuleScope for AuthorityScope<'_> {
    fn target_columns(&self) -> &[String] {
        &self.target
    }

    fn table_columns(&self, table: &str) -> Option<Vec<String>> {
        self.auth.schema(table).map(TableSchema::column_names)
    }
}
