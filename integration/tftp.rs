//! The TFTP server against real clients (curl, atftp, tftp-hpa and a small
//! Python client that behaves like a Raspberry Pi's bootloader) in a
//! network namespace, serving a Raspberry Pi OS-like image from a real
//! registry through the lazy image view.
//!
//! Each test starts its own registry, lab and server (a few seconds); the
//! image layout is built once and cached under the cargo target tmp dir.

mod common;

use anyhow::{bail, Context, Result};
use common::netns::NetLab;
use common::serve::InProcess;
use common::{require_root_and_tools, run, sha256_hex, Registry};
use lazyboot::cache::ChunkCache;
use lazyboot::config::Config;
use lazyboot::serve::ServeContext;
use lazyboot::tftp::uimage;
use serde_json::Value;
use std::fs::{self, File};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const TAG: &str = "v1";
const PI_SERIAL: &str = "100000008b07bcc6";
const PI_PREFIX: &str = "8b07bcc6";
const PI_MAC: &str = "dc:a6:32:01:02:03";
const MARS_MAC: &str = "6c:cf:39:00:00:01";
const PC_MAC: &str = "52:54:00:12:34:56";
const NFS_PORT: u16 = 20049;
const SECRET: &str = "root:$6$SECRET-HASH-MUST-NOT-LEAK:19000:0:99999:7:::\n";
const RPIOS_CMDLINE: &str = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot splash\n";

/// Files of the Raspberry Pi boot partition (path under /boot/firmware, size).
const PI_FILES: &[(&str, usize)] = &[
    ("start4.elf", 2_228_224),
    ("fixup4.dat", 5_446),
    ("bcm2711-rpi-cm4.dtb", 52_593),
    ("overlays/vc4-kms-v3d.dtbo", 3_913),
    ("kernel8.img", 8 << 20),
];
const TOOLS: &[&str] = &["atftp", "tftp", "python3", "ip", "umoci", "dumpimage"];

// ---------------------------------------------------------------- the image

struct PiImage {
    layout: PathBuf,
    /// The tree the image was made from: the reference bytes.
    src: PathBuf,
}

impl PiImage {
    fn bytes(&self, image_path: &str) -> Vec<u8> {
        fs::read(self.src.join(image_path.trim_start_matches('/')))
            .unwrap_or_else(|e| panic!("reading reference {image_path}: {e}"))
    }
}

fn random_file(path: &Path, size: usize, seed: u64) -> Result<()> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; size];
    rng.fill_bytes(&mut data);
    fs::create_dir_all(path.parent().unwrap())?;
    fs::write(path, data)?;
    Ok(())
}

fn text_file(path: &Path, text: &str) -> Result<()> {
    fs::create_dir_all(path.parent().unwrap())?;
    fs::write(path, text)?;
    Ok(())
}

fn symlink(target: &str, path: &Path) -> Result<()> {
    fs::create_dir_all(path.parent().unwrap())?;
    std::os::unix::fs::symlink(target, path)?;
    Ok(())
}

/// Raspberry Pi OS layout under /boot/firmware, a Debian-style /boot with
/// vmlinuz/initrd.img symlinks and device trees, an /etc with secrets, and
/// symlinks that try to lead out of the boot directory.
fn make_tree(src: &Path) -> Result<()> {
    let fw = src.join("boot/firmware");
    text_file(
        &fw.join("config.txt"),
        "arm_64bit=1\nkernel=kernel8.img\nenable_uart=1\n[cm4]\notg_mode=1\n",
    )?;
    text_file(&fw.join("cmdline.txt"), RPIOS_CMDLINE)?;
    for (i, (name, size)) in PI_FILES.iter().enumerate() {
        random_file(&fw.join(name), *size, i as u64 + 1)?;
    }
    symlink("/boot/firmware/config.txt", &fw.join("inside"))?;
    symlink("/etc/shadow", &fw.join("escape-abs"))?;
    symlink("../../etc/shadow", &fw.join("escape-rel"))?;
    symlink("/etc", &fw.join("escape-dir"))?;
    let boot = src.join("boot");
    random_file(&boot.join("vmlinuz-6.1.0-test"), 5 << 20, 100)?;
    random_file(&boot.join("initrd.img-6.1.0-test"), 3 << 20, 101)?;
    random_file(
        &boot.join("dtbs/6.1.0-test/starfive/jh7110-milkv-mars.dtb"),
        40_000,
        102,
    )?;
    symlink("vmlinuz-6.1.0-test", &boot.join("vmlinuz"))?;
    symlink("initrd.img-6.1.0-test", &boot.join("initrd.img"))?;
    text_file(&src.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    text_file(&src.join("etc/shadow"), SECRET)?;
    Ok(())
}

fn build_image(base: &Path) -> Result<PiImage> {
    let img = PiImage {
        layout: base.join("layout"),
        src: base.join("src"),
    };
    make_tree(&img.src)?;
    let image = format!("{}:{TAG}", img.layout.display());
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&img.layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    let bundle = base.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", img.src.display()))
        .arg(bundle.join("rootfs")))?;
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    fs::remove_dir_all(&bundle)?;
    Ok(img)
}

