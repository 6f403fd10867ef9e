//! eStargz layers: every file is chunked on its own into gzip members that
//! the table of contents locates; a chunk is decoded from its member alone
//! and checked against its TOC digest.

use super as estargz;
use crate::layer::format::{Indexed, TailIndexer};
use crate::layer::index::IndexDetail;
use crate::layer::toc::{ChunkDecoder, TocChunk};
use crate::layer::LayerFormat;
use std::collections::BTreeMap;
use std::ops::Range;

/// How eStargz chunks are decoded: each from its own gzip member.
#[derive(Debug)]
pub struct GzipMembers;

impl ChunkDecoder for GzipMembers {
    const NAME: &'static str = "eStargz";

    fn decode(chunk: &TocChunk, compressed: &[u8]) -> Result<Vec<u8>, String> {
        estargz::decode_chunk(chunk, compressed).map_err(|e| e.to_string())
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
