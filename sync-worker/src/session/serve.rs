//! Serving a peer: the headers and payloads it asked for, read by the caller from the database.

use super::*;

impl<P: Clone + Eq + StdHash + Ord + Debug> Session<P> {
    pub(super) fn start_serving(&mut self, peer: &P, request_id: &str, now_ms: u64) -> bool {
        let limit = self.config.max_serving_per_peer;
        let s = self.serving.entry(peer.clone()).or_default();
        if s.len() >= limit || !s.insert(request_id.to_string()) {
            self.penalize(peer, Offence::Flood, now_ms);
            return false;
        }
        true
    }

    pub(super) fn serving_done(&mut self, peer: &P, request_id: &str) -> bool {
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

    pub(super) fn send_payloads(&mut self, peer: &P, group: &str, request_id: &str, payloads: Vec<(String, Value)>) {
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
}
