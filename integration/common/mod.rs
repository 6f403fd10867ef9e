//! Shared harness for lazyboot's integration tests. Use it from a test with
//! `mod common;` (each `[[test]]` target compiles its own copy, so not every
//! item is used everywhere).
//!
//! - [`Registry`]: a throw-away `docker-registry` on 127.0.0.1 that can be
//!   stopped, restarted, paused, and whose blobs can be corrupted on disk.
//! - [`build_fixture`], [`shared_fixture`], [`push`], [`umoci_unpack`]: the
//!   multi-layer test image and its reference view; [`push_platforms`] for one
//!   tag over several platforms.
//! - [`snapshot`], [`compare`]: record a tree (types, modes, owners, sizes,
//!   content hashes, symlink targets, devices, xattrs, hard links, mtimes) and
//!   list the differences between two trees.
//! - [`nfsrpc`]: a raw NFSv3 + MOUNT client over TCP, also from inside a
//!   [`netns::NetLab`] namespace from a chosen node address.
//! - [`serve`]: `lazyboot serve` as a child process ([`serve::Serve`],
//!   [`serve::Server`]) and library servers in a runtime of their own
//!   ([`serve::InProcess`]); every test runs its servers through it.
//! - [`faults::FaultyRegistry`]: a proxy in front of a registry that
//!   injects outages, dropped connections, stalls, revoked tokens and
//!   redirects to blob storage, and counts each.
//! - [`held`]: an image whose streaming pass is held mid-layer by a
//!   [`gate::Gate`] proxy, for what is served before a pass ends.
//! - [`dhcp_relay::RelayLab`]: server, router and client namespaces with
//!   ISC `dhcrelay` on the router, for DHCP through a relay agent.
//! - [`browser::Chromium`]: headless Chromium's DOM dump and screenshot of
//!   a page, and the PNG decoded.
//! - [`fleet_lab`], [`fleet_sim`]: a served group of scripted nodes that
//!   boot over a lab network, for the fleet API's tests.
//! - [`storm`], [`storm_wire`], [`storm_lab`]: a boot storm, hundreds of
//!   simulated nodes replaying a recorded boot at once (DHCP, TFTP, NFS)
//!   against `lazyboot serve` or dnsmasq + nfs-ganesha.
//! - [`openapi`]: `docs/openapi.json` as a checker of the API's replies.
//! - [`pi`]: the Raspberry Pi boot replay client and checks of its replies.
//! - [`nfsroot`], [`tempfs`], [`netboot`], [`qemu`]: the labs shared by the
//!   test targets of one theme (NFS roots, the NFS protocol, `serve`, QEMU).
//! - [`riscv64`]: the riscv64 kernel (built from Debian's source, cached)
//!   and image.
#![allow(dead_code, unused_imports)]

pub mod browser;
pub mod debian;
pub mod dhcp_relay;
pub mod dhcpc;
pub mod faults;
pub mod fixture;
pub mod fleet_lab;
pub mod fleet_sim;
pub mod ganesha;
pub mod gate;
pub mod held;
pub mod mount;
pub mod netboot;
pub mod netns;
pub mod nfsroot;
pub mod nfsrpc;
pub mod openapi;
pub mod pi;
pub mod pjdfstest;
pub mod qemu;
pub mod registry;
pub mod relay;
pub mod riscv64;
pub mod serve;
pub mod shaped;
pub mod snapshot;
pub mod storm;
pub mod storm_lab;
pub mod storm_wire;
pub mod tempfs;

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

pub use fixture::{
    build_fixture, build_fixture_with, layout_blob, layout_manifest, paths, push, push_platforms,
    shared_fixture, umoci_unpack, Fixture,
};
pub use registry::Registry;
pub use snapshot::{
    assert_same, compare, compare_with, snapshot, CompareOptions, Entry, Kind, Snapshot,
};

/// Tools the harness itself needs.
pub const HARNESS_TOOLS: &[&str] = &[
    "docker-registry",
    "skopeo",
    "umoci",
    "curl",
    "tar",
    "gzip",
    "jq",
    "setfattr",
    "mknod",
    "mkfifo",
    "cp",
];

