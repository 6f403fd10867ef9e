use super::fake::FakeRegistry;
use super::manifest::tests::{desc_json, index_entry};
use super::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use super::*;
use crate::digest::Digest;
use crate::platform::Platform;
use crate::reference::ImageRef;
use futures_util::StreamExt;
use rand::RngCore;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

/// Serialises tests that change process environment variables (async
/// tests hold it across awaits, hence tokio's mutex).
pub(crate) static ENV_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LAYER_MT: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

fn opts(platform: &str) -> RegistryOptions {
    RegistryOptions {
        platform: platform.parse().unwrap(),
        timeout: Duration::from_secs(5),
        retries: 3,
        ..Default::default()
    }
}

fn image_manifest(media_type: &str, config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| desc_json(LAYER_MT, l, r#","annotations":{"k":"v"}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{},"layers":[{}]}}"#,
        desc_json("application/vnd.oci.image.config.v1+json", config, ""),
        layers.join(",")
    )
    .into_bytes()
}

fn config_for(platform: &str) -> Vec<u8> {
    let p: Platform = platform.parse().unwrap();
    let variant = p
        .variant
        .map(|v| format!(r#","variant":"{v}""#))
        .unwrap_or_default();
    format!(
        r#"{{"os":"{}","architecture":"{}"{variant},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#,
        p.os, p.architecture
    )
    .into_bytes()
}

struct Fixture {
    reg: FakeRegistry,
    layer: Vec<u8>,
    layer_digest: Digest,
    manifest_digest: Digest,
}

/// A single-platform linux/amd64 image with one 64 KiB layer, tagged `t`.
async fn single_image() -> Fixture {
    let reg = FakeRegistry::start().await;
    let layer = random_bytes(64 * 1024);
    let layer_digest = reg.add_blob(&layer);
    let config = config_for("linux/amd64");
    reg.add_blob(&config);
    let m = image_manifest(OCI_MANIFEST, &config, &[&layer]);
    let manifest_digest = reg.add_manifest(Some("t"), OCI_MANIFEST, &m);
    Fixture {
        reg,
        layer,
        layer_digest,
        manifest_digest,
    }
}

fn reference(reg: &FakeRegistry, rest: &str) -> ImageRef {
    format!("{}/test/img{rest}", reg.host()).parse().unwrap()
}

async fn open_fixture(f: &Fixture, o: &RegistryOptions) -> (Source, ResolvedImage) {
    Source::open(&reference(&f.reg, ":t"), o).await.unwrap()
}

#[tokio::test]
async fn single_platform_image_by_tag_and_digest() {
    let f = single_image().await;
    let (src, img) = open_fixture(&f, &opts("linux/amd64")).await;
    assert_eq!(img.reference, format!("{}/test/img:t", f.reg.host()));
    assert_eq!(img.manifest_digest, f.manifest_digest);
    assert_eq!(img.platform, "linux/amd64".parse().unwrap());
    assert_eq!(img.layers.len(), 1);
    assert_eq!(img.layers[0].digest, f.layer_digest);
    assert_eq!(img.layers[0].size, 64 * 1024);
    assert_eq!(img.layers[0].media_type, LAYER_MT);
    assert_eq!(img.layers[0].annotations["k"], "v");
    assert_eq!(src.location(), format!("{}/test/img", f.reg.host()));
    // Manifest and config were fetched and counted.
    let st = src.stats();
    assert!(st.requests >= 2 && st.bytes > 0, "{st:?}");

    let by_digest = reference(&f.reg, &format!("@{}", f.manifest_digest));
    let (_, img2) = Source::open(&by_digest, &opts("linux/amd64"))
        .await
        .unwrap();
    assert_eq!(img2.manifest_digest, f.manifest_digest);
    assert_eq!(img2.layers[0].digest, f.layer_digest);
    // The config says what the image is, even if another platform was asked for.
    let (_, img3) = open_fixture(&f, &opts("linux/arm64")).await;
    assert_eq!(img3.platform, "linux/amd64".parse().unwrap());
    assert!(serde_json::to_string(&img)
        .unwrap()
        .contains("manifest_digest"));
}

#[tokio::test]
async fn unknown_tag_is_a_clear_not_found() {
    let f = single_image().await;
    let e = Source::open(&reference(&f.reg, ":nope"), &opts("linux/amd64"))
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("test/img") && msg.contains("\"nope\"") && msg.contains("HTTP 404"),
        "{msg}"
    );
    // Not retried: the probe, then exactly one manifest request.
    assert!(f.reg.state().blob_ranges.is_empty());
}

#[tokio::test]
async fn index_picks_platform_and_skips_attestations() {
    for (index_mt, manifest_mt) in [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)] {
        let reg = FakeRegistry::start().await;
        let mut digests = HashMap::new();
        let mut entries = Vec::new();
        for p in ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"] {
            let layer = random_bytes(100);
            reg.add_blob(&layer);
            let config = config_for(p);
            reg.add_blob(&config);
            let m = image_manifest(manifest_mt, &config, &[&layer]);
            let d = reg.add_manifest(None, manifest_mt, &m);
            digests.insert(p, (d, Digest::of_bytes(&layer)));
            entries.push(index_entry(&m, Some(p), false).replace(OCI_MANIFEST, manifest_mt));
        }
        // An attestation listed first must not be chosen even for unknown/unknown.
        let att = image_manifest(OCI_MANIFEST, b"{}", &[]);
        reg.add_manifest(None, OCI_MANIFEST, &att);
        entries.insert(0, index_entry(&att, Some("unknown/unknown"), true));
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{index_mt}","manifests":[{}]}}"#,
            entries.join(",")
        );
        let index_digest = reg.add_manifest(Some("multi"), index_mt, index.as_bytes());

        let r = reference(&reg, ":multi");
        let (src, img) = Source::open(&r, &opts("linux/arm64")).await.unwrap();
        let (want_m, want_l) = &digests["linux/arm64/v8"];
        assert_eq!(&img.manifest_digest, want_m);
        assert_eq!(&img.layers[0].digest, want_l);
        assert_eq!(img.platform, "linux/arm64/v8".parse().unwrap());
        // Index + child manifest; no config needed, the index named the platform.
        assert_eq!(src.stats().requests, 3, "probe, index, manifest");

        let (_, img) = Source::open(&r, &opts("linux/arm")).await.unwrap();
        assert_eq!(img.manifest_digest, digests["linux/arm/v7"].0);

        let by_digest = reference(&reg, &format!("@{index_digest}"));
        let (_, img) = Source::open(&by_digest, &opts("linux/amd64"))
            .await
            .unwrap();
        assert_eq!(img.manifest_digest, digests["linux/amd64"].0);

        let e = Source::open(&r, &opts("linux/s390x")).await.unwrap_err();
        match &e {
            RegistryError::NoMatchingPlatform { available, .. } => {
                assert_eq!(
                    available,
                    &["linux/amd64", "linux/arm64/v8", "linux/arm/v7"]
                )
            }
            other => panic!("{other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("linux/s390x") && msg.contains("linux/arm/v7"),
            "{msg}"
        );
    }
}

