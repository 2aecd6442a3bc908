//! A stand-in Sigstore instance for end-to-end tests of keyless signature
//! verification.
//!
//! [`Sigstore`] is **not** Sigstore: it runs no service and talks to no
//! network. It makes, fresh in memory, what Fulcio, the CT log and Rekor would
//! have made, in their exact formats, and a `trusted_root.json` naming its own
//! keys:
//!
//! - a root CA and a Fulcio-style intermediate CA (ECDSA P-384);
//! - leaf certificates as Fulcio issues them ([`Sigstore::issue`]): a P-256
//!   key, ten minutes of validity, the identity as SAN, the OIDC issuer in
//!   OIDs 1.3.6.1.4.1.57264.1.1 and .1.8, and an embedded SCT (RFC 6962)
//!   signed by the CT log key over the precertificate;
//! - Rekor v1 log entries signed by the Rekor key: cosign's classic `.sig`
//!   annotations with a `hashedrekord` entry and its SET
//!   ([`Sigstore::classic`]), and Sigstore bundles v0.3 of a DSSE envelope with
//!   a `dsse` entry, its SET, an inclusion proof and a signed checkpoint
//!   ([`Sigstore::bundle_dsse`]).
//!
//! Options make the broken variants negative tests need: [`LeafOptions`] for
//! certificates, [`EntryOptions`] for log entries. A second
//! [`Sigstore::new`] is an unrelated instance (a rogue CA, an unknown log).
//!
//! What it makes is accepted by `sigstore-verify` 0.15 and by sigstore-python
//! (see `tests/sigstore.rs`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use aws_lc_rs::signature::{
    EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING,
    ECDSA_P384_SHA384_ASN1_SIGNING,
};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CustomExtension, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyUsagePurpose, PublicKeyData,
    SerialNumber, SignatureAlgorithm,
};

/// The DSSE payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

const ORGANIZATION: &str = "sigstore.standin.invalid";
const FULCIO_URL: &str = "https://fulcio.standin.invalid";
const REKOR_HOST: &str = "rekor.standin.invalid";
const CT_LOG_URL: &str = "https://ctfe.standin.invalid/test";
const OIDC_URL: &str = "https://oauth2.standin.invalid/auth";

/// Fulcio's OIDC issuer extensions: .1.1 holds the raw bytes (deprecated),
/// .1.8 a DER UTF8String.
const OID_ISSUER_V1: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 1];
const OID_ISSUER_V2: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 8];
/// RFC 6962's embedded SCT list.
const OID_SCT_LIST: &[u64] = &[1, 3, 6, 1, 4, 1, 11129, 2, 4, 2];
const OID_KEY_USAGE: &[u64] = &[2, 5, 29, 15];
const OID_EXT_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
const OID_SUBJECT_KEY_ID: &[u64] = &[2, 5, 29, 14];
const OID_AUTHORITY_KEY_ID: &[u64] = &[2, 5, 29, 35];
const OID_SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];
/// DER of the OIDs id-kp-codeSigning and id-kp-emailProtection.
const DER_CODE_SIGNING: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
const DER_EMAIL_PROTECTION: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x04];

/// A stand-in Sigstore instance: a Fulcio-style CA (root and intermediate),
/// a CT log key and a Rekor key, all made in memory by [`Sigstore::new`].
///
/// Its keys and CA certificates are valid from a day before it was made
/// ([`Sigstore::valid_from`]); its trusted root says so. Every entry it logs
/// gets the next log index of the instance that signs it.
pub struct Sigstore {
    root: CertifiedIssuer<'static, EcKey>,
    intermediate: CertifiedIssuer<'static, EcKey>,
    /// The intermediate's subject key identifier (its leaves' authority key identifier).
    intermediate_key_id: Vec<u8>,
    ct: EcKey,
    rekor: EcKey,
    tree_id: u64,
    valid_from: u64,
    next_log_index: AtomicU64,
}

/// The identity a leaf certificate is issued to: what `--certificate-identity`
/// and `--certificate-oidc-issuer` match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The subject alternative name.
    pub san: San,
    /// The OIDC issuer, e.g. `https://accounts.google.com`.
    pub issuer: String,
}

/// A subject alternative name of a leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum San {
    /// An rfc822Name: an e-mail address (Google accounts, service accounts).
    Email(String),
    /// A URI (GitHub Actions workflows).
    Uri(String),
}

/// How a leaf certificate is issued; the default is what Fulcio issues.
#[derive(Clone, Copy, Debug)]
pub struct LeafOptions<'a> {
    /// Where the OIDC issuer is written.
    pub issuer_oids: IssuerOids,
    /// The embedded SCT.
    pub sct: SctMode,
    /// The extended key usage lists codeSigning (default), or only
    /// emailProtection when `false`.
    pub code_signing: bool,
    /// The validity window.
    pub validity: Validity,
    /// Issue with the CA of another instance (a rogue CA, not in this
    /// instance's trusted root): the leaf and its chain name that CA. The SCT
    /// is still this instance's CT log's, so only the chain is wrong.
    pub ca: Option<&'a Sigstore>,
}

/// Which of Fulcio's OIDC issuer extensions a leaf carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IssuerOids {
    /// 1.3.6.1.4.1.57264.1.1 (raw bytes) and .1.8 (DER UTF8String), as Fulcio
    /// has issued since 2022.
    #[default]
    Both,
    /// Only the deprecated .1.1, as older Fulcio certificates.
    LegacyOnly,
    /// Only .1.8.
    CurrentOnly,
}

/// The embedded SCT of a leaf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SctMode {
    /// Signed by the CT log key of the instance's trusted root.
    #[default]
    Valid,
    /// No SCT extension.
    Missing,
    /// Naming the instance's CT log but signed by another key.
    WrongKey,
}

/// The validity window of a leaf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Validity {
    /// Ten minutes from one minute ago, as Fulcio issues at signing time.
    #[default]
    Current,
    /// Ten minutes that ended an hour ago: expired before a log entry made now.
    Expired,
    /// From `.0` to `.1`, in seconds since the epoch (start no earlier than
    /// [`Sigstore::valid_from`], or the CA does not cover it).
    Between(u64, u64),
}

/// How a log entry is made; the default is what Rekor makes.
#[derive(Clone, Copy, Debug, Default)]
pub struct EntryOptions<'a> {
    /// The integrated time, in seconds since the epoch (default: now).
    pub integrated_time: Option<u64>,
    /// Log with another instance's Rekor key (a log the trusted root does not
    /// know): the log ID, SET and checkpoint are that log's.
    pub log: Option<&'a Sigstore>,
    /// A SET that does not verify: well-formed, by the right key, but over
    /// another integrated time than the entry's.
    pub corrupt_set: bool,
}

