//! Random 1 MiB reads inside the largest file of a gzip image, warm index and
//! cold cache: bytes fetched per read and latency, against downloading the
//! whole layer. Run through `scripts/bench`, which builds and serves the image:
//!
//!   LAZYBOOT_BENCH_IMAGE=127.0.0.1:5000/bench/big:t cargo bench --bench random_reads
//!
//! Without LAZYBOOT_BENCH_IMAGE it prints how to run it and exits.
//!
//! Besides the human-readable lines it prints `bench-result KEY=VALUE` lines
//! (bytes and milliseconds) that `scripts/bench` puts into its table.

use futures_util::StreamExt;
use lazyboot::cache::ChunkCache;
use lazyboot::layer::index::{IndexDetail, LayerIndex};
use lazyboot::layer::zran::BLOCK_SIZE;
use lazyboot::progress::Progress;
use lazyboot::reference::ImageRef;
use lazyboot::registry::{RegistryOptions, Source};
use std::sync::Arc;
use std::time::{Duration, Instant};

const READ: u32 = 1 << 20;
const READS: usize = 24;

fn main() -> anyhow::Result<()> {
    let Ok(image) = std::env::var("LAZYBOOT_BENCH_IMAGE") else {
        eprintln!("random_reads: set LAZYBOOT_BENCH_IMAGE (scripts/bench does); skipping");
        return Ok(());
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(&image))
}

async fn run(image: &str) -> anyhow::Result<()> {
    let reference: ImageRef = image.parse()?;
    let opts = RegistryOptions::default();
    let warm = tempfile::tempdir()?;
    let (source, resolved) = Source::open(&reference, &opts).await?;
    let cache = Arc::new(ChunkCache::open(warm.path(), 1 << 40)?);
    let t = Instant::now();
    let view = lazyboot::image::open_resolved(
        resolved.clone(),
        source.clone(),
        cache.clone(),
        Duration::from_secs(60),
        &Progress::hidden(),
    )
    .await?;
    let index_time = t.elapsed();
    // The index the view was built from, as the pass stored it.
    let stored = |digest: &lazyboot::digest::Digest| -> anyhow::Result<Vec<u8>> {
        cache
            .load_index(&LayerIndex::cache_name(digest))
            .ok_or_else(|| anyhow::anyhow!("the pass stored no index"))
    };

    let file = view
        .tree()
        .iter()
        .filter(|i| i.data.is_some())
        .max_by_key(|i| i.size)
        .expect("a file");
    let data = file.data.unwrap();
    let digest = &resolved.layers[data.layer as usize].digest;
    let layer = &LayerIndex::decode(&stored(digest)?, digest)?;
    let IndexDetail::Gzip(z) = &layer.detail else {
        anyhow::bail!("the largest file is not in a gzip layer");
    };
    let spans: Vec<u64> = z
        .checkpoints
        .windows(2)
        .map(|w| w[1].in_off - w[0].in_off)
        .collect();
    let max_span = spans.iter().copied().max().unwrap_or(layer.compressed_size);
    println!(
        "file {} bytes in layer {} ({} compressed, {} checkpoints, largest span {} bytes); index pass {:.2}s",
        file.size,
        layer.digest.short(),
        layer.compressed_size,
        z.checkpoints.len(),
        max_span,
        index_time.as_secs_f64()
    );

    // Whole-layer download: the baseline a non-lazy tool pays before reading.
    let t = Instant::now();
    let mut s = source.stream(&layer.digest, 0).await?;
    let mut n = 0u64;
    while let Some(b) = s.next().await {
        n += b?.len() as u64;
    }
    let full_time = t.elapsed();
    assert_eq!(n, layer.compressed_size);

    let mut rng_state = 0x9e3779b97f4a7c15u64;
    let mut bytes = Vec::new();
    let mut lat = Vec::new();
    for _ in 0..READS {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let off = rng_state % (file.size - READ as u64);
        // Cold cache, warm index: a fresh cache holding only the index.
        let cold = tempfile::tempdir()?;
        let cache = Arc::new(ChunkCache::open(cold.path(), 1 << 40)?);
        for l in &resolved.layers {
            cache.store_index(&LayerIndex::cache_name(&l.digest), &stored(&l.digest)?)?;
        }
        let v = lazyboot::image::open_resolved(
            resolved.clone(),
            source.clone(),
            cache,
            Duration::from_secs(60),
            &Progress::hidden(),
        )
        .await?;
        let before = source.stats();
        let t = Instant::now();
        let got = v.read(file.ino, off, READ).await?;
        lat.push(t.elapsed());
        bytes.push(source.stats().bytes - before.bytes);
        // Outside the timing: the bytes must match the warm view's, which
        // come from the digest-verified streaming pass.
        assert_eq!(got.len(), READ as usize);
        let want = view.read(file.ino, off, READ).await?;
        assert!(got == want, "read at {off} returned wrong bytes");
    }
    let mean_bytes = bytes.iter().sum::<u64>() as f64 / READS as f64;
    let max_bytes = *bytes.iter().max().unwrap();
    let mean_lat = lat.iter().sum::<Duration>().as_secs_f64() / READS as f64;
    lat.sort();
    let median_lat = lat[READS / 2].as_secs_f64();
    let full = full_time.as_secs_f64();
    let goal = max_span + READ as u64;
    println!("random 1 MiB reads, cold cache, warm index ({READS} reads):");
    println!("  bytes fetched per read: mean {mean_bytes:.0}, max {max_bytes}; goal <= span + read = {goal} (max/goal = {:.2})", max_bytes as f64 / goal as f64);
    println!(
        "  (ranges are whole {} KiB compressed blocks, the unit of verification: alignment adds up to a block at each end)",
        BLOCK_SIZE >> 10
    );
    println!(
        "  latency per read: mean {:.1} ms, median {:.1} ms; whole-layer download {:.1} ms ({} bytes): median ratio {:.3}",
        mean_lat * 1e3,
        median_lat * 1e3,
        full * 1e3,
        layer.compressed_size,
        median_lat / full
    );
    println!(
        "  fraction of the layer fetched per read: {:.4}",
        mean_bytes / layer.compressed_size as f64
    );
    println!("bench-result mean_bytes={mean_bytes:.0}");
    println!("bench-result max_bytes={max_bytes}");
    println!("bench-result goal_bytes={goal}");
    println!("bench-result mean_ms={:.1}", mean_lat * 1e3);
    println!("bench-result median_ms={:.1}", median_lat * 1e3);
    println!("bench-result full_ms={:.1}", full * 1e3);
    println!("bench-result layer_bytes={}", layer.compressed_size);
    Ok(())
}
