//! Compressed blob bytes fetched lately, kept in memory (bounded) so that a
//! request overlapping an earlier one asks the registry only for the bytes
//! it does not hold yet. Two misses in one gzip checkpoint span both decode
//! from that checkpoint, and two small files often share a compressed
//! block: without this, each such miss fetches the shared bytes again.
//!
//! Only bytes a decode has verified are kept ([`RecentBlobs::keep`] is
//! called after the format checked them), so a wrong answer from the
//! registry is never reused.
//!
//! Ranges being fetched are reserved ([`RecentBlobs::split_reserving`]):
//! a request overlapping one in flight waits for it instead of fetching
//! the same bytes beside it, so many nodes asking at once cost the
//! registry what one node costs.

use crate::digest::Digest;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ops::Range;
use tokio::sync::watch;

/// Compressed bytes kept at most, over every layer.
pub(crate) const RECENT_BLOB_BYTES: u64 = 64 << 20;

/// A piece of a request: bytes held (from this blob offset), a range to
/// fetch, or a range another request is fetching (ready, or given up, when
/// the receiver's sender is gone).
#[derive(Debug)]
pub(crate) enum Part {
    Held(u64, Bytes),
    Missing(Range<u64>),
    Pending(Range<u64>, watch::Receiver<()>),
}

impl PartialEq for Part {
    fn eq(&self, other: &Part) -> bool {
        match (self, other) {
            (Part::Held(a, x), Part::Held(b, y)) => a == b && x == y,
            (Part::Missing(a), Part::Missing(b)) | (Part::Pending(a, _), Part::Pending(b, _)) => {
                a == b
            }
            _ => false,
        }
    }
}

/// Ranges reserved by one request until it drops this: after keeping what
/// it verified, or on failure (the waiters then fetch for themselves).
pub(crate) struct Reservation<'a> {
    recent: &'a RecentBlobs,
    layer: Digest,
    id: u64,
    _done: Option<watch::Sender<()>>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut inner = self.recent.inner.lock();
        if let Some(v) = inner.inflight.get_mut(&self.layer) {
            v.retain(|f| f.id != self.id);
            if v.is_empty() {
                inner.inflight.remove(&self.layer);
            }
        }
        // The sender goes after the entries: a waiter that wakes finds the
        // range held, or free to fetch.
    }
}

struct InFlight {
    range: Range<u64>,
    id: u64,
    done: watch::Receiver<()>,
}

struct Piece {
    start: u64,
    data: Bytes,
    used: u64,
}

