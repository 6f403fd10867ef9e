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
//! ## Whiteouts and opaque directories
//!
//! Exactly as overlayfs writes them, so an upper directory can also be
//! inspected (or mounted) with `mount -t overlay`:
//!
//! - a deleted lower entry is a character device 0:0 in the upper; creating
//!   such a device through [`NodeFs::mknod`] is refused with `Inval`, so a
//!   node can never make a file that reads back as a whiteout;
//! - an opaque directory carries the xattr `trusted.overlay.opaque = "y"`.
//!   NFSv3 cannot set xattrs, and xattrs in `trusted.overlay.*` are not copied
//!   up from the image, so the marker cannot come from a user either.
//!
//! Every directory made with `mkdir` is opaque (it never merges with a lower
//! directory, also not with one a later image adds); directories copied up
//! from the image are not.
//!
//! ## File ids
//!
//! - Lower entries keep their image inode number (`1..`, stable per image).
//!   A merged directory (copied-up, not opaque) keeps the id of its lower
//!   directory, and a copied-up non-directory keeps the id of the lower file
//!   it came from: ids never change under a client's feet. A lower id is
//!   resolved through `index/ID` if the file was copied up (wherever it was
//!   renamed to since), otherwise through its paths in the image (all of
//!   them, for hard links), checking that a path is still visible.
//! - Entries created in the upper get `1 << 63 | st_ino` of the upper
//!   file. An in-memory map from upper inode to (parent inode, name), built
//!   by scanning the upper when the overlay opens and kept up to date by
//!   every change, turns such an id back into a path; `..` of any directory
//!   is the merged lookup of its path's parent.
//!
//! ## Copy-up
//!
//! Before a lower file is changed (write, setattr, link, rename) its content
//! is read through [`ImageView::read`] into `work/` (no lock held, the image
//! may be fetched lazily), fsynced, given the lower owner, mode (incl.
//! set-uid bits, applied after chown), xattrs and mtime, linked to
//! `index/ID` and then linked at every name that still shows the lower file
//! (so lower hard links stay hard links). Directories are copied up
//! (metadata only) whenever something is created or deleted in them.
//!
//! ## Renaming directories
//!
//! Renaming a directory that has a lower part (lower-only or merged) fails
//! with `XDev`, as overlayfs does without `redirect_dir`; `mv` then copies.
//! Directories created in the upper can be renamed freely. Lower directories
//! therefore never move, which keeps lower ids resolvable by path.
//!
//! ## Concurrency
//!
//! All file-system work runs in `spawn_blocking`. Per node, changes to the
//! upper's namespace take a lock for writing and everything that walks upper
//! paths takes it for reading, so a path in use can never have a component
//! swapped for a client's symlink. Files are opened `O_NOFOLLOW` under the
//! lock and checked against the inode that was looked up; data is read and
//! written after it is released. The lock is never held while image data is
//! fetched for a copy-up. `commit` fsyncs the upper file; copy-ups fsync
//! their data before it is linked into place.
//!
//! One overlay per state directory at a time: opening one clears `work/`.

use super::fs::{
    Attr, Cred, DirEntry, FileId, FileKind, FsError, FsStat, NodeFs, SetAttr, SetTime, Time,
};
use crate::image::tree::{Inode, Tree, ROOT_INO};
use crate::image::ImageView;
use crate::layer::EntryKind;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{
    DirEntryExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Set in the ids of entries that were created in the upper.
pub const UPPER_ID_BIT: u64 = 1 << 63;
/// Marks an upper directory that hides the lower directory of the same name.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Xattrs in this namespace belong to the overlay and are never copied up.
const PRIVATE_XATTR_PREFIX: &str = "trusted.overlay.";
/// Bytes per image read during copy-up.
const COPY_CHUNK: u32 = 1 << 20;
const NAME_MAX: usize = 255;

fn upper_id(ino: u64) -> FileId {
    UPPER_ID_BIT | (ino & !UPPER_ID_BIT)
}

/// Where a node's overlay state lives.
pub fn node_state_dir(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join("nodes").join(node)
}

/// Every name of every image inode, so that a lower id can be turned back
/// into paths. Built once per image and shared by the overlays on it.
pub struct LowerNames {
    /// Per inode (index `ino - 1`): (parent ino, position in its children).
    /// The root has parent 0.
    first: Vec<(u64, u32)>,
    /// Further names of non-directories with several links.
    more: HashMap<u64, Vec<(u64, u32)>>,
}

impl LowerNames {
    pub fn new(tree: &Tree) -> LowerNames {
        let mut first = vec![(0u64, 0u32); tree.len()];
        let mut more: HashMap<u64, Vec<(u64, u32)>> = HashMap::new();
        for dir in tree.iter().filter(|i| i.is_dir()) {
            for (pos, (_, child)) in dir.children.iter().enumerate() {
                let Some(slot) = first.get_mut((*child as usize).wrapping_sub(1)) else {
                    continue;
                };
                if slot.0 == 0 {
                    *slot = (dir.ino, pos as u32);
                } else {
                    more.entry(*child).or_default().push((dir.ino, pos as u32));
                }
            }
        }
        LowerNames { first, more }
    }

    fn name_at(tree: &Tree, parent: u64, pos: u32) -> Option<&str> {
        tree.get(parent)?
            .children
            .get(pos as usize)
            .map(|(n, _)| n.as_str())
    }

    /// Every path naming `ino` in the image (relative, "" for the root).
    fn paths(&self, tree: &Tree, ino: u64) -> Vec<PathBuf> {
        if ino == ROOT_INO {
            return vec![PathBuf::new()];
        }
        let Some(&first) = self.first.get((ino as usize).wrapping_sub(1)) else {
            return Vec::new();
        };
        let extra = self.more.get(&ino).map(Vec::as_slice).unwrap_or(&[]);
        let mut out = Vec::new();
        'names: for &(parent, pos) in std::iter::once(&first).chain(extra) {
            let Some(name) = Self::name_at(tree, parent, pos) else {
                continue;
            };
            let mut comps = vec![name];
            let mut cur = parent;
            while cur != ROOT_INO {
                let Some(&(p, i)) = self.first.get((cur as usize).wrapping_sub(1)) else {
                    continue 'names;
                };
                let Some(n) = Self::name_at(tree, p, i) else {
                    continue 'names;
                };
                if comps.len() > 4096 {
                    continue 'names;
                }
                comps.push(n);
                cur = p;
            }
            out.push(comps.iter().rev().collect());
        }
        out
    }
}

/// What the overlay knows about the upper beyond what is on disk.
#[derive(Default)]
struct State {
    /// Every upper inode except whiteouts: its names (parent inode, name).
    links: HashMap<u64, Vec<(u64, Vec<u8>)>>,
    /// Copied-up lower non-directories: lower ino -> upper inode.
    index: HashMap<u64, u64>,
    /// And back: upper inode -> lower ino.
    origin: HashMap<u64, u64>,
}

impl State {
    fn add_link(&mut self, ino: u64, parent: u64, name: &[u8]) {
        let links = self.links.entry(ino).or_default();
        if !links.iter().any(|(p, n)| *p == parent && n == name) {
            links.push((parent, name.to_vec()));
        }
    }

    /// The path of upper inode `ino` relative to the upper root.
    fn path_of(&self, ino: u64, root: u64) -> Option<PathBuf> {
        let mut comps: Vec<&[u8]> = Vec::new();
        let mut cur = ino;
        while cur != root {
            let (parent, name) = self.links.get(&cur)?.first()?;
            comps.push(name);
            cur = *parent;
            if comps.len() > 4096 {
                return None;
            }
        }
        Some(comps.iter().rev().map(|c| OsStr::from_bytes(c)).collect())
    }
}

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
pub struct NodeOverlay {
    inner: Arc<Inner>,
}

fn io_fs(e: io::Error) -> FsError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => FsError::NotFound,
        Some(libc::EEXIST) => FsError::Exists,
        Some(libc::ENOTDIR) => FsError::NotDir,
        Some(libc::EISDIR) => FsError::IsDir,
        Some(libc::ENOTEMPTY) => FsError::NotEmpty,
        Some(libc::EACCES) => FsError::Access,
        Some(libc::EPERM) => FsError::Perm,
        Some(libc::EROFS) => FsError::ReadOnly,
        Some(libc::ENAMETOOLONG) => FsError::NameTooLong,
        Some(libc::EINVAL) => FsError::Inval,
        Some(libc::EXDEV) => FsError::XDev,
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => FsError::NoSpace,
        Some(libc::EOPNOTSUPP) => FsError::NotSupported,
        _ => FsError::Io(e.to_string()),
    }
}

impl From<io::Error> for FsError {
    fn from(e: io::Error) -> Self {
        io_fs(e)
    }
}

fn not_found(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

async fn blocking<T: Send + 'static>(
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

fn lstat(p: &Path) -> io::Result<Metadata> {
    fs::symlink_metadata(p)
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn is_whiteout(m: &Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn kind_of(ft: fs::FileType) -> FileKind {
    if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_char_device() {
        FileKind::CharDevice
    } else if ft.is_block_device() {
        FileKind::BlockDevice
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else if ft.is_socket() {
        FileKind::Socket
    } else {
        FileKind::File
    }
}

fn lower_kind(k: EntryKind) -> FileKind {
    match k {
        EntryKind::File | EntryKind::Hardlink => FileKind::File,
        EntryKind::Dir => FileKind::Dir,
        EntryKind::Symlink => FileKind::Symlink,
        EntryKind::CharDevice => FileKind::CharDevice,
        EntryKind::BlockDevice => FileKind::BlockDevice,
        EntryKind::Fifo => FileKind::Fifo,
    }
}

fn mknod(path: &Path, mode: u32, rdev: (u32, u32)) -> io::Result<()> {
    let c = cpath(path)?;
    let dev = libc::makedev(rdev.0, rdev.1);
    // SAFETY: `c` is a valid NUL-terminated path.
    let r = unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, dev) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mknod_whiteout(path: &Path) -> io::Result<()> {
    mknod(path, libc::S_IFCHR, (0, 0))
}

fn rename2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let (a, b) = (cpath(from)?, cpath(to)?);
    // SAFETY: valid NUL-terminated paths; renameat2 takes no other pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

/// Move `from` to the free name `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match rename2(from, to, libc::RENAME_NOREPLACE) {
        Err(e) if unsupported(&e) => {
            if lstat(to).is_ok() {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            fs::rename(from, to)
        }
        r => r,
    }
}

fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let (c, n) = (cpath(path)?, CString::new(name).expect("xattr name"));
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: valid C strings; buf is writable for buf.len() bytes.
        let r =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::EOPNOTSUPP) => return Ok(None),
            Some(libc::ERANGE) if buf.len() < 1 << 16 => buf.resize(buf.len() * 16, 0),
            _ => return Err(e),
        }
    }
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = cpath(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C strings; value is readable for value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn is_opaque(path: &Path) -> io::Result<bool> {
    Ok(get_xattr(path, OPAQUE_XATTR)?.as_deref() == Some(b"y"))
}

fn timespec(t: Option<SetTime>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(SetTime::ServerNow) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(SetTime::Client(t)) => libc::timespec {
            tv_sec: t.secs as libc::time_t,
            tv_nsec: t.nanos.min(999_999_999) as _,
        },
    }
}

fn set_times(path: &Path, atime: Option<SetTime>, mtime: Option<SetTime>) -> io::Result<()> {
    let c = cpath(path)?;
    let ts = [timespec(atime), timespec(mtime)];
    // SAFETY: valid path and a two-element timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Open the upper file `u` without following a symlink, and check it is
/// still the inode that was looked up.
fn open_upper(u: &Upper, write: bool) -> Result<fs::File, FsError> {
    let f = fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&u.path)
        .map_err(|e| {
            if not_found(&e) || e.raw_os_error() == Some(libc::ELOOP) {
                FsError::Stale
            } else {
                e.into()
            }
        })?;
    if f.metadata()?.ino() != u.meta.ino() {
        return Err(FsError::Stale);
    }
    Ok(f)
}

fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
}

