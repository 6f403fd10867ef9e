//! Pieces of the QEMU boot tests (integration/qemu_boot.rs for iPXE on
//! x86_64, integration/qemu_uboot.rs and qemu_uboot_riscv64.rs for U-Boot
//! on arm64 and riscv64): the boot image built from Debian packages, a tap
//! with the server address, IPv6 router advertisements on it, QEMU killed
//! on drop, and a timeline of boot milestones. `lazyboot serve` runs
//! through [`super::serve`].

use super::ip;
use anyhow::{bail, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{run, tail};

/// QEMU's virtio-net option ROM (Debian `ipxe-qemu`): the guests' PXE client.
pub const VIRTIO_ROM: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";

/// What `fixtures/build-boot-image.sh` needs on the host.
pub const BOOT_IMAGE_TOOLS: &[&str] = &["apt-get", "apt-cache", "dpkg", "depmod", "cpio"];
/// The line the boot image's `/sbin/init` prints once its checks ran.
pub const BOOT_MARKER: &str = "LAZYBOOT-MARKER: booted from nfs root";

/// `true` if every `(file, Debian package)` exists; otherwise prints why
/// `test` is skipped (naming the packages) and returns `false`, or panics
/// under `LAZYBOOT_INTEGRATION_REQUIRED=1`.
pub fn require_files(test: &str, files: &[(&str, &str)]) -> bool {
    let missing: Vec<String> = files
        .iter()
        .filter(|(f, _)| !Path::new(f).exists())
        .map(|(f, pkg)| format!("{f} ({pkg})"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: skipped: no {}", missing.join(", "));
    if std::env::var_os(super::REQUIRE_ENV).is_some_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("NOTICE: {msg}");
    false
}

/// `true` if [`VIRTIO_ROM`] exists; otherwise prints why `test` is skipped
/// and returns `false`, or panics under `LAZYBOOT_INTEGRATION_REQUIRED=1`.
pub fn require_virtio_rom(test: &str) -> bool {
    if Path::new(VIRTIO_ROM).exists() {
        return true;
    }
    let msg = format!("{test}: skipped: no {VIRTIO_ROM} (ipxe-qemu)");
    if std::env::var_os(super::REQUIRE_ENV).is_some_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("NOTICE: {msg}");
    false
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures")
}

/// Where the images of one architecture are cached (amd64 keeps the name
/// it always had; each architecture cleans up only its own).
fn cache_base(arch: &str) -> PathBuf {
    let name = match arch {
        "amd64" => "lazyboot-boot-image".to_string(),
        a => format!("lazyboot-boot-image-{a}"),
    };
    match option_env!("CARGO_TARGET_TMPDIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir(),
    }
    .join(name)
}

/// The boot image's OCI layout for `arch` (Debian's name: amd64, arm64)
/// under the tag `tag`, built once per architecture and content of the
/// build script and its helper files (file-locked, so parallel runs build
/// it once).
pub fn boot_image(arch: &str, tag: &str) -> Result<PathBuf> {
    let mut h = Sha256::new();
    h.update(arch.as_bytes());
    h.update([0]);
    h.update(tag.as_bytes());
    h.update([0]);
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
    let base = cache_base(arch);
    fs::create_dir_all(&base)?;
    let lock = File::create(base.join("lock"))?;
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("flock: {}", std::io::Error::last_os_error());
    }
    let dir = base.join(key);
    let layout = dir.join("layout");
    if dir.join("complete").exists() {
        eprintln!("[boot image {arch}] reusing {}", dir.display());
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
        .arg(tag)
        .env("ARCH", arch)
        .env("DEB_CACHE", base.join("debs")))?;
    eprintln!(
        "[boot image {arch}] built in {:.1?}\n{}",
        started.elapsed(),
        String::from_utf8_lossy(&out).trim_end()
    );
    fs::write(dir.join("complete"), b"ok\n")?;
    Ok(layout)
}

/// Whether some interface already routes `addr`'s /24 (another test lab,
/// say): two connected routes and our replies would leave by the other.
pub fn subnet_in_use(addr: Ipv4Addr) -> Result<bool> {
    let out = run(Command::new("ip").args(["-4", "route", "show", "match", &addr.to_string()]))?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .any(|l| !l.trim().is_empty() && !l.starts_with("default")))
}

/// A tap in the host namespace with the server address on it; QEMU opens
/// it by name. Removed on drop.
pub struct Tap {
    pub name: String,
    pub server_ip: Ipv4Addr,
    pub subnet: u8,
}

impl Tap {
    pub fn new() -> Result<Tap> {
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
        configure_server_side(&self.name, self.server_ip)
    }
}

/// The server's end of a guest network: `addr`/24 on `interface`, up.
fn configure_server_side(interface: &str, addr: Ipv4Addr) -> Result<()> {
    // IPv6 stays on for the router advertisements (see `RouterAdverts`):
    // a link-local address at once (no DAD), and ignore others' RAs.
    for (key, value) in [("disable_ipv6", 0), ("accept_dad", 0), ("accept_ra", 0)] {
        run(Command::new("sysctl")
            .arg("-q")
            .arg(format!("net.ipv6.conf.{interface}.{key}={value}")))?;
    }
    ip(&["addr", "add", &format!("{addr}/24"), "dev", interface])?;
    ip(&["link", "set", interface, "up"])
}

/// For guests that boot at once (QEMU holds a tap for itself): a bridge
/// `lbqbrN` with the server address 10.217.N.1/24 and one tap per guest
/// on it, `lbqtapN-I`. Removed on drop.
pub struct Lan {
    /// What the server serves on.
    pub bridge: String,
    pub taps: Vec<String>,
    pub server_ip: Ipv4Addr,
    pub subnet: u8,
}

impl Lan {
    pub fn new(guests: usize) -> Result<Lan> {
        let first = std::process::id() % 254;
        for k in 0..254 {
            let subnet = ((first + k) % 254 + 1) as u8;
            let server_ip = Ipv4Addr::new(10, 217, subnet, 1);
            if subnet_in_use(server_ip)? {
                continue;
            }
            let bridge = format!("lbqbr{subnet}");
            if ip(&["link", "add", &bridge, "type", "bridge"]).is_err() {
                continue;
            }
            let mut lan = Lan {
                bridge,
                taps: Vec::new(),
                server_ip,
                subnet,
            };
            for i in 0..guests {
                let tap = format!("lbqtap{subnet}-{i}");
                ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
                lan.taps.push(tap.clone());
                ip(&["link", "set", &tap, "master", &lan.bridge])?;
                ip(&["link", "set", &tap, "up"])?;
            }
            configure_server_side(&lan.bridge, server_ip)?;
            return Ok(lan);
        }
        bail!("no free 10.217.N.0/24 for a bridge")
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for name in self.taps.iter().chain([&self.bridge]) {
            let _ = Command::new("ip").args(["link", "del", name]).output();
        }
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
pub struct RouterAdverts {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RouterAdverts {
    pub fn start(interface: &str) -> Result<RouterAdverts> {
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

pub struct Qemu(pub Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// NFS on 2049 when that is free on our address, else any free port.
pub fn nfs_port(addr: Ipv4Addr) -> u16 {
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
pub struct Timeline {
    pub marks: Vec<(&'static str, f64)>,
}

impl Timeline {
    pub fn check(&mut self, t: f64, name: &'static str, seen: bool) {
        if seen && !self.marks.iter().any(|(n, _)| *n == name) {
            self.marks.push((name, t));
        }
    }

    pub fn seen(&self, name: &str) -> bool {
        self.marks.iter().any(|(n, _)| *n == name)
    }

    pub fn show(&self) -> String {
        self.marks
            .iter()
            .map(|(n, t)| format!("  {t:6.1}s  {n}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// How many `check` lines the image's /sbin/init runs on a read-only or
/// writable root, with or without a server restart: the script branches on
/// `$MODE` and runs a few more checks around a restart.
pub fn expected_checks(readonly: bool, restart: bool) -> Result<usize> {
    let script = fs::read_to_string(fixtures().join("boot-image/rootfs-init"))?;
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
                    _ => restart && !readonly,
                });
            }
            _ => {}
        }
    }
    Ok(n)
}

/// An x86_64 guest that PXE-boots from the tap through QEMU's iPXE ROM
/// (TCG), its serial console written to `console`.
pub fn pxe_guest(tap: &Tap, mac: &str, memory_mb: u32, console: &Path) -> Result<Qemu> {
    pxe_guest_on(&tap.name, None, mac, memory_mb, console)
}

/// [`pxe_guest`] on the tap named `tap`, in network namespace `netns` if
/// given (QEMU runs there, where the tap is).
pub fn pxe_guest_on(
    tap: &str,
    netns: Option<&str>,
    mac: &str,
    memory_mb: u32,
    console: &Path,
) -> Result<Qemu> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "qemu-system-x86_64"]);
            c
        }
        None => Command::new("qemu-system-x86_64"),
    };
    Ok(Qemu(
        cmd.args(["-accel", "tcg", "-smp", "1", "-m", &memory_mb.to_string()])
            .args(["-nographic", "-no-reboot", "-boot", "n"])
            .arg("-netdev")
            .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={mac}"))
            .stdin(Stdio::null())
            .stdout(File::create(console)?)
            .stderr(File::create(console.with_extension("stderr"))?)
            .spawn()?,
    ))
}

/// Watch `console` until a line containing `marker` appears (returned with
/// the whole console text), a `fatal` text appears, QEMU exits or
/// `timeout` passes; `milestones` (name, console text) go into the timeline.
pub fn wait_for_console(
    qemu: &mut Qemu,
    console: &Path,
    marker: &str,
    fatal: &[&str],
    milestones: &[(&'static str, &str)],
    timeout: Duration,
    mut each: impl FnMut(f64, &str, &mut Timeline) -> Result<()>,
) -> Result<(String, String, Timeline)> {
    let started = Instant::now();
    let mut timeline = Timeline::default();
    loop {
        let t = started.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&fs::read(console)?).into_owned();
        for (name, needle) in milestones {
            timeline.check(t, name, text.contains(needle));
        }
        each(t, &text, &mut timeline)?;
        if let Some(line) = text.lines().find(|l| l.contains(marker)) {
            timeline.check(t, "marker", true);
            return Ok((line.trim().to_string(), text, timeline));
        }
        if let Some(f) = fatal.iter().find(|f| text.contains(*f)) {
            bail!(
                "the guest failed ({f:?}) after {t:.0} s\n{}\n--- console (last 80 lines) ---\n{}",
                timeline.show(),
                tail(&text, 80)
            );
        }
        if let Some(status) = qemu.0.try_wait()? {
            bail!(
                "QEMU exited ({status}) before {marker:?}\n{}\n--- console (last 80 lines) ---\n{}",
                timeline.show(),
                tail(&text, 80)
            );
        }
        if started.elapsed() > timeout {
            bail!(
                "no {marker:?} after {timeout:?}\n{}\n--- console (last 80 lines) ---\n{}",
                timeline.show(),
                tail(&text, 80)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A UEFI guest's machine: its QEMU, firmware and console.
#[derive(Clone, Copy, Debug)]
pub enum Uefi {
    /// qemu-system-x86_64 (q35 is not needed: the default PC) with OVMF.
    X86_64,
    /// qemu-system-aarch64 `virt`, Cortex-A57, with AAVMF.
    Aarch64,
}

impl Uefi {
    /// The firmware's code and variable store templates (Debian `ovmf`,
    /// `qemu-efi-aarch64`).
    pub fn firmware(self) -> (&'static str, &'static str) {
        match self {
            Uefi::X86_64 => (
                "/usr/share/OVMF/OVMF_CODE.fd",
                "/usr/share/OVMF/OVMF_VARS.fd",
            ),
            Uefi::Aarch64 => (
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "/usr/share/AAVMF/AAVMF_VARS.fd",
            ),
        }
    }

    pub fn package(self) -> &'static str {
        match self {
            Uefi::X86_64 => "ovmf",
            Uefi::Aarch64 => "qemu-efi-aarch64",
        }
    }

    pub fn qemu(self) -> &'static str {
        match self {
            Uefi::X86_64 => "qemu-system-x86_64",
            Uefi::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The kernel console of the machine's first serial port.
    pub fn console(self) -> &'static str {
        match self {
            Uefi::X86_64 => "ttyS0",
            Uefi::Aarch64 => "ttyAMA0",
        }
    }
}

/// A UEFI guest (TCG, one CPU) that PXE-boots from the tap `tap` with its
/// firmware's own network stack: the NIC has no option ROM (`romfile=`),
/// so it is the firmware's PXE client that asks DHCP (PXEClient, option 93
/// of its architecture) and loads the boot file it is offered, not QEMU's
/// iPXE ROM. The variable store is a fresh copy in `dir`; the serial
/// console goes to `console`.
pub fn uefi_guest(
    machine: Uefi,
    tap: &str,
    mac: &str,
    memory_mb: u32,
    dir: &Path,
    console: &Path,
) -> Result<Qemu> {
    let (code, vars_template) = machine.firmware();
    let vars = dir.join(format!("{mac}-vars.fd").replace(':', ""));
    fs::copy(vars_template, &vars)?;
    let mut cmd = Command::new(machine.qemu());
    if let Uefi::Aarch64 = machine {
        cmd.args(["-M", "virt", "-cpu", "cortex-a57"]);
    }
    Ok(Qemu(
        cmd.args(["-accel", "tcg", "-smp", "1", "-m", &memory_mb.to_string()])
            .args(["-nographic", "-no-reboot"])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={code}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()))
            .arg("-netdev")
            .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={mac},romfile="))
            .stdin(Stdio::null())
            .stdout(File::create(console)?)
            .stderr(File::create(console.with_extension("stderr"))?)
            .spawn()?,
    ))
}

/// The config of a QEMU lab's `serve`: full DHCP and TFTP on port 69 of
/// `interface`, whose address is `server` in the /24 `net` (`10.217.N`),
/// NFS on [`nfs_port`]'s port, state and cache under `work`; `server_lines`
/// go into `[server]`, `nodes` (the `[[nodes]]` tables) at the end.
pub fn lab_config(
    interface: &str,
    server: Ipv4Addr,
    net: &str,
    work: &Path,
    server_lines: &str,
    nodes: &str,
) -> String {
    super::serve::LabConfig {
        interface,
        server,
        net: net.to_string(),
        work,
        tftp_port: 69,
        nfs_port: nfs_port(server),
        http_port: None,
    }
    .text(server_lines, nodes)
}
