//! Advisory locks on a directory's `lock` file (`flock`): processes that
//! use a directory hold it shared (the cache) or exclusively (`serve`'s
//! state), and a repair takes it exclusively so that it never changes files
//! under a live process. The kernel drops a lock when its holder dies, so a
//! killed process never leaves one behind.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `dir/lock`, locked (`exclusive` or shared) without waiting; `None` if
/// another holder's lock is in the way.
pub(crate) fn try_lock(dir: &Path, exclusive: bool) -> io::Result<Option<File>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    let how = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), how | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_locks_share_and_exclude_an_exclusive_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = try_lock(dir.path(), false).unwrap().expect("first shared");
        let b = try_lock(dir.path(), false).unwrap().expect("second shared");
        assert!(try_lock(dir.path(), true).unwrap().is_none());
        drop((a, b));
        let x = try_lock(dir.path(), true).unwrap().expect("exclusive");
        assert!(try_lock(dir.path(), false).unwrap().is_none());
        drop(x);
    }
}
