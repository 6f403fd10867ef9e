//! Running lazyboot's servers for a test, one way everywhere.
//!
//! - [`Serve`] / [`Server`]: `lazyboot serve` as a child process. `Serve`
//!   holds the command line (config, global options, log file, `RUST_LOG`,
//!   an optional network namespace); [`Serve::start`] waits for the
//!   `serving ...` line (printed once every socket is bound), with the
//!   child's stderr in a log file that failure messages quote. The server
//!   gets SIGTERM and is waited for on drop; [`Server::restart`] starts it
//!   again on the same config, state and cache. [`Serve::refused`] is for a
//!   `serve` that must not start.
//! - [`InProcess`]: one of the library's servers (`dhcp::run`, `nfs::serve`,
//!   `tftp::run`) in a tokio runtime of its own, as `serve` runs each of
//!   them, for tests that look inside the server or hand it a test double.

use std::fmt::Display;
use std::fs;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::tail;

pub const BIN: &str = env!("CARGO_BIN_EXE_lazyboot");

/// How long `serve` may take to say "serving" (or to fail).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a SIGTERM'd `serve` may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a lab's `serve` listens and keeps its files: the parts of its
/// config every lab test shares ([`LabConfig::text`]).
pub struct LabConfig<'a> {
    pub interface: &'a str,
    pub server: Ipv4Addr,
    /// The lab's /24, as `10.213.N`.
    pub net: String,
    /// State and cache go under it.
    pub work: &'a Path,
    pub tftp_port: u16,
    pub nfs_port: u16,
    pub http_port: Option<u16>,
}

impl LabConfig<'_> {
    /// The config: `[server]` with the above (a 2G cache) and
    /// `server_lines`, full DHCP from the /24's .100-.150 with this server
    /// as router, then `rest` (the `[[nodes]]` tables).
    pub fn text(&self, server_lines: &str, rest: &str) -> String {
        let http = self
            .http_port
            .map_or(String::new(), |p| format!("http_port = {p}\n"));
        format!(
            "[server]\ninterface = \"{interface}\"\naddress = \"{server}\"\n\
             state_dir = \"{state}\"\ncache_dir = \"{cache}\"\ncache_size = \"2G\"\n\
             tftp_port = {tftp}\nnfs_port = {nfs}\n{http}{server_lines}\n\n\
             [dhcp]\nmode = \"full\"\npool_start = \"{net}.100\"\npool_end = \"{net}.150\"\n\
             router = \"{server}\"\n{rest}",
            interface = self.interface,
            server = self.server,
            state = self.work.join("state").display(),
            cache = self.work.join("cache").display(),
            tftp = self.tftp_port,
            nfs = self.nfs_port,
            net = self.net,
        )
    }
}

/// The command line of one `lazyboot serve`; [`Serve::start`] runs it.
#[derive(Clone, Debug)]
pub struct Serve {
    config: PathBuf,
    globals: Vec<String>,
    log: PathBuf,
    rust_log: String,
    netns: Option<String>,
}

impl Serve {
    /// `lazyboot serve --config CONFIG`, its stderr in `serve.log` next to
    /// the config, `RUST_LOG=lazyboot=debug`.
    pub fn new(config: &Path) -> Serve {
        Serve {
            config: config.to_path_buf(),
            globals: Vec::new(),
            log: config.with_file_name("serve.log"),
            rust_log: "lazyboot=debug".to_string(),
            netns: None,
        }
    }

    /// Global options, before `serve` (`--cache-dir D`, `--platform P`, ...).
    pub fn globals(mut self, args: &[&str]) -> Serve {
        self.globals.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Where the server's stderr goes (created afresh by `start`, appended
    /// to by `restart`).
    pub fn log(mut self, path: &Path) -> Serve {
        self.log = path.to_path_buf();
        self
    }

    /// `RUST_LOG` for the server (e.g. `lazyboot=debug,warn` to keep other
    /// crates' warnings too).
    pub fn rust_log(mut self, filter: &str) -> Serve {
        self.rust_log = filter.to_string();
        self
    }

    /// Run it inside network namespace `ns` (`ip netns exec NS ...`, which
    /// also gives it a mount namespace of its own).
    pub fn in_netns(mut self, ns: &str) -> Serve {
        self.netns = Some(ns.to_string());
        self
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Start it; it must say "serving" (the line is [`Server::line`]).
    pub fn start(self) -> Result<Server> {
        let (child, line) = self.spawn_ready(false)?;
        Ok(Server {
            serve: self,
            child,
            line,
            exited: None,
            killed: false,
        })
    }

    /// Run a `serve` that must not start: its first stdout line (empty if
    /// none), exit status and log. An error if it says "serving".
    pub fn refused(self) -> Result<Refused> {
        let (mut child, first) = self.spawn(false)?;
        let line = match first.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "serve neither started nor failed in {READY_TIMEOUT:?}\n{}",
                    self.log_text()
                );
            }
        };
        if line.starts_with("serving") {
            signal(&child, libc::SIGTERM);
            let _ = wait_timeout(&mut child, STOP_TIMEOUT);
            bail!("serve started: {line:?}\n{}", self.log_text());
        }
        let status = match wait_timeout(&mut child, READY_TIMEOUT)? {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("serve said {line:?} but did not exit\n{}", self.log_text());
            }
        };
        Ok(Refused {
            line,
            status,
            log: self.log_text(),
        })
    }

    fn command(&self) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(&self.globals)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", &self.rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        cmd
    }

    /// Spawn the child; a channel that gets its first stdout line (empty at
    /// end of file). The rest of stdout is echoed to the test's stderr.
    fn spawn(&self, append: bool) -> Result<(Child, mpsc::Receiver<String>)> {
        let log = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut child = self
            .command()
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {BIN} serve"))?;
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            let _ = tx.send(line);
            // Keep the pipe open and drained for anything printed later.
            for l in out.lines().map_while(Result::ok) {
                eprintln!("[serve stdout] {l}");
            }
        });
        Ok((child, rx))
    }

    /// Spawn and wait for "serving"; the child and that line.
    fn spawn_ready(&self, append: bool) -> Result<(Child, String)> {
        let (mut child, first) = self.spawn(append)?;
        let line = first.recv_timeout(READY_TIMEOUT).unwrap_or_default();
        if !line.starts_with("serving") {
            let _ = child.kill();
            let _ = child.wait();
            bail!("serve did not start: {line:?}\n{}", self.log_text());
        }
        Ok((child, line))
    }
}

