//! `lazyboot serve` configuration (TOML). Every error names the key and the
//! line: syntax and type errors come from the TOML parser with their span;
//! checks across keys (duplicate names, pool outside the subnet) use spans
//! kept on the values they talk about. `[[dhcp.subnets]]` (relayed
//! networks) and their checks are in `subnets`.

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use toml::Spanned;

mod fleet;
mod subnets;
pub(crate) use fleet::{check_name, GroupConfig, SwapPolicy};
pub(crate) use subnets::{link_network, SubnetConfig};

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The TOML parser's message.
        message: String,
    },
    /// A key has a value that cannot work.
    #[error("{path}, line {line}: `{key}`: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// Line of the key (1-based; 0 if unknown).
        line: usize,
        /// The key, with its table (`server.nfs_port`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A MAC address, written `aa:bb:cc:dd:ee:ff` (or with `-`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub(crate) fn parse(s: &str) -> Option<MacAddr> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return None;
        }
        let mut m = [0u8; 6];
        for (b, p) in m.iter_mut().zip(parts) {
            if p.len() != 2 {
                return None;
            }
            *b = u8::from_str_radix(p, 16).ok()?;
        }
        Some(MacAddr(m))
    }

    /// `01-aa-bb-cc-dd-ee-ff`, the name pxelinux looks for.
    pub(crate) fn pxelinux_name(&self) -> String {
        let hex: Vec<String> = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("01-{}", hex.join("-"))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MacAddr::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("{s:?} is not a MAC address like dc:a6:32:01:02:03"))
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum NodeKind {
    Raspberrypi,
    Uboot,
    Ipxe,
}

impl NodeKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NodeKind::Raspberrypi => "raspberrypi",
            NodeKind::Uboot => "uboot",
            NodeKind::Ipxe => "ipxe",
        }
    }

    /// Where boot files live inside the image unless the node says otherwise.
    pub(crate) fn default_boot_dir(self) -> &'static str {
        match self {
            NodeKind::Raspberrypi => "/boot/firmware",
            NodeKind::Uboot | NodeKind::Ipxe => "/boot",
        }
    }

    /// The platform to pick from a multi-platform image for this kind.
    pub(crate) fn default_platform(self) -> &'static str {
        match self {
            NodeKind::Raspberrypi => "linux/arm64",
            NodeKind::Uboot => "linux/riscv64",
            NodeKind::Ipxe => "linux/amd64",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RootMode {
    /// Writes go to a copy-on-write upper kept across boots.
    Persistent,
    /// Writes go to an upper discarded at every boot.
    Ephemeral,
    /// Every write fails with NFS3ERR_ROFS.
    Readonly,
}

/// `[server] boot_over`: how iPXE loads kernel and initrd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BootOver {
    /// `tftp://SERVER/...` (port 69, what every boot ROM can do).
    #[default]
    Tftp,
    /// `http://SERVER:HTTP_PORT/boot/NODE/...`: TCP, so no lock-step
    /// blocks and no per-block round trip; many times faster for a large
    /// initrd on a lossy or long link.
    Http,
}

/// Node `node`'s directory of the HTTP boot route, `http://SERVER:PORT/boot/NODE`:
/// how DHCP replies, the generated iPXE script and the route's own records
/// all name a node's boot files over HTTP.
pub(crate) fn http_boot_dir(server: Ipv4Addr, http_port: u16, node: &str) -> String {
    format!("http://{server}:{http_port}/boot/{node}")
}

/// `[server] portmapper`: `true`, `false` or `"register"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum PortmapperMode {
    /// Answer the portmapper protocol on port 111 ourselves.
    #[default]
    Own,
    Off,
    /// Register our programs with the host's rpcbind (on 127.0.0.1:111).
    Register,
}

