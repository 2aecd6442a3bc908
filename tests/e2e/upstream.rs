//! Upstream signatures verified before mirroring (`cosign-verify`), against
//! the real registry; signatures made independently with openssl.

use image_syncer_testkit::faults::{Faults, Refuse};

use crate::faults::proxied;
use crate::signing::{push_openssl_signature, push_openssl_signature_under};
use crate::support::*;

struct Vendor {
    pair: Pair,
    /// The vendor's key pair, and another.
    vendor: (std::path::PathBuf, std::path::PathBuf),
    other: (std::path::PathBuf, std::path::PathBuf),
    app: fixtures::TestImage,
    tool: fixtures::TestImage,
}

fn vendor() -> Vendor {
    // Logged: a test counts the requests the source was asked.
    let pair = Pair::logged();
    let vendor = p256_keypair(pair.dir.path(), "vendor");
    let other = p256_keypair(pair.dir.path(), "other");
    let app = fixtures::image("vendor-app", 1, 500);
    let tool = fixtures::image("vendor-tool", 1, 400);
    block_on(async {
        pair.source.push("vendor/app:1.0", &app).await;
        pair.source.push("vendor/tool:2.0", &tool).await;
    });
    Vendor {
        pair,
        vendor,
        other,
        app,
        tool,
    }
}

impl Vendor {
    fn sign(&self, repo: &str, digest: &str, key: &std::path::Path) {
        push_openssl_signature(&self.pair.source, repo, digest, key, self.pair.dir.path());
    }

    /// `vendor/app:1.0` guarded by `config` (YAML flow map).
    fn sync_app(&self, config: &str, extra: &[&str]) -> Run {
        self.pair.sync(
            &format!(
                "- source: vendor/app:1.0\n  pipeline:\n    guards: [ {{ plugin: cosign-verify, config: {config} }} ]\n"
            ),
            extra,
        )
    }

    fn app_mirrored(&self) -> Option<String> {
        block_on(self.pair.target.digest("mirror/vendor/app:1.0"))
    }

    fn report(&self, r: &Run) -> String {
        self.pair
            .redact(&r.stdout)
            .replace(&self.pair.dir.path().display().to_string(), "[DIR]")
    }
}

const VENDOR_KEY: &str = "{ key: vendor.pub }";

