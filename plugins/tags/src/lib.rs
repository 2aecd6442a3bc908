//! `tags`: which tags of a repository an images entry mirrors (issue #12).
//!
//! An entry whose source is a repository (no tag, no digest) may carry a rule:
//!
//! ```yaml
//! images:
//! - source: "quay.io/prometheus/prometheus"
//!   tags:
//!     semver: ">=2.50, <3"        # a requirement in the `semver` crate's syntax
//!     regex: ["v2\\.5\\d\\..*"]   # full-match patterns; a tag must match at least one
//!     exclude: [".*-rc.*"]        # full-match patterns; a tag matching any is dropped
//!     newest: 3                   # then keep the 3 highest
//! ```
//!
//! A tag is selected when it satisfies `semver` (if given), matches at least one `regex`
//! (if given) and matches no `exclude`; `newest: N` then keeps the N highest. At least one of
//! `semver`, `regex` (a non-empty list) and `newest` is required; `regex: [".*"]` means every
//! tag. Patterns match the whole tag: `v2\.5\d\..*` is read as `^(?:v2\.5\d\..*)$`.
//!
//! # Tags read as versions
//!
//! [`tag_version`] reads a tag as a semantic version: an optional leading `v`, then either
//! `MAJOR.MINOR` (read as `MAJOR.MINOR.0`, with an optional `-pre-release` / `+build` after it)
//! or the semver grammar. Anything else is not a version.
//!
//! | tag              | version read       | note                                                        |
//! |------------------|--------------------|-------------------------------------------------------------|
//! | `v2.53.1`        | `2.53.1`           | a leading `v` is dropped                                    |
//! | `2.53.1`         | `2.53.1`           | another tag than `v2.53.1`, with the same precedence        |
//! | `2.53`           | `2.53.0`           | two parts: the patch is 0                                   |
//! | `v3.19`          | `3.19.0`           |                                                             |
//! | `1.2.3-rc.1`     | `1.2.3-rc.1`       | a pre-release                                               |
//! | `16.4-alpine`    | `16.4.0-alpine`    | a suffix is a pre-release: `>=16` does not match it          |
//! | `1.25.3-debian`  | `1.25.3-debian`    | likewise                                                    |
//! | `1.2.3+build.5`  | `1.2.3+build.5`    | build metadata, ignored by precedence and requirements      |
//! | `1`              | not a version      | a single number is not read as `1.0.0` (it usually names a moving tag) |
//! | `1.2.3.4`        | not a version      | four parts                                                  |
//! | `01.2.3`         | not a version      | a leading zero                                              |
//! | `latest`, `stable`, `main` | not a version |                                                        |
//!
//! A requirement without a pre-release never matches a pre-release (as Cargo does), so
//! `semver: ">=16"` does not select `16.4-alpine`. To select suffixed variants, use `regex`
//! (`regex: ["16\\.\\d+-alpine"]`). A requirement naming a pre-release
//! (`semver: ">=16.4.0-alpine, <16.5"`) matches pre-releases of that `MAJOR.MINOR.PATCH` only,
//! and compares suffixes as text, so it selects `16.4-debian` too. A tag that is not a version
//! never satisfies `semver`.
//!
//! # Order and `newest`
//!
//! Selected tags come highest first: versions by semver precedence, then tags that are not
//! versions; ties (`1.2.3` and `v1.2.3`, or versions differing only in build metadata) and tags
//! that are not versions are ordered by name, descending. `newest: N` keeps the first N of that
//! order. `v1.2.3` and `1.2.3` are two different tags (two images): both count towards `newest`.
//! A tag listed twice is selected once.
//!
//! # Tags that are never selected
//!
//! Cosign artifacts (`sha256-<64 hex>.sig`, `.att`, `.sbom`) and referrers-tag-schema tags
//! (`sha256-<64 hex>`) are not images of their own: no rule selects them, not even
//! `regex: [".*"]`. `carrySignatures` carries them with the image they belong to.

use std::cmp::Ordering;
use std::fmt;

use std::sync::Arc;

use image_syncer_core::catalogue::{
    config_schema, typed_config, BuildError, ConfigDoc, ConfigValue, Factory, StagePlugin,
};
use image_syncer_core::context::SelectorContext;
use image_syncer_core::definition::config_to_yaml;
use image_syncer_core::digest::AttachedTag;
use image_syncer_core::stage::{Selector, StageError, StageKind};
use regex::Regex;
use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};

