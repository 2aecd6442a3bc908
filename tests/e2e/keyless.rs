//! Keyless upstream signatures (`cosign-verify { keyless }`), against the
//! real registry: certificates, SCTs, SETs and inclusion proofs made by the
//! testkit's stand-in Sigstore instance (checked once by sigstore-python in
//! crates/testkit/tests/sigstore.rs), stored as cosign writes them: classic
//! `.sig` layers with the certificate, chain and Rekor bundle annotations
//! (v2, registry.k8s.io), and v0.3 bundles attached as referrers (v3).

use std::path::PathBuf;

use image_syncer_testkit::sigstore::{
    EntryOptions, Identity, Leaf, LeafOptions, SctMode, Validity,
};
use image_syncer_testkit::Sigstore;

use crate::bundles::{push_bundle, push_tag_index};
use crate::signing::push_signature_layer;
use crate::support::*;
use crate::upstream::assert_guard_input_error;

const K8S: &str = "krel-trust@k8s-releng-prod.iam.gserviceaccount.com";
const GOOGLE: &str = "https://accounts.google.com";
const WORKFLOW: &str =
    "https://github.com/chainguard-images/images/.github/workflows/release.yaml@refs/heads/main";
const GITHUB: &str = "https://token.actions.githubusercontent.com";

struct World {
    pair: Pair,
    sigstore: Sigstore,
    root: PathBuf,
}

fn world() -> World {
    world_with(Pair::new())
}

/// With the source's access log on, to count its requests.
fn world_with(pair: Pair) -> World {
    let sigstore = Sigstore::new();
    let root = sigstore.write_trusted_root(pair.dir.path());
    World {
        pair,
        sigstore,
        root,
    }
}

/// cosign's simple-signing payload for `digest` in `repo`.
fn payload(registry: &Registry, repo: &str, digest: &str) -> Vec<u8> {
    format!(
        "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"{}/{repo}\"}},\"image\":{{\"docker-manifest-digest\":\"{digest}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}",
        registry.host()
    )
    .into_bytes()
}

/// How a classic signature is stored.
#[derive(Clone, Copy)]
struct Classic<'a> {
    chain: bool,
    entry: EntryOptions<'a>,
}

impl Default for Classic<'_> {
    fn default() -> Self {
        Classic {
            chain: true,
            entry: EntryOptions::default(),
        }
    }
}

impl World {
    fn image(&self, repo: &str, seed: &str) -> fixtures::TestImage {
        let image = fixtures::image(seed, 1, 300);
        block_on(self.pair.source.push(&format!("{repo}:1.0"), &image));
        image
    }

    /// A classic keyless signature of `signed` by `leaf`, stored in
    /// `stored_in` under `under`'s `.sig` tag.
    fn sign_classic(
        &self,
        leaf: &Leaf,
        stored_in: &str,
        under: &str,
        signed_repo: &str,
        signed: &str,
        how: Classic,
    ) {
        let payload = payload(&self.pair.source, signed_repo, signed);
        let sig = self.sigstore.classic_with(leaf, &payload, &how.entry);
        let mut annotations = serde_json::json!({
            "dev.cosignproject.cosign/signature": sig.signature_b64,
            "dev.sigstore.cosign/certificate": sig.certificate_pem,
            "dev.sigstore.cosign/bundle": sig.bundle_json,
        });
        if how.chain {
            annotations["dev.sigstore.cosign/chain"] = sig.chain_pem.into();
        }
        push_signature_layer(&self.pair.source, stored_in, under, &payload, annotations);
    }

    fn k8s_leaf(&self, options: &LeafOptions) -> Leaf {
        self.sigstore
            .issue_with(&Identity::email(K8S, GOOGLE), options)
    }

