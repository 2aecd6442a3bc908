//! Keyless verification: a signature made with a short-lived Fulcio
//! certificate for a CI identity, recorded in a Rekor transparency log, and
//! checked offline against a trusted root (`trusted_root.json`).
//!
//! The cryptography is the `sigstore-verify` crate's (it passes the Sigstore
//! conformance suite's 140 verification runs): the chain to a CA of the root
//! at the signing time, the codeSigning EKU, the embedded SCT against a CT log
//! key, the transparency-log entry (inclusion promise, inclusion proof and
//! signed checkpoint, Rekor v2), RFC 3161 timestamps, and that the log entry
//! matches the signature, certificate and digest. What this module adds:
//!
//! - identity and issuer matching, exactly or by a whole-value regular
//!   expression (the crate matches exact values only);
//! - cosign's classic `.sig` layers, which are not bundles: their
//!   certificate, chain and Rekor `bundle` annotations are put together as
//!   the v0.1 bundle they are equivalent to (a message signature over the
//!   payload, the certificate chain, the entry with its inclusion promise),
//!   and that bundle is verified. v0.1 requires the inclusion promise (the
//!   SET), so a keyless signature without one is never valid;
//! - for images, that the statement is cosign's signing statement for the
//!   image's digest ([`bundle::statement_verdict`]).
//!
//! docs/signing.md ("Keyless") says which check is whose.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use image_syncer_core::async_trait;
use image_syncer_core::digest::Digest;
use image_syncer_core::stage::StageError;
use image_syncer_cosign_format::bundle::{self, Checked};
use image_syncer_cosign_format::sigmanifest::SignatureLayer;
use image_syncer_cosign_format::Verifier;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use sigstore_verify::trust_root::TrustedRoot;
use sigstore_verify::types::{Artifact, Bundle, DerCertificate, Sha256Hash};
use sigstore_verify::{PublicKeyVerificationPolicy, VerificationPolicy};

/// The Sigstore public-good instance's trusted root, used when `trustedRoot`
/// is not given (where it comes from: `trust/README.md`).
pub const PUBLIC_GOOD_ROOT: &str = include_str!("../trust/public-good-trusted_root.json");
/// The date [`PUBLIC_GOOD_ROOT`] was taken.
pub const PUBLIC_GOOD_ROOT_DATE: &str = "2026-12-06";

/// The annotations of a classic keyless signature layer.
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
pub const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";

/// Settings of `cosign-verify`'s `keyless:`: who must have signed, and the
/// root of trust.
#[derive(Debug, Default, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeylessConfig {
    /// The certificate's identity (its SAN: an email or a URI), exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The identity as a regular expression matching the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_regexp: Option<String>,
    /// The OIDC issuer the certificate names, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The issuer as a regular expression matching the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_regexp: Option<String>,
    /// A `trusted_root.json` (relative to the definition); default: the
    /// Sigstore public-good root built in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_root: Option<String>,
}

/// A value a certificate claim must have.
#[derive(Debug)]
enum Matcher {
    Exact(String),
    Regexp(regex::Regex),
}

impl Matcher {
    /// From the exact and the regexp form of a setting: exactly one is given.
    fn from(what: &str, exact: &Option<String>, regexp: &Option<String>) -> Result<Self, String> {
        match (exact, regexp) {
            (Some(v), None) if !v.trim().is_empty() => Ok(Matcher::Exact(v.clone())),
            (None, Some(r)) => regex::Regex::new(&format!("^(?:{r})$"))
                .map(Matcher::Regexp)
                .map_err(|e| format!("`{what}Regexp` is not a valid regular expression: {e}")),
            (Some(_), Some(_)) => Err(format!("give one of `{what}` and `{what}Regexp`, not both")),
            _ => Err(format!(
                "`keyless` needs `{what}` (or `{what}Regexp`): whose signature is expected"
            )),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(v) => v == value,
            Matcher::Regexp(r) => r.is_match(value),
        }
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Matcher::Exact(v) => f.write_str(v),
            Matcher::Regexp(r) => {
                let r = r.as_str();
                write!(f, "/{}/", &r[4..r.len() - 2])
            }
        }
    }
}

