//! The payloads of a group's DAG entries, and how they are signed.
//!
//! Every entry is one atomic unit (a transaction, a membership change, a schema change). Its
//! payload is a signed envelope:
//!
//! ```json
//! {"author": "<key id>", "ops": [ ... ], "signature": "<base64>"}
//! ```
//!
//! The genesis entry also carries the group's parameters and the creator's public key:
//!
//! ```json
//! {"action": "create", "type": "causal/group", "name": "shop", "hashAlgorithm": "blake3",
//!  "seed": "<random>", "admin": {"keyId": "...", "publicKey": "..."},
//!  "author": "<key id>", "ops": [], "signature": "..."}
//! ```
//!
//! **What is signed.** The signature covers the group id, the author, the operations *and the
//! entry's predecessor set*:
//!
//! ```text
//! SHA-256("pg_causal/entry-signature/v1\n" + canonical({"group", "author", "ops", "prevEntryHashes", ["genesis"]}))
//! ```
//!
//! (The 32-byte digest is what ed25519 signs, so signing costs the same for a one-row entry
//! and a thousand-row one.)
//!
//! **Entries covered by a later signature.** As in Hypercore, where one signature covers a
//! whole appended batch, an entry may carry no `signature` when a later entry by the *same
//! author* vouches for it: `{"author", "ops"}` only. A signature covers the entry's
//! predecessor hashes, and a hash covers the entry's payload (author and operations) and its
//! own predecessors, so an author's signature on an entry establishes every unsigned entry of
//! that author reached from it through unsigned entries of that author
//! ([`crate::signature_cover`]). An unsigned entry that no signature of its author covers is
//! invalid. The sealer signs the last entry of each author's run (and at least every
//! [`crate::signature_cover::MAX_UNSIGNED_RUN`] + 1 entries); the others go unsigned.
//!
//! So a signed operation cannot be replayed at another position or in another group: moving it
//! changes `prevEntryHashes` (or `group`) and breaks the signature. (The hhs3 authorship helper
//! signs the payload alone, which allows exactly that replay.) The genesis has no group id yet
//! (it *is* the id), so it signs `group: ""` and its own parameters.

use serde_json::{json, Map, Value};

use crate::entry::Position;
use crate::hash::GroupId;
use crate::identity::{IdentityError, KeyId, Keypair, PublicKey, Signature};
use crate::json::{canonical_string, JsonError};

/// Domain separation for entry signatures.
pub const SIGNATURE_CONTEXT: &str = "pg_causal/entry-signature/v1\n";
/// The `type` of a group's genesis payload.
pub const GROUP_TYPE: &str = "causal/group";

/// One operation inside an entry.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Adds a member (or changes its admin flag).
    AddMember { public_key: PublicKey, name: Option<String>, admin: bool },
    /// Removes a member.
    RemoveMember { key_id: KeyId },
    /// Records the replicated schema of a table (a barrier operation).
    Schema { table: String, schema: Value },
    /// Records a rule for an operation on a table (a barrier operation).
    Rule { table: String, operation: String, rule: String },
    /// Stops replicating a table (a barrier operation).
    Unreplicate { table: String },
    /// Inserts a row (non-NULL columns only).
    Insert { table: String, row: Map<String, Value> },
    /// Updates the columns in `set` (and sets those in `unset` to NULL) of the row with `key`.
    Update { table: String, key: Map<String, Value>, set: Map<String, Value>, unset: Vec<String> },
    /// Deletes the row with `key` (a barrier operation).
    Delete { table: String, key: Map<String, Value> },
}

/// The group parameters a genesis payload records.
#[derive(Clone, Debug, PartialEq)]
pub struct Genesis {
    pub name: String,
    pub hash_algorithm: String,
    pub seed: String,
    pub admin: PublicKey,
}

/// A decoded, signature-bearing payload.
#[derive(Clone, Debug, PartialEq)]
pub struct SignedPayload {
    /// Boxed: only a group's first entry has one, and payloads move often. Inline, a genesis
    /// made every payload 384 bytes; boxed, `memcpy` in a profile of a single-row import's
    /// backend fell from 72 to 56 of about 940 samples.
    pub genesis: Option<Box<Genesis>>,
    pub author: KeyId,
    pub ops: Vec<Op>,
    /// None when a later entry of the same author covers this one ([`crate::signature_cover`]).
    pub signature: Option<Signature>,
}

