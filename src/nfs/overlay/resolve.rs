//! File ids, and finding the merged entry an id or a name stands for.
//!
//! - Lower entries keep their image inode number (`1..`, stable per image).
//!   A merged directory (copied-up, not opaque) keeps the id of its lower
//!   directory, and a copied-up non-directory keeps the id of the lower file
//!   it came from: ids never change under a client's feet. A lower id is
//!   resolved through `index/ID` if the file was copied up (wherever it was
//!   renamed to since), otherwise through its paths in the image (all of
//!   them, for hard links), checking that a path is still visible.
//! - Entries created in the upper get `1 << 63 | st_ino` of the upper
//!   file. An in-memory map from upper inode to (parent inode, name), built
//!   by scanning the upper when the overlay opens and kept up to date by
//!   every change, turns such an id back into a path; `..` of any directory
//!   is the merged lookup of its path's parent.

use super::lower::lower_kind;
use super::sys::{kind_of, lstat};
use super::whiteout::{is_opaque, is_whiteout};
use super::{blocking, name_os, not_found, Inner, NodeOverlay, Obj, Upper, UPPER_ID_BIT};
use crate::image::tree::{Inode, ROOT_INO};
use crate::nfs::fs::{FileId, FileKind, FsError};
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

pub(super) fn upper_id(ino: u64) -> FileId {
    UPPER_ID_BIT | (ino & !UPPER_ID_BIT)
}

impl Inner {
    pub(super) fn lower_child(&self, dir: Option<u64>, name: &[u8]) -> Option<&Inode> {
        let name = std::str::from_utf8(name).ok()?;
        self.tree().lookup(dir?, name)
    }

    fn root_obj(&self) -> io::Result<Obj> {
        let meta = lstat(&self.upper)?;
        Ok(Obj {
            id: ROOT_INO,
            kind: FileKind::Dir,
            rel: PathBuf::new(),
            upper: Some(Upper {
                path: self.upper.clone(),
                meta,
                named: true,
            }),
            lower: Some(ROOT_INO),
        })
    }

    /// The entry `upper/rel` (found at `path`, not a whiteout) whose merged
    /// parent directory has the lower half `parent_lower`.
    fn upper_obj(
        &self,
        parent_lower: Option<u64>,
        name: &[u8],
        rel: PathBuf,
        path: PathBuf,
        meta: Metadata,
    ) -> io::Result<Obj> {
        let kind = kind_of(meta.file_type());
        let (id, lower) = if meta.is_dir() {
            let lower = match self.lower_child(parent_lower, name) {
                Some(l) if l.is_dir() && !is_opaque(&path)? => Some(l.ino),
                _ => None,
            };
            (lower.unwrap_or_else(|| upper_id(meta.ino())), lower)
        } else {
            let origin = self.state.lock().origin.get(&meta.ino()).copied();
            (origin.unwrap_or_else(|| upper_id(meta.ino())), None)
        };
        Ok(Obj {
            id,
            kind,
            rel,
            upper: Some(Upper {
                path,
                meta,
                named: true,
            }),
            lower,
        })
    }

    /// A lower entry with no upper entry at its name.
    fn lower_obj(&self, l: &Inode, rel: PathBuf) -> io::Result<Obj> {
        let kind = lower_kind(l.kind);
        if !l.is_dir() {
            let up = self.state.lock().index.get(&l.ino).copied();
            if let Some(up) = up {
                let path = self.index_path(l.ino);
                if let Ok(meta) = lstat(&path) {
                    if meta.ino() == up {
                        return Ok(Obj {
                            id: l.ino,
                            kind,
                            rel,
                            upper: Some(Upper {
                                path,
                                meta,
                                named: false,
                            }),
                            lower: None,
                        });
                    }
                }
            }
        }
        Ok(Obj {
            id: l.ino,
            kind,
            rel,
            upper: None,
            lower: Some(l.ino),
        })
    }