/// A leaf certificate and its ephemeral key, as Fulcio issues for one signature.
pub struct Leaf {
    key: EcKey,
    der: Vec<u8>,
    /// The issuing CA's certificates: intermediate, then root.
    chain: Vec<Vec<u8>>,
    not_before: u64,
    not_after: u64,
}

/// A classic cosign signature: the annotations of the layer `cosign sign` (v2)
/// writes into a `.sig` image.
#[derive(Clone, Debug)]
pub struct ClassicSignature {
    /// `dev.cosignproject.cosign/signature`: ECDSA-SHA256 (DER) over the payload, base64.
    pub signature_b64: String,
    /// `dev.sigstore.cosign/certificate`: the leaf, PEM.
    pub certificate_pem: String,
    /// `dev.sigstore.cosign/chain`: the intermediate and root, PEM.
    pub chain_pem: String,
    /// `dev.sigstore.cosign/bundle`: `{"SignedEntryTimestamp", "Payload": {"body",
    /// "integratedTime", "logIndex", "logID"}}` of the `hashedrekord` entry.
    pub bundle_json: String,
}

impl Default for LeafOptions<'_> {
    fn default() -> Self {
        LeafOptions {
            issuer_oids: IssuerOids::Both,
            sct: SctMode::Valid,
            code_signing: true,
            validity: Validity::Current,
            ca: None,
        }
    }
}

impl Identity {
    /// An e-mail identity.
    pub fn email(email: &str, issuer: &str) -> Identity {
        Identity {
            san: San::Email(email.into()),
            issuer: issuer.into(),
        }
    }

    /// A URI identity.
    pub fn uri(uri: &str, issuer: &str) -> Identity {
        Identity {
            san: San::Uri(uri.into()),
            issuer: issuer.into(),
        }
    }

    /// The SAN's value.
    pub fn name(&self) -> &str {
        match &self.san {
            San::Email(s) | San::Uri(s) => s,
        }
    }
}

impl Sigstore {
    /// Makes a new instance: fresh keys and CA certificates, unrelated to any
    /// other instance. Panics if the system's random source fails.
    pub fn new() -> Sigstore {
        let valid_from = now() - 86_400;
        let root_key = EcKey::p384();
        let mut params = ca_params("sigstore-standin", &root_key, valid_from);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = CertifiedIssuer::self_signed(params, root_key).expect("root CA certificate");

        let key = EcKey::p384();
        let intermediate_key_id = key_identifier(&key.spki());
        let mut params = ca_params("sigstore-standin-intermediate", &key, valid_from);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        params.use_authority_key_identifier_extension = true;
        let intermediate =
            CertifiedIssuer::signed_by(params, key, &root).expect("intermediate CA certificate");

        let mut tree_id = [0u8; 8];
        SystemRandom::new().fill(&mut tree_id).expect("random");
        Sigstore {
            root,
            intermediate,
            intermediate_key_id,
            ct: EcKey::p256(),
            rekor: EcKey::p256(),
            tree_id: u64::from_be_bytes(tree_id) >> 1,
            valid_from,
            next_log_index: AtomicU64::new(1),
        }
    }

    /// When the keys and CA certificates start being valid (a day before
    /// [`Sigstore::new`]), in seconds since the epoch.
    pub fn valid_from(&self) -> u64 {
        self.valid_from
    }

    /// The Rekor log ID: SHA-256 of the Rekor key's DER SubjectPublicKeyInfo.
    pub fn rekor_log_id(&self) -> [u8; 32] {
        self.rekor.key_id()
    }

    /// The Rekor key, DER SubjectPublicKeyInfo.
    pub fn rekor_public_key_der(&self) -> Vec<u8> {
        self.rekor.spki()
    }

    /// The CT log key, DER SubjectPublicKeyInfo.
    pub fn ct_public_key_der(&self) -> Vec<u8> {
        self.ct.spki()
    }

    /// The CA certificates, DER: intermediate, then root.
    pub fn ca_chain_der(&self) -> Vec<Vec<u8>> {
        vec![self.intermediate.der().to_vec(), self.root.der().to_vec()]
    }

    /// The trusted root (`trusted_root.json`, protobuf-specs'
    /// `TrustedRoot` v0.1) naming this instance's CA, Rekor and CT log.
    pub fn trusted_root_json(&self) -> String {
        serde_json::to_string_pretty(&self.trusted_root()).expect("JSON")
    }

    /// Writes [`Sigstore::trusted_root_json`] to `dir/trusted_root.json`.
    pub fn write_trusted_root(&self, dir: &Path) -> PathBuf {
        let path = dir.join("trusted_root.json");
        std::fs::write(&path, self.trusted_root_json()).expect("write trusted_root.json");
        path
    }