/// Why a payload is not a valid group payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload field {0} is missing or malformed")]
    Malformed(String),
    #[error("unknown operation {0:?}")]
    UnknownOp(String),
    #[error("bad key material in {field}: {source}")]
    Key { field: &'static str, source: IdentityError },
    #[error("the payload has no canonical form: {0}")]
    Json(#[from] JsonError),
    #[error("the signature does not verify for author {author} at this position")]
    BadSignature { author: KeyId },
    #[error("the entry is unsigned, and no later entry of its author {author} covers it with a signature")]
    Uncovered { author: KeyId },
    #[error("the genesis author {author} is not the admin it names ({admin})")]
    GenesisAuthor { author: KeyId, admin: KeyId },
}

fn malformed(what: &str) -> PayloadError {
    PayloadError::Malformed(what.to_string())
}

fn str_field<'a>(m: &'a Map<String, Value>, key: &str) -> Result<&'a str, PayloadError> {
    m.get(key).and_then(Value::as_str).ok_or_else(|| malformed(key))
}

fn obj_field<'a>(m: &'a Map<String, Value>, key: &str) -> Result<&'a Map<String, Value>, PayloadError> {
    m.get(key).and_then(Value::as_object).ok_or_else(|| malformed(key))
}

impl Op {
    /// The table and the row (an insert's) or key (an update's or delete's) a row operation
    /// names; `None` for the others.
    pub fn row(&self) -> Option<(&str, &Map<String, Value>)> {
        match self {
            Op::Insert { table, row } => Some((table, row)),
            Op::Update { table, key, .. } | Op::Delete { table, key } => Some((table, key)),
            _ => None,
        }
    }

    /// The operation's JSON form.
    pub fn to_value(&self) -> Value {
        self.clone().into_value()
    }

