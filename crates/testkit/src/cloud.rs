//! **Stand-ins** for the cloud identity services image-syncer logs in to
//! registries with (no real Google or Microsoft service can run here):
//!
//! - [`GceMetadata`]: the GCE metadata server's service-account token
//!   (what Application Default Credentials use on GCE and with GKE Workload
//!   Identity, reached through `GCE_METADATA_HOST`), and Google's OAuth
//!   token endpoint for gcloud's user credentials (`token_uri`);
//! - [`Entra`]: Microsoft Entra ID's token endpoint
//!   (`/{tenant}/oauth2/v2.0/token`: a service principal's client secret, or
//!   workload identity's federated token as a client assertion) and App
//!   Service's managed-identity endpoint, over TLS with a CA made for the
//!   test (`AZURE_AUTHORITY_HOST`, `IDENTITY_ENDPOINT`; the Azure SDK refuses
//!   an authority host that is not HTTPS);
//! - [`AcrExchange`]: ACR's `POST /oauth2/exchange`, which turns an Entra
//!   token into a refresh token; served by the fault proxy
//!   ([`Faults::acr_exchange`](crate::faults::Faults::acr_exchange)) in front
//!   of the real registry, which has no such route.
//!
//! They are not the services: they check what a client sends (paths,
//! headers, grants, scopes, the secrets they were given) and answer in the
//! documented formats. The tokens they hand out are what the registry's
//! token server ([`TokenServer`]) then accepts: the metadata server's access
//! token for user `oauth2accesstoken` (the test says so with
//! [`TokenServer::accept`]), an exchanged refresh token for user
//! `00000000-0000-0000-0000-000000000000` (the exchange registers each one
//! it issues). Every request is recorded. HTTP/1.1 on free 127.0.0.1 ports,
//! each in its own thread, stopped on drop.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::token::TokenLogins;
use crate::TokenServer;

/// The user ACR's refresh tokens are sent with.
pub const ACR_REFRESH_USER: &str = "00000000-0000-0000-0000-000000000000";

/// The Entra scope of ACR's token exchange.
pub const ACR_SCOPE: &str = "https://containerregistry.azure.net/.default";

/// `n` random bytes, hex: the stand-ins' tokens and secrets.
fn random_hex(n: usize) -> String {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("random bytes");
    hex::encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A JWT-shaped token with `claims`, not signed by anything (the stand-ins
/// know the tokens they issued; clients only read the claims).
fn unsigned_jwt(claims: serde_json::Value) -> String {
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "standin"});
    format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes()),
        b64url(random_hex(32).as_bytes())
    )
}

type Answer = Response<Full<Bytes>>;

fn answer(status: u16, content_type: &str, body: impl Into<Bytes>) -> Answer {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("response")
}

fn json(status: u16, body: serde_json::Value) -> Answer {
    answer(status, "application/json", body.to_string())
}

/// A request's body, at most 1 MiB (the stand-ins' requests are small).
async fn body_of(req: Request<Incoming>) -> Bytes {
    Limited::new(req.into_body(), 1 << 20)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

fn form(body: &[u8]) -> std::collections::BTreeMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn query(req: &Request<Incoming>) -> std::collections::BTreeMap<String, String> {
    form(req.uri().query().unwrap_or("").as_bytes())
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A small HTTP/1.1 server on a free 127.0.0.1 port, in its own thread
/// (a current-thread runtime), over TLS when given a configuration.
struct Server {
    port: u16,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start<S, H, F>(
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
        state: Arc<S>,
        handle: H,
    ) -> Server
    where
        S: Send + Sync + 'static,
        H: Fn(Request<Incoming>, Arc<S>) -> F + Copy + Send + Sync + 'static,
        F: std::future::Future<Output = Answer> + Send + 'static,
    {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("local address").port();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let st = state.clone();
                            let acceptor = acceptor.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |req| {
                                    let st = st.clone();
                                    async move { Ok::<_, std::convert::Infallible>(handle(req, st).await) }
                                });
                                let http = hyper::server::conn::http1::Builder::new();
                                match acceptor {
                                    Some(acceptor) => {
                                        // A client that gives up on the handshake (an
                                        // unknown CA) only ends its own connection.
                                        let handshake = tokio::time::timeout(
                                            Duration::from_secs(10),
                                            acceptor.accept(stream),
                                        );
                                        if let Ok(Ok(tls)) = handshake.await {
                                            let io = hyper_util::rt::TokioIo::new(tls);
                                            let _ = http.serve_connection(io, service).await;
                                        }
                                    }
                                    None => {
                                        let io = hyper_util::rt::TokioIo::new(stream);
                                        let _ = http.serve_connection(io, service).await;
                                    }
                                }
                            });
                        }
                    }
                }
            });
            rt.shutdown_timeout(Duration::from_secs(5));
        });
        Server {
            port,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Google
// ---------------------------------------------------------------------------

/// A request a [`GceMetadata`] stand-in got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoogleRequest {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Whether it carried `Metadata-Flavor: Google`.
    pub flavor: bool,
    /// The `scopes` query parameter (a metadata token request), or the
    /// `scope` field (an OAuth refresh).
    pub scopes: Option<String>,
    /// Whether it was answered with a token.
    pub granted: bool,
}

