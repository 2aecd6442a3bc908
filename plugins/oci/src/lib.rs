//! `oci`: source and sink over the OCI distribution API (Docker Hub, GCR/GAR,
//! ECR, Harbor, CNCF distribution, ...), on `oci-client`.
//!
//! - Connections follow the definition's `registries:` settings: `endpoint`
//!   replaces the host connected to (names are unchanged), `insecure` and
//!   `--insecure-registry` select plain HTTP. Everything else is HTTPS.
//! - Each registry is read and written with the credentials found for it:
//!   the target credentials given to the run (for the target registry, and a
//!   source on it), the definition's `registries:` entry, Docker's or
//!   containers' config; else anonymously. Bearer-token and basic flows are
//!   negotiated from the registry's challenge.
//! - Tags are listed (`tags/list`) following the registry's `Link` pages,
//!   for entries that select tags by a rule.
//! - Referrers are read through the OCI 1.1 referrers API
//!   (`GET /v2/<name>/referrers/<digest>`); a registry answering 404 has no
//!   such API (`None`: the engine reads the referrers tag schema instead).
//! - Manifests are verified against their digest on pull (here and again by
//!   the orchestrator); blobs stream both ways and are verified on the fly.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use image_syncer_core::async_trait;
use image_syncer_core::context::{Credentials, Registries, SinkContext, SourceContext};
use image_syncer_core::digest::{ByteStream, ContentMismatch, Digest};
use image_syncer_core::manifest::{Descriptor, RawManifest, ACCEPTED_MANIFEST_TYPES};
use image_syncer_core::reference::ImageRef;
use image_syncer_core::registry::{
    typed_config, BuildError, ConfigDoc, ConfigValue, Factory, StagePlugin,
};
use image_syncer_core::stage::{
    error_chain, ErrorKind, ManifestTarget, Pushback, Sink, Source, StageError, StageKind, Upload,
};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use tracing::debug;

/// Tags asked per page of `GET /v2/<name>/tags/list` ([`OciRegistry::list_tags`]).
pub const TAGS_PAGE_SIZE: usize = 1000;
/// The most pages of a tag list followed: a registry sending more is refused.
pub const MAX_TAG_PAGES: usize = 10_000;
/// The most tags listed for one repository: a registry sending more is refused.
pub const MAX_TAGS: usize = 1_000_000;
/// The largest page of a tag list read, in bytes (a thousand tags of the
/// longest kind take about 130 KiB; a registry ignoring `n` may send more).
const MAX_TAG_PAGE_BYTES: usize = 16 << 20;

/// Settings of the `oci` source and sink.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OciConfig {
    /// Upload each blob in one streamed PUT (the default, as docker and skopeo
    /// do); `false` uploads in 4 MiB PATCH chunks, for registries that refuse
    /// large single requests. Either way memory stays constant.
    #[serde(default = "yes")]
    pub monolithic_push: bool,
    /// Seconds to wait for a connection to a registry.
    #[serde(default = "connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// Seconds a registry may stay silent: a short request (manifests, blob
    /// checks, mounts) not answered in full within it, or a blob download or
    /// upload that moves no byte for that long, ends as a transient failure
    /// and is retried. Long transfers that keep moving are never cut.
    #[serde(default = "read_timeout")]
    pub read_timeout_seconds: u64,
    /// The largest manifest read from a registry, in bytes (default 4 MiB,
    /// what the distribution registry accepts on push). A larger one is
    /// refused before it is read whole; raise it for registries that need
    /// more.
    #[serde(default = "max_manifest_bytes")]
    pub max_manifest_bytes: usize,
}

fn max_manifest_bytes() -> usize {
    image_syncer_core::manifest::DEFAULT_MAX_MANIFEST_BYTES
}

fn yes() -> bool {
    true
}

fn connect_timeout() -> u64 {
    30
}

fn read_timeout() -> u64 {
    60
}

impl Default for OciConfig {
    fn default() -> Self {
        OciConfig {
            monolithic_push: true,
            connect_timeout_seconds: connect_timeout(),
            read_timeout_seconds: read_timeout(),
            max_manifest_bytes: max_manifest_bytes(),
        }
    }
}

/// A connection to registries: source and sink share this.
pub struct OciRegistry {
    client: Client,
    /// `maxManifestBytes`.
    max_manifest: usize,
    /// How long a registry may stay silent (`readTimeoutSeconds`).
    idle: Duration,
    /// How each registry is reached (endpoints, plain HTTP, credentials).
    registries: Registries,
    /// Credentials found in Docker's or containers' config, per registry.
    discovered: std::sync::Mutex<std::collections::HashMap<String, RegistryAuth>>,
}

