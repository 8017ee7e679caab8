//! Deterministic simulations of the sync protocol: several nodes, each a [`Session`] over an
//! in-memory DAG standing in for the database, exchanging frames through a simulated network
//! whose delivery order is chosen by a seeded random generator. No sockets, no clocks.

use std::collections::{BTreeMap, VecDeque};

use causal_core::entry::{Entry, Meta, Position};
use causal_core::signature_cover::CoverTracker;
use causal_core::{Dag, EntryHash, HashAlgorithm, MemStore};
use causal_sync::session::{Action, Config, ImportOutcome, Serve, Session};
use causal_sync::wire::{Envelope, SyncMsg, WireHeader};
use serde_json::{json, Value};

type Id = u32;

/// Rewrites what a hostile node sends: the frames to send instead of an honest message.
type Tamper = dyn FnMut(&Envelope) -> Vec<Vec<u8>>;

struct Node {
    session: Session<Id>,
    dag: Option<Dag<MemStore>>,
    /// Frames this node sends instead of the honest ones (None: honest).
    hostile: Option<Box<Tamper>>,
    /// Serves `forward` header requests with the spec's backward walk, as a peer that does
    /// not know pg_causal's extension would.
    spec_server: bool,
}

struct Net {
    nodes: BTreeMap<Id, Node>,
    group: String,
    alg: HashAlgorithm,
    /// Frames in flight: (from, to, body).
    wire: VecDeque<(Id, Id, Vec<u8>)>,
    links: Vec<(Id, Id)>,
    now: u64,
    rng: u64,
    disconnects: Vec<(Id, Id)>,
    /// Header walks each node served.
    walks_served: BTreeMap<Id, usize>,
    /// Milliseconds that pass per frame delivered.
    step_ms: u64,
    /// The session configuration of nodes added from now on.
    config: Config,
    /// What happened, in order: (node, "walk" served / "import" started).
    events: Vec<(Id, &'static str)>,
    /// The most entries each node held fetched and not yet imported.
    most_fetched: BTreeMap<Id, usize>,
    /// Imports handed to the nodes' databases, not run yet.
    imports: VecDeque<Import>,
    /// Until when each node's database refuses imports, and the epoch of each node's last
    /// failure (the imports queued behind it fail too).
    db_down_until: BTreeMap<Id, u64>,
    failed_epoch: BTreeMap<Id, u64>,
    /// The most imports each node had handed to its database at once.
    most_imports_queued: BTreeMap<Id, usize>,
    /// Forward requests a spec server answered with backward walks.
    forward_served_as_spec: usize,
}

struct Import {
    node: Id,
    group: String,
    hash_algorithm: String,
    bundle: Vec<u8>,
    epoch: u64,
}

/// Appends `n` entries, each after the last.
fn extend_chain(dag: &mut Dag<MemStore>, n: usize) {
    for i in 0..n {
        let prev = dag.frontier().unwrap();
        dag.append(json!({"i": i}), Meta::new(), prev).unwrap();
    }
}

/// A DAG holding only the genesis of `dag`'s group.
fn genesis_only(dag: &Dag<MemStore>, group: &str) -> Dag<MemStore> {
    let mut c = Dag::new(MemStore::new(), HashAlgorithm::Blake3);
    c.insert(dag.entry(&group.parse().unwrap()).unwrap().unwrap()).unwrap();
    c
}

fn frontier_of(dag: &Dag<MemStore>) -> Vec<String> {
    dag.frontier().unwrap().iter().map(EntryHash::to_b64).collect()
}

impl Net {
    fn new(seed: u64) -> (Net, Dag<MemStore>) {
        let alg = HashAlgorithm::Blake3;
        let mut dag = Dag::new(MemStore::new(), alg);
        let g = dag.append(json!({"genesis": seed}), Meta::new(), Position::new()).unwrap().hash;
        let net = Net {
            nodes: BTreeMap::new(),
            group: g.to_b64(),
            alg,
            wire: VecDeque::new(),
            links: Vec::new(),
            now: 1,
            rng: seed | 1,
            disconnects: Vec::new(),
            walks_served: BTreeMap::new(),
            step_ms: 1,
            config: Config { max_headers: 64, payload_chunk: 16, import_chunk: 50, ..Config::default() },
            events: Vec::new(),
            most_fetched: BTreeMap::new(),
            imports: VecDeque::new(),
            db_down_until: BTreeMap::new(),
            failed_epoch: BTreeMap::new(),
            most_imports_queued: BTreeMap::new(),
            forward_served_as_spec: 0,
        };
        (net, dag)
    }

