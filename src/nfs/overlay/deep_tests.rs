//! Entries deeper than the host's `PATH_MAX`: their upper paths are longer
//! than one system call accepts, and every operation must still work.

use super::sys;
use super::tests::*;
use crate::nfs::fs::{FileKind, NodeFs, SetAttr, SetTime, Time};
use std::os::unix::fs::MetadataExt;

/// 20 directories of 250-byte names: ~5,000 bytes below the upper.
const DEPTH: usize = 20;

fn component(i: usize) -> Vec<u8> {
    let mut name = format!("d{i:02}-").into_bytes();
    name.resize(250, b'x');
    name
}

#[tokio::test]
async fn every_operation_works_below_the_hosts_path_max() {
    let mut env = Env::new().await;
    let me = root();
    let mut dirs = vec![env.fs.root()];
    for i in 0..DEPTH {
        let d = env
            .fs
            .mkdir(*dirs.last().unwrap(), &component(i), 0o755, &me)
            .await
            .unwrap();
        dirs.push(d);
    }
    let deep = *dirs.last().unwrap();
    let host: usize = env.upper("").as_os_str().len() + DEPTH * 251;
    assert!(
        host > 4096,
        "host path of {host} bytes is not past PATH_MAX"
    );

    let fs = &env.fs;
    let f = fs.create(deep, b"file", 0o644, &me, true).await.unwrap();
    fs.write(f, 0, b"deep data", &me).await.unwrap();
    assert_eq!(read_all(fs, f).await, b"deep data");
    let set = SetAttr {
        mode: Some(0o600),
        uid: Some(1000),
        gid: Some(1000),
        size: Some(4),
        mtime: Some(SetTime::Client(Time {
            secs: 1_000_000_000,
            nanos: 5,
        })),
        ..Default::default()
    };
    let a = fs.setattr(f, &set, &me).await.unwrap();
    assert_eq!(
        (a.mode, a.uid, a.gid, a.size, a.mtime.secs),
        (0o600, 1000, 1000, 4, 1_000_000_000)
    );
    let s = fs.symlink(deep, b"link", b"file", &me).await.unwrap();
    assert_eq!(fs.readlink(s).await.unwrap(), b"file");
    fs.mknod(deep, b"fifo", FileKind::Fifo, 0o600, (0, 0), &me)
        .await
        .unwrap();
    fs.link(f, deep, b"file2").await.unwrap();
    assert_eq!(fs.getattr(f).await.unwrap().nlink, 2);
    fs.rename(deep, b"file2", deep, b"renamed").await.unwrap();
    let sub = fs.mkdir(deep, b"sub", 0o700, &me).await.unwrap();
    fs.rename(deep, b"sub", dirs[DEPTH - 1], b"sub")
        .await
        .unwrap();
    let mut names: Vec<Vec<u8>> = fs
        .readdir(deep, 0, 100)
        .await
        .unwrap()
        .0
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, [&b"fifo"[..], b"file", b"link", b"renamed"]);

    // A restart scans the upper, long paths included, and finds every id.
    env.restart().await;
    let fs = &env.fs;
    assert_eq!(fs.getattr(f).await.unwrap().size, 4);
    assert_eq!(fs.getattr(sub).await.unwrap().mode, 0o700);
    assert_eq!(fs.lookup(deep, b"renamed").await.unwrap(), f);
    fs.remove(deep, b"renamed").await.unwrap();
    fs.remove(deep, b"file").await.unwrap();
    fs.remove(deep, b"link").await.unwrap();
    fs.remove(deep, b"fifo").await.unwrap();
    fs.rmdir(dirs[DEPTH - 1], b"sub").await.unwrap();
    for i in (0..DEPTH).rev() {
        fs.rmdir(dirs[i], &component(i)).await.unwrap();
    }
    assert_eq!(std::fs::read_dir(env.upper("")).unwrap().count(), 0);
}

/// `name` in the directory `dir` is open on, by a short path.
fn below(dir: &std::fs::File, name: &[u8]) -> String {
    use std::os::fd::AsRawFd;
    format!(
        "/proc/self/fd/{}/{}",
        dir.as_raw_fd(),
        String::from_utf8_lossy(name)
    )
}

#[test]
fn host_paths_of_any_length_reach_their_file() {
    let top = tempfile::tempdir().unwrap();
    let mut p = top.path().to_path_buf();
    for i in 0..40 {
        p.push(String::from_utf8(component(i)).unwrap());
        sys::create_dir(&p).unwrap();
    }
    assert!(p.as_os_str().len() > 10_000);
    let file = p.join("f");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    std::io::Write::write_all(&mut sys::open(&opts, &file).unwrap(), b"abc").unwrap();
    assert_eq!(sys::lstat(&file).unwrap().size(), 3);
    // The same inode as a walk in short steps, each relative to the
    // directory the step before opened, finds.
    let mut dir = std::fs::File::open(top.path()).unwrap();
    for i in 0..40 {
        dir = std::fs::File::open(below(&dir, &component(i))).unwrap();
    }
    let ino = std::fs::symlink_metadata(below(&dir, b"f")).unwrap().ino();
    assert_eq!(sys::lstat(&file).unwrap().ino(), ino);
    // Beyond PATH_MAX a plain call fails: what this module exists for.
    assert_eq!(
        std::fs::symlink_metadata(&file).unwrap_err().raw_os_error(),
        Some(libc::ENAMETOOLONG)
    );
    sys::remove_dir_all(top.path().join(String::from_utf8(component(0)).unwrap())).unwrap();
}
