//! How calls reach the MOUNT and NFS procedures: ONC RPC over TCP (record
//! marking, one task per connection) and over UDP (one call per datagram),
//! both feeding [`Server::dispatch`] on the same port number.
//!
//! TCP: records of a connection are read in order and each call runs in
//! its own task (at most [`MAX_IN_FLIGHT`] at a time, so a slow lazy read
//! does not hold up the calls behind it); replies go out as they complete,
//! matched by xid as RPC allows. A framing violation (oversized record,
//! close inside a record, a record that is not a call) drops the connection
//! and aborts its calls. At most [`Limits::max_connections`] connections are
//! held (one more is closed at once), and a connection that sends nothing
//! for [`Limits::idle`] is closed, as knfsd does: a mounted client that
//! wakes up reconnects by itself.
//!
//! UDP: klibc `nfsmount` (Debian's and Ubuntu's initramfs), older kernels
//! and U-Boot's `nfs` command speak MOUNT and NFS over UDP. Each datagram is
//! one call and its reply one datagram, so READ and READDIR replies are
//! bounded by [`UDP_MAX_IO`] (the rtmax FSINFO advertises there). A
//! datagram that is not a call is dropped without an answer. Calls run
//! concurrently, at most [`MAX_UDP_IN_FLIGHT`] at a time; past that the
//! socket is not read, and the kernel drops what does not fit its buffer
//! (clients retransmit).

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::fs::Exports;
use super::rpc::{self, CallError, Outcome, MAX_RECORD};
use super::server::{Head, Server};
use crate::metrics::Live;

/// Bounds on what TCP clients may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// TCP connections held at once; one more is closed as it is accepted.
    pub max_connections: usize,
    /// A connection that sends no record for this long is closed.
    pub idle: Duration,
}

impl Default for Limits {
    /// 512 connections (a few per node of a several-hundred-node fleet;
    /// each costs about 64 KiB while idle) and knfsd's 6 minutes.
    fn default() -> Self {
        Limits {
            max_connections: 512,
            idle: Duration::from_secs(360),
        }
    }
}

/// Calls of one TCP connection processed at the same time.
pub(crate) const MAX_IN_FLIGHT: usize = 16;
/// UDP calls processed at the same time (all clients together).
pub(crate) const MAX_UDP_IN_FLIGHT: usize = 64;
/// Largest datagram read: a WRITE of [`UDP_MAX_IO`] bytes with its headers
/// fits; anything larger is truncated by the kernel and fails to decode.
const MAX_DATAGRAM: usize = 65_536;

/// Why the NFS server loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum NfsError {
    /// Accepting TCP connections failed with an error the listener cannot recover from (e.g. the
    /// socket is unusable).
    #[error("accepting NFS connections: {0}")]
    Accept(#[source] std::io::Error),
    /// Reading from the UDP socket failed with an error it cannot recover from, or the datagram
    /// task died.
    #[error("receiving NFS datagrams: {0}")]
    Receive(#[source] std::io::Error),
}

/// Serve MOUNT and NFS on `listener` (and on `udp`, the same port number
/// over UDP, if given) until accepting fails for good (a transient error
/// such as running out of file descriptors is logged and retried). File
/// handles are signed with `key` (see [`super::load_or_create_key`]).
pub async fn serve<E: Exports>(
    listener: TcpListener,
    udp: Option<UdpSocket>,
    exports: Arc<E>,
    key: [u8; 32],
) -> Result<(), NfsError> {
    serve_with(listener, udp, exports, key, Limits::default()).await
}

/// [`serve`] with other [`Limits`].
pub async fn serve_with<E: Exports>(
    listener: TcpListener,
    udp: Option<UdpSocket>,
    exports: Arc<E>,
    key: [u8; 32],
    limits: Limits,
) -> Result<(), NfsError> {
    let server = Arc::new(Server::new(exports, &key));
    let datagrams = match udp {
        Some(socket) => tokio::spawn(serve_udp(socket, server.clone())),
        None => tokio::spawn(std::future::pending()),
    };
    tokio::select! {
        r = serve_tcp(listener, server, limits) => r,
        r = datagrams => r.unwrap_or_else(|e| Err(NfsError::Receive(std::io::Error::other(e)))),
    }
}

async fn serve_tcp<E: Exports>(
    listener: TcpListener,
    server: Arc<Server<E>>,
    limits: Limits,
) -> Result<(), NfsError> {
    let held = Arc::new(Semaphore::new(limits.max_connections));
    let mut refused = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(slot) = held.clone().try_acquire_owned() else {
                    refused += 1;
                    // Logged now and then: a flood must not flood the log.
                    if refused.is_power_of_two() {
                        tracing::warn!(
                            "nfs: {} connections held, closing the one from {peer} ({refused} closed so far)",
                            limits.max_connections
                        );
                    }
                    drop(stream);
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    connection(server, stream, peer, limits.idle).await;
                    drop(slot);
                });
            }
            Err(e) if is_fatal_socket_error(&e) => return Err(NfsError::Accept(e)),
            Err(e) => {
                tracing::warn!("nfs: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub(crate) fn is_fatal_socket_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP | libc::EFAULT)
    )
}

/// The header fields dispatch needs, or the reply to send instead.
fn head(record: &[u8], udp: bool) -> Result<(Head, usize), CallError> {
    let c = rpc::parse_call(record)?;
    let args_at = record.len() - c.args.len();
    Ok((
        Head {
            xid: c.xid,
            prog: c.prog,
            vers: c.vers,
            proc_: c.proc_,
            cred: c.cred,
            udp,
        },
        args_at,
    ))
}

