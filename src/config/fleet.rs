//! `[[groups]]` and the per-node fleet keys (`group`, `follow`, `reboot`):
//! how a swap of a node's image is carried out (the fleet module does it).

use super::{Config, ConfigError, NodeConfig};
use serde::Deserialize;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// The placeholders a reboot hook's arguments may carry.
pub(crate) const HOOK_PLACEHOLDERS: [&str; 3] = ["{name}", "{ip}", "{mac}"];

/// One `[[groups]]` table: nodes that swap together.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupConfig {
    pub(crate) name: Spanned<String>,
    /// Poll the tag of the group's image and swap when it moves.
    #[serde(default)]
    pub(crate) follow: bool,
    /// Seconds between polls of a followed tag.
    #[serde(default = "default_poll_secs")]
    pub(crate) poll_secs: u64,
    /// The command that reboots a node (argv, no shell; `{name}`, `{ip}`,
    /// `{mac}` are replaced). Without it a swap waits for the next boot.
    #[serde(default)]
    pub(crate) reboot: Option<Spanned<Vec<String>>>,
    /// Nodes rebooting at once during a swap.
    #[serde(default = "default_max_unavailable")]
    pub(crate) max_unavailable: usize,
    /// Seconds a rebooted node has to report booted on the new image.
    #[serde(default = "default_boot_timeout_secs")]
    pub(crate) boot_timeout_secs: u64,
    /// Seconds the reboot command may run.
    #[serde(default = "default_hook_timeout_secs")]
    pub(crate) hook_timeout_secs: u64,
    /// Keep a persistent node's changes across a swap (else it starts the
    /// new image from an empty upper; the old one is kept until the swap
    /// succeeds).
    #[serde(default)]
    pub(crate) keep_upper: bool,
}

fn default_poll_secs() -> u64 {
    60
}
fn default_max_unavailable() -> usize {
    1
}
fn default_boot_timeout_secs() -> u64 {
    600
}
fn default_hook_timeout_secs() -> u64 {
    60
}

/// How a node's swaps go: its own keys over its group's over the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SwapPolicy {
    pub(crate) follow: bool,
    pub(crate) poll: Duration,
    pub(crate) reboot: Option<Vec<String>>,
    pub(crate) max_unavailable: usize,
    pub(crate) boot_timeout: Duration,
    pub(crate) hook_timeout: Duration,
    pub(crate) keep_upper: bool,
}

impl Default for SwapPolicy {
    fn default() -> Self {
        SwapPolicy {
            follow: false,
            poll: Duration::from_secs(default_poll_secs()),
            reboot: None,
            max_unavailable: default_max_unavailable(),
            boot_timeout: Duration::from_secs(default_boot_timeout_secs()),
            hook_timeout: Duration::from_secs(default_hook_timeout_secs()),
            keep_upper: false,
        }
    }
}

impl GroupConfig {
    pub(crate) fn policy(&self) -> SwapPolicy {
        SwapPolicy {
            follow: self.follow,
            poll: Duration::from_secs(self.poll_secs),
            reboot: self.reboot.as_ref().map(|r| r.get_ref().clone()),
            max_unavailable: self.max_unavailable,
            boot_timeout: Duration::from_secs(self.boot_timeout_secs),
            hook_timeout: Duration::from_secs(self.hook_timeout_secs),
            keep_upper: self.keep_upper,
        }
    }
}

impl Config {
    pub(crate) fn group(&self, name: &str) -> Option<&GroupConfig> {
        self.groups.iter().find(|g| g.name.get_ref() == name)
    }

    /// The swap policy of node `n` in group `group`, from the file alone.
    #[cfg(test)]
    pub(crate) fn policy_of(&self, n: Option<&NodeConfig>, group: Option<&str>) -> SwapPolicy {
        group
            .and_then(|g| self.group(g))
            .map_or_else(SwapPolicy::default, GroupConfig::policy)
            .for_node(n)
    }
}

impl SwapPolicy {
    /// This (a group's) policy with node `n`'s own keys over it.
    pub(crate) fn for_node(mut self, n: Option<&NodeConfig>) -> SwapPolicy {
        if let Some(n) = n {
            if let Some(f) = n.follow {
                self.follow = f;
            }
            if let Some(r) = &n.reboot {
                self.reboot = Some(r.get_ref().clone());
            }
        }
        self
    }
}

/// A group or node name: it is used in paths and URLs.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: use up to 64 letters, digits, '-', '_' and '.', not starting with '.' (it becomes a path)"
        ))
    }
}

/// A reboot hook: a program and its arguments, placeholders known.
pub(crate) fn check_hook(argv: &[String]) -> Result<(), String> {
    let Some(program) = argv.first() else {
        return Err("the command is empty: give the program and its arguments".into());
    };
    if program.is_empty() {
        return Err("the program name is empty".into());
    }
    for a in argv {
        let mut rest = a.as_str();
        while let Some(open) = rest.find('{') {
            let tail = &rest[open..];
            match HOOK_PLACEHOLDERS.iter().find(|p| tail.starts_with(**p)) {
                Some(p) => rest = &tail[p.len()..],
                None => {
                    return Err(format!(
                        "{a:?}: unknown placeholder at {:?} (known: {})",
                        tail.chars().take(12).collect::<String>(),
                        HOOK_PLACEHOLDERS.join(", ")
                    ))
                }
            }
        }
    }
    Ok(())
}

