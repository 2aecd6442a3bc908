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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use futures_util::{stream, FutureExt, StreamExt};
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use crate::context::StageContext;
use crate::definition::{Definition, ImageSpec};
use crate::digest::{Digest, VerifyingStream};
use crate::flow::FlowControl;
use crate::manifest::{Descriptor, Manifest, RawManifest, MAX_INDEX_DEPTH};
use crate::reference::ImageRef;
use crate::registry::{BuildError, StageRegistry};
use crate::report::{Action, ImageReport, Report};
use crate::retry::{Retry, RetryPolicy};
use crate::stage::{
    ErrorKind, Guard, GuardInput, ManifestTarget, SignRequest, Signer, Sink, Source, Stage,
    StageError, StageKind, Transform, TransformInput, Verdict,
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
    pub context: StageContext,
}

struct Item {
    spec: ImageSpec,
    target: ImageRef,
    source: Arc<dyn Source>,
    sink: Arc<dyn Sink>,
    /// Set for images that are signed.
    signer: Option<Arc<dyn Signer>>,
}

/// A definition ready to run: targets computed, stages built.
pub struct Prepared {
    items: Vec<Item>,
    guards: Vec<Arc<dyn Guard>>,
    dry_run: bool,
    jobs: usize,
    retry: RetryPolicy,
    interrupt: Arc<AtomicBool>,
    progress: Arc<dyn crate::report::Progress>,
    /// Per-registry gates (the context's, shared with the plugins).
    flow: Arc<FlowControl>,
}

/// The name a registry's gate and figures go by: the registry host of a
/// registry reference, `<transport>:` for the others (layouts, `dir:`).
fn registry_of(r: &ImageRef) -> String {
    match r.transport() {
        Some(t) => format!("{t}:"),
        None => r.registry().to_string(),
    }
}

/// The default number of images (and of blobs per image) worked on at once.
pub const DEFAULT_JOBS: usize = 4;

impl Orchestrator {
    pub fn new(registry: StageRegistry, context: StageContext) -> Orchestrator {
        Orchestrator { registry, context }
    }

    fn build(&self, kind: StageKind, spec: &StageSpec) -> Result<Stage, BuildError> {
        self.registry
            .build(kind, &spec.plugin, &spec.config, &self.context)
    }

    /// Builds a stage, naming where the definition chose it on error.
    fn build_at(
        &self,
        def: &Definition,
        kind: StageKind,
        spec: &StageSpec,
    ) -> Result<Stage, PrepareError> {
        self.build(kind, spec).map_err(|source| match &spec.at {
            Some(at) => PrepareError::Stage {
                path: def.path.display().to_string(),
                line: spec.line,
                at: at.clone(),
                source,
            },
            None => PrepareError::Build(source),
        })
    }

    fn build_by_transport(
        &self,
        def: &Definition,
        kind: StageKind,
        chosen: &Option<StageSpec>,
        transport: Option<&str>,
    ) -> Result<Stage, PrepareError> {
        if let Some(spec) = chosen {
            return self.build_at(def, kind, spec);
        }
        match self.registry.for_transport(kind, transport) {
            Some(entry) => Ok(self.build(kind, &StageSpec::named(&entry.name))?),
            None => Err(PrepareError::Build(BuildError::Unknown {
                kind,
                name: match transport {
                    Some(t) => format!("<serving `{t}:` references>"),
                    None => "<serving registry references>".into(),
                },
                known: self.registry.names(kind).join(", "),
            })),
        }
    }

    /// Computes targets and builds stages. Touches nothing.
    pub fn prepare(&self, def: &Definition, dry_run: bool) -> Result<Prepared, PrepareError> {
        self.prepare_shard(def, dry_run, None)
    }

