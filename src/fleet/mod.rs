//! Fleet control: what each node is assigned at run time, swaps of nodes
//! onto a new image (with a reboot command, a boot deadline and rollback),
//! and tags followed by polling the registry.
//!
//! - **Records** ([`model::NodeRecord`]) hold what the API and CLI changed
//!   and the digest each node is pinned to; they live in `db` (redb) and
//!   are applied to the inventory: a node's `image` becomes
//!   `REFERENCE@DIGEST`, so every server opens the pinned image.
//! - **Precedence**: the config file is the source for what it names. A
//!   run-time value replaces the config's value and survives restarts as
//!   long as the config's own value stays what it was when the run-time one
//!   was set; once the file is edited, the file wins (see [`Fleet::open`]).
//! - **Swaps**: [`swap`]. **Following**: [`follow`].
//! - A swap in progress when the server stops is marked `interrupted` at the
//!   next start: nodes that booted the new image keep it, a node caught
//!   rebooting into it is set back to its previous image (it boots that at
//!   its next boot), nodes not reached were never changed.

pub(crate) mod db;
mod follow;
pub(crate) mod groups;
pub(crate) mod hook;
pub(crate) mod model;
mod state;
mod swap;

use crate::config::{check_name, SwapPolicy};
use crate::digest::Digest;
use crate::nodes::{Node, OnNewImage};
use crate::reference::ImageRef;
use crate::serve::ServeContext;
use db::{Db, DbError};
use model::{NodeRecord, NodeSwapState, SwapNode, SwapRecord, SwapState};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub(crate) use state::NodeState;

#[derive(Debug, thiserror::Error)]
pub(crate) enum FleetError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("no node {0:?}")]
    NoNode(String),
    #[error("no group {0:?}")]
    NoGroup(String),
    #[error("group {0:?} has no nodes")]
    EmptyGroup(String),
    #[error("no swap {0}")]
    NoSwap(u64),
    #[error("image reference {image:?}: {message}")]
    BadImage { image: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("node {node:?} is in swap {swap}, which is still running")]
    Busy { node: String, swap: u64 },
    #[error("swap {0} has ended already")]
    Ended(u64),
}

/// What a swap is asked to do.
#[derive(Clone, Debug)]
pub(crate) struct SwapRequest {
    /// One node, or every node of a group.
    pub(crate) node: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) image: String,
    /// Over the group's `max_unavailable`.
    pub(crate) max_unavailable: Option<usize>,
    pub(crate) followed: bool,
    /// Of the group, only these nodes.
    pub(crate) only: Option<Vec<String>>,
}

pub(crate) struct Fleet {
    pub(crate) ctx: Arc<ServeContext>,
    db: Db,
    records: Mutex<HashMap<String, NodeRecord>>,
    groups: Mutex<HashMap<String, groups::GroupRecord>>,
    swaps: Mutex<BTreeMap<u64, SwapRecord>>,
    /// Set to stop a running swap.
    cancels: Mutex<HashMap<u64, Arc<AtomicBool>>>,
}

impl Fleet {
    /// Open the fleet database in the state directory and apply what it
    /// holds to the inventory: run-time assignments the config file has
    /// not overridden since, and the end of swaps a stop interrupted.
    pub(crate) fn open(ctx: Arc<ServeContext>) -> Result<Arc<Fleet>, FleetError> {
        let db = Db::open(&ctx.state_dir.join("fleet.redb"))?;
        let mut records: HashMap<String, NodeRecord> = db.nodes()?.into_iter().collect();
        for (name, rec) in records.iter_mut() {
            if config_wins(&ctx, name, rec) {
                db.put_node(name, rec)?;
            }
        }
        let swaps: BTreeMap<u64, SwapRecord> = db.swaps()?.into_iter().map(|s| (s.id, s)).collect();
        let groups = db.groups()?.into_iter().collect();
        let fleet = Arc::new(Fleet {
            ctx,
            db,
            records: Mutex::new(records),
            groups: Mutex::new(groups),
            swaps: Mutex::new(swaps),
            cancels: Mutex::new(HashMap::new()),
        });
        fleet.reconcile();
        fleet.groups_config_wins()?;
        fleet.end_interrupted()?;
        Ok(fleet)
    }