    /// `repo:1.0` guarded by `keyless` (YAML flow map entries) and `extra`
    /// guard settings.
    fn sync(&self, repo: &str, keyless: &str, extra: &str) -> Run {
        self.pair.sync(
            &format!(
                "- source: {repo}:1.0\n  pipeline:\n    guards: [ {{ plugin: cosign-verify, config: {{ keyless: {{ {keyless}, trustedRoot: {} }}{extra} }} }} ]\n",
                self.root.display()
            ),
            &[],
        )
    }

    fn mirrored(&self, repo: &str) -> Option<String> {
        block_on(self.pair.target.digest(&format!("mirror/{repo}:1.0")))
    }
}

fn k8s() -> String {
    format!("identity: {K8S}, issuer: \"{GOOGLE}\"")
}

#[test]
fn classic_keyless_signatures_with_and_without_the_chain_are_accepted() {
    let w = world();
    let with = w.image("k8s/with-chain", "kl-with");
    let without = w.image("k8s/kube-apiserver", "kl-without");
    let leaf = w.k8s_leaf(&LeafOptions::default());
    let d = with.digest.to_string();
    w.sign_classic(
        &leaf,
        "k8s/with-chain",
        &d,
        "k8s/with-chain",
        &d,
        Classic::default(),
    );
    let d = without.digest.to_string();
    let no_chain = Classic {
        chain: false,
        ..Classic::default()
    };
    w.sign_classic(
        &leaf,
        "k8s/kube-apiserver",
        &d,
        "k8s/kube-apiserver",
        &d,
        no_chain,
    );
    for (repo, image) in [("k8s/with-chain", &with), ("k8s/kube-apiserver", &without)] {
        let r = w.sync(repo, &k8s(), "");
        assert_eq!(r.code, 0, "{repo}: {}", r.all());
        assert_eq!(w.mirrored(repo), Some(image.digest.to_string()), "{repo}");
    }
}

#[test]
fn a_bundle_referrer_and_an_identity_regexp_are_accepted() {
    let w = world();
    let image = w.image("chainguard/static", "kl-bundle");
    let leaf = w.sigstore.issue(&Identity::uri(WORKFLOW, GITHUB));
    let statement = Sigstore::statement(image.digest.hex(), None);
    let bundle = w.sigstore.bundle_dsse(&leaf, &statement);
    let (d, size) = push_bundle(&w.pair.source, "chainguard/static", &image, &bundle, None);
    push_tag_index(
        &w.pair.source,
        "chainguard/static",
        &image.digest.to_string(),
        &[(d, size)],
    );
    let exact = format!("identity: \"{WORKFLOW}\", issuer: \"{GITHUB}\"");
    let regexp = "identityRegexp: \"^https://github.com/chainguard-images/images/.github/workflows/.*\", issuerRegexp: \"https://token\\\\.actions\\\\.githubusercontent\\\\.com\"".to_string();
    // A regexp matches the whole value: a prefix alone does not.
    let prefix =
        format!("identityRegexp: \"https://github.com/chainguard-images\", issuer: \"{GITHUB}\"");
    let r = w.sync("chainguard/static", &prefix, "");
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(
        r.stdout
            .contains("identity is `https://github.com/chainguard-images/images/"),
        "{}",
        r.stdout
    );
    assert_eq!(w.mirrored("chainguard/static"), None);
    for policy in [exact, regexp] {
        let r = w.sync("chainguard/static", &policy, "");
        assert_eq!(r.code, 0, "{policy}: {}", r.all());
    }
    assert_eq!(
        w.mirrored("chainguard/static"),
        Some(image.digest.to_string())
    );
}

