//! The test double behind the NFS protocol tests (integration/nfs_protocol.rs,
//! integration/nfs_procedures.rs): `lazyboot::nfs::serve` on 127.0.0.1 in
//! this process, exporting [`TempFs`], a real temporary directory behind
//! `NodeFs`. The node overlay has its own tests; end-to-end tests combine
//! the two (integration/nfs_root.rs).
//!
//! [`Lab::new`] makes three exports with a known tree and starts the
//! server; [`tool`] runs libnfs' `nfs-ls`, `nfs-cat` and `nfs-cp`.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lazyboot::nfs::fs::{
    Attr, Cred, DirEntry, Exports, FileId, FileKind, FsError, FsStat, MountError, NodeFs, SetAttr,
    SetTime, Time,
};

use super::nfsrpc::Client;
use super::pseudo_random;
use super::serve::InProcess;

// A NodeFs over a real directory.

pub struct TempFs {
    root: PathBuf,
    root_id: FileId,
    read_only: bool,
    paths: Mutex<HashMap<FileId, PathBuf>>,
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
    pub fn new(root: &Path, read_only: bool) -> Arc<Self> {
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
        let ino = std::fs::symlink_metadata(&p).map_err(FsError::from)?.ino();
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
        let m = std::fs::symlink_metadata(self.path(id)?).map_err(FsError::from)?;
        if m.ino() != id {
            return Err(FsError::Stale);
        }
        Ok(attr_of(&m))
    }

    fn own(p: &Path, cred: &Cred, mode: Option<u32>) -> Result<(), FsError> {
        std::os::unix::fs::lchown(p, Some(cred.uid), Some(cred.gid)).map_err(FsError::from)?;
        if let Some(mode) = mode {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(FsError::from)?;
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
        let f = std::fs::File::open(self.path(id)?).map_err(FsError::from)?;
        let len = f.metadata().map_err(FsError::from)?.len();
        let mut buf = vec![0u8; count as usize];
        let mut n = 0;
        while n < buf.len() {
            let k = f
                .read_at(&mut buf[n..], offset + n as u64)
                .map_err(FsError::from)?;
            if k == 0 {
                break;
            }
            n += k;
        }
        buf.truncate(n);
        Ok((Bytes::from(buf), offset + n as u64 >= len))
    }

    async fn readlink(&self, id: FileId) -> Result<Vec<u8>, FsError> {
        let t = std::fs::read_link(self.path(id)?).map_err(FsError::from)?;
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
            .map_err(FsError::from)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(FsError::from)?;
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
            std::os::unix::fs::lchown(&p, set.uid, set.gid).map_err(FsError::from)?;
        }
        if let Some(mode) = set.mode {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .map_err(FsError::from)?;
        }
        if let Some(size) = set.size {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(FsError::from)?;
            f.set_len(size).map_err(FsError::from)?;
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
                return Err(std::io::Error::last_os_error().into());
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
            .map_err(FsError::from)?;
        f.write_all_at(data, offset).map_err(FsError::from)?;
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
            .map_err(FsError::from)?;
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
        std::fs::create_dir(&p).map_err(FsError::from)?;
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
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &p).map_err(FsError::from)?;
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
            return Err(std::io::Error::last_os_error().into());
        }
        Self::own(&p, cred, Some(mode))?;
        self.remember(p)
    }

    async fn link(&self, id: FileId, dir: FileId, name: &[u8]) -> Result<(), FsError> {
        self.modifying()?;
        std::fs::hard_link(self.path(id)?, self.child(dir, name)?).map_err(FsError::from)
    }

    async fn remove(&self, dir: FileId, name: &[u8]) -> Result<(), FsError> {
        self.modifying()?;
        std::fs::remove_file(self.child(dir, name)?).map_err(FsError::from)
    }

    async fn rmdir(&self, dir: FileId, name: &[u8]) -> Result<(), FsError> {
        self.modifying()?;
        std::fs::remove_dir(self.child(dir, name)?).map_err(FsError::from)
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
        std::fs::rename(&a, &b).map_err(FsError::from)?;
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

pub struct TestExport {
    pub path: &'static str,
    pub id: u32,
    pub fs: Arc<TempFs>,
    /// Only this client may use it (else everyone).
    pub only: Option<IpAddr>,
}

pub struct TestExports(pub Vec<TestExport>);

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

// The lab: three exports in a temp dir, and the server on 127.0.0.1.

/// Size of `data/large.bin` in export `a`.
pub const LARGE_LEN: usize = 24 * 1024 * 1024 + 12345;
/// Entries in `many/` in export `a`.
pub const MANY: usize = 300;

pub struct Lab {
    pub server: Server,
    _dir: tempfile::TempDir,
    /// The directory behind export `/nodes/a`.
    pub a: PathBuf,
    pub exports: Arc<TestExports>,
    /// The handle key's file (a restarted server loads it again).
    pub key_path: PathBuf,
}

/// `lazyboot::nfs::serve` (TCP only) on 127.0.0.1, in a runtime of its own.
pub struct Server {
    pub port: u16,
    task: InProcess,
}

impl Server {
    pub fn start(exports: Arc<TestExports>, key: [u8; 32]) -> Server {
        Self::start_with(exports, key, lazyboot::nfs::Limits::default())
    }

    /// [`Server::start`] with other connection limits.
    pub fn start_with(
        exports: Arc<TestExports>,
        key: [u8; 32],
        limits: lazyboot::nfs::Limits,
    ) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = InProcess::start("nfs::serve", 2, async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            lazyboot::nfs::serve_with(listener, None, exports, key, limits).await?;
            anyhow::Ok(())
        })
        .unwrap();
        Server { port, task }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A raw RPC client connected from 127.0.0.1.
    pub fn client(&self) -> Client {
        Client::connect(self.addr()).unwrap()
    }

    /// A raw RPC client connected from another loopback address.
    pub fn client_from(&self, src: Ipv4Addr) -> Client {
        Client::connect_from(src, self.addr()).unwrap()
    }

    /// A libnfs URL for `path`, with extra `&k=v` arguments.
    pub fn url(&self, path: &str, extra: &str) -> String {
        let p = self.port;
        format!("nfs://127.0.0.1{path}?version=3&nfsport={p}&mountport={p}{extra}")
    }

    pub fn stop(&mut self) {
        self.task.stop();
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

/// Every byte value, 40 times over and then some (`data/all-bytes.bin`).
pub fn all_bytes() -> Vec<u8> {
    (0..=255u8).cycle().take(256 * 40 + 7).collect()
}

impl Lab {
    /// Export `/nodes/a` (read-write, everyone), `/nodes/ro` (read-only) and
    /// `/nodes/other` (127.0.0.2 only), and the server on them.
    pub fn new() -> Lab {
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
        super::run(
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
            server,
            _dir: dir,
            a,
            exports,
            key_path,
        }
    }
}

pub fn runnable(test: &str) -> bool {
    super::require_root_and_tools(test, &["nfs-ls", "nfs-cat", "nfs-cp"])
}

/// Run a libnfs tool; (success, stdout, stderr).
pub fn tool(args: &[&str]) -> (bool, Vec<u8>, String) {
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

pub fn tool_ok(args: &[&str]) -> Vec<u8> {
    let (ok, stdout, stderr) = tool(args);
    assert!(ok, "{args:?} failed: {stderr}");
    stdout
}
