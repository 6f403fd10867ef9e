//! What happens to a node's upper when it mounts another image than the
//! one its upper was made against (a swap, a rollback, a moved tag).
//!
//! The state files in question are `upper/`, `index/` and `index.image` of
//! the node's directory. `previous/` holds one earlier set: during a swap
//! the old upper is put there, so that a rollback to the old image gets the
//! node's changes back, and the fleet drops it once the swap succeeded.
//! Every step is a rename inside the node's directory; a crash between two
//! steps leaves a state the next mount finishes (each step is repeated
//! until the item is where it belongs).

use super::state::{discard, move_if_there, stamp, wipe_node_state, UPPER_ITEMS};
use super::sys;
pub(crate) use crate::nodes::OnNewImage;
use std::fs;
use std::io;
use std::path::Path;

/// The image an upper was made against, as recorded in its directory.
pub(crate) fn recorded_image(dir: &Path) -> String {
    fs::read_to_string(dir.join("index.image"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Prepare `dir` for a mount of `manifest`. Returns what was done, for
/// the log. Nothing happens when the upper belongs to `manifest` already
/// (or there is none).
pub(crate) fn switch_image(dir: &Path, manifest: &str, rule: OnNewImage) -> io::Result<Switched> {
    let previous = dir.join("previous");
    // A switch to `previous/` that a crash interrupted: finish it.
    if previous.join("restoring").exists() {
        restore(dir)?;
        return Ok(Switched::Restored);
    }
    let recorded = recorded_image(dir);
    if recorded.is_empty() && !dir.join("upper").exists() || recorded == manifest {
        return Ok(Switched::Nothing);
    }
    if recorded_image(&previous) == manifest {
        let present: Vec<&str> = UPPER_ITEMS
            .into_iter()
            .filter(|n| previous.join(n).exists())
            .collect();
        fs::write(previous.join("restoring"), present.join("\n"))?;
        restore(dir)?;
        return Ok(Switched::Restored);
    }
    match rule {
        OnNewImage::Wipe => {
            wipe_node_state(dir)?;
            Ok(Switched::Wiped)
        }
        OnNewImage::Carry => {
            // The index maps the old image's inodes: the upper's files stay,
            // their links to the lower are rebuilt against the new image.
            let work = dir.join("work");
            fs::create_dir_all(&work)?;
            for name in ["index", "index.image"] {
                move_if_there(&dir.join(name), &work.join(format!("carried-{name}")))?;
            }
            Ok(Switched::Carried)
        }
        OnNewImage::SetAside => {
            let staging = dir.join("previous.new");
            fs::create_dir_all(&staging)?;
            for name in UPPER_ITEMS {
                move_if_there(&dir.join(name), &staging.join(name))?;
            }
            discard(dir, "previous")?;
            sys::rename(&staging, &previous)?;
            Ok(Switched::SetAside)
        }
    }
}

/// What [`switch_image`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Switched {
    Nothing,
    Wiped,
    Carried,
    SetAside,
    Restored,
}

/// Drop the upper kept in `previous/` (the swap it was kept for succeeded).
pub(crate) fn drop_previous(dir: &Path) -> io::Result<()> {
    if !dir.join("previous").exists() {
        return Ok(());
    }
    discard(dir, "previous")?;
    sys::remove_dir_all(dir.join("work"))
        .or_else(|e| (e.kind() == io::ErrorKind::NotFound).then_some(()).ok_or(e))?;
    fs::create_dir_all(dir.join("work"))
}

/// Put `previous/` back in place of the current upper, which is discarded.
/// `previous/restoring` lists the items `previous/` held when the switch
/// began: an item listed but gone from `previous/` was moved back already.
fn restore(dir: &Path) -> io::Result<()> {
    let previous = dir.join("previous");
    let listed = fs::read_to_string(previous.join("restoring"))?;
    let listed: Vec<&str> = listed.lines().collect();
    let discarded = dir.join("work").join(format!("discarded-{}", stamp()));
    fs::create_dir_all(&discarded)?;
    for name in UPPER_ITEMS {
        let kept = previous.join(name);
        if kept.exists() {
            move_if_there(&dir.join(name), &discarded.join(name))?;
            sys::rename(&kept, dir.join(name))?;
        } else if !listed.contains(&name) {
            move_if_there(&dir.join(name), &discarded.join(name))?;
        }
    }
    sys::remove_dir_all(&previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upper(dir: &Path, image: &str, file: &str) {
        fs::create_dir_all(dir.join("upper")).unwrap();
        fs::create_dir_all(dir.join("index")).unwrap();
        fs::write(dir.join("upper").join(file), image).unwrap();
        fs::write(dir.join("index.image"), format!("{image}\n")).unwrap();
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir.join("upper"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn a_swap_sets_the_upper_aside_and_a_rollback_gets_it_back() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        upper(d, "sha256:old", "changed-on-old");
        let s = switch_image(d, "sha256:new", OnNewImage::SetAside).unwrap();
        assert_eq!(s, Switched::SetAside);
        assert!(files(d).is_empty(), "the new image starts from nothing");
        assert_eq!(recorded_image(&d.join("previous")), "sha256:old");
        // The node writes on the new image, then is rolled back.
        upper(d, "sha256:new", "changed-on-new");
        let s = switch_image(d, "sha256:old", OnNewImage::Wipe).unwrap();
        assert_eq!(s, Switched::Restored);
        assert_eq!(files(d), ["changed-on-old"]);
        assert_eq!(recorded_image(d), "sha256:old");
        assert!(!d.join("previous").exists());
        // The same image again: nothing moves.
        assert_eq!(
            switch_image(d, "sha256:old", OnNewImage::SetAside).unwrap(),
            Switched::Nothing
        );
    }

    #[test]
    fn a_successful_swap_drops_the_kept_upper() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        upper(d, "sha256:old", "a");
        switch_image(d, "sha256:new", OnNewImage::SetAside).unwrap();
        drop_previous(d).unwrap();
        assert!(!d.join("previous").exists());
        assert!(fs::read_dir(d.join("work")).unwrap().next().is_none());
        drop_previous(d).unwrap();
    }

    #[test]
    fn outside_a_swap_the_upper_is_wiped_and_keep_upper_carries_it() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        upper(d, "sha256:old", "a");
        assert_eq!(
            switch_image(d, "sha256:new", OnNewImage::Wipe).unwrap(),
            Switched::Wiped
        );
        assert!(files(d).is_empty());
        assert!(!d.join("previous").exists());
        upper(d, "sha256:new", "b");
        assert_eq!(
            switch_image(d, "sha256:newer", OnNewImage::Carry).unwrap(),
            Switched::Carried
        );
        assert_eq!(files(d), ["b"]);
        assert_eq!(
            recorded_image(d),
            "",
            "the index is rebuilt for the new image"
        );
    }

    #[test]
    fn an_interrupted_restore_is_finished_at_the_next_mount() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        upper(d, "sha256:old", "kept");
        switch_image(d, "sha256:new", OnNewImage::SetAside).unwrap();
        upper(d, "sha256:new", "scratch");
        // A crash after the marker and the first move of a restore.
        fs::write(d.join("previous/restoring"), "upper\nindex\nindex.image").unwrap();
        fs::create_dir_all(d.join("work/discarded-0")).unwrap();
        fs::rename(d.join("upper"), d.join("work/discarded-0/upper")).unwrap();
        fs::rename(d.join("previous/upper"), d.join("upper")).unwrap();
        let s = switch_image(d, "sha256:old", OnNewImage::Wipe).unwrap();
        assert_eq!(s, Switched::Restored);
        assert_eq!(files(d), ["kept"]);
        assert_eq!(recorded_image(d), "sha256:old");
    }
}
