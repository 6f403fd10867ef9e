//! The DHCP state machine (RFC 2131 server side, PXE ProxyDHCP) and the
//! socket loop around it.
//!
//! [`Handler::handle`] turns one received datagram into at most one reply
//! and does all the bookkeeping (leases, inventory); it does no I/O besides
//! saving leases, so the protocol is testable without sockets. [`serve`]
//! owns the sockets.
//!
//! Full mode serves the link and the `[[dhcp.subnets]]` behind relay
//! agents: `subnets` picks the subnet a request is from (by giaddr, or the
//! ciaddr of a unicast renewal) and addresses replies to relays; here the
//! address comes from that subnet's range, and a node whose fixed address
//! is not in it is refused. Proxy mode answers only on the link (a relayed
//! request has no offer of the site's server beside it to complete).
//!
//! Not supported, on purpose: plain BOOTP (no option 53), option overload
//! (options in sname/file), and probing an address with ARP or ping before
//! offering it.
//!
//! Unknown MACs (with `[defaults] unknown_nodes = "defaults"`) get a
//! *pending* node (see `nodes::pending`): it is offered an address (held in
//! memory only, and given up to anyone else's DISCOVER when the pool runs
//! out), but nothing is recorded for it - no boot, no profile, no registry
//! request, no lease - until the server binds an address to it: the ACK of
//! its REQUEST in full mode (the OFFER for a Raspberry Pi, whose boot ROM
//! never sends a REQUEST), any answer in proxy mode (the site's server gave
//! the address). Then the inventory accepts it as a node (at most
//! `[defaults] max_nodes` of them) and its boot begins.
//!
//! Work is bounded by what arrives: [`serve`] handles one datagram at a
//! time, to the end, in its own task, with no queue of its own; datagrams
//! that arrive faster wait in the socket's receive buffer, which the kernel
//! bounds (`net.core.rmem_default`) by dropping what does not fit, as a
//! client that gets no answer expects. A datagram costs at most one lease
//! file write (a bound lease), and a boot it starts spawns at most one
//! image refresh per node at a time (`ServeContext::boot_started`).

use super::leases::LeaseDb;
use super::options::{
    boot_plan, build_nak, build_reply, encode_with, plan_warning, ClientFacts, HttpBoot, Reply,
};
use super::packet::{message_type, parse_request};
use super::subnets::{Subnets, Throttle, Via};
use super::DhcpError;
use crate::config::{DhcpMode, NodeKind};
use crate::nodes::{Accepted, Found, Node, PendingNode};
use crate::serve::ServeContext;
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

pub(crate) const SERVER_PORT: u16 = 67;
pub(crate) const CLIENT_PORT: u16 = 68;
/// PXE boot server / ProxyDHCP request port.
pub(crate) const PXE_PORT: u16 = 4011;

/// Which of our sockets a request came in on (and the reply leaves from).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Port {
    /// UDP 67.
    Dhcp,
    /// UDP 4011 (proxy mode only).
    Pxe,
}

/// A reply ready to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub(crate) bytes: Vec<u8>,
    pub(crate) dest: SocketAddrV4,
    pub(crate) port: Port,
}

pub(crate) struct Handler {
    ctx: Arc<ServeContext>,
    proxy: bool,
    /// Full mode only.
    leases: Option<LeaseDb>,
    /// Full mode only: the link's network and the relayed ones.
    subnets: Option<Subnets>,
    /// For what clients and relays can make us log at will.
    throttle: Throttle,
}

/// Where a request came from: its sender, our socket it arrived on, and
/// the subnet (and relay) it is served through.
struct Origin {
    src: SocketAddrV4,
    port: Port,
    via: Via,
}

impl Handler {
    /// Full mode loads the pool and its saved leases; proxy mode has none.
    pub(crate) fn new(ctx: Arc<ServeContext>) -> Result<Handler, DhcpError> {
        let proxy = ctx.config.dhcp.mode == DhcpMode::Proxy;
        let (leases, subnets) = if proxy {
            (None, None)
        } else {
            let subnets = Subnets::from_config(&ctx.config)?;
            let reserved = subnets.reserved(&ctx.inventory.all());
            let path = ctx.state_dir.join("dhcp").join("leases.json");
            let db = LeaseDb::open(subnets.pool(ctx.server_ip, reserved), &path)?;
            info!(
                "DHCP leases: {} loaded from {}",
                db.leases().count(),
                path.display()
            );
            // Nodes that booted before a restart keep their addresses, and
            // NFS checks every call's client address against what we learnt:
            // without this, a restarted server refused running nodes until
            // they next spoke DHCP.
            for l in db.leases() {
                ctx.inventory.learn_ip(l.mac, l.ip);
            }
            (Some(db), Some(subnets))
        };
        Ok(Handler {
            proxy,
            leases,
            subnets,
            throttle: Throttle::default(),
            ctx,
        })
    }

