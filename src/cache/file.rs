//! Self-checking files: a 16-byte header (magic, reserved, checksum)
//! followed by the body, created by write-to-temp then rename.
//!
//! The checksum (xxh3-64) covers the file's *identity* as well as its body:
//! for a chunk, the layer digest and chunk number; for an index, its name.
//! A file that is torn or flipped fails it, and so does an intact file
//! that is in the wrong place: moved, swapped with another chunk, or
//! copied from another layer. Either way it reads as damaged, never as the
//! bytes of what was asked for.

use std::io::{self, Write};
use std::path::Path;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// `LZB2`: the checksum covers the identity (files of the identity-less
/// `LZB1` format read as damaged, so they are refetched or rebuilt).
const MAGIC: &[u8; 4] = b"LZB2";
const HEADER: usize = 16;

/// The checksum of `body` stored as `identity`: the body's xxh3 seeded
/// with the identity's (one pass over the body, as fast as an unseeded one).
fn checksum(identity: &[u8], body: &[u8]) -> u64 {
    xxh3_64_with_seed(body, xxh3_64(identity))
}

/// Write `body` (known as `identity`) to `tmp`, then rename it over `dest`.
/// Returns the file size.
pub(crate) fn write_atomic(
    tmp: &Path,
    dest: &Path,
    identity: &[u8],
    body: &[u8],
) -> io::Result<u64> {
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&checksum(identity, body).to_le_bytes());
    let mut f = std::fs::File::create(tmp)?;
    let written = f.write_all(&header).and_then(|_| f.write_all(body));
    drop(f);
    if let Err(e) = written.and_then(|_| std::fs::rename(tmp, dest)) {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    Ok((HEADER + body.len()) as u64)
}

/// Append the body of the self-checking file at `path`, which must be
/// `identity`, to `out`: `Ok(true)` if intact, `Ok(false)` (and `out`
/// unchanged) if damaged or not `identity`'s, `Err` if it cannot be read.
/// The body goes straight into `out`, with no copy.
pub(crate) fn read_checked_into(
    path: &Path,
    identity: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut header = [0u8; HEADER];
    let before = out.len();
    let intact = match f.read_exact(&mut header) {
        Ok(()) if &header[..4] == MAGIC => {
            if let Err(e) = f.read_to_end(out) {
                out.truncate(before);
                return Err(e);
            }
            let want = u64::from_le_bytes(header[8..16].try_into().unwrap());
            checksum(identity, &out[before..]) == want
        }
        Ok(()) => false,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => false,
        Err(e) => return Err(e),
    };
    if !intact {
        out.truncate(before);
    }
    Ok(intact)
}

/// `Ok(Some(body))` if intact and `identity`'s, `Ok(None)` if the file
/// exists but is damaged or another's, `Err` if it cannot be read at all
/// (usually: it does not exist).
pub(crate) fn read_checked(path: &Path, identity: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut data = std::fs::read(path)?;
    if data.len() < HEADER || &data[..4] != MAGIC {
        return Ok(None);
    }
    let want = u64::from_le_bytes(data[8..16].try_into().unwrap());
    if checksum(identity, &data[HEADER..]) != want {
        return Ok(None);
    }
    data.drain(..HEADER);
    Ok(Some(data))
}
