//! The NFS procedures that change the file system: SETATTR, WRITE, CREATE,
//! MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME, LINK and COMMIT.

use std::net::IpAddr;

use nfs3_server::nfs3_types::nfs3::*;

use super::wire::{check_entry_name, nfs_time, opt, post, set_attr, stat, verifier_times, wcc};
use super::{Obj, Server, MAX_FILE_SIZE, PATH_MAX};
use crate::nfs::access::{self, MAY_WRITE};
use crate::nfs::fs::{Attr, Cred, Exports, FileId, FileKind, NodeFs, SetAttr, SetTime, Time};

impl<E: Exports> Server<E> {
    pub(super) async fn proc_setattr(
        &self,
        args: SETATTR3args,
        cred: &Cred,
        ip: IpAddr,
    ) -> SETATTR3res {
        let obj = tri!(self.resolve(&args.object, ip).await, Default::default());
        let before = tri!(Self::attr(&obj).await, Default::default());
        let e = obj.export;
        let fail = || SETATTR3resfail {
            obj_wcc: wcc(e, Some(&before), Some(&before)),
        };
        tri!(Self::read_only(&obj), fail());
        if let Nfs3Option::Some(guard) = args.guard {
            if guard != nfs_time(before.ctime) {
                return Nfs3Result::Err((nfsstat3::NFS3ERR_NOT_SYNC, fail()));
            }
        }
        let set = set_attr(&args.new_attributes);
        let set = tri!(
            access::check_setattr(&before, &set, cred).map_err(stat),
            fail()
        );
        let after = if set == SetAttr::default() {
            before.clone()
        } else {
            tri!(
                obj.fs.setattr(obj.id, &set, cred).await.map_err(stat),
                fail()
            )
        };
        Nfs3Result::Ok(SETATTR3resok {
            obj_wcc: wcc(e, Some(&before), Some(&after)),
        })
    }

