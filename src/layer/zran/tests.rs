use super::*;
use flate2::write::{DeflateEncoder, GzEncoder};
use flate2::{Compression, GzBuilder};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::io::{self, Read};
use std::sync::OnceLock;

/// 12.5 MiB: four checkpoints at the default spacing, and still quick
/// to compress in a debug build.
const DATA_LEN: usize = (12 << 20) + (512 << 10);

/// Random (incompressible) stretches mixed with text made of a few
/// thousand made-up words (compressible about 2:1), so that deflate
/// blocks of several kinds occur. A large vocabulary keeps zlib's match
/// chains short, which keeps compression in debug builds fast enough.
fn make_data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let words: Vec<Vec<u8>> = (0..3000)
        .map(|_| {
            let n = rng.random_range(1..10);
            let mut w: Vec<u8> = (0..n).map(|_| rng.random_range(b'a'..=b'z')).collect();
            w.push(if rng.random_range(0..12) == 0 {
                b'\n'
            } else {
                b' '
            });
            w
        })
        .collect();
    let mut out = Vec::with_capacity(len + 300_000);
    while out.len() < len {
        let seg = rng.random_range(1_000..300_000);
        if rng.random_range(0..3) == 0 {
            let at = out.len();
            out.resize(at + seg, 0);
            rng.fill_bytes(&mut out[at..]);
        } else {
            // xorshift picks the words: StdRng per word is slow in debug.
            let mut x = rng.next_u64() | 1;
            let stop = out.len() + seg;
            while out.len() < stop {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.extend_from_slice(&words[(x % words.len() as u64) as usize]);
            }
        }
    }
    out.truncate(len);
    out
}

fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::new(level));
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn data() -> &'static [u8] {
    static DATA: OnceLock<Vec<u8>> = OnceLock::new();
    DATA.get_or_init(|| make_data(DATA_LEN, 1))
}

/// The data compressed at `level` and its index, built once per level
/// (the tests share them and run in parallel).
fn fixture(level: u32) -> &'static (Vec<u8>, ZranIndex) {
    static FIX: [OnceLock<(Vec<u8>, ZranIndex)>; 10] = [const { OnceLock::new() }; 10];
    FIX[level as usize].get_or_init(|| {
        let gz = gzip(data(), level);
        let (out, idx) = stream_odd(&gz, CHECKPOINT_SPACING).unwrap();
        assert!(out == data(), "level {level}: streamed output differs");
        (gz, idx)
    })
}

/// Hands out the data in awkward piece sizes, like a network would.
struct OddReader<'a> {
    data: &'a [u8],
    pos: usize,
    n: usize,
}

impl Read for OddReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        const SIZES: [usize; 7] = [1, 7, 4093, 65_537, 13, 1_000, 32_768 * 3 + 5];
        self.n += 1;
        let len = SIZES[self.n % SIZES.len()]
            .min(buf.len())
            .min(self.data.len() - self.pos);
        buf[..len].copy_from_slice(&self.data[self.pos..self.pos + len]);
        self.pos += len;
        Ok(len)
    }
}

/// Streams `gz` through a `ZranReader` with odd input pieces and odd
/// output buffer sizes.
fn stream_odd(gz: &[u8], spacing: u64) -> Result<(Vec<u8>, ZranIndex), ZranError> {
    let src = OddReader {
        data: gz,
        pos: 0,
        n: 0,
    };
    let mut r = ZranReader::with_spacing(src, spacing);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 200_000];
    let sizes = [100_000usize, 1, 4096, 333, 65_536, 131_072 + 17];
    for i in 0.. {
        let want = sizes[i % sizes.len()];
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok((out, r.finish()?))
}

fn decode_range(idx: &ZranIndex, gz: &[u8], out: Range<u64>) -> Result<Vec<u8>, ZranError> {
    let plan = idx.plan(out.clone());
    let bytes = &gz[plan.compressed.start as usize..plan.compressed.end as usize];
    let mut got = Vec::new();
    let mut next = idx.checkpoints[plan.checkpoint].out_off;
    idx.decode(&plan, bytes, out.end, &mut |off, piece| {
        assert_eq!(off, next, "sink pieces must be consecutive");
        next += piece.len() as u64;
        let lo = out.start.max(off);
        let hi = out.end.min(next);
        if lo < hi {
            got.extend_from_slice(&piece[(lo - off) as usize..(hi - off) as usize]);
        }
    })?;
    Ok(got)
}

