//! lazyboot's indexes published beside an image, as an OCI artifact whose
//! `subject` is the image manifest (`lazyboot index IMAGE --push`), and found
//! again through the OCI referrers API, or through the referrers tag schema
//! (`sha256-<hex>`) on registries without it (distribution 2.x, Debian 12's
//! docker-registry), so that another lazyboot starts cold with no streaming
//! pass.
//!
//! Layout of the artifact (an OCI image manifest):
//!
//! - `artifactType` [`ARTIFACT_TYPE`]; config: the OCI empty descriptor
//!   (`{}`); annotations [`INDEX_VERSION_ANNOTATION`] (the layer index
//!   format), [`CONTENT_ANNOTATION`] (what the blobs are, so an unchanged
//!   push is recognised) and `org.opencontainers.image.created` (newest wins);
//! - one layer per layer index ([`LAYER_INDEX_MEDIA_TYPE`], annotated with
//!   [`LAYER_DIGEST_ANNOTATION`]) and the prefetch plan, if there is one
//!   ([`PLAN_MEDIA_TYPE`]).
//!
//! This module moves bytes only: it checks that what it fetched is what the
//! artifact's descriptors name (digest and size) and that the artifact is
//! ours and about this image. Whether an index may be used at all, and how
//! it is validated, is the indexer's business (`indexer::fetch_published`,
//! which also states the trust model).

use super::manifest::{OCI_INDEX, OCI_MANIFEST};
use super::{remote::Remote, Backend, RegistryError, ResolvedImage, Source};
use crate::digest::Digest;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// `artifactType` of the artifact that carries lazyboot's indexes for an image; referrers of other
/// types are ignored.
pub const ARTIFACT_TYPE: &str = "application/vnd.lazyboot.index.v1";
pub(crate) const LAYER_INDEX_MEDIA_TYPE: &str = "application/vnd.lazyboot.layer-index.v1";
pub(crate) const PLAN_MEDIA_TYPE: &str = "application/vnd.lazyboot.prefetch-plan.v1+json";
/// The image spec's placeholder for an artifact without a config.
pub(crate) const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_JSON: &[u8] = b"{}";

/// On a layer index blob: the layer it indexes.
pub(crate) const LAYER_DIGEST_ANNOTATION: &str = "dev.lazyboot.layer.digest";
/// On the artifact: the layer index format version of its blobs.
pub(crate) const INDEX_VERSION_ANNOTATION: &str = "dev.lazyboot.index.version";
/// On the artifact: a digest over what its blobs are. Descriptors in a
/// referrers list carry the manifest's annotations, so a second push of the
/// same indexes is recognised without fetching anything more.
pub(crate) const CONTENT_ANNOTATION: &str = "dev.lazyboot.content";
pub(crate) const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";

/// Larger index blobs are refused before they are downloaded: an index is
/// about 1% of its layer's uncompressed size.
const MAX_INDEX_BLOB: u64 = 1 << 30;
const MAX_PLAN_BLOB: u64 = 64 << 20;
/// Artifact manifests fetched while looking for one of our index version
/// (only needed when a referrers list leaves out annotations).
const MAX_CANDIDATES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ReferrersError {
    #[error(
        "{location}: publishing indexes needs a registry; an OCI layout (oci:DIR) has no referrers"
    )]
    NotARegistry { location: String },
    #[error(transparent)]
    Registry(Box<RegistryError>),
    #[error("{location}: the referrers fallback tag {tag} holds {found}, not an OCI image index; not overwriting it (delete the tag, or use a registry with the referrers API)")]
    FallbackNotIndex {
        location: String,
        tag: String,
        found: String,
    },
    #[error("{location}: lazyboot artifact {artifact}: {reason}")]
    BadArtifact {
        location: String,
        artifact: String,
        reason: String,
    },
    #[error("{location}: lazyboot artifact {artifact}: blob {blob} ({what}): {reason}; not used")]
    BadBlob {
        location: String,
        artifact: Digest,
        blob: String,
        what: String,
        reason: String,
    },
}

