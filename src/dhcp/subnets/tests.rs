//! Subnet selection, and relayed exchanges through the whole handler.

use super::*;
use crate::cache::ChunkCache;
use crate::dhcp::packet::tests::request_bytes;
use crate::dhcp::server::{Handler, Outgoing, Port, CLIENT_PORT};
use crate::serve::ServeContext;
use dhcproto::v4::{DhcpOption, OptionCode};
use dhcproto::Decodable;
use std::path::Path;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
/// The relay serving 10.218.5.0/24, also its router.
const RELAY: Ipv4Addr = Ipv4Addr::new(10, 218, 5, 1);
/// The relay serving 10.218.6.0/24, whose router is .254.
const RELAY6: Ipv4Addr = Ipv4Addr::new(10, 218, 6, 1);
const PC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
const FIXED: [u8; 6] = [0x52, 0x54, 0, 0, 0, 3];
const FAR_FIXED: [u8; 6] = [0x52, 0x54, 0, 0, 0, 4];
/// A relay agent information option as dhcrelay -a sends it (circuit id
/// "eth1"), plus a remote id, sub-options in an order dhcproto would not
/// keep (it sorts them).
const AGENT_INFO: &[u8] = &[
    82, 12, 2, 4, 0xde, 0xad, 0xbe, 0xef, 1, 4, b'e', b't', b'h', b'1',
];

fn config(mode: &str, state: &Path) -> String {
    format!(
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
dns = ["10.9.0.53"]
domain = "link.lan"
{subnets}
[[nodes]]
name = "pc1"
mac = "52:54:00:00:00:02"
kind = "ipxe"
image = "img:pc"
[[nodes]]
name = "fixed"
mac = "52:54:00:00:00:03"
kind = "ipxe"
image = "img:pc"
ip = "10.9.0.20"
[[nodes]]
name = "far-fixed"
mac = "52:54:00:00:00:04"
kind = "uboot"
image = "img:rv"
ip = "10.218.5.20"
"#,
        state = state.display(),
        subnets = if mode == "full" { SUBNETS } else { "" },
    )
}

const SUBNETS: &str = r#"
[[dhcp.subnets]]
network = "10.218.5.0/24"
pool_start = "10.218.5.100"
pool_end = "10.218.5.101"
router = "10.218.5.1"
lease_secs = 300
[[dhcp.subnets]]
network = "10.218.6.0/24"
pool_start = "10.218.6.100"
pool_end = "10.218.6.150"
router = "10.218.6.254"
dns = []
"#;

fn context(mode: &str, dir: &Path) -> Arc<ServeContext> {
    let cfg = Config::parse(&config(mode, &dir.join("state")), "t.toml").unwrap();
    let cache = Arc::new(ChunkCache::open(&dir.join("cache"), 1 << 20).unwrap());
    ServeContext::new(cfg, cache)
}

fn subnets(dir: &Path) -> Subnets {
    Subnets::from_config(&context("full", dir).config).unwrap()
}

/// A request from `mac` as relay `giaddr` forwards it (hops 1), with
/// `options` raw and the relay's option 82 last.
fn relayed(mac: [u8; 6], msg_type: u8, giaddr: Ipv4Addr, options: &[u8]) -> Vec<u8> {
    let mut b = request_bytes(mac, msg_type, &[options, AGENT_INFO].concat());
    b[3] = 1;
    b[24..28].copy_from_slice(&giaddr.octets());
    b
}

/// Where the relay's packets come from: its address toward us.
fn relay_src() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 2), SERVER_PORT)
}

fn decode(o: &Outgoing) -> Message {
    Message::from_bytes(&o.bytes).unwrap()
}

/// The options of an encoded reply in wire order: (code, value).
fn wire_options(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = OPTIONS_OFFSET;
    while i < bytes.len() && bytes[i] != 255 {
        if bytes[i] == 0 {
            i += 1;
            continue;
        }
        let len = bytes[i + 1] as usize;
        out.push((bytes[i], bytes[i + 2..i + 2 + len].to_vec()));
        i += 2 + len;
    }
    out
}

