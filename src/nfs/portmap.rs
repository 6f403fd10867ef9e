//! The portmapper (RFC 1833: program 100000, version 2 "portmap" and
//! versions 3 and 4 "rpcbind") for the programs lazyboot serves, on port
//! 111 over UDP and TCP.
//!
//! Clients that are not told every port find MOUNT (and NFS) through it:
//! klibc `nfsmount` in Debian's and Ubuntu's initramfs rejects
//! `mountport=` and always asks, `mount.nfs` asks when `mountport=` is
//! missing, and `rpcinfo` and `showmount` ask. The table is fixed at start:
//! the portmapper itself, MOUNT v3 and NFS v3 on the NFS port, each over
//! TCP and UDP. SET and UNSET from the network are refused (they answer
//! FALSE): nothing else registers here.
//!
//! Answered: NULL, SET/UNSET (refused), GETPORT and DUMP (v2); NULL,
//! SET/UNSET (refused), GETADDR, DUMP, GETTIME (v3, v4) and GETVERSADDR
//! (v4). The rest (CALLIT/BCAST, INDIRECT, address conversions, GETSTAT,
//! GETADDRLIST) get PROC_UNAVAIL.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::rpc::{self, CallError, Outcome};
use super::server::{MOUNT_PROGRAM, NFS_PROGRAM};
use super::transport::is_fatal_socket_error;
use super::xdr::XdrIn;

pub(crate) const PORTMAP_PROGRAM: u32 = 100_000;
/// The well-known portmapper port.
pub(crate) const PORTMAP_PORT: u16 = 111;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
/// RFC 1833: netids and universal addresses are short strings.
const MAX_STRING: usize = 1024;
/// Requests are a few dozen bytes; a record larger than this is not one.
const MAX_RECORD: usize = 4096;
/// TCP connections held open at once, and how long one may sit idle.
const MAX_CONNECTIONS: usize = 64;
const IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub(crate) enum PortmapError {
    #[error(
        "portmapper: port {port} on {addr} is already in use (is rpcbind running?). Either \
         set `[server] portmapper = \"register\"` to register lazyboot's MOUNT and NFS with \
         that rpcbind, or stop it (`systemctl disable --now rpcbind.socket rpcbind.service`) \
         so lazyboot can answer on port 111 itself. (`portmapper = false` runs without one: \
         then clients that need a portmapper, such as Debian's and Ubuntu's initramfs-tools, \
         cannot find MOUNT.)"
    )]
    InUse { addr: Ipv4Addr, port: u16 },
    #[error("portmapper: binding {addr}:{port}: {source}")]
    Bind {
        addr: Ipv4Addr,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("portmapper: {0}")]
    Io(#[source] std::io::Error),
    #[error("portmapper = \"register\": {0}")]
    Refused(String),
}

/// One registered service: what DUMP lists and GETPORT/GETADDR find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub(crate) prog: u32,
    pub(crate) vers: u32,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub(crate) proto: u32,
    pub(crate) port: u16,
}

impl Mapping {
    fn netid(&self) -> &'static str {
        if self.proto == IPPROTO_TCP {
            "tcp"
        } else {
            "udp"
        }
    }
}

/// The fixed table of one lazyboot server.
#[derive(Clone, Debug)]
pub(crate) struct Portmap {
    addr: Ipv4Addr,
    mappings: Vec<Mapping>,
}

impl Portmap {
    /// The portmapper on `port` (111 in production) and MOUNT + NFS v3 on
    /// `nfs_port`, all at `addr`, over TCP and UDP.
    pub(crate) fn new(addr: Ipv4Addr, port: u16, nfs_port: u16) -> Portmap {
        let mut mappings = Vec::new();
        for (prog, vers, port) in [
            (PORTMAP_PROGRAM, 4, port),
            (PORTMAP_PROGRAM, 3, port),
            (PORTMAP_PROGRAM, 2, port),
            (MOUNT_PROGRAM, 3, nfs_port),
            (NFS_PROGRAM, 3, nfs_port),
        ] {
            for proto in [IPPROTO_TCP, IPPROTO_UDP] {
                mappings.push(Mapping {
                    prog,
                    vers,
                    proto,
                    port,
                });
            }
        }
        Portmap { addr, mappings }
    }