    #[cfg(test)]
    pub(crate) fn leases(&self) -> Option<&LeaseDb> {
        self.leases.as_ref()
    }

    /// The reply to one datagram from `src` received on `port`, if any.
    pub(crate) fn handle(
        &mut self,
        buf: &[u8],
        src: SocketAddrV4,
        port: Port,
        now: u64,
    ) -> Option<Outgoing> {
        let msg = match parse_request(buf) {
            Ok(m) => m,
            Err(e) => {
                debug!("dropping malformed DHCP packet from {src}: {e}");
                return None;
            }
        };
        let facts = ClientFacts::from_message(&msg)?;
        let mtype = message_type(&msg);
        let via = match &self.subnets {
            Some(subnets) => subnets.route(&msg, buf),
            None => Via::proxy(&msg, buf),
        };
        let via = match via {
            Ok(via) => via,
            Err(e) => {
                self.throttle.unserved(&e, mtype, facts.mac, Instant::now());
                return None;
            }
        };
        let origin = Origin { src, port, via };
        if self.proxy {
            self.proxy_reply(&msg, &facts, mtype, &origin)
        } else {
            self.full_reply(&msg, &facts, mtype, &origin, now)
        }
    }

    /// The node (or pending node) a request is from.
    fn node(&self, facts: &ClientFacts, mtype: MessageType) -> Option<Found> {
        let found = self.ctx.inventory.lookup(
            facts.mac,
            facts.hint(),
            facts.sent_by_boot_firmware(),
            Instant::now(),
        );
        if found.is_none() {
            debug!("{mtype:?} from unknown {}: not answering", facts.mac);
        }
        found
    }

