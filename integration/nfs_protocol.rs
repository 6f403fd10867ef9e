//! The NFS protocol side (`lazyboot::nfs::serve`) against real clients:
//! libnfs' `nfs-ls`, `nfs-cat` and `nfs-cp`, and raw RPCs sent from here
//! for what those tools cannot show (forged handles, ACCESS bits, RPC
//! errors, garbage).
//!
//! The exported file systems are a small test double (`TempFs`, a real
//! temporary directory behind `NodeFs`), used only in this file: the node
//! overlay has its own tests, and end-to-end tests combine the two.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use lazyboot::nfs::fs::{
    Attr, Cred, DirEntry, Exports, FileId, FileKind, FsError, FsStat, MountError, NodeFs, SetAttr,
    SetTime, Time,
};
use nfs3_server::nfs3_types::mount::{dirpath, exports, mountres3};
use nfs3_server::nfs3_types::nfs3::*;
use nfs3_server::nfs3_types::rpc::{
    auth_unix, call_body, msg_body, opaque_auth, reply_body, rpc_msg,
};
use nfs3_server::nfs3_types::xdr_codec::{Opaque, Pack, Unpack};

// ---------------------------------------------------------------------------
// A NodeFs over a real directory (test double).

struct TempFs {
    root: PathBuf,
    root_id: FileId,
    read_only: bool,
    paths: Mutex<HashMap<FileId, PathBuf>>,
}

fn io_err(e: std::io::Error) -> FsError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => FsError::NotFound,
        Some(libc::EEXIST) => FsError::Exists,
        Some(libc::ENOTDIR) => FsError::NotDir,
        Some(libc::EISDIR) => FsError::IsDir,
        Some(libc::ENOTEMPTY) => FsError::NotEmpty,
        Some(libc::EACCES) => FsError::Access,
        Some(libc::EPERM) => FsError::Perm,
        Some(libc::EROFS) => FsError::ReadOnly,
        Some(libc::ENAMETOOLONG) => FsError::NameTooLong,
        Some(libc::EINVAL) => FsError::Inval,
        Some(libc::EXDEV) => FsError::XDev,
        Some(libc::ENOSPC) => FsError::NoSpace,
        _ => FsError::Io(e.to_string()),
    }
}

fn attr_of(m: &std::fs::Metadata) -> Attr {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    let kind = if t.is_dir() {
        FileKind::Dir
    } else if t.is_symlink() {
        FileKind::Symlink
    } else if t.is_char_device() {
        FileKind::CharDevice
    } else if t.is_block_device() {
        FileKind::BlockDevice
    } else if t.is_fifo() {
        FileKind::Fifo
    } else if t.is_socket() {
        FileKind::Socket
    } else {
        FileKind::File
    };
    let time = |s: i64, n: i64| Time {
        secs: s,
        nanos: n as u32,
    };
    Attr {
        id: m.ino(),
        kind,
        mode: m.mode() & 0o7777,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        size: m.size(),
        used: m.blocks() * 512,
        rdev: (libc::major(m.rdev()), libc::minor(m.rdev())),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

impl TempFs {
    fn new(root: &Path, read_only: bool) -> Arc<Self> {
        let root_id = std::fs::metadata(root).unwrap().ino();
        let paths = Mutex::new(HashMap::from([(root_id, root.to_path_buf())]));
        Arc::new(TempFs {
            root: root.to_path_buf(),
            root_id,
            read_only,
            paths,
        })
    }

    fn path(&self, id: FileId) -> Result<PathBuf, FsError> {
        self.paths
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .ok_or(FsError::Stale)
    }

    fn remember(&self, p: PathBuf) -> Result<FileId, FsError> {
        let ino = std::fs::symlink_metadata(&p).map_err(io_err)?.ino();
        self.paths.lock().unwrap().insert(ino, p);
        Ok(ino)
    }

    fn child(&self, dir: FileId, name: &[u8]) -> Result<PathBuf, FsError> {
        Ok(self.path(dir)?.join(OsStr::from_bytes(name)))
    }

    /// The server must answer ROFS before a read-only export is asked to
    /// change anything: this error would show up as NFS3ERR_IO instead.
    fn modifying(&self) -> Result<(), FsError> {
        if self.read_only {
            Err(FsError::Io(
                "modifying call reached a read-only export".into(),
            ))
        } else {
            Ok(())
        }
    }

    fn attr(&self, id: FileId) -> Result<Attr, FsError> {
        let m = std::fs::symlink_metadata(self.path(id)?).map_err(io_err)?;
        if m.ino() != id {
            return Err(FsError::Stale);
        }
        Ok(attr_of(&m))
    }

    fn own(p: &Path, cred: &Cred, mode: Option<u32>) -> Result<(), FsError> {
        std::os::unix::fs::lchown(p, Some(cred.uid), Some(cred.gid)).map_err(io_err)?;
        if let Some(mode) = mode {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
        }
        Ok(())
    }
}

impl NodeFs for TempFs {
    fn root(&self) -> FileId {
        self.root_id
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    async fn getattr(&self, id: FileId) -> Result<Attr, FsError> {
        self.attr(id)
    }

    async fn lookup(&self, dir: FileId, name: &[u8]) -> Result<FileId, FsError> {
        match name {
            b"." => Ok(dir),
            b".." if dir == self.root_id => Ok(dir),
            b".." => {
                let p = self.path(dir)?;
                self.remember(p.parent().unwrap_or(&self.root).to_path_buf())
            }
            _ => self.remember(self.child(dir, name)?),
        }
    }

    async fn read(&self, id: FileId, offset: u64, count: u32) -> Result<(Bytes, bool), FsError> {
        let f = std::fs::File::open(self.path(id)?).map_err(io_err)?;
        let len = f.metadata().map_err(io_err)?.len();
        let mut buf = vec![0u8; count as usize];
        let mut n = 0;
        while n < buf.len() {
            let k = f
                .read_at(&mut buf[n..], offset + n as u64)
                .map_err(io_err)?;
            if k == 0 {
                break;
            }
            n += k;
        }
        buf.truncate(n);
        Ok((Bytes::from(buf), offset + n as u64 >= len))
    }

    async fn readlink(&self, id: FileId) -> Result<Vec<u8>, FsError> {
        let t = std::fs::read_link(self.path(id)?).map_err(io_err)?;
        Ok(t.into_os_string().into_vec())
    }

    async fn readdir(
        &self,
        dir: FileId,
        cookie: u64,
        max: usize,
    ) -> Result<(Vec<DirEntry>, bool), FsError> {
        let p = self.path(dir)?;
        let mut names: Vec<_> = std::fs::read_dir(&p)
            .map_err(io_err)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err)?;
        names.sort();
        let start = cookie as usize;
        let mut out = Vec::new();
        for (i, n) in names.iter().enumerate().skip(start).take(max) {
            out.push(DirEntry {
                id: self.remember(p.join(n))?,
                name: n.as_bytes().to_vec(),
                cookie: i as u64 + 1,
            });
        }
        Ok((out.clone(), start + out.len() >= names.len()))
    }

    async fn setattr(&self, id: FileId, set: &SetAttr, _cred: &Cred) -> Result<Attr, FsError> {
        self.modifying()?;
        let p = self.path(id)?;
        if set.uid.is_some() || set.gid.is_some() {
            std::os::unix::fs::lchown(&p, set.uid, set.gid).map_err(io_err)?;
        }
        if let Some(mode) = set.mode {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
        }
        if let Some(size) = set.size {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(io_err)?;
            f.set_len(size).map_err(io_err)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let ts = |t: Option<SetTime>| match t {
                None => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                Some(SetTime::ServerNow) => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_NOW,
                },
                Some(SetTime::Client(t)) => libc::timespec {
                    tv_sec: t.secs,
                    tv_nsec: t.nanos as i64,
                },
            };
            let times = [ts(set.atime), ts(set.mtime)];
            let c = cpath(&p);
            // SAFETY: valid C string and two timespecs.
            let rc = unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if rc != 0 {
                return Err(io_err(std::io::Error::last_os_error()));
            }
        }
        self.attr(id)
    }

    async fn write(
        &self,
        id: FileId,
        offset: u64,
        data: &[u8],
        _cred: &Cred,
    ) -> Result<Attr, FsError> {
        self.modifying()?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path(id)?)
            .map_err(io_err)?;
        f.write_all_at(data, offset).map_err(io_err)?;
        self.attr(id)
    }

    async fn create(
        &self,
        dir: FileId,
        name: &[u8],
        mode: u32,
        cred: &Cred,
        exclusive: bool,
    ) -> Result<FileId, FsError> {
        self.modifying()?;
        let p = self.child(dir, name)?;
        let existed = p.symlink_metadata().is_ok();
        if existed && exclusive {
            return Err(FsError::Exists);
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&p)
            .map_err(io_err)?;
        if !existed {
            Self::own(&p, cred, Some(mode))?;
        }
        self.remember(p)
    }

    async fn mkdir(
        &self,
        dir: FileId,
        name: &[u8],
        mode: u32,
        cred: &Cred,
    ) -> Result<FileId, FsError> {
        self.modifying()?;
        let p = self.child(dir, name)?;
        std::fs::create_dir(&p).map_err(io_err)?;
        Self::own(&p, cred, Some(mode))?;
        self.remember(p)
    }

    async fn symlink(
        &self,
        dir: FileId,
        name: &[u8],
        target: &[u8],
        cred: &Cred,
    ) -> Result<FileId, FsError> {
        self.modifying()?;
        let p = self.child(dir, name)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &p).map_err(io_err)?;
        Self::own(&p, cred, None)?;
        self.remember(p)
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
        self.modifying()?;
        let p = self.child(dir, name)?;
        let t = match kind {
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            _ => return Err(FsError::Inval),
        };
        let c = cpath(&p);
        // SAFETY: valid C string.
        let rc = unsafe { libc::mknod(c.as_ptr(), t | 0o600, libc::makedev(rdev.0, rdev.1)) };
        if rc != 0 {
            return Err(io_err(std::io::Error::last_os_error()));
        }
        Self::own(&p, cred, Some(mode))?;
        self.remember(p)
    }

    async fn link(&self, id: FileId, dir: FileId, name: &[u8]) -> Result<(), FsError> {
        self.modifying()?;
        std::fs::hard_link(self.path(id)?, self.child(dir, name)?).map_err(io_err)
    }

    async fn remove(&self, dir: FileId, name: &[u8]) -> Result<(), FsError> {
        self.modifying()?;
        std::fs::remove_file(self.child(dir, name)?).map_err(io_err)
    }

    async fn rmdir(&self, dir: FileId, name: &[u8]) -> Result<(), FsError> {
        self.modifying()?;
        std::fs::remove_dir(self.child(dir, name)?).map_err(io_err)
    }

    async fn rename(
        &self,
        from_dir: FileId,
        from: &[u8],
        to_dir: FileId,
        to: &[u8],
    ) -> Result<(), FsError> {
        self.modifying()?;
        let (a, b) = (self.child(from_dir, from)?, self.child(to_dir, to)?);
        std::fs::rename(&a, &b).map_err(io_err)?;
        for p in self.paths.lock().unwrap().values_mut() {
            if let Ok(rest) = p.strip_prefix(&a) {
                *p = b.join(rest);
            }
        }
        Ok(())
    }

    async fn fsstat(&self) -> Result<FsStat, FsError> {
        Ok(FsStat {
            total_bytes: 1 << 30,
            free_bytes: 1 << 29,
            total_files: 1 << 20,
            free_files: 1 << 19,
        })
    }
}

