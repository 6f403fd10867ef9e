//! `render_html`: the page around the chart and tables.

use super::tables::tables;
use super::waterfall::waterfall_svg;
use super::{esc, KIND_COLOURS, WAIT_COLOUR};
use crate::profile::model::BootProfile;
use crate::profile::report::{
    ended, human_bytes, human_ms, percent, phases, saved_line, utc, warm_cache_saving,
};
use std::fmt::Write as _;

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
