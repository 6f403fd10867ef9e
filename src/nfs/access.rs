//! Permission checks from attributes and AUTH_SYS credentials, following
//! Linux (`generic_permission`, knfsd) so that an NFS root behaves like a
//! local disk:
//!
//! - The owner, group or other class applies, the first that matches (an
//!   owner with fewer bits than the group does not get the group's bits).
//! - uid 0 bypasses read and write checks and search on directories, but
//!   executing a file needs at least one x bit.
//! - Creating, removing or renaming in a directory needs write and search
//!   on it; in a sticky directory only the file's owner, the directory's
//!   owner or root may remove or rename an entry.
//! - Like knfsd, the owner of a file may read and write its data whatever
//!   the mode (`open(O_CREAT|O_RDWR, 0444)` then write must work over
//!   NFS, where the open is checked on the client), and data may be read
//!   by a caller that may execute it (clients read executables to run them).
//! - chmod: owner or root; chown: only root changes the owner, the owner
//!   may change the group to one of its own groups; changing the owner or
//!   group of a non-directory clears setuid (and setgid with group exec).
//! - New objects in a setgid directory take the directory's group, and new
//!   directories inherit the setgid bit; a non-root caller cannot create a
//!   setgid file for a group it is not in.

use nfs3_server::nfs3_types::nfs3::{
    ACCESS3_DELETE, ACCESS3_EXECUTE, ACCESS3_EXTEND, ACCESS3_LOOKUP, ACCESS3_MODIFY, ACCESS3_READ,
};

use super::fs::{Attr, Cred, FileKind, FsError, SetAttr, SetTime};

pub(crate) const MAY_READ: u32 = 4;
pub(crate) const MAY_WRITE: u32 = 2;
pub(crate) const MAY_EXEC: u32 = 1;

pub(crate) const S_ISUID: u32 = 0o4000;
pub(crate) const S_ISGID: u32 = 0o2000;
pub(crate) const S_ISVTX: u32 = 0o1000;

pub(crate) fn is_root(cred: &Cred) -> bool {
    cred.uid == 0
}

pub(crate) fn in_group(cred: &Cred, gid: u32) -> bool {
    cred.gid == gid || cred.gids.contains(&gid)
}

/// The rwx bits (as `MAY_*`) of the class the caller falls in.
pub(crate) fn class_bits(attr: &Attr, cred: &Cred) -> u32 {
    let shift = if cred.uid == attr.uid {
        6
    } else if in_group(cred, attr.gid) {
        3
    } else {
        0
    };
    (attr.mode >> shift) & 7
}

/// May the caller do all of `want` (`MAY_*` bits) to this object?
/// Symbolic links permit everything (their mode is meaningless).
pub(crate) fn permitted(attr: &Attr, cred: &Cred, want: u32) -> bool {
    if attr.kind == FileKind::Symlink {
        return true;
    }
    if is_root(cred) {
        let needs_x = want & MAY_EXEC != 0 && attr.kind != FileKind::Dir;
        return !needs_x || attr.mode & 0o111 != 0;
    }
    class_bits(attr, cred) & want == want
}

/// The ACCESS3 bits granted out of `requested`. Like knfsd: for a
/// directory READ needs r, LOOKUP x, MODIFY/EXTEND/DELETE w and x; for
/// other objects READ needs r, EXECUTE x, MODIFY/EXTEND w, and DELETE is
/// never granted (it is about directory entries). On a read-only file
/// system MODIFY, EXTEND and DELETE are denied, everything else is
/// decided by the mode as usual.
pub(crate) fn access_bits(attr: &Attr, cred: &Cred, requested: u32, read_only: bool) -> u32 {
    let mut granted = 0;
    let r = permitted(attr, cred, MAY_READ);
    let x = permitted(attr, cred, MAY_EXEC);
    let w = permitted(attr, cred, MAY_WRITE);
    if r {
        granted |= ACCESS3_READ;
    }
    if attr.kind == FileKind::Dir {
        if x {
            granted |= ACCESS3_LOOKUP;
        }
        if w && x {
            granted |= ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE;
        }
    } else {
        if x {
            granted |= ACCESS3_EXECUTE;
        }
        if w {
            granted |= ACCESS3_MODIFY | ACCESS3_EXTEND;
        }
    }
    if read_only {
        granted &= !(ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE);
    }
    granted & requested
}

