//! Files lazyboot makes up for a node: the Raspberry Pi `cmdline.txt`, the
//! U-Boot `boot.scr.uimg`, `pxelinux.cfg/*` menus, the iPXE `boot.ipxe`
//! (and GRUB's `grub.cfg`, made in `grub`).
//! All of them boot the image's kernel with the root file system on
//! lazyboot's NFS export of the node.
//!
//! Everything here is pure text work on a [`BootDir`] and bytes handed in;
//! reading the image is the caller's business.

use super::bootfs::{BootDir, FoundFile};
use super::uimage::{self, Arch};
use crate::config::{BootOver, NodeKind};
use crate::image::tree::Tree;
use std::cmp::Ordering;
use std::io::Read;
use std::net::Ipv4Addr;

/// The generated files, by the name they have in a node's namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Generated {
    /// `cmdline.txt` (Raspberry Pi nodes).
    Cmdline,
    /// `boot.scr.uimg` and `boot.scr` (U-Boot and Raspberry Pi nodes).
    BootScript,
    /// `pxelinux.cfg/01-<mac>` and `pxelinux.cfg/default`.
    Pxelinux,
    /// `boot.ipxe`.
    Ipxe,
    /// `grub/grub.cfg` for GRUB's network image (see `grub`).
    Grub,
}

/// Which generated file `path` (normalised) is for a node, if any.
pub(crate) fn generated_for(
    kind: NodeKind,
    pxelinux_mac_name: &str,
    path: &str,
) -> Option<Generated> {
    match path {
        "cmdline.txt" if kind == NodeKind::Raspberrypi => Some(Generated::Cmdline),
        "boot.scr.uimg" | "boot.scr" if kind != NodeKind::Ipxe => Some(Generated::BootScript),
        "boot.ipxe" => Some(Generated::Ipxe),
        "pxelinux.cfg/default" => Some(Generated::Pxelinux),
        p if super::grub::GRUB_CFG_PATHS.contains(&p) => Some(Generated::Grub),
        p => p
            .strip_prefix("pxelinux.cfg/")
            .filter(|name| *name == pxelinux_mac_name)
            .map(|_| Generated::Pxelinux),
    }
}

/// Arguments of an image's command line that point at a local root file
/// system or run first-boot resizing, which make no sense over NFS.
fn is_local_root_arg(arg: &str) -> bool {
    let (key, value) = arg.split_once('=').unwrap_or((arg, ""));
    match key {
        "root" | "rootfstype" | "rootflags" | "rootwait" | "rootdelay" | "nfsroot" | "ip"
        | "ro" | "rw" => true,
        // systemd-fsck's repair mode for the SD card's file systems; over
        // NFS there is no local root to check.
        "fsck.repair" => true,
        "init" => value.contains("resize") || value.contains("firstboot"),
        // Raspberry Pi Imager's first-run hook (edits the SD card's FAT).
        "systemd.run" => value.contains("firstrun"),
        "systemd.run_success_action" | "systemd.run_failure_action" => true,
        _ => false,
    }
}

/// The Raspberry Pi `cmdline.txt`: the image's own line (if any) without its
/// local root arguments, then the NFS root arguments, then the node's
/// `kernel_args`. One line, as the firmware wants.
pub(crate) fn rewrite_cmdline(original: Option<&str>, nfs_args: &str, kernel_args: &str) -> String {
    let mut out: Vec<&str> = original
        .unwrap_or("")
        .split_whitespace()
        .filter(|a| !is_local_root_arg(a))
        .collect();
    // "systemd.unit=kernel-command-line.target" only makes sense with the
    // first-run hook dropped above.
    if original.is_some_and(|o| o.contains("firstrun")) {
        out.retain(|a| *a != "systemd.unit=kernel-command-line.target");
    }
    out.extend(nfs_args.split_whitespace());
    out.extend(kernel_args.split_whitespace());
    let mut line = out.join(" ");
    line.push('\n');
    line
}

/// Kernel arguments for boot loaders we configure (U-Boot, PXE menus,
/// iPXE): the node's `console=` arguments, the NFS root arguments, then the
/// rest of its `kernel_args`.
pub(crate) fn boot_args(nfs_args: &str, kernel_args: &str) -> String {
    let (console, rest): (Vec<&str>, Vec<&str>) = kernel_args
        .split_whitespace()
        .partition(|a| a.starts_with("console="));
    let mut out = console;
    out.extend(nfs_args.split_whitespace());
    out.extend(rest);
    out.join(" ")
}

/// Compare names the way versions sort: digit runs numerically.
pub(crate) fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let da = trim_zeros(&a[..na]);
                let db = trim_zeros(&b[..nb]);
                let o = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
                if o != Ordering::Equal {
                    return o;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|&&c| c == b'0').count();
    &d[n..]
}

/// What the boot loader should load, found in the boot directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BootFiles {
    pub(crate) kernel: Option<FoundFile>,
    pub(crate) initrd: Option<FoundFile>,
    /// Directory (relative to the boot dir, "." for the boot dir itself)
    /// holding device trees, laid out so that `DIR/${fdtfile}` may exist.
    pub(crate) fdt_dir: Option<String>,
}

/// Suffixes that mark backups rather than kernels.
fn is_backup(name: &str) -> bool {
    [
        ".old",
        ".bak",
        ".dpkg-old",
        ".dpkg-new",
        ".dpkg-tmp",
        ".sig",
        ".sha256",
    ]
    .iter()
    .any(|s| name.ends_with(s))
}

