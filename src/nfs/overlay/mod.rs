//! A node's root file system: the image view (lower, read-only) merged with
//! the node's copy-on-write upper directory on the server's disk, with the
//! semantics of Linux overlayfs.
//!
//! On disk, per node (`state_dir/nodes/NAME/`, mode 0700 so that local users
//! of the server cannot reach set-uid copies or device nodes a node made):
//!
//! - `upper/`: the node's changes, laid out like the merged tree.
//! - `work/`: temporary files; every new entry is built here (owner, mode,
//!   xattrs) and renamed into place, so a crash never leaves a half-made
//!   entry in `upper/`. Emptied whenever the overlay is opened.
//! - `index/`: one hard link per copied-up lower non-directory, named by its
//!   lower inode number (overlayfs' "index" feature). It records the file's
//!   origin, and keeps its handle working after it was renamed.
//! - `index.image`: the manifest digest the index numbers belong to. When the
//!   node's image changes, the index is discarded (the upper stays).
//!
//! By concern:
//!
//! - [`state`]: opening and wiping that directory, and the in-memory map of
//!   the upper (names of upper inodes, the index).
//! - [`resolve`]: file ids, and turning them and names into merged entries.
//! - [`whiteout`]: whiteouts and opaque directories, and removal.
//! - [`copy_up`]: copying lower entries into the upper before they change.
//! - [`create`]: new entries, built in `work/` and moved into place.
//! - [`rename`]: rename, and why lower directories never move.
//! - [`attr`]: attributes of merged entries, and applying SETATTR.
//! - [`readdir`]: listing merged directories.
//! - [`lower`]: paths of image inodes, for resolving lower ids.
//! - [`sys`]: file system calls the standard library does not offer.
//! - [`pristine`]: answers from the image alone while the upper is empty.
//! - [`node_fs`]: the [`NodeFs`](crate::nfs::fs::NodeFs) implementation that ties them together.
//!
//! ## Concurrency
//!
//! All file-system work runs in `spawn_blocking` (a pristine overlay's
//! answers need none). Per node, changes to the
//! upper's namespace take a lock for writing and everything that walks upper
//! paths takes it for reading, so a path in use can never have a component
//! swapped for a client's symlink. Files are opened `O_NOFOLLOW` under the
//! lock and checked against the inode that was looked up; data is read and
//! written after it is released. The lock is never held while image data is
//! fetched for a copy-up. `commit` fsyncs the upper file; copy-ups fsync
//! their data before it is linked into place.
//!
//! One overlay per state directory at a time: opening one clears `work/`.

mod attr;
mod copy_up;
mod create;
#[cfg(test)]
mod deep_tests;
mod lower;
mod node_fs;
pub(crate) mod previous;
mod pristine;
mod readdir;
mod rename;
mod resolve;
mod state;
mod sys;
#[cfg(test)]
mod tests;
mod whiteout;

use super::fs::{FileId, FileKind, FsError};
use crate::image::tree::{Tree, ROOT_INO};
use crate::image::ImageView;
use parking_lot::{Mutex, RwLock};
use std::ffi::OsStr;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) use attr::attr_from_inode;
pub(crate) use lower::LowerNames;
use state::State;
pub(crate) use state::{node_state_dir, wipe_node_state};
pub(crate) use sys::fs_stat;

/// Set in the ids of entries that were created in the upper.
pub(crate) const UPPER_ID_BIT: u64 = 1 << 63;
/// Marks an upper directory that hides the lower directory of the same name.
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Xattrs in this namespace belong to the overlay and are never copied up.
const PRIVATE_XATTR_PREFIX: &str = "trusted.overlay.";
/// Bytes per image read during copy-up.
const COPY_CHUNK: u32 = 1 << 20;
const NAME_MAX: usize = 255;

/// One entry of the merged tree, as found by a lookup.
#[derive(Clone, Debug)]
struct Obj {
    id: FileId,
    kind: FileKind,
    /// Merged path relative to the root (one of them, for hard links).
    rel: PathBuf,
    /// The upper file: at `upper/rel`, or for a copied-up lower file found
    /// only through the index, `index/ID`.
    upper: Option<Upper>,
    /// The visible lower inode: for directories the lower half of a merged
    /// directory, for non-directories a file not copied up.
    lower: Option<u64>,
}

#[derive(Clone, Debug)]
struct Upper {
    path: PathBuf,
    meta: Metadata,
    /// `path` is `upper/rel` (not the index link).
    named: bool,
}

impl Obj {
    fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }
}

