//! Node roots over NFS end to end (the lab: `common::nfsroot`): the tree
//! over NFS vs `umoci unpack`; persistent, read-only and ephemeral roots;
//! handles across a restart and `kill -9` mid-copy; forged and foreign
//! handles. The changes a node makes to its root, compared with the same
//! changes on a local copy, are in integration/nfs_root_changes.rs.

mod common;

use std::time::Instant;

use anyhow::Result;
use common::nfsroot::{fixture_file, owner, runnable, snapshot_nfs, Lab, LabOptions, NodeSpec};
use common::nfsrpc;
use common::snapshot::Kind;
use common::{paths, pseudo_random, sha256_hex, CompareOptions};
use nfs3_server::nfs3_types::nfs3::{nfs_fh3, nfsstat3, READ3args, READ3res};

/// Every path of the image as a read-only node sees it over NFS equals
/// `umoci unpack`: type, mode with setuid/setgid/sticky, owner, size,
/// content, symlink target, device numbers, hard-link groups (same file id),
/// nlink of non-directories and mtimes. Only xattrs are left out (NFSv3 has
/// no way to read them), and directory nlink (as for every comparison).
#[test]
fn nfs_root_equals_umoci_unpack() -> Result<()> {
    if !runnable("nfs_root_equals_umoci_unpack") {
        return Ok(());
    }
    let started = Instant::now();
    let lab = Lab::start(&[NodeSpec::new("ro", 2, "readonly")], false)?;
    let mut c = lab.rpc(2);
    let root = c.mnt("/nodes/ro").unwrap();
    let got = snapshot_nfs(&mut c, &root, "nfs");

    let fx = common::shared_fixture()?;
    let mut want = common::snapshot(&fx.rootfs)?.with_label("umoci");
    let with_xattrs = want.entries.values().filter(|e| !e.xattrs.is_empty());
    assert!(with_xattrs.count() >= 4, "the fixture has xattrs to ignore");
    for e in want.entries.values_mut() {
        e.xattrs.clear();
    }
    common::assert_same(&want, &got, &CompareOptions::default());

    // The comparison covered what it is meant to (not two empty trees).
    assert!(got.entries.len() > 100, "{} paths", got.entries.len());
    assert_eq!(got.entry(paths::SETUID).mode, 0o4755);
    assert_eq!(got.entry(paths::SETGID_DIR).mode, 0o2775);
    assert_eq!(got.entry(paths::STICKY_DIR).mode, 0o1777);
    assert_eq!(got.entry(paths::BLOCK_DEV).rdev, Some((7, 0)));
    assert_eq!(got.entry(paths::FIFO).kind, Kind::Fifo);
    assert_eq!(
        got.entry(paths::HARDLINK_GROUP[0]).hardlinks.as_deref(),
        Some(&paths::HARDLINK_GROUP.map(String::from)[..])
    );
    for gone in paths::DELETED {
        assert!(!got.contains(gone), "{gone} visible over NFS");
    }
    eprintln!("nfs_root_equals_umoci_unpack: {:.1?}", started.elapsed());
    Ok(())
}

