//! Read-only FUSE front end over an [`ImageView`] (and, while the image's
//! layers are still being indexed, over the provisional tree of an
//! [`Opening`]). Images are immutable, so the kernel may cache attributes,
//! entries, symlinks and pages for as long as it likes; that keeps warm
//! reads at page-cache speed. Only what is known for sure is ever answered
//! from the provisional tree, so those answers may be cached forever too.

use crate::image::tree::{DataRef, Inode, ROOT_INO};
use crate::image::{Found, Opening};
use crate::image::{ImageView, ViewError};
use crate::layer::EntryKind;
use bytes::Bytes;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Nothing in an image ever changes, so kernel caches never need to expire.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

pub(crate) struct LazyFs {
    opening: Arc<Opening>,
    rt: tokio::runtime::Handle,
    prov: Arc<Mutex<ProvisionalIds>>,
}

/// Node ids handed out from the provisional tree, before the final view
/// exists (its inode numbers are only known once every layer is indexed).
/// The kernel may keep them forever, so they stay valid afterwards: each
/// names a path, looked up again in the final tree.
#[derive(Default)]
struct ProvisionalIds {
    paths: Vec<String>,
    ids: HashMap<String, u64>,
    /// Regular files by the layer entry holding their data, which all hard
    /// links to a file share: one id (one `st_ino`) for all its names.
    files: HashMap<DataRef, u64>,
}

/// Far above any final inode number (those count the image's files).
const PROVISIONAL: u64 = 1 << 48;

impl ProvisionalIds {
    fn id(&mut self, path: &str, data: Option<DataRef>) -> u64 {
        if let Some(&id) = self.ids.get(path) {
            return id;
        }
        let id = match data.and_then(|d| self.files.get(&d)) {
            Some(&id) => id,
            None => {
                let id = PROVISIONAL + self.paths.len() as u64;
                self.paths.push(path.to_string());
                if let Some(d) = data {
                    self.files.insert(d, id);
                }
                id
            }
        };
        self.ids.insert(path.to_string(), id);
        id
    }
}

/// Where a node id points now.
enum Target {
    Final(Arc<ImageView>, u64),
    /// A path of the image still being indexed.
    Provisional(String),
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

fn eio(what: &str, e: &ViewError) -> Errno {
    tracing::error!("{what} failed: {e}");
    Errno::EIO
}

impl LazyFs {
    /// The mount of an image being opened: served from the provisional tree
    /// until the final view is there, from the final view afterwards.
    pub(crate) fn new(opening: Arc<Opening>, rt: tokio::runtime::Handle) -> Self {
        LazyFs {
            opening,
            rt,
            prov: Arc::default(),
        }
    }

    fn target(&self, ino: INodeNo) -> Result<Target, Errno> {
        let view = match self.opening.outcome() {
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => return Err(eio("opening the image", &e)),
            None => None,
        };
        if ino.0 >= PROVISIONAL {
            let path = self
                .prov
                .lock()
                .paths
                .get((ino.0 - PROVISIONAL) as usize)
                .cloned();
            let path = path.ok_or(Errno::ENOENT)?;
            return match view {
                // Gone only if a tar named the path twice, differently.
                Some(v) => match v.tree().resolve(&path).map(|n| n.ino) {
                    Some(i) => Ok(Target::Final(v, i)),
                    None => Err(Errno::ESTALE),
                },
                None => Ok(Target::Provisional(path)),
            };
        }
        match view {
            Some(v) => Ok(Target::Final(v, ino.0)),
            None if ino.0 == ROOT_INO => Ok(Target::Provisional(String::new())),
            None => Err(Errno::ENOENT),
        }
    }

