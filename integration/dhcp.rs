//! The DHCP server on a real interface, against a scripted client
//! (`clients/dhcp_client.py`) in a network namespace that has no address,
//! like a machine at power-on.

mod common;

use anyhow::{bail, Context, Result};
use common::dhcpc::run_client as client;
use common::netns::NetLab;
use common::serve::InProcess;
use lazyboot::cache::ChunkCache;
use lazyboot::config::Config;
use lazyboot::serve::ServeContext;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

const PI_MAC: &str = "dc:a6:32:00:00:01";
const UBOOT_MAC: &str = "6c:cf:39:00:00:02";
const BIOS_MAC: &str = "52:54:00:00:00:03";
const EFI_MAC: &str = "52:54:00:00:00:04";
const FIXED_MAC: &str = "52:54:00:00:00:05";
const UNKNOWN_MAC: &str = "02:00:00:00:00:99";

/// What a Raspberry Pi 4's bootloader sends: the generic PXE vendor class,
/// x86 BIOS arch, UNDI 2.1, and a GUID starting "RPi4".
const PI4_OPTS: &[&str] = &[
    "--opt",
    "60=s:PXEClient:Arch:00000:UNDI:002001",
    "--opt",
    "93=h:0000",
    "--opt",
    "94=h:010201",
    "--opt",
    "97=h:00525069340102030405060708090a0b0c",
];
const BIOS_ROM_OPTS: &[&str] = &[
    "--opt",
    "60=s:PXEClient:Arch:00000:UNDI:002001",
    "--opt",
    "93=h:0000",
];
const EFI_ROM_OPTS: &[&str] = &[
    "--opt",
    "60=s:PXEClient:Arch:00007:UNDI:003016",
    "--opt",
    "93=h:0007",
];
const UBOOT_OPTS: &[&str] = &["--opt", "60=s:U-Boot.armv8"];

fn required() -> bool {
    common::require_root_and_tools("dhcp", &["ip", "python3"])
}

/// A lab whose client has no address. Created one at a time: `NetLab::new`
/// names its interfaces from a counter it reads twice (`fetch_add`, then
/// `load`), so labs created concurrently by parallel tests can get the same
/// names and fail with "File exists".
fn new_lab() -> Result<NetLab> {
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    NetLab::new(false)
}

fn config_text(lab: &NetLab, dir: &Path, mode: &str) -> String {
    let (s, n) = (lab.server_ip, lab.subnet);
    format!(
        r#"
[server]
interface = "{iface}"
address = "{s}"
state_dir = "{state}"
cache_dir = "{cache}"

[dhcp]
mode = "{mode}"
pool_start = "10.213.{n}.100"
pool_end = "10.213.{n}.150"
lease_secs = 600
router = "{s}"
dns = ["{s}"]
domain = "lab.test"

[[nodes]]
name = "pi1"
mac = "{PI_MAC}"
kind = "raspberrypi"
image = "img:pi"

[[nodes]]
name = "mars1"
mac = "{UBOOT_MAC}"
kind = "uboot"
image = "img:rv"

[[nodes]]
name = "bios-pc"
mac = "{BIOS_MAC}"
kind = "ipxe"
image = "img:pc"

[[nodes]]
name = "efi-pc"
mac = "{EFI_MAC}"
kind = "ipxe"
image = "img:pc"

[[nodes]]
name = "fixed-pc"
mac = "{FIXED_MAC}"
kind = "ipxe"
image = "img:pc"
ip = "10.213.{n}.20"
"#,
        iface = lab.host_if,
        state = dir.join("state").display(),
        cache = dir.join("cache").display(),
    )
}

/// `lazyboot::dhcp::run` in its own runtime (one worker), as `serve` runs
/// it; `ctx` is the server's, for looking at its inventory.
struct Server {
    ctx: Arc<ServeContext>,
    task: InProcess,
}

