//! A machine on another subnet boots through a DHCP relay: a QEMU (TCG)
//! x86-64 guest, on a bridge in the client namespace of
//! `common::dhcp_relay::RelayLab`, PXE-boots through its iPXE ROM from
//! `lazyboot serve` in the server namespace, two routed hops away through
//! Debian's ISC `dhcrelay`. Its ROM and its initramfs both get their
//! address from the `[[dhcp.subnets]]` pool through the relay; the kernel,
//! the initrd and the NFS root cross the router. The image's /sbin/init
//! runs its checks on the writable root and prints the marker.

mod common;

use anyhow::{ensure, Result};
use common::dhcp_relay::RelayLab;
use common::ip;
use common::qemu::{boot_image, pxe_guest_on, wait_for_console};
use common::serve::Serve;
use common::tail;
use std::time::Duration;

/// Besides `common::qemu::BOOT_IMAGE_TOOLS`.
const TOOLS: &[&str] = &["ip", "dhcrelay", "qemu-system-x86_64"];
/// The boot image's tag (shared with qemu_boot.rs's cached build).
const TAG: &str = "boot";
const MAC: &str = "52:54:00:21:80:0a";
const NODE: &str = "far-pc";
const MARKER: &str = common::qemu::BOOT_MARKER;
/// TCG is slow and the two cores are shared; iPXE also waits for IPv6
/// autoconfiguration (no router adverts here).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn a_qemu_node_behind_a_relay_boots_over_nfs_across_the_router() -> Result<()> {
    if !common::require_root_and_tools(
        "a_qemu_node_behind_a_relay",
        &[TOOLS, common::qemu::BOOT_IMAGE_TOOLS].concat(),
    ) {
        return Ok(());
    }
    if !common::qemu::require_virtio_rom("a_qemu_node_behind_a_relay") {
        return Ok(());
    }
    let layout = boot_image("amd64", TAG)?;
    let tmp = tempfile::Builder::new()
        .prefix("lazyboot-qemu-relay.")
        .tempdir()?;
    let work = tmp.path();
    let mut lab = RelayLab::new()?;
    lab.start_relay(&["-a", "-D"], &work.join("dhcrelay.log"))?;
    // The guest's NIC joins the client link through a bridge.
    let c = lab.client_ns.clone();
    ip(&["-n", &c, "link", "add", "cbr0", "type", "bridge"])?;
    ip(&["-n", &c, "tuntap", "add", "dev", "ctap0", "mode", "tap"])?;
    for dev in [lab.client_if, "ctap0"] {
        ip(&["-n", &c, "link", "set", dev, "master", "cbr0"])?;
    }
    for dev in ["cbr0", "ctap0"] {
        ip(&["-n", &c, "link", "set", dev, "up"])?;
    }

    let config = work.join("lazyboot.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
interface = "{iface}"
address = "{server}"
state_dir = "{state}"
cache_dir = "{cache}"

[dhcp]
mode = "full"
pool_start = "10.218.4.100"
pool_end = "10.218.4.150"

[[dhcp.subnets]]
network = "10.218.5.0/24"
pool_start = "10.218.5.100"
pool_end = "10.218.5.150"
router = "{relay}"

[[nodes]]
name = "{NODE}"
mac = "{MAC}"
kind = "ipxe"
image = "oci:{layout}:{TAG}"
root = "ephemeral"
kernel_args = "console=ttyS0 panic=-1"
"#,
            iface = lab.server_if,
            server = lab.server_ip,
            relay = lab.relay_ip,
            state = work.join("state").display(),
            cache = work.join("cache").display(),
            layout = layout.display(),
        ),
    )?;
    let server = Serve::new(&config).in_netns(&lab.server_ns).start()?;

    let console = work.join("console.log");
    let mut qemu = pxe_guest_on("ctap0", Some(&c), MAC, 512, &console)?;
    let (marker, text, timeline) = wait_for_console(
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
            ("initramfs DHCP done", "lazyboot-initramfs: address"),
            ("NFS root mounted", "lazyboot-initramfs: mounted"),
            ("/sbin/init runs", "lazyboot-root:"),
        ],
        BOOT_TIMEOUT,
        |_, _, _| Ok(()),
    )
    .map_err(|e| {
        e.context(format!(
            "--- server log (last 40 lines) ---\n{}\n--- dhcrelay ---\n{}",
            tail(&server.log(), 40),
            tail(&lab.relay_output(), 20)
        ))
    })?;
    eprintln!("boot of {NODE} through the relay:\n{}", timeline.show());
    eprintln!("{marker}");

    // The ROM and the initramfs were both served through the relay, from
    // the relayed pool, and the root is the node's NFS export.
    let log = server.log();
    let acks = log
        .lines()
        .filter(|l| l.contains("DHCPACK 10.218.5.") && l.contains(&format!("to {NODE} (")))
        .count();
    ensure!(
        acks >= 2,
        "fewer than 2 relayed leases for {NODE}:\n{}",
        tail(&log, 60)
    );
    ensure!(
        text.contains(&format!("{}:/nodes/{NODE}", lab.server_ip)),
        "the root is not {}:/nodes/{NODE}:\n{}",
        lab.server_ip,
        tail(&text, 40)
    );
    ensure!(
        !text.contains("lazyboot-check: FAIL"),
        "checks failed on the relayed node:\n{}",
        tail(&text, 60)
    );
    ensure!(text.contains("lazyboot-check: ok"), "no checks ran");
    Ok(())
}
