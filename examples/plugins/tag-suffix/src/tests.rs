//! Unit tests without registries: the transform called directly with a
//! definition parsed as the host parses it, then a whole run of the core's
//! orchestrator between two in-memory registries (the core's `testing`
//! feature). `tests/e2e/plugins.rs` runs the built library against real
//! registries.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use image_syncer_core::catalogue::{Factory, RegisteredStage, StageRegistry};
use image_syncer_core::context::{RunContext, SinkContext, SourceContext};
use image_syncer_core::definition::{self, parse_config_yaml, Definition};
use image_syncer_core::manifest::{RawManifest, OCI_MANIFEST};
use image_syncer_core::memory::MemoryRegistry;
use image_syncer_core::orchestrator::Orchestrator;
use image_syncer_core::report::{Action, Status};
use image_syncer_core::stage::{Sink, Source};
use image_syncer_retag::Retag;

use super::*;

fn def(yaml: &str) -> Definition {
    definition::parse(yaml, Path::new("t.yaml"), &[]).unwrap()
}

/// The stage the factory builds from `config` (YAML), as the host would get it.
fn build(config: &str) -> Result<Box<dyn Transform>, BuildError> {
    let config = parse_config_yaml(config).unwrap();
    super::build(&config, &TransformContext::default())
}

/// What `retag` and then the transform make of each image of `yaml`.
fn targets(config: &str, yaml: &str) -> Vec<String> {
    let transform = build(config).unwrap();
    def(yaml)
        .images
        .iter()
        .map(|spec| {
            // What a transform sees of an image of the definition.
            let image = spec.entry();
            let retagged = Retag::new(vec![])
                .apply(TransformInput::new(&image, None))
                .unwrap();
            match transform.apply(TransformInput::new(&image, Some(retagged))) {
                Ok(t) => t.to_string(),
                Err(e) => format!("error: {}", e.message),
            }
        })
        .collect()
}

/// The example in docs/plugins.md: the transform called directly, with the
/// target a transform before it returned.
#[test]
fn appends_the_suffix_to_the_previous_target() {
    let def = definition::parse(
        "targetRepoPrefix: dst.io/mirror/\nimages:\n- source: busybox:1.36\n",
        Path::new("t.yaml"),
        &[], // transports the parser knows, such as "oci"
    )
    .unwrap();
    let transform = TagSuffix {
        suffix: "-mirror".into(),
        only_for: vec![],
    };
    let previous = ImageRef::parse("dst.io/mirror/library/busybox:1.36").unwrap();
    let target = transform
        .apply(TransformInput::new(&def.images[0].entry(), Some(previous)))
        .unwrap();
    assert_eq!(
        target.to_string(),
        "dst.io/mirror/library/busybox:1.36-mirror"
    );
}

#[test]
fn appends_the_suffix_after_retag() {
    let yaml = "targetRepoPrefix: dst.io/mirror/\nimages:\n\
                - source: busybox:1.36\n\
                - source: quay.io/prometheus/node-exporter:v1.8.0\n\
                - source: busybox:1.36\n  tag: 1.36-mirror\n";
    assert_eq!(
        targets("suffix: \"-mirror\"", yaml),
        [
            "dst.io/mirror/library/busybox:1.36-mirror",
            "dst.io/mirror/quay.io/prometheus/node-exporter:v1.8.0-mirror",
            // Already suffixed: kept as is, not `1.36-mirror-mirror`.
            "dst.io/mirror/library/busybox:1.36-mirror",
        ]
    );
}

#[test]
fn only_for_limits_it_to_source_repositories_with_those_prefixes() {
    let yaml = "targetRepoPrefix: dst.io/mirror/\nimages:\n\
                - source: busybox:1.36\n\
                - source: quay.io/prometheus/node-exporter:v1.8.0\n";
    // `busybox` is `docker.io/library/busybox` to the prefix match.
    assert_eq!(
        targets("{ suffix: .m, onlyFor: [\"docker.io/library/\"] }", yaml),
        [
            "dst.io/mirror/library/busybox:1.36.m",
            "dst.io/mirror/quay.io/prometheus/node-exporter:v1.8.0",
        ]
    );
}

