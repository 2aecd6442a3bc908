// docs/plugins.md's core of the tag-suffix transform, with the typed config
// and the stage the doc leaves out.
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TagSuffixConfig {
    suffix: String,
}

struct TagSuffix {
    suffix: String,
}

// {snippet}

/// The transform as `register` declares it.
fn factory() -> PluginFactory {
    PluginFactory::transform(build)
}

/// The factory builds the doc's transform, which suffixes the previous
/// target once.
#[test]
fn the_transform_appends_the_suffix_once() {
    assert_eq!(factory().kind(), StageKind::Transform);
    let config = image_syncer_core::definition::parse_config_yaml("suffix: \"-m\"").unwrap();
    let transform = build(&config, &TransformContext::default()).unwrap();
    let image = image_syncer_core::stage::ImageEntry::new(ImageRef::parse("busybox:1.36").unwrap(), "r.io/");
    for previous in ["r.io/library/busybox:1.36", "r.io/library/busybox:1.36-m"] {
        let previous = ImageRef::parse(previous).unwrap();
        let target = transform.apply(TransformInput::new(&image, Some(previous))).unwrap();
        assert_eq!(target.to_string(), "r.io/library/busybox:1.36-m");
    }
}
