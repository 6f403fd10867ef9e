//! Answers from memory while the node has changed nothing.
//!
//! A node's upper starts empty (a read-only root always stays so, an
//! ephemeral one until the node writes). While it is, the merged tree is
//! the image's tree: every image entry is visible under its own names, and
//! nothing hides or replaces one. Reads of attributes, names, listings,
//! links and file data then need no look at the upper on disk, and no hop
//! to the blocking pool: that is most of a boot's NFS calls.
//!
//! The overlay is pristine when it opens with an empty upper and index, and
//! stops being so for good at the first change: every change starts with
//! [`Inner::check_writable`], which clears the flag before the upper is
//! touched. A call that saw the flag just before a change is answered as of
//! before it, as it would be had it arrived first.

use super::attr::attr_from_inode;
use super::lower::lower_kind;
use super::{Inner, UPPER_ID_BIT};
use crate::image::tree::{Inode, ROOT_INO};
use crate::nfs::fs::{DirEntry, FileId, FileKind};
use std::sync::atomic::Ordering;

impl Inner {
    fn is_pristine(&self) -> bool {
        self.pristine.load(Ordering::SeqCst) && !self.retired.load(Ordering::SeqCst)
    }

    /// The image entry `id` stands for, if the answer can come from memory.
    /// The root is left to the slow path: its attributes are the upper
    /// directory's own.
    pub(super) fn pristine_entry(&self, id: FileId) -> Option<&Inode> {
        if id == ROOT_INO || id & UPPER_ID_BIT != 0 || !self.is_pristine() {
            return None;
        }
        self.tree().get(id)
    }

    /// The image directory `id` (the root included: an empty upper root
    /// adds no names), if names in it can be answered from memory.
    pub(super) fn pristine_dir(&self, id: FileId) -> Option<&Inode> {
        if id & UPPER_ID_BIT != 0 || !self.is_pristine() {
            return None;
        }
        self.tree().get(id).filter(|i| i.is_dir())
    }

    /// An image file's id, if its data can be read without the upper.
    pub(super) fn pristine_file(&self, id: FileId) -> Option<&Inode> {
        self.pristine_entry(id)
            .filter(|i| lower_kind(i.kind) == FileKind::File)
    }

    pub(super) fn pristine_attr(&self, id: FileId) -> Option<crate::nfs::fs::Attr> {
        self.pristine_entry(id).map(attr_from_inode)
    }
}

/// Up to `max` entries of an image directory after position `cookie`: the
/// tree's children, sorted by name, are the listing (the same positions a
/// merged listing gives them).
pub(super) fn lower_listing(
    children: &[(String, u64)],
    cookie: u64,
    max: usize,
) -> (Vec<DirEntry>, bool) {
    let start = usize::try_from(cookie).unwrap_or(usize::MAX);
    let out = children
        .iter()
        .enumerate()
        .skip(start)
        .take(max)
        .map(|(i, (n, ino))| DirEntry {
            id: *ino,
            name: n.as_bytes().to_vec(),
            cookie: i as u64 + 1,
        })
        .collect();
    (out, start.saturating_add(max) >= children.len())
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use crate::nfs::fs::{FileKind, NodeFs};
    use std::sync::atomic::Ordering;

    /// Everything a client can read of `path`, recursively: attributes,
    /// listing pages, link targets and file data.
    async fn observe(env: &Env, path: &str, out: &mut Vec<String>) {
        let fs = &env.fs;
        let id = look(fs, path).await.unwrap();
        let attr = fs.getattr(id).await.unwrap();
        out.push(format!("{path} {id} {attr:?}"));
        match attr.kind {
            FileKind::Dir => {
                for name in list(fs, path).await {
                    Box::pin(observe(env, &format!("{path}/{name}"), out)).await;
                }
                out.push(format!("{path}/.. {:?}", fs.lookup(id, b"..").await));
                out.push(format!(
                    "{path}/nothing {:?}",
                    fs.lookup(id, b"nothing").await
                ));
            }
            FileKind::File => out.push(format!("{:?}", read_all(fs, id).await)),
            FileKind::Symlink => out.push(format!("{:?}", fs.readlink(id).await)),
            _ => out.push(format!("{:?}", fs.readlink(id).await)),
        }
    }

    #[tokio::test]
    async fn memory_answers_equal_the_upper_walks() {
        let env = Env::new().await;
        assert!(env.fs.inner.pristine.load(Ordering::SeqCst));
        let mut fast = Vec::new();
        observe(&env, "", &mut fast).await;
        env.fs.inner.pristine.store(false, Ordering::SeqCst);
        let mut slow = Vec::new();
        observe(&env, "", &mut slow).await;
        assert!(fast.len() > 40, "{fast:?}");
        assert_eq!(fast, slow);
    }

    #[tokio::test]
    async fn an_unchanged_root_needs_no_upper_until_the_first_change() {
        let env = Env::new().await;
        let fs = &env.fs;
        let passwd = look(fs, "etc/passwd").await.unwrap();
        let x = look(fs, "opt/x").await.unwrap();
        let aside = env.upper("").with_extension("aside");
        // With the upper gone, only answers from memory can succeed.
        std::fs::rename(env.upper(""), &aside).unwrap();
        assert_eq!(contents(fs, "etc/passwd").await, PASSWD);
        assert_eq!(list(fs, "opt").await, strs(&["sub", "x", "y"]));
        assert_eq!(
            fs.readlink(look(fs, "bin/sh").await.unwrap())
                .await
                .unwrap(),
            b"busybox"
        );
        std::fs::rename(&aside, env.upper("")).unwrap();
        fs.write(passwd, 0, b"X", &root()).await.unwrap();
        std::fs::rename(env.upper(""), &aside).unwrap();
        // Changed: an image file is looked for in the upper first.
        let r = fs.getattr(x).await;
        assert!(r.is_err(), "{r:?}");
        std::fs::rename(&aside, env.upper("")).unwrap();
        assert_eq!(contents(fs, "etc/passwd").await[0], b'X');
    }

    #[tokio::test]
    async fn a_root_with_changes_opens_as_changed() {
        let mut env = Env::new().await;
        env.fs
            .write(look(&env.fs, "opt/x").await.unwrap(), 0, b"Q", &root())
            .await
            .unwrap();
        env.restart().await;
        assert!(!env.fs.inner.pristine.load(Ordering::SeqCst));
        assert_eq!(contents(&env.fs, "opt/x").await, b"Q");
    }
}
