//! Between the [`NodeFs`](crate::nfs::fs::NodeFs) seam and the wire:
//! statuses, attributes and times as XDR types and back, and the checks a
//! name from the wire must pass before it reaches the file system.

use nfs3_server::nfs3_types::nfs3::{
    fattr3, ftype3, nfsstat3, nfstime3, post_op_attr, sattr3, set_atime, set_mtime, specdata3,
    wcc_attr, wcc_data, Nfs3Option,
};
use nfs3_server::nfs3_types::xdr_codec::{Pack, Unpack};

use super::NAME_MAX;
use crate::nfs::fs::{Attr, FileKind, FsError, SetAttr, SetTime, Time};

pub(super) fn stat(e: FsError) -> nfsstat3 {
    // A name not found is an answer (LOOKUP misses are routine), not a
    // failure worth counting.
    if e != FsError::NotFound {
        crate::metrics::METRICS.nfs_errors.inc();
    }
    match e {
        FsError::NotFound => nfsstat3::NFS3ERR_NOENT,
        FsError::Exists => nfsstat3::NFS3ERR_EXIST,
        FsError::NotDir => nfsstat3::NFS3ERR_NOTDIR,
        FsError::IsDir => nfsstat3::NFS3ERR_ISDIR,
        FsError::NotEmpty => nfsstat3::NFS3ERR_NOTEMPTY,
        FsError::Access => nfsstat3::NFS3ERR_ACCES,
        FsError::Perm => nfsstat3::NFS3ERR_PERM,
        FsError::ReadOnly => nfsstat3::NFS3ERR_ROFS,
        FsError::NameTooLong => nfsstat3::NFS3ERR_NAMETOOLONG,
        FsError::Inval => nfsstat3::NFS3ERR_INVAL,
        FsError::Stale => nfsstat3::NFS3ERR_STALE,
        FsError::XDev => nfsstat3::NFS3ERR_XDEV,
        FsError::NoSpace => nfsstat3::NFS3ERR_NOSPC,
        FsError::DQuot => nfsstat3::NFS3ERR_DQUOT,
        FsError::MLink => nfsstat3::NFS3ERR_MLINK,
        FsError::NoDev => nfsstat3::NFS3ERR_NODEV,
        FsError::NxIo => nfsstat3::NFS3ERR_NXIO,
        FsError::FBig => nfsstat3::NFS3ERR_FBIG,
        FsError::NotSupported => nfsstat3::NFS3ERR_NOTSUPP,
        FsError::Later(msg) => {
            tracing::info!("nfs: not yet: {msg}");
            nfsstat3::NFS3ERR_JUKEBOX
        }
        FsError::Io(msg) => {
            tracing::warn!("nfs: I/O error: {msg}");
            nfsstat3::NFS3ERR_IO
        }
    }
}

pub(super) fn nfs_time(t: Time) -> nfstime3 {
    nfstime3 {
        seconds: t.secs.clamp(0, u32::MAX as i64) as u32,
        nseconds: t.nanos,
    }
}

pub(super) fn ftype(k: FileKind) -> ftype3 {
    match k {
        FileKind::File => ftype3::NF3REG,
        FileKind::Dir => ftype3::NF3DIR,
        FileKind::Symlink => ftype3::NF3LNK,
        FileKind::CharDevice => ftype3::NF3CHR,
        FileKind::BlockDevice => ftype3::NF3BLK,
        FileKind::Fifo => ftype3::NF3FIFO,
        FileKind::Socket => ftype3::NF3SOCK,
    }
}

/// NFS attributes: the mode keeps setuid/setgid/sticky, devices carry
/// (major, minor), fsid is the export id, fileid the `FileId`.
pub(super) fn fattr(export: u32, a: &Attr) -> fattr3 {
    fattr3 {
        type_: ftype(a.kind),
        mode: a.mode & 0o7777,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        used: a.used,
        rdev: specdata3 {
            specdata1: a.rdev.0,
            specdata2: a.rdev.1,
        },
        fsid: export as u64,
        fileid: a.id,
        atime: nfs_time(a.atime),
        mtime: nfs_time(a.mtime),
        ctime: nfs_time(a.ctime),
    }
}

pub(super) fn post(export: u32, a: Option<&Attr>) -> post_op_attr {
    match a {
        Some(a) => Nfs3Option::Some(fattr(export, a)),
        None => Nfs3Option::None,
    }
}

