//! The live boot timelines of `lazyboot serve`: one per node, begun by the
//! node's DHCP DISCOVER (or its first TFTP request when DHCP is not ours),
//! fed by the DHCP, TFTP and NFS servers, ended by "booted", and written to
//! the [`ProfileStore`] as it goes (so a killed server loses at most the
//! last couple of seconds).
//!
//! At the end of a boot the chunks it read become the image's prefetch plan
//! if the image has none yet.

use super::model::*;
use super::ProfileStore;
use crate::cache::ChunkCache;
use crate::digest::Digest;
use crate::image::prefetch::PrefetchPlan;
use crate::image::trace::{FetchNote, ReadTrace};
use crate::registry::FetchStats;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How old an unfinished boot may be for a restarted server to go on with it.
const RESUME_WITHIN: Duration = Duration::from_secs(600);

/// How a recorder decides that a boot has finished.
#[derive(Clone, Debug)]
pub(crate) struct BootedRules {
    /// A path in the node's root whose NFS read means "booted".
    pub(crate) marker: Option<String>,
    /// NFS silence after the mount that means "booted" (None: never).
    pub(crate) quiet: Option<Duration>,
}

/// A TFTP transfer as the TFTP server saw it end.
pub(crate) struct TftpDone {
    pub(crate) file: String,
    pub(crate) started: Instant,
    /// When the client took its last block (or the request failed).
    pub(crate) ended: Instant,
    pub(crate) size: u64,
    pub(crate) bytes: u64,
    /// Blocks read for the client: a tsize probe takes at most the first
    /// (none after an OACK, which goes out before any block is read).
    pub(crate) reads: u32,
    pub(crate) generated: bool,
    pub(crate) failed: bool,
    pub(crate) trace: ReadTrace,
}

/// One NFS call as the NFS server saw it.
pub(crate) struct NfsCall<'a> {
    pub(crate) procedure: &'a str,
    pub(crate) path: String,
    pub(crate) started: Instant,
    pub(crate) bytes_read: u64,
    pub(crate) trace: ReadTrace,
}

struct Live {
    profile: BootProfile,
    t0: Instant,
    files: HashMap<String, usize>,
    /// Incomplete transfers per file: the next request of it is a retry.
    incomplete: HashMap<String, u32>,
    last_nfs: Option<Instant>,
    reads: Vec<(Digest, u64)>,
    manifest: Option<Digest>,
    /// The node's image's registry counters, and their value when the
    /// node first asked for it this boot.
    traffic: Option<(RegistryProbe, FetchStats)>,
    dirty: bool,
}

/// Reads a source's registry counters (every request and byte: streaming
/// passes, range fetches, prefetch, background fill).
pub(crate) type RegistryProbe = Arc<dyn Fn() -> FetchStats + Send + Sync>;

impl Live {
    /// What the registry sent for the node's image since it first asked.
    fn refresh_traffic(&mut self) {
        let Some((probe, start)) = &self.traffic else {
            return;
        };
        let now = probe();
        let t = RegistryTraffic {
            bytes: now.bytes.saturating_sub(start.bytes),
            requests: now.requests.saturating_sub(start.requests),
            before_bytes: start.bytes,
        };
        if self.profile.registry.as_ref() != Some(&t) {
            self.profile.registry = Some(t);
            self.dirty = true;
        }
    }

    fn ms(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.t0).as_secs_f64() * 1000.0
    }

    fn done(&self) -> bool {
        self.profile.booted.is_some()
    }

    fn wait_of(&mut self, trace: &ReadTrace, by: &str) -> Wait {
        let mut ids = Vec::new();
        for f in &trace.fetches {
            ids.push(self.add_fetch(f, by));
        }
        self.reads.extend(trace.chunks.iter().cloned());
        Wait {
            registry_ms: trace.wait.as_secs_f64() * 1000.0,
            cache_bytes: trace.cache_bytes,
            fetched_bytes: trace.fetched_bytes,
            fetches: ids,
        }
    }

    fn add_fetch(&mut self, f: &FetchNote, by: &str) -> u32 {
        let id = self.profile.fetches.len() as u32 + 1;
        let start_ms = self.ms(f.started);
        self.profile.fetches.push(Fetch {
            id,
            layer: f.layer.short().to_string(),
            start_ms,
            duration_ms: f.duration.as_secs_f64() * 1000.0,
            compressed_bytes: f.compressed_bytes,
            bytes: f.bytes,
            by: by.to_string(),
        });
        id
    }
}

