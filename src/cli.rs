//! The `lazyboot` command line (`src/main.rs` only calls [`main`]).

use crate::cache::ChunkCache;
use crate::config::{Config, DhcpMode, PortmapperMode};
use crate::fuse::{cleanup_stale_mount, mount_config, LazyFs};
use crate::image::Opening;
use crate::image::ViewOptions;
use crate::image::{probe_format, IndexError};
use crate::layer::index::LayerIndex;
use crate::platform::Platform;
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::registry::{RegistryOptions, Source};
use crate::serve::ServeContext;
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

mod fleet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "lazyboot",
    version,
    about = "Network-boot machines straight from OCI image references"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Cache directory shared by every mount (default /var/cache/lazyboot
    /// as root; `serve`: server.cache_dir).
    #[arg(long, global = true, env = "LAZYBOOT_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Cache size limit (e.g. 500M, 20G; default 20G, or `serve`'s
    /// server.cache_size); cold chunks are evicted beyond it.
    #[arg(long, global = true, value_parser = parse_size)]
    cache_size: Option<u64>,
    /// Platform to pick from a multi-platform image (os/arch[/variant]);
    /// default: this host's (`serve`: each node kind's).
    #[arg(long, global = true)]
    platform: Option<Platform>,
    /// Registry host[:port] to reach over plain HTTP (loopback registries always are).
    #[arg(long = "insecure-registry", global = true)]
    insecure_registries: Vec<String>,
    /// Seconds before a read that cannot be satisfied fails with EIO (for
    /// `serve`: before a node request waiting on the registry or a
    /// streaming pass fails).
    #[arg(long, global = true, default_value_t = 60)]
    read_timeout: u64,
    /// Seconds a registry request may take to answer, and a body to send
    /// its next bytes, before the attempt counts as failed.
    #[arg(long, global = true, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    registry_timeout: u64,
    /// Further attempts after a transient registry failure (connection
    /// trouble, a timeout, 429 or 5xx), with backoff or the registry's
    /// Retry-After in between.
    #[arg(long, global = true, default_value_t = 4)]
    registry_retries: u32,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount an image read-only at MOUNTPOINT and serve it until interrupted.
    Mount {
        /// Image reference: registry/repo:tag, registry/repo@sha256:..., a
        /// Docker Hub short name, or oci:DIR[:TAG].
        image: ImageRef,
        /// Empty directory to mount the image on.
        mountpoint: PathBuf,
        /// Do not fetch the rest of the image in the background.
        #[arg(long)]
        no_background_fill: bool,
        /// Mount only once every layer is indexed and checked against its
        /// digest. By default a layer that needs a streaming pass is served
        /// while the pass runs: files the stream has passed are readable at
        /// once, before the layer digest can be checked (a mismatch ends the
        /// mount with an error; nothing unchecked is ever cached).
        #[arg(long)]
        verified_only: bool,
    },
    /// Fetch the whole image into the cache.
    Pull {
        /// Image reference (as for `mount`).
        image: ImageRef,
    },
    /// Build and cache the layer indexes.
    Index {
        /// Image reference (as for `mount`).
        image: ImageRef,
        /// Also publish the indexes (and the prefetch plan, if one was
        /// learned) to the registry as an OCI artifact referring to the image,
        /// so other lazyboot servers start without a streaming pass.
        #[arg(long)]
        push: bool,
    },
    /// Boot nodes: DHCP, TFTP and NFS from the images named in the config.
    Serve {
        /// The configuration file (TOML; see README's config reference).
        #[arg(long, default_value = "/etc/lazyboot/lazyboot.toml")]
        config: PathBuf,
    },
    /// Show layers, formats, sizes, and index and cache state; exits
    /// non-zero if a layer cannot be read.
    Inspect {
        /// Image reference (as for `mount`).
        image: ImageRef,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a node's recorded boot: where the seconds went, registry vs cache bytes.
    Profile(ProfileArgs),
    /// The nodes of a running server: list them, show one, assign one an
    /// image or a group at run time.
    Nodes {
        #[command(subcommand)]
        cmd: Option<fleet::NodesCmd>,
        #[command(flatten)]
        server: fleet::Server,
    },
    /// The groups of a running server: list them, or change one's swap
    /// policy at run time.
    Groups {
        #[command(subcommand)]
        cmd: Option<fleet::GroupsCmd>,
        #[command(flatten)]
        server: fleet::Server,
    },
    /// Swap a node (`NODE IMAGE`) or a group (`--group G IMAGE`) to a new
    /// image on a running server: the image is prepared, then each node is
    /// rebooted with its reboot command and must report booted on it, or it
    /// is rolled back and the swap stops. Shows progress until it ends.
    Swap {
        #[command(flatten)]
        args: fleet::SwapArgs,
        #[command(flatten)]
        server: fleet::Server,
    },
    /// The swaps of a running server, or one of them.
    Swaps {
        id: Option<u64>,
        #[command(flatten)]
        server: fleet::Server,
    },
    /// Check the cache and serve's state (NFS key, leases, boot profiles,
    /// node work areas) after a crash or a disk fault. Exit status: 0
    /// clean, 1 problems repaired, 4 problems left.
    Fsck {
        /// The serve configuration naming the cache and state directories.
        #[arg(long, default_value = "/etc/lazyboot/lazyboot.toml")]
        config: PathBuf,
        /// Put right what can be: remove damaged cache files (they are
        /// fetched again) and leftovers of unfinished writes, move
        /// unreadable files aside. Needs lazyboot stopped.
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ProfileFormat {
    Text,
    Json,
    Html,
    Trace,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let m = match s[i..]
                .to_ascii_uppercase()
                .trim_end_matches("IB")
                .trim_end_matches('B')
            {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1u64 << 40,
                other => return Err(format!("unknown size unit {other:?} in {s:?}")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a size like 512M or 20G"))
}

impl Common {
    fn registry(&self) -> RegistryOptions {
        let mut r = RegistryOptions::default();
        if let Some(p) = &self.platform {
            r.platform = p.clone();
        }
        r.insecure_registries = self.insecure_registries.clone();
        r.timeout = Duration::from_secs(self.registry_timeout);
        r.retries = self.registry_retries;
        r
    }

    fn cache_dir(&self) -> PathBuf {
        if let Some(d) = &self.cache_dir {
            return d.clone();
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return PathBuf::from("/var/cache/lazyboot");
        }
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from("/tmp"))
            .join("lazyboot")
    }

    fn view(&self) -> ViewOptions {
        ViewOptions {
            cache_dir: self.cache_dir(),
            cache_size: self.cache_size.unwrap_or(DEFAULT_CACHE_SIZE),
            registry: self.registry(),
            read_timeout: Duration::from_secs(self.read_timeout),
        }
    }
}

/// `--cache-size` when neither it nor a config file says.
const DEFAULT_CACHE_SIZE: u64 = 20 << 30;

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Run the command line: parse the arguments, run the command, report.
pub fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "lazyboot=info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, and never with NO_COLOR.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.cmd {
        Cmd::Mount {
            image,
            mountpoint,
            no_background_fill,
            verified_only,
        } => mount(
            &rt,
            &cli.common,
            &image,
            &mountpoint,
            !no_background_fill,
            verified_only,
        ),
        Cmd::Pull { image } => rt.block_on(pull(&cli.common, &image)),
        Cmd::Index { image, push } => rt.block_on(index(&cli.common, &image, push)),
        Cmd::Inspect { image, json } => rt.block_on(inspect(&cli.common, &image, json)),
        Cmd::Serve { config } => rt.block_on(serve(&cli.common, &config)),
        Cmd::Profile(args) => profile(args),
        Cmd::Fsck { config, repair } => fsck(&cli.common, &config, repair),
        Cmd::Nodes { cmd, server } => {
            rt.block_on(fleet::nodes(&server, cmd.unwrap_or(fleet::NodesCmd::List)))
        }
        Cmd::Groups { cmd, server } => rt.block_on(fleet::groups(
            &server,
            cmd.unwrap_or(fleet::GroupsCmd::List),
        )),
        Cmd::Swap { args, server } => rt.block_on(fleet::swap(&server, args)),
        Cmd::Swaps { id, server } => rt.block_on(fleet::swaps(&server, id)),
    }
}

/// Every TFTP transfer has a socket and every NFS client a connection: a
/// fleet booting at once needs more descriptors than the usual soft limit
/// of 1024, so take what the hard limit allows.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let from = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::debug!("open file limit raised from {from} to {}", lim.rlim_max);
            }
        }
    }
}

