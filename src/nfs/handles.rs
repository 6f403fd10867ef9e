//! File handles: signed (export id, file id) pairs, and the server key
//! that signs them.
//!
//! A handle is 32 bytes:
//!
//! ```text
//! 0      1        4           8                 16                      32
//! | ver=1 | 0 0 0 | export id | file id (BE u64) | HMAC-SHA256 (16 bytes) |
//! ```
//!
//! The tag is HMAC-SHA256 under the server key over the first 16 bytes,
//! truncated to 128 bits. Clients cannot forge or alter handles (any other
//! 32-byte string fails verification), and handles stay valid across
//! restarts because the key is persisted ([`load_or_create_key`]) and
//! export and file ids are stable.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::fs::FileId;

pub(crate) const HANDLE_LEN: usize = 32;
const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
const BODY_LEN: usize = HANDLE_LEN - TAG_LEN;

/// Signs and verifies file handles with the server key.
#[derive(Clone)]
pub(crate) struct HandleKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for HandleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandleKey(..)")
    }
}

impl HandleKey {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        HandleKey {
            mac: Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length"),
        }
    }

    fn body(export: u32, file: FileId) -> [u8; BODY_LEN] {
        let mut b = [0u8; BODY_LEN];
        b[0] = VERSION;
        b[4..8].copy_from_slice(&export.to_be_bytes());
        b[8..16].copy_from_slice(&file.to_be_bytes());
        b
    }

    pub(crate) fn sign(&self, export: u32, file: FileId) -> [u8; HANDLE_LEN] {
        let body = Self::body(export, file);
        let mut mac = self.mac.clone();
        mac.update(&body);
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; HANDLE_LEN];
        out[..BODY_LEN].copy_from_slice(&body);
        out[BODY_LEN..].copy_from_slice(&tag[..TAG_LEN]);
        out
    }

    /// The (export id, file id) of a handle we issued, or `None` for
    /// anything else (wrong length, version, or tag). The tag comparison is
    /// constant-time.
    pub(crate) fn verify(&self, handle: &[u8]) -> Option<(u32, FileId)> {
        if handle.len() != HANDLE_LEN || handle[0] != VERSION || handle[1..4] != [0, 0, 0] {
            return None;
        }
        let mut mac = self.mac.clone();
        mac.update(&handle[..BODY_LEN]);
        mac.verify_truncated_left(&handle[BODY_LEN..]).ok()?;
        let export = u32::from_be_bytes(handle[4..8].try_into().ok()?);
        let file = u64::from_be_bytes(handle[8..16].try_into().ok()?);
        Some((export, file))
    }
}

/// The server key at `path`: read if it exists (exactly 32 bytes), else a
/// fresh random key, written as [`crate::secret_file`] writes secrets
/// (mode 0600, crash-safely, a concurrent creator's key wins). A key file
/// readable by others is tightened to 0600.
pub fn load_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
    let data = crate::secret_file::load_or_create(path, "NFS key", || {
        let mut key = [0u8; 32];
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut key)
            .map_err(|e| std::io::Error::other(format!("no randomness for the NFS key: {e}")))?;
        Ok(key.to_vec())
    })?;
    data.as_slice().try_into().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: an NFS key file must hold exactly 32 bytes, found {}",
                path.display(),
                data.len()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn sign_and_verify() {
        let k = HandleKey::new(&[7; 32]);
        for (e, f) in [(1, 1), (0, u64::MAX), (u32::MAX, 12345)] {
            let h = k.sign(e, f);
            assert_eq!(k.verify(&h), Some((e, f)));
        }
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let k = HandleKey::new(&[7; 32]);
        let h = k.sign(3, 0x1234_5678_9abc);
        for i in 0..HANDLE_LEN * 8 {
            let mut bad = h;
            bad[i / 8] ^= 1 << (i % 8);
            assert_eq!(k.verify(&bad), None, "bit {i}");
        }
    }

    #[test]
    fn forged_and_foreign_handles_are_rejected() {
        let k = HandleKey::new(&[7; 32]);
        let other = HandleKey::new(&[8; 32]);
        // Another key's handle.
        assert_eq!(k.verify(&other.sign(1, 2)), None);
        // Export id of A with the tag of B.
        let a = k.sign(1, 2);
        let b = k.sign(2, 2);
        let mut mixed = b;
        mixed[BODY_LEN..].copy_from_slice(&a[BODY_LEN..]);
        assert_eq!(k.verify(&mixed), None);
        // Wrong lengths, all zeroes.
        assert_eq!(k.verify(&a[..31]), None);
        assert_eq!(k.verify(&[a.as_slice(), &[0]].concat()), None);
        assert_eq!(k.verify(&[0; HANDLE_LEN]), None);
        assert_eq!(k.verify(&[]), None);
    }

    #[test]
    fn key_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/nfs.key");
        let k1 = load_or_create_key(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let k2 = load_or_create_key(&path).unwrap();
        assert_eq!(k1, k2);
        assert_ne!(k1, [0; 32]);
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("nfs.key")]);
        // Loose permissions are tightened, a damaged key is an error.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create_key(&path).unwrap(), k1);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&path, b"short").unwrap();
        let err = load_or_create_key(&path).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
