//! Turns a definition into a plan and executes it through the stages: one
//! type per phase, each phase's work on its own type and in its own module.
//!
//! 1. [`Prepared`] (`prepare.rs`, no I/O): targets computed by the
//!    transforms, duplicates and signing prerequisites checked, the stages
//!    built, each once (`stages.rs`). A definition with tag rules is first an
//!    [`Expansion`] (`expand.rs`): its repositories' tags are listed (reads
//!    only), then the images selected are prepared with the stages already
//!    built. Errors here are input errors: nothing has been touched.
//! 2. [`Planned`] (`plan.rs`, reads only): each source resolved, each target
//!    looked up, the guards decide. A safety stop found here means nothing is
//!    written at all.
//! 3. [`Executed`] (`execute.rs`, with `copy.rs` and `carry.rs`): blobs first
//!    (skipping those present), child manifests, the tagged manifest last,
//!    then carrying and signing. A safety stop during execution halts all
//!    further writing. Its outcomes make the [`Report`](crate::report::Report).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::catalogue::{BuildError, StageRegistry};
use crate::context::RunContext;
use crate::flow::FlowControl;
use crate::reference::ImageRef;
use crate::report::Progress;
use crate::retry::{Retry, RetryPolicy};

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

/// The name a registry's gate and figures go by: the registry host of a
/// registry reference, `<transport>:` for the others (layouts, `dir:`).
pub(super) fn registry_of(r: &ImageRef) -> String {
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

/// How a run goes: set on [`Prepared`], carried through every phase.
pub(super) struct Settings {
    dry_run: bool,
    /// How much runs at once (see [`Concurrency`]).
    concurrency: Concurrency,
    /// Blobs (and child manifests) of one image worked on at once.
    jobs: usize,
    retry: RetryPolicy,
    interrupt: Arc<AtomicBool>,
    progress: Arc<dyn Progress>,
    /// Per-registry gates (the context's, shared with the plugins).
    flow: Arc<FlowControl>,
}

impl Settings {
    /// The defaults: adaptive, default retries, no interruption, no
    /// progress display, through `flow`.
    fn new(dry_run: bool, flow: Arc<FlowControl>) -> Settings {
        Settings {
            dry_run,
            concurrency: Concurrency::Adaptive,
            jobs: DEFAULT_JOBS,
            retry: RetryPolicy::default(),
            interrupt: Arc::default(),
            progress: Arc::new(crate::report::NoProgress),
            flow,
        }
    }

    /// The retry policy, its waits ended by an interruption.
    fn retry(&self) -> Retry<'_> {
        Retry {
            policy: &self.retry,
            halt: &self.interrupt,
            flow: Some(&self.flow),
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

pub use execute::Executed;
pub use expand::Expansion;
pub use plan::Planned;
pub use prepare::Prepared;

// The unit tests (`tests.rs`) take these from here with `use super::*`:
// what this module imported before each phase got its own module.
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_build;