    /// Look `name` up in the merged directory `dir`.
    pub(super) fn child(&self, dir: &Obj, name: &[u8]) -> io::Result<Option<Obj>> {
        let rel = dir.rel.join(name_os(name));
        if let Some(u) = &dir.upper {
            let path = u.path.join(name_os(name));
            match lstat(&path) {
                Ok(m) if is_whiteout(&path, &m)? => return Ok(None),
                Ok(m) => return self.upper_obj(dir.lower, name, rel, path, m).map(Some),
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        match self.lower_child(dir.lower, name) {
            Some(l) => self.lower_obj(l, rel).map(Some),
            None => Ok(None),
        }
    }

    /// Resolve a merged path from the root.
    pub(super) fn walk(&self, rel: &Path) -> io::Result<Option<Obj>> {
        let mut cur = self.root_obj()?;
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                continue;
            };
            if !cur.is_dir() {
                return Ok(None);
            }
            match self.child(&cur, name.as_bytes())? {
                Some(o) => cur = o,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// The entry a file id stands for now.
    pub(super) fn resolve(&self, id: FileId) -> Result<Obj, FsError> {
        self.check_live()?;
        if id == ROOT_INO {
            return Ok(self.root_obj()?);
        }
        if id & UPPER_ID_BIT != 0 {
            return self.resolve_upper(id);
        }
        let inode = self.tree().get(id).ok_or(FsError::Stale)?;
        if !inode.is_dir() {
            let up = self.state.lock().index.get(&id).copied();
            if let Some(up) = up {
                return self.resolve_indexed(id, up);
            }
        }
        for rel in self.names.paths(self.tree(), id) {
            if let Some(o) = self.walk(&rel)? {
                if o.id == id {
                    return Ok(o);
                }
            }
        }
        Err(FsError::Stale)
    }

    fn resolve_indexed(&self, id: FileId, up: u64) -> Result<Obj, FsError> {
        let inode = self.tree().get(id).ok_or(FsError::Stale)?;
        let rel = self.state.lock().path_of(up, self.upper_root_ino);
        if let Some(rel) = rel {
            let path = self.upper.join(&rel);
            if let Ok(meta) = lstat(&path) {
                if meta.ino() == up {
                    return Ok(Obj {
                        id,
                        kind: kind_of(meta.file_type()),
                        rel,
                        upper: Some(Upper {
                            path,
                            meta,
                            named: true,
                        }),
                        lower: None,
                    });
                }
            }
        }
        let path = self.index_path(id);
        match lstat(&path) {
            Ok(meta) if meta.ino() == up => Ok(Obj {
                id,
                kind: lower_kind(inode.kind),
                rel: PathBuf::new(),
                upper: Some(Upper {
                    path,
                    meta,
                    named: false,
                }),
                lower: None,
            }),
            _ => Err(FsError::Stale),
        }
    }

    fn resolve_upper(&self, id: FileId) -> Result<Obj, FsError> {
        let ino = id & !UPPER_ID_BIT;
        let rel = self
            .state
            .lock()
            .path_of(ino, self.upper_root_ino)
            .ok_or(FsError::Stale)?;
        let path = self.upper.join(&rel);
        let meta = match lstat(&path) {
            Ok(m) if m.ino() == ino && !is_whiteout(&path, &m)? => m,
            Ok(_) => return Err(FsError::Stale),
            Err(e) if not_found(&e) => return Err(FsError::Stale),
            Err(e) => return Err(e.into()),
        };
        if meta.is_dir() {
            if !is_opaque(&path)? {
                // It may merge with a lower directory: the walk decides its id.
                return match self.walk(&rel)? {
                    Some(o) if o.id == id => Ok(o),
                    _ => Err(FsError::Stale),
                };
            }
        } else if self.state.lock().origin.contains_key(&ino) {
            // A copied-up file goes by its lower id.
            return Err(FsError::Stale);
        }
        Ok(Obj {
            id,
            kind: kind_of(meta.file_type()),
            rel,
            upper: Some(Upper {
                path,
                meta,
                named: true,
            }),
            lower: None,
        })
    }

    pub(super) fn dir_obj(&self, id: FileId) -> Result<Obj, FsError> {
        let d = self.resolve(id)?;
        if !d.is_dir() {
            return Err(FsError::NotDir);
        }
        Ok(d)
    }
}

impl NodeOverlay {
    /// [`Inner::resolve`] off the async threads, under the namespace lock.
    pub(super) async fn resolve(&self, id: FileId) -> Result<Obj, FsError> {
        let inner = self.inner.clone();
        blocking(move || {
            let _g = inner.ns_lock.read();
            inner.resolve(id)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::attr::attr_from_inode;
    use super::super::tests::*;
    use super::super::UPPER_ID_BIT;
    use crate::image::testimage::MTIME;
    use crate::nfs::fs::{FileKind, FsError, NodeFs};

    #[tokio::test]
    async fn lower_entries_match_the_image() {
        let env = Env::new().await;
        let fs = &env.fs;
        let tree = &env.view.tree();
        assert_eq!(
            list(fs, "").await,
            strs(&["bin", "dev", "etc", "home", "opt", "run", "var"])
        );
        assert_eq!(
            list(fs, "etc").await,
            strs(&["hostname", "passwd", "shadow"])
        );
        assert_eq!(list(fs, "bin").await, strs(&["a", "b", "sh", "su"]));
        for path in [
            "etc",
            "etc/passwd",
            "etc/shadow",
            "bin/su",
            "bin/a",
            "bin/sh",
            "dev/null",
            "dev/sda",
            "run/initctl",
            "home/user",
            "home/user/notes",
            "var/lib/big",
        ] {
            let id = look(fs, path).await.unwrap();
            let inode = tree.resolve(path).unwrap();
            assert_eq!(id, inode.ino, "{path}");
            let a = fs.getattr(id).await.unwrap();
            assert_eq!(a, attr_from_inode(inode), "{path}");
            assert_eq!(a.mtime.secs, MTIME as i64);
        }
        let su = fs.getattr(look(fs, "bin/su").await.unwrap()).await.unwrap();
        assert_eq!((su.mode, su.kind, su.size), (0o4755, FileKind::File, 9));
        let null = fs
            .getattr(look(fs, "dev/null").await.unwrap())
            .await
            .unwrap();
        assert_eq!(
            (null.kind, null.rdev, null.mode),
            (FileKind::CharDevice, (1, 3), 0o666)
        );
        let sda = fs
            .getattr(look(fs, "dev/sda").await.unwrap())
            .await
            .unwrap();
        assert_eq!((sda.kind, sda.rdev), (FileKind::BlockDevice, (8, 0)));
        let fifo = fs
            .getattr(look(fs, "run/initctl").await.unwrap())
            .await
            .unwrap();
        assert_eq!(fifo.kind, FileKind::Fifo);
        let notes = fs
            .getattr(look(fs, "home/user/notes").await.unwrap())
            .await
            .unwrap();
        assert_eq!((notes.uid, notes.gid, notes.mode), (1000, 1000, 0o600));
        let shadow = fs
            .getattr(look(fs, "etc/shadow").await.unwrap())
            .await
            .unwrap();
        assert_eq!((shadow.uid, shadow.gid), (0, 42));
        // Hard links share one id.
        let (a, b) = (
            look(fs, "bin/a").await.unwrap(),
            look(fs, "bin/b").await.unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(fs.getattr(a).await.unwrap().nlink, 2);
        let sh = look(fs, "bin/sh").await.unwrap();
        assert_eq!(fs.readlink(sh).await.unwrap(), b"busybox");
        assert_eq!(fs.readlink(a).await, Err(FsError::Inval));
        assert_eq!(contents(fs, "etc/passwd").await, PASSWD);
        assert_eq!(contents(fs, "var/lib/big").await, big());
        let big_id = look(fs, "var/lib/big").await.unwrap();
        let (part, eof) = fs.read(big_id, 599_990, 100).await.unwrap();
        assert_eq!((&part[..], eof), (&big()[599_990..], true));
        // Whiteouts inside the image apply; "." and "..".
        assert_eq!(look(fs, "etc/old").await, Err(FsError::NotFound));
        let etc = look(fs, "etc").await.unwrap();
        assert_eq!(fs.lookup(etc, b"..").await.unwrap(), fs.root());
        assert_eq!(fs.lookup(etc, b".").await.unwrap(), etc);
        assert_eq!(fs.lookup(fs.root(), b"..").await.unwrap(), fs.root());
        let user_dir = look(fs, "home/user").await.unwrap();
        assert_eq!(
            fs.lookup(user_dir, b"..").await.unwrap(),
            look(fs, "home").await.unwrap()
        );
        assert_eq!(fs.lookup(a, b"x").await, Err(FsError::NotDir));
        assert_eq!(fs.read(etc, 0, 10).await, Err(FsError::IsDir));
        assert_eq!(fs.getattr(1 << 40).await, Err(FsError::Stale));
        assert_eq!(fs.getattr(UPPER_ID_BIT | 12345).await, Err(FsError::Stale));
        assert!(!fs.read_only());
        assert!(fs.fsstat().await.unwrap().total_bytes > 0);
    }
}
