//! Uncompressed tar layers: the blob is its own stream, so a range of it is
//! a range of chunks, each checked against the sha256 recorded by the
//! digest-verified indexing pass.

use super::format::{
    cut_runs, split_tar_stream, ChunkMap, ChunkSink, Codec, Fetch, StreamChunks, StreamIndexer,
};
use super::index::{IndexDetail, CHUNK_SIZE};
use super::Entry;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::ops::Range;

/// Chunks of a tar layer worth fetching by one request (4 MiB).
const FETCH_GROUP_CHUNKS: u64 = 16;

/// The index detail of a tar layer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TarChunks {
    /// Size of the blob (and of the stream).
    pub(crate) size: u64,
    /// sha256 of every chunk of the blob, taken during the digest-verified
    /// pass, so each range fetch can be checked on its own.
    pub(crate) chunk_sha256: Vec<[u8; 32]>,
}

impl StreamChunks for TarChunks {
    fn stream_size(&self) -> u64 {
        self.size
    }
}

impl Codec for TarChunks {
    fn plan(&self, want: Range<u64>) -> Fetch {
        Fetch {
            blob: (want.start * CHUNK_SIZE).min(self.size)..(want.end * CHUNK_SIZE).min(self.size),
            chunks: want,
            start_point: 0,
        }
    }

    fn decode(&self, fetch: &Fetch, blob: &Bytes) -> Result<Vec<(u64, Bytes)>, String> {
        let mut out = Vec::new();
        for (i, id) in fetch.chunks.clone().enumerate() {
            let lo = (i * CHUNK_SIZE as usize).min(blob.len());
            let piece = blob.slice(lo..(lo + CHUNK_SIZE as usize).min(blob.len()));
            let want = self.chunk_sha256.get(id as usize);
            if want != Some(&Sha256::digest(&piece).into()) {
                return Err(format!(
                    "chunk {id} from the registry failed its sha256 check"
                ));
            }
            out.push((id, piece));
        }
        Ok(out)
    }

    fn fetch_group(&self, id: u64) -> u64 {
        id / FETCH_GROUP_CHUNKS
    }

    fn fill_runs(&self) -> Vec<Range<u64>> {
        cut_runs(self.chunk_count(), FETCH_GROUP_CHUNKS, std::iter::empty())
    }

    fn check_consistent(&self, compressed: u64, total: u64) -> Result<(), String> {
        // An uncompressed layer is its own tar stream.
        if total != compressed || self.size != total {
            return Err(format!("{total} bytes of tar in a {compressed}-byte layer"));
        }
        if self.chunk_sha256.len() as u64 != total.div_ceil(CHUNK_SIZE) {
            return Err(format!(
                "{} chunk hashes for {total} bytes",
                self.chunk_sha256.len()
            ));
        }
        Ok(())
    }
}

/// The indexing pass of a tar layer: read the headers, cut and hash chunks.
pub(crate) struct TarStream;

impl StreamIndexer for TarStream {
    fn index_stream(
        &self,
        input: &mut dyn Read,
        chunks: &mut dyn ChunkSink,
        found: &mut dyn FnMut(Entry),
    ) -> Result<(IndexDetail, u64), String> {
        let (_, size, chunk_sha256) = split_tar_stream(input, chunks, found, true)?;
        Ok((IndexDetail::Tar(TarChunks { size, chunk_sha256 }), size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tampered_chunk_is_refused() {
        let blob = Bytes::from(vec![1u8; CHUNK_SIZE as usize + 3]);
        let t = TarChunks {
            size: blob.len() as u64,
            chunk_sha256: vec![
                Sha256::digest(&blob[..CHUNK_SIZE as usize]).into(),
                Sha256::digest(&blob[CHUNK_SIZE as usize..]).into(),
            ],
        };
        assert_eq!(t.fill_runs(), vec![0..2]);
        let f = t.plan(0..2);
        assert_eq!(f.blob, 0..blob.len() as u64);
        let got = t.decode(&f, &blob).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].1.len(), 3);
        let mut bad = blob.to_vec();
        bad[5] ^= 1;
        let e = t.decode(&f, &Bytes::from(bad)).unwrap_err();
        assert!(e.contains("chunk 0"), "{e}");
    }
}
