//! A boot storm against one `lazyboot serve`: 200 simulated nodes, each
//! with its own MAC and leased address, replay the recorded boot of the
//! QEMU boot image (integration/fixtures/boot-profile.json: DHCP, TFTP of
//! boot.ipxe and the kernel and initrd it names, NFS MOUNT and the root's
//! calls) all at once on a cache that holds the layer indexes and no
//! chunk. Every node must finish, every byte read must be the image's, and
//! the registry must send no more for 200 nodes than for one: each chunk is
//! fetched once however many nodes wait for it. Nothing is timed.

mod common;

use common::storm::{run_fleet, FleetRun};
use common::storm_lab::{index_only_cache, StormLab};
use common::*;
use std::time::Duration;

const NODES: usize = 200;
/// Each node's deadline, so the run stops by itself: generous, as the
/// storm takes about a minute on 2 cores with nothing else running.
const DEADLINE: Duration = Duration::from_secs(240);

fn summary(what: &str, r: &FleetRun) -> String {
    format!(
        "{what}: {}/{} booted in {:.1} s wall (p50 {:.2} s, max {:.2} s); failures: {:?}",
        r.ok(),
        r.nodes.len(),
        r.wall_secs,
        r.quantile(0.5).unwrap_or(f64::NAN),
        r.quantile(1.0).unwrap_or(f64::NAN),
        r.failures()
    )
}

#[test]
fn two_hundred_nodes_boot_at_once_and_each_chunk_is_fetched_once() {
    let mut tools = vec!["ip"];
    tools.extend_from_slice(common::qemu::BOOT_IMAGE_TOOLS);
    if !require_root_and_tools(
        "two_hundred_nodes_boot_at_once_and_each_chunk_is_fetched_once",
        &tools,
    ) {
        return;
    }
    // Kept when the test fails: the servers' logs are in it.
    let work = tempfile::Builder::new()
        .prefix("fleet-storm-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    eprintln!(
        "work dir {} (kept if the test fails)",
        work.path().display()
    );
    let work = work.keep();
    let mut lab = StormLab::new(&work).unwrap();

    // The image's first boot ever streams every layer to index it: that
    // fills the cache whatever is read, so the comparison starts after it.
    let first = work.join("cache-first");
    let servers = lab.lazyboot("first", &first).unwrap();
    let fleet = lab.fleet(1, 0.0, DEADLINE);
    let r = run_fleet(&fleet, &servers.target, &lab.rec).unwrap();
    servers.stop().unwrap();
    assert_eq!(r.ok(), 1, "{}", summary("first boot", &r));

    let one_cache = work.join("cache-one");
    index_only_cache(&first, &one_cache).unwrap();
    let servers = lab.lazyboot("one", &one_cache).unwrap();
    let fleet = lab.fleet(1, 0.0, DEADLINE);
    let one = run_fleet(&fleet, &servers.target, &lab.rec).unwrap();
    let one_bytes = servers.registry_bytes().unwrap().unwrap();
    servers.stop().unwrap();
    eprintln!("{}; registry {one_bytes} B", summary("one node", &one));
    assert_eq!(one.ok(), 1, "{}", summary("one node", &one));
    assert!(one_bytes > 0, "a cold cache fetched nothing");

    let storm_cache = work.join("cache-storm");
    index_only_cache(&first, &storm_cache).unwrap();
    let servers = lab.lazyboot("storm", &storm_cache).unwrap();
    // Under this load a copy of a node's request can reach the server
    // after the node has acknowledged the first answer. The nodes ignore
    // DATA from any port but their transfer's first one, as iPXE does, so
    // a server that started a second transfer for that copy fails them.
    let fleet = lab.fleet(NODES, 0.0, DEADLINE);
    let storm = run_fleet(&fleet, &servers.target, &lab.rec).unwrap();
    let storm_bytes = servers.registry_bytes().unwrap().unwrap();
    servers.stop().unwrap();
    eprintln!("{}; registry {storm_bytes} B", summary("storm", &storm));

    assert_eq!(storm.ok(), NODES, "{}", summary("storm", &storm));
    let want = lab.rec.nfs_bytes + lab.rec.tftp_bytes;
    for n in &storm.nodes {
        // Each node read what the recorded boot read (boot.ipxe differs by
        // node name: its size is not compared).
        assert!(
            n.nfs_bytes == lab.rec.nfs_bytes && n.tftp_bytes + 1024 > want - lab.rec.nfs_bytes,
            "node {} read {} NFS + {} TFTP bytes, the recording {} + {}",
            n.mac,
            n.nfs_bytes,
            n.tftp_bytes,
            lab.rec.nfs_bytes,
            lab.rec.tftp_bytes
        );
    }
    assert_eq!(
        storm_bytes, one_bytes,
        "the registry sent {storm_bytes} B for {NODES} nodes and {one_bytes} B for one"
    );
    drop(lab);
    std::fs::remove_dir_all(&work).unwrap();
}