    fn full_reply(
        &mut self,
        msg: &Message,
        facts: &ClientFacts,
        mtype: MessageType,
        origin: &Origin,
        now: u64,
    ) -> Option<Outgoing> {
        let server = self.ctx.server_ip;
        let mac = facts.mac;
        let server_id = server_identifier(msg);
        if server_id.is_some_and(|s| s != server) {
            // The client is talking to another server (a REQUEST for its
            // offer, or a RELEASE): our offer, if any, is not wanted.
            if let Some(db) = self.leases.as_mut() {
                db.forget_offer(mac);
            }
            debug!("{mtype:?} from {mac} is for server {}", server_id?);
            return None;
        }
        let found = self.node(facts, mtype)?;
        let node = found.node().clone();
        // Only nodes of the inventory get a boot timeline.
        let recorded = matches!(found, Found::Node(_)).then(|| node.name.clone());
        let boot_firmware = facts.sent_by_boot_firmware();
        // What the firmware says it is picks the platform the node boots
        // (unless its configuration names one).
        if let (Found::Node(_), true) = (&found, boot_firmware) {
            let inventory = &self.ctx.inventory;
            inventory.learn_firmware(mac, facts.arch, facts.pi_model());
        }
        let requested = requested_ip(msg);
        let subnet = self.subnets.as_ref()?.get(origin.via.subnet);
        if let Some(fixed) = node.ip.filter(|ip| !subnet.contains(*ip)) {
            if matches!(mtype, MessageType::Discover | MessageType::Request) {
                warn!(
                    "{mtype:?} from {} ({mac}) comes from the {subnet}, but its fixed \
                     address {fixed} is not in it: not answering",
                    node.name
                );
            }
            return None;
        }
        let lease_secs = subnet.lease_secs;
        let range = origin.via.subnet;
        let leases = self.leases.as_mut()?;
        match mtype {
            MessageType::Discover => {
                if let (Found::Node(n), true) = (&found, boot_firmware) {
                    self.ctx.boot_started(n);
                }
                let ip = match node.ip {
                    Some(fixed) => Some(fixed),
                    None if recorded.is_some() => leases.offer(range, mac, requested, now),
                    None => leases.offer_yielding(range, mac, requested, now),
                };
                let Some(ip) = ip else {
                    // Only a node's miss is worth a warning: anyone can send
                    // DISCOVERs from made-up MACs.
                    if recorded.is_some() {
                        warn!(
                            "DHCP pool of the {subnet} exhausted: no address for {} ({mac})",
                            node.name
                        );
                    }
                    return None;
                };
                let (node, recorded) = match (&found, node.kind) {
                    // The Pi boot ROM fetches its first files with the
                    // offered address and never sends a REQUEST for it: the
                    // offer binds it.
                    (_, NodeKind::Raspberrypi) => {
                        let node = match &found {
                            Found::Node(n) => n.clone(),
                            Found::Pending(p) => {
                                let Some(a) = accept(&self.ctx, p) else {
                                    leases.forget_offer(mac);
                                    return None;
                                };
                                leases.keep_offer(mac);
                                if a.boot_firmware {
                                    self.ctx.boot_started(&a.node);
                                }
                                a.node
                            }
                        };
                        self.ctx.inventory.learn_ip(mac, ip);
                        let name = node.name.clone();
                        (node, Some(name))
                    }
                    _ => (node, recorded),
                };
                info!("DHCPOFFER {ip} to {} ({mac})", node.name);
                let reply = self.reply(msg, facts, &node, MessageType::Offer, ip, origin);
                let (n, t) = (recorded.as_deref(), MessageType::Offer);
                Some(self.out(n, msg, reply, t, origin))
            }
            MessageType::Request => {
                let ciaddr = msg.ciaddr();
                let Some(ip) = requested.or((!ciaddr.is_unspecified()).then_some(ciaddr)) else {
                    debug!("REQUEST from {mac} names no address");
                    return None;
                };
                // An address of another subnet is no good where the client is
                // now (RFC 2131 4.3.2: NAK a client on the wrong network).
                let allowed = subnet.contains(ip)
                    && match node.ip {
                        Some(fixed) => ip == fixed,
                        None => leases.available_to(ip, mac, now),
                    };
                if !allowed {
                    leases.forget_offer(mac);
                    info!("DHCPNAK {ip} to {} ({mac}): not available to it", node.name);
                    let nak = build_nak(msg, server, "requested address not available");
                    let (n, t) = (recorded.as_deref(), MessageType::Nak);
                    return Some(self.out(n, msg, nak, t, origin));
                }
                // Binding the address makes a pending node a node; if the
                // lease cannot be saved it stays one (it asks again).
                let (node, begins) = match &found {
                    Found::Node(n) => (n.clone(), false),
                    Found::Pending(p) => {
                        let a = accept(&self.ctx, p)?;
                        let begins = a.boot_firmware || boot_firmware;
                        (a.node, begins)
                    }
                };
                if let Err(e) = leases.bind(mac, ip, &node.name, lease_secs, now) {
                    // A lease that is not on disk would be forgotten by a
                    // restart and handed out twice: better no answer (the
                    // client retries).
                    warn!("not acknowledging {ip} for {mac}: {e}");
                    return None;
                }
                self.ctx.inventory.learn_ip(mac, ip);
                self.ctx.inventory.note_lease(mac, ip, lease_secs);
                if begins {
                    self.ctx.boot_started(&node);
                }
                info!("DHCPACK {ip} to {} ({mac})", node.name);
                let reply = self.reply(msg, facts, &node, MessageType::Ack, ip, origin);
                let (n, t) = (Some(node.name.as_str()), MessageType::Ack);
                Some(self.out(n, msg, reply, t, origin))
            }
            MessageType::Inform => {
                // RFC 2131 4.3.5: configuration without an address or lease
                // (so a pending node stays pending).
                let unspecified = Ipv4Addr::UNSPECIFIED;
                let reply = self.reply(msg, facts, &node, MessageType::Ack, unspecified, origin);
                let (n, t) = (recorded.as_deref(), MessageType::Ack);
                Some(self.out(n, msg, reply, t, origin))
            }
            MessageType::Release => {
                let ip = msg.ciaddr();
                match leases.release(mac, ip, now) {
                    Ok(true) => info!("DHCPRELEASE {ip} from {} ({mac})", node.name),
                    Ok(false) => debug!("RELEASE of {ip} from {mac}: not its lease"),
                    Err(e) => warn!("RELEASE from {mac}: {e}"),
                }
                None
            }
            MessageType::Decline => {
                let ip = requested?;
                warn!(
                    "DHCPDECLINE {ip} from {} ({mac}): another machine uses it; held back",
                    node.name
                );
                if let Err(e) = leases.decline(mac, ip, now) {
                    warn!("DECLINE from {mac}: {e}");
                }
                None
            }
            other => {
                debug!("ignoring {other:?} from {mac}");
                None
            }
        }
    }

