use super::*;
use crate::profile::model::BootProfile;
use crate::profile::report::tests::sample;

#[test]
fn html_escapes_file_names_and_has_one_bar_per_item() {
    let p = sample();
    let page = render_html(&p);
    assert!(!page.contains("<script"), "unescaped file name");
    assert!(page.contains("/etc/&lt;script&gt;alert(1)&lt;/script&gt;"));
    // 10 timeline items (DHCP, 3 TFTP, mount, 4 NFS files, prefetch) + 5 fetches.
    assert_eq!(page.matches("class=\"bar ").count(), 15);
    assert_eq!(page.matches("class=\"bar fetch\"").count(), 5);
    assert_eq!(page.matches("class=\"bar tftp\"").count(), 3);
    assert_eq!(page.matches("class=\"bar nfs\"").count(), 5);
    assert_eq!(page.matches("class=\"bar prefetch\"").count(), 1);
    assert_eq!(page.matches("class=\"bar dhcp\"").count(), 1);
    // Three lanes: fetches 3, 4 and 5 overlap.
    assert!(page.contains(">fetch lane 3<") && !page.contains(">fetch lane 4<"));
    assert!(page.contains(">booted 12.0 s</text>"));
    assert!(page.contains("a warm cache would have saved about 5.00 s (41.7% of the boot)"));
    // Self-contained: the SVG namespace is the only URL.
    let urls = page.matches("http").count();
    assert_eq!(urls, page.matches("http://www.w3.org/2000/svg").count());
    assert!(!page.contains("<script") && !page.contains("src="));
    for (_, c) in KIND_COLOURS {
        assert!(page.contains(c), "{c} unused");
    }
}

#[test]
fn html_bars_sit_on_the_time_axis() {
    let page = render_html(&sample());
    // The axis runs 0-12 s over 760 px from x=420: kernel8.img
    // (1.6-3.0 s) starts at 521.3 and is 88.7 px wide.
    let row = page
        .lines()
        .find(|l| l.contains(">tftp kernel8.img<"))
        .expect("kernel row");
    assert!(
        row.contains("class=\"bar tftp\" x=\"521.3\" y=\"") && row.contains("width=\"88.7\""),
        "{row}"
    );
    assert!(
        row.contains("<tspan class=\"wait\"> \u{b7} registry 900 ms for 8.00 MiB</tspan>"),
        "{row}"
    );
    // booted at 12 s = the right edge of the axis.
    assert!(page.contains("class=\"booted\" x1=\"1180.0\""));
    // Ticks every 2 s (80 px minimum over 12 s / 760 px).
    for t in ["0 s", "2 s", "4 s", "12 s"] {
        assert!(page.contains(&format!(">{t}</text>")), "tick {t}");
    }
    assert!(!page.contains(">14 s</text>"));
}

#[test]
fn html_of_an_empty_profile_is_still_a_page() {
    let page = render_html(&BootProfile::default());
    assert!(page.starts_with("<!DOCTYPE html>") && page.ends_with("</html>\n"));
    assert_eq!(page.matches("class=\"bar ").count(), 0);
    assert!(page.contains("not finished"));
}

#[test]
fn long_labels_are_cut_from_the_front() {
    assert_eq!(cut_front("/usr/lib/x", 20), "/usr/lib/x");
    assert_eq!(
        cut_front("/usr/lib/modules/abc.ko", 10),
        "\u{2026}es/abc.ko"
    );
    assert_eq!(cut_back("abcdef", 4), "abc\u{2026}");
    assert_eq!(esc("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
}

#[test]
fn lanes_never_overlap() {
    let spans = [
        (0.0, 10.0),
        (5.0, 8.0),
        (10.0, 12.0),
        (6.0, 20.0),
        (9.0, 9.5),
    ];
    let (lanes, n) = pack_lanes(&spans);
    assert_eq!(lanes, [0, 1, 0, 2, 1]);
    assert_eq!(n, 3);
}
