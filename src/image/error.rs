//! Errors of opening and reading an image.

use crate::digest::Digest;
use crate::layer::FormatError;
use crate::registry::RegistryError;
use std::sync::Arc;
use std::time::Duration;

/// Why a read of the image (or opening it) failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The registry failed (after retries).
    #[error(transparent)]
    Registry(Box<RegistryError>),
    /// A layer could not be indexed.
    #[error(transparent)]
    Index(Box<IndexError>),
    /// The chunk cache failed.
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    /// No inode has this number.
    #[error("no such inode {0}")]
    NoInode(u64),
    /// The inode is not a regular file.
    #[error("inode {0} is not a regular file")]
    NotFile(u64),
    /// Bytes of a layer are not what its index (and digest) say: never served.
    #[error("layer {layer}: {msg}")]
    BadData {
        /// The layer.
        layer: Digest,
        /// What is wrong.
        msg: String,
    },
    /// The read did not finish within the read timeout.
    #[error("read timed out after {0:?}")]
    Timeout(Duration),
    /// Opening the image failed; every request waiting on it gets this.
    #[error(transparent)]
    Opening(Arc<ViewError>),
}

// Boxed: both are large, and errors travel through every read's Result.
impl From<RegistryError> for ViewError {
    fn from(e: RegistryError) -> Self {
        ViewError::Registry(Box::new(e))
    }
}

impl From<IndexError> for ViewError {
    fn from(e: IndexError) -> Self {
        ViewError::Index(Box::new(e))
    }
}

/// Why a layer could not be indexed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The layer's media type is not one lazyboot reads.
    #[error("layer {layer}: {source}")]
    Format {
        /// The layer.
        layer: Digest,
        /// Why its format is refused.
        #[source]
        source: FormatError,
    },
    /// The registry failed while indexing.
    #[error("layer {layer}: {source}")]
    Registry {
        /// The layer.
        layer: Digest,
        /// The registry's error.
        #[source]
        source: Box<RegistryError>,
    },
    /// The blob's sha256 is not its digest.
    #[error("layer {layer}: content does not match its digest (got {actual}); the index was thrown away")]
    DigestMismatch {
        /// The layer (its digest is what the manifest says).
        layer: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// The blob's size is not what the manifest says.
    #[error("layer {layer}: size is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        /// The layer.
        layer: Digest,
        /// Size in the manifest.
        expected: u64,
        /// Size received.
        actual: u64,
    },
    /// The blob's content cannot be decoded.
    #[error("layer {layer}: {msg}")]
    Corrupt {
        /// The layer.
        layer: Digest,
        /// What could not be decoded.
        msg: String,
    },
    /// The cache could not store the index or the chunks.
    #[error("layer {layer}: cache: {source}")]
    Cache {
        /// The layer.
        layer: Digest,
        /// The cache's error.
        #[source]
        source: crate::cache::CacheError,
    },
}
