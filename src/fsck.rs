//! `lazyboot fsck`: checks what `serve` keeps on disk (the chunk cache, and
//! in the state directory the NFS handle key, the DHCP leases, the boot
//! profiles and the nodes' work areas), after a crash, a disk fault or
//! someone's hands; with `--repair` it puts right what it can.
//!
//! Every file is written crash-safely (temp file, then rename), so a
//! killed process leaves only leftovers: temp files and work areas of
//! writes that never finished. Those are reported apart from problems
//! (damaged files), which a crash alone never makes.

use crate::cache::{self, CacheCheck};
use crate::profile::BootProfile;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What is wrong with a file, and what `--repair` does about it.
pub(crate) struct Problem {
    pub(crate) path: PathBuf,
    pub(crate) what: String,
    fix: Fix,
}

enum Fix {
    /// Move it to `PATH.bad` (what `serve` does with a lease file it cannot
    /// read), keeping it for a look.
    MoveAside,
    /// Make it mode 0600.
    Private,
}

/// What a check of the state directory found.
#[derive(Default)]
pub(crate) struct StateCheck {
    pub(crate) key: Option<&'static str>,
    pub(crate) leases: Option<usize>,
    pub(crate) profiles: u64,
    pub(crate) nodes: u64,
    pub(crate) problems: Vec<Problem>,
    pub(crate) leftovers: Vec<PathBuf>,
}

/// Check `state_dir`; with `repair`, fix the problems and remove the
/// leftovers. `repair` needs the state directory's lock, which `serve`
/// holds while it runs.
pub(crate) fn check_state(state_dir: &Path, repair: bool) -> Result<StateCheck> {
    let _lock = if repair {
        let lock = crate::lockfile::try_lock(state_dir, true)
            .with_context(|| format!("locking {}", state_dir.display()))?;
        if lock.is_none() {
            bail!(
                "state directory {}: in use by a running lazyboot serve; stop it first",
                state_dir.display()
            );
        }
        lock
    } else {
        None
    };
    let mut c = StateCheck::default();
    check_key(state_dir, &mut c)?;
    check_leases(state_dir, &mut c)?;
    check_profiles(state_dir, &mut c)?;
    for node in entries(&state_dir.join("nodes"))? {
        c.nodes += 1;
        c.leftovers.extend(entries(&node.join("work"))?);
    }
    if repair {
        for p in &c.problems {
            let done = match p.fix {
                Fix::MoveAside => std::fs::rename(&p.path, aside(&p.path)),
                Fix::Private => {
                    std::fs::set_permissions(&p.path, std::fs::Permissions::from_mode(0o600))
                }
            };
            done.with_context(|| format!("repairing {}", p.path.display()))?;
        }
        for l in &c.leftovers {
            let done = if l.is_dir() {
                std::fs::remove_dir_all(l)
            } else {
                std::fs::remove_file(l)
            };
            done.with_context(|| format!("removing {}", l.display()))?;
        }
    }
    Ok(c)
}

fn aside(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".bad");
    PathBuf::from(s)
}

fn check_key(state_dir: &Path, c: &mut StateCheck) -> Result<()> {
    let path = state_dir.join("nfs.key");
    for e in entries(state_dir)? {
        let name = e.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(".nfs.key.tmp-") {
            c.leftovers.push(e);
        }
    }
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            c.key = Some("none yet (made at the next start)");
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if meta.len() != 32 {
        c.problems.push(Problem {
            path,
            what: format!(
                "the NFS handle key must hold 32 bytes, it holds {}; a new key is made at the \
                 next start, and every node must mount again",
                meta.len()
            ),
            fix: Fix::MoveAside,
        });
        return Ok(());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        c.problems.push(Problem {
            path,
            what: format!(
                "the NFS handle key is readable by others (mode {:o}): anyone who reads it can \
                 forge file handles",
                meta.permissions().mode() & 0o777
            ),
            fix: Fix::Private,
        });
        return Ok(());
    }
    c.key = Some("ok");
    Ok(())
}

fn check_leases(state_dir: &Path, c: &mut StateCheck) -> Result<()> {
    let dir = state_dir.join("dhcp");
    let path = dir.join("leases.json");
    if dir.join("leases.json.tmp").exists() {
        c.leftovers.push(dir.join("leases.json.tmp"));
    }
    if !path.exists() {
        return Ok(());
    }
    match crate::dhcp::leases::check_file(&path) {
        Ok(n) => c.leases = Some(n),
        Err(why) => c.problems.push(Problem {
            path,
            what: format!("unreadable lease file: {why}"),
            fix: Fix::MoveAside,
        }),
    }
    Ok(())
}

