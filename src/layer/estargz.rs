//! eStargz layers: a gzip layer whose regular files (or chunks of them) each
//! start a new gzip member, with a table of contents (TOC) near the end that
//! says where every member is. See containerd/stargz-snapshotter's
//! docs/estargz.md for the format.
//!
//! Layout of a blob, as the reference writer produces it:
//!
//! ```text
//! [member: tar headers ...][member: chunk data (+ tar padding, headers) ] ...
//! [member: tar holding stargz.index.json][footer: empty member, 51 bytes]
//! ```
//!
//! A TOC `offset` points at the gzip header of the member whose uncompressed
//! output starts with the chunk's data, or, when the writer packs several
//! small files into one member, `innerOffset` bytes before it. The tar header
//! of a file therefore normally sits at the end of the *previous* member.

use super::{normalize_path, Entry, EntryKind};
use base64::Engine as _;
use flate2::read::GzDecoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::{self, Read};

pub const FOOTER_SIZE: u64 = 51;
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";

const TOC_TAR_NAME: &str = "stargz.index.json";
/// Marker files that the converter adds to record prefetch order; they are
/// not part of the image's file system.
const HIDDEN: [&str; 3] = [TOC_TAR_NAME, ".prefetch.landmark", ".no.prefetch.landmark"];
/// A TOC is about 300 bytes per entry; this allows millions of entries while
/// stopping a gzip bomb in the TOC member from exhausting memory.
const MAX_TOC_JSON: u64 = 1 << 30;

