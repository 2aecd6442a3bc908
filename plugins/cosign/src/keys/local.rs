//! Local keys: a PKCS#8 PEM private key file, cosign's encrypted `cosign.key`
//! (password from `COSIGN_PASSWORD`), or `env://VAR` holding either.

use image_syncer_core::async_trait;
use image_syncer_cosign_format::KeyRef;
use sigstore::crypto::signing_key::SigStoreKeyPair;
use sigstore::crypto::SigStoreSigner;

use super::{KeyError, KeyProvider, PublicKey};

pub struct LocalKey {
    signer: SigStoreSigner,
    public: PublicKey,
}

impl LocalKey {
    pub fn load(key: &KeyRef) -> Result<LocalKey, KeyError> {
        let (what, pem) = match key {
            KeyRef::File { path } => (
                path.clone(),
                std::fs::read_to_string(path).map_err(|e| {
                    KeyError::config(format!("{path}: cannot read the signing key: {e}"))
                })?,
            ),
            KeyRef::Env { var } => (
                format!("env://{var}"),
                std::env::var(var).map_err(|_| {
                    KeyError::config(format!(
                        "env://{var}: the environment variable {var} is not set"
                    ))
                })?,
            ),
            other => return Err(KeyError::config(format!("{other} is not a local key"))),
        };
        let password = std::env::var("COSIGN_PASSWORD").ok();
        Self::from_pem(&what, &pem, password.as_deref())
    }

    /// Parses PEM key material; `what` names it in errors, `password`
    /// decrypts cosign's encrypted keys.
    pub fn from_pem(what: &str, pem: &str, password: Option<&str>) -> Result<LocalKey, KeyError> {
        let label = pem
            .lines()
            .find_map(|l| {
                l.strip_prefix("-----BEGIN ")
                    .and_then(|l| l.strip_suffix("-----"))
            })
            .ok_or_else(|| KeyError::config(format!("{what}: not a PEM private key")))?;
        let pair = if label.contains("ENCRYPTED") {
            let password = password.ok_or_else(|| {
                KeyError::config(format!(
                    "{what}: the key is encrypted; set COSIGN_PASSWORD to its password"
                ))
            })?;
            SigStoreKeyPair::from_encrypted_pem(pem.as_bytes(), password.as_bytes()).map_err(
                |_| {
                    KeyError::config(format!(
                    "{what}: cannot decrypt the key (wrong COSIGN_PASSWORD, or not a cosign key)"
                ))
                },
            )?
        } else if label == "PRIVATE KEY" {
            SigStoreKeyPair::from_pem(pem.as_bytes())
                .map_err(|e| KeyError::config(format!("{what}: unsupported private key: {e}")))?
        } else if label == "EC PRIVATE KEY" || label == "RSA PRIVATE KEY" {
            return Err(KeyError::config(format!(
                "{what}: `{label}` (SEC1/PKCS#1) keys are not read; convert to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in KEY -out key.pem`"
            )));
        } else {
            return Err(KeyError::config(format!(
                "{what}: `{label}` is not a private key"
            )));
        };
        let signer = match &pair {
            SigStoreKeyPair::ECDSA(k) => k.to_sigstore_signer(),
            SigStoreKeyPair::RSA(_) => {
                pair.to_sigstore_signer(&sigstore::crypto::SigningScheme::RSA_PKCS1_SHA256(0))
            }
            SigStoreKeyPair::ED25519(_) => {
                pair.to_sigstore_signer(&sigstore::crypto::SigningScheme::ED25519)
            }
        }
        .map_err(|e| KeyError::config(format!("{what}: cannot use the key: {e}")))?;
        let public = pair
            .public_key_to_der()
            .map_err(|e| KeyError::config(format!("{what}: cannot derive the public key: {e}")))?;
        Ok(LocalKey {
            signer,
            public: PublicKey::Der(public),
        })
    }
}

#[async_trait]
impl KeyProvider for LocalKey {
    async fn public_key(&self) -> Result<PublicKey, KeyError> {
        Ok(self.public.clone())
    }

    async fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.signer
            .sign(payload)
            .map_err(|e| KeyError::config(format!("local key: signing failed: {e}")))
    }
}
