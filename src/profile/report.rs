//! Text renderings of a boot profile: a terminal waterfall with the phase
//! and byte totals (`render_text`) and two boots side by side
//! (`render_compare`). The timeline, phase and top-file helpers here are
//! shared with the HTML and trace renderings in [`super::html`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::model::{BootProfile, Summary, TftpOutcome, Wait};

/// How many files the "waited longest" tables list.
const TOP_FILES: usize = 10;

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
    pub kind: ItemKind,
    pub start_ms: f64,
    /// Equal to `start_ms` for instants.
    pub end_ms: f64,
    pub instant: bool,
    pub name: String,
    pub detail: String,
    pub wait: Option<&'a Wait>,
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
fn waits_by_file(p: &BootProfile) -> BTreeMap<String, f64> {
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

/// Seconds with the precision a boot time needs.
pub(crate) fn secs(ms: f64) -> String {
    let s = ms / 1000.0;
    if s.abs() >= 10.0 {
        format!("{s:.1}")
    } else {
        format!("{s:.2}")
    }
}

pub(crate) fn human_ms(ms: f64) -> String {
    let a = ms.abs();
    if !a.is_finite() {
        return "?".into();
    }
    if a == 0.0 {
        return "0 ms".into();
    }
    if a < 10.0 {
        format!("{ms:.1} ms")
    } else if a < 1000.0 {
        format!("{ms:.0} ms")
    } else if a < 100_000.0 {
        format!("{} s", secs(ms))
    } else {
        format!("{:.0} s", ms / 1000.0)
    }
}

fn human_ms_signed(ms: f64) -> String {
    if ms > 0.0 {
        format!("+{}", human_ms(ms))
    } else {
        human_ms(ms)
    }
}

pub(crate) fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    let u = UNITS[unit];
    if v < 10.0 {
        format!("{v:.2} {u}")
    } else if v < 100.0 {
        format!("{v:.1} {u}")
    } else {
        format!("{v:.0} {u}")
    }
}

