//! `lazyboot index --push` against Debian's docker-registry 2.8, which has no
//! referrers API: the artifact is listed through the referrers tag schema
//! (`sha256-<hex>`), and a second lazyboot with an empty cache uses it
//! instead of a streaming pass. Artifacts that fail a check are refused and
//! the layers streamed as before, with the same bytes served.

mod common;

use anyhow::{bail, Context, Result};
use common::mount::lazyboot;
use common::{paths, shared_fixture, Registry};
use lazyboot::cache::ChunkCache;
use lazyboot::digest::Digest;
use lazyboot::image::published_cache_name;
use lazyboot::image::PrefetchPlan;
use lazyboot::image::{ImageView, ViewOptions};
use lazyboot::layer::index::{LayerIndex, INDEX_VERSION};
use lazyboot::progress::Progress;
use lazyboot::reference::ImageRef;
use lazyboot::registry::{Published, RegistryOptions, Source, ARTIFACT_TYPE};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const LAYER_INDEX_MT: &str = "application/vnd.lazyboot.layer-index.v1";

/// (layer, encoded index) as `Published` takes them.
type LayerIndexes = Vec<(Digest, bytes::Bytes)>;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: Output) -> Result<(String, String)> {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    if !out.status.success() {
        bail!("lazyboot failed ({}):\n{stdout}\n{stderr}", out.status);
    }
    Ok((stdout, stderr))
}

/// A pushed fixture: the registry, `repo`, the tag reference and the
/// image manifest's digest and size.
struct Pushed {
    reg: Registry,
    repo: String,
    image: String,
    manifest: Digest,
    manifest_size: u64,
    layers: Vec<(Digest, u64)>,
}

fn push_fixture(repo: &str) -> Result<Pushed> {
    let reg = Registry::start()?;
    let fx = shared_fixture()?;
    fx.push(&reg, &format!("{repo}:t"))?;
    let raw = common::curl_get(
        &format!("{}/v2/{repo}/manifests/t", reg.url()),
        &["application/vnd.oci.image.manifest.v1+json"],
    )?;
    let m: serde_json::Value = serde_json::from_slice(&raw)?;
    let layers = m["layers"]
        .as_array()
        .context("layers")?
        .iter()
        .map(|l| {
            Ok((
                Digest::parse(l["digest"].as_str().context("digest")?)?,
                l["size"].as_u64().context("size")?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Pushed {
        image: reg.reference(&format!("{repo}:t")),
        repo: repo.to_string(),
        manifest: Digest::of_bytes(&raw),
        manifest_size: raw.len() as u64,
        layers,
        reg,
    })
}

impl Pushed {
    fn fallback_tag(&self) -> String {
        format!("sha256-{}", self.manifest.hex())
    }

    /// The image index at the fallback tag.
    fn fallback_index(&self) -> Result<serde_json::Value> {
        self.reg.get_manifest(&self.repo, &self.fallback_tag())
    }

    fn total_layer_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.1).sum()
    }
}

/// The artifact digest from `index --push`'s output line.
fn artifact_of(stdout: &str) -> Result<String> {
    let at = stdout
        .find("@sha256:")
        .with_context(|| format!("no artifact digest in {stdout:?}"))?;
    Ok(stdout[at + 1..at + 1 + 71].to_string())
}

/// Chunk files in a cache: a streaming pass leaves every chunk of a layer.
fn chunk_files(cache: &Path) -> usize {
    fn walk(p: &Path) -> usize {
        std::fs::read_dir(p).map_or(0, |rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p)
                    } else {
                        1
                    }
                })
                .sum()
        })
    }
    walk(&cache.join("chunks"))
}

fn view_options(cache: &Path) -> ViewOptions {
    ViewOptions {
        cache_dir: cache.to_path_buf(),
        cache_size: 1 << 40,
        registry: RegistryOptions::default(),
        read_timeout: Duration::from_secs(60),
    }
}

async fn read_all(view: &ImageView, path: &str) -> Result<Vec<u8>> {
    let ino = view.tree().resolve(path).context(path.to_string())?;
    let (ino, size) = (ino.ino, ino.size);
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let got = view.read(ino, out.len() as u64, 1 << 20).await?;
        if got.is_empty() {
            bail!("{path}: short read at {}", out.len());
        }
        out.extend_from_slice(&got);
    }
    Ok(out)
}

