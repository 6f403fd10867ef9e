//! Cold-start boot profiles: every boot of every node recorded as a
//! timeline (DHCP, TFTP transfers, NFS mount and operations by file,
//! registry fetches and who waited on them) and rendered by `lazyboot profile`.
//!
//! - [`model`]: the stored form of one boot.
//! - [`recorder`]: the live timelines of `lazyboot serve`, fed by DHCP, TFTP
//!   and NFS, written to `state_dir/profiles/NODE/BOOT.json`.
//! - [`report`], [`html`]: text, JSON, HTML and Chrome-trace renderings.

pub mod html;
pub(crate) mod model;
pub(crate) mod recorder;
pub(crate) mod report;

pub use model::*;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProfileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a boot profile: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no boot profiles recorded for node {node:?} in {dir}")]
    NoProfiles { node: String, dir: PathBuf },
    #[error("node {node:?} has no boot {boot} (recorded: {have})")]
    NoSuchBoot {
        node: String,
        boot: u64,
        have: String,
    },
}

/// Profiles on disk: `DIR/NODE/000001.json`, one file per boot.
#[derive(Clone, Debug)]
pub(crate) struct ProfileStore {
    dir: PathBuf,
}

impl ProfileStore {
    pub(crate) fn new(state_dir: &Path) -> ProfileStore {
        ProfileStore {
            dir: state_dir.join("profiles"),
        }
    }

    /// The directory of `node`'s profiles. A name that is not one plain
    /// path component (configured names never are) maps to a directory
    /// that cannot exist, so nothing outside the store is ever listed.
    fn node_dir(&self, node: &str) -> PathBuf {
        let plain = !node.is_empty() && !node.starts_with('.') && !node.contains(['/', '\\', '\0']);
        match plain {
            true => self.dir.join(node),
            false => self.dir.join(".invalid-node-name"),
        }
    }

    fn path(&self, node: &str, boot: u64) -> PathBuf {
        self.node_dir(node).join(format!("{boot:06}.json"))
    }

    /// Boot numbers recorded for `node`, ascending.
    pub(crate) fn boots(&self, node: &str) -> Vec<u64> {
        let mut out: Vec<u64> = std::fs::read_dir(self.node_dir(node))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Nodes with at least one profile.
    #[cfg(test)]
    pub(crate) fn nodes(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !self.boots(n).is_empty())
            .collect();
        out.sort();
        out
    }

    /// Boot `boot` of `node`, or its latest boot.
    pub(crate) fn load(&self, node: &str, boot: Option<u64>) -> Result<BootProfile, ProfileError> {
        let boots = self.boots(node);
        let Some(&last) = boots.last() else {
            return Err(ProfileError::NoProfiles {
                node: node.into(),
                dir: self.dir.clone(),
            });
        };
        let boot = boot.unwrap_or(last);
        if !boots.contains(&boot) {
            let have = boots
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ProfileError::NoSuchBoot {
                node: node.into(),
                boot,
                have,
            });
        }
        let path = self.path(node, boot);
        let bytes = std::fs::read(&path).map_err(|source| ProfileError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| ProfileError::Decode { path, source })
    }

    /// Write `p` atomically (a reader never sees half a profile).
    pub(crate) fn save(&self, p: &BootProfile) -> Result<(), ProfileError> {
        let dir = self.node_dir(&p.node);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ProfileError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = self.path(&p.node, p.boot);
        let tmp = dir.join(format!(".{:06}.json.tmp", p.boot));
        let body = serde_json::to_vec_pretty(p).expect("a profile always serialises");
        std::fs::write(&tmp, body).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(())
    }

    /// The number the next boot of `node` gets.
    pub(crate) fn next_boot(&self, node: &str) -> u64 {
        self.boots(node).last().map_or(1, |b| b + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_is_a_path_lists_nothing_outside_the_store() {
        let dir = tempfile::tempdir().unwrap();
        // Profile-like files outside the store and beside it.
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/000001.json"), "{}").unwrap();
        std::fs::create_dir_all(dir.path().join("state/profiles")).unwrap();
        std::fs::write(dir.path().join("state/profiles/000002.json"), "{}").unwrap();
        let store = ProfileStore::new(&dir.path().join("state"));
        for name in ["../../outside", "..", ".", "", "a/../../../outside", "x\\y"] {
            assert!(store.boots(name).is_empty(), "{name:?}");
        }
        assert_eq!(store.boots("outside"), Vec::<u64>::new());
    }

    #[test]
    fn store_numbers_saves_and_loads_boots() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::new(dir.path());
        assert!(matches!(
            store.load("n1", None),
            Err(ProfileError::NoProfiles { .. })
        ));
        assert_eq!(store.next_boot("n1"), 1);
        for boot in 1..=2 {
            let p = BootProfile {
                version: PROFILE_VERSION,
                node: "n1".into(),
                boot,
                ..Default::default()
            };
            store.save(&p).unwrap();
        }
        assert_eq!(store.boots("n1"), vec![1, 2]);
        assert_eq!(store.next_boot("n1"), 3);
        assert_eq!(store.load("n1", None).unwrap().boot, 2);
        assert_eq!(store.load("n1", Some(1)).unwrap().boot, 1);
        let err = store.load("n1", Some(7)).unwrap_err().to_string();
        assert!(err.contains("no boot 7") && err.contains("1, 2"), "{err}");
        assert_eq!(store.nodes(), vec!["n1".to_string()]);
        std::fs::write(dir.path().join("profiles/n1/000003.json"), b"{").unwrap();
        assert!(matches!(
            store.load("n1", Some(3)),
            Err(ProfileError::Decode { .. })
        ));
    }
}