fn requesting(ip: Ipv4Addr) -> Vec<u8> {
    let mut o = vec![50, 4];
    o.extend(ip.octets());
    o.extend([54, 4]);
    o.extend(SERVER.octets());
    o
}

#[test]
fn requests_are_matched_to_the_subnet_of_their_relay() {
    let dir = tempfile::tempdir().unwrap();
    let s = subnets(dir.path());
    let route = |b: &[u8]| s.route(&crate::dhcp::packet::parse_request(b).unwrap(), b);

    let via = route(&relayed(PC, 1, RELAY, &[])).unwrap();
    assert_eq!(via.subnet, 1);
    assert_eq!(via.relay, Some(RELAY));
    assert_eq!(via.agent_info, AGENT_INFO);
    assert_eq!(
        via.relay_destination(),
        Some(SocketAddrV4::new(RELAY, 67)),
        "replies go to the relay's server port"
    );
    // Any address of the network names it, not only the one configured
    // as router.
    let other_relay = Ipv4Addr::new(10, 218, 6, 77);
    assert_eq!(route(&relayed(PC, 1, other_relay, &[])).unwrap().subnet, 2);

    // Relays we have no subnet for, or on our own link, get nothing.
    let unknown = Ipv4Addr::new(10, 1, 0, 1);
    assert_eq!(
        route(&relayed(PC, 1, unknown, &[])),
        Err(Unserved::UnknownRelay(unknown))
    );
    let e = route(&relayed(PC, 1, Ipv4Addr::new(10, 9, 0, 254), &[])).unwrap_err();
    assert!(matches!(e, Unserved::RelayOnLink(_)) && !e.is_misconfiguration());
    let in_pool = Ipv4Addr::new(10, 218, 5, 100);
    let e = route(&relayed(PC, 1, in_pool, &[])).unwrap_err();
    assert!(e.is_misconfiguration());
    assert!(e.to_string().contains("10.218.5.0/24"), "{e}");

    // Not relayed: the link, unless the client renews an address of a
    // relayed subnet by unicast.
    let plain = request_bytes(PC, 1, &[]);
    let via = route(&plain).unwrap();
    assert_eq!(
        (via.subnet, via.relay, via.relay_destination()),
        (0, None, None)
    );
    assert!(via.agent_info.is_empty());
    let mut renew = request_bytes(PC, 3, &[]);
    renew[12..16].copy_from_slice(&[10, 218, 6, 120]);
    let via = route(&renew).unwrap();
    assert_eq!((via.subnet, via.relay), (2, None));
    renew[12..16].copy_from_slice(&[10, 9, 0, 100]);
    assert_eq!(route(&renew).unwrap().subnet, 0);
    renew[12..16].copy_from_slice(&[192, 168, 1, 1]);
    assert_eq!(route(&renew).unwrap().subnet, 0);
}

#[test]
fn each_subnet_has_its_own_options_and_range() {
    let dir = tempfile::tempdir().unwrap();
    let s = subnets(dir.path());
    let link = s.get(0).network_options();
    assert_eq!(link.router, None);
    assert_eq!(link.mask, Ipv4Addr::new(255, 255, 255, 0));
    let far = s.get(1).network_options();
    assert_eq!(far.router, Some(RELAY));
    assert_eq!(far.broadcast, Ipv4Addr::new(10, 218, 5, 255));
    assert_eq!(far.dns, vec![Ipv4Addr::new(10, 9, 0, 53)], "[dhcp] dns");
    assert_eq!(far.domain.as_deref(), Some("link.lan"));
    assert_eq!(s.get(1).lease_secs, 300);
    let six = s.get(2).network_options();
    assert_eq!(six.router, Some(Ipv4Addr::new(10, 218, 6, 254)));
    assert!(six.dns.is_empty());
    assert_eq!(s.get(2).lease_secs, 600, "[dhcp] lease_secs");
    assert_eq!(s.get(2).to_string(), "relayed subnet 10.218.6.0/24");
    // The pool's ranges follow the same indexes and never hand out the
    // server or a router.
    let pool = s.pool(SERVER, HashMap::new());
    assert_eq!(pool.ranges.len(), 3);
    assert_eq!(pool.ranges[0].excluded, vec![SERVER]);
    assert_eq!(pool.ranges[1].excluded, vec![RELAY]);
    assert_eq!(pool.ranges[1].start, Ipv4Addr::new(10, 218, 5, 100));
    assert_eq!(
        pool.ranges[2].excluded,
        vec![Ipv4Addr::new(10, 218, 6, 254)]
    );
}

