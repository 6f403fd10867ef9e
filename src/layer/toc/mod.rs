//! What eStargz and zstd:chunked share: a CRFS-style table of contents that
//! chunks every regular file on its own, each chunk compressed apart (a gzip
//! member, a zstd frame) so that it can be fetched and decoded alone and
//! checked against its digest.
//!
//! - `entries`: TOC JSON entries -> the layer's entries and a chunk table,
//! - `rfc3339`: the TOC's modification times,
//! - here: the chunk table as a [`ChunkMap`] and, with a format's
//!   [`ChunkDecoder`], a [`Codec`].

mod entries;
mod rfc3339;

pub(crate) use entries::{build_tables, parse_sha256, BadEntry, TocEntry, TocRules};

use super::format::{cut_runs, ChunkMap, Codec, Fetch, Span};
use super::Entry;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::ops::Range;

/// Chunks worth fetching by one request.
const FETCH_GROUP_CHUNKS: u64 = 16;

/// One compressed piece of a regular file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct TocChunk {
    /// Blob offset of the compressed unit (gzip member, zstd frame) that
    /// holds the chunk.
    pub(crate) comp_start: u64,
    /// Upper bound of that unit: enough blob bytes to decode the chunk.
    pub(crate) comp_end: u64,
    /// Where the chunk's bytes go in the file.
    pub(crate) file_offset: u64,
    /// Uncompressed length of the chunk.
    pub(crate) size: u64,
    /// sha256 of the uncompressed chunk, when the TOC has one.
    pub(crate) digest: Option<[u8; 32]>,
    /// Uncompressed bytes of the unit to skip before the chunk's data
    /// (eStargz `innerOffset`): non-zero only when a writer packed several
    /// small files into one member.
    #[serde(default)]
    pub(crate) inner_offset: u64,
}

/// How one format decodes a chunk from its compressed bytes.
pub(crate) trait ChunkDecoder {
    /// The format's name in messages.
    const NAME: &'static str;
    /// Exactly `chunk.size` bytes from `compressed` (blob bytes
    /// `[comp_start, comp_end)`), checked against the chunk's digest.
    fn decode(chunk: &TocChunk, compressed: &[u8]) -> Result<Vec<u8>, String>;
}

/// The index detail of a TOC format: where its TOC is and its chunk table;
/// `D` says how a chunk is decoded.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct TocIndex<D> {
    /// Blob offset of the TOC (its member or skippable frame).
    pub(crate) toc_offset: u64,
    pub(crate) chunks: Vec<TocChunk>,
    #[serde(skip)]
    decoder: PhantomData<D>,
}

impl<D> TocIndex<D> {
    pub(crate) fn new(toc_offset: u64, chunks: Vec<TocChunk>) -> Self {
        TocIndex {
            toc_offset,
            chunks,
            decoder: PhantomData,
        }
    }
}

impl<D> Clone for TocIndex<D> {
    fn clone(&self) -> Self {
        TocIndex::new(self.toc_offset, self.chunks.clone())
    }
}

impl<D> std::fmt::Debug for TocIndex<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TocIndex")
            .field("toc_offset", &self.toc_offset)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl<D: ChunkDecoder + Send + Sync> ChunkMap for TocIndex<D> {
    fn chunk_count(&self) -> u64 {
        self.chunks.len() as u64
    }

    fn chunk_range(&self, id: u64) -> Range<u64> {
        let c = &self.chunks[id as usize];
        c.file_offset..c.file_offset + c.size
    }

    fn file_span(&self, entry: &Entry, offset: u64, end: u64) -> Span {
        let first = entry.data as usize;
        // A file's chunks are adjacent; the next file's starts at offset 0.
        let count = 1 + self.chunks[first + 1..]
            .iter()
            .take_while(|c| c.file_offset > 0)
            .count();
        let file = &self.chunks[first..first + count];
        let lo = file.partition_point(|c| c.file_offset + c.size <= offset);
        let hi = file.partition_point(|c| c.file_offset < end);
        Span {
            ids: (first + lo) as u64..(first + hi) as u64,
            bytes: offset..end,
            file_end: (first + count) as u64,
        }
    }
}

impl<D: ChunkDecoder + Send + Sync> Codec for TocIndex<D> {
    fn plan(&self, want: Range<u64>) -> Fetch {
        let (a, b) = (want.start as usize, want.end as usize);
        Fetch {
            blob: self.chunks[a].comp_start..self.chunks[b - 1].comp_end,
            chunks: want,
            start_point: 0,
        }
    }

    fn decode(&self, fetch: &Fetch, blob: &Bytes) -> Result<Vec<(u64, Bytes)>, String> {
        let base = fetch.blob.start;
        let mut out = Vec::new();
        for id in fetch.chunks.clone() {
            let c = &self.chunks[id as usize];
            let raw = blob.slice((c.comp_start - base) as usize..(c.comp_end - base) as usize);
            out.push((id, Bytes::from(D::decode(c, &raw)?)));
        }
        Ok(out)
    }

    fn fetch_group(&self, id: u64) -> u64 {
        id / FETCH_GROUP_CHUNKS
    }

    fn fill_runs(&self) -> Vec<Range<u64>> {
        cut_runs(self.chunk_count(), FETCH_GROUP_CHUNKS, std::iter::empty())
    }

    /// The TOC is checked against the manifest's annotation and costs two
    /// range reads: an index from elsewhere adds nothing but risk.
    fn publishable(&self) -> bool {
        false
    }

    fn check_consistent(&self, _: u64, _: u64) -> Result<(), String> {
        Err(format!(
            "{} indexes are only ever built from the layer's own TOC",
            D::NAME
        ))
    }
}
