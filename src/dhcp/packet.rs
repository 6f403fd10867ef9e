//! Checking a received datagram before anything acts on it.
//!
//! dhcproto is lenient on purpose: it does not look at the magic cookie and
//! silently stops decoding options at the first one it cannot read, keeping
//! the ones before it. A boot server must not half-understand a request (a
//! lost option 97 or 77 changes what a node boots), so every datagram is
//! walked here first and dropped whole if any part of it is wrong.

use dhcproto::v4::{Message, MessageType, Opcode};
use dhcproto::Decodable;
use std::collections::BTreeSet;

/// op, htype, hlen, hops, xid, secs, flags, four addresses, chaddr, sname,
/// file: the fixed BOOTP part (RFC 951).
pub(crate) const BOOTP_HEADER_LEN: usize = 236;
/// Options start after the header and the 4-byte magic cookie.
pub(crate) const OPTIONS_OFFSET: usize = BOOTP_HEADER_LEN + 4;
pub(crate) const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// The largest UDP payload that fits one 1500-byte Ethernet frame. Boot ROMs
/// send a few hundred bytes and never fragment; anything bigger is not a
/// request we want to parse.
pub(crate) const MAX_PACKET_LEN: usize = 1472;

const HTYPE_ETHERNET: u8 = 1;
const OPTION_PAD: u8 = 0;
const OPTION_END: u8 = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Malformed {
    #[error("{0} bytes is shorter than a BOOTP header and magic cookie ({OPTIONS_OFFSET})")]
    TooShort(usize),
    #[error("{0} bytes is larger than any boot request ({MAX_PACKET_LEN})")]
    TooLong(usize),
    #[error("op {0} is not BOOTREQUEST")]
    NotRequest(u8),
    #[error("hardware type {0} is not Ethernet")]
    HardwareType(u8),
    #[error("hardware address length {0} is not 6")]
    HardwareLen(u8),
    #[error("bad magic cookie {0:02x?}")]
    Magic([u8; 4]),
    #[error("option {code} at offset {offset} runs past the end of the packet")]
    OptionOverrun { code: u8, offset: usize },
    #[error("option {0} has a value that cannot be decoded")]
    BadOption(u8),
    #[error("no DHCP message type (option 53): plain BOOTP is not served")]
    NoMessageType,
    #[error("cannot decode: {0}")]
    Decode(String),
}

/// Validate `buf` as a DHCP request from an Ethernet client and decode it.
pub(crate) fn parse_request(buf: &[u8]) -> Result<Message, Malformed> {
    if buf.len() < OPTIONS_OFFSET {
        return Err(Malformed::TooShort(buf.len()));
    }
    if buf.len() > MAX_PACKET_LEN {
        return Err(Malformed::TooLong(buf.len()));
    }
    if buf[0] != 1 {
        return Err(Malformed::NotRequest(buf[0]));
    }
    if buf[1] != HTYPE_ETHERNET {
        return Err(Malformed::HardwareType(buf[1]));
    }
    if buf[2] != 6 {
        return Err(Malformed::HardwareLen(buf[2]));
    }
    let magic: [u8; 4] = buf[BOOTP_HEADER_LEN..OPTIONS_OFFSET]
        .try_into()
        .expect("length checked above");
    if magic != MAGIC_COOKIE {
        return Err(Malformed::Magic(magic));
    }
    let codes = walk_options(&buf[OPTIONS_OFFSET..])?;
    let msg = Message::from_bytes(buf).map_err(|e| Malformed::Decode(e.to_string()))?;
    if msg.opcode() != Opcode::BootRequest {
        return Err(Malformed::NotRequest(buf[0]));
    }
    // An option dhcproto could not decode is missing from its map (and so
    // is every option after it): that is a malformed request.
    for code in codes {
        if msg.opts().get(code.into()).is_none() {
            return Err(Malformed::BadOption(code));
        }
    }
    match msg.opts().msg_type() {
        None => Err(Malformed::NoMessageType),
        Some(_) => Ok(msg),
    }
}

/// The codes of the options in `opts` (the bytes after the cookie), checking
/// that every length stays inside the packet. Reading stops at END; a packet
/// that simply ends without one is accepted, as most servers do.
fn walk_options(opts: &[u8]) -> Result<BTreeSet<u8>, Malformed> {
    let mut codes = BTreeSet::new();
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            OPTION_PAD => i += 1,
            OPTION_END => break,
            code => {
                let Some(&len) = opts.get(i + 1) else {
                    return Err(Malformed::OptionOverrun {
                        code,
                        offset: OPTIONS_OFFSET + i,
                    });
                };
                let end = i + 2 + len as usize;
                if end > opts.len() {
                    return Err(Malformed::OptionOverrun {
                        code,
                        offset: OPTIONS_OFFSET + i,
                    });
                }
                // dhcproto joins the values of a repeated option (RFC
                // 3396): a fixed-length one must come once.
                let again = !codes.insert(code);
                if !length_allowed(code, len) || (again && !length_allowed(code, 255)) {
                    return Err(Malformed::BadOption(code));
                }
                i = end;
            }
        }
    }
    Ok(codes)
}