#[test]
fn a_multi_arch_index_and_its_children_signed_keyless() {
    let w = world();
    let multi = fixtures::index("kl-multi", &["linux/amd64", "linux/arm64"]);
    block_on(w.pair.source.push("distroless/static:1.0", &multi));
    let leaf = w.sigstore.issue(&Identity::email(
        "keyless@distroless.iam.gserviceaccount.com",
        GOOGLE,
    ));
    let policy =
        format!("identity: keyless@distroless.iam.gserviceaccount.com, issuer: \"{GOOGLE}\"");
    let index = multi.digest.to_string();
    w.sign_classic(
        &leaf,
        "distroless/static",
        &index,
        "distroless/static",
        &index,
        Classic::default(),
    );
    // With `recursive`, each child needs its own signature too.
    let r = w.sync("distroless/static", &policy, ", recursive: true");
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(
        r.stdout.contains("no signature for distroless/static:1.0@"),
        "{}",
        r.stdout
    );
    for child in &multi.children {
        let d = child.digest.to_string();
        w.sign_classic(
            &leaf,
            "distroless/static",
            &d,
            "distroless/static",
            &d,
            Classic::default(),
        );
    }
    let r = w.sync("distroless/static", &policy, ", recursive: true");
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(w.mirrored("distroless/static"), Some(index));
}

