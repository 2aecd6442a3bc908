//! Referrers (OCI 1.1): read through the referrers API where the registry
//! has one (the testkit's stand-in in front of the real registry, which
//! lacks it), else through the referrers tag schema (`sha256-<hex>`);
//! carried to the target and verified by `cosign-verify`.

use base64::Engine as _;
use image_syncer_testkit::faults::{FaultProxy, Faults, ReferrersApi};

use crate::support::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

struct Setup {
    source: Registry,
    target: Registry,
    dir: tempfile::TempDir,
    app: fixtures::TestImage,
    vendor: (std::path::PathBuf, std::path::PathBuf),
}

fn setup() -> Setup {
    let source = Registry::start();
    let app = fixtures::image("referred-app", 1, 300);
    block_on(source.push("vendor/app:1.0", &app));
    let dir = tempfile::tempdir().unwrap();
    let vendor = p256_keypair(dir.path(), "vendor");
    Setup {
        source,
        target: Registry::start(),
        dir,
        app,
        vendor,
    }
}

fn stand_in(registry: &Registry, api: ReferrersApi) -> FaultProxy {
    FaultProxy::start(
        &registry.host(),
        Faults {
            referrers_api: Some(api),
            ..Default::default()
        },
    )
}

/// A cosign signature of `subject` made with openssl, as a referrer
/// manifest (cosign's artifact type, the empty config, one simple-signing
/// layer with its signature annotation, `subject`). Its blobs are pushed to
/// `repo` of `registry`; the manifest is returned, not pushed.
fn signature_referrer(
    s: &Setup,
    registry: &Registry,
    repo: &str,
    key: &std::path::Path,
) -> (String, Vec<u8>) {
    let digest = s.app.digest.to_string();
    let payload = format!(
        "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"{}/{repo}\"}},\"image\":{{\"docker-manifest-digest\":\"{digest}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}",
        registry.host()
    );
    let stem = key.file_stem().unwrap().to_string_lossy().to_string();
    let sig = base64::engine::general_purpose::STANDARD.encode(openssl_sign(
        s.dir.path(),
        &stem,
        key,
        payload.as_bytes(),
    ));
    let (payload_digest, config_digest) = block_on(async {
        (
            registry.push_blob(repo, payload.as_bytes()).await,
            registry.push_blob(repo, b"{}").await,
        )
    });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": config_digest },
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "size": payload.len(),
            "digest": payload_digest,
            "annotations": { "dev.cosignproject.cosign/signature": sig },
        }],
        "subject": { "mediaType": s.app.media_type, "digest": digest, "size": s.app.manifest.len() },
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = image_syncer_core::digest::Digest::sha256_of(&bytes).to_string();
    (digest, bytes)
}

/// Pushes `manifest` by digest through the stand-in, so that it is listed.
fn push_referrer(proxy: &FaultProxy, repo: &str, digest: &str, manifest: &[u8]) {
    let answer = block_on(proxy.put_manifest(&format!("{repo}@{digest}"), OCI_MANIFEST, manifest));
    assert_eq!(answer.status, 201, "{}", answer.body);
}

/// The definition: `images` from the source reached as `docker.io` through
/// `source_host`, into `target_host/mirror/`.
fn definition(s: &Setup, source_host: &str, target_host: &str, images: &str) -> String {
    write(
        s.dir.path(),
        "images.yaml",
        &format!(
            "targetRepoPrefix: \"{target_host}/mirror/\"\nregistries:\n  docker.io:\n    endpoint: \"{source_host}\"\n    insecure: true\n  \"{target_host}\":\n    insecure: true\nimages:\n{images}"
        ),
    )
    .display()
    .to_string()
}

