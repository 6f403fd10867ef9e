//! What the boot servers share: the configuration, the node inventory and
//! the image views (one per image and platform, over one chunk cache).
//! `main.rs` starts DHCP, TFTP and NFS with one `ServeContext`.

use crate::cache::ChunkCache;
use crate::config::Config;
use crate::digest::Digest;
use crate::image::prefetch::{self, PrefetchPlan};
use crate::image::trace::{traced, SharedTrace};
use crate::image::Opening;
use crate::image::{ImageView, ViewError};
use crate::nodes::{Inventory, Node};
use crate::platform::Platform;
use crate::profile::recorder::{BootedRules, Recorder};
use crate::profile::ProfileStore;
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::registry::{RegistryOptions, Source};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What the boot servers of one `lazyboot serve` share: the configuration, the node inventory, the images and the profile recorder.
pub struct ServeContext {
    pub(crate) config: Config,
    pub(crate) inventory: Arc<Inventory>,
    pub(crate) images: Images,
    pub(crate) server_ip: Ipv4Addr,
    pub(crate) state_dir: PathBuf,
    pub(crate) recorder: Arc<Recorder>,
    /// How many servers have bound their sockets (see
    /// [`mark_bound`](Self::mark_bound)).
    bound: std::sync::atomic::AtomicUsize,
    bound_changed: tokio::sync::Notify,
    /// Nodes whose image is being re-resolved for a new boot.
    refreshing: NodeClaims,
    /// Nodes whose boot waits for their image to replay its prefetch plan.
    prefetching: NodeClaims,
}

impl ServeContext {
    /// The address node `name` was last seen at (lease, static or ARP).
    pub fn node_ip(&self, name: &str) -> Option<std::net::Ipv4Addr> {
        self.inventory.ip_of(name)
    }

    /// How many boots of node `name` have begun (0: none seen yet).
    pub fn boot_generation(&self, name: &str) -> u64 {
        self.inventory.boot_generation(name)
    }

    /// The shared state for `config`, with images cached in `cache`.
    pub fn new(config: Config, cache: Arc<ChunkCache>) -> Arc<ServeContext> {
        Self::with_options(config, cache, ServeOptions::default())
    }

