//! What the boot servers share: the configuration, the node inventory and
//! the image views (one per image and platform, over one chunk cache).
//! `main.rs` starts DHCP, TFTP and NFS with one `ServeContext`.

use crate::cache::ChunkCache;
use crate::config::{Config, NodeKind};
use crate::nodes::{Inventory, Node};
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::registry::{RegistryOptions, Source};
use crate::view::{ImageView, ViewError};
use std::collections::HashMap;
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
}

impl ServeContext {
    pub fn new(config: Config, cache: Arc<ChunkCache>) -> Arc<ServeContext> {
        let inventory = Arc::new(Inventory::from_config(&config));
        let images = Images::new(cache, config.server.insecure_registries.clone());
        Arc::new(ServeContext {
            server_ip: config.server.address,
            state_dir: config.server.state_dir.clone(),
            config,
            inventory,
            images,
        })
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

/// Image views by (reference, node kind): the kind picks the platform.
pub struct Images {
    cache: Arc<ChunkCache>,
    insecure: Vec<String>,
    views: tokio::sync::Mutex<HashMap<(String, NodeKind), Arc<ImageView>>>,
}

impl Images {
    pub fn new(cache: Arc<ChunkCache>, insecure: Vec<String>) -> Images {
        Images {
            cache,
            insecure,
            views: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The view of `node`'s image, opened (and its indexes built) on first use.
    pub async fn view_for(&self, node: &Node) -> Result<Arc<ImageView>, ImageOpenError> {
        let key = (node.image.clone(), node.kind);
        let mut views = self.views.lock().await;
        if let Some(v) = views.get(&key) {
            return Ok(v.clone());
        }
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
        let view_err = |source: ViewError| ImageOpenError::View {
            image: node.image.clone(),
            source,
        };
        let (source, resolved) = Source::open(&reference, &opts)
            .await
            .map_err(|e| view_err(e.into()))?;
        let view = ImageView::with_parts(
            resolved,
            source,
            self.cache.clone(),
            Duration::from_secs(60),
            &Progress::hidden(),
        )
        .await
        .map_err(view_err)?;
        views.insert(key, view.clone());
        Ok(view)
    }

    /// Views opened so far.
    pub async fn opened(&self) -> Vec<Arc<ImageView>> {
        self.views.lock().await.values().cloned().collect()
    }
}
