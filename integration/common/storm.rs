//! A boot storm: many simulated nodes, each replaying one recorded real
//! boot against one server at once, each from its own MAC and its own
//! leased address in one network namespace.
//!
//! The recording is a boot profile (`lazyboot profile --format json`):
//! its DHCP exchanges, TFTP transfers, NFS MOUNT and, per file, the NFS
//! calls made on it. A profile groups NFS calls by file rather than
//! keeping each call's time, so a file is replayed as one step at its
//! first use: the path looked up a component at a time (each handle kept,
//! as the kernel's dentry cache does), then its GETATTR, ACCESS, READLINK,
//! FSINFO, PATHCONF calls, a READDIRPLUS listing, and as many READs as
//! recorded covering the bytes it read. Calls that change the root (MKDIR
//! and friends) are left out: the nodes share a read-only root. Between
//! steps a node waits as long as the recorded boot was idle there (the
//! guest's CPU: firmware, kernel start-up, programs), times `gap_scale`.
//!
//! Every byte a node reads (TFTP and NFS) is compared with the same bytes
//! of the unpacked image; a difference fails the node.

use super::nfsrpc::{Client, ROOT};
use super::storm_wire::{in_netns, tftp_get, DhcpPort, Lease};
use anyhow::{anyhow, bail, Context, Result};
use lazyboot::profile::BootProfile;
use nfs3_server::nfs3_types::nfs3::{
    fattr3, ftype3, nfs_fh3, ACCESS3args, ACCESS3res, FSINFO3res, Nfs3Result, PATHCONF3res,
};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// What a node does in one step of its boot.
#[derive(Clone, Debug)]
pub enum Action {
    /// A DHCP exchange; `discover`: DISCOVER + REQUEST, else a lone REQUEST
    /// for the address already held. `client` is the recorded vendor class.
    Dhcp { client: String, discover: bool },
    /// A TFTP read of a file by the name the node asked for.
    Tftp { file: String },
    /// MOUNT of the node's root.
    Mount,
    /// The NFS calls made on one file, by procedure name.
    Nfs {
        path: String,
        ops: BTreeMap<String, u32>,
        bytes: u64,
    },
}

#[derive(Clone, Debug)]
pub struct Step {
    /// How long the recorded boot was idle before this step.
    pub idle: Duration,
    pub action: Action,
}

/// A recorded boot, as steps to replay.
#[derive(Clone, Debug)]
pub struct Recording {
    pub steps: Vec<Step>,
    /// The recorded boot's length, first DHCP to booted.
    pub total: Duration,
    /// Bytes it read over TFTP and NFS.
    pub tftp_bytes: u64,
    pub nfs_bytes: u64,
}

impl Recording {
    /// From the output of `lazyboot profile --format json` (or the stored
    /// profile itself).
    pub fn load(path: &Path) -> Result<Recording> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let p = v.get("profile").cloned().unwrap_or(v);
        let p: BootProfile = serde_json::from_value(p)
            .with_context(|| format!("{} is not a boot profile", path.display()))?;
        Ok(Recording::from_profile(&p))
    }

    pub fn from_profile(p: &BootProfile) -> Recording {
        // (start, end, action) of everything the node did.
        let mut ev: Vec<(f64, f64, Action)> = Vec::new();
        for d in &p.dhcp {
            let discover = d.messages.first().is_some_and(|m| m == "DISCOVER");
            let client = d.client.clone().unwrap_or_default();
            ev.push((
                d.start_ms,
                d.end_ms.unwrap_or(d.start_ms),
                Action::Dhcp { client, discover },
            ));
        }
        for t in &p.tftp {
            let file = t.file.clone();
            ev.push((t.start_ms, t.end_ms, Action::Tftp { file }));
        }
        for m in p.nfs_mounts.iter().take(1) {
            ev.push((m.at_ms, m.at_ms + m.wait_ms, Action::Mount));
        }
        for f in &p.nfs_files {
            if f.path.starts_with('(') {
                continue;
            }
            let action = Action::Nfs {
                path: f.path.clone(),
                ops: f.ops.clone(),
                bytes: f.bytes_read,
            };
            ev.push((f.first_ms, f.first_ms + f.busy_ms, action));
        }
        ev.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut busy_until = 0.0f64;
        let mut steps = Vec::new();
        for (start, end, action) in ev {
            let idle = (start - busy_until).max(0.0);
            busy_until = busy_until.max(end);
            steps.push(Step {
                idle: Duration::from_secs_f64(idle / 1000.0),
                action,
            });
        }
        let total = p.booted.as_ref().map_or(p.last_event_ms(), |b| b.at_ms);
        Recording {
            steps,
            total: Duration::from_secs_f64(total / 1000.0),
            tftp_bytes: p.tftp.iter().map(|t| t.bytes).sum(),
            nfs_bytes: p.nfs_files.iter().map(|f| f.bytes_read).sum(),
        }
    }

    /// The recorded idle time, all steps together.
    pub fn idle(&self) -> Duration {
        self.steps.iter().map(|s| s.idle).sum()
    }
}

