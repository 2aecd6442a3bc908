//! Stages are built once per run: a counting factory per plugin, over a
//! definition with a tag rule entry (expanded) and a plain entry; a tag both
//! listed and selected is synced once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::Orchestrator;
use crate::catalogue::{ConfigValue, Factory, RegisteredStage, StageRegistry};
use crate::context::{
    GuardContext, RunContext, SelectorContext, SignerContext, SinkContext, SourceContext,
    TransformContext,
};
use crate::definition;
use crate::manifest::{RawManifest, OCI_MANIFEST};
use crate::memory::MemoryRegistry;
use crate::reference::ImageRef;
use crate::report::{Action, Status};
use crate::stage::{
    Guard, GuardInput, Selector, SignOutcome, SignRequest, Signer, Sink, StageError, StageKind,
    Transform, TransformInput, Verdict,
};

/// How many times each plugin's factory was called, by kind and name.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<HashMap<(StageKind, String), usize>>>);

impl Calls {
    fn count(&self, kind: StageKind, name: &str) {
        *self
            .0
            .lock()
            .unwrap()
            .entry((kind, name.to_string()))
            .or_default() += 1;
    }
    fn all(&self) -> HashMap<(StageKind, String), usize> {
        self.0.lock().unwrap().clone()
    }
}

/// `dst.io/mirror/<repository>:<tag>`.
struct Mirror;

impl Transform for Mirror {
    fn apply(&self, input: TransformInput<'_>) -> Result<ImageRef, StageError> {
        let spec = input.image;
        let tag = spec.source.tag().unwrap_or("latest");
        ImageRef::parse(&format!(
            "{}{}:{tag}",
            spec.target_prefix,
            spec.source.repository()
        ))
        .map_err(|e| StageError::config(e.to_string()))
    }
}

struct Always;

#[async_trait]
impl Guard for Always {
    async fn check(&self, _: GuardInput<'_>) -> Result<Verdict, StageError> {
        Ok(Verdict::Copy)
    }
}

/// Selects every tag listed.
struct Every;

impl Selector for Every {
    fn select(&self, tags: &[String]) -> Result<Vec<String>, StageError> {
        Ok(tags.to_vec())
    }
    fn describe(&self) -> String {
        "every tag".into()
    }
}

struct NoSigner;

#[async_trait]
impl Signer for NoSigner {
    async fn sign(&self, _: &SignRequest, _: &Arc<dyn Sink>) -> Result<SignOutcome, StageError> {
        Ok(SignOutcome::Signed)
    }
}

/// The registry of counting factories: `memory` source and sink, `retag`,
/// `immutable`, `tags` (a selector), `cosign`.
fn registry(
    calls: &Calls,
    source: Arc<MemoryRegistry>,
    sink: Arc<MemoryRegistry>,
) -> StageRegistry {
    let mut r = StageRegistry::default();
    let c = calls.clone();
    r.insert(RegisteredStage::new(
        "memory",
        Factory::source(move |_: &ConfigValue, _: &SourceContext| {
            c.count(StageKind::Source, "memory");
            Ok(source.clone() as Arc<dyn crate::stage::Source>)
        }),
    ))
    .unwrap();
    let c = calls.clone();
    r.insert(RegisteredStage::new(
        "memory",
        Factory::sink(move |_: &ConfigValue, _: &SinkContext| {
            c.count(StageKind::Sink, "memory");
            Ok(sink.clone() as Arc<dyn Sink>)
        }),
    ))
    .unwrap();
    let c = calls.clone();
    r.insert(RegisteredStage::new(
        "retag",
        Factory::transform(move |_: &ConfigValue, _: &TransformContext| {
            c.count(StageKind::Transform, "retag");
            Ok(Arc::new(Mirror) as Arc<dyn Transform>)
        }),
    ))
    .unwrap();
    let c = calls.clone();
    r.insert(RegisteredStage::new(
        "immutable",
        Factory::guard(move |_: &ConfigValue, _: &GuardContext| {
            c.count(StageKind::Guard, "immutable");
            Ok(Arc::new(Always) as Arc<dyn Guard>)
        }),
    ))
    .unwrap();
    let c = calls.clone();
    r.insert(RegisteredStage::new(
        "tags",
        Factory::selector(move |_: &ConfigValue, _: &SelectorContext| {
            c.count(StageKind::Selector, "tags");
            Ok(Arc::new(Every) as Arc<dyn Selector>)
        }),
    ))
    .unwrap();
    let c = calls.clone();
    r.insert(RegisteredStage::new(
        "cosign",
        Factory::signer(move |_: &ConfigValue, _: &SignerContext| {
            c.count(StageKind::Signer, "cosign");
            Ok(Arc::new(NoSigner) as Arc<dyn Signer>)
        }),
    ))
    .unwrap();
    r
}

