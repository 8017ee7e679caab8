//! What has been fetched for a group: its heads, what is missing, and the order to import it in.

use super::*;

/// Entries an import waits for while more payloads are in flight (an import costs a
/// transaction, so a trickle of tiny ones is slow).
pub(super) const MIN_IMPORT_BATCH: usize = 500;

/// Follows one entry ready for import through `covers`: an unsigned one (no `signature` in
/// its payload) is held, a signed one releases the unsigned entries of its author it covers.
/// Whether the signature verifies is for the database to say; an entry whose author or hash
/// does not parse is left for it to refuse.
pub(super) fn follow_signatures<P>(
    covers: &mut causal_core::signature_cover::CoverTracker,
    hash: &str,
    f: &Fetched<P>,
) {
    let Some(payload) = f.payload.as_ref() else { return };
    let Some(author) = payload.get("author").and_then(Value::as_str).and_then(|a| a.parse().ok()) else {
        return;
    };
    if payload.get("signature").is_some() {
        covers.vouch(&author, &f.header.prev);
    } else if let Ok(h) = hash.parse() {
        // A run too long is refused by the database; it waits for nothing here.
        let _ = covers.hold(h, author, f.header.prev.clone());
    }
}

/// How long after a failed import the fetched entries are offered again.
pub(super) const IMPORT_RETRY_MS: u64 = 1_000;

/// Hashes remembered as stored per group before the memory is reset.
pub(super) const STORED_MEMORY: usize = 1_000_000;

pub(super) fn group_without_alg<P>(groups: &BTreeMap<String, GroupSync<P>>, group: &str) -> bool {
    groups.get(group).is_some_and(|g| g.alg.is_none() && g.fetched.contains_key(group))
}

/// The fetched entries no other fetched entry names as a predecessor.
pub(super) fn fetched_heads<P>(g: &GroupSync<P>) -> Vec<String> {
    let named: HashSet<String> = g.fetched.values().flat_map(|f| f.header.prev.iter().map(|p| p.to_b64())).collect();
    let mut heads: Vec<String> = g.fetched.keys().filter(|h| !named.contains(*h)).cloned().collect();
    heads.sort();
    heads
}

/// Whether every fetched header's predecessors are fetched or stored (cached until a header
/// arrives: imports and the frontier only resolve more).
pub(super) fn all_resolved<P: Clone>(g: &mut GroupSync<P>) -> bool {
    if !g.resolved {
        g.resolved = missing(g).is_empty();
    }
    g.resolved
}

/// The cached topological order of the fetched entries (those imported since are skipped by
/// the callers, which look each one up).
pub(super) fn cached_order<P>(g: &mut GroupSync<P>) -> &[String] {
    if g.order.is_none() {
        g.order = Some(topological(g));
        g.request_from = 0;
        g.import_from = 0;
    }
    g.order.as_deref().unwrap_or(&[])
}

/// Predecessors of fetched headers that are neither fetched nor known to be stored, with a
/// peer that named each (see [`GroupSync::missing`]).
pub(super) fn missing<P: Clone>(g: &mut GroupSync<P>) -> &BTreeMap<String, P> {
    let known = |g: &GroupSync<P>, p: &str| g.fetched.contains_key(p) || g.stored.contains(p) || g.frontier.contains(p);
    let mut list = match g.missing.take() {
        Some(list) => list,
        None => {
            let mut found: BTreeMap<String, P> = BTreeMap::new();
            for f in g.fetched.values() {
                for p in &f.header.prev {
                    found.entry(p.to_b64()).or_insert_with(|| f.source.clone());
                }
            }
            found
        }
    };
    list.retain(|p, _| !known(g, p));
    g.missing.insert(list)
}

/// The fetched entries, predecessors first (ties broken by hash, so the order is stable).
pub(super) fn topological<P>(g: &GroupSync<P>) -> Vec<String> {
    let mut waiting: HashMap<&str, usize> = HashMap::new();
    let mut children: HashMap<String, Vec<&str>> = HashMap::new();
    for (h, f) in &g.fetched {
        let mut n = 0;
        for p in &f.header.prev {
            let p = p.to_b64();
            if g.fetched.contains_key(&p) {
                n += 1;
                children.entry(p).or_default().push(h.as_str());
            }
        }
        waiting.insert(h.as_str(), n);
    }
    let mut ready: BTreeSet<&str> = waiting.iter().filter(|(_, n)| **n == 0).map(|(h, _)| *h).collect();
    let mut out = Vec::with_capacity(g.fetched.len());
    while let Some(h) = ready.pop_first() {
        out.push(h.to_string());
        for c in children.get(h).into_iter().flatten() {
            if let Some(n) = waiting.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    ready.insert(c);
                }
            }
        }
    }
    out
}