/// The servers the fleet boots from.
#[derive(Clone, Debug)]
pub struct Target {
    pub server: Ipv4Addr,
    pub tftp_port: u16,
    pub nfs_port: u16,
    /// MOUNT's port (the NFS port for lazyboot, its own for ganesha).
    pub mount_port: u16,
    /// The export a node mounts: `{mac}` is replaced by its MAC as 12 hex
    /// digits (lazyboot's `/nodes/node-{mac}`), or one path for all.
    pub export: String,
}

/// How the fleet runs.
#[derive(Clone, Debug)]
pub struct Fleet {
    /// The client namespace and its interface (all node addresses on it).
    pub ns: String,
    pub iface: String,
    pub nodes: usize,
    /// Third byte of the nodes' MACs: different runs, different machines.
    pub mac_tag: u8,
    /// Each node's whole boot must end within this.
    pub deadline: Duration,
    /// Multiplies the recorded idle times (0: none, 1: as recorded).
    pub gap_scale: f64,
    /// The unpacked image (`umoci unpack`'s rootfs): what every byte read
    /// must equal.
    pub rootfs: PathBuf,
    /// Where TFTP names are found in `rootfs` (the node's boot dir).
    pub boot_dir: String,
    /// Read at most this much of each TFTP file (None: all of it).
    pub tftp_limit: Option<u64>,
}

/// One node's boot.
#[derive(Clone, Debug, Default)]
pub struct NodeRun {
    pub mac: String,
    pub address: Option<Ipv4Addr>,
    /// From its first DHCP packet to its last reply (or failure).
    pub secs: f64,
    pub error: Option<String>,
    pub tftp_bytes: u64,
    pub nfs_bytes: u64,
    /// NFS calls made.
    pub calls: u64,
    pub steps_done: usize,
    /// Boot scripts fetched again because the server said to wait.
    pub retries: u32,
}

/// A whole run.
#[derive(Clone, Debug, Default)]
pub struct FleetRun {
    pub nodes: Vec<NodeRun>,
    pub wall_secs: f64,
}

impl FleetRun {
    pub fn ok(&self) -> usize {
        self.nodes.iter().filter(|n| n.error.is_none()).count()
    }

    /// Boot seconds of the nodes that finished, sorted.
    pub fn times(&self) -> Vec<f64> {
        let mut t: Vec<f64> = self
            .nodes
            .iter()
            .filter(|n| n.error.is_none())
            .map(|n| n.secs)
            .collect();
        t.sort_by(f64::total_cmp);
        t
    }

