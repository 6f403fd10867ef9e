//! The node inventory: which machines we boot, what each boots, and what we
//! have learned about them at run time (their address, how often they booted).
//!
//! DHCP feeds it (a DISCOVER starts a boot, an ACK binds an address); TFTP and
//! NFS ask it who a client address belongs to. Unknown machines either get
//! nothing or a node made from `[defaults]`, named after their MAC.
//!
//! Such a node is *pending* at first ([`pending`]): kept in a small expiring
//! table that nothing but DHCP sees, so that packets from made-up MACs leave
//! nothing behind. It becomes a node of the inventory only when the DHCP
//! server binds an address to it ([`Inventory::accept`]), and at most
//! `[defaults] max_nodes` of them ever do.

mod pending;
pub(crate) mod pi_model;
pub(crate) mod platform;

use crate::config::{Config, DefaultsConfig, MacAddr, NodeKind, RootMode, UnknownNodes};
use crate::platform::Platform;
use parking_lot::{Mutex, RwLock};
use pending::PendingTable;
pub(crate) use pending::{PendingNode, PENDING_TTL};
use pi_model::PiModel;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often, at most, the inventory says it refuses unknown MACs because
/// `[defaults] max_nodes` is reached (a flood would otherwise fill the log).
const FULL_WARNING_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Node {
    pub(crate) name: String,
    #[serde(serialize_with = "ser_mac")]
    pub(crate) mac: MacAddr,
    /// The 8 hex digits a Raspberry Pi prefixes its TFTP paths with.
    pub(crate) serial: Option<String>,
    pub(crate) kind: NodeKind,
    /// The reference the node boots (pinned to a digest during and after
    /// a swap, see the fleet module): what image views are opened from.
    pub(crate) image: String,
    /// The group it swaps with (`[[groups]]`).
    pub(crate) group: Option<String>,
    /// What its next mount of another image does with its upper (set for
    /// the time of a swap).
    pub(crate) on_new_image: OnNewImage,
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
    /// The platform set in the configuration (see [`platform::choose`]).
    #[serde(serialize_with = "ser_platform")]
    pub(crate) platform: Option<Platform>,
}

fn ser_platform<S: serde::Serializer>(p: &Option<Platform>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_some(&p.to_string()),
        None => s.serialize_none(),
    }
}

fn ser_mac<S: serde::Serializer>(m: &MacAddr, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&m.to_string())
}

/// What a mount on a new image does with the upper of the old one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnNewImage {
    /// Discard it (a tag moved outside a swap; ephemeral roots).
    #[default]
    Wipe,
    /// Keep it in `previous/` until the swap succeeds.
    SetAside,
    /// Go on with it over the new image (`keep_upper = true`).
    Carry,
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
    /// The client architecture (DHCP option 93) each MAC last sent.
    arch_by_mac: HashMap<MacAddr, u16>,
    /// The Raspberry Pi family each MAC's bootloader last said it is of.
    pi_by_mac: HashMap<MacAddr, PiModel>,
    boots: HashMap<String, u64>,
    /// The last lease this server's DHCP bound for each MAC.
    leases: HashMap<MacAddr, Lease>,
    /// Why a node cannot be served (its image reference does not resolve).
    failed: HashMap<String, String>,
}

/// A lease this server's DHCP bound (full mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Lease {
    pub(crate) address: Ipv4Addr,
    pub(crate) at_unix_ms: u64,
    pub(crate) expires_unix_ms: u64,
}

/// What the inventory has for a MAC (see [`Inventory::lookup`]).
#[derive(Clone, Debug)]
pub(crate) enum Found {
    /// A configured node, or one made from `[defaults]` and accepted.
    Node(Arc<Node>),
    /// Made from `[defaults]`, not accepted (yet): nobody else sees it.
    Pending(PendingNode),
}

impl Found {
    pub(crate) fn node(&self) -> &Arc<Node> {
        match self {
            Found::Node(n) => n,
            Found::Pending(p) => &p.node,
        }
    }
}

