//! Each node's state as the API, the CLI, the dashboard and `/metrics`
//! show it, from the inventory, the recorder, the profiles and the swaps.

use super::model::{NodeRecord, NodeSwapState};
use super::Fleet;
use crate::nodes::Node;
use crate::profile::{BootProfile, BootedBy};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NodeState {
    /// Never booted (that this server saw).
    Unknown,
    /// A boot is in progress.
    Booting,
    /// Its latest boot ended with the node saying it booted (or going quiet).
    Up,
    /// Its image cannot be opened, or its latest boot failed.
    Failed,
    /// It is being rebooted into a new image by a swap.
    Swapping,
    /// It is assigned an image it has not booted yet (its next boot will).
    Pending,
}

impl NodeState {
    pub(crate) const ALL: [NodeState; 6] = [
        NodeState::Unknown,
        NodeState::Booting,
        NodeState::Up,
        NodeState::Failed,
        NodeState::Swapping,
        NodeState::Pending,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "unknown",
            NodeState::Booting => "booting",
            NodeState::Up => "up",
            NodeState::Failed => "failed",
            NodeState::Swapping => "swapping",
            NodeState::Pending => "pending",
        }
    }
}

/// `reference` in its canonical form without its `@digest` (so `alpine`
/// and `docker.io/library/alpine:latest@sha256:...` are the same).
fn unpinned(reference: &str) -> String {
    match reference.parse::<crate::reference::ImageRef>() {
        Ok(crate::reference::ImageRef::Remote {
            registry,
            repository,
            tag,
            digest: _,
        }) => crate::reference::ImageRef::Remote {
            registry,
            repository,
            tag,
            digest: None,
        }
        .to_string(),
        _ => reference.to_string(),
    }
}

impl Fleet {
    /// The state of `node` now.
    pub(crate) fn state_of(&self, node: &Node) -> NodeState {
        let latest = self.ctx.recorder.store().load(&node.name, None).ok();
        self.state_given(node, latest.as_ref(), &self.record(&node.name))
    }

    /// The state of `node`, whose latest boot profile and record the
    /// caller has read already.
    fn state_given(
        &self,
        node: &Node,
        latest: Option<&BootProfile>,
        rec: &NodeRecord,
    ) -> NodeState {
        let name = node.name.as_str();
        let in_swap = self.swaps.lock().values().any(|s| {
            s.state.is_running()
                && s.nodes
                    .iter()
                    .any(|n| n.name == name && n.state == NodeSwapState::Rebooting)
        });
        if in_swap {
            return NodeState::Swapping;
        }
        if self.ctx.inventory.failure(name).is_some() {
            return NodeState::Failed;
        }
        if self.ctx.recorder.in_progress(name) {
            return NodeState::Booting;
        }
        // A reference assigned at run time that its latest boot did not
        // use (pins aside: following a tag pins it without a change).
        if let (Some(assigned), Some(p)) = (&rec.assigned, latest) {
            if unpinned(&p.image) != unpinned(assigned) {
                return NodeState::Pending;
            }
        }
        if let Some(want) = &rec.manifest {
            let booted_it =
                latest.is_some_and(|p| p.booted.is_some() && p.manifest.as_ref() == Some(want));
            if !booted_it {
                return NodeState::Pending;
            }
        }
        match latest {
            Some(p) if p.booted.is_some() => NodeState::Up,
            Some(p) if !p.errors.is_empty() => NodeState::Failed,
            _ => NodeState::Unknown,
        }
    }

    /// `node` as the API shows it: its inventory entry, state, assignment
    /// and latest boot.
    pub(crate) fn node_json(&self, node: &Node) -> Value {
        let name = node.name.as_str();
        let store = self.ctx.recorder.store();
        let rec = self.record(name);
        let latest = store.load(name, None).ok();
        let booted_manifest = latest.as_ref().and_then(|p| p.manifest.clone());
        let pending_digest = rec.manifest.clone().filter(|m| {
            latest
                .as_ref()
                .is_none_or(|p| p.booted.is_none() || booted_manifest.as_ref() != Some(m))
        });
        json!({
            "node": node,
            "state": self.state_given(node, latest.as_ref(), &rec),
            "group": node.group,
            "assigned": self.assigned(name),
            "digest": rec.manifest.clone().or(booted_manifest),
            "pinned": rec.digest,
            "pending_digest": pending_digest,
            "previous": rec.previous,
            "address": self.ctx.inventory.ip_of(name).map(|a| a.to_string()),
            "last_lease": self.ctx.inventory.lease_of(node.mac),
            "boots_recorded": store.boots(name).len(),
            "booting": self.ctx.recorder.in_progress(name),
            "failed": self.ctx.inventory.failure(name),
            "swap": self.swap_of(name),
            "last_boot": latest.map(|p| {
                let result = match &p.booted {
                    Some(b) if matches!(b.how, BootedBy::Quiet { .. }) => "quiet",
                    Some(_) => "booted",
                    None if !p.errors.is_empty() => "failed",
                    None => "in_progress",
                };
                json!({
                    "boot": p.boot,
                    "started_unix_ms": p.started_unix_ms,
                    "booted_ms": p.booted.as_ref().map(|b| b.at_ms),
                    "result": result,
                    "manifest": p.manifest,
                    "profile": format!("/api/v1/nodes/{name}/profiles/{}", p.boot),
                })
            }),
        })
    }
}
