//! What a request says about the machine that sent it, and the replies we
//! build for it. Pure functions: no sockets, no clock, no state.
//!
//! Per node kind:
//! - Raspberry Pi: option 60 `PXEClient` and option 43 carrying a one-entry
//!   PXE boot menu "Raspberry Pi Boot   " are what make the boot ROM accept
//!   the offer; the TFTP server is siaddr (and option 66 for the Pi 4).
//! - U-Boot: next-server (siaddr) and the boot file `boot.scr.uimg`, the
//!   script its distro boot asks for.
//! - iPXE: a PXE ROM without iPXE is chainloaded into iPXE (`undionly.kpxe`
//!   for BIOS, `ipxe.efi` for x86-64 UEFI); iPXE itself (user class `iPXE`)
//!   gets `boot.ipxe`. Option 175.176 = 1 tells iPXE not to wait ~3 s for a
//!   ProxyDHCP offer that will never come. ARM64 UEFI PXE firmware, for
//!   which Debian builds no iPXE, gets GRUB's network image
//!   (`grubnetaa64.efi`), which reads the generated `grub/grub.cfg` over
//!   TFTP from the server that booted it.
//! - UEFI HTTP boot (option 60 `HTTPClient...`): option 60 `HTTPClient`
//!   back (the firmware ignores offers without it) and the boot file as a
//!   URL of the HTTP boot route: `ipxe.efi` for x86-64. With
//!   `boot_over = "http"`, iPXE gets its script as a URL too, so nothing of
//!   the boot goes over TFTP.

use crate::config::{BootOver, MacAddr, NodeKind, GRUB_ARM64_EFI, GRUB_ARM64_EFI_PACKAGE};
use crate::nodes::pi_model::PiModel;
use crate::nodes::{is_raspberry_pi_mac, KindHint};
use dhcproto::v4::{
    DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::Encodable;
use std::net::Ipv4Addr;
use std::path::Path;

/// The U-Boot boot script TFTP generates per node.
pub(crate) const UBOOT_SCRIPT: &str = "boot.scr.uimg";
/// The iPXE script TFTP generates per node.
pub(crate) const IPXE_SCRIPT: &str = "boot.ipxe";
/// iPXE for PXE ROMs of BIOS machines (from Debian's `ipxe` package).
pub(crate) const IPXE_BIOS: &str = "undionly.kpxe";
/// iPXE for x86-64 UEFI PXE (from Debian's `ipxe` package).
pub(crate) const IPXE_EFI: &str = "ipxe.efi";
/// The PXE menu entry the Raspberry Pi boot ROM looks for. The Pi 3 ROM
/// compares a fixed-length field, hence the three trailing spaces.
pub(crate) const RASPBERRY_PI_MENU: &str = "Raspberry Pi Boot   ";

/// Replies shorter than a BOOTP packet (300 bytes) are dropped by some PXE
/// ROMs; pad up to it.
pub(crate) const MIN_REPLY_LEN: usize = 300;

// Client system architecture types (RFC 4578, IANA registry).
const ARCH_X86_BIOS: u16 = 0;
const ARCH_X64_EFI_BC: u16 = 7;
const ARCH_X64_EFI: u16 = 9;
const ARCH_IA32_EFI: u16 = 6;
const ARCH_X64_EFI_HTTP: u16 = 16;
const ARCH_ARM64_EFI: u16 = 11;

/// Option 175: iPXE's encapsulated options; sub-option 176 = 1 is
/// "no-pxedhcp", skip waiting for ProxyDHCP offers.
const OPTION_IPXE_ENCAP: u8 = 175;
const IPXE_NO_PXEDHCP: u8 = 176;

// PXE sub-options of option 43 (PXE spec 2.1, section 2.3.5 and on).
const PXE_DISCOVERY_CONTROL: u8 = 6;
const PXE_BOOT_MENU: u8 = 9;
const PXE_MENU_PROMPT: u8 = 10;
const PXE_END: u8 = 255;

/// What a request tells about the machine that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientFacts {
    pub(crate) mac: MacAddr,
    /// Option 60 (vendor class identifier).
    pub(crate) vendor_class: Option<Vec<u8>>,
    /// Option 77 says `iPXE`: the client already runs iPXE.
    pub(crate) ipxe: bool,
    /// Option 93 (first architecture type listed).
    pub(crate) arch: Option<u16>,
    /// Option 97 (client machine identifier, type byte + GUID).
    pub(crate) machine_id: Option<Vec<u8>>,
}

