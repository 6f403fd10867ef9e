//! The TFTP server: every node gets its own read-only namespace made of its
//! image's boot directory (read lazily through the image view) overlaid
//! with generated boot files, plus the iPXE ROMs for chainloading.
//!
//! - `bootfs`: who is asking (Pi serial/MAC prefix, client address) and how
//!   a path maps into the node's boot directory without ever leaving it.
//! - `flavour`: the image's initramfs flavour and the root arguments it
//!   accepts.
//! - `generated`: `cmdline.txt`, `boot.scr.uimg`, `pxelinux.cfg/*`,
//!   `boot.ipxe`, and kernel/initrd/device-tree discovery.
//! - `grub`: GRUB's network EFI image for ARM64 UEFI clients and the
//!   `grub.cfg` it reads.
//! - `uimage`: the legacy U-Boot image encoder for the boot script.
//! - `reader`: what a transfer reads its blocks from, with read-ahead.
//! - `engine`: the TFTP protocol itself (RFC 1350 with the blksize, tsize,
//!   timeout and windowsize options), lazyboot's own.
//!
//! How the engine is set up here:
//!
//! - blksize: the client's value, capped at the server interface's MTU
//!   minus 32 (1468 on a 1500-byte link, so no IP fragmentation, which
//!   U-Boot cannot reassemble); the OACK never exceeds what was asked.
//! - timeout: the client's value is echoed and starts the retransmission
//!   timeout (U-Boot aborts if the OACK differs); without one, 1 s. It
//!   doubles per retransmission up to [`MAX_RETRANSMIT_TIMEOUT`], and a
//!   transfer is abandoned after [`MAX_SEND_RETRIES`] without an answer.
//! - windowsize: the client's value up to [`WINDOW_SIZE_LIMIT`].
//! - tsize: answered with the file size.
//! - WRQ: refused with "access violation".
//! - An ERROR from the client ends its transfer at once: the Raspberry
//!   Pi's "tsize probe, Error 0 Early terminate, re-request" costs nothing
//!   more, and a re-request from the probe's own port starts a new transfer.
//! - Limits: `tftp_max_sessions` transfers at once and
//!   `tftp_max_sessions_per_client` from one address; a request over
//!   either is answered "server busy, retry" and forgotten.
//! - Opening a file runs in the transfer's own task, so a slow open (an
//!   image still streaming in) holds up no other client. Images are opened
//!   ahead of time at start (warm-up). While a first streaming pass runs, a
//!   request is answered from a tree settled for the node's boot dir
//!   (`Opening::settled_tree`) as soon as every pass has left that dir; it
//!   waits at most [`VIEW_OPEN_WAIT`] for that, then a boot script gets a
//!   wait-and-retry script and any other file an error to retry on.
//! - Malformed requests (truncated, no NUL, unknown opcode or mode) are
//!   dropped without an answer; options with invalid values (blksize
//!   outside 8..=65464, timeout 0 or over 255, windowsize 0) are ignored,
//!   as if not sent.
//! - `netascii` transfers are sent as raw bytes.
//! - Normal Pi traffic (probes, not-found lookups, early terminations) is
//!   logged at debug level.

pub(crate) mod bootfs;
pub(crate) mod engine;
pub(crate) mod flavour;
pub(crate) mod generated;
pub(crate) mod grub;
pub(crate) mod reader;
pub mod uimage;

use crate::config::GRUB_ARM64_EFI;
use crate::image::tree::Tree;
use crate::image::ImageView;
use crate::image::{Opening, Settled};
use crate::nodes::Node;
use crate::serve::ServeContext;
use bootfs::{parse_request, select_node, BootDir, NoNode};
use bytes::Bytes;
pub(crate) use engine::packet::Refusal;
use generated::Generated;
use reader::{FileRef, Recording};
pub(crate) use reader::{Label, TftpReader, Via};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;

