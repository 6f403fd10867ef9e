//! Running the `lazyboot` binary: a [`Mount`] that is unmounted on drop and
//! reports the `stats: requests=N bytes=M` line, and [`lazyboot`] for the
//! one-shot commands (`index`, `pull`, `inspect`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The `lazyboot` binary cargo built for the tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_lazyboot");

/// A running `lazyboot mount`, unmounted (SIGINT) on drop.
pub struct Mount {
    pub child: Child,
    pub dir: PathBuf,
    stderr: mpsc::Receiver<String>,
    pub err_lines: Vec<String>,
}

impl Mount {
    /// `lazyboot --cache-dir CACHE mount EXTRA.. IMAGE DIR` (creates `dir`);
    /// returns once the mount printed its `mounted ...` line.
    pub fn start(image: &str, cache: &Path, dir: &Path, extra: &[&str]) -> Result<Mount> {
        // A dead mount left by a killed run answers ENOTCONN here; lazyboot
        // itself must deal with it, so only create what is really missing.
        if let Err(e) = std::fs::create_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(e.into());
            }
        }
        let mut child = Command::new(BIN)
            .arg("--cache-dir")
            .arg(cache)
            .arg("mount")
            .args(extra)
            .arg(image)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning lazyboot mount")?;
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                let _ = tx.send(line);
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line)?;
        let mut m = Mount {
            child,
            dir: dir.to_path_buf(),
            stderr: rx,
            err_lines: Vec::new(),
        };
        if !line.starts_with("mounted ") {
            m.drain();
            bail!(
                "mount did not become ready: {line:?}\n{}",
                m.err_lines.join("\n")
            );
        }
        Ok(m)
    }

    pub fn drain(&mut self) {
        while let Ok(l) = self.stderr.try_recv() {
            self.err_lines.push(l);
        }
    }

    /// Unmount; returns (requests, bytes) the process fetched.
    pub fn stop(mut self) -> Result<(u64, u64)> {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.stderr.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => self.err_lines.push(l),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(_) => {}
            }
        }
        if !status.success() {
            bail!(
                "lazyboot mount exited {status}:\n{}",
                self.err_lines.join("\n")
            );
        }
        let stats = self
            .err_lines
            .iter()
            .find_map(|l| parse_stats(l))
            .with_context(|| format!("no stats line in:\n{}", self.err_lines.join("\n")))?;
        Ok(stats)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let _ = self.child.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// `(requests, bytes)` from a line containing `stats: requests=N bytes=M`.
pub fn parse_stats(line: &str) -> Option<(u64, u64)> {
    let rest = &line[line.find("stats: ")? + 7..];
    let mut req = None;
    let mut bytes = None;
    for kv in rest.split_whitespace() {
        match kv.split_once('=') {
            Some(("requests", v)) => req = v.parse().ok(),
            Some(("bytes", v)) => bytes = v.trim_end_matches(')').parse().ok(),
            _ => {}
        }
    }
    Some((req?, bytes?))
}

/// `lazyboot --cache-dir CACHE ARGS..` to completion.
pub fn lazyboot(cache: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run lazyboot")
}