/// An image with no layer, tagged `tag` in `repo` of `registry`.
fn add_image(registry: &MemoryRegistry, repo: &str, tag: &str) {
    let repo = ImageRef::parse(repo).unwrap();
    let config = registry.add_blob(
        &repo,
        "application/vnd.oci.image.config.v1+json",
        tag.as_bytes(),
    );
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [],
    });
    let manifest = RawManifest::new(
        Some(OCI_MANIFEST),
        serde_json::to_vec(&body).unwrap().into(),
        None,
    )
    .unwrap();
    registry.add_manifest(&repo, &manifest, Some(tag));
}

#[tokio::test]
async fn stages_are_built_once_per_distinct_config_with_a_tag_rule() {
    let (source, sink) = (
        Arc::new(MemoryRegistry::new()),
        Arc::new(MemoryRegistry::new()),
    );
    add_image(&source, "src.io/team/app", "1.0");
    add_image(&source, "src.io/team/app", "1.1");
    add_image(&source, "src.io/team/tool", "2.0");
    let def = definition::parse(
        "targetRepoPrefix: dst.io/mirror/\nimages:\n- source: src.io/team/app\n  tags:\n    newest: 5\n  sign: true\n- source: src.io/team/tool:2.0\n",
        Path::new("t.yaml"),
        &[],
    )
    .unwrap();
    let calls = Calls::default();
    let orchestrator = Orchestrator::new(
        registry(&calls, source, sink.clone()),
        RunContext {
            signing_key: Some("env://KEY".into()),
            ..RunContext::default()
        },
    );
    let report = orchestrator
        .expansion(&def, false, None)
        .unwrap()
        .expand(
            &Default::default(),
            super::Concurrency::Adaptive,
            &Default::default(),
        )
        .await
        .unwrap()
        .run()
        .await;
    assert_eq!(report.status(), Status::Ok, "{}", report.render_text());
    let actions: Vec<(String, Action)> = report
        .images
        .iter()
        .map(|i| (i.target.clone(), i.action))
        .collect();
    assert_eq!(
        actions,
        [
            ("dst.io/mirror/team/app:1.0".to_string(), Action::Copied),
            ("dst.io/mirror/team/app:1.1".to_string(), Action::Copied),
            ("dst.io/mirror/team/tool:2.0".to_string(), Action::Copied),
        ]
    );
    let once: HashMap<(StageKind, String), usize> = [
        (StageKind::Source, "memory"),
        (StageKind::Sink, "memory"),
        (StageKind::Transform, "retag"),
        (StageKind::Guard, "immutable"),
        (StageKind::Selector, "tags"),
        (StageKind::Signer, "cosign"),
    ]
    .into_iter()
    .map(|(k, n)| ((k, n.to_string()), 1))
    .collect();
    assert_eq!(
        calls.all(),
        once,
        "each factory called once per distinct config"
    );
}

/// docs/definition.md, "Tag rules": "A tag that also appears as a listed
/// image of the same source is synced once." `1.0` is listed and selected
/// by the rule; it is one line of the report and written once.
#[tokio::test]
async fn a_tag_both_listed_and_selected_by_a_rule_is_synced_once() {
    let (source, sink) = (
        Arc::new(MemoryRegistry::new()),
        Arc::new(MemoryRegistry::new()),
    );
    add_image(&source, "src.io/team/app", "1.0");
    add_image(&source, "src.io/team/app", "1.1");
    let def = definition::parse(
        "targetRepoPrefix: dst.io/mirror/\nimages:\n- source: src.io/team/app:1.0\n- source: src.io/team/app\n  tags:\n    newest: 5\n",
        Path::new("t.yaml"),
        &[],
    )
    .unwrap();
    let orchestrator = Orchestrator::new(
        registry(&Calls::default(), source, sink.clone()),
        RunContext::default(),
    );
    let report = orchestrator
        .expansion(&def, false, None)
        .unwrap()
        .expand(
            &Default::default(),
            super::Concurrency::Adaptive,
            &Default::default(),
        )
        .await
        .unwrap()
        .run()
        .await;
    assert_eq!(report.status(), Status::Ok, "{}", report.render_text());
    let mut actions: Vec<(String, Action)> = report
        .images
        .iter()
        .map(|i| (i.target.clone(), i.action))
        .collect();
    actions.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        actions,
        [
            ("dst.io/mirror/team/app:1.0".to_string(), Action::Copied),
            ("dst.io/mirror/team/app:1.1".to_string(), Action::Copied),
        ],
        "each tag once in the report"
    );
    // Per image: its config blob and its manifest.
    assert_eq!(sink.writes(), 4, "each image written once");
}