impl Server {
    fn start(config: &str, dir: &Path) -> Result<Server> {
        let cfg = Config::parse(config, "dhcp-test.toml")?;
        let cache = Arc::new(ChunkCache::open(&dir.join("cache"), 1 << 30)?);
        let ctx = ServeContext::new(cfg, cache);
        let task = InProcess::start("dhcp::run", 1, lazyboot::dhcp::run(ctx.clone()))?;
        Ok(Server { ctx, task })
    }

    /// Abort the task and wait until its sockets are gone.
    fn stop(&mut self) {
        self.task.stop();
    }
}

/// The OFFER and ACK of a full exchange, both required.
fn dora(lab: &NetLab, args: &[&str]) -> Result<(Value, Value)> {
    let r = client(lab, "dora", args)?;
    let (offer, ack) = (r["offer"].clone(), r["ack"].clone());
    if offer.is_null() || ack.is_null() {
        bail!("incomplete exchange: {r:#}");
    }
    assert_eq!(offer["msg_type"], 2, "OFFER: {offer:#}");
    assert_eq!(ack["msg_type"], 5, "ACK: {ack:#}");
    assert_eq!(ack["yiaddr"], offer["yiaddr"]);
    Ok((offer, ack))
}

fn replies(v: &Value) -> Vec<Value> {
    v["replies"].as_array().cloned().unwrap_or_default()
}

fn opt(reply: &Value, code: u8) -> Option<String> {
    reply["options"][code.to_string()]
        .as_str()
        .map(str::to_string)
}

fn hex_of(s: &str) -> String {
    hex::encode(s)
}

fn hex_nul(s: &str) -> String {
    hex::encode(format!("{s}\0"))
}

fn ip_of(reply: &Value, field: &str) -> Ipv4Addr {
    reply[field].as_str().unwrap().parse().unwrap()
}

fn in_pool(lab: &NetLab, ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[..3] == [10, 213, lab.subnet] && (100..=150).contains(&o[3])
}

/// Checks common to every full-mode OFFER/ACK from this server.
fn assert_full_mode_options(lab: &NetLab, r: &Value) {
    let server = lab.server_ip.to_string();
    assert_eq!(r["siaddr"], server, "{r:#}");
    assert_eq!(
        opt(r, 54),
        Some(hex::encode(lab.server_ip.octets())),
        "{r:#}"
    );
    assert_eq!(opt(r, 51).as_deref(), Some("00000258"), "600 s lease");
    assert_eq!(opt(r, 1).as_deref(), Some("ffffff00"));
    assert_eq!(opt(r, 3), Some(hex::encode(lab.server_ip.octets())));
    assert_eq!(opt(r, 6), Some(hex::encode(lab.server_ip.octets())));
    assert_eq!(opt(r, 15), Some(hex_of("lab.test")));
    assert_eq!(opt(r, 66), Some(hex_nul(&server)));
}

fn pi_menu_hex() -> String {
    let mut v = vec![6u8, 1, 3, 10, 4, 0, b'P', b'X', b'E', 9, 23, 0, 0, 20];
    v.extend(b"Raspberry Pi Boot   ");
    v.push(255);
    hex::encode(v)
}