pub(super) fn wcc(export: u32, before: Option<&Attr>, after: Option<&Attr>) -> wcc_data {
    wcc_data {
        before: match before {
            Some(b) => Nfs3Option::Some(wcc_attr {
                size: b.size,
                mtime: nfs_time(b.mtime),
                ctime: nfs_time(b.ctime),
            }),
            None => Nfs3Option::None,
        },
        after: post(export, after),
    }
}

pub(super) fn opt<T: Copy + Pack + Unpack>(o: &Nfs3Option<T>) -> Option<T> {
    match o {
        Nfs3Option::Some(v) => Some(*v),
        Nfs3Option::None => None,
    }
}

pub(super) fn set_time(client: Option<nfstime3>, server_now: bool) -> Option<SetTime> {
    match client {
        Some(t) => Some(SetTime::Client(Time {
            secs: t.seconds as i64,
            nanos: t.nseconds,
        })),
        None if server_now => Some(SetTime::ServerNow),
        None => None,
    }
}

/// `sattr3` as a [`SetAttr`] (mode limited to the permission bits).
pub(super) fn set_attr(s: &sattr3) -> SetAttr {
    SetAttr {
        mode: opt(&s.mode).map(|m| m & 0o7777),
        uid: opt(&s.uid),
        gid: opt(&s.gid),
        size: opt(&s.size),
        atime: match s.atime {
            set_atime::DONT_CHANGE => None,
            set_atime::SET_TO_SERVER_TIME => set_time(None, true),
            set_atime::SET_TO_CLIENT_TIME(t) => set_time(Some(t), false),
        },
        mtime: match s.mtime {
            set_mtime::DONT_CHANGE => None,
            set_mtime::SET_TO_SERVER_TIME => set_time(None, true),
            set_mtime::SET_TO_CLIENT_TIME(t) => set_time(Some(t), false),
        },
    }
}

/// A name to look up: one component.
pub(super) fn check_lookup_name(n: &[u8]) -> Result<(), nfsstat3> {
    if n.len() > NAME_MAX {
        Err(nfsstat3::NFS3ERR_NAMETOOLONG)
    } else if n.is_empty() {
        Err(nfsstat3::NFS3ERR_NOENT)
    } else if n.contains(&b'/') || n.contains(&0) {
        Err(nfsstat3::NFS3ERR_ACCES)
    } else {
        Ok(())
    }
}

/// A name to create, remove or rename: one component, not "." or "..".
pub(super) fn check_entry_name(n: &[u8], dots: nfsstat3) -> Result<(), nfsstat3> {
    check_lookup_name(n).map_err(|e| {
        if e == nfsstat3::NFS3ERR_NOENT {
            nfsstat3::NFS3ERR_ACCES
        } else {
            e
        }
    })?;
    if n == b"." || n == b".." {
        return Err(dots);
    }
    Ok(())
}

pub(super) fn put<T: Pack>(out: &mut Vec<u8>, v: &T) {
    v.pack(out).expect("packing into a Vec cannot fail");
}

pub(super) fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// "/nodes/a/" and "/nodes/a" name the same export.
pub(super) fn normalise_export_path(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/"
    } else {
        t
    }
}

