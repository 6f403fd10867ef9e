//! Fleet control against a real `lazyboot serve`, a real registry and
//! scripted nodes (`common::fleet_sim`) that boot over the lab network:
//!
//! - a group of three nodes follows a tag: a new digest is pushed, lazyboot
//!   prepares it and its reboot command reboots the nodes one at a time,
//!   and each reports booted on the new digest;
//! - a broken image (its "kernel" panics): the first node times out, the
//!   swap stops, that node is rolled back and boots the old digest, the
//!   other two are untouched, and the follower does not retry the digest;
//! - a restart in the middle of a swap: the swap is `interrupted`, the node
//!   caught rebooting is set back to its previous image; before the
//!   restart, the dashboard shows that swap in headless Chromium;
//! - the API: no change without the token, 4xx with a message for bad
//!   input, run-time changes survive a restart, `/metrics` counts swaps.

mod common;

use anyhow::{Context, Result};
use common::browser::{badge_state, by_id, decode_png, keep_artifact, rows, Chromium};
use common::fleet_lab::{image, lab, wait_for, Lab, TOKEN};
use common::serve::{Serve, Server};
use serde_json::{json, Value};
use std::time::Duration;

/// Point `fleet:TO` at what `fleet:FROM` names (a push of a new digest
/// under the tag, as a CI pipeline does).
fn retag(l: &Lab, from: &str, to: &str) -> Result<()> {
    common::run(
        std::process::Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .args(["--dest-tls-verify=false", "--dest-no-creds"])
            .arg(format!(
                "docker://{}",
                l.reg.reference(&format!("fleet:{from}"))
            ))
            .arg(format!(
                "docker://{}",
                l.reg.reference(&format!("fleet:{to}"))
            )),
    )
    .map(|_| ())
}

/// The newest swap, once it has ended.
fn ended_swap(l: &Lab, srv: &Server, after: u64, timeout: Duration) -> Result<Value> {
    wait_for("a swap to end", timeout, srv, || {
        let v = l.get("/swaps")?;
        let s = v["swaps"].as_array().and_then(|a| a.first()).cloned();
        Ok(s.filter(|s| {
            s["id"].as_u64().unwrap_or(0) > after
                && !matches!(s["state"].as_str(), Some("preparing" | "rolling"))
        }))
    })
}

