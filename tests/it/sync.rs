//! Live replication between real clusters, each with pg_causal preloaded and its sync worker
//! running on loopback: writes travel without export/import, partitions heal, and crashed
//! nodes catch up.

use std::time::{Duration, Instant};

use causal_integration::{node_identity, postgres, Cluster};

/// A cluster whose background worker listens on a loopback port of its own.
struct Node {
    cluster: Cluster,
    db: postgres::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Node {
    fn start(name: &str) -> Node {
        Node::start_with(name, &[])
    }

    /// [`Node::start`] with more configuration lines.
    fn start_with(name: &str, conf: &[&str]) -> Node {
        let p2p = free_port();
        let listen = format!("causal.listen_addresses = '/ip4/127.0.0.1/tcp/{p2p}'");
        let mut lines = vec!["shared_preload_libraries = 'pg_causal'", &listen, "causal.database = 'postgres'"];
        lines.extend_from_slice(conf);
        let cluster = Cluster::start(name, &lines);
        let mut db = cluster.connect("postgres");
        db.batch_execute("CREATE EXTENSION pg_causal").unwrap();
        Node { cluster, db }
    }

    fn address(&mut self) -> String {
        wait_for(&format!("{} reports its address", self.cluster.name), Duration::from_secs(30), || {
            let a: Vec<String> = self.db.query_one("SELECT causal.node_addresses()", &[]).unwrap().get(0);
            a.into_iter().next()
        })
    }

    fn public_key(&mut self) -> String {
        node_identity(&mut self.db).0
    }

    fn count(&mut self, sql: &str) -> i64 {
        self.db.query_one(sql, &[]).map(|r| r.get(0)).unwrap_or(-1)
    }

    /// How many entries are stored, once what is committed here is sealed.
    fn entries(&mut self) -> i64 {
        let _ = self.db.batch_execute("SELECT causal.catch_up()");
        self.count("SELECT count(*) FROM causal.dag_entries")
    }

    fn frontier(&mut self, group: &str) -> Vec<String> {
        // What is committed here, sealed (the worker seals too, about once a second).
        let _ = self.db.batch_execute("SELECT causal.catch_up()");
        self.db.query_one("SELECT coalesce(causal.frontier($1), '{}')", &[&group]).map(|r| r.get(0)).unwrap_or_default()
    }

    fn rows(&mut self, sql: &str) -> Vec<String> {
        self.db.query(sql, &[]).map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect()).unwrap_or_default()
    }
}

/// Polls `f` until it returns Some, or fails the test with `what` after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Connects every pair of nodes (each adds the others as peers).
fn mesh(nodes: &mut [&mut Node]) {
    let addrs: Vec<String> = nodes.iter_mut().map(|n| n.address()).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        for (j, a) in addrs.iter().enumerate() {
            if i != j {
                n.db.execute("SELECT causal.add_peer($1)", &[a]).unwrap();
            }
        }
    }
}

/// Creates group `shop` with table `products` on `a`, makes the others members, and has them
/// join over the network. Returns the group id.
fn shop(a: &mut Node, others: &mut [&mut Node]) -> String {
    let g: String = a.db.query_one("SELECT causal.create_group('shop')", &[]).unwrap().get(0);
    a.db.batch_execute(
        "CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2) CHECK (price >= 0));
         SELECT causal.replicate('shop', 'products');",
    )
    .unwrap();
    for n in others.iter_mut() {
        let key = n.public_key();
        a.db.execute("SELECT causal.add_member('shop', $1)", &[&key]).unwrap();
    }
    for n in others.iter_mut() {
        n.db.execute("SELECT causal.join_group($1)", &[&g]).unwrap();
    }
    let want = a.frontier(&g);
    for n in others.iter_mut() {
        let name = n.cluster.name.clone();
        wait_for(&format!("{name} joined the group"), Duration::from_secs(60), || {
            (n.frontier(&g) == want).then_some(())
        });
    }
    g
}

fn converged(nodes: &mut [&mut Node], group: &str, tables: &[&str]) -> bool {
    let first_frontier = nodes[0].frontier(group);
    let mut first: Option<Vec<Vec<String>>> = None;
    for n in nodes.iter_mut() {
        if n.frontier(group) != first_frontier {
            return false;
        }
        let mut state = vec![n.rows(&format!(
            "SELECT coalesce(string_agg(status || ':' || coalesce(reason, ''), ',' ORDER BY hash), '') FROM causal.log('{group}', 1000000)"
        ))];
        for t in tables {
            state.push(n.rows(&format!("SELECT t::text FROM {t} t ORDER BY 1")));
        }
        match &first {
            None => first = Some(state),
            Some(f) if *f != state => return false,
            Some(_) => {}
        }
    }
    true
}

