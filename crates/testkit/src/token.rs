//! A token issuer for registries with token authentication (the Docker Hub,
//! GAR and Harbor flow), to count and check token requests in end-to-end tests.
//!
//! The registry answers 401 with `WWW-Authenticate: Bearer
//! realm="...",service="...",scope="..."`; the client GETs a token from the
//! realm (`?service=...&scope=repository:NAME:pull,push`, with Basic auth when
//! it has credentials) and sends it as `Authorization: Bearer <jwt>`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

/// A stand-in token issuer: it is not a real authorization server, only what
/// a registry with token authentication needs (and what Docker Hub does for
/// a private repository). The registry that checks its tokens is the real
/// one: [`Registry`](crate::Registry) started with
/// [`RegistryOptions::token`](crate::RegistryOptions::token) set to
/// [`TokenServer::registry_auth`] (distribution checks the issuer, the
/// audience, the times, the signature through the `x5c` chain against its
/// `rootcertbundle`, and then the granted actions).
///
/// HTTP/1.1 on a free 127.0.0.1 port, in its own thread; stopped on drop.
/// `GET <any path>?service=S&scope=repository:NAME:ACTIONS[&scope=...]`:
///
/// - with `Authorization: Basic` and the right user and password (or one
///   added with [`TokenServer::accept`]): a token
///   granting the asked actions among `pull` and `push`, for every
///   `repository` scope;
/// - with a wrong user or password: 401, no token;
/// - without credentials: a token granting nothing (the registry then
///   refuses with 401 `insufficient_scope`), or `pull` only after
///   [`TokenServer::allow_anonymous_pull`]`(true)`.
///
/// Tokens are JWTs signed RS256 by an RSA 2048 key made at start with the
/// `openssl` CLI, whose self-signed certificate is in the token's `x5c`
/// header and in [`TokenAuth::root_certificates`]. Every request is recorded
/// ([`TokenServer::requests`]).
pub struct TokenServer {
    port: u16,
    state: Arc<State>,
    dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A request the [`TokenServer`] got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The user of the request's Basic credentials (right password or not);
    /// `None` for an anonymous request.
    pub user: Option<String>,
    /// The `scope` parameters, in order (`repository:NAME:pull,push`).
    pub scopes: Vec<String>,
    /// The `service` parameter.
    pub service: Option<String>,
}

/// Token authentication for a [`Registry`](crate::Registry)
/// ([`RegistryOptions::token`](crate::RegistryOptions::token)), written into
/// the registry's configuration as `auth.token`.
#[derive(Clone, Debug)]
pub struct TokenAuth {
    /// Where clients get tokens (`http://127.0.0.1:PORT/token`).
    pub realm: String,
    /// The registry's service name: tokens must have it as audience.
    pub service: String,
    /// The trusted token issuer (`iss`).
    pub issuer: String,
    /// PEM certificates the registry trusts to sign tokens (its
    /// `rootcertbundle`, written into the registry's own directory).
    pub root_certificates: String,
    /// User and password the registry's own helpers ([`Registry::client`](crate::Registry::client),
    /// `push`, `digest`, ...) log in to the token server with.
    pub credentials: (String, String),
}

struct State {
    user: String,
    password: String,
    /// More users and passwords it accepts ([`TokenServer::accept`]).
    logins: Mutex<Vec<(String, String)>>,
    key: std::path::PathBuf,
    /// Base64 (standard, padded) DER of the certificate, for `x5c`.
    x5c: String,
    allow_anonymous_pull: AtomicBool,
    requests: Mutex<Vec<TokenRequest>>,
    next_id: AtomicU64,
}

impl TokenServer {
    /// The `service` (token audience) of [`TokenServer::registry_auth`].
    pub const SERVICE: &'static str = "image-syncer-test-registry";
    /// The `iss` of the tokens.
    pub const ISSUER: &'static str = "image-syncer-test-issuer";

