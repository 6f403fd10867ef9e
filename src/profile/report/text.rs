//! `render_text`: one boot as a terminal waterfall with its totals.

use super::timeline::{axis_end_ms, nice_step, tick_label, timeline, Item};
use super::totals::{
    ended, node_read_split, percent, phases, prefetch_fetched_bytes, saved_line, top_waits,
};
use super::units::{human_bytes, human_ms, printable, utc};
use super::TOP_FILES;
use crate::profile::model::BootProfile;
use std::fmt::Write as _;

/// A terminal waterfall with phase and byte totals, for a terminal `width`
/// columns wide (labels longer than what is left are cut; the time axis
/// gets at least 10 columns, so very narrow terminals wrap).
pub(crate) fn render_text(p: &BootProfile, width: usize) -> String {
    let s = p.summary();
    let items = timeline(p);
    let mut out = String::new();

    let _ = writeln!(
        out,
        "boot profile: node {}, boot {}{}",
        printable(&p.node),
        p.boot,
        if p.kind.is_empty() {
            String::new()
        } else {
            format!(" ({})", printable(&p.kind))
        }
    );
    let _ = writeln!(out, "  image:    {}", printable(&p.image));
    let _ = writeln!(
        out,
        "  manifest: {}",
        p.manifest.as_deref().map_or("unknown".into(), printable)
    );
    let _ = writeln!(out, "  started:  {}", utc(p.started_unix_ms));
    if !p.began_with.is_empty() {
        let _ = writeln!(out, "  began:    with {}", printable(&p.began_with));
    }
    let _ = writeln!(out, "  ended:    {}", printable(&ended(p)));
    for e in &p.errors {
        let _ = writeln!(
            out,
            "  error:    at {}: {}",
            human_ms(e.at_ms),
            printable(&e.message)
        );
    }
    out.push('\n');

    waterfall(&mut out, p, &items, width);

    out.push_str("\nWhere the time went\n");
    for (name, ms) in phases(&s) {
        let _ = writeln!(
            out,
            "  {name:<24} {:>10} {:>6.1}%",
            human_ms(ms),
            percent(ms, s.total_ms)
        );
    }
    let _ = writeln!(
        out,
        "  {:<24} {:>10} {:>6.1}%",
        "total",
        human_ms(s.total_ms),
        if s.total_ms > 0.0 { 100.0 } else { 0.0 }
    );
    let _ = writeln!(
        out,
        "  {:<24} {:>10} {:>6.1}%  (summed over requests; they overlap)",
        "waiting on the registry",
        human_ms(s.registry_wait_ms),
        percent(s.registry_wait_ms, s.total_ms)
    );

    out.push_str("\nWhere the bytes came from\n");
    let prefetched = prefetch_fetched_bytes(p);
    let _ = writeln!(
        out,
        "  {:<26} {:>10}  ({} for node requests, {} by the prefetcher)",
        "registry, uncompressed",
        human_bytes(s.registry_bytes),
        human_bytes(s.registry_bytes.saturating_sub(prefetched)),
        human_bytes(prefetched)
    );
    let _ = writeln!(
        out,
        "  {:<26} {:>10}  (compressed, over the wire)",
        "registry, downloaded",
        human_bytes(s.registry_compressed_bytes)
    );
    if let Some(t) = &p.registry {
        let _ = writeln!(
            out,
            "  {:<26} {:>10}  in {} requests: all the registry sent for the image during the boot (streaming passes, fetches, prefetch, background fill), and {} before the node asked",
            "registry, all traffic",
            human_bytes(t.bytes),
            t.requests,
            human_bytes(t.before_bytes)
        );
    }
    let _ = writeln!(
        out,
        "  {:<26} {:>10}",
        "chunk cache",
        human_bytes(s.cache_bytes)
    );
    let (cached, fetched) = node_read_split(p);
    if cached + fetched > 0 {
        let total = (cached + fetched) as f64;
        let _ = writeln!(
            out,
            "  {:<26} {:>9.1}%  from the cache, {:.1}% from the registry",
            "node reads",
            percent(cached as f64, total),
            percent(fetched as f64, total)
        );
    }
    let _ = writeln!(
        out,
        "  {:<26} {:>10}",
        "served over TFTP",
        human_bytes(s.tftp_bytes)
    );
    let _ = writeln!(
        out,
        "  {:<26} {:>10}",
        "served over NFS",
        human_bytes(s.nfs_bytes)
    );

    out.push_str("\nFiles that waited longest on the registry\n");
    let top = top_waits(p, TOP_FILES);
    if top.is_empty() {
        out.push_str("  none: every read was served from the cache\n");
    } else {
        let _ = writeln!(
            out,
            "  {:>10} {:>10} {:>7}  file",
            "wait", "fetched", "fetches"
        );
        for (name, w) in top {
            let _ = writeln!(
                out,
                "  {:>10} {:>10} {:>7}  {}",
                human_ms(w.registry_ms),
                human_bytes(w.fetched_bytes),
                w.fetches.len(),
                printable(&name)
            );
        }
    }

    out.push('\n');
    out.push_str(&saved_line(&s));
    out.push('\n');
    out
}

