//! Per-registry flow control: every registry operation of a run passes its
//! registry's gate.
//!
//! - A gate lets at most `limit` operations run at once. The limit adapts:
//!   with the default [`Limits::adaptive`] it starts at
//!   [`ADAPTIVE_START`] and grows by one per good answer (slow start, as
//!   TCP's) up to [`ADAPTIVE_CAP`], until the first pushback; from then on
//!   (AIMD) it grows by about one per round of good answers and halves when
//!   the registry pushes back (429/503, or no answer in time), never
//!   below 1. With a fixed cap (`--jobs N`, [`Limits::fixed`]) it starts at N and
//!   never goes above it.
//! - A registry that answers "slow down" (429/503) pauses its gate: no
//!   operation to it starts before its `Retry-After` has passed (or, without
//!   one, a backoff that doubles with each such answer in a row). One answer
//!   slows every task, not just the one that got it.
//! - Transfers (a blob of [`LARGE_BLOB`] or more copied into the registry,
//!   from opening its upload to the last byte) also take a transfer slot
//!   ([`FlowControl::transfer`]); a smaller blob copies in a few round
//!   trips, like any cheap request, and takes none.
//!   With the adaptive default a registry has half its limit in transfer
//!   slots (at least one): a transfer holds its operation slot for seconds,
//!   and the other half stays free for the cheap requests (HEADs, small
//!   GETs) of the images being planned or finished. With `--jobs N` there
//!   are N transfer slots, as many as operations.
//! - A registry that says how many requests it has left (Docker Hub's
//!   `ratelimit-remaining`, passed in by the plugin that reads it) keeps the
//!   limit at most that number, so a burst does not run into the wall.
//!
//! The gate also keeps each registry's figures for the report: operations
//! sent, retries, pushbacks, seconds paused, the lowest limit reached.
//!
//! Plugins may call [`FlowControl::remaining`] (it only takes a `std` lock);
//! everything that waits is the orchestrator's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

use crate::stage::{ErrorKind, Pushback, StageError};

/// What the report says about one registry.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RegistryFigures {
    /// Operations sent (a lookup, a manifest, a blob download, an upload
    /// opened, an upload, a mount: each one request, except an upload sent
    /// in chunks).
    pub requests: u64,
    /// Operations sent again after a transient failure.
    pub retries: u64,
    /// Answers that pushed back: 429/503, or no answer in time.
    pub pushbacks: u64,
    /// Seconds (wall clock) the registry was paused because it asked to be
    /// left alone.
    pub throttled_seconds: f64,
    /// The lowest concurrency limit the registry was held to.
    pub lowest_limit: usize,
    /// The highest concurrency limit the registry reached.
    pub highest_limit: usize,
    /// The last `ratelimit-remaining` the registry reported, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratelimit_remaining: Option<u64>,
}

struct State {
    /// The adaptive limit (fractional: additive increase of 1/limit).
    limit: f64,
    /// Still growing by one per good answer (no pushback yet).
    slow_start: bool,
    in_flight: usize,
    paused_until: Option<Instant>,
    /// 429/503 answers in a row, for the pause when no `Retry-After` came.
    busy_in_row: u32,
    /// The registry's own count of requests left, when it says.
    remaining: Option<u64>,
    /// Transfers running (slots taken through [`FlowControl::transfer`]).
    transfers: usize,
    /// Transfers get half the limit ([`Limits::transfers_halved`]).
    transfers_halved: bool,
    figures: RegistryFigures,
}

impl State {
    fn allowed(&self) -> usize {
        let mut n = self.limit.floor().max(1.0) as usize;
        if let Some(r) = self.remaining {
            n = n.min((r as usize).max(1));
        }
        n
    }

    /// How many transfers may run at once: half the operations (at least
    /// one) when halved, else as many.
    fn transfers_allowed(&self) -> usize {
        if self.transfers_halved {
            (self.allowed() / 2).max(1)
        } else {
            self.allowed()
        }
    }
}

struct Gate {
    state: Mutex<State>,
    /// Woken when a slot frees up or a pause is set.
    freed: Notify,
}

/// Operations at once per registry unless a run says otherwise (`--jobs`).
pub const DEFAULT_CAP: usize = 4;

