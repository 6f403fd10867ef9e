//! Rename.
//!
//! Renaming a directory that has a lower part (lower-only or merged) fails
//! with `XDev`, as overlayfs does without `redirect_dir`; `mv` then copies.
//! Directories created in the upper can be renamed freely. Lower directories
//! therefore never move, which keeps lower ids resolvable by path.

use super::sys;
use super::sys::{lstat, rename2, set_xattr, unsupported};
use super::whiteout::{is_whiteout, mknod_whiteout};
use super::{check_name, name_os, Inner, Obj, OPAQUE_XATTR};
use crate::nfs::fs::{FileId, FsError};
use std::io;
use std::os::unix::fs::MetadataExt;

impl Inner {
    /// The rename itself. `Ok(Some(src))`: the source is a lower file that
    /// must be copied up first.
    pub(super) fn rename_blocking(
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
        let target_whiteout = match &tmeta {
            Some(m) => is_whiteout(&target, m)?,
            None => false,
        };
        if tmeta.as_ref().is_some_and(|m| m.is_dir()) {
            // An empty merged directory: only whiteouts, which go with it.
            for e in sys::read_dir(&target)? {
                sys::remove_file(target.join(e?.file_name()))?;
            }
        }
        if src.is_dir() && target_whiteout {
            rename2(&su.path, &target, libc::RENAME_EXCHANGE)
                .or_else(|e| {
                    if unsupported(&e) {
                        sys::remove_file(&target)?;
                        sys::rename(&su.path, &target)?;
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
                    let left = lstat(&su.path).ok();
                    if !need_whiteout
                        && left.is_some_and(|m| is_whiteout(&su.path, &m).unwrap_or(false))
                    {
                        sys::remove_file(&su.path)?;
                    }
                    Ok(())
                })?;
        } else if need_whiteout {
            match rename2(&su.path, &target, libc::RENAME_WHITEOUT) {
                Ok(()) => {}
                Err(e) if unsupported(&e) => {
                    sys::rename(&su.path, &target)?;
                    mknod_whiteout(&su.path)?;
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            sys::rename(&su.path, &target)?;
        }
        if src.is_dir() {
            set_xattr(&target, OPAQUE_XATTR, b"y")?;
        }
        if let Some(m) = tmeta.filter(|_| !target_whiteout) {
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::whiteout::is_opaque;
    use crate::nfs::fs::{FsError, NodeFs, SetAttr};

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
        assert!(whiteout_at(&env.upper("etc/hostname")));
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
}
