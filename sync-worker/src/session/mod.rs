//! The sync protocol as a state machine without I/O.
//!
//! The caller feeds it events (a peer connected, a frame arrived, the local frontier moved,
//! an import finished, time passed) and carries out the [`Action`]s it queues: send a message,
//! read headers or payloads from the database to serve a peer, import fetched entries, or
//! disconnect a peer. Nothing here blocks or touches a socket or a database, so the whole
//! protocol runs in deterministic simulations (see `tests/simulation.rs`).
//!
//! Fetching follows the spec: a `new-frontier` with hashes we lack starts a `header-request`
//! (start: those hashes; limits: our frontier) to the peer that announced them; headers whose
//! predecessors are still missing start the next one, to the same peer; when the walk is
//! complete, payloads come with it (`autoPayload`) or are requested in chunks, oldest first;
//! entries whose predecessors are all in place go to the database in topological order.
//! Whatever a peer sends is checked on arrival (hashes, counts, sequence numbers), and the
//! database's own validation has the last word; misbehaviour is scored (see [`crate::score`]).
//!
//! This file holds the session's state, its events from peers and the caller, and the
//! dispatch of messages; `serve.rs` answers a peer's requests, `fetch.rs` makes ours and checks
//! the answers, `import.rs` hands fetched entries to the database, and `fetched.rs` orders them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash as StdHash;

use serde_json::Value;

use causal_core::entry::Header;
use causal_core::HashAlgorithm;

use crate::score::{Offence, Scores};
use crate::wire::{Envelope, SyncMsg, WireHeader, MAX_HASH_LIST, MAX_HEADERS_PER_BATCH, MAX_HEADERS_PER_REQUEST};

mod fetch;
mod fetched;
mod import;
mod serve;

/// Tunables, with the spec's defaults where it has them.
#[derive(Clone, Debug)]
pub struct Config {
    /// Headers asked for per request.
    pub max_headers: u32,
    /// Payloads asked for per payload request.
    pub payload_chunk: usize,
    /// Payload requests in flight per peer.
    pub payload_requests_per_peer: usize,
    /// Entries per import.
    pub import_chunk: usize,
    /// Imports handed to the database at once, per group: the next one is ready when the
    /// last ends, so the database does not wait for the worker in between.
    pub imports_in_flight: usize,
    /// Headers held while fetching, per group (beyond this, fetching waits for imports).
    pub max_fetched: usize,
    /// Ask for what peers announce oldest first (`forward` header requests, a pg_causal
    /// extension): each answer comes with its payloads and can be imported while the next is
    /// fetched. Otherwise, the spec's backward walk, whose entries can be imported only once
    /// it reaches known history.
    pub forward_fetch: bool,
    /// Entries fetched and not imported yet beyond which no further forward request goes out
    /// (imports drain them).
    pub forward_window: usize,
    /// A request with no message for this long fails (spec: 30 s).
    pub request_timeout_ms: u64,
    /// Least time between two push-backs of an unchanged frontier to one peer (spec: 15 s).
    pub pushback_interval_ms: u64,
    /// How long a ban lasts.
    pub ban_ms: u64,
    /// Requests a peer may have us serving at once.
    pub max_serving_per_peer: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_headers: 4096,
            payload_chunk: 1024,
            payload_requests_per_peer: 4,
            import_chunk: 5000,
            imports_in_flight: 2,
            max_fetched: 1_000_000,
            forward_fetch: true,
            forward_window: 16_384,
            request_timeout_ms: 30_000,
            pushback_interval_ms: 15_000,
            ban_ms: 10 * 60_000,
            max_serving_per_peer: 8,
        }
    }
}