fn check_index_shape(idx: &ZranIndex, gz: &[u8], data: &[u8], spacing: u64) {
    assert_eq!(idx.compressed_size, gz.len() as u64);
    assert_eq!(idx.uncompressed_size, data.len() as u64);
    assert_eq!(
        idx.blocks.len() as u64,
        (gz.len() as u64).div_ceil(BLOCK_SIZE)
    );
    for (k, b) in idx.blocks.iter().enumerate() {
        let lo = k * BLOCK_SIZE as usize;
        let hi = (lo + BLOCK_SIZE as usize).min(gz.len());
        assert_eq!(b.sha256, <[u8; 32]>::from(Sha256::digest(&gz[lo..hi])));
        if k > 0 {
            assert!(b.out_avail >= idx.blocks[k - 1].out_avail);
        }
    }
    assert_eq!(idx.blocks.last().unwrap().out_avail, data.len() as u64);
    let first = &idx.checkpoints[0];
    assert_eq!((first.out_off, first.bits), (0, 0));
    assert!(first.window.is_empty());
    for w in idx.checkpoints.windows(2) {
        let gap = w[1].out_off - w[0].out_off;
        assert!(gap >= spacing, "checkpoints too close: {gap}");
        assert!(
            gap < spacing + (1 << 20),
            "checkpoints too far apart: {gap}"
        );
        assert!(w[1].in_off > w[0].in_off);
    }
    for c in &idx.checkpoints {
        assert!(c.bits < 8);
        let o = c.out_off as usize;
        assert_eq!(&c.window[..], &data[o - c.window.len()..o]);
    }
}

#[test]
fn streams_and_indexes_at_all_levels() {
    let data = data();
    for level in [0, 1, 6, 9] {
        let (gz, idx) = fixture(level);
        check_index_shape(idx, gz, data, CHECKPOINT_SPACING);
        assert_eq!(
            idx.checkpoints.len() as u64,
            data.len() as u64 / CHECKPOINT_SPACING + 1,
            "level {level}"
        );
        assert_eq!(idx.checkpoints[0].in_off, 10, "default gzip header");
        for c in &idx.checkpoints[1..] {
            assert_eq!(c.window.len(), WINDOW_SIZE);
        }
        let windows = (idx.checkpoints.len() - 1) * WINDOW_SIZE;
        assert!(idx.index_bytes_estimate() >= windows as u64);
    }
}

/// Where the compressed input is when the output reaches each point, at
/// 4 KiB input granularity, from an independent decoder.
fn progress(gz: &[u8]) -> Vec<(u64, u64)> {
    let mut d = flate2::Decompress::new(false);
    let mut out = vec![0u8; 1 << 20];
    let mut pts = vec![(10u64, 0u64)];
    let body = &gz[10..];
    let mut pos = 0;
    loop {
        let before = d.total_in();
        let end = (pos + 4096).min(body.len());
        let st = d
            .decompress(&body[pos..end], &mut out, flate2::FlushDecompress::None)
            .unwrap();
        pos += (d.total_in() - before) as usize;
        pts.push((10 + d.total_in(), d.total_out()));
        if st == flate2::Status::StreamEnd {
            return pts;
        }
    }
}

