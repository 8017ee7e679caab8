//! The running worker: one task owns the libp2p Swarm and the protocol [`Session`]; database
//! work runs in four tasks of its own (reads that serve peers, imports, and sealing and
//! placing local commits in the background), and each peer's stream has a reader and a writer
//! task. Every queue between them is bounded and named in
//! [`queues`]; the status report shows their depth.
//!
//! The database tasks are in `db_tasks.rs` (serving and importing) and `local_commits.rs`
//! (sealing and placing local commits).
//!
//! Peers talk over one libp2p stream per direction (protocol [`wire::PROTOCOL`]): each side
//! opens a stream to write on and accepts the other's to read from.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, identity, kad, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::db::{self, Db, DbError};
use crate::session::{Action, Config as SessionConfig, ImportOutcome, Serve, Session};
use crate::wire::{self, WireHeader, MAX_FRAME};

mod db_tasks;
mod local_commits;

use db_tasks::{run_imports, serve_reads, FrontierReads, ImportJob};

/// Capacities of the worker's bounded queues.
pub mod queues {
    /// Frames received from all peers, waiting for the protocol.
    pub const INBOUND_FRAMES: usize = 4096;
    /// Frames waiting to be written to one peer. A peer that falls this far behind is
    /// disconnected.
    pub const OUTBOUND_FRAMES_PER_PEER: usize = 16384;
    /// Reads (serving peers) waiting for the database.
    pub const DATABASE_READS: usize = 256;
    /// Imports waiting for the database.
    pub const DATABASE_IMPORTS: usize = 16;
    /// Results coming back from the database tasks.
    pub const DATABASE_RESULTS: usize = 1024;
    /// Notifications from the database (`LISTEN causal_sync`).
    pub const NOTIFICATIONS: usize = 1024;
    /// Row operations of decoded commits handed from the decoding backend to the sealing one
    /// (one batch in flight; a larger transaction goes whole).
    pub const DECODED_ROWS: i32 = 20_000;
}

/// What the worker needs to run.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// libpq-style connection string of the database holding the groups.
    pub conninfo: String,
    pub listen: Vec<Multiaddr>,
    pub peers: Vec<Multiaddr>,
    /// How often the status views are refreshed.
    pub report_every: Duration,
    /// Where to serve the status as Prometheus text ([`crate::metrics`]), if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// How committing transactions wake the sealer (the background worker passes its latch
    /// on here).
    pub commit_wakeups: Option<CommitWakeups>,
    /// How long the sealer waits for a wakeup before it looks at the WAL anyway
    /// ([`SEAL_POLL`] when nothing wakes it).
    pub seal_poll: Duration,
}

/// How local commits wake the sealer. Before each look at the WAL the sealer calls `arm`;
/// the first commit after that notifies `notified`, and later ones send nothing until it is
/// armed again. A commit that set the latch of an awake worker cost the worker a wakeup of its
/// main thread per commit: 8-13 µs of its CPU per single-row commit under load, against
/// about 1 µs with arming (pgbench single-row inserts from 2 clients, unthrottled).
#[derive(Clone)]
pub struct CommitWakeups {
    pub notified: std::sync::Arc<tokio::sync::Notify>,
    pub arm: std::sync::Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for CommitWakeups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitWakeups").finish_non_exhaustive()
    }
}

impl Default for CommitWakeups {
    /// Nothing wakes the sealer: it polls.
    fn default() -> Self {
        CommitWakeups { notified: Default::default(), arm: std::sync::Arc::new(|| {}) }
    }
}

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the node identity is not an ed25519 secret key")]
    BadNodeKey,
    #[error("libp2p: {0}")]
    Network(String),
}

/// The worker's libp2p behaviours (public so tests can build a peer that speaks the protocol).
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub stream: libp2p_stream::Behaviour,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Work for the reads task: a peer's request, or a group's frontier after a NOTIFY.
enum Read {
    Serve(Serve<PeerId>),
    Frontier { group: String },
    Stored { group: String, hashes: Vec<String> },
}

