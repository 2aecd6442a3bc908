//! Phase 3, execute: each planned image copied (blobs, children, the tag
//! last), its signatures carried (`carry.rs`), then signed; the run's shared
//! state and ledger; the outcomes, made into the report.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{stream, StreamExt};
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use super::copy::{ImageCopy, Walk};
use super::plan::{Decision, ImagePlan, Planned};
use super::prepare::Item;
use super::retried::RetriedSink;
use super::{registry_of, Settings};
use crate::digest::Digest;
use crate::flow::FlowControl;
use crate::manifest::{Descriptor, RawManifest};
use crate::reference::ImageRef;
use crate::report::{Action, ImageReport, Report};
use crate::stage::{ErrorKind, ManifestTarget, RepositoryUse, SignRequest, Sink, StageError};

/// A run executed: every image's outcome, in definition order.
/// [`Executed::report`] makes the run's report.
pub struct Executed {
    images: Vec<ImageReport>,
    dry_run: bool,
    interrupted: bool,
    flow: Arc<FlowControl>,
}

impl Executed {
    /// Executes `planned`: nothing is written when planning found a safety
    /// stop; otherwise as many images at once as the run's concurrency
    /// allows, each within its registries' limits.
    pub(super) async fn of(planned: Planned) -> Executed {
        let stop = planned.stopped();
        let Planned {
            images,
            failed,
            settings,
        } = planned;
        if stop {
            warn!("safety stop during planning: nothing is written in this run");
        }
        let (items, plans): (Vec<Item>, Vec<ImagePlan>) = images.into_iter().unzip();
        let run = Run {
            settings: &settings,
            stop: AtomicBool::new(stop),
            ledger: Ledger::default(),
            attached_tags: items
                .iter()
                .filter(|i| i.spec.sign || i.spec.carry_signatures)
                .map(|i| repository_key(&i.target))
                .collect(),
        };
        let mut reports: Vec<ImageReport> = stream::iter(items.iter().zip(plans))
            .map(|(item, p)| run.finish(item, p))
            .buffered(settings.concurrency.images().max(1))
            .collect()
            .await;
        if !failed.is_empty() {
            reports.extend(failed);
            // Stable: expanded images keep their selection order.
            reports.sort_by_key(|i| i.index);
        }
        let interrupted = run.interrupted();
        Executed {
            images: reports,
            dry_run: settings.dry_run,
            interrupted,
            flow: settings.flow.clone(),
        }
    }

    /// The run's report, with each registry's figures.
    pub fn report(self) -> Report {
        let registries = self.flow.figures();
        for (registry, f) in &registries {
            debug!(%registry, requests = f.requests, retries = f.retries, pushbacks = f.pushbacks, throttled_seconds = f.throttled_seconds, lowest_limit = f.lowest_limit, "registry figures");
        }
        Report {
            dry_run: self.dry_run,
            interrupted: self.interrupted,
            images: self.images,
            registries,
        }
    }
}

/// One execution: the run's settings and the state shared by all its images.
pub(super) struct Run<'a> {
    pub(super) settings: &'a Settings,
    /// Set by the first safety stop: no write starts after it.
    stop: AtomicBool,
    pub(super) ledger: Ledger,
    /// The target repositories ([`repository_key`]) some image of the run
    /// may write attached tags into (`sign` or `carrySignatures`).
    attached_tags: HashSet<String>,
}