/// A commit that wrote a replicated table wakes the background worker, which seals it then:
/// with the worker's poll set to an hour, the commit is sealed within seconds all the same.
/// Nothing else wakes an idle single node (local commits send no notification).
#[test]
fn a_local_commit_wakes_the_worker_to_seal_it() {
    let mut n = Node::start_with("wake", &["causal.seal_poll_interval = '1h'"]);
    n.db.batch_execute(
        "SELECT causal.create_group('g'); CREATE TABLE t (id int PRIMARY KEY); SELECT causal.replicate('g', 't')",
    )
    .unwrap();
    let stored = |n: &mut Node| n.count("SELECT count(*) FROM causal.dag_entries");
    for i in 0..3 {
        let before = stored(&mut n);
        n.db.execute("INSERT INTO t VALUES ($1)", &[&i]).unwrap();
        wait_for(&format!("commit {i} is sealed without a catch_up"), Duration::from_secs(20), || {
            (stored(&mut n) == before + 1).then_some(())
        });
        // Sealing notifies the group's change, which sends the placer round once more: let
        // that pass, so the next commit has nothing but its own wakeup.
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A long import shows in `causal.progress` from other sessions while it runs, and is gone
/// when it ends. To catch it under way, another session holds a lock on the table the
/// import's placing writes.
#[test]
fn a_running_import_shows_in_causal_progress() {
    let mut n = Node::start_with("progress", &[]);
    n.db.batch_execute(
        "SELECT causal.create_group('g');
         CREATE TABLE t (id int PRIMARY KEY, v text);
         SELECT causal.replicate('g', 't');",
    )
    .unwrap();
    n.db.batch_execute("CREATE DATABASE dst").unwrap();
    let mut dst = n.cluster.connect("dst");
    dst.batch_execute("CREATE EXTENSION pg_causal").unwrap();
    let first: Vec<u8> = n.db.query_one("SELECT causal.export('g')", &[]).unwrap().get(0);
    dst.query_one("SELECT causal.import($1)::text", &[&first]).unwrap();
    let since: Vec<String> = n.db.query_one("SELECT causal.frontier('g')", &[]).unwrap().get(0);
    n.db.batch_execute("INSERT INTO t SELECT i, 'row ' || i FROM generate_series(1, 2000) i").unwrap();
    for i in 0..200 {
        n.db.execute("INSERT INTO t VALUES ($1, 'single')", &[&(10_000 + i)]).unwrap();
    }
    n.db.batch_execute("SELECT causal.catch_up()").unwrap();
    let second: Vec<u8> = n.db.query_one("SELECT causal.export('g', $1)", &[&since]).unwrap().get(0);

    let mut blocker = n.cluster.connect("dst");
    blocker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").unwrap();
    let url = n.cluster.connection_string("dst");
    let importer = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.query_one("SELECT causal.import($1)::text", &[&second]).unwrap().get::<_, String>(0)
    });
    let mut watcher = n.cluster.connect("dst");
    let shown: String = wait_for("the import shows in causal.progress", Duration::from_secs(30), || {
        watcher
            .query_opt(
                "SELECT concat_ws(' ', operation, group_name, total) FROM causal.progress WHERE operation = 'importing'",
                &[],
            )
            .unwrap()
            .map(|r| r.get(0))
    });
    assert_eq!(shown, "importing g 201", "the bulk insert's entry and the 200 single-row ones");
    blocker.batch_execute("COMMIT").unwrap();
    let report = importer.join().unwrap();
    assert!(report.contains("\"rejected\": []"), "{report}");
    let left: i64 = watcher.query_one("SELECT count(*) FROM causal.progress", &[]).unwrap().get(0);
    assert_eq!(left, 0);
}

