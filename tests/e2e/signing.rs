//! Signing and verification against the real registry, checked with openssl.

use std::path::{Path, PathBuf};

use base64::Engine as _;

use image_syncer_testkit::faults::{Faults, Refuse};

use crate::faults::proxied;
use crate::support::*;

struct Keys {
    key: PathBuf,
    public: PathBuf,
}

fn keypair(dir: &Path, name: &str) -> Keys {
    let (key, public) = p256_keypair(dir, name);
    Keys { key, public }
}

/// Signs `digest` by hand — payload written here, signature by `openssl
/// dgst -sign` — and pushes a cosign signature manifest for it under
/// `repo:sha256-<hex>.sig` with oci-client: nothing of image-syncer involved.
pub fn push_openssl_signature(
    registry: &Registry,
    repo: &str,
    digest: &str,
    key: &Path,
    dir: &Path,
) {
    push_openssl_signature_under(registry, repo, digest, digest, key, dir, "null");
}

/// [`push_openssl_signature`] of a payload naming `signed` with `optional`
/// (JSON: `null` or a map of annotations), stored under `under`'s tag.
pub fn push_openssl_signature_under(
    registry: &Registry,
    repo: &str,
    under: &str,
    signed: &str,
    key: &Path,
    dir: &Path,
    optional: &str,
) {
    let host = registry.host();
    let digest = signed;
    let payload = format!(
        "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"{host}/{repo}\"}},\"image\":{{\"docker-manifest-digest\":\"{digest}\"}},\"type\":\"cosign container image signature\"}},\"optional\":{optional}}}"
    );
    let stem = format!("payload-{}", &digest[7..19]);
    let sig = base64::engine::general_purpose::STANDARD.encode(openssl_sign(
        dir,
        &stem,
        key,
        payload.as_bytes(),
    ));
    push_signature_layer(
        registry,
        repo,
        under,
        payload.as_bytes(),
        serde_json::json!({ "dev.cosignproject.cosign/signature": sig }),
    );
}

/// A classic `.sig` manifest of one simple-signing layer holding `payload`
/// with the layer `annotations` (the signature, and for keyless signatures
/// the certificate, chain and Rekor bundle), stored under `under`'s tag.
pub fn push_signature_layer(
    registry: &Registry,
    repo: &str,
    under: &str,
    payload: &[u8],
    annotations: serde_json::Value,
) {
    let config = b"{\"architecture\":\"\",\"os\":\"\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]},\"config\":{}}";
    let (payload_digest, config_digest) = block_on(async {
        (
            registry.push_blob(repo, payload).await,
            registry.push_blob(repo, config).await,
        )
    });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_digest },
        "layers": [ {
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "size": payload.len(),
            "digest": payload_digest,
            "annotations": annotations,
        } ],
    });
    let tag = format!("{}.sig", under.replace(':', "-"));
    block_on(registry.push_manifest(
        &format!("{repo}:{tag}"),
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    ));
}

struct Setup {
    source: Registry,
    target: Registry,
    dir: tempfile::TempDir,
    single: fixtures::TestImage,
    multi: fixtures::TestImage,
}

fn setup() -> Setup {
    let source = Registry::start();
    // The access log lets a test see how blobs were uploaded.
    let target = Registry::start_with(RegistryOptions {
        access_log: true,
        ..Default::default()
    });
    let single = fixtures::image("signed", 2, 1000);
    let multi = fixtures::index("signed-multi", &["linux/amd64", "linux/arm64"]);
    let unsigned = fixtures::image("unsigned", 1, 100);
    block_on(async {
        source.push("library/busybox:1.36", &single).await;
        source.push("team/multi:1.0", &multi).await;
        source.push("team/unsigned:1", &unsigned).await;
    });
    Setup {
        source,
        target,
        dir: tempfile::tempdir().unwrap(),
        single,
        multi,
    }
}

/// Says `what` ("signature: signed", ...) in `n` report lines.
fn assert_says(r: &Run, what: &str, n: usize) {
    assert_eq!(r.stdout.matches(what).count(), n, "{}", r.stdout);
}

const IMAGES: &str = "sign: true\nimages:\n- source: busybox:1.36\n- source: team/multi:1.0\n- source: team/unsigned:1\n  sign: false\n";

impl Setup {
    /// Writes the definition `name`: the registries' header, then `body`.
    fn definition(&self, name: &str, body: &str) -> PathBuf {
        write(
            self.dir.path(),
            name,
            &format!("{}{body}", header(&self.source, &self.target)),
        )
    }

