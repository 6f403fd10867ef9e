//! GRUB for ARM64 UEFI machines: the network EFI image served as
//! `grubnetaa64.efi` (Debian builds no iPXE for them) and the `grub.cfg`
//! it reads, generated per node.
//!
//! Debian's monolithic `grubnetaa64.efi` (package `grub-efi-arm64-bin`)
//! has every module built in and the prefix `/grub` on the device it was
//! loaded from, the TFTP server the firmware's DHCP answer named. Its
//! built-in configuration sources `$prefix/arm64-efi/grub.cfg` if that
//! exists, else `$prefix/grub.cfg`: both names are the generated file here,
//! so an image's own `/boot/grub/...` never gets in the way.

use super::generated::BootFiles;
use std::path::Path;

/// The names GRUB asks for its configuration under, in a node's namespace.
pub(crate) const GRUB_CFG_PATHS: [&str; 2] = ["grub/arm64-efi/grub.cfg", "grub/grub.cfg"];

/// `s` as one GRUB script word: single quotes keep everything literal
/// (`$`, `;`, spaces); a quote inside is closed, escaped and reopened.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A node's `grub.cfg`: load the kernel with the boot arguments and the
/// initrd (if any) from the node's namespace on the TFTP server GRUB was
/// loaded from (`$root`), and boot. The firmware hands the kernel its
/// device tree or ACPI tables. `None` without a kernel.
pub(crate) fn grub_cfg(node: &str, files: &BootFiles, args: &str) -> Option<String> {
    let kernel = files.kernel.as_ref()?;
    let mut s = format!("# lazyboot GRUB configuration for node {node} (generated)\n");
    s.push_str(&format!(
        "echo {}\n",
        quote(&format!("lazyboot: booting {node}"))
    ));
    let words: Vec<String> = args.split_whitespace().map(quote).collect();
    s.push_str(&format!(
        "linux {} {}\n",
        quote(&format!("/{}", kernel.path)),
        words.join(" ")
    ));
    if let Some(initrd) = &files.initrd {
        s.push_str(&format!("initrd {}\n", quote(&format!("/{}", initrd.path))));
    }
    s.push_str("boot\n");
    s.push_str(&format!(
        "echo {}\n",
        quote(&format!("lazyboot: booting {node} failed"))
    ));
    Some(s)
}

/// A `grub.cfg` that waits `secs` and reads `path` again, for a node whose
/// image is still being opened.
pub(crate) fn retry_cfg(say: &str, path: &str, secs: u32) -> String {
    format!(
        "echo {}\nsleep {secs}\nconfigfile {}\n",
        quote(say),
        quote(&format!("/{path}"))
    )
}

/// Why the GRUB image at `path` cannot be served, for the log.
pub(crate) fn missing_loader(path: &Path, err: &std::io::Error) -> String {
    format!(
        "cannot read the GRUB image for ARM64 UEFI clients {}: {err} (install Debian's {}, \
         or set [server] grub_arm64_efi)",
        path.display(),
        crate::config::GRUB_ARM64_EFI_PACKAGE
    )
}

#[cfg(test)]
mod tests {
    use super::super::bootfs::FoundFile;
    use super::*;

    fn found(path: &str) -> FoundFile {
        FoundFile {
            ino: 1,
            size: 1,
            mtime: 0,
            path: path.into(),
        }
    }

    #[test]
    fn grub_cfg_loads_kernel_and_initrd_with_the_arguments() {
        let files = BootFiles {
            kernel: Some(found("vmlinuz-6.1.0-9-arm64")),
            initrd: Some(found("initrd.img-6.1.0-9-arm64")),
            fdt_dir: None,
        };
        let args = "console=ttyAMA0 root=/dev/nfs nfsroot=10.0.0.1:/nodes/a,vers=3 it's";
        let cfg = grub_cfg("a", &files, args).unwrap();
        assert_eq!(
            cfg,
            "# lazyboot GRUB configuration for node a (generated)\n\
             echo 'lazyboot: booting a'\n\
             linux '/vmlinuz-6.1.0-9-arm64' 'console=ttyAMA0' 'root=/dev/nfs' \
             'nfsroot=10.0.0.1:/nodes/a,vers=3' 'it'\\''s'\n\
             initrd '/initrd.img-6.1.0-9-arm64'\n\
             boot\n\
             echo 'lazyboot: booting a failed'\n"
        );
        let no_initrd = BootFiles {
            initrd: None,
            ..files
        };
        let cfg = grub_cfg("a", &no_initrd, "quiet").unwrap();
        assert!(!cfg.contains("initrd"), "{cfg}");
        assert!(grub_cfg("a", &BootFiles::default(), "").is_none());
    }

    #[test]
    fn retry_cfg_reads_the_same_file_again() {
        let cfg = retry_cfg("wait", "grub/grub.cfg", 2);
        assert_eq!(cfg, "echo 'wait'\nsleep 2\nconfigfile '/grub/grub.cfg'\n");
    }

    #[test]
    fn both_names_grub_asks_for_are_generated() {
        use super::super::generated::{generated_for, retry_later, Generated};
        use crate::config::NodeKind;
        for path in GRUB_CFG_PATHS {
            assert_eq!(
                generated_for(NodeKind::Ipxe, "01-52-54-00-00-00-02", path),
                Some(Generated::Grub),
                "{path}"
            );
            let retry = retry_later(Generated::Grub, NodeKind::Ipxe, "arm", path, 2).unwrap();
            let text = String::from_utf8(retry).unwrap();
            assert!(text.ends_with(&format!("configfile '/{path}'\n")), "{text}");
        }
        assert_eq!(
            generated_for(NodeKind::Ipxe, "01-52-54-00-00-00-02", "grub/x.cfg"),
            None
        );
    }
}
