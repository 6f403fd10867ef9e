use super::*;
use crate::layer::format::{ChunkMap, Codec};
use crate::layer::{Entry, EntryKind};
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::HashMap;

const MTIME: &str = "2020-09-13T12:26:40Z";
const MTIME_UNIX: i64 = 1_600_000_000;

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn skippable(payload: &[u8]) -> Vec<u8> {
    let mut f = SKIPPABLE_MAGIC.to_le_bytes().to_vec();
    f.extend((payload.len() as u32).to_le_bytes());
    f.extend(payload);
    f
}

fn footer(pos: ManifestPosition) -> Vec<u8> {
    let mut payload = Vec::new();
    for n in [pos.offset, pos.length, pos.uncompressed, pos.kind] {
        payload.extend(n.to_le_bytes());
    }
    payload.extend(FOOTER_MAGIC);
    skippable(&payload)
}

/// A blob laid out as podman 4.3 writes one: a frame per tar header run
/// (here stand-in bytes), a frame per chunk, the manifest, the footer.
struct Built {
    blob: Vec<u8>,
    manifest_at: u64,
    pos: ManifestPosition,
    files: HashMap<&'static str, Vec<u8>>,
}

impl Built {
    fn annotations(&self) -> BTreeMap<String, String> {
        let m = self.pos.offset as usize;
        let compressed = &self.blob[m..m + self.pos.length as usize];
        BTreeMap::from([
            (CHECKSUM_ANNOTATIONS[0].to_string(), sha(compressed)),
            (POSITION_ANNOTATIONS[0].to_string(), self.pos.to_string()),
        ])
    }

    fn tail(&self) -> &[u8] {
        &self.blob[self.blob.len() - TAIL_LEN as usize..]
    }

    fn region(&self) -> &[u8] {
        &self.blob[self.manifest_at as usize..]
    }
}

fn frame(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 3).unwrap()
}

/// Bytes zstd cannot shrink much, so that chunks are frames of some size.
fn noise(n: usize) -> Vec<u8> {
    (0..n as u64)
        .map(|i| Sha256::digest(i.to_le_bytes())[0])
        .collect()
}

/// `(entry JSON without offsets, file data cut into chunks)`.
fn specs() -> Vec<(Value, Vec<Vec<u8>>)> {
    let big = noise(10_000);
    let big_chunks = vec![
        big[..4096].to_vec(),
        big[4096..8192].to_vec(),
        big[8192..].to_vec(),
    ];
    vec![
        (json!({"type": "dir", "name": "./", "mode": 493}), vec![]),
        (
            json!({"type": "dir", "name": "etc/", "mode": 493, "uid": 1000, "gid": 100,
            "xattrs": {"user.dir": "b24tYS1kaXI="}}),
            vec![],
        ),
        (
            json!({"type": "reg", "name": "etc/small", "mode": 2541}),
            vec![b"hello\n".to_vec()],
        ),
        (
            json!({"type": "reg", "name": "big", "mode": 420}),
            big_chunks,
        ),
        (json!({"type": "reg", "name": "empty", "mode": 384}), vec![]),
        (
            json!({"type": "reg", "name": ".wh.gone", "mode": 420}),
            vec![],
        ),
        (
            json!({"type": "symlink", "name": "link", "linkName": "../etc/small", "mode": 511}),
            vec![],
        ),
        (
            json!({"type": "hardlink", "name": "etc/hard", "linkName": "etc/small"}),
            vec![],
        ),
        (
            json!({"type": "char", "name": "null", "mode": 438, "devMajor": 1, "devMinor": 3}),
            vec![],
        ),
        (json!({"type": "fifo", "name": "fifo", "mode": 420}), vec![]),
    ]
}

