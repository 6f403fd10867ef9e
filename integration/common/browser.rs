//! Headless Chromium for the tests of lazyboot's HTML pages: dump a page's
//! DOM after its scripts ran, take a screenshot, decode it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// A wedged browser must not hang CI.
const LIMIT: Duration = Duration::from_secs(120);

/// Headless Chromium with a profile of its own under `dir` (parallel runs
/// must not share its lock) and its log in `dir/chromium-N.log`.
pub struct Chromium {
    dir: PathBuf,
    runs: u32,
}

impl Chromium {
    pub fn new(dir: &Path) -> Chromium {
        Chromium {
            dir: dir.to_path_buf(),
            runs: 0,
        }
    }

    fn command(&mut self, budget_ms: u32) -> (Command, PathBuf) {
        self.runs += 1;
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--no-first-run",
            // The lab's addresses are local: no proxy from the environment.
            "--no-proxy-server",
        ])
        .arg(format!(
            "--user-data-dir={}",
            self.dir.join("chromium-profile").display()
        ));
        if budget_ms > 0 {
            // Virtual time: timers (a page's polling) run this far ahead,
            // and network loads are waited for, before the dump.
            cmd.arg(format!("--virtual-time-budget={budget_ms}"));
        }
        let log = self.dir.join(format!("chromium-{}.log", self.runs));
        (cmd, log)
    }

    /// The DOM of `url` as serialised after `budget_ms` of virtual time.
    pub fn dump_dom(&mut self, url: &str, budget_ms: u32) -> Result<String> {
        let (mut cmd, log) = self.command(budget_ms);
        cmd.arg("--dump-dom").arg(url);
        let out = run_with_deadline(&mut cmd, &log, LIMIT, true)?;
        ensure!(!out.is_empty(), "chromium dumped nothing for {url}");
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// A PNG of `url` in a `width` x `height` window at `png`.
    pub fn screenshot(
        &mut self,
        url: &str,
        png: &Path,
        (width, height): (u32, u32),
        budget_ms: u32,
    ) -> Result<()> {
        let (mut cmd, log) = self.command(budget_ms);
        cmd.arg(format!("--screenshot={}", png.display()))
            .arg(format!("--window-size={width},{height}"))
            .arg(url);
        run_with_deadline(&mut cmd, &log, LIMIT, false)?;
        ensure!(png.exists(), "chromium wrote no screenshot of {url}");
        Ok(())
    }
}

/// Runs `cmd` with its stderr (and stdout, unless `capture`) in `log`,
/// killing it after `limit`; its stdout if captured.
pub fn run_with_deadline(
    cmd: &mut Command,
    log: &Path,
    limit: Duration,
    capture: bool,
) -> Result<Vec<u8>> {
    let shown = format!("{cmd:?}");
    let log_file = std::fs::File::create(log).with_context(|| format!("creating {log:?}"))?;
    let out_path = log.with_extension("out");
    let stdout = if capture {
        std::fs::File::create(&out_path).with_context(|| format!("creating {out_path:?}"))?
    } else {
        log_file.try_clone().context("duplicating the log handle")?
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("spawning {shown}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("waiting for the browser")? {
            if status.success() {
                return if capture {
                    std::fs::read(&out_path).with_context(|| format!("reading {out_path:?}"))
                } else {
                    Ok(Vec::new())
                };
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

pub struct Image {
    pub width: u32,
    pub height: u32,
    /// RGB, row by row.
    pub rgb: Vec<[u8; 3]>,
}

impl Image {
    /// Pixels within 6 of `want` in every channel, as (x, y).
    pub fn pixels_like(&self, want: [u8; 3]) -> Vec<(u32, u32)> {
        self.rgb
            .iter()
            .enumerate()
            .filter(|(_, p)| close(**p, want))
            .map(|(i, _)| (i as u32 % self.width, i as u32 / self.width))
            .collect()
    }

    /// Pixels that are not white.
    pub fn ink(&self) -> usize {
        self.rgb
            .iter()
            .filter(|p| !close(**p, [255, 255, 255]))
            .count()
    }
}

pub fn decode_png(path: &Path) -> Result<Image> {
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

/// `#rrggbb` as bytes.
pub fn hex_rgb(hex: &str) -> [u8; 3] {
    let hex = hex.trim_start_matches('#');
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).expect("a hex colour");
    [byte(0), byte(2), byte(4)]
}

pub fn close(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 6)
}

/// Copy `file` to `target/NAME` (or `$CARGO_TARGET_DIR/NAME`), for a human
/// to look at after the run; the copy's path.
pub fn keep_artifact(file: &Path, name: &str) -> Result<PathBuf> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir:?}"))?;
    let keep = dir.join(name);
    std::fs::copy(file, &keep).with_context(|| format!("copying {file:?} to {keep:?}"))?;
    Ok(keep)
}

/// The `<tr data-node="NAME" ...>...</tr>` rows of the dumped DOM.
pub fn rows(dom: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find("<tr data-node=\"") {
        let after = &rest[i + "<tr data-node=\"".len()..];
        let name = after[..after.find('"').unwrap_or(0)].to_string();
        let end = after
            .find("</tr>")
            .map_or(after.len(), |e| e + "</tr>".len());
        out.push((name, after[..end].to_string()));
        rest = &after[end..];
    }
    out
}

/// The `data-state` of the first badge in `html`.
pub fn badge_state(html: &str) -> Option<&str> {
    let at = html.find("data-state=\"")? + "data-state=\"".len();
    html[at..].split('"').next()
}

/// The element with `id="ID"`, up to its first closing tag.
pub fn by_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let Some(start) = dom.find(&format!("id=\"{id}\"")) else {
        return "";
    };
    let tail = &dom[start..];
    &tail[..tail.find("</").unwrap_or(tail.len())]
}