#[test]
fn full_mode_boots_each_node_kind() -> Result<()> {
    if !required() {
        return Ok(());
    }
    let lab = new_lab()?;
    let dir = tempfile::tempdir()?;
    let server = Server::start(&config_text(&lab, dir.path(), "full"), dir.path())?;
    let ctx = &server.ctx;
    let mut addresses = Vec::new();

    // Raspberry Pi 4: option 60 in the DISCOVER only.
    lab.set_client_mac(PI_MAC)?;
    let mut args = PI4_OPTS.to_vec();
    args.extend(["--request-drop", "60"]);
    let (offer, ack) = dora(&lab, &args)?;
    for r in [&offer, &ack] {
        assert_full_mode_options(&lab, r);
        assert_eq!(opt(r, 60), Some(hex_of("PXEClient")));
        assert_eq!(opt(r, 43), Some(pi_menu_hex()));
        assert_eq!(
            opt(r, 97).as_deref(),
            Some("00525069340102030405060708090a0b0c")
        );
        assert_eq!(opt(r, 67), None);
        assert_eq!(opt(r, 175), None);
        assert_eq!(r["file"], "");
    }
    let pi_ip = ip_of(&ack, "yiaddr");
    assert!(in_pool(&lab, pi_ip), "{pi_ip}");
    assert_eq!(ctx.node_ip("pi1"), Some(pi_ip));
    assert_eq!(ctx.boot_generation("pi1"), 1);
    addresses.push(pi_ip);

    // Milk-V Mars CM (U-Boot): next-server and the boot script.
    lab.set_client_mac(UBOOT_MAC)?;
    let (offer, ack) = dora(&lab, UBOOT_OPTS)?;
    for r in [&offer, &ack] {
        assert_full_mode_options(&lab, r);
        assert_eq!(r["file"], "boot.scr.uimg");
        assert_eq!(opt(r, 67), Some(hex_nul("boot.scr.uimg")));
        assert_eq!(opt(r, 43), None);
        assert_eq!(opt(r, 60), None);
    }
    addresses.push(ip_of(&ack, "yiaddr"));
    assert_eq!(ctx.node_ip("mars1"), Some(ip_of(&ack, "yiaddr")));

    // PCs: the PXE ROM is chainloaded into iPXE for its architecture, then
    // iPXE (user class "iPXE") gets its script, at the same address.
    for (mac, rom, file, name) in [
        (BIOS_MAC, BIOS_ROM_OPTS, "undionly.kpxe", "bios-pc"),
        (EFI_MAC, EFI_ROM_OPTS, "ipxe.efi", "efi-pc"),
    ] {
        lab.set_client_mac(mac)?;
        let (offer, ack) = dora(&lab, rom)?;
        for r in [&offer, &ack] {
            assert_full_mode_options(&lab, r);
            assert_eq!(r["file"], file);
            assert_eq!(opt(r, 67), Some(hex_nul(file)));
            assert_eq!(opt(r, 175).as_deref(), Some("b00101"), "no-pxedhcp");
        }
        let rom_ip = ip_of(&ack, "yiaddr");
        let mut ipxe = rom.to_vec();
        ipxe.extend(["--opt", "77=s:iPXE"]);
        let (offer, ack) = dora(&lab, &ipxe)?;
        for r in [&offer, &ack] {
            assert_eq!(r["file"], "boot.ipxe");
            assert_eq!(opt(r, 67), Some(hex_nul("boot.ipxe")));
            assert_eq!(opt(r, 175).as_deref(), Some("b00101"));
        }
        assert_eq!(ip_of(&ack, "yiaddr"), rom_ip, "iPXE keeps the ROM's lease");
        assert_eq!(ctx.boot_generation(name), 2);
        addresses.push(rom_ip);
    }

    // A node with a configured address always gets it.
    lab.set_client_mac(FIXED_MAC)?;
    let (_, ack) = dora(&lab, BIOS_ROM_OPTS)?;
    assert_eq!(
        ip_of(&ack, "yiaddr"),
        Ipv4Addr::new(10, 213, lab.subnet, 20)
    );

    let mut distinct = addresses.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), addresses.len(), "{addresses:?}");
    assert!(addresses.iter().all(|ip| in_pool(&lab, *ip)));
    Ok(())
}

