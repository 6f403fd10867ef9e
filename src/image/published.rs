//! Layer indexes published beside an image (`lazyboot index --push`) and
//! pulled from there instead of a streaming pass ([`fetch_published`] states
//! the trust model).

use super::build::ensure_built_index;
use super::error::{IndexError, ViewError};
use super::prefetch::PrefetchPlan;
use super::read::ReadPath;
use super::refine::refine;
use super::view::ImageView;
use crate::cache::ChunkCache;
use crate::digest::Digest;
use crate::layer::index::{LayerIndex, INDEX_VERSION};
use crate::layer::{format_from_media_type, normalize_path, EntryKind};
use crate::progress::Progress;
use crate::registry::{LayerDesc, Published, PushOutcome, ReferrersError, ResolvedImage, Source};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// Where an index pulled from the registry is kept in the cache: beside,
/// never instead of, the name of an index this lazyboot built, so that
/// [`ensure_built_index`] and images pinned by digest can tell them apart.
pub fn published_cache_name(layer: &Digest) -> String {
    format!("{}.published.idx", layer.hex())
}

/// What [`pull_published`] took from the registry.
#[derive(Clone, Debug)]
pub(crate) struct PulledIndexes {
    pub(crate) artifact: Digest,
    /// Layer indexes stored (eStargz layers have none: they are cheap to index).
    pub(crate) layers: usize,
    /// Whether a prefetch plan was stored (a plan learned here is kept).
    pub(crate) plan: bool,
}

