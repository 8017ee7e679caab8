//! The sync protocol's messages (hhs3 `modules/sync/SPECS.md`) and how they travel.
//!
//! Each message is JSON with a `type` field, as in the spec. Several groups share one libp2p
//! stream between two peers, so every message travels in an envelope naming its group (the
//! spec's topic): `{"topic": "<group id>", "msg": {...}}`. On the stream, each envelope is one
//! frame: a 4-byte big-endian length, then that many bytes of UTF-8 JSON.
//!
//! Decoding is strict and bounded: a frame longer than [`MAX_FRAME`], JSON that is not one of
//! the messages, an unknown field, a hash that is not Base64 of 32 bytes, or a list longer than
//! the protocol allows is an error, never a panic.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The libp2p protocol id of pg_causal's sync streams. Version 2 (pg_causal 0.2.0 on) carries
/// entries covered by a later signature of their author, which version 1 (0.1.0) refuses: the
/// two do not open streams to each other. Peers tell it in identify's protocol version
/// ([`version_mismatch`]).
pub const PROTOCOL: &str = "/pg_causal/sync/2";

/// The agent version this build announces over identify.
pub fn agent_version() -> String {
    format!("pg_causal/{}", env!("CARGO_PKG_VERSION"))
}

/// What to tell the operator about a peer that announced `protocol_version` and `agent` over
/// identify, when it cannot sync with this node (None when it can).
pub fn version_mismatch(protocol_version: &str, agent: &str) -> Option<String> {
    (protocol_version != PROTOCOL).then(|| {
        format!(
            "the peer runs {agent} (sync protocol {protocol_version}) and this node runs {} (sync protocol {PROTOCOL}): \
             they do not sync until both run versions with the same sync protocol",
            agent_version()
        )
    })
}

/// Largest frame accepted (and sent): 8 MiB. A payload larger than this cannot be synced.
pub const MAX_FRAME: usize = 8 * 1024 * 1024;

/// Most hashes in a frontier, a `start`, a `limits` or a payload request.
pub const MAX_HASH_LIST: usize = 4096;

/// Most headers one header request may ask for.
pub const MAX_HEADERS_PER_REQUEST: u32 = 4096;

/// Most headers in one `header-batch`.
pub const MAX_HEADERS_PER_BATCH: usize = 512;

/// A header as the spec sends it: the entry hash and the raw header object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireHeader {
    pub hash: String,
    pub header: Value,
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SyncMsg {
    #[serde(rename_all = "camelCase")]
    NewFrontier { dag_id: String, frontier: Vec<String> },
    #[serde(rename_all = "camelCase")]
    HeaderRequest {
        request_id: String,
        dag_id: String,
        start: Vec<String>,
        limits: Vec<String>,
        max_headers: u32,
        auto_payload: bool,
        /// pg_causal's extension (absent means false): the oldest entries first instead of
        /// the spec's backward walk, with their payloads even when more are left (see
        /// docs/SYNC.md).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        forward: bool,
    },
    #[serde(rename_all = "camelCase")]
    HeaderResponseMeta { request_id: String, header_count: u32, complete: bool, payload_count: u32 },
    #[serde(rename_all = "camelCase")]
    HeaderBatch { request_id: String, sequence: u32, headers: Vec<WireHeader> },
    #[serde(rename_all = "camelCase")]
    PayloadRequest { request_id: String, dag_id: String, hashes: Vec<String> },
    #[serde(rename_all = "camelCase")]
    PayloadResponseMeta { request_id: String, payload_count: u32 },
    #[serde(rename_all = "camelCase")]
    PayloadMsg { request_id: String, sequence: u32, hash: String, payload: Value },
    #[serde(rename_all = "camelCase")]
    CancelRequest { request_id: String },
}

/// A message for one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub topic: String,
    pub msg: SyncMsg,
}

