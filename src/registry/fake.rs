//! A tiny in-process registry for tests. It speaks just enough HTTP/1.1 for
//! oci-client (one request per connection) and misbehaves on demand, which a
//! real registry cannot be made to do: ignore `Range`, answer with an error
//! status, cut a body short, or never answer.

use crate::digest::Digest;
use base64::Engine as _;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
pub(crate) struct FakeState {
    /// Keyed by tag and by digest string: (media type, body).
    pub(crate) manifests: HashMap<String, (String, Vec<u8>)>,
    pub(crate) blobs: HashMap<String, Vec<u8>>,
    pub(crate) ignore_range: bool,
    /// Statuses to answer the next blob requests with, in order.
    pub(crate) fail_blobs: VecDeque<u16>,
    /// Close the next `.1` blob responses after `.0` body bytes.
    pub(crate) cut_after: Option<(usize, u32)>,
    /// Never answer the next this-many blob requests.
    pub(crate) stall_blobs: u32,
    /// The Range header (or None) of every blob request, in order.
    pub(crate) blob_ranges: Vec<Option<String>>,
    /// Demand a bearer token, as Docker Hub does, from `/token`.
    pub(crate) bearer: bool,
    /// Basic credentials (`user:pass`) the token endpoint insists on.
    pub(crate) token_credentials: Option<String>,
    pub(crate) token_requests: u32,
    pub(crate) probes: u32,
    /// Sent as `Retry-After` (seconds) with the `fail_blobs` statuses.
    pub(crate) retry_after: Option<u64>,
    /// Bumped to revoke every token given out so far.
    pub(crate) token_generation: u32,
}

impl FakeState {
    fn token(&self) -> String {
        format!("fake-token-{}", self.token_generation)
    }
}

pub(crate) struct FakeRegistry {
    pub(crate) addr: SocketAddr,
    pub(crate) state: Arc<Mutex<FakeState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRegistry {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, st.clone()));
            }
        });
        FakeRegistry { addr, state, task }
    }

    pub(crate) fn host(&self) -> String {
        self.addr.to_string()
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    pub(crate) fn add_blob(&self, data: &[u8]) -> Digest {
        let d = Digest::of_bytes(data);
        self.state().blobs.insert(d.to_string(), data.to_vec());
        d
    }

    /// Serves `body` under its digest and, if given, under `tag`.
    pub(crate) fn add_manifest(&self, tag: Option<&str>, media_type: &str, body: &[u8]) -> Digest {
        let d = Digest::of_bytes(body);
        let entry = (media_type.to_string(), body.to_vec());
        let mut st = self.state();
        if let Some(t) = tag {
            st.manifests.insert(t.to_string(), entry.clone());
        }
        st.manifests.insert(d.to_string(), entry);
        d
    }
}