enum DbResult {
    Headers {
        peer: PeerId,
        group: String,
        request_id: String,
        headers: Vec<WireHeader>,
        complete: bool,
        payloads: Option<Vec<(String, Value)>>,
    },
    Payloads {
        peer: PeerId,
        group: String,
        request_id: String,
        payloads: Vec<(String, Value)>,
    },
    Frontier {
        group: String,
        hash_algorithm: String,
        frontier: Vec<String>,
    },
    /// A frontier read found no group or failed (logged); only ends the read.
    FrontierFailed {
        group: String,
    },
    Stored {
        group: String,
        asked: Vec<String>,
        stored: Vec<String>,
    },
    Imported {
        group: String,
        epoch: u64,
        hash_algorithm: String,
        outcome: ImportOutcome,
        entries: usize,
        took: Duration,
    },
    ImportFailed {
        group: String,
        epoch: u64,
        error: String,
    },
}

/// Waits until the database is reachable and the extension is installed, quietly (a log line
/// per minute at most).
async fn wait_for_database(conninfo: &str, stop: &mut (impl Future<Output = ()> + Unpin)) -> Option<Db> {
    let mut last_log = 0u64;
    loop {
        let attempt = async {
            let db = db::connect(conninfo, None).await?;
            Ok::<_, DbError>(if db.extension_ready().await? { Some(db) } else { None })
        };
        match attempt.await {
            Ok(Some(db)) => return Some(db),
            Ok(None) | Err(_) if now_ms() - last_log < 60_000 => {}
            Ok(None) => {
                tracing::info!("waiting for CREATE EXTENSION pg_causal in the worker's database");
                last_log = now_ms();
            }
            Err(e) => {
                tracing::info!("waiting for the database: {e}");
                last_log = now_ms();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = &mut *stop => return None,
        }
    }
}

/// Runs the worker until `stop` completes.
pub async fn run(config: WorkerConfig, stop: impl Future<Output = ()>) -> Result<(), WorkerError> {
    let mut stop = Box::pin(stop);
    let Some(db) = wait_for_database(&config.conninfo, &mut stop).await else { return Ok(()) };
    let mut secret = db.node_secret().await?;
    let keypair = identity::Keypair::ed25519_from_bytes(&mut secret).map_err(|_| WorkerError::BadNodeKey)?;
    let me = keypair.public().to_peer_id();
    let started = now_ms();

    // The database tasks: notifications, reads, imports.
    let (notify_tx, mut notify_rx) = mpsc::channel::<String>(queues::NOTIFICATIONS);
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let notifications = db::Notifications { tx: notify_tx, dropped: dropped.clone() };
    let listener = db::connect(&config.conninfo, Some(notifications)).await?;
    listener.listen().await?;
    let (results_tx, mut results_rx) = mpsc::channel::<DbResult>(queues::DATABASE_RESULTS);
    let (reads_tx, reads_rx) = mpsc::channel::<Read>(queues::DATABASE_READS);
    let (imports_tx, imports_rx) = mpsc::channel::<ImportJob>(queues::DATABASE_IMPORTS);
    tokio::spawn(serve_reads(db::connect(&config.conninfo, None).await?, reads_rx, results_tx.clone()));
    tokio::spawn(run_imports(db::connect(&config.conninfo, None).await?, imports_rx, results_tx.clone()));
    let poll = config.seal_poll;
    let wakeups = config.commit_wakeups.clone().unwrap_or_default();
    let commits = wakeups.notified.clone();
    let sealer = std::sync::Arc::new(db::connect(&config.conninfo, None).await?);
    local_commits::spawn(
        local_commits::Sealer { decoder: db::connect(&config.conninfo, None).await?, sealer: sealer.clone() },
        local_commits::Placer { placer: db::connect(&config.conninfo, None).await?, sealer },
        wakeups,
        poll,
    );

    // The latest status as Prometheus text, for the metrics server if there is one.
    let (metrics_tx, metrics_rx) = tokio::sync::watch::channel(String::new());
    if let Some(addr) = config.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| WorkerError::Network(format!("cannot serve metrics on {addr}: {e}")))?;
        tracing::info!("serving metrics on http://{addr}/metrics");
        tokio::spawn(crate::metrics::serve(listener, metrics_rx));
    }

    let mut swarm = build_swarm(keypair)?;
    for a in &config.listen {
        swarm.listen_on(a.clone()).map_err(|e| WorkerError::Network(format!("cannot listen on {a}: {e}")))?;
    }
    let protocol = StreamProtocol::new(wire::PROTOCOL);
    let mut control = swarm.behaviour().stream.new_control();
    let mut incoming = control.accept(protocol.clone()).map_err(|e| WorkerError::Network(e.to_string()))?;
    let (inbound_tx, mut inbound_rx) = mpsc::channel::<(PeerId, Vec<u8>)>(queues::INBOUND_FRAMES);

    let mut session: Session<PeerId> = Session::new(SessionConfig::default(), &me.to_base58()[8..20]);
    for g in db.groups().await? {
        session.local_frontier(&g.group_id, &g.hash_algorithm, &g.frontier, now_ms());
    }
    for g in db.wanted_groups().await? {
        session.want_group(&g, now_ms());
    }
    let mut writers: HashMap<PeerId, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut listen_addrs: BTreeSet<String> = BTreeSet::new();
    let mut addresses: HashMap<PeerId, String> = HashMap::new();
    // Peers removed with causal.remove_peer while this worker runs: their connections are
    // closed at once.
    let mut removed: BTreeSet<PeerId> = BTreeSet::new();
    let mut wanted_peers: Vec<Multiaddr> = config.peers.clone();
    wanted_peers.extend(db.peer_addresses().await?.iter().filter_map(|a| a.parse().ok()));
    dial_all(&mut swarm, &wanted_peers, &mut addresses, &session);
    tracing::info!(peer_id = %me, "pg_causal sync worker started");

    // One frontier read per group at a time: commits that NOTIFY while one is under way only
    // mark the group, and one more read follows when it returns. (A read per NOTIFY cost the
    // database about 16 µs per local commit during a burst of 100k single-row commits.)
    let mut frontier_reads = FrontierReads::default();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_report = 0u64;
    let mut peers_changed = false;
    let mut last_redial = now_ms();
    // Signals that may have been lost (a notification dropped, a query that failed while
    // acting on one): everything they stand for is read again at the next tick.
    let mut resync = Resync::default();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            event = swarm.select_next_some() => {
                // Connections coming and going are reported at the next tick, not a second later.
                peers_changed |= matches!(event, SwarmEvent::ConnectionEstablished { .. } | SwarmEvent::ConnectionClosed { .. });
                on_swarm_event(event, &mut swarm, &mut session, &mut writers, &mut listen_addrs, &mut addresses, &removed, &control, &protocol, me);
            }
            Some((peer, stream)) = incoming.next() => {
                tokio::spawn(read_frames(peer, stream, inbound_tx.clone()));
            }
            Some((peer, body)) = inbound_rx.recv() => session.frame(&peer, &body, now_ms()),
            Some(note) = notify_rx.recv() => {
                if let Some(group) = note.strip_prefix("group:") {
                    commits.notify_one();
                    if frontier_reads.wanted(group) && reads_tx.try_send(Read::Frontier { group: group.to_string() }).is_err() {
                        frontier_reads.forget(group); // the next commit tries again
                    }
                } else if let Some(group) = note.strip_prefix("leave:") {
                    session.forget_group(group);
                } else if note == "join" {
                    match db.wanted_groups().await {
                        Ok(groups) => for g in groups {
                            session.want_group(&g, now_ms());
                        },
                        Err(e) => {
                            tracing::warn!("reading the groups to join failed: {e}; trying again");
                            resync.lost();
                        }
                    }
                } else if note == "peers" {
                    match db.peer_addresses().await {
                        Ok(listed) => {
                            let listed: Vec<Multiaddr> = listed.iter().filter_map(|a| a.parse().ok()).collect();
                            follow_peer_list(listed, &config.peers, &mut wanted_peers, &mut removed, &mut swarm);
                            dial_all(&mut swarm, &wanted_peers, &mut addresses, &session);
                        }
                        // The peers stay as they are: an empty list read from a failed query
                        // would disconnect every one of them.
                        Err(e) => {
                            tracing::warn!("reading the peer list failed: {e}; keeping the peers, trying again");
                            resync.lost();
                        }
                    }
                }
            }
            Some(result) = results_rx.recv() => {
                let frontier_of = match &result {
                    DbResult::Frontier { group, .. } | DbResult::FrontierFailed { group } => Some(group.clone()),
                    _ => None,
                };
                on_db_result(result, &mut session);
                if let Some(group) = frontier_of {
                    if frontier_reads.done(&group) && reads_tx.try_send(Read::Frontier { group: group.clone() }).is_err() {
                        frontier_reads.forget(&group);
                    }
                }
            }
            _ = tick.tick() => {
                let now = now_ms();
                if resync.due(dropped.load(std::sync::atomic::Ordering::Relaxed)) {
                    tracing::info!(dropped = resync.dropped_seen, "notifications may have been lost; reading the groups and peers again");
                    commits.notify_one();
                    let synced = async {
                        for g in db.groups().await? {
                            session.local_frontier(&g.group_id, &g.hash_algorithm, &g.frontier, now);
                        }
                        for g in db.wanted_groups().await? {
                            session.want_group(&g, now);
                        }
                        let listed: Vec<Multiaddr> = db.peer_addresses().await?.iter().filter_map(|a| a.parse().ok()).collect();
                        Ok::<_, DbError>(listed)
                    };
                    match synced.await {
                        Ok(listed) => {
                            follow_peer_list(listed, &config.peers, &mut wanted_peers, &mut removed, &mut swarm);
                            dial_all(&mut swarm, &wanted_peers, &mut addresses, &session);
                        }
                        Err(e) => {
                            tracing::warn!("resynchronizing failed: {e}; trying again");
                            resync.lost();
                        }
                    }
                }
                session.tick(now);
                if now - last_redial > 5_000 {
                    last_redial = now;
                    dial_all(&mut swarm, &wanted_peers, &mut addresses, &session);
                }
                if peers_changed || now - last_report >= config.report_every.as_millis() as u64 {
                    last_report = now;
                    peers_changed = false;
                    let depths = QueueDepths {
                        inbound_frames: queues::INBOUND_FRAMES - inbound_rx.capacity(),
                        notifications: queues::NOTIFICATIONS - notify_rx.capacity(),
                        notifications_dropped: dropped.load(std::sync::atomic::Ordering::Relaxed),
                        database_reads: queues::DATABASE_READS - reads_tx.capacity(),
                        database_imports: queues::DATABASE_IMPORTS - imports_tx.capacity(),
                        database_results: queues::DATABASE_RESULTS - results_rx.capacity(),
                        resyncs: resync.count,
                    };
                    let report = status_report(&session, me, &listen_addrs, &addresses, started, &writers, &depths);
                    if config.metrics.is_some() {
                        metrics_tx.send_replace(crate::metrics::prometheus_text(&report, now));
                    }
                    if let Err(e) = db.report(&report).await {
                        // The database went away (restart, crash): stop, and be started again.
                        tracing::warn!("lost the database: {e}");
                        return Err(e.into());
                    }
                }
            }
        }
        // Carry out what the protocol asked for.
        while let Some(action) = session.poll_action() {
            match action {
                Action::Send { peer, envelope } => {
                    let frame = envelope.to_frame();
                    let len = frame.len();
                    let full = match writers.get(&peer) {
                        Some(w) => match w.try_send(frame) {
                            Ok(()) => {
                                // Counted once queued for the peer, not when dropped.
                                session.sent(&peer, len);
                                false
                            }
                            Err(_) => true,
                        },
                        None => false, // not connected (any more): the message is moot
                    };
                    if full {
                        tracing::warn!(%peer, "outbound queue full ({} frames); disconnecting", queues::OUTBOUND_FRAMES_PER_PEER);
                        writers.remove(&peer);
                        let _ = swarm.disconnect_peer_id(peer);
                    }
                }
                Action::Serve(request) => {
                    if reads_tx.try_send(Read::Serve(request)).is_err() {
                        tracing::warn!(
                            "database reads queue full ({}); a peer's request waits for its timeout",
                            queues::DATABASE_READS
                        );
                    }
                }
                Action::Import { group, hash_algorithm, hashes, bundle, epoch } => {
                    let job = ImportJob { group: group.clone(), hash_algorithm, hashes, bundle, epoch };
                    if imports_tx.try_send(job).is_err() {
                        tracing::warn!(group = %group, "imports queue full ({}); fetched entries wait", queues::DATABASE_IMPORTS);
                        session.import_failed(&group, epoch, now_ms());
                    }
                }
                Action::CheckStored { group, hashes } => {
                    if reads_tx.try_send(Read::Stored { group: group.clone(), hashes: hashes.clone() }).is_err() {
                        tracing::warn!(
                            "database reads queue full ({}); walking without checking",
                            queues::DATABASE_READS
                        );
                        session.stored_checked(&group, hashes, Vec::new(), now_ms());
                    }
                }
                Action::Disconnect { peer, reason, banned_until_ms } => {
                    tracing::warn!(%peer, %reason, banned_for_s = (banned_until_ms.saturating_sub(now_ms())) / 1000, "peer banned");
                    writers.remove(&peer);
                    let _ = swarm.disconnect_peer_id(peer);
                }
            }
        }
    }
    tracing::info!("pg_causal sync worker stopping");
    Ok(())
}

