//! An image while its layers are still being indexed: the streaming pass of
//! a gzip or tar layer takes as long as downloading the whole blob, and a
//! file the stream has already passed can be served before it ends.
//!
//! [`Opening`] starts every layer's index (cached, published, eStargz TOC or
//! streaming pass) and, once all are there, the final [`ImageView`]. Until
//! then it answers from a provisional tree, built now and then from what is
//! known for sure:
//!
//! - Layers are complete from the top down to the topmost incomplete layer
//!   `k`; the provisional tree merges layers `k..` only (layer `k` as far as
//!   its pass has read). A lower layer can neither hide nor replace anything
//!   of a higher one, so every entry found there is final, except a
//!   directory only implied by a path (no entry yet says what its mode and
//!   owner are: it waits). So does the root, until a `./` entry of layer
//!   `k` or above describes it (base layers usually begin with one).
//! - A name not found may still come (from the rest of layer `k` or from a
//!   lower layer), and a directory's listing may still grow: negative
//!   lookups and `readdir` wait for the final view.
//! - A file of layer `k` is read from the pass's staged chunks once the pass
//!   has decoded its bytes; a file of a complete layer through the normal
//!   read path.
//!
//! Trust: staged chunks are not yet checked against the layer digest (that
//! needs the whole blob). Serving them is what makes an image usable before
//! its layers have finished downloading; the exposure ends
//! with the pass: a mismatch makes every later request fail with EIO, and
//! nothing of the layer reaches the cache. `lazyboot mount --verified-only`
//! waits for the final view instead. Caveat: a tar that names one path twice
//! serves the first copy until the pass reaches the second.

use super::build::{ensure_index, PassProgress};
use super::error::ViewError;
use super::read::{assemble, ReadPath};
use super::tree::{DataRef, Inode, Tree};
use super::view::ImageView;
use crate::cache::{read_staged, ChunkCache, ChunkKey};
use crate::layer::format::{ChunkMap, StreamMap};
use crate::layer::index::LayerIndex;
use crate::layer::EntryKind;
use crate::progress::Progress;
use crate::registry::{ResolvedImage, Source};
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The chunks a streaming pass stages: every format read in one pass is
/// cut into chunks of its uncompressed stream (its size is not known yet).
const PASS_MAP: StreamMap = StreamMap { size: u64::MAX };

/// Provisional trees are rebuilt at most this often (and never more often
/// than every four build times), however fast the passes move.
const MIN_REBUILD: Duration = Duration::from_millis(100);

struct Slot {
    progress: Arc<PassProgress>,
    index: OnceLock<Arc<LayerIndex>>,
}

struct Snapshot {
    generation: u64,
    built: Instant,
    cost: Duration,
    /// Layer `base` of the image is layer 0 of `tree`.
    base: usize,
    tree: Tree,
}

/// A tree that is final for one directory (see [`Opening::settled_tree`]).
pub enum Settled {
    /// The final view is there.
    Final(Arc<ImageView>),
    /// Every layer is merged as far as it is known; data refs name image
    /// layers, to be read through [`Opening::read`].
    Partial(Arc<Tree>),
}

/// What a provisional lookup found.
pub enum Found {
    /// Final metadata of the path; `data` names an image layer (not a tree
    /// layer) and the entry in its table.
    Node(Inode),
    /// The final view is there: ask it.
    Final(Arc<ImageView>),
}

/// An image being opened: every layer's index under way, a provisional tree of what is known for sure, then the final [`ImageView`].
pub struct Opening {
    pub(crate) image: ResolvedImage,
    source: Source,
    cache: Arc<ChunkCache>,
    slots: Vec<Slot>,
    tick: Arc<watch::Sender<u64>>,
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    /// The last tree [`Opening::settled_tree`] made, and how many entries
    /// (of all layers) it merged.
    settled: Mutex<Option<(usize, Arc<Tree>)>>,
    outcome: OnceLock<Result<Arc<ImageView>, Arc<ViewError>>>,
    read_timeout: Duration,
}

