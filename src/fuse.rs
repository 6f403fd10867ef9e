//! Read-only FUSE front end over an [`ImageView`]. Images are immutable, so
//! the kernel may cache attributes, entries, symlinks and pages for as long
//! as it likes; that keeps warm reads at page-cache speed.

use crate::layer::EntryKind;
use crate::tree::Inode;
use crate::view::ImageView;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Nothing in an image ever changes, so kernel caches never need to expire.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

pub struct LazyFs {
    view: Arc<ImageView>,
    rt: tokio::runtime::Handle,
}

impl LazyFs {
    pub fn new(view: Arc<ImageView>, rt: tokio::runtime::Handle) -> Self {
        LazyFs { view, rt }
    }

    fn node(&self, ino: INodeNo) -> Result<&Inode, Errno> {
        self.view.inode(ino.0).ok_or(Errno::ENOENT)
    }
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

pub fn attr(n: &Inode) -> FileAttr {
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
        match self.view.tree.lookup(parent.0, name) {
            Some(n) => reply.entry(&TTL, &attr(n), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(n) => reply.attr(&TTL, &attr(n)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).map(|n| n.symlink.as_deref()) {
            Ok(Some(target)) => reply.data(target.as_bytes()),
            Ok(None) => reply.error(Errno::from_i32(libc::EINVAL)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let acc = flags.0 & libc::O_ACCMODE;
        if acc != libc::O_RDONLY {
            return reply.error(Errno::from_i32(libc::EROFS));
        }
        match self.node(ino) {
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
        match self.rt.block_on(self.view.read(ino.0, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => {
                tracing::error!(ino = ino.0, offset, size, "read failed: {e}");
                reply.error(Errno::EIO);
            }
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Ok(n) if n.is_dir() => reply.opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR),
            Ok(_) => reply.error(Errno::from_i32(libc::ENOTDIR)),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
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
            let kind = self
                .view
                .inode(*child)
                .map_or(FileType::RegularFile, |c| file_type(c.kind));
            if reply.add(INodeNo(*child), 2 + i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.view.tree.len() as u64;
        let bytes: u64 = self
            .view
            .layers
            .iter()
            .map(|l| l.index.uncompressed_size)
            .sum();
        reply.statfs(bytes.div_ceil(4096), 0, 0, files, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match n.xattrs.iter().find(|(k, _)| OsStr::new(k) == name) {
            Some((_, v)) => xattr_reply(reply, size, v),
            None => reply.error(Errno::from_i32(libc::ENODATA)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let mut list = Vec::new();
        for (k, _) in &n.xattrs {
            list.extend_from_slice(k.as_bytes());
            list.push(0);
        }
        xattr_reply(reply, size, &list);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // `default_permissions` makes the kernel check modes itself.
        reply.ok();
    }
}

/// Mount options for an image: read-only, kernel-side permission checks,
/// device nodes and setuid bits shown as they are in the image.
pub fn mount_config(fsname: &str) -> Config {
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
pub const READAHEAD_KB: u32 = 4096;

/// Raise the readahead of the FUSE mount at `mountpoint`. The INIT reply can
/// only lower it, so this goes through the mount's bdi in sysfs. Best effort:
/// returns the error for a log line.
pub fn raise_readahead(mountpoint: &Path, kb: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mountpoint)?.dev();
    let bdi = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    std::fs::write(bdi, kb.to_string())
}

/// Detach mounts left behind by killed runs at `path`: a FUSE mount whose
/// server died answers every access with ENOTCONN. Several may be stacked, so
/// detach until the path answers again. A live mount is left alone.
pub fn cleanup_stale_mount(path: &Path) -> bool {
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