impl<'de> Deserialize<'de> for PortmapperMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(PortmapperMode::Own),
            Raw::Bool(false) => Ok(PortmapperMode::Off),
            Raw::Text(t) if t == "register" => Ok(PortmapperMode::Register),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "portmapper is true, false or \"register\", not {t:?}"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DhcpMode {
    Full,
    Proxy,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum UnknownNodes {
    /// Requests from MACs not in `[[nodes]]` get no answer.
    Ignore,
    /// Unknown MACs boot with `[defaults]`.
    Defaults,
}

/// Where Debian's `grub-efi-arm64-bin` puts its monolithic network image
/// (its prefix is `/grub`: it reads `grub/grub.cfg` from the TFTP server).
pub(crate) const DEFAULT_GRUB_ARM64_EFI: &str =
    "/usr/lib/grub/arm64-efi/monolithic/grubnetaa64.efi";
/// The name GRUB's network EFI image for ARM64 UEFI clients is offered
/// (DHCP) and served (TFTP, HTTP boot) under.
pub(crate) const GRUB_ARM64_EFI: &str = "grubnetaa64.efi";
/// The Debian package that ships [`DEFAULT_GRUB_ARM64_EFI`].
pub(crate) const GRUB_ARM64_EFI_PACKAGE: &str = "grub-efi-arm64-bin";

impl ServerConfig {
    /// The GRUB image for ARM64 UEFI clients, configured or Debian's.
    pub(crate) fn grub_arm64_efi(&self) -> &Path {
        self.grub_arm64_efi
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_GRUB_ARM64_EFI))
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/lazyboot")
}
fn default_cache_dir() -> PathBuf {
    PathBuf::from("/var/cache/lazyboot")
}
fn default_cache_size() -> String {
    "20G".into()
}
fn default_nfs_port() -> u16 {
    2049
}
fn default_tftp_port() -> u16 {
    69
}
fn default_http_port() -> u16 {
    8080
}
fn default_tftp_max_sessions() -> usize {
    256
}
fn default_tftp_max_sessions_per_client() -> usize {
    8
}
/// Each TFTP transfer holds a socket: more than this would run out of
/// file descriptors long before it helped anyone.
const TFTP_SESSIONS_LIMIT: usize = 65536;
fn default_lease_secs() -> u64 {
    3600
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerConfig {
    /// Interface to serve DHCP on (SO_BINDTODEVICE).
    pub(crate) interface: String,
    /// Our address on that interface: TFTP server, NFS server, next-server.
    pub(crate) address: Ipv4Addr,
    #[serde(default = "default_state_dir")]
    pub(crate) state_dir: PathBuf,
    #[serde(default = "default_cache_dir")]
    pub(crate) cache_dir: PathBuf,
    #[serde(default = "default_cache_size")]
    pub(crate) cache_size: String,
    #[serde(default = "default_nfs_port")]
    pub(crate) nfs_port: u16,
    #[serde(default = "default_tftp_port")]
    pub(crate) tftp_port: u16,
    #[serde(default = "default_http_port")]
    pub(crate) http_port: u16,
    /// What the generated `boot.ipxe` loads kernel and initrd over. The
    /// files are served over HTTP (`/boot/NODE/PATH` on `http_port`)
    /// either way.
    #[serde(default)]
    pub(crate) boot_over: BootOver,
    /// The GRUB network EFI image offered to ARM64 UEFI PXE clients (no
    /// iPXE build exists for them in Debian), served as
    /// `grubnetaa64.efi`. `None`: [`DEFAULT_GRUB_ARM64_EFI`].
    #[serde(default)]
    pub(crate) grub_arm64_efi: Option<PathBuf>,
    /// TFTP transfers at once; a request beyond is answered "server busy".
    #[serde(default = "default_tftp_max_sessions")]
    pub(crate) tftp_max_sessions: usize,
    /// TFTP transfers at once from one client address.
    #[serde(default = "default_tftp_max_sessions_per_client")]
    pub(crate) tftp_max_sessions_per_client: usize,
    #[serde(default)]
    pub(crate) insecure_registries: Vec<String>,
    /// Fetch every image completely in the background once it is open, so
    /// that nodes stop depending on the registry (it yields to node reads).
    #[serde(default = "default_true")]
    pub(crate) background_fill: bool,
    /// How clients find our MOUNT and NFS programs (initramfs-tools'
    /// `nfsmount` asks a portmapper): answer on port 111 ourselves
    /// (`true`), not at all (`false`), or register them with the rpcbind
    /// already running on this host (`"register"`).
    #[serde(default)]
    pub(crate) portmapper: PortmapperMode,
    /// After the first complete streaming pass of a layer, push its index
    /// as the referrer artifact `lazyboot index --push` writes (needs push
    /// rights), so other servers start lazily too.
    #[serde(default)]
    pub(crate) publish_indexes: bool,
    /// Serve boot files only once every layer is checked against its
    /// digest. By default, while a first streaming pass runs, files it has
    /// passed (kernel, initrd) are served before the layer digest can be
    /// checked, so nodes boot while the image downloads.
    #[serde(default)]
    pub(crate) verified_only: bool,
    /// The bearer token every API call that changes state must carry
    /// (and that opens the read-only calls to any address). Default: the
    /// token in `state_dir/api.token`, made (mode 0600) on first start.
    #[serde(default)]
    pub(crate) api_token: Option<Spanned<String>>,
    /// Addresses (CIDR or single address) that may use the read-only API
    /// calls without the token. Default: loopback and the served network
    /// (`address` with `dhcp.prefix_len`).
    #[serde(default)]
    pub(crate) api_readers: Option<Vec<Spanned<String>>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DhcpConfig {
    pub(crate) mode: DhcpMode,
    pub(crate) pool_start: Option<Spanned<Ipv4Addr>>,
    pub(crate) pool_end: Option<Spanned<Ipv4Addr>>,
    /// Prefix length of the served subnet (e.g. 24).
    #[serde(default)]
    pub(crate) prefix_len: Option<u8>,
    #[serde(default = "default_lease_secs")]
    pub(crate) lease_secs: u64,
    #[serde(default)]
    pub(crate) router: Option<Ipv4Addr>,
    #[serde(default)]
    pub(crate) dns: Vec<Ipv4Addr>,
    #[serde(default)]
    pub(crate) domain: Option<String>,
    /// `[[dhcp.subnets]]`: networks served through relay agents.
    #[serde(default)]
    pub(crate) subnets: Vec<SubnetConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeConfig {
    pub(crate) name: Spanned<String>,
    pub(crate) mac: Spanned<MacAddr>,
    /// Raspberry Pi serial number (the low 8 hex digits are what it asks for).
    #[serde(default)]
    pub(crate) serial: Option<Spanned<String>>,
    pub(crate) kind: NodeKind,
    pub(crate) image: String,
    /// A fixed address: the lease it always gets in full mode, and how TFTP
    /// and NFS recognise it when another DHCP server hands out addresses.
    #[serde(default)]
    pub(crate) ip: Option<Ipv4Addr>,
    #[serde(default = "default_root")]
    pub(crate) root: RootMode,
    #[serde(default)]
    pub(crate) boot_dir: Option<String>,
    #[serde(default)]
    pub(crate) kernel_args: String,
    /// The kernel to boot, a path inside the image (absolute, or relative
    /// to the boot dir); found by discovery when not given.
    #[serde(default)]
    pub(crate) kernel: Option<String>,
    /// The initrd to boot with it, likewise.
    #[serde(default)]
    pub(crate) initrd: Option<String>,
    /// Root arguments replacing the generated ones (placeholders `{server}`,
    /// `{export}`, `{port}`).
    #[serde(default)]
    pub(crate) root_args: Option<String>,
    /// The platform to boot from a multi-platform image (`linux/arm64`),
    /// over what the node's DHCP request says and the kind's default.
    #[serde(default)]
    pub(crate) platform: Option<Spanned<String>>,
    /// The `[[groups]]` the node swaps with.
    #[serde(default)]
    pub(crate) group: Option<Spanned<String>>,
    /// Follow the image's tag (over the group's `follow`).
    #[serde(default)]
    pub(crate) follow: Option<bool>,
    /// The node's reboot command (over the group's `reboot`).
    #[serde(default)]
    pub(crate) reboot: Option<Spanned<Vec<String>>>,
}

fn default_root() -> RootMode {
    RootMode::Persistent
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DefaultsConfig {
    pub(crate) unknown_nodes: UnknownNodes,
    #[serde(default)]
    pub(crate) image: Option<String>,
    /// The platform of nodes that neither set one nor send their client
    /// architecture in DHCP (before each kind's default).
    #[serde(default)]
    pub(crate) platform: Option<String>,
    /// Kind to assume when the request does not tell.
    #[serde(default)]
    pub(crate) kind: Option<NodeKind>,
    #[serde(default = "default_ephemeral")]
    pub(crate) root: RootMode,
    #[serde(default)]
    pub(crate) kernel_args: String,
    /// Unknown MACs remembered at once while they have not been given an
    /// address (the oldest is forgotten first).
    #[serde(default = "default_max_pending")]
    pub(crate) max_pending: usize,
    /// Unknown MACs accepted as nodes; past it, new ones get no answer.
    #[serde(default = "default_max_nodes")]
    pub(crate) max_nodes: usize,
}

fn default_max_pending() -> usize {
    256
}

fn default_max_nodes() -> usize {
    1024
}

fn default_ephemeral() -> RootMode {
    RootMode::Ephemeral
}

fn default_quiet_secs() -> u64 {
    10
}

fn default_true() -> bool {
    true
}

fn default_prefetch_parallel() -> usize {
    4
}

/// Boot profiles and learned prefetch (`[profile]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfileConfig {
    /// A path in the image whose NFS read by a node means it has booted.
    #[serde(default)]
    pub(crate) booted_marker: Option<String>,
    /// Seconds of NFS silence after the mount that mean a node has booted
    /// (0: never decide by silence).
    #[serde(default = "default_quiet_secs")]
    pub(crate) quiet_secs: u64,
    /// Replay an image's learned prefetch plan when a node starts booting it.
    #[serde(default = "default_true")]
    pub(crate) prefetch: bool,
    /// Range requests a prefetch keeps in flight.
    #[serde(default = "default_prefetch_parallel")]
    pub(crate) prefetch_parallel: usize,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        ProfileConfig {
            booted_marker: None,
            quiet_secs: default_quiet_secs(),
            prefetch: true,
            prefetch_parallel: default_prefetch_parallel(),
        }
    }
}

/// The `serve` configuration: `[server]`, `[dhcp]`, `[defaults]`, `[[nodes]]` (see README's config reference).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub(crate) server: ServerConfig,
    pub(crate) dhcp: DhcpConfig,
    #[serde(default)]
    pub(crate) profile: ProfileConfig,
    #[serde(default)]
    pub(crate) defaults: Option<DefaultsConfig>,
    #[serde(default)]
    pub(crate) nodes: Vec<NodeConfig>,
    #[serde(default)]
    pub(crate) groups: Vec<GroupConfig>,
}

impl NodeConfig {
    pub(crate) fn boot_dir(&self) -> &str {
        self.boot_dir
            .as_deref()
            .unwrap_or_else(|| self.kind.default_boot_dir())
    }

    /// The 8 hex digits a Pi puts in front of its TFTP paths.
    pub(crate) fn serial_prefix(&self) -> Option<String> {
        self.serial.as_ref().map(|s| {
            let s = s.get_ref().to_ascii_lowercase();
            s[s.len().saturating_sub(8)..].to_string()
        })
    }
}

impl DhcpConfig {
    /// How long a lease lasts.
    #[cfg(test)]
    pub(crate) fn lease_time(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lease_secs)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Config {
    /// The `[[nodes]]` table named `name`.
    pub(crate) fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name.get_ref() == name)
    }

    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parse and check the text of a configuration file (`path` names it in errors).
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        cfg.validate(text, path)?;
        Ok(cfg)
    }

    fn validate(&self, text: &str, path: &str) -> Result<(), ConfigError> {
        let invalid =
            |span: std::ops::Range<usize>, key: &str, message: String| ConfigError::Invalid {
                path: path.to_string(),
                line: line_of(text, span.start),
                key: key.to_string(),
                message,
            };
        if let Some(t) = &self.server.api_token {
            if let Err(why) = check_token_text(t.get_ref()) {
                return Err(invalid(t.span(), "server.api_token", why));
            }
        }
        for r in self.server.api_readers.iter().flatten() {
            if let Err(why) = parse_net(r.get_ref()) {
                return Err(invalid(r.span(), "server.api_readers", why));
            }
        }
        let mut names = std::collections::HashMap::new();
        let mut macs = std::collections::HashMap::new();
        let mut serials = std::collections::HashMap::new();
        for n in &self.nodes {
            let name = n.name.get_ref();
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                && !name.starts_with('.');
            if !ok {
                return Err(invalid(
                    n.name.span(),
                    "nodes.name",
                    format!("{name:?}: use letters, digits, '-', '_' and '.' (it becomes a path)"),
                ));
            }
            if let Some(prev) = names.insert(name.clone(), n.name.span()) {
                return Err(invalid(
                    n.name.span(),
                    "nodes.name",
                    format!(
                        "{name:?} is already used on line {}",
                        line_of(text, prev.start)
                    ),
                ));
            }
            if let Some(prev) = macs.insert(*n.mac.get_ref(), n.mac.span()) {
                return Err(invalid(
                    n.mac.span(),
                    "nodes.mac",
                    format!(
                        "{} is already used on line {}",
                        n.mac.get_ref(),
                        line_of(text, prev.start)
                    ),
                ));
            }
            if let Some(serial) = &n.serial {
                let s = serial.get_ref();
                if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(
                        serial.span(),
                        "nodes.serial",
                        format!("{s:?} is not a hex serial number like 8b07bcc6"),
                    ));
                }
                let prefix = n.serial_prefix().unwrap_or_default();
                if let Some(prev) = serials.insert(prefix, serial.span()) {
                    return Err(invalid(
                        serial.span(),
                        "nodes.serial",
                        format!(
                            "{s:?} is already used on line {}",
                            line_of(text, prev.start)
                        ),
                    ));
                }
            }
            if let Some(dir) = &n.boot_dir {
                if !dir.starts_with('/') || dir.split('/').any(|c| c == "..") {
                    return Err(invalid(
                        n.name.span(),
                        "nodes.boot_dir",
                        format!("{dir:?} must be an absolute path inside the image"),
                    ));
                }
            }
        }
        if self.dhcp.mode == DhcpMode::Full {
            let (Some(start), Some(end)) = (&self.dhcp.pool_start, &self.dhcp.pool_end) else {
                return Err(ConfigError::Invalid {
                    path: path.to_string(),
                    line: text.find("[dhcp]").map_or(1, |o| line_of(text, o)),
                    key: "dhcp.pool_start".into(),
                    message: "mode = \"full\" needs pool_start and pool_end".into(),
                });
            };
            if u32::from(*start.get_ref()) > u32::from(*end.get_ref()) {
                return Err(invalid(
                    end.span(),
                    "dhcp.pool_end",
                    format!(
                        "{} comes before pool_start {}",
                        end.get_ref(),
                        start.get_ref()
                    ),
                ));
            }
            let prefix = self.dhcp.prefix_len.unwrap_or(24);
            if prefix > 30 {
                return Err(invalid(
                    start.span(),
                    "dhcp.prefix_len",
                    format!("/{prefix} leaves no room for a pool"),
                ));
            }
            let mask = u32::MAX << (32 - prefix as u32);
            let net = u32::from(self.server.address) & mask;
            for (ip, key) in [(start, "dhcp.pool_start"), (end, "dhcp.pool_end")] {
                if u32::from(*ip.get_ref()) & mask != net {
                    return Err(invalid(
                        ip.span(),
                        key,
                        format!(
                            "{} is outside the server's subnet {}/{prefix}",
                            ip.get_ref(),
                            Ipv4Addr::from(net)
                        ),
                    ));
                }
            }
        }
        subnets::validate(self, text, &invalid)?;
        fleet::validate(self, &invalid)?;
        for n in &self.nodes {
            if let Some(p) = &n.platform {
                if let Err(e) = p.get_ref().parse::<crate::platform::Platform>() {
                    return Err(invalid(p.span(), "nodes.platform", e.to_string()));
                }
            }
        }
        for (key, value) in [
            ("tftp_max_sessions", self.server.tftp_max_sessions),
            (
                "tftp_max_sessions_per_client",
                self.server.tftp_max_sessions_per_client,
            ),
        ] {
            if !(1..=TFTP_SESSIONS_LIMIT).contains(&value) {
                return Err(ConfigError::Invalid {
                    path: path.to_string(),
                    line: text
                        .find(&format!("{key} "))
                        .or_else(|| text.find(&format!("{key}=")))
                        .map_or(1, |o| line_of(text, o)),
                    key: format!("server.{key}"),
                    message: format!("{value} is not between 1 and {TFTP_SESSIONS_LIMIT}"),
                });
            }
        }
        if let Some(d) = &self.defaults {
            if let Some(p) = &d.platform {
                if let Err(e) = p.parse::<crate::platform::Platform>() {
                    return Err(ConfigError::Invalid {
                        path: path.to_string(),
                        line: text.find("[defaults]").map_or(1, |o| line_of(text, o)),
                        key: "defaults.platform".into(),
                        message: e.to_string(),
                    });
                }
            }
            if d.unknown_nodes == UnknownNodes::Defaults && d.image.is_none() {
                return Err(ConfigError::Invalid {
                    path: path.to_string(),
                    line: text.find("[defaults]").map_or(1, |o| line_of(text, o)),
                    key: "defaults.image".into(),
                    message: "unknown_nodes = \"defaults\" needs an image".into(),
                });
            }
        }
        Ok(())
    }
}