    fn rand(&mut self, n: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % n.max(1) as u64) as usize
    }

    fn add(&mut self, id: Id, dag: Option<Dag<MemStore>>) {
        let mut session = Session::new(self.config.clone(), &format!("n{id}"));
        match &dag {
            Some(d) => session.local_frontier(&self.group, self.alg.name(), &frontier_of(d), self.now),
            None => session.want_group(&self.group, self.now),
        }
        self.nodes.insert(id, Node { session, dag, hostile: None, spec_server: false });
    }

    /// A node that neither holds nor wants the group (yet).
    fn add_idle(&mut self, id: Id) {
        let session = Session::new(self.config.clone(), &format!("n{id}"));
        self.nodes.insert(id, Node { session, dag: None, hostile: None, spec_server: false });
    }

    fn connect(&mut self, a: Id, b: Id) {
        self.links.push((a, b));
        let now = self.now;
        self.nodes.get_mut(&a).unwrap().session.peer_connected(&b, now);
        self.nodes.get_mut(&b).unwrap().session.peer_connected(&a, now);
    }

    fn linked(&self, a: Id, b: Id) -> bool {
        self.links.iter().any(|l| *l == (a, b) || *l == (b, a))
    }

    /// Carries out one node's queued actions.
    fn act(&mut self, id: Id) {
        loop {
            let now = self.now;
            let node = self.nodes.get_mut(&id).unwrap();
            let Some(action) = node.session.poll_action() else { break };
            match action {
                Action::Send { peer, envelope } => {
                    let frames = match node.hostile.as_mut() {
                        Some(f) => f(&envelope),
                        None => vec![envelope.encode()],
                    };
                    for body in frames {
                        node.session.sent(&peer, body.len());
                        self.wire.push_back((id, peer, body));
                    }
                }
                Action::Serve(Serve::Headers {
                    peer,
                    group,
                    request_id,
                    start,
                    limits,
                    max,
                    with_payloads,
                    forward,
                }) => {
                    *self.walks_served.entry(id).or_default() += 1;
                    self.events.push((id, "walk"));
                    if forward && node.spec_server {
                        self.forward_served_as_spec += 1;
                    }
                    let forward = forward && !node.spec_server;
                    let dag = node.dag.as_ref().unwrap();
                    let parse = |v: &[String]| v.iter().map(|h| h.parse::<EntryHash>().unwrap()).collect::<Vec<_>>();
                    let walk = if forward {
                        dag.walk_forward(&parse(&start), &parse(&limits), max as usize).unwrap()
                    } else {
                        dag.walk_back(&parse(&start), &parse(&limits), max as usize).unwrap()
                    };
                    let mut headers = Vec::new();
                    let mut payloads = Vec::new();
                    for h in &walk.hashes {
                        let e = dag.entry(h).unwrap().unwrap();
                        headers.push(WireHeader { hash: h.to_b64(), header: e.header.to_literal() });
                        payloads.push((h.to_b64(), e.payload.clone()));
                    }
                    if !forward {
                        payloads.reverse();
                    }
                    let payloads = (with_payloads && (walk.complete || forward)).then_some(payloads);
                    node.session.headers_read(&peer, &group, &request_id, headers, walk.complete, payloads);
                }
                Action::Serve(Serve::Payloads { peer, group, request_id, hashes }) => {
                    let dag = node.dag.as_ref().unwrap();
                    let mut out = Vec::new();
                    for h in hashes {
                        if let Some(e) = dag.entry(&h.parse().unwrap()).unwrap() {
                            out.push((h, e.payload));
                        }
                    }
                    node.session.payloads_read(&peer, &group, &request_id, out);
                }
                Action::Import { group, hash_algorithm, bundle, epoch, .. } => {
                    self.events.push((id, "import"));
                    // The database gets to it later (see `run`), in the order given.
                    self.imports.push_back(Import { node: id, group, hash_algorithm, bundle, epoch });
                    let queued = self.imports.iter().filter(|i| i.node == id).count();
                    let most = self.most_imports_queued.entry(id).or_default();
                    *most = (*most).max(queued);
                }
                Action::CheckStored { group, hashes } => {
                    let stored = match node.dag.as_ref() {
                        Some(dag) => hashes
                            .iter()
                            .filter(|h| h.parse::<EntryHash>().is_ok_and(|h| dag.contains(&h).unwrap_or(false)))
                            .cloned()
                            .collect(),
                        None => Vec::new(),
                    };
                    node.session.stored_checked(&group, hashes, stored, now);
                }
                Action::Disconnect { peer, .. } => {
                    self.disconnects.push((id, peer));
                    self.links.retain(|l| *l != (id, peer) && *l != (peer, id));
                    let other = self.nodes.get_mut(&peer).unwrap();
                    other.session.peer_disconnected(&id, now);
                }
            }
        }
    }

