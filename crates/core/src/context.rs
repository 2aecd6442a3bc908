//! What a stage factory gets to build a stage from, besides its own config.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::definition::RegistrySettings;

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

/// Everything outside its own config that a stage may need. New inputs are
/// added here, not to the factory trait.
#[derive(Clone, Debug, Default)]
pub struct StageContext {
    /// Per-registry settings from the definition, keyed by host as written in references.
    pub registries: BTreeMap<String, RegistrySettings>,
    /// Registries (host[:port]) reached over plain HTTP, from flags and env.
    pub insecure_registries: Vec<String>,
    /// Credentials for the target registry (`--target-repo-auth-key`).
    pub target_credentials: Option<Credentials>,
    /// The target registry host those credentials are for.
    pub target_registry: Option<String>,
    /// Directory relative paths in the definition are resolved against.
    pub base_dir: PathBuf,
    /// Reference transports served by registered sources/sinks (`oci` for `oci:PATH`).
    pub transports: Vec<String>,
    /// Extra trusted CA certificates (PEM), with the file each came from
    /// (`--ca-file`), on top of the system's roots and `SSL_CERT_FILE`.
    pub ca_certificates: Vec<(String, Vec<u8>)>,
    /// The signing key reference given to the run, as written (what it
    /// means is the signer's business), if any.
    pub signing_key: Option<String>,
    /// The run's per-registry flow control: a plugin that reads what a
    /// registry says of its limits (`ratelimit-remaining`) passes it on here.
    pub flow: std::sync::Arc<crate::flow::FlowControl>,
}

impl StageContext {
    /// Where to connect for `registry`, and whether over plain HTTP.
    pub fn endpoint_for(&self, registry: &str) -> (String, bool) {
        let settings = self.registries.get(registry);
        let endpoint = settings
            .and_then(|s| s.endpoint.clone())
            .unwrap_or_else(|| registry.to_string());
        let insecure = settings.and_then(|s| s.insecure).unwrap_or(false)
            || self
                .registries
                .get(&endpoint)
                .and_then(|s| s.insecure)
                .unwrap_or(false)
            || self
                .insecure_registries
                .iter()
                .any(|h| h == registry || *h == endpoint);
        (endpoint, insecure)
    }

    /// Parses a reference, recognising the registered transports.
    pub fn parse_ref(
        &self,
        s: &str,
    ) -> Result<crate::reference::ImageRef, crate::reference::RefParseError> {
        let t: Vec<&str> = self.transports.iter().map(String::as_str).collect();
        crate::reference::ImageRef::parse_with_transports(s, &t)
    }

    /// Resolves a path from the definition.
    pub fn resolve_path(&self, path: &str) -> PathBuf {
        let p = PathBuf::from(path);
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }
}
