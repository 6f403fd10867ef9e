use super::*;
use std::collections::BTreeMap;

struct Keep(BTreeMap<u64, Vec<u8>>);
impl ChunkSink for Keep {
    fn put(&mut self, id: u64, data: &[u8]) -> io::Result<()> {
        assert!(
            self.0.insert(id, data.to_vec()).is_none(),
            "chunk {id} twice"
        );
        Ok(())
    }
}

/// A tar of about 1.3 MB: six chunks, files across chunk borders.
fn sample_tar() -> Vec<u8> {
    let noise = |n: u32, seed: u32| -> Vec<u8> {
        (0..n)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
            .collect()
    };
    let mut t = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        t.append_data(&mut h, path, data).unwrap();
    };
    add("etc", tar::EntryType::Directory, 0o755, b"", None);
    add(
        "etc/hostname",
        tar::EntryType::Regular,
        0o644,
        b"zstd\n",
        None,
    );
    add(
        "big",
        tar::EntryType::Regular,
        0o644,
        &noise(700_000, 1),
        None,
    );
    add("link", tar::EntryType::Symlink, 0o777, b"", Some("big"));
    add(
        "other",
        tar::EntryType::Regular,
        0o600,
        &noise(600_000, 7),
        None,
    );
    t.into_inner().unwrap()
}

