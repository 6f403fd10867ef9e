//! The node inventory: which machines we boot, what each boots, and what we
//! have learned about them at run time (their address, how often they booted).
//!
//! DHCP feeds it (a DISCOVER starts a boot, an ACK binds an address); TFTP and
//! NFS ask it who a client address belongs to. Unknown machines either get
//! nothing or a node made from `[defaults]`, named after their MAC.

use crate::config::{Config, DefaultsConfig, MacAddr, NodeKind, RootMode, UnknownNodes};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Node {
    pub(crate) name: String,
    #[serde(serialize_with = "ser_mac")]
    pub(crate) mac: MacAddr,
    /// The 8 hex digits a Raspberry Pi prefixes its TFTP paths with.
    pub(crate) serial: Option<String>,
    pub(crate) kind: NodeKind,
    pub(crate) image: String,
    /// Fixed address from the configuration, if any.
    pub(crate) ip: Option<Ipv4Addr>,
    pub(crate) root: RootMode,
    /// Absolute path inside the image where the boot files live.
    pub(crate) boot_dir: String,
    pub(crate) kernel_args: String,
    /// Kernel and initrd chosen in the config (paths inside the image).
    pub(crate) kernel: Option<String>,
    pub(crate) initrd: Option<String>,
    /// Root arguments replacing the generated ones.
    pub(crate) root_args: Option<String>,
    /// False for nodes made on the fly from `[defaults]`.
    pub(crate) configured: bool,
}

fn ser_mac<S: serde::Serializer>(m: &MacAddr, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&m.to_string())
}

/// What a DHCP request tells about the machine that sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KindHint(pub Option<NodeKind>);

/// MAC prefixes (OUIs) of Raspberry Pi Ltd and the Raspberry Pi Foundation.
pub(crate) const RASPBERRY_PI_OUIS: [[u8; 3]; 7] = [
    [0xb8, 0x27, 0xeb],
    [0xdc, 0xa6, 0x32],
    [0xe4, 0x5f, 0x01],
    [0x28, 0xcd, 0xc1],
    [0xd8, 0x3a, 0xdd],
    [0x2c, 0xcf, 0x67],
    [0x88, 0xa2, 0x9e],
];

pub(crate) fn is_raspberry_pi_mac(mac: MacAddr) -> bool {
    RASPBERRY_PI_OUIS.iter().any(|o| mac.0[..3] == o[..])
}

#[derive(Default)]
struct Learned {
    ip_by_mac: HashMap<MacAddr, Ipv4Addr>,
    boots: HashMap<String, u64>,
    /// Why a node cannot be served (its image reference does not resolve).
    failed: HashMap<String, String>,
}

pub(crate) struct Inventory {
    nodes: RwLock<Vec<Arc<Node>>>,
    defaults: Option<DefaultsConfig>,
    learned: RwLock<Learned>,
}

impl Inventory {
    pub(crate) fn from_config(cfg: &Config) -> Inventory {
        let nodes: Vec<Arc<Node>> = cfg
            .nodes
            .iter()
            .map(|n| {
                Arc::new(Node {
                    name: n.name.get_ref().clone(),
                    mac: *n.mac.get_ref(),
                    serial: n.serial_prefix(),
                    kind: n.kind,
                    image: n.image.clone(),
                    ip: n.ip,
                    root: n.root,
                    boot_dir: n.boot_dir().to_string(),
                    kernel_args: n.kernel_args.clone(),
                    kernel: n.kernel.clone(),
                    initrd: n.initrd.clone(),
                    root_args: n.root_args.clone(),
                    configured: true,
                })
            })
            .collect();
        let mut learned = Learned::default();
        for n in &nodes {
            let n: &Arc<Node> = n;
            if let Some(ip) = n.ip {
                learned.ip_by_mac.insert(n.mac, ip);
            }
        }
        Inventory {
            nodes: RwLock::new(nodes),
            defaults: cfg.defaults.clone(),
            learned: RwLock::new(learned),
        }
    }

