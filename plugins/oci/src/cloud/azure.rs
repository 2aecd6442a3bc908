//! Azure Container Registry (`*.azurecr.io`, `.azurecr.cn`, `.azurecr.us`):
//! an Entra ID token, exchanged at the registry for a refresh token.
//!
//! 1. An Entra ID token for scope `https://containerregistry.azure.net/.default`,
//!    through `azure_identity`, from the first identity the environment has:
//!    - a service principal: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
//!      `AZURE_CLIENT_SECRET` (`ClientSecretCredential`);
//!    - workload identity: `AZURE_FEDERATED_TOKEN_FILE` with `AZURE_CLIENT_ID`
//!      and `AZURE_TENANT_ID`, as AKS's webhook sets them
//!      (`WorkloadIdentityCredential`);
//!    - else managed identity (`ManagedIdentityCredential`): App Service's
//!      endpoint (`IDENTITY_ENDPOINT`), else the instance metadata service
//!      (IMDS), a user-assigned one when `AZURE_CLIENT_ID` is set. IMDS is
//!      asked first, with a short timeout, whether it is there at all
//!      (as Azure's other SDKs do); when it is not, the run has no Azure
//!      identity.
//!
//!    `AZURE_AUTHORITY_HOST` moves the authority (`azure_identity` reads it;
//!    it must be HTTPS).
//! 2. `POST <endpoint>/oauth2/exchange` (`grant_type=access_token`,
//!    `service=<registry>`, `access_token=<Entra token>`; plain HTTP when the
//!    registry is reached so) gives a refresh token, the password of user
//!    `00000000-0000-0000-0000-000000000000`. The registry's own token flow
//!    then turns it into access tokens, as for any registry.

use std::error::Error as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azure_core::credentials::{Secret as AzureSecret, TokenCredential};
use azure_core::error::ErrorKind;
use azure_identity::{
    ClientSecretCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use image_syncer_core::context::Secret;
use image_syncer_core::stage::error_chain;

use super::{CloudCredential, CloudError, LoginTarget};
use crate::quirks::RegistryKind;

/// The Entra scope of a token ACR exchanges.
pub(crate) const SCOPE: &str = "https://containerregistry.azure.net/.default";
/// The user a refresh token is sent with.
pub(crate) const USERNAME: &str = "00000000-0000-0000-0000-000000000000";
/// Where an identity was looked for, for [`CloudError::NoIdentity`].
pub(crate) const LOOKED: &str = "service principal: AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET; workload identity: AZURE_FEDERATED_TOKEN_FILE; managed identity: IDENTITY_ENDPOINT, the instance metadata service";
/// The instance metadata service.
pub(crate) const IMDS: &str = "169.254.169.254:80";
/// How long IMDS may take to show it is there.
const IMDS_PROBE: Duration = Duration::from_secs(2);
/// The longest the Entra token may take (the SDK retries within it).
const ENTRA_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest the exchange may take, and its connection.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refresh token lasts when it does not say (ACR's: 3 hours).
const REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(3 * 3600);
/// The largest exchange answer read.
const MAX_ANSWER: usize = 64 * 1024;

fn provider() -> &'static str {
    RegistryKind::Acr.name()
}

fn refused(message: String, transient: bool) -> CloudError {
    CloudError::Refused {
        provider: provider(),
        message,
        transient,
    }
}

/// The identity the environment gives, in the order the module documents.
#[derive(Debug)]
enum Identity {
    ServicePrincipal {
        tenant: String,
        client_id: String,
        secret: Secret,
    },
    Workload {
        token_file: PathBuf,
    },
    /// `IDENTITY_ENDPOINT` or `MSI_ENDPOINT` names the endpoint (`env`),
    /// else IMDS.
    Managed {
        env: bool,
        client_id: Option<String>,
    },
}

impl Identity {
    fn find() -> Identity {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(tenant), Some(client_id), Some(secret)) = (
            var("AZURE_TENANT_ID"),
            var("AZURE_CLIENT_ID"),
            var("AZURE_CLIENT_SECRET"),
        ) {
            return Identity::ServicePrincipal {
                tenant,
                client_id,
                secret: Secret::new(secret),
            };
        }
        if let Some(file) = var("AZURE_FEDERATED_TOKEN_FILE") {
            return Identity::Workload {
                token_file: file.into(),
            };
        }
        Identity::Managed {
            env: var("IDENTITY_ENDPOINT").is_some() || var("MSI_ENDPOINT").is_some(),
            client_id: var("AZURE_CLIENT_ID"),
        }
    }

    /// What the messages call it (no secret).
    fn describe(&self) -> String {
        match self {
            Identity::ServicePrincipal { client_id, .. } => {
                format!("service principal {client_id}")
            }
            Identity::Workload { token_file } => {
                format!("workload identity, {}", token_file.display())
            }
            Identity::Managed {
                client_id: Some(id),
                ..
            } => format!("managed identity {id}"),
            Identity::Managed {
                client_id: None, ..
            } => "managed identity".to_string(),
        }
    }

    fn credential(&self) -> azure_core::Result<Arc<dyn TokenCredential>> {
        Ok(match self {
            Identity::ServicePrincipal {
                tenant,
                client_id,
                secret,
            } => ClientSecretCredential::new(
                tenant,
                client_id.clone(),
                AzureSecret::new(secret.expose().to_string()),
                None,
            )?,
            Identity::Workload { token_file } => {
                WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                    token_file_path: Some(token_file.clone()),
                    ..Default::default()
                }))?
            }
            Identity::Managed { client_id, .. } => {
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                    ..Default::default()
                }))?
            }
        })
    }
}

