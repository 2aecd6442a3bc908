//! AWS KMS keys (`awskms://[host:port]/{key-id|arn|alias/name}`), through the
//! official `aws-sdk-kms` and the standard AWS credential chain (environment,
//! profile, SSO, web identity, container and instance roles).
//!
//! The endpoint is `https://host:port` from the reference when it names one,
//! else the SDK's own resolution (`AWS_ENDPOINT_URL_KMS`, `AWS_ENDPOINT_URL`,
//! then the region's endpoint). Signing uses `MessageType=RAW` on the payload
//! (valid for messages up to 4 KiB; cosign payloads are ~200 bytes).

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, MessageType, SigningAlgorithmSpec};
use image_syncer_core::async_trait;
use tokio::sync::OnceCell;

use super::{KeyError, KeyProvider, PublicKey};

/// AWS allows RAW messages up to this size.
const RAW_LIMIT: usize = 4096;

pub struct AwsKms {
    endpoint: Option<String>,
    key_id: String,
    client: OnceCell<aws_sdk_kms::Client>,
    key: OnceCell<(PublicKey, SigningAlgorithmSpec)>,
}

impl AwsKms {
    pub fn new(endpoint: Option<String>, key_id: String) -> AwsKms {
        AwsKms {
            endpoint,
            key_id,
            client: OnceCell::new(),
            key: OnceCell::new(),
        }
    }

    async fn client(&self) -> &aws_sdk_kms::Client {
        self.client
            .get_or_init(|| async {
                let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                let mut config = aws_sdk_kms::config::Builder::from(&shared);
                if let Some(ep) = &self.endpoint {
                    config = config.endpoint_url(format!("https://{ep}"));
                }
                aws_sdk_kms::Client::from_conf(config.build())
            })
            .await
    }

    fn error<E: std::error::Error + 'static>(
        &self,
        what: &str,
        e: aws_sdk_kms::error::SdkError<E>,
    ) -> KeyError {
        use aws_sdk_kms::error::SdkError;
        let transient = matches!(
            e,
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
        ) || e
            .raw_response()
            .is_some_and(|r| r.status().is_server_error());
        // DisplayErrorContext gives the service's message without request details.
        let message = format!(
            "awskms {what} ({}): {}",
            self.key_id,
            aws_sdk_kms::error::DisplayErrorContext(&e)
        );
        if transient {
            KeyError::transient(message)
        } else {
            KeyError::config(message)
        }
    }

    async fn key(&self) -> Result<&(PublicKey, SigningAlgorithmSpec), KeyError> {
        self.key
            .get_or_try_init(|| async {
                let out = self
                    .client()
                    .await
                    .get_public_key()
                    .key_id(&self.key_id)
                    .send()
                    .await
                    .map_err(|e| self.error("GetPublicKey", e))?;
                let der = out
                    .public_key()
                    .ok_or_else(|| KeyError::config(format!("awskms {}: no public key returned", self.key_id)))?
                    .as_ref()
                    .to_vec();
                // Prefer what the key says it can do; fall back to its spec.
                let offered = out.signing_algorithms();
                let algorithm = if offered.contains(&SigningAlgorithmSpec::EcdsaSha256) {
                    SigningAlgorithmSpec::EcdsaSha256
                } else if offered.contains(&SigningAlgorithmSpec::RsassaPkcs1V15Sha256) {
                    SigningAlgorithmSpec::RsassaPkcs1V15Sha256
                } else {
                    match out.key_spec() {
                        Some(KeySpec::EccNistP256) => SigningAlgorithmSpec::EcdsaSha256,
                        Some(KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096) => {
                            SigningAlgorithmSpec::RsassaPkcs1V15Sha256
                        }
                        other => {
                            return Err(KeyError::config(format!(
                                "awskms {}: key spec {other:?} with algorithms {offered:?} cannot make cosign signatures (use an ECC_NIST_P256 or RSA SIGN_VERIFY key)",
                                self.key_id
                            )))
                        }
                    }
                };
                Ok((PublicKey::Der(der), algorithm))
            })
            .await
    }
}

#[async_trait]
impl KeyProvider for AwsKms {
    async fn public_key(&self) -> Result<PublicKey, KeyError> {
        Ok(self.key().await?.0.clone())
    }

    async fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, KeyError> {
        if payload.len() > RAW_LIMIT {
            return Err(KeyError::config(format!(
                "awskms: payload of {} bytes exceeds the 4096-byte limit of RAW signing",
                payload.len()
            )));
        }
        let algorithm = self.key().await?.1.clone();
        let out = self
            .client()
            .await
            .sign()
            .key_id(&self.key_id)
            .message(Blob::new(payload))
            .message_type(MessageType::Raw)
            .signing_algorithm(algorithm)
            .send()
            .await
            .map_err(|e| self.error("Sign", e))?;
        out.signature().map(|b| b.as_ref().to_vec()).ok_or_else(|| {
            KeyError::transient(format!(
                "awskms {}: Sign returned no signature",
                self.key_id
            ))
        })
    }
}
