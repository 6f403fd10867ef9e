//! The one interface between the image's read path and every layer format.
//!
//! A layer's decoded data is an address space of numbered chunks (the unit
//! the cache stores and verifies). A format says where a file's bytes lie in
//! that space ([`ChunkMap`]), which blob bytes to fetch to produce a run of
//! chunks and how to decode and verify them ([`Codec`]), and how an index is
//! made in the first place ([`StreamIndexer`] for formats read in one pass
//! over the blob, [`TailIndexer`] for formats that locate a table of
//! contents from the end of the blob). The read path never asks which format
//! it has: adding one is a new file in this directory, a variant of
//! [`IndexDetail`](super::index::IndexDetail) and a line in [`indexing_for`].

use super::index::{IndexDetail, CHUNK_SIZE};
use super::{Entry, FormatError, LayerFormat};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::ops::Range;

/// Where bytes `[offset, end)` of one file lie in its layer's chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    /// The chunks that hold them, in order.
    pub(crate) ids: Range<u64>,
    /// The bytes, in the coordinates of [`ChunkMap::chunk_range`].
    pub(crate) bytes: Range<u64>,
    /// One past the file's last chunk: read-ahead stops there.
    pub(crate) file_end: u64,
}

/// How a layer's chunks map onto its files.
pub(crate) trait ChunkMap: Send + Sync {
    /// Number of chunks in the layer.
    fn chunk_count(&self) -> u64;
    /// The bytes chunk `id` holds, in the coordinates [`Span::bytes`] uses
    /// (the uncompressed tar stream for stream formats, the file for formats
    /// that chunk each file on its own). Its length is the chunk's exact
    /// decoded size, which lets a cached chunk be checked for truncation.
    fn chunk_range(&self, id: u64) -> Range<u64>;
    /// Where bytes `[offset, end)` (with `offset < end <= entry.size`) of
    /// the regular file `entry` are.
    fn file_span(&self, entry: &Entry, offset: u64, end: u64) -> Span;
}

/// A format whose chunks are cut from its uncompressed tar stream: chunk
/// `id` is bytes `[id * CHUNK_SIZE, (id + 1) * CHUNK_SIZE)` of the stream
/// and an entry's `data` is the stream offset of its first byte. Its
/// [`ChunkMap`] follows from the stream's size.
pub(crate) trait StreamChunks: Send + Sync {
    /// Size of the uncompressed stream.
    fn stream_size(&self) -> u64;
}

/// The chunk map of a stream of some size (the in-progress stream of an
/// indexing pass, whose size is not known yet, uses `u64::MAX`).
pub(crate) struct StreamMap {
    /// Size of the uncompressed stream.
    pub(crate) size: u64,
}

impl StreamChunks for StreamMap {
    fn stream_size(&self) -> u64 {
        self.size
    }
}

impl<T: StreamChunks> ChunkMap for T {
    fn chunk_count(&self) -> u64 {
        self.stream_size().div_ceil(CHUNK_SIZE)
    }

    fn chunk_range(&self, id: u64) -> Range<u64> {
        let start = id * CHUNK_SIZE;
        start..(start + CHUNK_SIZE).min(self.stream_size().max(start))
    }

    fn file_span(&self, entry: &Entry, offset: u64, end: u64) -> Span {
        let (start, stop) = (entry.data + offset, entry.data + end);
        Span {
            ids: start / CHUNK_SIZE..stop.div_ceil(CHUNK_SIZE),
            bytes: start..stop,
            file_end: (entry.data + entry.size).div_ceil(CHUNK_SIZE),
        }
    }
}

/// One range request and what it will produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fetch {
    /// Blob bytes to request.
    pub(crate) blob: Range<u64>,
    /// Chunks wanted; decoding may produce more (never fewer).
    pub(crate) chunks: Range<u64>,
    /// Where decoding starts, in the format's own numbering (a gzip
    /// checkpoint); 0 for formats that need none.
    pub(crate) start_point: usize,
}

/// A format's read side.
pub(crate) trait Codec: ChunkMap {
    /// The request that produces at least the chunks `want` (a run).
    fn plan(&self, want: Range<u64>) -> Fetch;
    /// The chunks decoded from `blob` (exactly the bytes of `fetch.blob`),
    /// each checked against what the index recorded; an error means the
    /// bytes are not what the layer's digest vouched for.
    fn decode(&self, fetch: &Fetch, blob: &Bytes) -> Result<Vec<(u64, Bytes)>, String>;
    /// Whether decoding costs enough CPU to leave the async workers.
    fn cpu_heavy(&self) -> bool {
        false
    }
    /// Chunks with the same group are cheapest fetched by one request.
    fn fetch_group(&self, id: u64) -> u64;
    /// The runs of chunk ids a full fill requests, in order, each chunk once.
    fn fill_runs(&self) -> Vec<Range<u64>>;
    /// Whether an index of this format may be published for other servers
    /// to use without reading the layer (a format whose index is cheap to
    /// make from the blob itself, and checked against the manifest, is not).
    fn publishable(&self) -> bool {
        true
    }
    /// Checks of an index from elsewhere that need no read of the layer:
    /// its tables are consistent with the layer's compressed size and the
    /// index's uncompressed size.
    fn check_consistent(&self, compressed_size: u64, uncompressed_size: u64) -> Result<(), String>;
}