    /// Like [`new`](Self::new), with the command line's global options.
    pub(crate) fn with_options(
        config: Config,
        cache: Arc<ChunkCache>,
        opts: ServeOptions,
    ) -> Arc<ServeContext> {
        let inventory = Arc::new(Inventory::from_config(&config));
        let mut insecure = config.server.insecure_registries.clone();
        insecure.extend(opts.insecure_registries);
        let registry = RegistryOptions {
            insecure_registries: insecure,
            timeout: opts.registry_timeout,
            retries: opts.registry_retries,
            ..RegistryOptions::default()
        };
        let images = Images::new(cache.clone(), registry, inventory.clone())
            .with_platform(opts.platform)
            .with_read_timeout(opts.read_timeout)
            .with_publish_indexes(config.server.publish_indexes);
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
            bound: std::sync::atomic::AtomicUsize::new(0),
            bound_changed: tokio::sync::Notify::new(),
            refreshing: NodeClaims::default(),
            prefetching: NodeClaims::default(),
        })
    }

    /// A server has bound its sockets: `serve` says "serving" only when
    /// all of them have.
    pub(crate) fn mark_bound(&self) {
        self.bound.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.bound_changed.notify_waiters();
    }

    /// Wait until `n` servers have called [`mark_bound`](Self::mark_bound).
    pub(crate) async fn wait_bound(&self, n: usize) {
        loop {
            let notified = self.bound_changed.notified();
            if self.bound.load(std::sync::atomic::Ordering::SeqCst) >= n {
                return;
            }
            notified.await;
        }
    }

    /// A node's boot firmware asked for an address: a new boot begins. Count
    /// it (ephemeral roots reset on it), start its timeline, and re-resolve
    /// the node's image in the background, so that re-tagging an image
    /// reboots nodes into it; then replay the image's prefetch plan, if it
    /// has one, ahead of the node's requests.
    ///
    /// A node has at most one re-resolution and one prefetch wait under way:
    /// boots that come faster (a firmware that repeats its DISCOVER, or
    /// packets forged with the node's MAC) share them, so they add no task
    /// and no registry request.
    pub(crate) fn boot_started(self: &Arc<Self>, node: &Arc<Node>) -> u64 {
        let generation = self.inventory.boot_started(&node.name);
        self.recorder
            .begin(&node.name, node.kind.as_str(), &node.image, "dhcp");
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return generation;
        };
        let refresh = self.refreshing.claim(&node.name);
        let prefetch = self.prefetching.claim(&node.name);
        if refresh.is_none() && prefetch.is_none() {
            return generation;
        }
        let (ctx, node) = (self.clone(), node.clone());
        rt.spawn(async move {
            if let Some(claim) = refresh {
                if let Err(e) = ctx.images.refresh(&node).await {
                    tracing::warn!(node = %node.name, "re-resolving the image at boot: {e}");
                }
                drop(claim);
            }
            if let Some(_claim) = prefetch {
                ctx.prefetch_for(&node).await;
            }
        });
        generation
    }

    /// The view of `node`'s image, once every layer is indexed (see
    /// [`opening_for`](Self::opening_for)).
    pub(crate) async fn view_for(&self, node: &Node) -> Result<Arc<ImageView>, ImageOpenError> {
        let opening = self.opening_for(node).await?;
        opening.finished().await.map_err(|source| {
            self.failed(
                node,
                ImageOpenError::View {
                    image: node.image.clone(),
                    source,
                },
            )
        })
    }

    /// `node`'s image as it is being opened (see [`Images::opening_for`]);
    /// its manifest and registry traffic go into the node's timeline, and a
    /// failure is kept as the node's state and in its boot's profile.
    pub(crate) async fn opening_for(&self, node: &Node) -> Result<Arc<Opening>, ImageOpenError> {
        let opening = self
            .images
            .opening_for(node)
            .await
            .map_err(|e| self.failed(node, e))?;
        self.inventory.clear_failed(&node.name);
        self.recorder
            .image_in_use(&node.name, &opening.image.manifest_digest, || {
                let o = opening.clone();
                Arc::new(move || o.source().stats())
            });
        Ok(opening)
    }

    fn failed(&self, node: &Node, e: ImageOpenError) -> ImageOpenError {
        self.inventory.set_failed(&node.name, e.to_string());
        self.recorder.note_error(&node.name, &e.to_string());
        e
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
        let manifest = view.manifest_digest().clone();
        let Some(plan) = PrefetchPlan::load(view.cache(), &manifest) else {
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
    pub(crate) fn export_path(node: &Node) -> String {
        format!("/nodes/{}", node.name)
    }
}

/// Node names with a piece of work under way (see
/// [`ServeContext::boot_started`]).
#[derive(Clone, Default)]
struct NodeClaims(Arc<parking_lot::Mutex<HashSet<String>>>);

impl NodeClaims {
    /// `None` if `node` has this work under way already; else the claim,
    /// which ends when it is dropped.
    fn claim(&self, node: &str) -> Option<NodeClaim> {
        self.0.lock().insert(node.to_string()).then(|| NodeClaim {
            claims: self.clone(),
            node: node.to_string(),
        })
    }
}

struct NodeClaim {
    claims: NodeClaims,
    node: String,
}

impl Drop for NodeClaim {
    fn drop(&mut self) {
        self.claims.0.lock().remove(&self.node);
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ImageOpenError {
    #[error("image reference {image:?}: {message}")]
    Reference { image: String, message: String },
    #[error("image {image}: {source}")]
    View {
        image: String,
        #[source]
        source: ViewError,
    },
}

/// `[server] publish_indexes`: once every layer of `opening` is indexed,
/// push the indexes as the referrer artifact `lazyboot index --push`
/// writes, so the next server (or this one with an empty cache) starts
/// lazily. A failure (no push rights, an `oci:` layout) is logged.
fn publish_when_indexed(opening: &Arc<Opening>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let opening = opening.clone();
    rt.spawn(async move {
        let Ok(view) = opening.finished().await else {
            return;
        };
        let r = crate::image::publish(&view, &Progress::hidden()).await;
        match r {
            Ok(r) => tracing::info!(
                "published the indexes of {} as {} ({} layer index(es))",
                view.manifest_digest(),
                r.outcome.artifact,
                r.layer_indexes
            ),
            Err(e) => tracing::warn!("publishing the indexes of {}: {e}", view.manifest_digest()),
        }
    });
}

/// What the command line adds to the configuration.
#[derive(Clone, Debug)]
pub(crate) struct ServeOptions {
    /// The platform of every node's image (else each node kind's default).
    pub(crate) platform: Option<Platform>,
    /// Registries reached over plain HTTP, besides the configured ones.
    pub(crate) insecure_registries: Vec<String>,
    /// How long a node request waits on the registry or a streaming pass
    /// before it fails.
    pub(crate) read_timeout: Duration,
    /// Per registry request, and per read while a body streams.
    pub(crate) registry_timeout: Duration,
    /// Further attempts after a transient registry failure.
    pub(crate) registry_retries: u32,
}

impl Default for ServeOptions {
    fn default() -> Self {
        let registry = RegistryOptions::default();
        ServeOptions {
            platform: None,
            insecure_registries: Vec::new(),
            read_timeout: Duration::from_secs(60),
            registry_timeout: registry.timeout,
            registry_retries: registry.retries,
        }
    }
}

/// An image being opened (or open); its lock is held while resolving.
type ViewSlot = Arc<tokio::sync::Mutex<Option<Arc<Opening>>>>;

/// Images by (reference, platform): each node boots the platform
/// `nodes::platform` chooses for it. Each is an
/// [`Opening`] from the moment its reference resolves, so boot files can be
/// served while a first streaming pass runs.
pub(crate) struct Images {
    cache: Arc<ChunkCache>,
    /// How to reach registries; the platform is set per node.
    registry: RegistryOptions,
    platform: Option<Platform>,
    read_timeout: Duration,
    /// Which platform each node boots.
    inventory: Arc<Inventory>,
    /// One slot per key, each with its own lock, so opening (or re-resolving)
    /// one image never holds up readers of another.
    slots: parking_lot::Mutex<HashMap<(String, Platform), ViewSlot>>,
    /// Manifests whose prefetch plan is being replayed.
    prefetching: parking_lot::Mutex<HashSet<Digest>>,
    /// Push every image's indexes once its streaming passes are done.
    publish_indexes: bool,
}

impl Images {
    pub(crate) fn new(
        cache: Arc<ChunkCache>,
        registry: RegistryOptions,
        inventory: Arc<Inventory>,
    ) -> Images {
        Images {
            cache,
            registry,
            inventory,
            platform: None,
            read_timeout: Duration::from_secs(60),
            slots: parking_lot::Mutex::new(HashMap::new()),
            prefetching: parking_lot::Mutex::new(HashSet::new()),
            publish_indexes: false,
        }
    }

    /// Open every image for `platform` instead of the node kind's default.
    pub(crate) fn with_platform(mut self, platform: Option<Platform>) -> Images {
        self.platform = platform;
        self
    }

    pub(crate) fn with_read_timeout(mut self, read_timeout: Duration) -> Images {
        self.read_timeout = read_timeout;
        self
    }

    /// `[server] publish_indexes` (see [`publish_when_indexed`]).
    pub(crate) fn with_publish_indexes(mut self, publish: bool) -> Images {
        self.publish_indexes = publish;
        self
    }

    /// How registries are reached (the platform is set per node).
    pub(crate) fn registry_options(&self) -> &RegistryOptions {
        &self.registry
    }

    /// What every open image has fetched from its registry so far, and
    /// the cache's counters.
    pub(crate) fn gauges(&self) -> crate::metrics::Gauges {
        let slots: Vec<ViewSlot> = self.slots.lock().values().cloned().collect();
        let mut g = crate::metrics::Gauges::default();
        for slot in slots {
            // An image being opened right now counts at the next scrape.
            if let Ok(guard) = slot.try_lock() {
                if let Some(o) = guard.as_ref() {
                    let s = o.source().stats();
                    g.registry_requests += s.requests;
                    g.registry_bytes += s.bytes;
                }
            }
        }
        let c = self.cache.stats();
        g.cache_bytes = c.stored_bytes;
        g.cache_hits = c.hits;
        g.cache_misses = c.misses;
        g.cache_evictions = c.evicted_chunks;
        g.cache_corrupt = c.corrupt_chunks;
        g
    }

    /// The platform `node` boots: `--platform`, else the inventory's
    /// choice (see `nodes::platform`).
    pub(crate) fn platform_for(&self, node: &Node) -> Platform {
        match &self.platform {
            Some(p) => p.clone(),
            None => self.inventory.platform_of(node).0,
        }
    }

    fn slot(&self, node: &Node) -> ViewSlot {
        self.slots
            .lock()
            .entry((node.image.clone(), self.platform_for(node)))
            .or_default()
            .clone()
    }

    /// `node`'s image: resolved, its indexes being built (or done). An
    /// opening that failed is tried again.
    pub(crate) async fn opening_for(&self, node: &Node) -> Result<Arc<Opening>, ImageOpenError> {
        let slot = self.slot(node);
        let mut slot = slot.lock().await;
        if let Some(o) = slot.as_ref() {
            if !matches!(o.outcome(), Some(Err(_))) {
                return Ok(o.clone());
            }
        }
        let (source, resolved) = self.resolve(node).await?;
        let opening = self.start(source, resolved).await;
        *slot = Some(opening.clone());
        Ok(opening)
    }

    /// The view of `node`'s image, once every layer is indexed.
    pub(crate) async fn view_for(&self, node: &Node) -> Result<Arc<ImageView>, ImageOpenError> {
        let opening = self.opening_for(node).await?;
        opening
            .finished()
            .await
            .map_err(|source| ImageOpenError::View {
                image: node.image.clone(),
                source,
            })
    }

    /// Resolve `node`'s reference again (a tag may have moved to another
    /// manifest since) and switch to the new image if it did; requests
    /// made after this see the new image. Returns whether the image changed.
    pub(crate) async fn refresh(&self, node: &Node) -> Result<bool, ImageOpenError> {
        let slot = self.slot(node);
        let mut slot = slot.lock().await;
        let (source, resolved) = self.resolve(node).await?;
        if let Some(o) = slot.as_ref() {
            if o.image.manifest_digest == resolved.manifest_digest
                && !matches!(o.outcome(), Some(Err(_)))
            {
                return Ok(false);
            }
        }
        let changed = slot.is_some();
        let opening = self.start(source, resolved).await;
        if changed {
            tracing::info!(image = %node.image, manifest = %opening.image.manifest_digest, "image reference now points to a new manifest");
        }
        *slot = Some(opening);
        Ok(changed)
    }

    async fn start(
        &self,
        source: Source,
        resolved: crate::registry::ResolvedImage,
    ) -> Arc<Opening> {
        let opening = Opening::start(
            resolved,
            source,
            self.cache.clone(),
            self.read_timeout,
            &Progress::hidden(),
        )
        .await;
        if self.publish_indexes {
            publish_when_indexed(&opening);
        }
        opening
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
        let mut opts = self.registry.clone();
        opts.platform = self.platform_for(node);
        let why = match &self.platform {
            Some(_) => "--platform".to_string(),
            None => self.inventory.platform_of(node).1.to_string(),
        };
        tracing::info!(node = %node.name, "opening {} for {} (from {why})", node.image, opts.platform);
        Source::open(&reference, &opts)
            .await
            .map_err(|e| ImageOpenError::View {
                image: node.image.clone(),
                source: e.into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_claims_a_piece_of_work_once_at_a_time() {
        let claims = NodeClaims::default();
        let first = claims.claim("pc").unwrap();
        assert!(claims.claim("pc").is_none(), "under way already");
        let other = claims.claim("pi").unwrap();
        drop(first);
        assert!(claims.claim("pc").is_some(), "free again once dropped");
        drop(other);
        assert!(claims.0.lock().is_empty());
    }
}