/// Blobs this large or larger take a transfer slot to be copied.
pub const LARGE_BLOB: u64 = 1 << 20;

/// The adaptive limit's start: requests in flight to a registry at first.
pub const ADAPTIVE_START: usize = 8;
/// The adaptive limit's ceiling: requests in flight to one registry.
pub const ADAPTIVE_CAP: usize = 32;

/// How many operations a registry's gate lets run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The limit at the start.
    pub start: usize,
    /// The limit never goes above this.
    pub cap: usize,
    /// Grow by one per good answer until the first pushback.
    pub slow_start: bool,
    /// Transfers may take half the limit (at least one), not all of it.
    pub transfers_halved: bool,
}

impl Limits {
    /// The default: start at [`ADAPTIVE_START`], slow-start up to
    /// [`ADAPTIVE_CAP`].
    pub fn adaptive() -> Limits {
        Limits {
            start: ADAPTIVE_START,
            cap: ADAPTIVE_CAP,
            slow_start: true,
            transfers_halved: true,
        }
    }

    /// `--jobs N`: start at N, never above it.
    pub fn fixed(n: usize) -> Limits {
        Limits {
            start: n.max(1),
            cap: n.max(1),
            slow_start: false,
            transfers_halved: false,
        }
    }
}

/// The gates of one run, one per registry (keyed as the orchestrator names
/// them: the registry host of a reference, or `<transport>:`).
///
/// One lives in the [`crate::context::Registries`], so that a plugin can
/// pass on what a registry says of its limits; the orchestrator sets its cap
/// when a run starts.
pub struct FlowControl {
    cap: AtomicUsize,
    start: AtomicUsize,
    slow_start: AtomicBool,
    transfers_halved: AtomicBool,
    /// A `Retry-After` longer than this (the retry budget) pauses nothing:
    /// the operation that got it fails at once, and the others find out for
    /// themselves rather than wait past the budget.
    longest_pause_ms: AtomicU64,
    gates: Mutex<BTreeMap<String, Arc<Gate>>>,
}

impl Default for FlowControl {
    fn default() -> Self {
        FlowControl::new(DEFAULT_CAP)
    }
}

