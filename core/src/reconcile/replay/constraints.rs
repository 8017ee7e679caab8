//! The checks an operation must pass against the entry's view: foreign keys (both ways),
//! UNIQUE constraints, CHECK constraints and the group's rules.

use super::*;

impl<'a, R: ReplicaStore> Replay<'a, R> {
    /// Foreign keys into the deleted rows: a row that still references one, and that the
    /// deleting entry saw, makes the entry invalid (its author's database would have refused).
    pub(super) fn restrict(
        &mut self,
        i: usize,
        h: &EntryHash,
        deleted: &[(String, RowState)],
        local: &RowMap,
    ) -> Result<Result<(), Cancel>, ReconcileError> {
        for (table, row) in deleted {
            for child in self.auth.tables() {
                for fk in child.foreign_keys.iter().filter(|f| f.references == *table) {
                    let Some(equal) = fk
                        .columns
                        .iter()
                        .zip(&fk.referenced_columns)
                        .map(|(c, r)| row.values.get(r).map(|v| (c.clone(), v.clone())))
                        .collect::<Option<Vec<_>>>()
                    else {
                        continue;
                    };
                    for (ck, crow) in self.rows_where(local, &child.table, &equal)? {
                        let slot = self.slot(&child.table, ck.clone());
                        if self.visible(&slot, &crow, i, h)?.is_ok() {
                            return Ok(Err(Cancel::new(
                                CancelCode::ForeignKeyViolation,
                                format!(
                                    "delete from {table} violates foreign key {} of {}: row {ck} still references it",
                                    fk.name, child.table
                                ),
                                vec![crow.inserted_by],
                            )));
                        }
                    }
                }
            }
        }
        Ok(Ok(()))
    }

    pub(super) fn uniques(
        &mut self,
        local: &RowMap,
        schema: &TableSchema,
        key: &RowKey,
        row: &Map<String, Value>,
        changed: Option<&[String]>,
    ) -> Result<Result<(), Cancel>, ReconcileError> {
        for u in &schema.uniques {
            if changed.is_some_and(|ch| !u.columns.iter().any(|c| ch.contains(c))) {
                continue;
            }
            let Some(equal) =
                u.columns.iter().map(|c| row.get(c).map(|v| (c.clone(), v.clone()))).collect::<Option<Vec<_>>>()
            else {
                continue; // a NULL never collides
            };
            for (k, other) in self.rows_where(local, &schema.table, &equal)? {
                if k != *key {
                    return Ok(Err(Cancel::new(
                        CancelCode::UniqueViolation,
                        format!(
                            "duplicate value for unique constraint {} of {}: row {k} (inserted by entry {}) holds it",
                            u.name,
                            schema.table,
                            short(&other.inserted_by)
                        ),
                        vec![other.inserted_by],
                    )));
                }
            }
        }
        Ok(Ok(()))
    }

    pub(super) fn foreign_keys(
        &mut self,
        i: usize,
        h: &EntryHash,
        local: &RowMap,
        schema: &TableSchema,
        row: &Map<String, Value>,
        changed: Option<&[String]>,
    ) -> Result<Result<(), Cancel>, ReconcileError> {
        for fk in &schema.foreign_keys {
            if changed.is_some_and(|ch| !fk.columns.iter().any(|c| ch.contains(c))) {
                continue;
            }
            let Some(values) = fk.columns.iter().map(|c| row.get(c).cloned()).collect::<Option<Vec<_>>>() else {
                continue; // MATCH SIMPLE: a NULL column means no reference
            };
            let Some(target) = self.schema(&fk.references) else {
                return Ok(Err(Cancel::new(
                    CancelCode::TableNotReplicated,
                    format!("foreign key {}: table {} is not replicated", fk.name, fk.references),
                    vec![],
                )));
            };
            let equal: Vec<(String, Value)> = fk.referenced_columns.iter().cloned().zip(values).collect();
            let mut candidates: Vec<(RowKey, RowState)> = Vec::new();
            let by_pk =
                target.primary_key.len() == equal.len() && equal.iter().all(|(c, _)| target.primary_key.contains(c));
            if by_pk {
                let keymap: Map<String, Value> = equal.iter().cloned().collect();
                if let Some(k) = row_key(target, &keymap) {
                    if let Some(r) = self.read(local, &self.slot(&target.table, k.clone()))? {
                        candidates.push((k, r));
                    }
                }
            } else {
                candidates = self.rows_where(local, &target.table, &equal)?;
            }
            let mut why: Option<Cancel> = None;
            for (k, r) in &candidates {
                match self.visible(&self.slot(&target.table, k.clone()), r, i, h)? {
                    Ok(()) => {
                        why = None;
                        break;
                    }
                    Err(c) => why = Some(c),
                }
            }
            let shown: Vec<String> = equal.iter().map(|(c, v)| format!("{c}={v}")).collect();
            if candidates.is_empty() {
                return Ok(Err(Cancel::new(
                    CancelCode::ForeignKeyViolation,
                    format!(
                        "foreign key {} of {}: the referenced row of {} ({}) does not exist in the entry's view",
                        fk.name,
                        schema.table,
                        fk.references,
                        shown.join(", ")
                    ),
                    vec![],
                )));
            }
            if let Some(Cancel { reason, responsible, .. }) = why {
                return Ok(Err(Cancel::new(
                    CancelCode::ForeignKeyViolation,
                    format!(
                        "foreign key {} of {}: the referenced row of {} ({}) is gone, {reason}",
                        fk.name,
                        schema.table,
                        fk.references,
                        shown.join(", ")
                    ),
                    responsible,
                )));
            }
        }
        Ok(Ok(()))
    }

