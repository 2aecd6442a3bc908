//! image-syncer's core: the domain types (references, digests, descriptors,
//! manifests), the six stage traits, the stage catalogue, the definition model
//! and the orchestrator. It knows no HTTP and no registry protocol: plugins do.

pub mod catalogue;
pub mod context;
pub mod definition;
pub mod digest;
pub mod flow;
pub mod manifest;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod orchestrator;
pub mod reference;
pub mod report;
pub mod retry;
pub mod shard;
pub mod stage;

pub use async_trait::async_trait;
pub use inventory;
/// For plugins deriving `JsonSchema` for their config through the kit.
pub use schemars;

/// The version of this crate, checked by dynamic plugin loading.
pub const CORE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// [`CORE_VERSION`], NUL-terminated (for the plugin declaration).
pub const CORE_VERSION_NUL: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
