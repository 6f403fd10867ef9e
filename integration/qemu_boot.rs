//! The first real boot: a QEMU x86_64 guest PXE-boots through QEMU's own
//! iPXE ROM from `lazyboot serve` (our DHCP, our TFTP with the generated
//! `boot.ipxe`, our NFSv3), runs Debian's kernel and an initramfs that mounts
//! the node's NFS root with the kernel's NFS client, and the image's
//! `/sbin/init` (integration/fixtures/boot-image/rootfs-init) runs its checks
//! and prints a marker. Two nodes boot one after the other: `pc` with an
//! ephemeral root while the chunk cache is still empty (the server is
//! restarted while it runs), then `pc-ro` with a read-only root.
//!
//! The image (integration/fixtures/build-boot-image.sh, Debian packages only)
//! is built once and cached under `target/tmp/lazyboot-boot-image/<hash>`.
//! Its layers are gzip, so opening the image (index pass) and the background
//! fill fetch them whole soon after the server starts.
//!
//! Network: a tap `lbqtapN` in the host namespace carries the server address
//! 10.217.N.1/24 (a /24 no other interface routes); QEMU's virtio-net is the
//! tap's other end. The test sends IPv6 router advertisements on it so that
//! iPXE does not wait 16 s for one. TFTP must be on port 69 (the ROM knows no
//! other).
//!
//! `LAZYBOOT_QEMU_KEEP=1` keeps the work dir (console logs, server log).

mod common;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{run, Registry};

const BIN: &str = env!("CARGO_BIN_EXE_lazyboot");
const TOOLS: &[&str] = &[
    "ip",
    "sysctl",
    "qemu-system-x86_64",
    "apt-get",
    "apt-cache",
    "dpkg",
    "depmod",
    "cpio",
];
/// QEMU's virtio-net option ROM (Debian `ipxe-qemu`).
const VIRTIO_ROM: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";
const TAG: &str = "boot";
const MARKER: &str = "LAZYBOOT-MARKER: booted from nfs root";
/// TCG is slow and the two cores are shared; a boot takes ~15-40 s.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures")
}

fn cache_base() -> PathBuf {
    match option_env!("CARGO_TARGET_TMPDIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir(),
    }
    .join("lazyboot-boot-image")
}