    /// [`Op::to_value`], moving the operation's rows and keys into the value instead of
    /// copying them.
    pub fn into_value(self) -> Value {
        fn object(fields: Vec<(&str, Value)>) -> Value {
            Value::Object(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        }
        match self {
            Op::AddMember { public_key, name, admin } => {
                let mut fields = vec![
                    ("op", json!("add-member")),
                    ("publicKey", json!(public_key.to_b64())),
                    ("keyId", json!(public_key.key_id().to_b64())),
                    ("admin", json!(admin)),
                ];
                if let Some(n) = name {
                    fields.push(("name", Value::String(n)));
                }
                object(fields)
            }
            Op::RemoveMember { key_id } => {
                object(vec![("op", json!("remove-member")), ("keyId", json!(key_id.to_b64()))])
            }
            Op::Schema { table, schema } => {
                object(vec![("op", json!("schema")), ("table", Value::String(table)), ("schema", schema)])
            }
            Op::Rule { table, operation, rule } => object(vec![
                ("op", json!("rule")),
                ("table", Value::String(table)),
                ("operation", Value::String(operation)),
                ("rule", Value::String(rule)),
            ]),
            Op::Unreplicate { table } => object(vec![("op", json!("unreplicate")), ("table", Value::String(table))]),
            Op::Insert { table, row } => {
                object(vec![("op", json!("insert")), ("table", Value::String(table)), ("row", Value::Object(row))])
            }
            Op::Update { table, key, set, unset } => object(vec![
                ("op", json!("update")),
                ("table", Value::String(table)),
                ("key", Value::Object(key)),
                ("set", Value::Object(set)),
                ("unset", Value::Array(unset.into_iter().map(Value::String).collect())),
            ]),
            Op::Delete { table, key } => {
                object(vec![("op", json!("delete")), ("table", Value::String(table)), ("key", Value::Object(key))])
            }
        }
    }

    /// Decodes an operation strictly: every field its kind has, and no other, with keys in
    /// their canonical Base64 form. So every operation this accepts encodes back
    /// ([`Op::to_value`]) to exactly the JSON it came from: the operations the signature
    /// covers (re-encoded) are the ones the payload hash covers (as received). A lenient
    /// decoder let anyone add a field to another author's signed operation and rehash the
    /// entry: a second, validly signed entry at the same position with the same operations.
    pub fn from_value(v: &Value) -> Result<Op, PayloadError> {
        let m = v.as_object().ok_or_else(|| malformed("ops[]"))?;
        let kind = checked_kind(m)?;
        let table = || str_field(m, "table").map(str::to_string);
        Ok(match kind {
            "add-member" => {
                let text = str_field(m, "publicKey")?;
                let public_key =
                    PublicKey::from_b64(text).map_err(|source| PayloadError::Key { field: "publicKey", source })?;
                if public_key.to_b64() != text {
                    return Err(malformed("publicKey (not in canonical Base64)"));
                }
                if str_field(m, "keyId")? != public_key.key_id().to_b64() {
                    return Err(malformed("keyId (does not match publicKey)"));
                }
                let name = match m.get("name") {
                    None => None,
                    Some(n) => Some(n.as_str().ok_or_else(|| malformed("name"))?.to_string()),
                };
                Op::AddMember {
                    public_key,
                    name,
                    admin: m.get("admin").and_then(Value::as_bool).ok_or_else(|| malformed("admin"))?,
                }
            }
            "remove-member" => {
                let text = str_field(m, "keyId")?;
                let key_id: KeyId = text.parse().map_err(|_| malformed("keyId"))?;
                if key_id.to_b64() != text {
                    return Err(malformed("keyId (not in canonical Base64)"));
                }
                Op::RemoveMember { key_id }
            }
            "schema" => {
                Op::Schema { table: table()?, schema: m.get("schema").cloned().ok_or_else(|| malformed("schema"))? }
            }
            "rule" => Op::Rule {
                table: table()?,
                operation: str_field(m, "operation")?.to_string(),
                rule: str_field(m, "rule")?.to_string(),
            },
            "unreplicate" => Op::Unreplicate { table: table()? },
            "insert" => Op::Insert { table: table()?, row: obj_field(m, "row")?.clone() },
            "update" => Op::Update {
                table: table()?,
                key: obj_field(m, "key")?.clone(),
                set: obj_field(m, "set")?.clone(),
                unset: m
                    .get("unset")
                    .and_then(Value::as_array)
                    .ok_or_else(|| malformed("unset"))?
                    .iter()
                    .map(|c| c.as_str().map(str::to_string).ok_or_else(|| malformed("unset[]")))
                    .collect::<Result<_, _>>()?,
            },
            "delete" => Op::Delete { table: table()?, key: obj_field(m, "key")?.clone() },
            other => return Err(PayloadError::UnknownOp(other.chars().take(32).collect())),
        })
    }

    /// [`Op::from_value`] on a value the caller gives up: a row operation's maps are moved
    /// out rather than copied (decoding stored payloads to place them copied every row).
    /// Accepts and refuses exactly what [`Op::from_value`] does.
    pub fn from_owned(v: Value) -> Result<Op, PayloadError> {
        let Value::Object(mut m) = v else { return Err(malformed("ops[]")) };
        let kind = match checked_kind(&m)? {
            "insert" => RowOpKind::Insert,
            "update" => RowOpKind::Update,
            "delete" => RowOpKind::Delete,
            _ => return Op::from_value(&Value::Object(m)),
        };
        let table = str_field(&m, "table")?.to_string();
        let mut take = |key: &str| match m.remove(key) {
            Some(Value::Object(o)) => Ok(o),
            _ => Err(malformed(key)),
        };
        Ok(match kind {
            RowOpKind::Insert => Op::Insert { table, row: take("row")? },
            RowOpKind::Update => {
                let (key, set) = (take("key")?, take("set")?);
                let unset = match m.remove("unset") {
                    Some(Value::Array(cols)) => cols
                        .into_iter()
                        .map(|c| match c {
                            Value::String(c) => Ok(c),
                            _ => Err(malformed("unset[]")),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(malformed("unset")),
                };
                Op::Update { table, key, set, unset }
            }
            RowOpKind::Delete => Op::Delete { table, key: take("key")? },
        })
    }
}

enum RowOpKind {
    Insert,
    Update,
    Delete,
}

/// The kind of operation `m` is, once its fields are exactly those of that kind.
fn checked_kind(m: &Map<String, Value>) -> Result<&str, PayloadError> {
    let kind = str_field(m, "op")?;
    let fields: &[&str] = match kind {
        "add-member" => &["op", "publicKey", "keyId", "admin", "name"],
        "remove-member" => &["op", "keyId"],
        "schema" => &["op", "table", "schema"],
        "rule" => &["op", "table", "operation", "rule"],
        "unreplicate" => &["op", "table"],
        "insert" => &["op", "table", "row"],
        "update" => &["op", "table", "key", "set", "unset"],
        "delete" => &["op", "table", "key"],
        other => return Err(PayloadError::UnknownOp(other.chars().take(32).collect())),
    };
    if let Some(k) = m.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(malformed(&format!("ops[].{k} (unexpected in a {kind} operation)")));
    }
    Ok(kind)
}

/// A payload's genesis fields, if it has them, once its fields are exactly those allowed.
fn checked_header(m: &Map<String, Value>) -> Result<Option<Genesis>, PayloadError> {
    let genesis = if m.contains_key("action") {
        if str_field(m, "action")? != "create" || str_field(m, "type")? != GROUP_TYPE {
            return Err(malformed("action/type"));
        }
        let admin = obj_field(m, "admin")?;
        let public_key = PublicKey::from_b64(str_field(admin, "publicKey")?)
            .map_err(|source| PayloadError::Key { field: "admin.publicKey", source })?;
        if str_field(admin, "keyId")? != public_key.key_id().to_b64() {
            return Err(malformed("admin.keyId (does not match admin.publicKey)"));
        }
        Some(Genesis {
            name: str_field(m, "name")?.to_string(),
            hash_algorithm: str_field(m, "hashAlgorithm")?.to_string(),
            seed: str_field(m, "seed")?.to_string(),
            admin: public_key,
        })
    } else {
        None
    };
    let allowed: &[&str] = if genesis.is_some() {
        &["action", "type", "name", "hashAlgorithm", "seed", "admin", "author", "ops", "signature"]
    } else {
        &["author", "ops", "signature"]
    };
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(malformed(&format!("{k} (unexpected)")));
    }
    Ok(genesis)
}

/// A payload from its decoded header and operations, and its signature and author.
fn finish(m: &Map<String, Value>, genesis: Option<Genesis>, ops: Vec<Op>) -> Result<SignedPayload, PayloadError> {
    // Only a genesis must carry its signature: it has no author before it to cover it.
    let signature = match m.get("signature") {
        None if genesis.is_none() => None,
        _ => Some(
            Signature::from_b64(str_field(m, "signature")?)
                .map_err(|source| PayloadError::Key { field: "signature", source })?,
        ),
    };
    Ok(SignedPayload {
        genesis: genesis.map(Box::new),
        author: str_field(m, "author")?.parse().map_err(|_| malformed("author"))?,
        ops,
        signature,
    })
}

fn genesis_fields(g: &Genesis) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("action".into(), json!("create"));
    m.insert("type".into(), json!(GROUP_TYPE));
    m.insert("name".into(), json!(g.name));
    m.insert("hashAlgorithm".into(), json!(g.hash_algorithm));
    m.insert("seed".into(), json!(g.seed));
    m.insert("admin".into(), json!({"keyId": g.admin.key_id().to_b64(), "publicKey": g.admin.to_b64()}));
    m
}

