//! HTTP boot: `GET|HEAD /boot/NODE/PATH` serves file PATH of node NODE's
//! TFTP namespace (its image's boot directory, the generated files, the
//! iPXE ROMs) over HTTP, so that iPXE (`[server] boot_over = "http"`) and
//! UEFI HTTP boot load kernel and initrd over TCP instead of TFTP's
//! lock-step blocks.
//!
//! - The lookup is TFTP's own ([`crate::tftp::Files`]): the same files,
//!   read through the same view and cache, recorded in the node's boot
//!   profile (named by their URL, so a profile tells HTTP from TFTP).
//! - Who may read what: as TFTP with a node's MAC prefix. Any reader of
//!   the API (`server.api_readers`, by default loopback and the served
//!   networks) may read a node's boot files, except a client whose address
//!   belongs to another node (403): a node never reads another's files.
//! - Paths: a `..` component (also percent-encoded) is refused (400), and
//!   the rest of TFTP's rules hold (only regular files under the boot
//!   directory; symlinks do not lead out of it).
//! - `Range: bytes=A-B`, `A-` and `-N` (one range) get 206 with
//!   `Content-Range`; an unsatisfiable one 416; several ranges or a
//!   malformed header are ignored (200, the whole file), as RFC 9110 allows.
//! - The body is streamed from the image in windows of the TFTP reader
//!   (one cache chunk at a time, read ahead), never held whole in memory.
//! - An image still opening is 503 with `Retry-After`, a missing file 404;
//!   both say why in the body.

use crate::nodes::Node;
use crate::serve::ServeContext;
use crate::tftp::reader::READ_AHEAD;
use crate::tftp::{bootfs, Files, Label, TftpReader, Via};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Seconds a client is told to wait when the image is still opening.
const RETRY_AFTER_SECS: &str = "2";

/// The boot file route (`get` answers HEAD too).
pub(crate) fn routes() -> Router<Arc<ServeContext>> {
    Router::new().route("/boot/{node}/{*path}", get(boot_file))
}

/// A plain-text error: boot loaders show the body, if anything.
fn refuse(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

/// The bytes of a file of `size` bytes that a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wanted {
    /// No range, or one to ignore: the whole file, 200.
    Whole,
    /// Bytes `start..=end`, 206.
    Part { start: u64, end: u64 },
    /// A range that overlaps no byte of the file, 416.
    Unsatisfiable,
}

/// Parse a `Range` header value (RFC 9110, 14.1.2) for a file of `size`
/// bytes. Only one `bytes` range is honoured.
pub(crate) fn wanted(range: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        // `-N`: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                Wanted::Unsatisfiable
            } else {
                Wanted::Part {
                    start: size.saturating_sub(n),
                    end: size - 1,
                }
            }
        }
        (false, Some(start), last) if last.is_some() || last_is_empty(last, spec) => {
            if last.is_some_and(|end| end < start) {
                return Wanted::Whole;
            }
            if start >= size {
                return Wanted::Unsatisfiable;
            }
            let end = last.map_or(size - 1, |e| e.min(size - 1));
            Wanted::Part { start, end }
        }
        _ => Wanted::Whole,
    }
}

/// `A-`: nothing after the dash.
fn last_is_empty(last: Option<u64>, spec: &str) -> bool {
    last.is_none() && spec.trim().ends_with('-')
}

async fn boot_file(
    State(ctx): State<Arc<ServeContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    Path((name, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let opened = std::time::Instant::now();
    let Some(node) = ctx.inventory.by_name(&name) else {
        return refuse(StatusCode::NOT_FOUND, format!("no node {name:?}"));
    };
    let ip = match peer.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    if let Some(other) = ip
        .and_then(|ip| ctx.inventory.by_ip(ip))
        .filter(|n| n.name != node.name)
    {
        tracing::warn!(
            "HTTP: {peer} asked for {path:?} of node {}, but its address belongs to node {}: refused",
            node.name,
            other.name
        );
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "{} is the address of node {}: it may not read the boot files of node {}",
                peer.ip(),
                other.name,
                node.name
            ),
        );
    }
    // The path arrives percent-decoded: `%2e%2e` is `..` here, and refused
    // like it (TFTP, which decodes nothing, lets `a/../b` mean `b`; a URL
    // has no business climbing at all).
    if path.split(['/', '\\']).any(|c| c == "..") {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("{path:?}: `..` is not allowed in a boot file path"),
        );
    }
    let Some(rel) = bootfs::normalize(&path).filter(|p| !p.is_empty()) else {
        return refuse(StatusCode::BAD_REQUEST, format!("bad path {path:?}"));
    };
    let files = Files::new(ctx.clone());
    let reader = match files.rom(peer, Via::Http, &rel).await {
        Some(rom) => rom,
        None => match open(&ctx, &files, &node, peer, rel.clone(), opened).await {
            Ok(r) => r,
            Err(resp) => return resp,
        },
    };
    respond(reader, &method, &headers)
}

