//! Phase 0, expand (reads only): each entry naming a repository with a tag
//! rule (`tags:`) becomes one image per selected tag, before targets are
//! computed and before sharding.
//!
//! Building the selectors, with every other stage, is part of preparing
//! ([`Orchestrator::expansion`], no I/O: a bad rule is an input error before
//! anything is read). Listing and selecting ([`Expansion::expand`]) read each
//! repository's tags through its source; the expanded definition is then
//! prepared with the stages already built. An entry whose listing fails, or
//! whose rule selects nothing, fails alone: the other images go on.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use futures_util::{stream, StreamExt};
use tracing::{info, warn};

use super::prepare::Prepared;
use super::stages::Stages;
use super::{registry_of, Concurrency, Orchestrator, PrepareError};
use crate::definition::{Definition, ImageSpec};
use crate::digest::AttachedTag;
use crate::report::ImageReport;
use crate::retry::{Retry, RetryPolicy};
use crate::shard::Shard;
use crate::stage::{Selector, Source};

/// A definition checked, its stages built, its repository entries still to
/// expand: the first step of preparing when the definition has tag rules.
pub struct Expansion<'a> {
    orchestrator: &'a Orchestrator,
    definition: &'a Definition,
    dry_run: bool,
    shard: Option<Shard>,
    /// Every stage built so far, reused for the expanded images.
    stages: Stages,
    entries: Vec<Entry>,
    /// The definition's other images, prepared (what runs when there is
    /// nothing to expand).
    checked: Prepared,
}

struct Entry {
    spec: ImageSpec,
    selector: Arc<dyn Selector>,
    source: Arc<dyn Source>,
}

impl Orchestrator {
    /// Builds the selector and the source of every repository entry of
    /// `def`, then prepares the rest of it. Touches nothing: an unknown
    /// selector, a bad rule (an invalid pattern, `newest: 0`) or any input
    /// error of the other images is found here, before anything is read.
    pub fn expansion<'a>(
        &'a self,
        def: &'a Definition,
        dry_run: bool,
        shard: Option<Shard>,
    ) -> Result<Expansion<'a>, PrepareError> {
        let mut stages = Stages::default();
        let mut entries = Vec::new();
        for spec in def.images.iter() {
            let Some(chosen) = &spec.selector else {
                continue;
            };
            let selector = stages.selector(self, def, chosen)?;
            let source = stages.source(self, def, spec.source.transport())?;
            entries.push(Entry {
                spec: spec.clone(),
                selector,
                source,
            });
        }
        let checked = self.prepare_with(def, dry_run, shard, &mut stages)?;
        Ok(Expansion {
            orchestrator: self,
            definition: def,
            dry_run,
            shard,
            stages,
            entries,
            checked,
        })
    }
}

impl Expansion<'_> {
    /// Whether the definition has no repository entry (nothing to expand).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lists each repository's tags (as many at once as `concurrency` plans,
    /// each request retried with `policy`, through the context's
    /// per-registry gates), lets its selector choose, and prepares the
    /// definition with one image per selected tag (same index and settings,
    /// in the selector's order), with the stages already built. An entry
    /// whose listing fails, or whose rule selects nothing, is a failed line
    /// of the run's report (only when the shard owns its source repository,
    /// so that shards report each once). Without repository entries, reads
    /// nothing.
    pub async fn expand(
        mut self,
        policy: &RetryPolicy,
        concurrency: Concurrency,
        interrupt: &AtomicBool,
    ) -> Result<Prepared, PrepareError> {
        if self.entries.is_empty() {
            return Ok(self.checked);
        }
        let flow = self.checked.flow().clone();
        let (limits, jobs) = (concurrency.limits(), concurrency.lookups());
        flow.start(limits, policy.budget);
        let retry = Retry {
            policy,
            halt: interrupt,
            flow: Some(&flow),
        };
        let results: Vec<Result<Vec<String>, String>> = stream::iter(self.entries.iter())
            .map(|e| select(e, &retry))
            .buffered(jobs.max(1))
            .collect()
            .await;
        let mut expanded: HashMap<usize, Vec<ImageSpec>> = HashMap::new();
        let mut failed = Vec::new();
        for (entry, result) in self.entries.iter().zip(results) {
            let spec = &entry.spec;
            match result {
                Ok(tags) => {
                    info!(image = spec.index, source = %spec.source, selected = tags.len(), rule = %entry.selector.describe(), "tags selected");
                    expanded.insert(
                        spec.index,
                        tags.iter().map(|t| spec.with_selected_tag(t)).collect(),
                    );
                }
                Err(message) => {
                    expanded.insert(spec.index, Vec::new());
                    if self.shard.is_some_and(|s| !s.owns(&spec.source)) {
                        continue;
                    }
                    warn!(image = spec.index, source = %spec.source, %message, "entry not expanded");
                    // No target: the entry never had one.
                    let mut report =
                        ImageReport::new(spec.index, spec.source.to_string(), String::new());
                    report.message = Some(message);
                    failed.push(report);
                }
            }
        }
        let def = self.definition;
        let mut definition = def.clone();
        definition.images = def
            .images
            .iter()
            .flat_map(|spec| match expanded.remove(&spec.index) {
                Some(images) if spec.selector.is_some() => images,
                _ => vec![spec.clone()],
            })
            .collect();
        let prepared = self.orchestrator.prepare_with(
            &definition,
            self.dry_run,
            self.shard,
            &mut self.stages,
        )?;
        Ok(prepared.with_failed(failed))
    }
}

/// The tags `entry` selects, or why there are none.
async fn select(entry: &Entry, retry: &Retry<'_>) -> Result<Vec<String>, String> {
    let spec = &entry.spec;
    let listed = retry
        .at(&registry_of(&spec.source), "tag list", || {
            entry.source.list_tags(&spec.source)
        })
        .await
        .map_err(|e| format!("listing the tags of {}: {}", spec.source, e.message))?;
    // Tags attaching artifacts to a digest are never images; a selector
    // does not see them.
    let candidates: Vec<String> = listed
        .iter()
        .filter(|t| AttachedTag::parse(t).is_none())
        .cloned()
        .collect();
    let rule = entry.selector.describe();
    let chosen = entry
        .selector
        .select(&candidates)
        .map_err(|e| format!("selecting tags ({rule}): {}", e.message))?;
    let listed_set: std::collections::HashSet<&String> = candidates.iter().collect();
    let mut seen = std::collections::HashSet::new();
    let mut tags = Vec::with_capacity(chosen.len());
    for tag in chosen {
        // A selector chooses among what was listed, each tag once.
        if !listed_set.contains(&tag) {
            return Err(format!(
                "the selector chose `{tag}`, which is not among the {} tags listed ({rule})",
                candidates.len()
            ));
        }
        if seen.insert(tag.clone()) {
            tags.push(tag);
        }
    }
    if tags.is_empty() {
        return Err(format!(
            "the rule selected no tag of the {} listed ({rule})",
            listed.len()
        ));
    }
    Ok(tags)
}
