//! cosign v3's Sigstore bundles, against the real registry (the referrers
//! tag schema) and the referrers-API stand-in: made independently here
//! (openssl over the DSSE PAE), verified by `cosign-verify` and by the
//! signer's verify-first step, and written by the signer (`format: bundle`)
//! and checked here with openssl alone.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use image_syncer_testkit::faults::{FaultProxy, Faults, ReferrersApi};

use crate::support::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The DSSE pre-authentication encoding, written out here.
fn pae(payload: &[u8]) -> Vec<u8> {
    let t = "application/vnd.in-toto+json";
    let mut out = format!("DSSEv1 {} {t} {} ", t.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// What a test bundle says.
struct Made<'a> {
    key: &'a Path,
    subject: String,
    predicate: &'a str,
    signatures: usize,
    keyless: bool,
}

/// A bundle as cosign v3 writes it, signed with openssl over the PAE.
fn bundle_json(dir: &Path, m: &Made) -> Vec<u8> {
    let statement = format!(
        "{{\"_type\":\"https://in-toto.io/Statement/v1\",\"subject\":[{{\"digest\":{{\"sha256\":\"{}\"}},\"annotations\":{{}}}}],\"predicateType\":\"{}\",\"predicate\":{{}}}}",
        m.subject.trim_start_matches("sha256:"),
        m.predicate
    );
    let sig = b64(&openssl_sign(dir, "pae", m.key, &pae(statement.as_bytes())));
    let signatures: Vec<serde_json::Value> = (0..m.signatures)
        .map(|_| serde_json::json!({ "sig": sig }))
        .collect();
    let material = if m.keyless {
        serde_json::json!({ "certificate": { "rawBytes": b64(b"not a real certificate") } })
    } else {
        serde_json::json!({ "publicKey": { "hint": "test" } })
    };
    serde_json::to_vec(&serde_json::json!({
        "mediaType": BUNDLE,
        "verificationMaterial": material,
        "dsseEnvelope": {
            "payload": b64(statement.as_bytes()),
            "payloadType": "application/vnd.in-toto+json",
            "signatures": signatures,
        },
    }))
    .unwrap()
}

/// Pushes `bundle` as a referrer of `subject` in `repo` (blobs and the
/// manifest by digest) and returns the manifest's digest and size.
pub fn push_bundle(
    registry: &Registry,
    repo: &str,
    subject: &fixtures::TestImage,
    bundle: &[u8],
    through: Option<&FaultProxy>,
) -> (String, usize) {
    let (bundle_digest, config_digest) = block_on(async {
        (
            registry.push_blob(repo, bundle).await,
            registry.push_blob(repo, b"{}").await,
        )
    });
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE,
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": config_digest, "size": 2, "artifactType": BUNDLE },
        "layers": [ { "mediaType": BUNDLE, "digest": bundle_digest, "size": bundle.len() } ],
        "subject": { "mediaType": subject.media_type, "digest": subject.digest.to_string(), "size": subject.manifest.len() },
        "annotations": { "dev.sigstore.bundle.content": "dsse-envelope", "dev.sigstore.bundle.predicateType": SIGN_PREDICATE },
    }))
    .unwrap();
    let digest = image_syncer_core::digest::Digest::sha256_of(&manifest).to_string();
    match through {
        Some(proxy) => {
            let answer =
                block_on(proxy.put_manifest(&format!("{repo}@{digest}"), OCI_MANIFEST, &manifest));
            assert_eq!(answer.status, 201, "{}", answer.body);
        }
        None => {
            block_on(registry.push_manifest(&format!("{repo}@{digest}"), OCI_MANIFEST, &manifest))
        }
    }
    (digest, manifest.len())
}

