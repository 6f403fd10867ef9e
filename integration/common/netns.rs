//! A private test network: one veth pair whose host end stays in the test's
//! own namespace (so the server under test can still reach the registry on
//! 127.0.0.1) and whose other end lives in a fresh network namespace that
//! plays the booting machines. Everything is removed on drop.

use super::ip;
use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetLab {
    /// Client namespace name (`ip netns exec NAME ...`).
    pub ns: String,
    /// Host-side interface: the server binds here.
    pub host_if: String,
    /// Interface inside the namespace.
    pub client_if: String,
    pub server_ip: Ipv4Addr,
    /// The first client address (more can be added with `add_client_ip`).
    pub client_ip: Ipv4Addr,
    pub subnet: u8,
}

impl NetLab {
    /// A lab whose client end has `client_ip` configured (`with_address`), or
    /// no address at all (a machine that has not done DHCP yet).
    pub fn new(with_address: bool) -> Result<NetLab> {
        // Distinct per process and per lab, so parallel tests do not collide.
        // Use the value fetched, never a re-read: parallel tests in one
        // process must get distinct names.
        let seq = NEXT.fetch_add(1, Ordering::SeqCst);
        let n = (std::process::id() % 200) * 7 + seq;
        let subnet = (n % 250) as u8 + 1;
        let tag = format!("{:x}{seq}", std::process::id());
        let lab = NetLab {
            ns: format!("lbt{tag}"),
            host_if: format!("lbh{tag}"),
            client_if: format!("lbc{tag}"),
            server_ip: Ipv4Addr::new(10, 213, subnet, 1),
            client_ip: Ipv4Addr::new(10, 213, subnet, 2),
            subnet,
        };
        ip(&["netns", "add", &lab.ns])?;
        ip(&[
            "link",
            "add",
            &lab.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &lab.client_if,
        ])?;
        ip(&["link", "set", &lab.client_if, "netns", &lab.ns])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lab.server_ip),
            "dev",
            &lab.host_if,
        ])?;
        ip(&["link", "set", &lab.host_if, "up"])?;
        ip(&["-n", &lab.ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &lab.ns, "link", "set", &lab.client_if, "up"])?;
        if with_address {
            lab.add_client_ip(lab.client_ip)?;
        }
        Ok(lab)
    }

    pub fn add_client_ip(&self, addr: Ipv4Addr) -> Result<()> {
        ip(&[
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &self.client_if,
        ])
    }

    /// The MAC of the client interface.
    pub fn client_mac(&self) -> Result<String> {
        let out = Command::new("ip")
            .args(["-n", &self.ns, "-o", "link", "show", &self.client_if])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_string)
            .context("no MAC on the client interface")
    }

    /// Set the client interface's MAC (to play a Raspberry Pi, say).
    pub fn set_client_mac(&self, mac: &str) -> Result<()> {
        ip(&[
            "-n",
            &self.ns,
            "link",
            "set",
            &self.client_if,
            "address",
            mac,
        ])
    }

    /// The config parts of a `serve` on this lab (free ports, files under
    /// `work`), for [`LabConfig::text`](super::serve::LabConfig::text).
    pub fn serve_config<'a>(&'a self, work: &'a Path) -> super::serve::LabConfig<'a> {
        super::serve::LabConfig {
            interface: &self.host_if,
            server: self.server_ip,
            net: format!("10.213.{}", self.subnet),
            work,
            tftp_port: super::free_udp_port(),
            nfs_port: super::free_tcp_port(),
            http_port: Some(super::free_tcp_port()),
        }
    }

    /// A command run inside the client namespace.
    pub fn client(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}