    /// Runs the oldest import handed to a database, as the worker's import task does.
    fn run_import(&mut self) {
        let Some(Import { node: id, group, hash_algorithm, bundle, epoch }) = self.imports.pop_front() else { return };
        let now = self.now;
        let down = self.db_down_until.get(&id).is_some_and(|t| now < *t);
        let node = self.nodes.get_mut(&id).unwrap();
        if down || self.failed_epoch.get(&id) == Some(&epoch) {
            self.failed_epoch.insert(id, epoch);
            node.session.import_failed(&group, epoch, now);
            return;
        }
        let bundle: Value = serde_json::from_slice(&bundle).unwrap();
        assert_eq!(bundle["format"], causal_core::BUNDLE_FORMAT);
        assert_eq!(bundle["group"], group.as_str());
        let entries = bundle["entries"].as_array().unwrap().clone();
        let alg = HashAlgorithm::parse(&hash_algorithm).unwrap();
        let dag = node.dag.get_or_insert_with(|| Dag::new(MemStore::new(), alg));
        let mut outcome = ImportOutcome::default();
        // No import leaves an unsigned entry without the signature that covers it.
        let mut covers = CoverTracker::new();
        for v in &entries {
            let e = Entry::from_wire(v).unwrap();
            if let Some(author) = e.payload["author"].as_str().and_then(|a| a.parse().ok()) {
                if e.payload.get("signature").is_some() {
                    covers.vouch(&author, &e.header.prev);
                } else {
                    covers.hold(e.hash, author, e.header.prev.clone()).unwrap();
                }
            }
        }
        assert!(covers.is_empty(), "an import split an author's unsigned run from its signature");
        for v in entries {
            let e = Entry::from_wire(&v).unwrap();
            let h = e.hash.to_b64();
            match dag.insert(e) {
                Ok(_) => outcome.stored.push(h),
                Err(err) => outcome.rejected.push((h, err.to_string())),
            }
        }
        outcome.frontier = frontier_of(dag);
        node.session.imported(&group, epoch, outcome, &hash_algorithm, now);
    }

    /// Runs until nothing is in flight; delivery picks frames at random but keeps each link's
    /// order (a stream is ordered), and imports run now and then, in order.
    fn run(&mut self) {
        // Whether the clock was moved on once with nothing in flight (so retries come due).
        let mut waited = false;
        for _ in 0..1_000_000 {
            let ids: Vec<Id> = self.nodes.keys().copied().collect();
            for id in ids {
                self.act(id);
                let fetched = self.nodes[&id].session.group_status().iter().map(|g| g.to_fetch).sum();
                let most = self.most_fetched.entry(id).or_default();
                *most = (*most).max(fetched);
            }
            if self.wire.is_empty() && self.imports.is_empty() {
                let down = self.db_down_until.values().any(|t| self.now < *t);
                if waited && !down {
                    return;
                }
                waited = true;
                self.now += 2_000;
                let now = self.now;
                for node in self.nodes.values_mut() {
                    node.session.tick(now);
                }
                continue;
            }
            waited = false;
            if !self.imports.is_empty() && (self.wire.is_empty() || self.rand(8) == 0) {
                self.run_import();
                continue;
            }
            // Pick a link with frames and deliver its oldest frame.
            let i = self.rand(self.wire.len());
            let (from, to, _) = self.wire[i];
            let first = self.wire.iter().position(|(f, t, _)| *f == from && *t == to).unwrap();
            let (from, to, body) = self.wire.remove(first).unwrap();
            self.now += self.step_ms;
            if self.linked(from, to) {
                let now = self.now;
                self.nodes.get_mut(&to).unwrap().session.frame(&from, &body, now);
            }
        }
        panic!("the simulation did not settle");
    }

