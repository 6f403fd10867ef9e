//! Record everything observable about a directory tree and compare two trees.
//!
//! Paths are keyed relative to the walked root but written with a leading
//! slash, as seen from inside the image: the root itself is `/`, a file
//! directly below it is `/etc`, and so on. Names that are not UTF-8 are
//! written with `\xNN` escapes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Socket,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Kind::Dir => "directory",
            Kind::File => "regular file",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::CharDev => "char device",
            Kind::BlockDev => "block device",
            Kind::Socket => "socket",
        };
        f.write_str(s)
    }
}

/// Everything recorded about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files only.
    pub size: Option<u64>,
    /// Hex sha256 of the content, regular files only.
    pub sha256: Option<String>,
    /// Symlinks only.
    pub symlink_target: Option<String>,
    /// (major, minor), character and block devices only.
    pub rdev: Option<(u32, u32)>,
    /// Every extended attribute (`user.*`, `security.*`, `trusted.*`, ...).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// For non-directories whose inode appears under more than one path in the
    /// tree: all those paths, sorted (this path included). `None` otherwise.
    pub hardlinks: Option<Vec<String>>,
    pub nlink: u64,
    /// Modification time, seconds.
    pub mtime: i64,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }
    pub fn xattr(&self, name: &str) -> Option<&[u8]> {
        self.xattrs.get(name).map(|v| v.as_slice())
    }
}

/// A recorded tree.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Used in difference messages to tell the two sides apart.
    pub label: String,
    pub root: PathBuf,
    pub entries: BTreeMap<String, Entry>,
}

impl Snapshot {
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Like [`Snapshot::get`] but panics with a readable message.
    pub fn entry(&self, path: &str) -> &Entry {
        self.entries
            .get(path)
            .unwrap_or_else(|| panic!("{}: no {path} in snapshot", self.label))
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Number of regular files, directories, ... (for quick summaries).
    pub fn count(&self, kind: Kind) -> usize {
        self.entries.values().filter(|e| e.kind == kind).count()
    }
}

/// What [`compare_with`] looks at. [`Default`] compares everything except the
/// link count of directories (which differs between filesystems).
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Compare mtimes of non-directories.
    pub compare_mtime: bool,
    /// Compare mtimes of directories (only if `compare_mtime` is set too).
    pub compare_dir_mtime: bool,
    /// Compare `st_nlink` of non-directories.
    pub compare_nlink: bool,
    /// Compare `st_nlink` of directories.
    pub compare_dir_nlink: bool,
    /// Xattrs whose name starts with one of these are ignored on both sides.
    pub ignore_xattr_prefixes: Vec<String>,
    /// These paths and everything below them are ignored on both sides.
    pub ignore_paths: Vec<String>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            compare_mtime: true,
            compare_dir_mtime: true,
            compare_nlink: true,
            compare_dir_nlink: false,
            ignore_xattr_prefixes: Vec::new(),
            ignore_paths: Vec::new(),
        }
    }
}

impl CompareOptions {
    pub fn without_mtime() -> Self {
        CompareOptions {
            compare_mtime: false,
            ..Default::default()
        }
    }
}