    /// The `q` quantile (nearest rank) of the finished nodes' times.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let t = self.times();
        if t.is_empty() {
            return None;
        }
        let rank = ((q * t.len() as f64).ceil() as usize).clamp(1, t.len());
        Some(t[rank - 1])
    }

    /// Failure reasons and how many nodes gave each.
    pub fn failures(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for e in self.nodes.iter().filter_map(|n| n.error.as_ref()) {
            *m.entry(e.clone()).or_default() += 1;
        }
        m
    }
}

/// The pool addresses a fleet's nodes may be leased, added to the client
/// interface at once (`ip -batch`), so that whatever address a node is
/// given, it can speak from it.
pub fn add_addresses(ns: &str, iface: &str, addrs: &[Ipv4Addr]) -> Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("ip -batch")?;
    let mut stdin = child.stdin.take().context("ip's stdin")?;
    for a in addrs {
        writeln!(stdin, "addr add {a}/24 dev {iface}")?;
    }
    drop(stdin);
    let st = child.wait()?;
    if !st.success() {
        bail!("ip -batch (adding {} addresses) failed: {st}", addrs.len());
    }
    Ok(())
}

/// Boot `fleet.nodes` nodes against `target` at once, each replaying
/// `rec`. Every node stops at its deadline; the call returns when all have.
pub fn run_fleet(fleet: &Fleet, target: &Target, rec: &Recording) -> Result<FleetRun> {
    let dhcp = Arc::new(DhcpPort::open(&fleet.ns, &fleet.iface)?);
    let barrier = Arc::new(Barrier::new(fleet.nodes + 1));
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for i in 0..fleet.nodes {
        let mac = [0x52, 0x54, fleet.mac_tag, 0x5e, (i >> 8) as u8, i as u8];
        let (dhcp, barrier, results) = (dhcp.clone(), barrier.clone(), results.clone());
        let (fleet, target, rec) = (fleet.clone(), target.clone(), rec.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("node-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    barrier.wait();
                    let r = boot_node(&fleet, &target, &rec, &dhcp, mac);
                    results.lock().push(r);
                })
                .context("spawning a node thread")?,
        );
    }
    barrier.wait();
    let t0 = Instant::now();
    for t in threads {
        if t.join().is_err() {
            results.lock().push(NodeRun {
                error: Some("node thread panicked".into()),
                ..NodeRun::default()
            });
        }
    }
    let nodes = std::mem::take(&mut *results.lock());
    Ok(FleetRun {
        nodes,
        wall_secs: t0.elapsed().as_secs_f64(),
    })
}

fn mac_text(mac: [u8; 6], sep: &str) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(sep)
}

fn boot_node(
    fleet: &Fleet,
    target: &Target,
    rec: &Recording,
    dhcp: &DhcpPort,
    mac: [u8; 6],
) -> NodeRun {
    let started = Instant::now();
    let deadline = started + fleet.deadline;
    let mut node = Node {
        fleet,
        target,
        mac,
        deadline,
        lease: None,
        nfs: None,
        handles: HashMap::new(),
        script: Vec::new(),
        run: NodeRun {
            mac: mac_text(mac, ":"),
            ..NodeRun::default()
        },
    };
    // Transport failures in the NFS client panic (it is test code): they
    // are this node's failure, not the run's.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<()> {
        for (i, step) in rec.steps.iter().enumerate() {
            let idle = step.idle.mul_f64(fleet.gap_scale);
            if Instant::now() + idle >= deadline {
                bail!("deadline passed before step {i}");
            }
            std::thread::sleep(idle);
            node.step(dhcp, &step.action)
                .with_context(|| format!("step {i} ({})", describe(&step.action)))?;
            node.run.steps_done = i + 1;
        }
        Ok(())
    }));
    let mut run = node.run;
    run.secs = started.elapsed().as_secs_f64();
    run.error = match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(p) => Some(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("?")
        )),
    };
    run
}

fn describe(a: &Action) -> String {
    match a {
        Action::Dhcp { client, discover } => {
            format!("DHCP {} {client}", if *discover { "DORA" } else { "RA" })
        }
        Action::Tftp { file } => format!("TFTP {file}"),
        Action::Mount => "MOUNT".into(),
        Action::Nfs { path, .. } => format!("NFS {path}"),
    }
}