    pub(super) fn checks(
        &self,
        schema: &TableSchema,
        row: &Map<String, Value>,
    ) -> Result<Result<(), Cancel>, ReconcileError> {
        if schema.checks.is_empty() {
            return Ok(Ok(()));
        }
        Ok(match self.store.violated_check(schema, row)? {
            None => Ok(()),
            Some(name) => Err(Cancel::new(
                CancelCode::CheckViolation,
                format!("the row violates check constraint {name} of {}", schema.table),
                vec![],
            )),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn rules(
        &mut self,
        i: usize,
        h: &EntryHash,
        local: &RowMap,
        schema: &TableSchema,
        operation: Operation,
        new: Option<&Map<String, Value>>,
        old: Option<&Map<String, Value>>,
    ) -> Result<Result<(), Cancel>, ReconcileError> {
        let rules = self.auth.rules_for(self.store.dag(), &schema.table, operation.name(), h)?;
        if rules.is_empty() {
            return Ok(Ok(()));
        }
        let author = self.author.to_b64();
        let author = author.as_str();
        for (rule_entry, text) in rules {
            let cache_key = (schema.table.clone(), operation.name().to_string(), text.clone());
            if !self.rules.contains_key(&cache_key) {
                let scope = AuthorityScope { target: schema.column_names(), auth: self.auth };
                let parsed = parse_rule(&text, operation, &scope).ok();
                self.rules.insert(cache_key.clone(), parsed);
            }
            let Some(rule) = self.rules.get(&cache_key).cloned().flatten() else {
                return Ok(Err(Cancel::new(
                    CancelCode::RuleViolation,
                    format!("the rule for {} on {} cannot be read", operation.name(), schema.table),
                    vec![rule_entry],
                )));
            };
            let input = RuleInput { target: schema, new, old, author };
            let mut rows = ViewRows { replay: self, local, i, h: *h, removed_by: Vec::new() };
            let holds = rule_holds(&rule, &input, &mut rows, None)?;
            if !holds {
                let mut responsible = std::mem::take(&mut rows.removed_by);
                responsible.sort();
                responsible.dedup();
                let why = if responsible.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (rows it relies on were removed by {})",
                        responsible.iter().map(short).collect::<Vec<_>>().join(", ")
                    )
                };
                return Ok(Err(Cancel::new(
                    CancelCode::RuleViolation,
                    format!("{} on {} is not allowed by the rule {text}{why}", operation.name(), schema.table),
                    responsible,
                )));
            }
        }
        Ok(Ok(()))
    }
}

/// The rows an entry's rule sees, and which concurrent deletes took some away.
struct ViewRows<'r, 'a, R: ReplicaStore> {
    replay: &'r mut Replay<'a, R>,
    local: &'r RowMap,
    i: usize,
    h: EntryHash,
    removed_by: Vec<EntryHash>,
}

impl<R: ReplicaStore> RuleRows for ViewRows<'_, '_, R> {
    type Error = ReconcileError;

    fn visible_rows(
        &mut self,
        table: &str,
        equal: &[(String, Value)],
    ) -> Result<Vec<Map<String, Value>>, ReconcileError> {
        let mut out = Vec::new();
        for (k, row) in self.replay.rows_where(self.local, table, equal)? {
            match self.replay.visible(&self.replay.slot(table, k), &row, self.i, &self.h)? {
                Ok(()) => out.push(row.values),
                Err(gone) => self.removed_by.extend(gone.responsible),
            }
        }
        Ok(out)
    }

    fn schema(&self, table: &str) -> Option<TableSchema> {
        self.replay.schema(table).cloned()
    }
}
