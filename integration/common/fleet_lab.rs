//! The fleet lab shared by the tests of the fleet API (`fleet`, `openapi`):
//! a real registry, a lab network, three nodes `n1`..`n3` in one
//! `[[groups]]` named `lab` whose reboot command drops a request file for
//! the scripted nodes of [`super::fleet_sim`], and helpers to call the API.

use super::fixture::push;
use super::fleet_sim::{FleetSim, SimNode, SimServer};
use super::netboot::one_layer_image;
use super::netns::NetLab;
use super::registry::Registry;
use super::serve::Server;
use anyhow::{bail, Result};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

pub const TOKEN: &str = "fleet-test-token-0123456789";

/// A one-layer image whose /etc/os-release says `version`, pushed as
/// `fleet:TAG` for each tag given.
pub fn image(dir: &Path, reg: &Registry, version: &str, tags: &[&str]) -> Result<()> {
    let d = dir.join(format!("img-{version}"));
    std::fs::create_dir_all(&d)?;
    one_layer_image(
        &d,
        &format!(
            "mkdir -p $r/etc && printf 'NAME=fleet\\nVERSION={version}\\n' > $r/etc/os-release"
        ),
    )?;
    for t in tags {
        push(&d.join("layout"), "os", reg, &format!("fleet:{t}"))?;
    }
    Ok(())
}

pub struct Lab {
    pub tmp: tempfile::TempDir,
    pub reg: Registry,
    pub lab: NetLab,
    pub nodes: Vec<SimNode>,
    pub http_port: u16,
    pub nfs_port: u16,
    pub config: std::path::PathBuf,
}

/// `server_extra`: more lines for the `[server]` table, given the lab's
/// network.
pub fn lab(follow: bool, server_extra: impl FnOnce(&NetLab) -> String) -> Result<Lab> {
    let tmp = tempfile::tempdir()?;
    let reg = Registry::start()?;
    let lab = NetLab::new(false)?;
    let server_extra = server_extra(&lab);
    let base = lab.server_ip.octets();
    let nodes: Vec<SimNode> = (1..=3u8)
        .map(|i| SimNode {
            name: format!("n{i}"),
            mac: format!("52:54:00:f1:00:0{i}"),
            ip: Ipv4Addr::new(base[0], base[1], base[2], 10 + i),
        })
        .collect();
    let (http_port, nfs_port) = (super::free_tcp_port(), super::free_tcp_port());
    let requests = tmp.path().join("requests");
    let mut cfg = format!(
        r#"
[server]
interface = "{host_if}"
address = "{server}"
state_dir = "{state}"
cache_dir = "{cache}"
tftp_port = {tftp}
nfs_port = {nfs_port}
http_port = {http_port}
api_token = "{TOKEN}"
{server_extra}

[dhcp]
mode = "full"
pool_start = "{pool_start}"
pool_end = "{pool_end}"

[profile]
quiet_secs = 0

[[groups]]
name = "lab"
follow = {follow}
poll_secs = 1
max_unavailable = 1
boot_timeout_secs = 20
hook_timeout_secs = 10
reboot = ["/usr/bin/touch", "{req}/reboot-{{name}}", "{req}/literal-{{name}}-$(id);x"]
"#,
        host_if = lab.host_if,
        server = lab.server_ip,
        state = tmp.path().join("state").display(),
        cache = tmp.path().join("cache").display(),
        tftp = super::free_udp_port(),
        pool_start = Ipv4Addr::new(base[0], base[1], base[2], 100),
        pool_end = Ipv4Addr::new(base[0], base[1], base[2], 150),
        req = requests.display(),
    );
    for n in &nodes {
        cfg.push_str(&format!(
            "\n[[nodes]]\nname = \"{}\"\nmac = \"{}\"\nkind = \"ipxe\"\nimage = \"{}\"\nip = \"{}\"\nroot = \"persistent\"\ngroup = \"lab\"\n",
            n.name,
            n.mac,
            reg.reference("fleet:live"),
            n.ip
        ));
    }
    let config = tmp.path().join("lazyboot.toml");
    std::fs::write(&config, cfg)?;
    Ok(Lab {
        tmp,
        reg,
        lab,
        nodes,
        http_port,
        nfs_port,
        config,
    })
}

impl Lab {
    pub fn sim(&self) -> Result<FleetSim> {
        FleetSim::start(
            &self.lab,
            self.tmp.path().join("requests"),
            &self.nodes,
            SimServer {
                ip: self.lab.server_ip,
                nfs_port: self.nfs_port,
                http_port: self.http_port,
            },
        )
    }

    pub fn api(&self, path: &str) -> String {
        format!(
            "http://{}:{}/api/v1{path}",
            self.lab.server_ip, self.http_port
        )
    }

    /// GET with the token.
    pub fn get(&self, path: &str) -> Result<Value> {
        let auth = format!("Authorization: Bearer {TOKEN}");
        let (code, body) = super::curl_status(None, &["-H", &auth], &self.api(path))?;
        if code != 200 {
            bail!("GET {path}: {code} {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// A call with `args` (method, headers, body); status and JSON body.
    pub fn call(&self, args: &[&str], path: &str) -> Result<(u16, Value)> {
        let (code, body) = super::curl_status(None, args, &self.api(path))?;
        let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
        Ok((code, v))
    }

    pub fn node(&self, name: &str) -> Result<Value> {
        self.get(&format!("/nodes/{name}"))
    }

    /// The manifest digest `fleet:TAG` names in the registry.
    pub fn digest_of(&self, tag: &str) -> Result<String> {
        let out = super::run(
            std::process::Command::new("skopeo")
                .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
                .arg(format!(
                    "docker://{}",
                    self.reg.reference(&format!("fleet:{tag}"))
                )),
        )?;
        Ok(String::from_utf8(out)?.trim().to_string())
    }

    /// The lazyboot CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Result<(bool, String)> {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lazyboot"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }
}

/// Wait until `f` gives Some, or fail with the server's log.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    srv: &Server,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!(
                "timed out waiting for {what}\nserver log:\n{}",
                super::tail(&srv.log(), 60)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
