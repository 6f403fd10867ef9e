//! A layer's complete index: its entry table plus whatever the format needs to
//! locate a file's bytes in the blob. Persisted in the cache keyed by the layer
//! digest; once present, lookups and readdir need no network at all.

use super::estargz::EstargzIndex;
use super::format::Codec;
use super::tar::TarChunks;
use super::zran::ZranIndex;
use super::zstd::ZstdFrames;
use super::zstd_chunked::ZstdChunkedIndex;
use super::{Entry, LayerFormat};
use crate::digest::Digest;
use serde::{Deserialize, Serialize};

/// Bump when the serialized layout changes: old indexes are then rebuilt.
pub const INDEX_VERSION: u32 = 3;

/// Uncompressed bytes per cached chunk for gzip, zstd and tar layers. Small enough
/// that a cold read of a small file fetches little, large enough to keep the
/// number of cache files reasonable.
pub(crate) const CHUNK_SIZE: u64 = 256 << 10;

/// What a layer's format needs to locate a file's bytes in the blob.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum IndexDetail {
    /// A gzip layer: zran checkpoints and block hashes.
    Gzip(ZranIndex),
    /// An uncompressed tar layer: a hash per chunk.
    Tar(TarChunks),
    /// An eStargz layer: its TOC's chunk table.
    Estargz(EstargzIndex),
    /// A zstd layer: its frames and chunk hashes.
    Zstd(ZstdFrames),
    /// A zstd:chunked layer: its manifest's chunk table.
    ZstdChunked(ZstdChunkedIndex),
}

impl IndexDetail {
    /// The format's read side: the one place that asks which format a
    /// layer has.
    pub(crate) fn codec(&self) -> &dyn Codec {
        match self {
            IndexDetail::Gzip(z) => z,
            IndexDetail::Tar(t) => t,
            IndexDetail::Estargz(e) => e,
            IndexDetail::Zstd(z) => z,
            IndexDetail::ZstdChunked(z) => z,
        }
    }
}

/// A layer's complete index, stored in the cache under its layer's digest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerIndex {
    pub(crate) version: u32,
    /// The layer's digest.
    pub digest: Digest,
    pub(crate) format: LayerFormat,
    /// Size of the blob.
    pub compressed_size: u64,
    /// Size of the uncompressed tar stream (gzip and tar layers), or the sum of
    /// file sizes (eStargz, zstd:chunked).
    pub(crate) uncompressed_size: u64,
    /// The layer's tar entries, in stream order.
    pub entries: Vec<Entry>,
    /// The format's detail.
    pub detail: IndexDetail,
}

/// Why a stored index could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IndexCodecError {
    /// It could not be serialised.
    #[error("index encoding: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// It could not be compressed.
    #[error("index compression: {0}")]
    Compress(std::io::Error),
    /// It is not a zstd frame, or a damaged one.
    #[error("index decompression: {0}")]
    Decompress(String),
    /// It is not a valid index.
    #[error("index decoding: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// It is of another format version.
    #[error("index is version {found}, this build reads version {INDEX_VERSION}")]
    Version {
        /// Its version.
        found: u32,
    },
    /// It is the index of another layer.
    #[error("index is for {found}, expected {expected}")]
    WrongLayer {
        /// The layer it indexes.
        found: Digest,
        /// The layer asked for.
        expected: Digest,
    },
}

/// The most the lengths inside an index file may make its decoding
/// allocate, in all: a damaged or hostile file (a published index is its
/// publisher's word) can then not ask for more memory than this, and a
/// real index (tens of MB for the largest layers) is far below it.
const DECODE_LIMIT: usize = 512 << 20;

const ZSTD_LEVEL: i32 = 3;

/// The bincode of a stored index: at most [`DECODE_LIMIT`] bytes, so that
/// a small hostile file cannot expand into a huge allocation.
fn decompress(bytes: &[u8]) -> Result<Vec<u8>, IndexCodecError> {
    use std::io::Read;
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    if !bytes.starts_with(&ZSTD_MAGIC) {
        return Err(IndexCodecError::Decompress(
            "not zstd-compressed (an index of an older lazyboot?)".into(),
        ));
    }
    let dec = zstd::stream::read::Decoder::new(bytes)
        .map_err(|e| IndexCodecError::Decompress(e.to_string()))?;
    let mut raw = Vec::new();
    dec.take(DECODE_LIMIT as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| IndexCodecError::Decompress(e.to_string()))?;
    if raw.len() > DECODE_LIMIT {
        return Err(IndexCodecError::Decompress(format!(
            "expands to more than {DECODE_LIMIT} bytes"
        )));
    }
    Ok(raw)
}

fn codec_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

impl LayerIndex {
    /// The cache file name of the index of layer `digest`.
    pub fn cache_name(digest: &Digest) -> String {
        format!("{}.idx", digest.hex())
    }

    /// Serialise the index, zstd-compressed: most of a gzip layer's index is
    /// its checkpoints' windows (tar data) and entry paths, which compress
    /// several times over, and a published index is fetched by every
    /// server that uses it.
    pub fn encode(&self) -> Result<Vec<u8>, IndexCodecError> {
        let raw = bincode::serde::encode_to_vec(self, codec_config())?;
        zstd::bulk::compress(&raw, ZSTD_LEVEL).map_err(IndexCodecError::Compress)
    }

    /// Deserialise an index and check it is of this version and of layer `expected`.
    pub fn decode(bytes: &[u8], expected: &Digest) -> Result<Self, IndexCodecError> {
        let raw = decompress(bytes)?;
        let (idx, _): (LayerIndex, usize) =
            bincode::serde::decode_from_slice(&raw, codec_config())?;
        if idx.version != INDEX_VERSION {
            return Err(IndexCodecError::Version { found: idx.version });
        }
        if &idx.digest != expected {
            return Err(IndexCodecError::WrongLayer {
                found: idx.digest,
                expected: expected.clone(),
            });
        }
        Ok(idx)
    }

    /// Number of cache chunks the layer's data spans (its "address space").
    pub(crate) fn chunk_count(&self) -> u64 {
        self.detail.codec().chunk_count()
    }

    /// The layer format's read side.
    pub(crate) fn codec(&self) -> &dyn Codec {
        self.detail.codec()
    }
}
