//! Groups changed at run time (`PUT /api/v1/groups/NAME`): following, the
//! poll interval, how many nodes reboot at once, the boot timeout and
//! `keep_upper`. The reboot command is not among them: it is a program run
//! as the server's user, and stays in the config file, which only the
//! host's administrator can edit, not whoever holds an API token.
//!
//! The precedence rule is the nodes': a run-time value holds as long as
//! the config's `[[groups]]` table is what it was when the value was set.

use super::{Fleet, FleetError};
use crate::config::SwapPolicy;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What was changed of a group at run time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct GroupChange {
    pub(crate) follow: Option<bool>,
    pub(crate) poll_secs: Option<u64>,
    pub(crate) max_unavailable: Option<usize>,
    pub(crate) boot_timeout_secs: Option<u64>,
    pub(crate) hook_timeout_secs: Option<u64>,
    pub(crate) keep_upper: Option<bool>,
}

/// A group's record: its run-time changes and the config's policy they
/// were made over.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct GroupRecord {
    pub(crate) change: GroupChange,
    pub(crate) config: Option<PolicyView>,
}

/// The parts of a config policy a record is checked against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PolicyView {
    follow: bool,
    poll_secs: u64,
    max_unavailable: usize,
    boot_timeout_secs: u64,
    hook_timeout_secs: u64,
    keep_upper: bool,
}

impl PolicyView {
    fn of(p: &SwapPolicy) -> PolicyView {
        PolicyView {
            follow: p.follow,
            poll_secs: p.poll.as_secs(),
            max_unavailable: p.max_unavailable,
            boot_timeout_secs: p.boot_timeout.as_secs(),
            hook_timeout_secs: p.hook_timeout.as_secs(),
            keep_upper: p.keep_upper,
        }
    }
}

impl GroupChange {
    fn check(&self) -> Result<(), String> {
        for (key, v, min) in [
            ("poll_secs", self.poll_secs, 1),
            ("max_unavailable", self.max_unavailable.map(|m| m as u64), 1),
            ("boot_timeout_secs", self.boot_timeout_secs, 5),
            ("hook_timeout_secs", self.hook_timeout_secs, 1),
        ] {
            if v.is_some_and(|v| v < min) {
                return Err(format!("{key} must be at least {min}"));
            }
        }
        Ok(())
    }

    fn apply(&self, mut p: SwapPolicy) -> SwapPolicy {
        if let Some(v) = self.follow {
            p.follow = v;
        }
        if let Some(v) = self.poll_secs {
            p.poll = Duration::from_secs(v);
        }
        if let Some(v) = self.max_unavailable {
            p.max_unavailable = v;
        }
        if let Some(v) = self.boot_timeout_secs {
            p.boot_timeout = Duration::from_secs(v);
        }
        if let Some(v) = self.hook_timeout_secs {
            p.hook_timeout = Duration::from_secs(v);
        }
        if let Some(v) = self.keep_upper {
            p.keep_upper = v;
        }
        p
    }

    fn merge(&mut self, other: GroupChange) {
        let GroupChange {
            follow,
            poll_secs,
            max_unavailable,
            boot_timeout_secs,
            hook_timeout_secs,
            keep_upper,
        } = other;
        self.follow = follow.or(self.follow);
        self.poll_secs = poll_secs.or(self.poll_secs);
        self.max_unavailable = max_unavailable.or(self.max_unavailable);
        self.boot_timeout_secs = boot_timeout_secs.or(self.boot_timeout_secs);
        self.hook_timeout_secs = hook_timeout_secs.or(self.hook_timeout_secs);
        self.keep_upper = keep_upper.or(self.keep_upper);
    }
}

impl Fleet {
    /// The policy of group `name`: its `[[groups]]` table with the run-time
    /// changes over it. None: no such group.
    pub(crate) fn group_policy(&self, name: &str) -> Option<SwapPolicy> {
        let base = self.ctx.config.group(name)?.policy();
        Some(match self.groups.lock().get(name) {
            Some(r) => r.change.apply(base),
            None => base,
        })
    }

    /// Change group `name` at run time (kept across restarts).
    pub(crate) fn set_group(&self, name: &str, change: GroupChange) -> Result<(), FleetError> {
        let conf = self
            .ctx
            .config
            .group(name)
            .ok_or_else(|| FleetError::NoGroup(name.into()))?;
        change.check().map_err(FleetError::Invalid)?;
        let mut rec = self.groups.lock().get(name).cloned().unwrap_or_default();
        rec.change.merge(change);
        rec.config = Some(PolicyView::of(&conf.policy()));
        self.db.put_group(name, &rec)?;
        self.groups.lock().insert(name.to_string(), rec);
        Ok(())
    }

    /// Drop the run-time changes of groups whose `[[groups]]` table was
    /// edited since (or that the config no longer has).
    pub(super) fn groups_config_wins(&self) -> Result<(), FleetError> {
        let names: Vec<String> = self.groups.lock().keys().cloned().collect();
        for name in names {
            let now = self
                .ctx
                .config
                .group(&name)
                .map(|g| PolicyView::of(&g.policy()));
            let rec = self.groups.lock().get(&name).cloned().unwrap_or_default();
            if now.is_none() || rec.config != now {
                tracing::info!(
                    group = %name,
                    "the config file's [[groups]] table changed: it wins over the run-time changes"
                );
                let cleared = GroupRecord::default();
                self.db.put_group(&name, &cleared)?;
                self.groups.lock().insert(name, cleared);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply_over_the_config_and_merge() {
        let base = SwapPolicy::default();
        let mut c = GroupChange {
            follow: Some(true),
            max_unavailable: Some(3),
            ..GroupChange::default()
        };
        c.merge(GroupChange {
            max_unavailable: Some(2),
            poll_secs: Some(5),
            ..GroupChange::default()
        });
        let p = c.apply(base.clone());
        assert!(p.follow);
        assert_eq!(p.max_unavailable, 2);
        assert_eq!(p.poll, Duration::from_secs(5));
        assert_eq!(p.boot_timeout, base.boot_timeout);
        assert!(GroupChange {
            boot_timeout_secs: Some(1),
            ..GroupChange::default()
        }
        .check()
        .unwrap_err()
        .contains("boot_timeout_secs"));
    }

    #[test]
    fn a_reboot_command_cannot_be_set_at_run_time() {
        let e = serde_json::from_str::<GroupChange>(r#"{"reboot": ["sh", "-c", "x"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `reboot`"), "{e}");
    }
}
