//! [`NodeFs`] for the overlay: each call runs its part off the async
//! threads under the namespace lock, retrying when a concurrent change
//! (another copy-up, say) made the entry it found stale. While the node has
//! changed nothing, reads are answered from the image alone
//! ([`super::pristine`]).

use super::attr::attr_from_inode;
use super::lower::lower_kind;
use super::pristine::lower_listing;
use super::sys;
use super::sys::{fs_stat, mknod, open_upper};
use super::whiteout::mknod_zero_device;
use super::{blocking, check_lookup_name, check_name, Inner, NodeOverlay, Obj};
use crate::image::tree::ROOT_INO;
use crate::nfs::fs::{
    Attr, Cred, DirEntry, FileId, FileKind, FsError, FsStat, NodeFs, ReadChecked, ReadFailed,
    SetAttr,
};
use bytes::Bytes;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};

impl NodeFs for NodeOverlay {
    fn root(&self) -> FileId {
        ROOT_INO
    }

    fn read_only(&self) -> bool {
        self.inner.read_only
    }

    async fn getattr(&self, id: FileId) -> Result<Attr, FsError> {
        if let Some(a) = self.inner.pristine_attr(id) {
            return Ok(a);
        }
        let inner = self.inner.clone();
        blocking(move || {
            let _g = inner.ns_lock.read();
            let o = inner.resolve(id)?;
            inner.attr(&o)
        })
        .await
    }

