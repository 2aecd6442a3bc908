//! A fault-injecting reverse proxy between image-syncer and a real registry:
//! it forwards requests, and at set rates (deterministically, from a seed
//! and the request's identity: see [`request_identity`]) answers 500, answers 429 with `Retry-After`, drops the connection, or cuts
//! a response body short. Requests whose path contains `always_fail` always
//! get a 503; a [`RateLimit`] answers the first requests of a path with a
//! 429 (or 503) and a `Retry-After`, and records when each such request came.
//!
//! With [`Faults::referrers_api`] it is also a stand-in for a registry with
//! the OCI 1.1 referrers API, which Debian's distribution 2.8 lacks: see
//! [`ReferrersApi`]. With [`Faults::acr_exchange`] it serves ACR's token
//! exchange in front of the registry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, BodyStream, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

type Body = BoxBody<Bytes, std::io::Error>;

/// What to inject, per request. Rates are probabilities in [0, 1].
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub seed: u64,
    pub server_error: f64,
    pub too_many_requests: f64,
    pub drop_connection: f64,
    pub truncate_body: f64,
    /// Rate of answers whose body is held back for `stall_ms` after the
    /// headers (a registry that stalls mid-answer).
    pub stall: f64,
    pub stall_ms: u64,
    /// Requests whose path contains this always fail (503).
    pub always_fail: Option<String>,
    /// Added to every request before it is forwarded (a slow link).
    pub latency_ms: u64,
    /// Answer blob downloads with a 307 redirect to the registry itself, as
    /// registries backed by object storage do.
    pub redirect_blobs: bool,
    /// Replace the `Docker-Content-Digest` header of manifest responses with
    /// another digest (a registry not to be trusted).
    pub wrong_digest_header: bool,
    /// Answer 401 to requests without `Authorization: Bearer <this>`.
    pub require_bearer: Option<String>,
    /// Be a registry with token authentication, as Docker Hub is.
    pub token_server: Option<ProxyTokenRealm>,
    /// Rate-limit the first requests of a path.
    pub rate_limit: Option<RateLimit>,
    /// Hold the first requests of a path before forwarding them.
    pub hold: Option<Hold>,
    /// More holds, each on its own path and count ([`Injected::held_each`]).
    pub holds: Vec<Hold>,
    /// Read request bodies (uploads) at this many bytes per second, through
    /// a small receive buffer (0: as fast as they come).
    pub upload_bytes_per_sec: u64,
    /// Inject at most this many faults by rate (0: no limit).
    pub max_faults: u64,
    /// Answer every request with 429 for a while.
    pub throttle: Option<Throttle>,
    /// Answer the first requests of a path with a registry's refusal.
    pub refuse: Option<Refuse>,
    /// Send this `ratelimit-remaining` header with every manifest answer,
    /// as Docker Hub does (`76;w=21600`).
    pub ratelimit_remaining: Option<String>,
    /// Serve tag lists in pages (the registry's own list, sorted), honouring
    /// `n` and `last` and naming the next page in a `Link` header, as
    /// registries that paginate do: Debian's distribution 2.8 ignores `n`
    /// and `last` on `tags/list`.
    pub tag_pages: Option<TagPages>,
    /// With `tag_pages`: at most this many tags per page whatever `n` asks,
    /// as registries that cap the page size do (Harbor, GHCR: 100).
    pub tag_page_max: Option<usize>,
    /// Be a stand-in for an OCI 1.1 registry with the referrers API in front
    /// of the real one (see [`ReferrersApi`]).
    pub referrers_api: Option<ReferrersApi>,
    /// Answer as an ECR repository with `IMMUTABLE` tags: a manifest PUT by
    /// tag onto a tag the registry already has (whatever it holds, the same
    /// manifest too) is refused with 400 `TAG_INVALID` and ECR's message
    /// ("The image tag '…' already exists in the '…' repository and cannot
    /// be overwritten because the repository is immutable."), after any
    /// hold; the tag is looked up in the registry with the request's
    /// credentials. PUTs by digest are forwarded.
    pub immutable_tags: bool,
    /// Serve ACR's `POST /oauth2/exchange` (a stand-in, see
    /// [`AcrExchange`](crate::cloud::AcrExchange)) in front of the registry,
    /// which has no such route.
    pub acr_exchange: Option<crate::cloud::AcrExchange>,
}