struct Inner {
    view: Arc<ImageView>,
    names: Arc<LowerNames>,
    upper: PathBuf,
    work: PathBuf,
    index: PathBuf,
    upper_root_ino: u64,
    read_only: bool,
    retired: AtomicBool,
    /// Nothing changed in the upper since it opened empty ([`pristine`]).
    pristine: AtomicBool,
    tmp_seq: AtomicU64,
    /// Changes to the upper's namespace take it for writing; everything
    /// that uses upper paths takes it for reading. So no path component can
    /// be swapped (say, for a client's symlink) while a path is in use, and
    /// multi-step changes are atomic to other callers.
    ns_lock: RwLock<()>,
    state: Mutex<State>,
}

/// A node's merged root file system. Cheap to clone.
#[derive(Clone)]
pub(crate) struct NodeOverlay {
    inner: Arc<Inner>,
}

fn not_found(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// A name a client may look up: one component (`.` and `..` included).
pub(crate) fn check_lookup_name(name: &[u8]) -> Result<(), FsError> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(FsError::NotFound);
    }
    Ok(())
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FsError> + Send + 'static,
) -> Result<T, FsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FsError::Io(format!("file system task failed: {e}")))?
}

fn name_os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

/// A name a client may create or remove.
fn check_name(name: &[u8]) -> Result<(), FsError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(FsError::Inval);
    }
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

impl NodeOverlay {
    /// Open (creating as needed) the overlay whose state is in `dir` (see
    /// [`node_state_dir`]) over `view`.
    #[cfg(test)]
    pub(crate) async fn open(
        view: Arc<ImageView>,
        dir: &Path,
        read_only: bool,
    ) -> io::Result<NodeOverlay> {
        let names = Arc::new(LowerNames::new(view.tree()));
        Self::open_with(view, names, dir, read_only).await
    }

    /// [`NodeOverlay::open`] with the image's [`LowerNames`] shared.
    pub(crate) async fn open_with(
        view: Arc<ImageView>,
        names: Arc<LowerNames>,
        dir: &Path,
        read_only: bool,
    ) -> io::Result<NodeOverlay> {
        let dir = dir.to_path_buf();
        let inner = tokio::task::spawn_blocking(move || Inner::open(view, names, &dir, read_only))
            .await
            .map_err(io::Error::other)??;
        Ok(NodeOverlay {
            inner: Arc::new(inner),
        })
    }

    /// The upper directory on the server.
    #[cfg(test)]
    pub(crate) fn upper_dir(&self) -> &Path {
        &self.inner.upper
    }

    /// A path naming file `id`, for boot profiles: one image path for an
    /// image file (hard links have several), "(upper)" for files the node
    /// made itself.
    pub(crate) fn path_hint(&self, id: FileId) -> String {
        if id & UPPER_ID_BIT != 0 {
            return "(upper)".into();
        }
        let tree = &self.inner.view.tree();
        match self.inner.names.paths(tree, id).into_iter().next() {
            Some(p) => format!("/{}", p.display()),
            None => format!("(file {id})"),
        }
    }

    /// The id clients see for the overlay's id `id`: an image object goes
    /// by its tree's stable file id ([`Inode::fid`](crate::image::Inode)),
    /// which a provisional tree of a still-streaming image gave it too; the
    /// root and the upper's own objects by the overlay's id.
    pub(crate) fn wire_id(&self, id: FileId) -> FileId {
        if id == ROOT_INO || id & UPPER_ID_BIT != 0 {
            return id;
        }
        self.inner.tree().get(id).map_or(id, |i| i.fid)
    }

    /// The overlay's id for the id `wire` a client sent.
    pub(crate) fn overlay_id(&self, wire: FileId) -> Result<FileId, FsError> {
        if wire == ROOT_INO || wire & UPPER_ID_BIT != 0 {
            return Ok(wire);
        }
        self.inner
            .tree()
            .by_fid(wire)
            .map(|i| i.ino)
            .ok_or(FsError::Stale)
    }

    /// Stop serving: every later call fails with `Stale` (its state is about
    /// to be wiped, or another overlay took over the directory).
    pub(crate) fn retire(&self) {
        self.inner.retired.store(true, Ordering::SeqCst);
    }
}

impl Inner {
    fn tree(&self) -> &Tree {
        self.view.tree()
    }

    fn tmp_path(&self) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.work.join(format!("t{n}"))
    }

    fn index_path(&self, lower: u64) -> PathBuf {
        self.index.join(lower.to_string())
    }

    fn check_live(&self) -> Result<(), FsError> {
        if self.retired.load(Ordering::SeqCst) {
            Err(FsError::Stale)
        } else {
            Ok(())
        }
    }

    /// Every change starts here: from now on the upper may differ from
    /// the image, so nothing is answered from the image alone.
    fn check_writable(&self) -> Result<(), FsError> {
        if self.read_only {
            Err(FsError::ReadOnly)
        } else {
            self.check_live()?;
            self.pristine.store(false, Ordering::SeqCst);
            Ok(())
        }
    }
}