/// Decodes random ranges (plus ranges at both ends and across every
/// checkpoint) through `plan` + `decode`, checks the bytes, and checks
/// that a plan fetches little more than one checkpoint span plus the
/// range itself (plus rounding to blocks).
fn check_random_ranges(gz: &[u8], prog: &[(u64, u64)], idx: &ZranIndex, count: usize, seed: u64) {
    let data = data();
    let len = data.len() as u64;
    let in_at = |out: u64| prog.iter().rev().find(|p| p.1 <= out).unwrap().0;
    let in_needed = |out: u64| prog.iter().find(|p| p.1 >= out).unwrap().0;

    let mut ranges = vec![0..1, len - 1..len, len - 70_000..len, 5..5];
    for c in &idx.checkpoints[1..] {
        ranges.push(c.out_off - 1..(c.out_off + 1).min(len));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    while ranges.len() < count {
        let start = rng.random_range(0..len);
        let max = match rng.random_range(0..4) {
            0 => 1,
            1 => 4096,
            2 => 256 << 10,
            _ => 2 << 20,
        };
        let end = (start + rng.random_range(1..=max)).min(len);
        ranges.push(start..end);
    }
    for r in ranges {
        let got = decode_range(idx, gz, r.clone()).unwrap();
        assert!(
            got == data[r.start as usize..r.end as usize],
            "wrong bytes for {r:?}"
        );

        let plan = idx.plan(r.clone());
        let cp = plan.checkpoint;
        let span_end = idx
            .checkpoints
            .get(cp + 1)
            .map_or(idx.compressed_size, |c| c.in_off);
        let span = span_end - idx.checkpoints[cp].in_off;
        let range_c = in_needed(r.end).saturating_sub(in_at(r.start));
        let fetched = plan.compressed.end - plan.compressed.start;
        assert!(
            fetched <= span + range_c + 2 * BLOCK_SIZE + 8192,
            "{r:?} fetches {fetched} (span {span}, range {range_c})"
        );
    }
}

/// Ranges on the real index, and (cheaper per range, so more of them)
/// on an index of the same blob with checkpoints every 512 KiB.
fn random_ranges_at_level(level: u32) {
    let (gz, idx) = fixture(level);
    let prog = progress(gz);
    check_random_ranges(gz, &prog, idx, 12, u64::from(level));
    let (out, fine) = stream_odd(gz, 512 << 10).unwrap();
    assert!(out == data());
    assert!(fine.checkpoints.len() > 3 * idx.checkpoints.len());
    check_random_ranges(gz, &prog, &fine, 38, 100 + u64::from(level));
}

#[test]
fn random_ranges_decode_exactly_level0() {
    random_ranges_at_level(0);
}

#[test]
fn random_ranges_decode_exactly_level1() {
    random_ranges_at_level(1);
}

#[test]
fn random_ranges_decode_exactly_level6() {
    random_ranges_at_level(6);
}

#[test]
fn random_ranges_decode_exactly_level9() {
    random_ranges_at_level(9);
}

#[test]
fn plan_is_whole_blocks_and_clamped() {
    let (gz, idx) = fixture(6);
    let len = idx.uncompressed_size;
    let whole = idx.plan(0..u64::MAX);
    assert_eq!(whole.checkpoint, 0);
    assert_eq!(whole.compressed, 0..gz.len() as u64);
    let past = idx.plan(len + 10..len + 20);
    assert_eq!(past.checkpoint, idx.checkpoints.len() - 1);
    assert_eq!(past.compressed.end, gz.len() as u64);
    assert_eq!(decode_range(idx, gz, len + 10..len + 20).unwrap(), b"");
    for c in &idx.checkpoints {
        let p = idx.plan(c.out_off..c.out_off + 1);
        assert_eq!(idx.checkpoints[p.checkpoint].out_off, c.out_off);
        assert_eq!(p.compressed.start % BLOCK_SIZE, 0);
        assert!(p.compressed.start <= c.in_off - u64::from(c.bits > 0));
        assert!(p.compressed.end % BLOCK_SIZE == 0 || p.compressed.end == gz.len() as u64);
        let p2 = idx.plan(c.out_off.saturating_sub(1)..c.out_off + 1);
        if c.out_off > 0 {
            assert_eq!(p2.checkpoint + 1, p.checkpoint);
        }
    }
    // The first byte fits in the first block.
    assert_eq!(idx.plan(0..1).compressed, 0..BLOCK_SIZE);
}

/// A member with every optional header field, built by hand because
/// flate2 cannot write FHCRC.
fn gzip_all_fields(data: &[u8]) -> Vec<u8> {
    let mut h = vec![0x1f, 0x8b, 8, 2 | 4 | 8 | 16, 1, 2, 3, 4, 0, 3];
    h.extend_from_slice(&5u16.to_le_bytes());
    h.extend_from_slice(b"xtra!");
    h.extend_from_slice(b"name.tar\0");
    h.extend_from_slice(b"a comment\0");
    let mut crc = flate2::Crc::new();
    crc.update(&h);
    h.extend_from_slice(&(crc.sum() as u16).to_le_bytes());
    let mut enc = DeflateEncoder::new(h, Compression::new(5));
    enc.write_all(data).unwrap();
    let mut out = enc.finish().unwrap();
    let mut crc = flate2::Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[test]
fn multi_member_streams_and_decodes_across_members() {
    let parts = [
        make_data(2 << 20, 11),
        make_data(150_000, 12),
        make_data(1 << 20, 13),
    ];
    let mut gz = gzip(&parts[0], 1);
    let mut named = GzBuilder::new()
        .filename("second")
        .comment("member two")
        .extra(vec![1, 2, 3])
        .write(Vec::new(), Compression::new(1));
    named.write_all(&parts[1]).unwrap();
    gz.extend(named.finish().unwrap());
    gz.extend(gzip_all_fields(&parts[2]));
    gz.extend(std::iter::repeat_n(0u8, 3000));
    let data = parts.concat();
    let b1 = parts[0].len() as u64;
    let b2 = b1 + parts[1].len() as u64;

    let spacing = 600_000;
    let (out, idx) = stream_odd(&gz, spacing).unwrap();
    assert!(out == data);
    check_index_shape(&idx, &gz, &data, spacing);
    assert!(
        idx.checkpoints.iter().any(|c| c.out_off > b2),
        "later members must get checkpoints too"
    );

    let len = data.len() as u64;
    let mut ranges = vec![
        b1 - 1..b1 + 1,
        b1 - 100..b2 + 100,
        b2 - 1..b2 + 1,
        b2..b2 + 1,
        0..len,
        len - 1..len,
    ];
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..25 {
        let start = rng.random_range(0..len);
        let end = (start + rng.random_range(1..=(1 << 20))).min(len);
        ranges.push(start..end);
    }
    for r in ranges {
        let got = decode_range(&idx, &gz, r.clone()).unwrap();
        assert!(
            got == data[r.start as usize..r.end as usize],
            "wrong bytes for {r:?}"
        );
    }
}

/// Packs bits least significant first, as deflate does.
#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    fn put(&mut self, bits: u32, count: u32) {
        self.acc |= u64::from(bits) << self.n;
        self.n += count;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// Huffman codes are sent most significant bit first.
    fn code(&mut self, code: u32, len: u32) {
        self.put(code.reverse_bits() >> (32 - len), len);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// One fixed-Huffman block of literals only, as a gzip member. Written
/// by hand so the test does not depend on what a compressor chooses.
fn gzip_one_fixed_block(data: &[u8]) -> Vec<u8> {
    let mut w = BitWriter {
        out: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255],
        ..Default::default()
    };
    w.put(0b011, 3); // BFINAL=1, BTYPE=01
    for &b in data {
        match b {
            0..=143 => w.code(0x30 + u32::from(b), 8),
            _ => w.code(0x190 + u32::from(b) - 144, 9),
        }
    }
    w.code(0, 7); // end of block
    let mut out = w.finish();
    let mut crc = flate2::Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[test]
fn checkpoints_inside_one_huge_fixed_block() {
    let first = make_data(2 << 20, 21);
    let second = make_data(512 << 10, 22);
    let mut gz = gzip_one_fixed_block(&first);
    gz.extend(gzip(&second, 6));
    let data = [&first[..], &second[..]].concat();
    let spacing = 700_000;
    let (out, idx) = stream_odd(&gz, spacing).unwrap();
    assert!(out == data);
    check_index_shape(&idx, &gz, &data, spacing);
    let inside = idx
        .checkpoints
        .iter()
        .filter(|c| c.kind == CheckpointKind::InFixedBlock { last: true })
        .count();
    let kinds: Vec<_> = idx
        .checkpoints
        .iter()
        .map(|c| (c.out_off, c.kind))
        .collect();
    assert_eq!(inside, first.len() / spacing as usize, "{kinds:?}");

    let b = first.len() as u64;
    let len = data.len() as u64;
    let mut ranges = vec![b - 1..b + 1, b - 5000..len, 0..len];
    for c in &idx.checkpoints[1..] {
        ranges.push(c.out_off..c.out_off + 1);
        ranges.push(c.out_off - 1..(c.out_off + 100_000).min(len));
    }
    let mut rng = StdRng::seed_from_u64(23);
    for _ in 0..20 {
        let start = rng.random_range(0..len);
        ranges.push(start..(start + rng.random_range(1..900_000)).min(len));
    }
    for r in ranges {
        let got = decode_range(&idx, &gz, r.clone()).unwrap();
        assert!(got == data[r.start as usize..r.end as usize], "{r:?}");
    }
}

#[test]
fn bad_trailing_data_is_rejected() {
    let mut gz = gzip(&make_data(100_000, 5), 6);
    gz.extend_from_slice(&[0, 0, 0, 7]);
    let err = stream_odd(&gz, CHECKPOINT_SPACING).unwrap_err();
    assert!(err.to_string().contains("non-zero data"), "{err}");

    let mut gz = gzip(b"hello", 6);
    gz.extend_from_slice(b"garbage");
    let err = stream_odd(&gz, CHECKPOINT_SPACING).unwrap_err();
    assert!(
        err.to_string().contains("after the end of a gzip member"),
        "{err}"
    );
}

#[test]
fn corrupted_block_is_refused_before_decoding() {
    let (gz, idx) = fixture(6);
    let len = idx.uncompressed_size;
    let r = len / 2..len / 2 + 5000;
    let plan = idx.plan(r.clone());
    let mut bytes = gz[plan.compressed.start as usize..plan.compressed.end as usize].to_vec();
    let flip = bytes.len() - 3;
    bytes[flip] ^= 0x40;
    let mut calls = 0;
    let err = idx
        .decode(&plan, &bytes, r.end, &mut |_, _| calls += 1)
        .unwrap_err();
    let want = (plan.compressed.start + flip as u64) / BLOCK_SIZE;
    assert!(
        matches!(err, ZranError::BlockMismatch { block } if block == want),
        "{err}"
    );
    assert_eq!(calls, 0, "nothing may reach the sink");
}

#[test]
fn bad_plans_are_rejected() {
    let (gz, idx) = fixture(1);
    let plan = idx.plan(1000..2000);
    let bytes = &gz[plan.compressed.start as usize..plan.compressed.end as usize];
    let mut sink = |_: u64, _: &[u8]| {};
    let short = &bytes[..bytes.len() - 1];
    assert!(matches!(
        idx.decode(&plan, short, 2000, &mut sink),
        Err(ZranError::InvalidPlan { .. })
    ));
    let wrong_cp = ReadPlan {
        checkpoint: idx.checkpoints.len() - 1,
        ..plan.clone()
    };
    assert!(matches!(
        idx.decode(&wrong_cp, bytes, 2000, &mut sink),
        Err(ZranError::InvalidPlan { .. })
    ));
    // Valid blocks, but too few of them for the requested end.
    let far = idx.uncompressed_size / 2;
    let err = idx.decode(&plan, bytes, far, &mut sink).unwrap_err();
    assert!(matches!(err, ZranError::InvalidPlan { .. }), "{err}");
}

#[test]
fn corrupt_deflate_data_with_matching_hashes_is_an_error() {
    let (gz, idx) = fixture(6);
    let cp_idx = 1;
    let cp = &idx.checkpoints[cp_idx];
    let mut bad = gz.clone();
    // All-ones bits make the first block header name the reserved type.
    let first = (cp.in_off - u64::from(cp.bits > 0)) as usize;
    bad[first..first + 64].fill(0xff);
    let mut bad_idx = idx.clone();
    for (k, b) in bad_idx.blocks.iter_mut().enumerate() {
        let lo = k * BLOCK_SIZE as usize;
        let hi = (lo + BLOCK_SIZE as usize).min(bad.len());
        b.sha256 = Sha256::digest(&bad[lo..hi]).into();
    }
    let r = cp.out_off..cp.out_off + 10;
    let err = decode_range(&bad_idx, &bad, r).unwrap_err();
    assert!(matches!(err, ZranError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("invalid"), "{err}");
}

#[test]
fn corrupt_or_truncated_streams_fail() {
    let data = make_data(600_000, 9);
    let gz = gzip(&data, 6);
    let n = gz.len();
    let check = |bytes: &[u8], kind: io::ErrorKind, what: &str| {
        let mut r = ZranReader::new(OddReader {
            data: bytes,
            pos: 0,
            n: 0,
        });
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert_eq!(err.kind(), kind, "{what}: {err}");
        assert!(
            err.to_string()
                .contains("corrupt gzip stream at compressed offset"),
            "{what}: {err}"
        );
        // The failure sticks, and finish reports it too.
        assert!(r.read(&mut [0u8; 10]).is_err(), "{what}");
        assert!(r.finish().is_err(), "{what}");
        err.to_string()
    };

    let mut crc = gz.clone();
    crc[n - 6] ^= 1;
    assert!(check(&crc, io::ErrorKind::InvalidData, "crc").contains("CRC32"));
    let mut size = gz.clone();
    size[n - 2] ^= 1;
    assert!(check(&size, io::ErrorKind::InvalidData, "isize").contains("size"));
    let mut header = gz.clone();
    header[1] = 0x8c;
    assert!(check(&header, io::ErrorKind::InvalidData, "magic").contains("not a gzip"));
    let mut body = gz.clone();
    for i in (n / 3..n / 3 + 200).step_by(7) {
        body[i] = !body[i];
    }
    check(&body, io::ErrorKind::InvalidData, "body");
    for cut in [0, 5, 12, n / 2, n - 5, n - 1] {
        let msg = check(&gz[..cut], io::ErrorKind::UnexpectedEof, "truncated");
        assert!(msg.contains("truncated") || msg.contains("empty"), "{msg}");
    }
}

/// Fails every third read with a transient error, like a flaky network.
struct FlakyReader<'a> {
    data: &'a [u8],
    calls: usize,
}

impl Read for FlakyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(3) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "flaky"));
        }
        let n = buf.len().min(10_000);
        self.data.read(&mut buf[..n])
    }
}

