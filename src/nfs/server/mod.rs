//! The MOUNT v3 and NFS v3 procedures, written on `nfs3_types`' XDR types
//! against [`Exports`] and [`NodeFs`]. How calls arrive (TCP records, UDP
//! datagrams) is `transport.rs`'s business; [`Server::dispatch`] turns one
//! decoded call into one reply. Undecodable arguments get GARBAGE_ARGS.
//!
//! Every procedure is one `proc_*` method:
//!
//! - [`mount`]: the MOUNT procedures.
//! - [`read_procs`]: NFS procedures that only look (GETATTR, LOOKUP, READ,
//!   READDIR, FSINFO, ...).
//! - [`write_procs`]: NFS procedures that change the file system (SETATTR,
//!   WRITE, CREATE, REMOVE, RENAME, COMMIT, ...).
//! - [`wire`]: conversions between the [`NodeFs`] seam and XDR types, and
//!   the checks of names from the wire.
//! - [`replies`]: the duplicate request cache, so a call sent again gets
//!   the first reply instead of being run twice.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use nfs3_server::nfs3_types::nfs3::{nfs_fh3, nfsstat3, VERSION};
use nfs3_server::nfs3_types::xdr_codec::Opaque;

use super::fs::{Attr, Cred, Exports, FileId, FsError, MountError, NodeFs, Observed};
use super::handles::HandleKey;
use super::rpc::{self, Outcome};
use super::xdr::XdrIn;
use crate::image::trace::{self, traced, SharedTrace};
use wire::{put, stat};

/// `tri!(result, fail)`: the value of `result`, or return
/// `Nfs3Result::Err((status, fail))` from the procedure.
macro_rules! tri {
    ($e:expr, $fail:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return Nfs3Result::Err((s, $fail)),
        }
    };
}

mod mount;
mod read_procs;
mod replies;
mod wire;
mod write_procs;

pub(crate) const NFS_PROGRAM: u32 = 100_003;
pub(crate) const MOUNT_PROGRAM: u32 = 100_005;

/// Largest READ and WRITE (FSINFO rtmax/wtmax).
const MAX_IO: u32 = 1024 * 1024;
/// Preferred READDIR size (FSINFO dtpref).
const DIR_PREF: u32 = 64 * 1024;
/// Largest READ, WRITE and READDIR over UDP (FSINFO rtmax/wtmax there): a
/// reply must fit in one datagram (65,507 bytes) with its headers.
pub(crate) const UDP_MAX_IO: u32 = 32 * 1024;
const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4096;
const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// Entries kept for MOUNT DUMP (informational only; bounded so that
/// clients mounting every directory cannot grow it without limit).
const MAX_MOUNT_LIST: usize = 4096;
/// Cookies 1 and 2 are "." and ".."; a `NodeFs` cookie c is sent as c + 3.
const COOKIE_BASE: u64 = 3;

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

pub(crate) struct Server<E: Exports> {
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
    replies: replies::ReplyCache,
}

/// A verified file handle: the export's file system and the file id.
struct Obj<F> {
    fs: Arc<F>,
    export: u32,
    id: FileId,
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
    pub(crate) fn new(exports: Arc<E>, key: &[u8; 32]) -> Self {
        Server {
            exports,
            key: HandleKey::new(key),
            write_verf: rand::random(),
            cookie_verf: rand::random(),
            mounts: parking_lot::Mutex::new(BTreeSet::new()),
            replies: replies::ReplyCache::default(),
        }
    }

    /// Run one call; the complete reply record (its first 4 bytes are the
    /// record mark, which a datagram reply leaves out). A call that changes
    /// something and was answered before gets that answer again.
    pub(crate) async fn dispatch(&self, h: &Head, args: &[u8], ip: IpAddr) -> Vec<u8> {
        let Some(key) = replies::Key::of(h, args, ip) else {
            return self.run(h, args, ip).await;
        };
        let running = match self.replies.seen(key, std::time::Instant::now()) {
            replies::Seen::New(running) => running,
            replies::Seen::Answered(reply) => {
                tracing::debug!("nfs: {ip} xid {} sent again: first reply resent", h.xid);
                return reply.as_ref().clone();
            }
            replies::Seen::Running(rx) => {
                if let Some(reply) = replies::Seen::wait(rx).await {
                    return reply.as_ref().clone();
                }
                // The first copy never finished: this one runs.
                return self.run(h, args, ip).await;
            }
        };
        let reply = self.run(h, args, ip).await;
        running.finish(reply).as_ref().clone()
    }