/// Block size cap when the interface MTU cannot be read (1500 - 32).
pub(crate) const DEFAULT_BLOCK_SIZE_LIMIT: u16 = 1468;
/// Largest windowsize granted (RFC 7440); bounds memory per transfer.
pub(crate) const WINDOW_SIZE_LIMIT: u16 = 64;
/// Retransmission timeout when the client does not send one.
pub(crate) const RETRANSMIT_TIMEOUT: Duration = Duration::from_secs(1);
/// Retransmissions of one window before a transfer is given up.
pub(crate) const MAX_SEND_RETRIES: u32 = 10;
/// The retransmission timeout doubles up to this (or the client's own
/// timeout, if longer): about 40 s of silence before a transfer is given up.
pub(crate) const MAX_RETRANSMIT_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a request waits for its node's image view to open.
pub(crate) const VIEW_OPEN_WAIT: Duration = Duration::from_secs(10);
/// How long a wait-and-retry boot script sleeps before asking again.
const RETRY_AFTER_SECS: u32 = 2;
/// Where Debian's `ipxe` package puts its ROMs.
pub const IPXE_ROM_DIR: &str = "/usr/lib/ipxe";
/// iPXE builds served to every client, from [`IPXE_ROM_DIR`] when present.
pub(crate) const IPXE_ROMS: &[&str] = &[
    "undionly.kpxe",
    "undionly.kkpxe",
    "ipxe.efi",
    "snponly.efi",
    "ipxe.pxe",
];
/// Largest image `cmdline.txt` read.
const MAX_CMDLINE: u32 = 64 * 1024;
/// Bytes of a kernel read to recognise its architecture.
const KERNEL_HEAD: u32 = 64 * 1024;

/// Why the TFTP server stopped.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    /// The socket could not be bound.
    #[error("TFTP: cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Receiving on the TFTP port failed.
    #[error("TFTP server: {0}")]
    Server(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Serve TFTP on `ctx.server_ip:ctx.config.server.tftp_port` until an I/O
/// error on the listening socket.
pub async fn run(ctx: Arc<ServeContext>) -> Result<(), TftpError> {
    let addr = SocketAddr::from((ctx.server_ip, ctx.config.server.tftp_port));
    let socket = tokio::net::UdpSocket::bind(addr)
        .await
        .map_err(|source| TftpError::Bind { addr, source })?;
    let blksize = block_size_limit(&ctx.config.server.interface);
    if let Some(grub) = &ctx.config.server.grub_arm64_efi {
        if let Err(e) = std::fs::metadata(grub) {
            tracing::warn!("TFTP: {}", grub::missing_loader(grub, &e));
        }
    }
    warm_up(&ctx);
    let server = &ctx.config.server;
    let settings = engine::Settings {
        caps: engine::options::Caps {
            block_size: blksize,
            window_size: WINDOW_SIZE_LIMIT,
        },
        retransmit_timeout: RETRANSMIT_TIMEOUT,
        max_retransmit_timeout: MAX_RETRANSMIT_TIMEOUT,
        max_retries: MAX_SEND_RETRIES,
        max_sessions: server.tftp_max_sessions,
        max_sessions_per_client: server.tftp_max_sessions_per_client,
    };
    tracing::info!(
        "TFTP: serving on {addr} (blksize up to {blksize}, windowsize up to {WINDOW_SIZE_LIMIT}, \
         {} transfers at most, {} per client)",
        settings.max_sessions,
        settings.max_sessions_per_client
    );
    let files = Arc::new(Files {
        ctx: ctx.clone(),
        rt: Handle::current(),
        rom_dir: PathBuf::from(IPXE_ROM_DIR),
    });
    let engine = engine::Engine::new(files, settings, IpAddr::V4(ctx.server_ip));
    let socket = socket
        .into_std()
        .map_err(|source| TftpError::Bind { addr, source })?;
    ctx.mark_bound();
    on_own_thread(engine, socket).await
}

/// Run the transfers on a single-threaded runtime of their own. A lock-step
/// transfer is one ACK in, one DATA out: on the shared multi-threaded
/// runtime the task woken by an ACK often runs on another worker than the
/// one that polled the socket, a thread hand-off per block. Opening files
/// and reading the image still run on the shared runtime (`Files::rt`), so
/// nothing slow runs on this thread.
async fn on_own_thread(
    engine: Arc<engine::Engine<Files>>,
    socket: std::net::UdpSocket,
) -> Result<(), TftpError> {
    let (done, ended) = tokio::sync::oneshot::channel();
    // Dropped with this future (a server being stopped): the thread stops
    // serving and its runtime drops every transfer.
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("lazyboot-tftp".into())
        .spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| TftpError::Server(Box::new(e)))
                .and_then(|rt| {
                    rt.block_on(async {
                        let socket = tokio::net::UdpSocket::from_std(socket)
                            .map_err(|e| TftpError::Server(Box::new(e)))?;
                        tokio::select! {
                            served = engine.serve(socket) => {
                                served.map_err(|e| TftpError::Server(Box::new(e)))
                            }
                            _ = stopped => Ok(()),
                        }
                    })
                });
            let _ = done.send(served);
        })
        .map_err(|e| TftpError::Server(Box::new(e)))?;
    ended.await.unwrap_or_else(|_| {
        Err(TftpError::Server(
            "the TFTP thread ended without a word".into(),
        ))
    })
}