impl ClientFacts {
    /// `None` unless chaddr is an Ethernet MAC.
    pub(crate) fn from_message(msg: &Message) -> Option<ClientFacts> {
        let mac: [u8; 6] = msg.chaddr().try_into().ok()?;
        let opts = msg.opts();
        let bytes = |code| match opts.get(code) {
            Some(DhcpOption::ClassIdentifier(v))
            | Some(DhcpOption::UserClass(v))
            | Some(DhcpOption::ClientMachineIdentifier(v)) => Some(v.clone()),
            _ => None,
        };
        let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
            _ => None,
        };
        Some(ClientFacts {
            mac: MacAddr(mac),
            vendor_class: bytes(OptionCode::ClassIdentifier),
            ipxe: bytes(OptionCode::UserClass).is_some_and(|u| user_class_has(&u, b"iPXE")),
            arch,
            machine_id: bytes(OptionCode::ClientMachineIdentifier),
        })
    }

    /// Whether this request comes from boot firmware (a PXE ROM, the Pi's
    /// boot ROM, U-Boot or iPXE) rather than from an OS's DHCP client. Only
    /// those start a new boot: a running system renewing its address must
    /// not make the next mount wipe its ephemeral root.
    pub(crate) fn sent_by_boot_firmware(&self) -> bool {
        self.ipxe
            || self.vendor_class_starts_with(b"PXEClient")
            || self.vendor_class_starts_with(b"U-Boot")
            || self.is_http_client()
    }

    /// UEFI HTTP boot firmware (option 60 `HTTPClient:Arch:...`).
    pub(crate) fn is_http_client(&self) -> bool {
        self.vendor_class_starts_with(b"HTTPClient")
    }

    fn vendor_class_starts_with(&self, prefix: &[u8]) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with(prefix))
    }

    /// A PXE client (option 60 `PXEClient...`, or iPXE) or a UEFI HTTP
    /// boot client: the only kinds a ProxyDHCP server may answer, since
    /// only they know that an offer without an address is not an address
    /// offer (UEFI 2.x, 24.7: HTTP boot takes its URL from a proxy offer).
    pub(crate) fn is_pxe_client(&self) -> bool {
        self.ipxe || self.vendor_class_starts_with(b"PXEClient") || self.is_http_client()
    }

    /// The Pi 4 and 5 bootloaders put "RPi" into the GUID of option 97
    /// (stored little-endian, so it may read "iPR"); older Pis are known by
    /// MAC.
    fn looks_like_raspberry_pi(&self) -> bool {
        let guid_says_pi = self.machine_id.as_deref().is_some_and(|id| {
            id.len() > 1 && id[1..].windows(3).any(|w| w == b"RPi" || w == b"iPR")
        });
        is_raspberry_pi_mac(self.mac) || guid_says_pi
    }

    /// The Raspberry Pi family the GUID of option 97 names, if it names one.
    pub(crate) fn pi_model(&self) -> Option<PiModel> {
        self.machine_id
            .as_deref()
            .and_then(PiModel::from_machine_id)
    }

    /// The kind the request suggests, for nodes made from `[defaults]`.
    /// The explicit markers come first: the user class `iPXE`, a vendor
    /// class `U-Boot*`; then the Pi's MAC prefix or option 97 (a Pi's
    /// option 60 is the generic "PXEClient:Arch:00000:UNDI:002001", which
    /// alone would read as an x86 BIOS PC); then an x86 PXE architecture.
    pub(crate) fn hint(&self) -> KindHint {
        let kind = if self.ipxe {
            Some(NodeKind::Ipxe)
        } else if self.vendor_class_starts_with(b"U-Boot") {
            Some(NodeKind::Uboot)
        } else if self.looks_like_raspberry_pi() {
            Some(NodeKind::Raspberrypi)
        } else if (self.vendor_class_starts_with(b"PXEClient")
            && matches!(
                self.arch,
                None | Some(
                    ARCH_X86_BIOS | ARCH_IA32_EFI | ARCH_X64_EFI_BC | ARCH_X64_EFI | ARCH_ARM64_EFI
                )
            ))
            || (self.is_http_client() && self.arch == Some(ARCH_X64_EFI_HTTP))
        {
            Some(NodeKind::Ipxe)
        } else {
            None
        };
        KindHint(kind)
    }
}

