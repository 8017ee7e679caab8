//! Content addresses: 32-byte digests written as standard, padded Base64 (`B64Hash`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;
use sha2::Digest;
use std::fmt;
use std::str::FromStr;

use crate::json::{canonical_string, JsonError};

/// A 32-byte digest. Its text form is standard Base64 with padding (44 characters).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn to_b64(&self) -> String {
        B64.encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_b64())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_b64())
    }
}

/// Why a string is not a B64Hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a hash: expected 44 characters of padded standard Base64 encoding 32 bytes")]
pub struct ParseHashError {
    pub text: String,
}

impl FromStr for Hash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseHashError { text: s.chars().take(64).collect() };
        if s.len() != 44 {
            return Err(err());
        }
        let bytes = B64.decode(s).map_err(|_| err())?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| err())?;
        Ok(Hash(arr))
    }
}

impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_b64())
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A digest with one meaning, as a type of its own: the compiler then refuses an entry's hash
/// where a group id or a key id is expected. Text, `Display`, `FromStr` and serde forms are the
/// digest's (padded Base64).
macro_rules! digest_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $crate::hash::Hash);

        impl $name {
            /// Standard, padded Base64 (44 characters).
            pub fn to_b64(&self) -> String {
                self.0.to_b64()
            }

            pub fn as_bytes(&self) -> &[u8; 32] {
                self.0.as_bytes()
            }

            /// The digest itself.
            pub fn digest(&self) -> $crate::hash::Hash {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&self.0, f)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::hash::ParseHashError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serde::Serialize::serialize(&self.0, s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <$crate::hash::Hash as serde::Deserialize>::deserialize(d).map($name)
            }
        }
    };
}
pub(crate) use digest_newtype;

digest_newtype!(
    /// The hash of an entry's header: the entry's identity in the DAG.
    EntryHash
);

digest_newtype!(
    /// A group's identity: the hash of its genesis entry. Signatures are bound to it.
    GroupId
);

impl GroupId {
    /// The group whose genesis entry is `genesis`.
    pub fn of_genesis(genesis: EntryHash) -> GroupId {
        GroupId(genesis.0)
    }

    /// The group's genesis entry.
    pub fn genesis(&self) -> EntryHash {
        EntryHash(self.0)
    }
}

/// The hash algorithm of a DAG, fixed when the DAG is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    Sha256,
    Blake3,
}

/// An algorithm name that is neither `sha-256` nor `blake3`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hash algorithm {name:?}: the supported algorithms are \"blake3\" and \"sha-256\"")]
pub struct UnknownAlgorithm {
    pub name: String,
}

impl HashAlgorithm {
    pub const ALL: [HashAlgorithm; 2] = [HashAlgorithm::Blake3, HashAlgorithm::Sha256];

    /// The name used in group payloads and in the SQL API.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha-256",
            HashAlgorithm::Blake3 => "blake3",
        }
    }

    pub fn parse(name: &str) -> Result<Self, UnknownAlgorithm> {
        match name {
            "sha-256" => Ok(HashAlgorithm::Sha256),
            "blake3" => Ok(HashAlgorithm::Blake3),
            _ => Err(UnknownAlgorithm { name: name.chars().take(64).collect() }),
        }
    }

    pub fn digest(self, bytes: &[u8]) -> Hash {
        match self {
            HashAlgorithm::Sha256 => Hash(sha2::Sha256::digest(bytes).into()),
            HashAlgorithm::Blake3 => Hash(*blake3::hash(bytes).as_bytes()),
        }
    }

    /// `B64Hash = Base64(H(UTF-8(canonicalize(literal))))`.
    pub fn hash_literal(self, value: &Value) -> Result<Hash, JsonError> {
        Ok(self.digest(canonical_string(value)?.as_bytes()))
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_base64() {
        let h = HashAlgorithm::Blake3.digest(b"x");
        assert_eq!(h.to_b64().parse::<Hash>().unwrap(), h);
        assert_eq!(h.to_b64().len(), 44);
    }

    #[test]
    fn rejects_malformed_hashes() {
        assert!("abc".parse::<Hash>().is_err());
        assert!("!".repeat(44).parse::<Hash>().is_err());
        // 33 bytes of Base64 is 44 characters without padding: still not a 32-byte digest.
        assert!(B64.encode([0u8; 33]).parse::<Hash>().is_err());
    }

    #[test]
    fn algorithm_names() {
        for alg in HashAlgorithm::ALL {
            assert_eq!(HashAlgorithm::parse(alg.name()).unwrap(), alg);
        }
        let err = HashAlgorithm::parse("md5").unwrap_err();
        assert!(err.to_string().contains("md5"));
    }
}
