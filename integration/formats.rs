//! Layer formats other than plain gzip tar (eStargz, uncompressed tar,
//! zstd, zstd:chunked), and the `inspect` / `index` / `pull` commands and reference
//! errors as a user sees them.

mod common;

use anyhow::{ensure, Context, Result};
use common::mount::{lazyboot, Mount, BIN};
use common::{
    compare_with, paths, run, sh, shared_fixture, snapshot, CompareOptions, Registry, Snapshot,
};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const TOOLS: &[&str] = &["fusermount3"];
/// `to-estargz.sh` needs Debian's containerd and stargz-snapshotter.
const ESTARGZ_TOOLS: &[&str] = &["fusermount3", "containerd", "ctr-remote"];

const MEDIA_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MEDIA_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The annotation podman 4.3 puts on a zstd:chunked layer.
const ZSTD_CHUNKED_POSITION: &str = "io.containers.zstd-chunked.manifest-position";
/// `podman` converts to zstd:chunked (in a mount namespace of `unshare`).
const ZSTD_CHUNKED_TOOLS: &[&str] = &["fusermount3", "podman", "unshare"];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `lazyboot --cache-dir CACHE ARGS..` that must succeed; returns stdout.
fn lazyboot_ok(cache: &Path, args: &[&str]) -> Result<String> {
    let out = lazyboot(cache, args);
    ensure!(
        out.status.success(),
        "lazyboot {args:?} failed ({}):\n{}",
        out.status,
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

/// `lazyboot --cache-dir CACHE ARGS..`, SIGKILLed after `secs` (coreutils
/// `timeout`), so a command that wrongly succeeds (a mount) cannot hang the
/// test. Returns the output and how long it took.
fn lazyboot_bounded(cache: &Path, args: &[&str], secs: u64) -> (Output, Duration) {
    let t = Instant::now();
    let out = Command::new("timeout")
        .args(["-s", "KILL", &secs.to_string(), BIN])
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run timeout lazyboot");
    (out, t.elapsed())
}

/// `lazyboot inspect --json IMAGE`.
fn inspect_json(cache: &Path, image: &str) -> Result<serde_json::Value> {
    let out = lazyboot_ok(cache, &["inspect", "--json", image])?;
    serde_json::from_str(&out).with_context(|| format!("inspect --json is not JSON:\n{out}"))
}

/// The `layers` rows of `inspect --json`.
fn inspect_layers(v: &serde_json::Value) -> Result<Vec<serde_json::Value>> {
    v["layers"]
        .as_array()
        .cloned()
        .with_context(|| format!("no layers in {v}"))
}

/// (digest, size, mediaType, annotations) of every layer in a manifest.
fn manifest_layers(m: &serde_json::Value) -> Result<Vec<(String, u64, String, serde_json::Value)>> {
    m["layers"]
        .as_array()
        .with_context(|| format!("manifest without layers: {m}"))?
        .iter()
        .map(|l| {
            Ok((
                l["digest"].as_str().context("digest")?.to_string(),
                l["size"].as_u64().context("size")?,
                l["mediaType"].as_str().context("mediaType")?.to_string(),
                l["annotations"].clone(),
            ))
        })
        .collect()
}

/// Every layer row of `inspect --json` has `format` == `want`, and the rows
/// are the manifest's layers (digests and compressed sizes, in order).
fn assert_inspect_layers(
    v: &serde_json::Value,
    manifest: &serde_json::Value,
    want: &str,
) -> Result<()> {
    let rows = inspect_layers(v)?;
    let layers = manifest_layers(manifest)?;
    assert_eq!(rows.len(), layers.len(), "inspect rows vs manifest: {v}");
    for (row, (digest, size, media, _)) in rows.iter().zip(&layers) {
        assert_eq!(row["format"], want, "layer format in {row}");
        assert_eq!(row["digest"], digest.as_str(), "{row}");
        assert_eq!(row["compressed_size"], *size, "{row}");
        assert_eq!(row["media_type"], media.as_str(), "{row}");
    }
    Ok(())
}

/// Push the shared fixture to `reg` and convert it with `to-estargz.sh` into
/// `repo:esgz`, with 64 KiB chunks so large files span many chunks. Returns
/// the eStargz image reference.
fn push_estargz(reg: &Registry, repo: &str) -> Result<String> {
    let fx = shared_fixture()?;
    fx.push(reg, &format!("{repo}:src"))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures/to-estargz.sh");
    let t = Instant::now();
    run(Command::new("bash")
        .arg(script)
        .arg(reg.reference(&format!("{repo}:src")))
        .arg(reg.reference(&format!("{repo}:esgz")))
        .args(["--estargz-chunk-size", "65536"])
        .args(["--estargz-compression-level", "1"]))?;
    eprintln!("[estargz] converted in {:.1?}", t.elapsed());
    // The conversion really happened: new blobs, each with a TOC digest.
    let m = reg.get_manifest(repo, "esgz")?;
    let src = fx.layer_digests()?;
    let layers = manifest_layers(&m)?;
    assert_eq!(layers.len(), src.len(), "{m}");
    for (digest, _, _, ann) in &layers {
        assert!(!src.contains(digest), "layer {digest} was not converted");
        assert!(
            ann[TOC_DIGEST].is_string(),
            "no TOC digest on {digest}: {m}"
        );
    }
    Ok(reg.reference(&format!("{repo}:esgz")))
}

/// Mount `image` (fresh cache under `tmp`) and snapshot it.
fn mount_snapshot(image: &str, tmp: &Path) -> Result<Snapshot> {
    let m = Mount::start(
        image,
        &tmp.join("cache"),
        &tmp.join("mnt"),
        &["--no-background-fill"],
    )?;
    let got = snapshot(&m.dir);
    m.stop()?;
    Ok(got?.with_label(format!("lazyboot mount {image}")))
}

fn umoci_snapshot() -> Result<Snapshot> {
    Ok(snapshot(&shared_fixture()?.rootfs)?.with_label("umoci unpack"))
}

fn assert_no_diffs(want: &Snapshot, got: &Snapshot, opts: &CompareOptions) {
    let diffs = compare_with(want, got, opts);
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    assert!(got.paths().count() > 20, "the fixture has many paths");
}

fn fixture_layout_ref() -> Result<String> {
    let fx = shared_fixture()?;
    Ok(format!("oci:{}:{}", fx.layout.display(), fx.tag))
}

/// `skopeo inspect --raw` of an image: its manifest.
fn skopeo_manifest(image: &str) -> Result<serde_json::Value> {
    let raw = run(Command::new("skopeo").args(["inspect", "--raw", image]))?;
    Ok(serde_json::from_slice(&raw)?)
}

/// Mount `image` (a fresh cache), read one small file and check that this
/// fetched less than 5% of the `total` compressed bytes of its layers.
fn small_read_is_small(format: &str, image: &str, total: u64) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let m = Mount::start(
        image,
        &tmp.path().join("cache"),
        &tmp.path().join("mnt"),
        &["--no-background-fill"],
    )?;
    let got = std::fs::read(m.dir.join(paths::DEEP_FILE.trim_start_matches('/')))?;
    assert_eq!(text(&got), paths::DEEP_CONTENT);
    let (requests, bytes) = m.stop()?;
    eprintln!(
        "{format}: mount + read {}: {requests} requests, {bytes} of {total} compressed bytes ({:.2}%)",
        paths::DEEP_FILE,
        bytes as f64 * 100.0 / total as f64
    );
    assert!(requests >= 1, "the footers and TOCs come from the registry");
    assert!(
        bytes * 20 < total,
        "fetched {bytes} of {total} bytes (>= 5%) for one small file"
    );
    Ok(())
}

/// `image`, whose layers are all of a format found from the blob's tail,
/// shows `format` in `inspect` before and after a mount (indexed then), and
/// its mount equals `umoci unpack` of the fixture. Returns the mount's
/// snapshot.
fn tail_format_mount_equals_umoci(
    image: &str,
    manifest: &serde_json::Value,
    format: &str,
    tmp: &Path,
) -> Result<Snapshot> {
    let cache = tmp.join("cache");
    // Before any index exists, inspect probes the footer of each layer.
    assert_inspect_layers(&inspect_json(&cache, image)?, manifest, format)?;
    let got = mount_snapshot(image, tmp)?;
    assert_no_diffs(&umoci_snapshot()?, &got, &CompareOptions::default());
    // After the mount the cached indexes say so too.
    let v = inspect_json(&cache, image)?;
    assert_inspect_layers(&v, manifest, format)?;
    for row in inspect_layers(&v)? {
        assert_eq!(row["indexed"], true, "{row}");
    }
    Ok(got)
}

#[test]
fn estargz_image_mount_equals_umoci_unpack() -> Result<()> {
    if !common::require_root_and_tools("estargz_image_mount_equals_umoci_unpack", ESTARGZ_TOOLS) {
        return Ok(());
    }
    let reg = Registry::start()?;
    let image = push_estargz(&reg, "fixture/esgz")?;
    let manifest = reg.get_manifest("fixture/esgz", "esgz")?;

    // The big layer really is chunked: /data/large.bin has many TOC entries.
    let big = &manifest_layers(&manifest)?[0].0;
    let toc = sh(&format!(
        "tar -xzOf {} stargz.index.json | jq '[.entries[] | select(.name == \"data/large.bin\")] | length'",
        reg.blob_path(big).display()
    ))?;
    let chunks: u64 = text(&toc).trim().parse()?;
    assert!(chunks > 100, "large.bin has only {chunks} TOC entries");

    let tmp = tempfile::tempdir()?;
    let got = tail_format_mount_equals_umoci(&image, &manifest, "estargz", tmp.path())?;
    // ctr-remote adds this marker entry to every layer; it is not image content.
    assert!(!got.contains("/.no.prefetch.landmark"));
    Ok(())
}

#[test]
fn estargz_small_read_fetches_a_small_fraction() -> Result<()> {
    if !common::require_root_and_tools("estargz_small_read_fetches_a_small_fraction", ESTARGZ_TOOLS)
    {
        return Ok(());
    }
    let reg = Registry::start()?;
    let image = push_estargz(&reg, "fixture/esgz-lazy")?;
    let total: u64 = manifest_layers(&reg.get_manifest("fixture/esgz-lazy", "esgz")?)?
        .iter()
        .map(|l| l.1)
        .sum();
    small_read_is_small("eStargz", &image, total)
}

/// Debian's podman with all its state under `dir`, in a mount namespace
/// where its blob-info cache (`/var/lib/containers/cache` for root) is an
/// empty tmpfs: a remembered blob of another compression is then never
/// reused for the one asked for, and nothing is left behind.
fn podman(dir: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let script = r#"mkdir -p /var/lib/containers/cache &&
        mount -t tmpfs lazyboot-podman /var/lib/containers/cache && exec podman "$@""#;
    run(Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "podman",
        ])
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .arg("--tmpdir")
        .arg(dir.join("tmp"))
        .args(["--storage-driver", "vfs", "--events-backend", "none"])
        .args(args))
}

