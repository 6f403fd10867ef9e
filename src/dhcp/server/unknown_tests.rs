//! The handler and machines it does not know (`[defaults] unknown_nodes =
//! "defaults"`): nothing is kept for them until an address is bound.

use super::*;
use crate::cache::ChunkCache;
use crate::config::Config;
use crate::dhcp::packet::tests::request_bytes;
use dhcproto::Decodable;
use std::path::Path;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const PC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

fn context(mode: &str, dir: &Path, defaults: &str) -> Arc<ServeContext> {
    let text = format!(
        r#"
[server]
interface = "lo"
address = "10.9.0.1"
state_dir = "{state}"
[dhcp]
mode = "{mode}"
pool_start = "10.9.0.100"
pool_end = "10.9.0.101"
lease_secs = 600
[defaults]
unknown_nodes = "defaults"
image = "img:default"
kind = "ipxe"
{defaults}
[[nodes]]
name = "pc1"
mac = "52:54:00:00:00:02"
kind = "ipxe"
image = "img:pc"
"#,
        state = dir.join("state").display()
    );
    let cfg = Config::parse(&text, "t.toml").unwrap();
    let cache = Arc::new(ChunkCache::open(&dir.join("cache"), 1 << 20).unwrap());
    ServeContext::new(cfg, cache)
}

fn src() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT)
}

fn stranger(n: u16) -> [u8; 6] {
    let [a, b] = n.to_be_bytes();
    [0x02, 0x42, 0, 0, a, b]
}

fn name_of(mac: [u8; 6]) -> String {
    format!("node-{}", hex::encode(mac))
}

/// What a BIOS PXE ROM sends.
fn rom() -> Vec<u8> {
    [&[60, 9][..], b"PXEClient", &[93, 2, 0, 0]].concat()
}

fn request(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut o = vec![50, 4];
    o.extend(ip.octets());
    o.extend([54, 4]);
    o.extend(SERVER.octets());
    o.extend(rom());
    request_bytes(mac, 3, &o)
}

fn yiaddr(o: &Outgoing) -> Ipv4Addr {
    Message::from_bytes(&o.bytes).unwrap().yiaddr()
}

fn msg_type(o: &Outgoing) -> Option<MessageType> {
    Message::from_bytes(&o.bytes).unwrap().opts().msg_type()
}