#[test]
fn proxy_mode_answers_on_67_and_4011() -> Result<()> {
    if !required() {
        return Ok(());
    }
    let lab = new_lab()?;
    let dir = tempfile::tempdir()?;
    let server = Server::start(&config_text(&lab, dir.path(), "proxy"), dir.path())?;
    let server_ip = lab.server_ip.to_string();

    // A Pi gets the PXE menu and the TFTP server, no address.
    lab.set_client_mac(PI_MAC)?;
    let r = replies(&client(&lab, "discover", PI4_OPTS)?);
    assert_eq!(r.len(), 1, "{r:#?}");
    let offer = &r[0];
    assert_eq!(offer["msg_type"], 2);
    assert_eq!(offer["yiaddr"], "0.0.0.0");
    assert_eq!(offer["siaddr"], server_ip);
    assert_eq!(opt(offer, 43), Some(pi_menu_hex()));
    assert_eq!(opt(offer, 60), Some(hex_of("PXEClient")));
    assert_eq!(opt(offer, 66), Some(hex_nul(&server_ip)));
    assert_eq!(opt(offer, 51), None, "no lease from a proxy");
    assert_eq!(opt(offer, 1), None, "no address configuration from a proxy");

    // A BIOS PXE ROM: a ProxyDHCP offer naming the boot file.
    lab.set_client_mac(BIOS_MAC)?;
    let r = replies(&client(&lab, "discover", BIOS_ROM_OPTS)?);
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0]["yiaddr"], "0.0.0.0");
    assert_eq!(r[0]["file"], "undionly.kpxe");
    assert_eq!(opt(&r[0], 60), Some(hex_of("PXEClient")));
    assert_eq!(opt(&r[0], 43).as_deref(), Some("060108ff"));
    assert_eq!(r[0]["from"], format!("{server_ip}:67"));

    // With the address the site's DHCP server gave it, the ROM asks the
    // proxy on port 4011 and is answered there, by unicast.
    lab.add_client_ip(lab.client_ip)?;
    let client_ip = lab.client_ip.to_string();
    let mut args = vec![
        "--server", &server_ip, "--port", "4011", "--ciaddr", &client_ip,
    ];
    args.extend(BIOS_ROM_OPTS);
    let r = replies(&client(&lab, "request", &args)?);
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0]["msg_type"], 5);
    assert_eq!(r[0]["yiaddr"], "0.0.0.0");
    assert_eq!(r[0]["file"], "undionly.kpxe");
    assert_eq!(r[0]["from"], format!("{server_ip}:4011"));
    assert_eq!(server.ctx.node_ip("bios-pc"), Some(lab.client_ip));

    // U-Boot does not understand ProxyDHCP: it is left alone.
    lab.set_client_mac(UBOOT_MAC)?;
    let r = client(
        &lab,
        "discover",
        &["--timeout", "0.7", "--opt", "60=s:U-Boot.armv8"],
    )?;
    assert!(replies(&r).is_empty(), "{r:#}");
    Ok(())
}

#[test]
fn leases_survive_a_restart() -> Result<()> {
    if !required() {
        return Ok(());
    }
    let lab = new_lab()?;
    let dir = tempfile::tempdir()?;
    let config = config_text(&lab, dir.path(), "full");
    lab.set_client_mac(UBOOT_MAC)?;
    let mut server = Server::start(&config, dir.path())?;
    let (_, ack) = dora(&lab, UBOOT_OPTS)?;
    let ip = ip_of(&ack, "yiaddr");
    server.stop();
    drop(server);

    let file = dir.path().join("state/dhcp/leases.json");
    let saved: Value = serde_json::from_slice(&std::fs::read(&file)?)
        .with_context(|| format!("{} is not JSON", file.display()))?;
    let leases = saved["leases"].as_array().context("no leases array")?;
    assert!(
        leases
            .iter()
            .any(|l| l["mac"] == UBOOT_MAC && l["ip"] == ip.to_string() && l["node"] == "mars1"),
        "{saved:#}"
    );

    // A fresh server (new inventory, as after a process restart).
    let server = Server::start(&config, dir.path())?;
    let ip_s = ip.to_string();
    let server_ip = lab.server_ip.to_string();
    // INIT-REBOOT: a client that remembers its address asks for it.
    let mut args = vec!["--requested", ip_s.as_str()];
    args.extend(UBOOT_OPTS);
    let r = replies(&client(&lab, "request", &args)?);
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0]["msg_type"], 5, "{:#}", r[0]);
    assert_eq!(r[0]["yiaddr"], ip_s);
    // RENEWING: unicast from the leased address, answered by unicast.
    lab.add_client_ip(ip)?;
    let mut args = vec!["--ciaddr", ip_s.as_str(), "--server", server_ip.as_str()];
    args.extend(UBOOT_OPTS);
    let r = replies(&client(&lab, "request", &args)?);
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0]["msg_type"], 5, "{:#}", r[0]);
    assert_eq!(r[0]["yiaddr"], ip_s);
    assert_eq!(r[0]["ciaddr"], ip_s);
    assert_eq!(server.ctx.node_ip("mars1"), Some(ip));
    // And a new DISCOVER is offered the same address.
    let r = replies(&client(&lab, "discover", UBOOT_OPTS)?);
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0]["yiaddr"], ip_s);
    Ok(())
}

