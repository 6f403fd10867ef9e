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

/// The type of a file system object, as reported in its attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device node (major/minor in `Attr::rdev`).
    CharDevice,
    /// A block device node (major/minor in `Attr::rdev`).
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A Unix domain socket node.
    Socket,
}

/// A timestamp relative to the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Time {
    /// Whole seconds since the Unix epoch (negative before 1970).
    pub secs: i64,
    /// Nanoseconds within the second (below 1_000_000_000).
    pub nanos: u32,
}

/// A file's attributes, as GETATTR and post-operation attributes report them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// The file's id within its export.
    pub id: FileId,
    /// What kind of object this is.
    pub kind: FileKind,
    /// Permission bits incl. setuid/setgid/sticky (low 12 bits).
    pub mode: u32,
    /// Number of hard links (names) to the file.
    pub nlink: u32,
    /// Owning user id.
    pub uid: u32,
    /// Owning group id.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Bytes of storage the file occupies, in whole 512-byte blocks.
    pub used: u64,
    /// Device `(major, minor)` for character and block devices; `(0, 0)` otherwise.
    pub rdev: (u32, u32),
    /// Time of last access.
    pub atime: Time,
    /// Time of last data modification.
    pub mtime: Time,
    /// Time of last attribute or data change.
    pub ctime: Time,
}

/// AUTH_SYS credentials of the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cred {
    /// Effective user id of the caller.
    pub uid: u32,
    /// Primary group id of the caller.
    pub gid: u32,
    /// Supplementary group ids of the caller.
    pub gids: Vec<u32>,
}

/// How SETATTR sets a timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// Set it to the server's current time.
    ServerNow,
    /// Set it to the time the client sent.
    Client(Time),
}

/// The attribute changes of one SETATTR (or of the attributes given to a create); `None` leaves
/// that attribute as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (low 12 bits, as `Attr::mode`).
    pub mode: Option<u32>,
    /// New owning user id.
    pub uid: Option<u32>,
    /// New owning group id.
    pub gid: Option<u32>,
    /// New size in bytes: truncates or extends a regular file with zeros.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

/// One name in a directory listing (READDIR/READDIRPLUS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The id of the object the name refers to.
    pub id: FileId,
    /// The name: one path component, raw bytes.
    pub name: Vec<u8>,
    /// Pass back to `readdir` to continue after this entry.
    pub cookie: u64,
}

/// File system capacity and usage, as FSSTAT reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStat {
    /// Total size of the file system in bytes.
    pub total_bytes: u64,
    /// Bytes available to unprivileged callers.
    pub free_bytes: u64,
    /// Total number of file slots (inodes).
    pub total_files: u64,
    /// File slots (inodes) available to unprivileged callers.
    pub free_files: u64,
}

/// Errors map one-to-one onto NFS3ERR_* codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// The name, or the object behind a file id, does not exist.
    #[error("no such file or directory")]
    NotFound,
    /// The name to create already exists in the directory.
    #[error("file exists")]
    Exists,
    /// An operation that needs a directory was given something else.
    #[error("not a directory")]
    NotDir,
    /// An operation that needs a non-directory was given a directory.
    #[error("is a directory")]
    IsDir,
    /// RMDIR, or RENAME over a directory, with entries still in it.
    #[error("directory not empty")]
    NotEmpty,
    /// The caller's credentials do not allow the access asked for.
    #[error("permission denied")]
    Access,
    /// The caller is not allowed to do this at all (e.g. not the owner).
    #[error("operation not permitted")]
    Perm,
    /// A modifying call on a read-only export.
    #[error("read-only file system")]
    ReadOnly,
    /// A name component is longer than the file system allows.
    #[error("name too long")]
    NameTooLong,
    /// An argument is not valid for this object (e.g. READLINK on a non-symlink, an unsupported
    /// file type).
    #[error("invalid argument")]
    Inval,
    /// The file id no longer refers to an object (removed, or from another image or upper).
    #[error("stale file handle")]
    Stale,
    /// The link or rename cannot be done in place (e.g. renaming a directory
    /// that comes from the image); the client falls back to copying.
    #[error("cross-device link")]
    XDev,
    /// The upper directory's file system is out of space.
    #[error("no space left")]
    NoSpace,
    /// The owner's disk quota on the upper directory's file system is used up.
    #[error("disk quota exceeded")]
    DQuot,
    /// One more hard link than the upper's file system allows.
    #[error("too many links")]
    MLink,
    /// The device a node names does not exist (or is not served).
    #[error("no such device")]
    NoDev,
    /// No such device or address.
    #[error("no such device or address")]
    NxIo,
    /// A size beyond what the upper directory's file system can hold
    /// (SETATTR or WRITE past its largest file).
    #[error("file too large")]
    FBig,
    /// The operation is not supported by this file system.
    #[error("operation not supported")]
    NotSupported,
    /// Any other failure of the underlying storage; the text says what failed.
    #[error("I/O error: {0}")]
    Io(String),
    /// Not possible yet, maybe later (the image is still being fetched and
    /// made no progress for a while); the text says why. Clients retry.
    #[error("try again later: {0}")]
    Later(String),
}