/// An ACR refresh token for `target`, from the run's Azure identity.
pub(super) async fn login(target: &LoginTarget<'_>) -> Result<CloudCredential, CloudError> {
    login_at(target, IMDS).await
}

/// [`login`], with the instance metadata service at `imds`.
pub(super) async fn login_at(
    target: &LoginTarget<'_>,
    imds: &str,
) -> Result<CloudCredential, CloudError> {
    let identity = Identity::find();
    tracing::debug!(registry = %target.host, identity = %identity.describe(), "Azure identity");
    if let Identity::Managed { env: false, .. } = identity {
        if !imds_answers(imds).await {
            return Err(CloudError::NoIdentity {
                provider: provider(),
                what: "Azure identity",
                looked: LOOKED,
            });
        }
    }
    let entra = entra_token(&identity).await?;
    let refresh = exchange(target, &entra).await?;
    let expires =
        jwt_expiry(&refresh).unwrap_or_else(|| SystemTime::now() + REFRESH_TOKEN_LIFETIME);
    Ok(CloudCredential {
        username: USERNAME.to_string(),
        password: Secret::new(refresh),
        expires: Some(expires),
    })
}

/// Whether the instance metadata service is at `address`: it answers a
/// request without its `Metadata: true` header with 400, as Azure
/// documents (or with a token, from a stand-in). Anything else is not it:
/// nothing listening, or an egress proxy denying the address (403), which
/// would otherwise turn "no Azure identity" (a public registry then read
/// anonymously) into a refusal.
async fn imds_answers(address: &str) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(IMDS_PROBE)
        .timeout(IMDS_PROBE)
        .build()
    else {
        return false;
    };
    let answered = client
        .get(format!("http://{address}/metadata/identity/oauth2/token"))
        .send()
        .await;
    let status = answered.as_ref().ok().map(|a| a.status());
    tracing::debug!(%address, status = ?status, "instance metadata service probe");
    status.is_some_and(|s| s == reqwest::StatusCode::BAD_REQUEST || s.is_success())
}

/// Step 1: the Entra ID token.
async fn entra_token(identity: &Identity) -> Result<String, CloudError> {
    let step = || format!("Entra token ({})", identity.describe());
    let credential = identity
        .credential()
        .map_err(|e| refused(format!("{}: {}", step(), azure_message(&e)), false))?;
    match tokio::time::timeout(ENTRA_TIMEOUT, credential.get_token(&[SCOPE], None)).await {
        Ok(Ok(token)) => Ok(token.token.secret().to_string()),
        Ok(Err(e)) => {
            let transient = azure_transient(&e);
            Err(refused(
                format!("{}: {}", step(), azure_message(&e)),
                transient,
            ))
        }
        Err(_) => Err(refused(
            format!("{}: no answer within {} s", step(), ENTRA_TIMEOUT.as_secs()),
            true,
        )),
    }
}

/// The innermost Azure error of `e`'s chain: the one that says what
/// happened (the outer ones add the SDK's troubleshooting links).
fn innermost(e: &azure_core::Error) -> &azure_core::Error {
    let mut found = e;
    let mut cur = e.source();
    // Bounded: error chains are short.
    for _ in 0..16 {
        let Some(s) = cur else { break };
        if let Some(a) = s.downcast_ref::<azure_core::Error>() {
            found = a;
        }
        cur = s.source();
    }
    found
}

