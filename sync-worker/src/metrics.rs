//! The worker's figures as Prometheus text (exposition format 0.0.4), served on an optional
//! address by the standalone `causal-sync` (`--metrics 127.0.0.1:9187`).
//!
//! The figures are those of the status report the worker writes to the database (the views
//! `causal.stat_worker`, `causal.stat_peers` and `causal.sync_status`): [`prometheus_text`]
//! turns one report into text, and [`serve`] answers every HTTP request on the address with the
//! latest text. It reads at most [`MAX_REQUEST`] bytes of a request, gives a client
//! [`CLIENT_TIMEOUT`] to send it, and serves one client at a time: a scraper, not the public.

use serde_json::Value;

/// The most bytes of an HTTP request read before answering.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request.
pub const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A label value, escaped as the exposition format requires.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.0.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
            self.0.push_str(&format!("{{{}}}", inner.join(",")));
        }
        self.0.push_str(&format!(" {value}\n"));
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().or_else(|| v.as_bool().map(|b| if b { 1.0 } else { 0.0 })).unwrap_or(0.0)
}

/// One status report (`node::status_report`) as Prometheus text, at `now_ms`.
pub fn prometheus_text(report: &Value, now_ms: u64) -> String {
    let mut t = Text(String::new());
    t.family("causal_sync_up", "gauge", "1 while the sync worker runs.");
    t.sample("causal_sync_up", &[], 1.0);
    t.family("causal_sync_uptime_seconds", "gauge", "Seconds since the worker started.");
    let started = num(&report["started_at_ms"]);
    t.sample("causal_sync_uptime_seconds", &[], ((now_ms as f64 - started) / 1000.0).max(0.0));
    t.family("causal_sync_queue_depth", "gauge", "Items waiting in each bounded queue of the worker.");
    if let Some(queues) = report["queues"].as_object() {
        for (q, depth) in queues {
            t.sample("causal_sync_queue_depth", &[("queue", q)], num(depth));
        }
    }
    t.family(
        "causal_sync_notifications_dropped_total",
        "counter",
        "Database notifications dropped (a resync follows).",
    );
    t.sample("causal_sync_notifications_dropped_total", &[], num(&report["notifications_dropped"]));
    t.family("causal_sync_resyncs_total", "counter", "Full rereads of the database state after lost signals.");
    t.sample("causal_sync_resyncs_total", &[], num(&report["resyncs"]));
    let peers = report["peers"].as_array().cloned().unwrap_or_default();
    let per_peer: [(&str, &str, &str, &str); 8] = [
        ("causal_sync_peer_connected", "gauge", "connected", "1 while connected to the peer."),
        ("causal_sync_peer_bytes_received_total", "counter", "bytes_in", "Sync frame bytes received from the peer."),
        ("causal_sync_peer_bytes_sent_total", "counter", "bytes_out", "Sync frame bytes sent to the peer."),
        (
            "causal_sync_peer_entries_received_total",
            "counter",
            "entries_received",
            "Entries from the peer stored here.",
        ),
        ("causal_sync_peer_entries_sent_total", "counter", "entries_sent", "Entry payloads sent to the peer."),
        (
            "causal_sync_peer_entries_rejected_total",
            "counter",
            "entries_rejected",
            "Entries from the peer refused here.",
        ),
        ("causal_sync_peer_score", "gauge", "score", "Misbehaviour score (banned at 100)."),
        ("causal_sync_peer_banned", "gauge", "banned_until_ms", "1 while the peer is banned."),
    ];
    for (name, kind, field, help) in per_peer {
        t.family(name, kind, help);
        for p in &peers {
            let peer = p["peer_id"].as_str().unwrap_or("");
            let value = if field == "banned_until_ms" {
                if num(&p[field]) > now_ms as f64 {
                    1.0
                } else {
                    0.0
                }
            } else {
                num(&p[field])
            };
            t.sample(name, &[("peer", peer)], value);
        }
    }
    let groups = report["groups"].as_array().cloned().unwrap_or_default();
    let per_group: [(&str, &str, &str, &str); 3] = [
        (
            "causal_sync_group_entries_to_fetch",
            "gauge",
            "to_fetch",
            "Headers fetched whose entries are not stored yet.",
        ),
        (
            "causal_sync_group_entries_imported_total",
            "counter",
            "imported",
            "Entries imported since the worker started.",
        ),
        ("causal_sync_group_peers", "gauge", "peers", "Connected peers that have the group."),
    ];
    for (name, kind, field, help) in per_group {
        t.family(name, kind, help);
        for g in &groups {
            t.sample(name, &[("group", g["group"].as_str().unwrap_or(""))], num(&g[field]));
        }
    }
    t.0
}

/// Answers every HTTP request on `listener` with the latest text from `latest`, until the
/// sender is dropped.
#[cfg(feature = "net")]
pub async fn serve(listener: tokio::net::TcpListener, mut latest: tokio::sync::watch::Receiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            changed = latest.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return, // the worker stopped
            },
        };
        // Read the request head (bounded, with a deadline); whatever it asks, the answer is the
        // metrics.
        let mut buf = vec![0u8; MAX_REQUEST];
        let mut read = 0;
        let head = tokio::time::timeout(CLIENT_TIMEOUT, async {
            while read < buf.len() {
                match stream.read(&mut buf[read..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
                if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        })
        .await;
        if head.is_err() {
            continue;
        }
        let body = latest.borrow().clone();
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(CLIENT_TIMEOUT, stream.write_all(response.as_bytes())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report() -> Value {
        json!({"started_at_ms": 1_000, "queues": {"inbound_frames": 3, "database_imports": 1},
               "notifications_dropped": 2, "resyncs": 1,
               "peers": [{"peer_id": "12D3Koo\"x", "connected": true, "bytes_in": 2048, "bytes_out": 512,
                          "entries_received": 10, "entries_sent": 7, "entries_rejected": 1, "score": 40,
                          "banned_until_ms": 99_000}],
               "groups": [{"group": "g=", "to_fetch": 5, "imported": 100, "peers": 1}]})
    }

    #[test]
    fn a_report_becomes_prometheus_text() {
        let text = prometheus_text(&report(), 11_000);
        for line in [
            "causal_sync_up 1",
            "causal_sync_uptime_seconds 10",
            "causal_sync_queue_depth{queue=\"inbound_frames\"} 3",
            "causal_sync_notifications_dropped_total 2",
            "causal_sync_peer_bytes_received_total{peer=\"12D3Koo\\\"x\"} 2048",
            "causal_sync_peer_entries_sent_total{peer=\"12D3Koo\\\"x\"} 7",
            "causal_sync_peer_banned{peer=\"12D3Koo\\\"x\"} 1",
            "causal_sync_group_entries_imported_total{group=\"g=\"} 100",
            "# TYPE causal_sync_peer_bytes_sent_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        // Every sample line is `name{labels} value` with a number.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap_or("");
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
        assert!(prometheus_text(&json!({}), 0).contains("causal_sync_up 1"));
    }

    #[cfg(feature = "net")]
    #[tokio::test]
    async fn the_server_answers_with_the_latest_text() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(String::from("first 1\n"));
        let server = tokio::spawn(serve(listener, rx));
        tx.send(String::from("causal_sync_up 1\n")).unwrap();
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\ncausal_sync_up 1\n"), "{got}");
        // A client that never sends its request does not hold the server up.
        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).await.unwrap();
        assert!(got.contains("causal_sync_up 1"), "{got}");
        drop(tx);
        server.await.unwrap();
    }
}