impl Opening {
    /// Start indexing every layer of `image` (a progress bar each) and
    /// building the final view; returns at once.
    pub(crate) async fn start(
        image: ResolvedImage,
        source: Source,
        cache: Arc<ChunkCache>,
        read_timeout: Duration,
        progress: &Progress,
    ) -> Arc<Opening> {
        // Published indexes (`index --push`): pulled only when no layer is
        // indexed here yet, so the passes below find them; never fails.
        super::published::fetch_published(&source, &image, &cache).await;
        let tick = Arc::new(watch::channel(0u64).0);
        let slots = image
            .layers
            .iter()
            .map(|_| Slot {
                progress: PassProgress::new(tick.clone()),
                index: OnceLock::new(),
            })
            .collect();
        let opening = Arc::new(Opening {
            image,
            source,
            cache,
            slots,
            tick,
            snapshot: Mutex::new(None),
            settled: Mutex::new(None),
            outcome: OnceLock::new(),
            read_timeout,
        });
        let mut tasks = Vec::new();
        for (li, layer) in opening.image.layers.iter().enumerate() {
            let o = opening.clone();
            let layer = layer.clone();
            let bar = progress.bytes(format!("index {}", layer.digest.short()), layer.size);
            tasks.push(tokio::spawn(async move {
                let progress = o.slots[li].progress.clone();
                let r = ensure_index(&o.source, &o.cache, &layer, bar, progress).await;
                if let Ok(index) = &r {
                    let _ = o.slots[li].index.set(index.clone());
                    // The index has them all now; keep one copy, not two.
                    *o.slots[li].progress.entries.write() = Vec::new();
                    o.bump();
                }
                r
            }));
        }
        let o = opening.clone();
        tokio::spawn(async move {
            let mut indexes = Vec::new();
            let mut failed = None;
            for t in tasks {
                match t.await {
                    Ok(Ok(index)) => indexes.push(index),
                    Ok(Err(e)) => {
                        failed = Some(ViewError::from(e));
                        break;
                    }
                    Err(e) => {
                        failed = Some(ViewError::BadData {
                            layer: crate::digest::Digest::of_bytes(b""),
                            msg: format!("index task failed: {e}"),
                        });
                        break;
                    }
                }
            }
            let outcome = match failed {
                Some(e) => Err(Arc::new(e)),
                None => Ok(ImageView::from_indexes(
                    o.image.clone(),
                    o.source.clone(),
                    o.cache.clone(),
                    indexes,
                    o.read_timeout,
                )),
            };
            let _ = o.outcome.set(outcome);
            *o.snapshot.lock() = None;
            o.bump();
        });
        opening
    }

    fn bump(&self) {
        self.tick.send_modify(|g| *g += 1);
    }

    pub(crate) fn source(&self) -> &Source {
        &self.source
    }

    /// The final view, or why there will be none; `None` while indexing.
    pub(crate) fn outcome(&self) -> Option<Result<Arc<ImageView>, ViewError>> {
        self.outcome
            .get()
            .map(|r| r.clone().map_err(ViewError::Opening))
    }

    /// Wait for the final view on behalf of a client request: like
    /// [`finished`](Self::finished), but fails with a timeout if the passes
    /// make no progress for the read timeout (a hung registry), so a request
    /// never waits forever.
    pub(crate) async fn final_view(&self) -> Result<Arc<ImageView>, ViewError> {
        self.wait_final(true).await
    }

    /// Wait for the final view.
    pub(crate) async fn finished(&self) -> Result<Arc<ImageView>, ViewError> {
        self.wait_final(false).await
    }

    async fn wait_final(&self, bounded: bool) -> Result<Arc<ImageView>, ViewError> {
        let mut rx = self.tick.subscribe();
        loop {
            if let Some(r) = self.outcome() {
                return r;
            }
            if bounded {
                self.wait_progress(&mut rx).await?;
            } else {
                // The sender lives as long as `self`.
                let _ = rx.changed().await;
            }
        }
    }

