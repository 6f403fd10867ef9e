//! `[[dhcp.subnets]]`: networks whose machines reach the DHCP server
//! through relay agents (a router's `dhcrelay`, a switch's `ip
//! helper-address`), and the checks that keep them apart from each other
//! and from the network served on the link.

use super::{line_of, Config, ConfigError, DhcpMode};
use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer};
use std::net::Ipv4Addr;
use std::ops::Range;
use toml::Spanned;

/// An IPv4 network written as CIDR (`10.218.5.0/24`), host bits clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Network(pub(crate) Ipv4Net);

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let net: Ipv4Net = s.trim().parse().map_err(|_| {
            serde::de::Error::custom(format!("{s:?} is not a network like 10.218.5.0/24"))
        })?;
        if net.trunc() != net {
            // A typo for an address in it is likelier than a wish to serve
            // the whole network it lies in.
            return Err(serde::de::Error::custom(format!(
                "{s:?} has host bits set: the network would be {}",
                net.trunc()
            )));
        }
        Ok(Network(net))
    }
}

/// One `[[dhcp.subnets]]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubnetConfig {
    /// The relayed network; a request belongs to it when its giaddr (the
    /// relay agent's address on the client's link) lies in it.
    pub(crate) network: Spanned<Network>,
    pub(crate) pool_start: Spanned<Ipv4Addr>,
    pub(crate) pool_end: Spanned<Ipv4Addr>,
    /// Default gateway sent (option 3), required: without one a node
    /// cannot reach the server at all. It is not taken from the relay's
    /// giaddr, although relays usually run on the router, because renewals
    /// come straight to the server with no giaddr in them.
    pub(crate) router: Spanned<Ipv4Addr>,
    /// DNS servers sent (option 6); `[dhcp] dns` when not given.
    #[serde(default)]
    pub(crate) dns: Option<Vec<Ipv4Addr>>,
    /// Domain name sent (option 15); `[dhcp] domain` when not given.
    #[serde(default)]
    pub(crate) domain: Option<String>,
    /// Lease time; `[dhcp] lease_secs` when not given.
    #[serde(default)]
    pub(crate) lease_secs: Option<u64>,
}

impl SubnetConfig {
    pub(crate) fn net(&self) -> Ipv4Net {
        self.network.get_ref().0
    }
}

/// The network served on `server.interface`: `server.address` with
/// `dhcp.prefix_len`.
pub(crate) fn link_network(cfg: &Config) -> Ipv4Net {
    let prefix = cfg.dhcp.prefix_len.unwrap_or(24).min(32);
    Ipv4Net::new(cfg.server.address, prefix)
        .expect("prefix length capped at 32")
        .trunc()
}