fn fsck(common: &Common, config_path: &Path, repair: bool) -> Result<()> {
    let config = Config::load(config_path)?;
    let cache_dir = common.cache_dir.clone().unwrap_or(config.server.cache_dir);
    let status = crate::fsck::run(&cache_dir, &config.server.state_dir, repair)?;
    if status != crate::fsck::CLEAN {
        std::process::exit(status);
    }
    Ok(())
}

#[derive(Args)]
struct ProfileArgs {
    /// The node whose boot to show (not with --compare).
    #[arg(required_unless_present = "compare")]
    node: Option<String>,
    /// Boot number (default: the latest).
    #[arg(long)]
    boot: Option<u64>,
    /// Output format: a text report, JSON, a self-contained HTML page, or
    /// a Chrome trace.
    #[arg(long, value_enum, default_value_t = ProfileFormat::Text)]
    format: ProfileFormat,
    /// Two boots side by side, each NODE or NODE:BOOT (e.g. n1:1 n1:2).
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with_all = ["node", "boot"])]
    compare: Option<Vec<String>>,
    /// Where `lazyboot serve` keeps its state (default: from --config).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The serve configuration to read `server.state_dir` from.
    #[arg(long, default_value = "/etc/lazyboot/lazyboot.toml")]
    config: PathBuf,
    /// Write to FILE instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

