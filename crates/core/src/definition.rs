//! The definition file (`--images-file`): its model and its parser. This is the
//! one module that reads YAML.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::context::{EcrSettings, TagMutability};
use crate::reference::ImageRef;
use crate::stage::StageKind;

use model::*;

/// Per-registry settings, keyed by the registry host as written in references.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistrySettings {
    /// Connect to this `host[:port]` instead; repository names are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Reach the registry over plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// User name for this registry (with `passwordEnv` or `passwordFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Environment variable holding the password (never the password itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// File holding the password (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Environment variable holding a bearer token (instead of user and password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// Log in with the cloud identity the run has (ECR, Artifact Registry
    /// and GCR, ACR) when no other credentials are found for this registry
    /// (default `true`); `false` reads it anonymously instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_auth: Option<bool>,
    /// Mount blobs this registry holds in another repository instead of
    /// uploading them (default: `true`, except ECR, where mounting needs the
    /// account's `BLOB_MOUNTING` setting, and Artifact Registry, which never
    /// mounts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<bool>,
    /// Amazon ECR settings of this registry (an ECR host only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecr: Option<EcrSettings>,
}

/// `retry:`: how transient registry failures are retried.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetrySettings {
    /// Retries after the first try (default 6; `--retries` wins).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Delay before the first retry, doubled each time (default 200).
    #[serde(default)]
    pub base_delay_ms: Option<u64>,
    /// Longest single backoff delay (default 10000); a registry's
    /// `Retry-After` may ask for longer and is honoured.
    #[serde(default)]
    pub max_delay_ms: Option<u64>,
    /// No retry starts after this long since the first try (default 120); a
    /// `Retry-After` reaching past it fails the operation at once.
    #[serde(default)]
    pub budget_seconds: Option<u64>,
}

/// The plugin libraries a definition asks for, resolved against its directory.
/// Errors are reported when the whole file is parsed; here a file that does not
/// parse simply lists no plugins.
pub fn plugin_list(path: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    serde_yaml::from_str::<PluginsOnly>(&text)
        .map(|p| p.plugins.iter().map(|s| base.join(s)).collect())
        .unwrap_or_default()
}

/// The plugin reading an entry's `tags:`.
pub const TAGS_SELECTOR: &str = "tags";

/// A stage choice: plugin name, its config, and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageSpec {
    pub plugin: String,
    pub config: serde_json::Value,
    /// Where in the definition (`pipeline.signer`, `pipeline.guards[1]`), if it came from one.
    pub at: Option<String>,
    pub line: Option<usize>,
}

impl StageSpec {
    pub fn named(plugin: &str) -> StageSpec {
        StageSpec {
            plugin: plugin.to_string(),
            config: serde_json::Value::Null,
            at: None,
            line: None,
        }
    }
}

/// Which plugins make up the pipeline. Sources and sinks left `None` are
/// chosen per reference by transport (`oci:` → the plugin serving `oci`,
/// registry references → the plugin serving none).
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineSpec {
    pub source: Option<StageSpec>,
    pub transforms: Vec<StageSpec>,
    pub guards: Vec<StageSpec>,
    pub sink: Option<StageSpec>,
    pub signer: StageSpec,
}

impl Default for PipelineSpec {
    /// The documented default pipeline: source by transport → `retag` →
    /// `immutable` → sink by transport → `cosign` (for images with `sign`).
    fn default() -> Self {
        PipelineSpec {
            source: None,
            transforms: vec![StageSpec::named("retag")],
            guards: vec![StageSpec::named("immutable")],
            sink: None,
            signer: StageSpec::named("cosign"),
        }
    }
}

/// One image of the definition, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// Position in `images:` (0-based).
    pub index: usize,
    /// Line of the entry in the definition file, when it could be located.
    pub line: Option<usize>,
    pub source: ImageRef,
    /// The `tag:` of the entry (re-tag; required for digest sources).
    pub tag: Option<String>,
    /// Whether this image is signed (per-image value, else the global one).
    pub sign: bool,
    /// The `targetRepoPrefix` that applies to this image.
    pub target_prefix: String,
    /// This image's own sink (`images[].pipeline.sink`), over the pipeline's.
    pub sink: Option<StageSpec>,
    /// This image's own signer (`images[].pipeline.signer`), over the pipeline's.
    pub signer: Option<StageSpec>,
    /// This image's own guards (`images[].pipeline.guards`), run after the
    /// pipeline's.
    pub guards: Vec<StageSpec>,
    /// Set for an entry naming a repository whose tags a rule selects
    /// (`tags:`, or `images[].pipeline.selector`): the selector; `source`
    /// then has no tag. The orchestrator expands such an entry into one
    /// image per selected tag ([`ImageSpec::with_selected_tag`]).
    pub selector: Option<StageSpec>,
    /// Platforms to keep of a multi-platform image (`os/arch[/variant]`); empty = all.
    pub platforms: Vec<String>,
    /// Copy the source's cosign artifacts and referrers tag for the synced digest.
    pub carry_signatures: bool,
}

