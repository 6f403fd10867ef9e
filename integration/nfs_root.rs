//! Node roots over NFS end to end: a real `lazyboot serve` process, the
//! shared fixture image pushed to a local registry, the real node overlay
//! (`src/nfs/overlay.rs`, `src/nfs/exports.rs`), and clients in a network
//! namespace speaking from the nodes' fixed addresses: libnfs' `nfs-cat`,
//! `nfs-cp`, `nfs-ls`, our raw NFSv3 client (`common::nfsrpc`, whose
//! sockets are made inside the namespace) and the scripted DHCP client.
//!
//! libnfs picks its source address by route, so [`Lab::prefer_source`]
//! points the subnet route's preferred source at the node a tool plays.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use common::netns::NetLab;
use common::nfsrpc::{self, Client};
use common::snapshot::{escape, Entry, Kind, Snapshot};
use common::{paths, sh, sha256_hex, CompareOptions, Registry};
use nfs3_server::nfs3_types::nfs3::{
    fattr3, ftype3, nfs_fh3, nfsstat3, sattr3, stable_how, Nfs3Option, READ3args, READ3res,
};

const BIN: &str = env!("CARGO_BIN_EXE_lazyboot");
const TOOLS: &[&str] = &["ip", "python3", "nfs-ls", "nfs-cat", "nfs-cp"];
const REPO: &str = "nfsroot/fixture:1";
/// The DHCP option 60 of a PXE boot ROM: a DISCOVER with it starts a boot.
const PXE_CLASS: &str = "60=s:PXEClient:Arch:00000:UNDI:002001";

// ---------------------------------------------------------------------------
// The server process.

struct Server {
    child: Child,
}