    /// sigstore-python's client trust configuration (`--trust-config`): the
    /// trusted root and a signing configuration v0.2 naming this instance's
    /// (unreachable) services.
    pub fn trust_config_json(&self) -> String {
        let start = crate::token::rfc3339(self.valid_from);
        let service = |url: &str| {
            serde_json::json!([{
                "url": url,
                "majorApiVersion": 1,
                "validFor": {"start": start},
                "operator": ORGANIZATION,
            }])
        };
        let config = serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
            "trustedRoot": self.trusted_root(),
            "signingConfig": {
                "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
                "caUrls": service(FULCIO_URL),
                "oidcUrls": service(OIDC_URL),
                "rekorTlogUrls": service(&format!("https://{REKOR_HOST}")),
                "tsaUrls": [],
                "rekorTlogConfig": {"selector": "ANY"},
                "tsaConfig": {"selector": "ANY"},
            },
        });
        serde_json::to_string_pretty(&config).expect("JSON")
    }

    /// Writes [`Sigstore::trust_config_json`] to `dir/trust_config.json`.
    pub fn write_trust_config(&self, dir: &Path) -> PathBuf {
        let path = dir.join("trust_config.json");
        std::fs::write(&path, self.trust_config_json()).expect("write trust_config.json");
        path
    }

    fn trusted_root(&self) -> serde_json::Value {
        let start = crate::token::rfc3339(self.valid_from);
        let log = |url: String, key: &EcKey| {
            serde_json::json!({
                "baseUrl": url,
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": b64(&key.spki()),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": start},
                },
                "logId": {"keyId": b64(&key.key_id())},
            })
        };
        let certificates: Vec<_> = self
            .ca_chain_der()
            .iter()
            .map(|der| serde_json::json!({"rawBytes": b64(der)}))
            .collect();
        serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log(format!("https://{REKOR_HOST}"), &self.rekor)],
            "certificateAuthorities": [{
                "subject": {"organization": ORGANIZATION, "commonName": "sigstore-standin"},
                "uri": FULCIO_URL,
                "certChain": {"certificates": certificates},
                "validFor": {"start": start},
            }],
            "ctlogs": [log(CT_LOG_URL.into(), &self.ct)],
            "timestampAuthorities": [],
        })
    }

    /// Issues a leaf certificate as Fulcio does ([`LeafOptions::default`]).
    pub fn issue(&self, identity: &Identity) -> Leaf {
        self.issue_with(identity, &LeafOptions::default())
    }

    /// Issues a leaf certificate with `options`.
    ///
    /// As Fulcio: the TBSCertificate is made without the SCT extension (the
    /// precertificate's, less its poison extension), the SCT is signed over
    /// it, and the certificate is issued with the same serial, validity,
    /// subject, key and extensions plus the SCT list last. Removing that
    /// extension from the certificate's TBS gives back the signed TBS.
    pub fn issue_with(&self, identity: &Identity, options: &LeafOptions<'_>) -> Leaf {
        let ca = options.ca.unwrap_or(self);
        let key = EcKey::p256();
        let now = now();
        let (not_before, not_after) = match options.validity {
            Validity::Current => (now - 60, now + 540),
            Validity::Expired => (now - 4_200, now - 3_600),
            Validity::Between(from, to) => (from, to),
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.serial_number = Some(random_serial());
        params.not_before = datetime(not_before);
        params.not_after = datetime(not_after);
        params.custom_extensions = leaf_extensions(identity, options, &key, ca);
        let precertificate = params
            .signed_by(&key, &ca.intermediate)
            .expect("leaf certificate");

        let wrong_key;
        let signer = match options.sct {
            SctMode::Missing => None,
            SctMode::Valid => Some(&self.ct),
            SctMode::WrongKey => {
                wrong_key = EcKey::p256();
                Some(&wrong_key)
            }
        };
        let der = match signer {
            None => precertificate.der().to_vec(),
            Some(signer) => {
                let list = sct_list(
                    tbs_certificate(precertificate.der()),
                    &ca.intermediate.key().key_id(),
                    not_before * 1000,
                    &self.ct.key_id(),
                    signer,
                );
                params
                    .custom_extensions
                    .push(CustomExtension::from_oid_content(OID_SCT_LIST, list));
                params
                    .signed_by(&key, &ca.intermediate)
                    .expect("leaf certificate")
                    .der()
                    .to_vec()
            }
        };
        Leaf {
            key,
            der,
            chain: ca.ca_chain_der(),
            not_before,
            not_after,
        }
    }

    /// A classic cosign signature of `payload` (cosign's simple signing JSON)
    /// by `leaf`, logged now in this instance's Rekor.
    pub fn classic(&self, leaf: &Leaf, payload: &[u8]) -> ClassicSignature {
        self.classic_with(leaf, payload, &EntryOptions::default())
    }

    /// A classic cosign signature, logged with `options`.
    pub fn classic_with(
        &self,
        leaf: &Leaf,
        payload: &[u8],
        options: &EntryOptions<'_>,
    ) -> ClassicSignature {
        let signature_b64 = b64(&leaf.sign(payload));
        let certificate_pem = leaf.pem();
        // Rekor's canonical hashedrekord v0.0.1 body (keys sorted, no spaces;
        // the values are hex and base64, which JSON needs not escape).
        let body = format!(
            r#"{{"apiVersion":"0.0.1","kind":"hashedrekord","spec":{{"data":{{"hash":{{"algorithm":"sha256","value":"{}"}}}},"signature":{{"content":"{}","publicKey":{{"content":"{}"}}}}}}}}"#,
            hex::encode(sha256(payload)),
            signature_b64,
            b64(certificate_pem.as_bytes()),
        );
        let entry = self.log_entry(body.into_bytes(), options);
        // cosign's RekorBundle, in its field order.
        let bundle_json = format!(
            r#"{{"SignedEntryTimestamp":"{}","Payload":{{"body":"{}","integratedTime":{},"logIndex":{},"logID":"{}"}}}}"#,
            b64(&entry.set),
            b64(&entry.body),
            entry.integrated_time,
            entry.log_index,
            hex::encode(entry.log_id),
        );
        ClassicSignature {
            signature_b64,
            certificate_pem,
            chain_pem: leaf.chain_pem(),
            bundle_json,
        }
    }

    /// A Sigstore bundle v0.3 (JSON) of a DSSE envelope of `statement` (an
    /// in-toto statement) signed by `leaf`, logged now in this instance's
    /// Rekor: what cosign v3 attaches as an OCI referrer.
    pub fn bundle_dsse(&self, leaf: &Leaf, statement: &[u8]) -> Vec<u8> {
        self.bundle_dsse_with(leaf, statement, &EntryOptions::default())
    }

    /// A Sigstore bundle v0.3 of a DSSE envelope, logged with `options`.
    ///
    /// The log entry is Rekor v1's `dsse` v0.0.1 with an inclusion promise
    /// (SET) and an inclusion proof in a tree of one leaf, with a checkpoint
    /// signed by the log.
    pub fn bundle_dsse_with(
        &self,
        leaf: &Leaf,
        statement: &[u8],
        options: &EntryOptions<'_>,
    ) -> Vec<u8> {
        let signature_b64 = b64(&leaf.sign(&pae(IN_TOTO_PAYLOAD_TYPE, statement)));
        let payload_b64 = b64(statement);
        // The envelope as a client submits it: Rekor records its hash, which
        // no verifier can recompute (JSON is not canonical here).
        let envelope = format!(
            r#"{{"payload":"{payload_b64}","payloadType":"{IN_TOTO_PAYLOAD_TYPE}","signatures":[{{"sig":"{signature_b64}"}}]}}"#
        );
        // Rekor's canonical dsse v0.0.1 body.
        let body = format!(
            r#"{{"apiVersion":"0.0.1","kind":"dsse","spec":{{"envelopeHash":{{"algorithm":"sha256","value":"{}"}},"payloadHash":{{"algorithm":"sha256","value":"{}"}},"signatures":[{{"signature":"{}","verifier":"{}"}}]}}}}"#,
            hex::encode(sha256(envelope.as_bytes())),
            hex::encode(sha256(statement)),
            signature_b64,
            b64(leaf.pem().as_bytes()),
        );
        let entry = self.log_entry(body.into_bytes(), options);
        let bundle = serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "certificate": {"rawBytes": b64(leaf.der())},
                "tlogEntries": [{
                    "logIndex": entry.log_index.to_string(),
                    "logId": {"keyId": b64(&entry.log_id)},
                    "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                    "integratedTime": entry.integrated_time.to_string(),
                    "inclusionPromise": {"signedEntryTimestamp": b64(&entry.set)},
                    "inclusionProof": {
                        "logIndex": "0",
                        "rootHash": b64(&entry.root_hash),
                        "treeSize": "1",
                        "hashes": [],
                        "checkpoint": {"envelope": entry.checkpoint},
                    },
                    "canonicalizedBody": b64(&entry.body),
                }],
            },
            "dsseEnvelope": {
                "payload": payload_b64,
                "payloadType": IN_TOTO_PAYLOAD_TYPE,
                "signatures": [{"sig": signature_b64}],
            },
        });
        serde_json::to_vec(&bundle).expect("JSON")
    }

    /// The in-toto statement `cosign sign` (v3) signs for an image:
    /// `{"_type":"https://in-toto.io/Statement/v1","subject":[{"digest":{"sha256":"<hex>"}}],
    /// "predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{}}`,
    /// with a subject `name` when given (sigstore-python requires one).
    pub fn statement(digest_hex: &str, name: Option<&str>) -> Vec<u8> {
        let digest = serde_json::json!({ "sha256": digest_hex });
        let subject = match name {
            Some(name) => format!(
                r#"{{"name":{},"digest":{digest}}}"#,
                serde_json::json!(name)
            ),
            None => format!(r#"{{"digest":{digest}}}"#),
        };
        format!(
            r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{subject}],"predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{{}}}}"#
        )
        .into_bytes()
    }

    /// Logs `body` (a canonicalized Rekor entry body) in the Rekor of
    /// `options.log` (default: this instance).
    fn log_entry(&self, body: Vec<u8>, options: &EntryOptions<'_>) -> Entry {
        let log = options.log.unwrap_or(self);
        let integrated_time = options.integrated_time.unwrap_or_else(now);
        let log_index = log.next_log_index.fetch_add(1, Ordering::SeqCst);
        let log_id = log.rekor.key_id();
        let signed_time = integrated_time + u64::from(options.corrupt_set);
        let set = log
            .rekor
            .signature(set_payload(&body, signed_time, log_index, &log_id).as_bytes());
        // RFC 6962: the leaf hash, which is the root of a tree of one leaf.
        let root_hash = sha256(&[&[0u8][..], &body].concat());
        let checkpoint = log.checkpoint(&root_hash, 1);
        Entry {
            body,
            integrated_time,
            log_index,
            log_id,
            set,
            root_hash,
            checkpoint,
        }
    }

    /// A checkpoint (a signed note) of a tree of `size` leaves with root
    /// `root_hash`, as Rekor v1 signs it: origin `<host> - <tree ID>`, and a
    /// signature line naming the host (no spaces) with the first four bytes
    /// of the log ID and the ECDSA signature of the note's text.
    fn checkpoint(&self, root_hash: &[u8], size: u64) -> String {
        let note = format!(
            "{REKOR_HOST} - {}\n{size}\n{}\n",
            self.tree_id,
            b64(root_hash)
        );
        let mut signature = self.rekor.key_id()[..4].to_vec();
        signature.extend(self.rekor.signature(note.as_bytes()));
        format!("{note}\n\u{2014} {REKOR_HOST} {}\n", b64(&signature))
    }
}

