//! The entry table of a tar stream: one [`Entry`] per member, with the offset
//! of its data in the (uncompressed) stream so that a read can later go
//! straight to those bytes. PAX and GNU long names/links are applied by the
//! `tar` crate; PAX uid/gid/mtime overrides and `SCHILY.xattr.*` records here.

use super::{normalize_path, Entry, EntryKind};
use std::io::{self, Read};

#[derive(Debug, thiserror::Error)]
pub(crate) enum TarError {
    #[error("reading tar stream: {0}")]
    Io(#[from] io::Error),
    #[error("tar entry {path:?}: {reason}")]
    Entry { path: String, reason: String },
}

const XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Read every entry header of the tar stream in `reader`, calling `on_entry`
/// for each in stream order, then drain the rest of the stream (end-of-archive
/// padding) so that a wrapping reader sees all of it (digest, gzip trailer).
/// Returns the number of entries.
pub(crate) fn read_entries<R: Read>(
    mut reader: R,
    mut on_entry: impl FnMut(Entry),
) -> Result<u64, TarError> {
    let mut count = 0u64;
    {
        let mut archive = tar::Archive::new(&mut reader);
        for item in archive.entries()? {
            let mut item = item?;
            if let Some(e) = convert(&mut item)? {
                on_entry(e);
                count += 1;
            }
        }
    }
    io::copy(&mut reader, &mut io::sink())?;
    Ok(count)
}

fn convert<R: Read>(item: &mut tar::Entry<'_, R>) -> Result<Option<Entry>, TarError> {
    let raw_path = String::from_utf8_lossy(&item.path_bytes()).into_owned();
    let bad = |reason: &str| TarError::Entry {
        path: raw_path.clone(),
        reason: reason.to_string(),
    };
    let path = normalize_path(&raw_path).ok_or_else(|| bad("path escapes the root with '..'"))?;
    let header = item.header();
    let kind = match header.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
        tar::EntryType::Directory => EntryKind::Dir,
        tar::EntryType::Symlink => EntryKind::Symlink,
        tar::EntryType::Link => EntryKind::Hardlink,
        tar::EntryType::Char => EntryKind::CharDevice,
        tar::EntryType::Block => EntryKind::BlockDevice,
        tar::EntryType::Fifo => EntryKind::Fifo,
        tar::EntryType::GNUSparse => return Err(bad("GNU sparse files are not supported")),
        other => {
            tracing::warn!(path = %raw_path, "skipping tar entry of type {other:?}");
            return Ok(None);
        }
    };
    let mut e = Entry::new(path, kind);
    e.mode = header.mode().map_err(|_| bad("bad mode field"))? & 0o7777;
    e.uid = header.uid().map_err(|_| bad("bad uid field"))? as u32;
    e.gid = header.gid().map_err(|_| bad("bad gid field"))? as u32;
    e.mtime = header.mtime().map_err(|_| bad("bad mtime field"))? as i64;
    if matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
        e.dev_major = header.device_major().ok().flatten().unwrap_or(0);
        e.dev_minor = header.device_minor().ok().flatten().unwrap_or(0);
    }
    if matches!(kind, EntryKind::Symlink | EntryKind::Hardlink) {
        let target = item
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .ok_or_else(|| bad("link without a target"))?;
        e.link_target = Some(if kind == EntryKind::Hardlink {
            normalize_path(&target).ok_or_else(|| bad("hard link escapes the root"))?
        } else {
            target
        });
    }
    if let Some(exts) = item.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix(XATTR_PREFIX) {
                e.xattrs
                    .push((name.to_string(), ext.value_bytes().to_vec()));
            } else {
                let value = ext.value().unwrap_or("");
                // PAX numeric records win over the ustar fields they extend.
                match key {
                    "uid" => e.uid = value.parse().map_err(|_| bad("bad PAX uid"))?,
                    "gid" => e.gid = value.parse().map_err(|_| bad("bad PAX gid"))?,
                    "mtime" => {
                        let secs = value.split('.').next().unwrap_or("0");
                        e.mtime = secs.parse().map_err(|_| bad("bad PAX mtime"))?;
                    }
                    _ => {}
                }
            }
        }
    }
    if kind == EntryKind::File {
        e.size = item.size();
        e.data = item.raw_file_position();
    }
    Ok(Some(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(gnu: bool) -> tar::Header {
        let mut h = if gnu {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o644);
        h
    }

    fn build() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = hdr(true);
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o2775);
        h.set_uid(1000);
        h.set_gid(100);
        h.set_size(0);
        b.append_data(&mut h, "./d/", io::empty()).unwrap();

        let long = format!("d/{}", "n".repeat(150));
        let mut h = hdr(true);
        h.set_mode(0o4755);
        h.set_size(5);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, &long, &b"hello"[..]).unwrap();

        let mut h = hdr(true);
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "d/hl", &long).unwrap();

        let mut h = hdr(false);
        h.set_entry_type(tar::EntryType::Char);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_size(0);
        b.append_data(&mut h, "dev/null", io::empty()).unwrap();

        b.append_pax_extensions([
            ("SCHILY.xattr.security.capability", &b"\x01\x00\x00\x02"[..]),
            ("uid", &b"3000000"[..]),
        ])
        .unwrap();
        let mut h = hdr(false);
        h.set_mode(0o644);
        h.set_size(3);
        b.append_data(&mut h, "cap", &b"abc"[..]).unwrap();

        let mut h = hdr(true);
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "abs", "/etc/target").unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn reads_every_kind_with_data_offsets() {
        let data = build();
        let mut entries = Vec::new();
        let n = read_entries(&data[..], |e| entries.push(e)).unwrap();
        assert_eq!(n, 6);
        let long = format!("d/{}", "n".repeat(150));
        assert_eq!(entries[0].path, "d");
        assert_eq!(entries[0].mode, 0o2775);
        assert_eq!((entries[0].uid, entries[0].gid), (1000, 100));

        let f = &entries[1];
        assert_eq!(f.path, long);
        assert_eq!(f.mode, 0o4755);
        assert_eq!(f.mtime, 1_700_000_000);
        let off = f.data as usize;
        assert_eq!(&data[off..off + 5], b"hello");

        assert_eq!(entries[2].kind, EntryKind::Hardlink);
        assert_eq!(entries[2].link_target.as_deref(), Some(long.as_str()));
        assert_eq!(entries[3].kind, EntryKind::CharDevice);
        assert_eq!((entries[3].dev_major, entries[3].dev_minor), (1, 3));

        let cap = &entries[4];
        assert_eq!(cap.uid, 3_000_000);
        assert_eq!(
            cap.xattrs,
            vec![(
                "security.capability".to_string(),
                b"\x01\x00\x00\x02".to_vec()
            )]
        );
        let off = cap.data as usize;
        assert_eq!(&data[off..off + 3], b"abc");
        assert_eq!(entries[5].link_target.as_deref(), Some("/etc/target"));
    }

    #[test]
    fn refuses_paths_that_climb_out() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = hdr(true);
        h.set_size(1);
        // `append_data` refuses `..`, so write the name into the header directly.
        h.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../etc/evil\0");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let err = read_entries(&data[..], |_| {}).unwrap_err();
        assert!(err.to_string().contains("escapes"), "{err}");
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let data = build();
        assert!(read_entries(&data[..700], |_| {}).is_err());
    }
}