/// Build a blob; `edit` may change the manifest's entries before it is
/// written.
fn build_with(edit: impl FnOnce(&mut Vec<Value>)) -> Built {
    let mut blob = Vec::new();
    let mut entries = Vec::new();
    let mut files = HashMap::new();
    for (mut e, chunks) in specs() {
        blob.extend(frame(b"tar header stand-in"));
        e["modtime"] = json!(MTIME);
        let whole: Vec<u8> = chunks.concat();
        if e["type"] == "reg" {
            e["size"] = json!(whole.len());
            files.insert(
                e["name"].as_str().unwrap().to_string().leak() as &str,
                whole.clone(),
            );
        }
        if chunks.is_empty() {
            entries.push(e);
            continue;
        }
        e["digest"] = json!(sha(&whole));
        let mut chunk_entries = Vec::new();
        let mut file_offset = 0;
        for (i, c) in chunks.iter().enumerate() {
            let offset = blob.len();
            blob.extend(frame(c));
            if i == 0 {
                e["offset"] = json!(offset);
                if chunks.len() > 1 {
                    e["chunkSize"] = json!(c.len());
                    e["chunkDigest"] = json!(sha(c));
                }
            } else {
                chunk_entries.push(json!({"type": "chunk", "name": e["name"], "offset": offset,
                    "chunkSize": c.len(), "chunkOffset": file_offset, "chunkDigest": sha(c)}));
            }
            file_offset += c.len();
        }
        e["endOffset"] = json!(blob.len());
        entries.push(e);
        entries.extend(chunk_entries);
    }
    blob.extend(frame(&[0u8; 1024]));
    edit(&mut entries);
    let json = serde_json::to_vec(&json!({"version": 1, "entries": entries})).unwrap();
    let compressed = frame(&json);
    let manifest_at = blob.len() as u64;
    blob.extend(skippable(&compressed));
    let pos = ManifestPosition {
        offset: manifest_at + 8,
        length: compressed.len() as u64,
        uncompressed: json.len() as u64,
        kind: 1,
    };
    blob.extend(footer(pos));
    Built {
        blob,
        manifest_at,
        pos,
        files,
    }
}

fn build() -> Built {
    build_with(|_| {})
}

fn index_of(b: &Built) -> Indexed {
    let range = ZstdChunkedTail
        .locate(b.tail(), b.blob.len() as u64)
        .unwrap()
        .expect("a zstd:chunked footer");
    assert_eq!(range, b.manifest_at..b.blob.len() as u64);
    ZstdChunkedTail
        .index(
            &b.blob[range.start as usize..],
            range.start,
            &b.annotations(),
        )
        .unwrap()
}

fn detail(i: &Indexed) -> &ZstdChunkedIndex {
    match &i.detail {
        IndexDetail::ZstdChunked(z) => z,
        other => panic!("not a zstd:chunked index: {other:?}"),
    }
}

