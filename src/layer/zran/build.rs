//! Streaming a gzip layer once while recording its [`ZranIndex`]:
//! checkpoints about every `spacing` output bytes, one sha256 per block.

use super::ffi::{Inflater, Step, GZIP_WBITS, Z_BLOCK, Z_BUF_ERROR, Z_OK, Z_STREAM_END};
use super::{
    Block, Checkpoint, CheckpointKind, Mark, ZranError, ZranIndex, BLOCK_SIZE, CHECKPOINT_SPACING,
    MARK_SPACING, WINDOW_SIZE,
};
use sha2::{Digest, Sha256};
use std::ffi::c_int;
use std::io::{self, Read};

const IN_BUF_SIZE: usize = 64 << 10;

/// A stream error, remembered so that every later `read` and `finish`
/// reports it again instead of continuing from an inconsistent state.
#[derive(Clone, Debug)]
struct Failure {
    kind: io::ErrorKind,
    offset: u64,
    msg: String,
}

impl Failure {
    fn to_zran(&self) -> ZranError {
        ZranError::Corrupt {
            offset: self.offset,
            msg: self.msg.clone(),
        }
    }

    fn to_io(&self) -> io::Error {
        io::Error::new(self.kind, self.to_zran())
    }
}

enum PumpError {
    /// From the wrapped reader: passed through, the state stays usable.
    Inner(io::Error),
    Bad(Failure),
}

impl From<io::Error> for PumpError {
    fn from(e: io::Error) -> Self {
        PumpError::Inner(e)
    }
}

/// What kind of deflate block the streaming inflater is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockState {
    /// At a block boundary whose header is not known yet: its first `bits`
    /// bits (fewer than 3) are the low bits of `value`, the rest follows in
    /// the next input byte.
    Header {
        bits: u8,
        value: u8,
    },
    Fixed {
        last: bool,
    },
    /// Stored or dynamic (or not known): no mid-block checkpoints.
    Other,
}

impl BlockState {
    /// From a block header's first 3 bits: BFINAL, then BTYPE.
    fn classify(header: u32) -> Self {
        if (header >> 1) & 3 == 1 {
            BlockState::Fixed {
                last: header & 1 != 0,
            }
        } else {
            BlockState::Other
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Inside a gzip member (header, deflate data or trailer).
    Member,
    /// After a member's trailer: another member, padding or the end follows.
    BetweenMembers,
    /// Zero bytes after the last member.
    Padding,
    Done,
}

/// Decompresses a gzip stream (any number of members) and builds its
/// [`ZranIndex`] on the way.
pub(crate) struct ZranReader<R: Read> {
    inner: R,
    inflater: Option<Inflater>,
    inbuf: Box<[u8]>,
    in_pos: usize,
    in_len: usize,
    inner_eof: bool,
    phase: Phase,
    block: BlockState,
    /// The last 8 consumed input bytes, most recent in the top byte, so
    /// the bits zlib holds back at a block boundary can be looked at.
    tail: u64,
    /// Consecutive inflate calls without progress, to catch a stuck loop.
    stalls: u8,
    spacing: u64,
    total_in: u64,
    total_out: u64,
    last_checkpoint_out: u64,
    checkpoints: Vec<Checkpoint>,
    /// Output offset where the current gzip member began: a window never
    /// reaches before it.
    member_start_out: u64,
    last_mark_out: u64,
    marks: Vec<Mark>,
    blocks: Vec<Block>,
    hasher: Sha256,
    failure: Option<Failure>,
}

impl<R: Read> ZranReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self::with_spacing(inner, CHECKPOINT_SPACING)
    }

    /// Like [`ZranReader::new`] with another checkpoint spacing: smaller
    /// means cheaper random reads but a bigger index (32 KiB per checkpoint).
    pub(crate) fn with_spacing(inner: R, spacing: u64) -> Self {
        let (inflater, failure) = match Inflater::new(GZIP_WBITS) {
            Ok(i) => (Some(i), None),
            Err(e) => (
                None,
                Some(Failure {
                    kind: io::ErrorKind::Other,
                    offset: 0,
                    msg: e.to_string(),
                }),
            ),
        };
        ZranReader {
            inner,
            inflater,
            inbuf: vec![0u8; IN_BUF_SIZE].into_boxed_slice(),
            in_pos: 0,
            in_len: 0,
            inner_eof: false,
            phase: Phase::Member,
            block: BlockState::Other,
            tail: 0,
            stalls: 0,
            spacing: spacing.max(1),
            total_in: 0,
            total_out: 0,
            last_checkpoint_out: 0,
            checkpoints: Vec::new(),
            member_start_out: 0,
            last_mark_out: 0,
            marks: Vec::new(),
            blocks: Vec::new(),
            hasher: Sha256::new(),
            failure,
        }
    }

