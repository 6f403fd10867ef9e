//! `lazyboot mount` against a real registry, compared with `umoci unpack`,
//! plus the fault tests: registry gone mid-read, corrupt blobs, kill -9.

mod common;

use anyhow::{Context, Result};
use common::mount::{lazyboot, Mount, BIN};
use common::{compare_with, shared_fixture, snapshot, CompareOptions, Registry};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOOLS: &[&str] = &["fusermount3"];

fn layer_sizes(reg: &Registry, repo: &str, tag: &str) -> Result<Vec<(String, u64)>> {
    let body = common::curl_get(
        &format!("{}/v2/{repo}/manifests/{tag}", reg.url()),
        &["application/vnd.oci.image.manifest.v1+json"],
    )?;
    let m: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(m["layers"]
        .as_array()
        .context("layers")?
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect())
}

/// Push the fixture to `reg` as `repo_tag` and build its indexes in a fresh
/// cache, then drop the cached data: a warm index over a cold cache.
/// Returns the image reference, the temp dir and the cache dir in it.
fn warm_index_cold_cache(
    reg: &Registry,
    repo_tag: &str,
) -> Result<(String, tempfile::TempDir, PathBuf)> {
    shared_fixture()?.push(reg, repo_tag)?;
    let image = reg.reference(repo_tag);
    let tmp = tempfile::tempdir()?;
    let cache = tmp.path().join("cache");
    let out = lazyboot(&cache, &["index", &image]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(cache.join("chunks"))?;
    Ok((image, tmp, cache))
}

fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut v)?;
    Ok(v)
}

/// Mount `image` with a fresh cache and compare every path with the oracle.
fn assert_mount_equals_oracle(image: &str, tmp: &Path) -> Result<()> {
    let fx = shared_fixture()?;
    let cache = tmp.join("cache");
    let m = Mount::start(image, &cache, &tmp.join("mnt"), &["--no-background-fill"])?;
    let got = snapshot(&m.dir)?.with_label("lazyboot mount");
    // Sequential reads need more than FUSE's default 128 KiB readahead.
    let dev = std::fs::metadata(&m.dir)?.dev();
    let ra = std::fs::read_to_string(format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    ))?;
    assert_eq!(ra.trim(), "4096");
    let want = snapshot(&fx.rootfs)?.with_label("umoci unpack");
    let diffs = compare_with(&want, &got, &CompareOptions::default());
    m.stop()?;
    assert!(
        diffs.is_empty(),
        "mount differs from umoci unpack:\n{}",
        diffs.join("\n")
    );
    assert!(got.paths().count() > 20, "the fixture has many paths");
    Ok(())
}

#[test]
fn gzip_image_mount_equals_umoci_unpack() -> Result<()> {
    if !common::require_root_and_tools("gzip_image_mount_equals_umoci_unpack", TOOLS) {
        return Ok(());
    }
    let reg = Registry::start()?;
    shared_fixture()?.push(&reg, "fixture/gzip:t")?;
    let tmp = tempfile::tempdir()?;
    assert_mount_equals_oracle(&reg.reference("fixture/gzip:t"), tmp.path())?;

    // By digest, and from the on-disk layout, the view is the same.
    let layout = format!(
        "oci:{}:{}",
        shared_fixture()?.layout.display(),
        shared_fixture()?.tag
    );
    let tmp2 = tempfile::tempdir()?;
    assert_mount_equals_oracle(&layout, tmp2.path())
}

#[test]
fn cold_read_with_warm_index_fetches_a_small_fraction() -> Result<()> {
    if !common::require_root_and_tools("cold_read_with_warm_index_fetches_a_small_fraction", TOOLS)
    {
        return Ok(());
    }
    let reg = Registry::start()?;
    let fx = shared_fixture()?;
    let (image, tmp, cache) = warm_index_cold_cache(&reg, "fixture/lazy:t")?;

    let total: u64 = layer_sizes(&reg, "fixture/lazy", "t")?
        .iter()
        .map(|l| l.1)
        .sum();
    let m = Mount::start(
        &image,
        &cache,
        &tmp.path().join("mnt"),
        &["--no-background-fill"],
    )?;
    let small = "deep/a/b/c/d/e/f/file.txt";
    let got = read_file(&m.dir.join(small))?;
    assert_eq!(got, read_file(&fx.rootfs.join(small))?);
    // A directory listing needs no network once the indexes exist.
    assert!(std::fs::read_dir(&m.dir)?.count() > 5);
    let (requests, bytes) = m.stop()?;
    eprintln!("read {small}: {requests} requests, {bytes} of {total} bytes");
    assert!(requests >= 1, "the cold read went to the registry");
    assert!(
        bytes * 10 < total,
        "fetched {bytes} of {total} bytes for one small file"
    );
    Ok(())
}

