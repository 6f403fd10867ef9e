//! The fleet dashboard (`GET /` of `lazyboot serve`) as a browser draws
//! it: a real server with three nodes, one booted for real (scripted DHCP
//! DORA, then its booted callback from its leased address), one still
//! booting (DHCP only), one never seen; headless Chromium loads the page,
//! runs its script against the live API, and the rendered DOM must show
//! each node with its state, image, address and digest, and the booted
//! node's waterfall when the URL names it. A screenshot is left at
//! `target/dashboard.png` for a human to look at.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::browser::{badge_state, by_id, decode_png, hex_rgb, keep_artifact, rows, Chromium};
use common::netboot::{build_boot_image, IPXE_MAC};
use common::netns::NetLab;
use common::serve::Serve;
use common::{sh, Registry};
use serde_json::Value;

const TOOLS: &[&str] = &["ip", "python3", "curl", "chromium"];
const WIDTH: u32 = 1400;
const HEIGHT: u32 = 900;
/// Virtual time for the page's first polls (and the frame's load).
const BUDGET_MS: u32 = 5000;

const SLOW_MAC: &str = "52:54:00:00:00:77";
const PI_MAC: &str = "dc:a6:32:0a:0b:0c";
/// The `up` badge's colour in the page's style sheet.
const UP_COLOUR: &str = "#1f9d55";

fn dora(lab: &NetLab) -> Result<String> {
    let r = common::dhcpc::run_client(
        lab,
        "dora",
        &["--timeout", "3", "--opt", "77=s:iPXE", "--opt", "93=h:0000"],
    )?;
    Ok(r["ack"]["yiaddr"]
        .as_str()
        .with_context(|| format!("no address in {r}"))?
        .to_string())
}

/// Play the machine with `mac`: take that MAC, drop any old address.
fn become_node(lab: &NetLab, mac: &str) -> Result<()> {
    sh(&format!(
        "ip -n {ns} addr flush dev {i}; ip -n {ns} link set {i} address {mac}",
        ns = lab.ns,
        i = lab.client_if
    ))
    .map(|_| ())
}

/// GET `url` from the host: the JSON of a 200, or an error.
fn get_json(url: &str) -> Result<Value> {
    let (code, body) = common::curl_status(None, &[], url)?;
    ensure!(code == 200, "{url}: {code} {body}");
    serde_json::from_str(&body).with_context(|| format!("{url}: {body}"))
}

