//! Whiteouts and opaque directories, and removing entries.
//!
//! Exactly as overlayfs writes them, so an upper directory can also be
//! inspected (or mounted) with `mount -t overlay`:
//!
//! - a deleted lower entry is a character device 0:0 in the upper. A node
//!   may make a real device 0:0 too (POSIX allows it, and test suites do
//!   it): that one carries the xattr `trusted.overlay.lazyboot.device` and
//!   is never read as a whiteout here (kernel overlayfs, which refuses to
//!   create such devices, would take it for one);
//! - an opaque directory carries the xattr `trusted.overlay.opaque = "y"`.
//!   NFSv3 cannot set xattrs, and xattrs in `trusted.overlay.*` are not copied
//!   up from the image, so the marker cannot come from a user either.
//!
//! Every directory made with `mkdir` is opaque (it never merges with a lower
//! directory, also not with one a later image adds); directories copied up
//! from the image are not.

use super::sys;
use super::sys::{get_xattr, mknod, rename2, set_xattr, unsupported};
use super::{check_name, name_os, Inner, Obj, OPAQUE_XATTR};
use crate::nfs::fs::{FileId, FsError};
use std::collections::HashSet;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Marks a character device 0:0 at its name as a device, not a whiteout.
/// In the overlay's private namespace: never copied up, never set by a node.
const DEVICE_XATTR: &str = "trusted.overlay.lazyboot.device";

/// Whether the upper entry at `path` (with metadata `m`) records a deleted
/// lower entry: a character device 0:0 without the device marker. Only
/// such a device costs an xattr read.
pub(super) fn is_whiteout(path: &Path, m: &Metadata) -> io::Result<bool> {
    if !(m.file_type().is_char_device() && m.rdev() == 0) {
        return Ok(false);
    }
    Ok(get_xattr(path, DEVICE_XATTR)?.is_none())
}

/// Make a character device 0:0 that is a device, not a whiteout.
pub(super) fn mknod_zero_device(path: &Path) -> io::Result<()> {
    mknod(path, libc::S_IFCHR | 0o600, (0, 0))?;
    set_xattr(path, DEVICE_XATTR, b"y")
}

pub(super) fn mknod_whiteout(path: &Path) -> io::Result<()> {
    mknod(path, libc::S_IFCHR, (0, 0))
}

pub(super) fn is_opaque(path: &Path) -> io::Result<bool> {
    Ok(get_xattr(path, OPAQUE_XATTR)?.as_deref() == Some(b"y"))
}

impl Inner {
    /// Whether merged directory `o` has no entries.
    pub(super) fn is_empty(&self, o: &Obj) -> Result<bool, FsError> {
        let mut whiteouts: HashSet<Vec<u8>> = HashSet::new();
        if let Some(u) = &o.upper {
            for e in sys::read_dir(&u.path)? {
                let e = e?;
                let wh = e.file_type()?.is_char_device()
                    && is_whiteout(&u.path.join(e.file_name()), &e.metadata()?)?;
                if wh {
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
            let r = sys::rename(&wh, path);
            if r.is_err() {
                let _ = sys::remove_file(&wh);
            }
            return r;
        }
        match rename2(&wh, path, libc::RENAME_EXCHANGE) {
            // The directory is now at `wh`.
            Ok(()) => sys::remove_dir_all(&wh),
            Err(e) if unsupported(&e) => {
                let trash = self.tmp_path();
                sys::rename(path, &trash)?;
                sys::rename(&wh, path)?;
                sys::remove_dir_all(&trash)
            }
            Err(e) => {
                let _ = sys::remove_file(&wh);
                Err(e)
            }
        }
    }

    pub(super) fn remove_blocking(
        &self,
        dir: FileId,
        name: &[u8],
        want_dir: bool,
    ) -> Result<(), FsError> {
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
                    sys::rename(&u.path, &trash)?;
                    sys::remove_dir_all(&trash)?;
                } else {
                    sys::remove_file(&u.path)?;
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use crate::nfs::fs::NodeFs;

    #[tokio::test]
    async fn remove_of_lower_file_leaves_whiteout_across_restart() {
        let mut env = Env::new().await;
        let etc = look(&env.fs, "etc").await.unwrap();
        let passwd = look(&env.fs, "etc/passwd").await.unwrap();
        env.fs.remove(etc, b"passwd").await.unwrap();
        assert_eq!(look(&env.fs, "etc/passwd").await, Err(FsError::NotFound));
        assert_eq!(env.fs.getattr(passwd).await, Err(FsError::Stale));
        assert_eq!(list(&env.fs, "etc").await, strs(&["hostname", "shadow"]));
        assert!(whiteout_at(&env.upper("etc/passwd")));
        // A copied-up file removed also leaves a whiteout.
        let shadow = look(&env.fs, "etc/shadow").await.unwrap();
        env.fs.write(shadow, 0, b"S", &root()).await.unwrap();
        env.fs.remove(etc, b"shadow").await.unwrap();
        assert!(whiteout_at(&env.upper("etc/shadow")));
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
        assert!(whiteout_at(&env.upper("etc/passwd")));
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
        assert!(whiteout_at(&env.upper("opt")));
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
        assert!(whiteout_at(&env.upper("opt")));
        assert_eq!(look(fs, "opt").await, Err(FsError::NotFound));
    }
}