/// Whether signals may have been lost and everything must be read again.
#[derive(Default)]
struct Resync {
    /// The dropped-notification count last acted on.
    dropped_seen: u64,
    /// A query acting on a signal failed.
    pending: bool,
    /// Resynchronizations done.
    count: u64,
}

impl Resync {
    fn lost(&mut self) {
        self.pending = true;
    }

    /// Whether to resynchronize now, given the dropped-notification count; once said, the
    /// caller does it (and calls [`Resync::lost`] again if it fails).
    fn due(&mut self, dropped: u64) -> bool {
        if dropped == self.dropped_seen && !self.pending {
            return false;
        }
        self.dropped_seen = dropped;
        self.pending = false;
        self.count += 1;
        true
    }
}

/// Follows the database's peer list (`listed`, plus the configured peers): peers no longer in
/// it are forgotten (disconnected, out of Kademlia's table, whose bootstrap would dial them
/// again, and refused until added back); peers in it are wanted.
fn follow_peer_list(
    listed: Vec<Multiaddr>,
    configured: &[Multiaddr],
    wanted_peers: &mut Vec<Multiaddr>,
    removed: &mut BTreeSet<PeerId>,
    swarm: &mut Swarm<Behaviour>,
) {
    let (forget, keep) = peer_list_change(&listed, configured, wanted_peers);
    for p in forget {
        removed.insert(p);
        swarm.behaviour_mut().kad.remove_peer(&p);
        let _ = swarm.disconnect_peer_id(p);
    }
    for p in &keep {
        removed.remove(p);
    }
    *wanted_peers = configured.to_vec();
    wanted_peers.extend(listed);
}