impl ImageSpec {
    /// The image of this repository entry for one selected tag: the same
    /// settings, the source tagged, no selector.
    pub fn with_selected_tag(&self, tag: &str) -> ImageSpec {
        ImageSpec {
            source: self.source.with_tag(tag),
            selector: None,
            ..self.clone()
        }
    }

    /// What transforms and guards see of this image.
    pub fn entry(&self) -> crate::stage::ImageEntry {
        let entry = crate::stage::ImageEntry::new(self.source.clone(), self.target_prefix.clone());
        match &self.tag {
            Some(t) => entry.with_tag(t.clone()),
            None => entry,
        }
    }
}

/// A parsed and validated definition.
#[derive(Clone, Debug)]
pub struct Definition {
    pub path: PathBuf,
    pub target_repo_prefix: String,
    pub images: Vec<ImageSpec>,
    pub registries: BTreeMap<String, RegistrySettings>,
    /// The `pipeline:` section over the default pipeline.
    pub pipeline: PipelineSpec,
    /// Plugin libraries (`plugins:`), resolved against the definition's directory.
    pub plugins: Vec<PathBuf>,
    /// `jobs:`: images (and blobs per image) worked on at once.
    pub jobs: Option<usize>,
    /// `retry:`: retry settings.
    pub retry: RetrySettings,
}

impl Definition {
    /// The directory relative paths in the definition are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

/// A definition that cannot be used. Every variant names the file; most name a line.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("{path}: cannot read the definition file: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: the definition file is empty; it needs at least `targetRepoPrefix` and `images`"
    )]
    Empty { path: String },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Document { path: String, message: String },
    #[error("{}: {message}", Location { path, line: *line, what })]
    Invalid {
        path: String,
        line: Option<usize>,
        what: String,
        message: String,
    },
}

struct Location<'a> {
    path: &'a str,
    line: Option<usize>,
    what: &'a str,
}

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.path, self.what),
            None => write!(f, "{}: {}", self.path, self.what),
        }
    }
}

/// Reads and validates a definition file. `transports` are the reference
/// transports the stage catalogue serves (`oci` for `oci:PATH`).
pub fn load(path: &Path, transports: &[&str]) -> Result<Definition, DefinitionError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, path, transports)
}