/// A stand-in for the OCI 1.1 referrers API, served by the proxy in front
/// of a registry that lacks it (Debian's distribution 2.8 answers 404 to
/// `/v2/<name>/referrers/<digest>`, as to any route it does not know).
///
/// - A manifest PUT forwarded through the proxy and accepted by the
///   registry, whose JSON body has a `subject` descriptor, is recorded as a
///   referrer of the subject's digest in that repository: `mediaType` (the
///   body's, else the request's `Content-Type`), `digest` (sha256 of the
///   body), `size`, `artifactType` (the body's, else its `config.mediaType`)
///   and `annotations` (the body's). Its answer carries
///   `OCI-Subject: <subject digest>`, as OCI 1.1 registries send. The same
///   manifest pushed again is listed once.
/// - `GET /v2/<name>/referrers/<digest>` answers 200 with an OCI image index
///   (`schemaVersion` 2, `mediaType` and `Content-Type`
///   `application/vnd.oci.image.index.v1+json`) listing the referrers
///   recorded for it in push order, or none. Any `artifactType` filter is
///   ignored (no `OCI-Filters-Applied`). The request's credentials are
///   checked with the registry first (`GET /v2/`): a refusal is passed on.
/// - Everything else is forwarded as without it. Only what went through
///   the proxy is known: referrers pushed to the registry directly are not
///   listed.
#[derive(Clone, Debug, Default)]
pub struct ReferrersApi {
    /// List referrers without `artifactType`, as some registries do: callers
    /// must recognise artifacts by their layer media type.
    pub empty_artifact_type: bool,
    /// Answer the referrers API with a JSON document that is not an image
    /// index (the referrer list as an image manifest's `layers`, with the
    /// image manifest media type): a registry not to be trusted.
    pub not_an_index: bool,
}

/// How [`Faults::tag_pages`] writes the `Link` to the next page.
#[derive(Clone, Debug, Default)]
pub enum TagPages {
    /// `</v2/NAME/tags/list?last=TAG&n=N>; rel="next"`, as distribution 3 does.
    #[default]
    Relative,
    /// The same, absolute on the proxy: `<http://PROXY/v2/...>`.
    Absolute,
    /// The same, absolute on another host (`HOST:PORT`): a link not to follow.
    OtherHost(String),
    /// The page itself (a registry that would loop forever).
    Loop,
}

/// Answers every request with 429 and `Retry-After: retry_after` (empty: no
/// header) until it has refused `refusals` of them, recording when each
/// came ([`Injected::throttled`]). It ends on a count, not a time, so that
/// a machine too busy to send anything for a while does not end it unseen.
#[derive(Clone, Debug)]
pub struct Throttle {
    pub refusals: usize,
    pub retry_after: String,
}

/// Answers the first `times` requests whose path contains `path` (and whose
/// method is `method`) with `status` and the distribution error `code`, as a
/// registry refusing what it was sent; later ones are forwarded.
#[derive(Clone, Debug)]
pub struct Refuse {
    pub method: Option<&'static str>,
    pub path: String,
    pub times: u32,
    pub status: u16,
    pub code: String,
}

/// Token authentication in front of the registry: requests without
/// `Authorization: Bearer <token>` get a 401 whose `WWW-Authenticate` names
/// the proxy's own `/token` realm, which hands out `token` to anyone, after
/// answering its first `busy_first` requests with 503 and `Retry-After: 1`.
/// (The registry checks nothing here; for tokens the registry itself checks,
/// see [`crate::TokenServer`].)
#[derive(Clone, Debug)]
pub struct ProxyTokenRealm {
    pub token: String,
    pub busy_first: u32,
}

/// Answers the first `times` requests whose path contains `path` (and whose
/// method is `method`, when given) with `status` and `Retry-After:
/// retry_after`; later ones are forwarded.
#[derive(Clone, Debug)]
pub struct RateLimit {
    pub method: Option<&'static str>,
    pub path: String,
    pub times: u32,
    pub status: u16,
    pub retry_after: String,
}

/// Holds `times` requests whose path contains `path` (and whose method is
/// `method`), after letting the first `after` of them through, for `ms`
/// before forwarding them: a registry that has the whole request and does
/// not answer. A test that waits for an event rather than a time releases
/// the hold itself ([`Injected::release`], [`Injected::release_hold`]): `ms`
/// is then only a bound, so that a broken run cannot hang the test.
#[derive(Clone, Debug)]
pub struct Hold {
    pub method: Option<&'static str>,
    pub path: String,
    pub after: u32,
    pub times: u32,
    pub ms: u64,
}

/// A request a [`RateLimit`] saw: when it came and whether it was refused.
#[derive(Clone, Copy, Debug)]
pub struct LimitedRequest {
    pub at: std::time::Instant,
    pub refused: bool,
}

