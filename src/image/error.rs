//! Errors of opening and reading an image.

use crate::digest::Digest;
use crate::layer::FormatError;
use crate::registry::RegistryError;
use std::sync::Arc;
use std::time::Duration;

/// Why a read of the image (or opening it) failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Registry(Box<RegistryError>),
    #[error(transparent)]
    Index(Box<IndexError>),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error("no such inode {0}")]
    NoInode(u64),
    #[error("inode {0} is not a regular file")]
    NotFile(u64),
    #[error("layer {layer}: {msg}")]
    BadData { layer: Digest, msg: String },
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
    #[error("layer {layer}: {source}")]
    Format {
        layer: Digest,
        #[source]
        source: FormatError,
    },
    #[error("layer {layer}: {source}")]
    Registry {
        layer: Digest,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("layer {layer}: content does not match its digest (got {actual}); the index was thrown away")]
    DigestMismatch { layer: Digest, actual: Digest },
    #[error("layer {layer}: size is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        layer: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("layer {layer}: {msg}")]
    Corrupt { layer: Digest, msg: String },
    #[error("layer {layer}: cache: {source}")]
    Cache {
        layer: Digest,
        #[source]
        source: crate::cache::CacheError,
    },
}