/// A pending node that is now a node of the inventory.
#[derive(Clone, Debug)]
pub(crate) struct Accepted {
    pub(crate) node: Arc<Node>,
    /// Boot firmware sent one of its packets while it was pending.
    pub(crate) boot_firmware: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AcceptError {
    #[error("not accepting {mac} as a node: {max} nodes were made from [defaults] already (defaults.max_nodes)")]
    Full { mac: MacAddr, max: usize },
}

pub(crate) struct Inventory {
    nodes: RwLock<Vec<Arc<Node>>>,
    /// Counts changes of `nodes` (added or replaced), for the maps built
    /// from it to notice.
    version: std::sync::atomic::AtomicU64,
    defaults: Option<DefaultsConfig>,
    /// `[defaults] platform` (see [`platform::choose`]).
    default_platform: Option<Platform>,
    learned: RwLock<Learned>,
    /// Nodes made from `[defaults]` that have not been accepted.
    pending: Mutex<PendingTable>,
    /// When the last "max_nodes reached" warning was logged.
    full_warned: Mutex<Option<Instant>>,
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
                    group: n.group.as_ref().map(|g| g.get_ref().clone()),
                    on_new_image: OnNewImage::Wipe,
                    ip: n.ip,
                    root: n.root,
                    boot_dir: n.boot_dir().to_string(),
                    kernel_args: n.kernel_args.clone(),
                    kernel: n.kernel.clone(),
                    initrd: n.initrd.clone(),
                    root_args: n.root_args.clone(),
                    configured: true,
                    platform: n.platform.as_ref().and_then(|p| p.get_ref().parse().ok()),
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
        let max_pending = cfg.defaults.as_ref().map_or(0, |d| d.max_pending);
        Inventory {
            nodes: RwLock::new(nodes),
            version: std::sync::atomic::AtomicU64::new(0),
            defaults: cfg.defaults.clone(),
            default_platform: cfg
                .defaults
                .as_ref()
                .and_then(|d| d.platform.as_ref())
                .and_then(|p| p.parse().ok()),
            learned: RwLock::new(learned),
            pending: Mutex::new(PendingTable::new(max_pending, PENDING_TTL)),
            full_warned: Mutex::new(None),
        }
    }

    pub(crate) fn all(&self) -> Vec<Arc<Node>> {
        self.nodes.read().clone()
    }

    /// Changes when a node is added or replaced.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Put `node` in place of the node of the same name (what it boots or
    /// its group changed at run time); requests from now on see it.
    /// Returns false if there is no such node.
    pub(crate) fn replace(&self, node: Node) -> bool {
        let mut nodes = self.nodes.write();
        let Some(slot) = nodes.iter_mut().find(|n| n.name == node.name) else {
            return false;
        };
        *slot = Arc::new(node);
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        true
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

    /// Whether `mac` is a node of the inventory (configured or accepted).
    pub(crate) fn is_node(&self, mac: MacAddr) -> bool {
        self.nodes.read().iter().any(|n| n.mac == mac)
    }

    /// What to make of a DHCP packet from `mac` at `now`: its node, or a
    /// pending one made from `[defaults]` (if they allow it) using `hint`
    /// for its kind; `boot_firmware` says the packet came from boot
    /// firmware. `None`: ignore this MAC.
    pub(crate) fn lookup(
        &self,
        mac: MacAddr,
        hint: KindHint,
        boot_firmware: bool,
        now: Instant,
    ) -> Option<Found> {
        if let Some(n) = self.nodes.read().iter().find(|n| n.mac == mac) {
            return Some(Found::Node(n.clone()));
        }
        let d = self.defaults.as_ref()?;
        if d.unknown_nodes != UnknownNodes::Defaults {
            return None;
        }
        if let Some(p) = self.pending.lock().touch(mac, boot_firmware, now) {
            return Some(Found::Pending(p));
        }
        if self.accepted_count() >= d.max_nodes {
            self.warn_full(mac, d.max_nodes, now);
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
            group: None,
            on_new_image: OnNewImage::Wipe,
            ip: None,
            root: d.root,
            boot_dir: kind.default_boot_dir().to_string(),
            kernel_args: d.kernel_args.clone(),
            kernel: None,
            initrd: None,
            root_args: None,
            configured: false,
            platform: None,
        });
        self.pending.lock().insert(node.clone(), boot_firmware, now);
        Some(Found::Pending(PendingNode {
            node,
            boot_firmware,
        }))
    }

    /// Make the pending node `p` a node of the inventory (the DHCP server
    /// binds an address to it), unless `[defaults] max_nodes` nodes were
    /// accepted already. Accepting a MAC that is a node already gives that
    /// node.
    pub(crate) fn accept(&self, p: &PendingNode, now: Instant) -> Result<Accepted, AcceptError> {
        let mac = p.node.mac;
        let max = self.defaults.as_ref().map_or(0, |d| d.max_nodes);
        let mut nodes = self.nodes.write();
        if let Some(n) = nodes.iter().find(|n| n.mac == mac) {
            return Ok(Accepted {
                node: n.clone(),
                boot_firmware: p.boot_firmware,
            });
        }
        if nodes.iter().filter(|n| !n.configured).count() >= max {
            drop(nodes);
            self.warn_full(mac, max, now);
            return Err(AcceptError::Full { mac, max });
        }
        nodes.push(p.node.clone());
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let boot_firmware = self.pending.lock().remove(mac) || p.boot_firmware;
        Ok(Accepted {
            node: p.node.clone(),
            boot_firmware,
        })
    }

