//! One swap, from start to end:
//!
//! 1. **Prepare.** Resolve the new reference to a digest, and open it for
//!    every platform the swap's nodes boot, waiting until each layer is
//!    indexed (and noting whether a learned prefetch plan exists). No node
//!    is touched before this succeeds, so every reboot is a cold start on
//!    warm indexes.
//! 2. **Roll.** Up to `max_unavailable` nodes at a time: pin the node to the
//!    new digest; run its reboot command; wait until it reports booted on
//!    the new manifest within the boot timeout. A node without a reboot
//!    command is only pinned: it boots the new image at its next boot
//!    (`pending`).
//! 3. **Stop on the first failure.** The failed node is set back to its
//!    previous image and rebooted into it; no further node is started; the
//!    swap ends `failed` with the reason.

use super::hook::{self, HookVars};
use super::model::{NodeSwapState, SwapState};
use super::Fleet;
use crate::digest::Digest;
use crate::image::prefetch::PrefetchPlan;
use crate::nodes::{Node, OnNewImage};
use crate::reference::ImageRef;
use crate::registry::Source;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a waiting swap looks at the node's boot profiles.
const POLL: Duration = Duration::from_millis(500);

pub(super) async fn run(fleet: Arc<Fleet>, id: u64, cancel: Arc<AtomicBool>) {
    let outcome = match prepare(&fleet, id).await {
        Ok((digest, pinned)) => roll(&fleet, id, &cancel, &digest, &pinned).await,
        Err(why) => Err(format!("preparing the image: {why}")),
    };
    let (state, message) = match outcome {
        Ok(()) if cancel.load(Ordering::SeqCst) => {
            (SwapState::Cancelled, Some("cancelled".to_string()))
        }
        Ok(()) => (SwapState::Done, None),
        Err(why) => (SwapState::Failed, Some(why)),
    };
    fleet.update_swap(id, |s| s.end(state, message.clone()));
    fleet.cancels.lock().remove(&id);
    match &message {
        Some(m) => tracing::warn!(swap = id, "swap ended {}: {m}", state.as_str()),
        None => tracing::info!(swap = id, "swap done"),
    }
}

/// Resolve and open the new image for each node's platform. Returns the
/// digest and the pinned reference.
async fn prepare(fleet: &Arc<Fleet>, id: u64) -> Result<(Option<Digest>, String), String> {
    let swap = fleet.swap(id).ok_or("the swap is gone")?;
    let reference: ImageRef = swap.image.parse().map_err(|e| format!("{e}"))?;
    let opts = fleet.ctx.images.registry_options().clone();
    let digest = match &reference {
        ImageRef::Remote { .. } => Some(
            Source::current_digest(&reference, &opts)
                .await
                .map_err(|e| e.to_string())?,
        ),
        ImageRef::Layout { .. } => None,
    };
    let pinned = super::pinned(&swap.image, digest.as_ref().map(|d| d.as_str()));
    fleet.update_swap(id, |s| {
        s.digest = digest.as_ref().map(|d| d.to_string());
        s.message = Some(format!("resolved to {pinned}; building indexes"));
    });
    let names: Vec<String> = swap.nodes.iter().map(|n| n.name.clone()).collect();
    let mut plans = 0;
    for (i, name) in names.iter().enumerate() {
        let node = fleet
            .ctx
            .inventory
            .by_name(name)
            .ok_or_else(|| format!("node {name:?} is gone"))?;
        let mut probe = (*node).clone();
        probe.image = pinned.clone();
        let view = fleet
            .ctx
            .images
            .view_for(&probe)
            .await
            .map_err(|e| format!("node {name}: {e}"))?;
        let manifest = view.manifest_digest().to_string();
        if PrefetchPlan::load(view.cache(), view.manifest_digest()).is_some() {
            plans += 1;
        }
        fleet.update_swap(id, |s| {
            if let Some(n) = s.node_mut(name) {
                n.to = Some(manifest);
            }
            s.message = Some(format!(
                "indexes ready for {}/{} node(s), {plans} with a learned prefetch plan",
                i + 1,
                names.len()
            ));
        });
    }
    fleet.update_swap(id, |s| s.state = SwapState::Rolling);
    Ok((digest, pinned))
}