/// Convert the shared fixture to zstd:chunked with podman (into an OCI
/// layout under `tmp`) and push that, blobs as they are, to `reg` as
/// `repo:zc`. Returns the image reference.
fn push_zstd_chunked(reg: &Registry, repo: &str, tmp: &Path) -> Result<String> {
    let fx = shared_fixture()?;
    let state = tmp.join("podman");
    let t = Instant::now();
    let id = text(&podman(&state, &["pull", "-q", &fixture_layout_ref()?])?);
    let layout = tmp.join("zc");
    podman(
        &state,
        &[
            "push",
            "-q",
            "--compression-format",
            "zstd:chunked",
            id.trim(),
            &format!("oci:{}:zc", layout.display()),
        ],
    )?;
    common::push(&layout, "zc", reg, &format!("{repo}:zc"))?;
    eprintln!("[zstd:chunked] converted in {:.1?}", t.elapsed());
    // The conversion really happened: new zstd blobs, each with its
    // manifest's position.
    let m = reg.get_manifest(repo, "zc")?;
    let src = fx.layer_digests()?;
    let layers = manifest_layers(&m)?;
    assert_eq!(layers.len(), src.len(), "{m}");
    for (digest, _, media, ann) in &layers {
        assert!(!src.contains(digest), "layer {digest} was not converted");
        assert_eq!(media, MEDIA_ZSTD, "{m}");
        assert!(
            ann[ZSTD_CHUNKED_POSITION].is_string(),
            "no zstd:chunked manifest position on {digest}: {m}"
        );
    }
    Ok(reg.reference(&format!("{repo}:zc")))
}

