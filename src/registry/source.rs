//! Opening a [`Source`]: connecting to a registry or an image layout,
//! following indexes to the manifest for the wanted platform, and noting
//! every blob's size for the range checks in `fetch`.

use super::fetch::Counters;
use super::{layout, manifest, remote, RegistryError, RegistryOptions};
use crate::digest::Digest;
use crate::platform::Platform;
use crate::reference::ImageRef;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

/// One layer of the resolved image manifest, as its descriptor gives it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerDesc {
    /// Content digest of the compressed (or plain tar) layer blob.
    pub digest: Digest,
    pub(crate) size: u64,
    pub(crate) media_type: String,
    pub(crate) annotations: BTreeMap<String, String>,
}

/// The image a reference resolved to: the platform's manifest, its config digest and its layers.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ResolvedImage {
    /// Canonical form of the reference that was opened.
    pub(crate) reference: String,
    pub(crate) manifest_digest: Digest,
    pub(crate) config_digest: Digest,
    /// The platform of the chosen manifest (from the index entry, or from the
    /// config of a single-platform image).
    pub(crate) platform: Platform,
    /// The image's layers, bottom (base) layer first.
    pub layers: Vec<LayerDesc>,
}

/// A connection to where an image's blobs live (a registry repository or an OCI image layout
/// directory), with fetch counters; cheap to clone.
#[derive(Clone)]
pub struct Source {
    pub(super) inner: Arc<SourceInner>,
}

pub(super) struct SourceInner {
    pub(super) backend: Backend,
    pub(super) counters: Arc<Counters>,
    /// Sizes from the manifest, to reject out-of-bounds ranges before asking
    /// and to notice streams that end early without an error.
    pub(super) sizes: HashMap<Digest, u64>,
    /// Named by tag rather than pinned by digest (see referrers.rs).
    pub(super) by_tag: bool,
}

pub(super) enum Backend {
    Remote(Arc<remote::Remote>),
    Layout(Arc<layout::Layout>),
}

impl Backend {
    fn location(&self) -> &str {
        match self {
            Backend::Remote(r) => r.location(),
            Backend::Layout(l) => l.location(),
        }
    }

    /// Fetches a manifest named by digest and checks it against the digest.
    pub(super) async fn manifest_by_digest(
        &self,
        digest: &Digest,
    ) -> Result<bytes::Bytes, RegistryError> {
        let (body, actual) = match self {
            Backend::Remote(r) => r.fetch_manifest(None, Some(digest)).await?,
            Backend::Layout(l) => l.read_manifest(digest).await?,
        };
        check_digest(self.location(), "manifest", digest, &actual)?;
        Ok(body)
    }

