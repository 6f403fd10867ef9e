use super::*;
use crate::profile::model::*;

fn wait(registry_ms: f64, cache: u64, fetched: u64, fetches: &[u32]) -> Wait {
    Wait {
        registry_ms,
        cache_bytes: cache,
        fetched_bytes: fetched,
        fetches: fetches.to_vec(),
    }
}

const MIB: u64 = 1 << 20;

/// A Pi-like boot: DHCP 0-400 ms, TFTP 440-3000 ms, mount at 4000 ms,
/// booted at 12 s; 5 s of registry wait summed over requests.
pub(crate) fn sample() -> BootProfile {
    let tftp = |file: &str, start, end, size, retries, generated, w| TftpTransfer {
        file: file.into(),
        start_ms: start,
        end_ms: end,
        size,
        bytes: size,
        outcome: TftpOutcome::Complete,
        retries,
        generated,
        wait: w,
    };
    let nfs = |path: &str, first, last, bytes, w, ops: &[(&str, u32)]| NfsFile {
        path: path.into(),
        first_ms: first,
        last_ms: last,
        ops: ops.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        bytes_read: bytes,
        busy_ms: 1.0,
        wait: w,
    };
    let fetch = |id, start, dur, bytes, by: &str| Fetch {
        id,
        layer: "a1b2c3d4".into(),
        start_ms: start,
        duration_ms: dur,
        compressed_bytes: bytes / 2,
        bytes,
        by: by.into(),
    };
    BootProfile {
        version: PROFILE_VERSION,
        node: "cm4-1".into(),
        boot: 3,
        kind: "raspberrypi".into(),
        image: "registry.lan/os/base:latest".into(),
        manifest: Some("sha256:0123456789abcdef".into()),
        started_unix_ms: 1_700_000_000_000,
        began_with: "dhcp".into(),
        booted: Some(Booted {
            at_ms: 12_000.0,
            how: BootedBy::Api,
        }),
        dhcp: vec![DhcpExchange {
            start_ms: 0.0,
            end_ms: Some(400.0),
            messages: ["DISCOVER", "OFFER", "REQUEST", "ACK"]
                .map(String::from)
                .to_vec(),
            address: Some("192.168.150.101".into()),
            client: Some("PXEClient:Arch:00000".into()),
        }],
        tftp: vec![
            // Recorded out of start order on purpose.
            tftp(
                "start4.elf",
                500.0,
                1500.0,
                2 * MIB,
                0,
                false,
                wait(600.0, 0, 2 * MIB, &[1]),
            ),
            tftp("config.txt", 440.0, 470.0, 120, 0, true, Wait::default()),
            tftp(
                "kernel8.img",
                1600.0,
                3000.0,
                8 * MIB,
                1,
                false,
                wait(900.0, 0, 8 * MIB, &[2]),
            ),
        ],
        nfs_mounts: vec![NfsMount {
            at_ms: 4000.0,
            export: "/nodes/cm4-1".into(),
            client: "192.168.150.101".into(),
            wait_ms: 0.0,
        }],
        nfs_files: vec![
            nfs("/", 4000.0, 4010.0, 0, Wait::default(), &[("GETATTR", 2)]),
            nfs(
                "/sbin/init",
                4100.0,
                5000.0,
                MIB,
                wait(1500.0, MIB / 2, MIB, &[3]),
                &[("READ", 9), ("LOOKUP", 1)],
            ),
            nfs(
                "/usr/lib/libc.so.6",
                4200.0,
                6000.0,
                2 * MIB,
                wait(2000.0, MIB, 2 * MIB, &[4]),
                &[("READ", 20)],
            ),
            nfs(
                "/etc/<script>alert(1)</script>",
                5000.0,
                5100.0,
                100,
                wait(0.0, 100, 0, &[]),
                &[("READ", 1)],
            ),
        ],
        fetches: vec![
            fetch(1, 500.0, 500.0, 2 * MIB, "tftp start4.elf"),
            fetch(2, 1650.0, 850.0, 8 * MIB, "tftp kernel8.img"),
            fetch(3, 4100.0, 1400.0, MIB, "nfs /sbin/init"),
            fetch(4, 4300.0, 1700.0, 2 * MIB, "nfs /usr/lib/libc.so.6"),
            fetch(5, 4500.0, 2500.0, 4 * MIB, "prefetch"),
        ],
        prefetch: Some(PrefetchRun {
            start_ms: 4400.0,
            end_ms: Some(9000.0),
            planned_chunks: 100,
            fetched_chunks: 40,
            learned_from: "boot 2".into(),
        }),
        errors: Vec::new(),
        registry: None,
    }
}

fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn text_has_phase_totals_with_the_right_numbers() {
    let text = render_text(&sample(), 60);
    let row = |name: &str| cells(line_with(&text, name)).join(" | ");
    assert_eq!(
        row("DHCP (until address)"),
        "DHCP (until address) | 400 ms | 3.3%"
    );
    assert_eq!(
        row("TFTP (boot files)"),
        "TFTP (boot files) | 2.56 s | 21.3%"
    );
    assert_eq!(row("kernel start-up"), "kernel start-up | 1.00 s | 8.3%");
    assert_eq!(
        row("NFS root until booted"),
        "NFS root until booted | 8.00 s | 66.7%"
    );
    assert_eq!(row("between phases"), "between phases | 40 ms | 0.3%");
    assert_eq!(row("  total"), "total | 12.0 s | 100.0%");
    assert!(
        text.contains("boot profile: node cm4-1, boot 3 (raspberrypi)"),
        "{text}"
    );
    assert!(text.contains("manifest: sha256:0123456789abcdef"), "{text}");
    assert!(text.contains("started:  2023-11-14 22:13:20 UTC"), "{text}");
    assert!(
        text.contains("ended:    booted at 12.0 s: the node called the booted API"),
        "{text}"
    );
}

#[test]
fn text_bytes_section_splits_registry_and_cache() {
    let text = render_text(&sample(), 60);
    // 17 MiB fetched in all, 4 MiB of it by the prefetcher.
    assert_eq!(
        cells(line_with(&text, "registry, uncompressed")),
        [
            "registry, uncompressed",
            "17.0 MiB",
            "(13.0 MiB for node requests, 4.00 MiB by the prefetcher)"
        ]
    );
    assert_eq!(
        cells(line_with(&text, "registry, downloaded"))[1],
        "8.50 MiB"
    );
    // 0.5 MiB + 1 MiB + 100 B from the cache.
    assert_eq!(cells(line_with(&text, "chunk cache"))[1], "1.50 MiB");
    assert_eq!(cells(line_with(&text, "served over TFTP"))[1], "10.0 MiB");
    assert_eq!(cells(line_with(&text, "served over NFS"))[1], "3.00 MiB");
}

#[test]
fn text_rows_are_in_time_order_and_flag_registry_waits() {
    let text = render_text(&sample(), 191);
    let order = [
        "dhcp DISCOVER OFFER REQUEST ACK (address 192.168.150.101",
        "tftp config.txt (120 B, complete, generated)",
        "tftp start4.elf",
        "tftp kernel8.img (8.00 MiB, complete, 1 retry)",
        "nfs mount /nodes/cm4-1 (from 192.168.150.101)",
        "nfs / (0 B read, 2 calls: GETATTR 2)",
        "nfs /sbin/init",
        "nfs /usr/lib/libc.so.6",
        "prefetch run (40 of 100 chunks, learned from boot 2)",
        "nfs /etc/<script>",
    ];
    let pos: Vec<usize> = order
        .iter()
        .map(|n| {
            text.find(n)
                .unwrap_or_else(|| panic!("no {n:?} in:\n{text}"))
        })
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}\n{text}");

    let kernel = line_with(&text, "tftp kernel8.img");
    assert!(
        kernel.starts_with("  1.600 s   1.40 s   900 ms  8.00 MiB |"),
        "{kernel}"
    );
    let config = line_with(&text, "tftp config.txt");
    assert!(config.starts_with("  0.440 s    30 ms "), "{config}");
    assert!(config[18..38].trim().is_empty(), "{config}");
    assert_eq!(&config[38..39], "|", "{config}");

    // 191 columns leave 60 for the axis over 12 s: the kernel's bar
    // covers 1.6-3.0 s = columns 8..15.
    let bar = &kernel[kernel.find('|').unwrap() + 1..];
    let bar = &bar[..bar.find('|').unwrap()];
    assert_eq!(bar.len(), 60);
    assert_eq!(bar.find('='), Some(8));
    assert_eq!(bar.rfind('='), Some(14));
    // The booted marker sits in the last column.
    assert_eq!(bar.rfind(':'), Some(59));
    let mount = line_with(&text, "nfs mount");
    assert!(mount.starts_with("  4.000 s        - "), "{mount}");
    assert!(text.contains("0 s"), "{text}");
}

#[test]
fn text_lists_top_waits_and_what_a_warm_cache_saves() {
    let text = render_text(&sample(), 40);
    let top = &text[text.find("Files that waited longest").unwrap()..];
    let names: Vec<&str> = top
        .lines()
        .skip(2)
        .take_while(|l| !l.is_empty())
        .map(|l| l.rsplit("  ").next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "nfs /usr/lib/libc.so.6",
            "nfs /sbin/init",
            "tftp kernel8.img",
            "tftp start4.elf"
        ]
    );
    assert_eq!(
        cells(line_with(top, "nfs /sbin/init")),
        ["1.50 s", "1.00 MiB", "1", "nfs /sbin/init"]
    );
    // 600 + 900 + 1500 + 2000 ms of 12 s.
    assert!(
        text.trim_end()
            .ends_with("a warm cache would have saved about 5.00 s (41.7% of the boot)"),
        "{text}"
    );
}