/// Largest blksize that fits the MTU of `interface` without IP
/// fragmentation: MTU - 20 (IPv4) - 8 (UDP) - 4 (TFTP DATA header).
pub(crate) fn block_size_limit(interface: &str) -> u16 {
    let path = Path::new("/sys/class/net").join(interface).join("mtu");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map(mtu_to_block_size)
        .unwrap_or(DEFAULT_BLOCK_SIZE_LIMIT)
}

fn mtu_to_block_size(mtu: u32) -> u16 {
    mtu.saturating_sub(32).clamp(512, 65464) as u16
}

/// Open the image view of every configured node in the background, so a
/// node's first request does not wait for its image to be indexed.
fn warm_up(ctx: &Arc<ServeContext>) {
    for node in ctx.inventory.all() {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match ctx.images.view_for(&node).await {
                Ok(_) => tracing::debug!("TFTP: image of {} ready", node.name),
                Err(e) => tracing::warn!("TFTP: image of {}: {e}", node.name),
            }
        });
    }
}

/// The engine's file lookup: a node's boot files, generated files and the
/// iPXE ROMs.
pub(crate) struct Files {
    ctx: Arc<ServeContext>,
    rt: Handle,
    rom_dir: PathBuf,
}

impl engine::Open for Files {
    fn open(
        &self,
        client: SocketAddr,
        path: &str,
    ) -> impl Future<Output = Result<TftpReader, Refusal>> + Send {
        self.lookup(client, path.to_string())
    }
}

fn not_found() -> Refusal {
    Refusal::not_found()
}

impl Files {
    /// The lookup of [`run`], for other servers of the same files (HTTP boot).
    pub(crate) fn new(ctx: Arc<ServeContext>) -> Files {
        Files {
            ctx,
            rt: Handle::current(),
            rom_dir: PathBuf::from(IPXE_ROM_DIR),
        }
    }

    /// A boot loader by its name (served to every client), if `name` is
    /// one and it is installed: an iPXE ROM, or GRUB for ARM64 UEFI.
    pub(crate) async fn rom(&self, client: SocketAddr, via: Via, name: &str) -> Option<TftpReader> {
        let (path, what) = if name == GRUB_ARM64_EFI {
            (
                self.ctx.config.server.grub_arm64_efi().to_path_buf(),
                "GRUB",
            )
        } else if IPXE_ROMS.contains(&name) {
            (self.rom_dir.join(name), "iPXE ROM")
        } else {
            return None;
        };
        let data = match tokio::fs::read(&path).await {
            Ok(data) => data,
            Err(e) if what == "GRUB" => {
                tracing::error!("{via}: {client}: {}", grub::missing_loader(&path, &e));
                return None;
            }
            Err(_) => return None,
        };
        tracing::debug!("{via}: {client}: {name} ({what}, {} bytes)", data.len());
        let label = Label {
            client,
            via,
            node: "-".into(),
            path: name.into(),
        };
        Some(TftpReader::memory(label, Bytes::from(data)))
    }

    async fn lookup(&self, client: SocketAddr, raw: String) -> Result<TftpReader, Refusal> {
        let opened = std::time::Instant::now();
        let ip = match client.ip() {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => v6.to_ipv4_mapped().ok_or_else(not_found)?,
        };
        let req = parse_request(&raw);
        if let Some(name) = req.full.as_deref() {
            if let Some(rom) = self.rom(client, Via::Tftp, name).await {
                return Ok(rom);
            }
        }
        let (node, path) = match select_node(&self.ctx.inventory, ip, &req) {
            Ok(found) => found,
            Err(NoNode::Conflict {
                prefix_node,
                ip_node,
            }) => {
                tracing::warn!(
                    "TFTP: {client} asked for {raw:?} with the prefix of node {prefix_node}, \
                     but its address belongs to node {ip_node}: refused"
                );
                return Err(not_found());
            }
            Err(why) => {
                tracing::debug!("TFTP: {client}: {raw:?} not found ({why:?})");
                return Err(not_found());
            }
        };
        let label = Label {
            client,
            via: Via::Tftp,
            node: node.name.clone(),
            path: path.clone(),
        };
        self.open_node(&node, path, label, opened).await
    }

