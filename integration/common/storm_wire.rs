//! The boot-firmware side of a simulated node's network traffic: DHCP as a
//! PXE ROM (or an initramfs' udhcpc) sends it, and a lock-step TFTP reader.
//!
//! All simulated nodes share one network namespace, so they share one DHCP
//! socket (UDP port 68 can be bound once per interface): [`DhcpPort`] owns
//! it and a thread that hands each reply to the node whose transaction id
//! it carries. Each node's TFTP socket is its own, bound to its leased
//! address, as a booting machine's is.

use anyhow::{anyhow, bail, Context, Result};
use dhcproto::v4::{
    Architecture, DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode,
};
use dhcproto::{Decodable, Encodable};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Run `f` on a short-lived thread inside network namespace `ns`: sockets
/// it makes stay in that namespace wherever they are used from.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<T> {
                // SAFETY: setns on a namespace fd we own; it changes only
                // this thread's network namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns {path}: {}", std::io::Error::last_os_error());
                }
                f()
            })
            .join()
            .map_err(|_| anyhow!("thread in {ns} panicked"))?
    })
}

/// One DHCP socket for every simulated node of a namespace.
pub struct DhcpPort {
    sock: Arc<UdpSocket>,
    waiting: Arc<Mutex<HashMap<u32, Sender<Message>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What a node's DHCP exchange got.
#[derive(Clone, Debug)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub server: Ipv4Addr,
    /// The boot file name (`file` field, or option 67).
    pub boot_file: String,
}

impl DhcpPort {
    /// Bind 0.0.0.0:68 on `iface` inside `ns` (as a boot ROM does, it
    /// works before any address is configured).
    pub fn open(ns: &str, iface: &str) -> Result<DhcpPort> {
        let iface = iface.to_string();
        let sock = in_netns(ns, move || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
            s.set_reuse_address(true)?;
            s.set_broadcast(true)?;
            s.bind_device(Some(iface.as_bytes()))
                .with_context(|| format!("SO_BINDTODEVICE {iface}"))?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())
                .context("binding UDP 0.0.0.0:68")?;
            Ok(UdpSocket::from(s))
        })?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let sock = Arc::new(sock);
        let waiting: Arc<Mutex<HashMap<u32, Sender<Message>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (sock, waiting, stop) = (sock.clone(), waiting.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, _)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    let Ok(m) = Message::from_bytes(&buf[..n]) else {
                        continue;
                    };
                    if m.opcode() != Opcode::BootReply {
                        continue;
                    }
                    if let Some(tx) = waiting.lock().get(&m.xid()) {
                        let _ = tx.send(m);
                    }
                }
            })
        };
        Ok(DhcpPort {
            sock,
            waiting,
            stop,
            thread: Some(thread),
        })
    }

    /// One exchange as the recorded client made it: DISCOVER + REQUEST
    /// (`discover`), or a lone REQUEST of `renew` (a second stage asking
    /// again for the address it was given). `client` is the vendor class
    /// (option 60) the recording names; a `PXEClient` one is sent as
    /// QEMU's iPXE ROM sends it (user class `iPXE`, architecture 0).
    pub fn exchange(
        &self,
        mac: [u8; 6],
        client: &str,
        renew: Option<&Lease>,
        deadline: Instant,
    ) -> Result<Lease> {
        let xid: u32 = rand::random();
        let (tx, rx) = channel();
        self.waiting.lock().insert(xid, tx);
        let r = self.exchange_on(xid, &rx, mac, client, renew, deadline);
        self.waiting.lock().remove(&xid);
        r
    }

    fn exchange_on(
        &self,
        xid: u32,
        rx: &Receiver<Message>,
        mac: [u8; 6],
        client: &str,
        renew: Option<&Lease>,
        deadline: Instant,
    ) -> Result<Lease> {
        let offer = match renew {
            Some(l) => l.clone(),
            None => {
                let m = self.ask(xid, rx, mac, client, MessageType::Discover, None, deadline)?;
                lease_of(&m)?
            }
        };
        let ack = self.ask(
            xid,
            rx,
            mac,
            client,
            MessageType::Request,
            Some(&offer),
            deadline,
        )?;
        if ack.opts().msg_type() != Some(MessageType::Ack) {
            bail!(
                "REQUEST of {} answered {:?}",
                offer.address,
                ack.opts().msg_type()
            );
        }
        let mut lease = lease_of(&ack)?;
        if lease.boot_file.is_empty() {
            lease.boot_file = offer.boot_file;
        }
        Ok(lease)
    }

    /// Send one message until a reply of the expected kind comes (resent
    /// every 2 s, as firmware does, until the deadline).
    #[allow(clippy::too_many_arguments)]
    fn ask(
        &self,
        xid: u32,
        rx: &Receiver<Message>,
        mac: [u8; 6],
        client: &str,
        kind: MessageType,
        offer: Option<&Lease>,
        deadline: Instant,
    ) -> Result<Message> {
        let packet = request(xid, mac, client, kind, offer)?;
        let want = if kind == MessageType::Discover {
            MessageType::Offer
        } else {
            MessageType::Ack
        };
        loop {
            if Instant::now() >= deadline {
                bail!("no DHCP answer to {kind:?} before the deadline");
            }
            self.sock
                .send_to(&packet, (Ipv4Addr::BROADCAST, 67))
                .context("sending a DHCP request")?;
            let resend = Instant::now() + Duration::from_secs(2);
            while let Some(left) = resend.min(deadline).checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(m) => {
                        let t = m.opts().msg_type();
                        if t == Some(want) || t == Some(MessageType::Nak) {
                            return Ok(m);
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

impl Drop for DhcpPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn request(
    xid: u32,
    mac: [u8; 6],
    client: &str,
    kind: MessageType,
    offer: Option<&Lease>,
) -> Result<Vec<u8>> {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_htype(HType::Eth)
        .set_xid(xid)
        .set_flags(Flags::default().set_broadcast())
        .set_chaddr(&mac);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ClassIdentifier(client.as_bytes().to_vec()));
    if client.starts_with("PXEClient") {
        o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
            0u16,
        )));
    }
    if let Some(l) = offer {
        o.insert(DhcpOption::RequestedIpAddress(l.address));
        o.insert(DhcpOption::ServerIdentifier(l.server));
    }
    m.to_vec().context("encoding a DHCP request")
}