/// Counts of what was injected.
#[derive(Debug, Default)]
pub struct Injected {
    pub requests: AtomicU64,
    pub server_errors: AtomicU64,
    pub too_many_requests: AtomicU64,
    pub dropped: AtomicU64,
    pub truncated: AtomicU64,
    pub stalled: AtomicU64,
    pub always_failed: AtomicU64,
    /// Requests matching the [`Hold`] path, held or not.
    pub held: AtomicU64,
    /// Requests matching each of [`Faults::holds`], held or not.
    pub held_each: std::sync::Mutex<Vec<u64>>,
    /// Requests to the [`ProxyTokenRealm`]'s realm, busy or not.
    pub token_requests: AtomicU64,
    /// `CONNECT` tunnels opened (the proxy used as an HTTPS proxy).
    pub tunnels: AtomicU64,
    /// Every request matching the [`RateLimit`] path, in order.
    pub rate_limited: std::sync::Mutex<Vec<LimitedRequest>>,
    /// Every request since the [`Throttle`] began, in order.
    pub throttled: std::sync::Mutex<Vec<LimitedRequest>>,
    /// Requests matching the [`Refuse`] path (the first `times` were refused).
    pub refused: AtomicU64,
    /// Every request as it came: method and path.
    pub log: std::sync::Mutex<Vec<(String, String)>>,
    /// The holds released by the test: [`Faults::holds`] indexes, and
    /// [`HOLD`] for [`Faults::hold`].
    released: std::sync::Mutex<std::collections::BTreeSet<usize>>,
    /// Wakes the held requests when a hold is released.
    release_notify: tokio::sync::Notify,
    /// Per [`request_identity`], how many such requests came so far.
    attempts: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

/// [`Injected::release`]'s name for [`Faults::hold`].
const HOLD: usize = usize::MAX;

impl Injected {
    /// The requests the [`Throttle`] saw so far, from its first one on.
    pub fn throttled(&self) -> Vec<LimitedRequest> {
        self.throttled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests seen so far matching hold `i` of [`Faults::holds`].
    pub fn held_by(&self, i: usize) -> u64 {
        self.held_each
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(i)
            .copied()
            .unwrap_or(0)
    }

    /// Ends hold `i` of [`Faults::holds`]: the requests it holds now are
    /// forwarded, and later ones are not held.
    pub fn release(&self, i: usize) {
        self.released
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(i);
        self.release_notify.notify_waiters();
    }

    /// Ends [`Faults::hold`], as [`Injected::release`] does a hold of
    /// [`Faults::holds`].
    pub fn release_hold(&self) {
        self.release(HOLD);
    }

    fn is_released(&self, i: usize) -> bool {
        self.released
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&i)
    }

    /// Holds a request for `ms`, or until hold `i` is released.
    async fn hold(&self, i: usize, ms: u64) {
        let released = async {
            loop {
                let woken = self.release_notify.notified();
                if self.is_released(i) {
                    return;
                }
                woken.await;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(ms)) => {}
            _ = released => {}
        }
    }

    /// The draw deciding a request's fault: from the seed, the request's
    /// [`request_identity`] and how many such requests came before it.
    fn draw(&self, seed: u64, method: &str, path: &str, content_length: Option<u64>) -> f64 {
        let identity = request_identity(method, path, content_length);
        let attempt = {
            let mut seen = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
            let n = seen.entry(identity.clone()).or_insert(0);
            *n += 1;
            *n - 1
        };
        draw(seed, &identity, attempt)
    }