impl OciRegistry {
    pub fn new(config: &OciConfig, cx: &Registries) -> Result<OciRegistry, String> {
        // Every host reached over plain HTTP, as connected to (after endpoint mapping).
        let mut insecure = BTreeSet::new();
        for host in cx.known_hosts() {
            let (endpoint, is_insecure) = cx.endpoint_for(host);
            if is_insecure {
                insecure.insert(endpoint);
            }
        }
        // One client per distinct setup in the process: the source and the
        // sink of a run share connections, tokens and the (costly) loading of
        // the system's root certificates.
        let credentials = match cx.target.as_ref().map(|(_, c)| c) {
            None => String::new(),
            Some(Credentials::Basic { username, password }) => {
                Digest::sha256_of(format!("basic\0{username}\0{}", password.expose()).as_bytes())
                    .to_string()
            }
            Some(Credentials::Bearer { token }) => {
                Digest::sha256_of(format!("bearer\0{}", token.expose()).as_bytes()).to_string()
            }
        };
        let key = format!(
            "{insecure:?}|{}|{}|{}|{}|{:?}|{credentials}|{:?}",
            config.monolithic_push,
            config.max_manifest_bytes,
            config.connect_timeout_seconds,
            config.read_timeout_seconds,
            cx.target.as_ref().map(|(host, _)| host),
            cx.ca_certificates
                .iter()
                .map(|(_, pem)| Digest::sha256_of(pem).to_string())
                .collect::<Vec<_>>()
        );
        static CLIENTS: std::sync::Mutex<Vec<(String, Client)>> = std::sync::Mutex::new(Vec::new());
        let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, client)) = clients.iter().find(|(k, _)| *k == key) {
            return Ok(OciRegistry {
                client: client.clone(),
                max_manifest: config.max_manifest_bytes,
                idle: Duration::from_secs(config.read_timeout_seconds.max(1)),
                registries: cx.clone(),
                discovered: Default::default(),
            });
        }
        let client_config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure.into_iter().collect()),
            use_monolithic_push: config.monolithic_push,
            connect_timeout: Some(Duration::from_secs(config.connect_timeout_seconds.max(1))),
            // No `read_timeout` here: reqwest counts it from the start of a
            // request until its answer, so it would cut every upload longer
            // than the limit. Silence is watched per operation instead
            // (`answered`, `idle_limited`, `put_blob`).
            // No platform selection: indexes are copied whole.
            platform_resolver: None,
            user_agent: concat!("image-syncer/", env!("CARGO_PKG_VERSION")),
            extra_root_certificates: cx
                .ca_certificates
                .iter()
                .map(|(_, pem)| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            ..Default::default()
        };
        // `Client::new` would fall back to a default client on a bad config:
        // refuse instead, so a CA that cannot be used is an input error.
        let mut client = Client::try_from(client_config).map_err(|e| {
            let files: Vec<&str> = cx.ca_certificates.iter().map(|(f, _)| f.as_str()).collect();
            format!(
                "cannot set up the registry client (CA files: {}): {e}",
                files.join(", ")
            )
        })?;
        client.max_manifest_bytes = Some(config.max_manifest_bytes);
        clients.push((key, client.clone()));
        Ok(OciRegistry {
            client,
            max_manifest: config.max_manifest_bytes,
            idle: Duration::from_secs(config.read_timeout_seconds.max(1)),
            registries: cx.clone(),
            discovered: Default::default(),
        })
    }

    /// The credentials for `registry`, in this order: the target key file or
    /// token (for the target registry), the definition's `registries:` entry,
    /// Docker's `config.json` (`auths`, `credHelpers`, `credsStore`, running
    /// `docker-credential-<name>`) or containers' `auth.json`, else anonymous.
    /// A registry reached through an `endpoint` (a mirror) is looked up under
    /// the endpoint's host first, then under its own name, in each of the
    /// two places: a mirror is authenticated with its own credentials, as in
    /// containers-registries.conf.
    fn auth_for(&self, registry: &str) -> RegistryAuth {
        if let Some((t, c)) = &self.registries.target {
            if t == registry {
                return to_auth(c);
            }
        }
        let (endpoint, _) = self.registries.endpoint_for(registry);
        let hosts: Vec<&str> = if endpoint == registry {
            vec![registry]
        } else {
            vec![endpoint.as_str(), registry]
        };
        if let Some(c) = hosts
            .iter()
            .find_map(|h| self.registries.configured_credentials(h))
        {
            return to_auth(c);
        }
        let mut found = self.discovered.lock().unwrap_or_else(|e| e.into_inner());
        for host in hosts {
            let auth = found
                .entry(host.to_string())
                .or_insert_with(|| docker_config_auth(host))
                .clone();
            if !matches!(auth, RegistryAuth::Anonymous) {
                return auth;
            }
        }
        RegistryAuth::Anonymous
    }

    /// The oci-client reference for `r` (tag or digest as given), connected
    /// through the configured endpoint.
    fn reference(&self, r: &ImageRef) -> Reference {
        let registry = r.registry().to_string();
        let repository = r.repository();
        let mut reference = match (r.digest(), r.tag()) {
            (Some(d), _) => Reference::with_digest(registry.clone(), repository, d.to_string()),
            (None, Some(t)) => Reference::with_tag(registry.clone(), repository, t.to_string()),
            (None, None) => Reference::with_tag(registry.clone(), repository, "latest".into()),
        };
        let (endpoint, _) = self.registries.endpoint_for(&registry);
        if endpoint != registry {
            reference.set_mirror_registry(endpoint);
        }
        reference
    }

    async fn prepare(&self, r: &ImageRef) -> Result<Reference, StageError> {
        let reference = self.reference(r);
        let auth = self.auth_for(r.registry());
        self.client
            .store_auth_if_needed(reference.resolve_registry(), &auth)
            .await;
        Ok(reference)
    }

    /// Passes the registry's count of requests left (Docker Hub's
    /// `ratelimit-remaining: 76;w=21600`), when it sent one, on to the run's
    /// flow control, which then runs at most that many requests at once.
    fn pass_on_ratelimit(&self, r: &ImageRef, reference: &Reference) {
        let value = self
            .client
            .ratelimit_remaining
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(reference.resolve_registry())
            .cloned();
        if let Some(n) = value.as_deref().and_then(parse_ratelimit_remaining) {
            self.registries.flow.remaining(r.registry(), n);
        }
    }

    async fn pull_manifest(
        &self,
        r: &ImageRef,
        media_type: Option<&str>,
        expected: Option<&Digest>,
    ) -> Result<RawManifest, StageError> {
        let what = || format!("{r}: fetching manifest");
        let (bytes, _digest) = self
            .answered(what, async {
                let reference = self.prepare(r).await?;
                let auth = self.auth_for(r.registry());
                let pulled = self
                    .client
                    .pull_manifest_raw(&reference, &auth, ACCEPTED_MANIFEST_TYPES)
                    .await;
                self.pass_on_ratelimit(r, &reference);
                pulled.map_err(|e| match e {
                    OciDistributionError::ManifestTooLarge { size, limit } => {
                        StageError::invalid(too_large(r, size, limit))
                    }
                    e => classify(&what(), e, r),
                })
            })
            .await?;
        RawManifest::new(media_type, bytes, expected.or(r.digest())).map_err(|e| {
            let kind = match e {
                image_syncer_core::manifest::ManifestError::Digest { .. } => ErrorKind::Integrity,
                _ => ErrorKind::Invalid,
            };
            StageError::new(kind, format!("{r}: {e}"))
        })
    }

    async fn head_manifest(&self, r: &ImageRef) -> Result<Option<Digest>, StageError> {
        let what = || format!("{r}: looking up manifest");
        let found = self
            .answered(what, async {
                let reference = self.prepare(r).await?;
                let auth = self.auth_for(r.registry());
                let found = match self.client.fetch_manifest_digest(&reference, &auth).await {
                    Err(OciDistributionError::ManifestTooLarge { size, limit }) => {
                        return Err(StageError::invalid(too_large(r, size, limit)))
                    }
                    found => found,
                };
                self.pass_on_ratelimit(r, &reference);
                Ok(found)
            })
            .await?;
        match found {
            Ok(d) => d.parse().map(Some).map_err(|e| {
                StageError::invalid(format!("{r}: registry answered an invalid digest: {e}"))
            }),
            Err(e) => {
                let e = classify(&what(), e, r);
                if e.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The tags of `repository` (its tag or digest, if any, is ignored), in
    /// the registry's order: `GET /v2/<name>/tags/list?n=1000`, then each
    /// page its `Link: <...>; rel="next"` header names, until one names none.
    pub async fn list_tags(&self, repository: &ImageRef) -> Result<Vec<String>, StageError> {
        self.list_tags_paged(repository, TAGS_PAGE_SIZE).await
    }

    /// [`OciRegistry::list_tags`], asking `page_size` tags per page.
    ///
    /// A `Link` target may be relative; it is resolved against the URL of the
    /// page that sent it and refused when it leads to another scheme, host or
    /// port. Bounded: at most [`MAX_TAG_PAGES`] pages and [`MAX_TAGS`] tags;
    /// a page that names itself or an earlier page as next, or that has no
    /// tag but names a next one, is refused (never a loop). Each page must
    /// come in full within `readTimeoutSeconds`. Errors are classified as for
    /// manifests: a repository the registry does not know is `NotFound`.
    pub async fn list_tags_paged(
        &self,
        repository: &ImageRef,
        page_size: usize,
    ) -> Result<Vec<String>, StageError> {
        let what = || format!("{repository}: listing tags");
        let refuse = |why: String| StageError::invalid(format!("{}: {why}", what()));
        let mut tags: Vec<String> = Vec::new();
        let mut next: Option<String> = None;
        // Every page asked, as asked: a link back to one is a loop.
        let mut asked_before = std::collections::HashSet::new();
        for page in 1..=MAX_TAG_PAGES {
            let (answer, asked, link) = self
                .answered(what, async {
                    let reference = self.prepare(repository).await?;
                    let auth = self.auth_for(repository.registry());
                    let listed = self
                        .client
                        .list_tags_page(
                            &reference,
                            &auth,
                            Some(page_size.max(1)),
                            next.as_deref(),
                            MAX_TAG_PAGE_BYTES,
                        )
                        .await;
                    listed.map_err(|e| match e {
                        OciDistributionError::TagListTooLarge { limit } => refuse(format!(
                            "page {page} of the tag list is larger than {}",
                            image_syncer_core::manifest::size_for_people(limit)
                        )),
                        e => classify(&what(), e, repository),
                    })
                })
                .await?;
            let count = answer.tags.len();
            if tags.len() + count > MAX_TAGS {
                return Err(refuse(format!(
                    "the registry lists more than {MAX_TAGS} tags; not read further"
                )));
            }
            tags.extend(answer.tags);
            let Some(target) = link.as_deref().and_then(next_link) else {
                return Ok(tags);
            };
            let url = resolve_link(&asked, target).map_err(refuse)?;
            if count == 0 {
                return Err(refuse(format!(
                    "page {page} of the tag list has no tag but names a next page `{target}`"
                )));
            }
            asked_before.insert(asked);
            if asked_before.contains(&url) {
                return Err(refuse(format!(
                    "page {page} of the tag list names itself or an earlier page as next (`{target}`); not followed"
                )));
            }
            next = Some(url);
        }
        Err(refuse(format!(
            "the tag list runs over more than {MAX_TAG_PAGES} pages; not read further"
        )))
    }

    /// The referrers of `digest` in `repository` (its tag or digest, if any,
    /// is ignored) through the OCI 1.1 referrers API,
    /// `GET /v2/<name>/referrers/<digest>`: the `manifests` of the image
    /// index it answers, as served (`artifactType`, `annotations`), in its
    /// order. `None` when the registry answered 404: it has no referrers API
    /// (one that has it answers an empty index for a digest without
    /// referrers); the referrers tag schema then applies. Never falls back
    /// by itself.
    ///
    /// Bounded like manifests: an answer over `maxManifestBytes` is refused
    /// before it is read whole, and it must come in full within
    /// `readTimeoutSeconds`. An answer that is not an OCI image index is
    /// `Invalid`; refusals and failures are classified as for manifests
    /// (401/403 `Unauthorized`, 429/5xx transient with pushback and
    /// `Retry-After`).
    pub async fn referrers(
        &self,
        repository: &ImageRef,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, StageError> {
        let r = repository.with_digest(digest.clone());
        let what = || format!("{r}: listing referrers");
        let answer = self
            .answered(what, async {
                let reference = self.prepare(&r).await?;
                let auth = self.auth_for(r.registry());
                self.client
                    .pull_referrers_raw(&reference, &auth, self.max_manifest)
                    .await
                    .map_err(|e| match e {
                        OciDistributionError::ManifestTooLarge { size, limit } => {
                            StageError::invalid(format!(
                                "{}: {}",
                                what(),
                                referrers_too_large(r.registry(), size, limit)
                            ))
                        }
                        e => classify(&what(), e, &r),
                    })
            })
            .await?;
        let Some((body, content_type)) = answer else {
            debug!(%r, "no referrers API (404)");
            return Ok(None);
        };
        parse_referrers(&body, content_type.as_deref())
            .map(Some)
            .map_err(|why| {
                StageError::invalid(format!(
                    "{}: registry {} answered something other than an OCI image index: {why}",
                    what(),
                    r.registry()
                ))
            })
    }

    /// `op`, a request with a short answer, failed as transient when the
    /// registry has not answered it in full within the idle limit.
    async fn answered<T>(
        &self,
        what: impl FnOnce() -> String,
        op: impl std::future::Future<Output = Result<T, StageError>>,
    ) -> Result<T, StageError> {
        match tokio::time::timeout(self.idle, op).await {
            Ok(r) => r,
            Err(_) => Err(StageError::transient(format!(
                "{}: no answer from the registry within {} s (readTimeoutSeconds)",
                what(),
                self.idle.as_secs()
            ))
            .with_pushback(Pushback::Silent)),
        }
    }

    async fn stream_blob(&self, r: &ImageRef, d: &Descriptor) -> Result<ByteStream, StageError> {
        let what = format!("{r}: fetching blob {}", d.digest);
        let stream = self
            .answered(|| what.clone(), async {
                let reference = self.prepare(r).await?;
                self.client
                    .pull_blob_stream(&reference, &oci_descriptor(d))
                    .await
                    .map_err(|e| classify(&what, e, r))
            })
            .await?;
        let expected = d.digest.clone();
        // oci-client verifies on the fly too; its verdict becomes core's
        // ContentMismatch so that it is a safety stop like ours.
        let stream = Box::pin(stream.stream.map(move |item| {
            item.map_err(|e| {
                let actual = match e.get_ref().and_then(|i| i.downcast_ref::<DigestError>()) {
                    Some(DigestError::VerificationError { actual, .. }) => {
                        actual.parse::<Digest>().ok()
                    }
                    _ => None,
                };
                match actual {
                    Some(actual) => std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        ContentMismatch::Digest {
                            expected: expected.clone(),
                            actual,
                        },
                    ),
                    None => e,
                }
            })
        }));
        Ok(idle_limited(stream, self.idle, what))
    }
}

/// The target of the `rel="next"` link in a `Link` header value (RFC 8288:
/// `<target>; rel="next"`, several links separated by commas).
fn next_link(header: &str) -> Option<&str> {
    let mut rest = header;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let end = after.find('>')?;
        let target = &after[..end];
        let params = &after[end + 1..];
        let params = &params[..params.find('<').unwrap_or(params.len())];
        let is_next = params.split([';', ',']).any(|p| match p.split_once('=') {
            Some((k, v)) => {
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            }
            None => false,
        });
        if is_next {
            return Some(target.trim());
        }
        rest = &after[end + 1..];
    }
    None
}

/// `link` (absolute, or relative to `page`, the URL that sent it) as an
/// absolute URL on the same scheme, host and port as `page`; another is
/// refused, not followed.
fn resolve_link(page: &str, link: &str) -> Result<String, String> {
    let base =
        url::Url::parse(page).map_err(|e| format!("cannot read the page URL `{page}`: {e}"))?;
    let url = base
        .join(link)
        .map_err(|e| format!("the registry's next-page link `{link}` is not a URL: {e}"))?;
    if url.scheme() != base.scheme()
        || url.host_str() != base.host_str()
        || url.port_or_known_default() != base.port_or_known_default()
    {
        return Err(format!(
            "the registry's next-page link `{link}` leads away from {}; not followed",
            base.host_str()
                .map(|h| match base.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_string(),
                })
                .unwrap_or_default()
        ));
    }
    Ok(url.to_string())
}

