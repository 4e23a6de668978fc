//! Content digests (sha256 only).

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

use crate::Error;

/// A content digest: `sha256:` followed by 64 lowercase hex digits. sha256 is the only
/// algorithm this crate reads or writes. Serializes as that string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(sha2::Sha256::new_with_prefix(bytes))
    }

    /// The digest a finished sha256 hasher computed.
    pub(crate) fn from_hasher(hasher: sha2::Sha256) -> Self {
        Self {
            hex: hex(&hasher.finalize()),
        }
    }

    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(input: &str) -> Result<Self, Error> {
        input
            .strip_prefix("sha256:")
            .and_then(|hex| Self::from_hex(hex).ok())
            .ok_or_else(|| Error::InvalidDigest { input: input.into() })
    }

    /// Parses 64 lowercase hex digits (the form a snapshot's `sha256` field uses).
    pub fn from_hex(hex: &str) -> Result<Self, Error> {
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Self { hex: hex.into() })
        } else {
            Err(Error::InvalidDigest { input: hex.into() })
        }
    }

    /// The 64 hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_in_lowercase_hex() {
        let digest = Digest::of(b"");
        assert_eq!(
            digest.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(&digest.to_string()).expect("parses"), digest);
        assert_eq!(Digest::from_hex(digest.hex()).expect("parses"), digest);
        assert!(Digest::parse(digest.hex()).is_err(), "needs the algorithm");
        assert!(Digest::parse(&format!("sha512:{}", digest.hex())).is_err());
        assert!(Digest::from_hex(&digest.hex().to_uppercase()).is_err());
        assert!(Digest::from_hex("abc").is_err());
    }
}