impl From<RegistryError> for ReferrersError {
    fn from(e: RegistryError) -> Self {
        ReferrersError::Registry(Box::new(e))
    }
}

/// What `lazyboot index --push` publishes.
#[derive(Clone, Debug)]
pub struct Published {
    /// `layer::index::INDEX_VERSION` of the encoded indexes.
    pub index_version: u32,
    /// (layer digest, encoded `LayerIndex`), in layer order.
    pub layer_indexes: Vec<(Digest, Bytes)>,
    /// The encoded `PrefetchPlan` of the image, if one was learned.
    pub plan: Option<Bytes>,
}

/// How the artifact is found from its subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// The registry indexes `subject` itself (OCI distribution 1.1).
    ReferrersApi,
    /// Listed in the image index at this tag (the referrers tag schema).
    FallbackTag(String),
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Via::ReferrersApi => f.write_str("the referrers API"),
            Via::FallbackTag(t) => write!(f, "the referrers fallback tag {t}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct PushOutcome {
    pub artifact: Digest,
    pub(crate) via: Via,
    /// The same indexes were published before: nothing new was pushed.
    pub already_published: bool,
    /// The fallback tag's index was created or extended by this push.
    pub(crate) fallback_updated: bool,
}

/// A lazyboot artifact fetched for an image, every blob checked against its
/// descriptor. The indexes themselves are not validated here.
#[derive(Clone, Debug)]
pub(crate) struct PulledArtifact {
    pub(crate) artifact: Digest,
    pub(crate) layer_indexes: BTreeMap<Digest, Bytes>,
    pub(crate) plan: Option<Bytes>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub(crate) media_type: String,
    /// Kept as text: checked with `Digest::parse` where it is used.
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) annotations: BTreeMap<String, String>,
}

impl Descriptor {
    fn of(media_type: &str, data: &[u8], annotations: BTreeMap<String, String>) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest: Digest::of_bytes(data).to_string(),
            size: data.len() as u64,
            artifact_type: None,
            annotations,
        }
    }
}

/// The artifact manifest, as we write it and as we read it back (lenient
/// where other writers may differ, strict where it matters in `check`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactManifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// The referrers tag schema: `<alg>-<hex>` (both well within the spec's
/// 32- and 64-character limits for sha256).
pub(crate) fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

impl Source {
    /// Whether the content comes from a registry (not an `oci:` layout).
    pub(crate) fn is_registry(&self) -> bool {
        matches!(self.inner.backend, Backend::Remote(_))
    }

    /// Whether the image was named by a registry tag rather than pinned by
    /// digest: the indexer uses published indexes only then (trust model in
    /// `indexer::fetch_published`).
    pub(crate) fn named_by_tag(&self) -> bool {
        self.is_registry() && self.inner.by_tag
    }

    fn remote(&self) -> Result<&Arc<Remote>, ReferrersError> {
        match &self.inner.backend {
            Backend::Remote(r) => Ok(r),
            Backend::Layout(_) => Err(ReferrersError::NotARegistry {
                location: self.location().to_string(),
            }),
        }
    }