fn profile(a: ProfileArgs) -> Result<()> {
    use crate::profile::{html, report, ProfileStore};
    let state_dir = match a.state_dir {
        Some(d) => d,
        None => {
            Config::load(&a.config)
                .with_context(|| {
                    "reading the serve configuration for server.state_dir (or pass --state-dir)"
                })?
                .server
                .state_dir
        }
    };
    let store = ProfileStore::new(&state_dir);
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100usize)
        .clamp(60, 240);
    let text = if let Some(pair) = a.compare {
        let load = |spec: &str| -> Result<crate::profile::BootProfile> {
            let (node, boot) = match spec.rsplit_once(':') {
                Some((n, b)) => (
                    n,
                    Some(
                        b.parse::<u64>()
                            .with_context(|| format!("{spec:?}: boot must be a number"))?,
                    ),
                ),
                None => (spec, None),
            };
            Ok(store.load(node, boot)?)
        };
        let (x, y) = (load(&pair[0])?, load(&pair[1])?);
        match a.format {
            ProfileFormat::Text => report::render_compare(&x, &y),
            ProfileFormat::Json => serde_json::to_string_pretty(&serde_json::json!({
                "a": { "profile": &x, "summary": x.summary() },
                "b": { "profile": &y, "summary": y.summary() },
            }))?,
            other => bail!("--compare shows text or json, not {other:?}"),
        }
    } else {
        let node = a.node.context("name a node (or use --compare A B)")?;
        let p = store.load(&node, a.boot)?;
        match a.format {
            ProfileFormat::Text => report::render_text(&p, width),
            ProfileFormat::Json => serde_json::to_string_pretty(
                &serde_json::json!({ "profile": &p, "summary": p.summary() }),
            )?,
            ProfileFormat::Html => html::render_html(&p),
            ProfileFormat::Trace => html::render_trace(&p),
        }
    };
    match a.output {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            if !text.ends_with('\n') {
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(())
}

fn mount(
    rt: &tokio::runtime::Runtime,
    common: &Common,
    image: &ImageRef,
    mountpoint: &std::path::Path,
    background_fill: bool,
    verified_only: bool,
) -> Result<()> {
    if cleanup_stale_mount(mountpoint) {
        eprintln!("cleaned up a stale mount at {}", mountpoint.display());
    }
    if !mountpoint.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    let started = Instant::now();
    let opts = common.view();
    let opening = rt
        .block_on(async {
            let cache = Arc::new(ChunkCache::open(&opts.cache_dir, opts.cache_size)?);
            let (source, resolved) = Source::open(image, &opts.registry).await?;
            let opening = Opening::start(
                resolved,
                source,
                cache,
                opts.read_timeout,
                &Progress::stderr(),
            )
            .await;
            if verified_only {
                opening.finished().await?;
            } else {
                opening.serveable().await?;
            }
            Ok::<_, crate::image::ViewError>(opening)
        })
        .with_context(|| format!("opening {image}"))?;
    // Opening the image took a while: a run killed meanwhile may have left
    // a dead mount here too.
    cleanup_stale_mount(mountpoint);
    let fs = LazyFs::new(opening.clone(), rt.handle().clone());
    let session = fuser::spawn_mount(fs, mountpoint, &mount_config(&image.to_string()))
        .with_context(|| format!("mounting at {}", mountpoint.display()))?;
    if let Err(e) = crate::fuse::raise_readahead(mountpoint, crate::fuse::READAHEAD_KB) {
        tracing::warn!("could not raise readahead (sequential reads will be slower): {e}");
    }
    let what = match opening.outcome() {
        Some(Ok(view)) => {
            let stats = view.stats();
            format!("{} inodes, {} layers", stats.inodes, stats.layers)
        }
        _ => format!(
            "{} layers, indexing (files are readable as the stream passes them)",
            opening.image.layers.len()
        ),
    };
    println!(
        "mounted {} ({}) at {}: {what}, ready in {:.2}s, {} fetched",
        image,
        opening.image.manifest_digest,
        mountpoint.display(),
        started.elapsed().as_secs_f64(),
        human(opening.source().stats().bytes)
    );
    let failed = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let indexed = async {
            let indexing = opening.outcome().is_none();
            let view = opening.finished().await?;
            if indexing {
                eprintln!(
                    "indexed {}: {} inodes, {:.1}s after start; every layer matched its digest",
                    image,
                    view.stats().inodes,
                    started.elapsed().as_secs_f64()
                );
            }
            if background_fill {
                let v = view.clone();
                tokio::spawn(async move {
                    match v.fill_all(true, &Progress::hidden()).await {
                        Ok(()) => {
                            tracing::info!("background fill complete: the image is fully cached")
                        }
                        Err(e) => tracing::warn!("background fill stopped: {e}"),
                    }
                });
            }
            // Serve until a signal.
            std::future::pending::<Result<(), crate::image::ViewError>>().await
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => Ok(None),
            _ = term.recv() => Ok(None),
            r = indexed => Ok::<_, std::io::Error>(r.err()),
        }
    })?;
    if failed.is_some() {
        // Requests waiting on the failed pass get their EIO first.
        std::thread::sleep(Duration::from_millis(500));
    }
    session.umount_and_join().context("unmounting")?;
    if let Some(e) = failed {
        return Err(e)
            .with_context(|| format!("opening {image}; unmounted {}", mountpoint.display()));
    }
    let stats = opening.source().stats();
    eprintln!(
        "unmounted {}; {} fetched from the registry (stats: requests={} bytes={})",
        mountpoint.display(),
        human(stats.bytes),
        stats.requests,
        stats.bytes
    );
    Ok(())
}