#[test]
fn signatures_are_read_from_the_signatures_repository() {
    let w = world();
    let image = w.image("kyverno/kyverno", "kl-kyverno");
    let d = image.digest.to_string();
    let identity =
        "https://github.com/kyverno/kyverno/.github/workflows/reuse.yaml@refs/tags/v1.13.0";
    let leaf = w.sigstore.issue(&Identity::uri(identity, GITHUB));
    // Stored where Kyverno stores them, not beside the image.
    w.sign_classic(
        &leaf,
        "kyverno/signatures",
        &d,
        "kyverno/kyverno",
        &d,
        Classic::default(),
    );
    let policy = format!(
        "identityRegexp: \"https://github.com/kyverno/kyverno/.github/workflows/reuse.yaml@refs/tags/v.*\", issuer: \"{GITHUB}\""
    );
    let r = w.sync("kyverno/kyverno", &policy, "");
    assert_eq!(r.code, 3, "beside the image there is none: {}", r.all());
    assert!(
        r.stdout.contains("no signature for kyverno/kyverno:1.0@"),
        "{}",
        r.stdout
    );
    let r = w.sync(
        "kyverno/kyverno",
        &policy,
        ", signaturesRepository: kyverno/signatures",
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(w.mirrored("kyverno/kyverno"), Some(d));
}

/// Every way a keyless signature can be wrong is a safety stop (exit 3)
/// naming its reason, with nothing written to the target.
#[test]
fn every_invalid_keyless_signature_is_a_safety_stop_writing_nothing() {
    let w = world();
    let other = Sigstore::new();
    let before = w.pair.target.storage_snapshot();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let leaf = |options: LeafOptions| w.k8s_leaf(&options);
    let good = leaf(LeafOptions::default());
    struct Case<'a> {
        name: &'a str,
        leaf: Leaf,
        how: Classic<'a>,
        policy: String,
        says: &'a str,
    }
    let cases = [
        Case {
            name: "wrong-identity",
            leaf: w
                .sigstore
                .issue(&Identity::email("someone@example.com", GOOGLE)),
            how: Classic::default(),
            policy: k8s(),
            says: "the certificate's identity is `someone@example.com`",
        },
        Case {
            name: "wrong-issuer",
            leaf: w.sigstore.issue(&Identity::email(K8S, GITHUB)),
            how: Classic::default(),
            policy: k8s(),
            says: "the certificate's issuer is `https://token.actions.githubusercontent.com`",
        },
        Case {
            name: "expired",
            leaf: leaf(LeafOptions {
                validity: Validity::Expired,
                ..LeafOptions::default()
            }),
            how: Classic::default(),
            policy: k8s(),
            says: "CertExpired",
        },
        Case {
            name: "unknown-log",
            leaf: leaf(LeafOptions::default()),
            how: Classic {
                entry: EntryOptions {
                    log: Some(&other),
                    ..EntryOptions::default()
                },
                ..Classic::default()
            },
            policy: k8s(),
            says: "No log key valid at integrated time",
        },
        Case {
            name: "bad-set",
            leaf: leaf(LeafOptions::default()),
            how: Classic {
                entry: EntryOptions {
                    corrupt_set: true,
                    ..EntryOptions::default()
                },
                ..Classic::default()
            },
            policy: k8s(),
            says: "SET verification failed",
        },
        Case {
            name: "rogue-ca",
            leaf: leaf(LeafOptions {
                ca: Some(&other),
                ..LeafOptions::default()
            }),
            how: Classic::default(),
            policy: k8s(),
            says: "certificate chain is invalid",
        },
        Case {
            name: "no-sct",
            leaf: leaf(LeafOptions {
                sct: SctMode::Missing,
                ..LeafOptions::default()
            }),
            how: Classic::default(),
            policy: k8s(),
            says: "certificate is missing SCT extension",
        },
        Case {
            name: "bad-sct",
            leaf: leaf(LeafOptions {
                sct: SctMode::WrongKey,
                ..LeafOptions::default()
            }),
            how: Classic::default(),
            policy: k8s(),
            says: "SCT signature verification failed",
        },
        Case {
            name: "future-log-time",
            leaf: leaf(LeafOptions::default()),
            how: Classic {
                entry: EntryOptions {
                    integrated_time: Some(now + 3600),
                    ..EntryOptions::default()
                },
                ..Classic::default()
            },
            policy: k8s(),
            says: "is in the future",
        },
    ];
    let mut report = Vec::new();
    for case in &cases {
        let repo = format!("k8s/{}", case.name);
        let image = w.image(&repo, &format!("kl-{}", case.name));
        let d = image.digest.to_string();
        w.sign_classic(&case.leaf, &repo, &d, &repo, &d, case.how);
        let r = w.sync(&repo, &case.policy, "");
        assert_eq!(r.code, 3, "{}: {}", case.name, r.all());
        assert!(
            r.stdout.contains("STOPPED") && r.stdout.contains(case.says),
            "{}: the report names the reason `{}`: {}",
            case.name,
            case.says,
            r.stdout
        );
        report.push(format!(
            "{}: {}",
            case.name,
            stop_line(&r.stdout).replace(&d, "[DIGEST]")
        ));
    }
    // A valid signature of another digest, stored under this one's tag.
    let image = w.image("k8s/other-digest", "kl-other");
    let tool = w.image("k8s/tool", "kl-tool");
    let (d, t) = (image.digest.to_string(), tool.digest.to_string());
    w.sign_classic(
        &good,
        "k8s/other-digest",
        &d,
        "k8s/tool",
        &t,
        Classic::default(),
    );
    let r = w.sync("k8s/other-digest", &k8s(), "");
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(r.stdout.contains("signs another digest"), "{}", r.stdout);
    // Unsigned.
    w.image("k8s/unsigned", "kl-unsigned");
    let r = w.sync("k8s/unsigned", &k8s(), "");
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(
        r.stdout.contains("no signature for k8s/unsigned:1.0@"),
        "{}",
        r.stdout
    );
    assert_eq!(w.pair.target.storage_snapshot(), before, "a stop wrote");
    let text = report
        .join("\n")
        .replace(&w.root.display().to_string(), "[ROOT]");
    insta::assert_snapshot!(text);
}

/// The report's stop reason for the one image of a run, cut before the
/// times and log IDs that differ from run to run.
fn stop_line(stdout: &str) -> String {
    let line = stdout
        .lines()
        .skip_while(|l| !l.contains("STOPPED"))
        .nth(1)
        .unwrap_or_default()
        .trim();
    let volatile = [" { time:", " at integrated time ", " 2026-", " 20"];
    match volatile.iter().filter_map(|v| line.find(v)).min() {
        Some(cut) => format!("{} [...]", &line[..cut]),
        None => line.to_string(),
    }
}