/// The NFS status of a host file system error, for a [`NodeFs`] backed by
/// one: errno by errno, anything else an I/O error with its message.
impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
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
            Some(libc::EDQUOT) => FsError::DQuot,
            Some(libc::EMLINK) => FsError::MLink,
            Some(libc::ENODEV) => FsError::NoDev,
            Some(libc::ENXIO) => FsError::NxIo,
            Some(libc::EFBIG) | Some(libc::E2BIG) => FsError::FBig,
            Some(libc::ESTALE) => FsError::Stale,
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => FsError::NotSupported,
            // Passing conditions of the server, not of the file: the client
            // is told to retry (NFS3ERR_JUKEBOX), as knfsd does.
            Some(libc::EAGAIN) | Some(libc::ENOMEM) | Some(libc::ETIMEDOUT) => {
                FsError::Later(e.to_string())
            }
            _ => FsError::Io(e.to_string()),
        }
    }
}

/// One export's file system. Every method may be called concurrently.
pub trait NodeFs: Send + Sync + 'static {
    /// The file id of the export's root directory (what MOUNT hands out).
    fn root(&self) -> FileId;
    /// `readonly` roots: every modifying call fails with `ReadOnly`.
    fn read_only(&self) -> bool;
    /// Attributes of `id` (NFS GETATTR).
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
    /// The target of the symlink `id`, as raw bytes (NFS READLINK).
    fn readlink(&self, id: FileId) -> impl Future<Output = Result<Vec<u8>, FsError>> + Send;
    /// Up to `max` entries after `cookie` (0: from the start; "." and ".."
    /// are not included), and whether the listing is complete.
    fn readdir(
        &self,
        dir: FileId,
        cookie: u64,
        max: usize,
    ) -> impl Future<Output = Result<(Vec<DirEntry>, bool), FsError>> + Send;
    /// Apply `set` to `id` on behalf of `cred`, and return the new attributes (NFS SETATTR).
    fn setattr(
        &self,
        id: FileId,
        set: &SetAttr,
        cred: &Cred,
    ) -> impl Future<Output = Result<Attr, FsError>> + Send;
    /// Write `data` at byte `offset` of the regular file `id`, and return its new attributes (NFS
    /// WRITE).
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
    /// Make directory `name` in `dir` with permission bits `mode`, owned by `cred` (NFS MKDIR).
    fn mkdir(
        &self,
        dir: FileId,
        name: &[u8],
        mode: u32,
        cred: &Cred,
    ) -> impl Future<Output = Result<FileId, FsError>> + Send;
    /// Make symlink `name` in `dir` pointing at `target`, owned by `cred` (NFS SYMLINK).
    fn symlink(
        &self,
        dir: FileId,
        name: &[u8],
        target: &[u8],
        cred: &Cred,
    ) -> impl Future<Output = Result<FileId, FsError>> + Send;
    /// Make a device, FIFO or socket node `name` in `dir`; `rdev` is `(major, minor)` for devices
    /// (NFS MKNOD).
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
    /// Remove the empty directory `name` from `dir` (NFS RMDIR).
    fn rmdir(&self, dir: FileId, name: &[u8]) -> impl Future<Output = Result<(), FsError>> + Send;
    /// Move `from` in `from_dir` to `to` in `to_dir`, replacing a compatible existing `to` (NFS
    /// RENAME).
    fn rename(
        &self,
        from_dir: FileId,
        from: &[u8],
        to_dir: FileId,
        to: &[u8],
    ) -> impl Future<Output = Result<(), FsError>> + Send;
    /// Capacity and free space of the file system behind the export (NFS FSSTAT).
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

/// Why MOUNT (or a call naming an export by id) cannot use an export; mapped to MNT3ERR_* /
/// NFS3ERR_* codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    /// No export has that path or id (e.g. an unknown node name).
    #[error("no such export")]
    NoEntry,
    /// The export exists but the calling client's address may not use it.
    #[error("client not allowed to mount this export")]
    Access,
    /// The export exists but cannot be opened now (image unavailable, upper directory cannot be
    /// reset); the text says why.
    #[error("export unavailable: {0}")]
    Unavailable(String),
}

/// The set of exports (`/nodes/NAME`) and who may use them.
pub trait Exports: Send + Sync + 'static {
    /// The file system each export serves.
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
    /// Name of the NFS procedure, e.g. `"READ"` (`"?"` for an unknown number).
    pub procedure: &'static str,
    /// When the server started handling the call.
    pub started: std::time::Instant,
    /// The read path's record: the object (export, file id) and bytes returned.
    pub trace: crate::image::trace::ReadTrace,
}
