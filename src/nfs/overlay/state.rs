//! The node's state: its directory on disk (see the layout in the parent
//! module) and what the overlay keeps in memory about the upper, rebuilt from
//! disk whenever an overlay is opened.

use super::attr::apply_lower_meta;
use super::sys;
use super::sys::{chmod, lstat};
use super::whiteout::is_whiteout;
use super::{Inner, LowerNames};
use crate::image::ImageView;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

/// Where a node's overlay state lives.
pub(crate) fn node_state_dir(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join("nodes").join(node)
}

/// What the overlay knows about the upper beyond what is on disk.
#[derive(Default)]
pub(super) struct State {
    /// Every upper inode except whiteouts: its names (parent inode, name).
    pub(super) links: HashMap<u64, Vec<(u64, Vec<u8>)>>,
    /// Copied-up lower non-directories: lower ino -> upper inode.
    pub(super) index: HashMap<u64, u64>,
    /// And back: upper inode -> lower ino.
    pub(super) origin: HashMap<u64, u64>,
}

impl State {
    pub(super) fn add_link(&mut self, ino: u64, parent: u64, name: &[u8]) {
        let links = self.links.entry(ino).or_default();
        if !links.iter().any(|(p, n)| *p == parent && n == name) {
            links.push((parent, name.to_vec()));
        }
    }

    /// The path of upper inode `ino` relative to the upper root.
    pub(super) fn path_of(&self, ino: u64, root: u64) -> Option<PathBuf> {
        let mut comps: Vec<&[u8]> = Vec::new();
        let mut cur = ino;
        while cur != root {
            let (parent, name) = self.links.get(&cur)?.first()?;
            comps.push(name);
            cur = *parent;
            if comps.len() > 4096 {
                return None;
            }
        }
        Some(comps.iter().rev().map(|c| OsStr::from_bytes(c)).collect())
    }
}

/// Remove what an interrupted change left in `dir`, then recreate it.
fn reset_dir(dir: &Path) -> io::Result<()> {
    match sys::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fs::create_dir_all(dir)
}

/// The files that make up an upper, moved together; `index.image` last, as
/// it says which image the rest belongs to.
pub(super) const UPPER_ITEMS: [&str; 3] = ["upper", "index", "index.image"];

/// Discard a node's upper and index (ephemeral roots, at each boot). The
/// directories are first renamed into `work/`, so they vanish at once and a
/// crash half-way leaves only what the next open clears anyway.
pub(crate) fn wipe_node_state(dir: &Path) -> io::Result<()> {
    for name in UPPER_ITEMS {
        discard(dir, name)?;
    }
    reset_dir(&dir.join("work"))
}

/// Move `dir/name`, if it is there, into `work/` (cleared at the next open).
pub(super) fn discard(dir: &Path, name: &str) -> io::Result<()> {
    let work = dir.join("work");
    fs::create_dir_all(&work)?;
    move_if_there(
        &dir.join(name),
        &work.join(format!("old-{name}-{}", stamp())),
    )
}

/// Rename `from` to `to` if `from` exists (`to` is replaced when it is a
/// file or an empty directory).
pub(super) fn move_if_there(from: &Path, to: &Path) -> io::Result<()> {
    match sys::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// A name part that differs between two moves into `work/`.
pub(super) fn stamp() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl Inner {
    pub(super) fn open(
        view: Arc<ImageView>,
        names: Arc<LowerNames>,
        dir: &Path,
        read_only: bool,
    ) -> io::Result<Inner> {
        fs::create_dir_all(dir)?;
        chmod(dir, 0o700)?;
        let (upper, work, index) = (dir.join("upper"), dir.join("work"), dir.join("index"));
        reset_dir(&work)?;
        if let Err(e) = lstat(&upper) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
            let tmp = work.join("new-upper");
            sys::create_dir(&tmp)?;
            apply_lower_meta(&tmp, view.tree().root())?;
            sys::rename(&tmp, &upper)?;
        }
        // Index numbers only mean something for the image they were made for.
        let image_file = dir.join("index.image");
        let image_id = view.manifest_digest().as_str().to_string();
        let recorded = fs::read_to_string(&image_file).unwrap_or_default();
        if recorded.trim() != image_id {
            reset_dir(&index)?;
            let tmp = work.join("index.image");
            fs::write(&tmp, format!("{image_id}\n"))?;
            fs::File::open(&tmp)?.sync_all()?;
            sys::rename(&tmp, &image_file)?;
        } else {
            fs::create_dir_all(&index)?;
        }
        let root_meta = lstat(&upper)?;
        let mut state = State::default();
        scan_upper(&upper, root_meta.ino(), root_meta.dev(), &mut state.links)?;
        for e in sys::read_dir(&index)? {
            let e = e?;
            let path = index.join(e.file_name());
            let lower = std::str::from_utf8(e.file_name().as_bytes())
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            let m = lstat(&path)?;
            let valid = lower
                .and_then(|l| view.tree().get(l))
                .is_some_and(|i| !i.is_dir())
                && !m.is_dir()
                && state.links.contains_key(&m.ino());
            match lower {
                // An index entry without names: a copy-up interrupted before
                // its names were linked, or a leftover.
                Some(l) if valid => {
                    state.index.insert(l, m.ino());
                    state.origin.insert(m.ino(), l);
                }
                _ => {
                    if m.is_dir() {
                        sys::remove_dir_all(&path)?;
                    } else {
                        sys::remove_file(&path)?;
                    }
                }
            }
        }
        let pristine = state.index.is_empty() && sys::read_dir(&upper)?.next().is_none();
        Ok(Inner {
            view,
            names,
            upper,
            work,
            index,
            upper_root_ino: root_meta.ino(),
            read_only,
            retired: AtomicBool::new(false),
            pristine: AtomicBool::new(pristine),
            tmp_seq: AtomicU64::new(0),
            ns_lock: RwLock::new(()),
            state: Mutex::new(state),
        })
    }

    pub(super) fn forget_index(&self, l: u64) {
        let mut st = self.state.lock();
        if let Some(ino) = st.index.remove(&l) {
            st.origin.remove(&ino);
            st.links.remove(&ino);
        }
        drop(st);
        let _ = sys::remove_file(self.index_path(l));
    }

    /// Forget the name (parent, name) of upper inode `ino`; a copied-up file
    /// without names left loses its index link.
    pub(super) fn drop_link(&self, ino: u64, parent: u64, name: &[u8]) {
        let mut st = self.state.lock();
        let Some(links) = st.links.get_mut(&ino) else {
            return;
        };
        links.retain(|(p, n)| !(*p == parent && n == name));
        if links.is_empty() {
            st.links.remove(&ino);
            if let Some(l) = st.origin.remove(&ino) {
                st.index.remove(&l);
                drop(st);
                let _ = sys::remove_file(self.index_path(l));
            }
        }
    }
}