/// Check every `[[dhcp.subnets]]` table: full mode only, room for a pool,
/// the pool (and the router, which must not be handed out) inside its
/// network, and no network overlapping another or the link's.
pub(super) fn validate(
    cfg: &Config,
    text: &str,
    invalid: &dyn Fn(Range<usize>, &str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let subnets = &cfg.dhcp.subnets;
    let Some(first) = subnets.first() else {
        return Ok(());
    };
    if cfg.dhcp.mode != DhcpMode::Full {
        return Err(invalid(
            first.network.span(),
            "dhcp.subnets",
            "relayed subnets are served in mode = \"full\" only (proxyDHCP through \
             relay agents is not supported)"
                .into(),
        ));
    }
    let link = link_network(cfg);
    for (i, s) in subnets.iter().enumerate() {
        let net = s.net();
        if net.prefix_len() > 30 {
            return Err(invalid(
                s.network.span(),
                "dhcp.subnets.network",
                format!("{net} leaves no room for a pool"),
            ));
        }
        let (start, end) = (*s.pool_start.get_ref(), *s.pool_end.get_ref());
        for (ip, key) in [
            (&s.pool_start, "dhcp.subnets.pool_start"),
            (&s.pool_end, "dhcp.subnets.pool_end"),
        ] {
            if !net.contains(ip.get_ref()) {
                return Err(invalid(
                    ip.span(),
                    key,
                    format!("{} is outside the subnet's network {net}", ip.get_ref()),
                ));
            }
        }
        if u32::from(start) > u32::from(end) {
            return Err(invalid(
                s.pool_end.span(),
                "dhcp.subnets.pool_end",
                format!("{end} comes before pool_start {start}"),
            ));
        }
        let r = *s.router.get_ref();
        let why = if !net.contains(&r) {
            Some(format!("{r} is outside the subnet's network {net}"))
        } else if (u32::from(start)..=u32::from(end)).contains(&u32::from(r)) {
            Some(format!(
                "{r} lies inside the pool {start}..{end}, which would hand it out"
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(invalid(s.router.span(), "dhcp.subnets.router", why));
        }
        if overlap(net, link) {
            return Err(invalid(
                s.network.span(),
                "dhcp.subnets.network",
                format!(
                    "{net} overlaps the network served on the link, {link} \
                     (server.address with dhcp.prefix_len)"
                ),
            ));
        }
        if let Some(other) = subnets[..i].iter().find(|o| overlap(net, o.net())) {
            return Err(invalid(
                s.network.span(),
                "dhcp.subnets.network",
                format!(
                    "{net} overlaps {} on line {}",
                    other.net(),
                    line_of(text, other.network.span().start)
                ),
            ));
        }
    }
    Ok(())
}

fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::net::Ipv4Addr;

    const BASE: &str = r#"
[server]
interface = "lb0"
address = "10.9.0.1"

[dhcp]
mode = "full"
pool_start = "10.9.0.100"
pool_end = "10.9.0.150"
lease_secs = 900
dns = ["10.9.0.1"]

[[dhcp.subnets]]
network = "10.218.5.0/24"
pool_start = "10.218.5.100"
pool_end = "10.218.5.150"
router = "10.218.5.1"

[[dhcp.subnets]]
network = "10.218.6.0/23"
pool_start = "10.218.6.10"
pool_end = "10.218.7.200"
router = "10.218.6.1"
dns = []
domain = "far.lan"
lease_secs = 300
"#;

    fn err(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn parses_subnets() {
        let c = Config::parse(BASE, "t.toml").unwrap();
        let s = &c.dhcp.subnets;
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].net().to_string(), "10.218.5.0/24");
        assert_eq!(*s[0].router.get_ref(), Ipv4Addr::new(10, 218, 5, 1));
        assert_eq!(s[0].dns, None);
        assert_eq!(s[1].net().prefix_len(), 23);
        assert_eq!(s[1].dns, Some(vec![]));
        assert_eq!(s[1].domain.as_deref(), Some("far.lan"));
        assert_eq!(s[1].lease_secs, Some(300));
    }

    #[test]
    fn bad_subnets_are_refused_naming_key_and_line() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "network = \"10.218.5.0/24\"",
                "network = \"10.218.5.7/24\"",
                &["line 14", "host bits", "10.218.5.0/24"],
            ),
            (
                "network = \"10.218.5.0/24\"",
                "network = \"10.218.5.0\"",
                &["line 14", "not a network"],
            ),
            (
                "pool_end = \"10.218.5.150\"",
                "pool_end = \"10.218.9.150\"",
                &[
                    "line 16",
                    "dhcp.subnets.pool_end",
                    "outside",
                    "10.218.5.0/24",
                ],
            ),
            (
                "pool_start = \"10.218.5.100\"",
                "pool_start = \"10.218.5.200\"",
                &["line 16", "dhcp.subnets.pool_end", "before"],
            ),
            (
                "router = \"10.218.5.1\"",
                "router = \"10.218.5.120\"",
                &["line 17", "dhcp.subnets.router", "inside the pool"],
            ),
            (
                "router = \"10.218.5.1\"",
                "router = \"10.9.0.254\"",
                &["line 17", "dhcp.subnets.router", "outside"],
            ),
            (
                "network = \"10.218.6.0/23\"",
                "network = \"10.218.4.0/22\"",
                &["line 20", "overlaps 10.218.5.0/24 on line 14"],
            ),
            (
                "network = \"10.218.5.0/24\"",
                "network = \"10.0.0.0/8\"",
                &[
                    "line 14",
                    "overlaps the network served on the link",
                    "10.9.0.0/24",
                ],
            ),
            (
                "network = \"10.218.5.0/24\"",
                "network = \"10.218.5.0/31\"",
                &["line 14", "no room"],
            ),
            (
                "domain = \"far.lan\"",
                "domain = \"far.lan\"\nnext_server = \"10.9.0.1\"",
                &["next_server"],
            ),
            ("router = \"10.218.6.1\"\n", "", &["router", "missing"]),
        ];
        for (from, to, want) in cases {
            let text = BASE.replacen(from, to, 1);
            assert_ne!(text, BASE, "{from}");
            let e = err(&text);
            for w in *want {
                assert!(e.contains(w), "{to}: {e} (wanted {w:?})");
            }
        }
        // The link's network follows dhcp.prefix_len.
        let wide = BASE.replace("dns = [\"10.9.0.1\"]", "prefix_len = 8");
        assert!(err(&wide).contains("10.0.0.0/8"), "{}", err(&wide));
    }

    #[test]
    fn subnets_need_full_mode() {
        for mode in ["proxy", "off"] {
            let e = err(&BASE.replace("mode = \"full\"", &format!("mode = \"{mode}\"")));
            assert!(
                e.contains("dhcp.subnets") && e.contains("line 14") && e.contains("full"),
                "{e}"
            );
        }
    }
}
