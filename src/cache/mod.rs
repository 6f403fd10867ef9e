//! The on-disk content cache shared by every mount: uncompressed chunks of
//! layers, plus layer indexes.
//!
//! Crash safety comes from one rule: a file under `chunks/` or `index/` is
//! only ever created by renaming a complete temp file, and every file carries
//! a checksum of its body that is verified on each read from disk. A process
//! killed at any point leaves at worst stray temp files (removed at the next
//! open) and never a half-written chunk that could be served. A file that
//! fails its check (disk trouble, someone editing the cache) is deleted and
//! treated as a miss.

mod check;
mod file;
mod inflight;
mod recent;
pub(crate) use recent::{Part, RecentBlobs, Reservation, RECENT_BLOB_BYTES};

pub(crate) use check::sorted_entries;
pub use check::{check, CacheCheck};

pub(crate) use inflight::Claim;

use crate::digest::Digest;
use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why the cache could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file or directory of the cache could not be read or written.
    #[error("cache directory {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A repair needs the cache to itself, and a lazyboot process uses it.
    #[error("cache directory {}: in use by a running lazyboot (mount or serve); stop it first", path.display())]
    InUse {
        /// The cache directory.
        path: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The cache's lock (see [`crate::lockfile`]): shared while open,
/// exclusive for a repair; `InUse` when another process is in the way.
pub(crate) fn lock(root: &Path, exclusive: bool) -> Result<std::fs::File, CacheError> {
    match crate::lockfile::try_lock(root, exclusive) {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(CacheError::InUse {
            path: root.to_path_buf(),
        }),
        Err(e) => Err(io_err(&root.join("lock"))(e)),
    }
}

/// A chunk of a layer's data. `id` is format specific (see `view`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ChunkKey {
    pub(crate) layer: Digest,
    pub(crate) id: u64,
}

impl ChunkKey {
    /// What a chunk file's checksum binds its body to.
    pub(crate) fn identity(&self) -> String {
        format!("chunk {} {:016x}", self.layer, self.id)
    }
}

/// Counters of a cache since it was opened.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct CacheStats {
    /// Chunks found (memory or disk).
    pub hits: u64,
    /// Chunks asked for and not there.
    pub misses: u64,
    /// Bytes of chunks written.
    pub stored_bytes: u64,
    /// Chunks removed to stay under the size bound.
    pub evicted_chunks: u64,
    /// Chunk files that failed their checksum (and were removed).
    pub corrupt_chunks: u64,
}

struct DiskState {
    /// Every chunk on disk with its size, least recently used first to go.
    lru: LruCache<ChunkKey, u64>,
    total: u64,
}

/// The on-disk chunk cache shared by every image: verified chunk files, layer indexes and prefetch plans under one directory, bounded in size.
pub struct ChunkCache {
    root: PathBuf,
    max_bytes: u64,
    disk: Mutex<DiskState>,
    /// Recently read chunks kept in memory so hot reads skip the file system.
    hot: Mutex<LruCache<ChunkKey, Bytes>>,
    inflight: inflight::Inflight,
    /// Compressed bytes fetched lately, for requests that overlap them.
    recent: RecentBlobs,
    hits: AtomicU64,
    misses: AtomicU64,
    evicted: AtomicU64,
    corrupt: AtomicU64,
    /// A shared lock on `root/lock` while the cache is open, so that a
    /// repair (which takes it exclusively) never runs under a live process.
    _lock: std::fs::File,
}

const HOT_CHUNKS: usize = 256;

