//! The table of contents: `stargz.index.json` in the TOC member, turned
//! into the layer's entries and a chunk table that says which gzip member
//! holds each piece of a regular file.

use super::rfc3339::parse_rfc3339;
use super::{EChunk, EstargzError, EstargzIndex, HIDDEN, MAX_TOC_JSON, TOC_TAR_NAME};
use crate::layer::{normalize_path, Entry, EntryKind};
use base64::Engine as _;
use flate2::read::GzDecoder;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::Read;

// Go's os.FileMode keeps these outside the 12 Unix permission bits.
const GO_MODE_SETUID: u64 = 1 << 23;
const GO_MODE_SETGID: u64 = 1 << 22;
const GO_MODE_STICKY: u64 = 1 << 20;

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
/// layer descriptor's [`TOC_DIGEST_ANNOTATION`](super::TOC_DIGEST_ANNOTATION),
/// and when given the TOC must match it. Returns the entries (landmarks
/// hidden) and the chunk table; a regular file's `data` is the index of its
/// first chunk, `u64::MAX` when empty.
pub(crate) fn parse_toc(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_bits_from_tar_or_go_modes() {
        assert_eq!(permission_bits(0o100644), 0o644);
        assert_eq!(permission_bits(0o4755), 0o4755);
        let go_dir_sticky = (1i64 << 31) | (1 << 20) | 0o777;
        assert_eq!(permission_bits(go_dir_sticky), 0o1777);
        assert_eq!(permission_bits((1 << 23) | (1 << 22) | 0o755), 0o6755);
    }
}
