//! Who is asking, and what a request path means for them.
//!
//! Every client sees its own namespace: the node's boot directory inside its
//! image, overlaid with the files lazyboot generates for it (see
//! `generated`). The rules, in order:
//!
//! 1. The request is split on `/` (a `\` counts as `/`); empty and `.`
//!    components are dropped and `..` removes the previous component. A `..`
//!    that would climb above the namespace root makes the request fail.
//!    Leading `/` means nothing (`/config.txt` is `config.txt`), and nothing
//!    is percent-decoded (`%2e%2e` is a file name).
//! 2. A first component of 8 hex digits (a Raspberry Pi serial) or of a MAC
//!    written `dc-a6-32-01-02-03` (the Pi's `TFTP_PREFIX=MAC`) names the node
//!    when a node has that serial or MAC; the rest is the path. When the
//!    client's address is known to belong to a different node, the request
//!    is refused. Otherwise the client's address picks the node
//!    (`Inventory::by_ip`: DHCP leases, fixed addresses, the neighbour
//!    table) and the whole path is used. No node: file not found.
//! 3. Image files are looked up under the node's boot directory. Symlinks are
//!    followed inside the image root (absolute targets start at the image
//!    root, `..` stops there), and every directory the lookup passes
//!    through, the last one included, must lie inside the boot directory:
//!    only files under the boot directory are served, never other parts of
//!    the image (so `../../etc/shadow` or a link to `/etc/shadow` is "not
//!    found") and never anything of the server's own file system.
//! 4. Only regular files are served; directories, devices and FIFOs are "not
//!    found".

use crate::config::MacAddr;
use crate::image::tree::{Inode, Tree, ROOT_INO};
use crate::layer::EntryKind;
use crate::nodes::{Inventory, Node};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// How a Raspberry Pi prefixed its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Prefix {
    /// 8 hex digits, lower case.
    Serial(String),
    Mac(MacAddr),
}

/// A request path taken apart (rule 1 and the prefix of rule 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParsedRequest {
    /// The first component, if it looks like a serial or a MAC.
    pub(crate) prefix: Option<Prefix>,
    /// The normalised path after the prefix (when there is one).
    pub(crate) rest: Option<String>,
    /// The whole normalised path; `None` when it climbs above the root.
    pub(crate) full: Option<String>,
}

/// Longest request path we look at (RRQs fit in one datagram anyway).
pub(crate) const MAX_PATH_LEN: usize = 1024;

/// Normalise a path: `\` is `/`, no empty or `.` components, `..` pops.
/// `None` if a `..` would leave the root or a component holds a NUL.
pub(crate) fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for comp in path.split(['/', '\\']) {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c if c.contains('\0') => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

fn parse_prefix(comp: &str) -> Option<Prefix> {
    if comp.len() == 8 && comp.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(Prefix::Serial(comp.to_ascii_lowercase()));
    }
    if comp.len() == 17
        && comp
            .as_bytes()
            .iter()
            .skip(2)
            .step_by(3)
            .all(|&b| b == b'-')
    {
        return MacAddr::parse(comp).map(Prefix::Mac);
    }
    None
}

pub(crate) fn parse_request(raw: &str) -> ParsedRequest {
    if raw.len() > MAX_PATH_LEN {
        return ParsedRequest {
            prefix: None,
            rest: None,
            full: None,
        };
    }
    let trimmed = raw.trim_start_matches(['/', '\\']);
    let (first, rest) = match trimmed.find(['/', '\\']) {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (trimmed, ""),
    };
    let prefix = if rest.is_empty() {
        None
    } else {
        parse_prefix(first)
    };
    ParsedRequest {
        rest: prefix.as_ref().and_then(|_| normalize(rest)),
        prefix,
        full: normalize(raw),
    }
}

/// Why a request maps to no node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NoNode {
    /// Nobody we know: no prefix of a node, address not a node's.
    Unknown,
    /// The prefix names one node, the client's address another.
    Conflict {
        prefix_node: String,
        ip_node: String,
    },
    /// The path climbs out of the namespace.
    BadPath,
}

