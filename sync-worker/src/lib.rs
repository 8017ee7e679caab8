//! `causal-sync`: pg_causal's network edge. It exchanges group DAGs with peers over libp2p
//! and ingests them through the extension's validated import path.
//!
//! - [`wire`]: the sync protocol's messages, their envelope and framing (strict decoding);
//! - [`session`]: the protocol as an I/O-free state machine;
//! - [`score`]: penalties, bans and the frame budget for misbehaving peers;
//! - [`db`]: the database side (tokio-postgres calls to the extension's SQL functions);
//! - [`node`]: the running worker (libp2p Swarm, streams, database tasks, status reports);
//! - [`metrics`]: the status as Prometheus text, served by `causal-sync --metrics`.
//!
//! The same [`node::run`] serves the Postgres background worker (in the extension) and the
//! standalone `causal-sync` binary.

#[cfg(feature = "net")]
pub mod db;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
#[cfg(feature = "net")]
pub mod node;
pub mod score;
pub mod session;
pub mod wire;

#[cfg(feature = "net")]
pub use libp2p::Multiaddr;
#[cfg(feature = "net")]
pub use node::{run, CommitWakeups, WorkerConfig, WorkerError};

use clap::Parser;

/// Command line of the standalone sync worker.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "causal-sync",
    version,
    about = "Peer-to-peer sync worker for pg_causal",
    long_about = "Connects a database that has pg_causal to its peers over libp2p and keeps its groups in sync, \
                  for deployments that cannot add pg_causal to shared_preload_libraries (where the background \
                  worker does the same job). It connects as a role that can read causal.identity_keys (a \
                  superuser or the extension's owner): the node identity is its libp2p identity. Peers added \
                  with causal.add_peer are dialled too; causal.peers and causal.sync_status show its state. \
                  Logs go to stderr (RUST_LOG=debug for more)."
)]
pub struct Args {
    /// PostgreSQL connection string of the database that holds the pg_causal groups
    /// (postgres://user@host/db, or key=value form).
    #[arg(long, value_name = "URL")]
    pub database: String,
    /// Multiaddr to listen on (repeatable), e.g. /ip4/127.0.0.1/tcp/4001.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Multiaddr of a peer to dial (repeatable), ending in /p2p/<peer id>.
    #[arg(long = "peer", value_name = "MULTIADDR")]
    pub peers: Vec<String>,
    /// Address to serve the worker's figures on as Prometheus text (any path), e.g.
    /// 127.0.0.1:9187. Off by default.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<String>,
}

#[cfg(feature = "net")]
impl Args {
    /// The worker configuration these arguments describe.
    pub fn config(&self) -> Result<WorkerConfig, String> {
        let parse = |a: &String| a.parse().map_err(|e| format!("{a} is not a multiaddr: {e}"));
        Ok(WorkerConfig {
            conninfo: self.database.clone(),
            listen: self.listen.iter().map(parse).collect::<Result<_, _>>()?,
            peers: self.peers.iter().map(parse).collect::<Result<_, _>>()?,
            report_every: std::time::Duration::from_secs(1),
            metrics: self
                .metrics
                .as_ref()
                .map(|a| a.parse().map_err(|e| format!("--metrics {a} is not a host:port address: {e}")))
                .transpose()?,
            // A process outside the server has no latch to be woken by: it polls.
            commit_wakeups: None,
            seal_poll: crate::node::SEAL_POLL,
        })
    }
}

/// Logs to stderr, at `RUST_LOG` or info.
#[cfg(feature = "net")]
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,libp2p=warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repeated_addresses() {
        let a = Args::try_parse_from([
            "causal-sync",
            "--database",
            "postgres://localhost/db",
            "--listen",
            "/ip4/127.0.0.1/tcp/4001",
            "--peer",
            "/ip4/127.0.0.1/tcp/4002/p2p/x",
            "--peer",
            "/ip4/127.0.0.1/tcp/4003/p2p/y",
        ])
        .unwrap();
        assert_eq!(a.peers.len(), 2);
        assert_eq!(a.listen, vec!["/ip4/127.0.0.1/tcp/4001"]);
    }

    #[test]
    fn metrics_address_is_optional_and_checked() {
        let base = ["causal-sync", "--database", "postgres://localhost/db"];
        assert_eq!(Args::try_parse_from(base).unwrap().config().unwrap().metrics, None);
        let with = |a: &str| Args::try_parse_from(base.iter().copied().chain(["--metrics", a])).unwrap().config();
        assert_eq!(with("127.0.0.1:9187").unwrap().metrics, Some("127.0.0.1:9187".parse().unwrap()));
        assert!(with("localhost").is_err());
    }

    #[test]
    fn database_is_required() {
        assert!(Args::try_parse_from(["causal-sync"]).is_err());
    }
}
