//! Random access through a [`ZranIndex`]: which compressed blocks a range
//! needs ([`ZranIndex::plan`]) and inflating them from a checkpoint
//! ([`ZranIndex::decode`]).

use super::ffi::{Inflater, RAW_WBITS, Z_BUF_ERROR, Z_NO_FLUSH, Z_OK, Z_STREAM_END};
use super::{Checkpoint, CheckpointKind, ReadPlan, ZranError, ZranIndex, BLOCK_SIZE, WINDOW_SIZE};
use sha2::{Digest, Sha256};
use std::ops::Range;

const DECODE_BUF_SIZE: usize = 128 << 10;

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
    pub(crate) fn plan(&self, out: Range<u64>) -> ReadPlan {
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

    /// Approximate memory (and serialized) size of the index in bytes.
    #[cfg(test)]
    pub(crate) fn index_bytes_estimate(&self) -> u64 {
        let windows: u64 = self.checkpoints.iter().map(|c| c.window.len() as u64).sum();
        (std::mem::size_of::<Self>()
            + self.checkpoints.len() * std::mem::size_of::<Checkpoint>()
            + self.blocks.len() * std::mem::size_of::<super::Block>()
            + self.marks.len() * std::mem::size_of::<super::Mark>()) as u64
            + windows
    }

    /// Decompresses from `plan`'s checkpoint until uncompressed offset
    /// `out_end` (clamped to the stream's size), passing consecutive pieces
    /// to `sink(offset, bytes)`, starting at the checkpoint's `out_off` and
    /// never going past `out_end`. `compressed` must be exactly the bytes of
    /// `plan.compressed`; they are checked against the block hashes first and
    /// nothing reaches `sink` if any block is wrong.
    pub(crate) fn decode(
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