    fn dag(&self, id: Id) -> &Dag<MemStore> {
        self.nodes[&id].dag.as_ref().expect("node has the group")
    }

    fn write(&mut self, id: Id, n: usize, tag: &str) {
        let dag = self.nodes.get_mut(&id).unwrap().dag.as_mut().unwrap();
        for i in 0..n {
            let prev = dag.frontier().unwrap();
            dag.append(json!({"w": tag, "i": i}), Meta::new(), prev).unwrap();
        }
        let f = frontier_of(dag);
        let now = self.now;
        let (group, alg) = (self.group.clone(), self.alg);
        self.nodes.get_mut(&id).unwrap().session.local_frontier(&group, alg.name(), &f, now);
    }

    fn assert_converged(&self, ids: &[Id]) {
        let first = self.dag(ids[0]);
        for id in &ids[1..] {
            assert_eq!(self.dag(*id).len().unwrap(), first.len().unwrap(), "node {id} entry count");
            assert_eq!(self.dag(*id).frontier().unwrap(), first.frontier().unwrap(), "node {id} frontier");
        }
    }
}

#[test]
fn three_nodes_converge_after_concurrent_writes_in_any_delivery_order() {
    for seed in 1..40u64 {
        converge_three(seed, |_| true, None);
    }
}

/// The same with the spec's backward walks only, and with a mix: node 1 fetches backward, and
/// node 2, between the others, serves `forward` requests as the spec's walks (a peer without
/// the extension), which node 3 then continues backward.
#[test]
fn three_nodes_converge_with_peers_that_walk_back() {
    for seed in 1..25u64 {
        converge_three(seed, |_| false, None);
        let net = converge_three(seed, |id| id != 1, Some(2));
        assert!(net.forward_served_as_spec > 0, "seed {seed}: no forward request met the spec server");
    }
}

/// Three nodes from the genesis, concurrent writes, convergence. `forward_fetch(id)` says
/// whether node `id` asks forward; `spec_server` serves forward requests as backward walks.
fn converge_three(seed: u64, forward_fetch: impl Fn(Id) -> bool, spec_server: Option<Id>) -> Net {
    let (mut net, genesis_dag) = Net::new(seed);
    // Each node starts from the genesis alone.
    for id in 1..=3 {
        net.config.forward_fetch = forward_fetch(id);
        let dag = genesis_only(&genesis_dag, &net.group);
        net.add(id, Some(dag));
    }
    if let Some(node) = spec_server.and_then(|id| net.nodes.get_mut(&id)) {
        node.spec_server = true;
    }
    net.connect(1, 2);
    net.connect(2, 3);
    net.run();
    // Concurrent writes everywhere, more than one walk's worth on node 1.
    net.write(1, 150 + seed as usize, "a");
    net.write(2, 7, "b");
    net.write(3, 3, "c");
    net.run();
    net.assert_converged(&[1, 2, 3]);
    assert_eq!(net.dag(3).len().unwrap(), 1 + 150 + seed + 7 + 3);
    // Live: one more write travels two hops.
    net.write(3, 1, "d");
    net.run();
    net.assert_converged(&[1, 2, 3]);
    assert!(net.disconnects.is_empty(), "seed {seed}: honest peers were disconnected: {:?}", net.disconnects);
    net
}

#[test]
fn a_late_joiner_fetches_the_whole_group() {
    let (mut net, mut dag) = Net::new(7);
    extend_chain(&mut dag, 500);
    net.add(1, Some(dag));
    net.add(2, None);
    net.connect(1, 2);
    net.run();
    net.assert_converged(&[1, 2]);
    assert_eq!(net.dag(2).len().unwrap(), 501);
    let status = net.nodes[&2].session.group_status();
    assert_eq!(status[0].imported, 501);
    assert_eq!(status[0].to_fetch, 0);
}

