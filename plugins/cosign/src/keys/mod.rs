//! Key providers: where signatures come from, by key reference scheme.
//! Public keys come from the provider; verification is always local.

use std::sync::Arc;

use image_syncer_core::async_trait;
use image_syncer_cosign_format::KeyRef;
use sigstore::crypto::CosignVerificationKey;

mod local;
pub use local::LocalKey;

#[cfg(feature = "aws-kms")]
mod aws;
#[cfg(feature = "azure-kms")]
pub mod azure;
#[cfg(feature = "gcp-kms")]
mod gcp;
mod vault;

/// A public key as a provider hands it out.
#[derive(Clone, Debug)]
pub enum PublicKey {
    Pem(String),
    /// DER SubjectPublicKeyInfo.
    Der(Vec<u8>),
}

impl PublicKey {
    pub fn verification_key(&self) -> Result<CosignVerificationKey, KeyError> {
        match self {
            PublicKey::Pem(p) => CosignVerificationKey::try_from_pem(p.as_bytes()),
            PublicKey::Der(d) => CosignVerificationKey::try_from_der(d),
        }
        .map_err(|e| KeyError::config(format!("the public key is not usable: {e}")))
    }

    /// DER (SPKI), `None` when a PEM's body is not base64.
    pub fn to_der(&self) -> Option<Vec<u8>> {
        use base64::Engine as _;
        match self {
            PublicKey::Der(d) => Some(d.clone()),
            PublicKey::Pem(p) => {
                let body: String = p
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .map(str::trim)
                    .collect();
                base64::engine::general_purpose::STANDARD.decode(body).ok()
            }
        }
    }

    /// PEM text (SPKI), for people and for openssl.
    pub fn to_pem(&self) -> String {
        match self {
            PublicKey::Pem(p) => p.clone(),
            PublicKey::Der(d) => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(d);
                let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
                for chunk in b64.as_bytes().chunks(64) {
                    out.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
                    out.push('\n');
                }
                out.push_str("-----END PUBLIC KEY-----\n");
                out
            }
        }
    }
}

/// What went wrong with a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyErrorKind {
    /// The key reference, key material or provider settings are wrong.
    Config,
    /// The provider could not be reached or failed; a later try may succeed.
    Transient,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct KeyError {
    pub kind: KeyErrorKind,
    pub message: String,
}

impl KeyError {
    pub fn config(message: impl Into<String>) -> KeyError {
        KeyError {
            kind: KeyErrorKind::Config,
            message: message.into(),
        }
    }
    pub fn transient(message: impl Into<String>) -> KeyError {
        KeyError {
            kind: KeyErrorKind::Transient,
            message: message.into(),
        }
    }
}

/// A signing key held by a provider.
#[async_trait]
pub trait KeyProvider: Send + Sync {
    /// The public key of the signing key.
    async fn public_key(&self) -> Result<PublicKey, KeyError>;
    /// Signs `payload` (SHA-256; ECDSA signatures DER-encoded, RSA PKCS#1 v1.5).
    async fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, KeyError>;
}

/// The provider for a key reference. Local keys are loaded (and checked) now;
/// KMS clients connect on first use.
pub fn provider_for(key: &KeyRef) -> Result<Arc<dyn KeyProvider>, KeyError> {
    match key {
        KeyRef::File { .. } | KeyRef::Env { .. } => Ok(Arc::new(LocalKey::load(key)?)),
        #[cfg(feature = "aws-kms")]
        KeyRef::AwsKms { endpoint, key_id } => {
            Ok(Arc::new(aws::AwsKms::new(endpoint.clone(), key_id.clone())))
        }
        #[cfg(not(feature = "aws-kms"))]
        KeyRef::AwsKms { .. } => Err(KeyError::config(
            "this build has no AWS KMS support (cargo feature `aws-kms`)",
        )),
        #[cfg(feature = "gcp-kms")]
        KeyRef::GcpKms { resource } => Ok(Arc::new(gcp::GcpKms::new(resource.clone()))),
        #[cfg(not(feature = "gcp-kms"))]
        KeyRef::GcpKms { .. } => Err(KeyError::config(
            "this build has no GCP KMS support (cargo feature `gcp-kms`)",
        )),
        KeyRef::HashiVault { key } => Ok(Arc::new(vault::Vault::from_env(key)?)),
        #[cfg(feature = "azure-kms")]
        KeyRef::AzureKms {
            vault,
            key,
            version,
        } => Ok(Arc::new(azure::AzureKms::new(
            vault,
            key,
            version.as_deref(),
        ))),
        #[cfg(not(feature = "azure-kms"))]
        KeyRef::AzureKms { .. } => Err(KeyError::config(
            "this build has no Azure Key Vault support (cargo feature `azure-kms`)",
        )),
    }
}
