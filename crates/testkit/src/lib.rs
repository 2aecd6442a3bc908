//! Test harness shared by image-syncer's end-to-end tests and by plugin authors.
//!
//! [`Registry`] starts Debian's `docker-registry` (CNCF distribution) on a free
//! 127.0.0.1 port with a temporary storage directory, optionally behind
//! htpasswd auth or token auth, and stops it on drop. [`TokenServer`] is a
//! stand-in token issuer for the latter (the Docker Hub flow: a JWT from a
//! realm, checked by the real registry), which records every token request.
//! [`fixtures`] builds small random images and indexes and pushes them with
//! `oci-client` directly — not through image-syncer's own stages — so that
//! tests do not check our code with itself. [`Sigstore`] is a stand-in
//! Sigstore instance (CA, CT log and Rekor keys in memory) that makes keyless
//! signatures, log entries and a trusted root for the verifier's tests.
//! [`cloud`] holds stand-ins of the cloud identity services registries are
//! logged in to with: a GCE metadata server ([`GceMetadata`]), Entra ID
//! ([`Entra`]) and ACR's token exchange ([`AcrExchange`]).

pub mod cloud;
pub mod conformance;
pub mod faults;
pub mod fixtures;
pub mod hostile;
pub mod latency;
mod moto;
mod registry;
pub mod sigstore;
mod standin;
mod token;

pub use cloud::{AcrExchange, Entra, GceMetadata};
pub use moto::Moto;
pub use registry::{Registry, RegistryOptions};
pub use sigstore::Sigstore;
pub use standin::{standins_dir, StandIn};
pub use token::{TokenAuth, TokenRequest, TokenServer};

/// Runs a future on a fresh current-thread runtime (tests are synchronous).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}
