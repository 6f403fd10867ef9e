//! The image and helpers the overlay's tests share.

use super::{node_state_dir, NodeOverlay};
use crate::image::testimage::{LayerBuilder, TestImage};
use crate::image::ImageView;
use crate::nfs::fs::{Cred, FileId, FsError, NodeFs};
use std::path::PathBuf;
use std::sync::Arc;

pub(super) const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\n";

pub(super) fn big() -> Vec<u8> {
    (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

pub(super) fn sample() -> TestImage {
    let mut l1 = LayerBuilder::new();
    l1.dir("etc", 0o755)
        .file("etc/passwd", 0o644, PASSWD)
        .file("etc/old", 0o644, b"gone in layer 2")
        .dir("bin", 0o755)
        .file_with_xattrs(
            "bin/su",
            0o4755,
            b"su-binary",
            &[
                ("user.lazyboot.test", b"v1"),
                ("trusted.overlay.origin", b"x"),
            ],
        )
        .file("bin/a", 0o755, b"hard-linked")
        .hardlink("bin/b", "bin/a")
        .symlink("bin/sh", "busybox")
        .dir("dev", 0o755)
        .char_device("dev/null", 0o666, 1, 3)
        .block_device("dev/sda", 0o660, 8, 0)
        .dir("run", 0o755)
        .fifo("run/initctl", 0o600)
        .dir("home", 0o755)
        .owner(1000, 1000)
        .dir("home/user", 0o750)
        .file("home/user/notes", 0o600, b"hello")
        .owner(0, 42)
        .file("etc/shadow", 0o640, b"secret")
        .owner(0, 0)
        .dir("var", 0o755)
        .dir("var/lib", 0o755)
        .file("var/lib/big", 0o644, &big())
        .dir("opt", 0o755)
        .file("opt/x", 0o644, b"x")
        .file("opt/y", 0o644, b"y")
        .dir("opt/sub", 0o755)
        .file("opt/sub/z", 0o644, b"z");
    let mut l2 = LayerBuilder::new();
    l2.whiteout("etc/old")
        .file("etc/hostname", 0o644, b"node1\n");
    TestImage::new(&[l1.finish(), l2.finish()])
}

pub(super) struct Env {
    pub(super) img: TestImage,
    pub(super) view: Arc<ImageView>,
    pub(super) fs: NodeOverlay,
}

impl Env {
    pub(super) async fn new() -> Env {
        Self::with_mode(false).await
    }

    pub(super) async fn with_mode(read_only: bool) -> Env {
        let img = sample();
        let view = img.view().await;
        let fs = NodeOverlay::open(view.clone(), &img.node_dir(), read_only)
            .await
            .unwrap();
        Env { img, view, fs }
    }

    /// A new overlay on the same directory: what a server restart sees.
    pub(super) async fn restart(&mut self) {
        self.fs = NodeOverlay::open(self.view.clone(), &self.img.node_dir(), false)
            .await
            .unwrap();
    }

    pub(super) fn upper(&self, rel: &str) -> PathBuf {
        self.fs.upper_dir().join(rel)
    }
}

pub(super) trait NodeDir {
    fn node_dir(&self) -> PathBuf;
}
impl NodeDir for TestImage {
    fn node_dir(&self) -> PathBuf {
        node_state_dir(&self.state_dir(), "n1")
    }
}

pub(super) fn root() -> Cred {
    Cred {
        uid: 0,
        gid: 0,
        gids: vec![],
    }
}

pub(super) fn user() -> Cred {
    Cred {
        uid: 1000,
        gid: 1000,
        gids: vec![1000],
    }
}

pub(super) async fn look(fs: &NodeOverlay, path: &str) -> Result<FileId, FsError> {
    let mut id = fs.root();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        id = fs.lookup(id, c.as_bytes()).await?;
    }
    Ok(id)
}

pub(super) async fn list(fs: &NodeOverlay, path: &str) -> Vec<String> {
    let dir = look(fs, path).await.unwrap();
    let mut out = Vec::new();
    let mut cookie = 0;
    loop {
        let (entries, eof) = fs.readdir(dir, cookie, 3).await.unwrap();
        for e in &entries {
            assert_eq!(
                look(fs, &format!("{path}/{}", String::from_utf8_lossy(&e.name)))
                    .await
                    .unwrap(),
                e.id
            );
            out.push(String::from_utf8(e.name.clone()).unwrap());
            cookie = e.cookie;
        }
        if eof {
            return out;
        }
        assert!(!entries.is_empty(), "no progress before eof");
    }
}

pub(super) async fn read_all(fs: &NodeOverlay, id: FileId) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let (data, eof) = fs.read(id, out.len() as u64, 100_000).await.unwrap();
        out.extend_from_slice(&data);
        if eof {
            return out;
        }
        assert!(!data.is_empty());
    }
}

pub(super) async fn contents(fs: &NodeOverlay, path: &str) -> Vec<u8> {
    read_all(fs, look(fs, path).await.unwrap()).await
}

/// Whether the upper entry at `p` is a whiteout.
pub(super) fn whiteout_at(p: &std::path::Path) -> bool {
    let m = super::sys::lstat(p).unwrap();
    super::whiteout::is_whiteout(p, &m).unwrap()
}

pub(super) fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