pub(crate) struct Recorder {
    store: ProfileStore,
    rules: BootedRules,
    cache: Option<Arc<ChunkCache>>,
    live: Mutex<HashMap<String, Live>>,
    /// Nodes whose stored profile was already considered for resuming.
    resume_checked: Mutex<std::collections::HashSet<String>>,
    /// Each node's NFS calls in progress, counted by its export: a call
    /// that waits for a streaming image is long, not silence.
    nfs_running: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

impl Recorder {
    pub(crate) fn new(
        store: ProfileStore,
        rules: BootedRules,
        cache: Option<Arc<ChunkCache>>,
    ) -> Recorder {
        Recorder {
            store,
            rules,
            cache,
            live: Mutex::new(HashMap::new()),
            resume_checked: Mutex::new(Default::default()),
            nfs_running: Mutex::new(HashMap::new()),
        }
    }

    /// The count of `node`'s NFS calls in progress, for its export to keep:
    /// a boot is not quiet while one runs.
    pub(crate) fn nfs_running(&self, node: &str) -> Arc<AtomicUsize> {
        self.nfs_running
            .lock()
            .entry(node.to_string())
            .or_default()
            .clone()
    }

    fn nfs_busy(&self, node: &str) -> bool {
        self.nfs_running
            .lock()
            .get(node)
            .is_some_and(|n| n.load(Ordering::SeqCst) > 0)
    }

    pub(crate) fn store(&self) -> &ProfileStore {
        &self.store
    }

    /// A new boot of `node` begins now; an unfinished earlier one is saved as is.
    pub(crate) fn begin(&self, node: &str, kind: &str, image: &str, began_with: &str) {
        let mut live = self.live.lock();
        if let Some(old) = live.remove(node) {
            self.save(&old);
        }
        self.resume_checked.lock().insert(node.to_string());
        let boot = self.store.next_boot(node);
        let profile = BootProfile {
            version: PROFILE_VERSION,
            node: node.into(),
            boot,
            kind: kind.into(),
            image: image.into(),
            started_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            began_with: began_with.into(),
            ..Default::default()
        };
        let l = Live {
            profile,
            t0: Instant::now(),
            files: HashMap::new(),
            incomplete: HashMap::new(),
            last_nfs: None,
            reads: Vec::new(),
            manifest: None,
            traffic: None,
            dirty: true,
        };
        self.save(&l);
        live.insert(node.into(), l);
        tracing::debug!(node, boot, "boot timeline started ({began_with})");
    }

    /// Run `f` on `node`'s timeline if a boot is in progress.
    fn with_live(&self, node: &str, f: impl FnOnce(&mut Live)) -> bool {
        let mut live = self.live.lock();
        self.resume_into(&mut live, node);
        match live.get_mut(node) {
            Some(l) if !l.done() => {
                f(l);
                l.dirty = true;
                true
            }
            _ => false,
        }
    }

    /// Put `node`'s resumable boot (see [`resume`](Self::resume)) into
    /// `live` if it has no timeline there.
    fn resume_into(&self, live: &mut HashMap<String, Live>, node: &str) {
        if !live.contains_key(node) {
            if let Some(l) = self.resume(node) {
                live.insert(node.to_string(), l);
            }
        }
    }

    /// The node's latest boot from disk if it is unfinished and recent: a
    /// server restarted while the node boots goes on with its timeline.
    fn resume(&self, node: &str) -> Option<Live> {
        // Asked on every NFS call of a node that booted before this process:
        // look at the disk once.
        if !self.resume_checked.lock().insert(node.to_string()) {
            return None;
        }
        let profile = self.store.load(node, None).ok()?;
        if profile.booted.is_some() {
            return None;
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_millis() as u64;
        let age = Duration::from_millis(now_ms.checked_sub(profile.started_unix_ms)?);
        if age > RESUME_WITHIN {
            return None;
        }
        let t0 = Instant::now().checked_sub(age)?;
        tracing::info!(
            node,
            boot = profile.boot,
            "resuming the boot timeline after a restart"
        );
        let files = profile
            .nfs_files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.path.clone(), i))
            .collect();
        let manifest = profile
            .manifest
            .as_deref()
            .and_then(|m| Digest::parse(m).ok());
        Some(Live {
            profile,
            t0,
            files,
            incomplete: HashMap::new(),
            last_nfs: Some(Instant::now()),
            reads: Vec::new(),
            manifest,
            traffic: None,
            dirty: true,
        })
    }

