//! Building a layer's index: one streaming pass over a gzip or tar blob (which
//! also fills the cache with every chunk it decodes), or two range fetches for
//! an eStargz blob (footer, then TOC). Indexes already in the cache are reused.
//!
//! The streaming pass hashes the compressed stream and refuses the result if
//! the layer digest does not match: neither the index nor the chunks decoded
//! on the way reach the cache until the digest is confirmed.
//!
//! Indexes can also be published to the registry beside the image
//! ([`publish`], `lazyboot index --push`) and pulled from there instead of
//! a streaming pass ([`fetch_published`], which states the trust model).

use crate::cache::ChunkCache;
use crate::digest::Digest;
use crate::layer::estargz;
use crate::layer::index::{IndexDetail, LayerIndex, CHUNK_SIZE, INDEX_VERSION};
use crate::layer::tar_entries;
use crate::layer::zran::{ZranReader, BLOCK_SIZE};
use crate::layer::{
    format_from_media_type, normalize_path, Entry, EntryKind, FormatError, LayerFormat,
};
use crate::prefetch::PrefetchPlan;
use crate::progress::Progress;
use crate::registry::{
    LayerDesc, Published, PushOutcome, ReferrersError, RegistryError, ResolvedImage, Source,
};
use bytes::Bytes;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use parking_lot::{Mutex, RwLock};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

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

/// What a streaming pass has produced so far: the entries whose tar headers
/// it has read and the decoded chunks it has staged (not yet checked against
/// the layer digest). The provisional view ([`crate::progressive`]) serves
/// from it while the pass runs.
pub struct PassProgress {
    pub entries: RwLock<Vec<Entry>>,
    state: Mutex<PassState>,
    /// Bumped on every change; shared by all layers of one image.
    tick: Arc<tokio::sync::watch::Sender<u64>>,
}

#[derive(Clone, Debug, Default)]
pub struct PassState {
    /// Chunks `0..staged` are in `dir`, each a self-checking file.
    pub staged: u64,
    pub dir: Option<PathBuf>,
    /// `None` while the pass runs (or before it starts); `Some(Ok)` once the
    /// digest matched and the chunks moved into the cache.
    pub outcome: Option<Result<(), String>>,
}

impl PassProgress {
    pub fn new(tick: Arc<tokio::sync::watch::Sender<u64>>) -> Arc<Self> {
        Arc::new(PassProgress {
            entries: RwLock::new(Vec::new()),
            state: Mutex::new(PassState::default()),
            tick,
        })
    }

    pub fn state(&self) -> PassState {
        self.state.lock().clone()
    }

    fn bump(&self) {
        self.tick.send_modify(|g| *g += 1);
    }

    fn started(&self, dir: PathBuf) {
        self.state.lock().dir = Some(dir);
        self.bump();
    }

    fn entry(&self, e: Entry) {
        self.entries.write().push(e);
        self.bump();
    }

    fn staged(&self, count: u64) {
        self.state.lock().staged = count;
        self.bump();
    }

    fn finish(&self, outcome: Result<(), String>) {
        let mut st = self.state.lock();
        st.staged = 0;
        st.outcome = Some(outcome);
        drop(st);
        self.bump();
    }
}