impl Server {
    fn start(config: &Path) -> Result<Server> {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line)?;
        if !line.starts_with("serving") {
            let _ = child.kill();
            let _ = child.wait();
            bail!("serve did not start: {line:?}");
        }
        // Keep the pipe open and drained for anything printed later.
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                eprintln!("[serve stdout] {l}");
            }
        });
        Ok(Server { child })
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM; the server must exit cleanly.
    fn stop(mut self) -> Result<()> {
        self.signal(libc::SIGTERM);
        let status = self.child.wait()?;
        if !status.success() {
            bail!("serve exited with {status} on SIGTERM");
        }
        Ok(())
    }

    /// SIGKILL: no chance to flush or clean up anything.
    fn kill9(mut self) -> Result<()> {
        self.signal(libc::SIGKILL);
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// The lab: registry, image, network namespace, config, state.

struct NodeSpec {
    name: &'static str,
    /// Last byte of the MAC and of the address (10.213.SUBNET.LAST).
    last: u8,
    root: &'static str,
}

impl NodeSpec {
    const fn new(name: &'static str, last: u8, root: &'static str) -> NodeSpec {
        NodeSpec { name, last, root }
    }
    fn mac(&self) -> String {
        format!("52:54:00:aa:00:{:02x}", self.last)
    }
}

struct Lab {
    net: NetLab,
    tmp: tempfile::TempDir,
    _registry: Registry,
    config: PathBuf,
    nfs_port: u16,
    server: Option<Server>,
}

impl Lab {
    /// Push the shared fixture, configure `nodes` (all iPXE PCs with fixed
    /// addresses, configured on the namespace side) and start the server.
    /// `dhcp`: full DHCP on the lab interface, else DHCP off.
    fn start(nodes: &[NodeSpec], dhcp: bool) -> Result<Lab> {
        let fx = common::shared_fixture()?;
        let registry = Registry::start()?;
        fx.push(&registry, REPO)?;
        let image = registry.reference(REPO);
        let net = NetLab::new(false)?;
        let tmp = tempfile::tempdir()?;
        let nfs_port = common::free_tcp_port();
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
             cache_dir = \"{t}/cache\"\ncache_size = \"2G\"\ntftp_port = {tftp}\nnfs_port = {nfs_port}\n\
             \n[dhcp]\n{dhcp}",
            iface = net.host_if,
            server = net.server_ip,
            t = tmp.path().display(),
            tftp = common::free_udp_port(),
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
        }
        let config = tmp.path().join("lazyboot.toml");
        std::fs::write(&config, text)?;
        let server = Some(Server::start(&config)?);
        Ok(Lab {
            net,
            tmp,
            _registry: registry,
            config,
            nfs_port,
            server,
        })
    }

    fn ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.net.subnet, last)
    }

    fn nfs_addr(&self) -> SocketAddr {
        SocketAddr::from((self.net.server_ip, self.nfs_port))
    }

    /// A raw NFS client speaking from the node address `10.213.N.last`.
    fn rpc(&self, last: u8) -> Client {
        Client::connect_in_netns(&self.net.ns, self.ip(last), self.nfs_addr()).unwrap()
    }

    fn restart(&mut self, kill9: bool) -> Result<()> {
        let old = self.server.take().context("no server running")?;
        if kill9 {
            old.kill9()?;
        } else {
            old.stop()?;
        }
        self.server = Some(Server::start(&self.config)?);
        Ok(())
    }

    fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    fn upper(&self, node: &str) -> PathBuf {
        self.state().join("nodes").join(node).join("upper")
    }

    /// Make new connections from the namespace (libnfs) leave from this
    /// node address: the subnet route's preferred source.
    fn prefer_source(&self, last: u8) {
        sh(&format!(
            "ip -n {ns} route replace 10.213.{s}.0/24 dev {i} proto kernel scope link src {ip}",
            ns = self.net.ns,
            s = self.net.subnet,
            i = self.net.client_if,
            ip = self.ip(last)
        ))
        .unwrap();
    }

    fn url(&self, path: &str, extra: &str) -> String {
        let p = self.nfs_port;
        format!(
            "nfs://{}{path}?version=3&nfsport={p}&mountport={p}{extra}",
            self.net.server_ip
        )
    }

    /// A libnfs tool in the namespace: (success, stdout, stderr).
    fn tool(&self, args: &[&str]) -> (bool, Vec<u8>, String) {
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
    fn cat(&self, path: &str) -> Result<Vec<u8>, String> {
        let (ok, out, err) = self.tool(&["nfs-cat", &self.url(path, "")]);
        if ok {
            Ok(out)
        } else {
            Err(err)
        }
    }

    /// `nfs-cp` a local file to `path`, as `uid:gid` if given.
    fn put(&self, local: &Path, path: &str, owner: Option<(u32, u32)>) -> Result<(), String> {
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

    /// A DHCP DISCOVER from a PXE ROM with `mac`: the node starts a boot.
    fn discover(&self, spec: &NodeSpec) -> Result<()> {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/clients/dhcp_client.py");
        let out = common::run(
            self.net
                .client("python3")
                .arg(script)
                .args(["--iface", &self.net.client_if, "--timeout", "5"])
                .args(["--mac", &spec.mac(), "--opt", PXE_CLASS, "discover"]),
        )?;
        let v: serde_json::Value = serde_json::from_slice(&out)?;
        let offer = &v["replies"][0];
        if offer["msg_type"] != 2 || offer["yiaddr"] != self.ip(spec.last).to_string().as_str() {
            bail!("no OFFER of the node's address to {}: {v}", spec.name);
        }
        Ok(())
    }
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn fixture_file(image_path: &str) -> Vec<u8> {
    let fx = common::shared_fixture().unwrap();
    std::fs::read(fx.rootfs.join(image_path.trim_start_matches('/'))).unwrap()
}

fn owner(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

fn runnable(test: &str) -> bool {
    common::require_root_and_tools(test, TOOLS)
}

// ---------------------------------------------------------------------------
// Walking a root over NFS into a snapshot.

fn kind_of(t: ftype3) -> Kind {
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
fn walk_nfs(
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

fn snapshot_nfs(c: &mut Client, root: &nfs_fh3, label: &str) -> Snapshot {
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

// ---------------------------------------------------------------------------
// Tests.

/// Every path of the image as a read-only node sees it over NFS equals
/// `umoci unpack`: type, mode with setuid/setgid/sticky, owner, size,
/// content, symlink target, device numbers, hard-link groups (same file id),
/// nlink of non-directories and mtimes. Only xattrs are left out (NFSv3 has
/// no way to read them), and directory nlink (as for every comparison).
#[test]
fn nfs_root_equals_umoci_unpack() -> Result<()> {
    if !runnable("nfs_root_equals_umoci_unpack") {
        return Ok(());
    }
    let started = Instant::now();
    let lab = Lab::start(&[NodeSpec::new("ro", 2, "readonly")], false)?;
    let mut c = lab.rpc(2);
    let root = c.mnt("/nodes/ro").unwrap();
    let got = snapshot_nfs(&mut c, &root, "nfs");

    let fx = common::shared_fixture()?;
    let mut want = common::snapshot(&fx.rootfs)?.with_label("umoci");
    let with_xattrs = want.entries.values().filter(|e| !e.xattrs.is_empty());
    assert!(with_xattrs.count() >= 4, "the fixture has xattrs to ignore");
    for e in want.entries.values_mut() {
        e.xattrs.clear();
    }
    common::assert_same(&want, &got, &CompareOptions::default());

    // The comparison covered what it is meant to (not two empty trees).
    assert!(got.entries.len() > 100, "{} paths", got.entries.len());
    assert_eq!(got.entry(paths::SETUID).mode, 0o4755);
    assert_eq!(got.entry(paths::SETGID_DIR).mode, 0o2775);
    assert_eq!(got.entry(paths::STICKY_DIR).mode, 0o1777);
    assert_eq!(got.entry(paths::BLOCK_DEV).rdev, Some((7, 0)));
    assert_eq!(got.entry(paths::FIFO).kind, Kind::Fifo);
    assert_eq!(
        got.entry(paths::HARDLINK_GROUP[0]).hardlinks.as_deref(),
        Some(&paths::HARDLINK_GROUP.map(String::from)[..])
    );
    for gone in paths::DELETED {
        assert!(!got.contains(gone), "{gone} visible over NFS");
    }
    eprintln!("nfs_root_equals_umoci_unpack: {:.1?}", started.elapsed());
    Ok(())
}

/// A persistent node writes a new file (as uid 1000) and overwrites two
/// image files (one longer, one much shorter than before): nfs-cat reads
/// them back, the upper directory on the server holds them with the right
/// owners (the caller's for a new file, the image's for copied-up ones), a
/// server restart keeps them, and the image underneath and another node's
/// view are unchanged.
#[test]
fn persistent_upper_takes_writes_and_survives_restart() -> Result<()> {
    if !runnable("persistent_upper_takes_writes_and_survives_restart") {
        return Ok(());
    }
    let started = Instant::now();
    let mut lab = Lab::start(
        &[
            NodeSpec::new("keep", 2, "persistent"),
            NodeSpec::new("other", 3, "persistent"),
        ],
        false,
    )?;
    lab.prefer_source(2);
    let local = tempfile::tempdir()?;
    let new_data = pseudo_random(3 * 1024 * 1024 + 12345, 1);
    let longer = b"overwritten by the node, longer than the image's version\n".to_vec();
    let shorter = b"short now\n".to_vec();
    std::fs::write(local.path().join("new"), &new_data)?;
    const NEW: &str = "/special/sticky-dir/new.bin";
    const NOBODY: &str = "/owners/nobody-65534-100";
    let text_before = fixture_file(paths::TEXT_FILE);
    assert!(text_before.len() > 1 << 20);

    lab.put(
        &local.path().join("new"),
        &format!("/nodes/keep{NEW}"),
        Some((1000, 1000)),
    )
    .unwrap();
    // libnfs' nfs-cp cannot replace an existing file (its CREATE is answered
    // NFS3ERR_EXIST), so overwrite as the kernel does: SETATTR size 0, WRITE.
    {
        let mut c = lab.rpc(2);
        let root = c.mnt("/nodes/keep").unwrap();
        for (path, data) in [(NOBODY, &longer), (paths::TEXT_FILE, &shorter)] {
            let fh = c.walk(&root, path).unwrap();
            c.overwrite(&fh, data, nfsrpc::ROOT).unwrap();
        }
    }

    let check = |lab: &Lab, when: &str| {
        let cat = |p: &str| lab.cat(&format!("/nodes/keep{p}")).unwrap();
        assert!(cat(NEW) == new_data, "{when}: {NEW} differs");
        assert_eq!(cat(NOBODY), longer, "{when}");
        assert_eq!(cat(paths::TEXT_FILE), shorter, "{when}");
        // Attributes over NFS.
        let mut c = lab.rpc(2);
        let root = c.mnt("/nodes/keep").unwrap();
        let fh = c.walk(&root, NEW).unwrap();
        let a = c.getattr(&fh).unwrap();
        assert_eq!((a.uid, a.gid, a.size), (1000, 1000, new_data.len() as u64));
        let fh = c.walk(&root, NOBODY).unwrap();
        let a = c.getattr(&fh).unwrap();
        assert_eq!((a.uid, a.gid, a.mode), (65534, 100, 0o644), "{when}");
        // On the server's disk.
        let up = lab.upper("keep");
        let on_disk = |p: &str| up.join(p.trim_start_matches('/'));
        assert!(std::fs::read(on_disk(NEW)).unwrap() == new_data, "{when}");
        assert_eq!(owner(&on_disk(NEW)).0, 1000, "{when}");
        assert_eq!(owner(&on_disk(NEW)).1, 1000, "{when}");
        assert_eq!(std::fs::read(on_disk(NOBODY)).unwrap(), longer, "{when}");
        assert_eq!(owner(&on_disk(NOBODY)), (65534, 100, 0o644), "{when}");
        assert_eq!(
            std::fs::read(on_disk(paths::TEXT_FILE)).unwrap(),
            shorter,
            "{when}"
        );
        assert_eq!(owner(&on_disk(paths::TEXT_FILE)), (0, 0, 0o644), "{when}");
        // The sticky directory was copied up with its mode.
        assert_eq!(owner(&on_disk(paths::STICKY_DIR)), (0, 0, 0o1777), "{when}");
        // Another node still sees the image.
        let mut o = lab.rpc(3);
        let oroot = o.mnt("/nodes/other").unwrap();
        assert_eq!(o.walk(&oroot, NEW).err(), Some(nfsstat3::NFS3ERR_NOENT));
        let fh = o.walk(&oroot, paths::TEXT_FILE).unwrap();
        assert!(
            o.read_all(&fh).unwrap() == text_before,
            "{when}: image changed"
        );
        let fh = o.walk(&oroot, NOBODY).unwrap();
        assert_eq!(o.read_all(&fh).unwrap(), fixture_file(NOBODY), "{when}");
    };
    check(&lab, "before the restart");
    lab.restart(false)?;
    check(&lab, "after the restart");
    assert!(
        !lab.upper("other").join("special").exists(),
        "the other node's upper got the writes"
    );
    eprintln!(
        "persistent_upper_takes_writes_and_survives_restart: {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// A copy out of the image interrupted by `kill -9` of the server continues
/// after a restart with the handle obtained before it: handles (signed with
/// the persisted key, naming stable file ids) stay valid, and the bytes put
/// together are the image's. The same holds for a file the node created in
/// its upper.
#[test]
fn server_restart_mid_copy_and_continue() -> Result<()> {
    if !runnable("server_restart_mid_copy_and_continue") {
        return Ok(());
    }
    let started = Instant::now();
    let mut lab = Lab::start(&[NodeSpec::new("n", 2, "persistent")], false)?;
    lab.prefer_source(2);
    let mut c = lab.rpc(2);
    let root = c.mnt("/nodes/n").unwrap();
    let large = c.walk(&root, paths::LARGE_FILE).unwrap();
    let before = c.getattr(&large).unwrap();
    let want = fixture_file(paths::LARGE_FILE);
    assert_eq!(before.size, want.len() as u64);
    assert!(before.size >= 8 << 20, "large.bin is {} bytes", before.size);

    let local = tempfile::tempdir()?;
    let mine = pseudo_random(2 * 1024 * 1024 + 7, 3);
    std::fs::write(local.path().join("mine"), &mine)?;
    lab.put(&local.path().join("mine"), "/nodes/n/mine.bin", None)
        .unwrap();
    let mine_fh = c.walk(&root, "mine.bin").unwrap();
    let mine_id = c.getattr(&mine_fh).unwrap().fileid;

    let half = before.size / 2 + 4321;
    let mut got = c.read_range(&large, 0, Some(half)).unwrap();
    assert_eq!(got.len() as u64, half);

    lab.restart(true)?;
    // The old connection is gone with the old process.
    let mut c = lab.rpc(2);
    let after = c.getattr(&large).unwrap();
    assert_eq!(
        (after.fileid, after.size, after.fsid),
        (before.fileid, before.size, before.fsid)
    );
    got.extend(c.read_range(&large, half, None).unwrap());
    assert_eq!(got.len(), want.len());
    assert_eq!(
        sha256_hex(&got),
        sha256_hex(&want),
        "large.bin over a restart"
    );
    assert_eq!(c.getattr(&mine_fh).unwrap().fileid, mine_id);
    assert!(
        c.read_all(&mine_fh).unwrap() == mine,
        "upper file over a restart"
    );
    // The root handle from before still works for lookups.
    assert_eq!(c.walk(&root, paths::LARGE_FILE).unwrap(), large);
    eprintln!(
        "server_restart_mid_copy_and_continue: {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// Handles cannot be forged or altered (BADHANDLE), a genuine handle of
/// node A is refused from node B's address and from a stranger's (ACCES),
/// and so is a MNT of A's export; each node's own access keeps working.
#[test]
fn forged_handle_and_foreign_client_rejected() -> Result<()> {
    if !runnable("forged_handle_and_foreign_client_rejected") {
        return Ok(());
    }
    let started = Instant::now();
    let lab = Lab::start(
        &[
            NodeSpec::new("alpha", 2, "persistent"),
            NodeSpec::new("beta", 3, "persistent"),
        ],
        false,
    )?;
    let stranger = 9;
    lab.net.add_client_ip(lab.ip(stranger))?;
    let mut a = lab.rpc(2);
    let a_root = a.mnt("/nodes/alpha").unwrap();
    let file = a.walk(&a_root, "etc/target").unwrap();
    let attr = a.getattr(&file).unwrap();
    assert_eq!(a.read_all(&file).unwrap(), b"I am /etc/target\n");

    // Altered handles: file id (another valid one), export id, tag, length.
    let altered = |h: &nfs_fh3, i: usize, x: u8| {
        let mut d = h.data.to_vec();
        d[i] ^= x;
        nfsrpc::fh(d)
    };
    assert_eq!(
        a.getattr_status(&altered(&file, 15, 1)),
        nfsstat3::NFS3ERR_BADHANDLE
    );
    assert_eq!(
        a.getattr_status(&altered(&file, 31, 0x80)),
        nfsstat3::NFS3ERR_BADHANDLE
    );
    assert_eq!(
        a.getattr_status(&altered(&file, 0, 3)),
        nfsstat3::NFS3ERR_BADHANDLE
    );
    let mut forged = a_root.data.to_vec();
    forged[8..16].copy_from_slice(&attr.fileid.to_be_bytes());
    assert_eq!(
        a.getattr_status(&nfsrpc::fh(forged)),
        nfsstat3::NFS3ERR_BADHANDLE,
        "root's tag on another file id"
    );
    let mut b = lab.rpc(3);
    let b_root = b.mnt("/nodes/beta").unwrap();
    let b_file = b.walk(&b_root, "etc/target").unwrap();
    assert_ne!(b_file, file, "handles name their export");
    let mut moved = file.data.to_vec();
    moved[4..8].copy_from_slice(&b_file.data[4..8]);
    let moved = nfsrpc::fh(moved);
    assert_eq!(b.getattr_status(&moved), nfsstat3::NFS3ERR_BADHANDLE);
    assert_eq!(a.getattr_status(&moved), nfsstat3::NFS3ERR_BADHANDLE);
    let short = nfsrpc::fh(file.data[..31].to_vec());
    assert_eq!(a.getattr_status(&short), nfsstat3::NFS3ERR_BADHANDLE);

    // A's genuine handles from B's address and a stranger's.
    let mut s = lab.rpc(stranger);
    for (who, c) in [("beta", &mut b), ("stranger", &mut s)] {
        assert_eq!(c.getattr_status(&file), nfsstat3::NFS3ERR_ACCES, "{who}");
        assert_eq!(c.getattr_status(&a_root), nfsstat3::NFS3ERR_ACCES, "{who}");
        assert_eq!(
            c.read(&file, 0, 100).err(),
            Some(nfsstat3::NFS3ERR_ACCES),
            "{who}"
        );
        assert_eq!(
            c.lookup(&a_root, b"etc").err(),
            Some(nfsstat3::NFS3ERR_ACCES),
            "{who}"
        );
        assert_eq!(
            c.readdirplus(&a_root).err(),
            Some(nfsstat3::NFS3ERR_ACCES),
            "{who}"
        );
        assert_eq!(c.mnt("/nodes/alpha").unwrap_err(), "MNT3ERR_ACCES", "{who}");
    }
    assert_eq!(s.mnt("/nodes/beta").unwrap_err(), "MNT3ERR_ACCES");
    assert_eq!(b.mnt("/nodes/nope").unwrap_err(), "MNT3ERR_NOENT");
    // READ as a raw reply too: an error status, no data.
    let r: READ3res = b.nfs(
        6,
        nfsrpc::ROOT,
        &READ3args {
            file: file.clone(),
            offset: 0,
            count: 100,
        },
    );
    assert_eq!(nfsrpc::status(r), nfsstat3::NFS3ERR_ACCES);

    // libnfs from beta's address: its own export yes, alpha's no.
    lab.prefer_source(3);
    assert_eq!(
        lab.cat("/nodes/beta/etc/target").unwrap(),
        b"I am /etc/target\n"
    );
    let err = lab.cat("/nodes/alpha/etc/target").unwrap_err();
    assert!(err.contains("ACCES"), "{err}");
    let (ok, _, _) = lab.tool(&["nfs-ls", &lab.url("/nodes/alpha", "")]);
    assert!(!ok, "nfs-ls of alpha's export from beta's address");

    // Each owner still gets on.
    assert_eq!(a.getattr(&file).unwrap().fileid, attr.fileid);
    assert_eq!(b.read_all(&b_file).unwrap(), b"I am /etc/target\n");
    eprintln!(
        "forged_handle_and_foreign_client_rejected: {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// A read-only node cannot write (NFS3ERR_ROFS, nothing on the server's
/// disk); an ephemeral node's writes last for one boot: they survive a new
/// MNT within the boot, and are gone at the first MNT after the node's
/// next DHCP DISCOVER (a new boot), while a persistent node keeps its
/// writes over the same sequence.
#[test]
fn readonly_and_ephemeral_roots() -> Result<()> {
    if !runnable("readonly_and_ephemeral_roots") {
        return Ok(());
    }
    let started = Instant::now();
    const RO: NodeSpec = NodeSpec::new("ro", 2, "readonly");
    const EPH: NodeSpec = NodeSpec::new("eph", 3, "ephemeral");
    const KEEP: NodeSpec = NodeSpec::new("keep", 4, "persistent");
    let lab = Lab::start(&[RO, EPH, KEEP], true)?;
    let (ro, eph, keep) = (RO, EPH, KEEP);
    let local = tempfile::tempdir()?;
    let data = pseudo_random(1024 * 1024 + 99, 5);
    let small = b"changed by the node\n".to_vec();
    std::fs::write(local.path().join("data"), &data)?;
    std::fs::write(local.path().join("small"), &small)?;
    let image_small = fixture_file("/data/small.txt");

    // Read-only: creating and overwriting both fail with ROFS.
    lab.prefer_source(ro.last);
    let err = lab
        .put(&local.path().join("data"), "/nodes/ro/new.bin", None)
        .unwrap_err();
    assert!(err.contains("NFS3ERR_ROFS"), "{err}");
    let err = lab
        .put(
            &local.path().join("small"),
            "/nodes/ro/data/small.txt",
            None,
        )
        .unwrap_err();
    assert!(err.contains("NFS3ERR_ROFS"), "{err}");
    let mut c = lab.rpc(ro.last);
    let root = c.mnt("/nodes/ro").unwrap();
    let fh = c.walk(&root, "data/small.txt").unwrap();
    assert_eq!(
        c.overwrite(&fh, &small, nfsrpc::ROOT),
        Err(nfsstat3::NFS3ERR_ROFS)
    );
    assert_eq!(
        c.write(&fh, 0, &small, nfsrpc::ROOT),
        Err(nfsstat3::NFS3ERR_ROFS)
    );
    assert_eq!(lab.cat("/nodes/ro/data/small.txt").unwrap(), image_small);
    assert!(lab.cat("/nodes/ro/new.bin").is_err());
    let ro_upper = lab.upper("ro");
    let leftovers = std::fs::read_dir(&ro_upper).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "{} not empty", ro_upper.display());

    // First boot of the two writable nodes, then writes.
    for n in [&eph, &keep] {
        lab.discover(n)?;
        lab.prefer_source(n.last);
        let root = format!("/nodes/{}", n.name);
        lab.put(&local.path().join("data"), &format!("{root}/new.bin"), None)
            .unwrap();
        let mut c = lab.rpc(n.last);
        let root = c.mnt(&root).unwrap();
        let fh = c.walk(&root, "data/small.txt").unwrap();
        c.overwrite(&fh, &small, nfsrpc::ROOT).unwrap();
    }
    // Mounted again within the same boot: still there (each nfs-cat mounts).
    for n in [&eph, &keep] {
        lab.prefer_source(n.last);
        let root = format!("/nodes/{}", n.name);
        assert!(
            lab.cat(&format!("{root}/new.bin")).unwrap() == data,
            "{}",
            n.name
        );
        assert_eq!(lab.cat(&format!("{root}/data/small.txt")).unwrap(), small);
        assert!(lab.upper(n.name).join("new.bin").exists(), "{}", n.name);
    }

    // A new boot of both.
    for n in [&eph, &keep] {
        lab.discover(n)?;
    }
    lab.prefer_source(eph.last);
    let err = lab.cat("/nodes/eph/new.bin").unwrap_err();
    assert!(err.contains("NOENT"), "{err}");
    assert_eq!(lab.cat("/nodes/eph/data/small.txt").unwrap(), image_small);
    assert!(!lab.upper("eph").join("new.bin").exists());
    assert!(!lab.upper("eph").join("data/small.txt").exists());
    // The image is all there is again: a write works as on a fresh root.
    lab.put(&local.path().join("small"), "/nodes/eph/again.txt", None)
        .unwrap();
    assert_eq!(lab.cat("/nodes/eph/again.txt").unwrap(), small);

    lab.prefer_source(keep.last);
    assert!(lab.cat("/nodes/keep/new.bin").unwrap() == data);
    assert_eq!(lab.cat("/nodes/keep/data/small.txt").unwrap(), small);
    assert!(lab.upper("keep").join("new.bin").exists());
    eprintln!("readonly_and_ephemeral_roots: {:.1?}", started.elapsed());
    Ok(())
}

/// An ephemeral node boots, writes, and goes on running while the server
/// restarts: it keeps its files (its handles still work). When it boots
/// again after that, the files are gone, as at any other boot: the boot
/// counter starting again from zero in the new server process must not be
/// mistaken for the boot the upper was last reset for.
#[test]
fn ephemeral_root_resets_at_the_first_boot_after_a_server_restart() -> Result<()> {
    if !runnable("ephemeral_root_resets_at_the_first_boot_after_a_server_restart") {
        return Ok(());
    }
    let started = Instant::now();
    const EPH: NodeSpec = NodeSpec::new("eph", 2, "ephemeral");
    let mut lab = Lab::start(&[EPH], true)?;
    lab.prefer_source(EPH.last);
    let local = tempfile::tempdir()?;
    let mine = b"written during the first boot\n".to_vec();
    std::fs::write(local.path().join("mine"), &mine)?;

    lab.discover(&EPH)?;
    lab.put(&local.path().join("mine"), "/nodes/eph/mine.txt", None)
        .unwrap();
    let mut c = lab.rpc(EPH.last);
    let root = c.mnt("/nodes/eph").unwrap();
    let fh = c.walk(&root, "mine.txt").unwrap();

    lab.restart(false)?;
    let mut c = lab.rpc(EPH.last);
    assert_eq!(c.read_all(&fh).unwrap(), mine, "lost over a server restart");

    lab.discover(&EPH)?;
    let err = lab.cat("/nodes/eph/mine.txt").unwrap_err();
    assert!(err.contains("NOENT"), "kept over a boot: {err}");
    assert!(!lab.upper("eph").join("mine.txt").exists());
    eprintln!(
        "ephemeral_root_resets_at_the_first_boot_after_a_server_restart: {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// The overlay's copy-up end to end, and over `kill -9` of the server: an
/// UNSTABLE write into the middle of the large lazily fetched image file
/// (never committed) leaves every other byte as in the image; overwriting
/// one name of a 4-name hard-link group (one name from a lower layer)
/// changes all four, which keep one file id and nlink 4; a removed image
/// file stays removed; a renamed image file keeps its file id, and handles
/// taken before all this (and before the crash) still reach the files.
#[test]
fn copy_up_keeps_bytes_links_and_ids_over_a_crash() -> Result<()> {
    if !runnable("copy_up_keeps_bytes_links_and_ids_over_a_crash") {
        return Ok(());
    }
    let started = Instant::now();
    let mut lab = Lab::start(&[NodeSpec::new("n", 2, "persistent")], false)?;
    let mut c = lab.rpc(2);
    let root = c.mnt("/nodes/n").unwrap();

    let mut large_want = fixture_file(paths::LARGE_FILE);
    let large = c.walk(&root, paths::LARGE_FILE).unwrap();
    let large_id = c.getattr(&large).unwrap().fileid;
    let patch_at = large_want.len() * 5 / 8 + 3;
    let patch = b"PATCHED BY THE NODE";
    c.write_with(
        &large,
        patch_at as u64,
        patch,
        nfsrpc::ROOT,
        stable_how::UNSTABLE,
    )
    .unwrap();
    large_want[patch_at..patch_at + patch.len()].copy_from_slice(patch);

    let payload = b"new payload, seen through all four names\n";
    let link_a = c.walk(&root, "hardlinks/link-a").unwrap();
    let link_id = c.getattr(&link_a).unwrap().fileid;
    c.overwrite(&link_a, payload, nfsrpc::ROOT).unwrap();

    let etc = c.walk(&root, "etc").unwrap();
    c.remove(&etc, b"target", nfsrpc::ROOT).unwrap();

    let data = c.walk(&root, "data").unwrap();
    let small = c.walk(&root, "data/small.txt").unwrap();
    let small_id = c.getattr(&small).unwrap().fileid;
    c.rename((&data, b"small.txt"), (&data, b"renamed.txt"), nfsrpc::ROOT)
        .unwrap();
    let small_want = fixture_file("/data/small.txt");

    let check = |c: &mut Client, when: &str| {
        let a = c.getattr(&large).unwrap();
        assert_eq!(
            (a.fileid, a.size),
            (large_id, large_want.len() as u64),
            "{when}"
        );
        let got = c.read_all(&large).unwrap();
        assert!(
            got == large_want,
            "{when}: large.bin differs after a copy-up"
        );
        for p in paths::HARDLINK_GROUP {
            let fh = c.walk(&root, p).unwrap();
            let a = c.getattr(&fh).unwrap();
            assert_eq!((a.fileid, a.nlink), (link_id, 4), "{when}: {p}");
            assert_eq!(c.read_all(&fh).unwrap(), payload, "{when}: {p}");
        }
        assert_eq!(c.read_all(&link_a).unwrap(), payload, "{when}");
        assert_eq!(
            c.lookup(&etc, b"target").err(),
            Some(nfsstat3::NFS3ERR_NOENT),
            "{when}"
        );
        let names: Vec<Vec<u8>> = c
            .readdirplus(&etc)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(!names.contains(&b"target".to_vec()), "{when}: {names:?}");
        let relative = c.walk(&root, paths::LINK_RELATIVE).unwrap();
        assert_eq!(c.readlink(&relative).unwrap(), b"../etc/target");
        assert_eq!(c.read_all(&small).unwrap(), small_want, "{when}");
        let renamed = c.walk(&root, "data/renamed.txt").unwrap();
        assert_eq!(c.getattr(&renamed).unwrap().fileid, small_id, "{when}");
        assert_eq!(
            c.lookup(&data, b"small.txt").err(),
            Some(nfsstat3::NFS3ERR_NOENT),
            "{when}"
        );
        let names: Vec<Vec<u8>> = c
            .readdirplus(&data)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "{when}: duplicates in {names:?}");
        assert_eq!(
            sorted,
            [&b"large.bin"[..], b"renamed.txt", b"text.txt"],
            "{when}"
        );
    };
    check(&mut c, "before the crash");
    lab.restart(true)?;
    let mut c = lab.rpc(2);
    check(&mut c, "after kill -9 and a restart");
    // The copy-up is in the node's upper, whole.
    let up = lab.upper("n");
    assert_eq!(
        std::fs::metadata(up.join("data/large.bin"))?.len(),
        large_want.len() as u64
    );
    eprintln!(
        "copy_up_keeps_bytes_links_and_ids_over_a_crash: {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// One change a node makes to its root.
#[derive(Clone, Copy)]
enum Op {
    /// Replace the content (truncate + write), as `cred`.
    Write(&'static str, &'static [u8], (u32, u32)),
    Chmod(&'static str, u32),
    Chown(&'static str, u32, u32),
    Truncate(&'static str, u64),
    Remove(&'static str),
    Rmdir(&'static str),
    Mkdir(&'static str, u32, (u32, u32)),
    Create(&'static str, u32, (u32, u32), &'static [u8]),
    Symlink(&'static str, &'static str, (u32, u32)),
    Mkfifo(&'static str, u32, (u32, u32)),
    /// (existing, new name)
    Link(&'static str, &'static str),
    Rename(&'static str, &'static str, (u32, u32)),
}

const USER: (u32, u32) = nfsrpc::USER;
const ROOT: (u32, u32) = nfsrpc::ROOT;

/// What a node does to its root: rewrites, attribute changes, removals
/// (whiteouts), an opaque directory, creations with inherited groups,
/// links, renames, as root and as uid 1000.
const OPS: &[Op] = &[
    Op::Write("/hardlinks/link-b", b"rewritten through link-b\n", ROOT),
    Op::Chmod("/files/chmod-only.sh", 0o700),
    Op::Chown("/special/setuid-root", 1000, 1000),
    Op::Chown("/owners/root-0-0", 65534, 100),
    Op::Truncate("/data/text.txt", 1000),
    Op::Write("/owners/user-1000-1000", b"the owner writes\n", USER),
    Op::Remove("/opaque/new-1.txt"),
    Op::Remove("/links/dangling"),
    Op::Remove("/modes/dir-0711/file.txt"),
    Op::Rmdir("/modes/dir-0711"),
    Op::Mkdir("/special/setgid-dir/sub", 0o755, ROOT),
    Op::Create("/special/setgid-dir/sub/f.txt", 0o640, ROOT, b"in a setgid dir\n"),
    Op::Create("/special/sticky-dir/user.txt", 0o600, USER, b"user's\n"),
    Op::Mkdir("/owners/private-1000/made", 0o700, USER),
    Op::Create("/owners/private-1000/made/x", 0o644, USER, b"x\n"),
    Op::Rename("/owners/private-1000/made", "/owners/private-1000/made2", USER),
    Op::Symlink("/links/new-link", "../data/small.txt", ROOT),
    Op::Mkfifo("/special/fifo2", 0o600, ROOT),
    Op::Link("/hardlinks/pair-1", "/hardlinks/pair-3"),
    Op::Link("/data/small.txt", "/data/small-link.txt"),
    Op::Rename("/names/with space.txt", "/names/renamed.txt", ROOT),
    Op::Mkdir("/newtop", 0o755, ROOT),
    Op::Rename("/data/small.txt", "/newtop/small.txt", ROOT),
    Op::Remove("/etc/target"),
    Op::Create("/etc/target", 0o644, ROOT, b"a new target\n"),
    Op::Remove("/opaque/new-subdir/new-3.txt"),
    Op::Rmdir("/opaque/new-subdir"),
    Op::Mkdir("/opaque/new-subdir", 0o700, ROOT),
    Op::Remove("/hardlinks/link-a"),
    Op::Rename("/names/.hidden", "/names/-leading-dash", ROOT),
    Op::Chmod("/modes/dir-0750", 0o755),
    Op::Create("/ünïcødé/新しい.txt", 0o644, ROOT, b"new unicode\n"),
    Op::Rename("/hardlinks/original", "/newtop/original", ROOT),
    Op::Truncate("/modes/file-0644", 5000),
    Op::Link("/hardlinks/sub/pair-2", "/newtop/pair-4"),
    Op::Remove("/hardlinks/pair-1"),
    Op::Create(
        "/long/nested-directory-level-1-abcdefghijklmnopqrstuvwxyz/nested-directory-level-2-abcdefghijklmnopqrstuvwxyz/nested-directory-level-3-abcdefghijklmnopqrstuvwxyz/new.txt",
        0o644,
        ROOT,
        b"deep\n",
    ),
];

/// [`OPS`], then enough new entries in a directory of the image (some
/// names removed again) that listing it takes several READDIRPLUS calls
/// that mix upper and lower entries.
fn ops() -> Vec<Op> {
    let mut all = OPS.to_vec();
    for i in 0..150 {
        let p: &'static str = Box::leak(format!("/modes/many-{i:03}").into_boxed_str());
        all.push(Op::Create(p, 0o644, ROOT, b""));
        if i % 7 == 3 {
            all.push(Op::Remove(p));
        }
    }
    all.push(Op::Remove("/modes/file-0600"));
    all
}

fn split(path: &str) -> (&str, &[u8]) {
    let (dir, name) = path.rsplit_once('/').unwrap();
    (dir, name.as_bytes())
}

fn apply_nfs(c: &mut Client, root: &nfs_fh3, op: Op) -> Result<(), nfsstat3> {
    let mut at = |p: &str| c.walk(root, p);
    match op {
        Op::Write(p, data, cred) => {
            let fh = at(p)?;
            c.overwrite(&fh, data, cred)
        }
        Op::Chmod(p, mode) => {
            let fh = at(p)?;
            let set = sattr3 {
                mode: Nfs3Option::Some(mode),
                ..Default::default()
            };
            c.setattr(&fh, set, ROOT).map(|_| ())
        }
        Op::Chown(p, uid, gid) => {
            let fh = at(p)?;
            let set = sattr3 {
                uid: Nfs3Option::Some(uid),
                gid: Nfs3Option::Some(gid),
                ..Default::default()
            };
            c.setattr(&fh, set, ROOT).map(|_| ())
        }
        Op::Truncate(p, size) => {
            let fh = at(p)?;
            let set = sattr3 {
                size: Nfs3Option::Some(size),
                ..Default::default()
            };
            c.setattr(&fh, set, ROOT).map(|_| ())
        }
        Op::Remove(p) => {
            let (d, n) = split(p);
            let dir = at(d)?;
            c.remove(&dir, n, ROOT)
        }
        Op::Rmdir(p) => {
            let (d, n) = split(p);
            let dir = at(d)?;
            c.rmdir(&dir, n, ROOT)
        }
        Op::Mkdir(p, mode, cred) => {
            let (d, n) = split(p);
            let dir = at(d)?;
            c.mkdir(&dir, n, mode, cred).map(|_| ())
        }
        Op::Create(p, mode, cred, data) => {
            let (d, n) = split(p);
            let dir = at(d)?;
            let fh = c.create(&dir, n, mode, cred)?;
            c.write(&fh, 0, data, cred)
        }
        Op::Symlink(p, target, cred) => {
            let (d, n) = split(p);
            let dir = at(d)?;
            c.symlink(&dir, n, target.as_bytes(), cred).map(|_| ())
        }
        Op::Mkfifo(p, mode, cred) => {
            let (d, n) = split(p);
            let dir = at(d)?;
            c.mkfifo(&dir, n, mode, cred).map(|_| ())
        }
        Op::Link(existing, new) => {
            let file = at(existing)?;
            let (d, n) = split(new);
            let dir = at(d)?;
            c.link(&file, &dir, n, ROOT)
        }
        Op::Rename(from, to, cred) => {
            let (fd, fname) = split(from);
            let (td, tname) = split(to);
            let (fdir, tdir) = (at(fd)?, at(td)?);
            c.rename((&fdir, fname), (&tdir, tname), cred)
        }
    }
}

/// The same change on a local copy of the image, as Linux does it: new
/// entries owned by the caller, with the group (and for directories the
/// setgid bit) of a setgid parent; chown clears setuid/setgid.
fn apply_local(root: &Path, op: Op) -> Result<()> {
    use std::os::unix::fs::{lchown, symlink, PermissionsExt};
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let chmod = |p: &Path, mode: u32| std::fs::set_permissions(p, PermissionsExt::from_mode(mode));
    let owner_in = |p: &str, cred: (u32, u32)| -> (u32, u32, bool) {
        let parent = at(split(p).0);
        let m = std::fs::metadata(parent).unwrap();
        let setgid = m.mode() & 0o2000 != 0;
        (cred.0, if setgid { m.gid() } else { cred.1 }, setgid)
    };
    match op {
        Op::Write(p, data, _) => std::fs::write(at(p), data)?,
        Op::Chmod(p, mode) => chmod(&at(p), mode)?,
        Op::Chown(p, uid, gid) => lchown(at(p), Some(uid), Some(gid))?,
        Op::Truncate(p, size) => std::fs::OpenOptions::new()
            .write(true)
            .open(at(p))?
            .set_len(size)?,
        Op::Remove(p) => std::fs::remove_file(at(p))?,
        Op::Rmdir(p) => std::fs::remove_dir(at(p))?,
        Op::Mkdir(p, mode, cred) => {
            let (uid, gid, setgid) = owner_in(p, cred);
            std::fs::create_dir(at(p))?;
            lchown(at(p), Some(uid), Some(gid))?;
            chmod(&at(p), mode | if setgid { 0o2000 } else { 0 })?;
        }
        Op::Create(p, mode, cred, data) => {
            let (uid, gid, _) = owner_in(p, cred);
            std::fs::write(at(p), data)?;
            lchown(at(p), Some(uid), Some(gid))?;
            chmod(&at(p), mode)?;
        }
        Op::Symlink(p, target, cred) => {
            let (uid, gid, _) = owner_in(p, cred);
            symlink(target, at(p))?;
            lchown(at(p), Some(uid), Some(gid))?;
        }
        Op::Mkfifo(p, mode, cred) => {
            let (uid, gid, _) = owner_in(p, cred);
            common::run(Command::new("mkfifo").arg(at(p)))?;
            lchown(at(p), Some(uid), Some(gid))?;
            chmod(&at(p), mode)?;
        }
        Op::Link(existing, new) => std::fs::hard_link(at(existing), at(new))?,
        Op::Rename(from, to, _) => std::fs::rename(at(from), at(to))?,
    }
    Ok(())
}

/// Paths whose mtime a change may set to "now": the changed entries (and
/// every name of a changed inode) and the directories they are in.
fn touched(ops: &[Op], local: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |p: &str| {
        out.push(p.to_string());
        let (d, _) = split(p);
        out.push(if d.is_empty() {
            "/".into()
        } else {
            d.to_string()
        });
        if let Some(group) = local.get(p).and_then(|e| e.hardlinks.clone()) {
            out.extend(group);
        }
    };
    for op in ops {
        match *op {
            Op::Write(p, ..) | Op::Truncate(p, _) => add(p),
            Op::Remove(p) | Op::Rmdir(p) | Op::Mkdir(p, ..) | Op::Create(p, ..) => add(p),
            Op::Symlink(p, ..) | Op::Mkfifo(p, ..) => add(p),
            Op::Link(_, p) => add(p),
            Op::Rename(a, b, _) => {
                add(a);
                add(b);
            }
            Op::Chmod(..) | Op::Chown(..) => {}
        }
    }
    out
}

/// A persistent node changes its root in many ways; the result over NFS is
/// exactly what the same changes make of a local copy of the image (types,
/// modes, owners, sizes, contents, symlinks, hard-link groups, nlink), every
/// entry not changed keeps its mtime (copy-up keeps it too), and all of it
/// is the same after `kill -9` of the server and a restart.
#[test]
fn node_changes_match_the_same_changes_on_a_local_copy() -> Result<()> {
    if !runnable("node_changes_match_the_same_changes_on_a_local_copy") {
        return Ok(());
    }
    let started = Instant::now();
    let mut lab = Lab::start(&[NodeSpec::new("n", 2, "persistent")], false)?;
    let fx = common::shared_fixture()?;
    let local = lab.tmp.path().join("local");
    common::copy_tree(&fx.rootfs, &local)?;
    let mut c = lab.rpc(2);
    let root = c.mnt("/nodes/n").unwrap();
    let ops = ops();
    for (i, op) in ops.iter().enumerate() {
        apply_nfs(&mut c, &root, *op).unwrap_or_else(|s| panic!("op {i} over NFS: {s}"));
        apply_local(&local, *op).with_context(|| format!("op {i} locally"))?;
    }
    let mut want = common::snapshot(&local)?.with_label("local copy");
    for e in want.entries.values_mut() {
        e.xattrs.clear(); // NFSv3 has no xattrs
    }
    let same_mtime = CompareOptions {
        ignore_paths: touched(&ops, &want),
        ..CompareOptions::default()
    };
    let compare = |c: &mut Client, when: &str| {
        let got = snapshot_nfs(c, &root, &format!("nfs {when}"));
        common::assert_same(&want, &got, &CompareOptions::without_mtime());
        common::assert_same(&want, &got, &same_mtime);
        // Spot checks that the changes are in there at all.
        assert_eq!(got.entry("/special/setuid-root").mode, 0o755);
        assert_eq!(got.entry("/special/setgid-dir/sub").mode, 0o2755);
        assert_eq!(got.entry("/special/setgid-dir/sub/f.txt").gid, 100);
        assert_eq!(got.entry("/hardlinks/pair-3").nlink, 3);
        assert!(!got.contains("/opaque/new-subdir/new-3.txt"));
    };
    compare(&mut c, "before the crash");
    lab.restart(true)?;
    let mut c = lab.rpc(2);
    compare(&mut c, "after kill -9 and a restart");
    eprintln!(
        "node_changes_match_the_same_changes_on_a_local_copy: {:.1?}",
        started.elapsed()
    );
    Ok(())
}