    /// Whether `node` has a boot in progress.
    pub(crate) fn in_progress(&self, node: &str) -> bool {
        let mut live = self.live.lock();
        self.resume_into(&mut live, node);
        live.get(node).is_some_and(|l| !l.done())
    }

    /// Something went wrong serving `node`: kept in its boot's profile
    /// (the first few of a kind; a node that retries would repeat it).
    pub(crate) fn note_error(&self, node: &str, message: &str) {
        self.with_live(node, |l| {
            let at_ms = l.ms(Instant::now());
            let errors = &mut l.profile.errors;
            if errors.len() < 32 && !errors.iter().any(|e| e.message == message) {
                errors.push(ProfileNote {
                    at_ms,
                    message: message.to_string(),
                });
            }
        });
    }

    /// `node` is being served the image `manifest`: it goes into the
    /// boot's timeline, and what the registry sends for the image counts
    /// from the first call of a boot (`probe`, which reads the image's
    /// registry counters, is made only then). Called on every NFS call:
    /// one lock, and nothing else when nothing changes.
    pub(crate) fn image_in_use(
        &self,
        node: &str,
        manifest: &Digest,
        probe: impl FnOnce() -> RegistryProbe,
    ) {
        let mut live = self.live.lock();
        let Some(l) = live.get_mut(node).filter(|l| !l.done()) else {
            return;
        };
        if l.manifest.as_ref() != Some(manifest) {
            l.profile.manifest = Some(manifest.to_string());
            l.manifest = Some(manifest.clone());
            l.dirty = true;
        }
        if l.traffic.is_none() {
            let probe = probe();
            let start = probe();
            l.traffic = Some((probe, start));
            l.refresh_traffic();
        }
    }

    pub(crate) fn dhcp(
        &self,
        node: &str,
        received: &str,
        sent: &str,
        address: Option<String>,
        client: Option<String>,
    ) {
        self.with_live(node, |l| {
            let now = l.ms(Instant::now());
            let open = l
                .profile
                .dhcp
                .last_mut()
                .filter(|d| d.end_ms.is_none() && received != "DISCOVER");
            let ex = match open {
                Some(ex) => ex,
                None => {
                    l.profile.dhcp.push(DhcpExchange {
                        start_ms: now,
                        end_ms: None,
                        messages: Vec::new(),
                        address: None,
                        client: client.clone(),
                    });
                    l.profile.dhcp.last_mut().expect("pushed")
                }
            };
            ex.messages.push(received.to_string());
            ex.messages.push(sent.to_string());
            if sent == "ACK" {
                ex.end_ms = Some(now);
            }
            if address.is_some() {
                ex.address = address;
            }
        });
    }

    pub(crate) fn tftp(&self, node: &str, kind: &str, image: &str, done: TftpDone) {
        let mut live = self.live.lock();
        // A transfer the client abandoned is reported only when the server
        // gives up on it, possibly after "booted": it still belongs to the
        // boot it started in.
        let belongs = live.get(node).is_some_and(|l| match &l.profile.booted {
            None => true,
            Some(b) => l.ms(done.started) <= b.at_ms,
        });
        if !belongs {
            drop(live);
            // No DHCP of ours saw this boot start (proxy elsewhere, or dhcp off).
            self.begin(node, kind, image, "tftp");
            live = self.live.lock();
        }
        if let Some(l) = live.get_mut(node) {
            l.dirty = true;
            let outcome = if done.failed {
                TftpOutcome::Failed
            } else if done.bytes >= done.size {
                TftpOutcome::Complete
            } else if done.reads <= 1 {
                TftpOutcome::Probe
            } else {
                TftpOutcome::Incomplete
            };
            let retries = l.incomplete.get(&done.file).copied().unwrap_or(0);
            match outcome {
                TftpOutcome::Complete => {
                    l.incomplete.remove(&done.file);
                }
                // A probe is the client's plan, not a failure: not a retry.
                TftpOutcome::Probe => {}
                _ => *l.incomplete.entry(done.file.clone()).or_default() += 1,
            }
            let wait = l.wait_of(&done.trace, &format!("tftp {}", done.file));
            let start_ms = l.ms(done.started);
            let end_ms = l.ms(done.ended).max(start_ms);
            l.profile.tftp.push(TftpTransfer {
                file: done.file,
                start_ms,
                end_ms,
                size: done.size,
                bytes: done.bytes,
                outcome,
                retries,
                generated: done.generated,
                wait,
            });
            l.profile
                .tftp
                .sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
            if l.done() {
                self.save(l);
            }
        }
    }

