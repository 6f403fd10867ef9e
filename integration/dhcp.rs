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

/// Sends `count` DISCOVERs of a BIOS PXE ROM from random locally
/// administered MACs, in bursts of 50 every 0.1 s, from an ephemeral port
/// (so a scripted client can use port 68 meanwhile). Prints
/// `{"macs": [HEX...], "secs": S}`.
const FLOOD: &str = r#"
import json, os, socket, struct, sys, time
iface, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
s.bind(("0.0.0.0", 0))
opts = bytes([53, 1, 1, 60, 9]) + b"PXEClient" + bytes([93, 2, 0, 0, 255])
macs, start = [], time.time()
for i in range(count):
    mac = bytes([0x02]) + os.urandom(5)
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0,
                       int.from_bytes(os.urandom(4), "big"), 0, 0x8000,
                       bytes(4), bytes(4), bytes(4), bytes(4), mac, b"", b"")
    s.sendto(head + bytes([99, 130, 83, 99]) + opts, ("255.255.255.255", 67))
    macs.append(mac.hex())
    if i % 50 == 49:
        time.sleep(0.1)
print(json.dumps({"macs": macs, "secs": time.time() - start}))
"#;

/// A TCP listener posing as a registry: it counts connections and answers
/// each with a 404.
fn counting_registry() -> Result<(String, Arc<std::sync::atomic::AtomicUsize>)> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(1)));
            let _ = conn.read(&mut [0u8; 4096]);
            let _ = conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    Ok((addr, hits))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()
        .context("VmRSS")
}

/// Names of the nodes `GET /api/v1/nodes` lists.
fn api_nodes(api: &str) -> Result<Vec<String>> {
    let body = common::curl_get(&format!("http://{api}/api/v1/nodes"), &[])?;
    let list: Vec<Value> = serde_json::from_slice(&body)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&body)))?;
    Ok(list
        .iter()
        .filter_map(|n| n["node"]["name"].as_str().map(str::to_string))
        .collect())
}