/// A **stand-in** GCE metadata server (`GCE_METADATA_HOST=`[`GceMetadata::host`]),
/// and Google's OAuth token endpoint for gcloud's user credentials.
///
/// - `GET /computeMetadata/v1/instance/service-accounts/default/token`
///   (optional `?scopes=`), with `Metadata-Flavor: Google` (else 403):
///   `{"access_token", "expires_in": 3599, "token_type": "Bearer"}`, the
///   token being [`GceMetadata::access_token`]; or, after
///   [`GceMetadata::refuse`], that status (a metadata server with no service
///   account answers 404).
/// - `.../default/email`, `/computeMetadata/v1/project/project-id`,
///   `/computeMetadata/v1/universe/universe-domain`: plain text, as on GCE.
/// - `POST /token` (the `token_uri` of [`GceMetadata::authorized_user`]'s
///   credentials; JSON or form): `grant_type=refresh_token` with that
///   file's client and refresh token gets the same access token; anything
///   else 400 `invalid_grant`.
///
/// Answers carry `Metadata-Flavor: Google`, as the real server's do.
pub struct GceMetadata {
    state: Arc<GoogleState>,
    server: Server,
}

struct GoogleState {
    token: String,
    refresh_token: String,
    client_secret: String,
    refuse: Mutex<Option<u16>>,
    requests: Mutex<Vec<GoogleRequest>>,
}

const GOOGLE_CLIENT_ID: &str = "standin-client.apps.googleusercontent.com";
const METADATA_SA: &str = "/computeMetadata/v1/instance/service-accounts/default";

impl GceMetadata {
    /// Starts it with a fresh random access token.
    pub fn start() -> GceMetadata {
        let state = Arc::new(GoogleState {
            token: format!("ya29.standin-{}", random_hex(24)),
            refresh_token: format!("1//standin-refresh-{}", random_hex(16)),
            client_secret: format!("standin-secret-{}", random_hex(12)),
            refuse: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
        });
        let server = Server::start(None, state.clone(), google);
        GceMetadata { state, server }
    }

    /// `127.0.0.1:PORT`, for `GCE_METADATA_HOST`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.server.port)
    }

    /// The access token it hands out.
    pub fn access_token(&self) -> String {
        self.state.token.clone()
    }

    /// The secrets of [`GceMetadata::authorized_user`] (for secret scans).
    pub fn user_secrets(&self) -> Vec<String> {
        vec![
            self.state.refresh_token.clone(),
            self.state.client_secret.clone(),
        ]
    }

    /// Answer token requests (metadata and OAuth) with `status` from now
    /// on (`None`: hand out tokens again).
    pub fn refuse(&self, status: Option<u16>) {
        *self.state.refuse.lock().unwrap() = status;
    }

    /// The requests served so far, in order.
    pub fn requests(&self) -> Vec<GoogleRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// gcloud's user credentials (`application_default_credentials.json`,
    /// `"type": "authorized_user"`) whose `token_uri` is this stand-in.
    pub fn authorized_user(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "authorized_user",
            "client_id": GOOGLE_CLIENT_ID,
            "client_secret": self.state.client_secret,
            "refresh_token": self.state.refresh_token,
            "token_uri": format!("http://127.0.0.1:{}/token", self.server.port),
        })
    }
}

