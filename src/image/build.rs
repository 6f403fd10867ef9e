//! Building a layer's index: one streaming pass over the blob (which also
//! stages every chunk it decodes), or, for a format that locates a table of
//! contents from its footer, two range fetches (footer, then TOC). Which
//! applies is the layer format's business ([`crate::layer::format`]).
//! Indexes already in the cache are reused.
//!
//! The streaming pass hashes the compressed stream and refuses the result if
//! the layer digest does not match: neither the index nor the chunks decoded
//! on the way reach the cache until the digest is confirmed.

use super::error::IndexError;
use super::published::{decode_published, published_cache_name};
use crate::cache::{ChunkCache, Staging};
use crate::digest::Digest;
use crate::layer::format::{indexing_for, ChunkSink, Indexed, StreamIndexer, TailIndexer};
use crate::layer::index::{LayerIndex, INDEX_VERSION};
use crate::layer::{Entry, LayerFormat};
use crate::registry::{LayerDesc, RegistryError, Source};
use bytes::Bytes;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use parking_lot::{Mutex, RwLock};
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

/// What a streaming pass has produced so far: the entries whose tar headers
/// it has read and the decoded chunks it has staged (not yet checked against
/// the layer digest). The provisional view ([`super::opening`]) serves
/// from it while the pass runs.
pub(crate) struct PassProgress {
    pub(crate) entries: RwLock<Vec<Entry>>,
    state: Mutex<PassState>,
    /// Bumped on every change; shared by all layers of one image.
    tick: Arc<tokio::sync::watch::Sender<u64>>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct PassState {
    /// Chunks `0..staged` are in `dir`, each a self-checking file.
    pub(crate) staged: u64,
    pub(crate) dir: Option<PathBuf>,
    /// `None` while the pass runs (or before it starts); `Some(Ok)` once the
    /// digest matched and the chunks moved into the cache.
    pub(crate) outcome: Option<Result<(), String>>,
}

impl PassProgress {
    pub(crate) fn new(tick: Arc<tokio::sync::watch::Sender<u64>>) -> Arc<Self> {
        Arc::new(PassProgress {
            entries: RwLock::new(Vec::new()),
            state: Mutex::new(PassState::default()),
            tick,
        })
    }

    pub(crate) fn state(&self) -> PassState {
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
pub(crate) async fn ensure_index(
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
pub(crate) async fn ensure_built_index(
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

/// The registry error of fetching part of `layer`.
fn registry(layer: &LayerDesc) -> impl Fn(RegistryError) -> IndexError + '_ {
    |source| IndexError::Registry {
        layer: layer.digest.clone(),
        source: Box::new(source),
    }
}

/// The format of `layer` as the index will record it, asking the blob's
/// tail where the media type leaves a choice (a gzip layer may be eStargz).
pub(crate) async fn probe_format(
    source: &Source,
    layer: &LayerDesc,
) -> Result<LayerFormat, IndexError> {
    let how = indexing_for(&layer.media_type).map_err(|source| IndexError::Format {
        layer: layer.digest.clone(),
        source,
    })?;
    if let Some(tail) = how.tail {
        if locate(source, layer, tail).await?.is_some() {
            return Ok(tail.format());
        }
    }
    Ok(how.format)
}

/// Where `tail`'s table of contents is in `layer`, if the blob is of its
/// format.
async fn locate(
    source: &Source,
    layer: &LayerDesc,
    tail: &dyn TailIndexer,
) -> Result<Option<std::ops::Range<u64>>, IndexError> {
    if layer.size < tail.tail_len() {
        return Ok(None);
    }
    let bytes = source
        .fetch_range(&layer.digest, layer.size - tail.tail_len()..layer.size)
        .await
        .map_err(registry(layer))?;
    tail.locate(&bytes, layer.size)
        .map_err(|msg| IndexError::Corrupt {
            layer: layer.digest.clone(),
            msg,
        })
}

async fn build_index(
    source: &Source,
    cache: &Arc<ChunkCache>,
    layer: &LayerDesc,
    bar: ProgressBar,
    progress: Option<Arc<PassProgress>>,
) -> Result<LayerIndex, IndexError> {
    let how = indexing_for(&layer.media_type).map_err(|source| IndexError::Format {
        layer: layer.digest.clone(),
        source,
    })?;
    if let Some(tail) = how.tail {
        if let Some(region) = locate(source, layer, tail).await? {
            let bytes = source
                .fetch_range(&layer.digest, region.clone())
                .await
                .map_err(registry(layer))?;
            let made = tail
                .index(&bytes, region.start, &layer.annotations)
                .map_err(|msg| IndexError::Corrupt {
                    layer: layer.digest.clone(),
                    msg,
                })?;
            return Ok(layer_index(layer, layer.size, made));
        }
    }
    bar.set_length(layer.size);
    let stream = source
        .stream(&layer.digest, 0)
        .await
        .map_err(registry(layer))?;
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
        stream_pass(
            rx,
            &cache2,
            &layer2,
            how.format,
            how.stream,
            bar,
            progress.as_deref(),
        )
    })
    .await
    .map_err(|e| IndexError::Corrupt {
        layer: layer.digest.clone(),
        msg: format!("index pass panicked: {e}"),
    })?;
    pump.abort();
    result
}

fn layer_index(layer: &LayerDesc, compressed_size: u64, made: Indexed) -> LayerIndex {
    LayerIndex {
        version: INDEX_VERSION,
        digest: layer.digest.clone(),
        format: made.format,
        compressed_size,
        uncompressed_size: made.uncompressed_size,
        entries: made.entries,
        detail: made.detail,
    }
}

/// Blocking side of the pass: compressed chunks arrive on `rx`.
fn stream_pass(
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, RegistryError>>,
    cache: &ChunkCache,
    layer: &LayerDesc,
    format: LayerFormat,
    indexer: &dyn StreamIndexer,
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
    let mut sink = StagingSink {
        staging: &mut staging,
        progress,
    };
    let mut input = input;
    let outcome = indexer.index_stream(&mut input, &mut sink, &mut found);
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
    let made = Indexed {
        format,
        entries,
        detail,
        uncompressed_size,
    };
    Ok(layer_index(layer, total, made))
}

/// Stages a pass's chunks and tells the provisional view how far it got.
struct StagingSink<'a, 's> {
    staging: &'a mut Staging<'s>,
    progress: Option<&'a PassProgress>,
}

impl ChunkSink for StagingSink<'_, '_> {
    fn put(&mut self, id: u64, data: &[u8]) -> io::Result<()> {
        self.staging.put(id, data)?;
        if let Some(p) = self.progress {
            p.staged(id + 1);
        }
        Ok(())
    }
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
