//! Learned prefetch plans: the chunks a node's first boot of an image read,
//! in the order it first read them. The next cold start of any node on that
//! image fetches them ahead of the node's requests.
//!
//! A plan is keyed by the image's manifest digest and stored in the cache's
//! index area (checksummed, written atomically, like the layer indexes), so
//! `lazyboot index --push` can publish it beside the indexes.

use super::view::ImageView;
use crate::cache::ChunkCache;
use crate::digest::Digest;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const PLAN_VERSION: u32 = 1;
/// Chunks per request when replaying a plan: large enough to amortise a
/// request, small enough that the first steps arrive quickly.
const MAX_STEP_CHUNKS: u64 = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PlanStep {
    /// Layer digest (`sha256:...`).
    pub(crate) layer: String,
    /// Chunk ids `start..end` of that layer (chunks of `layer::index::CHUNK_SIZE`).
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// The chunks a first boot of an image read, in the order it first read them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefetchPlan {
    pub(crate) version: u32,
    /// The image manifest digest the plan was learned on.
    pub(crate) manifest: String,
    /// Which node's boot taught it (for `inspect` and profiles).
    pub(crate) learned_from: String,
    pub(crate) steps: Vec<PlanStep>,
}

/// Why a stored or published plan was not used.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Not a plan's JSON.
    #[error("prefetch plan: {0}")]
    Decode(#[from] serde_json::Error),
    /// A plan of another format version.
    #[error("prefetch plan is version {found}, this lazyboot reads version {PLAN_VERSION}")]
    Version {
        /// Its version.
        found: u32,
    },
    /// A plan of another image.
    #[error("prefetch plan was learned on {found}, not on {want}")]
    Manifest {
        /// The manifest it is for.
        found: String,
        /// The manifest asked for.
        want: String,
    },
    /// The cache could not store it.
    #[error("prefetch plan: {0}")]
    Cache(#[from] crate::cache::CacheError),
}

impl PrefetchPlan {
    /// A plan from chunk reads in boot order (repeats are dropped; adjacent
    /// chunks of one layer are merged into one step).
    pub fn from_reads(
        manifest: &Digest,
        learned_from: &str,
        reads: impl IntoIterator<Item = (Digest, u64)>,
    ) -> PrefetchPlan {
        let mut seen = HashSet::new();
        let mut steps: Vec<PlanStep> = Vec::new();
        for (layer, id) in reads {
            if !seen.insert((layer.clone(), id)) {
                continue;
            }
            let layer = layer.to_string();
            match steps.last_mut() {
                Some(s) if s.layer == layer && s.end == id && s.end - s.start < MAX_STEP_CHUNKS => {
                    s.end += 1
                }
                _ => steps.push(PlanStep {
                    layer,
                    start: id,
                    end: id + 1,
                }),
            }
        }
        PrefetchPlan {
            version: PLAN_VERSION,
            manifest: manifest.to_string(),
            learned_from: learned_from.to_string(),
            steps,
        }
    }

    pub(crate) fn chunk_count(&self) -> u64 {
        self.steps.iter().map(|s| s.end - s.start).sum()
    }

    /// The name of `manifest`'s plan in the cache's index area.
    pub(crate) fn cache_name(manifest: &Digest) -> String {
        format!("plan-{}.json", manifest.hex())
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a plan always serialises")
    }

    pub(crate) fn decode(bytes: &[u8], manifest: &Digest) -> Result<PrefetchPlan, PlanError> {
        let plan: PrefetchPlan = serde_json::from_slice(bytes)?;
        if plan.version != PLAN_VERSION {
            return Err(PlanError::Version {
                found: plan.version,
            });
        }
        if plan.manifest != manifest.to_string() {
            return Err(PlanError::Manifest {
                found: plan.manifest,
                want: manifest.to_string(),
            });
        }
        Ok(plan)
    }

    /// The plan stored for `manifest`, if there is a usable one.
    pub fn load(cache: &ChunkCache, manifest: &Digest) -> Option<PrefetchPlan> {
        let bytes = cache.load_index(&Self::cache_name(manifest))?;
        match Self::decode(&bytes, manifest) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("ignoring the stored prefetch plan of {manifest}: {e}");
                None
            }
        }
    }

    /// Store the plan under its manifest digest.
    pub fn store(&self, cache: &ChunkCache) -> Result<(), PlanError> {
        let manifest = Digest::parse(&self.manifest).map_err(|_| PlanError::Manifest {
            found: self.manifest.clone(),
            want: "a sha256 digest".into(),
        })?;
        cache.store_index(&Self::cache_name(&manifest), &self.encode())?;
        Ok(())
    }
}

/// What replaying a plan did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PrefetchReport {
    pub(crate) steps: u64,
    /// Chunks the plan named that were not cached and were fetched.
    pub(crate) fetched_chunks: u64,
    /// Chunks already cached (or fetched by a node first).
    pub(crate) cached_chunks: u64,
    pub(crate) failed_steps: u64,
    pub(crate) millis: u64,
}

