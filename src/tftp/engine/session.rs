//! One read transfer, on a UDP socket of its own: an ephemeral port is the
//! transfer's TID (RFC 1350), and the socket is connected to the client's
//! address and port, so the kernel hands it only that client's packets.
//!
//! The transfer: open the file (the server's lookup), negotiate options,
//! send the OACK and wait for ACK 0 if any option was granted, then send
//! windows of DATA until the last block is acknowledged. It ends at once
//! on an ERROR from the client, on an ICMP "port unreachable" (the client
//! has gone), or after [`Settings::max_retries`] retransmissions without an
//! answer, with the timeout doubling from the client's `timeout` option (or
//! [`Settings::retransmit_timeout`]) up to [`Settings::max_retransmit_timeout`].

use super::options::{negotiate, Negotiated};
use super::packet::{self, code, parse, Packet};
use super::window::{Ack, Window};
use super::{Hearing, Open, Settings};
use crate::metrics::Live;
use crate::tftp::reader::TftpReader;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::{sleep_until, Instant};

/// How a transfer ended (for the log and the tests).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Every block acknowledged.
    Complete,
    /// The request was answered with an ERROR.
    Refused,
    /// The client sent an ERROR.
    ClientError,
    /// The client's port is closed (ICMP port unreachable).
    ClientGone,
    /// No answer after every retransmission.
    GaveUp,
    /// The file could not be read; the client got an ERROR.
    ReadFailed,
}

/// What a session knows of its request.
pub(crate) struct Request {
    pub(crate) client: SocketAddr,
    pub(crate) filename: String,
    pub(crate) options: Vec<(String, String)>,
}

/// Run one transfer on `socket` (bound, connected to the client). `heard`
/// notes what the client sends to the transfer's port, so that the
/// listener can tell a late copy of this request from a new one.
pub(crate) async fn run<O: Open>(
    socket: &UdpSocket,
    opener: &O,
    settings: &Settings,
    req: Request,
    heard: &Hearing,
) -> End {
    let client = req.client;
    let mut reader = match opener.open(client, &req.filename).await {
        Ok(r) => r,
        Err(refusal) => {
            crate::metrics::METRICS.tftp_errors.inc();
            let _ = socket.send(&refusal.bytes()).await;
            return End::Refused;
        }
    };
    let options: Vec<(&str, &str)> = req
        .options
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let n = negotiate(&options, reader.size(), settings.caps);
    let mut t = Transfer {
        socket,
        settings,
        client,
        heard,
        timeout: n.timeout.unwrap_or(settings.retransmit_timeout),
        base: n.timeout.unwrap_or(settings.retransmit_timeout),
        retries: 0,
        out: Vec::new(),
        recv: [0; 1024],
    };
    let end = {
        let _running = RUNNING.enter();
        t.transfer(&mut reader, &n).await
    };
    match end {
        End::GaveUp => tracing::info!(
            "TFTP: {client}: {}: no answer after {} retransmissions, transfer abandoned",
            req.filename,
            settings.max_retries
        ),
        End::ClientGone => tracing::debug!(
            "TFTP: {client}: {}: the client's port is closed, transfer ended",
            req.filename
        ),
        _ => {}
    }
    end
}

struct Transfer<'a> {
    socket: &'a UdpSocket,
    settings: &'a Settings,
    client: SocketAddr,
    heard: &'a Hearing,
    /// The current retransmission timeout, and where it starts again after
    /// progress.
    timeout: Duration,
    base: Duration,
    /// Retransmissions since the last progress.
    retries: u32,
    /// The datagram being sent (one buffer for the transfer).
    out: Vec<u8>,
    recv: [u8; 1024],
}

/// Transfers running in this process.
static RUNNING: Live = Live::new();

/// How long a transfer that runs alone polls for the client's answer
/// before it sleeps on the socket. In lock-step every block waits one round
/// trip, and on a loaded or virtual machine most of that is the time a
/// sleeping thread takes to wake up; a client on the same link answers
/// within this. Several transfers never poll: they share one thread, and
/// one polling would hold up the others.
const POLL: Duration = Duration::from_micros(200);

/// What came from the client while waiting.
enum Heard {
    Ack(u16),
    Error,
    Gone,
    Timeout,
}

