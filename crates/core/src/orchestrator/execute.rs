//! Phase 3, execute: each planned image copied (blobs, children, the tag
//! last), its signatures carried, then signed; the run's shared state.

use super::*;

impl Prepared {
    /// Executes one planned image: copy (unless in sync), then sign.
    pub(super) async fn finish(&self, item: &Item, p: Planned, run: &Run) -> ImageReport {
        let started = std::time::Instant::now();
        let mut report = self.finish_inner(item, p, run).await;
        report.duration_ms += started.elapsed().as_millis() as u64;
        self.progress.finished(&report);
        report
    }

    pub(super) async fn finish_inner(&self, item: &Item, p: Planned, run: &Run) -> ImageReport {
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
        if let Decision::Copy(manifest) = &p.decision {
            if self.dry_run {
                report.action = Action::WouldCopy;
            } else {
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
            if let (Some(signer), Some(manifest)) = (&item.signer, p.decision.manifest()) {
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

    /// Copies one image: blobs, child manifests, then the tag.
    pub(super) async fn execute(
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
pub(super) struct Run {
    /// Set by the first safety stop: no write starts after it.
    pub(super) stop: AtomicBool,
    /// Set on SIGINT/SIGTERM: no write starts after it either.
    pub(super) interrupt: Arc<AtomicBool>,
    pub(super) ledger: Ledger,
}

impl Run {
    pub(super) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub(super) fn interrupted(&self) -> bool {
        self.interrupt.load(Ordering::SeqCst)
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

    /// The action for a failed image: a content or signature problem is a
    /// safety stop and halts all further writing; anything else fails this
    /// image only.
    pub(super) fn failed(&self, e: &StageError) -> Action {
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
pub(super) struct Ledger {
    pub(super) blobs: Mutex<HashMap<(usize, Digest), Arc<OnceCell<ImageRef>>>>,
    pub(super) manifests: Mutex<HashMap<(usize, String, Digest), Arc<OnceCell<()>>>>,
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
        let repo = repo.with_tag("_").to_string();
        self.manifests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((sink_id(sink), repo, digest.clone()))
            .or_default()
            .clone()
    }
}
