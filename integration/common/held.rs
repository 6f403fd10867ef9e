//! An image whose first layer's streaming pass can be caught in the
//! middle, for the tests of what lazyboot serves before a pass ends
//! (integration/progressive.rs).
//!
//! [`held`] pushes [`build_image`]'s image to a fresh registry behind a
//! [`Gate`], a proxy that holds the base layer's body after half of it
//! until released.

use super::gate::Gate;
use super::mount::Mount;
use super::Registry;
use anyhow::Result;
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Size of the big file in the middle of the base layer.
pub const BIG: usize = 24 << 20;
/// Longer than any answer from what is already known takes; short enough
/// to keep the test quick. Only "still waiting" is judged with it.
pub const PENDING: Duration = Duration::from_secs(3);
pub const DONE: Duration = Duration::from_secs(60);

pub fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// Deterministic incompressible bytes (xorshift64*).
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub enum Item<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    /// A hard link (path, target).
    Link(&'a str, &'a str),
}

pub fn tar_of(items: &[Item]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for item in items {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match item {
            Item::Dir(path, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                h.set_cksum();
                b.append_data(&mut h, path, std::io::empty())?;
            }
            Item::File(path, mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append_data(&mut h, path, *data)?;
            }
            Item::Link(path, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                h.set_link_name(target)?;
                h.set_cksum();
                b.append_data(&mut h, path, std::io::empty())?;
            }
        }
    }
    Ok(b.into_inner()?)
}

/// Write `blob` into the layout; returns its descriptor fields.
pub fn put_blob(layout: &Path, blob: &[u8]) -> Result<(String, usize)> {
    let hex = sha256_hex(blob);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(&hex), blob)?;
    Ok((format!("sha256:{hex}"), blob.len()))
}

/// An OCI layout with one image of gzip layers made from `tars` (lowest
/// first), tagged `t`. Returns the layer digests.
pub fn write_layout(layout: &Path, tars: &[Vec<u8>]) -> Result<Vec<String>> {
    std::fs::create_dir_all(layout)?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for t in tars {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(t)?;
        let (digest, size) = put_blob(layout, &gz.finish()?)?;
        diff_ids.push(format!("sha256:{}", sha256_hex(t)));
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": size,
        }));
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (cdigest, csize) = put_blob(layout, &serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cdigest, "size": csize},
        "layers": layers,
    });
    let (mdigest, msize) = put_blob(layout, &serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": mdigest, "size": msize,
                       "annotations": {"org.opencontainers.image.ref.name": "t"}}],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect())
}

pub struct Image {
    _tmp: tempfile::TempDir,
    pub layout: PathBuf,
    /// The big base layer (the one held) and its compressed size.
    pub base: (String, u64),
    pub big: Vec<u8>,
}

/// Base layer: small files, then 24 MiB of noise, then one more file; a
/// small top layer deletes one base file by whiteout and adds one.
pub fn build_image() -> Result<Image> {
    let tmp = tempfile::tempdir()?;
    let layout = tmp.path().join("layout");
    let big = noise(BIG, 0x5eed);
    let base = tar_of(&[
        Item::Dir("./", 0o751),
        Item::Dir("etc/", 0o755),
        Item::File("etc/early.txt", 0o644, b"read me while the pass runs\n"),
        Item::Link("etc/early-link.txt", "etc/early.txt"),
        Item::File("etc/gone.txt", 0o600, b"deleted by the top layer\n"),
        Item::Dir("big/", 0o750),
        Item::File("big/blob.bin", 0o644, &big),
        Item::File("zz-late.txt", 0o644, b"after the big file\n"),
    ])?;
    let top = tar_of(&[
        Item::Dir("etc/", 0o755),
        Item::File("etc/.wh.gone.txt", 0o644, b""),
        Item::File("etc/top.txt", 0o640, b"from the top layer\n"),
    ])?;
    let digests = write_layout(&layout, &[base, top])?;
    let size = std::fs::metadata(layout.join("blobs/sha256").join(&digests[0][7..]))?.len();
    Ok(Image {
        _tmp: tmp,
        layout,
        base: (digests[0].clone(), size),
        big,
    })
}

/// Run `f` on a thread; its result if it finishes within `within`.
pub struct Pending<T> {
    rx: mpsc::Receiver<T>,
}

pub fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Pending<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    Pending { rx }
}

impl<T> Pending<T> {
    pub fn within(&self, d: Duration) -> Option<T> {
        self.rx.recv_timeout(d).ok()
    }
}

/// The image pushed to a fresh registry as `repo:t` behind a [`Gate`] that
/// holds the base layer's stream after half of it; `damage` flips bytes of
/// the registry's copy three quarters in, past the hold point.
pub struct Held {
    pub img: Image,
    _reg: Registry,
    pub gate: Gate,
    pub tmp: tempfile::TempDir,
    pub reference: String,
    pub base: String,
}

pub fn held(repo: &str, damage: bool) -> Result<Held> {
    let img = build_image()?;
    let reg = Registry::start()?;
    super::push(&img.layout, "t", &reg, &format!("{repo}:t"))?;
    let (base, size) = img.base.clone();
    if damage {
        let blob = reg.blob_path(&base);
        let mut bad = std::fs::read(&blob)?;
        let at = bad.len() * 3 / 4;
        for b in &mut bad[at..at + 64] {
            *b ^= 0x5a;
        }
        std::fs::write(&blob, &bad)?;
    }
    let gate = Gate::start(&reg.addr)?;
    gate.hold(&base, size / 2);
    let reference = gate.reference(&format!("{repo}:t"));
    Ok(Held {
        img,
        _reg: reg,
        gate,
        tmp: tempfile::tempdir()?,
        reference,
        base,
    })
}

impl Held {
    pub fn cache(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    /// `lazyboot mount` of the image, as soon as it says it is mounted.
    pub fn mount(&self, extra: &[&str]) -> Result<Mount> {
        Mount::start(
            &self.reference,
            &self.cache(),
            &self.tmp.path().join("mnt"),
            extra,
        )
    }
}
