//! Legacy U-Boot images ("uImage"), just enough to wrap a boot script the
//! way `mkimage -A ARCH -O linux -T script -C none -d script.txt out` does.
//!
//! Layout: a 64-byte big-endian header, then the payload. For a script the
//! payload is a one-entry "multi-file" table: the script length (4 bytes,
//! big-endian), a 4-byte zero terminator, then the script text.
//!
//! ```text
//!  0 magic 0x27051956   4 header CRC32   8 timestamp   12 payload size
//! 16 load address      20 entry point   24 payload CRC32
//! 28 OS  29 arch  30 type  31 compression  32..64 name (NUL padded)
//! ```
//!
//! The header CRC is computed over the 64 header bytes with its own field
//! zeroed; both CRCs are the IEEE CRC-32 used by zlib.

pub(crate) const MAGIC: u32 = 0x2705_1956;
pub(crate) const HEADER_LEN: usize = 64;
pub(crate) const NAME_LEN: usize = 32;

pub(crate) const OS_LINUX: u8 = 5;
/// `IH_TYPE_SCRIPT`: a U-Boot script image.
pub const TYPE_SCRIPT: u8 = 6;
pub(crate) const COMP_NONE: u8 = 0;

/// The `IH_ARCH_*` numbers of U-Boot's `image.h` we can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Arch {
    Arm = 2,
    Arm64 = 22,
    X86_64 = 24,
    Riscv = 26,
}

const fn crc32_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc32_table();

/// IEEE CRC-32 (reflected polynomial 0xedb88320, as zlib's `crc32`).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    c ^ 0xffff_ffff
}

/// A decoded legacy header (what `dumpimage -l` shows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub(crate) header_crc: u32,
    pub(crate) timestamp: u32,
    pub(crate) size: u32,
    pub(crate) load: u32,
    pub(crate) entry: u32,
    pub(crate) data_crc: u32,
    pub(crate) os: u8,
    pub(crate) arch: u8,
    /// The image type (`IH_TYPE_*`).
    pub image_type: u8,
    pub(crate) comp: u8,
    pub(crate) name: String,
}