/// Parses definition text; `path` is used in messages and for relative paths.
pub fn parse(text: &str, path: &Path, transports: &[&str]) -> Result<Definition, DefinitionError> {
    let shown = path.display().to_string();
    if text.trim().is_empty()
        || text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(DefinitionError::Empty { path: shown });
    }
    let model: FileModel = serde_yaml::from_str(text).map_err(|e| match e.location() {
        Some(loc) => DefinitionError::Syntax {
            path: shown.clone(),
            line: loc.line(),
            column: loc.column(),
            message: strip_location(&e.to_string()),
        },
        None => DefinitionError::Document {
            path: shown.clone(),
            message: e.to_string(),
        },
    })?;

    let prefix_line = find_line(text, "targetRepoPrefix", 0);
    if model.target_repo_prefix.trim().is_empty() {
        return Err(DefinitionError::Invalid {
            path: shown,
            line: prefix_line,
            what: "targetRepoPrefix".into(),
            message:
                "must name the target registry and path, for example `registry.example.com/mirror/`"
                    .into(),
        });
    }
    for (host, settings) in &model.registries {
        let line = find_line(text, host, 0);
        let invalid = |message: String| DefinitionError::Invalid {
            path: shown.clone(),
            line,
            what: format!("registries.{host}"),
            message,
        };
        if !is_host(host) {
            return Err(invalid("is not a registry host[:port]".into()));
        }
        if let Some(ep) = &settings.endpoint {
            if !is_host(ep) {
                return Err(invalid(format!(
                    "endpoint `{ep}` is not a host[:port] (no scheme, no path)"
                )));
            }
        }
    }

    if model.jobs == Some(0) {
        return Err(DefinitionError::Invalid {
            path: shown,
            line: find_line(text, "jobs:", 0),
            what: "jobs".into(),
            message: "must be at least 1".into(),
        });
    }
    let global_sign = model.sign.unwrap_or(false);
    let mut images = Vec::with_capacity(model.images.len());
    let mut search_from = 0;
    for (index, m) in model.images.into_iter().enumerate() {
        let line = find_line(text, &m.source, search_from);
        if let Some(l) = line {
            search_from = l + 1;
        }
        let invalid = |message: String| DefinitionError::Invalid {
            path: shown.clone(),
            line,
            what: format!("images[{index}] (source `{}`)", m.source),
            message,
        };
        let source = ImageRef::parse_with_transports(&m.source, transports)
            .map_err(|e| invalid(e.to_string()))?;
        if let Some(tag) = &m.tag {
            // Reuse the reference grammar for the tag.
            ImageRef::parse(&format!("x:{tag}"))
                .map_err(|_| invalid(format!("tag `{tag}` is invalid: a tag is 1 to 128 characters of [A-Za-z0-9_.-] and does not start with `.` or `-`")))?;
        }
        let selects = m.tags.is_some() || m.pipeline.as_ref().is_some_and(|p| p.selector.is_some());
        if selects {
            if m.tags.is_some() && m.pipeline.as_ref().is_some_and(|p| p.selector.is_some()) {
                return Err(invalid(
                    "`tags:` and `pipeline.selector` cannot both be given; `tags:` is the `tags` selector's config".into(),
                ));
            }
            if m.tag.is_some() {
                return Err(invalid(
                    "`tag:` and `tags:` cannot both be given: each selected tag is mirrored under its own name".into(),
                ));
            }
            if source.tag().is_some() || source.digest().is_some() {
                return Err(invalid(
                    "with `tags:` the source names a repository: remove its tag or digest".into(),
                ));
            }
        } else if source.digest().is_some() && source.tag().is_none() && m.tag.is_none() {
            return Err(invalid(
                "the source is pinned by digest, so the entry needs a `tag:` for the target".into(),
            ));
        }
        if !selects && source.digest().is_none() && source.tag().is_none() {
            if source.transport().is_none() {
                return Err(invalid(
                    "the source has neither tag nor digest; write the tag explicitly (for example `:latest`), or select tags with `tags:`".into(),
                ));
            }
            if m.tag.is_none() {
                return Err(invalid(
                    "the source names no tag, so the entry needs a `tag:` for the target".into(),
                ));
            }
        }
        let tags_rule = match m.tags {
            None => None,
            Some(rule) => {
                let mut from = line.unwrap_or(0);
                let model = StageModel {
                    plugin: TAGS_SELECTOR.into(),
                    config: rule,
                };
                let mut spec = stage_spec(
                    model,
                    text,
                    &shown,
                    format!("images[{index}].tags"),
                    &mut from,
                )?;
                spec.line = find_line(text, "tags:", line.unwrap_or(0)).or(line);
                Some(spec)
            }
        };
        let (sink, signer, selector, guards) = match m.pipeline {
            None => (None, None, tags_rule, Vec::new()),
            Some(p) => {
                let mut from = line.unwrap_or(0);
                let mut one = |model: Option<StageModel>, at: &str| {
                    model
                        .map(|m| {
                            let at = format!("images[{index}].pipeline.{at}");
                            stage_spec(m, text, &shown, at, &mut from)
                        })
                        .transpose()
                };
                let selector = one(p.selector, "selector")?.or(tags_rule);
                let (sink, signer) = (one(p.sink, "sink")?, one(p.signer, "signer")?);
                let mut guards = Vec::new();
                for (i, g) in p.guards.into_iter().flatten().enumerate() {
                    let at = format!("images[{index}].pipeline.guards[{i}]");
                    guards.push(stage_spec(g, text, &shown, at, &mut from)?);
                }
                (sink, signer, selector, guards)
            }
        };
        let platforms = match (m.amd64_only, &m.platforms) {
            (Some(true), Some(_)) => {
                return Err(invalid(
                    "`amd64Only` and `platforms` cannot both be given; use `platforms`".into(),
                ))
            }
            (Some(true), None) => vec!["linux/amd64".to_string()],
            (_, Some(p)) => p.clone(),
            (_, None) => model.platforms.clone().unwrap_or_default(),
        };
        for p in &platforms {
            if !is_platform(p) {
                return Err(invalid(format!(
                    "platform `{p}` is not `os/arch` or `os/arch/variant` (for example `linux/arm64/v8`)"
                )));
            }
        }
        images.push(ImageSpec {
            index,
            line,
            source,
            tag: m.tag,
            sign: m.sign.unwrap_or(global_sign),
            target_prefix: model.target_repo_prefix.clone(),
            sink,
            signer,
            guards,
            selector,
            platforms,
            carry_signatures: m
                .carry_signatures
                .or(model.carry_signatures)
                .unwrap_or(false),
        });
    }
    let pipeline = match model.pipeline {
        None => PipelineSpec::default(),
        Some(p) => pipeline_spec(p, text, &shown)?,
    };
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(Definition {
        path: path.to_path_buf(),
        target_repo_prefix: model.target_repo_prefix,
        images,
        registries: model.registries,
        pipeline,
        plugins: model.plugins.iter().map(|p| base.join(p)).collect(),
        jobs: model.jobs,
        retry: model.retry.unwrap_or_default(),
    })
}

