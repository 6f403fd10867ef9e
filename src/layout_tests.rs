//! Checks of the source tree's shape that the compiler cannot make: the
//! module dependency graph has no cycle and points the documented way, and
//! no file grows past what a reader can hold in mind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest source file allowed, in lines (tests included).
const MAX_LINES: usize = 1000;

/// Lower modules that must never reach up to these.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("digest", &["*"]),
    (
        "layer",
        &[
            "image", "cache", "registry", "nfs", "tftp", "fuse", "dhcp", "serve", "profile", "api",
            "fleet",
        ],
    ),
    (
        "cache",
        &[
            "image", "registry", "nfs", "tftp", "fuse", "dhcp", "serve", "profile", "api", "fleet",
        ],
    ),
    (
        "registry",
        &[
            "image", "cache", "nfs", "tftp", "fuse", "dhcp", "serve", "profile", "api", "fleet",
        ],
    ),
    (
        "image",
        &[
            "nfs", "tftp", "fuse", "dhcp", "serve", "profile", "api", "fleet",
        ],
    ),
    (
        "profile",
        &["nfs", "tftp", "fuse", "dhcp", "serve", "api", "fleet"],
    ),
    // The servers never reach up to the fleet: it drives them through
    // the inventory.
    ("serve", &["fleet", "api"]),
    ("nfs", &["fleet", "api"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module of `file` (its first path component under src/).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "layout_tests")).then(|| name.to_string())
}

/// Every `crate::NAME` a source text mentions.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        // `lazyboot_crate::` or a doc link's `$crate::` are not ours.
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &text[i + 7..];
        match rest.strip_prefix('{') {
            // `crate::{a::b, c}`: the first name of each top-level item.
            Some(group) => {
                let mut depth = 0;
                let mut item_start = true;
                for (j, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => item_start = true,
                        c if item_start && (c.is_ascii_alphanumeric() || c == '_') => {
                            out.insert(ident(&group[j..]));
                            item_start = false;
                        }
                        _ => {}
                    }
                }
            }
            None => {
                let name = ident(rest);
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let Some(m) = module_of(&f) else { continue };
        let text = std::fs::read_to_string(&f).unwrap();
        let deps = g.entry(m.clone()).or_default();
        deps.extend(crate_refs(&text).into_iter().filter(|d| *d != m));
    }
    let modules: BTreeSet<String> = g.keys().cloned().collect();
    for deps in g.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    g
}

/// A cycle of `g`, if it has one.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        m: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, d, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| visit(g, m, &mut Vec::new(), &mut done))
}

#[test]
fn the_module_graph_has_no_cycle() {
    let g = graph();
    assert!(
        g.contains_key("image") && g["nfs"].contains("image"),
        "{g:?}"
    );
    if let Some(c) = find_cycle(&g) {
        panic!("module dependency cycle: {}", c.join(" -> "));
    }
}

#[test]
fn dependencies_point_down() {
    let g = graph();
    for (m, banned) in FORBIDDEN {
        let deps = &g[*m];
        for d in deps {
            assert!(
                !banned.contains(&"*") && !banned.contains(&d.as_str()),
                "{m} depends on {d}, which sits above it (see ARCHITECTURE.md)"
            );
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("a".into(), ["b".to_string()].into());
    g.insert("b".into(), ["c".to_string()].into());
    g.insert("c".into(), BTreeSet::new());
    assert_eq!(find_cycle(&g), None);
    g.get_mut("c").unwrap().insert("a".into());
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    assert_eq!(
        crate_refs("use crate::image::x; $crate::no; foo_crate::no; crate::{a::b, c::{d, e}, f}"),
        ["a", "c", "f", "image"].map(String::from).into()
    );
}

#[test]
fn no_source_file_is_too_long() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .map(|f| (f, std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, n)| *n > MAX_LINES)
        .map(|(f, n)| format!("{} ({n} lines)", f.display()))
        .collect();
    assert!(long.is_empty(), "split these by concern: {long:?}");
}
