//! Phase 1, prepare (no I/O): stages built (each once, see `stages.rs`),
//! targets computed and checked.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tracing::warn;

use super::plan::Planned;
use super::stages::Stages;
use super::{Concurrency, Orchestrator, PrepareError, Settings};
use crate::catalogue::{BuildError, ContextInput, StageRegistry};
use crate::context::RunContext;
use crate::definition::{Definition, ImageSpec};
use crate::flow::FlowControl;
use crate::reference::ImageRef;
use crate::report::{ImageReport, Progress, Report};
use crate::retry::RetryPolicy;
use crate::stage::{Guard, ImageEntry, Signer, Sink, Source, Transform, TransformInput};

/// One image of the run, with its stages.
pub(super) struct Item {
    pub(super) spec: ImageSpec,
    /// What guards see of the image.
    pub(super) entry: ImageEntry,
    /// The pipeline's guards, then the image's own (`images[].pipeline.guards`).
    pub(super) guards: Vec<Arc<dyn Guard>>,
    pub(super) target: ImageRef,
    pub(super) source: Arc<dyn Source>,
    pub(super) sink: Arc<dyn Sink>,
    /// Set for images that are signed.
    pub(super) signer: Option<Arc<dyn Signer>>,
}

/// A definition ready to run: entries expanded, targets computed and
/// checked, stages built. [`Prepared::plan`] reads the registries.
pub struct Prepared {
    items: Vec<Item>,
    /// Entries that failed before planning (a tag rule's expansion).
    failed: Vec<ImageReport>,
    settings: Settings,
}

impl Prepared {
    /// The targets, in definition order.
    pub fn targets(&self) -> Vec<(&ImageSpec, &ImageRef)> {
        self.items.iter().map(|i| (&i.spec, &i.target)).collect()
    }

    /// Works on at most `jobs` images at once, and on at most `jobs` blobs of
    /// an image at once (at least 1).
    pub fn with_jobs(mut self, jobs: usize) -> Prepared {
        self.settings.jobs = jobs.max(1);
        self.settings.concurrency = Concurrency::Fixed(self.settings.jobs);
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

    /// Reports progress to `display` as the run goes.
    pub fn with_progress(mut self, display: Arc<dyn Progress>) -> Prepared {
        self.settings.progress = display;
        self
    }

    /// A flag that, once set (on SIGINT/SIGTERM), stops new work: no image
    /// or write starts after it; writes in flight complete.
    pub fn with_interrupt(mut self, flag: Arc<AtomicBool>) -> Prepared {
        self.settings.interrupt = flag;
        self
    }

    /// Adds the reports of entries that failed before planning (their tag
    /// rule's expansion); the run's report lists them in definition order.
    pub(super) fn with_failed(mut self, failed: Vec<ImageReport>) -> Prepared {
        self.failed = failed;
        self
    }

    /// The per-registry flow control the run goes through (the context's).
    pub fn flow(&self) -> &Arc<FlowControl> {
        &self.settings.flow
    }

    /// Retries transient failures of registry operations with `policy`.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Prepared {
        self.settings.retry = policy;
        self
    }

    /// Phase 2: looks every image up and lets the guards decide (reads only).
    pub async fn plan(self) -> Planned {
        Planned::of(self.items, self.failed, self.settings).await
    }

    /// Plans and (unless dry run) executes. Never panics on stage errors: every
    /// outcome is in the report, in definition order.
    pub async fn run(self) -> Report {
        self.plan().await.execute().await.report()
    }
}

impl Orchestrator {
    pub fn new(registry: StageRegistry, context: RunContext) -> Orchestrator {
        Orchestrator { registry, context }
    }

    /// Computes targets and builds stages. Touches nothing.
    pub fn prepare(&self, def: &Definition, dry_run: bool) -> Result<Prepared, PrepareError> {
        self.prepare_shard(def, dry_run, None)
    }

    /// [`Orchestrator::prepare`] for one shard: only the images whose target
    /// the shard owns are kept (targets and duplicates are still checked over
    /// the whole definition, so every shard refuses the same bad input).
    /// Entries with a tag rule are left out: [`Orchestrator::expansion`]
    /// prepares a definition with them.
    pub fn prepare_shard(
        &self,
        def: &Definition,
        dry_run: bool,
        shard: Option<crate::shard::Shard>,
    ) -> Result<Prepared, PrepareError> {
        self.prepare_with(def, dry_run, shard, &mut Stages::default())
    }

    /// Prepares `def` with the stages in `stages`, building (and keeping
    /// there) those missing.
    pub(super) fn prepare_with(
        &self,
        def: &Definition,
        dry_run: bool,
        shard: Option<crate::shard::Shard>,
        stages: &mut Stages,
    ) -> Result<Prepared, PrepareError> {
        let pipeline = &def.pipeline;
        let transforms = stages.transforms(self, def)?;
        // The pipeline's guards, then each image's own: over the whole
        // definition, whatever the shard.
        let global = pipeline
            .guards
            .iter()
            .map(|g| stages.guard(self, def, g))
            .collect::<Result<Vec<_>, _>>()?;
        let mut guards: HashMap<usize, Vec<Arc<dyn Guard>>> = HashMap::new();
        for spec in images(def) {
            if let std::collections::hash_map::Entry::Vacant(slot) = guards.entry(spec.index) {
                let mut all = global.clone();
                for g in &spec.guards {
                    all.push(stages.guard(self, def, g)?);
                }
                slot.insert(all);
            }
        }
        let targets = self.targets(def, &transforms)?;
        let mut items = self.items(def, targets, shard, &guards, stages)?;
        self.signers(def, &mut items, stages)?;
        Ok(Prepared {
            items,
            failed: Vec::new(),
            settings: Settings::new(dry_run, self.context.registries.flow.clone()),
        })
    }

