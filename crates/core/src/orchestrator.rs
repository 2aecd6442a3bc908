//! Turns a definition into a plan and executes it through the stages.
//!
//! Order of work, per run:
//! 1. `prepare` (no I/O): targets are computed by the transforms, duplicates and
//!    signing prerequisites are checked, the stages needed are built. Errors here
//!    are input errors: nothing has been touched.
//! 2. plan (reads only): each source is resolved, each target looked up, the
//!    guards decide. A safety stop found here means nothing is written at all.
//! 3. execute: blobs first (skipping those present), child manifests, the tagged
//!    manifest last, then signing. A safety stop during execution halts all
//!    further writing.

use std::collections::HashMap;
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use futures_util::{stream, FutureExt, StreamExt};
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use crate::context::RunContext;
use crate::definition::{Definition, ImageSpec};
use crate::digest::{Digest, VerifyingStream};
use crate::flow::FlowControl;
use crate::manifest::{Descriptor, Manifest, RawManifest, MAX_INDEX_DEPTH};
use crate::reference::ImageRef;
use crate::registry::{BuildError, StageRegistry};
use crate::report::{Action, ImageReport, Report};
use crate::retry::{Retry, RetryPolicy};
use crate::stage::{
    ErrorKind, Guard, GuardInput, ImageEntry, ManifestTarget, SignRequest, Signer, Sink, Source,
    StageError, Transform, TransformInput, Verdict,
};

pub use crate::definition::{PipelineSpec, StageSpec};

/// An input problem found before anything is touched.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("{}{at}: {source}", line_prefix(.path, *.line))]
    Stage {
        path: String,
        line: Option<usize>,
        at: String,
        source: BuildError,
    },
    #[error("{}images[{index}] (source `{source_ref}`): {message}", line_prefix(.path, *.line))]
    Target {
        path: String,
        line: Option<usize>,
        index: usize,
        source_ref: String,
        message: String,
    },
    #[error("{}images[{second}] (source `{second_source}`) and images[{first}] (source `{first_source}`) both resolve to target `{target}`", line_prefix(.path, *.line))]
    DuplicateTarget {
        path: String,
        line: Option<usize>,
        first: usize,
        first_source: String,
        second: usize,
        second_source: String,
        target: String,
    },
    #[error("{path}: signing is enabled for {count} image(s) (first: images[{first}] `{first_source}`) but no signing key was given")]
    SigningWithoutKey {
        path: String,
        count: usize,
        first: usize,
        first_source: String,
    },
    #[error("{path}: signing is enabled for {count} image(s) but {message}")]
    SignerUnavailable {
        path: String,
        count: usize,
        message: String,
    },
}

fn line_prefix(path: &str, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{path}:{l}: "),
        None => format!("{path}: "),
    }
}

/// Builds pipelines from the registry and runs definitions through them.
pub struct Orchestrator {
    pub registry: StageRegistry,
    pub context: RunContext,
}

struct Item {
    spec: ImageSpec,
    /// What guards see of the image.
    entry: ImageEntry,
    /// The pipeline's guards, then the image's own (`images[].pipeline.guards`).
    guards: Vec<Arc<dyn Guard>>,
    target: ImageRef,
    source: Arc<dyn Source>,
    sink: Arc<dyn Sink>,
    /// Set for images that are signed.
    signer: Option<Arc<dyn Signer>>,
}

/// A definition ready to run: targets computed, stages built.
pub struct Prepared {
    items: Vec<Item>,
    dry_run: bool,
    /// How much runs at once (see [`Concurrency`]).
    concurrency: Concurrency,
    /// Blobs (and child manifests) of one image worked on at once.
    jobs: usize,
    retry: RetryPolicy,
    interrupt: Arc<AtomicBool>,
    progress: Arc<dyn crate::report::Progress>,
    /// Per-registry gates (the context's, shared with the plugins).
    flow: Arc<FlowControl>,
    /// Entries that failed before planning (a tag rule's expansion).
    failed: Vec<ImageReport>,
}

/// The name a registry's gate and figures go by: the registry host of a
/// registry reference, `<transport>:` for the others (layouts, `dir:`).
fn registry_of(r: &ImageRef) -> String {
    match r.transport() {
        Some(t) => format!("{t}:"),
        None => r.registry().to_string(),
    }
}

/// The number of blobs of one image worked on at once, and the fixed
/// number of everything with `--jobs` given.
pub const DEFAULT_JOBS: usize = crate::flow::DEFAULT_CAP;

/// Images copied at once by default (each within its registries' limits).
pub const ADAPTIVE_IMAGES: usize = 32;

/// How much of a run goes on at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Concurrency {
    /// The default: planning looks up every image as fast as each
    /// registry's adaptive limit allows ([`crate::flow::Limits::adaptive`]),
    /// [`ADAPTIVE_IMAGES`] images are copied at once, [`DEFAULT_JOBS`] blobs
    /// of each.
    Adaptive,
    /// `--jobs N`: N images planned and copied at once, N blobs of each, and
    /// at most N requests in flight per registry.
    Fixed(usize),
}

