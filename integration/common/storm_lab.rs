//! The lab a boot storm runs in: the QEMU tests' boot image in a private
//! registry and unpacked (`umoci unpack`, what every byte read is checked
//! against and what the baseline serves), a veth pair whose namespace end
//! carries the whole DHCP pool, and the servers under test on the host
//! end: `lazyboot serve` (full DHCP from that pool, unknown MACs booted
//! from `[defaults]`) or dnsmasq (DHCP + TFTP) with nfs-ganesha.

use super::ganesha::Ganesha;
use super::netns::NetLab;
use super::serve::{Serve, Server};
use super::storm::{add_addresses, registry_bytes, Fleet, Recording, Target};
use super::{free_tcp_port, free_udp_port, push, qemu, umoci_unpack, Registry};
use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The recorded boot shipped with the tests (see integration/README.md).
pub fn recording_path() -> PathBuf {
    qemu::fixtures().join("boot-profile.json")
}

/// Tools the lab needs beyond the harness's.
pub const TOOLS: &[&str] = &["dnsmasq", "ganesha.nfsd", "rpcbind", "ip"];

/// Pool: .10 to .250 of the lab's /24.
const POOL: (u8, u8) = (10, 250);

pub struct StormLab {
    pub lab: NetLab,
    pub registry: Registry,
    /// The image's reference in `registry`.
    pub image: String,
    pub rootfs: PathBuf,
    pub work: PathBuf,
    pub rec: Recording,
    /// Compressed bytes of the image's layers (what a full pull fetches).
    pub layer_bytes: u64,
    next_mac_tag: u8,
}

/// One running server set and how the fleet reaches it.
pub struct Servers {
    pub target: Target,
    /// Processes whose CPU and memory count as the server's.
    pub pids: Vec<u32>,
    pub http_port: Option<u16>,
    lazyboot: Option<Server>,
    dnsmasq: Option<Child>,
    ganesha: Option<Ganesha>,
}

impl Servers {
    /// lazyboot's `/metrics` registry byte counter (None for the baseline).
    pub fn registry_bytes(&self) -> Result<Option<u64>> {
        match self.http_port {
            Some(p) => registry_bytes(self.target.server, p).map(Some),
            None => Ok(None),
        }
    }

    /// CPU seconds and peak RSS (KiB) of the server processes, summed.
    pub fn usage(&self) -> Result<(f64, u64)> {
        let mut total = (0.0, 0);
        for &pid in &self.pids {
            let (c, m) = super::storm::proc_usage(pid)?;
            total.0 += c;
            total.1 += m;
        }
        Ok(total)
    }

