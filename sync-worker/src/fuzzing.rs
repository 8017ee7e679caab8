//! The body of the `sync_frames` fuzz target (`fuzz/`), here so the saved corpus and crash
//! inputs also run as ordinary tests (`tests/fuzz_corpus.rs`). Bytes from a peer's stream must
//! never panic the decoder or the protocol, whatever they are.

use crate::session::{Config, Session};
use crate::wire::{Envelope, FrameReader};

/// The fuzz targets by name, for the corpus replay.
pub const TARGETS: &[causal_core::fuzzing::Target] = &[("sync_frames", sync_frames)];

/// A peer's byte stream: split into frames (in pieces of varying size, as a socket delivers
/// them), each decoded strictly (a decoded message must encode back to an equal one) and fed
/// to a session that holds a group, as if from a connected peer.
pub fn sync_frames(data: &[u8]) {
    const GROUP: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let mut session: Session<u8> = Session::new(Config::default(), "fuzz");
    session.local_frontier(GROUP, "blake3", &[GROUP.to_string()], 1);
    session.peer_connected(&7, 1);
    let mut reader = FrameReader::new();
    let mut rest = data;
    let mut now = 2;
    while !rest.is_empty() {
        let take = 1 + (rest[0] as usize % 97).min(rest.len() - 1);
        reader.push(&rest[..take]);
        rest = &rest[take..];
        loop {
            match reader.next_frame() {
                Ok(Some(body)) => {
                    if let Ok(env) = Envelope::decode(&body) {
                        let again = Envelope::decode(&env.encode()).expect("an encoded message decodes");
                        assert_eq!(again, env);
                    }
                    session.frame(&7, &body, now);
                    now += 1;
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        while session.poll_action().is_some() {}
    }
    session.tick(now + 60_000);
    while session.poll_action().is_some() {}
}
