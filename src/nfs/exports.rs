//! The exports: one `/nodes/NAME` per node of the inventory, each the node's
//! [`NodeOverlay`], usable only from the node's own address.
//!
//! - The export id is the first four bytes of sha256(node name), so file
//!   handles survive restarts. `get` (every NFS call) finds the node in a
//!   map by export id, rebuilt only when the inventory gains nodes.
//! - An overlay is opened on first use (mount or handle) and kept.
//! - `root = "ephemeral"`: at a MOUNT, if the node's boot generation (counted
//!   by DHCP) differs from the one its upper was last reset for, the upper is
//!   wiped first. The generation is kept in `state_dir/nodes/NAME/generation`;
//!   since the inventory counts boots from 0 again in every server process,
//!   a process counts its generations on from the number it found there.
//!   Handle use alone (`get`) never wipes: a node still running across a
//!   server restart keeps its files.

use super::fs::{Exports, MountError, Observed};
use super::overlay::previous::{switch_image, Switched};
use super::overlay::{node_state_dir, wipe_node_state};
use super::root::{NamesByImage, NodeRoot, RootSpec};
use crate::config::RootMode;
use crate::nodes::Node;
use crate::profile::recorder::NfsCall;
use crate::serve::ServeContext;
use parking_lot::{Mutex, RwLock};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The stable export id of node `name`.
pub(crate) fn export_id(name: &str) -> u32 {
    let h = Sha256::digest(name.as_bytes());
    u32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

#[derive(Default)]
struct Slot {
    overlay: Option<Arc<NodeRoot>>,
    /// The boot generation the upper was last reset for (ephemeral roots).
    reset_for: Option<u64>,
    /// The generation an earlier server process left on disk (0 if none),
    /// read at this process's first mount of the node: this process's boot
    /// count is added to it. Without it, a node that booted once before a
    /// restart and once after would be at "generation 1" both times and
    /// keep the previous boot's files.
    base: Option<u64>,
}

type SlotRef = Arc<tokio::sync::Mutex<Slot>>;

/// What a file handle's export id leads to.
#[derive(Clone)]
struct Export {
    node: Arc<Node>,
    slot: SlotRef,
}

/// Every node of the inventory by export id.
#[derive(Default)]
struct ExportIndex {
    /// The inventory version this was built from (nodes are added, or
    /// replaced when what they boot changes).
    version: Option<u64>,
    by_id: HashMap<u32, Export>,
}

pub(crate) struct NodeExports {
    ctx: Arc<ServeContext>,
    slots: Mutex<HashMap<String, SlotRef>>,
    /// The nodes file handles can name, for `get` on every NFS call.
    index: RwLock<ExportIndex>,
    /// Node names by export id, for the overlays opened so far.
    by_id: Mutex<HashMap<u32, (String, Arc<NodeRoot>)>>,
    names: Arc<NamesByImage>,
}

impl NodeExports {
    pub(crate) fn new(ctx: Arc<ServeContext>) -> NodeExports {
        NodeExports {
            ctx,
            slots: Mutex::new(HashMap::new()),
            index: RwLock::new(ExportIndex::default()),
            by_id: Mutex::new(HashMap::new()),
            names: Arc::default(),
        }
    }

    /// Where node `name` keeps its upper, index and generation.
    pub(crate) fn node_dir(&self, name: &str) -> PathBuf {
        node_state_dir(&self.ctx.state_dir, name)
    }

    fn slot(&self, name: &str) -> SlotRef {
        self.slots
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The export whose id is `id`. The index is rebuilt (hashing every
    /// node name once) only when the inventory changed since it was built.
    fn export(&self, id: u32) -> Option<Export> {
        let version = self.ctx.inventory.version();
        {
            let index = self.index.read();
            if index.version == Some(version) {
                return index.by_id.get(&id).cloned();
            }
        }
        let nodes = self.ctx.inventory.all();
        let mut by_id: HashMap<u32, Export> = HashMap::new();
        for node in &nodes {
            // The first node with an id wins, as a scan in inventory order
            // would find it.
            by_id
                .entry(export_id(&node.name))
                .or_insert_with(|| Export {
                    node: node.clone(),
                    slot: self.slot(&node.name),
                });
        }
        let found = by_id.get(&id).cloned();
        let mut index = self.index.write();
        // A concurrent rebuild may have seen a newer inventory: keep that one.
        if index.version.is_none_or(|v| v < version) {
            *index = ExportIndex {
                version: Some(version),
                by_id,
            };
        }
        found
    }

    fn check_client(&self, node: &Node, client: IpAddr) -> Result<(), MountError> {
        let client = match client {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => a.to_ipv4_mapped(),
        };
        match self.ctx.inventory.ip_of(&node.name) {
            Some(ip) if Some(ip) == client => Ok(()),
            _ => Err(MountError::Access),
        }
    }

    /// The node's root, made if needed; at a mount, an ephemeral upper
    /// is reset first when the node has booted again since. A root on an
    /// empty upper is handed out while its image still streams; any other
    /// opens its overlay (on the final view) first.
    async fn overlay_for(
        &self,
        node: &Node,
        slot: &SlotRef,
        at_mount: bool,
    ) -> Result<Arc<NodeRoot>, MountError> {
        let mut slot = slot.lock().await;
        let dir = self.node_dir(&node.name);
        if at_mount && node.root == RootMode::Ephemeral {
            if slot.base.is_none() {
                let persisted = read_generation(&dir).await;
                slot.base = Some(persisted.unwrap_or(0));
                slot.reset_for = persisted;
            }
            let generation =
                slot.base.unwrap_or(0) + self.ctx.inventory.boot_generation(&node.name);
            if slot.reset_for != Some(generation) {
                if let Some(old) = slot.overlay.take() {
                    old.retire();
                }
                let d = dir.clone();
                tokio::task::spawn_blocking(move || reset_upper(&d, generation))
                    .await
                    .map_err(|e| MountError::Unavailable(e.to_string()))?
                    .map_err(|e| {
                        MountError::Unavailable(format!(
                            "resetting {} for boot {generation}: {e}",
                            dir.display()
                        ))
                    })?;
                tracing::info!(node = %node.name, generation, "ephemeral root reset");
            }
            slot.reset_for = Some(generation);
        }
        if !at_mount {
            if let Some(o) = &slot.overlay {
                // A running node keeps the overlay (and image) it mounted:
                // a call needs no image lookup, and the boot's manifest was
                // recorded when it was mounted.
                return Ok(o.clone());
            }
        }
        let opening = self.ctx.opening_for(node).await.map_err(|e| {
            tracing::warn!(node = %node.name, "cannot open image: {e}");
            MountError::Unavailable(e.to_string())
        })?;
        let manifest = opening.image.manifest_digest.clone();
        if let Some(o) = &slot.overlay {
            // A node that is running keeps the image it booted; a new mount
            // (a new boot) after its image reference moved gets the new image.
            let moved = *o.manifest() != manifest;
            if !(at_mount && moved) {
                return Ok(o.clone());
            }
            slot.overlay.take().expect("checked above").retire();
        }
        if at_mount {
            // The upper records the image it was made against (also across
            // server restarts). Changes made against another image are
            // dropped, kept aside for a rollback during a swap, or carried
            // over (see `overlay::previous`).
            let (d, m, rule) = (dir.clone(), manifest.to_string(), node.on_new_image);
            let switched = tokio::task::spawn_blocking(move || switch_image(&d, &m, rule))
                .await
                .map_err(|e| MountError::Unavailable(e.to_string()))?
                .map_err(|e| {
                    MountError::Unavailable(format!(
                        "switching {} to {manifest}: {e}",
                        dir.display()
                    ))
                })?;
            if switched != Switched::Nothing {
                tracing::info!(node = %node.name, %manifest, "new image: root {switched:?}");
            }
        }
        // `verified_only`: no byte of a layer before its digest is checked.
        let early = !self.ctx.config.server.verified_only && upper_is_empty(&dir).await;
        let spec = RootSpec {
            node: node.name.clone(),
            dir,
            read_only: node.root == RootMode::Readonly,
            names: self.names.clone(),
            running: self.ctx.recorder.nfs_running(&node.name),
            errors: {
                let (recorder, name) = (self.ctx.recorder.clone(), node.name.clone());
                Arc::new(move |message: &str| recorder.note_error(&name, message))
            },
        };
        let root = Arc::new(NodeRoot::new(opening.clone(), spec, early));
        if !early || opening.outcome().is_some() {
            root.overlay()
                .await
                .map_err(|e| MountError::Unavailable(e.to_string()))?;
        }
        slot.overlay = Some(root.clone());
        self.by_id
            .lock()
            .insert(export_id(&node.name), (node.name.clone(), root.clone()));
        Ok(root)
    }
}

/// Whether the node's upper has no entry (or is not there): then nothing
/// can shadow the image, and its export may answer before the image is
/// open.
async fn upper_is_empty(dir: &Path) -> bool {
    match tokio::fs::read_dir(dir.join("upper")).await {
        Ok(mut entries) => matches!(entries.next_entry().await, Ok(None)),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

async fn read_generation(dir: &Path) -> Option<u64> {
    let text = tokio::fs::read_to_string(dir.join("generation"))
        .await
        .ok()?;
    text.trim().parse().ok()
}

/// Wipe the upper, then record `generation` (temp file + rename, so a crash
/// leaves the old number and the next mount wipes again).
fn reset_upper(dir: &Path, generation: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    wipe_node_state(dir)?;
    let tmp = dir.join("work").join("generation");
    std::fs::write(&tmp, format!("{generation}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join("generation"))
}

impl Exports for NodeExports {
    type Fs = NodeRoot;

    async fn mount(&self, path: &str, client: IpAddr) -> Result<(u32, Arc<NodeRoot>), MountError> {
        let trimmed = path.trim_end_matches('/');
        let name = trimmed
            .strip_prefix("/nodes/")
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .ok_or(MountError::NoEntry)?;
        let node = self
            .ctx
            .inventory
            .by_name(name)
            .ok_or(MountError::NoEntry)?;
        self.check_client(&node, client)?;
        let asked = std::time::Instant::now();
        let fs = self
            .overlay_for(&node, &self.slot(&node.name), true)
            .await?;
        self.ctx
            .recorder
            .nfs_mount(&node.name, trimmed, &client.to_string(), asked);
        Ok((export_id(&node.name), fs))
    }

    async fn get(&self, id: u32, client: IpAddr) -> Result<Arc<NodeRoot>, MountError> {
        let export = self.export(id).ok_or(MountError::NoEntry)?;
        self.check_client(&export.node, client)?;
        self.overlay_for(&export.node, &export.slot, false).await
    }

    fn observe(&self, _client: IpAddr, call: Observed) {
        let Some((export, id)) = call.trace.file else {
            return;
        };
        let Some((node, overlay)) = self.by_id.lock().get(&export).cloned() else {
            return;
        };
        if !self.ctx.recorder.in_progress(&node) {
            return;
        }
        let bytes_read = call.trace.bytes_out;
        self.ctx.recorder.nfs_call(
            &node,
            NfsCall {
                procedure: call.procedure,
                path: overlay.path_hint(id),
                started: call.started,
                bytes_read,
                trace: call.trace,
            },
        );
    }

    fn list(&self) -> Vec<String> {
        self.ctx
            .inventory
            .all()
            .iter()
            .map(|n| ServeContext::export_path(n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ChunkCache;
    use crate::config::Config;
    use crate::image::testimage::{LayerBuilder, TestImage};
    use crate::nfs::fs::{Cred, FsError, NodeFs};
    use std::net::Ipv4Addr;

    fn image() -> TestImage {
        let mut l = LayerBuilder::new();
        l.dir("etc", 0o755).file("etc/hostname", 0o644, b"node\n");
        TestImage::new(&[l.finish()])
    }

    fn context(img: &TestImage) -> Arc<ServeContext> {
        let node = |name: &str, mac: u8, image: &str, extra: &str| {
            format!(
                "[[nodes]]\nname = \"{name}\"\nmac = \"02:00:00:00:00:{mac:02x}\"\n\
                 kind = \"ipxe\"\nimage = \"{image}\"\n{extra}\n"
            )
        };
        let r = &img.reference;
        let text = format!(
            "[server]\ninterface = \"lo\"\naddress = \"127.0.0.1\"\nstate_dir = \"{}\"\n\
             [dhcp]\nmode = \"proxy\"\n{}{}{}{}{}",
            img.state_dir().display(),
            node("keep", 1, r, "ip = \"10.0.0.11\""),
            node("eph", 2, r, "ip = \"10.0.0.12\"\nroot = \"ephemeral\""),
            node("ro", 3, r, "ip = \"10.0.0.13\"\nroot = \"readonly\""),
            node("noip", 4, r, ""),
            node(
                "broken",
                5,
                "oci:/nonexistent/layout:t",
                "ip = \"10.0.0.15\""
            ),
        );
        let config = Config::parse(&text, "test.toml").unwrap();
        let cache = Arc::new(ChunkCache::open(&img.cache_dir(), 1 << 30).unwrap());
        ServeContext::new(config, cache)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn root() -> Cred {
        Cred {
            uid: 0,
            gid: 0,
            gids: vec![],
        }
    }

    #[tokio::test]
    async fn mount_checks_node_and_client_address() {
        let img = image();
        let ctx = context(&img);
        let ex = NodeExports::new(ctx.clone());
        let (id, fs) = ex.mount("/nodes/keep", ip(11)).await.unwrap();
        assert_eq!(id, export_id("keep"));
        assert!(!fs.read_only());
        let etc = fs.lookup(fs.root(), b"etc").await.unwrap();
        let f = fs.create(etc, b"mine", 0o644, &root(), true).await.unwrap();
        // Reused, also through a file handle's export id.
        let (_, again) = ex.mount("/nodes/keep/", ip(11)).await.unwrap();
        assert!(Arc::ptr_eq(&fs, &again));
        assert!(Arc::ptr_eq(&fs, &ex.get(id, ip(11)).await.unwrap()));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 11).to_ipv6_mapped());
        assert!(ex.mount("/nodes/keep", mapped).await.is_ok());

        assert_eq!(
            ex.mount("/nodes/keep", ip(12)).await.err(),
            Some(MountError::Access)
        );
        assert_eq!(ex.get(id, ip(12)).await.err(), Some(MountError::Access));
        assert_eq!(
            ex.mount("/nodes/nope", ip(11)).await.err(),
            Some(MountError::NoEntry)
        );
        assert_eq!(
            ex.mount("/srv/keep", ip(11)).await.err(),
            Some(MountError::NoEntry)
        );
        assert_eq!(
            ex.mount("/nodes/", ip(11)).await.err(),
            Some(MountError::NoEntry)
        );
        assert_eq!(
            ex.get(export_id("nope"), ip(11)).await.err(),
            Some(MountError::NoEntry)
        );
        // No known address: nobody may mount it.
        assert_eq!(
            ex.mount("/nodes/noip", ip(14)).await.err(),
            Some(MountError::Access)
        );
        assert!(matches!(
            ex.mount("/nodes/broken", ip(15)).await.err(),
            Some(MountError::Unavailable(_))
        ));
        let (_, ro) = ex.mount("/nodes/ro", ip(13)).await.unwrap();
        assert!(ro.read_only());
        assert_eq!(
            ro.mkdir(ro.root(), b"x", 0o755, &root()).await,
            Err(FsError::ReadOnly)
        );
        let mut list = ex.list();
        list.sort();
        assert_eq!(
            list,
            [
                "/nodes/broken",
                "/nodes/eph",
                "/nodes/keep",
                "/nodes/noip",
                "/nodes/ro"
            ]
        );

        // A restarted server finds the export and the file by their ids.
        let ex2 = NodeExports::new(context(&img));
        let fs2 = ex2.get(id, ip(11)).await.unwrap();
        assert!(!Arc::ptr_eq(&fs, &fs2));
        assert_eq!(fs2.getattr(f).await.unwrap().id, f);
        assert_eq!(fs2.lookup(etc, b"mine").await.unwrap(), f);
    }

    #[tokio::test]
    async fn handles_find_nodes_the_inventory_learns_later() {
        use crate::config::MacAddr;
        use crate::nodes::KindHint;
        let img = image();
        let text = format!(
            "[server]\ninterface = \"lo\"\naddress = \"127.0.0.1\"\nstate_dir = \"{}\"\n\
             [dhcp]\nmode = \"proxy\"\n\
             [defaults]\nunknown_nodes = \"defaults\"\nimage = \"{}\"\nkind = \"ipxe\"\n",
            img.state_dir().display(),
            img.reference,
        );
        let config = Config::parse(&text, "test.toml").unwrap();
        let cache = Arc::new(ChunkCache::open(&img.cache_dir(), 1 << 30).unwrap());
        let ctx = ServeContext::new(config, cache);
        let ex = NodeExports::new(ctx.clone());
        let id = export_id("node-020000000021");
        // Not a node yet: the handle names nothing.
        assert_eq!(ex.get(id, ip(21)).await.err(), Some(MountError::NoEntry));
        let mac = MacAddr::parse("02:00:00:00:00:21").unwrap();
        ctx.inventory.by_mac(mac, KindHint(None)).unwrap();
        ctx.inventory.learn_ip(mac, Ipv4Addr::new(10, 0, 0, 21));
        let fs = ex.get(id, ip(21)).await.unwrap();
        assert!(Arc::ptr_eq(&fs, &ex.get(id, ip(21)).await.unwrap()));
        // The client check still applies to nodes found this way.
        assert_eq!(ex.get(id, ip(22)).await.err(), Some(MountError::Access));
        assert_eq!(
            ex.get(export_id("nope"), ip(21)).await.err(),
            Some(MountError::NoEntry)
        );
    }

    #[tokio::test]
    async fn ephemeral_upper_is_reset_at_each_boot() {
        let img = image();
        let ctx = context(&img);
        let ex = NodeExports::new(ctx.clone());
        for name in ["eph", "keep"] {
            ctx.inventory.boot_started(name);
        }
        let (_, eph) = ex.mount("/nodes/eph", ip(12)).await.unwrap();
        let (_, keep) = ex.mount("/nodes/keep", ip(11)).await.unwrap();
        let e = eph
            .create(eph.root(), b"e", 0o644, &root(), true)
            .await
            .unwrap();
        let k = keep
            .create(keep.root(), b"k", 0o644, &root(), true)
            .await
            .unwrap();
        // Mounting again within the same boot keeps the files.
        let (_, same) = ex.mount("/nodes/eph", ip(12)).await.unwrap();
        assert!(Arc::ptr_eq(&eph, &same));
        assert_eq!(same.lookup(same.root(), b"e").await.unwrap(), e);

        for name in ["eph", "keep"] {
            ctx.inventory.boot_started(name);
        }
        // Handles alone do not reset anything.
        assert!(ex.get(export_id("eph"), ip(12)).await.is_ok());
        let (_, eph2) = ex.mount("/nodes/eph", ip(12)).await.unwrap();
        assert_eq!(eph2.lookup(eph2.root(), b"e").await, Err(FsError::NotFound));
        assert_eq!(eph2.getattr(e).await, Err(FsError::Stale));
        assert_eq!(eph.getattr(eph.root()).await, Err(FsError::Stale));
        assert_eq!(
            std::fs::read_to_string(ex.node_dir("eph").join("generation")).unwrap(),
            "2\n"
        );
        let (_, keep2) = ex.mount("/nodes/keep", ip(11)).await.unwrap();
        assert_eq!(keep2.lookup(keep2.root(), b"k").await.unwrap(), k);
        // The image is still there underneath.
        let etc = eph2.lookup(eph2.root(), b"etc").await.unwrap();
        assert!(eph2.lookup(etc, b"hostname").await.is_ok());
    }

    #[tokio::test]
    async fn ephemeral_upper_is_reset_at_the_first_boot_after_a_restart() {
        let img = image();
        let ctx = context(&img);
        let ex = NodeExports::new(ctx.clone());
        ctx.inventory.boot_started("eph");
        let (_, eph) = ex.mount("/nodes/eph", ip(12)).await.unwrap();
        eph.create(eph.root(), b"e", 0o644, &root(), true)
            .await
            .unwrap();
        drop((eph, ex));

        // A new server process: its inventory counts boots from 0 again.
        let ctx = context(&img);
        let ex = NodeExports::new(ctx.clone());
        // The node did not boot again: a mount keeps its files.
        let (_, same) = ex.mount("/nodes/eph", ip(12)).await.unwrap();
        assert!(same.lookup(same.root(), b"e").await.is_ok());
        // Its first boot seen by this process is a new boot all the same.
        ctx.inventory.boot_started("eph");
        let (_, next) = ex.mount("/nodes/eph", ip(12)).await.unwrap();
        assert_eq!(next.lookup(next.root(), b"e").await, Err(FsError::NotFound));
        assert_eq!(
            std::fs::read_to_string(ex.node_dir("eph").join("generation")).unwrap(),
            "2\n"
        );
    }
}
