//! A node's export as the NFS server sees it: the node's [`NodeOverlay`]
//! once its image is open, and before that, while the image's layers are
//! still streaming, the image alone.
//!
//! - **Ids.** On the wire an image object goes by its tree's stable file id
//!   ([`Inode::fid`]), which is the same in a provisional tree of part of
//!   the image and in the final one. The overlay works with the final
//!   tree's inode numbers, so ids are translated here, both ways; the root
//!   and objects made in the upper keep the overlay's ids.
//! - **Early answers.** When the node mounts with an empty upper (a first
//!   boot, an ephemeral or read-only root, a new image), nothing can shadow
//!   the image yet: LOOKUP, GETATTR, READ and READLINK of what the
//!   streaming passes have settled are answered from the image as it
//!   streams ([`Opening::lookup`], [`Opening::read`]), so a node boots
//!   while its image downloads. What cannot be known before the passes end
//!   (a name not seen yet, a directory listing) and every change wait for
//!   the overlay, which opens on the final view; from then on every call
//!   goes to it. A node whose upper holds changes waits for the overlay
//!   from the start: its changes may shadow anything.

use super::fs::{
    Attr, Cred, DirEntry, FileId, FileKind, FsError, FsStat, NodeFs, ReadChecked, ReadFailed,
    SetAttr,
};
use super::overlay::{
    attr_from_inode, blocking, check_lookup_name, fs_stat, LowerNames, NodeOverlay,
};
use crate::digest::Digest;
use crate::image::tree::ROOT_INO;
use crate::image::{Found, ImageView, Inode, Opening, ViewError};
use crate::layer::EntryKind;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::OnceCell;

/// An image view (kept so its address stays unique) and its names.
type SharedNames = (Arc<ImageView>, Arc<LowerNames>);

/// Each image's [`LowerNames`], built once and shared by the overlays on
/// it, keyed by the view's address.
#[derive(Default)]
pub(crate) struct NamesByImage(Mutex<HashMap<usize, SharedNames>>);

impl NamesByImage {
    fn get(&self, view: &Arc<ImageView>) -> Arc<LowerNames> {
        let key = Arc::as_ptr(view) as usize;
        if let Some((_, n)) = self.0.lock().get(&key) {
            return n.clone();
        }
        let names = Arc::new(LowerNames::new(view.tree()));
        self.0
            .lock()
            .entry(key)
            .or_insert_with(|| (view.clone(), names))
            .1
            .clone()
    }
}

/// An image object answered from the image before the overlay opened.
struct Known {
    /// Relative path in the image ("" for the root).
    path: String,
    /// Its final metadata; `data` names an image layer.
    node: Inode,
}

/// How to open the node's overlay, and where its state lives.
pub(crate) struct RootSpec {
    pub(crate) node: String,
    pub(crate) dir: PathBuf,
    pub(crate) read_only: bool,
    pub(crate) names: Arc<NamesByImage>,
    /// The node's calls in progress (the boot profile's recorder reads it:
    /// a call waiting on a streaming image is not silence).
    pub(crate) running: Arc<AtomicUsize>,
    /// Where the node's I/O errors go besides the log: its boot profile.
    pub(crate) errors: ErrorSink,
}

/// Takes the message of an error a node met.
pub(crate) type ErrorSink = Arc<dyn Fn(&str) + Send + Sync>;

/// One call in progress, counted in [`RootSpec::running`] until dropped
/// (also when the call is abandoned).
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A node's export: see the module doc.
pub(crate) struct NodeRoot {
    opening: Arc<Opening>,
    spec: RootSpec,
    overlay: OnceCell<NodeOverlay>,
    /// Answer from the image until the overlay is there.
    early: bool,
    /// Image objects handed out early, by wire id.
    known: Mutex<HashMap<FileId, Arc<Known>>>,
    retired: AtomicBool,
}

impl NodeRoot {
    /// The export of the node `spec` describes on the image `opening`
    /// opens. `early`: its upper is empty (see the module doc).
    pub(crate) fn new(opening: Arc<Opening>, spec: RootSpec, early: bool) -> NodeRoot {
        NodeRoot {
            opening,
            spec,
            overlay: OnceCell::new(),
            early,
            known: Mutex::new(HashMap::new()),
            retired: AtomicBool::new(false),
        }
    }

    /// The manifest of the image this export serves.
    pub(crate) fn manifest(&self) -> &Digest {
        &self.opening.image.manifest_digest
    }