#[test]
fn the_dashboard_shows_the_fleet_and_a_nodes_waterfall() -> Result<()> {
    if !common::require_root_and_tools("the_dashboard_shows_the_fleet", TOOLS) {
        return Ok(());
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir()?;
    build_boot_image(tmp.path(), "dash")?;
    let reg = Registry::start()?;
    common::push(&tmp.path().join("layout"), "os", &reg, "os/dash:1")?;
    let image = reg.reference("os/dash:1");
    let lab = NetLab::new(false)?;
    let lc = lab.serve_config(tmp.path());
    let http_port = lc.http_port.expect("a lab config has an HTTP port");
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
root = "readonly"

[[nodes]]
name = "slow-pc"
mac = "{SLOW_MAC}"
kind = "ipxe"
image = "{image}"
root = "ephemeral"

[[nodes]]
name = "pi-1"
mac = "{PI_MAC}"
serial = "10000000a1b2c3d4"
kind = "raspberrypi"
image = "{image}"
root = "persistent"
"#,
            ),
        ),
    )?;
    let _server = Serve::new(&config).start()?;
    let base = format!("http://{}:{http_port}", lab.server_ip);
    let api = format!("{base}/api/v1/nodes");

    // `pc` boots: DHCP, then its init's callback from the leased address.
    become_node(&lab, IPXE_MAC)?;
    let pc_ip = dora(&lab)?;
    lab.add_client_ip(pc_ip.parse()?)?;
    let (code, body) = common::curl_status(Some(&lab.ns), &[], &format!("{api}/pc/booted"))?;
    ensure!(code == 200, "booted callback: {code} {body}");
    // `slow-pc` only got as far as DHCP: still booting.
    become_node(&lab, SLOW_MAC)?;
    dora(&lab)?;

    // The profile is saved once the boot ended; wait for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let profile = loop {
        let (code, body) =
            common::curl_status(None, &[], &format!("{api}/pc/profiles/latest?format=json"))?;
        if code == 200 {
            break serde_json::from_str::<Value>(&body)?;
        }
        if Instant::now() > deadline {
            bail!("no profile of pc: {code} {body}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let manifest = profile["profile"]["manifest"]
        .as_str()
        .context("the profile names no manifest")?
        .to_string();
    let short = manifest
        .strip_prefix("sha256:")
        .context("manifest digest")?[..12]
        .to_string();
    let nodes = get_json(&api)?;
    let listed: Vec<&str> = nodes
        .as_array()
        .context("node list")?
        .iter()
        .filter_map(|n| n["node"]["name"].as_str())
        .collect();
    ensure!(listed.len() == 3, "{nodes}");

    let mut browser = Chromium::new(tmp.path());

    // --- The fleet table.
    let dom = browser.dump_dom(&format!("{base}/"), BUDGET_MS)?;
    let table = rows(&dom);
    let mut names: Vec<&str> = table.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["pc", "pi-1", "slow-pc"], "rows in:\n{dom}");
    let row = |name: &str| -> &str { &table.iter().find(|(n, _)| n == name).expect("a row").1 };
    for (name, state) in [("pc", "up"), ("slow-pc", "booting"), ("pi-1", "unknown")] {
        assert_eq!(badge_state(row(name)), Some(state), "{name}: {}", row(name));
        assert!(row(name).contains(&image), "{name}'s image: {}", row(name));
    }
    let pc = row("pc");
    assert!(pc.contains(&format!(">{pc_ip}<")), "pc's address: {pc}");
    assert!(
        pc.contains(&format!(">{short}")),
        "pc's digest {short}: {pc}"
    );
    assert!(pc.contains(" s booted<"), "pc's last boot: {pc}");
    assert!(row("pc").contains("<strong>pc</strong>"));
    // The header counts each state, and says when it refreshed.
    for state in ["up", "booting", "unknown"] {
        let chip =
            format!("data-count=\"{state}\"><span class=\"dot\"></span><span class=\"n\">1</span>");
        assert!(dom.contains(&chip), "no count of 1 {state}: {dom}");
    }
    assert!(by_id(&dom, "updated").contains("updated "), "{dom}");
    // This server has no swaps route yet, or no swaps: not an error.
    assert!(by_id(&dom, "swaps-active").contains("no swaps"), "{dom}");
    assert!(
        !dom.contains("id=\"notice\" role=\"alert\" class=\"shown\""),
        "an error is shown: {}",
        by_id(&dom, "notice")
    );

    // --- The waterfall of the node the URL names.
    let dom = browser.dump_dom(&format!("{base}/#node=pc"), BUDGET_MS)?;
    let frame_src = "/api/v1/nodes/pc/profiles/latest?format=html";
    assert!(
        by_id(&dom, "profile").contains(&format!("src=\"{frame_src}\"")),
        "no waterfall frame: {}",
        by_id(&dom, "profile")
    );
    assert!(by_id(&dom, "waterfall-title").contains("Boot waterfall: pc"));
    let boot = profile["profile"]["boot"].as_u64().context("boot")?;
    let framed = browser.dump_dom(&format!("{base}{frame_src}"), 0)?;
    assert!(
        framed.contains(&format!("<title>boot profile: pc boot {boot}</title>"))
            && framed.contains("<svg class=\"waterfall\""),
        "the frame's page is not pc's profile: {}",
        common::tail(&framed, 20)
    );

    // --- What a human sees.
    let shot = tmp.path().join("dashboard.png");
    browser.screenshot(
        &format!("{base}/#node=pc"),
        &shot,
        (WIDTH, HEIGHT),
        BUDGET_MS,
    )?;
    let keep = keep_artifact(&shot, "dashboard.png")?;
    eprintln!("screenshot: {}", keep.display());
    let img = decode_png(&shot)?;
    assert_eq!((img.width, img.height), (WIDTH, HEIGHT));
    assert!(
        img.ink() > img.rgb.len() / 50,
        "{} non-white pixels: the page did not render ({keep:?})",
        img.ink()
    );
    // The `up` badge of pc's row was drawn.
    let up = img.pixels_like(hex_rgb(UP_COLOUR));
    assert!(
        up.len() >= 100,
        "{} pixels of the up badge ({keep:?})",
        up.len()
    );
    eprintln!("dashboard test took {:.1?}", started.elapsed());
    Ok(())
}