/// Whether an upload that has sent `sent` of `size` bytes, the last of them
/// `quiet` ago, is stalled, and why. While bytes remain, the client can hand
/// over nothing only when the registry stopped reading (the socket buffers
/// are full): `idle` of that is a stall. Once everything is handed over, the
/// socket buffers (megabytes) still drain to the registry, which may then
/// move the blob into storage before it answers; that wait is allowed `idle`
/// plus a second per MiB of the blob.
fn upload_stalled(quiet: Duration, sent: u64, size: u64, idle: Duration) -> Option<String> {
    if sent < size {
        (quiet >= idle).then(|| {
            format!(
                "the registry took no byte for {} s (readTimeoutSeconds)",
                idle.as_secs()
            )
        })
    } else {
        let allowed = idle + Duration::from_secs(size / (1 << 20));
        (quiet >= allowed).then(|| {
            format!(
                "no answer from the registry {} s after the last byte (readTimeoutSeconds + 1 s per MiB)",
                allowed.as_secs()
            )
        })
    }
}

/// `stream`, ended by a `TimedOut` error when no chunk comes for `limit`.
fn idle_limited(stream: ByteStream, limit: Duration, what: String) -> ByteStream {
    Box::pin(futures_util::stream::unfold(Some(stream), move |state| {
        let what = what.clone();
        async move {
            let mut stream = state?;
            match tokio::time::timeout(limit, stream.next()).await {
                Ok(Some(item)) => Some((item, Some(stream))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "{what}: the registry sent nothing for {} s (readTimeoutSeconds)",
                            limit.as_secs()
                        ),
                    )),
                    None,
                )),
            }
        }
    }))
}

