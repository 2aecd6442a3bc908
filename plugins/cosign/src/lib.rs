//! `cosign`: signs images in the target with cosign-compatible signatures
//! (the classic `sha256-<hex>.sig` tag format), verifying first.
//!
//! For each image to sign, after the target holds it with the verified source
//! digest:
//! - signatures stored for the digest, one valid for our key → already signed,
//!   nothing written;
//! - signatures stored, none valid for our key → safety stop;
//! - none stored → sign the simple-signing payload and push it (dry run:
//!   report "would sign").
//!
//! Keys come from [`keys`] by reference scheme; verification is local.

use std::sync::Arc;

use image_syncer_core::async_trait;
use image_syncer_core::catalogue::{
    typed_config, BuildError, ConfigDoc, ConfigValue, ContextInput, Factory, SignerFactory,
    StagePlugin,
};
use image_syncer_core::context::SignerContext;
use image_syncer_core::stage::{
    ErrorKind, SignOutcome, SignRequest, Signer, Sink, StageError, StageKind,
};
use image_syncer_cosign_format::{self as cosign, SignatureKey};
use serde::{Deserialize, Serialize};
use sigstore::crypto::{CosignVerificationKey, Signature};
use tokio::sync::OnceCell;

pub mod keyless;
pub mod keys;
pub mod verify;

#[cfg(test)]
mod tests;

/// The cosign format lives in the core, shared with other signer plugins.
pub use image_syncer_cosign_format::{payload, sigmanifest, KeyRef};

use keys::{KeyError, KeyErrorKind, KeyProvider, PublicKey};

/// Settings of the `cosign` signer.
#[derive(Debug, Default, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CosignConfig {
    /// Also sign each child manifest of a multi-arch index (`cosign sign --recursive`).
    #[serde(default)]
    pub recursive: bool,
    /// The format written: `classic` (the `sha256-<hex>.sig` tag, kyma's
    /// format), `bundle` (cosign v3's Sigstore bundle, attached as an OCI
    /// 1.1 referrer) or `both`. A valid signature by the key in either
    /// format means nothing is written.
    #[serde(default)]
    pub format: image_syncer_cosign_format::Format,
}

/// A provider's key: signs through the provider, verifies locally with the
/// provider's public key.
pub struct ProviderKey {
    key_ref: KeyRef,
    provider: Arc<dyn KeyProvider>,
    public: OnceCell<(PublicKey, Arc<CosignVerificationKey>)>,
}

impl ProviderKey {
    pub fn new(key_ref: KeyRef, provider: Arc<dyn KeyProvider>) -> ProviderKey {
        ProviderKey {
            key_ref,
            provider,
            public: OnceCell::new(),
        }
    }

    fn key_error(&self, e: KeyError) -> StageError {
        let kind = match e.kind {
            KeyErrorKind::Config => ErrorKind::Config,
            KeyErrorKind::Transient => ErrorKind::Transient,
        };
        StageError::new(kind, format!("signing key {}: {}", self.key_ref, e.message))
    }

    async fn verification_key(&self) -> Result<Arc<CosignVerificationKey>, StageError> {
        let (_, key) = self
            .public
            .get_or_try_init(|| async {
                let public = self
                    .provider
                    .public_key()
                    .await
                    .map_err(|e| self.key_error(e))?;
                let key = public.verification_key().map_err(|e| self.key_error(e))?;
                Ok::<_, StageError>((public, Arc::new(key)))
            })
            .await?;
        Ok(key.clone())
    }

    /// The public key PEM.
    pub async fn public_key_pem(&self) -> Result<String, StageError> {
        self.verification_key().await?;
        Ok(self.public.get().expect("initialised").0.to_pem())
    }
}

#[async_trait]
impl SignatureKey for ProviderKey {
    fn describe(&self) -> String {
        self.key_ref.to_string()
    }

    async fn verify(&self, payload: &[u8], signature: &[u8]) -> Result<bool, StageError> {
        let key = self.verification_key().await?;
        Ok(key
            .verify_signature(Signature::Raw(signature), payload)
            .is_ok())
    }

    async fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, StageError> {
        self.provider
            .sign(payload)
            .await
            .map_err(|e| self.key_error(e))
    }

    async fn public_key_der(&self) -> Result<Option<Vec<u8>>, StageError> {
        self.verification_key().await?;
        let public = &self.public.get().expect("initialised").0;
        Ok(public.to_der())
    }
}

/// The signer stage.
pub struct CosignSigner {
    config: CosignConfig,
    key: ProviderKey,
}

impl CosignSigner {
    pub fn new(
        config: CosignConfig,
        key_ref: KeyRef,
        provider: Arc<dyn KeyProvider>,
    ) -> CosignSigner {
        CosignSigner {
            config,
            key: ProviderKey::new(key_ref, provider),
        }
    }
}

#[async_trait]
impl Signer for CosignSigner {
    async fn sign(
        &self,
        request: &SignRequest,
        sink: &Arc<dyn Sink>,
    ) -> Result<SignOutcome, StageError> {
        cosign::sign_request_as(
            &self.key,
            self.config.recursive,
            self.config.format,
            request,
            sink.as_ref(),
        )
        .await
    }
}

struct CosignFactory;

impl SignerFactory for CosignFactory {
    fn build(
        &self,
        config: &ConfigValue,
        cx: &SignerContext,
    ) -> Result<Arc<dyn Signer>, BuildError> {
        let config: CosignConfig = typed_config(StageKind::Signer, "cosign", config)?;
        let written = cx
            .signing_key
            .as_deref()
            .ok_or_else(|| BuildError::MissingInput {
                kind: StageKind::Signer,
                plugin: "cosign".into(),
                input: ContextInput::SigningKey,
            })?;
        let key_ref: KeyRef =
            written
                .parse()
                .map_err(|e: cosign::KeyRefError| BuildError::Setup {
                    kind: StageKind::Signer,
                    plugin: "cosign".into(),
                    message: e.to_string(),
                })?;
        let provider = keys::provider_for(&key_ref).map_err(|e: KeyError| BuildError::Setup {
            kind: StageKind::Signer,
            plugin: "cosign".into(),
            message: e.message,
        })?;
        Ok(Arc::new(CosignSigner::new(config, key_ref, provider)))
    }
}

image_syncer_core::inventory::submit! {
    StagePlugin {
        name: "cosign",
        description: "Verifies, then signs target images with cosign-compatible signatures (sha256-<hex>.sig) through a KMS or local key",
        config: ConfigDoc::of::<CosignConfig>(),
        transport: None,
        factory: || Factory::signer(CosignFactory),
    }
}
