//! Phase 2, plan (reads only): each source resolved, each target looked up,
//! the guards decide.

use futures_util::{stream, StreamExt};
use tracing::debug;

use super::copy::check_manifest;
use super::execute::Executed;
use super::prepare::Item;
use super::retried::RetriedSource;
use super::{registry_of, Settings};
use crate::digest::Digest;
use crate::manifest::RawManifest;
use crate::report::{Action, ImageReport};
use crate::stage::{ErrorKind, GuardInput, StageError, Verdict};

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
pub(super) struct ImagePlan {
    pub(super) report: ImageReport,
    pub(super) decision: Decision,
}

/// A run planned: per image, what will be done (copy, in sync, or nothing:
/// failed or stopped), decided by reading the registries. [`Planned::execute`]
/// writes.
pub struct Planned {
    pub(super) images: Vec<(Item, ImagePlan)>,
    /// Entries that failed before planning (a tag rule's expansion).
    pub(super) failed: Vec<ImageReport>,
    pub(super) settings: Settings,
}

impl Planned {
    /// Plans every image: each is looked up as fast as its registries'
    /// gates allow, not in step with the copies.
    pub(super) async fn of(
        items: Vec<Item>,
        failed: Vec<ImageReport>,
        settings: Settings,
    ) -> Planned {
        let concurrency = settings.concurrency;
        settings
            .flow
            .start(concurrency.limits(), settings.retry.budget);
        let plans: Vec<ImagePlan> = stream::iter(items.iter())
            .map(|item| plan(&settings, item))
            .buffered(concurrency.lookups().max(1))
            .collect()
            .await;
        settings.progress.planned(
            plans.len(),
            plans
                .iter()
                .filter(|p| matches!(p.decision, Decision::Copy(_)))
                .count(),
        );
        Planned {
            images: items.into_iter().zip(plans).collect(),
            failed,
            settings,
        }
    }

    /// Whether planning found a safety stop: then nothing is written.
    pub fn stopped(&self) -> bool {
        self.images
            .iter()
            .any(|(_, p)| p.report.action == Action::Stopped)
    }

    /// Phase 3: executes the plan (unless dry run).
    pub async fn execute(self) -> Executed {
        Executed::of(self).await
    }
}

async fn plan(settings: &Settings, item: &Item) -> ImagePlan {
    let started = std::time::Instant::now();
    let mut planned = plan_inner(settings, item).await;
    if settings.interrupt.load(std::sync::atomic::Ordering::SeqCst)
        && matches!(planned.decision, Decision::Copy(_))
    {
        planned.report.action = Action::NotRun;
        planned.report.message = Some("not copied: the run was interrupted".into());
        planned.decision = Decision::Done;
    }
    planned.report.duration_ms = started.elapsed().as_millis() as u64;
    planned
}

async fn plan_inner(settings: &Settings, item: &Item) -> ImagePlan {
    let mut report = ImageReport::new(
        item.spec.index,
        item.spec.source.to_string(),
        item.target.to_string(),
    );
    match decide(settings, item, &mut report).await {
        Ok(decision) => ImagePlan { report, decision },
        Err((e, what)) => {
            // Planning writes nothing; the stop is read off the report later.
            report.error = Some(e.kind);
            report.refused_by = e.refused_by.clone();
            report.action = match e.kind {
                ErrorKind::Integrity => Action::Stopped,
                ErrorKind::Cancelled => Action::NotRun,
                _ => Action::Failed,
            };
            report.message = Some(format!("{what}: {e}"));
            ImagePlan {
                report,
                decision: Decision::Done,
            }
        }
    }
}

