//! What lazyboot serves while a layer's streaming pass is still running,
//! through `lazyboot mount` (FUSE) and through `serve`'s NFS export: files
//! the stream has passed are readable, nothing not yet known for sure is
//! answered (a name hidden by an upper layer's whiteout, a listing, a name
//! the stream has not reached, and over NFS any change), and a digest
//! mismatch found at the end of the pass ends the mount with EIO and an
//! error, caching nothing.
//!
//! The pass is caught mid-layer by `common::held`.

mod common;

use anyhow::{Context, Result};
use common::held::{held, spawn, BIG, DONE, PENDING};
use common::netboot::pc_config;
use common::netns::NetLab;
use common::nfsrpc::Client;
use common::serve::{Serve, Server};
use common::{compare_with, snapshot, CompareOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const TOOLS: &[&str] = &["fusermount3"];

fn read_range(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

#[test]
fn files_the_pass_has_passed_are_served_before_it_ends() -> Result<()> {
    if !common::require_root_and_tools("files_the_pass_has_passed_are_served", TOOLS) {
        return Ok(());
    }
    let h = held("prog/img", false)?;
    let (img, gate, base, cache) = (&h.img, &h.gate, &h.base, h.cache());
    let m = h.mount(&["--no-background-fill", "--read-timeout", "120"])?;
    gate.wait_held(DONE)?;
    let dir = m.dir.clone();

    // Served while the pass is held mid-layer: a file the stream passed,
    // a file of the complete top layer, the start of the big file.
    let early = spawn({
        let d = dir.clone();
        move || std::fs::read(d.join("etc/early.txt"))
    });
    assert_eq!(
        early.within(DONE).context("etc/early.txt never came")??,
        b"read me while the pass runs\n"
    );
    let top = spawn({
        let d = dir.clone();
        move || std::fs::read(d.join("etc/top.txt"))
    });
    assert_eq!(
        top.within(DONE).context("etc/top.txt never came")??,
        b"from the top layer\n"
    );
    let head = spawn({
        let d = dir.clone();
        move || read_range(&d.join("big/blob.bin"), 0, 1 << 20)
    });
    assert_eq!(
        head.within(DONE)
            .context("the head of big/blob.bin never came")??,
        &img.big[..1 << 20]
    );
    let meta = std::fs::metadata(dir.join("big/blob.bin"))?;
    assert_eq!(meta.len(), BIG as u64);
    // The root as the base layer's `./` entry describes it, not defaults.
    use std::os::unix::fs::MetadataExt;
    // Two names of one file are one inode (hard-link groups hold mid-pass).
    let (a, b) = (
        std::fs::metadata(dir.join("etc/early.txt"))?,
        std::fs::metadata(dir.join("etc/early-link.txt"))?,
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    let root = std::fs::metadata(&dir)?;
    assert_eq!((root.mode() & 0o7777, root.mtime()), (0o751, 1_700_000_000));

    // Not known yet, so not answered yet: the bytes past the hold point, a
    // name past it, a name the top layer whited out (the base has it, and
    // only the end of the pass proves nothing else brings it back), a
    // directory listing.
    let tail = spawn({
        let d = dir.clone();
        move || read_range(&d.join("big/blob.bin"), (BIG - (1 << 20)) as u64, 1 << 20)
    });
    let late = spawn({
        let d = dir.clone();
        move || std::fs::read(d.join("zz-late.txt"))
    });
    let gone = spawn({
        let d = dir.clone();
        move || std::fs::metadata(d.join("etc/gone.txt")).map(|_| ())
    });
    let listing = spawn({
        let d = dir.clone();
        move || -> std::io::Result<Vec<String>> {
            let mut names: Vec<String> = std::fs::read_dir(d.join("etc"))?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<_>>()?;
            names.sort();
            Ok(names)
        }
    });
    assert!(
        tail.within(PENDING).is_none(),
        "bytes past the hold point were served"
    );
    assert!(
        late.within(Duration::ZERO).is_none(),
        "a name past the hold point was answered"
    );
    assert!(
        gone.within(Duration::ZERO).is_none(),
        "a lookup that cannot be known yet was answered"
    );
    assert!(
        listing.within(Duration::ZERO).is_none(),
        "a listing was answered mid-pass"
    );

    gate.release();
    assert_eq!(
        tail.within(DONE).context("tail")??,
        &img.big[BIG - (1 << 20)..]
    );
    assert_eq!(late.within(DONE).context("late")??, b"after the big file\n");
    let err = gone.within(DONE).context("gone")?.expect_err("whited out");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(
        listing.within(DONE).context("listing")??,
        vec![
            "early-link.txt".to_string(),
            "early.txt".to_string(),
            "top.txt".to_string()
        ]
    );

    // Node ids given out mid-pass keep working, and the whole tree equals
    // the unpacked image.
    assert_eq!(
        std::fs::read(dir.join("etc/early.txt"))?,
        b"read me while the pass runs\n"
    );
    let want_dir = h.tmp.path().join("umoci");
    let want = snapshot(&common::umoci_unpack(&img.layout, "t", &want_dir)?)?;
    let got = snapshot(&dir)?;
    let diffs = compare_with(
        &want.with_label("umoci unpack"),
        &got.with_label("mount"),
        &CompareOptions::default(),
    );
    assert!(
        diffs.is_empty(),
        "mount differs from umoci unpack:\n{}",
        diffs.join("\n")
    );
    m.stop()?;
    // The pass's chunks reached the cache only after the digest matched.
    assert!(cache.join("chunks").join(&base[7..]).is_dir());
    Ok(())
}

#[test]
fn a_digest_mismatch_found_at_the_end_of_the_pass_ends_the_mount() -> Result<()> {
    if !common::require_root_and_tools("a_digest_mismatch_ends_the_mount", TOOLS) {
        return Ok(());
    }
    let h = held("prog/bad", true)?;
    let (gate, base, cache) = (&h.gate, &h.base, h.cache());
    let mut m = h.mount(&["--no-background-fill", "--read-timeout", "120"])?;
    gate.wait_held(DONE)?;
    let dir = m.dir.clone();
    let tail = spawn({
        let d = dir.clone();
        move || read_range(&d.join("big/blob.bin"), (BIG - (1 << 20)) as u64, 1 << 20)
    });
    assert!(tail.within(PENDING).is_none());
    gate.release();
    let err = tail
        .within(DONE)
        .context("the read past the damage never ended")?
        .expect_err("bytes of a layer that failed its digest were served");
    // EIO from lazyboot; ENOTCONN if the unmount won the race with the reply.
    assert!(
        matches!(err.raw_os_error(), Some(libc::EIO) | Some(libc::ENOTCONN)),
        "{err}"
    );
    // The mount ends by itself, with an error that names the layer.
    let deadline = std::time::Instant::now() + DONE;
    let status = loop {
        if let Some(st) = m.child.try_wait()? {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lazyboot mount kept running after the digest mismatch"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "{status}");
    std::thread::sleep(Duration::from_millis(300));
    m.drain();
    let log = m.err_lines.join("\n");
    assert!(
        log.contains("does not match its digest") && log.contains(&base[7..]),
        "{log}"
    );
    assert!(!cache
        .join("index")
        .join(format!("{}.idx", &base[7..]))
        .exists());
    assert!(!cache.join("chunks").join(&base[7..]).exists());
    Ok(())
}

#[test]
fn verified_only_mounts_after_the_pass() -> Result<()> {
    if !common::require_root_and_tools("verified_only_mounts_after_the_pass", TOOLS) {
        return Ok(());
    }
    let h = Arc::new(held("prog/v", false)?);
    let mounting = spawn({
        let h = h.clone();
        move || h.mount(&["--no-background-fill", "--verified-only"])
    });
    let gate = &h.gate;
    gate.wait_held(DONE)?;
    assert!(
        mounting.within(PENDING).is_none(),
        "--verified-only mounted mid-pass"
    );
    gate.release();
    let m = mounting.within(DONE).context("never mounted")??;
    assert_eq!(
        std::fs::read(m.dir.join("zz-late.txt"))?,
        b"after the big file\n"
    );
    m.stop()?;
    Ok(())
}

#[test]
fn a_stalled_pass_gives_eio_within_the_read_timeout_then_recovers() -> Result<()> {
    if !common::require_root_and_tools("a_stalled_pass_gives_eio", TOOLS) {
        return Ok(());
    }
    let h = held("prog/stall", false)?;
    let m = h.mount(&["--no-background-fill", "--read-timeout", "3"])?;
    h.gate.wait_held(DONE)?;
    let dir = m.dir.clone();
    // The stream is held: for these requests nothing moves. Each must fail
    // (EIO) after about the read timeout instead of hanging.
    let waiting = spawn({
        let d = dir.clone();
        move || {
            [
                std::fs::read_dir(d.join("etc"))
                    .and_then(|rd| rd.collect::<std::io::Result<Vec<_>>>())
                    .map(|_| ()),
                std::fs::metadata(d.join("zz-late.txt")).map(|_| ()),
                read_range(&d.join("big/blob.bin"), (BIG - 4096) as u64, 4096).map(|_| ()),
            ]
        }
    });
    let results = waiting
        .within(DONE)
        .context("requests waiting on a stalled pass hung")?;
    for r in &results {
        let err = r.as_ref().expect_err("nothing can be answered yet");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    }
    // The pass goes on once the stream does, and then all of it is served.
    h.gate.release();
    let late = spawn({
        let d = dir.clone();
        move || std::fs::read(d.join("zz-late.txt"))
    });
    assert_eq!(late.within(DONE).context("late")??, b"after the big file\n");
    assert_eq!(
        read_range(&dir.join("big/blob.bin"), 0, BIG)?,
        h.img.big,
        "the big file after the pass"
    );
    m.stop()?;
    Ok(())
}

/// `serve` of `h`'s image to the node `pc` of `lab` with an ephemeral root
/// (its upper starts empty), `server_extra` in `[server]`; and a way to
/// connect to its NFS port from the node's address.
fn serve_nfs(
    h: &common::held::Held,
    lab: &NetLab,
    server_extra: &str,
) -> Result<(Server, impl Fn() -> Result<Client> + Clone + Send + 'static)> {
    let (tftp_port, nfs_port) = (common::free_udp_port(), common::free_tcp_port());
    let config = pc_config(
        lab,
        h.tmp.path(),
        &h.reference,
        (tftp_port, nfs_port),
        server_extra,
        "",
    )?;
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        text.replace("root = \"readonly\"", "root = \"ephemeral\""),
    )?;
    let serve = Serve::new(&config).start()?;
    let server = std::net::SocketAddr::from((lab.server_ip, nfs_port));
    let (ns, node_ip) = (lab.ns.clone(), lab.client_ip);
    Ok((serve, move || {
        Client::connect_in_netns(&ns, node_ip, server)
    }))
}

/// With `verified_only`, no byte of a layer is served before its digest is
/// checked: the node's MNT waits for the end of the pass.
#[test]
fn nfs_with_verified_only_waits_for_the_end_of_the_pass() -> Result<()> {
    if !common::require_root_and_tools("nfs_with_verified_only_waits", &["ip"]) {
        return Ok(());
    }
    let h = held("prog/nfsv", false)?;
    let lab = NetLab::new(true)?;
    let (_serve, connect) = serve_nfs(&h, &lab, "verified_only = true")?;
    h.gate.wait_held(DONE)?;
    let mounting = spawn(move || -> Result<Vec<u8>> {
        let mut c = connect()?;
        let root = c.mnt("/nodes/pc").map_err(anyhow::Error::msg)?;
        let f = c
            .walk(&root, "etc/early.txt")
            .map_err(|s| anyhow::anyhow!("{s:?}"))?;
        c.read_all(&f).map_err(|s| anyhow::anyhow!("{s:?}"))
    });
    assert!(
        mounting.within(PENDING).is_none(),
        "verified_only answered a node mid-pass"
    );
    h.gate.release();
    assert_eq!(
        mounting.within(DONE).context("never answered")??,
        b"read me while the pass runs\n"
    );
    Ok(())
}

/// `serve`'s NFS export of a node whose image is still streaming: MNT,
/// LOOKUP, GETATTR and READ of what the pass has passed are answered while
/// the pass is held; a name past the hold point, a whited-out name, a
/// listing and a change wait for the end of the pass; and every handle given
/// out before it names the same file afterwards (same handle, same file id).
#[test]
fn nfs_answers_what_the_pass_has_passed_before_it_ends() -> Result<()> {
    use common::nfsrpc::ROOT;
    use nfs3_server::nfs3_types::nfs3::{nfs_fh3, nfsstat3};

    if !common::require_root_and_tools("nfs_answers_what_the_pass_has_passed", &["ip"]) {
        return Ok(());
    }
    let h = held("prog/nfs", false)?;
    let lab = NetLab::new(true)?;
    let (_serve, connect) = serve_nfs(&h, &lab, "")?;
    h.gate.wait_held(DONE)?;

    // Mounted and answered while the base layer's stream is held.
    let early = spawn({
        let connect = connect.clone();
        move || -> Result<_> {
            let mut c = connect()?;
            let root = c.mnt("/nodes/pc").map_err(anyhow::Error::msg)?;
            let root_attr = c.getattr(&root).map_err(|s| anyhow::anyhow!("{s:?}"))?;
            let file = c
                .walk(&root, "etc/early.txt")
                .map_err(|s| anyhow::anyhow!("{s:?}"))?;
            let link = c
                .walk(&root, "etc/early-link.txt")
                .map_err(|s| anyhow::anyhow!("{s:?}"))?;
            let (fa, la) = (c.getattr(&file).unwrap(), c.getattr(&link).unwrap());
            let text = c.read_all(&file).unwrap();
            let top = c.walk(&root, "etc/top.txt").and_then(|f| c.read_all(&f));
            let big = c
                .walk(&root, "big/blob.bin")
                .map_err(|s| anyhow::anyhow!("{s:?}"))?;
            let big_size = c.getattr(&big).unwrap().size;
            let head = c.read_range(&big, 0, Some(1 << 20));
            Ok((
                root,
                root_attr,
                file,
                (fa, la),
                text,
                top,
                big,
                big_size,
                head,
            ))
        }
    });
    let (root, root_attr, file, (fa, la), text, top, big, big_size, head) =
        early
            .within(DONE)
            .context("nothing was answered while the pass was held")??;
    assert_eq!(text, b"read me while the pass runs\n");
    assert_eq!(top.unwrap(), b"from the top layer\n");
    assert_eq!(big_size, BIG as u64);
    assert_eq!(head.unwrap(), &h.img.big[..1 << 20]);
    assert_eq!((fa.fileid, fa.nlink), (la.fileid, 2), "one file, two names");
    // The root as the base layer's `./` entry describes it.
    assert_eq!(
        (root_attr.mode & 0o7777, root_attr.mtime.seconds),
        (0o751, 1_700_000_000)
    );

    // Not known yet, so not answered yet: each on a connection of its own.
    type Call = Box<dyn FnOnce(&mut Client, &nfs_fh3) -> Result<Vec<u8>, nfsstat3> + Send>;
    let pending = |f: Call| {
        let (connect, root) = (connect.clone(), root.clone());
        spawn(move || -> Result<Result<Vec<u8>, nfsstat3>> {
            let mut c = connect()?;
            Ok(f(&mut c, &root))
        })
    };
    let tail_at = (BIG - (1 << 20)) as u64;
    let tail = pending(Box::new(move |c, r| {
        let big = c.walk(r, "big/blob.bin")?;
        c.read_range(&big, tail_at, None)
    }));
    let late = pending(Box::new(|c, r| {
        c.walk(r, "zz-late.txt").and_then(|f| c.read_all(&f))
    }));
    let gone = pending(Box::new(|c, r| {
        c.walk(r, "etc/gone.txt").map(|_| Vec::new())
    }));
    let listing = pending(Box::new(|c, r| {
        let etc = c.walk(r, "etc")?;
        let mut names: Vec<String> = c
            .readdirplus(&etc)?
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect();
        names.sort();
        Ok(names.join(",").into_bytes())
    }));
    let change = pending(Box::new(|c, r| {
        c.mkdir(r, b"made", 0o755, ROOT).map(|_| Vec::new())
    }));
    assert!(
        tail.within(PENDING).is_none(),
        "bytes past the hold point were served"
    );
    for (what, p) in [
        ("a name past the hold point", &late),
        ("a whited-out name", &gone),
        ("a listing", &listing),
        ("a change", &change),
    ] {
        assert!(
            p.within(Duration::ZERO).is_none(),
            "{what} was answered mid-pass"
        );
    }

    h.gate.release();
    assert_eq!(
        tail.within(DONE).context("tail")??.unwrap(),
        &h.img.big[BIG - (1 << 20)..]
    );
    assert_eq!(
        late.within(DONE).context("late")??.unwrap(),
        b"after the big file\n"
    );
    assert_eq!(
        gone.within(DONE).context("gone")??,
        Err(nfsstat3::NFS3ERR_NOENT)
    );
    assert_eq!(
        String::from_utf8(listing.within(DONE).context("listing")??.unwrap())?,
        "early-link.txt,early.txt,top.txt"
    );
    change.within(DONE).context("mkdir")??.unwrap();

    // Handles from before the end of the pass name the same files after it.
    let mut c = connect()?;
    let again = c.walk(&root, "etc/early.txt").unwrap();
    assert_eq!(
        again.data, file.data,
        "a lookup after the pass gives the same handle"
    );
    assert_eq!(c.getattr(&file).unwrap().fileid, fa.fileid);
    assert_eq!(c.read_all(&file).unwrap(), b"read me while the pass runs\n");
    assert_eq!(c.getattr(&big).unwrap().size, BIG as u64);
    assert_eq!(
        c.read_range(&big, tail_at, None).unwrap(),
        &h.img.big[BIG - (1 << 20)..]
    );
    assert!(
        c.walk(&root, "made").is_ok(),
        "the change made after the pass is there"
    );
    Ok(())
}
