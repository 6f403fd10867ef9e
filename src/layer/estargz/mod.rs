//! eStargz layers: a gzip layer whose regular files (or chunks of them) each
//! start a new gzip member, with a table of contents (TOC) near the end that
//! says where every member is. See containerd/stargz-snapshotter's
//! docs/estargz.md for the format.
//!
//! Layout of a blob, as the reference writer produces it:
//!
//! ```text
//! [member: tar headers ...][member: chunk data (+ tar padding, headers) ] ...
//! [member: tar holding stargz.index.json][footer: empty member, 51 bytes]
//! ```
//!
//! A TOC `offset` points at the gzip header of the member whose uncompressed
//! output starts with the chunk's data, or, when the writer packs several
//! small files into one member, `innerOffset` bytes before it. The tar header
//! of a file therefore normally sits at the end of the *previous* member.
//!
//! - `footer`: finding the TOC from the blob's last [`FOOTER_SIZE`] bytes,
//! - `toc`: the TOC as entries and a chunk table ([`EstargzIndex`]), built
//!   by the TOC code eStargz shares with zstd:chunked (`layer::toc`),
//! - `chunk`: decoding and checking one chunk's gzip member.

mod chunk;
mod footer;
mod layout;
#[cfg(test)]
mod tests;
mod toc;

pub(crate) use chunk::decode_chunk;
pub(crate) use footer::parse_footer;
pub(crate) use layout::{EstargzTail, GzipMembers};
pub(crate) use toc::parse_toc;

use crate::layer::toc::{BadEntry, TocChunk, TocIndex};
use std::io;

pub(crate) const FOOTER_SIZE: u64 = 51;
pub(crate) const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";

const TOC_TAR_NAME: &str = "stargz.index.json";
/// Marker files that the converter adds to record prefetch order; they are
/// not part of the image's file system.
const HIDDEN: [&str; 3] = [TOC_TAR_NAME, ".prefetch.landmark", ".no.prefetch.landmark"];
/// A TOC is about 300 bytes per entry; this allows millions of entries while
/// stopping a gzip bomb in the TOC member from exhausting memory.
const MAX_TOC_JSON: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub(crate) enum EstargzError {
    #[error("eStargz footer must be {FOOTER_SIZE} bytes, got {0}")]
    FooterSize(usize),
    #[error("eStargz footer has a malformed TOC offset {0:?} (expected 16 hex digits)")]
    FooterOffset(String),
    #[error("eStargz footer is marked STARGZ but is not a valid empty gzip member: {0}")]
    FooterMember(String),
    #[error("invalid eStargz TOC digest annotation {0:?} (expected sha256:<64 hex digits>)")]
    BadTocDigestAnnotation(String),
    #[error("cannot read the eStargz TOC member: {0}")]
    TocRead(#[source] io::Error),
    #[error("the eStargz TOC member holds no {TOC_TAR_NAME}")]
    TocMissing,
    #[error("the eStargz TOC is larger than {MAX_TOC_JSON} bytes")]
    TocTooLarge,
    #[error("eStargz TOC digest mismatch: the layer descriptor says {expected}, the TOC hashes to {actual} (wrong or tampered TOC)")]
    TocDigestMismatch { expected: String, actual: String },
    #[error("eStargz TOC is not valid JSON: {0}")]
    TocJson(#[source] serde_json::Error),
    #[error("unsupported eStargz TOC version {0} (only version 1 exists)")]
    TocVersion(i64),
    #[error("eStargz {0}")]
    BadEntry(#[from] BadEntry),
    #[error("cannot decompress eStargz chunk at blob offset {comp_start}: {source}")]
    ChunkRead {
        comp_start: u64,
        #[source]
        source: io::Error,
    },
    #[error("eStargz chunk at blob offset {comp_start} is truncated: wanted {wanted} bytes, the gzip member gave {got}")]
    ChunkTruncated {
        comp_start: u64,
        wanted: u64,
        got: u64,
    },
    #[error("eStargz chunk at blob offset {comp_start} failed its digest check: TOC says sha256:{expected}, data hashes to sha256:{actual} (wrong bytes from the registry?)")]
    ChunkDigestMismatch {
        comp_start: u64,
        expected: String,
        actual: String,
    },
}

/// One gzip-compressed piece of a regular file.
pub(crate) type EChunk = TocChunk;

/// The index detail of an eStargz layer: its TOC's chunk table.
pub type EstargzIndex = TocIndex<GzipMembers>;