/// Every byte of `e` read through the codec, one planned fetch per chunk.
fn read_file(b: &Built, index: &ZstdChunkedIndex, e: &Entry) -> Result<Vec<u8>, String> {
    let span = index.file_span(e, 0, e.size);
    let mut out = Vec::new();
    for id in span.ids {
        let fetch = index.plan(id..id + 1);
        let bytes =
            Bytes::copy_from_slice(&b.blob[fetch.blob.start as usize..fetch.blob.end as usize]);
        for (got, data) in index.decode(&fetch, &bytes)? {
            assert_eq!(got, id);
            assert_eq!(
                data.len() as u64,
                index.chunk_range(id).end - index.chunk_range(id).start
            );
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

#[test]
fn the_whole_blob_is_one_zstd_stream_of_the_frames() {
    // What makes the layer readable as plain zstd too: the skippable
    // frames decode to nothing.
    let b = build();
    let all = super::super::zstd::decode_prefix(&b.blob, u64::MAX).unwrap();
    assert!(all.starts_with(b"tar header stand-in"));
    assert!(all.ends_with(&[0u8; 1024]));
}

#[test]
fn indexes_entries_and_reads_every_file_chunk_by_chunk() {
    let b = build();
    let indexed = index_of(&b);
    assert_eq!(indexed.format, LayerFormat::ZstdChunked);
    assert_eq!(indexed.uncompressed_size, 10_006);
    let index = detail(&indexed);
    assert_eq!(index.toc_offset, b.manifest_at);
    let by_path: HashMap<&str, &Entry> = indexed
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e))
        .collect();
    let paths: Vec<&str> = indexed.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "",
            "etc",
            "etc/small",
            "big",
            "empty",
            ".wh.gone",
            "link",
            "etc/hard",
            "null",
            "fifo"
        ]
    );
    let etc = by_path["etc"];
    assert_eq!(
        (etc.kind, etc.mode, etc.uid, etc.gid),
        (EntryKind::Dir, 0o755, 1000, 100)
    );
    assert_eq!(
        etc.xattrs,
        vec![("user.dir".to_string(), b"on-a-dir".to_vec())]
    );
    assert_eq!(by_path["etc/small"].mode, 0o4755);
    assert_eq!(by_path["etc/small"].mtime, MTIME_UNIX);
    assert_eq!(by_path["link"].link_target.as_deref(), Some("../etc/small"));
    assert_eq!(by_path["etc/hard"].kind, EntryKind::Hardlink);
    assert_eq!(
        by_path["etc/hard"].link_target.as_deref(),
        Some("etc/small")
    );
    let null = by_path["null"];
    assert_eq!(
        (null.kind, null.dev_major, null.dev_minor),
        (EntryKind::CharDevice, 1, 3)
    );
    assert_eq!(by_path["fifo"].kind, EntryKind::Fifo);
    assert_eq!(by_path[".wh.gone"].kind, EntryKind::File);
    assert_eq!(by_path["empty"].data, u64::MAX);

    // big: 3 chunks, each its own frame, each with a digest; etc/small: one
    // chunk checked against the file's digest.
    assert_eq!(index.chunk_count(), 4);
    assert!(index
        .chunks
        .iter()
        .all(|c| c.digest.is_some() && c.inner_offset == 0));
    for pair in index.chunks.windows(2) {
        assert!(pair[0].comp_end <= pair[1].comp_start, "{pair:?}");
    }
    for (path, data) in &b.files {
        let e = by_path[path];
        if e.size > 0 {
            assert_eq!(&read_file(&b, index, e).unwrap(), data, "{path}");
        }
    }
    // A read of the small file fetches its frame alone.
    let small = index.plan(0..1);
    assert_eq!(
        small.blob,
        index.chunks[0].comp_start..index.chunks[0].comp_end
    );
    assert!(small.blob.end - small.blob.start < 64);
    // A run of chunks is one request over their frames.
    assert_eq!(index.plan(1..4).blob.start, index.chunks[1].comp_start);
    assert_eq!(index.plan(1..4).blob.end, index.chunks[3].comp_end);
}

#[test]
fn a_tampered_chunk_is_an_error_never_data() {
    let b = build();
    let indexed = index_of(&b);
    let index = detail(&indexed);
    // Replace big's middle chunk by a valid frame of other bytes of the same
    // length: the zstd layer decodes, the digest check refuses it.
    let c = &index.chunks[2];
    let mut other = frame(&vec![b'x'; c.size as usize]);
    let room = (c.comp_end - c.comp_start) as usize;
    assert!(other.len() <= room);
    other.resize(room, 0);
    let mut blob = b.blob.clone();
    blob[c.comp_start as usize..c.comp_end as usize].copy_from_slice(&other);
    let fetch = index.plan(2..3);
    let bytes = Bytes::copy_from_slice(&blob[fetch.blob.start as usize..fetch.blob.end as usize]);
    let err = index.decode(&fetch, &bytes).unwrap_err();
    assert!(err.contains("failed its digest check"), "{err}");

    // Garbage and a cut frame are errors too.
    let mut chunk = c.clone();
    let err = decode_chunk(&chunk, b"not zstd at all").unwrap_err();
    assert!(matches!(err, ZstdChunkedError::ChunkRead { .. }), "{err}");
    let whole = &b.blob[c.comp_start as usize..c.comp_end as usize];
    let err = decode_chunk(&chunk, &whole[..whole.len() / 2]).unwrap_err();
    assert!(
        matches!(
            err,
            ZstdChunkedError::ChunkTruncated { .. } | ZstdChunkedError::ChunkRead { .. }
        ),
        "{err}"
    );
    chunk.digest = None;
    let err = decode_chunk(&chunk, whole).unwrap_err();
    assert!(
        matches!(err, ZstdChunkedError::ChunkNoDigest { .. }),
        "{err}"
    );
}

