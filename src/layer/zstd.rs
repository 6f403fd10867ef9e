//! zstd layers (`tar+zstd`): one or more zstd frames over the tar stream.
//!
//! A zstd frame can only be decoded from its start: there is no checkpoint
//! to enter it in the middle (the window a block refers back to can be
//! megabytes, and the library offers no way to prime it). So the indexing
//! pass, which reads the whole blob once anyway, keeps every chunk it
//! decodes (the image is served progressively while it runs, then from the
//! cache), and records:
//!
//! - where each frame starts, in the blob and in the stream: a later miss
//!   decodes from the start of the frame that holds its first byte;
//! - for each chunk, how much of the blob the decoder had consumed when the
//!   chunk was complete: a miss fetches only up to there, not to the end of
//!   the frame;
//! - each chunk's sha256, so a chunk decoded again is checked on its own.
//!
//! A layer compressed as one frame (what most tools write) therefore costs
//! a re-read from the blob's start for a chunk the cache no longer holds;
//! multi-frame layers cost a re-read from the frame's start.

use super::format::{
    cut_runs, split_tar_stream, ChunkMap, ChunkSink, Codec, Fetch, StreamChunks, StreamIndexer,
};
use super::index::{IndexDetail, CHUNK_SIZE};
use super::Entry;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};
use std::ops::Range;
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

/// Chunks one request decodes at most, unless more were asked for: every
/// request decodes from its frame's start, so a miss also brings the chunks
/// after it in its frame (a reader's next misses), up to this bound on the
/// memory one request's chunks take (32 MiB).
const RUN_CHUNKS: u64 = 128;

/// The largest window a frame may ask the decoder to keep (2^27 = 128 MiB,
/// zstd's own default limit): a hostile blob cannot make a decode allocate
/// more.
const WINDOW_LOG_MAX: u32 = 27;

/// Where a frame starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FrameStart {
    /// Offset of its first byte in the blob.
    pub(crate) blob: u64,
    /// Offset of its first decoded byte in the tar stream.
    pub(crate) out: u64,
}

/// The index detail of a zstd layer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ZstdFrames {
    pub(crate) compressed_size: u64,
    pub(crate) uncompressed_size: u64,
    /// Every frame (skippable ones too), in blob order.
    pub(crate) frames: Vec<FrameStart>,
    /// Per chunk: blob bytes the decoder had consumed when it was complete.
    pub(crate) chunk_input_end: Vec<u64>,
    /// Per chunk: its sha256.
    pub(crate) chunk_sha256: Vec<[u8; 32]>,
}

impl StreamChunks for ZstdFrames {
    fn stream_size(&self) -> u64 {
        self.uncompressed_size
    }
}

impl ZstdFrames {
    /// The frame holding stream byte `at`.
    fn frame_at(&self, at: u64) -> usize {
        self.frames
            .partition_point(|f| f.out <= at)
            .saturating_sub(1)
    }

    /// The chunks a request for `want` decodes: `want`, continued to the
    /// end of its first chunk's frame, at most [`RUN_CHUNKS`] in all.
    fn extent(&self, want: &Range<u64>) -> Range<u64> {
        let frame = self.frame_at(want.start * CHUNK_SIZE);
        let frame_end = self
            .frames
            .get(frame + 1)
            .map_or(self.chunk_count(), |f| f.out / CHUNK_SIZE);
        let end = frame_end.min(want.start + RUN_CHUNKS).max(want.end);
        want.start..end
    }
}

fn decoder() -> io::Result<Decoder<'static>> {
    let mut d = Decoder::new()?;
    d.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(WINDOW_LOG_MAX))?;
    Ok(d)
}

/// The first `limit` bytes (fewer if the data ends first) that `input`, one
/// or more frames, decodes to; the output grows only as data arrives, so a
/// hostile `limit` costs nothing.
pub(crate) fn decode_prefix(input: &[u8], limit: u64) -> io::Result<Vec<u8>> {
    let mut d = decoder()?;
    let mut input = InBuffer::around(input);
    let mut buf = vec![0u8; 1 << 17];
    let mut out = Vec::new();
    while (out.len() as u64) < limit {
        let before = input.pos();
        let mut output = OutBuffer::around(&mut buf[..]);
        d.run(&mut input, &mut output)?;
        let n = output.pos();
        let take = (n as u64).min(limit - out.len() as u64) as usize;
        out.extend_from_slice(&buf[..take]);
        if n == 0 && input.pos() == before {
            break;
        }
    }
    Ok(out)
}

