//! `lazyboot fsck` of a cache directory: every chunk and index file read
//! and checked against its identity, temp files of writes that never
//! finished, and names the cache never makes.
//!
//! The cache never serves a damaged file (each read checks it), so a check
//! is for the operator: to learn that a disk or someone's hands damaged the
//! cache, and how much, before a boot storm finds out one chunk at a time.

use super::{file, io_err, CacheError, ChunkKey};
use crate::digest::Digest;
use std::path::{Path, PathBuf};

/// What a check of a cache directory found.
#[derive(Debug, Default)]
pub struct CacheCheck {
    /// Intact chunk files.
    pub chunks: u64,
    /// Their bytes on disk.
    pub chunk_bytes: u64,
    /// Intact index files (layer indexes, published indexes, prefetch plans).
    pub indexes: u64,
    /// Chunk and index files that fail their checksum: torn, flipped, or
    /// not the chunk or index their place names.
    pub damaged: Vec<PathBuf>,
    /// Temp files and staging areas of writes that never finished (a
    /// killed process leaves them; the next open removes them).
    pub unfinished: Vec<PathBuf>,
    /// Files under `chunks/` or `index/` with names the cache never makes
    /// (reported, never removed: they are not the cache's).
    pub stray: Vec<PathBuf>,
}

/// Check the cache at `root`; with `repair`, remove what is damaged or
/// unfinished (the damaged is fetched again when it is next needed).
/// `repair` must not run while a lazyboot process uses the cache.
pub fn check(root: &Path, repair: bool) -> Result<CacheCheck, CacheError> {
    let _lock = match repair {
        true => Some(super::lock(root, true)?),
        false => None,
    };
    let mut c = CacheCheck::default();
    let chunks = root.join("chunks");
    for layer_dir in entries(&chunks)? {
        let name = layer_dir.file_name().unwrap_or_default().to_string_lossy();
        let Ok(layer) = Digest::parse(&format!("sha256:{name}")) else {
            c.stray.push(layer_dir);
            continue;
        };
        for path in entries(&layer_dir)? {
            let fname = path.file_name().unwrap_or_default().to_string_lossy();
            let id = (fname.len() == 16)
                .then(|| u64::from_str_radix(&fname, 16).ok())
                .flatten();
            let Some(id) = id else {
                c.stray.push(path);
                continue;
            };
            let key = ChunkKey {
                layer: layer.clone(),
                id,
            };
            let mut body = Vec::new();
            match file::read_checked_into(&path, key.identity().as_bytes(), &mut body) {
                Ok(true) => {
                    c.chunks += 1;
                    c.chunk_bytes += std::fs::metadata(&path).map_or(0, |m| m.len());
                }
                Ok(false) => c.damaged.push(path),
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
    }
    let index = root.join("index");
    for path in entries(&index)? {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !path.is_file() {
            c.stray.push(path);
            continue;
        }
        match file::read_checked(&path, name.as_bytes()) {
            Ok(Some(_)) => c.indexes += 1,
            Ok(None) => c.damaged.push(path),
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    c.unfinished = entries(&root.join("tmp"))?;
    if repair {
        for p in c.damaged.iter().chain(&c.unfinished) {
            let removed = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
            removed.map_err(io_err(p))?;
        }
    }
    Ok(c)
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>, CacheError> {
    sorted_entries(dir).map_err(io_err(dir))
}

/// The entries of `dir`, sorted; none if it does not exist.
pub(crate) fn sorted_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = rd
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::key;
    use crate::cache::ChunkCache;

    #[test]
    fn finds_damaged_swapped_unfinished_and_stray_files_and_repairs() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        for id in 0..4 {
            c.put(&key(id), bytes::Bytes::from(vec![id as u8; 1000]))
                .unwrap();
        }
        c.store_index("a.idx", b"index a").unwrap();
        c.store_index("b.idx", b"index b").unwrap();
        drop(c);
        let clean = check(dir.path(), false).unwrap();
        assert_eq!((clean.chunks, clean.indexes), (4, 2));
        assert!(clean.damaged.is_empty() && clean.unfinished.is_empty() && clean.stray.is_empty());

        let layer_dir = dir.path().join("chunks").join(key(0).layer.hex());
        let chunk = |id: u64| layer_dir.join(format!("{id:016x}"));
        // A flipped byte, two chunks swapped, an index copied over another.
        let mut bytes = std::fs::read(chunk(0)).unwrap();
        bytes[500] ^= 1;
        std::fs::write(chunk(0), bytes).unwrap();
        std::fs::rename(chunk(1), dir.path().join("swap")).unwrap();
        std::fs::rename(chunk(2), chunk(1)).unwrap();
        std::fs::rename(dir.path().join("swap"), chunk(2)).unwrap();
        let index = dir.path().join("index");
        std::fs::copy(index.join("a.idx"), index.join("b.idx")).unwrap();
        std::fs::write(dir.path().join("tmp").join("0123"), b"half a chunk").unwrap();
        std::fs::write(layer_dir.join("notes.txt"), b"mine").unwrap();

        let found = check(dir.path(), false).unwrap();
        let mut damaged = found.damaged.clone();
        damaged.sort();
        assert_eq!(
            damaged,
            vec![chunk(0), chunk(1), chunk(2), index.join("b.idx")]
        );
        assert_eq!((found.chunks, found.indexes), (1, 1));
        assert_eq!(found.unfinished, vec![dir.path().join("tmp").join("0123")]);
        assert_eq!(found.stray, vec![layer_dir.join("notes.txt")]);
        // Reporting changed nothing.
        assert!(chunk(0).exists());

        let open = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        assert!(matches!(
            check(dir.path(), true),
            Err(CacheError::InUse { .. })
        ));
        drop(open);
        let repaired = check(dir.path(), true).unwrap();
        assert_eq!(repaired.damaged.len(), 4);
        let after = check(dir.path(), false).unwrap();
        assert!(after.damaged.is_empty() && after.unfinished.is_empty());
        assert_eq!((after.chunks, after.indexes), (1, 1));
        assert_eq!(after.stray.len(), 1, "a stranger's file stays");
    }
}