impl Concurrency {
    /// Images planned at once.
    fn lookups(self) -> usize {
        match self {
            Concurrency::Adaptive => crate::flow::ADAPTIVE_CAP,
            Concurrency::Fixed(n) => n,
        }
    }
    /// Images copied at once.
    fn images(self) -> usize {
        match self {
            Concurrency::Adaptive => ADAPTIVE_IMAGES,
            Concurrency::Fixed(n) => n,
        }
    }
    /// Per-registry gate limits.
    pub fn limits(self) -> crate::flow::Limits {
        match self {
            Concurrency::Adaptive => crate::flow::Limits::adaptive(),
            Concurrency::Fixed(n) => crate::flow::Limits::fixed(n),
        }
    }
}

impl Prepared {
    /// The targets, in definition order.
    pub fn targets(&self) -> Vec<(&ImageSpec, &ImageRef)> {
        self.items.iter().map(|i| (&i.spec, &i.target)).collect()
    }

    /// Works on at most `jobs` images at once, and on at most `jobs` blobs of
    /// an image at once (at least 1).
    pub fn with_jobs(mut self, jobs: usize) -> Prepared {
        self.jobs = jobs.max(1);
        self.concurrency = Concurrency::Fixed(self.jobs);
        self
    }

    /// [`Prepared::with_jobs`] when `jobs` is given, else the adaptive
    /// default ([`Concurrency::Adaptive`]).
    pub fn with_jobs_cap(self, jobs: Option<usize>) -> Prepared {
        match jobs {
            Some(n) => self.with_jobs(n),
            None => self,
        }
    }

    /// A flag that, once set (on SIGINT/SIGTERM), stops new work: no image
    /// or write starts after it; writes in flight complete.
    /// Reports progress to `display` as the run goes.
    pub fn with_progress(mut self, display: Arc<dyn crate::report::Progress>) -> Prepared {
        self.progress = display;
        self
    }

    pub fn with_interrupt(mut self, flag: Arc<AtomicBool>) -> Prepared {
        self.interrupt = flag;
        self
    }

    /// Adds the reports of entries that failed before planning (their tag
    /// rule's expansion); the run's report lists them in definition order.
    fn with_failed(mut self, failed: Vec<ImageReport>) -> Prepared {
        self.failed = failed;
        self
    }

    /// The per-registry flow control the run goes through (the context's).
    pub fn flow(&self) -> &Arc<FlowControl> {
        &self.flow
    }

    /// Retries transient failures of registry operations with `policy`.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Prepared {
        self.retry = policy;
        self
    }

    /// The retry policy, its waits ended by an interruption.
    fn retry(&self) -> Retry<'_> {
        Retry {
            policy: &self.retry,
            halt: &self.interrupt,
            flow: Some(&self.flow),
        }
    }

    /// Plans and (unless dry run) executes. Never panics on stage errors: every
    /// outcome is in the report, in definition order.
    pub async fn run(self) -> Report {
        let (lookups, images) = (self.concurrency.lookups(), self.concurrency.images());
        self.flow
            .start(self.concurrency.limits(), self.retry.budget);
        // Planning reads only: every image is looked up as fast as its
        // registries' gates allow, not in step with the copies.
        let planned: Vec<Planned> = stream::iter(self.items.iter())
            .map(|item| self.plan(item))
            .buffered(lookups.max(1))
            .collect()
            .await;
        self.progress.planned(
            planned.len(),
            planned
                .iter()
                .filter(|p| matches!(p.decision, Decision::Copy(_)))
                .count(),
        );
        let stop = AtomicBool::new(planned.iter().any(|p| p.report.action == Action::Stopped));
        if stop.load(Ordering::SeqCst) {
            warn!("safety stop during planning: nothing is written in this run");
        }
        let run = Run {
            stop,
            interrupt: self.interrupt.clone(),
            ledger: Ledger::default(),
        };
        let mut images: Vec<ImageReport> = stream::iter(self.items.iter().zip(planned))
            .map(|(item, p)| self.finish(item, p, &run))
            .buffered(images.max(1))
            .collect()
            .await;
        if !self.failed.is_empty() {
            images.extend(self.failed.iter().cloned());
            // Stable: expanded images keep their selection order.
            images.sort_by_key(|i| i.index);
        }
        let registries = self.flow.figures();
        for (registry, f) in &registries {
            debug!(%registry, requests = f.requests, retries = f.retries, pushbacks = f.pushbacks, throttled_seconds = f.throttled_seconds, lowest_limit = f.lowest_limit, "registry figures");
        }
        Report {
            dry_run: self.dry_run,
            interrupted: run.interrupted(),
            images,
            registries,
        }
    }
}

mod carry;
mod copy;
mod execute;
mod expand;
mod plan;
mod prepare;
mod retried;
mod stages;

use copy::{check_manifest, ImageCopy, Walk};
use execute::{Ledger, Run};
use plan::{Decision, Planned};

pub use expand::Expansion;

// The unit tests take these from here (`use super::*`).
#[cfg(test)]
use crate::stage::StageKind;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_build;
