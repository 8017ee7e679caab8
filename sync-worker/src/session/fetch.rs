//! Fetching from peers: asking for headers and payloads, and checking what comes back.

use super::fetched::*;
use super::*;

impl<P: Clone + Eq + StdHash + Ord + Debug> Session<P> {
    pub(super) fn own_request(&mut self, peer: &P, request_id: &str, now_ms: u64) -> bool {
        match self.requests.get_mut(request_id) {
            Some(r) if &r.peer == peer => {
                r.deadline_ms = now_ms + self.config.request_timeout_ms;
                true
            }
            _ => {
                self.penalize(peer, Offence::Stray, now_ms);
                false
            }
        }
    }

    pub(super) fn fail_request(&mut self, peer: &P, request_id: &str, offence: Offence, now_ms: u64) {
        let removed = self.requests.remove(request_id);
        let group = removed.as_ref().map(|r| r.group.clone());
        self.send_cancel(peer, request_id, group.as_deref());
        self.penalize(peer, offence, now_ms);
        if let Some(r) = removed {
            if r.max == 0 {
                self.release_payload_requests(&r.group, &r.asked);
            }
            self.work(&r.group, now_ms);
        }
    }

    pub(super) fn send_cancel(&mut self, peer: &P, request_id: &str, group: Option<&str>) {
        if let Some(g) = group {
            self.send(peer, g, SyncMsg::CancelRequest { request_id: request_id.to_string() });
        }
    }

    pub(super) fn header_meta(&mut self, peer: &P, id: &str, count: u32, complete: bool, payloads: u32, now_ms: u64) {
        if !self.own_request(peer, id, now_ms) {
            return;
        }
        let Some(r) = self.requests.get_mut(id) else { return };
        let bad = !matches!(r.expect, Expect::Headers) || r.announced.is_some() || count > r.max || payloads > count;
        if bad {
            return self.fail_request(peer, id, Offence::Unsolicited, now_ms);
        }
        r.announced = Some(count);
        r.complete = complete;
        r.auto_payloads = (payloads > 0).then_some(payloads);
        self.maybe_finish(id, now_ms);
    }

    pub(super) fn header_batch(&mut self, peer: &P, id: &str, sequence: u32, headers: Vec<WireHeader>, now_ms: u64) {
        if !self.own_request(peer, id, now_ms) {
            return;
        }
        let Some(r) = self.requests.get_mut(id) else { return };
        let over = r.announced.is_none_or(|n| r.received.saturating_add(headers.len() as u32) > n);
        if !matches!(r.expect, Expect::Headers) || sequence != r.next_sequence || over {
            return self.fail_request(peer, id, Offence::Unsolicited, now_ms);
        }
        r.next_sequence += 1;
        r.received += headers.len() as u32;
        let group = r.group.clone();
        for h in headers {
            let Ok(header) = Header::from_literal(&h.header) else {
                return self.fail_request(peer, id, Offence::Malformed, now_ms);
            };
            let Some(g) = self.groups.get_mut(&group) else { return };
            let verified = match g.alg {
                Some(alg) => {
                    if header.entry_hash(alg).to_b64() != h.hash {
                        return self.fail_request(peer, id, Offence::BadEntry, now_ms);
                    }
                    true
                }
                None => false,
            };
            if g.stored.contains(&h.hash) || g.fetched.contains_key(&h.hash) {
                continue;
            }
            g.order = None;
            g.resolved = false;
            // The new header's predecessors may be missing; it is no longer (stale entries
            // are dropped when the list is read).
            if let Some(missing) = g.missing.as_mut() {
                for p in &header.prev {
                    missing.entry(p.to_b64()).or_insert_with(|| peer.clone());
                }
            }
            g.fetched.insert(
                h.hash,
                Fetched {
                    header,
                    raw: h.header,
                    source: peer.clone(),
                    payload: None,
                    payload_requested: false,
                    verified,
                },
            );
        }
        if group_without_alg(&self.groups, &group) {
            self.learn_alg(&group, now_ms);
        }
        self.maybe_finish(id, now_ms);
    }

