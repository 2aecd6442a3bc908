//! Unit tests of the signer on the in-memory registry.

use std::sync::Arc;

use bytes::Bytes;
use image_syncer_core::digest::Digest;
use image_syncer_core::manifest::{RawManifest, OCI_INDEX};
use image_syncer_core::memory::MemoryRegistry;
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::{ErrorKind, ManifestTarget, SignOutcome, SignRequest, Signer, Sink};
use image_syncer_cosign_format::KeyRef;
use sigstore::crypto::signing_key::ecdsa::{ECDSAKeys, EllipticCurve};
use sigstore::crypto::signing_key::SigStoreKeyPair;

use crate::keys::LocalKey;
use crate::{sigmanifest, CosignConfig, CosignSigner};

fn new_key() -> (String, LocalKey) {
    let pair = SigStoreKeyPair::ECDSA(ECDSAKeys::new(EllipticCurve::P256).unwrap());
    let pem = pair.private_key_to_pem().unwrap().to_string();
    let key = LocalKey::from_pem("test", &pem, None).unwrap();
    (pem, key)
}

fn signer(key: LocalKey, recursive: bool) -> CosignSigner {
    CosignSigner::new(
        CosignConfig {
            recursive,
            ..Default::default()
        },
        KeyRef::File {
            path: "test.pem".into(),
        },
        Arc::new(key),
    )
}

fn as_sink(reg: &Arc<MemoryRegistry>) -> Arc<dyn Sink> {
    reg.clone()
}

fn target() -> ImageRef {
    ImageRef::parse("registry.example/mirror/app:1").unwrap()
}

/// An index with two children, stored in `reg` under `app:1`.
fn index(reg: &Arc<MemoryRegistry>) -> RawManifest {
    let t = target();
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let config = reg.add_blob(
            &t,
            "application/vnd.oci.image.config.v1+json",
            arch.as_bytes(),
        );
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config, "layers": []});
        let raw =
            RawManifest::new(None, Bytes::from(serde_json::to_vec(&m).unwrap()), None).unwrap();
        reg.add_manifest(&t, &raw, None);
        children.push(serde_json::json!({"mediaType": raw.media_type, "digest": raw.digest, "size": raw.bytes.len(), "platform": {"os": "linux", "architecture": arch}}));
    }
    let idx =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children});
    let raw = RawManifest::new(None, Bytes::from(serde_json::to_vec(&idx).unwrap()), None).unwrap();
    reg.add_manifest(&t, &raw, Some("1"));
    raw
}

fn request(m: &RawManifest, dry_run: bool) -> SignRequest {
    SignRequest {
        target: target(),
        digest: m.digest.clone(),
        manifest: m.clone(),
        dry_run,
        upstream: vec![],
    }
}

async fn sig_layers(reg: &Arc<MemoryRegistry>, d: &Digest) -> Option<usize> {
    let m = Sink::fetch_manifest(
        reg.as_ref(),
        &target().with_tag(&sigmanifest::signature_tag(d)),
    )
    .await
    .unwrap()?;
    Some(sigmanifest::layers(&m).unwrap().len())
}

#[tokio::test]
async fn signs_once_then_finds_its_signature() {
    let reg = Arc::new(MemoryRegistry::new());
    let m = index(&reg);
    let (_, key) = new_key();
    let s = signer(key, false);
    assert_eq!(
        s.sign(&request(&m, true), &as_sink(&reg)).await.unwrap(),
        SignOutcome::WouldSign
    );
    assert_eq!(reg.writes(), 0);
    assert_eq!(
        s.sign(&request(&m, false), &as_sink(&reg)).await.unwrap(),
        SignOutcome::Signed
    );
    assert_eq!(sig_layers(&reg, &m.digest).await, Some(1));
    let writes = reg.writes();
    assert_eq!(
        s.sign(&request(&m, false), &as_sink(&reg)).await.unwrap(),
        SignOutcome::AlreadySigned
    );
    assert_eq!(reg.writes(), writes);
}

#[tokio::test]
async fn recursive_signs_index_and_children() {
    let reg = Arc::new(MemoryRegistry::new());
    let m = index(&reg);
    let (_, key) = new_key();
    let s = signer(key, true);
    assert_eq!(
        s.sign(&request(&m, false), &as_sink(&reg)).await.unwrap(),
        SignOutcome::Signed
    );
    assert_eq!(sig_layers(&reg, &m.digest).await, Some(1));
    let image_syncer_core::manifest::Manifest::Index { manifests } = m.parse().unwrap() else {
        unreachable!()
    };
    for child in manifests {
        assert_eq!(
            sig_layers(&reg, &child.digest).await,
            Some(1),
            "child {}",
            child.digest
        );
    }
    // Without --recursive only the index is signed.
    let reg2 = Arc::new(MemoryRegistry::new());
    let m2 = index(&reg2);
    let (_, key) = new_key();
    signer(key, false)
        .sign(&request(&m2, false), &as_sink(&reg2))
        .await
        .unwrap();
    let image_syncer_core::manifest::Manifest::Index { manifests } = m2.parse().unwrap() else {
        unreachable!()
    };
    assert_eq!(sig_layers(&reg2, &manifests[0].digest).await, None);
}