    pub(crate) fn all(&self) -> Vec<Arc<Node>> {
        self.nodes.read().clone()
    }

    pub(crate) fn by_name(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.read().iter().find(|n| n.name == name).cloned()
    }

    pub(crate) fn by_serial(&self, serial: &str) -> Option<Arc<Node>> {
        let s = serial.to_ascii_lowercase();
        self.nodes
            .read()
            .iter()
            .find(|n| n.serial.as_deref() == Some(s.as_str()))
            .cloned()
    }

    /// The node for `mac`: a configured one, or one made from `[defaults]`
    /// (if they allow it) using `hint` for its kind. `None`: ignore this MAC.
    pub(crate) fn by_mac(&self, mac: MacAddr, hint: KindHint) -> Option<Arc<Node>> {
        if let Some(n) = self.nodes.read().iter().find(|n| n.mac == mac) {
            return Some(n.clone());
        }
        let d = self.defaults.as_ref()?;
        if d.unknown_nodes != UnknownNodes::Defaults {
            return None;
        }
        let kind = hint
            .0
            .or(is_raspberry_pi_mac(mac).then_some(NodeKind::Raspberrypi))
            .or(d.kind)?;
        let node = Arc::new(Node {
            name: format!("node-{}", mac.to_string().replace(':', "")),
            mac,
            serial: None,
            kind,
            image: d.image.clone()?,
            ip: None,
            root: d.root,
            boot_dir: kind.default_boot_dir().to_string(),
            kernel_args: d.kernel_args.clone(),
            kernel: None,
            initrd: None,
            root_args: None,
            configured: false,
        });
        let mut nodes = self.nodes.write();
        if let Some(n) = nodes.iter().find(|n| n.mac == mac) {
            return Some(n.clone());
        }
        nodes.push(node.clone());
        Some(node)
    }

    /// Record the address a node uses (DHCP ACK, or a proxy-mode request).
    pub(crate) fn learn_ip(&self, mac: MacAddr, ip: Ipv4Addr) {
        if ip.is_unspecified() {
            return;
        }
        let mut l = self.learned.write();
        // One address belongs to one node: forget whoever had it before.
        l.ip_by_mac.retain(|m, a| *a != ip || *m == mac);
        l.ip_by_mac.insert(mac, ip);
    }

    pub(crate) fn ip_of(&self, name: &str) -> Option<Ipv4Addr> {
        let node = self.by_name(name)?;
        self.learned.read().ip_by_mac.get(&node.mac).copied()
    }

    /// Which node a client address belongs to: what DHCP taught us, then the
    /// kernel's neighbour table (a proxy-mode site's own DHCP server gave the
    /// address, so we may never have seen it).
    pub(crate) fn by_ip(&self, ip: Ipv4Addr) -> Option<Arc<Node>> {
        let mac = self
            .learned
            .read()
            .ip_by_mac
            .iter()
            .find(|(_, a)| **a == ip)
            .map(|(m, _)| *m)
            .or_else(|| arp_lookup(ip))?;
        self.nodes.read().iter().find(|n| n.mac == mac).cloned()
    }