#[tokio::test]
async fn manifests_must_match_their_digests() {
    let reg = FakeRegistry::start().await;
    let config = config_for("linux/amd64");
    reg.add_blob(&config);
    let good = image_manifest(OCI_MANIFEST, &config, &[]);
    let evil = image_manifest(OCI_MANIFEST, &config, &[b"extra"]);
    let good_digest = Digest::of_bytes(&good);
    // The registry serves other bytes under the digest the index names.
    reg.state()
        .manifests
        .insert(good_digest.to_string(), (OCI_MANIFEST.into(), evil.clone()));
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        index_entry(&good, Some("linux/amd64"), false)
    );
    reg.add_manifest(Some("idx"), OCI_INDEX, index.as_bytes());

    let e = Source::open(&reference(&reg, ":idx"), &opts("linux/amd64"))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e:?}");
    let e = Source::open(
        &reference(&reg, &format!("@{good_digest}")),
        &opts("linux/amd64"),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains(good_digest.as_str()), "{e}");
}

#[tokio::test]
async fn fetch_range_is_one_range_request() {
    let f = single_image().await;
    let (src, img) = open_fixture(&f, &opts("linux/amd64")).await;
    let before = src.stats();
    let got = src
        .fetch_range(&img.layers[0].digest, 1000..1100)
        .await
        .unwrap();
    assert_eq!(&got[..], &f.layer[1000..1100]);
    let after = src.stats();
    assert_eq!(after.requests - before.requests, 1);
    assert_eq!(after.bytes - before.bytes, 100);
    let ranges = f.reg.state().blob_ranges.clone();
    assert_eq!(ranges.last().unwrap().as_deref(), Some("bytes=1000-1099"));
    // Empty ranges cost nothing; the last byte is reachable.
    assert!(src
        .fetch_range(&f.layer_digest, 5..5)
        .await
        .unwrap()
        .is_empty());
    let end = f.layer.len() as u64;
    let last = src
        .fetch_range(&f.layer_digest, end - 1..end)
        .await
        .unwrap();
    assert_eq!(last[0], f.layer[f.layer.len() - 1]);
}

