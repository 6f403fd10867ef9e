//! Checkpoints where boots read. A gzip layer's index has a checkpoint
//! about every 4 MiB of output, so a read that starts far after one fetches
//! and decodes everything in between. Once a prefetch plan says where an
//! image's boots start reading, each such place far from a checkpoint gets
//! one of its own, made from the nearest mark before it (`layer::zran::Mark`)
//! and a window read through the index itself. `lazyboot index --push` does
//! this before it publishes, so the servers that use the published index
//! fetch little more than their nodes read, while the index grows by only
//! one window per place.

use super::error::ViewError;
use super::prefetch::PrefetchPlan;
use super::read::{assemble, ReadPath};
use crate::layer::index::{IndexDetail, LayerIndex, CHUNK_SIZE};
use crate::layer::zran::ZranIndex;
use std::ops::Range;
use std::sync::Arc;

/// A read starting at most this far after a checkpoint gets none of its
/// own: decoding this much costs less than a window (32 KiB) costs in the
/// index of every server that pulls it.
pub(crate) const NEAR: u64 = 128 << 10;

/// Where the plan's reads of `index`'s layer start, as uncompressed stream
/// offsets: the starts of its chunk runs once overlapping and adjacent
/// steps are merged.
fn read_starts(index: &LayerIndex, plan: &PrefetchPlan) -> Vec<u64> {
    let layer = index.digest.to_string();
    let mut runs: Vec<Range<u64>> = plan
        .steps
        .iter()
        .filter(|s| s.layer == layer && s.start < s.end)
        .map(|s| s.start..s.end)
        .collect();
    runs.sort_by_key(|r| r.start);
    let mut starts = Vec::new();
    let mut end = None;
    for r in runs {
        if end.is_none_or(|e| r.start > e) {
            starts.push(r.start * CHUNK_SIZE);
        }
        end = Some(end.map_or(r.end, |e: u64| e.max(r.end)));
    }
    starts
}

/// The marks of `zran` that should become checkpoints for reads starting
/// at `starts` (sorted): for each start far from the checkpoint before it,
/// the last mark at or before it (if that mark is itself far enough from
/// that checkpoint to be worth a window).
fn marks_to_add(zran: &ZranIndex, starts: &[u64]) -> Vec<usize> {
    let mut chosen: Vec<usize> = Vec::new();
    for &start in starts {
        let cp = zran
            .checkpoints
            .partition_point(|c| c.out_off <= start)
            .checked_sub(1)
            .map_or(0, |i| zran.checkpoints[i].out_off);
        let before = chosen.last().map_or(cp, |&m| cp.max(zran.marks[m].out_off));
        if start - before.min(start) <= NEAR {
            continue;
        }
        let Some(m) = zran
            .marks
            .partition_point(|m| m.out_off <= start)
            .checked_sub(1)
        else {
            continue;
        };
        if zran.marks[m].out_off > before + NEAR / 2 && chosen.last() != Some(&m) {
            chosen.push(m);
        }
    }
    chosen
}

