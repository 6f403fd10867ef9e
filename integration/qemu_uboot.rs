//! The U-Boot path end to end: a QEMU arm64 `virt` guest runs Debian's
//! U-Boot (`u-boot-qemu`, target qemu_arm64) as its firmware, whose default
//! distro boot does `dhcp ${scriptaddr} boot.scr.uimg; source`. `lazyboot
//! serve` answers the DHCP (vendor class `U-Boot.armv8`), serves the
//! generated `boot.scr.uimg` over TFTP (port 69), and the script loads the
//! image's kernel and initrd with `tftpboot` and starts them with `booti`.
//! The initramfs mounts the node's NFS root like in integration/qemu_boot.rs
//! and the image's `/sbin/init` runs its checks and prints the marker.
//!
//! The image is the one of integration/fixtures/build-boot-image.sh built
//! with `ARCH=arm64` (Debian's arm64 kernel, which is an uncompressed
//! `Image`, and arm64 busybox-static), cached under
//! `target/tmp/lazyboot-boot-image-arm64/<hash>`. It is pushed under a
//! multi-platform tag after a small linux/riscv64 image, and the node names
//! no platform: the default of a `uboot` node is linux/riscv64, so only the
//! client architecture its U-Boot sends (option 93, 22: "ARM 64-bit
//! U-Boot") gets it linux/arm64. The riscv64 boot is
//! integration/qemu_uboot_riscv64.rs.
//!
//! Network as in qemu_boot.rs: a tap `lbqtapN` with 10.217.N.1/24, QEMU's
//! virtio-net (on virtio-mmio, see `boot`) on its other end.
//!
//! `LAZYBOOT_QEMU_KEEP=1` keeps the work dir (console log, server log).

mod common;

use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netboot::one_layer_image;
use common::qemu::{boot_image, expected_checks, lab_config, Qemu, RouterAdverts, Tap, Timeline};
use common::serve::{Serve, Server};
use common::{push_platforms, run, tail, Registry};

/// Besides `common::qemu::BOOT_IMAGE_TOOLS`.
const TOOLS: &[&str] = &["ip", "sysctl", "qemu-system-aarch64"];
/// Debian `u-boot-qemu`.
const UBOOT: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";
const TAG: &str = "boot-arm64";
const MARKER: &str = common::qemu::BOOT_MARKER;
/// TCG emulating a Cortex-A57 is slower than x86 on x86.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const NODE: &str = "arm";
const MAC: &str = "52:54:00:12:35:01";

/// Boot the node in QEMU until its marker (or a failure), and return the
/// console text.
fn boot(tap: &Tap, server: &Server, console: &Path) -> Result<String> {
    let started = Instant::now();
    let mut qemu = Qemu(
        Command::new("qemu-system-aarch64")
            .args(["-M", "virt", "-cpu", "cortex-a57", "-m", "1024"])
            .args(["-smp", "1", "-accel", "tcg", "-bios", UBOOT])
            .args(["-nographic", "-no-reboot"])
            .arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                tap.name
            ))
            .arg("-device")
            // virtio-mmio: Debian 12's U-Boot (2023.01) reads the MAC
            // address of a virtio-net-pci device as 52:52:52:52:52:52 (its
            // first byte six times), so DHCP would not know it.
            .arg(format!("virtio-net-device,netdev=n0,mac={MAC}"))
            .stdin(Stdio::null())
            .stdout(File::create(console)?)
            .stderr(File::create(console.with_extension("stderr"))?)
            .spawn()
            .context("starting qemu-system-aarch64")?,
    );
    let mut timeline = Timeline::default();
    let outcome = loop {
        let t = started.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&fs::read(console)?).into_owned();
        let log = server.log();
        timeline.check(t, "U-Boot banner", text.contains("U-Boot 20"));
        timeline.check(
            t,
            "DHCPACK to U-Boot (server)",
            log.contains(&format!("to {NODE} (")),
        );
        timeline.check(
            t,
            "boot.scr.uimg sent (server)",
            log.contains(&format!("({NODE}): boot.scr.uimg (generated")),
        );
        timeline.check(
            t,
            "script runs",
            text.contains(&format!("lazyboot: booting {NODE}")),
        );
        timeline.check(
            t,
            "kernel sent (server)",
            log.lines()
                .any(|l| l.contains("vmlinuz-") && l.contains("read to the end")),
        );
        timeline.check(
            t,
            "initrd sent (server)",
            log.lines()
                .any(|l| l.contains("initrd.img-") && l.contains("read to the end")),
        );
        timeline.check(t, "booti", text.contains("Starting kernel"));
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
            log.contains(&format!("mounted /nodes/{NODE}")),
        );
        timeline.check(
            t,
            "NFS root mounted",
            text.contains("lazyboot-initramfs: mounted"),
        );
        timeline.check(t, "/sbin/init runs", text.contains("lazyboot-root:"));
        timeline.check(t, "marker", text.contains(MARKER));
        if text.contains(MARKER) {
            break Ok(text);
        }
        if let Some(fatal) = [
            "Kernel panic",
            "lazyboot-initramfs: FAIL",
            &format!("lazyboot: booting {NODE} failed"),
        ]
        .into_iter()
        .find(|f| text.contains(f))
        .or_else(|| {
            // U-Boot's prompt: the distro boot gave up.
            (text.contains("\n=> ") && !text.contains("Starting kernel")).then_some("=> ")
        }) {
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
    // The guest powers off (PSCI) right after the marker.
    let deadline = Instant::now() + Duration::from_secs(20);
    while qemu.0.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    timeline.check(
        started.elapsed().as_secs_f64(),
        "QEMU exited",
        qemu.0.try_wait()?.is_some(),
    );
    eprintln!("U-Boot boot of {NODE}:\n{}", timeline.show());
    match outcome {
        Ok(text) => Ok(text),
        Err(why) => {
            let console = String::from_utf8_lossy(&fs::read(console)?).into_owned();
            bail!(
                "{NODE}: {why}\n--- console (last 60 lines) ---\n{}\n--- server log (last 60 lines) ---\n{}",
                tail(&console, 60),
                tail(&server.log(), 60)
            );
        }
    }
}

