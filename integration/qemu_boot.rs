//! The first real boot: a QEMU x86_64 guest PXE-boots through QEMU's own
//! iPXE ROM from `lazyboot serve` (our DHCP, our TFTP with the generated
//! `boot.ipxe`, our NFSv3), runs Debian's kernel and an initramfs that mounts
//! the node's NFS root with the kernel's NFS client, and the image's
//! `/sbin/init` (integration/fixtures/boot-image/rootfs-init) runs its checks
//! and prints a marker. Two nodes boot one after the other: `pc` with a
//! persistent root while the chunk cache is still empty (the server is
//! restarted while it runs), then `pc-ro` with a read-only root from the
//! eStargz copy of the image (converted with ctr-remote; its blobs are new,
//! so its cache is cold too and every file is read through the TOC).
//! Then the tag is moved to another image and `pc` boots again: the new
//! image, with the upper its first boot wrote reset.
//!
//! The image (integration/fixtures/build-boot-image.sh, Debian packages only)
//! is built once and cached under `target/tmp/lazyboot-boot-image/<hash>`.
//! Its layers are gzip, so opening the image (index pass) and the background
//! fill fetch them whole soon after the server starts.
//!
//! Network: a tap `lbqtapN` in the host namespace carries the server address
//! 10.217.N.1/24 (a /24 no other interface routes); QEMU's virtio-net is the
//! tap's other end. The test sends IPv6 router advertisements on it so that
//! iPXE does not wait 16 s for one. TFTP must be on port 69 (the ROM knows no
//! other).
//!
//! `LAZYBOOT_QEMU_KEEP=1` keeps the work dir (console logs, server log).

mod common;

use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::qemu::{boot_image, expected_checks, nfs_port, Qemu, RouterAdverts, Tap, Timeline};
use common::serve::{Serve, Server};
use common::{tail, Registry};

/// Besides `common::qemu::BOOT_IMAGE_TOOLS`.
const TOOLS: &[&str] = &[
    "ip",
    "containerd",
    "ctr-remote",
    "sysctl",
    "qemu-system-x86_64",
];
const TAG: &str = "boot";
const MARKER: &str = common::qemu::BOOT_MARKER;
/// TCG is slow and the two cores are shared; a boot takes ~15-40 s.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// One node of the config: its name, MAC and root mode.
struct Node {
    name: &'static str,
    mac: &'static str,
    root: &'static str,
    /// Restart the server while the node waits for it (the image's init
    /// does so with `lazyboot.test=restart` on the kernel command line).
    restart: bool,
    /// Boot the eStargz copy of the image.
    estargz: bool,
}

const NODES: [Node; 2] = [
    // First, with the chunk cache empty: every read goes to the registry.
    Node {
        name: "pc",
        mac: "52:54:00:12:34:56",
        root: "persistent",
        restart: true,
        estargz: false,
    },
    // Then a read-only node of the same image as eStargz, cache cold.
    Node {
        name: "pc-ro",
        mac: "52:54:00:12:34:57",
        root: "readonly",
        restart: false,
        estargz: true,
    },
];