impl Run<'_> {
    /// Executes one planned image: copy (unless in sync), then sign.
    async fn finish(&self, item: &Item, p: ImagePlan) -> ImageReport {
        let started = std::time::Instant::now();
        let mut report = self.finish_inner(item, p).await;
        report.duration_ms += started.elapsed().as_millis() as u64;
        self.settings.progress.finished(&report);
        report
    }

    async fn finish_inner(&self, item: &Item, p: ImagePlan) -> ImageReport {
        let mut report = p.report;
        if halted(item, &mut report, self) {
            return report;
        }
        self.copy_step(item, &p.decision, &mut report).await;
        let upstream = self.carry_step(item, &mut report).await;
        self.sign_step(item, &p.decision, upstream, &mut report)
            .await;
        report
    }

    /// Copies the image when planning decided so (in a dry run: says it would).
    async fn copy_step(&self, item: &Item, decision: &Decision, report: &mut ImageReport) {
        let Decision::Copy(manifest) = decision else {
            return;
        };
        if let Err(e) = self.prepare_repository(item, report).await {
            warn!(source = %item.spec.source, target = %item.target, error = %e, "preparing the target repository failed");
            self.record(report, &e, e.message.clone());
            return;
        }
        if self.settings.dry_run {
            report.action = Action::WouldCopy;
            return;
        }
        match self.copy(item, manifest).await {
            Ok(bytes) => {
                report.bytes = bytes;
                info!(source = %item.spec.source, target = %item.target, digest = %manifest.digest, bytes, "copied");
            }
            Err(e) => {
                warn!(source = %item.spec.source, target = %item.target, error = %e, "copy failed");
                self.record(report, &e, e.message.clone());
            }
        }
    }

    /// Has the sink make the image's target repository ready
    /// ([`Sink::prepare_repository`]), once per repository and sink in the
    /// run: the first image going there asks (retried), the others wait
    /// for its answer; a failure is this image's, and the next image asks
    /// again. The sink's note goes into the report of the image that asked.
    async fn prepare_repository(
        &self,
        item: &Item,
        report: &mut ImageReport,
    ) -> Result<(), StageError> {
        let cell = self.ledger.repository(&item.sink, &item.target);
        let how = RepositoryUse::new()
            .with_dry_run(self.settings.dry_run)
            .with_attached_tags(self.attached_tags.contains(&repository_key(&item.target)));
        let mut note = None;
        cell.get_or_try_init(|| async {
            if !self.settings.dry_run {
                self.check()?;
            }
            note = self
                .settings
                .retry()
                .at(&registry_of(&item.target), "target repository", || {
                    item.sink.prepare_repository(&item.target, &how)
                })
                .await?;
            Ok::<_, StageError>(())
        })
        .await?;
        if let Some(note) = note {
            info!(target = %item.target, note = %note, "target repository prepared");
            report.notes.push(note);
        }
        Ok(())
    }

    /// Carries the source's signatures along (`carrySignatures`); returns the
    /// layers of the source's `.sig` (upstream signatures) for the signer.
    async fn carry_step(&self, item: &Item, report: &mut ImageReport) -> Vec<Descriptor> {
        if !item.spec.carry_signatures
            || !matches!(report.action, Action::Copied | Action::InSync)
            || self.stopped()
        {
            return Vec::new();
        }
        let Some(digest) = report.digest.clone() else {
            return Vec::new();
        };
        match self.carry(item, &digest).await {
            Ok((carried, layers)) => {
                report.carried = carried;
                layers
            }
            Err(e) => {
                warn!(source = %item.spec.source, error = %e, "carrying signatures failed");
                self.record(report, &e, format!("carrying signatures along: {e}"));
                Vec::new()
            }
        }
    }

    /// Signs an image with `sign: true` that is copied or in sync (in a dry
    /// run: says it would, or lets the signer verify).
    async fn sign_step(
        &self,
        item: &Item,
        decision: &Decision,
        upstream: Vec<Descriptor>,
        report: &mut ImageReport,
    ) {
        let wanted = matches!(
            report.action,
            Action::Copied | Action::InSync | Action::WouldCopy
        ) && item.spec.sign;
        let (Some(signer), Some(manifest), true) = (&item.signer, decision.manifest(), wanted)
        else {
            return;
        };
        if report.action == Action::WouldCopy {
            report.signature = Some(crate::stage::SignOutcome::WouldSign);
            return;
        }
        if self.stopped() {
            report.message = Some("not signed: a safety stop halted all writing".into());
            return;
        }
        let req = SignRequest {
            target: item.target.clone(),
            digest: manifest.digest.clone(),
            manifest: manifest.clone(),
            dry_run: self.settings.dry_run,
            upstream,
        };
        let sink: Arc<dyn Sink> = Arc::new(RetriedSink {
            inner: item.sink.clone(),
            policy: self.settings.retry,
            halt: self.settings.interrupt.clone(),
            flow: self.settings.flow.clone(),
        });
        match signer.sign(&req, &sink).await {
            Ok(outcome) => report.signature = Some(outcome),
            Err(e) => {
                warn!(source = %item.spec.source, target = %item.target, error = %e, "signing failed");
                self.record(report, &e, e.message.clone());
            }
        }
    }

    /// Copies one image: blobs, child manifests, then the tag.
    async fn copy(&self, item: &Item, manifest: &RawManifest) -> Result<u64, StageError> {
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
            run: self,
            jobs: self.settings.jobs,
            retry: self.settings.retry(),
            bytes: &bytes,
            progress: self.settings.progress.as_ref(),
        };
        copy.children(manifest, 0, Walk::Ledger).await?;
        // Last check before the tag moves: the target must still be absent or equal.
        let now = self
            .settings
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

