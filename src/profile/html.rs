//! HTML and Chrome-trace renderings of a boot profile.
//!
//! The HTML page is one self-contained file: inline CSS and a static SVG
//! waterfall drawn here, so it opens from a file or an air-gapped server
//! and needs no JavaScript. The trace is Chrome's trace-event JSON, which
//! Perfetto and chrome://tracing load.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::model::{BootProfile, Fetch};
use super::report::{
    axis_end_ms, ended, human_bytes, human_ms, nice_step, node_read_split, percent, phases,
    prefetch_fetched_bytes, saved_line, tick_label, timeline, top_waits, utc, warm_cache_saving,
    Item, ItemKind,
};

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

/// One self-contained HTML page: summary numbers, a waterfall chart as
/// inline SVG, and the phase, byte and top-file tables.
pub fn render_html(p: &BootProfile) -> String {
    let s = p.summary();
    let mut h = String::new();
    let title = format!("boot profile: {} boot {}", p.node, p.boot);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>\n{CSS}",
        esc(&title)
    );
    for (class, c) in KIND_COLOURS {
        let _ = writeln!(
            h,
            ".bar.{class}, .swatch.{class} {{ fill: {c}; background: {c}; }}"
        );
    }
    let _ = writeln!(
        h,
        ".waitnote {{ color: {WAIT_COLOUR}; }}\nsvg .note .wait, svg .lanehead {{ fill: {WAIT_COLOUR}; }}"
    );
    h.push_str("</style>\n</head>\n<body>\n");

    let _ = writeln!(
        h,
        "<h1>{} <span class=\"dim\">boot {}</span></h1>",
        esc(&p.node),
        p.boot
    );
    let mut meta = Vec::new();
    if !p.kind.is_empty() {
        meta.push(esc(&p.kind));
    }
    meta.push(format!("image <code>{}</code>", esc(&p.image)));
    if let Some(m) = &p.manifest {
        meta.push(format!("manifest <code>{}</code>", esc(m)));
    }
    meta.push(format!("started {}", esc(&utc(p.started_unix_ms))));
    if !p.began_with.is_empty() {
        meta.push(format!("began with {}", esc(&p.began_with)));
    }
    let _ = writeln!(h, "<p class=\"meta\">{}</p>", meta.join(" &middot; "));
    let _ = writeln!(
        h,
        "<p class=\"meta {}\">{}</p>",
        if s.finished { "ok" } else { "warn" },
        esc(&ended(p))
    );

    h.push_str("<div class=\"cards\">\n");
    let card = |h: &mut String, value: String, key: &str, extra: &str| {
        let _ = writeln!(
            h,
            "<div class=\"card {extra}\"><div class=\"v\">{}</div><div class=\"k\">{}</div></div>",
            esc(&value),
            esc(key)
        );
    };
    card(&mut h, human_ms(s.total_ms), "total", "total");
    for (name, ms) in phases(&s) {
        // The short name: the table below has the long one.
        let short = name.split(" (").next().unwrap_or(name);
        let short = short.strip_suffix(" until booted").unwrap_or(short);
        card(
            &mut h,
            human_ms(ms),
            &format!("{short} \u{b7} {:.1}%", percent(ms, s.total_ms)),
            "",
        );
    }
    card(
        &mut h,
        human_bytes(s.registry_bytes),
        &format!(
            "from the registry ({} downloaded)",
            human_bytes(s.registry_compressed_bytes)
        ),
        "",
    );
    card(
        &mut h,
        human_bytes(s.cache_bytes),
        "from the chunk cache",
        "",
    );
    h.push_str("</div>\n");
    let (saved, _) = warm_cache_saving(&s);
    let _ = writeln!(
        h,
        "<p class=\"saved{}\">{}</p>",
        if saved > 0.0 { " some" } else { "" },
        esc(&saved_line(&s))
    );

    h.push_str("<p class=\"legend\">");
    for (class, label) in [
        ("dhcp", "DHCP"),
        ("tftp", "TFTP transfer"),
        ("nfs", "NFS mount (\u{25c6}) and file"),
        ("prefetch", "prefetch run"),
        ("fetch", "registry fetch"),
    ] {
        let _ = write!(
            h,
            "<span><span class=\"swatch {class}\"></span>{}</span>",
            esc(label)
        );
    }
    let _ = writeln!(
        h,
        "<span class=\"waitnote\">registry = time the request waited on fetches</span></p>"
    );

    waterfall_svg(&mut h, p);
    tables(&mut h, p);
    h.push_str("</body>\n</html>\n");
    h
}