async fn google(req: Request<Incoming>, st: Arc<GoogleState>) -> Answer {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let flavor = header(&req, "metadata-flavor").as_deref() == Some("Google");
    let q = query(&req);
    let is_json = header(&req, "content-type").is_some_and(|c| c.contains("json"));
    let body = body_of(req).await;
    let mut record = GoogleRequest {
        method: method.clone(),
        path: path.clone(),
        flavor,
        scopes: q.get("scopes").cloned(),
        granted: false,
    };
    let refuse = *st.refuse.lock().unwrap();
    let text = |status: u16, body: &str| {
        let mut a = answer(status, "text/plain", body.to_string());
        a.headers_mut().insert(
            "metadata-flavor",
            hyper::header::HeaderValue::from_static("Google"),
        );
        a
    };
    let token_answer = || {
        json(
            200,
            serde_json::json!({"access_token": st.token, "expires_in": 3599, "token_type": "Bearer"}),
        )
    };
    let reply = if method == "POST" && path == "/token" {
        let fields: std::collections::BTreeMap<String, String> = if is_json {
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
                .collect()
        } else {
            form(&body)
        };
        record.scopes = fields.get("scope").cloned();
        let field = |k: &str| fields.get(k).map(String::as_str);
        if let Some(status) = refuse {
            json(
                status,
                serde_json::json!({"error": "unavailable", "error_description": "stand-in: refused"}),
            )
        } else if field("grant_type") == Some("refresh_token")
            && field("client_id") == Some(GOOGLE_CLIENT_ID)
            && field("client_secret") == Some(st.client_secret.as_str())
            && field("refresh_token") == Some(st.refresh_token.as_str())
        {
            record.granted = true;
            token_answer()
        } else {
            json(
                400,
                serde_json::json!({"error": "invalid_grant", "error_description": "Bad Request"}),
            )
        }
    } else if !path.starts_with("/computeMetadata/") && path != "/" {
        text(404, "not found")
    } else if !flavor {
        text(403, "Missing required header: Metadata-Flavor")
    } else if method != "GET" {
        text(405, "method not allowed")
    } else {
        match path.as_str() {
            "/" | "/computeMetadata/v1/" => text(200, "computeMetadata/"),
            p if p == format!("{METADATA_SA}/token") => match refuse {
                Some(status) => text(status, "stand-in: refused"),
                None => {
                    record.granted = true;
                    let mut a = token_answer();
                    a.headers_mut().insert(
                        "metadata-flavor",
                        hyper::header::HeaderValue::from_static("Google"),
                    );
                    a
                }
            },
            p if p == format!("{METADATA_SA}/email") => {
                text(200, "syncer@standin.iam.gserviceaccount.com")
            }
            "/computeMetadata/v1/project/project-id" => text(200, "standin"),
            "/computeMetadata/v1/universe/universe-domain" => text(200, "googleapis.com"),
            _ => text(404, "not found"),
        }
    };
    st.requests.lock().unwrap().push(record);
    reply
}

// ---------------------------------------------------------------------------
// Microsoft Entra ID
// ---------------------------------------------------------------------------

/// A request an [`Entra`] stand-in got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntraRequest {
    /// `client_secret`, `client_assertion` (workload identity),
    /// `managed_identity` (App Service), or `other`.
    pub credential: String,
    /// The tenant of the path (`/{tenant}/oauth2/v2.0/token`).
    pub tenant: Option<String>,
    pub client_id: Option<String>,
    /// `scope` (a token request) or `resource` (managed identity).
    pub scope: Option<String>,
    /// Whether it was answered with a token.
    pub granted: bool,
}

/// A **stand-in** of Microsoft Entra ID for ACR logins, over HTTPS with a
/// CA made for it ([`Entra::ca_file`]).
///
/// - `POST /{tenant}/oauth2/v2.0/token` (form, `grant_type=client_credentials`,
///   `scope`, `client_id`, and `client_secret` or `client_assertion` with
///   `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`):
///   with its tenant, client and secret (or federated token) and the scope
///   [`ACR_SCOPE`], `{"token_type": "Bearer", "expires_in": 3599,
///   "ext_expires_in": 3599, "access_token"}`; else Entra's error answers
///   (`invalid_client` 401, `invalid_request` 400 for another tenant,
///   `invalid_scope` 400), with `error_codes` and `error_description`.
/// - `GET /msi/token?api-version=2019-08-01&resource=...` with
///   `X-IDENTITY-HEADER` (App Service's managed identity, `IDENTITY_ENDPOINT`
///   and `IDENTITY_HEADER`): `{"access_token", "expires_on", "resource",
///   "token_type"}` for resource `https://containerregistry.azure.net`.
///
/// Its access tokens are JWT-shaped (claims `aud`, `tid`, `exp`), not
/// signed by anything; [`AcrExchange`] accepts exactly the ones it issued.
pub struct Entra {
    state: Arc<EntraState>,
    server: Server,
    dir: tempfile::TempDir,
}