    /// The port of (prog, vers) over `proto`: the exact version if there,
    /// else any version of the program (as rpcbind answers), else 0.
    fn port(&self, prog: u32, vers: u32, proto: u32, exact: bool) -> u16 {
        let same = |m: &&Mapping| m.prog == prog && m.proto == proto;
        let found = self.mappings.iter().filter(same).find(|m| m.vers == vers);
        let found = match found {
            Some(m) => Some(m),
            None if !exact => self.mappings.iter().find(same),
            None => None,
        };
        found.map_or(0, |m| m.port)
    }

    /// RFC 1833's universal address "h1.h2.h3.h4.p1.p2".
    fn uaddr(&self, port: u16) -> String {
        let [a, b, c, d] = self.addr.octets();
        format!("{a}.{b}.{c}.{d}.{}.{}", port >> 8, port & 0xff)
    }

    /// Answer one call (its reply record, record mark included), or `None`
    /// for a message that is not a call.
    pub(crate) fn call(&self, record: &[u8], udp: bool, peer: SocketAddr) -> Option<Vec<u8>> {
        let c = match rpc::parse_call(record) {
            Ok(c) => c,
            Err(CallError::Drop) => return None,
            Err(CallError::Reply(xid, outcome)) => {
                return Some(rpc::finish_record(rpc::reply_header(xid, outcome)))
            }
        };
        let mut out = rpc::reply_header(c.xid, Outcome::Success);
        let transport = if udp { IPPROTO_UDP } else { IPPROTO_TCP };
        let result = match (c.prog, c.vers, c.proc_) {
            (PORTMAP_PROGRAM, 2..=4, 0) => Ok(()),
            // SET and UNSET in every version: only our own programs are listed.
            (PORTMAP_PROGRAM, 2..=4, 1 | 2) => {
                tracing::info!("portmapper: refused a registration change from {peer}");
                put_u32(&mut out, 0);
                Ok(())
            }
            (PORTMAP_PROGRAM, 2, _) => self.v2(c.proc_, c.args, &mut out, peer),
            (PORTMAP_PROGRAM, 3 | 4, _) => {
                self.v3(c.vers, c.proc_, c.args, transport, &mut out, peer)
            }
            (PORTMAP_PROGRAM, _, _) => Err(Outcome::ProgMismatch { low: 2, high: 4 }),
            _ => Err(Outcome::ProgUnavail),
        };
        Some(match result {
            Ok(()) => rpc::finish_record(out),
            Err(outcome) => rpc::finish_record(rpc::reply_header(c.xid, outcome)),
        })
    }

    fn v2(
        &self,
        proc_: u32,
        args: &[u8],
        out: &mut Vec<u8>,
        peer: SocketAddr,
    ) -> Result<(), Outcome> {
        let mut r = XdrIn::new(args);
        let g = |_| Outcome::GarbageArgs;
        match proc_ {
            3 => {
                let (prog, vers, proto) = (
                    r.u32().map_err(g)?,
                    r.u32().map_err(g)?,
                    r.u32().map_err(g)?,
                );
                let _port = r.u32().map_err(g)?;
                let port = self.port(prog, vers, proto, false);
                tracing::debug!("portmapper: {peer} GETPORT {prog} v{vers} proto {proto}: {port}");
                put_u32(out, port as u32);
            }
            4 => {
                for m in &self.mappings {
                    put_u32(out, 1);
                    for v in [m.prog, m.vers, m.proto, m.port as u32] {
                        put_u32(out, v);
                    }
                }
                put_u32(out, 0);
            }
            _ => return Err(Outcome::ProcUnavail),
        }
        Ok(())
    }

