//! The HTTP plumbing of the test proxies ([`super::gate`],
//! [`super::faults`]): read one request, answer it, or relay it upstream
//! and the answer back, with a stop point in the body. One request per
//! connection: upstream is asked to close after its answer.

use std::io::{Read, Write};
use std::net::TcpStream;

use anyhow::{Context, Result};

/// One request's head, and the body bytes read along with it.
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header lines as sent, without `Connection`.
    pub headers: Vec<String>,
    /// Body bytes that came with the head.
    rest: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && self.path.contains("/blobs/sha256:")
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

pub fn read_request(client: &mut TcpStream) -> Result<Option<Request>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16384];
    let end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        let n = client.read(&mut tmp)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let first = lines.next().context("empty request")?;
    let mut words = first.split(' ');
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("").to_string();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter(|l| {
            !l.split(':')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("connection")
        })
        .map(str::to_string)
        .collect();
    Ok(Some(Request {
        method,
        path,
        headers,
        rest: buf[end..].to_vec(),
    }))
}

pub fn respond(
    client: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} Fault\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    client.write_all(out.as_bytes())?;
    client.write_all(body)?;
    Ok(())
}

/// What a relay does once the body reaches its stop point.
pub enum AtStop {
    /// Close the connection there: a body cut short.
    Cut,
    /// Send the rest.
    Carry,
}

/// Send `req` upstream and relay the answer. When `stop` body bytes have
/// gone by, `at_stop` decides (it may block first, to hold the stream
/// there). Returns whether the body was cut.
pub fn relay(
    client: &mut TcpStream,
    req: &Request,
    upstream: &str,
    stop: Option<u64>,
    mut at_stop: impl FnMut() -> AtStop,
) -> Result<bool> {
    let mut up = TcpStream::connect(upstream).context("connecting upstream")?;
    let mut out = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    for h in &req.headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    up.write_all(&req.rest)?;
    let mut tmp = [0u8; 16384];
    let mut head = Vec::new();
    let mut body_sent: Option<u64> = None;
    let mut stopped = false;
    loop {
        let n = up.read(&mut tmp)?;
        if n == 0 {
            return Ok(false);
        }
        let mut data = &tmp[..n];
        if body_sent.is_none() {
            head.extend_from_slice(data);
            match head_end(&head) {
                Some(e) => {
                    let in_this = head.len() - e;
                    client.write_all(&data[..n - in_this])?;
                    data = &data[n - in_this..];
                    body_sent = Some(0);
                }
                None => {
                    client.write_all(data)?;
                    continue;
                }
            }
        }
        let sent = body_sent.as_mut().expect("in the body");
        if let Some(at) = stop.filter(|_| !stopped) {
            let room = at.saturating_sub(*sent) as usize;
            if data.len() >= room {
                client.write_all(&data[..room])?;
                client.flush()?;
                *sent += room as u64;
                data = &data[room..];
                stopped = true;
                if let AtStop::Cut = at_stop() {
                    // The connection drops: no more bytes, no clean end.
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    return Ok(true);
                }
            }
        }
        client.write_all(data)?;
        *sent += data.len() as u64;
    }
}