#[test]
fn zstd_chunked_image_mount_equals_umoci_unpack() -> Result<()> {
    if !common::require_root_and_tools(
        "zstd_chunked_image_mount_equals_umoci_unpack",
        ZSTD_CHUNKED_TOOLS,
    ) {
        return Ok(());
    }
    let reg = Registry::start()?;
    let tmp = tempfile::tempdir()?;
    let image = push_zstd_chunked(&reg, "fixture/zc", tmp.path())?;
    let manifest = reg.get_manifest("fixture/zc", "zc")?;
    tail_format_mount_equals_umoci(&image, &manifest, "zstd:chunked", tmp.path())?;
    Ok(())
}

#[test]
fn zstd_chunked_small_read_fetches_a_small_fraction() -> Result<()> {
    if !common::require_root_and_tools(
        "zstd_chunked_small_read_fetches_a_small_fraction",
        ZSTD_CHUNKED_TOOLS,
    ) {
        return Ok(());
    }
    let reg = Registry::start()?;
    let tmp = tempfile::tempdir()?;
    let image = push_zstd_chunked(&reg, "fixture/zc-lazy", tmp.path())?;
    let total: u64 = manifest_layers(&reg.get_manifest("fixture/zc-lazy", "zc")?)?
        .iter()
        .map(|l| l.1)
        .sum();
    small_read_is_small("zstd:chunked", &image, total)
}