impl std::fmt::Debug for FlowControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowControl")
            .field("cap", &self.cap.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

/// The first pause after a 429/503 without `Retry-After`; doubled for each
/// such answer in a row, up to [`MAX_PAUSE`].
pub const BASE_PAUSE: Duration = Duration::from_millis(500);
/// The longest pause a 429/503 without `Retry-After` causes.
pub const MAX_PAUSE: Duration = Duration::from_secs(10);

/// Waits at `gate` until `take` takes what it needs from its state
/// (`Ok`), sleeping through a pause it names (`Err(Some(left))`) or until
/// something is freed (`Err(None)`). Bounded: each turn waits at most
/// [`HALT_CHECK`] and looks at `halt`, which ends the wait as
/// [`ErrorKind::Cancelled`].
async fn wait_at(
    gate: &Gate,
    key: &str,
    halt: &AtomicBool,
    mut take: impl FnMut(&mut State) -> Result<(), Option<Duration>>,
) -> Result<(), StageError> {
    loop {
        if halt.load(Ordering::SeqCst) {
            return Err(StageError::new(
                ErrorKind::Cancelled,
                format!("not sent to {key}: the run was interrupted"),
            ));
        }
        let freed = gate.freed.notified();
        tokio::pin!(freed);
        let wait = {
            let mut st = gate.state.lock().unwrap_or_else(|e| e.into_inner());
            match take(&mut st) {
                Ok(()) => return Ok(()),
                Err(Some(paused)) => Some(paused),
                Err(None) => {
                    // Registered before the lock is released: a slot freed
                    // from now on wakes this task.
                    freed.as_mut().enable();
                    None
                }
            }
        };
        match wait {
            Some(paused) => tokio::time::sleep(paused.min(HALT_CHECK)).await,
            None => {
                let _ = tokio::time::timeout(HALT_CHECK, freed).await;
            }
        }
    }
}

/// A slot in a gate, held while one operation runs.
pub struct Permit {
    gate: Arc<Gate>,
    key: String,
    cap: usize,
    longest_pause: Duration,
    done: bool,
}

/// How often a wait at a gate looks at the halt flag.
const HALT_CHECK: Duration = Duration::from_millis(100);

impl FlowControl {
    /// Gates of at most `cap` operations at once per registry.
    pub fn new(cap: usize) -> FlowControl {
        FlowControl {
            cap: AtomicUsize::new(cap.max(1)),
            start: AtomicUsize::new(cap.max(1)),
            slow_start: AtomicBool::new(false),
            transfers_halved: AtomicBool::new(false),
            // Until a run starts (and sets its retry budget), no pause is
            // refused as too long.
            longest_pause_ms: AtomicU64::new(u64::MAX),
            gates: Mutex::default(),
        }
    }

    /// Sets the limits and the longest pause a registry's `Retry-After` may
    /// cause (the retry budget) for the run about to start; gates start over.
    pub fn start(&self, limits: Limits, longest_pause: Duration) {
        self.cap.store(limits.cap.max(1), Ordering::SeqCst);
        self.start
            .store(limits.start.clamp(1, limits.cap.max(1)), Ordering::SeqCst);
        self.slow_start.store(limits.slow_start, Ordering::SeqCst);
        self.transfers_halved
            .store(limits.transfers_halved, Ordering::SeqCst);
        self.longest_pause_ms
            .store(longest_pause.as_millis() as u64, Ordering::SeqCst);
        self.gates.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn cap(&self) -> usize {
        self.cap.load(Ordering::SeqCst)
    }

    fn gate(&self, key: &str) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(Gate {
                    state: Mutex::new(State {
                        limit: self.start.load(Ordering::SeqCst) as f64,
                        slow_start: self.slow_start.load(Ordering::SeqCst),
                        in_flight: 0,
                        paused_until: None,
                        busy_in_row: 0,
                        remaining: None,
                        transfers: 0,
                        transfers_halved: self.transfers_halved.load(Ordering::SeqCst),
                        figures: RegistryFigures {
                            lowest_limit: self.start.load(Ordering::SeqCst),
                            highest_limit: self.start.load(Ordering::SeqCst),
                            ..Default::default()
                        },
                    }),
                    freed: Notify::new(),
                })
            })
            .clone()
    }

    /// Waits until `key`'s gate lets one more operation start: no pause in
    /// force and fewer than its limit running. `retry` counts it as a retry.
    /// A set `halt` ends the wait as [`ErrorKind::Cancelled`].
    pub async fn acquire(
        &self,
        key: &str,
        retry: bool,
        halt: &AtomicBool,
    ) -> Result<Permit, StageError> {
        let gate = self.gate(key);
        wait_at(&gate, key, halt, |st| {
            let now = Instant::now();
            match st.paused_until {
                Some(until) if until > now => Err(Some(until - now)),
                _ if st.in_flight < st.allowed() => {
                    st.in_flight += 1;
                    st.figures.requests += 1;
                    if retry {
                        st.figures.retries += 1;
                    }
                    Ok(())
                }
                _ => Err(None),
            }
        })
        .await?;
        Ok(Permit {
            gate,
            key: key.to_string(),
            cap: self.cap(),
            longest_pause: Duration::from_millis(self.longest_pause_ms.load(Ordering::SeqCst)),
            done: false,
        })
    }

    /// Waits until `key`'s gate has a transfer slot free (see the module
    /// doc), and takes it until the slot is dropped. Held around a whole
    /// transfer, retries included, before its upload or download is opened:
    /// a stream opened ahead of its slot would sit idle. The transfer's own
    /// requests still pass [`FlowControl::acquire`] each. A set `halt` ends
    /// the wait as [`ErrorKind::Cancelled`].
    pub async fn transfer(&self, key: &str, halt: &AtomicBool) -> Result<TransferSlot, StageError> {
        let gate = self.gate(key);
        wait_at(&gate, key, halt, |st| {
            if st.transfers < st.transfers_allowed() {
                st.transfers += 1;
                Ok(())
            } else {
                Err(None)
            }
        })
        .await?;
        Ok(TransferSlot { gate })
    }

    /// A registry's own count of requests it will still take (Docker Hub's
    /// `ratelimit-remaining`): the gate keeps its limit at most that.
    pub fn remaining(&self, key: &str, remaining: u64) {
        let gate = self.gate(key);
        let mut st = gate.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.remaining != Some(remaining) && (remaining as usize) < self.cap() {
            debug!(
                registry = key,
                remaining, "registry reports few requests left; fewer at once"
            );
        }
        st.remaining = Some(remaining);
        st.figures.ratelimit_remaining = Some(remaining);
        st.figures.lowest_limit = st.figures.lowest_limit.min(st.allowed());
    }

    /// Every registry's figures, by key.
    pub fn figures(&self) -> BTreeMap<String, RegistryFigures> {
        let gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .iter()
            .map(|(k, g)| {
                let st = g.state.lock().unwrap_or_else(|e| e.into_inner());
                let mut f = st.figures.clone();
                f.throttled_seconds = (f.throttled_seconds * 10.0).round() / 10.0;
                (k.clone(), f)
            })
            .collect()
    }
}