struct TestExport {
    path: &'static str,
    id: u32,
    fs: Arc<TempFs>,
    /// Only this client may use it (else everyone).
    only: Option<IpAddr>,
}

struct TestExports(Vec<TestExport>);

impl TestExports {
    fn find(
        &self,
        pred: impl Fn(&TestExport) -> bool,
        client: IpAddr,
    ) -> Result<&TestExport, MountError> {
        let e = self.0.iter().find(|e| pred(e)).ok_or(MountError::NoEntry)?;
        if e.only.is_some_and(|ip| ip != client) {
            return Err(MountError::Access);
        }
        Ok(e)
    }
}

impl Exports for TestExports {
    type Fs = TempFs;

    async fn mount(&self, path: &str, client: IpAddr) -> Result<(u32, Arc<TempFs>), MountError> {
        let e = self.find(|e| e.path == path, client)?;
        Ok((e.id, e.fs.clone()))
    }

    async fn get(&self, id: u32, client: IpAddr) -> Result<Arc<TempFs>, MountError> {
        Ok(self.find(|e| e.id == id, client)?.fs.clone())
    }

    fn list(&self) -> Vec<String> {
        self.0.iter().map(|e| e.path.to_string()).collect()
    }
}

// ---------------------------------------------------------------------------
// Fixture: three exports in a temp dir, and the server on 127.0.0.1.

const LARGE_LEN: usize = 24 * 1024 * 1024 + 12345;
const MANY: usize = 300;

struct Lab {
    _dir: tempfile::TempDir,
    a: PathBuf,
    exports: Arc<TestExports>,
    key_path: PathBuf,
    server: Server,
}

struct Server {
    rt: Option<tokio::runtime::Runtime>,
    port: u16,
}

impl Server {
    fn start(exports: Arc<TestExports>, key: [u8; 32]) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        rt.spawn(async move {
            if let Err(e) = lazyboot::nfs::serve(listener, None, exports, key).await {
                panic!("serve: {e}");
            }
        });
        Server { rt: Some(rt), port }
    }

    /// A libnfs URL for `path`, with extra `&k=v` arguments.
    fn url(&self, path: &str, extra: &str) -> String {
        let p = self.port;
        format!("nfs://127.0.0.1{path}?version=3&nfsport={p}&mountport={p}{extra}")
    }
}

