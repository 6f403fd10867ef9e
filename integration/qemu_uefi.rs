//! UEFI PXE boots of two architectures from one multi-platform tag: an
//! OCI image index of the amd64 and the arm64 boot images of
//! integration/fixtures/build-boot-image.sh, pushed to a real
//! `docker-registry` and served by one `lazyboot serve`.
//!
//! - `pc`: qemu-system-x86_64 with OVMF (Debian `ovmf`). Its firmware's PXE
//!   client (option 93 = 7) is offered `ipxe.efi`, which asks DHCP again as
//!   iPXE and runs the generated `boot.ipxe`.
//! - `arm`: qemu-system-aarch64 `virt` (Cortex-A57) with AAVMF (Debian
//!   `qemu-efi-aarch64`). Its PXE client (option 93 = 11) is offered GRUB's
//!   network image (Debian `grub-efi-arm64-bin`), which reads the generated
//!   `grub/grub.cfg` over TFTP and boots the kernel with its EFI stub.
//!
//! Neither node has a `platform`: each must boot its own architecture's
//! manifest, chosen by its DHCP client architecture. Both guests run at
//! once (TCG, one CPU each), their NICs without option ROMs so that the
//! firmware's own PXE client does the first DHCP. Each root is read-only;
//! the image's `/sbin/init` runs its checks and prints the marker.
//!
//! Network: a bridge `lbqbrN` with 10.217.N.1/24 and a tap per guest on
//! it (`common::qemu::Lan`), router advertisements so iPXE does not wait
//! for IPv6.
//! `LAZYBOOT_QEMU_KEEP=1` keeps the work dir (consoles, server log).

mod common;

use anyhow::{Context, Result};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::qemu::{
    boot_image, expected_checks, nfs_port, uefi_guest, wait_for_console, Lan, RouterAdverts,
    Timeline, Uefi,
};
use common::serve::Serve;
use common::{tail, Registry};

const TOOLS: &[&str] = &["ip", "sysctl", "qemu-system-x86_64", "qemu-system-aarch64"];
const MARKER: &str = common::qemu::BOOT_MARKER;
/// Debian `grub-efi-arm64-bin`: lazyboot's default `grub_arm64_efi`.
const GRUB: &str = "/usr/lib/grub/arm64-efi/monolithic/grubnetaa64.efi";
/// Two TCG guests on two shared cores: alone, each boots in about a
/// minute.
const BOOT_TIMEOUT: Duration = Duration::from_secs(480);

/// One guest of the test.
struct Guest {
    name: &'static str,
    machine: Uefi,
    mac: &'static str,
    /// The image tag its architecture's boot image was built as (what its
    /// /sbin/init prints as `lazyboot-root: image TAG`).
    tag: &'static str,
    arch: &'static str,
    /// Option 93 its firmware sends.
    client_arch: u16,
}

const GUESTS: [Guest; 2] = [
    Guest {
        name: "pc",
        machine: Uefi::X86_64,
        mac: "52:54:00:12:37:01",
        tag: "boot",
        arch: "amd64",
        client_arch: 7,
    },
    Guest {
        name: "arm",
        machine: Uefi::Aarch64,
        mac: "52:54:00:12:37:02",
        tag: "boot-arm64",
        arch: "arm64",
        client_arch: 11,
    },
];

/// Boot `g` until its marker; its console text and timeline.
fn boot(g: &Guest, tap: &str, work: &Path) -> Result<(String, Timeline)> {
    let console = work.join(format!("console-{}.log", g.name));
    let started = Instant::now();
    let mut qemu = uefi_guest(g.machine, tap, g.mac, 1024, work, &console)?;
    let (_, text, timeline) = wait_for_console(
        &mut qemu,
        &console,
        MARKER,
        &[
            "Kernel panic",
            "lazyboot-initramfs: FAIL",
            &format!("lazyboot: booting {} failed", g.name),
            // The firmware's PXE client failed (no boot file offered, or
            // none served); it would go on to IPv6 and HTTP boot.
            "PXE-E",
            // It gave up on every boot option.
            "UEFI Interactive Shell",
        ],
        &[
            ("PXE download", "Downloading NBP file"),
            ("iPXE banner", "iPXE 1."),
            ("grub.cfg runs", "lazyboot: booting"),
            ("EFI stub", "EFI stub: "),
            ("kernel start", "Linux version"),
            ("NFS root mounted", "lazyboot-initramfs: mounted"),
        ],
        BOOT_TIMEOUT,
        |_, _, _| Ok(()),
    )
    .with_context(|| format!("booting {}", g.name))?;
    // The guest powers off right after the marker; not waited for.
    drop(qemu);
    eprintln!(
        "UEFI boot of {} in {:.1?}:\n{}",
        g.name,
        started.elapsed(),
        timeline.show()
    );
    Ok((text, timeline))
}