#[test]
fn inner_errors_pass_through_and_reading_resumes() {
    let data = make_data(400_000, 6);
    let gz = gzip(&data, 6);
    let mut r = ZranReader::with_spacing(
        FlakyReader {
            data: &gz,
            calls: 0,
        },
        100_000,
    );
    let (mut out, mut errors) = (Vec::new(), 0);
    let mut buf = vec![0u8; 50_000];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::TimedOut);
                errors += 1;
            }
        }
    }
    assert!(errors > 0);
    assert!(out == data);
    let idx = r.finish().unwrap();
    check_index_shape(&idx, &gz, &data, 100_000);
    let len = data.len() as u64;
    assert_eq!(decode_range(&idx, &gz, 0..len).unwrap(), data);
}

#[test]
fn reader_and_index_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<ZranReader<std::fs::File>>();
    assert_send::<ZranIndex>();
}

#[test]
fn finish_before_the_end_fails() {
    let gz = gzip(&make_data(300_000, 4), 6);
    let mut r = ZranReader::new(&gz[..]);
    let mut buf = vec![0u8; 1000];
    r.read_exact(&mut buf).unwrap();
    let err = r.finish().unwrap_err();
    assert!(matches!(err, ZranError::Incomplete { .. }), "{err}");
}

#[test]
fn small_stream_and_empty_member() {
    for data in [&b""[..], b"x", b"hello hello hello hello"] {
        let gz = gzip(data, 6);
        let (out, idx) = stream_odd(&gz, CHECKPOINT_SPACING).unwrap();
        assert_eq!(out, data);
        assert_eq!(idx.checkpoints.len(), 1);
        assert_eq!(idx.blocks.len(), 1);
        let len = data.len() as u64;
        assert_eq!(decode_range(&idx, &gz, 0..len).unwrap(), data);
    }
}