/// Run one call, turning a panic into SYSTEM_ERR; the reply record.
async fn run_call<E: Exports>(
    server: &Server<E>,
    head: &Head,
    args: &[u8],
    peer: SocketAddr,
) -> Vec<u8> {
    let ip = peer.ip().to_canonical();
    AssertUnwindSafe(server.dispatch(head, args, ip))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!("nfs: call from {ip} (xid {}) panicked", head.xid);
            rpc::finish_record(rpc::reply_header(head.xid, Outcome::SystemErr))
        })
}

async fn connection<E: Exports>(
    server: Arc<Server<E>>,
    stream: TcpStream,
    peer: SocketAddr,
    idle: Duration,
) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    tracing::debug!("nfs: connection from {peer}");

    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(MAX_IN_FLIGHT);
    let _open = OPEN.enter();
    let writer = tokio::spawn(async move {
        while let Some(buf) = rx.recv().await {
            if wr.write_all(&buf).await.is_err() {
                break;
            }
            if rx.is_empty() && OPEN.get() <= POLL_CONNECTIONS {
                await_next_call(wr.as_ref());
            }
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut calls = JoinSet::new();
    let clean = loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        while calls.try_join_next().is_some() {}
        let Ok(read) = tokio::time::timeout(idle, rpc::read_record(&mut rd, MAX_RECORD)).await
        else {
            tracing::debug!("nfs: closing the connection from {peer}: idle for {idle:?}");
            break true;
        };
        let record = match read {
            Ok(Some(r)) => r,
            Ok(None) => break true,
            // Clients (libnfs, the kernel on reboot) often close with a
            // reset: that is a normal end, not worth a warning.
            Err(rpc::RecordError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                tracing::debug!("nfs: {peer} reset the connection");
                break true;
            }
            Err(e) => {
                tracing::warn!("nfs: dropping connection from {peer}: {e}");
                break false;
            }
        };
        let (head, args_at) = match head(&record, false) {
            Ok(h) => h,
            Err(CallError::Drop) => {
                tracing::warn!("nfs: dropping connection from {peer}: not an RPC call");
                break false;
            }
            Err(CallError::Reply(xid, outcome)) => {
                tracing::debug!("nfs: {peer} xid {xid}: {outcome:?}");
                let reply = rpc::finish_record(rpc::reply_header(xid, outcome));
                if tx.send(reply).await.is_err() {
                    break false;
                }
                continue;
            }
        };
        let server = server.clone();
        let tx = tx.clone();
        calls.spawn(async move {
            let _permit = permit;
            let reply = run_call(&server, &head, &record[args_at..], peer).await;
            let _ = tx.send(reply).await;
        });
    };
    drop(tx);
    if clean {
        while calls.join_next().await.is_some() {}
        let _ = writer.await;
    } else {
        calls.abort_all();
        writer.abort();
    }
    tracing::debug!("nfs: connection from {peer} closed");
}

/// TCP connections open in this process.
static OPEN: Live = Live::new();

/// With this many connections or fewer, a reply is followed by a short
/// poll for the next call ([`await_next_call`]); with more, the server is
/// busy enough that its threads do not sleep between calls, and a poll
/// would only take a thread from the others.
const POLL_CONNECTIONS: usize = 2;
/// How long [`await_next_call`] polls.
const POLL: Duration = Duration::from_micros(100);

/// Keep this thread awake for up to [`POLL`] after a reply, until the
/// client's next call is readable. A client that reads a tree or a file
/// call by call waits for each reply, and on a virtual machine much of
/// that wait is a sleeping thread being woken; a thread that is still
/// running when the call arrives answers it at once.
fn await_next_call(stream: &TcpStream) {
    let sock = socket2::SockRef::from(stream);
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    let until = std::time::Instant::now() + POLL;
    while std::time::Instant::now() < until {
        match sock.peek(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            // Data, the end of the stream or an error: the reader sees it.
            _ => return,
        }
    }
}

async fn serve_udp<E: Exports>(socket: UdpSocket, server: Arc<Server<E>>) -> Result<(), NfsError> {
    let socket = Arc::new(socket);
    let slots = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) if is_fatal_socket_error(&e) => return Err(NfsError::Receive(e)),
            // ICMP errors of earlier replies surface here; nothing to do.
            Err(e) => {
                tracing::debug!("nfs: udp receive: {e}");
                continue;
            }
        };
        let datagram = buf[..n].to_vec();
        let (head, args_at) = match head(&datagram, true) {
            Ok(h) => h,
            Err(CallError::Drop) => {
                tracing::debug!("nfs: {peer}: datagram is not an RPC call");
                continue;
            }
            Err(CallError::Reply(xid, outcome)) => {
                let reply = rpc::reply_header(xid, outcome);
                let _ = socket.send_to(&reply[4..], peer).await;
                continue;
            }
        };
        let (server, socket) = (server.clone(), socket.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let reply = run_call(&server, &head, &datagram[args_at..], peer).await;
            // The record mark is TCP framing; a datagram is the message.
            if let Err(e) = socket.send_to(&reply[4..], peer).await {
                tracing::debug!("nfs: udp reply to {peer}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn polling_for_the_next_call_leaves_its_bytes_to_the_reader() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        // Nothing sent: the poll gives up by itself.
        await_next_call(&server);
        client.write_all(b"call").await.unwrap();
        // Sent: the poll sees it (however long the loopback takes) and
        // consumes nothing.
        let mut seen = false;
        for _ in 0..1000 {
            await_next_call(&server);
            let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            if socket2::SockRef::from(&server).peek(&mut b).is_ok() {
                seen = true;
                break;
            }
        }
        assert!(seen);
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"call");
    }
}