    /// Every request so far: method and path.
    pub fn log(&self) -> Vec<(String, String)> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The requests the [`RateLimit`] saw so far.
    pub fn rate_limited(&self) -> Vec<LimitedRequest> {
        self.rate_limited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Injected {
    /// Faults injected by rate (not counting `always_fail`).
    pub fn random_faults(&self) -> u64 {
        self.server_errors.load(Ordering::SeqCst)
            + self.too_many_requests.load(Ordering::SeqCst)
            + self.dropped.load(Ordering::SeqCst)
            + self.truncated.load(Ordering::SeqCst)
            + self.stalled.load(Ordering::SeqCst)
    }
}

/// A running proxy, stopped on drop.
pub struct FaultProxy {
    port: u16,
    pub injected: Arc<Injected>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct State {
    upstream: String,
    proxy: String,
    faults: Faults,
    injected: Arc<Injected>,
    client: reqwest::Client,
    /// [`ReferrersApi`]: per repository and subject digest, the referrers'
    /// descriptors in push order.
    referrers:
        std::sync::Mutex<std::collections::BTreeMap<(String, String), Vec<serde_json::Value>>>,
}

enum Fault {
    None,
    ServerError,
    TooMany,
    Drop,
    Truncate,
    Stall,
}

/// What a request is, whatever order it came in: its method, its path
/// (an upload's session id, which the registry makes up anew each run,
/// left out; of the query only the `digest`), the `Content-Length` of an
/// upload chunk without a digest, and how many times the same was asked
/// before (`attempt`, from 0). A fault is drawn from this and the seed, so
/// a failing seed fails again however concurrency orders the requests.
/// (With [`Faults::max_faults`] the cap still counts in arrival order.)
pub fn request_identity(method: &str, path: &str, content_length: Option<u64>) -> String {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let digest = query
        .split('&')
        .find(|kv| kv.starts_with("digest="))
        .unwrap_or("");
    let path = match path.split_once("/blobs/uploads/") {
        Some((repo, _session)) => format!("{repo}/blobs/uploads/*"),
        None => path.to_string(),
    };
    let length = match content_length {
        Some(n) if digest.is_empty() && path.ends_with("/blobs/uploads/*") => format!(" {n}"),
        _ => String::new(),
    };
    format!("{method} {path} {digest}{length}")
}

/// A number in [0, 1) drawn from the seed, a request's identity and its
/// attempt number.
fn draw(seed: u64, identity: &str, attempt: u64) -> f64 {
    // FNV-1a: stable across runs and platforms (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in identity.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    uniform(seed ^ h, attempt)
}

fn uniform(seed: u64, n: u64) -> f64 {
    let mut x = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b5_4a32_d192_ed03;
    for _ in 0..3 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn full(status: u16, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Response<Body> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    )
    .expect("response")
}

async fn handle(req: Request<Incoming>, st: Arc<State>) -> Result<Response<Body>, std::io::Error> {
    if req.method() == hyper::Method::CONNECT {
        return Ok(tunnel(req, &st));
    }
    st.injected.requests.fetch_add(1, Ordering::SeqCst);
    if st.faults.latency_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(st.faults.latency_ms)).await;
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    if st
        .faults
        .always_fail
        .as_deref()
        .is_some_and(|p| path.contains(p))
    {
        st.injected.always_failed.fetch_add(1, Ordering::SeqCst);
        return Ok(full(
            503,
            "{\"errors\":[{\"code\":\"UNAVAILABLE\",\"message\":\"injected\"}]}",
            &[("content-type", "application/json")],
        ));
    }
    let f = &st.faults;
    st.injected
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((req.method().to_string(), path.clone()));
    if let Some(exchange) = &f.acr_exchange {
        if req.method() == hyper::Method::POST && req.uri().path() == "/oauth2/exchange" {
            let body = http_body_util::Limited::new(req.into_body(), 1 << 20)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let (status, answer) = exchange.answer(&body);
            return Ok(full(
                status,
                answer,
                &[("content-type", "application/json")],
            ));
        }
    }
    if let Some(style) = &f.tag_pages {
        if req.method() == hyper::Method::GET && path.contains("/tags/list") {
            return Ok(tag_page(&st, &req, &path, style, f.tag_page_max).await);
        }
    }
    if let Some(t) = &f.throttle {
        let mut seen = st
            .injected
            .throttled
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let refused = seen.iter().filter(|r| r.refused).count() < t.refusals;
        seen.push(LimitedRequest {
            at: std::time::Instant::now(),
            refused,
        });
        if refused {
            let mut headers = vec![("content-type", "application/json")];
            if !t.retry_after.is_empty() {
                headers.push(("retry-after", t.retry_after.as_str()));
            }
            return Ok(full(
                429,
                "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":\"throttled\"}]}",
                &headers,
            ));
        }
    }
    let refusal = f
        .refuse
        .as_ref()
        .filter(|r| path.contains(&r.path) && r.method.is_none_or(|m| req.method().as_str() == m));
    if let Some(r) = refusal {
        if st.injected.refused.fetch_add(1, Ordering::SeqCst) < r.times as u64 {
            let body = format!(
                "{{\"errors\":[{{\"code\":\"{}\",\"message\":\"refused by the fault proxy\"}}]}}",
                r.code
            );
            return Ok(full(
                r.status,
                body,
                &[("content-type", "application/json")],
            ));
        }
    }
    let limited = f
        .rate_limit
        .as_ref()
        .filter(|l| path.contains(&l.path) && l.method.is_none_or(|m| req.method().as_str() == m));
    if let Some(limit) = limited {
        let mut seen = st
            .injected
            .rate_limited
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let refused = seen.len() < limit.times as usize;
        seen.push(LimitedRequest {
            at: std::time::Instant::now(),
            refused,
        });
        if refused {
            let body = if limit.status == 429 {
                "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":\"rate limited\"}]}"
            } else {
                "{\"errors\":[{\"code\":\"UNAVAILABLE\",\"message\":\"busy\"}]}"
            };
            return Ok(full(
                limit.status,
                body,
                &[
                    ("retry-after", limit.retry_after.as_str()),
                    ("content-type", "application/json"),
                ],
            ));
        }
    }
    let hold = f
        .hold
        .as_ref()
        .filter(|h| path.contains(&h.path) && h.method.is_none_or(|m| req.method().as_str() == m));
    if let Some(h) = hold {
        let n = st.injected.held.fetch_add(1, Ordering::SeqCst);
        if n >= h.after as u64 && n < (h.after + h.times) as u64 {
            st.injected.hold(HOLD, h.ms).await;
        }
    }
    for (i, h) in f.holds.iter().enumerate() {
        if !path.contains(&h.path) || h.method.is_some_and(|m| req.method().as_str() != m) {
            continue;
        }
        let n = {
            let mut seen = st
                .injected
                .held_each
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            seen.resize(f.holds.len(), 0);
            seen[i] += 1;
            seen[i] - 1
        };
        if n >= h.after as u64 && n < (h.after + h.times) as u64 {
            st.injected.hold(i, h.ms).await;
        }
    }
    if f.immutable_tags && req.method() == hyper::Method::PUT {
        if let Some(refusal) = immutable_tag_refusal(&st, &req, &path).await {
            return Ok(refusal);
        }
    }
    if let Some(ts) = &f.token_server {
        if path.starts_with("/token") {
            let n = st.injected.token_requests.fetch_add(1, Ordering::SeqCst);
            if n < ts.busy_first as u64 {
                return Ok(full(
                    503,
                    "token service busy",
                    &[("retry-after", "1"), ("content-type", "text/plain")],
                ));
            }
            let body = format!("{{\"token\":\"{0}\",\"access_token\":\"{0}\"}}", ts.token);
            return Ok(full(200, body, &[("content-type", "application/json")]));
        }
        let ok = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {}", ts.token));
        if !ok {
            let challenge = format!(
                "Bearer realm=\"http://{}/token\",service=\"fault-proxy\"",
                st.proxy
            );
            return Ok(full(
                401,
                "{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"token required\"}]}",
                &[
                    ("content-type", "application/json"),
                    ("www-authenticate", challenge.as_str()),
                ],
            ));
        }
    }
    if let Some(token) = &f.require_bearer {
        let ok = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {token}"));
        if !ok {
            return Ok(full(
                401,
                "{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"bearer token required\"}]}",
                &[("content-type", "application/json")],
            ));
        }
    }
    let u = st.injected.draw(
        f.seed,
        req.method().as_str(),
        &path,
        req.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
    );
    let fault = if f.max_faults > 0 && st.injected.random_faults() >= f.max_faults {
        Fault::None
    } else if u < f.server_error {
        Fault::ServerError
    } else if u < f.server_error + f.too_many_requests {
        Fault::TooMany
    } else if u < f.server_error + f.too_many_requests + f.drop_connection {
        Fault::Drop
    } else if u < f.server_error + f.too_many_requests + f.drop_connection + f.truncate_body {
        Fault::Truncate
    } else if u < f.server_error
        + f.too_many_requests
        + f.drop_connection
        + f.truncate_body
        + f.stall
    {
        Fault::Stall
    } else {
        Fault::None
    };
    match fault {
        Fault::ServerError => {
            st.injected.server_errors.fetch_add(1, Ordering::SeqCst);
            return Ok(full(500, "injected server error", &[]));
        }
        Fault::TooMany => {
            st.injected.too_many_requests.fetch_add(1, Ordering::SeqCst);
            return Ok(full(
                429,
                "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":\"injected\"}]}",
                &[("retry-after", "1"), ("content-type", "application/json")],
            ));
        }
        Fault::Drop => {
            st.injected.dropped.fetch_add(1, Ordering::SeqCst);
            return Err(std::io::Error::other("injected: connection dropped"));
        }
        _ => {}
    }
    if let Some(api) = &f.referrers_api {
        if req.method() == hyper::Method::GET {
            if let Some((name, digest)) = referrers_route(&path) {
                return Ok(referrers_answer(&st, &req, api, &name, &digest).await);
            }
        }
    }
    if f.redirect_blobs && req.method() == hyper::Method::GET && path.contains("/blobs/sha256:") {
        let location = format!("http://{}{path}", st.upstream);
        let mut r = full(307, "", &[]);
        r.headers_mut()
            .insert("location", location.parse().expect("header"));
        return Ok(r);
    }
    let rewrite_digest = f.wrong_digest_header && path.contains("/manifests/");
    // Forward.
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).expect("method");
    let mut out = st
        .client
        .request(method, format!("http://{}{path}", st.upstream));
    for (k, v) in req.headers() {
        if k.as_str() != "host" {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    // A manifest PUT is read whole first when the referrers stand-in may
    // have to record it.
    let manifest_put = (f.referrers_api.is_some()
        && req.method() == hyper::Method::PUT
        && path.contains("/manifests/"))
    .then(|| {
        req.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    });
    let rate = f.upload_bytes_per_sec;
    let mut put_body: Option<Bytes> = None;
    if manifest_put.is_some() {
        let whole = req
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        put_body = Some(whole.clone());
        out = out.body(whole);
    } else {
        let body = BodyStream::new(req.into_body()).filter_map(move |frame| async move {
            match frame {
                Ok(f) => {
                    let data = f.into_data().ok()?;
                    if let Some(micros) = (data.len() as u64 * 1_000_000).checked_div(rate) {
                        tokio::time::sleep(std::time::Duration::from_micros(micros)).await;
                    }
                    Some(Ok::<Bytes, std::io::Error>(data))
                }
                Err(e) => Some(Err(std::io::Error::other(e))),
            }
        });
        out = out.body(reqwest::Body::wrap_stream(body));
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        let value = if rewrite_digest && k.as_str().eq_ignore_ascii_case("docker-content-digest") {
            // A well-formed digest of other bytes.
            "sha256:0000000000000000000000000000000000000000000000000000000000000000".to_string()
        } else if k.as_str() == "location" {
            v.to_str()
                .unwrap_or_default()
                .replace(&st.upstream, &st.proxy)
        } else {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        };
        builder = builder.header(k.as_str(), value);
    }
    if let (Some(content_type), Some(body)) = (&manifest_put, &put_body) {
        if resp.status().is_success() {
            if let Some(subject) = record_referrer(&st, &path, content_type, body) {
                builder = builder.header("oci-subject", subject);
            }
        }
    }
    if let Some(left) = f.ratelimit_remaining.as_deref() {
        if path.contains("/manifests/") {
            builder = builder.header("ratelimit-remaining", left);
        }
    }
    let length = resp.content_length().unwrap_or(0);
    let truncate = matches!(fault, Fault::Truncate) && length > 1;
    if truncate {
        st.injected.truncated.fetch_add(1, Ordering::SeqCst);
    }
    let stall = matches!(fault, Fault::Stall) && length > 0;
    if stall {
        st.injected.stalled.fetch_add(1, Ordering::SeqCst);
    }
    let stall_ms = if stall { f.stall_ms } else { 0 };
    // Headers go out at once; the body waits.
    let pause = futures_util::stream::once(async move {
        if stall_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(stall_ms)).await;
        }
    })
    .filter_map(|()| async { None::<Result<Frame<Bytes>, std::io::Error>> });
    let mut sent = 0u64;
    let stream = resp.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        if truncate {
            let keep = (length / 2).saturating_sub(sent) as usize;
            if keep < chunk.len() {
                return Err(std::io::Error::other("injected: body cut short"));
            }
        }
        sent += chunk.len() as u64;
        Ok(Frame::data(chunk))
    });
    Ok(builder
        .body(BodyExt::boxed(StreamBody::new(pause.chain(stream))))
        .expect("response"))
}

