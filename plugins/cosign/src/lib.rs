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

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use image_syncer_core::async_trait;
use image_syncer_core::context::StageContext;
use image_syncer_core::digest::{Digest, VerifyingStream};
use image_syncer_core::keyref::KeyRef;
use image_syncer_core::manifest::{Descriptor, Manifest};
use image_syncer_core::reference::ImageRef;
use image_syncer_core::registry::{
    typed_config, BuildError, ConfigValue, StageFactory, StagePlugin,
};
use image_syncer_core::stage::{
    ErrorKind, ManifestTarget, SignOutcome, SignRequest, Signer, Sink, Stage, StageError, StageKind,
};
use serde::Deserialize;
use sigstore::crypto::{CosignVerificationKey, Signature};
use tokio::sync::OnceCell;
use tracing::{debug, info};

pub mod keys;
pub mod payload;
pub mod sigmanifest;

#[cfg(test)]
mod tests;

use keys::{KeyError, KeyErrorKind, KeyProvider, PublicKey};
use sigmanifest::{SignatureLayer, SIMPLE_SIGNING};

/// Payload blobs larger than this are not read when verifying (cosign's are ~200 bytes).
const MAX_PAYLOAD: u64 = 1 << 20;

/// Settings of the `cosign` signer.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CosignConfig {
    /// Also sign each child manifest of a multi-arch index (`cosign sign --recursive`).
    #[serde(default)]
    pub recursive: bool,
}

/// The signer stage.
pub struct CosignSigner {
    config: CosignConfig,
    key_ref: KeyRef,
    provider: Arc<dyn KeyProvider>,
    public: OnceCell<(PublicKey, Arc<CosignVerificationKey>)>,
}

/// What was found for one digest.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Valid,
    None { existing: Vec<Descriptor> },
}