struct Node<'a> {
    fleet: &'a Fleet,
    target: &'a Target,
    mac: [u8; 6],
    deadline: Instant,
    lease: Option<Lease>,
    nfs: Option<Client>,
    /// Handles of the paths looked up so far ("" is the root).
    handles: HashMap<String, (nfs_fh3, fattr3)>,
    /// The files the node's boot script names.
    script: Vec<String>,
    run: NodeRun,
}

impl Node<'_> {
    fn address(&self) -> Result<Ipv4Addr> {
        self.lease
            .as_ref()
            .map(|l| l.address)
            .ok_or_else(|| anyhow!("no address leased yet"))
    }

    fn step(&mut self, dhcp: &DhcpPort, a: &Action) -> Result<()> {
        match a {
            Action::Dhcp { client, discover } => {
                let renew = if *discover { None } else { self.lease.as_ref() };
                let l = dhcp.exchange(self.mac, client, renew, self.deadline)?;
                self.run.address = Some(l.address);
                self.lease = Some(l);
            }
            Action::Tftp { file } => self.tftp(file)?,
            Action::Mount => self.mount()?,
            Action::Nfs { path, ops, bytes } => self.nfs_file(path, ops, *bytes)?,
        }
        Ok(())
    }

    fn tftp(&mut self, file: &str) -> Result<()> {
        let src = self.address()?;
        let server = SocketAddr::from((self.target.server, self.target.tftp_port));
        let ns = self.fleet.ns.clone();
        let get =
            |file: &str| tftp_get(&ns, src, server, file, self.fleet.tftp_limit, self.deadline);
        let mut data = get(file)?;
        self.run.tftp_bytes += data.len() as u64;
        // While the image opens, the script says "sleep N, chain FILE":
        // iPXE does just that, until the deadline.
        while file.ends_with(".ipxe") {
            let text = String::from_utf8_lossy(&data).into_owned();
            let Some(again) = text
                .lines()
                .find_map(|l| l.strip_prefix("chain --autofree "))
            else {
                break;
            };
            let secs: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix("sleep "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(1.0);
            if Instant::now() + Duration::from_secs_f64(secs) >= self.deadline {
                bail!("{file} still says to wait at the deadline: {text:?}");
            }
            std::thread::sleep(Duration::from_secs_f64(secs));
            self.run.retries += 1;
            data = get(again.trim())?;
            self.run.tftp_bytes += data.len() as u64;
        }
        if file.ends_with(".ipxe") {
            // Generated per node: what it names must be what the
            // recorded node loaded next.
            check_script(&data, file)?;
            self.script = script_files(&String::from_utf8_lossy(&data));
            return Ok(());
        }
        if !self.script.is_empty() && !self.script.iter().any(|f| f == file) {
            bail!("the boot script names {:?}, not {file}", self.script);
        }
        let local = self
            .fleet
            .rootfs
            .join(self.fleet.boot_dir.trim_start_matches('/'))
            .join(file);
        same_bytes(&local, 0, &data).with_context(|| format!("TFTP {file}"))
    }

    fn mount(&mut self) -> Result<()> {
        let src = self.address()?;
        let export = self.target.export.replace("{mac}", &mac_text(self.mac, ""));
        let t = self.target.clone();
        let connect = |port: u16| -> Result<Client> {
            let ns = self.fleet.ns.clone();
            let s: TcpStream = in_netns(&ns, move || {
                super::nfsrpc::tcp_from(src, SocketAddr::from((t.server, port)))
            })?;
            let left = self.deadline.saturating_duration_since(Instant::now());
            s.set_read_timeout(Some(left.max(Duration::from_millis(10))))?;
            Ok(Client::new(s))
        };
        let mut nfs = connect(t.nfs_port)?;
        // Client::new sets its own timeout: the node's deadline wins.
        let left = self.deadline.saturating_duration_since(Instant::now());
        nfs.s
            .set_read_timeout(Some(left.max(Duration::from_millis(10))))?;
        let root = if t.mount_port == t.nfs_port {
            nfs.mnt(&export)
        } else {
            let mut m = connect(t.mount_port)?;
            m.s.set_read_timeout(Some(left.max(Duration::from_millis(10))))?;
            m.mnt(&export)
        }
        .map_err(|e| anyhow!("MNT {export}: {e}"))?;
        let attr = nfs
            .getattr(&root)
            .map_err(|e| anyhow!("GETATTR of the root: {e:?}"))?;
        self.run.calls += 2;
        self.handles.insert(String::new(), (root, attr));
        self.nfs = Some(nfs);
        Ok(())
    }

    /// The handle and attributes of `path`, looking up what is not known.
    fn resolve(&mut self, path: &str) -> Result<(nfs_fh3, fattr3)> {
        let mut at = String::new();
        let (mut fh, mut attr) = self
            .handles
            .get("")
            .cloned()
            .context("NFS call before MOUNT")?;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            at.push('/');
            at.push_str(part);
            if let Some(known) = self.handles.get(&at) {
                (fh, attr) = known.clone();
                continue;
            }
            let nfs = self.nfs.as_mut().context("no NFS connection")?;
            fh = nfs
                .lookup(&fh, part.as_bytes())
                .map_err(|e| anyhow!("LOOKUP {at}: {e:?}"))?;
            attr = nfs
                .getattr(&fh)
                .map_err(|e| anyhow!("GETATTR {at}: {e:?}"))?;
            self.run.calls += 2;
            self.handles.insert(at.clone(), (fh.clone(), attr.clone()));
        }
        Ok((fh, attr))
    }

    fn nfs_file(&mut self, path: &str, ops: &BTreeMap<String, u32>, bytes: u64) -> Result<()> {
        let (fh, attr) = self.resolve(path)?;
        let n = |op: &str| ops.get(op).copied().unwrap_or(0);
        let nfs = self.nfs.as_mut().context("no NFS connection")?;
        for _ in 0..n("GETATTR") {
            nfs.getattr(&fh).map_err(|e| anyhow!("GETATTR: {e:?}"))?;
        }
        for _ in 0..n("ACCESS") {
            let args = ACCESS3args {
                object: fh.clone(),
                access: 0x1f,
            };
            if let Nfs3Result::Err((s, _)) = nfs.nfs::<ACCESS3res>(4, ROOT, &args) {
                bail!("ACCESS: {s:?}");
            }
        }
        for _ in 0..n("FSINFO") {
            if let Nfs3Result::Err((s, _)) = nfs.nfs::<FSINFO3res>(19, ROOT, &fh) {
                bail!("FSINFO: {s:?}");
            }
        }
        for _ in 0..n("PATHCONF") {
            if let Nfs3Result::Err((s, _)) = nfs.nfs::<PATHCONF3res>(20, ROOT, &fh) {
                bail!("PATHCONF: {s:?}");
            }
        }
        if attr.type_ == ftype3::NF3LNK {
            for _ in 0..n("READLINK") {
                let target = nfs.readlink(&fh).map_err(|e| anyhow!("READLINK: {e:?}"))?;
                let local =
                    std::fs::read_link(self.fleet.rootfs.join(path.trim_start_matches('/')))?;
                if local.as_os_str().as_encoded_bytes() != target.as_slice() {
                    bail!(
                        "READLINK {path}: {:?}, the image says {local:?}",
                        String::from_utf8_lossy(&target)
                    );
                }
            }
        }
        if n("READDIRPLUS") > 0 {
            let entries = nfs
                .readdirplus(&fh)
                .map_err(|e| anyhow!("READDIRPLUS: {e:?}"))?;
            let local =
                std::fs::read_dir(self.fleet.rootfs.join(path.trim_start_matches('/')))?.count();
            if entries.len() != local {
                bail!(
                    "READDIRPLUS {path}: {} entries, the image has {local}",
                    entries.len()
                );
            }
        }
        self.run.calls += ops
            .iter()
            .filter(|(k, _)| {
                [
                    "GETATTR",
                    "ACCESS",
                    "FSINFO",
                    "PATHCONF",
                    "READLINK",
                    "READDIRPLUS",
                ]
                .contains(&k.as_str())
            })
            .map(|(_, v)| *v as u64)
            .sum::<u64>();
        let reads = n("READ");
        if reads == 0 || bytes == 0 || attr.size == 0 {
            return Ok(());
        }
        // As many READs as recorded, each as large, covering the bytes read
        // (from the start again if the boot read more than the file holds).
        let count = bytes.div_ceil(reads as u64).min(1 << 20);
        let local = self.fleet.rootfs.join(path.trim_start_matches('/'));
        let (mut done, mut off) = (0u64, 0u64);
        while done < bytes {
            let want = count.min(bytes - done) as u32;
            let (data, eof) = nfs
                .read(&fh, off, want)
                .map_err(|e| anyhow!("READ {path} at {off}: {e:?}"))?;
            self.run.calls += 1;
            same_bytes(&local, off, &data).with_context(|| format!("READ {path} at {off}"))?;
            done += want as u64;
            self.run.nfs_bytes += data.len() as u64;
            off = if eof || data.is_empty() {
                0
            } else {
                off + data.len() as u64
            };
        }
        Ok(())
    }
}