    /// File `path` (normalised) of `node`'s namespace, for the transfer
    /// `label` (whose path names it in the boot profile) asked for at
    /// `opened`.
    pub(crate) async fn open_node(
        &self,
        node: &Arc<Node>,
        path: String,
        label: Label,
        opened: std::time::Instant,
    ) -> Result<TftpReader, Refusal> {
        let (client, via) = (label.client, label.via);
        let name = label.path.clone();
        // Every transfer's timeline starts at the request, and the time
        // spent before its first byte (the image still streaming in) is
        // counted as waiting on the registry.
        let record = |generated| {
            waited(
                Recording::new(
                    self.ctx.recorder.clone(),
                    node.kind.as_str(),
                    &node.image,
                    generated,
                ),
                opened,
            )
        };
        let generated = generated::generated_for(node.kind, &node.mac.pxelinux_name(), &path);
        let img = match self.image(node).await {
            Ok(Some(v)) => v,
            Ok(None) => {
                // A first boot of a large image: the index pass can take
                // minutes, and boot ROMs do not retry a failed TFTP load.
                // Their boot scripts can: hand them one that waits and asks again.
                if let Some(script) = generated.and_then(|g| {
                    generated::retry_later(g, node.kind, &node.name, &path, RETRY_AFTER_SECS)
                }) {
                    tracing::info!(
                        "{via}: {client} ({}): {path}: image still opening, sent a wait-and-retry script",
                        node.name
                    );
                    return Ok(
                        TftpReader::memory(label, Bytes::from(script)).recorded(record(true))
                    );
                }
                record(false).failed(&node.name, &name);
                return Err(Refusal::msg(format!(
                    "lazyboot: image of {} is loading, retry",
                    node.name
                )));
            }
            Err(e) => {
                record(false).failed(&node.name, &name);
                return Err(e);
            }
        };
        if let Some(g) = generated {
            return match self.generate(node, &img, g).await? {
                Made::Pending => {
                    let script =
                        generated::retry_later(g, node.kind, &node.name, &path, RETRY_AFTER_SECS);
                    if let Some(script) = script {
                        tracing::info!(
                            "{via}: {client} ({}): {path}: boot files not streamed yet, sent a wait-and-retry script",
                            node.name
                        );
                        return Ok(
                            TftpReader::memory(label, Bytes::from(script)).recorded(record(true))
                        );
                    }
                    record(true).failed(&node.name, &name);
                    Err(Refusal::msg(format!(
                        "lazyboot: image of {} is loading, retry",
                        node.name
                    )))
                }
                Made::Bytes(data) => {
                    tracing::debug!(
                        "{via}: {client} ({}): {path} (generated, {} bytes)",
                        node.name,
                        data.len()
                    );
                    Ok(TftpReader::memory(label, Bytes::from(data)).recorded(record(true)))
                }
                Made::NoKernel => {
                    let why = match &node.kernel {
                        Some(k) => format!(
                            "kernel {k:?} (the node's `kernel`) is not in {}",
                            node.image
                        ),
                        None => format!("no kernel found in {} of {}", node.boot_dir, node.image),
                    };
                    // The failed transfer begins the node's timeline if
                    // nothing did yet; the error goes into it.
                    record(true).failed(&node.name, &name);
                    self.ctx
                        .recorder
                        .note_error(&node.name, &format!("cannot make {path}: {why}"));
                    tracing::error!("{via}: {client} ({}): cannot make {path}: {why}", node.name);
                    Err(Refusal::msg(format!("lazyboot: {why}")))
                }
            };
        }
        let found = if path.starts_with(generated::MODULES_ALIAS) {
            generated::modules_file(img.tree(), &path)
        } else {
            BootDir::open(img.tree(), &node.boot_dir).and_then(|b| b.file(&path))
        };
        let Some(f) = found else {
            record(false).failed(&node.name, &name);
            tracing::debug!("{via}: {client} ({}): {path:?} not found", node.name);
            return Err(not_found());
        };
        tracing::debug!(
            "{via}: {client} ({}): {path} ({} bytes from {}/{})",
            node.name,
            f.size,
            node.boot_dir.trim_end_matches('/'),
            f.path
        );
        let Some(file) = img.file(f.ino) else {
            return Err(not_found());
        };
        Ok(TftpReader::image(label, file, f.size, self.rt.clone()).recorded(record(false)))
    }