    /// [`lookup`](Self::lookup) and, for a pending node, [`accept`](Self::accept):
    /// for tests of the servers that come after DHCP.
    #[cfg(test)]
    pub(crate) fn by_mac(&self, mac: MacAddr, hint: KindHint) -> Option<Arc<Node>> {
        let now = Instant::now();
        match self.lookup(mac, hint, false, now)? {
            Found::Node(n) => Some(n),
            Found::Pending(p) => self.accept(&p, now).ok().map(|a| a.node),
        }
    }

    /// Nodes made from `[defaults]` and accepted.
    fn accepted_count(&self) -> usize {
        self.nodes.read().iter().filter(|n| !n.configured).count()
    }

    fn warn_full(&self, mac: MacAddr, max: usize, now: Instant) {
        let mut last = self.full_warned.lock();
        if last.is_none_or(|t| now.saturating_duration_since(t) >= FULL_WARNING_EVERY) {
            *last = Some(now);
            tracing::warn!(
                "{max} nodes were made from [defaults] (defaults.max_nodes): \
                 unknown MACs such as {mac} get no answer (logged at most once a minute)"
            );
        }
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

    /// This server's DHCP bound `ip` to `mac` for `secs` seconds, now.
    pub(crate) fn note_lease(&self, mac: MacAddr, ip: Ipv4Addr, secs: u64) {
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let lease = Lease {
            address: ip,
            at_unix_ms,
            expires_unix_ms: at_unix_ms.saturating_add(secs.saturating_mul(1000)),
        };
        self.learned.write().leases.insert(mac, lease);
    }

    /// The last lease bound to `mac` by this server process.
    pub(crate) fn lease_of(&self, mac: MacAddr) -> Option<Lease> {
        self.learned.read().leases.get(&mac).copied()
    }

    /// `mac`'s boot firmware said it is of client architecture `arch`.
    pub(crate) fn learn_arch(&self, mac: MacAddr, arch: u16) {
        if self.learned.read().arch_by_mac.get(&mac) != Some(&arch) {
            self.learned.write().arch_by_mac.insert(mac, arch);
        }
    }

    /// What `mac`'s boot firmware said of itself: its client architecture,
    /// the Raspberry Pi family of its bootloader.
    pub(crate) fn learn_firmware(&self, mac: MacAddr, arch: Option<u16>, pi: Option<PiModel>) {
        if let Some(arch) = arch {
            self.learn_arch(mac, arch);
        }
        if let Some(model) = pi {
            self.learn_pi_model(mac, model);
        }
    }

    /// `mac`'s boot firmware said it is a Raspberry Pi of family `model`
    /// (see [`pi_model`]). Said once in the log when it is news.
    fn learn_pi_model(&self, mac: MacAddr, model: PiModel) {
        if self.learned.read().pi_by_mac.get(&mac) != Some(&model) {
            tracing::info!("{mac}: the bootloader of a {}", model.describe());
            self.learned.write().pi_by_mac.insert(mac, model);
        }
    }

    /// The Raspberry Pi family `node`'s bootloader said it is of, if any.
    pub(crate) fn pi_model_of(&self, node: &Node) -> Option<PiModel> {
        self.learned.read().pi_by_mac.get(&node.mac).copied()
    }

    /// The platform `node` boots, and why (see [`platform::choose`]).
    pub(crate) fn platform_of(&self, node: &Node) -> (Platform, platform::PlatformSource) {
        let arch = self.learned.read().arch_by_mac.get(&node.mac).copied();
        platform::choose(node, arch, self.default_platform.as_ref())
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

    fn defaults_cfg(extra: &str) -> Config {
        cfg(&format!(
            "[defaults]\nunknown_nodes = \"defaults\"\nimage = \"img:default\"\nkind = \"ipxe\"\n{extra}"
        ))
    }

    fn unknown(n: u16) -> MacAddr {
        let [a, b] = n.to_be_bytes();
        MacAddr([0x02, 0, 0, 0, a, b])
    }

    fn pending(f: Option<Found>) -> PendingNode {
        match f {
            Some(Found::Pending(p)) => p,
            other => panic!("not pending: {other:?}"),
        }
    }

    #[test]
    fn pending_nodes_are_invisible_until_accepted_once() {
        let inv = Inventory::from_config(&defaults_cfg(""));
        let t0 = Instant::now();
        let mac = unknown(1);
        let p = pending(inv.lookup(mac, KindHint(None), true, t0));
        assert_eq!(p.node.name, "node-020000000001");
        let ip = Ipv4Addr::new(10, 9, 0, 77);
        inv.learn_ip(mac, ip);
        assert_eq!(inv.all().len(), 1, "only the configured node");
        assert!(inv.by_name("node-020000000001").is_none());
        assert!(inv.by_ip(ip).is_none());
        assert!(!inv.is_node(mac));
        // Asked again, it is the same pending node.
        let again = pending(inv.lookup(mac, KindHint(None), false, t0));
        assert!(Arc::ptr_eq(&again.node, &p.node));
        assert!(again.boot_firmware, "boot firmware spoke for it before");

        let a = inv.accept(&again, t0).unwrap();
        assert!(a.boot_firmware);
        assert_eq!(inv.all().len(), 2);
        assert_eq!(inv.by_name("node-020000000001").unwrap().mac, mac);
        assert_eq!(inv.by_ip(ip).unwrap().name, "node-020000000001");
        assert_eq!(inv.pending.lock().len(), 0, "no longer pending");
        match inv.lookup(mac, KindHint(None), false, t0) {
            Some(Found::Node(n)) => assert!(Arc::ptr_eq(&n, &a.node)),
            other => panic!("{other:?}"),
        }
        // Accepting it twice adds nothing.
        inv.accept(&p, t0).unwrap();
        assert_eq!(inv.all().len(), 2);
    }

    #[test]
    fn pending_nodes_are_bounded_oldest_first() {
        let inv = Inventory::from_config(&defaults_cfg("max_pending = 3\n"));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        for (i, mac) in (1..=3).map(unknown).enumerate() {
            pending(inv.lookup(mac, KindHint(None), false, at(i as u64)));
        }
        // Heard from again: no longer the oldest.
        pending(inv.lookup(unknown(1), KindHint(None), false, at(3)));
        pending(inv.lookup(unknown(4), KindHint(None), false, at(4)));
        let mut table = inv.pending.lock();
        assert_eq!(table.len(), 3);
        assert!(table.touch(unknown(2), false, at(5)).is_none(), "evicted");
        for n in [1, 3, 4] {
            assert!(table.touch(unknown(n), false, at(5)).is_some(), "{n}");
        }
        drop(table);
        // A flood leaves the table at its size.
        for n in 100..2100 {
            pending(inv.lookup(unknown(n), KindHint(None), false, at(6)));
        }
        assert_eq!(inv.pending.lock().len(), 3);
        assert_eq!(inv.all().len(), 1);
    }

    #[test]
    fn pending_nodes_expire() {
        let inv = Inventory::from_config(&defaults_cfg(""));
        let t0 = Instant::now();
        let mac = unknown(7);
        let first = pending(inv.lookup(mac, KindHint(Some(NodeKind::Uboot)), false, t0));
        let almost = t0 + PENDING_TTL - Duration::from_secs(1);
        let kept = pending(inv.lookup(mac, KindHint(None), false, almost));
        assert!(Arc::ptr_eq(&first.node, &kept.node));
        assert_eq!(kept.node.kind, NodeKind::Uboot);
        // Forgotten a TTL after it was last heard from: a new node is made.
        let later = almost + PENDING_TTL;
        assert!(inv.pending.lock().touch(mac, false, later).is_none());
        let fresh = pending(inv.lookup(mac, KindHint(None), false, later));
        assert!(!Arc::ptr_eq(&first.node, &fresh.node));
        assert_eq!(fresh.node.kind, NodeKind::Ipxe, "[defaults] kind");
        // Expired entries do not count against the size either.
        let inv = Inventory::from_config(&defaults_cfg("max_pending = 2\n"));
        pending(inv.lookup(unknown(1), KindHint(None), false, t0));
        pending(inv.lookup(unknown(2), KindHint(None), false, t0 + PENDING_TTL));
        assert_eq!(inv.pending.lock().len(), 1);
    }

    #[test]
    fn accepted_unknown_nodes_are_capped() {
        let inv = Inventory::from_config(&defaults_cfg("max_nodes = 2\n"));
        let t0 = Instant::now();
        let late = pending(inv.lookup(unknown(9), KindHint(None), false, t0));
        for n in 1..=2 {
            let p = pending(inv.lookup(unknown(n), KindHint(None), false, t0));
            inv.accept(&p, t0).unwrap();
        }
        assert!(matches!(
            inv.accept(&late, t0),
            Err(AcceptError::Full { max: 2, .. })
        ));
        // New unknown MACs are not even remembered now; known ones still work.
        assert!(inv.lookup(unknown(10), KindHint(None), false, t0).is_none());
        assert!(matches!(
            inv.lookup(unknown(1), KindHint(None), false, t0),
            Some(Found::Node(_))
        ));
        let pi = MacAddr::parse("dc:a6:32:01:02:03").unwrap();
        assert_eq!(inv.by_mac(pi, KindHint(None)).unwrap().name, "pi1");
        // Three nodes: the configured one and two accepted.
        assert_eq!(inv.all().len(), 3);
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