/// The newest `PREFIX<version>` regular file in the boot dir.
fn newest_versioned(boot: &BootDir, prefix: &str) -> Option<(String, FoundFile)> {
    let mut best: Option<(String, FoundFile)> = None;
    for name in boot.list("") {
        let Some(version) = name.strip_prefix(prefix) else {
            continue;
        };
        if version.is_empty() || is_backup(name) {
            continue;
        }
        let Some(f) = boot.file(name) else { continue };
        let newer = match &best {
            None => true,
            Some((v, _)) => version_cmp(version, v) == Ordering::Greater,
        };
        if newer {
            best = Some((version.to_string(), f));
        }
    }
    best
}

/// Find kernel, initrd and device trees (all optional) in the boot dir:
/// `vmlinuz` (usually a symlink) with `initrd.img`; else the newest
/// `vmlinuz-VERSION` with `initrd.img-VERSION` (or `initrd-VERSION`,
/// `initramfs-VERSION.img`); else `Image`, `Image.gz`, `kernel8.img` (the
/// Raspberry Pi's name; first for Pi nodes), `zImage`, with `initrd.img`,
/// `initrd`, `initramfs8`.
pub(crate) fn discover(boot: &BootDir, kind: NodeKind) -> BootFiles {
    let mut out = BootFiles::default();
    let mut version: Option<String> = None;
    if let Some(k) = boot.file("vmlinuz") {
        out.initrd = boot.file("initrd.img");
        version = k.path.strip_prefix("vmlinuz-").map(str::to_string);
        out.kernel = Some(k);
    } else if let Some((v, k)) = newest_versioned(boot, "vmlinuz-") {
        out.initrd = [
            format!("initrd.img-{v}"),
            format!("initrd-{v}"),
            format!("initramfs-{v}.img"),
        ]
        .iter()
        .find_map(|n| boot.file(n));
        out.kernel = Some(k);
        version = Some(v);
    } else {
        let mut names = vec!["Image", "Image.gz", "kernel8.img", "zImage"];
        if kind == NodeKind::Raspberrypi {
            names.retain(|n| *n != "kernel8.img");
            names.insert(0, "kernel8.img");
        }
        out.kernel = names.iter().find_map(|n| boot.file(n));
        if let Some(k) = &out.kernel {
            let initrds: &[&str] = if k.path == "kernel8.img" {
                &["initramfs8", "initrd.img", "initrd"]
            } else {
                &["initrd.img", "initrd", "initramfs8"]
            };
            out.initrd = initrds.iter().find_map(|n| boot.file(n));
        }
    }
    out.fdt_dir = find_fdt_dir(boot, version.as_deref());
    out
}

/// Where a boot file outside the boot dir is named in a node's TFTP
/// namespace: `@modules/VERSION/vmlinuz` is `/usr/lib/modules/VERSION/vmlinuz`
/// of the image (Fedora, bootc-style images keep kernel and initramfs
/// there). Only those two names are served from there.
pub(crate) const MODULES_ALIAS: &str = "@modules/";
const MODULES_DIR: &str = "usr/lib/modules";
const MODULES_NAMES: [&str; 2] = ["vmlinuz", "initramfs.img"];

/// The regular file `@modules/VERSION/NAME` stands for, if it is one of
/// [`MODULES_NAMES`] and exists.
pub(crate) fn modules_file(tree: &Tree, alias: &str) -> Option<FoundFile> {
    let rest = alias.strip_prefix(MODULES_ALIAS)?;
    let (version, name) = rest.split_once('/')?;
    if version.is_empty() || version.starts_with('.') || !MODULES_NAMES.contains(&name) {
        return None;
    }
    let node = tree.resolve(&format!("{MODULES_DIR}/{version}/{name}"))?;
    (node.kind == crate::layer::EntryKind::File).then(|| FoundFile {
        ino: node.ino,
        size: node.size,
        mtime: node.mtime,
        path: alias.to_string(),
    })
}

/// The newest `/usr/lib/modules/VERSION/vmlinuz` and its `initramfs.img`.
pub(crate) fn discover_in_modules(tree: &Tree) -> Option<(FoundFile, Option<FoundFile>)> {
    let dir = tree.resolve(MODULES_DIR).filter(|d| d.is_dir())?;
    let mut versions: Vec<&str> = dir.children.iter().map(|(n, _)| n.as_str()).collect();
    versions.sort_by(|a, b| version_cmp(b, a));
    versions.into_iter().find_map(|v| {
        let kernel = modules_file(tree, &format!("{MODULES_ALIAS}{v}/vmlinuz"))?;
        let initrd = modules_file(tree, &format!("{MODULES_ALIAS}{v}/initramfs.img"));
        Some((kernel, initrd))
    })
}

/// A node's `kernel` / `initrd` setting (a path inside the image, absolute
/// or relative to the boot dir) as a file it can be served as.
pub(crate) fn configured_file(tree: &Tree, boot_dir: &str, path: &str) -> Option<FoundFile> {
    let abs = path.trim_start_matches('/');
    if let Some(rest) = abs
        .strip_prefix(MODULES_DIR)
        .and_then(|r| r.strip_prefix('/'))
    {
        return modules_file(tree, &format!("{MODULES_ALIAS}{rest}"));
    }
    let boot = BootDir::open(tree, boot_dir)?;
    let dir = boot_dir.trim_matches('/');
    let rel = if path.starts_with('/') {
        abs.strip_prefix(dir)?.trim_start_matches('/')
    } else {
        path
    };
    boot.file(rel)
}

