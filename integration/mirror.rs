//! Several servers, one image: two `lazyboot serve` processes on networks
//! of their own (each a namespace with its node) boot one image from one
//! upstream registry through a pull-through mirror (Debian's
//! docker-registry with a `proxy` section), with the indexes published to
//! the upstream by `lazyboot index --push`. No server streams a layer: each
//! finds the published indexes through the mirror and fetches the spans its
//! node reads, and once the mirror holds the blobs the upstream can be gone.

mod common;

use anyhow::{bail, Context, Result};
use common::mount::lazyboot;
use common::nfsroot::{fixture_file, runnable, Lab, LabOptions, NodeSpec};
use common::{paths, shared_fixture, Registry};

const REPO: &str = "mirror/fixture:1";
const NODE: NodeSpec = NodeSpec::new("n", 10, "readonly");
/// What the node reads: small files of two layers.
const READS: [&str; 2] = [paths::TEXT_FILE, paths::DEEP_FILE];

/// `lazyboot_registry_received_bytes_total` of a server's `/metrics`.
fn registry_bytes(lab: &Lab) -> Result<u64> {
    let url = format!("http://{}:8080/metrics", lab.net.server_ip);
    let text = String::from_utf8(common::curl_get(&url, &[])?)?;
    let line = text
        .lines()
        .find(|l| l.starts_with("lazyboot_registry_received_bytes_total"))
        .with_context(|| format!("no registry byte counter in /metrics:\n{text}"))?;
    let value = line.rsplit(' ').next().unwrap_or_default();
    Ok(value.parse::<f64>().with_context(|| line.to_string())? as u64)
}

/// The image's layer blobs (digest, size), from the upstream's manifest.
fn layers(upstream: &Registry) -> Result<Vec<(String, u64)>> {
    let (repo, tag) = REPO.split_once(':').unwrap();
    let m = upstream.get_manifest(repo, tag)?;
    let layers = m["layers"].as_array().context("manifest without layers")?;
    layers
        .iter()
        .map(|l| {
            let digest = l["digest"].as_str().context("layer digest")?;
            Ok((
                digest.to_string(),
                l["size"].as_u64().context("layer size")?,
            ))
        })
        .collect()
}

/// One server with an empty cache, on its own network, serving the image
/// through the mirror to one node that reads [`READS`]: the bytes it took
/// from the registry.
fn boot_one(image: &str) -> Result<u64> {
    let lab = Lab::start_with(
        &[NODE],
        false,
        LabOptions {
            image: Some(image.to_string()),
            // Only what the node reads: no fetching of the rest behind it.
            server_lines: "background_fill = false\n",
            ..LabOptions::default()
        },
    )?;
    lab.prefer_source(NODE.last);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !lab.server.log().contains("image ready") {
        if std::time::Instant::now() > deadline {
            bail!("the image did not open:\n{}", lab.server.log());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for path in READS {
        let got = lab
            .cat(&format!("/nodes/{}{path}", NODE.name))
            .map_err(|e| anyhow::anyhow!("nfs-cat {path}: {e}"))?;
        if got != fixture_file(path) {
            bail!("{path}: the node read other bytes than the image's");
        }
    }
    let log = lab.server.log();
    if !log.contains("using published indexes") {
        bail!("the server did not find the published indexes through the mirror:\n{log}");
    }
    registry_bytes(&lab)
}

#[test]
fn two_servers_boot_one_image_through_a_pull_through_mirror() -> Result<()> {
    if !runnable("two_servers_boot_one_image_through_a_pull_through_mirror") {
        return Ok(());
    }
    let upstream = Registry::start()?;
    shared_fixture()?.push(&upstream, REPO)?;
    let publisher = tempfile::tempdir()?;
    let out = lazyboot(
        publisher.path(),
        &["index", &upstream.reference(REPO), "--push"],
    );
    if !out.status.success() {
        bail!(
            "index --push failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mirror = Registry::start_mirror(&upstream)?;
    let image = mirror.reference(REPO);
    let blobs = layers(&upstream)?;
    let layers: u64 = blobs.iter().map(|b| b.1).sum();
    // Prime the mirror: distribution's proxy answers a range of a blob it
    // does not hold yet with the whole blob (200), and stores it only if
    // that answer is read to its end.
    let (repo, _) = REPO.split_once(':').unwrap();
    for (digest, size) in &blobs {
        let got = mirror.get_blob(repo, digest)?;
        assert_eq!(got.len() as u64, *size, "{digest} through the mirror");
    }

    let first = boot_one(&image)?;
    let second = boot_one(&image)?;
    eprintln!("registry bytes: first server {first}, second {second}, layers {layers}");
    // Each server takes the manifests, the published indexes and the
    // checkpoint spans (a few MiB each) that hold what its node read: a
    // tenth of the layers at most, where a streaming pass takes all of them.
    for (which, bytes) in [("first", first), ("second", second)] {
        assert!(
            bytes * 10 < layers,
            "the {which} server took {bytes} bytes for {layers} bytes of layers"
        );
    }

    // The mirror answered both from what it pulled: stopping the upstream
    // does not stop a third server.
    let mut upstream = upstream;
    upstream.stop();
    let third = boot_one(&image)?;
    eprintln!("third server, upstream stopped: {third}");
    assert!(third * 10 < layers, "third server: {third} for {layers}");
    Ok(())
}
