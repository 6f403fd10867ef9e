//! DHCP through a real relay agent: Debian's ISC `dhcrelay` on a router
//! between `lazyboot serve` and a machine on another subnet
//! (`common::dhcp_relay::RelayLab`, three network namespaces). The machine
//! gets an address from the `[[dhcp.subnets]]` pool with that subnet's
//! mask and router and boot options naming the server; then, configured as
//! DHCP said, it fetches its boot files over TFTP from the server through
//! the router, renews its lease by unicast straight to the server, and
//! reads the API, which the relayed subnet may read without a token.

mod common;

use anyhow::{Context, Result};
use common::dhcp_relay::RelayLab;
use common::dhcpc::{option_bytes, run_client_in};
use common::netboot::build_boot_image;
use common::serve::Serve;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::Path;

const TOOLS: &[&str] = &["ip", "python3", "dhcrelay", "atftp", "tftp", "umoci"];
const PC_MAC: &str = "52:54:00:21:80:05";
const BIOS_ROM_OPTS: &[&str] = &[
    "--opt",
    "60=s:PXEClient:Arch:00000:UNDI:002001",
    "--opt",
    "93=h:0000",
];
const IPXE_OPTS: &[&str] = &["--opt", "77=s:iPXE", "--opt", "93=h:0000"];

fn config(lab: &RelayLab, dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("lazyboot.toml");
    std::fs::write(
        &path,
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
lease_secs = 600

[[dhcp.subnets]]
network = "10.218.5.0/24"
pool_start = "10.218.5.100"
pool_end = "10.218.5.150"
router = "{relay}"
dns = ["{server}"]
domain = "far.lan"
lease_secs = 900

[[nodes]]
name = "far-pc"
mac = "{PC_MAC}"
kind = "ipxe"
image = "oci:{layout}:os"
root = "readonly"
"#,
            iface = lab.server_if,
            server = lab.server_ip,
            relay = lab.relay_ip,
            state = dir.join("state").display(),
            cache = dir.join("cache").display(),
            layout = dir.join("layout").display(),
        ),
    )?;
    Ok(path)
}

/// A full exchange through the relay; the OFFER and ACK, both required.
fn dora(lab: &RelayLab, opts: &[&str]) -> Result<(Value, Value)> {
    let mut args = vec!["--timeout", "10"];
    args.extend(opts);
    let r = run_client_in(&lab.client_ns, lab.client_if, "dora", &args)?;
    let (offer, ack) = (r["offer"].clone(), r["ack"].clone());
    anyhow::ensure!(
        offer["msg_type"] == 2 && ack["msg_type"] == 5,
        "no OFFER and ACK through the relay: {r:#}\ndhcrelay:\n{}",
        lab.relay_output()
    );
    Ok((offer, ack))
}

fn hex_ip(ip: Ipv4Addr) -> Option<Vec<u8>> {
    Some(ip.octets().to_vec())
}

/// Option `code` of a reply, every byte (`option_bytes` drops trailing
/// NULs, which binary options may end with).
fn raw(reply: &Value, code: u8) -> Option<Vec<u8>> {
    reply["options"][code.to_string()]
        .as_str()
        .map(|h| hex::decode(h).unwrap())
}

/// What every reply through the relay must say.
fn assert_subnet_options(lab: &RelayLab, r: &Value) {
    let server = lab.server_ip.to_string();
    assert_eq!(r["siaddr"], server, "next-server: {r:#}");
    assert_eq!(r["giaddr"], lab.relay_ip.to_string(), "giaddr kept: {r:#}");
    assert_eq!(
        r["from"],
        format!("{}:67", lab.relay_ip),
        "forwarded by the relay"
    );
    assert_eq!(raw(r, 54), hex_ip(lab.server_ip), "server id");
    assert_eq!(raw(r, 1), Some(vec![255, 255, 255, 0]), "mask");
    assert_eq!(raw(r, 3), hex_ip(lab.relay_ip), "router");
    assert_eq!(raw(r, 6), hex_ip(lab.server_ip), "dns");
    assert_eq!(option_bytes(r, 15).as_deref(), Some(&b"far.lan"[..]));
    assert_eq!(raw(r, 51), Some(900u32.to_be_bytes().to_vec()));
    assert_eq!(
        option_bytes(r, 66),
        Some(server.into_bytes()),
        "TFTP server"
    );
    // dhcrelay -a strips the option 82 it added (and with -D drops any
    // reply that does not echo it).
    assert_eq!(option_bytes(r, 82), None);
}

fn in_relayed_pool(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[..3] == [10, 218, 5] && (100..=150).contains(&o[3])
}

