//! The Raspberry Pi boot replay (`integration/clients/pi_replay.py`), run
//! in a lab's client namespace, and what a Pi needs to see in our replies.

use super::dhcpc::option_bytes as option;
use super::netns::NetLab;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// Run the replay client with `args` (any of its options; the interface
/// is the lab's client one); its JSON report and its raw output.
pub fn replay(lab: &NetLab, args: &[&str]) -> Result<(Value, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/clients/pi_replay.py");
    let out = lab
        .client("python3")
        .arg(&script)
        .args(["--iface", &lab.client_if])
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "pi_replay: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r: Value = serde_json::from_str(&stdout).context("pi_replay output")?;
    Ok((r, stdout))
}

/// What a Pi's bootloader must see in an OFFER or ACK from us: the TFTP
/// server as siaddr and option 66, option 60 `PXEClient` and the option 43
/// PXE menu "Raspberry Pi Boot" (Raspberry Pi's "Network booting"
/// documentation: the reply's option 43 must carry that string).
pub fn check_pi_reply(reply: &Value, what: &str, server: &str, net: &str) {
    assert_eq!(reply["siaddr"], server, "{what}: siaddr");
    let ip = reply["yiaddr"].as_str().unwrap_or_default();
    assert!(ip.starts_with(&format!("{net}.")), "{what}: yiaddr {ip}");
    assert_eq!(
        option(reply, 66).as_deref(),
        Some(server.as_bytes()),
        "{what}: option 66"
    );
    assert_eq!(
        option(reply, 60).as_deref(),
        Some(&b"PXEClient"[..]),
        "{what}: option 60"
    );
    let menu = option(reply, 43).unwrap_or_else(|| panic!("{what}: no option 43"));
    assert!(
        menu.windows(20).any(|w| w == b"Raspberry Pi Boot   "),
        "{what}: option 43 {menu:?}"
    );
}
