//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, run by
//! `scripts/fuzz`): one per parser of bytes that come from the network, a
//! registry or the disk. Each must return, whatever the input, without a
//! panic, an abort or an allocation the input did not pay for. Hidden from
//! the documentation: not part of the library's interface.

use crate::digest::Digest;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;

/// A DHCP datagram as the server receives it: validation, then everything
/// the server reads from a request.
pub fn dhcp_packet(data: &[u8]) {
    use crate::dhcp::options::{pxe_boot_file, ClientFacts};
    let Ok(msg) = crate::dhcp::packet::parse_request(data) else {
        return;
    };
    let _ = crate::dhcp::packet::message_type(&msg);
    if let Some(facts) = ClientFacts::from_message(&msg) {
        let _ = (facts.hint(), facts.sent_by_boot_firmware());
        let _ = (facts.is_pxe_client(), pxe_boot_file(&facts));
    }
}

/// One ONC RPC record: the call header and credentials, then the arguments
/// decoded as every NFSv3 procedure would decode them.
pub fn rpc_call(data: &[u8]) {
    let Ok(call) = crate::nfs::rpc::parse_call(data) else {
        return;
    };
    let _ = crate::nfs::rpc::parse_auth_sys(call.args);
    nfs_args(call.args);
}

/// `args` decoded as the arguments of each NFSv3 procedure.
pub fn nfs_args(args: &[u8]) {
    use crate::nfs::xdr::XdrIn;
    let _ = XdrIn::new(args).fh();
    let _ = XdrIn::new(args).setattr_args();
    let _ = XdrIn::new(args).diropargs();
    let _ = XdrIn::new(args).access_args();
    let _ = XdrIn::new(args).read_args();
    let _ = XdrIn::new(args).write_args();
    let _ = XdrIn::new(args).create_args();
    let _ = XdrIn::new(args).mkdir_args();
    let _ = XdrIn::new(args).symlink_args();
    let _ = XdrIn::new(args).mknod_args();
    let _ = XdrIn::new(args).rename_args();
    let _ = XdrIn::new(args).link_args();
    let _ = XdrIn::new(args).readdir_args();
    let _ = XdrIn::new(args).readdirplus_args();
    let _ = XdrIn::new(args).commit_args();
    let _ = XdrIn::new(args).opaque(usize::MAX);
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

/// A TCP byte stream cut into records by RPC record marking, as the NFS
/// and portmapper connections read it.
pub fn rpc_records(data: &[u8]) {
    runtime().block_on(async {
        let mut r = data;
        while let Ok(Some(record)) = crate::nfs::rpc::read_record(&mut r, 1 << 20).await {
            let _ = crate::nfs::rpc::parse_call(&record);
        }
    });
}

/// A portmapper call (every version and procedure), over UDP and TCP.
pub fn portmap_call(data: &[u8]) {
    static PM: OnceLock<crate::nfs::portmap::Portmap> = OnceLock::new();
    let pm = PM.get_or_init(|| crate::nfs::portmap::Portmap::new(Ipv4Addr::LOCALHOST, 111, 2049));
    let peer = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 700));
    let _ = pm.call(data, true, peer);
    let _ = pm.call(data, false, peer);
}

/// A layer's tar stream (ustar, PAX, GNU long names, sparse) as the
/// indexing pass reads its headers.
pub fn tar_entries(data: &[u8]) {
    let _ = crate::layer::tar_entries::read_entries(data, |_| {});
}

/// A layer index file (zran checkpoints, tar chunk hashes, eStargz
/// layouts) as the cache or a published index artifact gives it.
/// The input is taken both as the stored file (zstd) and as the bincode
/// inside one, so that mutations reach the index decoder itself.
pub fn layer_index(data: &[u8]) {
    static DIGEST: OnceLock<Digest> = OnceLock::new();
    let expected = DIGEST.get_or_init(|| Digest::of_bytes(b"fuzz"));
    let wrapped = zstd::bulk::compress(data, 1).unwrap_or_default();
    for stored in [data, &wrapped[..]] {
        if let Ok(index) = crate::layer::index::LayerIndex::decode(stored, expected) {
            let _ = index.chunk_count();
            let _ = index.encode();
        }
    }
}

/// An eStargz footer (the last bytes of the blob, whatever their length)
/// and the TOC region.
pub fn estargz(data: &[u8]) {
    use crate::layer::estargz::{parse_footer, parse_toc};
    let _ = parse_footer(data);
    let _ = parse_toc(data, 0, None);
}

