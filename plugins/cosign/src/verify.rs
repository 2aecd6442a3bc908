//! `cosign-verify`: a guard that lets an image through only when its source
//! carries a cosign signature valid for the vendor's key, or for the
//! vendor's keyless identity ([`crate::keyless`]), over that very digest.
//! Anything else is a safety stop: nothing is written in the run.

use std::collections::BTreeMap;
use std::sync::Arc;

use image_syncer_core::async_trait;
use image_syncer_core::catalogue::{
    config_schema, typed_config, BuildError, ConfigDoc, ConfigValue, Factory, StagePlugin,
};
use image_syncer_core::context::GuardContext;
use image_syncer_core::definition::config_to_yaml;
use image_syncer_core::digest::Digest;
use image_syncer_core::manifest::Manifest;
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::{Guard, GuardInput, StageError, StageKind, Verdict};
use image_syncer_cosign_format::{
    verify, KeyRef, SignatureKey, SourceStore, Verified, Verifier, WithKey,
};
use serde::{Deserialize, Serialize};
use sigstore::crypto::{CosignVerificationKey, Signature};

use crate::keyless::{Keyless, KeylessConfig};
use crate::keys::{self, KeyError};
use crate::ProviderKey;

/// Settings of the `cosign-verify` guard: `key` or `keyless`, not both.
#[derive(Debug, Default, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CosignVerifyConfig {
    /// The vendor's public key: a PEM public key file (relative to the
    /// definition; a cosign `.pub` is one), or a KMS reference in the
    /// `--kms-key` forms (`awskms://…`, `gcpkms://…`, `azurekms://…`,
    /// `hashivault://…`), whose public key is fetched from the KMS. A private
    /// key file is refused: give its public half.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Keyless signatures: the signer's identity and issuer, and the trusted
    /// root (default: the Sigstore public-good root, built in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyless: Option<KeylessConfig>,
    /// Where the signatures are stored, when not beside the image
    /// (cosign's `COSIGN_REPOSITORY`), e.g. `ghcr.io/kyverno/signatures`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatures_repository: Option<String>,
    /// Annotations the signed payload must carry (`cosign sign -a k=v`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Also require a valid signature for each child of a multi-arch index
    /// (the index's own signature is always required).
    #[serde(default)]
    pub recursive: bool,
}

/// The key signatures are checked with: a public key, or a KMS key whose
/// public half is fetched on first use. Never signs.
enum VerifyKey {
    Public {
        shown: String,
        key: Arc<CosignVerificationKey>,
    },
    Kms(ProviderKey),
}

#[async_trait]
impl SignatureKey for VerifyKey {
    fn describe(&self) -> String {
        match self {
            VerifyKey::Public { shown, .. } => shown.clone(),
            VerifyKey::Kms(k) => k.describe(),
        }
    }

    async fn verify(&self, payload: &[u8], signature: &[u8]) -> Result<bool, StageError> {
        match self {
            VerifyKey::Public { key, .. } => Ok(key
                .verify_signature(Signature::Raw(signature), payload)
                .is_ok()),
            VerifyKey::Kms(k) => k.verify(payload, signature).await,
        }
    }

    async fn sign(&self, _: &[u8]) -> Result<Vec<u8>, StageError> {
        Err(StageError::config(
            "cosign-verify holds a public key: it verifies, it does not sign",
        ))
    }
}

/// A PEM public key from `text` (the contents of `shown`).
fn public_key(shown: &str, text: &str) -> Result<VerifyKey, String> {
    if text.contains("PRIVATE KEY") {
        return Err(format!(
            "{shown} is a private key; give its public key (`openssl pkey -in KEY -pubout`, or `cosign public-key --key KEY`)"
        ));
    }
    if !text.contains("-----BEGIN PUBLIC KEY-----") {
        return Err(format!(
            "{shown} is not a PEM public key (`-----BEGIN PUBLIC KEY-----`)"
        ));
    }
    let key = CosignVerificationKey::try_from_pem(text.as_bytes())
        .map_err(|e| format!("{shown}: the public key is not usable: {e}"))?;
    Ok(VerifyKey::Public {
        shown: shown.to_string(),
        key: Arc::new(key),
    })
}

/// The key `config.key` names, loaded and checked now (a file or a
/// variable), or a KMS key whose public half is fetched on first use.
fn load_key(written: &str, cx: &GuardContext) -> Result<VerifyKey, String> {
    if written.contains("://") {
        let key_ref: KeyRef = written
            .parse()
            .map_err(|e: image_syncer_cosign_format::KeyRefError| e.to_string())?;
        return match &key_ref {
            KeyRef::Env { var } => {
                let text = std::env::var(var)
                    .map_err(|_| format!("{written}: the environment variable {var} is not set"))?;
                public_key(written, &text)
            }
            KeyRef::File { .. } => unknown_scheme(written),
            _ => {
                let provider = keys::provider_for(&key_ref).map_err(|e: KeyError| e.message)?;
                Ok(VerifyKey::Kms(ProviderKey::new(key_ref, provider)))
            }
        };
    }
    let path = cx.resolve_path(written);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
    public_key(written, &text)
}

/// A `scheme://` reference that parsed as a file: not one of the forms.
fn unknown_scheme(written: &str) -> Result<VerifyKey, String> {
    Err(format!(
        "`{written}` is not a key reference this guard knows (a PEM file path, env://, awskms://, gcpkms://, azurekms://, hashivault://)"
    ))
}

