//! The send window of one transfer (RFC 7440; windowsize 1 is RFC 1350's
//! lock-step): which blocks are out, what an ACK means, what to send next.
//!
//! Blocks are counted from 1 with a `u64`; on the wire the number is that
//! count modulo 65536, so a file of more than 65535 blocks rolls over to
//! block 0 and goes on, as tftp-hpa and dnsmasq do. An ACK is matched to
//! the window by its distance from the last acknowledged block, which is
//! unambiguous because a window is far shorter than 65536 blocks.
//!
//! The window holds the blocks sent and not yet acknowledged, and nothing
//! else: a transfer whose client never answers keeps one window's blocks
//! (slices of what the image view returned, not copies).

use bytes::Bytes;
use std::collections::VecDeque;

/// What an ACK did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ack {
    /// The client has everything up to a block it had not acknowledged:
    /// the window moves on and is sent from the block after it.
    Advanced,
    /// The last block already acknowledged, again: a duplicate (a client
    /// timing out, or the network). Answering it with a resend is how the
    /// sorcerer's apprentice bug starts, so nothing is sent.
    Duplicate,
    /// Not a block of this window (older, or not sent yet).
    Stale,
}

pub(crate) struct Window {
    block_size: usize,
    window_size: usize,
    /// Blocks in the file: the last one is shorter than `block_size`
    /// (empty when the size is a multiple of it).
    total: u64,
    /// Blocks the client has acknowledged.
    acked: u64,
    /// Blocks `acked + 1 ..= acked + held.len()`: sent, not acknowledged.
    held: VecDeque<Bytes>,
}

/// The number block `index` carries on the wire.
pub(crate) fn wire(index: u64) -> u16 {
    index as u16
}

impl Window {
    pub(crate) fn new(size: u64, block_size: u16, window_size: u16) -> Window {
        let block_size = block_size.max(1) as usize;
        Window {
            block_size,
            window_size: window_size.max(1) as usize,
            total: size / block_size as u64 + 1,
            acked: 0,
            held: VecDeque::with_capacity(window_size.clamp(1, 64) as usize),
        }
    }

    pub(crate) fn block_size(&self) -> usize {
        self.block_size
    }

    /// Every block acknowledged: the transfer is complete.
    pub(crate) fn complete(&self) -> bool {
        self.acked == self.total
    }

    #[cfg(test)]
    pub(crate) fn acked(&self) -> u64 {
        self.acked
    }

    /// Whether the window has room for the next block of the file.
    pub(crate) fn wants_block(&self) -> bool {
        self.held.len() < self.window_size && self.acked + (self.held.len() as u64) < self.total
    }

    /// The next block of the file, read; it is sent with the window.
    pub(crate) fn push(&mut self, block: Bytes) {
        debug_assert!(self.wants_block());
        self.held.push_back(block);
    }

    /// The blocks to send, in order, with their wire numbers.
    pub(crate) fn blocks(&self) -> impl Iterator<Item = (u16, &Bytes)> {
        let first = self.acked + 1;
        self.held
            .iter()
            .enumerate()
            .map(move |(i, b)| (wire(first + i as u64), b))
    }

    /// Apply an ACK of wire block `block`.
    pub(crate) fn on_ack(&mut self, block: u16) -> Ack {
        let distance = block.wrapping_sub(wire(self.acked)) as usize;
        if distance == 0 {
            return Ack::Duplicate;
        }
        if distance > self.held.len() {
            return Ack::Stale;
        }
        self.held.drain(..distance);
        self.acked += distance as u64;
        Ack::Advanced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(w: &mut Window, data: &Bytes, bs: usize) {
        while w.wants_block() {
            let i = (w.acked() as usize + w.held.len()) * bs;
            w.push(data.slice(i.min(data.len())..(i + bs).min(data.len())));
        }
    }

    #[test]
    fn lockstep_transfer_with_a_short_last_block() {
        let data = Bytes::from(vec![1u8; 1000]);
        let mut w = Window::new(1000, 512, 1);
        fill(&mut w, &data, 512);
        assert_eq!(
            w.blocks().map(|(n, b)| (n, b.len())).collect::<Vec<_>>(),
            [(1, 512)]
        );
        assert_eq!(w.on_ack(0), Ack::Duplicate);
        assert_eq!(w.on_ack(2), Ack::Stale);
        assert_eq!(w.on_ack(1), Ack::Advanced);
        assert_eq!(w.on_ack(1), Ack::Duplicate);
        fill(&mut w, &data, 512);
        assert_eq!(
            w.blocks().map(|(n, b)| (n, b.len())).collect::<Vec<_>>(),
            [(2, 488)]
        );
        assert_eq!(w.on_ack(2), Ack::Advanced);
        assert!(w.complete());
        assert!(!w.wants_block());
    }

    #[test]
    fn a_multiple_of_the_block_size_ends_with_an_empty_block() {
        let data = Bytes::from(vec![1u8; 1024]);
        let mut w = Window::new(1024, 512, 8);
        fill(&mut w, &data, 512);
        let sizes: Vec<_> = w.blocks().map(|(n, b)| (n, b.len())).collect();
        assert_eq!(sizes, [(1, 512), (2, 512), (3, 0)]);
        assert_eq!(w.on_ack(3), Ack::Advanced);
        assert!(w.complete());
        let mut empty = Window::new(0, 512, 1);
        assert!(empty.wants_block());
        empty.push(Bytes::new());
        assert_eq!(empty.on_ack(1), Ack::Advanced);
        assert!(empty.complete());
    }

    #[test]
    fn an_ack_inside_the_window_resumes_after_it() {
        let data = Bytes::from(vec![0u8; 512 * 20]);
        let mut w = Window::new(data.len() as u64, 512, 4);
        fill(&mut w, &data, 512);
        assert_eq!(w.blocks().map(|b| b.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
        // Block 3 lost: the client acknowledges 2.
        assert_eq!(w.on_ack(2), Ack::Advanced);
        fill(&mut w, &data, 512);
        assert_eq!(w.blocks().map(|b| b.0).collect::<Vec<_>>(), [3, 4, 5, 6]);
        assert_eq!(w.on_ack(2), Ack::Duplicate);
        assert_eq!(w.on_ack(1), Ack::Stale);
        assert_eq!(w.on_ack(7), Ack::Stale);
    }

    #[test]
    fn block_numbers_roll_over_to_zero() {
        let bs = 8usize;
        let blocks = 70_000u64;
        let data = Bytes::from(vec![0u8; bs * blocks as usize + 3]);
        let mut w = Window::new(data.len() as u64, bs as u16, 16);
        let mut last = 0u16;
        let mut seen_zero = false;
        while !w.complete() {
            fill(&mut w, &data, bs);
            let numbers: Vec<u16> = w.blocks().map(|b| b.0).collect();
            for n in &numbers {
                assert_eq!(*n, last.wrapping_add(1));
                last = *n;
                seen_zero |= *n == 0;
            }
            assert_eq!(w.on_ack(last), Ack::Advanced);
        }
        assert!(seen_zero);
        assert_eq!(w.acked(), blocks + 1);
    }
}
