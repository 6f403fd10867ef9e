//! zran-style random access into a gzip layer blob.
//!
//! A gzip stream can normally only be decompressed from its start. While the
//! layer is streamed once (to list its tar entries), [`ZranReader`] records
//! *checkpoints*: the inflater's position at deflate block boundaries about
//! every [`CHECKPOINT_SPACING`] bytes of output, together with the last 32 KiB
//! of output that later back-references may reach into. Any uncompressed
//! range can then be produced by fetching the compressed bytes from the
//! nearest checkpoint on and resuming inflation there ([`ZranIndex::plan`],
//! [`ZranIndex::decode`]).
//!
//! Checkpoints normally sit at deflate block boundaries, as in zlib's
//! zran.c. Inside a fixed-Huffman block any code boundary works too (see
//! [`CheckpointKind`]); that keeps streams made of one huge fixed block
//! (zlib-ng and zlib-rs at level 1) randomly accessible.
//!
//! Ranged fetches cannot be checked against the layer digest, so the
//! compressed blob is also cut into [`BLOCK_SIZE`] blocks with one sha256
//! each, and [`ZranIndex::decode`] refuses data whose blocks do not match.
//!
//! - `ffi`: the zlib inflate stream, the only place that calls zlib,
//! - `build`: [`ZranReader`], which streams the layer once and records
//!   checkpoints and block hashes,
//! - `decode`: [`ZranIndex::plan`] and [`ZranIndex::decode`].

mod build;
mod decode;
mod ffi;
#[cfg(test)]
mod tests;

pub(crate) use build::ZranReader;

use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Output bytes between checkpoints. About 4 MiB keeps the index small (a
/// 32 KiB window per checkpoint) while bounding what a random read must
/// decode before the bytes it wants.
pub(crate) const CHECKPOINT_SPACING: u64 = 4 << 20;
/// Output bytes between [`Mark`]s, at least: about one per deflate block
/// at zlib's usual block sizes, small beside the checkpoint spacing.
pub(crate) const MARK_SPACING: u64 = 64 << 10;
/// Compressed bytes covered by one block hash: the unit of every ranged
/// fetch (a block is verified whole), so a small read fetches at most two
/// of them more than it needs, and the hashes cost 40 bytes per block.
pub const BLOCK_SIZE: u64 = 64 << 10;

/// Deflate back-references reach at most this far, so this much preceding
/// output is all a checkpoint needs to resume.
const WINDOW_SIZE: usize = 32 << 10;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ZranError {
    #[error("corrupt gzip stream at compressed offset {offset}: {msg}")]
    Corrupt { offset: u64, msg: String },
    #[error("compressed block {block} failed its sha256 check (wrong bytes from the registry)")]
    BlockMismatch { block: u64 },
    #[error("I/O while reading the compressed stream: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the gzip stream was not read to its end (stopped at compressed offset {offset}); \
         read until read() returns 0 before calling finish()"
    )]
    Incomplete { offset: u64 },
    #[error("read plan does not match this index or the data given: {msg}")]
    InvalidPlan { msg: String },
    #[error("zlib failure: {msg}")]
    Inflate { msg: String },
}

/// What the inflater was in the middle of at a checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum CheckpointKind {
    /// Before a deflate block header (the only kind zlib's zran.c knows).
    #[default]
    BlockBoundary,
    /// Between two codes of a fixed-Huffman block whose last-block flag is
    /// `last`. Such a block needs no tables, so decoding resumes by priming
    /// a synthetic fixed block header. This matters because zlib-ng's and
    /// zlib-rs's level 1 emit one fixed block per flush, often one for the
    /// whole layer, which leaves no block boundaries to checkpoint at.
    InFixedBlock { last: bool },
}

/// Where inflation can resume.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Compressed offset of the first byte of which no bit was used yet.
    pub in_off: u64,
    /// Uncompressed offset at this point.
    pub(crate) out_off: u64,
    /// Unused high bits of the byte at `in_off - 1` (0..=7), for inflatePrime.
    pub(crate) bits: u8,
    /// Up to 32 KiB of output preceding `out_off` within the same gzip member
    /// (empty at a member's start: back-references never cross members).
    pub(crate) window: Vec<u8>,
    pub(crate) kind: CheckpointKind,
}

/// A place where a checkpoint could be made, recorded without its window:
/// the window is the [`Mark::window_len`] bytes of the uncompressed stream
/// before `out_off`, which can be read later through the index itself.
/// Marks are dense (about every [`MARK_SPACING`]) and cheap (a few bytes
/// each); [`ZranIndex::add_checkpoint`] turns one into a checkpoint where
/// reads are known to start (`image::refine`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Mark {
    pub(crate) in_off: u64,
    pub(crate) out_off: u64,
    pub(crate) bits: u8,
    pub(crate) kind: CheckpointKind,
    /// How much output before `out_off` the window holds: 32 KiB, or less
    /// near the start of a gzip member.
    pub(crate) window_len: u32,
}

/// Hash and decodability of one `BLOCK_SIZE` slice of the compressed blob.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Block {
    /// Uncompressed bytes produced once all input up to this block's end was
    /// consumed: a lower bound of what that input can decode to.
    pub(crate) out_avail: u64,
    pub(crate) sha256: [u8; 32],
}

/// Random-access index of one gzip layer blob: resume checkpoints and per-block hashes, built by
/// `ZranReader` in one streaming pass.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ZranIndex {
    pub(crate) compressed_size: u64,
    pub(crate) uncompressed_size: u64,
    /// Where inflation can resume, in increasing offset order.
    pub checkpoints: Vec<Checkpoint>,
    pub(crate) blocks: Vec<Block>,
    /// Where more checkpoints could be made, in increasing offset order.
    pub(crate) marks: Vec<Mark>,
}

impl ZranIndex {
    /// Makes a checkpoint of mark `mark` with `window` (the stream's bytes
    /// before it, as long as the mark says), keeping the checkpoints in
    /// order. Returns false, changing nothing, if there is one there already
    /// or the window has the wrong length.
    pub(crate) fn add_checkpoint(&mut self, mark: &Mark, window: Vec<u8>) -> bool {
        if window.len() != mark.window_len as usize {
            return false;
        }
        let at = self
            .checkpoints
            .partition_point(|c| c.out_off < mark.out_off);
        if self
            .checkpoints
            .get(at)
            .is_some_and(|c| c.out_off == mark.out_off)
        {
            return false;
        }
        self.checkpoints.insert(
            at,
            Checkpoint {
                in_off: mark.in_off,
                out_off: mark.out_off,
                bits: mark.bits,
                window,
                kind: mark.kind,
            },
        );
        true
    }
}

/// What to fetch for an uncompressed range: whole blocks starting at or
/// before `checkpoints[checkpoint]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReadPlan {
    pub(crate) checkpoint: usize,
    pub(crate) compressed: Range<u64>,
}