#[test]
fn registry_stopped_mid_read_gives_eio_then_recovers() -> Result<()> {
    if !common::require_root_and_tools("registry_stopped_mid_read_gives_eio_then_recovers", TOOLS) {
        return Ok(());
    }
    let mut reg = Registry::start()?;
    let fx = shared_fixture()?;
    let (image, tmp, cache) = warm_index_cold_cache(&reg, "fixture/fault:t")?;
    let m = Mount::start(
        &image,
        &cache,
        &tmp.path().join("mnt"),
        &["--no-background-fill", "--read-timeout", "8"],
    )?;
    let big = find_large_file(&fx.rootfs)?;
    reg.stop();
    let t = Instant::now();
    let err = read_file(&m.dir.join(&big)).expect_err("read must fail while the registry is down");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "EIO must not take forever"
    );
    reg.restart()?;
    let got = read_file(&m.dir.join(&big))?;
    assert_eq!(
        got,
        read_file(&fx.rootfs.join(&big))?,
        "after recovery the bytes are right"
    );
    m.stop()?;
    Ok(())
}

fn find_large_file(root: &Path) -> Result<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    for e in walk(root)? {
        let md = std::fs::symlink_metadata(&e)?;
        if md.is_file() && best.as_ref().is_none_or(|(s, _)| md.len() > *s) {
            best = Some((md.len(), e.strip_prefix(root)?.to_path_buf()));
        }
    }
    best.map(|b| b.1).context("no files")
}

fn walk(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if std::fs::symlink_metadata(&p)?.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    Ok(out)
}

#[test]
fn corrupt_blob_is_refused_and_never_served() -> Result<()> {
    if !common::require_root_and_tools("corrupt_blob_is_refused_and_never_served", TOOLS) {
        return Ok(());
    }
    let reg = Registry::start()?;
    let fx = shared_fixture()?;
    fx.push(&reg, "fixture/corrupt:t")?;
    let image = reg.reference("fixture/corrupt:t");
    let layers = layer_sizes(&reg, "fixture/corrupt", "t")?;
    let (base, base_size) = layers[0].clone();
    let tmp = tempfile::tempdir()?;

    // Index built from good bytes; then the registry's copy goes bad.
    let warm = tmp.path().join("warm");
    assert!(lazyboot(&warm, &["index", &image]).status.success());
    std::fs::remove_dir_all(warm.join("chunks"))?;
    let blob = reg.blob_path(&base);
    let pristine = std::fs::read(&blob)?;
    let mut bad = pristine.clone();
    for i in (0..bad.len()).step_by(4096).skip(1) {
        bad[i] ^= 0x55;
    }
    std::fs::write(&blob, &bad)?;

    // A fresh index pass must detect the mismatch and name the layer.
    let cold = tmp.path().join("cold");
    let out = lazyboot(&cold, &["index", &image]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not match its digest") && err.contains(&base[7..]),
        "{err}"
    );
    let base_index = cold.join("index").join(format!("{}.idx", &base[7..]));
    assert!(!base_index.exists(), "no index was kept for the bad layer");
    let staged = cold.join("chunks").join(&base[7..]);
    assert!(
        !staged.exists(),
        "no chunk of the bad layer reached the cache"
    );

    // Range reads through the warm index must fail with EIO, not wrong bytes.
    let m = Mount::start(
        &image,
        &warm,
        &tmp.path().join("mnt"),
        &["--no-background-fill"],
    )?;
    let big = find_large_file(&fx.rootfs)?;
    let err = read_file(&m.dir.join(&big)).expect_err("corrupt data must not be served");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    std::fs::write(&blob, &pristine)?;
    assert_eq!(
        read_file(&m.dir.join(&big))?,
        read_file(&fx.rootfs.join(&big))?
    );
    m.stop()?;
    assert!(base_size > 0);
    Ok(())
}

