//! `lazyboot mount` while a layer's streaming pass is still running: files
//! the stream has passed are readable, nothing not yet known for sure is
//! answered (a name hidden by an upper layer's whiteout, a listing, a name
//! the stream has not reached), and a digest mismatch found at the end of
//! the pass ends the mount with EIO and an error, caching nothing.
//!
//! The pass is caught mid-layer by [`Gate`], a proxy that holds the blob's
//! body after half of it until released.

mod common;

use anyhow::{Context, Result};
use common::gate::Gate;
use common::mount::Mount;
use common::{compare_with, snapshot, CompareOptions, Registry};
use sha2::{Digest as _, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

const TOOLS: &[&str] = &["fusermount3"];
const BIG: usize = 24 << 20;
/// Longer than any answer from what is already known takes; short enough
/// to keep the test quick. Only "still waiting" is judged with it.
const PENDING: Duration = Duration::from_secs(3);
const DONE: Duration = Duration::from_secs(60);

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// Deterministic incompressible bytes (xorshift64*).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
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

enum Item<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    /// A hard link (path, target).
    Link(&'a str, &'a str),
}

fn tar_of(items: &[Item]) -> Result<Vec<u8>> {
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
fn put_blob(layout: &Path, blob: &[u8]) -> Result<(String, usize)> {
    let hex = sha256_hex(blob);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(&hex), blob)?;
    Ok((format!("sha256:{hex}"), blob.len()))
}

