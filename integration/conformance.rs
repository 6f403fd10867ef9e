//! POSIX conformance of a node's writable NFS root, side by side with
//! nfs-ganesha: one QEMU (TCG) x86_64 guest PXE-boots from `lazyboot serve`
//! as in integration/qemu_boot.rs, with a persistent root, and runs
//! pjdfstest (crates.io `pjdfstest` 0.2.2, the Rust rewrite, built static
//! and cached by `common::pjdfstest`) as root twice: in a directory of its
//! own root (`/var/tmp/pjd-lazyboot`, made in the node's upper) and in one
//! on an nfs-ganesha export (VFS FSAL over a fresh temp directory, no root
//! squash, `common::ganesha`) mounted with the root's client options
//! (`vers=3,tcp,nolock`, explicit ports). Both runs use the same kernel,
//! client, binary and configuration (integration/fixtures/conformance/
//! pjdfstest.toml); only the server differs.
//!
//! The image is the boot image of qemu_boot.rs plus one layer (made here,
//! `umoci raw add-layer` on a copy of the cached layout): the static
//! pjdfstest, a static `sleep` for its ETXTBSY cases, its configuration,
//! `/etc/passwd` and `/etc/group` with `nobody` and `tests`, and the
//! guest's init, `/sbin/lazyboot-conformance`
//! (integration/fixtures/conformance/init), started with `init=` on the
//! kernel command line instead of the image's checks.
//!
//! Not run, for both servers alike: the 13 EROFS cases (they remount the
//! file system under test read-only, which pjdfstest refuses for `/`), the
//! 5 posix_fallocate cases (NFSv3 has no ALLOCATE) and link_count_max
//! (pjdfstest skips it when pathconf gives no LINK_MAX, as on NFS).
//!
//! The test asserts that each run passed at least [`MIN_PASSED`] cases
//! (so it cannot pass by running nothing) and that lazyboot fails no case
//! ganesha passes; it prints a table of both runs and every case that
//! differs. Each run takes ~25 s under TCG, the whole test ~1 minute once
//! pjdfstest and the boot image are cached (their first builds: ~2 minutes
//! and ~20 s). `scripts/conformance` runs it with its output shown.
//! `LAZYBOOT_QEMU_KEEP=1` keeps the work dir (console, server and ganesha
//! logs).

mod common;

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::ganesha::Ganesha;
use common::pjdfstest::{self, Outcome, Report};
use common::qemu::{
    boot_image, fixtures, nfs_port, pxe_guest, wait_for_console, RouterAdverts, Tap,
};
use common::serve::Serve;
use common::{run, tail, Registry};