/// What a `serve` that did not start left: see [`Serve::refused`].
#[derive(Debug)]
pub struct Refused {
    pub line: String,
    pub status: ExitStatus,
    pub log: String,
}

/// A running `lazyboot serve` (see [`Serve`]). SIGTERM and wait on drop;
/// if the test is failing, the log's tail goes to stderr.
pub struct Server {
    serve: Serve,
    child: Child,
    line: String,
    /// Set once the child is reaped.
    exited: Option<ExitStatus>,
    /// Ended by [`Server::kill9`].
    killed: bool,
}

impl Server {
    /// The `serving ...` line of the latest start.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The process id of the running server (of its latest start).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The whole log (all starts, for a restarted server).
    pub fn log(&self) -> String {
        self.serve.log_text()
    }

    pub fn log_path(&self) -> &Path {
        self.serve.log_path()
    }

    fn running(&mut self) -> bool {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
            }
        }
        self.exited.is_none()
    }

    /// SIGTERM; the server must exit, cleanly, within a minute. Nothing to
    /// do after [`Server::kill9`].
    pub fn stop(&mut self) -> Result<()> {
        if self.killed {
            return Ok(());
        }
        if self.running() {
            signal(&self.child, libc::SIGTERM);
            match wait_timeout(&mut self.child, STOP_TIMEOUT)? {
                Some(status) => self.exited = Some(status),
                None => {
                    let _ = self.child.kill();
                    self.exited = Some(self.child.wait()?);
                    bail!("serve did not stop on SIGTERM\n{}", self.log());
                }
            }
        }
        match self.exited {
            Some(status) if !status.success() => {
                bail!(
                    "serve exited with {status} on SIGTERM\n{}",
                    tail(&self.log(), 40)
                )
            }
            _ => Ok(()),
        }
    }

    /// SIGKILL: no chance to flush or clean up anything.
    pub fn kill9(&mut self) -> Result<()> {
        if self.running() {
            signal(&self.child, libc::SIGKILL);
            self.exited = Some(self.child.wait()?);
        }
        self.killed = true;
        Ok(())
    }

    /// Stop (SIGTERM, cleanly) unless it already has been, and start again
    /// with the same command line: same config, state and cache; the log
    /// goes on in the same file.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let (child, line) = self.serve.spawn_ready(true)?;
        (self.child, self.line) = (child, line);
        (self.exited, self.killed) = (None, false);
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.running() {
            signal(&self.child, libc::SIGTERM);
            if !matches!(
                wait_timeout(&mut self.child, Duration::from_secs(30)),
                Ok(Some(_))
            ) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- serve log {} (last 60 lines) ---\n{}",
                self.log_path().display(),
                tail(&self.log(), 60)
            );
        }
    }
}

/// Signal our own child, not reaped yet (`ip netns exec` execs the server,
/// so that pid is the server's too).
fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we have not waited for.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// The child's exit status, or `None` if it is still running after `limit`.
fn wait_timeout(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A library server future in a tokio runtime of its own with `threads`
/// workers, as `serve` runs it. Stopped (the task aborted and waited for,
/// then the runtime shut down) by [`InProcess::stop`] or on drop.
pub struct InProcess {
    rt: Option<tokio::runtime::Runtime>,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl InProcess {
    /// Spawn `server` (named `name` in messages). A server that returns or
    /// fails within 100 ms (a bind error, say) is an error now rather than
    /// a client timeout later; one that fails after that says so on stderr.
    pub fn start<E: Display>(
        name: &str,
        threads: usize,
        server: impl Future<Output = Result<(), E>> + Send + 'static,
    ) -> Result<InProcess> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?;
        let label = name.to_string();
        let task = rt.spawn(async move {
            server.await.map_err(|e| {
                let e = e.to_string();
                eprintln!("{label} stopped: {e}");
                e
            })
        });
        std::thread::sleep(Duration::from_millis(100));
        if task.is_finished() {
            match rt.block_on(task)? {
                Ok(()) => bail!("{name} returned"),
                Err(e) => bail!("{name} failed: {e}"),
            }
        }
        Ok(InProcess {
            rt: Some(rt),
            task: Some(task),
        })
    }

    /// Abort the server, wait until its task (and with it its sockets) is
    /// gone, and shut the runtime down (every task it spawned is dropped).
    pub fn stop(&mut self) {
        if let (Some(rt), Some(task)) = (&self.rt, self.task.take()) {
            task.abort();
            let _ = rt.block_on(task);
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