/// A node far behind imports while it fetches: forward requests bring the oldest entries
/// first with their payloads, so the first import starts long before the last request is
/// served, and no more than the window (plus one answer) waits fetched at any time.
#[test]
fn a_catch_up_imports_while_it_fetches() {
    let net = catch_up_1500(|c| c.forward_window = 200);
    let first_import = net.events.iter().position(|e| *e == (2, "import")).unwrap();
    let last_walk = net.events.iter().rposition(|e| *e == (1, "walk")).unwrap();
    assert!(first_import < last_walk / 4, "first import at event {first_import}, last walk at {last_walk}");
    // Each request leaves out what was fetched already: about one walk per 64 entries.
    let walks = net.walks_served[&1];
    assert!((1500 / 64..=1500 / 64 + 3).contains(&walks), "{walks} walks served");
    let most = net.most_fetched[&2];
    assert!(most <= 200 + 64, "{most} entries waited fetched");
    // The next import is handed over while one runs, never more than two.
    assert_eq!(net.most_imports_queued[&2], 2);
    // The same catch-up with the spec's walk imports only once the walk is done.
    let net = catch_up_1500(|c| c.forward_fetch = false);
    let first_import = net.events.iter().position(|e| *e == (2, "import")).unwrap();
    let walks_before = net.events[..first_import].iter().filter(|e| **e == (1, "walk")).count();
    assert!(walks_before >= 1500 / 64, "{walks_before} walks before the first import");
}

/// Runs of unsigned entries longer than an import (the sealer signs the last of each run)
/// reach a node behind in imports that each end with the signature covering their runs.
#[test]
fn an_import_never_separates_unsigned_entries_from_their_signature() {
    let (mut net, mut dag) = Net::new(5);
    // Fetching pauses when 60 entries wait for import: a run's signature is often not
    // fetched yet when the entries before it are imported.
    net.config.forward_window = 60;
    let author = causal_core::identity::Keypair::generate().public().key_id().to_b64();
    for i in 0..1500usize {
        let prev = dag.frontier().unwrap();
        // Runs of 1 to 120 entries (imports hold 50), each signed at its end.
        let signed = (i * 7919) % 120 == 0 || i % 97 == 96;
        let payload = if signed {
            json!({"author": author, "ops": [i], "signature": "s"})
        } else {
            json!({"author": author, "ops": [i]})
        };
        dag.append(payload, Meta::new(), prev).unwrap();
    }
    let prev = dag.frontier().unwrap();
    dag.append(json!({"author": author, "ops": [], "signature": "s"}), Meta::new(), prev).unwrap();
    let behind = genesis_only(&dag, &net.group);
    net.add(1, Some(dag));
    net.add(2, Some(behind));
    net.connect(1, 2);
    net.run();
    net.assert_converged(&[1, 2]);
}

/// Node 2, holding the genesis only, catches up 1500 entries from node 1 (configured by
/// `configure`); the two have converged.
fn catch_up_1500(configure: impl Fn(&mut Config)) -> Net {
    let (mut net, mut dag) = Net::new(11);
    configure(&mut net.config);
    extend_chain(&mut dag, 1500);
    let behind = genesis_only(&dag, &net.group);
    net.add(1, Some(dag));
    net.add(2, Some(behind));
    net.connect(1, 2);
    net.run();
    net.assert_converged(&[1, 2]);
    net
}

/// Imports the database refuses (it was unavailable) fail with those queued behind them, and
/// the entries are imported later, once, in order.
#[test]
fn failed_imports_are_tried_again() {
    for seed in 1..10u64 {
        let (mut net, mut dag) = Net::new(seed);
        extend_chain(&mut dag, 700);
        let behind = genesis_only(&dag, &net.group);
        net.add(1, Some(dag));
        net.add(2, Some(behind));
        // Down for the first imports, or until the fetching is long over (then only the
        // retry brings the entries in).
        let until = if seed % 2 == 0 { 150 } else { 20_000 };
        net.db_down_until.insert(2, net.now + until);
        net.connect(1, 2);
        net.run();
        net.assert_converged(&[1, 2]);
        assert_eq!(net.nodes[&2].session.group_status()[0].imported, 700);
        assert!(net.disconnects.is_empty(), "{:?}", net.disconnects);
    }
}