const CSS: &str = "\
body { font: 14px/1.4 'DejaVu Sans', 'Liberation Sans', system-ui, sans-serif; color: #111827; margin: 14px 20px; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 15px; margin: 18px 0 6px; }
.dim { color: #6b7280; font-weight: normal; }
.meta { margin: 2px 0; color: #374151; }
.meta.warn { color: #b45309; }
code { font: 12px 'DejaVu Sans Mono', monospace; }
.cards { display: flex; flex-wrap: wrap; gap: 8px; margin: 10px 0 6px; }
.card { border: 1px solid #e5e7eb; border-radius: 6px; padding: 4px 12px; min-width: 90px; }
.card .v { font-size: 18px; font-weight: bold; }
.card .k { font-size: 12px; color: #4b5563; }
.card.total { border-color: #9ca3af; }
.saved { margin: 4px 0 8px; padding: 4px 10px; font-weight: bold; display: inline-block; border-radius: 6px; background: #f3f4f6; }
.saved.some { background: #fef2f2; border: 1px solid #fca5a5; }
.legend { margin: 6px 0; font-size: 13px; }
.legend > span { margin-right: 18px; white-space: nowrap; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 5px; vertical-align: -1px; }
svg.waterfall { display: block; font: 12px 'DejaVu Sans Mono', monospace; }
svg .label { fill: #111827; }
svg .note { fill: #374151; font-size: 11px; }
svg .noteback { fill: #fff; }
svg .inbar { fill: #fff; font-size: 10px; }
svg .tick { fill: #6b7280; font-size: 11px; }
svg .grid { stroke: #e5e7eb; }
svg .stripe { fill: #f8fafc; }
svg .lanehead { font-weight: bold; }
svg .booted { stroke: #111827; stroke-width: 1.5; stroke-dasharray: 5 3; }
svg .bootedlabel { fill: #111827; font-weight: bold; }
.tables { display: flex; flex-wrap: wrap; gap: 8px 40px; align-items: flex-start; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 2px 10px 2px 0; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th { border-bottom: 1px solid #d1d5db; }
tr.sum td { border-top: 1px solid #d1d5db; font-weight: bold; }
td.file { font: 12px 'DejaVu Sans Mono', monospace; word-break: break-all; }
";

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

fn waterfall_svg(h: &mut String, p: &BootProfile) {
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

fn tables(h: &mut String, p: &BootProfile) {
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

/// Trace lanes: one Chrome "thread" per kind, more when spans overlap.
struct Lanes {
    base_tid: u64,
    name: &'static str,
    count: usize,
}

const DHCP_TID: u64 = 1000;
const TFTP_TID: u64 = 2000;
const NFS_TID: u64 = 3000;
const REGISTRY_TID: u64 = 4000;
const PREFETCH_TID: u64 = 5000;

/// Microseconds, as trace events count.
fn us(ms: f64) -> f64 {
    if ms.is_finite() {
        (ms * 1000.0 * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

fn complete(name: &str, cat: &str, tid: u64, start_ms: f64, end_ms: f64, args: Value) -> Value {
    json!({
        "name": name,
        "cat": cat,
        "ph": "X",
        "pid": 1,
        "tid": tid,
        "ts": us(start_ms),
        "dur": us((end_ms - start_ms).max(0.0)),
        "args": args,
    })
}

fn wait_args(w: &super::model::Wait) -> Value {
    json!({
        "registry_wait_ms": w.registry_ms,
        "fetched_bytes": w.fetched_bytes,
        "cache_bytes": w.cache_bytes,
        "fetches": w.fetches,
    })
}

/// Chrome trace-event JSON (object form) for Perfetto or chrome://tracing:
/// one process for the node, a thread per kind (DHCP, TFTP, NFS, registry,
/// prefetch; extra threads where spans of a kind overlap), complete events
/// for every span and instants for the NFS mounts and "booted".
pub fn render_trace(p: &BootProfile) -> String {
    let mut events: Vec<Value> = Vec::new();
    let mut lanes: Vec<Lanes> = Vec::new();

    let mut dhcp = Lanes {
        base_tid: DHCP_TID,
        name: "DHCP",
        count: 0,
    };
    let spans: Vec<(f64, f64)> = p
        .dhcp
        .iter()
        .map(|d| (d.start_ms, d.end_ms.unwrap_or(d.start_ms)))
        .collect();
    let (at, n) = pack_lanes(&spans);
    dhcp.count = n;
    for ((d, lane), (start, end)) in p.dhcp.iter().zip(at).zip(spans) {
        events.push(complete(
            &format!("DHCP {}", d.messages.join(" ")),
            "dhcp",
            DHCP_TID + lane as u64,
            start,
            end,
            json!({ "messages": d.messages, "address": d.address, "client": d.client,
                    "acked": d.end_ms.is_some() }),
        ));
    }
    lanes.push(dhcp);

    let spans: Vec<(f64, f64)> = p.tftp.iter().map(|t| (t.start_ms, t.end_ms)).collect();
    let (at, n) = pack_lanes(&spans);
    for ((t, lane), (start, end)) in p.tftp.iter().zip(at).zip(spans) {
        let mut args = wait_args(&t.wait);
        args["size"] = json!(t.size);
        args["bytes"] = json!(t.bytes);
        args["outcome"] = serde_json::to_value(t.outcome).unwrap_or(Value::Null);
        args["retries"] = json!(t.retries);
        args["generated"] = json!(t.generated);
        events.push(complete(
            &t.file,
            "tftp",
            TFTP_TID + lane as u64,
            start,
            end,
            args,
        ));
    }
    lanes.push(Lanes {
        base_tid: TFTP_TID,
        name: "TFTP",
        count: n,
    });

    let spans: Vec<(f64, f64)> = p
        .nfs_files
        .iter()
        .map(|f| (f.first_ms, f.last_ms))
        .collect();
    let (at, n) = pack_lanes(&spans);
    for ((f, lane), (start, end)) in p.nfs_files.iter().zip(at).zip(spans) {
        let mut args = wait_args(&f.wait);
        args["bytes_read"] = json!(f.bytes_read);
        args["busy_ms"] = json!(f.busy_ms);
        args["ops"] = json!(f.ops);
        events.push(complete(
            &f.path,
            "nfs",
            NFS_TID + lane as u64,
            start,
            end,
            args,
        ));
    }
    for m in &p.nfs_mounts {
        events.push(json!({
            "name": "NFS mount", "cat": "nfs", "ph": "i", "s": "t",
            "pid": 1, "tid": NFS_TID, "ts": us(m.at_ms),
            "args": { "export": m.export, "client": m.client },
        }));
    }
    lanes.push(Lanes {
        base_tid: NFS_TID,
        name: "NFS",
        // The mount instant sits on the first NFS thread even without files.
        count: n.max(usize::from(!p.nfs_mounts.is_empty())),
    });

    let spans: Vec<(f64, f64)> = p.fetches.iter().map(fetch_span).collect();
    let (at, n) = pack_lanes(&spans);
    for ((f, lane), (start, end)) in p.fetches.iter().zip(at).zip(spans) {
        events.push(complete(
            &format!("fetch {}", f.layer),
            "registry",
            REGISTRY_TID + lane as u64,
            start,
            end,
            json!({ "id": f.id, "layer": f.layer, "by": f.by, "bytes": f.bytes,
                    "compressed_bytes": f.compressed_bytes }),
        ));
    }
    lanes.push(Lanes {
        base_tid: REGISTRY_TID,
        name: "registry",
        count: n,
    });

    if let Some(r) = &p.prefetch {
        let end = r
            .end_ms
            .unwrap_or_else(|| p.last_event_ms())
            .max(r.start_ms);
        events.push(complete(
            "prefetch",
            "prefetch",
            PREFETCH_TID,
            r.start_ms,
            end,
            json!({ "planned_chunks": r.planned_chunks, "fetched_chunks": r.fetched_chunks,
                    "learned_from": r.learned_from, "finished": r.end_ms.is_some() }),
        ));
        lanes.push(Lanes {
            base_tid: PREFETCH_TID,
            name: "prefetch",
            count: 1,
        });
    }

    if let Some(b) = &p.booted {
        events.push(json!({
            "name": "booted", "cat": "boot", "ph": "i", "s": "g",
            "pid": 1, "tid": DHCP_TID, "ts": us(b.at_ms),
            "args": { "how": b.how.describe() },
        }));
    }

    let mut meta = vec![json!({
        "name": "process_name", "ph": "M", "pid": 1, "tid": 0,
        "args": { "name": format!("{} boot {}", p.node, p.boot) },
    })];
    for l in &lanes {
        for i in 0..l.count {
            let tid = l.base_tid + i as u64;
            let name = if i == 0 {
                l.name.to_string()
            } else {
                format!("{} ({})", l.name, i + 1)
            };
            meta.push(json!({
                "name": "thread_name", "ph": "M", "pid": 1, "tid": tid,
                "args": { "name": name },
            }));
            meta.push(json!({
                "name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid,
                "args": { "sort_index": tid },
            }));
        }
    }
    meta.extend(events);

    let doc = json!({
        "traceEvents": meta,
        "displayTimeUnit": "ms",
        "otherData": {
            "node": p.node,
            "boot": p.boot,
            "image": p.image,
            "manifest": p.manifest,
            "started_unix_ms": p.started_unix_ms,
            "summary": p.summary(),
        },
    });
    serde_json::to_string(&doc).expect("a JSON value always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::report::tests::sample;

    #[test]
    fn html_escapes_file_names_and_has_one_bar_per_item() {
        let p = sample();
        let page = render_html(&p);
        assert!(!page.contains("<script"), "unescaped file name");
        assert!(page.contains("/etc/&lt;script&gt;alert(1)&lt;/script&gt;"));
        // 10 timeline items (DHCP, 3 TFTP, mount, 4 NFS files, prefetch) + 5 fetches.
        assert_eq!(page.matches("class=\"bar ").count(), 15);
        assert_eq!(page.matches("class=\"bar fetch\"").count(), 5);
        assert_eq!(page.matches("class=\"bar tftp\"").count(), 3);
        assert_eq!(page.matches("class=\"bar nfs\"").count(), 5);
        assert_eq!(page.matches("class=\"bar prefetch\"").count(), 1);
        assert_eq!(page.matches("class=\"bar dhcp\"").count(), 1);
        // Three lanes: fetches 3, 4 and 5 overlap.
        assert!(page.contains(">fetch lane 3<") && !page.contains(">fetch lane 4<"));
        assert!(page.contains(">booted 12.0 s</text>"));
        assert!(page.contains("a warm cache would have saved about 5.00 s (41.7% of the boot)"));
        // Self-contained: the SVG namespace is the only URL.
        let urls = page.matches("http").count();
        assert_eq!(urls, page.matches("http://www.w3.org/2000/svg").count());
        assert!(!page.contains("<script") && !page.contains("src="));
        for (_, c) in KIND_COLOURS {
            assert!(page.contains(c), "{c} unused");
        }
    }

    #[test]
    fn html_bars_sit_on_the_time_axis() {
        let page = render_html(&sample());
        // The axis runs 0-12 s over 760 px from x=420: kernel8.img
        // (1.6-3.0 s) starts at 521.3 and is 88.7 px wide.
        let row = page
            .lines()
            .find(|l| l.contains(">tftp kernel8.img<"))
            .expect("kernel row");
        assert!(
            row.contains("class=\"bar tftp\" x=\"521.3\" y=\"") && row.contains("width=\"88.7\""),
            "{row}"
        );
        assert!(
            row.contains("<tspan class=\"wait\"> \u{b7} registry 900 ms for 8.00 MiB</tspan>"),
            "{row}"
        );
        // booted at 12 s = the right edge of the axis.
        assert!(page.contains("class=\"booted\" x1=\"1180.0\""));
        // Ticks every 2 s (80 px minimum over 12 s / 760 px).
        for t in ["0 s", "2 s", "4 s", "12 s"] {
            assert!(page.contains(&format!(">{t}</text>")), "tick {t}");
        }
        assert!(!page.contains(">14 s</text>"));
    }

    #[test]
    fn html_of_an_empty_profile_is_still_a_page() {
        let page = render_html(&BootProfile::default());
        assert!(page.starts_with("<!DOCTYPE html>") && page.ends_with("</html>\n"));
        assert_eq!(page.matches("class=\"bar ").count(), 0);
        assert!(page.contains("not finished"));
    }

    #[test]
    fn long_labels_are_cut_from_the_front() {
        assert_eq!(cut_front("/usr/lib/x", 20), "/usr/lib/x");
        assert_eq!(
            cut_front("/usr/lib/modules/abc.ko", 10),
            "\u{2026}es/abc.ko"
        );
        assert_eq!(cut_back("abcdef", 4), "abc\u{2026}");
        assert_eq!(esc("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
    }

    #[test]
    fn lanes_never_overlap() {
        let spans = [
            (0.0, 10.0),
            (5.0, 8.0),
            (10.0, 12.0),
            (6.0, 20.0),
            (9.0, 9.5),
        ];
        let (lanes, n) = pack_lanes(&spans);
        assert_eq!(lanes, [0, 1, 0, 2, 1]);
        assert_eq!(n, 3);
    }

    fn events(trace: &str) -> Vec<Value> {
        let doc: Value = serde_json::from_str(trace).expect("trace is JSON");
        assert_eq!(doc["displayTimeUnit"], "ms");
        doc["traceEvents"].as_array().expect("traceEvents").clone()
    }

    #[test]
    fn trace_parses_with_the_expected_events() {
        let ev = events(&render_trace(&sample()));
        let by_ph = |ph: &str| ev.iter().filter(|e| e["ph"] == ph).collect::<Vec<_>>();
        // 1 DHCP + 3 TFTP + 4 NFS files + 5 fetches + 1 prefetch.
        assert_eq!(by_ph("X").len(), 14);
        // NFS mount and booted.
        assert_eq!(by_ph("i").len(), 2);
        // Threads: DHCP, TFTP, NFS x2 (init and libc overlap), registry x3,
        // prefetch = 8, each named and sorted, plus the process name.
        assert_eq!(by_ph("M").len(), 1 + 2 * 8);
        assert_eq!(ev.len(), 33);

        for e in by_ph("X") {
            for key in ["name", "ts", "dur", "pid", "tid"] {
                assert!(!e[key].is_null(), "{key} missing in {e}");
            }
            assert!(e["ts"].is_number() && e["dur"].is_number(), "{e}");
            assert!(e["pid"].is_u64() && e["tid"].is_u64(), "{e}");
            assert!(e["dur"].as_f64().unwrap() >= 0.0, "{e}");
        }
        let find = |name: &str| {
            ev.iter()
                .find(|e| e["name"] == name)
                .unwrap_or_else(|| panic!("no event {name}"))
        };
        let kernel = find("kernel8.img");
        assert_eq!(kernel["ts"].as_f64(), Some(1_600_000.0));
        assert_eq!(kernel["dur"].as_f64(), Some(1_400_000.0));
        assert_eq!(kernel["tid"], TFTP_TID);
        assert_eq!(kernel["args"]["registry_wait_ms"].as_f64(), Some(900.0));
        assert_eq!(kernel["args"]["outcome"], "complete");
        let libc = find("/usr/lib/libc.so.6");
        assert_eq!(libc["tid"], NFS_TID + 1);
        assert_eq!(libc["dur"].as_f64(), Some(1_800_000.0));
        let booted = find("booted");
        assert_eq!(
            (booted["ph"].as_str(), booted["ts"].as_f64()),
            (Some("i"), Some(12e6))
        );
        let prefetch = find("prefetch");
        assert_eq!(prefetch["dur"].as_f64(), Some(4_600_000.0));
        assert_eq!(find("process_name")["args"]["name"], "cm4-1 boot 3");

        let thread_names: Vec<&str> = ev
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .map(|e| e["args"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            thread_names,
            [
                "DHCP",
                "TFTP",
                "NFS",
                "NFS (2)",
                "registry",
                "registry (2)",
                "registry (3)",
                "prefetch"
            ]
        );
        // Every thread an event uses is named.
        let named: Vec<&Value> = ev
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .map(|e| &e["tid"])
            .collect();
        for e in ev.iter().filter(|e| e["ph"] != "M") {
            assert!(named.contains(&&e["tid"]), "unnamed thread in {e}");
        }
    }

    #[test]
    fn trace_x_events_on_one_thread_never_overlap() {
        let ev = events(&render_trace(&sample()));
        let mut xs: Vec<(u64, f64, f64)> = ev
            .iter()
            .filter(|e| e["ph"] == "X")
            .map(|e| {
                let ts = e["ts"].as_f64().unwrap();
                (
                    e["tid"].as_u64().unwrap(),
                    ts,
                    ts + e["dur"].as_f64().unwrap(),
                )
            })
            .collect();
        xs.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for w in xs.windows(2) {
            if w[0].0 == w[1].0 {
                assert!(w[0].2 <= w[1].1, "{:?} overlaps {:?}", w[0], w[1]);
            }
        }
    }

    #[test]
    fn trace_of_an_empty_profile_is_valid() {
        let ev = events(&render_trace(&BootProfile::default()));
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0]["ph"], "M");
    }
}
