//! Which Raspberry Pi family an EEPROM bootloader belongs to, from the
//! client GUID (DHCP option 97) it sends.
//!
//! Raspberry Pi's "bootloader configuration" documentation (`DHCP_OPTION97`)
//! gives the GUID as a type byte 0 and then the concatenation of a
//! four-character code (`RPi4`, 0x34695052, on a Pi 4; `RPi5`, 0x35695052,
//! on a Pi 5), the board revision, the low 4 bytes of the MAC and the
//! 4-byte serial number; the Pi 5 release notes (rpi-eeprom
//! `firmware-2712/release-notes.md`, 2023-10-30: "Update DHCP Option97 to be
//! R,P,i,5 on Pi5") give the byte order. `DHCP_OPTION97=0` brings back the
//! old GUID (the serial number four times) and any other value replaces the
//! code, so a GUID without a known code says nothing: such a Pi is known by
//! its MAC prefix and configured kind, as before.
//!
//! The family matters for what its firmware asks for: a Pi 5 (and CM5,
//! Pi 500) has its firmware in the EEPROM (no `start4.elf`) and loads
//! `kernel_2712.img` when the boot directory has it, `kernel8.img`
//! otherwise ("Boot options" of Raspberry Pi's `config.txt` documentation).

/// A Raspberry Pi family, by the SoC its EEPROM bootloader runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PiModel {
    /// BCM2711: Pi 4, Pi 400, CM4, CM4S.
    Pi4,
    /// BCM2712: Pi 5, Pi 500, CM5.
    Pi5,
}

impl PiModel {
    /// The family named by the four-character code of an option 97 value
    /// (type byte first). The code is also accepted reversed ("5iPR"), as a
    /// DHCP server that reads the GUID as a big-endian word shows it.
    pub(crate) fn from_machine_id(id: &[u8]) -> Option<PiModel> {
        let code: [u8; 4] = id.get(1..5)?.try_into().ok()?;
        let model = match code {
            [b'R', b'P', b'i', m] | [m, b'i', b'P', b'R'] => m,
            _ => return None,
        };
        match model {
            b'4' => Some(PiModel::Pi4),
            b'5' => Some(PiModel::Pi5),
            _ => None,
        }
    }

    /// How the log names it.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            PiModel::Pi4 => "Raspberry Pi 4 family (BCM2711)",
            PiModel::Pi5 => "Raspberry Pi 5 family (BCM2712)",
        }
    }

    /// The kernels its firmware loads when `config.txt` names none, in the
    /// order it tries them, each with the initramfs names that go with it.
    pub(crate) fn default_kernels(self) -> &'static [(&'static str, &'static [&'static str])] {
        match self {
            PiModel::Pi4 => &[("kernel8.img", &["initramfs8"])],
            PiModel::Pi5 => &[
                ("kernel_2712.img", &["initramfs_2712"]),
                ("kernel8.img", &["initramfs8"]),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An option 97 value as the documentation lays it out: type 0, code,
    /// board revision, MAC low bytes, serial.
    fn guid(code: &[u8; 4]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend(code);
        v.extend(0x00d0_4170u32.to_le_bytes());
        v.extend([0x32, 0x8b, 0x07, 0xc6]);
        v.extend(0x8b07_bcc6u32.to_le_bytes());
        v
    }

    #[test]
    fn the_four_character_code_names_the_family() {
        assert_eq!(PiModel::from_machine_id(&guid(b"RPi5")), Some(PiModel::Pi5));
        assert_eq!(PiModel::from_machine_id(&guid(b"RPi4")), Some(PiModel::Pi4));
        // 0x35695052 written big-endian.
        assert_eq!(PiModel::from_machine_id(&guid(b"5iPR")), Some(PiModel::Pi5));
        assert_eq!(
            PiModel::from_machine_id(&0x3569_5052u32.to_be_bytes()),
            None,
            "no type byte: too short to hold the code"
        );
    }

    #[test]
    fn other_guids_say_nothing() {
        // DHCP_OPTION97=0: the serial number four times.
        let mut old = vec![0];
        for _ in 0..4 {
            old.extend([0x8b, 0x07, 0xbc, 0xc6]);
        }
        assert_eq!(PiModel::from_machine_id(&old), None);
        // A custom prefix, another model digit, an empty option.
        assert_eq!(PiModel::from_machine_id(&guid(b"ACME")), None);
        assert_eq!(PiModel::from_machine_id(&guid(b"RPi3")), None);
        assert_eq!(PiModel::from_machine_id(&[]), None);
        assert_eq!(PiModel::from_machine_id(&[0, b'R', b'P']), None);
    }

    #[test]
    fn a_pi_5_prefers_its_own_kernel() {
        let names: Vec<&str> = PiModel::Pi5
            .default_kernels()
            .iter()
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(names, ["kernel_2712.img", "kernel8.img"]);
        assert_eq!(PiModel::Pi4.default_kernels()[0].0, "kernel8.img");
    }
}
