//! Tests of `generated`: file names, command lines, kernel discovery and
//! the scripts.

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
    let f = discover(&b, NodeKind::Uboot, None);
    assert_eq!(f.kernel.unwrap().path, "vmlinuz-6.1.0-9-riscv64");
    assert_eq!(f.initrd.unwrap().path, "initrd.img-6.1.0-9-riscv64");
    assert_eq!(f.fdt_dir.as_deref(), Some("dtbs/6.1.0-9-riscv64"));

    let t = debian_tree(false);
    let b = BootDir::open(&t, "/boot").unwrap();
    let f = discover(&b, NodeKind::Uboot, None);
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
    let f = discover(&b, NodeKind::Raspberrypi, None);
    assert_eq!(f.kernel.unwrap().path, "kernel8.img");
    assert_eq!(f.initrd, None);
    assert_eq!(f.fdt_dir.as_deref(), Some("."));

    let t = Tree::build(&[&[
        file("boot/Image.gz"),
        file("boot/initrd"),
        file("boot/kernel8.img"),
    ]]);
    let b = BootDir::open(&t, "/boot").unwrap();
    let f = discover(&b, NodeKind::Uboot, None);
    assert_eq!(f.kernel.as_ref().unwrap().path, "Image.gz");
    assert_eq!(f.initrd.unwrap().path, "initrd");
    assert_eq!(f.fdt_dir, None);
    let f = discover(&b, NodeKind::Raspberrypi, None);
    assert_eq!(f.kernel.unwrap().path, "kernel8.img");

    // Raspberry Pi OS carries both kernels: a Pi 5 gets its own (its
    // firmware's default) and initramfs; a Pi 4, an unknown Pi and a
    // non-Pi node kernel8.img; a Pi 5 without kernel_2712.img too.
    let fw = |n: &str| file(&format!("boot/firmware/{n}"));
    let pi_os = [fw("kernel8.img"), fw("initramfs8"), fw("kernel_2712.img")];
    let t = Tree::build(&[&pi_os, &[fw("initramfs_2712")]]);
    let b = BootDir::open(&t, "/boot/firmware").unwrap();
    let t4 = Tree::build(&[&pi_os[..2]]);
    let b4 = BootDir::open(&t4, "/boot/firmware").unwrap();
    let (pi, p5) = (NodeKind::Raspberrypi, Some(PiModel::Pi5));
    for (b, kind, model, k, i) in [
        (&b, pi, p5, "kernel_2712.img", "initramfs_2712"),
        (&b, pi, None, "kernel8.img", "initramfs8"),
        (&b, pi, Some(PiModel::Pi4), "kernel8.img", "initramfs8"),
        (&b, NodeKind::Uboot, p5, "kernel8.img", "initramfs8"),
        (&b4, pi, p5, "kernel8.img", "initramfs8"),
    ] {
        let f = discover(b, kind, model);
        assert_eq!(
            (f.kernel.unwrap().path, f.initrd.unwrap().path),
            (k.into(), i.into())
        );
    }

    // A vmlinuz link leading out of the boot dir is not used.
    let t = Tree::build(&[&[file("vmlinuz-1"), link("boot/vmlinuz", "../vmlinuz-1")]]);
    let b = BootDir::open(&t, "/boot").unwrap();
    assert_eq!(discover(&b, NodeKind::Ipxe, None), BootFiles::default());
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
