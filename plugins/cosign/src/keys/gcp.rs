//! GCP Cloud KMS keys
//! (`gcpkms://projects/P/locations/L/keyRings/R/cryptoKeys/K[/cryptoKeyVersions/V]`),
//! through the official `google-cloud-kms-v1` and Application Default
//! Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's ADC file, workload
//! identity, the metadata server).
//!
//! - Without a version, the newest ENABLED version is used.
//! - The public key comes from GetPublicKey; its CRC32C is checked.
//! - AsymmetricSign gets the SHA-256 digest of the payload with its CRC32C;
//!   the answer must confirm the digest CRC (`verifiedDigestCrc32c`), carry a
//!   signature whose CRC32C matches, and name the version asked for.
//! - `SYNCER_GCP_KMS_ENDPOINT` (for example `https://europe-west1-kms.googleapis.com`
//!   or a Private Service Connect address) replaces the default endpoint.

use google_cloud_kms_v1::client::KeyManagementService;
use google_cloud_kms_v1::model::crypto_key_version::CryptoKeyVersionState;
use google_cloud_kms_v1::model::Digest as KmsDigest;
use image_syncer_core::async_trait;
use image_syncer_core::stage::error_chain;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

use super::{KeyError, KeyProvider, PublicKey};

/// Endpoint override, for regional / private endpoints.
pub const ENDPOINT_ENV: &str = "SYNCER_GCP_KMS_ENDPOINT";

pub struct GcpKms {
    resource: String,
    client: OnceCell<KeyManagementService>,
    version: OnceCell<String>,
}

fn crc32c(data: &[u8]) -> i64 {
    crc32c::crc32c(data) as i64
}

impl GcpKms {
    pub fn new(resource: String) -> GcpKms {
        GcpKms {
            resource,
            client: OnceCell::new(),
            version: OnceCell::new(),
        }
    }

    fn error(&self, what: &str, e: google_cloud_kms_v1::Error) -> KeyError {
        let message = format!("gcpkms {what} ({}): {}", self.resource, error_chain(&e));
        let status = e.http_status_code();
        if e.is_timeout() || e.is_io() || status.is_some_and(|s| s >= 500 || s == 429) {
            KeyError::transient(message)
        } else {
            KeyError::config(message)
        }
    }

    async fn client(&self) -> Result<&KeyManagementService, KeyError> {
        self.client
            .get_or_try_init(|| async {
                let mut builder = KeyManagementService::builder();
                if let Ok(endpoint) = std::env::var(ENDPOINT_ENV) {
                    builder = builder.with_endpoint(endpoint);
                }
                builder.build().await.map_err(|e| {
                    KeyError::config(format!(
                        "gcpkms: cannot create the KMS client: {}",
                        error_chain(&e)
                    ))
                })
            })
            .await
    }

    /// The crypto key version to use: the one named, or the newest enabled.
    async fn version(&self) -> Result<&String, KeyError> {
        self.version
            .get_or_try_init(|| async {
                if self.resource.contains("/cryptoKeyVersions/") {
                    return Ok(self.resource.clone());
                }
                let client = self.client().await?;
                let mut newest: Option<(u64, String)> = None;
                let mut token = String::new();
                // Bounded: a key has at most a few thousand versions.
                for _ in 0..100 {
                    let page = client
                        .list_crypto_key_versions()
                        .set_parent(&self.resource)
                        .set_filter("state=ENABLED")
                        .set_page_token(token.clone())
                        .send()
                        .await
                        .map_err(|e| self.error("ListCryptoKeyVersions", e))?;
                    for v in page.crypto_key_versions {
                        if v.state != CryptoKeyVersionState::Enabled {
                            continue;
                        }
                        let number = v
                            .name
                            .rsplit('/')
                            .next()
                            .and_then(|n| n.parse::<u64>().ok())
                            .unwrap_or(0);
                        if newest.as_ref().is_none_or(|(n, _)| number > *n) {
                            newest = Some((number, v.name));
                        }
                    }
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    token = page.next_page_token;
                }
                newest.map(|(_, name)| name).ok_or_else(|| {
                    KeyError::config(format!(
                        "gcpkms {}: the key has no ENABLED version",
                        self.resource
                    ))
                })
            })
            .await
    }
}

#[async_trait]
impl KeyProvider for GcpKms {
    async fn public_key(&self) -> Result<PublicKey, KeyError> {
        let version = self.version().await?;
        let key = self
            .client()
            .await?
            .get_public_key()
            .set_name(version)
            .send()
            .await
            .map_err(|e| self.error("GetPublicKey", e))?;
        if let Some(expected) = key.pem_crc32c {
            if expected != crc32c(key.pem.as_bytes()) {
                return Err(KeyError::transient(format!(
                    "gcpkms GetPublicKey ({version}): the public key failed its CRC32C check (corrupted in transit)"
                )));
            }
        }
        Ok(PublicKey::Pem(key.pem))
    }

    async fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, KeyError> {
        let version = self.version().await?;
        let digest = Sha256::digest(payload).to_vec();
        let digest_crc = crc32c(&digest);
        let resp = self
            .client()
            .await?
            .asymmetric_sign()
            .set_name(version)
            .set_digest(KmsDigest::new().set_sha256(digest))
            .set_digest_crc32c(digest_crc)
            .send()
            .await
            .map_err(|e| self.error("AsymmetricSign", e))?;
        if !resp.verified_digest_crc32c {
            return Err(KeyError::transient(format!(
                "gcpkms AsymmetricSign ({version}): the service did not verify the digest CRC32C (corrupted in transit)"
            )));
        }
        if resp.signature_crc32c != Some(crc32c(&resp.signature)) {
            return Err(KeyError::transient(format!(
                "gcpkms AsymmetricSign ({version}): the signature failed its CRC32C check (corrupted in transit)"
            )));
        }
        if resp.name != *version {
            return Err(KeyError::transient(format!(
                "gcpkms AsymmetricSign: asked {version}, answered for `{}`",
                resp.name
            )));
        }
        Ok(resp.signature.to_vec())
    }
}