    /// Publishes `content` as a lazyboot artifact referring to `image`'s
    /// manifest. Pushing the same content again changes nothing.
    pub async fn push_published(
        &self,
        image: &ResolvedImage,
        content: &Published,
    ) -> Result<PushOutcome, ReferrersError> {
        let remote = self.remote()?;
        let location = self.location().to_string();
        let subject = &image.manifest_digest;
        let tag = fallback_tag(subject);

        let mut blobs: Vec<(Descriptor, Bytes)> = Vec::new();
        for (layer, data) in &content.layer_indexes {
            let ann = BTreeMap::from([(LAYER_DIGEST_ANNOTATION.to_string(), layer.to_string())]);
            blobs.push((
                Descriptor::of(LAYER_INDEX_MEDIA_TYPE, data, ann),
                data.clone(),
            ));
        }
        if let Some(plan) = &content.plan {
            blobs.push((
                Descriptor::of(PLAN_MEDIA_TYPE, plan, BTreeMap::new()),
                plan.clone(),
            ));
        }
        let content_id = content_id(content.index_version, &blobs);
        let version = content.index_version.to_string();

        // Published before? Then it is already listed one way or the other.
        let listing = self.list_referrers(remote, subject).await;
        let existing = listing.iter().flatten().find(|d| {
            d.artifact_type.as_deref() == Some(ARTIFACT_TYPE)
                && d.annotations.get(INDEX_VERSION_ANNOTATION) == Some(&version)
                && d.annotations.get(CONTENT_ANNOTATION) == Some(&content_id)
        });
        if let Some(d) = existing {
            let artifact = parse_digest(&location, &d.digest, "referrers list")?;
            let current = read_fallback(remote, &tag).await?;
            let via = if current
                .as_deref()
                .is_some_and(|b| index_lists(b, &artifact))
            {
                Via::FallbackTag(tag)
            } else {
                Via::ReferrersApi
            };
            return Ok(PushOutcome {
                artifact,
                via,
                already_published: true,
                fallback_updated: false,
            });
        }

        remote.authorize_push().await?;
        // The subject descriptor needs the manifest's media type and size.
        let subject_body = self.inner.backend.manifest_by_digest(subject).await?;
        let subject_desc = Descriptor {
            media_type: manifest_media_type(&subject_body),
            digest: subject.to_string(),
            size: subject_body.len() as u64,
            artifact_type: None,
            annotations: BTreeMap::new(),
        };

        let empty = Bytes::from_static(EMPTY_JSON);
        let config = Descriptor::of(EMPTY_MEDIA_TYPE, &empty, BTreeMap::new());
        let mut uploads = vec![(config.clone(), empty, "empty config".to_string())];
        for (d, data) in &blobs {
            let what = match d.annotations.get(LAYER_DIGEST_ANNOTATION) {
                Some(l) => format!("index of layer {l}"),
                None => "prefetch plan".to_string(),
            };
            uploads.push((d.clone(), data.clone(), what));
        }
        for (d, data, what) in uploads {
            let digest = parse_digest(&location, &d.digest, "blob")?;
            let uploaded = remote
                .push_blob(&digest, data, &format!("uploading {what} ({digest})"))
                .await?;
            tracing::debug!(%digest, %what, uploaded, "artifact blob");
        }

        let annotations = BTreeMap::from([
            (INDEX_VERSION_ANNOTATION.to_string(), version),
            (CONTENT_ANNOTATION.to_string(), content_id),
            (CREATED_ANNOTATION.to_string(), rfc3339(SystemTime::now())),
        ]);
        let manifest = ArtifactManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_string()),
            artifact_type: Some(ARTIFACT_TYPE.to_string()),
            config,
            layers: blobs.into_iter().map(|(d, _)| d).collect(),
            subject: Some(subject_desc),
            annotations: annotations.clone(),
        };
        let body = Bytes::from(serde_json::to_vec(&manifest).expect("a manifest serialises"));
        let artifact = Digest::of_bytes(&body);
        remote
            .push_manifest(None, &artifact, OCI_MANIFEST, body.clone())
            .await?;

        // The spec has a registry that processed `subject` answer with an
        // `OCI-Subject` header. oci-client does not show response headers,
        // so ask the referrers API instead (the check of distribution-spec
        // 1.1's release candidates): listed there, and not just through a
        // fallback tag some earlier push wrote, means the registry indexes
        // subjects itself.
        let listed = self
            .list_referrers(remote, subject)
            .await
            .is_some_and(|l| l.iter().any(|d| d.digest == artifact.as_str()));
        let current = read_fallback(remote, &tag).await?;
        let in_tag = current
            .as_deref()
            .is_some_and(|b| index_lists(b, &artifact));
        if listed && !in_tag {
            return Ok(PushOutcome {
                artifact,
                via: Via::ReferrersApi,
                already_published: false,
                fallback_updated: false,
            });
        }

        let entry = Descriptor {
            media_type: OCI_MANIFEST.to_string(),
            digest: artifact.to_string(),
            size: body.len() as u64,
            artifact_type: Some(ARTIFACT_TYPE.to_string()),
            annotations,
        };
        let merged = merge_fallback(current.as_deref(), &entry).map_err(|found| {
            ReferrersError::FallbackNotIndex {
                location: location.clone(),
                tag: tag.clone(),
                found,
            }
        })?;
        let fallback_updated = merged.is_some();
        if let Some(index) = merged {
            let index = Bytes::from(index);
            let digest = Digest::of_bytes(&index);
            remote
                .push_manifest(Some(&tag), &digest, OCI_INDEX, index)
                .await?;
        }
        Ok(PushOutcome {
            artifact,
            via: Via::FallbackTag(tag),
            already_published: false,
            fallback_updated,
        })
    }

    /// The newest lazyboot artifact for `image` made with `index_version`,
    /// with every blob fetched and checked against its descriptor. `None`
    /// when there is none (or the source is an `oci:` layout).
    pub(crate) async fn find_published(
        &self,
        image: &ResolvedImage,
        index_version: u32,
    ) -> Result<Option<PulledArtifact>, ReferrersError> {
        let Ok(remote) = self.remote() else {
            return Ok(None);
        };
        let location = self.location().to_string();
        let subject = &image.manifest_digest;
        let listing = match self.list_referrers(remote, subject).await {
            Some(l) => l,
            // The referrers API failed some other way than 404 (oci-client
            // falls back on 404 itself): the fallback tag may still work.
            None => match read_fallback(remote, &fallback_tag(subject)).await? {
                Some(body) => parse_listing(&body).unwrap_or_default(),
                None => Vec::new(),
            },
        };
        let version = index_version.to_string();
        for cand in candidates(&listing, index_version)
            .into_iter()
            .take(MAX_CANDIDATES)
        {
            let artifact = parse_digest(&location, &cand.digest, "referrers list")?;
            let bad = |reason: String| ReferrersError::BadArtifact {
                location: location.clone(),
                artifact: artifact.to_string(),
                reason,
            };
            let body = self.inner.backend.manifest_by_digest(&artifact).await?;
            if body.len() as u64 != cand.size {
                return Err(bad(format!(
                    "manifest is {} bytes, its descriptor says {}",
                    body.len(),
                    cand.size
                )));
            }
            let m: ArtifactManifest = serde_json::from_slice(&body)
                .map_err(|e| bad(format!("manifest does not parse: {e}")))?;
            if m.annotations.get(INDEX_VERSION_ANNOTATION) != Some(&version) {
                // Only reachable when the list left the annotation out.
                tracing::debug!(%artifact, "published indexes of another index version");
                continue;
            }
            check_artifact(&m, subject).map_err(bad)?;
            let pulled = self.fetch_artifact_blobs(image, &artifact, &m).await?;
            return Ok(Some(pulled));
        }
        Ok(None)
    }

    /// The layer index and plan blobs of artifact `m`, each checked against
    /// its descriptor; blobs for layers not in `image` are skipped.
    async fn fetch_artifact_blobs(
        &self,
        image: &ResolvedImage,
        artifact: &Digest,
        m: &ArtifactManifest,
    ) -> Result<PulledArtifact, ReferrersError> {
        let location = self.location().to_string();
        let layers: BTreeSet<&Digest> = image.layers.iter().map(|l| &l.digest).collect();
        let bad_blob = |d: &Descriptor, what: &str, reason: String| ReferrersError::BadBlob {
            location: location.clone(),
            artifact: artifact.clone(),
            blob: d.digest.clone(),
            what: what.to_string(),
            reason,
        };
        // (layer, or None for the plan), descriptor, what
        let mut wanted: Vec<(Option<Digest>, &Descriptor, String)> = Vec::new();
        let mut seen = BTreeSet::new();
        for d in &m.layers {
            match d.media_type.as_str() {
                LAYER_INDEX_MEDIA_TYPE => {
                    let what = "layer index";
                    let layer = d
                        .annotations
                        .get(LAYER_DIGEST_ANNOTATION)
                        .and_then(|l| Digest::parse(l).ok())
                        .ok_or_else(|| {
                            bad_blob(d, what, format!("no valid {LAYER_DIGEST_ANNOTATION}"))
                        })?;
                    if !seen.insert(Some(layer.clone())) {
                        return Err(bad_blob(d, what, format!("a second index of {layer}")));
                    }
                    if d.size > MAX_INDEX_BLOB {
                        return Err(bad_blob(d, what, format!("{} bytes is too large", d.size)));
                    }
                    if layers.contains(&layer) {
                        wanted.push((Some(layer.clone()), d, format!("index of layer {layer}")));
                    }
                }
                PLAN_MEDIA_TYPE => {
                    let what = "prefetch plan";
                    if !seen.insert(None) {
                        return Err(bad_blob(d, what, "a second prefetch plan".into()));
                    }
                    if d.size > MAX_PLAN_BLOB {
                        return Err(bad_blob(d, what, format!("{} bytes is too large", d.size)));
                    }
                    wanted.push((None, d, what.to_string()));
                }
                // Newer lazyboots may add parts; they are not for us.
                _ => {}
            }
        }
        let fetches = wanted.iter().map(|(layer, d, what)| async move {
            let digest = Digest::parse(&d.digest).map_err(|e| bad_blob(d, what, e.to_string()))?;
            let data = match self.inner.backend.fetch_blob(&digest, Some(d.size)).await {
                Ok(data) => data,
                Err(
                    e @ (RegistryError::DigestMismatch { .. } | RegistryError::ShortBody { .. }),
                ) => return Err(bad_blob(d, what, e.to_string())),
                Err(e) => return Err(e.into()),
            };
            if data.len() as u64 != d.size {
                return Err(bad_blob(
                    d,
                    what,
                    format!("{} bytes, its descriptor says {}", data.len(), d.size),
                ));
            }
            Ok((layer.clone(), data))
        });
        let mut out = PulledArtifact {
            artifact: artifact.clone(),
            layer_indexes: BTreeMap::new(),
            plan: None,
        };
        for (layer, data) in futures_util::future::try_join_all(fetches).await? {
            match layer {
                Some(l) => {
                    out.layer_indexes.insert(l, data);
                }
                None => out.plan = Some(data),
            }
        }
        Ok(out)
    }

    /// Referrers of `subject` that are lazyboot artifacts, from the API or
    /// the fallback tag. `None` if that failed (logged): callers decide
    /// whether to try the fallback tag themselves.
    async fn list_referrers(&self, remote: &Remote, subject: &Digest) -> Option<Vec<Descriptor>> {
        match remote.referrers(subject, ARTIFACT_TYPE).await {
            Ok(index) => Some(
                index
                    .manifests
                    .into_iter()
                    .filter_map(|e| {
                        Some(Descriptor {
                            media_type: e.media_type,
                            digest: e.digest,
                            size: u64::try_from(e.size).ok()?,
                            artifact_type: e.artifact_type,
                            annotations: e.annotations.unwrap_or_default(),
                        })
                    })
                    // A registry may ignore the filter; the spec lets it.
                    .filter(|d| d.artifact_type.as_deref() == Some(ARTIFACT_TYPE))
                    .collect(),
            ),
            Err(e) => {
                tracing::debug!(location = %self.location(), %subject, "listing referrers failed: {e}");
                None
            }
        }
    }
}

