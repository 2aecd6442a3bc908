//! Retries of transient failures: exponential backoff with jitter, bounded in
//! count and in time. Only [`ErrorKind::Transient`] errors and writes a
//! registry found inconsistent ([`ErrorKind::Consistency`]) are retried; a
//! content mismatch, a refusal, a missing image or a bug is never retried.
//!
//! The orchestrator retries each registry operation on its own (a lookup, a
//! download opened, an upload opened, an upload, a manifest put), each try
//! passing the registry's gate ([`crate::flow`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tracing::debug;

use crate::flow::FlowControl;
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

/// Tries after the first, per operation. Six retries make an operation fail
/// only when seven tries in a row fail: on a registry where one request in
/// five fails, that is one operation in ~80,000; their backoff adds up to
/// 6–13 s, so a registry that is down fails each operation within that.
pub const DEFAULT_RETRIES: u32 = 6;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: DEFAULT_RETRIES,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            budget: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The policy the definition's `retry:` settings describe, over the defaults.
    pub fn from_settings(settings: &crate::definition::RetrySettings) -> RetryPolicy {
        let d = RetryPolicy::default();
        RetryPolicy {
            retries: settings.retries.unwrap_or(d.retries),
            base_delay: settings
                .base_delay_ms
                .map(Duration::from_millis)
                .unwrap_or(d.base_delay),
            max_delay: settings
                .max_delay_ms
                .map(Duration::from_millis)
                .unwrap_or(d.max_delay),
            budget: settings
                .budget_seconds
                .map(Duration::from_secs)
                .unwrap_or(d.budget),
        }
    }

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
    ///
    /// A failure that carries a `retry_after` (a registry's `Retry-After`) is
    /// retried no sooner than asked, even past `max_delay`; when the wait
    /// asked for would end past the budget, the failure is returned at once,
    /// saying so, rather than retried early or waited out.
    pub async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StageError>>,
    {
        self.run_until(&AtomicBool::new(false), what, op).await
    }

    /// [`Self::run`], ending a wait between tries as soon as `halt` is set
    /// (an interrupted run): the failure is returned as
    /// [`ErrorKind::Cancelled`], saying it was not retried.
    pub async fn run_until<T, F, Fut>(
        &self,
        halt: &AtomicBool,
        what: &str,
        mut op: F,
    ) -> Result<T, StageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StageError>>,
    {
        let start = Instant::now();
        let mut n = 0;
        loop {
            let mut e = match op().await {
                Err(e) if e.is_retried() => e,
                other => return other,
            };
            let elapsed = start.elapsed();
            if n >= self.retries || elapsed >= self.budget {
                if n > 0 {
                    e.message = format!("{} (after {} retries)", e.message, n);
                }
                return Err(e);
            }
            if let Some(asked) = e.retry_after {
                if elapsed
                    .checked_add(asked)
                    .is_none_or(|end| end > self.budget)
                {
                    let retries = match n {
                        0 => String::new(),
                        n => format!("after {n} retries; "),
                    };
                    e.message = format!(
                        "{} ({retries}the registry asks to wait {} before trying again, past the retry budget of {})",
                        e.message,
                        seconds(asked),
                        seconds(self.budget)
                    );
                    return Err(e);
                }
            }
            n += 1;
            let delay = self.delay(n).max(e.retry_after.unwrap_or_default());
            debug!(
                operation = what,
                attempt = n,
                delay_ms = delay.as_millis() as u64,
                retry_after_ms = e.retry_after.map(|d| d.as_millis() as u64),
                error = %e,
                "retrying"
            );
            // Bounded: one pass per 100 ms of the delay.
            let until = Instant::now() + delay;
            loop {
                if halt.load(Ordering::SeqCst) {
                    e.kind = ErrorKind::Cancelled;
                    e.message = format!("{} (not retried: the run was interrupted)", e.message);
                    return Err(e);
                }
                let now = Instant::now();
                if now >= until {
                    break;
                }
                tokio::time::sleep((until - now).min(HALT_CHECK)).await;
            }
        }
    }
}

/// How often a wait between tries looks at the halt flag.
const HALT_CHECK: Duration = Duration::from_millis(100);

/// A policy bound to a run's interrupt flag and flow control: what the
/// orchestrator retries with.
#[derive(Clone, Copy)]
pub struct Retry<'a> {
    pub policy: &'a RetryPolicy,
    pub halt: &'a AtomicBool,
    pub flow: Option<&'a FlowControl>,
}

