//! A Raspberry Pi 4 / CM4 network boot, replayed request by request against
//! `lazyboot serve`. No emulator runs the Pi boot ROM, so the replay is the
//! test: `clients/pi_replay.py` does the Pi's DHCP (its options 55, 60, 93,
//! 94, 97; the REQUEST without 60) and then every TFTP request the firmware
//! makes, in the order of a real boot (`../shared/seeds/003_*`: tsize probes
//! aborted with ERROR 0 "Early terminate", "file not found" lookups,
//! repeated requests), with blksize 1468 and tsize. Then the node mounts its
//! root over NFS from the address it was given.
//!
//! The image is laid out like Raspberry Pi OS (`/boot/firmware`) and holds
//! traps: the files the Pi looks for and must not find exist elsewhere (in
//! another node's boot directory, above the boot directory, in a directory
//! named like the serial), so a leak shows up as "data".

mod common;

use anyhow::{bail, Context, Result};
use common::netns::NetLab;
use common::pi::check_pi_reply;
use common::serve::Serve;
use common::{sh, sha256_hex, Registry};
use serde_json::Value;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOOLS: &[&str] = &["ip", "python3", "nfs-cat", "curl"];

const PI_MAC: &str = "dc:a6:32:8b:07:c6";
const PI_SERIAL: &str = "100000008b07bcc6";
const PI_PREFIX: &str = "8b07bcc6";
const OTHER_MAC: &str = "dc:a6:32:aa:bb:cc";
const OTHER_SERIAL: &str = "10000000deadbeef";
const HOSTNAME: &[u8] = b"cm4-replay\n";
const RPIOS_CMDLINE: &str = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n";

/// Files the Pi asks for that must be "not found" (its own boot directory
/// lacks them; the image has them elsewhere).
const MISSING: &[&str] = &[
    "bootsig.bin",
    "autoboot.txt",
    "recovery.elf",
    "dt-blob.bin",
    "bootcfg.txt",
    "recovery8.img",
    "armstub8.bin",
];

/// The Raspberry Pi OS-like image; returns the umoci bundle's rootfs (the
/// reference bytes).
fn build_image(dir: &Path) -> Result<PathBuf> {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    std::fs::write(dir.join("cmdline.txt"), RPIOS_CMDLINE)?;
    sh(&format!(
        r#"
umoci init --layout {l}
umoci new --image {l}:os
umoci unpack --image {l}:os {b}
r={b}/rootfs
fw=$r/boot/firmware
mkdir -p $fw/overlays $fw/{PI_PREFIX} $r/boot/other $r/etc $r/sbin
printf 'arm_64bit=1\nkernel=kernel8.img\n' > $fw/config.txt
cp {d}/cmdline.txt $fw/cmdline.txt
head -c 2228224 /dev/urandom > $fw/start4.elf
head -c 5446 /dev/urandom > $fw/fixup4.dat
head -c 52593 /dev/urandom > $fw/bcm2711-rpi-cm4.dtb
head -c 2370 /dev/urandom > $fw/overlays/overlay_map.dtb
head -c 3913 /dev/urandom > $fw/overlays/vc4-kms-v3d.dtbo
head -c 8388608 /dev/urandom > $fw/kernel8.img
head -c 4194304 /dev/urandom > $fw/initramfs8
# Traps: what the Pi must not find, in places it must not look.
for f in {missing}; do
  echo "LEAK other node $f" > $r/boot/other/$f
  echo "LEAK serial dir $f" > $fw/{PI_PREFIX}/$f
  echo "LEAK /boot $f" > $r/boot/$f
  echo "LEAK / $f" > $r/$f
done
echo 'LEAK other node config' > $r/boot/other/config.txt
printf 'cm4-replay\n' > $r/etc/hostname
printf '#!/bin/sh\nexec /bin/sh\n' > $r/sbin/init && chmod 0755 $r/sbin/init
umoci repack --image {l}:os {b}
# A Pi image: arm64, the platform lazyboot picks for a Pi.
umoci config --image {l}:os --architecture=arm64
"#,
        l = layout.display(),
        b = bundle.display(),
        d = dir.display(),
        missing = MISSING.join(" "),
    ))?;
    Ok(bundle.join("rootfs"))
}