/// As an HTTPS proxy: a `CONNECT host:port` tunnel, to 127.0.0.1 only,
/// carrying the bytes both ways untouched (TLS goes end to end).
fn tunnel(req: Request<Incoming>, st: &State) -> Response<Body> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    if !authority.starts_with("127.0.0.1:") {
        return full(403, "this proxy tunnels to 127.0.0.1 only", &[]);
    }
    st.injected.tunnels.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let Ok(mut upstream) = tokio::net::TcpStream::connect(&authority).await else {
            return;
        };
        let mut client = hyper_util::rt::TokioIo::new(upgraded);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
    full(200, "", &[])
}

/// One page of the registry's tag list for [`Faults::tag_pages`]: the tags
/// after `last` (sorted), at most `n`, and a `Link` to the next page when
/// more remain.
async fn tag_page(
    st: &State,
    req: &Request<Incoming>,
    path: &str,
    style: &TagPages,
    max: Option<usize>,
) -> Response<Body> {
    let (base, query) = path.split_once('?').unwrap_or((path, ""));
    let (mut n, mut last) = (None, None);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("n", v)) => n = v.parse::<usize>().ok(),
            Some(("last", v)) => last = Some(v.to_string()),
            _ => {}
        }
    }
    let mut out = st.client.get(format!("http://{}{base}", st.upstream));
    if let Some(a) = req.headers().get("authorization") {
        out = out.header("authorization", a.as_bytes());
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => return full(502, e.to_string(), &[]),
    };
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    let json = [("content-type", "application/json")];
    if status != 200 {
        return full(status, body, &json);
    }
    let listed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut tags: Vec<String> = listed["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    let start = last
        .as_deref()
        .map_or(0, |l| tags.partition_point(|t| t.as_str() <= l));
    let n = n.unwrap_or(tags.len()).min(max.unwrap_or(usize::MAX));
    let end = (start + n).min(tags.len());
    let page = &tags[start..end];
    let answer = serde_json::json!({ "name": listed["name"], "tags": page }).to_string();
    if end == tags.len() {
        return full(200, answer, &json);
    }
    let after = page.last().cloned().or(last).unwrap_or_default();
    let target = format!("{base}?last={after}&n={n}");
    let link = match style {
        TagPages::Relative => format!("<{target}>; rel=\"next\""),
        TagPages::Absolute => format!("<http://{}{target}>; rel=\"next\"", st.proxy),
        TagPages::OtherHost(host) => format!("<http://{host}{target}>; rel=\"next\""),
        TagPages::Loop => format!("<{path}>; rel=\"next\""),
    };
    full(200, answer, &[json[0], ("link", &link)])
}