/// The `tags:` rule of an images entry: which tags of the source repository become images.
#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TagsConfig {
    /// A version requirement in the `semver` crate's syntax (`">=2.50, <3"`, `"~1.8"`, `"^3"`):
    /// only tags read as versions that satisfy it are selected. A tag's leading `v` is dropped
    /// and `MAJOR.MINOR` is read as `MAJOR.MINOR.0`; suffixed tags (`16.4-alpine`) are
    /// pre-releases, which a requirement without a pre-release does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    /// Regular expressions matching the whole tag (`"v2\\.5\\d\\..*"`): a tag must match at
    /// least one. `[".*"]` means every tag.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regex: Vec<String>,
    /// Regular expressions matching the whole tag (`".*-rc.*"`): a tag matching any is dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Keep only the N highest selected tags, by semver precedence (tags that are not versions
    /// come after every version). At least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub newest: Option<usize>,
}

/// Why a `tags:` rule cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// None of `semver`, `regex` and `newest` is given.
    #[error(
        "a tags rule needs `semver`, `regex` or `newest`; write `regex: [\".*\"]` for every tag"
    )]
    NoSelector,
    /// `newest: 0`.
    #[error("`newest: 0` would select no tag; write `newest: 1` or more, or leave it out")]
    NewestZero,
    /// A pattern of `regex` or `exclude` is not a valid regular expression.
    #[error("invalid {field} pattern `{pattern}`: {message}")]
    Regex {
        /// `regex` or `exclude`.
        field: &'static str,
        pattern: String,
        /// The regex crate's error, on one line.
        message: String,
    },
    /// `semver` is not a valid version requirement.
    #[error("invalid semver requirement `{requirement}`: {source}; write e.g. `>=1.2, <2`")]
    Semver {
        requirement: String,
        #[source]
        source: semver::Error,
    },
}

/// A checked `tags:` rule, ready to select.
#[derive(Clone, Debug)]
pub struct TagRule {
    config: TagsConfig,
    semver: Option<VersionReq>,
    regex: Vec<Regex>,
    exclude: Vec<Regex>,
}

impl TagRule {
    /// Checks `config`: at least one of `semver`, `regex`, `newest`; `newest` at least 1; every
    /// pattern and the requirement valid.
    pub fn new(config: &TagsConfig) -> Result<TagRule, RuleError> {
        if config.semver.is_none() && config.regex.is_empty() && config.newest.is_none() {
            return Err(RuleError::NoSelector);
        }
        if config.newest == Some(0) {
            return Err(RuleError::NewestZero);
        }
        let semver = match &config.semver {
            Some(req) => Some(VersionReq::parse(req).map_err(|source| RuleError::Semver {
                requirement: req.clone(),
                source,
            })?),
            None => None,
        };
        Ok(TagRule {
            config: config.clone(),
            semver,
            regex: full_matches("regex", &config.regex)?,
            exclude: full_matches("exclude", &config.exclude)?,
        })
    }

    /// The rule as written.
    pub fn config(&self) -> &TagsConfig {
        &self.config
    }

    /// Whether `tag` passes `semver`, `regex` and `exclude` (not `newest`, which depends on the
    /// other tags). Attached-artifact tags never pass.
    pub fn matches(&self, tag: &str) -> bool {
        if is_attached_tag(tag) {
            return false;
        }
        if let Some(req) = &self.semver {
            match tag_version(tag) {
                Some(v) if req.matches(&v) => {}
                _ => return false,
            }
        }
        if !self.regex.is_empty() && !self.regex.iter().any(|r| r.is_match(tag)) {
            return false;
        }
        !self.exclude.iter().any(|r| r.is_match(tag))
    }

    /// The tags of `tags` the rule selects, highest first (see the crate docs for the order),
    /// each once, at most `newest` of them.
    pub fn select(&self, tags: &[String]) -> Vec<String> {
        let mut selected: Vec<(Option<Version>, &String)> = tags
            .iter()
            .filter(|t| self.matches(t))
            .map(|t| (tag_version(t), t))
            .collect();
        selected.sort_by(|a, b| highest_first((&a.0, a.1), (&b.0, b.1)));
        selected.dedup_by(|a, b| a.1 == b.1);
        if let Some(n) = self.config.newest {
            selected.truncate(n);
        }
        selected.into_iter().map(|(_, t)| t.clone()).collect()
    }
}