    async fn run(&self, h: &Head, args: &[u8], ip: IpAddr) -> Vec<u8> {
        let mut out = rpc::reply_header(h.xid, Outcome::Success);
        let metrics = &crate::metrics::METRICS;
        let result = match (h.prog, h.vers) {
            (NFS_PROGRAM, VERSION) => {
                metrics.nfs_calls.inc();
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
            (MOUNT_PROGRAM, 3) => {
                metrics.mount_calls.inc();
                self.mount(h, args, ip, &mut out).await
            }
            (NFS_PROGRAM, _) | (MOUNT_PROGRAM, _) => Err(Outcome::ProgMismatch { low: 3, high: 3 }),
            _ => Err(Outcome::ProgUnavail),
        };
        match result {
            Ok(()) => rpc::finish_record(out),
            Err(outcome) => {
                metrics.nfs_errors.inc();
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

    /// The MOUNT program: decode the arguments of procedure `h.proc_`, run
    /// it, and append its result to `out`.
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
            0 => Self::proc_null(),
            1 => {
                let path = r.opaque(usize::MAX).map_err(g)?;
                put(out, &self.proc_mnt(path, &h.cred, ip).await);
            }
            2 => put(out, &self.proc_dump()),
            3 => {
                let path = r.opaque(usize::MAX).map_err(g)?;
                self.proc_umnt(path, ip);
            }
            4 => self.proc_umntall(ip),
            5 => put(out, &self.proc_export()),
            _ => return Err(Outcome::ProcUnavail),
        }
        Ok(())
    }

    /// The NFS program: decode the arguments of procedure `h.proc_`, run
    /// it, and append its result to `out`.
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
            0 => Self::proc_null(),
            1 => {
                let fh = r.fh().map_err(g)?;
                put(out, &self.proc_getattr(&fh, ip).await);
            }
            2 => {
                let a = r.setattr_args().map_err(g)?;
                put(out, &self.proc_setattr(a, c, ip).await);
            }
            3 => {
                let a = r.diropargs().map_err(g)?;
                put(out, &self.proc_lookup(a, c, ip).await);
            }
            4 => {
                let a = r.access_args().map_err(g)?;
                put(out, &self.proc_access(a, c, ip).await);
            }
            5 => {
                let fh = r.fh().map_err(g)?;
                put(out, &self.proc_readlink(&fh, ip).await);
            }
            6 => {
                let a = r.read_args().map_err(g)?;
                put(out, &self.proc_read(a, c, ip, io).await);
            }
            7 => {
                let a = r.write_args().map_err(g)?;
                put(out, &self.proc_write(a, c, ip).await);
            }
            8 => {
                let a = r.create_args().map_err(g)?;
                put(out, &self.proc_create(a, c, ip).await);
            }
            9 => {
                let a = r.mkdir_args().map_err(g)?;
                put(out, &self.proc_mkdir(a, c, ip).await);
            }
            10 => {
                let a = r.symlink_args().map_err(g)?;
                put(out, &self.proc_symlink(a, c, ip).await);
            }
            11 => {
                let a = r.mknod_args().map_err(g)?;
                put(out, &self.proc_mknod(a, c, ip).await);
            }
            12 => {
                let a = r.diropargs().map_err(g)?;
                put(out, &self.proc_remove(a, c, ip).await);
            }
            13 => {
                let a = r.diropargs().map_err(g)?;
                put(out, &self.proc_rmdir(a, c, ip).await);
            }
            14 => {
                let a = r.rename_args().map_err(g)?;
                put(out, &self.proc_rename(a, c, ip).await);
            }
            15 => {
                let a = r.link_args().map_err(g)?;
                put(out, &self.proc_link(a, c, ip).await);
            }
            16 => {
                let a = r.readdir_args().map_err(g)?;
                put(out, &self.proc_readdir(a, c, ip, io).await);
            }
            17 => {
                let a = r.readdirplus_args().map_err(g)?;
                put(out, &self.proc_readdirplus(a, c, ip, io).await);
            }
            18 => {
                let fh = r.fh().map_err(g)?;
                put(out, &self.proc_fsstat(&fh, ip).await);
            }
            19 => {
                let fh = r.fh().map_err(g)?;
                put(out, &self.proc_fsinfo(&fh, ip, io).await);
            }
            20 => {
                let fh = r.fh().map_err(g)?;
                put(out, &self.proc_pathconf(&fh, ip).await);
            }
            21 => {
                let a = r.commit_args().map_err(g)?;
                put(out, &self.proc_commit(a, ip).await);
            }
            _ => return Err(Outcome::ProcUnavail),
        }
        Ok(())
    }

    /// NULL of either program: no arguments, an empty reply (clients ping
    /// with it).
    fn proc_null() {}

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
        obj.fs.getattr(obj.id).await.map_err(handle_stat)
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
}

/// The status for a failure to find the object of a file handle: one that
/// vanished is STALE (the handle is no longer good), not NOENT.
fn handle_stat(e: FsError) -> nfsstat3 {
    match e {
        FsError::NotFound | FsError::Stale => {
            crate::metrics::METRICS.nfs_errors.inc();
            nfsstat3::NFS3ERR_STALE
        }
        e => stat(e),
    }
}