pub(super) fn validate(
    cfg: &Config,
    invalid: &dyn Fn(Range<usize>, &str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let mut seen: std::collections::HashMap<&str, Range<usize>> = Default::default();
    for g in &cfg.groups {
        let name = g.name.get_ref();
        check_name(name).map_err(|why| invalid(g.name.span(), "groups.name", why))?;
        if seen.insert(name, g.name.span()).is_some() {
            return Err(invalid(
                g.name.span(),
                "groups.name",
                format!("{name:?} is used twice"),
            ));
        }
        if let Some(r) = &g.reboot {
            check_hook(r.get_ref()).map_err(|why| invalid(r.span(), "groups.reboot", why))?;
        }
        for (key, v, min) in [
            ("groups.poll_secs", g.poll_secs, 1),
            ("groups.max_unavailable", g.max_unavailable as u64, 1),
            ("groups.boot_timeout_secs", g.boot_timeout_secs, 5),
            ("groups.hook_timeout_secs", g.hook_timeout_secs, 1),
        ] {
            if v < min {
                return Err(invalid(
                    g.name.span(),
                    key,
                    format!("{v} is below the least useful value, {min}"),
                ));
            }
        }
    }
    for n in &cfg.nodes {
        if let Some(group) = &n.group {
            if cfg.group(group.get_ref()).is_none() {
                return Err(invalid(
                    group.span(),
                    "nodes.group",
                    format!("no [[groups]] is named {:?}", group.get_ref()),
                ));
            }
        }
        if let Some(r) = &n.reboot {
            check_hook(r.get_ref()).map_err(|why| invalid(r.span(), "nodes.reboot", why))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[server]
interface = "eth0"
address = "10.0.0.1"
state_dir = "/tmp/x"
[dhcp]
mode = "proxy"
"#;

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}{extra}"), "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn a_node_takes_its_groups_policy_and_overrides_it() {
        let cfg = parse(
            r#"
[[groups]]
name = "lab"
follow = true
poll_secs = 5
reboot = ["ssh", "root@{ip}", "reboot"]
max_unavailable = 2
[[nodes]]
name = "a"
mac = "52:54:00:00:00:01"
kind = "ipxe"
image = "r/x:1"
group = "lab"
[[nodes]]
name = "b"
mac = "52:54:00:00:00:02"
kind = "ipxe"
image = "r/x:1"
group = "lab"
follow = false
reboot = ["pdu", "cycle", "{mac}"]
"#,
        )
        .unwrap();
        let a = cfg.policy_of(Some(&cfg.nodes[0]), Some("lab"));
        assert!(a.follow);
        assert_eq!(a.poll, Duration::from_secs(5));
        assert_eq!(a.max_unavailable, 2);
        assert_eq!(a.reboot.as_deref().unwrap()[1], "root@{ip}");
        let b = cfg.policy_of(Some(&cfg.nodes[1]), Some("lab"));
        assert!(!b.follow);
        assert_eq!(b.reboot.as_deref().unwrap()[0], "pdu");
        assert_eq!(cfg.policy_of(None, None), SwapPolicy::default());
    }

    #[test]
    fn bad_groups_and_hooks_are_refused_with_their_line() {
        let node = |extra: &str| {
            format!(
                "[[nodes]]\nname = \"a\"\nmac = \"52:54:00:00:00:01\"\nkind = \"ipxe\"\nimage = \"r/x:1\"\n{extra}\n"
            )
        };
        let e = parse(&node("group = \"nope\"")).unwrap_err();
        assert!(
            e.contains("nodes.group") && e.contains("no [[groups]]"),
            "{e}"
        );
        let e = parse(&node("reboot = []")).unwrap_err();
        assert!(e.contains("nodes.reboot") && e.contains("empty"), "{e}");
        let e = parse(&node("reboot = [\"ssh\", \"{host}\"]")).unwrap_err();
        assert!(e.contains("unknown placeholder"), "{e}");
        let e = parse("[[groups]]\nname = \"a b\"\n").unwrap_err();
        assert!(e.contains("groups.name"), "{e}");
        let e = parse("[[groups]]\nname = \"g\"\n[[groups]]\nname = \"g\"\n").unwrap_err();
        assert!(e.contains("used twice") && e.contains("line"), "{e}");
        let e = parse("[[groups]]\nname = \"g\"\nmax_unavailable = 0\n").unwrap_err();
        assert!(e.contains("groups.max_unavailable"), "{e}");
    }

    #[test]
    fn the_example_config_parses_with_its_group() {
        let text = include_str!("../../contrib/lazyboot.example.toml");
        let cfg = Config::parse(text, "lazyboot.example.toml").unwrap();
        let pi = cfg.nodes.iter().find(|n| n.group.is_some()).unwrap();
        let p = cfg.policy_of(Some(pi), Some("pis"));
        assert_eq!(p.reboot.unwrap()[1], "root@{ip}");
    }

    #[test]
    fn hooks_know_their_placeholders() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_hook(&v(&["ssh", "root@{ip}", "echo {name} {mac}"])).is_ok());
        assert!(check_hook(&v(&["x", "{name"])).is_err());
        assert!(check_hook(&v(&[""])).is_err());
    }
}