fn check_profiles(state_dir: &Path, c: &mut StateCheck) -> Result<()> {
    for node in entries(&state_dir.join("profiles"))? {
        for path in entries(&node)? {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                c.leftovers.push(path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let read = std::fs::read(&path).with_context(|| format!("reading {}", path.display()));
            match serde_json::from_slice::<BootProfile>(&read?) {
                Ok(_) => c.profiles += 1,
                Err(e) => c.problems.push(Problem {
                    path,
                    what: format!("unreadable boot profile: {e}"),
                    fix: Fix::MoveAside,
                }),
            }
        }
    }
    Ok(())
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    cache::sorted_entries(dir).with_context(|| format!("listing {}", dir.display()))
}

/// Exit status of `lazyboot fsck`, as e2fsck's: nothing wrong, problems
/// repaired, problems left.
pub(crate) const CLEAN: i32 = 0;
pub(crate) const REPAIRED: i32 = 1;
pub(crate) const LEFT: i32 = 4;

/// Check (and with `repair`, repair) the cache and the state directory,
/// print what was found, and return the exit status.
pub(crate) fn run(cache_dir: &Path, state_dir: &Path, repair: bool) -> Result<i32> {
    let cache = cache::check(cache_dir, repair)
        .with_context(|| format!("checking the cache {}", cache_dir.display()))?;
    let state = check_state(state_dir, repair)?;
    print!("{}", report(cache_dir, &cache, state_dir, &state, repair));
    let problems = cache.damaged.len() + state.problems.len();
    Ok(match (problems, repair) {
        (0, _) => CLEAN,
        (_, true) => REPAIRED,
        (_, false) => LEFT,
    })
}

fn report(
    cache_dir: &Path,
    cache: &CacheCheck,
    state_dir: &Path,
    state: &StateCheck,
    repair: bool,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let done = |fixed: &str| {
        if repair {
            format!(" ({fixed})")
        } else {
            String::new()
        }
    };
    let _ = writeln!(
        out,
        "cache {}: {} chunks ({:.1} MiB), {} indexes intact",
        cache_dir.display(),
        cache.chunks,
        cache.chunk_bytes as f64 / (1 << 20) as f64,
        cache.indexes
    );
    for p in &cache.damaged {
        let _ = writeln!(
            out,
            "  damaged: {} (fails its checksum: torn, flipped or not what its place names){}",
            p.display(),
            done("removed; fetched again when needed")
        );
    }
    for p in &cache.stray {
        let _ = writeln!(out, "  not the cache's, left alone: {}", p.display());
    }
    let _ = writeln!(
        out,
        "state {}: NFS key {}, {} leases, {} nodes, {} boot profiles",
        state_dir.display(),
        state.key.unwrap_or("needs repair"),
        state
            .leases
            .map_or_else(|| "no".to_string(), |n| n.to_string()),
        state.nodes,
        state.profiles
    );
    for p in &state.problems {
        let fixed = match p.fix {
            Fix::MoveAside => format!("moved to {}", aside(&p.path).display()),
            Fix::Private => "made mode 0600".to_string(),
        };
        let _ = writeln!(out, "  {}: {}{}", p.path.display(), p.what, done(&fixed));
    }
    let leftovers = cache.unfinished.len() + state.leftovers.len();
    if leftovers > 0 {
        let _ = writeln!(
            out,
            "{leftovers} leftover(s) of writes that never finished (harmless: the next start \
             removes them){}",
            done("removed")
        );
    }
    let problems = cache.damaged.len() + state.problems.len();
    let _ = match (problems, repair) {
        (0, _) => writeln!(out, "fsck: clean"),
        (n, true) => writeln!(out, "fsck: {n} problem(s) repaired"),
        (n, false) => writeln!(
            out,
            "fsck: {n} problem(s); stop lazyboot and run `lazyboot fsck --repair`"
        ),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_problems_and_leftovers_are_found_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        crate::nfs::load_or_create_key(&s.join("nfs.key")).unwrap();
        std::fs::create_dir_all(s.join("dhcp")).unwrap();
        std::fs::write(s.join("dhcp/leases.json"), br#"{"version":1,"leases":[]}"#).unwrap();
        std::fs::create_dir_all(s.join("nodes/n1/work")).unwrap();
        let clean = check_state(s, false).unwrap();
        assert_eq!(clean.key, Some("ok"));
        assert_eq!(clean.leases, Some(0));
        assert_eq!(clean.nodes, 1);
        assert!(clean.problems.is_empty() && clean.leftovers.is_empty());

        std::fs::write(s.join("dhcp/leases.json"), b"{\"version\":1,\"lea").unwrap();
        std::fs::write(s.join("dhcp/leases.json.tmp"), b"half").unwrap();
        std::fs::set_permissions(s.join("nfs.key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::create_dir_all(s.join("profiles/n1")).unwrap();
        std::fs::write(s.join("profiles/n1/000001.json"), b"{").unwrap();
        std::fs::write(s.join("profiles/n1/.000002.json.tmp"), b"{").unwrap();
        std::fs::write(s.join("nodes/n1/work/t7"), b"copy-up in progress").unwrap();
        let found = check_state(s, false).unwrap();
        let mut paths: Vec<_> = found.problems.iter().map(|p| p.path.clone()).collect();
        paths.sort();
        assert_eq!(
            paths,
            vec![
                s.join("dhcp/leases.json"),
                s.join("nfs.key"),
                s.join("profiles/n1/000001.json")
            ]
        );
        assert_eq!(found.leftovers.len(), 3, "{:?}", found.leftovers);

        let held = crate::lockfile::try_lock(s, true).unwrap().unwrap();
        let busy = check_state(s, true)
            .err()
            .expect("repair under a live serve");
        assert!(busy.to_string().contains("in use"), "{busy}");
        drop(held);
        check_state(s, true).unwrap();
        let after = check_state(s, false).unwrap();
        assert!(after.problems.is_empty(), "{:?}", after.problems.len());
        assert!(after.leftovers.is_empty());
        assert!(s.join("dhcp/leases.json.bad").exists());
        assert!(s.join("profiles/n1/000001.json.bad").exists());
        let mode = std::fs::metadata(s.join("nfs.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