/// Whether directory `rel` holds a `.dtb` within `depth` levels.
fn has_dtbs(boot: &BootDir, rel: &str, depth: u32) -> bool {
    let Some(dir) = boot.dir(rel) else {
        return false;
    };
    dir.children.iter().any(|(name, ino)| {
        let Some(child) = boot.tree.get(*ino) else {
            return false;
        };
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if child.is_dir() {
            depth > 0 && has_dtbs(boot, &path, depth - 1)
        } else {
            name.ends_with(".dtb") && boot.file(&path).is_some()
        }
    })
}

/// Where `${fdtfile}` (e.g. `starfive/jh7110-milkv-mars.dtb`) would be:
/// `dtbs/VERSION`, `dtb-VERSION`, `dtbs`, `dtb`, or the boot dir itself.
fn find_fdt_dir(boot: &BootDir, version: Option<&str>) -> Option<String> {
    let mut candidates = Vec::new();
    if let Some(v) = version {
        candidates.push(format!("dtbs/{v}"));
        candidates.push(format!("dtb-{v}"));
    }
    candidates.extend(["dtbs", "dtb"].map(String::from));
    for c in candidates {
        if has_dtbs(boot, &c, 2) {
            return Some(c);
        }
    }
    has_dtbs(boot, "", 0).then(|| ".".to_string())
}