impl Server {
    fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_file(p: &Path, data: &[u8], mode: u32, owner: (u32, u32)) {
    std::fs::write(p, data).unwrap();
    std::os::unix::fs::lchown(p, Some(owner.0), Some(owner.1)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn make_dir(p: &Path, mode: u32, owner: (u32, u32)) {
    std::fs::create_dir_all(p).unwrap();
    std::os::unix::fs::lchown(p, Some(owner.0), Some(owner.1)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn all_bytes() -> Vec<u8> {
    (0..=255u8).cycle().take(256 * 40 + 7).collect()
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let ro = dir.path().join("ro");
        let other = dir.path().join("other");
        let root = (0, 0);

        make_dir(&a, 0o755, root);
        write_file(&a.join("hello.txt"), b"hello world\n", 0o644, root);
        write_file(&a.join("empty"), b"", 0o644, root);
        make_dir(&a.join("bin"), 0o755, root);
        write_file(&a.join("bin/tool"), b"#!/bin/sh\necho hi\n", 0o755, root);
        write_file(&a.join("bin/setuid"), b"suid", 0o4755, root);
        make_dir(&a.join("data"), 0o755, root);
        write_file(&a.join("data/all-bytes.bin"), &all_bytes(), 0o644, root);
        write_file(
            &a.join("data/large.bin"),
            &pseudo_random(LARGE_LEN, 42),
            0o644,
            root,
        );
        make_dir(&a.join("sub/deep"), 0o755, root);
        write_file(&a.join("sub/deep/file.txt"), b"deep\n", 0o644, (1000, 1000));
        std::os::unix::fs::symlink("hello.txt", a.join("link")).unwrap();
        common::run(
            Command::new("mknod")
                .arg(a.join("null-dev"))
                .args(["c", "1", "3"]),
        )
        .unwrap();
        make_dir(&a.join("incoming"), 0o777, root);
        make_dir(&a.join("rootonly"), 0o755, root);
        make_dir(&a.join("sticky"), 0o1777, root);
        write_file(&a.join("sticky/theirs"), b"x", 0o644, (1001, 1001));
        write_file(&a.join("sticky/mine"), b"x", 0o644, (1000, 1000));
        make_dir(&a.join("many"), 0o755, root);
        for i in 0..MANY {
            write_file(&a.join(format!("many/entry-{i:04}")), b"", 0o644, root);
        }

        make_dir(&ro, 0o755, root);
        write_file(&ro.join("tool"), b"#!/bin/sh\n", 0o755, root);
        write_file(&ro.join("plain"), b"plain\n", 0o644, root);
        make_dir(&ro.join("dir"), 0o755, root);

        make_dir(&other, 0o755, root);
        write_file(&other.join("secret"), b"not for you\n", 0o644, root);

        let exports = Arc::new(TestExports(vec![
            TestExport {
                path: "/nodes/a",
                id: 1,
                fs: TempFs::new(&a, false),
                only: None,
            },
            TestExport {
                path: "/nodes/ro",
                id: 2,
                fs: TempFs::new(&ro, true),
                only: None,
            },
            TestExport {
                path: "/nodes/other",
                id: 3,
                fs: TempFs::new(&other, false),
                only: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
            },
        ]));
        let key_path = dir.path().join("state/nfs.key");
        let key = lazyboot::nfs::load_or_create_key(&key_path).unwrap();
        let server = Server::start(exports.clone(), key);
        Lab {
            _dir: dir,
            a,
            exports,
            key_path,
            server,
        }
    }
}

fn runnable(test: &str) -> bool {
    common::require_root_and_tools(test, &["nfs-ls", "nfs-cat", "nfs-cp"])
}

/// Run a libnfs tool; (success, stdout, stderr).
fn tool(args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tool_ok(args: &[&str]) -> Vec<u8> {
    let (ok, stdout, stderr) = tool(args);
    assert!(ok, "{args:?} failed: {stderr}");
    stdout
}

// ---------------------------------------------------------------------------
// A raw RPC client.

const NFS: u32 = 100_003;
const MOUNT: u32 = 100_005;
const ROOT: (u32, u32) = (0, 0);
const USER: (u32, u32) = (1000, 1000);

struct Client {
    s: TcpStream,
    xid: u32,
}

#[derive(Debug)]
struct Reply {
    /// `SUCCESS`, `GARBAGE_ARGS`, `PROG_MISMATCH { low: 3, high: 3 }`, or
    /// for denied calls e.g. `DENIED RPC_MISMATCH ...`.
    stat: String,
    body: Vec<u8>,
}

fn packed<T: Pack>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    v.pack(&mut out).unwrap();
    out
}

fn call_record(
    xid: u32,
    prog: u32,
    vers: u32,
    proc_: u32,
    cred: (u32, u32),
    args: &[u8],
) -> Vec<u8> {
    let unix = auth_unix {
        stamp: 1,
        machinename: Opaque::owned(b"test".to_vec()),
        uid: cred.0,
        gid: cred.1,
        gids: vec![],
    };
    let msg = rpc_msg {
        xid,
        body: msg_body::CALL(call_body {
            rpcvers: 2,
            prog,
            vers,
            proc: proc_,
            cred: opaque_auth::auth_unix(&unix),
            verf: opaque_auth::default(),
        }),
    };
    let mut m = packed(&msg);
    m.extend_from_slice(args);
    m
}

fn frame(m: &[u8]) -> Vec<u8> {
    let mut out = ((m.len() as u32) | 0x8000_0000).to_be_bytes().to_vec();
    out.extend_from_slice(m);
    out
}

impl Client {
    fn connect(port: u16) -> Client {
        Client {
            s: TcpStream::connect(("127.0.0.1", port)).unwrap(),
            xid: 1,
        }
    }

    /// Connect from another loopback source address.
    fn connect_from(src: Ipv4Addr, port: u16) -> Client {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::from((src, 0)).into()).unwrap();
        sock.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
            .unwrap();
        Client {
            s: sock.into(),
            xid: 1,
        }
    }

    fn send(&mut self, prog: u32, vers: u32, proc_: u32, cred: (u32, u32), args: &[u8]) -> u32 {
        self.xid += 1;
        let rec = frame(&call_record(self.xid, prog, vers, proc_, cred, args));
        self.s.write_all(&rec).unwrap();
        self.xid
    }

    fn recv(&mut self) -> (u32, Reply) {
        let mut hdr = [0u8; 4];
        self.s.read_exact(&mut hdr).unwrap();
        let h = u32::from_be_bytes(hdr);
        assert!(h & 0x8000_0000 != 0, "replies are single fragments");
        let mut rec = vec![0u8; (h & 0x7fff_ffff) as usize];
        self.s.read_exact(&mut rec).unwrap();
        let mut r = &rec[..];
        let (msg, _) = rpc_msg::unpack(&mut r).unwrap();
        let msg_body::REPLY(body) = msg.body else {
            panic!("not a reply")
        };
        let stat = match body {
            reply_body::MSG_ACCEPTED(a) => format!("{:?}", a.reply_data),
            reply_body::MSG_DENIED(d) => format!("DENIED {d:?}"),
        };
        (
            msg.xid,
            Reply {
                stat,
                body: r.to_vec(),
            },
        )
    }

    fn call(&mut self, prog: u32, vers: u32, proc_: u32, cred: (u32, u32), args: &[u8]) -> Reply {
        let xid = self.send(prog, vers, proc_, cred, args);
        let (got, reply) = self.recv();
        assert_eq!(got, xid);
        reply
    }

    /// An NFS call that must be accepted; its decoded result.
    fn nfs<R: Unpack>(&mut self, proc_: u32, cred: (u32, u32), args: &impl Pack) -> R {
        let r = self.call(NFS, 3, proc_, cred, &packed(args));
        assert_eq!(r.stat, "SUCCESS", "proc {proc_}");
        let mut b = &r.body[..];
        let (v, _) = R::unpack(&mut b).unwrap();
        assert!(b.is_empty(), "proc {proc_}: {} bytes left", b.len());
        v
    }

    fn mnt(&mut self, path: &str) -> Result<nfs_fh3, String> {
        let r = self.call(
            MOUNT,
            3,
            1,
            ROOT,
            &packed(&dirpath(Opaque::borrowed(path.as_bytes()))),
        );
        assert_eq!(r.stat, "SUCCESS");
        match mountres3::unpack(&mut &r.body[..]).unwrap().0 {
            mountres3::Ok(ok) => Ok(nfs_fh3 {
                data: Opaque::owned(ok.fhandle.0.to_vec()),
            }),
            mountres3::Err(e) => Err(e.to_string()),
        }
    }

    fn getattr(&mut self, fh: &nfs_fh3) -> Result<fattr3, nfsstat3> {
        match self.nfs::<GETATTR3res>(1, ROOT, fh) {
            Nfs3Result::Ok(ok) => Ok(ok.obj_attributes),
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    fn getattr_status(&mut self, fh: &nfs_fh3) -> nfsstat3 {
        match self.getattr(fh) {
            Ok(_) => nfsstat3::NFS3_OK,
            Err(s) => s,
        }
    }

    fn attr_at(&mut self, root: &nfs_fh3, path: &str) -> fattr3 {
        let fh = self.walk(root, path);
        self.getattr(&fh).unwrap()
    }

    fn lookup(&mut self, dir: &nfs_fh3, name: &str, cred: (u32, u32)) -> Result<nfs_fh3, nfsstat3> {
        let args = diropargs3 {
            dir: dir.clone(),
            name: filename3(Opaque::borrowed(name.as_bytes())),
        };
        match self.nfs::<LOOKUP3res>(3, cred, &args) {
            Nfs3Result::Ok(ok) => Ok(ok.object),
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    fn walk(&mut self, root: &nfs_fh3, path: &str) -> nfs_fh3 {
        let mut fh = root.clone();
        for part in path.split('/') {
            fh = self.lookup(&fh, part, ROOT).unwrap();
        }
        fh
    }

    fn access(&mut self, fh: &nfs_fh3, cred: (u32, u32), bits: u32) -> u32 {
        let args = ACCESS3args {
            object: fh.clone(),
            access: bits,
        };
        match self.nfs::<ACCESS3res>(4, cred, &args) {
            Nfs3Result::Ok(ok) => ok.access,
            Nfs3Result::Err((s, _)) => panic!("ACCESS: {s}"),
        }
    }
}

fn status<T, E>(r: Nfs3Result<T, E>) -> nfsstat3 {
    match r {
        Nfs3Result::Ok(_) => nfsstat3::NFS3_OK,
        Nfs3Result::Err((s, _)) => s,
    }
}

fn name3(n: &str) -> filename3<'_> {
    filename3(Opaque::borrowed(n.as_bytes()))
}

fn dirop<'a>(dir: &nfs_fh3, n: &'a str) -> diropargs3<'a> {
    diropargs3 {
        dir: dir.clone(),
        name: name3(n),
    }
}

// ---------------------------------------------------------------------------
// Tests with libnfs clients.

#[test]
fn libnfs_lists_and_reads_the_tree() {
    if !runnable("libnfs_lists_and_reads_the_tree") {
        return;
    }
    let started = Instant::now();
    let lab = Lab::new();
    let s = &lab.server;

    let listing = String::from_utf8(tool_ok(&["nfs-ls", "-R", &s.url("/nodes/a", "")])).unwrap();
    for want in [
        "hello.txt",
        "bin/tool",
        "bin/setuid",
        "data/large.bin",
        "sub/deep/file.txt",
        "many/entry-0299",
        "sticky/theirs",
        "null-dev",
        "link",
    ] {
        assert!(listing.contains(want), "{want} missing from:\n{listing}");
    }
    // nfs-ls prints only the type (d or -) and the rwx bits (setuid,
    // sticky and device numbers are checked with GETATTR below).
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("{name} not in {listing}"))
            .to_string()
    };
    assert!(
        line("bin/tool").starts_with("-rwxr-xr-x"),
        "{}",
        line("bin/tool")
    );
    assert!(
        line("sticky").starts_with("drwxrwxrwx"),
        "{}",
        line("sticky")
    );
    assert!(
        line("incoming").starts_with("drwxrwxrwx"),
        "{}",
        line("incoming")
    );

    for (path, want) in [
        ("hello.txt", b"hello world\n".to_vec()),
        ("empty", Vec::new()),
        ("data/all-bytes.bin", all_bytes()),
        ("sub/deep/file.txt", b"deep\n".to_vec()),
    ] {
        let got = tool_ok(&["nfs-cat", &s.url(&format!("/nodes/a/{path}"), "")]);
        assert_eq!(got, want, "{path}");
    }
    eprintln!("libnfs_lists_and_reads_the_tree: {:?}", started.elapsed());
}

#[test]
fn libnfs_copies_files_in_and_out() {
    if !runnable("libnfs_copies_files_in_and_out") {
        return;
    }
    let started = Instant::now();
    let lab = Lab::new();
    let s = &lab.server;
    let local = tempfile::tempdir().unwrap();

    // A large file out, compared by sha256.
    let out = local.path().join("large.bin");
    tool_ok(&[
        "nfs-cp",
        &s.url("/nodes/a/data/large.bin", ""),
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        common::sha256_hex(&std::fs::read(&out).unwrap()),
        common::sha256_hex(&pseudo_random(LARGE_LEN, 42))
    );

    // A file in (several WRITEs) as uid/gid 1000 into a world-writable
    // directory: same bytes, owned by the caller.
    let data = pseudo_random(3 * 1024 * 1024 + 777, 7);
    let src = local.path().join("in.bin");
    std::fs::write(&src, &data).unwrap();
    let as_user = "&uid=1000&gid=1000";
    tool_ok(&[
        "nfs-cp",
        src.to_str().unwrap(),
        &s.url("/nodes/a/incoming/in.bin", as_user),
    ]);
    let written = lab.a.join("incoming/in.bin");
    assert_eq!(std::fs::read(&written).unwrap(), data);
    let m = std::fs::metadata(&written).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1000));

    // The same user may not create files in a root-owned 0755 directory,
    // root may.
    let (ok, _, err) = tool(&[
        "nfs-cp",
        src.to_str().unwrap(),
        &s.url("/nodes/a/rootonly/in.bin", as_user),
    ]);
    assert!(!ok, "uid 1000 wrote into a 0755 root directory");
    assert!(err.contains("NFS3ERR_ACCES"), "{err}");
    assert!(!lab.a.join("rootonly/in.bin").exists(), "{err}");
    tool_ok(&[
        "nfs-cp",
        src.to_str().unwrap(),
        &s.url("/nodes/a/rootonly/in.bin", ""),
    ]);
    let m = std::fs::metadata(lab.a.join("rootonly/in.bin")).unwrap();
    assert_eq!((m.uid(), m.len()), (0, data.len() as u64));

    // Nothing is written through the read-only export.
    let (ok, _, err) = tool(&[
        "nfs-cp",
        src.to_str().unwrap(),
        &s.url("/nodes/ro/in.bin", ""),
    ]);
    assert!(!ok, "wrote to a read-only export");
    assert!(err.contains("NFS3ERR_ROFS"), "{err}");
    eprintln!("libnfs_copies_files_in_and_out: {:?}", started.elapsed());
}

#[test]
fn unknown_and_foreign_exports_are_refused_at_mnt() {
    if !runnable("unknown_and_foreign_exports_are_refused_at_mnt") {
        return;
    }
    let lab = Lab::new();
    let s = &lab.server;
    let mut c = Client::connect(s.port);
    assert_eq!(c.mnt("/nodes/nope").unwrap_err(), "MNT3ERR_NOENT");
    assert_eq!(c.mnt("/elsewhere").unwrap_err(), "MNT3ERR_NOENT");
    assert_eq!(c.mnt("/nodes/other").unwrap_err(), "MNT3ERR_ACCES");
    assert_eq!(c.mnt("/nodes/a/hello.txt").unwrap_err(), "MNT3ERR_NOTDIR");
    assert_eq!(c.mnt("/nodes/a/missing").unwrap_err(), "MNT3ERR_NOENT");
    // A subdirectory of an export mounts, with the same handle as a lookup.
    let root = c.mnt("/nodes/a/").unwrap();
    let sub = c.mnt("/nodes/a/sub/deep").unwrap();
    assert_eq!(sub, c.walk(&root, "sub/deep"));
    // EXPORT lists the exports.
    let r = c.call(MOUNT, 3, 5, ROOT, &[]);
    let (list, _) = exports::unpack(&mut &r.body[..]).unwrap();
    let paths: Vec<String> = list
        .0
        .iter()
        .map(|e| String::from_utf8_lossy(&e.ex_dir.0).into_owned())
        .collect();
    assert_eq!(paths, ["/nodes/a", "/nodes/ro", "/nodes/other"]);
    // libnfs sees the refusal too.
    let (ok, _, _) = tool(&["nfs-ls", &s.url("/nodes/nope", "")]);
    assert!(!ok, "nfs-ls of an unknown export succeeded");
}

// ---------------------------------------------------------------------------
// Raw RPC tests.

#[test]
fn forged_altered_and_foreign_handles_are_rejected() {
    if !runnable("forged_altered_and_foreign_handles_are_rejected") {
        return;
    }
    let lab = Lab::new();
    let mut c = Client::connect(lab.server.port);
    let root = c.mnt("/nodes/a").unwrap();
    let file = c.walk(&root, "hello.txt");
    let attr = c.getattr(&file).unwrap();
    assert_eq!(attr.size, 12);

    let altered = |i: usize, x: u8| {
        let mut d = file.data.to_vec();
        d[i] ^= x;
        nfs_fh3 {
            data: Opaque::owned(d),
        }
    };
    // Another file id (e.g. the root's), the export id, the tag, the length.
    assert_eq!(
        c.getattr_status(&altered(15, 1)),
        nfsstat3::NFS3ERR_BADHANDLE
    );
    assert_eq!(
        c.getattr_status(&altered(7, 2)),
        nfsstat3::NFS3ERR_BADHANDLE
    );
    assert_eq!(
        c.getattr_status(&altered(31, 0x80)),
        nfsstat3::NFS3ERR_BADHANDLE
    );
    let short = nfs_fh3 {
        data: Opaque::owned(file.data[..20].to_vec()),
    };
    assert_eq!(c.getattr_status(&short), nfsstat3::NFS3ERR_BADHANDLE);
    let mut forged = root.data.to_vec();
    forged[8..16].copy_from_slice(&attr.fileid.to_be_bytes());
    let forged = nfs_fh3 {
        data: Opaque::owned(forged),
    };
    assert_eq!(c.getattr_status(&forged), nfsstat3::NFS3ERR_BADHANDLE);
    // Longer than NFS3_FHSIZE is not even valid XDR.
    let long = nfs_fh3 {
        data: Opaque::owned(vec![1; 65]),
    };
    c.s.write_all(&frame(&call_record(99, NFS, 3, 1, ROOT, &packed(&long))))
        .unwrap();
    let (xid, r) = c.recv();
    assert_eq!((xid, r.stat.as_str()), (99, "GARBAGE_ARGS"));

    // A genuine handle of the export of 127.0.0.2 is refused for
    // 127.0.0.1 (ACCES, not STALE: it is a real handle of an export this
    // client may not use).
    let mut other = Client::connect_from(Ipv4Addr::new(127, 0, 0, 2), lab.server.port);
    let foreign_root = other.mnt("/nodes/other").unwrap();
    let secret = other.walk(&foreign_root, "secret");
    assert_eq!(other.getattr(&secret).unwrap().size, 12);
    assert_eq!(c.getattr_status(&secret), nfsstat3::NFS3ERR_ACCES);
    let read = READ3args {
        file: secret.clone(),
        offset: 0,
        count: 100,
    };
    assert_eq!(
        status(c.nfs::<READ3res>(6, ROOT, &read)),
        nfsstat3::NFS3ERR_ACCES
    );
}

#[test]
fn handles_survive_a_server_restart_with_the_same_key() {
    if !runnable("handles_survive_a_server_restart_with_the_same_key") {
        return;
    }
    let mut lab = Lab::new();
    let (file, before) = {
        let mut c = Client::connect(lab.server.port);
        let root = c.mnt("/nodes/a").unwrap();
        let file = c.walk(&root, "sub/deep/file.txt");
        let a = c.getattr(&file).unwrap();
        (file, a)
    };
    // Restart: stop the server, start a new instance with the key loaded
    // from the same file.
    lab.server.stop();
    let key = lazyboot::nfs::load_or_create_key(&lab.key_path).unwrap();
    lab.server = Server::start(lab.exports.clone(), key);
    let mut c = Client::connect(lab.server.port);
    let after = c.getattr(&file).unwrap();
    assert_eq!(
        (after.fileid, after.size, after.fsid),
        (before.fileid, before.size, before.fsid)
    );
    // A server with another key does not know the handle.
    let other = Server::start(lab.exports.clone(), [9; 32]);
    let mut c = Client::connect(other.port);
    assert_eq!(c.getattr_status(&file), nfsstat3::NFS3ERR_BADHANDLE);
}

#[test]
fn access_on_a_read_only_export_keeps_execute() {
    if !runnable("access_on_a_read_only_export_keeps_execute") {
        return;
    }
    let lab = Lab::new();
    let mut c = Client::connect(lab.server.port);
    let root = c.mnt("/nodes/ro").unwrap();
    let tool_fh = c.walk(&root, "tool");
    let plain = c.walk(&root, "plain");
    let dir = c.walk(&root, "dir");
    let all = 0x3f;

    // The switch_root case: a 0755 file keeps READ and EXECUTE, for a user
    // and for root; nothing that modifies is granted.
    for cred in [USER, ROOT] {
        assert_eq!(
            c.access(&tool_fh, cred, all),
            ACCESS3_READ | ACCESS3_EXECUTE,
            "{cred:?}"
        );
        assert_eq!(
            c.access(&dir, cred, all),
            ACCESS3_READ | ACCESS3_LOOKUP,
            "{cred:?}"
        );
    }
    assert_eq!(c.access(&tool_fh, USER, ACCESS3_MODIFY | ACCESS3_EXTEND), 0);
    // Root needs an x bit to execute.
    assert_eq!(c.access(&plain, ROOT, all), ACCESS3_READ);

    // Every modifying procedure is ROFS (the test file system would turn
    // a call that reached it into NFS3ERR_IO).
    let write = WRITE3args {
        file: plain.clone(),
        offset: 0,
        count: 1,
        stable: stable_how::FILE_SYNC,
        data: Opaque::borrowed(b"x"),
    };
    assert_eq!(
        status(c.nfs::<WRITE3res>(7, ROOT, &write)),
        nfsstat3::NFS3ERR_ROFS
    );
    let create = CREATE3args {
        where_: dirop(&root, "new"),
        how: createhow3::UNCHECKED(sattr3::default()),
    };
    assert_eq!(
        status(c.nfs::<CREATE3res>(8, ROOT, &create)),
        nfsstat3::NFS3ERR_ROFS
    );
    let mkdir = MKDIR3args {
        where_: dirop(&root, "newdir"),
        attributes: sattr3::default(),
    };
    assert_eq!(
        status(c.nfs::<MKDIR3res>(9, ROOT, &mkdir)),
        nfsstat3::NFS3ERR_ROFS
    );
    let setattr = SETATTR3args {
        object: plain.clone(),
        new_attributes: sattr3 {
            mode: Nfs3Option::Some(0o600),
            ..Default::default()
        },
        guard: Nfs3Option::None,
    };
    assert_eq!(
        status(c.nfs::<SETATTR3res>(2, ROOT, &setattr)),
        nfsstat3::NFS3ERR_ROFS
    );
    assert_eq!(
        status(c.nfs::<REMOVE3res>(12, ROOT, &dirop(&root, "plain"))),
        nfsstat3::NFS3ERR_ROFS
    );
    assert_eq!(
        status(c.nfs::<RMDIR3res>(13, ROOT, &dirop(&root, "dir"))),
        nfsstat3::NFS3ERR_ROFS
    );
    let rename = RENAME3args {
        from: dirop(&root, "plain"),
        to: dirop(&root, "renamed"),
    };
    assert_eq!(
        status(c.nfs::<RENAME3res>(14, ROOT, &rename)),
        nfsstat3::NFS3ERR_ROFS
    );
    let link = LINK3args {
        file: plain.clone(),
        link: dirop(&root, "hard"),
    };
    assert_eq!(
        status(c.nfs::<LINK3res>(15, ROOT, &link)),
        nfsstat3::NFS3ERR_ROFS
    );
    let symlink = SYMLINK3args {
        where_: dirop(&root, "sym"),
        symlink: symlinkdata3 {
            symlink_attributes: sattr3::default(),
            symlink_data: nfspath3(Opaque::borrowed(b"plain")),
        },
    };
    assert_eq!(
        status(c.nfs::<SYMLINK3res>(10, ROOT, &symlink)),
        nfsstat3::NFS3ERR_ROFS
    );
    let mknod = MKNOD3args {
        where_: dirop(&root, "fifo"),
        what: mknoddata3::NF3FIFO(sattr3::default()),
    };
    assert_eq!(
        status(c.nfs::<MKNOD3res>(11, ROOT, &mknod)),
        nfsstat3::NFS3ERR_ROFS
    );
    // Reading still works.
    let read = READ3args {
        file: plain.clone(),
        offset: 0,
        count: 100,
    };
    match c.nfs::<READ3res>(6, USER, &read) {
        Nfs3Result::Ok(ok) => assert_eq!((&ok.data[..], ok.eof), (&b"plain\n"[..], true)),
        Nfs3Result::Err((s, _)) => panic!("READ: {s}"),
    }
}

#[test]
fn permissions_attributes_and_modifying_procedures() {
    if !runnable("permissions_attributes_and_modifying_procedures") {
        return;
    }
    let lab = Lab::new();
    let a = &lab.a;
    let mut c = Client::connect(lab.server.port);
    let root = c.mnt("/nodes/a").unwrap();

    // Attributes: setuid bit, device numbers, fsid per export, fileid.
    let suid = c.attr_at(&root, "bin/setuid");
    assert_eq!(suid.mode, 0o4755);
    let dev = c.attr_at(&root, "null-dev");
    assert_eq!(dev.type_, ftype3::NF3CHR);
    assert_eq!((dev.rdev.specdata1, dev.rdev.specdata2), (1, 3));
    assert_eq!(
        dev.fileid,
        std::fs::symlink_metadata(a.join("null-dev")).unwrap().ino()
    );
    let sticky_dir = c.walk(&root, "sticky");
    let st = c.getattr(&sticky_dir).unwrap();
    assert_eq!((st.mode, st.fsid), (0o1777, suid.fsid));

    // FSINFO.
    let info = match c.nfs::<FSINFO3res>(19, ROOT, &root) {
        Nfs3Result::Ok(ok) => ok,
        Nfs3Result::Err((s, _)) => panic!("FSINFO: {s}"),
    };
    assert_eq!((info.rtmax, info.wtmax), (1 << 20, 1 << 20));
    assert_eq!(
        info.properties,
        FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME
    );

    // Writes need w on the file (or ownership).
    let hello = c.walk(&root, "hello.txt");
    let write = |fh: &nfs_fh3| WRITE3args {
        file: fh.clone(),
        offset: 0,
        count: 5,
        stable: stable_how::UNSTABLE,
        data: Opaque::owned(b"HELLO".to_vec()),
    };
    assert_eq!(
        status(c.nfs::<WRITE3res>(7, USER, &write(&hello))),
        nfsstat3::NFS3ERR_ACCES
    );
    match c.nfs::<WRITE3res>(7, ROOT, &write(&hello)) {
        Nfs3Result::Ok(ok) => {
            assert_eq!((ok.count, ok.committed), (5, stable_how::UNSTABLE));
        }
        Nfs3Result::Err((s, _)) => panic!("WRITE: {s}"),
    }
    assert_eq!(
        std::fs::read(a.join("hello.txt")).unwrap(),
        b"HELLO world\n"
    );

    // Creating needs w+x on the directory; new objects belong to the
    // caller.
    let incoming = c.walk(&root, "incoming");
    let rootonly = c.walk(&root, "rootonly");
    let create = |dir: &nfs_fh3, n: &'static str| CREATE3args {
        where_: dirop(dir, n),
        how: createhow3::GUARDED(sattr3 {
            mode: Nfs3Option::Some(0o640),
            ..Default::default()
        }),
    };
    assert_eq!(
        status(c.nfs::<CREATE3res>(8, USER, &create(&rootonly, "f"))),
        nfsstat3::NFS3ERR_ACCES
    );
    assert_eq!(
        status(c.nfs::<CREATE3res>(8, USER, &create(&incoming, "f"))),
        nfsstat3::NFS3_OK
    );
    assert_eq!(
        status(c.nfs::<CREATE3res>(8, USER, &create(&incoming, "f"))),
        nfsstat3::NFS3ERR_EXIST
    );
    let m = std::fs::metadata(a.join("incoming/f")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o640));

    // chown/chmod rules.
    let f = c.walk(&root, "incoming/f");
    let setattr = |s: sattr3| SETATTR3args {
        object: f.clone(),
        new_attributes: s,
        guard: Nfs3Option::None,
    };
    let chown = sattr3 {
        uid: Nfs3Option::Some(1001),
        ..Default::default()
    };
    assert_eq!(
        status(c.nfs::<SETATTR3res>(2, USER, &setattr(chown.clone()))),
        nfsstat3::NFS3ERR_PERM
    );
    let chmod = sattr3 {
        mode: Nfs3Option::Some(0o4750),
        ..Default::default()
    };
    assert_eq!(
        status(c.nfs::<SETATTR3res>(2, (1001, 1001), &setattr(chmod.clone()))),
        nfsstat3::NFS3ERR_PERM
    );
    assert_eq!(
        status(c.nfs::<SETATTR3res>(2, USER, &setattr(chmod))),
        nfsstat3::NFS3_OK
    );
    assert_eq!(
        std::fs::metadata(a.join("incoming/f")).unwrap().mode() & 0o7777,
        0o4750
    );
    // chown by root clears setuid.
    assert_eq!(
        status(c.nfs::<SETATTR3res>(2, ROOT, &setattr(chown))),
        nfsstat3::NFS3_OK
    );
    let m = std::fs::metadata(a.join("incoming/f")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (1001, 0o750));

    // Sticky directory: only the owner (or root, or the dir owner)
    // removes.
    assert_eq!(
        status(c.nfs::<REMOVE3res>(12, USER, &dirop(&sticky_dir, "theirs"))),
        nfsstat3::NFS3ERR_PERM
    );
    assert_eq!(
        status(c.nfs::<REMOVE3res>(12, USER, &dirop(&sticky_dir, "mine"))),
        nfsstat3::NFS3_OK
    );
    assert!(a.join("sticky/theirs").exists() && !a.join("sticky/mine").exists());

    // MKNOD (devices need root), LINK, SYMLINK, RENAME, RMDIR.
    let mknod = |n: &'static str| MKNOD3args {
        where_: dirop(&incoming, n),
        what: mknoddata3::NF3BLK(devicedata3 {
            dev_attributes: sattr3 {
                mode: Nfs3Option::Some(0o660),
                ..Default::default()
            },
            spec: specdata3 {
                specdata1: 7,
                specdata2: 5,
            },
        }),
    };
    assert_eq!(
        status(c.nfs::<MKNOD3res>(11, USER, &mknod("blk"))),
        nfsstat3::NFS3ERR_PERM
    );
    assert_eq!(
        status(c.nfs::<MKNOD3res>(11, ROOT, &mknod("blk"))),
        nfsstat3::NFS3_OK
    );
    let blk = c.attr_at(&root, "incoming/blk");
    assert_eq!(
        (blk.type_, blk.rdev.specdata1, blk.rdev.specdata2, blk.mode),
        (ftype3::NF3BLK, 7, 5, 0o660)
    );
    let fifo = MKNOD3args {
        where_: dirop(&incoming, "fifo"),
        what: mknoddata3::NF3FIFO(sattr3::default()),
    };
    assert_eq!(
        status(c.nfs::<MKNOD3res>(11, USER, &fifo)),
        nfsstat3::NFS3_OK
    );
    assert_eq!(c.attr_at(&root, "incoming/fifo").type_, ftype3::NF3FIFO);
    let link = LINK3args {
        file: hello.clone(),
        link: dirop(&incoming, "hard"),
    };
    match c.nfs::<LINK3res>(15, ROOT, &link) {
        Nfs3Result::Ok(ok) => match ok.file_attributes {
            Nfs3Option::Some(fa) => assert_eq!(fa.nlink, 2),
            Nfs3Option::None => panic!("no attributes"),
        },
        Nfs3Result::Err((s, _)) => panic!("LINK: {s}"),
    }
    let symlink = SYMLINK3args {
        where_: dirop(&incoming, "sym"),
        symlink: symlinkdata3 {
            symlink_attributes: sattr3::default(),
            symlink_data: nfspath3(Opaque::borrowed(b"../hello.txt")),
        },
    };
    assert_eq!(
        status(c.nfs::<SYMLINK3res>(10, USER, &symlink)),
        nfsstat3::NFS3_OK
    );
    let sym = c.walk(&root, "incoming/sym");
    match c.nfs::<READLINK3res>(5, USER, &sym) {
        Nfs3Result::Ok(ok) => assert_eq!(ok.data.0.as_ref(), b"../hello.txt"),
        Nfs3Result::Err((s, _)) => panic!("READLINK: {s}"),
    }
    let rename = RENAME3args {
        from: dirop(&incoming, "hard"),
        to: dirop(&incoming, "renamed"),
    };
    assert_eq!(
        status(c.nfs::<RENAME3res>(14, ROOT, &rename)),
        nfsstat3::NFS3_OK
    );
    assert_eq!(
        std::fs::read(a.join("incoming/renamed")).unwrap(),
        b"HELLO world\n"
    );
    let mkdir = MKDIR3args {
        where_: dirop(&incoming, "d"),
        attributes: sattr3 {
            mode: Nfs3Option::Some(0o700),
            ..Default::default()
        },
    };
    assert_eq!(
        status(c.nfs::<MKDIR3res>(9, USER, &mkdir)),
        nfsstat3::NFS3_OK
    );
    let m = std::fs::metadata(a.join("incoming/d")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (1000, 0o700));
    assert_eq!(
        status(c.nfs::<RMDIR3res>(13, USER, &dirop(&incoming, "renamed"))),
        nfsstat3::NFS3ERR_NOTDIR
    );
    assert_eq!(
        status(c.nfs::<RMDIR3res>(13, USER, &dirop(&incoming, "d"))),
        nfsstat3::NFS3_OK
    );
    assert!(!a.join("incoming/d").exists());

    // COMMIT answers with the write verifier.
    let commit = COMMIT3args {
        file: hello.clone(),
        offset: 0,
        count: 0,
    };
    assert_eq!(
        status(c.nfs::<COMMIT3res>(21, ROOT, &commit)),
        nfsstat3::NFS3_OK
    );
}

