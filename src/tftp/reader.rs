//! What a transfer reads from: bytes in memory (generated files, iPXE
//! ROMs) or a file of an image view, fetched lazily a window at a time.
//!
//! The engine asks for one block at a time, in order, as it first sends
//! it; a block is a slice of what was fetched (no copy), except one that
//! straddles two fetches and the first window (below). Until the client has acknowledged data, an
//! image file is read only as far as the first send window needs (see
//! [`TftpReader::first_read`]): a client that only probes (tsize, then
//! "Early terminate") or never answers costs one window. After that, the
//! file is read in windows of up to [`READ_AHEAD`] bytes, aligned to it,
//! through `ImageView::read` on the tokio runtime; once the client has
//! taken a second block from a window, the next window is fetched in the
//! background, so a transfer rarely waits for the registry.

use crate::image::trace::{traced, SharedTrace};
use crate::image::tree::Inode;
use crate::image::Opening;
use crate::image::{ImageView, ViewError};
use crate::profile::recorder::{Recorder, TftpDone};
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Bytes fetched from the image per `ImageView::read` (the chunk size of
/// the cache, so one read is one chunk when aligned).
pub(crate) const READ_AHEAD: u32 = 256 * 1024;

type Fetch = JoinHandle<Result<Bytes, crate::image::ViewError>>;

/// Why a block could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("reading {len} bytes at byte {offset}: {source}")]
    View {
        offset: u64,
        len: u32,
        #[source]
        source: ViewError,
    },
    #[error("the read task at byte {offset} failed: {source}")]
    Task {
        offset: u64,
        #[source]
        source: tokio::task::JoinError,
    },
    // The view is immutable, so this means the file is shorter than its
    // inode said: the transfer ends rather than loop.
    #[error("image file ended at byte {offset} of {size}")]
    Short { offset: u64, size: u64 },
}

/// Which server a transfer goes through: the same files are served over
/// TFTP and HTTP (see the API's `bootfiles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    Tftp,
    Http,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::Tftp => "TFTP",
            Via::Http => "HTTP",
        })
    }
}

/// Names a transfer in log lines.
#[derive(Clone, Debug)]
pub(crate) struct Label {
    pub(crate) client: SocketAddr,
    pub(crate) via: Via,
    pub(crate) node: String,
    /// The file as the boot profile names it.
    pub(crate) path: String,
}

pub(crate) struct TftpReader {
    label: Label,
    source: Source,
    pos: u64,
    /// Where reading started ([`TftpReader::seek`]): an HTTP range.
    start: u64,
    size: u64,
    record: Option<Box<Recording>>,
    /// Blocks handed to the engine, and when the last one was.
    reads: u32,
    last_read: Option<Instant>,
}

/// Where a node's transfer goes in its boot timeline when it ends.
pub(crate) struct Recording {
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) kind: &'static str,
    pub(crate) image: String,
    pub(crate) started: Instant,
    pub(crate) generated: bool,
    pub(crate) trace: SharedTrace,
}

impl Recording {
    pub(crate) fn new(
        recorder: Arc<Recorder>,
        kind: &'static str,
        image: &str,
        generated: bool,
    ) -> Self {
        Recording {
            recorder,
            kind,
            image: image.to_string(),
            started: Instant::now(),
            generated,
            trace: SharedTrace::default(),
        }
    }

    /// Record a request that never became a transfer (not found, unreadable).
    pub(crate) fn failed(self, node: &str, file: &str) {
        self.recorder.tftp(
            node,
            self.kind,
            &self.image,
            TftpDone {
                file: file.to_string(),
                started: self.started,
                ended: Instant::now(),
                size: 0,
                bytes: 0,
                reads: 0,
                generated: self.generated,
                failed: true,
                trace: Default::default(),
            },
        );
    }
}

enum Source {
    Memory(Bytes),
    Image(Box<ImageSource>),
}

/// A file of a node's image: in the final view, or found in a tree that is
/// settled for the boot directory while the image still streams.
#[derive(Clone)]
pub(crate) enum FileRef {
    View {
        view: Arc<ImageView>,
        ino: u64,
    },
    Passing {
        opening: Arc<Opening>,
        node: Arc<Inode>,
    },
}

impl FileRef {
    /// Up to `len` bytes at `offset`; short only at the end of the file.
    pub(crate) async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ViewError> {
        match self {
            FileRef::View { view, ino } => view.read(*ino, offset, len).await,
            FileRef::Passing { opening, node } => opening.read(node, offset, len).await,
        }
    }
}