/// A peer's request, to be read from the database.
#[derive(Clone, Debug, PartialEq)]
pub enum Serve<P> {
    /// Walk the group's DAG (`Dag::walk_back`, or `Dag::walk_forward` when `forward`) and
    /// answer with [`Session::headers_read`]; when `with_payloads` and the walk is complete or
    /// `forward`, read the payloads too.
    Headers {
        peer: P,
        group: String,
        request_id: String,
        start: Vec<String>,
        limits: Vec<String>,
        max: u32,
        with_payloads: bool,
        forward: bool,
    },
    /// Read the payloads and answer with [`Session::payloads_read`].
    Payloads { peer: P, group: String, request_id: String, hashes: Vec<String> },
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action<P> {
    /// Send a message to a peer.
    Send { peer: P, envelope: Envelope },
    /// Serve a peer's request from the database, then answer with [`Session::headers_read`] or
    /// [`Session::payloads_read`].
    Serve(Serve<P>),
    /// Import a bundle (`causal.export`'s format: the entries `hashes`, in wire form,
    /// predecessors first) through the extension, then report with [`Session::imported`] or
    /// [`Session::import_failed`], giving back `epoch`. Imports of a group run in the order
    /// given, and an import may build on the one before it: once one fails, the others of
    /// its group and epoch must not run (report them failed).
    Import { group: String, hash_algorithm: String, hashes: Vec<String>, bundle: Vec<u8>, epoch: u64 },
    /// Close every connection to the peer (it was banned until the given time).
    Disconnect { peer: P, reason: String, banned_until_ms: u64 },
    /// Find which of `hashes` (from peers' frontiers) the database holds, then report with
    /// [`Session::stored_checked`]. Until then no header walk starts from them: a peer behind
    /// us announces entries we have (we saw our frontier pass them) and walking back from
    /// them would fetch history we hold.
    CheckStored { group: String, hashes: Vec<String> },
}

/// A bundle for `causal.import`, serialized from borrowed entries.
#[derive(serde::Serialize)]
struct BundleRef<'a> {
    format: &'a str,
    group: &'a str,
    #[serde(rename = "hashAlgorithm")]
    hash_algorithm: &'a str,
    entries: Vec<WireEntryRef<'a>>,
}

/// An entry in wire form (`{"hash", "header", "payload"}`), borrowed.
#[derive(serde::Serialize)]
struct WireEntryRef<'a> {
    hash: &'a str,
    header: &'a Value,
    payload: &'a Value,
}

/// How an import went, per entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImportOutcome {
    /// Entries stored (new or already present).
    pub stored: Vec<String>,
    /// Entries refused, with the reason.
    pub rejected: Vec<(String, String)>,
    /// The group's frontier after the import.
    pub frontier: Vec<String>,
}

struct Fetched<P> {
    header: Header,
    raw: Value,
    source: P,
    payload: Option<Value>,
    payload_requested: bool,
    verified: bool,
}

enum Expect {
    Headers,
    Payloads,
}

struct Request<P> {
    peer: P,
    group: String,
    /// Header requests: the hashes asked for; payload requests: the hashes expected.
    asked: HashSet<String>,
    expect: Expect,
    announced: Option<u32>,
    received: u32,
    next_sequence: u32,
    complete: bool,
    /// Payloads announced after the headers (auto payload).
    auto_payloads: Option<u32>,
    payloads_received: u32,
    payload_sequence: u32,
    max: u32,
    deadline_ms: u64,
}

impl<P> Request<P> {
    /// A request just sent: a header walk (`max` > 0) or a payload request (`max` = 0).
    fn new(peer: P, group: &str, asked: HashSet<String>, expect: Expect, max: u32, deadline_ms: u64) -> Request<P> {
        Request {
            peer,
            group: group.to_string(),
            asked,
            expect,
            announced: None,
            received: 0,
            next_sequence: 0,
            complete: false,
            auto_payloads: None,
            payloads_received: 0,
            payload_sequence: 0,
            max,
            deadline_ms,
        }
    }
}