    /// Every image's target, by the transforms in turn, checked (a valid
    /// reference with a tag), with duplicates refused: two different sources
    /// for one target. Over the whole definition, whatever the shard.
    fn targets(
        &self,
        def: &Definition,
        transforms: &[Arc<dyn Transform>],
    ) -> Result<Vec<ImageRef>, PrepareError> {
        let path = def.path.display().to_string();
        let refused = |spec: &ImageSpec, message: String| PrepareError::Target {
            path: path.clone(),
            line: spec.line,
            index: spec.index,
            source_ref: spec.source.to_string(),
            message,
        };
        let mut targets: Vec<ImageRef> = Vec::with_capacity(def.images.len());
        // Target → the first image with it.
        let mut seen: HashMap<String, &ImageSpec> = HashMap::new();
        for spec in images(def) {
            let mut target = None;
            let entry = spec.entry();
            for t in transforms {
                let input = TransformInput::new(&entry, target.clone());
                target = Some(t.apply(input).map_err(|e| refused(spec, e.message))?);
            }
            let target = target.ok_or_else(|| {
                refused(
                    spec,
                    "the pipeline has no transform to compute the target".into(),
                )
            })?;
            // Whatever transform computed it, the target must be a reference
            // the sinks can write: checked here, before anything is touched.
            valid_target(&target, &self.context.transports).map_err(|m| refused(spec, m))?;
            let key = target.to_string();
            if let Some(&f) = seen.get(&key) {
                if !f.source.same_image(&spec.source) {
                    return Err(PrepareError::DuplicateTarget {
                        path: path.clone(),
                        line: spec.line,
                        first: f.index,
                        first_source: f.source.to_string(),
                        second: spec.index,
                        second_source: spec.source.to_string(),
                        target: key,
                    });
                }
                warn!(image = spec.index, source = %spec.source, "image listed twice; it is synced once");
            } else {
                seen.insert(key, spec);
            }
            targets.push(target);
        }
        Ok(targets)
    }

    /// The images the shard owns, each listed once, with their source and
    /// sink: one per transport, or per stage entry an image names.
    fn items(
        &self,
        def: &Definition,
        targets: Vec<ImageRef>,
        shard: Option<crate::shard::Shard>,
        guards: &HashMap<usize, Vec<Arc<dyn Guard>>>,
        stages: &mut Stages,
    ) -> Result<Vec<Item>, PrepareError> {
        let pipeline = &def.pipeline;
        let mut items: Vec<Item> = Vec::with_capacity(def.images.len());
        let mut done: HashMap<String, usize> = HashMap::new();
        for (spec, target) in images(def).zip(targets) {
            if shard.is_some_and(|s| !s.owns(&target)) {
                continue;
            }
            if let Some(&kept) = done.get(&target.to_string()) {
                // Listed twice: synced once, signed if any listing asks for it.
                items[kept].spec.sign |= spec.sign;
                continue;
            }
            let source = stages.source(self, def, spec.source.transport())?;
            let chosen = spec.sink.as_ref().or(pipeline.sink.as_ref());
            let sink = stages.sink(self, def, chosen, target.transport())?;
            done.insert(target.to_string(), items.len());
            items.push(Item {
                spec: spec.clone(),
                entry: spec.entry(),
                guards: guards[&spec.index].clone(),
                target,
                source,
                sink,
                signer: None,
            });
        }
        Ok(items)
    }

    /// Signers, for the images that are signed: the image's own or the
    /// pipeline's. A signer that needs a key given on the command line says
    /// so when built (`BuildError::MissingInput`); others may carry their key
    /// in their config.
    fn signers(
        &self,
        def: &Definition,
        items: &mut [Item],
        stages: &mut Stages,
    ) -> Result<(), PrepareError> {
        let path = def.path.display().to_string();
        let pipeline = &def.pipeline;
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
        for item in items.iter_mut().filter(|i| i.spec.sign) {
            let chosen = item.spec.signer.as_ref().unwrap_or(&pipeline.signer);
            let signer = match stages.signer(self, def, chosen) {
                Ok(s) => s,
                Err(
                    PrepareError::Build(BuildError::MissingInput {
                        input: ContextInput::SigningKey,
                        ..
                    })
                    | PrepareError::Stage {
                        source:
                            BuildError::MissingInput {
                                input: ContextInput::SigningKey,
                                ..
                            },
                        ..
                    },
                ) => return Err(without_key(&chosen.plugin)),
                Err(e @ PrepareError::Stage { .. }) => return Err(e),
                Err(e) => {
                    return Err(PrepareError::SignerUnavailable {
                        path: path.clone(),
                        count,
                        message: e.to_string(),
                    })
                }
            };
            item.signer = Some(signer);
        }
        Ok(())
    }
}

/// The images of `def` that name one image: entries naming a repository
/// with a tag rule are expanded first ([`Orchestrator::expansion`]).
fn images(def: &Definition) -> impl Iterator<Item = &ImageSpec> {
    def.images.iter().filter(|i| i.selector.is_none())
}

/// Whether a transform's output is a target a sink can write: a reference
/// that reads back as itself, with a tag and no digest.
pub(super) fn valid_target(target: &ImageRef, transports: &[String]) -> Result<(), String> {
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