    /// A MNT of `export` that came at `asked` and was answered now (it
    /// may have waited for the image).
    pub(crate) fn nfs_mount(&self, node: &str, export: &str, client: &str, asked: Instant) {
        self.with_live(node, |l| {
            let at_ms = l.ms(asked);
            l.last_nfs = Some(Instant::now());
            l.profile.nfs_mounts.push(NfsMount {
                at_ms,
                export: export.into(),
                client: client.into(),
                wait_ms: asked.elapsed().as_secs_f64() * 1000.0,
            });
        });
    }

    pub(crate) fn nfs_call(&self, node: &str, call: NfsCall<'_>) {
        let marker_hit = call.procedure == "READ"
            && self
                .rules
                .marker
                .as_deref()
                .is_some_and(|m| m.trim_end_matches('/') == call.path);
        let recorded = self.with_live(node, |l| {
            let now = Instant::now();
            l.last_nfs = Some(now);
            let wait = l.wait_of(&call.trace, &format!("nfs {}", call.path));
            let (first, last) = (l.ms(call.started), l.ms(now));
            let i = match l.files.get(&call.path) {
                Some(&i) => i,
                None => {
                    l.profile.nfs_files.push(NfsFile {
                        path: call.path.clone(),
                        first_ms: first,
                        ..Default::default()
                    });
                    l.files
                        .insert(call.path.clone(), l.profile.nfs_files.len() - 1);
                    l.profile.nfs_files.len() - 1
                }
            };
            let f = &mut l.profile.nfs_files[i];
            f.last_ms = f.last_ms.max(last);
            *f.ops.entry(call.procedure.to_string()).or_default() += 1;
            f.bytes_read += call.bytes_read;
            f.busy_ms += last - first;
            f.wait.add(&wait);
        });
        if recorded && marker_hit {
            let path = self.rules.marker.clone().unwrap_or_default();
            self.booted(node, BootedBy::Marker { path });
        }
    }

    /// The image's prefetch plan started (`planned` chunks) for `node`'s boot.
    pub(crate) fn prefetch_started(&self, node: &str, planned: u64, learned_from: &str) {
        self.with_live(node, |l| {
            let start_ms = l.ms(Instant::now());
            l.profile.prefetch = Some(PrefetchRun {
                start_ms,
                end_ms: None,
                planned_chunks: planned,
                fetched_chunks: 0,
                learned_from: learned_from.into(),
            });
        });
    }

    pub(crate) fn prefetch_done(&self, node: &str, fetched_chunks: u64, trace: &ReadTrace) {
        let mut live = self.live.lock();
        // Even after "booted": the prefetch belongs in this boot's picture.
        if let Some(l) = live.get_mut(node) {
            for f in &trace.fetches {
                l.add_fetch(f, "prefetch");
            }
            let end = l.ms(Instant::now());
            if let Some(p) = l.profile.prefetch.as_mut() {
                p.end_ms = Some(end);
                p.fetched_chunks = fetched_chunks;
            }
            l.dirty = true;
        }
    }

    /// End `node`'s boot. Returns the boot number, or None if none was in progress.
    pub(crate) fn booted(&self, node: &str, how: BootedBy) -> Option<u64> {
        let mut live = self.live.lock();
        let l = live.get_mut(node).filter(|l| !l.done())?;
        let at = match (&how, l.last_nfs) {
            (BootedBy::Quiet { .. }, Some(last)) => last,
            _ => Instant::now(),
        };
        let at_ms = l.ms(at);
        tracing::info!(
            node,
            boot = l.profile.boot,
            "booted after {:.1} s ({})",
            at_ms / 1000.0,
            how.describe()
        );
        l.refresh_traffic();
        let metrics = &crate::metrics::METRICS;
        match how {
            BootedBy::Quiet { .. } => metrics.boots_quiet.inc(),
            _ => metrics.boots_booted.inc(),
        }
        metrics
            .boot_duration
            .observe(std::time::Duration::from_secs_f64(at_ms.max(0.0) / 1000.0));
        l.profile.booted = Some(Booted { at_ms, how });
        l.dirty = true;
        self.learn_plan(l);
        self.save(l);
        Some(l.profile.boot)
    }

