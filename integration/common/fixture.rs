//! The test image: building it (integration/fixtures/build-image.sh), pushing
//! it, unpacking it with umoci as the reference view; one multi-platform tag
//! over single-platform layouts.

use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use super::registry::Registry;
use super::{run, sha256_hex};
use serde_json::{json, Value};

/// Paths and contents the fixture is known to contain (see build-image.sh).
pub mod paths {
    pub const DEEP_FILE: &str = "/deep/a/b/c/d/e/f/file.txt";
    pub const DEEP_CONTENT: &str = "deep file content from layer 3\n";
    pub const LARGE_FILE: &str = "/data/large.bin";
    pub const TEXT_FILE: &str = "/data/text.txt";
    pub const EMPTY_FILE: &str = "/empty-file";
    pub const SETUID: &str = "/special/setuid-root";
    pub const SETGID_FILE: &str = "/special/setgid-file";
    pub const SETGID_DIR: &str = "/special/setgid-dir";
    pub const STICKY_DIR: &str = "/special/sticky-dir";
    pub const FIFO: &str = "/special/fifo";
    pub const CHAR_DEV: &str = "/special/char-null";
    pub const BLOCK_DEV: &str = "/special/block-loop0";
    pub const LINK_RELATIVE: &str = "/links/relative";
    pub const LINK_ABSOLUTE: &str = "/links/absolute";
    pub const LINK_DANGLING: &str = "/links/dangling";
    pub const LINK_DIR: &str = "/links/dir-link";
    pub const USER_XATTR: &str = "/xattrs/user-xattr";
    pub const MULTI_XATTR: &str = "/xattrs/multi";
    pub const DIR_XATTR: &str = "/xattrs/dir-with-xattr";
    pub const CAPABILITY: &str = "/xattrs/capability";
    pub const UNICODE: &str = "/ünïcødé/日本語.txt";
    pub const HARDLINK_GROUP: [&str; 4] = [
        "/hardlinks/cross-layer-link",
        "/hardlinks/link-a",
        "/hardlinks/link-b",
        "/hardlinks/original",
    ];
    pub const CROSS_LAYER_LINK: &str = "/hardlinks/cross-layer-link";
    pub const HARDLINK_PAIR: [&str; 2] = ["/hardlinks/pair-1", "/hardlinks/sub/pair-2"];
    pub const OPAQUE_DIR: &str = "/opaque";
    /// What `/opaque` holds after layer 2's opaque whiteout (recursively).
    pub const OPAQUE_CONTENT: [&str; 5] = [
        "/opaque/keep-name.txt",
        "/opaque/new-1.txt",
        "/opaque/new-2.txt",
        "/opaque/new-subdir",
        "/opaque/new-subdir/new-3.txt",
    ];
    /// Paths of lower layers that must not be visible in the final view.
    pub const DELETED: [&str; 8] = [
        "/delete-me",
        "/dir-to-delete",
        "/dir-to-delete/a.txt",
        "/opaque/old-1.txt",
        "/opaque/old-2.txt",
        "/opaque/subdir",
        "/opaque/subdir/old-3.txt",
        "/layer2/doomed.txt",
    ];
    pub const REPLACED_BY_DIR: &str = "/replace-me";
    pub const MODIFIED_CONTENT: &str = "/files/modify-content.txt";
    pub const MODIFIED_CONTENT_NOW: &str = "content modified in layer 2 (longer than before)\n";
    pub const CHMOD_ONLY: &str = "/files/chmod-only.sh";
    pub const OLD_MTIME_FILE: &str = "/files/old-mtime.txt";
    pub const OLD_MTIME: i64 = 1_000_000_000;
}

/// `integration/fixtures/build-image.sh` in this checkout.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures/build-image.sh")
}

/// Build the fixture image into the OCI layout `dir` (wiped first) under
/// `tag`. `LARGE_MB` is taken from the environment (default 48).
pub fn build_fixture(dir: &Path, tag: &str) -> Result<()> {
    build_fixture_with(dir, tag, None)
}

/// Like [`build_fixture`] with an explicit size for `/data/large.bin`.
pub fn build_fixture_with(dir: &Path, tag: &str, large_mb: Option<u64>) -> Result<()> {
    let mut cmd = Command::new("bash");
    cmd.arg(build_script()).arg(dir).arg(tag);
    if let Some(mb) = large_mb {
        cmd.env("LARGE_MB", mb.to_string());
    }
    let started = Instant::now();
    let out = run(&mut cmd)?;
    eprintln!(
        "[fixture] built {}:{tag} in {:.1?}\n{}",
        dir.display(),
        started.elapsed(),
        String::from_utf8_lossy(&out).trim_end()
    );
    Ok(())
}

