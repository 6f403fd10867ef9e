//! A throw-away `docker-registry` (distribution 2.x) on 127.0.0.1.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// How long `start`/`restart` wait for `GET /v2/` to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A `docker-registry serve` child process with filesystem storage in a
/// temporary directory. The process is killed when the value is dropped.
pub struct Registry {
    pub port: u16,
    /// `127.0.0.1:PORT`
    pub addr: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Network namespace the registry runs in (see [`Registry::start_in_netns`]).
    netns: Option<String>,
    /// The upstream a pull-through mirror proxies (see [`Registry::start_mirror`]).
    upstream: Option<String>,
}

impl Registry {
    /// Start a registry on a free port and wait until `/v2/` answers.
    pub fn start() -> Result<Registry> {
        Registry::start_on_free_port(Registry::stopped(None)?)
    }

    /// A pull-through mirror of `upstream` (distribution's `proxy`
    /// section) on a free port: it fetches what it is asked for from the
    /// upstream once, keeps it in its own storage, and is read-only.
    pub fn start_mirror(upstream: &Registry) -> Result<Registry> {
        let mut reg = Registry::stopped(None)?;
        reg.upstream = Some(upstream.url());
        Registry::start_on_free_port(reg)
    }

    fn start_on_free_port(mut reg: Registry) -> Result<Registry> {
        // The free port is found by binding port 0 and closing it again, so
        // another process may grab it in between: retry with a new port.
        let mut last_err = None;
        for _ in 0..5 {
            reg.port = free_port()?;
            reg.addr = format!("127.0.0.1:{}", reg.port);
            reg.write_config()?;
            match reg.spawn_and_wait() {
                Ok(()) => return Ok(reg),
                Err(e) => {
                    reg.kill();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("registry did not start")))
    }

    /// A registry inside network namespace `ns`, listening on `ip:5000`
    /// (reached from the host through the namespace's link, e.g. a
    /// shaped one: see [`super::shaped::ShapedRegistry`]).
    pub fn start_in_netns(ns: &str, ip: std::net::Ipv4Addr) -> Result<Registry> {
        let mut reg = Registry::stopped(Some(ns.to_string()))?;
        reg.port = 5000;
        reg.addr = format!("{ip}:5000");
        reg.write_config()?;
        reg.spawn_and_wait()?;
        Ok(reg)
    }

    /// Empty storage in a temporary directory, no address, not running.
    fn stopped(netns: Option<String>) -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("lazyboot-registry.")
            .tempdir()
            .context("creating registry temp dir")?;
        fs::create_dir_all(dir.path().join("storage"))?;
        Ok(Registry {
            port: 0,
            addr: String::new(),
            dir,
            child: None,
            netns,
            upstream: None,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT/REPO:TAG`, the form skopeo and lazyboot take.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{}", self.addr, repo_tag)
    }

    /// Root of the registry's filesystem storage.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's own log (stdout and stderr of the child).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// On-disk file holding a blob (`sha256:HEX` or bare `HEX`), so tests can
    /// corrupt or delete it.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let prefix = hex.get(..2).unwrap_or(hex);
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(prefix)
            .join(hex)
            .join("data")
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kill the registry (SIGKILL, like a crash). Storage is kept. Idempotent.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Start again on the same port with the same storage.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        // The port was ours a moment ago; the Go listener sets SO_REUSEADDR,
        // but give a freshly killed process's socket a few tries anyway.
        let mut last_err = None;
        for _ in 0..10 {
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.kill();
                    last_err = Some(e);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        Err(last_err.unwrap())
    }

    /// SIGSTOP the registry: connections are accepted by the kernel but never
    /// answered (for timeout tests). Undo with [`Registry::resume`].
    pub fn pause(&mut self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    pub fn resume(&mut self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// GET a manifest with the usual Accept headers (via curl).
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<serde_json::Value> {
        let url = format!("{}/v2/{}/manifests/{}", self.url(), repo, reference);
        let body = super::curl_get(
            &url,
            &[
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
            ],
        )?;
        serde_json::from_slice(&body).with_context(|| format!("manifest from {url} is not JSON"))
    }

    /// GET a blob (via curl).
    pub fn get_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>> {
        super::curl_get(&format!("{}/v2/{}/blobs/{}", self.url(), repo, digest), &[])
    }

    fn signal(&mut self, sig: libc::c_int) -> Result<()> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("registry is not running"))?;
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        if rc != 0 {
            bail!("kill({sig}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    fn write_config(&self) -> Result<()> {
        let mut cfg = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: lazyboot-integration-tests\n\
             health:\n  storagedriver:\n    enabled: false\n",
            root = self.storage_dir().display(),
            addr = self.addr,
        );
        if let Some(url) = &self.upstream {
            cfg.push_str(&format!("proxy:\n  remoteurl: {url}\n"));
        }
        fs::write(self.config_path(), cfg).context("writing registry config")
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "docker-registry"]);
                c
            }
            None => Command::new("docker-registry"),
        };
        cmd.arg("serve")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Environment variables override the config file; keep ours.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().context("spawning docker-registry")?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(c) = &mut self.child {
                if let Some(status) = c.try_wait()? {
                    self.child = None;
                    bail!(
                        "docker-registry exited early ({status}) on {}; log:\n{}",
                        self.addr,
                        self.log()
                    );
                }
            }
            if let Ok((200, _)) = http_get_status(&self.addr, "/v2/") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry on {} not ready after {:?}; log:\n{}",
                    self.addr,
                    READY_TIMEOUT,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: SIGCONT first so a paused child can die; both are
            // plain kill(2) calls on our own child.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Minimal HTTP/1.0 GET over a raw socket; returns (status, body).
pub fn http_get_status(addr: &str, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    s.flush()?;
    let _ = s.shutdown(Shutdown::Write);
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header end"))?;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("bad status line: {head}"))?
        .parse()?;
    Ok((status, buf[head_end + 4..].to_vec()))
}