    fn learn_plan(&self, l: &Live) {
        let (Some(cache), Some(manifest)) = (&self.cache, &l.manifest) else {
            return;
        };
        if l.reads.is_empty() || PrefetchPlan::load(cache, manifest).is_some() {
            return;
        }
        let plan = PrefetchPlan::from_reads(manifest, &l.profile.node, l.reads.iter().cloned());
        match plan.store(cache) {
            Ok(()) => tracing::info!(
                node = %l.profile.node,
                "learned a prefetch plan for {manifest}: {} chunks in {} steps",
                plan.chunk_count(),
                plan.steps.len()
            ),
            Err(e) => tracing::warn!("could not store the prefetch plan of {manifest}: {e}"),
        }
    }

    fn save(&self, l: &Live) {
        if let Err(e) = self.store.save(&l.profile) {
            tracing::warn!("could not save a boot profile: {e}");
        }
    }

    /// Save changed timelines and end boots whose NFS traffic went quiet.
    pub(crate) fn tick(&self) {
        let quiet: Vec<String> = match self.rules.quiet {
            Some(q) => self
                .live
                .lock()
                .iter()
                .filter(|(n, l)| {
                    !l.done()
                        && !l.profile.nfs_mounts.is_empty()
                        && l.last_nfs.is_some_and(|t| t.elapsed() >= q)
                        && !self.nfs_busy(n)
                })
                .map(|(n, _)| n.clone())
                .collect(),
            None => Vec::new(),
        };
        for node in quiet {
            let quiet_secs = self.rules.quiet.map_or(0, |q| q.as_secs());
            self.booted(&node, BootedBy::Quiet { quiet_secs });
        }
        self.flush();
    }

    /// Save every changed timeline now (also what a stopping server does
    /// last, so the latest second of every boot is kept).
    pub(crate) fn flush(&self) {
        let mut live = self.live.lock();
        for l in live.values_mut().filter(|l| !l.done()) {
            l.refresh_traffic();
        }
        for l in live.values_mut().filter(|l| l.dirty) {
            l.dirty = false;
            self.save(l);
        }
    }

    /// Call [`tick`](Self::tick) every `every` until the process ends.
    pub(crate) async fn run(self: Arc<Self>, every: Duration) {
        let mut t = tokio::time::interval(every);
        loop {
            t.tick().await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.tick()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(dir: &std::path::Path, quiet: Option<Duration>) -> Recorder {
        let cache = Arc::new(ChunkCache::open(&dir.join("cache"), 1 << 20).unwrap());
        Recorder::new(
            ProfileStore::new(dir),
            BootedRules {
                marker: Some("/etc/booted".into()),
                quiet,
            },
            Some(cache),
        )
    }

    fn call<'a>(procedure: &'a str, path: &str, trace: ReadTrace) -> NfsCall<'a> {
        NfsCall {
            procedure,
            path: path.into(),
            started: Instant::now(),
            bytes_read: 100,
            trace,
        }
    }

