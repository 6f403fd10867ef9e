//! Node roots over NFS end to end (integration/nfs_root.rs,
//! integration/nfs_root_changes.rs): a real `lazyboot serve` process, the
//! shared fixture image pushed to a local registry, the real node overlay,
//! and clients in a network namespace speaking from the nodes' fixed
//! addresses: libnfs' `nfs-cat`, `nfs-cp`, `nfs-ls`, our raw NFSv3 client
//! ([`super::nfsrpc`], whose sockets are made inside the namespace) and the
//! scripted DHCP client. [`snapshot_nfs`] walks a root over NFS into a
//! [`Snapshot`] to compare with `umoci unpack` or a local copy.
//!
//! libnfs picks its source address by route, so [`Lab::prefer_source`]
//! points the subnet route's preferred source at the node a tool plays.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Result};
use nfs3_server::nfs3_types::nfs3::{fattr3, ftype3, nfs_fh3};

use super::faults::FaultyRegistry;
use super::netns::NetLab;
use super::nfsrpc::Client;
use super::serve::{Serve, Server};
use super::snapshot::{escape, Entry, Kind, Snapshot};
use super::{sh, sha256_hex, Registry};

pub const TOOLS: &[&str] = &["ip", "python3", "nfs-ls", "nfs-cat", "nfs-cp"];
const REPO: &str = "nfsroot/fixture:1";
/// The DHCP option 60 of a PXE boot ROM: a DISCOVER with it starts a boot.
const PXE_CLASS: &str = "60=s:PXEClient:Arch:00000:UNDI:002001";

// The lab: registry, image, network namespace, config, state, server.

pub struct NodeSpec {
    pub name: &'static str,
    /// Last byte of the MAC and of the address (10.213.SUBNET.LAST).
    pub last: u8,
    pub root: &'static str,
    /// `platform` in the node's configuration.
    pub platform: Option<&'static str>,
}

impl NodeSpec {
    pub const fn new(name: &'static str, last: u8, root: &'static str) -> NodeSpec {
        NodeSpec {
            name,
            last,
            root,
            platform: None,
        }
    }

    pub const fn with_platform(self, platform: &'static str) -> NodeSpec {
        NodeSpec {
            platform: Some(platform),
            ..self
        }
    }
    pub fn mac(&self) -> String {
        format!("52:54:00:aa:00:{:02x}", self.last)
    }
}

pub struct Lab {
    pub server: Server,
    pub net: NetLab,
    pub tmp: tempfile::TempDir,
    /// The proxy the server reaches the registry through, with
    /// [`LabOptions::faults`].
    pub faults: Option<FaultyRegistry>,
    _registry: Registry,
    pub nfs_port: u16,
    pub tftp_port: u16,
}

/// How a [`Lab`] differs from the default one.
#[derive(Default)]
pub struct LabOptions {
    /// Reach the registry through a [`FaultyRegistry`], set up by this
    /// before the server starts.
    pub faults: Option<fn(&FaultyRegistry)>,
    /// `[server] cache_size` (default 2G).
    pub cache_size: Option<&'static str>,
    /// Global flags of `lazyboot serve` (`--read-timeout 5`).
    pub globals: Vec<&'static str>,
    /// Serve this image reference instead of the shared fixture's.
    pub image: Option<String>,
    /// More `[server]` lines (`background_fill = false\n`).
    pub server_lines: &'static str,
}

impl Lab {
    /// Push the shared fixture, configure `nodes` (all iPXE PCs with fixed
    /// addresses, configured on the namespace side) and start the server.
    /// `dhcp`: full DHCP on the lab interface, else DHCP off.
    pub fn start(nodes: &[NodeSpec], dhcp: bool) -> Result<Lab> {
        Lab::start_with(nodes, dhcp, LabOptions::default())
    }

