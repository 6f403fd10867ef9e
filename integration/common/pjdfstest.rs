//! pjdfstest (the Rust rewrite, crates.io `pjdfstest`, BSD-2-Clause) for
//! tests that run it inside a busybox guest: the binary built statically
//! once and cached, and its output parsed into per-case outcomes.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

pub const VERSION: &str = "0.2.2";

/// Where built binaries are kept unless `LAZYBOOT_PJDFSTEST_CACHE` says
/// otherwise: outside `target/`, like the Debian images, so that a
/// `cargo clean` does not cost a rebuild.
pub const CACHE: &str = "/var/cache/lazyboot-test/pjdfstest";

/// The static glibc target: the guest has no dynamic loader or shared
/// libraries, and the musl target cannot be assumed installed (no rustup
/// downloads on CI).
const TARGET: &str = "x86_64-unknown-linux-gnu";
const RUSTFLAGS: &str = "-C target-feature=+crt-static";

pub fn cache_dir() -> PathBuf {
    std::env::var_os("LAZYBOOT_PJDFSTEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CACHE))
}

/// A tool of the toolchain that runs this test (`cargo`, `rustc`): next to
/// the `cargo` that started us when it says where it is, else from `PATH`.
pub fn toolchain(tool: &str) -> PathBuf {
    std::env::var_os("CARGO")
        .map(|c| PathBuf::from(c).with_file_name(tool))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(tool))
}

/// The statically linked pjdfstest [`VERSION`], built with `cargo install
/// --locked` (crates.io) into `CACHE/VERSION/bin` the first time, under a
/// file lock so that parallel tests build it once. Needs libacl's static
/// library (Debian `libacl1-dev`). A build takes about a minute.
pub fn binary() -> Result<PathBuf> {
    let base = cache_dir();
    fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let lock = File::create(base.join("lock"))?;
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("flock: {}", std::io::Error::last_os_error());
    }
    let dir = base.join(VERSION);
    let bin = dir.join("bin/pjdfstest");
    if dir.join("complete").exists() && bin.is_file() {
        eprintln!("[pjdfstest] reusing {}", bin.display());
        return Ok(bin);
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    eprintln!("[pjdfstest] building {VERSION} into {}", dir.display());
    let started = Instant::now();
    let build = base.join("build");
    let status = Command::new(toolchain("cargo"))
        .args(["install", "pjdfstest", "--version", VERSION, "--locked"])
        .args(["--target", TARGET, "--root"])
        .arg(&dir)
        .arg("--target-dir")
        .arg(&build)
        .env("RUSTFLAGS", RUSTFLAGS)
        // Settings of the cargo that runs the tests are not this build's.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .stderr(Stdio::inherit())
        .status()
        .context("running cargo install pjdfstest")?;
    if !status.success() {
        bail!("cargo install pjdfstest {VERSION} failed ({status}), see its output above (libacl1-dev installed?)");
    }
    let _ = fs::remove_dir_all(&build);
    if !is_static(&bin)? {
        bail!("{} is not statically linked", bin.display());
    }
    eprintln!("[pjdfstest] built in {:.1?}", started.elapsed());
    fs::write(dir.join("complete"), b"ok\n")?;
    Ok(bin)
}

/// Compile the one-file program `source` statically with the test's own
/// rustc into `out`.
pub fn build_static(source: &Path, out: &Path) -> Result<()> {
    super::run(
        Command::new(toolchain("rustc"))
            .args([
                "--edition",
                "2021",
                "-O",
                "-C",
                "target-feature=+crt-static",
            ])
            .args(["--target", TARGET, "-o"])
            .arg(out)
            .arg(source),
    )?;
    if !is_static(out)? {
        bail!("{} is not statically linked", out.display());
    }
    Ok(())
}

/// Whether the ELF file at `path` runs without a dynamic loader: a 64-bit
/// little-endian ELF with no `PT_INTERP` program header.
pub fn is_static(path: &Path) -> Result<bool> {
    let elf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        bail!("{}: not a 64-bit little-endian ELF file", path.display());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{}: truncated ELF header", path.display());
    };
    const PT_INTERP: u32 = 3;
    for i in 0..usize::from(phnum) {
        let at = phoff as usize + i * usize::from(phentsize);
        match u32_at(at) {
            Some(PT_INTERP) => return Ok(false),
            Some(_) => {}
            None => bail!("{}: truncated program headers", path.display()),
        }
    }
    Ok(true)
}