#[test]
fn qemu_uboot_boots_from_lazyboot() -> Result<()> {
    let test = "qemu_uboot_boots_from_lazyboot";
    if !common::require_root_and_tools(test, &[TOOLS, common::qemu::BOOT_IMAGE_TOOLS].concat()) {
        return Ok(());
    }
    if !Path::new(UBOOT).exists() {
        let msg = format!("{test}: skipped: no {UBOOT} (u-boot-qemu)");
        if std::env::var_os(common::REQUIRE_ENV).is_some_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("NOTICE: {msg}");
        return Ok(());
    }
    let layout = boot_image("arm64", TAG)?;
    let tmp = tempfile::Builder::new()
        .prefix("lazyboot-qemu-uboot.")
        .tempdir()?;
    let work = tmp.path().to_path_buf();
    let other = work.join("riscv64");
    fs::create_dir_all(&other)?;
    one_layer_image(&other, "mkdir -p $r/etc && echo riscv64 > $r/etc/arch")?;
    run(Command::new("umoci")
        .args(["config", "--os", "linux", "--architecture", "riscv64"])
        .arg("--image")
        .arg(format!("{}:os", other.join("layout").display())))?;
    let reg = Registry::start()?;
    push_platforms(
        &reg,
        "os/qemu-uboot:1",
        &[(&other.join("layout"), "os"), (&layout, TAG)],
    )?;
    let image = reg.reference("os/qemu-uboot:1");

    let tap = Tap::new()?;
    let net = format!("10.217.{}", tap.subnet);
    let nodes = format!(
        "\n[[nodes]]\nname = \"{NODE}\"\nmac = \"{MAC}\"\nkind = \"uboot\"\nimage = \"{image}\"\n\
         root = \"ephemeral\"\nkernel_args = \"console=ttyAMA0 panic=-1\"\n"
    );
    let config = lab_config(&tap.name, tap.server_ip, &net, &work, "", &nodes);
    let config_path = work.join("lazyboot.toml");
    fs::write(&config_path, config)?;
    let server = Serve::new(&config_path)
        .log(&work.join("server.log"))
        .start()?;
    // U-Boot does not look for IPv6 routers; the initramfs' kernel does
    // not wait for them either. Kept for parity with the iPXE bench.
    let _adverts = RouterAdverts::start(&tap.name)?;

    let console = work.join(format!("console-{NODE}.log"));
    let result = boot(&tap, &server, &console);
    if std::env::var_os("LAZYBOOT_QEMU_KEEP").is_some_and(|v| v == "1") {
        let kept = tmp.keep();
        eprintln!("kept {}", kept.display());
    }
    let text = result?;
    let guest: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("lazyboot") || l.contains("LAZYBOOT"))
        .collect();
    eprintln!("guest {NODE}:\n{}", guest.join("\n"));
    let log = server.log();
    assert!(
        log.contains(&format!(
            "for linux/arm64 (from DHCP client architecture 22) node={NODE}"
        )),
        "the node did not get linux/arm64 by its client architecture:\n{}",
        tail(&log, 40)
    );
    let marker = text
        .lines()
        .find(|l| l.contains(MARKER))
        .context("marker line")?;
    assert!(
        marker.trim_end().ends_with(&format!("{MARKER} {NODE}")),
        "wrong marker {marker:?}"
    );
    let root = format!("lazyboot-root: / is {}:/nodes/{NODE} / nfs", tap.server_ip);
    assert!(text.contains(&root), "root is not our NFS export");
    let want = expected_checks(false, false)?;
    let summary = format!("lazyboot-root: checks done: {want} ok, 0 failed, mode writable");
    assert!(
        text.contains(&summary),
        "want {summary:?}, got:\n{}",
        guest
            .iter()
            .filter(|l| l.contains("lazyboot-check: FAIL") || l.contains("checks done"))
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The boot went through U-Boot: its DHCP, the generated script, and
    // the kernel and initrd by TFTP.
    assert!(
        log.contains(&format!("to {NODE} (")),
        "no DHCP answer:\n{}",
        tail(&log, 40)
    );
    for what in ["boot.scr.uimg (generated", "vmlinuz-", "initrd.img-"] {
        assert!(
            log.contains(&format!("({NODE}): {what}")),
            "TFTP {what}:\n{}",
            tail(&log, 40)
        );
    }
    assert!(
        log.contains(&format!("mounted /nodes/{NODE}")),
        "no MNT:\n{}",
        tail(&log, 40)
    );
    Ok(())
}
