//! CRFS-style table-of-contents entries (the JSON that eStargz and
//! zstd:chunked both carry) turned into the layer's entries and a chunk
//! table that says which compressed range holds each piece of a regular
//! file.

use super::rfc3339::parse_rfc3339;
use super::TocChunk;
use crate::layer::{normalize_path, Entry, EntryKind};
use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;

// Go's os.FileMode keeps these outside the 12 Unix permission bits.
const GO_MODE_SETUID: u64 = 1 << 23;
const GO_MODE_SETGID: u64 = 1 << 22;
const GO_MODE_STICKY: u64 = 1 << 20;

/// A TOC entry that breaks the format's rules.
#[derive(Debug, thiserror::Error)]
#[error("TOC entry {name:?}: {reason}")]
pub(crate) struct BadEntry {
    pub(crate) name: String,
    pub(crate) reason: String,
}

/// One TOC entry, as both formats write it (fields a format does not use
/// are absent from its JSON).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TocEntry {
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
    /// sha256 of the whole file.
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    offset: u64,
    /// zstd:chunked: where the compressed data of the whole file ends.
    #[serde(default)]
    end_offset: Option<u64>,
    #[serde(default)]
    inner_offset: u64,
    #[serde(default)]
    chunk_offset: u64,
    #[serde(default)]
    chunk_size: u64,
    #[serde(default)]
    chunk_digest: Option<String>,
    #[serde(default)]
    chunk_type: Option<String>,
}

/// What differs between the formats that share this TOC.
pub(crate) struct TocRules<'a> {
    /// Where the compressed data ends (the TOC's own frame or member
    /// starts there): every chunk lies before it.
    pub(crate) data_end: u64,
    /// Paths of marker files that are not part of the image.
    pub(crate) hidden: &'a [&'a str],
    /// Whether every chunk must have a digest (a file of one chunk may give
    /// it as the file's `digest`).
    pub(crate) require_digests: bool,
}

fn bad(name: &str, reason: impl Into<String>) -> BadEntry {
    BadEntry {
        name: name.to_string(),
        reason: reason.into(),
    }
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
    /// Where the file's compressed data ends, when the TOC says.
    end_offset: Option<u64>,
    /// The file's own digest, which a file of one chunk may give instead of
    /// a chunk digest.
    digest: Option<String>,
}

/// The layer's entries (hidden ones left out) and its chunk table, from the
/// TOC's entries in order; a regular file's `data` is the index of its first
/// chunk, `u64::MAX` when empty.
pub(crate) fn build_tables(
    raw: Vec<TocEntry>,
    rules: &TocRules,
) -> Result<(Vec<Entry>, Vec<TocChunk>), BadEntry> {
    // A chunk's compressed data ends where the next one's starts (a
    // zstd:chunked file's last chunk ends at its `endOffset`); several
    // entries share one offset when their data is packed into the same
    // member. Offset 0 is valid (Go omits it from the JSON): data packed
    // into the first member.
    let mut offsets: Vec<u64> = raw.iter().map(|e| e.offset).collect();
    offsets.sort_unstable();
    offsets.dedup();
    let data_end = rules.data_end;
    let comp_end_after = |start: u64| {
        let i = offsets.partition_point(|&o| o <= start);
        offsets.get(i).copied().unwrap_or(data_end)
    };

    let mut entries = Vec::new();
    let mut chunks: Vec<TocChunk> = Vec::new();
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
                let end = comp_end_after(e.offset).min(file.end_offset.unwrap_or(data_end));
                chunks.push(chunk_of(&e, file.size, end, data_end)?);
            }
            continue;
        }
        if let Some(file) = open.take() {
            finish_file(&file, &mut chunks, rules)?;
        }

        let path = normalize_path(&e.name)
            .ok_or_else(|| bad(&e.name, "path climbs out of the layer root"))?;
        let hidden = rules.hidden.contains(&path.as_str());
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
            let end_offset = match e.end_offset {
                Some(end) if end <= e.offset || end > data_end => {
                    return Err(bad(
                        &e.name,
                        format!(
                        "endOffset {end} is not after offset {} and before the TOC at {data_end}",
                        e.offset
                    ),
                    ))
                }
                other => other,
            };
            if e.size == 0 {
                entry.data = u64::MAX;
            } else if !hidden {
                entry.data = first_chunk as u64;
                let end = comp_end_after(e.offset).min(end_offset.unwrap_or(data_end));
                chunks.push(chunk_of(&e, e.size, end, data_end)?);
            }
            open = Some(OpenFile {
                name: e.name.clone(),
                size: e.size,
                first_chunk,
                hidden,
                end_offset,
                digest: e.digest.clone(),
            });
        }
        if !hidden {
            entries.push(entry);
        }
    }
    if let Some(file) = open.take() {
        finish_file(&file, &mut chunks, rules)?;
    }
    Ok((entries, chunks))
}

/// The chunk an entry describes, whose compressed data is
/// `[e.offset, comp_end)`.
fn chunk_of(
    e: &TocEntry,
    file_size: u64,
    comp_end: u64,
    data_end: u64,
) -> Result<TocChunk, BadEntry> {
    if e.offset >= comp_end || e.offset >= data_end {
        return Err(bad(
            &e.name,
            format!(
                "offset {} is not before the TOC at {data_end} and its data's end {comp_end}",
                e.offset
            ),
        ));
    }
    match e.chunk_type.as_deref() {
        None | Some("") | Some("data") => {}
        Some(other) => return Err(bad(&e.name, format!("unsupported chunkType {other:?}"))),
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
    Ok(TocChunk {
        comp_start: e.offset,
        comp_end,
        file_offset: e.chunk_offset,
        size,
        digest,
        inner_offset: e.inner_offset,
    })
}

pub(crate) fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.strip_prefix("sha256:")?, &mut out).ok()?;
    Some(out)
}

/// Readers locate a byte by binary search over a file's chunks, so they must
/// tile the file exactly: sorted, no gaps, no overlaps, no excess.
/// A file of one chunk may give its digest as the file's; a format that
/// requires digests refuses a chunk without one.
fn finish_file(file: &OpenFile, chunks: &mut [TocChunk], rules: &TocRules) -> Result<(), BadEntry> {
    if file.hidden {
        return Ok(());
    }
    let own = &mut chunks[file.first_chunk..];
    if let [only] = &mut *own {
        if only.digest.is_none() {
            if let Some(d) = file.digest.as_deref().filter(|d| !d.is_empty()) {
                only.digest = Some(parse_sha256(d).ok_or_else(|| {
                    bad(
                        &file.name,
                        format!("unsupported digest {d:?} (expected sha256:<64 hex digits>)"),
                    )
                })?);
            }
        }
    }
    if rules.require_digests {
        if let Some(c) = own.iter().find(|c| c.digest.is_none()) {
            return Err(bad(
                &file.name,
                format!("the chunk at file offset {} has no digest", c.file_offset),
            ));
        }
    }
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