impl Default for Sigstore {
    fn default() -> Self {
        Sigstore::new()
    }
}

impl fmt::Debug for Sigstore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sigstore")
            .field("rekor_log_id", &hex::encode(self.rekor.key_id()))
            .field("ct_log_id", &hex::encode(self.ct.key_id()))
            .finish_non_exhaustive()
    }
}

impl Leaf {
    /// The certificate, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate, PEM.
    pub fn pem(&self) -> String {
        pem(&self.der)
    }

    /// The issuing CA's certificates (intermediate, then root), DER.
    pub fn chain_der(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The issuing CA's certificates (intermediate, then root), PEM, as
    /// cosign's `dev.sigstore.cosign/chain` annotation.
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(|der| pem(der)).collect()
    }

    /// The leaf's public key, DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.spki()
    }

    /// ECDSA P-256 SHA-256 signature (DER) of `data` by the leaf's key.
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        self.key.signature(data)
    }

    /// Start of validity, seconds since the epoch.
    pub fn not_before(&self) -> u64 {
        self.not_before
    }

    /// End of validity, seconds since the epoch.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaf")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A Rekor v1 log entry.
struct Entry {
    body: Vec<u8>,
    integrated_time: u64,
    log_index: u64,
    log_id: [u8; 32],
    /// The signed entry timestamp.
    set: Vec<u8>,
    root_hash: [u8; 32],
    checkpoint: String,
}

/// An ECDSA key made in memory; rcgen signs certificates with it.
struct EcKey {
    pair: EcdsaKeyPair,
    alg: &'static SignatureAlgorithm,
}

impl EcKey {
    /// A P-256 key (ECDSA with SHA-256): CT log, Rekor, leaves.
    fn p256() -> EcKey {
        EcKey::generate(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )
    }

    /// A P-384 key (ECDSA with SHA-384): the CAs, as Fulcio's.
    fn p384() -> EcKey {
        EcKey::generate(
            &ECDSA_P384_SHA384_ASN1_SIGNING,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        )
    }

    fn generate(
        alg: &'static EcdsaSigningAlgorithm,
        certificate_alg: &'static SignatureAlgorithm,
    ) -> EcKey {
        EcKey {
            pair: EcdsaKeyPair::generate(alg).expect("ECDSA key"),
            alg: certificate_alg,
        }
    }

    /// The DER SubjectPublicKeyInfo.
    fn spki(&self) -> Vec<u8> {
        self.subject_public_key_info()
    }

    /// SHA-256 of the SubjectPublicKeyInfo: a log's ID, a CT issuer key hash.
    fn key_id(&self) -> [u8; 32] {
        sha256(&self.spki())
    }

    /// ECDSA signature (DER) over SHA-256 (P-256) or SHA-384 (P-384) of `data`.
    fn signature(&self, data: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&SystemRandom::new(), data)
            .expect("ECDSA signature")
            .as_ref()
            .to_vec()
    }
}

impl PublicKeyData for EcKey {
    fn der_bytes(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

impl rcgen::SigningKey for EcKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.signature(msg))
    }
}