/// The worker's sealing runs show in `causal.progress` too. A lock on the sealed position's
/// table holds one up before it has sealed anything; another session sees it, and it is gone
/// once the lock goes.
#[test]
fn a_sealing_run_shows_in_causal_progress() {
    let mut n = Node::start_with("progress-seal", &[]);
    n.db.batch_execute(
        "SELECT causal.create_group('g'); CREATE TABLE t (id int PRIMARY KEY); SELECT causal.replicate('g', 't');
         INSERT INTO t VALUES (0); SELECT causal.catch_up();",
    )
    .unwrap();
    let mut blocker = n.cluster.connect("postgres");
    blocker.batch_execute("BEGIN; LOCK TABLE causal.capture_state IN ACCESS EXCLUSIVE MODE").unwrap();
    // The write itself does not need that table; a timeout keeps a mistake from hanging.
    n.db.batch_execute("SET statement_timeout = '20s'; INSERT INTO t VALUES (1)").unwrap();
    let mut watcher = n.cluster.connect("postgres");
    let shown: String = wait_for("the sealing run shows in causal.progress", Duration::from_secs(30), || {
        watcher
            .query_opt("SELECT concat_ws(' ', operation, done) FROM causal.progress WHERE operation = 'sealing'", &[])
            .unwrap()
            .map(|r| r.get(0))
    });
    assert_eq!(shown, "sealing 0");
    blocker.batch_execute("COMMIT").unwrap();
    wait_for("the sealing run ends", Duration::from_secs(30), || {
        let left: i64 = watcher.query_one("SELECT count(*) FROM causal.progress", &[]).unwrap().get(0);
        (left == 0).then_some(())
    });
}

#[test]
fn writes_on_each_of_three_nodes_appear_on_the_other_two() {
    let (mut a, mut b, mut c) = (Node::start("live-a"), Node::start("live-b"), Node::start("live-c"));
    mesh(&mut [&mut a, &mut b, &mut c]);
    let g = shop(&mut a, &mut [&mut b, &mut c]);
    // The table came with the group.
    assert_eq!(b.count("SELECT count(*) FROM causal.tables WHERE table_name = 'products'"), 1);
    a.db.execute("INSERT INTO products VALUES ('A', 'from a', 1)", &[]).unwrap();
    b.db.execute("INSERT INTO products VALUES ('B', 'from b', 2)", &[]).unwrap();
    c.db.execute("INSERT INTO products VALUES ('C', 'from c', 3)", &[]).unwrap();
    wait_for("every node has every row", Duration::from_secs(30), || {
        let all = [&mut a, &mut b, &mut c].iter_mut().all(|n| n.count("SELECT count(*) FROM products") == 3);
        all.then_some(())
    });
    wait_for("the nodes converge", Duration::from_secs(30), || {
        converged(&mut [&mut a, &mut b, &mut c], &g, &["products"]).then_some(())
    });
    // The views show the peers and the worker.
    wait_for("A's view shows both peers connected", Duration::from_secs(10), || {
        (a.count("SELECT count(*) FROM causal.peers WHERE connected") == 2).then_some(())
    });
    let worker: String =
        a.db.query_one("SELECT worker FROM causal.sync_status WHERE group_name = 'shop'", &[]).unwrap().get(0);
    assert!(worker.starts_with("running"), "{worker}");
}

