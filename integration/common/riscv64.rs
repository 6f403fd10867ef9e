//! The riscv64 boot image of integration/qemu_uboot_riscv64.rs: a kernel
//! built from Debian's `linux-source-6.1` (Debian 12 ships no riscv64
//! kernel; integration/fixtures/build-riscv64-kernel.sh), cached across
//! runs, and the image around it (build-riscv64-image.sh); plus an OCI
//! layout that joins single-platform images under one multi-platform tag.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::qemu::fixtures;
use super::{run, sha256_hex};

/// What the kernel and image builds need on the host.
pub const RISCV64_TOOLS: &[&str] = &[
    "riscv64-linux-gnu-gcc",
    "make",
    "flex",
    "bison",
    "bc",
    "xz",
    "dpkg-query",
    "umoci",
];

/// Where the kernel builds are cached unless `LAZYBOOT_RISCV64_KERNEL_CACHE`
/// says otherwise: outside `target/` because a build takes minutes.
pub const KERNEL_CACHE: &str = "/var/cache/lazyboot-test/riscv64-kernel";

/// The Debian package holding the kernel source.
const SOURCE_PACKAGE: &str = "linux-source-6.1";

fn kernel_cache() -> PathBuf {
    std::env::var_os("LAZYBOOT_RISCV64_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(KERNEL_CACHE))
}

fn source_version() -> Result<String> {
    let out = run(Command::new("dpkg-query").args(["-W", "-f", "${Version}", SOURCE_PACKAGE]))
        .with_context(|| format!("{SOURCE_PACKAGE} is not installed"))?;
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

/// The cache key of the kernel: the first 16 hex digits of sha256(config
/// fragment, NUL, build script, NUL, source package version). In shell:
/// `{ cat riscv64-kernel/kernel.config; printf '\0'; cat build-riscv64-kernel.sh; printf '\0'; dpkg-query -W -f '${Version}' linux-source-6.1; } | sha256sum | cut -c1-16`
/// (in integration/fixtures).
pub fn kernel_key() -> Result<String> {
    let mut h = Sha256::new();
    for f in ["riscv64-kernel/kernel.config", "build-riscv64-kernel.sh"] {
        let path = fixtures().join(f);
        h.update(fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
        h.update([0]);
    }
    h.update(source_version()?.as_bytes());
    Ok(hex::encode(h.finalize())[..16].to_string())
}

/// The directory holding the riscv64 kernel (`Image`, `config`, `version`),
/// built once per [`kernel_key`] under [`KERNEL_CACHE`] and file-locked
/// (flock on `lock`) so parallel tests build it once. A `complete` file
/// marks a finished build; other builds are removed.
pub fn riscv64_kernel() -> Result<PathBuf> {
    let key = kernel_key()?;
    let base = kernel_cache();
    fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let lock = File::create(base.join("lock"))?;
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("flock: {}", std::io::Error::last_os_error());
    }
    let dir = base.join(&key);
    if dir.join("complete").exists() {
        eprintln!("[riscv64 kernel] reusing {}", dir.display());
        return Ok(dir);
    }
    for e in fs::read_dir(&base)?.flatten() {
        if e.path().is_dir() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    eprintln!(
        "[riscv64 kernel] building {} (a few minutes)",
        dir.display()
    );
    let started = Instant::now();
    // The build's output goes straight to stderr: progress while it runs.
    let status = Command::new("bash")
        .arg(fixtures().join("build-riscv64-kernel.sh"))
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .stderr(Stdio::inherit())
        .status()
        .context("running build-riscv64-kernel.sh")?;
    if !status.success() {
        bail!(
            "build-riscv64-kernel.sh {} failed ({status}), see its output above",
            dir.display()
        );
    }
    eprintln!("[riscv64 kernel] built in {:.1?}", started.elapsed());
    fs::write(dir.join("complete"), b"ok\n")?;
    Ok(dir)
}

/// The riscv64 test image as an OCI layout `out/layout` under `tag`, around
/// the kernel in `kernel` (see [`riscv64_kernel`]). Takes seconds.
pub fn riscv64_image(out: &Path, tag: &str, kernel: &Path) -> Result<PathBuf> {
    let log = run(Command::new("bash")
        .arg(fixtures().join("build-riscv64-image.sh"))
        .arg(out)
        .arg(tag)
        .arg(kernel))
    .context("build-riscv64-image.sh")?;
    eprintln!("{}", String::from_utf8_lossy(&log).trim_end());
    Ok(out.join("layout"))
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

fn read_json(path: &Path) -> Result<Value> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("digest {digest} is not sha256"))?;
    Ok(layout.join("blobs/sha256").join(hex))
}

/// An OCI layout `out/layout` whose tag `tag` is an image index over the
/// image manifests of `parts` (a layout and a tag in it each, in this
/// order), each with the platform its config names. Push it with
/// [`push_all`].
pub fn multi_platform_layout(out: &Path, tag: &str, parts: &[(&Path, &str)]) -> Result<PathBuf> {
    let layout = out.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let mut manifests = Vec::new();
    for (part, part_tag) in parts {
        let index = read_json(&part.join("index.json"))?;
        let desc = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["annotations"][REF_NAME] == *part_tag)
            .with_context(|| format!("no tag {part_tag} in {}", part.display()))?;
        let manifest = read_json(&blob_path(part, desc["digest"].as_str().unwrap_or(""))?)?;
        let config = read_json(&blob_path(
            part,
            manifest["config"]["digest"].as_str().unwrap_or(""),
        )?)?;
        let mut platform = json!({"os": config["os"], "architecture": config["architecture"]});
        if let Some(v) = config["variant"].as_str() {
            platform["variant"] = json!(v);
        }
        for e in fs::read_dir(part.join("blobs/sha256"))? {
            let e = e?;
            let to = blobs.join(e.file_name());
            if !to.exists() {
                fs::copy(e.path(), &to)
                    .with_context(|| format!("copying {}", e.path().display()))?;
            }
        }
        manifests.push(json!({
            "mediaType": desc["mediaType"],
            "digest": desc["digest"],
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
            "annotations": {REF_NAME: tag},
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&top)?)?;
    Ok(layout)
}

/// Push the image index `tag` of `layout` with all its platforms.
pub fn push_all(
    layout: &Path,
    tag: &str,
    registry: &super::Registry,
    repo_tag: &str,
) -> Result<()> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy", "--quiet", "--all"])
        .args([
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-no-creds",
        ])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}", registry.reference(repo_tag)));
    run(&mut cmd).map(|_| ())
}