// Go's os.FileMode keeps these outside the 12 Unix permission bits.
const GO_MODE_SETUID: u64 = 1 << 23;
const GO_MODE_SETGID: u64 = 1 << 22;
const GO_MODE_STICKY: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EstargzError {
    #[error("eStargz footer must be {FOOTER_SIZE} bytes, got {0}")]
    FooterSize(usize),
    #[error("eStargz footer has a malformed TOC offset {0:?} (expected 16 hex digits)")]
    FooterOffset(String),
    #[error("eStargz footer is marked STARGZ but is not a valid empty gzip member: {0}")]
    FooterMember(String),
    #[error("invalid eStargz TOC digest annotation {0:?} (expected sha256:<64 hex digits>)")]
    BadTocDigestAnnotation(String),
    #[error("cannot read the eStargz TOC member: {0}")]
    TocRead(#[source] io::Error),
    #[error("the eStargz TOC member holds no {TOC_TAR_NAME}")]
    TocMissing,
    #[error("the eStargz TOC is larger than {MAX_TOC_JSON} bytes")]
    TocTooLarge,
    #[error("eStargz TOC digest mismatch: the layer descriptor says {expected}, the TOC hashes to {actual} (wrong or tampered TOC)")]
    TocDigestMismatch { expected: String, actual: String },
    #[error("eStargz TOC is not valid JSON: {0}")]
    TocJson(#[source] serde_json::Error),
    #[error("unsupported eStargz TOC version {0} (only version 1 exists)")]
    TocVersion(i64),
    #[error("eStargz TOC entry {name:?}: {reason}")]
    BadEntry { name: String, reason: String },
    #[error("cannot decompress eStargz chunk at blob offset {comp_start}: {source}")]
    ChunkRead {
        comp_start: u64,
        #[source]
        source: io::Error,
    },
    #[error("eStargz chunk at blob offset {comp_start} is truncated: wanted {wanted} bytes, the gzip member gave {got}")]
    ChunkTruncated {
        comp_start: u64,
        wanted: u64,
        got: u64,
    },
    #[error("eStargz chunk at blob offset {comp_start} failed its digest check: TOC says sha256:{expected}, data hashes to sha256:{actual} (wrong bytes from the registry?)")]
    ChunkDigestMismatch {
        comp_start: u64,
        expected: String,
        actual: String,
    },
}

/// One gzip-compressed piece of a regular file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EChunk {
    /// Blob offset of the gzip member that holds the chunk.
    pub comp_start: u64,
    /// Upper bound of the member: enough blob bytes to decode the chunk.
    pub comp_end: u64,
    /// Where the chunk's bytes go in the file.
    pub file_offset: u64,
    /// Uncompressed length of the chunk.
    pub size: u64,
    /// sha256 of the uncompressed chunk (`chunkDigest`), when the TOC has one.
    pub digest: Option<[u8; 32]>,
    /// Uncompressed bytes of the member to skip before the chunk's data
    /// (`innerOffset`): non-zero only when a writer packed several small
    /// files into one member.
    #[serde(default)]
    pub inner_offset: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EstargzIndex {
    pub toc_offset: u64,
    pub chunks: Vec<EChunk>,
}

/// Parse the last [`FOOTER_SIZE`] bytes of a blob. `Ok(None)` means this is
/// not an eStargz blob (read it as plain gzip); `Ok(Some(offset))` gives the
/// blob offset of the TOC member.
pub fn parse_footer(footer: &[u8]) -> Result<Option<u64>, EstargzError> {
    if footer.len() as u64 != FOOTER_SIZE {
        return Err(EstargzError::FooterSize(footer.len()));
    }
    const FEXTRA: u8 = 0x04;
    // FHCRC, FNAME and FCOMMENT would move the extra field's neighbours and
    // never appear in a footer; FTEXT is harmless.
    let header_ok = footer[0] == 0x1f
        && footer[1] == 0x8b
        && footer[2] == 8
        && footer[3] & 0xfe == FEXTRA
        && u16::from_le_bytes([footer[10], footer[11]]) == 26
        && &footer[12..14] == b"SG"
        && u16::from_le_bytes([footer[14], footer[15]]) == 22
        && &footer[32..38] == b"STARGZ";
    if !header_ok {
        return Ok(None);
    }
    let hex = &footer[16..32];
    // from_str_radix alone would also take a leading '+'.
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(EstargzError::FooterOffset(
            String::from_utf8_lossy(hex).into_owned(),
        ));
    }
    let text = std::str::from_utf8(hex).expect("ascii hex digits");
    let offset =
        u64::from_str_radix(text, 16).map_err(|_| EstargzError::FooterOffset(text.to_string()))?;
    // Decoding the member checks its deflate block and CRC, so a footer whose
    // tail was damaged is reported instead of silently trusted.
    let mut rest = Vec::new();
    GzDecoder::new(footer)
        .read_to_end(&mut rest)
        .map_err(|e| EstargzError::FooterMember(e.to_string()))?;
    if !rest.is_empty() {
        return Err(EstargzError::FooterMember(format!(
            "it holds {} bytes of data",
            rest.len()
        )));
    }
    Ok(Some(offset))
}

#[derive(Deserialize)]
struct Toc {
    version: i64,
    #[serde(default)]
    entries: Vec<TocEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TocEntry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    modtime: Option<String>,
    #[serde(default)]
    link_name: Option<String>,
    #[serde(default)]
    mode: i64,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default)]
    dev_major: u32,
    #[serde(default)]
    dev_minor: u32,
    /// Go marshals a nil `[]byte` as `null`.
    #[serde(default)]
    xattrs: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    inner_offset: u64,
    #[serde(default)]
    chunk_offset: u64,
    #[serde(default)]
    chunk_size: u64,
    #[serde(default)]
    chunk_digest: Option<String>,
}