/// Built once (contents are seeded, so a cached copy is the same image).
fn pi_image() -> &'static PiImage {
    static IMG: OnceLock<PiImage> = OnceLock::new();
    IMG.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lazyboot-tftp-image");
        fs::create_dir_all(&root).unwrap();
        let lock = File::create(root.join("lock")).unwrap();
        // SAFETY: flock on a descriptor we own; released when `lock` drops.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let base = root.join("v1");
        if base.join("complete").exists() {
            return PiImage {
                layout: base.join("layout"),
                src: base.join("src"),
            };
        }
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let started = Instant::now();
        let img = build_image(&base).expect("building the TFTP test image");
        fs::write(base.join("complete"), "ok\n").unwrap();
        eprintln!("[tftp] image built in {:.1?}", started.elapsed());
        img
    })
}

// ------------------------------------------------------------- log capture

/// Every log line of the server (lazyboot=debug), for checks on levels.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        struct Capture;
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                logs().lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("lazyboot=debug,warn"))
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
        Mutex::new(Vec::new())
    })
}

/// Log lines at WARN or ERROR that mention `needle`.
fn alarms_about(needle: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && l.contains(needle))
        .map(str::to_string)
        .collect()
}

// ------------------------------------------------------------- the bench

struct Bench {
    /// First, so the server stops before the lab and its files go.
    _server: InProcess,
    lab: NetLab,
    port: u16,
    pi_ip: Ipv4Addr,
    mars_ip: Ipv4Addr,
    pc_ip: Ipv4Addr,
    stranger_ip: Ipv4Addr,
    tmp: tempfile::TempDir,
    img: &'static PiImage,
    _registry: Registry,
}

fn python_client() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/clients/tftp_probe.py")
}

