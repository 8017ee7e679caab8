//! Handing fetched entries to the database in topological order, and what its imports say.

use super::fetched::*;
use super::*;

impl<P: Clone + Eq + StdHash + Ord + Debug> Session<P> {
    /// The database imported the entries of the oldest [`Action::Import`] of `group` under way.
    pub fn imported(&mut self, group: &str, epoch: u64, outcome: ImportOutcome, hash_algorithm: &str, now_ms: u64) {
        let Some(g) = self.groups.get_mut(group) else { return };
        if epoch != g.import_epoch {
            return;
        }
        let Some(batch) = g.importing.pop_front() else { return };
        let mut sources: HashMap<String, P> = HashMap::new();
        for h in &batch {
            g.in_flight.remove(h);
            if let Some(f) = g.fetched.remove(h) {
                sources.insert(h.clone(), f.source);
            }
        }
        if g.stored.len() > STORED_MEMORY {
            // Only needed to place fetched headers; the frontier is kept separately.
            g.stored.clear();
            g.missing = None;
        }
        g.stored.extend(outcome.stored.iter().cloned());
        g.imported_total += outcome.stored.len() as u64;
        g.last_progress_ms = now_ms;
        let mut credit: HashMap<P, u64> = HashMap::new();
        for h in &outcome.stored {
            if let Some(p) = sources.get(h) {
                *credit.entry(p.clone()).or_default() += 1;
            }
        }
        for (p, n) in credit {
            self.peers.entry(p).or_default().entries_received += n;
        }
        let mut offenders = BTreeSet::new();
        for (h, _reason) in &outcome.rejected {
            if let Some(p) = sources.get(h) {
                self.peers.entry(p.clone()).or_default().entries_rejected += 1;
                offenders.insert(p.clone());
            }
        }
        // Whatever depended on a rejected entry can never be stored.
        self.drop_dependents(group, outcome.rejected.iter().map(|(h, _)| h.clone()).collect());
        for p in offenders {
            self.penalize(&p, Offence::BadEntry, now_ms);
        }
        self.local_frontier(group, hash_algorithm, &outcome.frontier, now_ms);
    }

    /// An import failed (the database refused the bundle, or was unavailable), and with it
    /// every later one of its epoch. The entries stay fetched and are offered again later.
    pub fn import_failed(&mut self, group: &str, epoch: u64, now_ms: u64) {
        if let Some(g) = self.groups.get_mut(group) {
            if epoch == g.import_epoch {
                g.importing.clear();
                g.in_flight.clear();
                g.import_epoch += 1;
                g.import_from = 0;
                g.retry_import_at = Some(now_ms + IMPORT_RETRY_MS);
            }
            g.last_progress_ms = now_ms;
        }
    }

    pub(super) fn drop_dependents(&mut self, group: &str, mut gone: Vec<String>) {
        let Some(g) = self.groups.get_mut(group) else { return };
        while let Some(h) = gone.pop() {
            let children: Vec<String> = g
                .fetched
                .iter()
                .filter(|(_, f)| f.header.prev.iter().any(|p| p.to_b64() == h))
                .map(|(k, _)| k.clone())
                .collect();
            for c in children {
                g.fetched.remove(&c);
                g.missing = None;
                gone.push(c);
            }
        }
    }

    // --- the work loop ---