/// Wrap `script` as a legacy script image. `name` is cut to 31 bytes (the
/// field keeps a terminating NUL); `timestamp` is seconds since the epoch.
pub(crate) fn script_image(script: &str, arch: Arch, name: &str, timestamp: u32) -> Vec<u8> {
    let mut payload = Vec::with_capacity(8 + script.len());
    payload.extend_from_slice(&(script.len() as u32).to_be_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes());
    payload.extend_from_slice(script.as_bytes());

    let mut out = vec![0u8; HEADER_LEN];
    out[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    // 4..8: header CRC, filled in last.
    out[8..12].copy_from_slice(&timestamp.to_be_bytes());
    out[12..16].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    // 16..24: load address and entry point stay 0 for scripts.
    out[24..28].copy_from_slice(&crc32(&payload).to_be_bytes());
    out[28] = OS_LINUX;
    out[29] = arch as u8;
    out[30] = TYPE_SCRIPT;
    out[31] = COMP_NONE;
    let name = name.as_bytes();
    let n = name.len().min(NAME_LEN - 1);
    out[32..32 + n].copy_from_slice(&name[..n]);
    let hcrc = crc32(&out);
    out[4..8].copy_from_slice(&hcrc.to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parse and verify a legacy image: magic, header CRC, payload length and
/// payload CRC. Returns the header and the payload.
pub fn parse(image: &[u8]) -> Result<(Header, &[u8]), String> {
    if image.len() < HEADER_LEN {
        return Err(format!("{} bytes is shorter than a header", image.len()));
    }
    if be32(image, 0) != MAGIC {
        return Err(format!("bad magic {:#010x}", be32(image, 0)));
    }
    let mut head = image[..HEADER_LEN].to_vec();
    head[4..8].fill(0);
    let header_crc = be32(image, 4);
    if crc32(&head) != header_crc {
        return Err("header CRC mismatch".into());
    }
    let size = be32(image, 12);
    let payload = image
        .get(HEADER_LEN..HEADER_LEN + size as usize)
        .ok_or_else(|| format!("payload of {size} bytes is truncated"))?;
    let data_crc = be32(image, 24);
    if crc32(payload) != data_crc {
        return Err("data CRC mismatch".into());
    }
    let name_field = &image[32..64];
    let end = name_field.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    Ok((
        Header {
            header_crc,
            timestamp: be32(image, 8),
            size,
            load: be32(image, 16),
            entry: be32(image, 20),
            data_crc,
            os: image[28],
            arch: image[29],
            image_type: image[30],
            comp: image[31],
            name: String::from_utf8_lossy(&name_field[..end]).into_owned(),
        },
        payload,
    ))
}

/// The script text of a script image's payload (length table + text).
pub fn script_text(payload: &[u8]) -> Option<&str> {
    if payload.len() < 8 || be32(payload, 4) != 0 {
        return None;
    }
    let len = be32(payload, 0) as usize;
    std::str::from_utf8(payload.get(8..8 + len)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_known_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414f_a339
        );
    }

    #[test]
    fn script_image_header_bytes() {
        let script = "echo hi\n";
        let img = script_image(script, Arch::Riscv, "lazyboot", 1_700_000_000);
        assert_eq!(img.len(), HEADER_LEN + 8 + script.len());
        assert_eq!(&img[0..4], &[0x27, 0x05, 0x19, 0x56]);
        assert_eq!(&img[8..12], &1_700_000_000u32.to_be_bytes());
        assert_eq!(&img[12..16], &(8 + script.len() as u32).to_be_bytes());
        assert_eq!(&img[16..24], &[0u8; 8]);
        assert_eq!(img[28], 5, "IH_OS_LINUX");
        assert_eq!(img[29], 26, "IH_ARCH_RISCV");
        assert_eq!(img[30], 6, "IH_TYPE_SCRIPT");
        assert_eq!(img[31], 0, "IH_COMP_NONE");
        assert_eq!(&img[32..40], b"lazyboot");
        assert!(img[40..64].iter().all(|&b| b == 0));
        // Payload: length, zero terminator, text.
        assert_eq!(&img[64..68], &(script.len() as u32).to_be_bytes());
        assert_eq!(&img[68..72], &[0, 0, 0, 0]);
        assert_eq!(&img[72..], script.as_bytes());
        // CRCs: data over the payload, header over the header with hcrc = 0.
        assert_eq!(&img[24..28], &crc32(&img[64..]).to_be_bytes());
        let mut head = img[..64].to_vec();
        head[4..8].fill(0);
        assert_eq!(&img[4..8], &crc32(&head).to_be_bytes());

        let (h, payload) = parse(&img).unwrap();
        assert_eq!(h.arch, Arch::Riscv as u8);
        assert_eq!(h.name, "lazyboot");
        assert_eq!(script_text(payload), Some(script));
    }

    #[test]
    fn long_names_are_cut_and_corruption_is_detected() {
        let img = script_image("x", Arch::Arm64, &"n".repeat(80), 0);
        let (h, _) = parse(&img).unwrap();
        assert_eq!(h.name.len(), NAME_LEN - 1);
        assert_eq!(h.arch, 22);

        let mut bad = img.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(parse(&bad).unwrap_err().contains("data CRC"));
        let mut bad = img.clone();
        bad[29] = Arch::Arm as u8;
        assert!(parse(&bad).unwrap_err().contains("header CRC"));
        assert!(parse(&img[..70]).unwrap_err().contains("truncated"));
        assert!(parse(&img[..10]).is_err());
    }

    /// Bytes written by `SOURCE_DATE_EPOCH=1 mkimage -A arm64 -O linux -T
    /// script -C none -n t -d s out` for the 4-byte script "boot".
    #[test]
    fn matches_mkimage_output_byte_for_byte() {
        let golden: [u8; 76] = [
            0x27, 0x05, 0x19, 0x56, 0x6f, 0xf6, 0x4f, 0x1a, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
            0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x41, 0x90, 0xe6, 0xbb,
            0x05, 0x16, 0x06, 0x00, 0x74, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00,
            b'b', b'o', b'o', b't',
        ];
        assert_eq!(script_image("boot", Arch::Arm64, "t", 1), golden);
    }

    fn have(tool: &str) -> bool {
        std::process::Command::new(tool).arg("-V").output().is_ok()
    }

    /// `dumpimage -l` (u-boot-tools) accepts our image and `mkimage` makes
    /// the same bytes for an odd-length script. Skipped without the tools.
    #[test]
    fn u_boot_tools_agree() {
        if !have("dumpimage") || !have("mkimage") {
            eprintln!("NOTICE: u_boot_tools_agree: skipped: dumpimage/mkimage (u-boot-tools) not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let script =
            "setenv bootargs \"console=ttyS0\"\nbooti ${kernel_addr_r} - ${fdtcontroladdr}\n";
        let ours = script_image(script, Arch::Riscv, "lazyboot test", 1_700_000_000);
        let ours_path = dir.path().join("ours.img");
        std::fs::write(&ours_path, &ours).unwrap();
        let out = std::process::Command::new("dumpimage")
            .arg("-l")
            .arg(&ours_path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "dumpimage failed: {text}");
        assert!(
            text.contains("RISC-V Linux Script (uncompressed)"),
            "{text}"
        );
        assert!(text.contains("Image Name:   lazyboot test"), "{text}");
        assert!(
            text.contains(&format!("Image 0: {} Bytes", script.len())),
            "{text}"
        );

        let txt = dir.path().join("s.txt");
        std::fs::write(&txt, script).unwrap();
        let theirs_path = dir.path().join("theirs.img");
        let st = std::process::Command::new("mkimage")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["-A", "riscv", "-O", "linux", "-T", "script", "-C", "none"])
            .args(["-n", "lazyboot test", "-d"])
            .arg(&txt)
            .arg(&theirs_path)
            .output()
            .unwrap();
        assert!(st.status.success());
        assert_eq!(std::fs::read(&theirs_path).unwrap(), ours);
    }
}
