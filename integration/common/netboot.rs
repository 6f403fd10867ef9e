//! A small netbootable image and a one-node `serve` config, for the tests
//! of `lazyboot serve` (integration/serve.rs, integration/serve_portmapper.rs).

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::netns::NetLab;
use super::serve::{Serve, Server};
use super::{free_tcp_port, free_udp_port, sh};

/// The MAC of [`pc_config`]'s node `pc`.
pub const IPXE_MAC: &str = "52:54:00:12:34:56";

/// A one-layer image `dir/layout:os`: `fill` is shell run with `$r` set to
/// the root file system (`dir/bundle/rootfs`, kept for comparisons).
pub fn one_layer_image(dir: &Path, fill: &str) -> Result<()> {
    sh(&format!(
        "umoci init --layout {l} && umoci new --image {l}:os && umoci unpack --image {l}:os {b}
r={b}/rootfs
{fill}
umoci repack --image {l}:os {b}",
        l = dir.join("layout").display(),
        b = dir.join("bundle").display(),
    ))
    .map(|_| ())
}

/// A small image laid out like a netbootable OS: Pi firmware files, a kernel
/// and initrd under /boot, and a root file system.
pub fn build_boot_image(dir: &Path, hostname: &str) -> Result<()> {
    one_layer_image(
        dir,
        &format!(
            r#"mkdir -p $r/boot/firmware/overlays $r/etc $r/bin $r/home/user
echo 'arm_64bit=1' > $r/boot/firmware/config.txt
echo 'console=serial0,115200 console=tty1 root=PARTUUID=1234-02 rootfstype=ext4 fsck.repair=yes rootwait' > $r/boot/firmware/cmdline.txt
head -c 300000 /dev/urandom > $r/boot/firmware/start4.elf
head -c 3000000 /dev/urandom > $r/boot/firmware/kernel8.img
head -c 50000 /dev/urandom > $r/boot/firmware/bcm2711-rpi-cm4.dtb
head -c 2000 /dev/urandom > $r/boot/firmware/overlays/vc4-kms-v3d.dtbo
head -c 4000000 /dev/urandom > $r/boot/vmlinuz-6.1.0-test
head -c 2000000 /dev/urandom > $r/boot/initrd.img-6.1.0-test
ln -s vmlinuz-6.1.0-test $r/boot/vmlinuz
ln -s initrd.img-6.1.0-test $r/boot/initrd.img
echo {hostname} > $r/etc/hostname
printf '#!/bin/sh\necho hi\n' > $r/bin/hello && chmod 0755 $r/bin/hello
chown 1000:1000 $r/home/user"#
        ),
    )
}

/// A config with one iPXE node `pc` on `image`, plus `server_extra` TOML
/// in `[server]` and `extra` TOML after the node.
pub fn pc_config(
    lab: &NetLab,
    dir: &Path,
    image: &str,
    (tftp_port, nfs_port): (u16, u16),
    server_extra: &str,
    extra: &str,
) -> Result<PathBuf> {
    let config = dir.join("lazyboot.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
interface = "{host_if}"
address = "{server}"
state_dir = "{state}"
cache_dir = "{cache}"
tftp_port = {tftp_port}
nfs_port = {nfs_port}
{server_extra}

[dhcp]
mode = "off"

[[nodes]]
name = "pc"
mac = "{IPXE_MAC}"
kind = "ipxe"
image = "{image}"
ip = "{pc_ip}"
root = "readonly"
{extra}
"#,
            host_if = lab.host_if,
            server = lab.server_ip,
            state = dir.join("state").display(),
            cache = dir.join("config-cache").display(),
            pc_ip = lab.client_ip,
        ),
    )?;
    Ok(config)
}

/// A running `serve` of [`pc_config`]'s one node, and its TFTP port.
pub struct PcServer {
    pub tftp_port: u16,
    pub nfs_port: u16,
    pub server: Server,
}

/// Write [`pc_config`] (free ports) into `dir` and start `serve` on it with
/// `globals` (log in `dir/serve.log`); it must say "serving".
pub fn serve_pc(
    lab: &NetLab,
    dir: &Path,
    image: &str,
    server_extra: &str,
    extra: &str,
    globals: &[&str],
) -> Result<PcServer> {
    let (tftp_port, nfs_port) = (free_udp_port(), free_tcp_port());
    let config = pc_config(lab, dir, image, (tftp_port, nfs_port), server_extra, extra)?;
    let server = Serve::new(&config).globals(globals).start()?;
    Ok(PcServer {
        tftp_port,
        nfs_port,
        server,
    })
}
