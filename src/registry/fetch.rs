//! Reading blobs of an open [`Source`]: exact byte ranges, resumable
//! streams and whole small blobs, all counted in [`FetchStats`].

use super::source::Backend;
use super::{remote, RegistryError, Source};
use crate::digest::Digest;
use futures_util::stream::BoxStream;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// Network activity of a source so far, counted across all its streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FetchStats {
    /// HTTP requests sent (each retry counts), or blob reads from an image layout.
    pub requests: u64,
    /// Body bytes received (manifests and blobs).
    pub bytes: u64,
}

/// Shared by a source and every stream it hands out.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> FetchStats {
        FetchStats {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

impl Source {
    /// Exactly the bytes `[range.start, range.end)` of the blob, with one
    /// range request per attempt.
    pub(crate) async fn fetch_range(
        &self,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<bytes::Bytes, RegistryError> {
        let size = self.inner.sizes.get(digest).copied();
        if range.start > range.end || size.is_some_and(|s| range.end > s) {
            return Err(RegistryError::InvalidRange {
                location: self.location().to_string(),
                digest: digest.clone(),
                start: range.start,
                end: range.end,
                size,
            });
        }
        if range.is_empty() {
            return Ok(bytes::Bytes::new());
        }
        match &self.inner.backend {
            Backend::Remote(r) => r.fetch_range(digest, range).await,
            Backend::Layout(l) => l.fetch_range(digest, range).await,
        }
    }

    /// The blob from `offset` to its end, resuming after dropped connections.
    /// Not verified: the caller hashes what it consumes.
    pub async fn stream(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<BoxStream<'static, Result<bytes::Bytes, RegistryError>>, RegistryError> {
        let size = self.inner.sizes.get(digest).copied();
        if let Some(s) = size {
            if offset > s {
                return Err(RegistryError::InvalidRange {
                    location: self.location().to_string(),
                    digest: digest.clone(),
                    start: offset,
                    end: s,
                    size,
                });
            }
            if offset == s {
                return Ok(Box::pin(futures_util::stream::empty()));
            }
        }
        match &self.inner.backend {
            Backend::Remote(r) => remote::Remote::stream(r.clone(), digest, offset, size).await,
            Backend::Layout(l) => l.clone().stream(digest, offset).await,
        }
    }

    /// A whole (small) blob in memory, checked against its digest.
    #[cfg(test)]
    pub(crate) async fn fetch_blob(&self, digest: &Digest) -> Result<bytes::Bytes, RegistryError> {
        let size = self.inner.sizes.get(digest).copied();
        self.inner.backend.fetch_blob(digest, size).await
    }

    /// Totals since [`Source::open`], including the manifest and config
    /// fetched while opening. Token requests made inside oci-client are not
    /// visible here and not counted.
    pub fn stats(&self) -> FetchStats {
        self.inner.counters.snapshot()
    }
}