/// Why bytes from a peer are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("frame is not a sync message: {0}")]
    Malformed(String),
    #[error("{field} is not a hash: {value:?}")]
    BadHash { field: &'static str, value: String },
    #[error("{field} lists {len} hashes; at most {MAX_HASH_LIST} are allowed")]
    TooMany { field: &'static str, len: usize },
    #[error("request id must be 1 to 64 characters")]
    BadRequestId,
}

/// Whether `s` is the Base64 text of a 32-byte hash (as `causal_core::EntryHash` prints it).
pub fn is_hash(s: &str) -> bool {
    s.len() == 44 && s.parse::<causal_core::EntryHash>().is_ok()
}

fn hashes(field: &'static str, list: &[String]) -> Result<(), WireError> {
    if list.len() > MAX_HASH_LIST {
        return Err(WireError::TooMany { field, len: list.len() });
    }
    match list.iter().find(|h| !is_hash(h)) {
        Some(bad) => Err(WireError::BadHash { field, value: bad.chars().take(64).collect() }),
        None => Ok(()),
    }
}

fn hash(field: &'static str, h: &str) -> Result<(), WireError> {
    if is_hash(h) {
        Ok(())
    } else {
        Err(WireError::BadHash { field, value: h.chars().take(64).collect() })
    }
}

fn request_id(id: &str) -> Result<(), WireError> {
    if id.is_empty() || id.len() > 64 {
        Err(WireError::BadRequestId)
    } else {
        Ok(())
    }
}

impl SyncMsg {
    /// Checks what serde cannot: hash formats, list lengths, request ids.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            SyncMsg::NewFrontier { dag_id, frontier } => {
                hash("dagId", dag_id)?;
                hashes("frontier", frontier)
            }
            SyncMsg::HeaderRequest { request_id: id, dag_id, start, limits, .. } => {
                request_id(id)?;
                hash("dagId", dag_id)?;
                hashes("start", start)?;
                hashes("limits", limits)
            }
            SyncMsg::HeaderResponseMeta { request_id: id, .. }
            | SyncMsg::PayloadResponseMeta { request_id: id, .. }
            | SyncMsg::CancelRequest { request_id: id } => request_id(id),
            SyncMsg::HeaderBatch { request_id: id, headers, .. } => {
                request_id(id)?;
                if headers.len() > MAX_HEADERS_PER_BATCH {
                    return Err(WireError::TooMany { field: "headers", len: headers.len() });
                }
                headers.iter().try_for_each(|h| hash("headers[].hash", &h.hash))
            }
            SyncMsg::PayloadRequest { request_id: id, dag_id, hashes: list } => {
                request_id(id)?;
                hash("dagId", dag_id)?;
                hashes("hashes", list)
            }
            SyncMsg::PayloadMsg { request_id: id, hash: h, .. } => {
                request_id(id)?;
                hash("hash", h)
            }
        }
    }

    /// The request this message answers or cancels, if any.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            SyncMsg::NewFrontier { .. } => None,
            SyncMsg::HeaderRequest { request_id, .. }
            | SyncMsg::HeaderResponseMeta { request_id, .. }
            | SyncMsg::HeaderBatch { request_id, .. }
            | SyncMsg::PayloadRequest { request_id, .. }
            | SyncMsg::PayloadResponseMeta { request_id, .. }
            | SyncMsg::PayloadMsg { request_id, .. }
            | SyncMsg::CancelRequest { request_id } => Some(request_id),
        }
    }
}

/// `payload-msg` and `header-batch`, the messages a catch-up brings by the hundred thousand,
/// read as plain structs: serde reads an internally tagged enum by first copying the whole
/// message into a generic buffer and then converting that (each payload or header twice).
/// The generic path still decides for any frame these do not take, so both accept exactly the
/// same frames and report the same errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkEnvelope<M> {
    topic: String,
    msg: M,
}

#[derive(Deserialize)]
enum PayloadMsgTag {
    #[serde(rename = "payload-msg")]
    PayloadMsg,
}