/// A peer behind us announces entries we hold but never saw as our frontier (many local
/// commits passed between two looks at it). We ask our database before walking back from
/// them: the peer serves no header walk, and it still catches up from us. (Found in the 100k
/// catch-up benchmark: the node ahead walked the whole history back from the one behind, three
/// times over, as each import moved that one's frontier.)
#[test]
fn a_peer_behind_us_is_not_walked_for_history_we_hold() {
    let (mut net, mut dag) = Net::new(13);
    extend_chain(&mut dag, 300);
    // Node 2 holds the genesis and the first 100 entries of node 1's chain.
    let all = dag.walk_back(&dag.frontier().unwrap().into_iter().collect::<Vec<_>>(), &[], 1000).unwrap().hashes;
    let mut prefix = Dag::new(MemStore::new(), HashAlgorithm::Blake3);
    for h in all.iter().rev().take(101) {
        prefix.insert(dag.entry(h).unwrap().unwrap()).unwrap();
    }
    net.add(1, Some(dag));
    net.add(2, Some(prefix));
    net.connect(1, 2);
    net.run();
    net.assert_converged(&[1, 2]);
    assert_eq!(net.dag(2).len().unwrap(), 301);
    assert_eq!(net.walks_served.get(&2).copied().unwrap_or(0), 0, "node 2 served header walks");
    assert!(net.walks_served.get(&1).copied().unwrap_or(0) > 0);
    assert!(net.disconnects.is_empty());
}

/// A node hears a peer's frontier of a group before it wants that group (the announcement
/// at connect crossed `causal.join_group`); once it wants the group, the peer answers its
/// first announcement although it sent its own frontier moments ago. (Found by the
/// late-joiner test on real clusters, which stalled with no header request.)
#[test]
fn a_group_wanted_just_after_connecting_is_still_fetched() {
    let (mut net, mut dag) = Net::new(11);
    extend_chain(&mut dag, 20);
    net.add(1, Some(dag));
    net.add_idle(2);
    net.connect(1, 2);
    net.run(); // node 2 drops the frontier of a group it does not want
    assert!(net.nodes[&2].dag.is_none());
    let now = net.now;
    let group = net.group.clone();
    net.nodes.get_mut(&2).unwrap().session.want_group(&group, now);
    net.run();
    net.assert_converged(&[1, 2]);
    assert_eq!(net.dag(2).len().unwrap(), 21);
}

/// A peer that tampers with what it serves: it is banned, and nothing it forged is stored.
fn hostile_run(tamper: fn(&Envelope) -> Vec<Vec<u8>>) {
    let (mut net, mut dag) = Net::new(11);
    extend_chain(&mut dag, 40);
    let base = genesis_only(&dag, &net.group);
    net.add(1, Some(dag));
    net.add(2, Some(base));
    net.nodes.get_mut(&1).unwrap().hostile = Some(Box::new(tamper));
    net.connect(1, 2);
    net.run();
    assert!(net.disconnects.contains(&(2, 1)), "the honest node banned the hostile one: {:?}", net.disconnects);
    assert!(net.nodes[&2].session.is_banned(&1, net.now));
    // The status views name the offence and count the traffic both ways.
    let stats = net.nodes[&2].session.peer_stats();
    let (_, s) = stats.iter().find(|(p, _)| *p == 1).expect("stats of the hostile peer");
    assert!(s.last_offence.is_some(), "{s:?}");
    assert!(s.bytes_in > 0 && s.bytes_out > 0, "{s:?}");
    // Whatever reached the honest DAG is genuine (the hostile node's DAG has it too).
    let honest = net.dag(2);
    for h in honest.walk_back(&honest.frontier().unwrap().into_iter().collect::<Vec<_>>(), &[], 10_000).unwrap().hashes
    {
        assert!(net.dag(1).contains(&h).unwrap());
    }
}

fn rewrite(env: &Envelope, f: impl Fn(&mut Value)) -> Vec<Vec<u8>> {
    let mut v = serde_json::to_value(env).unwrap();
    f(&mut v);
    vec![serde_json::to_vec(&v).unwrap()]
}

#[test]
fn a_peer_serving_tampered_payloads_is_banned() {
    hostile_run(|env| match &env.msg {
        SyncMsg::PayloadMsg { .. } => rewrite(env, |v| v["msg"]["payload"] = json!({"forged": true})),
        _ => vec![env.encode()],
    });
}