#[test]
fn uncompressed_tar_layers_mount_equal() -> Result<()> {
    if !common::require_root_and_tools("uncompressed_tar_layers_mount_equal", TOOLS) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    // skopeo 1.9 (Debian 12) honours --dest-decompress only for the `dir:`
    // transport and recompresses layers written to `oci:` unless told to
    // accept uncompressed ones, hence two steps.
    let dir = tmp.path().join("dir");
    let layout = tmp.path().join("plain");
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet", "--dest-decompress"])
        .arg(fixture_layout_ref()?)
        .arg(format!("dir:{}", dir.display())))?;
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet"])
        .arg("--dest-oci-accept-uncompressed-layers")
        .arg(format!("dir:{}", dir.display()))
        .arg(format!("oci:{}:plain", layout.display())))?;
    std::fs::remove_dir_all(&dir)?;
    let image = format!("oci:{}:plain", layout.display());
    let manifest = skopeo_manifest(&image)?;
    for (digest, _, media, _) in manifest_layers(&manifest)? {
        assert_eq!(media, MEDIA_TAR, "layer {digest} is not uncompressed");
    }

    let got = mount_snapshot(&image, tmp.path())?;
    assert_no_diffs(&umoci_snapshot()?, &got, &CompareOptions::default());

    let v = inspect_json(&tmp.path().join("cache"), &image)?;
    assert_inspect_layers(&v, &manifest, "tar")?;
    for row in inspect_layers(&v)? {
        // A tar layer's uncompressed size is its blob size.
        assert_eq!(row["uncompressed_size"], row["compressed_size"], "{row}");
    }

    // The same layers served by a registry (range reads of tar chunks).
    let reg = Registry::start()?;
    common::push(&layout, "plain", &reg, "fixture/plain:t")?;
    let pushed = reg.get_manifest("fixture/plain", "t")?;
    assert_eq!(manifest_layers(&pushed)?, manifest_layers(&manifest)?);
    let tmp2 = tempfile::tempdir()?;
    let image = reg.reference("fixture/plain:t");
    let got = mount_snapshot(&image, tmp2.path())?;
    assert_no_diffs(&umoci_snapshot()?, &got, &CompareOptions::default());
    assert_inspect_layers(
        &inspect_json(&tmp2.path().join("cache"), &image)?,
        &manifest,
        "tar",
    )?;
    Ok(())
}