impl Codec for ZstdFrames {
    fn plan(&self, want: Range<u64>) -> Fetch {
        let frame = self.frame_at(want.start * CHUNK_SIZE);
        let start = self.frames.get(frame).map_or(0, |f| f.blob);
        let end = self
            .extent(&want)
            .end
            .checked_sub(1)
            .and_then(|last| self.chunk_input_end.get(last as usize))
            .copied()
            .unwrap_or(self.compressed_size);
        Fetch {
            blob: start..end.max(start),
            chunks: want,
            start_point: frame,
        }
    }

    fn decode(&self, fetch: &Fetch, blob: &Bytes) -> Result<Vec<(u64, Bytes)>, String> {
        if fetch.chunks.is_empty() {
            return Ok(Vec::new());
        }
        let from = self
            .frames
            .get(fetch.start_point)
            .ok_or_else(|| format!("no frame {} in the index", fetch.start_point))?
            .out;
        let chunks = self.extent(&fetch.chunks);
        let want = chunks.start * CHUNK_SIZE..self.chunk_range(chunks.end - 1).end;
        let mut d = decoder().map_err(|e| e.to_string())?;
        let mut input = InBuffer::around(&blob[..]);
        let mut buf = vec![0u8; 1 << 17];
        let mut at = from;
        let mut cur = BytesMut::new();
        let mut out = Vec::new();
        while at < want.end {
            let mut output = OutBuffer::around(&mut buf[..]);
            d.run(&mut input, &mut output)
                .map_err(|e| format!("zstd data at stream offset {at}: {e}"))?;
            let n = output.pos();
            if n == 0 && input.pos() == blob.len() {
                return Err(format!(
                    "the zstd data ended at stream offset {at}, before {}",
                    want.end
                ));
            }
            let mut data = &buf[..n];
            while !data.is_empty() && at < want.end {
                if at < want.start {
                    let skip = (want.start - at).min(data.len() as u64) as usize;
                    data = &data[skip..];
                    at += skip as u64;
                    continue;
                }
                let id = at / CHUNK_SIZE;
                let room = self.chunk_range(id).end - at;
                let take = room.min(data.len() as u64) as usize;
                cur.extend_from_slice(&data[..take]);
                data = &data[take..];
                at += take as u64;
                if at == self.chunk_range(id).end {
                    let chunk = cur.split().freeze();
                    if self.chunk_sha256.get(id as usize) != Some(&Sha256::digest(&chunk).into()) {
                        return Err(format!(
                            "chunk {id} decoded from the registry failed its sha256 check"
                        ));
                    }
                    out.push((id, chunk));
                }
            }
        }
        Ok(out)
    }

    fn cpu_heavy(&self) -> bool {
        true
    }

    /// The chunks of one frame: every request for them decodes from its start.
    fn fetch_group(&self, id: u64) -> u64 {
        self.frame_at(id * CHUNK_SIZE) as u64
    }

    fn fill_runs(&self) -> Vec<Range<u64>> {
        let starts = self.frames.iter().map(|f| f.out.div_ceil(CHUNK_SIZE));
        cut_runs(self.chunk_count(), RUN_CHUNKS, starts)
    }

    fn check_consistent(&self, compressed: u64, total: u64) -> Result<(), String> {
        if self.compressed_size != compressed || self.uncompressed_size != total {
            return Err("its zstd sizes disagree with the index".into());
        }
        let chunks = total.div_ceil(CHUNK_SIZE) as usize;
        if self.chunk_sha256.len() != chunks || self.chunk_input_end.len() != chunks {
            return Err(format!(
                "{} chunk hashes and {} input ends for {chunks} chunks",
                self.chunk_sha256.len(),
                self.chunk_input_end.len()
            ));
        }
        if self.frames.first() != Some(&FrameStart { blob: 0, out: 0 }) {
            return Err("no frame at the start of the blob".into());
        }
        let frames_ordered = self
            .frames
            .windows(2)
            .all(|w| w[0].blob < w[1].blob && w[0].out <= w[1].out);
        let last = self.frames.last().expect("checked above");
        if !frames_ordered || last.blob >= compressed || last.out > total {
            return Err("frame offsets are out of order".into());
        }
        let ends_ordered = self.chunk_input_end.windows(2).all(|w| w[0] <= w[1]);
        if !ends_ordered || self.chunk_input_end.last().is_some_and(|&e| e > compressed) {
            return Err("chunk input offsets are out of order".into());
        }
        Ok(())
    }
}

