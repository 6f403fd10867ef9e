//! The NFS protocol side (`lazyboot::nfs::serve`) against real clients:
//! libnfs' `nfs-ls`, `nfs-cat` and `nfs-cp`, and raw RPCs sent from here
//! (`common::nfsrpc`) for what those tools cannot show: MNT of unknown and
//! foreign exports, forged and foreign handles, handles over a restart, RPC
//! errors, garbage and pipelining. ACCESS, permissions, the modifying
//! procedures and READDIR are in integration/nfs_procedures.rs.
//!
//! The exported file systems are a small test double (`common::tempfs`, a
//! real temporary directory behind `NodeFs`): the node overlay has its own
//! tests, and end-to-end tests combine the two.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use common::nfsrpc::{call_record, frame, packed, status, MOUNT, NFS, ROOT};
use common::tempfs::{all_bytes, runnable, tool, tool_ok, Lab, Server, LARGE_LEN};
use common::{pseudo_random, sha256_hex};
use nfs3_server::nfs3_types::mount::exports;
use nfs3_server::nfs3_types::nfs3::*;
use nfs3_server::nfs3_types::xdr_codec::{Opaque, Unpack};

// ---------------------------------------------------------------------------
// Tests with libnfs clients.

#[test]
fn libnfs_lists_and_reads_the_tree() {
    if !runnable("libnfs_lists_and_reads_the_tree") {
        return;
    }
    let started = Instant::now();
    let lab = Lab::new();
    let s = &lab.server;

    let listing = String::from_utf8(tool_ok(&["nfs-ls", "-R", &s.url("/nodes/a", "")])).unwrap();
    for want in [
        "hello.txt",
        "bin/tool",
        "bin/setuid",
        "data/large.bin",
        "sub/deep/file.txt",
        "many/entry-0299",
        "sticky/theirs",
        "null-dev",
        "link",
    ] {
        assert!(listing.contains(want), "{want} missing from:\n{listing}");
    }
    // nfs-ls prints only the type (d or -) and the rwx bits (setuid,
    // sticky and device numbers are checked with GETATTR below).
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("{name} not in {listing}"))
            .to_string()
    };
    assert!(
        line("bin/tool").starts_with("-rwxr-xr-x"),
        "{}",
        line("bin/tool")
    );
    assert!(
        line("sticky").starts_with("drwxrwxrwx"),
        "{}",
        line("sticky")
    );
    assert!(
        line("incoming").starts_with("drwxrwxrwx"),
        "{}",
        line("incoming")
    );

    for (path, want) in [
        ("hello.txt", b"hello world\n".to_vec()),
        ("empty", Vec::new()),
        ("data/all-bytes.bin", all_bytes()),
        ("sub/deep/file.txt", b"deep\n".to_vec()),
    ] {
        let got = tool_ok(&["nfs-cat", &s.url(&format!("/nodes/a/{path}"), "")]);
        assert_eq!(got, want, "{path}");
    }
    eprintln!("libnfs_lists_and_reads_the_tree: {:?}", started.elapsed());
}

#[test]
fn libnfs_copies_files_in_and_out() {
    if !runnable("libnfs_copies_files_in_and_out") {
        return;
    }
    let started = Instant::now();
    let lab = Lab::new();
    let s = &lab.server;
    let local = tempfile::tempdir().unwrap();

    // A large file out, compared by sha256.
    let out = local.path().join("large.bin");
    tool_ok(&[
        "nfs-cp",
        &s.url("/nodes/a/data/large.bin", ""),
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        sha256_hex(&std::fs::read(&out).unwrap()),
        sha256_hex(&pseudo_random(LARGE_LEN, 42))
    );

    // A file in (several WRITEs) as uid/gid 1000 into a world-writable
    // directory: same bytes, owned by the caller.
    let data = pseudo_random(3 * 1024 * 1024 + 777, 7);
    let src = local.path().join("in.bin");
    std::fs::write(&src, &data).unwrap();
    let as_user = "&uid=1000&gid=1000";
    tool_ok(&[
        "nfs-cp",
        src.to_str().unwrap(),
        &s.url("/nodes/a/incoming/in.bin", as_user),
    ]);
    let written = lab.a.join("incoming/in.bin");
    assert_eq!(std::fs::read(&written).unwrap(), data);
    let m = std::fs::metadata(&written).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1000));

    // The same user may not create files in a root-owned 0755 directory,
    // root may.
    let (ok, _, err) = tool(&[
        "nfs-cp",
        src.to_str().unwrap(),
        &s.url("/nodes/a/rootonly/in.bin", as_user),
    ]);
    assert!(!ok, "uid 1000 wrote into a 0755 root directory");
    assert!(err.contains("NFS3ERR_ACCES"), "{err}");
    assert!(!lab.a.join("rootonly/in.bin").exists(), "{err}");
    tool_ok(&[
        "nfs-cp",
        src.to_str().unwrap(),
        &s.url("/nodes/a/rootonly/in.bin", ""),
    ]);
    let m = std::fs::metadata(lab.a.join("rootonly/in.bin")).unwrap();
    assert_eq!((m.uid(), m.len()), (0, data.len() as u64));

    // Nothing is written through the read-only export.
    let (ok, _, err) = tool(&[
        "nfs-cp",
        src.to_str().unwrap(),
        &s.url("/nodes/ro/in.bin", ""),
    ]);
    assert!(!ok, "wrote to a read-only export");
    assert!(err.contains("NFS3ERR_ROFS"), "{err}");
    eprintln!("libnfs_copies_files_in_and_out: {:?}", started.elapsed());
}