/// Fetch the plan's chunks into the cache, `parallel` requests at a time,
/// issued in plan order. Node reads of a chunk being prefetched wait for it
/// instead of fetching it again (the cache's claims). Errors are logged and
/// skipped: a node's own read will retry and report them.
pub(crate) async fn replay(
    view: Arc<ImageView>,
    plan: &PrefetchPlan,
    parallel: usize,
) -> PrefetchReport {
    let started = Instant::now();
    let mut cached = 0;
    let mut fetched = 0;
    // Missing chunks grouped by what one request fetches best (for gzip, one
    // checkpoint's span: steps in one span would each decode it from its
    // start), groups in order of first use.
    let mut groups: Vec<(usize, u64, Vec<u64>)> = Vec::new();
    let mut group_at: std::collections::HashMap<(usize, u64), usize> = Default::default();
    for step in &plan.steps {
        let Some(li) = Digest::parse(&step.layer)
            .ok()
            .and_then(|d| view.layer_of(&d))
        else {
            continue;
        };
        let layer = view.layer(li);
        for id in step.start..step.end.min(layer.chunk_count()) {
            let key = crate::cache::ChunkKey {
                layer: layer.digest.clone(),
                id,
            };
            if view.cache().contains(&key) {
                cached += 1;
                continue;
            }
            fetched += 1;
            let g = (li, view.fetch_group(li, id));
            let i = *group_at.entry(g).or_insert_with(|| {
                groups.push((li, g.1, Vec::new()));
                groups.len() - 1
            });
            groups[i].2.push(id);
        }
    }
    // One contiguous run per group: gaps would split it into requests that
    // each decode from the checkpoint again.
    let jobs: Vec<(usize, Vec<u64>)> = groups
        .into_iter()
        .map(|(li, _, ids)| {
            let (lo, hi) = (ids.iter().min().copied(), ids.iter().max().copied());
            let (lo, hi) = (lo.unwrap_or(0), hi.unwrap_or(0));
            (li, (lo..=hi).collect())
        })
        .collect();
    let steps = jobs.len() as u64;
    let results: Vec<bool> = futures_util::stream::iter(jobs)
        .map(|(li, ids)| {
            let view = view.clone();
            async move {
                match tokio::time::timeout(Duration::from_secs(120), view.chunks(li, &ids)).await {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => {
                        tracing::warn!("prefetch: {e}");
                        false
                    }
                    Err(_) => {
                        tracing::warn!("prefetch: a step timed out");
                        false
                    }
                }
            }
        })
        .buffered(parallel.max(1))
        .collect()
        .await;
    PrefetchReport {
        steps,
        fetched_chunks: fetched,
        cached_chunks: cached,
        failed_steps: results.iter().filter(|ok| !**ok).count() as u64,
        millis: started.elapsed().as_millis() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of_bytes(&[n])
    }

    #[test]
    fn reads_become_ordered_merged_steps() {
        let m = d(0);
        let reads = vec![
            (d(1), 5),
            (d(1), 6),
            (d(1), 6),
            (d(2), 0),
            (d(1), 7),
            (d(1), 5),
        ];
        let p = PrefetchPlan::from_reads(&m, "n1", reads);
        let got: Vec<(String, u64, u64)> = p
            .steps
            .iter()
            .map(|s| (s.layer.clone(), s.start, s.end))
            .collect();
        assert_eq!(
            got,
            vec![
                (d(1).to_string(), 5, 7),
                (d(2).to_string(), 0, 1),
                (d(1).to_string(), 7, 8)
            ]
        );
        assert_eq!(p.chunk_count(), 4);
    }

    #[test]
    fn steps_are_capped() {
        let p = PrefetchPlan::from_reads(&d(0), "n", (0..40).map(|i| (d(1), i)));
        assert_eq!(p.steps.len(), 3);
        assert!(p.steps.iter().all(|s| s.end - s.start <= MAX_STEP_CHUNKS));
    }

    #[test]
    fn decode_checks_version_and_manifest() {
        let p = PrefetchPlan::from_reads(&d(0), "n", vec![(d(1), 1)]);
        let bytes = p.encode();
        assert_eq!(PrefetchPlan::decode(&bytes, &d(0)).unwrap(), p);
        assert!(matches!(
            PrefetchPlan::decode(&bytes, &d(9)),
            Err(PlanError::Manifest { .. })
        ));
        let mut old = p.clone();
        old.version = 99;
        assert!(matches!(
            PrefetchPlan::decode(&old.encode(), &d(0)),
            Err(PlanError::Version { found: 99 })
        ));
        assert!(PrefetchPlan::decode(b"{", &d(0)).is_err());
    }

    #[test]
    fn store_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        let p = PrefetchPlan::from_reads(&d(0), "n", vec![(d(1), 3)]);
        assert!(PrefetchPlan::load(&cache, &d(0)).is_none());
        p.store(&cache).unwrap();
        assert_eq!(PrefetchPlan::load(&cache, &d(0)), Some(p));
    }
}
