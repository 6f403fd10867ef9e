//! `lazyboot serve`'s portmapper: its own on port 111 (rpcinfo, showmount,
//! MOUNT and NFS over UDP from a node's address, registrations refused), a
//! taken port 111 explained, and `portmapper = "register"` with the host's
//! rpcbind in a namespace of its own.

mod common;

use anyhow::{bail, Result};
use common::netboot::{build_boot_image, pc_config, IPXE_MAC};
use common::netns::NetLab;
use common::serve::Serve;
use common::{sh, Registry};
use std::process::{Command, Stdio};

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
    let serve = Serve::new(&config)
        .globals(&["--cache-dir", cache.to_str().unwrap()])
        .start()?;
    let line = serve.line();
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
    let refused = Serve::new(&config).refused()?;
    let err = refused.log;
    assert!(!refused.line.starts_with("serving"), "{:?}", refused.line);
    assert!(!refused.status.success());
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
    let serve = Serve::new(&config).start()?;
    let line = serve.line();
    assert!(
        line.starts_with("serving") && line.contains("portmapper off"),
        "{line:?}"
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
    let mut serve = Serve::new(&config).in_netns(&ns).start()?;
    let line = serve.line();
    assert!(
        line.starts_with("serving") && line.contains("registered with the host's rpcbind"),
        "{line:?}\n{}",
        serve.log()
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
    serve.stop()?;
    let after = rpcinfo("127.0.0.1")?;
    assert!(
        !after.contains("100005") && !after.contains("100003") && after.contains("portmapper"),
        "still registered after serve stopped:\n{after}\n{}",
        serve.log()
    );
    let _ = rpcbind.kill();
    let _ = rpcbind.wait();
    Ok(())
}