    /// Wait until there is something to serve: the final view (or its
    /// failure), or a streaming pass under way, so serving the provisional
    /// tree is worth it. Indexes that are cached, published or eStargz come
    /// quickly and are waited for; so are errors found before any pass
    /// (a refused media type, a missing blob). Returns whether the final
    /// view is there.
    pub(crate) async fn serveable(&self) -> Result<bool, ViewError> {
        let mut rx = self.tick.subscribe();
        loop {
            match self.outcome() {
                Some(Ok(_)) => return Ok(true),
                Some(Err(e)) => return Err(e),
                None => {}
            }
            if self.slots.iter().any(|s| s.progress.state().dir.is_some()) {
                return Ok(false);
            }
            let _ = rx.changed().await;
        }
    }

    /// The provisional tree, rebuilt if the passes moved on and the last
    /// build is old enough.
    fn snapshot(&self) -> Arc<Snapshot> {
        let generation = *self.tick.borrow();
        let mut cur = self.snapshot.lock();
        if let Some(s) = &*cur {
            let fresh =
                s.generation == generation || s.built.elapsed() < MIN_REBUILD.max(s.cost * 4);
            if fresh {
                return s.clone();
            }
        }
        let started = Instant::now();
        // Layers above `base` are complete; `base` itself may be half-read.
        let base = self
            .slots
            .iter()
            .rposition(|s| s.index.get().is_none())
            .unwrap_or(0);
        let guard = self.slots[base].progress.entries.read();
        let mut tables: Vec<&[crate::layer::Entry]> = Vec::new();
        match self.slots[base].index.get() {
            Some(index) => tables.push(&index.entries),
            None => tables.push(&guard),
        }
        for s in &self.slots[base + 1..] {
            tables.push(&s.index.get().expect("complete above base").entries);
        }
        let tree = Tree::build_partial(base, &tables);
        drop(guard);
        let snap = Arc::new(Snapshot {
            generation,
            built: Instant::now(),
            cost: started.elapsed(),
            base,
            tree,
        });
        *cur = Some(snap.clone());
        snap
    }

    /// A tree of every layer as far as it is known, final for everything
    /// under directory `dir` (relative, e.g. `boot`): either the final
    /// view's, or a merge made once every layer still streaming has moved
    /// past `dir`. Tar writers (docker, podman, buildah, tar, mmdebstrap)
    /// walk a directory's subtree in one go, so once a pass has read an
    /// entry under `dir` and then one outside it, the rest of that layer
    /// adds nothing there. (Caveat, as for the provisional tree: a tar that
    /// names `dir`'s paths again later is not seen until the pass ends.)
    /// This is what lets boot files be served while the image streams:
    /// the boot directory usually comes early and is small.
    pub(crate) async fn settled_tree(&self, dir: &str) -> Result<Settled, ViewError> {
        let mut rx = self.tick.subscribe();
        loop {
            if let Some(r) = self.outcome() {
                return r.map(Settled::Final);
            }
            if let Some(tree) = self.try_settled(dir) {
                return Ok(Settled::Partial(tree));
            }
            self.wait_progress(&mut rx).await?;
        }
    }

    fn try_settled(&self, dir: &str) -> Option<Arc<Tree>> {
        let dir = dir.trim_matches('/');
        let mut guards = Vec::new();
        for slot in &self.slots {
            if slot.index.get().is_some() {
                guards.push(None);
                continue;
            }
            let entries = slot.progress.entries.read();
            if dir.is_empty() || !has_left(&entries, dir) {
                return None;
            }
            guards.push(Some(entries));
        }
        let tables: Vec<&[crate::layer::Entry]> = self
            .slots
            .iter()
            .zip(&guards)
            .map(|(slot, guard)| match guard {
                Some(g) => g.as_slice(),
                None => slot.index.get().expect("checked above").entries.as_slice(),
            })
            .collect();
        // The merge of everything read so far does not depend on `dir`:
        // one tree serves every directory until more entries come in.
        let read: usize = tables.iter().map(|t| t.len()).sum();
        if let Some((n, tree)) = &*self.settled.lock() {
            if *n == read {
                return Some(tree.clone());
            }
        }
        let tree = Arc::new(Tree::build_partial(0, &tables));
        drop(guards);
        *self.settled.lock() = Some((read, tree.clone()));
        Some(tree)
    }