/// The index of `layer`, from the cache or built now, reporting a streaming
/// pass's progress to `progress` as it goes (and its end, either way). For
/// an image named by tag, an index pulled by [`fetch_published`] counts as
/// cached.
pub async fn ensure_index(
    source: &Source,
    cache: &Arc<ChunkCache>,
    layer: &LayerDesc,
    bar: ProgressBar,
    progress: Arc<PassProgress>,
) -> Result<Arc<LayerIndex>, IndexError> {
    let r = ensure(
        source,
        cache,
        layer,
        bar,
        source.named_by_tag(),
        Some(progress.clone()),
    )
    .await;
    progress.finish(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
    r
}

/// Like [`ensure_index`], but never an index pulled from the registry:
/// [`publish`] vouches only for indexes this lazyboot built itself.
pub async fn ensure_built_index(
    source: &Source,
    cache: &Arc<ChunkCache>,
    layer: &LayerDesc,
    bar: ProgressBar,
) -> Result<Arc<LayerIndex>, IndexError> {
    ensure(source, cache, layer, bar, false, None).await
}

async fn ensure(
    source: &Source,
    cache: &Arc<ChunkCache>,
    layer: &LayerDesc,
    bar: ProgressBar,
    published_ok: bool,
    progress: Option<Arc<PassProgress>>,
) -> Result<Arc<LayerIndex>, IndexError> {
    let name = LayerIndex::cache_name(&layer.digest);
    if let Some(bytes) = cache.load_index(&name) {
        match LayerIndex::decode(&bytes, &layer.digest) {
            Ok(idx) => {
                bar.finish_with_message("index cached");
                return Ok(Arc::new(idx));
            }
            Err(e) => {
                tracing::warn!(layer = %layer.digest, "cached index unusable ({e}); rebuilding")
            }
        }
    }
    if published_ok {
        if let Some(bytes) = cache.load_index(&published_cache_name(&layer.digest)) {
            // Checked again: nothing read from a cache file is trusted.
            match decode_published(&bytes, layer) {
                Ok(idx) => {
                    bar.finish_with_message("index published");
                    return Ok(Arc::new(idx));
                }
                Err(e) => {
                    tracing::warn!(layer = %layer.digest, "published index unusable ({e}); indexing by streaming")
                }
            }
        }
    }
    let idx = build_index(source, cache, layer, bar.clone(), progress).await?;
    let encoded = idx.encode().map_err(|e| IndexError::Corrupt {
        layer: layer.digest.clone(),
        msg: e.to_string(),
    })?;
    cache
        .store_index(&name, &encoded)
        .map_err(|source| IndexError::Cache {
            layer: layer.digest.clone(),
            source,
        })?;
    bar.finish_with_message("indexed");
    Ok(Arc::new(idx))
}

/// Where an index pulled from the registry is kept in the cache: beside,
/// never instead of, the name of an index this lazyboot built, so that
/// [`ensure_built_index`] and images pinned by digest can tell them apart.
pub fn published_cache_name(layer: &Digest) -> String {
    format!("{}.published.idx", layer.hex())
}

/// What [`pull_published`] took from the registry.
#[derive(Clone, Debug)]
pub struct PulledIndexes {
    pub artifact: Digest,
    /// Layer indexes stored (eStargz layers have none: they are cheap to index).
    pub layers: usize,
    /// Whether a prefetch plan was stored (a plan learned here is kept).
    pub plan: bool,
}

/// Why a published artifact was not used.
#[derive(Debug, thiserror::Error)]
pub enum PublishedError {
    #[error(transparent)]
    Referrers(#[from] ReferrersError),
    #[error("lazyboot artifact {artifact}: index of layer {layer}: {reason}; not used")]
    BadIndex {
        artifact: Digest,
        layer: Digest,
        reason: String,
    },
    #[error("lazyboot artifact {artifact}: prefetch plan: {reason}; not used")]
    BadPlan { artifact: Digest, reason: String },
    #[error("storing published indexes: {0}")]
    Cache(#[from] crate::cache::CacheError),
}

/// Before any streaming pass of an image: if no layer of it is indexed in
/// this cache yet, pull the indexes (and prefetch plan) another lazyboot
/// published for it with `lazyboot index --push`, once for the whole image,
/// so that [`ensure_index`] finds them. Never fails: without a usable
/// artifact the layers are indexed by streaming as before. Returns the
/// artifact used.
///
/// Trust model. A gzip or tar layer can only be checked against its digest
/// by reading all of it: that is what the streaming pass is for, and what
/// makes every byte served traceable to the manifest (the block and chunk
/// sha256s recorded in an index come from that digest-checked pass). A
/// pulled index skips the pass, and what makes it right - the entry table
/// (names, modes, owners, where each file's bytes are), the checkpoints'
/// 32 KiB windows and the block/chunk hashes - cannot be checked without
/// reading the layer. Reads still verify every compressed block or tar
/// chunk against the index's hashes, but those hashes are the publisher's
/// word too: an index made up by whoever could push to the repository (or by
/// the registry itself) makes lazyboot serve files of its choosing. So:
///
/// - Published indexes are used only for images named by a registry tag.
///   Whoever can push to the repository, or runs the registry, can already
///   choose what a tag boots; a published index gives them no more power
///   than that. An image pinned by digest trusts nothing but the digest, so
///   it never uses published indexes (not even ones pulled into a shared
///   cache for a tag: they are kept under [`published_cache_name`]), and
///   neither do `oci:` layouts.
/// - What can be checked is: the artifact is ours, about this manifest, of
///   our index version; every blob matches its descriptor's digest and size;
///   each index is bound to its layer's digest and size, is of the layer's
///   format (gzip or tar; eStargz indexes are refused, their TOC is checked
///   against the manifest's annotation and costs two range reads), has
///   checkpoints, blocks and chunk hashes consistent with the layer's size,
///   and entries whose paths are normalised and stay inside the image and
///   whose data lies inside the layer. An artifact with any part failing is
///   not used at all.
/// - `lazyboot index --push` publishes only indexes it built itself
///   ([`ensure_built_index`]), never ones it pulled.
pub async fn fetch_published(
    source: &Source,
    image: &ResolvedImage,
    cache: &ChunkCache,
) -> Option<Digest> {
    if !source.named_by_tag() || image.layers.is_empty() {
        return None;
    }
    // Warm or partly warm: no registry round trip for the artifact.
    let indexed = image.layers.iter().any(|l| {
        cache.has_index(&LayerIndex::cache_name(&l.digest))
            || cache.has_index(&published_cache_name(&l.digest))
    });
    if indexed {
        return None;
    }
    match pull_published(source, image, cache).await {
        Ok(Some(p)) => {
            tracing::info!(
                image = %image.reference, artifact = %p.artifact, layers = p.layers, plan = p.plan,
                "using published indexes: no streaming pass for those layers"
            );
            Some(p.artifact)
        }
        Ok(None) => {
            tracing::debug!(image = %image.reference, "no published indexes");
            None
        }
        Err(e @ PublishedError::Referrers(ReferrersError::Registry(_))) => {
            tracing::info!(image = %image.reference, "published indexes unavailable ({e}); indexing by streaming");
            None
        }
        Err(e) => {
            tracing::warn!(image = %image.reference, "{e}; indexing by streaming");
            None
        }
    }
}

/// The work of [`fetch_published`] without its preconditions, reasons for
/// not using an artifact as errors. Everything is checked before anything
/// is stored.
pub async fn pull_published(
    source: &Source,
    image: &ResolvedImage,
    cache: &ChunkCache,
) -> Result<Option<PulledIndexes>, PublishedError> {
    let Some(pulled) = source.find_published(image, INDEX_VERSION).await? else {
        return Ok(None);
    };
    let artifact = pulled.artifact.clone();
    let mut chunk_counts = HashMap::new();
    let mut checked = Vec::new();
    for layer in &image.layers {
        let Some(bytes) = pulled.layer_indexes.get(&layer.digest) else {
            continue;
        };
        let idx = decode_published(bytes, layer).map_err(|reason| PublishedError::BadIndex {
            artifact: artifact.clone(),
            layer: layer.digest.clone(),
            reason,
        })?;
        chunk_counts.insert(layer.digest.clone(), idx.chunk_count());
        checked.push((layer, bytes));
    }
    let plan = match &pulled.plan {
        Some(bytes) => Some(check_plan(bytes, image, &chunk_counts).map_err(|reason| {
            PublishedError::BadPlan {
                artifact: artifact.clone(),
                reason,
            }
        })?),
        None => None,
    };
    for (layer, bytes) in &checked {
        cache.store_index(&published_cache_name(&layer.digest), bytes)?;
    }
    // A plan learned from this server's own nodes wins over one from elsewhere.
    let plan_stored = match plan {
        Some(p) if PrefetchPlan::load(cache, &image.manifest_digest).is_none() => {
            cache.store_index(
                &PrefetchPlan::cache_name(&image.manifest_digest),
                &p.encode(),
            )?;
            true
        }
        _ => false,
    };
    Ok(Some(PulledIndexes {
        artifact,
        layers: checked.len(),
        plan: plan_stored,
    }))
}

/// A published index of `layer`, if it passes every check that can be made
/// without reading the layer (see [`fetch_published`]).
fn decode_published(bytes: &[u8], layer: &LayerDesc) -> Result<LayerIndex, String> {
    let idx = LayerIndex::decode(bytes, &layer.digest).map_err(|e| e.to_string())?;
    check_published(&idx, layer)?;
    Ok(idx)
}

/// Deflate's window: no checkpoint needs more history than this.
const MAX_WINDOW: usize = 32 << 10;

fn check_published(idx: &LayerIndex, layer: &LayerDesc) -> Result<(), String> {
    let media = format_from_media_type(&layer.media_type).map_err(|e| e.to_string())?;
    match (&idx.detail, idx.format, media) {
        (IndexDetail::Gzip(_), LayerFormat::Gzip, LayerFormat::Gzip)
        | (IndexDetail::Tar { .. }, LayerFormat::Tar, LayerFormat::Tar) => {}
        (IndexDetail::Estargz(_), ..) => {
            return Err("eStargz indexes are only ever built from the layer's own TOC".into())
        }
        _ => return Err(format!("a {} index for a {media} layer", idx.format)),
    }
    if idx.compressed_size != layer.size {
        return Err(format!(
            "made for {} bytes of layer, the manifest says {}",
            idx.compressed_size, layer.size
        ));
    }
    let total = idx.uncompressed_size;
    match &idx.detail {
        IndexDetail::Gzip(z) => {
            if z.compressed_size != layer.size || z.uncompressed_size != total {
                return Err("its zran sizes disagree with the index".into());
            }
            if z.blocks.len() as u64 != layer.size.div_ceil(BLOCK_SIZE) {
                return Err(format!(
                    "{} block hashes for {} blocks",
                    z.blocks.len(),
                    layer.size.div_ceil(BLOCK_SIZE)
                ));
            }
            let mut avail = 0;
            for b in &z.blocks {
                if b.out_avail < avail || b.out_avail > total {
                    return Err("block output offsets are out of order".into());
                }
                avail = b.out_avail;
            }
            match z.checkpoints.first() {
                Some(c) if c.out_off == 0 => {}
                _ => return Err("no checkpoint at the start of the stream".into()),
            }
            let mut prev: Option<&crate::layer::zran::Checkpoint> = None;
            for c in &z.checkpoints {
                let ordered = prev.is_none_or(|p| c.out_off > p.out_off && c.in_off >= p.in_off);
                if !ordered
                    || c.in_off > layer.size
                    || c.out_off > total
                    || c.bits > 7
                    || c.window.len() > MAX_WINDOW
                    || c.window.len() as u64 > c.out_off
                {
                    return Err(format!(
                        "malformed checkpoint at output offset {}",
                        c.out_off
                    ));
                }
                prev = Some(c);
            }
        }
        IndexDetail::Tar { chunk_sha256 } => {
            // An uncompressed layer is its own tar stream.
            if total != layer.size {
                return Err(format!(
                    "{total} bytes of tar in a {}-byte layer",
                    layer.size
                ));
            }
            if chunk_sha256.len() as u64 != total.div_ceil(CHUNK_SIZE) {
                return Err(format!(
                    "{} chunk hashes for {total} bytes",
                    chunk_sha256.len()
                ));
            }
        }
        IndexDetail::Estargz(_) => unreachable!("refused above"),
    }
    for e in &idx.entries {
        let bad = |what: &str| Err(format!("entry {:?}: {what}", e.path));
        // The same rules as the tar reader: normalised, never climbing out.
        if normalize_path(&e.path).as_deref() != Some(e.path.as_str()) {
            return bad("path is not normalised or leaves the image");
        }
        if e.mode > 0o7777 {
            return bad("mode has more than permission bits");
        }
        match e.kind {
            EntryKind::Hardlink => {
                let target = e.link_target.as_deref().unwrap_or("..");
                if normalize_path(target).as_deref() != Some(target) {
                    return bad("hard link target is not normalised or leaves the image");
                }
            }
            EntryKind::Symlink if e.link_target.is_none() => return bad("symlink without target"),
            EntryKind::File if e.data.checked_add(e.size).is_none_or(|end| end > total) => {
                return bad("data lies outside the layer")
            }
            _ => {}
        }
    }
    Ok(())
}

/// A published prefetch plan for `image`, checked against the image and the
/// published indexes (`chunk_counts`): a plan only steers prefetching, so
/// this just keeps it from naming what does not exist.
fn check_plan(
    bytes: &[u8],
    image: &ResolvedImage,
    chunk_counts: &HashMap<Digest, u64>,
) -> Result<PrefetchPlan, String> {
    let plan = PrefetchPlan::decode(bytes, &image.manifest_digest).map_err(|e| e.to_string())?;
    for s in &plan.steps {
        let layer = Digest::parse(&s.layer).map_err(|e| e.to_string())?;
        if !image.layers.iter().any(|l| l.digest == layer) {
            return Err(format!("names layer {layer}, which is not in the image"));
        }
        let beyond = chunk_counts.get(&layer).is_some_and(|&n| s.end > n);
        if s.start >= s.end || beyond {
            return Err(format!(
                "chunks {}..{} of layer {layer} do not exist",
                s.start, s.end
            ));
        }
    }
    Ok(plan)
}

/// What [`publish`] pushed.
#[derive(Clone, Debug)]
pub struct PublishReport {
    pub outcome: PushOutcome,
    pub layer_indexes: usize,
    /// eStargz layers, whose indexes are not published (see [`fetch_published`]).
    pub estargz_skipped: usize,
    pub plan: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Referrers(#[from] ReferrersError),
}

/// `lazyboot index --push`: publish the image's layer indexes, built here
/// (a streaming pass for any layer that only has a pulled one), and its
/// prefetch plan if one was learned, as an artifact referring to the image.
pub async fn publish(
    source: &Source,
    image: &ResolvedImage,
    cache: &Arc<ChunkCache>,
    progress: &Progress,
) -> Result<PublishReport, PublishError> {
    if !source.is_registry() {
        return Err(ReferrersError::NotARegistry {
            location: source.location().to_string(),
        }
        .into());
    }
    let mut layer_indexes = Vec::new();
    let mut estargz_skipped = 0;
    for layer in &image.layers {
        let bar = progress.bytes(format!("index {}", layer.digest.short()), layer.size);
        let idx = ensure_built_index(source, cache, layer, bar).await?;
        if matches!(idx.detail, IndexDetail::Estargz(_)) {
            estargz_skipped += 1;
            continue;
        }
        let bytes = idx.encode().map_err(|e| IndexError::Corrupt {
            layer: layer.digest.clone(),
            msg: e.to_string(),
        })?;
        layer_indexes.push((layer.digest.clone(), Bytes::from(bytes)));
    }
    let plan = PrefetchPlan::load(cache, &image.manifest_digest).map(|p| Bytes::from(p.encode()));
    let content = Published {
        index_version: INDEX_VERSION,
        layer_indexes,
        plan,
    };
    let outcome = source.push_published(image, &content).await?;
    Ok(PublishReport {
        outcome,
        layer_indexes: content.layer_indexes.len(),
        estargz_skipped,
        plan: content.plan.is_some(),
    })
}

/// Whether a gzip layer is really eStargz: its last 51 bytes are the footer.
pub async fn probe_estargz(source: &Source, layer: &LayerDesc) -> Result<Option<u64>, IndexError> {
    if layer.size < estargz::FOOTER_SIZE {
        return Ok(None);
    }
    let footer = source
        .fetch_range(&layer.digest, layer.size - estargz::FOOTER_SIZE..layer.size)
        .await
        .map_err(|source| IndexError::Registry {
            layer: layer.digest.clone(),
            source: Box::new(source),
        })?;
    estargz::parse_footer(&footer).map_err(|e| IndexError::Corrupt {
        layer: layer.digest.clone(),
        msg: e.to_string(),
    })
}

async fn build_index(
    source: &Source,
    cache: &Arc<ChunkCache>,
    layer: &LayerDesc,
    bar: ProgressBar,
    progress: Option<Arc<PassProgress>>,
) -> Result<LayerIndex, IndexError> {
    let mut format =
        format_from_media_type(&layer.media_type).map_err(|source| IndexError::Format {
            layer: layer.digest.clone(),
            source,
        })?;
    if format == LayerFormat::Gzip {
        if let Some(toc_offset) = probe_estargz(source, layer).await? {
            return build_estargz(source, layer, toc_offset).await;
        }
        format = LayerFormat::Gzip;
    }
    bar.set_length(layer.size);
    let stream = source
        .stream(&layer.digest, 0)
        .await
        .map_err(|source| IndexError::Registry {
            layer: layer.digest.clone(),
            source: Box::new(source),
        })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, RegistryError>>(16);
    let pump = tokio::spawn(async move {
        let mut stream = stream;
        while let Some(item) = stream.next().await {
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    let cache2 = cache.clone();
    let layer2 = layer.clone();
    let result = tokio::task::spawn_blocking(move || {
        stream_pass(rx, &cache2, &layer2, format, bar, progress.as_deref())
    })
    .await
    .map_err(|e| IndexError::Corrupt {
        layer: layer.digest.clone(),
        msg: format!("index pass panicked: {e}"),
    })?;
    pump.abort();
    result
}

async fn build_estargz(
    source: &Source,
    layer: &LayerDesc,
    toc_offset: u64,
) -> Result<LayerIndex, IndexError> {
    let corrupt = |msg: String| IndexError::Corrupt {
        layer: layer.digest.clone(),
        msg,
    };
    let end = layer.size - estargz::FOOTER_SIZE;
    if toc_offset >= end {
        return Err(corrupt(format!(
            "eStargz TOC offset {toc_offset} is past the footer"
        )));
    }
    let region = source
        .fetch_range(&layer.digest, toc_offset..end)
        .await
        .map_err(|source| IndexError::Registry {
            layer: layer.digest.clone(),
            source: Box::new(source),
        })?;
    let expected = layer.annotations.get(estargz::TOC_DIGEST_ANNOTATION);
    let (entries, detail) = estargz::parse_toc(&region, toc_offset, expected.map(String::as_str))
        .map_err(|e| corrupt(e.to_string()))?;
    let uncompressed_size = entries.iter().map(|e| e.size).sum();
    Ok(LayerIndex {
        version: INDEX_VERSION,
        digest: layer.digest.clone(),
        format: LayerFormat::Estargz,
        compressed_size: layer.size,
        uncompressed_size,
        entries,
        detail: IndexDetail::Estargz(detail),
    })
}

/// Blocking side of the pass: compressed chunks arrive on `rx`.
fn stream_pass(
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, RegistryError>>,
    cache: &ChunkCache,
    layer: &LayerDesc,
    format: LayerFormat,
    bar: ProgressBar,
    progress: Option<&PassProgress>,
) -> Result<LayerIndex, IndexError> {
    let digest = &layer.digest;
    let corrupt = |e: io::Error| IndexError::Corrupt {
        layer: digest.clone(),
        msg: e.to_string(),
    };
    let hashed = Arc::new(Mutex::new((Sha256::new(), 0u64)));
    let reg_error: Arc<Mutex<Option<RegistryError>>> = Arc::default();
    let rx = Arc::new(Mutex::new(rx));
    let input = HashingReader {
        rx: rx.clone(),
        buf: Bytes::new(),
        state: hashed.clone(),
        error: reg_error.clone(),
        bar: bar.clone(),
    };
    let mut staging = cache.staging(digest).map_err(|source| IndexError::Cache {
        layer: digest.clone(),
        source,
    })?;
    if let Some(p) = progress {
        p.started(staging.dir().to_path_buf());
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut found = |e: Entry| {
        if let Some(p) = progress {
            p.entry(e.clone());
        }
        entries.push(e);
    };
    // A closure called at once, so `?` can collect every failure in one place.
    let outcome = (|| -> Result<(IndexDetail, u64), String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        match format {
            LayerFormat::Gzip => {
                let mut z = ZranReader::new(input);
                let size = {
                    let mut split = ChunkSplitter::new(&mut z, &mut staging, false, progress);
                    tar_entries::read_entries(&mut split, &mut found).map_err(|e| err(&e))?;
                    split.finish().map_err(|e| err(&e))?
                };
                let zi = z.finish().map_err(|e| err(&e))?;
                Ok((IndexDetail::Gzip(zi), size))
            }
            LayerFormat::Tar => {
                let mut input = input;
                let mut split = ChunkSplitter::new(&mut input, &mut staging, true, progress);
                tar_entries::read_entries(&mut split, &mut found).map_err(|e| err(&e))?;
                let size = split.finish().map_err(|e| err(&e))?;
                Ok((
                    IndexDetail::Tar {
                        chunk_sha256: split.hashes,
                    },
                    size,
                ))
            }
            LayerFormat::Estargz => unreachable!("eStargz layers are not streamed"),
        }
    })();
    let (detail, uncompressed_size) = match outcome {
        Ok(v) => v,
        Err(msg) => {
            // A registry failure under the decoder surfaces as an I/O error:
            // report the registry's own error, it says more.
            if let Some(e) = reg_error.lock().take() {
                return Err(IndexError::Registry {
                    layer: digest.clone(),
                    source: Box::new(e),
                });
            }
            // Undecodable data is most often a blob that is not what its
            // digest says: hash the rest to tell the user the real cause.
            let mut rest = HashingReader {
                rx,
                buf: Bytes::new(),
                state: hashed.clone(),
                error: reg_error,
                bar,
            };
            if io::copy(&mut rest, &mut io::sink()).is_ok() {
                let (hasher, _) = std::mem::replace(&mut *hashed.lock(), (Sha256::new(), 0));
                let actual = Digest::from_sha256(hasher.finalize().into());
                if &actual != digest {
                    return Err(IndexError::DigestMismatch {
                        layer: digest.clone(),
                        actual,
                    });
                }
            }
            return Err(corrupt(io::Error::other(msg)));
        }
    };
    let (hasher, total) = std::mem::replace(&mut *hashed.lock(), (Sha256::new(), 0));
    let actual = Digest::from_sha256(hasher.finalize().into());
    if &actual != digest {
        return Err(IndexError::DigestMismatch {
            layer: digest.clone(),
            actual,
        });
    }
    if total != layer.size {
        return Err(IndexError::SizeMismatch {
            layer: digest.clone(),
            expected: layer.size,
            actual: total,
        });
    }
    // Only now are the decoded chunks known to be right.
    staging.commit().map_err(|source| IndexError::Cache {
        layer: digest.clone(),
        source,
    })?;
    Ok(LayerIndex {
        version: INDEX_VERSION,
        digest: digest.clone(),
        format,
        compressed_size: total,
        uncompressed_size,
        entries,
        detail,
    })
}

/// Turns the channel of compressed chunks into a `Read`, hashing as it goes.
struct HashingReader {
    rx: Arc<Mutex<tokio::sync::mpsc::Receiver<Result<Bytes, RegistryError>>>>,
    buf: Bytes,
    state: Arc<Mutex<(Sha256, u64)>>,
    error: Arc<Mutex<Option<RegistryError>>>,
    bar: ProgressBar,
}

impl Read for HashingReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            let next = self.rx.lock().blocking_recv();
            match next {
                None => return Ok(0),
                Some(Ok(b)) => {
                    let mut s = self.state.lock();
                    s.0.update(&b);
                    s.1 += b.len() as u64;
                    self.bar.inc(b.len() as u64);
                    self.buf = b;
                }
                Some(Err(e)) => {
                    let msg = e.to_string();
                    *self.error.lock() = Some(e);
                    return Err(io::Error::other(msg));
                }
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}

/// Passes the uncompressed stream through while cutting it into cache chunks.
struct ChunkSplitter<'a, 's, R: Read> {
    inner: &'a mut R,
    staging: &'a mut crate::cache::Staging<'s>,
    current: Vec<u8>,
    next_id: u64,
    total: u64,
    hash_chunks: bool,
    hashes: Vec<[u8; 32]>,
    progress: Option<&'a PassProgress>,
}

impl<'a, 's, R: Read> ChunkSplitter<'a, 's, R> {
    fn new(
        inner: &'a mut R,
        staging: &'a mut crate::cache::Staging<'s>,
        hash_chunks: bool,
        progress: Option<&'a PassProgress>,
    ) -> Self {
        ChunkSplitter {
            inner,
            staging,
            current: Vec::with_capacity(CHUNK_SIZE as usize),
            next_id: 0,
            total: 0,
            hash_chunks,
            hashes: Vec::new(),
            progress,
        }
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.current, Vec::with_capacity(CHUNK_SIZE as usize));
        if self.hash_chunks {
            self.hashes.push(Sha256::digest(&data).into());
        }
        self.staging.put(self.next_id, &data)?;
        self.next_id += 1;
        if let Some(p) = self.progress {
            p.staged(self.next_id);
        }
        Ok(())
    }

    /// Store the last partial chunk; returns the uncompressed size.
    fn finish(&mut self) -> io::Result<u64> {
        if !self.current.is_empty() {
            self.flush_chunk()?;
        }
        Ok(self.total)
    }
}

impl<R: Read> Read for ChunkSplitter<'_, '_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.total += n as u64;
        let mut rest = &out[..n];
        while !rest.is_empty() {
            let room = CHUNK_SIZE as usize - self.current.len();
            let take = room.min(rest.len());
            self.current.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.current.len() == CHUNK_SIZE as usize {
                self.flush_chunk()?;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Write;

    const GZIP_MT: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    /// A gzip layer of `files` and the index a streaming pass makes of it.
    fn gzip_layer(files: &[(&str, &[u8])]) -> (LayerDesc, LayerIndex) {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            tar.append_data(&mut h, path, *data).unwrap();
        }
        let raw = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        let mut z = ZranReader::new(&gz[..]);
        let mut entries = Vec::new();
        tar_entries::read_entries(&mut z, |e| entries.push(e)).unwrap();
        let zi = z.finish().unwrap();
        let layer = LayerDesc {
            digest: Digest::of_bytes(&gz),
            size: gz.len() as u64,
            media_type: GZIP_MT.into(),
            annotations: BTreeMap::new(),
        };
        let idx = LayerIndex {
            version: INDEX_VERSION,
            digest: layer.digest.clone(),
            format: LayerFormat::Gzip,
            compressed_size: layer.size,
            uncompressed_size: zi.uncompressed_size,
            entries,
            detail: IndexDetail::Gzip(zi),
        };
        (layer, idx)
    }

    fn sample() -> (LayerDesc, LayerIndex) {
        gzip_layer(&[("etc/hostname", b"node\n"), ("usr/bin/tool", &[7u8; 3000])])
    }

    fn refused(idx: &LayerIndex, layer: &LayerDesc) -> String {
        let bytes = idx.encode().unwrap();
        decode_published(&bytes, layer).expect_err("must be refused")
    }

    #[test]
    fn an_honest_published_index_passes() {
        let (layer, idx) = sample();
        let back = decode_published(&idx.encode().unwrap(), &layer).unwrap();
        assert_eq!(back.entries.len(), 2);
    }

    #[test]
    fn published_indexes_must_fit_their_layer() {
        let (layer, idx) = sample();
        // Bound to another layer (LayerIndex::decode's own check).
        let (other, _) = gzip_layer(&[("x", b"y")]);
        assert!(refused(&idx, &other).contains("expected"));
        // The layer's size, media type and format.
        let mut l = layer.clone();
        l.size += 1;
        assert!(refused(&idx, &l).contains("bytes"));
        let mut l = layer.clone();
        l.media_type = "application/vnd.oci.image.layer.v1.tar".into();
        assert!(refused(&idx, &l).contains("index for a tar layer"));
        let mut t = idx.clone();
        t.format = LayerFormat::Tar;
        assert!(refused(&t, &layer).contains("index for a gzip layer"));
        // Block hashes and checkpoints consistent with the sizes.
        let mut b = idx.clone();
        let IndexDetail::Gzip(z) = &mut b.detail else {
            unreachable!()
        };
        z.blocks.clear();
        assert!(refused(&b, &layer).contains("block hashes"));
        let mut c = idx.clone();
        let IndexDetail::Gzip(z) = &mut c.detail else {
            unreachable!()
        };
        z.checkpoints[0].window = vec![0; 10];
        assert!(refused(&c, &layer).contains("malformed checkpoint"));
        let IndexDetail::Gzip(z) = &mut c.detail else {
            unreachable!()
        };
        z.checkpoints.clear();
        assert!(refused(&c, &layer).contains("no checkpoint"));
    }

    #[test]
    fn published_entries_stay_inside_the_image_and_the_layer() {
        let (layer, idx) = sample();
        for path in ["../etc/shadow", "a//b", "/etc/passwd", "etc/"] {
            let mut bad = idx.clone();
            bad.entries[0].path = path.into();
            assert!(refused(&bad, &layer).contains("not normalised"), "{path}");
        }
        let mut bad = idx.clone();
        bad.entries[0].kind = EntryKind::Hardlink;
        bad.entries[0].link_target = Some("../../root".into());
        assert!(refused(&bad, &layer).contains("hard link"));
        let mut bad = idx.clone();
        bad.entries[1].data = idx.uncompressed_size - 10;
        assert!(refused(&bad, &layer).contains("outside the layer"));
        let mut bad = idx.clone();
        bad.entries[1].size = u64::MAX;
        assert!(refused(&bad, &layer).contains("outside the layer"));
        let mut bad = idx.clone();
        bad.entries[1].mode = 0o170755;
        assert!(refused(&bad, &layer).contains("mode"));
    }

    #[test]
    fn published_plans_name_only_what_exists() {
        let (layer, idx) = sample();
        let image = ResolvedImage {
            reference: "r.lan/x:t".into(),
            manifest_digest: Digest::of_bytes(b"manifest"),
            config_digest: Digest::of_bytes(b"config"),
            platform: "linux/amd64".parse().unwrap(),
            layers: vec![layer.clone()],
        };
        let counts = HashMap::from([(layer.digest.clone(), idx.chunk_count())]);
        let plan = |layer: &Digest, id: u64| {
            PrefetchPlan::from_reads(&image.manifest_digest, "n1", [(layer.clone(), id)]).encode()
        };
        assert!(check_plan(&plan(&layer.digest, 0), &image, &counts).is_ok());
        let e = check_plan(&plan(&layer.digest, 99), &image, &counts).unwrap_err();
        assert!(e.contains("do not exist"), "{e}");
        let stranger = Digest::of_bytes(b"stranger");
        let e = check_plan(&plan(&stranger, 0), &image, &counts).unwrap_err();
        assert!(e.contains("not in the image"), "{e}");
        let other = PrefetchPlan::from_reads(&Digest::of_bytes(b"other"), "n1", []).encode();
        assert!(check_plan(&other, &image, &counts).is_err());
    }
}
