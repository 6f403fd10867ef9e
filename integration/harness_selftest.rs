//! Tests of the integration harness itself: the registry can be started,
//! stopped and restarted, the fixture has every feature it claims, and
//! `snapshot`/`compare` really notice each kind of difference.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::snapshot::sha256_file;
use common::{
    compare, compare_with, copy_tree, paths, sha256_hex, snapshot, CompareOptions, Kind, Registry,
    Snapshot,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn runnable(test: &str) -> bool {
    common::require_root_and_tools(test, &["setcap", "getfattr"])
}

#[test]
fn registry_serves_pushed_fixture_and_survives_restart() {
    if !runnable("registry_serves_pushed_fixture_and_survives_restart") {
        return;
    }
    let started = Instant::now();
    let fx = common::shared_fixture().unwrap();
    let mut reg = Registry::start().unwrap();
    assert_eq!(reg.addr, format!("127.0.0.1:{}", reg.port));
    fx.push(&reg, "lazyboot/fixture:v1").unwrap();

    // The manifest as a client asking for OCI gets it.
    let url = format!("{}/v2/lazyboot/fixture/manifests/v1", reg.url());
    let raw = common::curl_get(&url, &[OCI_MANIFEST]).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    // umoci leaves the optional mediaType field out; the registry still
    // serves it as an OCI manifest.
    assert!(
        manifest["mediaType"].is_null() || manifest["mediaType"] == OCI_MANIFEST,
        "{manifest:#}"
    );
    let content_type = common::run(
        Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "-w", "%{content_type}"])
            .arg("-H")
            .arg(format!("Accept: {OCI_MANIFEST}"))
            .arg(&url),
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&content_type), OCI_MANIFEST);
    let layers = manifest["layers"].as_array().unwrap();
    assert!(layers.len() >= 3, "only {} layers", layers.len());
    for l in layers {
        assert_eq!(l["mediaType"], OCI_LAYER_GZIP, "{l}");
    }
    let digests: Vec<String> = layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        digests,
        fx.layer_digests().unwrap(),
        "push changed the layer digests"
    );
    assert_eq!(
        reg.get_manifest("lazyboot/fixture", "v1").unwrap(),
        manifest
    );

    // Blobs are served and stored where blob_path says.
    let small = digests.last().unwrap().clone();
    let blob = reg.get_blob("lazyboot/fixture", &small).unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&blob)), small);
    let on_disk = reg.blob_path(&small);
    assert_eq!(
        format!("sha256:{}", sha256_file(&on_disk).unwrap()),
        small,
        "{}",
        on_disk.display()
    );

    // Stop: nothing answers. Restart: same port, same content.
    let port = reg.port;
    reg.stop();
    assert!(!reg.is_running());
    assert!(common::registry::http_get_status(&reg.addr, "/v2/").is_err());
    assert!(reg.get_blob("lazyboot/fixture", &small).is_err());
    reg.restart().unwrap();
    assert_eq!(reg.port, port);
    assert!(reg.is_running());
    let again = reg.get_blob("lazyboot/fixture", &small).unwrap();
    assert_eq!(again, blob);
    assert_eq!(
        reg.get_manifest("lazyboot/fixture", "v1").unwrap(),
        manifest
    );

    // Pause: connections hang; resume: served again.
    reg.pause().unwrap();
    let hung = Command::new("curl")
        .args(["-sf", "--max-time", "1"])
        .arg(format!("{}/v2/", reg.url()))
        .status()
        .unwrap();
    assert!(!hung.success(), "paused registry answered");
    reg.resume().unwrap();
    assert_eq!(reg.get_blob("lazyboot/fixture", &small).unwrap(), blob);

    // Corrupting the stored blob changes what is served (same length).
    let mut bytes = fs::read(&on_disk).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&on_disk, &bytes).unwrap();
    let bad = reg.get_blob("lazyboot/fixture", &small).unwrap();
    assert_eq!(bad.len(), blob.len());
    assert_ne!(format!("sha256:{}", sha256_hex(&bad)), small);
    bytes[mid] ^= 0xff;
    fs::write(&on_disk, &bytes).unwrap();

    // Drop kills the process.
    let pid_dir = format!("/proc/{}", registry_pid(&reg));
    drop(reg);
    assert!(!Path::new(&pid_dir).exists(), "{pid_dir} still exists");
    eprintln!("registry test took {:.1?}", started.elapsed());
}

