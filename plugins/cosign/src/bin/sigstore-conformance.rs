//! The Sigstore conformance suite's client protocol (`verify-bundle` only),
//! over the verifier `cosign-verify { keyless }` uses, so that anyone can
//! run the public suite against image-syncer (`scripts/sigstore-conformance`):
//!
//! ```text
//! sigstore-conformance verify-bundle --bundle FILE --certificate-identity IDENTITY --certificate-oidc-issuer URL [--trusted-root FILE] FILE_OR_DIGEST
//! sigstore-conformance verify-bundle --bundle FILE --key PATH_TO_KEY [--trusted-root FILE] FILE_OR_DIGEST
//! ```
//!
//! `FILE_OR_DIGEST` is a path, or `sha256:<64 hex>`. Exit 0: verified; 1:
//! refused (the reason on stderr); 2: usage.

use std::process::ExitCode;

use image_syncer_cosign::keyless::{Keyless, Trust};
use sigstore_verify::types::{Artifact, Sha256Hash};

#[derive(Default)]
struct Args {
    bundle: Option<String>,
    identity: Option<String>,
    issuer: Option<String>,
    key: Option<String>,
    trusted_root: Option<String>,
    artifact: Option<String>,
}

const USAGE: &str = "usage: sigstore-conformance verify-bundle --bundle FILE (--certificate-identity ID --certificate-oidc-issuer URL | --key KEY) [--trusted-root FILE] FILE_OR_DIGEST";

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    match argv.next().as_deref() {
        Some("verify-bundle") => {}
        Some(other) => return Err(format!("unsupported subcommand `{other}`")),
        None => return Err("no subcommand".into()),
    }
    let mut args = Args::default();
    while let Some(a) = argv.next() {
        let slot = match a.as_str() {
            "--bundle" => &mut args.bundle,
            "--certificate-identity" => &mut args.identity,
            "--certificate-oidc-issuer" => &mut args.issuer,
            "--key" => &mut args.key,
            "--trusted-root" => &mut args.trusted_root,
            flag if flag.starts_with("--") => return Err(format!("unknown option `{flag}`")),
            _ if args.artifact.is_none() => {
                args.artifact = Some(a);
                continue;
            }
            _ => return Err(format!("unexpected argument `{a}`")),
        };
        *slot = Some(argv.next().ok_or_else(|| format!("{a} needs a value"))?);
    }
    Ok(args)
}

fn read(path: &str, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read the {what} {path}: {e}"))
}

fn run(args: Args) -> Result<(), String> {
    let bundle_path = args.bundle.ok_or("--bundle is required")?;
    let artifact = args
        .artifact
        .ok_or("the artifact (a path or sha256:<hex>) is required")?;
    let bundle = read(&bundle_path, "bundle")?;
    let trust = match &args.trusted_root {
        Some(path) => Trust::from_file(path, std::path::Path::new(path))?,
        None => Trust::public_good(),
    };
    let bytes;
    let artifact = match artifact.strip_prefix("sha256:") {
        Some(hex) => Artifact::from_digest(
            Sha256Hash::from_hex(hex).map_err(|e| format!("`{artifact}`: {e}"))?,
        ),
        None => {
            bytes = std::fs::read(&artifact)
                .map_err(|e| format!("cannot read the artifact {artifact}: {e}"))?;
            Artifact::from_blob(&bytes)
        }
    };
    match (args.key, args.identity, args.issuer) {
        (Some(key), None, None) => trust.verify_with_key(artifact, &bundle, &read(&key, "key")?),
        (None, Some(identity), Some(issuer)) => {
            Keyless::exact(&identity, &issuer, trust).verify(artifact, &bundle)
        }
        _ => Err(format!(
            "give --key, or --certificate-identity with --certificate-oidc-issuer\n{USAGE}"
        )),
    }
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("sigstore-conformance: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sigstore-conformance: refused: {e}");
            ExitCode::FAILURE
        }
    }
}