/// Swap the nodes, `max_unavailable` at a time; stop at the first failure.
async fn roll(
    fleet: &Arc<Fleet>,
    id: u64,
    cancel: &Arc<AtomicBool>,
    digest: &Option<Digest>,
    pinned: &str,
) -> Result<(), String> {
    let swap = fleet.swap(id).ok_or("the swap is gone")?;
    let mut todo: std::collections::VecDeque<String> =
        swap.nodes.iter().map(|n| n.name.clone()).collect();
    let mut running = tokio::task::JoinSet::new();
    let mut failure: Option<String> = None;
    loop {
        while failure.is_none()
            && !cancel.load(Ordering::SeqCst)
            && running.len() < swap.max_unavailable
        {
            let Some(name) = todo.pop_front() else { break };
            let (f, image, digest, pinned) = (
                fleet.clone(),
                swap.image.clone(),
                digest.clone(),
                pinned.to_string(),
            );
            running.spawn(async move {
                let r = swap_node(&f, id, &name, &image, digest.as_ref(), &pinned).await;
                r.map_err(|e| format!("node {name}: {e}"))
            });
        }
        match running.join_next().await {
            None => break,
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(why))) => {
                failure.get_or_insert(why);
            }
            Some(Err(e)) => {
                failure.get_or_insert(format!("a node's swap task failed: {e}"));
            }
        }
    }
    match failure {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Swap one node; on failure it is rolled back before this returns.
async fn swap_node(
    fleet: &Arc<Fleet>,
    id: u64,
    name: &str,
    image: &str,
    digest: Option<&Digest>,
    pinned: &str,
) -> Result<(), String> {
    let node = fleet
        .ctx
        .inventory
        .by_name(name)
        .ok_or_else(|| "no longer in the inventory".to_string())?;
    let policy = fleet.policy(&node);
    let to = fleet
        .swap(id)
        .and_then(|s| s.nodes.iter().find(|n| n.name == name)?.to.clone())
        .and_then(|m| Digest::parse(&m).ok());
    // Without a reboot command there is no rollback to keep an upper for.
    let rule = match (policy.keep_upper, policy.reboot.is_some()) {
        (true, _) => OnNewImage::Carry,
        (false, true) => OnNewImage::SetAside,
        (false, false) => OnNewImage::Wipe,
    };
    fleet
        .pin(name, image, digest, to.as_ref(), rule)
        .map_err(|e| e.to_string())?;
    tracing::info!(swap = id, node = name, "swapping to {pinned}");
    let Some(argv) = &policy.reboot else {
        set(
            fleet,
            id,
            name,
            NodeSwapState::Pending,
            Some("boots the new image at its next boot".into()),
            None,
        );
        return Ok(());
    };
    let before = fleet.ctx.recorder.store().boots(name).last().copied();
    set(
        fleet,
        id,
        name,
        NodeSwapState::Rebooting,
        None,
        Some(before),
    );
    // A cancel stops the swap from starting further nodes; a node that
    // was rebooted already is waited for, so that it ends on a known image.
    let outcome = reboot_and_wait(fleet, &node, argv, &policy, before, to.as_ref()).await;
    match outcome {
        Ok(()) => {
            set(fleet, id, name, NodeSwapState::Booted, None, None);
            // The swap of this node succeeded: its old upper is not needed.
            let dir = crate::nfs::overlay::node_state_dir(&fleet.ctx.state_dir, name);
            if let Err(e) = crate::nfs::overlay::previous::drop_previous(&dir) {
                tracing::warn!(node = name, "dropping the upper kept for a rollback: {e}");
            }
            fleet.swap_ended(name).map_err(|e| e.to_string())?;
            Ok(())
        }
        Err(why) => {
            tracing::warn!(
                swap = id,
                node = name,
                "failed on the new image: {why}; rolling back"
            );
            let back = roll_back(fleet, &node, argv, &policy).await;
            if back.is_ok() {
                if let Err(e) = fleet.swap_ended(name) {
                    tracing::warn!(node = name, "{e}");
                }
            }
            let (state, message) = match back {
                Ok(()) => (
                    NodeSwapState::RolledBack,
                    format!("{why}; rolled back to its previous image"),
                ),
                Err(e) => (
                    NodeSwapState::Failed,
                    format!("{why}; the rollback failed too: {e}"),
                ),
            };
            set(fleet, id, name, state, Some(message), None);
            Err(why)
        }
    }
}

/// Set `name` back to its previous image, reboot it and wait for it to
/// come up there (its kept upper comes back at its mount).
async fn roll_back(
    fleet: &Arc<Fleet>,
    node: &Node,
    argv: &[String],
    policy: &crate::config::SwapPolicy,
) -> Result<(), String> {
    let previous = fleet.record(&node.name).previous.clone();
    fleet
        .roll_back_record(&node.name)
        .map_err(|e| e.to_string())?;
    let want = previous
        .and_then(|p| p.manifest)
        .and_then(|m| Digest::parse(&m).ok());
    let before = fleet.ctx.recorder.store().boots(&node.name).last().copied();
    reboot_and_wait(fleet, node, argv, policy, before, want.as_ref()).await
}

/// Run the reboot command, then wait for a boot after `before` that
/// reports booted on `want` (any manifest when `want` is None).
async fn reboot_and_wait(
    fleet: &Arc<Fleet>,
    node: &Node,
    argv: &[String],
    policy: &crate::config::SwapPolicy,
    before: Option<u64>,
    want: Option<&Digest>,
) -> Result<(), String> {
    let mac = node.mac.to_string();
    let vars = HookVars {
        name: &node.name,
        ip: fleet.ctx.inventory.ip_of(&node.name),
        mac: &mac,
    };
    let argv = hook::expand(argv, &vars).map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + policy.boot_timeout;
    hook::run(argv, policy.hook_timeout)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        if let Some(m) = fleet.booted_manifest_after(&node.name, before) {
            return match want {
                Some(w) if w.as_str() != m => Err(format!("it booted {m}, not {w}")),
                _ => Ok(()),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "it did not report booted within {} s",
                policy.boot_timeout.as_secs()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn set(
    fleet: &Fleet,
    id: u64,
    name: &str,
    state: NodeSwapState,
    message: Option<String>,
    boot_before: Option<Option<u64>>,
) {
    fleet.update_swap(id, |s| {
        if let Some(n) = s.node_mut(name) {
            n.state = state;
            if message.is_some() {
                n.message = message;
            }
            if let Some(b) = boot_before {
                n.boot_before = b;
            }
        }
    });
}