#[tokio::test]
async fn fetch_range_when_registry_ignores_range() {
    let f = single_image().await;
    let (src, _) = open_fixture(&f, &opts("linux/amd64")).await;
    f.reg.state().ignore_range = true;
    let before = src.stats();
    let got = src
        .fetch_range(&f.layer_digest, 30_000..30_500)
        .await
        .unwrap();
    assert_eq!(&got[..], &f.layer[30_000..30_500]);
    let after = src.stats();
    assert_eq!(after.requests - before.requests, 1);
    // Everything up to the range end crossed the wire and is counted.
    assert!(after.bytes - before.bytes >= 30_500, "{after:?}");
    let mut s = src.stream(&f.layer_digest, 60_000).await.unwrap();
    let mut tail = Vec::new();
    while let Some(c) = s.next().await {
        tail.extend_from_slice(&c.unwrap());
    }
    assert_eq!(tail, &f.layer[60_000..]);
}

#[tokio::test]
async fn retries_server_errors_but_not_client_errors() {
    let f = single_image().await;
    let (src, _) = open_fixture(&f, &opts("linux/amd64")).await;
    f.reg.state().blob_ranges.clear();
    f.reg.state().fail_blobs.extend([503, 500]);
    let got = src.fetch_range(&f.layer_digest, 0..10).await.unwrap();
    assert_eq!(&got[..], &f.layer[..10]);
    assert_eq!(f.reg.state().blob_ranges.len(), 3);

    f.reg.state().blob_ranges.clear();
    f.reg.state().fail_blobs.push_back(403);
    let e = src.fetch_range(&f.layer_digest, 0..10).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::Denied { status: 403, .. }),
        "{e:?}"
    );
    assert_eq!(f.reg.state().blob_ranges.len(), 1);
    assert_eq!(e.http_status(), Some(403));

    let missing = Digest::of_bytes(b"not there");
    let e = src.fetch_range(&missing, 0..10).await.unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    assert!(e.to_string().contains(missing.as_str()), "{e}");
    assert_eq!(f.reg.state().blob_ranges.len(), 2);
}

#[tokio::test]
async fn anonymous_bearer_token_flow() {
    let f = single_image().await;
    f.reg.state().bearer = true;
    let (src, _) = open_fixture(&f, &opts("linux/amd64")).await;
    let got = src.fetch_range(&f.layer_digest, 10..20).await.unwrap();
    assert_eq!(&got[..], &f.layer[10..20]);
    let (tokens, probes) = {
        let st = f.reg.state();
        (st.token_requests, st.probes)
    };
    assert!(tokens >= 1);
    // With a cached token, blob requests need no extra round trips.
    src.fetch_range(&f.layer_digest, 20..30).await.unwrap();
    assert_eq!(f.reg.state().probes, probes);
}

