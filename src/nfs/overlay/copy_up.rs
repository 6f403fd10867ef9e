//! Copy-up: before a lower entry changes, it is copied into the upper.
//!
//! Before a lower file is changed (write, setattr, link, rename) its content
//! is read through [`ImageView::read`](crate::image::ImageView::read) into
//! `work/` (no lock held, the image may be fetched lazily), fsynced, given
//! the lower owner, mode (incl. set-uid bits, applied after chown), xattrs
//! and mtime, linked to `index/ID` and then linked at every name that still
//! shows the lower file (so lower hard links stay hard links). Directories
//! are copied up (metadata only) whenever something is created or deleted
//! in them.

use super::attr::apply_lower_meta;
use super::sys;
use super::sys::{lstat, mknod, rename_noreplace};
use super::whiteout::{is_opaque, mknod_zero_device};
use super::{blocking, not_found, Inner, NodeOverlay, Obj, COPY_CHUNK, UPPER_ID_BIT};
use crate::image::tree::ROOT_INO;
use crate::layer::EntryKind;
use crate::nfs::fs::FsError;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

impl Inner {
    /// The upper directory for merged directory `rel`, copying it and its
    /// ancestors up as needed: (path, inode).
    pub(super) fn ensure_dir_upper(&self, rel: &Path) -> Result<(PathBuf, u64), FsError> {
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
                    sys::create_dir(&tmp)?;
                    let made =
                        apply_lower_meta(&tmp, inode).and_then(|_| rename_noreplace(&tmp, &next));
                    if let Err(e) = made {
                        let _ = sys::remove_dir(&tmp);
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
    pub(super) fn finish_copy_up(&self, l: u64, tmp: Option<PathBuf>) -> Result<(), FsError> {
        let result = self.finish_copy_up_inner(l, tmp.as_deref());
        if let Some(t) = tmp {
            let _ = sys::remove_file(t);
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
                            EntryKind::Symlink => {
                                sys::symlink(inode.symlink.as_deref().unwrap_or(""), &tmp)
                            }
                            EntryKind::CharDevice if dev == (0, 0) => mknod_zero_device(&tmp),
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
                    let _ = sys::remove_file(&idx);
                    sys::hard_link(&copy, &idx)
                });
                if data.is_none() {
                    let _ = sys::remove_file(&copy);
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
            sys::hard_link(&idx, pu.join(name))?;
            self.state.lock().add_link(up_ino, pino, name.as_bytes());
            linked += 1;
        }
        if indexed.is_none() && linked == 0 {
            self.forget_index(l);
        }
        Ok(())
    }
}

impl NodeOverlay {
    /// Copy lower object `o` up: directories (and their ancestors) as
    /// metadata, non-directories with their data (at most `limit` bytes).
    pub(super) async fn copy_up(&self, o: &Obj, limit: Option<u64>) -> Result<(), FsError> {
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
}

#[cfg(test)]
mod tests {
    use super::super::sys::{get_xattr, lstat};
    use super::super::tests::*;
    use crate::nfs::fs::{FsError, NodeFs};
    use std::fs;
    use std::os::unix::fs::MetadataExt;

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
}