    #[test]
    fn a_boot_from_dhcp_to_marker_is_saved_with_its_plan() {
        let dir = tempfile::tempdir().unwrap();
        let r = recorder(dir.path(), None);
        let manifest = Digest::of_bytes(b"manifest");
        let layer = Digest::of_bytes(b"layer");
        r.begin("n1", "ipxe", "reg/os:1", "dhcp");
        r.image_in_use("n1", &manifest, || Arc::new(FetchStats::default));
        r.dhcp("n1", "DISCOVER", "OFFER", Some("10.0.0.5".into()), None);
        r.dhcp("n1", "REQUEST", "ACK", Some("10.0.0.5".into()), None);
        let probe = TftpDone {
            file: "vmlinuz".into(),
            started: Instant::now(),
            ended: Instant::now(),
            size: 1000,
            bytes: 0,
            reads: 1,
            generated: false,
            failed: false,
            trace: ReadTrace::default(),
        };
        r.tftp("n1", "ipxe", "reg/os:1", probe);
        let broken = TftpDone {
            bytes: 10,
            ..TftpDone {
                file: "vmlinuz".into(),
                started: Instant::now(),
                ended: Instant::now(),
                size: 1000,
                bytes: 0,
                reads: 3,
                generated: false,
                failed: false,
                trace: ReadTrace::default(),
            }
        };
        r.tftp("n1", "ipxe", "reg/os:1", broken);
        let full = TftpDone {
            file: "vmlinuz".into(),
            started: Instant::now(),
            ended: Instant::now(),
            size: 1000,
            bytes: 1000,
            reads: 3,
            generated: false,
            failed: false,
            trace: ReadTrace {
                chunks: vec![(layer.clone(), 3), (layer.clone(), 4)],
                fetched_bytes: 1000,
                fetches: vec![FetchNote {
                    layer: layer.clone(),
                    started: Instant::now(),
                    duration: Duration::from_millis(5),
                    compressed_bytes: 400,
                    bytes: 1000,
                }],
                ..Default::default()
            },
        };
        r.tftp("n1", "ipxe", "reg/os:1", full);
        r.nfs_mount("n1", "/nodes/n1", "10.0.0.5", Instant::now());
        let t = ReadTrace {
            chunks: vec![(layer.clone(), 9)],
            cache_bytes: 100,
            ..Default::default()
        };
        r.nfs_call("n1", call("READ", "/bin/sh", t));
        r.nfs_call("n1", call("GETATTR", "/bin/sh", ReadTrace::default()));
        r.nfs_call("n1", call("LOOKUP", "/etc/booted", ReadTrace::default()));
        assert!(
            r.in_progress("n1"),
            "a LOOKUP of the marker is not a read of it"
        );
        r.nfs_call("n1", call("READ", "/etc/booted", ReadTrace::default()));
        assert!(!r.in_progress("n1"));
        // After booted, calls no longer change the profile.
        r.nfs_call("n1", call("READ", "/late", ReadTrace::default()));

        let p = r.store().load("n1", None).unwrap();
        assert_eq!(p.boot, 1);
        assert_eq!(p.manifest.as_deref(), Some(manifest.to_string().as_str()));
        assert_eq!(
            p.booted.as_ref().unwrap().how,
            BootedBy::Marker {
                path: "/etc/booted".into()
            }
        );
        assert_eq!(p.dhcp.len(), 1);
        assert_eq!(p.dhcp[0].messages, ["DISCOVER", "OFFER", "REQUEST", "ACK"]);
        assert!(p.dhcp[0].end_ms.is_some());
        let outcomes: Vec<(TftpOutcome, u32)> =
            p.tftp.iter().map(|t| (t.outcome, t.retries)).collect();
        assert_eq!(
            outcomes,
            [
                (TftpOutcome::Probe, 0),
                (TftpOutcome::Incomplete, 0),
                (TftpOutcome::Complete, 1)
            ]
        );
        assert_eq!(p.tftp[2].wait.fetches, vec![1]);
        assert_eq!(p.fetches[0].by, "tftp vmlinuz");
        let paths: Vec<&str> = p.nfs_files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["/bin/sh", "/etc/booted"]);
        assert_eq!(p.nfs_files[0].ops.get("READ"), Some(&1));
        assert_eq!(p.nfs_files[0].ops.get("GETATTR"), Some(&1));
        assert_eq!(p.nfs_files[0].wait.cache_bytes, 100);
        let s = p.summary();
        assert_eq!((s.registry_bytes, s.registry_compressed_bytes), (1000, 400));

        let cache = ChunkCache::open(&dir.path().join("cache"), 1 << 20).unwrap();
        let plan = PrefetchPlan::load(&cache, &manifest).expect("plan learned");
        assert_eq!(plan.learned_from, "n1");
        assert_eq!(plan.chunk_count(), 3);
        assert_eq!(plan.steps[0].start, 3);

