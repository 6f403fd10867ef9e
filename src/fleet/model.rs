//! The fleet's records: what each node was assigned at run time, and each
//! swap with the state of every node in it. Stored as JSON in `db`,
//! served as JSON by the API.

use serde::{Deserialize, Serialize};

/// What the fleet keeps about a node beyond the config file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct NodeRecord {
    /// The reference assigned at run time (None: the config's).
    pub(crate) assigned: Option<String>,
    /// A group was set at run time: `group` (None: no group).
    pub(crate) group_set: bool,
    pub(crate) group: Option<String>,
    /// The config's image and group when the run-time values were set: a
    /// config edited since wins over them (see `Fleet::open`).
    pub(crate) config_image: Option<String>,
    pub(crate) config_group: Option<String>,
    /// The digest the node's reference is pinned to (an index or a
    /// manifest); None: the reference is resolved at each boot.
    pub(crate) digest: Option<String>,
    /// The manifest the node boots for its platform from that digest.
    pub(crate) manifest: Option<String>,
    /// The reference and digest before the latest swap.
    pub(crate) previous: Option<Pinned>,
    /// What the node's next mount of another image does with its upper
    /// (kept here, so that every application of the record agrees).
    pub(crate) on_new_image: crate::nodes::OnNewImage,
}

/// A reference and the digest it was pinned to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pinned {
    pub(crate) image: String,
    pub(crate) digest: Option<String>,
    pub(crate) manifest: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SwapState {
    /// Resolving the new image, building its indexes.
    Preparing,
    /// Rebooting nodes into it.
    Rolling,
    /// Every node boots the new image, or will at its next boot.
    Done,
    /// A node failed; it was rolled back and the swap stopped.
    Failed,
    Cancelled,
    /// The server stopped during the swap (see `Fleet::open`).
    Interrupted,
}

impl SwapState {
    pub(crate) const ALL: [SwapState; 6] = [
        SwapState::Preparing,
        SwapState::Rolling,
        SwapState::Done,
        SwapState::Failed,
        SwapState::Cancelled,
        SwapState::Interrupted,
    ];

    pub(crate) fn is_running(self) -> bool {
        matches!(self, SwapState::Preparing | SwapState::Rolling)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SwapState::Preparing => "preparing",
            SwapState::Rolling => "rolling",
            SwapState::Done => "done",
            SwapState::Failed => "failed",
            SwapState::Cancelled => "cancelled",
            SwapState::Interrupted => "interrupted",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NodeSwapState {
    /// Not reached yet.
    Waiting,
    /// Its reboot command ran; waiting for it to report booted.
    Rebooting,
    /// It booted the new image.
    Booted,
    /// No reboot command: it boots the new image at its next boot.
    Pending,
    /// It failed on the new image and was set back to the old one.
    RolledBack,
    /// It failed, and so did its rollback.
    Failed,
    /// The swap ended before it was reached.
    Skipped,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SwapNode {
    pub(crate) name: String,
    pub(crate) state: NodeSwapState,
    /// The manifest it booted before, and the one it is swapped to.
    pub(crate) from: Option<String>,
    pub(crate) to: Option<String>,
    pub(crate) message: Option<String>,
    /// Its newest boot number when its reboot command ran: a boot after it
    /// is the one that counts.
    #[serde(default)]
    pub(crate) boot_before: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SwapRecord {
    pub(crate) id: u64,
    /// `node:NAME` or `group:NAME`.
    pub(crate) target: String,
    pub(crate) image: String,
    /// The digest the image was resolved to.
    pub(crate) digest: Option<String>,
    pub(crate) state: SwapState,
    pub(crate) started_unix_ms: u64,
    pub(crate) ended_unix_ms: Option<u64>,
    pub(crate) message: Option<String>,
    pub(crate) max_unavailable: usize,
    /// Started because a followed tag moved.
    #[serde(default)]
    pub(crate) followed: bool,
    pub(crate) nodes: Vec<SwapNode>,
}

impl SwapRecord {
    pub(crate) fn new(id: u64, target: String, image: String, max_unavailable: usize) -> Self {
        SwapRecord {
            id,
            target,
            image,
            digest: None,
            state: SwapState::Preparing,
            started_unix_ms: now_ms(),
            ended_unix_ms: None,
            message: None,
            max_unavailable,
            followed: false,
            nodes: Vec::new(),
        }
    }

    pub(crate) fn node_mut(&mut self, name: &str) -> Option<&mut SwapNode> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }

    /// Nodes whose part is over.
    pub(crate) fn done(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| !matches!(n.state, NodeSwapState::Waiting | NodeSwapState::Rebooting))
            .count()
    }

    pub(crate) fn end(&mut self, state: SwapState, message: Option<String>) {
        self.state = state;
        self.ended_unix_ms = Some(now_ms());
        if message.is_some() {
            self.message = message;
        }
        for n in &mut self.nodes {
            if n.state == NodeSwapState::Waiting {
                n.state = NodeSwapState::Skipped;
            }
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
