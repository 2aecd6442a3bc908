//! Retries of transient failures: exponential backoff with jitter, bounded in
//! count and in time. Only [`ErrorKind::Transient`] errors are retried; a
//! content mismatch, a refusal or a missing image is never retried.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::debug;

use crate::stage::{ErrorKind, StageError};

/// How hard to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries after the first one.
    pub retries: u32,
    /// Delay before the first retry; doubled each time.
    pub base_delay: Duration,
    /// No single delay is longer.
    pub max_delay: Duration,
    /// No retry starts after this much time since the first try.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            budget: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            retries: 0,
            ..Default::default()
        }
    }

    /// The delay before retry `n` (1-based): base·2^(n-1), capped, with
    /// "equal jitter" (half fixed, half random) so that clients spread out.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let half = exp / 2;
        half + half.mul_f64(jitter())
    }

    /// Runs `op`, retrying transient failures. `what` names it in logs.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StageError>>,
    {
        let start = Instant::now();
        let mut n = 0;
        loop {
            match op().await {
                Err(e)
                    if e.kind == ErrorKind::Transient
                        && n < self.retries
                        && start.elapsed() < self.budget =>
                {
                    n += 1;
                    let delay = self.delay(n);
                    debug!(operation = what, attempt = n, delay_ms = delay.as_millis() as u64, error = %e, "retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(mut e) if n > 0 && e.kind == ErrorKind::Transient => {
                    e.message = format!("{} (after {} retries)", e.message, n);
                    return Err(e);
                }
                other => return other,
            }
        }
    }
}

/// A number in [0, 1): xorshift over a process-wide counter and the clock.
fn jitter() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let mut x =
        STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ nanos ^ 0x2545_f491_4f6c_dd1d;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn quick(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            budget: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn retries_transient_failures_then_succeeds() {
        let calls = AtomicU32::new(0);
        let r = quick(3)
            .run("op", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(StageError::transient("503"))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_after_the_budget_and_says_so() {
        let calls = AtomicU32::new(0);
        let e = quick(2)
            .run("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(StageError::transient("503"))
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(e.message, "503 (after 2 retries)");
    }

    #[tokio::test]
    async fn never_retries_other_kinds() {
        for e in [
            StageError::integrity("bad digest"),
            StageError::not_found("nope"),
            StageError::new(ErrorKind::Unauthorized, "401"),
        ] {
            let calls = AtomicU32::new(0);
            let got = quick(5)
                .run("op", || {
                    let e = e.clone();
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move { Err::<(), _>(e) }
                })
                .await
                .unwrap_err();
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            assert_eq!(got.message, e.message);
        }
    }

    #[test]
    fn delays_grow_are_capped_and_jittered() {
        let p = RetryPolicy {
            retries: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            budget: Duration::from_secs(60),
        };
        for n in 1..=10u32 {
            let full =
                Duration::from_millis(100 * 2u64.pow(n - 1)).min(Duration::from_millis(1000));
            let d = p.delay(n);
            assert!(
                d >= full / 2 && d <= full,
                "retry {n}: {d:?} outside [{:?}, {full:?}]",
                full / 2
            );
        }
    }
}
