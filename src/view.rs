//! The image view: the merged tree of an image plus the read path beneath it.
//! FUSE (and later TFTP and NFS) are thin wrappers around this one type.
//!
//! A read of `len` bytes at `offset` of an inode becomes a set of chunk ids in
//! the owning layer's address space, which come from the cache or, on a miss,
//! from one range request per run of adjacent missing chunks, verified before
//! they are stored or returned.

use crate::cache::{ChunkCache, ChunkKey, Claim};
use crate::digest::Digest;
use crate::indexer::IndexError;
use crate::layer::estargz;
use crate::layer::index::{IndexDetail, LayerIndex, CHUNK_SIZE};
use crate::layer::EntryKind;
use crate::profile::trace;
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::registry::{RegistryError, RegistryOptions, ResolvedImage, Source};
use crate::tree::{Inode, Tree};
use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Cached chunks (256 KiB each) a reader is kept ahead of, in the page
/// cache: 16 MiB of chunk files being read from disk while FUSE copies.
const READ_AHEAD_CHUNKS: u64 = 64;

/// Chunks of a tar or eStargz layer worth fetching by one request (4 MiB).
const FETCH_GROUP_CHUNKS: u64 = 16;

#[derive(Clone, Debug)]
pub struct ViewOptions {
    pub cache_dir: PathBuf,
    pub cache_size: u64,
    pub registry: RegistryOptions,
    /// A read that cannot be satisfied within this time fails with EIO.
    pub read_timeout: Duration,
}

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

/// One layer of the image as the read path sees it.
pub struct LayerView {
    pub index: Arc<LayerIndex>,
}

pub struct ImageView {
    pub image: ResolvedImage,
    pub source: Source,
    pub cache: Arc<ChunkCache>,
    pub layers: Vec<LayerView>,
    pub tree: Tree,
    read_timeout: Duration,
    /// Foreground reads in progress; the background fill waits while > 0.
    active_reads: AtomicUsize,
}

impl ImageView {
    /// Resolve the reference, make sure every layer index exists (building
    /// missing ones concurrently, with a progress bar each) and merge the tree.
    pub async fn open(
        reference: &ImageRef,
        opts: &ViewOptions,
        progress: &Progress,
    ) -> Result<Arc<ImageView>, ViewError> {
        let cache = Arc::new(ChunkCache::open(&opts.cache_dir, opts.cache_size)?);
        let (source, image) = Source::open(reference, &opts.registry).await?;
        Self::with_parts(image, source, cache, opts.read_timeout, progress).await
    }

    pub async fn with_parts(
        image: ResolvedImage,
        source: Source,
        cache: Arc<ChunkCache>,
        read_timeout: Duration,
        progress: &Progress,
    ) -> Result<Arc<ImageView>, ViewError> {
        crate::progressive::Opening::start(image, source, cache, read_timeout, progress)
            .await
            .finished()
            .await
    }

    /// The view of an image whose layer indexes are all there.
    pub(crate) fn from_indexes(
        image: ResolvedImage,
        source: Source,
        cache: Arc<ChunkCache>,
        indexes: Vec<Arc<LayerIndex>>,
        read_timeout: Duration,
    ) -> Arc<ImageView> {
        let layers: Vec<LayerView> = indexes
            .into_iter()
            .map(|index| LayerView { index })
            .collect();
        let tables: Vec<&[crate::layer::Entry]> =
            layers.iter().map(|l| l.index.entries.as_slice()).collect();
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

    pub fn inode(&self, ino: u64) -> Option<&Inode> {
        self.tree.get(ino)
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
        let li = data.layer as usize;
        let index = &self.layers[li].index;
        let entry = &index.entries[data.entry as usize];
        self.read_path().read_entry(index, entry, offset, end).await
    }

    fn read_path(&self) -> ReadPath<'_> {
        ReadPath {
            source: &self.source,
            cache: &self.cache,
        }
    }