#[test]
fn unknown_mac_gets_no_answer() -> Result<()> {
    if !required() {
        return Ok(());
    }
    let lab = new_lab()?;
    let dir = tempfile::tempdir()?;
    let _server = Server::start(&config_text(&lab, dir.path(), "full"), dir.path())?;
    lab.set_client_mac(UNKNOWN_MAC)?;
    let r = client(&lab, "discover", &["--timeout", "1", "--all"])?;
    assert!(replies(&r).is_empty(), "{r:#}");
    // The silence was about the MAC: a known one is answered.
    lab.set_client_mac(UBOOT_MAC)?;
    let r = replies(&client(&lab, "discover", UBOOT_OPTS)?);
    assert_eq!(r.len(), 1, "{r:#?}");
    Ok(())
}

/// A DISCOVER from `mac` that the server would answer, options raw.
fn discover_bytes(mac: [u8; 6], options: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 236];
    b[..4].copy_from_slice(&[1, 1, 6, 0]);
    b[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    b[10] = 0x80;
    b[28..34].copy_from_slice(&mac);
    b.extend([99, 130, 83, 99, 53, 1, 1]);
    b.extend(options);
    b
}

#[test]
fn malformed_packets_are_dropped_and_serving_continues() -> Result<()> {
    if !required() {
        return Ok(());
    }
    let lab = new_lab()?;
    let dir = tempfile::tempdir()?;
    let _server = Server::start(&config_text(&lab, dir.path(), "full"), dir.path())?;
    lab.set_client_mac(UBOOT_MAC)?;
    let mac = [0x6c, 0xcf, 0x39, 0, 0, 2];
    let good = discover_bytes(mac, &[255]);
    // Each is a DISCOVER from a known node but for one defect, so a server
    // that half-parsed it would answer.
    let mut bad: Vec<Vec<u8>> = vec![
        b"this is not a DHCP packet at all".to_vec(),
        good[..100].to_vec(), // truncated BOOTP header
        discover_bytes(mac, &[60, 64, b'a', b'b', b'c']), // length runs past the end
        discover_bytes(mac, &[50, 3, 10, 0, 0, 255]), // undecodable value
    ];
    let mut reply_op = good.clone();
    reply_op[0] = 2;
    bad.push(reply_op);
    let mut hlen = good.clone();
    hlen[2] = 16;
    bad.push(hlen);
    let mut magic = good.clone();
    magic[236] = 0;
    bad.push(magic);
    let mut oversized = good.clone();
    oversized.resize(3000, 0);
    bad.push(oversized);

    let mut args = vec!["--timeout".to_string(), "0.7".to_string()];
    for b in &bad {
        args.push("--raw".into());
        args.push(hex::encode(b));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = client(&lab, "raw", &args)?;
    assert!(replies(&r).is_empty(), "answered a malformed packet: {r:#}");

    // Still serving.
    let r = replies(&client(&lab, "raw", &["--raw", &hex::encode(&good)])?);
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0]["msg_type"], 2);
    let (_, ack) = dora(&lab, UBOOT_OPTS)?;
    assert!(in_pool(&lab, ip_of(&ack, "yiaddr")));
    Ok(())
}