    /// Stop serving: every later call fails with `Stale`.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        if let Some(o) = self.overlay.get() {
            o.retire();
        }
    }

    /// `call`'s result; an I/O error also goes into the node's profile (a
    /// read the registry could not satisfy is what the boot's profile must
    /// explain).
    async fn noted<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, FsError>>,
    ) -> Result<T, FsError> {
        let r = call.await;
        if let Err(FsError::Io(message)) = &r {
            (self.spec.errors)(message);
        }
        r
    }

    /// The overlay, opened on the final view if it is not open yet.
    pub(crate) async fn overlay(&self) -> Result<&NodeOverlay, FsError> {
        self.check_live()?;
        self.overlay
            .get_or_try_init(|| async {
                let view = self.opening.final_view().await.map_err(|e| {
                    tracing::warn!(node = %self.spec.node, "cannot open image: {e}");
                    view_error(e)
                })?;
                let names = self.spec.names.get(&view);
                let (dir, read_only) = (&self.spec.dir, self.spec.read_only);
                NodeOverlay::open_with(view, names, dir, read_only)
                    .await
                    .map_err(|e| {
                        tracing::warn!(node = %self.spec.node, "cannot open {}: {e}", dir.display());
                        FsError::Io(format!("{}: {e}", dir.display()))
                    })
            })
            .await
    }

    fn running(&self) -> Running<'_> {
        self.spec.running.fetch_add(1, Ordering::SeqCst);
        Running(&self.spec.running)
    }

    fn check_live(&self) -> Result<(), FsError> {
        if self.retired.load(Ordering::SeqCst) {
            Err(FsError::Stale)
        } else {
            Ok(())
        }
    }

    /// The overlay if every call should go to it now: it is open, or the
    /// final view is there (or failed), or this export never answers early.
    async fn settled(&self) -> Result<Option<&NodeOverlay>, FsError> {
        self.check_live()?;
        if self.overlay.initialized() || !self.early || self.opening.outcome().is_some() {
            return self.overlay().await.map(Some);
        }
        Ok(None)
    }

    /// What `id` is, early: the root, or an object handed out early.
    /// `None`: ask the overlay.
    async fn known(&self, id: FileId) -> Result<Option<Arc<Known>>, FsError> {
        if let Some(k) = self.known.lock().get(&id) {
            return Ok(Some(k.clone()));
        }
        if id == ROOT_INO {
            return self.look_early("").await;
        }
        Ok(None)
    }

    /// Look `path` up in the image while it streams, waiting until it is
    /// settled; `None` once the final view is there instead.
    async fn look_early(&self, path: &str) -> Result<Option<Arc<Known>>, FsError> {
        match self.opening.lookup(path).await.map_err(view_error)? {
            Found::Node(node) => {
                // The root's file id is the root's id.
                let id = node.fid;
                let known = Arc::new(Known {
                    path: path.to_string(),
                    node,
                });
                self.known.lock().insert(id, known.clone());
                Ok(Some(known))
            }
            Found::Final(_) => Ok(None),
        }
    }

    /// `id` answered early, or the overlay with `id` in its terms.
    async fn early_or_overlay(&self, id: FileId) -> Result<Either<'_>, FsError> {
        if let Some(o) = self.settled().await? {
            return Ok(Either::Overlay(o, o.overlay_id(id)?));
        }
        if let Some(k) = self.known(id).await? {
            return Ok(Either::Early(k));
        }
        let o = self.overlay().await?;
        Ok(Either::Overlay(o, o.overlay_id(id)?))
    }

    /// The overlay, with `id` in its terms (after waiting for it).
    async fn via_overlay(&self, id: FileId) -> Result<(&NodeOverlay, FileId), FsError> {
        let o = self.overlay().await?;
        Ok((o, o.overlay_id(id)?))
    }

    fn early_attr(&self, k: &Known) -> Attr {
        let mut a = attr_from_inode(&k.node);
        a.id = k.node.fid;
        a
    }

    /// A path naming file `id`, for boot profiles.
    pub(crate) fn path_hint(&self, id: FileId) -> String {
        if let Some(o) = self.overlay.get() {
            return match o.overlay_id(id) {
                Ok(i) => o.path_hint(i),
                Err(_) => format!("(file {id:#x})"),
            };
        }
        match self.known.lock().get(&id) {
            Some(k) => format!("/{}", k.path),
            None => format!("(file {id:#x})"),
        }
    }
}

enum Either<'a> {
    Early(Arc<Known>),
    Overlay(&'a NodeOverlay, FileId),
}

