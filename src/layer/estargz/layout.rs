//! eStargz layers: every file is chunked on its own into gzip members that
//! the table of contents locates; a chunk is decoded from its member alone
//! and checked against its TOC digest.

use super::{self as estargz, EstargzIndex};
use crate::layer::format::{cut_runs, ChunkMap, Codec, Fetch, Indexed, Span, TailIndexer};
use crate::layer::index::IndexDetail;
use crate::layer::{Entry, LayerFormat};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Range;

/// Chunks worth fetching by one request.
const FETCH_GROUP_CHUNKS: u64 = 16;

impl ChunkMap for EstargzIndex {
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

impl Codec for EstargzIndex {
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
            let data = estargz::decode_chunk(c, &raw).map_err(|e| e.to_string())?;
            out.push((id, Bytes::from(data)));
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
        Err("eStargz indexes are only ever built from the layer's own TOC".into())
    }
}

/// Finds an eStargz TOC through the footer of a gzip blob.
pub(crate) struct EstargzTail;

impl TailIndexer for EstargzTail {
    fn format(&self) -> LayerFormat {
        LayerFormat::Estargz
    }

    fn tail_len(&self) -> u64 {
        estargz::FOOTER_SIZE
    }

    fn locate(&self, tail: &[u8], blob_size: u64) -> Result<Option<Range<u64>>, String> {
        let Some(toc) = estargz::parse_footer(tail).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let end = blob_size - estargz::FOOTER_SIZE;
        if toc >= end {
            return Err(format!("eStargz TOC offset {toc} is past the footer"));
        }
        Ok(Some(toc..end))
    }

    fn index(
        &self,
        region: &[u8],
        at: u64,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Indexed, String> {
        let expected = annotations.get(estargz::TOC_DIGEST_ANNOTATION);
        let (entries, detail) = estargz::parse_toc(region, at, expected.map(String::as_str))
            .map_err(|e| e.to_string())?;
        Ok(Indexed {
            format: LayerFormat::Estargz,
            uncompressed_size: entries.iter().map(|e| e.size).sum(),
            entries,
            detail: IndexDetail::Estargz(detail),
        })
    }
}
