//! Nodes made from `[defaults]` for MACs that have not been given an
//! address yet.
//!
//! Anyone on the segment can send DHCP packets with any MAC, so a node made
//! for a MAC we have never bound an address to must cost nothing lasting:
//! it lives here, invisible to the rest of the inventory, until the DHCP
//! server binds an address to it ([`Inventory::accept`](super::Inventory::accept)).
//! The table holds at most `[defaults] max_pending` entries (the one seen
//! longest ago goes first when a new one comes) and forgets an entry
//! [`PENDING_TTL`] after its MAC was last heard from. It exists so that the
//! node a DISCOVER made (its kind, which only some packets tell) is the node
//! its REQUEST binds, and to remember whether boot firmware sent it.

use super::Node;
use crate::config::MacAddr;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a pending node is remembered after its MAC was last heard
/// from: as long as the DHCP server holds an address it offered
/// (`dhcp::leases::OFFER_HOLD_SECS`), so a client that takes its time
/// between DISCOVER and REQUEST still finds the node its DISCOVER made.
pub(crate) const PENDING_TTL: Duration = Duration::from_secs(120);

struct Entry {
    node: Arc<Node>,
    last_seen: Instant,
    /// Boot firmware (a PXE ROM, iPXE, U-Boot) sent one of its packets.
    boot_firmware: bool,
}

/// What is known of a pending MAC.
#[derive(Clone, Debug)]
pub(crate) struct PendingNode {
    pub(crate) node: Arc<Node>,
    pub(crate) boot_firmware: bool,
}

pub(super) struct PendingTable {
    cap: usize,
    ttl: Duration,
    entries: HashMap<MacAddr, Entry>,
}

impl PendingTable {
    pub(super) fn new(cap: usize, ttl: Duration) -> PendingTable {
        PendingTable {
            cap,
            ttl,
            entries: HashMap::new(),
        }
    }

    /// The pending node of `mac`, if it was heard from within the TTL; it
    /// counts as heard from again at `now`, by boot firmware if
    /// `boot_firmware`.
    pub(super) fn touch(
        &mut self,
        mac: MacAddr,
        boot_firmware: bool,
        now: Instant,
    ) -> Option<PendingNode> {
        let ttl = self.ttl;
        let e = self.entries.get_mut(&mac)?;
        if now.saturating_duration_since(e.last_seen) >= ttl {
            self.entries.remove(&mac);
            return None;
        }
        e.last_seen = e.last_seen.max(now);
        e.boot_firmware |= boot_firmware;
        Some(PendingNode {
            node: e.node.clone(),
            boot_firmware: e.boot_firmware,
        })
    }

    /// Remember `node` as pending, first dropping expired entries and, if
    /// the table is still full, the entry heard from longest ago. With a
    /// capacity of 0 nothing is remembered.
    pub(super) fn insert(&mut self, node: Arc<Node>, boot_firmware: bool, now: Instant) {
        if self.cap == 0 {
            return;
        }
        let ttl = self.ttl;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_seen) < ttl);
        while self.entries.len() >= self.cap {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(m, _)| *m);
            match oldest {
                Some(m) => self.entries.remove(&m),
                None => break,
            };
        }
        self.entries.insert(
            node.mac,
            Entry {
                node,
                last_seen: now,
                boot_firmware,
            },
        );
    }

    /// Forget `mac` (it was accepted); whether boot firmware spoke for it.
    pub(super) fn remove(&mut self, mac: MacAddr) -> bool {
        self.entries.remove(&mac).is_some_and(|e| e.boot_firmware)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}