/// One full replay: serve, DHCP, the firmware's TFTP requests, NFS root.
/// Run the replay client in the lab's namespace; its JSON report.
fn run_replay(lab: &NetLab, tftp_port: u16, prefixed: bool, pause: f64) -> Result<(Value, String)> {
    let (port, pause) = (tftp_port.to_string(), pause.to_string());
    let prefix = if prefixed { PI_PREFIX } else { "" };
    let mut args = vec!["--tftp-port", &port, "--prefix", prefix];
    args.extend(["--pause-after-dhcp", &pause]);
    if !prefixed {
        // The Pi 3 ROM of the seed: TFTP with the offered address, no REQUEST.
        args.push("--no-request");
    }
    common::pi::replay(lab, &args)
}

fn replay(test: &str, prefixed: bool) -> Result<()> {
    if !common::require_root_and_tools(test, TOOLS) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let rootfs = build_image(tmp.path())?;
    let reg = Registry::start()?;
    common::push(&tmp.path().join("layout"), "os", &reg, "os/raspios:replay")?;
    let image = reg.reference("os/raspios:replay");
    let lab = NetLab::new(false)?;
    lab.set_client_mac(PI_MAC)?;
    let lc = lab.serve_config(tmp.path());
    let (tftp_port, nfs_port) = (lc.tftp_port, lc.nfs_port);
    let http_port = lc.http_port.expect("a lab config has an HTTP port");
    let net = format!("10.213.{}", lab.subnet);
    let server = lab.server_ip.to_string();
    let config = tmp.path().join("lazyboot.toml");
    std::fs::write(
        &config,
        // The profile test below wants the cache to stay as the boots leave it.
        lc.text(
            "background_fill = false",
            &format!(
                r#"
[[nodes]]
name = "cm4-1"
mac = "{PI_MAC}"
serial = "{PI_SERIAL}"
kind = "raspberrypi"
image = "{image}"
root = "persistent"

[[nodes]]
name = "cm4-2"
mac = "{OTHER_MAC}"
serial = "{OTHER_SERIAL}"
kind = "raspberrypi"
image = "{image}"
boot_dir = "/boot/other"
root = "persistent"
"#,
            ),
        ),
    )?;
    // Other crates' warnings too: the log must have none.
    let serve = Serve::new(&config).rust_log("lazyboot=debug,warn");
    let srv = serve.clone().start()?;

    let (r, stdout) = run_replay(&lab, tftp_port, prefixed, 0.0)
        .map_err(|e| anyhow::anyhow!("{e:#}\nserver log:\n{}", srv.log()))?;
    eprintln!(
        "[{test}] replay of {} requests took {}s",
        r["log"].as_array().map_or(0, Vec::len),
        r["seconds"]
    );

    // DHCP: the Pi's OFFER (and ACK) carry the PXE menu and the TFTP server.
    check_pi_reply(&r["offer"], "OFFER", &server, &net);
    if prefixed {
        check_pi_reply(&r["ack"], "ACK", &server, &net);
        assert_eq!(r["ack"]["msg_type"], 5);
        assert_eq!(r["ack"]["yiaddr"], r["offer"]["yiaddr"]);
    } else {
        assert!(r["ack"].is_null());
    }
    let address = r["address"].as_str().context("no address")?.to_string();
    assert_eq!(r["server"], server.as_str());

    // TFTP: every request answered as the firmware needs.
    let fw = rootfs.join("boot/firmware");
    let log = r["log"].as_array().context("no log")?;
    assert_eq!(log.len(), 36, "{stdout}");
    for e in log {
        eprintln!(
            "[{test}]   {:5} {:40} {:9} {}",
            e["op"].as_str().unwrap_or("?"),
            e["file"].as_str().unwrap_or("?"),
            e["result"].as_str().unwrap_or("?"),
            e["bytes"].as_u64().or(e["tsize"].as_u64()).unwrap_or(0)
        );
    }
    let mut cmdline = None;
    let mut full: HashMap<String, usize> = HashMap::new();
    for e in log {
        let file = e["file"].as_str().unwrap();
        let op = e["op"].as_str().unwrap();
        let result = e["result"].as_str().unwrap_or("?");
        let rel = match (prefixed, file.strip_prefix(&format!("{PI_PREFIX}/"))) {
            (true, Some(rel)) => rel,
            (true, None) if file == "bootsig.bin" => file,
            (true, None) => panic!("{file}: not prefixed"),
            (false, _) => file,
        };
        if MISSING.contains(&rel) {
            assert_eq!(result, "not found", "{op} {file}: {e}");
            assert_eq!(e["error"][0], 1, "{op} {file}: {e}");
            continue;
        }
        if rel == "cmdline.txt" {
            // Generated: checked below for content; sizes agree.
            match op {
                "probe" => assert_eq!(result, "aborted", "{file}: {e}"),
                _ => {
                    assert_eq!(result, "data", "{file}: {e}");
                    let text = e["text"].as_str().context("cmdline text")?.to_string();
                    assert_eq!(e["bytes"].as_u64(), Some(text.len() as u64));
                    cmdline = Some(text);
                }
            }
            continue;
        }
        let want = std::fs::read(fw.join(rel)).with_context(|| format!("reference {rel}"))?;
        match op {
            "probe" => {
                assert_eq!(result, "aborted", "{file}: {e}");
                assert_eq!(e["tsize"].as_u64(), Some(want.len() as u64), "{file}: {e}");
                assert_eq!(e["blksize"], 1468, "{file}: {e}");
            }
            _ => {
                assert_eq!(result, "data", "{file}: {e}");
                assert_eq!(e["bytes"].as_u64(), Some(want.len() as u64), "{file}: {e}");
                assert_eq!(e["sha256"], sha256_hex(&want).as_str(), "{file}: {e}");
                assert_eq!(e["tsize"].as_u64(), Some(want.len() as u64), "{file}: {e}");
                assert_eq!(e["blksize"], 1468, "{file}: {e}");
                *full.entry(rel.to_string()).or_default() += 1;
            }
        }
    }
    // Every file the firmware loads arrived whole, after all the probes.
    for (rel, n) in [
        ("config.txt", 4),
        ("start4.elf", 1),
        ("fixup4.dat", 1),
        ("initramfs8", 1),
        ("bcm2711-rpi-cm4.dtb", 1),
        ("overlays/overlay_map.dtb", 1),
        ("overlays/vc4-kms-v3d.dtbo", 1),
        ("kernel8.img", 1),
    ] {
        assert_eq!(full.get(rel), Some(&n), "full transfers of {rel}");
    }

    // The generated cmdline.txt: the image's own line without its local
    // root arguments, then the NFS root.
    let cmdline = cmdline.context("cmdline.txt never downloaded")?;
    assert!(
        cmdline.ends_with('\n') && cmdline.matches('\n').count() == 1,
        "{cmdline:?}"
    );
    let args: Vec<&str> = cmdline.split_whitespace().collect();
    for keep in ["console=serial0,115200", "console=tty1", "quiet"] {
        assert!(args.contains(&keep), "{keep} missing: {cmdline}");
    }
    assert!(
        cmdline.starts_with("console=serial0,115200 console=tty1"),
        "{cmdline}"
    );
    for dropped in ["PARTUUID", "rootfstype", "rootwait", "fsck.repair", "init="] {
        assert!(!cmdline.contains(dropped), "{dropped} kept: {cmdline}");
    }
    let nfsroot = format!(
        "root=/dev/nfs nfsroot={server}:/nodes/cm4-1,vers=3,tcp,port={nfs_port},mountport={nfs_port},nolock rw ip=dhcp"
    );
    assert!(cmdline.contains(&nfsroot), "{cmdline}");

    // The Pi's normal traffic is not worth a warning.
    let text = srv.log();
    let alarms: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(alarms.is_empty(), "server warnings:\n{}", alarms.join("\n"));

    // The kernel mounts its root from the address DHCP gave the Pi (the
    // replay left it on the interface).
    let shown = Command::new("ip")
        .args(["-n", &lab.ns, "-o", "-4", "addr", "show", &lab.client_if])
        .output()?;
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains(&format!("{address}/24")),
        "address {address} not bound"
    );
    let out = lab
        .client("nfs-cat")
        .arg(format!(
            "nfs://{server}/nodes/cm4-1/etc/hostname?version=3&nfsport={nfs_port}&mountport={nfs_port}"
        ))
        .output()?;
    assert!(
        out.status.success(),
        "nfs-cat: {}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        srv.log()
    );
    assert_eq!(out.stdout, HOSTNAME);
    assert!(address.parse::<Ipv4Addr>().is_ok());
    if !prefixed {
        return Ok(());
    }

    // --- The boot's profile, then a second cold boot with its learned plan.
    let api = format!("http://{server}:{http_port}/api/v1/nodes/cm4-1");
    let said = curl(&lab, &format!("{api}/booted"))?;
    assert_eq!(said["boot"], 1, "{said}");
    let state = tmp.path().join("state");
    // A transfer is in the profile once it ends: at once for one the client
    // ended with an ERROR, only after the retransmissions for one whose
    // client went silent; wait until every request is in the profile.
    let first = profile_settled(&state, "cm4-1", 1, log.len())?;
    let p = &first["profile"];
    assert_eq!(p["booted"]["how"]["by"], "api", "{p}");
    assert_eq!(p["began_with"], "dhcp");
    let dhcp = p["dhcp"][0]["messages"].as_array().context("dhcp")?;
    assert_eq!(
        dhcp[..4],
        ["DISCOVER", "OFFER", "REQUEST", "ACK"].map(Value::from)
    );
    let tftp = p["tftp"].as_array().context("tftp")?;
    assert_eq!(tftp.len(), log.len(), "one timeline entry per TFTP request");
    let outcome = |file: &str, want: &str| {
        tftp.iter()
            .any(|t| t["file"] == file && t["outcome"] == want)
    };
    assert!(outcome("start4.elf", "probe") && outcome("start4.elf", "complete"));
    assert!(outcome("recovery8.img", "failed"), "not found is recorded");
    assert!(tftp
        .iter()
        .any(|t| t["file"] == "cmdline.txt" && t["generated"] == true));
    assert_eq!(p["nfs_mounts"][0]["export"], "/nodes/cm4-1");
    let hostname = p["nfs_files"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["path"] == "/etc/hostname"))
        .context("/etc/hostname in the NFS files")?;
    assert_eq!(hostname["ops"]["READ"], 1);
    assert_eq!(hostname["bytes_read"], HOSTNAME.len());
    // The first boot ever: the streaming index pass at server start left
    // every chunk of these small layers in the cache.
    let kernel = tftp
        .iter()
        .find(|t| t["file"] == "kernel8.img" && t["outcome"] == "complete")
        .context("kernel8.img")?;
    assert!(kernel["wait"]["cache_bytes"].as_u64() > Some(0), "{kernel}");
    assert!(first["summary"]["cache_bytes"].as_u64() > Some(0));
    let plans: Vec<_> = std::fs::read_dir(tmp.path().join("cache/index"))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("plan-"))
        .collect();
    assert_eq!(
        plans.len(),
        1,
        "the first boot's reads became a prefetch plan"
    );
    let text = common::lazyboot_profile(&state, &["cm4-1", "--boot", "1"])?;
    assert!(
        text.contains("cm4-1") && text.contains("kernel8.img"),
        "{text}"
    );

    // Same node, cold chunk cache (indexes and plan kept), new server: the
    // plan is replayed at DISCOVER; the replay waits 3 s after DHCP, by
    // which time the prefetch has fetched what the boot will read.
    drop(srv);
    std::fs::remove_dir_all(tmp.path().join("cache/chunks"))?;
    let srv = serve.log(&tmp.path().join("serve2.log")).start()?;
    let (again, _) = run_replay(&lab, tftp_port, prefixed, 3.0)
        .map_err(|e| anyhow::anyhow!("{e:#}\nserver log:\n{}", srv.log()))?;
    assert_eq!(again["log"].as_array().map(Vec::len), Some(log.len()));
    assert_eq!(curl(&lab, &format!("{api}/booted"))?["boot"], 2);
    let second = profile_settled(&state, "cm4-1", 2, log.len())?;
    let p2 = &second["profile"];
    let prefetch = &p2["prefetch"];
    assert!(
        prefetch["end_ms"].is_number(),
        "prefetch finished: {prefetch}"
    );
    assert!(prefetch["fetched_chunks"].as_u64() > Some(0), "{prefetch}");
    assert!(p2["fetches"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f["by"] == "prefetch")));
    let waited: u64 = p2["tftp"]
        .as_array()
        .context("tftp")?
        .iter()
        .map(|t| t["wait"]["fetched_bytes"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(waited, 0, "no TFTP transfer waited for the registry:\n{p2}");
    let k2 = p2["tftp"]
        .as_array()
        .and_then(|t| {
            t.iter()
                .find(|t| t["file"] == "kernel8.img" && t["outcome"] == "complete")
        })
        .context("kernel8.img")?;
    assert!(k2["wait"]["cache_bytes"].as_u64() > Some(0), "{k2}");
    let compare = common::lazyboot_profile(&state, &["--compare", "cm4-1:1", "cm4-1:2"])?;
    assert!(compare.contains("cm4-1") && compare.contains('1') && compare.contains('2'));
    let trace: Value = serde_json::from_str(&common::lazyboot_profile(
        &state,
        &["cm4-1", "--format", "trace"],
    )?)?;
    assert!(trace["traceEvents"]
        .as_array()
        .is_some_and(|e| !e.is_empty()));
    let html = common::lazyboot_profile(&state, &["cm4-1", "--format", "html"])?;
    assert!(html.contains("<svg") && html.contains("kernel8.img"));
    // A second "booted" is a 409; "booted" for another name (here one the
    // inventory does not know) is not the node's to say: 401.
    let status = |url: &str| -> Result<String> {
        let out = lab
            .client("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(status(&format!("{api}/booted"))?, "409");
    assert_eq!(
        status(&format!(
            "http://{server}:{http_port}/api/v1/nodes/nope/booted"
        ))?,
        "401"
    );
    drop(srv);
    Ok(())
}

fn curl(lab: &NetLab, url: &str) -> Result<Value> {
    let out = lab.client("curl").args(["-sf", url]).output()?;
    if !out.status.success() {
        bail!("curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Boot `boot` of `node` once it holds `transfers` TFTP entries (or after 40 s).
fn profile_settled(state: &Path, node: &str, boot: u64, transfers: usize) -> Result<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let p = common::profile_json(state, node, boot)?;
        let n = p["profile"]["tftp"].as_array().map_or(0, Vec::len);
        if n >= transfers || std::time::Instant::now() > deadline {
            return Ok(p);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[test]
fn cm4_boot_replay_with_serial_prefix() -> Result<()> {
    replay("cm4_boot_replay_with_serial_prefix", true)
}

#[test]
fn cm4_boot_replay_without_prefix_by_address() -> Result<()> {
    replay("cm4_boot_replay_without_prefix_by_address", false)
}