/// `data` must be the bytes of `file` at `off`.
fn same_bytes(file: &Path, off: u64, data: &[u8]) -> Result<()> {
    let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    f.seek(SeekFrom::Start(off))?;
    let mut want = vec![0u8; data.len()];
    f.read_exact(&mut want)
        .with_context(|| format!("{} has no {} bytes at {off}", file.display(), data.len()))?;
    if want != data {
        let at = want.iter().zip(data).position(|(a, b)| a != b).unwrap_or(0);
        bail!(
            "byte {} differs from {} (of {} read)",
            off + at as u64,
            file.display(),
            data.len()
        );
    }
    Ok(())
}

/// A boot script must be iPXE's and name a kernel.
fn check_script(data: &[u8], file: &str) -> Result<()> {
    let text = String::from_utf8_lossy(data);
    if !text.starts_with("#!ipxe") || !text.lines().any(|l| l.starts_with("kernel ")) {
        bail!("{file} is not an iPXE script that loads a kernel: {text:?}");
    }
    Ok(())
}

/// The files a boot script loads over TFTP, by the names the node asks for.
pub fn script_files(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("kernel ") || l.starts_with("initrd "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|u| match u.strip_prefix("tftp://") {
            Some(rest) => rest.split_once('/').map_or(rest, |(_, p)| p).to_string(),
            None => u.to_string(),
        })
        .collect()
}

/// CPU seconds (user + system) and peak RSS (KiB, VmHWM) of a process.
pub fn proc_usage(pid: u32) -> Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces: ") S ppid ...".
    let rest = stat.rsplit_once(')').context("odd /proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (f[11].parse::<f64>()? + f[12].parse::<f64>()?) / tck;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmHWM")?
        .parse()?;
    Ok((cpu, hwm))
}

/// `lazyboot_registry_received_bytes_total` from a serve's `/metrics`.
pub fn registry_bytes(server: Ipv4Addr, http_port: u16) -> Result<u64> {
    let text = super::curl_get(&format!("http://{server}:{http_port}/metrics"), &[])?;
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .find_map(|l| l.strip_prefix("lazyboot_registry_received_bytes_total "))
        .context("no lazyboot_registry_received_bytes_total in /metrics")?
        .trim()
        .parse::<f64>()
        .map(|v| v as u64)
        .context("registry bytes")
}