    /// Start the tag followers (they run until the process ends).
    pub(crate) fn start(self: &Arc<Self>) {
        tokio::spawn(follow::run(self.clone()));
    }

    /// Swaps that were running when the server stopped (see the module doc).
    fn end_interrupted(&self) -> Result<(), FleetError> {
        let running: Vec<SwapRecord> = self
            .swaps
            .lock()
            .values()
            .filter(|s| s.state.is_running())
            .cloned()
            .collect();
        for mut s in running {
            for n in &mut s.nodes {
                if n.state != NodeSwapState::Rebooting {
                    continue;
                }
                if n.to.is_some() && self.booted_manifest_after(&n.name, n.boot_before) == n.to {
                    n.state = NodeSwapState::Booted;
                    continue;
                }
                self.roll_back_record(&n.name)?;
                n.state = NodeSwapState::RolledBack;
                n.message = Some(
                    "the server stopped while it rebooted: set back to its previous image, \
                     which it boots at its next boot"
                        .into(),
                );
            }
            s.end(
                SwapState::Interrupted,
                Some("the server stopped during the swap; start it again to go on".into()),
            );
            tracing::warn!(swap = s.id, "swap interrupted by a server stop");
            self.save_swap(s)?;
        }
        Ok(())
    }

    /// The swap policy of `node` (its keys over its group's).
    pub(crate) fn policy(&self, node: &Node) -> SwapPolicy {
        let conf = self.ctx.config.node(&node.name);
        node.group
            .as_deref()
            .and_then(|g| self.group_policy(g))
            .unwrap_or_default()
            .for_node(conf)
    }

    /// The record of `name` (empty if nothing was set at run time).
    pub(crate) fn record(&self, name: &str) -> NodeRecord {
        self.records.lock().get(name).cloned().unwrap_or_default()
    }

    fn put_record(&self, name: &str, rec: NodeRecord) -> Result<(), FleetError> {
        self.db.put_node(name, &rec)?;
        self.records.lock().insert(name.to_string(), rec);
        Ok(())
    }

    /// The reference `name` is assigned, unpinned: the run-time one, else
    /// the config's, else `[defaults]`'.
    pub(crate) fn assigned(&self, name: &str) -> Option<String> {
        let cfg = &self.ctx.config;
        self.record(name)
            .assigned
            .or_else(|| self.configured_image(name))
            .or_else(|| cfg.defaults.as_ref().and_then(|d| d.image.clone()))
    }

    /// The image the config file gives node `name` (None: not in the file).
    pub(crate) fn configured_image(&self, name: &str) -> Option<String> {
        Some(self.ctx.config.node(name)?.image.clone())
    }

    fn configured_group(&self, name: &str) -> Option<String> {
        let g = self.ctx.config.node(name)?.group.as_ref()?;
        Some(g.get_ref().clone())
    }

    /// Put `name`'s record into the inventory: the reference it boots
    /// (pinned when the record has a digest), its group, and what a mount
    /// of another image does with its upper.
    pub(crate) fn apply(&self, name: &str) {
        let Some(node) = self.ctx.inventory.by_name(name) else {
            return;
        };
        let rec = self.record(name);
        let Some(assigned) = self.assigned(name) else {
            return;
        };
        let mut n = (*node).clone();
        n.image = pinned(&assigned, rec.digest.as_deref());
        n.group = match rec.group_set {
            true => rec.group.clone(),
            false => self.configured_group(name),
        };
        n.on_new_image = rec.on_new_image;
        if n != *node {
            self.ctx.inventory.replace(n);
        }
    }

