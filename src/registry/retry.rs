//! Exponential backoff with jitter for transient registry failures.
//!
//! Only failures that another attempt can fix are retried (connection
//! errors, timeouts, 5xx); a 404 or 401 will not change by asking again, and
//! retrying it would only delay a clear error.

use super::RegistryError;
use rand::Rng;
use std::future::Future;
use std::time::Duration;

/// The longest `Retry-After` obeyed; a read waiting for a node gives up at
/// its own deadline anyway.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    /// Further attempts after the first one.
    pub(crate) retries: u32,
    pub(crate) base: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    pub(crate) fn new(retries: u32) -> Self {
        Backoff {
            retries,
            base: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }

    /// Delay before retry number `failures` (1-based). The random half keeps
    /// many readers that failed together from hammering the registry in
    /// lockstep; the fixed half guarantees some pause.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        let full = self.base.saturating_mul(1u32 << shift).min(self.max);
        let half = full / 2;
        let jitter_ms = half.as_millis() as u64;
        let jitter = if jitter_ms == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
        };
        half + jitter
    }

    /// Delay before retry number `failures` after `e`: what the registry
    /// asked for when it said (`Retry-After`, bounded so that a registry
    /// cannot park a read for hours), else [`Backoff::delay`].
    pub(crate) fn delay_after(&self, failures: u32, e: &RegistryError) -> Duration {
        match e.retry_after() {
            Some(asked) => asked.min(MAX_RETRY_AFTER),
            None => self.delay(failures),
        }
    }

    /// Runs `op` until it succeeds, fails permanently, or the retries are
    /// used up. The returned error records how many attempts were made.
    pub(crate) async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt <= self.retries => {
                    let delay = self.delay_after(attempt, &e);
                    tracing::debug!(%what, attempt, ?delay, error = %e, "retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(mut e) => {
                    e.set_attempts(attempt);
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(retries: u32) -> Backoff {
        Backoff {
            retries,
            base: Duration::from_millis(1),
            max: Duration::from_millis(4),
        }
    }

    fn transient() -> RegistryError {
        RegistryError::Transport {
            location: "r/x".into(),
            what: "blob".into(),
            message: "connection reset".into(),
            attempts: 1,
        }
    }

    fn not_found() -> RegistryError {
        RegistryError::NotFound {
            location: "r/x".into(),
            what: "blob".into(),
            detail: "HTTP 404".into(),
        }
    }

    #[test]
    fn delays_grow_and_stay_bounded() {
        let b = Backoff::new(10);
        for failures in 1..30 {
            let d = b.delay(failures);
            let full = b
                .base
                .saturating_mul(1 << (failures - 1).min(20))
                .min(b.max);
            assert!(d >= full / 2 && d <= full, "{failures}: {d:?} vs {full:?}");
        }
        assert!(b.delay(30) <= Duration::from_secs(10));
    }

    #[tokio::test]
    async fn retries_transient_errors_then_succeeds() {
        let calls = AtomicU32::new(0);
        let r = fast(3)
            .run("t", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(transient())
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_after_the_configured_retries() {
        let calls = AtomicU32::new(0);
        let e = fast(2)
            .run("t", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(transient())
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(e.to_string().contains("after 3 attempt(s)"), "{e}");
    }

    #[tokio::test]
    async fn does_not_retry_permanent_errors() {
        let calls = AtomicU32::new(0);
        let e = fast(5)
            .run("t", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(not_found())
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(e.is_not_found());
    }
}
