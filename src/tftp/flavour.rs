//! Which program in an image's initramfs mounts the NFS root, and the root
//! arguments it accepts. Pure text work: the caller tells which marker
//! files exist.

use std::net::Ipv4Addr;

/// `root=/dev/nfs nfsroot=SERVER:/nodes/NAME,vers=3,tcp,port=P,mountport=P,nolock rw ip=dhcp`:
/// the kernel's own NFS root client (and initramfs scripts that parse the
/// same arguments), NFSv3 over TCP on one port for both NFS and MOUNT, so
/// neither a portmapper nor a lock manager is needed.
pub(crate) fn nfs_root_args(server: Ipv4Addr, export: &str, port: u16) -> String {
    format!(
        "root=/dev/nfs nfsroot={server}:{export},vers=3,tcp,port={port},mountport={port},nolock rw ip=dhcp"
    )
}

/// Which program in the image's initramfs mounts the root, which decides
/// the root arguments it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavour {
    /// Debian's and Ubuntu's initramfs-tools: klibc `nfsmount`, which
    /// rejects `mountport=` and asks the portmapper for MOUNT.
    InitramfsTools,
    /// dracut (Fedora, RHEL, Debian with dracut): `mount.nfs`.
    Dracut,
    /// Raspberry Pi OS: the kernel mounts the root itself.
    RaspberryPiOs,
    /// Anything else: the kernel's `nfsroot=` syntax (custom initramfs
    /// scripts, or no initramfs).
    Kernel,
}

impl Flavour {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Flavour::InitramfsTools => "initramfs-tools",
            Flavour::Dracut => "dracut",
            Flavour::RaspberryPiOs => "raspberry-pi-os",
            Flavour::Kernel => "kernel",
        }
    }
}

/// Paths (inside the image) that tell a flavour, in the order they are
/// believed: files a package owns before configuration files that may
/// outlive it.
pub(crate) const FLAVOUR_MARKERS: &[(&str, Flavour)] = &[
    ("usr/lib/dracut/dracut-functions.sh", Flavour::Dracut),
    ("usr/share/initramfs-tools/init", Flavour::InitramfsTools),
    ("etc/dracut.conf", Flavour::Dracut),
    (
        "etc/initramfs-tools/initramfs.conf",
        Flavour::InitramfsTools,
    ),
    ("etc/rpi-issue", Flavour::RaspberryPiOs),
];

/// The flavour told by the first marker (in [`FLAVOUR_MARKERS`] order) for
/// which `exists` says yes; [`Flavour::Kernel`] if none.
pub(crate) fn detect_flavour(exists: impl Fn(&str) -> bool) -> Flavour {
    FLAVOUR_MARKERS
        .iter()
        .find(|(path, _)| exists(path))
        .map_or(Flavour::Kernel, |(_, f)| *f)
}

/// The root arguments `flavour` accepts for the node's export. A node's
/// `root_args` replaces them (with `{server}`, `{export}` and `{port}`
/// filled in).
pub(crate) fn root_args(
    flavour: Flavour,
    server: Ipv4Addr,
    export: &str,
    port: u16,
    custom: Option<&str>,
) -> String {
    if let Some(c) = custom {
        return c
            .replace("{server}", &server.to_string())
            .replace("{export}", export)
            .replace("{port}", &port.to_string());
    }
    match flavour {
        // klibc nfsmount knows `port=` but not `mountport=`: MOUNT is
        // found through the portmapper.
        Flavour::InitramfsTools => {
            let port = if port == 2049 {
                String::new()
            } else {
                format!(",port={port}")
            };
            format!("root=/dev/nfs nfsroot={server}:{export},vers=3,tcp,nolock{port} ip=dhcp rw")
        }
        Flavour::Dracut => format!(
            "root=nfs:{server}:{export}:vers=3,tcp,nolock,port={port},mountport={port} rd.neednet=1 ip=dhcp rw"
        ),
        Flavour::RaspberryPiOs | Flavour::Kernel => nfs_root_args(server, export, port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NFS: &str = "root=/dev/nfs nfsroot=10.0.0.1:/nodes/pi1,vers=3,tcp,port=2049,mountport=2049,nolock rw ip=dhcp";

    #[test]
    fn nfs_args_format() {
        assert_eq!(
            nfs_root_args(Ipv4Addr::new(10, 0, 0, 1), "/nodes/pi1", 2049),
            NFS
        );
    }

    #[test]
    fn root_args_per_flavour() {
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let it = root_args(Flavour::InitramfsTools, ip, "/nodes/n1", 2049, None);
        assert_eq!(
            it,
            "root=/dev/nfs nfsroot=10.0.0.1:/nodes/n1,vers=3,tcp,nolock ip=dhcp rw"
        );
        assert!(
            !it.contains("mountport"),
            "klibc nfsmount rejects mountport="
        );
        assert!(
            root_args(Flavour::InitramfsTools, ip, "/nodes/n1", 3049, None)
                .contains(",nolock,port=3049 ")
        );
        assert_eq!(
            root_args(Flavour::Dracut, ip, "/nodes/n1", 2049, None),
            "root=nfs:10.0.0.1:/nodes/n1:vers=3,tcp,nolock,port=2049,mountport=2049 rd.neednet=1 ip=dhcp rw"
        );
        assert_eq!(
            root_args(Flavour::Kernel, ip, "/nodes/n1", 2049, None),
            nfs_root_args(ip, "/nodes/n1", 2049)
        );
        assert_eq!(
            root_args(
                Flavour::Dracut,
                ip,
                "/nodes/n1",
                2049,
                Some("root=nfs4:{server}:{export} port={port}")
            ),
            "root=nfs4:10.0.0.1:/nodes/n1 port=2049"
        );
    }

    #[test]
    fn flavour_from_markers() {
        let has = |paths: &'static [&'static str]| move |p: &str| paths.contains(&p);
        assert_eq!(
            detect_flavour(has(&["etc/initramfs-tools/initramfs.conf"])),
            Flavour::InitramfsTools
        );
        assert_eq!(detect_flavour(has(&["etc/dracut.conf"])), Flavour::Dracut);
        // A package file beats a configuration file left behind.
        assert_eq!(
            detect_flavour(has(&[
                "etc/initramfs-tools/initramfs.conf",
                "usr/lib/dracut/dracut-functions.sh"
            ])),
            Flavour::Dracut
        );
        assert_eq!(
            detect_flavour(has(&["etc/rpi-issue"])),
            Flavour::RaspberryPiOs
        );
        assert_eq!(detect_flavour(has(&[])), Flavour::Kernel);
    }
}
