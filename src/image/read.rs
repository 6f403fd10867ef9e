//! The read path of one layer below the merged tree: a file's byte range
//! becomes a run of chunk ids (the layer format's [`ChunkMap`]), which come
//! from the cache or, on a miss, from one range request per run of missing
//! chunks, decoded and verified by the format's [`Codec`] before they are
//! stored or returned. Nothing here knows which format a layer has.

use super::error::ViewError;
use super::trace;
use crate::cache::{ChunkCache, ChunkKey, Claim, Part, Reservation};
use crate::digest::Digest;
use crate::layer::format::{runs, Span};
use crate::layer::index::LayerIndex;
use crate::layer::Entry;
use crate::registry::Source;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

/// Cached chunks a reader is kept ahead of, in the page cache: with 256 KiB
/// chunks, 16 MiB of chunk files being read from disk while FUSE copies.
const READ_AHEAD_CHUNKS: u64 = 64;

/// How often a read looks for chunks again after another reader's fetch,
/// before concluding the cache cannot hold them.
const ATTEMPTS: usize = 4;

/// How long a request waits for another one fetching bytes it needs too.
const PENDING_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Reads of one image's layers: shared by the final view and the
/// provisional view of an image still being indexed.
pub(crate) struct ReadPath<'a> {
    pub(crate) source: &'a Source,
    pub(crate) cache: &'a Arc<ChunkCache>,
}