    /// Answer from the final view when it is there; otherwise look `path`
    /// up in the provisional tree (waiting as long as that takes) on the
    /// runtime, without holding a FUSE thread, and answer from there.
    fn provisional<F>(&self, path: String, answer: F)
    where
        F: FnOnce(Result<Answer, Errno>) + Send + 'static,
    {
        let opening = self.opening.clone();
        let prov = self.prov.clone();
        self.rt.spawn(async move {
            let r = match opening.lookup(&path).await {
                Ok(Found::Node(mut n)) => {
                    n.ino = if path.is_empty() {
                        ROOT_INO
                    } else {
                        prov.lock().id(&path, n.data)
                    };
                    Ok(Answer::Node(n))
                }
                Ok(Found::Final(v)) => match v.tree().resolve(&path).map(|n| n.ino) {
                    Some(ino) => Ok(Answer::Final(v, ino)),
                    None => Err(Errno::ENOENT),
                },
                Err(e) => Err(eio(&format!("looking up /{path}"), &e)),
            };
            answer(r)
        });
    }
}

/// What [`LazyFs::provisional`] found: a node known for sure (its `ino` the
/// node id to give the kernel) or the final view's inode.
enum Answer {
    Node(Inode),
    Final(Arc<ImageView>, u64),
}

fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::File | EntryKind::Hardlink => FileType::RegularFile,
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::CharDevice => FileType::CharDevice,
        EntryKind::BlockDevice => FileType::BlockDevice,
        EntryKind::Fifo => FileType::NamedPipe,
    }
}

