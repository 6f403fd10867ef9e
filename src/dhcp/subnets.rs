//! The networks full mode hands addresses out on, and requests that reach
//! us through DHCP relay agents (RFC 2131 4.1 and 4.3.1, RFC 3046).
//!
//! [`Subnets`] holds the network on `server.interface` (index 0) and every
//! `[[dhcp.subnets]]` network after it, in configuration order; the same
//! indexes name their ranges in the lease pool ([`Subnets::pool`]).
//! [`Subnets::route`] tells which one a request is from:
//!
//! - giaddr set: a relay agent forwarded it, and giaddr is the relay's
//!   address on the client's link. The request belongs to the
//!   `[[dhcp.subnets]]` network that holds giaddr, and its replies go back
//!   to the relay: to giaddr on the server port (67) with giaddr kept, a NAK
//!   with the broadcast bit set so that the relay broadcasts it. A giaddr in
//!   no such network is not answered, nor is one on the served link itself
//!   (that client's broadcasts reach us directly: answering the relayed copy
//!   too would make two replies).
//! - no giaddr but a ciaddr in a relayed network: a client there renewing
//!   its lease (or sending INFORM) by unicast straight to us, through its
//!   routers; answered by unicast to ciaddr, as on the link.
//! - otherwise: the served link.
//!
//! Every reply echoes the request's relay agent information (option 82)
//! byte for byte, as the last option (RFC 3046 2.2): relays use it to find
//! the client's port and drop replies without it.
//!
//! Relayed nodes are sent the same server address as nodes on the link,
//! `server.address` (next-server, option 54, option 66, the NFS server of
//! boot scripts): TFTP, NFS, the portmapper and the API listen on it alone.
//! It must therefore be routed from every relayed subnet, and this host must
//! route those subnets back through `server.interface`, the interface the
//! relayed requests arrive on and our replies leave from.

use super::leases::{Pool, Range};
use super::options::NetworkOptions;
use super::packet::OPTIONS_OFFSET;
use super::server::SERVER_PORT;
use super::DhcpError;
use crate::config::{link_network, Config, MacAddr};
use crate::nodes::Node;
use dhcproto::v4::{Flags, Message, MessageType};
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Relay agent information (RFC 3046).
const OPTION_AGENT_INFORMATION: u8 = 82;
/// The broadcast bit of the BOOTP flags.
const BROADCAST_FLAG: u16 = 0x8000;
/// How often a log line about what clients can repeat at will (a relay
/// retransmitting every few seconds) is written at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// One network addresses are handed out on.
#[derive(Clone, Debug)]
pub(crate) struct Subnet {
    pub(crate) net: Ipv4Net,
    pub(crate) pool_start: Ipv4Addr,
    pub(crate) pool_end: Ipv4Addr,
    /// Option 3 (always set for a relayed subnet).
    pub(crate) router: Option<Ipv4Addr>,
    pub(crate) dns: Vec<Ipv4Addr>,
    pub(crate) domain: Option<String>,
    pub(crate) lease_secs: u64,
    /// Reached through relay agents, not on `server.interface`.
    pub(crate) relayed: bool,
}

impl Subnet {
    pub(crate) fn contains(&self, ip: Ipv4Addr) -> bool {
        self.net.contains(&ip)
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.pool_start)..=u32::from(self.pool_end)).contains(&u32::from(ip))
    }

    /// The address configuration of a client of this subnet.
    pub(crate) fn network_options(&self) -> NetworkOptions {
        NetworkOptions {
            mask: self.net.netmask(),
            broadcast: self.net.broadcast(),
            router: self.router,
            dns: self.dns.clone(),
            domain: self.domain.clone(),
        }
    }

    /// The lease time as option 51 carries it (0xffffffff would mean
    /// "infinite").
    pub(crate) fn lease_option_secs(&self) -> u32 {
        self.lease_secs.min(u32::MAX as u64 - 1) as u32
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.relayed {
            true => write!(f, "relayed subnet {}", self.net),
            false => write!(f, "the served link {}", self.net),
        }
    }
}

/// The subnet a request is served from, and how its replies travel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Via {
    /// Index into [`Subnets`] (and into the lease pool's ranges).
    pub(crate) subnet: usize,
    /// The giaddr of the relay agent the request came through.
    pub(crate) relay: Option<Ipv4Addr>,
    /// The request's option 82 as it came (whole options, code and length
    /// included), for the reply to echo.
    pub(crate) agent_info: Vec<u8>,
}