/// Decodes a zstd blob as a reader, noting where frames start and how much
/// input each chunk of output took.
struct FrameReader<R: Read> {
    inner: R,
    decoder: Decoder<'static>,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    inner_eof: bool,
    /// Blob bytes given to the decoder so far.
    consumed: u64,
    /// Stream bytes produced so far.
    produced: u64,
    /// The next input byte starts a frame.
    at_frame_start: bool,
    frames: Vec<FrameStart>,
    chunk_input_end: Vec<u64>,
}

impl<R: Read> FrameReader<R> {
    fn new(inner: R) -> io::Result<Self> {
        Ok(FrameReader {
            inner,
            decoder: decoder()?,
            buf: vec![0; 1 << 17],
            pos: 0,
            len: 0,
            inner_eof: false,
            consumed: 0,
            produced: 0,
            at_frame_start: true,
            frames: Vec::new(),
            chunk_input_end: Vec::new(),
        })
    }

    /// The frame table and the input end of every chunk, once the whole
    /// blob was read.
    fn finish(mut self) -> Result<(u64, Vec<FrameStart>, Vec<u64>), String> {
        if !self.at_frame_start || !self.inner_eof || self.pos < self.len {
            return Err(format!(
                "the zstd stream was not read to its end (at blob offset {})",
                self.consumed
            ));
        }
        if self.frames.is_empty() {
            return Err("the blob holds no zstd frame".into());
        }
        if !self.produced.is_multiple_of(CHUNK_SIZE) {
            self.chunk_input_end.push(self.consumed);
        }
        Ok((self.consumed, self.frames, self.chunk_input_end))
    }
}

impl<R: Read> Read for FrameReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos == self.len && !self.inner_eof {
                self.len = self.inner.read(&mut self.buf)?;
                self.pos = 0;
                self.inner_eof = self.len == 0;
            }
            if self.pos == self.len {
                if self.at_frame_start {
                    return Ok(0);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "zstd stream cut inside a frame at blob offset {}",
                        self.consumed
                    ),
                ));
            }
            if self.at_frame_start {
                self.frames.push(FrameStart {
                    blob: self.consumed,
                    out: self.produced,
                });
                self.at_frame_start = false;
            }
            let mut input = InBuffer::around(&self.buf[self.pos..self.len]);
            let mut output = OutBuffer::around(&mut *out);
            let hint = self.decoder.run(&mut input, &mut output).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("zstd data at blob offset {}: {e}", self.consumed),
                )
            })?;
            let (used, made) = (input.pos(), output.pos());
            self.pos += used;
            self.consumed += used as u64;
            let before = self.produced;
            self.produced += made as u64;
            for _ in before / CHUNK_SIZE..self.produced / CHUNK_SIZE {
                self.chunk_input_end.push(self.consumed);
            }
            if hint == 0 {
                self.at_frame_start = true;
            }
            if made > 0 {
                return Ok(made);
            }
        }
    }
}

/// The indexing pass of a zstd layer: decode, note frames and chunk input
/// ends, read the tar headers, cut and hash chunks.
pub(crate) struct ZstdStream;

impl StreamIndexer for ZstdStream {
    fn index_stream(
        &self,
        input: &mut dyn Read,
        chunks: &mut dyn ChunkSink,
        found: &mut dyn FnMut(Entry),
    ) -> Result<(IndexDetail, u64), String> {
        let z = FrameReader::new(input).map_err(|e| e.to_string())?;
        let (z, size, chunk_sha256) = split_tar_stream(z, chunks, found, true)?;
        let (compressed_size, frames, chunk_input_end) = z.finish()?;
        Ok((
            IndexDetail::Zstd(ZstdFrames {
                compressed_size,
                uncompressed_size: size,
                frames,
                chunk_input_end,
                chunk_sha256,
            }),
            size,
        ))
    }
}

#[cfg(test)]
#[path = "zstd_tests.rs"]
mod tests;