fn to_auth(c: &Credentials) -> RegistryAuth {
    match c {
        Credentials::Basic { username, password } => {
            RegistryAuth::Basic(username.clone(), password.expose().to_string())
        }
        Credentials::Bearer { token } => RegistryAuth::Bearer(token.expose().to_string()),
    }
}

/// Docker's `config.json` (`DOCKER_CONFIG`, else `~/.docker`), then
/// containers' `auth.json` (`REGISTRY_AUTH_FILE`, ...), through the
/// `docker_credential` crate; anonymous when neither has the registry.
fn docker_config_auth(registry: &str) -> RegistryAuth {
    use docker_credential::DockerCredential;
    let mut servers = vec![registry.to_string()];
    if image_syncer_core::reference::is_docker_hub(registry) {
        servers.push("https://index.docker.io/v1/".into());
    }
    for server in &servers {
        for found in [
            docker_credential::get_credential(server),
            docker_credential::get_podman_credential(server),
        ] {
            match found {
                Ok(DockerCredential::UsernamePassword(u, p)) => return RegistryAuth::Basic(u, p),
                Ok(DockerCredential::IdentityToken(_)) => {
                    // An OAuth refresh token, not a registry credential.
                    tracing::warn!(%registry, "config.json holds an identity token for this registry; identity tokens are not supported, reading anonymously");
                    return RegistryAuth::Anonymous;
                }
                Err(e) => debug!(%registry, error = %e, "no stored credential"),
            }
        }
    }
    RegistryAuth::Anonymous
}

fn oci_descriptor(d: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size as i64,
        ..Default::default()
    }
}

