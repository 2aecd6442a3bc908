//! cosign's classic signature format, the key references (`--kms-key`
//! schemes, [`KeyRef`]) and the verify-then-sign flow: a library shared by
//! the built-in `cosign` signer and the `exec` example signer (plugins never
//! depend on plugins; both depend on this). The core knows "a signer" only.
//! Keys are abstract ([`SignatureKey`]): where a signature
//! comes from and how it is checked is the plugin's business; what is stored,
//! where, and when a run must stop is decided here.
//!
//! Two formats are read and written: cosign's classic `sha256-<hex>.sig` tag
//! ([`sigmanifest`], [`payload`]) and cosign v3's Sigstore bundle attached as
//! an OCI 1.1 referrer ([`bundle`]). For each digest to sign, both are read
//! ([`inspect`]):
//! - a signature valid for the key over this digest, in either format →
//!   already signed, nothing written;
//! - signatures in either format, none valid → safety stop
//!   (`ErrorKind::Integrity`);
//! - none → sign in the configured [`Format`] (dry run: "would sign").

pub mod bundle;
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
    /// The public key as DER (SubjectPublicKeyInfo), when the key knows it:
    /// a bundle names it by its hash (`verificationMaterial.publicKey.hint`).
    async fn public_key_der(&self) -> Result<Option<Vec<u8>>, StageError> {
        Ok(None)
    }
}

/// How stored signatures are judged: with a key ([`WithKey`], the signer's
/// verify-first step and `cosign-verify { key }`), or against a keyless
/// policy (`cosign-verify { keyless }`: a certificate chaining to a trusted
/// root, for an identity and issuer, recorded in a transparency log). What is
/// read, in which order, and what the findings mean is decided by [`inspect`];
/// a verifier only says whether one signature is valid, and why not.
#[async_trait::async_trait]
pub trait Verifier: Send + Sync {
    /// What a signature must be valid for, for messages (`key K`,
    /// `keyless identity I (issuer U)`); never secret material.
    fn describe(&self) -> String;
    /// Whether the classic layer's signature over `payload` (the layer's
    /// content, read and checked against its digest) is valid; `Err(why)`
    /// when it is not. Whether the payload names the right digest is checked
    /// by the caller.
    async fn classic(
        &self,
        payload: &[u8],
        layer: &SignatureLayer,
    ) -> Result<Result<(), String>, StageError>;
    /// What the Sigstore bundle `bytes` says of `digest`.
    async fn bundle(
        &self,
        bytes: &[u8],
        digest: &Digest,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<bundle::Checked, StageError>;
}

/// A [`SignatureKey`] as a [`Verifier`]: classic signatures and key-signed
/// bundles checked with the key; keyless ones are not verifiable with it.
pub struct WithKey<'a>(pub &'a dyn SignatureKey);

#[async_trait::async_trait]
impl Verifier for WithKey<'_> {
    fn describe(&self) -> String {
        format!("key {}", self.0.describe())
    }

    async fn classic(
        &self,
        payload: &[u8],
        layer: &SignatureLayer,
    ) -> Result<Result<(), String>, StageError> {
        let sig = layer.signature.as_deref().unwrap_or_default();
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(sig.trim()) else {
            return Ok(Err("the signature annotation is not base64".into()));
        };
        Ok(if self.0.verify(payload, &raw).await? {
            Ok(())
        } else {
            Err("the signature is not valid for the key".into())
        })
    }

    async fn bundle(
        &self,
        bytes: &[u8],
        digest: &Digest,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<bundle::Checked, StageError> {
        bundle::check(self.0, bytes, digest, annotations).await
    }
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

/// The signature formats a signer writes.
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
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// cosign's classic `sha256-<hex>.sig` tag (kyma's format).
    #[default]
    Classic,
    /// cosign v3's Sigstore bundle, attached as an OCI 1.1 referrer.
    Bundle,
    /// Both.
    Both,
}