/// Reads files of every layer through a view and compares them with the
/// umoci-unpacked fixture.
async fn assert_reads_right(view: &ImageView) -> Result<()> {
    let fx = shared_fixture()?;
    for p in [
        paths::DEEP_FILE,
        paths::TEXT_FILE,
        paths::MODIFIED_CONTENT,
        paths::UNICODE,
    ] {
        let want = std::fs::read(fx.rootfs.join(&p[1..]))?;
        assert_eq!(read_all(view, p).await?, want, "{p}");
    }
    // A slice deep inside the large file: one span, not the whole layer.
    let large = view
        .tree()
        .resolve(paths::LARGE_FILE)
        .context("large file")?;
    let (ino, size) = (large.ino, large.size);
    let at = size / 2 + 12_345;
    let got = view.read(ino, at, 200_000).await?;
    let want = std::fs::read(fx.rootfs.join(&paths::LARGE_FILE[1..]))?;
    assert_eq!(&got[..], &want[at as usize..at as usize + 200_000]);
    Ok(())
}

/// The layer index files in a cache, split into (built here, published).
fn index_files(cache: &Path) -> (Vec<String>, Vec<String>) {
    let mut names: Vec<String> = std::fs::read_dir(cache.join("index"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let published = names
        .iter()
        .filter(|n| n.ends_with(".published.idx"))
        .cloned()
        .collect();
    let built = names
        .into_iter()
        .filter(|n| n.ends_with(".idx") && !n.ends_with(".published.idx"))
        .collect();
    (built, published)
}

/// `lazyboot index --push` with cache `a` (a prefetch plan stored there
/// first, so it is published too); returns the artifact digest.
fn index_and_push(p: &Pushed, a: &Path, plan: Option<&PrefetchPlan>) -> Result<String> {
    if let Some(plan) = plan {
        let cache = ChunkCache::open(a, 1 << 40)?;
        plan.store(&cache)?;
    }
    let (stdout, _) = ok(lazyboot(a, &["index", &p.image, "--push"]))?;
    assert!(stdout.contains("published"), "{stdout}");
    assert!(
        stdout.contains(&format!("fallback tag {}", p.fallback_tag())),
        "docker-registry 2.8 has no referrers API: {stdout}"
    );
    artifact_of(&stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_indexes_let_a_cold_server_skip_the_streaming_pass() -> Result<()> {
    if !common::require_root_and_tools(
        "pushed_indexes_let_a_cold_server_skip_the_streaming_pass",
        &[],
    ) {
        return Ok(());
    }
    let p = push_fixture("push/img")?;
    let tmp = tempfile::tempdir()?;
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let plan = PrefetchPlan::from_reads(
        &p.manifest,
        "node-1",
        [(p.layers[0].0.clone(), 0), (p.layers[0].0.clone(), 1)],
    );

    let artifact = index_and_push(&p, &a, Some(&plan))?;

    // The fallback tag lists the artifact, whose subject is the image.
    let index = p.fallback_index()?;
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let entries = index["manifests"].as_array().context("manifests")?;
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(entries[0]["digest"], artifact.as_str());
    assert_eq!(entries[0]["artifactType"], ARTIFACT_TYPE);
    assert_eq!(
        entries[0]["annotations"]["dev.lazyboot.index.version"],
        INDEX_VERSION.to_string()
    );
    let m = p.reg.get_manifest(&p.repo, &artifact)?;
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m["artifactType"], ARTIFACT_TYPE);
    assert_eq!(m["subject"]["digest"], p.manifest.as_str());
    assert_eq!(m["subject"]["size"], p.manifest_size);
    assert_eq!(
        m["subject"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    assert_eq!(m["config"]["digest"], Digest::of_bytes(b"{}").as_str());
    assert_eq!(
        p.reg.get_blob(&p.repo, Digest::of_bytes(b"{}").as_str())?,
        b"{}"
    );
    let blobs = m["layers"].as_array().context("layers")?;
    let indexed: Vec<&str> = blobs
        .iter()
        .filter(|l| l["mediaType"] == LAYER_INDEX_MT)
        .filter_map(|l| l["annotations"]["dev.lazyboot.layer.digest"].as_str())
        .collect();
    let layers: Vec<&str> = p.layers.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(indexed, layers);
    assert!(blobs
        .iter()
        .any(|l| l["mediaType"] == "application/vnd.lazyboot.prefetch-plan.v1+json"));

    // Pushing again changes nothing: no new artifact, no second entry.
    let (stdout, _) = ok(lazyboot(&a, &["index", &p.image, "--push"]))?;
    assert!(stdout.contains("already published"), "{stdout}");
    assert_eq!(artifact_of(&stdout)?, artifact);
    let again = p.fallback_index()?;
    assert_eq!(
        again["manifests"].as_array().map(Vec::len),
        Some(1),
        "{again}"
    );

    // A second server with an empty cache: indexes and plan from the
    // registry, and no streaming pass (which would leave every chunk of
    // every layer in the cache).
    let (_, stderr) = ok(lazyboot(&b, &["index", &p.image]))?;
    assert!(stderr.contains("using published indexes"), "{stderr}");
    assert_eq!(chunk_files(&b), 0, "a streaming pass happened");
    let (built, published) = index_files(&b);
    assert!(built.is_empty(), "{built:?}");
    assert_eq!(published, {
        let mut v: Vec<String> = p
            .layers
            .iter()
            .map(|l| published_cache_name(&l.0))
            .collect();
        v.sort();
        v
    });
    let cache_b = ChunkCache::open(&b, 1 << 40)?;
    assert_eq!(
        PrefetchPlan::load(&cache_b, &p.manifest),
        Some(plan.clone())
    );

    // The same through the library, counting bytes: opening costs the
    // artifact (about 1% of the data), reads fetch spans, and the bytes
    // are the image's.
    let reference: ImageRef = p.image.parse()?;
    let view = lazyboot::image::open(&reference, &view_options(&c), &Progress::hidden()).await?;
    let total = p.total_layer_bytes();
    let opened = view.fetch_stats();
    eprintln!("open: {opened:?} of {total} layer bytes");
    assert!(
        opened.bytes * 20 < total,
        "open fetched {opened:?} of {total}"
    );
    assert_eq!(chunk_files(&c), 0);
    assert_reads_right(&view).await?;
    let after = view.fetch_stats();
    eprintln!("after reads: {after:?}");
    assert!(
        after.bytes * 2 < total,
        "reads fetched {after:?} of {total}"
    );

    // Pinned by digest, the image trusts only its digest: it streams.
    let d = tempfile::tempdir()?;
    let pinned = p.reg.reference(&format!("{}@{}", p.repo, p.manifest));
    ok(lazyboot(d.path(), &["index", &pinned]))?;
    let (built, published) = index_files(d.path());
    assert_eq!((built.len(), published.len()), (p.layers.len(), 0));
    assert!(chunk_files(d.path()) > 0);
    Ok(())
}

/// Opens `image` with a fresh cache through the binary and then the
/// library: the published artifact must be refused (with `expect` in the
/// log), the layers streamed, and the bytes right.
async fn assert_refused_and_streamed(p: &Pushed, expect: &str) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let b = tmp.path().join("b");
    let (_, stderr) = ok(lazyboot(&b, &["index", &p.image]))?;
    assert!(
        stderr.contains(expect) && stderr.contains("indexing by streaming"),
        "expected {expect:?} in:\n{stderr}"
    );
    let (built, published) = index_files(&b);
    assert_eq!((built.len(), published.len()), (p.layers.len(), 0));
    assert!(chunk_files(&b) > 0, "the layers were streamed");
    let c = tmp.path().join("c");
    let reference: ImageRef = p.image.parse()?;
    let view = lazyboot::image::open(&reference, &view_options(&c), &Progress::hidden()).await?;
    assert!(
        view.fetch_stats().bytes >= p.total_layer_bytes(),
        "streamed every layer"
    );
    assert_reads_right(&view).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_index_blob_is_refused_and_the_layers_streamed() -> Result<()> {
    if !common::require_root_and_tools(
        "a_corrupted_index_blob_is_refused_and_the_layers_streamed",
        &[],
    ) {
        return Ok(());
    }
    let p = push_fixture("push/corrupt")?;
    let tmp = tempfile::tempdir()?;
    let artifact = index_and_push(&p, &tmp.path().join("a"), None)?;
    let m = p.reg.get_manifest(&p.repo, &artifact)?;
    let blob = m["layers"][0]["digest"]
        .as_str()
        .context("blob digest")?
        .to_string();
    // The registry now serves other bytes under the blob's digest.
    let path: PathBuf = p.reg.blob_path(&blob);
    let mut data = std::fs::read(&path)?;
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&path, &data)?;
    assert_refused_and_streamed(&p, &blob).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_artifact_with_lying_indexes_is_refused() -> Result<()> {
    if !common::require_root_and_tools("a_newer_artifact_with_lying_indexes_is_refused", &[]) {
        return Ok(());
    }
    let p = push_fixture("push/lying")?;
    let tmp = tempfile::tempdir()?;
    let a = tmp.path().join("a");
    index_and_push(&p, &a, None)?;
    let cache = ChunkCache::open(&a, 1 << 40)?;
    let index_bytes = |layer: &Digest| -> Result<Vec<u8>> {
        cache
            .load_index(&LayerIndex::cache_name(layer))
            .context("index built by index --push")
    };
    let (l0, l1) = (p.layers[0].0.clone(), p.layers[1].0.clone());
    let reference: ImageRef = p.image.parse()?;
    let (source, image) = Source::open(&reference, &RegistryOptions::default()).await?;

    // Each crafted artifact is pushed after the good one, so it is the
    // newest and the one a cold server picks. Its blobs match their
    // descriptors: the indexes themselves are what lies.
    let mut escaping = LayerIndex::decode(&index_bytes(&l0)?, &l0)?;
    escaping.entries[0].path = "../../etc/cron.d/evil".into();
    let lies: Vec<(&str, LayerIndexes, &str)> = vec![
        (
            // Layer 1's index published as layer 0's.
            "swapped",
            vec![
                (l0.clone(), index_bytes(&l1)?.into()),
                (l1.clone(), index_bytes(&l0)?.into()),
            ],
            "is for",
        ),
        (
            "escaping path",
            vec![(l0.clone(), escaping.encode()?.into())],
            "leaves the image",
        ),
    ];
    for (name, layer_indexes, expect) in lies {
        let outcome = source
            .push_published(
                &image,
                &Published {
                    index_version: INDEX_VERSION,
                    layer_indexes,
                    plan: None,
                },
            )
            .await?;
        assert!(!outcome.already_published, "{name}");
        eprintln!("{name}: pushed {}", outcome.artifact);
        assert_refused_and_streamed(&p, expect)
            .await
            .with_context(|| name.to_string())?;
    }
    let index = p.fallback_index()?;
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(3));
    Ok(())
}

#[test]
fn push_from_an_oci_layout_is_refused() -> Result<()> {
    if !common::require_root_and_tools("push_from_an_oci_layout_is_refused", &[]) {
        return Ok(());
    }
    let fx = shared_fixture()?;
    let tmp = tempfile::tempdir()?;
    let layout = format!("oci:{}:{}", fx.layout.display(), fx.tag);
    let out = lazyboot(tmp.path(), &["index", &layout, "--push"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--push publishes to a registry") && stderr.contains("OCI layout"),
        "{stderr}"
    );
    Ok(())
}

/// The layer holding `path` and where its data starts in that layer's
/// uncompressed tar stream, read from the pushed blobs themselves.
fn data_position(p: &Pushed, path: &str) -> Result<(Digest, u64, u64)> {
    for (layer, _) in &p.layers {
        let blob = p.reg.get_blob(&p.repo, layer.as_str())?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&blob[..]));
        for entry in tar.entries()? {
            let entry = entry?;
            let name = entry.path()?.to_string_lossy().into_owned();
            if name.trim_start_matches("./") == path {
                return Ok((layer.clone(), entry.raw_file_position(), entry.size()));
            }
        }
    }
    bail!("{path} is in no layer")
}

/// The number of zran checkpoints of `layer`'s index built in `cache`.
fn checkpoints_built(cache: &Path, layer: &Digest) -> Result<usize> {
    let c = ChunkCache::open(cache, 1 << 40)?;
    let bytes = c
        .load_index(&LayerIndex::cache_name(layer))
        .context("no index built")?;
    match LayerIndex::decode(&bytes, layer)?.detail {
        lazyboot::layer::index::IndexDetail::Gzip(z) => Ok(z.checkpoints.len()),
        _ => bail!("not a gzip layer"),
    }
}

/// Fetch statistics of reading `len` bytes of `path` at `offset` through a
/// view over cache `dir` (opened first, then counted from there).
async fn read_cost(p: &Pushed, dir: &Path, path: &str, offset: u64, len: u32) -> Result<u64> {
    let reference: ImageRef = p.image.parse()?;
    let view = lazyboot::image::open(&reference, &view_options(dir), &Progress::hidden()).await?;
    let ino = view.tree().resolve(path).context("resolve")?.ino;
    let before = view.fetch_stats();
    let got = view.read(ino, offset, len).await?;
    let want = std::fs::read(shared_fixture()?.rootfs.join(&path[1..]))?;
    assert_eq!(
        &got[..],
        &want[offset as usize..offset as usize + len as usize]
    );
    Ok(view.fetch_stats().bytes - before.bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_index_has_checkpoints_where_the_plan_reads() -> Result<()> {
    if !common::require_root_and_tools(
        "a_published_index_has_checkpoints_where_the_plan_reads",
        &[],
    ) {
        return Ok(());
    }
    const MIB: u64 = 1 << 20;
    const CHUNK: u64 = 256 << 10;
    let p = push_fixture("push/refine")?;
    let tmp = tempfile::tempdir()?;
    let (a, plain, c) = (
        tmp.path().join("a"),
        tmp.path().join("plain"),
        tmp.path().join("c"),
    );
    // A read 2.5 MiB past a checkpoint (they are about every 4 MiB of the
    // stream) inside the incompressible large file.
    let (layer, pos, size) = data_position(&p, &paths::LARGE_FILE[1..])?;
    let start = (pos + MIB).div_ceil(4 * MIB) * 4 * MIB + 5 * MIB / 2;
    assert!(start + CHUNK < pos + size, "the large file is too small");
    let plan = PrefetchPlan::from_reads(&p.manifest, "node-1", [(layer.clone(), start / CHUNK)]);

    // Without a plan: the streaming pass's checkpoints.
    ok(lazyboot(&a, &["index", &p.image]))?;
    let before = checkpoints_built(&a, &layer)?;
    std::fs::create_dir_all(plain.join("index"))?;
    for e in std::fs::read_dir(a.join("index"))? {
        let e = e?;
        std::fs::copy(e.path(), plain.join("index").join(e.file_name()))?;
    }
    // With it: one more, kept here and published.
    let artifact = index_and_push(&p, &a, Some(&plan))?;
    assert_eq!(checkpoints_built(&a, &layer)?, before + 1);
    let m = p.reg.get_manifest(&p.repo, &artifact)?;
    let blob = m["layers"]
        .as_array()
        .context("layers")?
        .iter()
        .find(|l| l["annotations"]["dev.lazyboot.layer.digest"] == layer.as_str())
        .context("no index of the layer")?;
    let published = p
        .reg
        .get_blob(&p.repo, blob["digest"].as_str().context("digest")?)?;
    match LayerIndex::decode(&published, &layer)?.detail {
        lazyboot::layer::index::IndexDetail::Gzip(z) => {
            assert_eq!(z.checkpoints.len(), before + 1)
        }
        _ => bail!("not a gzip index"),
    }
    // Publishing again adds nothing.
    let (stdout, _) = ok(lazyboot(&a, &["index", &p.image, "--push"]))?;
    assert!(stdout.contains("already published"), "{stdout}");

    // A cold server reading there: with the published index it fetches
    // from the new checkpoint, without it from the one 2.5 MiB before.
    let offset = start - pos;
    let refined = read_cost(&p, &c, paths::LARGE_FILE, offset, 4096).await?;
    let unrefined = read_cost(&p, &plain, paths::LARGE_FILE, offset, 4096).await?;
    eprintln!("read at {offset}: {refined} B with the refined index, {unrefined} B without");
    assert!(refined < MIB, "fetched {refined} B");
    assert!(unrefined > 2 * MIB, "fetched {unrefined} B");
    Ok(())
}