impl Retry<'_> {
    /// [`RetryPolicy::run_until`] with this run's flag.
    pub async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StageError>>,
    {
        self.policy.run_until(self.halt, what, op).await
    }

    /// [`Self::run`] for an operation on `registry`: each try passes the
    /// registry's gate and tells it how the registry answered.
    pub async fn at<T, F, Fut>(&self, registry: &str, what: &str, op: F) -> Result<T, StageError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StageError>>,
    {
        let Some(flow) = self.flow else {
            return self.run(what, op).await;
        };
        let tries = AtomicU32::new(0);
        let (op, tries) = (&op, &tries);
        self.run(what, move || {
            let attempt = op();
            async move {
                let retry = tries.fetch_add(1, Ordering::SeqCst) > 0;
                let permit = flow.acquire(registry, retry, self.halt).await?;
                let r = attempt.await;
                permit.finish(r.as_ref().map(|_| ()));
                r
            }
        })
        .await
    }
}

impl Retry<'_> {
    /// A transfer slot at `registry` ([`FlowControl::transfer`]), held by
    /// the caller around a whole transfer; none without flow control.
    pub async fn transfer_slot(
        &self,
        registry: &str,
    ) -> Result<Option<crate::flow::TransferSlot>, StageError> {
        match self.flow {
            Some(flow) => flow.transfer(registry, self.halt).await.map(Some),
            None => Ok(None),
        }
    }

    /// A write to `registry` that cannot be retried by itself (an upload
    /// whose stream is spent, a manifest put that needs a re-check first):
    /// every try runs `setup` (told the previous try's error), then `write`
    /// through the registry's gate. A failure of `write` that is retried
    /// starts a new try; a failure of `setup` ends it all (its own steps are
    /// retried on their own, so they are not retried twice).
    pub async fn then_write<S, T, SF, SFut, WF, WFut>(
        &self,
        registry: &str,
        what: &str,
        setup: SF,
        write: WF,
    ) -> Result<T, StageError>
    where
        SF: Fn(Option<&StageError>) -> SFut,
        SFut: Future<Output = Result<S, StageError>>,
        WF: Fn(S) -> WFut,
        WFut: Future<Output = Result<T, StageError>>,
    {
        let previous: std::sync::Mutex<Option<StageError>> = Default::default();
        let tries = AtomicU32::new(0);
        let (setup, write, previous, tries) = (&setup, &write, &previous, &tries);
        let outcome = self
            .run(what, move || async move {
                let last = previous.lock().unwrap_or_else(|e| e.into_inner()).take();
                let ready = match setup(last.as_ref()).await {
                    Ok(s) => s,
                    Err(e) => return Ok(Err(e)),
                };
                let retry = tries.fetch_add(1, Ordering::SeqCst) > 0;
                let permit = match self.flow {
                    Some(flow) => match flow.acquire(registry, retry, self.halt).await {
                        Ok(p) => Some(p),
                        Err(e) => return Ok(Err(e)),
                    },
                    None => None,
                };
                let r = write(ready).await;
                if let Some(p) = permit {
                    p.finish(r.as_ref().map(|_| ()));
                }
                match r {
                    Ok(t) => Ok(Ok(t)),
                    Err(e) => {
                        *previous.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
                        Err(e)
                    }
                }
            })
            .await;
        outcome.and_then(|r| r)
    }
}

