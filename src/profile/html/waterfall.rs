//! The waterfall chart as inline SVG: one row per timeline item, then the
//! registry fetches packed into lanes, on a shared time axis.

use super::{cut_back, cut_front, esc, fetch_span, pack_lanes};
use crate::profile::model::{BootProfile, Fetch};
use crate::profile::report::{
    axis_end_ms, human_bytes, human_ms, nice_step, tick_label, timeline, Item, ItemKind,
};
use std::fmt::Write as _;

// Waterfall geometry (SVG user units = CSS pixels).
const SVG_W: f64 = 1340.0;
const CHART_X: f64 = 420.0;
const CHART_W: f64 = 760.0;
const ROW_H: f64 = 20.0;
const BAR_H: f64 = 12.0;
/// Room above the first row for the "booted" label and the tick labels.
const TOP: f64 = 44.0;
/// DejaVu Sans Mono (and most monospace fonts) advance 0.6 em per glyph.
const CHAR_W_12: f64 = 7.3;
const CHAR_W_11: f64 = 6.7;
const LABEL_CHARS: usize = 55;

/// Where a bar's annotation goes and what it says.
struct Note {
    x: f64,
    anchor: &'static str,
    main: String,
    wait: String,
}

/// Right of the bar if it fits, else left of it, else the roomier side
/// with the least important parts dropped.
fn place_note(bar_x: f64, bar_end: f64, candidates: &[(String, String)]) -> Note {
    let room_right = SVG_W - 4.0 - (bar_end + 6.0);
    let room_left = bar_x - 6.0 - (CHART_X + 2.0);
    let width = |m: &str, w: &str| (m.chars().count() + w.chars().count()) as f64 * CHAR_W_11;
    for (main, wait) in candidates {
        let w = width(main, wait);
        if w <= room_right {
            return Note {
                x: bar_end + 6.0,
                anchor: "start",
                main: main.clone(),
                wait: wait.clone(),
            };
        }
        if w <= room_left {
            return Note {
                x: bar_x - 6.0,
                anchor: "end",
                main: main.clone(),
                wait: wait.clone(),
            };
        }
    }
    let (main, _) = candidates.last().cloned().unwrap_or_default();
    let (x, anchor, room) = if room_right >= room_left {
        (bar_end + 6.0, "start", room_right)
    } else {
        (bar_x - 6.0, "end", room_left)
    };
    Note {
        x,
        anchor,
        main: cut_back(&main, (room / CHAR_W_11).max(0.0) as usize),
        wait: String::new(),
    }
}