/// The peers to forget and those to keep when the list becomes `listed` (plus `configured`).
fn peer_list_change(
    listed: &[Multiaddr],
    configured: &[Multiaddr],
    wanted: &[Multiaddr],
) -> (Vec<PeerId>, BTreeSet<PeerId>) {
    let keep: BTreeSet<PeerId> = listed.iter().chain(configured.iter()).filter_map(peer_of).collect();
    let forget = wanted.iter().filter_map(peer_of).filter(|p| !keep.contains(p)).collect();
    (forget, keep)
}

/// Depths of the worker's queues between tasks, for the status report.
struct QueueDepths {
    inbound_frames: usize,
    notifications: usize,
    notifications_dropped: u64,
    database_reads: usize,
    database_imports: usize,
    database_results: usize,
    resyncs: u64,
}

fn peer_of(a: &Multiaddr) -> Option<PeerId> {
    a.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// A Swarm as the worker builds it: TCP, noise, yamux, identify, ping, Kademlia, streams.
pub fn build_swarm(keypair: identity::Keypair) -> Result<Swarm<Behaviour>, WorkerError> {
    let net = |e: &dyn std::fmt::Display| WorkerError::Network(e.to_string());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| net(&e))?
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let mut kad = kad::Behaviour::new(id, kad::store::MemoryStore::new(id));
            kad.set_mode(Some(kad::Mode::Server));
            Behaviour {
                identify: identify::Behaviour::new(
                    identify::Config::new(wire::PROTOCOL.into(), key.public())
                        .with_agent_version(wire::agent_version()),
                ),
                ping: ping::Behaviour::new(ping::Config::new()),
                kad,
                stream: libp2p_stream::Behaviour::new(),
            }
        })
        .map_err(|e| net(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(24 * 3600)))
        .build();
    Ok(swarm)
}

