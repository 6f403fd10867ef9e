//! The HTML boot profile as a browser draws it: headless Chromium renders
//! `render_html` of a synthetic boot to a PNG, and every bar colour must be
//! on it (a page that failed to render, or drew no chart, fails). A copy of
//! the screenshot is left at `target/profile-html.png` for a human to look at.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use lazyboot::profile::html::{render_html, KIND_COLOURS};
use lazyboot::profile::{
    BootProfile, Booted, BootedBy, DhcpExchange, Fetch, NfsFile, NfsMount, PrefetchRun,
    TftpOutcome, TftpTransfer, Wait, PROFILE_VERSION,
};

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 900;

/// Only Chromium is needed (no root, no registry), so this skips or fails
/// on that alone, honouring the harness's REQUIRE switch.
fn runnable(test: &str) -> bool {
    let missing = common::missing_tools(&["chromium"]);
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: skipped: missing tools: {}", missing.join(", "));
    if std::env::var_os(common::REQUIRE_ENV).is_some_and(|v| v == "1") {
        panic!("{msg} (and {}=1)", common::REQUIRE_ENV);
    }
    eprintln!("NOTICE: {msg}");
    false
}

const MIB: u64 = 1 << 20;

fn wait(registry_ms: f64, cache_bytes: u64, fetched_bytes: u64, fetches: &[u32]) -> Wait {
    Wait {
        registry_ms,
        cache_bytes,
        fetched_bytes,
        fetches: fetches.to_vec(),
    }
}

fn tftp(file: &str, start_ms: f64, end_ms: f64, size: u64, w: Wait) -> TftpTransfer {
    TftpTransfer {
        file: file.into(),
        start_ms,
        end_ms,
        size,
        bytes: size,
        outcome: TftpOutcome::Complete,
        retries: 0,
        generated: false,
        wait: w,
    }
}

fn nfs(path: &str, first_ms: f64, last_ms: f64, bytes_read: u64, w: Wait) -> NfsFile {
    NfsFile {
        path: path.into(),
        first_ms,
        last_ms,
        ops: [("READ".to_string(), 12), ("LOOKUP".to_string(), 2)].into(),
        bytes_read,
        busy_ms: 3.0,
        wait: w,
    }
}

fn fetch(id: u32, start_ms: f64, duration_ms: f64, bytes: u64, by: &str) -> Fetch {
    Fetch {
        id,
        layer: "5f70bf18a086".into(),
        start_ms,
        duration_ms,
        compressed_bytes: bytes / 3,
        bytes,
        by: by.into(),
    }
}

/// A cold 20 s boot of an iPXE PC with a long and a hostile file name.
/// Every bar is wide enough (>= 0.8 s of 20 s = 30 px) to be found.
fn profile() -> BootProfile {
    BootProfile {
        version: PROFILE_VERSION,
        node: "pc-<b>7</b>".into(),
        boot: 12,
        kind: "ipxe".into(),
        image: "registry.lan/os/desktop:2024.06".into(),
        manifest: Some(
            "sha256:9b2a1c0e5d8f7a6b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b".into(),
        ),
        started_unix_ms: 1_718_000_000_000,
        began_with: "dhcp".into(),
        booted: Some(Booted {
            at_ms: 18_500.0,
            how: BootedBy::Marker {
                path: "/run/booted".into(),
            },
        }),
        dhcp: vec![DhcpExchange {
            start_ms: 0.0,
            end_ms: Some(900.0),
            messages: ["DISCOVER", "OFFER", "REQUEST", "ACK"]
                .map(String::from)
                .to_vec(),
            address: Some("10.0.0.42".into()),
            client: Some("PXEClient:Arch:00007".into()),
        }],
        tftp: vec![
            tftp("boot.ipxe", 1000.0, 1050.0, 600, Wait::default()),
            tftp(
                "vmlinuz",
                1100.0,
                3500.0,
                12 * MIB,
                wait(1800.0, 0, 12 * MIB, &[1]),
            ),
            tftp(
                "initrd.img",
                3600.0,
                6400.0,
                40 * MIB,
                wait(2100.0, 8 * MIB, 32 * MIB, &[2]),
            ),
        ],
        nfs_mounts: vec![NfsMount {
            at_ms: 8000.0,
            export: "/nodes/pc-7".into(),
            client: "10.0.0.42".into(),
            wait_ms: 0.0,
        }],
        nfs_files: vec![
            nfs(
                "/sbin/init",
                8100.0,
                9500.0,
                2 * MIB,
                wait(900.0, 0, 2 * MIB, &[3]),
            ),
            nfs(
                "/usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so",
                8300.0,
                11_000.0,
                4 * MIB,
                wait(1600.0, MIB, 3 * MIB, &[4]),
            ),
            nfs(
                "/etc/<script>alert(1)</script>",
                11_500.0,
                12_500.0,
                4096,
                Wait::default(),
            ),
            nfs(
                "/usr/bin/Xorg",
                12_000.0,
                17_000.0,
                9 * MIB,
                wait(2500.0, 2 * MIB, 7 * MIB, &[5]),
            ),
        ],
        fetches: vec![
            fetch(1, 1150.0, 1900.0, 12 * MIB, "tftp vmlinuz"),
            fetch(2, 3700.0, 2200.0, 32 * MIB, "tftp initrd.img"),
            fetch(3, 8150.0, 1000.0, 2 * MIB, "nfs /sbin/init"),
            fetch(
                4,
                8400.0,
                1700.0,
                3 * MIB,
                "nfs /usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so",
            ),
            fetch(5, 12_100.0, 2600.0, 7 * MIB, "nfs /usr/bin/Xorg"),
            fetch(6, 8600.0, 6000.0, 20 * MIB, "prefetch"),
        ],
        prefetch: Some(PrefetchRun {
            start_ms: 8500.0,
            end_ms: Some(15_000.0),
            planned_chunks: 300,
            fetched_chunks: 120,
            learned_from: "boot 11".into(),
        }),
        errors: Vec::new(),
        registry: None,
    }
}

