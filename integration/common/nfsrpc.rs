//! A raw NFSv3 + MOUNT v3 client over TCP (one record per call, AUTH_SYS),
//! for what libnfs' tools cannot show: attributes in full, file ids, file
//! handles kept across server restarts, forged handles, RPC status codes.
//!
//! Transport and decoding failures panic (this is test code); NFS and MOUNT
//! statuses come back as `Err(status)`.
//!
//! [`Client::connect_in_netns`] opens the connection from inside a network
//! namespace (a `NetLab`'s client side) from a chosen source address, so a
//! test in the host namespace can speak as any node address of the lab.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::io::AsRawFd;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nfs3_server::nfs3_types::mount::{dirpath, mountres3};
use nfs3_server::nfs3_types::nfs3::*;
use nfs3_server::nfs3_types::rpc::{
    auth_unix, call_body, msg_body, opaque_auth, reply_body, rpc_msg,
};
use nfs3_server::nfs3_types::xdr_codec::{Opaque, Pack, Unpack};

pub const NFS: u32 = 100_003;
pub const MOUNT: u32 = 100_005;
pub const ROOT: (u32, u32) = (0, 0);
pub const USER: (u32, u32) = (1000, 1000);
/// Bytes per READ (the server's rtmax).
pub const READ_SIZE: u32 = 1 << 20;

pub struct Client {
    pub s: TcpStream,
    xid: u32,
}

#[derive(Debug)]
pub struct Reply {
    /// `SUCCESS`, `GARBAGE_ARGS`, `PROG_MISMATCH { low: 3, high: 3 }`, or
    /// for denied calls e.g. `DENIED RPC_MISMATCH ...`.
    pub stat: String,
    pub body: Vec<u8>,
}

/// One entry of a directory listing (READDIRPLUS, "." and ".." left out).
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub fileid: u64,
    pub attr: fattr3,
    pub fh: nfs_fh3,
}

pub fn packed<T: Pack>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    v.pack(&mut out).unwrap();
    out
}

pub fn call_record(
    xid: u32,
    prog: u32,
    vers: u32,
    proc_: u32,
    cred: (u32, u32),
    args: &[u8],
) -> Vec<u8> {
    let unix = auth_unix {
        stamp: 1,
        machinename: Opaque::owned(b"test".to_vec()),
        uid: cred.0,
        gid: cred.1,
        gids: vec![],
    };
    let msg = rpc_msg {
        xid,
        body: msg_body::CALL(call_body {
            rpcvers: 2,
            prog,
            vers,
            proc: proc_,
            cred: opaque_auth::auth_unix(&unix),
            verf: opaque_auth::default(),
        }),
    };
    let mut m = packed(&msg);
    m.extend_from_slice(args);
    m
}

/// One record-marking fragment holding the whole message.
pub fn frame(m: &[u8]) -> Vec<u8> {
    let mut out = ((m.len() as u32) | 0x8000_0000).to_be_bytes().to_vec();
    out.extend_from_slice(m);
    out
}

pub fn fh(data: Vec<u8>) -> nfs_fh3 {
    nfs_fh3 {
        data: Opaque::owned(data),
    }
}

pub fn status<T, E>(r: Nfs3Result<T, E>) -> nfsstat3 {
    match r {
        Nfs3Result::Ok(_) => nfsstat3::NFS3_OK,
        Nfs3Result::Err((s, _)) => s,
    }
}

pub fn name3(n: &[u8]) -> filename3<'_> {
    filename3(Opaque::borrowed(n))
}

/// `name` in `dir` (a `&str` or bytes).
pub fn dirop<'a, N: AsRef<[u8]> + ?Sized>(dir: &nfs_fh3, name: &'a N) -> diropargs3<'a> {
    diropargs3 {
        dir: dir.clone(),
        name: name3(name.as_ref()),
    }
}

/// A TCP connection to `server` from the local address `src` (another
/// loopback address, say).
pub fn tcp_from(src: Ipv4Addr, server: SocketAddr) -> Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from((src, 0)).into())
        .with_context(|| format!("binding {src}"))?;
    sock.connect_timeout(&server.into(), Duration::from_secs(10))
        .with_context(|| format!("connecting to {server} from {src}"))?;
    Ok(sock.into())
}