fn dial_all(
    swarm: &mut Swarm<Behaviour>,
    peers: &[Multiaddr],
    addresses: &mut HashMap<PeerId, String>,
    session: &Session<PeerId>,
) {
    let now = now_ms();
    for a in peers {
        let Some(p) = peer_of(a) else { continue };
        addresses.insert(p, a.to_string());
        if swarm.is_connected(&p) || session.is_banned(&p, now) {
            continue;
        }
        swarm.behaviour_mut().kad.add_address(&p, a.clone());
        if let Err(e) = swarm.dial(a.clone()) {
            tracing::debug!(%a, "dial failed: {e}");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn on_swarm_event(
    event: SwarmEvent<BehaviourEvent>,
    swarm: &mut Swarm<Behaviour>,
    session: &mut Session<PeerId>,
    writers: &mut HashMap<PeerId, mpsc::Sender<Vec<u8>>>,
    listen_addrs: &mut BTreeSet<String>,
    addresses: &mut HashMap<PeerId, String>,
    removed: &BTreeSet<PeerId>,
    control: &libp2p_stream::Control,
    protocol: &StreamProtocol,
    me: PeerId,
) {
    let now = now_ms();
    match event {
        SwarmEvent::NewListenAddr { address, .. } => {
            tracing::info!("listening on {address}/p2p/{me}");
            listen_addrs.insert(format!("{address}/p2p/{me}"));
        }
        SwarmEvent::ExpiredListenAddr { address, .. } => {
            listen_addrs.remove(&format!("{address}/p2p/{me}"));
        }
        SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
            if session.is_banned(&peer_id, now) || removed.contains(&peer_id) {
                let _ = swarm.disconnect_peer_id(peer_id);
                return;
            }
            if endpoint.is_dialer() {
                addresses.entry(peer_id).or_insert_with(|| format!("{}/p2p/{peer_id}", endpoint.get_remote_address()));
            }
            if num_established.get() == 1 {
                tracing::info!(peer = %peer_id, "connected");
                let (tx, rx) = mpsc::channel(queues::OUTBOUND_FRAMES_PER_PEER);
                writers.insert(peer_id, tx);
                tokio::spawn(write_frames(peer_id, control.clone(), protocol.clone(), rx));
                session.peer_connected(&peer_id, now);
            }
        }
        SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
            tracing::info!(peer = %peer_id, "disconnected");
            writers.remove(&peer_id);
            session.peer_disconnected(&peer_id, now);
        }
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
            if removed.contains(&peer_id) {
                return;
            }
            if let Some(told) = wire::version_mismatch(&info.protocol_version, &info.agent_version) {
                tracing::warn!(peer = %peer_id, "{told}");
                session.peer_error(&peer_id, told, now);
            }
            for a in info.listen_addrs {
                swarm.behaviour_mut().kad.add_address(&peer_id, a);
            }
        }
        _ => {}
    }
}