/// READ of file data: r, or x (clients read executables to run them),
/// or ownership.
pub(crate) fn may_read_data(attr: &Attr, cred: &Cred) -> bool {
    cred.uid == attr.uid
        || permitted(attr, cred, MAY_READ)
        || (!is_root(cred) && permitted(attr, cred, MAY_EXEC))
}

/// WRITE (and truncation) of file data: w, or ownership.
pub(crate) fn may_write_data(attr: &Attr, cred: &Cred) -> bool {
    cred.uid == attr.uid || permitted(attr, cred, MAY_WRITE)
}

/// LOOKUP in `dir`: it is a directory and the caller may search it.
pub(crate) fn check_lookup(dir: &Attr, cred: &Cred) -> Result<(), FsError> {
    if dir.kind != FileKind::Dir {
        return Err(FsError::NotDir);
    }
    if !permitted(dir, cred, MAY_EXEC) {
        return Err(FsError::Access);
    }
    Ok(())
}

/// READDIR of `dir`: it is a directory and the caller may read it.
pub(crate) fn check_list(dir: &Attr, cred: &Cred) -> Result<(), FsError> {
    if dir.kind != FileKind::Dir {
        return Err(FsError::NotDir);
    }
    if !permitted(dir, cred, MAY_READ) {
        return Err(FsError::Access);
    }
    Ok(())
}

/// Adding or removing entries in `dir`: write and search permission.
pub(crate) fn check_dir_change(dir: &Attr, cred: &Cred) -> Result<(), FsError> {
    if dir.kind != FileKind::Dir {
        return Err(FsError::NotDir);
    }
    if !permitted(dir, cred, MAY_WRITE | MAY_EXEC) {
        return Err(FsError::Access);
    }
    Ok(())
}

/// Removing (or renaming away, or replacing) `victim` in `dir`, after
/// [`check_dir_change`]: the sticky bit restricts it to the victim's owner,
/// the directory's owner and root.
pub(crate) fn check_sticky(dir: &Attr, victim: &Attr, cred: &Cred) -> Result<(), FsError> {
    if dir.mode & S_ISVTX != 0 && !is_root(cred) && cred.uid != victim.uid && cred.uid != dir.uid {
        return Err(FsError::Perm);
    }
    Ok(())
}

/// Owner and mode of a new object in `dir`: the setgid directory rules.
/// Returns the credentials to create it with (their gid becomes the
/// object's group) and the mode.
pub(crate) fn new_object(dir: &Attr, cred: &Cred, is_dir: bool, mode: u32) -> (Cred, u32) {
    let mut owner = cred.clone();
    let mut mode = mode & 0o7777;
    if dir.mode & S_ISGID != 0 {
        owner.gid = dir.gid;
        if is_dir {
            mode |= S_ISGID;
        }
    }
    if !is_dir && mode & S_ISGID != 0 && !is_root(cred) && !in_group(cred, owner.gid) {
        mode &= !S_ISGID;
    }
    (owner, mode)
}

/// Check a SETATTR against the chmod/chown/truncate/utimes rules and
/// return what to actually apply (setuid/setgid bits cleared where Linux
/// clears them).
pub(crate) fn check_setattr(attr: &Attr, set: &SetAttr, cred: &Cred) -> Result<SetAttr, FsError> {
    let root = is_root(cred);
    let owner = cred.uid == attr.uid;
    let mut out = set.clone();

    // Only root gives a file away; the owner may "change" it to itself.
    let uid_ok = |uid: u32| owner && uid == attr.uid;
    if set.uid.is_some_and(|uid| !root && !uid_ok(uid)) {
        return Err(FsError::Perm);
    }
    // The owner may change the group to one of its own groups.
    let gid_ok = |gid: u32| owner && (gid == attr.gid || in_group(cred, gid));
    if set.gid.is_some_and(|gid| !root && !gid_ok(gid)) {
        return Err(FsError::Perm);
    }
    if let Some(mode) = set.mode {
        if !root && !owner {
            return Err(FsError::Perm);
        }
        let group = set.gid.unwrap_or(attr.gid);
        if !root && attr.kind != FileKind::Dir && mode & S_ISGID != 0 && !in_group(cred, group) {
            out.mode = Some(mode & !S_ISGID);
        }
    }
    if set.size.is_some() {
        match attr.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::Inval),
        }
        if !may_write_data(attr, cred) {
            return Err(FsError::Access);
        }
    }
    for t in [set.atime, set.mtime].into_iter().flatten() {
        match t {
            SetTime::Client(_) if !root && !owner => return Err(FsError::Perm),
            SetTime::ServerNow if !root && !owner && !permitted(attr, cred, MAY_WRITE) => {
                return Err(FsError::Access)
            }
            _ => {}
        }
    }

    let owner_changes =
        set.uid.is_some_and(|u| u != attr.uid) || set.gid.is_some_and(|g| g != attr.gid);
    if owner_changes && attr.kind != FileKind::Dir && set.mode.is_none() {
        let mut mode = attr.mode & 0o7777;
        mode &= !S_ISUID;
        if mode & 0o010 != 0 {
            mode &= !S_ISGID;
        }
        if mode != attr.mode & 0o7777 {
            out.mode = Some(mode);
        }
    }
    Ok(out)
}