#[test]
fn a_node_behind_a_relay_gets_its_subnet_and_boots_across_it() -> Result<()> {
    if !common::require_root_and_tools("a_node_behind_a_relay", TOOLS) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    build_boot_image(dir.path(), "farnode")?;
    let mut lab = RelayLab::new()?;
    // -a adds option 82 (circuit id: the client's interface); -D drops
    // every reply that does not carry it back.
    lab.start_relay(&["-a", "-D"], &dir.path().join("dhcrelay.log"))?;
    let config = config(&lab, dir.path())?;
    let server = Serve::new(&config).in_netns(&lab.server_ns).start()?;
    common::run(
        lab.client("ip")
            .args(["link", "set", "cli0", "address", PC_MAC]),
    )?;

    // The PC's PXE ROM: an address of the relayed pool, chainloaded to iPXE.
    let (offer, ack) = dora(&lab, BIOS_ROM_OPTS)?;
    for r in [&offer, &ack] {
        assert_subnet_options(&lab, r);
        assert_eq!(r["file"], "undionly.kpxe", "{r:#}");
    }
    let ip: Ipv4Addr = ack["yiaddr"].as_str().context("yiaddr")?.parse()?;
    assert!(in_relayed_pool(ip), "{ip} is not from the relayed pool");
    assert!(
        lab.relay_output()
            .contains("Adding 9-byte relay agent option"),
        "{}",
        lab.relay_output()
    );

    // Configured from the reply (mask /24, router from option 3), the
    // machine reaches next-server through the router.
    lab.configure_client(ip, 24, lab.relay_ip)?;
    let rom = dir.path().join("undionly.kpxe");
    common::run(
        lab.client("timeout")
            .args(["60", "atftp", "--get", "-r", "undionly.kpxe", "-l"])
            .arg(&rom)
            .args([&lab.server_ip.to_string(), "69"]),
    )?;
    assert!(
        std::fs::read(&rom)? == std::fs::read("/usr/lib/ipxe/undionly.kpxe")?,
        "undionly.kpxe differs"
    );

    // iPXE asks again (still through the relay) and gets its script, made
    // for this node: TFTP knows it by the address DHCP bound.
    let (offer, ack) = dora(&lab, IPXE_OPTS)?;
    for r in [&offer, &ack] {
        assert_subnet_options(&lab, r);
        assert_eq!(r["file"], "boot.ipxe", "{r:#}");
    }
    assert_eq!(ack["yiaddr"], ip.to_string(), "iPXE keeps the ROM's lease");
    let script = dir.path().join("boot.ipxe");
    common::run(
        lab.client("timeout")
            .args([
                "60",
                "tftp",
                "-m",
                "binary",
                &lab.server_ip.to_string(),
                "69",
            ])
            .args(["-c", "get", "boot.ipxe"])
            .arg(&script),
    )?;
    let script = std::fs::read_to_string(&script)?;
    assert!(
        script.starts_with("#!ipxe")
            && script.contains("/nodes/far-pc")
            && script.contains(&lab.server_ip.to_string()),
        "{script}"
    );
    let kernel = dir.path().join("vmlinuz");
    common::run(
        lab.client("timeout")
            .args(["60", "atftp", "--get", "-r", "vmlinuz", "-l"])
            .arg(&kernel)
            .args([&lab.server_ip.to_string(), "69"]),
    )?;
    assert!(
        std::fs::read(&kernel)?
            == std::fs::read(dir.path().join("bundle/rootfs/boot/vmlinuz-6.1.0-test"))?,
        "vmlinuz differs"
    );

    // Renewal: unicast straight to the server (no relay, no giaddr), answered
    // by unicast with the subnet's configuration.
    let ip_s = ip.to_string();
    let server_s = lab.server_ip.to_string();
    let mut args = vec!["--ciaddr", &ip_s, "--server", &server_s, "--timeout", "5"];
    args.extend(IPXE_OPTS);
    let r = run_client_in(&lab.client_ns, lab.client_if, "request", &args)?;
    let replies = r["replies"].as_array().cloned().unwrap_or_default();
    assert_eq!(replies.len(), 1, "{r:#}");
    let renewed = &replies[0];
    assert_eq!(renewed["msg_type"], 5, "{renewed:#}");
    assert_eq!(renewed["yiaddr"], ip_s);
    assert_eq!(renewed["giaddr"], "0.0.0.0");
    assert_eq!(renewed["from"], format!("{server_s}:67"));
    assert_eq!(raw(renewed, 3), hex_ip(lab.relay_ip), "router kept");
    assert_eq!(raw(renewed, 1), Some(vec![255, 255, 255, 0]));

    // The relayed subnet is among the API's default readers.
    let out = common::run(lab.client("curl").args([
        "-sS",
        "-f",
        "--max-time",
        "20",
        &format!("http://{server_s}:8080/api/v1/nodes"),
    ]))?;
    let nodes: Value = serde_json::from_slice(&out)?;
    let far = nodes
        .as_array()
        .and_then(|l| l.iter().find(|n| n["node"]["name"] == "far-pc"))
        .with_context(|| format!("far-pc not listed: {nodes:#}"))?;
    assert!(far.to_string().contains(&ip_s), "{far:#}");

    let log = server.log();
    assert!(
        log.contains(&format!("DHCPACK {ip_s} to far-pc")),
        "{}",
        common::tail(&log, 40)
    );
    Ok(())
}