impl Transfer<'_> {
    async fn transfer(&mut self, reader: &mut TftpReader, n: &Negotiated) -> End {
        let mut window = Window::new(reader.size(), n.block_size, n.window_size);
        reader.first_read(n.block_size as u64 * n.window_size as u64);
        if !n.oack.is_empty() {
            let options: Vec<(&str, &str)> = n.oack.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let oack = packet::encode(&Packet::Oack(options));
            if let Err(end) = self.send(&oack).await {
                return end;
            }
            let mut deadline = Instant::now() + self.timeout;
            loop {
                match self.wait(deadline).await {
                    Heard::Ack(0) => break,
                    Heard::Ack(_) => {}
                    Heard::Error => return End::ClientError,
                    Heard::Gone => return End::ClientGone,
                    Heard::Timeout => {
                        if !self.back_off() {
                            return End::GaveUp;
                        }
                        if let Err(end) = self.send(&oack).await {
                            return end;
                        }
                        deadline = Instant::now() + self.timeout;
                    }
                }
            }
            self.progress();
        }
        if let Err(end) = self.fill_and_send(reader, &mut window).await {
            return end;
        }
        let mut deadline = Instant::now() + self.timeout;
        loop {
            match self.wait(deadline).await {
                Heard::Ack(block) => match window.on_ack(block) {
                    Ack::Advanced => {
                        if window.complete() {
                            return End::Complete;
                        }
                        self.progress();
                        reader.read_ahead();
                        if let Err(end) = self.fill_and_send(reader, &mut window).await {
                            return end;
                        }
                        deadline = Instant::now() + self.timeout;
                    }
                    Ack::Duplicate | Ack::Stale => {}
                },
                Heard::Error => return End::ClientError,
                Heard::Gone => return End::ClientGone,
                Heard::Timeout => {
                    if !self.back_off() {
                        return End::GaveUp;
                    }
                    if let Err(end) = self.send_window(&window).await {
                        return end;
                    }
                    deadline = Instant::now() + self.timeout;
                }
            }
        }
    }

    /// Read blocks into the window while it has room, then send it all:
    /// blocks still unacknowledged from before (the client lost them) and
    /// the new ones.
    async fn fill_and_send(
        &mut self,
        reader: &mut TftpReader,
        window: &mut Window,
    ) -> Result<(), End> {
        while window.wants_block() {
            match reader.next_block(window.block_size()).await {
                Ok(block) => window.push(block),
                Err(_) => {
                    // The reader logged why.
                    crate::metrics::METRICS.tftp_errors.inc();
                    let msg = "lazyboot: reading the file failed";
                    let _ = self.socket.send(&packet::error(code::UNDEFINED, msg)).await;
                    return Err(End::ReadFailed);
                }
            }
        }
        self.send_window(window).await
    }

    async fn send_window(&mut self, window: &Window) -> Result<(), End> {
        for (block, data) in window.blocks() {
            packet::encode_data_into(&mut self.out, block, data);
            send(self.socket, &self.out).await?;
            crate::metrics::METRICS.tftp_bytes.add(data.len() as u64);
        }
        Ok(())
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), End> {
        send(self.socket, bytes).await
    }

    /// The client made progress: retransmissions start over.
    fn progress(&mut self) {
        self.retries = 0;
        self.timeout = self.base;
    }

    /// A timeout passed without progress: `false` if that was the last
    /// retransmission allowed, else the timeout doubles (up to the cap).
    fn back_off(&mut self) -> bool {
        if self.retries >= self.settings.max_retries {
            return false;
        }
        self.retries += 1;
        let cap = self.settings.max_retransmit_timeout.max(self.base);
        self.timeout = (self.timeout * 2).min(cap);
        true
    }

    /// The next ACK, ERROR or hang-up from the client, or the deadline.
    /// Anything else (a DATA, a request to this port, garbage) is ignored.
    async fn wait(&mut self, deadline: Instant) -> Heard {
        let sleep = sleep_until(deadline);
        tokio::pin!(sleep);
        let mut polled = RUNNING.get() > 1;
        loop {
            let early = if polled { None } else { self.poll() };
            polled = true;
            let got = match early {
                Some(r) => r,
                None => tokio::select! {
                    biased;
                    r = self.socket.recv(&mut self.recv) => r,
                    _ = &mut sleep => return Heard::Timeout,
                },
            };
            let len = match got {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Heard::Gone,
                Err(e) => {
                    tracing::debug!("TFTP: {}: receiving: {e}", self.client);
                    continue;
                }
            };
            let packet = parse(&self.recv[..len]);
            self.heard.heard(matches!(packet, Ok(Packet::Error { .. })));
            match packet {
                Ok(Packet::Ack(block)) => return Heard::Ack(block),
                Ok(Packet::Error { code, message }) => {
                    tracing::debug!(
                        "TFTP: {}: the client ended the transfer: error {code} {message:?}",
                        self.client
                    );
                    return Heard::Error;
                }
                _ => {}
            }
        }
    }
}

impl Transfer<'_> {
    /// A datagram that arrives within [`POLL`], without sleeping: the
    /// thread yields between tries, so a client on the same core runs.
    /// It reads the socket itself: tokio's `try_recv` answers from the
    /// readiness its reactor last saw, which nothing updates while this
    /// thread polls.
    fn poll(&mut self) -> Option<io::Result<usize>> {
        use std::io::Read;
        let sock = socket2::SockRef::from(self.socket);
        let until = std::time::Instant::now() + POLL;
        loop {
            match (&*sock).read(&mut self.recv) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Some(r),
            }
            if std::time::Instant::now() >= until {
                return None;
            }
            std::thread::yield_now();
        }
    }
}

/// Send one datagram to the connected client. A closed port ends the
/// transfer; any other failure is a lost packet that retransmission covers.
async fn send(socket: &UdpSocket, bytes: &[u8]) -> Result<(), End> {
    match socket.send(bytes).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(End::ClientGone),
        Err(e) => {
            tracing::debug!("TFTP: sending: {e}");
            Ok(())
        }
    }
}

/// Whether the client's end of this transfer waits unread on `socket`: an
/// ERROR packet, or an ICMP error (its port is closed).
pub(crate) fn has_pending_end(socket: &UdpSocket) -> bool {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2];
    match socket2::SockRef::from(socket).peek(&mut buf) {
        Ok(2) => {
            // SAFETY: the peek filled both bytes.
            let opcode = unsafe { [buf[0].assume_init(), buf[1].assume_init()] };
            u16::from_be_bytes(opcode) == packet::ERROR
        }
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}
