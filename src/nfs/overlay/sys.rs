//! Thin wrappers over the file system calls the overlay needs and the
//! standard library does not offer (mknod, renameat2, xattrs, utimensat),
//! and the std calls every part uses, all taking host paths of any length.
//!
//! A node's upper mirrors its merged tree, so an upper path is the node's
//! state directory plus a path the client chose: a client can address
//! entries whose host path is longer than the host's `PATH_MAX`, which a
//! path-taking system call refuses with `ENAMETOOLONG`. Every call here
//! goes through [`host`]: a short path is used as it is (no extra system
//! call on the hot path); a long one is reached through a descriptor of its
//! parent directory, opened a piece at a time with `openat` (each piece
//! short enough for one call), and named `/proc/self/fd/N/NAME`, which the
//! kernel resolves exactly like an `*at()` call on that descriptor. That
//! one form serves every call, the std ones included (xattr calls have no
//! `*at()` variant on the kernels we run on).

use super::{not_found, Upper};
use crate::nfs::fs::{FileKind, FsError, SetTime};
use std::borrow::Cow;
use std::ffi::CString;
use std::fs::{self, Metadata};
use std::io;
use std::ops::Deref;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Host paths up to this many bytes are passed to system calls as they are.
/// Well below `PATH_MAX` (4096, with its NUL) so each piece of a longer
/// path fits in one call whatever its last component's length (≤ 255).
const DIRECT_MAX: usize = 3072;

/// A host path made usable in one system call; see the module's notes.
/// Keeps the parent directory's descriptor open while it lives.
pub(super) struct HostPath<'a> {
    path: Cow<'a, Path>,
    _dir: Option<OwnedFd>,
}

impl Deref for HostPath<'_> {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for HostPath<'_> {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// `p`, usable in a system call whatever its length.
pub(super) fn host(p: &Path) -> io::Result<HostPath<'_>> {
    let bytes = p.as_os_str().as_bytes();
    if bytes.len() <= DIRECT_MAX {
        return Ok(HostPath {
            path: Cow::Borrowed(p),
            _dir: None,
        });
    }
    let too_long = || io::Error::from_raw_os_error(libc::ENAMETOOLONG);
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(too_long());
    };
    let dir = open_dir_in_pieces(parent.as_os_str().as_bytes())?;
    let mut short = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    short.extend_from_slice(name.as_bytes());
    Ok(HostPath {
        path: Cow::Owned(std::ffi::OsString::from_vec(short).into()),
        _dir: Some(dir),
    })
}