/// Rule 2: the node a request is for, and the path inside its namespace.
pub(crate) fn select_node(
    inventory: &Inventory,
    client: Ipv4Addr,
    req: &ParsedRequest,
) -> Result<(Arc<Node>, String), NoNode> {
    let by_ip = inventory.by_ip(client);
    if let Some(prefix) = &req.prefix {
        let named = match prefix {
            Prefix::Serial(s) => inventory.by_serial(s),
            Prefix::Mac(m) => inventory.all().into_iter().find(|n| n.mac == *m),
        };
        if let Some(node) = named {
            if let Some(ip_node) = &by_ip {
                if ip_node.name != node.name {
                    return Err(NoNode::Conflict {
                        prefix_node: node.name.clone(),
                        ip_node: ip_node.name.clone(),
                    });
                }
            }
            let path = req.rest.clone().ok_or(NoNode::BadPath)?;
            return Ok((node, path));
        }
    }
    let node = by_ip.ok_or(NoNode::Unknown)?;
    let path = req.full.clone().ok_or(NoNode::BadPath)?;
    Ok((node, path))
}

/// Maximum symlinks followed for one lookup (as the kernel's 40).
const MAX_HOPS: u32 = 40;

/// A node's boot directory inside its image tree (rules 3 and 4).
#[derive(Clone, Copy)]
pub(crate) struct BootDir<'t> {
    pub(crate) tree: &'t Tree,
    /// The boot directory itself (after following symlinks to it).
    pub(crate) ino: u64,
}

/// A regular file found under the boot directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FoundFile {
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime: i64,
    /// Path relative to the boot directory, symlinks resolved (what a
    /// generated script should ask for).
    pub(crate) path: String,
}

impl<'t> BootDir<'t> {
    /// The directory `boot_dir` (absolute, inside the image), if it exists.
    pub(crate) fn open(tree: &'t Tree, boot_dir: &str) -> Option<BootDir<'t>> {
        let dir = tree.resolve_in_root(ROOT_INO, boot_dir, true).ok()?;
        dir.is_dir().then_some(BootDir { tree, ino: dir.ino })
    }

    /// Whether directory `ino` is the boot directory or below it.
    pub(crate) fn contains_dir(&self, ino: u64) -> bool {
        let mut cur = ino;
        for _ in 0..4096 {
            if cur == self.ino {
                return true;
            }
            if cur == ROOT_INO {
                return false;
            }
            match self.tree.get(cur) {
                Some(i) => cur = i.parent,
                None => return false,
            }
        }
        false
    }

    /// Path of directory `ino` relative to the boot directory ("" for the
    /// boot directory itself); `None` outside it.
    pub(crate) fn dir_path(&self, ino: u64) -> Option<String> {
        let mut names = Vec::new();
        let mut cur = ino;
        for _ in 0..4096 {
            if cur == self.ino {
                names.reverse();
                return Some(names.join("/"));
            }
            if cur == ROOT_INO {
                return None;
            }
            let inode = self.tree.get(cur)?;
            let parent = self.tree.get(inode.parent)?;
            let (name, _) = parent.children.iter().find(|(_, c)| *c == cur)?;
            names.push(name.clone());
            cur = inode.parent;
        }
        None
    }

    /// A directory at `rel` (normalised, relative to the boot directory),
    /// symlinks followed, inside the boot directory.
    pub(crate) fn dir(&self, rel: &str) -> Option<&'t Inode> {
        let d = self.tree.resolve_in_root(self.ino, rel, true).ok()?;
        (d.is_dir() && self.contains_dir(d.ino)).then_some(d)
    }

