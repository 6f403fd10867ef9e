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

use libz_rs_sys::{
    inflate, inflateEnd, inflateGetDictionary, inflateInit2_, inflateMark, inflatePrime,
    inflateReset, inflateSetDictionary, z_stream, zlibVersion, Z_BLOCK, Z_BUF_ERROR, Z_DATA_ERROR,
    Z_MEM_ERROR, Z_NEED_DICT, Z_NO_FLUSH, Z_OK, Z_STREAM_END,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::ffi::{c_int, c_long, CStr};
use std::io::{self, Read};
use std::ops::Range;

/// Output bytes between checkpoints (about 4 MiB, as the issue asks).
pub const CHECKPOINT_SPACING: u64 = 4 << 20;
/// Compressed bytes covered by one block hash.
pub const BLOCK_SIZE: u64 = 256 << 10;

/// Deflate back-references reach at most this far, so this much preceding
/// output is all a checkpoint needs to resume.
const WINDOW_SIZE: usize = 32 << 10;
const IN_BUF_SIZE: usize = 64 << 10;
const DECODE_BUF_SIZE: usize = 128 << 10;
/// gzip windowBits for inflateInit2: 15-bit window, +16 = gzip wrapper only
/// (so a zlib or raw stream is rejected instead of silently accepted).
const GZIP_WBITS: c_int = 15 + 16;
const RAW_WBITS: c_int = -15;

#[derive(Debug, thiserror::Error)]
pub enum ZranError {
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
pub enum CheckpointKind {
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
    pub out_off: u64,
    /// Unused high bits of the byte at `in_off - 1` (0..=7), for inflatePrime.
    pub bits: u8,
    /// Up to 32 KiB of output preceding `out_off` within the same gzip member
    /// (empty at a member's start: back-references never cross members).
    pub window: Vec<u8>,
    pub kind: CheckpointKind,
}

/// Hash and decodability of one `BLOCK_SIZE` slice of the compressed blob.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Block {
    /// Uncompressed bytes produced once all input up to this block's end was
    /// consumed: a lower bound of what that input can decode to.
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

/// What to fetch for an uncompressed range: whole blocks starting at or
/// before `checkpoints[checkpoint]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadPlan {
    pub checkpoint: usize,
    pub compressed: Range<u64>,
}

/// Owns one zlib inflate stream. All unsafe FFI is confined here.
struct Inflater {
    // Boxed because zlib's state may refer back to the z_stream's address.
    strm: Box<z_stream>,
}

// SAFETY: the z_stream and its state are owned exclusively by this value and
// use the Rust global allocator; nothing is tied to the creating thread, and
// `step` never leaves pointers to borrowed buffers behind in the stream.
unsafe impl Send for Inflater {}

/// Outcome of one `inflate` call.
struct Step {
    ret: c_int,
    consumed: usize,
    produced: usize,
    data_type: c_int,
    /// inflateMark: 0 exactly when stopped before a literal/length code
    /// with nothing of it decoded yet.
    mark: c_long,
}

impl Step {
    /// At a deflate block boundary that is not the end of the stream
    /// (zlib's `data_type`: 128 = waiting for a block header, 64 = last
    /// block already decoded).
    fn at_block_boundary(&self) -> bool {
        self.data_type & 0xc0 == 0x80
    }

    /// Waiting for a block header, or done with the last block.
    fn before_block_header(&self) -> bool {
        self.data_type & 0x80 != 0
    }

    /// Bits the inflater took from the input but has not decoded yet.
    fn pending_bits(&self) -> u64 {
        (self.data_type & 0x3f) as u64
    }
}

impl Inflater {
    fn new(window_bits: c_int) -> Result<Self, ZranError> {
        let mut strm = Box::new(z_stream::default());
        // SAFETY: `strm` is a default stream with the allocator set, the
        // version string comes from the library itself.
        let ret = unsafe {
            inflateInit2_(
                &mut *strm,
                window_bits,
                zlibVersion(),
                std::mem::size_of::<z_stream>() as c_int,
            )
        };
        if ret != Z_OK {
            return Err(ZranError::Inflate {
                msg: format!("inflateInit2 failed (code {ret})"),
            });
        }
        Ok(Inflater { strm })
    }

    fn check(&self, what: &str, ret: c_int) -> Result<(), ZranError> {
        if ret == Z_OK {
            Ok(())
        } else {
            Err(ZranError::Inflate {
                msg: format!("{what} failed (code {ret})"),
            })
        }
    }

    fn reset(&mut self) -> Result<(), ZranError> {
        // SAFETY: the stream was initialised in `new`.
        let ret = unsafe { inflateReset(&mut *self.strm) };
        self.check("inflateReset", ret)
    }

    fn prime(&mut self, bits: u8, value: u8) -> Result<(), ZranError> {
        // SAFETY: the stream was initialised in `new`.
        let ret = unsafe { inflatePrime(&mut *self.strm, c_int::from(bits), c_int::from(value)) };
        self.check("inflatePrime", ret)
    }

    fn set_dictionary(&mut self, dict: &[u8]) -> Result<(), ZranError> {
        // SAFETY: the stream was initialised in `new`; `dict` is valid for
        // its length, which the caller keeps within 32 KiB.
        let ret =
            unsafe { inflateSetDictionary(&mut *self.strm, dict.as_ptr(), dict.len() as u32) };
        self.check("inflateSetDictionary", ret)
    }

    /// The inflater's window: the output since the member started, up to
    /// the last 32 KiB.
    fn dictionary(&self) -> Vec<u8> {
        let mut dict = vec![0u8; WINDOW_SIZE];
        let mut len: u32 = 0;
        // SAFETY: the stream was initialised in `new`; with a 15-bit window
        // zlib copies at most 32 KiB, which `dict` has room for.
        unsafe { inflateGetDictionary(&*self.strm, dict.as_mut_ptr(), &mut len) };
        dict.truncate((len as usize).min(WINDOW_SIZE));
        dict
    }

    fn step(&mut self, input: &[u8], output: &mut [u8], flush: c_int) -> Step {
        let in_len = input.len().min(u32::MAX as usize) as u32;
        let out_len = output.len().min(u32::MAX as usize) as u32;
        let s = &mut *self.strm;
        s.next_in = input.as_ptr();
        s.avail_in = in_len;
        s.next_out = output.as_mut_ptr();
        s.avail_out = out_len;
        // SAFETY: the stream was initialised in `new`; next_in/next_out
        // point into live slices of at least avail_in/avail_out bytes.
        let ret = unsafe { inflate(s, flush) };
        // SAFETY: as above; inflateMark only reads the state, and needs
        // next_out still set.
        let mark = unsafe { inflateMark(s) };
        let step = Step {
            ret,
            consumed: (in_len - s.avail_in) as usize,
            produced: (out_len - s.avail_out) as usize,
            data_type: s.data_type,
            mark,
        };
        // The slices are only borrowed for this call.
        s.next_in = std::ptr::null();
        s.avail_in = 0;
        s.next_out = std::ptr::null_mut();
        s.avail_out = 0;
        step
    }

    /// A readable description of a failed `inflate` return code.
    fn error_text(&self, ret: c_int) -> String {
        let zmsg = if self.strm.msg.is_null() {
            None
        } else {
            // SAFETY: zlib sets `msg` to a static NUL-terminated string.
            Some(
                unsafe { CStr::from_ptr(self.strm.msg) }
                    .to_string_lossy()
                    .into_owned(),
            )
        };
        match (ret, zmsg.as_deref()) {
            (_, Some("incorrect data check")) => {
                "CRC32 mismatch in the gzip trailer (incorrect data check)".to_string()
            }
            (_, Some("incorrect length check")) => {
                "uncompressed size mismatch in the gzip trailer (incorrect length check)"
                    .to_string()
            }
            (_, Some("incorrect header check")) => {
                "not a gzip stream (incorrect header magic)".to_string()
            }
            (_, Some(m)) => format!("invalid deflate data ({m})"),
            (Z_DATA_ERROR, None) => "invalid deflate data".to_string(),
            (Z_NEED_DICT, None) => "stream needs a preset dictionary".to_string(),
            (Z_MEM_ERROR, None) => "zlib ran out of memory".to_string(),
            (code, None) => format!("inflate failed (code {code})"),
        }
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised in `new` and is ended once.
        unsafe { inflateEnd(&mut *self.strm) };
    }
}

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
pub struct ZranReader<R: Read> {
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
    blocks: Vec<Block>,
    hasher: Sha256,
    failure: Option<Failure>,
}

impl<R: Read> ZranReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_spacing(inner, CHECKPOINT_SPACING)
    }

    /// Like [`ZranReader::new`] with another checkpoint spacing: smaller
    /// means cheaper random reads but a bigger index (32 KiB per checkpoint).
    pub fn with_spacing(inner: R, spacing: u64) -> Self {
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
            blocks: Vec::new(),
            hasher: Sha256::new(),
            failure,
        }
    }

    /// The index, once `read` has returned 0 without an error.
    pub fn finish(self) -> Result<ZranIndex, ZranError> {
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
            if self.checkpoint_due() {
                self.add_checkpoint(step, CheckpointKind::BlockBoundary);
            }
        } else if step.before_block_header() {
            self.block = BlockState::Other;
        } else if let BlockState::Fixed { last } = self.block {
            if step.mark == 0 && self.checkpoint_due() {
                self.add_checkpoint(step, CheckpointKind::InFixedBlock { last });
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

/// Length of the gzip member header at the start of `b`: `Ok(None)` if `b`
/// ends inside it. The header CRC is not checked: the block hashes already
/// vouch for these bytes.
fn gzip_header_len(b: &[u8]) -> Result<Option<usize>, &'static str> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    if b.first().is_some_and(|&x| x != 0x1f) || b.get(1).is_some_and(|&x| x != 0x8b) {
        return Err("expected a gzip member header (bad magic)");
    }
    if b.get(2).is_some_and(|&x| x != 8) {
        return Err("gzip member uses an unknown compression method");
    }
    let Some(&flags) = b.get(3) else {
        return Ok(None);
    };
    if flags & 0xe0 != 0 {
        return Err("gzip member header has reserved flag bits set");
    }
    let mut p = 10usize;
    if flags & FEXTRA != 0 {
        let Some(xlen) = b.get(p..p + 2) else {
            return Ok(None);
        };
        p += 2 + usize::from(u16::from_le_bytes([xlen[0], xlen[1]]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let Some(rest) = b.get(p..) else {
                return Ok(None);
            };
            let Some(nul) = rest.iter().position(|&x| x == 0) else {
                return Ok(None);
            };
            p += nul + 1;
        }
    }
    if flags & FHCRC != 0 {
        p += 2;
    }
    Ok((p <= b.len()).then_some(p))
}

impl ZranIndex {
    /// What to fetch to produce the uncompressed range `out` (clamped to the
    /// stream): whole blocks from the nearest checkpoint at or before
    /// `out.start` up to the first block whose input is enough for `out.end`.
    pub fn plan(&self, out: Range<u64>) -> ReadPlan {
        let start = out.start.min(self.uncompressed_size);
        let end = out.end.clamp(start, self.uncompressed_size);
        let idx = self
            .checkpoints
            .partition_point(|c| c.out_off <= start)
            .saturating_sub(1);
        let Some(cp) = self.checkpoints.get(idx) else {
            return ReadPlan {
                checkpoint: 0,
                compressed: 0..self.compressed_size,
            };
        };
        let first_byte = cp.in_off.saturating_sub(u64::from(cp.bits > 0));
        let first_block = first_byte / BLOCK_SIZE;
        // out_avail never decreases, so a binary search finds the first
        // block that is enough.
        let end_block =
            (self.blocks.partition_point(|b| b.out_avail < end) as u64).max(first_block);
        let c_end = end_block
            .saturating_add(1)
            .saturating_mul(BLOCK_SIZE)
            .min(self.compressed_size);
        ReadPlan {
            checkpoint: idx,
            compressed: (first_block * BLOCK_SIZE).min(c_end)..c_end,
        }
    }

    /// Decompresses from `plan`'s checkpoint until uncompressed offset
    /// `out_end` (clamped to the stream's size), passing consecutive pieces
    /// to `sink(offset, bytes)`, starting at the checkpoint's `out_off` and
    /// never going past `out_end`. `compressed` must be exactly the bytes of
    /// `plan.compressed`; they are checked against the block hashes first and
    /// nothing reaches `sink` if any block is wrong.
    pub fn decode(
        &self,
        plan: &ReadPlan,
        compressed: &[u8],
        out_end: u64,
        sink: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<(), ZranError> {
        let cp = self.check_plan(plan, compressed)?;
        self.verify_blocks(plan.compressed.start, compressed)?;
        let out_end = out_end.min(self.uncompressed_size);
        if out_end <= cp.out_off {
            return Ok(());
        }

        let base = plan.compressed.start;
        let at_blob_end = plan.compressed.end == self.compressed_size;
        let corrupt = |pos: usize, msg: String| ZranError::Corrupt {
            offset: base + pos as u64,
            msg,
        };
        let short = |out_pos: u64| ZranError::InvalidPlan {
            msg: format!(
                "compressed range {:?} ends before uncompressed offset {out_end} \
                 (decoded up to {out_pos}); use plan() for the range",
                plan.compressed
            ),
        };

        let mut pos = (cp.in_off - base) as usize;
        let mut inflater = Inflater::new(RAW_WBITS)?;
        if let CheckpointKind::InFixedBlock { last } = cp.kind {
            // BFINAL then BTYPE=01, least significant bit first.
            inflater.prime(3, u8::from(last) | 0b10)?;
        }
        if cp.bits > 0 {
            inflater.prime(cp.bits, compressed[pos - 1] >> (8 - cp.bits))?;
        }
        if !cp.window.is_empty() {
            inflater.set_dictionary(&cp.window)?;
        }

        let mut out = vec![0u8; DECODE_BUF_SIZE];
        let mut out_pos = cp.out_off;
        while out_pos < out_end {
            let want = (out_end - out_pos).min(out.len() as u64) as usize;
            let step = inflater.step(&compressed[pos..], &mut out[..want], Z_NO_FLUSH);
            pos += step.consumed;
            if step.produced > 0 {
                sink(out_pos, &out[..step.produced]);
                out_pos += step.produced as u64;
            }
            match step.ret {
                Z_OK => {}
                Z_BUF_ERROR => {
                    if pos < compressed.len() {
                        return Err(corrupt(pos, "inflate made no progress".into()));
                    }
                    if at_blob_end {
                        return Err(corrupt(
                            pos,
                            "compressed data ends inside a deflate stream (truncated)".into(),
                        ));
                    }
                    return Err(short(out_pos));
                }
                Z_STREAM_END => {
                    // Raw inflate stops at the last block's end; undo any
                    // whole bytes it had already pulled into its bit buffer.
                    pos = pos.saturating_sub((step.pending_bits() / 8) as usize);
                    if out_pos >= out_end {
                        break;
                    }
                    // The range continues in the next member: skip this
                    // member's trailer and the next one's header.
                    if compressed.len() - pos < 8 {
                        if at_blob_end {
                            return Err(corrupt(pos, "truncated gzip trailer".into()));
                        }
                        return Err(short(out_pos));
                    }
                    pos += 8;
                    let rest = &compressed[pos..];
                    if rest.is_empty() && !at_blob_end {
                        return Err(short(out_pos));
                    }
                    if rest.first().is_none_or(|&b| b == 0) {
                        return Err(corrupt(
                            pos,
                            format!(
                                "gzip data ends at uncompressed offset {out_pos}, \
                                 but the index says {}",
                                self.uncompressed_size
                            ),
                        ));
                    }
                    match gzip_header_len(rest) {
                        Ok(Some(n)) => pos += n,
                        Ok(None) if at_blob_end => {
                            return Err(corrupt(pos, "truncated gzip member header".into()))
                        }
                        Ok(None) => return Err(short(out_pos)),
                        Err(msg) => return Err(corrupt(pos, msg.into())),
                    }
                    inflater.reset()?;
                }
                ret => return Err(corrupt(pos, inflater.error_text(ret))),
            }
        }
        Ok(())
    }

    /// Approximate memory (and serialized) size of the index in bytes.
    pub fn index_bytes_estimate(&self) -> u64 {
        let windows: u64 = self.checkpoints.iter().map(|c| c.window.len() as u64).sum();
        (std::mem::size_of::<Self>()
            + self.checkpoints.len() * std::mem::size_of::<Checkpoint>()
            + self.blocks.len() * std::mem::size_of::<Block>()) as u64
            + windows
    }

    /// Rejects plans that would make `decode` index out of bounds: the
    /// index may come from a cache file, so nothing here is trusted.
    fn check_plan(&self, plan: &ReadPlan, compressed: &[u8]) -> Result<&Checkpoint, ZranError> {
        let bad = |msg: String| Err(ZranError::InvalidPlan { msg });
        let r = &plan.compressed;
        let Some(cp) = self.checkpoints.get(plan.checkpoint) else {
            return bad(format!("no checkpoint {}", plan.checkpoint));
        };
        if r.start > r.end || r.end > self.compressed_size {
            return bad(format!(
                "compressed range {r:?} is outside the blob of {} bytes",
                self.compressed_size
            ));
        }
        if !r.start.is_multiple_of(BLOCK_SIZE)
            || (!r.end.is_multiple_of(BLOCK_SIZE) && r.end != self.compressed_size)
        {
            return bad(format!(
                "compressed range {r:?} is not made of whole blocks"
            ));
        }
        if compressed.len() as u64 != r.end - r.start {
            return bad(format!(
                "got {} compressed bytes for range {r:?}",
                compressed.len()
            ));
        }
        if cp.bits > 7 || cp.window.len() > WINDOW_SIZE {
            return bad(format!("checkpoint {} is malformed", plan.checkpoint));
        }
        let first_byte = cp.in_off.checked_sub(u64::from(cp.bits > 0));
        if first_byte.is_none_or(|f| f < r.start) || cp.in_off > r.end {
            return bad(format!(
                "compressed range {r:?} does not contain checkpoint {} at offset {}",
                plan.checkpoint, cp.in_off
            ));
        }
        Ok(cp)
    }

    fn verify_blocks(&self, start: u64, compressed: &[u8]) -> Result<(), ZranError> {
        let first = start / BLOCK_SIZE;
        for (i, chunk) in compressed.chunks(BLOCK_SIZE as usize).enumerate() {
            let k = first + i as u64;
            let Some(block) = self.blocks.get(k as usize) else {
                return Err(ZranError::InvalidPlan {
                    msg: format!("the index has no hash for block {k}"),
                });
            };
            if Sha256::digest(chunk).as_slice() != block.sha256 {
                return Err(ZranError::BlockMismatch { block: k });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{DeflateEncoder, GzEncoder};
    use flate2::{Compression, GzBuilder};
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};
    use std::io::Write;
    use std::sync::OnceLock;

    /// 12.5 MiB: four checkpoints at the default spacing, and still quick
    /// to compress in a debug build.
    const DATA_LEN: usize = (12 << 20) + (512 << 10);

    /// Random (incompressible) stretches mixed with text made of a few
    /// thousand made-up words (compressible about 2:1), so that deflate
    /// blocks of several kinds occur. A large vocabulary keeps zlib's match
    /// chains short, which keeps compression in debug builds fast enough.
    fn make_data(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(seed);
        let words: Vec<Vec<u8>> = (0..3000)
            .map(|_| {
                let n = rng.random_range(1..10);
                let mut w: Vec<u8> = (0..n).map(|_| rng.random_range(b'a'..=b'z')).collect();
                w.push(if rng.random_range(0..12) == 0 {
                    b'\n'
                } else {
                    b' '
                });
                w
            })
            .collect();
        let mut out = Vec::with_capacity(len + 300_000);
        while out.len() < len {
            let seg = rng.random_range(1_000..300_000);
            if rng.random_range(0..3) == 0 {
                let at = out.len();
                out.resize(at + seg, 0);
                rng.fill_bytes(&mut out[at..]);
            } else {
                // xorshift picks the words: StdRng per word is slow in debug.
                let mut x = rng.next_u64() | 1;
                let stop = out.len() + seg;
                while out.len() < stop {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    out.extend_from_slice(&words[(x % words.len() as u64) as usize]);
                }
            }
        }
        out.truncate(len);
        out
    }

    fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::new(level));
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn data() -> &'static [u8] {
        static DATA: OnceLock<Vec<u8>> = OnceLock::new();
        DATA.get_or_init(|| make_data(DATA_LEN, 1))
    }

    /// The data compressed at `level` and its index, built once per level
    /// (the tests share them and run in parallel).
    fn fixture(level: u32) -> &'static (Vec<u8>, ZranIndex) {
        static FIX: [OnceLock<(Vec<u8>, ZranIndex)>; 10] = [const { OnceLock::new() }; 10];
        FIX[level as usize].get_or_init(|| {
            let gz = gzip(data(), level);
            let (out, idx) = stream_odd(&gz, CHECKPOINT_SPACING).unwrap();
            assert!(out == data(), "level {level}: streamed output differs");
            (gz, idx)
        })
    }

    /// Hands out the data in awkward piece sizes, like a network would.
    struct OddReader<'a> {
        data: &'a [u8],
        pos: usize,
        n: usize,
    }

    impl Read for OddReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            const SIZES: [usize; 7] = [1, 7, 4093, 65_537, 13, 1_000, 32_768 * 3 + 5];
            self.n += 1;
            let len = SIZES[self.n % SIZES.len()]
                .min(buf.len())
                .min(self.data.len() - self.pos);
            buf[..len].copy_from_slice(&self.data[self.pos..self.pos + len]);
            self.pos += len;
            Ok(len)
        }
    }

    /// Streams `gz` through a `ZranReader` with odd input pieces and odd
    /// output buffer sizes.
    fn stream_odd(gz: &[u8], spacing: u64) -> Result<(Vec<u8>, ZranIndex), ZranError> {
        let src = OddReader {
            data: gz,
            pos: 0,
            n: 0,
        };
        let mut r = ZranReader::with_spacing(src, spacing);
        let mut out = Vec::new();
        let mut buf = vec![0u8; 200_000];
        let sizes = [100_000usize, 1, 4096, 333, 65_536, 131_072 + 17];
        for i in 0.. {
            let want = sizes[i % sizes.len()];
            let n = r.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok((out, r.finish()?))
    }

    fn decode_range(idx: &ZranIndex, gz: &[u8], out: Range<u64>) -> Result<Vec<u8>, ZranError> {
        let plan = idx.plan(out.clone());
        let bytes = &gz[plan.compressed.start as usize..plan.compressed.end as usize];
        let mut got = Vec::new();
        let mut next = idx.checkpoints[plan.checkpoint].out_off;
        idx.decode(&plan, bytes, out.end, &mut |off, piece| {
            assert_eq!(off, next, "sink pieces must be consecutive");
            next += piece.len() as u64;
            let lo = out.start.max(off);
            let hi = out.end.min(next);
            if lo < hi {
                got.extend_from_slice(&piece[(lo - off) as usize..(hi - off) as usize]);
            }
        })?;
        Ok(got)
    }

    fn check_index_shape(idx: &ZranIndex, gz: &[u8], data: &[u8], spacing: u64) {
        assert_eq!(idx.compressed_size, gz.len() as u64);
        assert_eq!(idx.uncompressed_size, data.len() as u64);
        assert_eq!(
            idx.blocks.len() as u64,
            (gz.len() as u64).div_ceil(BLOCK_SIZE)
        );
        for (k, b) in idx.blocks.iter().enumerate() {
            let lo = k * BLOCK_SIZE as usize;
            let hi = (lo + BLOCK_SIZE as usize).min(gz.len());
            assert_eq!(b.sha256, <[u8; 32]>::from(Sha256::digest(&gz[lo..hi])));
            if k > 0 {
                assert!(b.out_avail >= idx.blocks[k - 1].out_avail);
            }
        }
        assert_eq!(idx.blocks.last().unwrap().out_avail, data.len() as u64);
        let first = &idx.checkpoints[0];
        assert_eq!((first.out_off, first.bits), (0, 0));
        assert!(first.window.is_empty());
        for w in idx.checkpoints.windows(2) {
            let gap = w[1].out_off - w[0].out_off;
            assert!(gap >= spacing, "checkpoints too close: {gap}");
            assert!(
                gap < spacing + (1 << 20),
                "checkpoints too far apart: {gap}"
            );
            assert!(w[1].in_off > w[0].in_off);
        }
        for c in &idx.checkpoints {
            assert!(c.bits < 8);
            let o = c.out_off as usize;
            assert_eq!(&c.window[..], &data[o - c.window.len()..o]);
        }
    }

    #[test]
    fn streams_and_indexes_at_all_levels() {
        let data = data();
        for level in [0, 1, 6, 9] {
            let (gz, idx) = fixture(level);
            check_index_shape(idx, gz, data, CHECKPOINT_SPACING);
            assert_eq!(
                idx.checkpoints.len() as u64,
                data.len() as u64 / CHECKPOINT_SPACING + 1,
                "level {level}"
            );
            assert_eq!(idx.checkpoints[0].in_off, 10, "default gzip header");
            for c in &idx.checkpoints[1..] {
                assert_eq!(c.window.len(), WINDOW_SIZE);
            }
            let windows = (idx.checkpoints.len() - 1) * WINDOW_SIZE;
            assert!(idx.index_bytes_estimate() >= windows as u64);
        }
    }

    /// Where the compressed input is when the output reaches each point, at
    /// 4 KiB input granularity, from an independent decoder.
    fn progress(gz: &[u8]) -> Vec<(u64, u64)> {
        let mut d = flate2::Decompress::new(false);
        let mut out = vec![0u8; 1 << 20];
        let mut pts = vec![(10u64, 0u64)];
        let body = &gz[10..];
        let mut pos = 0;
        loop {
            let before = d.total_in();
            let end = (pos + 4096).min(body.len());
            let st = d
                .decompress(&body[pos..end], &mut out, flate2::FlushDecompress::None)
                .unwrap();
            pos += (d.total_in() - before) as usize;
            pts.push((10 + d.total_in(), d.total_out()));
            if st == flate2::Status::StreamEnd {
                return pts;
            }
        }
    }

    /// Decodes random ranges (plus ranges at both ends and across every
    /// checkpoint) through `plan` + `decode`, checks the bytes, and checks
    /// that a plan fetches little more than one checkpoint span plus the
    /// range itself (plus rounding to blocks).
    fn check_random_ranges(
        gz: &[u8],
        prog: &[(u64, u64)],
        idx: &ZranIndex,
        count: usize,
        seed: u64,
    ) {
        let data = data();
        let len = data.len() as u64;
        let in_at = |out: u64| prog.iter().rev().find(|p| p.1 <= out).unwrap().0;
        let in_needed = |out: u64| prog.iter().find(|p| p.1 >= out).unwrap().0;

        let mut ranges = vec![0..1, len - 1..len, len - 70_000..len, 5..5];
        for c in &idx.checkpoints[1..] {
            ranges.push(c.out_off - 1..(c.out_off + 1).min(len));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        while ranges.len() < count {
            let start = rng.random_range(0..len);
            let max = match rng.random_range(0..4) {
                0 => 1,
                1 => 4096,
                2 => 256 << 10,
                _ => 2 << 20,
            };
            let end = (start + rng.random_range(1..=max)).min(len);
            ranges.push(start..end);
        }
        for r in ranges {
            let got = decode_range(idx, gz, r.clone()).unwrap();
            assert!(
                got == data[r.start as usize..r.end as usize],
                "wrong bytes for {r:?}"
            );

            let plan = idx.plan(r.clone());
            let cp = plan.checkpoint;
            let span_end = idx
                .checkpoints
                .get(cp + 1)
                .map_or(idx.compressed_size, |c| c.in_off);
            let span = span_end - idx.checkpoints[cp].in_off;
            let range_c = in_needed(r.end).saturating_sub(in_at(r.start));
            let fetched = plan.compressed.end - plan.compressed.start;
            assert!(
                fetched <= span + range_c + 2 * BLOCK_SIZE + 8192,
                "{r:?} fetches {fetched} (span {span}, range {range_c})"
            );
        }
    }

    /// Ranges on the real index, and (cheaper per range, so more of them)
    /// on an index of the same blob with checkpoints every 512 KiB.
    fn random_ranges_at_level(level: u32) {
        let (gz, idx) = fixture(level);
        let prog = progress(gz);
        check_random_ranges(gz, &prog, idx, 12, u64::from(level));
        let (out, fine) = stream_odd(gz, 512 << 10).unwrap();
        assert!(out == data());
        assert!(fine.checkpoints.len() > 3 * idx.checkpoints.len());
        check_random_ranges(gz, &prog, &fine, 38, 100 + u64::from(level));
    }

    #[test]
    fn random_ranges_decode_exactly_level0() {
        random_ranges_at_level(0);
    }

    #[test]
    fn random_ranges_decode_exactly_level1() {
        random_ranges_at_level(1);
    }

    #[test]
    fn random_ranges_decode_exactly_level6() {
        random_ranges_at_level(6);
    }

    #[test]
    fn random_ranges_decode_exactly_level9() {
        random_ranges_at_level(9);
    }

    #[test]
    fn plan_is_whole_blocks_and_clamped() {
        let (gz, idx) = fixture(6);
        let len = idx.uncompressed_size;
        let whole = idx.plan(0..u64::MAX);
        assert_eq!(whole.checkpoint, 0);
        assert_eq!(whole.compressed, 0..gz.len() as u64);
        let past = idx.plan(len + 10..len + 20);
        assert_eq!(past.checkpoint, idx.checkpoints.len() - 1);
        assert_eq!(past.compressed.end, gz.len() as u64);
        assert_eq!(decode_range(idx, gz, len + 10..len + 20).unwrap(), b"");
        for c in &idx.checkpoints {
            let p = idx.plan(c.out_off..c.out_off + 1);
            assert_eq!(idx.checkpoints[p.checkpoint].out_off, c.out_off);
            assert_eq!(p.compressed.start % BLOCK_SIZE, 0);
            assert!(p.compressed.start <= c.in_off - u64::from(c.bits > 0));
            assert!(p.compressed.end % BLOCK_SIZE == 0 || p.compressed.end == gz.len() as u64);
            let p2 = idx.plan(c.out_off.saturating_sub(1)..c.out_off + 1);
            if c.out_off > 0 {
                assert_eq!(p2.checkpoint + 1, p.checkpoint);
            }
        }
        // The first byte fits in the first block.
        assert_eq!(idx.plan(0..1).compressed, 0..BLOCK_SIZE);
    }

    /// A member with every optional header field, built by hand because
    /// flate2 cannot write FHCRC.
    fn gzip_all_fields(data: &[u8]) -> Vec<u8> {
        let mut h = vec![0x1f, 0x8b, 8, 2 | 4 | 8 | 16, 1, 2, 3, 4, 0, 3];
        h.extend_from_slice(&5u16.to_le_bytes());
        h.extend_from_slice(b"xtra!");
        h.extend_from_slice(b"name.tar\0");
        h.extend_from_slice(b"a comment\0");
        let mut crc = flate2::Crc::new();
        crc.update(&h);
        h.extend_from_slice(&(crc.sum() as u16).to_le_bytes());
        let mut enc = DeflateEncoder::new(h, Compression::new(5));
        enc.write_all(data).unwrap();
        let mut out = enc.finish().unwrap();
        let mut crc = flate2::Crc::new();
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    #[test]
    fn multi_member_streams_and_decodes_across_members() {
        let parts = [
            make_data(2 << 20, 11),
            make_data(150_000, 12),
            make_data(1 << 20, 13),
        ];
        let mut gz = gzip(&parts[0], 1);
        let mut named = GzBuilder::new()
            .filename("second")
            .comment("member two")
            .extra(vec![1, 2, 3])
            .write(Vec::new(), Compression::new(1));
        named.write_all(&parts[1]).unwrap();
        gz.extend(named.finish().unwrap());
        gz.extend(gzip_all_fields(&parts[2]));
        gz.extend(std::iter::repeat_n(0u8, 3000));
        let data = parts.concat();
        let b1 = parts[0].len() as u64;
        let b2 = b1 + parts[1].len() as u64;

        let spacing = 600_000;
        let (out, idx) = stream_odd(&gz, spacing).unwrap();
        assert!(out == data);
        check_index_shape(&idx, &gz, &data, spacing);
        assert!(
            idx.checkpoints.iter().any(|c| c.out_off > b2),
            "later members must get checkpoints too"
        );

        let len = data.len() as u64;
        let mut ranges = vec![
            b1 - 1..b1 + 1,
            b1 - 100..b2 + 100,
            b2 - 1..b2 + 1,
            b2..b2 + 1,
            0..len,
            len - 1..len,
        ];
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..25 {
            let start = rng.random_range(0..len);
            let end = (start + rng.random_range(1..=(1 << 20))).min(len);
            ranges.push(start..end);
        }
        for r in ranges {
            let got = decode_range(&idx, &gz, r.clone()).unwrap();
            assert!(
                got == data[r.start as usize..r.end as usize],
                "wrong bytes for {r:?}"
            );
        }
    }

    /// Packs bits least significant first, as deflate does.
    #[derive(Default)]
    struct BitWriter {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }

    impl BitWriter {
        fn put(&mut self, bits: u32, count: u32) {
            self.acc |= u64::from(bits) << self.n;
            self.n += count;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }

        /// Huffman codes are sent most significant bit first.
        fn code(&mut self, code: u32, len: u32) {
            self.put(code.reverse_bits() >> (32 - len), len);
        }

        fn finish(mut self) -> Vec<u8> {
            if self.n > 0 {
                self.out.push(self.acc as u8);
            }
            self.out
        }
    }

    /// One fixed-Huffman block of literals only, as a gzip member. Written
    /// by hand so the test does not depend on what a compressor chooses.
    fn gzip_one_fixed_block(data: &[u8]) -> Vec<u8> {
        let mut w = BitWriter {
            out: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255],
            ..Default::default()
        };
        w.put(0b011, 3); // BFINAL=1, BTYPE=01
        for &b in data {
            match b {
                0..=143 => w.code(0x30 + u32::from(b), 8),
                _ => w.code(0x190 + u32::from(b) - 144, 9),
            }
        }
        w.code(0, 7); // end of block
        let mut out = w.finish();
        let mut crc = flate2::Crc::new();
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    #[test]
    fn checkpoints_inside_one_huge_fixed_block() {
        let first = make_data(2 << 20, 21);
        let second = make_data(512 << 10, 22);
        let mut gz = gzip_one_fixed_block(&first);
        gz.extend(gzip(&second, 6));
        let data = [&first[..], &second[..]].concat();
        let spacing = 700_000;
        let (out, idx) = stream_odd(&gz, spacing).unwrap();
        assert!(out == data);
        check_index_shape(&idx, &gz, &data, spacing);
        let inside = idx
            .checkpoints
            .iter()
            .filter(|c| c.kind == CheckpointKind::InFixedBlock { last: true })
            .count();
        let kinds: Vec<_> = idx
            .checkpoints
            .iter()
            .map(|c| (c.out_off, c.kind))
            .collect();
        assert_eq!(inside, first.len() / spacing as usize, "{kinds:?}");

        let b = first.len() as u64;
        let len = data.len() as u64;
        let mut ranges = vec![b - 1..b + 1, b - 5000..len, 0..len];
        for c in &idx.checkpoints[1..] {
            ranges.push(c.out_off..c.out_off + 1);
            ranges.push(c.out_off - 1..(c.out_off + 100_000).min(len));
        }
        let mut rng = StdRng::seed_from_u64(23);
        for _ in 0..20 {
            let start = rng.random_range(0..len);
            ranges.push(start..(start + rng.random_range(1..900_000)).min(len));
        }
        for r in ranges {
            let got = decode_range(&idx, &gz, r.clone()).unwrap();
            assert!(got == data[r.start as usize..r.end as usize], "{r:?}");
        }
    }

    #[test]
    fn bad_trailing_data_is_rejected() {
        let mut gz = gzip(&make_data(100_000, 5), 6);
        gz.extend_from_slice(&[0, 0, 0, 7]);
        let err = stream_odd(&gz, CHECKPOINT_SPACING).unwrap_err();
        assert!(err.to_string().contains("non-zero data"), "{err}");

        let mut gz = gzip(b"hello", 6);
        gz.extend_from_slice(b"garbage");
        let err = stream_odd(&gz, CHECKPOINT_SPACING).unwrap_err();
        assert!(
            err.to_string().contains("after the end of a gzip member"),
            "{err}"
        );
    }

    #[test]
    fn corrupted_block_is_refused_before_decoding() {
        let (gz, idx) = fixture(6);
        let len = idx.uncompressed_size;
        let r = len / 2..len / 2 + 5000;
        let plan = idx.plan(r.clone());
        let mut bytes = gz[plan.compressed.start as usize..plan.compressed.end as usize].to_vec();
        let flip = bytes.len() - 3;
        bytes[flip] ^= 0x40;
        let mut calls = 0;
        let err = idx
            .decode(&plan, &bytes, r.end, &mut |_, _| calls += 1)
            .unwrap_err();
        let want = (plan.compressed.start + flip as u64) / BLOCK_SIZE;
        assert!(
            matches!(err, ZranError::BlockMismatch { block } if block == want),
            "{err}"
        );
        assert_eq!(calls, 0, "nothing may reach the sink");
    }

    #[test]
    fn bad_plans_are_rejected() {
        let (gz, idx) = fixture(1);
        let plan = idx.plan(1000..2000);
        let bytes = &gz[plan.compressed.start as usize..plan.compressed.end as usize];
        let mut sink = |_: u64, _: &[u8]| {};
        let short = &bytes[..bytes.len() - 1];
        assert!(matches!(
            idx.decode(&plan, short, 2000, &mut sink),
            Err(ZranError::InvalidPlan { .. })
        ));
        let wrong_cp = ReadPlan {
            checkpoint: idx.checkpoints.len() - 1,
            ..plan.clone()
        };
        assert!(matches!(
            idx.decode(&wrong_cp, bytes, 2000, &mut sink),
            Err(ZranError::InvalidPlan { .. })
        ));
        // Valid blocks, but too few of them for the requested end.
        let far = idx.uncompressed_size / 2;
        let err = idx.decode(&plan, bytes, far, &mut sink).unwrap_err();
        assert!(matches!(err, ZranError::InvalidPlan { .. }), "{err}");
    }

    #[test]
    fn corrupt_deflate_data_with_matching_hashes_is_an_error() {
        let (gz, idx) = fixture(6);
        let cp_idx = 1;
        let cp = &idx.checkpoints[cp_idx];
        let mut bad = gz.clone();
        // All-ones bits make the first block header name the reserved type.
        let first = (cp.in_off - u64::from(cp.bits > 0)) as usize;
        bad[first..first + 64].fill(0xff);
        let mut bad_idx = idx.clone();
        for (k, b) in bad_idx.blocks.iter_mut().enumerate() {
            let lo = k * BLOCK_SIZE as usize;
            let hi = (lo + BLOCK_SIZE as usize).min(bad.len());
            b.sha256 = Sha256::digest(&bad[lo..hi]).into();
        }
        let r = cp.out_off..cp.out_off + 10;
        let err = decode_range(&bad_idx, &bad, r).unwrap_err();
        assert!(matches!(err, ZranError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("invalid"), "{err}");
    }

    #[test]
    fn corrupt_or_truncated_streams_fail() {
        let data = make_data(600_000, 9);
        let gz = gzip(&data, 6);
        let n = gz.len();
        let check = |bytes: &[u8], kind: io::ErrorKind, what: &str| {
            let mut r = ZranReader::new(OddReader {
                data: bytes,
                pos: 0,
                n: 0,
            });
            let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
            assert_eq!(err.kind(), kind, "{what}: {err}");
            assert!(
                err.to_string()
                    .contains("corrupt gzip stream at compressed offset"),
                "{what}: {err}"
            );
            // The failure sticks, and finish reports it too.
            assert!(r.read(&mut [0u8; 10]).is_err(), "{what}");
            assert!(r.finish().is_err(), "{what}");
            err.to_string()
        };

        let mut crc = gz.clone();
        crc[n - 6] ^= 1;
        assert!(check(&crc, io::ErrorKind::InvalidData, "crc").contains("CRC32"));
        let mut size = gz.clone();
        size[n - 2] ^= 1;
        assert!(check(&size, io::ErrorKind::InvalidData, "isize").contains("size"));
        let mut header = gz.clone();
        header[1] = 0x8c;
        assert!(check(&header, io::ErrorKind::InvalidData, "magic").contains("not a gzip"));
        let mut body = gz.clone();
        for i in (n / 3..n / 3 + 200).step_by(7) {
            body[i] = !body[i];
        }
        check(&body, io::ErrorKind::InvalidData, "body");
        for cut in [0, 5, 12, n / 2, n - 5, n - 1] {
            let msg = check(&gz[..cut], io::ErrorKind::UnexpectedEof, "truncated");
            assert!(msg.contains("truncated") || msg.contains("empty"), "{msg}");
        }
    }

    /// Fails every third read with a transient error, like a flaky network.
    struct FlakyReader<'a> {
        data: &'a [u8],
        calls: usize,
    }

    impl Read for FlakyReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(3) {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "flaky"));
            }
            let n = buf.len().min(10_000);
            self.data.read(&mut buf[..n])
        }
    }

    #[test]
    fn inner_errors_pass_through_and_reading_resumes() {
        let data = make_data(400_000, 6);
        let gz = gzip(&data, 6);
        let mut r = ZranReader::with_spacing(
            FlakyReader {
                data: &gz,
                calls: 0,
            },
            100_000,
        );
        let (mut out, mut errors) = (Vec::new(), 0);
        let mut buf = vec![0u8; 50_000];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
                    errors += 1;
                }
            }
        }
        assert!(errors > 0);
        assert!(out == data);
        let idx = r.finish().unwrap();
        check_index_shape(&idx, &gz, &data, 100_000);
        let len = data.len() as u64;
        assert_eq!(decode_range(&idx, &gz, 0..len).unwrap(), data);
    }

    #[test]
    fn reader_and_index_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<ZranReader<std::fs::File>>();
        assert_send::<ZranIndex>();
    }

    #[test]
    fn finish_before_the_end_fails() {
        let gz = gzip(&make_data(300_000, 4), 6);
        let mut r = ZranReader::new(&gz[..]);
        let mut buf = vec![0u8; 1000];
        r.read_exact(&mut buf).unwrap();
        let err = r.finish().unwrap_err();
        assert!(matches!(err, ZranError::Incomplete { .. }), "{err}");
    }

    #[test]
    fn small_stream_and_empty_member() {
        for data in [&b""[..], b"x", b"hello hello hello hello"] {
            let gz = gzip(data, 6);
            let (out, idx) = stream_odd(&gz, CHECKPOINT_SPACING).unwrap();
            assert_eq!(out, data);
            assert_eq!(idx.checkpoints.len(), 1);
            assert_eq!(idx.blocks.len(), 1);
            let len = data.len() as u64;
            assert_eq!(decode_range(&idx, &gz, 0..len).unwrap(), data);
        }
    }

    #[test]
    fn index_survives_bincode_round_trip() {
        // Level 1 from zlib-rs also yields mid-fixed-block checkpoints.
        let (gz, idx) = fixture(1);
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(idx, cfg).unwrap();
        let (back, used): (ZranIndex, usize) =
            bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(used, bytes.len());
        assert!(bytes.len() as u64 <= idx.index_bytes_estimate());
        assert_eq!(back.compressed_size, idx.compressed_size);
        assert_eq!(back.uncompressed_size, idx.uncompressed_size);
        assert_eq!(back.checkpoints.len(), idx.checkpoints.len());
        for (a, b) in back.checkpoints.iter().zip(&idx.checkpoints) {
            assert_eq!(
                (a.in_off, a.out_off, a.bits, a.kind),
                (b.in_off, b.out_off, b.bits, b.kind)
            );
            assert_eq!(a.window, b.window);
        }
        for (a, b) in back.blocks.iter().zip(&idx.blocks) {
            assert_eq!((a.out_avail, a.sha256), (b.out_avail, b.sha256));
        }
        let data = data();
        let last = back.checkpoints.last().unwrap().out_off;
        for r in [0..10, last - 5..last + 5000] {
            assert_eq!(
                decode_range(&back, gz, r.clone()).unwrap(),
                &data[r.start as usize..r.end as usize]
            );
        }
    }
}
