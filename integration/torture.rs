//! Crash safety: `lazyboot serve` killed with SIGKILL at random moments
//! while nodes boot on a cold cache (streaming pass and cache fill, index
//! writes, DHCP lease writes, writes to persistent roots), then restarted
//! on the same state and cache, again and again. Afterwards `lazyboot fsck`
//! finds nothing damaged, every write a node was told had succeeded reads
//! back whole, and no read ever returned a wrong byte.
//!
//! `TORTURE_KILLS` (default 6) and `TORTURE_SEED` (default: from the
//! clock, printed) shape the run; `scripts/torture` runs a long one.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::nfsroot::{fixture_file, nfs_url, runnable, Lab, LabOptions, NodeSpec};
use common::{paths, pseudo_random, sha256_hex};

const NODES: [NodeSpec; 3] = [
    NodeSpec::new("t1", 2, "persistent"),
    NodeSpec::new("t2", 3, "persistent"),
    NodeSpec::new("t3", 4, "persistent"),
];

/// Image files every round reads back over NFS (small, middle, deep).
const READS: [&str; 3] = [paths::TEXT_FILE, paths::DEEP_FILE, paths::UNICODE];

/// What one round's node did before the server died under it.
#[derive(Default)]
struct Round {
    /// (NFS path, content) of writes nfs-cp reported done.
    acknowledged: Vec<(String, Vec<u8>)>,
    reads: u32,
    /// Reads that returned bytes other than the image's.
    wrong: Vec<String>,
}

/// A node's work until the server dies (or `stop`): write a new file,
/// read image files back, again. Commands come ready-made (`ip netns exec
/// .. timeout 60 TOOL`), so the lab stays with the main thread.
fn node_work(
    tool: impl Fn() -> Command,
    url: impl Fn(&str) -> String,
    node: &str,
    round: u32,
    seed: u64,
    stop: &AtomicBool,
) -> Round {
    let mut r = Round::default();
    let dir = tempfile::tempdir().unwrap();
    for i in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let name = format!("/nodes/{node}/torture-r{round}-{i}.bin");
        let data = pseudo_random(64 << 10, seed ^ ((round as u64) << 20) ^ i);
        let local = dir.path().join("w");
        std::fs::write(&local, &data).unwrap();
        let ok = tool()
            .args(["nfs-cp", local.to_str().unwrap(), &url(&name)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            break;
        }
        r.acknowledged.push((name, data));
        for p in READS {
            let out = tool()
                .args(["nfs-cat", &url(&format!("/nodes/{node}{p}"))])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .unwrap();
            if !out.status.success() {
                return r;
            }
            r.reads += 1;
            if out.stdout != fixture_file(p) {
                r.wrong.push(p.to_string());
            }
        }
    }
    r
}

fn fsck(lab: &Lab, repair: bool) -> Result<(i32, String)> {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lazyboot"));
    c.args(["fsck", "--config"])
        .arg(lab.tmp.path().join("lazyboot.toml"));
    if repair {
        c.arg("--repair");
    }
    let out = c.output().context("running lazyboot fsck")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.code().unwrap_or(-1), text))
}

#[test]
fn kill_loop_loses_no_write_and_serves_no_wrong_byte() -> Result<()> {
    if !runnable("kill_loop_loses_no_write_and_serves_no_wrong_byte") {
        return Ok(());
    }
    let kills: u32 = std::env::var("TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        });
    eprintln!("torture: {kills} kills, TORTURE_SEED={seed}");
    let started = Instant::now();
    let mut lab = Lab::start_with(&NODES, true, LabOptions::default())?;
    let mut acknowledged = Vec::new();
    let (mut reads, mut wrong) = (0u32, Vec::new());
    let mut rng = seed;
    for round in 0..kills {
        let node = &NODES[round as usize % NODES.len()];
        lab.prefer_source(node.last);
        // A DHCP exchange: the lease file is written as the server dies.
        lab.lease(node)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, port, server) = (lab.net.ns.clone(), lab.nfs_port, lab.net.server_ip);
        let worker = {
            let stop = stop.clone();
            let name = node.name;
            std::thread::spawn(move || {
                let tool = || {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", &ns, "timeout", "60"]);
                    c
                };
                let url = |p: &str| nfs_url(server, port, p, "");
                node_work(tool, url, name, round, seed, &stop)
            })
        };
        // Every third round dies within half a second of a start (the
        // first one in the streaming pass and cache fill), the others
        // 0.3 to 6 s in, among writes and reads.
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = match round % 3 {
            0 => Duration::from_millis(20 + (rng >> 33) % 480),
            _ => Duration::from_millis(300 + (rng >> 33) % 5700),
        };
        std::thread::sleep(delay);
        lab.server.kill9()?;
        stop.store(true, Ordering::SeqCst);
        // A call in flight meets the restarted server, as a node's hard
        // mount would: it completes there or fails.
        lab.server.restart()?;
        let r = worker.join().expect("node work panicked");
        eprintln!(
            "round {round}: {} killed after {delay:.1?}: {} writes acknowledged, {} reads",
            node.name,
            r.acknowledged.len(),
            r.reads
        );
        acknowledged.extend(r.acknowledged);
        reads += r.reads;
        wrong.extend(r.wrong);
    }
    lab.server.stop()?;

    let (status, report) = fsck(&lab, false)?;
    eprintln!("{report}");
    assert_eq!(status, 0, "fsck after {kills} kills:\n{report}");
    assert!(
        report.contains(" leases,") && !report.contains("no leases"),
        "{report}"
    );
    let (status, report) = fsck(&lab, true)?;
    assert_eq!(status, 0, "fsck --repair:\n{report}");

    lab.server.restart()?;
    let mut lost = Vec::new();
    for (path, data) in &acknowledged {
        let node = path.split('/').nth(2).unwrap();
        let spec = NODES.iter().find(|n| n.name == node).unwrap();
        lab.prefer_source(spec.last);
        match lab.cat(path) {
            Ok(got) if sha256_hex(&got) == sha256_hex(data) => {}
            Ok(got) => lost.push(format!("{path}: {} bytes, not the ones written", got.len())),
            Err(e) => lost.push(format!("{path}: {e}")),
        }
    }
    eprintln!(
        "torture: {kills} kills, {} writes acknowledged, {} lost, {reads} reads, {} wrong, {:.1?}",
        acknowledged.len(),
        lost.len(),
        wrong.len(),
        started.elapsed()
    );
    assert!(wrong.is_empty(), "wrong bytes read: {wrong:?}");
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(
        !acknowledged.is_empty() && reads > 0,
        "no round got far enough to write and read (seed {seed}): the run checked nothing"
    );
    Ok(())
}