    /// Apply the records of nodes the inventory has gained since (nodes made
    /// from `[defaults]` come back only when their machine asks DHCP).
    pub(crate) fn reconcile(&self) {
        let names: Vec<String> = self.records.lock().keys().cloned().collect();
        for name in names {
            self.apply(&name);
        }
    }

    /// Change what `name` boots or its group (API `PUT /nodes/NAME`, CLI
    /// `nodes set`). A new image is resolved at the node's next boot.
    pub(crate) fn set_node(
        &self,
        name: &str,
        image: Option<String>,
        group: Option<Option<String>>,
    ) -> Result<(), FleetError> {
        let node = self
            .ctx
            .inventory
            .by_name(name)
            .ok_or_else(|| FleetError::NoNode(name.into()))?;
        if let Some(s) = self.swap_of(name) {
            return Err(FleetError::Busy {
                node: name.into(),
                swap: s,
            });
        }
        let mut rec = self.record(name);
        if let Some(image) = image {
            check_image(&image)?;
            rec.config_image = self.configured_image(name);
            rec.previous = Some(model::Pinned {
                image: self.assigned(name).unwrap_or_default(),
                digest: rec.digest.take(),
                manifest: rec.manifest.take(),
            });
            rec.assigned = Some(image);
        }
        if let Some(group) = group {
            if let Some(g) = &group {
                check_name(g).map_err(FleetError::Invalid)?;
                if self.ctx.config.group(g).is_none() {
                    return Err(FleetError::NoGroup(g.clone()));
                }
            }
            rec.config_group = self.configured_group(name);
            rec.group = group;
            rec.group_set = true;
        }
        rec.on_new_image = OnNewImage::Wipe;
        self.put_record(&node.name, rec)?;
        self.apply(name);
        Ok(())
    }

    /// The running swap `name` is part of, if any.
    pub(crate) fn swap_of(&self, name: &str) -> Option<u64> {
        running_swap_of(&self.swaps.lock(), name)
    }

    /// The nodes of group `g` (as the inventory has them now).
    pub(crate) fn members(&self, g: &str) -> Vec<Arc<Node>> {
        self.ctx
            .inventory
            .all()
            .into_iter()
            .filter(|n| n.group.as_deref() == Some(g))
            .collect()
    }

    /// Check the request, record the swap and start it in the background.
    pub(crate) fn start_swap(self: &Arc<Self>, req: SwapRequest) -> Result<u64, FleetError> {
        check_image(&req.image)?;
        let (target, nodes) = match (&req.node, &req.group) {
            (Some(n), None) => {
                let node = self
                    .ctx
                    .inventory
                    .by_name(n)
                    .ok_or_else(|| FleetError::NoNode(n.clone()))?;
                (format!("node:{n}"), vec![node])
            }
            (None, Some(g)) => {
                if self.ctx.config.group(g).is_none() {
                    return Err(FleetError::NoGroup(g.clone()));
                }
                let mut members = self.members(g);
                if let Some(only) = &req.only {
                    members.retain(|n| only.contains(&n.name));
                }
                if members.is_empty() {
                    return Err(FleetError::EmptyGroup(g.clone()));
                }
                (format!("group:{g}"), members)
            }
            _ => return Err(FleetError::Invalid("name one node or one group".into())),
        };
        if let Some(m) = req.max_unavailable {
            if m == 0 {
                return Err(FleetError::Invalid(
                    "max_unavailable must be at least 1".into(),
                ));
            }
        }
        let max = req
            .max_unavailable
            .unwrap_or_else(|| self.policy(&nodes[0]).max_unavailable);
        let (id, cancel) = {
            let mut swaps = self.swaps.lock();
            // Checked under the lock the new swap is recorded under, so two
            // requests cannot both take a node.
            for n in &nodes {
                if let Some(swap) = running_swap_of(&swaps, &n.name) {
                    return Err(FleetError::Busy {
                        node: n.name.clone(),
                        swap,
                    });
                }
            }
            let id = swaps.keys().next_back().map_or(1, |i| i + 1);
            let mut rec = SwapRecord::new(id, target, req.image.clone(), max);
            rec.followed = req.followed;
            rec.nodes = nodes
                .iter()
                .map(|n| SwapNode {
                    name: n.name.clone(),
                    state: NodeSwapState::Waiting,
                    from: self.record(&n.name).manifest,
                    to: None,
                    message: None,
                    boot_before: None,
                })
                .collect();
            self.db.put_swap(&rec)?;
            swaps.insert(id, rec);
            let cancel = Arc::new(AtomicBool::new(false));
            self.cancels.lock().insert(id, cancel.clone());
            (id, cancel)
        };
        tracing::info!(swap = id, image = %req.image, "swap started");
        tokio::spawn(swap::run(self.clone(), id, cancel));
        Ok(id)
    }

