//! Access to image content: a remote registry (oci-client for manifests and
//! tokens, `blobs` for blob GETs) or an OCI
//! image layout on disk, behind one [`Source`] handle.
//!
//! Everything above this module reads blobs by byte range, so the contract
//! here is about ranges: one HTTP request per range, tolerant of registries
//! that ignore `Range`, retried only when retrying can help, and counted so
//! the user can see how little of an image was actually transferred.
//!
//! - `source`: opening a [`Source`] (resolving indexes down to one image),
//! - `fetch`: reading blobs by range or as a stream, and counting it,
//! - `error`: [`RegistryError`], `options`: [`RegistryOptions`].

mod auth;
mod blobs;
mod error;
mod fetch;
mod layout;
pub(crate) mod manifest;
mod options;
mod referrers;
mod remote;
mod retry;
mod source;

#[cfg(test)]
mod fake;
#[cfg(test)]
pub(crate) mod tests;

pub use error::RegistryError;
pub use fetch::FetchStats;
pub use options::RegistryOptions;
pub use referrers::{Published, ARTIFACT_TYPE};
pub(crate) use referrers::{PushOutcome, ReferrersError, Via};
pub use source::{LayerDesc, ResolvedImage, Source};

pub(crate) use fetch::Counters;

// Shared with the backends and referrers, which reach them through `super`.
use error::colon;
use source::Backend;