#[test]
fn plain_zstd_blobs_have_no_footer() {
    let blob = frame(&noise(4000));
    let tail = &blob[blob.len() - TAIL_LEN as usize..];
    assert_eq!(
        ZstdChunkedTail.locate(tail, blob.len() as u64).unwrap(),
        None
    );
}

fn footer_error(edit: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut blob = build().blob;
    edit(&mut blob);
    let tail = &blob[blob.len() - TAIL_LEN as usize..];
    ZstdChunkedTail.locate(tail, blob.len() as u64).unwrap_err()
}

#[test]
fn malformed_footers_are_refused() {
    let n = build().blob.len();
    let f = n - FOOTER_SIZE as usize;
    let set = |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let cases: Vec<(String, &str)> = vec![
        (footer_error(|b| set(b, f + 32, 2)), "manifest type 2"),
        (footer_error(|b| set(b, f + 8, 4)), "not inside"),
        (footer_error(|b| set(b, f + 8, u64::MAX - 3)), "not inside"),
        (footer_error(|b| set(b, f + 16, 0)), "not inside"),
        (footer_error(|b| set(b, f + 16, n as u64)), "not inside"),
        (footer_error(|b| set(b, f + 24, 1 << 40)), "larger than"),
        (
            footer_error(|b| b[f + 4] = 41),
            "not in a 40-byte skippable frame",
        ),
    ];
    for (err, want) in cases {
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
    let err = parse_footer(&[0u8; 10], 10).unwrap_err();
    assert!(err.to_string().contains("got 10"), "{err}");
}

#[test]
fn a_later_longer_footer_leaves_the_layer_to_the_streaming_pass() {
    let mut blob = build().blob;
    let f = blob.len() - FOOTER_SIZE as usize;
    let at = blob.len() - TAIL_LEN as usize;
    blob[at..at + 4].copy_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    blob[at + 4..at + 8].copy_from_slice(&64u32.to_le_bytes());
    blob[f] = 0;
    let tail = &blob[at..];
    assert_eq!(ZstdChunkedTail.locate(tail, blob.len() as u64), Ok(None));
}

fn err_of(r: Result<Indexed, String>) -> String {
    match r {
        Ok(_) => panic!("indexed"),
        Err(e) => e,
    }
}

fn index_error(b: &Built, annotations: &BTreeMap<String, String>) -> String {
    err_of(ZstdChunkedTail.index(b.region(), b.manifest_at, annotations))
}

#[test]
fn manifests_that_disagree_with_the_descriptor_are_refused() {
    let b = build();
    let mut ann = b.annotations();
    ann.insert(CHECKSUM_ANNOTATIONS[0].into(), sha(b"something else"));
    assert!(index_error(&b, &ann).contains("checksum mismatch"));
    ann.insert(CHECKSUM_ANNOTATIONS[0].into(), "md5:00".into());
    assert!(index_error(&b, &ann).contains("invalid zstd:chunked annotation"));

    let mut ann = b.annotations();
    let mut moved = b.pos;
    moved.uncompressed += 1;
    ann.insert(POSITION_ANNOTATIONS[0].into(), moved.to_string());
    assert!(index_error(&b, &ann).contains("position mismatch"));
    for bad in ["1:2:3", "1:2:3:+4", "a:b:c:d", ""] {
        ann.insert(POSITION_ANNOTATIONS[0].into(), bad.into());
        assert!(index_error(&b, &ann).contains("invalid"), "{bad:?}");
    }
    // Later writers' names are checked too.
    let mut ann = BTreeMap::new();
    ann.insert(CHECKSUM_ANNOTATIONS[1].to_string(), sha(b"x"));
    assert!(index_error(&b, &ann).contains("checksum mismatch"));
    // Without annotations the footer alone suffices.
    assert!(ZstdChunkedTail
        .index(b.region(), b.manifest_at, &BTreeMap::new())
        .is_ok());
}

#[test]
fn malformed_manifests_are_refused() {
    let none = BTreeMap::new();
    let case = |edit: fn(&mut Vec<Value>)| index_error(&build_with(edit), &none);
    let cases = [
        (
            case(|e| {
                e[2].as_object_mut().unwrap().remove("digest");
            }),
            "has no digest",
        ),
        (
            case(|e| e[3]["endOffset"] = json!(1)),
            "endOffset 1 is not after",
        ),
        (case(|e| e[3]["endOffset"] = json!(u64::MAX)), "endOffset"),
        (
            case(|e| e[4]["chunkType"] = json!("zeros")),
            "unsupported chunkType",
        ),
        (case(|e| e[4]["chunkOffset"] = json!(5)), "do not tile"),
        (case(|e| e[0]["name"] = json!("../x")), "climbs out"),
        (case(|e| e[0]["type"] = json!("socket")), "unknown type"),
        (
            case(|e| e[2]["digest"] = json!("sha512:00")),
            "unsupported digest",
        ),
    ];
    for (err, want) in cases {
        assert!(err.contains(want), "{err:?} should mention {want:?}");
        assert!(err.starts_with("zstd:chunked manifest TOC entry"), "{err}");
    }

    // The frame before the manifest must be a skippable one of its length.
    let mut b = build();
    let at = b.manifest_at as usize;
    b.blob[at + 4] ^= 1;
    assert!(index_error(&b, &none).contains("skippable frame"));
    // A region that does not start at the manifest's frame.
    let b = build();
    let err = err_of(ZstdChunkedTail.index(&b.region()[1..], b.manifest_at + 1, &none));
    assert!(err.contains("starts at"), "{err}");
}

#[test]
fn manifest_json_and_length_are_checked() {
    let none = BTreeMap::new();
    let with_json = |json: &[u8], claimed: u64| {
        let compressed = frame(json);
        let mut blob = frame(b"data");
        let at = blob.len() as u64;
        blob.extend(skippable(&compressed));
        blob.extend(footer(ManifestPosition {
            offset: at + 8,
            length: compressed.len() as u64,
            uncompressed: claimed,
            kind: 1,
        }));
        err_of(ZstdChunkedTail.index(&blob[at as usize..], at, &none))
    };
    let doc = br#"{"version": 2, "entries": []}"#;
    assert!(with_json(doc, doc.len() as u64).contains("version 2"));
    assert!(with_json(b"{]", 2).contains("not valid JSON"));
    assert!(with_json(doc, doc.len() as u64 - 1).contains("decompresses to"));
    assert!(with_json(doc, doc.len() as u64 + 1).contains("decompresses to"));
}

#[test]
fn the_fuzz_seed_is_a_valid_blob() {
    // fuzz/make-seeds.py writes it with stored zstd blocks, as a check that
    // nothing here depends on how the frames were compressed.
    let blob = include_bytes!("../../fuzz/seeds/zstd_chunked/podman-4.3");
    let size = blob.len() as u64;
    let range = ZstdChunkedTail
        .locate(&blob[blob.len() - TAIL_LEN as usize..], size)
        .unwrap()
        .unwrap();
    let b = Built {
        blob: blob.to_vec(),
        manifest_at: range.start,
        pos: parse_footer(blob, size).unwrap().unwrap(),
        files: HashMap::new(),
    };
    let indexed = index_of(&b);
    let index = detail(&indexed);
    assert_eq!(index.chunk_count(), 3);
    let big = indexed.entries.iter().find(|e| e.path == "big").unwrap();
    assert_eq!(
        read_file(&b, index, big).unwrap(),
        b"hello world\n".repeat(20)
    );
}