/// `(name, digest)` of a `/v2/<name>/referrers/<digest>` path (query aside).
/// For [`Faults::immutable_tags`]: ECR's refusal of a manifest PUT onto a
/// tag the registry already has, or `None` to forward the request.
async fn immutable_tag_refusal(
    st: &State,
    req: &Request<Incoming>,
    path: &str,
) -> Option<Response<Body>> {
    let bare = path.split('?').next()?;
    let (name, reference) = bare.strip_prefix("/v2/")?.rsplit_once("/manifests/")?;
    if reference.contains(':') || name.is_empty() {
        return None;
    }
    let mut head = st
        .client
        .head(format!("http://{}{bare}", st.upstream))
        .header(
            "accept",
            image_syncer_core::manifest::ACCEPTED_MANIFEST_TYPES.join(", "),
        );
    if let Some(auth) = req.headers().get("authorization") {
        head = head.header("authorization", auth.as_bytes());
    }
    let held = head.send().await.ok()?;
    if !held.status().is_success() {
        return None;
    }
    let body = serde_json::json!({"errors": [{
        "code": "TAG_INVALID",
        "message": format!(
            "The image tag '{reference}' already exists in the '{name}' repository and cannot be overwritten because the repository is immutable."
        ),
    }]});
    Some(full(
        400,
        body.to_string(),
        &[("content-type", "application/json")],
    ))
}

