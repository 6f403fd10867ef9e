//! gzip layers: one deflate stream over the tar, read at random through the
//! zran checkpoints recorded by the indexing pass ([`super::zran`]).

use super::format::{
    cut_runs, split_tar_stream, ChunkMap, ChunkSink, Codec, Fetch, StreamChunks, StreamIndexer,
};
use super::index::{IndexDetail, CHUNK_SIZE};
use super::zran::{Checkpoint, Mark, ReadPlan, ZranIndex, ZranReader, BLOCK_SIZE};
use super::Entry;
use bytes::{Bytes, BytesMut};
use std::io::Read;
use std::ops::Range;

/// Deflate's window: no checkpoint needs more history than this.
const MAX_WINDOW: usize = 32 << 10;

impl StreamChunks for ZranIndex {
    fn stream_size(&self) -> u64 {
        self.uncompressed_size
    }
}

impl Codec for ZranIndex {
    /// Decoding starts at the checkpoint before `want` and stops at its
    /// end: the read path asks for more chunks when it wants them (the rest
    /// of a file being read), so a read of a small file costs the bytes
    /// from the checkpoint to that file and no more.
    fn plan(&self, want: Range<u64>) -> Fetch {
        let out_end = (want.end * CHUNK_SIZE).min(self.uncompressed_size);
        let plan = ZranIndex::plan(self, want.start * CHUNK_SIZE..out_end);
        Fetch {
            blob: plan.compressed,
            chunks: want,
            start_point: plan.checkpoint,
        }
    }

    fn decode(&self, fetch: &Fetch, blob: &Bytes) -> Result<Vec<(u64, Bytes)>, String> {
        let size = self.uncompressed_size;
        let out_end = (fetch.chunks.end * CHUNK_SIZE).min(size);
        let plan = ReadPlan {
            checkpoint: fetch.start_point,
            compressed: fetch.blob.clone(),
        };
        let start = self
            .checkpoints
            .get(plan.checkpoint)
            .map_or(0, |c| c.out_off);
        let mut out = Vec::new();
        let mut cur = BytesMut::new();
        ZranIndex::decode(self, &plan, blob, out_end, &mut |mut at, mut data| {
            while !data.is_empty() && at < out_end {
                let chunk_start = at / CHUNK_SIZE * CHUNK_SIZE;
                // A checkpoint inside a chunk leaves that chunk partial: skip it.
                let skip = if chunk_start < start {
                    chunk_start + CHUNK_SIZE - at
                } else {
                    0
                };
                let take = if skip > 0 {
                    skip.min(data.len() as u64) as usize
                } else {
                    let room = (CHUNK_SIZE - cur.len() as u64).min(out_end - at);
                    let take = room.min(data.len() as u64) as usize;
                    cur.extend_from_slice(&data[..take]);
                    take
                };
                data = &data[take..];
                at += take as u64;
                if skip == 0 && (cur.len() as u64 == CHUNK_SIZE || at == size) {
                    out.push((chunk_start / CHUNK_SIZE, cur.split().freeze()));
                }
            }
        })
        .map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn cpu_heavy(&self) -> bool {
        true
    }

    /// The chunks decoded from one checkpoint: each request starts decoding
    /// at the checkpoint before its first chunk.
    fn fetch_group(&self, id: u64) -> u64 {
        let at = id * CHUNK_SIZE;
        self.checkpoints
            .partition_point(|c| c.out_off <= at)
            .saturating_sub(1) as u64
    }

    /// A run starts at the first chunk after a checkpoint, so each request
    /// decodes one span from its own checkpoint instead of re-fetching the
    /// previous one.
    fn fill_runs(&self) -> Vec<Range<u64>> {
        let starts = self
            .checkpoints
            .iter()
            .map(|c| c.out_off.div_ceil(CHUNK_SIZE));
        cut_runs(self.chunk_count(), 0, starts)
    }

    fn check_consistent(&self, compressed: u64, total: u64) -> Result<(), String> {
        if self.compressed_size != compressed || self.uncompressed_size != total {
            return Err("its zran sizes disagree with the index".into());
        }
        if self.blocks.len() as u64 != compressed.div_ceil(BLOCK_SIZE) {
            return Err(format!(
                "{} block hashes for {} blocks",
                self.blocks.len(),
                compressed.div_ceil(BLOCK_SIZE)
            ));
        }
        let mut avail = 0;
        for b in &self.blocks {
            if b.out_avail < avail || b.out_avail > total {
                return Err("block output offsets are out of order".into());
            }
            avail = b.out_avail;
        }
        match self.checkpoints.first() {
            Some(c) if c.out_off == 0 => {}
            _ => return Err("no checkpoint at the start of the stream".into()),
        }
        let mut prev: Option<&Checkpoint> = None;
        for c in &self.checkpoints {
            let ordered = prev.is_none_or(|p| c.out_off > p.out_off && c.in_off >= p.in_off);
            if !ordered
                || c.in_off > compressed
                || c.out_off > total
                || c.bits > 7
                || c.window.len() > MAX_WINDOW
                || c.window.len() as u64 > c.out_off
            {
                return Err(format!(
                    "malformed checkpoint at output offset {}",
                    c.out_off
                ));
            }
            prev = Some(c);
        }
        let mut prev: Option<&Mark> = None;
        for m in &self.marks {
            let ordered = prev.is_none_or(|p| m.out_off > p.out_off && m.in_off >= p.in_off);
            if !ordered
                || m.in_off > compressed
                || m.out_off > total
                || m.bits > 7
                || m.window_len as usize > MAX_WINDOW
                || u64::from(m.window_len) > m.out_off
            {
                return Err(format!("malformed mark at output offset {}", m.out_off));
            }
            prev = Some(m);
        }
        Ok(())
    }
}

/// The indexing pass of a gzip layer: inflate, record checkpoints and block
/// hashes, read the tar headers, cut chunks.
pub(crate) struct GzipStream;

impl StreamIndexer for GzipStream {
    fn index_stream(
        &self,
        input: &mut dyn Read,
        chunks: &mut dyn ChunkSink,
        found: &mut dyn FnMut(Entry),
    ) -> Result<(IndexDetail, u64), String> {
        let mut z = ZranReader::new(input);
        let (_, size, _) = split_tar_stream(&mut z, chunks, found, false)?;
        let zi = z.finish().map_err(|e| e.to_string())?;
        Ok((IndexDetail::Gzip(zi), size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(out_off: u64) -> Checkpoint {
        Checkpoint {
            in_off: 0,
            out_off,
            bits: 0,
            window: Vec::new(),
            kind: Default::default(),
        }
    }

    #[test]
    fn fill_runs_start_after_each_checkpoint() {
        let z = ZranIndex {
            compressed_size: 0,
            uncompressed_size: 30 * CHUNK_SIZE,
            checkpoints: vec![cp(0), cp(10 * CHUNK_SIZE + 7), cp(20 * CHUNK_SIZE)],
            blocks: Vec::new(),
            marks: Vec::new(),
        };
        assert_eq!(z.fill_runs(), vec![0..11, 11..20, 20..30]);
        assert_eq!(z.fetch_group(10), 0);
        assert_eq!(z.fetch_group(11), 1);
    }
}
