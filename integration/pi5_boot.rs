//! A Raspberry Pi 5 network boot, replayed request by request against
//! `lazyboot serve` (no emulator runs the Pi bootloader; see `pi_boot.rs`
//! for the Pi 4). What the replay sends is what Raspberry Pi documents of
//! the Pi 5 (the sources are cited in `clients/pi_replay.py`):
//!
//! - DHCP: the Pi 4's PXE options, with option 97 the GUID "RPi5", board
//!   revision, MAC low bytes and serial ("bootloader configuration",
//!   `DHCP_OPTION97`; rpi-eeprom `firmware-2712/release-notes.md`).
//! - TFTP: no `start4.elf`/`fixup4.dat` (its firmware is in the EEPROM);
//!   `config.txt` first, under the prefix; the self-update's
//!   `pieeprom.sig` lookup; `bcm2712-rpi-5-b.dtb`; the overlay and the
//!   initramfs `config.txt` names; `cmdline.txt`; `kernel_2712.img` (the
//!   Pi 5's default kernel). Every file is probed for its size (tsize,
//!   "Early terminate") and then fetched, with blksize 1468.
//!
//! It is replayed twice, with the serial-number prefix (`TFTP_PREFIX=0`,
//! the default) and with the MAC prefix (`TFTP_PREFIX=2`). The image is
//! Raspberry Pi OS-like: it also holds the Pi 4's files (`start4.elf`,
//! `kernel8.img`), which the Pi 5 never asks for, and traps where the
//! files the Pi must not find exist elsewhere.

mod common;

use anyhow::{Context, Result};
use common::dhcpc::option_bytes as option;
use common::netns::NetLab;
use common::pi::check_pi_reply;
use common::serve::Serve;
use common::{sh, sha256_hex, Registry};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const TOOLS: &[&str] = &["ip", "python3", "nfs-cat"];

/// A MAC of Raspberry Pi Ltd's 2c:cf:67 block, as Pi 5s have.
const PI_MAC: &str = "2c:cf:67:8b:07:c6";
const PI_MAC_PREFIX: &str = "2c-cf-67-8b-07-c6";
const PI_SERIAL: &str = "8b07bcc6";
const HOSTNAME: &[u8] = b"pi5-replay\n";
const CMDLINE: &str = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait quiet\n";
/// The config.txt of the image: names the overlay and the initramfs the
/// firmware then asks for (config.txt `dtoverlay`, `initramfs`).
const CONFIG_TXT: &str = "dtoverlay=vc4-kms-v3d\ninitramfs initramfs_2712 followkernel\n";
/// What the Pi looks for and must not find: its boot directory lacks it.
const MISSING: &str = "pieeprom.sig";

/// The image; returns the umoci bundle's rootfs (the reference bytes).
fn build_image(dir: &Path) -> Result<PathBuf> {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    std::fs::write(dir.join("cmdline.txt"), CMDLINE)?;
    std::fs::write(dir.join("config.txt"), CONFIG_TXT)?;
    sh(&format!(
        r#"
umoci init --layout {l}
umoci new --image {l}:os
umoci unpack --image {l}:os {b}
r={b}/rootfs
fw=$r/boot/firmware
mkdir -p $fw/overlays $fw/{PI_SERIAL} $r/etc $r/sbin
cp {d}/config.txt {d}/cmdline.txt $fw/
head -c 6291456 /dev/urandom > $fw/kernel_2712.img
head -c 3145728 /dev/urandom > $fw/initramfs_2712
head -c 81234 /dev/urandom > $fw/bcm2712-rpi-5-b.dtb
head -c 3913 /dev/urandom > $fw/overlays/vc4-kms-v3d.dtbo
# The Pi 4's and the CM5's files, never asked for by a Pi 5 Model B.
head -c 1048576 /dev/urandom > $fw/start4.elf
head -c 5446 /dev/urandom > $fw/fixup4.dat
head -c 4194304 /dev/urandom > $fw/kernel8.img
head -c 80011 /dev/urandom > $fw/bcm2712-rpi-cm5-cm5io.dtb
# Traps: the missing file where the Pi must not look.
echo LEAK > $fw/{PI_SERIAL}/{MISSING}
echo LEAK > $r/boot/{MISSING}
echo LEAK > $r/{MISSING}
printf 'pi5-replay\n' > $r/etc/hostname
printf '#!/bin/sh\nexec /bin/sh\n' > $r/sbin/init && chmod 0755 $r/sbin/init
umoci repack --image {l}:os {b}
umoci config --image {l}:os --architecture=arm64
"#,
        l = layout.display(),
        b = bundle.display(),
        d = dir.display(),
    ))?;
    Ok(bundle.join("rootfs"))
}

