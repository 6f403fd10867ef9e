//! The merged, in-memory tree of an image: every layer's entry table applied
//! bottom-up with OCI whiteout semantics, the way an unpacker would extract the
//! layers onto a disk, but without touching a byte of file data.
//!
//! Inode numbers are assigned by a depth-first walk in name order once the merge
//! is complete, so the same image digest always gets the same numbers.
//!
//! Every inode also has a file id ([`Inode::fid`]) that does not depend on
//! the rest of the image, for NFS file handles: a handle given out while the
//! image is still streaming (from a provisional tree of part of its layers)
//! must name the same object in the final tree. A directory's id is a hash
//! of its path; any other object's is the layer and position of the layer
//! entry that made it, which hard links share.

use crate::layer::{Entry, EntryKind};
use std::collections::BTreeMap;

pub(crate) const ROOT_INO: u64 = 1;

/// Set in the file ids of non-directories, whose low bits are the making
/// entry's layer (bits 32..62) and position (bits 0..32); directory ids are
/// path hashes below it.
const ENTRY_FID: u64 = 1 << 62;

/// The file id of directory `name` in the directory whose file id is `parent`.
fn dir_fid(parent: u64, name: &str) -> u64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), parent) & (ENTRY_FID - 1);
    // 0 is no id and 1 the root's.
    h.max(2)
}

/// The file id of the non-directory that entry `entry` of image layer `layer` made.
fn entry_fid(layer: u32, entry: u32) -> u64 {
    ENTRY_FID | (u64::from(layer) & 0x3fff_ffff) << 32 | u64::from(entry)
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Which layer entry holds a regular file's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DataRef {
    /// Layer of the image that holds the data.
    pub layer: u32,
    pub(crate) entry: u32,
}

/// One file, directory, link or device of the merged tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Inode number: stable for a given image (depth-first, name order).
    pub ino: u64,
    /// Stable file id, the same in every tree that has this object (see the module doc).
    pub(crate) fid: u64,
    pub(crate) parent: u64,
    /// Never `Hardlink`: links are resolved to the inode they share.
    pub(crate) kind: EntryKind,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: i64,
    /// Size in bytes of a regular file's data (a symlink: its target's length).
    pub size: u64,
    pub(crate) rdev_major: u32,
    pub(crate) rdev_minor: u32,
    pub(crate) nlink: u32,
    pub(crate) xattrs: Vec<(String, Vec<u8>)>,
    pub(crate) symlink: Option<String>,
    /// Where a regular file's data is; `None` for an empty file.
    pub data: Option<DataRef>,
    /// Directory entries sorted by name (byte order), so readdir can resume at
    /// an index and lookup is a binary search.
    pub(crate) children: Vec<(String, u64)>,
}

impl Inode {
    pub(crate) fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }

    pub(crate) fn child(&self, name: &str) -> Option<u64> {
        self.children
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| self.children[i].1)
    }

    /// `st_mode` type bits plus permission bits.
    pub fn st_mode(&self) -> u32 {
        let ty = match self.kind {
            EntryKind::File | EntryKind::Hardlink => libc::S_IFREG,
            EntryKind::Dir => libc::S_IFDIR,
            EntryKind::Symlink => libc::S_IFLNK,
            EntryKind::CharDevice => libc::S_IFCHR,
            EntryKind::BlockDevice => libc::S_IFBLK,
            EntryKind::Fifo => libc::S_IFIFO,
        };
        ty | (self.mode & 0o7777)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ResolveError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("too many levels of symbolic links")]
    Loop,
}

/// Problems found while merging that an unpacker would also trip over. They do
/// not stop the mount; they are logged and counted so `inspect` can show them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MergeWarning {
    pub(crate) layer: usize,
    pub(crate) path: String,
    pub(crate) reason: String,
}

/// The merged tree of an image's layers (OCI whiteouts applied), inodes numbered from [`ROOT_INO`].
#[derive(Debug)]
pub struct Tree {
    inodes: Vec<Inode>,
    /// Inodes no layer entry describes (a directory only implied by a path
    /// under it, and the root unless a layer has a `./` entry): their
    /// metadata is a default a lower layer may still override.
    implied: Vec<bool>,
    /// Inode numbers by file id, made on first use.
    by_fid: std::sync::OnceLock<std::collections::HashMap<u64, u64>>,
    pub(crate) warnings: Vec<MergeWarning>,
}

