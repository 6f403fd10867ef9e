//! What one node request did on the image read path, gathered without
//! threading a parameter through every layer: the protocol front end runs
//! the request inside [`traced`], and the view notes cache hits, fetches and
//! waits into the task-local [`ReadTrace`] (a no-op outside one).
//!
//! Work the view hands to other tasks (a TFTP read-ahead window) is traced
//! by running that task inside `traced` with the same shared trace.

use crate::digest::Digest;
use parking_lot::Mutex;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One registry range request made on behalf of a traced request.
#[derive(Clone, Debug)]
pub(crate) struct FetchNote {
    pub(crate) layer: Digest,
    pub(crate) started: Instant,
    pub(crate) duration: Duration,
    pub(crate) compressed_bytes: u64,
    pub(crate) bytes: u64,
}

/// What one request did on the read path (see the module docs).
#[derive(Debug, Default)]
pub struct ReadTrace {
    /// The object the request was about (NFS export id and file id), if
    /// the front end says.
    pub(crate) file: Option<(u32, u64)>,
    /// Bytes the request returned to the client.
    pub(crate) bytes_out: u64,
    pub(crate) cache_bytes: u64,
    pub(crate) fetched_bytes: u64,
    /// Time spent waiting on fetches (own, or another request's in flight).
    pub(crate) wait: Duration,
    pub(crate) fetches: Vec<FetchNote>,
    /// Chunks read, in order: what a prefetch plan replays.
    pub(crate) chunks: Vec<(Digest, u64)>,
}

pub(crate) type SharedTrace = Arc<Mutex<ReadTrace>>;

tokio::task_local! {
    static TRACE: SharedTrace;
}

/// Run `f` with `trace` collecting what it does on the read path.
pub(crate) async fn traced<F: Future>(trace: SharedTrace, f: F) -> F::Output {
    TRACE.scope(trace, f).await
}

fn with(f: impl FnOnce(&mut ReadTrace)) {
    let _ = TRACE.try_with(|t| f(&mut t.lock()));
}

pub(crate) fn is_traced() -> bool {
    TRACE.try_with(|_| ()).is_ok()
}

pub(crate) fn note_file(export: u32, id: u64) {
    with(|t| {
        t.file.get_or_insert((export, id));
    })
}

pub(crate) fn note_bytes_out(n: u64) {
    with(|t| t.bytes_out += n)
}

pub(crate) fn note_chunks(layer: &Digest, ids: &[u64]) {
    with(|t| t.chunks.extend(ids.iter().map(|&id| (layer.clone(), id))))
}

pub(crate) fn note_hit(bytes: u64) {
    with(|t| t.cache_bytes += bytes)
}

pub(crate) fn note_wait(d: Duration) {
    with(|t| t.wait += d)
}

pub(crate) fn note_fetch(n: FetchNote) {
    with(|t| {
        t.fetched_bytes += n.bytes;
        t.fetches.push(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notes_land_only_inside_a_scope() {
        note_hit(5);
        assert!(!is_traced());
        let t = SharedTrace::default();
        traced(t.clone(), async {
            assert!(is_traced());
            note_file(1, 7);
            note_file(1, 8);
            note_hit(10);
            note_chunks(&Digest::of_bytes(b"l"), &[1, 2]);
            note_wait(Duration::from_millis(3));
            note_fetch(FetchNote {
                layer: Digest::of_bytes(b"l"),
                started: Instant::now(),
                duration: Duration::from_millis(2),
                compressed_bytes: 4,
                bytes: 9,
            });
        })
        .await;
        let t = t.lock();
        assert_eq!(t.file, Some((1, 7)));
        assert_eq!((t.cache_bytes, t.fetched_bytes), (10, 9));
        assert_eq!(t.chunks.len(), 2);
        assert_eq!(t.wait, Duration::from_millis(3));
        assert_eq!(t.fetches.len(), 1);
    }
}
