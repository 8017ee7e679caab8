//! `causal-sync`: pg_causal's network edge. It exchanges group DAGs with peers over libp2p
//! and ingests them through the extension's validated import path.
//!
//! - [`wire`]: the sync protocol's messages, their envelope and framing (strict decoding);
//! - [`session`]: the protocol as an I/O-free state machine;
//! - [`score`]: penalties, bans and the frame budget for misbehaving peers.

pub mod score;
pub mod session;
pub mod wire;

use clap::Parser;

/// Command line of the standalone sync worker.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(name = "causal-sync", version, about = "Peer-to-peer sync worker for pg_causal")]
pub struct Args {
    /// PostgreSQL connection string of the database that holds the pg_causal groups.
    #[arg(long, value_name = "URL")]
    pub database: String,
    /// Multiaddr to listen on (repeatable), e.g. /ip4/127.0.0.1/tcp/4001.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Multiaddr of a peer to dial (repeatable), ending in /p2p/<peer id>.
    #[arg(long = "peer", value_name = "MULTIADDR")]
    pub peers: Vec<String>,
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
    fn database_is_required() {
        assert!(Args::try_parse_from(["causal-sync"]).is_err());
    }
}