/// `keyless` settings that cannot work are input errors (exit 2) naming
/// the definition's file, line and the guard, before any registry is asked.
#[test]
fn bad_keyless_settings_exit_2_before_any_registry_is_asked() {
    let w = world_with(Pair::logged());
    w.image("k8s/app", "kl-bad");
    let dir = w.pair.dir.path();
    std::fs::write(dir.join("broken-root.json"), "{ not json").unwrap();
    std::fs::write(dir.join("vendor.pub"), "unused").unwrap();
    let asked = w.pair.source.requests().len();
    let google = format!("issuer: \"{GOOGLE}\"");
    for (config, says) in [
        (
            format!("keyless: {{ identity: {K8S}, {google}, trustedRoot: missing.json }}"),
            "cannot read the trusted root",
        ),
        (
            format!("keyless: {{ identity: {K8S}, {google}, trustedRoot: broken-root.json }}"),
            "broken-root.json is not a usable trusted root",
        ),
        (
            format!("keyless: {{ identityRegexp: \"(\", {google} }}"),
            "`identityRegexp` is not a valid regular expression",
        ),
        (
            format!("keyless: {{ identity: a, identityRegexp: b, {google} }}"),
            "not both",
        ),
        (format!("keyless: {{ identity: {K8S} }}"), "needs `issuer`"),
        (
            format!("key: vendor.pub, keyless: {{ identity: {K8S}, {google} }}"),
            "give `key` or `keyless`, not both",
        ),
        (
            format!("keyless: {{ identity: {K8S}, {google}, trustedroot: x }}"),
            "unknown field `trustedroot`",
        ),
        (
            format!("keyless: {{ identity: {K8S}, {google} }}, signaturesRepository: \"a/b:tag\""),
            "names a repository, without a tag or digest",
        ),
    ] {
        let r = w.pair.sync(
            &format!(
                "- source: k8s/app:1.0\n  pipeline:\n    guards: [ {{ plugin: cosign-verify, config: {{ {config} }} }} ]\n"
            ),
            &[],
        );
        assert_guard_input_error(&r, &config, says);
    }
    assert_eq!(
        w.pair.source.requests().len(),
        asked,
        "the source was asked"
    );
}

/// Bundles are refused as classic signatures are: a statement of another
/// digest, and a certificate for another identity.
#[test]
fn a_bundle_of_another_digest_or_identity_is_a_safety_stop() {
    let w = world();
    let before = w.pair.target.storage_snapshot();
    let policy = format!("identity: \"{WORKFLOW}\", issuer: \"{GITHUB}\"");
    let image = w.image("chainguard/other", "kl-b-other");
    let tool = w.image("chainguard/tool", "kl-b-tool");
    let leaf = w.sigstore.issue(&Identity::uri(WORKFLOW, GITHUB));
    let stranger = w.sigstore.issue(&Identity::uri(
        "https://github.com/evil/repo/.github/workflows/x.yaml@refs/heads/main",
        GITHUB,
    ));
    for (repo, leaf, subject, says) in [
        ("chainguard/other", &leaf, &tool, "signs another digest"),
        (
            "chainguard/tool",
            &stranger,
            &tool,
            "the certificate's identity is `https://github.com/evil/repo/",
        ),
    ] {
        let target = if repo == "chainguard/other" {
            &image
        } else {
            &tool
        };
        let statement = Sigstore::statement(subject.digest.hex(), None);
        let bundle = w.sigstore.bundle_dsse(leaf, &statement);
        let (d, size) = push_bundle(&w.pair.source, repo, target, &bundle, None);
        push_tag_index(
            &w.pair.source,
            repo,
            &target.digest.to_string(),
            &[(d, size)],
        );
        let r = w.sync(repo, &policy, "");
        assert_eq!(r.code, 3, "{repo}: {}", r.all());
        assert!(r.stdout.contains(says), "{repo}: {}", r.stdout);
    }
    assert_eq!(w.pair.target.storage_snapshot(), before, "a stop wrote");
}