    fn v3(
        &self,
        vers: u32,
        proc_: u32,
        args: &[u8],
        transport: u32,
        out: &mut Vec<u8>,
        peer: SocketAddr,
    ) -> Result<(), Outcome> {
        let mut r = XdrIn::new(args);
        let g = |_| Outcome::GarbageArgs;
        match proc_ {
            // GETADDR, and v4's GETVERSADDR (the version must match).
            3 | 9 if proc_ == 3 || vers == 4 => {
                let (prog, v) = (r.u32().map_err(g)?, r.u32().map_err(g)?);
                let netid = r.opaque(MAX_STRING).map_err(g)?;
                let (_addr, _owner) = (
                    r.opaque(MAX_STRING).map_err(g)?,
                    r.opaque(MAX_STRING).map_err(g)?,
                );
                let proto = match netid {
                    b"tcp" => Some(IPPROTO_TCP),
                    b"udp" => Some(IPPROTO_UDP),
                    // An empty netid means the transport of this request.
                    b"" => Some(transport),
                    _ => None,
                };
                let port = proto.map_or(0, |p| self.port(prog, v, p, proc_ == 9));
                let uaddr = if port == 0 {
                    String::new()
                } else {
                    self.uaddr(port)
                };
                tracing::debug!(
                    "portmapper: {peer} GETADDR {prog} v{v} {}: {uaddr:?}",
                    String::from_utf8_lossy(netid)
                );
                put_string(out, &uaddr);
            }
            4 => {
                for m in &self.mappings {
                    put_u32(out, 1);
                    put_u32(out, m.prog);
                    put_u32(out, m.vers);
                    put_string(out, m.netid());
                    put_string(out, &self.uaddr(m.port));
                    put_string(out, "superuser");
                }
                put_u32(out, 0);
            }
            6 => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                put_u32(out, now as u32);
            }
            _ => return Err(Outcome::ProcUnavail),
        }
        Ok(())
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len() + (4 - s.len() % 4) % 4, 0);
}

/// Our programs registered with the rpcbind of this host (portmapper
/// "register" mode); unregistered when dropped.
pub(crate) struct Registration {
    mappings: Vec<Mapping>,
}

impl Registration {
    /// Register MOUNT and NFS v3 on `nfs_port` (TCP and UDP) with the
    /// portmapper at 127.0.0.1:111. rpcbind takes SET only from a loopback
    /// address and a privileged port, so this needs root. A registration
    /// left by an earlier run is replaced.
    pub(crate) fn new(nfs_port: u16) -> Result<Registration, PortmapError> {
        let table = Portmap::new(Ipv4Addr::LOCALHOST, PORTMAP_PORT, nfs_port);
        let mappings: Vec<Mapping> = table
            .mappings
            .into_iter()
            .filter(|m| m.prog != PORTMAP_PROGRAM)
            .collect();
        for m in &mappings {
            // UNSET drops every protocol of (prog, vers): done once per pair
            // is enough, twice is harmless.
            pmap_call(2, m)?;
        }
        for m in &mappings {
            if !pmap_call(1, m)? {
                return Err(PortmapError::Refused(format!(
                    "the host's rpcbind refused to register program {} version {} ({}) on port {}",
                    m.prog,
                    m.vers,
                    m.netid(),
                    m.port
                )));
            }
        }
        tracing::info!(
            "portmapper: MOUNT and NFS v3 on port {nfs_port} registered with the host's rpcbind"
        );
        Ok(Registration { mappings })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        for m in &self.mappings {
            if let Err(e) = pmap_call(2, m) {
                tracing::warn!("portmapper: unregistering from the host's rpcbind: {e}");
                return;
            }
        }
    }
}