/// Parameters of a CA certificate: ten years from `not_before`, keyCertSign
/// and cRLSign, subject `O=<ORGANIZATION>, CN=<common_name>`.
fn ca_params(common_name: &str, key: &EcKey, not_before: u64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for (ty, value) in [
        (DnType::OrganizationName, ORGANIZATION),
        (DnType::CommonName, common_name),
    ] {
        let value = rcgen::string::PrintableString::try_from(value).expect("printable");
        params
            .distinguished_name
            .push(ty, DnValue::PrintableString(value));
    }
    params.serial_number = Some(random_serial());
    params.not_before = datetime(not_before);
    params.not_after = datetime(not_before + 10 * 365 * 86_400);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(&key.spki()));
    params
}

/// A leaf's extensions but the SCT list, in Fulcio's order: key usage,
/// extended key usage, subject and authority key identifiers, SAN, OIDC issuer.
fn leaf_extensions(
    identity: &Identity,
    options: &LeafOptions<'_>,
    key: &EcKey,
    ca: &Sigstore,
) -> Vec<CustomExtension> {
    let extension = |oid: &[u64], critical: bool, content: Vec<u8>| {
        let mut extension = CustomExtension::from_oid_content(oid, content);
        extension.set_criticality(critical);
        extension
    };
    let usage = if options.code_signing {
        DER_CODE_SIGNING
    } else {
        DER_EMAIL_PROTECTION
    };
    let san = match &identity.san {
        San::Email(email) => tlv(0x81, email.as_bytes()),
        San::Uri(uri) => tlv(0x86, uri.as_bytes()),
    };
    let mut extensions = vec![
        // digitalSignature (bit 0): a BIT STRING with 7 unused bits.
        extension(OID_KEY_USAGE, true, vec![0x03, 0x02, 0x07, 0x80]),
        extension(OID_EXT_KEY_USAGE, false, tlv(0x30, usage)),
        extension(
            OID_SUBJECT_KEY_ID,
            false,
            tlv(0x04, &key_identifier(&key.spki())),
        ),
        extension(
            OID_AUTHORITY_KEY_ID,
            false,
            tlv(0x30, &tlv(0x80, &ca.intermediate_key_id)),
        ),
        // Critical: the subject is empty.
        extension(OID_SUBJECT_ALT_NAME, true, tlv(0x30, &san)),
    ];
    let issuer = identity.issuer.as_bytes();
    if options.issuer_oids != IssuerOids::CurrentOnly {
        extensions.push(extension(OID_ISSUER_V1, false, issuer.to_vec()));
    }
    if options.issuer_oids != IssuerOids::LegacyOnly {
        extensions.push(extension(OID_ISSUER_V2, false, tlv(0x0c, issuer)));
    }
    extensions
}

/// The content of the embedded SCT list extension (RFC 6962 3.3): an OCTET
/// STRING holding a SignedCertificateTimestampList of one v1 SCT for the
/// precertificate `tbs` issued by the CA whose SPKI hashes to
/// `issuer_key_hash`, naming the log `log_id` and signed by `signer`.
fn sct_list(
    tbs: &[u8],
    issuer_key_hash: &[u8; 32],
    timestamp_ms: u64,
    log_id: &[u8; 32],
    signer: &EcKey,
) -> Vec<u8> {
    // digitally-signed struct: sct_version v1, signature_type
    // certificate_timestamp, timestamp, entry_type precert_entry, PreCert,
    // no extensions.
    let mut signed = vec![0, 0];
    signed.extend(timestamp_ms.to_be_bytes());
    signed.extend([0, 1]);
    signed.extend(issuer_key_hash);
    signed.extend(&(tbs.len() as u32).to_be_bytes()[1..]);
    signed.extend(tbs);
    signed.extend([0, 0]);
    let signature = signer.signature(&signed);

    let mut sct = vec![0];
    sct.extend(log_id);
    sct.extend(timestamp_ms.to_be_bytes());
    sct.extend([0, 0]);
    // SignatureAndHashAlgorithm: sha256 (4), ecdsa (3).
    sct.extend([4, 3]);
    sct.extend((signature.len() as u16).to_be_bytes());
    sct.extend(signature);

    let mut list = ((sct.len() + 2) as u16).to_be_bytes().to_vec();
    list.extend((sct.len() as u16).to_be_bytes());
    list.extend(sct);
    tlv(0x04, &list)
}

/// The RFC 8785 canonical JSON of a SET's payload: `{body, integratedTime,
/// logID, logIndex}`, keys sorted, no whitespace (the values are base64, hex
/// and integers, which JSON needs not escape).
fn set_payload(body: &[u8], integrated_time: u64, log_index: u64, log_id: &[u8; 32]) -> String {
    format!(
        r#"{{"body":"{}","integratedTime":{integrated_time},"logID":"{}","logIndex":{log_index}}}"#,
        b64(body),
        hex::encode(log_id)
    )
}

/// DSSE's pre-authentication encoding.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend(payload);
    out
}

/// The TBSCertificate of a DER certificate (the first element of its SEQUENCE).
fn tbs_certificate(certificate: &[u8]) -> &[u8] {
    let (header, _) = der_header(certificate);
    let inner = &certificate[header..];
    let (header, length) = der_header(inner);
    &inner[..header + length]
}

/// The lengths of the header and of the content of the DER element at the
/// start of `der`.
fn der_header(der: &[u8]) -> (usize, usize) {
    match der[1] {
        short @ 0..=0x7f => (2, usize::from(short)),
        long => {
            let n = usize::from(long & 0x7f);
            let length = der[2..2 + n]
                .iter()
                .fold(0, |acc, b| acc << 8 | usize::from(*b));
            (2 + n, length)
        }
    }
}

/// A DER element: `tag`, the length, `content`.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match u8::try_from(content.len()) {
        Ok(n) if n < 0x80 => out.push(n),
        _ => {
            let length = content.len().to_be_bytes();
            let skip = length.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (length.len() - skip) as u8);
            out.extend(&length[skip..]);
        }
    }
    out.extend(content);
    out
}

/// A key identifier: the first 20 bytes of SHA-256 of the SubjectPublicKeyInfo.
fn key_identifier(spki: &[u8]) -> Vec<u8> {
    sha256(spki)[..20].to_vec()
}

/// 20 random bytes, positive.
fn random_serial() -> SerialNumber {
    let mut serial = [0u8; 20];
    SystemRandom::new().fill(&mut serial).expect("random");
    serial[0] &= 0x7f;
    SerialNumber::from_slice(&serial)
}