/// What signatures are checked against.
enum Check {
    Key(VerifyKey),
    Keyless(Box<Keyless>),
}

/// The guard.
pub struct CosignVerify {
    check: Check,
    /// `signaturesRepository`, parsed.
    signatures: Option<ImageRef>,
    config: CosignVerifyConfig,
}

impl CosignVerify {
    /// Why `digest` does not pass, or `None` when it does.
    async fn refused(
        &self,
        input: &GuardInput<'_>,
        digest: &Digest,
    ) -> Result<Option<String>, StageError> {
        let source = input.source.ok_or_else(|| {
            StageError::config("cosign-verify reads the image's source, and was given none")
        })?;
        let repository = &input.image.source;
        let stored = self.signatures.as_ref().unwrap_or(repository);
        let with_key;
        let verifier: &dyn Verifier = match &self.check {
            Check::Key(key) => {
                with_key = WithKey(key);
                &with_key
            }
            Check::Keyless(keyless) => keyless.as_ref(),
        };
        let key = verifier.describe();
        let verified = verify(
            verifier,
            &SourceStore(source),
            stored,
            digest,
            &self.config.annotations,
        )
        .await?;
        let why = verified.why();
        let stored_in = match &self.signatures {
            Some(s) => format!(" (signatures from {s})"),
            None => String::new(),
        };
        Ok(match verified {
            Verified::Valid(format) => {
                tracing::info!(%repository, %digest, %format, "upstream signature valid");
                None
            }
            Verified::Missing => Some(format!(
                "upstream signature check: no signature for {repository}@{digest}{stored_in}"
            )),
            Verified::NoneValid {
                signatures,
                keyless,
                ..
            } => Some(format!(
                "upstream signature check: {signatures} signature(s) for {repository}@{digest}{stored_in}{}, none valid for {key}{why}",
                if keyless > 0 {
                    format!(" ({keyless} keyless: not verifiable with a key)")
                } else {
                    String::new()
                }
            )),
            Verified::OtherDigest { signed } => Some(format!(
                "upstream signature check: the signature stored for {repository}@{digest}{stored_in} is valid for {key} but signs another digest ({signed}): signed digest differs"
            )),
            Verified::Unannotated { missing } => Some(format!(
                "upstream signature check: the signature of {repository}@{digest}{stored_in} valid for {key} lacks the required annotation(s) {}",
                missing.join(", ")
            )),
        })
    }
}

#[async_trait]
impl Guard for CosignVerify {
    async fn check(&self, input: GuardInput<'_>) -> Result<Verdict, StageError> {
        // What the vendor signed: the source's own digest, before any
        // platform filter of ours.
        let digest = input.upstream().clone();
        let mut digests = vec![digest.clone()];
        if self.config.recursive {
            if let Some(source) = input.source {
                let pinned = input.image.source.with_digest(digest.clone());
                let manifest = source.resolve(&pinned).await?;
                if let Ok(Manifest::Index { manifests }) = manifest.parse() {
                    digests.extend(manifests.into_iter().map(|m| m.digest));
                }
            }
        }
        for d in &digests {
            if let Some(reason) = self.refused(&input, d).await? {
                return Ok(Verdict::Stop { reason });
            }
        }
        Ok(Verdict::Copy)
    }
}

fn build(config: &ConfigValue, cx: &GuardContext) -> Result<Arc<dyn Guard>, BuildError> {
    let config: CosignVerifyConfig = typed_config(StageKind::Guard, "cosign-verify", config)?;
    let invalid = |message: String| BuildError::Config {
        kind: StageKind::Guard,
        plugin: "cosign-verify".into(),
        message,
    };
    let check = match (&config.key, &config.keyless) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "give `key` or `keyless`, not both: a signature is checked one way".into(),
            ))
        }
        (None, None) => return Err(invalid(
            "give `key` (the vendor's public key) or `keyless` (the signer's identity and issuer)"
                .into(),
        )),
        (Some(key), None) if key.trim().is_empty() => {
            return Err(invalid("`key` names the vendor's public key".into()))
        }
        (Some(key), None) => Check::Key(load_key(key, cx).map_err(invalid)?),
        (None, Some(keyless)) => Check::Keyless(Box::new(
            Keyless::new(keyless, |p| cx.resolve_path(p)).map_err(invalid)?,
        )),
    };
    let signatures = match &config.signatures_repository {
        None => None,
        Some(written) => {
            let r = ImageRef::parse(written)
                .map_err(|e| invalid(format!("`signaturesRepository`: {e}")))?;
            if r.tag().is_some() || r.digest().is_some() {
                return Err(invalid(format!(
                    "`signaturesRepository` `{written}` names a repository, without a tag or digest"
                )));
            }
            Some(r)
        }
    };
    Ok(Arc::new(CosignVerify {
        check,
        signatures,
        config,
    }))
}

/// `--list-stages`' example (a key file next to the definition).
fn example() -> String {
    config_to_yaml(&CosignVerifyConfig {
        key: Some("keys/vendor.pub".into()),
        ..Default::default()
    })
}

image_syncer_core::inventory::submit! {
    StagePlugin {
        name: "cosign-verify",
        description: "Lets an image through only when its source carries a cosign signature valid for `key` or for a `keyless` identity (Fulcio certificate, Rekor entry, trusted root) over that digest (and the required `annotations`); otherwise a safety stop",
        config: ConfigDoc {
            schema: config_schema::<CosignVerifyConfig>,
            example,
        },
        transport: None,
        factory: || Factory::guard(build),
    }
}
