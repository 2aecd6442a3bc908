//! Phase 2, plan (reads only): each source resolved, each target looked up,
//! the guards decide.

use super::*;

/// What planning decided for one image, with what executing it needs.
pub(super) enum Decision {
    /// Copy this manifest (the source's, or the one a platform filter made).
    Copy(RawManifest),
    /// Already in sync; the manifest is there when the image is to be signed.
    InSync(Option<RawManifest>),
    /// Nothing to execute: failed, stopped or not run (the report says which).
    Done,
}

impl Decision {
    /// The manifest the image's target holds (or will), if planning fetched it.
    pub(super) fn manifest(&self) -> Option<&RawManifest> {
        match self {
            Decision::Copy(m) | Decision::InSync(Some(m)) => Some(m),
            Decision::InSync(None) | Decision::Done => None,
        }
    }
}

/// An image's plan: its report so far and the decision.
pub(super) struct Planned {
    pub(super) report: ImageReport,
    pub(super) decision: Decision,
}

impl Prepared {
    pub(super) async fn plan(&self, item: &Item) -> Planned {
        let started = std::time::Instant::now();
        let mut planned = self.plan_inner(item).await;
        if self.interrupt.load(Ordering::SeqCst) && matches!(planned.decision, Decision::Copy(_)) {
            planned.report.action = Action::NotRun;
            planned.report.message = Some("not copied: the run was interrupted".into());
            planned.decision = Decision::Done;
        }
        planned.report.duration_ms = started.elapsed().as_millis() as u64;
        planned
    }

    pub(super) async fn plan_inner(&self, item: &Item) -> Planned {
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
                decision: Decision::Done,
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
        // What the decision needs of the source manifest.
        let decide = |report: ImageReport, manifest: RawManifest| {
            let decision = if report.action == Action::Copied {
                Decision::Copy(manifest)
            } else {
                Decision::InSync(Some(manifest))
            };
            Planned { report, decision }
        };
        let needed = report.action == Action::Copied
            || (report.action == Action::InSync && item.signer.is_some());
        if !needed {
            let decision = if report.action == Action::InSync {
                Decision::InSync(None)
            } else {
                Decision::Done
            };
            return Planned { report, decision };
        }
        if let Some(m) = filtered {
            return decide(report, m);
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
        decide(report, manifest)
    }

    /// The manifest a platform filter makes of the source: the source's own
    /// when there is nothing to filter, the one child asked for, or a new index.
    pub(super) async fn filtered(&self, item: &Item) -> Result<RawManifest, StageError> {
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
}