impl ChunkCache {
    /// Open (or create) the cache at `root`, repair what a killed process may
    /// have left, and rebuild the LRU order from file modification times.
    pub fn open(root: &Path, max_bytes: u64) -> Result<Self, CacheError> {
        for sub in ["chunks", "index", "tmp"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        // Temp files belong to writes that never finished, unless another
        // process has the cache open: then they may be its writes.
        if let Ok(_alone) = lock(root, true) {
            let tmp = root.join("tmp");
            for e in std::fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
                let _ =
                    std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
        let lock = lock(root, false)?;
        let mut found: Vec<(std::time::SystemTime, ChunkKey, u64)> = Vec::new();
        let chunks = root.join("chunks");
        for layer_dir in std::fs::read_dir(&chunks)
            .map_err(io_err(&chunks))?
            .flatten()
        {
            let name = layer_dir.file_name().to_string_lossy().into_owned();
            let Ok(layer) = Digest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            for f in std::fs::read_dir(layer_dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let fname = f.file_name().to_string_lossy().into_owned();
                let (Ok(id), Ok(meta)) = (u64::from_str_radix(&fname, 16), f.metadata()) else {
                    continue;
                };
                let when = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                found.push((
                    when,
                    ChunkKey {
                        layer: layer.clone(),
                        id,
                    },
                    meta.len(),
                ));
            }
        }
        found.sort_by_key(|(t, _, _)| *t);
        let mut lru = LruCache::unbounded();
        let mut total = 0;
        for (_, key, len) in found {
            total += len;
            lru.put(key, len);
        }
        let cache = ChunkCache {
            root: root.to_path_buf(),
            max_bytes,
            disk: Mutex::new(DiskState { lru, total }),
            hot: Mutex::new(LruCache::new(HOT_CHUNKS.try_into().unwrap())),
            inflight: inflight::Inflight::default(),
            recent: RecentBlobs::new(RECENT_BLOB_BYTES),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            _lock: lock,
        };
        cache.evict_if_needed();
        Ok(cache)
    }

    fn chunk_path(&self, key: &ChunkKey) -> PathBuf {
        self.root
            .join("chunks")
            .join(key.layer.hex())
            .join(format!("{:016x}", key.id))
    }

    fn tmp_path(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()))
    }

