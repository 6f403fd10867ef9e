//! Compressed blob bytes fetched lately, kept in memory (bounded) so that a
//! request overlapping an earlier one asks the registry only for the bytes
//! it does not hold yet. Two misses in one gzip checkpoint span both decode
//! from that checkpoint, and two small files often share a compressed
//! block: without this, each such miss fetches the shared bytes again.
//!
//! Only bytes a decode has verified are kept ([`RecentBlobs::keep`] is
//! called after the format checked them), so a wrong answer from the
//! registry is never reused.

use crate::digest::Digest;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ops::Range;

/// Compressed bytes kept at most, over every layer.
pub(crate) const RECENT_BLOB_BYTES: u64 = 64 << 20;

/// A piece of a request: bytes held, or a range to fetch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Held(Bytes),
    Missing(Range<u64>),
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

    /// `range` of `layer`'s blob as held pieces and ranges still to fetch,
    /// in order, covering it exactly.
    pub(crate) fn split(&self, layer: &Digest, range: Range<u64>) -> Vec<Part> {
        let mut inner = self.inner.lock();
        inner.clock += 1;
        let now = inner.clock;
        let mut parts = Vec::new();
        let mut at = range.start;
        if let Some(pieces) = inner.layers.get_mut(layer) {
            // Pieces are few (the bound over their mean size), so a scan is
            // cheaper than keeping an interval tree.
            while at < range.end {
                let covering = pieces
                    .iter_mut()
                    .filter(|p| p.start <= at && p.end() > at)
                    .max_by_key(|p| p.end());
                match covering {
                    Some(p) => {
                        let hi = p.end().min(range.end);
                        parts.push(Part::Held(
                            p.data.slice((at - p.start) as usize..(hi - p.start) as usize),
                        ));
                        p.used = now;
                        at = hi;
                    }
                    None => {
                        let next = pieces
                            .iter()
                            .map(|p| p.start)
                            .filter(|&s| s > at)
                            .min()
                            .unwrap_or(u64::MAX)
                            .min(range.end);
                        parts.push(Part::Missing(at..next));
                        at = next;
                    }
                }
            }
        }
        if at < range.end {
            parts.push(Part::Missing(at..range.end));
        }
        parts
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
                Part::Held(bytes(10, 20)),
                Part::Missing(30..50),
                Part::Held(bytes(50, 10)),
                Part::Missing(60..100),
            ]
        );
        assert_eq!(r.split(&l, 15..25), vec![Part::Held(bytes(15, 10))]);
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
                Part::Held(b) => joined.extend_from_slice(b),
                Part::Missing(m) => {
                    assert_eq!(*m, 60..80);
                    joined.extend_from_slice(&bytes(m.start, m.end - m.start));
                }
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
        assert_eq!(r.split(&l, 0..10), vec![Part::Held(bytes(0, 10))]);
        r.keep(&l, 200, bytes(200, 40));
        assert_eq!(r.held(), 80);
        assert_eq!(r.split(&l, 100..110), vec![Part::Missing(100..110)]);
        assert_eq!(r.split(&l, 0..10), vec![Part::Held(bytes(0, 10))]);
        // A piece larger than the bound is not kept at all.
        r.keep(&l, 1000, bytes(1000, 101));
        assert_eq!(r.held(), 80);
    }
}
