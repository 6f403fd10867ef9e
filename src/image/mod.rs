//! The image: everything between an image reference and the bytes of one
//! of its files, behind one closed interface that every protocol reads
//! through.
//!
//! - [`opening`]: resolving the reference and getting every layer's index
//!   (cached, published, a table of contents, or a streaming pass that makes
//!   files readable while it runs), then the final view.
//! - [`view`]: the final [`ImageView`], the merged [`tree`] plus reads.
//! - `read`: offset → layer → chunk ids → cache → registry range fetch,
//!   format-agnostic through [`crate::layer::format`].
//! - `build`, `published`: making indexes, and publishing or pulling them.
//! - [`prefetch`]: learned prefetch plans and their replay.
//! - [`trace`]: what one request did on the read path, for boot profiles.
//!
//! Depends on `layer`, `cache` and `registry`; nothing below depends on it.

mod build;
mod error;
pub(crate) mod opening;
pub(crate) mod prefetch;
mod published;
mod read;
mod refine;
#[cfg(test)]
pub(crate) mod testimage;
pub(crate) mod trace;
pub(crate) mod tree;
pub(crate) mod view;

pub use error::{IndexError, ViewError};
pub use opening::{Found, Opening, Settled};
pub use prefetch::{PlanError, PrefetchPlan};
pub use published::published_cache_name;
pub use trace::ReadTrace;
pub use tree::{DataRef, Inode, Tree};
pub use view::ImageView;

pub(crate) use build::probe_format;
pub(crate) use published::publish;

use crate::cache::ChunkCache;
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::registry::{RegistryOptions, ResolvedImage, Source};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where an image's chunks are cached and how its registry is reached.
#[derive(Clone, Debug)]
pub struct ViewOptions {
    /// The chunk cache's directory.
    pub cache_dir: PathBuf,
    /// The chunk cache's size bound in bytes.
    pub cache_size: u64,
    /// How to reach the registry.
    pub registry: RegistryOptions,
    /// A read that cannot be satisfied within this time fails with EIO.
    pub read_timeout: Duration,
}

/// Resolve the reference, make sure every layer index exists (building
/// missing ones concurrently, with a progress bar each) and merge the tree.
pub async fn open(
    reference: &ImageRef,
    opts: &ViewOptions,
    progress: &Progress,
) -> Result<Arc<ImageView>, ViewError> {
    let cache = Arc::new(ChunkCache::open(&opts.cache_dir, opts.cache_size)?);
    let (source, image) = Source::open(reference, &opts.registry).await?;
    open_resolved(image, source, cache, opts.read_timeout, progress).await
}

/// [`open`] for an image already resolved, with a cache already open.
pub async fn open_resolved(
    image: ResolvedImage,
    source: Source,
    cache: Arc<ChunkCache>,
    read_timeout: Duration,
    progress: &Progress,
) -> Result<Arc<ImageView>, ViewError> {
    Opening::start(image, source, cache, read_timeout, progress)
        .await
        .finished()
        .await
}