#[test]
fn without_a_transform_before_it_is_an_error() {
    let d = def("targetRepoPrefix: dst.io/mirror/\nimages:\n- source: busybox:1.36\n");
    let err = build("suffix: \"-mirror\"")
        .unwrap()
        .apply(TransformInput::new(&d.images[0].entry(), None))
        .unwrap_err();
    assert!(err.message.contains("such as `retag`"), "{}", err.message);
}

#[test]
fn bad_configs_are_refused() {
    let message = |config: &str| match build(config) {
        Ok(_) => panic!("`{config}` was accepted"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        message("{ suffix: \"-m\", sufix: \"-m\" }"),
        "transform plugin `tag-suffix`: invalid config: unknown field `sufix`, expected `suffix` or `onlyFor`"
    );
    assert!(message("{}").contains("missing field `suffix`"));
    assert!(message("suffix: \"/m\"").contains("is not 1 or more of [A-Za-z0-9_.-]"));
    assert!(message("suffix: \"\"").contains("is not 1 or more of [A-Za-z0-9_.-]"));
}

#[tokio::test]
async fn a_whole_run_between_memory_registries_writes_the_suffixed_tag() {
    let source = Arc::new(MemoryRegistry::new());
    let target = Arc::new(MemoryRegistry::new());
    let at = ImageRef::parse("src.io/team/app:1.0").unwrap();
    let config = source.add_blob(&at, "application/vnd.oci.image.config.v1+json", b"{}");
    let layer = source.add_blob(&at, "application/vnd.oci.image.layer.v1.tar", b"layer");
    let json = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\"config\":{},\"layers\":[{}]}}",
        json_of(&config),
        json_of(&layer)
    );
    let manifest = RawManifest::new(None, Bytes::from(json), None).unwrap();
    source.add_manifest(&at, &manifest, Some("1.0"));

    let mut registry = StageRegistry::default();
    let (from, to) = (source.clone(), target.clone());
    for s in [
        RegisteredStage::new(
            "memory",
            Factory::source(move |_: &ConfigValue, _: &SourceContext| {
                Ok(from.clone() as Arc<dyn Source>)
            }),
        ),
        RegisteredStage::new(
            "memory",
            Factory::sink(move |_: &ConfigValue, _: &SinkContext| Ok(to.clone() as Arc<dyn Sink>)),
        ),
        RegisteredStage::new(
            "retag",
            Factory::transform(|_: &ConfigValue, _: &TransformContext| {
                Ok(Arc::new(Retag::new(vec![])) as Arc<dyn Transform>)
            }),
        ),
        // The plugin's factory, seen as a built-in's: its config comes
        // from the definition.
        RegisteredStage::new(
            "tag-suffix",
            Factory::transform(|config: &ConfigValue, cx: &TransformContext| {
                Ok(Arc::from(super::build(config, cx)?))
            }),
        ),
    ] {
        registry.insert(s).unwrap();
    }
    let yaml = concat!(
        "targetRepoPrefix: dst.io/mirror/\n",
        "images:\n",
        "- source: src.io/team/app:1.0\n",
        "pipeline:\n",
        "  source: { plugin: memory }\n",
        "  sink: { plugin: memory }\n",
        "  guards: []\n",
        "  transforms: [ { plugin: retag }, { plugin: tag-suffix, config: { suffix: \"-mirror\" } } ]\n",
    );
    let report = Orchestrator::new(registry, RunContext::default())
        .prepare(&def(yaml), false)
        .unwrap()
        .run()
        .await;

    assert_eq!(report.status(), Status::Ok, "{}", report.render_text());
    let image = &report.images[0];
    assert_eq!(image.action, Action::Copied);
    assert_eq!(image.target, "dst.io/mirror/src.io/team/app:1.0-mirror");
    let tag = |r: &str| {
        let target = target.clone();
        let r = ImageRef::parse(r).unwrap();
        async move { target.manifest_digest(&r).await.unwrap() }
    };
    assert_eq!(
        tag("dst.io/mirror/src.io/team/app:1.0-mirror").await,
        Some(manifest.digest.clone())
    );
    assert_eq!(tag("dst.io/mirror/src.io/team/app:1.0").await, None);
}

/// A descriptor as a manifest holds it.
fn json_of(d: &image_syncer_core::manifest::Descriptor) -> String {
    format!(
        "{{\"mediaType\":\"{}\",\"digest\":\"{}\",\"size\":{}}}",
        d.media_type, d.digest, d.size
    )
}