/// Columns before a waterfall bar: start, took, registry wait, fetched.
const ROW_PREFIX: usize = 38;

/// Splits a terminal `width` between the time axis and the labels: the
/// axis gets 2/5 of what the fixed columns leave, labels (file names and
/// sizes, the point of most rows) the rest.
fn waterfall_columns(width: usize) -> (usize, usize) {
    let free = width.saturating_sub(ROW_PREFIX + 3);
    let cols = (free * 2 / 5).max(10);
    (cols, free.saturating_sub(cols).max(30))
}

fn cut(s: &str, room: usize) -> String {
    if s.chars().count() <= room {
        return s.to_string();
    }
    let mut out: String = s.chars().take(room.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

fn waterfall(out: &mut String, p: &BootProfile, items: &[Item], width: usize) {
    let (cols, label_room) = waterfall_columns(width);
    let end = axis_end_ms(p, items);
    let scale = cols as f64 / end;
    let col = |ms: f64| ((ms.max(0.0) * scale).floor() as usize).min(cols - 1);
    let booted_col = p.booted.as_ref().map(|b| col(b.at_ms));
    let _ = writeln!(
        out,
        "Timeline (one column = {}{}; registry = time waiting on registry fetches)",
        human_ms(end / cols as f64),
        if booted_col.is_some() {
            ", : = booted"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "{:>9} {:>8} {:>8} {:>9}",
        "start", "took", "registry", "fetched"
    );
    for it in items {
        let mut bar = vec![' '; cols];
        let first = col(it.start_ms);
        if it.instant {
            bar[first] = '|';
        } else {
            let last = ((it.end_ms * scale).ceil() as usize).clamp(first + 1, cols);
            bar[first..last].fill('=');
        }
        if let Some(b) = booted_col {
            if bar[b] == ' ' {
                bar[b] = ':';
            }
        }
        let (wait, fetched) = match it.registry_wait() {
            Some(w) => (human_ms(w.registry_ms), human_bytes(w.fetched_bytes)),
            None => (String::new(), String::new()),
        };
        let took = if it.instant {
            "-".into()
        } else {
            human_ms(it.duration_ms())
        };
        let _ = writeln!(
            out,
            "{:>7.3} s {took:>8} {wait:>8} {fetched:>9} |{}| {}",
            it.start_ms / 1000.0,
            bar.iter().collect::<String>(),
            cut(&printable(&it.label()), label_room)
        );
    }

    // A ruler with labelled ticks at least 8 columns apart.
    let step = nice_step(end * 8.0 / cols as f64);
    let mut ruler = vec!['-'; cols];
    let mut labels = vec![' '; cols + 12];
    let mut free_from = 0;
    for i in 0.. {
        let t = step * f64::from(i);
        if t > end * (1.0 + 1e-9) {
            break;
        }
        let c = ((t * scale).round() as usize).min(cols - 1);
        ruler[c] = '+';
        let text = tick_label(t, step);
        if c >= free_from && c + text.len() <= labels.len() {
            for (i, ch) in text.chars().enumerate() {
                labels[c + i] = ch;
            }
            free_from = c + text.len() + 1;
        }
    }
    let _ = writeln!(
        out,
        "{:ROW_PREFIX$} {}",
        "",
        ruler.iter().collect::<String>()
    );
    let _ = writeln!(
        out,
        "{:ROW_PREFIX$} {}",
        "",
        labels.iter().collect::<String>().trim_end()
    );
}