/// The exact bytes an author signs: the SHA-256 digest of the domain-separated message.
pub fn signing_message(
    group: Option<&GroupId>,
    genesis: Option<&Genesis>,
    author: &KeyId,
    ops: &[Op],
    prev: &Position,
) -> Result<Vec<u8>, JsonError> {
    let prev_set: Map<String, Value> = prev.iter().map(|h| (h.to_b64(), json!(""))).collect();
    let mut m = Map::new();
    m.insert("group".into(), json!(group.map(GroupId::to_b64).unwrap_or_default()));
    m.insert("author".into(), json!(author.to_b64()));
    m.insert("ops".into(), Value::Array(ops.iter().map(Op::to_value).collect()));
    m.insert("prevEntryHashes".into(), Value::Object(prev_set));
    if let Some(g) = genesis {
        m.insert("genesis".into(), Value::Object(genesis_fields(g)));
    }
    let mut message = SIGNATURE_CONTEXT.as_bytes().to_vec();
    message.extend_from_slice(canonical_string(&Value::Object(m))?.as_bytes());
    Ok(crate::hash::HashAlgorithm::Sha256.digest(&message).as_bytes().to_vec())
}

/// Signs the operations `ops_value` (their JSON array) by `keypair` at `prev` of `group`,
/// serializing them once: returns the author, the signature, the payload's value and its
/// canonical text. The object keys sort as `author` < `group` < `ops` < `prevEntryHashes` <
/// `signature`, so the canonical ops text is spliced into both the signed message and the
/// payload's canonical text.
fn sign_ops_value(
    keypair: &Keypair,
    group: &GroupId,
    ops_value: Value,
    prev: &Position,
) -> Result<(KeyId, Signature, Value, String), JsonError> {
    let ops_text = canonical_string(&ops_value)?;
    let signed = sign_ops_text(keypair, group, &ops_text, prev)?;
    let canonical = signed.payload_text(&ops_text);
    let mut m = Map::new();
    m.insert("author".into(), json!(signed.author.to_b64()));
    m.insert("ops".into(), ops_value);
    m.insert("signature".into(), json!(signed.signature.to_b64()));
    Ok((signed.author, signed.signature, Value::Object(m), canonical))
}

