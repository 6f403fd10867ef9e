//! Thin wrappers over the file system calls the overlay needs and the
//! standard library does not offer (mknod, renameat2, xattrs, utimensat),
//! and the few std calls every part uses.

use super::{not_found, Upper};
use crate::nfs::fs::{FileKind, FsError, SetTime};
use std::ffi::CString;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub(super) fn lstat(p: &Path) -> io::Result<Metadata> {
    fs::symlink_metadata(p)
}

pub(super) fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
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

pub(super) fn rename2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
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
            fs::rename(from, to)
        }
        r => r,
    }
}
pub(super) fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
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

pub(super) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
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
pub(super) fn open_upper(u: &Upper, write: bool) -> Result<fs::File, FsError> {
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

/// Capacity and free space of the file system `p` is on.
pub(crate) fn fs_stat(p: &Path) -> io::Result<crate::nfs::fs::FsStat> {
    let c = cpath(p)?;
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
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
}
