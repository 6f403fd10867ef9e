//! The image view used as a library against a real registry: single-flight
//! fetches, coalesced range requests, background fill.

mod common;

use anyhow::Result;
use common::{shared_fixture, Registry};
use lazyboot::cache::ChunkCache;
use lazyboot::image::ImageView;
use lazyboot::progress::Progress;
use lazyboot::reference::ImageRef;
use lazyboot::registry::{RegistryOptions, Source};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A view over `image` whose indexes are built but whose chunk cache is empty.
async fn cold_view(image: &str, cache_dir: &Path) -> Result<Arc<ImageView>> {
    let reference: ImageRef = image.parse()?;
    let opts = RegistryOptions::default();
    {
        let (source, resolved) = Source::open(&reference, &opts).await?;
        let cache = Arc::new(ChunkCache::open(cache_dir, 1 << 40)?);
        lazyboot::image::open_resolved(
            resolved,
            source,
            cache,
            Duration::from_secs(30),
            &Progress::hidden(),
        )
        .await?;
    }
    std::fs::remove_dir_all(cache_dir.join("chunks"))?;
    let (source, resolved) = Source::open(&reference, &opts).await?;
    let cache = Arc::new(ChunkCache::open(cache_dir, 1 << 40)?);
    Ok(lazyboot::image::open_resolved(
        resolved,
        source,
        cache,
        Duration::from_secs(30),
        &Progress::hidden(),
    )
    .await?)
}

fn largest_file(view: &ImageView) -> (u64, u64) {
    let f = view
        .tree()
        .iter()
        .filter(|i| i.data.is_some())
        .max_by_key(|i| i.size)
        .unwrap();
    (f.ino, f.size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_one_chunk_fetch_it_once() -> Result<()> {
    if !common::require_root_and_tools("concurrent_reads_of_one_chunk_fetch_it_once", &[]) {
        return Ok(());
    }
    let reg = Registry::start()?;
    let fx = shared_fixture()?;
    fx.push(&reg, "view/single:t")?;
    let tmp = tempfile::tempdir()?;
    let view = cold_view(&reg.reference("view/single:t"), tmp.path()).await?;
    let (ino, size) = largest_file(&view);
    let offset = size / 2;
    let before = view.fetch_stats();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let v = view.clone();
        tasks.push(tokio::spawn(async move { v.read(ino, offset, 4096).await }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await??);
    }
    let after = view.fetch_stats();
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(results[0].len(), 4096);
    assert_eq!(
        after.requests - before.requests,
        1,
        "eight readers, one range request"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_over_many_missing_chunks_is_one_range_request() -> Result<()> {
    if !common::require_root_and_tools("a_read_over_many_missing_chunks_is_one_range_request", &[])
    {
        return Ok(());
    }
    let reg = Registry::start()?;
    let fx = shared_fixture()?;
    fx.push(&reg, "view/coalesce:t")?;
    let tmp = tempfile::tempdir()?;
    let view = cold_view(&reg.reference("view/coalesce:t"), tmp.path()).await?;
    let (ino, size) = largest_file(&view);
    let before = view.fetch_stats();
    // 3 MiB spans a dozen 256 KiB chunks.
    let got = view.read(ino, size / 3, 3 << 20).await?;
    let after = view.fetch_stats();
    assert_eq!(got.len(), 3 << 20);
    assert_eq!(after.requests - before.requests, 1);
    let want = std::fs::read(fx.rootfs.join("data/large.bin"))?;
    assert_eq!(
        &got[..],
        &want[(size / 3) as usize..(size / 3) as usize + (3 << 20)]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_fill_makes_the_view_independent_of_the_registry() -> Result<()> {
    if !common::require_root_and_tools(
        "background_fill_makes_the_view_independent_of_the_registry",
        &[],
    ) {
        return Ok(());
    }
    let mut reg = Registry::start()?;
    let fx = shared_fixture()?;
    fx.push(&reg, "view/fill:t")?;
    let tmp = tempfile::tempdir()?;
    let view = cold_view(&reg.reference("view/fill:t"), tmp.path()).await?;
    view.fill_all(true, &Progress::hidden()).await?;
    reg.stop();
    let mut checked = 0;
    for inode in view.tree().iter().filter(|i| i.data.is_some()) {
        let got = view.read(inode.ino, 0, inode.size as u32).await?;
        assert_eq!(got.len() as u64, inode.size);
        checked += 1;
    }
    assert!(checked > 20);
    let (ino, size) = largest_file(&view);
    let got = view.read(ino, 0, size as u32).await?;
    assert_eq!(
        &got[..],
        &std::fs::read(fx.rootfs.join("data/large.bin"))?[..]
    );
    Ok(())
}