pub(super) fn waterfall_svg(h: &mut String, p: &BootProfile) {
    let items = timeline(p);
    let end = axis_end_ms(p, &items);
    let x_of = |ms: f64| CHART_X + (ms.max(0.0) / end).min(1.0) * CHART_W;
    let spans: Vec<(f64, f64)> = p.fetches.iter().map(fetch_span).collect();
    let (lanes, nlanes) = pack_lanes(&spans);
    // Item rows, then a heading row for the registry lanes, then the lanes.
    let fetch_rows = if p.fetches.is_empty() { 0 } else { 1 + nlanes };
    let rows = items.len() + fetch_rows;
    let height = TOP + rows as f64 * ROW_H + 8.0;
    let row_y = |row: usize| TOP + row as f64 * ROW_H;

    let _ = writeln!(
        h,
        "<svg class=\"waterfall\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{SVG_W}\" \
         height=\"{height}\" viewBox=\"0 0 {SVG_W} {height}\" role=\"img\" \
         aria-label=\"boot waterfall\">"
    );
    for row in (1..rows).step_by(2) {
        let _ = writeln!(
            h,
            "<rect class=\"stripe\" x=\"0\" y=\"{}\" width=\"{SVG_W}\" height=\"{ROW_H}\"/>",
            row_y(row)
        );
    }

    // Ticks at least 80 px apart, grid lines through every row.
    let step = nice_step(end * 80.0 / CHART_W);
    for i in 0.. {
        let t = step * f64::from(i);
        if t > end * (1.0 + 1e-9) {
            break;
        }
        let x = x_of(t);
        let _ = writeln!(
            h,
            "<line class=\"grid\" x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>\
             <text class=\"tick\" x=\"{x:.1}\" y=\"34\" text-anchor=\"middle\">{}</text>",
            TOP - 6.0,
            height - 4.0,
            esc(&tick_label(t, step))
        );
    }

    // Before the rows, so their text (with its white halo) stays legible.
    if let Some(b) = &p.booted {
        let x = x_of(b.at_ms);
        let label = format!("booted {}", human_ms(b.at_ms));
        let half = label.chars().count() as f64 * CHAR_W_12 / 2.0;
        let (lx, anchor) = if x + half > SVG_W - 4.0 {
            (x, "end")
        } else {
            (x, "middle")
        };
        let _ = writeln!(
            h,
            "<g><title>{}</title><line class=\"booted\" x1=\"{x:.1}\" y1=\"18\" x2=\"{x:.1}\" \
             y2=\"{:.1}\"/><text class=\"bootedlabel\" x=\"{lx:.1}\" y=\"13\" \
             text-anchor=\"{anchor}\">{}</text></g>",
            esc(&b.how.describe()),
            height - 4.0,
            esc(&label)
        );
    }
    for (row, it) in items.iter().enumerate() {
        item_row(h, it, row_y(row), &x_of);
    }

    if !p.fetches.is_empty() {
        let head = row_y(items.len());
        let compressed: u64 = p.fetches.iter().map(|f| f.compressed_bytes).sum();
        let bytes: u64 = p.fetches.iter().map(|f| f.bytes).sum();
        let _ = writeln!(
            h,
            "<line class=\"grid\" x1=\"0\" y1=\"{head}\" x2=\"{SVG_W}\" y2=\"{head}\"/>\
             <text class=\"lanehead\" x=\"8\" y=\"{:.1}\">{}</text>",
            head + 14.0,
            esc(&format!(
                "registry fetches: {}, {} ({} downloaded)",
                p.fetches.len(),
                human_bytes(bytes),
                human_bytes(compressed)
            ))
        );
        for lane in 0..nlanes {
            let _ = writeln!(
                h,
                "<text class=\"label\" x=\"8\" y=\"{:.1}\">fetch lane {}</text>",
                row_y(items.len() + 1 + lane) + 14.0,
                lane + 1
            );
        }
        for (f, lane) in p.fetches.iter().zip(&lanes) {
            fetch_bar(h, f, row_y(items.len() + 1 + lane), &x_of);
        }
    }

    h.push_str("</svg>\n");
}

