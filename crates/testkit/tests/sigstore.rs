//! The stand-in Sigstore checked by an independent implementation:
//! sigstore-python's `sigstore verify identity`, offline, with the stand-in's
//! trust configuration. It must accept a DSSE bundle from the stand-in (so the
//! certificate, SCT, SET, inclusion proof and checkpoint are all in the real
//! formats) and refuse tampered ones for the reason they were tampered.

use std::path::Path;
use std::process::{Command, Output};

use image_syncer_testkit::sigstore::{EntryOptions, Identity, LeafOptions, SctMode};
use image_syncer_testkit::Sigstore;

const EMAIL: &str = "signer@example.com";
const ISSUER: &str = "https://accounts.google.com";
const DIGEST: &str = "c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172";

/// Runs `sigstore --trust-config ... verify identity --offline` on `bundle`
/// for `sha256:<digest>`. Panics when sigstore-python is not installed.
fn sigstore_python(dir: &Path, bundle: &[u8], digest: &str) -> Output {
    let trust_config = dir.join("trust_config.json");
    let bundle_path = dir.join("bundle.sigstore.json");
    std::fs::write(&bundle_path, bundle).expect("write bundle");
    let run = Command::new("sigstore")
        .arg("--trust-config")
        .arg(&trust_config)
        .args(["verify", "identity", "--offline", "--bundle"])
        .arg(&bundle_path)
        .args(["--cert-identity", EMAIL, "--cert-oidc-issuer", ISSUER])
        .arg(format!("sha256:{digest}"))
        // One line per message: rich wraps at the terminal's width.
        .env("COLUMNS", "500")
        .env("NO_COLOR", "1")
        .output();
    let missing = "missing: sigstore (sigstore-python, the independent checker of the stand-in \
                   Sigstore) — install it with: pip install sigstore (scripts/test.sh does)";
    match run {
        // 127: a shell or pyenv shim found no `sigstore` to run.
        Ok(output) if output.status.code() == Some(127) => {
            panic!("{missing}\n{}", stderr(&output))
        }
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{missing}"),
        Err(e) => panic!("running sigstore: {e}"),
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// sigstore-python refuses `bundle`, saying `reason`.
fn assert_refused(dir: &Path, bundle: &[u8], digest: &str, reason: &str) {
    let output = sigstore_python(dir, bundle, digest);
    let err = stderr(&output);
    assert!(!output.status.success(), "accepted:\n{err}");
    assert!(
        err.contains(reason),
        "refused, but not for {reason:?}:\n{err}"
    );
}

#[test]
fn sigstore_python_accepts_a_standin_dsse_bundle_and_refuses_tampered_ones() {
    let dir = tempfile::tempdir().unwrap();
    let sigstore = Sigstore::new();
    sigstore.write_trust_config(dir.path());
    let identity = Identity::email(EMAIL, ISSUER);
    let statement = Sigstore::statement(DIGEST, Some("registry.example/app"));

    let leaf = sigstore.issue(&identity);
    let bundle = sigstore.bundle_dsse(&leaf, &statement);
    let output = sigstore_python(dir.path(), &bundle, DIGEST);
    assert!(output.status.success(), "refused:\n{}", stderr(&output));
    assert!(stderr(&output).contains(&format!("OK: SHA2_256:{DIGEST}")));

    // Another image.
    let other_digest = "00".repeat(32);
    assert_refused(
        dir.path(),
        &bundle,
        &other_digest,
        "in-toto statement has no subject for digest",
    );

    // An SCT by a key that is not the CT log's.
    let wrong_sct = LeafOptions {
        sct: SctMode::WrongKey,
        ..LeafOptions::default()
    };
    let leaf = sigstore.issue_with(&identity, &wrong_sct);
    let bundle = sigstore.bundle_dsse(&leaf, &statement);
    assert_refused(dir.path(), &bundle, DIGEST, "SCT verify failed");

    // A certificate from a CA the trusted root does not name.
    let other = Sigstore::new();
    let rogue = LeafOptions {
        ca: Some(&other),
        ..LeafOptions::default()
    };
    let leaf = sigstore.issue_with(&identity, &rogue);
    let bundle = sigstore.bundle_dsse(&leaf, &statement);
    assert_refused(dir.path(), &bundle, DIGEST, "certificate chain");

    // An entry in a log the trusted root does not name.
    let leaf = sigstore.issue(&identity);
    let unknown_log = EntryOptions {
        log: Some(&other),
        ..EntryOptions::default()
    };
    let bundle = sigstore.bundle_dsse_with(&leaf, &statement, &unknown_log);
    assert_refused(dir.path(), &bundle, DIGEST, "invalid log entry");
}