#[tokio::test]
async fn another_keys_signature_stops_and_writes_nothing() {
    let reg = Arc::new(MemoryRegistry::new());
    let m = index(&reg);
    let (_, theirs) = new_key();
    signer(theirs, false)
        .sign(&request(&m, false), &as_sink(&reg))
        .await
        .unwrap();
    let writes = reg.writes();
    let (_, ours) = new_key();
    let err = signer(ours, false)
        .sign(&request(&m, false), &as_sink(&reg))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Integrity);
    assert!(
        err.message.contains(&m.digest.to_string()) && err.message.contains("test.pem"),
        "{}",
        err.message
    );
    assert_eq!(reg.writes(), writes);
    // Dry run stops the same way.
    let (_, ours) = new_key();
    let err = signer(ours, false)
        .sign(&request(&m, true), &as_sink(&reg))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Integrity);
}

#[tokio::test]
async fn a_signature_for_another_digest_is_not_valid() {
    let reg = Arc::new(MemoryRegistry::new());
    let m = index(&reg);
    let (pem, key) = new_key();
    // A valid signature by our key, but over a payload naming another digest,
    // stored under this digest's signature tag.
    let other = Digest::sha256_of(b"other image");
    let payload = crate::payload::payload("registry.example/mirror/app", &other);
    let sig = <LocalKey as crate::keys::KeyProvider>::sign(&key, &payload)
        .await
        .unwrap();
    use base64::Engine as _;
    let layer = sigmanifest::signature_layer(
        &payload,
        &base64::engine::general_purpose::STANDARD.encode(sig),
    );
    let t = target();
    reg.add_blob(&t, sigmanifest::SIMPLE_SIGNING, &payload);
    let (manifest, config) = sigmanifest::build(&[], &layer);
    reg.add_blob(&t, sigmanifest::CONFIG_MEDIA_TYPE, &config);
    reg.add_manifest(&t, &manifest, Some(&sigmanifest::signature_tag(&m.digest)));
    let key = LocalKey::from_pem("test", &pem, None).unwrap();
    let err = signer(key, false)
        .sign(&request(&m, false), &as_sink(&reg))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Integrity);
}

#[tokio::test]
async fn tampered_payload_is_an_integrity_error() {
    let reg = Arc::new(MemoryRegistry::new());
    let m = index(&reg);
    let (pem, key) = new_key();
    signer(key, false)
        .sign(&request(&m, false), &as_sink(&reg))
        .await
        .unwrap();
    let sig = Sink::fetch_manifest(
        reg.as_ref(),
        &target().with_tag(&sigmanifest::signature_tag(&m.digest)),
    )
    .await
    .unwrap()
    .unwrap();
    let layer = sigmanifest::layers(&sig).unwrap().remove(0);
    reg.corrupt_blob(&target(), &layer.descriptor.digest, b"{\"tampered\":true}");
    let key = LocalKey::from_pem("test", &pem, None).unwrap();
    let err = signer(key, false)
        .sign(&request(&m, false), &as_sink(&reg))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Integrity, "{}", err.message);
}

#[tokio::test]
async fn appends_to_a_manifest_without_signatures_keeping_its_layers() {
    let reg = Arc::new(MemoryRegistry::new());
    let m = index(&reg);
    let t = target();
    // A signature manifest holding a non-signature layer (for example an attachment).
    let other = reg.add_blob(&t, "application/vnd.example.note", b"note");
    let (existing, config) = sigmanifest::build(&[], &other);
    reg.add_blob(&t, sigmanifest::CONFIG_MEDIA_TYPE, &config);
    reg.add_manifest(&t, &existing, Some(&sigmanifest::signature_tag(&m.digest)));
    let (_, key) = new_key();
    assert_eq!(
        signer(key, false)
            .sign(&request(&m, false), &as_sink(&reg))
            .await
            .unwrap(),
        SignOutcome::Signed
    );
    let sig = Sink::fetch_manifest(
        reg.as_ref(),
        &t.with_tag(&sigmanifest::signature_tag(&m.digest)),
    )
    .await
    .unwrap()
    .unwrap();
    let layers = sigmanifest::layers(&sig).unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0].descriptor, other);
    assert!(layers[1].signature.is_some());
    // Every blob the manifest references is present.
    for l in &layers {
        assert!(reg.has_blob(&t, &l.descriptor).await.unwrap());
    }
    let _ = ManifestTarget::Digest;
}

#[test]
fn encrypted_cosign_key_needs_the_right_password() {
    let pair = SigStoreKeyPair::ECDSA(ECDSAKeys::new(EllipticCurve::P256).unwrap());
    let encrypted = pair
        .private_key_to_encrypted_pem(b"s3cret")
        .unwrap()
        .to_string();
    assert!(encrypted.contains("ENCRYPTED"));
    assert!(LocalKey::from_pem("cosign.key", &encrypted, Some("s3cret")).is_ok());
    let wrong = LocalKey::from_pem("cosign.key", &encrypted, Some("nope"))
        .err()
        .unwrap();
    let missing = LocalKey::from_pem("cosign.key", &encrypted, None)
        .err()
        .unwrap();
    insta::assert_snapshot!(format!("{}\n{}", wrong.message, missing.message));
}