/// `index` with a checkpoint where each of `plan`'s reads of it starts far
/// from one, or `None` if it needs none (not a gzip layer, no reads of it,
/// or every read starts near a checkpoint already). The windows are read
/// through `path`: from the cache, or fetched and verified like any read.
pub(crate) async fn refine(
    path: &ReadPath<'_>,
    index: &Arc<LayerIndex>,
    plan: &PrefetchPlan,
) -> Result<Option<LayerIndex>, ViewError> {
    let IndexDetail::Gzip(zran) = &index.detail else {
        return Ok(None);
    };
    let starts = read_starts(index, plan);
    let marks = marks_to_add(zran, &starts);
    if marks.is_empty() {
        return Ok(None);
    }
    let mut refined = zran.clone();
    let mut added = 0;
    for m in marks {
        let mark = &zran.marks[m];
        let from = mark.out_off - u64::from(mark.window_len);
        let ids: Vec<u64> = (from / CHUNK_SIZE..mark.out_off.div_ceil(CHUNK_SIZE)).collect();
        let window = if ids.is_empty() {
            Vec::new()
        } else {
            let chunks = path.chunks_noting_hits(index, &ids).await?.0;
            assemble(&chunks, ids[0] * CHUNK_SIZE, from, mark.out_off).to_vec()
        };
        if refined.add_checkpoint(mark, window) {
            added += 1;
        }
    }
    tracing::info!(
        layer = %index.digest,
        added,
        checkpoints = refined.checkpoints.len(),
        "checkpoints added where the prefetch plan's reads start"
    );
    let mut out = LayerIndex::clone(index);
    out.detail = IndexDetail::Gzip(refined);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::image::prefetch::PlanStep;
    use crate::layer::zran::ZranReader;
    use std::io::Read;

    /// A gzip stream of `n` bytes of mildly compressible data and its index.
    fn stream(n: usize) -> (Vec<u8>, Vec<u8>, ZranIndex) {
        use flate2::write::GzEncoder;
        use std::io::Write;
        // Six bits of noise a byte: few matches, so zlib's blocks end about
        // every 16 Ki symbols and there is a mark about every 64 KiB.
        let data: Vec<u8> = crate::noise::noise(n, 0x9e37_79b9_7f4a_7c15)
            .into_iter()
            .map(|b| b % 64 + b'0')
            .collect();
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(&data).unwrap();
        let gz = enc.finish().unwrap();
        let mut r = ZranReader::new(&gz[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        let zran = r.finish().unwrap();
        (data, gz, zran)
    }

    #[test]
    fn a_read_far_from_a_checkpoint_gets_the_mark_before_it() {
        let (data, gz, zran) = stream(12 << 20);
        assert!(zran.marks.len() > 100, "{} marks", zran.marks.len());
        assert!(
            zran.checkpoints.len() >= 3,
            "{} checkpoints",
            zran.checkpoints.len()
        );
        let far = zran.checkpoints[1].out_off + (1 << 20) + 300_000;
        let near = zran.checkpoints[2].out_off + 10_000;
        let chosen = marks_to_add(&zran, &[far, far + 1000, near]);
        assert_eq!(chosen.len(), 1, "{chosen:?}");
        let mark = zran.marks[chosen[0]].clone();
        assert!(mark.out_off <= far && far - mark.out_off < 4 * crate::layer::zran::MARK_SPACING);

        // The checkpoint made of it decodes the same bytes as the stream.
        let mut refined = zran.clone();
        let window = data
            [(mark.out_off - u64::from(mark.window_len)) as usize..mark.out_off as usize]
            .to_vec();
        assert!(refined.add_checkpoint(&mark, window.clone()));
        assert!(!refined.add_checkpoint(&mark, window), "added twice");
        let want = far..far + 70_000;
        let plan = refined.plan(want.clone());
        let old = zran.plan(want.clone());
        assert!(
            plan.compressed.end - plan.compressed.start
                < (old.compressed.end - old.compressed.start) / 2,
            "{plan:?} against {old:?}"
        );
        let c = &gz[plan.compressed.start as usize..plan.compressed.end as usize];
        let mut got = Vec::new();
        refined
            .decode(&plan, c, want.end, &mut |at, b| {
                if at + b.len() as u64 > want.start {
                    let lo = want.start.saturating_sub(at) as usize;
                    got.extend_from_slice(&b[lo..]);
                }
            })
            .unwrap();
        assert_eq!(got, &data[want.start as usize..want.end as usize]);
    }

    #[test]
    fn read_starts_merge_adjacent_and_overlapping_steps() {
        let layer = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        let step = |l: &Digest, start, end| PlanStep {
            layer: l.to_string(),
            start,
            end,
        };
        let other = Digest::parse(&format!("sha256:{}", "cd".repeat(32))).unwrap();
        let plan = PrefetchPlan {
            version: crate::image::prefetch::PLAN_VERSION,
            manifest: other.to_string(),
            learned_from: "n".into(),
            steps: vec![
                step(&layer, 40, 41),
                step(&layer, 10, 12),
                step(&other, 5, 6),
                step(&layer, 12, 14),
                step(&layer, 13, 20),
                step(&layer, 30, 31),
            ],
        };
        let (_, _, zran) = stream(1 << 16);
        let index = LayerIndex {
            version: crate::layer::index::INDEX_VERSION,
            digest: layer,
            format: crate::layer::LayerFormat::Gzip,
            compressed_size: 0,
            uncompressed_size: 0,
            entries: Vec::new(),
            detail: IndexDetail::Gzip(zran),
        };
        assert_eq!(
            read_starts(&index, &plan),
            vec![10 * CHUNK_SIZE, 30 * CHUNK_SIZE, 40 * CHUNK_SIZE]
        );
    }
}