#[test]
fn a_followed_tag_rolls_through_the_group_and_a_broken_image_is_rolled_back() -> Result<()> {
    if !common::require_root_and_tools(
        "fleet_follow",
        &["ip", "skopeo", "umoci", "curl", "python3"],
    ) {
        return Ok(());
    }
    let l = lab(true, |_| String::new())?;
    image(l.tmp.path(), &l.reg, "v1", &["live"])?;
    image(l.tmp.path(), &l.reg, "v2", &["v2"])?;
    image(l.tmp.path(), &l.reg, "v3-PANIC", &["v3"])?;
    let v1 = l.digest_of("live")?;
    let mut srv = Serve::new(&l.config)
        .log(&l.tmp.path().join("serve.log"))
        .start()?;
    let sim = l.sim()?;

    // The follower adopts the tag's digest without rebooting anything.
    wait_for(
        "the follower to pin v1",
        Duration::from_secs(30),
        &srv,
        || {
            let all = l.get("/nodes")?;
            let pinned = all
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["pinned"] == json!(v1));
            Ok(pinned.then_some(()))
        },
    )?;
    assert!(
        sim.boots.lock().is_empty(),
        "adopting a tag reboots nothing"
    );
    for n in &l.nodes {
        sim.reboot(&n.name)?;
    }
    for n in &l.nodes {
        let b = sim.wait_boots(&n.name, 1, Duration::from_secs(60))?;
        assert!(
            b[0].booted && b[0].os_release.contains("VERSION=v1"),
            "{b:?}"
        );
    }
    wait_for("every node up on v1", Duration::from_secs(20), &srv, || {
        let all = l.get("/nodes")?;
        let up = all
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["state"] == "up" && n["digest"] == json!(v1));
        Ok(up.then_some(()))
    })?;

    // --- The tag moves: the group is rolled onto v2, one node at a time.
    retag(&l, "v2", "live")?;
    let v2 = l.digest_of("live")?;
    assert_ne!(v1, v2);
    let swap = ended_swap(&l, &srv, 0, Duration::from_secs(90))?;
    assert_eq!(
        swap["state"],
        "done",
        "{swap:#}\n{}",
        common::tail(&srv.log(), 40)
    );
    assert_eq!(swap["followed"], true);
    assert_eq!(swap["digest"], json!(v2));
    let mut windows = Vec::new();
    for n in &l.nodes {
        let b = sim.boots_of(&n.name);
        assert_eq!(b.len(), 2, "{} boots: {b:?}", n.name);
        assert!(
            b[1].booted && b[1].os_release.contains("VERSION=v2"),
            "{b:?}"
        );
        windows.push((b[1].started, b[1].ended));
        let node = l.node(&n.name)?;
        assert_eq!(node["state"], "up", "{node:#}");
        assert_eq!(node["digest"], json!(v2), "{node:#}");
        assert_eq!(node["last_boot"]["manifest"], json!(v2), "{node:#}");
        // The argument with shell syntax reached `touch` as one literal name.
        assert!(
            l.tmp
                .path()
                .join(format!("requests/literal-{}-$(id);x", n.name))
                .exists(),
            "the reboot command's arguments were not passed literally"
        );
    }
    windows.sort();
    for w in windows.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "max_unavailable = 1, yet two nodes rebooted at once: {windows:?}"
        );
    }
    let first = swap["id"].as_u64().unwrap();

    // --- A broken image: the first node never reports booted.
    retag(&l, "v3", "live")?;
    let v3 = l.digest_of("live")?;
    let swap = ended_swap(&l, &srv, first, Duration::from_secs(90))?;
    assert_eq!(swap["state"], "failed", "{swap:#}");
    assert_eq!(swap["digest"], json!(v3));
    let msg = swap["message"].as_str().unwrap_or_default();
    assert!(msg.contains("did not report booted within 20 s"), "{msg}");
    let states: Vec<&str> = swap["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["rolled_back", "skipped", "skipped"], "{swap:#}");
    let n1 = sim.boots_of("n1");
    assert_eq!(n1.len(), 4, "v2, the panic on v3, the rollback: {n1:?}");
    assert!(
        !n1[2].booted && n1[2].os_release.contains("PANIC"),
        "{n1:?}"
    );
    assert!(
        n1[3].booted && n1[3].os_release.contains("VERSION=v2"),
        "{n1:?}"
    );
    let node = l.node("n1")?;
    assert_eq!(
        (node["state"].as_str(), node["digest"].as_str()),
        (Some("up"), Some(v2.as_str())),
        "{node:#}"
    );
    for other in ["n2", "n3"] {
        assert_eq!(sim.boots_of(other).len(), 2, "{other} was touched");
        assert_eq!(l.node(other)?["digest"], json!(v2));
    }
    // The follower does not retry the digest that failed.
    std::thread::sleep(Duration::from_secs(3));
    let newest = l.get("/swaps")?["swaps"][0]["id"].as_u64();
    assert_eq!(
        newest,
        swap["id"].as_u64(),
        "the failed digest was tried again"
    );

    // --- Metrics count the swaps and the nodes by state.
    let (code, text) = common::curl_status(
        None,
        &[],
        &format!("http://{}:{}/metrics", l.lab.server_ip, l.http_port),
    )?;
    assert_eq!(code, 200);
    for line in [
        "lazyboot_swaps{state=\"done\"} 1",
        "lazyboot_swaps{state=\"failed\"} 1",
        "lazyboot_nodes{state=\"up\"} 3",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }

    // --- A restart during a swap: n1 is rebooting (its node is held).
    sim.held.lock().push("n1".into());
    let (ok, out) = l.cli(&[
        "swap",
        "n1",
        &l.reg.reference("fleet:v2"),
        "--no-wait",
        "--json",
    ])?;
    assert!(ok, "{out}");
    let id: Value = serde_json::from_str(&out).context("swap --json")?;
    let id = id["id"].as_u64().unwrap();
    wait_for("n1 to be rebooting", Duration::from_secs(30), &srv, || {
        let s = l.get(&format!("/swaps/{id}"))?;
        Ok((s["nodes"][0]["state"] == "rebooting").then_some(()))
    })?;
    dashboard_mid_swap(&l, id)?;
    srv.restart()?;
    let s = l.get(&format!("/swaps/{id}"))?;
    assert_eq!(s["state"], "interrupted", "{s:#}");
    assert_eq!(s["nodes"][0]["state"], "rolled_back", "{s:#}");
    let n1 = l.node("n1")?;
    assert_eq!(
        n1["assigned"],
        json!(l.reg.reference("fleet:live")),
        "{n1:#}"
    );
    assert_eq!(
        n1["pinned"],
        json!(v2),
        "set back to its previous pin: {n1:#}"
    );
    // Once let go, it boots its previous image.
    let before = sim.boots_of("n1").len();
    sim.held.lock().clear();
    let b = sim.wait_boots("n1", before + 1, Duration::from_secs(30))?;
    assert!(b.last().unwrap().os_release.contains("VERSION=v2"), "{b:?}");
    srv.stop()?;
    Ok(())
}

/// The dashboard during swap `id`, n1 rebooting: the fleet table, the
/// swap panel and a node's waterfall as headless Chromium renders them; a
/// screenshot is kept as `fleet-mid-swap.png`.
fn dashboard_mid_swap(l: &Lab, id: u64) -> Result<()> {
    let base = format!("http://{}:{}", l.lab.server_ip, l.http_port);
    let mut browser = Chromium::new(l.tmp.path());
    let dom = browser.dump_dom(&format!("{base}/"), 3000)?;
    let table = rows(&dom);
    let state = |name: &str| {
        table
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, row)| badge_state(row))
            .map(str::to_string)
    };
    assert_eq!(state("n1").as_deref(), Some("swapping"), "{dom}");
    assert_eq!(state("n2").as_deref(), Some("up"), "{dom}");
    assert_eq!(state("n3").as_deref(), Some("up"), "{dom}");
    let active = by_id(&dom, "swaps-active");
    assert!(
        active.contains(&format!("data-swap=\"{id}\"")),
        "no swap {id} in the panel: {dom}"
    );
    let card = &dom[dom.find(&format!("data-swap=\"{id}\"")).unwrap()..];
    let n1 = &card[card
        .find("data-swap-node=\"n1\"")
        .context("n1 in the swap card")?..];
    assert_eq!(badge_state(n1), Some("rebooting"), "{card}");
    let dom = browser.dump_dom(&format!("{base}/#node=n2"), 3000)?;
    assert!(
        by_id(&dom, "profile").contains("src=\"/api/v1/nodes/n2/profiles/latest?format=html\""),
        "no waterfall of n2: {dom}"
    );
    let shot = l.tmp.path().join("fleet-mid-swap.png");
    browser.screenshot(&format!("{base}/#node=n2"), &shot, (1400, 900), 3000)?;
    let keep = keep_artifact(&shot, "fleet-mid-swap.png")?;
    eprintln!("screenshot of the fleet mid-swap: {}", keep.display());
    let img = decode_png(&shot)?;
    assert!(
        img.ink() > img.rgb.len() / 50,
        "the page did not render ({keep:?})"
    );
    Ok(())
}

