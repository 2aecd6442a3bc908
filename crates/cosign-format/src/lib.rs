//! cosign's classic signature format, the key references (`--kms-key`
//! schemes, [`KeyRef`]) and the verify-then-sign flow: a library shared by
//! the built-in `cosign` signer and the `exec` example signer (plugins never
//! depend on plugins; both depend on this). The core knows "a signer" only.
//! Keys are abstract ([`SignatureKey`]): where a signature
//! comes from and how it is checked is the plugin's business; what is stored,
//! where, and when a run must stop is decided here.
//!
//! For each digest to sign, the tag `sha256-<hex>.sig` of the target repository
//! is read:
//! - a signature valid for the key over a payload naming this digest → already
//!   signed, nothing written;
//! - signature layers, none valid → safety stop (`ErrorKind::Integrity`);
//! - none → sign, push payload, config and manifest (dry run: "would sign").

pub mod keyref;
pub mod payload;
pub mod sigmanifest;

pub use keyref::{KeyRef, KeyRefError};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use tracing::{debug, info};

use image_syncer_core::digest::{ByteStream, Digest, VerifyingStream};
use image_syncer_core::manifest::{Descriptor, Manifest, RawManifest};
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::{
    ErrorKind, ManifestTarget, SignOutcome, SignRequest, Sink, Source, StageError,
};
use sigmanifest::{SignatureLayer, SIMPLE_SIGNING};

/// Payload blobs larger than this are not read when verifying (cosign's are ~200 bytes).
const MAX_PAYLOAD: u64 = 1 << 20;

/// A signing key as the flow sees it.
#[async_trait::async_trait]
pub trait SignatureKey: Send + Sync {
    /// The key reference, for messages (never secret material).
    fn describe(&self) -> String;
    /// Whether `signature` (raw bytes, DER for ECDSA) is valid for `payload`.
    async fn verify(&self, payload: &[u8], signature: &[u8]) -> Result<bool, StageError>;
    /// Signs `payload`; the flow verifies the result with [`SignatureKey::verify`].
    async fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, StageError>;
}

/// Where signatures are read from: the target's sink (signing) or an
/// image's source (verifying upstream signatures).
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// The manifest `reference` (a tag) points at, `None` when absent.
    async fn manifest(&self, reference: &ImageRef) -> Result<Option<RawManifest>, StageError>;
    /// A blob of `repository`, streamed (verified by the reader).
    async fn blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError>;
    /// The manifest `descriptor` names in `repository` (a referrer).
    async fn manifest_at(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<RawManifest, StageError>;
    /// The referrers of `digest` through the OCI 1.1 API, `None` without it.
    async fn referrers(
        &self,
        repository: &ImageRef,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, StageError>;
}

/// The target's sink as a [`Store`].
pub struct SinkStore<'a>(pub &'a dyn Sink);

#[async_trait::async_trait]
impl Store for SinkStore<'_> {
    async fn manifest(&self, reference: &ImageRef) -> Result<Option<RawManifest>, StageError> {
        self.0.fetch_manifest(reference).await
    }
    async fn blob(&self, repository: &ImageRef, d: &Descriptor) -> Result<ByteStream, StageError> {
        self.0.fetch_blob(repository, d).await
    }
    async fn manifest_at(
        &self,
        repository: &ImageRef,
        d: &Descriptor,
    ) -> Result<RawManifest, StageError> {
        let pinned = repository.with_digest(d.digest.clone());
        self.0
            .fetch_manifest(&pinned)
            .await?
            .ok_or_else(|| StageError::not_found(format!("{pinned}: no such manifest")))
    }
    async fn referrers(
        &self,
        repository: &ImageRef,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, StageError> {
        self.0.referrers(repository, digest).await
    }
}

/// An image's source as a [`Store`].
pub struct SourceStore<'a>(pub &'a dyn Source);

#[async_trait::async_trait]
impl Store for SourceStore<'_> {
    async fn manifest(&self, reference: &ImageRef) -> Result<Option<RawManifest>, StageError> {
        match self.0.resolve(reference).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    async fn blob(&self, repository: &ImageRef, d: &Descriptor) -> Result<ByteStream, StageError> {
        self.0.fetch_blob(repository, d).await
    }
    async fn manifest_at(
        &self,
        repository: &ImageRef,
        d: &Descriptor,
    ) -> Result<RawManifest, StageError> {
        self.0.fetch_manifest(repository, d).await
    }
    async fn referrers(
        &self,
        repository: &ImageRef,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, StageError> {
        self.0.referrers(repository, digest).await
    }
}

/// What was found for one digest.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Valid,
    None { existing: Vec<Descriptor> },
}