    /// Chunks of layer `li` in the same group are cheapest fetched by one
    /// request: for gzip, the chunks decoded from one checkpoint (each
    /// request starts decoding at the checkpoint before its first chunk).
    pub fn fetch_group(&self, li: usize, id: u64) -> u64 {
        match &self.layers[li].index.detail {
            IndexDetail::Gzip(z) => {
                let at = id * CHUNK_SIZE;
                z.checkpoints
                    .partition_point(|c| c.out_off <= at)
                    .saturating_sub(1) as u64
            }
            IndexDetail::Tar { .. } | IndexDetail::Estargz(_) => id / FETCH_GROUP_CHUNKS,
        }
    }

    /// The chunks `ids` (sorted) of layer `li`, fetching what is missing.
    pub async fn chunks(&self, li: usize, ids: &[u64]) -> Result<Vec<Bytes>, ViewError> {
        let index = &self.layers[li].index;
        Ok(self.read_path().chunks_noting_hits(index, ids).await?.0)
    }

    /// Fetch every chunk of every layer that is not cached yet. `background`
    /// makes it yield to foreground reads (it pauses while any are running).
    pub async fn fill_all(&self, background: bool, progress: &Progress) -> Result<(), ViewError> {
        for (li, layer) in self.layers.iter().enumerate() {
            let bar = progress.items(
                format!("pull {}", layer.index.digest.short()),
                layer.index.chunk_count(),
                "chunks",
            );
            for run in fill_runs(&layer.index) {
                if background {
                    while self.active_reads.load(Ordering::SeqCst) > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                let ids: Vec<u64> = run
                    .clone()
                    .filter(|&i| {
                        !self.cache.contains(&ChunkKey {
                            layer: layer.index.digest.clone(),
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

/// The read path of one layer below the merged tree: cache lookups, range
/// fetches and their verification. Shared by [`ImageView`] and the
/// provisional view of an image still being indexed.
pub(crate) struct ReadPath<'a> {
    pub source: &'a Source,
    pub cache: &'a Arc<ChunkCache>,
}

impl ReadPath<'_> {
    /// Bytes [offset, end) of the regular file `entry` of the layer `index`.
    pub(crate) async fn read_entry(
        &self,
        index: &Arc<LayerIndex>,
        entry: &crate::layer::Entry,
        offset: u64,
        end: u64,
    ) -> Result<Bytes, ViewError> {
        match &index.detail {
            IndexDetail::Gzip(_) | IndexDetail::Tar { .. } => {
                let (start, stop) = (entry.data + offset, entry.data + end);
                let first = start / CHUNK_SIZE;
                let last = stop.div_ceil(CHUNK_SIZE);
                let ids: Vec<u64> = (first..last).collect();
                // Keep a window of READ_AHEAD_CHUNKS ahead of the reader: each
                // read advises as many new chunks as it consumed.
                let file_end = (entry.data + entry.size).div_ceil(CHUNK_SIZE);
                let ahead = (last + READ_AHEAD_CHUNKS).min(file_end);
                let from = if offset == 0 {
                    last
                } else {
                    ahead.saturating_sub(ids.len() as u64).max(last)
                };
                let advise: Vec<ChunkKey> = (from..ahead)
                    .map(|id| ChunkKey {
                        layer: index.digest.clone(),
                        id,
                    })
                    .collect();
                self.cache.advise_willneed(&advise);
                if let Some(data) = self.cached_range(index, first..last, start, stop) {
                    trace::note_chunks(&index.digest, &ids);
                    trace::note_hit(stop - start);
                    return Ok(data);
                }
                let (chunks, hits) = self.chunks_noting_hits(index, &ids).await?;
                if trace::is_traced() {
                    let from_cache = ids
                        .iter()
                        .zip(&hits)
                        .filter(|(_, hit)| **hit)
                        .map(|(id, _)| overlap(id * CHUNK_SIZE..(id + 1) * CHUNK_SIZE, start..stop))
                        .sum();
                    trace::note_hit(from_cache);
                }
                Ok(assemble(&chunks, first * CHUNK_SIZE, start, stop))
            }
            IndexDetail::Estargz(ez) => {
                let first = entry.data as usize;
                // A file's chunks are adjacent; the next file's starts at offset 0.
                let count = 1 + ez.chunks[first + 1..]
                    .iter()
                    .take_while(|c| c.file_offset > 0)
                    .count();
                let file_chunks = &ez.chunks[first..first + count];
                let lo = file_chunks.partition_point(|c| c.file_offset + c.size <= offset);
                let hi = file_chunks.partition_point(|c| c.file_offset < end);
                let ids: Vec<u64> = (first + lo..first + hi).map(|i| i as u64).collect();
                let (chunks, hits) = self.chunks_noting_hits(index, &ids).await?;
                if trace::is_traced() {
                    let from_cache = file_chunks[lo..hi]
                        .iter()
                        .zip(&hits)
                        .filter(|(_, hit)| **hit)
                        .map(|(c, _)| overlap(c.file_offset..c.file_offset + c.size, offset..end))
                        .sum();
                    trace::note_hit(from_cache);
                }
                let base = file_chunks.get(lo).map_or(0, |c| c.file_offset);
                Ok(assemble(&chunks, base, offset, end))
            }
        }
    }

    /// Bytes [start, stop) of `index`'s uncompressed stream if every chunk
    /// of `ids` is cached, read from the chunk files straight into one
    /// buffer: the warm sequential read's path, one copy instead of three
    /// (file to chunk, chunk without its header, chunks to the reply).
    fn cached_range(
        &self,
        index: &LayerIndex,
        ids: std::ops::Range<u64>,
        start: u64,
        stop: u64,
    ) -> Option<Bytes> {
        let mut buf = Vec::with_capacity(((ids.end - ids.start) * CHUNK_SIZE) as usize);
        for id in ids.clone() {
            let key = ChunkKey {
                layer: index.digest.clone(),
                id,
            };
            let before = buf.len();
            if !self.cache.get_into(&key, &mut buf) {
                return None;
            }
            // Only the layer's last chunk is short.
            if id + 1 < ids.end && (buf.len() - before) as u64 != CHUNK_SIZE {
                return None;
            }
        }
        let base = ids.start * CHUNK_SIZE;
        let hi = ((stop - base) as usize).min(buf.len());
        let lo = ((start - base) as usize).min(hi);
        Some(Bytes::from(buf).slice(lo..hi))
    }

    /// [`ImageView::chunks`], and which of them were in the cache already.
    async fn chunks_noting_hits(
        &self,
        index: &Arc<LayerIndex>,
        ids: &[u64],
    ) -> Result<(Vec<Bytes>, Vec<bool>), ViewError> {
        let layer = &index.digest;
        trace::note_chunks(layer, ids);
        let mut hits = vec![false; ids.len()];
        let mut first_round = true;
        let mut out: Vec<Option<Bytes>> = vec![None; ids.len()];
        for _attempt in 0..4 {
            let mut missing = Vec::new();
            for ((slot, &id), hit) in out.iter_mut().zip(ids).zip(hits.iter_mut()) {
                if slot.is_none() {
                    let key = ChunkKey {
                        layer: layer.clone(),
                        id,
                    };
                    match self.cache.get(&key) {
                        Some(b) => {
                            *hit = first_round;
                            *slot = Some(b)
                        }
                        None => missing.push(key),
                    }
                }
            }
            first_round = false;
            if missing.is_empty() {
                let chunks = out.into_iter().map(|b| b.expect("filled")).collect();
                return Ok((chunks, hits));
            }
            let Claim { mine, waits } = self.cache.claim(&missing);
            let waited = Instant::now();
            if let Some(guard) = mine {
                let want: Vec<u64> = guard.keys.iter().map(|k| k.id).collect();
                let got = self.fill(index, &want).await?;
                for (slot, id) in out.iter_mut().zip(ids) {
                    if slot.is_none() {
                        if let Some(b) = got.get(id) {
                            *slot = Some(b.clone());
                        }
                    }
                }
                drop(guard);
            }
            Claim::wait_others(waits).await;
            trace::note_wait(waited.elapsed());
        }
        Err(ViewError::BadData {
            layer: layer.clone(),
            msg: "chunks kept disappearing from the cache (is --cache-size too small?)".into(),
        })
    }

    /// Fetch, verify and cache the chunks `ids` (sorted), one range request per
    /// run of adjacent ids. Returns at least the requested chunks.
    async fn fill(
        &self,
        index: &Arc<LayerIndex>,
        ids: &[u64],
    ) -> Result<HashMap<u64, Bytes>, ViewError> {
        let mut got = HashMap::new();
        for run in runs(ids) {
            let started = Instant::now();
            let (produced, compressed_bytes) = match &index.detail {
                IndexDetail::Gzip(_) => self.fill_gzip(index, run).await?,
                IndexDetail::Tar { chunk_sha256 } => {
                    self.fill_tar(index, chunk_sha256, run).await?
                }
                IndexDetail::Estargz(ez) => self.fill_estargz(index, ez, run).await?,
            };
            trace::note_fetch(trace::FetchNote {
                layer: index.digest.clone(),
                started,
                duration: started.elapsed(),
                compressed_bytes,
                bytes: produced.iter().map(|(_, d)| d.len() as u64).sum(),
            });
            for (id, data) in produced {
                let key = ChunkKey {
                    layer: index.digest.clone(),
                    id,
                };
                if let Err(e) = self.cache.put(&key, data.clone()) {
                    // Serving the verified bytes still works; only caching failed.
                    tracing::warn!("could not cache chunk: {e}");
                }
                got.insert(id, data);
            }
        }
        Ok(got)
    }

    async fn fill_gzip(
        &self,
        index: &Arc<LayerIndex>,
        run: std::ops::Range<u64>,
    ) -> Result<(Vec<(u64, Bytes)>, u64), ViewError> {
        let IndexDetail::Gzip(z) = &index.detail else {
            unreachable!()
        };
        let out_end =
            span_end(z, run.start * CHUNK_SIZE, run.end * CHUNK_SIZE).min(index.uncompressed_size);
        let plan = z.plan(run.start * CHUNK_SIZE..out_end);
        let compressed = self
            .source
            .fetch_range(&index.digest, plan.compressed.clone())
            .await?;
        let wire = compressed.len() as u64;
        let index = index.clone();
        let out = tokio::task::spawn_blocking(move || {
            let IndexDetail::Gzip(z) = &index.detail else {
                unreachable!()
            };
            let start = z.checkpoints[plan.checkpoint].out_off;
            let mut out = Vec::new();
            let mut cur = BytesMut::new();
            z.decode(&plan, &compressed, out_end, &mut |mut at, mut data| {
                while !data.is_empty() && at < out_end {
                    let chunk_start = at / CHUNK_SIZE * CHUNK_SIZE;
                    // A checkpoint inside a chunk leaves that chunk partial: skip it.
                    let skip = if chunk_start < start {
                        chunk_start + CHUNK_SIZE - at
                    } else {
                        0
                    };
                    let take = if skip > 0 {
                        skip.min(data.len() as u64) as usize
                    } else {
                        let room = (CHUNK_SIZE - cur.len() as u64).min(out_end - at);
                        let take = room.min(data.len() as u64) as usize;
                        cur.extend_from_slice(&data[..take]);
                        take
                    };
                    data = &data[take..];
                    at += take as u64;
                    if skip == 0
                        && (cur.len() as u64 == CHUNK_SIZE || at == index.uncompressed_size)
                    {
                        out.push((chunk_start / CHUNK_SIZE, cur.split().freeze()));
                    }
                }
            })
            .map_err(|e| ViewError::BadData {
                layer: index.digest.clone(),
                msg: e.to_string(),
            })?;
            Ok::<_, ViewError>(out)
        })
        .await
        .map_err(|e| ViewError::BadData {
            layer: Digest::of_bytes(b""),
            msg: format!("decoder task failed: {e}"),
        })??;
        Ok((out, wire))
    }

    async fn fill_tar(
        &self,
        index: &LayerIndex,
        hashes: &[[u8; 32]],
        run: std::ops::Range<u64>,
    ) -> Result<(Vec<(u64, Bytes)>, u64), ViewError> {
        let end = (run.end * CHUNK_SIZE).min(index.uncompressed_size);
        let body = self
            .source
            .fetch_range(&index.digest, run.start * CHUNK_SIZE..end)
            .await?;
        let mut out = Vec::new();
        for (i, id) in run.enumerate() {
            let lo = i * CHUNK_SIZE as usize;
            let piece = body.slice(lo..(lo + CHUNK_SIZE as usize).min(body.len()));
            let want = hashes.get(id as usize);
            if want != Some(&Sha256::digest(&piece).into()) {
                return Err(ViewError::BadData {
                    layer: index.digest.clone(),
                    msg: format!("chunk {id} from the registry failed its sha256 check"),
                });
            }
            out.push((id, piece));
        }
        Ok((out, body.len() as u64))
    }

    async fn fill_estargz(
        &self,
        index: &LayerIndex,
        ez: &estargz::EstargzIndex,
        run: std::ops::Range<u64>,
    ) -> Result<(Vec<(u64, Bytes)>, u64), ViewError> {
        let chunks = &ez.chunks[run.start as usize..run.end as usize];
        let base = chunks[0].comp_start;
        let body = self
            .source
            .fetch_range(&index.digest, base..chunks[chunks.len() - 1].comp_end)
            .await?;
        let mut out = Vec::new();
        for (id, c) in run.zip(chunks) {
            let raw = body.slice((c.comp_start - base) as usize..(c.comp_end - base) as usize);
            let data = estargz::decode_chunk(c, &raw).map_err(|e| ViewError::BadData {
                layer: index.digest.clone(),
                msg: e.to_string(),
            })?;
            out.push((id, Bytes::from(data)));
        }
        Ok((out, body.len() as u64))
    }
}

/// The runs of chunk ids a full fill requests, in order. For gzip layers a
/// run starts at the first chunk after a checkpoint, so each request decodes
/// one span from its own checkpoint instead of re-fetching the previous one.
fn fill_runs(index: &LayerIndex) -> Vec<std::ops::Range<u64>> {
    // About 4 MiB of output per request where the format has no spans.
    const RUN: u64 = 16;
    let total = index.chunk_count();
    let mut starts: Vec<u64> = match &index.detail {
        IndexDetail::Gzip(z) => z
            .checkpoints
            .iter()
            .map(|c| c.out_off.div_ceil(CHUNK_SIZE))
            .collect(),
        _ => (0..total).step_by(RUN as usize).collect(),
    };
    starts.push(0);
    starts.push(total);
    starts.sort_unstable();
    starts.dedup();
    starts
        .windows(2)
        .filter(|w| w[0] < total)
        .map(|w| w[0]..w[1].min(total))
        .collect()
}

/// Where to stop decoding a gzip fill of [start, end). Decoding must begin at
/// a checkpoint anyway, so a fill that stays inside one checkpoint span runs
/// on to the end of that span: a sequential reader then costs one request
/// per span instead of one per chunk (each re-decoding from the checkpoint),
/// and a random read still fetches at most one span plus the read.
fn span_end(z: &crate::layer::zran::ZranIndex, start: u64, end: u64) -> u64 {
    let cp = z.checkpoints.partition_point(|c| c.out_off <= start);
    match z.checkpoints.get(cp) {
        // The fill already crosses into the next span: do not add a third.
        Some(next) if end > next.out_off => end,
        Some(next) => next.out_off.div_ceil(CHUNK_SIZE) * CHUNK_SIZE,
        None => u64::MAX,
    }
}

/// Split sorted ids into runs of consecutive values.
/// Bytes two ranges share.
fn overlap(a: std::ops::Range<u64>, b: std::ops::Range<u64>) -> u64 {
    a.end.min(b.end).saturating_sub(a.start.max(b.start))
}

fn runs(ids: &[u64]) -> Vec<std::ops::Range<u64>> {
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    for &id in ids {
        match out.last_mut() {
            Some(r) if r.end == id => r.end += 1,
            _ => out.push(id..id + 1),
        }
    }
    out
}

/// Concatenate consecutive chunks starting at address `base` and cut
/// [start, stop) out of them.
pub(crate) fn assemble(chunks: &[Bytes], base: u64, start: u64, stop: u64) -> Bytes {
    if chunks.len() == 1 {
        let c = &chunks[0];
        let lo = ((start - base) as usize).min(c.len());
        let hi = ((stop - base) as usize).min(c.len());
        return c.slice(lo..hi);
    }
    let mut out = BytesMut::with_capacity((stop - start) as usize);
    let mut at = base;
    for c in chunks {
        let (c_lo, c_hi) = (at, at + c.len() as u64);
        let lo = start.max(c_lo);
        let hi = stop.min(c_hi);
        if lo < hi {
            out.extend_from_slice(&c[(lo - c_lo) as usize..(hi - c_lo) as usize]);
        }
        at = c_hi;
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_of_ranges() {
        assert_eq!(overlap(0..10, 5..20), 5);
        assert_eq!(overlap(5..20, 0..10), 5);
        assert_eq!(overlap(0..10, 10..20), 0);
        assert_eq!(overlap(0..100, 20..30), 10);
    }

    #[test]
    fn runs_group_adjacent_ids() {
        assert_eq!(runs(&[1, 2, 3, 7, 9, 10]), vec![1..4, 7..8, 9..11]);
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn fill_runs_cover_every_chunk_once() {
        use crate::layer::index::INDEX_VERSION;
        let mk = |detail: IndexDetail, size: u64| LayerIndex {
            version: INDEX_VERSION,
            digest: Digest::of_bytes(b"x"),
            format: crate::layer::LayerFormat::Gzip,
            compressed_size: 0,
            uncompressed_size: size,
            entries: Vec::new(),
            detail,
        };
        let tar = mk(
            IndexDetail::Tar {
                chunk_sha256: Vec::new(),
            },
            40 * CHUNK_SIZE + 5,
        );
        assert_eq!(fill_runs(&tar), vec![0..16, 16..32, 32..41]);
        let cp = |out_off| crate::layer::zran::Checkpoint {
            in_off: 0,
            out_off,
            bits: 0,
            window: Vec::new(),
            kind: Default::default(),
        };
        let z = crate::layer::zran::ZranIndex {
            compressed_size: 0,
            uncompressed_size: 30 * CHUNK_SIZE,
            checkpoints: vec![cp(0), cp(10 * CHUNK_SIZE + 7), cp(20 * CHUNK_SIZE)],
            blocks: Vec::new(),
        };
        let gz = mk(IndexDetail::Gzip(z), 30 * CHUNK_SIZE);
        assert_eq!(fill_runs(&gz), vec![0..11, 11..20, 20..30]);
    }

    #[test]
    fn assemble_cuts_across_chunks() {
        let chunks = [
            Bytes::from_static(b"abcd"),
            Bytes::from_static(b"efgh"),
            Bytes::from_static(b"ij"),
        ];
        assert_eq!(assemble(&chunks, 100, 102, 109), &b"cdefghi"[..]);
        assert_eq!(assemble(&chunks[..1], 100, 101, 103), &b"bc"[..]);
    }
}