/// Option 77 is either the raw class (iPXE sends the 4 bytes `iPXE`) or an
/// RFC 3004 list of length-prefixed classes; accept both.
fn user_class_has(data: &[u8], class: &[u8]) -> bool {
    if data == class {
        return true;
    }
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = len as usize;
        if len == 0 || len > tail.len() {
            return false;
        }
        if &tail[..len] == class {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

/// Option 43 with a PXE boot menu of one entry (type 0, "boot from the
/// server that answered"), laid out as dnsmasq's `pxe-service` does and the
/// Raspberry Pi ROM expects: discovery control 3 (no broadcast or
/// multicast boot server discovery), a prompt with timeout 0 (boot the
/// only entry at once), the menu, END.
pub(crate) fn pxe_menu_option(menu: &str) -> Vec<u8> {
    let desc = menu.as_bytes();
    assert!(desc.len() <= 240, "PXE menu entry too long for option 43");
    let mut v = vec![PXE_DISCOVERY_CONTROL, 1, 3];
    v.extend([PXE_MENU_PROMPT, 4, 0, b'P', b'X', b'E']);
    v.extend([PXE_BOOT_MENU, 3 + desc.len() as u8, 0, 0, desc.len() as u8]);
    v.extend(desc);
    v.push(PXE_END);
    v
}

/// Option 43 for a ProxyDHCP offer to a PXE ROM that gets a boot file:
/// discovery control 8, "download the boot file named in this offer, no
/// menu, no boot server discovery".
pub(crate) fn pxe_direct_boot_option() -> Vec<u8> {
    vec![PXE_DISCOVERY_CONTROL, 1, 8, PXE_END]
}

/// Option 175 with sub-option 176 = 1.
pub(crate) fn ipxe_no_pxedhcp_option() -> DhcpOption {
    DhcpOption::Unknown(UnknownOption::new(
        OptionCode::Unknown(OPTION_IPXE_ENCAP),
        vec![IPXE_NO_PXEDHCP, 1, 1],
    ))
}

/// Boot-related parts of a reply for one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BootPlan {
    /// next-server: where the client's TFTP requests go.
    pub(crate) siaddr: Ipv4Addr,
    /// Boot file, sent both in the BOOTP `file` field (if it fits its 128
    /// bytes) and as option 67: a name in the node's TFTP namespace or an
    /// `http://` URL.
    pub(crate) file: Option<String>,
    /// Options 43, 60, 66, 67, 97, 175 as the kind needs.
    pub(crate) options: Vec<DhcpOption>,
}

/// A string option with a trailing NUL: some PXE ROMs need it for 66/67
/// (dnsmasq always sends it for those two), and it is harmless to others.
fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// The boot file for a client of an `ipxe` node: iPXE gets its script; a
/// PXE ROM gets the iPXE build for its architecture, ARM64 UEFI PXE GRUB;
/// `None` for an architecture we have no loader for. GRUB is not offered
/// to ARM64 UEFI HTTP boot (19): loaded over HTTP, it would look for its
/// configuration over HTTP on port 80, not on the boot route.
pub(crate) fn pxe_boot_file(facts: &ClientFacts) -> Option<&'static str> {
    if facts.ipxe {
        return Some(IPXE_SCRIPT);
    }
    match facts.arch {
        None | Some(ARCH_X86_BIOS) => Some(IPXE_BIOS),
        Some(ARCH_X64_EFI_BC | ARCH_X64_EFI | ARCH_X64_EFI_HTTP) => Some(IPXE_EFI),
        Some(ARCH_ARM64_EFI) if !facts.is_http_client() => Some(GRUB_ARM64_EFI),
        Some(_) => None,
    }
}

/// What the HTTP boot route is for a node: what URLs in a reply need.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HttpBoot<'a> {
    /// `[server] boot_over`.
    pub(crate) over: BootOver,
    /// `[server] http_port`.
    pub(crate) port: u16,
    /// The node's name (its directory of the route).
    pub(crate) node: &'a str,
}

impl HttpBoot<'_> {
    fn url(&self, server: Ipv4Addr, file: &str) -> String {
        let dir = crate::config::http_boot_dir(server, self.port, self.node);
        format!("{dir}/{file}")
    }
}

