//! `retag`: the original tool's naming rules, as the first transform.
//!
//! target = `targetRepoPrefix` + the source repository path as written + `:` + tag
//! - the registry host is part of the path when the source names one
//!   (`gcr.io/google-containers/pause:3.2` → `<prefix>gcr.io/google-containers/pause:3.2`);
//!   a `:port` in that host becomes `_port` (`localhost:5000/app` → `<prefix>localhost_5000/app`),
//!   since `:` cannot appear in a repository path;
//! - a single-segment Docker Hub name gains `library/` (`busybox` → `<prefix>library/busybox`);
//! - a transport source (`oci:DIR[:tag]`) contributes the last component of DIR;
//! - the tag is the entry's `tag:` when given, else the source tag; a digest
//!   source without `tag:` is an error.

use std::sync::Arc;

use image_syncer_core::catalogue::{
    typed_config, BuildError, ConfigDoc, ConfigValue, Factory, StagePlugin, TransformFactory,
};
use image_syncer_core::context::TransformContext;
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::{StageError, StageKind, Transform, TransformInput};
use serde::{Deserialize, Serialize};

/// `retag` has no settings: `config:` is empty or absent (an unknown key is an error).
#[derive(Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetagConfig {}

/// The naming rules above.
pub struct Retag {
    transports: Vec<String>,
}

impl Retag {
    pub fn new(transports: Vec<String>) -> Retag {
        Retag { transports }
    }

    /// The repository path of `source` as it appears in target names.
    pub fn target_path(source: &ImageRef) -> Result<String, StageError> {
        if source.transport().is_some() {
            let loc = source.repository_as_written().trim_end_matches(['/', '\\']);
            let last = loc.rsplit(['/', '\\']).next().unwrap_or(loc);
            return Ok(last.to_string());
        }
        Ok(match source.registry_as_written() {
            Some(host) => format!(
                "{}/{}",
                host.replace(':', "_"),
                source.repository_as_written()
            ),
            None => source.repository(),
        })
    }
}

impl Transform for Retag {
    fn apply(&self, input: TransformInput<'_>) -> Result<ImageRef, StageError> {
        let spec = input.image;
        let tag =
            match (&spec.tag, spec.source.tag()) {
                (Some(t), _) => t.clone(),
                (None, Some(t)) => t.to_string(),
                (None, None) => return Err(StageError::config(
                    "the source is pinned by digest, so the entry needs a `tag:` for the target",
                )),
            };
        let path = Self::target_path(&spec.source)?;
        let target = format!("{}{}:{}", spec.target_prefix, path, tag);
        let transports: Vec<&str> = self.transports.iter().map(String::as_str).collect();
        ImageRef::parse_with_transports(&target, &transports).map_err(|e| {
            StageError::config(format!(
                "target `{target}` is not a valid reference: {e} (check targetRepoPrefix)"
            ))
        })
    }
}

struct RetagFactory;

impl TransformFactory for RetagFactory {
    fn build(
        &self,
        config: &ConfigValue,
        cx: &TransformContext,
    ) -> Result<Arc<dyn Transform>, BuildError> {
        let _: RetagConfig = typed_config(StageKind::Transform, "retag", config)?;
        Ok(Arc::new(Retag::new(cx.transports.clone())))
    }
}

image_syncer_core::inventory::submit! {
    StagePlugin {
        name: "retag",
        description: "Computes the target: targetRepoPrefix + source path as written (library/ for single-segment Docker Hub names) + the entry's tag or the source tag",
        config: ConfigDoc::of::<RetagConfig>(),
        transport: None,
        factory: || Factory::transform(RetagFactory),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_syncer_core::stage::ImageEntry;

    fn retag(prefix: &str, source: &str, tag: Option<&str>) -> String {
        let source = ImageRef::parse_with_transports(source, &["oci"]).unwrap();
        let image = match tag {
            Some(t) => ImageEntry::new(source, prefix).with_tag(t),
            None => ImageEntry::new(source, prefix),
        };
        match Retag::new(vec!["oci".into()]).apply(TransformInput::new(&image, None)) {
            Ok(t) => t.to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn retag_table() {
        let cases = [
            ("external/prod/", "cypress/included:9.5.0", Some("latest")),
            (
                "external/prod/",
                "included@sha256:31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab",
                None,
            ),
            (
                "external/prod/",
                "included@sha256:31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab",
                Some("v1"),
            ),
            (
                "eu.gcr.io/kyma-project/external/",
                "bitnami/keycloak-gatekeeper:9.0.3",
                None,
            ),
            ("eu.gcr.io/kyma-project/external/", "busybox:1.36", None),
            (
                "eu.gcr.io/kyma-project/external/",
                "busybox@sha256:31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab",
                Some("1.32.0-v1"),
            ),
            (
                "eu.gcr.io/kyma-project/external/",
                "gcr.io/google-containers/pause:3.2",
                None,
            ),
            (
                "eu.gcr.io/kyma-project/external/",
                "docker.io/library/nginx:1.27",
                None,
            ),
            (
                "eu.gcr.io/kyma-project/external/",
                "docker.io/nginx:1.27",
                None,
            ),
            (
                "127.0.0.1:5000/mirror/",
                "localhost:5001/team/app:2.0",
                None,
            ),
            (
                "127.0.0.1:5000/mirror/",
                "quay.io/prometheus/node-exporter:v1.8.0",
                Some("v1.8.0-mirror"),
            ),
            ("oci:out/", "busybox:1.36", None),
            ("127.0.0.1:5000/mirror/", "oci:layouts/hello:1.0", None),
            ("Upper/", "busybox:1.36", None),
        ];
        let table: Vec<String> = cases
            .iter()
            .map(|(p, s, t)| {
                let t_shown = t.map(|t| format!(" (tag {t})")).unwrap_or_default();
                format!("{p} + {s}{t_shown} -> {}", retag(p, s, *t))
            })
            .collect();
        insta::assert_snapshot!(table.join("\n"));
    }
}