    /// The regular file at `rel` (normalised, relative to the boot
    /// directory). Every directory passed through must be inside the boot
    /// directory, including those that symlink targets lead to.
    pub(crate) fn file(&self, rel: &str) -> Option<FoundFile> {
        let (dir_part, name) = split_last(rel);
        let mut dir = self.dir(dir_part)?;
        let mut name = name.to_string();
        for _ in 0..=MAX_HOPS {
            if matches!(name.as_str(), "" | "." | "..") {
                return None;
            }
            let node = self.tree.lookup(dir.ino, &name)?;
            match &node.symlink {
                Some(target) => {
                    let (tdir, tname) = split_last(target);
                    let start = if target.starts_with('/') {
                        ROOT_INO
                    } else {
                        dir.ino
                    };
                    let d = self.tree.resolve_in_root(start, tdir, true).ok()?;
                    if !d.is_dir() || !self.contains_dir(d.ino) {
                        return None;
                    }
                    dir = d;
                    name = tname.to_string();
                }
                None => {
                    if node.kind != EntryKind::File {
                        return None;
                    }
                    let dir_path = self.dir_path(dir.ino)?;
                    let path = if dir_path.is_empty() {
                        name
                    } else {
                        format!("{dir_path}/{name}")
                    };
                    return Some(FoundFile {
                        ino: node.ino,
                        size: node.size,
                        mtime: node.mtime,
                        path,
                    });
                }
            }
        }
        None
    }

    /// Names in directory `rel` (empty if it is not a directory in here).
    pub(crate) fn list(&self, rel: &str) -> Vec<&'t str> {
        self.dir(rel)
            .map(|d| d.children.iter().map(|(n, _)| n.as_str()).collect())
            .unwrap_or_default()
    }
}