impl Piece {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

#[derive(Default)]
struct Inner {
    layers: HashMap<Digest, Vec<Piece>>,
    inflight: HashMap<Digest, Vec<InFlight>>,
    bytes: u64,
    clock: u64,
}

/// See the module documentation.
pub(crate) struct RecentBlobs {
    limit: u64,
    inner: Mutex<Inner>,
}

impl RecentBlobs {
    pub(crate) fn new(limit: u64) -> Self {
        RecentBlobs {
            limit,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// `range` of `layer`'s blob as held pieces, ranges in flight and
    /// ranges still to fetch, in order, covering it exactly.
    #[cfg(test)]
    pub(crate) fn split(&self, layer: &Digest, range: Range<u64>) -> Vec<Part> {
        let mut inner = self.inner.lock();
        split_locked(&mut inner, layer, range)
    }

    /// Like `split`, and the ranges still to fetch are reserved for the
    /// caller until it drops the [`Reservation`].
    pub(crate) fn split_reserving(
        &self,
        layer: &Digest,
        range: Range<u64>,
    ) -> (Vec<Part>, Reservation<'_>) {
        let mut inner = self.inner.lock();
        let parts = split_locked(&mut inner, layer, range);
        inner.clock += 1;
        let id = inner.clock;
        let mut reservation = Reservation {
            recent: self,
            layer: layer.clone(),
            id,
            _done: None,
        };
        let missing: Vec<Range<u64>> = parts
            .iter()
            .filter_map(|p| match p {
                Part::Missing(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        if !missing.is_empty() {
            let (tx, rx) = watch::channel(());
            let v = inner.inflight.entry(layer.clone()).or_default();
            for range in missing {
                v.push(InFlight {
                    range,
                    id,
                    done: rx.clone(),
                });
            }
            reservation._done = Some(tx);
        }
        (parts, reservation)
    }

    /// Keep `data`, verified bytes of `layer`'s blob from offset `start`,
    /// dropping the least recently used pieces beyond the bound.
    pub(crate) fn keep(&self, layer: &Digest, start: u64, data: Bytes) {
        let len = data.len() as u64;
        if len == 0 || len > self.limit {
            return;
        }
        let mut inner = self.inner.lock();
        inner.clock += 1;
        let used = inner.clock;
        inner
            .layers
            .entry(layer.clone())
            .or_default()
            .push(Piece { start, data, used });
        inner.bytes += len;
        while inner.bytes > self.limit {
            let oldest = inner
                .layers
                .iter()
                .flat_map(|(d, ps)| ps.iter().enumerate().map(move |(i, p)| (p.used, d, i)))
                .min_by_key(|(used, _, _)| *used)
                .map(|(_, d, i)| (d.clone(), i));
            let Some((d, i)) = oldest else { break };
            let pieces = inner.layers.get_mut(&d).expect("found above");
            let gone = pieces.swap_remove(i);
            if pieces.is_empty() {
                inner.layers.remove(&d);
            }
            inner.bytes -= gone.data.len() as u64;
        }
    }

    /// Bytes held (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn held(&self) -> u64 {
        self.inner.lock().bytes
    }
}

fn split_locked(inner: &mut Inner, layer: &Digest, range: Range<u64>) -> Vec<Part> {
    inner.clock += 1;
    let now = inner.clock;
    let Inner {
        layers, inflight, ..
    } = inner;
    let pieces = layers.get_mut(layer);
    let flying = inflight.get(layer);
    let mut parts = Vec::new();
    let mut at = range.start;
    // Pieces are few (the bound over their mean size), so a scan is
    // cheaper than keeping an interval tree.
    let mut pieces = pieces;
    while at < range.end {
        let held = pieces.as_deref_mut().and_then(|ps| {
            ps.iter_mut()
                .filter(|p| p.start <= at && p.end() > at)
                .max_by_key(|p| p.end())
        });
        if let Some(p) = held {
            let hi = p.end().min(range.end);
            let lo = (at - p.start) as usize;
            parts.push(Part::Held(at, p.data.slice(lo..(hi - p.start) as usize)));
            p.used = now;
            at = hi;
            continue;
        }
        let fly = flying.and_then(|fs| {
            fs.iter()
                .filter(|f| f.range.start <= at && f.range.end > at)
                .max_by_key(|f| f.range.end)
        });
        if let Some(f) = fly {
            let hi = f.range.end.min(range.end);
            parts.push(Part::Pending(at..hi, f.done.clone()));
            at = hi;
            continue;
        }
        let next = pieces
            .as_deref()
            .into_iter()
            .flatten()
            .map(|p| p.start)
            .chain(flying.into_iter().flatten().map(|f| f.range.start))
            .filter(|&s| s > at)
            .min()
            .unwrap_or(u64::MAX)
            .min(range.end);
        parts.push(Part::Missing(at..next));
        at = next;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    fn bytes(start: u64, len: u64) -> Bytes {
        (start..start + len).map(|i| i as u8).collect()
    }

    #[test]
    fn a_request_fetches_only_what_is_not_held() {
        let r = RecentBlobs::new(1 << 20);
        let l = layer(1);
        assert_eq!(r.split(&l, 0..100), vec![Part::Missing(0..100)]);
        r.keep(&l, 10, bytes(10, 20));
        r.keep(&l, 50, bytes(50, 10));
        assert_eq!(
            r.split(&l, 0..100),
            vec![
                Part::Missing(0..10),
                Part::Held(10, bytes(10, 20)),
                Part::Missing(30..50),
                Part::Held(50, bytes(50, 10)),
                Part::Missing(60..100),
            ]
        );
        assert_eq!(r.split(&l, 15..25), vec![Part::Held(15, bytes(15, 10))]);
        // Another layer's bytes are never used.
        assert_eq!(r.split(&layer(2), 15..25), vec![Part::Missing(15..25)]);
    }

    #[test]
    fn overlapping_pieces_give_each_byte_once() {
        let r = RecentBlobs::new(1 << 20);
        let l = layer(1);
        r.keep(&l, 0, bytes(0, 40));
        r.keep(&l, 20, bytes(20, 40));
        let parts = r.split(&l, 0..80);
        let mut joined = Vec::new();
        for p in &parts {
            match p {
                Part::Held(_, b) => joined.extend_from_slice(b),
                Part::Missing(m) => {
                    assert_eq!(*m, 60..80);
                    joined.extend_from_slice(&bytes(m.start, m.end - m.start));
                }
                Part::Pending(..) => panic!("nothing is in flight"),
            }
        }
        assert_eq!(Bytes::from(joined), bytes(0, 80));
    }

    #[test]
    fn the_least_recently_used_piece_goes_first() {
        let r = RecentBlobs::new(100);
        let l = layer(1);
        r.keep(&l, 0, bytes(0, 40));
        r.keep(&l, 100, bytes(100, 40));
        // Using the first piece makes the second the oldest.
        assert_eq!(r.split(&l, 0..10), vec![Part::Held(0, bytes(0, 10))]);
        r.keep(&l, 200, bytes(200, 40));
        assert_eq!(r.held(), 80);
        assert_eq!(r.split(&l, 100..110), vec![Part::Missing(100..110)]);
        assert_eq!(r.split(&l, 0..10), vec![Part::Held(0, bytes(0, 10))]);
        // A piece larger than the bound is not kept at all.
        r.keep(&l, 1000, bytes(1000, 101));
        assert_eq!(r.held(), 80);
    }

    #[tokio::test]
    async fn a_range_in_flight_is_waited_for_not_fetched_again() {
        let r = RecentBlobs::new(1 << 20);
        let l = layer(1);
        let (parts, mine) = r.split_reserving(&l, 0..100);
        assert_eq!(parts, vec![Part::Missing(0..100)]);
        // Overlapping requests meanwhile: they wait for 0..100 and fetch
        // only what lies beyond it.
        let (parts, theirs) = r.split_reserving(&l, 50..150);
        assert_eq!(
            parts,
            vec![
                Part::Pending(50..100, watch::channel(()).1),
                Part::Missing(100..150)
            ]
        );
        let Part::Pending(_, mut done) = parts.into_iter().next().unwrap() else {
            unreachable!()
        };
        r.keep(&l, 0, bytes(0, 100));
        drop(mine);
        assert!(
            done.changed().await.is_err(),
            "woken by the reservation's end"
        );
        assert_eq!(r.split(&l, 50..100), vec![Part::Held(50, bytes(50, 50))]);
        // A reservation given up without keeping leaves the range to fetch.
        drop(theirs);
        assert_eq!(r.split(&l, 100..150), vec![Part::Missing(100..150)]);
    }
}