    fn proxy_reply(
        &mut self,
        msg: &Message,
        facts: &ClientFacts,
        mtype: MessageType,
        origin: &Origin,
    ) -> Option<Outgoing> {
        let (mac, port) = (facts.mac, origin.port);
        let ciaddr = msg.ciaddr();
        // PXE clients send 60 "PXEClient" on port 67; a request on 4011 is
        // PXE by definition. Anyone else must not see an offer without an
        // address (U-Boot, for one, would try to use 0.0.0.0), and must not
        // make `[defaults]` invent a node either.
        if port == Port::Dhcp && !facts.is_pxe_client() {
            if !ciaddr.is_unspecified() && self.ctx.inventory.is_node(mac) {
                self.ctx.inventory.learn_ip(mac, ciaddr);
            }
            debug!("proxy mode: {mtype:?} from {mac} is not from a PXE client; not answering");
            return None;
        }
        let found = self.node(facts, mtype)?;
        let boot_firmware = facts.sent_by_boot_firmware();
        let reply_type = match (port, mtype) {
            (Port::Dhcp, MessageType::Discover) => MessageType::Offer,
            (Port::Pxe, MessageType::Request | MessageType::Inform) => MessageType::Ack,
            _ => {
                if let (Found::Node(_), false) = (&found, ciaddr.is_unspecified()) {
                    self.ctx.inventory.learn_ip(mac, ciaddr);
                }
                // REQUESTs on 67 go to the site's DHCP server.
                debug!("proxy mode: ignoring {mtype:?} from {mac} on {port:?}");
                return None;
            }
        };
        // The site's server gave the address: answering is what binds the
        // machine to us, so a pending node is accepted here.
        let (node, begins) = match &found {
            Found::Node(n) => (n.clone(), reply_type == MessageType::Offer && boot_firmware),
            Found::Pending(p) => {
                let a = accept(&self.ctx, p)?;
                let begins = a.boot_firmware || boot_firmware;
                (a.node, begins)
            }
        };
        if !ciaddr.is_unspecified() {
            self.ctx.inventory.learn_ip(mac, ciaddr);
        }
        if begins {
            self.ctx.boot_started(&node);
        }
        info!(
            "ProxyDHCP {reply_type:?} to {} ({mac}) on {port:?}",
            node.name
        );
        let reply = self.reply(msg, facts, &node, reply_type, Ipv4Addr::UNSPECIFIED, origin);
        Some(self.out(Some(&node.name), msg, reply, reply_type, origin))
    }

    /// An OFFER or ACK for `node`: boot options always; in full mode the
    /// address options of the subnet it is served from, and a lease when it
    /// is given an address (OFFER and ACK, not INFORM's ACK).
    fn reply(
        &self,
        msg: &Message,
        facts: &ClientFacts,
        node: &Node,
        msg_type: MessageType,
        yiaddr: Ipv4Addr,
        origin: &Origin,
    ) -> Message {
        let http = HttpBoot {
            over: self.ctx.config.server.boot_over,
            port: self.ctx.config.server.http_port,
            node: &node.name,
        };
        let plan = boot_plan(node.kind, facts, self.ctx.server_ip, self.proxy, &http);
        let grub = self.ctx.config.server.grub_arm64_efi();
        if let Some(why) = plan_warning(node.kind, &plan, facts.arch, grub, || grub.is_file()) {
            warn!("{}: {why}", node.name);
        }
        let via = &origin.via;
        let subnet = self.subnets.as_ref().map(|s| s.get(via.subnet));
        let network = subnet.map(|s| s.network_options());
        let with_lease = !yiaddr.is_unspecified();
        build_reply(
            msg,
            &Reply {
                msg_type,
                yiaddr,
                server: self.ctx.server_ip,
                lease_secs: subnet.filter(|_| with_lease).map(|s| s.lease_option_secs()),
                network: network.as_ref(),
                boot: Some(&plan),
            },
        )
    }

    /// The datagram of `reply`, noted in the boot timeline of `node` (none
    /// for a pending node: nothing is kept for it).
    fn out(
        &self,
        node: Option<&str>,
        req: &Message,
        mut reply: Message,
        t: MessageType,
        origin: &Origin,
    ) -> Outgoing {
        let address = (!reply.yiaddr().is_unspecified()).then(|| reply.yiaddr().to_string());
        let client = match req.opts().get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(c)) => Some(String::from_utf8_lossy(c).into_owned()),
            _ => None,
        };
        if let Some(node) = node {
            self.ctx.recorder.dhcp(
                node,
                &type_name(message_type(req)),
                &type_name(t),
                address,
                client,
            );
        }
        let via = &origin.via;
        via.prepare(&mut reply, t);
        let dest = via
            .relay_destination()
            .unwrap_or_else(|| destination(req, t, origin.src, origin.port));
        Outgoing {
            bytes: encode_with(&reply, &via.agent_info),
            dest,
            port: origin.port,
        }
    }
}