fn on_db_result(result: DbResult, session: &mut Session<PeerId>) {
    let now = now_ms();
    match result {
        DbResult::Headers { peer, group, request_id, headers, complete, payloads } => {
            session.headers_read(&peer, &group, &request_id, headers, complete, payloads)
        }
        DbResult::Payloads { peer, group, request_id, payloads } => {
            session.payloads_read(&peer, &group, &request_id, payloads)
        }
        DbResult::Frontier { group, hash_algorithm, frontier } => {
            session.local_frontier(&group, &hash_algorithm, &frontier, now)
        }
        DbResult::Stored { group, asked, stored } => session.stored_checked(&group, asked, stored, now),
        DbResult::FrontierFailed { .. } => {}
        DbResult::Imported { group, epoch, hash_algorithm, outcome, entries, took } => {
            let to_fetch = session.group_status().iter().find(|g| g.group == group).map(|g| g.to_fetch).unwrap_or(0);
            tracing::info!(
                group = %group,
                entries,
                stored = outcome.stored.len(),
                rejected = outcome.rejected.len(),
                still_to_fetch = to_fetch.saturating_sub(entries),
                ms = took.as_millis() as u64,
                "imported"
            );
            for (h, why) in outcome.rejected.iter().take(5) {
                tracing::warn!(group = %group, entry = %h, "rejected: {why}");
            }
            session.imported(&group, epoch, outcome, &hash_algorithm, now)
        }
        DbResult::ImportFailed { group, epoch, error } => {
            tracing::warn!(group = %group, "import failed: {error}");
            session.import_failed(&group, epoch, now)
        }
    }
}