    pub(crate) fn swaps(&self) -> Vec<SwapRecord> {
        self.swaps.lock().values().rev().cloned().collect()
    }

    /// How many swaps are in each state, every state named.
    pub(crate) fn swaps_by_state(&self) -> Vec<(&'static str, u64)> {
        let swaps = self.swaps.lock();
        model::SwapState::ALL
            .iter()
            .map(|st| {
                let n = swaps.values().filter(|s| s.state == *st).count() as u64;
                (st.as_str(), n)
            })
            .collect()
    }

    pub(crate) fn swap(&self, id: u64) -> Option<SwapRecord> {
        self.swaps.lock().get(&id).cloned()
    }

    /// Stop swap `id`: no further node is started; nodes rebooting now
    /// finish (or roll back) first.
    pub(crate) fn cancel(&self, id: u64) -> Result<(), FleetError> {
        let s = self.swap(id).ok_or(FleetError::NoSwap(id))?;
        if !s.state.is_running() {
            return Err(FleetError::Ended(id));
        }
        if let Some(c) = self.cancels.lock().get(&id) {
            c.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    /// Change swap `id` and store it.
    fn update_swap(&self, id: u64, f: impl FnOnce(&mut SwapRecord)) {
        let rec = {
            let mut swaps = self.swaps.lock();
            let Some(s) = swaps.get_mut(&id) else { return };
            f(s);
            s.clone()
        };
        if let Err(e) = self.db.put_swap(&rec) {
            tracing::error!(swap = id, "could not store the swap's state: {e}");
        }
    }

    fn save_swap(&self, rec: SwapRecord) -> Result<(), FleetError> {
        self.db.put_swap(&rec)?;
        self.swaps.lock().insert(rec.id, rec);
        Ok(())
    }

    /// Pin `name` to `image` at `digest` (booting `manifest`), keeping what
    /// it had as `previous`.
    fn pin(
        &self,
        name: &str,
        image: &str,
        digest: Option<&Digest>,
        manifest: Option<&Digest>,
        on_new_image: OnNewImage,
    ) -> Result<(), FleetError> {
        let mut rec = self.record(name);
        // A node never pinned is set back to the manifest it last booted
        // (a platform's manifest pins as well as an index), not to its tag,
        // which may have moved on to the image that failed.
        let booted = self.booted_manifest_after(name, None);
        let old_digest = rec.digest.take().or_else(|| booted.clone());
        rec.previous = Some(model::Pinned {
            image: self.assigned(name).unwrap_or_default(),
            digest: old_digest,
            manifest: rec.manifest.take().or(booted),
        });
        rec.config_image = self.configured_image(name);
        rec.assigned = Some(image.to_string());
        rec.digest = digest.map(|d| d.to_string());
        rec.manifest = manifest.map(|d| d.to_string());
        rec.on_new_image = on_new_image;
        self.put_record(name, rec)?;
        self.apply(name);
        Ok(())
    }

    /// `name`'s swap is over: its next mount of another image wipes again.
    fn swap_ended(&self, name: &str) -> Result<(), FleetError> {
        let mut rec = self.record(name);
        rec.on_new_image = OnNewImage::Wipe;
        self.put_record(name, rec)?;
        self.apply(name);
        Ok(())
    }

    /// Set `name` back to the reference and digest it had before its
    /// latest swap.
    fn roll_back_record(&self, name: &str) -> Result<(), FleetError> {
        let mut rec = self.record(name);
        let Some(prev) = rec.previous.take() else {
            return Ok(());
        };
        rec.assigned = Some(prev.image);
        rec.digest = prev.digest;
        rec.manifest = prev.manifest;
        // An upper kept aside comes back at the next mount whatever the
        // rule; one carried over to the new image is carried back.
        if rec.on_new_image != OnNewImage::Carry {
            rec.on_new_image = OnNewImage::Wipe;
        }
        self.put_record(name, rec)?;
        self.apply(name);
        Ok(())
    }

    /// The manifest of `name`'s newest boot after boot number `after`, if
    /// that boot ended with the node saying it booted (a boot that merely
    /// went quiet does not count: a kernel that panics goes quiet too).
    fn booted_manifest_after(&self, name: &str, after: Option<u64>) -> Option<String> {
        let store = self.ctx.recorder.store();
        let latest = *store.boots(name).last()?;
        if after.is_some_and(|a| latest <= a) {
            return None;
        }
        let p = store.load(name, Some(latest)).ok()?;
        match p.booted?.how {
            crate::profile::BootedBy::Quiet { .. } => None,
            _ => p.manifest,
        }
    }
}

/// `reference` pinned to `digest` (a registry reference keeps its tag, for
/// people reading it); an `oci:` layout has no pinning and is resolved at
/// each boot.
pub(crate) fn pinned(reference: &str, digest: Option<&str>) -> String {
    let (
        Some(d),
        Ok(ImageRef::Remote {
            registry,
            repository,
            tag,
            ..
        }),
    ) = (
        digest.and_then(|d| Digest::parse(d).ok()),
        reference.parse::<ImageRef>(),
    )
    else {
        return reference.to_string();
    };
    ImageRef::Remote {
        registry,
        repository,
        tag,
        digest: Some(d),
    }
    .to_string()
}

/// The running swap of `swaps` that node `name` is part of.
fn running_swap_of(swaps: &BTreeMap<u64, SwapRecord>, name: &str) -> Option<u64> {
    swaps
        .values()
        .find(|s| s.state.is_running() && s.nodes.iter().any(|n| n.name == name))
        .map(|s| s.id)
}

fn check_image(image: &str) -> Result<(), FleetError> {
    image
        .parse::<ImageRef>()
        .map(|_| ())
        .map_err(|e| FleetError::BadImage {
            image: image.into(),
            message: e.to_string(),
        })
}

/// Drop the run-time values of `rec` that the config file overrides now:
/// its value for the key changed since they were set. Returns whether
/// `rec` changed.
fn config_wins(ctx: &ServeContext, name: &str, rec: &mut NodeRecord) -> bool {
    let Some(conf) = ctx.config.node(name) else {
        return false;
    };
    let mut changed = false;
    if rec.assigned.is_some() && rec.config_image.as_deref() != Some(conf.image.as_str()) {
        tracing::info!(
            node = name,
            "the config file's image changed since {:?} was assigned at run time: {:?} wins",
            rec.assigned.as_deref().unwrap_or_default(),
            conf.image
        );
        rec.assigned = None;
        rec.digest = None;
        rec.manifest = None;
        rec.config_image = None;
        changed = true;
    }
    let conf_group = conf.group.as_ref().map(|g| g.get_ref().clone());
    if rec.group_set && rec.config_group != conf_group {
        tracing::info!(
            node = name,
            "the config file's group changed: it wins over the run-time one"
        );
        rec.group_set = false;
        rec.group = None;
        rec.config_group = None;
        changed = true;
    }
    changed
}
