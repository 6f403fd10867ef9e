//! A node's reboot command: an argv list run without a shell, its
//! `{name}`, `{ip}` and `{mac}` replaced by the node's values. Nothing in
//! a value is interpreted: a name reaches the program as one argument,
//! whatever characters it holds.

use std::process::Stdio;
use std::time::Duration;

/// The values a hook's placeholders stand for.
pub(crate) struct HookVars<'a> {
    pub(crate) name: &'a str,
    pub(crate) ip: Option<std::net::Ipv4Addr>,
    pub(crate) mac: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HookError {
    #[error("reboot command {argv:?} needs the node's address ({{ip}}), and none is known yet")]
    NoAddress { argv: Vec<String> },
    #[error("reboot command {argv:?} could not start: {source}")]
    Spawn {
        argv: Vec<String>,
        #[source]
        source: std::io::Error,
    },
    #[error("reboot command {argv:?} ran longer than {secs} s and was killed")]
    Timeout { argv: Vec<String>, secs: u64 },
    #[error("reboot command {argv:?} failed ({status}): {stderr}")]
    Failed {
        argv: Vec<String>,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// `argv` with its placeholders replaced.
pub(crate) fn expand(argv: &[String], v: &HookVars<'_>) -> Result<Vec<String>, HookError> {
    let needs_ip = argv.iter().any(|a| a.contains("{ip}"));
    let ip = match (needs_ip, v.ip) {
        (true, None) => {
            return Err(HookError::NoAddress {
                argv: argv.to_vec(),
            })
        }
        (_, ip) => ip.map(|i| i.to_string()).unwrap_or_default(),
    };
    Ok(argv
        .iter()
        .map(|a| {
            // One pass over the argument, so a value that itself looks like
            // a placeholder is not replaced again.
            let mut out = String::new();
            let mut rest = a.as_str();
            while let Some(i) = rest.find('{') {
                out.push_str(&rest[..i]);
                let tail = &rest[i..];
                let (value, len) = if tail.starts_with("{name}") {
                    (v.name, 6)
                } else if tail.starts_with("{ip}") {
                    (ip.as_str(), 4)
                } else if tail.starts_with("{mac}") {
                    (v.mac, 5)
                } else {
                    ("{", 1)
                };
                out.push_str(value);
                rest = &tail[len..];
            }
            out.push_str(rest);
            out
        })
        .collect())
}

/// Run the expanded command; it must exit 0 within `timeout`. Its output
/// goes to the log.
pub(crate) async fn run(argv: Vec<String>, timeout: Duration) -> Result<(), HookError> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| HookError::Spawn {
        argv: argv.clone(),
        source,
    })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            return Err(HookError::Timeout {
                argv,
                secs: timeout.as_secs(),
            })
        }
        Ok(Err(source)) => return Err(HookError::Spawn { argv, source }),
        Ok(Ok(out)) => out,
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stdout.trim().is_empty() {
        tracing::info!("reboot command {argv:?}: {}", stdout.trim());
    }
    if !out.status.success() {
        let tail: String = stderr.trim().chars().rev().take(400).collect();
        return Err(HookError::Failed {
            argv,
            status: out.status,
            stderr: tail.chars().rev().collect(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn placeholders_are_replaced_once_and_literally() {
        let v = HookVars {
            name: "a;b $(x) {ip}",
            ip: Some("10.0.0.5".parse().unwrap()),
            mac: "52:54:00:00:00:01",
        };
        let out = expand(
            &argv(&["ssh", "root@{ip}", "echo {name}", "{mac}{", "{x}"]),
            &v,
        )
        .unwrap();
        assert_eq!(
            out,
            [
                "ssh",
                "root@10.0.0.5",
                "echo a;b $(x) {ip}",
                "52:54:00:00:00:01{",
                "{x}"
            ]
        );
        let no_ip = HookVars { ip: None, ..v };
        assert!(matches!(
            expand(&argv(&["x", "{ip}"]), &no_ip),
            Err(HookError::NoAddress { .. })
        ));
        assert!(expand(&argv(&["x", "{name}"]), &no_ip).is_ok());
    }

    #[tokio::test]
    async fn a_command_runs_without_a_shell_and_failures_say_why() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        let arg = "x; touch /tmp/never-$(id -u)";
        run(
            argv(&[
                "/bin/sh",
                "-c",
                "printf %s \"$1\" > \"$2\"",
                "sh",
                arg,
                out.to_str().unwrap(),
            ]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), arg);
        let e = run(
            argv(&["/bin/sh", "-c", "echo nope >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("nope") && e.contains("3"), "{e}");
        let e = run(argv(&["/bin/sleep", "5"]), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, HookError::Timeout { .. }), "{e}");
        let e = run(argv(&["/nonexistent/reboot"]), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, HookError::Spawn { .. }), "{e}");
    }
}
