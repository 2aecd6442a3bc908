//! Azure Key Vault keys (`azurekms://<vault>.vault.azure.net/<key>[/<version>]`),
//! through the official `azure_security_keyvault_keys` and `azure_identity`.
//!
//! Credentials, in the order cosign's Azure provider uses them:
//! - `AZURE_TENANT_ID` + `AZURE_CLIENT_ID` + `AZURE_CLIENT_SECRET`: a service principal;
//! - `AZURE_FEDERATED_TOKEN_FILE` (AKS workload identity);
//! - `AZURE_AUTH_METHOD=cli`: the Azure CLI's login;
//! - otherwise managed identity (App Service / Container Apps through
//!   `IDENTITY_ENDPOINT`, VMs through IMDS).
//!
//! Key Vault signs a digest and answers raw `r||s`; it is converted to DER.
//! The public key is the key version's JWK (EC P-256), turned into SPKI.
//! `SYNCER_AZURE_KEYVAULT_URL` replaces `https://<vault>` (private endpoints).

use std::sync::Arc;

use azure_core::credentials::{Secret as AzureSecret, TokenCredential};
use azure_identity::{
    ClientSecretCredential, DeveloperToolsCredential, ManagedIdentityCredential,
    WorkloadIdentityCredential,
};
use azure_security_keyvault_keys::models::{
    CurveName, KeyClientGetKeyOptions, KeyClientSignOptions, KeyType, SignParameters,
    SignatureAlgorithm,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use image_syncer_core::async_trait;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

use super::{KeyError, KeyProvider, PublicKey};

/// Endpoint override, for private endpoints.
pub const URL_ENV: &str = "SYNCER_AZURE_KEYVAULT_URL";

/// DER prefix of a P-256 SubjectPublicKeyInfo with an uncompressed point.
const P256_SPKI_PREFIX: [u8; 27] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
];

pub struct AzureKms {
    vault: String,
    key: String,
    version: Option<String>,
    client: OnceCell<KeyClient>,
    /// The public key and the version it belongs to (signing uses the same version).
    resolved: OnceCell<(PublicKey, Option<String>)>,
}

impl AzureKms {
    pub fn new(vault: &str, key: &str, version: Option<&str>) -> AzureKms {
        AzureKms {
            vault: vault.to_string(),
            key: key.to_string(),
            version: version.map(str::to_string),
            client: OnceCell::new(),
            resolved: OnceCell::new(),
        }
    }

    fn credential() -> azure_core::Result<Arc<dyn TokenCredential>> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(tenant), Some(client), Some(secret)) = (
            var("AZURE_TENANT_ID"),
            var("AZURE_CLIENT_ID"),
            var("AZURE_CLIENT_SECRET"),
        ) {
            return Ok(ClientSecretCredential::new(
                &tenant,
                client,
                AzureSecret::new(secret),
                None,
            )?);
        }
        if var("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            return Ok(WorkloadIdentityCredential::new(None)?);
        }
        if var("AZURE_AUTH_METHOD").as_deref() == Some("cli") {
            return Ok(DeveloperToolsCredential::new(None)?);
        }
        Ok(ManagedIdentityCredential::new(None)?)
    }

    fn error(&self, what: &str, e: azure_core::Error) -> KeyError {
        let message = format!("azurekms {what} ({}/{}): {e}", self.vault, self.key);
        let status = e.http_status().map(u16::from);
        if matches!(e.kind(), azure_core::error::ErrorKind::Io)
            || status.is_some_and(|s| s >= 500 || s == 429)
        {
            KeyError::transient(message)
        } else {
            KeyError::config(message)
        }
    }

    async fn client(&self) -> Result<&KeyClient, KeyError> {
        self.client
            .get_or_try_init(|| async {
                let url =
                    std::env::var(URL_ENV).unwrap_or_else(|_| format!("https://{}", self.vault));
                let credential = Self::credential().map_err(|e| {
                    KeyError::config(format!("azurekms: no usable credential: {e}"))
                })?;
                let options = KeyClientOptions {
                    // A private endpoint's host differs from the challenge's resource.
                    verify_challenge_resource: Some(std::env::var(URL_ENV).is_err()),
                    ..Default::default()
                };
                KeyClient::new(&url, credential, Some(options)).map_err(|e| {
                    KeyError::config(format!(
                        "azurekms: cannot create the Key Vault client for {url}: {e}"
                    ))
                })
            })
            .await
    }

    async fn resolve(&self) -> Result<&(PublicKey, Option<String>), KeyError> {
        self.resolved
            .get_or_try_init(|| async {
                let options = KeyClientGetKeyOptions {
                    key_version: self.version.clone(),
                    ..Default::default()
                };
                let key = self
                    .client()
                    .await?
                    .get_key(&self.key, Some(options))
                    .await
                    .map_err(|e| self.error("get key", e))?
                    .into_model()
                    .map_err(|e| self.error("get key", e))?;
                let jwk = key.key.ok_or_else(|| {
                    KeyError::config(format!(
                        "azurekms {}: the key has no public material",
                        self.key
                    ))
                })?;
                let ec = matches!(jwk.kty, Some(KeyType::Ec) | Some(KeyType::EcHsm));
                if !ec || jwk.crv != Some(CurveName::P256) {
                    return Err(KeyError::config(format!(
                        "azurekms {}: only EC P-256 keys are supported (key type {:?}, curve {:?})",
                        self.key, jwk.kty, jwk.crv
                    )));
                }
                let (x, y) = match (jwk.x, jwk.y) {
                    (Some(x), Some(y)) if x.len() <= 32 && y.len() <= 32 => (x, y),
                    _ => {
                        return Err(KeyError::config(format!(
                            "azurekms {}: malformed EC public key",
                            self.key
                        )))
                    }
                };
                let mut der = P256_SPKI_PREFIX.to_vec();
                der.extend(std::iter::repeat_n(0, 32 - x.len()));
                der.extend_from_slice(&x);
                der.extend(std::iter::repeat_n(0, 32 - y.len()));
                der.extend_from_slice(&y);
                // Sign with the version the public key came from.
                let version = jwk
                    .kid
                    .as_deref()
                    .and_then(|kid| {
                        kid.trim_end_matches('/')
                            .rsplit('/')
                            .next()
                            .map(str::to_string)
                    })
                    .filter(|v| v != &self.key)
                    .or_else(|| self.version.clone());
                Ok((PublicKey::Der(der), version))
            })
            .await
    }
}