impl Bench {
    /// The bench with `server_extra` (TOML) in the config's `[server]`.
    fn start(server_extra: &str) -> Result<Bench> {
        logs();
        let img = pi_image();
        let registry = Registry::start()?;
        common::push(&img.layout, TAG, &registry, "tftp/pi:v1")?;
        let lab = NetLab::new(true)?;
        let ip = |last: u8| Ipv4Addr::new(10, 213, lab.subnet, last);
        let (pi_ip, mars_ip, pc_ip, stranger_ip) = (lab.client_ip, ip(3), ip(4), ip(9));
        for a in [mars_ip, pc_ip, stranger_ip] {
            lab.add_client_ip(a)?;
        }
        let tmp = tempfile::tempdir()?;
        let port = common::free_udp_port();
        let image = registry.reference("tftp/pi:v1");
        let config = format!(
            r#"
[server]
interface = "{iface}"
address = "{server}"
state_dir = "{tmp}/state"
cache_dir = "{tmp}/cache"
tftp_port = {port}
nfs_port = {NFS_PORT}
{server_extra}
[dhcp]
mode = "off"
[[nodes]]
name = "pi1"
mac = "{PI_MAC}"
serial = "{PI_SERIAL}"
kind = "raspberrypi"
image = "{image}"
ip = "{pi_ip}"
kernel_args = "loglevel=7"
[[nodes]]
name = "mars1"
mac = "{MARS_MAC}"
kind = "uboot"
image = "{image}"
ip = "{mars_ip}"
kernel_args = "earlycon console=ttyS0,115200"
[[nodes]]
name = "pc1"
mac = "{PC_MAC}"
kind = "ipxe"
image = "{image}"
ip = "{pc_ip}"
"#,
            iface = lab.host_if,
            server = lab.server_ip,
            tmp = tmp.path().display(),
        );
        let config = Config::parse(&config, "tftp-test.toml")?;
        let cache = Arc::new(ChunkCache::open(&tmp.path().join("cache"), 1 << 30)?);
        let ctx = ServeContext::new(config, cache);
        let server = InProcess::start("TFTP server", 2, lazyboot::tftp::run(ctx))?;
        let bench = Bench {
            _server: server,
            lab,
            port,
            pi_ip,
            mars_ip,
            pc_ip,
            stranger_ip,
            tmp,
            img,
            _registry: registry,
        };
        bench.wait_ready()?;
        Ok(bench)
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.py(&["get", "config.txt", "--bind", &self.pi_ip.to_string()]);
            if r.as_ref().is_ok_and(|v| v["sha256"].is_string()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("TFTP server not ready: {r:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn server(&self) -> String {
        self.lab.server_ip.to_string()
    }

    /// Run the Python client in the namespace: `CMD FILE ARGS...`.
    fn py(&self, args: &[&str]) -> Result<Value> {
        let (cmd, rest) = args.split_first().context("no command")?;
        let mut c = self.lab.client("timeout");
        c.arg("60").arg("python3").arg(python_client()).arg(cmd);
        c.arg(self.server()).arg(self.port.to_string());
        c.args(rest);
        let out = run(&mut c)?;
        serde_json::from_slice(&out).with_context(|| String::from_utf8_lossy(&out).into_owned())
    }

    /// `get` from `bind` with options (`name=value`).
    fn get(&self, bind: Ipv4Addr, file: &str, opts: &[&str]) -> Value {
        let bind = bind.to_string();
        let mut args = vec!["get", file, "--bind", &bind];
        for o in opts {
            args.push("--opt");
            args.push(o);
        }
        self.py(&args).unwrap()
    }

    fn expect_bytes(&self, r: &Value, want: &[u8], what: &str) {
        assert_eq!(r["error"], Value::Null, "{what}: {r}");
        assert_eq!(r["size"], want.len() as u64, "{what}: {r}");
        assert_eq!(r["sha256"], sha256_hex(want), "{what}: {r}");
    }

    fn expect_not_found(&self, bind: Ipv4Addr, file: &str) {
        let r = self.get(bind, file, &["tsize=0"]);
        assert_eq!(
            r["error"][0], 1,
            "{file} from {bind} should be 'file not found': {r}"
        );
    }

    /// `curl` TFTP download from `bind` into a file; returns the bytes.
    fn curl_cmd(&self, bind: Ipv4Addr, file: &str, out: &Path) -> Command {
        let mut c = self.lab.client("timeout");
        c.args(["60", "curl", "-sS", "--tftp-blksize", "1468", "--interface"])
            .arg(bind.to_string())
            .arg("-o")
            .arg(out)
            .arg(format!("tftp://{}:{}/{file}", self.server(), self.port));
        c
    }

    fn fetched(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

fn setup(test: &str) -> Option<Bench> {
    setup_with(test, "")
}

/// [`setup`] with `server_extra` in the config's `[server]`.
fn setup_with(test: &str, server_extra: &str) -> Option<Bench> {
    if !require_root_and_tools(test, TOOLS) {
        return None;
    }
    let started = Instant::now();
    let b = Bench::start(server_extra).unwrap();
    eprintln!("[{test}] bench ready in {:.1?}", started.elapsed());
    Some(b)
}

// ------------------------------------------------------------- the tests

/// A Pi's files come out identical whether it asks with its serial prefix,
/// its MAC prefix or unprefixed from its address, through four different
/// clients, with blksize 1468, tsize and (atftp) windowsize 16; its
/// cmdline.txt is the image's minus the local root plus the NFS root.
#[test]
fn pi_gets_its_boot_files_by_serial_mac_and_address() {
    let Some(b) = setup("pi_gets_its_boot_files_by_serial_mac_and_address") else {
        return;
    };
    let config = b.img.bytes("boot/firmware/config.txt");
    for file in [
        format!("{PI_PREFIX}/config.txt"),
        "config.txt".to_string(),
        "/config.txt".to_string(),
        "dc-a6-32-01-02-03/config.txt".to_string(),
        format!("{PI_PREFIX}/inside"),
    ] {
        let r = b.get(b.pi_ip, &file, &["blksize=1468", "tsize=0"]);
        b.expect_bytes(&r, &config, &file);
        assert_eq!(r["oack"]["tsize"], config.len().to_string(), "{r}");
    }
    for (name, size) in PI_FILES {
        let want = b.img.bytes(&format!("boot/firmware/{name}"));
        assert_eq!(want.len(), *size);
        let r = b.get(
            b.pi_ip,
            &format!("{PI_PREFIX}/{name}"),
            &["blksize=1468", "tsize=0"],
        );
        b.expect_bytes(&r, &want, name);
        assert_eq!(r["oack"]["blksize"], "1468", "{r}");
        assert_eq!(r["oack"]["tsize"], size.to_string(), "{r}");
    }

    let kernel = b.img.bytes("boot/firmware/kernel8.img");
    // curl, bound to the Pi's address.
    let out = b.fetched("curl-kernel8.img");
    run(&mut b.curl_cmd(b.pi_ip, &format!("{PI_PREFIX}/kernel8.img"), &out)).unwrap();
    assert!(
        fs::read(&out).unwrap() == kernel,
        "curl kernel8.img differs"
    );
    // atftp with windowsize (RFC 7440); its source is the Pi's address.
    let out = b.fetched("atftp-kernel8.img");
    let mut c = b.lab.client("timeout");
    c.args(["60", "atftp", "--get", "-r"])
        .arg(format!("{PI_PREFIX}/kernel8.img"))
        .arg("-l")
        .arg(&out)
        .args(["--option", "blksize 1468", "--option", "windowsize 16"])
        .args(["--option", "tsize enable"])
        .arg(b.server())
        .arg(b.port.to_string());
    run(&mut c).unwrap();
    assert!(
        fs::read(&out).unwrap() == kernel,
        "atftp kernel8.img differs"
    );
    // tftp-hpa: plain RFC 1350, 512-byte blocks, no options.
    let out = b.fetched("hpa-start4.elf");
    let mut c = b.lab.client("timeout");
    c.args(["60", "tftp", "-m", "binary"])
        .arg(b.server())
        .arg(b.port.to_string())
        .arg("-c")
        .arg("get")
        .arg(format!("{PI_PREFIX}/start4.elf"))
        .arg(&out);
    run(&mut c).unwrap();
    assert!(
        fs::read(&out).unwrap() == b.img.bytes("boot/firmware/start4.elf"),
        "tftp-hpa start4.elf differs"
    );

    // The generated cmdline.txt.
    let out = b.fetched("cmdline.txt");
    run(&mut b.curl_cmd(b.pi_ip, &format!("{PI_PREFIX}/cmdline.txt"), &out)).unwrap();
    let expected = format!(
        "console=serial0,115200 console=tty1 quiet splash root=/dev/nfs nfsroot={s}:/nodes/pi1,vers=3,tcp,port={NFS_PORT},mountport={NFS_PORT},nolock rw ip=dhcp loglevel=7\n",
        s = b.server()
    );
    assert_eq!(fs::read_to_string(&out).unwrap(), expected);
    let r = b.get(b.pi_ip, "cmdline.txt", &[]);
    b.expect_bytes(&r, expected.as_bytes(), "unprefixed cmdline.txt");
}

/// The Pi's "tsize probe, Error 0 Early terminate, request again" and
/// several clients reading one file at once are served correctly and are
/// not logged as failures.
#[test]
fn probes_early_terminates_and_parallel_reads_are_normal() {
    // One address plays eleven clients at once here: above the default
    // per-client limit of 8.
    let Some(b) = setup_with(
        "probes_early_terminates_and_parallel_reads_are_normal",
        "tftp_max_sessions_per_client = 16",
    ) else {
        return;
    };
    let pi = b.pi_ip.to_string();
    for name in ["start4.elf", "config.txt", "kernel8.img"] {
        let want = b.img.bytes(&format!("boot/firmware/{name}"));
        let r = b
            .py(&["probe", &format!("{PI_PREFIX}/{name}"), "--bind", &pi])
            .unwrap();
        assert_eq!(r["probe_oack"]["tsize"], want.len().to_string(), "{r}");
        assert_eq!(r["probe_oack"]["blksize"], "1024", "{r}");
        b.expect_bytes(&r, &want, name);
    }

    // Eight curls and three Python clients read kernel8.img / start4.elf at once.
    let kernel = b.img.bytes("boot/firmware/kernel8.img");
    let mut children = Vec::new();
    for i in 0..8 {
        let out = b.fetched(&format!("parallel-{i}"));
        let child = b
            .curl_cmd(b.pi_ip, &format!("{PI_PREFIX}/kernel8.img"), &out)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        children.push((out, child));
    }
    let start4 = b.img.bytes("boot/firmware/start4.elf");
    let pys: Vec<_> = (0..3)
        .map(|_| {
            let mut c = b.lab.client("timeout");
            c.arg("60").arg("python3").arg(python_client()).arg("get");
            c.arg(b.server()).arg(b.port.to_string());
            c.arg(format!("{PI_PREFIX}/start4.elf"));
            c.args(["--bind", &pi, "--opt", "blksize=1468"]);
            c.stdout(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for (out, mut child) in children {
        assert!(child.wait().unwrap().success());
        assert!(fs::read(&out).unwrap() == kernel, "parallel curl differs");
    }
    for p in pys {
        let out = p.wait_with_output().unwrap();
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        b.expect_bytes(&r, &start4, "parallel start4.elf");
    }
    let alarms = alarms_about(&format!("{pi}:"));
    assert!(
        alarms.is_empty(),
        "normal Pi traffic logged as a failure:\n{}",
        alarms.join("\n")
    );
}

/// U-Boot and iPXE nodes get generated boot files: a script image that
/// `dumpimage` accepts and that loads the kernel, initrd and device tree
/// the boot dir has; PXE menus; an iPXE script. The files they name are
/// served. iPXE ROMs are served to every client.
#[test]
fn uboot_and_ipxe_nodes_get_generated_boot_files() {
    let Some(b) = setup("uboot_and_ipxe_nodes_get_generated_boot_files") else {
        return;
    };
    let s = b.server();
    let nfs = format!(
        "root=/dev/nfs nfsroot={s}:/nodes/mars1,vers=3,tcp,port={NFS_PORT},mountport={NFS_PORT},nolock rw ip=dhcp"
    );
    // boot.scr.uimg: a legacy RISC-V script image.
    let out = b.fetched("boot.scr.uimg");
    run(&mut b.curl_cmd(b.mars_ip, "boot.scr.uimg", &out)).unwrap();
    let listing =
        String::from_utf8(run(Command::new("dumpimage").arg("-l").arg(&out)).unwrap()).unwrap();
    assert!(
        listing.contains("RISC-V Linux Script (uncompressed)"),
        "{listing}"
    );
    let img = fs::read(&out).unwrap();
    let (header, payload) = uimage::parse(&img).unwrap();
    assert_eq!(header.image_type, uimage::TYPE_SCRIPT);
    let script = uimage::script_text(payload).unwrap();
    assert!(
        listing.contains(&format!("Image 0: {} Bytes", script.len())),
        "{listing}"
    );
    for line in [
        format!("setenv bootargs \"console=ttyS0,115200 {nfs} earlycon\""),
        "if tftpboot ${kernel_addr_r} vmlinuz-6.1.0-test; then".into(),
        "tftpboot ${ramdisk_addr_r} initrd.img-6.1.0-test".into(),
        "tftpboot ${fdt_addr_r} dtbs/6.1.0-test/${fdtfile}".into(),
        "setenv lazyboot_fdt ${fdtcontroladdr}".into(),
        "booti ${kernel_addr_r} ${lazyboot_initrd} ${lazyboot_fdt}".into(),
    ] {
        assert!(script.contains(&line), "missing {line:?} in:\n{script}");
    }
    let r = b.get(b.mars_ip, "boot.scr", &[]);
    b.expect_bytes(&r, &img, "boot.scr");
    // The files the script names.
    for (req, path) in [
        ("vmlinuz-6.1.0-test", "boot/vmlinuz-6.1.0-test"),
        ("vmlinuz", "boot/vmlinuz-6.1.0-test"),
        ("initrd.img-6.1.0-test", "boot/initrd.img-6.1.0-test"),
        (
            "dtbs/6.1.0-test/starfive/jh7110-milkv-mars.dtb",
            "boot/dtbs/6.1.0-test/starfive/jh7110-milkv-mars.dtb",
        ),
        ("firmware/config.txt", "boot/firmware/config.txt"),
    ] {
        let r = b.get(b.mars_ip, req, &["blksize=1468", "tsize=0", "windowsize=8"]);
        b.expect_bytes(&r, &b.img.bytes(path), req);
    }
    // PXE menus: for its own MAC and the default, not for another MAC.
    let menu = format!(
        "# lazyboot PXE menu for node mars1 (generated)\nDEFAULT lazyboot\nTIMEOUT 0\nLABEL lazyboot\n  KERNEL vmlinuz-6.1.0-test\n  INITRD initrd.img-6.1.0-test\n  FDTDIR dtbs/6.1.0-test\n  APPEND console=ttyS0,115200 {nfs} earlycon\n"
    );
    for f in ["pxelinux.cfg/01-6c-cf-39-00-00-01", "pxelinux.cfg/default"] {
        let r = b.get(b.mars_ip, f, &["tsize=0"]);
        b.expect_bytes(&r, menu.as_bytes(), f);
    }
    b.expect_not_found(b.mars_ip, "pxelinux.cfg/01-dc-a6-32-01-02-03");
    b.expect_not_found(b.mars_ip, "cmdline.txt");

    // iPXE node: boot.ipxe; no U-Boot script.
    let ipxe = format!(
        "#!ipxe\n# lazyboot iPXE script for node pc1 (generated)\nkernel tftp://{s}/vmlinuz-6.1.0-test initrd=initrd.img-6.1.0-test root=/dev/nfs nfsroot={s}:/nodes/pc1,vers=3,tcp,port={NFS_PORT},mountport={NFS_PORT},nolock rw ip=dhcp\ninitrd tftp://{s}/initrd.img-6.1.0-test\nboot\n"
    );
    let r = b.get(b.pc_ip, "boot.ipxe", &["tsize=0"]);
    b.expect_bytes(&r, ipxe.as_bytes(), "boot.ipxe");
    b.expect_not_found(b.pc_ip, "boot.scr.uimg");

    // iPXE ROMs for everyone, strangers included.
    for rom in ["undionly.kpxe", "ipxe.efi"] {
        let path = Path::new(lazyboot::tftp::IPXE_ROM_DIR).join(rom);
        let Ok(want) = fs::read(&path) else {
            eprintln!(
                "NOTICE: {} missing (Debian package ipxe): not checked",
                path.display()
            );
            continue;
        };
        for ip in [b.pc_ip, b.stranger_ip] {
            let r = b.get(ip, rom, &["blksize=1468", "tsize=0"]);
            b.expect_bytes(&r, &want, rom);
        }
    }
}

/// No request leads outside the node's boot directory (`..`, absolute
/// paths, encoded dots, backslashes, symlinks to /etc), unknown clients get
/// nothing but the iPXE ROMs, a serial prefix from another node's address
/// is refused, and writes are refused.
#[test]
fn paths_never_escape_and_strangers_get_nothing() {
    let Some(b) = setup("paths_never_escape_and_strangers_get_nothing") else {
        return;
    };
    for f in [
        "../../etc/passwd",
        "../../etc/shadow",
        "/etc/shadow",
        "/boot/firmware/config.txt",
        "%2e%2e/%2e%2e/etc/passwd",
        "..%2f..%2fetc%2fshadow",
        "..\\..\\etc\\shadow",
        "8b07bcc6/../../etc/shadow",
        "8b07bcc6/../config.txt",
        "escape-abs",
        "escape-rel",
        "escape-dir/shadow",
        "8b07bcc6/escape-abs",
        "overlays",
        "",
    ] {
        b.expect_not_found(b.pi_ip, f);
    }
    // The U-Boot node's boot dir is /boot: /boot/firmware is inside, /etc not.
    for f in [
        "../etc/shadow",
        "firmware/../../etc/shadow",
        "/../etc/shadow",
        "firmware/escape-abs",
    ] {
        b.expect_not_found(b.mars_ip, f);
    }
    // Strangers: nothing, whatever the name.
    for f in [
        "config.txt",
        "cmdline.txt",
        "start4.elf",
        "boot.scr.uimg",
        "boot.ipxe",
        "vmlinuz",
        "pxelinux.cfg/default",
        "deadbeef/config.txt",
    ] {
        b.expect_not_found(b.stranger_ip, f);
    }
    // The Pi's serial from the U-Boot node's address: refused, and said so.
    b.expect_not_found(b.mars_ip, "8b07bcc6/config.txt");
    let alarms = alarms_about(&format!("{}:", b.mars_ip));
    assert!(alarms.iter().any(|l| l.contains("refused")), "{alarms:?}");
    // Writes.
    let r = b
        .py(&["put", "config.txt", "--bind", &b.pi_ip.to_string()])
        .unwrap();
    assert_eq!(
        r["reply"]["code"], 2,
        "WRQ should be an access violation: {r}"
    );
    // Nothing above served a byte of the secret.
    let log = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(!log.contains("SECRET-HASH"));
}

/// Option negotiation (blksize capped by the MTU and never above the
/// request, timeout echoed, tsize, windowsize capped), ignored bad option
/// values, and malformed packets that get no answer and do not disturb the
/// next good request.
#[test]
fn options_are_negotiated_and_malformed_packets_are_ignored() {
    let Some(b) = setup("options_are_negotiated_and_malformed_packets_are_ignored") else {
        return;
    };
    let start4 = b.img.bytes("boot/firmware/start4.elf");
    let f = format!("{PI_PREFIX}/start4.elf");
    let size = start4.len().to_string();
    // (options sent, OACK expected)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: &[Case] = &[
        (
            &["blksize=1468", "timeout=3", "tsize=0", "windowsize=4"],
            &[
                ("blksize", "1468"),
                ("timeout", "3"),
                ("tsize", size.as_str()),
                ("windowsize", "4"),
            ],
        ),
        // Above the 1500-byte MTU: capped to 1468.
        (&["blksize=9000"], &[("blksize", "1468")]),
        // Below the cap: exactly what was asked.
        (
            &["blksize=1024", "timeout=7"],
            &[("blksize", "1024"), ("timeout", "7")],
        ),
        (&["windowsize=1000"], &[("windowsize", "64")]),
        (
            &["BLKSIZE=600", "TSIZE=0"],
            &[("blksize", "600"), ("tsize", size.as_str())],
        ),
        // Out-of-range values and unknown options are ignored: no OACK.
        (
            &[
                "blksize=99999999",
                "tsize=100000000000000000000000000000000000000",
                "timeout=999",
                "windowsize=0",
                "multicast=",
            ],
            &[],
        ),
    ];
    for (opts, want) in cases {
        let r = b.get(b.pi_ip, &f, opts);
        b.expect_bytes(&r, &start4, &format!("{opts:?}"));
        assert_eq!(r["unrequested_option"], Value::Null, "{r}");
        if want.is_empty() {
            assert_eq!(r["oack"], Value::Null, "{opts:?}: {r}");
            assert_eq!(r["blksize"], 512, "{r}");
        } else {
            let oack = r["oack"].as_object().unwrap();
            assert_eq!(oack.len(), want.len(), "{opts:?}: {r}");
            for (k, v) in *want {
                assert_eq!(oack[*k], *v, "{opts:?}: {r}");
            }
        }
    }

    // Malformed datagrams to the server port: no answer, no harm.
    let name = hex::encode("config.txt");
    let malformed = [
        String::new(),
        "00".into(),
        "0001".into(),
        format!("0001{name}"),
        format!("0001{name}00"),
        format!("0001{name}00{}", hex::encode("octet")),
        format!("0001{name}00{}00", hex::encode("weird")),
        format!(
            "0001{name}00{}00{}00",
            hex::encode("octet"),
            hex::encode("blksize")
        ),
        format!("0009{name}00{}00", hex::encode("octet")),
        "000300014142".into(),
        "00040001".into(),
        format!("00050000{}00", hex::encode("x")),
        format!("0001ff{name}00{}00", hex::encode("octet")),
    ];
    let pi = b.pi_ip.to_string();
    for hex in &malformed {
        let r = b.py(&["raw", hex, "--bind", &pi, "--wait", "0.3"]).unwrap();
        assert_eq!(r["reply"], Value::Null, "answer to malformed {hex:?}: {r}");
    }
    // A well-formed request with a huge name: not found.
    let long = format!(
        "0001{}00{}00",
        hex::encode("a/".repeat(1500)),
        hex::encode("octet")
    );
    let r = b.py(&["raw", &long, "--bind", &pi]).unwrap();
    assert_eq!(r["reply"]["code"], 1, "{r}");
    // And the server still works.
    let r = b.get(b.pi_ip, &f, &["blksize=1468"]);
    b.expect_bytes(&r, &start4, "after malformed packets");
}

/// The retransmission timeout the server starts from (lazyboot's
/// `RETRANSMIT_TIMEOUT`), for "nothing more came within one interval".
const RETRANSMIT: Duration = Duration::from_secs(1);

/// A client's ERROR ends its transfer at once: after the Raspberry Pi's
/// "Early terminate" in answer to the tsize OACK, nothing more comes within
/// a retransmission interval and a margin (a server that ignores the
/// ERROR keeps resending the OACK, wasting the link for many seconds).
#[test]
fn a_client_error_after_the_oack_ends_the_transfer() {
    let Some(b) = setup("a_client_error_after_the_oack_ends_the_transfer") else {
        return;
    };
    let pi = b.pi_ip.to_string();
    let listen = (RETRANSMIT + Duration::from_millis(600))
        .as_secs_f64()
        .to_string();
    for name in ["start4.elf", "config.txt"] {
        let want = b.img.bytes(&format!("boot/firmware/{name}"));
        let file = format!("{PI_PREFIX}/{name}");
        let r = b
            .py(&[
                "abort-after-oack",
                &file,
                "--bind",
                &pi,
                "--listen",
                &listen,
            ])
            .unwrap();
        assert_eq!(r["oack"]["tsize"], want.len().to_string(), "{r}");
        assert_eq!(
            r["after_error"],
            serde_json::json!([]),
            "{name}: the server went on after the client's ERROR: {r}"
        );
    }
    // And the re-request that follows is served in full.
    let r = b
        .py(&[
            "probe",
            &format!("{PI_PREFIX}/start4.elf"),
            "--bind",
            &pi,
            "--same-port",
        ])
        .unwrap();
    b.expect_bytes(&r, &b.img.bytes("boot/firmware/start4.elf"), "re-request");
}

/// The same ACK three times brings one DATA (no sorcerer's apprentice),
/// and in a window an ACK of a block before the window's end resumes the
/// window right after it (RFC 7440).
#[test]
fn duplicate_acks_are_not_answered_and_a_window_resumes_after_a_loss() {
    let Some(b) = setup("duplicate_acks_are_not_answered_and_a_window_resumes_after_a_loss") else {
        return;
    };
    let pi = b.pi_ip.to_string();
    let file = format!("{PI_PREFIX}/start4.elf");
    // Well inside the retransmission timeout: only answers to ACKs count.
    let listen = (RETRANSMIT * 6 / 10).as_secs_f64().to_string();
    let r = b
        .py(&["dup-acks", &file, "--bind", &pi, "--listen", &listen])
        .unwrap();
    assert_eq!(r["first"], 1, "{r}");
    assert_eq!(
        r["data_after"],
        serde_json::json!([2]),
        "three ACKs of block 1 should bring block 2 once: {r}"
    );
    let r = b
        .py(&["window-loss", &file, "--bind", &pi, "--listen", &listen])
        .unwrap();
    assert_eq!(r["oack"]["windowsize"], "4", "{r}");
    assert_eq!(r["first"], serde_json::json!([1, 2, 3, 4]), "{r}");
    assert_eq!(
        r["after"],
        serde_json::json!([3, 4, 5, 6]),
        "after ACK 2 the window should start again at block 3: {r}"
    );
}

/// A client that goes silent gets retransmissions further and further
/// apart: 1 s, then 2 s, then 4 s, so that many silent clients do not
/// keep the link busy.
#[test]
fn retransmissions_back_off_when_the_client_is_silent() {
    let Some(b) = setup("retransmissions_back_off_when_the_client_is_silent") else {
        return;
    };
    let pi = b.pi_ip.to_string();
    let file = format!("{PI_PREFIX}/config.txt");
    let r = b
        .py(&["silent", &file, "--bind", &pi, "--listen", "5.5"])
        .unwrap();
    let at: Vec<f64> = r["arrivals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a[0], 6, "only the OACK comes: {r}");
            a[1].as_f64().unwrap()
        })
        .collect();
    // The OACK at once, again after 1 s, then 2 s later; the next is due
    // 4 s after that, past the listening.
    assert_eq!(at.len(), 3, "{r}");
    let gaps = [at[1] - at[0], at[2] - at[1]];
    assert!((0.8..1.6).contains(&gaps[0]), "{r}");
    assert!((1.8..2.6).contains(&gaps[1]), "{r}");
}

/// blksize, windowsize and tsize negotiated with atftp and curl come out
/// as the file's bytes, including block sizes the link caps, windows the
/// server caps, and small blocks whose numbers roll over past 65535.
#[test]
fn atftp_and_curl_negotiate_blksize_windowsize_and_tsize() {
    let Some(b) = setup("atftp_and_curl_negotiate_blksize_windowsize_and_tsize") else {
        return;
    };
    let start4 = b.img.bytes("boot/firmware/start4.elf");
    let file = format!("{PI_PREFIX}/start4.elf");
    // 2,228,224 bytes in 32-byte blocks: 69,633 blocks, past 65535.
    for blksize in ["512", "1024", "1468", "8192", "32"] {
        let out = b.fetched(&format!("curl-{blksize}"));
        let mut c = b.lab.client("timeout");
        c.args([
            "120",
            "curl",
            "-sS",
            "--tftp-blksize",
            blksize,
            "--interface",
        ])
        .arg(b.pi_ip.to_string())
        .arg("-o")
        .arg(&out)
        .arg(format!("tftp://{}:{}/{file}", b.server(), b.port));
        run(&mut c).unwrap();
        assert!(
            fs::read(&out).unwrap() == start4,
            "curl blksize {blksize}: bytes differ"
        );
    }
    for (blksize, window, granted) in [
        ("1468", "1", "1"),
        ("1468", "4", "4"),
        ("9000", "64", "64"),
        ("1024", "200", "64"),
        ("32", "16", "16"),
    ] {
        let out = b.fetched(&format!("atftp-{blksize}-{window}"));
        // The trace (on stderr) names every packet: not for 69,633 blocks.
        let traced = blksize != "32";
        let mut c = b.lab.client("timeout");
        c.args(["120", "atftp", "--get", "-r"])
            .arg(&file)
            .arg("-l")
            .arg(&out)
            .args(["--option", &format!("blksize {blksize}")])
            .args(["--option", &format!("windowsize {window}")])
            // ("tsize enable" would send the word "enable" as the value.)
            .args(["--option", "tsize 0"]);
        if traced {
            c.arg("--trace");
        }
        c.arg(b.server()).arg(b.port.to_string());
        let done = c.stdin(std::process::Stdio::null()).output().unwrap();
        let trace = String::from_utf8_lossy(&done.stderr).into_owned();
        assert!(done.status.success(), "atftp: {}", common::tail(&trace, 20));
        assert!(
            fs::read(&out).unwrap() == start4,
            "atftp blksize {blksize} windowsize {window}: bytes differ"
        );
        if !traced {
            continue;
        }
        let oack = trace
            .lines()
            .find(|l| l.contains("received OACK"))
            .unwrap_or_default()
            .to_string();
        let want_blksize = if blksize == "9000" { "1468" } else { blksize };
        for want in [
            format!("blksize: {want_blksize}"),
            format!("windowsize: {granted}"),
            format!("tsize: {}", start4.len()),
        ] {
            assert!(
                oack.contains(&want),
                "atftp's OACK {oack:?} lacks {want:?}:\n{}",
                trace
                    .lines()
                    .filter(|l| l.contains("RRQ"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// `tftp_max_sessions_per_client` (8 by default) and `tftp_max_sessions`:
/// the request past either limit, while the others are still open, gets
/// "server busy, retry" (code 0); the ones within get their first block.
#[test]
fn session_limits_per_client_and_in_all_answer_server_busy() {
    let Some(b) = setup_with(
        "session_limits_per_client_and_in_all_answer_server_busy",
        "tftp_max_sessions = 12",
    ) else {
        return;
    };
    let pi = format!("{}:9:{PI_PREFIX}/start4.elf", b.pi_ip);
    let mars = format!("{}:5:vmlinuz", b.mars_ip);
    let r = b
        .py(&["hold", "unused", "--from", &pi, "--from", &mars])
        .unwrap();
    let replies = r["replies"].as_array().unwrap();
    let kinds: Vec<String> = replies
        .iter()
        .map(|r| format!("{} {}", r[0].as_str().unwrap(), r[1].as_str().unwrap()))
        .collect();
    let busy = serde_json::json!(["error", 0, "server busy, retry"]);
    let (pi, mars) = (b.pi_ip.to_string(), b.mars_ip.to_string());
    let want: Vec<String> = std::iter::repeat_n(format!("{pi} data"), 8)
        .chain([format!("{pi} error")])
        .chain(std::iter::repeat_n(format!("{mars} data"), 4))
        .chain([format!("{mars} error")])
        .collect();
    assert_eq!(kinds, want, "{r}");
    for i in [8, 13] {
        assert_eq!(
            replies[i].as_array().unwrap()[1..],
            busy.as_array().unwrap()[..],
            "{r}"
        );
    }
    // Nothing was kept of the refused requests, and the held transfers
    // ended with the client's ERROR: a new one is served.
    let r = b.get(
        b.pi_ip,
        &format!("{PI_PREFIX}/config.txt"),
        &["blksize=1468"],
    );
    b.expect_bytes(&r, &b.img.bytes("boot/firmware/config.txt"), "after");
}