fn item_row(h: &mut String, it: &Item, y: f64, x_of: &dyn Fn(f64) -> f64) {
    let class = it.kind.word();
    let took = if it.instant {
        "at".to_string()
    } else {
        human_ms(it.duration_ms())
    };
    let mut tip = format!("{}\nstart {}, {took}", it.label(), human_ms(it.start_ms));
    let wait = it.registry_wait().map(|w| {
        let _ = write!(
            tip,
            "\nwaited {} on the registry ({} fetched, {} from the cache, {} fetch{})",
            human_ms(w.registry_ms),
            human_bytes(w.fetched_bytes),
            human_bytes(w.cache_bytes),
            w.fetches.len(),
            if w.fetches.len() == 1 { "" } else { "es" }
        );
        format!(
            " \u{b7} registry {} for {}",
            human_ms(w.registry_ms),
            human_bytes(w.fetched_bytes)
        )
    });
    // The kind stays; a long name loses its front.
    let kind = match it.kind {
        ItemKind::Mount => "nfs mount",
        k => k.word(),
    };
    let name = cut_front(&it.name, LABEL_CHARS.saturating_sub(kind.len() + 1));
    let label = format!("{kind} {name}");
    let _ = write!(
        h,
        "<g class=\"row\"><title>{}</title><text class=\"label\" x=\"8\" y=\"{:.1}\">{}</text>",
        esc(&tip),
        y + 14.0,
        esc(&label)
    );
    let x = x_of(it.start_ms);
    let mid = y + ROW_H / 2.0;
    let (bar_x, bar_end) = if it.instant {
        let r = BAR_H / 2.0 + 1.0;
        let _ = write!(
            h,
            "<polygon class=\"bar {class}\" points=\"{:.1},{mid:.1} {x:.1},{:.1} {:.1},{mid:.1} {x:.1},{:.1}\"/>",
            x - r,
            mid - r,
            x + r,
            mid + r
        );
        (x - r, x + r)
    } else {
        // Two pixels at least, so a 1 ms GETATTR is still visible.
        let w = (x_of(it.end_ms) - x).max(2.0);
        let _ = write!(
            h,
            "<rect class=\"bar {class}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{BAR_H}\" rx=\"2\"/>",
            mid - BAR_H / 2.0
        );
        (x, x + w)
    };
    let detail = if it.detail.is_empty() {
        String::new()
    } else {
        format!(" \u{b7} {}", it.detail)
    };
    let wait = wait.unwrap_or_default();
    let took = if it.instant { String::new() } else { took };
    let candidates = [
        (format!("{took}{detail}"), wait.clone()),
        (took.clone(), wait),
        (took, String::new()),
    ];
    let note = place_note(bar_x, bar_end, &candidates);
    let main = note.main.trim_start_matches(" \u{b7} ");
    // A backing so grid lines and the booted line do not run through the text.
    let w = (main.chars().count() + note.wait.chars().count()) as f64 * CHAR_W_11 + 4.0;
    let left = if note.anchor == "end" {
        note.x - w + 2.0
    } else {
        note.x - 2.0
    };
    let _ = writeln!(
        h,
        "<rect class=\"noteback\" x=\"{left:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"14\"/>\
         <text class=\"note\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{}\">{}<tspan class=\"wait\">{}</tspan></text></g>",
        y + 3.0,
        note.x,
        y + 14.0,
        note.anchor,
        esc(main),
        esc(&note.wait)
    );
}

fn fetch_bar(h: &mut String, f: &Fetch, y: f64, x_of: &dyn Fn(f64) -> f64) {
    let (start, end) = fetch_span(f);
    let x = x_of(start);
    let w = (x_of(end) - x).max(2.0);
    let tip = format!(
        "fetch #{} from layer {}: {} ({} downloaded) in {}, start {}\nfor {}",
        f.id,
        f.layer,
        human_bytes(f.bytes),
        human_bytes(f.compressed_bytes),
        human_ms(f.duration_ms),
        human_ms(f.start_ms),
        f.by
    );
    let _ = write!(
        h,
        "<g class=\"row\"><title>{}</title><rect class=\"bar fetch\" x=\"{x:.1}\" y=\"{:.1}\" \
         width=\"{w:.1}\" height=\"{BAR_H}\" rx=\"2\"/>",
        esc(&tip),
        y + (ROW_H - BAR_H) / 2.0
    );
    // Who asked, inside the bar when at least a few letters fit; the file
    // name alone ("tftp start4.elf" -> "start4.elf") says the most.
    let fits = ((w - 6.0) / (CHAR_W_11 * 10.0 / 11.0)).max(0.0) as usize;
    let who =
        f.by.rsplit(['/', ' '])
            .find(|s| !s.is_empty())
            .unwrap_or("");
    if fits >= 4 && !who.is_empty() {
        let _ = write!(
            h,
            "<text class=\"inbar\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            x + 3.0,
            y + 13.5,
            esc(&cut_front(who, fits))
        );
    }
    h.push_str("</g>\n");
}