#[test]
fn a_peer_serving_headers_with_wrong_hashes_is_banned() {
    hostile_run(|env| match &env.msg {
        SyncMsg::HeaderBatch { .. } => rewrite(env, |v| {
            if let Some(h) = v["msg"]["headers"].as_array_mut().and_then(|a| a.first_mut()) {
                h["hash"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
            }
        }),
        _ => vec![env.encode()],
    });
}

#[test]
fn a_peer_sending_garbage_is_banned() {
    hostile_run(|env| match &env.msg {
        SyncMsg::NewFrontier { .. } => vec![env.encode(), b"{\"topic\": 1}".to_vec()],
        _ => vec![env.encode()],
    });
}

#[test]
fn a_peer_sending_more_than_asked_is_banned() {
    hostile_run(|env| match &env.msg {
        SyncMsg::PayloadMsg { .. } => {
            let mut twice = vec![env.encode()];
            twice.extend(rewrite(env, |v| v["msg"]["sequence"] = json!(v["msg"]["sequence"].as_u64().unwrap() + 1)));
            twice
        }
        _ => vec![env.encode()],
    });
}

#[test]
fn a_stalled_request_fails_and_is_scored() {
    let (mut net, mut dag) = Net::new(3);
    extend_chain(&mut dag, 5);
    let base = genesis_only(&dag, &net.group);
    net.add(1, Some(dag));
    net.add(2, Some(base));
    // Node 1 announces its frontier but never answers a request.
    net.nodes.get_mut(&1).unwrap().hostile =
        Some(Box::new(
            |env: &Envelope| if matches!(env.msg, SyncMsg::NewFrontier { .. }) { vec![env.encode()] } else { vec![] },
        ));
    net.connect(1, 2);
    net.run();
    assert_eq!(net.dag(2).len().unwrap(), 1);
    let before = net.nodes[&2].session.peer_stats()[0].1.score;
    net.now += 31_000;
    let now = net.now;
    net.nodes.get_mut(&2).unwrap().session.tick(now);
    let after = net.nodes[&2].session.peer_stats()[0].1.score;
    assert!(after > before, "timeout scored: {before} -> {after}");
}

#[test]
fn a_long_catch_up_is_not_mistaken_for_a_flood() {
    // More payload frames than the frame budget's burst, all of them asked for.
    let (mut net, mut dag) = Net::new(5);
    let n = causal_sync::score::FRAME_BURST as usize + 2000;
    extend_chain(&mut dag, n);
    let base = genesis_only(&dag, &net.group);
    net.add(1, Some(dag));
    net.add(2, Some(base));
    // All of it arrives within one millisecond.
    net.step_ms = 0;
    net.connect(1, 2);
    net.run();
    assert!(net.disconnects.is_empty(), "an honest peer was banned: {:?}", net.disconnects);
    net.assert_converged(&[1, 2]);
}

/// A node that left the group (`causal.leave_group`) neither fetches it nor serves it, though
/// a peer keeps announcing new entries.
#[test]
fn a_group_left_is_neither_fetched_nor_served() {
    let (mut net, mut dag) = Net::new(11);
    let group = net.group.clone();
    let behind = genesis_only(&dag, &group);
    extend_chain(&mut dag, 100);
    net.add(1, Some(dag));
    net.add(2, Some(behind));
    net.nodes.get_mut(&2).unwrap().session.forget_group(&group);
    net.connect(1, 2);
    net.run();
    assert_eq!(net.dag(2).len().unwrap(), 1, "nothing fetched");
    assert!(net.nodes[&2].session.group_status().is_empty());
    assert_eq!(net.walks_served.get(&2).copied().unwrap_or(0), 0, "nothing served");
}

/// What keeps two nodes from syncing without an offence (a peer on another sync protocol)
/// shows in the peer's status; peers never connected to are not remembered.
#[test]
fn a_peers_last_error_shows_in_its_status() {
    let (mut net, dag) = Net::new(12);
    let base = genesis_only(&dag, &net.group);
    net.add(1, Some(dag));
    net.add(2, Some(base));
    net.connect(1, 2);
    net.run();
    let now = net.now;
    let session = &mut net.nodes.get_mut(&2).unwrap().session;
    session.peer_error(&1, "the peer runs another sync protocol".to_string(), now);
    session.peer_error(&9, "a stranger".to_string(), now);
    let stats = session.peer_stats();
    assert_eq!(stats.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [1]);
    assert_eq!(stats[0].1.last_error, Some(("the peer runs another sync protocol".to_string(), now)));
}
