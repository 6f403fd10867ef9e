//! A registry that misbehaves on cue: an HTTP proxy in front of a real
//! [`Registry`](super::Registry) that injects the faults a boot meets on a
//! real network, and counts each one it injected (so a test can tell a
//! fault that was ridden out from one that never happened):
//!
//! - an outage: blob GETs answered 503 with `Retry-After` for a while;
//! - dropped connections: the next blob bodies cut after some bytes;
//! - stalls: the next blob requests answered only after a delay;
//! - token auth, as Docker Hub and most hosted registries do it (a bearer
//!   token from `/token`), with tokens revoked before their stated expiry;
//! - redirects of blob GETs to a separate "blob storage" origin that, like
//!   presigned object storage, refuses requests that carry credentials.
//!
//! One request per connection: the proxy asks upstream to close after each
//! response and relays bytes as they are.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::relay::{read_request, relay, respond, AtStop};

/// How many times each fault was injected, and what the proxy saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fired {
    pub blob_gets: u32,
    /// 503s sent during an outage.
    pub unavailable: u32,
    /// Requests for a blob path that came sooner after its 503 than the
    /// `Retry-After` asked (with 0.2 s of slack).
    pub early_retries: u32,
    pub dropped: u32,
    pub stalled: u32,
    /// Requests refused because their token was revoked.
    pub refused: u32,
    pub tokens_issued: u32,
    pub redirected: u32,
    /// Blob GETs the storage origin answered.
    pub storage_gets: u32,
    /// Storage requests refused because they carried credentials.
    pub storage_leaks: u32,
}

#[derive(Default)]
struct Plan {
    /// An outage of this long starts at the next blob GET.
    outage: Option<Duration>,
    unavailable_until: Option<Instant>,
    retry_after: u64,
    /// Revoke the tokens when the blob GET with this number (1-based)
    /// arrives, so that it carries a revoked one.
    revoke_at_blob_get: Option<u32>,
    /// When each blob path last got a 503.
    last_503: HashMap<String, Instant>,
    drops: u32,
    drop_after: u64,
    stalls: u32,
    stall_for: Duration,
    tokens: bool,
    token_generation: u32,
    redirect: bool,
    fired: Fired,
}

impl Plan {
    fn token(&self) -> String {
        format!("lbtok-{}", self.token_generation)
    }
}

pub struct FaultyRegistry {
    /// `127.0.0.1:PORT`, to use as a registry host.
    pub addr: String,
    storage_addr: String,
    plan: Arc<Mutex<Plan>>,
    stop: Arc<AtomicBool>,
}

impl FaultyRegistry {
    /// A proxy in front of the registry at `upstream` (`host:port`),
    /// injecting nothing until told to.
    pub fn start(upstream: &str) -> Result<FaultyRegistry> {
        let front = TcpListener::bind("127.0.0.1:0")?;
        let storage = TcpListener::bind("127.0.0.1:0")?;
        let addr = front.local_addr()?.to_string();
        let storage_addr = storage.local_addr()?.to_string();
        let plan: Arc<Mutex<Plan>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Ctx {
            upstream: upstream.to_string(),
            addr: addr.clone(),
            storage_addr: storage_addr.clone(),
            plan: plan.clone(),
        });
        for (listener, is_storage) in [(front, false), (storage, true)] {
            let (ctx, stop) = (ctx.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let ctx = ctx.clone();
                    std::thread::spawn(move || {
                        let r = if is_storage {
                            ctx.storage(conn)
                        } else {
                            ctx.front(conn)
                        };
                        if let Err(e) = r {
                            eprintln!("faulty registry: {e:#}");
                        }
                    });
                }
            });
        }
        Ok(FaultyRegistry {
            addr,
            storage_addr,
            plan,
            stop,
        })
    }

    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{}", self.addr, repo_tag)
    }

    /// Answer every blob GET with 503 and `Retry-After: retry_after` for
    /// `period`, from the next blob GET on.
    pub fn unavailable_for(&self, period: Duration, retry_after: u64) {
        let mut p = self.plan.lock().unwrap();
        p.outage = Some(period);
        p.unavailable_until = None;
        p.retry_after = retry_after;
    }

    /// Revoke every token given out when blob GET number `n` (counted
    /// from the start) arrives: that request carries a revoked token.
    pub fn revoke_tokens_at_blob_get(&self, n: u32) {
        self.plan.lock().unwrap().revoke_at_blob_get = Some(n);
    }

    /// Cut the bodies of the next `n` blob GETs after `after` bytes.
    pub fn drop_next(&self, n: u32, after: u64) {
        let mut p = self.plan.lock().unwrap();
        p.drops = n;
        p.drop_after = after;
    }

    /// Answer the next `n` blob GETs only after `delay`.
    pub fn stall_next(&self, n: u32, delay: Duration) {
        let mut p = self.plan.lock().unwrap();
        p.stalls = n;
        p.stall_for = delay;
    }

    /// Demand a bearer token from `/token` on every registry request.
    pub fn require_tokens(&self) {
        self.plan.lock().unwrap().tokens = true;
    }

    /// Revoke every token given out so far (their stated expiry is still
    /// minutes away).
    pub fn revoke_tokens(&self) {
        self.plan.lock().unwrap().token_generation += 1;
    }

    /// Redirect blob GETs to the storage origin.
    pub fn redirect_blobs(&self) {
        self.plan.lock().unwrap().redirect = true;
    }

    /// Stop injecting faults (token auth and redirects stay: they are how
    /// the registry works, not faults).
    pub fn heal(&self) {
        let mut p = self.plan.lock().unwrap();
        p.outage = None;
        p.unavailable_until = None;
        p.drops = 0;
        p.stalls = 0;
    }

    pub fn fired(&self) -> Fired {
        self.plan.lock().unwrap().fired
    }
}