/// The kind a registry's error code stands for (distribution spec error codes).
fn code_kind(code: &OciErrorCode) -> Option<ErrorKind> {
    match code {
        OciErrorCode::ManifestUnknown
        | OciErrorCode::NameUnknown
        | OciErrorCode::BlobUnknown
        | OciErrorCode::NotFound => Some(ErrorKind::NotFound),
        // The registry hashed what it received and it was not the digest.
        OciErrorCode::DigestInvalid => Some(ErrorKind::Integrity),
        OciErrorCode::Unauthorized | OciErrorCode::Denied => Some(ErrorKind::Unauthorized),
        OciErrorCode::Toomanyrequests => Some(ErrorKind::Transient),
        _ => None,
    }
}

/// Maps an oci-client error to a stage error, keeping the wait a registry
/// asked for with `Retry-After`. Messages never include credentials.
fn classify(context: &str, e: OciDistributionError, r: &ImageRef) -> StageError {
    let kind = kind_of(&e);
    let hint = if kind == ErrorKind::Unauthorized {
        format!(" (registry {} refused access)", r.registry())
    } else {
        String::new()
    };
    let mut error = StageError::new(kind, format!("{context}: {}{hint}", error_chain(&e)));
    if kind == ErrorKind::Unauthorized {
        error = error.with_refused_by(r.registry());
    }
    if kind == ErrorKind::Transient && busy(&e) {
        error = error.with_pushback(Pushback::Busy);
    }
    match &e {
        OciDistributionError::RetryAfter { retry_after, .. } if kind == ErrorKind::Transient => {
            match parse_retry_after(retry_after, std::time::SystemTime::now()) {
                Some(wait) => error.with_retry_after(wait),
                None => {
                    debug!(value = %retry_after, "unreadable Retry-After, using the backoff");
                    error
                }
            }
        }
        _ => error,
    }
}

/// Whether a registry answered "slow down": 429 or 503, or a
/// `TOOMANYREQUESTS` code.
fn busy(e: &OciDistributionError) -> bool {
    use OciDistributionError as E;
    match e {
        E::RetryAfter { source, .. } => busy(source),
        E::ServerError { code, .. } => matches!(code, 429 | 503),
        E::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|x| matches!(x.code, OciErrorCode::Toomanyrequests)),
        E::RequestError(re) => matches!(re.status().map(|s| s.as_u16()), Some(429 | 503)),
        _ => false,
    }
}

/// [`classify`] for a write (a manifest or blob put). The registry's
/// refusal of what we sent (a blob or child it does not see, a digest it
/// computed otherwise: `MANIFEST_BLOB_UNKNOWN`, `BLOB_UNKNOWN`,
/// `DIGEST_INVALID`, `MANIFEST_INVALID`, or any other 400/404) is a
/// consistency failure, never a safety stop: we verified the bytes
/// ourselves, so the registry's view, not the content, is in question.
fn classify_write(context: &str, e: OciDistributionError, r: &ImageRef) -> StageError {
    use OciDistributionError as E;
    let refused = |e: &E| match e {
        E::RegistryError { .. } => true,
        E::ServerError { code, .. } => matches!(code, 400 | 404),
        _ => false,
    };
    let inconsistent = match &e {
        E::RetryAfter { source, .. } => refused(source),
        other => refused(other),
    };
    let mut error = classify(context, e, r);
    if inconsistent
        && matches!(
            error.kind,
            ErrorKind::Integrity | ErrorKind::NotFound | ErrorKind::Invalid
        )
    {
        error.kind = ErrorKind::Consistency;
    }
    error
}

/// "manifest REF is N bytes, over the 4 MiB limit" (or "more than" when the
/// registry declared no size and the body ran past the limit).
fn too_large(r: &ImageRef, size: Option<u64>, limit: usize) -> String {
    match size {
        Some(n) => {
            image_syncer_core::manifest::too_large(&r.to_string(), n, limit) + " (maxManifestBytes)"
        }
        None => format!(
            "manifest {r} is larger than the {} limit (maxManifestBytes)",
            image_syncer_core::manifest::size_for_people(limit)
        ),
    }
}

/// "registry R answered a referrers index of N bytes, over the 4 MiB limit".
fn referrers_too_large(registry: &str, size: Option<u64>, limit: usize) -> String {
    let limit_text = image_syncer_core::manifest::size_for_people(limit);
    match size {
        Some(n) => format!(
            "registry {registry} answered a referrers index of {n} bytes, over the {limit_text} limit (maxManifestBytes)"
        ),
        None => format!(
            "registry {registry} answered a referrers index larger than the {limit_text} limit (maxManifestBytes)"
        ),
    }
}

/// The descriptors of a referrers API answer: an OCI image index
/// (`schemaVersion` 2, media type `application/vnd.oci.image.index.v1+json`
/// in the body or, when the body names none, in `Content-Type`), its
/// `manifests` as served. Why not, otherwise.
fn parse_referrers(body: &[u8], content_type: Option<&str>) -> Result<Vec<Descriptor>, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Index {
        schema_version: u32,
        media_type: Option<String>,
        manifests: Option<Vec<Descriptor>>,
    }
    let index: Index = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if index.schema_version != 2 {
        return Err(format!("schemaVersion {}, not 2", index.schema_version));
    }
    let header = content_type.map(|c| c.split(';').next().unwrap_or_default().trim());
    let Some(media_type) = index.media_type.as_deref().or(header) else {
        return Err("no media type, in the body or in `Content-Type`".into());
    };
    if media_type != image_syncer_core::manifest::OCI_INDEX {
        return Err(format!(
            "media type `{media_type}`, not `{}`",
            image_syncer_core::manifest::OCI_INDEX
        ));
    }
    index
        .manifests
        .ok_or_else(|| "no `manifests` list".to_string())
}

/// The count in a `ratelimit-remaining` value (`76;w=21600`, or `76`).
fn parse_ratelimit_remaining(value: &str) -> Option<u64> {
    value.split(';').next()?.trim().parse().ok()
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date
/// (a date already past means no wait).
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<std::time::Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or_default())
}

