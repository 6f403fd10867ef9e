//! HTTP boot against a real `lazyboot serve` and a real registry, with
//! `curl` as the client: `GET|HEAD /boot/NODE/PATH` on the HTTP port
//! serves the node's boot files from the lazy image view, byte for byte
//! what the image holds, with ranges, HEAD, keep-alive, clear refusals, and
//! `boot_over = "http"` makes `boot.ipxe` load kernel and initrd from it.
//!
//! The client runs in the lab's namespace from node `pc`'s own address,
//! as a booting node does.

mod common;

use anyhow::Result;
use common::netboot::{build_boot_image, serve_pc};
use common::netns::NetLab;
use common::{curl_raw, Registry};

const KERNEL: &str = "boot/vmlinuz-6.1.0-test";
const INITRD: &str = "boot/initrd.img-6.1.0-test";
/// A second node, whose files `pc` must not read.
const OTHER: &str = r#"
[[nodes]]
name = "other"
mac = "52:54:00:aa:bb:cc"
kind = "ipxe"
image = "IMAGE"
ip = "IP"
"#;

#[test]
fn boot_files_over_http_with_ranges_head_keepalive_and_refusals() -> Result<()> {
    if !common::require_root_and_tools("http_boot", &["ip", "curl", "umoci", "skopeo"]) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    build_boot_image(tmp.path(), "httpboot")?;
    let rootfs = tmp.path().join("bundle/rootfs");
    let kernel = std::fs::read(rootfs.join(KERNEL))?;
    let initrd = std::fs::read(rootfs.join(INITRD))?;
    let reg = Registry::start()?;
    common::push(&tmp.path().join("layout"), "os", &reg, "os/http:1")?;
    let image = reg.reference("os/http:1");
    let lab = NetLab::new(true)?;
    let other_ip = std::net::Ipv4Addr::from(u32::from(lab.client_ip) + 1);
    lab.add_client_ip(other_ip)?;
    let http = common::free_tcp_port();
    let pc = serve_pc(
        &lab,
        tmp.path(),
        &image,
        &format!("http_port = {http}\nboot_over = \"http\""),
        &OTHER
            .replace("IMAGE", &image)
            .replace("IP", &other_ip.to_string()),
        &[],
    )?;
    let base = format!("http://{}:{http}/boot", lab.server_ip);
    let ns = Some(lab.ns.as_str());
    let get = |path: &str, args: &[&str]| curl_raw(ns, args, &format!("{base}/{path}"));

    // Whole files, by their name and through the image's symlinks.
    for (path, want) in [
        ("pc/vmlinuz-6.1.0-test", &kernel),
        ("pc/vmlinuz", &kernel),
        ("pc/initrd.img", &initrd),
    ] {
        let saw = get(path, &[])?;
        assert_eq!(saw.status, 200, "{path}");
        assert_eq!(saw.header("accept-ranges"), Some("bytes"), "{path}");
        assert_eq!(
            saw.header("content-length"),
            Some(want.len().to_string().as_str())
        );
        assert!(
            saw.body == *want,
            "{path}: the bytes differ from the image's"
        );
    }

    // Ranges: inside one read window, across a window boundary (256 KiB),
    // open-ended, a suffix, and past the end (cut to the file).
    let size = kernel.len();
    for (range, start, end) in [
        ("100-199", 100, 199),
        ("262000-263000", 262_000, 263_000),
        (&format!("{}-", size - 1000) as &str, size - 1000, size - 1),
        ("-4096", size - 4096, size - 1),
        (
            &format!("{}-{}", size - 10, size + 100),
            size - 10,
            size - 1,
        ),
    ] {
        let saw = get("pc/vmlinuz", &["-H", &format!("Range: bytes={range}")])?;
        assert_eq!(saw.status, 206, "bytes={range}");
        assert_eq!(
            saw.header("content-range"),
            Some(format!("bytes {start}-{end}/{size}").as_str()),
            "bytes={range}"
        );
        assert!(
            saw.body == kernel[start..=end],
            "bytes={range}: wrong bytes ({} of them)",
            saw.body.len()
        );
    }
    let saw = get("pc/vmlinuz", &["-H", &format!("Range: bytes={size}-")])?;
    assert_eq!(saw.status, 416);
    assert_eq!(
        saw.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );

    // HEAD: the size, no body.
    let saw = get("pc/vmlinuz", &["-I"])?;
    assert_eq!(saw.status, 200);
    assert_eq!(
        saw.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(saw.header("accept-ranges"), Some("bytes"));
    // With -I, curl writes the headers where the body would go: only they.
    let out = String::from_utf8_lossy(&saw.body);
    assert!(
        out.starts_with("HTTP/") && saw.body.len() < 1000,
        "HEAD had a body: {} bytes",
        saw.body.len()
    );

    // Two files over one connection: curl reuses it for the second URL.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns, "curl", "-sS", "--max-time", "60"])
        .args(["-o", "/dev/null", "-o", "/dev/null"])
        .args(["--write-out", "%{num_connects} %{http_code}\\n"])
        .arg(format!("{base}/pc/vmlinuz"))
        .arg(format!("{base}/pc/initrd.img"))
        .output()?;
    let written = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        written.lines().collect::<Vec<_>>(),
        ["1 200", "0 200"],
        "the second request opened a new connection: {written}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Refusals, each saying why.
    let saw = get("pc/no-such-file", &[])?;
    assert_eq!(saw.status, 404);
    assert!(String::from_utf8_lossy(&saw.body).contains("no file \"no-such-file\""));
    let saw = get("nobody/vmlinuz", &[])?;
    assert_eq!(saw.status, 404);
    assert!(String::from_utf8_lossy(&saw.body).contains("no node"));
    for path in [
        "pc/../../etc/hostname",
        "pc/%2e%2e/etc/hostname",
        "pc/%2E%2E%2F%2E%2E%2Fetc%2Fhostname",
        "pc/x/../../../etc/hostname",
    ] {
        let saw = get(path, &["--path-as-is"])?;
        assert_eq!(saw.status, 400, "{path}");
        let body = String::from_utf8_lossy(&saw.body);
        assert!(body.contains("`..` is not allowed"), "{path}: {body}");
    }
    // Outside the boot directory even without `..`: not a boot file.
    assert_eq!(get("pc/etc/hostname", &[])?.status, 404);
    // pc may not read other's files; other may, and the host (no node's
    // address) may read both.
    let saw = get("other/vmlinuz", &[])?;
    assert_eq!(saw.status, 403);
    assert!(String::from_utf8_lossy(&saw.body).contains("is the address of node pc"));
    let saw = get("other/vmlinuz", &["--interface", &other_ip.to_string()])?;
    assert_eq!(saw.status, 200);
    let saw = curl_raw(None, &[], &format!("{base}/other/initrd.img"))?;
    assert!(saw.status == 200 && saw.body == initrd);

    // The generated script loads kernel and initrd from this route.
    let saw = get("pc/boot.ipxe", &[])?;
    assert_eq!(saw.status, 200);
    let script = String::from_utf8_lossy(&saw.body);
    assert!(
        script.contains(&format!("kernel {base}/pc/vmlinuz-6.1.0-test "))
            && script.contains(&format!("initrd {base}/pc/initrd.img-6.1.0-test\n")),
        "{script}"
    );

    // The reads are in pc's boot profile, named by their URL.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let profile = common::profile_json(&tmp.path().join("state"), "pc", 1)?;
    let files: Vec<&str> = profile["profile"]["tftp"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["file"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        files.contains(&format!("{base}/pc/vmlinuz").as_str())
            && files.contains(&format!("{base}/pc/boot.ipxe").as_str()),
        "{files:?}"
    );
    drop(pc);
    Ok(())
}