/// The pid of the registry child, found through its listening port owner is
/// overkill: the harness keeps it private, so look it up by config path.
fn registry_pid(reg: &Registry) -> u32 {
    let cfg = reg.storage_dir().parent().unwrap().join("config.yml");
    let needle = cfg.to_string_lossy().to_string();
    for d in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = d.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = fs::read(d.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                return pid;
            }
        }
    }
    panic!("no process running with {needle}");
}

#[test]
fn fixture_build_is_idempotent_and_lists_layers() {
    if !runnable("fixture_build_is_idempotent_and_lists_layers") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    for _ in 0..2 {
        let t = Instant::now();
        common::build_fixture_with(&layout, "small", Some(1)).unwrap();
        eprintln!("small fixture built in {:.1?}", t.elapsed());
    }
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index:#}");
    let m = common::layout_manifest(&layout, "small").unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    // Layer 2 (hand-made) carries the opaque marker and the cross-layer link.
    let l2 = common::layout_blob(&layout, layers[1]["digest"].as_str().unwrap());
    let listing = common::run(Command::new("tar").arg("-tzvf").arg(&l2)).unwrap();
    let listing = String::from_utf8_lossy(&listing);
    assert!(listing.contains("opaque/.wh..wh..opq"), "{listing}");
    assert!(
        listing.contains("hardlinks/cross-layer-link link to hardlinks/original"),
        "{listing}"
    );
    assert!(listing.contains(".wh.delete-me"), "{listing}");
    assert!(listing.contains(".wh.dir-to-delete"), "{listing}");
    let l3 = common::layout_blob(&layout, layers[2]["digest"].as_str().unwrap());
    let listing = common::run(Command::new("tar").arg("-tzvf").arg(&l3)).unwrap();
    let listing = String::from_utf8_lossy(&listing);
    assert!(listing.contains("layer2/.wh.doomed.txt"), "{listing}");
    // A blob that is not referenced any more would be garbage: none left.
    let blobs = fs::read_dir(layout.join("blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 3 + 2, "layers + config + manifest");
}

fn content(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path.trim_start_matches('/'))).unwrap()
}