#[test]
fn a_partition_heals_to_identical_tables_logs_and_frontiers() {
    let (mut a, mut b, mut c) = (Node::start("part-a"), Node::start("part-b"), Node::start("part-c"));
    mesh(&mut [&mut a, &mut b, &mut c]);
    let g = shop(&mut a, &mut [&mut b, &mut c]);
    a.db.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, sku text NOT NULL REFERENCES products (sku), qty int NOT NULL);
         SELECT causal.replicate('shop', 'orders');
         CREATE TABLE caps (grantee text PRIMARY KEY, label text NOT NULL);
         SELECT causal.replicate('shop', 'caps');
         INSERT INTO products VALUES ('P', 'widget', 5), ('Q', 'gadget', 7);",
    )
    .unwrap();
    let (_, carol) = node_identity(&mut c.db);
    a.db.execute("INSERT INTO caps VALUES ($1, 'writer')", &[&carol]).unwrap();
    a.db.batch_execute(
        "SELECT causal.allow('orders', 'insert', $$exists(caps where caps.label = 'writer' and caps.grantee = $author)$$);",
    )
    .unwrap();
    wait_for("the setup reaches everyone", Duration::from_secs(60), || {
        converged(&mut [&mut a, &mut b, &mut c], &g, &["products", "orders", "caps"]).then_some(())
    });

    // Cut C off: every side forgets the other.
    let (addr_a, addr_b, addr_c) = (a.address(), b.address(), c.address());
    for (n, gone) in [(&mut a, &addr_c), (&mut b, &addr_c)] {
        n.db.execute("SELECT causal.remove_peer($1)", &[gone]).unwrap();
    }
    c.db.execute("SELECT causal.remove_peer($1)", &[&addr_a]).unwrap();
    c.db.execute("SELECT causal.remove_peer($1)", &[&addr_b]).unwrap();
    wait_for("C is cut off", Duration::from_secs(30), || {
        (c.count("SELECT count(*) FROM causal.peers WHERE connected") == 0).then_some(())
    });

    // Conflicts on all three sides: same-column updates of P on A and C, an edit of another
    // column on B, an FK conflict (A deletes Q while C orders it), and a revocation racing a
    // gated insert (A revokes C's writer cap while C orders P).
    a.db.execute("UPDATE products SET price = 11 WHERE sku = 'P'", &[]).unwrap();
    c.db.execute("UPDATE products SET price = 33 WHERE sku = 'P'", &[]).unwrap();
    b.db.execute("UPDATE products SET name = 'renamed on b' WHERE sku = 'P'", &[]).unwrap();
    a.db.execute("DELETE FROM products WHERE sku = 'Q'", &[]).unwrap();
    c.db.execute("INSERT INTO orders VALUES (1, 'Q', 2)", &[]).unwrap();
    a.db.execute("DELETE FROM caps WHERE grantee = $1", &[&carol]).unwrap();
    c.db.execute("INSERT INTO orders VALUES (2, 'P', 1)", &[]).unwrap();

    // Reconnect.
    c.db.execute("SELECT causal.add_peer($1)", &[&addr_a]).unwrap();
    c.db.execute("SELECT causal.add_peer($1)", &[&addr_b]).unwrap();
    a.db.execute("SELECT causal.add_peer($1)", &[&addr_c]).unwrap();
    b.db.execute("SELECT causal.add_peer($1)", &[&addr_c]).unwrap();
    wait_for("the three nodes converge", Duration::from_secs(60), || {
        converged(&mut [&mut a, &mut b, &mut c], &g, &["products", "orders", "caps"]).then_some(())
    });
    for n in [&mut a, &mut b, &mut c] {
        // The parent is gone, and neither order survives: one broke the foreign key, the other
        // was written on a revoked capability.
        assert_eq!(n.count("SELECT count(*) FROM products WHERE sku = 'Q'"), 0);
        assert_eq!(n.count("SELECT count(*) FROM orders"), 0);
        let cancelled = n.rows(
            "SELECT op || ': ' || coalesce(reason, '') FROM causal.log('shop', 100000) WHERE status = 'cancelled' ORDER BY 1",
        );
        assert_eq!(cancelled.len(), 2, "cancelled: {cancelled:#?}");
        // Edits of different columns of P both survive; one price everywhere (checked by
        // `converged`).
        assert_eq!(n.count("SELECT count(*) FROM products WHERE sku = 'P' AND name = 'renamed on b'"), 1);
    }
}

