//! The NFS procedures of `lazyboot::nfs::serve` by raw RPCs
//! (`common::nfsrpc`) against the test double of `common::tempfs`: ACCESS
//! and ROFS on a read-only export, attributes, permission checks and every
//! modifying procedure, READDIR and READDIRPLUS paging through a large
//! directory, and calls sent again (the duplicate request cache). Clients,
//! exports, handles and the RPC layer are in integration/nfs_protocol.rs.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::nfsrpc::{dirop, packed, status, NFS, ROOT, USER};
use common::tempfs::{runnable, Lab, MANY};
use nfs3_server::nfs3_types::nfs3::*;
use nfs3_server::nfs3_types::xdr_codec::{Opaque, Unpack};

#[test]
fn access_on_a_read_only_export_keeps_execute() {
    if !runnable("access_on_a_read_only_export_keeps_execute") {
        return;
    }
    let lab = Lab::new();
    let mut c = lab.server.client();
    let root = c.mnt("/nodes/ro").unwrap();
    let tool_fh = c.walk(&root, "tool").unwrap();
    let plain = c.walk(&root, "plain").unwrap();
    let dir = c.walk(&root, "dir").unwrap();
    let all = 0x3f;

    // The switch_root case: a 0755 file keeps READ and EXECUTE, for a user
    // and for root; nothing that modifies is granted.
    for cred in [USER, ROOT] {
        assert_eq!(
            c.access(&tool_fh, cred, all).unwrap(),
            ACCESS3_READ | ACCESS3_EXECUTE,
            "{cred:?}"
        );
        assert_eq!(
            c.access(&dir, cred, all).unwrap(),
            ACCESS3_READ | ACCESS3_LOOKUP,
            "{cred:?}"
        );
    }
    assert_eq!(
        c.access(&tool_fh, USER, ACCESS3_MODIFY | ACCESS3_EXTEND)
            .unwrap(),
        0
    );
    // Root needs an x bit to execute.
    assert_eq!(c.access(&plain, ROOT, all).unwrap(), ACCESS3_READ);

    // Every modifying procedure is ROFS (the test file system would turn
    // a call that reached it into NFS3ERR_IO).
    let write = WRITE3args {
        file: plain.clone(),
        offset: 0,
        count: 1,
        stable: stable_how::FILE_SYNC,
        data: Opaque::borrowed(b"x"),
    };
    assert_eq!(
        status(c.nfs::<WRITE3res>(7, ROOT, &write)),
        nfsstat3::NFS3ERR_ROFS
    );
    let create = CREATE3args {
        where_: dirop(&root, "new"),
        how: createhow3::UNCHECKED(sattr3::default()),
    };
    assert_eq!(
        status(c.nfs::<CREATE3res>(8, ROOT, &create)),
        nfsstat3::NFS3ERR_ROFS
    );
    let mkdir = MKDIR3args {
        where_: dirop(&root, "newdir"),
        attributes: sattr3::default(),
    };
    assert_eq!(
        status(c.nfs::<MKDIR3res>(9, ROOT, &mkdir)),
        nfsstat3::NFS3ERR_ROFS
    );
    let setattr = SETATTR3args {
        object: plain.clone(),
        new_attributes: sattr3 {
            mode: Nfs3Option::Some(0o600),
            ..Default::default()
        },
        guard: Nfs3Option::None,
    };
    assert_eq!(
        status(c.nfs::<SETATTR3res>(2, ROOT, &setattr)),
        nfsstat3::NFS3ERR_ROFS
    );
    assert_eq!(
        status(c.nfs::<REMOVE3res>(12, ROOT, &dirop(&root, "plain"))),
        nfsstat3::NFS3ERR_ROFS
    );
    assert_eq!(
        status(c.nfs::<RMDIR3res>(13, ROOT, &dirop(&root, "dir"))),
        nfsstat3::NFS3ERR_ROFS
    );
    let rename = RENAME3args {
        from: dirop(&root, "plain"),
        to: dirop(&root, "renamed"),
    };
    assert_eq!(
        status(c.nfs::<RENAME3res>(14, ROOT, &rename)),
        nfsstat3::NFS3ERR_ROFS
    );
    let link = LINK3args {
        file: plain.clone(),
        link: dirop(&root, "hard"),
    };
    assert_eq!(
        status(c.nfs::<LINK3res>(15, ROOT, &link)),
        nfsstat3::NFS3ERR_ROFS
    );
    let symlink = SYMLINK3args {
        where_: dirop(&root, "sym"),
        symlink: symlinkdata3 {
            symlink_attributes: sattr3::default(),
            symlink_data: nfspath3(Opaque::borrowed(b"plain")),
        },
    };
    assert_eq!(
        status(c.nfs::<SYMLINK3res>(10, ROOT, &symlink)),
        nfsstat3::NFS3ERR_ROFS
    );
    let mknod = MKNOD3args {
        where_: dirop(&root, "fifo"),
        what: mknoddata3::NF3FIFO(sattr3::default()),
    };
    assert_eq!(
        status(c.nfs::<MKNOD3res>(11, ROOT, &mknod)),
        nfsstat3::NFS3ERR_ROFS
    );
    // Reading still works.
    let read = READ3args {
        file: plain.clone(),
        offset: 0,
        count: 100,
    };
    match c.nfs::<READ3res>(6, USER, &read) {
        Nfs3Result::Ok(ok) => assert_eq!((&ok.data[..], ok.eof), (&b"plain\n"[..], true)),
        Nfs3Result::Err((s, _)) => panic!("READ: {s}"),
    }
}