    pub(super) async fn fetch_blob(
        &self,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<bytes::Bytes, RegistryError> {
        let data = match self {
            Backend::Remote(r) => r.fetch_blob(digest, size).await?,
            Backend::Layout(l) => l.read_blob(digest).await?,
        };
        check_digest(self.location(), "blob", digest, &Digest::of_bytes(&data))?;
        Ok(data)
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("location", &self.location())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Source {
    /// Connect to the registry or layout `reference` names, resolve it to the manifest for `opts`'
    /// platform (following an index), and check manifest digests.
    pub async fn open(
        reference: &ImageRef,
        opts: &RegistryOptions,
    ) -> Result<(Source, ResolvedImage), RegistryError> {
        let counters = Arc::new(Counters::default());
        let canonical = reference.to_string();
        let (backend, top) = match reference {
            ImageRef::Remote {
                registry,
                repository,
                tag,
                digest,
            } => {
                let r =
                    remote::Remote::connect(registry, repository, opts, counters.clone()).await?;
                let (body, actual) = r.fetch_manifest(tag.as_deref(), digest.as_ref()).await?;
                if let Some(expected) = digest {
                    check_digest(r.location(), "manifest", expected, &actual)?;
                }
                (Backend::Remote(Arc::new(r)), (body, actual))
            }
            ImageRef::Layout { dir, tag } => {
                let l = layout::Layout::new(dir, counters.clone());
                let entry = l.select_entry(tag.as_deref()).await?;
                let backend = Backend::Layout(Arc::new(l));
                let body = backend.manifest_by_digest(&entry).await?;
                (backend, (body, entry))
            }
        };

        let (manifest_digest, image, index_platform) =
            resolve(&backend, &canonical, top, &opts.platform).await?;

        let mut sizes: HashMap<Digest, u64> = image
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.size))
            .collect();
        sizes.insert(image.config.digest.clone(), image.config.size);

        let platform = match index_platform {
            Some(p) => p,
            None => {
                // A single-platform image says what it is only in its config.
                let config = backend
                    .fetch_blob(&image.config.digest, Some(image.config.size))
                    .await?;
                let p = manifest::config_platform(&config).unwrap_or_else(|| opts.platform.clone());
                if !opts
                    .platform
                    .matches(&p.os, &p.architecture, p.variant.as_deref())
                {
                    tracing::warn!(
                        image = %canonical,
                        image_platform = %p,
                        wanted = %opts.platform,
                        "image is single-platform and does not match the requested platform"
                    );
                }
                p
            }
        };

        let resolved = ResolvedImage {
            reference: canonical,
            manifest_digest,
            config_digest: image.config.digest.clone(),
            platform,
            layers: image
                .layers
                .into_iter()
                .map(|l| LayerDesc {
                    digest: l.digest,
                    size: l.size,
                    media_type: l.media_type,
                    annotations: l.annotations,
                })
                .collect(),
        };
        let source = Source {
            inner: Arc::new(SourceInner {
                backend,
                counters,
                sizes,
                by_tag: matches!(reference, ImageRef::Remote { digest: None, .. }),
            }),
        };
        Ok((source, resolved))
    }

    /// The top-level digest `reference` names now (an index or a manifest),
    /// without resolving a platform: one HEAD request for a registry tag,
    /// the layout's `index.json` for `oci:`. A reference that pins a digest
    /// names that digest.
    pub async fn current_digest(
        reference: &ImageRef,
        opts: &RegistryOptions,
    ) -> Result<Digest, RegistryError> {
        match reference {
            ImageRef::Remote {
                digest: Some(d), ..
            } => Ok(d.clone()),
            ImageRef::Remote {
                registry,
                repository,
                tag,
                ..
            } => {
                let counters = Arc::new(Counters::default());
                let r = remote::Remote::connect(registry, repository, opts, counters).await?;
                r.head_manifest(tag.as_deref().unwrap_or("latest")).await
            }
            ImageRef::Layout { dir, tag } => {
                let l = layout::Layout::new(dir, Arc::new(Counters::default()));
                l.select_entry(tag.as_deref()).await
            }
        }
    }

    /// Where the content comes from: `registry/repository` or `oci:DIR`.
    pub(crate) fn location(&self) -> &str {
        self.inner.backend.location()
    }
}

fn check_digest(
    location: &str,
    kind: &str,
    expected: &Digest,
    actual: &Digest,
) -> Result<(), RegistryError> {
    if expected == actual {
        return Ok(());
    }
    Err(RegistryError::DigestMismatch {
        location: location.to_string(),
        what: format!("{kind} {expected}"),
        expected: expected.clone(),
        actual: actual.clone(),
    })
}

/// Follows indexes down to one image manifest for `wanted`. Returns the
/// manifest's digest, the manifest, and the platform of the index entry it
/// came from (if any).
async fn resolve(
    backend: &Backend,
    reference: &str,
    top: (bytes::Bytes, Digest),
    wanted: &Platform,
) -> Result<(Digest, manifest::ImageManifest, Option<Platform>), RegistryError> {
    let (mut body, mut digest) = top;
    let mut platform = None;
    for _ in 0..=manifest::MAX_INDEX_DEPTH {
        let parsed = manifest::parse(&body).map_err(|reason| RegistryError::BadManifest {
            reference: reference.to_string(),
            what: format!("manifest {digest}"),
            reason,
        })?;
        match parsed {
            manifest::Parsed::Image(m) => return Ok((digest, m, platform)),
            manifest::Parsed::Index(entries) => {
                let entry = manifest::choose(&entries, wanted).map_err(|available| {
                    RegistryError::NoMatchingPlatform {
                        reference: reference.to_string(),
                        wanted: wanted.clone(),
                        available,
                    }
                })?;
                tracing::debug!(
                    %reference, digest = %entry.digest, platform = ?entry.platform,
                    "picked manifest from index"
                );
                body = backend.manifest_by_digest(&entry.digest).await?;
                digest = entry.digest.clone();
                platform = entry.platform.clone();
            }
        }
    }
    Err(RegistryError::BadManifest {
        reference: reference.to_string(),
        what: format!("manifest {digest}"),
        reason: format!(
            "indexes nested more than {} deep",
            manifest::MAX_INDEX_DEPTH
        ),
    })
}