/// The referrers tag schema's index listing `entries` under `repo`.
pub fn push_tag_index(registry: &Registry, repo: &str, subject: &str, entries: &[(String, usize)]) {
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries.iter().map(|(d, size)| serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": d, "size": size, "artifactType": BUNDLE,
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    block_on(registry.push_manifest(
        &format!("{repo}:{}", subject.replace(':', "-")),
        OCI_INDEX,
        &index,
    ));
}

struct Setup {
    pair: Pair,
    app: fixtures::TestImage,
    tool: fixtures::TestImage,
    vendor: (PathBuf, PathBuf),
}

fn setup() -> Setup {
    let pair = Pair::new();
    let app = fixtures::image("bundle-app", 1, 300);
    let tool = fixtures::image("bundle-tool", 1, 200);
    block_on(async {
        pair.source.push("vendor/app:1.0", &app).await;
        pair.source.push("vendor/tool:1.0", &tool).await;
    });
    let vendor = p256_keypair(pair.dir.path(), "vendor");
    Setup {
        pair,
        app,
        tool,
        vendor,
    }
}

const GUARDED: &str = "- source: vendor/app:1.0\n  pipeline:\n    guards: [ { plugin: cosign-verify, config: { key: vendor.pub } } ]\n";

impl Setup {
    /// A bundle for the app made with `m`, in the source's referrers tag.
    fn attach(&self, m: &Made) {
        let bundle = bundle_json(self.pair.dir.path(), m);
        let (d, size) = push_bundle(&self.pair.source, "vendor/app", &self.app, &bundle, None);
        push_tag_index(
            &self.pair.source,
            "vendor/app",
            &self.app.digest.to_string(),
            &[(d, size)],
        );
    }

    fn made<'a>(&self, key: &'a Path) -> Made<'a> {
        Made {
            key,
            subject: self.app.digest.to_string(),
            predicate: SIGN_PREDICATE,
            signatures: 1,
            keyless: false,
        }
    }
}

#[test]
fn cosign_verify_accepts_a_bundle_by_the_key_and_stops_on_every_other() {
    let s = setup();
    s.attach(&s.made(&s.vendor.0));
    let r = s.pair.sync(GUARDED, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        block_on(s.pair.target.digest("mirror/vendor/app:1.0")),
        Some(s.app.digest.to_string())
    );

    let other_key = p256_keypair(s.pair.dir.path(), "other");
    let tool = s.tool.digest.to_string();
    for (name, says) in [
        ("another key", "1 signature(s) for vendor/app:1.0@"),
        ("another image's digest", "signed digest differs"),
        ("an attestation", "none valid for key vendor.pub"),
        ("two signatures", "none valid for key vendor.pub"),
        ("keyless", "(1 keyless: not verifiable with a key)"),
    ] {
        let s = setup();
        let base = s.made(&s.vendor.0);
        let made = match name {
            "another key" => s.made(&other_key.0),
            "another image's digest" => Made {
                subject: tool.clone(),
                ..base
            },
            "an attestation" => Made {
                predicate: "https://slsa.dev/provenance/v1",
                ..base
            },
            "two signatures" => Made {
                signatures: 2,
                ..base
            },
            _ => Made {
                keyless: true,
                ..base
            },
        };
        s.attach(&made);
        let before = s.pair.target.storage_snapshot();
        let r = s.pair.sync(GUARDED, &[]);
        assert_eq!(r.code, 3, "{name}: {}", r.all());
        assert!(r.stdout.contains(says), "{name}: {}", r.stdout);
        assert_eq!(s.pair.target.storage_snapshot(), before, "{name}: wrote");
    }
}