impl CosignSigner {
    pub fn new(
        config: CosignConfig,
        key_ref: KeyRef,
        provider: Arc<dyn KeyProvider>,
    ) -> CosignSigner {
        CosignSigner {
            config,
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

    /// The public key PEM (after first use).
    pub async fn public_key_pem(&self) -> Result<String, StageError> {
        self.verification_key().await?;
        Ok(self.public.get().expect("initialised").0.to_pem())
    }

    async fn read_payload(
        &self,
        sink: &dyn Sink,
        repo: &ImageRef,
        d: &Descriptor,
    ) -> Result<Vec<u8>, StageError> {
        if d.size > MAX_PAYLOAD {
            return Err(StageError::invalid(format!(
                "{repo}: signature payload {} is {} bytes, more than a signature payload can be",
                d.digest, d.size
            )));
        }
        let stream = sink.fetch_blob(repo, d).await?;
        let mut verified = VerifyingStream::new(stream, d.digest.clone(), Some(d.size));
        let mut out = Vec::with_capacity(d.size as usize);
        while let Some(chunk) = verified.next().await {
            let chunk = chunk.map_err(|e| {
                StageError::from_io(&format!("{repo}: signature payload {}", d.digest), &e)
            })?;
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Reads the signatures stored for `digest` and checks them with our key.
    async fn find(
        &self,
        sink: &dyn Sink,
        target: &ImageRef,
        digest: &Digest,
    ) -> Result<Found, StageError> {
        let sig_ref = target.with_tag(&sigmanifest::signature_tag(digest));
        let Some(manifest) = sink.fetch_manifest(&sig_ref).await? else {
            return Ok(Found::None { existing: vec![] });
        };
        let layers: Vec<SignatureLayer> = sigmanifest::layers(&manifest)
            .map_err(|e| StageError::integrity(format!("{sig_ref}: {e}")))?;
        let key = self.verification_key().await?;
        let mut signatures = 0;
        for layer in &layers {
            let (Some(sig), true) = (
                &layer.signature,
                layer.descriptor.media_type == SIMPLE_SIGNING,
            ) else {
                continue;
            };
            signatures += 1;
            let payload = self.read_payload(sink, target, &layer.descriptor).await?;
            let valid = key
                .verify_signature(Signature::Base64Encoded(sig.as_bytes()), &payload)
                .is_ok()
                && payload::signed_digest(&payload).as_deref() == Some(digest.to_string().as_str());
            debug!(tag = %sig_ref, layer = %layer.descriptor.digest, valid, "signature checked");
            if valid {
                return Ok(Found::Valid);
            }
        }
        if signatures > 0 {
            return Err(StageError::integrity(format!(
                "safety stop: {target}@{digest} carries {signatures} signature(s) in {sig_ref}, none valid for key {}; nothing more is written",
                self.key_ref
            )));
        }
        Ok(Found::None {
            existing: layers.into_iter().map(|l| l.descriptor).collect(),
        })
    }

    async fn sign_one(
        &self,
        sink: &dyn Sink,
        target: &ImageRef,
        digest: &Digest,
        existing: &[Descriptor],
    ) -> Result<(), StageError> {
        let payload = payload::payload(&payload::docker_reference(target), digest);
        let signature = self
            .provider
            .sign(&payload)
            .await
            .map_err(|e| self.key_error(e))?;
        // A signature our own key cannot verify would make every later run stop.
        let key = self.verification_key().await?;
        key.verify_signature(Signature::Raw(&signature), &payload)
            .map_err(|_| {
                StageError::config(format!(
                    "signing key {}: the provider's signature does not verify with its public key",
                    self.key_ref
                ))
            })?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&signature);
        let layer = sigmanifest::signature_layer(&payload, &b64);
        let (manifest, config) = sigmanifest::build(existing, &layer);
        let config_desc = sigmanifest::config_descriptor(&config);
        for (desc, bytes) in [(&layer, Bytes::from(payload)), (&config_desc, config)] {
            if !sink.has_blob(target, desc).await? {
                let stream =
                    futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
                sink.put_blob(target, desc, Box::pin(stream)).await?;
            }
        }
        let tag = sigmanifest::signature_tag(digest);
        sink.put_manifest(target, &ManifestTarget::Tag(tag.clone()), &manifest)
            .await?;
        info!(target = %target, %digest, signature_tag = %tag, key = %self.key_ref, "signed");
        Ok(())
    }
}

#[async_trait]
impl Signer for CosignSigner {
    async fn sign(
        &self,
        request: &SignRequest,
        sink: &dyn Sink,
    ) -> Result<SignOutcome, StageError> {
        let mut digests = vec![request.digest.clone()];
        if self.config.recursive {
            if let Ok(Manifest::Index { manifests }) = request.manifest.parse() {
                digests.extend(manifests.into_iter().map(|m| m.digest));
            }
        }
        // Verify all first: a stop must come before any write.
        let mut to_sign = Vec::new();
        for d in &digests {
            match self.find(sink, &request.target, d).await? {
                Found::Valid => {}
                Found::None { existing } => to_sign.push((d.clone(), existing)),
            }
        }
        if to_sign.is_empty() {
            return Ok(SignOutcome::AlreadySigned);
        }
        if request.dry_run {
            return Ok(SignOutcome::WouldSign);
        }
        for (d, existing) in &to_sign {
            self.sign_one(sink, &request.target, d, existing).await?;
        }
        Ok(SignOutcome::Signed)
    }
}

struct Factory;

impl StageFactory for Factory {
    fn build(&self, config: &ConfigValue, cx: &StageContext) -> Result<Stage, BuildError> {
        let config: CosignConfig = typed_config(StageKind::Signer, "cosign", config)?;
        let key_ref = cx.key_ref.clone().ok_or_else(|| BuildError::Setup {
            kind: StageKind::Signer,
            plugin: "cosign".into(),
            message: "no signing key: set --kms-key (or --key-ref, SYNCER_KMS_KEY)".into(),
        })?;
        let provider = keys::provider_for(&key_ref).map_err(|e: KeyError| BuildError::Setup {
            kind: StageKind::Signer,
            plugin: "cosign".into(),
            message: e.message,
        })?;
        Ok(Stage::Signer(Arc::new(CosignSigner::new(
            config, key_ref, provider,
        ))))
    }
}

image_syncer_core::inventory::submit! {
    StagePlugin {
        kind: StageKind::Signer,
        name: "cosign",
        description: "Verifies, then signs target images with cosign-compatible signatures (sha256-<hex>.sig) through a KMS or local key",
        example_config: "recursive: false\n",
        transport: None,
        factory: &Factory,
    }
}