#[test]
fn unpacked_fixture_has_every_feature() {
    if !runnable("unpacked_fixture_has_every_feature") {
        return;
    }
    let fx = common::shared_fixture().unwrap();
    let t = Instant::now();
    let s = snapshot(&fx.rootfs).unwrap();
    eprintln!(
        "snapshot of {} paths took {:.1?}",
        s.entries.len(),
        t.elapsed()
    );
    let r = &fx.rootfs;

    // Root directory.
    let root = s.entry("/");
    assert_eq!(
        (root.kind, root.mode, root.uid, root.gid),
        (Kind::Dir, 0o755, 0, 0)
    );

    // Modes, owners, special bits.
    for m in [
        0o000, 0o400, 0o600, 0o640, 0o644, 0o664, 0o700, 0o755, 0o777,
    ] {
        assert_eq!(s.entry(&format!("/modes/file-{m:04o}")).mode, m);
    }
    for m in [0o700, 0o750, 0o755, 0o555, 0o711] {
        let e = s.entry(&format!("/modes/dir-{m:04o}"));
        assert_eq!((e.kind, e.mode), (Kind::Dir, m));
    }
    let owner = |p: &str| {
        let e = s.entry(p);
        (e.uid, e.gid)
    };
    assert_eq!(owner("/owners/root-0-0"), (0, 0));
    assert_eq!(owner("/owners/user-1000-1000"), (1000, 1000));
    assert_eq!(owner("/owners/nobody-65534-100"), (65534, 100));
    assert_eq!(owner("/owners/private-1000"), (1000, 1000));
    assert_eq!(owner("/links/owned-1000"), (1000, 1000));
    let e = s.entry(paths::SETUID);
    assert_eq!((e.kind, e.mode, e.uid), (Kind::File, 0o4755, 0));
    let e = s.entry(paths::SETGID_FILE);
    assert_eq!((e.mode, e.gid), (0o2755, 100));
    let e = s.entry(paths::SETGID_DIR);
    assert_eq!((e.kind, e.mode, e.gid), (Kind::Dir, 0o2775, 100));
    let e = s.entry(paths::STICKY_DIR);
    assert_eq!((e.kind, e.mode), (Kind::Dir, 0o1777));

    // FIFO and devices.
    assert_eq!(s.entry(paths::FIFO).kind, Kind::Fifo);
    let e = s.entry(paths::CHAR_DEV);
    assert_eq!(
        (e.kind, e.rdev, e.mode),
        (Kind::CharDev, Some((1, 3)), 0o666)
    );
    let e = s.entry(paths::BLOCK_DEV);
    assert_eq!(
        (e.kind, e.rdev, e.mode, e.gid),
        (Kind::BlockDev, Some((7, 0)), 0o660, 6)
    );

    // Symlinks.
    let target = |p: &str| s.entry(p).symlink_target.clone().unwrap();
    assert_eq!(target(paths::LINK_RELATIVE), "../etc/target");
    assert_eq!(target(paths::LINK_ABSOLUTE), "/etc/target");
    assert_eq!(target(paths::LINK_DANGLING), "does/not/exist");
    assert_eq!(target(paths::LINK_DIR), "../modes");
    assert!(target("/links/long-target").len() > 100);
    assert!(!s.contains("/links/does"));
    assert_eq!(s.entry("/etc/target").kind, Kind::File);

    // Xattrs.
    assert_eq!(
        s.entry(paths::USER_XATTR).xattr("user.lazyboot"),
        Some(&b"hello"[..])
    );
    let multi = s.entry(paths::MULTI_XATTR);
    assert_eq!(multi.xattr("user.one"), Some(&b"1"[..]));
    assert_eq!(multi.xattr("user.two"), Some(&b"second value"[..]));
    assert_eq!(
        multi.xattr("user.binary"),
        Some(&[0x00, 0xff, 0x10, 0xee][..])
    );
    assert_eq!(
        s.entry(paths::DIR_XATTR).xattr("user.dir"),
        Some(&b"on-a-dir"[..])
    );
    let cap = s
        .entry(paths::CAPABILITY)
        .xattr("security.capability")
        .expect("security.capability");
    assert!(cap.len() >= 20, "capability xattr too short: {cap:?}");
    // permitted bits: CAP_NET_BIND_SERVICE (10) | CAP_NET_RAW (13)
    let permitted = u32::from_le_bytes(cap[4..8].try_into().unwrap());
    assert_eq!(permitted, (1 << 10) | (1 << 13));

    // Long path and long name, unicode, awkward names, empty file.
    let long = s
        .paths()
        .find(|p| p.len() > 150 && p.rsplit('/').next().unwrap().len() > 100)
        .expect("no path > 150 chars ending in a name > 100 chars");
    assert_eq!(s.entry(long).kind, Kind::File);
    assert!(s
        .paths()
        .any(|p| p.starts_with("/layer2/gnu-longlink-") && p.len() > 110));
    assert_eq!(content(r, paths::UNICODE), "こんにちは世界\n");
    assert!(s.contains("/ünïcødé/emoji-🚀.txt"));
    assert!(s.contains("/names/with space.txt"));
    let e = s.entry(paths::EMPTY_FILE);
    assert_eq!(e.size, Some(0));
    assert_eq!(e.sha256.as_deref(), Some(sha256_hex(b"").as_str()));

    // Hard links: in-layer group of three plus the cross-layer link.
    let group: Vec<String> = paths::HARDLINK_GROUP
        .iter()
        .map(|p| p.to_string())
        .collect();
    for p in paths::HARDLINK_GROUP {
        let e = s.entry(p);
        assert_eq!(e.hardlinks.as_ref(), Some(&group), "{p}");
        assert_eq!(e.nlink, 4, "{p}");
        assert_eq!((e.uid, e.gid, e.mode), (1000, 100, 0o640), "{p}");
    }
    assert_eq!(content(r, paths::CROSS_LAYER_LINK), "hard link payload\n");
    let pair: Vec<String> = paths::HARDLINK_PAIR.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        s.entry(paths::HARDLINK_PAIR[1]).hardlinks.as_ref(),
        Some(&pair)
    );
    assert_eq!(s.entry("/etc/target").hardlinks, None);

    // Large incompressible and compressible files.
    let large_mb: u64 = std::env::var("LARGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    assert_eq!(s.entry(paths::LARGE_FILE).size, Some(large_mb << 20));
    assert!(s.entry(paths::TEXT_FILE).size.unwrap() > 2 << 20);

    // Layer 2: whiteouts, opaque dir, file -> dir, content and mode changes.
    for p in paths::DELETED {
        assert!(!s.contains(p), "{p} should have been deleted");
    }
    assert!(!s.paths().any(|p| p.contains(".wh.")), "whiteout leaked");
    let opaque: Vec<&str> = s.paths().filter(|p| p.starts_with("/opaque/")).collect();
    assert_eq!(opaque, paths::OPAQUE_CONTENT.to_vec());
    assert_eq!(content(r, "/opaque/keep-name.txt"), "new version\n");
    let e = s.entry("/opaque/new-2.txt");
    assert_eq!((e.uid, e.gid, e.mode), (1000, 1000, 0o600));
    assert_eq!(s.entry(paths::REPLACED_BY_DIR).kind, Kind::Dir);
    assert_eq!(s.entry("/replace-me/inside.txt").kind, Kind::File);
    assert_eq!(
        content(r, paths::MODIFIED_CONTENT),
        paths::MODIFIED_CONTENT_NOW
    );
    let e = s.entry(paths::CHMOD_ONLY);
    assert_eq!(e.mode, 0o755);
    assert_eq!(
        content(r, paths::CHMOD_ONLY),
        "#!/bin/sh\necho chmod only\n"
    );
    assert_eq!(s.entry(paths::OLD_MTIME_FILE).mtime, paths::OLD_MTIME);

    // Layer 3.
    assert_eq!(content(r, paths::DEEP_FILE), paths::DEEP_CONTENT);
    assert!(s.contains("/layer2/survivor.txt"));
    assert_eq!(
        s.entry("/layer3/link-to-deep").symlink_target.as_deref(),
        Some("../deep/a/b/c/d/e/f/file.txt")
    );
}

