//! ed25519 identities, as the hhs3 crypto module defines them.
//!
//! A public key is serialized self-describingly as
//! `[u32 big-endian length of the suite name][suite name][raw key bytes]`, and its `KeyId` is
//! the SHA-256 of that serialization in Base64. The serialized public key's Base64 text is the
//! form users pass around (`causal.identities` shows it; `causal.add_member` takes it).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::Signer;

use crate::hash::HashAlgorithm;

/// The only signing suite we support.
pub const ED25519: &str = "ed25519";

crate::hash::digest_newtype!(
    /// The identifier of a key: SHA-256 over the serialized public key. A type of its own, so a
    /// key id is never taken for an entry's hash or a group's id.
    KeyId
);

/// Why a key, a signature or their text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("not valid Base64: {0}")]
    Base64(String),
    #[error("a serialized public key must be a 4-byte suite length, the suite name and the key; got {0} bytes")]
    Truncated(usize),
    #[error("unsupported signing suite {0:?}: only \"ed25519\" is supported")]
    UnsupportedSuite(String),
    #[error("an ed25519 public key has 32 bytes; got {0}")]
    KeyLength(usize),
    #[error("an ed25519 public key must be a valid curve point")]
    InvalidPoint,
    #[error("an ed25519 secret key has 32 bytes; got {0}")]
    SecretLength(usize),
    #[error("an ed25519 signature has 64 bytes; got {0}")]
    SignatureLength(usize),
    #[error("the signature does not verify under this key")]
    BadSignature,
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl PublicKey {
    /// `[len(suite) as u32 BE][suite][32 key bytes]`.
    pub fn serialize(&self) -> Vec<u8> {
        let suite = ED25519.as_bytes();
        let mut out = Vec::with_capacity(4 + suite.len() + 32);
        out.extend_from_slice(&(suite.len() as u32).to_be_bytes());
        out.extend_from_slice(suite);
        out.extend_from_slice(self.0.as_bytes());
        out
    }

    pub fn deserialize(bytes: &[u8]) -> Result<PublicKey, IdentityError> {
        if bytes.len() < 4 {
            return Err(IdentityError::Truncated(bytes.len()));
        }
        let suite_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let rest = &bytes[4..];
        if rest.len() < suite_len {
            return Err(IdentityError::Truncated(bytes.len()));
        }
        let (suite, key) = rest.split_at(suite_len);
        if suite != ED25519.as_bytes() {
            return Err(IdentityError::UnsupportedSuite(String::from_utf8_lossy(suite).chars().take(32).collect()));
        }
        let key: [u8; 32] = key.try_into().map_err(|_| IdentityError::KeyLength(key.len()))?;
        ed25519_dalek::VerifyingKey::from_bytes(&key).map(PublicKey).map_err(|_| IdentityError::InvalidPoint)
    }

    /// Base64 of the serialized key.
    pub fn to_b64(&self) -> String {
        B64.encode(self.serialize())
    }

    pub fn from_b64(text: &str) -> Result<PublicKey, IdentityError> {
        let bytes = B64.decode(text.trim()).map_err(|e| IdentityError::Base64(e.to_string()))?;
        PublicKey::deserialize(&bytes)
    }

    pub fn raw_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn key_id(&self) -> KeyId {
        KeyId(HashAlgorithm::Sha256.digest(&self.serialize()))
    }

    /// The libp2p PeerId of this ed25519 key, as text (`12D3KooW...`): the identity multihash
    /// of the protobuf-encoded public key (`KeyType::Ed25519`, 32 bytes), in base58btc. The
    /// sync worker uses the node key as its libp2p identity, so the extension can name the
    /// node's address without starting libp2p.
    pub fn libp2p_peer_id(&self) -> String {
        let mut bytes = vec![0x00, 36, 0x08, 0x01, 0x12, 32];
        bytes.extend_from_slice(&self.raw_bytes());
        bs58::encode(bytes).into_string()
    }

    /// Checks `signature` over `message` under the ZIP-215 rules (see [`SignatureBatch`]).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), IdentityError> {
        let key =
            ed25519_zebra::VerificationKey::try_from(self.raw_bytes()).map_err(|_| IdentityError::InvalidPoint)?;
        key.verify(&signature.zip215(), message).map_err(|_| IdentityError::BadSignature)
    }
}

