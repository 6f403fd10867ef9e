//! `render_compare`: two boots side by side.

use super::totals::{ended, waits_by_file, warm_cache_saving};
use super::units::{
    human_bytes, human_bytes_signed, human_ms, human_ms_signed, printable, ratio, utc,
};
use super::TOP_FILES;
use crate::profile::model::BootProfile;
use std::fmt::Write as _;

/// Two boots side by side: phases and byte totals with their differences,
/// then the files whose registry wait changed most.
pub(crate) fn render_compare(a: &BootProfile, b: &BootProfile) -> String {
    let (sa, sb) = (a.summary(), b.summary());
    let mut out = String::new();
    for (tag, p) in [("A", a), ("B", b)] {
        let _ = writeln!(
            out,
            "{tag}: node {}, boot {}, {} ({})",
            printable(&p.node),
            p.boot,
            printable(&p.image),
            p.manifest
                .as_deref()
                .map_or("manifest unknown".into(), printable)
        );
        let _ = writeln!(
            out,
            "   started {}, {}",
            utc(p.started_unix_ms),
            printable(&ended(p))
        );
    }
    if a.manifest.is_some() && a.manifest != b.manifest {
        out.push_str("   (the boots used different manifests)\n");
    }
    out.push('\n');

    let header = |out: &mut String, title: &str| {
        let _ = writeln!(
            out,
            "{title:<28} {:>10} {:>10} {:>11} {:>7}",
            "A", "B", "B-A", "B/A"
        );
    };
    let time_row = |out: &mut String, name: &str, x: f64, y: f64| {
        let _ = writeln!(
            out,
            "  {name:<26} {:>10} {:>10} {:>11} {:>7}",
            human_ms(x),
            human_ms(y),
            human_ms_signed(y - x),
            ratio(x, y)
        );
    };
    header(&mut out, "time");
    time_row(&mut out, "DHCP (until address)", sa.dhcp_ms, sb.dhcp_ms);
    time_row(&mut out, "TFTP (boot files)", sa.tftp_ms, sb.tftp_ms);
    time_row(&mut out, "kernel start-up", sa.kernel_ms, sb.kernel_ms);
    time_row(&mut out, "NFS root until booted", sa.nfs_ms, sb.nfs_ms);
    time_row(&mut out, "total", sa.total_ms, sb.total_ms);
    time_row(
        &mut out,
        "waiting on the registry",
        sa.registry_wait_ms,
        sb.registry_wait_ms,
    );
    let (save_a, _) = warm_cache_saving(&sa);
    let (save_b, _) = warm_cache_saving(&sb);
    time_row(&mut out, "warm cache would save", save_a, save_b);
    if sa.finished != sb.finished {
        let which = if sa.finished { "B" } else { "A" };
        let _ = writeln!(
            out,
            "  ({which} did not finish: its total is its last event)"
        );
    }

    out.push('\n');
    header(&mut out, "bytes");
    let byte_row = |out: &mut String, name: &str, x: u64, y: u64| {
        let _ = writeln!(
            out,
            "  {name:<26} {:>10} {:>10} {:>11} {:>7}",
            human_bytes(x),
            human_bytes(y),
            human_bytes_signed(i128::from(y) - i128::from(x)),
            ratio(x as f64, y as f64)
        );
    };
    byte_row(
        &mut out,
        "registry, uncompressed",
        sa.registry_bytes,
        sb.registry_bytes,
    );
    byte_row(
        &mut out,
        "registry, downloaded",
        sa.registry_compressed_bytes,
        sb.registry_compressed_bytes,
    );
    byte_row(&mut out, "chunk cache", sa.cache_bytes, sb.cache_bytes);
    byte_row(&mut out, "served over TFTP", sa.tftp_bytes, sb.tftp_bytes);
    byte_row(&mut out, "served over NFS", sa.nfs_bytes, sb.nfs_bytes);

    out.push_str("\nFiles whose registry wait changed most\n");
    let (wa, wb) = (waits_by_file(a), waits_by_file(b));
    let mut changes: Vec<(&String, f64, f64)> = wa
        .keys()
        .chain(wb.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|k| {
            let x = wa.get(k).copied().unwrap_or(0.0);
            let y = wb.get(k).copied().unwrap_or(0.0);
            (k, x, y)
        })
        .filter(|(_, x, y)| x != y)
        .collect();
    changes.sort_by(|l, r| (r.2 - r.1).abs().total_cmp(&(l.2 - l.1).abs()));
    changes.truncate(TOP_FILES);
    if changes.is_empty() {
        out.push_str("  none\n");
    } else {
        let _ = writeln!(out, "  {:>10} {:>10} {:>11}  file", "A", "B", "B-A");
        for (name, x, y) in changes {
            let _ = writeln!(
                out,
                "  {:>10} {:>10} {:>11}  {}",
                human_ms(x),
                human_ms(y),
                human_ms_signed(y - x),
                printable(name)
            );
        }
    }
    out
}