fn referrers_route(path: &str) -> Option<(String, String)> {
    let path = path.split('?').next()?;
    let rest = path.strip_prefix("/v2/")?;
    let (name, digest) = rest.rsplit_once("/referrers/")?;
    (!name.is_empty() && digest.contains(':') && !digest.contains('/'))
        .then(|| (name.to_string(), digest.to_string()))
}

/// For [`ReferrersApi`]: records the manifest PUT to `path` (already
/// accepted by the registry) as a referrer when its body has a `subject`;
/// the subject's digest, for the `OCI-Subject` header.
fn record_referrer(st: &State, path: &str, content_type: &str, body: &[u8]) -> Option<String> {
    let path = path.split('?').next()?;
    let (name, _) = path.strip_prefix("/v2/")?.rsplit_once("/manifests/")?;
    let manifest: serde_json::Value = serde_json::from_slice(body).ok()?;
    let subject = manifest["subject"]["digest"].as_str()?.to_string();
    let media_type = manifest["mediaType"]
        .as_str()
        .unwrap_or(content_type)
        .to_string();
    let digest = image_syncer_core::digest::Digest::sha256_of(body).to_string();
    let mut descriptor = serde_json::json!({
        "mediaType": media_type,
        "digest": digest,
        "size": body.len(),
    });
    let artifact_type = manifest["artifactType"]
        .as_str()
        .or(manifest["config"]["mediaType"].as_str());
    if let Some(t) = artifact_type {
        descriptor["artifactType"] = t.into();
    }
    if let Some(a) = manifest.get("annotations").filter(|a| a.is_object()) {
        descriptor["annotations"] = a.clone();
    }
    let mut recorded = st.referrers.lock().unwrap_or_else(|e| e.into_inner());
    let listed = recorded
        .entry((name.to_string(), subject.clone()))
        .or_default();
    if !listed.iter().any(|d| d["digest"] == descriptor["digest"]) {
        listed.push(descriptor);
    }
    Some(subject)
}

/// For [`ReferrersApi`]: the answer to `GET /v2/<name>/referrers/<digest>`,
/// once the registry has accepted the request's credentials.
async fn referrers_answer(
    st: &State,
    req: &Request<Incoming>,
    api: &ReferrersApi,
    name: &str,
    digest: &str,
) -> Response<Body> {
    let mut probe = st.client.get(format!("http://{}/v2/", st.upstream));
    if let Some(a) = req.headers().get("authorization") {
        probe = probe.header("authorization", a.as_bytes());
    }
    match probe.send().await {
        Ok(r) if r.status().as_u16() == 200 => {}
        Ok(r) => {
            let status = r.status().as_u16();
            let challenge = r
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = r.bytes().await.unwrap_or_default();
            let mut headers = vec![("content-type", "application/json")];
            if let Some(c) = challenge.as_deref() {
                headers.push(("www-authenticate", c));
            }
            return full(status, body, &headers);
        }
        Err(e) => return full(502, e.to_string(), &[]),
    }
    let mut manifests = st
        .referrers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(name.to_string(), digest.to_string()))
        .cloned()
        .unwrap_or_default();
    if api.empty_artifact_type {
        for d in &mut manifests {
            if let Some(d) = d.as_object_mut() {
                d.remove("artifactType");
            }
        }
    }
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let (media_type, answer) = if api.not_an_index {
        const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
        (
            MANIFEST,
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.empty.v1+json",
                    "digest": image_syncer_core::digest::Digest::sha256_of(b"{}").to_string(),
                    "size": 2,
                },
                "layers": manifests,
            }),
        )
    } else {
        (
            INDEX,
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": INDEX,
                "manifests": manifests,
            }),
        )
    };
    full(200, answer.to_string(), &[("content-type", media_type)])
}