/// A TCP connection to `server` from `src`, made inside the network
/// namespace `ns` (`ip netns` name). Network namespaces are per thread, so
/// a short-lived thread enters the namespace and makes the socket; the
/// socket stays in that namespace wherever it is used from.
pub fn tcp_in_netns(ns: &str, src: Ipv4Addr, server: SocketAddr) -> Result<TcpStream> {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<TcpStream> {
                // SAFETY: setns on a namespace fd we own, affecting only this
                // thread (network namespaces may be changed per thread).
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns {path}: {}", std::io::Error::last_os_error());
                }
                tcp_from(src, server).with_context(|| format!("in {ns}"))
            })
            .join()
            .expect("netns thread panicked")
    })
}

impl Client {
    pub fn new(s: TcpStream) -> Client {
        // Generous: a first MNT waits for the image's indexes to be built.
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        Client { s, xid: 1 }
    }

    pub fn connect(server: SocketAddr) -> Result<Client> {
        Ok(Client::new(TcpStream::connect(server)?))
    }

    /// See [`tcp_from`].
    pub fn connect_from(src: Ipv4Addr, server: SocketAddr) -> Result<Client> {
        Ok(Client::new(tcp_from(src, server)?))
    }

    /// See [`tcp_in_netns`].
    pub fn connect_in_netns(ns: &str, src: Ipv4Addr, server: SocketAddr) -> Result<Client> {
        Ok(Client::new(tcp_in_netns(ns, src, server)?))
    }

    pub fn send(&mut self, prog: u32, vers: u32, proc_: u32, cred: (u32, u32), args: &[u8]) -> u32 {
        self.xid += 1;
        let rec = frame(&call_record(self.xid, prog, vers, proc_, cred, args));
        self.s.write_all(&rec).unwrap();
        self.xid
    }

    pub fn recv(&mut self) -> (u32, Reply) {
        let mut hdr = [0u8; 4];
        self.s.read_exact(&mut hdr).expect("reading a reply");
        let h = u32::from_be_bytes(hdr);
        assert!(h & 0x8000_0000 != 0, "replies are single fragments");
        let mut rec = vec![0u8; (h & 0x7fff_ffff) as usize];
        self.s.read_exact(&mut rec).expect("reading a reply");
        let mut r = &rec[..];
        let (msg, _) = rpc_msg::unpack(&mut r).unwrap();
        let msg_body::REPLY(body) = msg.body else {
            panic!("not a reply")
        };
        let stat = match body {
            reply_body::MSG_ACCEPTED(a) => format!("{:?}", a.reply_data),
            reply_body::MSG_DENIED(d) => format!("DENIED {d:?}"),
        };
        (
            msg.xid,
            Reply {
                stat,
                body: r.to_vec(),
            },
        )
    }

    pub fn call(
        &mut self,
        prog: u32,
        vers: u32,
        proc_: u32,
        cred: (u32, u32),
        args: &[u8],
    ) -> Reply {
        let xid = self.send(prog, vers, proc_, cred, args);
        let (got, reply) = self.recv();
        assert_eq!(got, xid);
        reply
    }

    /// An NFS call with a chosen xid (a client sending a call again uses
    /// the xid it sent it with first); its reply.
    pub fn call_xid(&mut self, xid: u32, proc_: u32, cred: (u32, u32), args: &[u8]) -> Reply {
        self.send_xid(xid, proc_, cred, args);
        let (got, reply) = self.recv();
        assert_eq!(got, xid);
        reply
    }

    /// Send an NFS call with a chosen xid without waiting for its reply.
    pub fn send_xid(&mut self, xid: u32, proc_: u32, cred: (u32, u32), args: &[u8]) {
        let rec = frame(&call_record(xid, NFS, 3, proc_, cred, args));
        self.s.write_all(&rec).unwrap();
    }

    /// An NFS call that must be accepted; its decoded result.
    pub fn nfs<R: Unpack>(&mut self, proc_: u32, cred: (u32, u32), args: &impl Pack) -> R {
        let r = self.call(NFS, 3, proc_, cred, &packed(args));
        assert_eq!(r.stat, "SUCCESS", "proc {proc_}");
        let mut b = &r.body[..];
        let (v, _) = R::unpack(&mut b).unwrap();
        assert!(b.is_empty(), "proc {proc_}: {} bytes left", b.len());
        v
    }

