//! HTTP boot of a real guest: a QEMU x86_64 guest (TCG) boots through
//! QEMU's iPXE ROM from `lazyboot serve` with `boot_over = "http"`. Our
//! DHCP hands iPXE `boot.ipxe` as an `http://` URL, the script loads kernel
//! and initrd from `/boot/pc/...` on the HTTP port, and the node's NFS root
//! (read-only) runs the image's `/sbin/init` to its marker. Nothing of the
//! boot may go over TFTP: the server log shows no TFTP transfer at all, and
//! the boot profile names script, kernel and initrd by their HTTP URLs.
//!
//! Same image and network set-up as `qemu_boot.rs` (see there).
//! `LAZYBOOT_QEMU_KEEP=1` keeps the work dir.

mod common;

use anyhow::{Context, Result};
use std::fs;
use std::time::{Duration, Instant};

use common::qemu::{
    boot_image, expected_checks, nfs_port, pxe_guest, wait_for_console, RouterAdverts, Tap,
};
use common::serve::Serve;
use common::{tail, Registry};

const TOOLS: &[&str] = &["ip", "sysctl", "qemu-system-x86_64"];
const TAG: &str = "boot";
const MARKER: &str = common::qemu::BOOT_MARKER;
const MAC: &str = "52:54:00:12:34:58";
/// TCG is slow and the two cores are shared; a boot takes ~15-40 s.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn qemu_ipxe_loads_kernel_and_initrd_over_http() -> Result<()> {
    let test = "qemu_ipxe_loads_kernel_and_initrd_over_http";
    if !common::require_root_and_tools(test, &[TOOLS, common::qemu::BOOT_IMAGE_TOOLS].concat()) {
        return Ok(());
    }
    if !common::qemu::require_virtio_rom(test) {
        return Ok(());
    }
    let layout = boot_image("amd64", TAG)?;
    let tmp = tempfile::Builder::new()
        .prefix("lazyboot-qemu-http.")
        .tempdir()?;
    let work = tmp.path().to_path_buf();
    let reg = Registry::start()?;
    common::push(&layout, TAG, &reg, "os/qemu-http:1")?;
    let tap = Tap::new()?;
    let net = format!("10.217.{}", tap.subnet);
    let http_port = common::free_tcp_port();
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
boot_over = "http"

[profile]
booted_marker = "/etc/lazyboot-booted"

[dhcp]
mode = "full"
pool_start = "{net}.100"
pool_end = "{net}.150"
router = "{server}"

[[nodes]]
name = "pc"
mac = "{MAC}"
kind = "ipxe"
image = "{image}"
root = "readonly"
kernel_args = "console=ttyS0 panic=-1"
"#,
        tap_if = tap.name,
        server = tap.server_ip,
        state = work.join("state").display(),
        cache = work.join("cache").display(),
        nfs = nfs_port(tap.server_ip),
        image = reg.reference("os/qemu-http:1"),
    );
    let config_path = work.join("lazyboot.toml");
    fs::write(&config_path, config)?;
    let server = Serve::new(&config_path)
        .log(&work.join("server.log"))
        .start()?;
    let _adverts = RouterAdverts::start(&tap.name)?;

    let started = Instant::now();
    let console = work.join("console-pc.log");
    let mut qemu = pxe_guest(&tap, MAC, 512, &console)?;
    let base = format!("http://{}:{http_port}/boot/pc", tap.server_ip);
    let result = wait_for_console(
        &mut qemu,
        &console,
        MARKER,
        &[
            "No bootable device",
            "Kernel panic",
            "lazyboot-initramfs: FAIL",
        ],
        &[
            ("iPXE banner", "iPXE"),
            ("kernel start", "Linux version"),
            ("NFS root mounted", "lazyboot-initramfs: mounted"),
        ],
        BOOT_TIMEOUT,
        |t, _, timeline| {
            let log = server.log();
            timeline.check(
                t,
                "initrd sent over HTTP (server)",
                log.lines().any(|l| {
                    l.contains("HTTP: ")
                        && l.contains("initrd.img-")
                        && l.contains("read to the end")
                }),
            );
            Ok(())
        },
    );
    let (marker, text, timeline) = match result {
        Ok(r) => r,
        Err(e) => {
            return Err(e.context(format!(
                "--- server log (last 60 lines) ---\n{}",
                tail(&server.log(), 60)
            )))
        }
    };
    eprintln!(
        "HTTP boot of pc in {:.1?}:\n{}",
        started.elapsed(),
        timeline.show()
    );
    assert!(marker.ends_with(&format!("{MARKER} pc")), "{marker}");
    let want = expected_checks(true, false)?;
    assert!(
        text.contains(&format!(
            "lazyboot-root: checks done: {want} ok, 0 failed, mode readonly"
        )),
        "{}",
        tail(&text, 40)
    );

    // The server: script, kernel and initrd read to the end over HTTP, and
    // no TFTP transfer at all (iPXE got its script as a URL).
    let log = server.log();
    for what in ["boot.ipxe", "vmlinuz-", "initrd.img-"] {
        assert!(
            log.lines()
                .any(|l| l.contains("HTTP: ") && l.contains(&format!("{base}/{what}"))),
            "no HTTP transfer of {what}:\n{}",
            tail(&log, 60)
        );
    }
    let tftp: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TFTP: ") && (l.contains("(pc)") || l.contains("node=pc")))
        .collect();
    assert!(tftp.is_empty(), "TFTP transfers: {tftp:#?}");

    // The profile names every transfer by its URL.
    std::thread::sleep(Duration::from_millis(1500));
    let v = common::profile_json(&work.join("state"), "pc", 1)?;
    let transfers = v["profile"]["tftp"].as_array().context("transfers")?;
    let files: Vec<&str> = transfers
        .iter()
        .filter_map(|t| t["file"].as_str())
        .collect();
    for what in ["boot.ipxe", "vmlinuz-", "initrd.img-"] {
        assert!(
            transfers.iter().any(|t| t["outcome"] == "complete"
                && t["file"]
                    .as_str()
                    .is_some_and(|f| f.starts_with(&format!("{base}/{what}")))),
            "{what}: {files:?}"
        );
    }
    assert!(
        files.iter().all(|f| f.starts_with("http://")),
        "a transfer not over HTTP: {files:?}"
    );
    if std::env::var_os("LAZYBOOT_QEMU_KEEP").is_some_and(|v| v == "1") {
        let kept = tmp.keep();
        eprintln!("kept {}", kept.display());
    }
    drop(qemu);
    Ok(())
}