impl Drop for FaultyRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loops so they see `stop`.
        let _ = TcpStream::connect(&self.addr);
        let _ = TcpStream::connect(&self.storage_addr);
    }
}

struct Ctx {
    upstream: String,
    addr: String,
    storage_addr: String,
    plan: Arc<Mutex<Plan>>,
}

impl Ctx {
    fn front(&self, mut client: TcpStream) -> Result<()> {
        let Some(req) = read_request(&mut client)? else {
            return Ok(());
        };
        if req.path.starts_with("/token") {
            let mut p = self.plan.lock().unwrap();
            p.fired.tokens_issued += 1;
            let body = format!(r#"{{"token":"{}","expires_in":300}}"#, p.token());
            drop(p);
            return respond(&mut client, 200, &[], body.as_bytes());
        }
        let mut cut = None;
        {
            let mut p = self.plan.lock().unwrap();
            if req.is_blob_get() {
                p.fired.blob_gets += 1;
                if p.revoke_at_blob_get == Some(p.fired.blob_gets) {
                    p.token_generation += 1;
                }
                if let Some(period) = p.outage.take() {
                    p.unavailable_until = Some(Instant::now() + period);
                }
                let asked =
                    Duration::from_secs(p.retry_after).saturating_sub(Duration::from_millis(200));
                if p.last_503
                    .get(&req.path)
                    .is_some_and(|t| t.elapsed() < asked)
                {
                    p.fired.early_retries += 1;
                }
            }
            if p.tokens {
                let wanted = format!("Bearer {}", p.token());
                let sent = req.header("authorization");
                if sent != Some(wanted.as_str()) {
                    if sent.is_some_and(|s| s.starts_with("Bearer ")) {
                        p.fired.refused += 1;
                    }
                    drop(p);
                    let challenge = format!(
                        r#"Bearer realm="http://{}/token",service="faulty""#,
                        self.addr
                    );
                    let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
                    return respond(&mut client, 401, &[("WWW-Authenticate", &challenge)], body);
                }
            }
            if req.is_blob_get() {
                if p.unavailable_until.is_some_and(|t| Instant::now() < t) {
                    p.fired.unavailable += 1;
                    p.last_503.insert(req.path.clone(), Instant::now());
                    let after = p.retry_after.to_string();
                    drop(p);
                    let body = br#"{"errors":[{"code":"UNAVAILABLE","message":"registry under maintenance"}]}"#;
                    return respond(&mut client, 503, &[("Retry-After", &after)], body);
                }
                if p.stalls > 0 {
                    p.stalls -= 1;
                    p.fired.stalled += 1;
                    let delay = p.stall_for;
                    drop(p);
                    std::thread::sleep(delay);
                    p = self.plan.lock().unwrap();
                }
                if p.redirect {
                    p.fired.redirected += 1;
                    drop(p);
                    let to = format!("http://{}{}", self.storage_addr, req.path);
                    return respond(&mut client, 307, &[("Location", &to)], b"");
                }
                cut = take_drop(&mut p);
            }
        }
        if relay(&mut client, &req, &self.upstream, cut, || AtStop::Cut)? {
            count_drop(&self.plan);
        }
        Ok(())
    }

    /// The blob storage origin of redirected GETs.
    fn storage(&self, mut client: TcpStream) -> Result<()> {
        let Some(req) = read_request(&mut client)? else {
            return Ok(());
        };
        let cut = {
            let mut p = self.plan.lock().unwrap();
            if req.header("authorization").is_some() {
                p.fired.storage_leaks += 1;
                drop(p);
                let body = b"<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>";
                return respond(&mut client, 400, &[], body);
            }
            p.fired.storage_gets += 1;
            take_drop(&mut p)
        };
        if relay(&mut client, &req, &self.upstream, cut, || AtStop::Cut)? {
            count_drop(&self.plan);
        }
        Ok(())
    }
}

/// Where to cut this body, while drops are armed (counted when a body is
/// really cut: one shorter than the cut point ends normally).
fn take_drop(p: &mut Plan) -> Option<u64> {
    (p.drops > 0).then_some(p.drop_after)
}

fn count_drop(plan: &Mutex<Plan>) {
    let mut p = plan.lock().unwrap();
    p.drops = p.drops.saturating_sub(1);
    p.fired.dropped += 1;
}
