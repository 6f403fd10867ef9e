//! What the boot servers share: the configuration, the node inventory and
//! the image views (one per image and platform, over one chunk cache).
//! `main.rs` starts DHCP, TFTP and NFS with one `ServeContext`.

use crate::cache::ChunkCache;
use crate::config::{Config, NodeKind};
use crate::digest::Digest;
use crate::nodes::{Inventory, Node};
use crate::prefetch::{self, PrefetchPlan};
use crate::profile::recorder::{BootedRules, Recorder};
use crate::profile::trace::{traced, SharedTrace};
use crate::profile::ProfileStore;
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::registry::{RegistryOptions, Source};
use crate::view::{ImageView, ViewError};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub struct ServeContext {
    pub config: Config,
    pub inventory: Arc<Inventory>,
    pub images: Images,
    pub server_ip: Ipv4Addr,
    pub state_dir: PathBuf,
    pub recorder: Arc<Recorder>,
}

impl ServeContext {
    pub fn new(config: Config, cache: Arc<ChunkCache>) -> Arc<ServeContext> {
        let inventory = Arc::new(Inventory::from_config(&config));
        let images = Images::new(cache.clone(), config.server.insecure_registries.clone());
        let p = &config.profile;
        let rules = BootedRules {
            marker: p.booted_marker.clone(),
            quiet: (p.quiet_secs > 0).then(|| Duration::from_secs(p.quiet_secs)),
        };
        let recorder = Arc::new(Recorder::new(
            ProfileStore::new(&config.server.state_dir),
            rules,
            Some(cache),
        ));
        Arc::new(ServeContext {
            server_ip: config.server.address,
            state_dir: config.server.state_dir.clone(),
            config,
            inventory,
            images,
            recorder,
        })
    }