    pub(super) fn payload_meta(&mut self, peer: &P, id: &str, count: u32, now_ms: u64) {
        if !self.own_request(peer, id, now_ms) {
            return;
        }
        let Some(r) = self.requests.get_mut(id) else { return };
        let ok = match r.expect {
            Expect::Payloads => r.announced.is_none() && count as usize <= r.asked.len(),
            Expect::Headers => r.auto_payloads == Some(count) && r.announced == Some(r.received),
        };
        if !ok {
            return self.fail_request(peer, id, Offence::Unsolicited, now_ms);
        }
        if matches!(r.expect, Expect::Payloads) {
            r.announced = Some(count);
        } else {
            r.expect = Expect::Payloads;
            r.payloads_received = 0;
        }
        self.maybe_finish(id, now_ms);
    }

    pub(super) fn payload_msg(&mut self, peer: &P, id: &str, sequence: u32, hash: String, payload: Value, now_ms: u64) {
        if !self.own_request(peer, id, now_ms) {
            return;
        }
        let Some(r) = self.requests.get_mut(id) else { return };
        let expected = match (&r.expect, r.announced, r.auto_payloads) {
            (Expect::Payloads, Some(n), None) => n,
            (Expect::Payloads, _, Some(n)) => n,
            _ => return self.fail_request(peer, id, Offence::Unsolicited, now_ms),
        };
        if sequence != r.payload_sequence || r.payloads_received >= expected {
            return self.fail_request(peer, id, Offence::Unsolicited, now_ms);
        }
        r.payload_sequence += 1;
        r.payloads_received += 1;
        let group = r.group.clone();
        // A walk's payloads may be for any header it returned; a payload request's only for
        // the hashes asked.
        let in_request = r.max > 0 || r.asked.contains(&hash);
        let Some(g) = self.groups.get_mut(&group) else { return };
        let Some(f) = g.fetched.get_mut(&hash).filter(|_| in_request) else {
            // Not something we asked for (or already stored): tolerated only if we had it.
            if !g.stored.contains(&hash) {
                return self.fail_request(peer, id, Offence::Unsolicited, now_ms);
            }
            return self.maybe_finish(id, now_ms);
        };
        if let Some(alg) = g.alg {
            match alg.hash_literal(&payload) {
                Ok(h) if h == f.header.payload_hash => {}
                _ => return self.fail_request(peer, id, Offence::BadEntry, now_ms),
            }
        }
        if f.payload.is_none() {
            f.payload = Some(payload);
        }
        self.maybe_finish(id, now_ms);
    }

    /// Ends a request whose messages have all arrived, and moves the work on.
    pub(super) fn maybe_finish(&mut self, id: &str, now_ms: u64) {
        let Some(r) = self.requests.get(id) else { return };
        let done = match r.expect {
            Expect::Headers => r.announced == Some(r.received) && r.auto_payloads.is_none(),
            Expect::Payloads => {
                let n = r.auto_payloads.or(r.announced);
                n == Some(r.payloads_received)
            }
        };
        if !done {
            return;
        }
        let Some(r) = self.requests.remove(id) else { return };
        let is_walk = r.max > 0;
        if is_walk && r.complete {
            // A complete walk down to our limits: every predecessor it did not send, and every
            // start hash it did not send, is in our history already.
            if let Some(g) = self.groups.get_mut(&r.group) {
                let mut known: Vec<String> = missing(g).keys().cloned().collect();
                known.extend(r.asked.iter().filter(|h| !g.fetched.contains_key(*h)).cloned());
                g.stored.extend(known);
            }
        }
        if !is_walk && r.announced.is_some_and(|n| (n as usize) < r.asked.len()) {
            // It announced entries it cannot deliver.
            self.penalize(&r.peer, Offence::Stalled, now_ms);
        }
        if !is_walk {
            self.release_payload_requests(&r.group, &r.asked);
        }
        self.work(&r.group, now_ms);
    }

    /// Payloads a finished or failed request asked for and did not deliver may be asked again.
    pub(super) fn release_payload_requests(&mut self, group: &str, asked: &HashSet<String>) {
        if let Some(g) = self.groups.get_mut(group) {
            for h in asked {
                if let Some(f) = g.fetched.get_mut(h) {
                    if f.payload.is_none() {
                        f.payload_requested = false;
                        g.request_from = 0;
                    }
                }
            }
        }
    }

