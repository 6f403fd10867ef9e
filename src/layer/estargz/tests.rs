use super::*;
use crate::layer::{normalize_path, Entry, EntryKind};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::io::Write;

const MTIME: &str = "2019-08-20T10:30:43Z";
const MTIME_UNIX: i64 = 1566297043;

/// A file to put in a test blob; `toc` holds the TOC fields other than
/// those the writer fills in (name, type, size, offsets, digests).
struct Spec {
    name: &'static str,
    kind: &'static str,
    data: Vec<u8>,
    toc: Value,
}

fn spec(name: &'static str, kind: &'static str, data: &[u8], toc: Value) -> Spec {
    Spec {
        name,
        kind,
        data: data.to_vec(),
        toc,
    }
}

/// A minimal eStargz writer laid out like the reference one: a file's tar
/// header goes into the open member, then each chunk starts a member of
/// its own that goes on with the tar padding and the following headers.
/// With `pack`, chunks instead share the open member and are located by
/// `innerOffset`, as the reference writer's minimum-chunk-size mode does.
struct TestWriter {
    blob: Vec<u8>,
    member: Option<GzEncoder<Vec<u8>>>,
    member_start: u64,
    member_len: u64,
    chunk_size: usize,
    pack: bool,
    toc: Vec<Value>,
}

struct Built {
    blob: Vec<u8>,
    toc_offset: u64,
    toc_digest: String,
}

impl Built {
    fn toc_region(&self) -> &[u8] {
        &self.blob[self.toc_offset as usize..self.blob.len() - FOOTER_SIZE as usize]
    }
    fn footer(&self) -> &[u8] {
        &self.blob[self.blob.len() - FOOTER_SIZE as usize..]
    }
    fn member(&self, c: &EChunk) -> &[u8] {
        &self.blob[c.comp_start as usize..c.comp_end as usize]
    }
}