    pub fn stop(mut self) -> Result<()> {
        if let Some(mut s) = self.lazyboot.take() {
            s.stop()?;
        }
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        drop(self.ganesha.take());
        Ok(())
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

impl StormLab {
    /// Build (or reuse) the boot image, push it, unpack it, make the
    /// network with every pool address on the client side.
    pub fn new(work: &Path) -> Result<StormLab> {
        fs::create_dir_all(work)?;
        let rec = Recording::load(&recording_path())?;
        let layout = qemu::boot_image("amd64", "boot")?;
        let registry = Registry::start()?;
        push(&layout, "boot", &registry, "storm/boot:v1")?;
        let image = registry.reference("storm/boot:v1");
        let rootfs = umoci_unpack(&layout, "boot", &work.join("unpacked"))?;
        let manifest = super::layout_manifest(&layout, "boot")?;
        let layer_bytes = manifest["layers"]
            .as_array()
            .context("manifest without layers")?
            .iter()
            .filter_map(|l| l["size"].as_u64())
            .sum();
        let lab = NetLab::new(false)?;
        let pool: Vec<Ipv4Addr> = (POOL.0..=POOL.1)
            .map(|h| Ipv4Addr::new(10, 213, lab.subnet, h))
            .collect();
        add_addresses(&lab.ns, &lab.client_if, &pool)?;
        Ok(StormLab {
            lab,
            registry,
            image,
            rootfs,
            work: work.to_path_buf(),
            rec,
            layer_bytes,
            next_mac_tag: 1,
        })
    }

    /// Fleet settings for `nodes` nodes with MACs no earlier run used.
    pub fn fleet(&mut self, nodes: usize, gap_scale: f64, deadline: Duration) -> Fleet {
        let mac_tag = self.next_mac_tag;
        self.next_mac_tag = self.next_mac_tag.wrapping_add(1);
        Fleet {
            ns: self.lab.ns.clone(),
            iface: self.lab.client_if.clone(),
            nodes,
            mac_tag,
            deadline,
            gap_scale,
            rootfs: self.rootfs.clone(),
            boot_dir: "/boot".into(),
            tftp_limit: None,
        }
    }

    fn pool(&self) -> (Ipv4Addr, Ipv4Addr) {
        let s = self.lab.subnet;
        (
            Ipv4Addr::new(10, 213, s, POOL.0),
            Ipv4Addr::new(10, 213, s, POOL.1),
        )
    }

    /// `lazyboot serve` on `cache` with a fresh state directory `name`:
    /// no background fill and no prefetch plan, so the registry sends only
    /// what nodes read.
    pub fn lazyboot(&self, name: &str, cache: &Path) -> Result<Servers> {
        let dir = self.work.join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let (tftp_port, nfs_port, http_port) = (free_udp_port(), free_tcp_port(), free_tcp_port());
        let (pool_start, pool_end) = self.pool();
        let config = dir.join("lazyboot.toml");
        fs::write(
            &config,
            format!(
                r#"[server]
interface = "{host_if}"
address = "{server}"
state_dir = "{state}"
cache_dir = "{cache}"
tftp_port = {tftp_port}
nfs_port = {nfs_port}
http_port = {http_port}
background_fill = false
portmapper = false

[dhcp]
mode = "full"
pool_start = "{pool_start}"
pool_end = "{pool_end}"

[profile]
prefetch = false

[defaults]
unknown_nodes = "defaults"
image = "{image}"
kind = "ipxe"
root = "readonly"
"#,
                host_if = self.lab.host_if,
                server = self.lab.server_ip,
                state = dir.join("state").display(),
                cache = cache.display(),
                image = self.image,
            ),
        )?;
        // info, not debug: a line per NFS call of 200 nodes would be the
        // server's main work.
        let server = Serve::new(&config).rust_log("lazyboot=info").start()?;
        Ok(Servers {
            target: Target {
                server: self.lab.server_ip,
                tftp_port,
                nfs_port,
                mount_port: nfs_port,
                export: "/nodes/node-{mac}".into(),
            },
            pids: vec![server.pid()],
            http_port: Some(http_port),
            lazyboot: Some(server),
            dnsmasq: None,
            ganesha: None,
        })
    }

    /// dnsmasq (DHCP from the same pool, TFTP of the image's kernel and
    /// initrd and a boot.ipxe naming them) and nfs-ganesha exporting the
    /// unpacked image.
    pub fn baseline(&self, name: &str) -> Result<Servers> {
        let dir = self.work.join(name);
        let _ = fs::remove_dir_all(&dir);
        let tftp = dir.join("tftp");
        fs::create_dir_all(&tftp)?;
        let mut script = String::from("#!ipxe\n");
        for step in &self.rec.steps {
            if let super::storm::Action::Tftp { file } = &step.action {
                if file.ends_with(".ipxe") {
                    continue;
                }
                fs::copy(self.rootfs.join("boot").join(file), tftp.join(file))
                    .with_context(|| format!("copying /boot/{file}"))?;
                let verb = if file.starts_with("vmlinuz") {
                    "kernel"
                } else {
                    "initrd"
                };
                script.push_str(&format!("{verb} tftp://{}/{file}\n", self.lab.server_ip));
            }
        }
        script.push_str("boot\n");
        fs::write(tftp.join("boot.ipxe"), script)?;
        let (pool_start, pool_end) = self.pool();
        // --no-ping: the pool's addresses all answer pings (they sit on the
        // client interface), which would make dnsmasq offer none.
        let mut dnsmasq = Command::new("dnsmasq")
            .arg("--conf-file=/dev/null")
            .args(["--port=0", "--keep-in-foreground", "--user=root"])
            .arg(format!(
                "--log-facility={}",
                dir.join("dnsmasq.log").display()
            ))
            .arg(format!("--interface={}", self.lab.host_if))
            .args(["--bind-interfaces", "--except-interface=lo", "--no-ping"])
            .args(["--quiet-dhcp", "--quiet-tftp", "--tftp-max=1024"])
            .arg(format!(
                "--dhcp-range={pool_start},{pool_end},255.255.255.0,1h"
            ))
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .args(["--dhcp-boot=boot.ipxe", "--enable-tftp"])
            .arg(format!("--tftp-root={}", tftp.display()))
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("dnsmasq.out"))?)
            .stderr(File::create(dir.join("dnsmasq.err"))?)
            .spawn()
            .context("starting dnsmasq")?;
        let started = Instant::now();
        while !super::storm_wire::udp_port_taken(self.lab.server_ip, 69) {
            if let Some(st) = dnsmasq.try_wait()? {
                bail!(
                    "dnsmasq exited ({st}): {}",
                    fs::read_to_string(dir.join("dnsmasq.err")).unwrap_or_default()
                );
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = dnsmasq.kill();
                bail!("dnsmasq does not listen on TFTP after 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let ganesha = Ganesha::start(self.lab.server_ip, &self.rootfs, &dir.join("ganesha"))?;
        Ok(Servers {
            target: Target {
                server: self.lab.server_ip,
                tftp_port: 69,
                nfs_port: ganesha.nfs_port,
                mount_port: ganesha.mount_port,
                export: ganesha.export.display().to_string(),
            },
            pids: vec![dnsmasq.id(), ganesha.pid()],
            http_port: None,
            lazyboot: None,
            dnsmasq: Some(dnsmasq),
            ganesha: Some(ganesha),
        })
    }
}

/// A cache directory holding `from`'s layer indexes and no chunk (no
/// prefetch plan either): a cold cache for an image already indexed.
pub fn index_only_cache(from: &Path, to: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(to);
    fs::create_dir_all(to.join("index"))?;
    let mut n = 0;
    for e in
        fs::read_dir(from.join("index")).with_context(|| format!("{}/index", from.display()))?
    {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "idx") {
            fs::copy(&p, to.join("index").join(p.file_name().unwrap()))?;
            n += 1;
        }
    }
    if n == 0 {
        bail!("no layer index in {}/index", from.display());
    }
    Ok(())
}
