//! Just enough of the OCI and Docker manifest formats to find an image's
//! config and layers, shared by the remote and the layout backends.
//!
//! Parsed by hand instead of with oci-client's types so that Docker schema2
//! documents, annotations and index platforms all come through one path, and
//! so that the layout backend does not depend on the HTTP client.

use crate::digest::Digest;
use crate::platform::Platform;
use std::collections::BTreeMap;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Everything we can use, in the order registries should prefer.
pub(crate) const ACCEPTED: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Marks buildkit's attestation manifests, which sit in indexes with a fake
/// `unknown/unknown` platform and must never be picked as the image.
pub(crate) const ATTESTATION_ANNOTATION: &str = "vnd.docker.reference.type";

/// Names a manifest inside an OCI layout's index.json.
pub(crate) const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Nested indexes are legal but rare; the bound stops a malicious loop.
pub(crate) const MAX_INDEX_DEPTH: usize = 4;

#[derive(Clone, Debug)]
pub(crate) struct Descriptor {
    pub(crate) media_type: String,
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) annotations: BTreeMap<String, String>,
    pub(crate) platform: Option<Platform>,
}

#[derive(Clone, Debug)]
pub(crate) struct ImageManifest {
    pub(crate) config: Descriptor,
    pub(crate) layers: Vec<Descriptor>,
}

#[derive(Clone, Debug)]
pub(crate) enum Parsed {
    Index(Vec<Descriptor>),
    Image(ImageManifest),
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(serde::Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl RawDescriptor {
    fn into_descriptor(self) -> Result<Descriptor, String> {
        let digest = Digest::parse(&self.digest).map_err(|e| e.to_string())?;
        let size = u64::try_from(self.size)
            .map_err(|_| format!("descriptor {digest} has negative size {}", self.size))?;
        Ok(Descriptor {
            media_type: self.media_type,
            digest,
            size,
            annotations: self.annotations.unwrap_or_default(),
            platform: self.platform.map(|p| Platform {
                os: p.os,
                architecture: p.architecture,
                variant: p.variant.filter(|v| !v.is_empty()),
            }),
        })
    }
}

/// Classifies and parses a manifest or index. The error is a reason only;
/// callers add which manifest it was.
pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
    match raw.schema_version {
        Some(2) => {}
        Some(1) => return Err("Docker schema 1 manifests are not supported".into()),
        Some(v) => return Err(format!("unsupported schemaVersion {v}")),
        None => return Err("missing schemaVersion".into()),
    }
    // The mediaType field is optional in OCI documents, so fall back to the
    // shape of the document when it is missing.
    let is_index = match raw.media_type.as_deref() {
        Some(OCI_INDEX) | Some(DOCKER_LIST) => true,
        Some(OCI_MANIFEST) | Some(DOCKER_MANIFEST) => false,
        Some(other) => return Err(format!("unsupported manifest media type {other:?}")),
        None => raw.manifests.is_some(),
    };
    if is_index {
        let entries = raw
            .manifests
            .ok_or("index has no \"manifests\" list")?
            .into_iter()
            .map(RawDescriptor::into_descriptor)
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Parsed::Index(entries));
    }
    let config = raw
        .config
        .ok_or("image manifest has no config")?
        .into_descriptor()?;
    let layers = raw
        .layers
        .unwrap_or_default()
        .into_iter()
        .map(RawDescriptor::into_descriptor)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Parsed::Image(ImageManifest { config, layers }))
}

fn is_attestation(d: &Descriptor) -> bool {
    d.annotations.contains_key(ATTESTATION_ANNOTATION)
}

/// Picks the index entry for `wanted`, or returns the platforms that were on
/// offer so the caller can say what to ask for instead.
pub(crate) fn choose<'a>(
    entries: &'a [Descriptor],
    wanted: &Platform,
) -> Result<&'a Descriptor, Vec<String>> {
    let mut best: Option<(u32, &Descriptor)> = None;
    for e in entries.iter().filter(|e| !is_attestation(e)) {
        let Some(p) = &e.platform else { continue };
        if let Some(rank) = wanted.match_rank(&p.os, &p.architecture, p.variant.as_deref()) {
            // Strictly greater keeps the first of equally good entries, as
            // the index order is the publisher's preference.
            if best.is_none_or(|(r, _)| rank > r) {
                best = Some((rank, e));
            }
        }
    }
    best.map(|(_, e)| e)
        .ok_or_else(|| available_platforms(entries))
}

pub(crate) fn available_platforms(entries: &[Descriptor]) -> Vec<String> {
    let mut out: Vec<String> = entries
        .iter()
        .filter(|e| !is_attestation(e))
        .map(|e| match &e.platform {
            Some(p) => p.to_string(),
            None => format!("(no platform: {})", e.digest.short()),
        })
        .collect();
    out.dedup();
    out
}