/// The boot image's OCI layout, built once per content of the build script
/// and its helper files (file-locked, so parallel runs build it once).
fn boot_image() -> Result<PathBuf> {
    let mut h = Sha256::new();
    let mut files = vec![fixtures().join("build-boot-image.sh")];
    let mut helpers: Vec<PathBuf> = fs::read_dir(fixtures().join("boot-image"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    helpers.sort();
    files.extend(helpers);
    for f in &files {
        h.update(f.file_name().unwrap().as_encoded_bytes());
        h.update([0]);
        h.update(fs::read(f)?);
        h.update([0]);
    }
    let key = &hex::encode(h.finalize())[..16];
    let base = cache_base();
    fs::create_dir_all(&base)?;
    let lock = File::create(base.join("lock"))?;
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("flock: {}", std::io::Error::last_os_error());
    }
    let dir = base.join(key);
    let layout = dir.join("layout");
    if dir.join("complete").exists() {
        eprintln!("[boot image] reusing {}", dir.display());
        return Ok(layout);
    }
    // Older versions of the image are not needed any more (debs are kept).
    for e in fs::read_dir(&base)?.flatten() {
        let name = e.file_name();
        if e.path().is_dir() && name != "debs" {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    let started = Instant::now();
    let out = run(Command::new("bash")
        .arg(fixtures().join("build-boot-image.sh"))
        .arg(&dir)
        .arg(TAG)
        .env("DEB_CACHE", base.join("debs")))?;
    eprintln!(
        "[boot image] built in {:.1?}\n{}",
        started.elapsed(),
        String::from_utf8_lossy(&out).trim_end()
    );
    fs::write(dir.join("complete"), b"ok\n")?;
    Ok(layout)
}

/// Whether some interface already routes `addr`'s /24 (another test lab,
/// say): two connected routes and our replies would leave by the other.
fn subnet_in_use(addr: Ipv4Addr) -> Result<bool> {
    let out = run(Command::new("ip").args(["-4", "route", "show", "match", &addr.to_string()]))?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .any(|l| !l.trim().is_empty() && !l.starts_with("default")))
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// A tap in the host namespace with the server address on it; QEMU opens
/// it by name. Removed on drop.
struct Tap {
    name: String,
    server_ip: Ipv4Addr,
    subnet: u8,
}

impl Tap {
    fn new() -> Result<Tap> {
        let first = std::process::id() % 254;
        for k in 0..254 {
            let subnet = ((first + k) % 254 + 1) as u8;
            let server_ip = Ipv4Addr::new(10, 217, subnet, 1);
            if subnet_in_use(server_ip)? {
                continue;
            }
            let name = format!("lbqtap{subnet}");
            if ip(&["tuntap", "add", "dev", &name, "mode", "tap"]).is_err() {
                continue;
            }
            let tap = Tap {
                name,
                server_ip,
                subnet,
            };
            tap.configure()?;
            return Ok(tap);
        }
        bail!("no free 10.217.N.0/24 for a tap")
    }

    fn configure(&self) -> Result<()> {
        // IPv6 stays on for the router advertisements (see `RouterAdverts`):
        // a link-local address at once (no DAD), and ignore others' RAs.
        for (key, value) in [("disable_ipv6", 0), ("accept_dad", 0), ("accept_ra", 0)] {
            run(Command::new("sysctl")
                .arg("-q")
                .arg(format!("net.ipv6.conf.{}.{key}={value}", self.name)))?;
        }
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.server_ip),
            "dev",
            &self.name,
        ])?;
        ip(&["link", "set", &self.name, "up"])
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// Router advertisements on the tap every 500 ms while the guest boots.
/// iPXE's IPv6 autoconfiguration waits ~16 s for one before it goes on to
/// `boot.ipxe` (turning IPv6 off on our end does not stop it looking); a
/// real network has a router, or dnsmasq's `--enable-ra` as in the
/// baseline bench. Router lifetime 0, no prefix: "no IPv6 router here".
struct RouterAdverts {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RouterAdverts {
    fn start(interface: &str) -> Result<RouterAdverts> {
        use socket2::{Domain, Protocol, Socket, Type};
        let name = std::ffi::CString::new(interface)?;
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            bail!(
                "if_nametoindex({interface}): {}",
                std::io::Error::last_os_error()
            );
        }
        let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
        sock.bind_device(Some(interface.as_bytes()))?;
        sock.set_multicast_hops_v6(255)?;
        sock.set_multicast_if_v6(index)?;
        let to =
            std::net::SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, index);
        // Type 134, code 0, checksum (the kernel fills it in), hop limit 64,
        // no flags, router lifetime 0, reachable time 0, retrans timer 0.
        let ra: [u8; 16] = [134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                // Fails until the tap has its link-local address: retried.
                let _ = sock.send_to(&ra, &to.into());
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Ok(RouterAdverts {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for RouterAdverts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `lazyboot serve` with its log (RUST_LOG=lazyboot=debug) in a file.
struct Server {
    child: Child,
    config: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(config: &Path, log: &Path) -> Result<Server> {
        Ok(Server {
            child: Self::spawn(config, log)?,
            config: config.to_path_buf(),
            log: log.to_path_buf(),
        })
    }

    fn spawn(config: &Path, log: &Path) -> Result<Child> {
        let log_file = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "lazyboot=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        if !line.starts_with("serving") {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "serve did not start: {line:?}\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        Ok(child)
    }

    fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// Stop (SIGTERM) and start again with the same config, state and
    /// cache; the log goes on in the same file.
    fn restart(&mut self) -> Result<()> {
        self.stop();
        self.child = Self::spawn(&self.config, &self.log)?;
        Ok(())
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// NFS on 2049 when that is free on our address, else any free port.
fn nfs_port(addr: Ipv4Addr) -> u16 {
    if std::net::TcpListener::bind((addr, 2049)).is_ok() {
        return 2049;
    }
    std::net::TcpListener::bind((addr, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// When each milestone first showed up (seconds since QEMU started).
#[derive(Default)]
struct Timeline {
    marks: Vec<(&'static str, f64)>,
}

impl Timeline {
    fn check(&mut self, t: f64, name: &'static str, seen: bool) {
        if seen && !self.marks.iter().any(|(n, _)| *n == name) {
            self.marks.push((name, t));
        }
    }

    fn seen(&self, name: &str) -> bool {
        self.marks.iter().any(|(n, _)| *n == name)
    }

    fn show(&self) -> String {
        self.marks
            .iter()
            .map(|(n, t)| format!("  {t:6.1}s  {n}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One node of the config: its name, MAC and root mode.
struct Node {
    name: &'static str,
    mac: &'static str,
    root: &'static str,
    /// Restart the server while the node waits for it (the image's init
    /// does so with `lazyboot.test=restart` on the kernel command line).
    restart: bool,
}

const NODES: [Node; 2] = [
    // First, with the chunk cache empty: every read goes to the registry.
    Node {
        name: "pc",
        mac: "52:54:00:12:34:56",
        root: "ephemeral",
        restart: true,
    },
    // Then a read-only node of the same image, cache warm.
    Node {
        name: "pc-ro",
        mac: "52:54:00:12:34:57",
        root: "readonly",
        restart: false,
    },
];

/// How many `check` lines the image's /sbin/init runs for `node`: the
/// script branches on `$MODE` (writable or read-only root) and runs a few
/// more checks around a server restart.
fn expected_checks(node: &Node) -> Result<usize> {
    let script = fs::read_to_string(fixtures().join("boot-image/rootfs-init"))?;
    let readonly = node.root == "readonly";
    let (mut n, mut branch) = (0, "");
    for line in script.lines() {
        match line.trim_end() {
            l if l.starts_with("if [ $MODE = readonly ]") => branch = "readonly",
            l if l.starts_with("if [ $MODE = writable ] && grep -qw lazyboot.test=restart") => {
                branch = "restart"
            }
            "else" if branch == "readonly" => branch = "writable",
            "fi" => branch = "",
            l if l.trim_start().starts_with("check ") => {
                n += usize::from(match branch {
                    "" => true,
                    "readonly" => readonly,
                    "writable" => !readonly,
                    _ => node.restart && !readonly,
                });
            }
            _ => {}
        }
    }
    Ok(n)
}

/// Boot `node` in QEMU until its marker (or a failure), and return the
/// console text and the timeline.
fn boot(tap: &Tap, server: &mut Server, node: &Node, console: &Path) -> Result<(String, Timeline)> {
    let log_start = server.log().len();
    let started = Instant::now();
    let mut qemu = Qemu(
        Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "512", "-smp", "1"])
            .args(["-nographic", "-no-reboot", "-boot", "n"])
            .arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                tap.name
            ))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={}", node.mac))
            .stdin(Stdio::null())
            .stdout(File::create(console)?)
            .stderr(File::create(console.with_extension("stderr"))?)
            .spawn()
            .context("starting qemu-system-x86_64")?,
    );
    let name = node.name;
    let mut timeline = Timeline::default();
    let outcome = loop {
        let t = started.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&fs::read(console)?).into_owned();
        let full = server.log();
        let log = full.get(log_start..).unwrap_or("");
        timeline.check(t, "iPXE banner", text.contains("iPXE"));
        timeline.check(
            t,
            "DHCPACK to the ROM (server)",
            log.contains(&format!("to {name} (")),
        );
        timeline.check(
            t,
            "boot.ipxe sent (server)",
            log.contains(&format!("({name}): boot.ipxe (generated")),
        );
        timeline.check(
            t,
            "initrd sent (server)",
            log.lines()
                .any(|l| l.contains("initrd.img-") && l.contains("read to the end")),
        );
        timeline.check(t, "kernel start", text.contains("Linux version"));
        timeline.check(
            t,
            "initramfs /init",
            text.contains("lazyboot-initramfs: start"),
        );
        timeline.check(
            t,
            "initramfs DHCP done",
            text.contains("lazyboot-initramfs: address"),
        );
        timeline.check(
            t,
            "MNT (server)",
            log.contains(&format!("mounted /nodes/{name}")),
        );
        timeline.check(
            t,
            "NFS root mounted",
            text.contains("lazyboot-initramfs: mounted"),
        );
        timeline.check(t, "/sbin/init runs", text.contains("lazyboot-root:"));
        let waiting = text.contains("lazyboot-root: waiting for a server restart");
        if waiting && !timeline.seen("server restarted") {
            server.restart()?;
            timeline.check(started.elapsed().as_secs_f64(), "server restarted", true);
        }
        timeline.check(
            t,
            "guest goes on after the restart",
            text.contains("lazyboot-root: continuing after the restart"),
        );
        timeline.check(t, "marker", text.contains(MARKER));
        if text.contains(MARKER) {
            break Ok(text);
        }
        if let Some(fatal) = [
            "No bootable device",
            "Kernel panic",
            "lazyboot-initramfs: FAIL",
        ]
        .into_iter()
        .find(|f| text.contains(f))
        {
            break Err(format!("the guest failed: {fatal:?}"));
        }
        if let Some(status) = qemu.0.try_wait()? {
            break Err(format!("QEMU exited ({status}) before the marker"));
        }
        if started.elapsed() > BOOT_TIMEOUT {
            break Err(format!("no marker after {BOOT_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The guest powers off right after the marker; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    while qemu.0.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    timeline.check(
        started.elapsed().as_secs_f64(),
        "QEMU exited",
        qemu.0.try_wait()?.is_some(),
    );
    eprintln!("boot of {name} ({} root):\n{}", node.root, timeline.show());
    match outcome {
        Ok(text) => Ok((text, timeline)),
        Err(why) => {
            let console = String::from_utf8_lossy(&fs::read(console)?).into_owned();
            bail!(
                "{name}: {why}\n--- console (last 60 lines) ---\n{}\n--- server log (last 60 lines) ---\n{}",
                tail(&console, 60),
                tail(&server.log(), 60)
            );
        }
    }
}

#[test]
fn qemu_pxe_boots_from_lazyboot() -> Result<()> {
    if !common::require_root_and_tools("qemu_pxe_boots_from_lazyboot", TOOLS) {
        return Ok(());
    }
    if !Path::new(VIRTIO_ROM).exists() {
        let msg = format!("qemu_pxe_boots_from_lazyboot: skipped: no {VIRTIO_ROM} (ipxe-qemu)");
        if std::env::var_os(common::REQUIRE_ENV).is_some_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("NOTICE: {msg}");
        return Ok(());
    }
    let layout = boot_image()?;
    let tmp = tempfile::Builder::new()
        .prefix("lazyboot-qemu-boot.")
        .tempdir()?;
    let work = tmp.path().to_path_buf();
    let reg = Registry::start()?;
    common::push(&layout, TAG, &reg, "os/qemu-boot:1")?;
    let image = reg.reference("os/qemu-boot:1");

    let tap = Tap::new()?;
    let net = format!("10.217.{}", tap.subnet);
    let nfs_port = nfs_port(tap.server_ip);
    let mut config = format!(
        r#"
[server]
interface = "{tap_if}"
address = "{server}"
state_dir = "{state}"
cache_dir = "{cache}"
cache_size = "2G"
tftp_port = 69
nfs_port = {nfs_port}

[dhcp]
mode = "full"
pool_start = "{net}.100"
pool_end = "{net}.150"
router = "{server}"
"#,
        tap_if = tap.name,
        server = tap.server_ip,
        state = work.join("state").display(),
        cache = work.join("cache").display(),
    );
    for n in &NODES {
        config.push_str(&format!(
            r#"
[[nodes]]
name = "{}"
mac = "{}"
kind = "ipxe"
image = "{image}"
root = "{}"
kernel_args = "console=ttyS0 panic=-1{}"
"#,
            n.name,
            n.mac,
            n.root,
            if n.restart {
                " lazyboot.test=restart"
            } else {
                ""
            }
        ));
    }
    let config_path = work.join("lazyboot.toml");
    fs::write(&config_path, config)?;
    let mut server = Server::start(&config_path, &work.join("server.log"))?;
    let _adverts = RouterAdverts::start(&tap.name)?;

    let mut failures = Vec::new();
    for node in &NODES {
        let name = node.name;
        let console = work.join(format!("console-{name}.log"));
        let result = boot(&tap, &mut server, node, &console);
        let text = match result {
            Ok((text, _)) => text,
            Err(e) => {
                failures.push(format!("{e:#}"));
                continue;
            }
        };
        let guest: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("lazyboot-") || l.contains("LAZYBOOT"))
            .collect();
        eprintln!("guest {name}:\n{}", guest.join("\n"));
        let marker = text
            .lines()
            .find(|l| l.contains(MARKER))
            .context("marker line")?;
        if !marker.trim_end().ends_with(&format!("{MARKER} {name}")) {
            failures.push(format!("{name}: wrong marker {marker:?}"));
        }
        let root = format!("lazyboot-root: / is {}:/nodes/{name} / nfs", tap.server_ip);
        if !text.contains(&root) {
            failures.push(format!("{name}: root is not our NFS export"));
        }
        // Every check of the image's /sbin/init ran and passed.
        let mode = match node.root {
            "readonly" => "readonly",
            _ => "writable",
        };
        let want = expected_checks(node)?;
        let summary = format!("lazyboot-root: checks done: {want} ok, 0 failed, mode {mode}");
        if !text.contains(&summary) {
            let failed: Vec<&str> = guest
                .iter()
                .copied()
                .filter(|l| l.contains("lazyboot-check: FAIL") || l.contains("checks done"))
                .collect();
            failures.push(format!(
                "{name}: want {summary:?}, got:\n{}",
                failed.join("\n")
            ));
        }
    }
    if std::env::var_os("LAZYBOOT_QEMU_KEEP").is_some_and(|v| v == "1") {
        let kept = tmp.keep();
        eprintln!("kept {}", kept.display());
    }
    let log = server.log();
    assert!(
        failures.is_empty(),
        "{}\n--- server log (last 40 lines) ---\n{}",
        failures.join("\n\n"),
        tail(&log, 40)
    );
    for node in &NODES {
        let name = node.name;
        // Our DHCP served the firmware and the initramfs' udhcpc...
        let acks = log.matches(&format!("to {name} (")).count();
        assert!(
            acks >= 2,
            "{name}: {acks} DHCP answers:\n{}",
            tail(&log, 40)
        );
        // ...TFTP sent the script, the kernel and the initrd...
        for what in ["boot.ipxe (generated", "vmlinuz-", "initrd.img-"] {
            assert!(
                log.contains(&format!("({name}): {what}")),
                "{name}: TFTP {what}:\n{}",
                tail(&log, 40)
            );
        }
        // ...and the kernel's NFS client mounted the node's export.
        assert!(
            log.contains(&format!("mounted /nodes/{name}")),
            "{name}: no MNT:\n{}",
            tail(&log, 40)
        );
    }
    Ok(())
}
