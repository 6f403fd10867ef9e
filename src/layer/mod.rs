//! Layer formats: how a layer blob's bytes become a table of tar entries plus
//! a format-specific index that says which blob bytes hold a file's data.
//!
//! - `gzip` (zran checkpoints over the one gzip stream) via [`zran`],
//! - `estargz` (per-file gzip members located by a TOC) via [`estargz`],
//! - `zstd` (one or more zstd frames over the tar) via [`zstd`],
//! - `zstd:chunked` (per-file zstd frames located by a manifest) via
//!   [`zstd_chunked`], sharing its TOC code with eStargz ([`toc`]),
//! - uncompressed `tar`.
//!
//! Everything here is pure: no network and no cache. The view drives fetching.

pub(crate) mod estargz;
pub(crate) mod format;
mod gzip;
pub mod index;
mod tar;
pub use tar::TarChunks;
pub(crate) mod tar_entries;
pub(crate) mod toc;
pub mod zran;
pub(crate) mod zstd;
pub(crate) mod zstd_chunked;

use serde::{Deserialize, Serialize};

/// The kind of a tar entry, after PAX/GNU extensions are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A hard link to `Entry::link_target`, a path in this or a lower layer.
    Hardlink,
    CharDevice,
    BlockDevice,
    Fifo,
}

/// One entry of a layer's tar stream (or eStargz TOC), with the location of
/// its data. Paths are normalised: no leading `/` or `./`, no trailing `/`;
/// the layer root itself is the empty path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path within the layer, normalised as described above (`""` for the layer root).
    pub path: String,
    pub(crate) kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (the low 12 bits).
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: i64,
    pub(crate) size: u64,
    /// Symlink target, or the path a hard link points to (normalised).
    pub(crate) link_target: Option<String>,
    pub(crate) xattrs: Vec<(String, Vec<u8>)>,
    pub(crate) dev_major: u32,
    pub(crate) dev_minor: u32,
    /// Where the data lives, meaning depends on the format: for gzip and tar
    /// the offset of the first data byte in the uncompressed stream; for
    /// eStargz the index of the file's first chunk in the layer's chunk table.
    pub(crate) data: u64,
}

impl Entry {
    pub(crate) fn new(path: String, kind: EntryKind) -> Self {
        Entry {
            path,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            link_target: None,
            xattrs: Vec::new(),
            dev_major: 0,
            dev_minor: 0,
            data: 0,
        }
    }
}

/// Normalise a path from a tar header or TOC: strip `./` and `/` prefixes and
/// trailing slashes, drop `.` components. Returns `None` for paths that climb
/// out of the root with `..`, which an image must never be allowed to do.
pub(crate) fn normalize_path(raw: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for comp in raw.split('/') {
        match comp {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Media types of layers, and what we do with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LayerFormat {
    Gzip,
    Estargz,
    Tar,
    Zstd,
    ZstdChunked,
}

impl std::fmt::Display for LayerFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LayerFormat::Gzip => "gzip",
            LayerFormat::Estargz => "estargz",
            LayerFormat::Tar => "tar",
            LayerFormat::Zstd => "zstd",
            LayerFormat::ZstdChunked => "zstd:chunked",
        })
    }
}

/// Why a layer cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The layer's media type is not one lazyboot can read; the text is that media type.
    #[error("unsupported layer media type {0:?} (lazyboot reads gzip, eStargz, zstd and uncompressed tar layers)")]
    Unsupported(String),
}

/// Classify a layer by media type. eStargz is a gzip layer with a footer, and
/// zstd:chunked a zstd one, so a gzip or zstd answer is refined later by
/// probing the footer (see `image::build`).
pub(crate) fn format_from_media_type(media_type: &str) -> Result<LayerFormat, FormatError> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(LayerFormat::Gzip),
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(LayerFormat::Tar),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Ok(LayerFormat::Zstd),
        other => Err(FormatError::Unsupported(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_tar_paths() {
        assert_eq!(
            normalize_path("./etc/passwd").as_deref(),
            Some("etc/passwd")
        );
        assert_eq!(normalize_path("/usr/bin/").as_deref(), Some("usr/bin"));
        assert_eq!(normalize_path("./").as_deref(), Some(""));
        assert_eq!(normalize_path("a/./b").as_deref(), Some("a/b"));
        assert_eq!(normalize_path("../etc/shadow"), None);
        assert_eq!(normalize_path("a/../../b"), None);
    }

    #[test]
    fn knows_formats_by_media_type_and_refuses_encrypted_ones() {
        assert_eq!(
            format_from_media_type("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            LayerFormat::Zstd
        );
        let err = format_from_media_type("application/vnd.oci.image.layer.v1.tar+gzip+encrypted")
            .unwrap_err();
        assert!(err.to_string().contains("encrypted"), "{err}");
        assert_eq!(
            format_from_media_type("application/vnd.oci.image.layer.v1.tar").unwrap(),
            LayerFormat::Tar
        );
    }
}
