//! The Sigstore conformance suite's 70 verification cases, each run twice
//! (the artifact's path and its digest), through the `sigstore-conformance`
//! binary exactly as the public suite runs a client (tests/data/
//! sigstore-conformance/README.md). Every run must end as the suite expects:
//! cases named `*_fail` refused, every other verified.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest as _;

const DEFAULT_IDENTITY: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
const DEFAULT_ISSUER: &str = "https://token.actions.githubusercontent.com";

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sigstore-conformance")
}

/// The arguments the suite passes for case `dir`, with the artifact as a
/// path or as its digest.
fn arguments(dir: &Path, by_digest: bool) -> Vec<String> {
    let file = |name: &str| Some(dir.join(name)).filter(|p| p.exists());
    let text = |name: &str| file(name).map(|p| std::fs::read_to_string(p).unwrap());
    let path = |p: PathBuf| p.display().to_string();
    let mut args = vec![
        "verify-bundle".to_string(),
        "--bundle".into(),
        path(dir.join("bundle.sigstore.json")),
    ];
    match file("key.pub") {
        Some(key) => args.extend(["--key".into(), path(key)]),
        None => args.extend([
            "--certificate-identity".into(),
            text("identity").unwrap_or_else(|| DEFAULT_IDENTITY.into()),
            "--certificate-oidc-issuer".into(),
            text("issuer").unwrap_or_else(|| DEFAULT_ISSUER.into()),
        ]),
    }
    if let Some(root) = file("trusted_root.json") {
        args.extend(["--trusted-root".into(), path(root)]);
    }
    let artifact = file("artifact").unwrap_or_else(|| data().join("a.txt"));
    args.push(if by_digest {
        format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(std::fs::read(&artifact).unwrap()))
        )
    } else {
        path(artifact)
    });
    args
}

#[test]
fn all_140_conformance_runs_end_as_the_suite_expects() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(data().join("bundle-verify"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 70, "the suite has 70 verification cases");
    let (mut runs, mut wrong) = (0, Vec::new());
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let expect_valid = !name.ends_with("_fail");
        for by_digest in [false, true] {
            let out = Command::new(env!("CARGO_BIN_EXE_sigstore-conformance"))
                .args(arguments(dir, by_digest))
                .output()
                .unwrap();
            runs += 1;
            let code = out.status.code();
            // Refused is exit 1 (never a crash or a usage error).
            let ok = if expect_valid {
                code == Some(0)
            } else {
                code == Some(1)
            };
            if !ok {
                wrong.push(format!(
                    "{name} ({}): exit {code:?}, {}",
                    if by_digest { "digest" } else { "path" },
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    assert_eq!(runs, 140);
    assert!(
        wrong.is_empty(),
        "{} of 140 runs ended otherwise than the suite expects:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Refusals name their reason; usage errors exit 2.
#[test]
fn refusals_say_why_and_usage_errors_exit_2() {
    let case = data().join("bundle-verify/signature-mismatch_fail");
    let out = Command::new(env!("CARGO_BIN_EXE_sigstore-conformance"))
        .args(arguments(&case, false))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("sigstore-conformance: refused: "),
        "{stderr}"
    );
    let ok = data().join("bundle-verify/happy-path-v0.3");
    let mut wrong_identity = arguments(&ok, false);
    wrong_identity[4] = "someone@example.com".into();
    let out = Command::new(env!("CARGO_BIN_EXE_sigstore-conformance"))
        .args(&wrong_identity)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not someone@example.com"),
        "the identity mismatch is named: {stderr}"
    );
    for bad in [
        &["sign-bundle"][..],
        &["verify-bundle", "--frobnicate", "x"][..],
        &[][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sigstore-conformance"))
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

/// `scripts/sigstore-conformance`, the suite's entrypoint, runs this binary
/// (given through `IMAGE_SYNCER_CONFORMANCE_BIN`, so that the test does not
/// build) and passes its arguments and exit code through.
#[test]
fn the_script_is_the_entrypoint() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/sigstore-conformance");
    for (case, code) in [("happy-path-v0.3", 0), ("dsse-invalid-sig_fail", 1)] {
        let out = Command::new(&script)
            .env(
                "IMAGE_SYNCER_CONFORMANCE_BIN",
                env!("CARGO_BIN_EXE_sigstore-conformance"),
            )
            .args(arguments(&data().join("bundle-verify").join(case), true))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