/// Give a freshly made copy the lower inode's owner, mode, xattrs and mtime.
/// chown comes first: it clears set-uid bits.
fn apply_lower_meta(path: &Path, inode: &Inode) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(inode.uid), Some(inode.gid))?;
    if inode.kind != EntryKind::Symlink {
        chmod(path, inode.mode)?;
    }
    for (name, value) in &inode.xattrs {
        if name.starts_with(PRIVATE_XATTR_PREFIX) {
            continue;
        }
        if let Err(e) = set_xattr(path, name, value) {
            tracing::warn!(path = %path.display(), xattr = %name, "copy-up could not set xattr: {e}");
        }
    }
    let t = Some(SetTime::Client(Time {
        secs: inode.mtime,
        nanos: 0,
    }));
    set_times(path, t, t)
}

fn attr_from_meta(id: FileId, m: &Metadata) -> Attr {
    let kind = kind_of(m.file_type());
    let rdev = m.rdev();
    Attr {
        id,
        kind,
        mode: m.mode() & 0o7777,
        nlink: m.nlink().min(u32::MAX as u64) as u32,
        uid: m.uid(),
        gid: m.gid(),
        size: m.size(),
        used: m.blocks() * 512,
        rdev: if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
            (libc::major(rdev), libc::minor(rdev))
        } else {
            (0, 0)
        },
        atime: Time {
            secs: m.atime(),
            nanos: m.atime_nsec() as u32,
        },
        mtime: Time {
            secs: m.mtime(),
            nanos: m.mtime_nsec() as u32,
        },
        ctime: Time {
            secs: m.ctime(),
            nanos: m.ctime_nsec() as u32,
        },
    }
}

fn attr_from_inode(i: &Inode) -> Attr {
    let t = Time {
        secs: i.mtime,
        nanos: 0,
    };
    Attr {
        id: i.ino,
        kind: lower_kind(i.kind),
        mode: i.mode & 0o7777,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        size: i.size,
        used: i.size.div_ceil(512) * 512,
        rdev: (i.rdev_major, i.rdev_minor),
        atime: t,
        mtime: t,
        ctime: t,
    }
}

/// Remove what an interrupted change left in `dir`, then recreate it.
fn reset_dir(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fs::create_dir_all(dir)
}

