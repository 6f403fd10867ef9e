//! The NFS procedures that only look at the file system: GETATTR, LOOKUP,
//! ACCESS, READLINK, READ, READDIR, READDIRPLUS, FSSTAT, FSINFO and
//! PATHCONF.

use std::net::IpAddr;

use nfs3_server::nfs3_types::nfs3::*;
use nfs3_server::nfs3_types::xdr_codec::{List, Opaque, Void};

use super::wire::{check_lookup_name, fattr, pad4, post, stat};
use super::{handle_stat, Obj, Server, COOKIE_BASE, DIR_PREF, MAX_FILE_SIZE, NAME_MAX};
use crate::image::trace;
use crate::nfs::access;
use crate::nfs::fs::{Attr, Cred, Exports, FileId, FileKind, NodeFs, ReadFailed};

impl<E: Exports> Server<E> {
    pub(super) async fn proc_getattr(&self, fh: &nfs_fh3, ip: IpAddr) -> GETATTR3res {
        let obj = tri!(self.resolve(fh, ip).await, Void);
        let a = tri!(Self::attr(&obj).await, Void);
        Nfs3Result::Ok(GETATTR3resok {
            obj_attributes: fattr(obj.export, &a),
        })
    }

    pub(super) async fn proc_lookup(
        &self,
        args: diropargs3<'_>,
        cred: &Cred,
        ip: IpAddr,
    ) -> LOOKUP3res {
        let dir = tri!(self.resolve(&args.dir, ip).await, Default::default());
        let da = tri!(Self::attr(&dir).await, Default::default());
        let e = dir.export;
        let fail = || LOOKUP3resfail {
            dir_attributes: post(e, Some(&da)),
        };
        tri!(access::check_lookup(&da, cred).map_err(stat), fail());
        let n = args.name.as_ref();
        tri!(check_lookup_name(n), fail());
        let id = tri!(dir.fs.lookup(dir.id, n).await.map_err(stat), fail());
        let oa = Self::attr_of(&dir, id).await;
        Nfs3Result::Ok(LOOKUP3resok {
            object: self.handle(e, id),
            obj_attributes: post(e, oa.as_ref()),
            dir_attributes: post(e, Some(&da)),
        })
    }

    pub(super) async fn proc_access(
        &self,
        args: ACCESS3args,
        cred: &Cred,
        ip: IpAddr,
    ) -> ACCESS3res {
        let obj = tri!(self.resolve(&args.object, ip).await, Default::default());
        let a = tri!(Self::attr(&obj).await, Default::default());
        Nfs3Result::Ok(ACCESS3resok {
            obj_attributes: post(obj.export, Some(&a)),
            access: access::access_bits(&a, cred, args.access, obj.fs.read_only()),
        })
    }