    /// The index, once `read` has returned 0 without an error.
    pub(crate) fn finish(self) -> Result<ZranIndex, ZranError> {
        if let Some(f) = &self.failure {
            return Err(f.to_zran());
        }
        if self.phase != Phase::Done {
            return Err(ZranError::Incomplete {
                offset: self.total_in,
            });
        }
        Ok(ZranIndex {
            compressed_size: self.total_in,
            uncompressed_size: self.total_out,
            checkpoints: self.checkpoints,
            blocks: self.blocks,
            marks: self.marks,
        })
    }

    /// Makes sure unconsumed input is buffered; false at the end of input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.in_pos < self.in_len {
            return Ok(true);
        }
        if self.inner_eof {
            return Ok(false);
        }
        loop {
            match self.inner.read(&mut self.inbuf) {
                Ok(0) => {
                    self.inner_eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.in_pos = 0;
                    self.in_len = n.min(self.inbuf.len());
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn fail(&mut self, kind: io::ErrorKind, offset: u64, msg: impl Into<String>) -> PumpError {
        let f = Failure {
            kind,
            offset,
            msg: msg.into(),
        };
        self.failure = Some(f.clone());
        PumpError::Bad(f)
    }

    /// Marks `len` buffered bytes as consumed. Callers never pass a range
    /// that crosses a block boundary except exactly at its end, so a block's
    /// `out_avail` is taken right when its last byte was consumed.
    fn account_input(&mut self, len: usize) {
        let bytes = &self.inbuf[self.in_pos..self.in_pos + len];
        self.hasher.update(bytes);
        if let Some(last8) = bytes.last_chunk::<8>() {
            self.tail = u64::from_le_bytes(*last8);
        } else {
            for &b in bytes {
                self.tail = (self.tail >> 8) | (u64::from(b) << 56);
            }
        }
        self.in_pos += len;
        self.total_in += len as u64;
        if len > 0 && self.total_in.is_multiple_of(BLOCK_SIZE) {
            self.close_block();
        }
    }

    fn close_block(&mut self) {
        let digest = std::mem::take(&mut self.hasher).finalize();
        self.blocks.push(Block {
            out_avail: self.total_out,
            sha256: digest.into(),
        });
    }

    fn to_block_end(&self) -> usize {
        (BLOCK_SIZE - self.total_in % BLOCK_SIZE) as usize
    }

    fn end_of_stream(&mut self) {
        if !self.total_in.is_multiple_of(BLOCK_SIZE) {
            self.close_block();
        }
        self.phase = Phase::Done;
    }

    fn checkpoint_due(&self) -> bool {
        self.checkpoints.is_empty() || self.total_out - self.last_checkpoint_out >= self.spacing
    }

    fn add_checkpoint(&mut self, step: &Step, kind: CheckpointKind) {
        let Some(inflater) = self.inflater.as_ref() else {
            return;
        };
        // Whole bytes still in zlib's bit buffer are not consumed as far as
        // a resumed inflater is concerned: move in_off back over them.
        let pending = step.pending_bits();
        self.checkpoints.push(Checkpoint {
            in_off: self.total_in - pending / 8,
            out_off: self.total_out,
            bits: (pending % 8) as u8,
            window: inflater.dictionary(),
            kind,
        });
        self.last_checkpoint_out = self.total_out;
        self.last_mark_out = self.total_out;
    }

    /// A checkpoint where one is due, else a mark where one is due.
    fn resume_point(&mut self, step: &Step, kind: CheckpointKind) {
        if self.checkpoint_due() {
            self.add_checkpoint(step, kind);
        } else if self.total_out - self.last_mark_out >= MARK_SPACING {
            let pending = step.pending_bits();
            self.marks.push(Mark {
                in_off: self.total_in - pending / 8,
                out_off: self.total_out,
                bits: (pending % 8) as u8,
                kind,
                window_len: (self.total_out - self.member_start_out).min(WINDOW_SIZE as u64) as u32,
            });
            self.last_mark_out = self.total_out;
        }
    }

    fn pump(&mut self, buf: &mut [u8]) -> Result<usize, PumpError> {
        loop {
            match self.phase {
                Phase::Member => {
                    if !self.fill()? {
                        let msg = if self.total_in == 0 {
                            "empty input: not a gzip stream"
                        } else {
                            "unexpected end of data inside a gzip member (truncated stream)"
                        };
                        return Err(self.fail(io::ErrorKind::UnexpectedEof, self.total_in, msg));
                    }
                    let n = (self.in_len - self.in_pos).min(self.to_block_end());
                    let Some(inflater) = self.inflater.as_mut() else {
                        return Err(self.fail(io::ErrorKind::Other, 0, "no inflater"));
                    };
                    if let BlockState::Header { bits, value } = self.block {
                        let next = u32::from(self.inbuf[self.in_pos]);
                        self.block = BlockState::classify(u32::from(value) | next << bits);
                    }
                    let step =
                        inflater.step(&self.inbuf[self.in_pos..self.in_pos + n], buf, Z_BLOCK);
                    self.total_out += step.produced as u64;
                    self.account_input(step.consumed);
                    match step.ret {
                        Z_OK | Z_BUF_ERROR => {
                            // A stop may legitimately move only bits already
                            // buffered (a block header), never repeatedly.
                            if step.consumed == 0 && step.produced == 0 {
                                self.stalls += 1;
                            } else {
                                self.stalls = 0;
                            }
                            if self.stalls > 3 {
                                let text = format!(
                                    "inflate made no progress ({})",
                                    inflater_text(&self.inflater, step.ret)
                                );
                                return Err(self.fail(
                                    io::ErrorKind::InvalidData,
                                    self.total_in,
                                    text,
                                ));
                            }
                            self.track_block(&step);
                        }
                        Z_STREAM_END => {
                            if step.pending_bits() >= 8 {
                                return Err(self.fail(
                                    io::ErrorKind::Other,
                                    self.total_in,
                                    "inflater kept unread bytes after a gzip member",
                                ));
                            }
                            self.phase = Phase::BetweenMembers;
                            self.block = BlockState::Other;
                        }
                        ret => {
                            let text = inflater_text(&self.inflater, ret);
                            return Err(self.fail(io::ErrorKind::InvalidData, self.total_in, text));
                        }
                    }
                    if step.produced > 0 {
                        return Ok(step.produced);
                    }
                }
                Phase::BetweenMembers => {
                    if !self.fill()? {
                        self.end_of_stream();
                        return Ok(0);
                    }
                    match self.inbuf[self.in_pos] {
                        0x1f => {
                            // inflate itself validates the rest of the header.
                            let reset = match self.inflater.as_mut() {
                                Some(i) => i.reset(),
                                None => Err(ZranError::Inflate {
                                    msg: "no inflater".into(),
                                }),
                            };
                            if let Err(e) = reset {
                                return Err(self.fail(
                                    io::ErrorKind::Other,
                                    self.total_in,
                                    e.to_string(),
                                ));
                            }
                            self.phase = Phase::Member;
                            self.member_start_out = self.total_out;
                        }
                        0 => self.phase = Phase::Padding,
                        b => {
                            let msg = format!(
                                "unexpected byte {b:#04x} after the end of a gzip member \
                                 (expected another gzip member or the end of the data)"
                            );
                            return Err(self.fail(io::ErrorKind::InvalidData, self.total_in, msg));
                        }
                    }
                }
                Phase::Padding => {
                    if !self.fill()? {
                        self.end_of_stream();
                        return Ok(0);
                    }
                    let avail = &self.inbuf[self.in_pos..self.in_len];
                    if let Some(i) = avail.iter().position(|&b| b != 0) {
                        return Err(self.fail(
                            io::ErrorKind::InvalidData,
                            self.total_in + i as u64,
                            "non-zero data after the zero padding that follows the last gzip member",
                        ));
                    }
                    let mut left = avail.len();
                    while left > 0 {
                        let n = left.min(self.to_block_end());
                        self.account_input(n);
                        left -= n;
                    }
                }
                Phase::Done => return Ok(0),
            }
        }
    }
}

impl<R: Read> ZranReader<R> {
    /// Follows block boundaries and headers, adding checkpoints when due.
    fn track_block(&mut self, step: &Step) {
        if step.at_block_boundary() {
            // The header's first bits may still sit in zlib's bit buffer:
            // they are the top bits of the last bytes consumed.
            let pending = step.pending_bits().min(56) as u32;
            let held = if pending == 0 {
                0
            } else {
                (self.tail >> (64 - pending)) as u32
            };
            self.block = if pending >= 3 {
                BlockState::classify(held)
            } else {
                BlockState::Header {
                    bits: pending as u8,
                    value: held as u8,
                }
            };
            self.resume_point(step, CheckpointKind::BlockBoundary);
        } else if step.before_block_header() {
            self.block = BlockState::Other;
        } else if let BlockState::Fixed { last } = self.block {
            if step.mark == 0 {
                self.resume_point(step, CheckpointKind::InFixedBlock { last });
            }
        }
    }
}

fn inflater_text(inflater: &Option<Inflater>, ret: c_int) -> String {
    match inflater {
        Some(i) => i.error_text(ret),
        None => format!("inflate failed (code {ret})"),
    }
}

impl<R: Read> Read for ZranReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(f) = &self.failure {
            return Err(f.to_io());
        }
        if buf.is_empty() || self.phase == Phase::Done {
            return Ok(0);
        }
        match self.pump(buf) {
            Ok(n) => Ok(n),
            Err(PumpError::Inner(e)) => Err(e),
            Err(PumpError::Bad(f)) => Err(f.to_io()),
        }
    }
}