async fn pull(common: &Common, image: &ImageRef) -> Result<()> {
    let started = Instant::now();
    let progress = Progress::stderr();
    let view = crate::image::open(image, &common.view(), &progress)
        .await
        .with_context(|| format!("opening {image}"))?;
    view.fill_all(false, &progress).await.context("pulling")?;
    let stats = view.fetch_stats();
    println!(
        "pulled {} ({}) in {:.1}s: {} fetched in {} requests",
        image,
        view.manifest_digest(),
        started.elapsed().as_secs_f64(),
        human(stats.bytes),
        stats.requests
    );
    Ok(())
}

async fn index(common: &Common, image: &ImageRef, push: bool) -> Result<()> {
    if push && matches!(image, ImageRef::Layout { .. }) {
        bail!("--push publishes to a registry; {image} is an OCI layout on disk");
    }
    let started = Instant::now();
    let progress = Progress::stderr();
    let view = crate::image::open(image, &common.view(), &progress)
        .await
        .with_context(|| format!("indexing {image}"))?;
    let stats = view.stats();
    println!(
        "indexed {} ({}): {} layers, {} entries, {} inodes in {:.1}s{}",
        image,
        view.manifest_digest(),
        stats.layers,
        stats.entries,
        stats.inodes,
        started.elapsed().as_secs_f64(),
        match stats.merge_warnings {
            0 => String::new(),
            n => format!(" ({n} merge warnings, see the log)"),
        }
    );
    if push {
        let r = crate::image::publish(&view, &progress)
            .await
            .with_context(|| format!("publishing the indexes of {image}"))?;
        let o = &r.outcome;
        println!(
            "{} {}@{}: {} layer index(es){}{}, found through {}{}",
            if o.already_published {
                "already published as"
            } else {
                "published"
            },
            view.location(),
            o.artifact,
            r.layer_indexes,
            if r.plan { " and the prefetch plan" } else { "" },
            match r.estargz_skipped {
                0 => String::new(),
                n => format!(" ({n} eStargz layer(s) need none)"),
            },
            o.via,
            match &o.via {
                crate::registry::Via::FallbackTag(_) if o.fallback_updated => " (updated)",
                crate::registry::Via::FallbackTag(_) => " (already listed)",
                crate::registry::Via::ReferrersApi => "",
            },
        );
    }
    Ok(())
}