/// Checks every bundle the target's referrers tag lists for `digest` in
/// `repo` with openssl alone (the PAE rebuilt here from the served payload),
/// and the statement and manifest layout. Returns how many.
fn bundles_verify(target: &Registry, repo: &str, digest: &str, public: &Path, dir: &Path) -> usize {
    let index = block_on(target.manifest(&format!("{repo}:{}", digest.replace(':', "-"))))
        .expect("a referrers tag");
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let mut n = 0;
    for entry in index["manifests"].as_array().unwrap() {
        assert_eq!(entry["artifactType"], BUNDLE, "{entry}");
        let d = entry["digest"].as_str().unwrap();
        let m: serde_json::Value =
            serde_json::from_slice(&block_on(target.manifest(&format!("{repo}@{d}"))).unwrap())
                .unwrap();
        assert_eq!(m["artifactType"], BUNDLE);
        assert_eq!(
            m["config"]["mediaType"],
            "application/vnd.oci.empty.v1+json"
        );
        assert_eq!(m["subject"]["digest"], digest);
        assert_eq!(
            m["annotations"]["dev.sigstore.bundle.content"],
            "dsse-envelope"
        );
        assert_eq!(
            m["annotations"]["dev.sigstore.bundle.predicateType"],
            SIGN_PREDICATE
        );
        assert!(m["annotations"]["org.opencontainers.image.created"].is_string());
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        let bundle: serde_json::Value = serde_json::from_slice(
            &block_on(target.blob(repo, layers[0]["digest"].as_str().unwrap())).unwrap(),
        )
        .unwrap();
        assert_eq!(bundle["mediaType"], BUNDLE);
        assert!(bundle["verificationMaterial"]["publicKey"]["hint"].is_string());
        let envelope = &bundle["dsseEnvelope"];
        assert_eq!(envelope["payloadType"], "application/vnd.in-toto+json");
        let payload = base64::engine::general_purpose::STANDARD
            .decode(envelope["payload"].as_str().unwrap())
            .unwrap();
        let sigs = envelope["signatures"].as_array().unwrap();
        assert_eq!(sigs.len(), 1);
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sigs[0]["sig"].as_str().unwrap())
            .unwrap();
        openssl_verify(dir, "check-pae", public, &pae(&payload), &sig);
        let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(statement["predicateType"], SIGN_PREDICATE);
        assert_eq!(
            statement["subject"][0]["digest"]["sha256"],
            digest.trim_start_matches("sha256:")
        );
        n += 1;
    }
    n
}

/// `vendor/app` signed with `key` in `format` (classic, bundle, both).
fn sign(s: &Setup, key: &str, format: &str, env: &[(&str, &str)]) -> Run {
    let def = s.pair.definition(&format!(
        "- source: vendor/app:1.0\n  sign: true\npipeline:\n  signer: {{ plugin: cosign, config: {{ format: {format} }} }}\n"
    ));
    let host = s.pair.target.host();
    run_with(
        &["-i", &def, "--insecure-registry", &host, "--kms-key", key],
        env,
    )
}