/// The platform recorded in an image config, for single-platform images.
pub(crate) fn config_platform(config: &[u8]) -> Option<Platform> {
    #[derive(serde::Deserialize)]
    struct Config {
        os: Option<String>,
        architecture: Option<String>,
        variant: Option<String>,
    }
    let c: Config = serde_json::from_slice(config).ok()?;
    Some(Platform {
        os: c.os.filter(|s| !s.is_empty())?,
        architecture: c.architecture.filter(|s| !s.is_empty())?,
        variant: c.variant.filter(|s| !s.is_empty()),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn desc_json(media_type: &str, data: &[u8], extra: &str) -> String {
        format!(
            r#"{{"mediaType":"{media_type}","digest":"{}","size":{}{extra}}}"#,
            Digest::of_bytes(data),
            data.len()
        )
    }

    pub(crate) fn index_entry(
        manifest: &[u8],
        platform: Option<&str>,
        attestation: bool,
    ) -> String {
        let mut extra = String::new();
        if let Some(p) = platform {
            let p: Platform = p.parse().unwrap();
            let variant = p
                .variant
                .map(|v| format!(r#","variant":"{v}""#))
                .unwrap_or_default();
            extra.push_str(&format!(
                r#","platform":{{"os":"{}","architecture":"{}"{variant}}}"#,
                p.os, p.architecture
            ));
        }
        if attestation {
            extra.push_str(&format!(
                r#","annotations":{{"{ATTESTATION_ANNOTATION}":"attestation-manifest"}}"#
            ));
        }
        desc_json(OCI_MANIFEST, manifest, &extra)
    }

    #[test]
    fn parses_oci_and_docker_manifests() {
        let layer = desc_json(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            b"layer",
            r#","annotations":{"a":"b"}"#,
        );
        for mt in [OCI_MANIFEST, DOCKER_MANIFEST] {
            let doc = format!(
                r#"{{"schemaVersion":2,"mediaType":"{mt}","config":{},"layers":[{layer}]}}"#,
                desc_json("application/vnd.oci.image.config.v1+json", b"cfg", "")
            );
            let Parsed::Image(m) = parse(doc.as_bytes()).unwrap() else {
                panic!("not an image")
            };
            assert_eq!(m.config.digest, Digest::of_bytes(b"cfg"));
            assert_eq!(m.layers.len(), 1);
            assert_eq!(m.layers[0].size, 5);
            assert_eq!(m.layers[0].annotations["a"], "b");
        }
        // No mediaType: recognised by shape.
        let doc = format!(
            r#"{{"schemaVersion":2,"config":{},"layers":[]}}"#,
            desc_json("x", b"c", "")
        );
        assert!(matches!(parse(doc.as_bytes()).unwrap(), Parsed::Image(_)));
    }

    #[test]
    fn parses_indexes_and_lists() {
        let e = index_entry(b"m1", Some("linux/arm/v7"), false);
        for mt in [OCI_INDEX, DOCKER_LIST] {
            let doc = format!(r#"{{"schemaVersion":2,"mediaType":"{mt}","manifests":[{e}]}}"#);
            let Parsed::Index(es) = parse(doc.as_bytes()).unwrap() else {
                panic!("not an index")
            };
            assert_eq!(es[0].platform, Some("linux/arm/v7".parse().unwrap()));
        }
        let doc = format!(r#"{{"schemaVersion":2,"manifests":[{e}]}}"#);
        assert!(matches!(parse(doc.as_bytes()).unwrap(), Parsed::Index(_)));
    }

    #[test]
    fn rejects_what_it_cannot_use() {
        assert!(parse(b"not json")
            .unwrap_err()
            .contains("not a valid manifest"));
        assert!(parse(br#"{"schemaVersion":1}"#)
            .unwrap_err()
            .contains("schema 1"));
        assert!(parse(br#"{"schemaVersion":2}"#)
            .unwrap_err()
            .contains("no config"));
        let e = parse(br#"{"schemaVersion":2,"mediaType":"application/vnd.cncf.helm.chart"}"#)
            .unwrap_err();
        assert!(e.contains("unsupported manifest media type"), "{e}");
        let bad_digest =
            r#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha512:00","size":1}]}"#;
        assert!(parse(bad_digest.as_bytes())
            .unwrap_err()
            .contains("invalid digest"));
        let neg = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"x","digest":"{}","size":-1}}]}}"#,
            Digest::of_bytes(b"")
        );
        assert!(parse(neg.as_bytes()).unwrap_err().contains("negative size"));
    }

    #[test]
    fn choose_skips_attestations_and_prefers_exact_variants() {
        let doc = format!(
            r#"{{"schemaVersion":2,"manifests":[{},{},{},{},{}]}}"#,
            index_entry(b"amd", Some("linux/amd64"), false),
            index_entry(b"att", Some("unknown/unknown"), true),
            index_entry(b"v6", Some("linux/arm/v6"), false),
            index_entry(b"v7", Some("linux/arm/v7"), false),
            index_entry(b"arm64", Some("linux/arm64/v8"), false),
        );
        let Parsed::Index(es) = parse(doc.as_bytes()).unwrap() else {
            panic!()
        };
        let pick = |p: &str| choose(&es, &p.parse().unwrap()).map(|e| e.digest.clone());
        assert_eq!(pick("linux/amd64").unwrap(), Digest::of_bytes(b"amd"));
        assert_eq!(pick("linux/arm").unwrap(), Digest::of_bytes(b"v7"));
        assert_eq!(pick("linux/arm/v6").unwrap(), Digest::of_bytes(b"v6"));
        assert_eq!(pick("linux/arm64").unwrap(), Digest::of_bytes(b"arm64"));
        let avail = pick("linux/s390x").unwrap_err();
        assert_eq!(
            avail,
            [
                "linux/amd64",
                "linux/arm/v6",
                "linux/arm/v7",
                "linux/arm64/v8"
            ]
        );
        // The attestation's unknown/unknown platform is never chosen.
        assert!(pick("unknown/unknown").is_err());
    }

    #[test]
    fn reads_platform_from_config() {
        let p = config_platform(br#"{"os":"linux","architecture":"arm","variant":"v7"}"#);
        assert_eq!(p, Some("linux/arm/v7".parse().unwrap()));
        assert_eq!(config_platform(br#"{"architecture":"amd64"}"#), None);
        assert_eq!(config_platform(b"[]"), None);
    }
}
