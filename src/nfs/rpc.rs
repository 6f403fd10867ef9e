//! ONC RPC (RFC 5531) over TCP: record marking, call headers, AUTH_SYS
//! credentials and reply headers.
//!
//! A record is one or more fragments, each behind a 4-byte header (top bit:
//! last fragment, low 31 bits: length). Records are capped
//! ([`MAX_RECORD`]); a client that exceeds the cap, or closes inside a
//! record, loses its connection.

use nfs3_server::nfs3_types::rpc::{
    accept_stat_data, accepted_reply, auth_stat, fragment_header, msg_body, opaque_auth,
    rejected_reply, reply_body, rpc_msg,
};
use nfs3_server::nfs3_types::xdr_codec::Pack;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::fs::Cred;
use super::xdr::XdrIn;

/// Largest record accepted from a client: a 1 MiB WRITE plus headers fits
/// with room to spare.
pub(crate) const MAX_RECORD: usize = 1536 * 1024;

/// RFC 5531: credentials and verifiers are at most 400 bytes.
const MAX_AUTH_BYTES: usize = 400;
/// AUTH_SYS: machine name up to 255 bytes, up to 16 supplementary groups.
const MAX_MACHINE_NAME: usize = 255;
const MAX_AUTH_GIDS: usize = 16;

pub(crate) const AUTH_NONE: u32 = 0;
pub(crate) const AUTH_SYS: u32 = 1;

/// The uid and gid of callers without credentials (AUTH_NONE).
pub(crate) const NOBODY: u32 = 65534;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("record larger than {0} bytes")]
    TooLarge(usize),
    #[error("connection closed inside a record")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Read into `buf` until it is full or the peer closes; returns how much
/// was read.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = r.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// The next complete record, or `None` if the peer closed the connection
/// between records.
pub(crate) async fn read_record<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, RecordError> {
    let mut record = Vec::new();
    Ok(read_record_into(r, max, &mut record)
        .await?
        .then_some(record))
}

/// [`read_record`] into `record` (emptied first); `false` if the peer
/// closed between records. The buffer grows as bytes arrive, never to
/// what a fragment header announces: a header claiming a large record
/// followed by silence costs what was sent, not what was claimed.
async fn read_record_into<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    record: &mut Vec<u8>,
) -> Result<bool, RecordError> {
    record.clear();
    let mut first = true;
    loop {
        let mut hdr = [0u8; 4];
        match fill(r, &mut hdr).await? {
            0 if first => return Ok(false),
            4 => {}
            _ => return Err(RecordError::Truncated),
        }
        first = false;
        let hdr = fragment_header::from(hdr);
        let len = hdr.fragment_length() as usize;
        if record.len() + len > max {
            return Err(RecordError::TooLarge(max));
        }
        let got = (&mut *r).take(len as u64).read_to_end(record).await?;
        if got < len {
            return Err(RecordError::Truncated);
        }
        if hdr.eof() {
            return Ok(true);
        }
    }
}

/// Frame `msg` as one record of one fragment, as a client would (the
/// server frames replies with [`reply_header`] + [`finish_record`]).
#[cfg(test)]
pub(crate) fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 4);
    out.extend_from_slice(&fragment_header::new(msg.len() as u32, true).into_xdr_buf());
    out.extend_from_slice(msg);
    out
}

/// A decoded call header; `args` are the procedure's argument bytes.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    pub(crate) xid: u32,
    pub(crate) prog: u32,
    pub(crate) vers: u32,
    pub(crate) proc_: u32,
    pub(crate) cred: Cred,
    pub(crate) args: &'a [u8],
}

/// Why a record is not a usable call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CallError {
    /// Not even an xid, or not a CALL: nothing sensible to answer, drop
    /// the connection.
    Drop,
    /// Answer this xid with the given reply instead of dispatching.
    Reply(u32, Outcome),
}

/// The reply status of a call (accepted or denied, RFC 5531 section 9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    ProgUnavail,
    ProgMismatch {
        low: u32,
        high: u32,
    },
    ProcUnavail,
    GarbageArgs,
    SystemErr,
    /// Denied: we speak RPC version 2 only.
    RpcMismatch,
    /// Denied: bad or unsupported credentials.
    AuthError(AuthStat),
}