/// What to tell `facts`' machine, a node of `kind`, to boot. `proxy`: the
/// reply is a ProxyDHCP one, which a PXE ROM only recognises by option 60
/// `PXEClient` (and which must carry option 43).
pub(crate) fn boot_plan(
    kind: NodeKind,
    facts: &ClientFacts,
    server: Ipv4Addr,
    proxy: bool,
    http: &HttpBoot<'_>,
) -> BootPlan {
    let mut options = vec![DhcpOption::TFTPServerName(nul_terminated(
        &server.to_string(),
    ))];
    let file = match kind {
        NodeKind::Raspberrypi => {
            options.push(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
            options.push(DhcpOption::VendorExtensions(pxe_menu_option(
                RASPBERRY_PI_MENU,
            )));
            None
        }
        NodeKind::Uboot => Some(UBOOT_SCRIPT.to_string()),
        NodeKind::Ipxe if facts.is_http_client() && !facts.ipxe => {
            // UEFI HTTP boot only accepts an offer that says HTTPClient,
            // and loads whatever URL it is given.
            options.push(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
            pxe_boot_file(facts).map(|f| http.url(server, f))
        }
        NodeKind::Ipxe => {
            options.push(ipxe_no_pxedhcp_option());
            if proxy {
                options.push(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
                options.push(DhcpOption::VendorExtensions(pxe_direct_boot_option()));
            }
            pxe_boot_file(facts).map(|f| match http.over {
                BootOver::Http if facts.ipxe => http.url(server, f),
                _ => f.to_string(),
            })
        }
    };
    if let Some(f) = &file {
        options.push(DhcpOption::BootfileName(nul_terminated(f)));
    }
    // PXE clients expect their UUID back (PXE spec); others ignore it.
    if let Some(id) = &facts.machine_id {
        options.push(DhcpOption::ClientMachineIdentifier(id.clone()));
    }
    BootPlan {
        siaddr: server,
        file,
        options,
    }
}

/// What is wrong with `plan` for a node of `kind` whose firmware named
/// client architecture `arch`, for the log: no loader for that
/// architecture, or GRUB offered while its file `grub` is missing
/// (`grub_present` looks).
pub(crate) fn plan_warning(
    kind: NodeKind,
    plan: &BootPlan,
    arch: Option<u16>,
    grub: &Path,
    grub_present: impl FnOnce() -> bool,
) -> Option<String> {
    match plan.file.as_deref() {
        None if kind == NodeKind::Ipxe => Some(format!(
            "no boot loader (iPXE or GRUB) for client architecture {arch:?}; no boot file offered"
        )),
        Some(GRUB_ARM64_EFI) if !grub_present() => Some(format!(
            "ARM64 UEFI client offered {GRUB_ARM64_EFI}, but {} is missing \
             (install Debian's {GRUB_ARM64_EFI_PACKAGE}, or set [server] grub_arm64_efi)",
            grub.display()
        )),
        _ => None,
    }
}

/// Address configuration sent with a full-mode lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NetworkOptions {
    pub(crate) mask: Ipv4Addr,
    pub(crate) broadcast: Ipv4Addr,
    pub(crate) router: Option<Ipv4Addr>,
    pub(crate) dns: Vec<Ipv4Addr>,
    pub(crate) domain: Option<String>,
}

/// One reply to build.
#[derive(Clone, Debug)]
pub(crate) struct Reply<'a> {
    pub(crate) msg_type: MessageType,
    /// The address given (0.0.0.0 for ProxyDHCP and INFORM replies).
    pub(crate) yiaddr: Ipv4Addr,
    /// Our address: server identifier (54).
    pub(crate) server: Ipv4Addr,
    /// Lease time (51) with T1/T2 (58/59); `None` for INFORM and proxy.
    pub(crate) lease_secs: Option<u32>,
    pub(crate) network: Option<&'a NetworkOptions>,
    pub(crate) boot: Option<&'a BootPlan>,
}

/// The reply to `req` (RFC 2131 table 3: xid, flags, giaddr and chaddr
/// copied; ciaddr copied into ACKs).
pub(crate) fn build_reply(req: &Message, r: &Reply<'_>) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_xid(req.xid())
        .set_flags(Flags::new(u16::from(req.flags()) & 0x8000))
        .set_giaddr(req.giaddr())
        .set_chaddr(req.chaddr())
        .set_yiaddr(r.yiaddr);
    if r.msg_type == MessageType::Ack {
        m.set_ciaddr(req.ciaddr());
    }
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(r.msg_type));
    opts.insert(DhcpOption::ServerIdentifier(r.server));
    if r.msg_type == MessageType::Nak {
        return m;
    }
    if let Some(secs) = r.lease_secs {
        opts.insert(DhcpOption::AddressLeaseTime(secs));
        opts.insert(DhcpOption::Renewal(secs / 2));
        opts.insert(DhcpOption::Rebinding((secs as u64 * 7 / 8) as u32));
    }
    if let Some(n) = r.network {
        opts.insert(DhcpOption::SubnetMask(n.mask));
        opts.insert(DhcpOption::BroadcastAddr(n.broadcast));
        if let Some(router) = n.router {
            opts.insert(DhcpOption::Router(vec![router]));
        }
        if !n.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(n.dns.clone()));
        }
        if let Some(d) = &n.domain {
            opts.insert(DhcpOption::DomainName(d.clone()));
        }
    }
    if let Some(b) = r.boot {
        m.set_siaddr(b.siaddr);
        // The field holds 127 bytes and a NUL; a longer URL goes in
        // option 67 only.
        if let Some(f) = b.file.as_deref().filter(|f| f.len() < 128) {
            m.set_fname_str(f);
        }
        let opts = m.opts_mut();
        for o in &b.options {
            opts.insert(o.clone());
        }
    }
    m
}

/// A NAK with a reason (option 56) the client may log.
pub(crate) fn build_nak(req: &Message, server: Ipv4Addr, why: &str) -> Message {
    let mut m = build_reply(
        req,
        &Reply {
            msg_type: MessageType::Nak,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            server,
            lease_secs: None,
            network: None,
            boot: None,
        },
    );
    m.opts_mut().insert(DhcpOption::Message(why.to_string()));
    m
}

/// Wire bytes of a reply: the message type (53) and server identifier (54)
/// first, as dnsmasq and ISC send them (dhcproto writes options in code
/// order, and small boot ROMs are not all known to search for 53), padded
/// to [`MIN_REPLY_LEN`].
#[cfg(test)]
pub(crate) fn encode(msg: &Message) -> Vec<u8> {
    encode_with(msg, &[])
}

