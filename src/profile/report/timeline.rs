//! The waterfall's rows (every timeline item but the registry fetches) and
//! the helpers that lay out its time axis.

use super::units::{human_bytes, human_ms};
use crate::profile::model::{BootProfile, TftpOutcome, Wait};
use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ItemKind {
    Dhcp,
    Tftp,
    Mount,
    Nfs,
    Prefetch,
}

impl ItemKind {
    /// The word rows and CSS classes use; a mount is an NFS event.
    pub(crate) fn word(self) -> &'static str {
        match self {
            ItemKind::Dhcp => "dhcp",
            ItemKind::Tftp => "tftp",
            ItemKind::Mount | ItemKind::Nfs => "nfs",
            ItemKind::Prefetch => "prefetch",
        }
    }
}

/// One row of the waterfall. `name` and `detail` are raw profile text:
/// each renderer escapes them for its own output.
#[derive(Clone, Debug)]
pub(crate) struct Item<'a> {
    pub(crate) kind: ItemKind,
    pub(crate) start_ms: f64,
    /// Equal to `start_ms` for instants.
    pub(crate) end_ms: f64,
    pub(crate) instant: bool,
    pub(crate) name: String,
    pub(crate) detail: String,
    pub(crate) wait: Option<&'a Wait>,
}

impl Item<'_> {
    pub(crate) fn duration_ms(&self) -> f64 {
        (self.end_ms - self.start_ms).max(0.0)
    }

    /// Registry wait worth flagging (a request that only hit the cache has a
    /// `Wait` too).
    pub(crate) fn registry_wait(&self) -> Option<&Wait> {
        self.wait
            .filter(|w| w.registry_ms > 0.0 || w.fetched_bytes > 0)
    }

    pub(crate) fn label(&self) -> String {
        let mut s = match self.kind {
            ItemKind::Mount => format!("nfs mount {}", self.name),
            k => format!("{} {}", k.word(), self.name),
        };
        if !self.detail.is_empty() {
            s.push_str(" (");
            s.push_str(&self.detail);
            s.push(')');
        }
        s
    }
}

/// Every timeline item but the registry fetches, in start order (ties keep
/// the order DHCP, TFTP, mount, NFS files, prefetch, which is causal).
pub(crate) fn timeline(p: &BootProfile) -> Vec<Item<'_>> {
    let mut items = Vec::new();
    for d in &p.dhcp {
        let mut detail = Vec::new();
        if let Some(a) = &d.address {
            detail.push(format!("address {a}"));
        }
        if let Some(c) = &d.client {
            detail.push(c.clone());
        }
        if d.end_ms.is_none() {
            detail.push("no ACK".into());
        }
        items.push(Item {
            kind: ItemKind::Dhcp,
            start_ms: d.start_ms,
            end_ms: d.end_ms.unwrap_or(d.start_ms).max(d.start_ms),
            instant: d.end_ms.is_none(),
            name: d.messages.join(" "),
            detail: detail.join(", "),
            wait: None,
        });
    }
    for t in &p.tftp {
        let mut detail = vec![match t.outcome {
            TftpOutcome::Complete => format!("{}, complete", human_bytes(t.size)),
            TftpOutcome::Probe => format!("{}, size probe", human_bytes(t.size)),
            TftpOutcome::Incomplete => format!(
                "{} of {}, incomplete",
                human_bytes(t.bytes),
                human_bytes(t.size)
            ),
            TftpOutcome::Failed => "failed".into(),
        }];
        match t.retries {
            0 => {}
            1 => detail.push("1 retry".into()),
            n => detail.push(format!("{n} retries")),
        }
        if t.generated {
            detail.push("generated".into());
        }
        items.push(Item {
            kind: ItemKind::Tftp,
            start_ms: t.start_ms,
            end_ms: t.end_ms.max(t.start_ms),
            instant: false,
            name: t.file.clone(),
            detail: detail.join(", "),
            wait: Some(&t.wait),
        });
    }
    for m in &p.nfs_mounts {
        let mut detail = format!("from {}", m.client);
        if m.wait_ms >= 1.0 {
            let _ = write!(detail, ", waited {} for the image", human_ms(m.wait_ms));
        }
        items.push(Item {
            kind: ItemKind::Mount,
            start_ms: m.at_ms,
            end_ms: m.at_ms + m.wait_ms,
            instant: m.wait_ms < 1.0,
            name: m.export.clone(),
            detail,
            wait: None,
        });
    }
    for f in &p.nfs_files {
        let calls: u32 = f.ops.values().sum();
        let mut ops: Vec<(&String, &u32)> = f.ops.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut detail = format!(
            "{} read, {calls} call{}",
            human_bytes(f.bytes_read),
            if calls == 1 { "" } else { "s" }
        );
        if !ops.is_empty() {
            let top: Vec<String> = ops
                .iter()
                .take(3)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = write!(detail, ": {}", top.join(" "));
            if ops.len() > 3 {
                detail.push_str(" ...");
            }
        }
        items.push(Item {
            kind: ItemKind::Nfs,
            start_ms: f.first_ms,
            end_ms: f.last_ms.max(f.first_ms),
            instant: false,
            name: f.path.clone(),
            detail,
            wait: Some(&f.wait),
        });
    }
    if let Some(r) = &p.prefetch {
        let mut detail = format!("{} of {} chunks", r.fetched_chunks, r.planned_chunks);
        if !r.learned_from.is_empty() {
            let _ = write!(detail, ", learned from {}", r.learned_from);
        }
        if r.end_ms.is_none() {
            detail.push_str(", not finished");
        }
        items.push(Item {
            kind: ItemKind::Prefetch,
            start_ms: r.start_ms,
            // An unfinished run is drawn to the last thing that happened.
            end_ms: r
                .end_ms
                .unwrap_or_else(|| p.last_event_ms())
                .max(r.start_ms),
            instant: false,
            name: "run".into(),
            detail,
            wait: None,
        });
    }
    items.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    items
}

/// The right edge of the time axis: everything drawn must fit.
pub(crate) fn axis_end_ms(p: &BootProfile, items: &[Item]) -> f64 {
    let mut end = p.summary().total_ms;
    for i in items {
        end = end.max(i.end_ms);
    }
    for f in &p.fetches {
        end = end.max(f.start_ms + f.duration_ms);
    }
    if let Some(b) = &p.booted {
        end = end.max(b.at_ms);
    }
    if end.is_finite() && end > 0.0 {
        end
    } else {
        1.0
    }
}

/// The smallest 1, 2 or 5 times a power of ten that is at least `min`.
pub(crate) fn nice_step(min: f64) -> f64 {
    if !(min.is_finite() && min > 0.0) {
        return 1.0;
    }
    let mut p = 10f64.powf(min.log10().floor());
    loop {
        for m in [1.0, 2.0, 5.0] {
            if m * p >= min {
                return m * p;
            }
        }
        p *= 10.0;
    }
}

/// A tick label with no more digits than the tick step needs.
pub(crate) fn tick_label(t_ms: f64, step_ms: f64) -> String {
    if step_ms >= 1000.0 {
        let decimals = if (step_ms / 1000.0).fract() == 0.0 {
            0
        } else {
            1
        };
        format!("{:.*} s", decimals, t_ms / 1000.0)
    } else if step_ms >= 1.0 {
        format!("{t_ms:.0} ms")
    } else {
        format!("{t_ms:.1} ms")
    }
}