#[test]
fn a_second_unpack_compares_equal() {
    if !runnable("a_second_unpack_compares_equal") {
        return;
    }
    let fx = common::shared_fixture().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = common::umoci_unpack(&fx.layout, &fx.tag, &tmp.path().join("bundle")).unwrap();
    let a = snapshot(&fx.rootfs).unwrap().with_label("first unpack");
    let b = snapshot(&rootfs).unwrap().with_label("second unpack");
    // mtimes included: umoci restores them from the tar headers.
    common::assert_same(&a, &b, &CompareOptions::default());
    let c = snapshot(&fx.rootfs).unwrap();
    assert!(compare(&a, &c).is_empty());
}

/// One mutation of a copied tree, and what `compare` must say about it.
struct Mutation {
    name: &'static str,
    /// bash; `$R` is the copy, `$O` the untouched original.
    script: &'static str,
    /// The path the difference must be reported under.
    path: &'static str,
    /// A word the difference must contain (which field).
    field: &'static str,
    /// How many differences in total (mtimes are restored by the scripts so
    /// only the intended fields differ).
    count: usize,
}

const MUTATIONS: &[Mutation] = &[
    Mutation {
        name: "chmod a file",
        script: r#"chmod 0600 "$R/modes/file-0644""#,
        path: "/modes/file-0644",
        field: "mode",
        count: 1,
    },
    Mutation {
        name: "clear the setuid bit",
        script: r#"chmod 0755 "$R/special/setuid-root""#,
        path: "/special/setuid-root",
        field: "mode",
        count: 1,
    },
    Mutation {
        name: "chmod the root directory",
        script: r#"chmod 0700 "$R""#,
        path: "/",
        field: "mode",
        count: 1,
    },
    Mutation {
        name: "chown a file",
        script: r#"chown 1000:0 "$R/owners/root-0-0""#,
        path: "/owners/root-0-0",
        field: "uid",
        count: 1,
    },
    Mutation {
        name: "chgrp a device",
        script: r#"chgrp 0 "$R/special/block-loop0""#,
        path: "/special/block-loop0",
        field: "gid",
        count: 1,
    },
    Mutation {
        name: "change one byte of content",
        script: r#"printf 'X' | dd of="$R/data/text.txt" bs=1 seek=1000 conv=notrunc status=none
                   touch -r "$O/data/text.txt" "$R/data/text.txt""#,
        path: "/data/text.txt",
        field: "sha256",
        count: 1,
    },
    Mutation {
        name: "append to a file",
        script: r#"printf 'more' >>"$R/etc/target"; touch -r "$O/etc/target" "$R/etc/target""#,
        path: "/etc/target",
        field: "size",
        count: 2,
    },
    Mutation {
        name: "change a symlink target",
        script: r#"ln -sfn ../etc/other "$R/links/relative"
                   touch -h -r "$O/links/relative" "$R/links/relative"
                   touch -r "$O/links" "$R/links""#,
        path: "/links/relative",
        field: "symlink target",
        count: 1,
    },
    Mutation {
        name: "remove a user xattr",
        script: r#"setfattr -x user.lazyboot "$R/xattrs/user-xattr""#,
        path: "/xattrs/user-xattr",
        field: "xattr user.lazyboot",
        count: 1,
    },
    Mutation {
        name: "change a binary xattr value",
        script: r#"setfattr -n user.binary -v 0x00ff10ef "$R/xattrs/multi""#,
        path: "/xattrs/multi",
        field: "xattr user.binary",
        count: 1,
    },
    Mutation {
        name: "remove security.capability",
        script: r#"setfattr -x security.capability "$R/xattrs/capability""#,
        path: "/xattrs/capability",
        field: "xattr security.capability",
        count: 1,
    },
    Mutation {
        name: "break a hard link by copying",
        script: r#"cp -a "$R/hardlinks/link-a" "$R/hardlinks/tmp"
                   mv -f "$R/hardlinks/tmp" "$R/hardlinks/link-a"
                   touch -r "$O/hardlinks" "$R/hardlinks""#,
        path: "/hardlinks/link-a",
        field: "hard link group",
        count: 8,
    },
    Mutation {
        name: "delete a file",
        script: r#"rm "$R/names/with space.txt"; touch -r "$O/names" "$R/names""#,
        path: "/names/with space.txt",
        field: "only in",
        count: 1,
    },
    Mutation {
        name: "delete a directory tree",
        script: r#"rm -rf "$R/deep"; touch -r "$O" "$R""#,
        path: "/deep",
        field: "only in",
        count: 1,
    },
    Mutation {
        name: "add a file",
        script: r#"echo extra >"$R/special/extra"; touch -r "$O/special" "$R/special""#,
        path: "/special/extra",
        field: "only in",
        count: 1,
    },
    Mutation {
        name: "change a device number",
        script: r#"rm "$R/special/char-null"; mknod -m 0666 "$R/special/char-null" c 1 5
                   touch -h -r "$O/special/char-null" "$R/special/char-null"
                   touch -r "$O/special" "$R/special""#,
        path: "/special/char-null",
        field: "rdev",
        count: 1,
    },
    Mutation {
        name: "replace a fifo by a file",
        script: r#"rm "$R/special/fifo"; : >"$R/special/fifo"; chmod 0644 "$R/special/fifo"
                   touch -r "$O/special/fifo" "$R/special/fifo"
                   touch -r "$O/special" "$R/special""#,
        path: "/special/fifo",
        field: "file type",
        count: 1,
    },
    Mutation {
        name: "change only an mtime",
        script: r#"touch -d @123456789 "$R/files/old-mtime.txt""#,
        path: "/files/old-mtime.txt",
        field: "mtime",
        count: 1,
    },
    Mutation {
        name: "change a unicode file",
        script: r#"echo x >>"$R/ünïcødé/日本語.txt"; touch -r "$O/ünïcødé/日本語.txt" "$R/ünïcødé/日本語.txt""#,
        path: "/ünïcødé/日本語.txt",
        field: "sha256",
        count: 2,
    },
];