pub(crate) fn attr(n: &Inode) -> FileAttr {
    let mtime = if n.mtime >= 0 {
        UNIX_EPOCH + Duration::from_secs(n.mtime as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(n.mtime.unsigned_abs())
    };
    FileAttr {
        ino: INodeNo(n.ino),
        size: n.size,
        blocks: n.size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: file_type(n.kind),
        perm: (n.mode & 0o7777) as u16,
        nlink: n.nlink,
        uid: n.uid,
        gid: n.gid,
        rdev: libc::makedev(n.rdev_major, n.rdev_minor) as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// Reply to a getxattr/listxattr size probe or data request.
fn xattr_reply(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(data);
    }
}

fn getxattr_of(n: &Inode, name: &OsStr, size: u32, reply: ReplyXattr) {
    match n.xattrs.iter().find(|(k, _)| OsStr::new(k) == name) {
        Some((_, v)) => xattr_reply(reply, size, v),
        None => reply.error(Errno::from_i32(libc::ENODATA)),
    }
}

fn listxattr_of(n: &Inode, size: u32, reply: ReplyXattr) {
    let mut list = Vec::new();
    for (k, _) in &n.xattrs {
        list.extend_from_slice(k.as_bytes());
        list.push(0);
    }
    xattr_reply(reply, size, &list);
}

fn readlink_of(n: &Inode, reply: ReplyData) {
    match n.symlink.as_deref() {
        Some(target) => reply.data(target.as_bytes()),
        None => reply.error(Errno::from_i32(libc::EINVAL)),
    }
}

fn fill_dir(view: &ImageView, ino: u64, offset: u64, mut reply: ReplyDirectory) {
    let Some(n) = view.inode(ino) else {
        return reply.error(Errno::ENOENT);
    };
    // Offsets: 1 = after ".", 2 = after "..", 2 + i + 1 = after child i.
    let dots = [(n.ino, "."), (n.parent, "..")];
    let mut pos = offset;
    while pos < 2 {
        let (i, name) = dots[pos as usize];
        pos += 1;
        if reply.add(INodeNo(i), pos, FileType::Directory, name) {
            return reply.ok();
        }
    }
    for (i, (name, child)) in n.children.iter().enumerate().skip((pos - 2) as usize) {
        let kind = view
            .inode(*child)
            .map_or(FileType::RegularFile, |c| file_type(c.kind));
        if reply.add(INodeNo(*child), 2 + i as u64 + 1, kind, name) {
            break;
        }
    }
    reply.ok();
}

/// The inode an [`Answer`] names.
fn answered(a: &Answer) -> Option<&Inode> {
    match a {
        Answer::Node(n) => Some(n),
        Answer::Final(v, ino) => v.inode(*ino),
    }
}

impl Filesystem for LazyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Best effort: older kernels lack some of these and that is fine.
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_READ);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.target(parent) {
            Err(e) => reply.error(e),
            Ok(Target::Final(v, p)) => match v.tree().lookup(p, name) {
                Some(n) => reply.entry(&TTL, &attr(n), Generation(0)),
                None => reply.error(Errno::ENOENT),
            },
            Ok(Target::Provisional(path)) => {
                self.provisional(join(&path, name), move |r| match r {
                    Ok(a) => match answered(&a) {
                        Some(n) => reply.entry(&TTL, &attr(n), Generation(0)),
                        None => reply.error(Errno::ENOENT),
                    },
                    Err(e) => reply.error(e),
                })
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.target(ino) {
            Err(e) => reply.error(e),
            Ok(Target::Final(v, i)) => match v.inode(i) {
                Some(n) => reply.attr(&TTL, &attr(n)),
                None => reply.error(Errno::ENOENT),
            },
            Ok(Target::Provisional(path)) => self.provisional(path, move |r| match r {
                Ok(a) => match answered(&a) {
                    Some(n) => reply.attr(&TTL, &attr(n)),
                    None => reply.error(Errno::ENOENT),
                },
                Err(e) => reply.error(e),
            }),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.target(ino) {
            Err(e) => reply.error(e),
            Ok(Target::Final(v, i)) => match v.inode(i) {
                Some(n) => readlink_of(n, reply),
                None => reply.error(Errno::ENOENT),
            },
            Ok(Target::Provisional(path)) => self.provisional(path, move |r| match r {
                Ok(a) => match answered(&a) {
                    Some(n) => readlink_of(n, reply),
                    None => reply.error(Errno::ENOENT),
                },
                Err(e) => reply.error(e),
            }),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let acc = flags.0 & libc::O_ACCMODE;
        if acc != libc::O_RDONLY {
            return reply.error(Errno::from_i32(libc::EROFS));
        }
        match self.target(ino) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let answer = move |r: Result<Bytes, ViewError>, reply: ReplyData| match r {
            Ok(data) => reply.data(&data),
            Err(e) => {
                tracing::error!(ino = ino.0, offset, size, "read failed: {e}");
                reply.error(Errno::EIO);
            }
        };
        match self.target(ino) {
            Err(e) => reply.error(e),
            // Answered from the runtime, not on the session thread: the
            // kernel keeps several readahead requests in flight
            // (FUSE_ASYNC_READ), and chunk files read from disk for one of
            // them overlap with the others instead of queueing behind it.
            Ok(Target::Final(v, i)) => {
                self.rt
                    .spawn(async move { answer(v.read(i, offset, size).await, reply) });
            }
            Ok(Target::Provisional(path)) => {
                let opening = self.opening.clone();
                self.rt.spawn(async move {
                    let r = match opening.lookup(&path).await {
                        Ok(Found::Node(n)) => opening.read(&n, offset, size).await,
                        Ok(Found::Final(v)) => match v.tree().resolve(&path).map(|n| n.ino) {
                            Some(i) => v.read(i, offset, size).await,
                            None => Err(ViewError::NoInode(ino.0)),
                        },
                        Err(e) => Err(e),
                    };
                    answer(r, reply)
                });
            }
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let opened = |n: Option<&Inode>, reply: ReplyOpen| match n {
            Some(n) if n.is_dir() => reply.opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR),
            Some(_) => reply.error(Errno::from_i32(libc::ENOTDIR)),
            None => reply.error(Errno::ENOENT),
        };
        match self.target(ino) {
            Err(e) => reply.error(e),
            Ok(Target::Final(v, i)) => opened(v.inode(i), reply),
            Ok(Target::Provisional(path)) => self.provisional(path, move |r| match r {
                Ok(a) => opened(answered(&a), reply),
                Err(e) => reply.error(e),
            }),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        match self.target(ino) {
            Err(e) => reply.error(e),
            Ok(Target::Final(v, i)) => fill_dir(&v, i, offset, reply),
            // A listing is only complete once every layer is.
            Ok(Target::Provisional(path)) => {
                let opening = self.opening.clone();
                self.rt.spawn(async move {
                    match opening.final_view().await {
                        Ok(v) => match v.tree().resolve(&path).map(|n| n.ino) {
                            Some(i) => fill_dir(&v, i, offset, reply),
                            None => reply.error(Errno::ENOENT),
                        },
                        Err(e) => reply.error(eio("opening the image", &e)),
                    }
                });
            }
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (files, bytes) = match self.opening.outcome() {
            Some(Ok(v)) => {
                let stats = v.stats();
                (stats.inodes as u64, stats.uncompressed)
            }
            // Still indexing: the compressed sizes are all there is to tell.
            _ => (
                0,
                self.opening
                    .image
                    .layers
                    .iter()
                    .map(|l| l.size)
                    .sum::<u64>(),
            ),
        };
        reply.statfs(bytes.div_ceil(4096), 0, 0, files, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.target(ino) {
            Err(e) => reply.error(e),
            Ok(Target::Final(v, i)) => match v.inode(i) {
                Some(n) => getxattr_of(n, name, size, reply),
                None => reply.error(Errno::ENOENT),
            },
            Ok(Target::Provisional(path)) => {
                let name = name.to_os_string();
                self.provisional(path, move |r| match r {
                    Ok(a) => match answered(&a) {
                        Some(n) => getxattr_of(n, &name, size, reply),
                        None => reply.error(Errno::ENOENT),
                    },
                    Err(e) => reply.error(e),
                })
            }
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.target(ino) {
            Err(e) => reply.error(e),
            Ok(Target::Final(v, i)) => match v.inode(i) {
                Some(n) => listxattr_of(n, size, reply),
                None => reply.error(Errno::ENOENT),
            },
            Ok(Target::Provisional(path)) => self.provisional(path, move |r| match r {
                Ok(a) => match answered(&a) {
                    Some(n) => listxattr_of(n, size, reply),
                    None => reply.error(Errno::ENOENT),
                },
                Err(e) => reply.error(e),
            }),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // `default_permissions` makes the kernel check modes itself.
        reply.ok();
    }
}

/// Mount options for an image: read-only, kernel-side permission checks,
/// device nodes and setuid bits shown as they are in the image.
pub(crate) fn mount_config(fsname: &str) -> Config {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(fsname.to_string()),
        MountOption::Subtype("lazyboot".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
        MountOption::CUSTOM("allow_other".into()),
    ];
    cfg.n_threads = Some(4);
    cfg
}

/// Kernel readahead for the mount, in KiB. The FUSE default (128 KiB) caps
/// each read request at 128 KiB, so a sequential reader pays a round trip per
/// 128 KiB; images are immutable, so reading further ahead never wastes work
/// on stale data.
pub(crate) const READAHEAD_KB: u32 = 4096;

/// Raise the readahead of the FUSE mount at `mountpoint`. The INIT reply can
/// only lower it, so this goes through the mount's bdi in sysfs. The bdi is
/// found in /proc/self/mountinfo, not by stat: a stat of the mount would
/// wait for the root's metadata, which a provisional tree may not know yet.
/// Best effort: returns the error for a log line.
pub(crate) fn raise_readahead(mountpoint: &Path, kb: u32) -> std::io::Result<()> {
    let want = std::fs::canonicalize(mountpoint)?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    // Fields: id parent major:minor root mountpoint ...; the last mount
    // at a path is the one on top.
    let dev = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let point = f.get(4)?.replace("\\040", " ");
            (Path::new(&point) == want).then(|| f[2].to_string())
        })
        .next_back()
        .ok_or_else(|| std::io::Error::other("mount not found in /proc/self/mountinfo"))?;
    std::fs::write(
        format!("/sys/class/bdi/{dev}/read_ahead_kb"),
        kb.to_string(),
    )
}

/// Detach mounts left behind by killed runs at `path`: a FUSE mount whose
/// server died answers every access with ENOTCONN. Several may be stacked, so
/// detach until the path answers again. A live mount is left alone.
pub(crate) fn cleanup_stale_mount(path: &Path) -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    let mut cleaned = false;
    for _ in 0..16 {
        // stat may be answered from the kernel's attribute cache even on a
        // dead mount; opening the directory always reaches the server.
        let probe = std::fs::metadata(path).and_then(|_| std::fs::read_dir(path).map(|_| ()));
        match probe {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                // SAFETY: umount2 with a valid NUL-terminated path has no memory effects.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                    tracing::warn!(
                        "cannot detach the dead mount at {}: {}",
                        path.display(),
                        std::io::Error::last_os_error()
                    );
                    return cleaned;
                }
                cleaned = true;
            }
            _ => return cleaned,
        }
    }
    cleaned
}
