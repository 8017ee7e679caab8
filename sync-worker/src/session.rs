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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash as StdHash;

use serde_json::Value;

use causal_core::entry::Header;
use causal_core::HashAlgorithm;

use crate::score::{Offence, Scores};
use crate::wire::{Envelope, SyncMsg, WireHeader, MAX_HASH_LIST, MAX_HEADERS_PER_BATCH, MAX_HEADERS_PER_REQUEST};

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

    fn start_serving(&mut self, peer: &P, request_id: &str, now_ms: u64) -> bool {
        let limit = self.config.max_serving_per_peer;
        let s = self.serving.entry(peer.clone()).or_default();
        if s.len() >= limit || !s.insert(request_id.to_string()) {
            self.penalize(peer, Offence::Flood, now_ms);
            return false;
        }
        true
    }

    fn serving_done(&mut self, peer: &P, request_id: &str) -> bool {
        self.serving.get_mut(peer).is_some_and(|s| s.remove(request_id))
    }

    // --- serving ---

    /// Answers a [`Serve::Headers`]: the headers in walk order, whether the walk was
    /// complete, and (when asked, and the walk was complete or forward) the payloads of those
    /// entries, predecessors first.
    pub fn headers_read(
        &mut self,
        peer: &P,
        group: &str,
        request_id: &str,
        headers: Vec<WireHeader>,
        complete: bool,
        payloads: Option<Vec<(String, Value)>>,
    ) {
        if !self.serving_done(peer, request_id) {
            return; // cancelled, or the peer is gone
        }
        let payloads = payloads.unwrap_or_default();
        let meta = SyncMsg::HeaderResponseMeta {
            request_id: request_id.to_string(),
            header_count: headers.len() as u32,
            complete,
            payload_count: payloads.len() as u32,
        };
        self.send(peer, group, meta);
        for (sequence, chunk) in headers.chunks(MAX_HEADERS_PER_BATCH).enumerate() {
            let msg = SyncMsg::HeaderBatch {
                request_id: request_id.to_string(),
                sequence: sequence as u32,
                headers: chunk.to_vec(),
            };
            self.send(peer, group, msg);
        }
        if !payloads.is_empty() {
            self.send_payloads(peer, group, request_id, payloads);
        }
    }

    /// Answers a [`Serve::Payloads`] with the payloads found.
    pub fn payloads_read(&mut self, peer: &P, group: &str, request_id: &str, payloads: Vec<(String, Value)>) {
        if self.serving_done(peer, request_id) {
            self.send_payloads(peer, group, request_id, payloads);
        }
    }

    fn send_payloads(&mut self, peer: &P, group: &str, request_id: &str, payloads: Vec<(String, Value)>) {
        let meta =
            SyncMsg::PayloadResponseMeta { request_id: request_id.to_string(), payload_count: payloads.len() as u32 };
        self.send(peer, group, meta);
        if let Some(s) = self.peers.get_mut(peer) {
            s.entries_sent += payloads.len() as u64;
        }
        for (sequence, (hash, payload)) in payloads.into_iter().enumerate() {
            let msg =
                SyncMsg::PayloadMsg { request_id: request_id.to_string(), sequence: sequence as u32, hash, payload };
            self.send(peer, group, msg);
        }
    }

    // --- responses to our requests ---

    fn own_request(&mut self, peer: &P, request_id: &str, now_ms: u64) -> bool {
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

    fn fail_request(&mut self, peer: &P, request_id: &str, offence: Offence, now_ms: u64) {
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

    fn send_cancel(&mut self, peer: &P, request_id: &str, group: Option<&str>) {
        if let Some(g) = group {
            self.send(peer, g, SyncMsg::CancelRequest { request_id: request_id.to_string() });
        }
    }

    fn header_meta(&mut self, peer: &P, id: &str, count: u32, complete: bool, payloads: u32, now_ms: u64) {
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

    fn header_batch(&mut self, peer: &P, id: &str, sequence: u32, headers: Vec<WireHeader>, now_ms: u64) {
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

    fn payload_meta(&mut self, peer: &P, id: &str, count: u32, now_ms: u64) {
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

    fn payload_msg(&mut self, peer: &P, id: &str, sequence: u32, hash: String, payload: Value, now_ms: u64) {
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
    fn maybe_finish(&mut self, id: &str, now_ms: u64) {
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
    fn release_payload_requests(&mut self, group: &str, asked: &HashSet<String>) {
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
    fn learn_alg(&mut self, group: &str, now_ms: u64) {
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

    fn verify_pending(&mut self, group: &str, now_ms: u64) {
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

    fn drop_dependents(&mut self, group: &str, mut gone: Vec<String>) {
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

    fn work(&mut self, group: &str, now_ms: u64) {
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

    fn header_request_in_flight(&self, group: &str) -> bool {
        self.requests.values().any(|r| r.group == group && r.max > 0)
    }

    fn request_headers(&mut self, group: &str, now_ms: u64) {
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

    fn request_payloads(&mut self, group: &str, now_ms: u64) {
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

    fn import_ready(&mut self, group: &str) {
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

/// Entries an import waits for while more payloads are in flight (an import costs a
/// transaction, so a trickle of tiny ones is slow).
const MIN_IMPORT_BATCH: usize = 500;

/// Follows one entry ready for import through `covers`: an unsigned one (no `signature` in
/// its payload) is held, a signed one releases the unsigned entries of its author it covers.
/// Whether the signature verifies is for the database to say; an entry whose author or hash
/// does not parse is left for it to refuse.
fn follow_signatures<P>(covers: &mut causal_core::signature_cover::CoverTracker, hash: &str, f: &Fetched<P>) {
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
const IMPORT_RETRY_MS: u64 = 1_000;

/// Hashes remembered as stored per group before the memory is reset.
const STORED_MEMORY: usize = 1_000_000;

fn group_without_alg<P>(groups: &BTreeMap<String, GroupSync<P>>, group: &str) -> bool {
    groups.get(group).is_some_and(|g| g.alg.is_none() && g.fetched.contains_key(group))
}

/// The fetched entries no other fetched entry names as a predecessor.
fn fetched_heads<P>(g: &GroupSync<P>) -> Vec<String> {
    let named: HashSet<String> = g.fetched.values().flat_map(|f| f.header.prev.iter().map(|p| p.to_b64())).collect();
    let mut heads: Vec<String> = g.fetched.keys().filter(|h| !named.contains(*h)).cloned().collect();
    heads.sort();
    heads
}

/// Whether every fetched header's predecessors are fetched or stored (cached until a header
/// arrives: imports and the frontier only resolve more).
fn all_resolved<P: Clone>(g: &mut GroupSync<P>) -> bool {
    if !g.resolved {
        g.resolved = missing(g).is_empty();
    }
    g.resolved
}

/// The cached topological order of the fetched entries (those imported since are skipped by
/// the callers, which look each one up).
fn cached_order<P>(g: &mut GroupSync<P>) -> &[String] {
    if g.order.is_none() {
        g.order = Some(topological(g));
        g.request_from = 0;
        g.import_from = 0;
    }
    g.order.as_deref().unwrap_or(&[])
}

/// Predecessors of fetched headers that are neither fetched nor known to be stored, with a
/// peer that named each (see [`GroupSync::missing`]).
fn missing<P: Clone>(g: &mut GroupSync<P>) -> &BTreeMap<String, P> {
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
fn topological<P>(g: &GroupSync<P>) -> Vec<String> {
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
