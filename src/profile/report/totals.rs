//! The numbers every rendering summarises a boot with: time per phase,
//! where the bytes came from, and which files waited on the registry.

use super::units::{human_ms, secs};
use crate::profile::model::{BootProfile, Summary, Wait};
use std::collections::BTreeMap;

/// The boot's phases in order, with "between phases" for time none of them
/// covers (e.g. DHCP ACK to the first TFTP request).
pub(crate) fn phases(s: &Summary) -> Vec<(&'static str, f64)> {
    let mut out = vec![
        ("DHCP (until address)", s.dhcp_ms),
        ("TFTP (boot files)", s.tftp_ms),
        ("kernel start-up", s.kernel_ms),
        (
            if s.finished {
                "NFS root until booted"
            } else {
                "NFS root (not finished)"
            },
            s.nfs_ms,
        ),
    ];
    let covered: f64 = out.iter().map(|(_, ms)| ms).sum();
    let rest = s.total_ms - covered;
    // Phases can overlap (a DHCP renew during NFS); only a gap is shown.
    if rest >= 0.5 {
        out.push(("between phases", rest));
    }
    out
}

pub(crate) fn percent(part: f64, total: f64) -> f64 {
    if total > 0.0 {
        part / total * 100.0
    } else {
        0.0
    }
}

/// What a warm cache would have saved: `(ms, percent of the boot)`.
/// Concurrent requests waiting on one fetch each count its time, so the sum
/// can exceed the boot; it is capped there.
pub(crate) fn warm_cache_saving(s: &Summary) -> (f64, f64) {
    let saved = s.registry_wait_ms.clamp(0.0, s.total_ms.max(0.0));
    (saved, percent(saved, s.total_ms))
}

pub(crate) fn saved_line(s: &Summary) -> String {
    let (saved, pct) = warm_cache_saving(s);
    format!(
        "a warm cache would have saved about {} s ({pct:.1}% of the boot)",
        secs(saved)
    )
}

/// Files (TFTP and NFS) by registry wait, longest first, those that waited only.
pub(crate) fn top_waits(p: &BootProfile, n: usize) -> Vec<(String, &Wait)> {
    let mut all: Vec<(String, &Wait)> = p
        .tftp
        .iter()
        .map(|t| (format!("tftp {}", t.file), &t.wait))
        .chain(
            p.nfs_files
                .iter()
                .map(|f| (format!("nfs {}", f.path), &f.wait)),
        )
        .filter(|(_, w)| w.registry_ms > 0.0)
        .collect();
    all.sort_by(|a, b| b.1.registry_ms.total_cmp(&a.1.registry_ms));
    all.truncate(n);
    all
}

/// Registry wait per file, summed over repeated transfers of one file.
pub(super) fn waits_by_file(p: &BootProfile) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for t in &p.tftp {
        *m.entry(format!("tftp {}", t.file)).or_insert(0.0) += t.wait.registry_ms;
    }
    for f in &p.nfs_files {
        *m.entry(format!("nfs {}", f.path)).or_insert(0.0) += f.wait.registry_ms;
    }
    m
}

/// Uncompressed bytes node requests (not the prefetcher) read, split into
/// `(from cache, fetched from the registry)`.
pub(crate) fn node_read_split(p: &BootProfile) -> (u64, u64) {
    let waits = p.tftp.iter().map(|t| &t.wait);
    let waits = waits.chain(p.nfs_files.iter().map(|f| &f.wait));
    waits.fold((0, 0), |(c, f), w| (c + w.cache_bytes, f + w.fetched_bytes))
}

pub(crate) fn prefetch_fetched_bytes(p: &BootProfile) -> u64 {
    p.fetches
        .iter()
        .filter(|f| f.by.starts_with("prefetch"))
        .map(|f| f.bytes)
        .sum()
}

pub(crate) fn ended(p: &BootProfile) -> String {
    match &p.booted {
        Some(b) => format!("booted at {}: {}", human_ms(b.at_ms), b.how.describe()),
        None => format!(
            "not finished (last event at {})",
            human_ms(p.last_event_ms())
        ),
    }
}