/// `a/b/c` -> (`a/b`, `c`); `c` -> (``, `c`). A leading `/` stays with the
/// directory part so absolute symlink targets still start at the root.
fn split_last(path: &str) -> (&str, &str) {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(0) => ("/", &trimmed[1..]),
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None if path.starts_with('/') => ("/", ""),
        None => ("", trimmed),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layer::Entry;

    fn file(path: &str, size: u64) -> Entry {
        let mut e = Entry::new(path.into(), EntryKind::File);
        e.size = size;
        e.mode = 0o644;
        e
    }

    fn dir(path: &str) -> Entry {
        let mut e = Entry::new(path.into(), EntryKind::Dir);
        e.mode = 0o755;
        e
    }

    fn link(path: &str, target: &str) -> Entry {
        let mut e = Entry::new(path.into(), EntryKind::Symlink);
        e.link_target = Some(target.into());
        e
    }

    /// A Raspberry Pi OS-like tree with a few traps.
    pub(crate) fn pi_tree() -> Tree {
        let entries = vec![
            dir("boot"),
            dir("boot/firmware"),
            file("boot/firmware/config.txt", 10),
            file("boot/firmware/cmdline.txt", 20),
            file("boot/firmware/kernel8.img", 8 << 20),
            file("boot/firmware/bcm2711-rpi-cm4.dtb", 50_000),
            dir("boot/firmware/overlays"),
            file("boot/firmware/overlays/vc4-kms-v3d.dtbo", 3000),
            link("boot/firmware/rel-escape", "../../etc/shadow"),
            link("boot/firmware/abs-escape", "/etc/shadow"),
            link("boot/firmware/dir-escape", "/etc"),
            link("boot/firmware/inside-abs", "/boot/firmware/config.txt"),
            link("boot/firmware/inside-rel", "overlays/../config.txt"),
            link("boot/firmware/chain-1", "chain-2"),
            link("boot/firmware/chain-2", "./overlays/vc4-kms-v3d.dtbo"),
            link("boot/firmware/loop-a", "loop-b"),
            link("boot/firmware/loop-b", "loop-a"),
            link("boot/firmware/updir", ".."),
            Entry::new("boot/firmware/fifo".into(), EntryKind::Fifo),
            file("boot/vmlinuz-6.1.0-test", 1000),
            link("boot/firmware/up-kernel", "../vmlinuz-6.1.0-test"),
            dir("etc"),
            file("etc/shadow", 5),
            file("etc/passwd", 5),
        ];
        Tree::build(&[&entries])
    }

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize("/a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(normalize("a/../b").as_deref(), Some("b"));
        assert_eq!(normalize("a\\b").as_deref(), Some("a/b"));
        assert_eq!(normalize("..").as_deref(), None);
        assert_eq!(normalize("../../etc/passwd"), None);
        assert_eq!(normalize("a/../../b"), None);
        assert_eq!(normalize("%2e%2e/x").as_deref(), Some("%2e%2e/x"));
        assert_eq!(normalize("").as_deref(), Some(""));
    }

    #[test]
    fn prefixes_are_recognised() {
        let r = parse_request("8B07BCC6/start4.elf");
        assert_eq!(r.prefix, Some(Prefix::Serial("8b07bcc6".into())));
        assert_eq!(r.rest.as_deref(), Some("start4.elf"));
        assert_eq!(r.full.as_deref(), Some("8B07BCC6/start4.elf"));

        let r = parse_request("/dc-a6-32-01-02-03/config.txt");
        assert_eq!(
            r.prefix,
            Some(Prefix::Mac(MacAddr::parse("dc:a6:32:01:02:03").unwrap()))
        );
        assert_eq!(r.rest.as_deref(), Some("config.txt"));

        // Not prefixes: a lone file name, 7 or 9 digits, non-hex, colons.
        for p in [
            "8b07bcc6",
            "8b07bcc/x",
            "8b07bcc61/x",
            "8b07bczz/x",
            "dc:a6:32:01:02:03/x",
        ] {
            assert_eq!(parse_request(p).prefix, None, "{p}");
        }
        let r = parse_request("pxelinux.cfg/01-dc-a6-32-01-02-03");
        assert_eq!(r.prefix, None);
        assert_eq!(r.full.as_deref(), Some("pxelinux.cfg/01-dc-a6-32-01-02-03"));

        // A prefix cannot be used to climb out.
        let r = parse_request("8b07bcc6/../../etc/passwd");
        assert_eq!(r.rest, None);
        assert_eq!(r.full, None);
        assert_eq!(parse_request(&"a/".repeat(600)).full, None);
    }

    #[test]
    fn files_inside_the_boot_dir_are_found() {
        let t = pi_tree();
        let b = BootDir::open(&t, "/boot/firmware").unwrap();
        let f = b.file("config.txt").unwrap();
        assert_eq!((f.size, f.path.as_str()), (10, "config.txt"));
        assert_eq!(
            b.file("overlays/vc4-kms-v3d.dtbo").unwrap().path,
            "overlays/vc4-kms-v3d.dtbo"
        );
        // Symlinks inside, absolute or relative, resolve to their target.
        assert_eq!(b.file("inside-abs").unwrap().path, "config.txt");
        assert_eq!(b.file("inside-rel").unwrap().path, "config.txt");
        assert_eq!(b.file("chain-1").unwrap().path, "overlays/vc4-kms-v3d.dtbo");
        // The boot dir itself may be reached through a link.
        let entries = vec![
            dir("srv"),
            file("srv/x", 1),
            dir("boot"),
            link("boot/firmware", "/srv"),
        ];
        let t2 = Tree::build(&[&entries]);
        let b2 = BootDir::open(&t2, "/boot/firmware").unwrap();
        assert_eq!(b2.file("x").unwrap().path, "x");
    }

    #[test]
    fn nothing_outside_the_boot_dir_is_found() {
        let t = pi_tree();
        let b = BootDir::open(&t, "/boot/firmware").unwrap();
        for p in [
            "rel-escape",
            "abs-escape",
            "dir-escape/shadow",
            "up-kernel",
            "updir/vmlinuz-6.1.0-test",
            "loop-a",
            "fifo",
            "overlays",
            "",
            "missing",
            "config.txt/x",
        ] {
            assert_eq!(b.file(p), None, "{p}");
        }
        // A boot dir of "/" serves the whole image, as configured.
        let root = BootDir::open(&t, "/").unwrap();
        assert_eq!(root.file("etc/shadow").unwrap().path, "etc/shadow");
        assert!(BootDir::open(&t, "/boot/firmware/config.txt").is_none());
        assert!(BootDir::open(&t, "/nope").is_none());
    }

    #[test]
    fn split_last_keeps_absolute_dirs() {
        assert_eq!(split_last("a/b/c"), ("a/b", "c"));
        assert_eq!(split_last("c"), ("", "c"));
        assert_eq!(split_last("/c"), ("/", "c"));
        assert_eq!(split_last("/a/c"), ("/a", "c"));
        assert_eq!(split_last("a/"), ("", "a"));
    }
}