/// The `auth_stat` values we send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthStat {
    BadCred,
}

pub(crate) fn parse_call(record: &[u8]) -> Result<Call<'_>, CallError> {
    let mut r = XdrIn::new(record);
    let xid = r.u32().map_err(|_| CallError::Drop)?;
    if r.u32().map_err(|_| CallError::Drop)? != 0 {
        // A REPLY (or junk): we never send calls.
        return Err(CallError::Drop);
    }
    let garbage = CallError::Reply(xid, Outcome::GarbageArgs);
    let rpcvers = r
        .u32()
        .map_err(|_| CallError::Reply(xid, Outcome::GarbageArgs))?;
    if rpcvers != 2 {
        return Err(CallError::Reply(xid, Outcome::RpcMismatch));
    }
    let (Ok(prog), Ok(vers), Ok(proc_)) = (r.u32(), r.u32(), r.u32()) else {
        return Err(garbage);
    };
    let bad_cred = CallError::Reply(xid, Outcome::AuthError(AuthStat::BadCred));
    let Ok(flavor) = r.u32() else {
        return Err(garbage);
    };
    let Ok(body) = r.opaque(MAX_AUTH_BYTES) else {
        return Err(bad_cred);
    };
    let cred = match flavor {
        AUTH_NONE => Cred {
            uid: NOBODY,
            gid: NOBODY,
            gids: Vec::new(),
        },
        AUTH_SYS => parse_auth_sys(body).ok_or(bad_cred)?,
        _ => return Err(CallError::Reply(xid, Outcome::AuthError(AuthStat::BadCred))),
    };
    // The verifier: AUTH_NONE in practice; its content is not checked.
    if r.u32().is_err() || r.opaque(MAX_AUTH_BYTES).is_err() {
        return Err(CallError::Reply(xid, Outcome::GarbageArgs));
    }
    Ok(Call {
        xid,
        prog,
        vers,
        proc_,
        cred,
        args: r.rest(),
    })
}

/// The body of an AUTH_SYS credential: stamp, machine name, uid, gid,
/// up to 16 supplementary gids. Trailing bytes make it invalid.
pub(crate) fn parse_auth_sys(body: &[u8]) -> Option<Cred> {
    let mut r = XdrIn::new(body);
    let _stamp = r.u32().ok()?;
    let _machine = r.opaque(MAX_MACHINE_NAME).ok()?;
    let uid = r.u32().ok()?;
    let gid = r.u32().ok()?;
    let n = r.u32().ok()? as usize;
    if n > MAX_AUTH_GIDS {
        return None;
    }
    let mut gids = Vec::with_capacity(n);
    for _ in 0..n {
        gids.push(r.u32().ok()?);
    }
    if !r.rest().is_empty() {
        return None;
    }
    Some(Cred { uid, gid, gids })
}

/// A reply header for `xid`, preceded by 4 bytes reserved for the record
/// mark. Append the result body (for `Success`), then [`finish_record`].
pub(crate) fn reply_header(xid: u32, outcome: Outcome) -> Vec<u8> {
    let body = match outcome {
        Outcome::RpcMismatch => reply_body::MSG_DENIED(rejected_reply::rpc_mismatch(2, 2)),
        Outcome::AuthError(AuthStat::BadCred) => {
            reply_body::MSG_DENIED(rejected_reply::auth_error(auth_stat::AUTH_BADCRED))
        }
        accepted => reply_body::MSG_ACCEPTED(accepted_reply {
            verf: opaque_auth::default(),
            reply_data: match accepted {
                Outcome::Success => accept_stat_data::SUCCESS,
                Outcome::ProgUnavail => accept_stat_data::PROG_UNAVAIL,
                Outcome::ProgMismatch { low, high } => {
                    accept_stat_data::PROG_MISMATCH { low, high }
                }
                Outcome::ProcUnavail => accept_stat_data::PROC_UNAVAIL,
                Outcome::GarbageArgs => accept_stat_data::GARBAGE_ARGS,
                _ => accept_stat_data::SYSTEM_ERR,
            },
        }),
    };
    let msg = rpc_msg {
        xid,
        body: msg_body::REPLY(body),
    };
    let mut out = Vec::with_capacity(4 + msg.packed_size());
    out.extend_from_slice(&[0; 4]);
    msg.pack(&mut out).expect("packing into a Vec cannot fail");
    out
}