/// Open directory `path` (any length) for use as an `*at()` base: each
/// `openat` resolves at most [`DIRECT_MAX`] bytes, cut at a `/`, relative
/// to the directory the one before opened.
fn open_dir_in_pieces(mut rest: &[u8]) -> io::Result<OwnedFd> {
    let mut dir: Option<OwnedFd> = None;
    while !rest.is_empty() {
        let cut = if rest.len() <= DIRECT_MAX {
            rest.len()
        } else {
            match rest[..=DIRECT_MAX].iter().rposition(|&b| b == b'/') {
                // A leading `/` alone: the root, then the rest from there.
                Some(0) => 1,
                Some(i) => i,
                None => return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG)),
            }
        };
        let piece =
            CString::new(&rest[..cut]).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let base = dir.as_ref().map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
        // SAFETY: `piece` is a valid NUL-terminated path and `base` an open
        // descriptor or AT_FDCWD.
        let fd = unsafe {
            libc::openat(
                base,
                piece.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        dir = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        rest = &rest[cut..];
        while let [b'/', tail @ ..] = rest {
            rest = tail;
        }
    }
    dir.ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

pub(super) fn lstat(p: &Path) -> io::Result<Metadata> {
    fs::symlink_metadata(host(p)?)
}

/// `p` as a C string for a system call, made short enough by [`host`];
/// the [`HostPath`] must live as long as the string is used.
fn cpath(p: &Path) -> io::Result<(HostPath<'_>, CString)> {
    let h = host(p)?;
    let c = CString::new(h.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok((h, c))
}

pub(super) fn read_link(p: impl AsRef<Path>) -> io::Result<std::path::PathBuf> {
    fs::read_link(host(p.as_ref())?)
}

pub(super) fn remove_file(p: impl AsRef<Path>) -> io::Result<()> {
    fs::remove_file(host(p.as_ref())?)
}

pub(super) fn remove_dir(p: impl AsRef<Path>) -> io::Result<()> {
    fs::remove_dir(host(p.as_ref())?)
}

/// Removes a tree of any depth: std's `remove_dir_all` works below its
/// root with `openat`/`unlinkat`.
pub(super) fn remove_dir_all(p: impl AsRef<Path>) -> io::Result<()> {
    fs::remove_dir_all(host(p.as_ref())?)
}

pub(super) fn rename(from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
    fs::rename(host(from.as_ref())?, host(to.as_ref())?)
}

pub(super) fn hard_link(from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
    fs::hard_link(host(from.as_ref())?, host(to.as_ref())?)
}

pub(super) fn create_dir(p: impl AsRef<Path>) -> io::Result<()> {
    fs::create_dir(host(p.as_ref())?)
}

pub(super) fn symlink(target: impl AsRef<Path>, p: impl AsRef<Path>) -> io::Result<()> {
    std::os::unix::fs::symlink(target, host(p.as_ref())?)
}

pub(super) fn lchown(p: impl AsRef<Path>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    std::os::unix::fs::lchown(host(p.as_ref())?, uid, gid)
}

/// The entries of directory `p`. Use `DirEntry::file_name`, never
/// `DirEntry::path`: for a long `p` the latter names a descriptor that is
/// closed by then.
pub(super) fn read_dir(p: impl AsRef<Path>) -> io::Result<fs::ReadDir> {
    fs::read_dir(host(p.as_ref())?)
}

pub(super) fn open(opts: &fs::OpenOptions, p: impl AsRef<Path>) -> io::Result<fs::File> {
    opts.open(host(p.as_ref())?)
}

pub(super) fn kind_of(ft: fs::FileType) -> FileKind {
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

pub(super) fn mknod(path: &Path, mode: u32, rdev: (u32, u32)) -> io::Result<()> {
    let (_h, c) = cpath(path)?;
    let dev = libc::makedev(rdev.0, rdev.1);
    // SAFETY: `c` is a valid NUL-terminated path.
    let r = unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, dev) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(super) fn rename2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let ((_ha, a), (_hb, b)) = (cpath(from)?, cpath(to)?);
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

pub(super) fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

/// Move `from` to the free name `to`.
pub(super) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match rename2(from, to, libc::RENAME_NOREPLACE) {
        Err(e) if unsupported(&e) => {
            if lstat(to).is_ok() {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            rename(from, to)
        }
        r => r,
    }
}
pub(super) fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let ((_h, c), n) = (cpath(path)?, CString::new(name).expect("xattr name"));
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

pub(super) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (_h, c) = cpath(path)?;
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

pub(super) fn set_times(
    path: &Path,
    atime: Option<SetTime>,
    mtime: Option<SetTime>,
) -> io::Result<()> {
    let (_h, c) = cpath(path)?;
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
pub(super) fn open_upper(u: &Upper, write: bool) -> Result<fs::File, FsError> {
    let f = fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW)
        .open(host(&u.path)?)
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

/// Capacity and free space of the file system `p` is on.
pub(crate) fn fs_stat(p: &Path) -> io::Result<crate::nfs::fs::FsStat> {
    let (_h, c) = cpath(p)?;
    // SAFETY: zeroed statvfs is a valid out-parameter for statvfs(3).
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = s.f_frsize as u64;
    Ok(crate::nfs::fs::FsStat {
        total_bytes: s.f_blocks as u64 * frsize,
        free_bytes: s.f_bavail as u64 * frsize,
        total_files: s.f_files as u64,
        free_files: s.f_favail as u64,
    })
}

pub(super) fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(host(path)?, fs::Permissions::from_mode(mode & 0o7777))
}
