//! Decoding one chunk: its gzip member, checked against the TOC's digest.

use super::{EChunk, EstargzError};
use flate2::read::GzDecoder;
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};

/// Decompress one chunk from `compressed`, blob bytes starting at
/// `chunk.comp_start` (up to `comp_end`; fewer suffice as long as the chunk's
/// own bytes are there). Returns exactly `chunk.size` bytes, checked against
/// the chunk digest when the TOC has one.
pub(crate) fn decode_chunk(chunk: &EChunk, compressed: &[u8]) -> Result<Vec<u8>, EstargzError> {
    let read_err = |source| EstargzError::ChunkRead {
        comp_start: chunk.comp_start,
        source,
    };
    let mut member = GzDecoder::new(compressed);
    let skipped =
        io::copy(&mut (&mut member).take(chunk.inner_offset), &mut io::sink()).map_err(read_err)?;
    if skipped != chunk.inner_offset {
        return Err(EstargzError::ChunkTruncated {
            comp_start: chunk.comp_start,
            wanted: chunk.inner_offset + chunk.size,
            got: skipped,
        });
    }
    // Grown as data arrives rather than sized from the TOC up front, so a
    // hostile size cannot force a huge allocation.
    let mut out = Vec::new();
    (&mut member)
        .take(chunk.size)
        .read_to_end(&mut out)
        .map_err(read_err)?;
    if out.len() as u64 != chunk.size {
        return Err(EstargzError::ChunkTruncated {
            comp_start: chunk.comp_start,
            wanted: chunk.inner_offset + chunk.size,
            got: skipped + out.len() as u64,
        });
    }
    match chunk.digest {
        Some(expected) => {
            let actual: [u8; 32] = Sha256::digest(&out).into();
            if actual != expected {
                return Err(EstargzError::ChunkDigestMismatch {
                    comp_start: chunk.comp_start,
                    expected: hex::encode(expected),
                    actual: hex::encode(actual),
                });
            }
        }
        // Without a digest the member's CRC is the only check there is; the
        // rest of the member is a little tar padding and a few headers.
        None => {
            io::copy(&mut member, &mut io::sink()).map_err(read_err)?;
        }
    }
    Ok(out)
}