impl Via {
    /// How proxy mode serves request `msg` (the datagram `raw`): on the
    /// link only. A proxy completes the offer of another server on the
    /// client's own link; through a relay there is no such offer beside it.
    pub(crate) fn proxy(msg: &Message, raw: &[u8]) -> Result<Via, Unserved> {
        let giaddr = msg.giaddr();
        if !giaddr.is_unspecified() {
            return Err(Unserved::ProxyRelayed(giaddr));
        }
        Ok(Via {
            subnet: 0,
            relay: None,
            agent_info: agent_information(raw),
        })
    }

    /// Where a reply to a relayed request goes: the relay's server port at
    /// giaddr, never the client (RFC 2131 4.1). `None`: not relayed.
    pub(crate) fn relay_destination(&self) -> Option<SocketAddrV4> {
        self.relay.map(|g| SocketAddrV4::new(g, SERVER_PORT))
    }

    /// Make `reply`, of type `t`, what the relay expects: a NAK carries the
    /// broadcast bit, so that the relay broadcasts it to a client whose
    /// address is no good (RFC 2131 4.3.2). Other replies keep the client's
    /// own bit, which tells the relay how to reach it.
    pub(crate) fn prepare(&self, reply: &mut Message, t: MessageType) {
        if self.relay.is_some() && t == MessageType::Nak {
            reply.set_flags(Flags::new(u16::from(reply.flags()) | BROADCAST_FLAG));
        }
    }
}

/// Why a request is not served from any subnet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unserved {
    #[error(
        "relayed by {0}, which lies in no [[dhcp.subnets]] network: \
         add the relay's subnet to the configuration, or stop the relay"
    )]
    UnknownRelay(Ipv4Addr),
    #[error(
        "relayed by {0}, an address of the served link: its client's own \
         broadcast reaches us directly"
    )]
    RelayOnLink(Ipv4Addr),
    #[error(
        "relayed by {giaddr}, which lies inside the pool of the {subnet}: \
         move the pool or the relay, or the relay's address would be handed out"
    )]
    RelayInPool { giaddr: Ipv4Addr, subnet: String },
    #[error(
        "relayed by {0}: proxy mode does not answer requests through relay \
         agents (full mode with [[dhcp.subnets]] does)"
    )]
    ProxyRelayed(Ipv4Addr),
}

impl Unserved {
    /// Whether the configuration is at fault (worth a warning), rather than
    /// an expected duplicate.
    fn is_misconfiguration(&self) -> bool {
        !matches!(self, Unserved::RelayOnLink(_))
    }

    fn kind(&self) -> &'static str {
        match self {
            Unserved::UnknownRelay(_) => "unknown relay",
            Unserved::RelayOnLink(_) => "relay on the link",
            Unserved::RelayInPool { .. } => "relay in the pool",
            Unserved::ProxyRelayed(_) => "relayed to a proxy",
        }
    }
}

/// The served link's network and the relayed ones, in that order.
#[derive(Clone, Debug)]
pub(crate) struct Subnets {
    all: Vec<Subnet>,
}

impl Subnets {
    /// The link's network (`server.address` with `dhcp.prefix_len`, the
    /// `[dhcp]` pool) and every `[[dhcp.subnets]]` one, with their options
    /// (dns, domain and lease time default to `[dhcp]`'s).
    pub(crate) fn from_config(cfg: &Config) -> Result<Subnets, DhcpError> {
        let d = &cfg.dhcp;
        let (Some(start), Some(end)) = (&d.pool_start, &d.pool_end) else {
            return Err(DhcpError::Config(
                "mode = \"full\" needs pool_start and pool_end".into(),
            ));
        };
        let lease_secs = d.lease_secs.max(1);
        let link = Subnet {
            net: link_network(cfg),
            pool_start: *start.get_ref(),
            pool_end: *end.get_ref(),
            router: d.router,
            dns: d.dns.clone(),
            domain: d.domain.clone(),
            lease_secs,
            relayed: false,
        };
        let relayed = d.subnets.iter().map(|s| Subnet {
            net: s.net(),
            pool_start: *s.pool_start.get_ref(),
            pool_end: *s.pool_end.get_ref(),
            router: Some(*s.router.get_ref()),
            dns: s.dns.clone().unwrap_or_else(|| d.dns.clone()),
            domain: s.domain.clone().or_else(|| d.domain.clone()),
            lease_secs: s.lease_secs.map_or(lease_secs, |l| l.max(1)),
            relayed: true,
        });
        Ok(Subnets {
            all: std::iter::once(link).chain(relayed).collect(),
        })
    }

    /// Subnet `i`, an index [`route`](Self::route) gave.
    pub(crate) fn get(&self, i: usize) -> &Subnet {
        &self.all[i]
    }