    /// The node's image as far as its boot directory goes: the final view,
    /// or (while a first streaming pass runs, unless `verified_only`) a tree
    /// settled for the boot directory. `None` if that takes longer than [`VIEW_OPEN_WAIT`]: the
    /// client must retry.
    async fn image(&self, node: &Arc<Node>) -> Result<Option<Img>, Refusal> {
        let (ctx, n) = (self.ctx.clone(), node.clone());
        let task = self.rt.spawn(async move {
            let opening = ctx.opening_for(&n).await?;
            let settled = if ctx.config.server.verified_only {
                opening.final_view().await.map(Settled::Final)
            } else {
                opening.settled_tree(&n.boot_dir).await
            };
            let settled = settled.map_err(|source| crate::serve::ImageOpenError::View {
                image: n.image.clone(),
                source,
            })?;
            Ok::<_, crate::serve::ImageOpenError>(match settled {
                Settled::Final(view) => Img::Final(view),
                Settled::Partial(tree) => Img::Passing(opening, tree),
            })
        });
        match tokio::time::timeout(VIEW_OPEN_WAIT, task).await {
            Ok(Ok(Ok(img))) => Ok(Some(img)),
            Ok(Ok(Err(e))) => {
                tracing::warn!("TFTP: image of node {}: {e}", node.name);
                self.ctx.recorder.note_error(&node.name, &e.to_string());
                Err(Refusal::msg(format!(
                    "lazyboot: image of {} unavailable",
                    node.name
                )))
            }
            Ok(Err(e)) => {
                tracing::error!("TFTP: opening the image of node {}: {e}", node.name);
                Err(Refusal::msg("lazyboot: internal error"))
            }
            Err(_) => {
                tracing::info!(
                    "TFTP: the boot files of node {} have not streamed in yet; the client must retry",
                    node.name
                );
                Ok(None)
            }
        }
    }