/// Which format a signature was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Classic,
    Bundle,
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Found::Classic => "classic .sig",
            Found::Bundle => "Sigstore bundle",
        })
    }
}

/// What the signatures stored for a digest say of it, for one key
/// ([`verify`], [`inspect`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verified {
    /// A signature valid for the key, over this digest, carrying every
    /// required annotation, in this format.
    Valid(Found),
    /// No signature is stored for the digest, in either format.
    Missing,
    /// Signatures are stored, none valid: `signatures` checked (classic
    /// layers and bundles), of which `keyless` are keyless bundles (a
    /// certificate, not verifiable with a key); `reasons`, why each was
    /// refused (each reason once, in the order found).
    NoneValid {
        signatures: usize,
        keyless: usize,
        reasons: Vec<String>,
    },
    /// A signature valid for the key is stored for this digest, but it
    /// signs another digest.
    OtherDigest { signed: String },
    /// A signature valid for the key names this digest, but lacks a
    /// required annotation.
    Unannotated { missing: Vec<String> },
}

impl Verified {
    /// The reasons of a [`Verified::NoneValid`], as ` (why: a; b)`, or
    /// nothing.
    pub fn why(&self) -> String {
        match self {
            Verified::NoneValid { reasons, .. } if !reasons.is_empty() => {
                format!(" (why: {})", reasons.join("; "))
            }
            _ => String::new(),
        }
    }
}

/// What [`inspect`] found for one digest.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub verified: Verified,
    /// The layers of the classic `.sig` manifest, if any (a new classic
    /// signature is appended to them).
    pub classic_layers: Vec<Descriptor>,
}

/// The artifact type cosign gives a classic signature attached as a referrer.
pub const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// At most this many referrers of one digest are read (a registry can list
/// thousands; signatures are a handful).
const MAX_REFERRERS: usize = 64;