impl Tree {
    pub(crate) fn get(&self, ino: u64) -> Option<&Inode> {
        if ino == 0 {
            return None;
        }
        self.inodes.get((ino - 1) as usize)
    }

    pub(crate) fn root(&self) -> &Inode {
        &self.inodes[0]
    }

    /// The inode whose [`Inode::fid`] is `fid`.
    pub(crate) fn by_fid(&self, fid: u64) -> Option<&Inode> {
        let map = self.by_fid.get_or_init(|| {
            let mut map = std::collections::HashMap::with_capacity(self.inodes.len());
            for i in &self.inodes {
                if let Some(other) = map.insert(i.fid, i.ino) {
                    // Two directory paths with one 62-bit hash: the first
                    // keeps the id, the second's handles go stale.
                    tracing::warn!(fid = i.fid, "file id collision; inode {other} kept");
                    map.insert(i.fid, other);
                }
            }
            map
        });
        self.get(*map.get(&fid)?)
    }

    /// Whether `ino`'s metadata is a default rather than a layer entry's.
    pub(crate) fn is_implied(&self, ino: u64) -> bool {
        ino == 0
            || self
                .implied
                .get((ino - 1) as usize)
                .copied()
                .unwrap_or(true)
    }

    pub(crate) fn len(&self) -> usize {
        self.inodes.len()
    }

    /// Whether the tree has no inode (never: the root is always there).
    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty()
    }

    /// Every inode, in inode-number order.
    pub fn iter(&self) -> impl Iterator<Item = &Inode> {
        self.inodes.iter()
    }

    pub(crate) fn lookup(&self, parent: u64, name: &str) -> Option<&Inode> {
        self.get(parent)?.child(name).and_then(|i| self.get(i))
    }

    /// Resolve a `/`-separated path without following symlinks.
    pub fn resolve(&self, path: &str) -> Option<&Inode> {
        let mut cur = self.root();
        for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            cur = self.lookup(cur.ino, comp)?;
        }
        Some(cur)
    }

    /// Resolve `path` starting at directory `start`, following symlinks the
    /// way the kernel would if the image root were `/`: absolute targets
    /// restart at the image root and `..` never climbs above it, so no path
    /// or link in the image can lead outside. `follow_last` decides whether a
    /// final symlink is followed (open) or returned (lstat).
    pub(crate) fn resolve_in_root(
        &self,
        start: u64,
        path: &str,
        follow_last: bool,
    ) -> Result<&Inode, ResolveError> {
        const MAX_HOPS: u32 = 40;
        let mut stack: Vec<u64> = if path.starts_with('/') {
            vec![ROOT_INO]
        } else {
            self.ancestry(start).ok_or(ResolveError::NotFound)?
        };
        let mut todo: std::collections::VecDeque<String> =
            path.split('/').map(str::to_string).collect();
        let mut hops = 0;
        while let Some(comp) = todo.pop_front() {
            match comp.as_str() {
                "" | "." => continue,
                ".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let dir = self
                .get(*stack.last().expect("root stays"))
                .ok_or(ResolveError::NotFound)?;
            if !dir.is_dir() {
                return Err(ResolveError::NotDir);
            }
            let node = self.lookup(dir.ino, &comp).ok_or(ResolveError::NotFound)?;
            let last = todo.iter().all(|c| c.is_empty() || c == ".");
            match &node.symlink {
                Some(target) if !last || follow_last => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(ResolveError::Loop);
                    }
                    if target.starts_with('/') {
                        stack.truncate(1);
                    }
                    for c in target.split('/').rev() {
                        todo.push_front(c.to_string());
                    }
                }
                _ => stack.push(node.ino),
            }
        }
        self.get(*stack.last().expect("root stays"))
            .ok_or(ResolveError::NotFound)
    }

    /// Inode numbers from the root down to `ino` (a directory).
    fn ancestry(&self, ino: u64) -> Option<Vec<u64>> {
        let mut chain = vec![ino];
        let mut cur = self.get(ino)?;
        while cur.ino != ROOT_INO {
            cur = self.get(cur.parent)?;
            chain.push(cur.ino);
        }
        chain.reverse();
        Some(chain)
    }

    /// Merge layer entry tables, lowest layer first.
    pub(crate) fn build(layers: &[&[Entry]]) -> Tree {
        let mut b = Builder::new(false, 0);
        for (li, entries) in layers.iter().enumerate() {
            b.apply_layer(li, entries);
        }
        b.finish()
    }

    /// Like [`build`](Self::build) for a provisional tree of incomplete
    /// tables of the image's layers `first..`: problems are expected there
    /// (a hard link to a layer not yet merged), so they are kept in
    /// `warnings` but not logged.
    pub(crate) fn build_partial(first: usize, layers: &[&[Entry]]) -> Tree {
        let mut b = Builder::new(true, first);
        for (li, entries) in layers.iter().enumerate() {
            b.apply_layer(li, entries);
        }
        b.finish()
    }
}