/// Boot `node` in QEMU until its marker (or a failure), and return the
/// console text and the timeline.
fn boot(tap: &Tap, server: &mut Server, node: &Node, console: &Path) -> Result<(String, Timeline)> {
    let log_start = server.log().len();
    let started = Instant::now();
    let mut qemu = Qemu(
        Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "512", "-smp", "1"])
            .args(["-nographic", "-no-reboot", "-boot", "n"])
            .arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                tap.name
            ))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={}", node.mac))
            .stdin(Stdio::null())
            .stdout(File::create(console)?)
            .stderr(File::create(console.with_extension("stderr"))?)
            .spawn()
            .context("starting qemu-system-x86_64")?,
    );
    let name = node.name;
    let mut timeline = Timeline::default();
    let outcome = loop {
        let t = started.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&fs::read(console)?).into_owned();
        let full = server.log();
        let log = full.get(log_start..).unwrap_or("");
        timeline.check(t, "iPXE banner", text.contains("iPXE"));
        timeline.check(
            t,
            "DHCPACK to the ROM (server)",
            log.contains(&format!("to {name} (")),
        );
        timeline.check(
            t,
            "boot.ipxe sent (server)",
            log.contains(&format!("({name}): boot.ipxe (generated")),
        );
        timeline.check(
            t,
            "initrd sent (server)",
            log.lines()
                .any(|l| l.contains("initrd.img-") && l.contains("read to the end")),
        );
        timeline.check(t, "kernel start", text.contains("Linux version"));
        timeline.check(
            t,
            "initramfs /init",
            text.contains("lazyboot-initramfs: start"),
        );
        timeline.check(
            t,
            "initramfs DHCP done",
            text.contains("lazyboot-initramfs: address"),
        );
        timeline.check(
            t,
            "MNT (server)",
            log.contains(&format!("mounted /nodes/{name}")),
        );
        timeline.check(
            t,
            "NFS root mounted",
            text.contains("lazyboot-initramfs: mounted"),
        );
        timeline.check(t, "/sbin/init runs", text.contains("lazyboot-root:"));
        let waiting = text.contains("lazyboot-root: waiting for a server restart");
        if waiting && !timeline.seen("server restarted") {
            server.restart()?;
            timeline.check(started.elapsed().as_secs_f64(), "server restarted", true);
        }
        timeline.check(
            t,
            "guest goes on after the restart",
            text.contains("lazyboot-root: continuing after the restart"),
        );
        timeline.check(t, "marker", text.contains(MARKER));
        if text.contains(MARKER) {
            break Ok(text);
        }
        if let Some(fatal) = [
            "No bootable device",
            "Kernel panic",
            "lazyboot-initramfs: FAIL",
        ]
        .into_iter()
        .find(|f| text.contains(f))
        {
            break Err(format!("the guest failed: {fatal:?}"));
        }
        if let Some(status) = qemu.0.try_wait()? {
            break Err(format!("QEMU exited ({status}) before the marker"));
        }
        if started.elapsed() > BOOT_TIMEOUT {
            break Err(format!("no marker after {BOOT_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The guest powers off right after the marker; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    while qemu.0.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    timeline.check(
        started.elapsed().as_secs_f64(),
        "QEMU exited",
        qemu.0.try_wait()?.is_some(),
    );
    eprintln!("boot of {name} ({} root):\n{}", node.root, timeline.show());
    match outcome {
        Ok(text) => Ok((text, timeline)),
        Err(why) => {
            let console = String::from_utf8_lossy(&fs::read(console)?).into_owned();
            bail!(
                "{name}: {why}\n--- console (last 60 lines) ---\n{}\n--- server log (last 60 lines) ---\n{}",
                tail(&console, 60),
                tail(&server.log(), 60)
            );
        }
    }
}

#[test]
fn qemu_pxe_boots_from_lazyboot() -> Result<()> {
    if !common::require_root_and_tools(
        "qemu_pxe_boots_from_lazyboot",
        &[TOOLS, common::qemu::BOOT_IMAGE_TOOLS].concat(),
    ) {
        return Ok(());
    }
    if !common::qemu::require_virtio_rom("qemu_pxe_boots_from_lazyboot") {
        return Ok(());
    }
    let layout = boot_image("amd64", TAG)?;
    let tmp = tempfile::Builder::new()
        .prefix("lazyboot-qemu-boot.")
        .tempdir()?;
    let work = tmp.path().to_path_buf();
    let reg = Registry::start()?;
    common::push(&layout, TAG, &reg, "os/qemu-boot:1")?;
    let image = reg.reference("os/qemu-boot:1");
    let converted = Instant::now();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures/to-estargz.sh");
    let esgz_image = reg.reference("os/qemu-boot:1-esgz");
    let out = Command::new("bash")
        .arg(script)
        .arg(&image)
        .arg(&esgz_image)
        .output()?;
    if !out.status.success() {
        bail!("to-estargz.sh: {}", String::from_utf8_lossy(&out.stderr));
    }
    let manifest = reg.get_manifest("os/qemu-boot", "1-esgz")?;
    assert!(
        manifest
            .to_string()
            .contains("containerd.io/snapshot/stargz/toc.digest"),
        "not converted: {manifest}"
    );
    eprintln!("[qemu] eStargz copy made in {:.1?}", converted.elapsed());

    let tap = Tap::new()?;
    let net = format!("10.217.{}", tap.subnet);
    let nfs_port = nfs_port(tap.server_ip);
    let mut config = format!(
        r#"
[server]
interface = "{tap_if}"
address = "{server}"
state_dir = "{state}"
cache_dir = "{cache}"
cache_size = "2G"
tftp_port = 69
nfs_port = {nfs_port}

# pc-ro's eStargz image must still be cold when it boots.
background_fill = false

[profile]
booted_marker = "/etc/lazyboot-booted"
# pc's init sits idle for ~14 s waiting for the server restart: silence must
# not end its boot before the marker (a flake seen under load).
quiet_secs = 0

[dhcp]
mode = "full"
pool_start = "{net}.100"
pool_end = "{net}.150"
router = "{server}"
"#,
        tap_if = tap.name,
        server = tap.server_ip,
        state = work.join("state").display(),
        cache = work.join("cache").display(),
    );
    for n in &NODES {
        config.push_str(&format!(
            r#"
[[nodes]]
name = "{}"
mac = "{}"
kind = "ipxe"
image = "{}"
root = "{}"
kernel_args = "console=ttyS0 panic=-1{}"
"#,
            n.name,
            n.mac,
            if n.estargz { &esgz_image } else { &image },
            n.root,
            if n.restart {
                " lazyboot.test=restart"
            } else {
                ""
            }
        ));
    }
    let config_path = work.join("lazyboot.toml");
    fs::write(&config_path, config)?;
    let mut server = Serve::new(&config_path)
        .log(&work.join("server.log"))
        .start()?;
    let _adverts = RouterAdverts::start(&tap.name)?;

    let mut failures = Vec::new();
    for node in &NODES {
        let name = node.name;
        let console = work.join(format!("console-{name}.log"));
        let result = boot(&tap, &mut server, node, &console);
        let text = match result {
            Ok((text, _)) => text,
            Err(e) => {
                failures.push(format!("{e:#}"));
                continue;
            }
        };
        let guest: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("lazyboot-") || l.contains("LAZYBOOT"))
            .collect();
        eprintln!("guest {name}:\n{}", guest.join("\n"));
        let marker = text
            .lines()
            .find(|l| l.contains(MARKER))
            .context("marker line")?;
        if !marker.trim_end().ends_with(&format!("{MARKER} {name}")) {
            failures.push(format!("{name}: wrong marker {marker:?}"));
        }
        for want in [
            "lazyboot-root: image boot\n",
            "lazyboot-root: files from an earlier boot: no",
        ] {
            if !text.replace('\r', "").contains(want) {
                failures.push(format!("{name}: no {want:?}"));
            }
        }
        let root = format!("lazyboot-root: / is {}:/nodes/{name} / nfs", tap.server_ip);
        if !text.contains(&root) {
            failures.push(format!("{name}: root is not our NFS export"));
        }
        // Every check of the image's /sbin/init ran and passed.
        let mode = match node.root {
            "readonly" => "readonly",
            _ => "writable",
        };
        let want = expected_checks(node.root == "readonly", node.restart)?;
        let summary = format!("lazyboot-root: checks done: {want} ok, 0 failed, mode {mode}");
        if !text.contains(&summary) {
            let failed: Vec<&str> = guest
                .iter()
                .copied()
                .filter(|l| l.contains("lazyboot-check: FAIL") || l.contains("checks done"))
                .collect();
            failures.push(format!(
                "{name}: want {summary:?}, got:\n{}",
                failed.join("\n")
            ));
        }
    }
    // Swap: the tag `pc` boots now names another image (built as tag
    // "boot-b"). `pc` boots again: the new image, from a fresh upper.
    let layout_b = boot_image("amd64", "boot-b")?;
    common::push(&layout_b, "boot-b", &reg, "os/qemu-boot:1")?;
    let again = Node {
        restart: false,
        ..NODES[0]
    };
    match boot(&tap, &mut server, &again, &work.join("console-pc-swap.log")) {
        Ok((text, _)) => {
            for want in [
                "lazyboot-root: image boot-b",
                "lazyboot-root: files from an earlier boot: no",
                &format!("{MARKER} pc"),
            ] {
                if !text.contains(want) {
                    failures.push(format!("pc after the swap: no {want:?}"));
                }
            }
        }
        Err(e) => failures.push(format!("pc after the swap: {e:#}")),
    }
    let manifest = |boot| -> Result<String> {
        let v = common::profile_json(&work.join("state"), "pc", boot)?;
        Ok(v["profile"]["manifest"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    };
    let (before, after) = (manifest(1)?, manifest(2)?);
    if before.is_empty() || before == after {
        failures.push(format!(
            "pc's boot profiles name manifests {before:?} then {after:?}"
        ));
    }
    if std::env::var_os("LAZYBOOT_QEMU_KEEP").is_some_and(|v| v == "1") {
        let kept = tmp.keep();
        eprintln!("kept {}", kept.display());
    }
    let log = server.log();
    assert!(
        failures.is_empty(),
        "{}\n--- server log (last 40 lines) ---\n{}",
        failures.join("\n\n"),
        tail(&log, 40)
    );
    for node in &NODES {
        let name = node.name;
        // Our DHCP served the firmware and the initramfs' udhcpc...
        let acks = log.matches(&format!("to {name} (")).count();
        assert!(
            acks >= 2,
            "{name}: {acks} DHCP answers:\n{}",
            tail(&log, 40)
        );
        // ...TFTP sent the script, the kernel and the initrd...
        for what in ["boot.ipxe (generated", "vmlinuz-", "initrd.img-"] {
            assert!(
                log.contains(&format!("({name}): {what}")),
                "{name}: TFTP {what}:\n{}",
                tail(&log, 40)
            );
        }
        // ...and the kernel's NFS client mounted the node's export.
        assert!(
            log.contains(&format!("mounted /nodes/{name}")),
            "{name}: no MNT:\n{}",
            tail(&log, 40)
        );
        check_profile(&work.join("state"), name, node.estargz)?;
    }
    Ok(())
}

/// The node's boot profile tells the whole boot: our DHCP, the TFTP
/// transfers, the NFS mount and reads, ended by the init's read of the
/// marker file (for `pc`, across the server restart).
/// An eStargz node starts with nothing of its blobs cached (no streaming
/// pass): its profile must show the registry fetches its reads waited on.
fn check_profile(state: &Path, name: &str, estargz: bool) -> Result<()> {
    let v = common::profile_json(state, name, 1)?;
    let p = &v["profile"];
    assert_eq!(p["boot"], 1, "{name}: its first boot");
    assert_eq!(
        p["booted"]["how"]["by"], "marker",
        "{name}: {}",
        p["booted"]
    );
    assert_eq!(p["began_with"], "dhcp");
    let acked = p["dhcp"]
        .as_array()
        .is_some_and(|d| d.iter().filter(|d| d["end_ms"].is_number()).count() >= 2);
    assert!(acked, "{name}: firmware and initramfs DHCP: {}", p["dhcp"]);
    let tftp = p["tftp"].as_array().context("tftp")?;
    for want in ["boot.ipxe", "vmlinuz", "initrd.img"] {
        assert!(
            tftp.iter()
                .any(|t| t["file"].as_str().is_some_and(|f| f.contains(want))
                    && t["outcome"] == "complete"),
            "{name}: TFTP {want}: {tftp:?}"
        );
    }
    assert!(p["nfs_mounts"].as_array().is_some_and(|m| !m.is_empty()));
    let files = p["nfs_files"].as_array().context("nfs_files")?;
    assert!(
        files
            .iter()
            .any(|f| f["path"] == "/sbin/init" && f["bytes_read"].as_u64() > Some(0)),
        "{name}: /sbin/init read over NFS"
    );
    let s = &v["summary"];
    let booted = p["booted"]["at_ms"].as_f64().unwrap_or(0.0);
    assert!(booted > s["dhcp_ms"].as_f64().unwrap_or(f64::MAX), "{s}");
    assert!(s["nfs_bytes"].as_u64() > Some(0) && s["tftp_bytes"].as_u64() > Some(1 << 20));
    if estargz {
        assert!(s["registry_bytes"].as_u64() > Some(0), "{name}: {s}");
        let waited = files
            .iter()
            .filter(|f| {
                f["wait"]["fetches"]
                    .as_array()
                    .is_some_and(|x| !x.is_empty())
            })
            .count();
        assert!(waited > 0, "{name}: no NFS file waited on a fetch");
        eprintln!(
            "[qemu] {name}: {} files, {waited} waited on the registry; {s}",
            files.len()
        );
    }
    Ok(())
}