async fn read_payload(
    store: &dyn Store,
    repo: &ImageRef,
    d: &Descriptor,
) -> Result<Vec<u8>, StageError> {
    if d.size > MAX_PAYLOAD {
        return Err(StageError::invalid(format!(
            "{repo}: signature payload {} is {} bytes, more than a signature payload can be",
            d.digest, d.size
        )));
    }
    let stream = store.blob(repo, d).await?;
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

/// Reads the signatures stored for `digest` and checks them with `key`.
async fn find(
    key: &dyn SignatureKey,
    sink: &dyn Sink,
    target: &ImageRef,
    digest: &Digest,
    upstream: &[Descriptor],
) -> Result<Found, StageError> {
    let sig_ref = target.with_tag(&sigmanifest::signature_tag(digest));
    let Some(manifest) = SinkStore(sink).manifest(&sig_ref).await? else {
        return Ok(Found::None { existing: vec![] });
    };
    let layers: Vec<SignatureLayer> = sigmanifest::layers(&manifest)
        .map_err(|e| StageError::integrity(format!("{sig_ref}: {e}")))?;
    let mut signatures = 0;
    for layer in &layers {
        let (Some(sig), true) = (
            &layer.signature,
            layer.descriptor.media_type == SIMPLE_SIGNING,
        ) else {
            continue;
        };
        let payload = read_payload(&SinkStore(sink), target, &layer.descriptor).await?;
        let carried = upstream.contains(&layer.descriptor);
        let raw = match base64::engine::general_purpose::STANDARD.decode(sig.trim()) {
            Ok(raw) => raw,
            Err(_) => continue,
        };
        let valid = payload::signed_digest(&payload).as_deref()
            == Some(digest.to_string().as_str())
            && key.verify(&payload, &raw).await?;
        debug!(tag = %sig_ref, layer = %layer.descriptor.digest, valid, carried, "signature checked");
        if valid {
            return Ok(Found::Valid);
        }
        // Upstream signatures carried verbatim from the source are not ours to judge.
        if !carried {
            signatures += 1;
        }
    }
    if signatures > 0 {
        return Err(StageError::integrity(format!(
            "safety stop: {target}@{digest} carries {signatures} signature(s) in {sig_ref}, none valid for key {}; nothing more is written",
            key.describe()
        )));
    }
    Ok(Found::None {
        existing: layers.into_iter().map(|l| l.descriptor).collect(),
    })
}

async fn sign_one(
    key: &dyn SignatureKey,
    sink: &dyn Sink,
    target: &ImageRef,
    digest: &Digest,
    existing: &[Descriptor],
) -> Result<(), StageError> {
    let payload = payload::payload(&payload::docker_reference(target), digest);
    let signature = key.sign(&payload).await?;
    // A signature our own key cannot verify would make every later run stop.
    if !key.verify(&payload, &signature).await? {
        return Err(StageError::config(format!(
            "signing key {}: its signature does not verify with its public key",
            key.describe()
        )));
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(&signature);
    let layer = sigmanifest::signature_layer(&payload, &b64);
    let (manifest, config) = sigmanifest::build(existing, &layer);
    let config_desc = sigmanifest::config_descriptor(&config);
    for (desc, bytes) in [(&layer, Bytes::from(payload)), (&config_desc, config)] {
        if !sink.has_blob(target, desc).await? {
            let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
            sink.put_blob(target, desc, Box::pin(stream)).await?;
        }
    }
    let tag = sigmanifest::signature_tag(digest);
    sink.put_manifest(target, &ManifestTarget::Tag(tag.clone()), &manifest)
        .await?;
    info!(target = %target, %digest, signature_tag = %tag, key = %key.describe(), "signed");
    Ok(())
}

/// The verify-then-sign flow for one request: the image digest and, with
/// `recursive`, each child of an index.
pub async fn sign_request(
    key: &dyn SignatureKey,
    recursive: bool,
    request: &SignRequest,
    sink: &dyn Sink,
) -> Result<SignOutcome, StageError> {
    let mut digests = vec![request.digest.clone()];
    if recursive {
        if let Ok(Manifest::Index { manifests }) = request.manifest.parse() {
            digests.extend(manifests.into_iter().map(|m| m.digest));
        }
    }
    // Verify all first: a stop must come before any write.
    let mut to_sign = Vec::new();
    for d in &digests {
        match find(key, sink, &request.target, d, &request.upstream).await? {
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
        sign_one(key, sink, &request.target, d, existing).await?;
    }
    Ok(SignOutcome::Signed)
}

/// What the signatures stored for a digest say of it, for one key
/// ([`verify`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verified {
    /// A signature valid for the key, over a payload naming this digest and
    /// carrying every required annotation.
    Valid,
    /// No signature is stored for the digest.
    Missing,
    /// Signatures are stored, none valid for the key.
    NoneValid { signatures: usize },
    /// A signature valid for the key is stored under this digest's tag, but
    /// its payload names another digest.
    OtherDigest { signed: String },
    /// A signature valid for the key names this digest, but its payload
    /// lacks a required annotation.
    Unannotated { missing: Vec<String> },
}

/// Checks the cosign signatures of `digest` stored in `repository` of
/// `store` (the tag `sha256-<hex>.sig`) against `key`: [`Verified::Valid`]
/// when one is valid for the key, names `digest` and carries every
/// `annotations` entry in its payload's `optional` map. Payloads are read
/// bounded and checked against their digests.
pub async fn verify(
    key: &dyn SignatureKey,
    store: &dyn Store,
    repository: &ImageRef,
    digest: &Digest,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Verified, StageError> {
    let sig_ref = repository.with_tag(&sigmanifest::signature_tag(digest));
    // The classic `.sig` tag's layers, then those of signature manifests
    // attached as referrers (the OCI 1.1 API, else the referrers tag).
    let mut layers = match store.manifest(&sig_ref).await? {
        Some(manifest) => sigmanifest::layers(&manifest)
            .map_err(|e| StageError::invalid(format!("{sig_ref}: {e}")))?,
        None => Vec::new(),
    };
    layers.extend(referrer_signatures(store, repository, digest).await?);
    let (mut signatures, mut other, mut unannotated) = (0, None, None);
    for layer in &layers {
        let (Some(sig), true) = (
            &layer.signature,
            layer.descriptor.media_type == SIMPLE_SIGNING,
        ) else {
            continue;
        };
        signatures += 1;
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(sig.trim()) else {
            continue;
        };
        let payload = read_payload(store, repository, &layer.descriptor).await?;
        if !key.verify(&payload, &raw).await? {
            continue;
        }
        let signed = payload::signed_digest(&payload).unwrap_or_default();
        if signed != digest.to_string() {
            other = Some(signed);
            continue;
        }
        let found = payload::optional(&payload);
        let missing: Vec<String> = annotations
            .iter()
            .filter(|(k, v)| found.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if missing.is_empty() {
            debug!(tag = %sig_ref, layer = %layer.descriptor.digest, "signature valid");
            return Ok(Verified::Valid);
        }
        unannotated = Some(missing);
    }
    Ok(match (other, unannotated) {
        (_, Some(missing)) => Verified::Unannotated { missing },
        (Some(signed), None) => Verified::OtherDigest { signed },
        (None, None) if signatures == 0 => Verified::Missing,
        (None, None) => Verified::NoneValid { signatures },
    })
}

/// The artifact type cosign gives a signature attached as a referrer.
pub const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// At most this many referrers of one digest are read (a registry can list
/// thousands; signatures are a handful).
const MAX_REFERRERS: usize = 64;

/// The referrers of `digest`: through the OCI 1.1 API when the store has
/// it, else the referrers tag schema's index (`sha256-<hex>`), else none.
pub async fn referrers(
    store: &dyn Store,
    repository: &ImageRef,
    digest: &Digest,
) -> Result<Vec<Descriptor>, StageError> {
    if let Some(list) = store.referrers(repository, digest).await? {
        return Ok(list);
    }
    let tag = repository.with_tag(&image_syncer_core::digest::AttachedTag::Referrers.of(digest));
    Ok(match store.manifest(&tag).await? {
        Some(index) => match index.parse() {
            Ok(Manifest::Index { manifests }) => manifests,
            _ => Vec::new(),
        },
        None => Vec::new(),
    })
}

/// The signature layers of the cosign signature manifests attached to
/// `digest` as referrers. A referrer is recognised by its layer media type
/// (some registries list referrers without `artifactType`); one whose
/// `artifactType` says it is something else is not read.
async fn referrer_signatures(
    store: &dyn Store,
    repository: &ImageRef,
    digest: &Digest,
) -> Result<Vec<sigmanifest::SignatureLayer>, StageError> {
    let mut out = Vec::new();
    for d in referrers(store, repository, digest)
        .await?
        .iter()
        .filter(|d| {
            d.artifact_type
                .as_deref()
                .is_none_or(|t| t.is_empty() || t == SIGNATURE_ARTIFACT_TYPE)
        })
        .take(MAX_REFERRERS)
    {
        let manifest = store.manifest_at(repository, d).await?;
        if manifest.digest != d.digest {
            return Err(StageError::integrity(format!(
                "{repository}: referrer {} has content of digest {}",
                d.digest, manifest.digest
            )));
        }
        if let Ok(layers) = sigmanifest::layers(&manifest) {
            out.extend(
                layers
                    .into_iter()
                    .filter(|l| l.descriptor.media_type == SIMPLE_SIGNING),
            );
        }
    }
    Ok(out)
}