impl ReadPath<'_> {
    /// Bytes [offset, end) of the regular file `entry` of the layer `index`.
    pub(crate) async fn read_entry(
        &self,
        index: &Arc<LayerIndex>,
        entry: &Entry,
        offset: u64,
        end: u64,
    ) -> Result<Bytes, ViewError> {
        let map = index.codec();
        let span = map.file_span(entry, offset, end);
        self.advise_ahead(index, &span, offset);
        let ids: Vec<u64> = span.ids.clone().collect();
        if let Some(data) = self.cached_range(index, &span) {
            trace::note_chunks(&index.digest, &ids);
            trace::note_hit(span.bytes.end - span.bytes.start);
            return Ok(data);
        }
        let (chunks, hits) = self
            .chunks_reading_ahead(index, &ids, self.read_ahead_to(index, &span))
            .await?;
        if trace::is_traced() {
            let from_cache = ids
                .iter()
                .zip(&hits)
                .filter(|(_, hit)| **hit)
                .map(|(&id, _)| overlap(map.chunk_range(id), span.bytes.clone()))
                .sum();
            trace::note_hit(from_cache);
        }
        let base = map.chunk_range(span.ids.start).start;
        Ok(assemble(&chunks, base, span.bytes.start, span.bytes.end))
    }

    /// Up to which chunk a fetch for `span` may go on: to the end of the
    /// file when the chunk before the span is cached (a sequential reader,
    /// such as a kernel or initrd being sent), else only to the span's end
    /// (a random read, such as a library's pages faulted in: what lies
    /// after it may never be read).
    fn read_ahead_to(&self, index: &LayerIndex, span: &Span) -> u64 {
        let sequential = span.ids.start > 0
            && self.cache.contains(&ChunkKey {
                layer: index.digest.clone(),
                id: span.ids.start - 1,
            });
        if sequential {
            span.file_end
        } else {
            span.ids.end
        }
    }

    /// Keep a window of [`READ_AHEAD_CHUNKS`] ahead of a reader: each read
    /// advises as many new chunks as it consumed.
    fn advise_ahead(&self, index: &LayerIndex, span: &Span, offset: u64) {
        let last = span.ids.end;
        let ahead = (last + READ_AHEAD_CHUNKS).min(span.file_end);
        let from = if offset == 0 {
            last
        } else {
            let read = span.ids.end - span.ids.start;
            ahead.saturating_sub(read).max(last)
        };
        let advise: Vec<ChunkKey> = (from..ahead)
            .map(|id| ChunkKey {
                layer: index.digest.clone(),
                id,
            })
            .collect();
        self.cache.advise_willneed(&advise);
    }

    /// The span's bytes if every chunk of it is cached, read from the chunk
    /// files straight into one buffer: the warm sequential read's path, one
    /// copy instead of three (file to chunk, chunk without its header,
    /// chunks to the reply).
    fn cached_range(&self, index: &LayerIndex, span: &Span) -> Option<Bytes> {
        let map = index.codec();
        let base = map.chunk_range(span.ids.start).start;
        if span.ids.end - span.ids.start == 1 {
            // Inside one chunk (a small file, or a small read): the chunk
            // stays in memory for its neighbours (a directory's small files
            // share chunks), and the reply is a slice of it, not a copy.
            let key = ChunkKey {
                layer: index.digest.clone(),
                id: span.ids.start,
            };
            let chunk = self.cache.get(&key)?;
            let r = map.chunk_range(span.ids.start);
            if chunk.len() as u64 != r.end - r.start {
                return None;
            }
            let hi = ((span.bytes.end - base) as usize).min(chunk.len());
            let lo = ((span.bytes.start - base) as usize).min(hi);
            return Some(chunk.slice(lo..hi));
        }
        let want = map
            .chunk_range(span.ids.end.max(1) - 1)
            .end
            .saturating_sub(base);
        let mut buf = Vec::with_capacity(want as usize);
        for id in span.ids.clone() {
            let key = ChunkKey {
                layer: index.digest.clone(),
                id,
            };
            let before = buf.len();
            if id + 1 == span.ids.end && span.bytes.end < map.chunk_range(id).end {
                // The read stops inside this chunk, so the next sequential
                // read starts in it: keep it in memory for that read.
                buf.extend_from_slice(&self.cache.get(&key)?);
            } else if !self.cache.get_into(&key, &mut buf) {
                return None;
            }
            let r = map.chunk_range(id);
            if (buf.len() - before) as u64 != r.end - r.start {
                return None;
            }
        }
        let hi = ((span.bytes.end - base) as usize).min(buf.len());
        let lo = ((span.bytes.start - base) as usize).min(hi);
        Some(Bytes::from(buf).slice(lo..hi))
    }

    /// The chunks `ids` (sorted) of layer `index`, fetching what is missing,
    /// and which of them were in the cache already.
    pub(crate) async fn chunks_noting_hits(
        &self,
        index: &Arc<LayerIndex>,
        ids: &[u64],
    ) -> Result<(Vec<Bytes>, Vec<bool>), ViewError> {
        let ahead = ids.last().map_or(0, |&id| id + 1);
        self.chunks_reading_ahead(index, ids, ahead).await
    }

    /// Like [`chunks_noting_hits`](Self::chunks_noting_hits), and a request
    /// for the last missing run may go on past it, up to chunk `ahead` (the
    /// end of the file being read), while the format produces those chunks
    /// from the same request ([`Codec::fetch_group`]) and they are not
    /// cached: a file read on sequentially is then fetched in one request
    /// per group, and a read of a small file fetches nothing past the file.
    ///
    /// [`Codec::fetch_group`]: crate::layer::format::Codec::fetch_group
    async fn chunks_reading_ahead(
        &self,
        index: &Arc<LayerIndex>,
        ids: &[u64],
        ahead: u64,
    ) -> Result<(Vec<Bytes>, Vec<bool>), ViewError> {
        let layer = &index.digest;
        trace::note_chunks(layer, ids);
        let mut hits = vec![false; ids.len()];
        let mut first_round = true;
        let mut out: Vec<Option<Bytes>> = vec![None; ids.len()];
        for _attempt in 0..ATTEMPTS {
            let mut missing = Vec::new();
            for ((slot, &id), hit) in out.iter_mut().zip(ids).zip(hits.iter_mut()) {
                if slot.is_none() {
                    let key = ChunkKey {
                        layer: layer.clone(),
                        id,
                    };
                    match self.cache.get(&key) {
                        Some(b) => {
                            *hit = first_round;
                            *slot = Some(b)
                        }
                        None => missing.push(key),
                    }
                }
            }
            first_round = false;
            if missing.is_empty() {
                let chunks = out.into_iter().map(|b| b.expect("filled")).collect();
                return Ok((chunks, hits));
            }
            let Claim { mine, waits } = self.cache.claim(&missing);
            let waited = Instant::now();
            if let Some(guard) = mine {
                let mut want: Vec<u64> = guard.keys.iter().map(|k| k.id).collect();
                self.extend_ahead(index, &mut want, ahead);
                let got = self.fill(index, &want).await?;
                for (slot, id) in out.iter_mut().zip(ids) {
                    if slot.is_none() {
                        if let Some(b) = got.get(id) {
                            *slot = Some(b.clone());
                        }
                    }
                }
                drop(guard);
            }
            Claim::wait_others(waits).await;
            trace::note_wait(waited.elapsed());
        }
        Err(ViewError::BadData {
            layer: layer.clone(),
            msg: "chunks kept disappearing from the cache (is --cache-size too small?)".into(),
        })
    }

    /// Append to `want` (sorted, non-empty) the chunks after its last one,
    /// up to `ahead`, that its last request produces anyway: same fetch
    /// group, not cached. They are not claimed: a reader that wants one of
    /// them meanwhile fetches it itself, which costs bytes, never
    /// correctness.
    fn extend_ahead(&self, index: &LayerIndex, want: &mut Vec<u64>, ahead: u64) {
        let Some(&last) = want.last() else { return };
        let codec = index.codec();
        let group = codec.fetch_group(last);
        let end = ahead.min(codec.chunk_count());
        for id in last + 1..end {
            let key = ChunkKey {
                layer: index.digest.clone(),
                id,
            };
            if codec.fetch_group(id) != group || self.cache.contains(&key) {
                break;
            }
            want.push(id);
        }
    }

    /// Fetch, verify and cache the chunks `ids` (sorted), one range request
    /// per run of adjacent ids. Returns at least the requested chunks.
    async fn fill(
        &self,
        index: &Arc<LayerIndex>,
        ids: &[u64],
    ) -> Result<HashMap<u64, Bytes>, ViewError> {
        let mut got = HashMap::new();
        for run in runs(ids) {
            let started = Instant::now();
            let (produced, compressed_bytes) = self.fetch_run(index, run).await?;
            trace::note_fetch(trace::FetchNote {
                layer: index.digest.clone(),
                started,
                duration: started.elapsed(),
                compressed_bytes,
                bytes: produced.iter().map(|(_, d)| d.len() as u64).sum(),
            });
            for (id, data) in produced {
                let key = ChunkKey {
                    layer: index.digest.clone(),
                    id,
                };
                if let Err(e) = self.cache.put(&key, data.clone()) {
                    // Serving the verified bytes still works; only caching failed.
                    tracing::warn!("could not cache chunk: {e}");
                }
                got.insert(id, data);
            }
        }
        Ok(got)
    }

    /// One range request for the chunks `run`, decoded and verified.
    async fn fetch_run(
        &self,
        index: &Arc<LayerIndex>,
        run: Range<u64>,
    ) -> Result<(Vec<(u64, Bytes)>, u64), ViewError> {
        let fetch = index.codec().plan(run);
        let (blob, fresh, reservations) =
            self.fetch_blob(&index.digest, fetch.blob.clone()).await?;
        let wire = fresh.iter().map(|(_, b)| b.len() as u64).sum();
        let bad = |layer: &Digest, msg: String| ViewError::BadData {
            layer: layer.clone(),
            msg,
        };
        let produced = if index.codec().cpu_heavy() {
            let owned = index.clone();
            tokio::task::spawn_blocking(move || {
                owned
                    .codec()
                    .decode(&fetch, &blob)
                    .map_err(|msg| bad(&owned.digest, msg))
            })
            .await
            .map_err(|e| bad(&index.digest, format!("decoder task failed: {e}")))??
        } else {
            index
                .codec()
                .decode(&fetch, &blob)
                .map_err(|msg| bad(&index.digest, msg))?
        };
        // Verified now: later requests that overlap may use these bytes.
        let recent = self.cache.recent_blobs();
        for (start, bytes) in fresh {
            recent.keep(&index.digest, start, bytes);
        }
        drop(reservations);
        Ok((produced, wire))
    }

    /// Bytes `range` of `layer`'s blob: what was fetched lately from memory,
    /// what another request is fetching from that request once it is done,
    /// the rest from the registry. Returns the bytes, the pieces fetched now
    /// (blob offset and bytes; not verified yet) and the reservations of
    /// those pieces, to be dropped once they are kept or found wrong.
    async fn fetch_blob(
        &self,
        layer: &Digest,
        range: Range<u64>,
    ) -> Result<(Bytes, Vec<(u64, Bytes)>, Vec<Reservation<'_>>), ViewError> {
        let recent = self.cache.recent_blobs();
        let mut pieces: Vec<(u64, Bytes)> = Vec::new();
        let mut fresh = Vec::new();
        let mut reservations = Vec::new();
        let mut todo = vec![range.clone()];
        for round in 0..=ATTEMPTS {
            let mut waits = Vec::new();
            for r in std::mem::take(&mut todo) {
                let parts = if round == ATTEMPTS {
                    // Waited long enough on others: fetch what is left.
                    vec![Part::Missing(r)]
                } else {
                    let (parts, reservation) = recent.split_reserving(layer, r);
                    reservations.push(reservation);
                    parts
                };
                for part in parts {
                    match part {
                        Part::Held(at, b) => pieces.push((at, b)),
                        Part::Missing(r) => {
                            let b = self.source.fetch_range(layer, r.clone()).await?;
                            fresh.push((r.start, b.clone()));
                            pieces.push((r.start, b));
                        }
                        Part::Pending(r, done) => waits.push((r, done)),
                    }
                }
            }
            if waits.is_empty() {
                break;
            }
            for (r, mut done) in waits {
                // Ends when the other request kept its bytes or gave up. The
                // bound breaks a wait on a request that itself waits on one
                // of ours (possible after a third one failed): the bytes are
                // then fetched twice, never wrong.
                let _ = tokio::time::timeout(PENDING_WAIT, done.changed()).await;
                todo.push(r);
            }
        }
        pieces.sort_by_key(|(at, _)| *at);
        let blob = if pieces.len() == 1 {
            pieces.pop().expect("one piece").1
        } else {
            let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
            for (_, p) in &pieces {
                out.extend_from_slice(p);
            }
            out.freeze()
        };
        Ok((blob, fresh, reservations))
    }
}