/// Walk `root` (never following symlinks) and record every path below it.
pub fn snapshot(root: &Path) -> Result<Snapshot> {
    let meta = fs::symlink_metadata(root).with_context(|| format!("lstat {}", root.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let mut entries = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    walk(root, "/", &meta, &mut entries, &mut inodes)?;
    for paths in inodes.values() {
        if paths.len() > 1 {
            let mut group = paths.clone();
            group.sort();
            for p in paths {
                entries.get_mut(p).unwrap().hardlinks = Some(group.clone());
            }
        }
    }
    Ok(Snapshot {
        label: root.display().to_string(),
        root: root.to_path_buf(),
        entries,
    })
}

fn walk(
    path: &Path,
    rel: &str,
    meta: &fs::Metadata,
    entries: &mut BTreeMap<String, Entry>,
    inodes: &mut HashMap<(u64, u64), Vec<String>>,
) -> Result<()> {
    let entry = record(path, meta).with_context(|| format!("recording {}", path.display()))?;
    let is_dir = entry.kind == Kind::Dir;
    if !is_dir {
        inodes
            .entry((meta.dev(), meta.ino()))
            .or_default()
            .push(rel.to_string());
    }
    entries.insert(rel.to_string(), entry);
    if is_dir {
        let mut children = Vec::new();
        for d in fs::read_dir(path).with_context(|| format!("readdir {}", path.display()))? {
            let d = d.with_context(|| format!("readdir {}", path.display()))?;
            children.push(d.file_name());
        }
        children.sort();
        for name in children {
            let child = path.join(&name);
            let child_rel = if rel == "/" {
                format!("/{}", escape(name.as_bytes()))
            } else {
                format!("{rel}/{}", escape(name.as_bytes()))
            };
            let child_meta = fs::symlink_metadata(&child)
                .with_context(|| format!("lstat {}", child.display()))?;
            walk(&child, &child_rel, &child_meta, entries, inodes)?;
        }
    }
    Ok(())
}

fn record(path: &Path, meta: &fs::Metadata) -> Result<Entry> {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::CharDev
    } else if ft.is_block_device() {
        Kind::BlockDev
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        bail!("unknown file type {:o}", meta.mode());
    };
    let (size, sha256) = if kind == Kind::File {
        (Some(meta.len()), Some(sha256_file(path)?))
    } else {
        (None, None)
    };
    let symlink_target = if kind == Kind::Symlink {
        Some(escape(fs::read_link(path)?.as_os_str().as_bytes()))
    } else {
        None
    };
    let rdev = if matches!(kind, Kind::CharDev | Kind::BlockDev) {
        Some(dev_major_minor(meta.rdev()))
    } else {
        None
    };
    Ok(Entry {
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size,
        sha256,
        symlink_target,
        rdev,
        xattrs: xattrs(path)?,
        hardlinks: None,
        nlink: meta.nlink(),
        mtime: meta.mtime(),
    })
}

/// glibc's encoding of `dev_t`.
pub fn dev_major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn cpath(path: &Path) -> Result<CString> {
    Ok(CString::new(path.as_os_str().as_bytes())?)
}

fn xattr_unsupported(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOTSUP) | Some(libc::ENODATA) | Some(libc::ENOSYS)
    )
}

/// All extended attributes of `path` itself (not following symlinks).
pub fn xattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let c = cpath(path)?;
    let mut out = BTreeMap::new();
    let names = loop {
        // SAFETY: size query with a null buffer.
        let len = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            let err = std::io::Error::last_os_error();
            if xattr_unsupported(&err) {
                return Ok(out);
            }
            return Err(err).with_context(|| format!("llistxattr {}", path.display()));
        }
        if len == 0 {
            return Ok(out);
        }
        let mut buf = vec![0u8; len as usize];
        // SAFETY: buf is valid for buf.len() bytes.
        let got = unsafe {
            libc::llistxattr(c.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len())
        };
        if got < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ERANGE) {
                continue; // grew in between
            }
            return Err(err).with_context(|| format!("llistxattr {}", path.display()));
        }
        buf.truncate(got as usize);
        break buf;
    };
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name)?;
        let value = loop {
            // SAFETY: size query with a null buffer.
            let len =
                unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
            if len < 0 {
                let err = std::io::Error::last_os_error();
                return Err(err)
                    .with_context(|| format!("lgetxattr {} {}", path.display(), escape(name)));
            }
            let mut buf = vec![0u8; len as usize];
            // SAFETY: buf is valid for buf.len() bytes.
            let got = unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            };
            if got < 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::ERANGE) {
                    continue;
                }
                return Err(err)
                    .with_context(|| format!("lgetxattr {} {}", path.display(), escape(name)));
            }
            buf.truncate(got as usize);
            break buf;
        };
        out.insert(escape(name), value);
    }
    Ok(out)
}

/// UTF-8 as is, other bytes as `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut out = String::new();
            for chunk in bytes.utf8_chunks() {
                out.push_str(chunk.valid());
                for b in chunk.invalid() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            out
        }
    }
}

/// Render an xattr value for humans.
pub fn show_bytes(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if !s.chars().any(|c| c.is_control()) => format!("{s:?}"),
        _ => format!("0x{}", hex::encode(v)),
    }
}

/// Differences with the default options (mtimes compared). Empty = equal.
pub fn compare(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    compare_with(a, b, &CompareOptions::default())
}

/// Human-readable differences between two snapshots. Empty = equal.
pub fn compare_with(a: &Snapshot, b: &Snapshot, opts: &CompareOptions) -> Vec<String> {
    let ignored = |p: &str| {
        opts.ignore_paths.iter().any(|i| {
            let i = i.trim_end_matches('/');
            p == i || (p.starts_with(i) && p.as_bytes().get(i.len()) == Some(&b'/'))
        })
    };
    let mut out = Vec::new();
    out.extend(only_in(a, b, &ignored));
    out.extend(only_in(b, a, &ignored));
    for (path, ea) in &a.entries {
        if ignored(path) {
            continue;
        }
        let Some(eb) = b.entries.get(path) else {
            continue;
        };
        diff_entry(path, ea, eb, &a.label, &b.label, opts, &mut out);
    }
    out.sort();
    out
}

