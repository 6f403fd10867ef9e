//! Attributes: what GETATTR shows of a merged entry (the upper file's, or
//! the image inode's), what a copy takes over from the image, and SETATTR on
//! an entry that is already in the upper.

use super::lower::lower_kind;
use super::sys;
use super::sys::{chmod, kind_of, set_times, set_xattr};
use super::{Inner, Obj, PRIVATE_XATTR_PREFIX};
use crate::image::tree::Inode;
use crate::layer::EntryKind;
use crate::nfs::fs::{Attr, FileId, FileKind, FsError, SetAttr, SetTime, Time};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Give a freshly made copy the lower inode's owner, mode, xattrs and mtime.
/// chown comes first: it clears set-uid bits.
pub(super) fn apply_lower_meta(path: &Path, inode: &Inode) -> io::Result<()> {
    sys::lchown(path, Some(inode.uid), Some(inode.gid))?;
    if inode.kind != EntryKind::Symlink {
        chmod(path, inode.mode)?;
    }
    for (name, value) in &inode.xattrs {
        if name.starts_with(PRIVATE_XATTR_PREFIX) {
            continue;
        }
        if let Err(e) = set_xattr(path, name, value) {
            tracing::warn!(path = %path.display(), xattr = %name, "copy-up could not set xattr: {e}");
        }
    }
    let t = Some(SetTime::Client(Time {
        secs: inode.mtime,
        nanos: 0,
    }));
    set_times(path, t, t)
}

fn attr_from_meta(id: FileId, m: &Metadata) -> Attr {
    let kind = kind_of(m.file_type());
    let rdev = m.rdev();
    Attr {
        id,
        kind,
        mode: m.mode() & 0o7777,
        nlink: m.nlink().min(u32::MAX as u64) as u32,
        uid: m.uid(),
        gid: m.gid(),
        size: m.size(),
        used: m.blocks() * 512,
        rdev: if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
            (libc::major(rdev), libc::minor(rdev))
        } else {
            (0, 0)
        },
        atime: Time {
            secs: m.atime(),
            nanos: m.atime_nsec() as u32,
        },
        mtime: Time {
            secs: m.mtime(),
            nanos: m.mtime_nsec() as u32,
        },
        ctime: Time {
            secs: m.ctime(),
            nanos: m.ctime_nsec() as u32,
        },
    }
}

pub(crate) fn attr_from_inode(i: &Inode) -> Attr {
    let t = Time {
        secs: i.mtime,
        nanos: 0,
    };
    Attr {
        id: i.ino,
        kind: lower_kind(i.kind),
        mode: i.mode & 0o7777,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        size: i.size,
        used: i.size.div_ceil(512) * 512,
        rdev: (i.rdev_major, i.rdev_minor),
        atime: t,
        mtime: t,
        ctime: t,
    }
}

impl Inner {
    pub(super) fn attr(&self, o: &Obj) -> Result<Attr, FsError> {
        match &o.upper {
            Some(u) => Ok(self.attr_upper(o.id, o.lower.is_some(), &u.meta)),
            None => {
                let l = o.lower.ok_or(FsError::Stale)?;
                let inode = self.tree().get(l).ok_or(FsError::Stale)?;
                Ok(attr_from_inode(inode))
            }
        }
    }

    pub(super) fn attr_upper(&self, id: FileId, merged: bool, meta: &Metadata) -> Attr {
        let mut a = attr_from_meta(id, meta);
        if a.kind == FileKind::Dir {
            if merged {
                // Unknown, as overlayfs says for merged directories.
                a.nlink = 1;
            }
        } else if self.state.lock().origin.contains_key(&meta.ino()) {
            // Do not count the index link.
            a.nlink = a.nlink.saturating_sub(1).max(1);
        }
        a
    }

    /// Apply `set` to `o`, which is in the upper.
    pub(super) fn apply_setattr(&self, o: &Obj, set: &SetAttr) -> Result<(), FsError> {
        let u = o.upper.as_ref().ok_or(FsError::Stale)?;
        if let Some(size) = set.size {
            match o.kind {
                FileKind::File => {
                    let f = sys::open(fs::OpenOptions::new().write(true), &u.path)?;
                    f.set_len(size)?;
                }
                FileKind::Dir => return Err(FsError::IsDir),
                _ => return Err(FsError::Inval),
            }
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::lchown(&u.path, set.uid, set.gid)?;
        }
        if let Some(mode) = set.mode {
            if o.kind != FileKind::Symlink {
                chmod(&u.path, mode)?;
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            set_times(&u.path, set.atime, set.mtime)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::sys::lstat;
    use super::super::tests::*;
    use crate::image::testimage::MTIME;
    use crate::nfs::fs::{FileKind, FsError, NodeFs, SetAttr, SetTime, Time};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    #[tokio::test]
    async fn setattr_copies_up_and_applies() {
        let env = Env::new().await;
        let fs = &env.fs;
        let big_id = look(fs, "var/lib/big").await.unwrap();
        let a = fs
            .setattr(
                big_id,
                &SetAttr {
                    size: Some(10),
                    ..Default::default()
                },
                &root(),
            )
            .await
            .unwrap();
        assert_eq!(a.size, 10);
        assert_eq!(read_all(fs, big_id).await, big()[..10]);
        let t = Time {
            secs: 1_234_567_890,
            nanos: 5,
        };
        let set = SetAttr {
            mode: Some(0o4711),
            uid: Some(7),
            gid: Some(8),
            mtime: Some(SetTime::Client(t)),
            ..Default::default()
        };
        let a = fs.setattr(big_id, &set, &root()).await.unwrap();
        assert_eq!((a.mode, a.uid, a.gid, a.mtime), (0o4711, 7, 8, t));
        // Symlinks and devices are copied up too.
        let sh = look(fs, "bin/sh").await.unwrap();
        let a = fs
            .setattr(
                sh,
                &SetAttr {
                    uid: Some(5),
                    ..Default::default()
                },
                &root(),
            )
            .await
            .unwrap();
        assert_eq!((a.uid, a.id, a.kind), (5, sh, FileKind::Symlink));
        assert_eq!(a.mtime.secs, MTIME as i64);
        assert_eq!(fs.readlink(sh).await.unwrap(), b"busybox");
        let null = look(fs, "dev/null").await.unwrap();
        let a = fs
            .setattr(
                null,
                &SetAttr {
                    mode: Some(0o600),
                    ..Default::default()
                },
                &root(),
            )
            .await
            .unwrap();
        assert_eq!(
            (a.mode, a.rdev, a.kind),
            (0o600, (1, 3), FileKind::CharDevice)
        );
        let m = lstat(&env.upper("dev/null")).unwrap();
        assert_eq!((libc::major(m.rdev()), libc::minor(m.rdev())), (1, 3));
        let fifo = look(fs, "run/initctl").await.unwrap();
        fs.setattr(
            fifo,
            &SetAttr {
                gid: Some(3),
                ..Default::default()
            },
            &root(),
        )
        .await
        .unwrap();
        assert!(lstat(&env.upper("run/initctl"))
            .unwrap()
            .file_type()
            .is_fifo());
        let run = look(fs, "run").await.unwrap();
        assert_eq!(
            fs.setattr(
                run,
                &SetAttr {
                    size: Some(0),
                    ..Default::default()
                },
                &root()
            )
            .await,
            Err(FsError::IsDir)
        );
        // An empty setattr changes nothing, not even by copying up.
        let x = look(fs, "opt/x").await.unwrap();
        fs.setattr(x, &SetAttr::default(), &root()).await.unwrap();
        assert!(lstat(&env.upper("opt")).is_err());
    }
}