    pub fn start_with(nodes: &[NodeSpec], dhcp: bool, opts: LabOptions) -> Result<Lab> {
        let fx = super::shared_fixture()?;
        let registry = Registry::start()?;
        fx.push(&registry, REPO)?;
        let faults = match opts.faults {
            Some(arm) => {
                let f = FaultyRegistry::start(&registry.addr)?;
                arm(&f);
                Some(f)
            }
            None => None,
        };
        let image = match (&opts.image, &faults) {
            (Some(i), _) => i.clone(),
            (None, Some(f)) => f.reference(REPO),
            (None, None) => registry.reference(REPO),
        };
        let net = NetLab::new(false)?;
        let tmp = tempfile::tempdir()?;
        let nfs_port = super::free_tcp_port();
        let tftp_port = super::free_udp_port();
        let prefix = format!("10.213.{}", net.subnet);
        let dhcp = if dhcp {
            format!(
                "mode = \"full\"\npool_start = \"{prefix}.100\"\npool_end = \"{prefix}.150\"\nrouter = \"{}\"\n",
                net.server_ip
            )
        } else {
            "mode = \"off\"\n".to_string()
        };
        let mut text = format!(
            "[server]\ninterface = \"{iface}\"\naddress = \"{server}\"\nstate_dir = \"{t}/state\"\n\
             cache_dir = \"{t}/cache\"\ncache_size = \"{cache}\"\ntftp_port = {tftp}\nnfs_port = {nfs_port}\n\
             {more}\n[dhcp]\n{dhcp}",
            iface = net.host_if,
            server = net.server_ip,
            t = tmp.path().display(),
            cache = opts.cache_size.unwrap_or("2G"),
            tftp = tftp_port,
            more = opts.server_lines,
        );
        for n in nodes {
            let ip = Ipv4Addr::new(10, 213, net.subnet, n.last);
            net.add_client_ip(ip)?;
            text.push_str(&format!(
                "\n[[nodes]]\nname = \"{}\"\nmac = \"{}\"\nkind = \"ipxe\"\nimage = \"{image}\"\n\
                 root = \"{}\"\nip = \"{ip}\"\n",
                n.name,
                n.mac(),
                n.root
            ));
            if let Some(p) = n.platform {
                text.push_str(&format!("platform = \"{p}\"\n"));
            }
        }
        let config = tmp.path().join("lazyboot.toml");
        std::fs::write(&config, text)?;
        let server = Serve::new(&config).globals(&opts.globals).start()?;
        Ok(Lab {
            server,
            net,
            tmp,
            faults,
            _registry: registry,
            nfs_port,
            tftp_port,
        })
    }

    pub fn ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.net.subnet, last)
    }

    pub fn nfs_addr(&self) -> SocketAddr {
        SocketAddr::from((self.net.server_ip, self.nfs_port))
    }

    /// A raw NFS client speaking from the node address `10.213.N.last`.
    pub fn rpc(&self, last: u8) -> Client {
        Client::connect_in_netns(&self.net.ns, self.ip(last), self.nfs_addr()).unwrap()
    }

    /// Stop the server (SIGTERM, a clean exit; or `kill -9`) and start it
    /// again on the same config, state and cache.
    pub fn restart(&mut self, kill9: bool) -> Result<()> {
        if kill9 {
            self.server.kill9()?;
        }
        self.server.restart()
    }

    pub fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    pub fn upper(&self, node: &str) -> PathBuf {
        self.state().join("nodes").join(node).join("upper")
    }

    /// Make new connections from the namespace (libnfs) leave from this
    /// node address: the subnet route's preferred source.
    pub fn prefer_source(&self, last: u8) {
        sh(&format!(
            "ip -n {ns} route replace 10.213.{s}.0/24 dev {i} proto kernel scope link src {ip}",
            ns = self.net.ns,
            s = self.net.subnet,
            i = self.net.client_if,
            ip = self.ip(last)
        ))
        .unwrap();
    }

    pub fn url(&self, path: &str, extra: &str) -> String {
        nfs_url(self.net.server_ip, self.nfs_port, path, extra)
    }

    /// A libnfs tool in the namespace: (success, stdout, stderr).
    pub fn tool(&self, args: &[&str]) -> (bool, Vec<u8>, String) {
        let out = self
            .net
            .client("timeout")
            .arg("60")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `nfs-cat` of `path` (`/nodes/NAME/...`), or its stderr.
    pub fn cat(&self, path: &str) -> Result<Vec<u8>, String> {
        let (ok, out, err) = self.tool(&["nfs-cat", &self.url(path, "")]);
        if ok {
            Ok(out)
        } else {
            Err(err)
        }
    }

    /// `nfs-cp` a local file to `path`, as `uid:gid` if given.
    pub fn put(&self, local: &Path, path: &str, owner: Option<(u32, u32)>) -> Result<(), String> {
        let extra = owner
            .map(|(u, g)| format!("&uid={u}&gid={g}"))
            .unwrap_or_default();
        let (ok, _, err) = self.tool(&["nfs-cp", local.to_str().unwrap(), &self.url(path, &extra)]);
        if ok {
            Ok(())
        } else {
            Err(err)
        }
    }

    /// A whole DHCP exchange (DISCOVER, OFFER, REQUEST, ACK) from a PXE
    /// ROM: the node starts a boot and the server writes its lease.
    pub fn lease(&self, spec: &NodeSpec) -> Result<()> {
        let mac = spec.mac();
        let args = ["--timeout", "5", "--mac", &mac, "--opt", PXE_CLASS];
        let v = super::dhcpc::run_client(&self.net, "dora", &args)?;
        if v["ack"]["msg_type"] != 5
            || v["ack"]["yiaddr"] != self.ip(spec.last).to_string().as_str()
        {
            bail!("no ACK of the node's address to {}: {v}", spec.name);
        }
        Ok(())
    }

    /// A DHCP DISCOVER from a PXE ROM with `mac`: the node starts a boot.
    pub fn discover(&self, spec: &NodeSpec) -> Result<()> {
        self.discover_with(spec, &[])
    }

    /// [`Lab::discover`] with more options (`CODE=FORMAT:VALUE`, e.g. the
    /// client architecture `93=h:000b`).
    pub fn discover_with(&self, spec: &NodeSpec, opts: &[&str]) -> Result<()> {
        let mac = spec.mac();
        let mut args = vec!["--timeout", "5", "--mac", &mac, "--opt", PXE_CLASS];
        for o in opts {
            args.extend(["--opt", o]);
        }
        let v = super::dhcpc::run_client(&self.net, "discover", &args)?;
        let offer = &v["replies"][0];
        if offer["msg_type"] != 2 || offer["yiaddr"] != self.ip(spec.last).to_string().as_str() {
            bail!("no OFFER of the node's address to {}: {v}", spec.name);
        }
        Ok(())
    }
}