/// A signature over operations already in canonical text, and the payload's other members.
pub(crate) struct SignedOps {
    pub author: KeyId,
    pub signature: Signature,
    /// The canonical texts of the author's key id and of the signature (JSON strings).
    author_text: String,
    signature_text: String,
}

impl SignedOps {
    /// The payload `{"author", "ops", "signature"}` with `ops_text` as its operations (the
    /// canonical text if `ops_text` is canonical; any JSON text of the operations otherwise).
    pub fn payload_text(&self, ops_text: &str) -> String {
        let mut out = String::with_capacity(ops_text.len() + 200);
        out.push_str("{\"author\":");
        out.push_str(&self.author_text);
        out.push_str(",\"ops\":");
        out.push_str(ops_text);
        out.push_str(",\"signature\":");
        out.push_str(&self.signature_text);
        out.push('}');
        out
    }
}

/// Signs operations whose canonical array text is `ops_text` by `keypair` at `prev` of
/// `group`: the signed message is the canonical text of `{"author", "group", "ops",
/// "prevEntryHashes"}` after [`SIGNATURE_CONTEXT`], the same bytes [`signing_message`] hashes.
pub(crate) fn sign_ops_text(
    keypair: &Keypair,
    group: &GroupId,
    ops_text: &str,
    prev: &Position,
) -> Result<SignedOps, JsonError> {
    let author = keypair.public().key_id();
    let author_text = canonical_string(&json!(author.to_b64()))?;
    let prev_set: Map<String, Value> = prev.iter().map(|h| (h.to_b64(), json!(""))).collect();
    let mut message = String::with_capacity(SIGNATURE_CONTEXT.len() + ops_text.len() + 128 + 48 * prev.len());
    message.push_str(SIGNATURE_CONTEXT);
    message.push_str("{\"author\":");
    message.push_str(&author_text);
    message.push_str(",\"group\":");
    message.push_str(&canonical_string(&json!(group.to_b64()))?);
    message.push_str(",\"ops\":");
    message.push_str(ops_text);
    message.push_str(",\"prevEntryHashes\":");
    message.push_str(&canonical_string(&Value::Object(prev_set))?);
    message.push('}');
    let digest = crate::hash::HashAlgorithm::Sha256.digest(message.as_bytes());
    let signature = keypair.sign(digest.as_bytes());
    let signature_text = canonical_string(&json!(signature.to_b64()))?;
    Ok(SignedOps { author, signature, author_text, signature_text })
}

/// A payload signed for a position, with its JSON value and canonical text computed once
/// ([`SignedPayload::sign_encoded`]).
pub struct EncodedPayload {
    pub payload: SignedPayload,
    /// What [`SignedPayload::to_value`] returns.
    pub value: Value,
    /// `canonical_string(&value)`: what the payload hash is computed over.
    pub canonical: String,
}

impl SignedPayload {
    /// [`SignedPayload::sign`], serializing the operations once for the signature, the
    /// payload's value and its canonical text (`sign_ops_value`; a 1,000-row entry used to
    /// be serialized three times). The results are byte-for-byte those of the separate
    /// functions.
    pub fn sign_encoded(
        keypair: &Keypair,
        group: &GroupId,
        ops: Vec<Op>,
        prev: &Position,
    ) -> Result<EncodedPayload, JsonError> {
        let ops_value = Value::Array(ops.iter().map(Op::to_value).collect());
        let (author, signature, value, canonical) = sign_ops_value(keypair, group, ops_value, prev)?;
        Ok(EncodedPayload {
            payload: SignedPayload { genesis: None, author, ops, signature: Some(signature) },
            value,
            canonical,
        })
    }

    /// [`SignedPayload::sign_encoded`] for a caller that needs the payload's value and
    /// canonical text only, not the operations decoded: they are moved into the value rather
    /// than copied (a local commit whose placement waits; for a 1,000-row entry the copy was
    /// about a fourteenth of the commit's CPU).
    pub fn sign_into_value(
        keypair: &Keypair,
        group: &GroupId,
        ops: Vec<Op>,
        prev: &Position,
    ) -> Result<(Value, String), JsonError> {
        let ops_value = Value::Array(ops.into_iter().map(Op::into_value).collect());
        let (_, _, value, canonical) = sign_ops_value(keypair, group, ops_value, prev)?;
        Ok((value, canonical))
    }

    /// Signs `ops` by `keypair` for the position `prev` of `group`.
    pub fn sign(keypair: &Keypair, group: &GroupId, ops: Vec<Op>, prev: &Position) -> Result<SignedPayload, JsonError> {
        let author = keypair.public().key_id();
        let msg = signing_message(Some(group), None, &author, &ops, prev)?;
        Ok(SignedPayload { genesis: None, author, ops, signature: Some(keypair.sign(&msg)) })
    }