    /// [`Orchestrator::prepare`] for one shard: only the images whose target
    /// the shard owns are kept (targets and duplicates are still checked over
    /// the whole definition, so every shard refuses the same bad input).
    pub fn prepare_shard(
        &self,
        def: &Definition,
        dry_run: bool,
        shard: Option<crate::shard::Shard>,
    ) -> Result<Prepared, PrepareError> {
        let path = def.path.display().to_string();
        let mut transforms: Vec<Arc<dyn Transform>> = Vec::new();
        let pipeline = &def.pipeline;
        for t in &pipeline.transforms {
            match self.build_at(def, StageKind::Transform, t)? {
                Stage::Transform(t) => transforms.push(t),
                _ => unreachable!("registry checks the kind"),
            }
        }
        let mut guards: Vec<Arc<dyn Guard>> = Vec::new();
        for g in &pipeline.guards {
            match self.build_at(def, StageKind::Guard, g)? {
                Stage::Guard(g) => guards.push(g),
                _ => unreachable!("registry checks the kind"),
            }
        }

        // Targets and duplicates.
        let mut targets: Vec<ImageRef> = Vec::with_capacity(def.images.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for spec in &def.images {
            let mut target = None;
            for t in &transforms {
                let next = t
                    .apply(TransformInput {
                        spec,
                        target: target.clone(),
                    })
                    .map_err(|e| PrepareError::Target {
                        path: path.clone(),
                        line: spec.line,
                        index: spec.index,
                        source_ref: spec.source.to_string(),
                        message: e.message,
                    })?;
                target = Some(next);
            }
            let target = target.ok_or_else(|| PrepareError::Target {
                path: path.clone(),
                line: spec.line,
                index: spec.index,
                source_ref: spec.source.to_string(),
                message: "the pipeline has no transform to compute the target".into(),
            })?;
            // Whatever transform computed it, the target must be a reference
            // the sinks can write: checked here, before anything is touched.
            if let Err(message) = valid_target(&target, &self.context.transports) {
                return Err(PrepareError::Target {
                    path: path.clone(),
                    line: spec.line,
                    index: spec.index,
                    source_ref: spec.source.to_string(),
                    message,
                });
            }
            let key = target.to_string();
            if let Some(&first) = seen.get(&key) {
                let f = &def.images[first];
                if !f.source.same_image(&spec.source) {
                    return Err(PrepareError::DuplicateTarget {
                        path: path.clone(),
                        line: spec.line,
                        first,
                        first_source: f.source.to_string(),
                        second: spec.index,
                        second_source: spec.source.to_string(),
                        target: key,
                    });
                }
                warn!(image = spec.index, source = %spec.source, "image listed twice; it is synced once");
            } else {
                seen.insert(key, spec.index);
            }
            targets.push(target);
        }

        // Sources and sinks: one per transport, or per stage spec an image names.
        let mut sources: BTreeMap<Option<String>, Arc<dyn Source>> = BTreeMap::new();
        let mut sinks: HashMap<String, Arc<dyn Sink>> = HashMap::new();
        let mut items: Vec<Item> = Vec::with_capacity(def.images.len());
        let mut done: HashMap<String, usize> = HashMap::new();
        for (spec, target) in def.images.iter().zip(targets) {
            if shard.is_some_and(|s| !s.owns(&target)) {
                continue;
            }
            if let Some(&kept) = done.get(&target.to_string()) {
                // Listed twice: synced once, signed if any listing asks for it.
                items[kept].spec.sign |= spec.sign;
                continue;
            }
            let st = spec.source.transport().map(str::to_string);
            if !sources.contains_key(&st) {
                match self.build_by_transport(
                    def,
                    StageKind::Source,
                    &pipeline.source,
                    st.as_deref(),
                )? {
                    Stage::Source(s) => sources.insert(st.clone(), s),
                    _ => unreachable!("registry checks the kind"),
                };
            }
            let tt = target.transport().map(str::to_string);
            let chosen = spec.sink.clone().or_else(|| pipeline.sink.clone());
            let key = match &chosen {
                Some(c) => format!("spec {} {}", c.plugin, c.config),
                None => format!("transport {tt:?}"),
            };
            if !sinks.contains_key(&key) {
                match self.build_by_transport(def, StageKind::Sink, &chosen, tt.as_deref())? {
                    Stage::Sink(s) => sinks.insert(key.clone(), s),
                    _ => unreachable!("registry checks the kind"),
                };
            }
            done.insert(target.to_string(), items.len());
            items.push(Item {
                spec: spec.clone(),
                target,
                source: sources[&st].clone(),
                sink: sinks[&key].clone(),
                signer: None,
            });
        }

        // Signers, for the images that are signed: the image's own or the
        // pipeline's. A signer that needs `--kms-key` says so when built
        // (`BuildError::MissingKey`); others may carry their key in their config.
        let signing: Vec<(String, usize, String)> = items
            .iter()
            .filter(|i| i.spec.sign)
            .map(|i| {
                let plugin = &i.spec.signer.as_ref().unwrap_or(&pipeline.signer).plugin;
                (plugin.clone(), i.spec.index, i.spec.source.to_string())
            })
            .collect();
        let count = signing.len();
        let without_key = |plugin: &str| {
            let asking: Vec<&(String, usize, String)> =
                signing.iter().filter(|(p, ..)| p == plugin).collect();
            PrepareError::SigningWithoutKey {
                path: path.clone(),
                count: asking.len(),
                first: asking[0].1,
                first_source: asking[0].2.clone(),
            }
        };
        let mut signers: HashMap<String, Arc<dyn Signer>> = HashMap::new();
        for item in items.iter_mut().filter(|i| i.spec.sign) {
            let chosen = item.spec.signer.as_ref().unwrap_or(&pipeline.signer);
            let key = format!("{} {}", chosen.plugin, chosen.config);
            if !signers.contains_key(&key) {
                match self.build_at(def, StageKind::Signer, chosen) {
                    Ok(Stage::Signer(s)) => signers.insert(key.clone(), s),
                    Ok(_) => unreachable!("registry checks the kind"),
                    Err(
                        PrepareError::Build(BuildError::MissingKey { .. })
                        | PrepareError::Stage {
                            source: BuildError::MissingKey { .. },
                            ..
                        },
                    ) => return Err(without_key(&chosen.plugin)),
                    Err(e @ PrepareError::Stage { .. }) => return Err(e),
                    Err(e) => {
                        return Err(PrepareError::SignerUnavailable {
                            path,
                            count,
                            message: e.to_string(),
                        })
                    }
                };
            }
            item.signer = Some(signers[&key].clone());
        }
        Ok(Prepared {
            items,
            guards,
            dry_run,
            jobs: DEFAULT_JOBS,
            retry: RetryPolicy::default(),
            interrupt: Arc::default(),
            progress: Arc::new(crate::report::NoProgress),
            flow: self.context.flow.clone(),
        })
    }
}

struct Planned {
    report: ImageReport,
    manifest: Option<RawManifest>,
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
        self
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
        let jobs = self.jobs;
        self.flow.start(jobs, self.retry.budget);
        let planned: Vec<Planned> = stream::iter(self.items.iter())
            .map(|item| self.plan(item))
            .buffered(jobs)
            .collect()
            .await;
        self.progress.planned(
            planned.len(),
            planned
                .iter()
                .filter(|p| p.report.action == Action::Copied)
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
        let images: Vec<ImageReport> = stream::iter(self.items.iter().zip(planned))
            .map(|(item, p)| self.finish(item, p, &run))
            .buffered(jobs)
            .collect()
            .await;
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

    /// Executes one planned image: copy (unless in sync), then sign.
    async fn finish(&self, item: &Item, p: Planned, run: &Run) -> ImageReport {
        let started = std::time::Instant::now();
        let mut report = self.finish_inner(item, p, run).await;
        report.duration_ms += started.elapsed().as_millis() as u64;
        self.progress.finished(&report);
        report
    }

    async fn finish_inner(&self, item: &Item, p: Planned, run: &Run) -> ImageReport {
        let mut report = p.report;
        if run.interrupted() && matches!(report.action, Action::Copied | Action::InSync) {
            if report.action == Action::Copied {
                report.action = Action::NotRun;
                report.message = Some("not copied: the run was interrupted".into());
            }
            return report;
        }
        if run.stopped() && matches!(report.action, Action::Copied | Action::InSync) {
            if report.action == Action::Copied {
                report.action = Action::NotRun;
                report.message = Some("not copied: a safety stop halted all writing".into());
            } else if item.signer.is_some() {
                report.message = Some("not signed: a safety stop halted all writing".into());
            }
            return report;
        }
        if report.action == Action::Copied {
            // `Copied` in a plan means "to copy".
            if self.dry_run {
                report.action = Action::WouldCopy;
            } else {
                let manifest = p.manifest.as_ref().expect("planned copy has a manifest");
                match self.execute(item, manifest, run).await {
                    Ok(bytes) => {
                        report.bytes = bytes;
                        info!(source = %item.spec.source, target = %item.target, digest = %manifest.digest, bytes, "copied");
                    }
                    Err(e) => {
                        warn!(source = %item.spec.source, target = %item.target, error = %e, "copy failed");
                        report.error = Some(e.kind);
                        report.action = run.failed(&e);
                        report.message = Some(e.message);
                    }
                }
            }
        }
        let mut upstream = Vec::new();
        if item.spec.carry_signatures
            && matches!(report.action, Action::Copied | Action::InSync)
            && !run.stopped()
        {
            if let Some(digest) = report.digest.clone() {
                match self.carry(item, &digest, run).await {
                    Ok((carried, layers)) => {
                        report.carried = carried;
                        upstream = layers;
                    }
                    Err(e) => {
                        warn!(source = %item.spec.source, error = %e, "carrying signatures failed");
                        report.error = Some(e.kind);
                        report.action = run.failed(&e);
                        report.message = Some(format!("carrying signatures along: {e}"));
                    }
                }
            }
        }
        if matches!(
            report.action,
            Action::Copied | Action::InSync | Action::WouldCopy
        ) && item.spec.sign
        {
            if let (Some(signer), Some(manifest)) = (&item.signer, &p.manifest) {
                if report.action == Action::WouldCopy {
                    report.signature = Some(crate::stage::SignOutcome::WouldSign);
                } else if run.stopped() {
                    report.message = Some("not signed: a safety stop halted all writing".into());
                } else {
                    let req = SignRequest {
                        target: item.target.clone(),
                        digest: manifest.digest.clone(),
                        manifest: manifest.clone(),
                        dry_run: self.dry_run,
                        upstream,
                    };
                    match signer.sign(&req, &item.sink).await {
                        Ok(outcome) => report.signature = Some(outcome),
                        Err(e) => {
                            warn!(source = %item.spec.source, target = %item.target, error = %e, "signing failed");
                            report.error = Some(e.kind);
                            report.action = run.failed(&e);
                            report.message = Some(e.message);
                        }
                    }
                }
            }
        }
        report
    }

    async fn plan(&self, item: &Item) -> Planned {
        let started = std::time::Instant::now();
        let mut planned = self.plan_inner(item).await;
        if self.interrupt.load(Ordering::SeqCst) && planned.report.action == Action::Copied {
            planned.report.action = Action::NotRun;
            planned.report.message = Some("not copied: the run was interrupted".into());
            planned.manifest = None;
        }
        planned.report.duration_ms = started.elapsed().as_millis() as u64;
        planned
    }

    async fn plan_inner(&self, item: &Item) -> Planned {
        let mut report = ImageReport {
            index: item.spec.index,
            source: item.spec.source.to_string(),
            target: item.target.to_string(),
            digest: None,
            target_digest: None,
            action: Action::Failed,
            signature: None,
            bytes: 0,
            duration_ms: 0,
            carried: Vec::new(),
            message: None,
            error: None,
        };
        let fail = |mut report: ImageReport, e: StageError, what: &str| {
            // Planning writes nothing; the stop is read off the report later.
            report.error = Some(e.kind);
            report.action = match e.kind {
                ErrorKind::Integrity => Action::Stopped,
                ErrorKind::Cancelled => Action::NotRun,
                _ => Action::Failed,
            };
            report.message = Some(format!("{what}: {e}"));
            Planned {
                report,
                manifest: None,
            }
        };
        // With a platform filter the target gets a manifest of our making: its
        // digest (deterministic for a given source) is what the guard compares.
        let mut filtered: Option<RawManifest> = None;
        if !item.spec.platforms.is_empty() {
            match self.filtered(item).await {
                Ok(m) => filtered = Some(m),
                Err(e) => return fail(report, e, "source"),
            }
        }
        // Warm path: the source digest (HEAD, or the pinned digest) and the
        // target's (HEAD) decide; the manifest is fetched only when needed.
        let source_digest = match (&filtered, item.spec.source.digest()) {
            (Some(m), _) => m.digest.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => match self
                .retry()
                .at(&registry_of(&item.spec.source), "source digest", || {
                    item.source.digest(&item.spec.source)
                })
                .await
            {
                Ok(d) => d,
                Err(e) => return fail(report, e, "source"),
            },
        };
        report.digest = Some(source_digest.clone());
        let current = match self
            .retry()
            .at(&registry_of(&item.target), "target digest", || {
                item.sink.manifest_digest(&item.target)
            })
            .await
        {
            Ok(d) => d,
            Err(e) => return fail(report, e, "target"),
        };
        debug!(source = %item.spec.source, digest = %source_digest, target = %item.target, current = ?current, "planned");
        let mut verdict = Verdict::Copy;
        for g in &self.guards {
            let v = match g
                .check(GuardInput {
                    spec: &item.spec,
                    source_digest: &source_digest,
                    target: &item.target,
                    target_digest: current.as_ref(),
                })
                .await
            {
                Ok(v) => v,
                Err(e) => return fail(report, e, "guard"),
            };
            verdict = verdict.max(v);
        }
        match verdict {
            Verdict::Copy => report.action = Action::Copied,
            Verdict::Skip { .. } => report.action = Action::InSync,
            Verdict::Stop { reason } => {
                report.action = Action::Stopped;
                report.target_digest = current.clone();
                report.message = Some(reason);
            }
        }
        let needed = report.action == Action::Copied
            || (report.action == Action::InSync && item.signer.is_some());
        if !needed {
            return Planned {
                report,
                manifest: None,
            };
        }
        if let Some(m) = filtered {
            return Planned {
                report,
                manifest: Some(m),
            };
        }
        let manifest = match self
            .retry()
            .at(&registry_of(&item.spec.source), "source manifest", || {
                item.source.resolve(&item.spec.source)
            })
            .await
        {
            Ok(m) => m,
            Err(e) => return fail(report, e, "source"),
        };
        // The content must hash to the digest the decision was made on.
        if let Err(e) = check_manifest(
            &manifest,
            Some(&source_digest),
            item.source.max_manifest_bytes(),
        ) {
            return fail(report, e, "source");
        }
        Planned {
            report,
            manifest: Some(manifest),
        }
    }

    /// The manifest a platform filter makes of the source: the source's own
    /// when there is nothing to filter, the one child asked for, or a new index.
    async fn filtered(&self, item: &Item) -> Result<RawManifest, StageError> {
        let source = self
            .retry()
            .at(&registry_of(&item.spec.source), "source manifest", || {
                item.source.resolve(&item.spec.source)
            })
            .await?;
        check_manifest(
            &source,
            item.spec.source.digest(),
            item.source.max_manifest_bytes(),
        )?;
        match crate::manifest::filter_platforms(&source, &item.spec.platforms)
            .map_err(|e| StageError::invalid(format!("{}: {e}", item.spec.source)))?
        {
            crate::manifest::Filtered::Unchanged => Ok(source),
            crate::manifest::Filtered::Index(m) => Ok(m),
            crate::manifest::Filtered::Single(child) => {
                let m = self
                    .retry()
                    .at(&registry_of(&item.spec.source), "child manifest", || {
                        item.source.fetch_manifest(&item.spec.source, &child)
                    })
                    .await?;
                check_manifest(&m, Some(&child.digest), item.source.max_manifest_bytes())?;
                Ok(m)
            }
        }
    }

    /// Copies the source's cosign artifacts for `digest` (`.sig`, `.att`,
    /// `.sbom`) and its referrers tag (`sha256-<hex>`, OCI 1.1's tag schema)
    /// that the target lacks, verbatim, before any signature of ours is added.
    /// A tag the target has is never overwritten. Returns the tags carried and
    /// the layers of the source's `.sig` (upstream signatures).
    async fn carry(
        &self,
        item: &Item,
        digest: &Digest,
        run: &Run,
    ) -> Result<(Vec<String>, Vec<Descriptor>), StageError> {
        let mut carried = Vec::new();
        let mut upstream = Vec::new();
        for suffix in [".sig", ".att", ".sbom", ""] {
            let tag = format!("{}-{}{suffix}", digest.algorithm().as_str(), digest.hex());
            let from = item.spec.source.with_tag(&tag);
            let m = match self
                .retry()
                .at(&registry_of(&from), "carried artifact", || {
                    item.source.resolve(&from)
                })
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            check_manifest(&m, None, item.source.max_manifest_bytes())?;
            if suffix == ".sig" {
                if let Ok(Manifest::Image { layers, .. }) = m.parse() {
                    upstream = layers;
                }
            }
            let to = item.target.with_tag(&tag);
            let present = self
                .retry()
                .at(&registry_of(&to), "carried artifact", || {
                    item.sink.manifest_digest(&to)
                })
                .await?;
            if present.is_some() {
                continue;
            }
            if self.dry_run {
                carried.push(format!("{tag} (would carry)"));
                continue;
            }
            let bytes = AtomicU64::new(0);
            let copy = ImageCopy {
                item,
                repo: &item.target,
                run,
                jobs: self.jobs,
                retry: self.retry(),
                bytes: &bytes,
                progress: self.progress.as_ref(),
            };
            copy.children(&m, 0, Walk::Ledger).await?;
            copy.put_manifest(&ManifestTarget::Tag(tag.clone()), &m, 0, "carried artifact")
                .await?;
            carried.push(tag);
        }
        Ok((carried, upstream))
    }

    /// Copies one image: blobs, child manifests, then the tag.
    async fn execute(
        &self,
        item: &Item,
        manifest: &RawManifest,
        run: &Run,
    ) -> Result<u64, StageError> {
        let tag = item
            .target
            .tag()
            .ok_or_else(|| StageError::invalid("target has no tag"))?
            .to_string();
        let bytes = AtomicU64::new(0);
        let repo = item.target.clone();
        let copy = ImageCopy {
            item,
            repo: &repo,
            run,
            jobs: self.jobs,
            retry: self.retry(),
            bytes: &bytes,
            progress: self.progress.as_ref(),
        };
        copy.children(manifest, 0, Walk::Ledger).await?;
        // Last check before the tag moves: the target must still be absent or equal.
        let now = self
            .retry()
            .at(&registry_of(&item.target), "target digest", || {
                item.sink.manifest_digest(&item.target)
            })
            .await?;
        if let Some(now) = now {
            if now != manifest.digest {
                return Err(StageError::integrity(format!(
                    "target {} changed during the run: it now holds {now}, the source is {}; not overwritten",
                    item.target, manifest.digest
                )));
            }
        }
        // PUT is idempotent: a retry after a lost answer writes the same bytes.
        copy.put_manifest(&ManifestTarget::Tag(tag), manifest, 0, "tag manifest")
            .await?;
        Ok(bytes.load(Ordering::SeqCst))
    }
}

/// State shared by all images of one run.
struct Run {
    /// Set by the first safety stop: no write starts after it.
    stop: AtomicBool,
    /// Set on SIGINT/SIGTERM: no write starts after it either.
    interrupt: Arc<AtomicBool>,
    ledger: Ledger,
}

impl Run {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn interrupted(&self) -> bool {
        self.interrupt.load(Ordering::SeqCst)
    }

