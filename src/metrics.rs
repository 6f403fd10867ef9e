//! What `serve` has done, for `GET /metrics` in the Prometheus text format
//! (version 0.0.4): counters and histograms that the protocol servers bump
//! as they work, and gauges read from the server's state when scraped.
//!
//! The counters are process-wide statics, as a metrics registry is: any
//! module can count without a handle threaded through, and nothing here
//! depends on another module.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
pub(crate) struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }
    pub(crate) fn inc(&self) {
        self.add(1);
    }
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How many of something are alive in this process: each
/// [`Live::enter`] counts one until its guard drops.
pub(crate) struct Live(AtomicUsize);

impl Live {
    pub(crate) const fn new() -> Live {
        Live(AtomicUsize::new(0))
    }
    pub(crate) fn enter(&'static self) -> LiveGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        LiveGuard(self)
    }
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One counted in a [`Live`] while it lives.
pub(crate) struct LiveGuard(&'static Live);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Observations sorted into cumulative buckets by upper bound (seconds).
pub(crate) struct Histogram {
    bounds: &'static [f64],
    buckets: [AtomicU64; 16],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    const fn new(bounds: &'static [f64]) -> Histogram {
        assert!(bounds.len() <= 16);
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; 16],
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Every counter and histogram `serve` keeps.
pub(crate) struct Metrics {
    pub(crate) dhcp_replies: Counter,
    /// Packets answered with nothing: malformed, from an ignored client,
    /// or not for this server.
    pub(crate) dhcp_unanswered: Counter,
    pub(crate) dhcp_send_errors: Counter,
    pub(crate) tftp_requests: Counter,
    pub(crate) tftp_errors: Counter,
    pub(crate) tftp_bytes: Counter,
    pub(crate) nfs_calls: Counter,
    /// Calls answered with anything but NFS3_OK (or an RPC-level error).
    pub(crate) nfs_errors: Counter,
    pub(crate) nfs_read_bytes: Counter,
    pub(crate) mount_calls: Counter,
    /// Time from a registry request to its answer's first byte.
    pub(crate) registry_latency: Histogram,
    pub(crate) boots_booted: Counter,
    pub(crate) boots_quiet: Counter,
    /// From a boot's start (DHCP or first request) to its end.
    pub(crate) boot_duration: Histogram,
}

const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BOOT_BOUNDS: &[f64] = &[
    5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 1200.0,
];

pub(crate) static METRICS: Metrics = Metrics {
    dhcp_replies: Counter::new(),
    dhcp_unanswered: Counter::new(),
    dhcp_send_errors: Counter::new(),
    tftp_requests: Counter::new(),
    tftp_errors: Counter::new(),
    tftp_bytes: Counter::new(),
    nfs_calls: Counter::new(),
    nfs_errors: Counter::new(),
    nfs_read_bytes: Counter::new(),
    mount_calls: Counter::new(),
    registry_latency: Histogram::new(LATENCY_BOUNDS),
    boots_booted: Counter::new(),
    boots_quiet: Counter::new(),
    boot_duration: Histogram::new(BOOT_BOUNDS),
};

/// What the server's state says at scrape time.
#[derive(Default)]
pub(crate) struct Gauges {
    pub(crate) registry_requests: u64,
    pub(crate) registry_bytes: u64,
    pub(crate) cache_bytes: u64,
    pub(crate) cache_hits: u64,
    pub(crate) cache_misses: u64,
    pub(crate) cache_evictions: u64,
    pub(crate) cache_corrupt: u64,
    /// Nodes by state name.
    pub(crate) nodes: Vec<(&'static str, u64)>,
    /// Swaps by state (running ones and how the ended ones ended).
    pub(crate) swaps: Vec<(&'static str, u64)>,
}

/// The exposition: counters from [`METRICS`], then `g`.
pub(crate) fn render(g: &Gauges) -> String {
    let m = &METRICS;
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, labels: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (l, v) in labels {
            let _ = writeln!(out, "{name}{l} {v}");
        }
    };
    counter(
        "lazyboot_dhcp_packets_total",
        "DHCP packets received, by outcome.",
        &[
            ("{outcome=\"answered\"}", m.dhcp_replies.get()),
            ("{outcome=\"unanswered\"}", m.dhcp_unanswered.get()),
        ],
    );
    counter(
        "lazyboot_dhcp_send_errors_total",
        "DHCP replies that could not be sent.",
        &[("", m.dhcp_send_errors.get())],
    );
    counter(
        "lazyboot_tftp_requests_total",
        "TFTP read requests.",
        &[("", m.tftp_requests.get())],
    );
    counter(
        "lazyboot_tftp_errors_total",
        "TFTP requests answered with an error.",
        &[("", m.tftp_errors.get())],
    );
    counter(
        "lazyboot_tftp_sent_bytes_total",
        "File bytes sent over TFTP.",
        &[("", m.tftp_bytes.get())],
    );
    counter(
        "lazyboot_nfs_calls_total",
        "MOUNT and NFSv3 calls, by program.",
        &[
            ("{program=\"nfs\"}", m.nfs_calls.get()),
            ("{program=\"mount\"}", m.mount_calls.get()),
        ],
    );
    counter(
        "lazyboot_nfs_errors_total",
        "NFS calls answered with an error status.",
        &[("", m.nfs_errors.get())],
    );
    counter(
        "lazyboot_nfs_read_bytes_total",
        "File bytes sent in NFS READ replies.",
        &[("", m.nfs_read_bytes.get())],
    );
    counter(
        "lazyboot_registry_requests_total",
        "Registry requests sent (each retry counts).",
        &[("", g.registry_requests)],
    );
    counter(
        "lazyboot_registry_received_bytes_total",
        "Bytes received from registries (manifests and blobs).",
        &[("", g.registry_bytes)],
    );
    counter(
        "lazyboot_cache_lookups_total",
        "Chunk cache lookups, by result.",
        &[
            ("{result=\"hit\"}", g.cache_hits),
            ("{result=\"miss\"}", g.cache_misses),
        ],
    );
    counter(
        "lazyboot_cache_evictions_total",
        "Chunks evicted to stay under the cache size.",
        &[("", g.cache_evictions)],
    );
    counter(
        "lazyboot_cache_corrupt_total",
        "Cache files that failed their checksum (removed, fetched again).",
        &[("", g.cache_corrupt)],
    );
    counter(
        "lazyboot_boots_total",
        "Boots that ended, by how: the node said so (marker or API) or went quiet.",
        &[
            ("{result=\"booted\"}", m.boots_booted.get()),
            ("{result=\"quiet\"}", m.boots_quiet.get()),
        ],
    );
    m.registry_latency.render(
        &mut out,
        "lazyboot_registry_latency_seconds",
        "Time from a registry request to the first byte of its answer.",
    );
    m.boot_duration.render(
        &mut out,
        "lazyboot_boot_duration_seconds",
        "Boot durations, from the boot's first request to its end.",
    );
    let _ = writeln!(
        out,
        "# HELP lazyboot_cache_bytes Bytes of chunks in the cache.\n\
         # TYPE lazyboot_cache_bytes gauge\nlazyboot_cache_bytes {}",
        g.cache_bytes
    );
    let _ = writeln!(
        out,
        "# HELP lazyboot_nodes Nodes by state.\n# TYPE lazyboot_nodes gauge"
    );
    for (state, n) in &g.nodes {
        let _ = writeln!(out, "lazyboot_nodes{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP lazyboot_swaps Image swaps by state (kept in the fleet database).\n# TYPE lazyboot_swaps gauge"
    );
    for (state, n) in &g.swaps {
        let _ = writeln!(out, "lazyboot_swaps{{state=\"{state}\"}} {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_the_text_is_well_formed() {
        static H: Histogram = Histogram::new(&[0.1, 1.0]);
        H.observe(Duration::from_millis(50));
        H.observe(Duration::from_millis(500));
        H.observe(Duration::from_secs(5));
        let mut out = String::new();
        H.render(&mut out, "x_seconds", "help");
        assert!(out.contains("x_seconds_bucket{le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_sum 5.55\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"), "{out}");
        let text = render(&Gauges {
            nodes: vec![("up", 2), ("failed", 1)],
            swaps: vec![("done", 3)],
            ..Gauges::default()
        });
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("lazyboot_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert!(text.contains("lazyboot_nodes{state=\"up\"} 2"), "{text}");
        assert!(text.contains("lazyboot_swaps{state=\"done\"} 3"), "{text}");
    }
}