#[tokio::test]
async fn a_token_revoked_before_its_expiry_is_renewed() {
    let f = single_image().await;
    f.reg.state().bearer = true;
    let (src, _) = open_fixture(&f, &opts("linux/amd64")).await;
    src.fetch_range(&f.layer_digest, 0..10).await.unwrap();
    let before = f.reg.state().token_requests;
    f.reg.state().token_generation += 1;
    let got = src.fetch_range(&f.layer_digest, 10..20).await.unwrap();
    assert_eq!(&got[..], &f.layer[10..20]);
    assert_eq!(f.reg.state().token_requests, before + 1);
    // A registry that keeps refusing is a clear error, not a loop.
    f.reg.state().fail_blobs.extend([401, 401]);
    let e = src.fetch_range(&f.layer_digest, 0..10).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::Denied { status: 401, .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn the_wait_a_busy_registry_asks_for_is_kept() {
    let f = single_image().await;
    let (src, _) = open_fixture(&f, &opts("linux/amd64")).await;
    f.reg.state().retry_after = Some(2);
    f.reg.state().fail_blobs.extend([429, 503]);
    let start = std::time::Instant::now();
    let got = src.fetch_range(&f.layer_digest, 0..10).await.unwrap();
    assert_eq!(&got[..], &f.layer[..10]);
    // Two waits of at least the 2 s asked for (the backoff alone waits
    // under a second for two retries).
    assert!(
        start.elapsed() >= std::time::Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn no_probe_per_request_when_registry_needs_no_auth() {
    let f = single_image().await;
    let (src, _) = open_fixture(&f, &opts("linux/amd64")).await;
    let probes = f.reg.state().probes;
    for i in 0..5 {
        src.fetch_range(&f.layer_digest, i..i + 1).await.unwrap();
    }
    assert_eq!(f.reg.state().probes, probes);
}

#[tokio::test]
async fn credentials_from_auth_file_reach_the_token_server() {
    let f = single_image().await;
    {
        let mut st = f.reg.state();
        st.bearer = true;
        st.token_credentials = Some("alice:s3cret".into());
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.json");
    let write = |cred: &str| {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD.encode(cred);
        let json = format!(r#"{{"auths":{{"{}":{{"auth":"{b}"}}}}}}"#, f.reg.host());
        std::fs::write(&file, json).unwrap();
    };
    let (good, bad) = {
        let _guard = ENV_LOCK.lock().await;
        let old = std::env::var_os("REGISTRY_AUTH_FILE");
        std::env::set_var("REGISTRY_AUTH_FILE", &file);
        write("alice:s3cret");
        let good = Source::open(&reference(&f.reg, ":t"), &opts("linux/amd64")).await;
        write("alice:wrong");
        let bad = Source::open(&reference(&f.reg, ":t"), &opts("linux/amd64")).await;
        match old {
            Some(v) => std::env::set_var("REGISTRY_AUTH_FILE", v),
            None => std::env::remove_var("REGISTRY_AUTH_FILE"),
        }
        (good, bad)
    };
    let (src, _) = good.unwrap();
    let got = src.fetch_range(&f.layer_digest, 0..4).await.unwrap();
    assert_eq!(&got[..], &f.layer[..4]);
    let e = bad.unwrap_err();
    assert_eq!(e.http_status(), Some(401), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("access denied") && msg.contains(&file.display().to_string()),
        "{msg}"
    );
}

#[tokio::test]
async fn gives_up_after_the_configured_retries() {
    let f = single_image().await;
    let mut o = opts("linux/amd64");
    o.retries = 2;
    let (src, _) = open_fixture(&f, &o).await;
    f.reg.state().blob_ranges.clear();
    f.reg.state().fail_blobs.extend([500; 5]);
    let e = src.fetch_range(&f.layer_digest, 0..10).await.unwrap_err();
    assert_eq!(e.http_status(), Some(500));
    assert!(e.to_string().contains("after 3 attempt(s)"), "{e}");
    assert_eq!(f.reg.state().blob_ranges.len(), 3);
}

#[tokio::test]
async fn timeouts_are_retried() {
    let f = single_image().await;
    let mut o = opts("linux/amd64");
    o.timeout = Duration::from_millis(300);
    let (src, _) = open_fixture(&f, &o).await;
    f.reg.state().stall_blobs = 1;
    let got = src.fetch_range(&f.layer_digest, 7..9).await.unwrap();
    assert_eq!(&got[..], &f.layer[7..9]);

    o.retries = 0;
    let (src, _) = open_fixture(&f, &o).await;
    f.reg.state().stall_blobs = 1;
    let e = src.fetch_range(&f.layer_digest, 7..9).await.unwrap_err();
    assert!(matches!(e, RegistryError::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains("300ms"), "{e}");
}

#[tokio::test]
async fn out_of_bounds_ranges_are_rejected_without_a_request() {
    let f = single_image().await;
    let (src, _) = open_fixture(&f, &opts("linux/amd64")).await;
    let before = f.reg.state().blob_ranges.len();
    let size = f.layer.len() as u64;
    for r in [size - 1..size + 1, Range { start: 10, end: 5 }] {
        let e = src.fetch_range(&f.layer_digest, r).await.unwrap_err();
        assert!(matches!(e, RegistryError::InvalidRange { .. }), "{e:?}");
    }
    assert!(src.stream(&f.layer_digest, size + 1).await.is_err());
    assert!(src
        .stream(&f.layer_digest, size)
        .await
        .unwrap()
        .next()
        .await
        .is_none());
    assert_eq!(f.reg.state().blob_ranges.len(), before);
}

#[tokio::test]
async fn stream_resumes_after_dropped_connections() {
    let f = single_image().await;
    let (src, _) = open_fixture(&f, &opts("linux/amd64")).await;
    f.reg.state().cut_after = Some((20_000, 2));
    let before = src.stats();
    let mut s = src.stream(&f.layer_digest, 0).await.unwrap();
    let mut h = Sha256::new();
    let mut n = 0;
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        n += c.len();
        h.update(&c);
    }
    assert_eq!(n, f.layer.len());
    assert_eq!(Digest::from_sha256(h.finalize().into()), f.layer_digest);
    let ranges = f.reg.state().blob_ranges.clone();
    let tail: Vec<_> = ranges[ranges.len() - 3..]
        .iter()
        .map(|r| r.clone().unwrap())
        .collect();
    assert_eq!(tail, ["bytes=0-", "bytes=20000-", "bytes=40000-"]);
    let after = src.stats();
    assert_eq!(after.requests - before.requests, 3);
    assert_eq!(after.bytes - before.bytes, f.layer.len() as u64);
}

#[tokio::test]
async fn stream_gives_up_when_drops_persist() {
    let f = single_image().await;
    let mut o = opts("linux/amd64");
    o.retries = 1;
    let (src, _) = open_fixture(&f, &o).await;
    // Every response dies before delivering anything.
    f.reg.state().cut_after = Some((0, 100));
    let mut s = src.stream(&f.layer_digest, 0).await.unwrap();
    let mut last = None;
    while let Some(c) = s.next().await {
        last = Some(c);
    }
    let e = last.unwrap().unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(e.to_string().contains("after 2 attempt(s)"), "{e}");
}

#[tokio::test]
async fn fetch_blob_checks_the_digest() {
    let f = single_image().await;
    let (src, img) = open_fixture(&f, &opts("linux/amd64")).await;
    let config = src.fetch_blob(&img.config_digest).await.unwrap();
    assert_eq!(Digest::of_bytes(&config), img.config_digest);
    let mut tampered = f.layer.clone();
    tampered[12_345] ^= 1;
    f.reg
        .state()
        .blobs
        .insert(f.layer_digest.to_string(), tampered);
    let e = src.fetch_blob(&f.layer_digest).await.unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e:?}");
    // A blob shorter than its descriptor is reported as such, not retried.
    f.reg
        .state()
        .blobs
        .insert(f.layer_digest.to_string(), f.layer[..1000].to_vec());
    f.reg.state().blob_ranges.clear();
    let e = src.fetch_blob(&f.layer_digest).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::ShortBody { got: 1000, .. }),
        "{e:?}"
    );
    assert_eq!(f.reg.state().blob_ranges.len(), 1);
}

#[tokio::test]
async fn layout_source_selects_by_tag_and_reads_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let blobs = root.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = Digest::of_bytes(data);
        std::fs::write(blobs.join(d.hex()), data).unwrap();
        d
    };
    let layer = random_bytes(300_000);
    let layer_digest = put(&layer);
    let config = config_for("linux/arm64");
    put(&config);
    let m = image_manifest(OCI_MANIFEST, &config, &[&layer]);
    let md = put(&m);
    let other = image_manifest(OCI_MANIFEST, &config, &[]);
    put(&other);
    let tagged = |data: &[u8], tag: &str| {
        desc_json(
            OCI_MANIFEST,
            data,
            &format!(r#","annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}"#),
        )
    };
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{},{}]}}"#,
        tagged(&m, "t"),
        tagged(&other, "other")
    );
    std::fs::write(root.join("index.json"), &index).unwrap();
    std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();

    let r: ImageRef = format!("oci:{}:t", root.display()).parse().unwrap();
    let (src, img) = Source::open(&r, &opts("linux/amd64")).await.unwrap();
    assert_eq!(img.manifest_digest, md);
    assert_eq!(img.platform, "linux/arm64".parse().unwrap());
    assert_eq!(img.reference, format!("oci:{}:t", root.display()));
    let before = src.stats();
    let got = src
        .fetch_range(&layer_digest, 100_000..150_000)
        .await
        .unwrap();
    assert_eq!(&got[..], &layer[100_000..150_000]);
    let after = src.stats();
    assert_eq!(
        (after.requests - before.requests, after.bytes - before.bytes),
        (1, 50_000)
    );
    let mut s = src.stream(&layer_digest, 1).await.unwrap();
    let mut all = Vec::new();
    while let Some(c) = s.next().await {
        all.extend_from_slice(&c.unwrap());
    }
    assert_eq!(all, &layer[1..]);
    assert_eq!(src.stats().bytes - after.bytes, layer.len() as u64 - 1);

    // Without a tag, two entries are ambiguous; a wrong tag lists the real ones.
    let r: ImageRef = format!("oci:{}", root.display()).parse().unwrap();
    let e = Source::open(&r, &opts("linux/amd64")).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::LayoutAmbiguous { count: 2, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("t, other"), "{e}");
    let r: ImageRef = format!("oci:{}:nope", root.display()).parse().unwrap();
    let e = Source::open(&r, &opts("linux/amd64")).await.unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    assert!(
        e.to_string().contains("\"nope\"") && e.to_string().contains("t, other"),
        "{e}"
    );

    // A single entry needs no tag; a missing blob is a clear not-found.
    std::fs::write(
        root.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, tagged(&m, "t")),
    )
    .unwrap();
    let (src, img) = Source::open(&r_untagged(root), &opts("linux/amd64"))
        .await
        .unwrap();
    assert_eq!(img.manifest_digest, md);
    std::fs::remove_file(blobs.join(layer_digest.hex())).unwrap();
    let e = src.fetch_range(&layer_digest, 0..1).await.unwrap_err();
    assert!(
        e.is_not_found() && e.to_string().contains(layer_digest.as_str()),
        "{e}"
    );

    let e = Source::open(&r_untagged(&root.join("missing")), &opts("linux/amd64"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not an OCI image layout"), "{e}");
}

fn r_untagged(dir: &std::path::Path) -> ImageRef {
    format!("oci:{}", dir.display()).parse().unwrap()
}

#[test]
fn errors_are_send_sync_static() {
    fn check<T: Send + Sync + 'static + std::error::Error>() {}
    check::<RegistryError>();
    fn clone_send<T: Clone + Send + Sync>() {}
    clone_send::<Source>();
    let o = RegistryOptions::default();
    assert_eq!(o.platform, Platform::host());
    assert_eq!((o.timeout, o.retries), (Duration::from_secs(30), 4));
    assert!(o.insecure_registries.is_empty());
}

// ---- against a real registry, when the tools are installed ----

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
}

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills the registry however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn registry_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let req = format!("GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    s.write_all(req.as_bytes()).is_ok()
        && s.read_to_string(&mut out).is_ok()
        && out.starts_with("HTTP/1.1 200")
}