/// Directories of the profile store, by node name.
fn profiled(ctx: &ServeContext) -> Vec<String> {
    std::fs::read_dir(ctx.state_dir.join("profiles"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn leases_file(ctx: &ServeContext) -> String {
    std::fs::read_to_string(ctx.state_dir.join("dhcp/leases.json")).unwrap_or_default()
}

#[test]
fn unknown_macs_leave_nothing_until_an_address_is_bound() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context("full", dir.path(), "");
    let mut h = Handler::new(ctx.clone()).unwrap();
    for n in 0..500 {
        let offer = h.handle(
            &request_bytes(stranger(n), 1, &rom()),
            src(),
            Port::Dhcp,
            100,
        );
        assert_eq!(offer.map(|o| msg_type(&o)), Some(Some(MessageType::Offer)));
    }
    assert_eq!(ctx.inventory.all().len(), 1, "only the configured node");
    assert!(ctx.inventory.by_name(&name_of(stranger(0))).is_none());
    assert_eq!(ctx.inventory.boot_generation(&name_of(stranger(0))), 0);
    assert!(profiled(&ctx).is_empty(), "{:?}", profiled(&ctx));
    assert!(
        !leases_file(&ctx).contains("node-"),
        "{}",
        leases_file(&ctx)
    );

    // A DORA makes one a node, and its boot begins.
    let mac = stranger(9999);
    let offer = h
        .handle(&request_bytes(mac, 1, &rom()), src(), Port::Dhcp, 101)
        .unwrap();
    let ip = yiaddr(&offer);
    assert!(ctx.inventory.by_name(&name_of(mac)).is_none());
    let ack = h.handle(&request(mac, ip), src(), Port::Dhcp, 102).unwrap();
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    assert_eq!(yiaddr(&ack), ip);
    let node = ctx.inventory.by_name(&name_of(mac)).unwrap();
    assert!(!node.configured);
    assert_eq!(ctx.inventory.all().len(), 2);
    assert_eq!(ctx.inventory.by_ip(ip).unwrap().name, node.name);
    assert_eq!(ctx.inventory.boot_generation(&node.name), 1);
    assert_eq!(profiled(&ctx), vec![node.name.clone()]);
    assert!(leases_file(&ctx).contains(&node.name));
    // Its next boot is an ordinary one.
    h.handle(&request_bytes(mac, 1, &rom()), src(), Port::Dhcp, 103)
        .unwrap();
    assert_eq!(ctx.inventory.boot_generation(&node.name), 2);
}

#[test]
fn strangers_cannot_take_the_pool_from_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context("full", dir.path(), "");
    let mut h = Handler::new(ctx.clone()).unwrap();
    // Two strangers hold both addresses of the pool...
    for n in 0..2 {
        h.handle(
            &request_bytes(stranger(n), 1, &rom()),
            src(),
            Port::Dhcp,
            100,
        )
        .unwrap();
    }
    // ...and the configured node still gets one, and keeps it.
    let offer = h
        .handle(&request_bytes(PC, 1, &rom()), src(), Port::Dhcp, 101)
        .unwrap();
    let ip = yiaddr(&offer);
    let ack = h.handle(&request(PC, ip), src(), Port::Dhcp, 102).unwrap();
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    // The stranger whose offer it was is refused that address.
    let loser = (0..2)
        .map(stranger)
        .find(|m| {
            let r = h.handle(&request(*m, ip), src(), Port::Dhcp, 103);
            r.is_some_and(|o| msg_type(&o) == Some(MessageType::Nak))
        })
        .expect("one stranger is NAKed");
    assert!(ctx.inventory.by_name(&name_of(loser)).is_none());
}

#[test]
fn a_raspberry_pi_is_accepted_when_offered() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context("full", dir.path(), "");
    let mut h = Handler::new(ctx.clone()).unwrap();
    let pi = [0xe4, 0x5f, 0x01, 0, 0, 7];
    let offer = h
        .handle(&request_bytes(pi, 1, &rom()), src(), Port::Dhcp, 100)
        .unwrap();
    let node = ctx.inventory.by_name(&name_of(pi)).unwrap();
    assert_eq!(node.kind, NodeKind::Raspberrypi);
    assert_eq!(ctx.inventory.ip_of(&node.name), Some(yiaddr(&offer)));
    assert_eq!(ctx.inventory.boot_generation(&node.name), 1);
    // Its offer is a node's now: a stranger cannot take it.
    h.handle(
        &request_bytes(stranger(1), 1, &rom()),
        src(),
        Port::Dhcp,
        101,
    )
    .unwrap();
    assert!(h
        .handle(
            &request_bytes(stranger(2), 1, &rom()),
            src(),
            Port::Dhcp,
            101
        )
        .is_some_and(|o| yiaddr(&o) != yiaddr(&offer)));
}

#[test]
fn proxy_mode_accepts_whom_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context("proxy", dir.path(), "");
    let mut h = Handler::new(ctx.clone()).unwrap();
    // A REQUEST on 67 is the site server's business: no answer, no node.
    let quiet = stranger(1);
    let mut req = request_bytes(quiet, 3, &rom());
    req[12..16].copy_from_slice(&[192, 168, 1, 9]);
    assert!(h.handle(&req, src(), Port::Dhcp, 0).is_none());
    assert!(ctx.inventory.by_name(&name_of(quiet)).is_none());
    assert!(ctx.inventory.by_ip(Ipv4Addr::new(192, 168, 1, 9)).is_none());
    // A PXE DISCOVER is answered: the node is accepted and boots.
    let mac = stranger(2);
    let offer = h
        .handle(&request_bytes(mac, 1, &rom()), src(), Port::Dhcp, 1)
        .unwrap();
    assert_eq!(msg_type(&offer), Some(MessageType::Offer));
    let name = name_of(mac);
    assert!(ctx.inventory.by_name(&name).is_some());
    assert_eq!(ctx.inventory.boot_generation(&name), 1);
    assert_eq!(profiled(&ctx), vec![name]);
}

#[test]
fn accepted_strangers_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context("proxy", dir.path(), "max_nodes = 3\nmax_pending = 8");
    let mut h = Handler::new(ctx.clone()).unwrap();
    let answered = (0..50)
        .filter(|n| {
            h.handle(
                &request_bytes(stranger(*n), 1, &rom()),
                src(),
                Port::Dhcp,
                0,
            )
            .is_some()
        })
        .count();
    assert_eq!(answered, 3);
    assert_eq!(ctx.inventory.all().len(), 4);
    // Those accepted, and configured nodes, are still answered.
    for mac in [stranger(0), PC] {
        assert!(h
            .handle(&request_bytes(mac, 1, &rom()), src(), Port::Dhcp, 1)
            .is_some());
    }
}