fn wait_until(what: &str, mut ok: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !ok()? {
        if std::time::Instant::now() > deadline {
            bail!("{what}: not within 15 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// How much the server's resident memory may grow while 2,000 made-up MACs
/// send DISCOVERs: the pending table (256 small nodes), the offers (one per
/// pool address) and the allocator's slack fit well within it (about
/// 1.5 MiB measured); a server that kept a node, a timeline and an image
/// resolution per MAC grew by about 25 MiB.
const FLOOD_RSS_GROWTH_KIB: u64 = 12 * 1024;

#[test]
fn a_flood_of_unknown_macs_leaves_nothing_behind() -> Result<()> {
    if !required() {
        return Ok(());
    }
    let lab = new_lab()?;
    let dir = tempfile::tempdir()?;
    let (registry, manifest_requests) = counting_registry()?;
    // Nothing listens there: the configured node's image fails quickly.
    let nowhere = format!("127.0.0.1:{}", common::free_tcp_port());
    let http = common::free_tcp_port();
    let n = lab.subnet;
    let config = dir.path().join("lazyboot.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
interface = "{iface}"
address = "{s}"
state_dir = "{state}"
cache_dir = "{cache}"
tftp_port = {tftp}
nfs_port = {nfs}
http_port = {http}

[dhcp]
mode = "full"
pool_start = "10.213.{n}.100"
pool_end = "10.213.{n}.150"
lease_secs = 600

[defaults]
unknown_nodes = "defaults"
image = "{registry}/os/unknown:1"
kind = "ipxe"

[[nodes]]
name = "bios-pc"
mac = "{BIOS_MAC}"
kind = "ipxe"
image = "{nowhere}/os/known:1"
"#,
            iface = lab.host_if,
            s = lab.server_ip,
            state = dir.path().join("state").display(),
            cache = dir.path().join("cache").display(),
            tftp = common::free_udp_port(),
            nfs = common::free_tcp_port(),
        ),
    )?;
    let server = common::serve::Serve::new(&config)
        .rust_log("lazyboot=info")
        .start()?;
    let pid = server.pid();
    let api = format!("{}:{http}", lab.server_ip);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let rss_before = rss_kib(pid)?;

    // The flood, and meanwhile a configured node's DORA.
    lab.set_client_mac(BIOS_MAC)?;
    let flood = lab
        .client("python3")
        .args(["-c", FLOOD, &lab.client_if, "2000"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let dora_lab = (lab.ns.clone(), lab.client_if.clone());
    let known = std::thread::spawn(move || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &dora_lab.0, "python3"])
            .arg(common::dhcpc::SCRIPT)
            .args(["dora", "--iface", &dora_lab.1, "--timeout", "20"])
            .args(BIOS_ROM_OPTS)
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    });
    let mut rss_peak = rss_before;
    let mut flood = flood;
    while flood.try_wait()?.is_none() {
        rss_peak = rss_peak.max(rss_kib(pid)?);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = flood.wait_with_output()?;
    let sent: Value = serde_json::from_slice(&out.stdout).context("flood output")?;
    let macs: Vec<String> = serde_json::from_value(sent["macs"].clone())?;
    assert_eq!(macs.len(), 2000);
    let secs = sent["secs"].as_f64().unwrap_or_default();
    assert!(secs < 15.0, "the flood took {secs} s to send");
    let known: Value = serde_json::from_str(&known.join().unwrap()?)?;
    assert_eq!(known["ack"]["msg_type"], 5, "configured node: {known:#}");
    // Let the server drain its socket.
    std::thread::sleep(std::time::Duration::from_secs(1));
    rss_peak = rss_peak.max(rss_kib(pid)?);
    let log = server.log();
    let offers = log.matches("DHCPOFFER").count();
    eprintln!(
        "flood: {} DISCOVERs sent in {secs:.1} s, {offers} offers; server RSS {rss_before} KiB before, {rss_peak} KiB at most",
        macs.len()
    );

    let flooders: std::collections::HashSet<String> =
        macs.iter().map(|m| format!("node-{m}")).collect();
    let listed = api_nodes(&api)?;
    let profiles: Vec<String> = std::fs::read_dir(dir.path().join("state/profiles"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let leases =
        std::fs::read_to_string(dir.path().join("state/dhcp/leases.json")).unwrap_or_default();
    let asked = manifest_requests.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "after the flood: {} nodes listed, {} profile directories, {} registry connections",
        listed.len(),
        profiles.len(),
        asked
    );
    assert_eq!(listed, vec!["bios-pc".to_string()], "API lists {listed:?}");
    assert!(
        profiles
            .iter()
            .all(|p| !flooders.contains(p) && !p.starts_with("node-")),
        "profiles made for {profiles:?}"
    );
    assert!(!leases.contains("node-"), "{leases}");
    assert!(leases.contains("bios-pc"), "{leases}");
    assert_eq!(
        asked, 0,
        "the registry was asked for an image on behalf of a made-up MAC"
    );
    assert!(
        rss_peak <= rss_before + FLOOD_RSS_GROWTH_KIB,
        "RSS grew from {rss_before} to {rss_peak} KiB"
    );
    // Answered, so handled: the checks above were not passed by a server
    // that dropped the flood.
    assert!(
        offers > 1000,
        "the server answered too few to tell: {offers}"
    );

    // A real unknown machine still boots: its DORA makes it a node, and its
    // boot begins (timeline, image resolution).
    lab.set_client_mac(UNKNOWN_MAC)?;
    let (_, ack) = dora(&lab, BIOS_ROM_OPTS)?;
    assert_eq!(ack["file"], "undionly.kpxe", "{ack:#}");
    assert!(in_pool(&lab, ip_of(&ack, "yiaddr")));
    let name = "node-020000000099";
    assert!(api_nodes(&api)?.contains(&name.to_string()));
    wait_until("the accepted node's profile", || {
        Ok(dir.path().join("state/profiles").join(name).is_dir())
    })?;
    wait_until("a registry request for the accepted node", || {
        Ok(manifest_requests.load(std::sync::atomic::Ordering::SeqCst) > 0)
    })?;
    let leases = std::fs::read_to_string(dir.path().join("state/dhcp/leases.json"))?;
    assert!(leases.contains(name), "{leases}");
    Ok(())
}