pub(crate) struct EntraState {
    tenant: String,
    client_id: String,
    client_secret: String,
    federated_token: String,
    identity_header: String,
    refuse: Mutex<Option<u16>>,
    issued: Mutex<BTreeSet<String>>,
    requests: Mutex<Vec<EntraRequest>>,
}

impl Entra {
    /// Starts it with a fresh tenant, client, client secret, federated
    /// token and identity header. Panics when openssl (the CA) is missing.
    pub fn start() -> Entra {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (_, cert, key) = crate::registry::make_tls(dir.path())
            .unwrap_or_else(|e| panic!("Entra stand-in TLS: {e}"));
        let config = tls_config(&cert, &key);
        let state = Arc::new(EntraState {
            tenant: format!("{}-0000-4000-8000-{}", &random_hex(4), random_hex(6)),
            client_id: format!("{}-1111-4000-8000-{}", &random_hex(4), random_hex(6)),
            client_secret: format!("standin~secret{}", random_hex(16)),
            federated_token: unsigned_jwt(serde_json::json!({
                "iss": "https://oidc.standin.invalid",
                "sub": "system:serviceaccount:sync:image-syncer",
                "aud": ["api://AzureADTokenExchange"],
                "exp": now() + 3600,
                "jti": random_hex(8),
            })),
            identity_header: format!("standin-identity-{}", random_hex(8)),
            refuse: Mutex::new(None),
            issued: Mutex::new(BTreeSet::new()),
            requests: Mutex::new(Vec::new()),
        });
        let server = Server::start(Some(config), state.clone(), entra);
        Entra { state, server, dir }
    }

    /// `https://127.0.0.1:PORT`, for `AZURE_AUTHORITY_HOST`.
    pub fn authority(&self) -> String {
        format!("https://127.0.0.1:{}", self.server.port)
    }

    /// App Service's managed-identity endpoint, for `IDENTITY_ENDPOINT`
    /// (with `IDENTITY_HEADER=`[`Entra::identity_header`]).
    pub fn identity_endpoint(&self) -> String {
        format!("{}/msi/token", self.authority())
    }

    /// The CA certificate (PEM file) of its TLS certificate, for `SSL_CERT_FILE`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn tenant(&self) -> &str {
        &self.state.tenant
    }

    pub fn client_id(&self) -> &str {
        &self.state.client_id
    }

    pub fn client_secret(&self) -> &str {
        &self.state.client_secret
    }

    /// The Kubernetes service account token workload identity federates
    /// (the content of `AZURE_FEDERATED_TOKEN_FILE`).
    pub fn federated_token(&self) -> &str {
        &self.state.federated_token
    }

    pub fn identity_header(&self) -> &str {
        &self.state.identity_header
    }

    /// Answer token requests with `status` from now on (`None`: hand out
    /// tokens again).
    pub fn refuse(&self, status: Option<u16>) {
        *self.state.refuse.lock().unwrap() = status;
    }

    /// The requests served so far, in order.
    pub fn requests(&self) -> Vec<EntraRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The access tokens handed out so far.
    pub fn issued(&self) -> Vec<String> {
        self.state.issued.lock().unwrap().iter().cloned().collect()
    }

    /// An ACR token exchange for registry `service` (its host, as the
    /// client names it) that accepts this stand-in's access tokens and
    /// registers each refresh token it issues with `token_server` (user
    /// [`ACR_REFRESH_USER`]).
    pub fn acr_exchange(&self, service: &str, token_server: &TokenServer) -> AcrExchange {
        AcrExchange {
            service: service.to_string(),
            entra: self.state.clone(),
            logins: token_server.logins(),
            seen: Arc::new(Mutex::new(Vec::new())),
            refuse: Arc::new(Mutex::new(None)),
        }
    }
}

fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Arc<tokio_rustls::rustls::ServerConfig> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("certificate file")
        .collect::<Result<_, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_file(key).expect("key PEM");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("TLS certificate and key");
    Arc::new(config)
}

fn entra_error(status: u16, error: &str, code: u32, description: &str) -> Answer {
    json(
        status,
        serde_json::json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description}"),
            "error_codes": [code],
            "timestamp": crate::token::rfc3339(now()),
        }),
    )
}

impl EntraState {
    fn issue(&self, resource: &str, lifetime: u64) -> String {
        let token = unsigned_jwt(serde_json::json!({
            "aud": resource,
            "iss": format!("https://sts.windows.net/{}/", self.tenant),
            "tid": self.tenant,
            "appid": self.client_id,
            "iat": now(),
            "exp": now() + lifetime,
            "jti": random_hex(8),
        }));
        self.issued.lock().unwrap().insert(token.clone());
        token
    }
}

async fn entra(req: Request<Incoming>, st: Arc<EntraState>) -> Answer {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let q = query(&req);
    let identity_header = header(&req, "x-identity-header");
    let body = body_of(req).await;
    let refuse = *st.refuse.lock().unwrap();
    const RESOURCE: &str = "https://containerregistry.azure.net";
    if method == hyper::Method::GET && path == "/msi/token" {
        let mut record = EntraRequest {
            credential: "managed_identity".into(),
            tenant: None,
            client_id: q.get("client_id").cloned(),
            scope: q.get("resource").cloned(),
            granted: false,
        };
        let reply = if identity_header.as_deref() != Some(st.identity_header.as_str()) {
            json(
                400,
                serde_json::json!({"error": "invalid_request", "error_description": "missing or wrong X-IDENTITY-HEADER"}),
            )
        } else if let Some(status) = refuse {
            json(
                status,
                serde_json::json!({"error": "unavailable", "error_description": "stand-in: refused"}),
            )
        } else if record.scope.as_deref() != Some(RESOURCE) {
            json(
                400,
                serde_json::json!({"error": "invalid_resource", "error_description": "stand-in: only the ACR resource is served"}),
            )
        } else {
            record.granted = true;
            let token = st.issue(RESOURCE, 3600);
            json(
                200,
                serde_json::json!({
                    "access_token": token,
                    "expires_on": (now() + 3600).to_string(),
                    "resource": RESOURCE,
                    "token_type": "Bearer",
                    "client_id": st.client_id,
                }),
            )
        };
        st.requests.lock().unwrap().push(record);
        return reply;
    }
    let tenant = path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix("/oauth2/v2.0/token"))
        .map(str::to_string);
    let Some(tenant) = tenant.filter(|_| method == hyper::Method::POST) else {
        return json(
            404,
            serde_json::json!({"error": "not_found", "error_description": "stand-in: no such route"}),
        );
    };
    let f = form(&body);
    let field = |k: &str| f.get(k).map(String::as_str);
    let credential = if field("client_secret").is_some() {
        "client_secret"
    } else if field("client_assertion").is_some() {
        "client_assertion"
    } else {
        "other"
    };
    let mut record = EntraRequest {
        credential: credential.into(),
        tenant: Some(tenant.clone()),
        client_id: f.get("client_id").cloned(),
        scope: f.get("scope").cloned(),
        granted: false,
    };
    let proof = match credential {
        "client_secret" => field("client_secret") == Some(st.client_secret.as_str()),
        "client_assertion" => {
            field("client_assertion_type")
                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                && field("client_assertion") == Some(st.federated_token.as_str())
        }
        _ => false,
    };
    let reply = if let Some(status) = refuse {
        entra_error(
            status,
            "temporarily_unavailable",
            50_196,
            "stand-in: refused",
        )
    } else if tenant != st.tenant {
        entra_error(400, "invalid_request", 90_002, "Tenant not found.")
    } else if field("grant_type") != Some("client_credentials") {
        entra_error(
            400,
            "unsupported_grant_type",
            70_003,
            "The app requested an unsupported grant type.",
        )
    } else if field("client_id") != Some(st.client_id.as_str()) || !proof {
        entra_error(
            401,
            "invalid_client",
            7_000_215,
            "Invalid client secret or assertion provided.",
        )
    } else if field("scope") != Some(ACR_SCOPE) {
        entra_error(
            400,
            "invalid_scope",
            70_011,
            "The provided value for scope is not valid.",
        )
    } else {
        record.granted = true;
        json(
            200,
            serde_json::json!({
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": st.issue(RESOURCE, 3599),
            }),
        )
    };
    st.requests.lock().unwrap().push(record);
    reply
}

