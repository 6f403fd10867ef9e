//! nfs-ganesha (VFS FSAL, NFSv3 over TCP only) exporting a directory, as
//! the reference NFS server of a test.
//!
//! ganesha will not start unless it can register MOUNT and NFS with an
//! rpcbind, and an rpcbind on the host's port 111 would take the port from
//! `lazyboot serve`'s own portmapper (another test's, say). So the helper
//! runs an rpcbind of its own in a new network namespace (only `lo`, so
//! its port 111 is nobody's business) and a new mount namespace with a
//! tmpfs on `/run`, and starts ganesha in that mount namespace but the
//! host's network namespace: ganesha registers through
//! `/run/rpcbind.sock` and listens on the address it is given. Clients
//! must name both ports (`port=`, `mountport=`): nothing answers
//! portmapper queries for them.

use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tail;

/// Tools [`Ganesha::start`] runs (Debian: nfs-ganesha, nfs-ganesha-vfs,
/// rpcbind, util-linux, iproute2).
pub const TOOLS: &[&str] = &[
    "ganesha.nfsd",
    "rpcbind",
    "rpcinfo",
    "unshare",
    "nsenter",
    "ip",
];

/// How long ganesha may take to say it is initialised.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running ganesha and its rpcbind; both killed on drop. Its files
/// (config, log) stay in the directory given to [`Ganesha::start`].
pub struct Ganesha {
    ganesha: Child,
    rpcbind: Child,
    pub addr: Ipv4Addr,
    pub nfs_port: u16,
    pub mount_port: u16,
    pub export: PathBuf,
    log: PathBuf,
}

impl Ganesha {
    /// Export `export` (read-write, no root squash, AUTH_SYS) over NFSv3 on
    /// TCP at `addr`, NFS and MOUNT on free ports; config and log go into
    /// `dir` (created). Returns once ganesha says `NFS SERVER INITIALIZED`
    /// and both ports accept connections.
    pub fn start(addr: Ipv4Addr, export: &Path, dir: &Path) -> Result<Ganesha> {
        fs::create_dir_all(dir)?;
        let export = export
            .canonicalize()
            .with_context(|| format!("export {}", export.display()))?;
        let nfs_port = super::free_tcp_port();
        let mount_port = loop {
            let p = super::free_tcp_port();
            if p != nfs_port {
                break p;
            }
        };
        let config = dir.join("ganesha.conf");
        // MOUNT gets a port of its own: ganesha 4.3 accepts MNT_Port =
        // NFS_Port but then answers no MNT call on it.
        fs::write(
            &config,
            format!(
                r#"NFS_CORE_PARAM {{
    Protocols = 3;
    NFS_Port = {nfs_port};
    MNT_Port = {mount_port};
    Bind_addr = {addr};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSV4 {{ Graceless = true; }}
EXPORT {{
    Export_Id = 1;
    Path = {path};
    Pseudo = /export;
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 3;
    Transports = TCP;
    SecType = sys;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"#,
                path = export.display()
            ),
        )?;
        let log = dir.join("ganesha.log");
        let _ = fs::remove_file(&log);
        // `unshare` execs sh, which execs rpcbind: the child is rpcbind.
        let mut rpcbind = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--net", "sh", "-c"])
            .arg("mount -t tmpfs -o mode=0755 tmpfs /run && ip link set lo up && exec rpcbind -f")
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("rpcbind.out"))?)
            .stderr(File::create(dir.join("rpcbind.err"))?)
            .spawn()
            .context("starting rpcbind (unshare)")?;
        // Ready once it answers a call, which it does only after setting up
        // all its transports: ganesha started as soon as rpcbind's socket
        // existed failed to register ("Cannot register NFS V3 on TCP") in
        // about one start of three. Until the child is rpcbind, its
        // namespaces and /run may still be the host's.
        let deadline = Instant::now() + Duration::from_secs(10);
        let exe = PathBuf::from(format!("/proc/{}/exe", rpcbind.id()));
        loop {
            let is_rpcbind =
                fs::read_link(&exe).is_ok_and(|p| p.file_name().is_some_and(|n| n == "rpcbind"));
            let answered = is_rpcbind
                && Command::new("nsenter")
                    .arg("--target")
                    .arg(rpcbind.id().to_string())
                    .args(["--net", "rpcinfo", "-T", "tcp", "127.0.0.1", "100000", "4"])
                    .stdin(Stdio::null())
                    .output()
                    .is_ok_and(|o| o.status.success());
            if answered {
                break;
            }
            if let Some(status) = rpcbind.try_wait()? {
                bail!(
                    "rpcbind exited ({status}): {}",
                    fs::read_to_string(dir.join("rpcbind.err")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = rpcbind.kill();
                let _ = rpcbind.wait();
                bail!("rpcbind does not answer after 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let ganesha = Command::new("nsenter")
            .arg("--target")
            .arg(rpcbind.id().to_string())
            .arg("--mount")
            .args(["ganesha.nfsd", "-F", "-N", "NIV_EVENT", "-f"])
            .arg(&config)
            .arg("-L")
            .arg(&log)
            .arg("-p")
            .arg(dir.join("ganesha.pid"))
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("ganesha.out"))?)
            .stderr(File::create(dir.join("ganesha.err"))?)
            .spawn();
        let ganesha = match ganesha {
            Ok(g) => g,
            Err(e) => {
                let _ = rpcbind.kill();
                let _ = rpcbind.wait();
                return Err(e).context("starting ganesha.nfsd (nsenter)");
            }
        };
        let mut me = Ganesha {
            ganesha,
            rpcbind,
            addr,
            nfs_port,
            mount_port,
            export,
            log,
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            let log = self.log();
            let listening = [self.nfs_port, self.mount_port].iter().all(|&p| {
                TcpStream::connect_timeout(&(self.addr, p).into(), Duration::from_secs(1)).is_ok()
            });
            if log.contains("NFS SERVER INITIALIZED") && listening {
                return Ok(());
            }
            if let Some(status) = self.ganesha.try_wait()? {
                bail!("ganesha.nfsd exited ({status}):\n{}", self.failure_text());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "ganesha.nfsd not ready after {START_TIMEOUT:?}:\n{}",
                    self.failure_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `SERVER:PATH` for a client's mount.
    pub fn spec(&self) -> String {
        format!("{}:{}", self.addr, self.export.display())
    }

    /// ganesha's process id (`nsenter` execs it).
    pub fn pid(&self) -> u32 {
        self.ganesha.id()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether ganesha still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.ganesha.try_wait(), Ok(None))
    }

    /// The log's tail and ganesha's own stderr, for failure messages.
    pub fn failure_text(&self) -> String {
        let dir = self.log.parent().unwrap_or(Path::new("."));
        format!(
            "--- {} (last 30 lines) ---\n{}\n--- ganesha stderr ---\n{}",
            self.log.display(),
            tail(&self.log(), 30),
            tail(
                &fs::read_to_string(dir.join("ganesha.err")).unwrap_or_default(),
                10
            )
        )
    }
}

impl Drop for Ganesha {
    fn drop(&mut self) {
        // SIGTERM first: ganesha unregisters and flushes its log.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.ganesha.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.ganesha.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.ganesha.kill();
        let _ = self.ganesha.wait();
        let _ = self.rpcbind.kill();
        let _ = self.rpcbind.wait();
    }
}