impl Permit {
    /// Ends the operation with its outcome: good answers grow the limit,
    /// pushback halves it (and a 429/503 pauses the registry).
    pub fn finish(mut self, outcome: Result<(), &StageError>) {
        self.done = true;
        let mut st = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        st.in_flight = st.in_flight.saturating_sub(1);
        let before = st.allowed();
        let pushback = match outcome {
            Ok(()) => None,
            Err(e) => e.pushback,
        };
        match pushback {
            None => {
                if outcome.is_ok() {
                    st.busy_in_row = 0;
                    let grow = if st.slow_start { 1.0 } else { 1.0 / st.limit };
                    st.limit = (st.limit + grow).min(self.cap as f64);
                }
            }
            Some(p) => {
                st.figures.pushbacks += 1;
                st.slow_start = false;
                st.limit = (st.limit / 2.0).max(1.0);
                if p == Pushback::Busy {
                    st.busy_in_row = st.busy_in_row.saturating_add(1);
                    let backoff = BASE_PAUSE
                        .saturating_mul(1u32 << (st.busy_in_row - 1).min(16))
                        .min(MAX_PAUSE);
                    let asked = outcome.err().and_then(|e| e.retry_after);
                    let now = Instant::now();
                    let pause = asked.unwrap_or(backoff);
                    let until = now + pause.min(self.longest_pause);
                    let from = st.paused_until.map_or(now, |u| u.max(now));
                    if pause <= self.longest_pause && until > from {
                        debug!(registry = %self.key, pause_ms = (until - now).as_millis() as u64, "registry asked to slow down: every request to it waits");
                        st.figures.throttled_seconds += (until - from).as_secs_f64();
                        st.paused_until = Some(until);
                    }
                }
            }
        }
        let after = st.allowed();
        st.figures.lowest_limit = st.figures.lowest_limit.min(after);
        st.figures.highest_limit = st.figures.highest_limit.max(after);
        if after != before {
            debug!(registry = %self.key, from = before, to = after, "concurrency limit changed");
        }
        drop(st);
        self.gate.freed.notify_waiters();
    }
}

/// A transfer slot ([`FlowControl::transfer`]), given back on drop.
pub struct TransferSlot {
    gate: Arc<Gate>,
}

impl Drop for TransferSlot {
    fn drop(&mut self) {
        let mut st = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        st.transfers = st.transfers.saturating_sub(1);
        drop(st);
        self.gate.freed.notify_waiters();
    }
}

