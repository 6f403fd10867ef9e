//! zstd:chunked layers, as containers/storage writes them (`podman push
//! --compression-format zstd:chunked`): a `tar+zstd` blob that is a valid
//! zstd stream of the whole tar, in which every regular file's content
//! (every chunk of a large file) is a zstd frame of its own, followed by
//! skippable frames that a plain zstd reader passes over:
//!
//! ```text
//! [frames: tar headers, file data, ...][skippable: zstd(manifest JSON)]
//! [skippable, 40 bytes: offset, length, length uncompressed, type, magic]
//! ```
//!
//! The footer's fields are little-endian u64s locating the compressed
//! manifest (the skippable frame's payload), then `GnUlInUx`. This is what
//! podman 4.3 (Debian 12) writes; the layer descriptor repeats the position
//! in `io.containers.zstd-chunked.manifest-position` (`offset:length:
//! uncompressed:type`) and gives the sha256 of the compressed manifest in
//! `...manifest-checksum`. Later containers/storage versions write a longer
//! footer (with a tar-split); it is refused by name rather than misread.
//!
//! The manifest is the CRFS-style TOC eStargz also uses (`layer::toc`), with
//! `endOffset` marking where a file's last frame ends. A chunk is read by
//! fetching its frame alone and checking the sha256 the manifest gives.

use super::format::{Indexed, TailIndexer};
use super::index::IndexDetail;
use super::toc::{self, ChunkDecoder, TocChunk, TocEntry, TocIndex, TocRules};
use super::LayerFormat;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io;
use std::ops::Range;

/// The footer podman 4.3 writes: an 8-byte skippable frame header and 40
/// bytes of payload.
pub(crate) const FOOTER_SIZE: u64 = 48;
/// Bytes read from the end of a zstd blob: enough to recognise the longer
/// footer of later writers too.
const TAIL_LEN: u64 = 72;
const LATER_FOOTER_PAYLOAD: u32 = 64;
/// The skippable frame magics are `0x184D2A50..=0x184D2A5F`.
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
const FOOTER_MAGIC: &[u8; 8] = b"GnUlInUx";
/// Manifest type 1: the CRFS-style JSON TOC.
const MANIFEST_TYPE_TOC: u64 = 1;
/// As for eStargz's TOC: millions of entries, but no zstd bomb.
const MAX_MANIFEST: u64 = 1 << 30;

/// The descriptor annotations, under the names podman 4.3 uses and those of
/// later writers.
const CHECKSUM_ANNOTATIONS: [&str; 2] = [
    "io.containers.zstd-chunked.manifest-checksum",
    "io.github.containers.zstd-chunked.manifest-checksum",
];
const POSITION_ANNOTATIONS: [&str; 2] = [
    "io.containers.zstd-chunked.manifest-position",
    "io.github.containers.zstd-chunked.manifest-position",
];

