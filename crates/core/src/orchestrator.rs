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

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tracing::{debug, info, warn};

use crate::context::StageContext;
use crate::definition::{Definition, ImageSpec};
use crate::digest::{Digest, VerifyingStream};
use crate::manifest::{Manifest, RawManifest};
use crate::reference::ImageRef;
use crate::registry::{BuildError, StageRegistry};
use crate::report::{Action, ImageReport, Report};
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
    #[error("{path}: signing is enabled for {count} image(s) (first: images[{first}] `{first_source}`) but no signing key was given: set --kms-key (or --key-ref, SYNCER_KMS_KEY), or set `sign: false`")]
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
}

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

        // Signers, for the images that are signed: the image's own or the pipeline's.
        let signing: Vec<&Item> = items.iter().filter(|i| i.spec.sign).collect();
        // The built-in signer takes its key from `--kms-key`; other signers
        // (plugins) may carry their key in their own config.
        let keyless: Vec<&&Item> = signing
            .iter()
            .filter(|i| i.spec.signer.as_ref().unwrap_or(&pipeline.signer).plugin == "cosign")
            .collect();
        if let (None, Some(first)) = (&self.context.key_ref, keyless.first()) {
            return Err(PrepareError::SigningWithoutKey {
                path,
                count: keyless.len(),
                first: first.spec.index,
                first_source: first.spec.source.to_string(),
            });
        }
        let count = signing.len();
        let mut signers: HashMap<String, Arc<dyn Signer>> = HashMap::new();
        for item in items.iter_mut().filter(|i| i.spec.sign) {
            let chosen = item.spec.signer.as_ref().unwrap_or(&pipeline.signer);
            let key = format!("{} {}", chosen.plugin, chosen.config);
            if !signers.contains_key(&key) {
                match self.build_at(def, StageKind::Signer, chosen) {
                    Ok(Stage::Signer(s)) => signers.insert(key.clone(), s),
                    Ok(_) => unreachable!("registry checks the kind"),
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

    /// Plans and (unless dry run) executes. Never panics on stage errors: every
    /// outcome is in the report.
    pub async fn run(self) -> Report {
        let mut planned = Vec::with_capacity(self.items.len());
        for item in &self.items {
            planned.push(self.plan(item).await);
        }
        let mut stop = planned.iter().any(|p| p.report.action == Action::Stopped);
        if stop {
            warn!("safety stop during planning: nothing is written in this run");
        }
        let mut images = Vec::with_capacity(planned.len());
        for (item, p) in self.items.iter().zip(planned) {
            let mut report = p.report;
            if stop && matches!(report.action, Action::Copied | Action::InSync) {
                if report.action == Action::Copied {
                    report.action = Action::NotRun;
                    report.message = Some("not copied: a safety stop halted all writing".into());
                } else if item.signer.is_some() {
                    report.message = Some("not signed: a safety stop halted all writing".into());
                }
                images.push(report);
                continue;
            }
            if report.action == Action::Copied {
                // `Copied` in a plan means "to copy".
                if self.dry_run {
                    report.action = Action::WouldCopy;
                } else {
                    let manifest = p.manifest.as_ref().expect("planned copy has a manifest");
                    match self.execute(item, manifest).await {
                        Ok(bytes) => {
                            report.bytes = bytes;
                            info!(source = %item.spec.source, target = %item.target, digest = %manifest.digest, bytes, "copied");
                        }
                        Err(e) => {
                            warn!(source = %item.spec.source, target = %item.target, error = %e, "copy failed");
                            report.action = failed(&e, &mut stop);
                            report.message = Some(e.message);
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
                    } else {
                        let req = SignRequest {
                            target: item.target.clone(),
                            digest: manifest.digest.clone(),
                            manifest: manifest.clone(),
                            dry_run: self.dry_run,
                        };
                        match signer.sign(&req, item.sink.as_ref()).await {
                            Ok(outcome) => report.signature = Some(outcome),
                            Err(e) => {
                                warn!(source = %item.spec.source, target = %item.target, error = %e, "signing failed");
                                report.action = failed(&e, &mut stop);
                                report.message = Some(e.message);
                            }
                        }
                    }
                }
            }
            images.push(report);
        }
        Report {
            dry_run: self.dry_run,
            images,
        }
    }

    async fn plan(&self, item: &Item) -> Planned {
        let mut report = ImageReport {
            index: item.spec.index,
            source: item.spec.source.to_string(),
            target: item.target.to_string(),
            digest: None,
            target_digest: None,
            action: Action::Failed,
            signature: None,
            bytes: 0,
            message: None,
        };
        let fail = |mut report: ImageReport, e: StageError, what: &str| {
            // Planning writes nothing; the stop is read off the report later.
            report.action = failed(&e, &mut false);
            report.message = Some(format!("{what}: {e}"));
            Planned {
                report,
                manifest: None,
            }
        };
        // Warm path: the source digest (HEAD, or the pinned digest) and the
        // target's (HEAD) decide; the manifest is fetched only when needed.
        let source_digest = match item.spec.source.digest() {
            Some(d) => d.clone(),
            None => match item.source.digest(&item.spec.source).await {
                Ok(d) => d,
                Err(e) => return fail(report, e, "source"),
            },
        };
        report.digest = Some(source_digest.clone());
        let current = match item.sink.manifest_digest(&item.target).await {
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
        let manifest = match item.source.resolve(&item.spec.source).await {
            Ok(m) => m,
            Err(e) => return fail(report, e, "source"),
        };
        // The content must hash to the digest the decision was made on.
        if let Err(e) = check_manifest(&manifest, Some(&source_digest)) {
            return fail(report, e, "source");
        }
        Planned {
            report,
            manifest: Some(manifest),
        }
    }

    /// Copies one image: blobs, child manifests, then the tag.
    async fn execute(&self, item: &Item, manifest: &RawManifest) -> Result<u64, StageError> {
        let tag = item
            .target
            .tag()
            .ok_or_else(|| StageError::invalid("target has no tag"))?
            .to_string();
        let mut bytes = 0;
        let repo = item.target.clone();
        copy_children(item, &repo, manifest, &mut bytes).await?;
        // Last check before the tag moves: the target must still be absent or equal.
        if let Some(now) = item.sink.manifest_digest(&item.target).await? {
            if now != manifest.digest {
                return Err(StageError::integrity(format!(
                    "target {} changed during the run: it now holds {now}, the source is {}; not overwritten",
                    item.target, manifest.digest
                )));
            }
        }
        item.sink
            .put_manifest(&repo, &ManifestTarget::Tag(tag), manifest)
            .await?;
        Ok(bytes)
    }
}

/// The action for a failed image: a content or signature problem is a safety
/// stop and halts all further writing; anything else fails this image only.
fn failed(e: &StageError, stop: &mut bool) -> Action {
    if e.kind == ErrorKind::Integrity {
        *stop = true;
        Action::Stopped
    } else {
        Action::Failed
    }
}

/// Verifies a manifest's bytes against its digest (and the digest asked for).
fn check_manifest(m: &RawManifest, expected: Option<&Digest>) -> Result<(), StageError> {
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

/// Copies everything `manifest` references (not the manifest itself).
fn copy_children<'a>(
    item: &'a Item,
    repo: &'a ImageRef,
    manifest: &'a RawManifest,
    bytes: &'a mut u64,
) -> BoxFuture<'a, Result<(), StageError>> {
    async move {
        let parsed = manifest
            .parse()
            .map_err(|e| StageError::invalid(format!("{}: {e}", manifest.digest)))?;
        match parsed {
            Manifest::Index { manifests } => {
                for child in manifests {
                    let child_ref = repo.with_digest(child.digest.clone());
                    if item.sink.manifest_digest(&child_ref).await?.is_some() {
                        debug!(digest = %child.digest, "child manifest present in target");
                        continue;
                    }
                    let m = item
                        .source
                        .fetch_manifest(&item.spec.source, &child)
                        .await?;
                    check_manifest(&m, Some(&child.digest))?;
                    copy_children(item, repo, &m, bytes).await?;
                    item.sink
                        .put_manifest(repo, &ManifestTarget::Digest, &m)
                        .await?;
                }
            }
            Manifest::Image { config, layers } => {
                for blob in std::iter::once(&config).chain(layers.iter()) {
                    if blob.is_non_distributable() {
                        debug!(digest = %blob.digest, "non-distributable layer not copied");
                        continue;
                    }
                    if item.sink.has_blob(repo, blob).await? {
                        debug!(digest = %blob.digest, "blob present in target");
                        continue;
                    }
                    let stream = item.source.fetch_blob(&item.spec.source, blob).await?;
                    let verified =
                        VerifyingStream::new(stream, blob.digest.clone(), Some(blob.size));
                    item.sink.put_blob(repo, blob, Box::pin(verified)).await?;
                    *bytes += blob.size;
                }
            }
        }
        Ok(())
    }
    .boxed()
}

#[cfg(test)]
mod tests;