    /// A generated file, or why there is none yet or at all.
    async fn generate(&self, node: &Node, img: &Img, what: Generated) -> Result<Made, Refusal> {
        let server = &self.ctx.config.server;
        let export = ServeContext::export_path(node);
        let boot = BootDir::open(img.tree(), &node.boot_dir);
        let flavour = if what == Generated::Cmdline || node.root_args.is_some() {
            flavour::Flavour::RaspberryPiOs
        } else {
            match tokio::time::timeout(VIEW_OPEN_WAIT, img.flavour()).await {
                Ok(f) => f,
                Err(_) => return Ok(Made::Pending),
            }
        };
        let root = flavour::root_args(
            flavour,
            self.ctx.server_ip,
            &export,
            server.nfs_port,
            node.root_args.as_deref(),
        );
        if what == Generated::Cmdline {
            let original = match boot.and_then(|b| b.file("cmdline.txt")) {
                Some(f) => {
                    let len = f.size.min(MAX_CMDLINE as u64) as u32;
                    let bytes = read(img, node, f.ino, len).await?;
                    Some(String::from_utf8_lossy(&bytes).into_owned())
                }
                None => None,
            };
            let text = generated::rewrite_cmdline(original.as_deref(), &root, &node.kernel_args);
            return Ok(Made::Bytes(text.into_bytes()));
        }
        let mut files = match &boot {
            Some(b) => generated::discover(b, node.kind, self.ctx.inventory.pi_model_of(node)),
            None => generated::BootFiles::default(),
        };
        if files.kernel.is_none() {
            if let Some((k, i)) = generated::discover_in_modules(img.tree()) {
                files.kernel = Some(k);
                files.initrd = i;
            }
        }
        if let Some(k) = &node.kernel {
            files.kernel = generated::configured_file(img.tree(), &node.boot_dir, k);
        }
        if let Some(i) = &node.initrd {
            files.initrd = generated::configured_file(img.tree(), &node.boot_dir, i);
        }
        if files.kernel.is_none() && matches!(img, Img::Passing(..)) {
            // It may be in a part of the image that has not streamed in:
            // only the end of the pass can tell it is missing.
            return Ok(Made::Pending);
        }
        let Some(kernel) = files.kernel.clone() else {
            return Ok(Made::NoKernel);
        };
        tracing::info!(
            "TFTP: node {}: kernel {}, initrd {}, {} root arguments",
            node.name,
            kernel.path,
            files.initrd.as_ref().map_or("none", |f| f.path.as_str()),
            if node.root_args.is_some() {
                "the node's own"
            } else {
                flavour.as_str()
            }
        );
        let args = generated::boot_args(&root, &node.kernel_args);
        let text = match what {
            Generated::Cmdline => unreachable!("handled above"),
            Generated::BootScript => {
                let head = read(img, node, kernel.ino, KERNEL_HEAD).await?;
                let arch = generated::kernel_arch(&head);
                let compressed = generated::kernel_is_compressed(&head);
                let script = generated::uboot_script(&node.name, &files, &args, arch, compressed);
                // The kernel's mtime: the same image gives the same bytes.
                let stamp = kernel.mtime.clamp(0, u32::MAX as i64) as u32;
                let arch = generated::script_arch(node.kind, arch);
                return Ok(script.map_or(Made::NoKernel, |s| {
                    Made::Bytes(generated::uboot_script_image(&s, arch, stamp))
                }));
            }
            Generated::Pxelinux => generated::pxelinux_cfg(&node.name, &files, &args),
            Generated::Grub => grub::grub_cfg(&node.name, &files, &args),
            Generated::Ipxe => {
                let base = generated::boot_base(
                    server.boot_over,
                    self.ctx.server_ip,
                    server.http_port,
                    &node.name,
                );
                generated::ipxe_script(&node.name, &base, &files, &args)
            }
        };
        Ok(text.map_or(Made::NoKernel, |t| Made::Bytes(t.into_bytes())))
    }
}

/// A request waited for the image from `since` (a first streaming pass
/// had not brought its file yet, or a wait-and-retry script was all there
/// was to send): its transfer in the profile starts there, and the time is
/// counted as waiting on the registry, so no gap is left unexplained.
fn waited(mut record: Recording, since: std::time::Instant) -> Recording {
    record.trace.lock().wait += since.elapsed();
    record.started = since;
    record
}

/// What [`Files::generate`] made.
enum Made {
    Bytes(Vec<u8>),
    /// The file needs a kernel and the image has none (that TFTP may serve).
    NoKernel,
    /// What it depends on has not streamed in within [`VIEW_OPEN_WAIT`].
    Pending,
}

/// A node's image as TFTP sees it (see [`Files::image`]).
enum Img {
    Final(Arc<ImageView>),
    /// A first streaming pass runs; the tree is final for the boot dir.
    Passing(Arc<Opening>, Arc<Tree>),
}

impl Img {
    fn tree(&self) -> &Tree {
        match self {
            Img::Final(v) => v.tree(),
            Img::Passing(_, t) => t,
        }
    }

    fn file(&self, ino: u64) -> Option<FileRef> {
        match self {
            Img::Final(view) => Some(FileRef::View {
                view: view.clone(),
                ino,
            }),
            Img::Passing(opening, tree) => Some(FileRef::Passing {
                opening: opening.clone(),
                node: Arc::new(tree.get(ino)?.clone()),
            }),
        }
    }

    /// The image's initramfs flavour. While the image streams, it is told
    /// by the markers under `etc/` once every pass has left `etc` (small,
    /// and early in a sorted root): the ones under `usr/` come too late.
    async fn flavour(&self) -> flavour::Flavour {
        let on = |tree: &Tree, only_etc: bool| {
            flavour::detect_flavour(|p| {
                (!only_etc || p.starts_with("etc/")) && tree.resolve(p).is_some()
            })
        };
        match self {
            Img::Final(v) => on(v.tree(), false),
            Img::Passing(opening, _) => match opening.settled_tree("etc").await {
                Ok(Settled::Final(view)) => on(view.tree(), false),
                Ok(Settled::Partial(tree)) => on(&tree, true),
                Err(_) => flavour::Flavour::Kernel,
            },
        }
    }
}