/// Builds a one-layer image with umoci, pushes it with skopeo to a real
/// docker-registry on loopback, and reads it back both from there and
/// from the layout directory.
#[test]
fn real_registry_and_layout_end_to_end() {
    let missing: Vec<_> = ["docker-registry", "skopeo", "umoci"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        eprintln!("SKIPPED real_registry_and_layout_end_to_end: {missing:?} not installed");
        return;
    }
    use std::process::Command;
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("img");
    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout));
    run(Command::new("umoci")
        .args(["new", "--image"])
        .arg(format!("{}:t", layout.display())));
    let mut unpack = Command::new("umoci");
    unpack.arg("unpack");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        unpack.arg("--rootless");
    }
    run(unpack
        .arg("--image")
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle));
    // Random content keeps the gzip layer about as large as the file.
    std::fs::write(bundle.join("rootfs/data.bin"), random_bytes(1_500_000)).unwrap();
    std::fs::write(bundle.join("rootfs/hello.txt"), "hello\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle));

    let port = free_port();
    let storage = tmp.path().join("storage");
    let config = tmp.path().join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        ),
    )
    .unwrap();
    let _registry = KillOnDrop(
        Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !registry_answers(port) {
        assert!(
            std::time::Instant::now() < deadline,
            "registry did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let host = format!("127.0.0.1:{port}");
    run(Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:t", layout.display()))
        .arg(format!("docker://{host}/test/img:t")));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let o = RegistryOptions::default();
        let remote: ImageRef = format!("{host}/test/img:t").parse().unwrap();
        let local: ImageRef = format!("oci:{}:t", layout.display()).parse().unwrap();
        let (rsrc, rimg) = Source::open(&remote, &o).await.unwrap();
        let (lsrc, limg) = Source::open(&local, &o).await.unwrap();
        assert_eq!(rimg.layers.len(), 1);
        assert_eq!(rimg.manifest_digest, limg.manifest_digest);
        assert_eq!(rimg.config_digest, limg.config_digest);
        assert_eq!(rimg.layers, limg.layers);
        assert_eq!(rimg.platform, limg.platform);
        let layer = rimg.layers[0].clone();
        assert!(layer.size > 1_000_000, "{layer:?}");
        let on_disk = std::fs::read(layout.join("blobs/sha256").join(layer.digest.hex())).unwrap();

        let by_digest: ImageRef = format!("{host}/test/img@{}", rimg.manifest_digest)
            .parse()
            .unwrap();
        let (_, dimg) = Source::open(&by_digest, &o).await.unwrap();
        assert_eq!(dimg.layers, rimg.layers);

        let mid = layer.size / 2;
        for src in [&rsrc, &lsrc] {
            let before = src.stats();
            let got = src
                .fetch_range(&layer.digest, mid..mid + 4096)
                .await
                .unwrap();
            assert_eq!(
                &got[..],
                &on_disk[mid as usize..mid as usize + 4096],
                "{src:?}"
            );
            let after = src.stats();
            assert_eq!(after.requests - before.requests, 1, "{src:?}");
            assert_eq!(after.bytes - before.bytes, 4096, "{src:?}");

            let mut s = src.stream(&layer.digest, 0).await.unwrap();
            let mut h = Sha256::new();
            while let Some(c) = s.next().await {
                h.update(c.unwrap());
            }
            assert_eq!(Digest::from_sha256(h.finalize().into()), layer.digest);
            assert_eq!(src.stats().bytes - after.bytes, layer.size, "{src:?}");
            let cfg = src.fetch_blob(&rimg.config_digest).await.unwrap();
            assert!(std::str::from_utf8(&cfg).unwrap().contains("\"os\""));
        }

        let wrong: ImageRef = format!("{host}/test/img:nope").parse().unwrap();
        let e = Source::open(&wrong, &o).await.unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
        assert!(e.to_string().contains("HTTP 404"), "{e}");
        let wrong: ImageRef = format!("oci:{}:nope", layout.display()).parse().unwrap();
        let e = Source::open(&wrong, &o).await.unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
        assert!(e.to_string().contains("available tags: t"), "{e}");
    });
}