    pub(super) async fn proc_readlink(&self, fh: &nfs_fh3, ip: IpAddr) -> READLINK3res<'static> {
        let obj = tri!(self.resolve(fh, ip).await, Default::default());
        let a = tri!(Self::attr(&obj).await, Default::default());
        let fail = || READLINK3resfail {
            symlink_attributes: post(obj.export, Some(&a)),
        };
        if a.kind != FileKind::Symlink {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_INVAL, fail()));
        }
        let target = tri!(obj.fs.readlink(obj.id).await.map_err(stat), fail());
        Nfs3Result::Ok(READLINK3resok {
            symlink_attributes: post(obj.export, Some(&a)),
            data: nfspath3(Opaque::owned(target)),
        })
    }

    pub(super) async fn proc_read(
        &self,
        args: READ3args,
        cred: &Cred,
        ip: IpAddr,
        io: u32,
    ) -> READ3res<'static> {
        let obj = tri!(self.resolve(&args.file, ip).await, Default::default());
        let count = args.count.min(io);
        // One call for attributes, checks and data: the file system finds
        // the file once, not once for GETATTR and again for the read.
        let checked = obj
            .fs
            .read_checked(obj.id, args.offset, count, |a| may_read(a, cred))
            .await;
        let (a, data) = tri!(checked.map_err(handle_stat), Default::default());
        let fail = || READ3resfail {
            file_attributes: post(obj.export, Some(&a)),
        };
        let (data, eof) = match data {
            Ok(read) => read,
            Err(ReadFailed::Refused(status)) => return Nfs3Result::Err((status, fail())),
            Err(ReadFailed::Fs(e)) => return Nfs3Result::Err((stat(e), fail())),
        };
        let mut data: Vec<u8> = data.into();
        data.truncate(count as usize);
        trace::note_bytes_out(data.len() as u64);
        crate::metrics::METRICS
            .nfs_read_bytes
            .add(data.len() as u64);
        Nfs3Result::Ok(READ3resok {
            file_attributes: post(obj.export, Some(&a)),
            count: data.len() as u32,
            eof,
            data: Opaque::owned(data),
        })
    }

    /// Directory entries after the wire cookie `cookie`, "." and ".."
    /// first: (file id, name, wire cookie), and whether the listing is
    /// complete. `want` bounds what is asked from the file system.
    async fn listing(
        dir: &Obj<E::Fs>,
        cookie: u64,
        want: usize,
    ) -> Result<(Vec<(FileId, Vec<u8>, u64)>, bool), nfsstat3> {
        let mut out = Vec::new();
        if cookie == 0 {
            out.push((dir.id, b".".to_vec(), 1));
        }
        if cookie <= 1 {
            let parent = dir.fs.lookup(dir.id, b"..").await.map_err(stat)?;
            out.push((parent, b"..".to_vec(), 2));
        }
        let from = cookie.saturating_sub(COOKIE_BASE);
        let (entries, complete) = dir.fs.readdir(dir.id, from, want).await.map_err(stat)?;
        for ent in entries {
            let Some(c) = ent.cookie.checked_add(COOKIE_BASE) else {
                tracing::error!("nfs: directory cookie {} out of range", ent.cookie);
                return Err(nfsstat3::NFS3ERR_SERVERFAULT);
            };
            out.push((ent.id, ent.name, c));
        }
        Ok((out, complete))
    }

    fn check_cookie(&self, cookie: u64, verf: &cookieverf3) -> Result<(), nfsstat3> {
        if cookie != 0 && verf.0 != self.cookie_verf && verf.0 != [0; 8] {
            return Err(nfsstat3::NFS3ERR_BAD_COOKIE);
        }
        Ok(())
    }

    pub(super) async fn proc_readdir(
        &self,
        args: READDIR3args,
        cred: &Cred,
        ip: IpAddr,
        io: u32,
    ) -> READDIR3res<'static> {
        let dir = tri!(self.resolve(&args.dir, ip).await, Default::default());
        let da = tri!(Self::attr(&dir).await, Default::default());
        let e = dir.export;
        let fail = || READDIR3resfail {
            dir_attributes: post(e, Some(&da)),
        };
        tri!(access::check_list(&da, cred).map_err(stat), fail());
        tri!(self.check_cookie(args.cookie, &args.cookieverf), fail());
        // status, attributes, verifier, end of list, eof.
        let count = args.count.min(io) as usize;
        let mut used = 4 + 88 + 8 + 4 + 4;
        let want = (count / 28 + 1).min(4096);
        let (entries, complete) = tri!(Self::listing(&dir, args.cookie, want).await, fail());
        let total = entries.len();
        let mut list = Vec::new();
        for (id, n, cookie) in entries {
            let size = 4 + 8 + 4 + pad4(n.len()) + 8;
            if used + size > count {
                break;
            }
            used += size;
            list.push(entry3 {
                fileid: id,
                name: filename3(Opaque::owned(n)),
                cookie,
            });
        }
        if list.is_empty() && total > 0 {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_TOOSMALL, fail()));
        }
        let eof = complete && list.len() == total;
        Nfs3Result::Ok(READDIR3resok {
            dir_attributes: post(e, Some(&da)),
            cookieverf: cookieverf3(self.cookie_verf),
            reply: dirlist3 {
                entries: List(list),
                eof,
            },
        })
    }

    pub(super) async fn proc_readdirplus(
        &self,
        args: READDIRPLUS3args,
        cred: &Cred,
        ip: IpAddr,
        io: u32,
    ) -> READDIRPLUS3res<'static> {
        let dir = tri!(self.resolve(&args.dir, ip).await, Default::default());
        let da = tri!(Self::attr(&dir).await, Default::default());
        let e = dir.export;
        let fail = || READDIRPLUS3resfail {
            dir_attributes: post(e, Some(&da)),
        };
        tri!(access::check_list(&da, cred).map_err(stat), fail());
        tri!(self.check_cookie(args.cookie, &args.cookieverf), fail());
        let maxcount = args.maxcount.min(io) as usize;
        let dircount = match args.dircount {
            0 => usize::MAX,
            d => d as usize,
        };
        let mut used = 4 + 88 + 8 + 4 + 4;
        let mut dir_used = 0;
        let want = (maxcount / 160 + 1).min(dircount / 24 + 1).min(1024);
        let (entries, complete) = tri!(Self::listing(&dir, args.cookie, want).await, fail());
        let total = entries.len();
        let mut list = Vec::new();
        for (id, n, cookie) in entries {
            let dir_size = 4 + 8 + 4 + pad4(n.len()) + 8;
            // Attributes (present) and a handle (present, 32 bytes).
            let size = dir_size + 4 + 84 + 4 + 4 + 32;
            if used + size > maxcount || dir_used + dir_size > dircount {
                break;
            }
            used += size;
            dir_used += dir_size;
            let attrs = if id == dir.id {
                Some(da.clone())
            } else {
                Self::attr_of(&dir, id).await
            };
            list.push(entryplus3 {
                fileid: id,
                name: filename3(Opaque::owned(n)),
                cookie,
                name_attributes: post(e, attrs.as_ref()),
                name_handle: Nfs3Option::Some(self.handle(e, id)),
            });
        }
        if list.is_empty() && total > 0 {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_TOOSMALL, fail()));
        }
        let eof = complete && list.len() == total;
        Nfs3Result::Ok(READDIRPLUS3resok {
            dir_attributes: post(e, Some(&da)),
            cookieverf: cookieverf3(self.cookie_verf),
            reply: dirlistplus3 {
                entries: List(list),
                eof,
            },
        })
    }

    pub(super) async fn proc_fsstat(&self, fh: &nfs_fh3, ip: IpAddr) -> FSSTAT3res {
        let obj = tri!(self.resolve(fh, ip).await, Default::default());
        let a = tri!(Self::attr(&obj).await, Default::default());
        let s = tri!(
            obj.fs.fsstat().await.map_err(stat),
            FSSTAT3resfail {
                obj_attributes: post(obj.export, Some(&a)),
            }
        );
        Nfs3Result::Ok(FSSTAT3resok {
            obj_attributes: post(obj.export, Some(&a)),
            tbytes: s.total_bytes,
            fbytes: s.free_bytes,
            abytes: s.free_bytes,
            tfiles: s.total_files,
            ffiles: s.free_files,
            afiles: s.free_files,
            invarsec: 0,
        })
    }

    pub(super) async fn proc_fsinfo(&self, fh: &nfs_fh3, ip: IpAddr, io: u32) -> FSINFO3res {
        let obj = tri!(self.resolve(fh, ip).await, Default::default());
        let a = tri!(Self::attr(&obj).await, Default::default());
        Nfs3Result::Ok(FSINFO3resok {
            obj_attributes: post(obj.export, Some(&a)),
            rtmax: io,
            rtpref: io,
            rtmult: 4096,
            wtmax: io,
            wtpref: io,
            wtmult: 4096,
            dtpref: DIR_PREF,
            maxfilesize: MAX_FILE_SIZE,
            time_delta: nfstime3 {
                seconds: 0,
                nseconds: 1,
            },
            properties: FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
        })
    }

    pub(super) async fn proc_pathconf(&self, fh: &nfs_fh3, ip: IpAddr) -> PATHCONF3res {
        let obj = tri!(self.resolve(fh, ip).await, Default::default());
        let a = tri!(Self::attr(&obj).await, Default::default());
        Nfs3Result::Ok(PATHCONF3resok {
            obj_attributes: post(obj.export, Some(&a)),
            linkmax: 65000,
            name_max: NAME_MAX as u32,
            no_trunc: true,
            chown_restricted: true,
            case_insensitive: false,
            case_preserving: true,
        })
    }
}

/// What READ asks of the file before any data is read: a regular file the
/// caller may read.
fn may_read(a: &Attr, cred: &Cred) -> Result<(), nfsstat3> {
    match a.kind {
        FileKind::File => {}
        FileKind::Dir => return Err(nfsstat3::NFS3ERR_ISDIR),
        _ => return Err(nfsstat3::NFS3ERR_INVAL),
    }
    if !access::may_read_data(a, cred) {
        return Err(nfsstat3::NFS3ERR_ACCES);
    }
    Ok(())
}