#[test]
fn compare_detects_each_mutation() {
    if !runnable("compare_detects_each_mutation") {
        return;
    }
    let started = Instant::now();
    // A private, small fixture: this test copies the tree once per mutation.
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    common::build_fixture_with(&layout, "small", Some(1)).unwrap();
    let orig = common::umoci_unpack(&layout, "small", &tmp.path().join("bundle")).unwrap();
    let base = snapshot(&orig).unwrap().with_label("original");

    // Sanity: an untouched copy is identical, mtimes included.
    let same = tmp.path().join("same");
    copy_tree(&orig, &same).unwrap();
    let copy = snapshot(&same).unwrap().with_label("copy");
    common::assert_same(&base, &copy, &CompareOptions::default());
    fs::remove_dir_all(&same).unwrap();

    let mut failures = Vec::new();
    for m in MUTATIONS {
        let dir = tmp.path().join("mutated");
        copy_tree(&orig, &dir).unwrap();
        common::run(
            Command::new("bash")
                .arg("-euo")
                .arg("pipefail")
                .arg("-c")
                .arg(m.script)
                .env("R", &dir)
                .env("O", &orig),
        )
        .unwrap_or_else(|e| panic!("mutation {:?}: {e:#}", m.name));
        let after = snapshot(&dir).unwrap().with_label("mutated");
        let diffs = compare(&base, &after);
        let prefix = format!("{}: ", m.path);
        let hit = diffs
            .iter()
            .any(|d| d.starts_with(&prefix) && d.contains(m.field));
        eprintln!("{:<34} -> {} difference(s)", m.name, diffs.len());
        for d in &diffs {
            eprintln!("    {d}");
        }
        if !hit {
            failures.push(format!(
                "{}: expected a '{}' difference at {}, got {diffs:#?}",
                m.name, m.field, m.path
            ));
        }
        if diffs.len() != m.count {
            failures.push(format!(
                "{}: expected {} difference(s), got {diffs:#?}",
                m.name, m.count
            ));
        }
        fs::remove_dir_all(&dir).unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "{} mutations checked in {:.1?}",
        MUTATIONS.len(),
        started.elapsed()
    );
}