#[test]
fn kill_9_during_index_and_pull_leaves_a_usable_cache() -> Result<()> {
    if !common::require_root_and_tools("kill_9_during_index_and_pull_leaves_a_usable_cache", TOOLS)
    {
        return Ok(());
    }
    let reg = Registry::start()?;
    let fx = shared_fixture()?;
    fx.push(&reg, "fixture/kill:t")?;
    let image = reg.reference("fixture/kill:t");
    let tmp = tempfile::tempdir()?;
    let cache = tmp.path().join("cache");
    for (cmd, delays) in [("index", [150u64, 400, 900]), ("pull", [200, 600, 1200])] {
        for ms in delays {
            let mut child = Command::new(BIN)
                .arg("--cache-dir")
                .arg(&cache)
                .args([cmd, &image])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            std::thread::sleep(Duration::from_millis(ms));
            child.kill()?; // SIGKILL
            child.wait()?;
        }
        if cmd == "index" {
            // Drop chunks so the pull below starts from partial state again.
            let _ = std::fs::remove_dir_all(cache.join("chunks"));
        }
    }
    let m = Mount::start(
        &image,
        &cache,
        &tmp.path().join("mnt"),
        &["--no-background-fill"],
    )?;
    let got = snapshot(&m.dir)?;
    let want = snapshot(&fx.rootfs)?;
    let diffs = compare_with(&want, &got, &CompareOptions::default());
    m.stop()?;
    assert!(diffs.is_empty(), "after kill -9:\n{}", diffs.join("\n"));
    let out = lazyboot(&cache, &["pull", &image]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn background_fill_then_registry_loss_still_serves_everything() -> Result<()> {
    if !common::require_root_and_tools(
        "background_fill_then_registry_loss_still_serves_everything",
        TOOLS,
    ) {
        return Ok(());
    }
    let mut reg = Registry::start()?;
    let fx = shared_fixture()?;
    let (image, tmp, cache) = warm_index_cold_cache(&reg, "fixture/fill:t")?;
    // Background fill is on by default.
    let mut m = Mount::start(&image, &cache, &tmp.path().join("mnt"), &[])?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        m.drain();
        if m.err_lines
            .iter()
            .any(|l| l.contains("background fill complete"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no fill: {}",
            m.err_lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    reg.stop();
    let got = snapshot(&m.dir)?;
    let want = snapshot(&fx.rootfs)?;
    let diffs = compare_with(&want, &got, &CompareOptions::default());
    m.stop()?;
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    Ok(())
}

#[test]
fn a_mount_left_by_kill_9_is_cleaned_up_by_the_next_run() -> Result<()> {
    if !common::require_root_and_tools(
        "a_mount_left_by_kill_9_is_cleaned_up_by_the_next_run",
        TOOLS,
    ) {
        return Ok(());
    }
    let fx = shared_fixture()?;
    let image = format!("oci:{}:{}", fx.layout.display(), fx.tag);
    let tmp = tempfile::tempdir()?;
    let cache = tmp.path().join("cache");
    let dir = tmp.path().join("mnt");
    let mut first = Mount::start(&image, &cache, &dir, &["--no-background-fill"])?;
    first.child.kill()?;
    first.child.wait()?;
    let err = std::fs::read_dir(&dir).expect_err("a dead FUSE mount is not readable");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    let second = Mount::start(&image, &cache, &dir, &["--no-background-fill"])?;
    assert_eq!(
        read_file(&second.dir.join("deep/a/b/c/d/e/f/file.txt"))?,
        read_file(&fx.rootfs.join("deep/a/b/c/d/e/f/file.txt"))?
    );
    let mut second = second;
    second.drain();
    assert!(
        second.err_lines.iter().any(|l| l.contains("stale mount")),
        "{:?}",
        second.err_lines
    );
    second.stop()?;
    drop(first);
    Ok(())
}

#[test]
fn a_hung_registry_gives_eio_within_the_read_timeout() -> Result<()> {
    if !common::require_root_and_tools("a_hung_registry_gives_eio_within_the_read_timeout", TOOLS) {
        return Ok(());
    }
    let mut reg = Registry::start()?;
    let fx = shared_fixture()?;
    let (image, tmp, cache) = warm_index_cold_cache(&reg, "fixture/hang:t")?;
    let m = Mount::start(
        &image,
        &cache,
        &tmp.path().join("mnt"),
        &["--no-background-fill", "--read-timeout", "3"],
    )?;
    reg.pause()?;
    let t = Instant::now();
    let err = read_file(&m.dir.join("data/large.bin")).expect_err("a hung registry cannot serve");
    let waited = t.elapsed();
    eprintln!("EIO after {waited:?}");
    reg.resume()?;
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Generous bound: the point is "does not hang forever", not speed.
    assert!(waited < Duration::from_secs(30), "took {waited:?}");
    let t = Instant::now();
    assert_eq!(
        read_file(&m.dir.join("data/large.bin"))?,
        read_file(&fx.rootfs.join("data/large.bin"))?
    );
    eprintln!("recovered read took {:?}", t.elapsed());
    m.stop()?;
    Ok(())
}