/// A portmap v2 SET (1) or UNSET (2) of `m` to 127.0.0.1:111 from a
/// privileged port; its boolean answer.
fn pmap_call(proc_: u32, m: &Mapping) -> Result<bool, PortmapError> {
    let sock = privileged_udp().map_err(PortmapError::Io)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(PortmapError::Io)?;
    let xid: u32 = rand::random();
    let mut msg = Vec::new();
    // xid, CALL, RPC 2, program, version, procedure, AUTH_NONE twice.
    for v in [xid, 0, 2, PORTMAP_PROGRAM, 2, proc_, 0, 0, 0, 0] {
        put_u32(&mut msg, v);
    }
    for v in [m.prog, m.vers, m.proto, m.port as u32] {
        put_u32(&mut msg, v);
    }
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, PORTMAP_PORT));
    let mut buf = [0u8; 512];
    for _ in 0..3 {
        sock.send_to(&msg, to).map_err(PortmapError::Io)?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(PortmapError::Io(e)),
        };
        return parse_bool_reply(&buf[..n], xid);
    }
    Err(PortmapError::Refused(
        "no answer from a portmapper on 127.0.0.1:111 (is rpcbind running?)".into(),
    ))
}

/// The boolean result of an accepted reply to `xid`.
fn parse_bool_reply(reply: &[u8], xid: u32) -> Result<bool, PortmapError> {
    let mut r = XdrIn::new(reply);
    let mut next = || r.u32().map_err(|_| bad_reply());
    if next()? != xid || next()? != 1 {
        return Err(bad_reply());
    }
    if next()? != 0 {
        return Err(PortmapError::Refused(
            "the host's rpcbind denied the call (MSG_DENIED)".into(),
        ));
    }
    let _verf_flavor = next()?;
    let verf_len = next()?;
    for _ in 0..verf_len.div_ceil(4) {
        next()?;
    }
    match next()? {
        0 => Ok(next()? == 1),
        stat => Err(PortmapError::Refused(format!(
            "the host's rpcbind answered accept_stat {stat}"
        ))),
    }
}

fn bad_reply() -> PortmapError {
    PortmapError::Refused("the host's rpcbind sent a reply that does not decode".into())
}

/// A UDP socket on 127.0.0.1 with a port below 1024.
fn privileged_udp() -> std::io::Result<std::net::UdpSocket> {
    let mut last = None;
    for port in (600..1024).rev() {
        match std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free privileged port")))
}

/// Bind the portmapper's TCP and UDP sockets at `addr:port`; a port already
/// taken (a system rpcbind) is [`PortmapError::InUse`], which explains the
/// choices.
pub(crate) async fn bind(
    addr: Ipv4Addr,
    port: u16,
) -> Result<(TcpListener, UdpSocket), PortmapError> {
    let err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            PortmapError::InUse { addr, port }
        } else {
            PortmapError::Bind { addr, port, source }
        }
    };
    let tcp = TcpListener::bind((addr, port)).await.map_err(err)?;
    let udp = UdpSocket::bind((addr, port)).await.map_err(err)?;
    Ok((tcp, udp))
}

/// Answer on both sockets until one fails for good.
pub(crate) async fn serve(
    portmap: Portmap,
    tcp: TcpListener,
    udp: UdpSocket,
) -> Result<(), PortmapError> {
    let portmap = Arc::new(portmap);
    tokio::select! {
        r = serve_udp(portmap.clone(), udp) => r,
        r = serve_tcp(portmap, tcp) => r,
    }
}

async fn serve_udp(portmap: Arc<Portmap>, udp: UdpSocket) -> Result<(), PortmapError> {
    let mut buf = vec![0u8; MAX_RECORD];
    loop {
        let (n, peer) = match udp.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) if is_fatal_socket_error(&e) => return Err(PortmapError::Io(e)),
            Err(_) => continue,
        };
        if let Some(reply) = portmap.call(&buf[..n], true, peer) {
            let _ = udp.send_to(&reply[4..], peer).await;
        }
    }
}

