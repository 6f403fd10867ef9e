//! A pass-through HTTP proxy in front of a [`Registry`](super::Registry)
//! that can hold the body of one blob's streaming GET (whole blob or an
//! open-ended range: a streaming pass, not a ranged read) after a given number of bytes until it
//! is released: a streaming pass caught in the middle of a layer, on cue.
//!
//! One request per connection: the proxy asks upstream to close after each
//! response and relays bytes as they are, so the client reconnects.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::relay::{read_request, relay, AtStop};

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
                    if let Err(e) = serve_one(conn, &up, &h) {
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

fn serve_one(mut client: TcpStream, upstream: &str, hold: &(Mutex<Hold>, Condvar)) -> Result<()> {
    let Some(req) = read_request(&mut client)? else {
        return Ok(());
    };
    // An open-ended range (`bytes=N-`) is how a pass asks for the stream; a
    // bounded one is a read of part of the blob.
    let ranged = req.header("range").is_some_and(|r| !r.ends_with('-'));
    let limit = {
        let h = hold.0.lock().unwrap();
        match &h.blob {
            Some((digest, at))
                if !ranged
                    && req.method == "GET"
                    && req.path.ends_with(&format!("/blobs/{digest}")) =>
            {
                Some(*at)
            }
            _ => None,
        }
    };
    relay(&mut client, &req, upstream, limit, || {
        let mut h = hold.0.lock().unwrap();
        h.held += 1;
        hold.1.notify_all();
        while !h.released {
            h = hold.1.wait(h).unwrap();
        }
        AtStop::Carry
    })?;
    Ok(())
}