/// The referrers the target's referrers tag lists for the app.
fn tag_index(s: &Setup) -> Vec<String> {
    let tag = s.app.digest.to_string().replace(':', "-");
    match block_on(s.target.manifest(&format!("mirror/vendor/app:{tag}"))) {
        Some(bytes) => {
            let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(index["mediaType"], OCI_INDEX);
            index["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["digest"].as_str().unwrap().to_string())
                .collect()
        }
        None => Vec::new(),
    }
}

#[test]
fn referrers_from_the_api_are_carried_into_the_referrers_tag_of_a_target_without_it() {
    let s = setup();
    let api = stand_in(&s.source, ReferrersApi::default());
    let sbom = fixtures::referrer(
        "sbom",
        &s.app,
        Some("application/spdx+json"),
        "application/spdx+json",
        &[("org.example.kind", "sbom")],
    );
    block_on(s.source.push_blobs("vendor/app", &sbom));
    push_referrer(&api, "vendor/app", &sbom.digest.to_string(), &sbom.manifest);
    let (sig, sig_manifest) = signature_referrer(&s, &s.source, "vendor/app", &s.vendor.0);
    push_referrer(&api, "vendor/app", &sig, &sig_manifest);

    let def = definition(
        &s,
        &api.host(),
        &s.target.host(),
        "- source: vendor/app:1.0\n  carrySignatures: true\n",
    );
    let r = run(&["-i", &def]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        r.stdout.matches("referrer sha256:").count(),
        2,
        "{}",
        r.stdout
    );
    // Each referrer is in the target by digest, and the target's referrers
    // tag (it has no API) lists both, in the source's order.
    for d in [sbom.digest.to_string(), sig.clone()] {
        assert_eq!(
            block_on(s.target.digest(&format!("mirror/vendor/app@{d}"))),
            Some(d.clone())
        );
    }
    // Sorted by digest, as go-containerregistry writes the index.
    let mut expected = vec![sbom.digest.to_string(), sig.clone()];
    expected.sort();
    assert_eq!(tag_index(&s), expected);
    // The API was asked; the source's referrers tag was not needed.
    let asked: Vec<(String, String)> = api.injected.log();
    assert!(
        asked.iter().any(|(_, p)| p.contains("/referrers/")),
        "{asked:?}"
    );
    // A re-run adds nothing, lists nothing twice.
    let before = s.target.storage_snapshot();
    let r = run(&["-i", &def]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stdout.contains("referrer sha256:"), "{}", r.stdout);
    assert_eq!(tag_index(&s).len(), 2);
    assert_eq!(s.target.storage_snapshot(), before, "a re-run wrote");
}

#[test]
fn a_target_with_the_api_gets_referrers_by_subject_and_no_tag() {
    let s = setup();
    let source_api = stand_in(&s.source, ReferrersApi::default());
    let target_api = stand_in(&s.target, ReferrersApi::default());
    let sbom = fixtures::referrer(
        "sbom",
        &s.app,
        Some("application/spdx+json"),
        "application/spdx+json",
        &[],
    );
    block_on(s.source.push_blobs("vendor/app", &sbom));
    push_referrer(
        &source_api,
        "vendor/app",
        &sbom.digest.to_string(),
        &sbom.manifest,
    );
    let def = definition(
        &s,
        &source_api.host(),
        &target_api.host(),
        "- source: vendor/app:1.0\n  carrySignatures: true\n",
    );
    let r = run(&["-i", &def]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("referrer sha256:"), "{}", r.stdout);
    assert_eq!(
        block_on(
            s.target
                .digest(&format!("mirror/vendor/app@{}", sbom.digest))
        ),
        Some(sbom.digest.to_string())
    );
    // The target's API indexes it by its subject: no referrers tag written.
    assert!(tag_index(&s).is_empty());
    let put = target_api
        .injected
        .log()
        .into_iter()
        .filter(|(m, p)| m == "PUT" && p.contains(&format!("/manifests/{}", sbom.digest)))
        .count();
    assert_eq!(put, 1);
}

#[test]
fn cosign_verify_reads_a_signature_attached_as_a_referrer() {
    let s = setup();
    // A registry listing referrers without `artifactType`: the signature is
    // recognised by its layer.
    let api = stand_in(
        &s.source,
        ReferrersApi {
            empty_artifact_type: true,
            ..Default::default()
        },
    );
    let images = "- source: vendor/app:1.0\n  pipeline:\n    guards: [ { plugin: cosign-verify, config: { key: vendor.pub } } ]\n";
    let def = definition(&s, &api.host(), &s.target.host(), images);
    // Another key's signature as a referrer: a stop, nothing written.
    let other = p256_keypair(s.dir.path(), "other");
    let (sig, manifest) = signature_referrer(&s, &s.source, "vendor/app", &other.0);
    push_referrer(&api, "vendor/app", &sig, &manifest);
    let r = run(&["-i", &def]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(
        r.stdout.contains("1 signature(s) for vendor/app:1.0@"),
        "{}",
        r.stdout
    );
    assert_eq!(block_on(s.target.digest("mirror/vendor/app:1.0")), None);
    // The vendor's signature as a referrer: copied.
    let (sig, manifest) = signature_referrer(&s, &s.source, "vendor/app", &s.vendor.0);
    push_referrer(&api, "vendor/app", &sig, &manifest);
    let r = run(&["-i", &def]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        block_on(s.target.digest("mirror/vendor/app:1.0")),
        Some(s.app.digest.to_string())
    );
}

#[test]
fn the_referrers_tag_schema_is_read_verified_and_merged_without_duplicates() {
    let s = setup();
    let tag = s.app.digest.to_string().replace(':', "-");
    // The source (Debian's registry: no API) lists the vendor's signature
    // under the referrers tag.
    let (sig, manifest) = signature_referrer(&s, &s.source, "vendor/app", &s.vendor.0);
    block_on(
        s.source
            .push_manifest(&format!("vendor/app@{sig}"), OCI_MANIFEST, &manifest),
    );
    let index = |entries: &[(&str, usize)]| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": entries.iter().map(|(d, size)| serde_json::json!({
                "mediaType": OCI_MANIFEST, "digest": d, "size": size,
                "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    };
    block_on(s.source.push_manifest(
        &format!("vendor/app:{tag}"),
        OCI_INDEX,
        &index(&[(&sig, manifest.len())]),
    ));
    // The target already lists a referrer of its own under the tag.
    let mine = fixtures::referrer(
        "mine",
        &s.app,
        Some("application/x-mine"),
        "application/x-mine",
        &[],
    );
    block_on(async {
        s.target.push("mirror/vendor/app:placeholder", &s.app).await;
        s.target.push_blobs("mirror/vendor/app", &mine).await;
        s.target
            .push_manifest(
                &format!("mirror/vendor/app@{}", mine.digest),
                OCI_MANIFEST,
                &mine.manifest,
            )
            .await;
        s.target
            .push_manifest(
                &format!("mirror/vendor/app:{tag}"),
                OCI_INDEX,
                &index(&[(&mine.digest.to_string(), mine.manifest.len())]),
            )
            .await;
    });
    let def = definition(
        &s,
        &s.source.host(),
        &s.target.host(),
        "- source: vendor/app:1.0\n  carrySignatures: true\n  pipeline:\n    guards: [ { plugin: cosign-verify, config: { key: vendor.pub } } ]\n",
    );
    let r = run(&["-i", &def]);
    assert_eq!(r.code, 0, "{}", r.all());
    // What was there kept, what was missing added, sorted by digest.
    let mut expected = vec![mine.digest.to_string(), sig.clone()];
    expected.sort();
    assert_eq!(tag_index(&s), expected);
    let r = run(&["-i", &def]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(tag_index(&s), expected);
}
