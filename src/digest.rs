//! Content digests (`sha256:<hex>`), validated once at the edge so the rest of
//! the code can use them as file names and map keys without re-checking.

use sha2::{Digest as _, Sha256};
use std::fmt;

/// A string that is not a `sha256:` digest of 64 lowercase hex digits.
#[derive(Debug, thiserror::Error)]
#[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
pub struct InvalidDigest(pub String);

/// A validated `sha256:` digest (safe to use as a file name).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Digest(String);

impl Digest {
    /// Check that `s` is a `sha256:` digest.
    pub fn parse(s: &str) -> Result<Self, InvalidDigest> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| InvalidDigest(s.to_string()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(InvalidDigest(s.to_string()));
        }
        Ok(Digest(s.to_string()))
    }

    /// The sha256 digest of `data`.
    pub fn of_bytes(data: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(data))))
    }

    pub(crate) fn from_sha256(raw: [u8; 32]) -> Self {
        Digest(format!("sha256:{}", hex::encode(raw)))
    }

    /// The digest as `sha256:HEX`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part: safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    /// Twelve hex digits, for tables and log lines.
    pub fn short(&self) -> &str {
        &self.0[7..19]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_sha256_hex() {
        let d = Digest::of_bytes(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(Digest::parse(d.as_str()).is_ok());
        assert!(Digest::parse("sha256:../../etc/passwd").is_err());
        assert!(Digest::parse("md5:abc").is_err());
        assert!(Digest::parse(&d.as_str().to_uppercase()).is_err());
    }
}