#[test]
fn unknown_and_foreign_exports_are_refused_at_mnt() {
    if !runnable("unknown_and_foreign_exports_are_refused_at_mnt") {
        return;
    }
    let lab = Lab::new();
    let s = &lab.server;
    let mut c = s.client();
    assert_eq!(c.mnt("/nodes/nope").unwrap_err(), "MNT3ERR_NOENT");
    assert_eq!(c.mnt("/elsewhere").unwrap_err(), "MNT3ERR_NOENT");
    assert_eq!(c.mnt("/nodes/other").unwrap_err(), "MNT3ERR_ACCES");
    assert_eq!(c.mnt("/nodes/a/hello.txt").unwrap_err(), "MNT3ERR_NOTDIR");
    assert_eq!(c.mnt("/nodes/a/missing").unwrap_err(), "MNT3ERR_NOENT");
    // A subdirectory of an export mounts, with the same handle as a lookup.
    let root = c.mnt("/nodes/a/").unwrap();
    let sub = c.mnt("/nodes/a/sub/deep").unwrap();
    assert_eq!(sub, c.walk(&root, "sub/deep").unwrap());
    // EXPORT lists the exports.
    let r = c.call(MOUNT, 3, 5, ROOT, &[]);
    let (list, _) = exports::unpack(&mut &r.body[..]).unwrap();
    let paths: Vec<String> = list
        .0
        .iter()
        .map(|e| String::from_utf8_lossy(&e.ex_dir.0).into_owned())
        .collect();
    assert_eq!(paths, ["/nodes/a", "/nodes/ro", "/nodes/other"]);
    // libnfs sees the refusal too.
    let (ok, _, _) = tool(&["nfs-ls", &s.url("/nodes/nope", "")]);
    assert!(!ok, "nfs-ls of an unknown export succeeded");
}

// ---------------------------------------------------------------------------
// Raw RPC tests.

#[test]
fn forged_altered_and_foreign_handles_are_rejected() {
    if !runnable("forged_altered_and_foreign_handles_are_rejected") {
        return;
    }
    let lab = Lab::new();
    let mut c = lab.server.client();
    let root = c.mnt("/nodes/a").unwrap();
    let file = c.walk(&root, "hello.txt").unwrap();
    let attr = c.getattr(&file).unwrap();
    assert_eq!(attr.size, 12);

    let altered = |i: usize, x: u8| {
        let mut d = file.data.to_vec();
        d[i] ^= x;
        nfs_fh3 {
            data: Opaque::owned(d),
        }
    };
    // Another file id (e.g. the root's), the export id, the tag, the length.
    assert_eq!(
        c.getattr_status(&altered(15, 1)),
        nfsstat3::NFS3ERR_BADHANDLE
    );
    assert_eq!(
        c.getattr_status(&altered(7, 2)),
        nfsstat3::NFS3ERR_BADHANDLE
    );
    assert_eq!(
        c.getattr_status(&altered(31, 0x80)),
        nfsstat3::NFS3ERR_BADHANDLE
    );
    let short = nfs_fh3 {
        data: Opaque::owned(file.data[..20].to_vec()),
    };
    assert_eq!(c.getattr_status(&short), nfsstat3::NFS3ERR_BADHANDLE);
    let mut forged = root.data.to_vec();
    forged[8..16].copy_from_slice(&attr.fileid.to_be_bytes());
    let forged = nfs_fh3 {
        data: Opaque::owned(forged),
    };
    assert_eq!(c.getattr_status(&forged), nfsstat3::NFS3ERR_BADHANDLE);
    // Longer than NFS3_FHSIZE is not even valid XDR.
    let long = nfs_fh3 {
        data: Opaque::owned(vec![1; 65]),
    };
    c.s.write_all(&frame(&call_record(99, NFS, 3, 1, ROOT, &packed(&long))))
        .unwrap();
    let (xid, r) = c.recv();
    assert_eq!((xid, r.stat.as_str()), (99, "GARBAGE_ARGS"));

    // A genuine handle of the export of 127.0.0.2 is refused for
    // 127.0.0.1 (ACCES, not STALE: it is a real handle of an export this
    // client may not use).
    let mut other = lab.server.client_from(Ipv4Addr::new(127, 0, 0, 2));
    let foreign_root = other.mnt("/nodes/other").unwrap();
    let secret = other.walk(&foreign_root, "secret").unwrap();
    assert_eq!(other.getattr(&secret).unwrap().size, 12);
    assert_eq!(c.getattr_status(&secret), nfsstat3::NFS3ERR_ACCES);
    let read = READ3args {
        file: secret.clone(),
        offset: 0,
        count: 100,
    };
    assert_eq!(
        status(c.nfs::<READ3res>(6, ROOT, &read)),
        nfsstat3::NFS3ERR_ACCES
    );
}