struct GroupSync<P> {
    /// Whether the database holds the group (false while joining).
    present: bool,
    alg: Option<HashAlgorithm>,
    frontier: BTreeSet<String>,
    peer_frontiers: HashMap<P, BTreeSet<String>>,
    last_sent: HashMap<P, (BTreeSet<String>, u64)>,
    fetched: HashMap<String, Fetched<P>>,
    /// Predecessors known to be stored here (learnt from complete walks and imports).
    stored: HashSet<String>,
    /// Frontier hashes of peers that the database was asked about ([`Action::CheckStored`])
    /// and does not hold, and those it is being asked about.
    checked_absent: HashSet<String>,
    checking: HashSet<String>,
    /// Batches handed to the database, oldest first, and their entries.
    importing: VecDeque<Vec<String>>,
    in_flight: HashSet<String>,
    /// Raised when an import fails: what was handed out before is void.
    import_epoch: u64,
    /// After a failed import, when to try again (a tick does).
    retry_import_at: Option<u64>,
    /// Fetched entries the last import left out to wait for the signature that covers them.
    held_for_signature: usize,
    last_progress_ms: u64,
    imported_total: u64,
    /// The fetched entries in topological order, computed once after headers arrive (entries
    /// leave `fetched` as they are imported; the order stays valid for the rest).
    order: Option<Vec<String>>,
    /// Where in `order` the scans for payloads to request and entries to import start: every
    /// entry before `request_from` has its payload or has it requested, and every entry before
    /// `import_from` has left `fetched`. Each work step then costs in proportion to what it
    /// hands out, not to the whole catch-up (both go back to 0 when the order changes or a
    /// payload request is released).
    request_from: usize,
    import_from: usize,
    /// Whether the fetched headers were known to have no unresolved predecessor when no
    /// header has arrived since (imports only resolve more).
    resolved: bool,
    /// Predecessors of fetched headers that are neither fetched nor stored, each with the
    /// peer that sent a header naming it. Computed from every fetched header only after
    /// headers leave unimported (None), kept up as headers arrive, and filtered when read, so
    /// a walk step costs in proportion to the step rather than to everything fetched so far.
    missing: Option<BTreeMap<String, P>>,
}

impl<P> Default for GroupSync<P> {
    fn default() -> Self {
        GroupSync {
            present: false,
            alg: None,
            frontier: BTreeSet::new(),
            peer_frontiers: HashMap::new(),
            last_sent: HashMap::new(),
            fetched: HashMap::new(),
            stored: HashSet::new(),
            checked_absent: HashSet::new(),
            checking: HashSet::new(),
            importing: VecDeque::new(),
            in_flight: HashSet::new(),
            import_epoch: 0,
            retry_import_at: None,
            held_for_signature: 0,
            last_progress_ms: 0,
            imported_total: 0,
            order: None,
            request_from: 0,
            import_from: 0,
            resolved: false,
            missing: None,
        }
    }
}

/// Per-peer counters for the status views.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub connected: bool,
    pub last_seen_ms: u64,
    pub entries_received: u64,
    pub entries_rejected: u64,
    /// Entries whose payloads were sent to the peer.
    pub entries_sent: u64,
    pub banned_until_ms: Option<u64>,
    pub score: u32,
    /// Frame bytes received from the peer, and sent to it ([`Session::sent`]).
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The peer's last offence, and when.
    pub last_offence: Option<(&'static str, u64)>,
    /// The last thing that kept this node from syncing with the peer which is not the
    /// peer's offence (it runs another sync protocol, say), and when.
    pub last_error: Option<(String, u64)>,
}

/// Per-group progress for the status views.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: String,
    pub present: bool,
    pub frontier: Vec<String>,
    /// Headers fetched whose entries are not stored yet.
    pub to_fetch: usize,
    pub imported: u64,
    pub last_progress_ms: u64,
    pub peers_with_group: usize,
}