/// Paths of `x` missing from `y`, collapsed under the topmost missing dir.
fn only_in(x: &Snapshot, y: &Snapshot, ignored: &dyn Fn(&str) -> bool) -> Vec<String> {
    let missing: BTreeSet<&str> = x
        .entries
        .keys()
        .filter(|p| !y.entries.contains_key(*p) && !ignored(p))
        .map(|s| s.as_str())
        .collect();
    let mut below: BTreeMap<&str, usize> = BTreeMap::new();
    let mut tops = Vec::new();
    for p in &missing {
        let mut top = None;
        let mut cur = *p;
        while let Some(i) = cur.rfind('/') {
            cur = if i == 0 { "/" } else { &cur[..i] };
            if missing.contains(cur) {
                top = Some(cur);
            }
            if cur == "/" {
                break;
            }
        }
        match top {
            Some(t) => *below.entry(t).or_default() += 1,
            None => tops.push(*p),
        }
    }
    tops.into_iter()
        .map(|p| {
            let e = &x.entries[p];
            let extra = match below.get(p) {
                Some(n) => format!(" (and {n} paths below it)"),
                None => String::new(),
            };
            format!(
                "{p}: only in {} ({}){extra}; missing in {}",
                x.label, e.kind, y.label
            )
        })
        .collect()
}

fn diff_entry(
    path: &str,
    a: &Entry,
    b: &Entry,
    la: &str,
    lb: &str,
    opts: &CompareOptions,
    out: &mut Vec<String>,
) {
    let mut field = |name: &str, va: String, vb: String| {
        if va != vb {
            out.push(format!(
                "{path}: {name} differs: {va} ({la}) vs {vb} ({lb})"
            ));
        }
    };
    if a.kind != b.kind {
        field("file type", a.kind.to_string(), b.kind.to_string());
        return;
    }
    field("mode", format!("{:04o}", a.mode), format!("{:04o}", b.mode));
    field("uid", a.uid.to_string(), b.uid.to_string());
    field("gid", a.gid.to_string(), b.gid.to_string());
    field("size", format!("{:?}", a.size), format!("{:?}", b.size));
    field(
        "sha256",
        a.sha256.clone().unwrap_or_default(),
        b.sha256.clone().unwrap_or_default(),
    );
    field(
        "symlink target",
        format!("{:?}", a.symlink_target),
        format!("{:?}", b.symlink_target),
    );
    field(
        "rdev (major, minor)",
        format!("{:?}", a.rdev),
        format!("{:?}", b.rdev),
    );
    field(
        "hard link group",
        format!("{:?}", a.hardlinks),
        format!("{:?}", b.hardlinks),
    );
    let check_nlink = if a.is_dir() {
        opts.compare_dir_nlink
    } else {
        opts.compare_nlink
    };
    if check_nlink {
        field("nlink", a.nlink.to_string(), b.nlink.to_string());
    }
    if opts.compare_mtime && (!a.is_dir() || opts.compare_dir_mtime) {
        field("mtime", a.mtime.to_string(), b.mtime.to_string());
    }
    let keep = |k: &String| !opts.ignore_xattr_prefixes.iter().any(|p| k.starts_with(p));
    let names: BTreeSet<&String> = a
        .xattrs
        .keys()
        .chain(b.xattrs.keys())
        .filter(|k| keep(k))
        .collect();
    for name in names {
        let show = |v: Option<&Vec<u8>>| {
            v.map(|v| show_bytes(v))
                .unwrap_or_else(|| "<absent>".into())
        };
        field(
            &format!("xattr {name}"),
            show(a.xattrs.get(name)),
            show(b.xattrs.get(name)),
        );
    }
}

/// Panic with every difference listed if the snapshots differ.
pub fn assert_same(a: &Snapshot, b: &Snapshot, opts: &CompareOptions) {
    let diffs = compare_with(a, b, opts);
    if !diffs.is_empty() {
        let shown: Vec<&String> = diffs.iter().take(200).collect();
        panic!(
            "{} vs {}: {} differences:\n  {}{}",
            a.label,
            b.label,
            diffs.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  "),
            if diffs.len() > shown.len() {
                "\n  ..."
            } else {
                ""
            }
        );
    }
}

/// Convenience for callers that have an `OsStr` path component.
pub fn escape_os(s: &OsStr) -> String {
    escape(s.as_bytes())
}