/// Reads what the decision needs and makes it, filling the report's
/// digests and action; a failure says where it happened.
async fn decide(
    settings: &Settings,
    item: &Item,
    report: &mut ImageReport,
) -> Result<Decision, (StageError, &'static str)> {
    let at = |what: &'static str| move |e: StageError| (e, what);
    // With a platform filter the target gets a manifest of our making: its
    // digest (deterministic for a given source) is what the guard compares.
    let filtered = if item.spec.platforms.is_empty() {
        None
    } else {
        Some(filtered(settings, item).await.map_err(at("source"))?)
    };
    // Warm path: the source digest (HEAD, or the pinned digest) and the
    // target's (HEAD) decide; the manifest is fetched only when needed.
    let source_digest = match (&filtered, item.spec.source.digest()) {
        (Some((m, _)), _) => m.digest.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => settings
            .retry()
            .at(&registry_of(&item.spec.source), "source digest", || {
                item.source.digest(&item.spec.source)
            })
            .await
            .map_err(at("source"))?,
    };
    report.digest = Some(source_digest.clone());
    let current = settings
        .retry()
        .at(&registry_of(&item.target), "target digest", || {
            item.sink.manifest_digest(&item.target)
        })
        .await
        .map_err(at("target"))?;
    debug!(source = %item.spec.source, digest = %source_digest, target = %item.target, current = ?current, "planned");
    let upstream = filtered.as_ref().map(|(_, u)| u.clone());
    match verdict(
        settings,
        item,
        &source_digest,
        upstream.as_ref(),
        current.as_ref(),
    )
    .await
    .map_err(at("guard"))?
    {
        Verdict::Copy => report.action = Action::Copied,
        Verdict::Skip { .. } => report.action = Action::InSync,
        Verdict::Stop { reason } => {
            report.action = Action::Stopped;
            report.target_digest = current.clone();
            report.message = Some(reason);
            return Ok(Decision::Done);
        }
    }
    let copy = report.action == Action::Copied;
    if !copy && item.signer.is_none() {
        // In sync, and nothing to sign: the manifest is not needed.
        return Ok(Decision::InSync(None));
    }
    let manifest = match filtered {
        Some((m, _)) => m,
        None => {
            let m = settings
                .retry()
                .at(&registry_of(&item.spec.source), "source manifest", || {
                    item.source.resolve(&item.spec.source)
                })
                .await
                .map_err(at("source"))?;
            // The content must hash to the digest the decision was made on.
            check_manifest(&m, Some(&source_digest), item.source.max_manifest_bytes())
                .map_err(at("source"))?;
            m
        }
    };
    Ok(if copy {
        Decision::Copy(manifest)
    } else {
        Decision::InSync(Some(manifest))
    })
}

/// What the guards say, the strictest verdict winning.
async fn verdict(
    settings: &Settings,
    item: &Item,
    source_digest: &Digest,
    upstream: Option<&Digest>,
    current: Option<&Digest>,
) -> Result<Verdict, StageError> {
    let mut verdict = Verdict::Copy;
    let source = RetriedSource {
        inner: item.source.as_ref(),
        retry: settings.retry(),
    };
    for g in &item.guards {
        let mut input =
            GuardInput::new(&item.entry, source_digest, &item.target, current).with_source(&source);
        if let Some(u) = upstream {
            input = input.with_upstream_digest(u);
        }
        let v = g.check(input).await?;
        verdict = verdict.max(v);
    }
    Ok(verdict)
}

/// The manifest a platform filter makes of the source: the source's own
/// when there is nothing to filter, the one child asked for, or a new index.
/// With it, the digest the source itself resolved to.
async fn filtered(settings: &Settings, item: &Item) -> Result<(RawManifest, Digest), StageError> {
    let source = settings
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
    let upstream = source.digest.clone();
    match crate::manifest::filter_platforms(&source, &item.spec.platforms)
        .map_err(|e| StageError::invalid(format!("{}: {e}", item.spec.source)))?
    {
        crate::manifest::Filtered::Unchanged => Ok((source, upstream)),
        crate::manifest::Filtered::Index(m) => Ok((m, upstream)),
        crate::manifest::Filtered::Single(child) => {
            let m = settings
                .retry()
                .at(&registry_of(&item.spec.source), "child manifest", || {
                    item.source.fetch_manifest(&item.spec.source, &child)
                })
                .await?;
            check_manifest(&m, Some(&child.digest), item.source.max_manifest_bytes())?;
            Ok((m, upstream))
        }
    }
}
