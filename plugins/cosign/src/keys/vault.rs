//! HashiCorp Vault transit keys (`hashivault://<key>`), as cosign defines them:
//! `VAULT_ADDR`, `VAULT_TOKEN`, mount `TRANSIT_SECRET_ENGINE_PATH` (default
//! `transit`). Signing sends the SHA-256 of the payload with `prehashed: true`
//! and strips the `vault:vN:` prefix; the public key is the newest version's.
//!
//! Vault has no official Rust client; its transit API is two plain HTTP calls.

use base64::Engine as _;
use image_syncer_core::async_trait;
use image_syncer_core::context::Secret;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{KeyError, KeyProvider, PublicKey};

pub struct Vault {
    addr: String,
    token: Secret,
    mount: String,
    key: String,
    http: reqwest::Client,
}

impl Vault {
    pub fn from_env(key: &str) -> Result<Vault, KeyError> {
        let addr = std::env::var("VAULT_ADDR")
            .map_err(|_| KeyError::config("hashivault: VAULT_ADDR is not set"))?;
        let token = std::env::var("VAULT_TOKEN")
            .map_err(|_| KeyError::config("hashivault: VAULT_TOKEN is not set"))?;
        let mount =
            std::env::var("TRANSIT_SECRET_ENGINE_PATH").unwrap_or_else(|_| "transit".into());
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            return Err(KeyError::config(format!(
                "hashivault: VAULT_ADDR `{addr}` must start with http:// or https://"
            )));
        }
        Ok(Vault {
            addr: addr.trim_end_matches('/').to_string(),
            token: Secret::new(token),
            mount: mount.trim_matches('/').to_string(),
            key: key.to_string(),
            http: reqwest::Client::new(),
        })
    }

    async fn call(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<serde_json::Value, KeyError> {
        let resp = req
            .header("X-Vault-Token", self.token.expose())
            .send()
            .await
            .map_err(|e| KeyError::transient(format!("hashivault {what}: {}", e.without_url())))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| KeyError::transient(format!("hashivault {what}: {}", e.without_url())))?;
        if !status.is_success() {
            let kind = if status.is_server_error() {
                KeyError::transient
            } else {
                KeyError::config
            };
            return Err(kind(format!(
                "hashivault {what}: HTTP {status}: {}",
                body.chars().take(300).collect::<String>()
            )));
        }
        serde_json::from_str(&body)
            .map_err(|e| KeyError::transient(format!("hashivault {what}: invalid response: {e}")))
    }
}

#[derive(Deserialize)]
struct KeyInfo {
    latest_version: u64,
    keys: std::collections::BTreeMap<String, KeyVersion>,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct KeyVersion {
    public_key: Option<String>,
}

#[async_trait]
impl KeyProvider for Vault {
    async fn public_key(&self) -> Result<PublicKey, KeyError> {
        let url = format!("{}/v1/{}/keys/{}", self.addr, self.mount, self.key);
        let v = self.call(self.http.get(url), "read key").await?;
        let info: KeyInfo = serde_json::from_value(v["data"].clone()).map_err(|e| {
            KeyError::config(format!("hashivault read key: unexpected response: {e}"))
        })?;
        if !(info.kind.starts_with("ecdsa-") || info.kind.starts_with("rsa-")) {
            return Err(KeyError::config(format!(
                "hashivault: key `{}` is of type {}, which cannot sign cosign signatures",
                self.key, info.kind
            )));
        }
        let pem = info
            .keys
            .get(&info.latest_version.to_string())
            .and_then(|k| k.public_key.clone())
            .ok_or_else(|| {
                KeyError::config("hashivault read key: no public key for the latest version")
            })?;
        Ok(PublicKey::Pem(pem))
    }

    async fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, KeyError> {
        let digest = Sha256::digest(payload);
        let b64 = base64::engine::general_purpose::STANDARD;
        let url = format!("{}/v1/{}/sign/{}/sha2-256", self.addr, self.mount, self.key);
        let body = serde_json::json!({
            "input": b64.encode(digest),
            "prehashed": true,
            "signature_algorithm": "pkcs1v15",
        });
        let v = self.call(self.http.post(url).json(&body), "sign").await?;
        let sig = v["data"]["signature"].as_str().ok_or_else(|| {
            KeyError::transient("hashivault sign: response has no data.signature")
        })?;
        // `vault:v<N>:<base64>`
        let encoded = sig
            .strip_prefix("vault:")
            .and_then(|s| s.split_once(':'))
            .map(|(_, b)| b)
            .ok_or_else(|| {
                KeyError::transient("hashivault sign: signature lacks the vault:vN: prefix")
            })?;
        b64.decode(encoded).map_err(|e| {
            KeyError::transient(format!("hashivault sign: signature is not base64: {e}"))
        })
    }
}
