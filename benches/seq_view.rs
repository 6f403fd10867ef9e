//! Sequential read of the largest file straight through `ImageView::read`, no
//! FUSE, with every chunk already in the cache: what lazyboot's own read path
//! (chunk files on disk, checksum, assembly) costs, apart from the kernel.
//! `scripts/bench` pulls the image into a cache, drops the page cache and runs
//!
//!   LAZYBOOT_BENCH_IMAGE=127.0.0.1:5000/bench/big:t LAZYBOOT_BENCH_CACHE=DIR \
//!       cargo bench --bench seq_view
//!
//! The file is read twice in 256 KiB pieces (the size of the FUSE reads the
//! kernel sends): first as the page cache was left (dropped by the caller:
//! chunk files come from disk), then again (chunk files now in the page
//! cache, so only the CPU path is left). Prints `bench-result KEY=VALUE`
//! lines for `scripts/bench`. Without both variables it explains and exits.

use lazyboot::image::ViewOptions;
use lazyboot::progress::Progress;
use lazyboot::reference::ImageRef;
use lazyboot::registry::RegistryOptions;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PIECE: u32 = 256 << 10;

fn main() -> anyhow::Result<()> {
    let (Ok(image), Ok(cache)) = (
        std::env::var("LAZYBOOT_BENCH_IMAGE"),
        std::env::var("LAZYBOOT_BENCH_CACHE"),
    ) else {
        eprintln!(
            "seq_view: set LAZYBOOT_BENCH_IMAGE and LAZYBOOT_BENCH_CACHE (a cache the image \
             was pulled into; scripts/bench does); skipping"
        );
        return Ok(());
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(&image, PathBuf::from(cache)))
}

async fn run(image: &str, cache_dir: PathBuf) -> anyhow::Result<()> {
    let reference: ImageRef = image.parse()?;
    let opts = ViewOptions {
        cache_dir,
        cache_size: 1 << 40,
        registry: RegistryOptions::default(),
        read_timeout: Duration::from_secs(60),
    };
    let view = lazyboot::image::open(&reference, &opts, &Progress::hidden()).await?;
    let file = view
        .tree()
        .iter()
        .filter(|i| i.data.is_some())
        .max_by_key(|i| i.size)
        .expect("a file");
    let before = view.fetch_stats();
    let mut results = Vec::new();
    for pass in ["cold_page_cache", "warm_page_cache"] {
        let t = Instant::now();
        let mut off = 0u64;
        while off < file.size {
            let got = view.read(file.ino, off, PIECE).await?;
            anyhow::ensure!(!got.is_empty(), "short read at {off} of {}", file.size);
            off += got.len() as u64;
        }
        let mibs = file.size as f64 / 1048576.0 / t.elapsed().as_secs_f64();
        println!(
            "view.read, {} KiB sequential, {pass}: {mibs:.1} MiB/s ({} bytes)",
            PIECE >> 10,
            file.size
        );
        results.push((pass, mibs));
    }
    let fetched = view.fetch_stats().bytes - before.bytes;
    if fetched > 0 {
        println!("warning: the cache was not warm: {fetched} bytes fetched from the registry");
    }
    for (pass, mibs) in results {
        println!("bench-result {pass}_mibs={mibs:.1}");
    }
    println!("bench-result fetched_bytes={fetched}");
    Ok(())
}