    /// `path`'s final metadata from the provisional tree, if it is known
    /// for sure yet.
    fn known(&self, path: &str) -> Option<Inode> {
        let snap = self.snapshot();
        let mut cur = snap.tree.root();
        if path.is_empty() && snap.tree.is_implied(cur.ino) {
            return None;
        }
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            let ino = cur.child(comp)?;
            if snap.tree.is_implied(ino) {
                return None;
            }
            cur = snap.tree.get(ino)?;
        }
        let mut node = cur.clone();
        node.children = Vec::new();
        node.data = node.data.map(|d| DataRef {
            layer: d.layer + snap.base as u32,
            entry: d.entry,
        });
        Some(node)
    }

    /// Wait until the passes move on; fails if the final view failed, or
    /// nothing moved for the read timeout.
    async fn wait_progress(&self, rx: &mut watch::Receiver<u64>) -> Result<(), ViewError> {
        if let Some(Err(e)) = self.outcome() {
            return Err(e);
        }
        let started = Instant::now();
        match tokio::time::timeout(self.read_timeout, rx.changed()).await {
            Ok(_) => {
                // Let a few more changes pile up before the next rebuild.
                tokio::time::sleep(MIN_REBUILD / 2).await;
                // A request waiting on the stream waits on the registry:
                // its profile says so.
                crate::image::trace::note_wait(started.elapsed());
                Ok(())
            }
            Err(_) => Err(ViewError::Timeout(self.read_timeout)),
        }
    }

    /// Look `path` up: its final metadata as soon as it is known, or the
    /// final view once there is one (also the only way to learn that a name
    /// does not exist).
    pub(crate) async fn lookup(&self, path: &str) -> Result<Found, ViewError> {
        let mut rx = self.tick.subscribe();
        loop {
            if let Some(r) = self.outcome() {
                return r.map(Found::Final);
            }
            if let Some(node) = self.known(path) {
                return Ok(Found::Node(node));
            }
            self.wait_progress(&mut rx).await?;
        }
    }

    /// Read [offset, offset+len) of the file `node` (from [`lookup`](Self::lookup)).
    pub(crate) async fn read(
        &self,
        node: &Inode,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, ViewError> {
        if node.kind != EntryKind::File {
            return Err(ViewError::NotFile(node.ino));
        }
        let end = node.size.min(offset.saturating_add(len as u64));
        let Some(data) = node.data.filter(|_| offset < end) else {
            return Ok(Bytes::new());
        };
        let slot = &self.slots[data.layer as usize];
        let mut rx = self.tick.subscribe();
        loop {
            if let Some(index) = slot.index.get() {
                let entry = &index.entries[data.entry as usize];
                let path = ReadPath {
                    source: &self.source,
                    cache: &self.cache,
                };
                return path.read_entry(index, entry, offset, end).await;
            }
            let state = slot.progress.state();
            if let Some(Err(msg)) = &state.outcome {
                return Err(ViewError::BadData {
                    layer: self.image.layers[data.layer as usize].digest.clone(),
                    msg: msg.clone(),
                });
            }
            // Gone once the index is there (the entries are dropped then).
            let Some(span) = slot
                .progress
                .entries
                .read()
                .get(data.entry as usize)
                .map(|e| PASS_MAP.file_span(e, offset, end))
            else {
                self.wait_progress(&mut rx).await?;
                continue;
            };
            let (first, last) = (span.ids.start, span.ids.end);
            let (lo, hi) = (span.bytes.start, span.bytes.end);
            if let (Some(dir), true) = (&state.dir, state.staged >= last) {
                let dir = dir.clone();
                let layer = self.image.layers[data.layer as usize].digest.clone();
                let staged = tokio::task::spawn_blocking(move || {
                    (first..last)
                        .map(|id| {
                            read_staged(
                                &dir,
                                &ChunkKey {
                                    layer: layer.clone(),
                                    id,
                                },
                            )
                        })
                        .collect::<std::io::Result<Vec<_>>>()
                })
                .await
                .expect("reading staged chunks does not panic");
                // Else committed (or thrown away) under us: look again.
                if let Ok(chunks) = staged {
                    return self.cut(chunks, data.layer, first, lo, hi);
                }
            }
            self.wait_progress(&mut rx).await?;
        }
    }

    /// The staged chunks `first..` (a damaged one is an error), cut to
    /// [lo, hi) of the layer's stream.
    fn cut(
        &self,
        chunks: Vec<Option<Vec<u8>>>,
        layer: u32,
        first: u64,
        lo: u64,
        hi: u64,
    ) -> Result<Bytes, ViewError> {
        let mut whole = Vec::with_capacity(chunks.len());
        for (i, c) in chunks.into_iter().enumerate() {
            let Some(c) = c else {
                return Err(ViewError::BadData {
                    layer: self.image.layers[layer as usize].digest.clone(),
                    msg: format!("staged chunk {} is damaged", first + i as u64),
                });
            };
            whole.push(Bytes::from(c));
        }
        Ok(assemble(&whole, PASS_MAP.chunk_range(first).start, lo, hi))
    }
}