fn lease_of(m: &Message) -> Result<Lease> {
    if m.opts().msg_type() == Some(MessageType::Nak) {
        bail!("DHCP NAK");
    }
    let server = match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => m.siaddr(),
    };
    let mut boot_file = m
        .fname()
        .map(|f| {
            String::from_utf8_lossy(f)
                .trim_end_matches('\0')
                .to_string()
        })
        .unwrap_or_default();
    if let Some(DhcpOption::BootfileName(f)) = m.opts().get(OptionCode::BootfileName) {
        boot_file = String::from_utf8_lossy(f)
            .trim_end_matches('\0')
            .to_string();
    }
    if m.yiaddr().is_unspecified() {
        bail!("DHCP reply without an address");
    }
    Ok(Lease {
        address: m.yiaddr(),
        server,
        boot_file,
    })
}

/// TFTP block size the simulated ROM asks for (an Ethernet frame's worth).
pub const BLKSIZE: usize = 1468;

/// How long a TFTP transfer may go without an answer before it fails.
pub const TFTP_SILENCE: Duration = Duration::from_secs(30);

/// Read `file` over TFTP from `server` with a socket bound to `src` in
/// `ns`: RRQ with `blksize 1468`, lock-step ACKs, the last packet resent
/// after 1, 2, 4, 8, 8, ... s of silence, as iPXE backs off (given up after
/// [`TFTP_SILENCE`] without an answer). `limit`: stop after that many
/// bytes with an error packet, as a ROM that gives up does. Returns the
/// bytes read.
///
/// Packets from another server port than the transfer's first answer get
/// RFC 1350's "unknown transfer ID" and are ignored, as iPXE ignores them:
/// a server that answers a late copy of the request with a second transfer
/// fails the node here as it would a real one.
pub fn tftp_get(
    ns: &str,
    src: Ipv4Addr,
    server: SocketAddr,
    file: &str,
    limit: Option<u64>,
    deadline: Instant,
) -> Result<Vec<u8>> {
    let sock = in_netns(ns, move || {
        UdpSocket::bind(SocketAddr::from((src, 0))).with_context(|| format!("binding UDP {src}"))
    })?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut rrq = vec![0, 1];
    for part in [file, "octet", "blksize", &BLKSIZE.to_string()] {
        rrq.extend_from_slice(part.as_bytes());
        rrq.push(0);
    }
    let mut out = Vec::new();
    let mut peer: Option<SocketAddr> = None;
    // The last packet we sent and where it went: resent on silence.
    let mut last: (Vec<u8>, SocketAddr) = (rrq, server);
    let mut expect: u16 = 1;
    // Packets from another server port than the transfer's.
    let mut foreign = 0u32;
    // Since when nothing came, the resend back-off, and at how much
    // silence the next resend goes.
    let mut silent_since = Instant::now();
    let mut backoff = Duration::from_secs(1);
    let mut resend_at = backoff;
    let mut buf = vec![0u8; BLKSIZE + 4];
    sock.send_to(&last.0, last.1)?;
    loop {
        if Instant::now() >= deadline {
            bail!("TFTP {file}: deadline passed after {} bytes", out.len());
        }
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                let quiet = silent_since.elapsed();
                if quiet >= TFTP_SILENCE {
                    bail!(
                        "TFTP {file}: no answer for {} s after {} bytes{}",
                        quiet.as_secs(),
                        out.len(),
                        if foreign > 0 {
                            " (packets came from another server port: the transfer was started again)"
                        } else {
                            ""
                        }
                    );
                }
                if quiet >= resend_at {
                    sock.send_to(&last.0, last.1)?;
                    backoff = (backoff * 2).min(Duration::from_secs(8));
                    resend_at = quiet + backoff;
                }
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("TFTP {file}")),
        };
        if n < 4 {
            continue;
        }
        let op = u16::from_be_bytes([buf[0], buf[1]]);
        if peer.is_some_and(|p| p != from) {
            // RFC 1350: another transfer id gets an error, and the
            // transfer goes on with the first one.
            foreign += 1;
            let mut err = vec![0, 5, 0, 5];
            err.extend_from_slice(b"unknown transfer ID\0");
            let _ = sock.send_to(&err, from);
            continue;
        }
        silent_since = Instant::now();
        backoff = Duration::from_secs(1);
        resend_at = backoff;
        match op {
            5 => bail!(
                "TFTP {file}: error {}: {}",
                u16::from_be_bytes([buf[2], buf[3]]),
                String::from_utf8_lossy(&buf[4..n]).trim_end_matches('\0')
            ),
            // OACK (again, if our ACK was lost): acknowledge it with block 0.
            6 if expect == 1 => {
                peer = Some(from);
                last = (vec![0, 4, 0, 0], from);
                sock.send_to(&last.0, from)?;
            }
            3 => {
                let block = u16::from_be_bytes([buf[2], buf[3]]);
                peer = Some(from);
                if block == expect {
                    out.extend_from_slice(&buf[4..n]);
                    expect = expect.wrapping_add(1);
                }
                let mut ack = vec![0, 4];
                ack.extend_from_slice(&block.to_be_bytes());
                if limit.is_some_and(|l| out.len() as u64 >= l) && n - 4 == BLKSIZE {
                    let mut err = vec![0, 5, 0, 0];
                    err.extend_from_slice(b"enough\0");
                    sock.send_to(&err, from)?;
                    return Ok(out);
                }
                sock.send_to(&ack, from)?;
                last = (ack, from);
                if block == expect.wrapping_sub(1) && n - 4 < BLKSIZE {
                    return Ok(out);
                }
            }
            _ => {}
        }
    }
}

/// Whether something listens on UDP `addr:port` (binding it fails).
pub fn udp_port_taken(addr: Ipv4Addr, port: u16) -> bool {
    UdpSocket::bind((addr, port)).is_err()
}