    /// The subnet that holds `ip`.
    fn holding(&self, ip: Ipv4Addr) -> Option<(usize, &Subnet)> {
        self.all.iter().enumerate().find(|(_, s)| s.contains(ip))
    }

    /// The lease pool: each subnet's range, in the same order, never handing
    /// out our own address or a router's; `reserved` the fixed addresses.
    pub(crate) fn pool(&self, server: Ipv4Addr, reserved: HashMap<Ipv4Addr, MacAddr>) -> Pool {
        let ranges = self
            .all
            .iter()
            .map(|s| Range {
                start: s.pool_start,
                end: s.pool_end,
                subnet: s.net,
                excluded: [Some(server), s.router]
                    .into_iter()
                    .flatten()
                    .filter(|ip| s.contains(*ip))
                    .collect(),
            })
            .collect();
        Pool { ranges, reserved }
    }

    /// The fixed addresses of `nodes`, by address. One outside every subnet
    /// served, or given to two nodes, is logged: such a node is refused
    /// wherever it boots from (the first holder keeps a shared address).
    pub(crate) fn reserved(&self, nodes: &[Arc<Node>]) -> HashMap<Ipv4Addr, MacAddr> {
        let mut reserved = HashMap::new();
        for n in nodes {
            let Some(ip) = n.ip else { continue };
            if self.holding(ip).is_none() {
                let nets: Vec<String> = self.all.iter().map(|s| s.net.to_string()).collect();
                warn!(
                    "node {}: fixed address {ip} is outside every subnet served ({})",
                    n.name,
                    nets.join(", ")
                );
            }
            if let Some(other) = reserved.insert(ip, n.mac) {
                warn!(
                    "fixed address {ip} is configured for both {other} and {}",
                    n.mac
                );
            }
        }
        reserved
    }

    /// The subnet request `msg` (the datagram `raw`) is served from.
    pub(crate) fn route(&self, msg: &Message, raw: &[u8]) -> Result<Via, Unserved> {
        let giaddr = msg.giaddr();
        let agent_info = agent_information(raw);
        if giaddr.is_unspecified() {
            let ciaddr = msg.ciaddr();
            let subnet = match self.holding(ciaddr) {
                Some((i, s)) if s.relayed && !ciaddr.is_unspecified() => i,
                _ => 0,
            };
            return Ok(Via {
                subnet,
                relay: None,
                agent_info,
            });
        }
        match self.holding(giaddr) {
            None => Err(Unserved::UnknownRelay(giaddr)),
            Some((_, s)) if !s.relayed => Err(Unserved::RelayOnLink(giaddr)),
            Some((_, s)) if s.in_pool(giaddr) => Err(Unserved::RelayInPool {
                giaddr,
                subnet: s.to_string(),
            }),
            Some((i, _)) => Ok(Via {
                subnet: i,
                relay: Some(giaddr),
                agent_info,
            }),
        }
    }
}

/// The option 82 options of the datagram `raw` (a request `parse_request`
/// accepted), exactly as they are on the wire.
pub(crate) fn agent_information(raw: &[u8]) -> Vec<u8> {
    let mut found = Vec::new();
    let mut i = OPTIONS_OFFSET;
    while let Some(&code) = raw.get(i) {
        match code {
            0 => i += 1,
            255 => break,
            _ => {
                let Some(&len) = raw.get(i + 1) else { break };
                let end = i + 2 + len as usize;
                let Some(option) = raw.get(i..end) else { break };
                if code == OPTION_AGENT_INFORMATION {
                    found.extend_from_slice(option);
                }
                i = end;
            }
        }
    }
    found
}

/// At most one log line a minute for each kind of event.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    last: HashMap<&'static str, Instant>,
}

impl Throttle {
    /// Log why a `mtype` from `mac` is not answered: a warning (at most one
    /// a minute of each kind) for what the configuration must fix.
    pub(crate) fn unserved(
        &mut self,
        e: &Unserved,
        mtype: MessageType,
        mac: MacAddr,
        now: Instant,
    ) {
        if !e.is_misconfiguration() {
            debug!("not answering {mtype:?} from {mac}: {e}");
        } else if self.ready(e.kind(), now) {
            warn!("not answering {mtype:?} from {mac}: {e} (logged at most once a minute)");
        }
    }

    /// Whether an event of `kind` may be logged now (and if so, the next
    /// one not before a minute has passed).
    fn ready(&mut self, kind: &'static str, now: Instant) -> bool {
        match self.last.get(kind) {
            Some(t) if now.saturating_duration_since(*t) < LOG_EVERY => false,
            _ => {
                self.last.insert(kind, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests;