/// The manifest at the fallback tag, or `None` if there is no such tag.
async fn read_fallback(remote: &Remote, tag: &str) -> Result<Option<Bytes>, ReferrersError> {
    match remote.fetch_manifest(Some(tag), None).await {
        Ok((body, _)) => Ok(Some(body)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn parse_digest(location: &str, s: &str, whose: &str) -> Result<Digest, ReferrersError> {
    Digest::parse(s).map_err(|e| ReferrersError::BadArtifact {
        location: location.to_string(),
        artifact: s.to_string(),
        reason: format!("{whose}: {e}"),
    })
}

/// Is `m` a lazyboot index artifact about `subject`?
fn check_artifact(m: &ArtifactManifest, subject: &Digest) -> Result<(), String> {
    if m.schema_version != 2 {
        return Err(format!("schemaVersion {}", m.schema_version));
    }
    if m.media_type.as_deref() != Some(OCI_MANIFEST) {
        return Err(format!("media type {:?}, not {OCI_MANIFEST}", m.media_type));
    }
    if m.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
        return Err(format!(
            "artifact type {:?}, not {ARTIFACT_TYPE}",
            m.artifact_type
        ));
    }
    match &m.subject {
        Some(s) if s.digest == subject.as_str() => Ok(()),
        Some(s) => Err(format!("its subject is {}, not {subject}", s.digest)),
        None => Err("it has no subject".into()),
    }
}

/// A digest over what the artifact's blobs are (not when it was made).
fn content_id(index_version: u32, blobs: &[(Descriptor, Bytes)]) -> String {
    let mut text = format!("lazyboot index v{index_version}\n");
    for (d, _) in blobs {
        let layer = d.annotations.get(LAYER_DIGEST_ANNOTATION);
        text.push_str(&format!(
            "{} {} {}\n",
            d.media_type,
            d.digest,
            layer.map_or("-", String::as_str)
        ));
    }
    Digest::of_bytes(text.as_bytes()).to_string()
}

/// `mediaType` of a manifest; documents without one are OCI (an index if
/// they list manifests).
fn manifest_media_type(body: &[u8]) -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(body) {
        Ok(Probe {
            media_type: Some(m),
            ..
        }) => m,
        Ok(Probe {
            manifests: Some(_), ..
        }) => OCI_INDEX.to_string(),
        _ => OCI_MANIFEST.to_string(),
    }
}

/// The descriptors of an image index (a referrers list).
fn parse_listing(body: &[u8]) -> Option<Vec<Descriptor>> {
    #[derive(Deserialize)]
    struct Index {
        manifests: Vec<serde_json::Value>,
    }
    let index: Index = serde_json::from_slice(body).ok()?;
    // Entries we cannot read are someone else's business, not an error.
    Some(
        index
            .manifests
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect(),
    )
}

/// Whether the image index `body` lists `digest`.
fn index_lists(body: &[u8], digest: &Digest) -> bool {
    parse_listing(body).is_some_and(|l| l.iter().any(|d| d.digest == digest.as_str()))
}

/// Lazyboot artifacts of `index_version` (or not saying) in `listing`,
/// newest first: by creation time, then later in the list (the fallback
/// tag appends).
fn candidates(listing: &[Descriptor], index_version: u32) -> Vec<&Descriptor> {
    let version = index_version.to_string();
    let mut c: Vec<(usize, &Descriptor)> = listing
        .iter()
        .enumerate()
        .filter(|(_, d)| {
            d.artifact_type.as_deref() == Some(ARTIFACT_TYPE)
                && d.media_type == OCI_MANIFEST
                && d.annotations
                    .get(INDEX_VERSION_ANNOTATION)
                    .is_none_or(|v| *v == version)
        })
        .collect();
    c.sort_by(|(ia, a), (ib, b)| {
        let created = |d: &Descriptor| d.annotations.get(CREATED_ANNOTATION).cloned();
        created(b).cmp(&created(a)).then(ib.cmp(ia))
    });
    c.into_iter().map(|(_, d)| d).collect()
}

/// The update step of the referrers tag schema: `current` is what the tag
/// holds (`None`: 404, start empty). `Ok(None)` when `entry` is listed
/// already (no duplicates); `Err` describes a tag holding anything but an
/// image index, which the spec says to report rather than overwrite. Other
/// entries and fields are kept as they are.
fn merge_fallback(current: Option<&[u8]>, entry: &Descriptor) -> Result<Option<Vec<u8>>, String> {
    use serde_json::Value;
    let mut index = match current {
        None => serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [],
        }),
        Some(body) => {
            let v: Value = serde_json::from_slice(body)
                .map_err(|e| format!("a document that is not JSON ({e})"))?;
            let Some(obj) = v.as_object() else {
                return Err("a JSON document that is not an object".into());
            };
            match obj.get("mediaType").and_then(Value::as_str) {
                Some(OCI_INDEX) => {}
                Some(other) => return Err(format!("a {other}")),
                // Untyped: an index only if it has manifests and nothing of
                // an image manifest.
                None if obj.contains_key("config") || obj.contains_key("layers") => {
                    return Err("an image manifest without a mediaType".into())
                }
                None => {}
            }
            if !obj.get("manifests").is_some_and(Value::is_array) {
                return Err("an image index without a manifests list".into());
            }
            v
        }
    };
    let list = index["manifests"]
        .as_array_mut()
        .expect("checked to be an array above");
    let listed = list
        .iter()
        .any(|m| m.get("digest").and_then(Value::as_str) == Some(entry.digest.as_str()));
    if listed {
        return Ok(None);
    }
    list.push(serde_json::to_value(entry).expect("a descriptor serialises"));
    Ok(Some(
        serde_json::to_vec(&index).expect("an index serialises"),
    ))
}

