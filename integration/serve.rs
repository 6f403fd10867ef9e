//! `lazyboot serve` end to end: one config with a node of each kind, one
//! image reference, real clients in a network namespace: our scripted DHCP
//! client, curl for TFTP, libnfs for NFS.

mod common;

use anyhow::{bail, Context, Result};
use common::netns::NetLab;
use common::{sh, Registry};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_lazyboot");
const TOOLS: &[&str] = &["ip", "python3", "curl", "nfs-ls", "nfs-cat"];

const PI_MAC: &str = "dc:a6:32:0a:0b:0c";
const PI_SERIAL: &str = "10000000a1b2c3d4";
const UBOOT_MAC: &str = "6c:cf:39:00:00:01";
const IPXE_MAC: &str = "52:54:00:12:34:56";

/// A one-layer image `dir/layout:os`: `fill` is shell run with `$r` set to
/// the root file system (`dir/bundle/rootfs`, kept for comparisons).
fn one_layer_image(dir: &Path, fill: &str) -> Result<()> {
    sh(&format!(
        "umoci init --layout {l} && umoci new --image {l}:os && umoci unpack --image {l}:os {b}
r={b}/rootfs
{fill}
umoci repack --image {l}:os {b}",
        l = dir.join("layout").display(),
        b = dir.join("bundle").display(),
    ))
    .map(|_| ())
}

/// A small image laid out like a netbootable OS: Pi firmware files, a kernel
/// and initrd under /boot, and a root file system.
fn build_boot_image(dir: &Path, hostname: &str) -> Result<()> {
    one_layer_image(
        dir,
        &format!(
            r#"mkdir -p $r/boot/firmware/overlays $r/etc $r/bin $r/home/user
echo 'arm_64bit=1' > $r/boot/firmware/config.txt
echo 'console=serial0,115200 console=tty1 root=PARTUUID=1234-02 rootfstype=ext4 fsck.repair=yes rootwait' > $r/boot/firmware/cmdline.txt
head -c 300000 /dev/urandom > $r/boot/firmware/start4.elf
head -c 3000000 /dev/urandom > $r/boot/firmware/kernel8.img
head -c 50000 /dev/urandom > $r/boot/firmware/bcm2711-rpi-cm4.dtb
head -c 2000 /dev/urandom > $r/boot/firmware/overlays/vc4-kms-v3d.dtbo
head -c 4000000 /dev/urandom > $r/boot/vmlinuz-6.1.0-test
head -c 2000000 /dev/urandom > $r/boot/initrd.img-6.1.0-test
ln -s vmlinuz-6.1.0-test $r/boot/vmlinuz
ln -s initrd.img-6.1.0-test $r/boot/initrd.img
echo {hostname} > $r/etc/hostname
printf '#!/bin/sh\necho hi\n' > $r/bin/hello && chmod 0755 $r/bin/hello
chown 1000:1000 $r/home/user"#
        ),
    )
}

struct Server {
    child: Child,
}

