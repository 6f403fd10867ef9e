//! The MOUNT v3 and NFS v3 procedures, written on `nfs3_types`' XDR types
//! against [`Exports`] and [`NodeFs`]. How calls arrive (TCP records, UDP
//! datagrams) is `transport.rs`'s business; [`Server::dispatch`] turns one
//! decoded call into one reply. Undecodable arguments get GARBAGE_ARGS.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use nfs3_server::nfs3_types::mount::{
    dirpath, export_node, fhandle3, mountbody, mountres3, mountres3_ok, mountstat3, name,
    MNTPATHLEN,
};
use nfs3_server::nfs3_types::nfs3::*;
use nfs3_server::nfs3_types::xdr_codec::{List, Opaque, Pack, Void};

use super::access::{self, MAY_WRITE};
use super::fs::{
    Attr, Cred, Exports, FileId, FileKind, FsError, MountError, NodeFs, Observed, SetAttr, SetTime,
    Time,
};
use super::handles::HandleKey;
use super::rpc::{self, Outcome, AUTH_SYS};
use super::xdr::XdrIn;
use crate::image::trace::{self, traced, SharedTrace};

pub const NFS_PROGRAM: u32 = 100_003;
pub const MOUNT_PROGRAM: u32 = 100_005;

/// Largest READ and WRITE (FSINFO rtmax/wtmax).
pub const MAX_IO: u32 = 1024 * 1024;
/// Preferred READDIR size (FSINFO dtpref).
pub const DIR_PREF: u32 = 64 * 1024;
/// Largest READ, WRITE and READDIR over UDP (FSINFO rtmax/wtmax there): a
/// reply must fit in one datagram (65,507 bytes) with its headers.
pub const UDP_MAX_IO: u32 = 32 * 1024;
const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4096;
const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// Entries kept for MOUNT DUMP (informational only; bounded so that
/// clients mounting every directory cannot grow it without limit).
const MAX_MOUNT_LIST: usize = 4096;
/// Cookies 1 and 2 are "." and ".."; a `NodeFs` cookie c is sent as c + 3.
const COOKIE_BASE: u64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum NfsError {
    #[error("accepting NFS connections: {0}")]
    Accept(#[source] std::io::Error),
}

/// What one call needs from its header.
pub(crate) struct Head {
    pub(crate) xid: u32,
    pub(crate) prog: u32,
    pub(crate) vers: u32,
    pub(crate) proc_: u32,
    pub(crate) cred: Cred,
    /// Arrived as a datagram: the reply must fit in one, so READ and
    /// READDIR sizes are bounded by [`UDP_MAX_IO`].
    pub(crate) udp: bool,
}

pub struct Server<E: Exports> {
    exports: Arc<E>,
    key: HandleKey,
    /// WRITE/COMMIT verifier: new for every server instance, so clients
    /// resend unstable writes after a restart.
    write_verf: [u8; 8],
    /// READDIR cookie verifier: new for every server instance (the seam
    /// does not promise cookies that survive a restart).
    cookie_verf: [u8; 8],
    /// (client, path) of MNT calls, for DUMP.
    mounts: parking_lot::Mutex<BTreeSet<(IpAddr, String)>>,
}

/// A verified file handle: the export's file system and the file id.
struct Obj<F> {
    fs: Arc<F>,
    export: u32,
    id: FileId,
}

macro_rules! tri {
    ($e:expr, $fail:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return Nfs3Result::Err((s, $fail)),
        }
    };
}

fn stat(e: FsError) -> nfsstat3 {
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
        FsError::NotSupported => nfsstat3::NFS3ERR_NOTSUPP,
        FsError::Io(msg) => {
            tracing::warn!("nfs: I/O error: {msg}");
            nfsstat3::NFS3ERR_IO
        }
    }
}

fn nfs_time(t: Time) -> nfstime3 {
    nfstime3 {
        seconds: t.secs.clamp(0, u32::MAX as i64) as u32,
        nseconds: t.nanos,
    }
}