/// Discard a node's upper and index (ephemeral roots, at each boot). The
/// directories are first renamed into `work/`, so they vanish at once and a
/// crash half-way leaves only what the next open clears anyway.
pub fn wipe_node_state(dir: &Path) -> io::Result<()> {
    let work = dir.join("work");
    fs::create_dir_all(&work)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for name in ["upper", "index", "index.image"] {
        match fs::rename(dir.join(name), work.join(format!("old-{name}-{stamp}"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    reset_dir(&work)
}

impl NodeOverlay {
    /// Open (creating as needed) the overlay whose state is in `dir` (see
    /// [`node_state_dir`]) over `view`.
    pub async fn open(
        view: Arc<ImageView>,
        dir: &Path,
        read_only: bool,
    ) -> io::Result<NodeOverlay> {
        let names = Arc::new(LowerNames::new(view.tree()));
        Self::open_with(view, names, dir, read_only).await
    }

    /// [`NodeOverlay::open`] with the image's [`LowerNames`] shared.
    pub async fn open_with(
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
    pub fn upper_dir(&self) -> &Path {
        &self.inner.upper
    }

    pub fn view(&self) -> &Arc<ImageView> {
        &self.inner.view
    }

    /// A path naming file `id`, for boot profiles: one image path for an
    /// image file (hard links have several), "(upper)" for files the node
    /// made itself.
    pub fn path_hint(&self, id: FileId) -> String {
        if id & UPPER_ID_BIT != 0 {
            return "(upper)".into();
        }
        let tree = &self.inner.view.tree();
        match self.inner.names.paths(tree, id).into_iter().next() {
            Some(p) => format!("/{}", p.display()),
            None => format!("(file {id})"),
        }
    }

    /// Stop serving: every later call fails with `Stale` (its state is about
    /// to be wiped, or another overlay took over the directory).
    pub fn retire(&self) {
        self.inner.retired.store(true, Ordering::SeqCst);
    }
}

impl Inner {
    fn open(
        view: Arc<ImageView>,
        names: Arc<LowerNames>,
        dir: &Path,
        read_only: bool,
    ) -> io::Result<Inner> {
        fs::create_dir_all(dir)?;
        chmod(dir, 0o700)?;
        let (upper, work, index) = (dir.join("upper"), dir.join("work"), dir.join("index"));
        reset_dir(&work)?;
        if let Err(e) = lstat(&upper) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
            let tmp = work.join("new-upper");
            fs::create_dir(&tmp)?;
            apply_lower_meta(&tmp, view.tree().root())?;
            fs::rename(&tmp, &upper)?;
        }
        // Index numbers only mean something for the image they were made for.
        let image_file = dir.join("index.image");
        let image_id = view.manifest_digest().as_str().to_string();
        let recorded = fs::read_to_string(&image_file).unwrap_or_default();
        if recorded.trim() != image_id {
            reset_dir(&index)?;
            let tmp = work.join("index.image");
            fs::write(&tmp, format!("{image_id}\n"))?;
            fs::File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &image_file)?;
        } else {
            fs::create_dir_all(&index)?;
        }
        let root_meta = lstat(&upper)?;
        let mut state = State::default();
        scan_upper(&upper, root_meta.ino(), root_meta.dev(), &mut state.links)?;
        for e in fs::read_dir(&index)? {
            let e = e?;
            let path = e.path();
            let lower = std::str::from_utf8(e.file_name().as_bytes())
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            let m = lstat(&path)?;
            let valid = lower
                .and_then(|l| view.tree().get(l))
                .is_some_and(|i| !i.is_dir())
                && !m.is_dir()
                && state.links.contains_key(&m.ino());
            match lower {
                // An index entry without names: a copy-up interrupted before
                // its names were linked, or a leftover.
                Some(l) if valid => {
                    state.index.insert(l, m.ino());
                    state.origin.insert(m.ino(), l);
                }
                _ => {
                    if m.is_dir() {
                        fs::remove_dir_all(&path)?;
                    } else {
                        fs::remove_file(&path)?;
                    }
                }
            }
        }
        Ok(Inner {
            view,
            names,
            upper,
            work,
            index,
            upper_root_ino: root_meta.ino(),
            read_only,
            retired: AtomicBool::new(false),
            tmp_seq: AtomicU64::new(0),
            ns_lock: RwLock::new(()),
            state: Mutex::new(state),
        })
    }

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

    fn check_writable(&self) -> Result<(), FsError> {
        if self.read_only {
            Err(FsError::ReadOnly)
        } else {
            self.check_live()
        }
    }

    fn lower_child(&self, dir: Option<u64>, name: &[u8]) -> Option<&Inode> {
        let name = std::str::from_utf8(name).ok()?;
        self.tree().lookup(dir?, name)
    }

    fn root_obj(&self) -> io::Result<Obj> {
        let meta = lstat(&self.upper)?;
        Ok(Obj {
            id: ROOT_INO,
            kind: FileKind::Dir,
            rel: PathBuf::new(),
            upper: Some(Upper {
                path: self.upper.clone(),
                meta,
                named: true,
            }),
            lower: Some(ROOT_INO),
        })
    }

    /// The entry `upper/rel` (found at `path`, not a whiteout) whose merged
    /// parent directory has the lower half `parent_lower`.
    fn upper_obj(
        &self,
        parent_lower: Option<u64>,
        name: &[u8],
        rel: PathBuf,
        path: PathBuf,
        meta: Metadata,
    ) -> io::Result<Obj> {
        let kind = kind_of(meta.file_type());
        let (id, lower) = if meta.is_dir() {
            let lower = match self.lower_child(parent_lower, name) {
                Some(l) if l.is_dir() && !is_opaque(&path)? => Some(l.ino),
                _ => None,
            };
            (lower.unwrap_or_else(|| upper_id(meta.ino())), lower)
        } else {
            let origin = self.state.lock().origin.get(&meta.ino()).copied();
            (origin.unwrap_or_else(|| upper_id(meta.ino())), None)
        };
        Ok(Obj {
            id,
            kind,
            rel,
            upper: Some(Upper {
                path,
                meta,
                named: true,
            }),
            lower,
        })
    }

    /// A lower entry with no upper entry at its name.
    fn lower_obj(&self, l: &Inode, rel: PathBuf) -> io::Result<Obj> {
        let kind = lower_kind(l.kind);
        if !l.is_dir() {
            let up = self.state.lock().index.get(&l.ino).copied();
            if let Some(up) = up {
                let path = self.index_path(l.ino);
                if let Ok(meta) = lstat(&path) {
                    if meta.ino() == up {
                        return Ok(Obj {
                            id: l.ino,
                            kind,
                            rel,
                            upper: Some(Upper {
                                path,
                                meta,
                                named: false,
                            }),
                            lower: None,
                        });
                    }
                }
            }
        }
        Ok(Obj {
            id: l.ino,
            kind,
            rel,
            upper: None,
            lower: Some(l.ino),
        })
    }

    /// Look `name` up in the merged directory `dir`.
    fn child(&self, dir: &Obj, name: &[u8]) -> io::Result<Option<Obj>> {
        let rel = dir.rel.join(name_os(name));
        if let Some(u) = &dir.upper {
            let path = u.path.join(name_os(name));
            match lstat(&path) {
                Ok(m) if is_whiteout(&m) => return Ok(None),
                Ok(m) => return self.upper_obj(dir.lower, name, rel, path, m).map(Some),
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        match self.lower_child(dir.lower, name) {
            Some(l) => self.lower_obj(l, rel).map(Some),
            None => Ok(None),
        }
    }

    /// Resolve a merged path from the root.
    fn walk(&self, rel: &Path) -> io::Result<Option<Obj>> {
        let mut cur = self.root_obj()?;
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                continue;
            };
            if !cur.is_dir() {
                return Ok(None);
            }
            match self.child(&cur, name.as_bytes())? {
                Some(o) => cur = o,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// The entry a file id stands for now.
    fn resolve(&self, id: FileId) -> Result<Obj, FsError> {
        self.check_live()?;
        if id == ROOT_INO {
            return Ok(self.root_obj()?);
        }
        if id & UPPER_ID_BIT != 0 {
            return self.resolve_upper(id);
        }
        let inode = self.tree().get(id).ok_or(FsError::Stale)?;
        if !inode.is_dir() {
            let up = self.state.lock().index.get(&id).copied();
            if let Some(up) = up {
                return self.resolve_indexed(id, up);
            }
        }
        for rel in self.names.paths(self.tree(), id) {
            if let Some(o) = self.walk(&rel)? {
                if o.id == id {
                    return Ok(o);
                }
            }
        }
        Err(FsError::Stale)
    }

    fn resolve_indexed(&self, id: FileId, up: u64) -> Result<Obj, FsError> {
        let inode = self.tree().get(id).ok_or(FsError::Stale)?;
        let rel = self.state.lock().path_of(up, self.upper_root_ino);
        if let Some(rel) = rel {
            let path = self.upper.join(&rel);
            if let Ok(meta) = lstat(&path) {
                if meta.ino() == up {
                    return Ok(Obj {
                        id,
                        kind: kind_of(meta.file_type()),
                        rel,
                        upper: Some(Upper {
                            path,
                            meta,
                            named: true,
                        }),
                        lower: None,
                    });
                }
            }
        }
        let path = self.index_path(id);
        match lstat(&path) {
            Ok(meta) if meta.ino() == up => Ok(Obj {
                id,
                kind: lower_kind(inode.kind),
                rel: PathBuf::new(),
                upper: Some(Upper {
                    path,
                    meta,
                    named: false,
                }),
                lower: None,
            }),
            _ => Err(FsError::Stale),
        }
    }

    fn resolve_upper(&self, id: FileId) -> Result<Obj, FsError> {
        let ino = id & !UPPER_ID_BIT;
        let rel = self
            .state
            .lock()
            .path_of(ino, self.upper_root_ino)
            .ok_or(FsError::Stale)?;
        let path = self.upper.join(&rel);
        let meta = match lstat(&path) {
            Ok(m) if m.ino() == ino && !is_whiteout(&m) => m,
            Ok(_) => return Err(FsError::Stale),
            Err(e) if not_found(&e) => return Err(FsError::Stale),
            Err(e) => return Err(e.into()),
        };
        if meta.is_dir() {
            if !is_opaque(&path)? {
                // It may merge with a lower directory: the walk decides its id.
                return match self.walk(&rel)? {
                    Some(o) if o.id == id => Ok(o),
                    _ => Err(FsError::Stale),
                };
            }
        } else if self.state.lock().origin.contains_key(&ino) {
            // A copied-up file goes by its lower id.
            return Err(FsError::Stale);
        }
        Ok(Obj {
            id,
            kind: kind_of(meta.file_type()),
            rel,
            upper: Some(Upper {
                path,
                meta,
                named: true,
            }),
            lower: None,
        })
    }

    fn dir_obj(&self, id: FileId) -> Result<Obj, FsError> {
        let d = self.resolve(id)?;
        if !d.is_dir() {
            return Err(FsError::NotDir);
        }
        Ok(d)
    }

    fn attr(&self, o: &Obj) -> Result<Attr, FsError> {
        match &o.upper {
            Some(u) => Ok(self.attr_upper(o.id, o.lower.is_some(), &u.meta)),
            None => {
                let l = o.lower.ok_or(FsError::Stale)?;
                let inode = self.tree().get(l).ok_or(FsError::Stale)?;
                Ok(attr_from_inode(inode))
            }
        }
    }

    fn attr_upper(&self, id: FileId, merged: bool, meta: &Metadata) -> Attr {
        let mut a = attr_from_meta(id, meta);
        if a.kind == FileKind::Dir {
            if merged {
                // Unknown, as overlayfs says for merged directories.
                a.nlink = 1;
            }
        } else if self.state.lock().origin.contains_key(&meta.ino()) {
            // Do not count the index link.
            a.nlink = a.nlink.saturating_sub(1).max(1);
        }
        a
    }

    /// The upper directory for merged directory `rel`, copying it and its
    /// ancestors up as needed: (path, inode).
    fn ensure_dir_upper(&self, rel: &Path) -> Result<(PathBuf, u64), FsError> {
        let mut path = self.upper.clone();
        let mut ino = self.upper_root_ino;
        let mut lower = Some(ROOT_INO);
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                continue;
            };
            let next = path.join(name);
            lower = self
                .lower_child(lower, name.as_bytes())
                .filter(|l| l.is_dir())
                .map(|l| l.ino);
            match lstat(&next) {
                Ok(m) if m.is_dir() => {
                    if lower.is_some() && is_opaque(&next)? {
                        lower = None;
                    }
                    path = next;
                    ino = m.ino();
                }
                Ok(_) => return Err(FsError::NotDir),
                Err(e) if not_found(&e) => {
                    let inode = lower
                        .and_then(|l| self.tree().get(l))
                        .ok_or(FsError::NotFound)?;
                    let tmp = self.tmp_path();
                    fs::create_dir(&tmp)?;
                    let made =
                        apply_lower_meta(&tmp, inode).and_then(|_| rename_noreplace(&tmp, &next));
                    if let Err(e) = made {
                        let _ = fs::remove_dir(&tmp);
                        return Err(e.into());
                    }
                    let m = lstat(&next)?;
                    self.state.lock().add_link(m.ino(), ino, name.as_bytes());
                    path = next;
                    ino = m.ino();
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok((path, ino))
    }

    /// Finish copying up lower non-directory `l` (its data, for a regular
    /// file, is in `tmp`): index link, then every name still showing it.
    /// Also links names an earlier, interrupted copy-up did not get to.
    fn finish_copy_up(&self, l: u64, tmp: Option<PathBuf>) -> Result<(), FsError> {
        let result = self.finish_copy_up_inner(l, tmp.as_deref());
        if let Some(t) = tmp {
            let _ = fs::remove_file(t);
        }
        result
    }

    fn finish_copy_up_inner(&self, l: u64, data: Option<&Path>) -> Result<(), FsError> {
        let _g = self.ns_lock.write();
        self.check_live()?;
        let inode = self.tree().get(l).ok_or(FsError::Stale)?;
        // Names that still show the lower file.
        let mut visible = Vec::new();
        for rel in self.names.paths(self.tree(), l) {
            let (Some(parent_rel), Some(name)) = (rel.parent(), rel.file_name()) else {
                continue;
            };
            let Some(parent) = self.walk(parent_rel)? else {
                continue;
            };
            if !parent.is_dir() {
                continue;
            }
            if let Some(o) = self.child(&parent, name.as_bytes())? {
                if o.id == l && !o.upper.as_ref().is_some_and(|u| u.named) {
                    visible.push(rel.clone());
                }
            }
        }
        let idx = self.index_path(l);
        let indexed = self.state.lock().index.get(&l).copied();
        let up_ino = match indexed {
            Some(ino) => ino,
            None => {
                if visible.is_empty() {
                    return Err(FsError::Stale);
                }
                // The copy: the fetched data, or a new special file.
                let copy = match data {
                    Some(d) => d.to_path_buf(),
                    None => {
                        let tmp = self.tmp_path();
                        let dev = (inode.rdev_major, inode.rdev_minor);
                        match inode.kind {
                            EntryKind::Symlink => std::os::unix::fs::symlink(
                                inode.symlink.as_deref().unwrap_or(""),
                                &tmp,
                            ),
                            EntryKind::CharDevice => mknod(&tmp, libc::S_IFCHR | 0o600, dev),
                            EntryKind::BlockDevice => mknod(&tmp, libc::S_IFBLK | 0o600, dev),
                            EntryKind::Fifo => mknod(&tmp, libc::S_IFIFO | 0o600, (0, 0)),
                            // A regular file whose (empty) data was not fetched.
                            _ => fs::File::create_new(&tmp).map(|_| ()),
                        }?;
                        tmp
                    }
                };
                let made = apply_lower_meta(&copy, inode).and_then(|_| {
                    let _ = fs::remove_file(&idx);
                    fs::hard_link(&copy, &idx)
                });
                if data.is_none() {
                    let _ = fs::remove_file(&copy);
                }
                made?;
                let ino = lstat(&idx)?.ino();
                let mut st = self.state.lock();
                st.index.insert(l, ino);
                st.origin.insert(ino, l);
                ino
            }
        };
        let mut linked = 0;
        for rel in visible {
            let (Some(parent_rel), Some(name)) = (rel.parent(), rel.file_name()) else {
                continue;
            };
            let (pu, pino) = self.ensure_dir_upper(parent_rel)?;
            fs::hard_link(&idx, pu.join(name))?;
            self.state.lock().add_link(up_ino, pino, name.as_bytes());
            linked += 1;
        }
        if indexed.is_none() && linked == 0 {
            self.forget_index(l);
        }
        Ok(())
    }

    fn forget_index(&self, l: u64) {
        let mut st = self.state.lock();
        if let Some(ino) = st.index.remove(&l) {
            st.origin.remove(&ino);
            st.links.remove(&ino);
        }
        drop(st);
        let _ = fs::remove_file(self.index_path(l));
    }

    /// Forget the name (parent, name) of upper inode `ino`; a copied-up file
    /// without names left loses its index link.
    fn drop_link(&self, ino: u64, parent: u64, name: &[u8]) {
        let mut st = self.state.lock();
        let Some(links) = st.links.get_mut(&ino) else {
            return;
        };
        links.retain(|(p, n)| !(*p == parent && n == name));
        if links.is_empty() {
            st.links.remove(&ino);
            if let Some(l) = st.origin.remove(&ino) {
                st.index.remove(&l);
                drop(st);
                let _ = fs::remove_file(self.index_path(l));
            }
        }
    }

    /// Move the entry built at `tmp` to the free name `name` of upper
    /// directory `pu`, replacing a whiteout there.
    fn place(&self, tmp: &Path, pu: &Path, name: &[u8], is_dir: bool) -> io::Result<()> {
        let target = pu.join(name_os(name));
        match lstat(&target) {
            Ok(m) if is_whiteout(&m) => {
                if is_dir {
                    // A directory cannot replace a device: swap, then drop
                    // the whiteout that is now at `tmp`.
                    match rename2(tmp, &target, libc::RENAME_EXCHANGE) {
                        Ok(()) => fs::remove_file(tmp),
                        Err(e) if unsupported(&e) => {
                            fs::remove_file(&target)?;
                            fs::rename(tmp, &target)
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    fs::rename(tmp, &target)
                }
            }
            Ok(_) => Err(io::Error::from_raw_os_error(libc::EEXIST)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => rename_noreplace(tmp, &target),
            Err(e) => Err(e),
        }
    }

    /// Owner and mode for a new entry in merged directory `dir`: the
    /// caller's, with the directory's group if it is set-gid (as Linux does).
    fn new_owner(&self, dir: &Obj, cred: &Cred, mode: u32, is_dir: bool) -> (u32, u32, u32) {
        let dattr = self.attr(dir).ok();
        let mut mode = mode & 0o7777;
        let mut gid = cred.gid;
        if let Some(d) = dattr.filter(|d| d.mode & libc::S_ISGID != 0) {
            gid = d.gid;
            if is_dir {
                mode |= libc::S_ISGID;
            }
        }
        if !is_dir
            && mode & libc::S_ISGID != 0
            && cred.uid != 0
            && gid != cred.gid
            && !cred.gids.contains(&gid)
        {
            mode &= !libc::S_ISGID;
        }
        (cred.uid, gid, mode)
    }

    /// Create a new entry `name` in directory `dir`: `make` builds it at a
    /// temporary path, then it gets its owner and mode and is moved into
    /// place. Returns its id.
    fn create_entry(
        &self,
        dir: FileId,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        cred: &Cred,
        make: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<FileId, FsError> {
        check_name(name)?;
        let _g = self.ns_lock.write();
        self.check_writable()?;
        let d = self.dir_obj(dir)?;
        if self.child(&d, name)?.is_some() {
            return Err(FsError::Exists);
        }
        self.create_in(&d, name, kind, mode, cred, make)
    }

    fn create_in(
        &self,
        d: &Obj,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        cred: &Cred,
        make: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<FileId, FsError> {
        let is_dir = kind == FileKind::Dir;
        let (uid, gid, mode) = self.new_owner(d, cred, mode, is_dir);
        let (pu, pino) = self.ensure_dir_upper(&d.rel)?;
        let tmp = self.tmp_path();
        make(&tmp)?;
        let finish = || -> io::Result<()> {
            std::os::unix::fs::lchown(&tmp, Some(uid), Some(gid))?;
            if kind != FileKind::Symlink {
                chmod(&tmp, mode)?;
            }
            if is_dir {
                set_xattr(&tmp, OPAQUE_XATTR, b"y")?;
            }
            self.place(&tmp, &pu, name, is_dir)
        };
        if let Err(e) = finish() {
            let _ = fs::remove_dir_all(&tmp).or_else(|_| fs::remove_file(&tmp));
            return Err(e.into());
        }
        let m = lstat(&pu.join(name_os(name)))?;
        self.state.lock().add_link(m.ino(), pino, name);
        Ok(upper_id(m.ino()))
    }

    /// Whether merged directory `o` has no entries.
    fn is_empty(&self, o: &Obj) -> Result<bool, FsError> {
        let mut whiteouts: HashSet<Vec<u8>> = HashSet::new();
        if let Some(u) = &o.upper {
            for e in fs::read_dir(&u.path)? {
                let e = e?;
                if e.file_type()?.is_char_device() && is_whiteout(&e.metadata()?) {
                    whiteouts.insert(e.file_name().as_bytes().to_vec());
                    continue;
                }
                return Ok(false);
            }
        }
        if let Some(inode) = o.lower.and_then(|l| self.tree().get(l)) {
            if inode
                .children
                .iter()
                .any(|(n, _)| !whiteouts.contains(n.as_bytes()))
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Replace the upper entry at `path` by a whiteout, atomically.
    fn whiteout_over(&self, path: &Path, is_dir: bool) -> io::Result<()> {
        let wh = self.tmp_path();
        mknod_whiteout(&wh)?;
        if !is_dir {
            let r = fs::rename(&wh, path);
            if r.is_err() {
                let _ = fs::remove_file(&wh);
            }
            return r;
        }
        match rename2(&wh, path, libc::RENAME_EXCHANGE) {
            // The directory is now at `wh`.
            Ok(()) => fs::remove_dir_all(&wh),
            Err(e) if unsupported(&e) => {
                let trash = self.tmp_path();
                fs::rename(path, &trash)?;
                fs::rename(&wh, path)?;
                fs::remove_dir_all(&trash)
            }
            Err(e) => {
                let _ = fs::remove_file(&wh);
                Err(e)
            }
        }
    }

    fn remove_blocking(&self, dir: FileId, name: &[u8], want_dir: bool) -> Result<(), FsError> {
        check_name(name)?;
        let _g = self.ns_lock.write();
        self.check_writable()?;
        let d = self.dir_obj(dir)?;
        let e = self.child(&d, name)?.ok_or(FsError::NotFound)?;
        match (want_dir, e.is_dir()) {
            (false, true) => return Err(FsError::IsDir),
            (true, false) => return Err(FsError::NotDir),
            (true, true) if !self.is_empty(&e)? => return Err(FsError::NotEmpty),
            _ => {}
        }
        let need_whiteout = self.lower_child(d.lower, name).is_some();
        match (&e.upper, &d.upper) {
            (Some(u), Some(du)) if u.named => {
                if need_whiteout {
                    self.whiteout_over(&u.path, want_dir)?;
                } else if want_dir {
                    let trash = self.tmp_path();
                    fs::rename(&u.path, &trash)?;
                    fs::remove_dir_all(&trash)?;
                } else {
                    fs::remove_file(&u.path)?;
                }
                if want_dir {
                    self.state.lock().links.remove(&u.meta.ino());
                } else {
                    self.drop_link(u.meta.ino(), du.meta.ino(), name);
                }
            }
            _ => {
                let (pu, _) = self.ensure_dir_upper(&d.rel)?;
                mknod_whiteout(&pu.join(name_os(name)))?;
            }
        }
        Ok(())
    }

    /// The rename itself. `Ok(Some(src))`: the source is a lower file that
    /// must be copied up first.
    fn rename_blocking(
        &self,
        from_dir: FileId,
        from: &[u8],
        to_dir: FileId,
        to: &[u8],
    ) -> Result<Option<Obj>, FsError> {
        check_name(from)?;
        check_name(to)?;
        let _g = self.ns_lock.write();
        self.check_writable()?;
        let fd = self.dir_obj(from_dir)?;
        let td = self.dir_obj(to_dir)?;
        let src = self.child(&fd, from)?.ok_or(FsError::NotFound)?;
        if src.is_dir() && src.lower.is_some() {
            return Err(FsError::XDev);
        }
        if src.is_dir() && td.rel.starts_with(&src.rel) {
            // Into itself: refused before anything is touched.
            return Err(FsError::Inval);
        }
        let dst = self.child(&td, to)?;
        if let Some(dst) = &dst {
            if dst.id == src.id {
                return Ok(None);
            }
            match (src.is_dir(), dst.is_dir()) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !self.is_empty(dst)? => return Err(FsError::NotEmpty),
                _ => {}
            }
        }
        let (Some(su), Some(fdu)) = (src.upper.as_ref().filter(|u| u.named), &fd.upper) else {
            // Still (partly) in the lower: copy up, then try again.
            return Ok(Some(src));
        };
        let (tpu, tpino) = self.ensure_dir_upper(&td.rel)?;
        let target = tpu.join(name_os(to));
        let need_whiteout = self.lower_child(fd.lower, from).is_some();
        let tmeta = match lstat(&target) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let target_whiteout = tmeta.as_ref().is_some_and(is_whiteout);
        if tmeta.as_ref().is_some_and(|m| m.is_dir()) {
            // An empty merged directory: only whiteouts, which go with it.
            for e in fs::read_dir(&target)? {
                fs::remove_file(e?.path())?;
            }
        }
        if src.is_dir() && target_whiteout {
            rename2(&su.path, &target, libc::RENAME_EXCHANGE)
                .or_else(|e| {
                    if unsupported(&e) {
                        fs::remove_file(&target)?;
                        fs::rename(&su.path, &target)?;
                        if need_whiteout {
                            mknod_whiteout(&su.path)?;
                        }
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .and_then(|_| {
                    // The old whiteout is now at the source.
                    if !need_whiteout && lstat(&su.path).is_ok_and(|m| is_whiteout(&m)) {
                        fs::remove_file(&su.path)?;
                    }
                    Ok(())
                })?;
        } else if need_whiteout {
            match rename2(&su.path, &target, libc::RENAME_WHITEOUT) {
                Ok(()) => {}
                Err(e) if unsupported(&e) => {
                    fs::rename(&su.path, &target)?;
                    mknod_whiteout(&su.path)?;
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            fs::rename(&su.path, &target)?;
        }
        if src.is_dir() {
            set_xattr(&target, OPAQUE_XATTR, b"y")?;
        }
        if let Some(m) = tmeta.filter(|m| !is_whiteout(m)) {
            if m.is_dir() {
                self.state.lock().links.remove(&m.ino());
            } else {
                self.drop_link(m.ino(), tpino, to);
            }
        }
        let mut st = self.state.lock();
        let links = st.links.entry(su.meta.ino()).or_default();
        links.retain(|(p, n)| !(*p == fdu.meta.ino() && n == from));
        links.push((tpino, to.to_vec()));
        Ok(None)
    }

    /// Apply `set` to `o`, which is in the upper.
    fn apply_setattr(&self, o: &Obj, set: &SetAttr) -> Result<(), FsError> {
        let u = o.upper.as_ref().ok_or(FsError::Stale)?;
        if let Some(size) = set.size {
            match o.kind {
                FileKind::File => {
                    let f = fs::OpenOptions::new().write(true).open(&u.path)?;
                    f.set_len(size)?;
                }
                FileKind::Dir => return Err(FsError::IsDir),
                _ => return Err(FsError::Inval),
            }
        }
        if set.uid.is_some() || set.gid.is_some() {
            std::os::unix::fs::lchown(&u.path, set.uid, set.gid)?;
        }
        if let Some(mode) = set.mode {
            if o.kind != FileKind::Symlink {
                chmod(&u.path, mode)?;
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            set_times(&u.path, set.atime, set.mtime)?;
        }
        Ok(())
    }

    fn readdir_blocking(
        &self,
        dir: FileId,
        cookie: u64,
        max: usize,
    ) -> Result<(Vec<DirEntry>, bool), FsError> {
        let d = self.dir_obj(dir)?;
        let lower_children: &[(String, u64)] = d
            .lower
            .and_then(|l| self.tree().get(l))
            .map_or(&[], |i| i.children.as_slice());
        let start = usize::try_from(cookie).unwrap_or(usize::MAX);
        // Lower-only directory: the tree's sorted children are the listing.
        let Some(du) = &d.upper else {
            let out = lower_children
                .iter()
                .enumerate()
                .skip(start)
                .take(max)
                .map(|(i, (n, ino))| DirEntry {
                    id: *ino,
                    name: n.as_bytes().to_vec(),
                    cookie: i as u64 + 1,
                })
                .collect();
            return Ok((out, start.saturating_add(max) >= lower_children.len()));
        };
        enum Src {
            Upper(fs::FileType, u64),
            Lower(u64),
        }
        let mut hidden: HashSet<Vec<u8>> = HashSet::new();
        let mut all: Vec<(Vec<u8>, Src)> = Vec::new();
        for e in fs::read_dir(&du.path)? {
            let e = e?;
            let name = e.file_name().as_bytes().to_vec();
            let ft = e.file_type()?;
            if ft.is_char_device() && is_whiteout(&e.metadata()?) {
                hidden.insert(name);
                continue;
            }
            hidden.insert(name.clone());
            all.push((name, Src::Upper(ft, e.ino())));
        }
        for (n, ino) in lower_children {
            if !hidden.contains(n.as_bytes()) {
                all.push((n.as_bytes().to_vec(), Src::Lower(*ino)));
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let eof = start.saturating_add(max) >= all.len();
        let mut out = Vec::new();
        for (i, (name, src)) in all.into_iter().enumerate().skip(start).take(max) {
            let id = match src {
                Src::Lower(ino) => ino,
                Src::Upper(ft, ino) if ft.is_dir() => {
                    match self.lower_child(d.lower, &name).filter(|l| l.is_dir()) {
                        Some(l) if !is_opaque(&du.path.join(name_os(&name)))? => l.ino,
                        _ => upper_id(ino),
                    }
                }
                Src::Upper(_, ino) => self
                    .state
                    .lock()
                    .origin
                    .get(&ino)
                    .copied()
                    .unwrap_or_else(|| upper_id(ino)),
            };
            out.push(DirEntry {
                id,
                name,
                cookie: i as u64 + 1,
            });
        }
        Ok((out, eof))
    }
}

/// Record every upper inode's names (whiteouts excepted).
fn scan_upper(
    root: &Path,
    root_ino: u64,
    dev: u64,
    links: &mut HashMap<u64, Vec<(u64, Vec<u8>)>>,
) -> io::Result<()> {
    let mut todo = vec![(root.to_path_buf(), root_ino)];
    while let Some((dir, dir_ino)) = todo.pop() {
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_char_device() && is_whiteout(&e.metadata()?) {
                continue;
            }
            let name = e.file_name().as_bytes().to_vec();
            links.entry(e.ino()).or_default().push((dir_ino, name));
            if ft.is_dir() && e.metadata()?.dev() == dev {
                todo.push((e.path(), e.ino()));
            }
        }
    }
    Ok(())
}

impl NodeOverlay {
    /// Copy lower object `o` up: directories (and their ancestors) as
    /// metadata, non-directories with their data (at most `limit` bytes).
    async fn copy_up(&self, o: &Obj, limit: Option<u64>) -> Result<(), FsError> {
        let inner = self.inner.clone();
        if o.is_dir() {
            let rel = o.rel.clone();
            return blocking(move || {
                let _g = inner.ns_lock.write();
                inner.check_writable()?;
                inner.ensure_dir_upper(&rel).map(|_| ())
            })
            .await;
        }
        let l = o.lower.or(Some(o.id)).filter(|&l| l & UPPER_ID_BIT == 0);
        let l = l.ok_or(FsError::Stale)?;
        let inode = inner.tree().get(l).ok_or(FsError::Stale)?;
        let indexed = inner.state.lock().index.contains_key(&l);
        let tmp = if inode.kind == EntryKind::File && !indexed {
            Some(
                self.fetch_lower(l, inode.size.min(limit.unwrap_or(u64::MAX)))
                    .await?,
            )
        } else {
            None
        };
        blocking(move || inner.finish_copy_up(l, tmp)).await
    }

    /// The first `size` bytes of lower file `l`, in a new file in `work/`.
    async fn fetch_lower(&self, l: u64, size: u64) -> Result<PathBuf, FsError> {
        use tokio::io::AsyncWriteExt;
        let tmp = self.inner.tmp_path();
        let result: Result<(), FsError> = async {
            let mut f = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .await?;
            let mut off = 0;
            while off < size {
                let n = (size - off).min(COPY_CHUNK as u64) as u32;
                let data = self
                    .inner
                    .view
                    .read(l, off, n)
                    .await
                    .map_err(|e| FsError::Io(e.to_string()))?;
                if data.is_empty() {
                    break;
                }
                f.write_all(&data).await?;
                off += data.len() as u64;
            }
            f.flush().await?;
            f.sync_all().await?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    async fn resolve(&self, id: FileId) -> Result<Obj, FsError> {
        let inner = self.inner.clone();
        blocking(move || {
            let _g = inner.ns_lock.read();
            inner.resolve(id)
        })
        .await
    }
}

impl NodeFs for NodeOverlay {
    fn root(&self) -> FileId {
        ROOT_INO
    }

    fn read_only(&self) -> bool {
        self.inner.read_only
    }

    async fn getattr(&self, id: FileId) -> Result<Attr, FsError> {
        let inner = self.inner.clone();
        blocking(move || {
            let _g = inner.ns_lock.read();
            let o = inner.resolve(id)?;
            inner.attr(&o)
        })
        .await
    }

    async fn lookup(&self, dir: FileId, name: &[u8]) -> Result<FileId, FsError> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
            return Err(FsError::NotFound);
        }
        let inner = self.inner.clone();
        let name = name.to_vec();
        blocking(move || {
            let _g = inner.ns_lock.read();
            let d = inner.dir_obj(dir)?;
            match name.as_slice() {
                b"." => Ok(d.id),
                b".." => match d.rel.parent() {
                    None => Ok(ROOT_INO),
                    Some(p) => Ok(inner.walk(p)?.ok_or(FsError::Stale)?.id),
                },
                _ => Ok(inner.child(&d, &name)?.ok_or(FsError::NotFound)?.id),
            }
        })
        .await
    }

    async fn read(&self, id: FileId, offset: u64, count: u32) -> Result<(Bytes, bool), FsError> {
        let inner = self.inner.clone();
        // The file is opened under the lock, read after it.
        let (file, lower) = blocking(move || {
            let _g = inner.ns_lock.read();
            let o = inner.resolve(id)?;
            match o.kind {
                FileKind::File => {}
                FileKind::Dir => return Err(FsError::IsDir),
                _ => return Err(FsError::Inval),
            }
            match &o.upper {
                Some(u) => Ok((Some(open_upper(u, false)?), None)),
                None => Ok((None, Some(o.lower.ok_or(FsError::Stale)?))),
            }
        })
        .await?;
        if let Some(l) = lower {
            let size = self.inner.tree().get(l).map_or(0, |i| i.size);
            let data = self
                .inner
                .view
                .read(l, offset, count)
                .await
                .map_err(|e| FsError::Io(e.to_string()))?;
            let eof = offset.saturating_add(data.len() as u64) >= size;
            return Ok((data, eof));
        }
        let f = file.ok_or(FsError::Stale)?;
        blocking(move || {
            let mut buf = vec![0u8; count as usize];
            let mut got = 0;
            while got < buf.len() {
                match f.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            buf.truncate(got);
            let size = f.metadata()?.len();
            let eof = offset.saturating_add(got as u64) >= size;
            Ok((Bytes::from(buf), eof))
        })
        .await
    }

    async fn readlink(&self, id: FileId) -> Result<Vec<u8>, FsError> {
        let inner = self.inner.clone();
        blocking(move || {
            let _g = inner.ns_lock.read();
            let o = inner.resolve(id)?;
            if o.kind != FileKind::Symlink {
                return Err(FsError::Inval);
            }
            match (&o.upper, o.lower) {
                (Some(u), _) => Ok(fs::read_link(&u.path)?.into_os_string().into_vec()),
                (None, Some(l)) => Ok(inner
                    .tree()
                    .get(l)
                    .and_then(|i| i.symlink.clone())
                    .unwrap_or_default()
                    .into_bytes()),
                (None, None) => Err(FsError::Stale),
            }
        })
        .await
    }

    async fn readdir(
        &self,
        dir: FileId,
        cookie: u64,
        max: usize,
    ) -> Result<(Vec<DirEntry>, bool), FsError> {
        let inner = self.inner.clone();
        blocking(move || {
            let _g = inner.ns_lock.read();
            inner.readdir_blocking(dir, cookie, max)
        })
        .await
    }

    async fn setattr(&self, id: FileId, set: &SetAttr, _cred: &Cred) -> Result<Attr, FsError> {
        self.inner.check_writable()?;
        let set = set.clone();
        for _ in 0..3 {
            let o = self.resolve(id).await?;
            if set == SetAttr::default() {
                let inner = self.inner.clone();
                return blocking(move || inner.attr(&o)).await;
            }
            if o.upper.is_none() {
                let limit = if o.kind == FileKind::File {
                    set.size
                } else {
                    None
                };
                self.copy_up(&o, limit).await?;
                continue;
            }
            let inner = self.inner.clone();
            let set = set.clone();
            return blocking(move || {
                let _g = inner.ns_lock.write();
                inner.check_writable()?;
                let o = inner.resolve(id)?;
                if o.upper.is_none() {
                    return Err(FsError::Stale);
                }
                inner.apply_setattr(&o, &set)?;
                let o = inner.resolve(id)?;
                inner.attr(&o)
            })
            .await;
        }
        Err(FsError::Stale)
    }

    async fn write(
        &self,
        id: FileId,
        offset: u64,
        data: &[u8],
        cred: &Cred,
    ) -> Result<Attr, FsError> {
        self.inner.check_writable()?;
        let data = data.to_vec();
        let writer_is_root = cred.uid == 0;
        for _ in 0..3 {
            let o = self.resolve(id).await?;
            match o.kind {
                FileKind::File => {}
                FileKind::Dir => return Err(FsError::IsDir),
                _ => return Err(FsError::Inval),
            }
            if o.upper.is_none() {
                self.copy_up(&o, None).await?;
                continue;
            }
            let inner = self.inner.clone();
            let data = data.clone();
            let merged = o.lower.is_some();
            let r = blocking(move || {
                let f = {
                    let _g = inner.ns_lock.read();
                    match inner.resolve(id)?.upper {
                        Some(u) => open_upper(&u, true)?,
                        None => return Ok(None),
                    }
                };
                f.write_all_at(&data, offset)?;
                let mut meta = f.metadata()?;
                // Like a kernel NFS server: a write by anyone but root drops
                // set-uid, and set-gid if group-executable.
                let mode = meta.mode();
                let mut clear = 0;
                if mode & libc::S_ISUID != 0 {
                    clear |= libc::S_ISUID;
                }
                if mode & libc::S_ISGID != 0 && mode & libc::S_IXGRP != 0 {
                    clear |= libc::S_ISGID;
                }
                if !writer_is_root && clear != 0 {
                    f.set_permissions(fs::Permissions::from_mode(mode & 0o7777 & !clear))?;
                    meta = f.metadata()?;
                }
                Ok(Some(inner.attr_upper(id, merged, &meta)))
            })
            .await?;
            if let Some(a) = r {
                return Ok(a);
            }
        }
        Err(FsError::Stale)
    }

    async fn create(
        &self,
        dir: FileId,
        name: &[u8],
        mode: u32,
        cred: &Cred,
        exclusive: bool,
    ) -> Result<FileId, FsError> {
        self.inner.check_writable()?;
        check_name(name)?;
        let (inner, name, cred) = (self.inner.clone(), name.to_vec(), cred.clone());
        blocking(move || {
            let _g = inner.ns_lock.write();
            inner.check_writable()?;
            let d = inner.dir_obj(dir)?;
            if let Some(e) = inner.child(&d, &name)? {
                if exclusive || e.kind != FileKind::File {
                    return Err(FsError::Exists);
                }
                return Ok(e.id);
            }
            inner.create_in(&d, &name, FileKind::File, mode, &cred, |tmp| {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(tmp)
                    .map(|_| ())
            })
        })
        .await
    }

    async fn mkdir(
        &self,
        dir: FileId,
        name: &[u8],
        mode: u32,
        cred: &Cred,
    ) -> Result<FileId, FsError> {
        self.inner.check_writable()?;
        let (inner, name, cred) = (self.inner.clone(), name.to_vec(), cred.clone());
        blocking(move || {
            inner.create_entry(dir, &name, FileKind::Dir, mode, &cred, |tmp| {
                fs::create_dir(tmp)
            })
        })
        .await
    }

    async fn symlink(
        &self,
        dir: FileId,
        name: &[u8],
        target: &[u8],
        cred: &Cred,
    ) -> Result<FileId, FsError> {
        self.inner.check_writable()?;
        if target.is_empty() || target.contains(&0) {
            return Err(FsError::Inval);
        }
        let (inner, name, cred) = (self.inner.clone(), name.to_vec(), cred.clone());
        let target = target.to_vec();
        blocking(move || {
            inner.create_entry(dir, &name, FileKind::Symlink, 0o777, &cred, |tmp| {
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), tmp)
            })
        })
        .await
    }

    async fn mknod(
        &self,
        dir: FileId,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        rdev: (u32, u32),
        cred: &Cred,
    ) -> Result<FileId, FsError> {
        self.inner.check_writable()?;
        let (ty, rdev) = match kind {
            // 0:0 is how the upper records a deletion.
            FileKind::CharDevice if rdev == (0, 0) => return Err(FsError::Inval),
            FileKind::CharDevice => (libc::S_IFCHR, rdev),
            FileKind::BlockDevice => (libc::S_IFBLK, rdev),
            FileKind::Fifo => (libc::S_IFIFO, (0, 0)),
            FileKind::Socket => (libc::S_IFSOCK, (0, 0)),
            FileKind::File | FileKind::Dir | FileKind::Symlink => return Err(FsError::Inval),
        };
        let (inner, name, cred) = (self.inner.clone(), name.to_vec(), cred.clone());
        blocking(move || {
            inner.create_entry(dir, &name, kind, mode, &cred, |tmp| {
                mknod(tmp, ty | 0o600, rdev)
            })
        })
        .await
    }

    async fn link(&self, id: FileId, dir: FileId, name: &[u8]) -> Result<(), FsError> {
        self.inner.check_writable()?;
        check_name(name)?;
        for _ in 0..3 {
            let o = self.resolve(id).await?;
            if o.is_dir() {
                return Err(FsError::IsDir);
            }
            if o.upper.is_none() {
                self.copy_up(&o, None).await?;
                continue;
            }
            let (inner, name) = (self.inner.clone(), name.to_vec());
            let done = blocking(move || {
                let _g = inner.ns_lock.write();
                inner.check_writable()?;
                let src = inner.resolve(id)?;
                let Some(su) = &src.upper else {
                    return Ok(false);
                };
                let d = inner.dir_obj(dir)?;
                if inner.child(&d, &name)?.is_some() {
                    return Err(FsError::Exists);
                }
                let (pu, pino) = inner.ensure_dir_upper(&d.rel)?;
                let tmp = inner.tmp_path();
                fs::hard_link(&su.path, &tmp)?;
                if let Err(e) = inner.place(&tmp, &pu, &name, false) {
                    let _ = fs::remove_file(&tmp);
                    return Err(e.into());
                }
                inner.state.lock().add_link(su.meta.ino(), pino, &name);
                Ok(true)
            })
            .await?;
            if done {
                return Ok(());
            }
        }
        Err(FsError::Stale)
    }

    async fn remove(&self, dir: FileId, name: &[u8]) -> Result<(), FsError> {
        self.inner.check_writable()?;
        let (inner, name) = (self.inner.clone(), name.to_vec());
        blocking(move || inner.remove_blocking(dir, &name, false)).await
    }

    async fn rmdir(&self, dir: FileId, name: &[u8]) -> Result<(), FsError> {
        self.inner.check_writable()?;
        let (inner, name) = (self.inner.clone(), name.to_vec());
        blocking(move || inner.remove_blocking(dir, &name, true)).await
    }

    async fn rename(
        &self,
        from_dir: FileId,
        from: &[u8],
        to_dir: FileId,
        to: &[u8],
    ) -> Result<(), FsError> {
        self.inner.check_writable()?;
        for _ in 0..3 {
            let (inner, f, t) = (self.inner.clone(), from.to_vec(), to.to_vec());
            match blocking(move || inner.rename_blocking(from_dir, &f, to_dir, &t)).await? {
                None => return Ok(()),
                Some(src) => self.copy_up(&src, None).await?,
            }
        }
        Err(FsError::Stale)
    }

    async fn commit(&self, id: FileId) -> Result<(), FsError> {
        let inner = self.inner.clone();
        blocking(move || {
            let f = {
                let _g = inner.ns_lock.read();
                let o = inner.resolve(id)?;
                match (&o.upper, o.kind) {
                    (Some(u), FileKind::File | FileKind::Dir) => open_upper(u, false)?,
                    // Nothing of it was written.
                    _ => return Ok(()),
                }
            };
            Ok(f.sync_all()?)
        })
        .await
    }

    async fn fsstat(&self) -> Result<FsStat, FsError> {
        let inner = self.inner.clone();
        blocking(move || {
            inner.check_live()?;
            let c = cpath(&inner.upper)?;
            // SAFETY: zeroed statvfs is a valid out-parameter for statvfs(3).
            let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: valid path and out-pointer.
            if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
                return Err(io::Error::last_os_error().into());
            }
            let frsize = s.f_frsize as u64;
            Ok(FsStat {
                total_bytes: s.f_blocks as u64 * frsize,
                free_bytes: s.f_bavail as u64 * frsize,
                total_files: s.f_files as u64,
                free_files: s.f_favail as u64,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfs::testimage::{LayerBuilder, TestImage, MTIME};

    const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\n";

    fn big() -> Vec<u8> {
        (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn sample() -> TestImage {
        let mut l1 = LayerBuilder::new();
        l1.dir("etc", 0o755)
            .file("etc/passwd", 0o644, PASSWD)
            .file("etc/old", 0o644, b"gone in layer 2")
            .dir("bin", 0o755)
            .file_with_xattrs(
                "bin/su",
                0o4755,
                b"su-binary",
                &[
                    ("user.lazyboot.test", b"v1"),
                    ("trusted.overlay.origin", b"x"),
                ],
            )
            .file("bin/a", 0o755, b"hard-linked")
            .hardlink("bin/b", "bin/a")
            .symlink("bin/sh", "busybox")
            .dir("dev", 0o755)
            .char_device("dev/null", 0o666, 1, 3)
            .block_device("dev/sda", 0o660, 8, 0)
            .dir("run", 0o755)
            .fifo("run/initctl", 0o600)
            .dir("home", 0o755)
            .owner(1000, 1000)
            .dir("home/user", 0o750)
            .file("home/user/notes", 0o600, b"hello")
            .owner(0, 42)
            .file("etc/shadow", 0o640, b"secret")
            .owner(0, 0)
            .dir("var", 0o755)
            .dir("var/lib", 0o755)
            .file("var/lib/big", 0o644, &big())
            .dir("opt", 0o755)
            .file("opt/x", 0o644, b"x")
            .file("opt/y", 0o644, b"y")
            .dir("opt/sub", 0o755)
            .file("opt/sub/z", 0o644, b"z");
        let mut l2 = LayerBuilder::new();
        l2.whiteout("etc/old")
            .file("etc/hostname", 0o644, b"node1\n");
        TestImage::new(&[l1.finish(), l2.finish()])
    }

    struct Env {
        img: TestImage,
        view: Arc<ImageView>,
        fs: NodeOverlay,
    }

    impl Env {
        async fn new() -> Env {
            Self::with_mode(false).await
        }

        async fn with_mode(read_only: bool) -> Env {
            let img = sample();
            let view = img.view().await;
            let fs = NodeOverlay::open(view.clone(), &img.node_dir(), read_only)
                .await
                .unwrap();
            Env { img, view, fs }
        }

        /// A new overlay on the same directory: what a server restart sees.
        async fn restart(&mut self) {
            self.fs = NodeOverlay::open(self.view.clone(), &self.img.node_dir(), false)
                .await
                .unwrap();
        }

        fn upper(&self, rel: &str) -> PathBuf {
            self.fs.upper_dir().join(rel)
        }
    }

    trait NodeDir {
        fn node_dir(&self) -> PathBuf;
    }
    impl NodeDir for TestImage {
        fn node_dir(&self) -> PathBuf {
            node_state_dir(&self.state_dir(), "n1")
        }
    }

    fn root() -> Cred {
        Cred {
            uid: 0,
            gid: 0,
            gids: vec![],
        }
    }

    fn user() -> Cred {
        Cred {
            uid: 1000,
            gid: 1000,
            gids: vec![1000],
        }
    }

    async fn look(fs: &NodeOverlay, path: &str) -> Result<FileId, FsError> {
        let mut id = fs.root();
        for c in path.split('/').filter(|c| !c.is_empty()) {
            id = fs.lookup(id, c.as_bytes()).await?;
        }
        Ok(id)
    }

    async fn list(fs: &NodeOverlay, path: &str) -> Vec<String> {
        let dir = look(fs, path).await.unwrap();
        let mut out = Vec::new();
        let mut cookie = 0;
        loop {
            let (entries, eof) = fs.readdir(dir, cookie, 3).await.unwrap();
            for e in &entries {
                assert_eq!(
                    look(fs, &format!("{path}/{}", String::from_utf8_lossy(&e.name)))
                        .await
                        .unwrap(),
                    e.id
                );
                out.push(String::from_utf8(e.name.clone()).unwrap());
                cookie = e.cookie;
            }
            if eof {
                return out;
            }
            assert!(!entries.is_empty(), "no progress before eof");
        }
    }

    async fn read_all(fs: &NodeOverlay, id: FileId) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let (data, eof) = fs.read(id, out.len() as u64, 100_000).await.unwrap();
            out.extend_from_slice(&data);
            if eof {
                return out;
            }
            assert!(!data.is_empty());
        }
    }

    async fn contents(fs: &NodeOverlay, path: &str) -> Vec<u8> {
        read_all(fs, look(fs, path).await.unwrap()).await
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn lower_entries_match_the_image() {
        let env = Env::new().await;
        let fs = &env.fs;
        let tree = env.view.tree();
        assert_eq!(
            list(fs, "").await,
            strs(&["bin", "dev", "etc", "home", "opt", "run", "var"])
        );
        assert_eq!(
            list(fs, "etc").await,
            strs(&["hostname", "passwd", "shadow"])
        );
        assert_eq!(list(fs, "bin").await, strs(&["a", "b", "sh", "su"]));
        for path in [
            "etc",
            "etc/passwd",
            "etc/shadow",
            "bin/su",
            "bin/a",
            "bin/sh",
            "dev/null",
            "dev/sda",
            "run/initctl",
            "home/user",
            "home/user/notes",
            "var/lib/big",
        ] {
            let id = look(fs, path).await.unwrap();
            let inode = tree.resolve(path).unwrap();
            assert_eq!(id, inode.ino, "{path}");
            let a = fs.getattr(id).await.unwrap();
            assert_eq!(a, attr_from_inode(inode), "{path}");
            assert_eq!(a.mtime.secs, MTIME as i64);
        }
        let su = fs.getattr(look(fs, "bin/su").await.unwrap()).await.unwrap();
        assert_eq!((su.mode, su.kind, su.size), (0o4755, FileKind::File, 9));
        let null = fs
            .getattr(look(fs, "dev/null").await.unwrap())
            .await
            .unwrap();
        assert_eq!(
            (null.kind, null.rdev, null.mode),
            (FileKind::CharDevice, (1, 3), 0o666)
        );
        let sda = fs
            .getattr(look(fs, "dev/sda").await.unwrap())
            .await
            .unwrap();
        assert_eq!((sda.kind, sda.rdev), (FileKind::BlockDevice, (8, 0)));
        let fifo = fs
            .getattr(look(fs, "run/initctl").await.unwrap())
            .await
            .unwrap();
        assert_eq!(fifo.kind, FileKind::Fifo);
        let notes = fs
            .getattr(look(fs, "home/user/notes").await.unwrap())
            .await
            .unwrap();
        assert_eq!((notes.uid, notes.gid, notes.mode), (1000, 1000, 0o600));
        let shadow = fs
            .getattr(look(fs, "etc/shadow").await.unwrap())
            .await
            .unwrap();
        assert_eq!((shadow.uid, shadow.gid), (0, 42));
        // Hard links share one id.
        let (a, b) = (
            look(fs, "bin/a").await.unwrap(),
            look(fs, "bin/b").await.unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(fs.getattr(a).await.unwrap().nlink, 2);
        let sh = look(fs, "bin/sh").await.unwrap();
        assert_eq!(fs.readlink(sh).await.unwrap(), b"busybox");
        assert_eq!(fs.readlink(a).await, Err(FsError::Inval));
        assert_eq!(contents(fs, "etc/passwd").await, PASSWD);
        assert_eq!(contents(fs, "var/lib/big").await, big());
        let big_id = look(fs, "var/lib/big").await.unwrap();
        let (part, eof) = fs.read(big_id, 599_990, 100).await.unwrap();
        assert_eq!((&part[..], eof), (&big()[599_990..], true));
        // Whiteouts inside the image apply; "." and "..".
        assert_eq!(look(fs, "etc/old").await, Err(FsError::NotFound));
        let etc = look(fs, "etc").await.unwrap();
        assert_eq!(fs.lookup(etc, b"..").await.unwrap(), fs.root());
        assert_eq!(fs.lookup(etc, b".").await.unwrap(), etc);
        assert_eq!(fs.lookup(fs.root(), b"..").await.unwrap(), fs.root());
        let user_dir = look(fs, "home/user").await.unwrap();
        assert_eq!(
            fs.lookup(user_dir, b"..").await.unwrap(),
            look(fs, "home").await.unwrap()
        );
        assert_eq!(fs.lookup(a, b"x").await, Err(FsError::NotDir));
        assert_eq!(fs.read(etc, 0, 10).await, Err(FsError::IsDir));
        assert_eq!(fs.getattr(1 << 40).await, Err(FsError::Stale));
        assert_eq!(fs.getattr(UPPER_ID_BIT | 12345).await, Err(FsError::Stale));
        assert!(!fs.read_only());
        assert!(fs.fsstat().await.unwrap().total_bytes > 0);
    }

    #[tokio::test]
    async fn write_copies_up_and_old_handles_see_it() {
        let env = Env::new().await;
        let fs = &env.fs;
        let id = look(fs, "etc/passwd").await.unwrap();
        let before = fs.getattr(id).await.unwrap();
        let a = fs.write(id, 5, b"XYZ", &root()).await.unwrap();
        let mut want = PASSWD.to_vec();
        want[5..8].copy_from_slice(b"XYZ");
        // The handle from before the copy-up reads the new content.
        assert_eq!(read_all(fs, id).await, want);
        assert_eq!(a.id, id);
        assert_eq!(
            (a.mode, a.uid, a.gid, a.size, a.nlink),
            (0o644, 0, 0, PASSWD.len() as u64, 1)
        );
        assert_eq!(look(fs, "etc/passwd").await.unwrap(), id);
        assert_eq!(fs.getattr(id).await.unwrap().mode, before.mode);
        // The image itself is unchanged.
        assert_eq!(&env.view.read(id, 0, 100).await.unwrap()[..], PASSWD);
        let on_disk = fs::read(env.upper("etc/passwd")).unwrap();
        assert_eq!(on_disk, want);
        // Parents were copied up with their attributes.
        let etc = lstat(&env.upper("etc")).unwrap();
        assert_eq!(etc.mode() & 0o7777, 0o755);
        assert_eq!(
            fs.getattr(look(fs, "etc").await.unwrap()).await.unwrap().id,
            look(fs, "etc").await.unwrap()
        );

        // Set-uid, owner and xattrs survive a copy-up (private xattrs do not).
        let su = look(fs, "bin/su").await.unwrap();
        fs.write(su, 0, b"SU", &root()).await.unwrap();
        let m = lstat(&env.upper("bin/su")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o4755, 0, 0));
        assert_eq!(
            get_xattr(&env.upper("bin/su"), "user.lazyboot.test").unwrap(),
            Some(b"v1".to_vec())
        );
        assert_eq!(
            get_xattr(&env.upper("bin/su"), "trusted.overlay.origin").unwrap(),
            None
        );
        assert_eq!(contents(fs, "bin/su").await, b"SU-binary");
        // A write by someone else drops set-uid, like a kernel server.
        fs.write(su, 0, b"su", &user()).await.unwrap();
        assert_eq!(fs.getattr(su).await.unwrap().mode, 0o755);

        // Owner kept for a user's file; big file copied in full.
        let notes = look(fs, "home/user/notes").await.unwrap();
        let a = fs.write(notes, 5, b", world", &user()).await.unwrap();
        assert_eq!((a.uid, a.gid, a.mode), (1000, 1000, 0o600));
        assert_eq!(contents(fs, "home/user/notes").await, b"hello, world");
        let big_id = look(fs, "var/lib/big").await.unwrap();
        fs.write(big_id, 300_000, b"!", &root()).await.unwrap();
        let mut want = big();
        want[300_000] = b'!';
        assert_eq!(read_all(fs, big_id).await, want);

        // A copied-up file keeps its id through a rename, also after a restart.
        let etc = look(fs, "etc").await.unwrap();
        fs.rename(etc, b"passwd", etc, b"passwd.new").await.unwrap();
        assert_eq!(look(fs, "etc/passwd").await, Err(FsError::NotFound));
        assert_eq!(look(fs, "etc/passwd.new").await.unwrap(), id);
        let mut env = env;
        env.restart().await;
        let fs = &env.fs;
        assert_eq!(read_all(fs, id).await[5..8], *b"XYZ");
        assert_eq!(look(fs, "etc/passwd.new").await.unwrap(), id);
        assert_eq!(fs.getattr(id).await.unwrap().nlink, 1);
    }

    #[tokio::test]
    async fn lower_hard_links_stay_linked_after_copy_up() {
        let env = Env::new().await;
        let fs = &env.fs;
        let a = look(fs, "bin/a").await.unwrap();
        fs.write(a, 0, b"H", &root()).await.unwrap();
        assert_eq!(contents(fs, "bin/b").await, b"Hard-linked");
        assert_eq!(look(fs, "bin/b").await.unwrap(), a);
        assert_eq!(fs.getattr(a).await.unwrap().nlink, 2);
        let (ma, mb) = (
            lstat(&env.upper("bin/a")).unwrap(),
            lstat(&env.upper("bin/b")).unwrap(),
        );
        assert_eq!(ma.ino(), mb.ino());
        // Removing one name keeps the other; removing both frees the index.
        let bin = look(fs, "bin").await.unwrap();
        fs.remove(bin, b"a").await.unwrap();
        assert_eq!(fs.getattr(a).await.unwrap().nlink, 1);
        assert_eq!(contents(fs, "bin/b").await, b"Hard-linked");
        fs.remove(bin, b"b").await.unwrap();
        assert_eq!(fs.getattr(a).await, Err(FsError::Stale));
        assert!(fs::read_dir(env.img.node_dir().join("index"))
            .unwrap()
            .next()
            .is_none());
        assert_eq!(list(fs, "bin").await, strs(&["sh", "su"]));
    }

    #[tokio::test]
    async fn creations_land_in_upper_owned_by_caller() {
        let env = Env::new().await;
        let fs = &env.fs;
        let me = user();
        let home = look(fs, "home/user").await.unwrap();
        let f = fs.create(home, b"new.txt", 0o640, &me, true).await.unwrap();
        assert_ne!(f & UPPER_ID_BIT, 0);
        assert_eq!(
            fs.create(home, b"new.txt", 0o640, &me, true).await,
            Err(FsError::Exists)
        );
        assert_eq!(fs.create(home, b"new.txt", 0o600, &me, false).await, Ok(f));
        fs.write(f, 0, b"data", &me).await.unwrap();
        let m = lstat(&env.upper("home/user/new.txt")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o640));
        assert_eq!(m.ino() | UPPER_ID_BIT, f);

        let d = fs.mkdir(home, b"dir", 0o2750, &me).await.unwrap();
        let m = lstat(&env.upper("home/user/dir")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o2750));
        assert_eq!(fs.lookup(d, b"..").await.unwrap(), home);
        // Set-gid directories hand their group down.
        let inner = fs
            .create(
                d,
                b"f",
                0o644,
                &Cred {
                    gid: 5,
                    ..me.clone()
                },
                true,
            )
            .await
            .unwrap();
        assert_eq!(fs.getattr(inner).await.unwrap().gid, 1000);
        let sub = fs.mkdir(d, b"sub", 0o755, &me).await.unwrap();
        assert_eq!(fs.getattr(sub).await.unwrap().mode, 0o2755);
        assert_eq!(fs.lookup(sub, b"..").await.unwrap(), d);

        let s = fs.symlink(home, b"link", b"new.txt", &me).await.unwrap();
        assert_eq!(fs.readlink(s).await.unwrap(), b"new.txt");
        let m = lstat(&env.upper("home/user/link")).unwrap();
        assert!(m.file_type().is_symlink());
        assert_eq!((m.uid(), m.gid()), (1000, 1000));

        let null = fs
            .mknod(home, b"null", FileKind::CharDevice, 0o666, (1, 3), &me)
            .await
            .unwrap();
        let a = fs.getattr(null).await.unwrap();
        assert_eq!(
            (a.kind, a.rdev, a.mode, a.uid),
            (FileKind::CharDevice, (1, 3), 0o666, 1000)
        );
        let m = lstat(&env.upper("home/user/null")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!((libc::major(m.rdev()), libc::minor(m.rdev())), (1, 3));
        let fifo = fs
            .mknod(home, b"fifo", FileKind::Fifo, 0o600, (0, 0), &me)
            .await
            .unwrap();
        assert_eq!(fs.getattr(fifo).await.unwrap().kind, FileKind::Fifo);
        assert!(lstat(&env.upper("home/user/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        // A whiteout cannot be made from outside.
        assert_eq!(
            fs.mknod(home, b"wh", FileKind::CharDevice, 0o600, (0, 0), &me)
                .await,
            Err(FsError::Inval)
        );

        fs.link(f, d, b"hard").await.unwrap();
        assert_eq!(fs.lookup(d, b"hard").await.unwrap(), f);
        assert_eq!(fs.getattr(f).await.unwrap().nlink, 2);
        assert_eq!(fs.link(d, home, b"dirlink").await, Err(FsError::IsDir));
        assert_eq!(fs.link(f, home, b"null").await, Err(FsError::Exists));
        // A link to a lower file copies it up first.
        let passwd = look(fs, "etc/passwd").await.unwrap();
        fs.link(passwd, home, b"passwd").await.unwrap();
        assert_eq!(contents(fs, "home/user/passwd").await, PASSWD);
        assert_eq!(fs.getattr(passwd).await.unwrap().nlink, 2);
        assert_eq!(
            lstat(&env.upper("home/user/passwd")).unwrap().ino(),
            lstat(&env.upper("etc/passwd")).unwrap().ino()
        );

        assert_eq!(
            list(fs, "home/user").await,
            strs(&["dir", "fifo", "link", "new.txt", "notes", "null", "passwd"])
        );
        fs.remove(home, b"fifo").await.unwrap();
        assert_eq!(fs.remove(home, b"dir").await, Err(FsError::IsDir));
        assert_eq!(fs.rmdir(home, b"null").await, Err(FsError::NotDir));
        assert_eq!(fs.rmdir(home, b"dir").await, Err(FsError::NotEmpty));
        fs.rmdir(d, b"sub").await.unwrap();
        fs.rename(home, b"new.txt", d, b"moved").await.unwrap();
        assert_eq!(fs.lookup(d, b"moved").await.unwrap(), f);
        assert_eq!(fs.lookup(home, b"new.txt").await, Err(FsError::NotFound));
        assert_eq!(read_all(fs, f).await, b"data");
        // Created files had no lower counterpart: no whiteouts were needed.
        assert!(lstat(&env.upper("home/user/fifo")).is_err());
        assert!(lstat(&env.upper("home/user/new.txt")).is_err());
        fs.remove(d, b"moved").await.unwrap();
        fs.remove(d, b"hard").await.unwrap();
        fs.remove(d, b"f").await.unwrap();
        assert_eq!(fs.getattr(f).await, Err(FsError::Stale));
        fs.rmdir(home, b"dir").await.unwrap();
        assert_eq!(fs.getattr(d).await, Err(FsError::Stale));
        assert_eq!(
            list(fs, "home/user").await,
            strs(&["link", "notes", "null", "passwd"])
        );
        // Bad names.
        assert_eq!(
            fs.create(home, b"a/b", 0o644, &me, false).await,
            Err(FsError::Inval)
        );
        assert_eq!(
            fs.mkdir(home, &[b'x'; 256], 0o755, &me).await,
            Err(FsError::NameTooLong)
        );
    }

    #[tokio::test]
    async fn remove_of_lower_file_leaves_whiteout_across_restart() {
        let mut env = Env::new().await;
        let etc = look(&env.fs, "etc").await.unwrap();
        let passwd = look(&env.fs, "etc/passwd").await.unwrap();
        env.fs.remove(etc, b"passwd").await.unwrap();
        assert_eq!(look(&env.fs, "etc/passwd").await, Err(FsError::NotFound));
        assert_eq!(env.fs.getattr(passwd).await, Err(FsError::Stale));
        assert_eq!(list(&env.fs, "etc").await, strs(&["hostname", "shadow"]));
        let m = lstat(&env.upper("etc/passwd")).unwrap();
        assert!(is_whiteout(&m));
        // A copied-up file removed also leaves a whiteout.
        let shadow = look(&env.fs, "etc/shadow").await.unwrap();
        env.fs.write(shadow, 0, b"S", &root()).await.unwrap();
        env.fs.remove(etc, b"shadow").await.unwrap();
        assert!(is_whiteout(&lstat(&env.upper("etc/shadow")).unwrap()));
        // Lower devices and links go the same way.
        let dev = look(&env.fs, "dev").await.unwrap();
        env.fs.remove(dev, b"null").await.unwrap();
        env.restart().await;
        let fs = &env.fs;
        assert_eq!(look(fs, "etc/passwd").await, Err(FsError::NotFound));
        assert_eq!(look(fs, "etc/shadow").await, Err(FsError::NotFound));
        assert_eq!(list(fs, "etc").await, strs(&["hostname"]));
        assert_eq!(list(fs, "dev").await, strs(&["sda"]));
        assert_eq!(fs.getattr(passwd).await, Err(FsError::Stale));
        // The name can be used again; removing it brings the whiteout back.
        let etc = look(fs, "etc").await.unwrap();
        let n = fs
            .create(etc, b"passwd", 0o600, &root(), true)
            .await
            .unwrap();
        assert_ne!(n, passwd);
        assert_eq!(read_all(fs, n).await, b"");
        assert_eq!(list(fs, "etc").await, strs(&["hostname", "passwd"]));
        fs.remove(etc, b"passwd").await.unwrap();
        assert!(is_whiteout(&lstat(&env.upper("etc/passwd")).unwrap()));
        assert_eq!(look(fs, "etc/passwd").await, Err(FsError::NotFound));
    }

    #[tokio::test]
    async fn rmdir_then_mkdir_makes_an_opaque_dir() {
        let mut env = Env::new().await;
        let fs = &env.fs;
        let root_id = fs.root();
        let opt = look(fs, "opt").await.unwrap();
        assert_eq!(fs.rmdir(root_id, b"opt").await, Err(FsError::NotEmpty));
        let sub = look(fs, "opt/sub").await.unwrap();
        fs.remove(sub, b"z").await.unwrap();
        fs.rmdir(opt, b"sub").await.unwrap();
        fs.remove(opt, b"x").await.unwrap();
        fs.remove(opt, b"y").await.unwrap();
        assert_eq!(list(fs, "opt").await, Vec::<String>::new());
        fs.rmdir(root_id, b"opt").await.unwrap();
        assert!(is_whiteout(&lstat(&env.upper("opt")).unwrap()));
        assert_eq!(fs.getattr(opt).await, Err(FsError::Stale));
        let new = fs.mkdir(root_id, b"opt", 0o700, &root()).await.unwrap();
        assert_ne!(new, opt);
        assert!(is_opaque(&env.upper("opt")).unwrap());
        assert_eq!(list(fs, "opt").await, Vec::<String>::new());
        assert_eq!(look(fs, "opt/x").await, Err(FsError::NotFound));
        assert_eq!(look(fs, "opt/sub/z").await, Err(FsError::NotFound));
        assert_eq!(fs.getattr(sub).await, Err(FsError::Stale));
        fs.create(new, b"mine", 0o644, &root(), true).await.unwrap();
        env.restart().await;
        let fs = &env.fs;
        assert_eq!(list(fs, "opt").await, strs(&["mine"]));
        assert_eq!(look(fs, "opt").await.unwrap(), new);
        assert_eq!(fs.getattr(new).await.unwrap().mode, 0o700);
        // An opaque directory can be removed again: back to a whiteout.
        let opt = look(fs, "opt").await.unwrap();
        fs.remove(opt, b"mine").await.unwrap();
        fs.rmdir(fs.root(), b"opt").await.unwrap();
        assert!(is_whiteout(&lstat(&env.upper("opt")).unwrap()));
        assert_eq!(look(fs, "opt").await, Err(FsError::NotFound));
    }

    #[tokio::test]
    async fn rename_rules() {
        let env = Env::new().await;
        let fs = &env.fs;
        let root_id = fs.root();
        let me = root();
        // Directories with a lower part do not move (overlayfs: EXDEV).
        assert_eq!(
            fs.rename(root_id, b"opt", root_id, b"opt2").await,
            Err(FsError::XDev)
        );
        let etc = look(fs, "etc").await.unwrap();
        fs.write(etc, 0, b"", &me).await.unwrap_err();
        fs.setattr(
            etc,
            &SetAttr {
                mode: Some(0o750),
                ..Default::default()
            },
            &me,
        )
        .await
        .unwrap();
        assert_eq!(fs.getattr(etc).await.unwrap().mode, 0o750);
        assert_eq!(
            fs.rename(root_id, b"etc", root_id, b"etc2").await,
            Err(FsError::XDev)
        );
        // Upper directories move freely, with their contents.
        let d = fs.mkdir(root_id, b"d", 0o755, &me).await.unwrap();
        let f = fs.create(d, b"f", 0o644, &me, true).await.unwrap();
        fs.rename(root_id, b"d", etc, b"d2").await.unwrap();
        assert_eq!(look(fs, "etc/d2/f").await.unwrap(), f);
        assert_eq!(fs.lookup(d, b"..").await.unwrap(), etc);
        assert_eq!(look(fs, "d").await, Err(FsError::NotFound));
        // Into itself: refused.
        assert_eq!(fs.rename(etc, b"d2", d, b"x").await, Err(FsError::Inval));
        // A lower file renamed: copied up, whiteout left behind.
        let hostname = look(fs, "etc/hostname").await.unwrap();
        fs.rename(etc, b"hostname", d, b"h").await.unwrap();
        assert_eq!(look(fs, "etc/d2/h").await.unwrap(), hostname);
        assert_eq!(read_all(fs, hostname).await, b"node1\n");
        assert!(is_whiteout(&lstat(&env.upper("etc/hostname")).unwrap()));
        // Over an existing lower file: it is replaced.
        fs.rename(d, b"h", etc, b"shadow").await.unwrap();
        assert_eq!(look(fs, "etc/shadow").await.unwrap(), hostname);
        assert_eq!(contents(fs, "etc/shadow").await, b"node1\n");
        assert_eq!(list(fs, "etc").await, strs(&["d2", "passwd", "shadow"]));
        // Type mismatches.
        assert_eq!(
            fs.rename(etc, b"passwd", etc, b"d2").await,
            Err(FsError::IsDir)
        );
        assert_eq!(
            fs.rename(etc, b"d2", etc, b"passwd").await,
            Err(FsError::NotDir)
        );
        // A directory over an empty lower directory (made empty by whiteouts).
        let sub = look(fs, "opt/sub").await.unwrap();
        fs.remove(sub, b"z").await.unwrap();
        let opt = look(fs, "opt").await.unwrap();
        fs.rename(etc, b"d2", opt, b"sub").await.unwrap();
        assert_eq!(list(fs, "opt/sub").await, strs(&["f"]));
        assert!(is_opaque(&env.upper("opt/sub")).unwrap());
        assert_eq!(look(fs, "opt/sub/f").await.unwrap(), f);
        // Same file: nothing happens.
        fs.rename(opt, b"x", opt, b"x").await.unwrap();
        assert_eq!(contents(fs, "opt/x").await, b"x");
        assert_eq!(
            fs.rename(opt, b"nope", opt, b"x").await,
            Err(FsError::NotFound)
        );
    }

    #[tokio::test]
    async fn setattr_copies_up_and_applies() {
        let env = Env::new().await;
        let fs = &env.fs;
        let big_id = look(fs, "var/lib/big").await.unwrap();
        let a = fs
            .setattr(
                big_id,
                &SetAttr {
                    size: Some(10),
                    ..Default::default()
                },
                &root(),
            )
            .await
            .unwrap();
        assert_eq!(a.size, 10);
        assert_eq!(read_all(fs, big_id).await, big()[..10]);
        let t = Time {
            secs: 1_234_567_890,
            nanos: 5,
        };
        let set = SetAttr {
            mode: Some(0o4711),
            uid: Some(7),
            gid: Some(8),
            mtime: Some(SetTime::Client(t)),
            ..Default::default()
        };
        let a = fs.setattr(big_id, &set, &root()).await.unwrap();
        assert_eq!((a.mode, a.uid, a.gid, a.mtime), (0o4711, 7, 8, t));
        // Symlinks and devices are copied up too.
        let sh = look(fs, "bin/sh").await.unwrap();
        let a = fs
            .setattr(
                sh,
                &SetAttr {
                    uid: Some(5),
                    ..Default::default()
                },
                &root(),
            )
            .await
            .unwrap();
        assert_eq!((a.uid, a.id, a.kind), (5, sh, FileKind::Symlink));
        assert_eq!(a.mtime.secs, MTIME as i64);
        assert_eq!(fs.readlink(sh).await.unwrap(), b"busybox");
        let null = look(fs, "dev/null").await.unwrap();
        let a = fs
            .setattr(
                null,
                &SetAttr {
                    mode: Some(0o600),
                    ..Default::default()
                },
                &root(),
            )
            .await
            .unwrap();
        assert_eq!(
            (a.mode, a.rdev, a.kind),
            (0o600, (1, 3), FileKind::CharDevice)
        );
        let m = lstat(&env.upper("dev/null")).unwrap();
        assert_eq!((libc::major(m.rdev()), libc::minor(m.rdev())), (1, 3));
        let fifo = look(fs, "run/initctl").await.unwrap();
        fs.setattr(
            fifo,
            &SetAttr {
                gid: Some(3),
                ..Default::default()
            },
            &root(),
        )
        .await
        .unwrap();
        assert!(lstat(&env.upper("run/initctl"))
            .unwrap()
            .file_type()
            .is_fifo());
        let run = look(fs, "run").await.unwrap();
        assert_eq!(
            fs.setattr(
                run,
                &SetAttr {
                    size: Some(0),
                    ..Default::default()
                },
                &root()
            )
            .await,
            Err(FsError::IsDir)
        );
        // An empty setattr changes nothing, not even by copying up.
        let x = look(fs, "opt/x").await.unwrap();
        fs.setattr(x, &SetAttr::default(), &root()).await.unwrap();
        assert!(lstat(&env.upper("opt")).is_err());
    }

    #[tokio::test]
    async fn upper_ids_survive_a_restart() {
        let mut env = Env::new().await;
        let home = look(&env.fs, "home/user").await.unwrap();
        let d = env.fs.mkdir(home, b"d", 0o755, &user()).await.unwrap();
        let f = env.fs.create(d, b"f", 0o644, &user(), true).await.unwrap();
        env.fs.write(f, 0, b"kept", &user()).await.unwrap();
        let notes = look(&env.fs, "home/user/notes").await.unwrap();
        env.fs.write(notes, 0, b"J", &user()).await.unwrap();
        env.restart().await;
        let fs = &env.fs;
        assert_eq!(read_all(fs, f).await, b"kept");
        assert_eq!(fs.lookup(d, b"..").await.unwrap(), home);
        assert_eq!(fs.lookup(d, b"f").await.unwrap(), f);
        assert_eq!(read_all(fs, notes).await, b"Jello");
        assert_eq!(look(fs, "home/user/notes").await.unwrap(), notes);
        // readdir ids equal lookup ids (checked inside `list`).
        assert_eq!(list(fs, "home/user").await, strs(&["d", "notes"]));
    }

    #[tokio::test]
    async fn readdir_pages_are_stable() {
        let env = Env::new().await;
        let fs = &env.fs;
        let etc = look(fs, "etc").await.unwrap();
        for n in ["b1", "a1", "z1"] {
            fs.create(etc, n.as_bytes(), 0o644, &root(), true)
                .await
                .unwrap();
        }
        let (all, eof) = fs.readdir(etc, 0, 100).await.unwrap();
        assert!(eof);
        let names: Vec<&[u8]> = all.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(
            names,
            [&b"a1"[..], b"b1", b"hostname", b"passwd", b"shadow", b"z1"]
        );
        let (page, eof) = fs.readdir(etc, all[1].cookie, 2).await.unwrap();
        assert!(!eof);
        assert_eq!(page, all[2..4].to_vec());
        let (rest, eof) = fs.readdir(etc, page[1].cookie, 2).await.unwrap();
        assert!(eof);
        assert_eq!(rest, all[4..].to_vec());
        let (none, eof) = fs.readdir(etc, 99, 2).await.unwrap();
        assert!(none.is_empty() && eof);
        let (again, _) = fs.readdir(etc, 0, 100).await.unwrap();
        assert_eq!(again, all);
        let passwd = look(fs, "etc/passwd").await.unwrap();
        assert_eq!(fs.readdir(passwd, 0, 10).await, Err(FsError::NotDir));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_to_one_lower_file_all_land() {
        let env = Env::new().await;
        let fs = env.fs.clone();
        let id = look(&fs, "var/lib/big").await.unwrap();
        let tasks: Vec<_> = (0..8u64)
            .map(|i| {
                let fs = fs.clone();
                tokio::spawn(async move {
                    fs.write(id, i * 70_000, &[b'A' + i as u8; 10], &root())
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let mut want = big();
        for i in 0..8usize {
            want[i * 70_000..i * 70_000 + 10].fill(b'A' + i as u8);
        }
        assert_eq!(read_all(&fs, id).await, want);
        fs.commit(id).await.unwrap();
        assert_eq!(
            fs::read_dir(env.img.node_dir().join("work"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(
            fs::read_dir(env.img.node_dir().join("index"))
                .unwrap()
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn open_repairs_interrupted_work_and_foreign_indexes() {
        let mut env = Env::new().await;
        let passwd = look(&env.fs, "etc/passwd").await.unwrap();
        env.fs.write(passwd, 0, b"R", &root()).await.unwrap();
        let hostname = look(&env.fs, "etc/hostname").await.unwrap();
        let dir = env.img.node_dir();
        // What a crash can leave: temp files, and an index link without names
        // (a copy-up that stopped before linking them).
        fs::write(dir.join("work").join("t7"), b"half a copy").unwrap();
        fs::write(dir.join("index").join(hostname.to_string()), b"orphan").unwrap();
        env.restart().await;
        assert_eq!(fs::read_dir(dir.join("work")).unwrap().count(), 0);
        assert!(!dir.join("index").join(hostname.to_string()).exists());
        assert_eq!(contents(&env.fs, "etc/hostname").await, b"node1\n");
        assert_eq!(read_all(&env.fs, passwd).await[..1], *b"R");
        // Index numbers of another image are dropped; the upper stays.
        fs::write(dir.join("index.image"), "sha256:other\n").unwrap();
        env.restart().await;
        assert_eq!(fs::read_dir(dir.join("index")).unwrap().count(), 0);
        let now = look(&env.fs, "etc/passwd").await.unwrap();
        assert_ne!(now & UPPER_ID_BIT, 0);
        assert_eq!(read_all(&env.fs, now).await[..1], *b"R");
        assert_eq!(env.fs.getattr(passwd).await, Err(FsError::Stale));
        // Names that are not UTF-8 live in the upper only.
        let etc = look(&env.fs, "etc").await.unwrap();
        let odd = env
            .fs
            .create(etc, b"\xff\xfe", 0o644, &root(), true)
            .await
            .unwrap();
        assert_eq!(env.fs.lookup(etc, b"\xff\xfe").await.unwrap(), odd);
        let (all, _) = env.fs.readdir(etc, 0, 100).await.unwrap();
        assert_eq!(all.last().unwrap().name, b"\xff\xfe");
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[tokio::test]
    async fn readonly_rejects_every_change() {
        let env = Env::with_mode(true).await;
        let fs = &env.fs;
        assert!(fs.read_only());
        let (root_id, me) = (fs.root(), root());
        let etc = look(fs, "etc").await.unwrap();
        let passwd = look(fs, "etc/passwd").await.unwrap();
        let ro = Err::<(), _>(FsError::ReadOnly);
        let set = SetAttr {
            mode: Some(0o600),
            ..Default::default()
        };
        assert_eq!(fs.setattr(passwd, &set, &me).await.map(|_| ()), ro);
        assert_eq!(fs.write(passwd, 0, b"x", &me).await.map(|_| ()), ro);
        assert_eq!(
            fs.create(etc, b"n", 0o644, &me, false).await.map(|_| ()),
            ro
        );
        assert_eq!(fs.mkdir(etc, b"n", 0o755, &me).await.map(|_| ()), ro);
        assert_eq!(fs.symlink(etc, b"n", b"t", &me).await.map(|_| ()), ro);
        assert_eq!(
            fs.mknod(etc, b"n", FileKind::Fifo, 0o644, (0, 0), &me)
                .await
                .map(|_| ()),
            ro
        );
        assert_eq!(fs.link(passwd, etc, b"n").await, ro);
        assert_eq!(fs.remove(etc, b"passwd").await, ro);
        assert_eq!(fs.rmdir(root_id, b"opt").await, ro);
        assert_eq!(fs.rename(etc, b"passwd", etc, b"p").await, ro);
        assert_eq!(contents(fs, "etc/passwd").await, PASSWD);
        assert_eq!(fs::read_dir(fs.upper_dir()).unwrap().count(), 0);
    }
}