    /// The group's hash algorithm became known from its genesis header: check what waited.
    pub(super) fn learn_alg(&mut self, group: &str, now_ms: u64) {
        let Some(g) = self.groups.get_mut(group) else { return };
        let Some(genesis) = g.fetched.get(group) else { return };
        let found = [HashAlgorithm::Sha256, HashAlgorithm::Blake3]
            .into_iter()
            .find(|alg| genesis.header.entry_hash(*alg).to_b64() == group);
        match found {
            Some(alg) => {
                g.alg = Some(alg);
                self.verify_pending(group, now_ms);
            }
            None => {
                let source = genesis.source.clone();
                g.fetched.remove(group);
                g.missing = None;
                self.penalize(&source, Offence::BadEntry, now_ms);
            }
        }
    }

    pub(super) fn verify_pending(&mut self, group: &str, now_ms: u64) {
        let Some(g) = self.groups.get_mut(group) else { return };
        let Some(alg) = g.alg else { return };
        let mut liars = Vec::new();
        g.fetched.retain(|hash, f| {
            if f.verified {
                return true;
            }
            let ok = f.header.entry_hash(alg).to_b64() == *hash
                && f.payload.as_ref().is_none_or(|p| alg.hash_literal(p).is_ok_and(|h| h == f.header.payload_hash));
            if !ok {
                liars.push(f.source.clone());
            }
            f.verified = ok;
            ok
        });
        if !liars.is_empty() {
            g.missing = None;
        }
        for p in liars {
            self.penalize(&p, Offence::BadEntry, now_ms);
        }
    }

    // --- imports ---

    pub(super) fn work(&mut self, group: &str, now_ms: u64) {
        self.request_headers(group, now_ms);
        self.request_payloads(group, now_ms);
        let held_before = self.groups.get(group).map(|g| g.held_for_signature);
        self.import_ready(group);
        // Entries held back for their signature make room for fetching on (the window does
        // not count them), so the signature can come.
        if self.groups.get(group).map(|g| g.held_for_signature) > held_before {
            self.request_headers(group, now_ms);
        }
    }

    pub(super) fn header_request_in_flight(&self, group: &str) -> bool {
        self.requests.values().any(|r| r.group == group && r.max > 0)
    }

    pub(super) fn request_headers(&mut self, group: &str, now_ms: u64) {
        if self.header_request_in_flight(group) {
            return;
        }
        let max = self.config.max_headers;
        let max_fetched = self.config.max_fetched;
        let Some(g) = self.groups.get_mut(group) else { return };
        if g.fetched.len() >= max_fetched {
            return;
        }
        // First, predecessors of fetched headers that are still missing, from the peer that
        // sent those headers (it must hold them), walking back.
        let mut per_peer: BTreeMap<P, BTreeSet<String>> = BTreeMap::new();
        let mut forward = false;
        if !all_resolved(g) {
            for (p, source) in missing(g) {
                per_peer.entry(source.clone()).or_default().insert(p.clone());
            }
        }
        // Then frontier hashes peers announced that we lack. While the database holds the
        // group, it is asked first about hashes we have not seen (see Action::CheckStored).
        if per_peer.is_empty() {
            let mut to_check: BTreeSet<String> = BTreeSet::new();
            let mut peers: Vec<&P> = g.peer_frontiers.keys().collect();
            peers.sort();
            for peer in peers {
                let unknown: BTreeSet<String> = g.peer_frontiers[peer]
                    .iter()
                    .filter(|h| !g.stored.contains(*h) && !g.fetched.contains_key(*h) && !g.frontier.contains(*h))
                    .cloned()
                    .collect();
                let (absent, unchecked): (BTreeSet<String>, BTreeSet<String>) =
                    unknown.into_iter().partition(|h| !g.present || g.checked_absent.contains(h));
                to_check.extend(unchecked.into_iter().filter(|h| !g.checking.contains(h)));
                if !absent.is_empty() {
                    per_peer.insert(peer.clone(), absent);
                    forward = self.config.forward_fetch;
                    break;
                }
            }
            if !to_check.is_empty() {
                let hashes: Vec<String> = to_check.into_iter().take(MAX_HASH_LIST).collect();
                g.checking.extend(hashes.iter().cloned());
                self.actions.push_back(Action::CheckStored { group: group.to_string(), hashes });
            }
        }
        let Some(g) = self.groups.get(group) else { return };
        let Some((peer, start)) = per_peer.into_iter().find(|(p, _)| self.peers.get(p).is_some_and(|s| s.connected))
        else {
            return;
        };
        // Entries waiting for their signature do not count (up to a few runs' worth): the
        // signature is further on, and nothing imports until it is fetched.
        let held = g.held_for_signature.min(4 * (causal_core::signature_cover::MAX_UNSIGNED_RUN + 1));
        if forward && g.fetched.len() >= self.config.forward_window + held {
            return; // imports first
        }
        let start: Vec<String> = start.into_iter().take(MAX_HASH_LIST).collect();
        // A forward request leaves out what was fetched already: the limits name our frontier
        // and the newest of the fetched entries, whose histories hold everything else fetched.
        let mut limits: Vec<String> = g.frontier.iter().cloned().collect();
        if forward {
            limits.extend(fetched_heads(g));
        }
        limits.truncate(MAX_HASH_LIST);
        let id = self.new_request_id();
        let deadline = now_ms + self.config.request_timeout_ms;
        let asked = start.iter().cloned().collect();
        self.requests.insert(id.clone(), Request::new(peer.clone(), group, asked, Expect::Headers, max, deadline));
        let msg = SyncMsg::HeaderRequest {
            request_id: id,
            dag_id: group.to_string(),
            start,
            limits,
            max_headers: max,
            auto_payload: true,
            forward,
        };
        self.send(&peer, group, msg);
    }

