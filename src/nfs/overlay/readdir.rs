//! Listing merged directories.

use super::pristine::lower_listing;
use super::resolve::upper_id;
use super::sys;
use super::whiteout::{is_opaque, is_whiteout};
use super::{name_os, Inner};
use crate::nfs::fs::{DirEntry, FileId, FsError};
use std::collections::HashSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt};

impl Inner {
    /// Up to `max` entries of merged directory `dir` after position `cookie`:
    /// upper and lower names together, whiteouts and hidden lower names
    /// left out, sorted by name so positions stay put between calls.
    pub(super) fn readdir_blocking(
        &self,
        dir: FileId,
        cookie: u64,
        max: usize,
    ) -> Result<(Vec<DirEntry>, bool), FsError> {
        let d = self.dir_obj(dir)?;
        let lower_children: &[(String, u64)] = d
            .lower
            .and_then(|l| self.tree().get(l))
            .map_or(&[], |i| i.children.as_slice());
        // Lower-only directory: the tree's sorted children are the listing.
        let Some(du) = &d.upper else {
            return Ok(lower_listing(lower_children, cookie, max));
        };
        let start = usize::try_from(cookie).unwrap_or(usize::MAX);
        enum Src {
            Upper(fs::FileType, u64),
            Lower(u64),
        }
        let mut hidden: HashSet<Vec<u8>> = HashSet::new();
        let mut all: Vec<(Vec<u8>, Src)> = Vec::new();
        for e in sys::read_dir(&du.path)? {
            let e = e?;
            let name = e.file_name().as_bytes().to_vec();
            let ft = e.file_type()?;
            if ft.is_char_device() && is_whiteout(&du.path.join(e.file_name()), &e.metadata()?)? {
                hidden.insert(name);
                continue;
            }
            hidden.insert(name.clone());
            all.push((name, Src::Upper(ft, e.ino())));
        }
        for (n, ino) in lower_children {
            if !hidden.contains(n.as_bytes()) {
                all.push((n.as_bytes().to_vec(), Src::Lower(*ino)));
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let eof = start.saturating_add(max) >= all.len();
        let mut out = Vec::new();
        for (i, (name, src)) in all.into_iter().enumerate().skip(start).take(max) {
            let id = match src {
                Src::Lower(ino) => ino,
                Src::Upper(ft, ino) if ft.is_dir() => {
                    match self.lower_child(d.lower, &name).filter(|l| l.is_dir()) {
                        Some(l) if !is_opaque(&du.path.join(name_os(&name)))? => l.ino,
                        _ => upper_id(ino),
                    }
                }
                Src::Upper(_, ino) => self
                    .state
                    .lock()
                    .origin
                    .get(&ino)
                    .copied()
                    .unwrap_or_else(|| upper_id(ino)),
            };
            out.push(DirEntry {
                id,
                name,
                cookie: i as u64 + 1,
            });
        }
        Ok((out, eof))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use crate::nfs::fs::{FsError, NodeFs};

    #[tokio::test]
    async fn readdir_pages_are_stable() {
        let env = Env::new().await;
        let fs = &env.fs;
        let etc = look(fs, "etc").await.unwrap();
        for n in ["b1", "a1", "z1"] {
            fs.create(etc, n.as_bytes(), 0o644, &root(), true)
                .await
                .unwrap();
        }
        let (all, eof) = fs.readdir(etc, 0, 100).await.unwrap();
        assert!(eof);
        let names: Vec<&[u8]> = all.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(
            names,
            [&b"a1"[..], b"b1", b"hostname", b"passwd", b"shadow", b"z1"]
        );
        let (page, eof) = fs.readdir(etc, all[1].cookie, 2).await.unwrap();
        assert!(!eof);
        assert_eq!(page, all[2..4].to_vec());
        let (rest, eof) = fs.readdir(etc, page[1].cookie, 2).await.unwrap();
        assert!(eof);
        assert_eq!(rest, all[4..].to_vec());
        let (none, eof) = fs.readdir(etc, 99, 2).await.unwrap();
        assert!(none.is_empty() && eof);
        let (again, _) = fs.readdir(etc, 0, 100).await.unwrap();
        assert_eq!(again, all);
        let passwd = look(fs, "etc/passwd").await.unwrap();
        assert_eq!(fs.readdir(passwd, 0, 10).await, Err(FsError::NotDir));
    }
}