/// The kind of an oci-client error.
fn kind_of(e: &OciDistributionError) -> ErrorKind {
    use OciDistributionError as E;
    match e {
        E::RetryAfter { source, .. } => kind_of(source),
        E::ImageManifestNotFoundError(_) => ErrorKind::NotFound,
        E::RegistryError { envelope, .. } => {
            // With several codes in one envelope, the first kind in this order wins.
            let found = |k| {
                envelope
                    .errors
                    .iter()
                    .any(|x| code_kind(&x.code) == Some(k))
            };
            [
                ErrorKind::NotFound,
                ErrorKind::Integrity,
                ErrorKind::Unauthorized,
                ErrorKind::Transient,
            ]
            .into_iter()
            .find(|k| found(*k))
            .unwrap_or(ErrorKind::Invalid)
        }
        E::ServerError { code: 404, .. } => ErrorKind::NotFound,
        E::ServerError {
            code: 400, message, ..
        } if message.contains("DIGEST_INVALID") => ErrorKind::Integrity,
        E::ServerError {
            code: 401 | 403, ..
        } => ErrorKind::Unauthorized,
        E::ServerError { code, .. } if *code >= 500 || *code == 429 || *code == 408 => {
            ErrorKind::Transient
        }
        E::ServerError { .. } => ErrorKind::Invalid,
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => ErrorKind::Unauthorized,
        E::DigestError(_) => ErrorKind::Integrity,
        E::IoError(io) if ContentMismatch::from_io(io).is_some() => ErrorKind::Integrity,
        E::UnsupportedMediaTypeError(_)
        | E::UnsupportedSchemaVersionError(_)
        | E::ManifestParsingError(_)
        | E::VersionedParsingError(_)
        | E::JsonError(_)
        | E::SpecViolationError(_) => ErrorKind::Invalid,
        E::RequestError(re) if matches!(re.status().map(|s| s.as_u16()), Some(401 | 403)) => {
            ErrorKind::Unauthorized
        }
        _ => ErrorKind::Transient,
    }
}

#[async_trait]
impl Source for OciRegistry {
    async fn list_tags(&self, repository: &ImageRef) -> Result<Vec<String>, StageError> {
        OciRegistry::list_tags(self, repository).await
    }

    async fn resolve(&self, reference: &ImageRef) -> Result<RawManifest, StageError> {
        self.pull_manifest(reference, None, None).await
    }

    async fn digest(&self, reference: &ImageRef) -> Result<Digest, StageError> {
        self.head_manifest(reference)
            .await?
            .ok_or_else(|| StageError::not_found(format!("{reference}: manifest unknown")))
    }

    async fn fetch_manifest(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<RawManifest, StageError> {
        let r = repository.with_digest(descriptor.digest.clone());
        self.pull_manifest(&r, Some(&descriptor.media_type), Some(&descriptor.digest))
            .await
    }

    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        self.stream_blob(repository, descriptor).await
    }

    fn max_manifest_bytes(&self) -> usize {
        self.max_manifest
    }

