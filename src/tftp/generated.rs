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
use crate::nodes::pi_model::PiModel;
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
/// Raspberry Pi's name), `zImage`, with `initrd.img`, `initrd`,
/// `initramfs8`. Pi nodes try their firmware's kernels first: a Pi 5's
/// (`pi`, what its bootloader said) `kernel_2712.img` with
/// `initramfs_2712`, then `kernel8.img` with `initramfs8`.
pub(crate) fn discover(boot: &BootDir, kind: NodeKind, pi: Option<PiModel>) -> BootFiles {
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
        // A Pi's own names first, in the order its firmware tries them
        // (a Pi 4's when the bootloader did not say which Pi it is).
        let pi_kernels = match kind {
            NodeKind::Raspberrypi => pi.unwrap_or(PiModel::Pi4).default_kernels(),
            _ => &[],
        };
        let generic = ["Image", "Image.gz", "kernel8.img", "zImage"];
        let mut names = pi_kernels.iter().map(|(k, _)| *k).chain(generic);
        out.kernel = names.find_map(|n| boot.file(n));
        if let Some(k) = &out.kernel {
            // The initramfs that goes with a Pi kernel, then the usual names.
            let own = pi_kernels
                .iter()
                .chain(PiModel::Pi4.default_kernels())
                .find(|(n, _)| *n == k.path)
                .map_or(&[][..], |(_, i)| *i);
            let usual = ["initrd.img", "initrd", "initramfs8"];
            out.initrd = own.iter().copied().chain(usual).find_map(|n| boot.file(n));
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
#[path = "generated_tests.rs"]
mod tests;