impl Drop for Permit {
    /// An operation dropped before it finished (cancelled) frees its slot.
    fn drop(&mut self) {
        if !self.done {
            let mut st = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
            st.in_flight = st.in_flight.saturating_sub(1);
            drop(st);
            self.gate.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(cap: usize) -> FlowControl {
        FlowControl::new(cap)
    }

    fn busy(wait: Option<u64>) -> StageError {
        let e = StageError::transient("429").with_pushback(Pushback::Busy);
        match wait {
            Some(s) => e.with_retry_after(Duration::from_secs(s)),
            None => e,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_halves_on_pushback_and_grows_back_on_good_answers() {
        let f = flow(8);
        let halt = AtomicBool::new(false);
        let silent = StageError::transient("timeout").with_pushback(Pushback::Silent);
        for _ in 0..3 {
            f.acquire("r", false, &halt)
                .await
                .unwrap()
                .finish(Err(&silent));
        }
        assert_eq!(f.figures()["r"].lowest_limit, 1);
        assert_eq!(f.figures()["r"].pushbacks, 3);
        // 8 → 4 → 2 → 1; additive increase: back to 8 within a few dozen answers.
        for _ in 0..40 {
            f.acquire("r", false, &halt).await.unwrap().finish(Ok(()));
        }
        let g = f.gate("r");
        assert_eq!(g.state.lock().unwrap().allowed(), 8);
        // A plain failure (no pushback) leaves the limit alone.
        f.acquire("r", true, &halt)
            .await
            .unwrap()
            .finish(Err(&StageError::transient("500")));
        assert_eq!(g.state.lock().unwrap().allowed(), 8);
        assert_eq!(f.figures()["r"].retries, 1);
        assert_eq!(f.figures()["r"].requests, 44);
    }

    /// docs/reliability.md: "Plain failures (500, a dropped connection)
    /// leave it alone". A dropped connection reaches the gate as the core
    /// classifies an I/O error (transient, no pushback); a 429 in the same
    /// setup halves the limit.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_connection_leaves_the_limit_alone_and_a_429_halves_it() {
        let f = flow(8);
        let halt = AtomicBool::new(false);
        let limit = |f: &FlowControl| f.gate("r").state.lock().unwrap().allowed();
        assert_eq!(limit(&f), 8);
        for kind in [
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::ConnectionAborted,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            let dropped = StageError::from_io(
                "reading blob",
                &std::io::Error::new(kind, "connection closed before message completed"),
            );
            assert_eq!(
                (dropped.kind, dropped.pushback),
                (ErrorKind::Transient, None),
                "{kind:?}"
            );
            f.acquire("r", true, &halt)
                .await
                .unwrap()
                .finish(Err(&dropped));
            assert_eq!(
                limit(&f),
                8,
                "a dropped connection ({kind:?}) moved the limit"
            );
        }
        assert_eq!(f.figures()["r"].pushbacks, 0);
        assert_eq!(f.figures()["r"].lowest_limit, 8);
        // The same gate, a 429: halved.
        f.acquire("r", true, &halt)
            .await
            .unwrap()
            .finish(Err(&busy(None)));
        assert_eq!(limit(&f), 4);
        assert_eq!(f.figures()["r"].pushbacks, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_adaptive_limit_slow_starts_to_its_cap_then_halves_and_grows_slowly() {
        let f = FlowControl::new(4);
        f.start(Limits::adaptive(), Duration::from_secs(120));
        let halt = AtomicBool::new(false);
        let limit = |f: &FlowControl| {
            let g = f.gate("r");
            let st = g.state.lock().unwrap();
            st.allowed()
        };
        assert_eq!(limit(&f), ADAPTIVE_START);
        // One more per good answer, up to the cap.
        for i in 1..=4 {
            f.acquire("r", false, &halt).await.unwrap().finish(Ok(()));
            assert_eq!(limit(&f), ADAPTIVE_START + i);
        }
        for _ in 0..100 {
            f.acquire("r", false, &halt).await.unwrap().finish(Ok(()));
        }
        assert_eq!(limit(&f), ADAPTIVE_CAP);
        // A pushback halves it and ends the slow start: growth is slow now.
        let e = StageError::transient("timeout").with_pushback(Pushback::Silent);
        f.acquire("r", false, &halt).await.unwrap().finish(Err(&e));
        assert_eq!(limit(&f), ADAPTIVE_CAP / 2);
        for _ in 0..4 {
            f.acquire("r", false, &halt).await.unwrap().finish(Ok(()));
        }
        assert_eq!(limit(&f), ADAPTIVE_CAP / 2);
        let figures = &f.figures()["r"];
        assert_eq!(figures.highest_limit, ADAPTIVE_CAP);
        assert_eq!(figures.lowest_limit, ADAPTIVE_START);
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_the_limit_run_at_once() {
        let f = Arc::new(flow(2));
        let halt = Arc::new(AtomicBool::new(false));
        let a = f.acquire("r", false, &halt).await.unwrap();
        let _b = f.acquire("r", false, &halt).await.unwrap();
        let (f2, h2) = (f.clone(), halt.clone());
        let third = tokio::spawn(async move {
            let p = f2.acquire("r", false, &h2).await.unwrap();
            p.finish(Ok(()));
            Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!third.is_finished(), "a third operation ran beside two");
        let freed_at = Instant::now();
        a.finish(Ok(()));
        assert!(third.await.unwrap() >= freed_at);
        // Another registry has its own gate.
        f.acquire("other", false, &halt)
            .await
            .unwrap()
            .finish(Ok(()));
    }

    /// Tries to take a transfer slot within a second (paused clock).
    async fn slot_within_a_second(f: &FlowControl, halt: &AtomicBool) -> Option<TransferSlot> {
        tokio::time::timeout(Duration::from_secs(1), f.transfer("r", halt))
            .await
            .ok()
            .map(|r| r.unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn adaptive_transfers_take_half_the_limit_and_leave_the_rest_to_requests() {
        let f = FlowControl::default();
        f.start(Limits::adaptive(), Duration::from_secs(120));
        let halt = AtomicBool::new(false);
        // Limit 8 at the start: 4 transfer slots.
        let mut slots = Vec::new();
        for _ in 0..ADAPTIVE_START / 2 {
            slots.push(slot_within_a_second(&f, &halt).await.expect("a free slot"));
        }
        assert!(slot_within_a_second(&f, &halt).await.is_none());
        // With every transfer slot taken, cheap requests still get the other
        // half of the limit (and more: transfers hold operation slots only
        // while one of their requests runs).
        let permits: Vec<Permit> = {
            let mut v = Vec::new();
            for _ in 0..ADAPTIVE_START {
                v.push(f.acquire("r", false, &halt).await.unwrap());
            }
            v
        };
        for p in permits {
            p.finish(Ok(()));
        }
        // Eight good answers in slow start: limit 16, 8 transfer slots.
        for _ in 0..4 {
            slots.push(slot_within_a_second(&f, &halt).await.expect("grown"));
        }
        assert!(slot_within_a_second(&f, &halt).await.is_none());
        // A slot given back is free for the next transfer.
        slots.pop();
        assert!(slot_within_a_second(&f, &halt).await.is_some());
        // Pushback halves the limit, and with it the transfer slots: 16 → 8,
        // 4 slots, so none is free until five of the eight are back.
        f.acquire("r", false, &halt)
            .await
            .unwrap()
            .finish(Err(&busy(Some(0))));
        slots.truncate(4);
        assert!(slot_within_a_second(&f, &halt).await.is_none());
        slots.truncate(3);
        assert!(slot_within_a_second(&f, &halt).await.is_some());
        // An interrupted run ends the wait.
        halt.store(true, Ordering::SeqCst);
        let e = f.transfer("r", &halt).await.err().unwrap();
        assert_eq!(e.kind, ErrorKind::Cancelled);
    }

    #[tokio::test(start_paused = true)]
    async fn with_jobs_n_transfers_take_the_whole_limit() {
        let f = FlowControl::default();
        f.start(Limits::fixed(3), Duration::from_secs(120));
        let halt = AtomicBool::new(false);
        let mut slots = Vec::new();
        for _ in 0..3 {
            slots.push(slot_within_a_second(&f, &halt).await.expect("a free slot"));
        }
        assert!(slot_within_a_second(&f, &halt).await.is_none());
        drop(slots);
        assert!(slot_within_a_second(&f, &halt).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_pauses_every_operation_to_that_registry() {
        let f = flow(4);
        let halt = AtomicBool::new(false);
        let started = Instant::now();
        f.acquire("r", false, &halt)
            .await
            .unwrap()
            .finish(Err(&busy(Some(3))));
        // Another task's operation waits out the pause; another registry does not.
        f.acquire("elsewhere", false, &halt)
            .await
            .unwrap()
            .finish(Ok(()));
        assert!(started.elapsed() < Duration::from_millis(100));
        f.acquire("r", false, &halt).await.unwrap().finish(Ok(()));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_millis(3200),
            "{waited:?}"
        );
        let figures = f.figures();
        assert_eq!(figures["r"].throttled_seconds, 3.0);
        assert_eq!(figures["r"].lowest_limit, 2);
        assert_eq!(figures["elsewhere"].throttled_seconds, 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_answers_without_retry_after_pause_with_a_growing_backoff() {
        let f = flow(4);
        let halt = AtomicBool::new(false);
        let mut pauses = Vec::new();
        for _ in 0..6 {
            f.acquire("r", false, &halt)
                .await
                .unwrap()
                .finish(Err(&busy(None)));
            let t = Instant::now();
            // A plain failure: the run of busy answers goes on.
            f.acquire("r", false, &halt)
                .await
                .unwrap()
                .finish(Err(&StageError::transient("500")));
            pauses.push(t.elapsed().as_millis() as u64);
        }
        assert_eq!(pauses, vec![500, 1000, 2000, 4000, 8000, 10000]);
    }

    #[tokio::test(start_paused = true)]
    async fn ratelimit_remaining_caps_the_limit() {
        let f = flow(4);
        let halt = AtomicBool::new(false);
        f.remaining("r", 1);
        let _one = f.acquire("r", false, &halt).await.unwrap();
        let second = tokio::time::timeout(Duration::from_secs(5), f.acquire("r", false, &halt));
        assert!(
            second.await.is_err(),
            "two ran at once with one request left"
        );
        assert_eq!(f.figures()["r"].lowest_limit, 1);
        f.remaining("r", 100);
        assert_eq!(f.figures()["r"].ratelimit_remaining, Some(100));
        f.acquire("r", false, &halt).await.unwrap().finish(Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_past_the_budget_pauses_nothing() {
        let f = flow(4);
        f.start(Limits::fixed(4), Duration::from_secs(120));
        let halt = AtomicBool::new(false);
        let started = Instant::now();
        f.acquire("r", false, &halt)
            .await
            .unwrap()
            .finish(Err(&busy(Some(3600))));
        f.acquire("r", false, &halt).await.unwrap().finish(Ok(()));
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(f.figures()["r"].throttled_seconds, 0.0);
        assert_eq!(f.figures()["r"].pushbacks, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_interruption_ends_a_wait_at_the_gate() {
        let f = flow(1);
        let halt = AtomicBool::new(false);
        f.acquire("r", false, &halt)
            .await
            .unwrap()
            .finish(Err(&busy(Some(60))));
        halt.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let e = f.acquire("r", false, &halt).await.err().unwrap();
        assert_eq!(e.kind, ErrorKind::Cancelled);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    /// A halt that comes while a task is already waiting at the gate, paused
    /// by a `Retry-After` or full, ends that wait (within a look at the flag,
    /// [`HALT_CHECK`]), and for an operation and a transfer alike.
    #[tokio::test(start_paused = true)]
    async fn an_interruption_ends_a_wait_already_in_progress() {
        // A paused gate: 60 s asked for.
        let f = Arc::new(flow(2));
        let halt = Arc::new(AtomicBool::new(false));
        f.acquire("r", false, &halt)
            .await
            .unwrap()
            .finish(Err(&busy(Some(60))));
        // A full gate: its one operation held.
        let full = Arc::new(FlowControl::default());
        full.start(Limits::fixed(1), Duration::from_secs(120));
        let _held = full.acquire("r", false, &halt).await.unwrap();
        let _slot = full.transfer("r", &halt).await.unwrap();
        let waits = [
            {
                let (f, halt) = (f.clone(), halt.clone());
                tokio::spawn(async move { f.acquire("r", false, &halt).await.map(drop) })
            },
            {
                let (f, halt) = (full.clone(), halt.clone());
                tokio::spawn(async move { f.acquire("r", false, &halt).await.map(drop) })
            },
            {
                let (f, halt) = (full.clone(), halt.clone());
                tokio::spawn(async move { f.transfer("r", &halt).await.map(drop) })
            },
        ];
        // Well into the waits.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            waits.iter().all(|w| !w.is_finished()),
            "a wait ended before the halt"
        );
        let halted = Instant::now();
        halt.store(true, Ordering::SeqCst);
        for w in waits {
            let e = tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .expect("the halt did not end the wait within 10 s")
                .unwrap()
                .expect_err("the wait ended in a slot, not in the halt");
            assert_eq!(e.kind, ErrorKind::Cancelled, "{e}");
        }
        assert!(halted.elapsed() <= HALT_CHECK, "{:?}", halted.elapsed());
    }
}