    /// Signs the genesis of a new group (no predecessors, no group id yet).
    pub fn sign_genesis(keypair: &Keypair, genesis: Genesis) -> Result<SignedPayload, JsonError> {
        let author = keypair.public().key_id();
        let msg = signing_message(None, Some(&genesis), &author, &[], &Position::new())?;
        Ok(SignedPayload { genesis: Some(Box::new(genesis)), author, ops: vec![], signature: Some(keypair.sign(&msg)) })
    }

    /// `ops` by `author` without a signature: valid only once a later signed entry of the same
    /// author covers it ([`crate::signature_cover`]).
    pub fn unsigned(author: KeyId, ops: Vec<Op>) -> SignedPayload {
        SignedPayload { genesis: None, author, ops, signature: None }
    }

    pub fn to_value(&self) -> Value {
        let mut m = self.genesis.as_deref().map(genesis_fields).unwrap_or_default();
        m.insert("author".into(), json!(self.author.to_b64()));
        m.insert("ops".into(), Value::Array(self.ops.iter().map(Op::to_value).collect()));
        if let Some(signature) = &self.signature {
            m.insert("signature".into(), json!(signature.to_b64()));
        }
        Value::Object(m)
    }

    /// Decodes a payload strictly. The signature is not checked here.
    pub fn from_value(v: &Value) -> Result<SignedPayload, PayloadError> {
        let m = v.as_object().ok_or_else(|| malformed("payload"))?;
        let genesis = checked_header(m)?;
        let ops = m
            .get("ops")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed("ops"))?
            .iter()
            .map(Op::from_value)
            .collect::<Result<Vec<_>, _>>()?;
        finish(m, genesis, ops)
    }

    /// [`SignedPayload::from_value`] on a value the caller gives up: the operations' rows are
    /// moved out rather than copied. Accepts and refuses exactly what `from_value` does.
    pub fn from_owned(v: Value) -> Result<SignedPayload, PayloadError> {
        let Value::Object(mut m) = v else { return Err(malformed("payload")) };
        let genesis = checked_header(&m)?;
        let ops = match m.remove("ops") {
            Some(Value::Array(ops)) => ops.into_iter().map(Op::from_owned).collect::<Result<Vec<_>, _>>()?,
            _ => return Err(malformed("ops")),
        };
        finish(&m, genesis, ops)
    }

    /// Verifies the signature with the author's public key, at `prev` in `group` (None for
    /// the genesis, whose author must be the admin it names).
    /// An unsigned payload fails with [`PayloadError::Uncovered`]: whether a later entry covers
    /// it is a question about history ([`crate::signature_cover`]).
    pub fn verify(&self, key: &PublicKey, group: Option<&GroupId>, prev: &Position) -> Result<(), PayloadError> {
        let msg = self.message_to_verify(key, group, prev)?;
        let signature = self.signature.as_ref().ok_or(PayloadError::Uncovered { author: self.author })?;
        key.verify(&msg, signature).map_err(|_| PayloadError::BadSignature { author: self.author })
    }

    /// Everything [`SignedPayload::verify`] checks but the signature itself, and the message the
    /// signature must be over (for a [`crate::identity::SignatureBatch`]).
    pub fn message_to_verify(
        &self,
        key: &PublicKey,
        group: Option<&GroupId>,
        prev: &Position,
    ) -> Result<Vec<u8>, PayloadError> {
        if key.key_id() != self.author {
            return Err(PayloadError::BadSignature { author: self.author });
        }
        if let Some(g) = &self.genesis {
            if g.admin.key_id() != self.author {
                return Err(PayloadError::GenesisAuthor { author: self.author, admin: g.admin.key_id() });
            }
        }
        Ok(signing_message(group, self.genesis.as_deref(), &self.author, &self.ops, prev)?)
    }
}