/// Why a published artifact was not used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishedError {
    #[error(transparent)]
    Referrers(#[from] ReferrersError),
    #[error("lazyboot artifact {artifact}: index of layer {layer}: {reason}; not used")]
    BadIndex {
        artifact: Digest,
        layer: Digest,
        reason: String,
    },
    #[error("lazyboot artifact {artifact}: prefetch plan: {reason}; not used")]
    BadPlan { artifact: Digest, reason: String },
    #[error("storing published indexes: {0}")]
    Cache(#[from] crate::cache::CacheError),
}

/// Before any streaming pass of an image: if no layer of it is indexed in
/// this cache yet, pull the indexes (and prefetch plan) another lazyboot
/// published for it with `lazyboot index --push`, once for the whole image,
/// so that [`ensure_index`] finds them. Never fails: without a usable
/// artifact the layers are indexed by streaming as before. Returns the
/// artifact used.
///
/// Trust model. A gzip or tar layer can only be checked against its digest
/// by reading all of it: that is what the streaming pass is for, and what
/// makes every byte served traceable to the manifest (the block and chunk
/// sha256s recorded in an index come from that digest-checked pass). A
/// pulled index skips the pass, and what makes it right - the entry table
/// (names, modes, owners, where each file's bytes are), the checkpoints'
/// 32 KiB windows and the block/chunk hashes - cannot be checked without
/// reading the layer. Reads still verify every compressed block or tar
/// chunk against the index's hashes, but those hashes are the publisher's
/// word too: an index made up by whoever could push to the repository (or by
/// the registry itself) makes lazyboot serve files of its choosing. So:
///
/// - Published indexes are used only for images named by a registry tag.
///   Whoever can push to the repository, or runs the registry, can already
///   choose what a tag boots; a published index gives them no more power
///   than that. An image pinned by digest trusts nothing but the digest, so
///   it never uses published indexes (not even ones pulled into a shared
///   cache for a tag: they are kept under [`published_cache_name`]), and
///   neither do `oci:` layouts.
/// - What can be checked is: the artifact is ours, about this manifest, of
///   our index version; every blob matches its descriptor's digest and size;
///   each index is bound to its layer's digest and size, is of the layer's
///   format (gzip or tar; eStargz indexes are refused, their TOC is checked
///   against the manifest's annotation and costs two range reads), has
///   checkpoints, blocks and chunk hashes consistent with the layer's size,
///   and entries whose paths are normalised and stay inside the image and
///   whose data lies inside the layer. An artifact with any part failing is
///   not used at all.
/// - `lazyboot index --push` publishes only indexes it built itself
///   ([`ensure_built_index`]), never ones it pulled.
pub(crate) async fn fetch_published(
    source: &Source,
    image: &ResolvedImage,
    cache: &ChunkCache,
) -> Option<Digest> {
    if !source.named_by_tag() || image.layers.is_empty() {
        return None;
    }
    // Warm or partly warm: no registry round trip for the artifact.
    let indexed = image.layers.iter().any(|l| {
        cache.has_index(&LayerIndex::cache_name(&l.digest))
            || cache.has_index(&published_cache_name(&l.digest))
    });
    if indexed {
        return None;
    }
    match pull_published(source, image, cache).await {
        Ok(Some(p)) => {
            tracing::info!(
                image = %image.reference, artifact = %p.artifact, layers = p.layers, plan = p.plan,
                "using published indexes: no streaming pass for those layers"
            );
            Some(p.artifact)
        }
        Ok(None) => {
            tracing::debug!(image = %image.reference, "no published indexes");
            None
        }
        Err(e @ PublishedError::Referrers(ReferrersError::Registry(_))) => {
            tracing::info!(image = %image.reference, "published indexes unavailable ({e}); indexing by streaming");
            None
        }
        Err(e) => {
            tracing::warn!(image = %image.reference, "{e}; indexing by streaming");
            None
        }
    }
}

/// The work of [`fetch_published`] without its preconditions, reasons for
/// not using an artifact as errors. Everything is checked before anything
/// is stored.
pub(crate) async fn pull_published(
    source: &Source,
    image: &ResolvedImage,
    cache: &ChunkCache,
) -> Result<Option<PulledIndexes>, PublishedError> {
    let Some(pulled) = source.find_published(image, INDEX_VERSION).await? else {
        return Ok(None);
    };
    let artifact = pulled.artifact.clone();
    let mut chunk_counts = HashMap::new();
    let mut checked = Vec::new();
    for layer in &image.layers {
        let Some(bytes) = pulled.layer_indexes.get(&layer.digest) else {
            continue;
        };
        let idx = decode_published(bytes, layer).map_err(|reason| PublishedError::BadIndex {
            artifact: artifact.clone(),
            layer: layer.digest.clone(),
            reason,
        })?;
        chunk_counts.insert(layer.digest.clone(), idx.chunk_count());
        checked.push((layer, bytes));
    }
    let plan = match &pulled.plan {
        Some(bytes) => Some(check_plan(bytes, image, &chunk_counts).map_err(|reason| {
            PublishedError::BadPlan {
                artifact: artifact.clone(),
                reason,
            }
        })?),
        None => None,
    };
    for (layer, bytes) in &checked {
        cache.store_index(&published_cache_name(&layer.digest), bytes)?;
    }
    // A plan learned from this server's own nodes wins over one from elsewhere.
    let plan_stored = match plan {
        Some(p) if PrefetchPlan::load(cache, &image.manifest_digest).is_none() => {
            cache.store_index(
                &PrefetchPlan::cache_name(&image.manifest_digest),
                &p.encode(),
            )?;
            true
        }
        _ => false,
    };
    Ok(Some(PulledIndexes {
        artifact,
        layers: checked.len(),
        plan: plan_stored,
    }))
}

/// A published index of `layer`, if it passes every check that can be made
/// without reading the layer (see [`fetch_published`]).
pub(super) fn decode_published(bytes: &[u8], layer: &LayerDesc) -> Result<LayerIndex, String> {
    let idx = LayerIndex::decode(bytes, &layer.digest).map_err(|e| e.to_string())?;
    check_published(&idx, layer)?;
    Ok(idx)
}

fn check_published(idx: &LayerIndex, layer: &LayerDesc) -> Result<(), String> {
    let media = format_from_media_type(&layer.media_type).map_err(|e| e.to_string())?;
    if !idx.codec().publishable() {
        return Err(format!(
            "{} indexes are only ever built from the layer itself",
            idx.format
        ));
    }
    if idx.format != media {
        return Err(format!("a {} index for a {media} layer", idx.format));
    }
    if idx.compressed_size != layer.size {
        return Err(format!(
            "made for {} bytes of layer, the manifest says {}",
            idx.compressed_size, layer.size
        ));
    }
    let total = idx.uncompressed_size;
    idx.codec().check_consistent(layer.size, total)?;
    for e in &idx.entries {
        let bad = |what: &str| Err(format!("entry {:?}: {what}", e.path));
        // The same rules as the tar reader: normalised, never climbing out.
        if normalize_path(&e.path).as_deref() != Some(e.path.as_str()) {
            return bad("path is not normalised or leaves the image");
        }
        if e.mode > 0o7777 {
            return bad("mode has more than permission bits");
        }
        match e.kind {
            EntryKind::Hardlink => {
                let target = e.link_target.as_deref().unwrap_or("..");
                if normalize_path(target).as_deref() != Some(target) {
                    return bad("hard link target is not normalised or leaves the image");
                }
            }
            EntryKind::Symlink if e.link_target.is_none() => return bad("symlink without target"),
            EntryKind::File if e.data.checked_add(e.size).is_none_or(|end| end > total) => {
                return bad("data lies outside the layer")
            }
            _ => {}
        }
    }
    Ok(())
}

/// A published prefetch plan for `image`, checked against the image and the
/// published indexes (`chunk_counts`): a plan only steers prefetching, so
/// this just keeps it from naming what does not exist.
fn check_plan(
    bytes: &[u8],
    image: &ResolvedImage,
    chunk_counts: &HashMap<Digest, u64>,
) -> Result<PrefetchPlan, String> {
    let plan = PrefetchPlan::decode(bytes, &image.manifest_digest).map_err(|e| e.to_string())?;
    for s in &plan.steps {
        let layer = Digest::parse(&s.layer).map_err(|e| e.to_string())?;
        if !image.layers.iter().any(|l| l.digest == layer) {
            return Err(format!("names layer {layer}, which is not in the image"));
        }
        let beyond = chunk_counts.get(&layer).is_some_and(|&n| s.end > n);
        if s.start >= s.end || beyond {
            return Err(format!(
                "chunks {}..{} of layer {layer} do not exist",
                s.start, s.end
            ));
        }
    }
    Ok(plan)
}

/// What [`publish`] pushed.
#[derive(Clone, Debug)]
pub(crate) struct PublishReport {
    pub(crate) outcome: PushOutcome,
    pub(crate) layer_indexes: usize,
    /// eStargz layers, whose indexes are not published (see [`fetch_published`]).
    pub(crate) estargz_skipped: usize,
    pub(crate) plan: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Referrers(#[from] ReferrersError),
    #[error("adding checkpoints where the prefetch plan reads: {0}")]
    Refine(#[from] ViewError),
    #[error("storing the refined index: {0}")]
    Cache(#[from] crate::cache::CacheError),
}

/// `lazyboot index --push`: publish the image's layer indexes, built here
/// (a streaming pass for any layer that only has a pulled one), and its
/// prefetch plan if one was learned, as an artifact referring to the image.
/// With a plan, gzip indexes first get checkpoints where its reads start
/// (see `refine`).
pub(crate) async fn publish(
    view: &ImageView,
    progress: &Progress,
) -> Result<PublishReport, PublishError> {
    let (source, image, cache) = (view.source(), view.image(), view.cache());
    if !source.is_registry() {
        return Err(ReferrersError::NotARegistry {
            location: source.location().to_string(),
        }
        .into());
    }
    let mut layer_indexes = Vec::new();
    let mut estargz_skipped = 0;
    let plan = PrefetchPlan::load(cache, &image.manifest_digest);
    let path = ReadPath { source, cache };
    for layer in &image.layers {
        let bar = progress.bytes(format!("index {}", layer.digest.short()), layer.size);
        let mut idx = ensure_built_index(source, cache, layer, bar).await?;
        if !idx.codec().publishable() {
            estargz_skipped += 1;
            continue;
        }
        let encode = |idx: &LayerIndex| {
            idx.encode().map_err(|e| IndexError::Corrupt {
                layer: layer.digest.clone(),
                msg: e.to_string(),
            })
        };
        if let Some(plan) = &plan {
            if let Some(refined) = refine(&path, &idx, plan).await? {
                // Kept as this cache's own index too: the next publish finds
                // nothing to add and pushes the same content.
                cache.store_index(&LayerIndex::cache_name(&layer.digest), &encode(&refined)?)?;
                idx = Arc::new(refined);
            }
        }
        layer_indexes.push((layer.digest.clone(), Bytes::from(encode(&idx)?)));
    }
    let plan = plan.map(|p| Bytes::from(p.encode()));
    let content = Published {
        index_version: INDEX_VERSION,
        layer_indexes,
        plan,
    };
    let outcome = source.push_published(image, &content).await?;
    Ok(PublishReport {
        outcome,
        layer_indexes: content.layer_indexes.len(),
        estargz_skipped,
        plan: content.plan.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::index::IndexDetail;
    use crate::layer::zran::ZranReader;
    use crate::layer::{tar_entries, LayerFormat};
    use std::collections::BTreeMap;
    use std::io::Write;

    const GZIP_MT: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    /// A gzip layer of `files` and the index a streaming pass makes of it.
    fn gzip_layer(files: &[(&str, &[u8])]) -> (LayerDesc, LayerIndex) {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            tar.append_data(&mut h, path, *data).unwrap();
        }
        let raw = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        let mut z = ZranReader::new(&gz[..]);
        let mut entries = Vec::new();
        tar_entries::read_entries(&mut z, |e| entries.push(e)).unwrap();
        let zi = z.finish().unwrap();
        let layer = LayerDesc {
            digest: Digest::of_bytes(&gz),
            size: gz.len() as u64,
            media_type: GZIP_MT.into(),
            annotations: BTreeMap::new(),
        };
        let idx = LayerIndex {
            version: INDEX_VERSION,
            digest: layer.digest.clone(),
            format: LayerFormat::Gzip,
            compressed_size: layer.size,
            uncompressed_size: zi.uncompressed_size,
            entries,
            detail: IndexDetail::Gzip(zi),
        };
        (layer, idx)
    }

    fn sample() -> (LayerDesc, LayerIndex) {
        gzip_layer(&[("etc/hostname", b"node\n"), ("usr/bin/tool", &[7u8; 3000])])
    }

    fn refused(idx: &LayerIndex, layer: &LayerDesc) -> String {
        let bytes = idx.encode().unwrap();
        decode_published(&bytes, layer).expect_err("must be refused")
    }

    #[test]
    fn an_honest_published_index_passes() {
        let (layer, idx) = sample();
        let back = decode_published(&idx.encode().unwrap(), &layer).unwrap();
        assert_eq!(back.entries.len(), 2);
    }

    #[test]
    fn published_indexes_must_fit_their_layer() {
        let (layer, idx) = sample();
        // Bound to another layer (LayerIndex::decode's own check).
        let (other, _) = gzip_layer(&[("x", b"y")]);
        assert!(refused(&idx, &other).contains("expected"));
        // The layer's size, media type and format.
        let mut l = layer.clone();
        l.size += 1;
        assert!(refused(&idx, &l).contains("bytes"));
        let mut l = layer.clone();
        l.media_type = "application/vnd.oci.image.layer.v1.tar".into();
        assert!(refused(&idx, &l).contains("index for a tar layer"));
        let mut t = idx.clone();
        t.format = LayerFormat::Tar;
        assert!(refused(&t, &layer).contains("index for a gzip layer"));
        // Block hashes and checkpoints consistent with the sizes.
        let mut b = idx.clone();
        let IndexDetail::Gzip(z) = &mut b.detail else {
            unreachable!()
        };
        z.blocks.clear();
        assert!(refused(&b, &layer).contains("block hashes"));
        let mut c = idx.clone();
        let IndexDetail::Gzip(z) = &mut c.detail else {
            unreachable!()
        };
        z.checkpoints[0].window = vec![0; 10];
        assert!(refused(&c, &layer).contains("malformed checkpoint"));
        let IndexDetail::Gzip(z) = &mut c.detail else {
            unreachable!()
        };
        z.checkpoints.clear();
        assert!(refused(&c, &layer).contains("no checkpoint"));
    }

    #[test]
    fn published_entries_stay_inside_the_image_and_the_layer() {
        let (layer, idx) = sample();
        for path in ["../etc/shadow", "a//b", "/etc/passwd", "etc/"] {
            let mut bad = idx.clone();
            bad.entries[0].path = path.into();
            assert!(refused(&bad, &layer).contains("not normalised"), "{path}");
        }
        let mut bad = idx.clone();
        bad.entries[0].kind = EntryKind::Hardlink;
        bad.entries[0].link_target = Some("../../root".into());
        assert!(refused(&bad, &layer).contains("hard link"));
        let mut bad = idx.clone();
        bad.entries[1].data = idx.uncompressed_size - 10;
        assert!(refused(&bad, &layer).contains("outside the layer"));
        let mut bad = idx.clone();
        bad.entries[1].size = u64::MAX;
        assert!(refused(&bad, &layer).contains("outside the layer"));
        let mut bad = idx.clone();
        bad.entries[1].mode = 0o170755;
        assert!(refused(&bad, &layer).contains("mode"));
    }

    #[test]
    fn published_plans_name_only_what_exists() {
        let (layer, idx) = sample();
        let image = ResolvedImage {
            reference: "r.lan/x:t".into(),
            manifest_digest: Digest::of_bytes(b"manifest"),
            config_digest: Digest::of_bytes(b"config"),
            platform: "linux/amd64".parse().unwrap(),
            layers: vec![layer.clone()],
        };
        let counts = HashMap::from([(layer.digest.clone(), idx.chunk_count())]);
        let plan = |layer: &Digest, id: u64| {
            PrefetchPlan::from_reads(&image.manifest_digest, "n1", [(layer.clone(), id)]).encode()
        };
        assert!(check_plan(&plan(&layer.digest, 0), &image, &counts).is_ok());
        let e = check_plan(&plan(&layer.digest, 99), &image, &counts).unwrap_err();
        assert!(e.contains("do not exist"), "{e}");
        let stranger = Digest::of_bytes(b"stranger");
        let e = check_plan(&plan(&stranger, 0), &image, &counts).unwrap_err();
        assert!(e.contains("not in the image"), "{e}");
        let other = PrefetchPlan::from_reads(&Digest::of_bytes(b"other"), "n1", []).encode();
        assert!(check_plan(&other, &image, &counts).is_err());
    }
}