    /// A new boot of `name` began (a DHCP DISCOVER). Returns its number.
    pub(crate) fn boot_started(&self, name: &str) -> u64 {
        let mut l = self.learned.write();
        let n = l.boots.entry(name.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    /// `name` cannot be served: its image failed to open.
    pub(crate) fn set_failed(&self, name: &str, why: String) {
        self.learned.write().failed.insert(name.to_string(), why);
    }

    /// `name` can be served again (its image opened). Called on every NFS
    /// call: the write lock is taken only when there is something to clear.
    pub(crate) fn clear_failed(&self, name: &str) {
        if self.learned.read().failed.contains_key(name) {
            self.learned.write().failed.remove(name);
        }
    }

    /// Why `name` cannot be served, if it cannot.
    pub(crate) fn failure(&self, name: &str) -> Option<String> {
        self.learned.read().failed.get(name).cloned()
    }

    /// How many boots of `name` have begun (0: none seen yet).
    pub(crate) fn boot_generation(&self, name: &str) -> u64 {
        self.learned.read().boots.get(name).copied().unwrap_or(0)
    }
}

/// Look `ip` up in /proc/net/arp.
pub(crate) fn arp_lookup(ip: Ipv4Addr) -> Option<MacAddr> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    parse_arp(&table, ip)
}

fn parse_arp(table: &str, ip: Ipv4Addr) -> Option<MacAddr> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Flags 0x0 means an incomplete entry.
        (f.len() >= 4 && f[0].parse() == Ok(ip) && f[2] != "0x0")
            .then(|| MacAddr::parse(f[3]))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg(defaults: &str) -> Config {
        let text = format!(
            r#"
[server]
interface = "lb0"
address = "10.9.0.1"
[dhcp]
mode = "proxy"
{defaults}
[[nodes]]
name = "pi1"
mac = "dc:a6:32:01:02:03"
serial = "100000008B07BCC6"
kind = "raspberrypi"
image = "img:pi"
"#
        );
        Config::parse(&text, "t").unwrap()
    }

    #[test]
    fn finds_configured_nodes_by_mac_serial_and_learned_ip() {
        let inv = Inventory::from_config(&cfg(""));
        let mac = MacAddr::parse("dc:a6:32:01:02:03").unwrap();
        let n = inv.by_mac(mac, KindHint(None)).unwrap();
        assert_eq!(n.name, "pi1");
        assert_eq!(inv.by_serial("8B07BCC6").unwrap().name, "pi1");
        assert!(inv.by_serial("deadbeef").is_none());
        let ip = Ipv4Addr::new(10, 9, 0, 50);
        inv.learn_ip(mac, ip);
        assert_eq!(inv.by_ip(ip).unwrap().name, "pi1");
        assert_eq!(inv.ip_of("pi1"), Some(ip));
        // Unknown MACs are ignored without [defaults].
        let other = MacAddr::parse("02:00:00:00:00:01").unwrap();
        assert!(inv.by_mac(other, KindHint(Some(NodeKind::Ipxe))).is_none());
        assert_eq!(inv.boot_generation("pi1"), 0);
        assert_eq!(inv.boot_started("pi1"), 1);
        assert_eq!(inv.boot_generation("pi1"), 1);
    }

    #[test]
    fn defaults_make_nodes_for_unknown_macs() {
        let inv = Inventory::from_config(&cfg(
            "[defaults]\nunknown_nodes = \"defaults\"\nimage = \"img:default\"\n",
        ));
        let pc = MacAddr::parse("52:54:00:12:34:56").unwrap();
        let n = inv.by_mac(pc, KindHint(Some(NodeKind::Ipxe))).unwrap();
        assert_eq!(n.name, "node-525400123456");
        assert_eq!(n.kind, NodeKind::Ipxe);
        assert_eq!(n.root, RootMode::Ephemeral);
        assert!(!n.configured);
        // The same MAC maps to the same node afterwards.
        assert_eq!(inv.by_mac(pc, KindHint(None)).unwrap().name, n.name);
        // A Pi is recognised by its MAC prefix even without a hint.
        let pi = MacAddr::parse("e4:5f:01:00:00:01").unwrap();
        assert_eq!(
            inv.by_mac(pi, KindHint(None)).unwrap().kind,
            NodeKind::Raspberrypi
        );
        // No kind at all: ignored.
        let unknown = MacAddr::parse("02:00:00:00:00:09").unwrap();
        assert!(inv.by_mac(unknown, KindHint(None)).is_none());
    }

    #[test]
    fn arp_table_parsing() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 10.9.0.7         0x1         0x2         52:54:00:aa:bb:cc     *        lb0\n\
                 10.9.0.8         0x1         0x0         00:00:00:00:00:00     *        lb0\n";
        assert_eq!(
            parse_arp(t, Ipv4Addr::new(10, 9, 0, 7)),
            MacAddr::parse("52:54:00:aa:bb:cc")
        );
        assert_eq!(parse_arp(t, Ipv4Addr::new(10, 9, 0, 8)), None);
    }
}