/// Besides `common::qemu::BOOT_IMAGE_TOOLS`.
const TOOLS: &[&str] = &["ip", "sysctl", "qemu-system-x86_64"];
const NODE: &str = "pc";
const MAC: &str = "52:54:00:c0:4f:01";
/// The tag of the derived image in its layout.
const TAG: &str = "conformance";
const MARKER: &str = "LAZYBOOT-CONFORMANCE-DONE";
/// Boot (~10 s) plus two pjdfstest runs (~25 s each under TCG), with room
/// for a machine busy with other tests; the runs' own times are printed.
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Each run must pass at least this many cases (pjdfstest 0.2.2 has 398;
/// on ext4 about 370 pass).
const MIN_PASSED: usize = 100;
const FATAL: &[&str] = &[
    "No bootable device",
    "Kernel panic",
    "lazyboot-initramfs: FAIL",
    "lazyboot-conformance: FAIL",
];
const MILESTONES: &[(&str, &str)] = &[
    ("iPXE", "iPXE"),
    ("kernel start", "Linux version"),
    ("NFS root mounted", "lazyboot-initramfs: mounted"),
    (
        "ganesha export mounted",
        "lazyboot-conformance: ganesha export:",
    ),
    (
        "lazyboot run starts",
        "lazyboot-conformance: pjdfstest in /var/tmp",
    ),
    (
        "lazyboot run done",
        "lazyboot-conformance: pjdfstest lazyboot done",
    ),
    (
        "ganesha run starts",
        "lazyboot-conformance: pjdfstest in /mnt/ganesha",
    ),
    (
        "ganesha run done",
        "lazyboot-conformance: pjdfstest ganesha done",
    ),
];

/// The servers in the order the guest runs them: (name in the guest's
/// markers, name in the table).
const RUNS: [(&str, &str); 2] = [("lazyboot", "lazyboot"), ("ganesha", "nfs-ganesha")];

fn conformance_files() -> PathBuf {
    fixtures().join("conformance")
}

/// The extra layer as an uncompressed tar: the static binaries, the
/// configuration, users and groups, the guest's init and its mount points.
fn extra_layer(work: &Path, pjdfstest: &Path) -> Result<PathBuf> {
    let files = conformance_files();
    let stage = work.join("layer");
    for d in ["usr/local/bin", "etc", "sbin", "mnt/ganesha", "mnt/second"] {
        fs::create_dir_all(stage.join(d))?;
    }
    let install = |from: &Path, to: &str, mode: &str| -> Result<()> {
        run(Command::new("install")
            .args(["-m", mode])
            .arg(from)
            .arg(stage.join(to)))
        .map(|_| ())
    };
    install(pjdfstest, "usr/local/bin/pjdfstest", "0755")?;
    let sleep = work.join("sleep");
    pjdfstest::build_static(&files.join("sleep.rs"), &sleep)?;
    install(&sleep, "usr/local/bin/sleep", "0755")?;
    install(&files.join("init"), "sbin/lazyboot-conformance", "0755")?;
    for f in ["pjdfstest.toml", "passwd", "group"] {
        install(&files.join(f), &format!("etc/{f}"), "0644")?;
    }
    let tar = work.join("extra-layer.tar");
    run(Command::new("tar")
        .args(["--create", "--format=gnu", "--numeric-owner"])
        .args(["--owner=0", "--group=0", "--sort=name", "--file"])
        .arg(&tar)
        .arg("-C")
        .arg(&stage)
        .args(["etc", "mnt", "sbin", "usr"]))?;
    Ok(tar)
}

/// The amd64 boot image plus the extra layer, as tag [`TAG`] of a copy of
/// the cached layout in `work`.
fn derived_image(work: &Path) -> Result<PathBuf> {
    let base = boot_image("amd64", "boot")?;
    let binary = pjdfstest::binary()?;
    let layout = work.join("layout");
    common::copy_tree(&base, &layout)?;
    let tar = extra_layer(work, &binary)?;
    run(Command::new("umoci")
        .args(["raw", "add-layer", "--tag", TAG])
        .args([
            "--history.created_by",
            "lazyboot conformance layer: pjdfstest",
        ])
        .arg("--image")
        .arg(format!("{}:boot", layout.display()))
        .arg(&tar))?;
    Ok(layout)
}

/// The lines between `LAZYBOOT-PJDFSTEST-BEGIN name` and `...-END name`.
fn section<'a>(console: &'a str, name: &str) -> Result<&'a str> {
    let begin = format!("LAZYBOOT-PJDFSTEST-BEGIN {name}");
    let end = format!("LAZYBOOT-PJDFSTEST-END {name}");
    let start = console
        .find(&begin)
        .with_context(|| format!("no {begin:?} on the console"))?
        + begin.len();
    let stop = console[start..]
        .find(&end)
        .with_context(|| format!("no {end:?} on the console"))?;
    Ok(&console[start..start + stop])
}

/// The guest's own measure of a run: `pjdfstest NAME done: exit N, S s`.
fn guest_seconds(console: &str, name: &str) -> Option<f64> {
    let needle = format!("lazyboot-conformance: pjdfstest {name} done: exit ");
    let line = console.lines().find(|l| l.contains(&needle))?;
    line.rsplit(", ")
        .next()?
        .trim()
        .trim_end_matches(" s")
        .parse()
        .ok()
}

/// Cases lazyboot fails (or skips, or lacks) where ganesha passes.
struct Differences<'a> {
    failed: Vec<(&'a str, &'a str)>,
    skipped: Vec<(&'a str, &'a str)>,
    missing: Vec<&'a str>,
}

fn differences<'a>(lazyboot: &'a Report, ganesha: &'a Report) -> Differences<'a> {
    let mut d = Differences {
        failed: Vec::new(),
        skipped: Vec::new(),
        missing: Vec::new(),
    };
    for name in ganesha.with(Outcome::Passed) {
        match lazyboot.cases.get(name) {
            Some(c) if c.outcome == Outcome::Failed => d.failed.push((name, &c.message)),
            Some(c) if c.outcome == Outcome::Skipped => d.skipped.push((name, &c.message)),
            Some(_) => {}
            None => d.missing.push(name),
        }
    }
    d
}

/// The cases with their messages, after a count of each distinct message.
fn show_cases(title: &str, cases: &[(&str, &str)]) -> String {
    let mut out = format!("{title} ({}):\n", cases.len());
    let mut by_message: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, message) in cases {
        *by_message
            .entry(message.lines().next().unwrap_or(""))
            .or_default() += 1;
    }
    if by_message.len() > 1 && cases.len() > 4 {
        for (message, n) in &by_message {
            out.push_str(&format!("  {n:>3} x {message}\n"));
        }
    }
    for (name, message) in cases {
        out.push_str(&format!("  {name}\n"));
        for line in message.lines() {
            out.push_str(&format!("      {line}\n"));
        }
    }
    out
}