/// Record every upper inode's names (whiteouts excepted).
fn scan_upper(
    root: &Path,
    root_ino: u64,
    dev: u64,
    links: &mut HashMap<u64, Vec<(u64, Vec<u8>)>>,
) -> io::Result<()> {
    let mut todo = vec![(root.to_path_buf(), root_ino)];
    while let Some((dir, dir_ino)) = todo.pop() {
        for e in sys::read_dir(&dir)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_char_device() && is_whiteout(&dir.join(e.file_name()), &e.metadata()?)? {
                continue;
            }
            let name = e.file_name().as_bytes().to_vec();
            links.entry(e.ino()).or_default().push((dir_ino, name));
            if ft.is_dir() && e.metadata()?.dev() == dev {
                todo.push((dir.join(e.file_name()), e.ino()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::UPPER_ID_BIT;
    use crate::nfs::fs::{FsError, NodeFs};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn upper_ids_survive_a_restart() {
        let mut env = Env::new().await;
        let home = look(&env.fs, "home/user").await.unwrap();
        let d = env.fs.mkdir(home, b"d", 0o755, &user()).await.unwrap();
        let f = env.fs.create(d, b"f", 0o644, &user(), true).await.unwrap();
        env.fs.write(f, 0, b"kept", &user()).await.unwrap();
        let notes = look(&env.fs, "home/user/notes").await.unwrap();
        env.fs.write(notes, 0, b"J", &user()).await.unwrap();
        env.restart().await;
        let fs = &env.fs;
        assert_eq!(read_all(fs, f).await, b"kept");
        assert_eq!(fs.lookup(d, b"..").await.unwrap(), home);
        assert_eq!(fs.lookup(d, b"f").await.unwrap(), f);
        assert_eq!(read_all(fs, notes).await, b"Jello");
        assert_eq!(look(fs, "home/user/notes").await.unwrap(), notes);
        // readdir ids equal lookup ids (checked inside `list`).
        assert_eq!(list(fs, "home/user").await, strs(&["d", "notes"]));
    }

    #[tokio::test]
    async fn open_repairs_interrupted_work_and_foreign_indexes() {
        let mut env = Env::new().await;
        let passwd = look(&env.fs, "etc/passwd").await.unwrap();
        env.fs.write(passwd, 0, b"R", &root()).await.unwrap();
        let hostname = look(&env.fs, "etc/hostname").await.unwrap();
        let dir = env.img.node_dir();
        // What a crash can leave: temp files, and an index link without names
        // (a copy-up that stopped before linking them).
        fs::write(dir.join("work").join("t7"), b"half a copy").unwrap();
        fs::write(dir.join("index").join(hostname.to_string()), b"orphan").unwrap();
        env.restart().await;
        assert_eq!(fs::read_dir(dir.join("work")).unwrap().count(), 0);
        assert!(!dir.join("index").join(hostname.to_string()).exists());
        assert_eq!(contents(&env.fs, "etc/hostname").await, b"node1\n");
        assert_eq!(read_all(&env.fs, passwd).await[..1], *b"R");
        // Index numbers of another image are dropped; the upper stays.
        fs::write(dir.join("index.image"), "sha256:other\n").unwrap();
        env.restart().await;
        assert_eq!(fs::read_dir(dir.join("index")).unwrap().count(), 0);
        let now = look(&env.fs, "etc/passwd").await.unwrap();
        assert_ne!(now & UPPER_ID_BIT, 0);
        assert_eq!(read_all(&env.fs, now).await[..1], *b"R");
        assert_eq!(env.fs.getattr(passwd).await, Err(FsError::Stale));
        // Names that are not UTF-8 live in the upper only.
        let etc = look(&env.fs, "etc").await.unwrap();
        let odd = env
            .fs
            .create(etc, b"\xff\xfe", 0o644, &root(), true)
            .await
            .unwrap();
        assert_eq!(env.fs.lookup(etc, b"\xff\xfe").await.unwrap(), odd);
        let (all, _) = env.fs.readdir(etc, 0, 100).await.unwrap();
        assert_eq!(all.last().unwrap().name, b"\xff\xfe");
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