#[test]
fn relay_agent_information_is_taken_as_sent() {
    // Two option 82 instances (RFC 3396 splitting), an unknown sub-option,
    // a pad between them.
    let extra = [&[82, 3, 9, 1, 7][..], &[0], AGENT_INFO].concat();
    let b = request_bytes(PC, 1, &extra);
    assert_eq!(
        agent_information(&b),
        extra[..5]
            .iter()
            .chain(AGENT_INFO)
            .copied()
            .collect::<Vec<_>>()
    );
    assert!(agent_information(&request_bytes(PC, 1, &[60, 2, b'a', b'b'])).is_empty());
    // A datagram cut short mid-option yields what came before.
    let mut cut = request_bytes(PC, 1, AGENT_INFO);
    cut.truncate(cut.len() - 4);
    assert!(agent_information(&cut).is_empty());
}

#[test]
fn a_relayed_exchange_is_answered_to_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context("full", dir.path());
    let mut h = Handler::new(ctx.clone()).unwrap();
    let ipxe = [&[77, 4][..], b"iPXE"].concat();

    let offer = h
        .handle(&relayed(PC, 1, RELAY, &ipxe), relay_src(), Port::Dhcp, 100)
        .unwrap();
    assert_eq!(offer.dest, SocketAddrV4::new(RELAY, 67));
    assert_eq!(offer.port, Port::Dhcp);
    let m = decode(&offer);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    let ip = m.yiaddr();
    assert_eq!(ip, Ipv4Addr::new(10, 218, 5, 100), "from the relayed pool");
    assert_eq!(m.giaddr(), RELAY, "giaddr kept");
    assert_eq!(m.siaddr(), SERVER, "next-server");
    let opts = wire_options(&offer.bytes);
    let get = |code: u8| {
        opts.iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get(1), Some(vec![255, 255, 255, 0]));
    assert_eq!(get(3), Some(RELAY.octets().to_vec()), "the subnet's router");
    assert_eq!(get(28), Some(vec![10, 218, 5, 255]));
    assert_eq!(get(51), Some(300u32.to_be_bytes().to_vec()));
    assert_eq!(get(54), Some(SERVER.octets().to_vec()));
    assert_eq!(get(66), Some(b"10.9.0.1\0".to_vec()));
    assert_eq!(get(67), Some(b"boot.ipxe\0".to_vec()));
    // Option 82 comes back unchanged, last.
    let (last_code, last) = opts.last().unwrap();
    assert_eq!(
        [&[*last_code, last.len() as u8][..], last].concat(),
        AGENT_INFO
    );

    let ack = h
        .handle(
            &relayed(PC, 3, RELAY, &requesting(ip)),
            relay_src(),
            Port::Dhcp,
            101,
        )
        .unwrap();
    assert_eq!(ack.dest, SocketAddrV4::new(RELAY, 67));
    let m = decode(&ack);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!((m.yiaddr(), m.giaddr()), (ip, RELAY));
    assert_eq!(wire_options(&ack.bytes).last().unwrap().0, 82);
    assert_eq!(ctx.inventory.ip_of("pc1"), Some(ip));
    assert_eq!(
        h.leases().unwrap().lease_of(MacAddr(PC)).unwrap().expires,
        401
    );
    assert_eq!(ctx.inventory.boot_generation("pc1"), 1);

    // Renewal: unicast straight to us from the leased address, no relay.
    let mut renew = request_bytes(PC, 3, &[]);
    renew[12..16].copy_from_slice(&ip.octets());
    let ack = h
        .handle(&renew, SocketAddrV4::new(ip, CLIENT_PORT), Port::Dhcp, 200)
        .unwrap();
    assert_eq!(ack.dest, SocketAddrV4::new(ip, CLIENT_PORT));
    let m = decode(&ack);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    // The renewing node keeps its subnet's configuration, router included.
    assert_eq!(
        m.opts().get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![RELAY]))
    );
    assert_eq!(
        m.opts().get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask([255, 255, 255, 0].into()))
    );
    assert_eq!(ctx.inventory.ip_of("pc1"), Some(ip));

    // The link's address asked for through the relay: NAK, broadcast bit
    // set so the relay broadcasts it, still to the relay.
    let mut no_flag = relayed(PC, 3, RELAY, &requesting(Ipv4Addr::new(10, 9, 0, 100)));
    no_flag[10] = 0;
    let nak = h.handle(&no_flag, relay_src(), Port::Dhcp, 300).unwrap();
    assert_eq!(nak.dest, SocketAddrV4::new(RELAY, 67));
    let m = decode(&nak);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
    assert!(m.flags().broadcast());
    assert_eq!(m.giaddr(), RELAY);
    assert_eq!(wire_options(&nak.bytes).last().unwrap().0, 82);

    // The second relayed subnet has its own pool and router.
    let offer = h
        .handle(&relayed(PC, 1, RELAY6, &ipxe), relay_src(), Port::Dhcp, 400)
        .unwrap();
    let m = decode(&offer);
    assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 218, 6, 100));
    assert_eq!(
        m.opts().get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 218, 6, 254)]))
    );
    assert!(m.opts().get(OptionCode::DomainNameServer).is_none());
}

