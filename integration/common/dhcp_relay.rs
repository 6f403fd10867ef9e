//! A routed lab for DHCP through a relay agent: three network namespaces,
//! the server's, a router's and a client's, joined by two veth pairs.
//!
//! ```text
//!  server ns                 router ns                  client ns
//!  srv0 10.218.4.1/24 ---- rup0 10.218.4.2/24
//!                            rdn0 10.218.5.1/24 ---- cli0 (no address)
//! ```
//!
//! The router forwards IPv4 and runs Debian's ISC `dhcrelay`
//! ([`RelayLab::start_relay`]): DHCP broadcasts on the client's link go to
//! the server by unicast with giaddr 10.218.5.1, and the server's replies
//! come back the same way. The server namespace routes 10.218.5.0/24
//! through the router; the client gets its address and default route from
//! DHCP ([`RelayLab::configure_client`]). Everything lives in the
//! namespaces, so the host's own network is untouched and labs of parallel
//! tests do not meet; on drop `dhcrelay` is stopped and the namespaces
//! (with their interfaces and routes) are deleted.

use super::ip;
use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long `dhcrelay` may take to open its sockets.
const RELAY_READY: Duration = Duration::from_secs(20);

pub struct RelayLab {
    /// Namespace of the server under test.
    pub server_ns: String,
    /// Namespace of the router that runs the relay agent.
    pub relay_ns: String,
    /// Namespace of the booting machine.
    pub client_ns: String,
    /// The server's interface (in `server_ns`).
    pub server_if: &'static str,
    /// The client's interface (in `client_ns`).
    pub client_if: &'static str,
    /// The server's address on its link.
    pub server_ip: Ipv4Addr,
    /// The router's address on the server's link.
    pub relay_upstream_ip: Ipv4Addr,
    /// The router's address on the client's link: giaddr, and the
    /// client subnet's gateway.
    pub relay_ip: Ipv4Addr,
    relay: Option<Child>,
    relay_log: Option<PathBuf>,
}

/// The client's subnet, behind the relay.
pub const CLIENT_NET: &str = "10.218.5.0/24";

impl RelayLab {
    pub fn new() -> Result<RelayLab> {
        let seq = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{:x}{seq}", std::process::id());
        let lab = RelayLab {
            server_ns: format!("lbrs{tag}"),
            relay_ns: format!("lbrr{tag}"),
            client_ns: format!("lbrc{tag}"),
            server_if: "srv0",
            client_if: "cli0",
            server_ip: Ipv4Addr::new(10, 218, 4, 1),
            relay_upstream_ip: Ipv4Addr::new(10, 218, 4, 2),
            relay_ip: Ipv4Addr::new(10, 218, 5, 1),
            relay: None,
            relay_log: None,
        };
        // Built before any step can fail: dropping it removes what exists.
        for ns in [&lab.server_ns, &lab.relay_ns, &lab.client_ns] {
            ip(&["netns", "add", ns])?;
        }
        let (s, r, c) = (&lab.server_ns, &lab.relay_ns, &lab.client_ns);
        ip(&[
            "-n", s, "link", "add", "srv0", "type", "veth", "peer", "name", "rup0", "netns", r,
        ])?;
        ip(&[
            "-n", r, "link", "add", "rdn0", "type", "veth", "peer", "name", "cli0", "netns", c,
        ])?;
        ip(&["-n", s, "addr", "add", "10.218.4.1/24", "dev", "srv0"])?;
        ip(&["-n", r, "addr", "add", "10.218.4.2/24", "dev", "rup0"])?;
        ip(&["-n", r, "addr", "add", "10.218.5.1/24", "dev", "rdn0"])?;
        for (ns, dev) in [
            (s, "lo"),
            (s, "srv0"),
            (r, "lo"),
            (r, "rup0"),
            (r, "rdn0"),
            (c, "lo"),
            (c, "cli0"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&["-n", s, "route", "add", CLIENT_NET, "via", "10.218.4.2"])?;
        super::run(
            Command::new("ip")
                .args(["netns", "exec", r, "sysctl", "-q", "-w"])
                .arg("net.ipv4.ip_forward=1"),
        )?;
        Ok(lab)
    }

    /// Start `dhcrelay -4 -d ARGS -id rdn0 -iu rup0 SERVER` in the router
    /// namespace, its output in `log`; returns once it listens.
    pub fn start_relay(&mut self, args: &[&str], log: &Path) -> Result<()> {
        let out = std::fs::File::create(log)?;
        let pid_file = log.with_extension("pid");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.relay_ns, "dhcrelay", "-4", "-d"])
            .args(args)
            .arg("-pf")
            .arg(&pid_file)
            .args(["-id", "rdn0", "-iu", "rup0"])
            .arg(self.server_ip.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting dhcrelay")?;
        self.relay = Some(child);
        self.relay_log = Some(log.to_path_buf());
        let deadline = Instant::now() + RELAY_READY;
        // Its last line at start-up: the socket it sends to the server on.
        while !self.relay_output().contains("Socket/fallback") {
            if let Some(status) = self
                .relay
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("dhcrelay exited ({status}):\n{}", self.relay_output());
            }
            if Instant::now() > deadline {
                bail!(
                    "dhcrelay not ready in {RELAY_READY:?}:\n{}",
                    self.relay_output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// What `dhcrelay` has printed so far.
    pub fn relay_output(&self) -> String {
        self.relay_log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// A command run inside the client namespace.
    pub fn client(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.client_ns, program]);
        c
    }

    /// Give the client the address, prefix length and default route DHCP
    /// gave it, as its firmware would.
    pub fn configure_client(
        &self,
        addr: Ipv4Addr,
        prefix_len: u32,
        router: Ipv4Addr,
    ) -> Result<()> {
        let c = &self.client_ns;
        ip(&[
            "-n",
            c,
            "addr",
            "add",
            &format!("{addr}/{prefix_len}"),
            "dev",
            "cli0",
        ])?;
        ip(&[
            "-n",
            c,
            "route",
            "add",
            "default",
            "via",
            &router.to_string(),
        ])
    }
}

impl Drop for RelayLab {
    fn drop(&mut self) {
        if let Some(mut child) = self.relay.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.client_ns, &self.relay_ns, &self.server_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