async fn serve(common: &Common, config_path: &std::path::Path) -> Result<()> {
    let mut config = Config::load(config_path)?;
    // The global options override the file: one cache for every command.
    if let Some(d) = &common.cache_dir {
        config.server.cache_dir = d.clone();
    }
    let state_dir = config.server.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating state dir {}", state_dir.display()))?;
    raise_open_file_limit();
    // One serve per state directory, and no `fsck --repair` under it.
    let _state_lock = crate::lockfile::try_lock(&state_dir, true)
        .with_context(|| format!("locking state dir {}", state_dir.display()))?
        .with_context(|| {
            format!(
                "state dir {} is in use by another lazyboot serve (or fsck --repair)",
                state_dir.display()
            )
        })?;
    let cache_size = match common.cache_size {
        Some(n) => n,
        None => parse_size(&config.server.cache_size)
            .map_err(|e| anyhow::anyhow!("{}: server.cache_size: {e}", config_path.display()))?,
    };
    let cache = Arc::new(
        ChunkCache::open(&config.server.cache_dir, cache_size)
            .with_context(|| format!("opening the cache {}", config.server.cache_dir.display()))?,
    );
    let opts = crate::serve::ServeOptions {
        platform: common.platform.clone(),
        insecure_registries: common.insecure_registries.clone(),
        read_timeout: Duration::from_secs(common.read_timeout),
        registry_timeout: Duration::from_secs(common.registry_timeout),
        registry_retries: common.registry_retries,
    };
    let ctx = ServeContext::with_options(config, cache, opts);
    let cfg = &ctx.config;
    // Before any image is opened: nodes pinned by a swap open their pin.
    let fleet = crate::fleet::Fleet::open(ctx.clone()).context("fleet state")?;

    // Bind what we bind here before anything starts, so a taken port is
    // reported before any image is opened.
    let key = crate::nfs::load_or_create_key(&state_dir.join("nfs.key"))
        .context("NFS file handle key")?;
    let access = Arc::new(crate::api::auth::Access::from_config(
        &ctx.config,
        &state_dir,
    )?);
    tracing::info!("HTTP API: changes need the token from {}", access.source);
    let nfs_addr = std::net::SocketAddr::from((ctx.server_ip, cfg.server.nfs_port));
    let listener = tokio::net::TcpListener::bind(nfs_addr)
        .await
        .with_context(|| format!("NFS: binding TCP {nfs_addr}"))?;
    let nfs_udp = tokio::net::UdpSocket::bind(nfs_addr)
        .await
        .with_context(|| format!("NFS: binding UDP {nfs_addr}"))?;
    let mut registration = None;
    let portmap = match cfg.server.portmapper {
        PortmapperMode::Own => {
            let port = crate::nfs::portmap::PORTMAP_PORT;
            let (tcp, udp) = crate::nfs::portmap::bind(ctx.server_ip, port).await?;
            let table = crate::nfs::portmap::Portmap::new(ctx.server_ip, port, cfg.server.nfs_port);
            Some((table, tcp, udp))
        }
        PortmapperMode::Register => {
            let port = cfg.server.nfs_port;
            registration = Some(
                tokio::task::spawn_blocking(move || crate::nfs::portmap::Registration::new(port))
                    .await??,
            );
            None
        }
        PortmapperMode::Off => None,
    };

    // Open every node's image now, so the first boot does not wait for it,
    // and let each fill the cache in the background. A reference that
    // cannot be resolved fails that node only.
    let background_fill = cfg.server.background_fill;
    for node in ctx.inventory.all() {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match ctx.view_for(&node).await {
                Ok(view) => {
                    tracing::info!(node = %node.name, image = %node.image, "image ready");
                    if !background_fill {
                        return;
                    }
                    if let Err(e) = view.fill_all(true, &Progress::hidden()).await {
                        tracing::warn!(image = %node.image, "background fill stopped: {e}");
                    }
                }
                Err(e) => {
                    tracing::error!(node = %node.name, "node failed: cannot open its image: {e}")
                }
            }
        });
    }

    let exports = Arc::new(crate::nfs::exports::NodeExports::new(ctx.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut servers = 0;
    tasks.spawn(async move {
        crate::nfs::serve(listener, Some(nfs_udp), exports, key)
            .await
            .context("NFS server")
    });
    if let Some((table, tcp, udp)) = portmap {
        tasks.spawn(async move {
            crate::nfs::portmap::serve(table, tcp, udp)
                .await
                .context("portmapper")
        });
    }
    let t = ctx.clone();
    tasks.spawn(async move { crate::tftp::run(t).await.context("TFTP server") });
    servers += 1;
    if cfg.dhcp.mode != DhcpMode::Off {
        let d = ctx.clone();
        tasks.spawn(async move { crate::dhcp::run(d).await.context("DHCP server") });
        servers += 1;
    }
    let a = ctx.clone();
    let f = fleet.clone();
    tasks.spawn(async move { crate::api::run(a, access, f).await.context("HTTP API") });
    fleet.start();
    servers += 1;
    tokio::spawn(ctx.recorder.clone().run(std::time::Duration::from_secs(1)));
    // "serving" (which scripts wait for) only once every socket is bound.
    tokio::select! {
        _ = ctx.wait_bound(servers) => {}
        Some(done) = tasks.join_next() => {
            done.context("server task panicked")??;
            bail!("a server stopped while starting");
        }
    }
    println!(
        "serving {} node(s): DHCP {:?} on {}, TFTP on {}:{}, NFS on {} (TCP and UDP), portmapper {}, API on http://{}:{}",
        ctx.inventory.all().len(),
        cfg.dhcp.mode,
        cfg.server.interface,
        ctx.server_ip,
        cfg.server.tftp_port,
        nfs_addr,
        match cfg.server.portmapper {
            PortmapperMode::Own => format!("on {}:111", ctx.server_ip),
            PortmapperMode::Register => "registered with the host's rpcbind".into(),
            PortmapperMode::Off => "off".into(),
        },
        ctx.server_ip,
        cfg.server.http_port
    );
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        Some(done) = tasks.join_next() => {
            done.context("server task panicked")??;
            bail!("a server stopped unexpectedly");
        }
    }
    eprintln!("stopping");
    ctx.recorder.flush();
    // Unregistered from the host's rpcbind here, before the process ends.
    drop(registration);
    Ok(())
}