/// An EXCLUSIVE create verifier as (atime, mtime) seconds.
pub(super) fn verifier_times(v: &[u8; 8]) -> (i64, i64) {
    (
        u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as i64,
        u32::from_be_bytes([v[4], v[5], v[6], v[7]]) as i64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_errno_of_the_upper_maps_to_its_nfs_status() {
        use nfsstat3::*;
        let table = [
            (libc::EPERM, NFS3ERR_PERM),
            (libc::ENOENT, NFS3ERR_NOENT),
            (libc::EIO, NFS3ERR_IO),
            (libc::ENXIO, NFS3ERR_NXIO),
            (libc::EACCES, NFS3ERR_ACCES),
            (libc::EEXIST, NFS3ERR_EXIST),
            (libc::EXDEV, NFS3ERR_XDEV),
            (libc::ENODEV, NFS3ERR_NODEV),
            (libc::ENOTDIR, NFS3ERR_NOTDIR),
            (libc::EISDIR, NFS3ERR_ISDIR),
            (libc::EINVAL, NFS3ERR_INVAL),
            (libc::EFBIG, NFS3ERR_FBIG),
            (libc::E2BIG, NFS3ERR_FBIG),
            (libc::ENOSPC, NFS3ERR_NOSPC),
            (libc::EROFS, NFS3ERR_ROFS),
            (libc::EMLINK, NFS3ERR_MLINK),
            (libc::ENAMETOOLONG, NFS3ERR_NAMETOOLONG),
            (libc::ENOTEMPTY, NFS3ERR_NOTEMPTY),
            (libc::EDQUOT, NFS3ERR_DQUOT),
            (libc::ESTALE, NFS3ERR_STALE),
            (libc::EOPNOTSUPP, NFS3ERR_NOTSUPP),
            (libc::ENOSYS, NFS3ERR_NOTSUPP),
            (libc::EAGAIN, NFS3ERR_JUKEBOX),
            (libc::ENOMEM, NFS3ERR_JUKEBOX),
            (libc::ETXTBSY, NFS3ERR_IO),
        ];
        for (errno, want) in table {
            let e = FsError::from(std::io::Error::from_raw_os_error(errno));
            assert_eq!(stat(e), want, "errno {errno}");
        }
    }

    #[test]
    fn attributes_show_special_bits_and_devices() {
        let a = Attr {
            id: 42,
            kind: FileKind::BlockDevice,
            mode: 0o6755 | 0o1000,
            nlink: 1,
            uid: 0,
            gid: 6,
            size: 0,
            used: 0,
            rdev: (7, 3),
            atime: Time { secs: -5, nanos: 1 },
            mtime: Time {
                secs: 1 << 40,
                nanos: 2,
            },
            ctime: Time {
                secs: 1_700_000_000,
                nanos: 3,
            },
        };
        let f = fattr(9, &a);
        assert_eq!(f.type_, ftype3::NF3BLK);
        assert_eq!(f.mode, 0o7755);
        assert_eq!((f.rdev.specdata1, f.rdev.specdata2), (7, 3));
        assert_eq!((f.fsid, f.fileid), (9, 42));
        assert_eq!(f.atime.seconds, 0);
        assert_eq!(f.mtime.seconds, u32::MAX);
        assert_eq!(f.ctime.seconds, 1_700_000_000);
        // fattr3 is 84 bytes, as the READDIR size accounting assumes.
        let mut out = Vec::new();
        put(&mut out, &f);
        assert_eq!(out.len(), 84);
        let (back, _) = fattr3::unpack(&mut &out[..]).unwrap();
        assert_eq!(back.mode, 0o7755);
    }

    #[test]
    fn names() {
        assert_eq!(check_lookup_name(b"ok"), Ok(()));
        assert_eq!(check_lookup_name(b".."), Ok(()));
        assert_eq!(check_lookup_name(b""), Err(nfsstat3::NFS3ERR_NOENT));
        assert_eq!(check_lookup_name(b"a/b"), Err(nfsstat3::NFS3ERR_ACCES));
        assert_eq!(
            check_lookup_name(&[b'x'; 256]),
            Err(nfsstat3::NFS3ERR_NAMETOOLONG)
        );
        assert_eq!(
            check_entry_name(b".", nfsstat3::NFS3ERR_EXIST),
            Err(nfsstat3::NFS3ERR_EXIST)
        );
        assert_eq!(
            check_entry_name(b"", nfsstat3::NFS3ERR_EXIST),
            Err(nfsstat3::NFS3ERR_ACCES)
        );
        assert_eq!(normalise_export_path("/nodes/a/"), "/nodes/a");
        assert_eq!(normalise_export_path("/"), "/");
    }

    #[test]
    fn sattr_conversion() {
        let s = sattr3 {
            mode: Nfs3Option::Some(0o104755),
            uid: Nfs3Option::None,
            gid: Nfs3Option::Some(5),
            size: Nfs3Option::Some(0),
            atime: set_atime::SET_TO_SERVER_TIME,
            mtime: set_mtime::SET_TO_CLIENT_TIME(nfstime3 {
                seconds: 10,
                nseconds: 20,
            }),
        };
        assert_eq!(
            set_attr(&s),
            SetAttr {
                mode: Some(0o4755),
                uid: None,
                gid: Some(5),
                size: Some(0),
                atime: Some(SetTime::ServerNow),
                mtime: Some(SetTime::Client(Time {
                    secs: 10,
                    nanos: 20
                })),
            }
        );
    }
}
