//! TFTP packets (RFC 1350, with the option extension of RFC 2347): parsing
//! and encoding.
//!
//! Parsing is strict where a lenient reading could make the server answer
//! garbage (requests: every field NUL-terminated, UTF-8, a known mode, whole
//! option pairs) and lenient where strictness would only hurt a real client
//! (an ACK or ERROR with trailing bytes, an ERROR message without its NUL or
//! not in UTF-8: either way the client meant what the opcode says). Nothing
//! here allocates more than the datagram's own length, so any bytes are
//! safe to hand to [`parse`]; `parse(encode(p)) == p` for every parsed `p`
//! (the `tftp_packet` fuzz target checks both).

use std::fmt;

/// Largest block size RFC 2348 allows (a DATA packet must fit in an
/// IPv4 UDP datagram).
pub(crate) const MAX_BLOCK_SIZE: u16 = 65464;

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
pub(crate) const ERROR: u16 = 5;
const OACK: u16 = 6;

/// TFTP error codes (RFC 1350, 2347).
pub(crate) mod code {
    /// Not defined; see the message.
    pub(crate) const UNDEFINED: u16 = 0;
    pub(crate) const FILE_NOT_FOUND: u16 = 1;
    pub(crate) const ACCESS_VIOLATION: u16 = 2;
}

/// The transfer mode of a request. `netascii` files are sent as they are
/// (boot files are binary whatever the client says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Octet,
    Netascii,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Octet => "octet",
            Mode::Netascii => "netascii",
        }
    }
}

/// An RRQ or WRQ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request<'a> {
    pub(crate) filename: &'a str,
    pub(crate) mode: Mode,
    /// Options in the order sent, names as sent (compare case-insensitively).
    pub(crate) options: Vec<(&'a str, &'a str)>,
}

/// One TFTP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Packet<'a> {
    Rrq(Request<'a>),
    Wrq(Request<'a>),
    Data { block: u16, data: &'a [u8] },
    Ack(u16),
    Error { code: u16, message: String },
    Oack(Vec<(&'a str, &'a str)>),
}

/// Why bytes are not a TFTP packet.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("{0} bytes: shorter than an opcode")]
    Short(usize),
    #[error("unknown opcode {0}")]
    Opcode(u16),
    #[error("{0}: a field is not NUL-terminated")]
    Unterminated(&'static str),
    #[error("{0}: not UTF-8")]
    NotUtf8(&'static str),
    #[error("unknown transfer mode {0:?}")]
    Mode(String),
    #[error("DATA of {0} bytes: larger than any block size")]
    Oversized(usize),
}

/// Parse one datagram.
pub(crate) fn parse(bytes: &[u8]) -> Result<Packet<'_>, ParseError> {
    if bytes.len() < 2 {
        return Err(ParseError::Short(bytes.len()));
    }
    let op = u16::from_be_bytes([bytes[0], bytes[1]]);
    let body = &bytes[2..];
    let number = || {
        body.get(..2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(ParseError::Short(bytes.len()))
    };
    match op {
        RRQ => parse_request(body).map(Packet::Rrq),
        WRQ => parse_request(body).map(Packet::Wrq),
        DATA => {
            let block = number()?;
            let data = &body[2..];
            if data.len() > MAX_BLOCK_SIZE as usize {
                return Err(ParseError::Oversized(data.len()));
            }
            Ok(Packet::Data { block, data })
        }
        // Some stacks pad short datagrams: what follows the block number
        // does not change what the client acknowledged.
        ACK => number().map(Packet::Ack),
        ERROR => {
            let code = number()?;
            let text = &body[2..];
            let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
            Ok(Packet::Error {
                code,
                message: String::from_utf8_lossy(text).into_owned(),
            })
        }
        OACK => parse_options(body, "OACK option").map(Packet::Oack),
        other => Err(ParseError::Opcode(other)),
    }
}

/// Split `bytes` at its first NUL: the string before it and the rest.
fn field<'a>(bytes: &'a [u8], what: &'static str) -> Result<(&'a str, &'a [u8]), ParseError> {
    let end = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or(ParseError::Unterminated(what))?;
    let s = std::str::from_utf8(&bytes[..end]).map_err(|_| ParseError::NotUtf8(what))?;
    Ok((s, &bytes[end + 1..]))
}

fn parse_request(body: &[u8]) -> Result<Request<'_>, ParseError> {
    let (filename, rest) = field(body, "file name")?;
    let (mode, rest) = field(rest, "mode")?;
    let mode = if mode.eq_ignore_ascii_case("octet") {
        Mode::Octet
    } else if mode.eq_ignore_ascii_case("netascii") {
        Mode::Netascii
    } else {
        return Err(ParseError::Mode(mode.chars().take(32).collect()));
    };
    let options = parse_options(rest, "option")?;
    Ok(Request {
        filename,
        mode,
        options,
    })
}

fn parse_options<'a>(
    mut rest: &'a [u8],
    what: &'static str,
) -> Result<Vec<(&'a str, &'a str)>, ParseError> {
    let mut options = Vec::new();
    while !rest.is_empty() {
        let (name, after) = field(rest, what)?;
        let (value, after) = field(after, what)?;
        options.push((name, value));
        rest = after;
    }
    Ok(options)
}

