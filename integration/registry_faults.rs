//! Registry faults during a boot: a real `docker-registry` behind
//! [`FaultyRegistry`], a real `lazyboot serve`, a node reading its NFS root
//! from its own address. Transient faults (an outage with `Retry-After`, a
//! token revoked before its expiry, a stall, dropped connections, blobs
//! redirected to storage) are ridden out with every byte right; a read the
//! registry cannot serve fails with EIO within the read timeout (never a
//! hang, never wrong bytes), and the reason is in the node's profile.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::faults::FaultyRegistry;
use common::nfsroot::{fixture_file, runnable, snapshot_nfs, Lab, LabOptions, NodeSpec};
use common::{paths, sha256_hex, CompareOptions};

const NODE: NodeSpec = NodeSpec::new("pc", 2, "readonly");

/// The node boots (DHCP, MOUNT, then every file of its root read over NFS)
/// on a cold cache while the registry is out for 5 s (503, `Retry-After:
/// 2`), revokes the token the server holds, stalls one request past the
/// server's 2 s registry timeout, and cuts three blob bodies short, with
/// every blob GET redirected to a storage origin that refuses credentials.
/// The root equals `umoci unpack`, and each fault did happen.
#[test]
fn a_boot_rides_out_transient_registry_faults() -> Result<()> {
    if !runnable("a_boot_rides_out_transient_registry_faults") {
        return Ok(());
    }
    let started = Instant::now();
    let mut lab = Lab::start_with(
        &[NODE],
        true,
        LabOptions {
            faults: Some(|f: &FaultyRegistry| {
                f.require_tokens();
                f.redirect_blobs();
                f.revoke_tokens_at_blob_get(1);
                f.unavailable_for(Duration::from_secs(5), 2);
                f.stall_next(1, Duration::from_secs(5));
                f.drop_next(3, 48 << 10);
            }),
            globals: vec!["--registry-timeout", "2"],
            ..LabOptions::default()
        },
    )?;
    lab.discover(&NODE)?;
    let mut c = lab.rpc(NODE.last);
    let root = c.mnt("/nodes/pc").map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let got = snapshot_nfs(&mut c, &root, "nfs");

    let fx = common::shared_fixture()?;
    let mut want = common::snapshot(&fx.rootfs)?.with_label("umoci");
    for e in want.entries.values_mut() {
        e.xattrs.clear();
    }
    common::assert_same(&want, &got, &CompareOptions::default());
    assert!(got.entries.len() > 100, "{} paths", got.entries.len());

    lab.server.stop()?;
    let f = lab
        .faults
        .as_ref()
        .context("the lab has a faulty registry")?;
    let fired = f.fired();
    let log = lab.server.log();
    eprintln!("faults injected: {fired:?}");
    assert!(fired.unavailable >= 1, "no outage happened: {fired:?}");
    assert_eq!(fired.early_retries, 0, "Retry-After not kept: {fired:?}");
    assert!(fired.refused >= 1, "no revoked token was sent: {fired:?}");
    assert!(
        fired.tokens_issued >= 2,
        "the token was not renewed: {fired:?}"
    );
    assert_eq!(fired.stalled, 1, "{fired:?}");
    assert!(fired.dropped >= 1, "no body was cut: {fired:?}");
    assert!(
        fired.redirected >= 1 && fired.storage_gets >= 1,
        "{fired:?}"
    );
    assert_eq!(
        fired.storage_leaks, 0,
        "credentials went to storage: {fired:?}"
    );
    // Ridden out, not failed and tried again: the boot met no error.
    let profile = common::profile_json(&lab.state(), NODE.name, 1)?;
    assert_eq!(
        profile["profile"]["errors"],
        serde_json::json!([]),
        "{}",
        common::tail(&log, 60)
    );
    assert!(
        log.contains("registry refused the token"),
        "{}",
        common::tail(&log, 60)
    );
    eprintln!(
        "a_boot_rides_out_transient_registry_faults: {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// After the image is indexed (and, with a 4 MiB cache, most of its bytes
/// evicted), the registry goes down for good, then stalls for good: a read
/// of the large file fails with an I/O error each time, before the
/// client's own 60 s limit (the server gives up after `--read-timeout 5`
/// or its retries), and both reasons are in the node's boot profile. Once
/// the registry is back the same read returns the right bytes.
#[test]
fn a_read_the_registry_cannot_serve_fails_with_eio_and_says_why() -> Result<()> {
    if !runnable("a_read_the_registry_cannot_serve_fails_with_eio_and_says_why") {
        return Ok(());
    }
    let mut lab = Lab::start_with(
        &[NODE],
        true,
        LabOptions {
            faults: Some(|_: &FaultyRegistry| {}),
            cache_size: Some("4M"),
            globals: vec![
                "--read-timeout",
                "5",
                "--registry-retries",
                "2",
                "--registry-timeout",
                "2",
            ],
            ..LabOptions::default()
        },
    )?;
    lab.discover(&NODE)?;
    // A listing waits for the final view: the streaming pass is over.
    let (ok, _, err) = lab.tool(&["nfs-ls", &lab.url("/nodes/pc/data", "")]);
    assert!(ok, "{err}");
    let large = "/nodes/pc".to_string() + paths::LARGE_FILE;
    let f = lab
        .faults
        .as_ref()
        .context("the lab has a faulty registry")?;

    f.unavailable_for(Duration::from_secs(3600), 1);
    let before = f.fired();
    let asked = Instant::now();
    let down = lab
        .cat(&large)
        .expect_err("read served while the registry is down");
    let took_down = asked.elapsed();
    let fired = f.fired();
    assert!(
        fired.unavailable > before.unavailable,
        "the read never reached the registry (served from cache?): {fired:?}"
    );
    assert!(took_down < Duration::from_secs(55), "{took_down:?}: {down}");

    f.heal();
    f.stall_next(1000, Duration::from_secs(120));
    let asked = Instant::now();
    let stalled = lab
        .cat(&large)
        .expect_err("read served while the registry stalls");
    let took_stalled = asked.elapsed();
    assert!(f.fired().stalled >= 1);
    assert!(
        took_stalled < Duration::from_secs(55),
        "{took_stalled:?}: {stalled}"
    );
    eprintln!("EIO after {took_down:.1?} (down), {took_stalled:.1?} (stalled)");

    f.heal();
    // A fetch that a timed-out read left behind is still in its own
    // retries against the stalled answers (2 s each): a read that joins it
    // fails with it, the next one fetches afresh.
    let healed = Instant::now();
    let back = loop {
        match lab.cat(&large) {
            Ok(data) => break data,
            Err(e) if healed.elapsed() > Duration::from_secs(30) => anyhow::bail!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    };
    assert_eq!(
        sha256_hex(&back),
        sha256_hex(&fixture_file(paths::LARGE_FILE))
    );

    lab.server.stop()?;
    let log = lab.server.log();
    assert!(log.contains("nfs: I/O error"), "{}", common::tail(&log, 40));
    let profile = common::profile_json(&lab.state(), NODE.name, 1)?;
    let errors: Vec<String> = profile["profile"]["errors"]
        .as_array()
        .context("errors in the profile")?
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect();
    assert!(
        errors.iter().any(|m| m.contains("HTTP 503")),
        "no 503 in the profile: {errors:?}"
    );
    assert!(
        errors.iter().any(|m| m.contains("timed out")),
        "no timeout in the profile: {errors:?}"
    );
    Ok(())
}