/// Receives the chunks an indexing pass decodes, numbered from 0.
pub(crate) trait ChunkSink {
    /// Keep chunk `id`.
    fn put(&mut self, id: u64, data: &[u8]) -> io::Result<()>;
}

/// What an indexing pass made.
pub(crate) struct Indexed {
    pub(crate) format: LayerFormat,
    pub(crate) entries: Vec<Entry>,
    pub(crate) detail: IndexDetail,
    pub(crate) uncompressed_size: u64,
}

/// A format indexed by one pass over the whole blob.
pub(crate) trait StreamIndexer: Sync {
    /// Read the blob from `input` to its end, give every tar entry to
    /// `found` as its header is read and every decoded chunk to `chunks` as
    /// it completes. Returns the detail and the uncompressed size.
    fn index_stream(
        &self,
        input: &mut dyn Read,
        chunks: &mut dyn ChunkSink,
        found: &mut dyn FnMut(Entry),
    ) -> Result<(IndexDetail, u64), String>;
}

/// A format whose index is found from the end of the blob: a footer that
/// locates a table of contents.
pub(crate) trait TailIndexer: Sync {
    /// The format a blob with such a footer is.
    fn format(&self) -> LayerFormat;
    /// Bytes at the end of the blob that hold the footer.
    fn tail_len(&self) -> u64;
    /// The blob range holding the table of contents, or `None` if the blob
    /// is not of this format.
    fn locate(&self, tail: &[u8], blob_size: u64) -> Result<Option<Range<u64>>, String>;
    /// The index from the table of contents (`region` holds the bytes of
    /// the range [`locate`](Self::locate) gave, starting at blob offset
    /// `at`), checked against the layer descriptor's `annotations`.
    fn index(
        &self,
        region: &[u8],
        at: u64,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Indexed, String>;
}

/// How to index a layer of some media type: try `tail` first (if any), else
/// one pass of `stream`.
pub(crate) struct Indexing {
    /// The format a stream pass makes.
    pub(crate) format: LayerFormat,
    pub(crate) tail: Option<&'static dyn TailIndexer>,
    pub(crate) stream: &'static dyn StreamIndexer,
}

/// How layers of `media_type` are indexed.
pub(crate) fn indexing_for(media_type: &str) -> Result<Indexing, FormatError> {
    let format = super::format_from_media_type(media_type)?;
    Ok(match format {
        LayerFormat::Gzip | LayerFormat::Estargz => Indexing {
            format: LayerFormat::Gzip,
            tail: Some(&super::estargz::EstargzTail),
            stream: &super::gzip::GzipStream,
        },
        LayerFormat::Tar => Indexing {
            format,
            tail: None,
            stream: &super::tar::TarStream,
        },
        LayerFormat::Zstd | LayerFormat::ZstdChunked => Indexing {
            format: LayerFormat::Zstd,
            tail: Some(&super::zstd_chunked::ZstdChunkedTail),
            stream: &super::zstd::ZstdStream,
        },
    })
}

/// Passes a stream through while cutting it into [`CHUNK_SIZE`] chunks for
/// a [`ChunkSink`], optionally hashing each (tar layers keep the hashes to
/// verify later range fetches).
pub(crate) struct ChunkSplitter<'a, R: Read> {
    inner: R,
    sink: &'a mut dyn ChunkSink,
    current: Vec<u8>,
    next_id: u64,
    total: u64,
    hashes: Option<Vec<[u8; 32]>>,
}

impl<'a, R: Read> ChunkSplitter<'a, R> {
    pub(crate) fn new(inner: R, sink: &'a mut dyn ChunkSink, hash_chunks: bool) -> Self {
        ChunkSplitter {
            inner,
            sink,
            current: Vec::with_capacity(CHUNK_SIZE as usize),
            next_id: 0,
            total: 0,
            hashes: hash_chunks.then(Vec::new),
        }
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.current, Vec::with_capacity(CHUNK_SIZE as usize));
        if let Some(h) = &mut self.hashes {
            use sha2::Digest as _;
            h.push(sha2::Sha256::digest(&data).into());
        }
        self.sink.put(self.next_id, &data)?;
        self.next_id += 1;
        Ok(())
    }

    /// Store the last partial chunk; returns the reader, the stream's size
    /// and the chunk hashes (if asked for).
    pub(crate) fn finish(mut self) -> io::Result<(R, u64, Vec<[u8; 32]>)> {
        if !self.current.is_empty() {
            self.flush_chunk()?;
        }
        Ok((self.inner, self.total, self.hashes.unwrap_or_default()))
    }
}