    pub(super) fn import_ready(&mut self, group: &str) {
        let chunk = self.config.import_chunk;
        let Some(g) = self.groups.get_mut(group) else { return };
        // Nothing is importable while the walk has not reached known history.
        if g.importing.len() >= self.config.imports_in_flight.max(1) || g.alg.is_none() || !all_resolved(g) {
            return;
        }
        cached_order(g);
        let Some(order) = g.order.as_deref() else { return };
        // Entries whose payload is here and whose predecessors are stored or go first. The
        // imported prefix of the order is skipped for good.
        while g.import_from < order.len() && !g.fetched.contains_key(&order[g.import_from]) {
            g.import_from += 1;
        }
        let mut ready: Vec<String> = Vec::new();
        let mut placed: HashSet<&str> = HashSet::new();
        // The scan gives up after a chunk's worth of entries that cannot go yet: in a long
        // catch-up, everything past the first payload still on its way waits for it, and
        // scanning to the end of the order on every finished request cost O(catch-up) each.
        let mut waiting = 0;
        // An unsigned entry goes in the same import as the signature that covers it
        // (`causal_core::signature_cover`): an import may run past `chunk` to reach it.
        let mut covers = causal_core::signature_cover::CoverTracker::new();
        for h in &order[g.import_from..] {
            if waiting > chunk || ready.len() > chunk + causal_core::signature_cover::MAX_UNSIGNED_RUN {
                break;
            }
            let Some(f) = g.fetched.get(h) else { continue };
            if g.in_flight.contains(h) {
                continue;
            }
            if !f.verified || f.payload.is_none() {
                waiting += 1;
                continue;
            }
            let prev_ok = f.header.prev.iter().all(|p| {
                let p = p.to_b64();
                g.stored.contains(&p)
                    || g.frontier.contains(&p)
                    || g.in_flight.contains(&p)
                    || placed.contains(p.as_str())
            });
            if !prev_ok {
                waiting += 1;
            }
            if prev_ok {
                placed.insert(h);
                ready.push(h.clone());
                follow_signatures(&mut covers, h, f);
                if ready.len() >= chunk && covers.is_empty() {
                    break;
                }
            }
        }
        // While payloads are still on their way, wait for a batch worth its transaction; a
        // batch queued behind another import waits for a full one while anything is coming.
        let more_coming = self.requests.values().any(|r| r.group == group && !r.asked.is_empty() && r.max == 0);
        let anything_coming = self.requests.values().any(|r| r.group == group);
        let queued_behind = !g.importing.is_empty();
        // Entries whose signature has not come yet wait for it, with what depends on them (the
        // rest goes: one entry never covered holds nothing else up). When nothing more can
        // come (no request under way, nothing fetched waiting, and every hash peers announced
        // fetched or stored), they go too, and the database refuses them.
        let announced_unfetched = || {
            g.peer_frontiers
                .values()
                .flatten()
                .any(|h| !g.stored.contains(h) && !g.fetched.contains_key(h) && !g.frontier.contains(h))
        };
        let before = ready.len();
        if !covers.is_empty() && (anything_coming || waiting > 0 || announced_unfetched()) {
            let mut held: HashSet<String> = covers.held().map(|h| h.to_b64()).collect();
            ready.retain(|h| {
                let blocked = held.contains(h)
                    || g.fetched.get(h).is_some_and(|f| f.header.prev.iter().any(|p| held.contains(&p.to_b64())));
                if blocked {
                    held.insert(h.clone());
                }
                !blocked
            });
        }
        g.held_for_signature = before - ready.len();
        if ready.is_empty()
            || (more_coming && ready.len() < self.config.import_chunk.min(MIN_IMPORT_BATCH))
            || (queued_behind && anything_coming && ready.len() < chunk)
        {
            return;
        }
        let Some(g) = self.groups.get_mut(group) else { return };
        let alg = g.alg.map(|a| a.name().to_string()).unwrap_or_default();
        // Written straight from the fetched entries: no copy of them is made, and the task
        // that runs the import gets bytes, not values this thread would have to take back.
        let null = Value::Null;
        let entries: Vec<WireEntryRef> = ready
            .iter()
            .map(|h| {
                let f = &g.fetched[h];
                WireEntryRef { hash: h, header: &f.raw, payload: f.payload.as_ref().unwrap_or(&null) }
            })
            .collect();
        let bundle = BundleRef { format: causal_core::BUNDLE_FORMAT, group, hash_algorithm: &alg, entries };
        let Ok(bundle) = serde_json::to_vec(&bundle) else { return };
        g.in_flight.extend(ready.iter().cloned());
        g.importing.push_back(ready.clone());
        let epoch = g.import_epoch;
        self.actions.push_back(Action::Import {
            group: group.to_string(),
            hash_algorithm: alg,
            hashes: ready,
            bundle,
            epoch,
        });
    }
}