/// How often local commits are looked for in the WAL, when commits do not wake the placer
/// (the standalone `causal-sync`).
pub const SEAL_POLL: Duration = Duration::from_millis(20);

/// Reads length-prefixed frames from a peer's stream into the inbound queue.
async fn read_frames(peer: PeerId, mut stream: libp2p::Stream, tx: mpsc::Sender<(PeerId, Vec<u8>)>) {
    let mut len = [0u8; 4];
    loop {
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            // Hand the protocol an oversized marker so the peer is scored, then stop reading.
            let _ = tx.send((peer, vec![0xff; 1])).await;
            return;
        }
        let mut body = vec![0u8; n];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        if tx.send((peer, body)).await.is_err() {
            return;
        }
    }
}

/// Opens our stream to a peer and writes the frames queued for it.
async fn write_frames(
    peer: PeerId,
    mut control: libp2p_stream::Control,
    protocol: StreamProtocol,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let mut stream = match control.open_stream(peer, protocol).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, "cannot open a sync stream: {e}");
            return;
        }
    };
    while let Some(frame) = rx.recv().await {
        if stream.write_all(&frame).await.is_err() {
            return;
        }
        // Flush when nothing else is queued, so small messages leave at once.
        if rx.is_empty() && stream.flush().await.is_err() {
            return;
        }
    }
    let _ = stream.close().await;
}