fn bad(name: &str, reason: impl Into<String>) -> EstargzError {
    EstargzError::BadEntry {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// Parse the TOC member. `toc_region` is blob bytes
/// `[toc_offset, blob_size - FOOTER_SIZE)`; `expected_toc_digest` is the
/// layer descriptor's [`TOC_DIGEST_ANNOTATION`], and when given the TOC must
/// match it. Returns the entries (landmarks hidden) and the chunk table; a
/// regular file's `data` is the index of its first chunk, `u64::MAX` when
/// empty.
pub fn parse_toc(
    toc_region: &[u8],
    toc_offset: u64,
    expected_toc_digest: Option<&str>,
) -> Result<(Vec<Entry>, EstargzIndex), EstargzError> {
    let expected = expected_toc_digest
        .map(parse_sha256_annotation)
        .transpose()?;
    let json = read_toc_json(toc_region)?;
    let actual: [u8; 32] = Sha256::digest(&json).into();
    if let Some(expected) = expected {
        if expected != actual {
            return Err(EstargzError::TocDigestMismatch {
                expected: format!("sha256:{}", hex::encode(expected)),
                actual: format!("sha256:{}", hex::encode(actual)),
            });
        }
    }
    let toc: Toc = serde_json::from_slice(&json).map_err(EstargzError::TocJson)?;
    if toc.version != 1 {
        return Err(EstargzError::TocVersion(toc.version));
    }
    build_tables(toc.entries, toc_offset)
}

fn parse_sha256_annotation(s: &str) -> Result<[u8; 32], EstargzError> {
    let err = || EstargzError::BadTocDigestAnnotation(s.to_string());
    let hex = s.strip_prefix("sha256:").ok_or_else(err)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).map_err(|_| err())?;
    Ok(out)
}

fn read_toc_json(toc_region: &[u8]) -> Result<Vec<u8>, EstargzError> {
    let mut archive = tar::Archive::new(GzDecoder::new(toc_region));
    for entry in archive.entries().map_err(EstargzError::TocRead)? {
        let entry = entry.map_err(EstargzError::TocRead)?;
        let path = entry.path_bytes();
        let is_toc = std::str::from_utf8(&path)
            .ok()
            .and_then(normalize_path)
            .is_some_and(|p| p == TOC_TAR_NAME);
        if !is_toc {
            continue;
        }
        let mut json = Vec::new();
        entry
            .take(MAX_TOC_JSON + 1)
            .read_to_end(&mut json)
            .map_err(EstargzError::TocRead)?;
        if json.len() as u64 > MAX_TOC_JSON {
            return Err(EstargzError::TocTooLarge);
        }
        return Ok(json);
    }
    Err(EstargzError::TocMissing)
}

/// The file whose chunks are being collected: continuation `chunk` entries
/// must name it.
struct OpenFile {
    name: String,
    size: u64,
    /// Where its chunks start in the table.
    first_chunk: usize,
    /// Landmarks have data too, but nobody reads it.
    hidden: bool,
}

fn build_tables(
    raw: Vec<TocEntry>,
    toc_offset: u64,
) -> Result<(Vec<Entry>, EstargzIndex), EstargzError> {
    // A member ends where the next one starts; several entries share one
    // offset when their data is packed into the same member. Offset 0 is
    // valid (Go omits it from the JSON): data packed into the first member.
    let mut offsets: Vec<u64> = raw.iter().map(|e| e.offset).collect();
    offsets.sort_unstable();
    offsets.dedup();
    let comp_end_after = |start: u64| {
        let i = offsets.partition_point(|&o| o <= start);
        offsets.get(i).copied().unwrap_or(toc_offset)
    };

    let mut entries = Vec::new();
    let mut chunks: Vec<EChunk> = Vec::new();
    let mut open: Option<OpenFile> = None;

    for e in raw {
        if e.kind == "chunk" {
            let file = open.as_ref().filter(|f| f.name == e.name).ok_or_else(|| {
                bad(
                    &e.name,
                    "a \"chunk\" entry that does not follow its \"reg\"",
                )
            })?;
            if !file.hidden {
                chunks.push(chunk_of(&e, file.size, toc_offset, &comp_end_after)?);
            }
            continue;
        }
        if let Some(file) = open.take() {
            finish_file(&file, &mut chunks)?;
        }

        let path = normalize_path(&e.name)
            .ok_or_else(|| bad(&e.name, "path climbs out of the layer root"))?;
        let hidden = HIDDEN.contains(&path.as_str());
        let kind = match e.kind.as_str() {
            "dir" => EntryKind::Dir,
            "reg" => EntryKind::File,
            "symlink" => EntryKind::Symlink,
            "hardlink" => EntryKind::Hardlink,
            "char" => EntryKind::CharDevice,
            "block" => EntryKind::BlockDevice,
            "fifo" => EntryKind::Fifo,
            other => return Err(bad(&e.name, format!("unknown type {other:?}"))),
        };

        let mut entry = Entry::new(path, kind);
        entry.mode = permission_bits(e.mode);
        entry.uid = e.uid;
        entry.gid = e.gid;
        entry.mtime = match e.modtime.as_deref() {
            None | Some("") => 0,
            Some(t) => parse_rfc3339(t)
                .ok_or_else(|| bad(&e.name, format!("modtime {t:?} is not RFC 3339")))?,
        };
        match kind {
            EntryKind::Symlink => {
                // A symlink target is resolved at lookup time relative to the
                // link, so it is kept exactly as written.
                let target = e.link_name.clone().unwrap_or_default();
                if target.is_empty() {
                    return Err(bad(&e.name, "symlink without linkName"));
                }
                entry.link_target = Some(target);
            }
            EntryKind::Hardlink => {
                let target = e
                    .link_name
                    .as_deref()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| bad(&e.name, "hardlink without linkName"))?;
                let target = normalize_path(target)
                    .ok_or_else(|| bad(&e.name, "hardlink target climbs out of the layer root"))?;
                entry.link_target = Some(target);
            }
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                entry.dev_major = e.dev_major;
                entry.dev_minor = e.dev_minor;
            }
            _ => {}
        }
        for (name, value) in e.xattrs.iter().flatten() {
            let value = match value {
                None => Vec::new(),
                Some(b64) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|err| bad(&e.name, format!("xattr {name:?} is not base64: {err}")))?,
            };
            entry.xattrs.push((name.clone(), value));
        }

        if kind == EntryKind::File {
            entry.size = e.size;
            let first_chunk = chunks.len();
            if e.size == 0 {
                entry.data = u64::MAX;
            } else if !hidden {
                entry.data = first_chunk as u64;
                chunks.push(chunk_of(&e, e.size, toc_offset, &comp_end_after)?);
            }
            open = Some(OpenFile {
                name: e.name.clone(),
                size: e.size,
                first_chunk,
                hidden,
            });
        }
        if !hidden {
            entries.push(entry);
        }
    }
    if let Some(file) = open.take() {
        finish_file(&file, &mut chunks)?;
    }
    Ok((entries, EstargzIndex { toc_offset, chunks }))
}