#[derive(Debug, thiserror::Error)]
pub(crate) enum ZstdChunkedError {
    #[error("zstd:chunked footer: {0}")]
    Footer(String),
    #[error(
        "zstd:chunked manifest type {0} is not supported (only 1, the JSON table of contents)"
    )]
    ManifestType(u64),
    #[error("zstd:chunked manifest at {offset} ({length} bytes) is not inside the {blob_size}-byte blob before its footer")]
    ManifestBounds {
        offset: u64,
        length: u64,
        blob_size: u64,
    },
    #[error("zstd:chunked manifest of {0} bytes is larger than the {MAX_MANIFEST} bytes allowed")]
    ManifestTooLarge(u64),
    #[error("zstd:chunked manifest is not the payload of a skippable frame of its length: {0}")]
    ManifestFrame(String),
    #[error("invalid zstd:chunked annotation {key}={value:?}")]
    BadAnnotation { key: String, value: String },
    #[error("zstd:chunked manifest position mismatch: the layer descriptor says {annotation}, the footer {footer}")]
    PositionMismatch { annotation: String, footer: String },
    #[error("zstd:chunked manifest checksum mismatch: the layer descriptor says {expected}, the manifest hashes to {actual} (wrong or tampered manifest)")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("cannot decompress the zstd:chunked manifest: {0}")]
    ManifestRead(#[source] io::Error),
    #[error("the zstd:chunked manifest decompresses to {got} bytes, its footer says {expected}")]
    ManifestLength { expected: u64, got: u64 },
    #[error("zstd:chunked manifest is not valid JSON: {0}")]
    ManifestJson(#[source] serde_json::Error),
    #[error("unsupported zstd:chunked manifest version {0} (only version 1 exists)")]
    ManifestVersion(i64),
    #[error("zstd:chunked manifest {0}")]
    BadEntry(#[from] toc::BadEntry),
    #[error("cannot decompress the zstd:chunked chunk at blob offset {comp_start}: {source}")]
    ChunkRead {
        comp_start: u64,
        #[source]
        source: io::Error,
    },
    #[error("zstd:chunked chunk at blob offset {comp_start} is truncated: wanted {wanted} bytes, its frame gave {got}")]
    ChunkTruncated {
        comp_start: u64,
        wanted: u64,
        got: u64,
    },
    #[error("zstd:chunked chunk at blob offset {comp_start} has no digest to check it against")]
    ChunkNoDigest { comp_start: u64 },
    #[error("zstd:chunked chunk at blob offset {comp_start} failed its digest check: the manifest says sha256:{expected}, data hashes to sha256:{actual} (wrong bytes from the registry?)")]
    ChunkDigestMismatch {
        comp_start: u64,
        expected: String,
        actual: String,
    },
}

/// Where the compressed manifest is, as the footer (or the annotation)
/// gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ManifestPosition {
    /// Blob offset of the compressed manifest (the skippable frame's
    /// payload, 8 bytes after the frame's start).
    pub(crate) offset: u64,
    pub(crate) length: u64,
    pub(crate) uncompressed: u64,
    pub(crate) kind: u64,
}

impl std::fmt::Display for ManifestPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.offset, self.length, self.uncompressed, self.kind
        )
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parse the end of a blob of `blob_size` bytes (`tail` holds its last
/// bytes, at least [`FOOTER_SIZE`]). `Ok(None)` means this is not a
/// zstd:chunked blob (read it as plain zstd); otherwise the manifest's
/// position, checked against the blob's size.
pub(crate) fn parse_footer(
    tail: &[u8],
    blob_size: u64,
) -> Result<Option<ManifestPosition>, ZstdChunkedError> {
    let footer_at = tail
        .len()
        .checked_sub(FOOTER_SIZE as usize)
        .ok_or_else(|| {
            ZstdChunkedError::Footer(format!(
                "needs the blob's last {FOOTER_SIZE} bytes, got {}",
                tail.len()
            ))
        })?;
    let footer = &tail[footer_at..];
    if &footer[40..] != FOOTER_MAGIC {
        return Ok(None);
    }
    if u32_at(footer, 0) != SKIPPABLE_MAGIC || u32_at(footer, 4) != 40 {
        let later = tail.len() >= TAIL_LEN as usize && {
            let at = tail.len() - TAIL_LEN as usize;
            u32_at(tail, at) & !0xf == SKIPPABLE_MAGIC
                && u32_at(tail, at + 4) == LATER_FOOTER_PAYLOAD
        };
        if later {
            // A later containers/storage layout (with a tar-split), whose
            // fields this does not read: the blob is still one valid zstd
            // stream of the tar, so the plain zstd streaming pass serves it.
            return Ok(None);
        }
        return Err(ZstdChunkedError::Footer(
            "the blob ends with the zstd:chunked magic but not in a 40-byte skippable frame".into(),
        ));
    }
    let pos = ManifestPosition {
        offset: u64_at(footer, 8),
        length: u64_at(footer, 16),
        uncompressed: u64_at(footer, 24),
        kind: u64_at(footer, 32),
    };
    if pos.kind != MANIFEST_TYPE_TOC {
        return Err(ZstdChunkedError::ManifestType(pos.kind));
    }
    if let Some(&too_big) = [pos.length, pos.uncompressed]
        .iter()
        .find(|&&n| n > MAX_MANIFEST)
    {
        return Err(ZstdChunkedError::ManifestTooLarge(too_big));
    }
    let fits = pos.offset >= 8
        && pos.length > 0
        && blob_size >= FOOTER_SIZE
        && pos
            .offset
            .checked_add(pos.length)
            .is_some_and(|end| end <= blob_size - FOOTER_SIZE);
    if !fits {
        return Err(ZstdChunkedError::ManifestBounds {
            offset: pos.offset,
            length: pos.length,
            blob_size,
        });
    }
    Ok(Some(pos))
}

fn parse_position(key: &str, value: &str) -> Result<ManifestPosition, ZstdChunkedError> {
    let bad = || ZstdChunkedError::BadAnnotation {
        key: key.to_string(),
        value: value.to_string(),
    };
    let fields: Vec<u64> = value
        .split(':')
        .map(|f| {
            // u64's parser alone would also take a leading '+'.
            f.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| f.parse().ok())
                .flatten()
        })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    match fields[..] {
        [offset, length, uncompressed, kind] => Ok(ManifestPosition {
            offset,
            length,
            uncompressed,
            kind,
        }),
        _ => Err(bad()),
    }
}