/// Signatures checked together, far cheaper per signature than one by one (most of all when
/// they share keys, as a history's entries do).
///
/// Every replica must accept exactly the same signatures, or honest replicas could disagree
/// about which entries exist. The usual ed25519 batch equation is "cofactored" while the usual
/// single check is not, so a signer can craft a signature that passes one and fails the other.
/// ZIP-215 fixes the rule for both (cofactored, and precise about which encodings are
/// accepted), so a signature is valid alone exactly when it is valid in any batch.
/// [`PublicKey::verify`] checks by the same rule. Every signature made by a standard signer
/// (ours, or the reference implementation's) is valid under it.
#[derive(Default)]
pub struct SignatureBatch {
    verifier: ed25519_zebra::batch::Verifier,
    len: usize,
}

impl SignatureBatch {
    pub fn new() -> SignatureBatch {
        SignatureBatch::default()
    }

    pub fn push(&mut self, key: &PublicKey, message: &[u8], signature: &Signature) {
        let key = ed25519_zebra::VerificationKeyBytes::from(key.raw_bytes());
        self.verifier.queue((key, signature.zip215(), message));
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every signature pushed is valid. When it is not, check each alone to learn
    /// which (the outcome is the same as if each had been checked alone from the start).
    pub fn verify(self) -> bool {
        self.len == 0 || self.verifier.verify(rand_core::OsRng).is_ok()
    }
}

/// An ed25519 signature (64 bytes, Base64 in text).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Signature(ed25519_dalek::Signature);

impl Signature {
    fn zip215(&self) -> ed25519_zebra::Signature {
        ed25519_zebra::Signature::from(self.0.to_bytes())
    }

    pub fn to_b64(&self) -> String {
        B64.encode(self.0.to_bytes())
    }

    pub fn from_b64(text: &str) -> Result<Signature, IdentityError> {
        let bytes = B64.decode(text).map_err(|e| IdentityError::Base64(e.to_string()))?;
        let arr: [u8; 64] = bytes.as_slice().try_into().map_err(|_| IdentityError::SignatureLength(bytes.len()))?;
        Ok(Signature(ed25519_dalek::Signature::from_bytes(&arr)))
    }
}

/// 16 random bytes from the operating system, in Base64: the seed that makes every group's
/// genesis (and so its id) unique.
pub fn random_seed() -> String {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    B64.encode(bytes)
}

/// A key pair that can sign.
#[derive(Clone)]
pub struct Keypair(ed25519_dalek::SigningKey);

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keypair({})", self.public().key_id())
    }
}

