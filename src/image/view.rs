//! The final view of an image: the merged tree of every layer's index and
//! the read path beneath it. Every protocol (FUSE, NFS, TFTP) reads through
//! this one type; it holds no protocol state.

use super::error::ViewError;
use super::read::ReadPath;
use super::tree::{Inode, Tree};
use crate::cache::{ChunkCache, ChunkKey};
use crate::digest::Digest;
use crate::layer::index::LayerIndex;
use crate::layer::EntryKind;
use crate::progress::Progress;
use crate::registry::{FetchStats, ResolvedImage, Source};
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An image whose layers are all indexed: lookups and listings need no
/// network, reads fetch only the chunks they touch.
pub struct ImageView {
    image: ResolvedImage,
    source: Source,
    cache: Arc<ChunkCache>,
    layers: Vec<Arc<LayerIndex>>,
    tree: Tree,
    read_timeout: Duration,
    /// Foreground reads in progress; the background fill waits while > 0.
    active_reads: AtomicUsize,
}

/// Sizes of a view, for status lines.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ViewStats {
    /// Inodes of the merged tree.
    pub(crate) inodes: usize,
    /// Layers of the image.
    pub(crate) layers: usize,
    /// Tar entries of all layers together.
    pub(crate) entries: usize,
    /// Uncompressed bytes of all layers together.
    pub(crate) uncompressed: u64,
    /// Problems merging the layers that an unpacker would also trip over
    /// (each is logged when the view is made).
    pub(crate) merge_warnings: usize,
}

impl ImageView {
    /// The view of an image whose layer indexes are all there.
    pub(crate) fn from_indexes(
        image: ResolvedImage,
        source: Source,
        cache: Arc<ChunkCache>,
        layers: Vec<Arc<LayerIndex>>,
        read_timeout: Duration,
    ) -> Arc<ImageView> {
        let tables: Vec<&[crate::layer::Entry]> =
            layers.iter().map(|l| l.entries.as_slice()).collect();
        let tree = Tree::build(&tables);
        Arc::new(ImageView {
            image,
            source,
            cache,
            layers,
            tree,
            read_timeout,
            active_reads: AtomicUsize::new(0),
        })
    }

    /// The merged tree: lookups, attributes and listings.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The inode numbered `ino`.
    pub(crate) fn inode(&self, ino: u64) -> Option<&Inode> {
        self.tree.get(ino)
    }

    /// The image this is a view of (reference, manifest, layers).
    pub(crate) fn image(&self) -> &ResolvedImage {
        &self.image
    }

    /// The digest of the manifest the view was made from.
    pub(crate) fn manifest_digest(&self) -> &Digest {
        &self.image.manifest_digest
    }

    /// Where the image comes from (registry URL or layout directory).
    pub(crate) fn location(&self) -> &str {
        self.source.location()
    }

    /// What the registry has sent so far for this view.
    pub fn fetch_stats(&self) -> FetchStats {
        self.source.stats()
    }

    /// Sizes of the view.
    pub(crate) fn stats(&self) -> ViewStats {
        ViewStats {
            inodes: self.tree.len(),
            layers: self.layers.len(),
            entries: self.layers.iter().map(|l| l.entries.len()).sum(),
            uncompressed: self.layers.iter().map(|l| l.uncompressed_size).sum(),
            merge_warnings: self.tree.warnings.len(),
        }
    }

    pub(crate) fn source(&self) -> &Source {
        &self.source
    }

    pub(crate) fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    /// Read up to `len` bytes of a regular file at `offset`. Short only at EOF.
    pub async fn read(&self, ino: u64, offset: u64, len: u32) -> Result<Bytes, ViewError> {
        self.active_reads.fetch_add(1, Ordering::SeqCst);
        let r = tokio::time::timeout(self.read_timeout, self.read_inner(ino, offset, len)).await;
        self.active_reads.fetch_sub(1, Ordering::SeqCst);
        r.unwrap_or(Err(ViewError::Timeout(self.read_timeout)))
    }

    async fn read_inner(&self, ino: u64, offset: u64, len: u32) -> Result<Bytes, ViewError> {
        let inode = self.tree.get(ino).ok_or(ViewError::NoInode(ino))?;
        if inode.kind != EntryKind::File {
            return Err(ViewError::NotFile(ino));
        }
        let end = inode.size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok(Bytes::new());
        }
        let Some(data) = inode.data else {
            return Ok(Bytes::new());
        };
        let index = &self.layers[data.layer as usize];
        let entry = &index.entries[data.entry as usize];
        self.read_path().read_entry(index, entry, offset, end).await
    }

    fn read_path(&self) -> ReadPath<'_> {
        ReadPath {
            source: &self.source,
            cache: &self.cache,
        }
    }

    /// Layer `li`'s index.
    pub(crate) fn layer(&self, li: usize) -> &Arc<LayerIndex> {
        &self.layers[li]
    }

    /// Index of the layer with digest `digest`.
    pub(crate) fn layer_of(&self, digest: &Digest) -> Option<usize> {
        self.layers.iter().position(|l| &l.digest == digest)
    }

    /// Chunks of layer `li` in the same group are cheapest fetched by one
    /// request (for gzip, the chunks decoded from one checkpoint).
    pub(crate) fn fetch_group(&self, li: usize, id: u64) -> u64 {
        self.layers[li].codec().fetch_group(id)
    }

    /// The chunks `ids` (sorted) of layer `li`, fetching what is missing.
    pub(crate) async fn chunks(&self, li: usize, ids: &[u64]) -> Result<Vec<Bytes>, ViewError> {
        let index = &self.layers[li];
        Ok(self.read_path().chunks_noting_hits(index, ids).await?.0)
    }

    /// Fetch every chunk of every layer that is not cached yet. `background`
    /// makes it yield to foreground reads (it pauses while any are running).
    pub async fn fill_all(&self, background: bool, progress: &Progress) -> Result<(), ViewError> {
        for (li, layer) in self.layers.iter().enumerate() {
            let bar = progress.items(
                format!("pull {}", layer.digest.short()),
                layer.chunk_count(),
                "chunks",
            );
            for run in layer.codec().fill_runs() {
                if background {
                    while self.active_reads.load(Ordering::SeqCst) > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                let ids: Vec<u64> = run
                    .clone()
                    .filter(|&i| {
                        !self.cache.contains(&ChunkKey {
                            layer: layer.digest.clone(),
                            id: i,
                        })
                    })
                    .collect();
                if !ids.is_empty() {
                    self.chunks(li, &ids).await?;
                }
                bar.inc(run.end - run.start);
            }
            bar.finish();
        }
        Ok(())
    }
}