/// `2 s`, `1.5 s`, `0.25 s`: a wait for people.
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
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

    /// Fails with 429 + `Retry-After: wait` `fails` times, then succeeds.
    async fn rate_limited(
        policy: RetryPolicy,
        wait: Duration,
        fails: u32,
    ) -> (Result<u8, StageError>, u32, Duration) {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let r = policy
            .run("op", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < fails {
                    Err(StageError::transient("429 Too Many Requests").with_retry_after(wait))
                } else {
                    Ok(1)
                }
            })
            .await;
        (r, calls.load(Ordering::SeqCst), started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_is_waited_out_even_past_the_longest_backoff() {
        // Backoff alone would wait at most 4 ms; the registry asks for 30 s.
        let policy = RetryPolicy {
            budget: Duration::from_secs(120),
            ..quick(3)
        };
        let (r, calls, waited) = rate_limited(policy, Duration::from_secs(30), 2).await;
        assert_eq!(r.unwrap(), 1);
        assert_eq!(calls, 3);
        assert!(waited >= Duration::from_secs(60), "waited {waited:?}");
        assert!(waited < Duration::from_secs(61), "waited {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_shorter_than_the_backoff_keeps_the_backoff() {
        let policy = RetryPolicy {
            retries: 1,
            base_delay: Duration::from_secs(8),
            max_delay: Duration::from_secs(8),
            budget: Duration::from_secs(60),
        };
        let (r, calls, waited) = rate_limited(policy, Duration::from_secs(1), 1).await;
        assert_eq!(r.unwrap(), 1);
        assert_eq!(calls, 2);
        // Equal jitter: at least half the backoff, which is more than asked.
        assert!(waited >= Duration::from_secs(4), "waited {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_past_the_budget_fails_at_once_and_says_so() {
        let (r, calls, waited) = rate_limited(quick(3), Duration::from_secs(600), 1).await;
        assert_eq!(calls, 1);
        assert_eq!(waited, Duration::ZERO);
        let e = r.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient);
        assert_eq!(
            e.message,
            "429 Too Many Requests (the registry asks to wait 600 s before trying again, past the retry budget of 5 s)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_absurd_retry_after_fails_at_once_without_overflow() {
        let (r, calls, waited) = rate_limited(quick(3), Duration::from_secs(u64::MAX), 1).await;
        assert_eq!((calls, waited), (1, Duration::ZERO));
        assert!(r.unwrap_err().message.contains("past the retry budget"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_interruption_ends_the_wait_and_the_retries() {
        let policy = RetryPolicy {
            budget: Duration::from_secs(120),
            ..quick(3)
        };
        let halt = std::sync::Arc::new(AtomicBool::new(false));
        let flag = halt.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            flag.store(true, Ordering::SeqCst);
        });
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let e = Retry {
            policy: &policy,
            halt: &halt,
            flow: None,
        }
        .run("op", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(
                StageError::transient("429 Too Many Requests")
                    .with_retry_after(Duration::from_secs(60)),
            )
        })
        .await
        .unwrap_err();
        let waited = started.elapsed();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "{waited:?}"
        );
        assert_eq!(e.kind, ErrorKind::Cancelled);
        assert_eq!(
            e.message,
            "429 Too Many Requests (not retried: the run was interrupted)"
        );
    }

    #[tokio::test]
    async fn a_write_found_inconsistent_is_retried() {
        let calls = AtomicU32::new(0);
        let r = quick(3)
            .run("op", || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(StageError::consistency("MANIFEST_BLOB_UNKNOWN"))
                } else {
                    Ok(())
                }
            })
            .await;
        assert!(r.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn each_try_of_a_gated_operation_passes_the_gate_and_counts() {
        let flow = FlowControl::new(4);
        let halt = AtomicBool::new(false);
        let retry = Retry {
            policy: &quick(3),
            halt: &halt,
            flow: Some(&flow),
        };
        let calls = AtomicU32::new(0);
        let r = retry
            .at("r", "op", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(StageError::transient("503")
                        .with_pushback(crate::stage::Pushback::Busy)
                        .with_retry_after(Duration::from_secs(1)))
                } else {
                    Ok(())
                }
            })
            .await;
        assert!(r.is_ok());
        let f = &flow.figures()["r"];
        assert_eq!((f.requests, f.retries, f.pushbacks), (3, 2, 2));
        assert_eq!(f.throttled_seconds, 2.0);
    }

    #[tokio::test]
    async fn never_retries_other_kinds() {
        for e in [
            StageError::integrity("bad digest"),
            StageError::not_found("nope"),
            StageError::new(ErrorKind::Unauthorized, "401"),
            StageError::internal("plugin `x` panicked"),
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

    #[tokio::test(start_paused = true)]
    async fn no_retry_starts_after_the_budget() {
        // Each try takes 10 s; the budget is 25 s: tries start at 0, ~10 and
        // ~20 s; at ~30 s the budget is spent and no fourth try starts.
        let policy = RetryPolicy {
            retries: 10,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            budget: Duration::from_secs(25),
        };
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let e = policy
            .run("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(10)).await;
                Err::<(), _>(StageError::transient("timeout"))
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(e.message, "timeout (after 2 retries)");
        assert!(started.elapsed() < Duration::from_secs(31));
    }

    #[test]
    fn the_default_policy_is_six_retries_from_200_ms_to_10_s_within_120_s() {
        let p = RetryPolicy::default();
        assert_eq!(p.retries, 6);
        assert_eq!(p.budget, Duration::from_secs(120));
        // Equal jitter: retry n waits within [half, full] of 200 ms · 2^(n-1).
        for (n, full_ms) in [
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1600),
            (5, 3200),
            (6, 6400),
        ] {
            let d = p.delay(n);
            assert!(
                d >= Duration::from_millis(full_ms / 2) && d <= Duration::from_millis(full_ms),
                "retry {n}: {d:?}"
            );
        }
        // Capped at 10 s from the seventh on.
        let d = p.delay(7);
        assert!(
            d >= Duration::from_secs(5) && d <= Duration::from_secs(10),
            "{d:?}"
        );
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