#[test]
fn permissions_attributes_and_modifying_procedures() {
    if !runnable("permissions_attributes_and_modifying_procedures") {
        return;
    }
    let lab = Lab::new();
    let a = &lab.a;
    let mut c = lab.server.client();
    let root = c.mnt("/nodes/a").unwrap();

    // Attributes: setuid bit, device numbers, fsid per export, fileid.
    let suid = c.attr_at(&root, "bin/setuid").unwrap();
    assert_eq!(suid.mode, 0o4755);
    let dev = c.attr_at(&root, "null-dev").unwrap();
    assert_eq!(dev.type_, ftype3::NF3CHR);
    assert_eq!((dev.rdev.specdata1, dev.rdev.specdata2), (1, 3));
    assert_eq!(
        dev.fileid,
        std::fs::symlink_metadata(a.join("null-dev")).unwrap().ino()
    );
    let sticky_dir = c.walk(&root, "sticky").unwrap();
    let st = c.getattr(&sticky_dir).unwrap();
    assert_eq!((st.mode, st.fsid), (0o1777, suid.fsid));

    // FSINFO.
    let info = match c.nfs::<FSINFO3res>(19, ROOT, &root) {
        Nfs3Result::Ok(ok) => ok,
        Nfs3Result::Err((s, _)) => panic!("FSINFO: {s}"),
    };
    assert_eq!((info.rtmax, info.wtmax), (1 << 20, 1 << 20));
    assert_eq!(
        info.properties,
        FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME
    );

    // Writes need w on the file (or ownership).
    let hello = c.walk(&root, "hello.txt").unwrap();
    let write = |fh: &nfs_fh3| WRITE3args {
        file: fh.clone(),
        offset: 0,
        count: 5,
        stable: stable_how::UNSTABLE,
        data: Opaque::owned(b"HELLO".to_vec()),
    };
    assert_eq!(
        status(c.nfs::<WRITE3res>(7, USER, &write(&hello))),
        nfsstat3::NFS3ERR_ACCES
    );
    match c.nfs::<WRITE3res>(7, ROOT, &write(&hello)) {
        Nfs3Result::Ok(ok) => {
            assert_eq!((ok.count, ok.committed), (5, stable_how::UNSTABLE));
        }
        Nfs3Result::Err((s, _)) => panic!("WRITE: {s}"),
    }
    assert_eq!(
        std::fs::read(a.join("hello.txt")).unwrap(),
        b"HELLO world\n"
    );

    // Creating needs w+x on the directory; new objects belong to the
    // caller.
    let incoming = c.walk(&root, "incoming").unwrap();
    let rootonly = c.walk(&root, "rootonly").unwrap();
    let create = |dir: &nfs_fh3, n: &'static str| CREATE3args {
        where_: dirop(dir, n),
        how: createhow3::GUARDED(sattr3 {
            mode: Nfs3Option::Some(0o640),
            ..Default::default()
        }),
    };
    assert_eq!(
        status(c.nfs::<CREATE3res>(8, USER, &create(&rootonly, "f"))),
        nfsstat3::NFS3ERR_ACCES
    );
    assert_eq!(
        status(c.nfs::<CREATE3res>(8, USER, &create(&incoming, "f"))),
        nfsstat3::NFS3_OK
    );
    assert_eq!(
        status(c.nfs::<CREATE3res>(8, USER, &create(&incoming, "f"))),
        nfsstat3::NFS3ERR_EXIST
    );
    let m = std::fs::metadata(a.join("incoming/f")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o640));

    // chown/chmod rules.
    let f = c.walk(&root, "incoming/f").unwrap();
    let setattr = |s: sattr3| SETATTR3args {
        object: f.clone(),
        new_attributes: s,
        guard: Nfs3Option::None,
    };
    let chown = sattr3 {
        uid: Nfs3Option::Some(1001),
        ..Default::default()
    };
    assert_eq!(
        status(c.nfs::<SETATTR3res>(2, USER, &setattr(chown.clone()))),
        nfsstat3::NFS3ERR_PERM
    );
    let chmod = sattr3 {
        mode: Nfs3Option::Some(0o4750),
        ..Default::default()
    };
    assert_eq!(
        status(c.nfs::<SETATTR3res>(2, (1001, 1001), &setattr(chmod.clone()))),
        nfsstat3::NFS3ERR_PERM
    );
    assert_eq!(
        status(c.nfs::<SETATTR3res>(2, USER, &setattr(chmod))),
        nfsstat3::NFS3_OK
    );
    assert_eq!(
        std::fs::metadata(a.join("incoming/f")).unwrap().mode() & 0o7777,
        0o4750
    );
    // chown by root clears setuid.
    assert_eq!(
        status(c.nfs::<SETATTR3res>(2, ROOT, &setattr(chown))),
        nfsstat3::NFS3_OK
    );
    let m = std::fs::metadata(a.join("incoming/f")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (1001, 0o750));
    // A size past what the upper's file system holds (pjdfstest
    // truncate/12.t) is "file too large", not an I/O error; when the host
    // file system takes it (tmpfs), it is simply done.
    let huge = sattr3 {
        size: Nfs3Option::Some(999_999_999_999_999),
        ..Default::default()
    };
    let truncated = status(c.nfs::<SETATTR3res>(2, ROOT, &setattr(huge)));
    let host_takes_it = std::fs::File::create(a.join("probe-size"))
        .and_then(|f| f.set_len(999_999_999_999_999))
        .is_ok();
    let _ = std::fs::remove_file(a.join("probe-size"));
    let want = match host_takes_it {
        true => nfsstat3::NFS3_OK,
        false => nfsstat3::NFS3ERR_FBIG,
    };
    assert_eq!(truncated, want);

    // Sticky directory: only the owner (or root, or the dir owner)
    // removes.
    assert_eq!(
        status(c.nfs::<REMOVE3res>(12, USER, &dirop(&sticky_dir, "theirs"))),
        nfsstat3::NFS3ERR_PERM
    );
    assert_eq!(
        status(c.nfs::<REMOVE3res>(12, USER, &dirop(&sticky_dir, "mine"))),
        nfsstat3::NFS3_OK
    );
    assert!(a.join("sticky/theirs").exists() && !a.join("sticky/mine").exists());

    // MKNOD (devices need root), LINK, SYMLINK, RENAME, RMDIR.
    let mknod = |n: &'static str| MKNOD3args {
        where_: dirop(&incoming, n),
        what: mknoddata3::NF3BLK(devicedata3 {
            dev_attributes: sattr3 {
                mode: Nfs3Option::Some(0o660),
                ..Default::default()
            },
            spec: specdata3 {
                specdata1: 7,
                specdata2: 5,
            },
        }),
    };
    assert_eq!(
        status(c.nfs::<MKNOD3res>(11, USER, &mknod("blk"))),
        nfsstat3::NFS3ERR_PERM
    );
    assert_eq!(
        status(c.nfs::<MKNOD3res>(11, ROOT, &mknod("blk"))),
        nfsstat3::NFS3_OK
    );
    let blk = c.attr_at(&root, "incoming/blk").unwrap();
    assert_eq!(
        (blk.type_, blk.rdev.specdata1, blk.rdev.specdata2, blk.mode),
        (ftype3::NF3BLK, 7, 5, 0o660)
    );
    let fifo = MKNOD3args {
        where_: dirop(&incoming, "fifo"),
        what: mknoddata3::NF3FIFO(sattr3::default()),
    };
    assert_eq!(
        status(c.nfs::<MKNOD3res>(11, USER, &fifo)),
        nfsstat3::NFS3_OK
    );
    assert_eq!(
        c.attr_at(&root, "incoming/fifo").unwrap().type_,
        ftype3::NF3FIFO
    );
    let link = LINK3args {
        file: hello.clone(),
        link: dirop(&incoming, "hard"),
    };
    match c.nfs::<LINK3res>(15, ROOT, &link) {
        Nfs3Result::Ok(ok) => match ok.file_attributes {
            Nfs3Option::Some(fa) => assert_eq!(fa.nlink, 2),
            Nfs3Option::None => panic!("no attributes"),
        },
        Nfs3Result::Err((s, _)) => panic!("LINK: {s}"),
    }
    let symlink = SYMLINK3args {
        where_: dirop(&incoming, "sym"),
        symlink: symlinkdata3 {
            symlink_attributes: sattr3::default(),
            symlink_data: nfspath3(Opaque::borrowed(b"../hello.txt")),
        },
    };
    assert_eq!(
        status(c.nfs::<SYMLINK3res>(10, USER, &symlink)),
        nfsstat3::NFS3_OK
    );
    let sym = c.walk(&root, "incoming/sym").unwrap();
    match c.nfs::<READLINK3res>(5, USER, &sym) {
        Nfs3Result::Ok(ok) => assert_eq!(ok.data.0.as_ref(), b"../hello.txt"),
        Nfs3Result::Err((s, _)) => panic!("READLINK: {s}"),
    }
    let rename = RENAME3args {
        from: dirop(&incoming, "hard"),
        to: dirop(&incoming, "renamed"),
    };
    assert_eq!(
        status(c.nfs::<RENAME3res>(14, ROOT, &rename)),
        nfsstat3::NFS3_OK
    );
    assert_eq!(
        std::fs::read(a.join("incoming/renamed")).unwrap(),
        b"HELLO world\n"
    );
    let mkdir = MKDIR3args {
        where_: dirop(&incoming, "d"),
        attributes: sattr3 {
            mode: Nfs3Option::Some(0o700),
            ..Default::default()
        },
    };
    assert_eq!(
        status(c.nfs::<MKDIR3res>(9, USER, &mkdir)),
        nfsstat3::NFS3_OK
    );
    let m = std::fs::metadata(a.join("incoming/d")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (1000, 0o700));
    assert_eq!(
        status(c.nfs::<RMDIR3res>(13, USER, &dirop(&incoming, "renamed"))),
        nfsstat3::NFS3ERR_NOTDIR
    );
    assert_eq!(
        status(c.nfs::<RMDIR3res>(13, USER, &dirop(&incoming, "d"))),
        nfsstat3::NFS3_OK
    );
    assert!(!a.join("incoming/d").exists());

    // COMMIT answers with the write verifier.
    let commit = COMMIT3args {
        file: hello.clone(),
        offset: 0,
        count: 0,
    };
    assert_eq!(
        status(c.nfs::<COMMIT3res>(21, ROOT, &commit)),
        nfsstat3::NFS3_OK
    );
}