fn chunk_of(
    e: &TocEntry,
    file_size: u64,
    toc_offset: u64,
    comp_end_after: &impl Fn(u64) -> u64,
) -> Result<EChunk, EstargzError> {
    if e.offset >= toc_offset {
        return Err(bad(
            &e.name,
            format!("offset {} is not before the TOC at {toc_offset}", e.offset),
        ));
    }
    // chunkSize 0 marks the last (or only) chunk: it runs to the end.
    let size = if e.chunk_size > 0 {
        e.chunk_size
    } else {
        file_size.checked_sub(e.chunk_offset).ok_or_else(|| {
            bad(
                &e.name,
                format!(
                    "chunkOffset {} is past the file's size {file_size}",
                    e.chunk_offset
                ),
            )
        })?
    };
    let digest = match e.chunk_digest.as_deref() {
        None | Some("") => None,
        Some(d) => Some(parse_sha256(d).ok_or_else(|| {
            bad(
                &e.name,
                format!("unsupported chunkDigest {d:?} (expected sha256:<64 hex digits>)"),
            )
        })?),
    };
    Ok(EChunk {
        comp_start: e.offset,
        comp_end: comp_end_after(e.offset),
        file_offset: e.chunk_offset,
        size,
        digest,
        inner_offset: e.inner_offset,
    })
}

fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.strip_prefix("sha256:")?, &mut out).ok()?;
    Some(out)
}

/// Readers locate a byte by binary search over a file's chunks, so they must
/// tile the file exactly: sorted, no gaps, no overlaps, no excess.
fn finish_file(file: &OpenFile, chunks: &mut [EChunk]) -> Result<(), EstargzError> {
    if file.hidden {
        return Ok(());
    }
    let own = &mut chunks[file.first_chunk..];
    own.sort_by_key(|c| c.file_offset);
    // Invariant: next <= file.size, so the subtraction cannot underflow and
    // the addition cannot overflow.
    let mut next = 0u64;
    for c in own.iter() {
        if c.file_offset != next || c.size == 0 || c.size > file.size - next {
            return Err(bad(
                &file.name,
                format!(
                    "chunks do not tile the {}-byte file: chunk at {} (size {}) where one at {next} was expected",
                    file.size, c.file_offset, c.size
                ),
            ));
        }
        next += c.size;
    }
    if next != file.size {
        return Err(bad(
            &file.name,
            format!("chunks cover {next} bytes of a {}-byte file", file.size),
        ));
    }
    Ok(())
}

/// Keep the 12 Unix permission bits, whether the TOC holds a tar mode or a
/// Go `os.FileMode` (which puts setuid, setgid and sticky in high bits).
fn permission_bits(mode: i64) -> u32 {
    let m = mode as u64;
    let mut bits = (m & 0o7777) as u32;
    if m & GO_MODE_SETUID != 0 {
        bits |= 0o4000;
    }
    if m & GO_MODE_SETGID != 0 {
        bits |= 0o2000;
    }
    if m & GO_MODE_STICKY != 0 {
        bits |= 0o1000;
    }
    bits
}

/// Unix seconds of an RFC 3339 time such as `2019-08-20T10:30:43Z` or
/// `2021-03-04T05:06:07.5+01:00`; fractions of a second are dropped.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            digits
                .iter()
                .fold(0i64, |n, d| n * 10 + i64::from(d - b'0')),
        )
    };
    let sep = |i: usize, ok: &[u8]| ok.contains(b.get(i)?).then_some(());
    let year = num(0..4)?;
    sep(4, b"-")?;
    let month = num(5..7)?;
    sep(7, b"-")?;
    let day = num(8..10)?;
    sep(10, b"Tt ")?;
    let hour = num(11..13)?;
    sep(13, b":")?;
    let minute = num(14..16)?;
    sep(16, b":")?;
    // 60 allows a leap second; it lands on the next minute's first second.
    let second = num(17..19)?;
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() => {
            sep(i + 3, b":")?;
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[month as usize - 1]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_since_epoch(year, month, day);
    Some(days * 86400 + hour * 3600 + minute * 60 + second - offset)
}

/// Days from 1970-01-01 to a proleptic Gregorian date, counted in 400-year
/// eras (146097 days each) with years starting in March so that the leap day
/// falls at the end of a year.
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12; // March = 0
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719468 days lie between 0000-03-01 and 1970-01-01.
    era * 146097 + day_of_era - 719468
}