impl Keypair {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Keypair {
        Keypair(ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng))
    }

    pub fn from_secret_bytes(secret: &[u8]) -> Result<Keypair, IdentityError> {
        let arr: [u8; 32] = secret.try_into().map_err(|_| IdentityError::SecretLength(secret.len()))?;
        Ok(Keypair(ed25519_dalek::SigningKey::from_bytes(&arr)))
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signature its own signer crafted to pass the cofactored check and fail the
    /// cofactorless one: R carries a point of order 8, which only the cofactored equation
    /// multiplies away.
    fn crafted_signature(kp: &Keypair, message: &[u8]) -> Signature {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
        use curve25519_dalek::scalar::Scalar;
        use sha2::{Digest, Sha512};
        let expanded = Sha512::digest(kp.secret_bytes());
        let mut a = [0u8; 32];
        a.copy_from_slice(&expanded[..32]);
        a[0] &= 248;
        a[31] &= 127;
        a[31] |= 64;
        let a = Scalar::from_bytes_mod_order(a);
        let r = Scalar::from_bytes_mod_order([42u8; 32]);
        let big_r = (ED25519_BASEPOINT_POINT * r + EIGHT_TORSION[1]).compress();
        let k: [u8; 64] = Sha512::new()
            .chain_update(big_r.as_bytes())
            .chain_update(kp.public().raw_bytes())
            .chain_update(message)
            .finalize()
            .into();
        let s = r + Scalar::from_bytes_mod_order_wide(&k) * a;
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(big_r.as_bytes());
        bytes[32..].copy_from_slice(s.as_bytes());
        Signature(ed25519_dalek::Signature::from_bytes(&bytes))
    }

    #[test]
    fn one_rule_for_signatures_alone_and_in_batches() {
        let kp = Keypair::generate();
        let crafted = crafted_signature(&kp, b"crafted");
        // The usual single check (cofactorless) refuses it ...
        let dalek = ed25519_dalek::VerifyingKey::from_bytes(&kp.public().raw_bytes()).unwrap();
        assert!(ed25519_dalek::Verifier::verify(&dalek, b"crafted", &crafted.0).is_err());
        // ... while the ZIP-215 rule accepts it alone and in a batch alike, so no replica's
        // verdict depends on how its entries happened to be batched.
        kp.public().verify(b"crafted", &crafted).unwrap();
        let honest = kp.sign(b"honest");
        let mut batch = SignatureBatch::new();
        batch.push(&kp.public(), b"crafted", &crafted);
        batch.push(&kp.public(), b"honest", &honest);
        assert_eq!(batch.len(), 2);
        assert!(batch.verify());
        // A signature over another message fails alone and fails its batch.
        assert_eq!(kp.public().verify(b"other", &honest), Err(IdentityError::BadSignature));
        let mut batch = SignatureBatch::new();
        batch.push(&kp.public(), b"crafted", &crafted);
        batch.push(&kp.public(), b"other", &honest);
        assert!(!batch.verify());
        assert!(SignatureBatch::new().verify());
    }

    #[test]
    fn serialization_layout_and_key_id() {
        let kp = Keypair::from_secret_bytes(&[7u8; 32]).unwrap();
        let ser = kp.public().serialize();
        assert_eq!(&ser[..4], &[0, 0, 0, 7]);
        assert_eq!(&ser[4..11], b"ed25519");
        assert_eq!(ser.len(), 4 + 7 + 32);
        assert_eq!(kp.public().key_id(), KeyId(HashAlgorithm::Sha256.digest(&ser)));
        assert_eq!(PublicKey::from_b64(&kp.public().to_b64()).unwrap(), kp.public());
    }

    #[test]
    fn sign_and_verify() {
        let kp = Keypair::generate();
        let sig = kp.sign(b"message");
        kp.public().verify(b"message", &sig).unwrap();
        assert_eq!(kp.public().verify(b"other", &sig), Err(IdentityError::BadSignature));
        let sig2 = Signature::from_b64(&sig.to_b64()).unwrap();
        assert_eq!(sig, sig2);
        let other = Keypair::generate();
        assert!(other.public().verify(b"message", &sig).is_err());
    }

    #[test]
    fn bad_key_text() {
        assert!(matches!(PublicKey::from_b64("!!"), Err(IdentityError::Base64(_))));
        let mut ser = Keypair::generate().public().serialize();
        ser[5] = b'X';
        assert!(matches!(PublicKey::deserialize(&ser), Err(IdentityError::UnsupportedSuite(_))));
        assert!(matches!(PublicKey::deserialize(&ser[..3]), Err(IdentityError::Truncated(3))));
        let mut ser = Keypair::generate().public().serialize();
        ser.pop();
        assert!(matches!(PublicKey::deserialize(&ser), Err(IdentityError::KeyLength(31))));
    }
}