/// Whether a pass that has read `entries` so far will add nothing more
/// under `dir`: it went into `dir` and out again, or (for a layer with no
/// entry under `dir`) it is written in walk order - as Go's
/// `filepath.Walk` (docker, podman, buildah, umoci) and `tar --sort=name`
/// write layers - and has gone past where `dir` would be.
fn has_left(entries: &[crate::layer::Entry], dir: &str) -> bool {
    let under = |e: &crate::layer::Entry| is_under(&e.path, dir);
    if let Some(first) = entries.iter().position(under) {
        return !entries[first..].iter().all(under);
    }
    let in_walk_order = entries
        .windows(2)
        .all(|w| walk_cmp(&w[0].path, &w[1].path).is_le());
    let past = entries
        .last()
        .is_some_and(|e| walk_cmp(&e.path, dir).is_gt());
    in_walk_order && past
}

/// `path` is `dir` or below it.
fn is_under(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The order a depth-first, name-sorted walk visits paths in: component by
/// component (`a/b` before `a-c`, which a plain string sort would swap).
fn walk_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |p| str::split(p, '/').filter(|c: &&str| !c.is_empty() && *c != ".");
    parts(a).cmp(parts(b))
}

#[cfg(test)]
mod settle_tests {
    use super::*;
    use crate::layer::{Entry, EntryKind};

    fn entries(paths: &[&str]) -> Vec<Entry> {
        paths
            .iter()
            .map(|p| Entry::new(p.to_string(), EntryKind::File))
            .collect()
    }

    fn left(paths: &[&str], dir: &str) -> bool {
        has_left(&entries(paths), dir)
    }

    #[test]
    fn a_pass_leaves_a_directory_it_went_through() {
        assert!(!left(&["bin", "boot", "boot/vmlinuz"], "boot"));
        assert!(left(&["bin", "boot", "boot/vmlinuz", "dev"], "boot"));
        // Unsorted, but it went in and out: tar writers emit a subtree in one go.
        assert!(left(&["usr", "boot/vmlinuz", "etc"], "boot"));
    }

    #[test]
    fn a_sorted_pass_without_the_directory_has_passed_it() {
        assert!(left(&["app", "etc", "etc/app.conf"], "boot"));
        assert!(!left(&["app", "at"], "boot"), "not past boot yet");
        // Not in walk order: it may still come.
        assert!(!left(&["etc", "app"], "boot"));
        // Component order: boot-x sorts after boot/..., both after boot.
        assert!(left(&["boot-x"], "boot"));
        assert!(walk_cmp("a/b", "a-c").is_lt());
        assert!(walk_cmp("./etc", "etc").is_eq());
    }
}