/// Bytes two ranges share.
fn overlap(a: Range<u64>, b: Range<u64>) -> u64 {
    a.end.min(b.end).saturating_sub(a.start.max(b.start))
}

/// Concatenate consecutive chunks starting at address `base` and cut
/// [start, stop) out of them.
pub(crate) fn assemble(chunks: &[Bytes], base: u64, start: u64, stop: u64) -> Bytes {
    if chunks.len() == 1 {
        let c = &chunks[0];
        let lo = ((start - base) as usize).min(c.len());
        let hi = ((stop - base) as usize).min(c.len());
        return c.slice(lo..hi);
    }
    let mut out = BytesMut::with_capacity((stop - start) as usize);
    let mut at = base;
    for c in chunks {
        let (c_lo, c_hi) = (at, at + c.len() as u64);
        let lo = start.max(c_lo);
        let hi = stop.min(c_hi);
        if lo < hi {
            out.extend_from_slice(&c[(lo - c_lo) as usize..(hi - c_lo) as usize]);
        }
        at = c_hi;
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_of_ranges() {
        assert_eq!(overlap(0..10, 5..20), 5);
        assert_eq!(overlap(5..20, 0..10), 5);
        assert_eq!(overlap(0..10, 10..20), 0);
        assert_eq!(overlap(0..100, 20..30), 10);
    }

    #[test]
    fn assemble_cuts_across_chunks() {
        let chunks = [
            Bytes::from_static(b"abcd"),
            Bytes::from_static(b"efgh"),
            Bytes::from_static(b"ij"),
        ];
        assert_eq!(assemble(&chunks, 100, 102, 109), &b"cdefghi"[..]);
        assert_eq!(assemble(&chunks[..1], 100, 101, 103), &b"bc"[..]);
    }
}

#[cfg(test)]
#[path = "read_tests.rs"]
mod fetch_tests;
