//! lazyboot's TFTP engine: read-only RFC 1350 with options (RFC 2347 OACK,
//! 2348 blksize, 2349 tsize and timeout, 7440 windowsize).
//!
//! - `packet`: parsing and encoding, strict and safe on any bytes.
//! - `options`: what a request's options become.
//! - `window`: the send window, ACK matching, block number rollover.
//! - `session`: one transfer on its own socket.
//! - here: the listening socket, admission (session limits, duplicate
//!   requests) and dispatch.
//!
//! The listener keeps a table of live transfers by client address and port.
//! A request over [`Settings::max_sessions`] in all or
//! [`Settings::max_sessions_per_client`] from one address is answered
//! "server busy, retry" (code 0) from the listening port, and nothing is
//! kept of it. A request from an address and port that has a live transfer
//! is a retransmission of that request while the client has not yet spoken
//! to the transfer's port, and is dropped; once it has (an ACK, or the
//! ERROR that ends a Raspberry Pi's tsize probe), the new request replaces
//! the old transfer. A WRQ gets "access violation". Other datagrams to the
//! listening port, malformed or not, get no answer.

pub(crate) mod options;
pub(crate) mod packet;
pub(crate) mod session;
pub(crate) mod window;

use crate::tftp::reader::TftpReader;
use packet::{parse, Packet, Refusal};
use parking_lot::Mutex;
use session::Request;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

/// What the message of a refused-for-load request says.
pub(crate) const BUSY: &str = "server busy, retry";

/// Finds the file a request names, or why there is none.
pub(crate) trait Open: Send + Sync + 'static {
    fn open(
        &self,
        client: SocketAddr,
        path: &str,
    ) -> impl Future<Output = Result<TftpReader, Refusal>> + Send;
}

/// How the engine runs.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) caps: options::Caps,
    /// First retransmission timeout when the client sends none.
    pub(crate) retransmit_timeout: Duration,
    /// The timeout doubles per retransmission up to this (or the client's
    /// own timeout, if longer).
    pub(crate) max_retransmit_timeout: Duration,
    /// Retransmissions without progress before a transfer is abandoned.
    pub(crate) max_retries: u32,
    pub(crate) max_sessions: usize,
    pub(crate) max_sessions_per_client: usize,
}

