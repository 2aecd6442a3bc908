//! cosign v3's signature format: a Sigstore bundle (a DSSE envelope around
//! an in-toto statement) attached to the image as an OCI 1.1 referrer. The
//! exact layout, and why it is checked here rather than by the `sigstore`
//! crate (which wants a transparency-log entry for key-signed bundles), is
//! in docs/signing.md ("Two formats").
//!
//! Checked with a key: one DSSE signature over the PAE of the envelope's
//! payload bytes (as served), `payloadType` in-toto, `predicateType` cosign's
//! signing predicate (stricter than cosign, which would also take an
//! attestation), a subject naming the digest, the required annotations on
//! it. Not checked: transparency-log entries and timestamps (as `cosign
//! verify --insecure-ignore-tlog`). Keyless bundles (a certificate) are
//! recognised and reported, not verified.

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use image_syncer_core::digest::Digest;
use image_syncer_core::manifest::{Descriptor, RawManifest, OCI_MANIFEST};
use image_syncer_core::stage::StageError;
use serde::Deserialize;

use crate::SignatureKey;

/// The bundle media type cosign v3 writes.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Every bundle media type starts so (a layer is selected by it).
pub const BUNDLE_MEDIA_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
/// The DSSE payload type of an in-toto statement.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
/// The predicate of cosign's image signatures.
pub const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
/// The empty config of artifacts, and its content.
pub const EMPTY_CONFIG_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// Largest bundle read (cosign's are a few kB).
pub const MAX_BUNDLE: u64 = 1 << 20;

/// Whether a layer media type is a Sigstore bundle's, v0.3 or later.
pub fn is_bundle_layer(media_type: &str) -> bool {
    let Some(rest) = media_type.strip_prefix(BUNDLE_MEDIA_PREFIX) else {
        return false;
    };
    // `.v0.3+json`, `+json;version=0.3`, ...: v0.1 and v0.2 are older.
    !(rest.contains("0.1") || rest.contains("0.2"))
}

/// The DSSE pre-authentication encoding: what the signature is over.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    #[serde(default)]
    verification_material: Option<Material>,
    #[serde(default)]
    dsse_envelope: Option<Envelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Material {
    #[serde(default)]
    certificate: Option<serde_json::Value>,
    #[serde(default)]
    x509_certificate_chain: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    #[serde(default)]
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    #[serde(default)]
    predicate_type: String,
    #[serde(default)]
    subject: Vec<Subject>,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    digest: BTreeMap<String, String>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, serde_json::Value>>,
}

/// What one bundle says of a digest, for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    /// Valid for the key, a cosign signature of the digest with every
    /// required annotation.
    Valid,
    /// Signed with a certificate (keyless): not verifiable with a key.
    Keyless,
    /// Valid for the key, but its statement names another digest.
    OtherDigest { signed: String },
    /// Valid for the key and the digest, without a required annotation.
    Unannotated { missing: Vec<String> },
    /// Not a valid cosign signature for the key, and why.
    Invalid { why: String },
}

/// Checks the bundle `bytes` against `key`, for `digest`.
pub async fn check(
    key: &dyn SignatureKey,
    bytes: &[u8],
    digest: &Digest,
    annotations: &BTreeMap<String, String>,
) -> Result<Checked, StageError> {
    let invalid = |why: &str| Ok(Checked::Invalid { why: why.into() });
    let Ok(bundle) = serde_json::from_slice::<Bundle>(bytes) else {
        return invalid("not a Sigstore bundle");
    };
    if bundle
        .verification_material
        .as_ref()
        .is_some_and(|m| m.certificate.is_some() || m.x509_certificate_chain.is_some())
    {
        return Ok(Checked::Keyless);
    }
    let Some(envelope) = bundle.dsse_envelope else {
        return invalid("no DSSE envelope");
    };
    if envelope.payload_type != IN_TOTO {
        return invalid("the envelope's payload is not an in-toto statement");
    }
    let [signature] = envelope.signatures.as_slice() else {
        return invalid("the envelope has not exactly one signature");
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(payload), Ok(sig)) = (b64.decode(&envelope.payload), b64.decode(&signature.sig)) else {
        return invalid("the envelope is not base64");
    };
    if !key
        .verify(&pae(&envelope.payload_type, &payload), &sig)
        .await?
    {
        return invalid("the signature is not valid for the key");
    }
    Ok(statement_verdict(&payload, digest, annotations))
}