/// What pjdfstest said of one test case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Passed,
    Failed,
    Skipped,
    /// Listed in `expected_failures` and failed.
    ExpectedFailure,
    /// Listed in `expected_failures` and passed.
    UnexpectedPass,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub outcome: Outcome,
    /// The indented lines after the case's line: the panic message of a
    /// failure, the reasons for a skip.
    pub message: String,
}

/// One run of pjdfstest: every case by name, and the counts of its summary
/// line (failed, skipped, passed, expected failures, total).
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub cases: BTreeMap<String, Case>,
    pub summary: Option<[usize; 5]>,
}

impl Report {
    /// The cases with `outcome`, sorted by name.
    pub fn with(&self, outcome: Outcome) -> Vec<&str> {
        self.cases
            .iter()
            .filter(|(_, c)| c.outcome == outcome)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.cases.values().filter(|c| c.outcome == outcome).count()
    }
}

/// Parse pjdfstest's output (colours and carriage returns allowed): one
/// line per case, `NAME<padding>ok|FAILED|skipped|failed as expected|
/// PASSED UNEXPECTEDLY`, each followed by its detail lines (indented), and
/// a last `Summary: F failed, S skipped, P passed, E expected failures, T
/// total` line. An error if the summary is missing or its counts disagree
/// with the cases read (a run that died half-way, a garbled console).
pub fn parse(output: &str) -> Result<Report> {
    let mut report = Report::default();
    let mut last: Option<String> = None;
    for raw in output.lines() {
        let line = strip_ansi(raw).replace('\r', "");
        if let Some(rest) = line.strip_prefix("Summary: ") {
            report.summary = Some(parse_summary(rest).with_context(|| format!("{line:?}"))?);
            last = None;
            continue;
        }
        let trimmed = line.trim_end();
        let outcome = [
            (" PASSED UNEXPECTEDLY", Outcome::UnexpectedPass),
            (" failed as expected", Outcome::ExpectedFailure),
            (" FAILED", Outcome::Failed),
            (" skipped", Outcome::Skipped),
            (" ok", Outcome::Passed),
        ]
        .into_iter()
        .find_map(|(suffix, o)| trimmed.strip_suffix(suffix).map(|name| (name.trim(), o)))
        .filter(|(name, _)| name.contains("::") && !name.contains(char::is_whitespace));
        if let Some((name, outcome)) = outcome {
            let case = Case {
                outcome,
                message: String::new(),
            };
            if report.cases.insert(name.to_string(), case).is_some() {
                bail!("case {name} reported twice");
            }
            last = Some(name.to_string());
            continue;
        }
        // Anything else up to the next case line is the last case's detail
        // (a panic message spans lines: `assertion failed` / ` left:` ...).
        if let Some(case) = last.as_ref().and_then(|n| report.cases.get_mut(n)) {
            if !trimmed.trim().is_empty() {
                if !case.message.is_empty() {
                    case.message.push('\n');
                }
                case.message.push_str(trimmed.trim());
            }
        }
    }
    let Some([failed, skipped, passed, expected, total]) = report.summary else {
        bail!(
            "no summary line: the run did not finish ({} cases read)",
            report.cases.len()
        );
    };
    let read = [
        report.count(Outcome::Failed) + report.count(Outcome::UnexpectedPass),
        report.count(Outcome::Skipped),
        report.count(Outcome::Passed),
        report.count(Outcome::ExpectedFailure),
        report.cases.len(),
    ];
    if read != [failed, skipped, passed, expected, total] {
        bail!(
            "summary says {failed} failed, {skipped} skipped, {passed} passed, {expected} expected failures, {total} total; the case lines say {read:?}"
        );
    }
    Ok(report)
}

fn parse_summary(rest: &str) -> Result<[usize; 5]> {
    let mut out = [0; 5];
    let fields: Vec<&str> = rest.split(',').map(str::trim).collect();
    if fields.len() != 5 {
        bail!("want 5 counts");
    }
    for (slot, field) in out.iter_mut().zip(fields) {
        *slot = field
            .split_whitespace()
            .next()
            .context("empty count")?
            .parse()?;
    }
    Ok(out)
}

/// `text` without ANSI escape sequences (CSI `ESC [ ... final byte`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