#[test]
fn handles_survive_a_server_restart_with_the_same_key() {
    if !runnable("handles_survive_a_server_restart_with_the_same_key") {
        return;
    }
    let mut lab = Lab::new();
    let (file, before) = {
        let mut c = lab.server.client();
        let root = c.mnt("/nodes/a").unwrap();
        let file = c.walk(&root, "sub/deep/file.txt").unwrap();
        let a = c.getattr(&file).unwrap();
        (file, a)
    };
    // Restart: stop the server, start a new instance with the key loaded
    // from the same file.
    lab.server.stop();
    let key = lazyboot::nfs::load_or_create_key(&lab.key_path).unwrap();
    lab.server = Server::start(lab.exports.clone(), key);
    let mut c = lab.server.client();
    let after = c.getattr(&file).unwrap();
    assert_eq!(
        (after.fileid, after.size, after.fsid),
        (before.fileid, before.size, before.fsid)
    );
    // A server with another key does not know the handle.
    let other = Server::start(lab.exports.clone(), [9; 32]);
    let mut c = other.client();
    assert_eq!(c.getattr_status(&file), nfsstat3::NFS3ERR_BADHANDLE);
}

/// Whether the server closed `s`: a read sees the end of the stream (or
/// a reset) within `wait`.
fn closed_within(s: &mut std::net::TcpStream, wait: std::time::Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn connections_past_the_cap_and_idle_ones_are_closed() {
    if !runnable("connections_past_the_cap_and_idle_ones_are_closed") {
        return;
    }
    use std::time::Duration;
    let lab = Lab::new();
    let limits = lazyboot::nfs::Limits {
        max_connections: 4,
        idle: Duration::from_secs(3),
    };
    let server = Server::start_with(lab.exports.clone(), [3; 32], limits);
    // Four clients that work (a MNT each), then sit idle.
    let mut held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let s = std::net::TcpStream::connect(server.addr()).unwrap();
            let mut c = common::nfsrpc::Client::new(s.try_clone().unwrap());
            c.mnt("/nodes/a").expect("mount on a held connection");
            s
        })
        .collect();
    // A fifth is closed at once: the cap holds.
    let mut fifth = std::net::TcpStream::connect(server.addr()).unwrap();
    assert!(
        closed_within(&mut fifth, Duration::from_secs(1)),
        "fifth connection held"
    );
    // The held ones are closed once idle for the limit, not before.
    for s in &mut held {
        assert!(
            !closed_within(s, Duration::from_millis(100)),
            "closed before idle"
        );
    }
    for s in &mut held {
        assert!(
            closed_within(s, Duration::from_secs(10)),
            "idle connection kept"
        );
    }
    // Their slots are free again: a new client is served.
    let mut c = common::nfsrpc::Client::connect(server.addr()).unwrap();
    c.mnt("/nodes/a").expect("mount after the idle ones went");
}