fn datetime(secs: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs as i64).expect("time")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    digest(&SHA256, data).as_ref().try_into().expect("32 bytes")
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn pem(der: &[u8]) -> String {
    let body = b64(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    //! What an independent parser can check: certificates and SCTs are read
    //! with `x509-cert`, signatures checked with the public keys only.

    use std::collections::BTreeMap;

    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1};
    use x509_cert::der::{Any, Decode, Encode, Tagged as _};
    use x509_cert::ext::pkix::sct::SignedCertificateTimestampList;
    use x509_cert::ext::Extension;
    use x509_cert::Certificate;

    use super::*;

    const SCT_LIST: &str = "1.3.6.1.4.1.11129.2.4.2";

    fn identity() -> Identity {
        Identity::email("signer@example.com", "https://accounts.google.com")
    }

    fn parse(der: &[u8]) -> Certificate {
        Certificate::from_der(der).expect("an X.509 certificate")
    }

    fn extensions(certificate: &Certificate) -> Vec<Extension> {
        certificate
            .tbs_certificate()
            .extensions()
            .expect("extensions")
            .to_vec()
    }

    fn extension(certificate: &Certificate, oid: &str) -> Option<Extension> {
        extensions(certificate)
            .into_iter()
            .find(|e| e.extn_id.to_string() == oid)
    }

    fn spki_der(certificate: &Certificate) -> Vec<u8> {
        let spki = certificate.tbs_certificate().subject_public_key_info();
        spki.to_der().expect("DER")
    }

    fn verifies(spki: &[u8], message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, spki)
            .verify(message, signature)
            .is_ok()
    }

    fn unb64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .expect("base64")
    }

    /// Checks the embedded SCT as a CT verifier does: the certificate's TBS
    /// with the SCT list extension removed, the issuer key hash of the
    /// issuing CA's SPKI, RFC 6962's signed struct, the CT key.
    fn check_sct(sigstore: &Sigstore, leaf: &Leaf) -> Result<(), String> {
        let certificate = parse(leaf.der());
        let list = extension(&certificate, SCT_LIST).ok_or("no SCT list")?;
        let list = SignedCertificateTimestampList::from_der(list.extn_value.as_bytes())
            .map_err(|e| e.to_string())?;
        let scts = list.parse_timestamps().map_err(|e| format!("{e:?}"))?;
        let [sct] = scts.as_slice() else {
            return Err(format!("{} SCTs", scts.len()));
        };
        let sct = sct.parse_timestamp().map_err(|e| format!("{e:?}"))?;
        if sct.log_id.key_id != sha256(&sigstore.ct_public_key_der()) {
            return Err("the SCT names another log".into());
        }
        // The TBS without the SCT list, rebuilt from the parsed elements.
        let tbs = certificate.tbs_certificate().to_der().unwrap();
        let mut fields = Vec::<Any>::from_der(&tbs).unwrap();
        let wrapped = fields.last_mut().expect("[3] extensions");
        let kept: Vec<Extension> = Vec::<Extension>::from_der(wrapped.value())
            .unwrap()
            .into_iter()
            .filter(|e| e.extn_id.to_string() != SCT_LIST)
            .collect();
        *wrapped = Any::new(wrapped.tag(), kept.to_der().unwrap()).unwrap();
        let precert_tbs = fields.to_der().unwrap();

        let issuer = parse(&leaf.chain_der()[0]);
        let mut signed = vec![0, 0];
        signed.extend(sct.timestamp.to_be_bytes());
        signed.extend([0, 1]);
        signed.extend(sha256(&spki_der(&issuer)));
        signed.extend(&(precert_tbs.len() as u32).to_be_bytes()[1..]);
        signed.extend(&precert_tbs);
        signed.extend((sct.extensions.len() as u16).to_be_bytes());
        signed.extend(sct.extensions.as_slice());
        let signature = sct.signature.signature.as_slice();
        if verifies(&sigstore.ct_public_key_der(), &signed, signature) {
            Ok(())
        } else {
            Err("the SCT signature does not verify".into())
        }
    }

    #[test]
    fn a_leaf_is_shaped_as_fulcio_issues_it() {
        let sigstore = Sigstore::new();
        let leaf = sigstore.issue(&identity());
        let certificate = parse(leaf.der());
        let tbs = certificate.tbs_certificate();
        assert!(tbs.subject().is_empty(), "Fulcio leaves have no subject");

        let layout: Vec<(String, bool)> = extensions(&certificate)
            .iter()
            .map(|e| (e.extn_id.to_string(), e.critical))
            .collect();
        let expected = [
            ("2.5.29.15", true),
            ("2.5.29.37", false),
            ("2.5.29.14", false),
            ("2.5.29.35", false),
            ("2.5.29.17", true),
            ("1.3.6.1.4.1.57264.1.1", false),
            ("1.3.6.1.4.1.57264.1.8", false),
            (SCT_LIST, false),
        ]
        .map(|(oid, critical)| (oid.to_string(), critical));
        assert_eq!(layout, expected);

        let value = |oid: &str| {
            extension(&certificate, oid)
                .unwrap()
                .extn_value
                .into_bytes()
                .to_vec()
        };
        let issuer = b"https://accounts.google.com";
        assert_eq!(value("1.3.6.1.4.1.57264.1.1"), issuer);
        assert_eq!(value("1.3.6.1.4.1.57264.1.8"), tlv(0x0c, issuer));
        assert_eq!(
            value("2.5.29.17"),
            tlv(0x30, &tlv(0x81, b"signer@example.com"))
        );
        assert_eq!(value("2.5.29.37"), tlv(0x30, DER_CODE_SIGNING));

        // Signed by the intermediate of the trusted root, which its AKI names.
        let intermediate = parse(&sigstore.ca_chain_der()[0]);
        assert_eq!(leaf.chain_der(), sigstore.ca_chain_der());
        assert_eq!(tbs.issuer(), intermediate.tbs_certificate().subject());
        let ski = extension(&intermediate, "2.5.29.14").unwrap().extn_value;
        assert_eq!(
            value("2.5.29.35"),
            tlv(0x30, &tlv(0x80, &ski.as_bytes()[2..]))
        );
        let signature = certificate.signature().raw_bytes();
        let verified = UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, spki_der(&intermediate))
            .verify(&tbs.to_der().unwrap(), signature);
        assert!(verified.is_ok(), "the intermediate's signature");
        assert_eq!(leaf.not_after() - leaf.not_before(), 600);
        assert!(leaf.not_before() <= now() && now() < leaf.not_after());
    }

    #[test]
    fn the_sct_verifies_over_the_certificate_without_it() {
        let sigstore = Sigstore::new();
        let leaf = sigstore.issue(&identity());
        assert_eq!(check_sct(&sigstore, &leaf), Ok(()));
        let uri = Identity::uri(
            "https://github.com/o/r/.github/workflows/release.yaml@refs/heads/main",
            "https://token.actions.githubusercontent.com",
        );
        assert_eq!(check_sct(&sigstore, &sigstore.issue(&uri)), Ok(()));

        let wrong_key = LeafOptions {
            sct: SctMode::WrongKey,
            ..LeafOptions::default()
        };
        let leaf = sigstore.issue_with(&identity(), &wrong_key);
        assert_eq!(
            check_sct(&sigstore, &leaf),
            Err("the SCT signature does not verify".into())
        );
        let missing = LeafOptions {
            sct: SctMode::Missing,
            ..LeafOptions::default()
        };
        let leaf = sigstore.issue_with(&identity(), &missing);
        assert_eq!(check_sct(&sigstore, &leaf), Err("no SCT list".into()));
    }

    #[test]
    fn leaf_options_change_what_they_name() {
        let sigstore = Sigstore::new();
        let oids = |options: LeafOptions| {
            let leaf = sigstore.issue_with(&identity(), &options);
            let certificate = parse(leaf.der());
            let has = |oid: &str| extension(&certificate, oid).is_some();
            (has("1.3.6.1.4.1.57264.1.1"), has("1.3.6.1.4.1.57264.1.8"))
        };
        let legacy = LeafOptions {
            issuer_oids: IssuerOids::LegacyOnly,
            ..LeafOptions::default()
        };
        assert_eq!(oids(legacy), (true, false));
        let current = LeafOptions {
            issuer_oids: IssuerOids::CurrentOnly,
            ..LeafOptions::default()
        };
        assert_eq!(oids(current), (false, true));

        let no_code_signing = LeafOptions {
            code_signing: false,
            ..LeafOptions::default()
        };
        let leaf = sigstore.issue_with(&identity(), &no_code_signing);
        let eku = extension(&parse(leaf.der()), "2.5.29.37").unwrap();
        assert_eq!(eku.extn_value.as_bytes(), tlv(0x30, DER_EMAIL_PROTECTION));

        let expired = LeafOptions {
            validity: Validity::Expired,
            ..LeafOptions::default()
        };
        let leaf = sigstore.issue_with(&identity(), &expired);
        assert!(leaf.not_after() + 3_000 < now());
        assert_eq!(check_sct(&sigstore, &leaf), Ok(()));

        // A rogue CA: the chain is the other instance's, the SCT still ours.
        let rogue = Sigstore::new();
        let options = LeafOptions {
            ca: Some(&rogue),
            ..LeafOptions::default()
        };
        let leaf = sigstore.issue_with(&identity(), &options);
        assert_eq!(leaf.chain_der(), rogue.ca_chain_der());
        assert_ne!(leaf.chain_der(), sigstore.ca_chain_der());
        assert_eq!(check_sct(&sigstore, &leaf), Ok(()));
    }

    /// The SET of a classic signature, checked over the RFC 8785 form of its
    /// `Payload` (keys sorted by a BTreeMap, serde_json's compact output).
    fn classic_set_verifies(log: &Sigstore, bundle_json: &str) -> bool {
        let bundle: serde_json::Value = serde_json::from_str(bundle_json).unwrap();
        let payload = bundle["Payload"].as_object().unwrap();
        let sorted: BTreeMap<_, _> = payload.iter().collect();
        let canonical = serde_json::to_string(&sorted).unwrap();
        let set = unb64(bundle["SignedEntryTimestamp"].as_str().unwrap());
        verifies(&log.rekor_public_key_der(), canonical.as_bytes(), &set)
    }

    #[test]
    fn a_classic_signature_has_cosigns_annotations_and_a_set() {
        let sigstore = Sigstore::new();
        let leaf = sigstore.issue(&identity());
        let payload = br#"{"critical":{"identity":{"docker-reference":"r.example/app"},"image":{"docker-manifest-digest":"sha256:00"},"type":"cosign container image signature"},"optional":null}"#;
        let classic = sigstore.classic(&leaf, payload);

        let signature = unb64(&classic.signature_b64);
        assert!(verifies(&leaf.public_key_der(), payload, &signature));
        assert_eq!(classic.certificate_pem, leaf.pem());
        assert_eq!(classic.chain_pem, leaf.chain_pem());
        assert_eq!(classic.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);

        assert!(classic_set_verifies(&sigstore, &classic.bundle_json));
        let bundle: serde_json::Value = serde_json::from_str(&classic.bundle_json).unwrap();
        let keys: Vec<_> = bundle["Payload"].as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4);
        assert!(classic
            .bundle_json
            .starts_with(r#"{"SignedEntryTimestamp":"#));
        assert_eq!(
            bundle["Payload"]["logID"],
            hex::encode(sha256(&sigstore.rekor_public_key_der()))
        );
        let integrated = bundle["Payload"]["integratedTime"].as_u64().unwrap();
        assert!(leaf.not_before() <= integrated && integrated <= leaf.not_after());
        let body = unb64(bundle["Payload"]["body"].as_str().unwrap());
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["kind"], "hashedrekord");
        assert_eq!(body["apiVersion"], "0.0.1");
        let spec = &body["spec"];
        assert_eq!(spec["data"]["hash"]["algorithm"], "sha256");
        assert_eq!(spec["data"]["hash"]["value"], hex::encode(sha256(payload)));
        assert_eq!(spec["signature"]["content"], classic.signature_b64);
        let pem = unb64(spec["signature"]["publicKey"]["content"].as_str().unwrap());
        assert_eq!(String::from_utf8(pem).unwrap(), leaf.pem());

        let corrupt = EntryOptions {
            corrupt_set: true,
            ..EntryOptions::default()
        };
        let classic = sigstore.classic_with(&leaf, payload, &corrupt);
        assert!(!classic_set_verifies(&sigstore, &classic.bundle_json));

        let other = Sigstore::new();
        let unknown = EntryOptions {
            log: Some(&other),
            integrated_time: Some(leaf.not_before() + 1),
            ..EntryOptions::default()
        };
        let classic = sigstore.classic_with(&leaf, payload, &unknown);
        assert!(classic_set_verifies(&other, &classic.bundle_json));
        assert!(!classic_set_verifies(&sigstore, &classic.bundle_json));
        assert!(classic
            .bundle_json
            .contains(&format!("\"integratedTime\":{},", leaf.not_before() + 1)));
    }

    #[test]
    fn a_dsse_bundle_has_a_set_a_proof_and_a_signed_checkpoint() {
        let sigstore = Sigstore::new();
        let leaf = sigstore.issue(&identity());
        let statement = Sigstore::statement(&"ab".repeat(32), Some("r.example/app"));
        let bundle = sigstore.bundle_dsse(&leaf, &statement);
        let bundle: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
        assert_eq!(
            bundle["mediaType"],
            "application/vnd.dev.sigstore.bundle.v0.3+json"
        );
        let material = &bundle["verificationMaterial"];
        assert_eq!(
            unb64(material["certificate"]["rawBytes"].as_str().unwrap()),
            leaf.der()
        );

        // The envelope: one signature over the PAE.
        let envelope = &bundle["dsseEnvelope"];
        assert_eq!(envelope["payloadType"], IN_TOTO_PAYLOAD_TYPE);
        assert_eq!(unb64(envelope["payload"].as_str().unwrap()), statement);
        let sig_b64 = envelope["signatures"][0]["sig"].as_str().unwrap();
        let mut pae = b"DSSEv1 28 application/vnd.in-toto+json ".to_vec();
        pae.extend(format!("{} ", statement.len()).as_bytes());
        pae.extend(&statement);
        assert!(verifies(&leaf.public_key_der(), &pae, &unb64(sig_b64)));

        // The entry: a dsse body naming the same signature and certificate.
        let entries = material["tlogEntries"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        let entry = &entries[0];
        assert_eq!(entry["kindVersion"]["kind"], "dsse");
        let body = unb64(entry["canonicalizedBody"].as_str().unwrap());
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let spec = &parsed["spec"];
        assert_eq!(
            spec["payloadHash"]["value"],
            hex::encode(sha256(&statement))
        );
        assert_eq!(spec["signatures"][0]["signature"], sig_b64);
        let verifier = unb64(spec["signatures"][0]["verifier"].as_str().unwrap());
        assert_eq!(verifier, leaf.pem().as_bytes());

        // The SET, over the same canonical form as classic's.
        let log_id = unb64(entry["logId"]["keyId"].as_str().unwrap());
        assert_eq!(log_id, sha256(&sigstore.rekor_public_key_der()));
        let canonical = format!(
            r#"{{"body":"{}","integratedTime":{},"logID":"{}","logIndex":{}}}"#,
            entry["canonicalizedBody"].as_str().unwrap(),
            entry["integratedTime"].as_str().unwrap(),
            hex::encode(&log_id),
            entry["logIndex"].as_str().unwrap(),
        );
        let set = unb64(
            entry["inclusionPromise"]["signedEntryTimestamp"]
                .as_str()
                .unwrap(),
        );
        assert!(verifies(
            &sigstore.rekor_public_key_der(),
            canonical.as_bytes(),
            &set
        ));

        // The proof: a tree of one leaf, whose hash is the root.
        let proof = &entry["inclusionProof"];
        assert_eq!(
            (&proof["logIndex"], &proof["treeSize"]),
            (&"0".into(), &"1".into())
        );
        let root = unb64(proof["rootHash"].as_str().unwrap());
        assert_eq!(root, sha256(&[&[0u8][..], &body].concat()));

        // The checkpoint: a signed note over the text before the blank line.
        let note = proof["checkpoint"]["envelope"].as_str().unwrap();
        let (text, signatures) = note.split_once("\n\n").unwrap();
        let text = format!("{text}\n");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            format!("rekor.standin.invalid - {}", sigstore.tree_id)
        );
        assert_eq!(&lines[1..], ["1", proof["rootHash"].as_str().unwrap()]);
        let line = signatures.strip_suffix('\n').unwrap();
        let [dash, name, blob] = line.split(' ').collect::<Vec<_>>()[..] else {
            panic!("signature line {line:?}");
        };
        assert_eq!((dash, name), ("\u{2014}", "rekor.standin.invalid"));
        let blob = unb64(blob);
        assert_eq!(blob[..4], log_id[..4]);
        assert!(verifies(
            &sigstore.rekor_public_key_der(),
            text.as_bytes(),
            &blob[4..]
        ));
    }

    #[test]
    fn the_trusted_root_names_the_instances_keys() {
        let sigstore = Sigstore::new();
        let root: serde_json::Value = serde_json::from_str(&sigstore.trusted_root_json()).unwrap();
        assert_eq!(
            root["mediaType"],
            "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
        );
        for (logs, key) in [
            ("tlogs", sigstore.rekor_public_key_der()),
            ("ctlogs", sigstore.ct_public_key_der()),
        ] {
            let log = &root[logs][0];
            assert_eq!(unb64(log["publicKey"]["rawBytes"].as_str().unwrap()), key);
            assert_eq!(log["publicKey"]["keyDetails"], "PKIX_ECDSA_P256_SHA_256");
            assert_eq!(log["hashAlgorithm"], "SHA2_256");
            assert_eq!(unb64(log["logId"]["keyId"].as_str().unwrap()), sha256(&key));
        }
        let ca = &root["certificateAuthorities"][0];
        assert!(ca["subject"]["commonName"].is_string());
        let chain: Vec<Certificate> = ca["certChain"]["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| parse(&unb64(c["rawBytes"].as_str().unwrap())))
            .collect();
        let [intermediate, top] = &chain[..] else {
            panic!("{} certificates", chain.len());
        };
        let (i, t) = (intermediate.tbs_certificate(), top.tbs_certificate());
        assert_eq!(t.issuer(), t.subject(), "the root is last and self-signed");
        assert_eq!(i.issuer(), t.subject());
        assert_ne!(i.subject(), t.subject());

        let config: serde_json::Value =
            serde_json::from_str(&sigstore.trust_config_json()).unwrap();
        assert_eq!(config["trustedRoot"], root);
        assert_eq!(
            config["signingConfig"]["mediaType"],
            "application/vnd.dev.sigstore.signingconfig.v0.2+json"
        );
        let other = Sigstore::new();
        assert_ne!(other.rekor_log_id(), sigstore.rekor_log_id());
        assert_ne!(other.ca_chain_der(), sigstore.ca_chain_der());
    }

    #[test]
    fn statements_are_cosigns() {
        let digest = "c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172";
        assert_eq!(
            String::from_utf8(Sigstore::statement(digest, None)).unwrap(),
            format!(
                r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"digest":{{"sha256":"{digest}"}}}}],"predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{{}}}}"#
            )
        );
        let named = Sigstore::statement(digest, Some("r.example/\"app\""));
        let named: serde_json::Value = serde_json::from_slice(&named).unwrap();
        assert_eq!(named["subject"][0]["name"], "r.example/\"app\"");
        assert_eq!(named["subject"][0]["digest"]["sha256"], digest);
    }

    #[test]
    fn der_lengths() {
        assert_eq!(tlv(0x04, &[7; 3]), [0x04, 3, 7, 7, 7]);
        assert_eq!(tlv(0x04, &[0; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(tlv(0x04, &[0; 0x1234])[..4], [0x04, 0x82, 0x12, 0x34]);
        let long = tlv(0x30, &[tlv(0x30, &[1; 300]), tlv(0x02, &[1])].concat());
        assert_eq!(tbs_certificate(&long), tlv(0x30, &[1; 300]));
    }
}
