//! New entries: each is built under `work/` with its owner, mode and
//! opaque marker, then renamed to its name, so a crash never leaves a
//! half-made entry in the upper.

use super::resolve::upper_id;
use super::sys;
use super::sys::{chmod, lstat, rename2, rename_noreplace, set_xattr, unsupported};
use super::whiteout::is_whiteout;
use super::{check_name, name_os, Inner, Obj, OPAQUE_XATTR};
use crate::nfs::fs::{Cred, FileId, FileKind, FsError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

impl Inner {
    /// Move the entry built at `tmp` to the free name `name` of upper
    /// directory `pu`, replacing a whiteout there.
    pub(super) fn place(&self, tmp: &Path, pu: &Path, name: &[u8], is_dir: bool) -> io::Result<()> {
        let target = pu.join(name_os(name));
        match lstat(&target) {
            Ok(m) if is_whiteout(&target, &m)? => {
                if is_dir {
                    // A directory cannot replace a device: swap, then drop
                    // the whiteout that is now at `tmp`.
                    match rename2(tmp, &target, libc::RENAME_EXCHANGE) {
                        Ok(()) => sys::remove_file(tmp),
                        Err(e) if unsupported(&e) => {
                            sys::remove_file(&target)?;
                            sys::rename(tmp, &target)
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    sys::rename(tmp, &target)
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
    pub(super) fn create_entry(
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

    pub(super) fn create_in(
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
            sys::lchown(&tmp, Some(uid), Some(gid))?;
            if kind != FileKind::Symlink {
                chmod(&tmp, mode)?;
            }
            if is_dir {
                set_xattr(&tmp, OPAQUE_XATTR, b"y")?;
            }
            self.place(&tmp, &pu, name, is_dir)
        };
        if let Err(e) = finish() {
            let _ = sys::remove_dir_all(&tmp).or_else(|_| sys::remove_file(&tmp));
            return Err(e.into());
        }
        let m = lstat(&pu.join(name_os(name)))?;
        self.state.lock().add_link(m.ino(), pino, name);
        Ok(upper_id(m.ino()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::sys::lstat;
    use super::super::tests::*;
    use super::super::UPPER_ID_BIT;
    use crate::nfs::fs::{Cred, FileKind, FsError, NodeFs};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    #[tokio::test]
    async fn creations_land_in_upper_owned_by_caller() {
        let mut env = Env::new().await;
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
        // A device 0:0 is a device, not a whiteout: listed, looked up,
        // removed like any other, also after a restart.
        let zero = fs
            .mknod(home, b"zero", FileKind::CharDevice, 0o640, (0, 0), &me)
            .await
            .unwrap();
        let a = fs.getattr(zero).await.unwrap();
        assert_eq!(
            (a.kind, a.rdev, a.mode),
            (FileKind::CharDevice, (0, 0), 0o640)
        );
        assert!(!whiteout_at(&env.upper("home/user/zero")));
        env.restart().await;
        let fs = &env.fs;
        assert_eq!(fs.lookup(home, b"zero").await.unwrap(), zero);
        assert!(list(fs, "home/user").await.contains(&"zero".to_string()));
        fs.remove(home, b"zero").await.unwrap();
        assert_eq!(fs.lookup(home, b"zero").await, Err(FsError::NotFound));
        // Over a deleted lower file: the device replaces its whiteout.
        let opt = look(fs, "opt").await.unwrap();
        fs.remove(opt, b"x").await.unwrap();
        fs.mknod(opt, b"x", FileKind::CharDevice, 0o600, (0, 0), &me)
            .await
            .unwrap();
        let p = look(fs, "opt/x").await.unwrap();
        assert_eq!(fs.getattr(p).await.unwrap().kind, FileKind::CharDevice);
        fs.remove(opt, b"x").await.unwrap();
        assert!(whiteout_at(&env.upper("opt/x")));
        assert_eq!(look(fs, "opt/x").await, Err(FsError::NotFound));

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
}