async fn serve_tcp(portmap: Arc<Portmap>, tcp: TcpListener) -> Result<(), PortmapError> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        match tcp.accept().await {
            Ok((stream, peer)) => {
                let portmap = portmap.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    connection(&portmap, stream, peer).await;
                });
            }
            Err(e) if is_fatal_socket_error(&e) => return Err(PortmapError::Io(e)),
            Err(e) => {
                tracing::warn!("portmapper: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Calls of one connection, answered in order; closed when the client is
/// idle for [`IDLE`] or breaks the framing.
async fn connection(portmap: &Portmap, mut stream: TcpStream, peer: SocketAddr) {
    loop {
        let record =
            match tokio::time::timeout(IDLE, rpc::read_record(&mut stream, MAX_RECORD)).await {
                Ok(Ok(Some(r))) => r,
                Ok(Ok(None)) | Err(_) => return,
                Ok(Err(e)) => {
                    tracing::debug!("portmapper: dropping connection from {peer}: {e}");
                    return;
                }
            };
        let Some(reply) = portmap.call(&record, false, peer) else {
            return;
        };
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nfs3_server::nfs3_types::rpc::{call_body, msg_body, opaque_auth, rpc_msg};
    use nfs3_server::nfs3_types::xdr_codec::Pack;

    fn call(vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
        let msg = rpc_msg {
            xid: 42,
            body: msg_body::CALL(call_body {
                rpcvers: 2,
                prog: PORTMAP_PROGRAM,
                vers,
                proc: proc_,
                cred: opaque_auth::default(),
                verf: opaque_auth::default(),
            }),
        };
        let mut out = Vec::new();
        msg.pack(&mut out).unwrap();
        out.extend_from_slice(args);
        out
    }

    /// The reply body after the 24-byte accepted-reply header (mark
    /// included: 4 + xid, REPLY, MSG_ACCEPTED, verf flavor, verf len,
    /// accept_stat).
    fn body(reply: &[u8]) -> (u32, Vec<u8>) {
        let stat = u32::from_be_bytes(reply[24..28].try_into().unwrap());
        (stat, reply[28..].to_vec())
    }

    fn pm() -> Portmap {
        Portmap::new(Ipv4Addr::new(10, 0, 0, 1), 111, 2049)
    }

    fn peer() -> SocketAddr {
        "10.0.0.9:700".parse().unwrap()
    }

    fn words(b: &[u8]) -> Vec<u32> {
        b.chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn xdr_string(s: &str) -> Vec<u8> {
        let mut v = Vec::new();
        put_string(&mut v, s);
        v
    }

    #[test]
    fn getport_finds_mount_and_nfs_on_both_transports() {
        let pm = pm();
        for (prog, proto, want) in [
            (MOUNT_PROGRAM, IPPROTO_UDP, 2049),
            (MOUNT_PROGRAM, IPPROTO_TCP, 2049),
            (NFS_PROGRAM, IPPROTO_UDP, 2049),
            (PORTMAP_PROGRAM, IPPROTO_TCP, 111),
            (100_021, IPPROTO_UDP, 0), // NLM: not served
        ] {
            let args: Vec<u8> = [prog, 3, proto, 0]
                .iter()
                .flat_map(|v| v.to_be_bytes())
                .collect();
            let reply = pm
                .call(&rpc::frame(&call(2, 3, &args))[4..], true, peer())
                .unwrap();
            let (stat, b) = body(&reply);
            assert_eq!(stat, 0);
            assert_eq!(words(&b), vec![want], "prog {prog} proto {proto}");
        }
        // MOUNT v1 is not served, but v3 is: like rpcbind, GETPORT answers
        // the program's port.
        let args: Vec<u8> = [MOUNT_PROGRAM, 1, IPPROTO_UDP, 0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let (_, b) = body(&pm.call(&call(2, 3, &args), true, peer()).unwrap());
        assert_eq!(words(&b), vec![2049]);
    }

    #[test]
    fn getaddr_and_getversaddr() {
        let pm = pm();
        // An rpcb: program, version, netid, address and owner (both unused).
        let rpcb = |prog: u32, vers: u32, netid: &str| {
            let mut args: Vec<u8> = [prog, vers].iter().flat_map(|v| v.to_be_bytes()).collect();
            for s in [netid, "", ""] {
                args.extend(xdr_string(s));
            }
            args
        };
        let (stat, b) = body(
            &pm.call(&call(4, 3, &rpcb(MOUNT_PROGRAM, 3, "tcp")), false, peer())
                .unwrap(),
        );
        assert_eq!(stat, 0);
        assert_eq!(b, xdr_string("10.0.0.1.8.1"));
        // v4 GETVERSADDR wants the exact version.
        let (_, b) = body(
            &pm.call(&call(4, 9, &rpcb(MOUNT_PROGRAM, 1, "udp")), true, peer())
                .unwrap(),
        );
        assert_eq!(b, xdr_string(""));
        // An unknown netid finds nothing.
        let (_, b) = body(
            &pm.call(&call(3, 3, &rpcb(NFS_PROGRAM, 3, "tcp6")), true, peer())
                .unwrap(),
        );
        assert_eq!(b, xdr_string(""));
    }

    #[test]
    fn dump_lists_every_mapping_and_set_is_refused() {
        let pm = pm();
        let (_, b) = body(&pm.call(&call(2, 4, &[]), true, peer()).unwrap());
        let w = words(&b);
        // 10 entries of (follow, prog, vers, proto, port) and the end.
        assert_eq!(w.len(), 10 * 5 + 1);
        assert!(w
            .chunks(5)
            .take(10)
            .any(|e| e == [1, MOUNT_PROGRAM, 3, IPPROTO_UDP, 2049]));
        assert_eq!(*w.last().unwrap(), 0);
        for vers in [2, 3, 4] {
            let args = vec![0u8; 40];
            let (stat, b) = body(&pm.call(&call(vers, 1, &args), true, peer()).unwrap());
            assert_eq!((stat, words(&b)), (0, vec![0]), "SET v{vers}");
            let (_, b) = body(&pm.call(&call(vers, 2, &args), true, peer()).unwrap());
            assert_eq!(words(&b), vec![0], "UNSET v{vers}");
        }
        // The table is unchanged.
        let (_, again) = body(&pm.call(&call(2, 4, &[]), true, peer()).unwrap());
        assert_eq!(again, b_dump(&pm));
    }

    fn b_dump(pm: &Portmap) -> Vec<u8> {
        body(&pm.call(&call(2, 4, &[]), true, peer()).unwrap()).1
    }

    #[test]
    fn replies_to_our_own_registrations_decode() {
        let mut ok = Vec::new();
        // xid, REPLY, MSG_ACCEPTED, verifier (AUTH_NONE, 4 bytes), SUCCESS, TRUE.
        for v in [7u32, 1, 0, 0, 4, 0xdead, 0, 1] {
            put_u32(&mut ok, v);
        }
        assert!(parse_bool_reply(&ok, 7).unwrap());
        assert!(parse_bool_reply(&ok, 8).is_err(), "another xid");
        let mut denied = Vec::new();
        for v in [7u32, 1, 1, 1] {
            put_u32(&mut denied, v);
        }
        let e = parse_bool_reply(&denied, 7).unwrap_err().to_string();
        assert!(e.contains("denied"), "{e}");
        assert!(parse_bool_reply(&ok[..10], 7).is_err(), "truncated");
    }

    #[test]
    fn wrong_versions_procedures_and_garbage() {
        let pm = pm();
        // PROG_MISMATCH (2) with low 2, high 4.
        let (stat, b) = body(&pm.call(&call(5, 0, &[]), true, peer()).unwrap());
        assert_eq!((stat, words(&b)), (2, vec![2, 4]));
        // CALLIT: PROC_UNAVAIL (3).
        let (stat, _) = body(&pm.call(&call(2, 5, &[]), true, peer()).unwrap());
        assert_eq!(stat, 3);
        // Truncated GETPORT arguments: GARBAGE_ARGS (4).
        let (stat, _) = body(&pm.call(&call(2, 3, &[0, 0, 0]), true, peer()).unwrap());
        assert_eq!(stat, 4);
        // Not a call at all: no answer.
        assert!(pm.call(&[0, 0, 0, 1, 0, 0, 0, 1], true, peer()).is_none());
    }
}