    /// A node's boot firmware asked for an address: a new boot begins. Count
    /// it (ephemeral roots reset on it), start its timeline, and re-resolve
    /// the node's image in the background, so that re-tagging an image
    /// reboots nodes into it; then replay the image's prefetch plan, if it
    /// has one, ahead of the node's requests.
    pub fn boot_started(self: &Arc<Self>, node: &Arc<Node>) -> u64 {
        let generation = self.inventory.boot_started(&node.name);
        self.recorder
            .begin(&node.name, node.kind.as_str(), &node.image, "dhcp");
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (ctx, node) = (self.clone(), node.clone());
            rt.spawn(async move {
                if let Err(e) = ctx.images.refresh(&node).await {
                    tracing::warn!(node = %node.name, "re-resolving the image at boot: {e}");
                }
                ctx.prefetch_for(&node).await;
            });
        }
        generation
    }

    /// The view of `node`'s image; its manifest goes into the node's timeline.
    pub async fn view_for(&self, node: &Node) -> Result<Arc<ImageView>, ImageOpenError> {
        let view = self.images.view_for(node).await?;
        self.recorder
            .set_manifest(&node.name, &view.image.manifest_digest);
        Ok(view)
    }

    /// Replay the learned prefetch plan of `node`'s image, unless prefetch
    /// is off, there is no plan, or a replay for this image is under way.
    async fn prefetch_for(&self, node: &Arc<Node>) {
        if !self.config.profile.prefetch {
            return;
        }
        let view = match self.view_for(node).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(node = %node.name, "no prefetch: {e}");
                return;
            }
        };
        let manifest = view.image.manifest_digest.clone();
        let Some(plan) = PrefetchPlan::load(&view.cache, &manifest) else {
            return;
        };
        if !self.images.prefetching.lock().insert(manifest.clone()) {
            return;
        }
        self.recorder
            .prefetch_started(&node.name, plan.chunk_count(), &plan.learned_from);
        let trace = SharedTrace::default();
        let parallel = self.config.profile.prefetch_parallel;
        let report = traced(trace.clone(), prefetch::replay(view, &plan, parallel)).await;
        self.images.prefetching.lock().remove(&manifest);
        tracing::info!(
            node = %node.name,
            "prefetch of {manifest}: {} chunks fetched, {} already cached, {} failed steps, {} ms",
            report.fetched_chunks,
            report.cached_chunks,
            report.failed_steps,
            report.millis
        );
        let trace = std::mem::take(&mut *trace.lock());
        self.recorder
            .prefetch_done(&node.name, report.fetched_chunks, &trace);
    }

    /// The NFS export path of a node's root file system.
    pub fn export_path(node: &Node) -> String {
        format!("/nodes/{}", node.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageOpenError {
    #[error("image reference {image:?}: {message}")]
    Reference { image: String, message: String },
    #[error("image {image}: {source}")]
    View {
        image: String,
        #[source]
        source: ViewError,
    },
}

/// An image's view once opened; its lock is held while opening or re-resolving.
type ViewSlot = Arc<tokio::sync::Mutex<Option<Arc<ImageView>>>>;

/// Image views by (reference, node kind): the kind picks the platform.
pub struct Images {
    cache: Arc<ChunkCache>,
    insecure: Vec<String>,
    /// One slot per key, each with its own lock, so opening (or re-resolving)
    /// one image never holds up readers of another.
    slots: parking_lot::Mutex<HashMap<(String, NodeKind), ViewSlot>>,
    /// Manifests whose prefetch plan is being replayed.
    prefetching: parking_lot::Mutex<HashSet<Digest>>,
}

impl Images {
    pub fn new(cache: Arc<ChunkCache>, insecure: Vec<String>) -> Images {
        Images {
            cache,
            insecure,
            slots: parking_lot::Mutex::new(HashMap::new()),
            prefetching: parking_lot::Mutex::new(HashSet::new()),
        }
    }

    fn slot(&self, node: &Node) -> ViewSlot {
        self.slots
            .lock()
            .entry((node.image.clone(), node.kind))
            .or_default()
            .clone()
    }

    /// The view of `node`'s image, opened (and its indexes built) on first use.
    pub async fn view_for(&self, node: &Node) -> Result<Arc<ImageView>, ImageOpenError> {
        let slot = self.slot(node);
        let mut slot = slot.lock().await;
        if let Some(v) = slot.as_ref() {
            return Ok(v.clone());
        }
        let (source, resolved) = self.resolve(node).await?;
        let view = self.open(node, source, resolved).await?;
        *slot = Some(view.clone());
        Ok(view)
    }

    /// Resolve `node`'s reference again (a tag may have moved to another
    /// manifest since) and switch to the new image if it did. Readers wait
    /// for this, so a node that just started booting gets the new image.
    /// Returns whether the image changed.
    pub async fn refresh(&self, node: &Node) -> Result<bool, ImageOpenError> {
        let slot = self.slot(node);
        let mut slot = slot.lock().await;
        let (source, resolved) = self.resolve(node).await?;
        if let Some(v) = slot.as_ref() {
            if v.image.manifest_digest == resolved.manifest_digest {
                return Ok(false);
            }
        }
        let changed = slot.is_some();
        let view = self.open(node, source, resolved).await?;
        if changed {
            tracing::info!(image = %node.image, manifest = %view.image.manifest_digest, "image reference now points to a new manifest");
        }
        *slot = Some(view);
        Ok(changed)
    }

    async fn resolve(
        &self,
        node: &Node,
    ) -> Result<(Source, crate::registry::ResolvedImage), ImageOpenError> {
        let reference: ImageRef =
            node.image
                .parse()
                .map_err(
                    |e: crate::reference::ReferenceError| ImageOpenError::Reference {
                        image: node.image.clone(),
                        message: e.to_string(),
                    },
                )?;
        let mut opts = RegistryOptions {
            insecure_registries: self.insecure.clone(),
            ..RegistryOptions::default()
        };
        if let Ok(p) = node.kind.default_platform().parse() {
            opts.platform = p;
        }
        Source::open(&reference, &opts)
            .await
            .map_err(|e| ImageOpenError::View {
                image: node.image.clone(),
                source: e.into(),
            })
    }

    async fn open(
        &self,
        node: &Node,
        source: Source,
        resolved: crate::registry::ResolvedImage,
    ) -> Result<Arc<ImageView>, ImageOpenError> {
        ImageView::with_parts(
            resolved,
            source,
            self.cache.clone(),
            Duration::from_secs(60),
            &Progress::hidden(),
        )
        .await
        .map_err(|source| ImageOpenError::View {
            image: node.image.clone(),
            source,
        })
    }
}
