//! The seam between the NFSv3 protocol code and what it serves.
//!
//! The protocol side (RPC, XDR, MOUNT, file handles, permission checks)
//! talks to an [`Exports`] to find the [`NodeFs`] of an export, and to that
//! file system for every operation. The node overlay (image view below, the
//! node's copy-on-write upper directory above) implements both traits.
//!
//! Permission checks against mode/uid/gid are the protocol side's job (it has
//! the caller's credentials and the attributes); a `NodeFs` does what it is
//! told, creating files owned by the credentials it is given.

use bytes::Bytes;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

/// A file's identity within one export: non-zero, and stable across server
/// restarts for the same image and upper directory (file handles carry it).
pub type FileId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub id: FileId,
    pub kind: FileKind,
    /// Permission bits incl. setuid/setgid/sticky (low 12 bits).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub used: u64,
    pub rdev: (u32, u32),
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

/// AUTH_SYS credentials of the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    ServerNow,
    Client(Time),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub id: FileId,
    pub name: Vec<u8>,
    /// Pass back to `readdir` to continue after this entry.
    pub cookie: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStat {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub total_files: u64,
    pub free_files: u64,
}

/// Errors map one-to-one onto NFS3ERR_* codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("permission denied")]
    Access,
    #[error("operation not permitted")]
    Perm,
    #[error("read-only file system")]
    ReadOnly,
    #[error("name too long")]
    NameTooLong,
    #[error("invalid argument")]
    Inval,
    #[error("stale file handle")]
    Stale,
    #[error("cross-device link")]
    XDev,
    #[error("no space left")]
    NoSpace,
    #[error("operation not supported")]
    NotSupported,
    #[error("I/O error: {0}")]
    Io(String),
}

/// One export's file system. Every method may be called concurrently.
pub trait NodeFs: Send + Sync + 'static {
    fn root(&self) -> FileId;
    /// `readonly` roots: every modifying call fails with `ReadOnly`.
    fn read_only(&self) -> bool;
    fn getattr(&self, id: FileId) -> impl Future<Output = Result<Attr, FsError>> + Send;
    /// `name` is one component; "." and ".." are resolved too (".." of the
    /// root is the root).
    fn lookup(
        &self,
        dir: FileId,
        name: &[u8],
    ) -> impl Future<Output = Result<FileId, FsError>> + Send;
    /// Up to `count` bytes at `offset`, and whether the end was reached.
    fn read(
        &self,
        id: FileId,
        offset: u64,
        count: u32,
    ) -> impl Future<Output = Result<(Bytes, bool), FsError>> + Send;
    /// A READ in one step: the attributes of `id`, then, if `check` accepts
    /// them, up to `count` bytes at `offset` as [`NodeFs::read`] returns
    /// them. `check` runs before any data is read, so a refused caller
    /// never makes the file system fetch anything. A file system that has
    /// to resolve an id (walk paths, take locks) overrides this to do it
    /// once for both halves; the default asks `getattr`, then `read`.
    fn read_checked<E: Send>(
        &self,
        id: FileId,
        offset: u64,
        count: u32,
        check: impl FnOnce(&Attr) -> Result<(), E> + Send,
    ) -> impl Future<Output = Result<ReadChecked<E>, FsError>> + Send {
        async move {
            let attr = self.getattr(id).await?;
            if let Err(e) = check(&attr) {
                return Ok((attr, Err(ReadFailed::Refused(e))));
            }
            let data = self.read(id, offset, count).await.map_err(ReadFailed::Fs);
            Ok((attr, data))
        }
    }
    fn readlink(&self, id: FileId) -> impl Future<Output = Result<Vec<u8>, FsError>> + Send;
    /// Up to `max` entries after `cookie` (0: from the start; "." and ".."
    /// are not included), and whether the listing is complete.
    fn readdir(
        &self,
        dir: FileId,
        cookie: u64,
        max: usize,
    ) -> impl Future<Output = Result<(Vec<DirEntry>, bool), FsError>> + Send;
    fn setattr(
        &self,
        id: FileId,
        set: &SetAttr,
        cred: &Cred,
    ) -> impl Future<Output = Result<Attr, FsError>> + Send;
    fn write(
        &self,
        id: FileId,
        offset: u64,
        data: &[u8],
        cred: &Cred,
    ) -> impl Future<Output = Result<Attr, FsError>> + Send;
    /// `exclusive`: fail with `Exists` if the name exists.
    fn create(
        &self,
        dir: FileId,
        name: &[u8],
        mode: u32,
        cred: &Cred,
        exclusive: bool,
    ) -> impl Future<Output = Result<FileId, FsError>> + Send;
    fn mkdir(
        &self,
        dir: FileId,
        name: &[u8],
        mode: u32,
        cred: &Cred,
    ) -> impl Future<Output = Result<FileId, FsError>> + Send;
    fn symlink(
        &self,
        dir: FileId,
        name: &[u8],
        target: &[u8],
        cred: &Cred,
    ) -> impl Future<Output = Result<FileId, FsError>> + Send;
    fn mknod(
        &self,
        dir: FileId,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        rdev: (u32, u32),
        cred: &Cred,
    ) -> impl Future<Output = Result<FileId, FsError>> + Send;
    /// A new name `name` in `dir` for the existing non-directory `id`.
    fn link(
        &self,
        id: FileId,
        dir: FileId,
        name: &[u8],
    ) -> impl Future<Output = Result<(), FsError>> + Send;
    /// Remove a non-directory.
    fn remove(&self, dir: FileId, name: &[u8]) -> impl Future<Output = Result<(), FsError>> + Send;
    fn rmdir(&self, dir: FileId, name: &[u8]) -> impl Future<Output = Result<(), FsError>> + Send;
    fn rename(
        &self,
        from_dir: FileId,
        from: &[u8],
        to_dir: FileId,
        to: &[u8],
    ) -> impl Future<Output = Result<(), FsError>> + Send;
    fn fsstat(&self) -> impl Future<Output = Result<FsStat, FsError>> + Send;
    /// Make the data and attributes written so far to `id` durable (NFS
    /// COMMIT, and WRITE with `stable` other than UNSTABLE). The default
    /// does nothing: writes are then as durable as the write calls make
    /// them.
    fn commit(&self, id: FileId) -> impl Future<Output = Result<(), FsError>> + Send {
        let _ = id;
        std::future::ready(Ok(()))
    }
}