fn status_report(
    session: &Session<PeerId>,
    me: PeerId,
    listen_addrs: &BTreeSet<String>,
    addresses: &HashMap<PeerId, String>,
    started: u64,
    writers: &HashMap<PeerId, mpsc::Sender<Vec<u8>>>,
    depths: &QueueDepths,
) -> Value {
    let peers: Vec<Value> = session
        .peer_stats()
        .into_iter()
        .map(|(p, s)| {
            json!({"peer_id": p.to_base58(), "address": addresses.get(&p), "connected": s.connected,
                   "last_seen_ms": s.last_seen_ms, "entries_received": s.entries_received,
                   "entries_rejected": s.entries_rejected, "banned_until_ms": s.banned_until_ms, "score": s.score,
                   "bytes_in": s.bytes_in, "bytes_out": s.bytes_out, "entries_sent": s.entries_sent,
                   "last_offence": s.last_offence.map(|(o, _)| o),
                   "last_offence_ms": s.last_offence.map(|(_, t)| t),
                   "last_error": s.last_error.as_ref().map(|(e, _)| e),
                   "last_error_ms": s.last_error.as_ref().map(|(_, t)| t),
                   "outbound_queue": writers.get(&p).map(|w| queues::OUTBOUND_FRAMES_PER_PEER - w.capacity())})
        })
        .collect();
    let groups: Vec<Value> = session
        .group_status()
        .into_iter()
        .map(|g| {
            json!({"group": g.group, "present": g.present, "to_fetch": g.to_fetch, "imported": g.imported,
                   "last_progress_ms": g.last_progress_ms, "peers": g.peers_with_group})
        })
        .collect();
    json!({
        "pid": std::process::id(),
        "peer_id": me.to_base58(),
        "addresses": listen_addrs.iter().collect::<Vec<_>>(),
        "started_at_ms": started,
        "peers": peers,
        "groups": groups,
        "queues": {
            "inbound_frames": depths.inbound_frames,
            "protocol_actions": session.queued_actions(),
            "notifications": depths.notifications,
            "database_reads": depths.database_reads,
            "database_imports": depths.database_imports,
            "database_results": depths.database_results,
        },
        "notifications_dropped": depths.notifications_dropped,
        "resyncs": depths.resyncs,
    })
}

#[cfg(test)]
mod tests {
    use super::{peer_list_change, FrontierReads, Resync};
    use libp2p::{identity, Multiaddr};

    /// A dropped notification, or a failed query acting on one, asks for one resync.
    #[test]
    fn lost_signals_ask_for_a_resync() {
        let mut r = Resync::default();
        assert!(!r.due(0), "nothing lost");
        assert!(r.due(3), "three notifications dropped");
        assert!(!r.due(3), "already acted on");
        r.lost();
        assert!(r.due(3), "a query failed");
        assert!(!r.due(3));
        assert_eq!(r.count, 2);
    }

    /// Peers leave the wanted set only when the list that no longer has them was read.
    #[test]
    fn a_peer_list_forgets_only_the_peers_it_lost() {
        let addr = |i: u8| -> Multiaddr {
            let id = identity::Keypair::ed25519_from_bytes([i; 32]).unwrap().public().to_peer_id();
            format!("/ip4/127.0.0.1/tcp/{}/p2p/{id}", 4000 + i as u16).parse().unwrap()
        };
        let wanted = vec![addr(1), addr(2), addr(3)];
        let (forget, keep) = peer_list_change(&[addr(2)], &[addr(3)], &wanted);
        assert_eq!(forget.len(), 1);
        assert_eq!(keep.len(), 2);
        let (forget, _) = peer_list_change(&[addr(1), addr(2)], &[addr(3)], &wanted);
        assert!(forget.is_empty());
    }

    /// Commits during a read are folded into one more read; a quiet group reads nothing.
    #[test]
    fn frontier_reads_coalesce() {
        let mut r = FrontierReads::default();
        assert!(r.wanted("g"), "the first commit starts a read");
        assert!(!r.wanted("g") && !r.wanted("g"), "commits during the read wait");
        assert!(r.wanted("h"), "another group reads on its own");
        assert!(r.done("g"), "the read returns: one more, for the commits meanwhile");
        assert!(!r.done("g"), "nothing changed during that one");
        assert!(r.wanted("g"), "the next commit starts a read again");
        r.forget("g");
        assert!(r.wanted("g"), "a read that could not be queued is not waited for");
        assert!(!r.done("h") && r.wanted("h"));
    }
}
