//! An OCI image layout directory (`oci:DIR`) as a content source.
//!
//! Reads are counted exactly like registry requests so that a demo against a
//! local layout shows the same "bytes fetched" numbers a registry would.

use super::{manifest, Counters, RegistryError};
use crate::digest::Digest;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{BoxStream, StreamExt};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const STREAM_CHUNK: usize = 256 * 1024;

pub(crate) struct Layout {
    dir: PathBuf,
    location: String,
    counters: Arc<Counters>,
}

impl Layout {
    pub(crate) fn new(dir: &Path, counters: Arc<Counters>) -> Self {
        Layout {
            dir: dir.to_path_buf(),
            location: format!("oci:{}", dir.display()),
            counters,
        }
    }

    pub(crate) fn location(&self) -> &str {
        &self.location
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        // Digest guarantees 64 hex digits, so this cannot leave the layout.
        self.dir.join("blobs").join("sha256").join(digest.hex())
    }

    /// The digest of the index.json entry named by `tag`, or of the only
    /// entry when no tag is given.
    pub(crate) async fn select_entry(&self, tag: Option<&str>) -> Result<Digest, RegistryError> {
        let path = self.dir.join("index.json");
        let text = tokio::fs::read(&path).await.map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                RegistryError::NotFound {
                    location: self.location.clone(),
                    what: "index.json".into(),
                    detail: format!("{} is not an OCI image layout", self.dir.display()),
                }
            } else {
                RegistryError::Io {
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
        let bad = |reason: String| RegistryError::BadManifest {
            reference: self.location.clone(),
            what: "index.json".into(),
            reason,
        };
        let entries = match manifest::parse(&text).map_err(bad)? {
            manifest::Parsed::Index(entries) => entries,
            manifest::Parsed::Image(_) => {
                return Err(bad("is an image manifest, expected an image index".into()))
            }
        };
        let name =
            |e: &manifest::Descriptor| e.annotations.get(manifest::REF_NAME_ANNOTATION).cloned();
        let available: Vec<String> = entries.iter().filter_map(name).collect();
        match tag {
            Some(t) => entries
                .iter()
                .find(|e| name(e).as_deref() == Some(t))
                .map(|e| e.digest.clone())
                .ok_or_else(|| RegistryError::LayoutTagNotFound {
                    location: self.location.clone(),
                    tag: t.to_string(),
                    available,
                }),
            None if entries.len() == 1 => Ok(entries[0].digest.clone()),
            None => Err(RegistryError::LayoutAmbiguous {
                location: self.location.clone(),
                count: entries.len(),
                available,
            }),
        }
    }

    pub(crate) async fn read_manifest(
        &self,
        digest: &Digest,
    ) -> Result<(Bytes, Digest), RegistryError> {
        let data = self.read_whole(digest, "manifest").await?;
        let actual = Digest::of_bytes(&data);
        Ok((data, actual))
    }

    /// The whole blob, unverified (the caller checks it).
    pub(crate) async fn read_blob(&self, digest: &Digest) -> Result<Bytes, RegistryError> {
        self.read_whole(digest, "blob").await
    }

    async fn read_whole(&self, digest: &Digest, kind: &str) -> Result<Bytes, RegistryError> {
        self.counters.request();
        let path = self.blob_path(digest);
        let data = tokio::fs::read(&path)
            .await
            .map_err(|e| self.io_error(e, path, kind, digest))?;
        self.counters.received(data.len());
        Ok(Bytes::from(data))
    }

    pub(crate) async fn fetch_range(
        &self,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Bytes, RegistryError> {
        self.counters.request();
        let path = self.blob_path(digest);
        let len = (range.end - range.start) as usize;
        let start = range.start;
        let p = path.clone();
        let read = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
            let file = std::fs::File::open(&p)?;
            let mut buf = vec![0u8; len];
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut buf[filled..], start + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(filled);
            Ok(buf)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r)
        .map_err(|e| self.io_error(e, path, "blob", digest))?;
        self.counters.received(read.len());
        if read.len() < len {
            return Err(RegistryError::ShortBody {
                location: self.location.clone(),
                what: format!("blob {digest} bytes {}-{}", range.start, range.end - 1),
                expected: len as u64,
                got: read.len() as u64,
            });
        }
        Ok(Bytes::from(read))
    }

    pub(crate) async fn stream(
        self: Arc<Self>,
        digest: &Digest,
        offset: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError> {
        self.counters.request();
        let path = self.blob_path(digest);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.io_error(e, path.clone(), "blob", digest))?;
        file.seek(io::SeekFrom::Start(offset))
            .await
            .map_err(|e| self.io_error(e, path.clone(), "blob", digest))?;
        let state = Some((file, self, path));
        let stream = futures_util::stream::unfold(state, |state| async move {
            let (mut file, layout, path) = state?;
            let mut buf = BytesMut::with_capacity(STREAM_CHUNK);
            match file.read_buf(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    layout.counters.received(n);
                    Some((Ok(buf.freeze()), Some((file, layout, path))))
                }
                Err(source) => Some((Err(RegistryError::Io { path, source }), None)),
            }
        });
        Ok(stream.boxed())
    }

    fn io_error(&self, e: io::Error, path: PathBuf, kind: &str, digest: &Digest) -> RegistryError {
        if e.kind() == io::ErrorKind::NotFound {
            RegistryError::NotFound {
                location: self.location.clone(),
                what: format!("{kind} {digest}"),
                detail: format!("no file {}", path.display()),
            }
        } else {
            RegistryError::Io { path, source: e }
        }
    }
}