/// A trusted root, read and checked: the verifier built from it.
pub struct Trust {
    verifier: sigstore_verify::Verifier,
    /// Where it came from, for messages.
    pub shown: String,
}

impl Trust {
    /// The root in `json` (from `shown`), or why it cannot be used.
    pub fn from_json(shown: &str, json: &str) -> Result<Trust, String> {
        let root = TrustedRoot::from_json(json)
            .map_err(|e| format!("{shown} is not a usable trusted root: {e}"))?;
        let verifier = sigstore_verify::Verifier::new(&root)
            .map_err(|e| format!("{shown} is not a usable trusted root: {e}"))?;
        Ok(Trust {
            verifier,
            shown: shown.to_string(),
        })
    }

    /// The root in the file `path` (written as `shown`).
    pub fn from_file(shown: &str, path: &Path) -> Result<Trust, String> {
        let json = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the trusted root {}: {e}", path.display()))?;
        Trust::from_json(shown, &json)
    }

    /// The Sigstore public-good root built in.
    pub fn public_good() -> Trust {
        Trust::from_json("the built-in Sigstore public-good root", PUBLIC_GOOD_ROOT)
            .expect("the built-in trusted root is valid (tested)")
    }

    /// Verifies `bundle` (JSON) for `artifact` with a managed key (a PEM
    /// public key): the signature, the log entries and timestamps it has.
    pub fn verify_with_key(
        &self,
        artifact: Artifact<'_>,
        bundle: &str,
        public_key_pem: &str,
    ) -> Result<(), String> {
        let bundle =
            Bundle::from_json(bundle).map_err(|e| format!("not a Sigstore bundle: {e}"))?;
        let key = sigstore_verify::types::DerPublicKey::from_pem(public_key_pem)
            .map_err(|e| format!("not a PEM public key: {e}"))?;
        self.verifier
            .verify(artifact, &bundle, &PublicKeyVerificationPolicy::new(key))
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// A keyless policy: an identity, an issuer and a root of trust.
pub struct Keyless {
    identity: Matcher,
    issuer: Matcher,
    trust: Trust,
}

impl Keyless {
    /// The policy `config` describes; a relative `trustedRoot` is resolved
    /// with `resolve` (against the definition's directory).
    pub fn new(
        config: &KeylessConfig,
        resolve: impl Fn(&str) -> std::path::PathBuf,
    ) -> Result<Keyless, String> {
        let identity = Matcher::from("identity", &config.identity, &config.identity_regexp)?;
        let issuer = Matcher::from("issuer", &config.issuer, &config.issuer_regexp)?;
        let trust = match &config.trusted_root {
            Some(file) => Trust::from_file(file, &resolve(file))?,
            None => Trust::public_good(),
        };
        Ok(Keyless {
            identity,
            issuer,
            trust,
        })
    }

    /// An exact identity and issuer, with `trust` (the conformance CLI's).
    pub fn exact(identity: &str, issuer: &str, trust: Trust) -> Keyless {
        Keyless {
            identity: Matcher::Exact(identity.into()),
            issuer: Matcher::Exact(issuer.into()),
            trust,
        }
    }

    /// Verifies the bundle (JSON) for `artifact`: everything the trusted
    /// root and the bundle allow to check, then the identity and the issuer.
    pub fn verify(&self, artifact: Artifact<'_>, bundle: &str) -> Result<(), String> {
        let bundle =
            Bundle::from_json(bundle).map_err(|e| format!("not a Sigstore bundle: {e}"))?;
        let result = self
            .trust
            .verifier
            .verify(artifact, &bundle, &VerificationPolicy::any_identity())
            .map_err(|e| e.to_string())?;
        let identity = result.identity().map(|i| i.as_str()).unwrap_or_default();
        if !self.identity.matches(identity) {
            return Err(format!(
                "the certificate's identity is `{identity}`, not {}",
                self.identity
            ));
        }
        let issuer = result.issuer().unwrap_or_default();
        if !self.issuer.matches(issuer) {
            return Err(format!(
                "the certificate's issuer is `{issuer}`, not {}",
                self.issuer
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Verifier for Keyless {
    fn describe(&self) -> String {
        format!(
            "keyless identity {} (issuer {}, trusted root: {})",
            self.identity, self.issuer, self.trust.shown
        )
    }

    async fn classic(
        &self,
        payload: &[u8],
        layer: &SignatureLayer,
    ) -> Result<Result<(), String>, StageError> {
        Ok(classic_bundle(payload, layer)
            .and_then(|bundle| self.verify(Artifact::from_blob(payload), &bundle)))
    }

    async fn bundle(
        &self,
        bytes: &[u8],
        digest: &Digest,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Checked, StageError> {
        let invalid = |why: String| Ok(Checked::Invalid { why });
        let statement = match bundle::envelope_statement(bytes) {
            Ok(s) => s,
            Err(why) => return invalid(why),
        };
        let Ok(text) = std::str::from_utf8(bytes) else {
            return invalid("not a Sigstore bundle".into());
        };
        // The digest the statement is checked against: this image's when
        // it names it, else the one it names (a valid signature of another
        // digest is reported as such).
        let subjects = bundle::statement_subjects(&statement);
        let subject = if subjects.iter().any(|s| s == digest.hex()) {
            digest.hex().to_string()
        } else {
            match subjects.first() {
                Some(s) => s.clone(),
                None => return invalid("the statement names no sha256 subject".into()),
            }
        };
        let Ok(hash) = Sha256Hash::from_hex(&subject) else {
            return invalid(format!(
                "the statement's subject `{subject}` is not a sha256 digest"
            ));
        };
        if let Err(why) = self.verify(Artifact::from_digest(hash), text) {
            return invalid(why);
        }
        Ok(bundle::statement_verdict(&statement, digest, annotations))
    }
}

/// The v0.1 Sigstore bundle a classic keyless layer is equivalent to, as
/// JSON: the signature over `payload`, the certificate and the chain
/// annotation's certificates (when there is one; registry.k8s.io writes
/// none), the Rekor entry with its inclusion promise (SET). Why it cannot be
/// one, when it cannot.
pub fn classic_bundle(payload: &[u8], layer: &SignatureLayer) -> Result<String, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let signature = layer
        .signature
        .as_deref()
        .ok_or("no signature annotation")?
        .trim();
    if b64.decode(signature).is_err() {
        return Err("the signature annotation is not base64".into());
    }
    let leaf = layer
        .annotation(CERTIFICATE_ANNOTATION)
        .ok_or("no certificate: signed with a key, not keyless")?;
    let mut certificates =
        pem_certificates(leaf).map_err(|e| format!("the certificate annotation: {e}"))?;
    if certificates.len() != 1 {
        return Err("the certificate annotation holds not exactly one certificate".into());
    }
    if let Some(chain) = layer.annotation(CHAIN_ANNOTATION) {
        let chain = pem_certificates(chain).map_err(|e| format!("the chain annotation: {e}"))?;
        // Intermediates for path building only: trust comes from the
        // trusted root's CAs alone (a root in the chain is not an anchor).
        certificates.extend(chain);
    }
    let set = layer.annotation(BUNDLE_ANNOTATION).ok_or(
        "no Rekor bundle annotation (a keyless signature needs the log's signed entry timestamp)",
    )?;
    let set: RekorBundle = serde_json::from_str(set)
        .map_err(|e| format!("the Rekor bundle annotation is malformed: {e}"))?;
    let body = b64
        .decode(&set.payload.body)
        .map_err(|_| "the Rekor entry body is not base64")?;
    let kind: EntryKind = serde_json::from_slice(&body)
        .map_err(|e| format!("the Rekor entry body is malformed: {e}"))?;
    let log_id =
        hex::decode(&set.payload.log_id).map_err(|_| "the Rekor bundle's logID is not hex")?;
    let bundle = serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "verificationMaterial": {
            "x509CertificateChain": {
                "certificates": certificates
                    .iter()
                    .map(|c| serde_json::json!({ "rawBytes": b64.encode(c) }))
                    .collect::<Vec<_>>(),
            },
            "tlogEntries": [{
                "logIndex": set.payload.log_index.to_string(),
                "logId": { "keyId": b64.encode(log_id) },
                "kindVersion": { "kind": kind.kind, "version": kind.api_version },
                "integratedTime": set.payload.integrated_time.to_string(),
                "inclusionPromise": { "signedEntryTimestamp": set.signed_entry_timestamp },
                "canonicalizedBody": set.payload.body,
            }],
        },
        "messageSignature": {
            "messageDigest": {
                "algorithm": "SHA2_256",
                "digest": b64.encode(sha2::Sha256::digest(payload)),
            },
            "signature": signature,
        },
    });
    Ok(bundle.to_string())
}

/// cosign's `dev.sigstore.cosign/bundle` annotation.
#[derive(Deserialize)]
struct RekorBundle {
    #[serde(rename = "SignedEntryTimestamp")]
    signed_entry_timestamp: String,
    #[serde(rename = "Payload")]
    payload: RekorPayload,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RekorPayload {
    body: String,
    integrated_time: i64,
    log_index: i64,
    #[serde(rename = "logID")]
    log_id: String,
}

/// The kind and version of a Rekor entry body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryKind {
    kind: String,
    api_version: String,
}

/// The DER certificates of a PEM text.
fn pem_certificates(text: &str) -> Result<Vec<Vec<u8>>, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let end = rest[start..]
            .find(END)
            .ok_or("a PEM certificate has no END line")?
            + start
            + END.len();
        let cert = DerCertificate::from_pem(&rest[start..end]).map_err(|e| e.to_string())?;
        out.push(cert.as_bytes().to_vec());
        rest = &rest[end..];
    }
    if out.is_empty() {
        return Err("no PEM certificate".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_root_is_usable() {
        let trust = Trust::public_good();
        assert!(trust.shown.contains("public-good"));
    }

    #[test]
    fn identity_and_issuer_need_exactly_one_form_and_valid_regexps() {
        let root = |_: &str| std::path::PathBuf::from("/nonexistent");
        let config = |id: Option<&str>, id_re: Option<&str>, iss: Option<&str>| KeylessConfig {
            identity: id.map(Into::into),
            identity_regexp: id_re.map(Into::into),
            issuer: iss.map(Into::into),
            ..Default::default()
        };
        let err = |c: KeylessConfig| Keyless::new(&c, root).err().unwrap_or_default();
        assert!(err(config(None, None, Some("i"))).contains("needs `identity`"));
        assert!(err(config(Some("a"), Some("b"), Some("i"))).contains("not both"));
        assert!(err(config(None, Some("("), Some("i"))).contains("not a valid regular expression"));
        assert!(err(config(Some("a"), None, None)).contains("needs `issuer`"));
        let ok = Keyless::new(&config(None, Some("a.*z"), Some("i")), root).unwrap();
        assert!(ok.identity.matches("abcz"));
        assert!(
            !ok.identity.matches("xabcz"),
            "a regexp matches the whole value"
        );
        assert_eq!(ok.identity.to_string(), "/a.*z/");
        let missing = KeylessConfig {
            trusted_root: Some("root.json".into()),
            ..config(Some("a"), None, Some("i"))
        };
        assert!(err(missing).contains("cannot read the trusted root /nonexistent"));
    }

    #[test]
    fn a_malformed_root_is_refused() {
        let e = Trust::from_json("bad.json", "{\"mediaType\": 1}")
            .err()
            .unwrap();
        assert!(
            e.starts_with("bad.json is not a usable trusted root"),
            "{e}"
        );
    }
}