/// What [`NodeFs::read_checked`] found: the attributes, and the data with
/// whether the end was reached, or why there is no data.
pub type ReadChecked<E> = (Attr, Result<(Bytes, bool), ReadFailed<E>>);

/// Why [`NodeFs::read_checked`] returned attributes but no data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadFailed<E> {
    /// The caller's check refused the attributes.
    Refused(E),
    /// The read itself failed.
    Fs(FsError),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    #[error("no such export")]
    NoEntry,
    #[error("client not allowed to mount this export")]
    Access,
    #[error("export unavailable: {0}")]
    Unavailable(String),
}

/// The set of exports (`/nodes/NAME`) and who may use them.
pub trait Exports: Send + Sync + 'static {
    type Fs: NodeFs;
    /// The export at `path` for a MOUNT from `client`, with its id: a
    /// number that stays the same across restarts (file handles carry it).
    fn mount(
        &self,
        path: &str,
        client: IpAddr,
    ) -> impl Future<Output = Result<(u32, Arc<Self::Fs>), MountError>> + Send;
    /// The export `id` (from a file handle) for a call from `client`.
    /// `Access` if that client may not use it.
    fn get(
        &self,
        id: u32,
        client: IpAddr,
    ) -> impl Future<Output = Result<Arc<Self::Fs>, MountError>> + Send;
    /// Export paths for the MOUNT EXPORT procedure.
    fn list(&self) -> Vec<String>;
    /// One NFS call from `client` has been answered (for boot profiles).
    fn observe(&self, _client: IpAddr, _call: Observed) {}
}

/// What the protocol side saw of one NFS call.
pub struct Observed {
    pub procedure: &'static str,
    pub started: std::time::Instant,
    /// The read path's record: the object (export, file id) and bytes returned.
    pub trace: crate::image::trace::ReadTrace,
}