/// Decompress one chunk from `compressed`, blob bytes starting at
/// `chunk.comp_start` (up to `comp_end`; fewer suffice as long as the chunk's
/// own bytes are there). Returns exactly `chunk.size` bytes, checked against
/// the chunk digest when the TOC has one.
pub fn decode_chunk(chunk: &EChunk, compressed: &[u8]) -> Result<Vec<u8>, EstargzError> {
    let read_err = |source| EstargzError::ChunkRead {
        comp_start: chunk.comp_start,
        source,
    };
    let mut member = GzDecoder::new(compressed);
    let skipped =
        io::copy(&mut (&mut member).take(chunk.inner_offset), &mut io::sink()).map_err(read_err)?;
    if skipped != chunk.inner_offset {
        return Err(EstargzError::ChunkTruncated {
            comp_start: chunk.comp_start,
            wanted: chunk.inner_offset + chunk.size,
            got: skipped,
        });
    }
    // Grown as data arrives rather than sized from the TOC up front, so a
    // hostile size cannot force a huge allocation.
    let mut out = Vec::new();
    (&mut member)
        .take(chunk.size)
        .read_to_end(&mut out)
        .map_err(read_err)?;
    if out.len() as u64 != chunk.size {
        return Err(EstargzError::ChunkTruncated {
            comp_start: chunk.comp_start,
            wanted: chunk.inner_offset + chunk.size,
            got: skipped + out.len() as u64,
        });
    }
    match chunk.digest {
        Some(expected) => {
            let actual: [u8; 32] = Sha256::digest(&out).into();
            if actual != expected {
                return Err(EstargzError::ChunkDigestMismatch {
                    comp_start: chunk.comp_start,
                    expected: hex::encode(expected),
                    actual: hex::encode(actual),
                });
            }
        }
        // Without a digest the member's CRC is the only check there is; the
        // rest of the member is a little tar padding and a few headers.
        None => {
            io::copy(&mut member, &mut io::sink()).map_err(read_err)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use serde_json::{json, Value};
    use std::collections::HashMap;
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
                ent["chunkDigest"] =
                    json!(format!("sha256:{}", hex::encode(Sha256::digest(piece))));
                self.toc.push(ent.clone());
            }
            let pad = (512 - s.data.len() % 512) % 512;
            self.write(&vec![0; pad]);
        }

        fn finish(mut self) -> Built {
            self.close_member();
            let toc_offset = self.blob.len() as u64;
            let json =
                serde_json::to_vec_pretty(&json!({"version": 1, "entries": self.toc})).unwrap();
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
        let mut x = 0x9e3779b97f4a7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
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
    fn read_files(
        built: &Built,
        entries: &[Entry],
        index: &EstargzIndex,
    ) -> HashMap<String, Vec<u8>> {
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

    #[test]
    fn parses_rfc3339() {
        let cases = [
            ("1970-01-01T00:00:00Z", Some(0)),
            (MTIME, Some(MTIME_UNIX)),
            ("2019-08-20T10:30:43.999999999Z", Some(MTIME_UNIX)),
            ("2019-08-20t12:30:43+02:00", Some(MTIME_UNIX)),
            ("2019-08-20T05:00:43-05:30", Some(MTIME_UNIX)),
            ("0001-01-01T00:00:00Z", Some(-62135596800)), // Go's zero time
            ("2000-02-29T00:00:00Z", Some(951782400)),
            ("2100-03-01T00:00:00Z", Some(4107542400)),
            ("1969-12-31T23:59:59Z", Some(-1)),
            ("2100-02-29T00:00:00Z", None),
            ("2019-13-01T00:00:00Z", None),
            ("2019-08-20T10:30:43", None),
            ("2019-08-20T10:30:43.Z", None),
            ("2019-08-20T10:30:43+0200", None),
            ("2019-08-20T10:30:43Zjunk", None),
            ("2019-8-20T10:30:43Z", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_rfc3339(text), want, "{text}");
        }
    }

    #[test]
    fn permission_bits_from_tar_or_go_modes() {
        assert_eq!(permission_bits(0o100644), 0o644);
        assert_eq!(permission_bits(0o4755), 0o4755);
        let go_dir_sticky = (1i64 << 31) | (1 << 20) | 0o777;
        assert_eq!(permission_bits(go_dir_sticky), 0o1777);
        assert_eq!(permission_bits((1 << 23) | (1 << 22) | 0o755), 0o6755);
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
}