/// What a kernel image's first bytes say about its architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KernelArch {
    Arm64,
    Riscv64,
    /// 32-bit ARM `zImage` (booted with `bootz`).
    Arm,
    X86,
    Unknown,
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Recognise a kernel from its first bytes (gzip-compressed ones are
/// inflated as far as the header): arm64 and riscv `Image` headers, ARM
/// `zImage`, x86 `bzImage`, and PE/COFF machine types (EFI zboot images).
pub(crate) fn kernel_arch(head: &[u8]) -> KernelArch {
    if head.starts_with(&[0x1f, 0x8b]) {
        let mut inflated = Vec::new();
        let _ = flate2::read::GzDecoder::new(head)
            .take(4096)
            .read_to_end(&mut inflated);
        if inflated.len() < 64 {
            return KernelArch::Unknown;
        }
        return kernel_arch(&inflated);
    }
    if head.get(56..60) == Some(b"ARM\x64") {
        return KernelArch::Arm64;
    }
    if head.get(48..56) == Some(b"RISCV\0\0\0") || head.get(56..60) == Some(b"RSC\x05") {
        return KernelArch::Riscv64;
    }
    if le32(head, 0x24) == Some(0x016f_2818) {
        return KernelArch::Arm;
    }
    if head.get(0x202..0x206) == Some(b"HdrS") {
        return KernelArch::X86;
    }
    if head.starts_with(b"MZ") {
        if let Some(pe) = le32(head, 0x3c).map(|o| o as usize) {
            if head.get(pe..pe + 4) == Some(b"PE\0\0") {
                let machine = head
                    .get(pe + 4..pe + 6)
                    .map(|m| u16::from_le_bytes([m[0], m[1]]));
                return match machine {
                    Some(0xaa64) => KernelArch::Arm64,
                    Some(0x5064) => KernelArch::Riscv64,
                    Some(0x01c2 | 0x01c4) => KernelArch::Arm,
                    Some(0x8664 | 0x014c) => KernelArch::X86,
                    _ => KernelArch::Unknown,
                };
            }
        }
    }
    KernelArch::Unknown
}

/// Whether a kernel image is compressed as a whole (gzip, bzip2, lzma,
/// lzo, lz4, zstd: the magics U-Boot's `booti` recognises), as Ubuntu's
/// arm64 `vmlinuz` (gzip) and `Image.gz` are. `booti` inflates those only
/// with `kernel_comp_addr_r` and `kernel_comp_size` set.
pub(crate) fn kernel_is_compressed(head: &[u8]) -> bool {
    matches!(
        head.get(..2),
        Some(
            [0x1f, 0x8b] | [b'B', b'Z'] | [0x5d, 0x00] | [0x89, b'L'] | [0x04, 0x22] | [0x28, 0xb5]
        )
    )
}

/// The uImage architecture of a node's boot script: from the kernel when
/// it says, else from the node's platform (riscv for U-Boot nodes, arm64
/// for Raspberry Pis).
pub(crate) fn script_arch(kind: NodeKind, kernel: KernelArch) -> Arch {
    match (kernel, kind) {
        (KernelArch::Arm64, _) => Arch::Arm64,
        (KernelArch::Riscv64, _) => Arch::Riscv,
        (KernelArch::Arm, _) => Arch::Arm,
        (KernelArch::X86, _) => Arch::X86_64,
        (KernelArch::Unknown, NodeKind::Raspberrypi) => Arch::Arm64,
        (KernelArch::Unknown, NodeKind::Ipxe) => Arch::X86_64,
        (KernelArch::Unknown, NodeKind::Uboot) => Arch::Riscv,
    }
}

/// Strip characters that would end or break a quoted U-Boot string.
fn uboot_quote(s: &str) -> String {
    s.chars().filter(|c| *c != '"' && *c != '\n').collect()
}

/// The U-Boot script text: set `bootargs`, load the kernel, the initrd (if
/// any) and a device tree matching `${fdtfile}` (if the boot dir has
/// device trees; else the one U-Boot runs with, `${fdtcontroladdr}`), then
/// `booti` (arm64 and riscv64 `Image`) or `bootz` (32-bit ARM `zImage`).
/// A `compressed` kernel (see [`kernel_is_compressed`]) gets
/// `kernel_comp_size` (its size) and, unless the board's environment has
/// one, a `kernel_comp_addr_r` for `booti` to inflate it at: 1 MiB past the
/// initrd (or past `ramdisk_addr_r` without one).
/// `None` without a kernel.
pub(crate) fn uboot_script(
    node: &str,
    files: &BootFiles,
    args: &str,
    arch: KernelArch,
    compressed: bool,
) -> Option<String> {
    let kernel = files.kernel.as_ref()?;
    let boot_cmd = if arch == KernelArch::Arm {
        "bootz"
    } else {
        "booti"
    };
    let mut s = String::new();
    s.push_str(&format!(
        "# lazyboot boot script for node {node} (generated)\n"
    ));
    s.push_str(&format!("echo \"lazyboot: booting {node}\"\n"));
    s.push_str(&format!("setenv bootargs \"{}\"\n", uboot_quote(args)));
    s.push_str("setenv lazyboot_initrd -\n");
    s.push_str("setenv lazyboot_fdt ${fdtcontroladdr}\n");
    s.push_str(&format!(
        "if tftpboot ${{kernel_addr_r}} {}; then\n",
        kernel.path
    ));
    let compressed = compressed && boot_cmd == "booti";
    if compressed {
        s.push_str("  setenv kernel_comp_size ${filesize}\n");
        s.push_str("  setenv lazyboot_free ${ramdisk_addr_r}\n");
    }
    if let Some(initrd) = &files.initrd {
        let free = if compressed {
            "; setexpr lazyboot_free ${ramdisk_addr_r} + ${filesize}"
        } else {
            ""
        };
        s.push_str(&format!(
            "  if tftpboot ${{ramdisk_addr_r}} {}; then setenv lazyboot_initrd ${{ramdisk_addr_r}}:${{filesize}}{free}; fi\n",
            initrd.path
        ));
    }
    if compressed {
        s.push_str("  if test -z \"${kernel_comp_addr_r}\"; then setexpr kernel_comp_addr_r ${lazyboot_free} + 0x100000; fi\n");
    }
    if let Some(dir) = &files.fdt_dir {
        let prefix = if dir == "." {
            String::new()
        } else {
            format!("{dir}/")
        };
        s.push_str(&format!(
            "  if test -n \"${{fdtfile}}\"; then if tftpboot ${{fdt_addr_r}} {prefix}${{fdtfile}}; then setenv lazyboot_fdt ${{fdt_addr_r}}; fi; fi\n"
        ));
    }
    s.push_str(&format!(
        "  {boot_cmd} ${{kernel_addr_r}} ${{lazyboot_initrd}} ${{lazyboot_fdt}}\n"
    ));
    s.push_str("fi\n");
    s.push_str(&format!("echo \"lazyboot: booting {node} failed\"\n"));
    Some(s)
}

/// The script wrapped as a legacy uImage.
pub(crate) fn uboot_script_image(script: &str, arch: Arch, timestamp: u32) -> Vec<u8> {
    uimage::script_image(script, arch, "lazyboot boot script", timestamp)
}

/// A boot script that waits `secs` and loads `path` again, for a node
/// whose image is still being opened (None for files that are not scripts).
/// The wait is visible on the node's console.
pub(crate) fn retry_later(
    what: Generated,
    kind: NodeKind,
    node: &str,
    path: &str,
    secs: u32,
) -> Option<Vec<u8>> {
    let say = format!("lazyboot: the image of {node} is still being opened; retrying in {secs} s");
    match what {
        Generated::Ipxe => Some(
            format!("#!ipxe\necho {say}\nsleep {secs}\nchain --autofree {path}\n").into_bytes(),
        ),
        Generated::BootScript => {
            let script = format!(
                "echo \"{}\"\nsleep {secs}\nif tftpboot ${{scriptaddr}} {path}; then source ${{scriptaddr}}; fi\n",
                uboot_quote(&say)
            );
            let arch = script_arch(kind, KernelArch::Unknown);
            Some(uboot_script_image(&script, arch, 0))
        }
        Generated::Grub => Some(super::grub::retry_cfg(&say, path, secs).into_bytes()),
        Generated::Cmdline | Generated::Pxelinux => None,
    }
}

/// A one-entry PXE menu (U-Boot `pxe`/`sysboot`, pxelinux): LABEL with
/// KERNEL, INITRD, FDTDIR (when there are device trees) and APPEND.
pub(crate) fn pxelinux_cfg(node: &str, files: &BootFiles, args: &str) -> Option<String> {
    let kernel = files.kernel.as_ref()?;
    let mut s = String::new();
    s.push_str(&format!(
        "# lazyboot PXE menu for node {node} (generated)\n"
    ));
    s.push_str("DEFAULT lazyboot\n");
    s.push_str("TIMEOUT 0\n");
    s.push_str("LABEL lazyboot\n");
    s.push_str(&format!("  KERNEL {}\n", kernel.path));
    if let Some(initrd) = &files.initrd {
        s.push_str(&format!("  INITRD {}\n", initrd.path));
    }
    if let Some(dir) = &files.fdt_dir {
        s.push_str(&format!("  FDTDIR {dir}\n"));
    }
    s.push_str(&format!("  APPEND {args}\n"));
    Some(s)
}

/// The iPXE script: `kernel BASE/KERNEL ARGS`, `initrd`, `boot`. `base`
/// is `tftp://SERVER` (paths relative to the node's namespace, as with
/// dnsmasq's TFTP root) or the node's HTTP boot directory
/// `http://SERVER:PORT/boot/NODE`, see [`boot_base`].
/// `initrd=NAME` lets an EFI stub kernel find the initrd iPXE loaded.
pub(crate) fn ipxe_script(node: &str, base: &str, files: &BootFiles, args: &str) -> Option<String> {
    let kernel = files.kernel.as_ref()?;
    let mut s = String::from("#!ipxe\n");
    s.push_str(&format!(
        "# lazyboot iPXE script for node {node} (generated)\n"
    ));
    match &files.initrd {
        Some(initrd) => {
            let name = initrd.path.rsplit('/').next().unwrap_or(&initrd.path);
            s.push_str(&format!(
                "kernel {base}/{} initrd={name} {args}\n",
                kernel.path
            ));
            s.push_str(&format!("initrd {base}/{}\n", initrd.path));
        }
        None => s.push_str(&format!("kernel {base}/{} {args}\n", kernel.path)),
    }
    s.push_str("boot\n");
    Some(s)
}

/// Where a node's boot files are, as a URL without the trailing `/`: its
/// TFTP namespace, or its directory of the HTTP boot route.
pub(crate) fn boot_base(over: BootOver, server: Ipv4Addr, http_port: u16, node: &str) -> String {
    match over {
        BootOver::Tftp => format!("tftp://{server}"),
        BootOver::Http => crate::config::http_boot_dir(server, http_port, node),
    }
}

#[cfg(test)]
mod tests {
    use super::super::bootfs::tests::pi_tree;
    use super::*;

    #[test]
    fn retry_scripts_wait_and_load_the_same_file_again() {
        let ipxe = retry_later(Generated::Ipxe, NodeKind::Ipxe, "pc", "boot.ipxe", 5).unwrap();
        let text = String::from_utf8(ipxe).unwrap();
        assert!(text.starts_with("#!ipxe\n"), "{text}");
        assert!(text.contains("sleep 5\n") && text.contains("chain --autofree boot.ipxe\n"));
        let img = retry_later(
            Generated::BootScript,
            NodeKind::Uboot,
            "mars",
            "boot.scr.uimg",
            5,
        )
        .unwrap();
        // A uImage (magic 0x27051956) whose script loads and sources the same file.
        assert_eq!(img[..4], [0x27, 0x05, 0x19, 0x56]);
        let body = String::from_utf8_lossy(&img);
        assert!(body.contains("sleep 5"), "{body}");
        assert!(body.contains("tftpboot ${scriptaddr} boot.scr.uimg; then source ${scriptaddr}"));
        assert!(retry_later(
            Generated::Cmdline,
            NodeKind::Raspberrypi,
            "pi",
            "cmdline.txt",
            5
        )
        .is_none());
    }
    use crate::image::tree::Tree;
    use crate::layer::{Entry, EntryKind};

    const NFS: &str = "root=/dev/nfs nfsroot=10.0.0.1:/nodes/pi1,vers=3,tcp,port=2049,mountport=2049,nolock rw ip=dhcp";

    #[test]
    fn cmdline_drops_local_root_arguments() {
        let rpios = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot splash plymouth.ignore-serial-consoles cfg80211.ieee80211_regdom=GB\n";
        let got = rewrite_cmdline(Some(rpios), NFS, "loglevel=7 foo");
        assert_eq!(
            got,
            format!(
                "console=serial0,115200 console=tty1 quiet splash plymouth.ignore-serial-consoles cfg80211.ieee80211_regdom=GB {NFS} loglevel=7 foo\n"
            )
        );
        let old = "dwc_otg.lpm_enable=0 console=tty1 root=/dev/mmcblk0p2 rootfstype=ext4 elevator=deadline rootwait ro init=/usr/lib/raspi-config/init_resize.sh";
        let got = rewrite_cmdline(Some(old), NFS, "");
        assert_eq!(
            got,
            format!("dwc_otg.lpm_enable=0 console=tty1 elevator=deadline {NFS}\n")
        );
        let imager = "console=tty1 root=/dev/mmcblk0p2 systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target";
        assert_eq!(
            rewrite_cmdline(Some(imager), NFS, ""),
            format!("console=tty1 {NFS}\n")
        );
        // Other init= values are kept; no cmdline.txt at all works too.
        assert_eq!(
            rewrite_cmdline(Some("init=/bin/sh"), NFS, ""),
            format!("init=/bin/sh {NFS}\n")
        );
        assert_eq!(rewrite_cmdline(None, NFS, "a=b"), format!("{NFS} a=b\n"));
        assert_eq!(rewrite_cmdline(None, NFS, "").matches('\n').count(), 1);
    }

    #[test]
    fn boot_args_put_console_first() {
        assert_eq!(
            boot_args(NFS, "quiet console=ttyS0,115200 earlycon"),
            format!("console=ttyS0,115200 {NFS} quiet earlycon")
        );
        assert_eq!(boot_args(NFS, ""), NFS);
    }

    #[test]
    fn versions_sort_numerically() {
        assert_eq!(
            version_cmp("6.1.0-10-arm64", "6.1.0-9-arm64"),
            Ordering::Greater
        );
        assert_eq!(version_cmp("5.15.0", "6.1.0"), Ordering::Less);
        assert_eq!(version_cmp("6.10", "6.9"), Ordering::Greater);
        assert_eq!(version_cmp("6.01", "6.1"), Ordering::Equal);
        assert_eq!(version_cmp("6.1", "6.1-rc1"), Ordering::Less);
    }

    fn file(path: &str) -> Entry {
        let mut e = Entry::new(path.into(), EntryKind::File);
        e.size = 100;
        e
    }

    fn link(path: &str, target: &str) -> Entry {
        let mut e = Entry::new(path.into(), EntryKind::Symlink);
        e.link_target = Some(target.into());
        e
    }

    fn debian_tree(with_links: bool) -> Tree {
        let mut e = vec![
            file("boot/vmlinuz-6.1.0-9-riscv64"),
            file("boot/initrd.img-6.1.0-9-riscv64"),
            file("boot/vmlinuz-6.1.0-10-riscv64"),
            file("boot/initrd.img-6.1.0-10-riscv64"),
            file("boot/vmlinuz-6.1.0-11-riscv64.old"),
            file("boot/config-6.1.0-10-riscv64"),
            file("boot/dtbs/6.1.0-10-riscv64/starfive/jh7110-milkv-mars.dtb"),
            file("boot/dtbs/6.1.0-9-riscv64/starfive/jh7110-milkv-mars.dtb"),
        ];
        if with_links {
            e.push(link("boot/vmlinuz", "vmlinuz-6.1.0-9-riscv64"));
            e.push(link("boot/initrd.img", "/boot/initrd.img-6.1.0-9-riscv64"));
        }
        Tree::build(&[&e])
    }

    #[test]
    fn discovery_prefers_symlinks_then_newest_version() {
        let t = debian_tree(true);
        let b = BootDir::open(&t, "/boot").unwrap();
        let f = discover(&b, NodeKind::Uboot);
        assert_eq!(f.kernel.unwrap().path, "vmlinuz-6.1.0-9-riscv64");
        assert_eq!(f.initrd.unwrap().path, "initrd.img-6.1.0-9-riscv64");
        assert_eq!(f.fdt_dir.as_deref(), Some("dtbs/6.1.0-9-riscv64"));

        let t = debian_tree(false);
        let b = BootDir::open(&t, "/boot").unwrap();
        let f = discover(&b, NodeKind::Uboot);
        assert_eq!(f.kernel.unwrap().path, "vmlinuz-6.1.0-10-riscv64");
        assert_eq!(f.initrd.unwrap().path, "initrd.img-6.1.0-10-riscv64");
        assert_eq!(f.fdt_dir.as_deref(), Some("dtbs/6.1.0-10-riscv64"));
    }

    #[test]
    fn kernels_in_usr_lib_modules_and_configured_paths() {
        let entries = vec![
            Entry::new("boot".into(), EntryKind::Dir),
            file("boot/vmlinuz-6.1.0-9-amd64"),
            file("usr/lib/modules/6.5.0-1.fc39/vmlinuz"),
            file("usr/lib/modules/6.5.0-1.fc39/initramfs.img"),
            file("usr/lib/modules/6.10.2-3.fc40/vmlinuz"),
            file("usr/lib/modules/6.10.2-3.fc40/initramfs.img"),
            file("usr/lib/modules/6.10.2-3.fc40/config"),
            file("usr/lib/modules/6.11.0/modules.dep"),
        ];
        let t = Tree::build(&[&entries]);
        let (k, i) = discover_in_modules(&t).unwrap();
        assert_eq!(k.path, "@modules/6.10.2-3.fc40/vmlinuz");
        assert_eq!(i.unwrap().path, "@modules/6.10.2-3.fc40/initramfs.img");
        // Only the two boot files are served from there, nothing above.
        assert!(modules_file(&t, "@modules/6.10.2-3.fc40/config").is_none());
        assert!(modules_file(&t, "@modules/../../etc/vmlinuz").is_none());
        assert!(modules_file(&t, "@modules/6.10.2-3.fc40/../6.5.0-1.fc39/vmlinuz").is_none());
        // A configured kernel: relative to the boot dir, absolute in it, or
        // in usr/lib/modules; anything else is not served.
        let by = |p: &str| configured_file(&t, "/boot", p).map(|f| f.path);
        assert_eq!(
            by("vmlinuz-6.1.0-9-amd64").as_deref(),
            Some("vmlinuz-6.1.0-9-amd64")
        );
        assert_eq!(
            by("/boot/vmlinuz-6.1.0-9-amd64").as_deref(),
            Some("vmlinuz-6.1.0-9-amd64")
        );
        assert_eq!(
            by("/usr/lib/modules/6.5.0-1.fc39/vmlinuz").as_deref(),
            Some("@modules/6.5.0-1.fc39/vmlinuz")
        );
        assert_eq!(by("/usr/lib/modules/6.10.2-3.fc40/config"), None);
        assert_eq!(by("/etc/passwd"), None);
    }

    #[test]
    fn discovery_of_generic_and_pi_names() {
        let t = pi_tree();
        let b = BootDir::open(&t, "/boot/firmware").unwrap();
        let f = discover(&b, NodeKind::Raspberrypi);
        assert_eq!(f.kernel.unwrap().path, "kernel8.img");
        assert_eq!(f.initrd, None);
        assert_eq!(f.fdt_dir.as_deref(), Some("."));

        let t = Tree::build(&[&[
            file("boot/Image.gz"),
            file("boot/initrd"),
            file("boot/kernel8.img"),
        ]]);
        let b = BootDir::open(&t, "/boot").unwrap();
        let f = discover(&b, NodeKind::Uboot);
        assert_eq!(f.kernel.as_ref().unwrap().path, "Image.gz");
        assert_eq!(f.initrd.unwrap().path, "initrd");
        assert_eq!(f.fdt_dir, None);
        let f = discover(&b, NodeKind::Raspberrypi);
        assert_eq!(f.kernel.unwrap().path, "kernel8.img");

        // A vmlinuz link leading out of the boot dir is not used.
        let t = Tree::build(&[&[file("vmlinuz-1"), link("boot/vmlinuz", "../vmlinuz-1")]]);
        let b = BootDir::open(&t, "/boot").unwrap();
        assert_eq!(discover(&b, NodeKind::Ipxe), BootFiles::default());
    }

    #[test]
    fn kernel_arch_from_headers() {
        let mut arm64 = vec![0u8; 64];
        arm64[56..60].copy_from_slice(b"ARM\x64");
        assert_eq!(kernel_arch(&arm64), KernelArch::Arm64);
        let mut rv = vec![0u8; 64];
        rv[48..56].copy_from_slice(b"RISCV\0\0\0");
        rv[56..60].copy_from_slice(b"RSC\x05");
        assert_eq!(kernel_arch(&rv), KernelArch::Riscv64);
        let mut z = vec![0u8; 64];
        z[0x24..0x28].copy_from_slice(&0x016f_2818u32.to_le_bytes());
        assert_eq!(kernel_arch(&z), KernelArch::Arm);
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kernel_arch(&bz), KernelArch::X86);
        assert_eq!(kernel_arch(&[0u8; 100]), KernelArch::Unknown);
        // gzip-compressed arm64 Image (as Debian's arm64 vmlinuz).
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &[arm64.clone(), vec![7u8; 100_000]].concat()).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(kernel_arch(&gz[..gz.len().min(4096)]), KernelArch::Arm64);
        // PE/COFF (EFI zboot) by machine type.
        let mut pe = vec![0u8; 256];
        pe[0..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&0x5064u16.to_le_bytes());
        assert_eq!(kernel_arch(&pe), KernelArch::Riscv64);

        assert_eq!(
            script_arch(NodeKind::Uboot, KernelArch::Unknown),
            Arch::Riscv
        );
        assert_eq!(script_arch(NodeKind::Uboot, KernelArch::Arm64), Arch::Arm64);
        assert_eq!(
            script_arch(NodeKind::Raspberrypi, KernelArch::Unknown),
            Arch::Arm64
        );
        assert_eq!(script_arch(NodeKind::Uboot, KernelArch::Arm), Arch::Arm);
    }

    fn files(fdt: Option<&str>, initrd: bool) -> BootFiles {
        let f = |p: &str| FoundFile {
            ino: 2,
            size: 1,
            mtime: 0,
            path: p.into(),
        };
        BootFiles {
            kernel: Some(f("vmlinuz-6.1")),
            initrd: initrd.then(|| f("initrd.img-6.1")),
            fdt_dir: fdt.map(str::to_string),
        }
    }

    #[test]
    fn uboot_script_text() {
        let args = boot_args(NFS, "console=ttyS0,115200");
        let s = uboot_script(
            "mars1",
            &files(Some("dtbs/6.1"), true),
            &args,
            KernelArch::Riscv64,
            false,
        )
        .unwrap();
        let expected = format!(
            "# lazyboot boot script for node mars1 (generated)
echo \"lazyboot: booting mars1\"
setenv bootargs \"console=ttyS0,115200 {NFS}\"
setenv lazyboot_initrd -
setenv lazyboot_fdt ${{fdtcontroladdr}}
if tftpboot ${{kernel_addr_r}} vmlinuz-6.1; then
  if tftpboot ${{ramdisk_addr_r}} initrd.img-6.1; then setenv lazyboot_initrd ${{ramdisk_addr_r}}:${{filesize}}; fi
  if test -n \"${{fdtfile}}\"; then if tftpboot ${{fdt_addr_r}} dtbs/6.1/${{fdtfile}}; then setenv lazyboot_fdt ${{fdt_addr_r}}; fi; fi
  booti ${{kernel_addr_r}} ${{lazyboot_initrd}} ${{lazyboot_fdt}}
fi
echo \"lazyboot: booting mars1 failed\"
"
        );
        assert_eq!(s, expected);

        // No initrd, no device trees, 32-bit zImage.
        let s = uboot_script("b", &files(None, false), "a=\"b\"", KernelArch::Arm, true).unwrap();
        assert!(!s.contains("ramdisk_addr_r"));
        assert!(!s.contains("fdt_addr_r"));
        assert!(s.contains("setenv bootargs \"a=b\"\n"));
        assert!(s.contains("  bootz ${kernel_addr_r} ${lazyboot_initrd} ${lazyboot_fdt}\n"));
        // A zImage inflates itself: no booti decompression settings.
        assert!(!s.contains("kernel_comp"));
        // Device trees in the boot dir itself.
        let s = uboot_script("b", &files(Some("."), false), "", KernelArch::Arm64, false).unwrap();
        assert!(s.contains("tftpboot ${fdt_addr_r} ${fdtfile};"));
        assert!(uboot_script("b", &BootFiles::default(), "", KernelArch::Arm64, true).is_none());

        let img = uboot_script_image(&s, Arch::Arm64, 5);
        let (h, payload) = uimage::parse(&img).unwrap();
        assert_eq!((h.arch, h.image_type, h.timestamp), (22, 6, 5));
        assert_eq!(uimage::script_text(payload), Some(s.as_str()));
    }

    #[test]
    fn uboot_script_for_compressed_kernels() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &[0u8; 1000]).unwrap();
        assert!(kernel_is_compressed(&gz.finish().unwrap()));
        let mut arm64 = vec![0u8; 64];
        arm64[56..60].copy_from_slice(b"ARM\x64");
        assert!(!kernel_is_compressed(&arm64));
        assert!(!kernel_is_compressed(b"MZ\0\0"));
        assert!(!kernel_is_compressed(&[0x1f]));

        let s = uboot_script(
            "arm1",
            &files(None, true),
            "console=ttyAMA0",
            KernelArch::Arm64,
            true,
        )
        .unwrap();
        assert_eq!(
            s,
            "# lazyboot boot script for node arm1 (generated)
echo \"lazyboot: booting arm1\"
setenv bootargs \"console=ttyAMA0\"
setenv lazyboot_initrd -
setenv lazyboot_fdt ${fdtcontroladdr}
if tftpboot ${kernel_addr_r} vmlinuz-6.1; then
  setenv kernel_comp_size ${filesize}
  setenv lazyboot_free ${ramdisk_addr_r}
  if tftpboot ${ramdisk_addr_r} initrd.img-6.1; then setenv lazyboot_initrd ${ramdisk_addr_r}:${filesize}; setexpr lazyboot_free ${ramdisk_addr_r} + ${filesize}; fi
  if test -z \"${kernel_comp_addr_r}\"; then setexpr kernel_comp_addr_r ${lazyboot_free} + 0x100000; fi
  booti ${kernel_addr_r} ${lazyboot_initrd} ${lazyboot_fdt}
fi
echo \"lazyboot: booting arm1 failed\"
"
        );
        // Without an initrd the inflated kernel goes at ramdisk_addr_r + 1 MiB.
        let s = uboot_script("b", &files(None, false), "", KernelArch::Riscv64, true).unwrap();
        assert!(s.contains("  setenv kernel_comp_size ${filesize}\n  setenv lazyboot_free ${ramdisk_addr_r}\n  if test -z"));
    }

    #[test]
    fn pxelinux_text() {
        let s = pxelinux_cfg("mars1", &files(Some("dtbs/6.1"), true), NFS).unwrap();
        assert_eq!(
            s,
            format!(
                "# lazyboot PXE menu for node mars1 (generated)
DEFAULT lazyboot
TIMEOUT 0
LABEL lazyboot
  KERNEL vmlinuz-6.1
  INITRD initrd.img-6.1
  FDTDIR dtbs/6.1
  APPEND {NFS}
"
            )
        );
        let s = pxelinux_cfg("x", &files(None, false), "a").unwrap();
        assert!(!s.contains("INITRD") && !s.contains("FDTDIR"));
    }

    #[test]
    fn ipxe_text() {
        let server = Ipv4Addr::new(10, 0, 0, 1);
        let tftp = boot_base(BootOver::Tftp, server, 8080, "pc1");
        let s = ipxe_script("pc1", &tftp, &files(None, true), NFS).unwrap();
        assert_eq!(
            s,
            format!(
                "#!ipxe
# lazyboot iPXE script for node pc1 (generated)
kernel tftp://10.0.0.1/vmlinuz-6.1 initrd=initrd.img-6.1 {NFS}
initrd tftp://10.0.0.1/initrd.img-6.1
boot
"
            )
        );
        let s = ipxe_script("pc1", &tftp, &files(None, false), "x").unwrap();
        assert!(s.contains("kernel tftp://10.0.0.1/vmlinuz-6.1 x\n") && !s.contains("initrd"));
        // Over HTTP: the node's directory of the boot route; the initrd's
        // name for the EFI stub stays the bare file name.
        let http = boot_base(BootOver::Http, server, 8080, "pc1");
        let s = ipxe_script("pc1", &http, &files(None, true), NFS).unwrap();
        assert!(
            s.contains(&format!(
                "kernel http://10.0.0.1:8080/boot/pc1/vmlinuz-6.1 initrd=initrd.img-6.1 {NFS}\n"
            )),
            "{s}"
        );
        assert!(
            s.contains("initrd http://10.0.0.1:8080/boot/pc1/initrd.img-6.1\n"),
            "{s}"
        );
    }

    #[test]
    fn generated_names_per_kind() {
        let mac = "01-dc-a6-32-01-02-03";
        let g = |kind, path| generated_for(kind, mac, path);
        let (pi, ub, pc) = (NodeKind::Raspberrypi, NodeKind::Uboot, NodeKind::Ipxe);
        assert_eq!(g(pi, "cmdline.txt"), Some(Generated::Cmdline));
        assert_eq!(g(ub, "cmdline.txt"), None);
        assert_eq!(g(ub, "boot.scr.uimg"), Some(Generated::BootScript));
        assert_eq!(g(ub, "boot.scr"), Some(Generated::BootScript));
        assert_eq!(g(pi, "boot.scr.uimg"), Some(Generated::BootScript));
        assert_eq!(g(pc, "boot.scr.uimg"), None);
        assert_eq!(g(pc, "boot.ipxe"), Some(Generated::Ipxe));
        assert_eq!(
            g(ub, "pxelinux.cfg/01-dc-a6-32-01-02-03"),
            Some(Generated::Pxelinux)
        );
        assert_eq!(g(ub, "pxelinux.cfg/default"), Some(Generated::Pxelinux));
        assert_eq!(g(ub, "pxelinux.cfg/01-02-00-00-00-00-01"), None);
    }
}