/// A token's text: long enough not to be guessed, and no characters an
/// HTTP header cannot carry.
pub(crate) fn check_token_text(t: &str) -> Result<(), String> {
    if t.len() < 16 {
        return Err(format!(
            "the token must be at least 16 characters long, this one has {}",
            t.len()
        ));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token may hold only visible ASCII characters (no spaces)".into());
    }
    Ok(())
}

/// `10.0.0.0/24`, or one address (`10.0.0.5`).
pub(crate) fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither an address nor a network (CIDR, e.g. 10.0.0.0/24)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
interface = "lb0"
address = "10.9.0.1"

[dhcp]
mode = "full"
pool_start = "10.9.0.100"
pool_end = "10.9.0.150"
dns = ["10.9.0.1"]

[[nodes]]
name = "pi1"
mac = "dc:a6:32:01:02:03"
serial = "100000008b07bcc6"
kind = "raspberrypi"
image = "127.0.0.1:5000/os/pi:1"

[[nodes]]
name = "mars1"
mac = "6c:cf:39:00:00:01"
kind = "uboot"
image = "127.0.0.1:5000/os/rv:1"
root = "ephemeral"
boot_dir = "/boot/efi"
"#;

    #[test]
    fn parses_a_good_config() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.nodes[0].boot_dir(), "/boot/firmware");
        assert_eq!(c.nodes[0].serial_prefix().as_deref(), Some("8b07bcc6"));
        assert_eq!(c.nodes[0].root, RootMode::Persistent);
        assert_eq!(c.nodes[1].boot_dir(), "/boot/efi");
        assert_eq!(c.server.nfs_port, 2049);
        assert_eq!(c.dhcp.lease_time(), std::time::Duration::from_secs(3600));
        assert_eq!(
            c.nodes[0].mac.get_ref().pxelinux_name(),
            "01-dc-a6-32-01-02-03"
        );
    }

    fn err(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn portmapper_modes() {
        let with = |v: &str| {
            let text = GOOD.replacen("[server]", &format!("[server]\nportmapper = {v}"), 1);
            Config::parse(&text, "t.toml").map(|c| c.server.portmapper)
        };
        assert_eq!(
            Config::parse(GOOD, "t.toml").unwrap().server.portmapper,
            PortmapperMode::Own
        );
        assert_eq!(with("true").unwrap(), PortmapperMode::Own);
        assert_eq!(with("false").unwrap(), PortmapperMode::Off);
        assert_eq!(with("\"register\"").unwrap(), PortmapperMode::Register);
        let e = with("\"rpcbind\"").unwrap_err().to_string();
        assert!(e.contains("register") && e.contains("rpcbind"), "{e}");
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e = err(&GOOD.replace("kind = \"uboot\"", "kind = \"uefi\""));
        assert!(e.contains("line 22") && e.contains("uefi"), "{e}");

        let e = err(&GOOD.replace("6c:cf:39:00:00:01", "6c:cf:39:00:00"));
        assert!(e.contains("line 21") && e.contains("MAC"), "{e}");

        let e = err(&GOOD.replace("name = \"mars1\"", "name = \"pi1\""));
        assert!(
            e.contains("line 20") && e.contains("nodes.name") && e.contains("line 13"),
            "{e}"
        );

        let e = err(&GOOD.replace("pool_end = \"10.9.0.150\"", "pool_end = \"10.9.1.150\""));
        assert!(
            e.contains("line 9") && e.contains("dhcp.pool_end") && e.contains("outside"),
            "{e}"
        );

        let e = err(&GOOD.replace("interface = \"lb0\"", "interface = \"lb0\"\nlisten = 1"));
        assert!(e.contains("listen"), "{e}");

        let e = err(&GOOD.replace("name = \"mars1\"", "name = \"../etc\""));
        assert!(e.contains("nodes.name"), "{e}");

        let e = err(&GOOD.replace("serial = \"100000008b07bcc6\"", "serial = \"zz\""));
        assert!(e.contains("nodes.serial") && e.contains("line 15"), "{e}");
    }

    #[test]
    fn tftp_session_limits() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.server.tftp_max_sessions, 256);
        assert_eq!(c.server.tftp_max_sessions_per_client, 8);
        let with = |extra: &str| GOOD.replacen("[server]", &format!("[server]\n{extra}"), 1);
        let c = Config::parse(
            &with("tftp_max_sessions = 4000\ntftp_max_sessions_per_client = 1"),
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            (
                c.server.tftp_max_sessions,
                c.server.tftp_max_sessions_per_client
            ),
            (4000, 1)
        );
        let e = err(&with("tftp_max_sessions = 0"));
        assert!(
            e.contains("server.tftp_max_sessions") && e.contains("line 3"),
            "{e}"
        );
        let e = err(&with("tftp_max_sessions_per_client = 100000"));
        assert!(e.contains("server.tftp_max_sessions_per_client"), "{e}");
        assert!(err(&with("tftp_max_sessions = -1")).contains("tftp_max_sessions"));
    }

    #[test]
    fn full_mode_needs_a_pool_and_proxy_does_not() {
        let no_pool = GOOD
            .replace("pool_start = \"10.9.0.100\"\n", "")
            .replace("pool_end = \"10.9.0.150\"\n", "");
        assert!(err(&no_pool).contains("pool_start"));
        let proxy = no_pool.replace("mode = \"full\"", "mode = \"proxy\"");
        assert!(Config::parse(&proxy, "t.toml").is_ok());
    }

    #[test]
    fn mac_forms() {
        assert_eq!(
            MacAddr::parse("DC-A6-32-01-02-03").unwrap().to_string(),
            "dc:a6:32:01:02:03"
        );
        assert!(MacAddr::parse("dc:a6:32:01:02").is_none());
        assert!(MacAddr::parse("dc:a6:32:01:02:0g").is_none());
    }
}