/// Raw `r||s` (P-256: 64 bytes) to a DER `SEQUENCE { INTEGER r, INTEGER s }`.
pub fn raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() != 64 {
        return None;
    }
    fn integer(v: &[u8]) -> Vec<u8> {
        let mut v: &[u8] = v;
        while v.len() > 1 && v[0] == 0 {
            v = &v[1..];
        }
        let mut out = vec![0x02];
        if v[0] & 0x80 != 0 {
            out.push(v.len() as u8 + 1);
            out.push(0);
        } else {
            out.push(v.len() as u8);
        }
        out.extend_from_slice(v);
        out
    }
    let (r, s) = raw.split_at(32);
    let body = [integer(r), integer(s)].concat();
    let mut der = vec![0x30, body.len() as u8];
    der.extend(body);
    Some(der)
}

#[async_trait]
impl KeyProvider for AzureKms {
    async fn public_key(&self) -> Result<PublicKey, KeyError> {
        Ok(self.resolve().await?.0.clone())
    }

    async fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, KeyError> {
        let version = self.resolve().await?.1.clone();
        let params = SignParameters {
            algorithm: Some(SignatureAlgorithm::Es256),
            value: Some(Sha256::digest(payload).to_vec()),
        };
        let options = KeyClientSignOptions {
            key_version: version,
            ..Default::default()
        };
        let result = self
            .client()
            .await?
            .sign(
                &self.key,
                params.try_into().map_err(|e| self.error("sign", e))?,
                Some(options),
            )
            .await
            .map_err(|e| self.error("sign", e))?
            .into_model()
            .map_err(|e| self.error("sign", e))?;
        let raw = result.result.ok_or_else(|| {
            KeyError::transient(format!("azurekms {}: sign returned no signature", self.key))
        })?;
        raw_to_der(&raw).ok_or_else(|| {
            KeyError::transient(format!(
                "azurekms {}: sign returned {} bytes, not a P-256 r||s signature",
                self.key,
                raw.len()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::raw_to_der;

    #[test]
    fn raw_signature_to_der() {
        let mut raw = [0u8; 64];
        raw[0] = 0x80; // r needs a leading zero
        raw[31] = 1;
        raw[62] = 0x7f; // s has leading zeros to strip
        raw[63] = 2;
        let der = raw_to_der(&raw).unwrap();
        assert_eq!(&der[..5], &[0x30, 0x27, 0x02, 0x21, 0x00]);
        assert_eq!(&der[der.len() - 4..], &[0x02, 0x02, 0x7f, 0x02]);
        assert!(raw_to_der(&[0; 63]).is_none());
    }
}