/// A wait on the image that did not end well: a registry that makes no
/// progress is worth retrying later; anything else is an I/O error.
fn view_error(e: ViewError) -> FsError {
    match e {
        ViewError::Timeout(_) => FsError::Later(e.to_string()),
        ViewError::Opening(inner) if matches!(*inner, ViewError::Timeout(_)) => {
            FsError::Later(inner.to_string())
        }
        e => FsError::Io(e.to_string()),
    }
}

fn wire_attr(o: &NodeOverlay, mut a: Attr) -> Attr {
    a.id = o.wire_id(a.id);
    a
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

impl NodeRoot {
    async fn read_early(
        &self,
        k: &Known,
        offset: u64,
        count: u32,
    ) -> Result<(Bytes, bool), FsError> {
        match k.node.kind {
            EntryKind::File | EntryKind::Hardlink => {}
            EntryKind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::Inval),
        }
        let data = self
            .opening
            .read(&k.node, offset, count)
            .await
            .map_err(view_error)?;
        let eof = offset.saturating_add(data.len() as u64) >= k.node.size;
        Ok((data, eof))
    }

    /// LOOKUP of `name` in the early directory `d`; `None`: ask the overlay.
    async fn lookup_early(&self, d: &Known, name: &[u8]) -> Result<Option<FileId>, FsError> {
        if d.node.kind != EntryKind::Dir {
            return Err(FsError::NotDir);
        }
        let Ok(name) = std::str::from_utf8(name) else {
            // The image has only UTF-8 names: this one can only be made later.
            return Ok(None);
        };
        let path = match name {
            "." => return Ok(Some(d.node.fid)),
            ".." if d.path.is_empty() => return Ok(Some(ROOT_INO)),
            ".." => parent_of(&d.path).to_string(),
            _ => join(&d.path, name),
        };
        Ok(self.look_early(&path).await?.map(|k| k.node.fid))
    }
}

impl NodeFs for NodeRoot {
    fn root(&self) -> FileId {
        ROOT_INO
    }

    fn read_only(&self) -> bool {
        self.spec.read_only
    }

    async fn getattr(&self, id: FileId) -> Result<Attr, FsError> {
        let _running = self.running();
        self.noted(async {
            match self.early_or_overlay(id).await? {
                Either::Early(k) => Ok(self.early_attr(&k)),
                Either::Overlay(o, id) => Ok(wire_attr(o, o.getattr(id).await?)),
            }
        })
        .await
    }

    async fn lookup(&self, dir: FileId, name: &[u8]) -> Result<FileId, FsError> {
        let _running = self.running();
        check_lookup_name(name)?;
        self.noted(async {
            if let Either::Early(d) = self.early_or_overlay(dir).await? {
                if let Some(id) = self.lookup_early(&d, name).await? {
                    return Ok(id);
                }
            }
            let (o, dir) = self.via_overlay(dir).await?;
            Ok(o.wire_id(o.lookup(dir, name).await?))
        })
        .await
    }

    async fn read(&self, id: FileId, offset: u64, count: u32) -> Result<(Bytes, bool), FsError> {
        let _running = self.running();
        self.noted(async {
            match self.early_or_overlay(id).await? {
                Either::Early(k) => self.read_early(&k, offset, count).await,
                Either::Overlay(o, id) => o.read(id, offset, count).await,
            }
        })
        .await
    }

    async fn read_checked<E: Send>(
        &self,
        id: FileId,
        offset: u64,
        count: u32,
        check: impl FnOnce(&Attr) -> Result<(), E> + Send,
    ) -> Result<ReadChecked<E>, FsError> {
        let _running = self.running();
        let r = self
            .noted(async {
                match self.early_or_overlay(id).await? {
                    Either::Early(k) => {
                        let attr = self.early_attr(&k);
                        if let Err(refused) = check(&attr) {
                            return Ok((attr, Err(ReadFailed::Refused(refused))));
                        }
                        let data = self.read_early(&k, offset, count).await;
                        Ok((attr, data.map_err(ReadFailed::Fs)))
                    }
                    Either::Overlay(o, id) => {
                        let (attr, data) = o.read_checked(id, offset, count, check).await?;
                        Ok((wire_attr(o, attr), data))
                    }
                }
            })
            .await;
        if let Ok((_, Err(ReadFailed::Fs(FsError::Io(message))))) = &r {
            (self.spec.errors)(message);
        }
        r
    }