    /// Refuses to start a write after a safety stop or an interruption.
    fn check(&self) -> Result<(), StageError> {
        if self.stopped() {
            Err(StageError::new(
                ErrorKind::Cancelled,
                "not written: a safety stop elsewhere in the run halted all writing",
            ))
        } else if self.interrupted() {
            Err(StageError::new(
                ErrorKind::Cancelled,
                "not written: the run was interrupted",
            ))
        } else {
            Ok(())
        }
    }

    /// The action for a failed image: a content or signature problem is a
    /// safety stop and halts all further writing; anything else fails this
    /// image only.
    fn failed(&self, e: &StageError) -> Action {
        match e.kind {
            ErrorKind::Integrity => {
                self.stop.store(true, Ordering::SeqCst);
                Action::Stopped
            }
            ErrorKind::Cancelled => Action::NotRun,
            _ => Action::Failed,
        }
    }
}

/// What this run has put where, per sink. A blob shared by several images
/// is transferred once, then found or mounted in the other repositories. A
/// manifest pushed by digest (the child of an index) is pushed once per
/// repository: other images needing it wait for that push's confirmed
/// result, so an index never goes out before its children are in.
#[derive(Default)]
struct Ledger {
    blobs: Mutex<HashMap<(usize, Digest), Arc<OnceCell<ImageRef>>>>,
    manifests: Mutex<HashMap<(usize, String, Digest), Arc<OnceCell<()>>>>,
}

fn sink_id(sink: &Arc<dyn Sink>) -> usize {
    Arc::as_ptr(sink) as *const () as usize
}

impl Ledger {
    fn cell(&self, sink: &Arc<dyn Sink>, digest: &Digest) -> Arc<OnceCell<ImageRef>> {
        self.blobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((sink_id(sink), digest.clone()))
            .or_default()
            .clone()
    }

