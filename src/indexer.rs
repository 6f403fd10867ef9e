//! Building a layer's index: one streaming pass over a gzip or tar blob (which
//! also fills the cache with every chunk it decodes), or two range fetches for
//! an eStargz blob (footer, then TOC). Indexes already in the cache are reused.
//!
//! The streaming pass hashes the compressed stream and refuses the result if
//! the layer digest does not match: neither the index nor the chunks decoded
//! on the way reach the cache until the digest is confirmed.

use crate::cache::ChunkCache;
use crate::digest::Digest;
use crate::layer::estargz;
use crate::layer::index::{IndexDetail, LayerIndex, CHUNK_SIZE, INDEX_VERSION};
use crate::layer::tar_entries;
use crate::layer::zran::ZranReader;
use crate::layer::{format_from_media_type, Entry, FormatError, LayerFormat};
use crate::registry::{LayerDesc, RegistryError, Source};
use bytes::Bytes;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};
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

/// The index of `layer`, from the cache or built now.
pub async fn ensure_index(
    source: &Source,
    cache: &Arc<ChunkCache>,
    layer: &LayerDesc,
    bar: ProgressBar,
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
    let idx = build_index(source, cache, layer, bar.clone()).await?;
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
    let result =
        tokio::task::spawn_blocking(move || stream_pass(rx, &cache2, &layer2, format, bar))
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
    let mut entries: Vec<Entry> = Vec::new();
    // A closure called at once, so `?` can collect every failure in one place.
    let outcome = (|| -> Result<(IndexDetail, u64), String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        match format {
            LayerFormat::Gzip => {
                let mut z = ZranReader::new(input);
                let size = {
                    let mut split = ChunkSplitter::new(&mut z, &mut staging, false);
                    tar_entries::read_entries(&mut split, |e| entries.push(e))
                        .map_err(|e| err(&e))?;
                    split.finish().map_err(|e| err(&e))?
                };
                let zi = z.finish().map_err(|e| err(&e))?;
                Ok((IndexDetail::Gzip(zi), size))
            }
            LayerFormat::Tar => {
                let mut input = input;
                let mut split = ChunkSplitter::new(&mut input, &mut staging, true);
                tar_entries::read_entries(&mut split, |e| entries.push(e)).map_err(|e| err(&e))?;
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
}

impl<'a, 's, R: Read> ChunkSplitter<'a, 's, R> {
    fn new(
        inner: &'a mut R,
        staging: &'a mut crate::cache::Staging<'s>,
        hash_chunks: bool,
    ) -> Self {
        ChunkSplitter {
            inner,
            staging,
            current: Vec::with_capacity(CHUNK_SIZE as usize),
            next_id: 0,
            total: 0,
            hash_chunks,
            hashes: Vec::new(),
        }
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.current, Vec::with_capacity(CHUNK_SIZE as usize));
        if self.hash_chunks {
            self.hashes.push(Sha256::digest(&data).into());
        }
        self.staging.put(self.next_id, &data)?;
        self.next_id += 1;
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