fn table(reports: &[(&str, &Report, Option<f64>)]) -> String {
    let mut out = format!(
        "pjdfstest {}   {:>6} {:>6} {:>7} {:>5} {:>8}\n",
        pjdfstest::VERSION,
        "passed",
        "failed",
        "skipped",
        "total",
        "time"
    );
    for (name, r, secs) in reports {
        out.push_str(&format!(
            "{name:<16}  {:>6} {:>6} {:>7} {:>5} {:>8}\n",
            r.count(Outcome::Passed),
            r.count(Outcome::Failed) + r.count(Outcome::UnexpectedPass),
            r.count(Outcome::Skipped),
            r.cases.len(),
            secs.map(|s| format!("{s:.1} s"))
                .unwrap_or_else(|| "?".into())
        ));
    }
    out
}

#[test]
fn pjdfstest_on_a_persistent_root_matches_ganesha() -> Result<()> {
    let tools = [
        TOOLS,
        common::qemu::BOOT_IMAGE_TOOLS,
        common::ganesha::TOOLS,
    ]
    .concat();
    if !common::require_root_and_tools("pjdfstest_on_a_persistent_root_matches_ganesha", &tools)
        || !common::qemu::require_virtio_rom("pjdfstest_on_a_persistent_root_matches_ganesha")
    {
        return Ok(());
    }
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("lazyboot-conformance.")
        .tempdir()?;
    let work = tmp.path().to_path_buf();
    let layout = derived_image(&work)?;
    let reg = Registry::start()?;
    common::push(&layout, TAG, &reg, "os/conformance:1")?;
    let image = reg.reference("os/conformance:1");
    eprintln!("[conformance] image ready in {:.1?}", started.elapsed());

    let tap = Tap::new()?;
    let _adverts = RouterAdverts::start(&tap.name)?;
    let nfs_port = nfs_port(tap.server_ip);
    let export = work.join("ganesha-export");
    fs::create_dir(&export)?;
    let ganesha = Ganesha::start(tap.server_ip, &export, &work.join("ganesha"))?;
    let net = format!("10.217.{}", tap.subnet);
    let config = format!(
        r#"
[server]
interface = "{tap_if}"
address = "{server}"
state_dir = "{state}"
cache_dir = "{cache}"
cache_size = "2G"
tftp_port = 69
nfs_port = {nfs_port}
# The guest names both ports; ganesha's rpcbind is its own (common/ganesha.rs).
portmapper = false

[dhcp]
mode = "full"
pool_start = "{net}.100"
pool_end = "{net}.150"
router = "{server}"

[[nodes]]
name = "{NODE}"
mac = "{MAC}"
kind = "ipxe"
image = "{image}"
root = "persistent"
kernel_args = "console=ttyS0 panic=-1 init=/sbin/lazyboot-conformance lazyboot.ganesha={spec} lazyboot.ganesha_ports={gnfs},{gmnt}"
"#,
        tap_if = tap.name,
        server = tap.server_ip,
        state = work.join("state").display(),
        cache = work.join("cache").display(),
        spec = ganesha.spec(),
        gnfs = ganesha.nfs_port,
        gmnt = ganesha.mount_port,
    );
    let config_path = work.join("lazyboot.toml");
    fs::write(&config_path, config)?;
    // Info level: a debug line for every NFS call of two pjdfstest runs
    // would be most of the log.
    let server = Serve::new(&config_path)
        .log(&work.join("server.log"))
        .rust_log("lazyboot=info")
        .start()?;

    let console = work.join("console.log");
    let mut qemu = pxe_guest(&tap, MAC, 512, &console)?;
    let outcome = wait_for_console(
        &mut qemu,
        &console,
        MARKER,
        FATAL,
        MILESTONES,
        GUEST_TIMEOUT,
        |_, _, _| Ok(()),
    );
    let keep = std::env::var_os("LAZYBOOT_QEMU_KEEP").is_some_and(|v| v == "1");
    let (_, text, timeline) = match outcome {
        Ok(o) => o,
        Err(e) => {
            let msg = format!(
                "{e:#}\n--- server log (last 40 lines) ---\n{}\n{}",
                tail(&server.log(), 40),
                ganesha.failure_text()
            );
            if keep {
                eprintln!("kept {}", tmp.keep().display());
            }
            bail!(msg);
        }
    };
    drop(qemu);
    eprintln!("conformance guest:\n{}", timeline.show());
    let text = text.replace('\r', "");
    for line in text.lines().filter(|l| l.contains("lazyboot-conformance:")) {
        eprintln!("{line}");
    }

    let mut reports = Vec::new();
    for (name, label) in RUNS {
        let report = pjdfstest::parse(section(&text, name)?)
            .with_context(|| format!("the {label} run's output"))?;
        reports.push((label, report, guest_seconds(&text, name)));
    }
    let (lazyboot, ganesha_report) = (&reports[0].1, &reports[1].1);
    let rows: Vec<(&str, &Report, Option<f64>)> =
        reports.iter().map(|(l, r, s)| (*l, r, *s)).collect();
    eprintln!("\n{}", table(&rows));
    let diff = differences(lazyboot, ganesha_report);
    let mut failures = Vec::new();
    let failed = |r: &Report| -> Vec<String> {
        r.with(Outcome::Failed)
            .into_iter()
            .map(String::from)
            .collect()
    };
    let (lazyboot_failed, ganesha_failed) = (failed(lazyboot), failed(ganesha_report));
    let both: Vec<&str> = ganesha_failed
        .iter()
        .filter(|n| lazyboot_failed.contains(n))
        .map(String::as_str)
        .collect();
    let ganesha_only: Vec<(&str, &str)> = ganesha_failed
        .iter()
        .filter(|n| !lazyboot_failed.contains(n))
        .map(|n| (n.as_str(), ganesha_report.cases[n].message.as_str()))
        .collect();
    eprintln!("failed on both ({}): {}\n", both.len(), both.join(" "));
    eprintln!(
        "{}",
        show_cases("nfs-ganesha fails where lazyboot passes", &ganesha_only)
    );
    eprintln!(
        "{}",
        show_cases("lazyboot skips where nfs-ganesha passes", &diff.skipped)
    );
    // Printed with the assertion's message when there are any.
    let lazyboot_only = show_cases("lazyboot fails where nfs-ganesha passes", &diff.failed);
    if diff.failed.is_empty() {
        eprintln!("{lazyboot_only}");
    }
    for (label, report, _) in &reports {
        let passed = report.count(Outcome::Passed);
        if passed < MIN_PASSED {
            failures.push(format!(
                "{label}: {passed} cases passed, want at least {MIN_PASSED}"
            ));
        }
    }
    if !diff.missing.is_empty() {
        failures.push(format!(
            "cases nfs-ganesha passes that the lazyboot run does not list: {}",
            diff.missing.join(" ")
        ));
    }
    if !diff.failed.is_empty() {
        failures.push(lazyboot_only);
    }
    if !export.join("pjd-ganesha").is_dir() {
        failures.push("the ganesha run left no pjd-ganesha in the export".into());
    }
    let root = format!(
        "lazyboot-conformance: / is {}:/nodes/{NODE} / nfs",
        tap.server_ip
    );
    if !text.contains(&root) {
        failures.push(format!("no {root:?}: the run was not on lazyboot's root"));
    }
    eprintln!("[conformance] whole test: {:.1?}", started.elapsed());
    if keep {
        eprintln!("kept {}", tmp.keep().display());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// The parser on pjdfstest's own output format, including a multi-line
/// failure message and colours.
#[test]
fn parses_pjdfstest_output() -> Result<()> {
    let out = "chmod::update_ctime::regular                                                  \x1b[32mok\x1b[0m\n\
link::link_count_max                                                      FAILED\n\
\tassertion `left == right` failed\n\
  left: Ok(())\n\
 right: Err(EMLINK)\n\
rename::exdev_target                                                     skipped\n\
\tNo secondary file-system has been configured.\n\
\n\
Summary: 1 failed, 1 skipped, 1 passed, 0 expected failures, 3 total\n";
    let r = pjdfstest::parse(out)?;
    assert_eq!(r.with(Outcome::Passed), ["chmod::update_ctime::regular"]);
    assert_eq!(r.with(Outcome::Failed), ["link::link_count_max"]);
    assert_eq!(
        r.cases["link::link_count_max"].message,
        "assertion `left == right` failed\nleft: Ok(())\nright: Err(EMLINK)"
    );
    assert_eq!(
        r.cases["rename::exdev_target"].message,
        "No secondary file-system has been configured."
    );
    // A run cut short has no summary; a summary that disagrees is refused.
    assert!(pjdfstest::parse(&out[..out.find("Summary").unwrap()]).is_err());
    assert!(pjdfstest::parse(&out.replace("1 passed", "2 passed")).is_err());
    Ok(())
}