/// A zstd layer blob as the indexing pass reads it; whatever it indexes,
/// its first chunk decodes again from the same bytes through the index.
pub fn zstd_layer(data: &[u8]) {
    use crate::layer::format::{ChunkSink, StreamIndexer};
    struct Discard;
    impl ChunkSink for Discard {
        fn put(&mut self, _: u64, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
    }
    let stream = crate::layer::zstd::ZstdStream;
    let Ok((detail, size)) = stream.index_stream(&mut &data[..], &mut Discard, &mut |_| {}) else {
        return;
    };
    let codec = detail.codec();
    if let Err(e) = codec.check_consistent(data.len() as u64, size) {
        panic!("the pass made an index it refuses: {e}");
    }
    if codec.chunk_count() > 0 {
        let f = codec.plan(0..1);
        let part = bytes::Bytes::copy_from_slice(&data[f.blob.start as usize..f.blob.end as usize]);
        if let Err(e) = codec.decode(&f, &part) {
            panic!("indexed bytes do not decode again: {e}");
        }
    }
}

/// A zstd:chunked blob: its footer, then (if the footer locates one) its
/// manifest; whatever that indexes, its first chunk is decoded (and checked)
/// from the blob's bytes without panicking.
pub fn zstd_chunked(data: &[u8]) {
    use crate::layer::format::TailIndexer;
    let tail = crate::layer::zstd_chunked::ZstdChunkedTail;
    let size = data.len() as u64;
    let from = size.saturating_sub(tail.tail_len()) as usize;
    let Ok(Some(region)) = tail.locate(&data[from..], size) else {
        return;
    };
    let Ok(indexed) = tail.index(
        &data[region.start as usize..],
        region.start,
        &Default::default(),
    ) else {
        return;
    };
    let codec = indexed.detail.codec();
    if codec.chunk_count() > 0 {
        let f = codec.plan(0..1);
        let part = bytes::Bytes::copy_from_slice(&data[f.blob.start as usize..f.blob.end as usize]);
        let _ = codec.decode(&f, &part);
    }
}

/// A manifest, image index or manifest list as a registry serves it.
pub fn oci_manifest(data: &[u8]) {
    let _ = crate::registry::manifest::parse(data);
}

/// A TFTP datagram: whatever parses encodes back to bytes that parse to
/// the same packet, and a request's options negotiate.
pub fn tftp_packet(data: &[u8]) {
    use crate::tftp::engine::{options, packet};
    let Ok(p) = packet::parse(data) else {
        return;
    };
    let bytes = packet::encode(&p);
    let again = packet::parse(&bytes).expect("an encoded packet parses");
    assert_eq!(again, p, "encode then parse changed the packet");
    if let packet::Packet::Rrq(r) = &p {
        let caps = options::Caps {
            block_size: 1468,
            window_size: 64,
        };
        let _ = options::negotiate(&r.options, u64::MAX, caps);
    }
}

/// A `serve` configuration file.
pub fn config_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::parse(text, "fuzz.toml");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The entry point of fuzz target `name`.
    fn target(name: &str) -> fn(&[u8]) {
        match name {
            "dhcp_packet" => super::dhcp_packet,
            "rpc_call" => super::rpc_call,
            "rpc_records" => super::rpc_records,
            "portmap_call" => super::portmap_call,
            "tar_entries" => super::tar_entries,
            "layer_index" => super::layer_index,
            "estargz" => super::estargz,
            "oci_manifest" => super::oci_manifest,
            "config_file" => super::config_file,
            "tftp_packet" => super::tftp_packet,
            "zstd_layer" => super::zstd_layer,
            "zstd_chunked" => super::zstd_chunked,
            other => panic!("no fuzz target {other}"),
        }
    }

    /// Every input under `dir/TARGET/` through its target; how many.
    fn run_all(dir: &Path) -> usize {
        let mut ran = 0;
        for t in std::fs::read_dir(dir).unwrap() {
            let t = t.unwrap();
            let f = target(&t.file_name().to_string_lossy());
            for input in std::fs::read_dir(t.path()).unwrap() {
                f(&std::fs::read(input.unwrap().path()).unwrap());
                ran += 1;
            }
        }
        ran
    }

    /// Every input a fuzz target once crashed on (`fuzz/regressions/`: an
    /// allocation as large as a length field said, a dhcproto panic) and
    /// every seed runs through its target; a crash aborts this test.
    #[test]
    fn inputs_that_once_crashed_a_fuzz_target_and_the_seeds_pass() {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        assert!(run_all(&fuzz.join("regressions")) >= 2);
        assert!(run_all(&fuzz.join("seeds")) >= 40);
    }

    /// The layer index seed is an index of this version (its bincode, as
    /// the target takes it): a seed the decoder refuses at once would leave
    /// the fuzzer far from the code it is for.
    #[test]
    fn the_layer_index_seed_decodes() {
        let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/layer_index/gzip-zran");
        let raw = std::fs::read(seed).unwrap();
        let stored = zstd::bulk::compress(&raw, 1).unwrap();
        let index = crate::layer::index::LayerIndex::decode(
            &stored,
            &crate::digest::Digest::of_bytes(b"fuzz"),
        )
        .expect("the seed decodes (bump its version byte and append new fields)");
        assert!(index.chunk_count() > 0);
    }
}