/// Whether option `code` may be `len` bytes long, for the options that
/// dhcproto decodes assuming a length (it checks them only with debug
/// assertions, by panicking): rapid commit (80) is empty, client FQDN (81)
/// at least 3 bytes, client network interface (94) 3, the bulk leasequery
/// times (152-155) 4.
fn length_allowed(code: u8, len: u8) -> bool {
    match code {
        80 => len == 0,
        81 => len >= 3,
        94 => len == 3,
        152..=155 => len == 4,
        _ => true,
    }
}

/// The message type of a validated request.
pub(crate) fn message_type(msg: &Message) -> MessageType {
    msg.opts().msg_type().unwrap_or(MessageType::Unknown(0))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid DISCOVER from `mac`, options given raw (without the
    /// message type, which comes first, and without END).
    pub(crate) fn request_bytes(mac: [u8; 6], msg_type: u8, extra: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; BOOTP_HEADER_LEN];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        b[28..34].copy_from_slice(&mac);
        b.extend(MAGIC_COOKIE);
        b.extend([53, 1, msg_type]);
        b.extend(extra);
        b.push(OPTION_END);
        b
    }

    const MAC: [u8; 6] = [0xdc, 0xa6, 0x32, 1, 2, 3];

    #[test]
    fn options_of_the_wrong_length_are_malformed() {
        // Found by the dhcp_packet fuzz target: a PXE ROM's option 94
        // (client network interface) of 2 bytes made the decoder panic.
        for (code, value) in [
            (94u8, &[1u8, 2][..]),
            (80, &[0][..]),
            (81, &[0, 0][..]),
            (152, &[0, 0, 0][..]),
        ] {
            let mut opt = vec![code, value.len() as u8];
            opt.extend_from_slice(value);
            let b = request_bytes(MAC, 1, &opt);
            assert_eq!(
                parse_request(&b).err(),
                Some(Malformed::BadOption(code)),
                "option {code}"
            );
        }
        let b = request_bytes(MAC, 1, &[94, 3, 1, 2, 1]);
        assert!(parse_request(&b).is_ok(), "a good option 94");
    }

    #[test]
    fn accepts_a_good_discover() {
        let b = request_bytes(MAC, 1, &[60, 3, b'a', b'b', b'c', 0, 0]);
        let m = parse_request(&b).unwrap();
        assert_eq!(message_type(&m), MessageType::Discover);
        assert_eq!(m.chaddr(), &MAC);
    }

    #[test]
    fn accepts_a_packet_without_end() {
        let mut b = request_bytes(MAC, 1, &[]);
        b.pop();
        assert!(parse_request(&b).is_ok());
    }

    #[test]
    fn rejects_each_kind_of_damage() {
        let good = request_bytes(MAC, 1, &[]);
        assert_eq!(parse_request(&good[..100]), Err(Malformed::TooShort(100)));
        assert_eq!(parse_request(&[0u8; 3000]), Err(Malformed::TooLong(3000)));
        let mut reply = good.clone();
        reply[0] = 2;
        assert_eq!(parse_request(&reply), Err(Malformed::NotRequest(2)));
        let mut htype = good.clone();
        htype[1] = 6;
        assert_eq!(parse_request(&htype), Err(Malformed::HardwareType(6)));
        let mut hlen = good.clone();
        hlen[2] = 16;
        assert_eq!(parse_request(&hlen), Err(Malformed::HardwareLen(16)));
        let mut magic = good.clone();
        magic[BOOTP_HEADER_LEN] = 0;
        assert!(matches!(parse_request(&magic), Err(Malformed::Magic(_))));
        // Option 60 claims 64 bytes but 3 follow.
        let mut overrun = request_bytes(MAC, 1, &[]);
        overrun.pop();
        overrun.extend([60, 64, b'a', b'b', b'c']);
        assert_eq!(
            parse_request(&overrun),
            Err(Malformed::OptionOverrun {
                code: 60,
                offset: OPTIONS_OFFSET + 3
            })
        );
        // A length byte missing entirely.
        let mut no_len = request_bytes(MAC, 1, &[]);
        no_len.pop();
        no_len.push(60);
        assert!(matches!(
            parse_request(&no_len),
            Err(Malformed::OptionOverrun { code: 60, .. })
        ));
        // Option 50 (an address) with 3 bytes: inside the packet, but not
        // decodable; dhcproto would silently drop it and what follows.
        let bad_value = request_bytes(MAC, 1, &[50, 3, 10, 0, 0, 60, 1, b'x']);
        assert_eq!(parse_request(&bad_value), Err(Malformed::BadOption(50)));
        // No message type: plain BOOTP.
        let mut bootp = good.clone();
        bootp.truncate(OPTIONS_OFFSET);
        bootp.push(OPTION_END);
        assert_eq!(parse_request(&bootp), Err(Malformed::NoMessageType));
    }
}