/// `skopeo copy` the layout's tag to `registry` as `repo_tag` (`repo:tag`),
/// keeping blobs and digests exactly as they are in the layout.
pub fn push(layout: &Path, tag: &str, registry: &Registry, repo_tag: &str) -> Result<()> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy", "--quiet", "--preserve-digests"])
        .args(["--dest-tls-verify=false", "--dest-no-creds"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}", registry.reference(repo_tag)));
    run(&mut cmd).map(|_| ())
}

const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// One multi-platform tag `repo_tag` (`repo:tag`) in `registry`: an OCI
/// image index over the image manifests of `parts` (a layout and a tag in
/// it each, in this order), each with the platform its config names (as a
/// real multi-arch build would), pushed with `skopeo copy --all`, digests
/// preserved. Returns each part's manifest digest, in order.
pub fn push_platforms(
    registry: &Registry,
    repo_tag: &str,
    parts: &[(&Path, &str)],
) -> Result<Vec<String>> {
    let dir = tempfile::Builder::new()
        .prefix("lazyboot-multi-platform.")
        .tempdir()?;
    let (layout, digests) = multi_platform_layout(dir.path(), "index", parts)?;
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy", "--quiet", "--all"])
        .args([
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-no-creds",
        ])
        .arg(format!("oci:{}:index", layout.display()))
        .arg(format!("docker://{}", registry.reference(repo_tag)));
    run(&mut cmd)?;
    Ok(digests)
}

/// The OCI layout `out/layout` behind [`push_platforms`], its tag `tag` the
/// index; and the parts' manifest digests.
fn multi_platform_layout(
    out: &Path,
    tag: &str,
    parts: &[(&Path, &str)],
) -> Result<(PathBuf, Vec<String>)> {
    let layout = out.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let (mut manifests, mut digests) = (Vec::new(), Vec::new());
    for (part, part_tag) in parts {
        let name = format!("{}:{part_tag}", part.display());
        let desc = layout_descriptor(part, part_tag)?;
        let manifest = layout_manifest(part, part_tag)?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .with_context(|| format!("{name}: no config digest"))?;
        let config_path = layout_blob(part, config_digest);
        let config: Value = serde_json::from_slice(&fs::read(&config_path)?)
            .with_context(|| format!("parsing {}", config_path.display()))?;
        let (Some(os), Some(arch)) = (config["os"].as_str(), config["architecture"].as_str())
        else {
            bail!("{name}: the config names no os and architecture");
        };
        let mut platform = json!({"os": os, "architecture": arch});
        if let Some(v) = config["variant"].as_str() {
            platform["variant"] = json!(v);
        }
        for e in fs::read_dir(part.join("blobs/sha256"))? {
            let e = e?;
            let to = blobs.join(e.file_name());
            // Boot images are tens of MB: link where the file system allows.
            if !to.exists() && fs::hard_link(e.path(), &to).is_err() {
                fs::copy(e.path(), &to)
                    .with_context(|| format!("copying {}", e.path().display()))?;
            }
        }
        let digest = desc["digest"]
            .as_str()
            .with_context(|| format!("{name}: descriptor without digest"))?;
        digests.push(digest.to_string());
        manifests.push(json!({
            "mediaType": desc["mediaType"],
            "digest": digest,
            "size": desc["size"],
            "platform": platform,
        }));
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": manifests,
    }))?;
    let digest = sha256_hex(&index);
    fs::write(blobs.join(&digest), &index)?;
    let top = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": INDEX_TYPE,
            "digest": format!("sha256:{digest}"),
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&top)?)?;
    Ok((layout, digests))
}

/// `umoci unpack` the layout's tag into the bundle `dest` (must not exist
/// yet) and return `dest/rootfs`: the reference view of the image.
pub fn umoci_unpack(layout: &Path, tag: &str, dest: &Path) -> Result<PathBuf> {
    let mut cmd = Command::new("umoci");
    cmd.arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(dest);
    run(&mut cmd)?;
    let rootfs = dest.join("rootfs");
    if !rootfs.is_dir() {
        bail!("umoci unpack produced no {}", rootfs.display());
    }
    Ok(rootfs)
}