    pub(super) async fn proc_write(
        &self,
        args: WRITE3args<'_>,
        cred: &Cred,
        ip: IpAddr,
    ) -> WRITE3res {
        let obj = tri!(self.resolve(&args.file, ip).await, Default::default());
        let before = tri!(Self::attr(&obj).await, Default::default());
        let e = obj.export;
        let fail = || WRITE3resfail {
            file_wcc: wcc(e, Some(&before), Some(&before)),
        };
        tri!(Self::read_only(&obj), fail());
        match before.kind {
            FileKind::File => {}
            FileKind::Dir => return Nfs3Result::Err((nfsstat3::NFS3ERR_ISDIR, fail())),
            _ => return Nfs3Result::Err((nfsstat3::NFS3ERR_INVAL, fail())),
        }
        if !access::may_write_data(&before, cred) {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_ACCES, fail()));
        }
        let count = args.count as usize;
        if args.data.len() < count {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_INVAL, fail()));
        }
        if args
            .offset
            .checked_add(count as u64)
            .is_none_or(|end| end > MAX_FILE_SIZE)
        {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_FBIG, fail()));
        }
        let mut after = tri!(
            obj.fs
                .write(obj.id, args.offset, &args.data[..count], cred)
                .await
                .map_err(stat),
            fail()
        );
        if let Some(mode) = access::mode_after_write(&after, cred) {
            let set = SetAttr {
                mode: Some(mode),
                ..Default::default()
            };
            if let Ok(a) = obj.fs.setattr(obj.id, &set, cred).await {
                after = a;
            }
        }
        let committed = if args.stable == stable_how::UNSTABLE {
            stable_how::UNSTABLE
        } else {
            tri!(obj.fs.commit(obj.id).await.map_err(stat), fail());
            stable_how::FILE_SYNC
        };
        Nfs3Result::Ok(WRITE3resok {
            file_wcc: wcc(e, Some(&before), Some(&after)),
            count: count as u32,
            committed,
            verf: writeverf3(self.write_verf),
        })
    }

    /// The checks CREATE, MKDIR, SYMLINK, MKNOD, REMOVE and RMDIR share, in
    /// the order they make them: the directory's handle resolves and it has
    /// attributes, its export is writable, `own` (the outcome of the
    /// procedure's own argument check, which comes at this point; its value
    /// is handed back), the caller may change the directory, and
    /// `where_.name` may be created or removed ("." and ".." fail with
    /// `dots`). A failure carries the directory's wcc_data as far as it is
    /// known.
    async fn dir_change<'a, T>(
        &self,
        where_: &'a diropargs3<'_>,
        cred: &Cred,
        ip: IpAddr,
        dots: nfsstat3,
        own: Result<T, nfsstat3>,
    ) -> Result<(DirChange<'a, E::Fs>, T), (nfsstat3, wcc_data)> {
        let unknown = |s| (s, wcc_data::default());
        let dir = self.resolve(&where_.dir, ip).await.map_err(unknown)?;
        let before = Self::attr(&dir).await.map_err(unknown)?;
        let change = DirChange {
            dir,
            before,
            name: where_.name.as_ref(),
        };
        let fail = |s| (s, change.unchanged());
        Self::read_only(&change.dir).map_err(fail)?;
        let own = own.map_err(fail)?;
        access::check_dir_change(&change.before, cred)
            .map_err(stat)
            .map_err(fail)?;
        check_entry_name(change.name, dots).map_err(fail)?;
        Ok((change, own))
    }

    /// What CREATE, MKDIR, SYMLINK and MKNOD reply after making `id`: its
    /// handle and attributes, and the directory's wcc_data.
    async fn created(
        &self,
        change: &DirChange<'_, E::Fs>,
        id: FileId,
    ) -> (post_op_fh3, post_op_attr, wcc_data) {
        let dir = &change.dir;
        let e = dir.export;
        let oa = Self::attr_of(dir, id).await;
        let after = Self::attr_of(dir, dir.id).await;
        (
            Nfs3Option::Some(self.handle(e, id)),
            post(e, oa.as_ref()),
            wcc(e, Some(&change.before), after.as_ref()),
        )
    }

    /// Apply the attributes of a CREATE/MKDIR/MKNOD other than the mode
    /// (already used), with the usual SETATTR checks.
    async fn apply_extra(
        obj: &Obj<E::Fs>,
        id: FileId,
        s: &sattr3,
        cred: &Cred,
    ) -> Result<(), nfsstat3> {
        let mut set = set_attr(s);
        set.mode = None;
        if set == SetAttr::default() {
            return Ok(());
        }
        let a = obj.fs.getattr(id).await.map_err(stat)?;
        let set = access::check_setattr(&a, &set, cred).map_err(stat)?;
        obj.fs.setattr(id, &set, cred).await.map_err(stat)?;
        Ok(())
    }

    pub(super) async fn proc_create(
        &self,
        args: CREATE3args<'_>,
        cred: &Cred,
        ip: IpAddr,
    ) -> CREATE3res {
        let exist = nfsstat3::NFS3ERR_EXIST;
        let change = match self.dir_change(&args.where_, cred, ip, exist, Ok(())).await {
            Ok((change, ())) => change,
            Err((s, dir_wcc)) => return Nfs3Result::Err((s, CREATE3resfail { dir_wcc })),
        };
        let fail = || CREATE3resfail {
            dir_wcc: change.unchanged(),
        };
        let (dir, before, n) = (&change.dir, &change.before, change.name);
        let id = match &args.how {
            createhow3::UNCHECKED(s) | createhow3::GUARDED(s) => {
                let guarded = matches!(args.how, createhow3::GUARDED(_));
                let existing = if guarded {
                    None
                } else {
                    dir.fs.lookup(dir.id, n).await.ok()
                };
                if let Some(id) = existing {
                    // UNCHECKED on an existing file: only the size applies.
                    let a = tri!(dir.fs.getattr(id).await.map_err(stat), fail());
                    if a.kind != FileKind::File {
                        return Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, fail()));
                    }
                    if let Nfs3Option::Some(size) = s.size {
                        let set = SetAttr {
                            size: Some(size),
                            ..Default::default()
                        };
                        let set = tri!(access::check_setattr(&a, &set, cred).map_err(stat), fail());
                        tri!(dir.fs.setattr(id, &set, cred).await.map_err(stat), fail());
                    }
                    id
                } else {
                    let mode = opt(&s.mode).unwrap_or(0o644);
                    let (owner, mode) = access::new_object(before, cred, false, mode);
                    let id = tri!(
                        dir.fs
                            .create(dir.id, n, mode, &owner, guarded)
                            .await
                            .map_err(stat),
                        fail()
                    );
                    tri!(Self::apply_extra(dir, id, s, cred).await, fail());
                    id
                }
            }
            createhow3::EXCLUSIVE(verf) => {
                // The verifier is kept in atime/mtime seconds until the
                // client's follow-up SETATTR, so a retransmitted create
                // succeeds instead of failing with EXIST.
                let (va, vm) = verifier_times(&verf.0);
                if let Ok(id) = dir.fs.lookup(dir.id, n).await {
                    let a = tri!(dir.fs.getattr(id).await.map_err(stat), fail());
                    if a.kind == FileKind::File && a.atime.secs == va && a.mtime.secs == vm {
                        id
                    } else {
                        return Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, fail()));
                    }
                } else {
                    let (owner, mode) = access::new_object(before, cred, false, 0o600);
                    let id = tri!(
                        dir.fs
                            .create(dir.id, n, mode, &owner, true)
                            .await
                            .map_err(stat),
                        fail()
                    );
                    let set = SetAttr {
                        atime: Some(SetTime::Client(Time { secs: va, nanos: 0 })),
                        mtime: Some(SetTime::Client(Time { secs: vm, nanos: 0 })),
                        ..Default::default()
                    };
                    tri!(dir.fs.setattr(id, &set, cred).await.map_err(stat), fail());
                    id
                }
            }
        };
        let (obj, obj_attributes, dir_wcc) = self.created(&change, id).await;
        Nfs3Result::Ok(CREATE3resok {
            obj,
            obj_attributes,
            dir_wcc,
        })
    }

    pub(super) async fn proc_mkdir(
        &self,
        args: MKDIR3args<'_>,
        cred: &Cred,
        ip: IpAddr,
    ) -> MKDIR3res {
        let exist = nfsstat3::NFS3ERR_EXIST;
        let change = match self.dir_change(&args.where_, cred, ip, exist, Ok(())).await {
            Ok((change, ())) => change,
            Err((s, dir_wcc)) => return Nfs3Result::Err((s, MKDIR3resfail { dir_wcc })),
        };
        let fail = || MKDIR3resfail {
            dir_wcc: change.unchanged(),
        };
        let dir = &change.dir;
        let mode = opt(&args.attributes.mode).unwrap_or(0o755);
        let (owner, mode) = access::new_object(&change.before, cred, true, mode);
        let id = tri!(
            dir.fs
                .mkdir(dir.id, change.name, mode, &owner)
                .await
                .map_err(stat),
            fail()
        );
        let mut extra = args.attributes.clone();
        extra.size = Nfs3Option::None;
        tri!(Self::apply_extra(dir, id, &extra, cred).await, fail());
        let (obj, obj_attributes, dir_wcc) = self.created(&change, id).await;
        Nfs3Result::Ok(MKDIR3resok {
            obj,
            obj_attributes,
            dir_wcc,
        })
    }

    pub(super) async fn proc_symlink(
        &self,
        args: SYMLINK3args<'_>,
        cred: &Cred,
        ip: IpAddr,
    ) -> SYMLINK3res {
        let exist = nfsstat3::NFS3ERR_EXIST;
        let change = match self.dir_change(&args.where_, cred, ip, exist, Ok(())).await {
            Ok((change, ())) => change,
            Err((s, dir_wcc)) => return Nfs3Result::Err((s, SYMLINK3resfail { dir_wcc })),
        };
        let fail = || SYMLINK3resfail {
            dir_wcc: change.unchanged(),
        };
        let target = args.symlink.symlink_data.as_ref();
        if target.len() > PATH_MAX {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_NAMETOOLONG, fail()));
        }
        if target.is_empty() || target.contains(&0) {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_INVAL, fail()));
        }
        let dir = &change.dir;
        let (owner, _) = access::new_object(&change.before, cred, false, 0o777);
        let id = tri!(
            dir.fs
                .symlink(dir.id, change.name, target, &owner)
                .await
                .map_err(stat),
            fail()
        );
        let (obj, obj_attributes, dir_wcc) = self.created(&change, id).await;
        Nfs3Result::Ok(SYMLINK3resok {
            obj,
            obj_attributes,
            dir_wcc,
        })
    }

    pub(super) async fn proc_mknod(
        &self,
        args: MKNOD3args<'_>,
        cred: &Cred,
        ip: IpAddr,
    ) -> MKNOD3res {
        let what = match &args.what {
            mknoddata3::NF3CHR(d) => Some((
                FileKind::CharDevice,
                &d.dev_attributes,
                (d.spec.specdata1, d.spec.specdata2),
            )),
            mknoddata3::NF3BLK(d) => Some((
                FileKind::BlockDevice,
                &d.dev_attributes,
                (d.spec.specdata1, d.spec.specdata2),
            )),
            mknoddata3::NF3SOCK(s) => Some((FileKind::Socket, s, (0, 0))),
            mknoddata3::NF3FIFO(s) => Some((FileKind::Fifo, s, (0, 0))),
            mknoddata3::default => None,
        };
        let what = what.ok_or(nfsstat3::NFS3ERR_BADTYPE);
        let exist = nfsstat3::NFS3ERR_EXIST;
        let (change, (kind, s, rdev)) =
            match self.dir_change(&args.where_, cred, ip, exist, what).await {
                Ok(checked) => checked,
                Err((s, dir_wcc)) => return Nfs3Result::Err((s, MKNOD3resfail { dir_wcc })),
            };
        let fail = || MKNOD3resfail {
            dir_wcc: change.unchanged(),
        };
        if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) && !access::is_root(cred) {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_PERM, fail()));
        }
        let dir = &change.dir;
        let mode = opt(&s.mode).unwrap_or(0o644);
        let (owner, mode) = access::new_object(&change.before, cred, false, mode);
        let id = tri!(
            dir.fs
                .mknod(dir.id, change.name, kind, mode, rdev, &owner)
                .await
                .map_err(stat),
            fail()
        );
        let mut extra = s.clone();
        extra.size = Nfs3Option::None;
        tri!(Self::apply_extra(dir, id, &extra, cred).await, fail());
        let (obj, obj_attributes, dir_wcc) = self.created(&change, id).await;
        Nfs3Result::Ok(MKNOD3resok {
            obj,
            obj_attributes,
            dir_wcc,
        })
    }

    pub(super) async fn proc_remove(
        &self,
        args: diropargs3<'_>,
        cred: &Cred,
        ip: IpAddr,
    ) -> REMOVE3res {
        self.remove_entry(args, cred, ip, false).await
    }

    pub(super) async fn proc_rmdir(
        &self,
        args: diropargs3<'_>,
        cred: &Cred,
        ip: IpAddr,
    ) -> RMDIR3res {
        match self.remove_entry(args, cred, ip, true).await {
            Nfs3Result::Ok(ok) => Nfs3Result::Ok(RMDIR3resok {
                dir_wcc: ok.dir_wcc,
            }),
            Nfs3Result::Err((s, fail)) => Nfs3Result::Err((
                s,
                RMDIR3resfail {
                    dir_wcc: fail.dir_wcc,
                },
            )),
        }
    }

    /// REMOVE, or RMDIR if `rmdir` (the results differ only in name).
    async fn remove_entry(
        &self,
        args: diropargs3<'_>,
        cred: &Cred,
        ip: IpAddr,
        rmdir: bool,
    ) -> REMOVE3res {
        let dots = if rmdir && args.name.as_ref() == b".." {
            nfsstat3::NFS3ERR_NOTEMPTY
        } else {
            nfsstat3::NFS3ERR_INVAL
        };
        let change = match self.dir_change(&args, cred, ip, dots, Ok(())).await {
            Ok((change, ())) => change,
            Err((s, dir_wcc)) => return Nfs3Result::Err((s, REMOVE3resfail { dir_wcc })),
        };
        let fail = || REMOVE3resfail {
            dir_wcc: change.unchanged(),
        };
        let (dir, before, n) = (&change.dir, &change.before, change.name);
        let e = dir.export;
        let id = tri!(dir.fs.lookup(dir.id, n).await.map_err(stat), fail());
        let victim = tri!(dir.fs.getattr(id).await.map_err(stat), fail());
        match (rmdir, victim.kind == FileKind::Dir) {
            (false, true) => return Nfs3Result::Err((nfsstat3::NFS3ERR_ISDIR, fail())),
            (true, false) => return Nfs3Result::Err((nfsstat3::NFS3ERR_NOTDIR, fail())),
            _ => {}
        }
        tri!(
            access::check_sticky(before, &victim, cred).map_err(stat),
            fail()
        );
        let res = if rmdir {
            dir.fs.rmdir(dir.id, n).await
        } else {
            dir.fs.remove(dir.id, n).await
        };
        let after = Self::attr_of(dir, dir.id).await;
        if let Err(err) = res {
            return Nfs3Result::Err((
                stat(err),
                REMOVE3resfail {
                    dir_wcc: wcc(e, Some(before), after.as_ref()),
                },
            ));
        }
        Nfs3Result::Ok(REMOVE3resok {
            dir_wcc: wcc(e, Some(before), after.as_ref()),
        })
    }

    pub(super) async fn proc_rename(
        &self,
        args: RENAME3args<'_, '_>,
        cred: &Cred,
        ip: IpAddr,
    ) -> RENAME3res {
        let from = tri!(self.resolve(&args.from.dir, ip).await, Default::default());
        let to = tri!(self.resolve(&args.to.dir, ip).await, Default::default());
        let fb = tri!(Self::attr(&from).await, Default::default());
        let e = from.export;
        let fail_from = RENAME3resfail {
            fromdir_wcc: wcc(e, Some(&fb), Some(&fb)),
            todir_wcc: wcc_data::default(),
        };
        if to.export != from.export {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_XDEV, fail_from));
        }
        let tb = tri!(Self::attr(&to).await, fail_from);
        let fail = || RENAME3resfail {
            fromdir_wcc: wcc(e, Some(&fb), Some(&fb)),
            todir_wcc: wcc(e, Some(&tb), Some(&tb)),
        };
        tri!(Self::read_only(&from), fail());
        tri!(access::check_dir_change(&fb, cred).map_err(stat), fail());
        tri!(access::check_dir_change(&tb, cred).map_err(stat), fail());
        let (fname, tname) = (args.from.name.as_ref(), args.to.name.as_ref());
        tri!(check_entry_name(fname, nfsstat3::NFS3ERR_INVAL), fail());
        tri!(check_entry_name(tname, nfsstat3::NFS3ERR_INVAL), fail());
        let src_id = tri!(from.fs.lookup(from.id, fname).await.map_err(stat), fail());
        let src = tri!(from.fs.getattr(src_id).await.map_err(stat), fail());
        tri!(access::check_sticky(&fb, &src, cred).map_err(stat), fail());
        if let Ok(dst_id) = to.fs.lookup(to.id, tname).await {
            if let Ok(dst) = to.fs.getattr(dst_id).await {
                tri!(access::check_sticky(&tb, &dst, cred).map_err(stat), fail());
            }
        }
        // Moving a directory to another parent rewrites its "..".
        if src.kind == FileKind::Dir
            && from.id != to.id
            && !access::permitted(&src, cred, MAY_WRITE)
        {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_ACCES, fail()));
        }
        let res = from.fs.rename(from.id, fname, to.id, tname).await;
        let fa = Self::attr_of(&from, from.id).await;
        let ta = Self::attr_of(&to, to.id).await;
        let wccs = (
            wcc(e, Some(&fb), fa.as_ref()),
            wcc(e, Some(&tb), ta.as_ref()),
        );
        match res {
            Ok(()) => Nfs3Result::Ok(RENAME3resok {
                fromdir_wcc: wccs.0,
                todir_wcc: wccs.1,
            }),
            Err(err) => Nfs3Result::Err((
                stat(err),
                RENAME3resfail {
                    fromdir_wcc: wccs.0,
                    todir_wcc: wccs.1,
                },
            )),
        }
    }

    pub(super) async fn proc_link(&self, args: LINK3args<'_>, cred: &Cred, ip: IpAddr) -> LINK3res {
        let none = || LINK3resfail {
            file_attributes: Nfs3Option::None,
            linkdir_wcc: wcc_data::default(),
        };
        let file = tri!(self.resolve(&args.file, ip).await, none());
        let fa = tri!(Self::attr(&file).await, none());
        let e = file.export;
        let dir = tri!(self.resolve(&args.link.dir, ip).await, none());
        if dir.export != file.export {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_XDEV, none()));
        }
        let before = tri!(Self::attr(&dir).await, none());
        let fail = || LINK3resfail {
            file_attributes: post(e, Some(&fa)),
            linkdir_wcc: wcc(e, Some(&before), Some(&before)),
        };
        tri!(Self::read_only(&dir), fail());
        if fa.kind == FileKind::Dir {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_ISDIR, fail()));
        }
        tri!(
            access::check_dir_change(&before, cred).map_err(stat),
            fail()
        );
        let n = args.link.name.as_ref();
        tri!(check_entry_name(n, nfsstat3::NFS3ERR_EXIST), fail());
        tri!(dir.fs.link(file.id, dir.id, n).await.map_err(stat), fail());
        let fa = Self::attr_of(&file, file.id).await;
        let after = Self::attr_of(&dir, dir.id).await;
        Nfs3Result::Ok(LINK3resok {
            file_attributes: post(e, fa.as_ref()),
            linkdir_wcc: wcc(e, Some(&before), after.as_ref()),
        })
    }

    pub(super) async fn proc_commit(&self, args: COMMIT3args, ip: IpAddr) -> COMMIT3res {
        let none = || COMMIT3resfail {
            file_wcc: wcc_data::default(),
        };
        let obj = tri!(self.resolve(&args.file, ip).await, none());
        let a = tri!(Self::attr(&obj).await, none());
        let e = obj.export;
        tri!(
            obj.fs.commit(obj.id).await.map_err(stat),
            COMMIT3resfail {
                file_wcc: wcc(e, Some(&a), Some(&a)),
            }
        );
        Nfs3Result::Ok(COMMIT3resok {
            file_wcc: wcc(e, Some(&a), Some(&a)),
            verf: writeverf3(self.write_verf),
        })
    }
}

/// A directory about to gain or lose the entry `name`, past the checks
/// of [`Server::dir_change`].
struct DirChange<'a, F> {
    dir: Obj<F>,
    /// The directory's attributes before the change.
    before: Attr,
    name: &'a [u8],
}

impl<F> DirChange<'_, F> {
    /// The directory's wcc_data for a call that did not change it.
    fn unchanged(&self) -> wcc_data {
        wcc(self.dir.export, Some(&self.before), Some(&self.before))
    }
}