    /// A verified chunk, or `None` if it is not cached (or failed its check).
    pub(crate) fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        if let Some(b) = self.hot.lock().get(key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Some(b.clone());
        }
        let mut body = Vec::new();
        if !self.read_file_into(key, &mut body) {
            return None;
        }
        let data = Bytes::from(body);
        self.hot.lock().put(key.clone(), data.clone());
        Some(data)
    }

    /// Append the verified chunk `key` to `out`; `false` (and `out` as it
    /// was) if it is not cached or failed its check. Unlike [`get`](Self::get)
    /// the body is read straight into `out` and not kept in the hot set:
    /// this is the bulk path of sequential reads.
    pub(crate) fn get_into(&self, key: &ChunkKey, out: &mut Vec<u8>) -> bool {
        if let Some(b) = self.hot.lock().get(key) {
            out.extend_from_slice(b);
            self.hits.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.read_file_into(key, out)
    }

    /// The chunk file of `key`, checked, appended to `out`; counts the hit
    /// or miss, and drops a damaged or vanished file from the cache.
    fn read_file_into(&self, key: &ChunkKey, out: &mut Vec<u8>) -> bool {
        if self.disk.lock().lru.get(key).is_none() {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let path = self.chunk_path(key);
        match file::read_checked_into(&path, key.identity().as_bytes(), out) {
            Ok(true) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Ok(false) => {
                tracing::warn!(path = %path.display(), "cached chunk failed its checksum; discarding it");
                self.corrupt.fetch_add(1, Ordering::Relaxed);
            }
            // Evicted or removed behind our back: a plain miss.
            Err(_) => {}
        }
        self.forget(key);
        self.misses.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Ask the kernel to start reading these chunk files into the page cache
    /// (a sequential reader will want them next). Readahead never crosses
    /// files, so without this every chunk file costs a synchronous disk read.
    pub(crate) fn advise_willneed(&self, keys: &[ChunkKey]) {
        use std::os::fd::AsRawFd;
        for key in keys {
            if self.hot.lock().contains(key) || !self.disk.lock().lru.contains(key) {
                continue;
            }
            if let Ok(f) = std::fs::File::open(self.chunk_path(key)) {
                // SAFETY: a valid open descriptor; fadvise only gives a hint.
                unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
            }
        }
    }

    /// Compressed bytes fetched lately (see [`RecentBlobs`]).
    pub(crate) fn recent_blobs(&self) -> &RecentBlobs {
        &self.recent
    }

    pub(crate) fn contains(&self, key: &ChunkKey) -> bool {
        self.hot.lock().contains(key) || self.disk.lock().lru.contains(key)
    }

    fn forget(&self, key: &ChunkKey) {
        let mut d = self.disk.lock();
        if let Some(len) = d.lru.pop(key) {
            d.total -= len;
        }
        drop(d);
        let _ = std::fs::remove_file(self.chunk_path(key));
    }

    /// Store a chunk. Callers only store bytes they have verified.
    pub(crate) fn put(&self, key: &ChunkKey, data: Bytes) -> Result<(), CacheError> {
        let path = self.chunk_path(key);
        let dir = path.parent().expect("chunk path has a parent");
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let len = file::write_atomic(&self.tmp_path(), &path, key.identity().as_bytes(), &data)
            .map_err(io_err(&path))?;
        {
            let mut d = self.disk.lock();
            if let Some(old) = d.lru.put(key.clone(), len) {
                d.total -= old;
            }
            d.total += len;
        }
        self.hot.lock().put(key.clone(), data);
        self.evict_if_needed();
        Ok(())
    }

    fn evict_if_needed(&self) {
        let mut victims = Vec::new();
        {
            let mut d = self.disk.lock();
            if d.total <= self.max_bytes {
                return;
            }
            // Evict down to 90% so that a full cache does not evict on every put.
            let target = self.max_bytes / 10 * 9;
            while d.total > target {
                let Some((key, len)) = d.lru.pop_lru() else {
                    break;
                };
                d.total -= len;
                victims.push(key);
            }
        }
        let mut hot = self.hot.lock();
        for key in &victims {
            hot.pop(key);
            let _ = std::fs::remove_file(self.chunk_path(key));
        }
        self.evicted
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
    }

    /// Number of chunks and bytes cached for one layer.
    pub(crate) fn layer_usage(&self, layer: &Digest) -> (u64, u64) {
        let d = self.disk.lock();
        d.lru
            .iter()
            .filter(|(k, _)| &k.layer == layer)
            .fold((0, 0), |(n, b), (_, len)| (n + 1, b + len))
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            stored_bytes: self.disk.lock().total,
            evicted_chunks: self.evicted.load(Ordering::Relaxed),
            corrupt_chunks: self.corrupt.load(Ordering::Relaxed),
        }
    }

    /// Claim the right to fill `keys`: keys nobody is fetching become ours
    /// (the guard releases them when dropped), the others are returned to
    /// wait on, so concurrent readers of one chunk fetch it once.
    pub(crate) fn claim(&self, keys: &[ChunkKey]) -> Claim<'_> {
        self.inflight.claim(keys)
    }

    /// Persist a named metadata blob (a layer index) atomically.
    pub fn store_index(&self, name: &str, data: &[u8]) -> Result<(), CacheError> {
        let path = self.root.join("index").join(name);
        file::write_atomic(&self.tmp_path(), &path, name.as_bytes(), data)
            .map_err(io_err(&path))?;
        Ok(())
    }

    /// A metadata blob if present and intact; a damaged one is deleted.
    pub fn load_index(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.root.join("index").join(name);
        match file::read_checked(&path, name.as_bytes()) {
            Ok(Some(d)) => Some(d),
            Ok(None) => {
                tracing::warn!(path = %path.display(), "index failed its checksum; it will be rebuilt");
                let _ = std::fs::remove_file(&path);
                None
            }
            Err(_) => None,
        }
    }

    /// A private area for chunks whose correctness is not yet known (a
    /// streaming pass before the layer digest is checked). Nothing in it is
    /// visible to `get` until `commit`; dropped uncommitted, it is deleted.
    pub(crate) fn staging(&self, layer: &Digest) -> Result<Staging<'_>, CacheError> {
        let dir = self.tmp_path();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Staging {
            cache: self,
            layer: layer.clone(),
            dir,
            ids: Vec::new(),
            committed: false,
        })
    }

    pub(crate) fn has_index(&self, name: &str) -> bool {
        self.root.join("index").join(name).exists()
    }
}

/// Chunk `id` of a [`Staging`] area that may be in use by another task:
/// `Ok(None)` if the file is damaged, `Err` (NotFound) once the area was
/// committed or thrown away.
pub(crate) fn read_staged(dir: &Path, key: &ChunkKey) -> std::io::Result<Option<Vec<u8>>> {
    file::read_checked(
        &dir.join(format!("{:016x}", key.id)),
        key.identity().as_bytes(),
    )
}