/// The image manifest of `tag` in an OCI layout.
pub fn layout_manifest(layout: &Path, tag: &str) -> Result<serde_json::Value> {
    let desc = layout_descriptor(layout, tag)?;
    let digest = desc["digest"]
        .as_str()
        .ok_or_else(|| anyhow!("descriptor without digest"))?;
    Ok(serde_json::from_slice(&fs::read(layout_blob(
        layout, digest,
    ))?)?)
}

/// The descriptor of `tag` in an OCI layout's index.json.
pub fn layout_descriptor(layout: &Path, tag: &str) -> Result<serde_json::Value> {
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .cloned()
        .ok_or_else(|| anyhow!("tag {tag} not in {}/index.json", layout.display()))
}

/// Path of a blob in an OCI layout.
pub fn layout_blob(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    layout.join("blobs").join(alg).join(hex)
}

/// A built fixture plus its umoci-unpacked reference rootfs.
#[derive(Debug)]
pub struct Fixture {
    pub layout: PathBuf,
    pub tag: String,
    /// Read-only reference view (umoci unpack). Copy it before mutating.
    pub rootfs: PathBuf,
}

impl Fixture {
    pub fn manifest(&self) -> Result<serde_json::Value> {
        layout_manifest(&self.layout, &self.tag)
    }

    /// Layer digests, lowest first.
    pub fn layer_digests(&self) -> Result<Vec<String>> {
        let m = self.manifest()?;
        Ok(m["layers"]
            .as_array()
            .ok_or_else(|| anyhow!("manifest without layers"))?
            .iter()
            .filter_map(|l| l["digest"].as_str().map(str::to_string))
            .collect())
    }

    /// Push to `registry` as `repo_tag`.
    pub fn push(&self, registry: &Registry, repo_tag: &str) -> Result<()> {
        push(&self.layout, &self.tag, registry, repo_tag)
    }
}

pub const SHARED_TAG: &str = "fixture";

/// The fixture built once and shared by all tests, across test processes and
/// runs: cached under the cargo target tmp dir, keyed by the build script's
/// content and `LARGE_MB`; guarded by a file lock. Treat it as read-only.
/// Set `LAZYBOOT_FIXTURE_REBUILD=1` to force a rebuild.
pub fn shared_fixture() -> Result<&'static Fixture> {
    static SHARED: OnceLock<std::result::Result<Fixture, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| build_shared().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("building the shared fixture failed: {e}"))
}

fn cache_base() -> PathBuf {
    match option_env!("CARGO_TARGET_TMPDIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir(),
    }
}

fn build_shared() -> Result<Fixture> {
    let script = fs::read(build_script()).context("reading build-image.sh")?;
    let large_mb = std::env::var("LARGE_MB").unwrap_or_else(|_| "48".into());
    let mut h = Sha256::new();
    h.update(&script);
    h.update(b"\0LARGE_MB=");
    h.update(large_mb.as_bytes());
    let key = &hex::encode(h.finalize())[..16];
    let base = cache_base().join("lazyboot-fixture");
    fs::create_dir_all(&base)?;
    let dir = base.join(key);
    let lock = File::create(base.join(format!("{key}.lock")))?;
    // SAFETY: flock on a file descriptor we own; released when `lock` drops.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("flock: {}", std::io::Error::last_os_error());
    }
    let fixture = Fixture {
        layout: dir.join("layout"),
        tag: SHARED_TAG.to_string(),
        rootfs: dir.join("bundle/rootfs"),
    };
    remove_stale(&base, key);
    let marker = dir.join("complete");
    let rebuild = std::env::var_os("LAZYBOOT_FIXTURE_REBUILD").is_some_and(|v| v == "1");
    if marker.exists() && !rebuild && fixture.rootfs.is_dir() {
        eprintln!("[fixture] reusing {}", dir.display());
        return Ok(fixture);
    }
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    build_fixture(&fixture.layout, &fixture.tag)?;
    umoci_unpack(&fixture.layout, &fixture.tag, &dir.join("bundle"))?;
    fs::write(&marker, b"ok\n")?;
    Ok(fixture)
}

/// Drop cached fixtures of older script versions (~100 MB each) that nobody
/// holds the lock of.
fn remove_stale(base: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name == keep || name.ends_with(".lock") || !e.path().is_dir() {
            continue;
        }
        let Ok(lock) = File::create(base.join(format!("{name}.lock"))) else {
            continue;
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            let _ = fs::remove_dir_all(e.path());
            let _ = fs::remove_file(base.join(format!("{name}.lock")));
        }
    }
}
