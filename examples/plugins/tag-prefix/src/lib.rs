//! Example dynamic plugin: a **selector**. For an entry naming a repository,
//! it chooses the tags that start with one of `prefixes`, highest name
//! first, at most `max` of them.
//!
//! ```yaml
//! plugins: ["libimage_syncer_example_tag_prefix.so"]
//! images:
//! - source: quay.io/prometheus/prometheus     # a repository: no tag
//!   pipeline:
//!     selector: { plugin: tag-prefix, config: { prefixes: ["v2."], max: 2 } }
//! ```
//!
//! The core lists the repository's tags through the entry's source and hands
//! them over without the tags that attach artifacts to a digest
//! (`sha256-<hex>.sig`, ...); each tag chosen becomes an image of the run,
//! with every safety rule. Choosing nothing fails the entry (exit 1); a bad
//! config is an input error (exit 2) before anything is read.

use image_syncer_plugin::core::catalogue::{typed_config, BuildError, ConfigValue};
use image_syncer_plugin::core::context::SelectorContext;
use image_syncer_plugin::core::schemars::JsonSchema;
use image_syncer_plugin::core::stage::{StageError, StageKind};
use image_syncer_plugin::{PluginFactory, Registrar, Selector, StageDeclaration};
use serde::Deserialize;

/// The settings under `config:`. Unknown keys are errors.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "image_syncer_plugin::core::schemars")]
struct TagPrefixConfig {
    /// A tag is chosen when it starts with one of these (at least one).
    prefixes: Vec<String>,
    /// At most this many tags, the highest names first (default: all).
    #[serde(default)]
    max: Option<usize>,
}

struct TagPrefix {
    prefixes: Vec<String>,
    max: usize,
}

impl Selector for TagPrefix {
    fn select(&self, tags: &[String]) -> Result<Vec<String>, StageError> {
        let mut chosen: Vec<String> = tags
            .iter()
            .filter(|t| self.prefixes.iter().any(|p| t.starts_with(p.as_str())))
            .cloned()
            .collect();
        chosen.sort_by(|a, b| b.cmp(a));
        chosen.dedup();
        chosen.truncate(self.max);
        Ok(chosen)
    }

    fn describe(&self) -> String {
        format!("tag-prefix {:?}, at most {}", self.prefixes, self.max)
    }
}

fn build(config: &ConfigValue, _cx: &SelectorContext) -> Result<Box<dyn Selector>, BuildError> {
    let c: TagPrefixConfig = typed_config(StageKind::Selector, "tag-prefix", config)?;
    if c.prefixes.is_empty() || c.max == Some(0) {
        return Err(BuildError::Config {
            kind: StageKind::Selector,
            plugin: "tag-prefix".into(),
            message: "give at least one prefix, and a `max` of 1 or more".into(),
        });
    }
    Ok(Box::new(TagPrefix {
        prefixes: c.prefixes,
        max: c.max.unwrap_or(usize::MAX),
    }))
}

fn register(r: &mut Registrar) {
    r.register(StageDeclaration {
        name: "tag-prefix".into(),
        description: "Chooses the tags of a repository entry starting with one of `prefixes`, highest name first, at most `max` (example plugin)".into(),
        example_config: "prefixes: [\"v2.\"]\nmax: 2\n".into(),
        config_schema: image_syncer_plugin::config_schema::<TagPrefixConfig>(),
        transport: None,
        factory: PluginFactory::selector(build),
    });
}

image_syncer_plugin::declare_plugin!(register);

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn chooses_by_prefix_highest_first_up_to_max() {
        let s = TagPrefix {
            prefixes: vec!["v2.".into(), "stable".into()],
            max: 3,
        };
        let listed = tags(&["v1.9", "v2.1", "v2.10", "stable", "v2.2", "beta"]);
        assert_eq!(s.select(&listed).unwrap(), ["v2.2", "v2.10", "v2.1"]);
    }

    #[test]
    fn bad_configs_are_refused() {
        let refuse = |yaml: &str| match build(
            &image_syncer_plugin::core::definition::parse_config_yaml(yaml).unwrap(),
            &SelectorContext::default(),
        ) {
            Ok(_) => panic!("`{yaml}` was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(refuse("{ prefixes: [] }").contains("at least one prefix"));
        assert!(refuse("{ prefixes: [v], max: 0 }").contains("`max` of 1 or more"));
        assert!(refuse("{ prefix: [v] }").contains("unknown field `prefix`"));
    }
}
