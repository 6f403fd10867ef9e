//! What a node does to its root over NFS, end to end (the lab:
//! `common::nfsroot`): the overlay's copy-up (a write into the middle of a
//! large image file, a hard-link group, removals and renames) over `kill -9`
//! of the server, and many changes made both over NFS and to a local copy of
//! the image, whose trees must then be the same.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use common::nfsroot::{fixture_file, runnable, snapshot_nfs, Lab, NodeSpec};
use common::nfsrpc::{self, Client};
use common::snapshot::Snapshot;
use common::{paths, CompareOptions};
use nfs3_server::nfs3_types::nfs3::{nfs_fh3, nfsstat3, sattr3, stable_how, Nfs3Option};

/// The overlay's copy-up end to end, and over `kill -9` of the server: an
/// UNSTABLE write into the middle of the large lazily fetched image file
/// (never committed) leaves every other byte as in the image; overwriting
/// one name of a 4-name hard-link group (one name from a lower layer)
/// changes all four, which keep one file id and nlink 4; a removed image
/// file stays removed; a renamed image file keeps its file id, and handles
/// taken before all this (and before the crash) still reach the files.
#[test]
fn copy_up_keeps_bytes_links_and_ids_over_a_crash() -> Result<()> {
    if !runnable("copy_up_keeps_bytes_links_and_ids_over_a_crash") {
        return Ok(());
    }
    let started = Instant::now();
    let mut lab = Lab::start(&[NodeSpec::new("n", 2, "persistent")], false)?;
    let mut c = lab.rpc(2);
    let root = c.mnt("/nodes/n").unwrap();

    let mut large_want = fixture_file(paths::LARGE_FILE);
    let large = c.walk(&root, paths::LARGE_FILE).unwrap();
    let large_id = c.getattr(&large).unwrap().fileid;
    let patch_at = large_want.len() * 5 / 8 + 3;
    let patch = b"PATCHED BY THE NODE";
    c.write_with(
        &large,
        patch_at as u64,
        patch,
        nfsrpc::ROOT,
        stable_how::UNSTABLE,
    )
    .unwrap();
    large_want[patch_at..patch_at + patch.len()].copy_from_slice(patch);

    let payload = b"new payload, seen through all four names\n";
    let link_a = c.walk(&root, "hardlinks/link-a").unwrap();
    let link_id = c.getattr(&link_a).unwrap().fileid;
    c.overwrite(&link_a, payload, nfsrpc::ROOT).unwrap();

    let etc = c.walk(&root, "etc").unwrap();
    c.remove(&etc, b"target", nfsrpc::ROOT).unwrap();

    let data = c.walk(&root, "data").unwrap();
    let small = c.walk(&root, "data/small.txt").unwrap();
    let small_id = c.getattr(&small).unwrap().fileid;
    c.rename((&data, b"small.txt"), (&data, b"renamed.txt"), nfsrpc::ROOT)
        .unwrap();
    let small_want = fixture_file("/data/small.txt");

    let check = |c: &mut Client, when: &str| {
        let a = c.getattr(&large).unwrap();
        assert_eq!(
            (a.fileid, a.size),
            (large_id, large_want.len() as u64),
            "{when}"
        );
        let got = c.read_all(&large).unwrap();
        assert!(
            got == large_want,
            "{when}: large.bin differs after a copy-up"
        );
        for p in paths::HARDLINK_GROUP {
            let fh = c.walk(&root, p).unwrap();
            let a = c.getattr(&fh).unwrap();
            assert_eq!((a.fileid, a.nlink), (link_id, 4), "{when}: {p}");
            assert_eq!(c.read_all(&fh).unwrap(), payload, "{when}: {p}");
        }
        assert_eq!(c.read_all(&link_a).unwrap(), payload, "{when}");
        assert_eq!(
            c.lookup(&etc, b"target").err(),
            Some(nfsstat3::NFS3ERR_NOENT),
            "{when}"
        );
        let names: Vec<Vec<u8>> = c
            .readdirplus(&etc)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(!names.contains(&b"target".to_vec()), "{when}: {names:?}");
        let relative = c.walk(&root, paths::LINK_RELATIVE).unwrap();
        assert_eq!(c.readlink(&relative).unwrap(), b"../etc/target");
        assert_eq!(c.read_all(&small).unwrap(), small_want, "{when}");
        let renamed = c.walk(&root, "data/renamed.txt").unwrap();
        assert_eq!(c.getattr(&renamed).unwrap().fileid, small_id, "{when}");
        assert_eq!(
            c.lookup(&data, b"small.txt").err(),
            Some(nfsstat3::NFS3ERR_NOENT),
            "{when}"
        );
        let names: Vec<Vec<u8>> = c
            .readdirplus(&data)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "{when}: duplicates in {names:?}");
        assert_eq!(
            sorted,
            [&b"large.bin"[..], b"renamed.txt", b"text.txt"],
            "{when}"
        );
    };
    check(&mut c, "before the crash");
    lab.restart(true)?;
    let mut c = lab.rpc(2);
    check(&mut c, "after kill -9 and a restart");
    // The copy-up is in the node's upper, whole.
    let up = lab.upper("n");
    assert_eq!(
        std::fs::metadata(up.join("data/large.bin"))?.len(),
        large_want.len() as u64
    );
    eprintln!(
        "copy_up_keeps_bytes_links_and_ids_over_a_crash: {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// One change a node makes to its root.
#[derive(Clone, Copy)]
enum Op {
    /// Replace the content (truncate + write), as `cred`.
    Write(&'static str, &'static [u8], (u32, u32)),
    Chmod(&'static str, u32),
    Chown(&'static str, u32, u32),
    Truncate(&'static str, u64),
    Remove(&'static str),
    Rmdir(&'static str),
    Mkdir(&'static str, u32, (u32, u32)),
    Create(&'static str, u32, (u32, u32), &'static [u8]),
    Symlink(&'static str, &'static str, (u32, u32)),
    Mkfifo(&'static str, u32, (u32, u32)),
    /// (existing, new name)
    Link(&'static str, &'static str),
    Rename(&'static str, &'static str, (u32, u32)),
}

const USER: (u32, u32) = nfsrpc::USER;
const ROOT: (u32, u32) = nfsrpc::ROOT;

/// What a node does to its root: rewrites, attribute changes, removals
/// (whiteouts), an opaque directory, creations with inherited groups,
/// links, renames, as root and as uid 1000.
const OPS: &[Op] = &[
    Op::Write("/hardlinks/link-b", b"rewritten through link-b\n", ROOT),
    Op::Chmod("/files/chmod-only.sh", 0o700),
    Op::Chown("/special/setuid-root", 1000, 1000),
    Op::Chown("/owners/root-0-0", 65534, 100),
    Op::Truncate("/data/text.txt", 1000),
    Op::Write("/owners/user-1000-1000", b"the owner writes\n", USER),
    Op::Remove("/opaque/new-1.txt"),
    Op::Remove("/links/dangling"),
    Op::Remove("/modes/dir-0711/file.txt"),
    Op::Rmdir("/modes/dir-0711"),
    Op::Mkdir("/special/setgid-dir/sub", 0o755, ROOT),
    Op::Create("/special/setgid-dir/sub/f.txt", 0o640, ROOT, b"in a setgid dir\n"),
    Op::Create("/special/sticky-dir/user.txt", 0o600, USER, b"user's\n"),
    Op::Mkdir("/owners/private-1000/made", 0o700, USER),
    Op::Create("/owners/private-1000/made/x", 0o644, USER, b"x\n"),
    Op::Rename("/owners/private-1000/made", "/owners/private-1000/made2", USER),
    Op::Symlink("/links/new-link", "../data/small.txt", ROOT),
    Op::Mkfifo("/special/fifo2", 0o600, ROOT),
    Op::Link("/hardlinks/pair-1", "/hardlinks/pair-3"),
    Op::Link("/data/small.txt", "/data/small-link.txt"),
    Op::Rename("/names/with space.txt", "/names/renamed.txt", ROOT),
    Op::Mkdir("/newtop", 0o755, ROOT),
    Op::Rename("/data/small.txt", "/newtop/small.txt", ROOT),
    Op::Remove("/etc/target"),
    Op::Create("/etc/target", 0o644, ROOT, b"a new target\n"),
    Op::Remove("/opaque/new-subdir/new-3.txt"),
    Op::Rmdir("/opaque/new-subdir"),
    Op::Mkdir("/opaque/new-subdir", 0o700, ROOT),
    Op::Remove("/hardlinks/link-a"),
    Op::Rename("/names/.hidden", "/names/-leading-dash", ROOT),
    Op::Chmod("/modes/dir-0750", 0o755),
    Op::Create("/ünïcødé/新しい.txt", 0o644, ROOT, b"new unicode\n"),
    Op::Rename("/hardlinks/original", "/newtop/original", ROOT),
    Op::Truncate("/modes/file-0644", 5000),
    Op::Link("/hardlinks/sub/pair-2", "/newtop/pair-4"),
    Op::Remove("/hardlinks/pair-1"),
    Op::Create(
        "/long/nested-directory-level-1-abcdefghijklmnopqrstuvwxyz/nested-directory-level-2-abcdefghijklmnopqrstuvwxyz/nested-directory-level-3-abcdefghijklmnopqrstuvwxyz/new.txt",
        0o644,
        ROOT,
        b"deep\n",
    ),
];

/// [`OPS`], then enough new entries in a directory of the image (some
/// names removed again) that listing it takes several READDIRPLUS calls
/// that mix upper and lower entries.
fn ops() -> Vec<Op> {
    let mut all = OPS.to_vec();
    for i in 0..150 {
        let p: &'static str = Box::leak(format!("/modes/many-{i:03}").into_boxed_str());
        all.push(Op::Create(p, 0o644, ROOT, b""));
        if i % 7 == 3 {
            all.push(Op::Remove(p));
        }
    }
    all.push(Op::Remove("/modes/file-0600"));
    all
}

fn split(path: &str) -> (&str, &[u8]) {
    let (dir, name) = path.rsplit_once('/').unwrap();
    (dir, name.as_bytes())
}

fn apply_nfs(c: &mut Client, root: &nfs_fh3, op: Op) -> Result<(), nfsstat3> {
    let mut at = |p: &str| c.walk(root, p);
    match op {
        Op::Write(p, data, cred) => {
            let fh = at(p)?;
            c.overwrite(&fh, data, cred)
        }
        Op::Chmod(p, mode) => {
            let fh = at(p)?;
            let set = sattr3 {
                mode: Nfs3Option::Some(mode),
                ..Default::default()
            };
            c.setattr(&fh, set, ROOT).map(|_| ())
        }
        Op::Chown(p, uid, gid) => {
            let fh = at(p)?;
            let set = sattr3 {
                uid: Nfs3Option::Some(uid),
                gid: Nfs3Option::Some(gid),
                ..Default::default()
            };
            c.setattr(&fh, set, ROOT).map(|_| ())
        }
        Op::Truncate(p, size) => {
            let fh = at(p)?;
            let set = sattr3 {
                size: Nfs3Option::Some(size),
                ..Default::default()
            };
            c.setattr(&fh, set, ROOT).map(|_| ())
        }
        Op::Remove(p) => {
            let (d, n) = split(p);
            let dir = at(d)?;
            c.remove(&dir, n, ROOT)
        }
        Op::Rmdir(p) => {
            let (d, n) = split(p);
            let dir = at(d)?;
            c.rmdir(&dir, n, ROOT)
        }
        Op::Mkdir(p, mode, cred) => {
            let (d, n) = split(p);
            let dir = at(d)?;
            c.mkdir(&dir, n, mode, cred).map(|_| ())
        }
        Op::Create(p, mode, cred, data) => {
            let (d, n) = split(p);
            let dir = at(d)?;
            let fh = c.create(&dir, n, mode, cred)?;
            c.write(&fh, 0, data, cred)
        }
        Op::Symlink(p, target, cred) => {
            let (d, n) = split(p);
            let dir = at(d)?;
            c.symlink(&dir, n, target.as_bytes(), cred).map(|_| ())
        }
        Op::Mkfifo(p, mode, cred) => {
            let (d, n) = split(p);
            let dir = at(d)?;
            c.mkfifo(&dir, n, mode, cred).map(|_| ())
        }
        Op::Link(existing, new) => {
            let file = at(existing)?;
            let (d, n) = split(new);
            let dir = at(d)?;
            c.link(&file, &dir, n, ROOT)
        }
        Op::Rename(from, to, cred) => {
            let (fd, fname) = split(from);
            let (td, tname) = split(to);
            let (fdir, tdir) = (at(fd)?, at(td)?);
            c.rename((&fdir, fname), (&tdir, tname), cred)
        }
    }
}

/// The same change on a local copy of the image, as Linux does it: new
/// entries owned by the caller, with the group (and for directories the
/// setgid bit) of a setgid parent; chown clears setuid/setgid.
fn apply_local(root: &Path, op: Op) -> Result<()> {
    use std::os::unix::fs::{lchown, symlink, PermissionsExt};
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let chmod = |p: &Path, mode: u32| std::fs::set_permissions(p, PermissionsExt::from_mode(mode));
    let owner_in = |p: &str, cred: (u32, u32)| -> (u32, u32, bool) {
        let parent = at(split(p).0);
        let m = std::fs::metadata(parent).unwrap();
        let setgid = m.mode() & 0o2000 != 0;
        (cred.0, if setgid { m.gid() } else { cred.1 }, setgid)
    };
    match op {
        Op::Write(p, data, _) => std::fs::write(at(p), data)?,
        Op::Chmod(p, mode) => chmod(&at(p), mode)?,
        Op::Chown(p, uid, gid) => lchown(at(p), Some(uid), Some(gid))?,
        Op::Truncate(p, size) => std::fs::OpenOptions::new()
            .write(true)
            .open(at(p))?
            .set_len(size)?,
        Op::Remove(p) => std::fs::remove_file(at(p))?,
        Op::Rmdir(p) => std::fs::remove_dir(at(p))?,
        Op::Mkdir(p, mode, cred) => {
            let (uid, gid, setgid) = owner_in(p, cred);
            std::fs::create_dir(at(p))?;
            lchown(at(p), Some(uid), Some(gid))?;
            chmod(&at(p), mode | if setgid { 0o2000 } else { 0 })?;
        }
        Op::Create(p, mode, cred, data) => {
            let (uid, gid, _) = owner_in(p, cred);
            std::fs::write(at(p), data)?;
            lchown(at(p), Some(uid), Some(gid))?;
            chmod(&at(p), mode)?;
        }
        Op::Symlink(p, target, cred) => {
            let (uid, gid, _) = owner_in(p, cred);
            symlink(target, at(p))?;
            lchown(at(p), Some(uid), Some(gid))?;
        }
        Op::Mkfifo(p, mode, cred) => {
            let (uid, gid, _) = owner_in(p, cred);
            common::run(Command::new("mkfifo").arg(at(p)))?;
            lchown(at(p), Some(uid), Some(gid))?;
            chmod(&at(p), mode)?;
        }
        Op::Link(existing, new) => std::fs::hard_link(at(existing), at(new))?,
        Op::Rename(from, to, _) => std::fs::rename(at(from), at(to))?,
    }
    Ok(())
}

/// Paths whose mtime a change may set to "now": the changed entries (and
/// every name of a changed inode) and the directories they are in.
fn touched(ops: &[Op], local: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |p: &str| {
        out.push(p.to_string());
        let (d, _) = split(p);
        out.push(if d.is_empty() {
            "/".into()
        } else {
            d.to_string()
        });
        if let Some(group) = local.get(p).and_then(|e| e.hardlinks.clone()) {
            out.extend(group);
        }
    };
    for op in ops {
        match *op {
            Op::Write(p, ..) | Op::Truncate(p, _) => add(p),
            Op::Remove(p) | Op::Rmdir(p) | Op::Mkdir(p, ..) | Op::Create(p, ..) => add(p),
            Op::Symlink(p, ..) | Op::Mkfifo(p, ..) => add(p),
            Op::Link(_, p) => add(p),
            Op::Rename(a, b, _) => {
                add(a);
                add(b);
            }
            Op::Chmod(..) | Op::Chown(..) => {}
        }
    }
    out
}

/// A persistent node changes its root in many ways; the result over NFS is
/// exactly what the same changes make of a local copy of the image (types,
/// modes, owners, sizes, contents, symlinks, hard-link groups, nlink), every
/// entry not changed keeps its mtime (copy-up keeps it too), and all of it
/// is the same after `kill -9` of the server and a restart.
#[test]
fn node_changes_match_the_same_changes_on_a_local_copy() -> Result<()> {
    if !runnable("node_changes_match_the_same_changes_on_a_local_copy") {
        return Ok(());
    }
    let started = Instant::now();
    let mut lab = Lab::start(&[NodeSpec::new("n", 2, "persistent")], false)?;
    let fx = common::shared_fixture()?;
    let local = lab.tmp.path().join("local");
    common::copy_tree(&fx.rootfs, &local)?;
    let mut c = lab.rpc(2);
    let root = c.mnt("/nodes/n").unwrap();
    let ops = ops();
    for (i, op) in ops.iter().enumerate() {
        apply_nfs(&mut c, &root, *op).unwrap_or_else(|s| panic!("op {i} over NFS: {s}"));
        apply_local(&local, *op).with_context(|| format!("op {i} locally"))?;
    }
    let mut want = common::snapshot(&local)?.with_label("local copy");
    for e in want.entries.values_mut() {
        e.xattrs.clear(); // NFSv3 has no xattrs
    }
    let same_mtime = CompareOptions {
        ignore_paths: touched(&ops, &want),
        ..CompareOptions::default()
    };
    let compare = |c: &mut Client, when: &str| {
        let got = snapshot_nfs(c, &root, &format!("nfs {when}"));
        common::assert_same(&want, &got, &CompareOptions::without_mtime());
        common::assert_same(&want, &got, &same_mtime);
        // Spot checks that the changes are in there at all.
        assert_eq!(got.entry("/special/setuid-root").mode, 0o755);
        assert_eq!(got.entry("/special/setgid-dir/sub").mode, 0o2755);
        assert_eq!(got.entry("/special/setgid-dir/sub/f.txt").gid, 100);
        assert_eq!(got.entry("/hardlinks/pair-3").nlink, 3);
        assert!(!got.contains("/opaque/new-subdir/new-3.txt"));
    };
    compare(&mut c, "before the crash");
    lab.restart(true)?;
    let mut c = lab.rpc(2);
    compare(&mut c, "after kill -9 and a restart");
    eprintln!(
        "node_changes_match_the_same_changes_on_a_local_copy: {:.1?}",
        started.elapsed()
    );
    Ok(())
}