/// Make pending node `p` a node of the inventory; `None` (logged) when the
/// inventory takes no more (`[defaults] max_nodes`).
fn accept(ctx: &ServeContext, p: &PendingNode) -> Option<Accepted> {
    match ctx.inventory.accept(p, Instant::now()) {
        Ok(a) => {
            info!(
                "{} ({}) is a node now: made from [defaults] for an unknown MAC",
                a.node.name, a.node.mac
            );
            Some(a)
        }
        Err(e) => {
            debug!("{e}");
            None
        }
    }
}

/// "DISCOVER", "ACK", ... as in the RFC, for boot profiles.
fn type_name(t: MessageType) -> String {
    format!("{t:?}").to_ascii_uppercase()
}

fn server_identifier(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

fn requested_ip(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) if !ip.is_unspecified() => Some(*ip),
        _ => None,
    }
}

/// Where a reply to a request that no relay forwarded goes (RFC 2131 4.1;
/// relayed ones go to the relay, see `subnets`): a client with an address
/// (ciaddr) gets a unicast; one without gets a broadcast, whether or not it
/// set the broadcast flag (unicasting to yiaddr would need an ARP entry
/// forged for a machine that has no address yet). NAKs are always
/// broadcast. Replies to port 4011 go back to the sender's port.
pub(crate) fn destination(
    req: &Message,
    reply: MessageType,
    src: SocketAddrV4,
    port: Port,
) -> SocketAddrV4 {
    let ciaddr = req.ciaddr();
    match port {
        Port::Pxe => {
            let ip = [ciaddr, *src.ip()]
                .into_iter()
                .find(|a| !a.is_unspecified())
                .unwrap_or(Ipv4Addr::BROADCAST);
            SocketAddrV4::new(ip, src.port())
        }
        Port::Dhcp if reply != MessageType::Nak && !ciaddr.is_unspecified() => {
            SocketAddrV4::new(ciaddr, CLIENT_PORT)
        }
        Port::Dhcp => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
    }
}

