//! What a stage factory gets to build a stage from, besides its own config:
//! one context per kind, each a part of the run's [`RunContext`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// A secret string. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The secret value. Call only where it is sent to its destination.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Credentials for one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    Basic { username: String, password: Secret },
    Bearer { token: Secret },
}

/// How one registry is reached, from the definition's `registries:` entry
/// (credentials already read from their environment variable or file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryAccess {
    /// Connect to this `host[:port]` instead (a mirror); repository names are unchanged.
    pub endpoint: Option<String>,
    /// Reach it over plain HTTP.
    pub insecure: bool,
    /// Log in with these.
    pub credentials: Option<Credentials>,
    /// `cloudAuth`: whether the cloud identity may log in here when nothing
    /// else is found (`None`: yes).
    pub cloud_auth: Option<bool>,
    /// `mount`: whether cross-repository mounts are tried (`None`: the
    /// registry kind's default, the plugin's business).
    pub mount: Option<bool>,
    /// `ecr`: ECR settings (repositories created on demand).
    pub ecr: Option<EcrSettings>,
}

impl RegistryAccess {
    /// Access through `endpoint`, over HTTPS, anonymous.
    pub fn new() -> RegistryAccess {
        RegistryAccess::default()
    }
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> RegistryAccess {
        self.endpoint = Some(endpoint.into());
        self
    }
    pub fn with_insecure(mut self, insecure: bool) -> RegistryAccess {
        self.insecure = insecure;
        self
    }
    pub fn with_credentials(mut self, credentials: Credentials) -> RegistryAccess {
        self.credentials = Some(credentials);
        self
    }
}

/// `registries.<host>.ecr`: what image-syncer may do to an ECR registry
/// besides pushing.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EcrSettings {
    /// Create a missing repository before its first push (default `false`).
    #[serde(default)]
    pub create_repositories: bool,
    /// Tag mutability of the repositories it creates (default `IMMUTABLE`).
    #[serde(default)]
    pub image_tag_mutability: TagMutability,
    /// Scan on push, for the repositories it creates (default `false`).
    #[serde(default)]
    pub scan_on_push: bool,
}

/// ECR's tag mutability of a repository.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagMutability {
    /// A tag, once pushed, cannot be moved (image-syncer's own promise).
    #[default]
    Immutable,
    /// Tags can be moved.
    Mutable,
}

/// The registries of a run, as sources and sinks reach them.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Registries {
    /// Per registry, keyed by host as written in references.
    pub hosts: BTreeMap<String, RegistryAccess>,
    /// Registries (`host[:port]`) reached over plain HTTP, given outside the
    /// definition (the command line, the environment).
    pub insecure: Vec<String>,
    /// The target registry and the credentials given for it outside the
    /// definition (a key file, an access token); they come before any other.
    pub target: Option<(String, Credentials)>,
    /// Extra trusted CA certificates (PEM), with the file each came from, on
    /// top of the system's roots and `SSL_CERT_FILE`.
    pub ca_certificates: Vec<(String, Vec<u8>)>,
    /// The run's per-registry flow control: a plugin that reads what a
    /// registry says of its limits (`ratelimit-remaining`) passes it on here.
    pub flow: std::sync::Arc<crate::flow::FlowControl>,
}

impl Registries {
    /// Where to connect for `registry`, and whether over plain HTTP.
    pub fn endpoint_for(&self, registry: &str) -> (String, bool) {
        let access = self.hosts.get(registry);
        let endpoint = access
            .and_then(|a| a.endpoint.clone())
            .unwrap_or_else(|| registry.to_string());
        let insecure = access.is_some_and(|a| a.insecure)
            || self.hosts.get(&endpoint).is_some_and(|a| a.insecure)
            || self
                .insecure
                .iter()
                .any(|h| h == registry || *h == endpoint);
        (endpoint, insecure)
    }

    /// The credentials the definition gives for `host`: its own entry's,
    /// else those of the first entry (by name) reached through `host` as
    /// its endpoint.
    pub fn configured_credentials(&self, host: &str) -> Option<&Credentials> {
        if let Some(c) = self.hosts.get(host).and_then(|a| a.credentials.as_ref()) {
            return Some(c);
        }
        self.hosts
            .iter()
            .filter(|(h, a)| a.credentials.is_some() && self.endpoint_for(h).0 == host)
            .find_map(|(_, a)| a.credentials.as_ref())
    }

    /// Whether the cloud identity may log in to `host` (as written in
    /// references) when nothing else is found: unless its entry says
    /// `cloudAuth: false`.
    pub fn cloud_auth(&self, host: &str) -> bool {
        self.hosts
            .get(host)
            .and_then(|a| a.cloud_auth)
            .unwrap_or(true)
    }

    /// The `mount` setting of `host`, if its entry has one.
    pub fn mount(&self, host: &str) -> Option<bool> {
        self.hosts.get(host).and_then(|a| a.mount)
    }

    /// The `ecr` settings of `host`, if its entry has them.
    pub fn ecr(&self, host: &str) -> Option<&EcrSettings> {
        self.hosts.get(host).and_then(|a| a.ecr.as_ref())
    }

