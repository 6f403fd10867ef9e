//! What one boot of one node looked like, as stored on disk and rendered by
//! `lazyboot profile`. Times are milliseconds since the boot began (the
//! node's DHCP DISCOVER, or its first TFTP/NFS request when DHCP is not ours).

use serde::{Deserialize, Serialize};

/// Format version written into every stored profile (`BootProfile::version`).
pub const PROFILE_VERSION: u32 = 1;

/// The recorded timeline of one boot of one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BootProfile {
    /// Format version of this record (`PROFILE_VERSION` when written).
    pub version: u32,
    /// Name of the node, as in the config.
    pub node: String,
    /// 1 for the node's first recorded boot, counting on across restarts.
    pub boot: u64,
    /// The node's boot kind from the config: "raspberrypi", "uboot" or "ipxe".
    pub kind: String,
    /// The image reference the node boots and the manifest it resolved to.
    pub image: String,
    /// Manifest digest the image resolved to (None: the image was never opened during this boot).
    pub manifest: Option<String>,
    /// Wall-clock start (Unix milliseconds).
    pub started_unix_ms: u64,
    /// What began the timeline: "dhcp", "tftp" or "nfs".
    pub began_with: String,
    /// When and how the boot was judged finished (None: not, or not yet).
    pub booted: Option<Booted>,
    /// DHCP exchanges with the node, in order.
    pub dhcp: Vec<DhcpExchange>,
    /// TFTP transfers served to the node, in order of completion.
    pub tftp: Vec<TftpTransfer>,
    /// NFS MOUNT requests from the node, in order.
    pub nfs_mounts: Vec<NfsMount>,
    /// NFS operations grouped by file, in order of first use.
    pub nfs_files: Vec<NfsFile>,
    /// Registry range requests node requests waited on (and the prefetcher's).
    pub fetches: Vec<Fetch>,
    /// The prefetch plan run for this boot, if one was started.
    pub prefetch: Option<PrefetchRun>,
    /// What went wrong serving the node (an image that does not open, a
    /// boot file that cannot be made), as the log says it.
    #[serde(default)]
    pub errors: Vec<ProfileNote>,
    /// Everything the registry sent for the node's image from the node's
    /// first request to the end of the boot: streaming passes included
    /// (which `fetches` do not list), and whatever else read the image
    /// meanwhile (other nodes, prefetch, background fill).
    #[serde(default)]
    pub registry: Option<RegistryTraffic>,
}

/// Registry traffic for a node's image over its boot (all readers of that image, not only the
/// node).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryTraffic {
    /// Sent from the node's first request to the end of its boot.
    pub bytes: u64,
    /// Registry requests sent in the same period as `bytes`.
    pub requests: u64,
    /// Sent for the image before the node first asked for it (the image is
    /// opened, and its streaming pass starts, when `serve` starts).
    #[serde(default)]
    pub before_bytes: u64,
}

/// An error logged while serving a node, with its time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileNote {
    /// When it happened, ms since the boot began.
    pub at_ms: f64,
    /// The error as logged.
    pub message: String,
}

/// The end of a boot: when it was judged booted, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Booted {
    /// When the boot counts as finished, ms since the boot began.
    pub at_ms: f64,
    /// Which rule decided it.
    pub how: BootedBy,
}

/// The rule that decided a boot had finished (serialised with a `by` tag).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum BootedBy {
    /// The node called `GET /api/v1/nodes/NAME/booted`.
    Api,
    /// The node read the configured marker file over NFS.
    Marker {
        /// Path of the marker file in the node's root, as configured.
        path: String,
    },
    /// No NFS traffic from the node for `quiet_secs`; the boot is taken to
    /// have ended at its last NFS operation.
    Quiet {
        /// The configured silence, in seconds.
        quiet_secs: u64,
    },
}

impl BootedBy {
    /// One human sentence saying how the boot was judged finished, for reports.
    pub fn describe(&self) -> String {
        match self {
            BootedBy::Api => "the node called the booted API".into(),
            BootedBy::Marker { path } => format!("the node read the marker {path}"),
            BootedBy::Quiet { quiet_secs } => {
                format!("NFS went quiet for {quiet_secs} s (end = last NFS operation)")
            }
        }
    }
}