/// Arena node used during the merge, before inode numbers exist.
struct Node {
    entry: Entry,
    data: Option<DataRef>,
    /// The image layer and position of the entry that made it.
    origin: (u32, u32),
    children: BTreeMap<String, usize>,
    implied: bool,
}

struct Builder {
    nodes: Vec<Node>,
    warnings: Vec<MergeWarning>,
    quiet: bool,
    /// The image layer that is the builder's layer 0.
    first: usize,
}

fn split_parent(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", path),
    }
}

impl Builder {
    fn new(quiet: bool, first: usize) -> Self {
        let mut root = Entry::new(String::new(), EntryKind::Dir);
        root.mode = 0o755;
        Builder {
            nodes: vec![Node {
                entry: root,
                data: None,
                origin: (0, 0),
                children: BTreeMap::new(),
                implied: true,
            }],
            warnings: Vec::new(),
            quiet,
            first,
        }
    }

    fn warn(&mut self, layer: usize, path: &str, reason: impl Into<String>) {
        let w = MergeWarning {
            layer,
            path: path.to_string(),
            reason: reason.into(),
        };
        if !self.quiet {
            tracing::warn!(layer = w.layer, path = %w.path, "{}", w.reason);
        }
        self.warnings.push(w);
    }

    fn lookup(&self, path: &str) -> Option<usize> {
        let mut cur = 0usize;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            if self.nodes[cur].entry.kind != EntryKind::Dir {
                return None;
            }
            cur = *self.nodes[cur].children.get(comp)?;
        }
        Some(cur)
    }

    /// Find or create the directory `path`, replacing non-directories on the
    /// way, as extracting a tar over an existing tree does.
    fn ensure_dir(&mut self, path: &str) -> usize {
        let mut cur = 0usize;
        let mut walked = String::new();
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(comp);
            let next = self.nodes[cur].children.get(comp).copied();
            cur = match next {
                Some(n) if self.nodes[n].entry.kind == EntryKind::Dir => n,
                _ => {
                    let mut e = Entry::new(walked.clone(), EntryKind::Dir);
                    e.mode = 0o755;
                    let id = self.push(e, None, (0, 0));
                    self.nodes[id].implied = true;
                    self.set_child(cur, comp, id);
                    id
                }
            };
        }
        cur
    }

    fn push(&mut self, entry: Entry, data: Option<DataRef>, origin: (u32, u32)) -> usize {
        self.nodes.push(Node {
            entry,
            data,
            origin,
            children: BTreeMap::new(),
            implied: false,
        });
        self.nodes.len() - 1
    }

    fn set_child(&mut self, dir: usize, name: &str, id: usize) {
        self.nodes[dir].children.insert(name.to_string(), id);
    }

    fn apply_layer(&mut self, li: usize, entries: &[Entry]) {
        // Whiteouts only hide what lower layers put there, so they are applied
        // before this layer's own entries, whatever their order in the tar.
        for e in entries {
            let (parent, name) = split_parent(&e.path);
            if name == OPAQUE_MARKER {
                if let Some(dir) = self.lookup(parent) {
                    if self.nodes[dir].entry.kind == EntryKind::Dir {
                        self.nodes[dir].children.clear();
                    }
                }
            } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                if let Some(dir) = self.lookup(parent) {
                    self.nodes[dir].children.remove(hidden);
                }
            }
        }
        for (ei, e) in entries.iter().enumerate() {
            let (parent, name) = split_parent(&e.path);
            if name.starts_with(WHITEOUT_PREFIX) {
                continue;
            }
            if e.path.is_empty() {
                // The layer's own root entry: its metadata applies to `/`.
                if e.kind == EntryKind::Dir {
                    self.nodes[0].implied = false;
                    let root = &mut self.nodes[0].entry;
                    root.mode = e.mode;
                    root.uid = e.uid;
                    root.gid = e.gid;
                    root.mtime = e.mtime;
                    root.xattrs = e.xattrs.clone();
                }
                continue;
            }
            let dir = self.ensure_dir(parent);
            let existing = self.nodes[dir].children.get(name).copied();
            match e.kind {
                EntryKind::Dir => match existing {
                    Some(n) if self.nodes[n].entry.kind == EntryKind::Dir => {
                        let kept = std::mem::take(&mut self.nodes[n].children);
                        self.nodes[n].entry = e.clone();
                        self.nodes[n].children = kept;
                        self.nodes[n].implied = false;
                    }
                    _ => {
                        let id = self.push(e.clone(), None, (0, 0));
                        self.set_child(dir, name, id);
                    }
                },
                EntryKind::Hardlink => {
                    let target = e.link_target.as_deref().unwrap_or("");
                    match self.lookup(target) {
                        Some(t) if self.nodes[t].entry.kind != EntryKind::Dir => {
                            if existing != Some(t) {
                                self.set_child(dir, name, t);
                            }
                        }
                        Some(_) => self.warn(li, &e.path, "hard link to a directory ignored"),
                        None => self.warn(
                            li,
                            &e.path,
                            format!("hard link target {target:?} does not exist; link ignored"),
                        ),
                    }
                }
                _ => {
                    let data = (e.kind == EntryKind::File).then_some(DataRef {
                        layer: li as u32,
                        entry: ei as u32,
                    });
                    let origin = ((self.first + li) as u32, ei as u32);
                    let id = self.push(e.clone(), data, origin);
                    self.set_child(dir, name, id);
                }
            }
        }
    }

    fn finish(self) -> Tree {
        let mut ino_of = vec![0u64; self.nodes.len()];
        let mut inodes: Vec<Inode> = Vec::new();
        // Depth-first in name order; a node reached again through another
        // hard link keeps the number it got first.
        let mut stack: Vec<(usize, u64, u64)> = vec![(0, ROOT_INO, ROOT_INO)];
        while let Some((id, parent, fid)) = stack.pop() {
            if ino_of[id] != 0 {
                continue;
            }
            let ino = inodes.len() as u64 + 1;
            ino_of[id] = ino;
            let n = &self.nodes[id];
            inodes.push(Inode {
                ino,
                fid,
                parent,
                kind: n.entry.kind,
                mode: n.entry.mode & 0o7777,
                uid: n.entry.uid,
                gid: n.entry.gid,
                mtime: n.entry.mtime,
                size: match n.entry.kind {
                    EntryKind::File => n.entry.size,
                    EntryKind::Symlink => {
                        n.entry.link_target.as_deref().map_or(0, |t| t.len() as u64)
                    }
                    EntryKind::Dir => 4096,
                    _ => 0,
                },
                rdev_major: n.entry.dev_major,
                rdev_minor: n.entry.dev_minor,
                nlink: 1,
                xattrs: n.entry.xattrs.clone(),
                symlink: (n.entry.kind == EntryKind::Symlink)
                    .then(|| n.entry.link_target.clone().unwrap_or_default()),
                data: n.data,
                children: Vec::new(),
            });
            for (name, &c) in n.children.iter().rev() {
                let child = &self.nodes[c];
                let fid = match child.entry.kind {
                    EntryKind::Dir => dir_fid(fid, name),
                    _ => entry_fid(child.origin.0, child.origin.1),
                };
                stack.push((c, ino, fid));
            }
        }
        // Link counts come from the reachable tree, not from bookkeeping during
        // the merge, so names hidden with a whole whited-out directory do not count.
        let mut names_of = vec![0u32; self.nodes.len()];
        for (id, n) in self.nodes.iter().enumerate() {
            let ino = ino_of[id];
            if ino == 0 || n.entry.kind != EntryKind::Dir {
                continue;
            }
            for &c in n.children.values() {
                names_of[c] += 1;
            }
            let children: Vec<(String, u64)> = n
                .children
                .iter()
                .map(|(k, &c)| (k.clone(), ino_of[c]))
                .collect();
            let subdirs = n
                .children
                .values()
                .filter(|&&c| self.nodes[c].entry.kind == EntryKind::Dir)
                .count() as u32;
            let inode = &mut inodes[(ino - 1) as usize];
            inode.children = children;
            inode.nlink = 2 + subdirs;
        }
        for (id, &count) in names_of.iter().enumerate() {
            let ino = ino_of[id];
            if ino != 0 && self.nodes[id].entry.kind != EntryKind::Dir {
                inodes[(ino - 1) as usize].nlink = count.max(1);
            }
        }
        let mut implied = vec![true; inodes.len()];
        for (id, n) in self.nodes.iter().enumerate() {
            if ino_of[id] != 0 {
                implied[(ino_of[id] - 1) as usize] = n.implied;
            }
        }
        Tree {
            inodes,
            implied,
            by_fid: std::sync::OnceLock::new(),
            warnings: self.warnings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, mode: u32) -> Entry {
        let mut e = Entry::new(path.into(), EntryKind::File);
        e.mode = mode;
        e.size = path.len() as u64;
        e
    }
    fn dir(path: &str) -> Entry {
        let mut e = Entry::new(path.into(), EntryKind::Dir);
        e.mode = 0o755;
        e
    }
    fn link(path: &str, target: &str, kind: EntryKind) -> Entry {
        let mut e = Entry::new(path.into(), kind);
        e.link_target = Some(target.into());
        e
    }
    fn names(t: &Tree, path: &str) -> Vec<String> {
        t.resolve(path)
            .unwrap()
            .children
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    #[test]
    fn file_ids_are_the_same_in_a_partial_tree_and_the_final_one() {
        let l0 = vec![
            dir("etc"),
            file("etc/os-release", 0o644),
            dir("usr"),
            file("usr/a", 0o755),
        ];
        let l1 = vec![
            dir("etc"),
            file("etc/hostname", 0o644),
            file("usr/b", 0o755),
            link("usr/c", "usr/b", EntryKind::Hardlink),
            file("etc/os-release", 0o644),
        ];
        let full = Tree::build(&[&l0, &l1]);
        // The top layer as a streaming pass of it sees it, four entries in.
        let part = Tree::build_partial(1, &[&l1[..4]]);
        let at = |t: &Tree, p: &str| t.resolve(p).unwrap().clone();
        for p in ["", "etc", "etc/hostname", "usr", "usr/b", "usr/c"] {
            let (f, q) = (at(&full, p), at(&part, p));
            assert_eq!(q.fid, f.fid, "{p}");
            assert_eq!(full.by_fid(f.fid).map(|i| i.ino), Some(f.ino), "{p}");
        }
        // Inode numbers are not the same: they count what the tree has.
        assert_ne!(at(&part, "usr/b").ino, at(&full, "usr/b").ino);
        // Hard links share an id; a file an upper layer replaced is another object.
        assert_eq!(at(&full, "usr/b").fid, at(&full, "usr/c").fid);
        let lower = Tree::build(&[&l0]);
        assert_ne!(
            at(&lower, "etc/os-release").fid,
            at(&full, "etc/os-release").fid
        );
        assert_eq!(at(&lower, "usr").fid, at(&full, "usr").fid);
        // Every object has its own id, and the root is the root.
        let ids: std::collections::HashSet<u64> = full.iter().map(|i| i.fid).collect();
        assert_eq!(ids.len(), full.len());
        assert_eq!(full.root().fid, ROOT_INO);
        assert!(full.by_fid(ENTRY_FID | 99).is_none());
    }

    #[test]
    fn directories_no_entry_describes_are_marked_implied() {
        // `p/q` only implied by its file; `d` described; the root has no `./`.
        let l1 = vec![dir("d"), file("p/q/f", 0o644)];
        let t = Tree::build_partial(0, &[&l1]);
        let ino = |p: &str| t.resolve(p).unwrap().ino;
        assert!(t.is_implied(ROOT_INO));
        assert!(t.is_implied(ino("p")) && t.is_implied(ino("p/q")));
        assert!(!t.is_implied(ino("d")) && !t.is_implied(ino("p/q/f")));
        // An upper layer describing `p` (and `./`) makes them known.
        let l2 = vec![dir(""), dir("p")];
        let t = Tree::build_partial(0, &[&l1, &l2]);
        assert!(!t.is_implied(ROOT_INO));
        assert!(!t.is_implied(t.resolve("p").unwrap().ino));
        assert!(t.is_implied(t.resolve("p/q").unwrap().ino));
    }

    #[test]
    fn whiteouts_hide_lower_layers_only() {
        let l1 = vec![
            dir("a"),
            file("a/x", 0o644),
            file("a/y", 0o644),
            file("b", 0o600),
        ];
        // The whiteout comes after the new file in tar order: it must still
        // not hide the file added by the same layer.
        let l2 = vec![
            file("a/z", 0o644),
            file("a/.wh.x", 0),
            file(".wh.b", 0),
            file("b2", 0o644),
        ];
        let t = Tree::build(&[&l1, &l2]);
        assert_eq!(names(&t, "a"), vec!["y", "z"]);
        assert_eq!(names(&t, ""), vec!["a", "b2"]);
    }

    #[test]
    fn opaque_dir_keeps_only_its_own_layer() {
        let l1 = vec![
            dir("o"),
            file("o/old1", 0o644),
            dir("o/sub"),
            file("o/sub/f", 0o644),
        ];
        let l2 = vec![dir("o"), file("o/new", 0o644), file("o/.wh..wh..opq", 0)];
        let t = Tree::build(&[&l1, &l2]);
        assert_eq!(names(&t, "o"), vec!["new"]);
        assert!(t.resolve("o/sub/f").is_none());
    }

    #[test]
    fn hard_links_share_one_inode_across_layers() {
        let l1 = vec![file("f", 0o640), link("g", "f", EntryKind::Hardlink)];
        let l2 = vec![link("h", "f", EntryKind::Hardlink)];
        let t = Tree::build(&[&l1, &l2]);
        let (f, g, h) = (
            t.resolve("f").unwrap(),
            t.resolve("g").unwrap(),
            t.resolve("h").unwrap(),
        );
        assert_eq!(f.ino, g.ino);
        assert_eq!(f.ino, h.ino);
        assert_eq!(f.nlink, 3);
        assert_eq!(f.data, Some(DataRef { layer: 0, entry: 0 }));
    }

    #[test]
    fn replacing_a_linked_file_breaks_only_that_name() {
        let l1 = vec![file("f", 0o644), link("g", "f", EntryKind::Hardlink)];
        let l2 = vec![file("g", 0o600)];
        let t = Tree::build(&[&l1, &l2]);
        let (f, g) = (t.resolve("f").unwrap(), t.resolve("g").unwrap());
        assert_ne!(f.ino, g.ino);
        assert_eq!(f.nlink, 1);
        assert_eq!(g.mode, 0o600);
        assert_eq!(g.data, Some(DataRef { layer: 1, entry: 0 }));
    }

    #[test]
    fn file_becomes_dir_and_dir_attrs_update_in_place() {
        let l1 = vec![file("r", 0o644), dir("d"), file("d/keep", 0o644)];
        let mut d2 = dir("d");
        d2.mode = 0o1777;
        let l2 = vec![dir("r"), file("r/inside", 0o644), d2];
        let t = Tree::build(&[&l1, &l2]);
        assert!(t.resolve("r").unwrap().is_dir());
        assert_eq!(names(&t, "r"), vec!["inside"]);
        let d = t.resolve("d").unwrap();
        assert_eq!(d.mode, 0o1777);
        assert_eq!(names(&t, "d"), vec!["keep"]);
        assert_eq!(d.st_mode(), libc::S_IFDIR | 0o1777);
    }

    #[test]
    fn missing_parents_are_created_and_dangling_links_warned() {
        let l1 = vec![
            file("x/y/z", 0o644),
            link("bad", "nope", EntryKind::Hardlink),
        ];
        let t = Tree::build(&[&l1]);
        assert!(t.resolve("x/y").unwrap().is_dir());
        assert!(t.resolve("bad").is_none());
        assert_eq!(t.warnings.len(), 1);
    }

    #[test]
    fn symlinks_resolve_inside_the_image_root() {
        let l1 = vec![
            dir("boot"),
            file("boot/vmlinuz-6.1", 0o644),
            link("boot/vmlinuz", "vmlinuz-6.1", EntryKind::Symlink),
            link("vmlinuz", "/boot/vmlinuz", EntryKind::Symlink),
            link("boot/escape", "../../../../etc/passwd", EntryKind::Symlink),
            link("boot/abs-escape", "/../../etc/passwd", EntryKind::Symlink),
            dir("etc"),
            file("etc/passwd", 0o644),
            link("loop1", "loop2", EntryKind::Symlink),
            link("loop2", "loop1", EntryKind::Symlink),
        ];
        let t = Tree::build(&[&l1]);
        let kernel = t.resolve("boot/vmlinuz-6.1").unwrap().ino;
        assert_eq!(
            t.resolve_in_root(ROOT_INO, "/vmlinuz", true).unwrap().ino,
            kernel
        );
        let boot = t.resolve("boot").unwrap().ino;
        assert_eq!(
            t.resolve_in_root(boot, "vmlinuz", true).unwrap().ino,
            kernel
        );
        assert!(t
            .resolve_in_root(boot, "vmlinuz", false)
            .unwrap()
            .symlink
            .is_some());
        // `..` and absolute targets stop at the image root.
        let passwd = t.resolve("etc/passwd").unwrap().ino;
        assert_eq!(t.resolve_in_root(boot, "escape", true).unwrap().ino, passwd);
        assert_eq!(
            t.resolve_in_root(boot, "abs-escape", true).unwrap().ino,
            passwd
        );
        assert_eq!(
            t.resolve_in_root(boot, "../../../etc/passwd", true)
                .unwrap()
                .ino,
            passwd
        );
        assert_eq!(
            t.resolve_in_root(ROOT_INO, "loop1", true),
            Err(ResolveError::Loop)
        );
        assert_eq!(
            t.resolve_in_root(ROOT_INO, "etc/passwd/x", true),
            Err(ResolveError::NotDir)
        );
        assert_eq!(
            t.resolve_in_root(ROOT_INO, "nope", true),
            Err(ResolveError::NotFound)
        );
    }

    #[test]
    fn inode_numbers_are_deterministic_and_dense() {
        let l1 = vec![
            dir("b"),
            file("b/2", 0o644),
            file("a", 0o644),
            file("b/1", 0o644),
        ];
        let shuffled = vec![
            file("a", 0o644),
            file("b/1", 0o644),
            dir("b"),
            file("b/2", 0o644),
        ];
        let (t1, t2) = (Tree::build(&[&l1]), Tree::build(&[&shuffled]));
        for p in ["a", "b", "b/1", "b/2"] {
            assert_eq!(
                t1.resolve(p).unwrap().ino,
                t2.resolve(p).unwrap().ino,
                "{p}"
            );
        }
        assert_eq!(t1.root().ino, ROOT_INO);
        assert_eq!(t1.resolve("a").unwrap().ino, 2);
        assert_eq!(t1.root().nlink, 3);
        let mut inos: Vec<u64> = t1.iter().map(|i| i.ino).collect();
        inos.sort();
        assert_eq!(inos, (1..=5).collect::<Vec<_>>());
    }
}