async fn serve(mut sock: TcpStream, state: Arc<Mutex<FakeState>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let range = header("range");
    let head_only = method == "HEAD";

    let (bearer, wanted_basic, token) = {
        let st = state.lock().unwrap();
        (st.bearer, st.token_credentials.clone(), st.token())
    };
    if path.starts_with("/token") {
        state.lock().unwrap().token_requests += 1;
        let sent = header("authorization")
            .and_then(|v| v.strip_prefix("Basic ").map(str::to_string))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(|b| String::from_utf8_lossy(&b).to_string());
        if wanted_basic.is_some() && sent != wanted_basic {
            return respond(&mut sock, 401, &[], b"bad credentials", None, false).await;
        }
        let body = format!(r#"{{"token":"{token}"}}"#);
        return respond(&mut sock, 200, &[], body.as_bytes(), None, false).await;
    }
    if bearer && header("authorization").as_deref() != Some(&format!("Bearer {token}")) {
        if path == "/v2/" {
            state.lock().unwrap().probes += 1;
        }
        let challenge = format!(
            r#"Bearer realm="http://{}/token",service="fake""#,
            sock.local_addr().unwrap()
        );
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        let headers = [("WWW-Authenticate", challenge)];
        return respond(&mut sock, 401, &headers, body, None, false).await;
    }
    if path == "/v2/" {
        state.lock().unwrap().probes += 1;
        return respond(&mut sock, 200, &[], b"{}", None, head_only).await;
    }
    if let Some((_, reference)) = path.split_once("/manifests/") {
        let found = state.lock().unwrap().manifests.get(reference).cloned();
        return match found {
            Some((mt, body)) => {
                let headers = [
                    ("Content-Type", mt),
                    ("Docker-Content-Digest", Digest::of_bytes(&body).to_string()),
                ];
                respond(&mut sock, 200, &headers, &body, None, head_only).await
            }
            None => error(&mut sock, 404, "MANIFEST_UNKNOWN").await,
        };
    }
    if let Some((_, digest)) = path.split_once("/blobs/") {
        let (data, fail, cut, stall, ignore, retry_after) = {
            let mut st = state.lock().unwrap();
            st.blob_ranges.push(range.clone());
            let fail = st.fail_blobs.pop_front();
            let stall = st.stall_blobs > 0;
            if stall {
                st.stall_blobs -= 1;
            }
            let cut = match st.cut_after {
                Some((at, n)) if n > 0 && fail.is_none() && !stall => {
                    st.cut_after = Some((at, n - 1));
                    Some(at)
                }
                _ => None,
            };
            (
                st.blobs.get(digest).cloned(),
                fail,
                cut,
                stall,
                st.ignore_range,
                st.retry_after,
            )
        };
        if stall {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            return;
        }
        if let Some(status) = fail {
            let code = match status {
                404 => "BLOB_UNKNOWN",
                429 => "TOOMANYREQUESTS",
                _ => "DENIED",
            };
            let body =
                format!(r#"{{"errors":[{{"code":"{code}","message":"fake says {code}"}}]}}"#);
            let headers: Vec<_> = retry_after
                .map(|s| ("Retry-After", s.to_string()))
                .into_iter()
                .collect();
            return respond(&mut sock, status, &headers, body.as_bytes(), None, false).await;
        }
        let Some(data) = data else {
            return error(&mut sock, 404, "BLOB_UNKNOWN").await;
        };
        let total = data.len();
        let parsed = range.as_deref().filter(|_| !ignore).and_then(parse_range);
        return match parsed {
            None => respond(&mut sock, 200, &[], &data, cut, head_only).await,
            Some((start, _)) if start >= total => {
                let headers = [("Content-Range", format!("bytes */{total}"))];
                respond(&mut sock, 416, &headers, b"", None, head_only).await
            }
            Some((start, end)) => {
                let end = end.map_or(total, |e| (e + 1).min(total));
                let headers = [(
                    "Content-Range",
                    format!("bytes {start}-{}/{total}", end - 1),
                )];
                respond(&mut sock, 206, &headers, &data[start..end], cut, head_only).await
            }
        };
    }
    error(&mut sock, 404, "NAME_UNKNOWN").await
}

/// `bytes=a-b` or `bytes=a-`.
fn parse_range(v: &str) -> Option<(usize, Option<usize>)> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    let a = a.parse().ok()?;
    let b = if b.is_empty() {
        None
    } else {
        Some(b.parse().ok()?)
    };
    Some((a, b))
}

async fn error(sock: &mut TcpStream, status: u16, code: &str) {
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"fake says {code}"}}]}}"#);
    let headers = [("Content-Type", "application/json".to_string())];
    respond(sock, status, &headers, body.as_bytes(), None, false).await
}

async fn respond(
    sock: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    cut: Option<usize>,
    head_only: bool,
) {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Whatever",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        let n = cut.unwrap_or(body.len()).min(body.len());
        bytes.extend_from_slice(&body[..n]);
    }
    let _ = sock.write_all(&bytes).await;
    let _ = sock.shutdown().await;
}
