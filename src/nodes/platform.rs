//! Which platform of a multi-platform image a node boots, in order: the
//! node's `platform` in the configuration, the architecture its boot
//! firmware names in DHCP option 93 (RFC 4578, IANA "Processor
//! Architecture Types"), `[defaults] platform`, the node kind's default.

use super::Node;
use crate::platform::Platform;

/// The platform whose binaries run on a client of architecture type
/// `arch` (option 93). `None` for types that say nothing useful about it
/// or that no image is built for.
pub(crate) fn of_client_arch(arch: u16) -> Option<Platform> {
    let (arch, variant) = match arch {
        // 0 ("x86 BIOS") is also what the Raspberry Pi boot ROM and many
        // other firmwares send without meaning it: it tells nothing.
        0 => return None,
        // x64 UEFI (7, and 9 as the registry had it once), their HTTP boot
        // forms, PC/AT BIOS over HTTP.
        7 | 9 | 16 | 20 => ("amd64", None),
        6 | 15 => ("386", None),
        // ARM 32-bit UEFI and U-Boot, and their HTTP boot forms.
        10 | 18 | 21 | 23 => ("arm", Some("v7")),
        // ARM 64-bit UEFI and U-Boot, and their HTTP boot forms.
        11 | 19 | 22 | 24 => ("arm64", None),
        // RISC-V 64-bit UEFI, and its HTTP boot form.
        27 | 28 => ("riscv64", None),
        _ => return None,
    };
    Some(Platform::new("linux", arch, variant))
}

/// Where a node's platform came from, for the log and the node's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PlatformSource {
    Configured,
    ClientArch(u16),
    Defaults,
    Kind,
}

impl std::fmt::Display for PlatformSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlatformSource::Configured => write!(f, "the node's platform setting"),
            PlatformSource::ClientArch(a) => write!(f, "DHCP client architecture {a}"),
            PlatformSource::Defaults => write!(f, "[defaults] platform"),
            PlatformSource::Kind => write!(f, "the default of its kind"),
        }
    }
}

/// `node`'s platform and why, given what its firmware said (`arch`) and
/// the `[defaults]` platform.
pub(crate) fn choose(
    node: &Node,
    arch: Option<u16>,
    defaults: Option<&Platform>,
) -> (Platform, PlatformSource) {
    if let Some(p) = &node.platform {
        return (p.clone(), PlatformSource::Configured);
    }
    if let Some((p, a)) = arch.and_then(|a| of_client_arch(a).map(|p| (p, a))) {
        return (p, PlatformSource::ClientArch(a));
    }
    if let Some(p) = defaults {
        return (p.clone(), PlatformSource::Defaults);
    }
    let p = node
        .kind
        .default_platform()
        .parse()
        .expect("kind defaults are valid platforms");
    (p, PlatformSource::Kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_architectures_name_platforms() {
        let s = |a| of_client_arch(a).map(|p| p.to_string());
        assert_eq!(s(0), None, "sent by Pi firmware too");
        assert_eq!(s(7).as_deref(), Some("linux/amd64"));
        assert_eq!(s(9).as_deref(), Some("linux/amd64"));
        assert_eq!(s(6).as_deref(), Some("linux/386"));
        assert_eq!(s(10).as_deref(), Some("linux/arm/v7"));
        assert_eq!(s(11).as_deref(), Some("linux/arm64"));
        assert_eq!(s(22).as_deref(), Some("linux/arm64"));
        assert_eq!(s(27).as_deref(), Some("linux/riscv64"));
        assert_eq!(s(2), None, "Itanium");
        assert_eq!(s(0xffff), None);
    }
}