fn key_text(key: &Map<String, Value>) -> String {
    key.iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn short_key(k: &KeyId) -> String {
    k.to_b64().chars().take(8).collect()
}

impl Op {
    /// A one-line human summary, e.g. `insert products (sku=A)`.
    pub fn summary(&self, schema_key: impl Fn(&str) -> Vec<String>) -> String {
        match self {
            Op::AddMember { public_key, name, admin } => format!(
                "add {}member {}{}",
                if *admin { "admin " } else { "" },
                short_key(&public_key.key_id()),
                name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
            ),
            Op::RemoveMember { key_id } => format!("remove member {}", short_key(key_id)),
            Op::Schema { table, .. } => format!("schema {table}"),
            Op::Rule { table, operation, .. } => format!("rule {operation} on {table}"),
            Op::Unreplicate { table } => format!("unreplicate {table}"),
            Op::Insert { table, row } => {
                let pk = schema_key(table);
                let key: Map<String, Value> = if pk.is_empty() {
                    row.clone()
                } else {
                    row.iter().filter(|(k, _)| pk.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
                };
                format!("insert {table} ({})", key_text(&key))
            }
            Op::Update { table, key, .. } => format!("update {table} ({})", key_text(key)),
            Op::Delete { table, key } => format!("delete {table} ({})", key_text(key)),
        }
    }
}

impl SignedPayload {
    /// A one-line human summary of the entry: its only operation, or `N ops: a; b; c; ...`.
    pub fn summary(&self, schema_key: impl Fn(&str) -> Vec<String>) -> String {
        if let Some(g) = &self.genesis {
            return format!("create group {}", g.name);
        }
        match self.ops.as_slice() {
            [] => "no operations".to_string(),
            [op] => op.summary(&schema_key),
            ops => {
                let shown: Vec<String> = ops.iter().take(3).map(|o| o.summary(&schema_key)).collect();
                let more = if ops.len() > 3 { "; ..." } else { "" };
                format!("{} ops: {}{more}", ops.len(), shown.join("; "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Entry, Meta};
    use crate::hash::HashAlgorithm;

    fn ops() -> Vec<Op> {
        vec![
            Op::Insert {
                table: "products".into(),
                row: json!({"sku": "A", "price": "9.99"}).as_object().cloned().unwrap(),
            },
            Op::Update {
                table: "products".into(),
                key: json!({"sku": "B"}).as_object().cloned().unwrap(),
                set: json!({"name": "x"}).as_object().cloned().unwrap(),
                unset: vec!["price".into()],
            },
        ]
    }

    /// Every operation the decoder accepts encodes back to exactly its input; an unexpected
    /// field, or a key not in canonical Base64, is refused.
    #[test]
    fn operations_decode_strictly_and_encode_back_exactly() {
        let key = Keypair::generate().public();
        let mut all = ops();
        all.push(Op::AddMember { public_key: key, name: Some("n".into()), admin: true });
        all.push(Op::AddMember { public_key: key, name: None, admin: false });
        all.push(Op::RemoveMember { key_id: key.key_id() });
        all.push(Op::Schema { table: "t".into(), schema: json!({"columns": [1, {"a": true}]}) });
        all.push(Op::Rule { table: "t".into(), operation: "insert".into(), rule: "true".into() });
        all.push(Op::Unreplicate { table: "t".into() });
        all.push(Op::Delete { table: "t".into(), key: json!({"id": "1"}).as_object().cloned().unwrap() });
        for op in &all {
            let v = op.to_value();
            assert_eq!(op.clone().into_value(), v);
            let back = Op::from_value(&v).unwrap();
            assert_eq!(&back, op);
            assert_eq!(Op::from_owned(v.clone()).unwrap(), back);
            assert_eq!(canonical_string(&back.to_value()).unwrap(), canonical_string(&v).unwrap());
            let mut extra = v.clone();
            extra["extra"] = json!(1);
            let err = Op::from_value(&extra).unwrap_err().to_string();
            assert!(err.contains("extra"), "{err}");
            assert_eq!(Op::from_owned(extra).unwrap_err().to_string(), err);
        }
        // Base64 that decodes to the same key but is not its canonical text.
        let mut v = Op::RemoveMember { key_id: key.key_id() }.to_value();
        let text = v["keyId"].as_str().unwrap().trim_end_matches('=').to_string();
        v["keyId"] = json!(text);
        assert!(Op::from_value(&v).is_err());
    }

    #[test]
    fn encoded_signing_matches_the_separate_steps_byte_for_byte() {
        let alg = HashAlgorithm::Sha256;
        let key = Keypair::generate();
        let group = GroupId(alg.digest(b"group"));
        // Twelve operations (the canonical form permutes arrays of 11 or more), keys and
        // values that need escaping or sort differently in UTF-16, and 0 to 3 predecessors.
        let mut many = ops();
        for i in 0..10 {
            many.push(Op::Insert {
                table: "t\"q".into(),
                row: json!({"k": i, "\u{e000}": "x\\y", "\u{1f600}": [1, 2.5, true], "a": {"z": 1, "b": -0.0}})
                    .as_object()
                    .cloned()
                    .unwrap(),
            });
        }
        for (n, ops) in [(0, vec![]), (1, ops()), (3, many)] {
            let prev: Position = (0..n).map(|i: u8| crate::EntryHash(alg.digest(&[i]))).collect();
            let slow = SignedPayload::sign(&key, &group, ops.clone(), &prev).unwrap();
            let moved = SignedPayload::sign_into_value(&key, &group, ops.clone(), &prev).unwrap();
            let fast = SignedPayload::sign_encoded(&key, &group, ops, &prev).unwrap();
            assert_eq!(moved, (fast.value.clone(), fast.canonical.clone()));
            assert_eq!(fast.payload, slow);
            assert_eq!(fast.value, slow.to_value());
            assert_eq!(fast.canonical, canonical_string(&slow.to_value()).unwrap());
            fast.payload.verify(&key.public(), Some(&group), &prev).unwrap();
            let e = Entry::with_canonical_payload(alg, fast.value.clone(), &fast.canonical, prev.clone(), Meta::new());
            assert_eq!(e, Entry::new(alg, slow.to_value(), prev, Meta::new()).unwrap());
        }
    }

    #[test]
    fn genesis_and_ops_round_trip_and_verify() {
        let alg = HashAlgorithm::Blake3;
        let admin = Keypair::generate();
        let g =
            Genesis { name: "shop".into(), hash_algorithm: "blake3".into(), seed: "s".into(), admin: admin.public() };
        let genesis = SignedPayload::sign_genesis(&admin, g).unwrap();
        let back = SignedPayload::from_value(&genesis.to_value()).unwrap();
        assert_eq!(back, genesis);
        back.verify(&admin.public(), None, &Position::new()).unwrap();
        let root = Entry::new(alg, genesis.to_value(), Position::new(), Meta::new()).unwrap();

        let prev: Position = [root.hash].into();
        let group = GroupId::of_genesis(root.hash);
        let p = SignedPayload::sign(&admin, &group, ops(), &prev).unwrap();
        let back = SignedPayload::from_value(&p.to_value()).unwrap();
        assert_eq!(back, p);
        back.verify(&admin.public(), Some(&group), &prev).unwrap();

        // Replayed at another position, or in another group, or by another key: refused.
        let elsewhere: Position = [crate::EntryHash(alg.digest(b"x"))].into();
        assert!(back.verify(&admin.public(), Some(&group), &elsewhere).is_err());
        assert!(back.verify(&admin.public(), Some(&GroupId(alg.digest(b"g"))), &prev).is_err());
        assert!(back.verify(&Keypair::generate().public(), Some(&group), &prev).is_err());
        // Tampered operations: refused.
        let mut v = p.to_value();
        v["ops"][0]["row"]["price"] = json!("0.01");
        let tampered = SignedPayload::from_value(&v).unwrap();
        assert!(tampered.verify(&admin.public(), Some(&group), &prev).is_err());
    }

    #[test]
    fn summaries() {
        let admin = Keypair::generate();
        let g = GroupId(HashAlgorithm::Blake3.digest(b"g"));
        let pk = |_: &str| vec!["sku".to_string()];
        let one = SignedPayload::sign(&admin, &g, ops()[..1].to_vec(), &Position::new()).unwrap();
        assert_eq!(one.summary(pk), "insert products (sku=A)");
        let two = SignedPayload::sign(&admin, &g, ops(), &Position::new()).unwrap();
        assert_eq!(two.summary(pk), "2 ops: insert products (sku=A); update products (sku=B)");
        let many = SignedPayload::sign(&admin, &g, [ops(), ops()].concat(), &Position::new()).unwrap();
        assert!(many.summary(pk).starts_with("4 ops: ") && many.summary(pk).ends_with("; ..."));
    }

    #[test]
    fn strict_decoding() {
        let admin = Keypair::generate();
        let p =
            SignedPayload::sign(&admin, &GroupId(HashAlgorithm::Blake3.digest(b"g")), ops(), &Position::new()).unwrap();
        let mut v = p.to_value();
        v["extra"] = json!(1);
        assert!(SignedPayload::from_value(&v).is_err());
        let mut v = p.to_value();
        v["ops"][0]["op"] = json!("truncate");
        assert_eq!(SignedPayload::from_value(&v), Err(PayloadError::UnknownOp("truncate".into())));
        let add = Op::AddMember { public_key: admin.public(), name: Some("bob".into()), admin: false };
        let mut v = add.to_value();
        assert_eq!(Op::from_value(&v).unwrap(), add);
        v["keyId"] = json!(HashAlgorithm::Sha256.digest(b"other").to_b64());
        assert!(Op::from_value(&v).is_err());
    }
}
