//! What a read costs in blob bytes: a read of a gzip layer fetches from the
//! checkpoint before it to its own end, a sequential reader fetches ahead in
//! the same request, and bytes fetched lately are not fetched again.

use crate::image::testimage::{open_view, LayerBuilder, TestImage};
use crate::noise::noise;

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn a_read_fetches_up_to_its_end_and_a_sequential_one_reads_ahead() {
    // Incompressible: blob offsets follow stream offsets.
    let big = noise(12 * MIB as usize, 7);
    let mut l = LayerBuilder::new();
    l.dir("d", 0o755).file("d/big", 0o644, &big);
    let img = TestImage::new(&[l.finish()]);
    drop(img.view().await);
    // Indexed; now without a single cached chunk.
    std::fs::remove_dir_all(img.cache_dir().join("chunks")).unwrap();
    let view = open_view(&img.reference, &img.cache_dir()).await;
    let tree = view.tree();
    let d = tree.lookup(tree.root().ino, "d").expect("d").ino;
    let ino = tree.lookup(d, "big").expect("d/big").ino;

    // Just after the checkpoint near 4 MiB: the request stops at the end of
    // the read's chunk instead of running on to the next checkpoint.
    let at = 4 * MIB + (300 << 10);
    let s0 = view.fetch_stats();
    let got = view.read(ino, at, 4096).await.unwrap();
    assert_eq!(&got[..], &big[at as usize..at as usize + 4096]);
    let s1 = view.fetch_stats();
    let first = s1.bytes - s0.bytes;
    assert_eq!(s1.requests - s0.requests, 1);
    assert!(first < 2 * MIB, "a 4 KiB read fetched {first} bytes");

    // The next chunk, its predecessor cached: a sequential reader. One
    // request runs to the next checkpoint, and the bytes from the
    // checkpoint that the first request fetched are not fetched again.
    let next = (at / (256 << 10) + 1) * (256 << 10);
    let got = view.read(ino, next, 4096).await.unwrap();
    assert_eq!(&got[..], &big[next as usize..next as usize + 4096]);
    let s2 = view.fetch_stats();
    let second = s2.bytes - s1.bytes;
    assert_eq!(s2.requests - s1.requests, 1);
    assert!(
        // To the chunk holding the checkpoint near 8 MiB, plus block
        // rounding; the prefix again would add 0.5 MiB.
        second < 8 * MIB + (512 << 10) - next,
        "fetched {second} bytes, some of them again"
    );
    // What it read ahead is cached: reading on costs no request.
    let later = next + MIB;
    let got = view.read(ino, later, 65536).await.unwrap();
    assert_eq!(&got[..], &big[later as usize..later as usize + 65536]);
    assert_eq!(view.fetch_stats().requests, s2.requests);
}

#[tokio::test]
async fn a_read_that_stops_inside_a_chunk_keeps_it_for_the_next_read() {
    let big = noise(2 * MIB as usize, 11);
    let mut l = LayerBuilder::new();
    l.file("big", 0o644, &big);
    let img = TestImage::new(&[l.finish()]);
    drop(img.view().await);
    // Every chunk on disk, none in memory yet.
    let view = open_view(&img.reference, &img.cache_dir()).await;
    let tree = view.tree();
    let ino = tree.lookup(tree.root().ino, "big").expect("big").ino;
    let layer = view.layer(0).digest.clone();

    // Over two chunks, stopping inside the second.
    let got = view.read(ino, 0, 300 << 10).await.unwrap();
    assert_eq!(&got[..], &big[..300 << 10]);
    // Its file goes: the next read, which starts in it, must not need it.
    let chunk = img
        .cache_dir()
        .join("chunks")
        .join(layer.hex())
        .join(format!("{:016x}", 1));
    std::fs::remove_file(&chunk).unwrap();
    let before = view.fetch_stats();
    let got = view.read(ino, 300 << 10, 10_000).await.unwrap();
    assert_eq!(&got[..], &big[300 << 10..(300 << 10) + 10_000]);
    assert_eq!(
        view.fetch_stats().requests,
        before.requests,
        "fetched again"
    );
}