#[test]
fn the_signer_writes_bundles_that_openssl_verifies_and_a_rerun_writes_nothing() {
    let s = setup();
    let ours = p256_keypair(s.pair.dir.path(), "ours");
    let key = ours.0.to_str().unwrap();
    let r = sign(&s, key, "bundle", &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("signature: signed"), "{}", r.stdout);
    let digest = s.app.digest.to_string();
    assert_eq!(
        bundles_verify(
            &s.pair.target,
            "mirror/vendor/app",
            &digest,
            &ours.1,
            s.pair.dir.path()
        ),
        1
    );
    // No classic signature was written.
    let sig_tag = format!("mirror/vendor/app:{}.sig", digest.replace(':', "-"));
    assert_eq!(block_on(s.pair.target.digest(&sig_tag)), None);
    // Re-runs in either format find our bundle: nothing written.
    let before = s.pair.target.storage_snapshot();
    for format in ["bundle", "classic", "both"] {
        let r = sign(&s, key, format, &[]);
        assert_eq!(r.code, 0, "{format}: {}", r.all());
        assert!(
            r.stdout
                .contains("signature: already signed (Sigstore bundle)"),
            "{}",
            r.stdout
        );
    }
    assert_eq!(s.pair.target.storage_snapshot(), before);
    // Another key meets our bundle: a safety stop, nothing written.
    let other = p256_keypair(s.pair.dir.path(), "other");
    let r = sign(&s, other.0.to_str().unwrap(), "bundle", &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(s.pair.target.storage_snapshot(), before);
}

#[test]
fn an_existing_classic_signature_by_the_key_means_no_bundle_is_written() {
    let s = setup();
    let ours = p256_keypair(s.pair.dir.path(), "ours");
    let key = ours.0.to_str().unwrap();
    let r = sign(&s, key, "classic", &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let before = s.pair.target.storage_snapshot();
    let r = sign(&s, key, "bundle", &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("signature: already signed\n"),
        "{}",
        r.stdout
    );
    assert_eq!(s.pair.target.storage_snapshot(), before);
}

#[test]
fn both_formats_recursively_and_on_a_target_with_the_referrers_api() {
    let s = setup();
    let multi = fixtures::index("bundle-multi", &["linux/amd64", "linux/arm64"]);
    block_on(s.pair.source.push("vendor/multi:2", &multi));
    let ours = p256_keypair(s.pair.dir.path(), "ours");
    // The target behind the referrers-API stand-in.
    let target_api = FaultProxy::start(
        &s.pair.target.host(),
        Faults {
            referrers_api: Some(ReferrersApi::default()),
            ..Default::default()
        },
    );
    let t = target_api.host();
    let def = write(
        s.pair.dir.path(),
        "api.yaml",
        &format!(
            "targetRepoPrefix: \"{t}/mirror/\"\nregistries:\n  docker.io:\n    endpoint: \"{}\"\n    insecure: true\n  \"{t}\":\n    insecure: true\nimages:\n- source: vendor/multi:2\n  sign: true\npipeline:\n  signer: {{ plugin: cosign, config: {{ format: both, recursive: true }} }}\n",
            s.pair.source.host()
        ),
    );
    let args = [
        "-i",
        def.to_str().unwrap(),
        "--kms-key",
        ours.0.to_str().unwrap(),
    ];
    let r = run(&args);
    assert_eq!(r.code, 0, "{}", r.all());
    // The index and both children: a classic signature each, and a bundle
    // each pushed by digest (the target's API lists them; no referrers tag).
    let mut digests = vec![multi.digest.to_string()];
    let index: serde_json::Value = serde_json::from_slice(&multi.manifest).unwrap();
    for child in index["manifests"].as_array().unwrap() {
        digests.push(child["digest"].as_str().unwrap().to_string());
    }
    let puts: Vec<String> = target_api
        .injected
        .log()
        .into_iter()
        .filter(|(m, p)| m == "PUT" && p.contains("/manifests/sha256:"))
        .map(|(_, p)| p)
        .collect();
    for d in &digests {
        let tag = d.replace(':', "-");
        assert!(
            block_on(
                s.pair
                    .target
                    .digest(&format!("mirror/vendor/multi:{tag}.sig"))
            )
            .is_some(),
            "no classic signature for {d}"
        );
        assert_eq!(
            block_on(s.pair.target.digest(&format!("mirror/vendor/multi:{tag}"))),
            None,
            "a referrers tag was written on a target with the API"
        );
    }
    // Three bundles: one per digest (plus the children and the index the copy put).
    let bundles = puts
        .iter()
        .filter(|p| {
            let d = p.rsplit('/').next().unwrap();
            block_on(s.pair.target.manifest(&format!("mirror/vendor/multi@{d}")))
                .map(|m| String::from_utf8_lossy(&m).contains(BUNDLE))
                .unwrap_or(false)
        })
        .count();
    assert_eq!(bundles, 3, "{puts:#?}");
    // A re-run finds them through the API: nothing written.
    let before = s.pair.target.storage_snapshot();
    let r = run(&args);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("signature: already signed"),
        "{}",
        r.stdout
    );
    assert_eq!(s.pair.target.storage_snapshot(), before);
}

#[test]
fn an_aws_kms_key_on_moto_writes_bundles_openssl_verifies() {
    let s = setup();
    let moto = Moto::start();
    let key_id = moto.create_p256_key();
    let public = s.pair.dir.path().join("aws.pub");
    std::fs::write(&public, moto.public_key_pem(&key_id)).unwrap();
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = sign(&s, &format!("awskms:///{key_id}"), "bundle", &env);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        bundles_verify(
            &s.pair.target,
            "mirror/vendor/app",
            &s.app.digest.to_string(),
            &public,
            s.pair.dir.path()
        ),
        1
    );
    let before = s.pair.target.storage_snapshot();
    let r = sign(&s, &format!("awskms:///{key_id}"), "bundle", &env);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(s.pair.target.storage_snapshot(), before);
}