async fn read_blob(
    store: &dyn Store,
    repo: &ImageRef,
    d: &Descriptor,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, StageError> {
    if d.size > limit {
        return Err(StageError::invalid(format!(
            "{repo}: {what} {} is {} bytes, more than a {what} can be",
            d.digest, d.size
        )));
    }
    let stream = store.blob(repo, d).await?;
    let mut verified = VerifyingStream::new(stream, d.digest.clone(), Some(d.size));
    let mut out = Vec::with_capacity(d.size as usize);
    while let Some(chunk) = verified.next().await {
        let chunk =
            chunk.map_err(|e| StageError::from_io(&format!("{repo}: {what} {}", d.digest), &e))?;
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

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
    Ok(referrers_tag(store, repository, digest).await?.1)
}

/// The referrers tag schema's index of `digest` and what it lists.
async fn referrers_tag(
    store: &dyn Store,
    repository: &ImageRef,
    digest: &Digest,
) -> Result<(Option<RawManifest>, Vec<Descriptor>), StageError> {
    let tag = repository.with_tag(&image_syncer_core::digest::AttachedTag::Referrers.of(digest));
    Ok(match store.manifest(&tag).await? {
        Some(index) => {
            let listed = match index.parse() {
                Ok(Manifest::Index { manifests }) => manifests,
                _ => Vec::new(),
            };
            (Some(index), listed)
        }
        None => (None, Vec::new()),
    })
}

/// A signature candidate.
enum Candidate {
    Classic(SignatureLayer),
    /// A bundle referrer: its manifest's descriptor, and the bundle layer.
    Bundle(Descriptor, Descriptor),
}

/// The signatures attached to `digest` as referrers: cosign bundles (one
/// layer of a bundle media type) and classic signature manifests
/// (simple-signing layers). Selected by layer, since some registries list
/// referrers without `artifactType` (or with the empty config's); one whose
/// `artifactType` says it is something else is not read.
async fn referrer_candidates(
    store: &dyn Store,
    repository: &ImageRef,
    digest: &Digest,
) -> Result<Vec<Candidate>, StageError> {
    let mut out = Vec::new();
    for d in referrers(store, repository, digest)
        .await?
        .iter()
        .filter(|d| {
            d.artifact_type.as_deref().is_none_or(|t| {
                t.is_empty()
                    || t == SIGNATURE_ARTIFACT_TYPE
                    || t == bundle::EMPTY_CONFIG_TYPE
                    || t.starts_with(bundle::BUNDLE_MEDIA_PREFIX)
            })
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
        let Ok(Manifest::Image { layers, .. }) = manifest.parse() else {
            continue;
        };
        match layers.as_slice() {
            [one] if bundle::is_bundle_layer(&one.media_type) => {
                out.push(Candidate::Bundle(d.clone(), one.clone()));
            }
            _ => {
                if let Ok(layers) = sigmanifest::layers(&manifest) {
                    out.extend(
                        layers
                            .into_iter()
                            .filter(|l| l.descriptor.media_type == SIMPLE_SIGNING)
                            .map(Candidate::Classic),
                    );
                }
            }
        }
    }
    Ok(out)
}

/// Checks every signature stored for `digest` in `repository` of `store`
/// with `verifier`: the classic `sha256-<hex>.sig` tag's layers, then the
/// signatures attached as referrers (bundles and classic). A signature
/// among `exempt` (a layer or a referrer manifest carried from upstream) is
/// not counted when it does not verify. Payloads and bundles are read
/// bounded and checked against their digests.
pub async fn inspect(
    verifier: &dyn Verifier,
    store: &dyn Store,
    repository: &ImageRef,
    digest: &Digest,
    annotations: &std::collections::BTreeMap<String, String>,
    exempt: &[Descriptor],
) -> Result<Inspection, StageError> {
    let sig_ref = repository.with_tag(&sigmanifest::signature_tag(digest));
    let classic = match store.manifest(&sig_ref).await? {
        Some(manifest) => sigmanifest::layers(&manifest)
            .map_err(|e| StageError::integrity(format!("{sig_ref}: {e}")))?,
        None => Vec::new(),
    };
    let classic_layers: Vec<Descriptor> = classic.iter().map(|l| l.descriptor.clone()).collect();
    let mut candidates: Vec<Candidate> = classic.into_iter().map(Candidate::Classic).collect();
    candidates.extend(referrer_candidates(store, repository, digest).await?);
    let is_exempt = |d: &Descriptor| exempt.iter().any(|e| e.digest == d.digest);
    let (mut signatures, mut keyless, mut other, mut unannotated) = (0, 0, None, None);
    let mut reasons: Vec<String> = Vec::new();
    for candidate in &candidates {
        let (checked, exempted) = match candidate {
            Candidate::Classic(layer) => {
                if layer.signature.is_none() || layer.descriptor.media_type != SIMPLE_SIGNING {
                    continue;
                }
                let payload = read_blob(
                    store,
                    repository,
                    &layer.descriptor,
                    MAX_PAYLOAD,
                    "signature payload",
                )
                .await?;
                let checked = match verifier.classic(&payload, layer).await? {
                    Ok(()) => classic_subject(&payload, digest, annotations),
                    Err(why) => bundle::Checked::Invalid { why },
                };
                (checked, is_exempt(&layer.descriptor))
            }
            Candidate::Bundle(manifest, layer) => {
                let bytes = read_blob(
                    store,
                    repository,
                    layer,
                    bundle::MAX_BUNDLE,
                    "Sigstore bundle",
                )
                .await?;
                let checked = verifier.bundle(&bytes, digest, annotations).await?;
                (checked, is_exempt(manifest))
            }
        };
        let format = match candidate {
            Candidate::Classic(_) => Found::Classic,
            Candidate::Bundle(..) => Found::Bundle,
        };
        debug!(repository = %repository, %digest, ?format, ?checked, exempted, "signature checked");
        match checked {
            bundle::Checked::Valid => {
                return Ok(Inspection {
                    verified: Verified::Valid(format),
                    classic_layers,
                })
            }
            _ if exempted => {}
            bundle::Checked::Keyless => {
                signatures += 1;
                keyless += 1;
            }
            bundle::Checked::OtherDigest { signed } => {
                signatures += 1;
                other = Some(signed);
            }
            bundle::Checked::Unannotated { missing } => {
                signatures += 1;
                unannotated = Some(missing);
            }
            bundle::Checked::Invalid { why } => {
                signatures += 1;
                let why = format!("{format}: {why}");
                if !reasons.contains(&why) {
                    reasons.push(why);
                }
            }
        }
    }
    let verified = match (other, unannotated) {
        (_, Some(missing)) => Verified::Unannotated { missing },
        (Some(signed), None) => Verified::OtherDigest { signed },
        (None, None) if signatures == 0 => Verified::Missing,
        (None, None) => Verified::NoneValid {
            signatures,
            keyless,
            reasons,
        },
    };
    Ok(Inspection {
        verified,
        classic_layers,
    })
}

/// A classic payload whose signature verified: does it name `digest`, with
/// the required annotations?
fn classic_subject(
    payload: &[u8],
    digest: &Digest,
    annotations: &std::collections::BTreeMap<String, String>,
) -> bundle::Checked {
    let signed = payload::signed_digest(payload).unwrap_or_default();
    if signed != digest.to_string() {
        return bundle::Checked::OtherDigest { signed };
    }
    let found = payload::optional(payload);
    let missing: Vec<String> = annotations
        .iter()
        .filter(|(k, v)| found.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if missing.is_empty() {
        bundle::Checked::Valid
    } else {
        bundle::Checked::Unannotated { missing }
    }
}

/// Checks the signatures of `digest` stored in `store` with `verifier`, in
/// both formats (see [`inspect`]), nothing exempt.
pub async fn verify(
    verifier: &dyn Verifier,
    store: &dyn Store,
    repository: &ImageRef,
    digest: &Digest,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Verified, StageError> {
    Ok(
        inspect(verifier, store, repository, digest, annotations, &[])
            .await?
            .verified,
    )
}

async fn put_blobs(
    sink: &dyn Sink,
    target: &ImageRef,
    blobs: Vec<(Descriptor, Bytes)>,
) -> Result<(), StageError> {
    for (desc, bytes) in blobs {
        if !sink.has_blob(target, &desc).await? {
            let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
            sink.put_blob(target, &desc, Box::pin(stream)).await?;
        }
    }
    Ok(())
}

async fn sign_classic(
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
    put_blobs(
        sink,
        target,
        vec![(layer, Bytes::from(payload)), (config_desc, config)],
    )
    .await?;
    let tag = sigmanifest::signature_tag(digest);
    sink.put_manifest(target, &ManifestTarget::Tag(tag.clone()), &manifest)
        .await?;
    info!(target = %target, %digest, signature_tag = %tag, key = %key.describe(), "signed");
    Ok(())
}

/// Writes a bundle for `subject` as cosign v3 does: the referrer manifest by
/// digest, then, on a target without the referrers API, the referrers tag's
/// index with it added (kept, sorted by digest, never twice).
async fn sign_bundle(
    key: &dyn SignatureKey,
    sink: &dyn Sink,
    target: &ImageRef,
    subject: &Descriptor,
) -> Result<(), StageError> {
    let der = key.public_key_der().await?;
    let written = bundle::write(key, subject, der.as_deref(), &rfc3339_now()).await?;
    put_blobs(sink, target, written.blobs).await?;
    sink.put_manifest(target, &ManifestTarget::Digest, &written.manifest)
        .await?;
    let mut listed = Descriptor::new(
        written.manifest.media_type.clone(),
        written.manifest.digest.clone(),
        written.manifest.bytes.len() as u64,
    );
    listed.artifact_type = Some(bundle::BUNDLE_MEDIA_TYPE.to_string());
    if sink.referrers(target, &subject.digest).await?.is_none() {
        let (_, existing) = referrers_tag(&SinkStore(sink), target, &subject.digest).await?;
        if let Some(index) =
            image_syncer_core::manifest::merged_referrers_index(&existing, &[listed])
        {
            let tag = image_syncer_core::digest::AttachedTag::Referrers.of(&subject.digest);
            sink.put_manifest(target, &ManifestTarget::Tag(tag), &index)
                .await?;
        }
    }
    info!(target = %target, digest = %subject.digest, bundle = %written.manifest.digest, key = %key.describe(), "signed (Sigstore bundle)");
    Ok(())
}

/// Now, as RFC 3339 UTC to the second (`2026-11-27T14:00:00Z`), as cosign
/// dates what it writes.
fn rfc3339_now() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// `at` as RFC 3339 UTC, whole seconds (`2026-11-27T14:00:00Z`).
fn rfc3339(at: time::OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a date of years 0 to 9999 formats as RFC 3339")
}

/// The verify-then-sign flow for one request, writing the classic format.
pub async fn sign_request(
    key: &dyn SignatureKey,
    recursive: bool,
    request: &SignRequest,
    sink: &dyn Sink,
) -> Result<SignOutcome, StageError> {
    sign_request_as(key, recursive, Format::Classic, request, sink).await
}

/// The verify-then-sign flow for one request: the image digest and, with
/// `recursive`, each child of an index. A valid signature by the key in
/// either format means nothing is written for that digest; signatures in
/// either format, none valid, are a safety stop before anything is written;
/// else a signature is written in `format`.
pub async fn sign_request_as(
    key: &dyn SignatureKey,
    recursive: bool,
    format: Format,
    request: &SignRequest,
    sink: &dyn Sink,
) -> Result<SignOutcome, StageError> {
    let mut subjects = vec![request.manifest.descriptor()];
    if recursive {
        if let Ok(Manifest::Index { manifests }) = request.manifest.parse() {
            subjects.extend(manifests);
        }
    }
    let store = SinkStore(sink);
    let target = &request.target;
    // Verify all first: a stop must come before any write.
    let mut to_sign = Vec::new();
    let mut found = Vec::new();
    for subject in &subjects {
        let d = &subject.digest;
        let inspection = inspect(
            &WithKey(key),
            &store,
            target,
            d,
            &Default::default(),
            &request.upstream,
        )
        .await?;
        let stop = |what: String| {
            StageError::integrity(format!(
                "safety stop: {target}@{d} carries {what}, none valid for key {}; nothing more is written",
                key.describe()
            ))
        };
        match inspection.verified {
            Verified::Valid(f) => found.push(f),
            Verified::Missing => to_sign.push((subject.clone(), inspection.classic_layers)),
            Verified::NoneValid {
                signatures,
                keyless,
                ..
            } => {
                let keyless = if keyless > 0 {
                    format!(" ({keyless} keyless: not verifiable with a key)")
                } else {
                    String::new()
                };
                return Err(stop(format!(
                    "{signatures} signature(s){keyless} in {} or its referrers",
                    sigmanifest::signature_tag(d)
                )));
            }
            Verified::OtherDigest { signed } => {
                return Err(stop(format!(
                    "a signature of another digest ({signed}) in {} or its referrers",
                    sigmanifest::signature_tag(d)
                )))
            }
            // The signer requires no annotation; were one required, a
            // signature without it is not ours to keep.
            Verified::Unannotated { missing } => {
                return Err(stop(format!(
                    "a signature without {} in {} or its referrers",
                    missing.join(", "),
                    sigmanifest::signature_tag(d)
                )))
            }
        }
    }
    debug!(target = %target, found = ?found, "signatures found");
    if to_sign.is_empty() {
        // Which format was found: said when only bundles were.
        return Ok(if found.iter().all(|f| *f == Found::Bundle) {
            SignOutcome::AlreadySignedBundle
        } else {
            SignOutcome::AlreadySigned
        });
    }
    if request.dry_run {
        return Ok(SignOutcome::WouldSign);
    }
    for (subject, existing) in &to_sign {
        if matches!(format, Format::Classic | Format::Both) {
            sign_classic(key, sink, target, &subject.digest, existing).await?;
        }
        if matches!(format, Format::Bundle | Format::Both) {
            sign_bundle(key, sink, target, subject).await?;
        }
    }
    Ok(SignOutcome::Signed)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;
    use image_syncer_core::digest::{ByteStream, Digest};
    use image_syncer_core::manifest::{Descriptor, RawManifest, OCI_MANIFEST};
    use image_syncer_core::reference::ImageRef;
    use image_syncer_core::stage::StageError;
    use time::OffsetDateTime;

    /// A store whose referrers API lists `listed`; records which referrer
    /// manifests are fetched.
    struct Referrers {
        listed: Vec<RawManifest>,
        fetched: Mutex<Vec<Digest>>,
    }

    #[async_trait::async_trait]
    impl super::Store for Referrers {
        async fn manifest(&self, _: &ImageRef) -> Result<Option<RawManifest>, StageError> {
            Ok(None)
        }
        async fn blob(&self, _: &ImageRef, d: &Descriptor) -> Result<ByteStream, StageError> {
            Err(StageError::not_found(format!("blob {}", d.digest)))
        }
        async fn manifest_at(
            &self,
            _: &ImageRef,
            d: &Descriptor,
        ) -> Result<RawManifest, StageError> {
            self.fetched.lock().unwrap().push(d.digest.clone());
            self.listed
                .iter()
                .find(|m| m.digest == d.digest)
                .cloned()
                .ok_or_else(|| StageError::not_found(format!("{}", d.digest)))
        }
        async fn referrers(
            &self,
            _: &ImageRef,
            _: &Digest,
        ) -> Result<Option<Vec<Descriptor>>, StageError> {
            Ok(Some(self.listed.iter().map(|m| m.descriptor()).collect()))
        }
    }

    /// At most 64 referrers of one digest are read (`MAX_REFERRERS`): of
    /// 100 listed, the first 64 are fetched, in order, and no other.
    #[tokio::test]
    async fn at_most_64_referrers_are_read() {
        let empty = Digest::sha256_of(b"{}");
        let listed: Vec<RawManifest> = (0..100)
            .map(|i| {
                let json = format!(
                    r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[],"annotations":{{"n":"{i}"}}}}"#
                );
                RawManifest::new(Some(OCI_MANIFEST), Bytes::from(json), None).unwrap()
            })
            .collect();
        let store = Referrers {
            listed,
            fetched: Mutex::new(Vec::new()),
        };
        let repo = ImageRef::parse("127.0.0.1:5000/app").unwrap();
        let subject = Digest::sha256_of(b"subject");
        let candidates = super::referrer_candidates(&store, &repo, &subject)
            .await
            .unwrap();
        assert!(candidates.is_empty());
        let fetched = store.fetched.lock().unwrap().clone();
        let first: Vec<Digest> = store.listed[..64]
            .iter()
            .map(|m| m.digest.clone())
            .collect();
        assert_eq!(fetched.len(), 64);
        assert_eq!(fetched, first);
    }

    /// Whole seconds in UTC, whatever the offset and fraction given.
    #[test]
    fn rfc3339_dates() {
        let at = |secs: i64| OffsetDateTime::from_unix_timestamp(secs).unwrap();
        assert_eq!(super::rfc3339(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(at(1_767_225_599)), "2025-12-31T23:59:59Z");
        let fraction = at(4_107_542_400) + time::Duration::milliseconds(750);
        assert_eq!(super::rfc3339(fraction), "2100-03-01T00:00:00Z");
        let elsewhere = at(0).to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(super::rfc3339(elsewhere), "1970-01-01T00:00:00Z");
        let now = super::rfc3339_now();
        assert!(
            now.len() == 20 && now.ends_with('Z') && &now[10..11] == "T",
            "{now}"
        );
    }
}