async fn read(img: &Img, node: &Node, ino: u64, len: u32) -> Result<Bytes, Refusal> {
    let Some(file) = img.file(ino) else {
        return Err(not_found());
    };
    file.read(0, len).await.map_err(|e| {
        tracing::warn!("TFTP: reading the image of node {}: {e}", node.name);
        Refusal::msg(format!(
            "lazyboot: reading the image of {} failed",
            node.name
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::nodes::Inventory;
    use bootfs::ParsedRequest;
    use std::net::Ipv4Addr;

    const CONFIG: &str = r#"
[server]
interface = "lb0"
address = "10.9.0.1"
[dhcp]
mode = "off"
[[nodes]]
name = "pi1"
mac = "dc:a6:32:01:02:03"
serial = "100000008b07bcc6"
kind = "raspberrypi"
image = "img:pi"
ip = "10.9.0.11"
[[nodes]]
name = "mars1"
mac = "6c:cf:39:00:00:01"
kind = "uboot"
image = "img:rv"
ip = "10.9.0.12"
"#;

    fn select(inv: &Inventory, ip: [u8; 4], path: &str) -> Result<(String, String), NoNode> {
        let req: ParsedRequest = parse_request(path);
        select_node(inv, Ipv4Addr::from(ip), &req).map(|(n, p)| (n.name.clone(), p))
    }

    #[test]
    fn requests_map_to_nodes() {
        let inv = Inventory::from_config(&Config::parse(CONFIG, "t").unwrap());
        let ok = |n: &str, p: &str| Ok((n.to_string(), p.to_string()));
        // Serial and MAC prefixes, from an unknown or the node's own address.
        assert_eq!(
            select(&inv, [10, 9, 0, 99], "8b07bcc6/config.txt"),
            ok("pi1", "config.txt")
        );
        assert_eq!(
            select(&inv, [10, 9, 0, 11], "8B07BCC6/config.txt"),
            ok("pi1", "config.txt")
        );
        assert_eq!(
            select(&inv, [10, 9, 0, 99], "dc-a6-32-01-02-03/start4.elf"),
            ok("pi1", "start4.elf")
        );
        // Unprefixed: by address.
        assert_eq!(
            select(&inv, [10, 9, 0, 11], "/config.txt"),
            ok("pi1", "config.txt")
        );
        assert_eq!(
            select(&inv, [10, 9, 0, 12], "boot.scr.uimg"),
            ok("mars1", "boot.scr.uimg")
        );
        // An unknown serial is just a directory name of the address's node.
        assert_eq!(
            select(&inv, [10, 9, 0, 12], "deadbeef/config.txt"),
            ok("mars1", "deadbeef/config.txt")
        );
        // Unknown clients, conflicts and escapes find nothing.
        assert_eq!(
            select(&inv, [10, 9, 0, 99], "config.txt"),
            Err(NoNode::Unknown)
        );
        assert_eq!(
            select(&inv, [10, 9, 0, 99], "deadbeef/config.txt"),
            Err(NoNode::Unknown)
        );
        assert_eq!(
            select(&inv, [10, 9, 0, 12], "8b07bcc6/config.txt"),
            Err(NoNode::Conflict {
                prefix_node: "pi1".into(),
                ip_node: "mars1".into()
            })
        );
        assert_eq!(
            select(&inv, [10, 9, 0, 11], "../../etc/shadow"),
            Err(NoNode::BadPath)
        );
        assert_eq!(
            select(&inv, [10, 9, 0, 11], "8b07bcc6/../../etc/shadow"),
            Err(NoNode::BadPath)
        );
    }

    #[test]
    fn block_size_follows_the_mtu() {
        assert_eq!(mtu_to_block_size(1500), 1468);
        assert_eq!(mtu_to_block_size(9000), 8968);
        assert_eq!(mtu_to_block_size(65536), 65464);
        assert_eq!(mtu_to_block_size(100), 512);
        assert_eq!(
            block_size_limit("no-such-interface-x"),
            DEFAULT_BLOCK_SIZE_LIMIT
        );
    }

    #[test]
    fn run_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let cfg = Config::parse(CONFIG, "t").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(crate::cache::ChunkCache::open(dir.path(), 1 << 20).unwrap());
        let ctx = ServeContext::new(cfg, cache);
        let fut = run(ctx);
        assert_send(&fut);
    }
}
