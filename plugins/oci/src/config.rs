//! The `oci` stage's settings (`OciConfig`), the same for source and sink.

use serde::{Deserialize, Serialize};

/// Settings of the `oci` source and sink.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OciConfig {
    /// Upload each blob in one streamed PUT (the default, as docker and skopeo
    /// do); `false` uploads in 4 MiB PATCH chunks, for registries that refuse
    /// large single requests. Either way memory stays constant.
    #[serde(default = "yes")]
    pub monolithic_push: bool,
    /// Seconds to wait for a connection to a registry.
    #[serde(default = "connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// Seconds a registry may stay silent: a short request (manifests, blob
    /// checks, mounts) not answered in full within it, or a blob download or
    /// upload that moves no byte for that long, ends as a transient failure
    /// and is retried. Long transfers that keep moving are never cut.
    #[serde(default = "read_timeout")]
    pub read_timeout_seconds: u64,
    /// The largest manifest read from a registry, in bytes (default 4 MiB,
    /// what the distribution registry accepts on push). A larger one is
    /// refused before it is read whole; raise it for registries that need
    /// more.
    #[serde(default = "max_manifest_bytes")]
    pub max_manifest_bytes: usize,
}

fn max_manifest_bytes() -> usize {
    image_syncer_core::manifest::DEFAULT_MAX_MANIFEST_BYTES
}

fn yes() -> bool {
    true
}

fn connect_timeout() -> u64 {
    30
}

fn read_timeout() -> u64 {
    60
}

impl Default for OciConfig {
    fn default() -> Self {
        OciConfig {
            monolithic_push: true,
            connect_timeout_seconds: connect_timeout(),
            read_timeout_seconds: read_timeout(),
            max_manifest_bytes: max_manifest_bytes(),
        }
    }
}