/// The sync protocol for every group of one node.
pub struct Session<P> {
    config: Config,
    groups: BTreeMap<String, GroupSync<P>>,
    peers: HashMap<P, PeerStats>,
    requests: HashMap<String, Request<P>>,
    serving: HashMap<P, HashSet<String>>,
    scores: Scores<P>,
    actions: VecDeque<Action<P>>,
    next_request: u64,
    node_tag: String,
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

impl<P: Clone + Eq + StdHash + Ord + Debug> Session<P> {
    /// `node_tag` makes request ids unique to this node (any short text).
    pub fn new(config: Config, node_tag: &str) -> Session<P> {
        let ban_ms = config.ban_ms;
        Session {
            config,
            groups: BTreeMap::new(),
            peers: HashMap::new(),
            requests: HashMap::new(),
            serving: HashMap::new(),
            scores: Scores::new(ban_ms),
            actions: VecDeque::new(),
            next_request: 0,
            node_tag: node_tag.chars().filter(char::is_ascii_alphanumeric).take(16).collect(),
        }
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// Actions queued (a bounded queue's length, for the status view).
    pub fn queued_actions(&self) -> usize {
        self.actions.len()
    }

    /// The caller sent `bytes` of frames to `peer` (for the status views).
    pub fn sent(&mut self, peer: &P, bytes: usize) {
        if let Some(s) = self.peers.get_mut(peer) {
            s.bytes_out += bytes as u64;
        }
    }

    /// Records what keeps this node from syncing with `peer`, a peer it has been connected to
    /// (others are not remembered, so the table stays as small as the set of peers).
    pub fn peer_error(&mut self, peer: &P, error: String, now_ms: u64) {
        if let Some(s) = self.peers.get_mut(peer) {
            s.last_error = Some((error, now_ms));
        }
    }

    pub fn is_banned(&self, peer: &P, now_ms: u64) -> bool {
        self.scores.banned_until(peer, now_ms).is_some()
    }

    pub fn peer_stats(&self) -> Vec<(P, PeerStats)> {
        let mut out: Vec<(P, PeerStats)> = self
            .peers
            .iter()
            .map(|(p, s)| {
                let mut s = s.clone();
                s.score = self.scores.score(p);
                (p.clone(), s)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn group_status(&self) -> Vec<GroupStatus> {
        self.groups
            .iter()
            .map(|(id, g)| GroupStatus {
                group: id.clone(),
                present: g.present,
                frontier: g.frontier.iter().cloned().collect(),
                to_fetch: g.fetched.len(),
                imported: g.imported_total,
                last_progress_ms: g.last_progress_ms,
                peers_with_group: g.peer_frontiers.len(),
            })
            .collect()
    }

    fn send(&mut self, peer: &P, group: &str, msg: SyncMsg) {
        self.actions
            .push_back(Action::Send { peer: peer.clone(), envelope: Envelope { topic: group.to_string(), msg } });
    }

    fn connected_peers(&self) -> Vec<P> {
        let mut v: Vec<P> = self.peers.iter().filter(|(_, s)| s.connected).map(|(p, _)| p.clone()).collect();
        v.sort();
        v
    }

    fn new_request_id(&mut self) -> String {
        self.next_request += 1;
        format!("{}-{}", self.node_tag, self.next_request)
    }

    fn penalize(&mut self, peer: &P, offence: Offence, now_ms: u64) {
        self.peers.entry(peer.clone()).or_default().last_offence = Some((offence.as_str(), now_ms));
        if self.scores.penalize(peer, offence, now_ms) {
            let until = self.scores.banned_until(peer, now_ms).unwrap_or(now_ms);
            if let Some(s) = self.peers.get_mut(peer) {
                s.banned_until_ms = Some(until);
            }
            self.actions.push_back(Action::Disconnect {
                peer: peer.clone(),
                reason: offence.as_str().to_string(),
                banned_until_ms: until,
            });
            self.peer_disconnected(peer, now_ms);
        }
    }

    // --- groups and the local frontier ---

    /// The database holds `group` and its frontier is now `frontier` (after a local commit,
    /// an import, or at start). Peers hear of it when it changed.
    pub fn local_frontier(&mut self, group: &str, hash_algorithm: &str, frontier: &[String], now_ms: u64) {
        let alg = HashAlgorithm::parse(hash_algorithm).ok();
        let g = self.groups.entry(group.to_string()).or_default();
        let new = set(frontier);
        let changed = !g.present || g.frontier != new;
        g.present = true;
        // Headers fetched before the algorithm was known are checked once it is.
        let learnt = g.alg.is_none() && alg.is_some();
        if g.alg.is_none() {
            g.alg = alg;
        }
        g.stored.extend(new.iter().cloned());
        g.frontier = new;
        if learnt {
            self.verify_pending(group, now_ms);
        }
        if changed {
            self.broadcast_frontier(group, now_ms);
        }
        self.work(group, now_ms);
    }

    /// The answer to [`Action::CheckStored`]: of `asked`, the database holds `stored` (a failed
    /// check reports none, and walks go ahead as if nothing were held).
    pub fn stored_checked(&mut self, group: &str, asked: Vec<String>, stored: Vec<String>, now_ms: u64) {
        let Some(g) = self.groups.get_mut(group) else { return };
        let stored: HashSet<String> = stored.into_iter().collect();
        // Only peers' current frontiers matter; older answers are dropped, so this stays small.
        let announced: HashSet<&String> = g.peer_frontiers.values().flatten().collect();
        g.checked_absent.retain(|h| announced.contains(h));
        for h in asked {
            g.checking.remove(&h);
            if stored.contains(&h) {
                g.stored.insert(h);
            } else if announced.contains(&h) {
                g.checked_absent.insert(h);
            }
        }
        self.work(group, now_ms);
    }

    /// Asks peers for a group this database does not hold yet (`causal.join_group`).
    pub fn want_group(&mut self, group: &str, now_ms: u64) {
        if self.groups.contains_key(group) {
            return;
        }
        self.groups.insert(group.to_string(), GroupSync::default());
        self.broadcast_frontier(group, now_ms);
    }

    /// The database left `group` (`causal.leave_group`): it is neither synced nor served any
    /// more, and what was asked of peers for it is dropped.
    pub fn forget_group(&mut self, group: &str) {
        self.groups.remove(group);
        self.requests.retain(|_, r| r.group != group);
    }

    fn broadcast_frontier(&mut self, group: &str, now_ms: u64) {
        for peer in self.connected_peers() {
            self.send_frontier(&peer, group, now_ms);
        }
    }

    fn send_frontier(&mut self, peer: &P, group: &str, now_ms: u64) {
        let Some(g) = self.groups.get_mut(group) else { return };
        let frontier: Vec<String> = g.frontier.iter().cloned().collect();
        g.last_sent.insert(peer.clone(), (g.frontier.clone(), now_ms));
        self.send(peer, group, SyncMsg::NewFrontier { dag_id: group.to_string(), frontier });
    }

    // --- peers ---

    /// A connection to `peer` is up: it hears our frontier of every group.
    pub fn peer_connected(&mut self, peer: &P, now_ms: u64) {
        let s = self.peers.entry(peer.clone()).or_default();
        s.connected = true;
        s.last_seen_ms = now_ms;
        let groups: Vec<String> = self.groups.keys().cloned().collect();
        for g in groups {
            self.send_frontier(peer, &g, now_ms);
        }
    }

    /// Every connection to `peer` is gone: its requests fail and its frontiers are forgotten.
    pub fn peer_disconnected(&mut self, peer: &P, now_ms: u64) {
        if let Some(s) = self.peers.get_mut(peer) {
            s.connected = false;
        }
        self.serving.remove(peer);
        let dropped: Vec<String> =
            self.requests.iter().filter(|(_, r)| &r.peer == peer).map(|(id, _)| id.clone()).collect();
        let mut groups = BTreeSet::new();
        for id in dropped {
            if let Some(r) = self.requests.remove(&id) {
                groups.insert(r.group);
            }
        }
        for g in self.groups.values_mut() {
            g.peer_frontiers.remove(peer);
            g.last_sent.remove(peer);
            // Headers only this peer could complete are dropped; payloads it owed are asked
            // of whoever announces them next.
            g.fetched.retain(|_, f| &f.source != peer || f.payload.is_some());
            g.missing = None;
        }
        for g in groups {
            self.work(&g, now_ms);
        }
    }

    // --- incoming frames ---

    /// A frame body arrived from `peer`.
    pub fn frame(&mut self, peer: &P, body: &[u8], now_ms: u64) {
        if self.is_banned(peer, now_ms) {
            return;
        }
        if let Some(s) = self.peers.get_mut(peer) {
            s.last_seen_ms = now_ms;
            s.bytes_in += body.len() as u64;
        }
        let env = match Envelope::decode(body) {
            Ok(e) => e,
            Err(_) => return self.penalize(peer, Offence::Malformed, now_ms),
        };
        // Answers to our own requests are bounded by what we asked for; everything else a peer
        // sends on its own initiative spends its frame budget.
        let answers_us =
            matches!(
                env.msg,
                SyncMsg::HeaderResponseMeta { .. }
                    | SyncMsg::HeaderBatch { .. }
                    | SyncMsg::PayloadResponseMeta { .. }
                    | SyncMsg::PayloadMsg { .. }
            ) && env.msg.request_id().and_then(|id| self.requests.get(id)).is_some_and(|r| &r.peer == peer);
        if !answers_us && !self.scores.take_frame(peer, now_ms) {
            self.penalize(peer, Offence::Flood, now_ms);
            return;
        }
        self.message(peer, env, now_ms);
    }

    fn message(&mut self, peer: &P, env: Envelope, now_ms: u64) {
        let Envelope { topic, msg } = env;
        match msg {
            SyncMsg::NewFrontier { dag_id, frontier } => {
                if dag_id != topic {
                    return self.penalize(peer, Offence::Malformed, now_ms);
                }
                self.new_frontier(peer, &topic, frontier, now_ms)
            }
            SyncMsg::HeaderRequest { request_id, dag_id, start, limits, max_headers, auto_payload, forward } => {
                if dag_id != topic {
                    return self.penalize(peer, Offence::Malformed, now_ms);
                }
                if !self.start_serving(peer, &request_id, now_ms) {
                    return;
                }
                let present = self.groups.get(&topic).is_some_and(|g| g.present);
                if !present {
                    // We hold nothing of this group: say so at once.
                    self.serving_done(peer, &request_id);
                    let meta =
                        SyncMsg::HeaderResponseMeta { request_id, header_count: 0, complete: true, payload_count: 0 };
                    return self.send(peer, &topic, meta);
                }
                self.actions.push_back(Action::Serve(Serve::Headers {
                    peer: peer.clone(),
                    group: topic,
                    request_id,
                    start,
                    limits,
                    max: max_headers.min(MAX_HEADERS_PER_REQUEST),
                    with_payloads: auto_payload,
                    forward,
                }));
            }
            SyncMsg::PayloadRequest { request_id, dag_id, hashes } => {
                if dag_id != topic {
                    return self.penalize(peer, Offence::Malformed, now_ms);
                }
                if !self.start_serving(peer, &request_id, now_ms) {
                    return;
                }
                self.actions.push_back(Action::Serve(Serve::Payloads {
                    peer: peer.clone(),
                    group: topic,
                    request_id,
                    hashes,
                }));
            }
            SyncMsg::CancelRequest { request_id } => {
                self.serving_done(peer, &request_id);
            }
            SyncMsg::HeaderResponseMeta { request_id, header_count, complete, payload_count } => {
                self.header_meta(peer, &request_id, header_count, complete, payload_count, now_ms)
            }
            SyncMsg::HeaderBatch { request_id, sequence, headers } => {
                self.header_batch(peer, &request_id, sequence, headers, now_ms)
            }
            SyncMsg::PayloadResponseMeta { request_id, payload_count } => {
                self.payload_meta(peer, &request_id, payload_count, now_ms)
            }
            SyncMsg::PayloadMsg { request_id, sequence, hash, payload } => {
                self.payload_msg(peer, &request_id, sequence, hash, payload, now_ms)
            }
        }
    }

    fn new_frontier(&mut self, peer: &P, group: &str, frontier: Vec<String>, now_ms: u64) {
        let pushback = self.config.pushback_interval_ms;
        let Some(g) = self.groups.get_mut(group) else {
            return; // a group we neither hold nor want
        };
        let theirs = set(&frontier);
        let differs = g.frontier != theirs;
        let recently =
            g.last_sent.get(peer).is_some_and(|(f, t)| *f == g.frontier && now_ms.saturating_sub(*t) < pushback);
        // The first announcement a peer makes of a group is always answered: ours may have
        // reached it before it held or wanted the group, and been dropped.
        let first = !g.peer_frontiers.contains_key(peer);
        g.peer_frontiers.insert(peer.clone(), theirs);
        if differs && (first || !recently) {
            self.send_frontier(peer, group, now_ms);
        }
        self.work(group, now_ms);
    }

    /// Time passed: requests past their deadline fail, and imports that failed are tried again.
    pub fn tick(&mut self, now_ms: u64) {
        let retry: Vec<String> = self
            .groups
            .iter_mut()
            .filter(|(_, g)| g.retry_import_at.is_some_and(|t| t <= now_ms))
            .map(|(id, g)| {
                g.retry_import_at = None;
                id.clone()
            })
            .collect();
        for group in retry {
            self.work(&group, now_ms);
        }
        let expired: Vec<(String, P)> = self
            .requests
            .iter()
            .filter(|(_, r)| r.deadline_ms <= now_ms)
            .map(|(id, r)| (id.clone(), r.peer.clone()))
            .collect();
        for (id, peer) in expired {
            self.fail_request(&peer, &id, Offence::Stalled, now_ms);
        }
    }
}
