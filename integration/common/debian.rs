//! A stock Debian 12 root with systemd (integration/fixtures/build-debian-image.sh)
//! as an OCI layout, for boot tests of a real distribution through lazyboot.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::qemu::fixtures;

/// Where the Debian images are cached unless `LAZYBOOT_DEBIAN_CACHE` says
/// otherwise: outside `target/` because a build takes minutes and downloads
/// ~130 MB of packages (kept in `debs/` next to the images).
pub const DEBIAN_CACHE: &str = "/var/cache/lazyboot-test/debian";

pub fn debian_cache() -> PathBuf {
    std::env::var_os("LAZYBOOT_DEBIAN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEBIAN_CACHE))
}

/// The cache key of `flavour`'s image: the first 16 hex digits of
/// sha256(flavour, NUL, the bytes of build-debian-image.sh). In shell:
/// `{ printf '%s\0' FLAVOUR; cat integration/fixtures/build-debian-image.sh; } | sha256sum | cut -c1-16`.
pub fn debian_key(flavour: &str) -> Result<String> {
    let script = fixtures().join("build-debian-image.sh");
    let mut h = Sha256::new();
    h.update(flavour.as_bytes());
    h.update([0]);
    h.update(fs::read(&script).with_context(|| format!("reading {}", script.display()))?);
    Ok(hex::encode(h.finalize())[..16].to_string())
}

/// The Debian 12 root of `flavour` ("initramfs-tools" | "dracut") as an OCI
/// layout dir (tag = flavour), built once and cached under [`DEBIAN_CACHE`]
/// (overridable by env `LAZYBOOT_DEBIAN_CACHE`) in `<key>/layout`, keyed by
/// [`debian_key`]; file-locked (flock on `lock`, one build at a time, so the
/// second flavour reuses the first's packages) so parallel tests build it
/// once; progress printed to stderr. A `complete` file marks a finished
/// build; older builds of the same flavour (and unfinished ones) are removed,
/// the `debs` dir is kept.
///
/// Needs root, `mmdebstrap` (reaching deb.debian.org), `tar`, `gzip`,
/// `sha256sum`, `umoci`; a build takes 2-4 minutes.
pub fn debian_image(flavour: &str) -> Result<PathBuf> {
    if !matches!(flavour, "initramfs-tools" | "dracut") {
        bail!("unknown Debian image flavour {flavour:?} (initramfs-tools | dracut)");
    }
    let key = debian_key(flavour)?;
    let base = debian_cache();
    fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let lock = File::create(base.join("lock"))?;
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("flock: {}", std::io::Error::last_os_error());
    }
    let dir = base.join(&key);
    let layout = dir.join("layout");
    if dir.join("complete").exists() {
        eprintln!("[debian image {flavour}] reusing {}", dir.display());
        return Ok(layout);
    }
    for e in fs::read_dir(&base)?.flatten() {
        let path = e.path();
        if !path.is_dir() || e.file_name() == "debs" {
            continue;
        }
        let same = fs::read_to_string(path.join("flavour")).is_ok_and(|f| f.trim() == flavour);
        if same || !path.join("complete").exists() {
            let _ = fs::remove_dir_all(&path);
        }
    }
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("flavour"), format!("{flavour}\n"))?;
    eprintln!(
        "[debian image {flavour}] building {} (2-4 minutes)",
        dir.display()
    );
    let started = Instant::now();
    // The script's output goes straight to stderr: progress while it runs.
    let status = Command::new("bash")
        .arg(fixtures().join("build-debian-image.sh"))
        .arg(&dir)
        .arg(flavour)
        .env("DEB_CACHE", base.join("debs"))
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .stderr(Stdio::inherit())
        .status()
        .context("running build-debian-image.sh")?;
    if !status.success() {
        bail!(
            "build-debian-image.sh {} {flavour} failed ({status}), see its output above",
            dir.display()
        );
    }
    eprintln!(
        "[debian image {flavour}] built in {:.1?}",
        started.elapsed()
    );
    fs::write(dir.join("complete"), b"ok\n")?;
    Ok(layout)
}