#[test]
fn index_survives_bincode_round_trip() {
    // Level 1 from zlib-rs also yields mid-fixed-block checkpoints.
    let (gz, idx) = fixture(1);
    let cfg = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(idx, cfg).unwrap();
    let (back, used): (ZranIndex, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
    assert_eq!(used, bytes.len());
    assert!(bytes.len() as u64 <= idx.index_bytes_estimate());
    assert_eq!(back.compressed_size, idx.compressed_size);
    assert_eq!(back.uncompressed_size, idx.uncompressed_size);
    assert_eq!(back.checkpoints.len(), idx.checkpoints.len());
    for (a, b) in back.checkpoints.iter().zip(&idx.checkpoints) {
        assert_eq!(
            (a.in_off, a.out_off, a.bits, a.kind),
            (b.in_off, b.out_off, b.bits, b.kind)
        );
        assert_eq!(a.window, b.window);
    }
    for (a, b) in back.blocks.iter().zip(&idx.blocks) {
        assert_eq!((a.out_avail, a.sha256), (b.out_avail, b.sha256));
    }
    let data = data();
    let last = back.checkpoints.last().unwrap().out_off;
    for r in [0..10, last - 5..last + 5000] {
        assert_eq!(
            decode_range(&back, gz, r.clone()).unwrap(),
            &data[r.start as usize..r.end as usize]
        );
    }
}