#[test]
fn a_node_killed_during_sync_loses_nothing_and_catches_up() {
    let (mut a, mut c) = (Node::start("crash-a"), Node::start("crash-c"));
    mesh(&mut [&mut a, &mut c]);
    let g = shop(&mut a, &mut [&mut c]);
    // C commits entries of its own, then is cut off while A writes a long history.
    c.db.execute("INSERT INTO products SELECT 'c' || i, 'from c', i FROM generate_series(1, 20) i", &[]).unwrap();
    for i in 0..5 {
        c.db.execute("INSERT INTO products VALUES ($1, 'from c, alone', 1)", &[&format!("c-own-{i}")]).unwrap();
    }
    wait_for("A has C's rows", Duration::from_secs(30), || {
        (a.count("SELECT count(*) FROM products") == 25).then_some(())
    });
    let addr_a = a.address();
    let addr_c = c.address();
    c.db.execute("SELECT causal.remove_peer($1)", &[&addr_a]).unwrap();
    a.db.execute("SELECT causal.remove_peer($1)", &[&addr_c]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    a.db.batch_execute(
        "CREATE PROCEDURE many(n int) LANGUAGE plpgsql AS $$
         BEGIN FOR b IN 1..n LOOP
             INSERT INTO products SELECT 'a' || b || '-' || i, 'from a', i FROM generate_series(1, 4) i; COMMIT;
         END LOOP; END $$;",
    )
    .unwrap();
    // Alone, so that the procedure may commit (a multi-statement string is one transaction).
    a.db.batch_execute("CALL many(5000)").unwrap();
    let want = a.frontier(&g);
    let entries_before = c.entries();
    // Reconnect, and kill C's postmaster while it is importing.
    c.db.execute("SELECT causal.add_peer($1)", &[&addr_a]).unwrap();
    a.db.execute("SELECT causal.add_peer($1)", &[&addr_c]).unwrap();
    wait_for("C's worker is inside causal.import", Duration::from_secs(60), || {
        let n = c.count(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%causal.import%' \
             AND pid <> pg_backend_pid()",
        );
        (n > 0).then_some(())
    });
    c.cluster.kill9();
    c.cluster.restart();
    c.db = c.cluster.connect("postgres");
    // Nothing committed was lost (C's own rows), and each import is all or nothing: every
    // entry stored has its 4 rows in the table, and no row is there without its entry. (The
    // 5000 entries take at least three imports, so the kill lands inside the catch-up.)
    assert_eq!(c.count("SELECT count(*) FROM products WHERE name LIKE 'from c%'"), 25);
    let after = c.count("SELECT count(*) FROM products");
    let stored = c.count("SELECT count(*) FROM causal.dag_entries") - entries_before;
    assert_eq!(after, 25 + 4 * stored, "rows and entries disagree after the crash");
    assert!(stored < 5000, "the crash should interrupt the catch-up (stored {stored} of 5000)");
    let verified: bool = c.db.query_one("SELECT causal.verify('shop')", &[]).unwrap().get(0);
    assert!(verified);
    // The restarted worker catches up.
    wait_for("C catches up after the crash", Duration::from_secs(180), || (c.frontier(&g) == want).then_some(()));
    assert_eq!(c.count("SELECT count(*) FROM products"), 25 + 20_000);
    assert!(converged(&mut [&mut a, &mut c], &g, &["products"]));
    let verified: bool = c.db.query_one("SELECT causal.verify('shop')", &[]).unwrap().get(0);
    assert!(verified);
}

/// A peer that speaks the protocol but lies: it dials `target`, announces `forged` (an entry
/// whose hashes are right but whose signature was made for another position), sends `garbage`
/// as a frame if given, and serves the forged entry when asked. Returns the message types it
/// received.
fn hostile_peer(target: &str, group: &str, forged: &causal_core::Entry, garbage: Option<Vec<u8>>) -> Vec<String> {
    use causal_sync::wire::{Envelope, FrameReader, SyncMsg, WireHeader, PROTOCOL};
    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    use libp2p::swarm::SwarmEvent;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let mut swarm = causal_sync::node::build_swarm(libp2p::identity::Keypair::generate_ed25519()).unwrap();
        let protocol = libp2p::StreamProtocol::new(PROTOCOL);
        let mut control = swarm.behaviour().stream.new_control();
        let mut incoming = control.accept(protocol.clone()).unwrap();
        let addr: libp2p::Multiaddr = target.parse().unwrap();
        let peer = addr.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        });
        swarm.dial(addr).unwrap();
        // Drive the swarm in the background.
        tokio::spawn(async move {
            loop {
                if let SwarmEvent::ConnectionClosed { num_established: 0, .. } = swarm.select_next_some().await {
                    break;
                }
            }
        });
        let mut out = tokio::time::timeout(Duration::from_secs(20), control.open_stream(peer.unwrap(), protocol))
            .await
            .expect("open a stream in time")
            .expect("open a stream");
        let send = |msg: SyncMsg| Envelope { topic: group.to_string(), msg }.to_frame();
        let h = forged.hash.to_b64();
        out.write_all(&send(SyncMsg::NewFrontier { dag_id: group.to_string(), frontier: vec![h.clone()] }))
            .await
            .unwrap();
        if let Some(g) = &garbage {
            // A frame that is no message at all.
            let mut frame = (g.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(g);
            out.write_all(&frame).await.unwrap();
        }
        out.flush().await.unwrap();
        let mut seen = Vec::new();
        let Ok(Some((_, mut from_target))) = tokio::time::timeout(Duration::from_secs(20), incoming.next()).await
        else {
            return seen;
        };
        let mut reader = FrameReader::new();
        let mut buf = vec![0u8; 65536];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        'read: loop {
            let n = match tokio::time::timeout_at(deadline, from_target.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => break,
            };
            reader.push(&buf[..n]);
            while let Ok(Some(body)) = reader.next_frame() {
                let Ok(env) = Envelope::decode(&body) else { continue };
                seen.push(serde_json::to_value(&env.msg).unwrap()["type"].as_str().unwrap_or("").to_string());
                if let SyncMsg::HeaderRequest { request_id, .. } = env.msg {
                    let frames = [
                        send(SyncMsg::HeaderResponseMeta {
                            request_id: request_id.clone(),
                            header_count: 1,
                            complete: true,
                            payload_count: 1,
                        }),
                        send(SyncMsg::HeaderBatch {
                            request_id: request_id.clone(),
                            sequence: 0,
                            headers: vec![WireHeader { hash: h.clone(), header: forged.header.to_literal() }],
                        }),
                        send(SyncMsg::PayloadResponseMeta { request_id: request_id.clone(), payload_count: 1 }),
                        send(SyncMsg::PayloadMsg {
                            request_id,
                            sequence: 0,
                            hash: h.clone(),
                            payload: forged.payload.clone(),
                        }),
                    ];
                    for f in frames {
                        if out.write_all(&f).await.is_err() {
                            break 'read;
                        }
                    }
                    let _ = out.flush().await;
                }
            }
        }
        seen
    })
}