fn human_bytes_signed(d: i128) -> String {
    let mag = human_bytes(d.unsigned_abs().min(u64::MAX as u128) as u64);
    match d.signum() {
        1 => format!("+{mag}"),
        -1 => format!("-{mag}"),
        _ => mag,
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 {
        format!("{:.2}x", b / a)
    } else {
        "-".into()
    }
}

/// Profile text (file names, client ids) is written by nodes; control
/// characters in it must not reach the terminal as escape sequences.
pub(crate) fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `YYYY-MM-DD HH:MM:SS UTC` from Unix milliseconds (0 = not recorded).
pub(crate) fn utc(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "not recorded".into();
    }
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a proleptic Gregorian date, counting in
    // 400-year eras that start on March 1st so leap days fall at the end.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A terminal waterfall with phase and byte totals, for a terminal `width`
/// columns wide (labels longer than what is left are cut; the time axis
/// gets at least 10 columns, so very narrow terminals wrap).
pub fn render_text(p: &BootProfile, width: usize) -> String {
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

/// Two boots side by side: phases and byte totals with their differences,
/// then the files whose registry wait changed most.
pub fn render_compare(a: &BootProfile, b: &BootProfile) -> String {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::profile::model::*;

    fn wait(registry_ms: f64, cache: u64, fetched: u64, fetches: &[u32]) -> Wait {
        Wait {
            registry_ms,
            cache_bytes: cache,
            fetched_bytes: fetched,
            fetches: fetches.to_vec(),
        }
    }

    const MIB: u64 = 1 << 20;

    /// A Pi-like boot: DHCP 0-400 ms, TFTP 440-3000 ms, mount at 4000 ms,
    /// booted at 12 s; 5 s of registry wait summed over requests.
    pub(crate) fn sample() -> BootProfile {
        let tftp = |file: &str, start, end, size, retries, generated, w| TftpTransfer {
            file: file.into(),
            start_ms: start,
            end_ms: end,
            size,
            bytes: size,
            outcome: TftpOutcome::Complete,
            retries,
            generated,
            wait: w,
        };
        let nfs = |path: &str, first, last, bytes, w, ops: &[(&str, u32)]| NfsFile {
            path: path.into(),
            first_ms: first,
            last_ms: last,
            ops: ops.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            bytes_read: bytes,
            busy_ms: 1.0,
            wait: w,
        };
        let fetch = |id, start, dur, bytes, by: &str| Fetch {
            id,
            layer: "a1b2c3d4".into(),
            start_ms: start,
            duration_ms: dur,
            compressed_bytes: bytes / 2,
            bytes,
            by: by.into(),
        };
        BootProfile {
            version: PROFILE_VERSION,
            node: "cm4-1".into(),
            boot: 3,
            kind: "raspberrypi".into(),
            image: "registry.lan/os/base:latest".into(),
            manifest: Some("sha256:0123456789abcdef".into()),
            started_unix_ms: 1_700_000_000_000,
            began_with: "dhcp".into(),
            booted: Some(Booted {
                at_ms: 12_000.0,
                how: BootedBy::Api,
            }),
            dhcp: vec![DhcpExchange {
                start_ms: 0.0,
                end_ms: Some(400.0),
                messages: ["DISCOVER", "OFFER", "REQUEST", "ACK"]
                    .map(String::from)
                    .to_vec(),
                address: Some("192.168.150.101".into()),
                client: Some("PXEClient:Arch:00000".into()),
            }],
            tftp: vec![
                // Recorded out of start order on purpose.
                tftp(
                    "start4.elf",
                    500.0,
                    1500.0,
                    2 * MIB,
                    0,
                    false,
                    wait(600.0, 0, 2 * MIB, &[1]),
                ),
                tftp("config.txt", 440.0, 470.0, 120, 0, true, Wait::default()),
                tftp(
                    "kernel8.img",
                    1600.0,
                    3000.0,
                    8 * MIB,
                    1,
                    false,
                    wait(900.0, 0, 8 * MIB, &[2]),
                ),
            ],
            nfs_mounts: vec![NfsMount {
                at_ms: 4000.0,
                export: "/nodes/cm4-1".into(),
                client: "192.168.150.101".into(),
                wait_ms: 0.0,
            }],
            nfs_files: vec![
                nfs("/", 4000.0, 4010.0, 0, Wait::default(), &[("GETATTR", 2)]),
                nfs(
                    "/sbin/init",
                    4100.0,
                    5000.0,
                    MIB,
                    wait(1500.0, MIB / 2, MIB, &[3]),
                    &[("READ", 9), ("LOOKUP", 1)],
                ),
                nfs(
                    "/usr/lib/libc.so.6",
                    4200.0,
                    6000.0,
                    2 * MIB,
                    wait(2000.0, MIB, 2 * MIB, &[4]),
                    &[("READ", 20)],
                ),
                nfs(
                    "/etc/<script>alert(1)</script>",
                    5000.0,
                    5100.0,
                    100,
                    wait(0.0, 100, 0, &[]),
                    &[("READ", 1)],
                ),
            ],
            fetches: vec![
                fetch(1, 500.0, 500.0, 2 * MIB, "tftp start4.elf"),
                fetch(2, 1650.0, 850.0, 8 * MIB, "tftp kernel8.img"),
                fetch(3, 4100.0, 1400.0, MIB, "nfs /sbin/init"),
                fetch(4, 4300.0, 1700.0, 2 * MIB, "nfs /usr/lib/libc.so.6"),
                fetch(5, 4500.0, 2500.0, 4 * MIB, "prefetch"),
            ],
            prefetch: Some(PrefetchRun {
                start_ms: 4400.0,
                end_ms: Some(9000.0),
                planned_chunks: 100,
                fetched_chunks: 40,
                learned_from: "boot 2".into(),
            }),
            errors: Vec::new(),
            registry: None,
        }
    }

    fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
    }

    fn cells(line: &str) -> Vec<&str> {
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    }

    #[test]
    fn text_has_phase_totals_with_the_right_numbers() {
        let text = render_text(&sample(), 60);
        let row = |name: &str| cells(line_with(&text, name)).join(" | ");
        assert_eq!(
            row("DHCP (until address)"),
            "DHCP (until address) | 400 ms | 3.3%"
        );
        assert_eq!(
            row("TFTP (boot files)"),
            "TFTP (boot files) | 2.56 s | 21.3%"
        );
        assert_eq!(row("kernel start-up"), "kernel start-up | 1.00 s | 8.3%");
        assert_eq!(
            row("NFS root until booted"),
            "NFS root until booted | 8.00 s | 66.7%"
        );
        assert_eq!(row("between phases"), "between phases | 40 ms | 0.3%");
        assert_eq!(row("  total"), "total | 12.0 s | 100.0%");
        assert!(
            text.contains("boot profile: node cm4-1, boot 3 (raspberrypi)"),
            "{text}"
        );
        assert!(text.contains("manifest: sha256:0123456789abcdef"), "{text}");
        assert!(text.contains("started:  2023-11-14 22:13:20 UTC"), "{text}");
        assert!(
            text.contains("ended:    booted at 12.0 s: the node called the booted API"),
            "{text}"
        );
    }

    #[test]
    fn text_bytes_section_splits_registry_and_cache() {
        let text = render_text(&sample(), 60);
        // 17 MiB fetched in all, 4 MiB of it by the prefetcher.
        assert_eq!(
            cells(line_with(&text, "registry, uncompressed")),
            [
                "registry, uncompressed",
                "17.0 MiB",
                "(13.0 MiB for node requests, 4.00 MiB by the prefetcher)"
            ]
        );
        assert_eq!(
            cells(line_with(&text, "registry, downloaded"))[1],
            "8.50 MiB"
        );
        // 0.5 MiB + 1 MiB + 100 B from the cache.
        assert_eq!(cells(line_with(&text, "chunk cache"))[1], "1.50 MiB");
        assert_eq!(cells(line_with(&text, "served over TFTP"))[1], "10.0 MiB");
        assert_eq!(cells(line_with(&text, "served over NFS"))[1], "3.00 MiB");
    }

    #[test]
    fn text_rows_are_in_time_order_and_flag_registry_waits() {
        let text = render_text(&sample(), 191);
        let order = [
            "dhcp DISCOVER OFFER REQUEST ACK (address 192.168.150.101",
            "tftp config.txt (120 B, complete, generated)",
            "tftp start4.elf",
            "tftp kernel8.img (8.00 MiB, complete, 1 retry)",
            "nfs mount /nodes/cm4-1 (from 192.168.150.101)",
            "nfs / (0 B read, 2 calls: GETATTR 2)",
            "nfs /sbin/init",
            "nfs /usr/lib/libc.so.6",
            "prefetch run (40 of 100 chunks, learned from boot 2)",
            "nfs /etc/<script>",
        ];
        let pos: Vec<usize> = order
            .iter()
            .map(|n| {
                text.find(n)
                    .unwrap_or_else(|| panic!("no {n:?} in:\n{text}"))
            })
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}\n{text}");

        let kernel = line_with(&text, "tftp kernel8.img");
        assert!(
            kernel.starts_with("  1.600 s   1.40 s   900 ms  8.00 MiB |"),
            "{kernel}"
        );
        let config = line_with(&text, "tftp config.txt");
        assert!(config.starts_with("  0.440 s    30 ms "), "{config}");
        assert!(config[18..38].trim().is_empty(), "{config}");
        assert_eq!(&config[38..39], "|", "{config}");

        // 191 columns leave 60 for the axis over 12 s: the kernel's bar
        // covers 1.6-3.0 s = columns 8..15.
        let bar = &kernel[kernel.find('|').unwrap() + 1..];
        let bar = &bar[..bar.find('|').unwrap()];
        assert_eq!(bar.len(), 60);
        assert_eq!(bar.find('='), Some(8));
        assert_eq!(bar.rfind('='), Some(14));
        // The booted marker sits in the last column.
        assert_eq!(bar.rfind(':'), Some(59));
        let mount = line_with(&text, "nfs mount");
        assert!(mount.starts_with("  4.000 s        - "), "{mount}");
        assert!(text.contains("0 s"), "{text}");
    }

    #[test]
    fn text_lists_top_waits_and_what_a_warm_cache_saves() {
        let text = render_text(&sample(), 40);
        let top = &text[text.find("Files that waited longest").unwrap()..];
        let names: Vec<&str> = top
            .lines()
            .skip(2)
            .take_while(|l| !l.is_empty())
            .map(|l| l.rsplit("  ").next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "nfs /usr/lib/libc.so.6",
                "nfs /sbin/init",
                "tftp kernel8.img",
                "tftp start4.elf"
            ]
        );
        assert_eq!(
            cells(line_with(top, "nfs /sbin/init")),
            ["1.50 s", "1.00 MiB", "1", "nfs /sbin/init"]
        );
        // 600 + 900 + 1500 + 2000 ms of 12 s.
        assert!(
            text.trim_end()
                .ends_with("a warm cache would have saved about 5.00 s (41.7% of the boot)"),
            "{text}"
        );
    }

    #[test]
    fn saving_is_capped_at_the_boot_and_unfinished_boots_say_so() {
        let mut p = sample();
        p.booted = None;
        p.nfs_files[2].wait.registry_ms = 60_000.0;
        let text = render_text(&p, 30);
        // Without "booted" the boot ends at its last event: the prefetch
        // fetch ending at 7 s.
        assert!(
            text.contains("ended:    not finished (last event at 7.00 s)"),
            "{text}"
        );
        assert!(text.contains("NFS root (not finished)"), "{text}");
        assert!(
            text.contains("a warm cache would have saved about 7.00 s (100.0% of the boot)"),
            "{text}"
        );
        assert!(!text.contains(": = booted"), "{text}");
    }

    #[test]
    fn control_characters_do_not_reach_the_terminal() {
        let mut p = sample();
        p.nfs_files[1].path = "/evil\u{1b}[2Jname".into();
        let text = render_text(&p, 30);
        assert!(!text.contains('\u{1b}'));
        assert!(text.contains(r"/evil\u{1b}[2Jname"), "{text}");
    }

    #[test]
    fn empty_profile_renders() {
        let text = render_text(&BootProfile::default(), 0);
        assert!(text.contains("a warm cache would have saved about 0.00 s (0.0% of the boot)"));
        assert!(text.contains("none: every read was served from the cache"));
    }

    #[test]
    fn compare_shows_both_columns_and_changed_files() {
        let a = sample();
        let mut b = sample();
        b.boot = 4;
        b.booted = Some(Booted {
            at_ms: 9_500.0,
            how: BootedBy::Quiet { quiet_secs: 5 },
        });
        b.nfs_files[2].wait.registry_ms = 0.0; // libc came from the cache
        b.fetches.truncate(2);
        let text = render_compare(&a, &b);
        assert!(text.contains("A: node cm4-1, boot 3,"), "{text}");
        assert!(text.contains("B: node cm4-1, boot 4,"), "{text}");
        assert_eq!(
            cells(line_with(&text, "  total")),
            ["total", "12.0 s", "9.50 s", "-2.50 s", "0.79x"]
        );
        assert_eq!(
            cells(line_with(&text, "NFS root until booted")),
            [
                "NFS root until booted",
                "8.00 s",
                "5.50 s",
                "-2.50 s",
                "0.69x"
            ]
        );
        assert_eq!(
            cells(line_with(&text, "DHCP (until address)")),
            ["DHCP (until address)", "400 ms", "400 ms", "0 ms", "1.00x"]
        );
        // B fetched only the first two: 2 + 8 MiB of 17.
        assert_eq!(
            cells(line_with(&text, "registry, uncompressed")),
            [
                "registry, uncompressed",
                "17.0 MiB",
                "10.0 MiB",
                "-7.00 MiB",
                "0.59x"
            ]
        );
        let files = &text[text.find("Files whose registry wait changed most").unwrap()..];
        assert_eq!(
            cells(files.lines().nth(2).unwrap()),
            ["2.00 s", "0 ms", "-2.00 s", "nfs /usr/lib/libc.so.6"]
        );
        assert_eq!(files.lines().count(), 3, "{files}");
    }

    #[test]
    fn helpers() {
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(200 * MIB), "200 MiB");
        assert_eq!(human_ms(0.26), "0.3 ms");
        assert_eq!(human_ms(0.0), "0 ms");
        assert_eq!(human_ms(1234.0), "1.23 s");
        assert_eq!(human_ms(123_456.0), "123 s");
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1300.0), 2000.0);
        assert_eq!(nice_step(4999.0), 5000.0);
        assert_eq!(nice_step(6000.0), 10000.0);
        assert_eq!(tick_label(2500.0, 500.0), "2500 ms");
        assert_eq!(tick_label(4000.0, 2000.0), "4 s");
        assert_eq!(tick_label(1500.0, 1500.0), "1.5 s");
        assert_eq!(utc(0), "not recorded");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_709_251_199_000), "2024-02-29 23:59:59 UTC");
    }
}