    async fn referrers(
        &self,
        repository: &ImageRef,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, StageError> {
        OciRegistry::referrers(self, repository, digest).await
    }
}

#[async_trait]
impl Sink for OciRegistry {
    async fn referrers(
        &self,
        repository: &ImageRef,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, StageError> {
        OciRegistry::referrers(self, repository, digest).await
    }

    async fn manifest_digest(&self, target: &ImageRef) -> Result<Option<Digest>, StageError> {
        self.head_manifest(target).await
    }

    async fn fetch_manifest(&self, target: &ImageRef) -> Result<Option<RawManifest>, StageError> {
        match self.pull_manifest(target, None, None).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        self.stream_blob(repository, descriptor).await
    }

    async fn has_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<bool, StageError> {
        let what = || format!("{repository}: checking blob {}", descriptor.digest);
        self.answered(what, async {
            let reference = self.prepare(repository).await?;
            self.client
                .blob_exists(&reference, &descriptor.digest.to_string())
                .await
                .map_err(|e| classify(&what(), e, repository))
        })
        .await
    }

    async fn mount_blob(
        &self,
        from: &ImageRef,
        to: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<bool, StageError> {
        if from.registry() != to.registry() {
            return Ok(false);
        }
        let what = || format!("{to}: mounting blob {} from {from}", descriptor.digest);
        let mounted = self
            .answered(what, async {
                let target = self.prepare(to).await?;
                let source = self.reference(from);
                Ok(self
                    .client
                    .mount_blob(&target, &source, &descriptor.digest.to_string())
                    .await)
            })
            .await?;
        match mounted {
            Ok(()) => Ok(true),
            // A registry that does not mount (or not across these repositories)
            // answers 202 and opens an upload instead: transfer the blob.
            Err(e) => {
                debug!(error = %e, digest = %descriptor.digest, "cross-repository mount refused");
                Ok(false)
            }
        }
    }

    async fn begin_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<Upload, StageError> {
        let what = || {
            format!(
                "{repository}: blob {}: opening an upload",
                descriptor.digest
            )
        };
        self.answered(what, async {
            let reference = self.prepare(repository).await?;
            self.client
                .begin_push_session(&reference)
                .await
                .map(|location| Upload(Some(location)))
                .map_err(|e| classify_write(&what(), e, repository))
        })
        .await
    }

    async fn put_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        content: ByteStream,
    ) -> Result<(), StageError> {
        self.put_blob_into(repository, descriptor, Upload(None), content)
            .await
    }

    async fn put_blob_into(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        upload: Upload,
        content: ByteStream,
    ) -> Result<(), StageError> {
        let context = format!("{repository}: blob {}", descriptor.digest);
        let reference = self
            .answered(|| format!("{context}: upload"), async {
                self.prepare(repository).await
            })
            .await?;
        // Remember a content error of the stream: oci-client wraps it.
        let failure: Arc<Mutex<Option<StageError>>> = Arc::default();
        let seen = failure.clone();
        let ctx2 = context.clone();
        // When the client last took a chunk (ms since `started`), and how
        // many bytes it took: see `upload_stalled`.
        let started = tokio::time::Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let (last_w, sent_w) = (last.clone(), sent.clone());
        let stream = content.map(move |item: std::io::Result<Bytes>| {
            last_w.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            if let Ok(chunk) = &item {
                sent_w.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            item.map_err(|e| {
                *seen.lock().unwrap() = Some(StageError::from_io(&ctx2, &e));
                OciDistributionError::IoError(e)
            })
        });
        let digest = descriptor.digest.to_string();
        let size = Some(descriptor.size);
        let push = async {
            match upload.0 {
                Some(location) => {
                    self.client
                        .push_blob_stream_at(location, &reference, stream, &digest, size)
                        .await
                }
                None => {
                    self.client
                        .push_blob_stream(&reference, stream, &digest, size)
                        .await
                }
            }
        };
        tokio::pin!(push);
        let check = (self.idle / 4).max(Duration::from_millis(100));
        // Bounded: each turn either ends the upload or finds it moved within
        // the idle limit.
        let result = loop {
            tokio::select! {
                r = &mut push => break r,
                _ = tokio::time::sleep(check) => {
                    let quiet = started.elapsed().saturating_sub(Duration::from_millis(
                        last.load(Ordering::Relaxed),
                    ));
                    let sent = sent.load(Ordering::Relaxed);
                    if let Some(why) = upload_stalled(quiet, sent, descriptor.size, self.idle) {
                        return Err(StageError::transient(format!("{context}: upload: {why}"))
                            .with_pushback(Pushback::Silent));
                    }
                }
            }
        };
        if let Some(e) = failure.lock().unwrap().take() {
            return Err(e);
        }
        result
            .map(|url| debug!(%url, "blob pushed"))
            .map_err(|e| classify_write(&format!("{context}: upload"), e, repository))
    }

    async fn put_manifest(
        &self,
        repository: &ImageRef,
        target: &ManifestTarget,
        manifest: &RawManifest,
    ) -> Result<(), StageError> {
        let r = match target {
            ManifestTarget::Tag(t) => repository.with_tag(t),
            ManifestTarget::Digest => repository.with_digest(manifest.digest.clone()),
        };
        let content_type = manifest.media_type.parse().map_err(|_| {
            StageError::invalid(format!(
                "{r}: media type `{}` is not a valid header",
                manifest.media_type
            ))
        })?;
        let what = || format!("{r}: pushing manifest {}", manifest.digest);
        self.answered(what, async {
            let reference = self.prepare(&r).await?;
            self.client
                .push_manifest_raw(&reference, manifest.bytes.clone(), content_type)
                .await
                .map(|url| debug!(%url, "manifest pushed"))
                .map_err(|e| classify_write(&what(), e, &r))
        })
        .await
    }
}

fn build(
    kind: StageKind,
    config: &ConfigValue,
    registries: &Registries,
) -> Result<Arc<OciRegistry>, BuildError> {
    let config: OciConfig = typed_config(kind, "oci", config)?;
    OciRegistry::new(&config, registries)
        .map(Arc::new)
        .map_err(|message| BuildError::Setup {
            kind,
            plugin: "oci".into(),
            message,
        })
}

fn build_source(config: &ConfigValue, cx: &SourceContext) -> Result<Arc<dyn Source>, BuildError> {
    Ok(build(StageKind::Source, config, &cx.registries)?)
}

fn build_sink(config: &ConfigValue, cx: &SinkContext) -> Result<Arc<dyn Sink>, BuildError> {
    Ok(build(StageKind::Sink, config, &cx.registries)?)
}

image_syncer_core::inventory::submit! {
    StagePlugin {
        name: "oci",
        description: "Pulls from OCI/Docker registries, with the credentials found for each (definition, Docker or containers config), else anonymously",
        config: ConfigDoc::of::<OciConfig>(),
        transport: None,
        factory: || Factory::source(build_source),
    }
}

image_syncer_core::inventory::submit! {
    StagePlugin {
        name: "oci",
        description: "Pushes to an OCI/Docker registry with the target credentials: blobs first, manifests last",
        config: ConfigDoc::of::<OciConfig>(),
        transport: None,
        factory: || Factory::sink(build_sink),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn an_upload_stalls_on_silence_with_room_for_the_buffered_tail() {
        let idle = Duration::from_secs(60);
        let s = Duration::from_secs;
        // Bytes remain: silence up to the limit is fine, at it a stall.
        assert_eq!(upload_stalled(s(59), 10, 100, idle), None);
        assert_eq!(
            upload_stalled(s(60), 10, 100, idle).as_deref(),
            Some("the registry took no byte for 60 s (readTimeoutSeconds)")
        );
        // All handed over: a 100 MiB blob may take 60 + 100 s to be answered.
        let size = 100 << 20;
        assert_eq!(upload_stalled(s(159), size, size, idle), None);
        assert_eq!(
            upload_stalled(s(160), size, size, idle).as_deref(),
            Some("no answer from the registry 160 s after the last byte (readTimeoutSeconds + 1 s per MiB)")
        );
    }

    #[test]
    fn ratelimit_remaining_reads_the_count() {
        assert_eq!(parse_ratelimit_remaining("76;w=21600"), Some(76));
        assert_eq!(parse_ratelimit_remaining(" 0 "), Some(0));
        assert_eq!(parse_ratelimit_remaining("lots"), None);
    }

    #[test]
    fn a_refusal_of_our_write_is_a_consistency_failure_not_a_stop() {
        let refused = |code: &str| OciDistributionError::ServerError {
            code: 400,
            url: "https://registry.example/v2/team/app/manifests/1".into(),
            message: format!("{{\"errors\":[{{\"code\":\"{code}\"}}]}}"),
        };
        for code in [
            "DIGEST_INVALID",
            "MANIFEST_BLOB_UNKNOWN",
            "MANIFEST_INVALID",
        ] {
            let e = classify_write("pushing", refused(code), &image());
            assert_eq!(e.kind, ErrorKind::Consistency, "{code}");
            assert!(e.message.contains(code), "{}", e.message);
        }
        // The same answer to a read keeps its kind; a 5xx on a write stays transient.
        assert_eq!(
            classify("pulling", refused("DIGEST_INVALID"), &image()).kind,
            ErrorKind::Integrity
        );
        let e = classify_write(
            "pushing",
            OciDistributionError::ServerError {
                code: 503,
                url: "u".into(),
                message: "busy".into(),
            },
            &image(),
        );
        assert_eq!(
            (e.kind, e.pushback),
            (ErrorKind::Transient, Some(Pushback::Busy))
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        // Wed, 21 Oct 2015 07:28:00 GMT
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date already past: no wait.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["soon", "-5", "1.5", ""] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
        assert!(parse_retry_after("120", SystemTime::now()).is_some());
    }

    fn image() -> ImageRef {
        ImageRef::parse("registry.example/team/app:1").unwrap()
    }

    #[test]
    fn a_referrers_answer_must_be_an_oci_index() {
        let d = "sha256:0000000000000000000000000000000000000000000000000000000000000001";
        let listed = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":7,"artifactType":"application/example","annotations":{{"a":"b"}}}}]}}"#
        );
        let found = parse_referrers(listed.as_bytes(), None).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].artifact_type.as_deref(),
            Some("application/example")
        );
        assert_eq!(found[0].annotations.as_ref().unwrap()["a"], "b");
        // No media type in the body: the header's, parameters aside.
        let bare = r#"{"schemaVersion":2,"manifests":[]}"#;
        let index = "application/vnd.oci.image.index.v1+json; charset=utf-8";
        assert_eq!(parse_referrers(bare.as_bytes(), Some(index)), Ok(vec![]));
        let refused: Vec<String> = [
            (bare, None),
            (bare, Some("application/json")),
            (r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}"#, Some(index)),
            (r#"{"schemaVersion":1,"manifests":[]}"#, Some(index)),
            (r#"{"schemaVersion":2}"#, Some(index)),
            ("404 page not found", Some(index)),
        ]
        .iter()
        .map(|(body, ct)| parse_referrers(body.as_bytes(), *ct).unwrap_err())
        .collect();
        insta::assert_snapshot!(refused.join("\n"), @r"
        no media type, in the body or in `Content-Type`
        media type `application/json`, not `application/vnd.oci.image.index.v1+json`
        media type `application/vnd.oci.image.manifest.v1+json`, not `application/vnd.oci.image.index.v1+json`
        schemaVersion 1, not 2
        no `manifests` list
        invalid type: integer `404`, expected struct Index at line 1 column 3
        ");
    }

    fn too_many(retry_after: &str) -> OciDistributionError {
        OciDistributionError::RetryAfter {
            retry_after: retry_after.into(),
            source: Box::new(OciDistributionError::ServerError {
                code: 429,
                url: "https://registry.example/v2/team/app/manifests/1".into(),
                message: "slow down".into(),
            }),
        }
    }

    #[test]
    fn a_429_keeps_the_wait_the_registry_asked_for() {
        let e = classify(
            "registry.example/team/app:1: fetching manifest",
            too_many("7"),
            &image(),
        );
        assert_eq!(e.kind, ErrorKind::Transient);
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(
            e.message,
            "registry.example/team/app:1: fetching manifest: Server error: url https://registry.example/v2/team/app/manifests/1, code: 429, message: slow down (the registry asks to retry after 7)"
        );
        // An unreadable value falls back to the backoff, still retried.
        let e = classify("x", too_many("later"), &image());
        assert_eq!((e.kind, e.retry_after), (ErrorKind::Transient, None));
    }

    #[test]
    fn a_retry_after_on_a_refusal_is_not_a_reason_to_retry() {
        let e = OciDistributionError::RetryAfter {
            retry_after: "5".into(),
            source: Box::new(OciDistributionError::ServerError {
                code: 403,
                url: "u".into(),
                message: "denied".into(),
            }),
        };
        let e = classify("x", e, &image());
        assert_eq!((e.kind, e.retry_after), (ErrorKind::Unauthorized, None));
    }

    #[test]
    fn a_refusal_of_access_names_the_registry_in_a_field() {
        let denied = |code| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: "denied".into(),
        };
        for code in [401, 403] {
            let e = classify("x", denied(code), &image());
            assert_eq!(e.kind, ErrorKind::Unauthorized);
            assert_eq!(e.refused_by.as_deref(), Some("registry.example"));
            let e = classify_write("x", denied(code), &image());
            assert_eq!(e.refused_by.as_deref(), Some("registry.example"));
        }
        // Any other failure names no registry as refusing.
        for code in [404, 429, 500] {
            assert_eq!(classify("x", denied(code), &image()).refused_by, None);
        }
    }

    #[test]
    fn next_link_finds_rel_next_among_links() {
        let cases = [
            r#"</v2/app/tags/list?last=t099&n=100>; rel="next""#,
            r#"<http://r.example/v2/app/tags/list?n=2&last=b>; rel=next"#,
            r#"</v2/a?x=1>; rel="prev", </v2/a?x=2>; rel="next""#,
            r#"</v2/a?x=1>; rel="prev first", </v2/a?x=2>; title="x"; REL="Next Last""#,
            r#"</v2/a?x=1>; rel="prev""#,
            r#"</v2/a?x=1>"#,
            r#"rel="next""#,
            "",
        ];
        let found: Vec<String> = cases
            .iter()
            .map(|h| format!("{h} -> {:?}", next_link(h)))
            .collect();
        insta::assert_snapshot!(found.join("\n"), @r#"
        </v2/app/tags/list?last=t099&n=100>; rel="next" -> Some("/v2/app/tags/list?last=t099&n=100")
        <http://r.example/v2/app/tags/list?n=2&last=b>; rel=next -> Some("http://r.example/v2/app/tags/list?n=2&last=b")
        </v2/a?x=1>; rel="prev", </v2/a?x=2>; rel="next" -> Some("/v2/a?x=2")
        </v2/a?x=1>; rel="prev first", </v2/a?x=2>; title="x"; REL="Next Last" -> Some("/v2/a?x=2")
        </v2/a?x=1>; rel="prev" -> None
        </v2/a?x=1> -> None
        rel="next" -> None
         -> None
        "#);
    }

    #[test]
    fn a_link_resolves_against_the_page_and_stays_on_its_host() {
        let page = "https://r.example:5000/v2/app/tags/list?n=100";
        let resolved: Vec<String> = [
            "/v2/app/tags/list?last=t1&n=100",
            "list?last=t1",
            "https://r.example:5000/v2/app/tags/list?last=t1",
            "https://other.example:5000/v2/app/tags/list?last=t1",
            "https://r.example/v2/app/tags/list?last=t1",
            "http://r.example:5000/v2/app/tags/list?last=t1",
            "//evil.example/v2/x",
        ]
        .iter()
        .map(|l| format!("{l} -> {:?}", resolve_link(page, l)))
        .collect();
        insta::assert_snapshot!(resolved.join("\n"));
    }
}