fn annotation<'a>(
    annotations: &'a BTreeMap<String, String>,
    keys: &[&'static str],
) -> Option<(&'static str, &'a str)> {
    keys.iter()
        .find_map(|&k| annotations.get(k).map(|v| (k, v.as_str())))
}

#[derive(Deserialize)]
struct Manifest {
    version: i64,
    #[serde(default)]
    entries: Vec<TocEntry>,
}

/// The manifest's JSON from `region`, blob bytes from the manifest's
/// skippable frame (at `at`) to the blob's end, checked against the footer
/// and the layer descriptor's annotations.
fn read_manifest(
    region: &[u8],
    at: u64,
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<u8>, ZstdChunkedError> {
    let blob_size = at + region.len() as u64;
    let pos = parse_footer(region, blob_size)?
        .ok_or_else(|| ZstdChunkedError::Footer("no zstd:chunked footer".into()))?;
    if pos.offset != at + 8 {
        return Err(ZstdChunkedError::ManifestFrame(format!(
            "the region read starts at {at}, the manifest at {}",
            pos.offset
        )));
    }
    if let Some((key, value)) = annotation(annotations, &POSITION_ANNOTATIONS) {
        let said = parse_position(key, value)?;
        if said != pos {
            return Err(ZstdChunkedError::PositionMismatch {
                annotation: said.to_string(),
                footer: pos.to_string(),
            });
        }
    }
    let (magic, frame_len) = (u32_at(region, 0), u32_at(region, 4));
    if magic & !0xf != SKIPPABLE_MAGIC || u64::from(frame_len) != pos.length {
        return Err(ZstdChunkedError::ManifestFrame(format!(
            "frame header {magic:#010x}, {frame_len} bytes, for a {}-byte manifest",
            pos.length
        )));
    }
    let compressed = &region[8..8 + pos.length as usize];
    if let Some((key, value)) = annotation(annotations, &CHECKSUM_ANNOTATIONS) {
        let expected = toc::parse_sha256(value).ok_or_else(|| ZstdChunkedError::BadAnnotation {
            key: key.to_string(),
            value: value.to_string(),
        })?;
        let actual: [u8; 32] = Sha256::digest(compressed).into();
        if actual != expected {
            return Err(ZstdChunkedError::ChecksumMismatch {
                expected: value.to_string(),
                actual: format!("sha256:{}", hex::encode(actual)),
            });
        }
    }
    let json = super::zstd::decode_prefix(compressed, pos.uncompressed + 1)
        .map_err(ZstdChunkedError::ManifestRead)?;
    if json.len() as u64 != pos.uncompressed {
        return Err(ZstdChunkedError::ManifestLength {
            expected: pos.uncompressed,
            got: json.len() as u64,
        });
    }
    Ok(json)
}

/// The layer's entries and chunk table from `region` (see
/// [`read_manifest`]).
pub(crate) fn parse_manifest(
    region: &[u8],
    at: u64,
    annotations: &BTreeMap<String, String>,
) -> Result<(Vec<super::Entry>, ZstdChunkedIndex), ZstdChunkedError> {
    let json = read_manifest(region, at, annotations)?;
    let manifest: Manifest =
        serde_json::from_slice(&json).map_err(ZstdChunkedError::ManifestJson)?;
    if manifest.version != 1 {
        return Err(ZstdChunkedError::ManifestVersion(manifest.version));
    }
    let rules = TocRules {
        data_end: at,
        hidden: &[],
        require_digests: true,
    };
    let (entries, chunks) = toc::build_tables(manifest.entries, &rules)?;
    Ok((entries, ZstdChunkedIndex::new(at, chunks)))
}

/// Decode one chunk from its frame: exactly `chunk.size` bytes, checked
/// against its sha256.
pub(crate) fn decode_chunk(
    chunk: &TocChunk,
    compressed: &[u8],
) -> Result<Vec<u8>, ZstdChunkedError> {
    let comp_start = chunk.comp_start;
    let expected = chunk
        .digest
        .ok_or(ZstdChunkedError::ChunkNoDigest { comp_start })?;
    let wanted = chunk.inner_offset.saturating_add(chunk.size);
    let mut out = super::zstd::decode_prefix(compressed, wanted)
        .map_err(|source| ZstdChunkedError::ChunkRead { comp_start, source })?;
    if out.len() as u64 != wanted {
        return Err(ZstdChunkedError::ChunkTruncated {
            comp_start,
            wanted,
            got: out.len() as u64,
        });
    }
    out.drain(..chunk.inner_offset as usize);
    let actual: [u8; 32] = Sha256::digest(&out).into();
    if actual != expected {
        return Err(ZstdChunkedError::ChunkDigestMismatch {
            comp_start,
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        });
    }
    Ok(out)
}

/// How zstd:chunked chunks are decoded: each from its own zstd frame.
#[derive(Debug)]
pub struct ZstdFrame;

impl ChunkDecoder for ZstdFrame {
    const NAME: &'static str = "zstd:chunked";

    fn decode(chunk: &TocChunk, compressed: &[u8]) -> Result<Vec<u8>, String> {
        decode_chunk(chunk, compressed).map_err(|e| e.to_string())
    }
}

/// The index detail of a zstd:chunked layer: its manifest's chunk table.
pub type ZstdChunkedIndex = TocIndex<ZstdFrame>;

/// Finds a zstd:chunked manifest through the footer of a zstd blob.
pub(crate) struct ZstdChunkedTail;

impl TailIndexer for ZstdChunkedTail {
    fn format(&self) -> LayerFormat {
        LayerFormat::ZstdChunked
    }

    fn tail_len(&self) -> u64 {
        TAIL_LEN
    }

    /// The manifest's skippable frame through the footer: the footer is
    /// read again with the manifest, so [`index`](Self::index) needs no
    /// state from here.
    fn locate(&self, tail: &[u8], blob_size: u64) -> Result<Option<Range<u64>>, String> {
        let pos = parse_footer(tail, blob_size).map_err(|e| e.to_string())?;
        Ok(pos.map(|p| p.offset - 8..blob_size))
    }

    fn index(
        &self,
        region: &[u8],
        at: u64,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Indexed, String> {
        let (entries, detail) =
            parse_manifest(region, at, annotations).map_err(|e| e.to_string())?;
        Ok(Indexed {
            format: LayerFormat::ZstdChunked,
            uncompressed_size: entries.iter().map(|e| e.size).sum(),
            entries,
            detail: IndexDetail::ZstdChunked(detail),
        })
    }
}

#[cfg(test)]
#[path = "zstd_chunked_tests.rs"]
mod tests;