/// The in-toto statement a bundle's DSSE envelope carries (the payload
/// bytes as served), or why there is none. Not verified here.
pub fn envelope_statement(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let bundle = serde_json::from_slice::<Bundle>(bytes).map_err(|_| "not a Sigstore bundle")?;
    let envelope = bundle
        .dsse_envelope
        .ok_or("no DSSE envelope (a message signature is not an image signature statement)")?;
    if envelope.payload_type != IN_TOTO {
        return Err("the envelope's payload is not an in-toto statement".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(&envelope.payload)
        .map_err(|_| "the envelope is not base64".into())
}

/// The `sha256` digests a statement's subjects name, in order.
pub fn statement_subjects(payload: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Statement>(payload)
        .map(|s| {
            s.subject
                .iter()
                .filter_map(|s| s.digest.get("sha256").cloned())
                .collect()
        })
        .unwrap_or_default()
}

/// What a statement whose signature verified says of `digest`: cosign's
/// signing predicate (stricter than cosign, which would also take an
/// attestation), a subject naming the digest, the required annotations on
/// that subject.
pub fn statement_verdict(
    payload: &[u8],
    digest: &Digest,
    annotations: &BTreeMap<String, String>,
) -> Checked {
    let Ok(statement) = serde_json::from_slice::<Statement>(payload) else {
        return Checked::Invalid {
            why: "the payload is not an in-toto statement".into(),
        };
    };
    if statement.predicate_type != SIGN_PREDICATE {
        return Checked::Invalid {
            why: format!(
                "an attestation (predicateType {}), not a signature",
                statement.predicate_type
            ),
        };
    }
    let Some(subject) = statement
        .subject
        .iter()
        .find(|s| s.digest.get("sha256").map(String::as_str) == Some(digest.hex()))
    else {
        let signed = statement
            .subject
            .first()
            .and_then(|s| s.digest.get("sha256"))
            .map(|h| format!("sha256:{h}"))
            .unwrap_or_default();
        return Checked::OtherDigest { signed };
    };
    let found = subject.annotations.clone().unwrap_or_default();
    let missing: Vec<String> = annotations
        .iter()
        .filter(|(k, v)| found.get(*k).and_then(|x| x.as_str()) != Some(v.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if missing.is_empty() {
        Checked::Valid
    } else {
        Checked::Unannotated { missing }
    }
}

/// A bundle written for one digest: the referrer manifest and its blobs.
pub struct Written {
    pub manifest: RawManifest,
    /// The config (`{}`) and the bundle, with their descriptors.
    pub blobs: Vec<(Descriptor, Bytes)>,
}

/// What cosign v3 writes for `cosign sign --key` without a transparency
/// log: the statement, the envelope signed by `key`, the bundle with the
/// public key's hint (base64 of the SHA-256 of its SPKI DER, when known),
/// and the referrer manifest with `subject`, dated `created` (RFC 3339).
pub async fn write(
    key: &dyn SignatureKey,
    subject: &Descriptor,
    public_key_der: Option<&[u8]>,
    created: &str,
) -> Result<Written, StageError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let statement = format!(
        "{{\"_type\":\"https://in-toto.io/Statement/v1\",\"subject\":[{{\"digest\":{{\"sha256\":\"{}\"}},\"annotations\":{{}}}}],\"predicateType\":\"{SIGN_PREDICATE}\",\"predicate\":{{}}}}",
        subject.digest.hex()
    );
    let signature = key.sign(&pae(IN_TOTO, statement.as_bytes())).await?;
    if !key
        .verify(&pae(IN_TOTO, statement.as_bytes()), &signature)
        .await?
    {
        return Err(StageError::config(format!(
            "signing key {}: its signature does not verify with its public key",
            key.describe()
        )));
    }
    let public_key = match public_key_der {
        Some(der) => {
            use sha2::Digest as _;
            serde_json::json!({ "hint": b64.encode(sha2::Sha256::digest(der)) })
        }
        None => serde_json::json!({}),
    };
    let bundle = serde_json::json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": { "publicKey": public_key },
        "dsseEnvelope": {
            "payload": b64.encode(statement.as_bytes()),
            "payloadType": IN_TOTO,
            "signatures": [ { "sig": b64.encode(&signature) } ],
        },
    });
    let bundle = Bytes::from(serde_json::to_vec(&bundle).expect("a bundle serializes"));
    let config = Bytes::from_static(EMPTY_CONFIG);
    let config_desc = Descriptor::new(EMPTY_CONFIG_TYPE, Digest::sha256_of(&config), 2);
    let bundle_desc = Descriptor::new(
        BUNDLE_MEDIA_TYPE,
        Digest::sha256_of(&bundle),
        bundle.len() as u64,
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_MEDIA_TYPE,
        "config": {
            "mediaType": EMPTY_CONFIG_TYPE,
            "digest": config_desc.digest,
            "size": 2,
            "artifactType": BUNDLE_MEDIA_TYPE,
        },
        "layers": [ { "mediaType": BUNDLE_MEDIA_TYPE, "digest": bundle_desc.digest, "size": bundle_desc.size } ],
        "subject": { "mediaType": subject.media_type, "digest": subject.digest, "size": subject.size },
        "annotations": {
            "dev.sigstore.bundle.content": "dsse-envelope",
            "dev.sigstore.bundle.predicateType": SIGN_PREDICATE,
            "org.opencontainers.image.created": created,
        },
    });
    let manifest = RawManifest::new(
        Some(OCI_MANIFEST),
        Bytes::from(serde_json::to_vec(&manifest).expect("a manifest serializes")),
        None,
    )
    .map_err(|e| StageError::invalid(format!("bundle manifest: {e}")))?;
    Ok(Written {
        manifest,
        blobs: vec![(config_desc, config), (bundle_desc, bundle)],
    })
}