        // The next boot is number 2 and does not replace the plan.
        r.begin("n1", "ipxe", "reg/os:1", "dhcp");
        r.image_in_use("n1", &manifest, || Arc::new(FetchStats::default));
        r.nfs_mount("n1", "/nodes/n1", "10.0.0.5", Instant::now());
        let t = ReadTrace {
            chunks: vec![(layer.clone(), 50)],
            ..Default::default()
        };
        r.nfs_call("n1", call("READ", "/etc/booted", t));
        assert_eq!(r.store().boots("n1"), vec![1, 2]);
        assert_eq!(PrefetchPlan::load(&cache, &manifest), Some(plan));
    }

    #[test]
    fn quiet_nfs_ends_a_boot_at_its_last_call() {
        let dir = tempfile::tempdir().unwrap();
        let r = recorder(dir.path(), Some(Duration::from_millis(50)));
        r.begin("n1", "ipxe", "img", "dhcp");
        r.tick();
        assert!(r.in_progress("n1"), "no mount yet: not quiet");
        r.nfs_mount("n1", "/nodes/n1", "10.0.0.5", Instant::now());
        r.nfs_call("n1", call("GETATTR", "/", ReadTrace::default()));
        std::thread::sleep(Duration::from_millis(120));
        r.tick();
        let p = r.store().load("n1", None).unwrap();
        let b = p.booted.expect("booted");
        assert_eq!(b.how, BootedBy::Quiet { quiet_secs: 0 });
        assert!(
            b.at_ms < 100.0,
            "ends at the last call, not at the tick: {}",
            b.at_ms
        );
    }

    #[test]
    fn a_boot_is_not_quiet_while_an_nfs_call_runs() {
        let dir = tempfile::tempdir().unwrap();
        let r = recorder(dir.path(), Some(Duration::from_millis(50)));
        r.begin("n1", "ipxe", "img", "dhcp");
        r.nfs_mount("n1", "/nodes/n1", "10.0.0.5", Instant::now());
        // A call waiting on the image, longer than the quiet time.
        let running = r.nfs_running("n1");
        running.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(120));
        r.tick();
        assert!(r.in_progress("n1"), "a call is running: not quiet");
        running.fetch_sub(1, Ordering::SeqCst);
        r.nfs_call(
            "n1",
            call("READ", "/usr/lib/libc.so.6", ReadTrace::default()),
        );
        std::thread::sleep(Duration::from_millis(120));
        r.tick();
        assert!(!r.in_progress("n1"), "quiet once the call ended");
    }

    #[test]
    fn a_restarted_recorder_goes_on_with_an_unfinished_boot() {
        let dir = tempfile::tempdir().unwrap();
        let r = recorder(dir.path(), None);
        r.begin("n1", "ipxe", "img", "dhcp");
        r.nfs_mount("n1", "/nodes/n1", "10.0.0.5", Instant::now());
        r.nfs_call("n1", call("READ", "/bin/sh", ReadTrace::default()));
        r.tick();
        drop(r);
        let r = recorder(dir.path(), None);
        assert!(r.in_progress("n1"));
        r.nfs_call("n1", call("READ", "/bin/sh", ReadTrace::default()));
        r.nfs_call("n1", call("READ", "/etc/booted", ReadTrace::default()));
        let p = r.store().load("n1", None).unwrap();
        assert_eq!(p.boot, 1, "the same boot, not a new one");
        assert_eq!(p.nfs_files[0].ops.get("READ"), Some(&2));
        assert!(p.booted.is_some());
        // A finished boot is not resumed.
        let r = recorder(dir.path(), None);
        assert!(!r.in_progress("n1"));
    }

    #[test]
    fn tftp_without_dhcp_starts_a_boot() {
        let dir = tempfile::tempdir().unwrap();
        let r = recorder(dir.path(), None);
        let done = TftpDone {
            file: "start4.elf".into(),
            started: Instant::now(),
            ended: Instant::now(),
            size: 10,
            bytes: 10,
            reads: 1,
            generated: false,
            failed: false,
            trace: ReadTrace::default(),
        };
        r.tftp("pi", "raspberrypi", "img", done);
        r.tick();
        let p = r.store().load("pi", None).unwrap();
        assert_eq!(p.began_with, "tftp");
        assert_eq!(p.tftp.len(), 1);
        assert!(r.booted("nobody", BootedBy::Api).is_none());
        assert_eq!(r.booted("pi", BootedBy::Api), Some(1));
    }
}
