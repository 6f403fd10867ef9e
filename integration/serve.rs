//! `lazyboot serve` end to end: one config with a node of each kind, one
//! image reference, real clients in a network namespace: our scripted DHCP
//! client, curl for TFTP, libnfs for NFS. Then `serve`'s options and how it
//! fails: bad configs and options, a retagged image, published indexes, an
//! image without a kernel, the global platform, the read timeout, boot files
//! served while the image streams. The portmapper is in
//! integration/serve_portmapper.rs.

mod common;

use anyhow::{bail, Context, Result};
use common::dhcpc::option_bytes as option;
use common::netboot::{build_boot_image, one_layer_image, serve_pc, IPXE_MAC};
use common::netns::NetLab;
use common::serve::{Serve, BIN};
use common::{sh, Registry};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOOLS: &[&str] = &["ip", "python3", "curl", "nfs-ls", "nfs-cat"];

const PI_MAC: &str = "dc:a6:32:0a:0b:0c";
const PI_SERIAL: &str = "10000000a1b2c3d4";
const UBOOT_MAC: &str = "6c:cf:39:00:00:01";

fn dora(lab: &NetLab, opts: &[&str]) -> Result<serde_json::Value> {
    let args: Vec<&str> = ["--timeout", "3"].iter().chain(opts).copied().collect();
    common::dhcpc::run_client(lab, "dora", &args)
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
    let lc = lab.serve_config(tmp.path());
    let (tftp_port, nfs_port) = (lc.tftp_port, lc.nfs_port);
    let config = tmp.path().join("lazyboot.toml");
    std::fs::write(
        &config,
        lc.text(
            "",
            &format!(
                r#"
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
            ),
        ),
    )?;
    let _server = Serve::new(&config).start()?;
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
    let refused = Serve::new(&path).refused()?;
    let err = &refused.log;
    assert!(!refused.status.success());
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
    let lc = lab.serve_config(tmp.path());
    let (tftp_port, nfs_port) = (lc.tftp_port, lc.nfs_port);
    let config = tmp.path().join("lazyboot.toml");
    std::fs::write(
        &config,
        lc.text(
            "",
            &format!(
                r#"
[[nodes]]
name = "pc"
mac = "{IPXE_MAC}"
kind = "ipxe"
image = "{image}"
root = "persistent"
"#,
                image = reg.reference("os/swap:live"),
            ),
        ),
    )?;
    let _server = Serve::new(&config).start()?;
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

#[test]
fn serve_rejects_a_bad_global_option_value() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let refused = Serve::new(&tmp.path().join("none.toml"))
        .globals(&["--cache-size", "lots"])
        .refused()?;
    assert!(!refused.status.success());
    let err = &refused.log;
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
    // Until the pass has read /boot, boot.ipxe is the wait-and-retry
    // script; then the missing kernel is an error.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let err = loop {
        match tftp_get(&lab, pc.tftp_port, "boot.ipxe") {
            Err(e) => break e.to_string(),
            Ok(script) if std::time::Instant::now() < deadline => {
                let text = String::from_utf8_lossy(&script);
                assert!(text.contains("retrying"), "not a retry script: {text}");
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            Ok(script) => bail!(
                "still no error after 30 s: {}",
                String::from_utf8_lossy(&script)
            ),
        }
    };
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

/// `curl URL` from the host: the status code and the body.
fn http_get(url: &str) -> Result<(u16, String)> {
    common::curl_status(None, &[], url)
}

#[test]
fn api_names_are_checked_against_the_inventory_and_errors_name_no_server_path() -> Result<()> {
    if !common::require_root_and_tools("api_names", &["ip", "curl", "umoci"]) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let layout = tmp.path().join("layout");
    one_layer_image(tmp.path(), "mkdir -p $r/boot $r/etc")?;
    let reg = Registry::start()?;
    common::push(&layout, "os", &reg, "os/api:1")?;
    let lab = NetLab::new(true)?;
    let http = common::free_tcp_port();
    // A file that looks like a profile outside the state directory.
    std::fs::create_dir_all(tmp.path().join("etc"))?;
    std::fs::write(tmp.path().join("etc/000001.json"), "{}")?;
    let _pc = serve_pc(
        &lab,
        tmp.path(),
        &reg.reference("os/api:1"),
        &format!("http_port = {http}"),
        "",
        &[],
    )?;
    let base = format!("http://{}:{http}/api/v1/nodes", lab.server_ip);
    let state = tmp.path().to_string_lossy().to_string();
    let token = std::fs::read_to_string(tmp.path().join("state/api.token"))?;
    let bearer = format!("Authorization: Bearer {}", token.trim());
    for name in ["..%2F..%2Fetc", "..%2F..%2F..%2Fetc", "%2E%2E", "nobody"] {
        for route in [
            "/profiles/latest",
            "/profiles/1",
            "/profiles",
            "/booted",
            "",
        ] {
            let url = format!("{base}/{name}{route}");
            let (code, body) = common::curl_status(None, &["-H", &bearer], &url)?;
            assert_eq!(code, 404, "{url}: {body}");
            assert!(body.contains("no node"), "{url}: {body}");
            assert!(!body.contains(&state), "{url} reveals a path: {body}");
        }
    }
    // A real node without profiles: 404, and no path either.
    let (code, body) = http_get(&format!("{base}/pc/profiles/latest"))?;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no boot profiles"), "{body}");
    assert!(!body.contains(&state), "reveals a path: {body}");
    Ok(())
}

/// The API's access rules, from the host (an `api_readers` address) and
/// from the node (its own address, not a reader): a change without the
/// token or with a wrong one gets 401 and says why; the right token lets
/// it through; the node may report itself booted without it; a read from
/// outside the readers gets 403, or passes with the token. The token file
/// is made private on first start.
#[test]
fn api_changes_need_the_token_and_reads_an_allowed_address() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !common::require_root_and_tools("api_token", &["ip", "curl", "umoci"]) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    one_layer_image(tmp.path(), "mkdir -p $r/boot $r/etc")?;
    let reg = Registry::start()?;
    common::push(&tmp.path().join("layout"), "os", &reg, "os/auth:1")?;
    let lab = NetLab::new(true)?;
    let http = common::free_tcp_port();
    let _pc = serve_pc(
        &lab,
        tmp.path(),
        &reg.reference("os/auth:1"),
        &format!("http_port = {http}\napi_readers = [\"{}\"]", lab.server_ip),
        "",
        &[],
    )?;
    let token_file = tmp.path().join("state/api.token");
    let mode = std::fs::metadata(&token_file)?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is readable by others");
    let token = std::fs::read_to_string(&token_file)?.trim().to_string();
    let bearer = format!("Authorization: Bearer {token}");
    let wrong = format!("Authorization: Bearer {}x", &token[1..]);
    let base = format!("http://{}:{http}/api/v1/nodes", lab.server_ip);
    let booted = format!("{base}/pc/booted");
    let host = |args: &[&str], url: &str| common::curl_status(None, args, url);
    let node = |args: &[&str], url: &str| common::curl_status(Some(&lab.ns), args, url);

    // A change from the host (not the node): the token or nothing.
    let (code, body) = host(&["-X", "POST"], &booted)?;
    assert_eq!(code, 401, "{body}");
    assert!(
        body.contains("Bearer TOKEN") && !body.contains(&token),
        "{body}"
    );
    let (code, body) = host(&["-X", "POST", "-H", &wrong], &booted)?;
    assert_eq!(
        (code, body.contains("wrong API token")),
        (401, true),
        "{body}"
    );
    let (code, body) = host(&["-X", "POST", "-H", &bearer], &booted)?;
    assert_eq!(code, 409, "the token let it through to the route: {body}");
    // GET is no way around it.
    assert_eq!(host(&[], &booted)?.0, 401);
    // The node itself may say it has booted.
    let (code, body) = node(&["-X", "POST"], &booted)?;
    assert_eq!(code, 409, "from the node's own address: {body}");
    // ...but not for another node (nor may it guess the token).
    let (code, _) = node(&["-X", "POST"], &format!("{base}/other/booted"))?;
    assert_eq!(code, 401);

    // Reads: open to the readers, 403 elsewhere unless the token comes.
    let (code, body) = host(&[], &base)?;
    assert_eq!(code, 200, "{body}");
    let (code, body) = node(&[], &base)?;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("api_readers"), "{body}");
    assert_eq!(node(&["-H", &bearer], &base)?.0, 200);
    assert_eq!(node(&["-H", &wrong], &base)?.0, 401);
    Ok(())
}
