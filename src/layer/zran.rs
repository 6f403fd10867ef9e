//! zran-style random access into one gzip stream (stub: being written).

use serde::{Deserialize, Serialize};
use std::io::Read;
use std::ops::Range;

/// Output bytes between checkpoints (about 4 MiB, as the issue asks).
pub const CHECKPOINT_SPACING: u64 = 4 << 20;
/// Compressed bytes covered by one block hash.
pub const BLOCK_SIZE: u64 = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ZranError {
    #[error("corrupt gzip stream at compressed offset {offset}: {msg}")]
    Corrupt { offset: u64, msg: String },
    #[error("compressed block {block} failed its sha256 check (wrong bytes from the registry)")]
    BlockMismatch { block: u64 },
    #[error("I/O while reading the compressed stream: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    pub in_off: u64,
    pub out_off: u64,
    pub bits: u8,
    pub window: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Block {
    pub out_avail: u64,
    pub sha256: [u8; 32],
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ZranIndex {
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub checkpoints: Vec<Checkpoint>,
    pub blocks: Vec<Block>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadPlan {
    pub checkpoint: usize,
    pub compressed: Range<u64>,
}

pub struct ZranReader<R: Read> {
    _inner: R,
}

impl<R: Read> ZranReader<R> {
    pub fn new(inner: R) -> Self {
        ZranReader { _inner: inner }
    }
    pub fn finish(self) -> Result<ZranIndex, ZranError> {
        unimplemented!("zran")
    }
}

impl<R: Read> Read for ZranReader<R> {
    fn read(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        unimplemented!("zran")
    }
}

impl ZranIndex {
    pub fn plan(&self, _out: Range<u64>) -> ReadPlan {
        unimplemented!("zran")
    }
    pub fn decode(
        &self,
        _plan: &ReadPlan,
        _compressed: &[u8],
        _out_end: u64,
        _sink: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<(), ZranError> {
        unimplemented!("zran")
    }
}