#[test]
fn zstd_layers_mount_equal_and_then_come_from_the_cache() -> Result<()> {
    if !common::require_root_and_tools(
        "zstd_layers_mount_equal_and_then_come_from_the_cache",
        TOOLS,
    ) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let layout = tmp.path().join("z");
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet"])
        .args(["--dest-compress-format", "zstd", "--dest-compress"])
        .arg(fixture_layout_ref()?)
        .arg(format!("oci:{}:z", layout.display())))?;
    let image = format!("oci:{}:z", layout.display());
    let manifest = skopeo_manifest(&image)?;
    for (digest, _, media, _) in manifest_layers(&manifest)? {
        assert_eq!(media, MEDIA_ZSTD, "layer {digest}");
    }
    // From the layout: one streaming pass per layer.
    let got = mount_snapshot(&image, tmp.path())?;
    assert_no_diffs(&umoci_snapshot()?, &got, &CompareOptions::default());
    assert_inspect_layers(
        &inspect_json(&tmp.path().join("cache"), &image)?,
        &manifest,
        "zstd",
    )?;

    // From a registry, cold: the streaming pass fills the cache as it goes.
    let reg = Registry::start()?;
    common::push(&layout, "z", &reg, "fixture/zstd:t")?;
    let image = reg.reference("fixture/zstd:t");
    let cold = tempfile::tempdir()?;
    let cache = cold.path().join("cache");
    let walk = |label: &str| -> Result<(Snapshot, u64, u64)> {
        let m = Mount::start(
            &image,
            &cache,
            &cold.path().join("mnt"),
            &["--no-background-fill"],
        )?;
        let got = snapshot(&m.dir);
        let (requests, bytes) = m.stop()?;
        eprintln!("zstd, {label}: {requests} registry requests, {bytes} bytes");
        Ok((
            got?.with_label(format!("lazyboot mount {image} ({label})")),
            requests,
            bytes,
        ))
    };
    let (got, _, cold_bytes) = walk("cold")?;
    assert_no_diffs(&umoci_snapshot()?, &got, &CompareOptions::default());
    assert!(cold_bytes > 0, "a cold mount fetched nothing");
    // Then from the cache: the whole tree again without a blob byte.
    let (got, _, warm_bytes) = walk("warm")?;
    assert_no_diffs(&umoci_snapshot()?, &got, &CompareOptions::default());
    // (Only the manifest, config and referrers lookup: a few KiB.)
    let layer_bytes: u64 = manifest_layers(&manifest)?.iter().map(|l| l.1).sum();
    assert!(
        warm_bytes < 64 << 10 && layer_bytes > 1 << 20,
        "a warm mount of a zstd image fetched {warm_bytes} bytes ({layer_bytes} in its layers)"
    );

    // Chunks no longer cached (the index kept): each miss is decoded again
    // from its frame's start, checked against the chunk's hash.
    let chunks = cache.join("chunks");
    ensure!(chunks.is_dir(), "no chunk directory in {}", cache.display());
    std::fs::remove_dir_all(&chunks)?;
    let (got, _, refetched) = walk("chunks evicted")?;
    assert_no_diffs(&umoci_snapshot()?, &got, &CompareOptions::default());
    assert!(refetched > 0, "evicted chunks came from nowhere");
    Ok(())
}

/// A copy of the fixture's layout whose manifest says its layers are
/// encrypted (`+encrypted` media types; the blobs are unchanged).
fn encrypted_layout(dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let fx = shared_fixture()?;
    run(Command::new("cp").arg("-a").arg(&fx.layout).arg(dir))?;
    let mut manifest = common::layout_manifest(dir, &fx.tag)?;
    for l in manifest["layers"].as_array_mut().context("layers")? {
        let media = l["mediaType"].as_str().context("mediaType")?.to_string();
        l["mediaType"] = format!("{media}+encrypted").into();
    }
    let bytes = serde_json::to_vec(&manifest)?;
    let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
    std::fs::write(common::layout_blob(dir, &digest), &bytes)?;
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path)?)?;
    for m in index["manifests"].as_array_mut().context("manifests")? {
        if m["annotations"]["org.opencontainers.image.ref.name"] == fx.tag.as_str() {
            m["digest"] = digest.clone().into();
            m["size"] = bytes.len().into();
        }
    }
    std::fs::write(&index_path, serde_json::to_vec(&index)?)?;
    Ok(format!("oci:{}:{}", dir.display(), fx.tag))
}