/// What an Azure error says: the answer's status and error code, then the
/// message (Entra's `error_description`), without the SDK's links.
fn azure_message(e: &azure_core::Error) -> String {
    let inner = innermost(e);
    let text = error_chain(inner);
    let text = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("To troubleshoot"))
        .collect::<Vec<_>>()
        .join(" ");
    match inner.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => match error_code {
            Some(code) => format!("{} (error {code}): {text}", u16::from(*status)),
            None => format!("{}: {text}", u16::from(*status)),
        },
        ErrorKind::Io | ErrorKind::Connection => format!("cannot connect: {text}"),
        _ => text,
    }
}

fn azure_transient(e: &azure_core::Error) -> bool {
    let inner = innermost(e);
    match inner.kind() {
        ErrorKind::HttpResponse { status, .. } => {
            let s = u16::from(*status);
            s >= 500 || s == 429 || s == 408
        }
        ErrorKind::Io | ErrorKind::Connection => true,
        _ => false,
    }
}

/// Step 2: the registry's refresh token for `entra`.
async fn exchange(target: &LoginTarget<'_>, entra: &str) -> Result<String, CloudError> {
    let scheme = if target.insecure { "http" } else { "https" };
    let url = format!("{scheme}://{}/oauth2/exchange", target.endpoint);
    let step = format!("exchange at {url}");
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(EXCHANGE_TIMEOUT);
    // The registry's own connection trusts `--ca-file`: so does its exchange.
    for (file, pem) in target.ca_certificates {
        let certificate = reqwest::Certificate::from_pem(pem).map_err(|e| {
            refused(
                format!("{step}: CA file {file}: {}", error_chain(&e)),
                false,
            )
        })?;
        builder = builder.add_root_certificate(certificate);
    }
    let client = builder
        .build()
        .map_err(|e| refused(format!("{step}: {}", error_chain(&e)), false))?;
    let answer = client
        .post(&url)
        .form(&[
            ("grant_type", "access_token"),
            ("service", target.host),
            ("access_token", entra),
        ])
        .send()
        .await
        .map_err(|e| {
            // reqwest's errors name the URL, never the form.
            refused(format!("{step}: {}", error_chain(&e)), true)
        })?;
    let status = answer.status();
    let body = read_bounded(answer)
        .await
        .map_err(|e| refused(format!("{step}: {e}"), true))?;
    if !status.is_success() {
        let s = status.as_u16();
        let transient = s >= 500 || s == 429 || s == 408;
        let said = registry_errors(&body, entra);
        let message = match said {
            Some(said) => format!("{step}: refused ({status}): {said}"),
            None => format!("{step}: refused ({status})"),
        };
        return Err(refused(message, transient));
    }
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("refresh_token")?.as_str().map(str::to_string))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| refused(format!("{step}: the answer holds no refresh_token"), false))
}

