//! What can go wrong reaching image content, worded for the user: each
//! error names where (`location`) and what was being read.

use crate::digest::Digest;
use crate::platform::Platform;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{location}: {what} not found ({detail})")]
    NotFound {
        location: String,
        what: String,
        detail: String,
    },
    #[error("{location}: {what}: access denied (HTTP {status}{}); {hint}", colon(.message))]
    Denied {
        location: String,
        what: String,
        status: u16,
        message: String,
        /// Which credentials were used, so the user knows what to fix.
        hint: String,
    },
    #[error("{location}: {what}: HTTP {status}{} (after {attempts} attempt(s))", colon(.message))]
    Status {
        location: String,
        what: String,
        status: u16,
        message: String,
        attempts: u32,
    },
    #[error("{location}: {what}: {message} (after {attempts} attempt(s))")]
    Transport {
        location: String,
        what: String,
        message: String,
        attempts: u32,
    },
    #[error("{location}: {what}: no response within {timeout:?} (after {attempts} attempt(s))")]
    Timeout {
        location: String,
        what: String,
        timeout: Duration,
        attempts: u32,
    },
    #[error("{location}: {what}: body ended after {got} of {expected} bytes")]
    ShortBody {
        location: String,
        what: String,
        expected: u64,
        got: u64,
    },
    #[error(
        "{location}: {what}: content does not match its digest: expected {expected}, got {actual}"
    )]
    DigestMismatch {
        location: String,
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{reference}: no image for platform {wanted}; available: {}", list(.available))]
    NoMatchingPlatform {
        reference: String,
        wanted: Platform,
        available: Vec<String>,
    },
    #[error("{reference}: {what}: {reason}")]
    BadManifest {
        reference: String,
        what: String,
        reason: String,
    },
    #[error("{location}: no manifest tagged {tag:?} in index.json; available tags: {}", list(.available))]
    LayoutTagNotFound {
        location: String,
        tag: String,
        available: Vec<String>,
    },
    #[error("{location}: index.json lists {count} manifests, say which one with oci:DIR:TAG; available tags: {}", list(.available))]
    LayoutAmbiguous {
        location: String,
        count: usize,
        available: Vec<String>,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("credentials file {}: {reason}", path.display())]
    AuthFile { path: PathBuf, reason: String },
    #[error("{location}: invalid range {start}..{end} of blob {digest}{}", size.map(|s| format!(" (size {s})")).unwrap_or_default())]
    InvalidRange {
        location: String,
        digest: Digest,
        start: u64,
        end: u64,
        size: Option<u64>,
    },
    #[error("{location}: {what}: {message}")]
    Protocol {
        location: String,
        what: String,
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

    /// Whether another attempt could succeed: connection trouble, timeouts
    /// and server-side (5xx) failures.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { .. } | RegistryError::Timeout { .. } => true,
            RegistryError::Status { status, .. } => *status >= 500,
            _ => false,
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