/// An OCI layout with one image of gzip layers made from `tars` (lowest
/// first), tagged `t`. Returns the layer digests.
fn write_layout(layout: &Path, tars: &[Vec<u8>]) -> Result<Vec<String>> {
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

struct Image {
    _tmp: tempfile::TempDir,
    layout: PathBuf,
    /// The big base layer (the one held) and its compressed size.
    base: (String, u64),
    big: Vec<u8>,
}

/// Base layer: small files, then 24 MiB of noise, then one more file; a
/// small top layer deletes one base file by whiteout and adds one.
fn build_image() -> Result<Image> {
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
struct Pending<T> {
    rx: mpsc::Receiver<T>,
}

fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Pending<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    Pending { rx }
}

impl<T> Pending<T> {
    fn within(&self, d: Duration) -> Option<T> {
        self.rx.recv_timeout(d).ok()
    }
}

fn read_range(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// The image pushed to a fresh registry as `repo:t` behind a [`Gate`] that
/// holds the base layer's stream after half of it; `damage` flips bytes of
/// the registry's copy three quarters in, past the hold point.
struct Held {
    img: Image,
    _reg: Registry,
    gate: Gate,
    tmp: tempfile::TempDir,
    reference: String,
    base: String,
}

fn held(repo: &str, damage: bool) -> Result<Held> {
    let img = build_image()?;
    let reg = Registry::start()?;
    common::push(&img.layout, "t", &reg, &format!("{repo}:t"))?;
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
    fn cache(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    /// `lazyboot mount` of the image, as soon as it says it is mounted.
    fn mount(&self, extra: &[&str]) -> Result<Mount> {
        Mount::start(
            &self.reference,
            &self.cache(),
            &self.tmp.path().join("mnt"),
            extra,
        )
    }
}

#[test]
fn files_the_pass_has_passed_are_served_before_it_ends() -> Result<()> {
    if !common::require_root_and_tools("files_the_pass_has_passed_are_served", TOOLS) {
        return Ok(());
    }
    let h = held("prog/img", false)?;
    let (img, gate, base, cache) = (&h.img, &h.gate, &h.base, h.cache());
    let m = h.mount(&["--no-background-fill", "--read-timeout", "120"])?;
    gate.wait_held(DONE)?;
    let dir = m.dir.clone();

    // Served while the pass is held mid-layer: a file the stream passed,
    // a file of the complete top layer, the start of the big file.
    let early = spawn({
        let d = dir.clone();
        move || std::fs::read(d.join("etc/early.txt"))
    });
    assert_eq!(
        early.within(DONE).context("etc/early.txt never came")??,
        b"read me while the pass runs\n"
    );
    let top = spawn({
        let d = dir.clone();
        move || std::fs::read(d.join("etc/top.txt"))
    });
    assert_eq!(
        top.within(DONE).context("etc/top.txt never came")??,
        b"from the top layer\n"
    );
    let head = spawn({
        let d = dir.clone();
        move || read_range(&d.join("big/blob.bin"), 0, 1 << 20)
    });
    assert_eq!(
        head.within(DONE)
            .context("the head of big/blob.bin never came")??,
        &img.big[..1 << 20]
    );
    let meta = std::fs::metadata(dir.join("big/blob.bin"))?;
    assert_eq!(meta.len(), BIG as u64);
    // The root as the base layer's `./` entry describes it, not defaults.
    use std::os::unix::fs::MetadataExt;
    // Two names of one file are one inode (hard-link groups hold mid-pass).
    let (a, b) = (
        std::fs::metadata(dir.join("etc/early.txt"))?,
        std::fs::metadata(dir.join("etc/early-link.txt"))?,
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    let root = std::fs::metadata(&dir)?;
    assert_eq!((root.mode() & 0o7777, root.mtime()), (0o751, 1_700_000_000));

    // Not known yet, so not answered yet: the bytes past the hold point, a
    // name past it, a name the top layer whited out (the base has it, and
    // only the end of the pass proves nothing else brings it back), a
    // directory listing.
    let tail = spawn({
        let d = dir.clone();
        move || read_range(&d.join("big/blob.bin"), (BIG - (1 << 20)) as u64, 1 << 20)
    });
    let late = spawn({
        let d = dir.clone();
        move || std::fs::read(d.join("zz-late.txt"))
    });
    let gone = spawn({
        let d = dir.clone();
        move || std::fs::metadata(d.join("etc/gone.txt")).map(|_| ())
    });
    let listing = spawn({
        let d = dir.clone();
        move || -> std::io::Result<Vec<String>> {
            let mut names: Vec<String> = std::fs::read_dir(d.join("etc"))?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<_>>()?;
            names.sort();
            Ok(names)
        }
    });
    assert!(
        tail.within(PENDING).is_none(),
        "bytes past the hold point were served"
    );
    assert!(
        late.within(Duration::ZERO).is_none(),
        "a name past the hold point was answered"
    );
    assert!(
        gone.within(Duration::ZERO).is_none(),
        "a lookup that cannot be known yet was answered"
    );
    assert!(
        listing.within(Duration::ZERO).is_none(),
        "a listing was answered mid-pass"
    );

    gate.release();
    assert_eq!(
        tail.within(DONE).context("tail")??,
        &img.big[BIG - (1 << 20)..]
    );
    assert_eq!(late.within(DONE).context("late")??, b"after the big file\n");
    let err = gone.within(DONE).context("gone")?.expect_err("whited out");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(
        listing.within(DONE).context("listing")??,
        vec![
            "early-link.txt".to_string(),
            "early.txt".to_string(),
            "top.txt".to_string()
        ]
    );

    // Node ids given out mid-pass keep working, and the whole tree equals
    // the unpacked image.
    assert_eq!(
        std::fs::read(dir.join("etc/early.txt"))?,
        b"read me while the pass runs\n"
    );
    let want_dir = h.tmp.path().join("umoci");
    let want = snapshot(&common::umoci_unpack(&img.layout, "t", &want_dir)?)?;
    let got = snapshot(&dir)?;
    let diffs = compare_with(
        &want.with_label("umoci unpack"),
        &got.with_label("mount"),
        &CompareOptions::default(),
    );
    assert!(
        diffs.is_empty(),
        "mount differs from umoci unpack:\n{}",
        diffs.join("\n")
    );
    m.stop()?;
    // The pass's chunks reached the cache only after the digest matched.
    assert!(cache.join("chunks").join(&base[7..]).is_dir());
    Ok(())
}

#[test]
fn a_digest_mismatch_found_at_the_end_of_the_pass_ends_the_mount() -> Result<()> {
    if !common::require_root_and_tools("a_digest_mismatch_ends_the_mount", TOOLS) {
        return Ok(());
    }
    let h = held("prog/bad", true)?;
    let (gate, base, cache) = (&h.gate, &h.base, h.cache());
    let mut m = h.mount(&["--no-background-fill", "--read-timeout", "120"])?;
    gate.wait_held(DONE)?;
    let dir = m.dir.clone();
    let tail = spawn({
        let d = dir.clone();
        move || read_range(&d.join("big/blob.bin"), (BIG - (1 << 20)) as u64, 1 << 20)
    });
    assert!(tail.within(PENDING).is_none());
    gate.release();
    let err = tail
        .within(DONE)
        .context("the read past the damage never ended")?
        .expect_err("bytes of a layer that failed its digest were served");
    // EIO from lazyboot; ENOTCONN if the unmount won the race with the reply.
    assert!(
        matches!(err.raw_os_error(), Some(libc::EIO) | Some(libc::ENOTCONN)),
        "{err}"
    );
    // The mount ends by itself, with an error that names the layer.
    let deadline = std::time::Instant::now() + DONE;
    let status = loop {
        if let Some(st) = m.child.try_wait()? {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lazyboot mount kept running after the digest mismatch"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "{status}");
    std::thread::sleep(Duration::from_millis(300));
    m.drain();
    let log = m.err_lines.join("\n");
    assert!(
        log.contains("does not match its digest") && log.contains(&base[7..]),
        "{log}"
    );
    assert!(!cache
        .join("index")
        .join(format!("{}.idx", &base[7..]))
        .exists());
    assert!(!cache.join("chunks").join(&base[7..]).exists());
    Ok(())
}

#[test]
fn verified_only_mounts_after_the_pass() -> Result<()> {
    if !common::require_root_and_tools("verified_only_mounts_after_the_pass", TOOLS) {
        return Ok(());
    }
    let h = Arc::new(held("prog/v", false)?);
    let mounting = spawn({
        let h = h.clone();
        move || h.mount(&["--no-background-fill", "--verified-only"])
    });
    let gate = &h.gate;
    gate.wait_held(DONE)?;
    assert!(
        mounting.within(PENDING).is_none(),
        "--verified-only mounted mid-pass"
    );
    gate.release();
    let m = mounting.within(DONE).context("never mounted")??;
    assert_eq!(
        std::fs::read(m.dir.join("zz-late.txt"))?,
        b"after the big file\n"
    );
    m.stop()?;
    Ok(())
}

#[test]
fn a_stalled_pass_gives_eio_within_the_read_timeout_then_recovers() -> Result<()> {
    if !common::require_root_and_tools("a_stalled_pass_gives_eio", TOOLS) {
        return Ok(());
    }
    let h = held("prog/stall", false)?;
    let m = h.mount(&["--no-background-fill", "--read-timeout", "3"])?;
    h.gate.wait_held(DONE)?;
    let dir = m.dir.clone();
    // The stream is held: for these requests nothing moves. Each must fail
    // (EIO) after about the read timeout instead of hanging.
    let waiting = spawn({
        let d = dir.clone();
        move || {
            [
                std::fs::read_dir(d.join("etc"))
                    .and_then(|rd| rd.collect::<std::io::Result<Vec<_>>>())
                    .map(|_| ()),
                std::fs::metadata(d.join("zz-late.txt")).map(|_| ()),
                read_range(&d.join("big/blob.bin"), (BIG - 4096) as u64, 4096).map(|_| ()),
            ]
        }
    });
    let results = waiting
        .within(DONE)
        .context("requests waiting on a stalled pass hung")?;
    for r in &results {
        let err = r.as_ref().expect_err("nothing can be answered yet");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    }
    // The pass goes on once the stream does, and then all of it is served.
    h.gate.release();
    let late = spawn({
        let d = dir.clone();
        move || std::fs::read(d.join("zz-late.txt"))
    });
    assert_eq!(late.within(DONE).context("late")??, b"after the big file\n");
    assert_eq!(
        read_range(&dir.join("big/blob.bin"), 0, BIG)?,
        h.img.big,
        "the big file after the pass"
    );
    m.stop()?;
    Ok(())
}