/// Why the engine stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EngineError {
    #[error("receiving on the TFTP port {addr}: {source}")]
    Recv {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// The listener's state: every live transfer.
pub(crate) struct Engine<O> {
    opener: Arc<O>,
    settings: Settings,
    /// Our address: each transfer's socket binds an ephemeral port on it.
    local_ip: IpAddr,
    table: Mutex<Table>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Table {
    by_peer: HashMap<SocketAddr, Live>,
    per_ip: HashMap<IpAddr, usize>,
}

struct Live {
    id: u64,
    abort: AbortHandle,
    heard: Arc<Hearing>,
    socket: Arc<UdpSocket>,
}

/// What a transfer has heard from its client: how the listener tells a late
/// copy of the transfer's request from the client starting over.
pub(crate) struct Hearing {
    started: std::time::Instant,
    /// Milliseconds from `started` to the latest packet, plus one (0: none).
    last: AtomicU64,
    /// The client sent an ERROR: it is done with this transfer.
    ended: AtomicBool,
}

impl Hearing {
    fn new() -> Hearing {
        Hearing {
            started: std::time::Instant::now(),
            last: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        }
    }

    /// A packet came from the client.
    pub(crate) fn heard(&self, error: bool) {
        let ms = self.started.elapsed().as_millis() as u64 + 1;
        self.last.store(ms, Ordering::Relaxed);
        if error {
            self.ended.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the client has left this transfer: it ended it with an
    /// ERROR, or it has been silent for `quiet` after it had spoken (it
    /// gave up and asks again). A client that has not spoken yet is still
    /// waiting for the transfer's first packet, and one that is
    /// acknowledging is busy with it: a request from either is a late copy.
    fn left(&self, quiet: Duration) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        if self.ended.load(Ordering::Relaxed) {
            return true;
        }
        last != 0
            && self.started.elapsed().as_millis() as u64 + 1 >= last + quiet.as_millis() as u64
    }
}

impl Table {
    fn remove(&mut self, peer: &SocketAddr) -> Option<Live> {
        let live = self.by_peer.remove(peer)?;
        if let Some(n) = self.per_ip.get_mut(&peer.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&peer.ip());
            }
        }
        Some(live)
    }
}

/// What the listener does with a request.
#[derive(PartialEq, Eq)]
enum Admission {
    Start,
    Duplicate,
    Busy,
}

impl<O: Open> Engine<O> {
    pub(crate) fn new(opener: Arc<O>, settings: Settings, local_ip: IpAddr) -> Arc<Engine<O>> {
        Arc::new(Engine {
            opener,
            settings,
            local_ip,
            table: Mutex::new(Table::default()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Live transfers.
    #[cfg(test)]
    pub(crate) fn sessions(&self) -> usize {
        self.table.lock().by_peer.len()
    }

    /// Serve requests arriving on `socket` until receiving on it fails.
    pub(crate) async fn serve(self: Arc<Self>, socket: UdpSocket) -> Result<(), EngineError> {
        let addr = socket.local_addr().map_err(|source| EngineError::Recv {
            addr: SocketAddr::from((self.local_ip, 0)),
            source,
        })?;
        // Requests with long names and many options still fit.
        let mut buf = vec![0u8; 65536];
        loop {
            let (len, peer) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                // An ICMP error for an earlier answer, on systems that
                // report them on unconnected sockets: not ours to stop for.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(source) => return Err(EngineError::Recv { addr, source }),
            };
            match parse(&buf[..len]) {
                Ok(Packet::Rrq(req)) => {
                    let req = Request {
                        client: peer,
                        filename: req.filename.to_string(),
                        options: req
                            .options
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    };
                    self.request(&socket, req).await;
                }
                Ok(Packet::Wrq(req)) => {
                    tracing::debug!("TFTP: refused write of {} from {peer}", req.filename);
                    let _ = socket
                        .send_to(&Refusal::access_violation().bytes(), peer)
                        .await;
                }
                Ok(other) => {
                    tracing::trace!("TFTP: {peer}: ignored {other:?} on the listening port")
                }
                Err(e) => tracing::trace!("TFTP: {peer}: dropped a malformed datagram: {e}"),
            }
        }
    }

    async fn request(self: &Arc<Self>, listener: &UdpSocket, req: Request) {
        let peer = req.client;
        let admission = {
            let mut table = self.table.lock();
            match table.by_peer.get(&peer) {
                Some(live)
                    if !live.heard.left(self.settings.retransmit_timeout)
                        && !session::has_pending_end(&live.socket) =>
                {
                    Admission::Duplicate
                }
                Some(_) => {
                    // The client is done with that transfer (it ended it, or
                    // its ERROR waits unread there, or it went quiet): this
                    // is a new one.
                    if let Some(old) = table.remove(&peer) {
                        old.abort.abort();
                    }
                    self.admit(&mut table, peer)
                }
                None => self.admit(&mut table, peer),
            }
        };
        match admission {
            Admission::Start => {}
            Admission::Duplicate => {
                tracing::trace!("TFTP: {peer}: request repeated while its transfer starts");
            }
            Admission::Busy => {
                tracing::debug!(
                    "TFTP: {peer}: {} refused: too many transfers (server busy)",
                    req.filename
                );
            }
        }
        let metrics = &crate::metrics::METRICS;
        if admission != Admission::Duplicate {
            metrics.tftp_requests.inc();
        }
        let busy = match admission {
            Admission::Start => !self.start(req),
            Admission::Duplicate => false,
            Admission::Busy => true,
        };
        if busy {
            metrics.tftp_errors.inc();
            let busy = packet::error(packet::code::UNDEFINED, BUSY);
            let _ = listener.try_send_to(&busy, peer);
        }
    }

    /// Whether a new transfer for `peer` fits within the limits.
    fn admit(&self, table: &mut Table, peer: SocketAddr) -> Admission {
        let from_ip = table.per_ip.get(&peer.ip()).copied().unwrap_or(0);
        if table.by_peer.len() >= self.settings.max_sessions
            || from_ip >= self.settings.max_sessions_per_client
        {
            Admission::Busy
        } else {
            Admission::Start
        }
    }

    /// Open the transfer's socket and start its task, registered in the
    /// table until the task ends (or is aborted). `false` if there is no
    /// socket to be had (out of file descriptors or ports): the client
    /// should retry. Only the listener calls it, one request at a time, so
    /// the admission just made still holds.
    fn start(self: &Arc<Self>, req: Request) -> bool {
        let peer = req.client;
        let socket = match transfer_socket(self.local_ip, peer) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::warn!("TFTP: {peer}: cannot open a transfer socket: {e}");
                return false;
            }
        };
        let heard = Arc::new(Hearing::new());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut table = self.table.lock();
        // Held while the task starts: its slot cannot be given back before
        // it is in the table.
        let engine = self.clone();
        let (s, h) = (socket.clone(), heard.clone());
        let task = tokio::spawn(async move {
            let _slot = Slot {
                engine: engine.clone(),
                peer,
                id,
            };
            let end = session::run(&s, &*engine.opener, &engine.settings, req, &h).await;
            tracing::trace!("TFTP: {peer}: transfer ended: {end:?}");
            end
        });
        table.by_peer.insert(
            peer,
            Live {
                id,
                abort: task.abort_handle(),
                heard,
                socket,
            },
        );
        *table.per_ip.entry(peer.ip()).or_default() += 1;
        true
    }
}

/// A transfer's place in the table, given back when its task ends or is
/// aborted (unless a newer transfer of the same peer took the place).
struct Slot<O: Open> {
    engine: Arc<Engine<O>>,
    peer: SocketAddr,
    id: u64,
}

impl<O: Open> Drop for Slot<O> {
    fn drop(&mut self) {
        let mut table = self.engine.table.lock();
        if table
            .by_peer
            .get(&self.peer)
            .is_some_and(|l| l.id == self.id)
        {
            table.remove(&self.peer);
        }
    }
}

/// A UDP socket on an ephemeral port of `local`, connected to `peer`.
fn transfer_socket(local: IpAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(SocketAddr::from((local, 0)))?;
    socket.connect(peer)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

#[cfg(test)]
mod tests;
