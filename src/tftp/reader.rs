//! What a transfer reads from: bytes in memory (generated files, iPXE
//! ROMs) or a file of an image view, fetched lazily a window at a time.
//!
//! async-tftp reads one block (up to blksize bytes) per call and never
//! seeks. An image file is read in windows of [`READ_AHEAD`] bytes through
//! `ImageView::read` on the tokio runtime; once the client has taken a
//! second block from a window, the next window is fetched in the background,
//! so a transfer rarely waits for the registry. A client that only probes
//! (tsize, then "Early terminate") costs one window.

use crate::image::trace::{traced, SharedTrace};
use crate::image::tree::Inode;
use crate::image::Opening;
use crate::image::{ImageView, ViewError};
use crate::profile::recorder::{Recorder, TftpDone};
use bytes::Bytes;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Bytes fetched from the image per `ImageView::read` (the chunk size of
/// the cache, so one read is one chunk when aligned).
pub(crate) const READ_AHEAD: u32 = 256 * 1024;

type Fetch = JoinHandle<Result<Bytes, crate::image::ViewError>>;

/// Names a transfer in log lines.
#[derive(Clone, Debug)]
pub(crate) struct Label {
    pub(crate) client: SocketAddr,
    pub(crate) node: String,
    pub(crate) path: String,
}

pub(crate) struct TftpReader {
    label: Label,
    source: Source,
    pos: u64,
    size: u64,
    record: Option<Box<Recording>>,
    /// Blocks handed to async-tftp, and when the last one was.
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
    /// Reads served from the current window.
    window_reads: u32,
    /// A fetch under way: (offset, task).
    pending: Option<(u64, Fetch)>,
    /// The background fetch of the window after the current one.
    next: Option<(u64, Fetch)>,
    trace: Option<SharedTrace>,
}

impl ImageSource {
    fn spawn(&self, offset: u64) -> Fetch {
        let file = self.file.clone();
        let read = async move { file.read(offset, READ_AHEAD).await };
        match self.trace.clone() {
            Some(t) => self.rt.spawn(traced(t, read)),
            None => self.rt.spawn(read),
        }
    }
}

impl TftpReader {
    pub(crate) fn memory(label: Label, data: Bytes) -> TftpReader {
        TftpReader {
            label,
            size: data.len() as u64,
            source: Source::Memory(data),
            pos: 0,
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
                pending: None,
                next: None,
                trace: None,
            })),
            pos: 0,
            size,
            record: None,
            reads: 0,
            last_read: None,
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }
}

fn poll_image(
    src: &mut ImageSource,
    pos: u64,
    size: u64,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    loop {
        let window_end = src.window_start + src.window.len() as u64;
        if pos >= src.window_start && pos < window_end {
            let at = (pos - src.window_start) as usize;
            let n = buf.len().min(src.window.len() - at);
            buf[..n].copy_from_slice(&src.window[at..at + n]);
            src.window_reads += 1;
            if src.window_reads >= 2 && src.next.is_none() && window_end < size {
                src.next = Some((window_end, src.spawn(window_end)));
            }
            return Poll::Ready(Ok(n));
        }
        if src.pending.as_ref().is_some_and(|(o, _)| *o != pos) {
            // Never happens with sequential reads; drop the stale fetch.
            src.pending = None;
        }
        if src.pending.is_none() {
            src.pending = match src.next.take() {
                Some((o, task)) if o == pos => Some((o, task)),
                _ => Some((pos, src.spawn(pos))),
            };
        }
        let (offset, task) = src.pending.as_mut().expect("set above");
        let offset = *offset;
        let result = match Pin::new(task).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        src.pending = None;
        let bytes = match result {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            Err(e) => return Poll::Ready(Err(io::Error::other(e))),
        };
        if bytes.is_empty() {
            // The view is immutable, so this means the file is shorter than
            // its inode said: end the transfer rather than loop.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("image file ended at {offset} of {size} bytes"),
            )));
        }
        src.window = bytes;
        src.window_start = offset;
        src.window_reads = 0;
    }
}

impl futures_io::AsyncRead for TftpReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pos >= this.size || buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let r = match &mut this.source {
            Source::Memory(data) => {
                let at = this.pos as usize;
                let n = buf.len().min(data.len() - at);
                buf[..n].copy_from_slice(&data[at..at + n]);
                Poll::Ready(Ok(n))
            }
            Source::Image(src) => poll_image(src, this.pos, this.size, cx, buf),
        };
        match &r {
            Poll::Ready(Ok(n)) => {
                this.pos += *n as u64;
                this.reads += 1;
                this.last_read = Some(Instant::now());
            }
            Poll::Ready(Err(e)) => tracing::warn!(
                client = %this.label.client,
                node = %this.label.node,
                "TFTP: reading {} failed at byte {}: {e}",
                this.label.path,
                this.pos
            ),
            Poll::Pending => {}
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
                    // async-tftp ignores a client's ERROR and keeps resending
                    // until its retries run out, then drops the reader: the
                    // client stopped at the last block it took.
                    ended: self.last_read.unwrap_or(r.started),
                    size: self.size,
                    bytes: self.pos,
                    reads: self.reads,
                    generated: r.generated,
                    failed: false,
                    trace,
                },
            );
        }
        // async-tftp drops the reader when a transfer ends for any reason;
        // it does not say whether the client took the last block. Probes
        // and early terminations are normal traffic: debug level.
        if self.pos >= self.size {
            tracing::debug!(
                client = %self.label.client,
                node = %self.label.node,
                "TFTP: {} read to the end ({} bytes)",
                self.label.path,
                self.size
            );
        } else {
            tracing::debug!(
                client = %self.label.client,
                node = %self.label.node,
                "TFTP: {} ended after {} of {} bytes (client stopped)",
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
            node: "n".into(),
            path: "p".into(),
        }
    }

    /// Read to the end with a blksize-sized buffer, the way async-tftp does.
    fn drain(r: &mut TftpReader, block: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut buf = vec![0u8; block];
        loop {
            match futures_io::AsyncRead::poll_read(Pin::new(&mut *r), &mut cx, &mut buf) {
                Poll::Ready(Ok(0)) => return out,
                Poll::Ready(Ok(n)) => out.extend_from_slice(&buf[..n]),
                other => panic!("unexpected {other:?}"),
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
