//! Phase 0, expand (reads only): each entry naming a repository with a tag
//! rule (`tags:`) becomes one image per selected tag, before targets are
//! computed and before sharding.
//!
//! Building the selectors is part of preparing ([`Orchestrator::expansion`],
//! no I/O: a bad rule is an input error before anything is read). Listing and
//! selecting ([`Expansion::expand`]) read each repository's tags through its
//! source. An entry whose listing fails, or whose rule selects nothing, fails
//! alone: the other images go on.

use super::*;
use crate::digest::AttachedTag;
use crate::registry::ConfigValue;
use crate::shard::Shard;
use crate::stage::Selector;

/// The repository entries of a definition, their selector and source built.
pub struct Expansion {
    entries: Vec<Entry>,
}

struct Entry {
    spec: ImageSpec,
    selector: Arc<dyn Selector>,
    source: Arc<dyn Source>,
}

/// A definition with its repository entries expanded.
pub struct Expanded {
    /// The definition, each repository entry replaced by one image per
    /// selected tag (same index and settings, in the selector's order).
    pub definition: Definition,
    /// One report per entry that could not be expanded: its listing failed,
    /// or its rule selected nothing. Only those the shard owns (by source
    /// repository), so that shards report each once.
    pub failed: Vec<ImageReport>,
}

impl Orchestrator {
    /// Builds the selector and the source of every repository entry of
    /// `def`. Touches nothing: an unknown selector or a bad rule (an invalid
    /// pattern, `newest: 0`) is an input error here.
    pub fn expansion(&self, def: &Definition) -> Result<Expansion, PrepareError> {
        let (r, selector_cx, source_cx) = (
            &self.registry,
            self.context.selector(),
            self.context.source(),
        );
        let mut sources: BTreeMap<Option<String>, Arc<dyn Source>> = BTreeMap::new();
        let mut entries = Vec::new();
        for spec in def.images.iter() {
            let Some(chosen) = &spec.selector else {
                continue;
            };
            let selector =
                self.build_at(def, chosen, |n, c| r.build_selector(n, c, &selector_cx))?;
            let st = spec.source.transport().map(str::to_string);
            if !sources.contains_key(&st) {
                let source = self.build_by_transport(
                    def,
                    StageKind::Source,
                    &def.pipeline.source,
                    st.as_deref(),
                    |n: &str, c: &ConfigValue| r.build_source(n, c, &source_cx),
                )?;
                sources.insert(st.clone(), source);
            }
            entries.push(Entry {
                spec: spec.clone(),
                selector,
                source: sources[&st].clone(),
            });
        }
        Ok(Expansion { entries })
    }
}

impl Expansion {
    /// Whether the definition has no repository entry (nothing to expand).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lists each repository's tags (as many at once as `concurrency` plans, each request
    /// retried with `policy`, through the run's per-registry `flow`), lets
    /// its selector choose, and returns `def` with the entries expanded.
    pub async fn expand(
        &self,
        def: &Definition,
        policy: &RetryPolicy,
        concurrency: Concurrency,
        interrupt: &AtomicBool,
        flow: &FlowControl,
        shard: Option<Shard>,
    ) -> Expanded {
        let (limits, jobs) = (concurrency.limits(), concurrency.lookups());
        flow.start(limits, policy.budget);
        let retry = Retry {
            policy,
            halt: interrupt,
            flow: Some(flow),
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
                    if shard.is_some_and(|s| !s.owns(&spec.source)) {
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
        let mut definition = def.clone();
        definition.images = def
            .images
            .iter()
            .flat_map(|spec| match expanded.remove(&spec.index) {
                Some(images) if spec.selector.is_some() => images,
                _ => vec![spec.clone()],
            })
            .collect();
        Expanded { definition, failed }
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