/// The bytes of `packet`.
pub(crate) fn encode(packet: &Packet<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let put_str = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    };
    let put_options = |out: &mut Vec<u8>, options: &[(&str, &str)]| {
        for (name, value) in options {
            put_str(out, name);
            put_str(out, value);
        }
    };
    match packet {
        Packet::Rrq(r) | Packet::Wrq(r) => {
            let op = if matches!(packet, Packet::Rrq(_)) {
                RRQ
            } else {
                WRQ
            };
            out.extend_from_slice(&op.to_be_bytes());
            put_str(&mut out, r.filename);
            put_str(&mut out, r.mode.as_str());
            put_options(&mut out, &r.options);
        }
        Packet::Data { block, data } => {
            out.reserve(data.len());
            out.extend_from_slice(&DATA.to_be_bytes());
            out.extend_from_slice(&block.to_be_bytes());
            out.extend_from_slice(data);
        }
        Packet::Ack(block) => {
            out.extend_from_slice(&ACK.to_be_bytes());
            out.extend_from_slice(&block.to_be_bytes());
        }
        Packet::Error { code, message } => {
            out.extend_from_slice(&ERROR.to_be_bytes());
            out.extend_from_slice(&code.to_be_bytes());
            // A NUL inside would end the message early for the client.
            let message: String = message.chars().filter(|&c| c != '\0').collect();
            put_str(&mut out, &message);
        }
        Packet::Oack(options) => {
            out.extend_from_slice(&OACK.to_be_bytes());
            put_options(&mut out, options);
        }
    }
    out
}

/// Write a DATA header for `block` into `buf` (cleared) followed by
/// `payload`: the send path reuses one buffer per transfer.
pub(crate) fn encode_data_into(buf: &mut Vec<u8>, block: u16, payload: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&DATA.to_be_bytes());
    buf.extend_from_slice(&block.to_be_bytes());
    buf.extend_from_slice(payload);
}

/// An ERROR packet's bytes.
pub(crate) fn error(code: u16, message: &str) -> Vec<u8> {
    encode(&Packet::Error {
        code,
        message: message.to_string(),
    })
}

/// An error a request is answered with instead of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: u16,
    pub(crate) message: String,
}

impl Refusal {
    pub(crate) fn not_found() -> Refusal {
        Refusal {
            code: code::FILE_NOT_FOUND,
            message: "File not found".into(),
        }
    }

    pub(crate) fn access_violation() -> Refusal {
        Refusal {
            code: code::ACCESS_VIOLATION,
            message: "Access violation".into(),
        }
    }

    /// Code 0 with a message of our own.
    pub(crate) fn msg(message: impl Into<String>) -> Refusal {
        Refusal {
            code: code::UNDEFINED,
            message: message.into(),
        }
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        error(self.code, &self.message)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error {}: {}", self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(p: Packet<'_>) {
        let bytes = encode(&p);
        assert_eq!(parse(&bytes).unwrap(), p, "{bytes:?}");
    }

