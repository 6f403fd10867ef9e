//! The table of contents: `stargz.index.json` in the TOC member, checked
//! against the layer's annotation and turned into the layer's entries and a
//! chunk table that says which gzip member holds each piece of a regular
//! file.

use super::{EstargzError, EstargzIndex, HIDDEN, MAX_TOC_JSON, TOC_TAR_NAME};
use crate::layer::toc::{self, TocEntry, TocRules};
use crate::layer::{normalize_path, Entry};
use flate2::read::GzDecoder;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::io::Read;

#[derive(Deserialize)]
struct Toc {
    version: i64,
    #[serde(default)]
    entries: Vec<TocEntry>,
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

fn build_tables(
    raw: Vec<TocEntry>,
    toc_offset: u64,
) -> Result<(Vec<Entry>, EstargzIndex), EstargzError> {
    let rules = TocRules {
        data_end: toc_offset,
        hidden: &HIDDEN,
        require_digests: false,
    };
    let (entries, chunks) = toc::build_tables(raw, &rules)?;
    Ok((entries, EstargzIndex::new(toc_offset, chunks)))
}