fn compress(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

/// A skippable frame (as zstd:chunked writes its metadata in).
fn skippable(payload: &[u8]) -> Vec<u8> {
    let mut f = 0x184D_2A50u32.to_le_bytes().to_vec();
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn index(blob: &[u8]) -> Result<(ZstdFrames, Keep, Vec<String>), String> {
    let mut keep = Keep(BTreeMap::new());
    let mut names = Vec::new();
    let (detail, size) =
        ZstdStream.index_stream(&mut &blob[..], &mut keep, &mut |e| names.push(e.path))?;
    let IndexDetail::Zstd(z) = detail else {
        panic!("not a zstd index")
    };
    assert_eq!(size, z.uncompressed_size);
    Ok((z, keep, names))
}

/// Every run of chunks, read back through plan + decode from the blob
/// alone, equals what the indexing pass kept.
fn check_reads(z: &ZstdFrames, keep: &Keep, blob: &[u8]) {
    let n = z.chunk_count();
    for start in 0..n {
        for end in start + 1..=n.min(start + 3) {
            let f = z.plan(start..end);
            assert!(f.blob.end <= blob.len() as u64, "{f:?}");
            let got = z
                .decode(
                    &f,
                    &Bytes::copy_from_slice(&blob[f.blob.start as usize..f.blob.end as usize]),
                )
                .unwrap_or_else(|e| panic!("{start}..{end}: {e}"));
            let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
            assert_eq!(
                ids,
                (start..z.extent(&(start..end)).end).collect::<Vec<_>>()
            );
            assert!(ids.len() as u64 >= end - start);
            for (id, data) in got {
                assert_eq!(&data[..], &keep.0[&id][..], "chunk {id}");
            }
        }
    }
}

#[test]
fn one_frame_is_indexed_and_read_back_chunk_by_chunk() {
    let tar = sample_tar();
    let blob = compress(&tar);
    let (z, keep, names) = index(&blob).unwrap();
    assert_eq!(names, ["etc", "etc/hostname", "big", "link", "other"]);
    assert_eq!(keep.0.values().flatten().copied().collect::<Vec<_>>(), tar);
    assert_eq!(z.frames, [FrameStart { blob: 0, out: 0 }]);
    assert_eq!(z.compressed_size, blob.len() as u64);
    z.check_consistent(blob.len() as u64, tar.len() as u64)
        .unwrap();
    check_reads(&z, &keep, &blob);
    // A read of the first chunk brings the rest of its frame.
    assert_eq!(z.extent(&(0..1)), 0..z.chunk_count());
    assert_eq!(z.fill_runs(), vec![0..z.chunk_count()]);
}

#[test]
fn several_frames_and_skippable_ones_start_reads_at_their_frame() {
    let tar = sample_tar();
    let cuts = [0, 300_000, 900_001, tar.len()];
    let mut blob = Vec::new();
    for (i, w) in cuts.windows(2).enumerate() {
        if i == 1 {
            blob.extend(skippable(b"metadata"));
        }
        blob.extend(compress(&tar[w[0]..w[1]]));
    }
    let (z, keep, _) = index(&blob).unwrap();
    assert_eq!(keep.0.values().flatten().copied().collect::<Vec<_>>(), tar);
    let outs: Vec<u64> = z.frames.iter().map(|f| f.out).collect();
    assert_eq!(outs, [0, 300_000, 300_000, 900_001]);
    z.check_consistent(blob.len() as u64, tar.len() as u64)
        .unwrap();
    check_reads(&z, &keep, &blob);
    // Chunk 4 (from 1 MiB) lies in the last frame: decoding starts there.
    let f = z.plan(4..5);
    assert_eq!(f.blob.start, z.frames[3].blob);
    // A read in the first frame brings its chunks and stops before the
    // next frame's first whole chunk (300,000 bytes: chunk 1 is split).
    assert_eq!(z.extent(&(0..1)), 0..1);
    let f = z.plan(0..1);
    assert!(f.blob.end < z.frames[1].blob + 64, "{f:?}");
    assert_eq!(z.fetch_group(4), 3);
    let runs = z.fill_runs();
    assert_eq!(
        runs.iter().map(|r| r.end - r.start).sum::<u64>(),
        z.chunk_count()
    );
}

#[test]
fn wrong_bytes_are_refused() {
    let tar = sample_tar();
    let blob = compress(&tar);
    let (mut z, _, _) = index(&blob).unwrap();
    let f = z.plan(2..3);
    let part = Bytes::copy_from_slice(&blob[f.blob.start as usize..f.blob.end as usize]);
    // A chunk whose hash is not the recorded one.
    z.chunk_sha256[2][0] ^= 1;
    let e = z.decode(&f, &part).unwrap_err();
    assert!(e.contains("chunk 2"), "{e}");
    z.chunk_sha256[2][0] ^= 1;
    // Corrupted compressed bytes: a zstd error (its checksum or syntax) or
    // a hash mismatch, never chunks.
    let mut bad = part.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    assert!(z.decode(&f, &Bytes::from(bad)).is_err());
    // Too few bytes to reach the chunk.
    let short = part.slice(..part.len() / 3);
    let e = z.decode(&f, &short).unwrap_err();
    assert!(e.contains("ended"), "{e}");
}

#[test]
fn a_cut_or_corrupt_stream_fails_the_pass() {
    let blob = compress(&sample_tar());
    let e = index(&blob[..blob.len() - 10])
        .err()
        .expect("cut stream indexed");
    assert!(
        e.contains("zstd") || e.contains("EOF") || e.contains("eof"),
        "{e}"
    );
    let e = index(&[]).err().expect("an empty blob indexed");
    assert!(e.contains("no zstd frame"), "{e}");
    let mut bad = blob.clone();
    bad[0] ^= 1;
    assert!(
        index(&bad).is_err(),
        "a blob without the zstd magic was indexed"
    );
}

#[test]
fn inconsistent_tables_are_refused() {
    let tar = sample_tar();
    let blob = compress(&tar);
    let (z, _, _) = index(&blob).unwrap();
    let (c, t) = (blob.len() as u64, tar.len() as u64);
    let mut w = z.clone();
    w.frames.clear();
    assert!(w.check_consistent(c, t).is_err());
    let mut w = z.clone();
    w.chunk_input_end.pop();
    assert!(w.check_consistent(c, t).is_err());
    let mut w = z.clone();
    *w.chunk_input_end.last_mut().unwrap() = c + 1;
    assert!(w.check_consistent(c, t).is_err());
    assert!(z.check_consistent(c + 1, t).is_err());
}