impl TestWriter {
    fn new(chunk_size: usize, pack: bool) -> Self {
        TestWriter {
            blob: Vec::new(),
            member: None,
            member_start: 0,
            member_len: 0,
            chunk_size,
            pack,
            toc: Vec::new(),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.member.is_none() {
            self.member = Some(GzEncoder::new(Vec::new(), Compression::default()));
            self.member_start = self.blob.len() as u64;
            self.member_len = 0;
        }
        self.member.as_mut().unwrap().write_all(bytes).unwrap();
        self.member_len += bytes.len() as u64;
    }

    fn close_member(&mut self) {
        if let Some(m) = self.member.take() {
            self.blob.extend(m.finish().unwrap());
        }
    }

    fn add(&mut self, s: &Spec) {
        let mut h = tar::Header::new_ustar();
        h.set_path(s.name).unwrap();
        h.set_entry_type(match s.kind {
            "dir" => tar::EntryType::Directory,
            "reg" => tar::EntryType::Regular,
            "symlink" => tar::EntryType::Symlink,
            "hardlink" => tar::EntryType::Link,
            "char" => tar::EntryType::Char,
            "block" => tar::EntryType::Block,
            _ => tar::EntryType::Fifo,
        });
        h.set_size(s.data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        self.write(h.as_bytes());

        let mut ent = s.toc.clone();
        ent["name"] = json!(s.name);
        ent["type"] = json!(s.kind);
        if s.kind != "reg" || s.data.is_empty() {
            if s.kind == "reg" {
                ent["size"] = json!(0);
            }
            self.toc.push(ent);
            return;
        }
        ent["size"] = json!(s.data.len());
        for (i, piece) in s.data.chunks(self.chunk_size).enumerate() {
            if !self.pack {
                self.close_member();
            }
            if i > 0 {
                ent = json!({"name": s.name, "type": "chunk"});
            }
            let (offset, inner) = if self.member.is_some() {
                (self.member_start, self.member_len)
            } else {
                (self.blob.len() as u64, 0)
            };
            self.write(piece);
            ent["offset"] = json!(offset);
            if inner > 0 {
                ent["innerOffset"] = json!(inner);
            }
            if i > 0 {
                ent["chunkOffset"] = json!(i * self.chunk_size);
            }
            if s.data.len() > (i + 1) * self.chunk_size {
                ent["chunkSize"] = json!(piece.len());
            }
            ent["chunkDigest"] = json!(format!("sha256:{}", hex::encode(Sha256::digest(piece))));
            self.toc.push(ent.clone());
        }
        let pad = (512 - s.data.len() % 512) % 512;
        self.write(&vec![0; pad]);
    }

    fn finish(mut self) -> Built {
        self.close_member();
        let toc_offset = self.blob.len() as u64;
        let json = serde_json::to_vec_pretty(&json!({"version": 1, "entries": self.toc})).unwrap();
        self.blob.extend(toc_member(&json));
        self.blob.extend(go_footer(toc_offset));
        Built {
            blob: self.blob,
            toc_offset,
            toc_digest: format!("sha256:{}", hex::encode(Sha256::digest(&json))),
        }
    }
}

/// A gzip member holding a tar with `stargz.index.json`.
fn toc_member(json: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(json.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, TOC_TAR_NAME, json).unwrap();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// The footer byte for byte as Go's gzip writer makes it.
fn go_footer(toc_offset: u64) -> Vec<u8> {
    let mut f = vec![
        0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
    ];
    f.extend(format!("{toc_offset:016x}STARGZ").bytes());
    f.extend([1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(f.len() as u64, FOOTER_SIZE);
    f
}

fn pseudo_random(n: usize) -> Vec<u8> {
    crate::noise::noise(n, 0x9e37_79b9_7f4a_7c15)
}

fn specs() -> Vec<Spec> {
    let m = |v: Value| {
        let mut v = v;
        v["modtime"] = json!(MTIME);
        v
    };
    vec![
        spec(
            ".no.prefetch.landmark",
            "reg",
            &[0xf],
            json!({"mode": 0o644}),
        ),
        spec("./", "dir", b"", m(json!({"mode": 0o755}))),
        // A tar mode with the directory type bits.
        spec("etc/", "dir", b"", m(json!({"mode": 0o40755}))),
        // Go's os.FileMode setuid bit.
        spec(
            "etc/big",
            "reg",
            &pseudo_random(10_000),
            m(json!({"mode": 0o755 | (1 << 23)})),
        ),
        spec(
            "etc/small",
            "reg",
            b"hello\n",
            m(json!({"mode": 0o600, "uid": 7, "gid": 8})),
        ),
        spec(
            "etc/empty",
            "reg",
            b"",
            json!({"mode": 0o644, "modtime": "2021-03-04T05:06:07.5+01:00"}),
        ),
        spec(
            "etc/link",
            "symlink",
            b"",
            m(json!({"mode": 0o777, "linkName": "big"})),
        ),
        spec(
            "etc/hard",
            "hardlink",
            b"",
            m(json!({"mode": 0o755, "linkName": "./etc/big"})),
        ),
        spec("etc/.wh.gone", "reg", b"", json!({"mode": 0})),
        spec(
            "dev/null",
            "char",
            b"",
            m(json!({
                "mode": 0o666, "devMajor": 1, "devMinor": 3,
                "xattrs": {"security.capability": "AQAAAg==", "user.nil": null}
            })),
        ),
        spec(
            "dev/sda",
            "block",
            b"",
            m(json!({"mode": 0o660, "devMajor": 8})),
        ),
        spec(
            "run/",
            "dir",
            b"",
            json!({"mode": 0o1777, "modtime": "1969-12-31T23:59:59Z"}),
        ),
        spec("run/fifo", "fifo", b"", m(json!({"mode": 0o644}))),
        spec(
            "z/tail",
            "reg",
            &pseudo_random(5000)[..4100],
            m(json!({"mode": 0o644})),
        ),
    ]
}

fn build(chunk_size: usize, pack: bool) -> (Vec<Spec>, Built) {
    let specs = specs();
    let mut w = TestWriter::new(chunk_size, pack);
    for s in &specs {
        w.add(s);
    }
    (specs, w.finish())
}

fn expected_entries() -> Vec<Entry> {
    let e = |path: &str, kind, mode, mtime| {
        let mut e = Entry::new(path.to_string(), kind);
        e.mode = mode;
        e.mtime = mtime;
        e
    };
    use EntryKind::*;
    let mut big = e("etc/big", File, 0o4755, MTIME_UNIX);
    big.size = 10_000;
    big.data = 0;
    let mut small = e("etc/small", File, 0o600, MTIME_UNIX);
    small.size = 6;
    small.data = 3;
    small.uid = 7;
    small.gid = 8;
    let mut empty = e("etc/empty", File, 0o644, 1614830767);
    empty.data = u64::MAX;
    let mut link = e("etc/link", Symlink, 0o777, MTIME_UNIX);
    link.link_target = Some("big".into());
    let mut hard = e("etc/hard", Hardlink, 0o755, MTIME_UNIX);
    hard.link_target = Some("etc/big".into());
    let mut wh = e("etc/.wh.gone", File, 0, 0);
    wh.data = u64::MAX;
    let mut null = e("dev/null", CharDevice, 0o666, MTIME_UNIX);
    null.dev_major = 1;
    null.dev_minor = 3;
    null.xattrs = vec![
        ("security.capability".into(), vec![1, 0, 0, 2]),
        ("user.nil".into(), vec![]),
    ];
    let mut sda = e("dev/sda", BlockDevice, 0o660, MTIME_UNIX);
    sda.dev_major = 8;
    let mut tail = e("z/tail", File, 0o644, MTIME_UNIX);
    tail.size = 4100;
    tail.data = 4;
    vec![
        e("", Dir, 0o755, MTIME_UNIX),
        e("etc", Dir, 0o755, MTIME_UNIX),
        big,
        small,
        empty,
        link,
        hard,
        wh,
        null,
        sda,
        e("run", Dir, 0o1777, -1),
        e("run/fifo", Fifo, 0o644, MTIME_UNIX),
        tail,
    ]
}

/// Every regular file's content, read chunk by chunk through the index.
fn read_files(built: &Built, entries: &[Entry], index: &EstargzIndex) -> HashMap<String, Vec<u8>> {
    let mut files = HashMap::new();
    for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
        let mut content = Vec::new();
        let mut i = e.data as usize;
        while (content.len() as u64) < e.size {
            let c = &index.chunks[i];
            assert_eq!(c.file_offset, content.len() as u64, "{}", e.path);
            content.extend(decode_chunk(c, built.member(c)).unwrap());
            i += 1;
        }
        assert_eq!(content.len() as u64, e.size, "{}", e.path);
        files.insert(e.path.clone(), content);
    }
    files
}

fn check_roundtrip(chunk_size: usize, pack: bool) -> EstargzIndex {
    let (specs, built) = build(chunk_size, pack);
    let toc_offset = parse_footer(built.footer()).unwrap();
    assert_eq!(toc_offset, Some(built.toc_offset));
    let (entries, index) = parse_toc(
        built.toc_region(),
        built.toc_offset,
        Some(&built.toc_digest),
    )
    .unwrap();
    assert_eq!(entries, expected_entries());
    assert_eq!(index.toc_offset, built.toc_offset);
    let files = read_files(&built, &entries, &index);
    for s in specs
        .iter()
        .filter(|s| s.kind == "reg" && s.name != ".no.prefetch.landmark")
    {
        let path = normalize_path(s.name).unwrap();
        assert_eq!(files[&path], s.data, "{path}");
    }
    index
}

#[test]
fn roundtrips_entries_and_chunks() {
    let index = check_roundtrip(4096, false);
    // etc/big: 4096 + 4096 + 1808; etc/small; z/tail: 4096 + 4.
    let sizes: Vec<(u64, u64)> = index
        .chunks
        .iter()
        .map(|c| (c.file_offset, c.size))
        .collect();
    assert_eq!(
        sizes,
        [
            (0, 4096),
            (4096, 4096),
            (8192, 1808),
            (0, 6),
            (0, 4096),
            (4096, 4)
        ]
    );
    for pair in index.chunks.windows(2) {
        assert!(pair[0].comp_end <= pair[1].comp_start, "{pair:?}");
    }
    assert!(index
        .chunks
        .iter()
        .all(|c| c.inner_offset == 0 && c.digest.is_some()));
    assert_eq!(index.chunks.last().unwrap().comp_end, index.toc_offset);
}

#[test]
fn roundtrips_packed_members_via_inner_offset() {
    let index = check_roundtrip(4096, true);
    assert!(index.chunks.iter().any(|c| c.inner_offset > 0));
    // All data shares the first member, so every chunk runs to the TOC.
    assert!(index
        .chunks
        .iter()
        .all(|c| c.comp_start == index.chunks[0].comp_start));
    assert!(index.chunks.iter().all(|c| c.comp_end == index.toc_offset));
}

#[test]
fn decodes_from_a_prefix_of_the_member() {
    // The chunk's bytes suffice; the member's tail (padding, headers, CRC)
    // need not be fetched when the chunk has a digest.
    let (_, built) = build(4096, false);
    let (_, index) = parse_toc(built.toc_region(), built.toc_offset, None).unwrap();
    let c = &index.chunks[0];
    let member = built.member(c);
    let data = decode_chunk(c, member).unwrap();
    let mut shorter = member.len();
    while shorter > 0 && decode_chunk(c, &member[..shorter - 1]).is_ok() {
        shorter -= 1;
    }
    assert!(shorter < member.len(), "no prefix decoded");
    assert_eq!(decode_chunk(c, &member[..shorter]).unwrap(), data);
}

#[test]
fn wrong_toc_digest_is_refused() {
    let (_, built) = build(4096, false);
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let err = parse_toc(built.toc_region(), built.toc_offset, Some(&wrong)).unwrap_err();
    assert!(
        matches!(err, EstargzError::TocDigestMismatch { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&wrong) && msg.contains(&built.toc_digest),
        "{msg}"
    );

    for bad_annotation in ["md5:abc", "sha256:xyz", "sha256:ABCD"] {
        let err =
            parse_toc(built.toc_region(), built.toc_offset, Some(bad_annotation)).unwrap_err();
        assert!(
            matches!(err, EstargzError::BadTocDigestAnnotation(_)),
            "{err}"
        );
    }
    // Without an annotation there is nothing to check against.
    assert!(parse_toc(built.toc_region(), built.toc_offset, None).is_ok());
}

#[test]
fn corrupted_chunks_are_refused() {
    let (_, built) = build(4096, false);
    let (_, index) = parse_toc(built.toc_region(), built.toc_offset, None).unwrap();
    let c = &index.chunks[0];

    // A well-formed member with the wrong content: only the digest tells.
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&vec![0u8; c.size as usize]).unwrap();
    let err = decode_chunk(c, &gz.finish().unwrap()).unwrap_err();
    assert!(
        matches!(err, EstargzError::ChunkDigestMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("digest"), "{err}");

    // Flipped bits inside the deflate data.
    let mut damaged = built.member(c).to_vec();
    for i in (20..damaged.len() - 20).step_by(97) {
        damaged[i] ^= 0x55;
    }
    assert!(decode_chunk(c, &damaged).is_err());

    // Too few bytes fetched.
    let err = decode_chunk(c, &built.member(c)[..40]).unwrap_err();
    assert!(
        matches!(
            err,
            EstargzError::ChunkTruncated { .. } | EstargzError::ChunkRead { .. }
        ),
        "{err}"
    );

    // Without a digest the member's CRC still catches damage.
    let mut undigested = c.clone();
    undigested.digest = None;
    assert_eq!(
        decode_chunk(&undigested, built.member(c)).unwrap(),
        decode_chunk(c, built.member(c)).unwrap()
    );
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&vec![7u8; c.size as usize]).unwrap();
    let mut bad_crc = gz.finish().unwrap();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 1;
    assert!(decode_chunk(&undigested, &bad_crc).is_err());
}

#[test]
fn footer_detection() {
    let (_, built) = build(4096, false);
    // flate2's own encoding of the same member is accepted too.
    let mut extra = b"SG\x16\x00".to_vec();
    extra.extend(format!("{:016x}STARGZ", 12345).bytes());
    let footer = flate2::GzBuilder::new()
        .extra(extra)
        .write(Vec::new(), Compression::none())
        .finish()
        .unwrap();
    assert_eq!(footer.len() as u64, FOOTER_SIZE);
    assert_eq!(parse_footer(&footer).unwrap(), Some(12345));

    // Not eStargz: read as plain gzip.
    assert_eq!(parse_footer(&[0xaa; 51]).unwrap(), None);
    let tail = &built.blob[built.toc_offset as usize - 51..built.toc_offset as usize];
    assert_eq!(parse_footer(tail).unwrap(), None);
    let mut legacy = vec![0u8; 4];
    legacy.extend([0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 22, 0]);
    legacy.extend(b"0000000000000100STARGZ");
    legacy.extend([1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(parse_footer(&legacy).unwrap(), None);

    let err = parse_footer(&built.footer()[1..]).unwrap_err();
    assert!(err.to_string().contains("51 bytes, got 50"), "{err}");

    let mut bad_hex = built.footer().to_vec();
    bad_hex[16] = b'+';
    let err = parse_footer(&bad_hex).unwrap_err();
    assert!(matches!(err, EstargzError::FooterOffset(_)), "{err}");

    let mut bad_tail = built.footer().to_vec();
    bad_tail[44] ^= 0xff; // CRC of an empty member must be 0
    let err = parse_footer(&bad_tail).unwrap_err();
    assert!(matches!(err, EstargzError::FooterMember(_)), "{err}");
}

fn toc_error(entries: Value) -> EstargzError {
    toc_error_json(json!({"version": 1, "entries": entries}))
}

fn toc_error_json(toc: Value) -> EstargzError {
    let member = toc_member(&serde_json::to_vec(&toc).unwrap());
    parse_toc(&member, 1 << 20, None).unwrap_err()
}

#[test]
fn malformed_tocs_are_refused() {
    let chunk = |name: &str, offset: u64, chunk_offset: u64| json!({"name": name, "type": "chunk", "offset": offset, "chunkOffset": chunk_offset});
    let reg = |size: u64, chunk_size: u64| json!({"name": "f", "type": "reg", "size": size, "offset": 100, "chunkSize": chunk_size});
    let cases = [
        (toc_error(json!([chunk("f", 10, 0)])), "does not follow"),
        (
            toc_error(json!([reg(10, 4), chunk("g", 200, 4)])),
            "does not follow",
        ),
        (
            toc_error(json!([reg(10, 4), chunk("f", 200, 5)])),
            "do not tile",
        ),
        (
            toc_error(
                json!([reg(10, 4), {"name": "f", "type": "chunk", "offset": 200,
                "chunkOffset": 4, "chunkSize": 10}]),
            ),
            "do not tile the 10-byte file",
        ),
        (
            toc_error(json!([reg(10, 4)])),
            "cover 4 bytes of a 10-byte file",
        ),
        (
            toc_error(json!([reg(10, 4), chunk("f", 200, 12)])),
            "past the file",
        ),
        (
            toc_error(json!([{"name": "f", "type": "reg", "size": 3, "offset": 1 << 20}])),
            "not before the TOC",
        ),
        (
            toc_error(json!([{"name": "../etc", "type": "dir"}])),
            "climbs out",
        ),
        (
            toc_error(json!([{"name": "h", "type": "hardlink", "linkName": "/../x"}])),
            "climbs out",
        ),
        (
            toc_error(json!([{"name": "s", "type": "symlink"}])),
            "without linkName",
        ),
        (
            toc_error(json!([{"name": "s", "type": "socket"}])),
            "unknown type",
        ),
        (
            toc_error(json!([{"name": "d", "type": "dir", "modtime": "yesterday"}])),
            "RFC 3339",
        ),
        (
            toc_error(json!([{"name": "d", "type": "dir", "xattrs": {"user.a": "!!"}}])),
            "not base64",
        ),
        (
            toc_error(json!([{"name": "f", "type": "reg", "size": 1, "offset": 9,
                "chunkDigest": "sha512:00"}])),
            "unsupported chunkDigest",
        ),
        (
            toc_error_json(json!({"version": 2, "entries": []})),
            "version 2",
        ),
        (toc_error_json(json!({"entries": []})), "not valid JSON"),
    ];
    for (err, want) in cases {
        assert!(
            err.to_string().contains(want),
            "{err:?} should mention {want:?}"
        );
    }

    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(2);
    tar.append_data(&mut h, "other.json", &b"{}"[..]).unwrap();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    let err = parse_toc(&gz.finish().unwrap(), 100, None).unwrap_err();
    assert!(matches!(err, EstargzError::TocMissing), "{err}");

    let err = parse_toc(b"not gzip at all", 100, None).unwrap_err();
    assert!(matches!(err, EstargzError::TocRead(_)), "{err}");
}

/// A real blob from `integration/fixtures/to-estargz.sh`, when given:
/// LAZYBOOT_ESTARGZ_BLOB (the converted layer), optionally
/// LAZYBOOT_ESTARGZ_TOC_DIGEST (its annotation) and
/// LAZYBOOT_ESTARGZ_ORIG_LAYER (the tar.gz layer it was converted from).
/// Every file is read chunk by chunk and compared with the tar stream,
/// which an eStargz blob also is, and with the original layer.
#[test]
fn reads_a_real_converted_blob_when_given() {
    let Some(path) = std::env::var_os("LAZYBOOT_ESTARGZ_BLOB") else {
        eprintln!("LAZYBOOT_ESTARGZ_BLOB not set: skipping the real-blob check");
        return;
    };
    let blob = std::fs::read(path).unwrap();
    let digest = std::env::var("LAZYBOOT_ESTARGZ_TOC_DIGEST").ok();
    let footer_at = blob.len() - FOOTER_SIZE as usize;
    let toc_offset = parse_footer(&blob[footer_at..])
        .unwrap()
        .expect("an eStargz footer");
    let (entries, index) = parse_toc(
        &blob[toc_offset as usize..footer_at],
        toc_offset,
        digest.as_deref(),
    )
    .unwrap();
    let built = Built {
        blob: blob.clone(),
        toc_offset,
        toc_digest: String::new(),
    };
    let files = read_files(&built, &entries, &index);

    let as_tar = tar_contents(flate2::read::MultiGzDecoder::new(&blob[..]));
    let mut seen = 0;
    for e in &entries {
        if HIDDEN.contains(&e.path.as_str()) {
            panic!("{} should be hidden", e.path);
        }
        let t = as_tar
            .get(&e.path)
            .unwrap_or_else(|| panic!("{} not in the tar", e.path));
        assert_eq!(
            (t.kind, t.mode, t.uid, t.gid, t.mtime),
            (e.kind, e.mode, e.uid, e.gid, e.mtime),
            "{}",
            e.path
        );
        assert_eq!(t.link_target, e.link_target, "{}", e.path);
        assert_eq!(
            (t.dev_major, t.dev_minor),
            (e.dev_major, e.dev_minor),
            "{}",
            e.path
        );
        assert_eq!(t.xattrs, e.xattrs, "{}", e.path);
        if e.kind == EntryKind::File {
            assert_eq!(&t.content, &files[&e.path], "{}", e.path);
        }
        seen += 1;
    }
    let shown = as_tar
        .keys()
        .filter(|p| !HIDDEN.contains(&p.as_str()))
        .count();
    assert_eq!(seen, shown, "entries missing from the TOC");

    if let Some(orig) = std::env::var_os("LAZYBOOT_ESTARGZ_ORIG_LAYER") {
        let orig = std::fs::read(orig).unwrap();
        let orig = tar_contents(flate2::read::MultiGzDecoder::new(&orig[..]));
        assert_eq!(
            orig.len(),
            seen,
            "entry count differs from the original layer"
        );
        for (path, content) in &files {
            assert_eq!(&orig[path].content, content, "{path}");
        }
    }
    eprintln!(
        "real blob: {} entries, {} files, {} chunks, all decoded and matching",
        entries.len(),
        files.len(),
        index.chunks.len()
    );
}

struct TarFile {
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    link_target: Option<String>,
    dev_major: u32,
    dev_minor: u32,
    xattrs: Vec<(String, Vec<u8>)>,
    content: Vec<u8>,
}

fn tar_contents(r: impl Read) -> HashMap<String, TarFile> {
    let mut out = HashMap::new();
    for entry in tar::Archive::new(r).entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = normalize_path(std::str::from_utf8(&entry.path_bytes()).unwrap()).unwrap();
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().unwrap() {
            for ext in pax {
                let ext = ext.unwrap();
                if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        xattrs.sort();
        let h = entry.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Link => EntryKind::Hardlink,
            tar::EntryType::Char => EntryKind::CharDevice,
            tar::EntryType::Block => EntryKind::BlockDevice,
            tar::EntryType::Fifo => EntryKind::Fifo,
            _ => EntryKind::File,
        };
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap());
        let link_target = match kind {
            EntryKind::Hardlink => link.map(|l| normalize_path(&l).unwrap()),
            EntryKind::Symlink => link,
            _ => None,
        };
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        out.insert(
            path,
            TarFile {
                kind,
                mode: h.mode().unwrap() & 0o7777,
                uid: h.uid().unwrap() as u32,
                gid: h.gid().unwrap() as u32,
                mtime: h.mtime().unwrap() as i64,
                link_target,
                dev_major: h.device_major().unwrap().unwrap_or(0),
                dev_minor: h.device_minor().unwrap().unwrap_or(0),
                xattrs,
                content,
            },
        );
    }
    out
}
