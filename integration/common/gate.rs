//! A pass-through HTTP proxy in front of a [`Registry`](super::Registry)
//! that can hold the body of one blob's streaming GET (whole blob or an
//! open-ended range: a streaming pass, not a ranged read) after a given number of bytes until it
//! is released: a streaming pass caught in the middle of a layer, on cue.
//!
//! One request per connection: the proxy asks upstream to close after each
//! response and relays bytes as they are, so the client reconnects.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[derive(Default)]
struct Hold {
    /// `sha256:...` of the blob to hold, and after how many body bytes.
    blob: Option<(String, u64)>,
    released: bool,
    /// Streams of the blob that reached the hold point so far.
    held: usize,
}

pub struct Gate {
    /// `127.0.0.1:PORT`, to use as a registry host.
    pub addr: String,
    hold: Arc<(Mutex<Hold>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl Gate {
    pub fn start(upstream: &str) -> Result<Gate> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let hold: Arc<(Mutex<Hold>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s, up) = (hold.clone(), stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (h, up) = (h.clone(), up.clone());
                std::thread::spawn(move || {
                    if let Err(e) = relay(conn, &up, &h) {
                        eprintln!("gate: {e:#}");
                    }
                });
            }
        });
        Ok(Gate { addr, hold, stop })
    }

    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{}", self.addr, repo_tag)
    }

    /// Hold whole-blob GETs of `digest` after `at` body bytes.
    pub fn hold(&self, digest: &str, at: u64) {
        let mut h = self.hold.0.lock().unwrap();
        h.blob = Some((digest.to_string(), at));
        h.released = false;
    }

    /// Wait until a stream of the held blob has reached the hold point.
    pub fn wait_held(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut h = self.hold.0.lock().unwrap();
        while h.held == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no stream of the held blob reached the hold point in {timeout:?}");
            }
            h = self.hold.1.wait_timeout(h, left).unwrap().0;
        }
        Ok(())
    }

    pub fn release(&self) {
        self.hold.0.lock().unwrap().released = true;
        self.hold.1.notify_all();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.release();
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn relay(mut client: TcpStream, upstream: &str, hold: &(Mutex<Hold>, Condvar)) -> Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16384];
    let end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        let n = client.read(&mut tmp)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().context("empty request")?.to_string();
    let mut out = format!("{request_line}\r\n");
    let mut ranged = false;
    for l in lines.filter(|l| !l.is_empty()) {
        let name = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        // An open-ended range (`bytes=N-`) is how a pass asks for the
        // stream; a bounded one is a read of part of the blob.
        ranged |= name == "range" && !l.trim_end().ends_with('-');
        if name != "connection" {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
    let limit = {
        let h = hold.0.lock().unwrap();
        match &h.blob {
            Some((digest, at))
                if !ranged
                    && request_line.starts_with("GET ")
                    && path.ends_with(&format!("/blobs/{digest}")) =>
            {
                Some(*at)
            }
            _ => None,
        }
    };
    let mut up = TcpStream::connect(upstream).context("connecting upstream")?;
    up.write_all(out.as_bytes())?;
    up.write_all(&buf[end..])?;
    // Relay the response; count body bytes once the head has gone by.
    let mut head = Vec::new();
    let mut body_sent: Option<u64> = None;
    loop {
        let n = up.read(&mut tmp)?;
        if n == 0 {
            return Ok(());
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
        if let Some(at) = limit {
            if *sent < at && *sent + data.len() as u64 >= at {
                let before = (at - *sent) as usize;
                client.write_all(&data[..before])?;
                client.flush()?;
                *sent += before as u64;
                data = &data[before..];
                let mut h = hold.0.lock().unwrap();
                h.held += 1;
                hold.1.notify_all();
                while !h.released {
                    h = hold.1.wait(h).unwrap();
                }
            }
        }
        client.write_all(data)?;
        *sent += data.len() as u64;
    }
}