/// `node`'s file `rel` through TFTP's lookup, or the error response.
async fn open(
    ctx: &ServeContext,
    files: &Files,
    node: &Arc<Node>,
    peer: SocketAddr,
    rel: String,
    opened: std::time::Instant,
) -> Result<TftpReader, Response> {
    let server = &ctx.config.server;
    let label = Label {
        client: peer,
        via: Via::Http,
        node: node.name.clone(),
        path: format!(
            "{}/{rel}",
            crate::config::http_boot_dir(ctx.server_ip, server.http_port, &node.name)
        ),
    };
    files
        .open_node(node, rel.clone(), label, opened)
        .await
        .map_err(|refusal| {
            if refusal.code == crate::tftp::Refusal::not_found().code {
                refuse(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no file {rel:?} in the boot files of node {} (its image's {} and the \
                         files lazyboot generates)",
                        node.name, node.boot_dir
                    ),
                )
            } else {
                let mut r = refuse(StatusCode::SERVICE_UNAVAILABLE, refusal.message);
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
                r
            }
        })
}

/// The response for an opened file: the range asked for, streamed.
fn respond(mut reader: TftpReader, method: &Method, headers: &HeaderMap) -> Response {
    let size = reader.size();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, len) = match wanted(range, size) {
        Wanted::Whole => (StatusCode::OK, 0, size),
        Wanted::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Wanted::Unsatisfiable => {
            let mut r = refuse(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the file has {size} bytes"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, len);
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        reader.seek(start);
        // A TCP client takes the file as fast as it can: no first-window
        // caution as for a TFTP client that may be a size probe.
        reader.read_ahead();
        Body::from_stream(stream(reader, start, len))
    };
    builder.body(body).unwrap_or_else(|e| {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("building the response: {e}"),
        )
    })
}

/// `len` bytes from byte `start` on, in pieces that end on the reader's
/// window boundaries, so each is a slice of one fetched window (no copy).
/// A read error ends the body early, which aborts the connection: the
/// client sees a short transfer, never wrong bytes.
fn stream(
    reader: TftpReader,
    start: u64,
    len: u64,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, crate::tftp::reader::ReadError>> + Send {
    futures_util::stream::unfold((reader, start, len), |(mut reader, pos, left)| async move {
        if left == 0 {
            return None;
        }
        let to_boundary = READ_AHEAD as u64 - pos % READ_AHEAD as u64;
        let want = left.min(to_boundary) as usize;
        match reader.next_block(want).await {
            Ok(b) if b.is_empty() => None,
            Ok(b) => {
                let n = b.len() as u64;
                Some((Ok(b), (reader, pos + n, left - n)))
            }
            Err(e) => Some((Err(e), (reader, pos, 0))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_parsed_as_rfc_9110_says() {
        let w = |r: &str| wanted(Some(r), 1000);
        assert_eq!(wanted(None, 1000), Wanted::Whole);
        assert_eq!(w("bytes=0-99"), Wanted::Part { start: 0, end: 99 });
        assert_eq!(
            w("bytes=900-"),
            Wanted::Part {
                start: 900,
                end: 999
            }
        );
        assert_eq!(
            w("bytes=-10"),
            Wanted::Part {
                start: 990,
                end: 999
            }
        );
        // Past the end: cut to the file; longer than the file: all of it.
        assert_eq!(
            w("bytes=500-5000"),
            Wanted::Part {
                start: 500,
                end: 999
            }
        );
        assert_eq!(w("bytes=-5000"), Wanted::Part { start: 0, end: 999 });
        assert_eq!(w("bytes=1000-"), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=1000-1001"), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=-0"), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-"), 0), Wanted::Unsatisfiable);
        // Ignored: other units, several ranges, nonsense, last < first.
        for r in [
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=a-b",
            "bytes=5",
            "bytes=9-3",
            "bytes=-",
            "bytes=+1-2",
        ] {
            assert_eq!(w(r), Wanted::Whole, "{r}");
        }
    }
}
