//! A real distribution, unmodified: a Debian 12 root built with mmdebstrap
//! (systemd, openssh-server, linux-image-amd64, and initramfs-tools or
//! dracut; integration/fixtures/build-debian-image.sh) pushed as an
//! ordinary one-layer gzip image with no index, PXE-booted in QEMU (TCG)
//! through `lazyboot serve` with the image's **stock** initramfs. The
//! image's `lazyboot-marker.service` prints the number of failed units once
//! multi-user is reached; zero is required.
//!
//! - initramfs-tools mounts the root with klibc `nfsmount`, which rejects
//!   `mountport=` and asks the portmapper on port 111 (over UDP) for MOUNT:
//!   this boot needs lazyboot's portmapper and UDP MOUNT.
//! - dracut mounts it with `mount.nfs` (`root=nfs:...`).
//! - The cold boot: the registry sits behind a 100 Mbit/s link, the cache
//!   is empty and no index exists, so the image opens with a streaming
//!   pass. The node must get its kernel before half of the layer has
//!   crossed the link, and its profile must count what the registry sent
//!   (the link's own counter) within a few percent. Over a slower link
//!   the kernel mounts its NFS root while the layer still streams.
//!
//! The images are cached under /var/cache/lazyboot-test/debian (a build
//! takes a few minutes). `LAZYBOOT_QEMU_KEEP=1` keeps the work dir.

mod common;

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::debian::debian_image;
use common::qemu::{nfs_port, pxe_guest, wait_for_console, Qemu, RouterAdverts, Tap, Timeline};
use common::serve::{Serve, Server};
use common::shaped::ShapedRegistry;
use common::Registry;

const BIN: &str = env!("CARGO_BIN_EXE_lazyboot");
const TOOLS: &[&str] = &["ip", "tc", "qemu-system-x86_64", "mmdebstrap", "skopeo"];
const MARKER: &str = "LAZYBOOT-DEBIAN-MARKER";
const MAC: &str = "52:54:00:de:b1:01";
/// Debian under TCG reaches multi-user in 60-110 s alone; two guests share
/// two cores with the rest of the suite.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const FATAL: &[&str] = &[
    "Kernel panic",
    "No bootable device",
    "nfsmount: bad option",
    "Gave up waiting for root",
    "Could not boot",
    "emergency mode",
];
const MILESTONES: &[(&str, &str)] = &[
    ("iPXE", "iPXE"),
    ("kernel start", "Linux version"),
    ("initramfs userspace", "Run /init as init process"),
    ("switch to the NFS root", "Switching root"),
    ("multi-user", "Multi-User System"),
];

fn runnable(name: &str) -> bool {
    common::require_root_and_tools(name, TOOLS)
}

/// The server config for one `ipxe` node `deb` booting `image`.
fn config(tap: &Tap, work: &Path, image: &str, nfs_port: u16) -> String {
    let net = format!("10.217.{}", tap.subnet);
    format!(
        r#"
[server]
interface = "{tap_if}"
address = "{server}"
state_dir = "{state}"
cache_dir = "{cache}"
cache_size = "4G"
tftp_port = 69
nfs_port = {nfs_port}

[profile]
booted_marker = "/etc/lazyboot-booted"
quiet_secs = 0

[dhcp]
mode = "full"
pool_start = "{net}.100"
pool_end = "{net}.150"
router = "{server}"

[[nodes]]
name = "deb"
mac = "{MAC}"
kind = "ipxe"
image = "{image}"
root = "ephemeral"
kernel_args = "console=ttyS0 {extra_args}"
"#,
        tap_if = tap.name,
        server = tap.server_ip,
        state = work.join("state").display(),
        cache = work.join("cache").display(),
        // For debugging a guest: e.g. `rd.debug` or `systemd.log_level=debug`.
        extra_args = std::env::var("LAZYBOOT_DEBIAN_KERNEL_ARGS").unwrap_or_default(),
    )
}

/// `failed=N` of the marker line.
fn failed_units(marker: &str) -> Result<u32> {
    marker
        .split_whitespace()
        .find_map(|w| w.strip_prefix("failed="))
        .context("no failed= in the marker")?
        .parse()
        .context("failed= is not a number")
}

