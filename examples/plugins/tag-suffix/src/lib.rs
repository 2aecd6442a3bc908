//! Example dynamic plugin: a transform that appends a suffix to the target
//! tag the transforms before it computed, so that mirrored tags are told
//! apart from the source's (`busybox:1.36` → `<prefix>library/busybox:1.36-mirror`).
//!
//! ```yaml
//! pipeline:
//!   transforms:
//!   - plugin: retag                     # computes the target first
//!   - plugin: tag-suffix
//!     config:
//!       suffix: "-mirror"
//!       onlyFor: ["docker.io/library/"] # optional: prefixes of the source's repository name
//! ```
//!
//! A tag that already ends with the suffix is kept as is. The core checks the
//! final target after the last transform (a tag longer than 128 characters is
//! an input error, exit 2), so this transform does not check the length itself.

use image_syncer_plugin::core::catalogue::{typed_config, BuildError, ConfigValue};
use image_syncer_plugin::core::context::TransformContext;
use image_syncer_plugin::core::reference::ImageRef;
use image_syncer_plugin::core::schemars::JsonSchema;
use image_syncer_plugin::core::stage::{StageError, StageKind, TransformInput};
use image_syncer_plugin::{PluginFactory, Registrar, StageDeclaration, Transform};
use serde::Deserialize;

/// The settings under `config:`. Unknown keys are errors. `JsonSchema` (from
/// the `schemars` the kit re-exports) gives `--print-schema` its schema.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(crate = "image_syncer_plugin::core::schemars")]
struct TagSuffixConfig {
    /// Appended to every target tag: 1 or more of `[A-Za-z0-9_.-]`.
    suffix: String,
    /// Only images whose source repository name starts with one of these
    /// (`docker.io/library/busybox`, `quay.io/prometheus/node-exporter`,
    /// `oci:layouts/hello`). Empty or absent: every image.
    #[serde(default)]
    only_for: Vec<String>,
}

/// The transform itself.
pub struct TagSuffix {
    suffix: String,
    only_for: Vec<String>,
}

impl TagSuffix {
    fn applies_to(&self, source: &ImageRef) -> bool {
        let name = source.repository_name();
        self.only_for.is_empty() || self.only_for.iter().any(|p| name.starts_with(p.as_str()))
    }
}

impl Transform for TagSuffix {
    fn apply(&self, input: TransformInput<'_>) -> Result<ImageRef, StageError> {
        let Some(target) = input.target else {
            return Err(StageError::config(
                "tag-suffix needs a transform before it that computes the target, such as `retag`",
            ));
        };
        if !self.applies_to(&input.image.source) {
            return Ok(target);
        }
        let Some(tag) = target.tag() else {
            return Err(StageError::config(format!(
                "tag-suffix: target `{target}` has no tag to append `{}` to",
                self.suffix
            )));
        };
        if tag.ends_with(&self.suffix) {
            return Ok(target);
        }
        Ok(target.with_tag(&format!("{tag}{}", self.suffix)))
    }
}

/// The factory: the typed config checked, the transform built.
fn build(config: &ConfigValue, _cx: &TransformContext) -> Result<Box<dyn Transform>, BuildError> {
    let c: TagSuffixConfig = typed_config(StageKind::Transform, "tag-suffix", config)?;
    let valid = !c.suffix.is_empty()
        && c.suffix
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'));
    if !valid {
        return Err(BuildError::Config {
            kind: StageKind::Transform,
            plugin: "tag-suffix".into(),
            message: format!("`suffix` `{}` is not 1 or more of [A-Za-z0-9_.-]", c.suffix),
        });
    }
    Ok(Box::new(TagSuffix {
        suffix: c.suffix,
        only_for: c.only_for,
    }))
}

fn register(r: &mut Registrar) {
    r.register(StageDeclaration {
        name: "tag-suffix".into(),
        description: "Appends `suffix` to the target tag of every image, or of those whose source repository name starts with one of `onlyFor` (example plugin)".into(),
        example_config: "suffix: \"-mirror\"\nonlyFor: [\"docker.io/library/\"]\n".into(),
        config_schema: image_syncer_plugin::config_schema::<TagSuffixConfig>(),
        transport: None,
        factory: PluginFactory::transform(build),
    });
}

image_syncer_plugin::declare_plugin!(register);

#[cfg(test)]
mod tests;