#[test]
fn requests_from_unknown_relays_and_misplaced_nodes_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Handler::new(context("full", dir.path())).unwrap();
    let unknown = Ipv4Addr::new(172, 16, 0, 1);
    assert!(h
        .handle(&relayed(PC, 1, unknown, &[]), relay_src(), Port::Dhcp, 0)
        .is_none());
    // A relay on our own link: the client's broadcast is answered directly.
    let on_link = Ipv4Addr::new(10, 9, 0, 254);
    assert!(h
        .handle(&relayed(PC, 1, on_link, &[]), relay_src(), Port::Dhcp, 0)
        .is_none());
    assert!(h
        .handle(&request_bytes(PC, 1, &[]), relay_src(), Port::Dhcp, 0)
        .is_some());

    // A fixed address is given only on its own subnet.
    assert!(h
        .handle(&relayed(FIXED, 1, RELAY, &[]), relay_src(), Port::Dhcp, 1)
        .is_none());
    let link = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT);
    assert!(h
        .handle(&request_bytes(FAR_FIXED, 1, &[]), link, Port::Dhcp, 1)
        .is_none());
    let offer = h
        .handle(
            &relayed(FAR_FIXED, 1, RELAY, &[]),
            relay_src(),
            Port::Dhcp,
            2,
        )
        .unwrap();
    assert_eq!(decode(&offer).yiaddr(), Ipv4Addr::new(10, 218, 5, 20));
    let offer = h
        .handle(&request_bytes(FIXED, 1, &[]), link, Port::Dhcp, 2)
        .unwrap();
    assert_eq!(decode(&offer).yiaddr(), Ipv4Addr::new(10, 9, 0, 20));
}

#[test]
fn proxy_mode_ignores_relayed_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Handler::new(context("proxy", dir.path())).unwrap();
    let pxe = [&[60, 9][..], b"PXEClient", &[93, 2, 0, 0]].concat();
    assert!(h
        .handle(&relayed(PC, 1, RELAY, &pxe), relay_src(), Port::Dhcp, 0)
        .is_none());
    // The same DISCOVER on the link is answered, option 82 echoed.
    let link = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT);
    let on_link = request_bytes(PC, 1, &[&pxe[..], AGENT_INFO].concat());
    let offer = h.handle(&on_link, link, Port::Dhcp, 0).unwrap();
    assert_eq!(
        offer.dest,
        SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
    );
    assert_eq!(wire_options(&offer.bytes).last().unwrap().0, 82);
}

#[test]
fn throttled_log_lines() {
    let mut t = Throttle::default();
    let now = Instant::now();
    assert!(t.ready("a", now));
    assert!(!t.ready("a", now + Duration::from_secs(59)));
    assert!(t.ready("b", now));
    assert!(t.ready("a", now + LOG_EVERY));
}