/// Runs `cmd`, killing it after `limit` (a wedged browser must not hang CI).
fn run_with_deadline(cmd: &mut Command, log: &Path, limit: Duration) -> Result<()> {
    let shown = format!("{cmd:?}");
    let log_file = std::fs::File::create(log).with_context(|| format!("creating {log:?}"))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("duplicating the log handle")?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("spawning {shown}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("waiting for chromium")? {
            if status.success() {
                return Ok(());
            }
            bail!(
                "{shown} failed ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{shown} still running after {limit:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Image {
    width: u32,
    height: u32,
    /// RGB, row by row.
    rgb: Vec<[u8; 3]>,
}

fn decode_png(path: &Path) -> Result<Image> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {path:?}"))?;
    let mut decoder = png::Decoder::new(file);
    // Palette and low bit depths become plain 8-bit channels.
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .with_context(|| format!("{path:?}: not a PNG"))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .with_context(|| format!("decoding {path:?}"))?;
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => {
            bail!("{path:?} is greyscale: no colours were drawn")
        }
        other => bail!("{path:?}: unexpected colour type {other:?}"),
    };
    ensure!(
        info.bit_depth == png::BitDepth::Eight,
        "{path:?}: bit depth {:?}",
        info.bit_depth
    );
    let rgb = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    Ok(Image {
        width: info.width,
        height: info.height,
        rgb,
    })
}

fn hex_rgb(hex: &str) -> [u8; 3] {
    let hex = hex.trim_start_matches('#');
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).expect("a hex colour");
    [byte(0), byte(2), byte(4)]
}

fn close(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 6)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

#[test]
fn chromium_draws_every_bar_colour() {
    if !runnable("chromium_draws_every_bar_colour") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("profile.html");
    let shot = dir.path().join("profile.png");
    let html = render_html(&profile());
    assert!(!html.contains("<script>") && !html.contains("<b>7"));
    std::fs::write(&page, &html).unwrap();

    run_with_deadline(
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                "--no-first-run",
            ])
            // Its own profile: parallel runs must not share a lock.
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("chrome").display()
            ))
            .arg(format!("--screenshot={}", shot.display()))
            .arg(format!("--window-size={WIDTH},{HEIGHT}"))
            .arg(format!("file://{}", page.display())),
        &dir.path().join("chromium.log"),
        Duration::from_secs(120),
    )
    .unwrap();

    let keep = target_dir().join("profile-html.png");
    std::fs::create_dir_all(keep.parent().unwrap()).unwrap();
    std::fs::copy(&shot, &keep)
        .with_context(|| format!("copying the screenshot to {keep:?}"))
        .unwrap();
    eprintln!("screenshot: {}", keep.display());

    let img = decode_png(&shot).unwrap();
    assert_eq!((img.width, img.height), (WIDTH, HEIGHT));
    assert_eq!(img.rgb.len(), (WIDTH * HEIGHT) as usize);

    // Not blank: a real page has plenty of ink and many colours.
    let white = [255, 255, 255];
    let ink = img.rgb.iter().filter(|p| !close(**p, white)).count();
    assert!(
        ink > img.rgb.len() / 50,
        "only {ink} non-white pixels: the page did not render"
    );
    let distinct: std::collections::HashSet<[u8; 3]> = img.rgb.iter().copied().collect();
    assert!(distinct.len() > 30, "{} colours", distinct.len());

    // Each kind's bars, not just its 10x10 legend swatch (100 pixels): the
    // narrowest bar here is 30 x 12 pixels.
    for (kind, hex) in KIND_COLOURS {
        let want = hex_rgb(hex);
        let found: Vec<(u32, u32)> = img
            .rgb
            .iter()
            .enumerate()
            .filter(|(_, p)| close(**p, want))
            .map(|(i, _)| (i as u32 % img.width, i as u32 / img.width))
            .collect();
        assert!(
            found.len() >= 300,
            "{kind} ({hex}): {} pixels; screenshot in {keep:?}",
            found.len()
        );
        // The chart is on screen: some of the colour lies right of the
        // label column (x >= 420) and inside the window.
        assert!(
            found.iter().any(|&(x, _)| (420..WIDTH - 10).contains(&x)),
            "{kind}: no bar on the time axis"
        );
    }
}