/// A work dir, removed on drop unless `LAZYBOOT_QEMU_KEEP` is set (then
/// kept whatever happens, and named on stderr).
struct Work {
    path: std::path::PathBuf,
    _dir: Option<tempfile::TempDir>,
}

fn work_dir(name: &str) -> Result<Work> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("lazyboot-{name}."))
        .tempdir()?;
    if std::env::var_os("LAZYBOOT_QEMU_KEEP").is_some() {
        let path = dir.keep();
        eprintln!("keeping {}", path.display());
        return Ok(Work { path, _dir: None });
    }
    Ok(Work {
        path: dir.path().to_path_buf(),
        _dir: Some(dir),
    })
}

/// The node's latest boot profile as JSON (`lazyboot profile`).
fn profile_json(work: &Path) -> Result<serde_json::Value> {
    let out = Command::new(BIN)
        .args(["profile", "deb", "--format", "json", "--state-dir"])
        .arg(work.join("state"))
        .output()?;
    if !out.status.success() {
        bail!("lazyboot profile: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn profile_text(work: &Path) -> String {
    Command::new(BIN)
        .args(["profile", "deb", "--state-dir"])
        .arg(work.join("state"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A tap with router adverts, and the config of node `deb` booting `image`
/// written into `work`; returns them with the config's path.
fn lab(work: &Path, image: &str) -> Result<(Tap, RouterAdverts, std::path::PathBuf)> {
    let tap = Tap::new()?;
    let ra = RouterAdverts::start(&tap.name)?;
    let cfg = work.join("lazyboot.toml");
    std::fs::write(&cfg, config(&tap, work, image, nfs_port(tap.server_ip)))?;
    Ok((tap, ra, cfg))
}

/// PXE-boot node `deb` in QEMU until its marker line; `each` runs on every
/// look at the console (seconds since QEMU started, the timeline). The
/// guest (still running: it reads the boot marker file right after its
/// marker line), the marker line and the timeline; on failure, the server
/// log's tail too.
fn boot(
    tap: &Tap,
    server: &Server,
    work: &Path,
    mut each: impl FnMut(f64, &mut Timeline) -> Result<()>,
) -> Result<(Qemu, String, Timeline)> {
    let console = work.join("console.log");
    let mut qemu = pxe_guest(tap, MAC, 1024, &console)?;
    let (marker, _, timeline) = wait_for_console(
        &mut qemu,
        &console,
        MARKER,
        FATAL,
        MILESTONES,
        BOOT_TIMEOUT,
        |t, _, timeline| each(t, timeline),
    )
    .with_context(|| format!("server log:\n{}", common::tail(&server.log(), 60)))?;
    Ok((qemu, marker, timeline))
}

/// Boot the stock image of `flavour` from a local registry.
fn boots_to_multi_user(flavour: &str) -> Result<()> {
    let layout = debian_image(flavour)?;
    let tmp = work_dir(&format!("debian-{flavour}"))?;
    let work = tmp.path.clone();
    let reg = Registry::start()?;
    common::push(&layout, flavour, &reg, &format!("os/debian:{flavour}"))?;
    let image = reg.reference(&format!("os/debian:{flavour}"));
    let (tap, _ra, cfg) = lab(&work, &image)?;
    let server = Serve::new(&cfg).start()?;
    let (qemu, marker, timeline) = boot(&tap, &server, &work, |_, _| Ok(()))?;
    eprintln!("Debian ({flavour}) boot:\n{}\n{marker}", timeline.show());
    let log = server.log();
    // The root arguments were made for this flavour.
    assert!(
        log.contains(&format!("{flavour} root arguments")),
        "no {flavour} root arguments in the server log:\n{}",
        common::tail(&log, 40)
    );
    assert!(marker.contains(&format!("flavour={flavour}")), "{marker}");
    assert_eq!(failed_units(&marker)?, 0, "failed units: {marker}");
    drop(qemu);
    drop(tmp);
    Ok(())
}

#[test]
fn stock_debian_with_initramfs_tools_boots_to_multi_user() -> Result<()> {
    if !runnable("stock_debian_with_initramfs_tools_boots_to_multi_user") {
        return Ok(());
    }
    boots_to_multi_user("initramfs-tools")
}

#[test]
fn stock_debian_with_dracut_boots_to_multi_user() -> Result<()> {
    if !runnable("stock_debian_with_dracut_boots_to_multi_user") {
        return Ok(());
    }
    boots_to_multi_user("dracut")
}

/// A cold start of the initramfs-tools image: pushed to a registry behind
/// a `rate` link as `os/debian:TAG`, an empty cache, no index, `serve`
/// started (and streaming the layer).
struct Cold {
    layer_size: u64,
    tmp: Work,
    work: std::path::PathBuf,
    reg: ShapedRegistry,
    tap: Tap,
    _ra: RouterAdverts,
    /// The link's byte count before the server started.
    sent_at_start: u64,
    server: Server,
}

/// `quiet_secs`: the profile's `[profile] quiet_secs` (0: the boot ends at
/// its marker file only).
fn cold(rate: &str, tag: &str, quiet_secs: u32) -> Result<Cold> {
    let flavour = "initramfs-tools";
    let layout = debian_image(flavour)?;
    let manifest = common::layout_manifest(&layout, flavour)?;
    let layer_size = manifest["layers"][0]["size"]
        .as_u64()
        .context("layer size")?;
    let tmp = work_dir(&format!("debian-{tag}"))?;
    let work = tmp.path.clone();
    let reg = ShapedRegistry::start(rate)?;
    common::push(&layout, flavour, &reg.registry, &format!("os/debian:{tag}"))?;
    let image = reg.reference(&format!("os/debian:{tag}"));
    let (tap, ra, cfg) = lab(&work, &image)?;
    let text = std::fs::read_to_string(&cfg)?;
    std::fs::write(
        &cfg,
        text.replace("quiet_secs = 0", &format!("quiet_secs = {quiet_secs}")),
    )?;
    // The registry is not on loopback: plain HTTP must be allowed.
    let insecure = reg.registry.addr.clone();
    // The server opens the image (and starts streaming it) as it starts:
    // count the link from before.
    let sent_at_start = reg.sent_bytes()?;
    let server = Serve::new(&cfg)
        .globals(&["--insecure-registry", &insecure])
        .start()?;
    Ok(Cold {
        layer_size,
        tmp,
        work,
        reg,
        tap,
        _ra: ra,
        sent_at_start,
        server,
    })
}

/// The headline: an image nobody indexed, an empty cache, a 100 Mbit/s
/// registry link. The node gets its kernel while the layer still streams,
/// boots to multi-user, and its profile accounts for what the registry sent.
#[test]
fn cold_debian_boot_starts_before_its_image_has_arrived() -> Result<()> {
    if !runnable("cold_debian_boot_starts_before_its_image_has_arrived") {
        return Ok(());
    }
    let Cold {
        layer_size,
        tmp,
        work,
        reg,
        tap,
        _ra,
        sent_at_start,
        server,
    } = cold("100mbit", "cold", 0)?;
    let started = Instant::now();
    let mut kernel_at: Option<(f64, u64)> = None;
    let (qemu, marker, timeline) = boot(&tap, &server, &work, |t, timeline| {
        if kernel_at.is_none()
            && server
                .log()
                .lines()
                .any(|l| l.contains("vmlinuz-") && l.contains("read to the end"))
        {
            let sent = reg.sent_bytes()? - sent_at_start;
            kernel_at = Some((t, sent));
            timeline.check(t, "kernel sent (server)", true);
        }
        Ok(())
    })?;
    let boot_secs = started.elapsed().as_secs_f64();
    // The boot marker file is read right after the marker line: let the
    // profile see it and the recorder save.
    std::thread::sleep(Duration::from_secs(3));
    let sent_total = reg.sent_bytes()? - sent_at_start;
    eprintln!(
        "cold Debian boot:\n{}\n{marker}\nregistry sent {sent_total} bytes over the link (layer {layer_size} B)",
        timeline.show()
    );
    eprintln!("{}", profile_text(&work));
    assert_eq!(failed_units(&marker)?, 0, "failed units: {marker}");

    // The kernel went out while the layer was still streaming.
    let (kernel_t, sent_then) = kernel_at.context("the server never sent the kernel")?;
    eprintln!(
        "kernel sent at {kernel_t:.1} s, when the registry had sent {sent_then} of {layer_size} bytes"
    );
    assert!(
        sent_then < layer_size / 2,
        "the kernel went out only after {sent_then} of {layer_size} bytes had arrived"
    );
    // The whole layer did cross the link once (the streaming pass).
    assert!(sent_total >= layer_size, "{sent_total} < {layer_size}");

    // The profile says where the bytes and the time went: the registry's
    // traffic matches the link's count (which adds TCP/IP and Ethernet
    // headers, ~3.5%), and the node's waits on the stream are there.
    let p = profile_json(&work)?;
    let p = &p["profile"];
    let counted = p["registry"]["bytes"]
        .as_u64()
        .context("no registry traffic in the profile")?
        + p["registry"]["before_bytes"].as_u64().unwrap_or(0);
    let ratio = counted as f64 / sent_total as f64;
    eprintln!("profile: registry traffic {counted} B = {ratio:.3} of the link's count");
    assert!(
        (0.93..=1.01).contains(&ratio),
        "profile counts {counted} B, the link carried {sent_total} B"
    );
    let waited_ms: f64 = p["tftp"]
        .as_array()
        .context("tftp transfers")?
        .iter()
        .map(|t| t["wait"]["registry_ms"].as_f64().unwrap_or(0.0))
        .sum();
    assert!(waited_ms > 0.0, "no wait on the stream recorded: {p}");
    assert!(
        waited_ms / 1000.0 < boot_secs,
        "{waited_ms} ms of wait in a {boot_secs:.0} s boot"
    );
    drop(qemu);
    drop(tmp);
    Ok(())
}

/// A slower link (30 Mbit/s: the layer takes about a minute to cross it),
/// so the node's kernel mounts its NFS root while the layer still streams:
/// the mount and the files the stream has passed are answered at once, the
/// rest waits for the stream, and the boot reaches multi-user with zero
/// failed units.
#[test]
fn cold_debian_boot_mounts_its_root_while_the_image_streams() -> Result<()> {
    if !runnable("cold_debian_boot_mounts_its_root_while_the_image_streams") {
        return Ok(());
    }
    // NFS calls that wait for the stream are long, not silence: with a quiet
    // time (the default 10 s) shorter than those waits, the profile must
    // still run to the marker file.
    let Cold {
        layer_size,
        tmp,
        work,
        reg,
        tap,
        _ra,
        sent_at_start,
        server,
    } = cold("30mbit", "slow", 10)?;
    let mut mounted_at: Option<(f64, u64)> = None;
    let (qemu, marker, timeline) = boot(&tap, &server, &work, |t, timeline| {
        if mounted_at.is_none() && server.log().contains("mounted /nodes/deb") {
            mounted_at = Some((t, reg.sent_bytes()? - sent_at_start));
            timeline.check(t, "NFS root mounted (server)", true);
        }
        Ok(())
    })?;
    eprintln!(
        "cold Debian boot over 30 Mbit/s:\n{}\n{marker}",
        timeline.show()
    );
    eprintln!("{}", profile_text(&work));
    assert_eq!(failed_units(&marker)?, 0, "failed units: {marker}");
    let (t, sent) = mounted_at.context("the server never logged the NFS mount")?;
    eprintln!(
        "NFS root mounted at {t:.1} s, when the registry had sent {sent} of {layer_size} bytes"
    );
    assert!(
        sent < layer_size * 9 / 10,
        "the NFS root was mounted only after {sent} of {layer_size} bytes had arrived"
    );
    // The boot reads ~37 MiB over NFS; a profile ended by "silence" while
    // calls waited on the stream would have a few KiB.
    std::thread::sleep(Duration::from_secs(3));
    let p = profile_json(&work)?;
    let how = &p["profile"]["booted"]["how"]["by"];
    let nfs_bytes = p["summary"]["nfs_bytes"].as_u64().unwrap_or(0);
    assert!(
        how == "marker" && nfs_bytes > 20 << 20,
        "the profile ended by {how} with {nfs_bytes} NFS bytes"
    );
    drop(qemu);
    drop(tmp);
    Ok(())
}