    fn manifest(
        &self,
        sink: &Arc<dyn Sink>,
        repo: &ImageRef,
        digest: &Digest,
    ) -> Arc<OnceCell<()>> {
        let repo = repo.with_tag("_").to_string();
        self.manifests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((sink_id(sink), repo, digest.clone()))
            .or_default()
            .clone()
    }
}

/// How a copy walks what a manifest references: through the run's ledger
/// (the first walk), or past it, asking the target about everything (after
/// the registry refused a manifest as inconsistent).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    Ledger,
    Recheck,
}

/// One image's copy.
struct ImageCopy<'a> {
    item: &'a Item,
    repo: &'a ImageRef,
    run: &'a Run,
    jobs: usize,
    retry: Retry<'a>,
    bytes: &'a AtomicU64,
    progress: &'a dyn crate::report::Progress,
}

impl ImageCopy<'_> {
    fn source_registry(&self) -> String {
        registry_of(&self.item.spec.source)
    }

    fn target_registry(&self) -> String {
        registry_of(self.repo)
    }

    /// The blobs of an image manifest that are copied (not foreign layers).
    fn blobs(config: Descriptor, layers: Vec<Descriptor>) -> Vec<Descriptor> {
        std::iter::once(config)
            .chain(layers)
            .filter(|b| {
                let foreign = b.is_non_distributable();
                if foreign {
                    debug!(digest = %b.digest, "non-distributable layer not copied");
                }
                !foreign
            })
            .collect()
    }

    /// Copies everything `manifest` references (not the manifest itself).
    /// `depth` is how many indexes enclose it (0 for the tagged manifest);
    /// an index nested deeper than [`MAX_INDEX_DEPTH`] fails the image.
    fn children<'b>(
        &'b self,
        manifest: &'b RawManifest,
        depth: usize,
        walk: Walk,
    ) -> BoxFuture<'b, Result<(), StageError>> {
        async move {
            let parsed = manifest
                .parse()
                .map_err(|e| StageError::invalid(format!("{}: {e}", manifest.digest)))?;
            match parsed {
                Manifest::Index { manifests } => {
                    too_deep(manifest, depth)?;
                    for child in manifests {
                        if walk == Walk::Recheck {
                            self.child(&child, depth + 1, walk).await?;
                            continue;
                        }
                        // Pushed once per repository in the run; the others
                        // wait for the registry's confirmed answer.
                        let cell =
                            self.run
                                .ledger
                                .manifest(&self.item.sink, self.repo, &child.digest);
                        cell.get_or_try_init(|| self.child(&child, depth + 1, walk))
                            .await?;
                    }
                }
                Manifest::Image { config, layers } => {
                    // Every blob is attempted; the first error is reported.
                    let results: Vec<Result<(), StageError>> =
                        stream::iter(Self::blobs(config, layers))
                            .map(|b| async move {
                                match walk {
                                    Walk::Ledger => self.blob(&b).await,
                                    Walk::Recheck => self.transfer(&b).await,
                                }
                            })
                            .buffer_unordered(self.jobs)
                            .collect()
                            .await;
                    results.into_iter().collect::<Result<Vec<()>, _>>()?;
                }
            }
            Ok(())
        }
        .boxed()
    }

    /// One child manifest of an index, with what it references, unless the
    /// target has it.
    async fn child(&self, child: &Descriptor, depth: usize, walk: Walk) -> Result<(), StageError> {
        let child_ref = self.repo.with_digest(child.digest.clone());
        let present = self
            .retry
            .at(&self.target_registry(), "child digest", || {
                self.item.sink.manifest_digest(&child_ref)
            })
            .await?;
        if present.is_some() {
            debug!(digest = %child.digest, "child manifest present in target");
            return Ok(());
        }
        let m = self.fetch_child(child).await?;
        self.children(&m, depth, walk).await?;
        self.put_manifest(&ManifestTarget::Digest, &m, depth, "child manifest")
            .await
    }

    /// A child manifest from the source, verified against its descriptor.
    async fn fetch_child(&self, child: &Descriptor) -> Result<RawManifest, StageError> {
        let m = self
            .retry
            .at(&self.source_registry(), "child manifest", || {
                self.item
                    .source
                    .fetch_manifest(&self.item.spec.source, child)
            })
            .await?;
        check_manifest(
            &m,
            Some(&child.digest),
            self.item.source.max_manifest_bytes(),
        )?;
        Ok(m)
    }

    /// Puts a manifest whose references are in the target. A registry that
    /// refuses it as inconsistent (a blob or child it does not see, a digest
    /// it computed otherwise) is not a safety stop: what the manifest
    /// references is checked again, what is missing put again, and the put
    /// retried; if the refusal persists the image fails with its words.
    async fn put_manifest(
        &self,
        target: &ManifestTarget,
        manifest: &RawManifest,
        depth: usize,
        what: &str,
    ) -> Result<(), StageError> {
        let registry = self.target_registry();
        self.retry
            .then_write(
                &registry,
                what,
                |previous: Option<&StageError>| {
                    let recheck = previous.is_some_and(|e| e.kind == ErrorKind::Consistency);
                    async move {
                        if recheck {
                            warn!(digest = %manifest.digest, target = %self.repo, "the registry refused a manifest as inconsistent; checking what it references");
                            self.children(manifest, depth, Walk::Recheck).await?;
                        }
                        self.run.check()
                    }
                },
                // Checked again right before the write: a stop that came
                // while this waited at the registry's gate holds it back.
                |()| async move {
                    self.run.check()?;
                    self.item.sink.put_manifest(self.repo, target, manifest).await
                },
            )
            .await
    }

    /// One blob: transferred by the first image of the run that needs it;
    /// the others find it, mount it from where it went, or transfer it.
    async fn blob(&self, blob: &Descriptor) -> Result<(), StageError> {
        let cell = self.run.ledger.cell(&self.item.sink, &blob.digest);
        let mine = AtomicBool::new(false);
        let home = cell
            .get_or_try_init(|| async {
                mine.store(true, Ordering::SeqCst);
                self.transfer(blob).await?;
                Ok::<_, StageError>(self.repo.clone())
            })
            .await?;
        if mine.load(Ordering::SeqCst) || home == self.repo {
            return Ok(());
        }
        let registry = self.target_registry();
        if self
            .retry
            .at(&registry, "blob check", || {
                self.item.sink.has_blob(self.repo, blob)
            })
            .await?
        {
            return Ok(());
        }
        self.run.check()?;
        if self
            .retry
            .at(&registry, "blob mount", || {
                self.item.sink.mount_blob(home, self.repo, blob)
            })
            .await?
        {
            debug!(digest = %blob.digest, from = %home, to = %self.repo, "blob mounted");
            return Ok(());
        }
        // Just found absent: copy without asking the target again.
        self.copy(blob).await
    }

    /// Copies a blob unless the target has it.
    async fn transfer(&self, blob: &Descriptor) -> Result<(), StageError> {
        let present = self
            .retry
            .at(&self.target_registry(), "blob check", || {
                self.item.sink.has_blob(self.repo, blob)
            })
            .await?;
        if present {
            debug!(digest = %blob.digest, "blob present in target");
            return Ok(());
        }
        self.copy(blob).await
    }

    /// One verified stream from the source into the target. Each try opens
    /// an upload and the download (each retried on its own), then sends the
    /// bytes; a send that fails starts a new try (the stream is spent, so the
    /// source is read again). Nothing is committed by a failed try.
    async fn copy(&self, blob: &Descriptor) -> Result<(), StageError> {
        let (item, repo) = (self.item, self.repo);
        let (source, target) = (self.source_registry(), self.target_registry());
        let (source, target) = (source.as_str(), target.as_str());
        self.retry
            .then_write(
                target,
                "blob upload",
                |_| async move {
                    self.run.check()?;
                    let upload = self
                        .retry
                        .at(target, "blob upload start", || async {
                            self.run.check()?;
                            item.sink.begin_blob(repo, blob).await
                        })
                        .await?;
                    let stream = self
                        .retry
                        .at(source, "blob download", || {
                            item.source.fetch_blob(&item.spec.source, blob)
                        })
                        .await?;
                    Ok((upload, stream))
                },
                |(upload, stream)| async move {
                    self.run.check()?;
                    let verified =
                        VerifyingStream::new(stream, blob.digest.clone(), Some(blob.size));
                    item.sink
                        .put_blob_into(repo, blob, upload, Box::pin(verified))
                        .await
                },
            )
            .await?;
        self.bytes.fetch_add(blob.size, Ordering::SeqCst);
        self.progress
            .transferred(item.spec.index, &item.spec.source.to_string(), blob.size);
        Ok(())
    }
}

