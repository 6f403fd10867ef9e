//! The scripted DHCP client (`integration/clients/dhcp_client.py`), run in
//! a lab's client namespace, and reading its replies.

use super::netns::NetLab;
use anyhow::{Context, Result};
use serde_json::Value;
use std::process::Command;

/// The client script.
pub const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/integration/clients/dhcp_client.py"
);

/// Run the client's `action` (`dora`, `discover`, `raw`, ...) with `args`
/// (any of its options) on the lab's client interface; its JSON output.
pub fn run_client(lab: &NetLab, action: &str, args: &[&str]) -> Result<Value> {
    run_client_in(&lab.ns, &lab.client_if, action, args)
}

/// [`run_client`] on interface `iface` of network namespace `ns`.
pub fn run_client_in(ns: &str, iface: &str, action: &str, args: &[&str]) -> Result<Value> {
    let out = super::run(
        Command::new("ip")
            .args(["netns", "exec", ns, "python3", SCRIPT, action])
            .args(["--iface", iface])
            .args(args),
    )?;
    serde_json::from_slice(&out).with_context(|| {
        format!(
            "client output is not JSON: {}",
            String::from_utf8_lossy(&out)
        )
    })
}

/// Option `code` of a reply as bytes, without the trailing NULs some
/// string options carry (options 43 and 175 are binary and kept whole).
pub fn option_bytes(reply: &Value, code: u8) -> Option<Vec<u8>> {
    reply["options"][code.to_string()].as_str().map(|h| {
        let mut v = hex::decode(h).unwrap();
        while v.last() == Some(&0) && code != 43 && code != 175 {
            v.pop();
        }
        v
    })
}