/// A persistent node writes a new file (as uid 1000) and overwrites two
/// image files (one longer, one much shorter than before): nfs-cat reads
/// them back, the upper directory on the server holds them with the right
/// owners (the caller's for a new file, the image's for copied-up ones), a
/// server restart keeps them, and the image underneath and another node's
/// view are unchanged.
#[test]
fn persistent_upper_takes_writes_and_survives_restart() -> Result<()> {
    if !runnable("persistent_upper_takes_writes_and_survives_restart") {
        return Ok(());
    }
    let started = Instant::now();
    let mut lab = Lab::start(
        &[
            NodeSpec::new("keep", 2, "persistent"),
            NodeSpec::new("other", 3, "persistent"),
        ],
        false,
    )?;
    lab.prefer_source(2);
    let local = tempfile::tempdir()?;
    let new_data = pseudo_random(3 * 1024 * 1024 + 12345, 1);
    let longer = b"overwritten by the node, longer than the image's version\n".to_vec();
    let shorter = b"short now\n".to_vec();
    std::fs::write(local.path().join("new"), &new_data)?;
    const NEW: &str = "/special/sticky-dir/new.bin";
    const NOBODY: &str = "/owners/nobody-65534-100";
    let text_before = fixture_file(paths::TEXT_FILE);
    assert!(text_before.len() > 1 << 20);

    lab.put(
        &local.path().join("new"),
        &format!("/nodes/keep{NEW}"),
        Some((1000, 1000)),
    )
    .unwrap();
    // libnfs' nfs-cp cannot replace an existing file (its CREATE is answered
    // NFS3ERR_EXIST), so overwrite as the kernel does: SETATTR size 0, WRITE.
    {
        let mut c = lab.rpc(2);
        let root = c.mnt("/nodes/keep").unwrap();
        for (path, data) in [(NOBODY, &longer), (paths::TEXT_FILE, &shorter)] {
            let fh = c.walk(&root, path).unwrap();
            c.overwrite(&fh, data, nfsrpc::ROOT).unwrap();
        }
    }

    let check = |lab: &Lab, when: &str| {
        let cat = |p: &str| lab.cat(&format!("/nodes/keep{p}")).unwrap();
        assert!(cat(NEW) == new_data, "{when}: {NEW} differs");
        assert_eq!(cat(NOBODY), longer, "{when}");
        assert_eq!(cat(paths::TEXT_FILE), shorter, "{when}");
        // Attributes over NFS.
        let mut c = lab.rpc(2);
        let root = c.mnt("/nodes/keep").unwrap();
        let fh = c.walk(&root, NEW).unwrap();
        let a = c.getattr(&fh).unwrap();
        assert_eq!((a.uid, a.gid, a.size), (1000, 1000, new_data.len() as u64));
        let fh = c.walk(&root, NOBODY).unwrap();
        let a = c.getattr(&fh).unwrap();
        assert_eq!((a.uid, a.gid, a.mode), (65534, 100, 0o644), "{when}");
        // On the server's disk.
        let up = lab.upper("keep");
        let on_disk = |p: &str| up.join(p.trim_start_matches('/'));
        assert!(std::fs::read(on_disk(NEW)).unwrap() == new_data, "{when}");
        assert_eq!(owner(&on_disk(NEW)).0, 1000, "{when}");
        assert_eq!(owner(&on_disk(NEW)).1, 1000, "{when}");
        assert_eq!(std::fs::read(on_disk(NOBODY)).unwrap(), longer, "{when}");
        assert_eq!(owner(&on_disk(NOBODY)), (65534, 100, 0o644), "{when}");
        assert_eq!(
            std::fs::read(on_disk(paths::TEXT_FILE)).unwrap(),
            shorter,
            "{when}"
        );
        assert_eq!(owner(&on_disk(paths::TEXT_FILE)), (0, 0, 0o644), "{when}");
        // The sticky directory was copied up with its mode.
        assert_eq!(owner(&on_disk(paths::STICKY_DIR)), (0, 0, 0o1777), "{when}");
        // Another node still sees the image.
        let mut o = lab.rpc(3);
        let oroot = o.mnt("/nodes/other").unwrap();
        assert_eq!(o.walk(&oroot, NEW).err(), Some(nfsstat3::NFS3ERR_NOENT));
        let fh = o.walk(&oroot, paths::TEXT_FILE).unwrap();
        assert!(
            o.read_all(&fh).unwrap() == text_before,
            "{when}: image changed"
        );
        let fh = o.walk(&oroot, NOBODY).unwrap();
        assert_eq!(o.read_all(&fh).unwrap(), fixture_file(NOBODY), "{when}");
    };
    check(&lab, "before the restart");
    lab.restart(false)?;
    check(&lab, "after the restart");
    assert!(
        !lab.upper("other").join("special").exists(),
        "the other node's upper got the writes"
    );
    eprintln!(
        "persistent_upper_takes_writes_and_survives_restart: {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// A copy out of the image interrupted by `kill -9` of the server continues
/// after a restart with the handle obtained before it: handles (signed with
/// the persisted key, naming stable file ids) stay valid, and the bytes put
/// together are the image's. The same holds for a file the node created in
/// its upper.
#[test]
fn server_restart_mid_copy_and_continue() -> Result<()> {
    if !runnable("server_restart_mid_copy_and_continue") {
        return Ok(());
    }
    let started = Instant::now();
    let mut lab = Lab::start(&[NodeSpec::new("n", 2, "persistent")], false)?;
    lab.prefer_source(2);
    let mut c = lab.rpc(2);
    let root = c.mnt("/nodes/n").unwrap();
    let large = c.walk(&root, paths::LARGE_FILE).unwrap();
    let before = c.getattr(&large).unwrap();
    let want = fixture_file(paths::LARGE_FILE);
    assert_eq!(before.size, want.len() as u64);
    assert!(before.size >= 8 << 20, "large.bin is {} bytes", before.size);

    let local = tempfile::tempdir()?;
    let mine = pseudo_random(2 * 1024 * 1024 + 7, 3);
    std::fs::write(local.path().join("mine"), &mine)?;
    lab.put(&local.path().join("mine"), "/nodes/n/mine.bin", None)
        .unwrap();
    let mine_fh = c.walk(&root, "mine.bin").unwrap();
    let mine_id = c.getattr(&mine_fh).unwrap().fileid;

    let half = before.size / 2 + 4321;
    let mut got = c.read_range(&large, 0, Some(half)).unwrap();
    assert_eq!(got.len() as u64, half);

    lab.restart(true)?;
    // The old connection is gone with the old process.
    let mut c = lab.rpc(2);
    let after = c.getattr(&large).unwrap();
    assert_eq!(
        (after.fileid, after.size, after.fsid),
        (before.fileid, before.size, before.fsid)
    );
    got.extend(c.read_range(&large, half, None).unwrap());
    assert_eq!(got.len(), want.len());
    assert_eq!(
        sha256_hex(&got),
        sha256_hex(&want),
        "large.bin over a restart"
    );
    assert_eq!(c.getattr(&mine_fh).unwrap().fileid, mine_id);
    assert!(
        c.read_all(&mine_fh).unwrap() == mine,
        "upper file over a restart"
    );
    // The root handle from before still works for lookups.
    assert_eq!(c.walk(&root, paths::LARGE_FILE).unwrap(), large);
    eprintln!(
        "server_restart_mid_copy_and_continue: {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// Handles cannot be forged or altered (BADHANDLE), a genuine handle of
/// node A is refused from node B's address and from a stranger's (ACCES),
/// and so is a MNT of A's export; each node's own access keeps working.
#[test]
fn forged_handle_and_foreign_client_rejected() -> Result<()> {
    if !runnable("forged_handle_and_foreign_client_rejected") {
        return Ok(());
    }
    let started = Instant::now();
    let lab = Lab::start(
        &[
            NodeSpec::new("alpha", 2, "persistent"),
            NodeSpec::new("beta", 3, "persistent"),
        ],
        false,
    )?;
    let stranger = 9;
    lab.net.add_client_ip(lab.ip(stranger))?;
    let mut a = lab.rpc(2);
    let a_root = a.mnt("/nodes/alpha").unwrap();
    let file = a.walk(&a_root, "etc/target").unwrap();
    let attr = a.getattr(&file).unwrap();
    assert_eq!(a.read_all(&file).unwrap(), b"I am /etc/target\n");

    // Altered handles: file id (another valid one), export id, tag, length.
    let altered = |h: &nfs_fh3, i: usize, x: u8| {
        let mut d = h.data.to_vec();
        d[i] ^= x;
        nfsrpc::fh(d)
    };
    assert_eq!(
        a.getattr_status(&altered(&file, 15, 1)),
        nfsstat3::NFS3ERR_BADHANDLE
    );
    assert_eq!(
        a.getattr_status(&altered(&file, 31, 0x80)),
        nfsstat3::NFS3ERR_BADHANDLE
    );
    assert_eq!(
        a.getattr_status(&altered(&file, 0, 3)),
        nfsstat3::NFS3ERR_BADHANDLE
    );
    let mut forged = a_root.data.to_vec();
    forged[8..16].copy_from_slice(&attr.fileid.to_be_bytes());
    assert_eq!(
        a.getattr_status(&nfsrpc::fh(forged)),
        nfsstat3::NFS3ERR_BADHANDLE,
        "root's tag on another file id"
    );
    let mut b = lab.rpc(3);
    let b_root = b.mnt("/nodes/beta").unwrap();
    let b_file = b.walk(&b_root, "etc/target").unwrap();
    assert_ne!(b_file, file, "handles name their export");
    let mut moved = file.data.to_vec();
    moved[4..8].copy_from_slice(&b_file.data[4..8]);
    let moved = nfsrpc::fh(moved);
    assert_eq!(b.getattr_status(&moved), nfsstat3::NFS3ERR_BADHANDLE);
    assert_eq!(a.getattr_status(&moved), nfsstat3::NFS3ERR_BADHANDLE);
    let short = nfsrpc::fh(file.data[..31].to_vec());
    assert_eq!(a.getattr_status(&short), nfsstat3::NFS3ERR_BADHANDLE);

    // A's genuine handles from B's address and a stranger's.
    let mut s = lab.rpc(stranger);
    for (who, c) in [("beta", &mut b), ("stranger", &mut s)] {
        assert_eq!(c.getattr_status(&file), nfsstat3::NFS3ERR_ACCES, "{who}");
        assert_eq!(c.getattr_status(&a_root), nfsstat3::NFS3ERR_ACCES, "{who}");
        assert_eq!(
            c.read(&file, 0, 100).err(),
            Some(nfsstat3::NFS3ERR_ACCES),
            "{who}"
        );
        assert_eq!(
            c.lookup(&a_root, b"etc").err(),
            Some(nfsstat3::NFS3ERR_ACCES),
            "{who}"
        );
        assert_eq!(
            c.readdirplus(&a_root).err(),
            Some(nfsstat3::NFS3ERR_ACCES),
            "{who}"
        );
        assert_eq!(c.mnt("/nodes/alpha").unwrap_err(), "MNT3ERR_ACCES", "{who}");
    }
    assert_eq!(s.mnt("/nodes/beta").unwrap_err(), "MNT3ERR_ACCES");
    assert_eq!(b.mnt("/nodes/nope").unwrap_err(), "MNT3ERR_NOENT");
    // READ as a raw reply too: an error status, no data.
    let r: READ3res = b.nfs(
        6,
        nfsrpc::ROOT,
        &READ3args {
            file: file.clone(),
            offset: 0,
            count: 100,
        },
    );
    assert_eq!(nfsrpc::status(r), nfsstat3::NFS3ERR_ACCES);

    // libnfs from beta's address: its own export yes, alpha's no.
    lab.prefer_source(3);
    assert_eq!(
        lab.cat("/nodes/beta/etc/target").unwrap(),
        b"I am /etc/target\n"
    );
    let err = lab.cat("/nodes/alpha/etc/target").unwrap_err();
    assert!(err.contains("ACCES"), "{err}");
    let (ok, _, _) = lab.tool(&["nfs-ls", &lab.url("/nodes/alpha", "")]);
    assert!(!ok, "nfs-ls of alpha's export from beta's address");

    // Each owner still gets on.
    assert_eq!(a.getattr(&file).unwrap().fileid, attr.fileid);
    assert_eq!(b.read_all(&b_file).unwrap(), b"I am /etc/target\n");
    eprintln!(
        "forged_handle_and_foreign_client_rejected: {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// A read-only node cannot write (NFS3ERR_ROFS, nothing on the server's
/// disk); an ephemeral node's writes last for one boot: they survive a new
/// MNT within the boot, and are gone at the first MNT after the node's
/// next DHCP DISCOVER (a new boot), while a persistent node keeps its
/// writes over the same sequence.
#[test]
fn readonly_and_ephemeral_roots() -> Result<()> {
    if !runnable("readonly_and_ephemeral_roots") {
        return Ok(());
    }
    let started = Instant::now();
    const RO: NodeSpec = NodeSpec::new("ro", 2, "readonly");
    const EPH: NodeSpec = NodeSpec::new("eph", 3, "ephemeral");
    const KEEP: NodeSpec = NodeSpec::new("keep", 4, "persistent");
    let lab = Lab::start(&[RO, EPH, KEEP], true)?;
    let (ro, eph, keep) = (RO, EPH, KEEP);
    let local = tempfile::tempdir()?;
    let data = pseudo_random(1024 * 1024 + 99, 5);
    let small = b"changed by the node\n".to_vec();
    std::fs::write(local.path().join("data"), &data)?;
    std::fs::write(local.path().join("small"), &small)?;
    let image_small = fixture_file("/data/small.txt");

    // Read-only: creating and overwriting both fail with ROFS.
    lab.prefer_source(ro.last);
    let err = lab
        .put(&local.path().join("data"), "/nodes/ro/new.bin", None)
        .unwrap_err();
    assert!(err.contains("NFS3ERR_ROFS"), "{err}");
    let err = lab
        .put(
            &local.path().join("small"),
            "/nodes/ro/data/small.txt",
            None,
        )
        .unwrap_err();
    assert!(err.contains("NFS3ERR_ROFS"), "{err}");
    let mut c = lab.rpc(ro.last);
    let root = c.mnt("/nodes/ro").unwrap();
    let fh = c.walk(&root, "data/small.txt").unwrap();
    assert_eq!(
        c.overwrite(&fh, &small, nfsrpc::ROOT),
        Err(nfsstat3::NFS3ERR_ROFS)
    );
    assert_eq!(
        c.write(&fh, 0, &small, nfsrpc::ROOT),
        Err(nfsstat3::NFS3ERR_ROFS)
    );
    assert_eq!(lab.cat("/nodes/ro/data/small.txt").unwrap(), image_small);
    assert!(lab.cat("/nodes/ro/new.bin").is_err());
    let ro_upper = lab.upper("ro");
    let leftovers = std::fs::read_dir(&ro_upper).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "{} not empty", ro_upper.display());

    // First boot of the two writable nodes, then writes.
    for n in [&eph, &keep] {
        lab.discover(n)?;
        lab.prefer_source(n.last);
        let root = format!("/nodes/{}", n.name);
        lab.put(&local.path().join("data"), &format!("{root}/new.bin"), None)
            .unwrap();
        let mut c = lab.rpc(n.last);
        let root = c.mnt(&root).unwrap();
        let fh = c.walk(&root, "data/small.txt").unwrap();
        c.overwrite(&fh, &small, nfsrpc::ROOT).unwrap();
    }
    // Mounted again within the same boot: still there (each nfs-cat mounts).
    for n in [&eph, &keep] {
        lab.prefer_source(n.last);
        let root = format!("/nodes/{}", n.name);
        assert!(
            lab.cat(&format!("{root}/new.bin")).unwrap() == data,
            "{}",
            n.name
        );
        assert_eq!(lab.cat(&format!("{root}/data/small.txt")).unwrap(), small);
        assert!(lab.upper(n.name).join("new.bin").exists(), "{}", n.name);
    }

    // A new boot of both.
    for n in [&eph, &keep] {
        lab.discover(n)?;
    }
    lab.prefer_source(eph.last);
    let err = lab.cat("/nodes/eph/new.bin").unwrap_err();
    assert!(err.contains("NOENT"), "{err}");
    assert_eq!(lab.cat("/nodes/eph/data/small.txt").unwrap(), image_small);
    assert!(!lab.upper("eph").join("new.bin").exists());
    assert!(!lab.upper("eph").join("data/small.txt").exists());
    // The image is all there is again: a write works as on a fresh root.
    lab.put(&local.path().join("small"), "/nodes/eph/again.txt", None)
        .unwrap();
    assert_eq!(lab.cat("/nodes/eph/again.txt").unwrap(), small);

    lab.prefer_source(keep.last);
    assert!(lab.cat("/nodes/keep/new.bin").unwrap() == data);
    assert_eq!(lab.cat("/nodes/keep/data/small.txt").unwrap(), small);
    assert!(lab.upper("keep").join("new.bin").exists());
    eprintln!("readonly_and_ephemeral_roots: {:.1?}", started.elapsed());
    Ok(())
}

/// An ephemeral node boots, writes, and goes on running while the server
/// restarts: it keeps its files (its handles still work). When it boots
/// again after that, the files are gone, as at any other boot: the boot
/// counter starting again from zero in the new server process must not be
/// mistaken for the boot the upper was last reset for.
#[test]
fn ephemeral_root_resets_at_the_first_boot_after_a_server_restart() -> Result<()> {
    if !runnable("ephemeral_root_resets_at_the_first_boot_after_a_server_restart") {
        return Ok(());
    }
    let started = Instant::now();
    const EPH: NodeSpec = NodeSpec::new("eph", 2, "ephemeral");
    let mut lab = Lab::start(&[EPH], true)?;
    lab.prefer_source(EPH.last);
    let local = tempfile::tempdir()?;
    let mine = b"written during the first boot\n".to_vec();
    std::fs::write(local.path().join("mine"), &mine)?;

    lab.discover(&EPH)?;
    lab.put(&local.path().join("mine"), "/nodes/eph/mine.txt", None)
        .unwrap();
    let mut c = lab.rpc(EPH.last);
    let root = c.mnt("/nodes/eph").unwrap();
    let fh = c.walk(&root, "mine.txt").unwrap();

    lab.restart(false)?;
    let mut c = lab.rpc(EPH.last);
    assert_eq!(c.read_all(&fh).unwrap(), mine, "lost over a server restart");

    lab.discover(&EPH)?;
    let err = lab.cat("/nodes/eph/mine.txt").unwrap_err();
    assert!(err.contains("NOENT"), "kept over a boot: {err}");
    assert!(!lab.upper("eph").join("mine.txt").exists());
    eprintln!(
        "ephemeral_root_resets_at_the_first_boot_after_a_server_restart: {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// `/metrics` as the Prometheus client library's own parser reads it
/// (Debian's python3-prometheus-client): sample name with labels -> value.
fn scrape(lab: &Lab) -> Result<std::collections::BTreeMap<String, f64>> {
    let url = format!("http://{}:8080/metrics", lab.net.server_ip);
    let text = common::curl_get(&url, &[])?;
    let parse = "import sys, json\n\
        from prometheus_client.parser import text_string_to_metric_families as families\n\
        out = {}\n\
        for f in families(sys.stdin.read()):\n\
        \x20   for s in f.samples:\n\
        \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
        \x20       out[s.name + '{' + labels + '}'] = s.value\n\
        print(json.dumps(out))\n";
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", parse])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&text)?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&text)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `/metrics` parses with the Prometheus client library's parser, and its
/// counters move while a node boots: DHCP answers, MOUNT and NFS calls,
/// bytes read, registry traffic, cache lookups, and the node shows as
/// booting.
#[test]
fn metrics_parse_and_move_during_a_boot() -> Result<()> {
    if !runnable("metrics_parse_and_move_during_a_boot") || !common::have_tool("/usr/bin/python3") {
        return Ok(());
    }
    let spec = NodeSpec::new("m1", 2, "readonly");
    let lab = Lab::start(&[spec], true)?;
    lab.prefer_source(2);
    let before = scrape(&lab)?;
    lab.lease(&NodeSpec::new("m1", 2, "readonly"))?;
    let data = lab
        .cat(&format!("/nodes/m1{}", paths::TEXT_FILE))
        .map_err(anyhow::Error::msg)?;
    assert_eq!(data, fixture_file(paths::TEXT_FILE));
    // The iPXE ROM a PXE node chains into, over TFTP.
    let script = lab
        .net
        .client("curl")
        .args(["-sSf", "--max-time", "30"])
        .arg(format!(
            "tftp://{}:{}/undionly.kpxe",
            lab.net.server_ip, lab.tftp_port
        ))
        .output()?;
    assert!(
        script.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&script.stderr),
        common::tail(&lab.server.log(), 20)
    );
    let after = scrape(&lab)?;
    let moved =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    assert!(
        moved("lazyboot_dhcp_packets_total{outcome=answered}") >= 2.0,
        "{after:?}"
    );
    assert!(
        moved("lazyboot_nfs_calls_total{program=mount}") >= 1.0,
        "{after:?}"
    );
    assert!(
        moved("lazyboot_nfs_calls_total{program=nfs}") >= 2.0,
        "{after:?}"
    );
    assert!(
        moved("lazyboot_nfs_read_bytes_total{}") >= data.len() as f64,
        "{after:?}"
    );
    assert!(!script.stdout.is_empty(), "an empty iPXE ROM");
    assert!(moved("lazyboot_tftp_requests_total{}") >= 1.0, "{after:?}");
    assert!(
        moved("lazyboot_tftp_sent_bytes_total{}") >= script.stdout.len() as f64,
        "{after:?}"
    );
    assert!(
        after["lazyboot_registry_received_bytes_total{}"] > 0.0,
        "{after:?}"
    );
    assert!(
        after["lazyboot_registry_latency_seconds_count{}"] > 0.0,
        "{after:?}"
    );
    assert!(
        moved("lazyboot_cache_lookups_total{result=hit}")
            + moved("lazyboot_cache_lookups_total{result=miss}")
            >= 1.0,
        "{after:?}"
    );
    assert_eq!(after["lazyboot_nodes{state=booting}"], 1.0, "{after:?}");
    Ok(())
}

/// A two-platform image in `reg` as `repo:1`: an OCI index of an amd64
/// and an arm64 image whose /etc/arch says which one it is.
fn push_two_platform_image(
    dir: &std::path::Path,
    reg: &common::Registry,
    repo: &str,
) -> Result<()> {
    let mut layouts = Vec::new();
    for arch in ["amd64", "arm64"] {
        let d = dir.join(arch);
        std::fs::create_dir_all(&d)?;
        common::netboot::one_layer_image(
            &d,
            &format!("mkdir -p $r/etc && echo {arch} > $r/etc/arch"),
        )?;
        common::sh(&format!(
            "umoci config --image {l}:os --os linux --architecture {arch}",
            l = d.join("layout").display()
        ))?;
        layouts.push(d.join("layout"));
    }
    let platforms: Vec<_> = layouts
        .iter()
        .map(|layout| (layout.as_path(), "os"))
        .collect();
    common::push_platforms(reg, &format!("{repo}:1"), &platforms)?;
    Ok(())
}

/// One tag, two platforms, each node its own: the configured platform wins
/// over what the node's firmware says; the client architecture a node's
/// DHCP request names (option 93) picks the platform of a node that
/// configures none; without either, the node kind's default. A platform
/// the image does not have is a clear error, in the inventory and the
/// node's boot profile.
#[test]
fn each_node_boots_its_own_platform_of_one_tag() -> Result<()> {
    if !runnable("each_node_boots_its_own_platform_of_one_tag") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let reg = common::Registry::start()?;
    push_two_platform_image(tmp.path(), &reg, "multi/os")?;
    let configured = NodeSpec::new("configured", 2, "readonly").with_platform("linux/amd64");
    let by_dhcp = NodeSpec::new("by-dhcp", 3, "readonly");
    let by_kind = NodeSpec::new("by-kind", 4, "readonly");
    let missing = NodeSpec::new("missing", 5, "readonly").with_platform("linux/riscv64");
    let lab = Lab::start_with(
        &[
            NodeSpec::new("configured", 2, "readonly").with_platform("linux/amd64"),
            NodeSpec::new("by-dhcp", 3, "readonly"),
            NodeSpec::new("by-kind", 4, "readonly"),
            NodeSpec::new("missing", 5, "readonly").with_platform("linux/riscv64"),
        ],
        true,
        LabOptions {
            image: Some(reg.reference("multi/os:1")),
            ..LabOptions::default()
        },
    )?;
    // Both firmware say "ARM 64-bit UEFI" (11).
    lab.discover_with(&configured, &["93=h:000b"])?;
    lab.discover_with(&by_dhcp, &["93=h:000b"])?;
    lab.discover_with(&missing, &["93=h:000b"])?;
    for (spec, want) in [
        (&configured, "amd64"),
        (&by_dhcp, "arm64"),
        (&by_kind, "amd64"),
    ] {
        lab.prefer_source(spec.last);
        let got = lab
            .cat(&format!("/nodes/{}/etc/arch", spec.name))
            .map_err(anyhow::Error::msg)?;
        assert_eq!(String::from_utf8_lossy(&got).trim(), want, "{}", spec.name);
    }
    lab.prefer_source(missing.last);
    let err = lab
        .cat("/nodes/missing/etc/arch")
        .expect_err("a platform the image lacks");
    assert!(!err.is_empty());
    let url = format!("http://{}:8080/api/v1/nodes/missing", lab.net.server_ip);
    let node: serde_json::Value = serde_json::from_slice(&common::curl_get(&url, &[])?)?;
    let failed = node["failed"].as_str().unwrap_or_default().to_string();
    assert!(
        failed.contains("no image for platform linux/riscv64") && failed.contains("linux/arm64"),
        "{node}"
    );
    let mut lab = lab;
    lab.server.stop()?;
    let profile = common::profile_json(&lab.state(), "missing", 1)?;
    let errors = profile["profile"]["errors"].to_string();
    assert!(
        errors.contains("no image for platform linux/riscv64"),
        "{errors}\n{}",
        common::tail(&lab.server.log(), 30)
    );
    Ok(())
}
