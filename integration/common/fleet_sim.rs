//! Scripted nodes for the fleet tests: each one "reboots" when its reboot
//! command (a real `touch` that lazyboot runs) creates its request file,
//! and then boots the way a netbooting machine does, over the lab's
//! network from its own address: DHCP (the scripted client, with the
//! node's MAC), an NFS mount of its root and a read of `/etc/os-release`,
//! then the `booted` callback. A root whose os-release says `PANIC` plays a
//! kernel that panics: the node goes silent and never reports booted.
//! A node that boots writes `/etc/written-by-VERSION` into its root and
//! notes which such files it found: what its persistent upper holds.

use super::dhcpc::run_client_in;
use super::netns::NetLab;
use super::nfsrpc::Client;
use anyhow::{anyhow, Context, Result};
use parking_lot::Mutex;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct SimNode {
    pub name: String,
    pub mac: String,
    pub ip: Ipv4Addr,
}

/// One boot a scripted node made.
#[derive(Clone, Debug)]
pub struct SimBoot {
    pub node: String,
    pub started: Instant,
    pub ended: Instant,
    /// `/etc/os-release` as the node read it over NFS.
    pub os_release: String,
    /// It said it booted (false: it "panicked" or failed).
    pub booted: bool,
    /// The versions whose `/etc/written-by-VERSION` it found in its root
    /// (each boot that gets that far writes its own: the persistent upper).
    pub saw: Vec<String>,
    pub error: Option<String>,
}

pub struct FleetSim {
    /// Where reboot commands drop their request files.
    pub requests: PathBuf,
    pub boots: Arc<Mutex<Vec<SimBoot>>>,
    /// Nodes that ignore reboot requests while named here.
    pub held: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// The versions whose marker files a node looks for.
pub const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];

#[derive(Clone, Copy)]
pub struct SimServer {
    pub ip: Ipv4Addr,
    pub nfs_port: u16,
    pub http_port: u16,
}

impl FleetSim {
    /// Start a thread per node; each node's address is added to the lab's
    /// client interface.
    pub fn start(
        lab: &NetLab,
        requests: PathBuf,
        nodes: &[SimNode],
        srv: SimServer,
    ) -> Result<FleetSim> {
        std::fs::create_dir_all(&requests)?;
        let boots: Arc<Mutex<Vec<SimBoot>>> = Arc::default();
        let held: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for n in nodes {
            lab.add_client_ip(n.ip)?;
            let (n, boots, held, stop) = (n.clone(), boots.clone(), held.clone(), stop.clone());
            let (ns, iface, requests) = (lab.ns.clone(), lab.client_if.clone(), requests.clone());
            threads.push(std::thread::spawn(move || {
                let request = requests.join(format!("reboot-{}", n.name));
                while !stop.load(Ordering::SeqCst) {
                    if request.exists() && !held.lock().contains(&n.name) {
                        let _ = std::fs::remove_file(&request);
                        let b = boot(&ns, &iface, &n, &srv);
                        eprintln!(
                            "[sim] {} booted={} {:?} {}",
                            n.name,
                            b.booted,
                            b.os_release.lines().next().unwrap_or(""),
                            b.error.as_deref().unwrap_or("")
                        );
                        boots.lock().push(b);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }));
        }
        Ok(FleetSim {
            requests,
            boots,
            held,
            stop,
            threads,
        })
    }

    /// Ask `name` to reboot, as its reboot command would.
    pub fn reboot(&self, name: &str) -> Result<()> {
        std::fs::write(self.requests.join(format!("reboot-{name}")), b"")?;
        Ok(())
    }

    /// The boots of `name` so far.
    pub fn boots_of(&self, name: &str) -> Vec<SimBoot> {
        self.boots
            .lock()
            .iter()
            .filter(|b| b.node == name)
            .cloned()
            .collect()
    }

    /// Wait until `name` has made `n` boots.
    pub fn wait_boots(&self, name: &str, n: usize, timeout: Duration) -> Result<Vec<SimBoot>> {
        let deadline = Instant::now() + timeout;
        loop {
            let b = self.boots_of(name);
            if b.len() >= n {
                return Ok(b);
            }
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "{name} made {} boot(s), not {n}, in {timeout:?}",
                    b.len()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for FleetSim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn boot(ns: &str, iface: &str, n: &SimNode, srv: &SimServer) -> SimBoot {
    let started = Instant::now();
    let r = (|| -> Result<(String, bool, Vec<String>)> {
        // A PXE ROM's request: that is what starts a boot in lazyboot.
        let ack = run_client_in(
            ns,
            iface,
            "dora",
            &[
                "--mac",
                &n.mac,
                "--timeout",
                "5",
                "--opt",
                "60=s:PXEClient:Arch:00000:UNDI:002001",
                "--opt",
                "93=h:0000",
            ],
        )?;
        let yiaddr = ack["ack"]["yiaddr"].as_str().unwrap_or_default();
        if yiaddr != n.ip.to_string() {
            return Err(anyhow!("DHCP gave {yiaddr:?}, not {}: {ack}", n.ip));
        }
        let mut c = Client::connect_in_netns(ns, n.ip, SocketAddr::from((srv.ip, srv.nfs_port)))?;
        let root = c
            .mnt(&format!("/nodes/{}", n.name))
            .map_err(|e| anyhow!("mount: {e}"))?;
        let fh = c
            .walk(&root, "etc/os-release")
            .map_err(|e| anyhow!("lookup /etc/os-release: {e:?}"))?;
        let text = c
            .read_all(&fh)
            .map_err(|e| anyhow!("read /etc/os-release: {e:?}"))?;
        let text = String::from_utf8_lossy(&text).into_owned();
        if text.contains("PANIC") {
            return Ok((text, false, Vec::new()));
        }
        let etc = c
            .walk(&root, "etc")
            .map_err(|e| anyhow!("lookup /etc: {e:?}"))?;
        let saw: Vec<String> = VERSIONS
            .iter()
            .filter(|v| c.lookup(&etc, format!("written-by-{v}").as_bytes()).is_ok())
            .map(|v| v.to_string())
            .collect();
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("VERSION="))
            .unwrap_or("unknown");
        let name = format!("written-by-{version}");
        if !saw.iter().any(|v| v == version) {
            c.create(&etc, name.as_bytes(), 0o644, (0, 0))
                .map_err(|e| anyhow!("create /etc/{name}: {e:?}"))?;
        }
        let url = format!(
            "http://{}:{}/api/v1/nodes/{}/booted",
            srv.ip, srv.http_port, n.name
        );
        let ip = n.ip.to_string();
        let (code, body) =
            super::curl_status(Some(ns), &["--interface", &ip], &url).context("booted callback")?;
        if code != 200 {
            return Err(anyhow!("booted callback: {code} {body}"));
        }
        Ok((text, true, saw))
    })();
    let ended = Instant::now();
    match r {
        Ok((os_release, booted, saw)) => SimBoot {
            node: n.name.clone(),
            started,
            ended,
            os_release,
            booted,
            saw,
            error: None,
        },
        Err(e) => SimBoot {
            node: n.name.clone(),
            started,
            ended,
            os_release: String::new(),
            booted: false,
            saw: Vec::new(),
            error: Some(format!("{e:#}")),
        },
    }
}