#[test]
fn a_malicious_peer_is_banned_and_the_honest_nodes_converge() {
    let (mut a, mut b) = (Node::start("mal-a"), Node::start("mal-b"));
    mesh(&mut [&mut a, &mut b]);
    let g = shop(&mut a, &mut [&mut b]);
    a.db.execute("INSERT INTO products VALUES ('A', 'genuine', 1)", &[]).unwrap();
    a.db.batch_execute("SELECT causal.catch_up()").unwrap();
    // A's latest entry, re-attached to the genesis: hashes recomputed, so only the signature
    // (bound to the original position) gives it away.
    let row = a.db.query_one("SELECT payload FROM causal.entries ORDER BY node_id DESC LIMIT 1", &[]).unwrap();
    let payload = causal_core::json::parse(&row.get::<_, String>(0)).unwrap();
    let genesis: causal_core::EntryHash = g.parse().unwrap();
    let forged =
        causal_core::Entry::new(causal_core::HashAlgorithm::Blake3, payload, [genesis].into(), Default::default())
            .unwrap();
    let entries_before = a.entries();
    let target = a.address();
    let seen = hostile_peer(&target, &g, &forged, None);
    assert!(seen.iter().any(|t| t == "header-request"), "the honest node asked for the announced entry: {seen:?}");
    // The forged entry was refused, and its sender banned.
    wait_for("A reports the hostile peer banned", Duration::from_secs(20), || {
        (a.count("SELECT count(*) FROM causal.peers WHERE banned AND entries_rejected >= 1") == 1).then_some(())
    });
    assert_eq!(a.entries(), entries_before);
    assert_eq!(
        a.db.query_one("SELECT count(*) FROM causal.entries WHERE hash = $1", &[&forged.hash.to_b64()])
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    // A second liar that sends a garbage frame right away is banned for that alone.
    let _ = hostile_peer(&target, &g, &forged, Some(b"{\"topic\": \"not a frame\"".to_vec()));
    wait_for("A reports both hostile peers banned", Duration::from_secs(20), || {
        (a.count("SELECT count(*) FROM causal.peers WHERE banned") == 2).then_some(())
    });
    // causal.stat_peers names what each did, with the traffic; causal.stat_worker shows the
    // worker running with its queues.
    assert_eq!(
        a.count(
            "SELECT count(*) FROM causal.stat_peers WHERE banned AND bytes_in > 0 \
             AND last_offence IN ('invalid entry', 'malformed message')"
        ),
        2
    );
    assert_eq!(a.count("SELECT count(*) FROM causal.stat_worker WHERE running AND queues ? 'inbound_frames'"), 1);
    // The honest nodes carry on.
    a.db.execute("INSERT INTO products VALUES ('B', 'after the attack', 2)", &[]).unwrap();
    b.db.execute("INSERT INTO products VALUES ('C', 'from b', 3)", &[]).unwrap();
    wait_for("A and B converge", Duration::from_secs(30), || {
        converged(&mut [&mut a, &mut b], &g, &["products"]).then_some(())
    });
    assert_eq!(b.count("SELECT count(*) FROM products"), 3);
}

#[test]
fn a_late_joiner_catches_up_a_long_history_with_progress_visible() {
    // The issue asks for at least 100k entries; CAUSAL_LATE_JOINER_ENTRIES changes it.
    let n: i32 = std::env::var("CAUSAL_LATE_JOINER_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let (mut a, mut d) = (Node::start("late-a"), Node::start("late-d"));
    let g: String = a.db.query_one("SELECT causal.create_group('shop')", &[]).unwrap().get(0);
    a.db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, payload text NOT NULL);
         SELECT causal.replicate('shop', 'items');
         CREATE PROCEDURE one_each(n int) LANGUAGE plpgsql AS $$
         BEGIN FOR i IN 1..n LOOP INSERT INTO items VALUES (i, 'row ' || i); COMMIT; END LOOP; END $$;",
    )
    .unwrap();
    let key = d.public_key();
    a.db.execute("SELECT causal.add_member('shop', $1)", &[&key]).unwrap();
    a.db.batch_execute(&format!("CALL one_each({n})")).unwrap();
    let total = a.entries();
    assert!(total > i64::from(n));
    let want = a.frontier(&g);
    mesh(&mut [&mut a, &mut d]);
    d.db.execute("SELECT causal.join_group($1)", &[&g]).unwrap();
    // Progress shows while it catches up: some imported, some still to come.
    let mut saw_progress = false;
    wait_for("the late joiner catches up", Duration::from_secs(900), || {
        let row = d.db.query_opt("SELECT entries_imported FROM causal.sync_status WHERE group_id = $1", &[&g]);
        if let Ok(Some(r)) = row {
            let imported: i64 = r.get(0);
            saw_progress |= imported > 0 && imported < total;
        }
        (d.frontier(&g) == want).then_some(())
    });
    assert!(saw_progress, "causal.sync_status showed the catch-up in progress");
    assert!(d.cluster.log().contains("still_to_fetch="), "the worker logs its progress");
    assert_eq!(d.count("SELECT count(*) FROM items"), i64::from(n));
    assert_eq!(d.entries(), total);
    let verified: bool = d.db.query_one("SELECT causal.verify('shop')", &[]).unwrap().get(0);
    assert!(verified);
}