#[test]
fn an_image_signed_by_the_vendor_key_is_copied() {
    let v = vendor();
    v.sign("vendor/app", &v.app.digest.to_string(), &v.vendor.0);
    let r = v.sync_app(VENDOR_KEY, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(v.app_mirrored(), Some(v.app.digest.to_string()));
    // A re-run: the guard passes again, the immutable guard says in sync.
    let r = v.sync_app(VENDOR_KEY, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("already in sync"), "{}", r.stdout);
}

#[test]
fn unsigned_other_key_and_other_digest_are_safety_stops_writing_nothing() {
    let v = vendor();
    let app = v.app.digest.to_string();
    let before = v.pair.target.storage_snapshot();
    let mut lines = Vec::new();
    // No signature.
    let r = v.sync_app(VENDOR_KEY, &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    lines.push(v.report(&r));
    // Signed by another key.
    v.sign("vendor/app", &app, &v.other.0);
    let r = v.sync_app(VENDOR_KEY, &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    lines.push(v.report(&r));
    assert_eq!(v.pair.target.storage_snapshot(), before, "a stop wrote");

    // A valid vendor signature of another image, placed under this digest's tag.
    let v = vendor();
    let tool = v.tool.digest.to_string();
    push_openssl_signature_under(
        &v.pair.source,
        "vendor/app",
        &v.app.digest.to_string(),
        &tool,
        &v.vendor.0,
        v.pair.dir.path(),
        "null",
    );
    let before = v.pair.target.storage_snapshot();
    let r = v.sync_app(VENDOR_KEY, &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    lines.push(v.report(&r).replace(&tool, "[TOOL DIGEST]"));
    assert_eq!(v.app_mirrored(), None);
    assert_eq!(
        v.pair.target.storage_snapshot(),
        before,
        "a replayed signature's stop wrote"
    );
    let lines: Vec<String> = lines
        .iter()
        .map(|l| l.replace(&app, "[APP DIGEST]"))
        .collect();
    insta::assert_snapshot!(lines.join("\n---\n"));
}

#[test]
fn required_annotations_must_be_in_the_signed_payload() {
    let v = vendor();
    let app = v.app.digest.to_string();
    push_openssl_signature_under(
        &v.pair.source,
        "vendor/app",
        &app,
        &app,
        &v.vendor.0,
        v.pair.dir.path(),
        "{\"release\":\"stable\"}",
    );
    let r = v.sync_app(
        "{ key: vendor.pub, annotations: { release: candidate } }",
        &[],
    );
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(
        r.stdout
            .contains("lacks the required annotation(s) release=candidate"),
        "{}",
        r.stdout
    );
    assert_eq!(v.app_mirrored(), None);
    let r = v.sync_app("{ key: vendor.pub, annotations: { release: stable } }", &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(v.app_mirrored(), Some(app));
}

#[test]
fn each_image_is_checked_with_its_own_key_after_the_pipeline_guards() {
    let v = vendor();
    v.sign("vendor/app", &v.app.digest.to_string(), &v.vendor.0);
    v.sign("vendor/tool", &v.tool.digest.to_string(), &v.other.0);
    let images = |tool_key: &str| {
        format!(
            "- source: vendor/app:1.0\n  pipeline:\n    guards: [ {{ plugin: cosign-verify, config: {{ key: vendor.pub }} }} ]\n- source: vendor/tool:2.0\n  pipeline:\n    guards: [ {{ plugin: cosign-verify, config: {{ key: {tool_key} }} }} ]\n"
        )
    };
    // The tool checked with the vendor key: a stop, and nothing written at all.
    let r = v.pair.sync(&images("vendor.pub"), &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(v.app_mirrored(), None, "a stop in planning wrote");
    // Each with its own key: both copied; the pipeline's `immutable` still ran.
    let r = v.pair.sync(&images("other.pub"), &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(v.app_mirrored(), Some(v.app.digest.to_string()));
    assert_eq!(
        block_on(v.pair.target.digest("mirror/vendor/tool:2.0")),
        Some(v.tool.digest.to_string())
    );
}

#[test]
fn a_multi_arch_index_needs_its_own_signature_and_with_recursive_each_childs() {
    let v = vendor();
    let multi = fixtures::index("vendor-multi", &["linux/amd64", "linux/arm64"]);
    block_on(v.pair.source.push("vendor/multi:3", &multi));
    v.sign("vendor/multi", &multi.digest.to_string(), &v.vendor.0);
    let images = |config: &str| {
        format!(
            "- source: vendor/multi:3\n  pipeline:\n    guards: [ {{ plugin: cosign-verify, config: {config} }} ]\n"
        )
    };
    let r = v
        .pair
        .sync(&images("{ key: vendor.pub, recursive: true }"), &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(
        r.stdout.contains("no signature for vendor/multi:3@"),
        "{}",
        r.stdout
    );
    let r = v.pair.sync(&images("{ key: vendor.pub }"), &[]);
    assert_eq!(r.code, 0, "{}", r.all());
}

/// With `platforms:` filtering a multi-arch index, the copied manifest is one
/// of ours; the vendor signed the source's own index, and that is what the
/// guard verifies.
#[test]
fn a_platform_filtered_index_is_verified_by_the_vendors_signature_of_the_source_index() {
    let v = vendor();
    let multi = fixtures::index("vendor-multi", &["linux/amd64", "linux/arm64"]);
    block_on(v.pair.source.push("vendor/multi:3", &multi));
    // Only the index the vendor published is signed.
    v.sign("vendor/multi", &multi.digest.to_string(), &v.vendor.0);
    let r = v.pair.sync(
        &format!(
            "- source: vendor/multi:3\n  platforms: [linux/amd64]\n  pipeline:\n    guards: [ {{ plugin: cosign-verify, config: {VENDOR_KEY} }} ]\n"
        ),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    let mirrored = block_on(v.pair.target.digest("mirror/vendor/multi:3"));
    assert!(mirrored.is_some(), "not copied: {}", r.all());
    assert_ne!(
        mirrored,
        Some(multi.digest.to_string()),
        "the filter made no manifest of its own; the test proves nothing"
    );
}

#[test]
fn the_carried_vendor_signature_still_verifies_in_the_target() {
    let v = vendor();
    v.sign("vendor/app", &v.app.digest.to_string(), &v.vendor.0);
    let ours = p256_keypair(v.pair.dir.path(), "ours");
    let def = v.pair.definition(
        "- source: vendor/app:1.0\n  sign: true\n  carrySignatures: true\n  pipeline:\n    guards: [ { plugin: cosign-verify, config: { key: vendor.pub } } ]\n",
    );
    let host = v.pair.target.host();
    let r = run(&[
        "-i",
        def.as_str(),
        "--insecure-registry",
        &host,
        "-k",
        ours.0.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("signature: signed"), "{}", r.stdout);
    // The mirror as a source: the vendor's key still verifies there, and so
    // does ours (a dry run that only checks).
    let again = write(
        v.pair.dir.path(),
        "from-mirror.yaml",
        &format!(
            "targetRepoPrefix: \"{host}/again/\"\nregistries:\n  \"{host}\":\n    insecure: true\nimages:\n- source: {host}/mirror/vendor/app:1.0\npipeline:\n  guards: [ {{ plugin: cosign-verify, config: {{ key: vendor.pub }} }}, {{ plugin: cosign-verify, config: {{ key: ours.pub }} }} ]\n"
        ),
    );
    let r = run(&["-i", again.to_str().unwrap(), "--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("would copy"), "{}", r.stdout);
}

#[test]
fn bad_keys_and_configs_exit_2_before_any_registry_is_asked() {
    let v = vendor();
    std::fs::write(v.pair.dir.path().join("not-a-key.pem"), "hello\n").unwrap();
    let asked = v.pair.source.requests().len();
    for (config, says) in [
        ("{ key: missing.pub }", "cannot read the key file"),
        (
            "{ key: vendor.pem }",
            "is a private key; give its public key",
        ),
        ("{ key: not-a-key.pem }", "is not a PEM public key"),
        ("{ key: vendor.pub, keys: x }", "unknown field `keys`"),
        (
            "{ annotations: { a: b } }",
            "give `key` (the vendor's public key) or `keyless`",
        ),
        ("{ key: \"awskms://\" }", "awskms"),
    ] {
        assert_guard_input_error(&v.sync_app(config, &[]), config, says);
    }
    assert_eq!(
        v.pair.source.requests().len(),
        asked,
        "the source was asked"
    );
}

/// A run refused for the first guard's `config`: exit 2, the message says
/// `says`, and names the definition's file, line and the guard.
pub fn assert_guard_input_error(r: &Run, config: &str, says: &str) {
    assert_eq!(r.code, 2, "{config}: {}", r.all());
    assert!(r.stderr.contains(says), "{config}: {}", r.stderr);
    assert!(
        r.stderr.contains("images.yaml:") && r.stderr.contains("pipeline.guards[0]"),
        "{config}: {}",
        r.stderr
    );
}

/// The guard's reads pass the registry's gate and are retried on their own,
/// like the engine's: the source refuses the first two requests for the
/// signature tag (500), and the vendor-signed image is still verified and
/// copied. Before, the guard's first refused read failed the image.
#[test]
fn the_guards_reads_are_retried_through_a_failing_registry() {
    let app = fixtures::image("vendor-retried", 1, 500);
    let refuse_sig = Faults {
        refuse: Some(Refuse {
            method: None,
            path: ".sig".into(),
            times: 2,
            status: 500,
            code: "UNKNOWN".into(),
        }),
        ..Default::default()
    };
    let p = proxied(
        &[("vendor/app:1.0", &app)],
        refuse_sig,
        Default::default(),
        "- source: vendor/app:1.0\n  pipeline:\n    guards: [ { plugin: cosign-verify, config: { key: vendor.pub } } ]\n",
        "",
    );
    let dir = std::path::Path::new(&p.def).parent().unwrap();
    let (key, _) = p256_keypair(dir, "vendor");
    let digest = app.digest.to_string();
    push_openssl_signature(&p.source, "vendor/app", &digest, &key, dir);
    let r = run(&["-i", &p.def]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        block_on(p.target.digest("mirror/vendor/app:1.0")),
        Some(digest.clone())
    );
    // The signature tag was asked three times: twice refused, then read.
    let sig = format!("/v2/vendor/app/manifests/{}.sig", digest.replace(':', "-"));
    let asked =
        p.sp.injected
            .log()
            .iter()
            .filter(|(_, path)| path.split('?').next() == Some(sig.as_str()))
            .count();
    assert_eq!(asked, 3, "{:#?}", p.sp.injected.log());
}