/// [`encode`], with `last` (whole options, as received) after every other
/// option: the relay agent information a reply echoes, which goes last as
/// the relay agent put it (RFC 3046 2.1).
pub(crate) fn encode_with(msg: &Message, last: &[u8]) -> Vec<u8> {
    // Encoding into a Vec only fails for oversized sname/file, which the
    // setters above already refuse.
    let mut bytes = msg.to_vec().expect("DHCP reply encodes");
    let start = 240;
    let mut first = Vec::new();
    let mut rest = Vec::new();
    let mut i = start;
    while i + 1 < bytes.len() && bytes[i] != 255 {
        if bytes[i] == 0 {
            i += 1;
            continue;
        }
        let end = i + 2 + bytes[i + 1] as usize;
        let tlv = &bytes[i..end];
        // dhcproto writes in code order, so 53 comes before 54.
        match tlv[0] {
            53 | 54 => first.extend_from_slice(tlv),
            _ => rest.extend_from_slice(tlv),
        }
        i = end;
    }
    bytes.truncate(start);
    bytes.extend(first);
    bytes.extend(rest);
    bytes.extend_from_slice(last);
    bytes.push(255);
    if bytes.len() < MIN_REPLY_LEN {
        bytes.resize(MIN_REPLY_LEN, 0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::packet::{parse_request, tests::request_bytes};
    use dhcproto::Decodable;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);

    fn facts(mac: [u8; 6], extra: &[u8]) -> (Message, ClientFacts) {
        let msg = parse_request(&request_bytes(mac, 1, extra)).unwrap();
        let f = ClientFacts::from_message(&msg).unwrap();
        (msg, f)
    }

    /// The raw bytes of option `code` in an encoded reply.
    fn wire_option(bytes: &[u8], code: u8) -> Option<Vec<u8>> {
        let mut i = 240;
        while i < bytes.len() {
            match bytes[i] {
                0 => i += 1,
                255 => return None,
                c => {
                    let len = bytes[i + 1] as usize;
                    if c == code {
                        return Some(bytes[i + 2..i + 2 + len].to_vec());
                    }
                    i += 2 + len;
                }
            }
        }
        None
    }

    const HTTP: HttpBoot<'static> = HttpBoot {
        over: BootOver::Tftp,
        port: 8080,
        node: "pc",
    };

    fn reply_bytes(kind: NodeKind, f: &ClientFacts, req: &Message, proxy: bool) -> Vec<u8> {
        reply_bytes_with(kind, f, req, proxy, &HTTP)
    }

    fn reply_bytes_with(
        kind: NodeKind,
        f: &ClientFacts,
        req: &Message,
        proxy: bool,
        http: &HttpBoot<'_>,
    ) -> Vec<u8> {
        let plan = boot_plan(kind, f, SERVER, proxy, http);
        let yiaddr = if proxy {
            Ipv4Addr::UNSPECIFIED
        } else {
            Ipv4Addr::new(10, 9, 0, 100)
        };
        encode(&build_reply(
            req,
            &Reply {
                msg_type: MessageType::Offer,
                yiaddr,
                server: SERVER,
                lease_secs: (!proxy).then_some(3600),
                network: None,
                boot: Some(&plan),
            },
        ))
    }

    fn file_field(bytes: &[u8]) -> String {
        let f = &bytes[108..236];
        String::from_utf8_lossy(&f[..f.iter().position(|&b| b == 0).unwrap()]).into_owned()
    }

    // A Pi 4's DISCOVER: vendor class, arch 0, UNDI 2.1, GUID "RPi4...".
    const PI4_OPTIONS: &[u8] = &[
        60, 32, b'P', b'X', b'E', b'C', b'l', b'i', b'e', b'n', b't', b':', b'A', b'r', b'c', b'h',
        b':', b'0', b'0', b'0', b'0', b'0', b':', b'U', b'N', b'D', b'I', b':', b'0', b'0', b'2',
        b'0', b'0', b'1', //
        93, 2, 0, 0, //
        94, 3, 1, 2, 1, //
        97, 17, 0, b'R', b'P', b'i', b'4', 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];

    #[test]
    fn raspberry_pi_reply_carries_the_pxe_menu() {
        let (req, f) = facts([0xdc, 0xa6, 0x32, 1, 2, 3], PI4_OPTIONS);
        assert_eq!(f.hint(), KindHint(Some(NodeKind::Raspberrypi)));
        let b = reply_bytes(NodeKind::Raspberrypi, &f, &req, false);
        let mut want43 = vec![6, 1, 3, 10, 4, 0, b'P', b'X', b'E', 9, 23, 0, 0, 20];
        want43.extend(b"Raspberry Pi Boot   ");
        want43.push(255);
        assert_eq!(wire_option(&b, 43).unwrap(), want43);
        assert_eq!(wire_option(&b, 60).unwrap(), b"PXEClient");
        assert_eq!(wire_option(&b, 66).unwrap(), b"10.9.0.1\0");
        assert_eq!(wire_option(&b, 97).unwrap(), &PI4_OPTIONS[45..]);
        assert_eq!(wire_option(&b, 54).unwrap(), [10, 9, 0, 1]);
        assert_eq!(wire_option(&b, 53).unwrap(), [2]);
        assert_eq!(wire_option(&b, 51).unwrap(), 3600u32.to_be_bytes());
        assert_eq!(wire_option(&b, 58).unwrap(), 1800u32.to_be_bytes());
        assert_eq!(wire_option(&b, 59).unwrap(), 3150u32.to_be_bytes());
        assert_eq!(wire_option(&b, 67), None);
        assert_eq!(wire_option(&b, 175), None);
        assert_eq!(&b[20..24], &[10, 9, 0, 1], "siaddr");
        assert_eq!(&b[16..20], &[10, 9, 0, 100], "yiaddr");
        assert_eq!(b[0], 2, "BOOTREPLY");
        assert_eq!(&b[28..34], &[0xdc, 0xa6, 0x32, 1, 2, 3]);
        assert_eq!(&b[4..8], &0x1234_5678u32.to_be_bytes(), "xid");
        assert_eq!(file_field(&b), "");
        assert!(b.len() >= MIN_REPLY_LEN);
        assert_eq!(&b[240..243], &[53, 1, 2], "message type first");
        assert_eq!(&b[243..249], &[54, 4, 10, 9, 0, 1], "then the server id");
        // Re-parsed by dhcproto, the reply round-trips.
        let back = Message::from_bytes(&b).unwrap();
        assert_eq!(back.opts().msg_type(), Some(MessageType::Offer));
    }

    #[test]
    fn the_guid_names_the_pi_family() {
        let (_, f) = facts([0xdc, 0xa6, 0x32, 1, 2, 3], PI4_OPTIONS);
        assert_eq!(f.pi_model(), Some(PiModel::Pi4));
        // A CM5's GUID ("R,P,i,5", rpi-eeprom firmware-2712 release notes),
        // from a MAC of none of the Pi prefixes: still a Pi, and a Pi 5.
        let mut pi5 = PI4_OPTIONS.to_vec();
        pi5[49] = b'5';
        let (req, f) = facts([2, 0, 0, 0, 0, 1], &pi5);
        assert_eq!(f.pi_model(), Some(PiModel::Pi5));
        assert_eq!(f.hint(), KindHint(Some(NodeKind::Raspberrypi)));
        // Its reply is the Pi 4's: the same bootloader protocol.
        let b = reply_bytes(NodeKind::Raspberrypi, &f, &req, false);
        assert!(wire_option(&b, 43)
            .unwrap()
            .ends_with(b"Raspberry Pi Boot   \xff"));
        assert_eq!(wire_option(&b, 97).unwrap(), &pi5[45..]);
        // DHCP_OPTION97=0 (the serial four times): a Pi by MAC, family unknown.
        let mut old = PI4_OPTIONS.to_vec();
        old[46..62].copy_from_slice(&[0x8b, 0x07, 0xbc, 0xc6].repeat(4));
        let (_, f) = facts([0xdc, 0xa6, 0x32, 1, 2, 3], &old);
        assert_eq!(f.pi_model(), None);
        assert_eq!(f.hint(), KindHint(Some(NodeKind::Raspberrypi)));
    }

    #[test]
    fn raspberry_pi_is_recognised_by_guid_alone() {
        let (_, f) = facts([2, 0, 0, 0, 0, 1], PI4_OPTIONS);
        assert_eq!(f.hint(), KindHint(Some(NodeKind::Raspberrypi)));
        // Same request with a neutral GUID: an x86 BIOS PXE ROM.
        let mut other = PI4_OPTIONS.to_vec();
        other[46..49].copy_from_slice(b"xyz");
        let (_, f) = facts([2, 0, 0, 0, 0, 1], &other);
        assert_eq!(f.hint(), KindHint(Some(NodeKind::Ipxe)));
    }

    #[test]
    fn uboot_reply_names_the_boot_script() {
        let mut vc = vec![60, 12];
        vc.extend(b"U-Boot.armv8");
        let (req, f) = facts([0x6c, 0xcf, 0x39, 0, 0, 1], &vc);
        assert_eq!(f.hint(), KindHint(Some(NodeKind::Uboot)));
        let b = reply_bytes(NodeKind::Uboot, &f, &req, false);
        assert_eq!(wire_option(&b, 67).unwrap(), b"boot.scr.uimg\0");
        assert_eq!(wire_option(&b, 66).unwrap(), b"10.9.0.1\0");
        assert_eq!(file_field(&b), "boot.scr.uimg");
        assert_eq!(&b[20..24], &[10, 9, 0, 1], "siaddr");
        assert_eq!(wire_option(&b, 43), None);
        assert_eq!(wire_option(&b, 60), None);
        assert_eq!(wire_option(&b, 175), None);
    }

    fn pxe_rom(arch: u16, ipxe: bool) -> Vec<u8> {
        let mut o = vec![60, 9];
        o.extend(b"PXEClient");
        o.extend([93, 2]);
        o.extend(arch.to_be_bytes());
        if ipxe {
            o.extend([77, 4]);
            o.extend(b"iPXE");
        }
        o
    }

    #[test]
    fn ipxe_boot_file_follows_arch_and_user_class() {
        let mac = [0x52, 0x54, 0, 0, 0, 1];
        for (arch, ipxe, want) in [
            (0u16, false, "undionly.kpxe"),
            (7, false, "ipxe.efi"),
            (9, false, "ipxe.efi"),
            (0, true, "boot.ipxe"),
            (7, true, "boot.ipxe"),
        ] {
            let (req, f) = facts(mac, &pxe_rom(arch, ipxe));
            assert_eq!(f.hint(), KindHint(Some(NodeKind::Ipxe)), "arch {arch}");
            let b = reply_bytes(NodeKind::Ipxe, &f, &req, false);
            let mut want67 = want.as_bytes().to_vec();
            want67.push(0);
            assert_eq!(
                wire_option(&b, 67).unwrap(),
                want67,
                "arch {arch} ipxe {ipxe}"
            );
            assert_eq!(file_field(&b), want);
            assert_eq!(wire_option(&b, 175).unwrap(), [176, 1, 1]);
            assert_eq!(wire_option(&b, 66).unwrap(), b"10.9.0.1\0");
            // Full mode: a plain DHCP offer with a boot file, no PXE extensions.
            assert_eq!(wire_option(&b, 60), None);
            assert_eq!(wire_option(&b, 43), None);
        }
        // Itanium: no loader to offer.
        let (req, f) = facts(mac, &pxe_rom(2, false));
        let b = reply_bytes(NodeKind::Ipxe, &f, &req, false);
        assert_eq!(wire_option(&b, 67), None);
        assert_eq!(file_field(&b), "");
    }

    #[test]
    fn arm64_uefi_pxe_gets_grub() {
        let mac = [0x52, 0x54, 0, 0, 0, 2];
        let (req, f) = facts(mac, &pxe_rom(11, false));
        assert_eq!(f.hint(), KindHint(Some(NodeKind::Ipxe)));
        assert!(f.sent_by_boot_firmware());
        let b = reply_bytes(NodeKind::Ipxe, &f, &req, false);
        assert_eq!(wire_option(&b, 67).unwrap(), b"grubnetaa64.efi\0");
        assert_eq!(file_field(&b), "grubnetaa64.efi");
        assert_eq!(&b[20..24], &[10, 9, 0, 1], "siaddr: GRUB's TFTP server");
        // Over HTTP boot as well: GRUB itself goes over TFTP, as a PXE
        // ROM's loader does.
        let http = HttpBoot {
            over: BootOver::Http,
            ..HTTP
        };
        let b = reply_bytes_with(NodeKind::Ipxe, &f, &req, false, &http);
        assert_eq!(file_field(&b), "grubnetaa64.efi");
        // ProxyDHCP: marked PXEClient with the direct-boot option 43.
        let b = reply_bytes(NodeKind::Ipxe, &f, &req, true);
        assert_eq!(wire_option(&b, 60).unwrap(), b"PXEClient");
        assert_eq!(wire_option(&b, 43).unwrap(), [6, 1, 8, 255]);
        assert_eq!(wire_option(&b, 67).unwrap(), b"grubnetaa64.efi\0");
        // ARM64 UEFI HTTP boot (19) is not offered GRUB (see pxe_boot_file).
        let (req, f) = facts(mac, &http_client(19));
        let b = reply_bytes(NodeKind::Ipxe, &f, &req, false);
        assert_eq!(wire_option(&b, 67), None);
        assert_eq!(wire_option(&b, 60).unwrap(), b"HTTPClient");
    }

    #[test]
    fn a_missing_loader_is_told_with_its_package() {
        let grub = Path::new("/nowhere/grubnetaa64.efi");
        let (_, arm) = facts([0x52, 0x54, 0, 0, 0, 2], &pxe_rom(11, false));
        let plan = boot_plan(NodeKind::Ipxe, &arm, SERVER, false, &HTTP);
        let why = plan_warning(NodeKind::Ipxe, &plan, arm.arch, grub, || false).unwrap();
        assert!(
            why.contains("/nowhere/grubnetaa64.efi") && why.contains("grub-efi-arm64-bin"),
            "{why}"
        );
        assert_eq!(
            plan_warning(NodeKind::Ipxe, &plan, arm.arch, grub, || true),
            None
        );
        // An x86 PC never looks for GRUB.
        let (_, pc) = facts([0x52, 0x54, 0, 0, 0, 1], &pxe_rom(7, false));
        let plan = boot_plan(NodeKind::Ipxe, &pc, SERVER, false, &HTTP);
        let looked = std::cell::Cell::new(false);
        let none = plan_warning(NodeKind::Ipxe, &plan, pc.arch, grub, || {
            looked.set(true);
            false
        });
        assert_eq!(none, None);
        assert!(!looked.get());
        let (_, itanium) = facts([0x52, 0x54, 0, 0, 0, 1], &pxe_rom(2, false));
        let plan = boot_plan(NodeKind::Ipxe, &itanium, SERVER, false, &HTTP);
        let why = plan_warning(NodeKind::Ipxe, &plan, itanium.arch, grub, || true).unwrap();
        assert!(why.contains("client architecture Some(2)"), "{why}");
    }

    /// A UEFI HTTP boot DISCOVER as OVMF sends it: option 60
    /// `HTTPClient:Arch:00016:UNDI:003001`, option 93 = 16.
    fn http_client(arch: u16) -> Vec<u8> {
        let class = format!("HTTPClient:Arch:{arch:05}:UNDI:003001");
        let mut o = vec![60, class.len() as u8];
        o.extend(class.as_bytes());
        o.extend([93, 2]);
        o.extend(arch.to_be_bytes());
        o
    }

    #[test]
    fn uefi_http_boot_gets_httpclient_and_a_url_of_ipxe_efi() {
        let mac = [0x52, 0x54, 0, 0, 0, 1];
        let (req, f) = facts(mac, &http_client(16));
        assert!(f.is_http_client() && f.sent_by_boot_firmware() && f.is_pxe_client());
        assert_eq!(f.hint(), KindHint(Some(NodeKind::Ipxe)));
        for proxy in [false, true] {
            let b = reply_bytes(NodeKind::Ipxe, &f, &req, proxy);
            let url = "http://10.9.0.1:8080/boot/pc/ipxe.efi";
            assert_eq!(wire_option(&b, 60).unwrap(), b"HTTPClient", "proxy {proxy}");
            assert_eq!(wire_option(&b, 67).unwrap(), format!("{url}\0").as_bytes());
            assert_eq!(file_field(&b), url);
            // No PXE menu for a firmware that speaks no TFTP.
            assert_eq!(wire_option(&b, 43), None);
        }
        // x86 (32-bit) UEFI HTTP: no iPXE build for it.
        let (req, f) = facts(mac, &http_client(15));
        let b = reply_bytes(NodeKind::Ipxe, &f, &req, false);
        assert_eq!(wire_option(&b, 67), None);
        assert_eq!(wire_option(&b, 60).unwrap(), b"HTTPClient");
    }

    #[test]
    fn ipxe_gets_its_script_as_a_url_when_booting_over_http() {
        let mac = [0x52, 0x54, 0, 0, 0, 1];
        let http = HttpBoot {
            over: BootOver::Http,
            ..HTTP
        };
        let (req, f) = facts(mac, &pxe_rom(0, true));
        let b = reply_bytes_with(NodeKind::Ipxe, &f, &req, false, &http);
        assert_eq!(file_field(&b), "http://10.9.0.1:8080/boot/pc/boot.ipxe");
        // A PXE ROM still loads iPXE itself over TFTP.
        let (req, f) = facts(mac, &pxe_rom(0, false));
        let b = reply_bytes_with(NodeKind::Ipxe, &f, &req, false, &http);
        assert_eq!(file_field(&b), "undionly.kpxe");
        // A URL too long for the BOOTP field is in option 67 only.
        let long = "n".repeat(120);
        let http = HttpBoot {
            node: &long,
            ..http
        };
        let (req, f) = facts(mac, &pxe_rom(0, true));
        let b = reply_bytes_with(NodeKind::Ipxe, &f, &req, false, &http);
        assert_eq!(file_field(&b), "");
        assert!(String::from_utf8_lossy(&wire_option(&b, 67).unwrap()).ends_with("/boot.ipxe\0"));
    }

    #[test]
    fn rfc3004_user_class_is_understood() {
        let (_, f) = facts(
            [0x52, 0x54, 0, 0, 0, 1],
            &[77, 10, 4, b'i', b'P', b'X', b'E', 3, b'a', b'b', b'c'],
        );
        assert!(f.ipxe);
        assert!(!user_class_has(&[9, b'i'], b"iPXE"));
        assert!(!user_class_has(b"iPXF", b"iPXE"));
    }

    #[test]
    fn proxy_replies_are_marked_pxeclient() {
        let (req, f) = facts([0x52, 0x54, 0, 0, 0, 1], &pxe_rom(0, false));
        let b = reply_bytes(NodeKind::Ipxe, &f, &req, true);
        assert_eq!(&b[16..20], &[0, 0, 0, 0], "no address in a proxy offer");
        assert_eq!(wire_option(&b, 60).unwrap(), b"PXEClient");
        assert_eq!(wire_option(&b, 43).unwrap(), [6, 1, 8, 255]);
        assert_eq!(wire_option(&b, 67).unwrap(), b"undionly.kpxe\0");
        assert_eq!(wire_option(&b, 51), None, "no lease in a proxy offer");
        assert!(f.is_pxe_client());
        let (_, uboot) = facts(
            [0x6c, 0xcf, 0x39, 0, 0, 1],
            &[60, 6, b'U', b'-', b'B', b'o', b'o', b't'],
        );
        assert!(!uboot.is_pxe_client());
    }

    #[test]
    fn network_options_and_nak() {
        let (req, _) = facts([0x52, 0x54, 0, 0, 0, 1], &[]);
        let net = NetworkOptions {
            mask: Ipv4Addr::new(255, 255, 255, 0),
            broadcast: Ipv4Addr::new(10, 9, 0, 255),
            router: Some(Ipv4Addr::new(10, 9, 0, 254)),
            dns: vec![Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(1, 1, 1, 1)],
            domain: Some("lab.test".into()),
        };
        let b = encode(&build_reply(
            &req,
            &Reply {
                msg_type: MessageType::Ack,
                yiaddr: Ipv4Addr::new(10, 9, 0, 100),
                server: SERVER,
                lease_secs: Some(600),
                network: Some(&net),
                boot: None,
            },
        ));
        assert_eq!(wire_option(&b, 1).unwrap(), [255, 255, 255, 0]);
        assert_eq!(wire_option(&b, 28).unwrap(), [10, 9, 0, 255]);
        assert_eq!(wire_option(&b, 3).unwrap(), [10, 9, 0, 254]);
        assert_eq!(wire_option(&b, 6).unwrap(), [10, 9, 0, 1, 1, 1, 1, 1]);
        assert_eq!(wire_option(&b, 15).unwrap(), b"lab.test");
        assert_eq!(wire_option(&b, 53).unwrap(), [5]);
        let nak = encode(&build_nak(&req, SERVER, "wrong address"));
        assert_eq!(wire_option(&nak, 53).unwrap(), [6]);
        assert_eq!(wire_option(&nak, 54).unwrap(), [10, 9, 0, 1]);
        assert_eq!(wire_option(&nak, 56).unwrap(), b"wrong address");
        assert_eq!(wire_option(&nak, 51), None);
        assert_eq!(&nak[16..20], &[0, 0, 0, 0]);
    }
}