/// Whether a transform's output is a target a sink can write: a reference
/// that reads back as itself, with a tag and no digest.
fn valid_target(target: &ImageRef, transports: &[String]) -> Result<(), String> {
    let text = target.to_string();
    let t: Vec<&str> = transports.iter().map(String::as_str).collect();
    match ImageRef::parse_with_transports(&text, &t) {
        Err(e) => Err(format!("the transforms made an invalid target: {e}")),
        Ok(back) if !back.same_image(target) => Err(format!(
            "the transforms made a target that does not read back as itself: `{text}`"
        )),
        Ok(_) if target.tag().is_none() => Err(format!(
            "the transforms made the target `{text}` without a tag; targets are written by tag"
        )),
        Ok(_) if target.digest().is_some() => Err(format!(
            "the transforms made the target `{text}` with a digest; targets are written by tag"
        )),
        Ok(_) => Ok(()),
    }
}

/// Refuses an index enclosed by [`MAX_INDEX_DEPTH`] others or more: real
/// images nest one level, sometimes two, and a registry serving thousands of
/// levels would keep the run walking.
fn too_deep(index: &RawManifest, depth: usize) -> Result<(), StageError> {
    if depth >= MAX_INDEX_DEPTH {
        return Err(StageError::invalid(format!(
            "index {} is nested {} levels deep, past the limit of {MAX_INDEX_DEPTH}",
            index.digest,
            depth + 1
        )));
    }
    Ok(())
}

/// Verifies a manifest's bytes against its digest (and the digest asked for),
/// and that it is no larger than `limit` (the source's).
fn check_manifest(
    m: &RawManifest,
    expected: Option<&Digest>,
    limit: usize,
) -> Result<(), StageError> {
    if m.bytes.len() > limit {
        return Err(StageError::invalid(crate::manifest::too_large(
            &m.digest.to_string(),
            m.bytes.len() as u64,
            limit,
        )));
    }
    if let Err(actual) = m.digest.verify(&m.bytes) {
        return Err(StageError::integrity(format!(
            "manifest content does not match its digest: expected {}, got {actual}",
            m.digest
        )));
    }
    if let Some(e) = expected {
        if &m.digest != e {
            return Err(StageError::integrity(format!(
                "manifest digest {} differs from the digest asked for {e}",
                m.digest
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