#[derive(Deserialize)]
enum HeaderBatchTag {
    #[serde(rename = "header-batch")]
    HeaderBatch,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PayloadMsgFields {
    #[serde(rename = "type")]
    _tag: PayloadMsgTag,
    request_id: String,
    sequence: u32,
    hash: String,
    payload: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeaderBatchFields {
    #[serde(rename = "type")]
    _tag: HeaderBatchTag,
    request_id: String,
    sequence: u32,
    headers: Vec<WireHeader>,
}

/// The bulk messages by the fast path, when the frame starts like one (as ours do: the
/// topic, then the message's type); `None` sends the frame down the generic path.
fn decode_bulk(body: &[u8]) -> Option<Envelope> {
    let head = &body[..body.len().min(160)];
    let starts_with = |tag: &[u8]| head.windows(tag.len()).any(|w| w == tag);
    if starts_with(br#""type":"payload-msg""#) {
        let env: BulkEnvelope<PayloadMsgFields> = serde_json::from_slice(body).ok()?;
        let m = env.msg;
        let msg =
            SyncMsg::PayloadMsg { request_id: m.request_id, sequence: m.sequence, hash: m.hash, payload: m.payload };
        Some(Envelope { topic: env.topic, msg })
    } else if starts_with(br#""type":"header-batch""#) {
        let env: BulkEnvelope<HeaderBatchFields> = serde_json::from_slice(body).ok()?;
        let m = env.msg;
        let msg = SyncMsg::HeaderBatch { request_id: m.request_id, sequence: m.sequence, headers: m.headers };
        Some(Envelope { topic: env.topic, msg })
    } else {
        None
    }
}

impl Envelope {
    /// Decodes one frame's body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Envelope, WireError> {
        if body.len() > MAX_FRAME {
            return Err(WireError::TooLarge(body.len()));
        }
        let env = match decode_bulk(body) {
            Some(env) => env,
            None => serde_json::from_slice(body).map_err(|e| {
                let mut text = e.to_string();
                text.truncate(200);
                WireError::Malformed(text)
            })?,
        };
        hash("topic", &env.topic)?;
        env.msg.validate()?;
        Ok(env)
    }

    /// The frame's body.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain types cannot fail; an empty body would be refused by peers.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The frame: length prefix and body.
    pub fn to_frame(&self) -> Vec<u8> {
        let body = self.encode();
        let mut out = Vec::with_capacity(body.len() + 4);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// Splits a byte stream into frame bodies, refusing an announced length over [`MAX_FRAME`]
/// before reading it. Sans-IO: feed it bytes as they arrive.
#[derive(Default, Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame body, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(WireError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 0.1.0 peer announced identify's protocol version "/pg_causal/1" and the default agent.
    #[test]
    fn a_peer_on_another_sync_protocol_is_named_with_both_versions() {
        assert_eq!(version_mismatch(PROTOCOL, &agent_version()), None);
        let told = version_mismatch("/pg_causal/1", "rust-libp2p/0.57").expect("a mismatch");
        assert!(told.contains("rust-libp2p/0.57") && told.contains("/pg_causal/1"), "{told}");
        assert!(told.contains(&agent_version()) && told.contains(PROTOCOL), "{told}");
    }
    use serde_json::json;

    const H: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    #[test]
    fn messages_use_the_spec_field_names() {
        let m = SyncMsg::HeaderRequest {
            request_id: "r1".into(),
            dag_id: H.into(),
            start: vec![H.into()],
            limits: vec![],
            max_headers: 10,
            auto_payload: true,
            forward: false,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v,
            json!({"type": "header-request", "requestId": "r1", "dagId": H, "start": [H], "limits": [],
                   "maxHeaders": 10, "autoPayload": true})
        );
        // Our extension appears only when set, and a spec peer's request (without it) reads
        // as a backward walk.
        let mut fwd = v.clone();
        fwd["forward"] = json!(true);
        match serde_json::from_value::<SyncMsg>(fwd).unwrap() {
            SyncMsg::HeaderRequest { forward, .. } => assert!(forward),
            other => panic!("{other:?}"),
        }
        let env = Envelope { topic: H.into(), msg: m };
        let mut r = FrameReader::new();
        let frame = env.to_frame();
        r.push(&frame[..5]);
        assert_eq!(r.next_frame().unwrap(), None);
        r.push(&frame[5..]);
        let body = r.next_frame().unwrap().unwrap();
        assert_eq!(Envelope::decode(&body).unwrap(), env);
    }

    /// The fast path for bulk messages accepts exactly what the generic decoder accepts, and
    /// decodes it alike; anything it does not take goes the generic way.
    #[test]
    fn bulk_messages_decode_as_the_generic_decoder_does() {
        let generic =
            |body: &[u8]| -> Result<Envelope, String> { serde_json::from_slice(body).map_err(|e| e.to_string()) };
        let checked = |env: Envelope| -> Result<Envelope, String> {
            hash("topic", &env.topic).map_err(|e| e.to_string())?;
            env.msg.validate().map_err(|e| e.to_string())?;
            Ok(env)
        };
        let payload =
            json!({"ops": [{"insert": {"id": 1, "big": 18446744073709551615u64, "f": 0.5}}], "s": "\u{e9}\n"});
        let header = json!({"payloadHash": H, "prevEntryHashes": {H: ""}});
        let frames: Vec<String> = vec![
            // As our encoder writes them: the fast path.
            Envelope {
                topic: H.into(),
                msg: SyncMsg::PayloadMsg {
                    request_id: "r".into(),
                    sequence: 3,
                    hash: H.into(),
                    payload: payload.clone(),
                },
            }
            .to_text(),
            Envelope {
                topic: H.into(),
                msg: SyncMsg::HeaderBatch {
                    request_id: "r".into(),
                    sequence: 0,
                    headers: vec![WireHeader { hash: H.into(), header: header.clone() }],
                },
            }
            .to_text(),
            // Fields in another order, unknown fields, a duplicate, a bad hash, a wrong type.
            format!(
                r#"{{"msg":{{"payload":{payload},"hash":"{H}","sequence":1,"requestId":"r","type":"payload-msg"}},"topic":"{H}"}}"#
            ),
            format!(
                r#"{{"topic":"{H}","msg":{{"type":"payload-msg","requestId":"r","sequence":1,"hash":"{H}","payload":1,"extra":2}}}}"#
            ),
            format!(
                r#"{{"topic":"{H}","msg":{{"type":"payload-msg","requestId":"r","sequence":1,"hash":"{H}","payload":1}},"x":0}}"#
            ),
            format!(
                r#"{{"topic":"{H}","msg":{{"type":"payload-msg","requestId":"r","sequence":1,"sequence":2,"hash":"{H}","payload":1}}}}"#
            ),
            format!(
                r#"{{"topic":"{H}","msg":{{"type":"payload-msg","requestId":"r","sequence":1,"hash":"nope","payload":1}}}}"#
            ),
            format!(
                r#"{{"topic":"{H}","msg":{{"type":"payload-msg","requestId":"r","sequence":-1,"hash":"{H}","payload":1}}}}"#
            ),
            format!(r#"{{"topic":"{H}","msg":{{"type":"payload-msg","requestId":"r","sequence":1,"hash":"{H}"}}}}"#),
            format!(
                r#"{{"topic":"{H}","msg":{{"type":"header-batch","requestId":"r","sequence":0,"headers":[{{"hash":"{H}","header":{{}},"x":1}}]}}}}"#
            ),
            format!(r#"{{"topic":"{H}","msg":{{"type":"header-batch","requestId":"","sequence":0,"headers":[]}}}}"#),
        ];
        for f in &frames {
            let slow = generic(f.as_bytes());
            if let Some(env) = decode_bulk(f.as_bytes()) {
                assert_eq!(Ok(&env), slow.as_ref(), "{f}");
            }
            let decoded = Envelope::decode(f.as_bytes()).map_err(|e| e.to_string());
            assert_eq!(decoded.ok(), slow.and_then(checked).ok(), "{f}");
        }
        // Our own frames take the fast path.
        assert!(decode_bulk(frames[0].as_bytes()).is_some() && decode_bulk(frames[1].as_bytes()).is_some());
    }

    impl Envelope {
        fn to_text(&self) -> String {
            String::from_utf8(self.encode()).unwrap()
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        let bad = |v: Value| Envelope::decode(v.to_string().as_bytes()).unwrap_err();
        assert!(matches!(bad(json!({"topic": H, "msg": {"type": "nope"}})), WireError::Malformed(_)));
        assert!(matches!(
            bad(json!({"topic": H, "msg": {"type": "new-frontier", "dagId": H, "frontier": ["x"]}})),
            WireError::BadHash { .. }
        ));
        assert!(matches!(
            bad(json!({"topic": H, "msg": {"type": "new-frontier", "dagId": H, "frontier": [], "extra": 1}})),
            WireError::Malformed(_)
        ));
        assert!(matches!(
            bad(
                json!({"topic": H, "msg": {"type": "new-frontier", "dagId": H, "frontier": vec![H; MAX_HASH_LIST + 1]}})
            ),
            WireError::TooMany { .. }
        ));
        assert!(matches!(
            bad(json!({"topic": H, "msg": {"type": "cancel-request", "requestId": ""}})),
            WireError::BadRequestId
        ));
        let mut r = FrameReader::new();
        r.push(&(MAX_FRAME as u32 + 1).to_be_bytes());
        assert!(matches!(r.next_frame(), Err(WireError::TooLarge(_))));
    }
}