    async fn readlink(&self, id: FileId) -> Result<Vec<u8>, FsError> {
        let _running = self.running();
        match self.early_or_overlay(id).await? {
            Either::Early(k) => match &k.node.symlink {
                Some(target) => Ok(target.clone().into_bytes()),
                None => Err(FsError::Inval),
            },
            Either::Overlay(o, id) => o.readlink(id).await,
        }
    }

    async fn readdir(
        &self,
        dir: FileId,
        cookie: u64,
        max: usize,
    ) -> Result<(Vec<DirEntry>, bool), FsError> {
        let _running = self.running();
        let (o, dir) = self.via_overlay(dir).await?;
        let (mut entries, eof) = o.readdir(dir, cookie, max).await?;
        for e in &mut entries {
            e.id = o.wire_id(e.id);
        }
        Ok((entries, eof))
    }

    async fn setattr(&self, id: FileId, set: &SetAttr, cred: &Cred) -> Result<Attr, FsError> {
        let _running = self.running();
        let (o, id) = self.via_overlay(id).await?;
        Ok(wire_attr(o, o.setattr(id, set, cred).await?))
    }

    async fn write(
        &self,
        id: FileId,
        offset: u64,
        data: &[u8],
        cred: &Cred,
    ) -> Result<Attr, FsError> {
        let _running = self.running();
        let (o, id) = self.via_overlay(id).await?;
        Ok(wire_attr(o, o.write(id, offset, data, cred).await?))
    }

    async fn create(
        &self,
        dir: FileId,
        name: &[u8],
        mode: u32,
        cred: &Cred,
        exclusive: bool,
    ) -> Result<FileId, FsError> {
        let _running = self.running();
        let (o, dir) = self.via_overlay(dir).await?;
        let id = o.create(dir, name, mode, cred, exclusive).await?;
        Ok(o.wire_id(id))
    }

    async fn mkdir(
        &self,
        dir: FileId,
        name: &[u8],
        mode: u32,
        cred: &Cred,
    ) -> Result<FileId, FsError> {
        let _running = self.running();
        let (o, dir) = self.via_overlay(dir).await?;
        Ok(o.wire_id(o.mkdir(dir, name, mode, cred).await?))
    }

    async fn symlink(
        &self,
        dir: FileId,
        name: &[u8],
        target: &[u8],
        cred: &Cred,
    ) -> Result<FileId, FsError> {
        let _running = self.running();
        let (o, dir) = self.via_overlay(dir).await?;
        Ok(o.wire_id(o.symlink(dir, name, target, cred).await?))
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
        let _running = self.running();
        let (o, dir) = self.via_overlay(dir).await?;
        let id = o.mknod(dir, name, kind, mode, rdev, cred).await?;
        Ok(o.wire_id(id))
    }

    async fn link(&self, id: FileId, dir: FileId, name: &[u8]) -> Result<(), FsError> {
        let _running = self.running();
        let (o, id) = self.via_overlay(id).await?;
        o.link(id, o.overlay_id(dir)?, name).await
    }

    async fn remove(&self, dir: FileId, name: &[u8]) -> Result<(), FsError> {
        let _running = self.running();
        let (o, dir) = self.via_overlay(dir).await?;
        o.remove(dir, name).await
    }

    async fn rmdir(&self, dir: FileId, name: &[u8]) -> Result<(), FsError> {
        let _running = self.running();
        let (o, dir) = self.via_overlay(dir).await?;
        o.rmdir(dir, name).await
    }

    async fn rename(
        &self,
        from_dir: FileId,
        from: &[u8],
        to_dir: FileId,
        to: &[u8],
    ) -> Result<(), FsError> {
        let _running = self.running();
        let (o, from_dir) = self.via_overlay(from_dir).await?;
        o.rename(from_dir, from, o.overlay_id(to_dir)?, to).await
    }

    async fn fsstat(&self) -> Result<FsStat, FsError> {
        let _running = self.running();
        if let Some(o) = self.settled().await? {
            return o.fsstat().await;
        }
        // The upper will be on the file system of the node's state directory.
        let mut at: &Path = &self.spec.dir;
        while !at.exists() {
            at = at.parent().ok_or(FsError::NotFound)?;
        }
        let at = at.to_path_buf();
        blocking(move || Ok(fs_stat(&at)?)).await
    }

    async fn commit(&self, id: FileId) -> Result<(), FsError> {
        let _running = self.running();
        let (o, id) = self.via_overlay(id).await?;
        o.commit(id).await
    }
}