pub(crate) struct Staging<'a> {
    cache: &'a ChunkCache,
    layer: Digest,
    dir: PathBuf,
    ids: Vec<u64>,
    committed: bool,
}

impl Staging<'_> {
    /// Where staged chunk `id` is: `dir/{id:016x}`, a self-checking file
    /// ([`file::read_checked`]).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn put(&mut self, id: u64, data: &[u8]) -> std::io::Result<()> {
        let path = self.dir.join(format!("{id:016x}"));
        // The identity of the chunk it becomes at commit (a rename).
        let key = ChunkKey {
            layer: self.layer.clone(),
            id,
        };
        file::write_atomic(
            &path.with_extension("part"),
            &path,
            key.identity().as_bytes(),
            data,
        )?;
        self.ids.push(id);
        Ok(())
    }

    /// Move every staged chunk into the cache proper.
    pub(crate) fn commit(mut self) -> Result<(), CacheError> {
        let layer_dir = self.cache.root.join("chunks").join(self.layer.hex());
        std::fs::create_dir_all(&layer_dir).map_err(io_err(&layer_dir))?;
        for &id in &self.ids {
            let key = ChunkKey {
                layer: self.layer.clone(),
                id,
            };
            let from = self.dir.join(format!("{id:016x}"));
            let to = self.cache.chunk_path(&key);
            let len = std::fs::metadata(&from).map_err(io_err(&from))?.len();
            std::fs::rename(&from, &to).map_err(io_err(&to))?;
            let mut d = self.cache.disk.lock();
            if let Some(old) = d.lru.put(key, len) {
                d.total -= old;
            }
            d.total += len;
            drop(d);
            self.cache.evict_if_needed();
        }
        self.committed = true;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn key(id: u64) -> ChunkKey {
        ChunkKey {
            layer: Digest::of_bytes(b"layer"),
            id,
        }
    }

    #[test]
    fn put_get_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        c.put(&key(7), Bytes::from_static(b"seven")).unwrap();
        assert_eq!(c.get(&key(7)).unwrap(), &b"seven"[..]);
        assert!(c.get(&key(8)).is_none());
        drop(c);
        let c = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(c.get(&key(7)).unwrap(), &b"seven"[..]);
        assert_eq!(c.layer_usage(&key(7).layer).0, 1);
    }

    #[test]
    fn corrupt_or_torn_chunks_are_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        c.put(&key(1), Bytes::from(vec![1u8; 1000])).unwrap();
        c.put(&key(2), Bytes::from(vec![2u8; 1000])).unwrap();
        drop(c);
        // Flip one byte of chunk 1; cut chunk 2 short as a crash might.
        let p1 = dir
            .path()
            .join("chunks")
            .join(key(1).layer.hex())
            .join(format!("{:016x}", 1));
        let mut b = std::fs::read(&p1).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        std::fs::write(&p1, b).unwrap();
        let p2 = p1.with_file_name(format!("{:016x}", 2));
        let b = std::fs::read(&p2).unwrap();
        std::fs::write(&p2, &b[..b.len() / 2]).unwrap();
        // Stray temp file from a killed writer.
        std::fs::write(dir.path().join("tmp").join("dead"), b"partial").unwrap();

        let c = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        assert!(c.get(&key(1)).is_none());
        assert!(c.get(&key(2)).is_none());
        assert_eq!(c.stats().corrupt_chunks, 2);
        assert!(!p1.exists(), "a corrupt chunk is removed");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_chunk_file_in_another_chunks_place_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        let other = |id| ChunkKey {
            layer: Digest::of_bytes(b"other layer"),
            id,
        };
        c.put(&key(1), Bytes::from(vec![1u8; 1000])).unwrap();
        c.put(&key(2), Bytes::from(vec![2u8; 1000])).unwrap();
        c.put(&key(3), Bytes::from(vec![3u8; 1000])).unwrap();
        c.put(&other(3), Bytes::from(vec![9u8; 1000])).unwrap();
        drop(c);
        let file = |k: &ChunkKey| {
            dir.path()
                .join("chunks")
                .join(k.layer.hex())
                .join(format!("{:016x}", k.id))
        };
        // Swap chunks 1 and 2; copy the other layer's chunk 3 over ours.
        let tmp = dir.path().join("swap");
        std::fs::rename(file(&key(1)), &tmp).unwrap();
        std::fs::rename(file(&key(2)), file(&key(1))).unwrap();
        std::fs::rename(&tmp, file(&key(2))).unwrap();
        std::fs::copy(file(&other(3)), file(&key(3))).unwrap();
        let c = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        for id in 1..=3 {
            assert!(
                c.get(&key(id)).is_none(),
                "chunk {id} served from another's file"
            );
            let mut out = Vec::new();
            assert!(!c.get_into(&key(id), &mut out) && out.is_empty());
        }
        assert_eq!(c.get(&other(3)).unwrap(), &vec![9u8; 1000][..]);
        assert_eq!(c.stats().corrupt_chunks, 3);
        // The same for indexes: one renamed over another is refused.
        c.store_index("a.idx", b"index a").unwrap();
        c.store_index("b.idx", b"index b").unwrap();
        let idx = dir.path().join("index");
        std::fs::copy(idx.join("a.idx"), idx.join("b.idx")).unwrap();
        assert!(c.load_index("b.idx").is_none());
        assert_eq!(c.load_index("a.idx").unwrap(), b"index a");
    }

    #[test]
    fn get_into_appends_only_intact_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        c.put(&key(1), Bytes::from(vec![1u8; 1000])).unwrap();
        c.put(&key(2), Bytes::from(vec![2u8; 500])).unwrap();
        drop(c);
        // Reopened: nothing in the hot set, both come from their files.
        let c = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        let mut out = b"head".to_vec();
        assert!(c.get_into(&key(1), &mut out));
        assert!(c.get_into(&key(2), &mut out));
        assert!(!c.get_into(&key(3), &mut out));
        assert_eq!(out.len(), 4 + 1000 + 500);
        assert!(out[4..1004].iter().all(|&b| b == 1) && out[1004..].iter().all(|&b| b == 2));
        // A damaged file leaves `out` alone and is dropped from the cache.
        let p = dir
            .path()
            .join("chunks")
            .join(key(1).layer.hex())
            .join(format!("{:016x}", 1));
        let mut b = std::fs::read(&p).unwrap();
        b[100] ^= 1;
        std::fs::write(&p, b).unwrap();
        let c = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        let mut out = b"head".to_vec();
        assert!(!c.get_into(&key(1), &mut out));
        assert_eq!(out, b"head");
        assert_eq!(c.stats().corrupt_chunks, 1);
        assert!(!c.contains(&key(1)));
    }

    #[test]
    fn evicts_least_recently_used_beyond_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(dir.path(), 10_000).unwrap();
        for i in 0..4 {
            c.put(&key(i), Bytes::from(vec![i as u8; 3000])).unwrap();
            if i == 2 {
                // Touch 0 so 1 is the coldest when the fourth put overflows.
                c.hot.lock().clear();
                assert!(c.get(&key(0)).is_some());
            }
        }
        assert!(c.stats().stored_bytes <= 10_000);
        assert!(!c.contains(&key(1)), "coldest chunk evicted");
        assert!(c.get(&key(0)).is_some());
        assert!(c.get(&key(3)).is_some());
    }

    #[test]
    fn staged_chunks_appear_only_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        let mut s = c.staging(&key(0).layer).unwrap();
        s.put(0, b"zero").unwrap();
        s.put(1, b"one").unwrap();
        assert!(c.get(&key(0)).is_none());
        s.commit().unwrap();
        assert_eq!(c.get(&key(1)).unwrap(), &b"one"[..]);

        let mut s = c.staging(&key(0).layer).unwrap();
        s.put(5, b"five").unwrap();
        drop(s);
        assert!(c.get(&key(5)).is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn index_blobs_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        c.store_index("x.idx", b"index body").unwrap();
        assert_eq!(c.load_index("x.idx").unwrap(), b"index body");
        let p = dir.path().join("index/x.idx");
        let mut b = std::fs::read(&p).unwrap();
        b[20] ^= 1;
        std::fs::write(&p, b).unwrap();
        assert!(c.load_index("x.idx").is_none());
        assert!(!c.has_index("x.idx"));
    }
}