    async fn lookup(&self, dir: FileId, name: &[u8]) -> Result<FileId, FsError> {
        check_lookup_name(name)?;
        if name != b"." && name != b".." && self.inner.pristine_dir(dir).is_some() {
            let child = self.inner.lower_child(Some(dir), name);
            return child.map(|l| l.ino).ok_or(FsError::NotFound);
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
        if self.inner.pristine_file(id).is_some() {
            return self.read_source(Source::Lower(id), offset, count).await;
        }
        let inner = self.inner.clone();
        // The file is opened under the lock, read after it.
        let source = blocking(move || {
            let _g = inner.ns_lock.read();
            let o = inner.resolve(id)?;
            inner.source(&o)
        })
        .await?;
        self.read_source(source, offset, count).await
    }

    async fn read_checked<E: Send>(
        &self,
        id: FileId,
        offset: u64,
        count: u32,
        check: impl FnOnce(&Attr) -> Result<(), E> + Send,
    ) -> Result<ReadChecked<E>, FsError> {
        if let Some(attr) = self.inner.pristine_file(id).map(attr_from_inode) {
            if let Err(refused) = check(&attr) {
                return Ok((attr, Err(ReadFailed::Refused(refused))));
            }
            let data = self.read_source(Source::Lower(id), offset, count).await;
            return Ok((attr, data.map_err(ReadFailed::Fs)));
        }
        let inner = self.inner.clone();
        // One resolution gives the attributes and the opened file; `check`
        // and the read come after the lock is released.
        let (attr, source) = blocking(move || {
            let _g = inner.ns_lock.read();
            let o = inner.resolve(id)?;
            let attr = inner.attr(&o)?;
            Ok((attr, inner.source(&o)))
        })
        .await?;
        if let Err(refused) = check(&attr) {
            return Ok((attr, Err(ReadFailed::Refused(refused))));
        }
        let data = match source {
            Ok(source) => self.read_source(source, offset, count).await,
            Err(e) => Err(e),
        };
        Ok((attr, data.map_err(ReadFailed::Fs)))
    }

    async fn readlink(&self, id: FileId) -> Result<Vec<u8>, FsError> {
        if let Some(i) = self.inner.pristine_entry(id) {
            if lower_kind(i.kind) != FileKind::Symlink {
                return Err(FsError::Inval);
            }
            return Ok(i.symlink.clone().unwrap_or_default().into_bytes());
        }
        let inner = self.inner.clone();
        blocking(move || {
            let _g = inner.ns_lock.read();
            let o = inner.resolve(id)?;
            if o.kind != FileKind::Symlink {
                return Err(FsError::Inval);
            }
            match (&o.upper, o.lower) {
                (Some(u), _) => Ok(sys::read_link(&u.path)?.into_os_string().into_vec()),
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
        if let Some(d) = self.inner.pristine_dir(dir) {
            return Ok(lower_listing(&d.children, cookie, max));
        }
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
                sys::create_dir(tmp)
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
                sys::symlink(OsStr::from_bytes(&target), tmp)
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
            FileKind::CharDevice => (libc::S_IFCHR, rdev),
            FileKind::BlockDevice => (libc::S_IFBLK, rdev),
            FileKind::Fifo => (libc::S_IFIFO, (0, 0)),
            FileKind::Socket => (libc::S_IFSOCK, (0, 0)),
            FileKind::File | FileKind::Dir | FileKind::Symlink => return Err(FsError::Inval),
        };
        let (inner, name, cred) = (self.inner.clone(), name.to_vec(), cred.clone());
        blocking(move || {
            inner.create_entry(dir, &name, kind, mode, &cred, |tmp| {
                if ty == libc::S_IFCHR && rdev == (0, 0) {
                    // Not a whiteout: marked as a device.
                    mknod_zero_device(tmp)
                } else {
                    mknod(tmp, ty | 0o600, rdev)
                }
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
                sys::hard_link(&su.path, &tmp)?;
                if let Err(e) = inner.place(&tmp, &pu, &name, false) {
                    let _ = sys::remove_file(&tmp);
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
            Ok(fs_stat(&inner.upper)?)
        })
        .await
    }
}

/// Where a regular file's data is, as found under the namespace lock.
enum Source {
    /// The upper file, opened under the lock: the inode that was looked up.
    Upper(fs::File),
    /// The image inode of a file not copied up.
    Lower(u64),
}

impl Inner {
    /// The data of merged entry `o`, which must be a regular file.
    fn source(&self, o: &Obj) -> Result<Source, FsError> {
        match o.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::Inval),
        }
        match &o.upper {
            Some(u) => Ok(Source::Upper(open_upper(u, false)?)),
            None => Ok(Source::Lower(o.lower.ok_or(FsError::Stale)?)),
        }
    }
}

impl NodeOverlay {
    /// Up to `count` bytes at `offset` of `source`, and whether the end was
    /// reached. Image data may be fetched lazily, so no lock is held.
    async fn read_source(
        &self,
        source: Source,
        offset: u64,
        count: u32,
    ) -> Result<(Bytes, bool), FsError> {
        let f = match source {
            Source::Upper(f) => f,
            Source::Lower(l) => {
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
        };
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use crate::nfs::fs::{FileKind, FsError, NodeFs, ReadFailed, SetAttr};
    use std::fs;

    #[tokio::test]
    async fn read_checked_gives_attributes_then_data_if_allowed() {
        let env = Env::new().await;
        let fs = &env.fs;
        let passwd = look(fs, "etc/passwd").await.unwrap();
        let (a, data) = fs
            .read_checked(passwd, 5, 3, |_| Ok::<(), ()>(()))
            .await
            .unwrap();
        assert_eq!(a, fs.getattr(passwd).await.unwrap());
        let (bytes, eof) = data.unwrap();
        assert_eq!((&bytes[..], eof), (&PASSWD[5..8], false));
        // Refused by the check: attributes, no data.
        let (a, data) = fs
            .read_checked(passwd, 0, 10, |a| Err(a.mode))
            .await
            .unwrap();
        assert_eq!(data, Err(ReadFailed::Refused(a.mode)));
        // Copied up: the data comes from the upper file.
        fs.write(passwd, 0, b"X", &root()).await.unwrap();
        let (_, data) = fs
            .read_checked(passwd, 0, 1000, |_| Ok::<(), ()>(()))
            .await
            .unwrap();
        let (bytes, eof) = data.unwrap();
        assert_eq!((bytes[0], bytes.len(), eof), (b'X', PASSWD.len(), true));
        // Not a file: attributes, and the read fails as `read` would.
        let etc = look(fs, "etc").await.unwrap();
        let (a, data) = fs
            .read_checked(etc, 0, 10, |_| Ok::<(), ()>(()))
            .await
            .unwrap();
        assert_eq!(a.kind, FileKind::Dir);
        assert_eq!(data, Err(ReadFailed::Fs(FsError::IsDir)));
        assert_eq!(
            fs.read_checked(1 << 40, 0, 10, |_| Ok::<(), ()>(())).await,
            Err(FsError::Stale)
        );
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