impl Server {
    fn start(config: &Path) -> Result<Server> {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        if !line.starts_with("serving") {
            let _ = child.kill();
            bail!("serve did not start: {line:?}");
        }
        Ok(Server { child })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn dora(lab: &NetLab, opts: &[&str]) -> Result<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/clients/dhcp_client.py");
    let out = lab
        .client("python3")
        .arg(script)
        .args(["--iface", &lab.client_if, "--timeout", "3", "dora"])
        .args(opts)
        .output()?;
    if !out.status.success() {
        bail!("dhcp client: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Option `code` of a reply, without the NUL some string options carry.
fn option(reply: &serde_json::Value, code: u8) -> Option<Vec<u8>> {
    reply["options"][code.to_string()].as_str().map(|h| {
        let mut v = hex::decode(h).unwrap();
        while v.last() == Some(&0) && code != 43 && code != 175 {
            v.pop();
        }
        v
    })
}

/// Take the address DHCP gave us, as the node's firmware would.
fn bind(lab: &NetLab, mac: &str, ip: &str) -> Result<()> {
    sh(&format!(
        "ip -n {ns} addr flush dev {i}; ip -n {ns} link set {i} address {mac}; ip -n {ns} addr add {ip}/24 dev {i}",
        ns = lab.ns,
        i = lab.client_if
    ))?;
    Ok(())
}

fn tftp_get(lab: &NetLab, port: u16, path: &str) -> Result<Vec<u8>> {
    let out = lab
        .client("curl")
        .args([
            "-sS",
            "--fail",
            "--max-time",
            "20",
            "--tftp-blksize",
            "1468",
        ])
        .arg(format!("tftp://{}:{port}/{path}", lab.server_ip))
        .output()?;
    if !out.status.success() {
        bail!("tftp {path}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

fn nfs_put(lab: &NetLab, port: u16, local: &Path, path: &str) -> Result<()> {
    let out = lab
        .client("nfs-cp")
        .arg(local)
        .arg(format!(
            "nfs://{}{path}?version=3&nfsport={port}&mountport={port}",
            lab.server_ip
        ))
        .output()?;
    if !out.status.success() {
        bail!("nfs-cp {path}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn nfs(lab: &NetLab, tool: &str, port: u16, path: &str) -> Result<Vec<u8>> {
    let out = lab
        .client(tool)
        .arg(format!(
            "nfs://{}{path}?version=3&nfsport={port}&mountport={port}",
            lab.server_ip
        ))
        .output()?;
    if !out.status.success() {
        bail!("{tool} {path}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

#[test]
fn one_image_boots_every_node_kind() -> Result<()> {
    if !common::require_root_and_tools("one_image_boots_every_node_kind", TOOLS) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    build_boot_image(tmp.path(), "lazynode")?;
    let reg = Registry::start()?;
    common::push(&tmp.path().join("layout"), "os", &reg, "os/netboot:1")?;
    let image = reg.reference("os/netboot:1");
    let lab = NetLab::new(false)?;
    let (tftp_port, nfs_port) = (common::free_udp_port(), common::free_tcp_port());
    let net = format!("10.213.{}", lab.subnet);
    let config = tmp.path().join("lazyboot.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
interface = "{host_if}"
address = "{server}"
state_dir = "{state}"
cache_dir = "{cache}"
cache_size = "2G"
tftp_port = {tftp_port}
nfs_port = {nfs_port}

[dhcp]
mode = "full"
pool_start = "{net}.100"
pool_end = "{net}.150"
router = "{server}"

[[nodes]]
name = "pi"
mac = "{PI_MAC}"
serial = "{PI_SERIAL}"
kind = "raspberrypi"
image = "{image}"
root = "persistent"

[[nodes]]
name = "mars"
mac = "{UBOOT_MAC}"
kind = "uboot"
image = "{image}"
root = "ephemeral"

[[nodes]]
name = "pc"
mac = "{IPXE_MAC}"
kind = "ipxe"
image = "{image}"
root = "readonly"
"#,
            host_if = lab.host_if,
            server = lab.server_ip,
            state = tmp.path().join("state").display(),
            cache = tmp.path().join("cache").display(),
        ),
    )?;
    let _server = Server::start(&config)?;
    let server = lab.server_ip.to_string();
    let pool = |ip: &str| -> bool {
        let ip: Ipv4Addr = ip.parse().unwrap();
        ip.octets()[..3] == lab.server_ip.octets()[..3] && (100..=150).contains(&ip.octets()[3])
    };

    // Raspberry Pi 4 / CM4: options 60, 93, 97 as its boot ROM sends them.
    lab.set_client_mac(PI_MAC)?;
    let r = dora(
        &lab,
        &[
            "--opt",
            "60=s:PXEClient:Arch:00000:UNDI:002001",
            "--opt",
            "93=h:0000",
            "--opt",
            "97=h:0034695db0000000000000000000000000",
        ],
    )?;
    let ack = &r["ack"];
    let pi_ip = ack["yiaddr"]
        .as_str()
        .context("pi got no address")?
        .to_string();
    assert!(pool(&pi_ip), "{pi_ip}");
    assert_eq!(ack["siaddr"], server.as_str());
    assert_eq!(option(ack, 60).as_deref(), Some(&b"PXEClient"[..]));
    assert_eq!(option(ack, 66).as_deref(), Some(server.as_bytes()));
    let menu = option(ack, 43).context("option 43")?;
    assert!(String::from_utf8_lossy(&menu).contains("Raspberry Pi Boot   "));
    bind(&lab, PI_MAC, &pi_ip)?;
    let serial8 = &PI_SERIAL[PI_SERIAL.len() - 8..];
    let config_txt = tftp_get(&lab, tftp_port, &format!("{serial8}/config.txt"))?;
    assert_eq!(config_txt, b"arm_64bit=1\n");
    let kernel = tftp_get(&lab, tftp_port, &format!("{serial8}/kernel8.img"))?;
    assert_eq!(
        kernel,
        std::fs::read(tmp.path().join("bundle/rootfs/boot/firmware/kernel8.img"))?
    );
    let cmdline = String::from_utf8(tftp_get(&lab, tftp_port, "cmdline.txt")?)?;
    assert!(cmdline.contains("console=serial0,115200"), "{cmdline}");
    assert!(!cmdline.contains("PARTUUID"), "{cmdline}");
    assert!(
        cmdline.contains(&format!(
            "nfsroot={server}:/nodes/pi,vers=3,tcp,port={nfs_port},mountport={nfs_port},nolock"
        )),
        "{cmdline}"
    );
    let listing = String::from_utf8(nfs(&lab, "nfs-ls", nfs_port, "/nodes/pi/etc")?)?;
    assert!(listing.contains("hostname"), "{listing}");
    let hostname = nfs(&lab, "nfs-cat", nfs_port, "/nodes/pi/etc/hostname")?;
    assert_eq!(hostname, b"lazynode\n");

    // U-Boot (Mars CM): vendor class U-Boot, boot script by name.
    lab.set_client_mac(UBOOT_MAC)?;
    let r = dora(&lab, &["--opt", "60=s:U-Boot.riscv64"])?;
    let ack = &r["ack"];
    let mars_ip = ack["yiaddr"]
        .as_str()
        .context("mars got no address")?
        .to_string();
    assert!(pool(&mars_ip) && mars_ip != pi_ip, "{mars_ip}");
    assert_eq!(ack["siaddr"], server.as_str());
    assert_eq!(option(ack, 67).as_deref(), Some(&b"boot.scr.uimg"[..]));
    bind(&lab, UBOOT_MAC, &mars_ip)?;
    let script = tftp_get(&lab, tftp_port, "boot.scr.uimg")?;
    assert_eq!(&script[..4], &[0x27, 0x05, 0x19, 0x56], "uImage magic");
    let text = String::from_utf8_lossy(&script[72..]).into_owned();
    assert!(
        text.contains("vmlinuz") && text.contains("/nodes/mars"),
        "{text}"
    );
    let hostname = nfs(&lab, "nfs-cat", nfs_port, "/nodes/mars/etc/hostname")?;
    assert_eq!(hostname, b"lazynode\n");
    // Another node's export is refused to this address.
    assert!(nfs(&lab, "nfs-ls", nfs_port, "/nodes/pi").is_err());

    // iPXE PC: the iPXE user class gets its generated script.
    lab.set_client_mac(IPXE_MAC)?;
    let r = dora(&lab, &["--opt", "77=s:iPXE", "--opt", "93=h:0000"])?;
    let ack = &r["ack"];
    let pc_ip = ack["yiaddr"]
        .as_str()
        .context("pc got no address")?
        .to_string();
    assert_eq!(option(ack, 67).as_deref(), Some(&b"boot.ipxe"[..]));
    let o175 = option(ack, 175).context("option 175")?;
    assert!(o175.windows(3).any(|w| w == [176, 1, 1]), "{o175:?}");
    bind(&lab, IPXE_MAC, &pc_ip)?;
    let ipxe = String::from_utf8(tftp_get(&lab, tftp_port, "boot.ipxe")?)?;
    assert!(
        ipxe.starts_with("#!ipxe") && ipxe.contains("/nodes/pc"),
        "{ipxe}"
    );
    let kernel = tftp_get(&lab, tftp_port, "vmlinuz")?;
    assert_eq!(
        kernel,
        std::fs::read(tmp.path().join("bundle/rootfs/boot/vmlinuz-6.1.0-test"))?
    );
    let hello = nfs(&lab, "nfs-cat", nfs_port, "/nodes/pc/bin/hello")?;
    assert_eq!(hello, b"#!/bin/sh\necho hi\n");
    Ok(())
}

#[test]
fn a_bad_config_is_refused_naming_key_and_line() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let path: PathBuf = tmp.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\n\n[dhcp]\nmode = \"sometimes\"\n",
    )?;
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("line 6") && err.contains("sometimes"), "{err}");
    Ok(())
}

#[test]
fn retagging_the_image_reboots_the_node_into_it_with_a_fresh_root() -> Result<()> {
    if !common::require_root_and_tools(
        "retagging_the_image_reboots_the_node_into_it_with_a_fresh_root",
        &["ip", "python3", "curl", "nfs-cat", "nfs-cp"],
    ) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    std::fs::create_dir_all(&one)?;
    std::fs::create_dir_all(&two)?;
    build_boot_image(&one, "release-one")?;
    build_boot_image(&two, "release-two")?;
    let reg = Registry::start()?;
    common::push(&one.join("layout"), "os", &reg, "os/swap:live")?;
    let lab = NetLab::new(false)?;
    let (tftp_port, nfs_port) = (common::free_udp_port(), common::free_tcp_port());
    let net = format!("10.213.{}", lab.subnet);
    let config = tmp.path().join("lazyboot.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
interface = "{host_if}"
address = "{server}"
state_dir = "{state}"
cache_dir = "{cache}"
tftp_port = {tftp_port}
nfs_port = {nfs_port}

[dhcp]
mode = "full"
pool_start = "{net}.100"
pool_end = "{net}.150"

[[nodes]]
name = "pc"
mac = "{IPXE_MAC}"
kind = "ipxe"
image = "{image}"
root = "persistent"
"#,
            host_if = lab.host_if,
            server = lab.server_ip,
            state = tmp.path().join("state").display(),
            cache = tmp.path().join("cache").display(),
            image = reg.reference("os/swap:live"),
        ),
    )?;
    let _server = Server::start(&config)?;
    lab.set_client_mac(IPXE_MAC)?;
    let boot = |lab: &NetLab| -> Result<()> {
        let r = dora(lab, &["--opt", "77=s:iPXE", "--opt", "93=h:0000"])?;
        let ip = r["ack"]["yiaddr"]
            .as_str()
            .context("no address")?
            .to_string();
        bind(lab, IPXE_MAC, &ip)
    };

    boot(&lab)?;
    assert_eq!(
        nfs(&lab, "nfs-cat", nfs_port, "/nodes/pc/etc/hostname")?,
        b"release-one\n"
    );
    let note = tmp.path().join("note");
    std::fs::write(&note, "written during boot one\n")?;
    nfs_put(&lab, nfs_port, &note, "/nodes/pc/etc/note")?;
    assert_eq!(
        nfs(&lab, "nfs-cat", nfs_port, "/nodes/pc/etc/note")?,
        b"written during boot one\n"
    );
    // Same image, next boot: a persistent root keeps its changes.
    boot(&lab)?;
    assert!(nfs(&lab, "nfs-cat", nfs_port, "/nodes/pc/etc/note").is_ok());

    // Move the tag to the second image and boot again.
    common::push(&two.join("layout"), "os", &reg, "os/swap:live")?;
    boot(&lab)?;
    let kernel = tftp_get(&lab, tftp_port, "vmlinuz")?;
    assert_eq!(
        kernel,
        std::fs::read(two.join("bundle/rootfs/boot/vmlinuz-6.1.0-test"))?,
        "TFTP serves the new image's kernel"
    );
    assert_eq!(
        nfs(&lab, "nfs-cat", nfs_port, "/nodes/pc/etc/hostname")?,
        b"release-two\n"
    );
    assert!(
        nfs(&lab, "nfs-cat", nfs_port, "/nodes/pc/etc/note").is_err(),
        "the root starts fresh on the new image"
    );
    Ok(())
}

/// A config with one iPXE node `pc` on `image`, plus `server_extra` TOML
/// in `[server]` and `extra` TOML after the node.
fn pc_config(
    lab: &NetLab,
    dir: &Path,
    image: &str,
    (tftp_port, nfs_port): (u16, u16),
    server_extra: &str,
    extra: &str,
) -> Result<PathBuf> {
    let config = dir.join("lazyboot.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
interface = "{host_if}"
address = "{server}"
state_dir = "{state}"
cache_dir = "{cache}"
tftp_port = {tftp_port}
nfs_port = {nfs_port}
{server_extra}

[dhcp]
mode = "off"

[[nodes]]
name = "pc"
mac = "{IPXE_MAC}"
kind = "ipxe"
image = "{image}"
ip = "{pc_ip}"
root = "readonly"
{extra}
"#,
            host_if = lab.host_if,
            server = lab.server_ip,
            state = dir.join("state").display(),
            cache = dir.join("config-cache").display(),
            pc_ip = lab.client_ip,
        ),
    )?;
    Ok(config)
}

/// A running `serve` of [`pc_config`]'s one node, and its TFTP port.
struct PcServer {
    tftp_port: u16,
    _server: Server,
}

/// Write [`pc_config`] (free ports) into `dir` and start `serve` on it with
/// `globals`; it must say "serving".
fn serve_pc(
    lab: &NetLab,
    dir: &Path,
    image: &str,
    server_extra: &str,
    extra: &str,
    globals: &[&str],
) -> Result<PcServer> {
    let (tftp_port, nfs_port) = (common::free_udp_port(), common::free_tcp_port());
    let config = pc_config(lab, dir, image, (tftp_port, nfs_port), server_extra, extra)?;
    let (line, child) = start_serve(&config, globals)?;
    let server = Server { child };
    if !line.starts_with("serving") {
        bail!(
            "serve did not start: {line:?}\n{}",
            std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
        );
    }
    Ok(PcServer {
        tftp_port,
        _server: server,
    })
}

/// Start `serve` with extra global options, its log in `serve.log` next to
/// the config; its first stdout line and the child (still running if it
/// said "serving").
fn start_serve(config: &Path, globals: &[&str]) -> Result<(String, Child)> {
    let log = std::fs::File::create(config.with_file_name("serve.log"))?;
    let mut child = Command::new(BIN)
        .args(globals)
        .args(["serve", "--config"])
        .arg(config)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "lazyboot=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    Ok((line, child))
}

#[test]
fn portmapper_showmount_and_udp_mount_and_read() -> Result<()> {
    let tools = &["ip", "rpcinfo", "showmount", "curl"];
    if !common::require_root_and_tools("portmapper_showmount_and_udp_mount_and_read", tools) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    build_boot_image(tmp.path(), "udpnode")?;
    let reg = Registry::start()?;
    common::push(&tmp.path().join("layout"), "os", &reg, "os/netboot:1")?;
    let image = reg.reference("os/netboot:1");
    let lab = NetLab::new(true)?;
    // A second node whose reference does not resolve: reported at start,
    // the other node is served all the same.
    let broken = format!(
        "[[nodes]]\nname = \"broken\"\nmac = \"52:54:00:00:00:99\"\nkind = \"ipxe\"\nimage = \"{}\"\n",
        reg.reference("os/missing:1")
    );
    let (tftp_port, nfs_port) = (common::free_udp_port(), common::free_tcp_port());
    let config = pc_config(&lab, tmp.path(), &image, (tftp_port, nfs_port), "", &broken)?;
    // A global option: --cache-dir replaces the config's cache_dir.
    let cache = tmp.path().join("global-cache");
    let (line, child) = start_serve(&config, &["--cache-dir", cache.to_str().unwrap()])?;
    let _server = Server { child };
    assert!(
        line.starts_with("serving") && line.contains("portmapper on"),
        "{line:?}"
    );
    let server = lab.server_ip.to_string();

    // rpcinfo -p (portmapper v2 DUMP over TCP) lists the portmapper itself,
    // MOUNT and NFS v3 on both transports.
    let out = lab.client("rpcinfo").args(["-p", &server]).output()?;
    let dump = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rpcinfo -p: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (prog, proto, port) in [
        ("100000", "tcp", 111),
        ("100000", "udp", 111),
        ("100005", "tcp", nfs_port),
        ("100005", "udp", nfs_port),
        ("100003", "tcp", nfs_port),
        ("100003", "udp", nfs_port),
    ] {
        let found = dump.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 4 && f[0] == prog && f[1] == "3" && f[2] == proto && f[3] == port.to_string()
                || (prog == "100000"
                    && f.len() >= 4
                    && f[0] == prog
                    && f[2] == proto
                    && f[3] == "111")
        });
        assert!(
            found,
            "{prog} {proto} {port} missing from rpcinfo -p:\n{dump}"
        );
    }
    // rpcbind v3/v4 lookups: a NULL call to MOUNT over UDP and NFS over TCP
    // through GETADDR.
    for (flag, prog) in [("-u", "100005"), ("-t", "100003")] {
        let out = lab
            .client("rpcinfo")
            .args([flag, &server, prog, "3"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("ready and waiting"),
            "rpcinfo {flag} {prog}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // showmount asks the portmapper for MOUNT, then EXPORT.
    let out = lab.client("showmount").args(["-e", &server]).output()?;
    let exports = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && exports.contains("/nodes/pc"),
        "showmount -e: {exports} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // MOUNT and NFS over UDP from the node's address: MNT, LOOKUP, FSINFO
    // (rtmax bounded for datagrams) and READs of a 4 MB file, each reply
    // within one datagram, asking for more than fits.
    let sock = common::nfsrpc::udp_in_netns(
        &lab.ns,
        lab.client_ip,
        std::net::SocketAddr::from((lab.server_ip, nfs_port)),
    )?;
    let mut udp = common::nfsrpc::UdpClient::new(sock);
    let root = udp.mnt("/nodes/pc")?;
    let rtmax = udp.rtmax(&root)?;
    assert!(rtmax <= 32 * 1024, "rtmax over UDP is {rtmax}");
    let kernel = udp.walk(&root, "boot/vmlinuz-6.1.0-test")?;
    let (data, largest) = udp.read_all(&kernel, 1 << 20)?;
    assert_eq!(
        data,
        std::fs::read(tmp.path().join("bundle/rootfs/boot/vmlinuz-6.1.0-test"))?
    );
    assert!(
        largest <= rtmax as usize,
        "a READ reply carried {largest} bytes"
    );

    // A registration change from the network (SET, UNSET) is refused.
    let mut pm = common::nfsrpc::UdpClient::new(common::nfsrpc::udp_in_netns(
        &lab.ns,
        lab.client_ip,
        std::net::SocketAddr::from((lab.server_ip, 111)),
    )?);
    let mapping: Vec<u8> = [100_005u32, 3, 17, 9999]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    for proc_ in [1, 2] {
        let r = pm.call(100_000, 2, proc_, &mapping)?;
        assert_eq!(
            (r.stat.as_str(), &r.body[..]),
            ("SUCCESS", &[0u8, 0, 0, 0][..])
        );
    }
    let out = lab.client("rpcinfo").args(["-p", &server]).output()?;
    assert!(!String::from_utf8_lossy(&out.stdout).contains("9999"));

    // The global --cache-dir was used, the config's cache_dir was not.
    assert!(
        common::dir_size(&cache)? > 1_000_000,
        "nothing cached in --cache-dir"
    );
    assert!(
        !tmp.path().join("config-cache").exists(),
        "config cache_dir was used"
    );

    // The node with a bad reference is marked failed; `pc` was served.
    let nodes = common::curl_get(&format!("http://{server}:8080/api/v1/nodes/broken"), &[])?;
    let v: serde_json::Value = serde_json::from_slice(&nodes)?;
    let why = v["failed"].as_str().unwrap_or_default();
    assert!(why.contains("os/missing"), "{v}");
    Ok(())
}

#[test]
fn a_taken_portmapper_port_is_explained_and_can_be_turned_off() -> Result<()> {
    if !common::require_root_and_tools("a_taken_portmapper_port", &["ip"]) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let lab = NetLab::new(true)?;
    let (tftp_port, nfs_port) = (common::free_udp_port(), common::free_tcp_port());
    // Someone (an rpcbind) holds port 111 on the server address.
    let _holder = std::net::TcpListener::bind((lab.server_ip, 111))?;
    let _holder_udp = std::net::UdpSocket::bind((lab.server_ip, 111))?;
    let image = "oci:/nonexistent";
    let config = pc_config(&lab, tmp.path(), image, (tftp_port, nfs_port), "", "")?;
    let (line, mut child) = start_serve(&config, &[])?;
    let status = child.wait()?;
    let err = std::fs::read_to_string(config.with_file_name("serve.log"))?;
    assert!(!line.starts_with("serving"), "{line:?}");
    assert!(!status.success());
    assert!(
        err.contains("port 111") && err.contains("rpcbind") && err.contains("portmapper = false"),
        "{err}"
    );
    // With the portmapper off, serve starts (and says so).
    let config = pc_config(
        &lab,
        tmp.path(),
        image,
        (tftp_port, nfs_port),
        "portmapper = false",
        "",
    )?;
    let (line, child) = start_serve(&config, &[])?;
    let _server = Server { child };
    assert!(
        line.starts_with("serving") && line.contains("portmapper off"),
        "{line:?}"
    );
    Ok(())
}

#[test]
fn serve_rejects_a_bad_global_option_value() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = Command::new(BIN)
        .args(["--cache-size", "lots", "serve", "--config"])
        .arg(tmp.path().join("none.toml"))
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cache-size") && err.contains("lots"),
        "{err}"
    );
    Ok(())
}

/// `sha256-HEX` of the manifest `repo:tag` points to: the referrers
/// fallback tag an artifact about it is listed under.
fn fallback_tag(reg: &Registry, repo: &str, tag: &str) -> Result<String> {
    let raw = common::curl_get(
        &format!("{}/v2/{repo}/manifests/{tag}", reg.url()),
        &[
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ],
    )?;
    Ok(format!("sha256-{}", common::sha256_hex(&raw)))
}

fn has_tag(reg: &Registry, repo: &str, tag: &str) -> bool {
    reg.get_manifest(repo, tag).is_ok()
}

#[test]
fn publish_indexes_pushes_the_first_pass_index_only_when_asked() -> Result<()> {
    if !common::require_root_and_tools("publish_indexes", &["ip", "curl"]) {
        return Ok(());
    }
    let reg = Registry::start()?;
    for (publish, repo) in [(false, "os/private"), (true, "os/shared")] {
        let tmp = tempfile::tempdir()?;
        build_boot_image(tmp.path(), "pub")?;
        common::push(&tmp.path().join("layout"), "os", &reg, &format!("{repo}:1"))?;
        let lab = NetLab::new(true)?;
        let _server = serve_pc(
            &lab,
            tmp.path(),
            &reg.reference(&format!("{repo}:1")),
            &format!("publish_indexes = {publish}"),
            "",
            &[],
        )?;
        let tag = fallback_tag(&reg, repo, "1")?;
        // The image opens (one streaming pass per layer) right after start.
        let wait = if publish { 60 } else { 10 };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
        while !has_tag(&reg, repo, &tag) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(tmp.path().join("serve.log"))?;
        assert_eq!(
            has_tag(&reg, repo, &tag),
            publish,
            "publish_indexes = {publish}: referrers tag {tag} present?\n{log}"
        );
        if publish {
            let index = reg.get_manifest(repo, &tag)?;
            let listed = index["manifests"].as_array().map_or(0, |m| m.len());
            assert!(listed >= 1, "the fallback index lists no artifact: {index}");
        }
    }
    Ok(())
}

#[test]
fn an_image_without_a_kernel_is_a_clear_error_in_the_log_and_the_profile() -> Result<()> {
    if !common::require_root_and_tools("an_image_without_a_kernel", &["ip", "curl", "umoci"]) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let layout = tmp.path().join("layout");
    one_layer_image(
        tmp.path(),
        "mkdir -p $r/boot $r/etc && echo nokernel > $r/etc/hostname",
    )?;
    let reg = Registry::start()?;
    common::push(&layout, "os", &reg, "os/nokernel:1")?;
    let lab = NetLab::new(true)?;
    let pc = serve_pc(
        &lab,
        tmp.path(),
        &reg.reference("os/nokernel:1"),
        "",
        "",
        &[],
    )?;
    let err = tftp_get(&lab, pc.tftp_port, "boot.ipxe")
        .unwrap_err()
        .to_string();
    let log = std::fs::read_to_string(tmp.path().join("serve.log"))?;
    assert!(
        log.contains("cannot make boot.ipxe: no kernel found in /boot"),
        "{err}\n{log}"
    );
    // Profiles are written out every second.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = Command::new(BIN)
        .args(["profile", "pc", "--state-dir"])
        .arg(tmp.path().join("state"))
        .output()?;
    let profile = String::from_utf8_lossy(&out.stdout);
    assert!(
        profile.contains("error:") && profile.contains("no kernel found"),
        "{profile}"
    );
    Ok(())
}

#[test]
fn portmapper_register_mode_registers_with_the_hosts_rpcbind_and_unregisters() -> Result<()> {
    let tools = &["ip", "rpcbind", "rpcinfo", "mount"];
    if !common::require_root_and_tools("portmapper_register_mode", tools) {
        return Ok(());
    }
    // A namespace of its own (network and, through `ip netns exec`, mounts:
    // a private /run for rpcbind's socket and state), with rpcbind in it.
    let n = std::process::id() % 200 + 20;
    let ns = format!("lbrpc{n}");
    let addr = format!("10.214.{n}.1");
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    sh(&format!(
        "ip netns add {ns} && ip -n {ns} link set lo up && ip -n {ns} link add d0 type veth peer name d1 \
         && ip -n {ns} addr add {addr}/24 dev d0 && ip -n {ns} link set d0 up && ip -n {ns} link set d1 up"
    ))?;
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "pids", &self.0])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").arg(pid).output();
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }
    let _ns = Ns(ns.clone());
    let mut rpcbind = Command::new("ip")
        .args(["netns", "exec", &ns, "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /run && exec rpcbind -f")
        .stdin(Stdio::null())
        .spawn()?;
    let rpcinfo = |host: &str| -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "rpcinfo", "-p", host])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !rpcinfo("127.0.0.1")?.contains("portmapper") {
        if std::time::Instant::now() > deadline {
            let _ = rpcbind.kill();
            bail!("rpcbind did not come up in {ns}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let tmp = tempfile::tempdir()?;
    let nfs_port = 3049;
    let config = tmp.path().join("lazyboot.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
interface = "d0"
address = "{addr}"
state_dir = "{state}"
cache_dir = "{cache}"
nfs_port = {nfs_port}
portmapper = "register"

[dhcp]
mode = "off"

[[nodes]]
name = "pc"
mac = "{IPXE_MAC}"
kind = "ipxe"
image = "oci:/nonexistent"
"#,
            state = tmp.path().join("state").display(),
            cache = tmp.path().join("cache").display(),
        ),
    )?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns, BIN, "serve", "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(tmp.path().join("serve.log"))?)
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    let log = || std::fs::read_to_string(tmp.path().join("serve.log")).unwrap_or_default();
    assert!(
        line.starts_with("serving") && line.contains("registered with the host's rpcbind"),
        "{line:?}\n{}",
        log()
    );
    // MOUNT and NFS v3 are listed by the host's rpcbind, on both transports,
    // at lazyboot's port; clients asking it on the served address find them.
    let listed = rpcinfo(&addr)?;
    for (prog, proto) in [
        ("100005", "tcp"),
        ("100005", "udp"),
        ("100003", "tcp"),
        ("100003", "udp"),
    ] {
        assert!(
            listed.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 4
                    && f[0] == prog
                    && f[1] == "3"
                    && f[2] == proto
                    && f[3] == nfs_port.to_string()
            }),
            "{prog} {proto} not registered:\n{listed}"
        );
    }
    // A NULL call to MOUNT through rpcbind's answer reaches lazyboot.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, "rpcinfo", "-u", &addr, "100005", "3"])
        .output()?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ready and waiting"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Stopping lazyboot takes its programs out again.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait()?;
    let after = rpcinfo("127.0.0.1")?;
    assert!(
        !after.contains("100005") && !after.contains("100003") && after.contains("portmapper"),
        "still registered after serve stopped:\n{after}\n{}",
        log()
    );
    let _ = rpcbind.kill();
    let _ = rpcbind.wait();
    Ok(())
}

#[test]
fn serve_resolves_images_for_the_global_platform() -> Result<()> {
    if !common::require_root_and_tools(
        "serve_resolves_images_for_the_global_platform",
        &["ip", "curl"],
    ) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    build_boot_image(tmp.path(), "plat")?;
    let reg = Registry::start()?;
    common::push(&tmp.path().join("layout"), "os", &reg, "os/plat:1")?;
    let lab = NetLab::new(true)?;
    // The image is single-platform amd64: asked for s390x, serve resolves
    // it for s390x and says that it does not match (a single-platform
    // image is still served: its config may not say its platform right).
    let globals = ["--platform", "linux/s390x"];
    let _pc = serve_pc(
        &lab,
        tmp.path(),
        &reg.reference("os/plat:1"),
        "",
        "",
        &globals,
    )?;
    let log_path = tmp.path().join("serve.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&log_path)?;
        if log.contains("does not match the requested platform") {
            assert!(log.contains("wanted=linux/s390x"), "{log}");
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("the image was not resolved for linux/s390x:\n{log}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(())
}

#[test]
fn read_timeout_bounds_a_boot_request_waiting_on_a_stalled_stream() -> Result<()> {
    if !common::require_root_and_tools("read_timeout_bounds_a_boot_request", &["ip", "curl"]) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    build_boot_image(tmp.path(), "stall")?;
    let reg = Registry::start()?;
    common::push(&tmp.path().join("layout"), "os", &reg, "os/stall:1")?;
    let manifest = common::layout_manifest(&tmp.path().join("layout"), "os")?;
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .context("layer digest")?
        .to_string();
    // The registry's stream of the layer stops after its first KiB: the
    // first pass never reaches /boot.
    let gate = common::gate::Gate::start(&reg.addr)?;
    gate.hold(&layer, 1024);
    let lab = NetLab::new(true)?;
    let globals = ["--read-timeout", "3"];
    let pc = serve_pc(
        &lab,
        tmp.path(),
        &gate.reference("os/stall:1"),
        "",
        "",
        &globals,
    )?;
    let tftp_port = pc.tftp_port;
    gate.wait_held(std::time::Duration::from_secs(30))?;
    // With the default 60 s the request would get a wait-and-retry script
    // after 10 s; with --read-timeout 3 it fails after ~3 s, and says why.
    let asked = std::time::Instant::now();
    let err = tftp_get(&lab, tftp_port, "boot.ipxe")
        .expect_err("boot.ipxe served from a stalled stream")
        .to_string();
    let took = asked.elapsed();
    let log = std::fs::read_to_string(tmp.path().join("serve.log"))?;
    assert!(
        took < std::time::Duration::from_secs(9),
        "took {took:?}: the read timeout was not applied ({err})\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("image of node pc") && l.contains("timed out after 3s")),
        "{err}\n{log}"
    );
    // Once the stream moves again, the same request is answered.
    gate.release();
    let script = String::from_utf8(tftp_get(&lab, tftp_port, "boot.ipxe")?)?;
    assert!(script.starts_with("#!ipxe"), "{script}");
    Ok(())
}

/// An image whose /boot (kernel, initrd) comes early in its one layer and
/// 16 MiB of incompressible data late (/usr/big.bin); the layer's blob digest.
fn early_boot_image(dir: &Path, reg: &Registry, repo_tag: &str) -> Result<String> {
    let layout = dir.join("layout");
    one_layer_image(
        dir,
        "mkdir -p $r/boot $r/etc $r/usr \
         && head -c 200000 /dev/urandom > $r/boot/vmlinuz-6.1.0-test \
         && head -c 100000 /dev/urandom > $r/boot/initrd.img-6.1.0-test \
         && echo early > $r/etc/hostname && head -c 16777216 /dev/urandom > $r/usr/big.bin",
    )?;
    common::push(&layout, "os", reg, repo_tag)?;
    let manifest = common::layout_manifest(&layout, "os")?;
    Ok(manifest["layers"][0]["digest"]
        .as_str()
        .context("layer digest")?
        .to_string())
}

#[test]
fn boot_files_are_served_while_the_image_streams_unless_verified_only() -> Result<()> {
    if !common::require_root_and_tools("boot_files_while_streaming", &["ip", "curl", "umoci"]) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let reg = Registry::start()?;
    let layer = early_boot_image(tmp.path(), &reg, "os/early:1")?;
    // The stream of the layer stops halfway through /usr/big.bin, long after
    // /boot and /etc: the boot dir is settled, the layer is not verified.
    let gate = common::gate::Gate::start(&reg.addr)?;
    gate.hold(&layer, 8 << 20);
    let lab = NetLab::new(true)?;
    let kernel = std::fs::read(tmp.path().join("bundle/rootfs/boot/vmlinuz-6.1.0-test"))?;
    for verified_only in [false, true] {
        let run = tempfile::tempdir()?;
        let pc = serve_pc(
            &lab,
            run.path(),
            &gate.reference("os/early:1"),
            &format!("verified_only = {verified_only}"),
            "",
            &[],
        )?;
        let tftp_port = pc.tftp_port;
        gate.wait_held(std::time::Duration::from_secs(30))?;
        let script = String::from_utf8(tftp_get(&lab, tftp_port, "boot.ipxe")?)?;
        if verified_only {
            // Nothing unverified goes out: the node is told to wait.
            assert!(
                script.contains("sleep") && script.contains("chain --autofree boot.ipxe"),
                "{script}"
            );
        } else {
            assert!(
                script.contains("kernel") && script.contains("vmlinuz-6.1.0-test"),
                "{script}"
            );
            assert_eq!(tftp_get(&lab, tftp_port, "vmlinuz-6.1.0-test")?, kernel);
        }
        drop(pc);
    }
    gate.release();
    Ok(())
}