impl FaultProxy {
    /// Proxies to `upstream` (`127.0.0.1:PORT`, plain HTTP) with `faults`.
    pub fn start(upstream: &str, faults: Faults) -> FaultProxy {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        if faults.upload_bytes_per_sec > 0 {
            // Small, fixed buffers: a throttled upload is read at the set pace,
            // not swallowed whole by the kernel first.
            socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
        }
        let address: std::net::SocketAddr = "127.0.0.1:0".parse().expect("address");
        socket.bind(&address.into()).expect("bind 127.0.0.1");
        socket.listen(128).expect("listen");
        let std_listener: std::net::TcpListener = socket.into();
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().unwrap().port();
        let injected = Arc::new(Injected::default());
        let state = Arc::new(State {
            upstream: upstream.to_string(),
            proxy: format!("127.0.0.1:{port}"),
            faults,
            injected: injected.clone(),
            client: reqwest::Client::new(),
            referrers: Default::default(),
        });
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
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
                            let st = state.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |req| handle(req, st.clone()));
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .with_upgrades()
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        FaultProxy {
            port,
            injected,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// PUTs manifest bytes of `media_type` to `repo:tag` (or `repo@digest`)
    /// through the proxy, anonymously over plain HTTP, and returns the answer
    /// as sent (status, headers, body): to check what the registry, or the
    /// [`ReferrersApi`] stand-in, answers a push.
    pub async fn put_manifest(
        &self,
        repo_and_ref: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> ProxyAnswer {
        let (repo, reference) = repo_and_ref
            .rsplit_once('@')
            .or_else(|| repo_and_ref.rsplit_once(':'))
            .expect("repo:tag or repo@digest");
        let resp = reqwest::Client::new()
            .put(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.host()
            ))
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("PUT through the fault proxy");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        ProxyAnswer {
            status,
            headers,
            body,
        }
    }
}

/// An answer of the proxy, as sent ([`FaultProxy::put_manifest`]).
#[derive(Debug)]
pub struct ProxyAnswer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl ProxyAnswer {
    /// The value of header `name`, if sent (and text).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The faults a seed draws for a set of requests do not depend on the
    /// order they come in: each is keyed by the request's identity and
    /// attempt, not by its arrival index.
    #[test]
    fn a_seed_draws_the_same_faults_in_any_arrival_order() {
        let requests = [
            ("GET", "/v2/", None),
            ("HEAD", "/v2/team/app/manifests/1", None),
            ("HEAD", "/v2/team/app/blobs/sha256:aa", None),
            ("HEAD", "/v2/team/app/blobs/sha256:bb", None),
            ("POST", "/v2/team/app/blobs/uploads/", None),
            (
                "PATCH",
                "/v2/team/app/blobs/uploads/0b1c-session-one?_state=x",
                Some(40_000),
            ),
            (
                "PUT",
                "/v2/team/app/blobs/uploads/0b1c-session-one?_state=y&digest=sha256%3Aaa",
                Some(0),
            ),
            ("HEAD", "/v2/team/app/blobs/sha256:aa", None),
            ("PUT", "/v2/team/app/manifests/1", Some(500)),
        ];
        // Through the proxy's own bookkeeping, as `handle` draws.
        let draws = |order: &[usize], session: &str| {
            let injected = Injected::default();
            let mut attempts = std::collections::HashMap::new();
            let mut out = std::collections::BTreeMap::new();
            for &i in order {
                let (method, path, length) = requests[i];
                let path = path.replace("0b1c-session-one", session);
                let identity = request_identity(method, &path, length);
                let n = attempts.entry(identity.clone()).or_insert(0u64);
                out.insert(
                    format!("{identity} #{n}"),
                    injected.draw(7, method, &path, length),
                );
                *n += 1;
            }
            out
        };
        let forward: Vec<usize> = (0..requests.len()).collect();
        let mut shuffled = forward.clone();
        shuffled.reverse();
        shuffled.swap(1, 4);
        let (a, b) = (draws(&forward, "s1"), draws(&shuffled, "s2"));
        assert_eq!(a.len(), requests.len(), "{a:?}");
        assert_eq!(a, b, "the same requests drew other faults in another order");
        // The seed matters.
        let other: Vec<f64> = requests
            .iter()
            .map(|(m, p, l)| draw(8, &request_identity(m, p, *l), 0))
            .collect();
        assert_ne!(
            other,
            requests
                .iter()
                .map(|(m, p, l)| draw(7, &request_identity(m, p, *l), 0))
                .collect::<Vec<_>>()
        );
    }
}