#[test]
fn uefi_pcs_and_arm64_boot_their_own_platform_of_one_tag() -> Result<()> {
    let test = "uefi_pcs_and_arm64_boot_their_own_platform_of_one_tag";
    if !common::require_root_and_tools(test, &[TOOLS, common::qemu::BOOT_IMAGE_TOOLS].concat()) {
        return Ok(());
    }
    let mut files: Vec<(&str, &str)> = vec![(GRUB, "grub-efi-arm64-bin")];
    for g in &GUESTS {
        let (code, vars) = g.machine.firmware();
        files.extend([(code, g.machine.package()), (vars, g.machine.package())]);
    }
    if !common::qemu::require_files(test, &files) {
        return Ok(());
    }
    let started = Instant::now();
    let layouts = GUESTS
        .iter()
        .map(|g| boot_image(g.arch, g.tag))
        .collect::<Result<Vec<_>>>()?;
    let tmp = tempfile::Builder::new()
        .prefix("lazyboot-qemu-uefi.")
        .tempdir()?;
    let work = tmp.path().to_path_buf();
    let reg = Registry::start()?;
    let platforms: Vec<_> = GUESTS
        .iter()
        .zip(&layouts)
        .map(|(g, l)| (l.as_path(), g.tag))
        .collect();
    let digests = common::push_platforms(&reg, "os/uefi:1", &platforms)?;
    let image = reg.reference("os/uefi:1");

    let lan = Lan::new(GUESTS.len())?;
    let net = format!("10.217.{}", lan.subnet);
    let http_port = common::free_tcp_port();
    let nodes: String = GUESTS
        .iter()
        .map(|g| {
            format!(
                r#"
[[nodes]]
name = "{name}"
mac = "{mac}"
kind = "ipxe"
image = "{image}"
root = "readonly"
kernel_args = "console={console} panic=-1"
"#,
                name = g.name,
                mac = g.mac,
                console = g.machine.console(),
            )
        })
        .collect();
    let config = format!(
        r#"
[server]
interface = "{tap_if}"
address = "{server}"
state_dir = "{state}"
cache_dir = "{cache}"
cache_size = "2G"
tftp_port = 69
nfs_port = {nfs}
http_port = {http_port}

[dhcp]
mode = "full"
pool_start = "{net}.100"
pool_end = "{net}.150"
router = "{server}"
{nodes}"#,
        tap_if = lan.bridge,
        server = lan.server_ip,
        state = work.join("state").display(),
        cache = work.join("cache").display(),
        nfs = nfs_port(lan.server_ip),
    );
    let config_path = work.join("lazyboot.toml");
    fs::write(&config_path, config)?;
    let server = Serve::new(&config_path)
        .log(&work.join("server.log"))
        .start()?;
    let _adverts = RouterAdverts::start(&lan.bridge)?;

    let boots_started = Instant::now();
    let results: Vec<Result<(String, Timeline)>> = std::thread::scope(|s| {
        let handles: Vec<_> = GUESTS
            .iter()
            .zip(&lan.taps)
            .map(|(g, tap)| {
                let work = &work;
                s.spawn(move || boot(g, tap, work))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("boot thread"))
            .collect()
    });
    let boots = boots_started.elapsed();
    if std::env::var_os("LAZYBOOT_QEMU_KEEP").is_some_and(|v| v == "1") {
        let kept = tmp.keep();
        eprintln!("kept {}", kept.display());
    }
    let log = server.log();
    let mut texts = Vec::new();
    for r in results {
        texts.push(r.map_err(|e| {
            e.context(format!(
                "--- server log (last 60 lines) ---\n{}",
                tail(&log, 60)
            ))
        })?);
    }
    eprintln!(
        "both guests booted in {boots:.1?} ({:.1?} with images, registry and server)",
        started.elapsed()
    );

    let want_checks = expected_checks(true, false)?;
    for ((g, (text, _)), digest) in GUESTS.iter().zip(&texts).zip(&digests) {
        let marker = text
            .lines()
            .find(|l| l.contains(MARKER))
            .context("marker line")?;
        assert!(
            marker.trim_end().ends_with(&format!("{MARKER} {}", g.name)),
            "{}: wrong marker {marker:?}",
            g.name
        );
        let summary =
            format!("lazyboot-root: checks done: {want_checks} ok, 0 failed, mode readonly");
        assert!(
            text.contains(&summary),
            "{}: want {summary:?}:\n{}",
            g.name,
            tail(text, 40)
        );
        let root = format!(
            "lazyboot-root: / is {}:/nodes/{} / nfs",
            lan.server_ip, g.name
        );
        assert!(
            text.contains(&root),
            "{}: root is not our NFS export",
            g.name
        );
        // The node's own architecture's image: its init names the tag
        // that image was built as, and the server opened that platform
        // because of the firmware's client architecture.
        assert!(
            text.lines()
                .any(|l| l.trim_end() == format!("lazyboot-root: image {}", g.tag)),
            "{}: not the {} image:\n{}",
            g.name,
            g.arch,
            tail(text, 40)
        );
        let opened = format!(
            "for linux/{} (from DHCP client architecture {}) node={}",
            g.arch, g.client_arch, g.name
        );
        assert!(
            log.contains(&opened),
            "{}: no {opened:?} in the server log",
            g.name
        );
        let url = format!(
            "http://{}:{http_port}/api/v1/nodes/{}",
            lan.server_ip, g.name
        );
        let node: serde_json::Value = serde_json::from_slice(&common::curl_get(&url, &[])?)?;
        assert_eq!(node["digest"].as_str(), Some(digest.as_str()), "{node}");
    }
    // What each firmware was given: ipxe.efi and then boot.ipxe to the PC,
    // GRUB and its generated grub.cfg to the arm64 machine.
    let read_to_end = |file: &str| {
        log.lines()
            .any(|l| l.contains(&format!("TFTP: {file} read to the end")))
    };
    for file in ["ipxe.efi", "boot.ipxe", "grubnetaa64.efi", "grub/grub.cfg"] {
        assert!(read_to_end(file), "TFTP {file}:\n{}", tail(&log, 60));
    }
    assert!(
        log.contains("(arm): grub/grub.cfg (generated"),
        "{}",
        tail(&log, 60)
    );
    let arm_console = &texts[1].0;
    assert!(
        arm_console.contains("lazyboot: booting arm") && arm_console.contains("EFI stub: "),
        "GRUB did not run the generated grub.cfg:\n{}",
        tail(arm_console, 60)
    );
    Ok(())
}
