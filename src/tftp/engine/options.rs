//! Option negotiation for a read request: blksize (RFC 2348), timeout and
//! tsize (RFC 2349), windowsize (RFC 7440).
//!
//! An option the server does not know, or one whose value is out of range,
//! is left out of the OACK as if it had not been sent (RFC 2347 lets the
//! server ignore any option); if nothing is left, there is no OACK and the
//! transfer starts with DATA 1 under RFC 1350's defaults. The first of
//! repeated options counts.

use super::packet::MAX_BLOCK_SIZE;
use std::time::Duration;

/// What a transfer runs with after negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Negotiated {
    pub(crate) block_size: u16,
    pub(crate) window_size: u16,
    /// The client's retransmission timeout, if it sent one.
    pub(crate) timeout: Option<Duration>,
    /// The OACK's options, lower-case names, in the client's order; empty
    /// means no OACK.
    pub(crate) oack: Vec<(&'static str, String)>,
}

/// Server-side caps on what a client may ask for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caps {
    /// The largest blksize granted (the link's MTU allows no more).
    pub(crate) block_size: u16,
    /// The largest windowsize granted (bounds memory per transfer).
    pub(crate) window_size: u16,
}

/// Negotiate `options` (as the RRQ sent them) for a file of `size` bytes.
pub(crate) fn negotiate(options: &[(&str, &str)], size: u64, caps: Caps) -> Negotiated {
    let mut n = Negotiated {
        block_size: 512,
        window_size: 1,
        timeout: None,
        oack: Vec::new(),
    };
    let mut seen = [false; 4];
    for (name, value) in options {
        // Leading zeros and signs are refused: a value is digits only.
        let number = || {
            (!value.is_empty() && value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<u64>().ok())
                .flatten()
        };
        let (slot, key) = if name.eq_ignore_ascii_case("blksize") {
            (0, "blksize")
        } else if name.eq_ignore_ascii_case("timeout") {
            (1, "timeout")
        } else if name.eq_ignore_ascii_case("tsize") {
            (2, "tsize")
        } else if name.eq_ignore_ascii_case("windowsize") {
            (3, "windowsize")
        } else {
            continue;
        };
        if seen[slot] {
            continue;
        }
        seen[slot] = true;
        let Some(v) = number() else { continue };
        let granted = match key {
            "blksize" if (8..=MAX_BLOCK_SIZE as u64).contains(&v) => {
                // Never more than asked (a client may not accept more), and
                // never more than the link carries unfragmented.
                n.block_size = (v as u16).min(caps.block_size.max(8));
                n.block_size as u64
            }
            "timeout" if (1..=255).contains(&v) => {
                // Echoed as sent: U-Boot aborts if the OACK differs.
                n.timeout = Some(Duration::from_secs(v));
                v
            }
            // A read request's tsize is a question; the answer is the size.
            "tsize" => size,
            "windowsize" if (1..=65535).contains(&v) => {
                n.window_size = (v as u16).min(caps.window_size.max(1));
                n.window_size as u64
            }
            _ => continue,
        };
        n.oack.push((key, granted.to_string()));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        block_size: 1468,
        window_size: 64,
    };

    fn oack(n: &Negotiated) -> Vec<(&str, &str)> {
        n.oack.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    #[test]
    fn values_are_capped_and_echoed() {
        let n = negotiate(
            &[
                ("blksize", "9000"),
                ("TIMEOUT", "3"),
                ("tsize", "0"),
                ("windowsize", "1000"),
            ],
            4242,
            CAPS,
        );
        assert_eq!((n.block_size, n.window_size), (1468, 64));
        assert_eq!(n.timeout, Some(Duration::from_secs(3)));
        assert_eq!(
            oack(&n),
            [
                ("blksize", "1468"),
                ("timeout", "3"),
                ("tsize", "4242"),
                ("windowsize", "64")
            ]
        );
        let n = negotiate(&[("blksize", "1024")], 1, CAPS);
        assert_eq!(oack(&n), [("blksize", "1024")]);
    }

    #[test]
    fn bad_values_and_unknown_options_mean_no_oack() {
        let n = negotiate(
            &[
                ("blksize", "99999999"),
                ("blksize", "7"),
                ("tsize", "100000000000000000000000000000000000000"),
                ("timeout", "999"),
                ("timeout", "0"),
                ("windowsize", "0"),
                ("windowsize", "-1"),
                ("multicast", ""),
                ("utimeout", "5000"),
            ],
            10,
            CAPS,
        );
        assert!(n.oack.is_empty());
        assert_eq!((n.block_size, n.window_size, n.timeout), (512, 1, None));
    }

    #[test]
    fn the_first_of_repeated_options_counts() {
        let n = negotiate(&[("blksize", "600"), ("BlkSize", "1024")], 1, CAPS);
        assert_eq!(oack(&n), [("blksize", "600")]);
        assert_eq!(n.block_size, 600);
    }
}
