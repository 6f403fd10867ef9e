//! The tables under the chart: where the time went, where the bytes came
//! from, and the files that waited longest on the registry.

use super::esc;
use crate::profile::model::BootProfile;
use crate::profile::report::{
    human_bytes, human_ms, node_read_split, percent, phases, prefetch_fetched_bytes, top_waits,
};
use std::fmt::Write as _;

pub(super) fn tables(h: &mut String, p: &BootProfile) {
    let s = p.summary();
    h.push_str("<div class=\"tables\">\n<div>\n<h2>Where the time went</h2>\n<table>\n");
    h.push_str("<tr><th>phase</th><th>time</th><th>share</th></tr>\n");
    for (name, ms) in phases(&s) {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1}%</td></tr>",
            esc(name),
            esc(&human_ms(ms)),
            percent(ms, s.total_ms)
        );
    }
    let _ = writeln!(
        h,
        "<tr class=\"sum\"><td>total</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
        esc(&human_ms(s.total_ms)),
        if s.total_ms > 0.0 { "100.0%" } else { "0.0%" }
    );
    let _ = writeln!(
        h,
        "<tr><td>waiting on the registry (summed over requests)</td><td class=\"n\">{}</td>\
         <td class=\"n\">{:.1}%</td></tr>",
        esc(&human_ms(s.registry_wait_ms)),
        percent(s.registry_wait_ms, s.total_ms)
    );
    h.push_str("</table>\n</div>\n");

    h.push_str("<div>\n<h2>Where the bytes came from</h2>\n<table>\n");
    let prefetched = prefetch_fetched_bytes(p);
    let (cached, fetched) = node_read_split(p);
    let rows = [
        (
            "registry, uncompressed".to_string(),
            s.registry_bytes,
            format!(
                "{} for node requests, {} by the prefetcher",
                human_bytes(s.registry_bytes.saturating_sub(prefetched)),
                human_bytes(prefetched)
            ),
        ),
        (
            "registry, downloaded".into(),
            s.registry_compressed_bytes,
            "compressed, over the wire".into(),
        ),
        (
            "chunk cache".into(),
            s.cache_bytes,
            if cached + fetched > 0 {
                format!(
                    "{:.1}% of what node requests read",
                    percent(cached as f64, (cached + fetched) as f64)
                )
            } else {
                String::new()
            },
        ),
        ("served over TFTP".into(), s.tftp_bytes, String::new()),
        ("served over NFS".into(), s.nfs_bytes, String::new()),
    ];
    for (name, bytes, note) in rows {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"dim\">{}</td></tr>",
            esc(&name),
            esc(&human_bytes(bytes)),
            esc(&note)
        );
    }
    h.push_str("</table>\n</div>\n");

    h.push_str("<div>\n<h2>Files that waited longest on the registry</h2>\n");
    let top = top_waits(p, 10);
    if top.is_empty() {
        h.push_str("<p>None: every read was served from the cache.</p>\n");
    } else {
        h.push_str(
            "<table>\n<tr><th>wait</th><th>fetched</th><th>fetches</th><th>file</th></tr>\n",
        );
        for (name, w) in top {
            let _ = writeln!(
                h,
                "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"file\">{}</td></tr>",
                esc(&human_ms(w.registry_ms)),
                esc(&human_bytes(w.fetched_bytes)),
                w.fetches.len(),
                esc(&name)
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</div>\n</div>\n");
}