    /// Syncs [`IMAGES`] signing with `key` (a key file or a key reference),
    /// with the flags `extra` and the environment `env`.
    fn sign_with(&self, key: &str, extra: &[&str], env: &[(&str, &str)]) -> Run {
        let def = self.definition("images.yaml", IMAGES);
        let host = self.target.host();
        let mut args = vec![
            "-i",
            def.to_str().unwrap(),
            "--insecure-registry",
            &host,
            "--kms-key",
            key,
        ];
        args.extend_from_slice(extra);
        run_with(&args, env)
    }

    fn sync(&self, key: &Path, extra: &[&str]) -> Run {
        self.sign_with(key.to_str().unwrap(), extra, &[])
    }

    /// Both signed images of [`IMAGES`] carry exactly one signature, and
    /// openssl alone finds it valid for `public`.
    fn both_signed_by(&self, public: &Path) {
        let single = self.single.digest.to_string();
        let multi = self.multi.digest.to_string();
        assert_eq!(
            self.openssl_verify("mirror/library/busybox", &single, public),
            1
        );
        assert_eq!(self.openssl_verify("mirror/team/multi", &multi, public), 1);
    }

    /// Verifies every signature layer under `repo:sha256-<hex>.sig` with openssl alone.
    fn openssl_verify(&self, repo: &str, digest: &str, public: &Path) -> usize {
        verify_signatures(
            &self.target,
            &self.target.host(),
            self.dir.path(),
            repo,
            digest,
            public,
        )
    }
}