/// Set to `1` (CI does) to make missing root/tools a test failure instead of
/// a skip.
pub const REQUIRE_ENV: &str = "LAZYBOOT_INTEGRATION_REQUIRED";

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `name` is an executable in `$PATH` (or in the sbin dirs, which
/// are not always in a test runner's path).
pub fn have_tool(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .any(|d| {
            std::fs::metadata(d.join(name))
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

pub fn missing_tools<'a>(tools: &[&'a str]) -> Vec<&'a str> {
    tools.iter().copied().filter(|t| !have_tool(t)).collect()
}

/// `true` if the calling test can run: we are root and all `tools` (plus
/// [`HARNESS_TOOLS`]) exist. Otherwise prints why and returns `false` so the
/// test can return early, or panics when `LAZYBOOT_INTEGRATION_REQUIRED=1`.
pub fn require_root_and_tools(test: &str, tools: &[&str]) -> bool {
    let mut all: Vec<&str> = HARNESS_TOOLS.to_vec();
    all.extend_from_slice(tools);
    let missing = missing_tools(&all);
    let mut why = Vec::new();
    if !is_root() {
        why.push("not running as root".to_string());
    }
    if !missing.is_empty() {
        why.push(format!("missing tools: {}", missing.join(", ")));
    }
    if why.is_empty() {
        return true;
    }
    let msg = format!("{test}: skipped: {}", why.join("; "));
    if std::env::var_os(REQUIRE_ENV).is_some_and(|v| v == "1") {
        panic!("{msg} (and {REQUIRE_ENV}=1)");
    }
    eprintln!("NOTICE: {msg}");
    false
}

/// `ip ARGS..` (iproute2), which must succeed.
pub fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// Run a command, fail with its stderr if it fails, return its stdout.
pub fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// `lazyboot profile --state-dir STATE ARGS..`; its standard output.
pub fn lazyboot_profile(state: &Path, args: &[&str]) -> Result<String> {
    let out = run(Command::new(env!("CARGO_BIN_EXE_lazyboot"))
        .args(["profile", "--state-dir"])
        .arg(state)
        .args(args))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Boot `boot` of `node` as `lazyboot profile --format json` shows it
/// (`{"profile": .., "summary": ..}`).
pub fn profile_json(state: &Path, node: &str, boot: u64) -> Result<serde_json::Value> {
    let boot = boot.to_string();
    let text = lazyboot_profile(state, &[node, "--boot", &boot, "--format", "json"])?;
    Ok(serde_json::from_str(&text)?)
}

/// Run a shell command line with `bash -c` (handy for one-off mutations).
pub fn sh(script: &str) -> Result<Vec<u8>> {
    run(Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script))
}

/// `curl -sf URL` with optional Accept types; returns the body.
pub fn curl_get(url: &str, accept: &[&str]) -> Result<Vec<u8>> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-f", "-L", "--max-time", "60"]);
    if !accept.is_empty() {
        cmd.arg("-H").arg(format!("Accept: {}", accept.join(", ")));
    }
    cmd.arg(url);
    run(&mut cmd)
}

/// `curl ARGS URL` (inside the network namespace `netns` if given): the
/// HTTP status and the body, whatever the status.
pub fn curl_status(netns: Option<&str>, args: &[&str], url: &str) -> Result<(u16, String)> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "curl"]);
            c
        }
        None => Command::new("curl"),
    };
    let out = cmd
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').with_context(|| {
        format!(
            "curl {url}: no status line: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((code.trim().parse()?, body.to_string()))
}

/// An HTTP exchange as `curl` saw it: status, response headers (names
/// lower case, of the last response), body bytes, and curl's `-w` output.
pub struct CurlSaw {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub written: String,
}

impl CurlSaw {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `curl ARGS URL` (inside `netns` if given) with the body kept as bytes
/// and the headers parsed; `-w` output after `--write-out` in `args` is
/// returned as `written`. Any status is a result; curl failing to talk
/// HTTP at all is an error.
pub fn curl_raw(netns: Option<&str>, args: &[&str], url: &str) -> Result<CurlSaw> {
    let dir = tempfile::tempdir()?;
    let (head, body) = (dir.path().join("head"), dir.path().join("body"));
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "curl"]);
            c
        }
        None => Command::new("curl"),
    };
    cmd.args(["-sS", "--max-time", "60", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(args)
        .arg(url);
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let head = std::fs::read_to_string(&head)?;
    // With redirects or 100-continue there are several blocks: the last counts.
    let last = head
        .replace("\r\n", "\n")
        .trim_end()
        .rsplit("\n\n")
        .next()
        .unwrap_or_default()
        .to_string();
    let mut lines = last.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("curl {url}: no status line in {last:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(CurlSaw {
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
        written: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `cp -a SRC DST` (keeps owners, modes, xattrs, hard links, timestamps).
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    run(Command::new("cp").arg("-a").arg("--").arg(src).arg(dst)).map(|_| ())
}

/// Hex sha256 of a byte slice.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(data))
}

/// A TCP port free on every address a moment ago (for servers bound to a
/// lab address).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free TCP port")
        .port()
}

/// A UDP port free on every address a moment ago.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.local_addr())
        .expect("binding a free UDP port")
        .port()
}

/// `len` bytes of xorshift noise from `seed`: the same bytes every time,
/// incompressible, no two seeds alike.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
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

/// Bytes in the regular files under `dir` (0 if it does not exist).
pub fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    for e in entries {
        let e = e?;
        let meta = e.metadata()?;
        if meta.is_dir() {
            total += dir_size(&e.path())?;
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// The resident set size of process `pid` (`VmRSS` in /proc/PID/status),
/// in KiB.
pub fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}