/// A libnfs URL of `path` on the NFS server at `server:port` (MOUNT on the
/// same port), with `extra` query parameters (`&uid=1000`).
pub fn nfs_url(server: Ipv4Addr, port: u16, path: &str, extra: &str) -> String {
    format!("nfs://{server}{path}?version=3&nfsport={port}&mountport={port}{extra}")
}

pub fn fixture_file(image_path: &str) -> Vec<u8> {
    let fx = super::shared_fixture().unwrap();
    std::fs::read(fx.rootfs.join(image_path.trim_start_matches('/'))).unwrap()
}

pub fn owner(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

pub fn runnable(test: &str) -> bool {
    super::require_root_and_tools(test, TOOLS)
}

// Walking a root over NFS into a snapshot.

pub fn kind_of(t: ftype3) -> Kind {
    match t {
        ftype3::NF3REG => Kind::File,
        ftype3::NF3DIR => Kind::Dir,
        ftype3::NF3BLK => Kind::BlockDev,
        ftype3::NF3CHR => Kind::CharDev,
        ftype3::NF3LNK => Kind::Symlink,
        ftype3::NF3SOCK => Kind::Socket,
        ftype3::NF3FIFO => Kind::Fifo,
    }
}

/// Record `path` (attributes `a`, handle `fh`), and below it if a directory.
pub fn walk_nfs(
    c: &mut Client,
    path: &str,
    fh: &nfs_fh3,
    a: &fattr3,
    entries: &mut BTreeMap<String, Entry>,
    ids: &mut HashMap<u64, Vec<String>>,
) {
    let kind = kind_of(a.type_);
    let (size, sha256) = if kind == Kind::File {
        let data = c
            .read_all(fh)
            .unwrap_or_else(|s| panic!("READ {path}: {s}"));
        assert_eq!(data.len() as u64, a.size, "{path}: READ vs size");
        (Some(a.size), Some(sha256_hex(&data)))
    } else {
        (None, None)
    };
    let symlink_target = (kind == Kind::Symlink).then(|| {
        let t = c
            .readlink(fh)
            .unwrap_or_else(|s| panic!("READLINK {path}: {s}"));
        assert_eq!(t.len() as u64, a.size, "{path}: symlink size");
        escape(&t)
    });
    let rdev = matches!(kind, Kind::CharDev | Kind::BlockDev)
        .then_some((a.rdev.specdata1, a.rdev.specdata2));
    if kind != Kind::Dir {
        ids.entry(a.fileid).or_default().push(path.to_string());
    }
    entries.insert(
        path.to_string(),
        Entry {
            kind,
            mode: a.mode & 0o7777,
            uid: a.uid,
            gid: a.gid,
            size,
            sha256,
            symlink_target,
            rdev,
            // NFSv3 has no extended attributes.
            xattrs: BTreeMap::new(),
            hardlinks: None,
            nlink: a.nlink as u64,
            mtime: a.mtime.seconds as i64,
        },
    );
    if kind == Kind::Dir {
        let list = c
            .readdirplus(fh)
            .unwrap_or_else(|s| panic!("READDIRPLUS {path}: {s}"));
        for e in list {
            let child = if path == "/" {
                format!("/{}", escape(&e.name))
            } else {
                format!("{path}/{}", escape(&e.name))
            };
            assert!(!entries.contains_key(&child), "{child} listed twice");
            walk_nfs(c, &child, &e.fh, &e.attr, entries, ids);
        }
    }
}

pub fn snapshot_nfs(c: &mut Client, root: &nfs_fh3, label: &str) -> Snapshot {
    let a = c.getattr(root).unwrap();
    let (mut entries, mut ids) = (BTreeMap::new(), HashMap::new());
    walk_nfs(c, "/", root, &a, &mut entries, &mut ids);
    for paths in ids.values() {
        if paths.len() > 1 {
            let mut group = paths.clone();
            group.sort();
            for p in paths {
                entries.get_mut(p).unwrap().hardlinks = Some(group.clone());
            }
        }
    }
    Snapshot {
        label: label.to_string(),
        root: PathBuf::from(label),
        entries,
    }
}