/// The body of `answer`, at most [`MAX_ANSWER`] bytes.
async fn read_bounded(mut answer: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    // Bounded by MAX_ANSWER, and by the client's timeout.
    while let Some(chunk) = answer.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("the answer is larger than {MAX_ANSWER} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The `errors` of a registry's answer (`CODE: message; ...`), leaving out
/// any message that holds the token sent.
fn registry_errors(body: &[u8], sent: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let said: Vec<String> = v
        .get("errors")?
        .as_array()?
        .iter()
        .take(4)
        .map(|e| {
            let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
            let message = e
                .get("message")
                .and_then(|m| m.as_str())
                .filter(|m| !m.contains(sent))
                .unwrap_or("");
            match (code.is_empty(), message.is_empty()) {
                (false, false) => format!("{code}: {message}"),
                (false, true) => code.to_string(),
                _ => message.to_string(),
            }
        })
        .filter(|s| !s.is_empty() && !s.contains(sent))
        .collect();
    (!said.is_empty()).then(|| said.join("; "))
}

/// The `exp` claim of a JWT, if `token` is one.
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

#[cfg(test)]
mod tests {
    //! Against the testkit's stand-ins of Entra ID and of ACR's token
    //! exchange (in the fault proxy), each login in a process of its own
    //! ([`isolated`]); the refresh token is then tried on the registry's
    //! token server.

    use image_syncer_testkit::cloud::ACR_REFRESH_USER;
    use image_syncer_testkit::faults::{FaultProxy, Faults};
    use image_syncer_testkit::{AcrExchange, Entra, TokenServer};

    use super::*;
    use crate::cloud::isolated::{child, closed_port, run, Outcome};

    const HOST: &str = "myregistry.azurecr.io";

    /// Entra, the registry's token server and the exchange in front of a
    /// registry (none: the exchange does not reach it).
    struct Acr {
        entra: Entra,
        tokens: TokenServer,
        exchange: AcrExchange,
        front: FaultProxy,
    }

    impl Acr {
        fn start() -> Acr {
            let entra = Entra::start();
            let tokens = TokenServer::start("admin", "admin-password");
            let exchange = entra.acr_exchange(HOST, &tokens);
            let front = FaultProxy::start(
                &closed_port(),
                Faults {
                    acr_exchange: Some(exchange.clone()),
                    ..Default::default()
                },
            );
            Acr {
                entra,
                tokens,
                exchange,
                front,
            }
        }

        /// The environment of a run whose Entra is the stand-in.
        fn env(&self, more: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
            let mut env = vec![
                (ENDPOINT, self.front.host()),
                ("AZURE_AUTHORITY_HOST", self.entra.authority()),
                ("SSL_CERT_FILE", self.entra.ca_file().display().to_string()),
            ];
            env.extend(more.iter().cloned());
            env
        }

        fn service_principal(&self) -> Vec<(&'static str, String)> {
            self.env(&[
                ("AZURE_TENANT_ID", self.entra.tenant().to_string()),
                ("AZURE_CLIENT_ID", self.entra.client_id().to_string()),
                (
                    "AZURE_CLIENT_SECRET",
                    self.entra.client_secret().to_string(),
                ),
            ])
        }

        /// Checks `outcome` is the exchange's one refresh token, for user
        /// 00000000-…, lasting about 3 hours, and that the registry's token
        /// server grants push with it.
        fn assert_refresh_token(&self, outcome: Outcome) {
            let Outcome::Credential {
                username,
                password,
                expires_in,
            } = outcome
            else {
                panic!("no credential: {outcome:?}")
            };
            assert_eq!(username, "00000000-0000-0000-0000-000000000000");
            assert_eq!(ACR_REFRESH_USER, username);
            assert_eq!(
                self.exchange.refresh_tokens(),
                std::slice::from_ref(&password)
            );
            let expires_in = expires_in.expect("an expiry");
            assert!(
                (3 * 3600 - 60..=3 * 3600).contains(&expires_in),
                "{expires_in}"
            );
            let [asked] = &self.exchange.requests()[..] else {
                panic!("{:?}", self.exchange.requests())
            };
            assert_eq!(asked.grant_type.as_deref(), Some("access_token"));
            assert_eq!(asked.service.as_deref(), Some(HOST));
            assert!(asked.known_token && asked.granted, "{asked:?}");
            // The registry's token flow takes it, as docker login's would.
            let granted = image_syncer_testkit::block_on(async {
                reqwest::Client::new()
                    .get(format!(
                        "{}?service={}&scope=repository:team/app:pull,push",
                        self.tokens.url(),
                        TokenServer::SERVICE
                    ))
                    .basic_auth(&username, Some(&password))
                    .send()
                    .await
                    .unwrap()
                    .status()
            });
            assert_eq!(granted, 200);
        }
    }

    /// Where the child finds the registry's front (the exchange).
    const ENDPOINT: &str = "IMAGE_SYNCER_TEST_ACR_ENDPOINT";

    /// The login each test's child runs: to [`HOST`] through the front its
    /// environment names, over plain HTTP, with no instance metadata
    /// service (nothing listens where it is looked for).
    async fn login_from_env() -> Result<CloudCredential, CloudError> {
        let endpoint = std::env::var(ENDPOINT).expect("the parent names the front");
        login_at(
            &LoginTarget {
                host: HOST,
                endpoint: &endpoint,
                insecure: true,
                ca_certificates: &[],
            },
            &closed_port(),
        )
        .await
    }

    #[test]
    fn a_service_principal_gets_a_refresh_token() {
        if child(
            module_path!(),
            "a_service_principal_gets_a_refresh_token",
            login_from_env,
        ) {
            return;
        }
        let acr = Acr::start();
        let outcome = run(
            module_path!(),
            "a_service_principal_gets_a_refresh_token",
            &acr.service_principal(),
        );
        acr.assert_refresh_token(outcome);
        let [asked] = &acr.entra.requests()[..] else {
            panic!("{:?}", acr.entra.requests())
        };
        assert_eq!(asked.credential, "client_secret");
        assert_eq!(asked.scope.as_deref(), Some(SCOPE));
        assert!(asked.granted);
    }

    #[test]
    fn workload_identity_gets_a_refresh_token() {
        if child(
            module_path!(),
            "workload_identity_gets_a_refresh_token",
            login_from_env,
        ) {
            return;
        }
        let acr = Acr::start();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), acr.entra.federated_token()).unwrap();
        let env = acr.env(&[
            ("AZURE_TENANT_ID", acr.entra.tenant().to_string()),
            ("AZURE_CLIENT_ID", acr.entra.client_id().to_string()),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                file.path().display().to_string(),
            ),
        ]);
        let outcome = run(
            module_path!(),
            "workload_identity_gets_a_refresh_token",
            &env,
        );
        acr.assert_refresh_token(outcome);
        let [asked] = &acr.entra.requests()[..] else {
            panic!("{:?}", acr.entra.requests())
        };
        assert_eq!(asked.credential, "client_assertion");
        assert_eq!(asked.tenant.as_deref(), Some(acr.entra.tenant()));
        assert!(asked.granted);
    }

    #[test]
    fn a_managed_identity_gets_a_refresh_token() {
        if child(
            module_path!(),
            "a_managed_identity_gets_a_refresh_token",
            login_from_env,
        ) {
            return;
        }
        let acr = Acr::start();
        // App Service's managed identity (IMDS's address cannot be moved).
        let env = acr.env(&[
            ("IDENTITY_ENDPOINT", acr.entra.identity_endpoint()),
            ("IDENTITY_HEADER", acr.entra.identity_header().to_string()),
        ]);
        let outcome = run(
            module_path!(),
            "a_managed_identity_gets_a_refresh_token",
            &env,
        );
        acr.assert_refresh_token(outcome);
        let [asked] = &acr.entra.requests()[..] else {
            panic!("{:?}", acr.entra.requests())
        };
        assert_eq!(asked.credential, "managed_identity");
        assert_eq!(
            asked.scope.as_deref(),
            Some("https://containerregistry.azure.net")
        );
    }

    #[test]
    fn without_an_azure_identity_there_is_none() {
        if child(
            module_path!(),
            "without_an_azure_identity_there_is_none",
            login_from_env,
        ) {
            return;
        }
        let acr = Acr::start();
        let outcome = run(
            module_path!(),
            "without_an_azure_identity_there_is_none",
            &acr.env(&[]),
        );
        assert!(matches!(outcome, Outcome::NoIdentity { .. }), "{outcome:?}");
        insta::assert_snapshot!(outcome.message(), @"ACR: no Azure identity found (service principal: AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET; workload identity: AZURE_FEDERATED_TOKEN_FILE; managed identity: IDENTITY_ENDPOINT, the instance metadata service)");
        assert!(acr.entra.requests().is_empty());
        assert!(acr.exchange.requests().is_empty());
    }

    #[test]
    fn a_refused_exchange_is_refused_and_names_no_token() {
        if child(
            module_path!(),
            "a_refused_exchange_is_refused_and_names_no_token",
            login_from_env,
        ) {
            return;
        }
        let acr = Acr::start();
        acr.exchange.refuse(Some(401));
        let outcome = run(
            module_path!(),
            "a_refused_exchange_is_refused_and_names_no_token",
            &acr.service_principal(),
        );
        let Outcome::Refused { message, transient } = &outcome else {
            panic!("not refused: {outcome:?}")
        };
        assert!(!transient);
        let issued = acr.entra.issued();
        assert_eq!(issued.len(), 1);
        assert!(!message.contains(&issued[0]), "{message}");
        assert!(!message.contains(acr.entra.client_secret()), "{message}");
        let message = message.replace(&acr.front.host(), "127.0.0.1:PORT");
        insta::assert_snapshot!(message, @"ACR: exchange at http://127.0.0.1:PORT/oauth2/exchange: refused (401 Unauthorized): UNAUTHORIZED: stand-in: the identity may not use this registry");
    }

    #[test]
    fn a_wrong_client_secret_is_refused_by_entra() {
        if child(
            module_path!(),
            "a_wrong_client_secret_is_refused_by_entra",
            login_from_env,
        ) {
            return;
        }
        let acr = Acr::start();
        let env = acr.env(&[
            ("AZURE_TENANT_ID", acr.entra.tenant().to_string()),
            ("AZURE_CLIENT_ID", acr.entra.client_id().to_string()),
            ("AZURE_CLIENT_SECRET", "not-the-secret-at-all".to_string()),
        ]);
        let outcome = run(
            module_path!(),
            "a_wrong_client_secret_is_refused_by_entra",
            &env,
        );
        let Outcome::Refused { message, transient } = &outcome else {
            panic!("not refused: {outcome:?}")
        };
        assert!(!transient);
        assert!(!message.contains("not-the-secret-at-all"), "{message}");
        let message = message.replace(acr.entra.client_id(), "CLIENT");
        insta::assert_snapshot!(message, @"ACR: Entra token (service principal CLIENT): 401 (error 7000215): AADSTS7000215: Invalid client secret or assertion provided.");
        assert!(acr.exchange.requests().is_empty());
    }

    /// The exchange is a request to the registry itself, so it trusts the
    /// CA given with `--ca-file` as the registry's connection does: against
    /// the real registry over TLS (which has no exchange: its 404 shows
    /// that the TLS handshake went through).
    #[test]
    fn the_exchange_trusts_the_ca_files_the_registry_does() {
        let registry =
            image_syncer_testkit::Registry::start_with(image_syncer_testkit::RegistryOptions {
                tls: true,
                ..Default::default()
            });
        let ca = std::fs::read(registry.ca_file().unwrap()).unwrap();
        let endpoint = registry.host();
        let given = [("ca.pem".to_string(), ca)];
        let exchange_with = |ca_certificates: &[(String, Vec<u8>)]| {
            let target = LoginTarget {
                host: HOST,
                endpoint: &endpoint,
                insecure: false,
                ca_certificates,
            };
            match image_syncer_testkit::block_on(exchange(&target, "entra-token")) {
                Err(CloudError::Refused { message, .. }) => message,
                other => panic!("not refused: {other:?}"),
            }
        };
        let trusted = exchange_with(&given);
        assert!(trusted.contains("refused (404 Not Found)"), "{trusted}");
        let untrusted = exchange_with(&[]);
        assert!(
            !untrusted.contains("404") && untrusted.to_lowercase().contains("certificate"),
            "{untrusted}"
        );
        assert!(!trusted.contains("entra-token") && !untrusted.contains("entra-token"));
    }

    #[test]
    fn the_instance_metadata_service_is_there_when_it_answers_as_it_does() {
        use image_syncer_testkit::faults::{FaultProxy, Faults, Refuse};
        // Behind the fault proxy, answering the probe's path with `status`.
        let upstream = image_syncer_testkit::GceMetadata::start();
        let answering = |status: u16| {
            FaultProxy::start(
                &upstream.host(),
                Faults {
                    refuse: Some(Refuse {
                        method: Some("GET"),
                        path: "/metadata/identity/oauth2/token".into(),
                        times: 1000,
                        status,
                        code: "REFUSED".into(),
                    }),
                    ..Default::default()
                },
            )
        };
        // Azure's IMDS without its Metadata header: 400.
        let imds = answering(400);
        // An egress proxy denying the link-local address: 403.
        let denied = answering(403);
        image_syncer_testkit::block_on(async {
            assert!(imds_answers(&imds.host()).await);
            assert!(!imds_answers(&denied.host()).await);
            assert!(!imds_answers(&closed_port()).await);
        });
    }

    #[test]
    fn a_refresh_tokens_expiry_is_its_exp_claim() {
        use base64::Engine as _;
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"exp":1900000000,"grant_type":"refresh_token"}"#);
        assert_eq!(
            jwt_expiry(&format!("eyJhbGciOiJSUzI1NiJ9.{claims}.c2ln")),
            Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000))
        );
        assert_eq!(jwt_expiry("not-a-jwt"), None);
        assert_eq!(jwt_expiry("a.%%%.c"), None);
    }

    #[test]
    fn registry_errors_leave_out_the_token_sent() {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad token eyJsecret"},{"code":"DENIED","message":"not allowed"}]}"#;
        assert_eq!(
            registry_errors(body, "eyJsecret").as_deref(),
            Some("UNAUTHORIZED; DENIED: not allowed")
        );
        assert_eq!(registry_errors(b"<html>", "eyJsecret"), None);
    }
}
