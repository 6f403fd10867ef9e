//! A registry behind a link of limited bandwidth: `docker-registry` in a
//! network namespace of its own, joined to the host by a veth pair whose
//! namespace end shapes what the registry sends with `tc qdisc tbf` (as
//! `scripts/bench-boot` does; netem is not available here). The qdisc's
//! counters are the registry's own count of what it sent.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{qemu::subnet_in_use, run, Registry};

pub struct ShapedRegistry {
    // Dropped first: the registry stops before its namespace goes.
    pub registry: Registry,
    link: Link,
}

/// The namespace and veth pair of the link; removed on drop, also when
/// setting them up failed half way.
struct Link {
    ns: String,
    host_if: String,
    ns_if: String,
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

impl ShapedRegistry {
    /// A registry at 10.219.N.2:5000 whose replies leave at `rate` (tc
    /// syntax: `100mbit`).
    pub fn start(rate: &str) -> Result<ShapedRegistry> {
        let first = std::process::id() % 250;
        for k in 0..250 {
            let n = ((first + k) % 250 + 1) as u8;
            let host_ip = Ipv4Addr::new(10, 219, n, 1);
            if subnet_in_use(host_ip)? {
                continue;
            }
            let link = Link {
                ns: format!("lbreg{n}"),
                host_if: format!("lbrh{n}"),
                ns_if: format!("lbrn{n}"),
            };
            if !Command::new("ip")
                .args(["netns", "add", &link.ns])
                .output()?
                .status
                .success()
            {
                // Someone else's: not ours to delete.
                std::mem::forget(link);
                continue;
            }
            let Link { ns, host_if, ns_if } = &link;
            run(Command::new("sh").arg("-c").arg(format!(
                "set -e
ip link add {host_if} type veth peer name {ns_if}
ip link set {ns_if} netns {ns}
ip addr add {host_ip}/24 dev {host_if}
ip link set {host_if} up
ip -n {ns} addr add 10.219.{n}.2/24 dev {ns_if}
ip -n {ns} link set {ns_if} up
ip -n {ns} link set lo up
ip netns exec {ns} tc qdisc add dev {ns_if} root tbf rate {rate} burst 256kb latency 100ms"
            )))
            .context("setting up the shaped link")?;
            let registry = Registry::start_in_netns(ns, Ipv4Addr::new(10, 219, n, 2))?;
            return Ok(ShapedRegistry { registry, link });
        }
        bail!("no free 10.219.N.0/24 for a shaped registry link")
    }

    /// Bytes the registry has sent over the link (the tbf qdisc's count:
    /// payload plus TCP/IP and Ethernet headers).
    pub fn sent_bytes(&self) -> Result<u64> {
        let out = run(Command::new("ip").args([
            "netns",
            "exec",
            &self.link.ns,
            "tc",
            "-s",
            "qdisc",
            "show",
            "dev",
            &self.link.ns_if,
        ]))?;
        let text = String::from_utf8_lossy(&out);
        let sent = text
            .split_whitespace()
            .skip_while(|w| *w != "Sent")
            .nth(1)
            .context("no 'Sent' in tc -s output")?;
        Ok(sent.parse()?)
    }

    /// `10.219.N.2:5000/REPO:TAG`
    pub fn reference(&self, repo_tag: &str) -> String {
        self.registry.reference(repo_tag)
    }
}
