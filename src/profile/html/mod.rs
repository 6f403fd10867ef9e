//! HTML and Chrome-trace renderings of a boot profile.
//!
//! The HTML page is one self-contained file: inline CSS and a static SVG
//! waterfall drawn here, so it opens from a file or an air-gapped server
//! and needs no JavaScript. The trace is Chrome's trace-event JSON, which
//! Perfetto and chrome://tracing load.
//!
//! - `page`: the page itself (header, summary cards, legend, CSS),
//! - `waterfall`: the SVG chart, `tables`: the tables under it,
//! - `chrome_trace`: the trace-event JSON.
//!
//! The escaping, cutting and lane packing here are shared by all of them.

mod chrome_trace;
mod page;
mod tables;
#[cfg(test)]
mod tests;
mod waterfall;

pub(crate) use chrome_trace::render_trace;
pub use page::render_html;

use super::model::Fetch;

/// Bar colours by kind, as the page's CSS uses them (`class="bar KIND"`).
pub const KIND_COLOURS: [(&str, &str); 5] = [
    ("dhcp", "#2563eb"),
    ("tftp", "#f59e0b"),
    ("nfs", "#16a34a"),
    ("fetch", "#dc2626"),
    ("prefetch", "#7c3aed"),
];

/// Registry wait in the bar annotations; darker than fetch bars so the
/// two are not confused.
const WAIT_COLOUR: &str = "#991b1b";

/// Escapes text for HTML element content and quoted attributes (also valid
/// inside inline SVG). Profile strings come from nodes: never trusted.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Paths are most telling at their end: cut from the front.
fn cut_front(s: &str, room: usize) -> String {
    let n = s.chars().count();
    if n <= room {
        return s.to_string();
    }
    let keep: String = s.chars().skip(n - room.saturating_sub(1)).collect();
    format!("\u{2026}{keep}")
}

fn cut_back(s: &str, room: usize) -> String {
    if s.chars().count() <= room {
        return s.to_string();
    }
    let mut out: String = s.chars().take(room.saturating_sub(1)).collect();
    out.push('\u{2026}');
    out
}

/// Greedy interval packing: the lane of each span (in input order) such
/// that spans sharing a lane never overlap. Used for fetch lanes here and
/// trace threads, which viewers require to nest (ours never even touch).
fn pack_lanes(spans: &[(f64, f64)]) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by(|&a, &b| spans[a].0.total_cmp(&spans[b].0));
    let mut lane_end: Vec<f64> = Vec::new();
    let mut lanes = vec![0; spans.len()];
    for i in order {
        let (start, end) = spans[i];
        let lane = match lane_end.iter().position(|&e| e <= start) {
            Some(l) => l,
            None => {
                lane_end.push(f64::NEG_INFINITY);
                lane_end.len() - 1
            }
        };
        lane_end[lane] = end.max(start);
        lanes[i] = lane;
    }
    (lanes, lane_end.len())
}

fn fetch_span(f: &Fetch) -> (f64, f64) {
    (f.start_ms, f.start_ms + f.duration_ms.max(0.0))
}