/// Compiles each pattern of `field` as a full match.
fn full_matches(field: &'static str, patterns: &[String]) -> Result<Vec<Regex>, RuleError> {
    patterns
        .iter()
        .map(|pattern| {
            let error = |e: regex::Error| RuleError::Regex {
                field,
                pattern: pattern.clone(),
                message: one_line(&e),
            };
            // The pattern alone first, so that an error shows the pattern as written.
            Regex::new(pattern).map_err(error)?;
            Regex::new(&format!("^(?:{pattern})$")).map_err(error)
        })
        .collect()
}

/// The regex crate's syntax errors span lines (the pattern, a caret, `error: ...`): keep the
/// `error:` line, which says what is wrong; the pattern is named by the caller.
fn one_line(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Highest first: versions by precedence (build metadata ignored), then tags that are not
/// versions; ties by name, descending.
fn highest_first(a: (&Option<Version>, &String), b: (&Option<Version>, &String)) -> Ordering {
    let precedence = match (a.0, b.0) {
        (Some(x), Some(y)) => {
            (x.major, x.minor, x.patch, &x.pre).cmp(&(y.major, y.minor, y.patch, &y.pre))
        }
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => Ordering::Equal,
    };
    precedence.then_with(|| a.1.cmp(b.1)).reverse()
}

/// `tag` read as a version (see the table in the crate docs): an optional leading `v`, then
/// `MAJOR.MINOR[-pre][+build]` (patch 0) or a semantic version. A single number (`1`) is not a
/// version: such tags usually move with every release of their major.
pub fn tag_version(tag: &str) -> Option<Version> {
    let s = tag.strip_prefix('v').unwrap_or(tag);
    if let Ok(v) = Version::parse(s) {
        return Some(v);
    }
    let end = s.find(['-', '+']).unwrap_or(s.len());
    let (core, rest) = s.split_at(end);
    let mut parts = core.split('.');
    let (_major, _minor) = (parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    // Through the semver parser again, so its rules on numbers (digits, no leading zero) hold.
    Version::parse(&format!("{core}.0{rest}")).ok()
}

/// Whether `tag` names an artifact attached to an image rather than an image: a cosign
/// signature, attestation or SBOM (`sha256-<64 hex>.sig`, `.att`, `.sbom`) or a
/// referrers-tag-schema index (`sha256-<64 hex>`).
// The rule is the core's, the one carrying and signing use.
fn is_attached_tag(tag: &str) -> bool {
    AttachedTag::parse(tag).is_some()
}

/// One line: `semver ">=2.50, <3", regex ["v2\\.5\\d\\..*"], exclude [".*-rc.*"], newest 3`
/// (the parts given, in that order).
impl fmt::Display for TagRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let mut parts = Vec::new();
        if let Some(req) = &c.semver {
            parts.push(format!("semver {req:?}"));
        }
        if !c.regex.is_empty() {
            parts.push(format!("regex {:?}", c.regex));
        }
        if !c.exclude.is_empty() {
            parts.push(format!("exclude {:?}", c.exclude));
        }
        if let Some(n) = c.newest {
            parts.push(format!("newest {n}"));
        }
        f.write_str(&parts.join(", "))
    }
}

// ---------------------------------------------------------------------------
// The `tags` selector

/// The built-in selector: an entry's `tags:` rule.
struct TagsSelector(TagRule);

impl Selector for TagsSelector {
    fn select(&self, tags: &[String]) -> Result<Vec<String>, StageError> {
        Ok(self.0.select(tags))
    }
    fn describe(&self) -> String {
        self.0.to_string()
    }
}

fn build(config: &ConfigValue, _cx: &SelectorContext) -> Result<Arc<dyn Selector>, BuildError> {
    let config: TagsConfig = typed_config(StageKind::Selector, "tags", config)?;
    let rule = TagRule::new(&config).map_err(|e| BuildError::Config {
        kind: StageKind::Selector,
        plugin: "tags".into(),
        message: e.to_string(),
    })?;
    Ok(Arc::new(TagsSelector(rule)))
}

/// `--list-stages`' example: a rule that builds (the empty default would not).
fn example() -> String {
    config_to_yaml(&TagsConfig {
        semver: Some(">=1.2, <2".into()),
        regex: Vec::new(),
        exclude: vec![".*-rc.*".into()],
        newest: Some(3),
    })
}

image_syncer_core::inventory::submit! {
    StagePlugin {
        name: "tags",
        description: "Selects the tags of a repository entry by its `tags:` rule: semver requirement, full-match regex and exclude patterns, then the newest N",
        config: ConfigDoc {
            schema: config_schema::<TagsConfig>,
            example,
        },
        transport: None,
        factory: || Factory::selector(build),
    }
}

#[cfg(test)]
mod tests;