/// A stage as written, with the line of its `plugin:` (searched from `from`).
fn stage_spec(
    m: StageModel,
    text: &str,
    shown: &str,
    at: String,
    from: &mut usize,
) -> Result<StageSpec, DefinitionError> {
    let line = find_line(text, &m.plugin, *from);
    if let Some(l) = line {
        *from = l + 1;
    }
    let config = serde_json::to_value(&m.config).map_err(|e| DefinitionError::Invalid {
        path: shown.to_string(),
        line,
        what: format!("{at} (plugin `{}`)", m.plugin),
        message: format!("config must be a map with string keys: {e}"),
    })?;
    Ok(StageSpec {
        plugin: m.plugin,
        config,
        at: Some(at),
        line,
    })
}

fn pipeline_spec(
    p: PipelineModel,
    text: &str,
    shown: &str,
) -> Result<PipelineSpec, DefinitionError> {
    // The top-level key, not an image's `pipeline:`.
    let mut from = text
        .lines()
        .position(|l| l.starts_with("pipeline:"))
        .map(|i| i + 1)
        .unwrap_or(0);
    let mut stage = |m: StageModel, at: String| stage_spec(m, text, shown, at, &mut from);
    let mut spec = PipelineSpec::default();
    // Document order of the section's keys is not known here; look each up in turn.
    if let Some(s) = p.source {
        spec.source = Some(stage(s, "pipeline.source".into())?);
    }
    if let Some(ts) = p.transforms {
        spec.transforms = ts
            .into_iter()
            .enumerate()
            .map(|(i, t)| stage(t, format!("pipeline.transforms[{i}]")))
            .collect::<Result<_, _>>()?;
    }
    if let Some(gs) = p.guards {
        spec.guards = gs
            .into_iter()
            .enumerate()
            .map(|(i, g)| stage(g, format!("pipeline.guards[{i}]")))
            .collect::<Result<_, _>>()?;
    }
    if let Some(s) = p.sink {
        spec.sink = Some(stage(s, "pipeline.sink".into())?);
    }
    if let Some(s) = p.signer {
        spec.signer = stage(s, "pipeline.signer".into())?;
    }
    Ok(spec)
}

/// Parses a plugin's YAML config text (for example a plugin's example config).
pub fn parse_config_yaml(text: &str) -> Result<serde_json::Value, String> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_yaml::from_str(text).map_err(|e| e.to_string())
}

/// Renders a config (a value, or a plugin's typed config) as YAML.
pub fn config_to_yaml<T: Serialize + ?Sized>(value: &T) -> String {
    serde_yaml::to_string(value).unwrap_or_else(|e| format!("# unrenderable: {e}\n"))
}

fn strip_location(msg: &str) -> String {
    // serde_yaml appends " at line L column C"; the location is shown in front.
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn is_platform(p: &str) -> bool {
    let parts: Vec<&str> = p.split('/').collect();
    (parts.len() == 2 || parts.len() == 3)
        && parts.iter().all(|x| {
            !x.is_empty()
                && x.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' || c == '.'
                })
        })
}

fn is_host(s: &str) -> bool {
    crate::reference::is_valid_host(s)
}

/// The 1-based line of the first occurrence of `needle` at or after line `from` (1-based).
fn find_line(text: &str, needle: &str, from: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, l)| {
            let code = l.split(" #").next().unwrap_or(l);
            code.contains(needle)
        })
        .map(|(i, _)| i + 1)
}

mod access;
mod model;
mod schema;
pub use schema::json_schema;

#[cfg(test)]
mod tests;