#[test]
fn compare_options_are_honoured() {
    if !runnable("compare_options_are_honoured") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    common::sh(&format!(
        "mkdir -p {a}/d/sub && echo hi >{a}/d/f && setfattr -n user.x -v 1 {a}/d/f && \
         touch -d @1000 {a}/d/f {a}/d/sub {a}/d {a}",
        a = a.display()
    ))
    .unwrap();
    let b = tmp.path().join("b");
    copy_tree(&a, &b).unwrap();
    let sa = snapshot(&a).unwrap();
    assert!(compare(&sa, &snapshot(&b).unwrap()).is_empty());

    // mtime-only changes: reported by default, ignored on request.
    common::sh(&format!(
        "touch -d @2000 {b}/d/f {b}/d/sub",
        b = b.display()
    ))
    .unwrap();
    let sb = snapshot(&b).unwrap();
    let d = compare(&sa, &sb);
    assert_eq!(d.len(), 2, "{d:#?}");
    assert!(compare_with(&sa, &sb, &CompareOptions::without_mtime()).is_empty());
    let no_dir_mtime = CompareOptions {
        compare_dir_mtime: false,
        ..Default::default()
    };
    let d = compare_with(&sa, &sb, &no_dir_mtime);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(d[0].starts_with("/d/f: mtime"), "{d:#?}");

    // xattr prefixes and paths can be ignored.
    common::sh(&format!("setfattr -x user.x {b}/d/f", b = b.display())).unwrap();
    let sb = snapshot(&b).unwrap();
    let opts = CompareOptions {
        compare_mtime: false,
        ignore_xattr_prefixes: vec!["user.".into()],
        ..Default::default()
    };
    assert!(compare_with(&sa, &sb, &opts).is_empty());
    let opts = CompareOptions {
        compare_mtime: false,
        ignore_paths: vec!["/d/f".into()],
        ..Default::default()
    };
    assert!(compare_with(&sa, &sb, &opts).is_empty());
    assert_eq!(
        compare_with(&sa, &sb, &CompareOptions::without_mtime()).len(),
        1
    );

    // Missing subtrees are reported once, at their top.
    common::sh(&format!("rm -rf {b}/d", b = b.display())).unwrap();
    let sb: Snapshot = snapshot(&b).unwrap().with_label("b");
    let d = compare_with(&sa, &sb, &CompareOptions::without_mtime());
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(d[0].starts_with("/d: only in"), "{d:#?}");
    assert!(d[0].contains("and 2 paths below it"), "{d:#?}");
}

#[test]
fn netlab_links_host_and_namespace() -> anyhow::Result<()> {
    if !common::require_root_and_tools("netlab_links_host_and_namespace", &["ip", "ping"]) {
        return Ok(());
    }
    let lab = common::netns::NetLab::new(true)?;
    let out = lab
        .client("ping")
        .args(["-c", "1", "-W", "2", &lab.server_ip.to_string()])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.set_client_mac("dc:a6:32:01:02:03")?;
    assert_eq!(lab.client_mac()?, "dc:a6:32:01:02:03");
    let ns = lab.ns.clone();
    drop(lab);
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&ns),
        "namespace removed"
    );
    Ok(())
}
