//! The U-Boot path on riscv64 end to end: a QEMU riscv64 `virt` guest runs
//! OpenSBI (`-bios default`) and Debian's U-Boot (`u-boot-qemu`, target
//! qemu-riscv64_smode) as its S-mode firmware, whose distro boot does
//! `dhcp ${scriptaddr} boot.scr.uimg; source`. `lazyboot serve` answers
//! the DHCP (vendor class `U-Boot`), serves the generated riscv
//! `boot.scr.uimg` over TFTP (port 69), the script loads the kernel with
//! `tftpboot` and starts it with `booti` on the firmware's device tree.
//! There is no initramfs: the kernel mounts the node's NFS root itself
//! from lazyboot's arguments (`root=/dev/nfs nfsroot=... ip=dhcp`) and runs
//! the image's static `/sbin/init`, which checks its root and prints the
//! marker.
//!
//! The image tag is multi-platform: the arm64 boot image of
//! integration/qemu_uboot.rs first, then the riscv64 image, and the node
//! names no platform. Debian's riscv64 U-Boot sends the vendor class
//! `U-Boot` and no client architecture (option 93), so the node gets the
//! `uboot` kind's default, linux/riscv64; the arm64 kernel would not boot.
//!
//! Debian 12 has no riscv64 kernel: one is built from `linux-source-6.1`
//! with a tiny configuration (integration/fixtures/build-riscv64-kernel.sh,
//! a few minutes) and cached under /var/cache/lazyboot-test/riscv64-kernel
//! (see common::riscv64).
//!
//! Network as in qemu_uboot.rs: a tap `lbqtapN` with 10.217.N.1/24, QEMU's
//! virtio-net on virtio-mmio at its other end.
//!
//! `LAZYBOOT_QEMU_KEEP=1` keeps the work dir (console log, server log).

mod common;

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::qemu::{boot_image, lab_config, wait_for_console, Qemu, Tap, Timeline};
use common::riscv64::{riscv64_image, riscv64_kernel};
use common::serve::{Serve, Server};
use common::{push_platforms, tail, Registry};

/// Besides `common::qemu::BOOT_IMAGE_TOOLS` and `common::riscv64::RISCV64_TOOLS`.
const TOOLS: &[&str] = &["ip", "sysctl", "qemu-system-riscv64"];
/// Debian `u-boot-qemu`.
const UBOOT: &str = "/usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin";
const ARM64_TAG: &str = "boot-arm64";
const RISCV64_TAG: &str = "boot-riscv64";
const MARKER: &str = common::qemu::BOOT_MARKER;
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const NODE: &str = "rv";
const MAC: &str = "52:54:00:12:35:02";
/// The `lazyboot-check` lines of riscv64-image/init.c on a writable root.
const CHECKS: usize = 8;

/// Boot the node in QEMU until its marker (or a failure); the console text.
fn boot(tap: &Tap, server: &Server, console: &Path) -> Result<String> {
    let mut qemu = Qemu(
        Command::new("qemu-system-riscv64")
            .args(["-M", "virt", "-m", "512", "-smp", "1", "-accel", "tcg"])
            .args(["-bios", "default", "-kernel", UBOOT])
            .args(["-nographic", "-no-reboot"])
            .arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                tap.name
            ))
            .arg("-device")
            // virtio-mmio, as on arm64: Debian 12's U-Boot misreads the MAC
            // address of a virtio-net-pci device.
            .arg(format!("virtio-net-device,netdev=n0,mac={MAC}"))
            .stdin(Stdio::null())
            .stdout(File::create(console)?)
            .stderr(File::create(console.with_extension("stderr"))?)
            .spawn()
            .context("starting qemu-system-riscv64")?,
    );
    let booting = format!("lazyboot: booting {NODE}");
    let milestones = [
        ("OpenSBI", "OpenSBI v"),
        ("U-Boot banner", "U-Boot 20"),
        ("script runs", booting.as_str()),
        ("booti", "Starting kernel"),
        ("kernel start", "Linux version"),
        ("kernel DHCP done", "IP-Config: Complete"),
        ("NFS root mounted", "VFS: Mounted root (nfs"),
        ("/sbin/init runs", "lazyboot-root:"),
    ];
    let failed = format!("lazyboot: booting {NODE} failed");
    let fatal = [
        "Kernel panic",
        failed.as_str(),
        // U-Boot's prompt: the distro boot gave up.
        "\n=> ",
    ];
    let (acked, script, mounted) = (
        format!("to {NODE} ("),
        format!("({NODE}): boot.scr.uimg (generated"),
        format!("mounted /nodes/{NODE}"),
    );
    let server_milestones = |t: f64, _: &str, timeline: &mut Timeline| {
        let log = server.log();
        timeline.check(t, "DHCPACK to U-Boot (server)", log.contains(&acked));
        timeline.check(t, "boot.scr.uimg sent (server)", log.contains(&script));
        timeline.check(
            t,
            "kernel sent (server)",
            log.lines()
                .any(|l| l.contains("vmlinuz-") && l.contains("read to the end")),
        );
        timeline.check(t, "MNT (server)", log.contains(&mounted));
        Ok(())
    };
    let outcome = wait_for_console(
        &mut qemu,
        console,
        MARKER,
        &fatal,
        &milestones,
        BOOT_TIMEOUT,
        server_milestones,
    );
    let (_, text, timeline) = outcome.with_context(|| {
        format!(
            "{NODE} did not boot\n--- server log (last 60 lines) ---\n{}",
            tail(&server.log(), 60)
        )
    })?;
    eprintln!("U-Boot riscv64 boot of {NODE}:\n{}", timeline.show());
    // The guest powers off (SBI system reset) right after the marker.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while qemu.0.try_wait()?.is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(text)
}