    #[test]
    fn requests_parse_with_options() {
        let raw = b"\x00\x018b07bcc6/start4.elf\x00octet\x00tsize\x000\x00BLKSIZE\x001024\x00";
        let Packet::Rrq(r) = parse(raw).unwrap() else {
            panic!("not an RRQ")
        };
        assert_eq!(r.filename, "8b07bcc6/start4.elf");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(r.options, vec![("tsize", "0"), ("BLKSIZE", "1024")]);
        assert_eq!(encode(&Packet::Rrq(r.clone())), raw);
        let Packet::Wrq(w) = parse(b"\x00\x02f\x00NetASCII\x00").unwrap() else {
            panic!("not a WRQ")
        };
        assert_eq!((w.filename, w.mode), ("f", Mode::Netascii));
        // An empty name is a request (for a file that is not there).
        assert!(matches!(
            parse(b"\x00\x01\x00octet\x00"),
            Ok(Packet::Rrq(_))
        ));
    }

    #[test]
    fn malformed_requests_are_errors() {
        for bad in [
            &b""[..],
            b"\x00",
            b"\x00\x01",
            b"\x00\x01config.txt",
            b"\x00\x01config.txt\x00",
            b"\x00\x01config.txt\x00octet",
            b"\x00\x01config.txt\x00weird\x00",
            b"\x00\x01config.txt\x00mail\x00",
            b"\x00\x01config.txt\x00octet\x00blksize\x00",
            b"\x00\x01config.txt\x00octet\x00blksize\x001024",
            b"\x00\x01\xffconfig.txt\x00octet\x00",
            b"\x00\x09config.txt\x00octet\x00",
            b"\x00\x04\x00",
            b"\x00\x05\x00",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn acks_errors_and_data() {
        assert_eq!(parse(b"\x00\x04\x12\x34").unwrap(), Packet::Ack(0x1234));
        assert_eq!(parse(b"\x00\x04\x00\x07pad").unwrap(), Packet::Ack(7));
        assert_eq!(
            parse(b"\x00\x05\x00\x00Early terminate\x00").unwrap(),
            Packet::Error {
                code: 0,
                message: "Early terminate".into()
            }
        );
        // No NUL, or bytes after it: still the client's error.
        assert_eq!(
            parse(b"\x00\x05\x00\x05Unknown TID").unwrap(),
            Packet::Error {
                code: 5,
                message: "Unknown TID".into()
            }
        );
        assert_eq!(
            parse(b"\x00\x03\x00\x01AB").unwrap(),
            Packet::Data {
                block: 1,
                data: b"AB"
            }
        );
        assert!(parse(&[0, 3, 0, 1].repeat(1 + 65464 / 4 + 1)).is_err());
    }

    #[test]
    fn every_kind_round_trips() {
        roundtrip(Packet::Rrq(Request {
            filename: "pxelinux.cfg/default",
            mode: Mode::Octet,
            options: vec![("blksize", "1468"), ("tsize", "0"), ("windowsize", "16")],
        }));
        roundtrip(Packet::Wrq(Request {
            filename: "x",
            mode: Mode::Netascii,
            options: vec![],
        }));
        roundtrip(Packet::Data {
            block: 65535,
            data: &[7; 1468],
        });
        roundtrip(Packet::Ack(0));
        roundtrip(Packet::Error {
            code: 1,
            message: "File not found".into(),
        });
        roundtrip(Packet::Oack(vec![
            ("tsize", "2228224"),
            ("blksize", "1024"),
        ]));
        let mut buf = Vec::new();
        encode_data_into(&mut buf, 3, b"xyz");
        assert_eq!(
            parse(&buf).unwrap(),
            Packet::Data {
                block: 3,
                data: b"xyz"
            }
        );
        assert_eq!(
            error(0, "a\0b"),
            encode(&Packet::Error {
                code: 0,
                message: "ab".into()
            })
        );
    }
}