    pub(super) fn request_payloads(&mut self, group: &str, now_ms: u64) {
        // Payloads are fetched once the header walk is done, oldest first, so imports can
        // proceed in order while the rest arrive.
        if self.header_request_in_flight(group) {
            return;
        }
        let chunk = self.config.payload_chunk.max(1);
        let per_peer_limit = self.config.payload_requests_per_peer;
        let Some(g) = self.groups.get_mut(group) else { return };
        if !all_resolved(g) {
            return;
        }
        cached_order(g);
        let Some(order) = g.order.as_deref() else { return };
        // Free request slots per connected peer; the scan stops once they are all filled.
        let mut slots: HashMap<P, usize> = HashMap::new();
        for (p, s) in &self.peers {
            if s.connected {
                let in_flight = self.requests.values().filter(|r| &r.peer == p && r.max == 0).count();
                slots.insert(p.clone(), per_peer_limit.saturating_sub(in_flight) * chunk);
            }
        }
        let mut wanted: BTreeMap<P, Vec<String>> = BTreeMap::new();
        // The first entry passed over because its source had no slot left: the next scan
        // starts there.
        let mut passed_over = None;
        let mut i = g.request_from;
        while i < order.len() && slots.values().any(|n| *n > 0) {
            let h = &order[i];
            i += 1;
            let Some(f) = g.fetched.get(h) else { continue };
            if f.payload.is_some() || f.payload_requested {
                continue;
            }
            match slots.get_mut(&f.source) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    wanted.entry(f.source.clone()).or_default().push(h.clone());
                }
                _ => {
                    passed_over.get_or_insert(i - 1);
                }
            }
        }
        g.request_from = passed_over.unwrap_or(i);
        for (peer, hashes) in wanted {
            for part in hashes.chunks(chunk) {
                let id = self.new_request_id();
                if let Some(g) = self.groups.get_mut(group) {
                    for h in part {
                        if let Some(f) = g.fetched.get_mut(h) {
                            f.payload_requested = true;
                        }
                    }
                }
                let deadline = now_ms + self.config.request_timeout_ms;
                let asked = part.iter().cloned().collect();
                self.requests
                    .insert(id.clone(), Request::new(peer.clone(), group, asked, Expect::Payloads, 0, deadline));
                let msg = SyncMsg::PayloadRequest { request_id: id, dag_id: group.to_string(), hashes: part.to_vec() };
                self.send(&peer, group, msg);
            }
        }
    }
}