impl<R: Read> Read for ChunkSplitter<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.total += n as u64;
        let mut rest = &out[..n];
        while !rest.is_empty() {
            let room = CHUNK_SIZE as usize - self.current.len();
            let take = room.min(rest.len());
            self.current.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.current.len() == CHUNK_SIZE as usize {
                self.flush_chunk()?;
            }
        }
        Ok(n)
    }
}

/// What every stream indexer does with its decoded stream: read the tar
/// headers from `stream` (handing each entry to `found`) while cutting it
/// into chunks for `chunks`. Returns the stream reader, the stream's size
/// and the chunk hashes (if asked for).
pub(crate) fn split_tar_stream<R: Read>(
    stream: R,
    chunks: &mut dyn ChunkSink,
    found: &mut dyn FnMut(Entry),
    hash_chunks: bool,
) -> Result<(R, u64, Vec<[u8; 32]>), String> {
    let mut split = ChunkSplitter::new(stream, chunks, hash_chunks);
    super::tar_entries::read_entries(&mut split, found).map_err(|e| e.to_string())?;
    split.finish().map_err(|e| e.to_string())
}

/// Split sorted ids into runs of consecutive values.
pub(crate) fn runs(ids: &[u64]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for &id in ids {
        match out.last_mut() {
            Some(r) if r.end == id => r.end += 1,
            _ => out.push(id..id + 1),
        }
    }
    out
}

/// Runs of at most `len` chunks each, covering `0..total`, cut also at every
/// chunk of `starts` (a decoding start point).
pub(crate) fn cut_runs(total: u64, len: u64, starts: impl Iterator<Item = u64>) -> Vec<Range<u64>> {
    let mut cuts: Vec<u64> = starts.chain([0, total]).collect();
    if len > 0 {
        cuts.extend((0..total).step_by(len as usize));
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2)
        .filter(|w| w[0] < total)
        .map(|w| w[0]..w[1].min(total))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Keep(Vec<(u64, usize)>);
    impl ChunkSink for Keep {
        fn put(&mut self, id: u64, data: &[u8]) -> io::Result<()> {
            self.0.push((id, data.len()));
            Ok(())
        }
    }

    #[test]
    fn runs_group_adjacent_ids() {
        assert_eq!(runs(&[1, 2, 3, 7, 9, 10]), vec![1..4, 7..8, 9..11]);
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn cut_runs_cover_every_chunk_once() {
        assert_eq!(
            cut_runs(41, 16, std::iter::empty()),
            vec![0..16, 16..32, 32..41]
        );
        assert_eq!(
            cut_runs(30, 0, [11, 20].into_iter()),
            vec![0..11, 11..20, 20..30]
        );
        assert!(cut_runs(0, 16, std::iter::empty()).is_empty());
    }

    #[test]
    fn the_splitter_cuts_whole_chunks_and_a_short_last_one() {
        let data = vec![7u8; CHUNK_SIZE as usize * 2 + 5];
        let mut sink = Keep(Vec::new());
        let mut split = ChunkSplitter::new(&data[..], &mut sink, true);
        io::copy(&mut split, &mut io::sink()).unwrap();
        let (_, total, hashes) = split.finish().unwrap();
        assert_eq!(total, data.len() as u64);
        assert_eq!(hashes.len(), 3);
        let c = CHUNK_SIZE as usize;
        assert_eq!(sink.0, vec![(0, c), (1, c), (2, 5)]);
    }

    #[test]
    fn stream_map_spans_are_stream_offsets() {
        let map = StreamMap {
            size: 3 * CHUNK_SIZE + 10,
        };
        assert_eq!(map.chunk_count(), 4);
        assert_eq!(map.chunk_range(3), 3 * CHUNK_SIZE..3 * CHUNK_SIZE + 10);
        let mut e = Entry::new("f".into(), super::super::EntryKind::File);
        e.data = CHUNK_SIZE - 4;
        e.size = 100;
        let s = map.file_span(&e, 2, 8);
        assert_eq!(s.ids, 0..2);
        assert_eq!(s.bytes, CHUNK_SIZE - 2..CHUNK_SIZE + 4);
        assert_eq!(s.file_end, 2);
    }
}