#[test]
fn encrypted_layers_are_refused_with_the_media_type() -> Result<()> {
    if !common::require_root_and_tools("encrypted_layers_are_refused_with_the_media_type", TOOLS) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let image = encrypted_layout(&tmp.path().join("enc"))?;
    let cache = tmp.path().join("cache");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let mnt_s = mnt.to_str().context("utf-8 temp path")?;
    for args in [
        vec!["mount", "--no-background-fill", &image, mnt_s],
        vec!["index", &image],
        vec!["pull", &image],
    ] {
        let (out, took) = lazyboot_bounded(&cache, &args, 60);
        let _ = Command::new("umount").arg("-l").arg(&mnt).output();
        let err = text(&out.stderr);
        eprintln!(
            "lazyboot {} -> {} in {took:.1?}: {err}",
            args[0], out.status
        );
        assert!(
            !out.status.success(),
            "lazyboot {args:?} accepted encrypted layers"
        );
        assert_ne!(
            out.status.code(),
            None,
            "lazyboot {args:?} hung and was killed"
        );
        assert!(
            err.contains("+encrypted"),
            "error must name the media type: {err}"
        );
    }
    // Nothing was mounted, and no index was written.
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    assert!(!mounts.contains(mnt_s), "{mnt_s} left mounted");
    let indexes = std::fs::read_dir(cache.join("index")).map_or(0, |d| d.count());
    assert_eq!(indexes, 0, "an index was cached for an encrypted layer");

    // inspect still shows every layer and names the media type, but exits
    // non-zero: the image cannot be read.
    let (out, _) = lazyboot_bounded(&cache, &["inspect", "--json", &image], 60);
    assert!(
        !out.status.success(),
        "inspect of an unreadable image succeeded"
    );
    assert!(
        text(&out.stderr).contains("cannot be read"),
        "{}",
        text(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    for row in inspect_layers(&v)? {
        let format = row["format"].as_str().unwrap_or_default();
        assert!(
            format.contains("unsupported") && format.contains("+encrypted"),
            "{row}"
        );
    }
    Ok(())
}

/// Size of a gzip blob once decompressed, and the number of tar members.
fn gunzipped_size_and_members(blob: &Path) -> Result<(u64, u64)> {
    let b = blob.display();
    let size = text(&sh(&format!("gzip -dc {b} | wc -c"))?)
        .trim()
        .parse()?;
    let members = text(&sh(&format!("tar -tzf {b} | wc -l"))?)
        .trim()
        .parse()?;
    Ok((size, members))
}

/// Parses `48.5 MiB` / `791 B` as printed by the CLI.
fn parse_human(s: &str) -> Option<f64> {
    let (num, unit) = s.trim().split_once(' ')?;
    let mult = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(num.parse::<f64>().ok()? * mult)
}

#[test]
fn inspect_shows_layers_and_cache_state() -> Result<()> {
    if !common::require_root_and_tools("inspect_shows_layers_and_cache_state", TOOLS) {
        return Ok(());
    }
    let reg = Registry::start()?;
    shared_fixture()?.push(&reg, "fixture/inspect:t")?;
    let image = reg.reference("fixture/inspect:t");
    let manifest = reg.get_manifest("fixture/inspect", "t")?;
    let layers = manifest_layers(&manifest)?;
    assert_eq!(layers.len(), 3);
    let tmp = tempfile::tempdir()?;
    let cache = tmp.path().join("cache");

    // Before: 3 gzip layers, no index, nothing cached.
    let v = inspect_json(&cache, &image)?;
    assert_inspect_layers(&v, &manifest, "gzip")?;
    for row in inspect_layers(&v)? {
        assert_eq!(row["indexed"], false, "{row}");
        assert_eq!(row["entries"], serde_json::Value::Null, "{row}");
        assert_eq!(row["cached_bytes"], 0, "{row}");
    }
    let table = lazyboot_ok(&cache, &["inspect", &image])?;
    eprintln!("{table}");
    let rows = table_rows(&table, &layers);
    for (row, (digest, ..)) in rows.iter().zip(&layers) {
        assert!(
            row.contains(" gzip ") && row.contains(" missing "),
            "{digest}: {row:?}"
        );
    }

    // After `index`: indexed, with the uncompressed tar size and one entry per
    // tar member.
    lazyboot_ok(&cache, &["index", &image])?;
    let v = inspect_json(&cache, &image)?;
    assert_inspect_layers(&v, &manifest, "gzip")?;
    for (row, (digest, ..)) in inspect_layers(&v)?.iter().zip(&layers) {
        let (size, members) = gunzipped_size_and_members(&reg.blob_path(digest))?;
        assert_eq!(row["indexed"], true, "{row}");
        assert_eq!(row["uncompressed_size"], size, "{row}");
        assert_eq!(row["entries"], members, "{row}");
    }
    let table = lazyboot_ok(&cache, &["inspect", &image])?;
    eprintln!("{table}");
    for (row, (digest, ..)) in table_rows(&table, &layers).iter().zip(&layers) {
        assert!(
            row.contains(" gzip ") && row.contains(" cached "),
            "{digest}: {row:?}"
        );
    }

    // `pull` into a cache that has the indexes but no chunks fetches the
    // layers and caches every byte of them.
    std::fs::remove_dir_all(cache.join("chunks"))?;
    for row in inspect_layers(&inspect_json(&cache, &image)?)? {
        assert_eq!(row["cached_bytes"], 0, "chunks were removed: {row}");
    }
    let total: u64 = layers.iter().map(|l| l.1).sum();
    let out = lazyboot_ok(&cache, &["pull", &image])?;
    eprintln!("{out}");
    let fetched = out
        .lines()
        .find(|l| l.starts_with("pulled "))
        .and_then(|l| l.split(": ").last())
        .and_then(|l| l.split(" fetched").next())
        .and_then(parse_human)
        .with_context(|| format!("no `pulled ...: N fetched` line in {out:?}"))?;
    assert!(
        fetched >= total as f64 * 0.9 && fetched <= total as f64 * 1.5,
        "pull says it fetched {fetched} bytes; the layers are {total} bytes"
    );
    for row in inspect_layers(&inspect_json(&cache, &image)?)? {
        let cached = row["cached_bytes"].as_u64().context("cached_bytes")?;
        let size = row["uncompressed_size"]
            .as_u64()
            .context("uncompressed_size")?;
        assert!(cached > 0 && cached >= size, "after pull: {row}");
    }
    Ok(())
}

/// The table lines of `inspect` for each manifest layer (by short digest).
fn table_rows(table: &str, layers: &[(String, u64, String, serde_json::Value)]) -> Vec<String> {
    let header = table
        .lines()
        .position(|l| l.starts_with('#'))
        .unwrap_or_else(|| panic!("no header in {table}"));
    let rows: Vec<String> = table.lines().skip(header + 1).map(str::to_string).collect();
    assert_eq!(rows.len(), layers.len(), "{table}");
    for (i, (row, (digest, ..))) in rows.iter().zip(layers).enumerate() {
        let short = &digest["sha256:".len()..][..12];
        assert!(
            row.starts_with(&format!("{:<3} {short} ", i + 1)),
            "row {i} is not layer {digest}: {row:?}"
        );
    }
    rows
}

#[test]
fn lazyboot_rejects_bad_references_clearly() -> Result<()> {
    if !common::require_root_and_tools("lazyboot_rejects_bad_references_clearly", &[]) {
        return Ok(());
    }
    let reg = Registry::start()?;
    shared_fixture()?.push(&reg, "fixture/refs:t")?;
    let tmp = tempfile::tempdir()?;
    let cache = tmp.path().join("cache");
    let missing_tag = reg.reference("fixture/refs:no-such-tag");
    let missing_repo = reg.reference("no/such-repo:t");
    let cases: [(&str, &[&str]); 4] = [
        ("Foo:Bar", &["lowercase"]),
        ("oci:/nonexistent", &["/nonexistent", "not found"]),
        (&missing_tag, &["no-such-tag", "not found"]),
        (&missing_repo, &["not found"]),
    ];
    for (image, want) in cases {
        for cmd in ["inspect", "index"] {
            let (out, took) = lazyboot_bounded(&cache, &[cmd, image], 60);
            let err = text(&out.stderr);
            eprintln!(
                "lazyboot {cmd} {image} -> {} in {took:.1?}:\n{err}",
                out.status
            );
            assert!(!out.status.success(), "{cmd} {image} succeeded");
            assert_ne!(out.status.code(), None, "{cmd} {image} hung");
            assert!(
                took < Duration::from_secs(10),
                "{cmd} {image} took {took:?}"
            );
            for w in want {
                assert!(err.contains(w), "{cmd} {image}: {w:?} not in {err}");
            }
        }
    }
    // The registry still serves the real tag: the failures were about names.
    lazyboot_ok(&cache, &["inspect", &reg.reference("fixture/refs:t")])?;
    Ok(())
}