/// Fill in the record mark reserved by [`reply_header`]: one last fragment.
pub(crate) fn finish_record(mut buf: Vec<u8>) -> Vec<u8> {
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&fragment_header::new(len, true).into_xdr_buf());
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use nfs3_server::nfs3_types::rpc::{auth_unix, call_body, reply_body};
    use nfs3_server::nfs3_types::xdr_codec::{Opaque, Unpack};

    fn call_bytes(xid: u32, cred: opaque_auth<'_>, args: &[u8]) -> Vec<u8> {
        let msg = rpc_msg {
            xid,
            body: msg_body::CALL(call_body {
                rpcvers: 2,
                prog: 100003,
                vers: 3,
                proc: 1,
                cred,
                verf: opaque_auth::default(),
            }),
        };
        let mut out = Vec::new();
        msg.pack(&mut out).unwrap();
        out.extend_from_slice(args);
        out
    }

    async fn records(mut input: &[u8], max: usize) -> Vec<Result<Option<Vec<u8>>, String>> {
        let mut out = Vec::new();
        loop {
            let r = read_record(&mut input, max).await;
            let done = !matches!(r, Ok(Some(_)));
            out.push(r.map_err(|e| e.to_string()));
            if done {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn a_record_announced_large_costs_only_what_arrived() {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        use tokio::io::AsyncWriteExt;
        // A header claiming the largest legal fragment, then one byte.
        let announced = (MAX_RECORD - 16) as u32;
        client
            .write_all(&fragment_header::new(announced, true).into_xdr_buf())
            .await
            .unwrap();
        client.write_all(b"x").await.unwrap();
        let mut record = Vec::new();
        let read = read_record_into(&mut server, MAX_RECORD, &mut record);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(200), read).await;
        assert!(waited.is_err(), "the record cannot be complete");
        assert_eq!(record, b"x");
        assert!(
            record.capacity() < 64 << 10,
            "{} bytes reserved for 1 received",
            record.capacity()
        );
        // A whole record of that size is still read.
        let mut input = fragment_header::new(announced, true)
            .into_xdr_buf()
            .to_vec();
        input.extend(vec![7u8; announced as usize]);
        let got = read_record(&mut &input[..], MAX_RECORD).await.unwrap();
        assert_eq!(got.map(|r| r.len()), Some(announced as usize));
    }

    fn fragment(data: &[u8], last: bool) -> Vec<u8> {
        let mut v = fragment_header::new(data.len() as u32, last)
            .into_xdr_buf()
            .to_vec();
        v.extend_from_slice(data);
        v
    }

    #[tokio::test]
    async fn record_marking() {
        // One record in three fragments (one of them empty), then a second
        // pipelined record in the same stream, then a clean close.
        let mut s = fragment(b"abc", false);
        s.extend(fragment(b"", false));
        s.extend(fragment(b"defg", true));
        s.extend(frame(b"second"));
        let got = records(&s, 100).await;
        assert_eq!(
            got,
            vec![
                Ok(Some(b"abcdefg".to_vec())),
                Ok(Some(b"second".to_vec())),
                Ok(None)
            ]
        );
    }

    #[tokio::test]
    async fn record_violations() {
        // Too large in one fragment, and in sum over fragments.
        let got = records(&frame(&[0; 11]), 10).await;
        assert!(matches!(&got[0], Err(e) if e.contains("larger")), "{got:?}");
        let mut s = fragment(&[0; 6], false);
        s.extend(fragment(&[0; 6], true));
        let got = records(&s, 10).await;
        assert!(matches!(&got[0], Err(e) if e.contains("larger")), "{got:?}");
        // A huge announced length is refused before any allocation.
        let got = records(&[0xff, 0xff, 0xff, 0xff], MAX_RECORD).await;
        assert!(matches!(&got[0], Err(e) if e.contains("larger")), "{got:?}");
        // Closed inside a header, inside a fragment, between fragments.
        for s in [
            vec![0x80, 0],
            fragment(b"abc", true)[..5].to_vec(),
            fragment(b"abc", false),
        ] {
            let got = records(&s, 100).await;
            assert!(matches!(&got[0], Err(e) if e.contains("closed")), "{got:?}");
        }
    }

    #[test]
    fn auth_sys_and_none() {
        let unix = auth_unix {
            stamp: 1,
            machinename: Opaque::owned(b"node1".to_vec()),
            uid: 1000,
            gid: 100,
            gids: vec![100, 27, 44],
        };
        let rec = call_bytes(7, opaque_auth::auth_unix(&unix), b"ARGS");
        let call = parse_call(&rec).unwrap();
        assert_eq!(
            (call.xid, call.prog, call.vers, call.proc_),
            (7, 100003, 3, 1)
        );
        assert_eq!(
            call.cred,
            Cred {
                uid: 1000,
                gid: 100,
                gids: vec![100, 27, 44]
            }
        );
        assert_eq!(call.args, b"ARGS");

        let rec = call_bytes(8, opaque_auth::default(), b"");
        let call = parse_call(&rec).unwrap();
        assert_eq!((call.cred.uid, call.cred.gid), (NOBODY, NOBODY));
    }

    #[test]
    fn bad_calls() {
        // Too short for an xid; a REPLY instead of a CALL.
        assert_eq!(parse_call(&[0, 0]).unwrap_err(), CallError::Drop);
        assert_eq!(
            parse_call(&[0, 0, 0, 1, 0, 0, 0, 1]).unwrap_err(),
            CallError::Drop
        );
        // Truncated header.
        let rec = call_bytes(9, opaque_auth::default(), b"");
        assert_eq!(
            parse_call(&rec[..20]).unwrap_err(),
            CallError::Reply(9, Outcome::GarbageArgs)
        );
        // RPC version 3.
        let mut rec = call_bytes(10, opaque_auth::default(), b"");
        rec[11] = 3;
        assert_eq!(
            parse_call(&rec).unwrap_err(),
            CallError::Reply(10, Outcome::RpcMismatch)
        );
        // 17 groups; unknown flavor.
        let unix = auth_unix {
            gids: vec![1; 17],
            ..Default::default()
        };
        let rec = call_bytes(11, opaque_auth::auth_unix(&unix), b"");
        assert_eq!(
            parse_call(&rec).unwrap_err(),
            CallError::Reply(11, Outcome::AuthError(AuthStat::BadCred))
        );
        let mut rec = call_bytes(12, opaque_auth::default(), b"");
        rec[27] = 6; // RPCSEC_GSS
        assert_eq!(
            parse_call(&rec).unwrap_err(),
            CallError::Reply(12, Outcome::AuthError(AuthStat::BadCred))
        );
    }

    #[test]
    fn reply_headers_decode() {
        for (outcome, want) in [
            (Outcome::Success, "SUCCESS"),
            (Outcome::ProgUnavail, "PROG_UNAVAIL"),
            (Outcome::ProgMismatch { low: 3, high: 3 }, "PROG_MISMATCH"),
            (Outcome::ProcUnavail, "PROC_UNAVAIL"),
            (Outcome::GarbageArgs, "GARBAGE_ARGS"),
            (Outcome::RpcMismatch, "RPC_MISMATCH"),
            (Outcome::AuthError(AuthStat::BadCred), "AUTH_BADCRED"),
        ] {
            let rec = finish_record(reply_header(99, outcome));
            let hdr = fragment_header::from([rec[0], rec[1], rec[2], rec[3]]);
            assert!(hdr.eof());
            assert_eq!(hdr.fragment_length() as usize, rec.len() - 4);
            let (msg, n) = rpc_msg::unpack(&mut &rec[4..]).unwrap();
            assert_eq!(n, rec.len() - 4);
            assert_eq!(msg.xid, 99);
            let msg_body::REPLY(body) = msg.body else {
                panic!("not a reply")
            };
            let text = match body {
                reply_body::MSG_ACCEPTED(a) => format!("{:?}", a.reply_data),
                reply_body::MSG_DENIED(d) => format!("{d:?}"),
            };
            assert!(text.contains(want), "{text} vs {want}");
        }
    }
}
