//! Tag following: for each group (or node outside a group) whose policy
//! says `follow`, ask the registry which digest its tag names (a HEAD
//! request), every `poll_secs`. The first answer is adopted as the digest
//! the nodes are pinned to, without a reboot; a later, different answer
//! starts a swap to it. A group follows the reference of its first node;
//! members assigned another image at run time are left out. Errors back off (doubling, up to 16 intervals); a
//! digest whose swap failed or was cancelled is not tried again until the
//! tag moves on; one whose swap a server stop interrupted is.

use super::model::SwapState;
use super::{Fleet, SwapRequest};
use crate::digest::Digest;
use crate::nodes::OnNewImage;
use crate::reference::ImageRef;
use crate::registry::Source;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the follower looks for targets that are due.
const TICK: Duration = Duration::from_millis(500);

/// What is followed: a group, or one node that is in no group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Target {
    Group(String),
    Node(String),
}

#[derive(Default)]
struct Due {
    next: Option<Instant>,
    errors: u32,
}

pub(super) async fn run(fleet: Arc<Fleet>) {
    let mut due: HashMap<Target, Due> = HashMap::new();
    loop {
        fleet.reconcile();
        for (target, poll) in targets(&fleet) {
            let d = due.entry(target.clone()).or_default();
            if d.next.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            let ok = poll_once(&fleet, &target).await;
            d.errors = if ok { 0 } else { (d.errors + 1).min(4) };
            d.next = Some(Instant::now() + poll * 2u32.pow(d.errors));
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Every followed target and its poll interval.
fn targets(fleet: &Fleet) -> Vec<(Target, Duration)> {
    let mut out = Vec::new();
    for g in &fleet.ctx.config.groups {
        let name = g.name.get_ref();
        if let Some(p) = fleet.group_policy(name).filter(|p| p.follow) {
            out.push((Target::Group(name.clone()), p.poll));
        }
    }
    for n in fleet.ctx.inventory.all() {
        let p = fleet.policy(&n);
        let group_follows = n
            .group
            .as_deref()
            .and_then(|g| fleet.group_policy(g))
            .is_some_and(|g| g.follow);
        if p.follow && !group_follows {
            out.push((Target::Node(n.name.clone()), p.poll));
        }
    }
    out
}

/// Poll `target`'s tag once; false on an error.
async fn poll_once(fleet: &Arc<Fleet>, target: &Target) -> bool {
    let nodes = match target {
        Target::Group(g) => fleet.members(g),
        Target::Node(n) => fleet.ctx.inventory.by_name(n).into_iter().collect(),
    };
    let Some(first) = nodes.first() else {
        return true;
    };
    let Some(image) = fleet.assigned(&first.name) else {
        return true;
    };
    // A group follows the reference of its first node; a member assigned
    // another image at run time is left alone.
    let nodes: Vec<_> = nodes
        .into_iter()
        .filter(|n| fleet.assigned(&n.name).as_deref() == Some(image.as_str()))
        .collect();
    let reference: ImageRef = match image.parse() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("following {image:?}: {e}");
            return false;
        }
    };
    if !matches!(
        reference,
        ImageRef::Remote {
            tag: Some(_),
            digest: None,
            ..
        }
    ) {
        // Only a tag can move.
        return true;
    }
    let opts = fleet.ctx.images.registry_options();
    let digest = match Source::current_digest(&reference, opts).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("following {image}: {e} (backing off)");
            return false;
        }
    };
    let now = digest.to_string();
    if nodes.iter().any(|n| fleet.swap_of(&n.name).is_some()) {
        return true;
    }
    let unpinned: Vec<_> = nodes
        .iter()
        .filter(|n| fleet.record(&n.name).digest.is_none())
        .collect();
    if unpinned.len() == nodes.len() {
        for n in unpinned {
            if let Err(e) = adopt(fleet, &n.name, &image, &digest) {
                tracing::warn!(node = %n.name, "following {image}: {e}");
                return false;
            }
        }
        tracing::info!("following {image}: at {now}");
        return true;
    }
    let behind = nodes
        .iter()
        .any(|n| fleet.record(&n.name).digest.as_deref() != Some(now.as_str()));
    let (node, group, name) = match target {
        Target::Group(g) => (None, Some(g.clone()), format!("group:{g}")),
        Target::Node(n) => (Some(n.clone()), None, format!("node:{n}")),
    };
    // A digest whose swap failed (or was cancelled) is not tried again,
    // also after a restart, until the tag moves on.
    let given_up = fleet.swaps().into_iter().any(|s| {
        s.target == name
            && s.digest.as_deref() == Some(now.as_str())
            && matches!(s.state, SwapState::Failed | SwapState::Cancelled)
    });
    if !behind || given_up {
        return true;
    }
    tracing::info!("following {image}: the tag moved to {now}; swapping");
    match fleet.start_swap(SwapRequest {
        node,
        group,
        image: image.clone(),
        max_unavailable: None,
        followed: true,
        only: Some(nodes.iter().map(|n| n.name.clone()).collect()),
    }) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!("following {image}: {e}");
            false
        }
    }
}

/// Pin a node to the digest its tag names when following starts.
fn adopt(fleet: &Fleet, name: &str, image: &str, digest: &Digest) -> Result<(), super::FleetError> {
    let mut rec = fleet.record(name);
    rec.digest = Some(digest.to_string());
    rec.config_image = fleet.configured_image(name);
    rec.assigned = Some(image.to_string());
    rec.on_new_image = OnNewImage::Wipe;
    fleet.put_record(name, rec)?;
    fleet.apply(name);
    Ok(())
}