#[test]
fn readdir_pages_through_large_directories() {
    if !runnable("readdir_pages_through_large_directories") {
        return;
    }
    let lab = Lab::new();
    let mut c = Client::connect(lab.server.port);
    let root = c.mnt("/nodes/a").unwrap();
    let many = c.walk(&root, "many");
    let mut want: BTreeSet<String> = (0..MANY).map(|i| format!("entry-{i:04}")).collect();
    want.insert(".".into());
    want.insert("..".into());

    // READDIRPLUS with small replies: every entry exactly once, with
    // attributes and a handle that works.
    let (mut cookie, mut verf, mut seen, mut calls) = (0, cookieverf3::default(), Vec::new(), 0);
    loop {
        let args = READDIRPLUS3args {
            dir: many.clone(),
            cookie,
            cookieverf: verf,
            dircount: 512,
            maxcount: 4096,
        };
        let r = c.call(NFS, 3, 17, ROOT, &packed(&args));
        assert!(r.body.len() <= 4096, "{} bytes", r.body.len());
        let ok = match READDIRPLUS3res::unpack(&mut &r.body[..]).unwrap().0 {
            Nfs3Result::Ok(ok) => ok,
            Nfs3Result::Err((s, _)) => panic!("READDIRPLUS: {s}"),
        };
        calls += 1;
        verf = ok.cookieverf;
        for e in ok.reply.entries.0 {
            let n = String::from_utf8(e.name.0.to_vec()).unwrap();
            let Nfs3Option::Some(attrs) = e.name_attributes else {
                panic!("{n}: no attributes")
            };
            assert_eq!(attrs.fileid, e.fileid);
            let Nfs3Option::Some(fh) = e.name_handle else {
                panic!("{n}: no handle")
            };
            assert_eq!(c.getattr(&fh).unwrap().fileid, e.fileid);
            cookie = e.cookie;
            seen.push(n);
        }
        if ok.reply.eof {
            break;
        }
        assert!(calls < 200, "no progress");
    }
    assert!(calls > 5, "dircount/maxcount not respected: {calls} calls");
    assert_eq!(seen.len(), want.len(), "duplicates");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), want);

    // Plain READDIR.
    let (mut cookie, mut seen) = (0, BTreeSet::new());
    loop {
        let args = READDIR3args {
            dir: many.clone(),
            cookie,
            cookieverf: verf,
            count: 1024,
        };
        let ok = match c.nfs::<READDIR3res>(16, ROOT, &args) {
            Nfs3Result::Ok(ok) => ok,
            Nfs3Result::Err((s, _)) => panic!("READDIR: {s}"),
        };
        for e in ok.reply.entries.0 {
            seen.insert(String::from_utf8(e.name.0.to_vec()).unwrap());
            cookie = e.cookie;
        }
        if ok.reply.eof {
            break;
        }
    }
    assert_eq!(seen, want);

    // A foreign cookie verifier, and a reply too small for one entry.
    let args = READDIR3args {
        dir: many.clone(),
        cookie: 5,
        cookieverf: cookieverf3(*b"notmine!"),
        count: 1024,
    };
    assert_eq!(
        status(c.nfs::<READDIR3res>(16, ROOT, &args)),
        nfsstat3::NFS3ERR_BAD_COOKIE
    );
    let args = READDIRPLUS3args {
        dir: many.clone(),
        cookie: 0,
        cookieverf: cookieverf3::default(),
        dircount: 100,
        maxcount: 120,
    };
    assert_eq!(
        status(c.nfs::<READDIRPLUS3res>(17, ROOT, &args)),
        nfsstat3::NFS3ERR_TOOSMALL
    );
    // A user may not list a 0700 directory it does not own.
    std::fs::set_permissions(lab.a.join("many"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let args = READDIR3args {
        dir: many.clone(),
        cookie: 0,
        cookieverf: cookieverf3::default(),
        count: 1024,
    };
    assert_eq!(
        status(c.nfs::<READDIR3res>(16, USER, &args)),
        nfsstat3::NFS3ERR_ACCES
    );
}

#[test]
fn rpc_errors_garbage_and_pipelining() {
    if !runnable("rpc_errors_garbage_and_pipelining") {
        return;
    }
    let lab = Lab::new();
    let port = lab.server.port;

    // Pure garbage: the connection is dropped.
    let mut g = TcpStream::connect(("127.0.0.1", port)).unwrap();
    g.write_all(&[0xff; 64]).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        g.read(&mut buf).unwrap_or(0),
        0,
        "garbage connection not dropped"
    );
    // A record that is not a call.
    let mut g = TcpStream::connect(("127.0.0.1", port)).unwrap();
    g.write_all(&frame(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]))
        .unwrap();
    assert_eq!(g.read(&mut buf).unwrap_or(0), 0, "reply record not dropped");

    // On a new connection everything works, with the proper RPC errors.
    let mut c = Client::connect(port);
    assert_eq!(c.call(NFS, 3, 0, ROOT, &[]).stat, "SUCCESS");
    assert_eq!(c.call(MOUNT, 3, 0, ROOT, &[]).stat, "SUCCESS");
    assert_eq!(c.call(100_000, 2, 0, ROOT, &[]).stat, "PROG_UNAVAIL");
    assert_eq!(
        c.call(NFS, 2, 0, ROOT, &[]).stat,
        "PROG_MISMATCH { low: 3, high: 3 }"
    );
    assert_eq!(
        c.call(NFS, 4, 0, ROOT, &[]).stat,
        "PROG_MISMATCH { low: 3, high: 3 }"
    );
    assert_eq!(
        c.call(MOUNT, 1, 0, ROOT, &[]).stat,
        "PROG_MISMATCH { low: 3, high: 3 }"
    );
    assert_eq!(c.call(NFS, 3, 22, ROOT, &[]).stat, "PROC_UNAVAIL");
    assert_eq!(c.call(MOUNT, 3, 6, ROOT, &[]).stat, "PROC_UNAVAIL");
    // Truncated and malformed arguments.
    assert_eq!(
        c.call(NFS, 3, 1, ROOT, &[0, 0, 0, 32, 1, 2]).stat,
        "GARBAGE_ARGS"
    );
    assert_eq!(
        c.call(NFS, 3, 3, ROOT, &[0xff, 0xff, 0xff, 0xff]).stat,
        "GARBAGE_ARGS"
    );
    assert_eq!(c.call(MOUNT, 3, 1, ROOT, &[0, 0]).stat, "GARBAGE_ARGS");
    // RPC version 3: denied.
    let mut rec = call_record(77, NFS, 3, 0, ROOT, &[]);
    rec[11] = 3;
    c.s.write_all(&frame(&rec)).unwrap();
    let (xid, r) = c.recv();
    assert_eq!(xid, 77);
    assert!(r.stat.starts_with("DENIED RPC_MISMATCH"), "{}", r.stat);

    // Pipelined calls, one of them split into three fragments, sent in a
    // single write: every reply arrives.
    let root = c.mnt("/nodes/a").unwrap();
    let mut stream = Vec::new();
    let mut want = BTreeSet::new();
    for i in 0..20u32 {
        let xid = 1000 + i;
        want.insert(xid);
        let m = call_record(xid, NFS, 3, 1, ROOT, &packed(&root));
        if i == 7 {
            let (x, rest) = m.split_at(10);
            let (y, z) = rest.split_at(20);
            for (part, last) in [(x, false), (y, false), (z, true)] {
                let h = part.len() as u32 | if last { 0x8000_0000 } else { 0 };
                stream.extend_from_slice(&h.to_be_bytes());
                stream.extend_from_slice(part);
            }
        } else {
            stream.extend(frame(&m));
        }
    }
    c.s.write_all(&stream).unwrap();
    let mut got = BTreeSet::new();
    for _ in 0..20 {
        let (xid, r) = c.recv();
        assert_eq!(r.stat, "SUCCESS");
        assert!(matches!(
            GETATTR3res::unpack(&mut &r.body[..]).unwrap().0,
            Nfs3Result::Ok(_)
        ));
        got.insert(xid);
    }
    assert_eq!(got, want);

    // An oversized record drops that connection only.
    let mut big = TcpStream::connect(("127.0.0.1", port)).unwrap();
    big.write_all(&(0x8000_0000u32 | (2 << 20)).to_be_bytes())
        .unwrap();
    assert_eq!(
        big.read(&mut buf).unwrap_or(0),
        0,
        "oversized record accepted"
    );
    assert_eq!(c.call(NFS, 3, 0, ROOT, &[]).stat, "SUCCESS");
    // And libnfs still works after all that.
    let got = tool_ok(&["nfs-cat", &lab.server.url("/nodes/a/hello.txt", "")]);
    assert_eq!(got, b"hello world\n");
}