/// A UDP socket on 0.0.0.0:`port` that only sees `interface`: broadcasts
/// come in on 0.0.0.0 whatever our address, and the limited broadcast we
/// answer with must leave through this interface only.
fn bind_udp(interface: &str, port: u16) -> Result<UdpSocket, DhcpError> {
    let err = |source| DhcpError::Bind {
        interface: interface.to_string(),
        port,
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    // Before bind: with the device set, other servers may own port 67 on
    // other interfaces.
    s.bind_device(Some(interface.as_bytes())).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
        .map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

async fn recv_maybe(
    sock: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) async fn serve(ctx: Arc<ServeContext>) -> Result<(), DhcpError> {
    let mode = ctx.config.dhcp.mode;
    if mode == DhcpMode::Off {
        info!("DHCP is off (dhcp.mode = \"off\")");
        ctx.mark_bound();
        return std::future::pending().await;
    }
    let iface = ctx.config.server.interface.clone();
    let mut handler = Handler::new(ctx.clone())?;
    let dhcp = bind_udp(&iface, SERVER_PORT)?;
    let pxe = match mode {
        DhcpMode::Proxy => Some(bind_udp(&iface, PXE_PORT)?),
        _ => None,
    };
    info!(
        "DHCP ({}) on {iface}, UDP {SERVER_PORT}{}, server {}",
        if pxe.is_some() { "proxy" } else { "full" },
        if pxe.is_some() { " and 4011" } else { "" },
        ctx.server_ip
    );
    ctx.mark_bound();
    // Big enough for any UDP datagram, so oversized ones are seen whole
    // (and dropped) instead of arriving truncated and looking valid.
    let mut buf_dhcp = vec![0u8; 65536];
    let mut buf_pxe = vec![0u8; 65536];
    loop {
        let (port, received) = tokio::select! {
            r = dhcp.recv_from(&mut buf_dhcp) => (Port::Dhcp, r),
            r = recv_maybe(pxe.as_ref(), &mut buf_pxe) => (Port::Pxe, r),
        };
        let (n, src) = match received {
            Ok(v) => v,
            Err(e) => {
                // Receive errors on a UDP socket are transient (ICMP
                // errors, interface going down): log and keep serving.
                warn!("DHCP receive on {iface}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let SocketAddr::V4(src) = src else { continue };
        let data = match port {
            Port::Dhcp => &buf_dhcp[..n],
            Port::Pxe => &buf_pxe[..n],
        };
        let Some(out) = handler.handle(data, src, port, unix_now()) else {
            crate::metrics::METRICS.dhcp_unanswered.inc();
            continue;
        };
        crate::metrics::METRICS.dhcp_replies.inc();
        let sock = match out.port {
            Port::Dhcp => &dhcp,
            Port::Pxe => pxe.as_ref().unwrap_or(&dhcp),
        };
        if let Err(e) = sock.send_to(&out.bytes, out.dest).await {
            crate::metrics::METRICS.dhcp_send_errors.inc();
            warn!("DHCP reply to {}: {e}", out.dest);
        }
    }
}

#[cfg(test)]
mod unknown_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ChunkCache;
    use crate::config::{Config, MacAddr};
    use crate::dhcp::packet::tests::request_bytes;
    use dhcproto::Decodable;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
    const PI: [u8; 6] = [0xdc, 0xa6, 0x32, 0, 0, 1];
    const PC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
    const FIXED: [u8; 6] = [0x52, 0x54, 0, 0, 0, 3];
    const BOARD: [u8; 6] = [0x6c, 0xcf, 0x39, 0, 0, 4];
    const STRANGER: [u8; 6] = [0x02, 0, 0, 0, 0, 9];

    fn context(mode: &str, dir: &std::path::Path) -> Arc<ServeContext> {
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
[[nodes]]
name = "pi1"
mac = "dc:a6:32:00:00:01"
kind = "raspberrypi"
image = "img:pi"
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
name = "board"
mac = "6c:cf:39:00:00:04"
kind = "uboot"
image = "img:rv"
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

    fn decode(o: &Outgoing) -> Message {
        Message::from_bytes(&o.bytes).unwrap()
    }

    fn opts(extra: &[&[u8]]) -> Vec<u8> {
        extra.concat()
    }

    fn request(mac: [u8; 6], requested: Ipv4Addr, server: Option<Ipv4Addr>) -> Vec<u8> {
        let mut o = vec![50, 4];
        o.extend(requested.octets());
        if let Some(s) = server {
            o.extend([54, 4]);
            o.extend(s.octets());
        }
        request_bytes(mac, 3, &o)
    }

    #[test]
    fn only_boot_firmware_starts_a_new_boot() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context("full", dir.path());
        let mut h = Handler::new(ctx.clone()).unwrap();
        // The OS's own DHCP client (udhcpc in an initramfs) on a running node.
        let os = opts(&[&[60, 10], b"udhcp 1.36"]);
        assert!(h
            .handle(&request_bytes(PI, 1, &os), src(), Port::Dhcp, 100)
            .is_some());
        assert_eq!(ctx.inventory.boot_generation("pi1"), 0);
        // The Pi's boot ROM.
        let rom = opts(&[&[60, 9], b"PXEClient", &[93, 2, 0, 0]]);
        assert!(h
            .handle(&request_bytes(PI, 1, &rom), src(), Port::Dhcp, 101)
            .is_some());
        assert_eq!(ctx.inventory.boot_generation("pi1"), 1);
        // U-Boot and iPXE count too.
        let uboot = opts(&[&[60, 12], b"U-Boot.armv8"]);
        h.handle(&request_bytes(BOARD, 1, &uboot), src(), Port::Dhcp, 102)
            .unwrap();
        assert_eq!(ctx.inventory.boot_generation("board"), 1);
        let ipxe = opts(&[&[77, 4], b"iPXE"]);
        h.handle(&request_bytes(FIXED, 1, &ipxe), src(), Port::Dhcp, 103)
            .unwrap();
        assert_eq!(ctx.inventory.boot_generation("fixed"), 1);
    }

    #[test]
    fn leases_saved_before_a_restart_are_learnt_again() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context("full", dir.path());
        let mut h = Handler::new(ctx.clone()).unwrap();
        let ipxe = opts(&[&[77, 4], b"iPXE"]);
        let offer = h
            .handle(&request_bytes(PC, 1, &ipxe), src(), Port::Dhcp, 100)
            .unwrap();
        let ip = decode(&offer).yiaddr();
        h.handle(&request(PC, ip, Some(SERVER)), src(), Port::Dhcp, 101)
            .unwrap();
        assert_eq!(ctx.inventory.ip_of("pc1"), Some(ip));
        drop(h);
        drop(ctx);
        // A new process: a fresh inventory, the leases file on disk.
        let ctx = context("full", dir.path());
        assert_eq!(ctx.inventory.ip_of("pc1"), None);
        let _h = Handler::new(ctx.clone()).unwrap();
        assert_eq!(ctx.inventory.ip_of("pc1"), Some(ip));
        assert_eq!(ctx.inventory.by_ip(ip).unwrap().name, "pc1");
    }

    #[test]
    fn full_mode_exchange() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context("full", dir.path());
        let mut h = Handler::new(ctx.clone()).unwrap();
        let pi_opts = opts(&[&[60, 9], b"PXEClient", &[93, 2, 0, 0]]);
        let offer = h
            .handle(&request_bytes(PI, 1, &pi_opts), src(), Port::Dhcp, 100)
            .unwrap();
        assert_eq!(offer.dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        let m = decode(&offer);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        let ip = m.yiaddr();
        assert_eq!(ip, Ipv4Addr::new(10, 9, 0, 100));
        assert_eq!(ctx.inventory.boot_generation("pi1"), 1);
        // The Pi 4 leaves option 60 out of its REQUEST.
        let ack = h
            .handle(&request(PI, ip, Some(SERVER)), src(), Port::Dhcp, 101)
            .unwrap();
        let m = decode(&ack);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(m.yiaddr(), ip);
        assert_eq!(ctx.inventory.ip_of("pi1"), Some(ip));
        assert_eq!(
            h.leases().unwrap().lease_of(MacAddr(PI)).unwrap().expires,
            701
        );

        // The fixed node gets its address, and only that.
        let offer = h
            .handle(&request_bytes(FIXED, 1, &[]), src(), Port::Dhcp, 100)
            .unwrap();
        assert_eq!(decode(&offer).yiaddr(), Ipv4Addr::new(10, 9, 0, 20));
        let nak = h
            .handle(
                &request(FIXED, Ipv4Addr::new(10, 9, 0, 101), None),
                src(),
                Port::Dhcp,
                101,
            )
            .unwrap();
        assert_eq!(decode(&nak).opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(nak.dest.ip(), &Ipv4Addr::BROADCAST);

        // Another node asking for the Pi's address is refused.
        let nak = h
            .handle(&request(PC, ip, None), src(), Port::Dhcp, 102)
            .unwrap();
        assert_eq!(decode(&nak).opts().msg_type(), Some(MessageType::Nak));

        // A request for another server's offer is silent and frees ours.
        let offer = h
            .handle(&request_bytes(PC, 1, &[]), src(), Port::Dhcp, 103)
            .unwrap();
        let pc_ip = decode(&offer).yiaddr();
        assert_eq!(pc_ip, Ipv4Addr::new(10, 9, 0, 101));
        let other = Ipv4Addr::new(10, 9, 0, 254);
        assert!(h
            .handle(&request(PC, pc_ip, Some(other)), src(), Port::Dhcp, 104)
            .is_none());
        let offer = h
            .handle(&request_bytes(BOARD, 1, &[]), src(), Port::Dhcp, 105)
            .unwrap();
        assert_eq!(decode(&offer).yiaddr(), pc_ip);

        // Renewal: unicast REQUEST with ciaddr, answered by unicast.
        let mut renew = request_bytes(PI, 3, &[]);
        renew[12..16].copy_from_slice(&ip.octets());
        let ack = h
            .handle(&renew, SocketAddrV4::new(ip, 68), Port::Dhcp, 200)
            .unwrap();
        assert_eq!(ack.dest, SocketAddrV4::new(ip, 68));
        assert_eq!(decode(&ack).ciaddr(), ip);

        // INFORM: no address, no lease time.
        let mut inform = request_bytes(PI, 8, &[]);
        inform[12..16].copy_from_slice(&ip.octets());
        let ack = h
            .handle(&inform, SocketAddrV4::new(ip, 68), Port::Dhcp, 201)
            .unwrap();
        let m = decode(&ack);
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(m.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert_eq!(ack.dest, SocketAddrV4::new(ip, 68));

        // RELEASE ends the lease; the address becomes available.
        let mut release = request_bytes(PI, 7, &[54, 4, 10, 9, 0, 1]);
        release[12..16].copy_from_slice(&ip.octets());
        assert!(h
            .handle(&release, SocketAddrV4::new(ip, 68), Port::Dhcp, 300)
            .is_none());
        assert!(h.leases().unwrap().available_to(ip, MacAddr(PC), 301));

        // Strangers and relayed requests get nothing.
        assert!(h
            .handle(&request_bytes(STRANGER, 1, &[]), src(), Port::Dhcp, 400)
            .is_none());
        let mut relayed = request_bytes(PC, 1, &[]);
        relayed[24..28].copy_from_slice(&[10, 1, 0, 1]);
        assert!(h.handle(&relayed, src(), Port::Dhcp, 400).is_none());
        assert!(h.handle(b"garbage", src(), Port::Dhcp, 400).is_none());
    }

    #[test]
    fn decline_holds_the_address_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = Handler::new(context("full", dir.path())).unwrap();
        let offer = h
            .handle(&request_bytes(PC, 1, &[]), src(), Port::Dhcp, 0)
            .unwrap();
        let ip = decode(&offer).yiaddr();
        h.handle(&request(PC, ip, Some(SERVER)), src(), Port::Dhcp, 1)
            .unwrap();
        let mut decline = vec![50, 4];
        decline.extend(ip.octets());
        decline.extend([54, 4, 10, 9, 0, 1]);
        assert!(h
            .handle(&request_bytes(PC, 4, &decline), src(), Port::Dhcp, 2)
            .is_none());
        let offer = h
            .handle(&request_bytes(PC, 1, &[]), src(), Port::Dhcp, 3)
            .unwrap();
        assert_ne!(decode(&offer).yiaddr(), ip);
    }

    #[test]
    fn proxy_mode_offers_no_address() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context("proxy", dir.path());
        let mut h = Handler::new(ctx.clone()).unwrap();
        assert!(h.leases().is_none());
        let pxe = opts(&[&[60, 9], b"PXEClient", &[93, 2, 0, 7]]);
        let offer = h
            .handle(&request_bytes(PC, 1, &pxe), src(), Port::Dhcp, 0)
            .unwrap();
        let m = decode(&offer);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.siaddr(), SERVER);
        assert_eq!(
            m.fname_str().unwrap().unwrap().trim_end_matches('\0'),
            "ipxe.efi"
        );
        assert!(m.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert!(m.opts().get(OptionCode::SubnetMask).is_none());
        assert_eq!(offer.dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        assert_eq!(ctx.inventory.boot_generation("pc1"), 1);

        // The ProxyDHCP REQUEST on 4011 is answered to its sender.
        let client = Ipv4Addr::new(192, 168, 1, 50);
        let mut req = request_bytes(PC, 3, &pxe);
        req[12..16].copy_from_slice(&client.octets());
        let from = SocketAddrV4::new(client, 68);
        let ack = h.handle(&req, from, Port::Pxe, 1).unwrap();
        assert_eq!(ack.dest, from);
        assert_eq!(ack.port, Port::Pxe);
        let m = decode(&ack);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(ctx.inventory.ip_of("pc1"), Some(client));

        // The same REQUEST on 67 belongs to the site's DHCP server.
        assert!(h.handle(&req, from, Port::Dhcp, 2).is_none());
        // U-Boot is not a PXE client: no proxy offer, but its address is
        // still learned from a renewal.
        let board_ip = Ipv4Addr::new(192, 168, 1, 51);
        let uboot = opts(&[&[60, 6], b"U-Boot"]);
        assert!(h
            .handle(&request_bytes(BOARD, 1, &uboot), src(), Port::Dhcp, 3)
            .is_none());
        let mut renew = request_bytes(BOARD, 3, &uboot);
        renew[12..16].copy_from_slice(&board_ip.octets());
        assert!(h
            .handle(&renew, SocketAddrV4::new(board_ip, 68), Port::Dhcp, 4)
            .is_none());
        assert_eq!(ctx.inventory.ip_of("board"), Some(board_ip));
    }

    #[test]
    fn destinations() {
        let m = Message::from_bytes(&request_bytes(PC, 1, &[])).unwrap();
        let from = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 4011);
        assert_eq!(
            destination(&m, MessageType::Offer, src(), Port::Dhcp),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
        );
        assert_eq!(destination(&m, MessageType::Ack, from, Port::Pxe), from);
        let mut with_ci = m.clone();
        with_ci.set_ciaddr(Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(
            destination(&with_ci, MessageType::Ack, src(), Port::Dhcp),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 7), 68)
        );
        assert_eq!(
            destination(&with_ci, MessageType::Nak, src(), Port::Dhcp),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
        );
    }
}