#[test]
fn saving_is_capped_at_the_boot_and_unfinished_boots_say_so() {
    let mut p = sample();
    p.booted = None;
    p.nfs_files[2].wait.registry_ms = 60_000.0;
    let text = render_text(&p, 30);
    // Without "booted" the boot ends at its last event: the prefetch
    // fetch ending at 7 s.
    assert!(
        text.contains("ended:    not finished (last event at 7.00 s)"),
        "{text}"
    );
    assert!(text.contains("NFS root (not finished)"), "{text}");
    assert!(
        text.contains("a warm cache would have saved about 7.00 s (100.0% of the boot)"),
        "{text}"
    );
    assert!(!text.contains(": = booted"), "{text}");
}

#[test]
fn control_characters_do_not_reach_the_terminal() {
    let mut p = sample();
    p.nfs_files[1].path = "/evil\u{1b}[2Jname".into();
    let text = render_text(&p, 30);
    assert!(!text.contains('\u{1b}'));
    assert!(text.contains(r"/evil\u{1b}[2Jname"), "{text}");
}

#[test]
fn empty_profile_renders() {
    let text = render_text(&BootProfile::default(), 0);
    assert!(text.contains("a warm cache would have saved about 0.00 s (0.0% of the boot)"));
    assert!(text.contains("none: every read was served from the cache"));
}

#[test]
fn compare_shows_both_columns_and_changed_files() {
    let a = sample();
    let mut b = sample();
    b.boot = 4;
    b.booted = Some(Booted {
        at_ms: 9_500.0,
        how: BootedBy::Quiet { quiet_secs: 5 },
    });
    b.nfs_files[2].wait.registry_ms = 0.0; // libc came from the cache
    b.fetches.truncate(2);
    let text = render_compare(&a, &b);
    assert!(text.contains("A: node cm4-1, boot 3,"), "{text}");
    assert!(text.contains("B: node cm4-1, boot 4,"), "{text}");
    assert_eq!(
        cells(line_with(&text, "  total")),
        ["total", "12.0 s", "9.50 s", "-2.50 s", "0.79x"]
    );
    assert_eq!(
        cells(line_with(&text, "NFS root until booted")),
        [
            "NFS root until booted",
            "8.00 s",
            "5.50 s",
            "-2.50 s",
            "0.69x"
        ]
    );
    assert_eq!(
        cells(line_with(&text, "DHCP (until address)")),
        ["DHCP (until address)", "400 ms", "400 ms", "0 ms", "1.00x"]
    );
    // B fetched only the first two: 2 + 8 MiB of 17.
    assert_eq!(
        cells(line_with(&text, "registry, uncompressed")),
        [
            "registry, uncompressed",
            "17.0 MiB",
            "10.0 MiB",
            "-7.00 MiB",
            "0.59x"
        ]
    );
    let files = &text[text.find("Files whose registry wait changed most").unwrap()..];
    assert_eq!(
        cells(files.lines().nth(2).unwrap()),
        ["2.00 s", "0 ms", "-2.00 s", "nfs /usr/lib/libc.so.6"]
    );
    assert_eq!(files.lines().count(), 3, "{files}");
}

#[test]
fn helpers() {
    assert_eq!(human_bytes(1023), "1023 B");
    assert_eq!(human_bytes(1536), "1.50 KiB");
    assert_eq!(human_bytes(200 * MIB), "200 MiB");
    assert_eq!(human_ms(0.26), "0.3 ms");
    assert_eq!(human_ms(0.0), "0 ms");
    assert_eq!(human_ms(1234.0), "1.23 s");
    assert_eq!(human_ms(123_456.0), "123 s");
    assert_eq!(nice_step(0.7), 1.0);
    assert_eq!(nice_step(1300.0), 2000.0);
    assert_eq!(nice_step(4999.0), 5000.0);
    assert_eq!(nice_step(6000.0), 10000.0);
    assert_eq!(tick_label(2500.0, 500.0), "2500 ms");
    assert_eq!(tick_label(4000.0, 2000.0), "4 s");
    assert_eq!(tick_label(1500.0, 1500.0), "1.5 s");
    assert_eq!(utc(0), "not recorded");
    assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    assert_eq!(utc(1_709_251_199_000), "2024-02-29 23:59:59 UTC");
}