/// Whether the run stopped or was interrupted before this planned image was
/// executed: then it is reported as such and nothing more is done for it.
fn halted(item: &Item, report: &mut ImageReport, run: &Run<'_>) -> bool {
    if !matches!(report.action, Action::Copied | Action::InSync) {
        return false;
    }
    if run.interrupted() {
        if report.action == Action::Copied {
            report.action = Action::NotRun;
            report.message = Some("not copied: the run was interrupted".into());
        }
        return true;
    }
    if run.stopped() {
        if report.action == Action::Copied {
            report.action = Action::NotRun;
            report.message = Some("not copied: a safety stop halted all writing".into());
        } else if item.signer.is_some() {
            report.message = Some("not signed: a safety stop halted all writing".into());
        }
        return true;
    }
    false
}

impl Run<'_> {
    pub(super) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub(super) fn interrupted(&self) -> bool {
        self.settings.interrupt.load(Ordering::SeqCst)
    }

    /// Refuses to start a write after a safety stop or an interruption.
    pub(super) fn check(&self) -> Result<(), StageError> {
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

    /// Records a failure of the image in its report: its kind, the action
    /// ([`Run::failed`]) and `message`.
    pub(super) fn record(&self, report: &mut ImageReport, e: &StageError, message: String) {
        report.error = Some(e.kind);
        report.refused_by = e.refused_by.clone();
        report.action = self.failed(e);
        report.message = Some(message);
    }

    /// The action for a failed image: a content or signature problem is a
    /// safety stop and halts all further writing; anything else fails this
    /// image only.
    pub(super) fn failed(&self, e: &StageError) -> Action {
        match e.kind {
            ErrorKind::Integrity => {
                // Said once, when the flag is set: from this line on no
                // write starts (the acknowledgement tests wait for).
                if !self.stop.swap(true, Ordering::SeqCst) {
                    warn!("safety stop: no new write starts; writes in flight finish");
                }
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
/// A target repository prepared by its sink ([`Sink::prepare_repository`])
/// is in it once.
#[derive(Default)]
pub(super) struct Ledger {
    pub(super) blobs: Mutex<HashMap<BlobKey, Arc<OnceCell<ImageRef>>>>,
    pub(super) manifests: Mutex<HashMap<ManifestKey, Arc<OnceCell<()>>>>,
    pub(super) repositories: Mutex<HashMap<RepositoryKey, Arc<OnceCell<()>>>>,
}

/// A blob in the ledger: (sink, digest).
pub(super) type BlobKey = (usize, Digest);
/// A manifest in the ledger: (sink, repository, digest).
pub(super) type ManifestKey = (usize, String, Digest);
/// A prepared repository in the ledger: (sink, repository).
pub(super) type RepositoryKey = (usize, String);

/// The repository `r` is in, as a key: registry and repository, whatever
/// its tag or digest.
fn repository_key(r: &ImageRef) -> String {
    r.with_tag("_").to_string()
}

fn sink_id(sink: &Arc<dyn Sink>) -> usize {
    Arc::as_ptr(sink) as *const () as usize
}

impl Ledger {
    pub(super) fn cell(&self, sink: &Arc<dyn Sink>, digest: &Digest) -> Arc<OnceCell<ImageRef>> {
        self.blobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((sink_id(sink), digest.clone()))
            .or_default()
            .clone()
    }

    pub(super) fn manifest(
        &self,
        sink: &Arc<dyn Sink>,
        repo: &ImageRef,
        digest: &Digest,
    ) -> Arc<OnceCell<()>> {
        let repo = repository_key(repo);
        self.manifests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((sink_id(sink), repo, digest.clone()))
            .or_default()
            .clone()
    }

    pub(super) fn repository(&self, sink: &Arc<dyn Sink>, repo: &ImageRef) -> Arc<OnceCell<()>> {
        self.repositories
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((sink_id(sink), repository_key(repo)))
            .or_default()
            .clone()
    }
}