#[test]
fn readdir_pages_through_large_directories() {
    if !runnable("readdir_pages_through_large_directories") {
        return;
    }
    let lab = Lab::new();
    let mut c = lab.server.client();
    let root = c.mnt("/nodes/a").unwrap();
    let many = c.walk(&root, "many").unwrap();
    let mut want: BTreeSet<String> = (0..MANY).map(|i| format!("entry-{i:04}")).collect();
    want.insert(".".into());
    want.insert("..".into());

    // READDIRPLUS with small replies: every entry exactly once, with
    // attributes and a handle that works.
    let (mut cookie, mut verf, mut seen, mut calls) = (0, cookieverf3::default(), Vec::new(), 0);
    loop {
        let args = READDIRPLUS3args {
            dir: many.clone(),
            cookie,
            cookieverf: verf,
            dircount: 512,
            maxcount: 4096,
        };
        let r = c.call(NFS, 3, 17, ROOT, &packed(&args));
        assert!(r.body.len() <= 4096, "{} bytes", r.body.len());
        let ok = match READDIRPLUS3res::unpack(&mut &r.body[..]).unwrap().0 {
            Nfs3Result::Ok(ok) => ok,
            Nfs3Result::Err((s, _)) => panic!("READDIRPLUS: {s}"),
        };
        calls += 1;
        verf = ok.cookieverf;
        for e in ok.reply.entries.0 {
            let n = String::from_utf8(e.name.0.to_vec()).unwrap();
            let Nfs3Option::Some(attrs) = e.name_attributes else {
                panic!("{n}: no attributes")
            };
            assert_eq!(attrs.fileid, e.fileid);
            let Nfs3Option::Some(fh) = e.name_handle else {
                panic!("{n}: no handle")
            };
            assert_eq!(c.getattr(&fh).unwrap().fileid, e.fileid);
            cookie = e.cookie;
            seen.push(n);
        }
        if ok.reply.eof {
            break;
        }
        assert!(calls < 200, "no progress");
    }
    assert!(calls > 5, "dircount/maxcount not respected: {calls} calls");
    assert_eq!(seen.len(), want.len(), "duplicates");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), want);

    // Plain READDIR.
    let (mut cookie, mut seen) = (0, BTreeSet::new());
    loop {
        let args = READDIR3args {
            dir: many.clone(),
            cookie,
            cookieverf: verf,
            count: 1024,
        };
        let ok = match c.nfs::<READDIR3res>(16, ROOT, &args) {
            Nfs3Result::Ok(ok) => ok,
            Nfs3Result::Err((s, _)) => panic!("READDIR: {s}"),
        };
        for e in ok.reply.entries.0 {
            seen.insert(String::from_utf8(e.name.0.to_vec()).unwrap());
            cookie = e.cookie;
        }
        if ok.reply.eof {
            break;
        }
    }
    assert_eq!(seen, want);

    // A foreign cookie verifier, and a reply too small for one entry.
    let args = READDIR3args {
        dir: many.clone(),
        cookie: 5,
        cookieverf: cookieverf3(*b"notmine!"),
        count: 1024,
    };
    assert_eq!(
        status(c.nfs::<READDIR3res>(16, ROOT, &args)),
        nfsstat3::NFS3ERR_BAD_COOKIE
    );
    let args = READDIRPLUS3args {
        dir: many.clone(),
        cookie: 0,
        cookieverf: cookieverf3::default(),
        dircount: 100,
        maxcount: 120,
    };
    assert_eq!(
        status(c.nfs::<READDIRPLUS3res>(17, ROOT, &args)),
        nfsstat3::NFS3ERR_TOOSMALL
    );
    // A user may not list a 0700 directory it does not own.
    std::fs::set_permissions(lab.a.join("many"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let args = READDIR3args {
        dir: many.clone(),
        cookie: 0,
        cookieverf: cookieverf3::default(),
        count: 1024,
    };
    assert_eq!(
        status(c.nfs::<READDIR3res>(16, USER, &args)),
        nfsstat3::NFS3ERR_ACCES
    );
}

/// A call that changes something, sent again with its xid (a client that
/// lost the reply, over the same or a new connection), gets the first
/// reply instead of being run again: REMOVE stays OK (not NOENT), a GUARDED
/// CREATE and a MKDIR give the same handle (not EXIST), RENAME stays OK. A
/// copy that arrives while the first still runs gets the same reply too;
/// another xid is another call.
#[test]
fn a_change_sent_again_gets_the_first_reply() {
    if !runnable("a_change_sent_again_gets_the_first_reply") {
        return;
    }
    let lab = Lab::new();
    let mut c = lab.server.client();
    let root = c.mnt("/nodes/a").unwrap();
    let ok = |body: &[u8], what: &str| -> Vec<u8> {
        let (stat, _) = nfsstat3::unpack(&mut &body[..]).unwrap();
        assert_eq!(stat, nfsstat3::NFS3_OK, "{what}");
        body.to_vec()
    };

    c.create(&root, b"dup.txt", 0o644, ROOT).unwrap();
    let remove = packed(&REMOVE3args {
        object: dirop(&root, "dup.txt"),
    });
    let first = ok(&c.call_xid(70_001, 12, ROOT, &remove).body, "REMOVE");
    assert_eq!(
        c.call_xid(70_001, 12, ROOT, &remove).body,
        first,
        "REMOVE again"
    );
    let mut reconnected = lab.server.client();
    assert_eq!(
        reconnected.call_xid(70_001, 12, ROOT, &remove).body,
        first,
        "REMOVE again from a new connection"
    );
    let other = c.call_xid(70_002, 12, ROOT, &remove);
    let (stat, _) = nfsstat3::unpack(&mut &other.body[..]).unwrap();
    assert_eq!(stat, nfsstat3::NFS3ERR_NOENT, "a new xid is a new call");

    let create = packed(&CREATE3args {
        where_: dirop(&root, "guarded.txt"),
        how: createhow3::GUARDED(sattr3::default()),
    });
    let first = ok(&c.call_xid(70_003, 8, ROOT, &create).body, "CREATE");
    assert_eq!(
        c.call_xid(70_003, 8, ROOT, &create).body,
        first,
        "CREATE again"
    );

    let rename = packed(&RENAME3args {
        from: dirop(&root, "guarded.txt"),
        to: dirop(&root, "renamed.txt"),
    });
    let first = ok(&c.call_xid(70_004, 14, ROOT, &rename).body, "RENAME");
    assert_eq!(
        c.call_xid(70_004, 14, ROOT, &rename).body,
        first,
        "RENAME again"
    );
    assert!(lab.a.join("renamed.txt").exists() && !lab.a.join("guarded.txt").exists());

    // Two copies on the wire before either reply: one MKDIR, two equal replies.
    let mkdir = packed(&MKDIR3args {
        where_: dirop(&root, "made"),
        attributes: sattr3::default(),
    });
    c.send_xid(70_005, 9, ROOT, &mkdir);
    c.send_xid(70_005, 9, ROOT, &mkdir);
    let (x1, r1) = c.recv();
    let (x2, r2) = c.recv();
    assert_eq!((x1, x2), (70_005, 70_005));
    ok(&r1.body, "MKDIR");
    assert_eq!(r1.body, r2.body, "MKDIR sent twice at once");
    assert!(lab.a.join("made").is_dir());
}