/// `t` as RFC 3339 UTC with whole seconds, e.g. `2024-03-01T12:00:00Z`;
/// fixed width, so the strings sort in time order.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01,
/// counting in 400-year eras that start on March 1st (so leap days come
/// last in a year).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(digest: &Digest) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest.to_string(),
            size: 123,
            artifact_type: Some(ARTIFACT_TYPE.into()),
            annotations: BTreeMap::from([(INDEX_VERSION_ANNOTATION.into(), "1".into())]),
        }
    }

    fn listing(body: &[u8]) -> Vec<Descriptor> {
        parse_listing(body).expect("an index")
    }

    #[test]
    fn fallback_merge_starts_empty_and_never_duplicates() {
        let a = Digest::of_bytes(b"a");
        let b = Digest::of_bytes(b"b");
        let first = merge_fallback(None, &entry(&a)).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], OCI_INDEX);
        assert_eq!(listing(&first), vec![entry(&a)]);
        assert_eq!(v["manifests"][0]["artifactType"], ARTIFACT_TYPE);

        // Listed already: nothing to push.
        assert_eq!(merge_fallback(Some(&first), &entry(&a)).unwrap(), None);
        let second = merge_fallback(Some(&first), &entry(&b)).unwrap().unwrap();
        assert_eq!(listing(&second), vec![entry(&a), entry(&b)]);
        assert_eq!(merge_fallback(Some(&second), &entry(&b)).unwrap(), None);
        assert!(index_lists(&second, &a) && index_lists(&second, &b));
    }

    #[test]
    fn fallback_merge_keeps_other_referrers_and_fields() {
        let other = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","annotations":{{"x":"y"}},
            "manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,
            "artifactType":"application/vnd.dev.sigstore.bundle+json","platform":{{"os":"linux"}}}}]}}"#,
            Digest::of_bytes(b"sig")
        );
        let a = Digest::of_bytes(b"a");
        let merged = merge_fallback(Some(other.as_bytes()), &entry(&a))
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&merged).unwrap();
        assert_eq!(v["annotations"]["x"], "y");
        assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
        assert_eq!(v["manifests"][0]["platform"]["os"], "linux");
        assert_eq!(v["manifests"][1]["digest"], a.as_str());
        // An untyped index is an index too.
        let untyped = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(merge_fallback(Some(untyped), &entry(&a)).unwrap().is_some());
    }

    #[test]
    fn fallback_tag_holding_something_else_is_reported_not_overwritten() {
        let a = entry(&Digest::of_bytes(b"a"));
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{}},"layers":[]}}"#
        );
        let e = merge_fallback(Some(image.as_bytes()), &a).unwrap_err();
        assert!(e.contains(OCI_MANIFEST), "{e}");
        let untyped_image = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert!(merge_fallback(Some(untyped_image), &a).is_err());
        let list = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        assert!(merge_fallback(Some(list), &a)
            .unwrap_err()
            .contains("manifest.list"));
        assert!(merge_fallback(Some(b"not json"), &a).is_err());
        assert!(merge_fallback(Some(b"[1]"), &a).is_err());
        assert!(merge_fallback(Some(br#"{"manifests":{}}"#), &a).is_err());
    }

    #[test]
    fn candidates_are_ours_of_our_version_newest_first() {
        let mk = |name: &[u8], version: Option<&str>, created: Option<&str>| {
            let mut d = entry(&Digest::of_bytes(name));
            d.annotations.clear();
            if let Some(v) = version {
                d.annotations
                    .insert(INDEX_VERSION_ANNOTATION.into(), v.into());
            }
            if let Some(c) = created {
                d.annotations.insert(CREATED_ANNOTATION.into(), c.into());
            }
            d
        };
        let old = mk(b"old", Some("1"), Some("2024-01-01T00:00:00Z"));
        let new = mk(b"new", Some("1"), Some("2025-01-01T00:00:00Z"));
        let same_time_later = mk(b"later", Some("1"), Some("2024-01-01T00:00:00Z"));
        let other_version = mk(b"v2", Some("2"), Some("2030-01-01T00:00:00Z"));
        let unannotated = mk(b"bare", None, None);
        let mut foreign = mk(b"sig", Some("1"), Some("2031-01-01T00:00:00Z"));
        foreign.artifact_type = Some("application/vnd.example.sig".into());
        let list = vec![
            old.clone(),
            other_version,
            unannotated.clone(),
            new.clone(),
            foreign,
            same_time_later.clone(),
        ];
        let got: Vec<&Descriptor> = candidates(&list, 1);
        assert_eq!(got, vec![&new, &same_time_later, &old, &unannotated]);
    }

    #[test]
    fn artifacts_must_be_ours_and_about_the_subject() {
        let subject = Digest::of_bytes(b"image manifest");
        let good = ArtifactManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            artifact_type: Some(ARTIFACT_TYPE.into()),
            config: Descriptor::of(EMPTY_MEDIA_TYPE, EMPTY_JSON, BTreeMap::new()),
            layers: Vec::new(),
            subject: Some(Descriptor::of(
                OCI_MANIFEST,
                b"image manifest",
                BTreeMap::new(),
            )),
            annotations: BTreeMap::new(),
        };
        assert_eq!(check_artifact(&good, &subject), Ok(()));
        // What we write reads back the same way.
        let bytes = serde_json::to_vec(&good).unwrap();
        let back: ArtifactManifest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(check_artifact(&back, &subject), Ok(()));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(r#""artifactType":"application/vnd.lazyboot.index.v1""#));
        assert!(text.contains(
            r#""config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}"#
        ));

        let other = Digest::of_bytes(b"another image");
        assert!(check_artifact(&good, &other)
            .unwrap_err()
            .contains("subject"));
        let mut m = back;
        m.artifact_type = Some("application/vnd.example".into());
        assert!(check_artifact(&m, &subject).is_err());
        m.artifact_type = Some(ARTIFACT_TYPE.into());
        m.subject = None;
        assert!(check_artifact(&m, &subject).is_err());
    }

    #[test]
    fn content_id_ignores_time_but_not_blobs() {
        let layer = Digest::of_bytes(b"layer");
        let ann = BTreeMap::from([(LAYER_DIGEST_ANNOTATION.to_string(), layer.to_string())]);
        let blob = |data: &'static [u8]| {
            (
                Descriptor::of(LAYER_INDEX_MEDIA_TYPE, data, ann.clone()),
                Bytes::from_static(data),
            )
        };
        let a = content_id(1, &[blob(b"index")]);
        assert_eq!(a, content_id(1, &[blob(b"index")]));
        assert_ne!(a, content_id(1, &[blob(b"other index")]));
        assert_ne!(a, content_id(2, &[blob(b"index")]));
    }

    #[test]
    fn subject_media_types_and_tags() {
        assert_eq!(
            manifest_media_type(
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            ),
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(
            manifest_media_type(br#"{"config":{},"layers":[]}"#),
            OCI_MANIFEST
        );
        assert_eq!(manifest_media_type(br#"{"manifests":[]}"#), OCI_INDEX);
        let d = Digest::of_bytes(b"x");
        assert_eq!(fallback_tag(&d), format!("sha256-{}", d.hex()));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |s| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(at(1_709_251_200), "2024-03-01T00:00:00Z");
    }
}