    /// Makes a key and certificate with openssl and starts serving tokens for
    /// `user` with `password`. Panics when openssl is missing or fails.
    pub fn start(user: &str, password: &str) -> TokenServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let x5c = make_key(dir.path()).unwrap_or_else(|e| panic!("token server key: {e}"));
        let state = Arc::new(State {
            user: user.to_string(),
            password: password.to_string(),
            logins: Mutex::new(Vec::new()),
            key: dir.path().join("key.pem"),
            x5c,
            allow_anonymous_pull: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("local address").port();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let st = st.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |req| {
                                    handle(req, st.clone())
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                    }
                }
            });
            // Open connections are dropped; a signing openssl still running
            // gets a bounded wait.
            rt.shutdown_timeout(Duration::from_secs(5));
        });
        TokenServer {
            port,
            state,
            dir,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Grant `pull` to anonymous requests (default: they get a token
    /// granting nothing). Takes effect for the next request.
    pub fn allow_anonymous_pull(&self, allow: bool) {
        self.state
            .allow_anonymous_pull
            .store(allow, Ordering::SeqCst);
    }

    /// Accept `user` with `password` too (as `pull` and `push` for every
    /// repository), from the next request on: a cloud identity's login
    /// (user `oauth2accesstoken` with a Google access token, ACR's refresh
    /// token user).
    pub fn accept(&self, user: &str, password: &str) {
        self.logins().add(user, password);
    }

    /// A handle that adds accepted logins, for stand-ins that issue them.
    pub(crate) fn logins(&self) -> TokenLogins {
        TokenLogins(self.state.clone())
    }

    /// The realm: `http://127.0.0.1:PORT/token`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The requests served so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The certificate that signs the tokens (PEM).
    pub fn certificate(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cert.pem")).expect("certificate")
    }

    /// Token authentication for a registry trusting this issuer, with this
    /// server's user and password for the registry's own helpers.
    pub fn registry_auth(&self) -> TokenAuth {
        TokenAuth {
            realm: self.url(),
            service: Self::SERVICE.into(),
            issuer: Self::ISSUER.into(),
            root_certificates: self.certificate(),
            credentials: (self.state.user.clone(), self.state.password.clone()),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Adds users and passwords a [`TokenServer`] accepts.
#[derive(Clone)]
pub(crate) struct TokenLogins(Arc<State>);

impl TokenLogins {
    pub(crate) fn add(&self, user: &str, password: &str) {
        self.0
            .logins
            .lock()
            .unwrap()
            .push((user.to_string(), password.to_string()));
    }
}

/// Makes `key.pem` (RSA 2048) and a self-signed `cert.pem` in `dir`; returns
/// the certificate's DER in standard base64.
fn make_key(dir: &Path) -> Result<String, String> {
    let run = |args: &[&str]| crate::registry::openssl(dir, args);
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-subj",
        "/CN=image-syncer test token issuer",
    ])?;
    let der = run(&["x509", "-in", "cert.pem", "-outform", "DER"])?;
    Ok(base64::engine::general_purpose::STANDARD.encode(der))
}

/// RS256: the RSA PKCS#1 v1.5 signature of SHA-256(`data`) by `key`.
fn sign(key: &Path, data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("openssl: {e}"))?;
    // A few kilobytes at most: the pipe takes them before openssl reads.
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(data).map_err(|e| format!("openssl: {e}"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("openssl: {e}"))?;
    if out.status.success() && !out.stdout.is_empty() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "openssl dgst -sign: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn answer(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

/// The user and password of `Authorization: Basic ...`, if any (a header
/// that cannot be read counts as a wrong password: `Some` with no user).
fn basic_credentials(req: &Request<Incoming>) -> Option<Option<(String, String)>> {
    let value = req.headers().get(hyper::header::AUTHORIZATION)?;
    let decoded = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(rest)
        })
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    Some(decoded.and_then(|s| {
        let (u, p) = s.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }))
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<State>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let mut scopes = Vec::new();
    let mut service = None;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*k {
            // Some clients put several scopes in one parameter, space-separated.
            "scope" => scopes.extend(v.split_whitespace().map(str::to_string)),
            "service" => service = Some(v.into_owned()),
            _ => {}
        }
    }
    let credentials = basic_credentials(&req);
    st.requests.lock().unwrap().push(TokenRequest {
        user: credentials
            .as_ref()
            .map(|c| c.as_ref().map(|(u, _)| u.clone()).unwrap_or_default()),
        scopes: scopes.clone(),
        service: service.clone(),
    });
    if req.method() != hyper::Method::GET {
        return Ok(answer(
            405,
            serde_json::json!({"details": "only GET is served"}),
        ));
    }
    // Who asks, and the actions they may be granted.
    let (subject, may): (String, &[&str]) = match credentials {
        Some(Some((u, p)))
            if (u == st.user && p == st.password)
                || st
                    .logins
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(lu, lp)| *lu == u && *lp == p) =>
        {
            (u, &["pull", "push"])
        }
        Some(_) => {
            return Ok(answer(
                401,
                serde_json::json!({"details": "incorrect username or password"}),
            ))
        }
        None if st.allow_anonymous_pull.load(Ordering::SeqCst) => (String::new(), &["pull"]),
        None => (String::new(), &[]),
    };
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|scope| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            (kind == "repository").then(|| {
                let granted: Vec<&str> = actions.split(',').filter(|a| may.contains(a)).collect();
                serde_json::json!({"type": "repository", "name": name, "actions": granted})
            })
        })
        .collect();

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let id = st.next_id.fetch_add(1, Ordering::SeqCst);
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [st.x5c]});
    let claims = serde_json::json!({
        "iss": TokenServer::ISSUER,
        "sub": subject,
        "aud": service.clone().unwrap_or_else(|| TokenServer::SERVICE.into()),
        "exp": now.as_secs() + 300,
        "nbf": now.as_secs() - 10,
        "iat": now.as_secs(),
        "jti": format!("{}-{id}-{}", std::process::id(), now.as_nanos()),
        "access": access,
    });
    let signed = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = st.key.clone();
    let input = signed.clone();
    let signature = tokio::task::spawn_blocking(move || sign(&key, input.as_bytes()))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let signature = match signature {
        Ok(s) => s,
        Err(e) => return Ok(answer(500, serde_json::json!({"details": e}))),
    };
    let jwt = format!("{signed}.{}", b64url(&signature));
    Ok(answer(
        200,
        serde_json::json!({
            "token": jwt,
            "access_token": jwt,
            "expires_in": 300,
            "issued_at": rfc3339(now.as_secs()),
        }),
    ))
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (UTC).
pub(crate) fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .expect("seconds since the epoch within years 1970 to 9999")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a date of years 0 to 9999 formats as RFC 3339")
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
        assert_eq!(super::rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
    }
}