#[test]
fn rpc_errors_garbage_and_pipelining() {
    if !runnable("rpc_errors_garbage_and_pipelining") {
        return;
    }
    let lab = Lab::new();
    let port = lab.server.port;

    // Pure garbage: the connection is dropped.
    let mut g = TcpStream::connect(("127.0.0.1", port)).unwrap();
    g.write_all(&[0xff; 64]).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        g.read(&mut buf).unwrap_or(0),
        0,
        "garbage connection not dropped"
    );
    // A record that is not a call.
    let mut g = TcpStream::connect(("127.0.0.1", port)).unwrap();
    g.write_all(&frame(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]))
        .unwrap();
    assert_eq!(g.read(&mut buf).unwrap_or(0), 0, "reply record not dropped");

    // On a new connection everything works, with the proper RPC errors.
    let mut c = lab.server.client();
    assert_eq!(c.call(NFS, 3, 0, ROOT, &[]).stat, "SUCCESS");
    assert_eq!(c.call(MOUNT, 3, 0, ROOT, &[]).stat, "SUCCESS");
    assert_eq!(c.call(100_000, 2, 0, ROOT, &[]).stat, "PROG_UNAVAIL");
    assert_eq!(
        c.call(NFS, 2, 0, ROOT, &[]).stat,
        "PROG_MISMATCH { low: 3, high: 3 }"
    );
    assert_eq!(
        c.call(NFS, 4, 0, ROOT, &[]).stat,
        "PROG_MISMATCH { low: 3, high: 3 }"
    );
    assert_eq!(
        c.call(MOUNT, 1, 0, ROOT, &[]).stat,
        "PROG_MISMATCH { low: 3, high: 3 }"
    );
    assert_eq!(c.call(NFS, 3, 22, ROOT, &[]).stat, "PROC_UNAVAIL");
    assert_eq!(c.call(MOUNT, 3, 6, ROOT, &[]).stat, "PROC_UNAVAIL");
    // Truncated and malformed arguments.
    assert_eq!(
        c.call(NFS, 3, 1, ROOT, &[0, 0, 0, 32, 1, 2]).stat,
        "GARBAGE_ARGS"
    );
    assert_eq!(
        c.call(NFS, 3, 3, ROOT, &[0xff, 0xff, 0xff, 0xff]).stat,
        "GARBAGE_ARGS"
    );
    assert_eq!(c.call(MOUNT, 3, 1, ROOT, &[0, 0]).stat, "GARBAGE_ARGS");
    // RPC version 3: denied.
    let mut rec = call_record(77, NFS, 3, 0, ROOT, &[]);
    rec[11] = 3;
    c.s.write_all(&frame(&rec)).unwrap();
    let (xid, r) = c.recv();
    assert_eq!(xid, 77);
    assert!(r.stat.starts_with("DENIED RPC_MISMATCH"), "{}", r.stat);

    // Pipelined calls, one of them split into three fragments, sent in a
    // single write: every reply arrives.
    let root = c.mnt("/nodes/a").unwrap();
    let mut stream = Vec::new();
    let mut want = BTreeSet::new();
    for i in 0..20u32 {
        let xid = 1000 + i;
        want.insert(xid);
        let m = call_record(xid, NFS, 3, 1, ROOT, &packed(&root));
        if i == 7 {
            let (x, rest) = m.split_at(10);
            let (y, z) = rest.split_at(20);
            for (part, last) in [(x, false), (y, false), (z, true)] {
                let h = part.len() as u32 | if last { 0x8000_0000 } else { 0 };
                stream.extend_from_slice(&h.to_be_bytes());
                stream.extend_from_slice(part);
            }
        } else {
            stream.extend(frame(&m));
        }
    }
    c.s.write_all(&stream).unwrap();
    let mut got = BTreeSet::new();
    for _ in 0..20 {
        let (xid, r) = c.recv();
        assert_eq!(r.stat, "SUCCESS");
        assert!(matches!(
            GETATTR3res::unpack(&mut &r.body[..]).unwrap().0,
            Nfs3Result::Ok(_)
        ));
        got.insert(xid);
    }
    assert_eq!(got, want);

    // An oversized record drops that connection only.
    let mut big = TcpStream::connect(("127.0.0.1", port)).unwrap();
    big.write_all(&(0x8000_0000u32 | (2 << 20)).to_be_bytes())
        .unwrap();
    assert_eq!(
        big.read(&mut buf).unwrap_or(0),
        0,
        "oversized record accepted"
    );
    assert_eq!(c.call(NFS, 3, 0, ROOT, &[]).stat, "SUCCESS");
    // And libnfs still works after all that.
    let got = tool_ok(&["nfs-cat", &lab.server.url("/nodes/a/hello.txt", "")]);
    assert_eq!(got, b"hello world\n");
}