    /// MNT; the root handle, or the MOUNT status (`MNT3ERR_ACCES`, ...).
    pub fn mnt(&mut self, path: &str) -> Result<nfs_fh3, String> {
        let r = self.call(
            MOUNT,
            3,
            1,
            ROOT,
            &packed(&dirpath(Opaque::borrowed(path.as_bytes()))),
        );
        assert_eq!(r.stat, "SUCCESS");
        match mountres3::unpack(&mut &r.body[..]).unwrap().0 {
            mountres3::Ok(ok) => Ok(fh(ok.fhandle.0.to_vec())),
            mountres3::Err(e) => Err(e.to_string()),
        }
    }

    pub fn getattr(&mut self, fh: &nfs_fh3) -> Result<fattr3, nfsstat3> {
        match self.nfs::<GETATTR3res>(1, ROOT, fh) {
            Nfs3Result::Ok(ok) => Ok(ok.obj_attributes),
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    pub fn getattr_status(&mut self, fh: &nfs_fh3) -> nfsstat3 {
        match self.getattr(fh) {
            Ok(_) => nfsstat3::NFS3_OK,
            Err(s) => s,
        }
    }

    pub fn lookup(&mut self, dir: &nfs_fh3, name: &[u8]) -> Result<nfs_fh3, nfsstat3> {
        match self.nfs::<LOOKUP3res>(3, ROOT, &dirop(dir, name)) {
            Nfs3Result::Ok(ok) => Ok(ok.object),
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    /// LOOKUP each component of `path` ("a/b/c", leading "/" allowed).
    pub fn walk(&mut self, root: &nfs_fh3, path: &str) -> Result<nfs_fh3, nfsstat3> {
        let mut fh = root.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            fh = self.lookup(&fh, part.as_bytes())?;
        }
        Ok(fh)
    }

    /// The attributes of `path` under `root` (see [`Client::walk`]).
    pub fn attr_at(&mut self, root: &nfs_fh3, path: &str) -> Result<fattr3, nfsstat3> {
        let fh = self.walk(root, path)?;
        self.getattr(&fh)
    }

    /// ACCESS: which of `bits` `cred` is granted.
    pub fn access(&mut self, fh: &nfs_fh3, cred: (u32, u32), bits: u32) -> Result<u32, nfsstat3> {
        let args = ACCESS3args {
            object: fh.clone(),
            access: bits,
        };
        match self.nfs::<ACCESS3res>(4, cred, &args) {
            Nfs3Result::Ok(ok) => Ok(ok.access),
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    /// Every entry of a directory (READDIRPLUS until eof), "." and ".."
    /// left out; each with attributes and a handle, which must be present.
    pub fn readdirplus(&mut self, dir: &nfs_fh3) -> Result<Vec<DirEntry>, nfsstat3> {
        let (mut cookie, mut verf, mut out) = (0, cookieverf3::default(), Vec::new());
        for _ in 0..100_000 {
            let args = READDIRPLUS3args {
                dir: dir.clone(),
                cookie,
                cookieverf: verf,
                dircount: 1024,
                maxcount: 8192,
            };
            let ok = match self.nfs::<READDIRPLUS3res>(17, ROOT, &args) {
                Nfs3Result::Ok(ok) => ok,
                Nfs3Result::Err((s, _)) => return Err(s),
            };
            verf = ok.cookieverf;
            for e in ok.reply.entries.0 {
                cookie = e.cookie;
                let name = e.name.0.to_vec();
                if name == b"." || name == b".." {
                    continue;
                }
                let Nfs3Option::Some(attr) = e.name_attributes else {
                    panic!("{}: no attributes", String::from_utf8_lossy(&name))
                };
                let Nfs3Option::Some(fh) = e.name_handle else {
                    panic!("{}: no handle", String::from_utf8_lossy(&name))
                };
                assert_eq!(attr.fileid, e.fileid, "{}", String::from_utf8_lossy(&name));
                out.push(DirEntry {
                    name,
                    fileid: e.fileid,
                    attr,
                    fh,
                });
            }
            if ok.reply.eof {
                return Ok(out);
            }
        }
        panic!("READDIRPLUS made no progress");
    }

    pub fn readlink(&mut self, fh: &nfs_fh3) -> Result<Vec<u8>, nfsstat3> {
        let args = READLINK3args {
            symlink: fh.clone(),
        };
        match self.nfs::<READLINK3res>(5, ROOT, &args) {
            Nfs3Result::Ok(ok) => Ok(ok.data.0.to_vec()),
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    /// One READ: (data, eof).
    pub fn read(
        &mut self,
        fh: &nfs_fh3,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsstat3> {
        let args = READ3args {
            file: fh.clone(),
            offset,
            count,
        };
        match self.nfs::<READ3res>(6, ROOT, &args) {
            Nfs3Result::Ok(ok) => {
                assert_eq!(ok.count as usize, ok.data.0.len());
                Ok((ok.data.0.to_vec(), ok.eof))
            }
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    /// `[offset, end)` of a file (or to its end if `end` is `None`), in
    /// READs of at most [`READ_SIZE`].
    pub fn read_range(
        &mut self,
        fh: &nfs_fh3,
        offset: u64,
        end: Option<u64>,
    ) -> Result<Vec<u8>, nfsstat3> {
        let mut out = Vec::new();
        let mut pos = offset;
        loop {
            let want = match end {
                Some(e) if pos >= e => break,
                Some(e) => (e - pos).min(READ_SIZE as u64) as u32,
                None => READ_SIZE,
            };
            let (data, eof) = self.read(fh, pos, want)?;
            pos += data.len() as u64;
            out.extend_from_slice(&data);
            if eof {
                break;
            }
            assert!(!data.is_empty(), "empty READ at {pos} without eof");
        }
        Ok(out)
    }

    pub fn read_all(&mut self, fh: &nfs_fh3) -> Result<Vec<u8>, nfsstat3> {
        self.read_range(fh, 0, None)
    }

    pub fn setattr(
        &mut self,
        fh: &nfs_fh3,
        set: sattr3,
        cred: (u32, u32),
    ) -> Result<fattr3, nfsstat3> {
        let args = SETATTR3args {
            object: fh.clone(),
            new_attributes: set,
            guard: Nfs3Option::None,
        };
        match self.nfs::<SETATTR3res>(2, cred, &args) {
            Nfs3Result::Ok(ok) => match ok.obj_wcc.after {
                Nfs3Option::Some(a) => Ok(a),
                Nfs3Option::None => panic!("SETATTR without attributes"),
            },
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    /// One FILE_SYNC WRITE of all of `data` at `offset`.
    pub fn write(
        &mut self,
        fh: &nfs_fh3,
        offset: u64,
        data: &[u8],
        cred: (u32, u32),
    ) -> Result<(), nfsstat3> {
        self.write_with(fh, offset, data, cred, stable_how::FILE_SYNC)
    }

    /// One WRITE of all of `data` at `offset`, `stable` as given.
    pub fn write_with(
        &mut self,
        fh: &nfs_fh3,
        offset: u64,
        data: &[u8],
        cred: (u32, u32),
        stable: stable_how,
    ) -> Result<(), nfsstat3> {
        let args = WRITE3args {
            file: fh.clone(),
            offset,
            count: data.len() as u32,
            stable,
            data: Opaque::borrowed(data),
        };
        match self.nfs::<WRITE3res>(7, cred, &args) {
            Nfs3Result::Ok(ok) => {
                assert_eq!(ok.count as usize, data.len(), "short WRITE");
                Ok(())
            }
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    pub fn remove(&mut self, dir: &nfs_fh3, name: &[u8], cred: (u32, u32)) -> Result<(), nfsstat3> {
        let args = REMOVE3args {
            object: dirop(dir, name),
        };
        match self.nfs::<REMOVE3res>(12, cred, &args) {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    pub fn rename(
        &mut self,
        from: (&nfs_fh3, &[u8]),
        to: (&nfs_fh3, &[u8]),
        cred: (u32, u32),
    ) -> Result<(), nfsstat3> {
        let args = RENAME3args {
            from: dirop(from.0, from.1),
            to: dirop(to.0, to.1),
        };
        match self.nfs::<RENAME3res>(14, cred, &args) {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    fn mode_attr(mode: u32) -> sattr3 {
        sattr3 {
            mode: Nfs3Option::Some(mode),
            ..Default::default()
        }
    }

    fn made(obj: post_op_fh3) -> nfs_fh3 {
        match obj {
            Nfs3Option::Some(fh) => fh,
            Nfs3Option::None => panic!("no handle for a new object"),
        }
    }

    /// CREATE (GUARDED) with `mode`.
    pub fn create(
        &mut self,
        dir: &nfs_fh3,
        name: &[u8],
        mode: u32,
        cred: (u32, u32),
    ) -> Result<nfs_fh3, nfsstat3> {
        let args = CREATE3args {
            where_: dirop(dir, name),
            how: createhow3::GUARDED(Self::mode_attr(mode)),
        };
        match self.nfs::<CREATE3res>(8, cred, &args) {
            Nfs3Result::Ok(ok) => Ok(Self::made(ok.obj)),
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    pub fn mkdir(
        &mut self,
        dir: &nfs_fh3,
        name: &[u8],
        mode: u32,
        cred: (u32, u32),
    ) -> Result<nfs_fh3, nfsstat3> {
        let args = MKDIR3args {
            where_: dirop(dir, name),
            attributes: Self::mode_attr(mode),
        };
        match self.nfs::<MKDIR3res>(9, cred, &args) {
            Nfs3Result::Ok(ok) => Ok(Self::made(ok.obj)),
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    pub fn symlink(
        &mut self,
        dir: &nfs_fh3,
        name: &[u8],
        target: &[u8],
        cred: (u32, u32),
    ) -> Result<nfs_fh3, nfsstat3> {
        let args = SYMLINK3args {
            where_: dirop(dir, name),
            symlink: symlinkdata3 {
                symlink_attributes: sattr3::default(),
                symlink_data: nfspath3(Opaque::borrowed(target)),
            },
        };
        match self.nfs::<SYMLINK3res>(10, cred, &args) {
            Nfs3Result::Ok(ok) => Ok(Self::made(ok.obj)),
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    pub fn mkfifo(
        &mut self,
        dir: &nfs_fh3,
        name: &[u8],
        mode: u32,
        cred: (u32, u32),
    ) -> Result<nfs_fh3, nfsstat3> {
        let args = MKNOD3args {
            where_: dirop(dir, name),
            what: mknoddata3::NF3FIFO(Self::mode_attr(mode)),
        };
        match self.nfs::<MKNOD3res>(11, cred, &args) {
            Nfs3Result::Ok(ok) => Ok(Self::made(ok.obj)),
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    /// LINK: a new name `name` in `dir` for `file`.
    pub fn link(
        &mut self,
        file: &nfs_fh3,
        dir: &nfs_fh3,
        name: &[u8],
        cred: (u32, u32),
    ) -> Result<(), nfsstat3> {
        let args = LINK3args {
            file: file.clone(),
            link: dirop(dir, name),
        };
        match self.nfs::<LINK3res>(15, cred, &args) {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    pub fn rmdir(&mut self, dir: &nfs_fh3, name: &[u8], cred: (u32, u32)) -> Result<(), nfsstat3> {
        let args = RMDIR3args {
            object: dirop(dir, name),
        };
        match self.nfs::<RMDIR3res>(13, cred, &args) {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    /// Replace a file's content as a kernel client does for
    /// `open(O_TRUNC)` + `write`: SETATTR size 0, then WRITEs.
    pub fn overwrite(
        &mut self,
        fh: &nfs_fh3,
        data: &[u8],
        cred: (u32, u32),
    ) -> Result<(), nfsstat3> {
        let truncate = sattr3 {
            size: Nfs3Option::Some(0),
            ..Default::default()
        };
        self.setattr(fh, truncate, cred)?;
        for (i, chunk) in data.chunks(READ_SIZE as usize).enumerate() {
            self.write(fh, i as u64 * READ_SIZE as u64, chunk, cred)?;
        }
        Ok(())
    }
}

/// A UDP socket bound to `src` inside namespace `ns` (see [`tcp_in_netns`]),
/// connected to `server`.
pub fn udp_in_netns(ns: &str, src: Ipv4Addr, server: SocketAddr) -> Result<std::net::UdpSocket> {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<std::net::UdpSocket> {
                // SAFETY: as in tcp_in_netns, this thread only.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns {path}: {}", std::io::Error::last_os_error());
                }
                let sock = std::net::UdpSocket::bind(SocketAddr::from((src, 0)))
                    .with_context(|| format!("binding UDP {src} in {ns}"))?;
                sock.connect(server)?;
                Ok(sock)
            })
            .join()
            .expect("netns thread panicked")
    })
}

/// MOUNT and NFS over UDP, as klibc `nfsmount` and U-Boot speak them: one
/// call per datagram, retransmitted after a second without a reply.
pub struct UdpClient {
    pub s: std::net::UdpSocket,
    xid: u32,
}

impl UdpClient {
    pub fn new(s: std::net::UdpSocket) -> UdpClient {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        UdpClient { s, xid: 0x5000 }
    }

    /// One call; the reply (of this xid), after up to 30 tries.
    pub fn call(&mut self, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Result<Reply> {
        self.xid += 1;
        let msg = call_record(self.xid, prog, vers, proc_, ROOT, args);
        let mut buf = vec![0u8; 70_000];
        for _ in 0..30 {
            self.s.send(&msg)?;
            loop {
                let n = match self.s.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        break
                    }
                    Err(e) => return Err(e.into()),
                };
                let mut r = &buf[..n];
                let (msg, _) = rpc_msg::unpack(&mut r).context("reply header")?;
                if msg.xid != self.xid {
                    continue;
                }
                let msg_body::REPLY(body) = msg.body else {
                    bail!("not a reply")
                };
                let stat = match body {
                    reply_body::MSG_ACCEPTED(a) => format!("{:?}", a.reply_data),
                    reply_body::MSG_DENIED(d) => format!("DENIED {d:?}"),
                };
                return Ok(Reply {
                    stat,
                    body: r.to_vec(),
                });
            }
        }
        bail!("no reply to xid {} over UDP", self.xid)
    }

    fn nfs<R: for<'a> Unpack>(&mut self, proc_: u32, args: &impl Pack) -> Result<R> {
        let r = self.call(NFS, 3, proc_, &packed(args))?;
        if r.stat != "SUCCESS" {
            bail!("NFS proc {proc_}: {}", r.stat);
        }
        Ok(R::unpack(&mut &r.body[..])?.0)
    }

    pub fn mnt(&mut self, path: &str) -> Result<nfs_fh3> {
        let r = self.call(
            MOUNT,
            3,
            1,
            &packed(&dirpath(Opaque::borrowed(path.as_bytes()))),
        )?;
        match mountres3::unpack(&mut &r.body[..])?.0 {
            mountres3::Ok(ok) => Ok(fh(ok.fhandle.0.to_vec())),
            mountres3::Err(e) => bail!("MNT {path}: {e}"),
        }
    }

    pub fn walk(&mut self, root: &nfs_fh3, path: &str) -> Result<nfs_fh3> {
        let mut fh = root.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            fh = match self.nfs::<LOOKUP3res>(3, &dirop(&fh, part))? {
                Nfs3Result::Ok(ok) => ok.object,
                Nfs3Result::Err((s, _)) => bail!("LOOKUP {part}: {s}"),
            };
        }
        Ok(fh)
    }

    /// FSINFO's rtmax.
    pub fn rtmax(&mut self, fh: &nfs_fh3) -> Result<u32> {
        match self.nfs::<FSINFO3res>(19, fh)? {
            Nfs3Result::Ok(ok) => Ok(ok.rtmax),
            Nfs3Result::Err((s, _)) => bail!("FSINFO: {s}"),
        }
    }

    /// The whole file in READs of `count` bytes; the largest reply seen.
    pub fn read_all(&mut self, fh: &nfs_fh3, count: u32) -> Result<(Vec<u8>, usize)> {
        let (mut out, mut largest) = (Vec::new(), 0);
        loop {
            let args = READ3args {
                file: fh.clone(),
                offset: out.len() as u64,
                count,
            };
            match self.nfs::<READ3res>(6, &args)? {
                Nfs3Result::Ok(ok) => {
                    largest = largest.max(ok.data.0.len());
                    out.extend_from_slice(&ok.data.0);
                    if ok.eof || ok.data.0.is_empty() {
                        return Ok((out, largest));
                    }
                }
                Nfs3Result::Err((s, _)) => bail!("READ: {s}"),
            }
        }
    }
}
