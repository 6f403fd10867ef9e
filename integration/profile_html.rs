//! The HTML boot profile as a browser draws it: headless Chromium renders
//! `render_html` of a synthetic boot to a PNG, and every bar colour must be
//! on it (a page that failed to render, or drew no chart, fails). A copy of
//! the screenshot is left at `target/profile-html.png` for a human to look at.

mod common;

use common::browser::{decode_png, hex_rgb, keep_artifact, Chromium};
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

    Chromium::new(dir.path())
        .screenshot(
            &format!("file://{}", page.display()),
            &shot,
            (WIDTH, HEIGHT),
            0,
        )
        .unwrap();
    let keep = keep_artifact(&shot, "profile-html.png").unwrap();
    eprintln!("screenshot: {}", keep.display());

    let img = decode_png(&shot).unwrap();
    assert_eq!((img.width, img.height), (WIDTH, HEIGHT));
    assert_eq!(img.rgb.len(), (WIDTH * HEIGHT) as usize);

    // Not blank: a real page has plenty of ink and many colours.
    let ink = img.ink();
    assert!(
        ink > img.rgb.len() / 50,
        "only {ink} non-white pixels: the page did not render"
    );
    let distinct: std::collections::HashSet<[u8; 3]> = img.rgb.iter().copied().collect();
    assert!(distinct.len() > 30, "{} colours", distinct.len());

    // Each kind's bars, not just its 10x10 legend swatch (100 pixels): the
    // narrowest bar here is 30 x 12 pixels.
    for (kind, hex) in KIND_COLOURS {
        let found = img.pixels_like(hex_rgb(hex));
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