    /// Every registry host the run knows of, as written: the definition's,
    /// the plain-HTTP ones and the target.
    pub fn known_hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts
            .keys()
            .map(String::as_str)
            .chain(self.insecure.iter().map(String::as_str))
            .chain(self.target.iter().map(|(h, _)| h.as_str()))
    }
}

/// What a source factory gets besides its config.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SourceContext {
    pub registries: Registries,
    /// Directory relative paths in the definition are resolved against.
    pub base_dir: PathBuf,
    /// Reference transports served by registered sources/sinks (`oci` for `oci:PATH`).
    pub transports: Vec<String>,
}

/// What a selector factory gets besides its config.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SelectorContext {
    /// Directory relative paths in the definition are resolved against.
    pub base_dir: PathBuf,
}

/// What a sink factory gets besides its config.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SinkContext {
    pub registries: Registries,
    /// Directory relative paths in the definition are resolved against.
    pub base_dir: PathBuf,
    /// Reference transports served by registered sources/sinks.
    pub transports: Vec<String>,
}

/// What a transform factory gets besides its config.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct TransformContext {
    /// Directory relative paths in the definition are resolved against.
    pub base_dir: PathBuf,
    /// Reference transports served by registered sources/sinks, for parsing
    /// the references a transform makes.
    pub transports: Vec<String>,
}

/// What a guard factory gets besides its config.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct GuardContext {
    /// Directory relative paths in the definition are resolved against.
    pub base_dir: PathBuf,
    /// Reference transports served by registered sources/sinks.
    pub transports: Vec<String>,
}

/// What a signer factory gets besides its config.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SignerContext {
    /// Directory relative paths in the definition are resolved against.
    pub base_dir: PathBuf,
    /// The signing key reference given to the run, as written (what it
    /// means is the signer's business), if any. A signer that needs one and
    /// finds none returns [`crate::catalogue::BuildError::MissingInput`].
    pub signing_key: Option<String>,
}

/// Everything a run gives its stages besides their configs; each factory
/// gets the part for its kind ([`RunContext::source`], ...). New inputs are
/// added here and to the kinds that use them, not to the factory traits.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RunContext {
    pub registries: Registries,
    /// Directory relative paths in the definition are resolved against.
    pub base_dir: PathBuf,
    /// Reference transports served by registered sources/sinks (`oci` for `oci:PATH`).
    pub transports: Vec<String>,
    /// The signing key reference given to the run, as written, if any.
    pub signing_key: Option<String>,
}

impl RunContext {
    pub fn source(&self) -> SourceContext {
        SourceContext {
            registries: self.registries.clone(),
            base_dir: self.base_dir.clone(),
            transports: self.transports.clone(),
        }
    }
    pub fn selector(&self) -> SelectorContext {
        SelectorContext {
            base_dir: self.base_dir.clone(),
        }
    }
    pub fn sink(&self) -> SinkContext {
        SinkContext {
            registries: self.registries.clone(),
            base_dir: self.base_dir.clone(),
            transports: self.transports.clone(),
        }
    }
    pub fn transform(&self) -> TransformContext {
        TransformContext {
            base_dir: self.base_dir.clone(),
            transports: self.transports.clone(),
        }
    }
    pub fn guard(&self) -> GuardContext {
        GuardContext {
            base_dir: self.base_dir.clone(),
            transports: self.transports.clone(),
        }
    }
    pub fn signer(&self) -> SignerContext {
        SignerContext {
            base_dir: self.base_dir.clone(),
            signing_key: self.signing_key.clone(),
        }
    }
}

/// Resolves `path` from the definition against `base_dir`.
pub fn resolve_path(base_dir: &std::path::Path, path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        p
    } else {
        base_dir.join(p)
    }
}

/// Parses a reference, recognising `transports`.
pub fn parse_ref(
    transports: &[String],
    s: &str,
) -> Result<crate::reference::ImageRef, crate::reference::RefParseError> {
    let t: Vec<&str> = transports.iter().map(String::as_str).collect();
    crate::reference::ImageRef::parse_with_transports(s, &t)
}

macro_rules! paths {
    ($($t:ty),*) => {$(
        impl $t {
            /// Resolves a path from the definition against its directory.
            pub fn resolve_path(&self, path: &str) -> PathBuf {
                resolve_path(&self.base_dir, path)
            }
        }
    )*};
}
paths!(
    SourceContext,
    SinkContext,
    TransformContext,
    GuardContext,
    SignerContext,
    RunContext
);

macro_rules! refs {
    ($($t:ty),*) => {$(
        impl $t {
            /// Parses a reference, recognising the registered transports.
            pub fn parse_ref(
                &self,
                s: &str,
            ) -> Result<crate::reference::ImageRef, crate::reference::RefParseError> {
                parse_ref(&self.transports, s)
            }
        }
    )*};
}
refs!(
    SourceContext,
    SinkContext,
    TransformContext,
    GuardContext,
    RunContext
);
