//! How to reach registries: platform, plain-HTTP hosts, timeouts, retries.

use crate::platform::Platform;
use std::time::Duration;

/// How to reach registries: which platform to pick from multi-platform images, which hosts use
/// plain HTTP, and the timeout and retry budget per request.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    pub(crate) platform: Platform,
    /// Hosts (`host` or `host:port`) to reach over plain HTTP. Loopback
    /// registries always are.
    pub(crate) insecure_registries: Vec<String>,
    /// Per request, and per read while a body is streaming.
    pub(crate) timeout: Duration,
    /// Further attempts after the first, for transient failures only.
    pub(crate) retries: u32,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            platform: Platform::host(),
            insecure_registries: Vec::new(),
            timeout: Duration::from_secs(30),
            retries: 4,
        }
    }
}