/// One DHCP conversation, from a DISCOVER (or a lone REQUEST) to its ACK.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DhcpExchange {
    /// When the first message came, ms since the boot began.
    pub start_ms: f64,
    /// When the address was acknowledged (None: no ACK seen).
    pub end_ms: Option<f64>,
    /// Message types in order, e.g. ["DISCOVER", "OFFER", "REQUEST", "ACK"].
    pub messages: Vec<String>,
    /// The address handed to the node (None: none offered yet).
    pub address: Option<String>,
    /// The client's firmware as its options told it ("PXEClient:Arch:00000", ...).
    pub client: Option<String>,
}

/// How a TFTP transfer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TftpOutcome {
    /// Every byte was read.
    Complete,
    /// The client asked for the size and stopped before any data (tsize probe).
    Probe,
    /// The client stopped part way (early terminate, timeout, error).
    Incomplete,
    /// The file was not found or could not be read.
    Failed,
}

/// One TFTP read request served to the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TftpTransfer {
    /// Requested file name, as the client sent it.
    pub file: String,
    /// When the request came, ms since the boot began.
    pub start_ms: f64,
    /// When the client took its last block (or the request failed), ms since the boot began.
    pub end_ms: f64,
    /// Size of the file in bytes (0 if it could not be opened).
    pub size: u64,
    /// Bytes the server read for the client (what it sent, not counting resends).
    pub bytes: u64,
    /// How the transfer ended.
    pub outcome: TftpOutcome,
    /// Earlier requests of this file in this boot that did not complete: the
    /// client had to ask again. (Retransmitted blocks within a transfer are not counted.)
    pub retries: u32,
    /// Generated by lazyboot (boot.ipxe, cmdline.txt, ...) rather than read from the image.
    pub generated: bool,
    /// Time and bytes this transfer spent on the image's read path.
    pub wait: Wait,
}

/// What a request (or a group of them) spent on the image's read path.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Wait {
    /// Milliseconds spent waiting for registry fetches (its own or another
    /// request's in flight for the same chunk).
    pub registry_ms: f64,
    /// Bytes of the requests served from chunks already in the cache.
    pub cache_bytes: u64,
    /// Uncompressed bytes (whole chunks) fetched from the registry for them.
    pub fetched_bytes: u64,
    /// Ids (`Fetch::id`) of the fetches waited on.
    pub fetches: Vec<u32>,
}

impl Wait {
    /// Fold `other` into this total: sums the times and bytes, and adds fetch ids not yet listed.
    pub fn add(&mut self, other: &Wait) {
        self.registry_ms += other.registry_ms;
        self.cache_bytes += other.cache_bytes;
        self.fetched_bytes += other.fetched_bytes;
        for f in &other.fetches {
            if !self.fetches.contains(f) {
                self.fetches.push(*f);
            }
        }
    }
}

/// One NFS MOUNT by the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NfsMount {
    /// When the MNT request came.
    pub at_ms: f64,
    /// The export path the client asked for (`/nodes/NAME`).
    pub export: String,
    /// The client's IP address.
    pub client: String,
    /// How long the MNT waited for the image (a first streaming pass).
    #[serde(default)]
    pub wait_ms: f64,
}

/// All NFS calls of a boot on one file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NfsFile {
    /// Path in the node's root ("/" for the root, "(upper)" for files only
    /// in the node's writable upper).
    pub path: String,
    /// When the first call on this file started, ms since the boot began.
    pub first_ms: f64,
    /// When the last call on this file was answered, ms since the boot began.
    pub last_ms: f64,
    /// Calls by procedure name (GETATTR, LOOKUP, READ, ...).
    pub ops: std::collections::BTreeMap<String, u32>,
    /// Data bytes returned by READ calls.
    pub bytes_read: u64,
    /// Sum of the server's time on these calls.
    pub busy_ms: f64,
    /// Time and bytes these calls spent on the image's read path.
    pub wait: Wait,
}

/// One registry range fetch into the chunk cache.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fetch {
    /// Number of this fetch within the boot, from 1 (what `Wait::fetches` refers to).
    pub id: u32,
    /// Short layer digest.
    pub layer: String,
    /// When the fetch started, ms since the boot began.
    pub start_ms: f64,
    /// How long the fetch took, in ms.
    pub duration_ms: f64,
    /// Bytes over the wire (compressed range).
    pub compressed_bytes: u64,
    /// Uncompressed bytes it produced into the cache.
    pub bytes: u64,
    /// Who asked: "nfs /usr/lib/...", "tftp vmlinuz", "prefetch".
    pub by: String,
}