struct ImageSource {
    file: FileRef,
    rt: Handle,
    /// The window being served and where it starts in the file.
    window: Bytes,
    window_start: u64,
    /// Blocks served from the current window.
    window_reads: u32,
    /// The background fetch of the window after the current one.
    next: Option<(u64, Fetch)>,
    trace: Option<SharedTrace>,
    /// Bytes of the first fetch (what the first send window needs).
    first_read: u32,
    /// The client has acknowledged data: fetch whole windows, and the next
    /// one in the background.
    read_ahead: bool,
}

impl ImageSource {
    fn spawn(&self, offset: u64, len: u32) -> Fetch {
        let file = self.file.clone();
        let read = async move { file.read(offset, len).await };
        match self.trace.clone() {
            Some(t) => self.rt.spawn(traced(t, read)),
            None => self.rt.spawn(read),
        }
    }

    /// How much to fetch at `offset`: up to the next [`READ_AHEAD`]
    /// boundary (one cache chunk) once reading ahead, else the first window.
    fn fetch_len(&self, offset: u64) -> u32 {
        let to_boundary = READ_AHEAD - (offset % READ_AHEAD as u64) as u32;
        if self.read_ahead {
            to_boundary
        } else {
            self.first_read.clamp(1, READ_AHEAD).min(to_boundary)
        }
    }

    /// Make the window hold byte `at` of a file of `size` bytes.
    async fn load(&mut self, at: u64, size: u64) -> Result<(), ReadError> {
        let len = self.fetch_len(at);
        let task = match self.next.take() {
            Some((o, task)) if o == at => task,
            // Never happens with sequential reads; the stale fetch is dropped.
            _ => self.spawn(at, len),
        };
        let bytes = match task.await {
            Ok(Ok(b)) => b,
            Ok(Err(source)) => {
                return Err(ReadError::View {
                    offset: at,
                    len,
                    source,
                })
            }
            Err(source) => return Err(ReadError::Task { offset: at, source }),
        };
        if bytes.is_empty() {
            return Err(ReadError::Short { offset: at, size });
        }
        // What the view returns may be a slice of a whole cache chunk: kept
        // by a client that has not answered yet, it would pin the chunk for
        // a few hundred bytes. Until then, keep a copy of just what was read.
        let bytes = if self.read_ahead {
            bytes
        } else {
            Bytes::copy_from_slice(&bytes)
        };
        self.window = bytes;
        self.window_start = at;
        self.window_reads = 0;
        Ok(())
    }

    /// `want` bytes at `pos` (all inside a file of `size` bytes).
    async fn block(&mut self, pos: u64, want: usize, size: u64) -> Result<Bytes, ReadError> {
        let mut joined: Option<BytesMut> = None;
        let (mut at, mut need) = (pos, want);
        let block = loop {
            let end = self.window_start + self.window.len() as u64;
            if at < self.window_start || at >= end {
                self.load(at, size).await?;
                continue;
            }
            let off = (at - self.window_start) as usize;
            let take = need.min(self.window.len() - off);
            let part = self.window.slice(off..off + take);
            self.window_reads += 1;
            if joined.is_none() && take == need {
                break part;
            }
            // A block across two fetches: the one copy of the read path.
            let buf = joined.get_or_insert_with(|| BytesMut::with_capacity(want));
            buf.extend_from_slice(&part);
            (at, need) = (at + take as u64, need - take);
            if need == 0 {
                break joined.take().expect("set above").freeze();
            }
        };
        let end = self.window_start + self.window.len() as u64;
        if self.read_ahead && self.window_reads >= 2 && self.next.is_none() && end < size {
            self.next = Some((end, self.spawn(end, self.fetch_len(end))));
        }
        Ok(block)
    }
}

impl TftpReader {
    pub(crate) fn memory(label: Label, data: Bytes) -> TftpReader {
        TftpReader {
            label,
            size: data.len() as u64,
            source: Source::Memory(data),
            pos: 0,
            start: 0,
            record: None,
            reads: 0,
            last_read: None,
        }
    }

    /// Record this transfer in its node's boot timeline when it ends.
    pub(crate) fn recorded(mut self, record: Recording) -> TftpReader {
        if let Source::Image(src) = &mut self.source {
            src.trace = Some(record.trace.clone());
        }
        self.record = Some(Box::new(record));
        self
    }