#[derive(serde::Serialize)]
struct LayerRow {
    digest: String,
    media_type: String,
    format: String,
    compressed_size: u64,
    uncompressed_size: Option<u64>,
    entries: Option<usize>,
    indexed: bool,
    cached_chunks: u64,
    cached_bytes: u64,
}

async fn inspect(common: &Common, image: &ImageRef, json: bool) -> Result<()> {
    let opts = common.view();
    let (source, resolved) = Source::open(image, &opts.registry)
        .await
        .with_context(|| format!("resolving {image}"))?;
    let cache = Arc::new(ChunkCache::open(&opts.cache_dir, opts.cache_size)?);
    let mut rows = Vec::new();
    for l in &resolved.layers {
        let idx = cache
            .load_index(&LayerIndex::cache_name(&l.digest))
            .and_then(|b| LayerIndex::decode(&b, &l.digest).ok());
        let format = match &idx {
            Some(i) => i.format.to_string(),
            None => match probe_format(&source, l).await {
                Ok(f) => f.to_string(),
                Err(e @ IndexError::Format { .. }) => format!("unsupported: {e}"),
                Err(e) => format!("unknown? ({e})"),
            },
        };
        let (cached_chunks, cached_bytes) = cache.layer_usage(&l.digest);
        rows.push(LayerRow {
            digest: l.digest.to_string(),
            media_type: l.media_type.clone(),
            format,
            compressed_size: l.size,
            uncompressed_size: idx.as_ref().map(|i| i.uncompressed_size),
            entries: idx.as_ref().map(|i| i.entries.len()),
            indexed: idx.is_some(),
            cached_chunks,
            cached_bytes,
        });
    }
    let unreadable: Vec<String> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.format.starts_with("unsupported") || r.format.contains('?'))
        .map(|(i, r)| format!("layer {} ({}): {}", i + 1, &r.digest, r.format))
        .collect();
    let verdict = || -> Result<()> {
        if unreadable.is_empty() {
            return Ok(());
        }
        bail!(
            "{image} cannot be read by lazyboot:\n  {}",
            unreadable.join("\n  ")
        )
    };
    if json {
        let out = serde_json::json!({ "image": resolved, "layers": rows });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return verdict();
    }
    println!("image     {}", resolved.reference);
    println!("manifest  {}", resolved.manifest_digest);
    println!("platform  {}", resolved.platform);
    println!();
    println!(
        "{:<3} {:<14} {:<8} {:>11} {:>13} {:>8} {:<8} {:>11}",
        "#", "LAYER", "FORMAT", "COMPRESSED", "UNCOMPRESSED", "ENTRIES", "INDEX", "CACHED"
    );
    for (i, r) in rows.iter().enumerate() {
        println!(
            "{:<3} {:<14} {:<8} {:>11} {:>13} {:>8} {:<8} {:>11}",
            i + 1,
            &r.digest[7..19],
            r.format,
            human(r.compressed_size),
            r.uncompressed_size.map_or("-".into(), human),
            r.entries.map_or("-".into(), |e| e.to_string()),
            if r.indexed { "cached" } else { "missing" },
            human(r.cached_bytes)
        );
    }
    verdict()
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5Q").is_err());
    }
}