/// The run of an image's prefetch plan during a boot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrefetchRun {
    /// When the prefetch started, ms since the boot began.
    pub start_ms: f64,
    /// When it finished, ms since the boot began (None: still running or abandoned).
    pub end_ms: Option<f64>,
    /// Chunks the plan lists.
    pub planned_chunks: u64,
    /// Chunks the prefetch itself fetched from the registry (the rest were cached already or
    /// fetched by a node first).
    pub fetched_chunks: u64,
    /// Name of the node whose earlier boot the plan was learned from.
    pub learned_from: String,
}

/// Totals a report leads with: where the seconds went and where the bytes came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Boot start to booted (or to the last event if it never finished).
    pub total_ms: f64,
    /// Whether the node was judged booted (otherwise `total_ms` ends at the last event).
    pub finished: bool,
    /// Boot start to the first DHCP ACK (0 without one).
    pub dhcp_ms: f64,
    /// First TFTP request to the end of the last transfer.
    pub tftp_ms: f64,
    /// Bytes sent over TFTP.
    pub tftp_bytes: u64,
    /// Last TFTP transfer to the NFS mount (kernel + initramfs start-up).
    pub kernel_ms: f64,
    /// NFS mount to booted.
    pub nfs_ms: f64,
    /// Bytes READ over NFS.
    pub nfs_bytes: u64,
    /// Uncompressed bytes fetched from the registry into the cache during the boot.
    pub registry_bytes: u64,
    /// Compressed bytes the registry sent for those fetches.
    pub registry_compressed_bytes: u64,
    /// Bytes of node requests served from chunks already cached.
    pub cache_bytes: u64,
    /// Time node requests spent waiting on the registry: what a warm cache saves.
    pub registry_wait_ms: f64,
}

impl BootProfile {
    /// The last moment anything happened.
    pub fn last_event_ms(&self) -> f64 {
        let mut t: f64 = 0.0;
        for d in &self.dhcp {
            t = t.max(d.end_ms.unwrap_or(d.start_ms));
        }
        for x in &self.tftp {
            t = t.max(x.end_ms);
        }
        for m in &self.nfs_mounts {
            t = t.max(m.at_ms);
        }
        for f in &self.nfs_files {
            t = t.max(f.last_ms);
        }
        for f in &self.fetches {
            t = t.max(f.start_ms + f.duration_ms);
        }
        t
    }

    /// Totals of this profile for the head of a report.
    pub fn summary(&self) -> Summary {
        let total_ms = self
            .booted
            .as_ref()
            .map_or_else(|| self.last_event_ms(), |b| b.at_ms);
        let dhcp_end = self
            .dhcp
            .iter()
            .filter_map(|d| d.end_ms)
            .fold(None, |a: Option<f64>, t| Some(a.map_or(t, |a| a.min(t))));
        let tftp_start = self.tftp.iter().map(|t| t.start_ms).reduce(f64::min);
        let tftp_end = self.tftp.iter().map(|t| t.end_ms).reduce(f64::max);
        let mount = self.nfs_mounts.first().map(|m| m.at_ms);
        let mut wait = Wait::default();
        for t in &self.tftp {
            wait.add(&t.wait);
        }
        for f in &self.nfs_files {
            wait.add(&f.wait);
        }
        for m in &self.nfs_mounts {
            wait.registry_ms += m.wait_ms;
        }
        Summary {
            total_ms,
            finished: self.booted.is_some(),
            dhcp_ms: dhcp_end.unwrap_or(0.0),
            tftp_ms: match (tftp_start, tftp_end) {
                (Some(a), Some(b)) => b - a,
                _ => 0.0,
            },
            tftp_bytes: self.tftp.iter().map(|t| t.bytes).sum(),
            kernel_ms: match (tftp_end, mount) {
                (Some(a), Some(b)) if b > a => b - a,
                _ => 0.0,
            },
            nfs_ms: mount.map_or(0.0, |m| (total_ms - m).max(0.0)),
            nfs_bytes: self.nfs_files.iter().map(|f| f.bytes_read).sum(),
            registry_bytes: self.fetches.iter().map(|f| f.bytes).sum(),
            registry_compressed_bytes: self.fetches.iter().map(|f| f.compressed_bytes).sum(),
            cache_bytes: wait.cache_bytes,
            registry_wait_ms: wait.registry_ms,
        }
    }
}