/// After a write by a caller other than root: the mode with setuid (and
/// setgid with group exec) cleared, if that changes anything.
pub(crate) fn mode_after_write(attr: &Attr, cred: &Cred) -> Option<u32> {
    if is_root(cred) || attr.kind != FileKind::File {
        return None;
    }
    let mut mode = attr.mode & 0o7777;
    mode &= !S_ISUID;
    if mode & 0o010 != 0 {
        mode &= !S_ISGID;
    }
    (mode != attr.mode & 0o7777).then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfs::fs::Time;

    fn attr(kind: FileKind, mode: u32, uid: u32, gid: u32) -> Attr {
        Attr {
            id: 2,
            kind,
            mode,
            nlink: 1,
            uid,
            gid,
            size: 0,
            used: 0,
            rdev: (0, 0),
            atime: Time::default(),
            mtime: Time::default(),
            ctime: Time::default(),
        }
    }

    fn cred(uid: u32, gid: u32, gids: &[u32]) -> Cred {
        Cred {
            uid,
            gid,
            gids: gids.to_vec(),
        }
    }

    const ALL: u32 = 0x3f;
    const RD: u32 = ACCESS3_READ;
    const LK: u32 = ACCESS3_LOOKUP;
    const MD: u32 = ACCESS3_MODIFY;
    const EX: u32 = ACCESS3_EXTEND;
    const DL: u32 = ACCESS3_DELETE;
    const XE: u32 = ACCESS3_EXECUTE;

    #[test]
    fn access_table() {
        use FileKind::*;
        let root = cred(0, 0, &[]);
        let user = cred(1000, 1000, &[]);
        let member = cred(1001, 1001, &[100]);
        let nobody = cred(65534, 65534, &[]);
        #[rustfmt::skip]
        let cases: &[(&str, Attr, &Cred, bool, u32)] = &[
            // The switch_root case: executables and directories on a
            // read-only export keep EXECUTE and LOOKUP.
            ("ro 0755 file, user", attr(File, 0o755, 0, 0), &user, true, RD | XE),
            ("ro 0755 file, root", attr(File, 0o755, 0, 0), &root, true, RD | XE),
            ("ro 0755 dir, user", attr(Dir, 0o755, 0, 0), &user, true, RD | LK),
            ("ro 0755 dir, root", attr(Dir, 0o755, 0, 0), &root, true, RD | LK),
            ("rw 0755 dir, root", attr(Dir, 0o755, 0, 0), &root, false, RD | LK | MD | EX | DL),
            ("rw 0755 dir, user", attr(Dir, 0o755, 0, 0), &user, false, RD | LK),
            ("rw 0777 dir, user", attr(Dir, 0o777, 0, 0), &user, false, RD | LK | MD | EX | DL),
            ("rw 0733 dir, user: w+x without r", attr(Dir, 0o733, 0, 0), &user, false, LK | MD | EX | DL),
            ("rw 0766 dir, user: w without x", attr(Dir, 0o766, 0, 0), &user, false, RD),
            // Root: read/write bypass, but exec needs some x bit.
            ("root 0644 file", attr(File, 0o644, 1000, 1000), &root, false, RD | MD | EX),
            ("root 0000 file", attr(File, 0o000, 1000, 1000), &root, false, RD | MD | EX),
            ("root 0001 file", attr(File, 0o001, 1000, 1000), &root, false, RD | MD | EX | XE),
            ("root 0000 dir", attr(Dir, 0o000, 1000, 1000), &root, false, RD | LK | MD | EX | DL),
            // Classes: first match wins.
            ("owner 0070 file", attr(File, 0o070, 1000, 100), &user, false, 0),
            ("group member 0070", attr(File, 0o070, 1000, 100), &member, false, RD | MD | EX | XE),
            ("other 0070", attr(File, 0o070, 1000, 100), &nobody, false, 0),
            ("primary gid 0640", attr(File, 0o640, 0, 1000), &user, false, RD),
            ("owner 0600 ro", attr(File, 0o600, 1000, 1000), &user, true, RD),
            ("owner 0700 rw", attr(File, 0o700, 1000, 1000), &user, false, RD | MD | EX | XE),
            ("setuid 4755 user", attr(File, 0o4755, 0, 0), &user, false, RD | XE),
            ("device 0666 user", attr(CharDevice, 0o666, 0, 0), &user, false, RD | MD | EX),
            ("symlink", attr(Symlink, 0o777, 0, 0), &user, true, RD | XE),
        ];
        for (name, a, c, ro, want) in cases {
            assert_eq!(access_bits(a, c, ALL, *ro), *want, "{name}");
        }
        // Only requested bits are returned.
        let a = attr(File, 0o755, 0, 0);
        assert_eq!(access_bits(&a, &user, XE | MD, true), XE);
    }

    #[test]
    fn data_access() {
        let user = cred(1000, 1000, &[]);
        let other = cred(1001, 1001, &[]);
        let root = cred(0, 0, &[]);
        let f = |mode, uid| attr(FileKind::File, mode, uid, 1000);
        // Owner override: own 0444 file is writable, own 0000 readable.
        assert!(may_write_data(&f(0o444, 1000), &user));
        assert!(may_read_data(&f(0o000, 1000), &user));
        assert!(!may_write_data(&f(0o444, 0), &user));
        assert!(!may_write_data(&f(0o644, 1000), &other));
        assert!(may_write_data(&f(0o646, 1000), &other));
        // Read-if-exec.
        assert!(may_read_data(&f(0o711, 0), &other));
        assert!(!may_read_data(&f(0o700, 0), &other));
        // Root.
        assert!(may_read_data(&f(0o000, 1000), &root));
        assert!(may_write_data(&f(0o000, 1000), &root));
    }

    #[test]
    fn directory_changes_and_sticky() {
        let user = cred(1000, 1000, &[]);
        let other = cred(1001, 1001, &[]);
        let root = cred(0, 0, &[]);
        let d = |mode, uid| attr(FileKind::Dir, mode, uid, 0);
        assert_eq!(check_dir_change(&d(0o755, 0), &user), Err(FsError::Access));
        assert_eq!(check_dir_change(&d(0o755, 1000), &user), Ok(()));
        assert_eq!(check_dir_change(&d(0o333, 0), &user), Ok(()));
        assert_eq!(check_dir_change(&d(0o666, 0), &user), Err(FsError::Access));
        assert_eq!(check_dir_change(&d(0o000, 0), &root), Ok(()));
        assert_eq!(
            check_dir_change(&attr(FileKind::File, 0o777, 0, 0), &root),
            Err(FsError::NotDir)
        );
        assert_eq!(check_lookup(&d(0o644, 0), &user), Err(FsError::Access));
        assert_eq!(check_lookup(&d(0o711, 0), &user), Ok(()));
        assert_eq!(check_list(&d(0o711, 0), &user), Err(FsError::Access));

        let tmp = d(0o1777, 0);
        let mine = attr(FileKind::File, 0o644, 1000, 1000);
        assert_eq!(check_sticky(&tmp, &mine, &user), Ok(()));
        assert_eq!(check_sticky(&tmp, &mine, &other), Err(FsError::Perm));
        assert_eq!(check_sticky(&tmp, &mine, &root), Ok(()));
        assert_eq!(check_sticky(&d(0o1777, 1001), &mine, &other), Ok(()));
        assert_eq!(check_sticky(&d(0o777, 0), &mine, &other), Ok(()));
    }

    #[test]
    fn setattr_rules() {
        let user = cred(1000, 1000, &[100]);
        let other = cred(1001, 1001, &[]);
        let root = cred(0, 0, &[]);
        let f = attr(FileKind::File, 0o644, 1000, 1000);
        let set = |f: fn(&mut SetAttr)| {
            let mut s = SetAttr::default();
            f(&mut s);
            s
        };
        let chmod = set(|s| s.mode = Some(0o600));
        assert_eq!(check_setattr(&f, &chmod, &user), Ok(chmod.clone()));
        assert_eq!(check_setattr(&f, &chmod, &other), Err(FsError::Perm));
        assert_eq!(check_setattr(&f, &chmod, &root), Ok(chmod.clone()));
        // chown: only root changes the owner; the owner may "change" it to
        // itself.
        let chown = set(|s| s.uid = Some(1001));
        assert_eq!(check_setattr(&f, &chown, &user), Err(FsError::Perm));
        assert!(check_setattr(&f, &chown, &root).is_ok());
        assert!(check_setattr(&f, &set(|s| s.uid = Some(1000)), &user).is_ok());
        // chgrp: owner to one of its groups only.
        assert!(check_setattr(&f, &set(|s| s.gid = Some(100)), &user).is_ok());
        assert_eq!(
            check_setattr(&f, &set(|s| s.gid = Some(27)), &user),
            Err(FsError::Perm)
        );
        assert_eq!(
            check_setattr(&f, &set(|s| s.gid = Some(1000)), &other),
            Err(FsError::Perm)
        );
        // setgid for a group the caller is not in is dropped.
        let sgid = set(|s| s.mode = Some(0o2755));
        let foreign = attr(FileKind::File, 0o755, 1000, 27);
        assert_eq!(
            check_setattr(&foreign, &sgid, &user).unwrap().mode,
            Some(0o755)
        );
        assert_eq!(check_setattr(&f, &sgid, &user).unwrap().mode, Some(0o2755));
        // chown clears setuid, and setgid with group exec.
        let suid = attr(FileKind::File, 0o6755, 1000, 1000);
        assert_eq!(
            check_setattr(&suid, &set(|s| s.uid = Some(0)), &root)
                .unwrap()
                .mode,
            Some(0o755)
        );
        let dir = attr(FileKind::Dir, 0o2775, 1000, 1000);
        assert_eq!(
            check_setattr(&dir, &set(|s| s.gid = Some(100)), &user)
                .unwrap()
                .mode,
            None
        );
        // Truncation: write permission or ownership.
        let trunc = set(|s| s.size = Some(0));
        assert!(check_setattr(&attr(FileKind::File, 0o444, 1000, 0), &trunc, &user).is_ok());
        assert_eq!(check_setattr(&f, &trunc, &other), Err(FsError::Access));
        assert_eq!(
            check_setattr(&attr(FileKind::Dir, 0o777, 0, 0), &trunc, &root),
            Err(FsError::IsDir)
        );
        // Times: explicit values need ownership, "now" write permission.
        let t = Time { secs: 1, nanos: 0 };
        let explicit = SetAttr {
            mtime: Some(SetTime::Client(t)),
            ..Default::default()
        };
        let now = SetAttr {
            mtime: Some(SetTime::ServerNow),
            ..Default::default()
        };
        let shared = attr(FileKind::File, 0o666, 0, 0);
        assert_eq!(
            check_setattr(&shared, &explicit, &other),
            Err(FsError::Perm)
        );
        assert!(check_setattr(&shared, &now, &other).is_ok());
        assert_eq!(check_setattr(&f, &now, &other), Err(FsError::Access));
    }

    #[test]
    fn new_objects_and_writes() {
        let user = cred(1000, 1000, &[]);
        let plain = attr(FileKind::Dir, 0o777, 0, 0);
        let sgid = attr(FileKind::Dir, 0o2777, 0, 50);
        assert_eq!(
            new_object(&plain, &user, false, 0o644),
            (user.clone(), 0o644)
        );
        let (c, m) = new_object(&sgid, &user, true, 0o755);
        assert_eq!((c.uid, c.gid, m), (1000, 50, 0o2755));
        let (c, m) = new_object(&sgid, &user, false, 0o2755);
        assert_eq!((c.gid, m), (50, 0o755));
        let (_, m) = new_object(&plain, &user, false, 0o102755);
        assert_eq!(m, 0o2755);
        let suid = attr(FileKind::File, 0o4755, 1000, 1000);
        assert_eq!(mode_after_write(&suid, &user), Some(0o755));
        assert_eq!(mode_after_write(&suid, &cred(0, 0, &[])), None);
        assert_eq!(
            mode_after_write(&attr(FileKind::File, 0o2745, 0, 0), &user),
            None
        );
    }
}