/// A node of the previous version (sync protocol /pg_causal/sync/1, as pg_causal 0.1.0 spoke)
/// as the network sees it: it identifies itself so, and otherwise only keeps the connection.
fn previous_version_peer(target: &str, keep: Duration) {
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    use libp2p::{identify, kad, noise, ping, tcp, yamux};

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|key| {
                let id = key.public().to_peer_id();
                causal_sync::node::Behaviour {
                    identify: identify::Behaviour::new(
                        identify::Config::new("/pg_causal/sync/1".into(), key.public())
                            .with_agent_version("pg_causal/0.1.0".into()),
                    ),
                    ping: ping::Behaviour::new(ping::Config::new()),
                    kad: kad::Behaviour::new(id, kad::store::MemoryStore::new(id)),
                    stream: libp2p_stream::Behaviour::new(),
                }
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let target: libp2p::Multiaddr = target.parse().unwrap();
        swarm.dial(target.clone()).unwrap();
        let _ = tokio::time::timeout(keep, async {
            loop {
                match swarm.select_next_some().await {
                    // The worker may not listen yet: it starts again once the extension exists.
                    SwarmEvent::OutgoingConnectionError { .. } => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = swarm.dial(target.clone());
                    }
                    SwarmEvent::ConnectionClosed { num_established: 0, .. } => break,
                    _ => {}
                }
            }
        })
        .await;
    });
}

#[test]
fn a_peer_on_the_previous_sync_protocol_is_named_with_both_versions() {
    let mut a = Node::start("old-peer-a");
    let target = a.address();
    let peer = std::thread::spawn(move || previous_version_peer(&target, Duration::from_secs(30)));
    let error: String = wait_for("A names the peer's version in causal.stat_peers", Duration::from_secs(30), || {
        a.db.query_opt("SELECT last_error FROM causal.stat_peers WHERE last_error IS NOT NULL", &[])
            .ok()
            .flatten()
            .map(|r| r.get(0))
    });
    assert!(error.contains("pg_causal/0.1.0") && error.contains("/pg_causal/sync/1"), "{error}");
    assert!(error.contains("/pg_causal/sync/2"), "{error}");
    assert!(a.cluster.log().contains("they do not sync until both run versions with the same sync protocol"));
    drop(peer);
}