fn ftype(k: FileKind) -> ftype3 {
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
pub fn fattr(export: u32, a: &Attr) -> fattr3 {
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

fn post(export: u32, a: Option<&Attr>) -> post_op_attr {
    match a {
        Some(a) => Nfs3Option::Some(fattr(export, a)),
        None => Nfs3Option::None,
    }
}

fn wcc(export: u32, before: Option<&Attr>, after: Option<&Attr>) -> wcc_data {
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

fn opt<T: Copy + Pack + nfs3_server::nfs3_types::xdr_codec::Unpack>(
    o: &Nfs3Option<T>,
) -> Option<T> {
    match o {
        Nfs3Option::Some(v) => Some(*v),
        Nfs3Option::None => None,
    }
}

fn set_time(client: Option<nfstime3>, server_now: bool) -> Option<SetTime> {
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
pub fn set_attr(s: &sattr3) -> SetAttr {
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
fn check_lookup_name(n: &[u8]) -> Result<(), nfsstat3> {
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
fn check_entry_name(n: &[u8], dots: nfsstat3) -> Result<(), nfsstat3> {
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

fn put<T: Pack>(out: &mut Vec<u8>, v: &T) {
    v.pack(out).expect("packing into a Vec cannot fail");
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// NFSv3 procedure names by number (RFC 1813), for boot profiles.
const PROCEDURES: [&str; 22] = [
    "NULL",
    "GETATTR",
    "SETATTR",
    "LOOKUP",
    "ACCESS",
    "READLINK",
    "READ",
    "WRITE",
    "CREATE",
    "MKDIR",
    "SYMLINK",
    "MKNOD",
    "REMOVE",
    "RMDIR",
    "RENAME",
    "LINK",
    "READDIR",
    "READDIRPLUS",
    "FSSTAT",
    "FSINFO",
    "PATHCONF",
    "COMMIT",
];

impl<E: Exports> Server<E> {
    pub fn new(exports: Arc<E>, key: &[u8; 32]) -> Self {
        Server {
            exports,
            key: HandleKey::new(key),
            write_verf: rand::random(),
            cookie_verf: rand::random(),
            mounts: parking_lot::Mutex::new(BTreeSet::new()),
        }
    }

    /// Run one call; the complete reply record (its first 4 bytes are the
    /// record mark, which a datagram reply leaves out).
    pub(crate) async fn dispatch(&self, h: &Head, args: &[u8], ip: IpAddr) -> Vec<u8> {
        let mut out = rpc::reply_header(h.xid, Outcome::Success);
        let result = match (h.prog, h.vers) {
            (NFS_PROGRAM, VERSION) => {
                let started = std::time::Instant::now();
                let trace = SharedTrace::default();
                let r = traced(trace.clone(), self.nfs(h, args, ip, &mut out)).await;
                let trace = std::mem::take(&mut *trace.lock());
                if trace.file.is_some() {
                    let procedure = PROCEDURES.get(h.proc_ as usize).copied().unwrap_or("?");
                    self.exports.observe(
                        ip,
                        Observed {
                            procedure,
                            started,
                            trace,
                        },
                    );
                }
                r
            }
            (MOUNT_PROGRAM, 3) => self.mount(h, args, ip, &mut out).await,
            (NFS_PROGRAM, _) | (MOUNT_PROGRAM, _) => Err(Outcome::ProgMismatch { low: 3, high: 3 }),
            _ => Err(Outcome::ProgUnavail),
        };
        match result {
            Ok(()) => rpc::finish_record(out),
            Err(outcome) => {
                tracing::debug!(
                    "nfs: {ip} xid {} prog {} vers {} proc {}: {outcome:?}",
                    h.xid,
                    h.prog,
                    h.vers,
                    h.proc_
                );
                rpc::finish_record(rpc::reply_header(h.xid, outcome))
            }
        }
    }

    // ---- MOUNT ----------------------------------------------------------

    async fn mount(
        &self,
        h: &Head,
        args: &[u8],
        ip: IpAddr,
        out: &mut Vec<u8>,
    ) -> Result<(), Outcome> {
        let mut r = XdrIn::new(args);
        let g = |_| Outcome::GarbageArgs;
        match h.proc_ {
            0 => {}
            1 => {
                let path = r.opaque(usize::MAX).map_err(g)?;
                put(out, &self.mnt(path, &h.cred, ip).await);
            }
            2 => {
                let mounts = self.mounts.lock().clone();
                let list: Vec<mountbody> = mounts
                    .iter()
                    .map(|(host, path)| mountbody {
                        ml_hostname: name(Opaque::owned(host.to_string().into_bytes())),
                        ml_directory: dirpath(Opaque::owned(path.clone().into_bytes())),
                    })
                    .collect();
                put(out, &List(list));
            }
            3 => {
                let path = r.opaque(usize::MAX).map_err(g)?;
                let path = String::from_utf8_lossy(path);
                self.mounts
                    .lock()
                    .remove(&(ip, normalise_export_path(&path).to_string()));
            }
            4 => self.mounts.lock().retain(|(host, _)| *host != ip),
            5 => {
                let list: Vec<export_node> = self
                    .exports
                    .list()
                    .into_iter()
                    .map(|p| export_node {
                        ex_dir: dirpath(Opaque::owned(p.into_bytes())),
                        ex_groups: List(Vec::new()),
                    })
                    .collect();
                put(out, &List(list));
            }
            _ => return Err(Outcome::ProcUnavail),
        }
        Ok(())
    }

    /// MNT of an export, or of a directory below one (like knfsd; libnfs
    /// tools mount the directory of the file they open): the longest
    /// prefix the exports know is the export, the rest is looked up with
    /// the caller's credentials.
    async fn mnt(&self, path: &[u8], cred: &Cred, ip: IpAddr) -> mountres3<'static> {
        if path.len() > MNTPATHLEN {
            return mountres3::Err(mountstat3::MNT3ERR_NAMETOOLONG);
        }
        let Ok(path) = std::str::from_utf8(path) else {
            return mountres3::Err(mountstat3::MNT3ERR_NOENT);
        };
        let path = normalise_export_path(path);
        let mut export_path = path;
        let found = loop {
            match self.exports.mount(export_path, ip).await {
                Err(MountError::NoEntry) if export_path != "/" => {
                    export_path = match export_path.rfind('/') {
                        Some(0) | None => "/",
                        Some(i) => &export_path[..i],
                    };
                }
                other => break other,
            }
        };
        let result = match found {
            Ok((export, fs)) => {
                let rest = path[export_path.len()..].trim_start_matches('/');
                Self::walk(&*fs, fs.root(), rest, cred)
                    .await
                    .map(|id| (export, id))
            }
            Err(MountError::NoEntry) => Err(mountstat3::MNT3ERR_NOENT),
            Err(MountError::Access) => Err(mountstat3::MNT3ERR_ACCES),
            Err(MountError::Unavailable(why)) => {
                tracing::warn!("nfs: export {export_path} unavailable: {why}");
                Err(mountstat3::MNT3ERR_SERVERFAULT)
            }
        };
        match result {
            Ok((export, id)) => {
                let mut mounts = self.mounts.lock();
                if mounts.len() < MAX_MOUNT_LIST {
                    mounts.insert((ip, path.to_string()));
                }
                drop(mounts);
                tracing::info!("nfs: {ip} mounted {path}");
                mountres3::Ok(mountres3_ok {
                    fhandle: fhandle3(Opaque::owned(self.key.sign(export, id).to_vec())),
                    auth_flavors: vec![AUTH_SYS],
                })
            }
            Err(status) => {
                tracing::info!("nfs: {ip} may not mount {path}: {status}");
                mountres3::Err(status)
            }
        }
    }

    /// Look up the directory `rest` ("a/b", may be empty) below `id`.
    async fn walk(
        fs: &E::Fs,
        mut id: FileId,
        rest: &str,
        cred: &Cred,
    ) -> Result<FileId, mountstat3> {
        let err = |e: FsError| match e {
            FsError::NotFound | FsError::Stale => mountstat3::MNT3ERR_NOENT,
            FsError::NotDir => mountstat3::MNT3ERR_NOTDIR,
            FsError::Access | FsError::Perm => mountstat3::MNT3ERR_ACCES,
            FsError::NameTooLong => mountstat3::MNT3ERR_NAMETOOLONG,
            _ => mountstat3::MNT3ERR_IO,
        };
        for part in rest.split('/').filter(|p| !p.is_empty()) {
            if part == "." || part == ".." || part.len() > NAME_MAX {
                return Err(mountstat3::MNT3ERR_INVAL);
            }
            let a = fs.getattr(id).await.map_err(err)?;
            access::check_lookup(&a, cred).map_err(err)?;
            id = fs.lookup(id, part.as_bytes()).await.map_err(err)?;
        }
        let a = fs.getattr(id).await.map_err(err)?;
        if a.kind != FileKind::Dir {
            return Err(mountstat3::MNT3ERR_NOTDIR);
        }
        Ok(id)
    }

    // ---- NFS ------------------------------------------------------------

    async fn nfs(
        &self,
        h: &Head,
        args: &[u8],
        ip: IpAddr,
        out: &mut Vec<u8>,
    ) -> Result<(), Outcome> {
        let mut r = XdrIn::new(args);
        let g = |_| Outcome::GarbageArgs;
        let c = &h.cred;
        let io = if h.udp { UDP_MAX_IO } else { MAX_IO };
        match h.proc_ {
            0 => {}
            1 => {
                let fh = r.fh().map_err(g)?;
                put(out, &self.getattr(&fh, ip).await);
            }
            2 => {
                let a = r.setattr_args().map_err(g)?;
                put(out, &self.setattr(a, c, ip).await);
            }
            3 => {
                let a = r.diropargs().map_err(g)?;
                put(out, &self.lookup(a, c, ip).await);
            }
            4 => {
                let a = r.access_args().map_err(g)?;
                put(out, &self.access(a, c, ip).await);
            }
            5 => {
                let fh = r.fh().map_err(g)?;
                put(out, &self.readlink(&fh, ip).await);
            }
            6 => {
                let a = r.read_args().map_err(g)?;
                put(out, &self.read(a, c, ip, io).await);
            }
            7 => {
                let a = r.write_args().map_err(g)?;
                put(out, &self.write(a, c, ip).await);
            }
            8 => {
                let a = r.create_args().map_err(g)?;
                put(out, &self.create(a, c, ip).await);
            }
            9 => {
                let a = r.mkdir_args().map_err(g)?;
                put(out, &self.mkdir(a, c, ip).await);
            }
            10 => {
                let a = r.symlink_args().map_err(g)?;
                put(out, &self.symlink(a, c, ip).await);
            }
            11 => {
                let a = r.mknod_args().map_err(g)?;
                put(out, &self.mknod(a, c, ip).await);
            }
            12 => {
                let a = r.diropargs().map_err(g)?;
                put(out, &self.remove(a, c, ip, false).await);
            }
            13 => {
                let a = r.diropargs().map_err(g)?;
                let res = match self.remove(a, c, ip, true).await {
                    Nfs3Result::Ok(ok) => Nfs3Result::Ok(RMDIR3resok {
                        dir_wcc: ok.dir_wcc,
                    }),
                    Nfs3Result::Err((s, fail)) => Nfs3Result::Err((
                        s,
                        RMDIR3resfail {
                            dir_wcc: fail.dir_wcc,
                        },
                    )),
                };
                put(out, &res);
            }
            14 => {
                let a = r.rename_args().map_err(g)?;
                put(out, &self.rename(a, c, ip).await);
            }
            15 => {
                let a = r.link_args().map_err(g)?;
                put(out, &self.link(a, c, ip).await);
            }
            16 => {
                let a = r.readdir_args().map_err(g)?;
                put(out, &self.readdir(a, c, ip, io).await);
            }
            17 => {
                let a = r.readdirplus_args().map_err(g)?;
                put(out, &self.readdirplus(a, c, ip, io).await);
            }
            18 => {
                let fh = r.fh().map_err(g)?;
                put(out, &self.fsstat(&fh, ip).await);
            }
            19 => {
                let fh = r.fh().map_err(g)?;
                put(out, &self.fsinfo(&fh, ip, io).await);
            }
            20 => {
                let fh = r.fh().map_err(g)?;
                put(out, &self.pathconf(&fh, ip).await);
            }
            21 => {
                let a = r.commit_args().map_err(g)?;
                put(out, &self.commit(a, ip).await);
            }
            _ => return Err(Outcome::ProcUnavail),
        }
        Ok(())
    }

    /// Verify a handle and find its export for this client: a handle we
    /// did not sign is BADHANDLE; an export that is gone is STALE; an
    /// export this client may not use is ACCES (the handle is genuine, the
    /// caller is not allowed, as MNT would have said); an export that
    /// cannot be served right now is JUKEBOX (clients retry later).
    async fn resolve(&self, fh: &nfs_fh3, ip: IpAddr) -> Result<Obj<E::Fs>, nfsstat3> {
        let Some((export, id)) = self.key.verify(&fh.data) else {
            tracing::debug!("nfs: {ip}: bad file handle");
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        };
        match self.exports.get(export, ip).await {
            Ok(fs) => {
                trace::note_file(export, id);
                Ok(Obj { fs, export, id })
            }
            Err(MountError::NoEntry) => Err(nfsstat3::NFS3ERR_STALE),
            Err(MountError::Access) => {
                tracing::info!("nfs: {ip} used a handle of export {export} it may not use");
                Err(nfsstat3::NFS3ERR_ACCES)
            }
            Err(MountError::Unavailable(why)) => {
                tracing::info!("nfs: export {export} unavailable: {why}");
                Err(nfsstat3::NFS3ERR_JUKEBOX)
            }
        }
    }

    fn handle(&self, export: u32, id: FileId) -> nfs_fh3 {
        nfs_fh3 {
            data: Opaque::owned(self.key.sign(export, id).to_vec()),
        }
    }

    /// Attributes of a handle's object: a vanished object is STALE.
    async fn attr(obj: &Obj<E::Fs>) -> Result<Attr, nfsstat3> {
        obj.fs.getattr(obj.id).await.map_err(|e| match e {
            FsError::NotFound | FsError::Stale => nfsstat3::NFS3ERR_STALE,
            e => stat(e),
        })
    }

    async fn attr_of(obj: &Obj<E::Fs>, id: FileId) -> Option<Attr> {
        obj.fs.getattr(id).await.ok()
    }

    fn read_only(obj: &Obj<E::Fs>) -> Result<(), nfsstat3> {
        if obj.fs.read_only() {
            Err(nfsstat3::NFS3ERR_ROFS)
        } else {
            Ok(())
        }
    }

    async fn getattr(&self, fh: &nfs_fh3, ip: IpAddr) -> GETATTR3res {
        let obj = tri!(self.resolve(fh, ip).await, Void);
        let a = tri!(Self::attr(&obj).await, Void);
        Nfs3Result::Ok(GETATTR3resok {
            obj_attributes: fattr(obj.export, &a),
        })
    }

    async fn setattr(&self, args: SETATTR3args, cred: &Cred, ip: IpAddr) -> SETATTR3res {
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

    async fn lookup(&self, args: diropargs3<'_>, cred: &Cred, ip: IpAddr) -> LOOKUP3res {
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

    async fn access(&self, args: ACCESS3args, cred: &Cred, ip: IpAddr) -> ACCESS3res {
        let obj = tri!(self.resolve(&args.object, ip).await, Default::default());
        let a = tri!(Self::attr(&obj).await, Default::default());
        Nfs3Result::Ok(ACCESS3resok {
            obj_attributes: post(obj.export, Some(&a)),
            access: access::access_bits(&a, cred, args.access, obj.fs.read_only()),
        })
    }

    async fn readlink(&self, fh: &nfs_fh3, ip: IpAddr) -> READLINK3res<'static> {
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

    async fn read(&self, args: READ3args, cred: &Cred, ip: IpAddr, io: u32) -> READ3res<'static> {
        let obj = tri!(self.resolve(&args.file, ip).await, Default::default());
        let a = tri!(Self::attr(&obj).await, Default::default());
        let fail = || READ3resfail {
            file_attributes: post(obj.export, Some(&a)),
        };
        match a.kind {
            FileKind::File => {}
            FileKind::Dir => return Nfs3Result::Err((nfsstat3::NFS3ERR_ISDIR, fail())),
            _ => return Nfs3Result::Err((nfsstat3::NFS3ERR_INVAL, fail())),
        }
        if !access::may_read_data(&a, cred) {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_ACCES, fail()));
        }
        let count = args.count.min(io);
        let (data, eof) = tri!(
            obj.fs.read(obj.id, args.offset, count).await.map_err(stat),
            fail()
        );
        let mut data: Vec<u8> = data.into();
        data.truncate(count as usize);
        trace::note_bytes_out(data.len() as u64);
        Nfs3Result::Ok(READ3resok {
            file_attributes: post(obj.export, Some(&a)),
            count: data.len() as u32,
            eof,
            data: Opaque::owned(data),
        })
    }

    async fn write(&self, args: WRITE3args<'_>, cred: &Cred, ip: IpAddr) -> WRITE3res {
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

    async fn create(&self, args: CREATE3args<'_>, cred: &Cred, ip: IpAddr) -> CREATE3res {
        let dir = tri!(self.resolve(&args.where_.dir, ip).await, Default::default());
        let before = tri!(Self::attr(&dir).await, Default::default());
        let e = dir.export;
        let fail = || CREATE3resfail {
            dir_wcc: wcc(e, Some(&before), Some(&before)),
        };
        tri!(Self::read_only(&dir), fail());
        tri!(
            access::check_dir_change(&before, cred).map_err(stat),
            fail()
        );
        let n = args.where_.name.as_ref();
        tri!(check_entry_name(n, nfsstat3::NFS3ERR_EXIST), fail());

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
                    let (owner, mode) = access::new_object(&before, cred, false, mode);
                    let id = tri!(
                        dir.fs
                            .create(dir.id, n, mode, &owner, guarded)
                            .await
                            .map_err(stat),
                        fail()
                    );
                    tri!(Self::apply_extra(&dir, id, s, cred).await, fail());
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
                    let (owner, mode) = access::new_object(&before, cred, false, 0o600);
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
        let oa = Self::attr_of(&dir, id).await;
        let after = Self::attr_of(&dir, dir.id).await;
        Nfs3Result::Ok(CREATE3resok {
            obj: Nfs3Option::Some(self.handle(e, id)),
            obj_attributes: post(e, oa.as_ref()),
            dir_wcc: wcc(e, Some(&before), after.as_ref()),
        })
    }

    async fn mkdir(&self, args: MKDIR3args<'_>, cred: &Cred, ip: IpAddr) -> MKDIR3res {
        let dir = tri!(self.resolve(&args.where_.dir, ip).await, Default::default());
        let before = tri!(Self::attr(&dir).await, Default::default());
        let e = dir.export;
        let fail = || MKDIR3resfail {
            dir_wcc: wcc(e, Some(&before), Some(&before)),
        };
        tri!(Self::read_only(&dir), fail());
        tri!(
            access::check_dir_change(&before, cred).map_err(stat),
            fail()
        );
        let n = args.where_.name.as_ref();
        tri!(check_entry_name(n, nfsstat3::NFS3ERR_EXIST), fail());
        let mode = opt(&args.attributes.mode).unwrap_or(0o755);
        let (owner, mode) = access::new_object(&before, cred, true, mode);
        let id = tri!(
            dir.fs.mkdir(dir.id, n, mode, &owner).await.map_err(stat),
            fail()
        );
        let mut extra = args.attributes.clone();
        extra.size = Nfs3Option::None;
        tri!(Self::apply_extra(&dir, id, &extra, cred).await, fail());
        let oa = Self::attr_of(&dir, id).await;
        let after = Self::attr_of(&dir, dir.id).await;
        Nfs3Result::Ok(MKDIR3resok {
            obj: Nfs3Option::Some(self.handle(e, id)),
            obj_attributes: post(e, oa.as_ref()),
            dir_wcc: wcc(e, Some(&before), after.as_ref()),
        })
    }

    async fn symlink(&self, args: SYMLINK3args<'_>, cred: &Cred, ip: IpAddr) -> SYMLINK3res {
        let dir = tri!(self.resolve(&args.where_.dir, ip).await, Default::default());
        let before = tri!(Self::attr(&dir).await, Default::default());
        let e = dir.export;
        let fail = || SYMLINK3resfail {
            dir_wcc: wcc(e, Some(&before), Some(&before)),
        };
        tri!(Self::read_only(&dir), fail());
        tri!(
            access::check_dir_change(&before, cred).map_err(stat),
            fail()
        );
        let n = args.where_.name.as_ref();
        tri!(check_entry_name(n, nfsstat3::NFS3ERR_EXIST), fail());
        let target = args.symlink.symlink_data.as_ref();
        if target.len() > PATH_MAX {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_NAMETOOLONG, fail()));
        }
        if target.is_empty() || target.contains(&0) {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_INVAL, fail()));
        }
        let (owner, _) = access::new_object(&before, cred, false, 0o777);
        let id = tri!(
            dir.fs
                .symlink(dir.id, n, target, &owner)
                .await
                .map_err(stat),
            fail()
        );
        let oa = Self::attr_of(&dir, id).await;
        let after = Self::attr_of(&dir, dir.id).await;
        Nfs3Result::Ok(SYMLINK3resok {
            obj: Nfs3Option::Some(self.handle(e, id)),
            obj_attributes: post(e, oa.as_ref()),
            dir_wcc: wcc(e, Some(&before), after.as_ref()),
        })
    }

    async fn mknod(&self, args: MKNOD3args<'_>, cred: &Cred, ip: IpAddr) -> MKNOD3res {
        let none = || MKNOD3resfail {
            dir_wcc: wcc_data::default(),
        };
        let dir = tri!(self.resolve(&args.where_.dir, ip).await, none());
        let before = tri!(Self::attr(&dir).await, none());
        let e = dir.export;
        let fail = || MKNOD3resfail {
            dir_wcc: wcc(e, Some(&before), Some(&before)),
        };
        tri!(Self::read_only(&dir), fail());
        let (kind, s, rdev) = match &args.what {
            mknoddata3::NF3CHR(d) => (
                FileKind::CharDevice,
                &d.dev_attributes,
                (d.spec.specdata1, d.spec.specdata2),
            ),
            mknoddata3::NF3BLK(d) => (
                FileKind::BlockDevice,
                &d.dev_attributes,
                (d.spec.specdata1, d.spec.specdata2),
            ),
            mknoddata3::NF3SOCK(s) => (FileKind::Socket, s, (0, 0)),
            mknoddata3::NF3FIFO(s) => (FileKind::Fifo, s, (0, 0)),
            mknoddata3::default => return Nfs3Result::Err((nfsstat3::NFS3ERR_BADTYPE, fail())),
        };
        tri!(
            access::check_dir_change(&before, cred).map_err(stat),
            fail()
        );
        let n = args.where_.name.as_ref();
        tri!(check_entry_name(n, nfsstat3::NFS3ERR_EXIST), fail());
        if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) && !access::is_root(cred) {
            return Nfs3Result::Err((nfsstat3::NFS3ERR_PERM, fail()));
        }
        let mode = opt(&s.mode).unwrap_or(0o644);
        let (owner, mode) = access::new_object(&before, cred, false, mode);
        let id = tri!(
            dir.fs
                .mknod(dir.id, n, kind, mode, rdev, &owner)
                .await
                .map_err(stat),
            fail()
        );
        let mut extra = s.clone();
        extra.size = Nfs3Option::None;
        tri!(Self::apply_extra(&dir, id, &extra, cred).await, fail());
        let oa = Self::attr_of(&dir, id).await;
        let after = Self::attr_of(&dir, dir.id).await;
        Nfs3Result::Ok(MKNOD3resok {
            obj: Nfs3Option::Some(self.handle(e, id)),
            obj_attributes: post(e, oa.as_ref()),
            dir_wcc: wcc(e, Some(&before), after.as_ref()),
        })
    }

    /// REMOVE, or RMDIR if `rmdir` (same result shape).
    async fn remove(
        &self,
        args: diropargs3<'_>,
        cred: &Cred,
        ip: IpAddr,
        rmdir: bool,
    ) -> REMOVE3res {
        let dir = tri!(self.resolve(&args.dir, ip).await, Default::default());
        let before = tri!(Self::attr(&dir).await, Default::default());
        let e = dir.export;
        let fail = || REMOVE3resfail {
            dir_wcc: wcc(e, Some(&before), Some(&before)),
        };
        tri!(Self::read_only(&dir), fail());
        tri!(
            access::check_dir_change(&before, cred).map_err(stat),
            fail()
        );
        let n = args.name.as_ref();
        let dots = if rmdir && n == b".." {
            nfsstat3::NFS3ERR_NOTEMPTY
        } else {
            nfsstat3::NFS3ERR_INVAL
        };
        tri!(check_entry_name(n, dots), fail());
        let id = tri!(dir.fs.lookup(dir.id, n).await.map_err(stat), fail());
        let victim = tri!(dir.fs.getattr(id).await.map_err(stat), fail());
        match (rmdir, victim.kind == FileKind::Dir) {
            (false, true) => return Nfs3Result::Err((nfsstat3::NFS3ERR_ISDIR, fail())),
            (true, false) => return Nfs3Result::Err((nfsstat3::NFS3ERR_NOTDIR, fail())),
            _ => {}
        }
        tri!(
            access::check_sticky(&before, &victim, cred).map_err(stat),
            fail()
        );
        let res = if rmdir {
            dir.fs.rmdir(dir.id, n).await
        } else {
            dir.fs.remove(dir.id, n).await
        };
        let after = Self::attr_of(&dir, dir.id).await;
        if let Err(err) = res {
            return Nfs3Result::Err((
                stat(err),
                REMOVE3resfail {
                    dir_wcc: wcc(e, Some(&before), after.as_ref()),
                },
            ));
        }
        Nfs3Result::Ok(REMOVE3resok {
            dir_wcc: wcc(e, Some(&before), after.as_ref()),
        })
    }

    async fn rename(&self, args: RENAME3args<'_, '_>, cred: &Cred, ip: IpAddr) -> RENAME3res {
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

    async fn link(&self, args: LINK3args<'_>, cred: &Cred, ip: IpAddr) -> LINK3res {
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

    async fn readdir(
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

    async fn readdirplus(
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

    async fn fsstat(&self, fh: &nfs_fh3, ip: IpAddr) -> FSSTAT3res {
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

    async fn fsinfo(&self, fh: &nfs_fh3, ip: IpAddr, io: u32) -> FSINFO3res {
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

    async fn pathconf(&self, fh: &nfs_fh3, ip: IpAddr) -> PATHCONF3res {
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

    async fn commit(&self, args: COMMIT3args, ip: IpAddr) -> COMMIT3res {
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

/// "/nodes/a/" and "/nodes/a" name the same export.
fn normalise_export_path(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/"
    } else {
        t
    }
}

/// An EXCLUSIVE create verifier as (atime, mtime) seconds.
fn verifier_times(v: &[u8; 8]) -> (i64, i64) {
    (
        u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as i64,
        u32::from_be_bytes([v[4], v[5], v[6], v[7]]) as i64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use nfs3_server::nfs3_types::xdr_codec::Unpack;

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