#[test]
fn qemu_uboot_riscv64_boots_from_lazyboot() -> Result<()> {
    let test = "qemu_uboot_riscv64_boots_from_lazyboot";
    let tools = [
        TOOLS,
        common::qemu::BOOT_IMAGE_TOOLS,
        common::riscv64::RISCV64_TOOLS,
    ]
    .concat();
    if !common::require_root_and_tools(test, &tools) {
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
    let kernel = riscv64_kernel()?;
    let arm64 = boot_image("arm64", ARM64_TAG)?;
    let tmp = tempfile::Builder::new()
        .prefix("lazyboot-qemu-uboot-riscv64.")
        .tempdir()?;
    let work = tmp.path().to_path_buf();
    let riscv64 = riscv64_image(&work.join("riscv64"), RISCV64_TAG, &kernel)?;
    let reg = Registry::start()?;
    push_platforms(
        &reg,
        "os/uboot-boards:1",
        &[(&arm64, ARM64_TAG), (&riscv64, RISCV64_TAG)],
    )?;
    let image = reg.reference("os/uboot-boards:1");

    let tap = Tap::new()?;
    let net = format!("10.217.{}", tap.subnet);
    // No `platform`: what U-Boot's request says picks it.
    let nodes = format!(
        "\n[[nodes]]\nname = \"{NODE}\"\nmac = \"{MAC}\"\nkind = \"uboot\"\nimage = \"{image}\"\n\
         root = \"ephemeral\"\nkernel_args = \"console=ttyS0 earlycon panic=-1\"\n"
    );
    let config = lab_config(&tap.name, tap.server_ip, &net, &work, "", &nodes);
    let config_path = work.join("lazyboot.toml");
    fs::write(&config_path, config)?;
    let server = Serve::new(&config_path)
        .log(&work.join("server.log"))
        .start()?;

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
    let opening = log
        .lines()
        .find(|l| l.contains("opening ") && l.contains(&image))
        .with_context(|| format!("no `opening` line:\n{}", tail(&log, 40)))?;
    eprintln!("server: {opening}");
    assert!(
        opening.contains("for linux/riscv64 (from the default of its kind)"),
        "wrong platform, or U-Boot now names its architecture: {opening}"
    );
    let marker = text
        .lines()
        .find(|l| l.contains(MARKER))
        .context("marker line")?;
    assert!(
        marker.trim_end().ends_with(&format!("{MARKER} {NODE}")),
        "wrong marker {marker:?}"
    );
    assert!(
        text.contains("lazyboot-root: kernel ") && text.contains(" on riscv64, "),
        "not a riscv64 kernel"
    );
    let root = format!("lazyboot-root: / is {}:/nodes/{NODE} / nfs ", tap.server_ip);
    assert!(text.contains(&root), "root is not our NFS export");
    let summary = format!("lazyboot-root: checks done: {CHECKS} ok, 0 failed, mode writable");
    assert!(
        text.contains(&summary),
        "want {summary:?}, got:\n{}",
        guest.join("\n")
    );
    // The boot went through U-Boot: its DHCP, the generated riscv script,
    // the kernel by TFTP, the kernel's own NFS mount.
    assert!(
        log.contains(&format!("to {NODE} (")),
        "no DHCP answer:\n{}",
        tail(&log, 40)
    );
    for what in ["boot.scr.uimg (generated", "vmlinuz-"] {
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
