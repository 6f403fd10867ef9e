//! Test helper: tiny OCI image layouts written to disk, so tests get a real
//! [`ImageView`] (indexes, cache, read path) without a registry.
//!
//! ```ignore
//! let mut l = LayerBuilder::new();
//! l.dir("etc", 0o755).file("etc/hostname", 0o644, b"node\n");
//! let img = TestImage::new(&[l.finish()]);
//! let view = img.view().await;
//! ```

use crate::image::{ImageView, ViewOptions};
use crate::progress::Progress;
use crate::registry::RegistryOptions;
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Modification time of every entry the builder writes.
pub(crate) const MTIME: u64 = 1_700_000_000;

/// One gzip tar layer, entry by entry. Owners default to 0:0; use
/// [`LayerBuilder::owner`] to change them for the following entries.
pub(crate) struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
    uid: u64,
    gid: u64,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub(crate) fn new() -> Self {
        LayerBuilder {
            tar: tar::Builder::new(Vec::new()),
            uid: 0,
            gid: 0,
        }
    }

    /// Owner of the entries added from now on.
    pub(crate) fn owner(&mut self, uid: u64, gid: u64) -> &mut Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_mtime(MTIME);
        h.set_size(size);
        h
    }

    pub(crate) fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = self.header(tar::EntryType::Directory, mode, 0);
        self.tar
            .append_data(&mut h, format!("{path}/"), std::io::empty())
            .expect("tar dir");
        self
    }

    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.file_with_xattrs(path, mode, data, &[])
    }

    /// A regular file with extended attributes (PAX `SCHILY.xattr.*`).
    pub(crate) fn file_with_xattrs(
        &mut self,
        path: &str,
        mode: u32,
        data: &[u8],
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        if !xattrs.is_empty() {
            let keys: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                .collect();
            self.tar
                .append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))
                .expect("pax");
        }
        let mut h = self.header(tar::EntryType::Regular, mode, data.len() as u64);
        self.tar.append_data(&mut h, path, data).expect("tar file");
        self
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = self.header(tar::EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut h, path, target)
            .expect("tar symlink");
        self
    }

    /// A hard link `path` to the earlier entry `target`.
    pub(crate) fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = self.header(tar::EntryType::Link, 0o644, 0);
        self.tar
            .append_link(&mut h, path, target)
            .expect("tar hardlink");
        self
    }

    pub(crate) fn char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        self.device(tar::EntryType::Char, path, mode, major, minor)
    }

    pub(crate) fn block_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        self.device(tar::EntryType::Block, path, mode, major, minor)
    }

    pub(crate) fn fifo(&mut self, path: &str, mode: u32) -> &mut Self {
        self.device(tar::EntryType::Fifo, path, mode, 0, 0)
    }

    fn device(
        &mut self,
        kind: tar::EntryType,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut h = self.header(kind, mode, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.tar
            .append_data(&mut h, path, std::io::empty())
            .expect("tar device");
        self
    }

    /// An OCI whiteout for `path` (hides it in lower layers).
    pub(crate) fn whiteout(&mut self, path: &str) -> &mut Self {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, 0o644, b"")
    }

    /// The layer as (gzip blob, uncompressed tar).
    pub(crate) fn finish(self) -> Layer {
        let tar = self.tar.into_inner().expect("tar finish");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).expect("gzip");
        Layer {
            gzip: gz.finish().expect("gzip finish"),
            tar,
        }
    }
}

pub(crate) struct Layer {
    pub(crate) gzip: Vec<u8>,
    pub(crate) tar: Vec<u8>,
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Write an OCI image layout with one image tagged `tag` into `dir`.
/// Returns the image reference (`oci:DIR:TAG`).
pub(crate) fn write_layout(dir: &Path, tag: &str, layers: &[Layer]) -> String {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).expect("blobs dir");
    let put = |data: &[u8]| -> (String, usize) {
        let hex = sha256_hex(data);
        std::fs::write(blobs.join(&hex), data).expect("blob");
        (format!("sha256:{hex}"), data.len())
    };
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("\"sha256:{}\"", sha256_hex(&l.tar)))
        .collect();
    let config = format!(
        r#"{{"architecture":"{}","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        host_arch(),
        diff_ids.join(",")
    );
    let (config_digest, config_size) = put(config.as_bytes());
    let layer_descs: Vec<String> = layers
        .iter()
        .map(|l| {
            let (d, s) = put(&l.gzip);
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{s}}}"#
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{}]}}"#,
        layer_descs.join(",")
    );
    let (manifest_digest, manifest_size) = put(manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#
    );
    std::fs::write(dir.join("index.json"), index).expect("index.json");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    format!("oci:{}:{tag}", dir.display())
}

/// Open `reference` with a chunk cache in `cache_dir`.
pub(crate) async fn open_view(reference: &str, cache_dir: &Path) -> Arc<ImageView> {
    let opts = ViewOptions {
        cache_dir: cache_dir.to_path_buf(),
        cache_size: 1 << 30,
        registry: RegistryOptions::default(),
        read_timeout: Duration::from_secs(30),
    };
    let reference = reference.parse().expect("reference");
    crate::image::open(&reference, &opts, &Progress::hidden())
        .await
        .expect("open view")
}

/// A layout in its own temporary directory (layout in `oci/`, a chunk
/// cache in `cache/`, and room for state in `state/`).
pub(crate) struct TestImage {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) reference: String,
}

impl TestImage {
    pub(crate) fn new(layers: &[Layer]) -> TestImage {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = tmp.path().join("oci");
        let reference = write_layout(&layout, "t", layers);
        TestImage { tmp, reference }
    }

    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    pub(crate) async fn view(&self) -> Arc<ImageView> {
        open_view(&self.reference, &self.cache_dir()).await
    }
}
