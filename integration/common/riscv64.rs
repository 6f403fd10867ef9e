//! The riscv64 boot image of integration/qemu_uboot_riscv64.rs: a kernel
//! built from Debian's `linux-source-6.1` (Debian 12 ships no riscv64
//! kernel; integration/fixtures/build-riscv64-kernel.sh), cached across
//! runs, and the image around it (build-riscv64-image.sh).

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::qemu::fixtures;
use super::run;

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