/// Checks every layer of `repo`'s `.sig` for `digest` in `target` with
/// openssl alone (payload naming `digest` and `named_host/repo`, signature
/// by `public`); returns how many there are.
fn verify_signatures(
    target: &Registry,
    named_host: &str,
    dir: &Path,
    repo: &str,
    digest: &str,
    public: &Path,
) -> usize {
    let tag = format!("{}.sig", digest.replace(':', "-"));
    let manifest = block_on(target.manifest(&format!("{repo}:{tag}"))).expect("signature manifest");
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let layers = m["layers"].as_array().unwrap();
    for (i, layer) in layers.iter().enumerate() {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.dev.cosign.simplesigning.v1+json"
        );
        let payload = block_on(target.blob(repo, layer["digest"].as_str().unwrap())).unwrap();
        let p: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(p["critical"]["image"]["docker-manifest-digest"], digest);
        assert_eq!(
            p["critical"]["identity"]["docker-reference"],
            format!("{named_host}/{repo}")
        );
        let sig = base64::engine::general_purpose::STANDARD
            .decode(
                layer["annotations"]["dev.cosignproject.cosign/signature"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        openssl_verify(dir, &format!("check-{i}"), public, &payload, &sig);
    }
    layers.len()
}

#[test]
fn signs_on_first_sync_verifies_with_openssl_and_writes_nothing_the_second_time() {
    let s = setup();
    let k = keypair(s.dir.path(), "ours");
    let r = s.sync(&k.key, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_says(&r, "signature: signed", 2);
    // Every signature pushed verifies with openssl and the public key alone.
    s.both_signed_by(&k.public);
    // `sign: false` is honoured.
    block_on(async {
        assert_eq!(s.target.tags("mirror/team/unsigned").await, vec!["1"]);
    });
    // Second run: the valid signatures are found, nothing is written.
    let before = s.target.storage_snapshot();
    let r = s.sync(&k.key, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_says(&r, "signature: already signed", 2);
    assert_eq!(s.target.storage_snapshot(), before);
}

#[test]
fn signature_by_another_key_is_a_safety_stop() {
    let s = setup();
    let theirs = keypair(s.dir.path(), "theirs");
    let ours = keypair(s.dir.path(), "ours");
    assert_eq!(s.sync(&theirs.key, &[]).code, 0);
    let before = s.target.storage_snapshot();
    let r = s.sync(&ours.key, &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(r.stdout.contains("none valid for key"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&s.single.digest.to_string()),
        "{}",
        r.stdout
    );
    assert_eq!(
        s.target.storage_snapshot(),
        before,
        "a signature stop wrote to the target"
    );
}

#[test]
fn dry_run_reports_would_sign_and_writes_nothing() {
    let s = setup();
    let k = keypair(s.dir.path(), "ours");
    let before = s.target.storage_snapshot();
    let r = s.sync(&k.key, &["--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_says(&r, "signature: would sign", 2);
    assert_eq!(s.target.storage_snapshot(), before);
    // Copied but unsigned images in the target: dry run verifies and still writes nothing.
    let plain = write(
        s.dir.path(),
        "plain.yaml",
        &format!(
            "{}{}",
            header(&s.source, &s.target),
            IMAGES.replace("sign: true\n", "")
        ),
    );
    let host = s.target.host();
    assert_eq!(
        run(&["-i", plain.to_str().unwrap(), "--insecure-registry", &host]).code,
        0
    );
    let before = s.target.storage_snapshot();
    let r = s.sync(&k.key, &["--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_says(&r, "signature: would sign", 2);
    assert_eq!(s.target.storage_snapshot(), before);
}

#[test]
fn signature_made_independently_with_openssl_is_accepted() {
    let s = setup();
    let k = keypair(s.dir.path(), "ours");
    // Sync without signing, then sign by hand: payload written here, signed by openssl.
    let plain = s.definition("plain.yaml", "images:\n- source: busybox:1.36\n");
    let host = s.target.host();
    assert_eq!(
        run(&["-i", plain.to_str().unwrap(), "--insecure-registry", &host]).code,
        0
    );
    let repo = "mirror/library/busybox";
    push_openssl_signature(
        &s.target,
        repo,
        &s.single.digest.to_string(),
        &k.key,
        s.dir.path(),
    );
    let before = s.target.storage_snapshot();
    let def = s.definition("one.yaml", "sign: true\nimages:\n- source: busybox:1.36\n");
    let r = run(&[
        "-i",
        def.to_str().unwrap(),
        "--insecure-registry",
        &host,
        "-k",
        k.key.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("signature: already signed"),
        "{}",
        r.stdout
    );
    assert_eq!(s.target.storage_snapshot(), before);
}

#[test]
fn key_from_environment_variable() {
    let s = setup();
    let k = keypair(s.dir.path(), "ours");
    let pem = std::fs::read_to_string(&k.key).unwrap();
    let def = s.definition("images.yaml", IMAGES);
    let host = s.target.host();
    let r = run_with(
        &["-i", def.to_str().unwrap(), "--insecure-registry", &host],
        &[
            ("SYNCER_KMS_KEY", "env://IMAGE_SYNCER_TEST_KEY"),
            ("IMAGE_SYNCER_TEST_KEY", &pem),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        s.openssl_verify(
            "mirror/library/busybox",
            &s.single.digest.to_string(),
            &k.public
        ),
        1
    );
    // The key itself never appears in output, even with --debug.
    let r = run_with(
        &[
            "-i",
            def.to_str().unwrap(),
            "--insecure-registry",
            &host,
            "--debug",
        ],
        &[
            ("SYNCER_KMS_KEY", "env://IMAGE_SYNCER_TEST_KEY"),
            ("IMAGE_SYNCER_TEST_KEY", &pem),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("DEBUG"), "{}", r.stderr);
    // Every run is scanned for the key's material (registered by keypair()).
    for secret in key_material(&k.key) {
        assert!(!r.all().contains(&secret), "{}", r.all());
    }
}

#[test]
fn bad_signing_keys_exit_2_before_anything_is_touched() {
    let s = setup();
    let sec1 = s.dir.path().join("sec1.pem");
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        sec1.to_str().unwrap(),
    ]);
    let garbage = write(s.dir.path(), "garbage.pem", "not a key");
    let before = s.target.storage_snapshot();
    let mut out = String::new();
    for (name, key) in [
        ("missing file", s.dir.path().join("nope.pem")),
        ("sec1 key", sec1),
        ("not pem", garbage),
    ] {
        let r = s.sync(&key, &[]);
        assert_eq!(r.code, 2, "{name}: {}", r.all());
        out.push_str(&format!(
            "## {name}\n{}\n",
            r.stderr
                .replace(&s.dir.path().display().to_string(), "[DIR]")
        ));
    }
    assert_eq!(s.target.storage_snapshot(), before);
    insta::assert_snapshot!(out);
}

#[test]
fn aws_kms_key_on_moto_signs_and_verifies_with_openssl() {
    let s = setup();
    let moto = Moto::start();
    let key_id = moto.create_p256_key();
    moto.kms(
        "CreateAlias",
        serde_json::json!({"AliasName": "alias/image-syncer", "TargetKeyId": key_id}),
    );
    let public = s.dir.path().join("aws.pub");
    std::fs::write(&public, moto.public_key_pem(&key_id)).unwrap();
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let key_ref = format!("awskms:///{key_id}");
    let r = s.sign_with(&key_ref, &[], &env);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_says(&r, "signature: signed", 2);
    s.both_signed_by(&public);
    // The same key through its alias finds its own signatures: nothing written.
    let before = s.target.storage_snapshot();
    let r = s.sign_with("awskms:///alias/image-syncer", &[], &env);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_says(&r, "signature: already signed", 2);
    assert_eq!(s.target.storage_snapshot(), before);
    // Another KMS key sees signatures it cannot verify: safety stop.
    let other = moto.create_p256_key();
    let r = s.sign_with(&format!("awskms:///{other}"), &[], &env);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(s.target.storage_snapshot(), before);
    // A key that does not exist: a failure naming the key, nothing written.
    let r = s.sign_with("awskms:///alias/missing", &[], &env);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("alias/missing"), "{}", r.stdout);
    assert_eq!(s.target.storage_snapshot(), before);
}

/// The environment that points the official GCP client at the stand-in: its
/// KMS endpoint, and its metadata server for the standard credential chain
/// (with an empty HOME, so no gcloud credentials of the machine are found).
fn gcp_env(s: &Setup, standin: &StandIn) -> Vec<(&'static str, String)> {
    let home = s.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let home = home.display().to_string();
    vec![
        ("SYNCER_GCP_KMS_ENDPOINT", standin.url()),
        ("GCE_METADATA_HOST", standin.host()),
        ("HOME", home.clone()),
        ("CLOUDSDK_CONFIG", home),
    ]
}

/// GCP Cloud KMS through the official client, against the STAND-IN server
/// (tests/standins/gcpkms.py): no real Cloud KMS can run here.
#[test]
fn gcp_kms_stand_in_newest_enabled_version_crc_checks_and_standard_credentials() {
    let s = setup();
    let keys = s.dir.path().join("gcp-keys");
    std::fs::create_dir(&keys).unwrap();
    let mut publics = Vec::new();
    for v in 1..=3 {
        let k = keypair(&keys, &format!("v{v}"));
        publics.push(k.public);
    }
    let log = s.dir.path().join("gcp.log");
    let log_s = log.display().to_string();
    let standin = StandIn::start("gcpkms.py", &[keys.to_str().unwrap(), "--log", &log_s]);
    let env = gcp_env(&s, &standin);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let key = "gcpkms://projects/p/locations/global/keyRings/r/cryptoKeys/k";
    let r = s.sign_with(key, &[], &env);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_says(&r, "signature: signed", 2);
    // Signed by the newest ENABLED version (3), checked by openssl alone.
    assert_eq!(
        s.openssl_verify(
            "mirror/library/busybox",
            &s.single.digest.to_string(),
            &publics[2]
        ),
        1
    );
    let requests = std::fs::read_to_string(&log).unwrap();
    assert!(
        requests.contains("/computeMetadata/v1/instance/service-accounts/default/token"),
        "{requests}"
    );
    assert!(requests.contains("cryptoKeyVersions?"), "{requests}");
    assert!(
        requests.contains("cryptoKeyVersions/3:asymmetricSign"),
        "{requests}"
    );
    // The named version 3 finds its signatures; version 2 does not verify them: stop.
    let before = s.target.storage_snapshot();
    let r = s.sign_with(&format!("{key}/cryptoKeyVersions/3"), &[], &env);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_says(&r, "signature: already signed", 2);
    let r = s.sign_with(&format!("{key}/cryptoKeyVersions/2"), &[], &env);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(s.target.storage_snapshot(), before);
}

#[test]
fn gcp_kms_stand_in_corrupted_signature_is_refused_and_nothing_written() {
    let s = setup();
    let keys = s.dir.path().join("gcp-keys");
    std::fs::create_dir(&keys).unwrap();
    keypair(&keys, "v2");
    let standin = StandIn::start(
        "gcpkms.py",
        &[keys.to_str().unwrap(), "--bad-signature-crc"],
    );
    let env = gcp_env(&s, &standin);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let def = s.definition(
        "images.yaml",
        "sign: true\nimages:\n- source: busybox:1.36\n",
    );
    let host = s.target.host();
    let r = run_with(
        &[
            "-i",
            def.to_str().unwrap(),
            "--insecure-registry",
            &host,
            "-k",
            "gcpkms://projects/p/locations/global/keyRings/r/cryptoKeys/k",
        ],
        &env,
    );
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("CRC32C"), "{}", r.stdout);
    let tag = format!("{}.sig", s.single.digest.to_string().replace(':', "-"));
    assert_eq!(
        block_on(s.target.digest(&format!("mirror/library/busybox:{tag}"))),
        None
    );
}

/// A new signature is verified with the provider's public key before it is
/// pushed (docs/signing.md): a provider whose public key is not its signing
/// key's (the GCP stand-in with `--mismatched-public-key`) fails the image,
/// in each format, and no signature reaches the target.
#[test]
fn a_provider_whose_public_key_is_not_its_keys_fails_and_pushes_no_signature() {
    let s = setup();
    let keys = s.dir.path().join("gcp-keys");
    std::fs::create_dir(&keys).unwrap();
    keypair(&keys, "v2");
    let log = s.dir.path().join("gcp.log");
    let standin = StandIn::start(
        "gcpkms.py",
        &[
            keys.to_str().unwrap(),
            "--mismatched-public-key",
            "--log",
            log.to_str().unwrap(),
        ],
    );
    let env = gcp_env(&s, &standin);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let host = s.target.host();
    let image_blobs: Vec<String> = s
        .single
        .all_blobs()
        .iter()
        .map(|b| b.digest.to_string())
        .collect();
    let digest = s.single.digest.to_string();
    for format in ["classic", "bundle"] {
        let def = s.definition(
            &format!("{format}.yaml"),
            &format!(
                "sign: true\nimages:\n- source: busybox:1.36\npipeline:\n  signer: {{ plugin: cosign, config: {{ format: {format} }} }}\n"
            ),
        );
        let seen = s.target.requests().len();
        let r = run_with(
            &[
                "-i",
                def.to_str().unwrap(),
                "--insecure-registry",
                &host,
                "-k",
                "gcpkms://projects/p/locations/global/keyRings/r/cryptoKeys/k",
            ],
            &env,
        );
        assert_eq!(r.code, 1, "{format}: {}", r.all());
        assert!(
            r.stdout
                .contains("its signature does not verify with its public key"),
            "{format}: {}",
            r.stdout
        );
        // The provider was asked to sign: the check came after, before any push.
        let asked = std::fs::read_to_string(&log).unwrap();
        assert!(asked.contains(":asymmetricSign"), "{format}: {asked}");
        // The image is in (it is copied before it is signed), no signature is:
        // no tag or manifest but the image's, no blob but the image's.
        let requests = s.target.requests()[seen..].to_vec();
        let mut uploads = 0;
        for request in &requests {
            let Some(path) = request.strip_prefix("PUT ") else {
                continue;
            };
            if let Some((_, digest_param)) = path.split_once("digest=") {
                uploads += 1;
                let uploaded = digest_param.replace("%3A", ":");
                assert!(
                    image_blobs.contains(&uploaded),
                    "{format}: a blob that is not the image's was pushed: {request}"
                );
            } else {
                assert_eq!(
                    path, "/v2/mirror/library/busybox/manifests/1.36",
                    "{format}: a manifest other than the image's was pushed"
                );
            }
        }
        // The first run copies the image (the check above is not vacuous).
        if format == "classic" {
            assert_eq!(uploads, image_blobs.len(), "{requests:?}");
        }
        // Other writes only open or fill blob uploads (their digests checked
        // above, at the final PUT).
        for request in &requests {
            let write = ["POST ", "PATCH ", "DELETE "]
                .iter()
                .any(|m| request.starts_with(m));
            assert!(
                !write || request.contains("/blobs/uploads/") && !request.starts_with("DELETE "),
                "{format}: {request} in {requests:?}"
            );
        }
        let tag = format!("{}.sig", digest.replace(':', "-"));
        assert_eq!(
            block_on(s.target.digest(&format!("mirror/library/busybox:{tag}"))),
            None,
            "{format}"
        );
        assert_eq!(
            block_on(s.target.digest("mirror/library/busybox:1.36")),
            Some(digest.clone()),
            "{format}"
        );
    }
}

/// Vault transit through its HTTP API, against the STAND-IN server
/// (tests/standins/vault.py): no real Vault can run here.
#[test]
fn vault_transit_stand_in_signs_and_verifies_with_openssl() {
    let s = setup();
    let k = keypair(s.dir.path(), "vault");
    let token = "s.vault-t0ken-5c1d";
    never_shown(token);
    never_shown("s.wr0ng-t0ken-77");
    let standin = StandIn::start(
        "vault.py",
        &[k.key.to_str().unwrap(), token, "--mount", "signing"],
    );
    let addr = standin.url();
    let env = [
        ("VAULT_ADDR", addr.as_str()),
        ("VAULT_TOKEN", token),
        ("TRANSIT_SECRET_ENGINE_PATH", "signing"),
    ];
    let host = s.target.host();
    let r = s.sign_with("hashivault://cosign", &[], &env);
    assert_eq!(r.code, 0, "{}", r.all());
    s.both_signed_by(&k.public);
    // With --debug too: the token is never shown (every run is scanned).
    let r = s.sign_with("hashivault://cosign", &["--debug"], &env);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("DEBUG"), "{}", r.stderr);
    assert_says(&r, "signature: already signed", 2);
    // A wrong token: refused, no signature written, the token never printed.
    let plain = s.definition(
        "more.yaml",
        "sign: true\nimages:\n- source: team/unsigned:1\n",
    );
    let r = run_with(
        &[
            "-i",
            plain.to_str().unwrap(),
            "--insecure-registry",
            &host,
            "-k",
            "hashivault://cosign",
        ],
        &[
            ("VAULT_ADDR", addr.as_str()),
            ("VAULT_TOKEN", "s.wr0ng-t0ken-77"),
            ("TRANSIT_SECRET_ENGINE_PATH", "signing"),
        ],
    );
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("403"), "{}", r.stdout);
    assert!(r.stdout.contains("403"));
    let tag = format!(
        "{}.sig",
        fixtures::image("unsigned", 1, 100)
            .digest
            .to_string()
            .replace(':', "-")
    );
    assert_eq!(
        block_on(s.target.digest(&format!("mirror/team/unsigned:{tag}"))),
        None
    );
}

/// Azure Key Vault through the official SDK, against the STAND-IN server
/// (tests/standins/azurekms.py, TLS with a CA made for the test): no real
/// Key Vault can run here.
#[test]
fn azure_key_vault_stand_in_signs_with_the_current_version() {
    let s = setup();
    let keys = s.dir.path().join("azure-keys");
    std::fs::create_dir(&keys).unwrap();
    let mut publics = Vec::new();
    for v in 1..=2 {
        publics.push(keypair(&keys, &format!("v{v}")).public);
    }
    let ca = s.dir.path().join("azure-ca.pem");
    let log = s.dir.path().join("azure.log");
    let standin = StandIn::start(
        "azurekms.py",
        &[
            keys.to_str().unwrap(),
            ca.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
        ],
    );
    let base = format!("https://{}", standin.host());
    let identity = format!("{base}/msi/token");
    let env = [
        ("SYNCER_AZURE_KEYVAULT_URL", base.as_str()),
        ("IDENTITY_ENDPOINT", identity.as_str()),
        ("IDENTITY_HEADER", "standin-identity-header"),
        ("SSL_CERT_FILE", ca.to_str().unwrap()),
    ];
    let key = "azurekms://standin.vault.azure.net/cosign";
    let r = s.sign_with(key, &[], &env);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_says(&r, "signature: signed", 2);
    // The current version (v2) signed; openssl alone checks it.
    assert_eq!(
        s.openssl_verify(
            "mirror/library/busybox",
            &s.single.digest.to_string(),
            &publics[1]
        ),
        1
    );
    let requests = std::fs::read_to_string(&log).unwrap();
    assert!(requests.contains("/msi/token"), "{requests}");
    assert!(requests.contains("/keys/cosign/v2/sign"), "{requests}");
    // Version 1 named explicitly: the v2 signatures are not valid for it.
    let before = s.target.storage_snapshot();
    let r = s.sign_with(&format!("{key}/v1"), &[], &env);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(s.target.storage_snapshot(), before);
}

#[test]
fn recursive_signing_from_the_pipeline_section_signs_index_and_children() {
    let s = setup();
    let k = keypair(s.dir.path(), "ours");
    let def = s.definition("images.yaml", "sign: true\nimages:\n- source: team/multi:1.0\npipeline:\n  signer:\n    plugin: cosign\n    config:\n      recursive: true\n");
    let host = s.target.host();
    let r = run(&[
        "-i",
        def.to_str().unwrap(),
        "--insecure-registry",
        &host,
        "-k",
        k.key.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        s.openssl_verify("mirror/team/multi", &s.multi.digest.to_string(), &k.public),
        1
    );
    for child in &s.multi.children {
        assert_eq!(
            s.openssl_verify("mirror/team/multi", &child.digest.to_string(), &k.public),
            1
        );
    }
}

/// The example exec-signer plugin, loaded from the definition's `plugins:`,
/// signing with openssl commands; the signatures verify with openssl alone.
#[test]
fn exec_signer_plugin_from_the_definition_signs_verifiably() {
    let s = setup();
    let k = keypair(s.dir.path(), "exec");
    let plugin = crate::plugins::exec_plugin();
    let def = write(
        s.dir.path(),
        "images.yaml",
        &format!(
            "{}plugins: [\"{}\"]\nsign: true\nimages:\n- source: busybox:1.36\n- source: team/multi:1.0\npipeline:\n  signer:\n    plugin: exec\n    config:\n      sign: [openssl, dgst, -sha256, -sign, exec.pem]\n      verify: [openssl, dgst, -sha256, -verify, exec.pub, -signature, \"{{signature}}\"]\n",
            header(&s.source, &s.target),
            plugin.display()
        ),
    );
    let host = s.target.host();
    let r = run(&["-i", def.to_str().unwrap(), "--insecure-registry", &host]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_says(&r, "signature: signed", 2);
    s.both_signed_by(&k.public);
    // Signatures by the cosign signer with another key stop the exec signer.
    let other = keypair(s.dir.path(), "other");
    let plain = s.definition(
        "other.yaml",
        "sign: true\nimages:\n- source: team/unsigned:1\n",
    );
    assert_eq!(
        run(&[
            "-i",
            plain.to_str().unwrap(),
            "--insecure-registry",
            &host,
            "-k",
            other.key.to_str().unwrap()
        ])
        .code,
        0
    );
    let mixed = write(
        s.dir.path(),
        "mixed.yaml",
        &std::fs::read_to_string(&def).unwrap().replace(
            "- source: busybox:1.36\n- source: team/multi:1.0\n",
            "- source: team/unsigned:1\n",
        ),
    );
    let before = s.target.storage_snapshot();
    let r = run(&["-i", mixed.to_str().unwrap(), "--insecure-registry", &host]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(s.target.storage_snapshot(), before);
}

#[test]
fn an_image_overrides_the_signer_and_sink_settings() {
    let s = setup();
    let k = keypair(s.dir.path(), "ours");
    let def = write(
        s.dir.path(),
        "images.yaml",
        &format!(
            "{}sign: true\nimages:\n- source: busybox:1.36\n  pipeline:\n    sink: {{ plugin: oci, config: {{ monolithicPush: false }} }}\n- source: team/multi:1.0\n  pipeline:\n    signer: {{ plugin: cosign, config: {{ recursive: true }} }}\n",
            header(&s.source, &s.target)
        ),
    );
    let host = s.target.host();
    let r = run(&[
        "-i",
        def.to_str().unwrap(),
        "--insecure-registry",
        &host,
        "-k",
        k.key.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    // The sink override took: busybox's blobs went up in PATCH chunks, the
    // other image's in single PUTs (the default).
    let patches = |repo: &str| {
        s.target
            .requests()
            .iter()
            .filter(|r| r.starts_with(&format!("PATCH /v2/mirror/{repo}/blobs/uploads/")))
            .count()
    };
    assert!(patches("library/busybox") >= 3, "{:?}", s.target.requests());
    assert_eq!(patches("team/multi"), 0, "{:?}", s.target.requests());
    assert_eq!(
        block_on(s.target.digest("mirror/library/busybox:1.36")),
        Some(s.single.digest.to_string())
    );
    assert_eq!(
        s.openssl_verify(
            "mirror/library/busybox",
            &s.single.digest.to_string(),
            &k.public
        ),
        1
    );
    // Only the multi-arch image asked for recursive signing.
    for child in &s.multi.children {
        assert_eq!(
            s.openssl_verify("mirror/team/multi", &child.digest.to_string(), &k.public),
            1
        );
    }
    let child_tag = format!("{}.sig", s.single.digest.to_string().replace(':', "-"));
    assert!(block_on(
        s.target
            .digest(&format!("mirror/library/busybox:{child_tag}"))
    )
    .is_some());
    // A bad per-image config names the image, the stage and the line.
    let bad = write(
        s.dir.path(),
        "bad.yaml",
        &format!("{}sign: true\nimages:\n- source: busybox:1.36\n  pipeline:\n    signer:\n      plugin: cosign\n      config: {{ recursiv: true }}\n", header(&s.source, &s.target)),
    );
    let r = run(&[
        "-i",
        bad.to_str().unwrap(),
        "--insecure-registry",
        &host,
        "-k",
        k.key.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.all());
    let msg = r
        .stderr
        .replace(&s.dir.path().display().to_string(), "[DIR]");
    assert!(msg.contains("[DIR]/bad.yaml:11: images[0].pipeline.signer: signer plugin `cosign`: invalid config: unknown field `recursiv`"), "{msg}");
}

/// Upstream signatures and attestations survive mirroring: carried verbatim,
/// then our signature is appended to the carried `.sig`; upstream signatures
/// that our key cannot verify are not a conflict, anything else still is.
#[test]
fn signatures_and_attestations_are_carried_along_and_ours_appended() {
    let s = setup();
    let upstream = keypair(s.dir.path(), "upstream");
    let ours = keypair(s.dir.path(), "ours");
    let digest = s.single.digest.to_string();
    push_openssl_signature(
        &s.source,
        "library/busybox",
        &digest,
        &upstream.key,
        s.dir.path(),
    );
    let att = fixtures::image("attestation", 1, 300);
    let att_tag = format!("{}.att", digest.replace(':', "-"));
    block_on(s.source.push(&format!("library/busybox:{att_tag}"), &att));
    // An OCI 1.1 referrers index under the tag schema (`sha256-<hex>`).
    let referrers = fixtures::index("referrers", &["linux/amd64"]);
    let referrers_tag = digest.replace(':', "-");
    block_on(
        s.source
            .push(&format!("library/busybox:{referrers_tag}"), &referrers),
    );
    let def = s.definition(
        "carry.yaml",
        "carrySignatures: true\nsign: true\nimages:\n- source: busybox:1.36\n",
    );
    let host = s.target.host();
    let r = run(&[
        "-i",
        def.to_str().unwrap(),
        "--insecure-registry",
        &host,
        "-k",
        ours.key.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("carried: "), "{}", r.stdout);
    assert!(r.stdout.contains("signature: signed"), "{}", r.stdout);
    let repo = "mirror/library/busybox";
    // The attestation, verbatim.
    assert_eq!(
        block_on(s.target.digest(&format!("{repo}:{att_tag}"))),
        Some(att.digest.to_string())
    );
    assert_eq!(
        block_on(s.target.digest(&format!("{repo}:{referrers_tag}"))),
        Some(referrers.digest.to_string())
    );
    // The .sig: the upstream layer first, kept, then ours; each verifies with its own key only.
    let tag = format!("{}.sig", digest.replace(':', "-"));
    let m: serde_json::Value =
        serde_json::from_slice(&block_on(s.target.manifest(&format!("{repo}:{tag}"))).unwrap())
            .unwrap();
    let layers = m["layers"].as_array().unwrap().clone();
    assert_eq!(layers.len(), 2, "{m}");
    let upstream_src: serde_json::Value = serde_json::from_slice(
        &block_on(s.source.manifest(&format!("library/busybox:{tag}"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        layers[0], upstream_src["layers"][0],
        "the upstream layer was not kept verbatim"
    );
    for (layer, key) in [(&layers[0], &upstream.public), (&layers[1], &ours.public)] {
        let payload = block_on(s.target.blob(repo, layer["digest"].as_str().unwrap())).unwrap();
        let sig = base64::engine::general_purpose::STANDARD
            .decode(
                layer["annotations"]["dev.cosignproject.cosign/signature"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        openssl_verify(s.dir.path(), "check", key, &payload, &sig);
    }
    // Again: our signature is found, nothing is written.
    let before = s.target.storage_snapshot();
    let r = run(&[
        "-i",
        def.to_str().unwrap(),
        "--insecure-registry",
        &host,
        "-k",
        ours.key.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("signature: already signed"),
        "{}",
        r.stdout
    );
    assert_eq!(s.target.storage_snapshot(), before);
    // A third key sees our signature, which is not upstream and not its own: a safety stop.
    let third = keypair(s.dir.path(), "third");
    let r = run(&[
        "-i",
        def.to_str().unwrap(),
        "--insecure-registry",
        &host,
        "-k",
        third.key.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(s.target.storage_snapshot(), before);
}

/// The signer's requests pass the registry's gate and are retried on their
/// own: the target refuses the first two puts of the signature tag (500),
/// and the image is still signed, verifiably. Before, the first refused put
/// failed the image's signing (exit 1).
#[test]
fn the_signers_requests_are_retried_through_a_failing_registry() {
    let img = fixtures::image("signed-retried", 1, 700);
    let refuse_sig_put = Faults {
        refuse: Some(Refuse {
            method: Some("PUT"),
            path: ".sig".into(),
            times: 2,
            status: 500,
            code: "UNKNOWN".into(),
        }),
        ..Default::default()
    };
    let p = proxied(
        &[("team/app:1.0", &img)],
        Faults::default(),
        refuse_sig_put,
        "- source: team/app:1.0\n",
        "sign: true\n",
    );
    let dir = Path::new(&p.def).parent().unwrap();
    let (key, public) = p256_keypair(dir, "ours");
    let r = run(&["-i", &p.def, "--kms-key", key.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_says(&r, "signature: signed", 1);
    let digest = img.digest.to_string();
    let sig = format!(
        "/v2/mirror/team/app/manifests/{}.sig",
        digest.replace(':', "-")
    );
    let puts =
        p.tp.injected
            .log()
            .iter()
            .filter(|(m, path)| m == "PUT" && path.split('?').next() == Some(sig.as_str()))
            .count();
    assert_eq!(puts, 3, "{:#?}", p.tp.injected.log());
    assert_eq!(
        verify_signatures(
            &p.target,
            &p.tp.host(),
            dir,
            "mirror/team/app",
            &digest,
            &public
        ),
        1
    );
}
