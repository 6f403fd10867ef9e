//! What can go wrong reaching image content, worded for the user: each
//! error names where (`location`) and what was being read.

use crate::digest::Digest;
use crate::platform::Platform;
use std::path::PathBuf;
use std::time::Duration;

/// Why image content (manifests, blobs, credentials) could not be read; each message names the
/// place and the object.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered 404, or the layout has no such file (or is not a layout at all).
    #[error("{location}: {what} not found ({detail})")]
    NotFound {
        /// Where the content was read from: `REGISTRY/REPOSITORY`, or `oci:DIR` for an image
        /// layout.
        location: String,
        /// What was being read, e.g. a manifest or blob with its digest.
        what: String,
        /// What was missing: the HTTP 404 and the registry's message, or the file that is not
        /// there.
        detail: String,
    },
    /// The registry refused the request (HTTP 401 or 403): missing or wrong credentials, or no
    /// access to the repository.
    #[error("{location}: {what}: access denied (HTTP {status}{}); {hint}", colon(.message))]
    Denied {
        /// The registry and repository asked, as `REGISTRY/REPOSITORY`.
        location: String,
        /// What was being read, e.g. a manifest or blob with its digest.
        what: String,
        /// The HTTP status code (401 or 403).
        status: u16,
        /// The registry's error message, if it sent one (may be empty).
        message: String,
        /// Which credentials were used, so the user knows what to fix.
        hint: String,
    },
    /// The registry answered with an HTTP status other than success, 404, 401 or 403 (5xx ones are
    /// retried).
    #[error("{location}: {what}: HTTP {status}{} (after {attempts} attempt(s))", colon(.message))]
    Status {
        /// The registry and repository asked, as `REGISTRY/REPOSITORY`.
        location: String,
        /// What was being read, e.g. a manifest or blob with its digest.
        what: String,
        /// The HTTP status code.
        status: u16,
        /// The registry's error message, shortened (may be empty).
        message: String,
        /// How many attempts were made, retries included.
        attempts: u32,
        /// How long the registry asked to wait before the next attempt
        /// (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The connection failed (DNS, TCP, TLS, reset) on every attempt.
    #[error("{location}: {what}: {message} (after {attempts} attempt(s))")]
    Transport {
        /// The registry and repository asked, as `REGISTRY/REPOSITORY`.
        location: String,
        /// What was being read, e.g. a manifest or blob with its digest.
        what: String,
        /// The underlying error chain.
        message: String,
        /// How many attempts were made, retries included.
        attempts: u32,
    },
    /// The registry did not answer, or a body stalled, for longer than the configured timeout on
    /// every attempt.
    #[error("{location}: {what}: no response within {timeout:?} (after {attempts} attempt(s))")]
    Timeout {
        /// The registry and repository asked, as `REGISTRY/REPOSITORY`.
        location: String,
        /// What was being read, e.g. a manifest or blob with its digest.
        what: String,
        /// The configured per-request timeout.
        timeout: Duration,
        /// How many attempts were made, retries included.
        attempts: u32,
    },
    /// A response body or layout file ended before the size its descriptor gives.
    #[error("{location}: {what}: body ended after {got} of {expected} bytes")]
    ShortBody {
        /// Where the content was read from: `REGISTRY/REPOSITORY`, or `oci:DIR` for an image
        /// layout.
        location: String,
        /// What was being read, e.g. a manifest or blob with its digest.
        what: String,
        /// Bytes expected.
        expected: u64,
        /// Bytes actually received.
        got: u64,
    },
    #[error(
        "{location}: {what}: content does not match its digest: expected {expected}, got {actual}"
    )]
    /// Fetched content does not hash to the digest it was asked for by (corrupt or tampered).
    DigestMismatch {
        /// Where the content was read from: `REGISTRY/REPOSITORY`, or `oci:DIR` for an image
        /// layout.
        location: String,
        /// What was being read, e.g. a manifest or blob with its digest.
        what: String,
        /// The digest asked for.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// The image index lists no manifest for the configured platform.
    #[error("{reference}: no image for platform {wanted}; available: {}", list(.available))]
    NoMatchingPlatform {
        /// The image reference being resolved (canonical form).
        reference: String,
        /// The platform that was asked for.
        wanted: Platform,
        /// Platforms the index does offer.
        available: Vec<String>,
    },
    /// A manifest or index cannot be parsed or used (unknown media type, missing fields, indexes
    /// nested too deep).
    #[error("{reference}: {what}: {reason}")]
    BadManifest {
        /// The image reference being resolved (canonical form).
        reference: String,
        /// Which document was wrong, e.g. `manifest sha256:…`.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The OCI layout's `index.json` has no manifest with the tag the reference names.
    #[error("{location}: no manifest tagged {tag:?} in index.json; available tags: {}", list(.available))]
    LayoutTagNotFound {
        /// Where the content was read from: `REGISTRY/REPOSITORY`, or `oci:DIR` for an image
        /// layout.
        location: String,
        /// The tag asked for.
        tag: String,
        /// Tags `index.json` does have.
        available: Vec<String>,
    },
    /// The reference names no tag, and the OCI layout's `index.json` lists more than one manifest.
    #[error("{location}: index.json lists {count} manifests, say which one with oci:DIR:TAG; available tags: {}", list(.available))]
    LayoutAmbiguous {
        /// Where the content was read from: `REGISTRY/REPOSITORY`, or `oci:DIR` for an image
        /// layout.
        location: String,
        /// Number of manifests in `index.json`.
        count: usize,
        /// Tags that can be named to pick one.
        available: Vec<String>,
    },
    /// A local file (layout file or credentials file) could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The credentials file was read but could not be understood (bad JSON or a bad entry for this
    /// registry).
    #[error("credentials file {}: {reason}", path.display())]
    AuthFile {
        /// The credentials file.
        path: PathBuf,
        /// What is wrong with it (invalid JSON, or which entry is malformed).
        reason: String,
    },
    /// A range was asked for that is reversed or goes past the end of the blob (a bug or a stale
    /// index).
    #[error("{location}: invalid range {start}..{end} of blob {digest}{}", size.map(|s| format!(" (size {s})")).unwrap_or_default())]
    InvalidRange {
        /// Where the content was read from: `REGISTRY/REPOSITORY`, or `oci:DIR` for an image
        /// layout.
        location: String,
        /// The blob the range was asked of.
        digest: Digest,
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
        /// The blob's size from the manifest (None: not known).
        size: Option<u64>,
    },
    /// The registry or client library did something unexpected (e.g. a failed digest check that
    /// names no valid digest).
    #[error("{location}: {what}: {message}")]
    Protocol {
        /// The registry and repository asked, as `REGISTRY/REPOSITORY`.
        location: String,
        /// What was being read, e.g. a manifest or blob with its digest.
        what: String,
        /// What went wrong.
        message: String,
    },
}

pub(super) fn colon(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}

impl RegistryError {
    /// The HTTP status the registry answered with, when that is the error.
    #[cfg(test)]
    pub(crate) fn http_status(&self) -> Option<u16> {
        match self {
            RegistryError::Denied { status, .. } | RegistryError::Status { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// Whether another attempt could succeed: connection trouble, timeouts,
    /// server-side (5xx) failures and "too many requests" (429).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { .. } | RegistryError::Timeout { .. } => true,
            RegistryError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The wait the registry asked for before another attempt.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn is_not_found(&self) -> bool {
        matches!(
            self,
            RegistryError::NotFound { .. } | RegistryError::LayoutTagNotFound { .. }
        )
    }

    pub(crate) fn set_attempts(&mut self, n: u32) {
        match self {
            RegistryError::Status { attempts, .. }
            | RegistryError::Transport { attempts, .. }
            | RegistryError::Timeout { attempts, .. } => *attempts = n,
            _ => {}
        }
    }
}
