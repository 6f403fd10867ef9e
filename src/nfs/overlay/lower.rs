//! The image side of the overlay: every path of every image inode, so that
//! a lower file id (an image inode number) can be found again by path.

use crate::image::tree::{Tree, ROOT_INO};
use crate::layer::EntryKind;
use crate::nfs::fs::FileKind;
use std::collections::HashMap;
use std::path::PathBuf;

/// Every name of every image inode, so that a lower id can be turned back
/// into paths. Built once per image and shared by the overlays on it.
pub(crate) struct LowerNames {
    /// Per inode (index `ino - 1`): (parent ino, position in its children).
    /// The root has parent 0.
    first: Vec<(u64, u32)>,
    /// Further names of non-directories with several links.
    more: HashMap<u64, Vec<(u64, u32)>>,
}

impl LowerNames {
    pub(crate) fn new(tree: &Tree) -> LowerNames {
        let mut first = vec![(0u64, 0u32); tree.len()];
        let mut more: HashMap<u64, Vec<(u64, u32)>> = HashMap::new();
        for dir in tree.iter().filter(|i| i.is_dir()) {
            for (pos, (_, child)) in dir.children.iter().enumerate() {
                let Some(slot) = first.get_mut((*child as usize).wrapping_sub(1)) else {
                    continue;
                };
                if slot.0 == 0 {
                    *slot = (dir.ino, pos as u32);
                } else {
                    more.entry(*child).or_default().push((dir.ino, pos as u32));
                }
            }
        }
        LowerNames { first, more }
    }

    fn name_at(tree: &Tree, parent: u64, pos: u32) -> Option<&str> {
        tree.get(parent)?
            .children
            .get(pos as usize)
            .map(|(n, _)| n.as_str())
    }

    /// Every path naming `ino` in the image (relative, "" for the root).
    pub(super) fn paths(&self, tree: &Tree, ino: u64) -> Vec<PathBuf> {
        if ino == ROOT_INO {
            return vec![PathBuf::new()];
        }
        let Some(&first) = self.first.get((ino as usize).wrapping_sub(1)) else {
            return Vec::new();
        };
        let extra = self.more.get(&ino).map(Vec::as_slice).unwrap_or(&[]);
        let mut out = Vec::new();
        'names: for &(parent, pos) in std::iter::once(&first).chain(extra) {
            let Some(name) = Self::name_at(tree, parent, pos) else {
                continue;
            };
            let mut comps = vec![name];
            let mut cur = parent;
            while cur != ROOT_INO {
                let Some(&(p, i)) = self.first.get((cur as usize).wrapping_sub(1)) else {
                    continue 'names;
                };
                let Some(n) = Self::name_at(tree, p, i) else {
                    continue 'names;
                };
                if comps.len() > 4096 {
                    continue 'names;
                }
                comps.push(n);
                cur = p;
            }
            out.push(comps.iter().rev().collect());
        }
        out
    }
}

pub(super) fn lower_kind(k: EntryKind) -> FileKind {
    match k {
        EntryKind::File | EntryKind::Hardlink => FileKind::File,
        EntryKind::Dir => FileKind::Dir,
        EntryKind::Symlink => FileKind::Symlink,
        EntryKind::CharDevice => FileKind::CharDevice,
        EntryKind::BlockDevice => FileKind::BlockDevice,
        EntryKind::Fifo => FileKind::Fifo,
    }
}