// ---------------------------------------------------------------------------
// ACR's token exchange
// ---------------------------------------------------------------------------

/// A request an [`AcrExchange`] got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeRequest {
    pub grant_type: Option<String>,
    pub service: Option<String>,
    /// Whether `access_token` was one the [`Entra`] stand-in issued.
    pub known_token: bool,
    /// Whether it was answered with a refresh token.
    pub granted: bool,
}

/// A request an [`AcrExchange`] got, and the refresh token it answered.
type Exchanged = (ExchangeRequest, Option<String>);

/// A **stand-in** of ACR's `POST /oauth2/exchange` (made by
/// [`Entra::acr_exchange`], served by the fault proxy with
/// [`Faults::acr_exchange`](crate::faults::Faults::acr_exchange) in front of
/// the real registry).
///
/// Form `grant_type=access_token`, `service` (the registry's name, as made)
/// and `access_token` (one the [`Entra`] stand-in issued): 200
/// `{"refresh_token"}`, a JWT-shaped token with `exp` three hours on, which
/// the [`TokenServer`] then accepts as the password of
/// [`ACR_REFRESH_USER`]. Otherwise 400 (a bad grant or service) or 401 (an
/// unknown token) with a distribution-style `errors` body.
#[derive(Clone)]
pub struct AcrExchange {
    service: String,
    entra: Arc<EntraState>,
    logins: TokenLogins,
    seen: Arc<Mutex<Vec<Exchanged>>>,
    refuse: Arc<Mutex<Option<u16>>>,
}

impl std::fmt::Debug for AcrExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcrExchange")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl AcrExchange {
    /// The requests served so far, in order.
    pub fn requests(&self) -> Vec<ExchangeRequest> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// The refresh tokens handed out so far.
    pub fn refresh_tokens(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, t)| t.clone())
            .collect()
    }

    /// Answer every exchange with `status` from now on (`None`: exchange
    /// again), as a registry refusing the identity.
    pub fn refuse(&self, status: Option<u16>) {
        *self.refuse.lock().unwrap() = status;
    }

    /// The answer to `POST /oauth2/exchange` with `body`.
    pub(crate) fn answer(&self, body: &[u8]) -> (u16, String) {
        let f = form(body);
        let field = |k: &str| f.get(k).map(String::as_str);
        let known_token =
            field("access_token").is_some_and(|t| self.entra.issued.lock().unwrap().contains(t));
        let mut record = ExchangeRequest {
            grant_type: f.get("grant_type").cloned(),
            service: f.get("service").cloned(),
            known_token,
            granted: false,
        };
        let error = |status: u16, code: &str, message: &str| {
            (
                status,
                serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string(),
            )
        };
        let refused = *self.refuse.lock().unwrap();
        let mut refresh = None;
        let reply = if let Some(status) = refused {
            error(
                status,
                "UNAUTHORIZED",
                "stand-in: the identity may not use this registry",
            )
        } else if field("grant_type") != Some("access_token") {
            error(400, "UNSUPPORTED", "grant_type must be access_token")
        } else if field("service") != Some(self.service.as_str()) {
            error(400, "INVALID_SERVICE", "service is not this registry")
        } else if !known_token {
            error(401, "UNAUTHORIZED", "the access token is not valid")
        } else {
            record.granted = true;
            let token = unsigned_jwt(serde_json::json!({
                "jti": random_hex(8),
                "sub": "standin@acr",
                "grant_type": "refresh_token",
                "aud": self.service,
                "iss": "Azure Container Registry",
                "tenant": self.entra.tenant,
                "iat": now(),
                "nbf": now(),
                "exp": now() + 3 * 3600,
            }));
            self.logins.add(ACR_REFRESH_USER, &token);
            refresh = Some(token.clone());
            (200, serde_json::json!({"refresh_token": token}).to_string())
        };
        self.seen.lock().unwrap().push((record, refresh));
        reply
    }
}
