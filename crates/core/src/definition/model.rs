//! The file model: what a definition file may hold, as serde reads it and
//! as the JSON Schema describes it. [`super::parse`] turns it into the
//! checked [`super::Definition`].

use std::collections::BTreeMap;

use serde::Deserialize;

use super::RegistrySettings;
use super::RetrySettings;

/// An image-syncer definition file (`--images-file`).
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "image-syncer definition")]
pub(super) struct FileModel {
    /// Prepended to each source's repository path to name its target, for example
    /// `eu.gcr.io/kyma-project/external/`; `oci:DIR/` writes OCI image layouts.
    pub(super) target_repo_prefix: String,
    /// Sign every image unless the image says otherwise (default false).
    #[serde(default)]
    pub(super) sign: Option<bool>,
    /// The images to sync.
    pub(super) images: Vec<ImageModel>,
    /// Per-registry settings, keyed by the host as written in references.
    #[serde(default)]
    pub(super) registries: BTreeMap<String, RegistrySettings>,
    /// The plugin of each stage and its settings; absent = the default pipeline.
    #[serde(default)]
    pub(super) pipeline: Option<PipelineModel>,
    /// Plugin libraries to load, relative to this file.
    #[serde(default)]
    pub(super) plugins: Vec<String>,
    /// Fixes how much runs at once: images planned and copied, blobs of an
    /// image, requests in flight per registry (`--jobs` wins). Without it,
    /// each registry's limit adapts (8 to 32 requests in flight).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub(super) jobs: Option<usize>,
    /// How transient registry failures are retried.
    #[serde(default)]
    pub(super) retry: Option<RetrySettings>,
    /// Copy only these platforms of multi-platform images (`os/arch[/variant]`),
    /// unless an image says otherwise.
    #[serde(default)]
    pub(super) platforms: Option<Vec<String>>,
    /// Carry the source's cosign signatures, attestations and SBOMs
    /// (`sha256-<hex>.sig/.att/.sbom`) and its referrers tag along (default false).
    #[serde(default)]
    pub(super) carry_signatures: Option<bool>,
}

/// Only the `plugins:` list, read before the rest (plugins bring transports
/// that the image references may use).
#[derive(Deserialize)]
pub(super) struct PluginsOnly {
    #[serde(default)]
    pub(super) plugins: Vec<String>,
}

/// The plugin of each stage and its settings.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PipelineModel {
    /// Default: chosen per reference by transport.
    #[serde(default)]
    #[schemars(with = "Option<SourceStage>")]
    pub(super) source: Option<StageModel>,
    /// Default: `[retag]`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<TransformStage>>")]
    pub(super) transforms: Option<Vec<StageModel>>,
    /// Default: `[immutable]`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<GuardStage>>")]
    pub(super) guards: Option<Vec<StageModel>>,
    /// Default: chosen per target by transport.
    #[serde(default)]
    #[schemars(with = "Option<SinkStage>")]
    pub(super) sink: Option<StageModel>,
    /// Default: `cosign`.
    #[serde(default)]
    #[schemars(with = "Option<SignerStage>")]
    pub(super) signer: Option<StageModel>,
}

/// `{ plugin: NAME, config: {...} }`: the config stays nested under `config`
/// and is typed by the plugin.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct StageModel {
    /// The plugin's name (`image-syncer --list-stages`).
    pub(super) plugin: String,
    /// The plugin's settings, checked by the plugin.
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub(super) config: serde_yaml::Value,
}

/// Schema-only stand-ins for a stage entry of one kind: each is a `$defs`
/// entry of its own (`SourceStage`, …), which [`json_schema`] narrows to the
/// registered plugins of that kind and their config schemas.
macro_rules! stage_of_kind {
    ($($name:ident),*) => {$(
        pub(super) struct $name;
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
                <StageModel as schemars::JsonSchema>::json_schema(g)
            }
        }
    )*};
}
stage_of_kind!(
    SourceStage,
    SelectorStage,
    TransformStage,
    GuardStage,
    SinkStage,
    SignerStage
);

/// Schema-only stand-in for an entry's `tags:` rule: a `$defs` entry that
/// [`json_schema`] replaces with the `tags` selector's config schema.
pub(super) struct TagsRule;
impl schemars::JsonSchema for TagsRule {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TagsRule".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A rule selecting tags (the `tags` selector's config).",
            "type": "object"
        })
    }
}

/// One image to sync, or a repository whose tags a rule selects (`tags:`).
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ImageModel {
    /// The source reference (`busybox:1.36`, `gcr.io/x/y@sha256:…`, `oci:DIR[:TAG]`);
    /// with `tags:`, a repository (no tag, no digest).
    pub(super) source: String,
    /// The target tag; required when the source is pinned by digest.
    #[serde(default)]
    pub(super) tag: Option<String>,
    /// Mirror the source repository's tags that this rule selects (the
    /// built-in `tags` selector): `semver`, `regex`, `exclude`, `newest`.
    #[serde(default)]
    #[schemars(with = "Option<TagsRule>")]
    pub(super) tags: Option<serde_yaml::Value>,
    /// Sign this image (wins over the global `sign`).
    #[serde(default)]
    pub(super) sign: Option<bool>,
    /// This image's own sink or signer.
    #[serde(default)]
    pub(super) pipeline: Option<ImagePipelineModel>,
    /// Copy only these platforms of a multi-platform image (`os/arch[/variant]`).
    #[serde(default)]
    pub(super) platforms: Option<Vec<String>>,
    /// The original tool's shorthand for `platforms: [linux/amd64]`.
    #[serde(default)]
    pub(super) amd64_only: Option<bool>,
    /// Carry this image's signatures along (wins over the global value).
    #[serde(default)]
    pub(super) carry_signatures: Option<bool>,
}

/// Per-image stage choices: the stages whose settings naturally differ by image.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ImagePipelineModel {
    /// Guards for this image, after the pipeline's (`pipeline.guards` still
    /// apply); the strictest verdict wins.
    #[serde(default)]
    #[schemars(with = "Option<Vec<GuardStage>>")]
    pub(super) guards: Option<Vec<StageModel>>,
    /// Select the source repository's tags with this selector plugin
    /// (instead of `tags:`, which uses the built-in `tags` selector).
    #[serde(default)]
    #[schemars(with = "Option<SelectorStage>")]
    pub(super) selector: Option<StageModel>,
    #[serde(default)]
    #[schemars(with = "Option<SinkStage>")]
    pub(super) sink: Option<StageModel>,
    #[serde(default)]
    #[schemars(with = "Option<SignerStage>")]
    pub(super) signer: Option<StageModel>,
}