    pub(crate) fn image(label: Label, file: FileRef, size: u64, rt: Handle) -> TftpReader {
        TftpReader {
            label,
            source: Source::Image(Box::new(ImageSource {
                file,
                rt,
                window: Bytes::new(),
                window_start: 0,
                window_reads: 0,
                next: None,
                trace: None,
                first_read: READ_AHEAD,
                read_ahead: false,
            })),
            pos: 0,
            start: 0,
            size,
            record: None,
            reads: 0,
            last_read: None,
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Read from byte `pos` on (at most the size) rather than from the
    /// start: an HTTP range request. Only before the first block.
    pub(crate) fn seek(&mut self, pos: u64) {
        self.pos = pos.min(self.size);
        self.start = self.pos;
    }

    /// Fetch only `bytes` from the image (the first send window) until
    /// [`TftpReader::read_ahead`] is called.
    pub(crate) fn first_read(&mut self, bytes: u64) {
        if let Source::Image(src) = &mut self.source {
            src.first_read = bytes.clamp(1, READ_AHEAD as u64) as u32;
        }
    }

    /// The client has acknowledged data: read ahead of it from now on.
    pub(crate) fn read_ahead(&mut self) {
        if let Source::Image(src) = &mut self.source {
            src.read_ahead = true;
        }
    }

    /// The next block of up to `len` bytes; short only at the end of the
    /// file, and empty after it (the final block of a file whose size is a
    /// multiple of the block size).
    pub(crate) async fn next_block(&mut self, len: usize) -> Result<Bytes, ReadError> {
        let want = (self.size - self.pos).min(len as u64) as usize;
        let r = match &mut self.source {
            _ if want == 0 => Ok(Bytes::new()),
            Source::Memory(data) => {
                let at = self.pos as usize;
                Ok(data.slice(at..at + want))
            }
            Source::Image(src) => src.block(self.pos, want, self.size).await,
        };
        match &r {
            Ok(b) => {
                self.pos += b.len() as u64;
                self.reads += 1;
                self.last_read = Some(Instant::now());
            }
            Err(e) => tracing::warn!(
                client = %self.label.client,
                node = %self.label.node,
                "{}: reading {} failed at byte {}: {e}",
                self.label.via,
                self.label.path,
                self.pos
            ),
        }
        r
    }
}

impl Drop for TftpReader {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            // A read-ahead window still in flight is not part of what was sent.
            let trace = std::mem::take(&mut *r.trace.lock());
            r.recorder.tftp(
                &self.label.node,
                r.kind,
                &r.image,
                TftpDone {
                    file: self.label.path.clone(),
                    started: r.started,
                    // The engine reads a block as it first sends it: the
                    // transfer's end, whether the client acknowledged it,
                    // sent an ERROR or went silent, is the last block read.
                    ended: self.last_read.unwrap_or(r.started),
                    size: self.size,
                    bytes: self.pos - self.start,
                    reads: self.reads,
                    generated: r.generated,
                    failed: false,
                    trace,
                },
            );
        }
        // The engine drops the reader when its transfer ends, for any
        // reason: the last block acknowledged, an ERROR from the client
        // (a probe's "Early terminate"), or the retransmissions run out.
        // Probes and early terminations are normal traffic: debug level.
        if self.pos >= self.size {
            tracing::debug!(
                client = %self.label.client,
                node = %self.label.node,
                "{}: {} read to the end ({} bytes)",
                self.label.via,
                self.label.path,
                self.size
            );
        } else {
            tracing::debug!(
                client = %self.label.client,
                node = %self.label.node,
                "{}: {} ended after {} of {} bytes (client stopped)",
                self.label.via,
                self.label.path,
                self.pos,
                self.size
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label() -> Label {
        Label {
            client: "127.0.0.1:1".parse().unwrap(),
            via: Via::Tftp,
            node: "n".into(),
            path: "p".into(),
        }
    }

    /// Read to the end in blocks of `block` bytes, the way the engine does.
    fn drain(r: &mut TftpReader, block: usize) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut out = Vec::new();
        loop {
            let b = rt.block_on(r.next_block(block)).unwrap();
            out.extend_from_slice(&b);
            if b.len() < block {
                return out;
            }
        }
    }

    #[test]
    fn memory_reader_serves_all_bytes() {
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut r = TftpReader::memory(label(), Bytes::from(data.clone()));
        assert_eq!(r.size(), 5000);
        assert_eq!(drain(&mut r, 1468), data);
        // Exactly one block's worth: a final empty read ends it.
        let mut r = TftpReader::memory(label(), Bytes::from(vec![1u8; 512]));
        assert_eq!(drain(&mut r, 512).len(), 512);
        let mut r = TftpReader::memory(label(), Bytes::new());
        assert!(drain(&mut r, 512).is_empty());
    }
}