#[test]
fn api_changes_need_the_token_and_survive_a_restart() -> Result<()> {
    if !common::require_root_and_tools("fleet_api", &["ip", "skopeo", "umoci", "curl"]) {
        return Ok(());
    }
    let l = lab(false, |_| String::new())?;
    image(l.tmp.path(), &l.reg, "v1", &["live", "v2"])?;
    let mut srv = Serve::new(&l.config)
        .log(&l.tmp.path().join("serve.log"))
        .start()?;
    let put = |args: &[&str], path: &str| {
        let mut a = vec!["-X", "PUT", "-H", "Content-Type: application/json"];
        a.extend_from_slice(args);
        l.call(&a, path)
    };
    let auth = format!("Authorization: Bearer {TOKEN}");
    let body = json!({ "image": l.reg.reference("fleet:v2") }).to_string();

    // No token, a wrong token: 401 with a message; nothing changes.
    let (code, v) = put(&["-d", &body], "/nodes/n1")?;
    assert_eq!(code, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("Bearer"), "{v}");
    let (code, _) = put(
        &[
            "-H",
            "Authorization: Bearer wrong-token-wrong-token",
            "-d",
            &body,
        ],
        "/nodes/n1",
    )?;
    assert_eq!(code, 401);
    let (code, _) = l.call(
        &[
            "-X",
            "POST",
            "-d",
            "{\"group\":\"lab\",\"image\":\"x/y:1\"}",
        ],
        "/swaps",
    )?;
    assert_eq!(code, 401);
    assert_eq!(
        l.node("n1")?["assigned"],
        json!(l.reg.reference("fleet:live"))
    );

    // Bad input: 4xx with a message.
    let (code, v) = put(&["-H", &auth, "-d", "{not json"], "/nodes/n1")?;
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("JSON"), "{v}");
    let (code, v) = put(&["-H", &auth, "-d", &body], "/nodes/nope")?;
    assert_eq!(code, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("nope"), "{v}");
    let (code, v) = put(
        &["-H", &auth, "-d", "{\"image\":\"UPPER/Case::bad\"}"],
        "/nodes/n1",
    )?;
    assert_eq!(code, 422, "{v}");
    let (code, v) = put(
        &["-H", &auth, "-d", "{\"group\":\"a;rm -rf /\"}"],
        "/nodes/n1",
    )?;
    assert_eq!(code, 422, "{v}");
    let (code, v) = l.call(
        &[
            "-X",
            "POST",
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "-d",
            "{\"node\":\"n1\",\"image\":\"x/y:1\",\"max_unavailable\":0}",
        ],
        "/swaps",
    )?;
    assert_eq!(code, 422, "{v}");
    let (code, v) = l.call(&["-H", &auth], "/swaps/999")?;
    assert_eq!(code, 404, "{v}");

    // A group changed at run time, but never its reboot command.
    let g = json!({ "max_unavailable": 2, "follow": true }).to_string();
    let (code, _) = put(&["-d", &g], "/groups/lab")?;
    assert_eq!(code, 401);
    let (ok, out) = l.cli(&["groups", "set", "lab", "--max-unavailable", "2"])?;
    assert!(
        ok && out.contains("lab") && out.contains("n1,n2,n3"),
        "{out}"
    );
    let (code, v) = put(&["-H", &auth, "-d", &g], "/groups/lab")?;
    assert_eq!(
        (code, &v["max_unavailable"], &v["follow"]),
        (200, &json!(2), &json!(true)),
        "{v}"
    );
    let hook = json!({ "reboot": ["/bin/sh", "-c", "id"] }).to_string();
    let (code, v) = put(&["-H", &auth, "-d", &hook], "/groups/lab")?;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `reboot`"),
        "{v}"
    );
    let (code, _) = put(&["-H", &auth, "-d", "{\"poll_secs\": 0}"], "/groups/lab")?;
    assert_eq!(code, 422);
    let (code, _) = put(&["-H", &auth, "-d", &g], "/groups/nope")?;
    assert_eq!(code, 404);

    // A change with the token, through the CLI: kept across a restart.
    let (ok, out) = l.cli(&[
        "nodes",
        "set",
        "n2",
        "--image",
        &l.reg.reference("fleet:v2"),
    ])?;
    assert!(ok, "{out}");
    let (ok, out) = l.cli(&["nodes", "set", "n3", "--group", "none"])?;
    assert!(ok, "{out}");
    srv.restart()?;
    let n2 = l.node("n2")?;
    assert_eq!(n2["assigned"], json!(l.reg.reference("fleet:v2")), "{n2:#}");
    assert_eq!(
        n2["node"]["image"],
        json!(l.reg.reference("fleet:v2")),
        "{n2:#}"
    );
    assert_eq!(l.node("n3")?["group"], Value::Null);
    let (ok, out) = l.cli(&["nodes"])?;
    assert!(
        ok && out.contains("n2") && out.contains("fleet:v2"),
        "{out}"
    );
    let groups = l.get("/groups")?;
    assert_eq!(groups[0]["nodes"], json!(["n1", "n2"]), "{groups:#}");
    assert_eq!(groups[0]["max_unavailable"], 2, "{groups:#}");
    assert!(groups[0]["reboot"][0] == "/usr/bin/touch", "{groups:#}");

    // Without a reboot command (n3 left its group) a swap only pins: the
    // node is pending until its next boot, which boots the new image.
    let v2 = l.reg.reference("fleet:v2");
    let (ok, out) = l.cli(&["swap", "n3", &v2, "--json"])?;
    assert!(ok, "{out}");
    let s: Value = serde_json::from_str(&out).context("swap --json")?;
    assert_eq!(
        (&s["state"], &s["nodes"][0]["state"]),
        (&json!("done"), &json!("pending")),
        "{s:#}"
    );
    assert_eq!(l.node("n3")?["state"], "pending");
    let (ok, out) = l.cli(&["nodes"])?;
    let n3_line = out
        .lines()
        .find(|x| x.starts_with("n3 "))
        .unwrap_or_default();
    assert!(ok && n3_line.contains("pending"), "{out}");
    let sim = l.sim()?;
    sim.reboot("n3")?;
    let b = sim.wait_boots("n3", 1, Duration::from_secs(60))?;
    assert!(b[0].booted, "{b:?}");
    let n3 = wait_for(
        "n3 up on its new image",
        Duration::from_secs(20),
        &srv,
        || {
            let n = l.node("n3")?;
            Ok((n["state"] == "up").then_some(n))
        },
    )?;
    assert_eq!(n3["last_boot"]["manifest"], s["nodes"][0]["to"], "{n3:#}");
    assert_eq!(
        n3["last_lease"]["address"],
        json!(l.nodes[2].ip.to_string()),
        "{n3:#}"
    );
    drop(sim);

    // The config file wins over a run-time value once it is edited.
    srv.stop()?;
    let text = std::fs::read_to_string(&l.config)?;
    let n2_block = text.find("name = \"n2\"").unwrap();
    let (head, tail) = text.split_at(n2_block);
    let tail = tail.replacen("fleet:live", "fleet:v1edit", 1);
    std::fs::write(&l.config, format!("{head}{tail}"))?;
    srv.restart()?;
    assert_eq!(
        l.node("n2")?["assigned"],
        json!(l.reg.reference("fleet:v1edit"))
    );
    srv.stop()?;
    Ok(())
}