/// Check one replay's TFTP log against the image's files; the generated
/// cmdline.txt it fetched.
fn check_tftp(log: &[Value], fw: &Path, prefix: &str) -> Result<String> {
    let mut cmdline = None;
    let mut full: HashMap<String, usize> = HashMap::new();
    for e in log {
        let (file, op) = (e["file"].as_str().unwrap(), e["op"].as_str().unwrap());
        let result = e["result"].as_str().unwrap_or("?");
        eprintln!("[pi5]   {op:5} {file:50} {result:9} {}", e["tsize"]);
        let rel = file
            .strip_prefix(&format!("{prefix}/"))
            .with_context(|| format!("{file}: not prefixed"))?;
        if rel == MISSING {
            assert_eq!((result, &e["error"][0]), ("not found", &Value::from(1)));
            continue;
        }
        // Every probe: the size and the block size the Pi asked for.
        assert_eq!(e["blksize"], 1468, "{file}: {e}");
        if op == "probe" {
            assert_eq!(result, "aborted", "{file}: {e}");
        } else {
            assert_eq!(result, "data", "{file}: {e}");
            assert_eq!(e["bytes"], e["tsize"], "{file}: {e}");
            *full.entry(rel.to_string()).or_default() += 1;
        }
        if rel == "cmdline.txt" {
            // Generated: the probe and the transfer agree on its size.
            if op == "get" {
                cmdline = Some(e["text"].as_str().context("cmdline text")?.to_string());
            }
            continue;
        }
        let want = std::fs::read(fw.join(rel)).with_context(|| format!("reference {rel}"))?;
        assert_eq!(e["tsize"].as_u64(), Some(want.len() as u64), "{file}: {e}");
        if op == "get" {
            assert_eq!(e["sha256"], sha256_hex(&want).as_str(), "{file}: {e}");
        }
    }
    for rel in [
        "config.txt",
        "bcm2712-rpi-5-b.dtb",
        "overlays/vc4-kms-v3d.dtbo",
        "cmdline.txt",
        "kernel_2712.img",
        "initramfs_2712",
    ] {
        assert_eq!(full.get(rel), Some(&1), "full transfers of {rel}");
    }
    assert_eq!(full.len(), 6, "nothing else was fetched: {full:?}");
    cmdline.context("cmdline.txt never downloaded")
}

#[test]
fn pi5_boot_replay_with_serial_and_mac_prefixes() -> Result<()> {
    let test = "pi5_boot_replay_with_serial_and_mac_prefixes";
    if !common::require_root_and_tools(test, TOOLS) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let rootfs = build_image(tmp.path())?;
    let reg = Registry::start()?;
    common::push(&tmp.path().join("layout"), "os", &reg, "os/raspios:pi5")?;
    let lab = NetLab::new(false)?;
    lab.set_client_mac(PI_MAC)?;
    let lc = lab.serve_config(tmp.path());
    let (tftp_port, nfs_port) = (lc.tftp_port, lc.nfs_port);
    let net = format!("10.213.{}", lab.subnet);
    let server = lab.server_ip.to_string();
    let config = tmp.path().join("lazyboot.toml");
    std::fs::write(
        &config,
        lc.text(
            "",
            &format!(
                r#"
[[nodes]]
name = "pi5-1"
mac = "{PI_MAC}"
serial = "{PI_SERIAL}"
kind = "raspberrypi"
image = "{image}"
"#,
                image = reg.reference("os/raspios:pi5"),
            ),
        ),
    )?;
    // Other crates' warnings too: the log must have none.
    let srv = Serve::new(&config)
        .rust_log("lazyboot=debug,warn")
        .start()?;
    let fw = rootfs.join("boot/firmware");
    let port = tftp_port.to_string();
    for prefix in [PI_SERIAL, PI_MAC_PREFIX] {
        let args = ["--model", "5", "--serial", PI_SERIAL, "--tftp-port", &port];
        let (r, stdout) = common::pi::replay(&lab, &[&args[..], &["--prefix", prefix]].concat())
            .map_err(|e| anyhow::anyhow!("{e:#}\nserver log:\n{}", srv.log()))?;
        eprintln!("[{test}] prefix {prefix}: {}s", r["seconds"]);

        // DHCP: the Pi 4's PXE answer, the GUID echoed back.
        check_pi_reply(&r["offer"], "OFFER", &server, &net);
        check_pi_reply(&r["ack"], "ACK", &server, &net);
        assert_eq!(r["ack"]["msg_type"], 5);
        assert_eq!(r["ack"]["yiaddr"], r["offer"]["yiaddr"]);
        let guid = option(&r["ack"], 97).context("no option 97 in the ACK")?;
        assert_eq!(&guid[..5], b"\0RPi5", "{guid:?}");
        assert_eq!(&guid[13..], 0x8b07_bcc6u32.to_le_bytes(), "{guid:?}");

        // TFTP: every request answered as the firmware needs.
        let log = r["log"].as_array().context("no log")?;
        assert_eq!(log.len(), 13, "{stdout}");
        let cmdline = check_tftp(log, &fw, prefix)?;
        assert!(
            cmdline.starts_with("console=serial0,115200 console=tty1 quiet "),
            "{cmdline}"
        );
        let nfsroot = format!(
            "root=/dev/nfs nfsroot={server}:/nodes/pi5-1,vers=3,tcp,port={nfs_port},mountport={nfs_port},nolock rw ip=dhcp"
        );
        assert!(cmdline.contains(&nfsroot), "{cmdline}");
        assert!(!cmdline.contains("PARTUUID"), "{cmdline}");
    }

    // lazyboot knew it for a Pi 5 from its GUID (said once).
    let text = srv.log();
    let said = format!("{PI_MAC}: the bootloader of a Raspberry Pi 5 family (BCM2712)");
    assert_eq!(text.matches(&said).count(), 1, "server log:\n{text}");
    // The Pi's normal traffic is not worth a warning.
    let alarms: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(alarms.is_empty(), "server warnings:\n{}", alarms.join("\n"));

    // The kernel mounts its root from the address DHCP gave the Pi.
    let out = lab
        .client("nfs-cat")
        .arg(format!(
            "nfs://{server}/nodes/pi5-1/etc/hostname?version=3&nfsport={nfs_port}&mountport={nfs_port}"
        ))
        .output()?;
    assert!(
        out.status.success(),
        "nfs-cat: {}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        srv.log()
    );
    assert_eq!(out.stdout, HOSTNAME);
    Ok(())
}
