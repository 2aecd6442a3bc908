//! The connection to registries: [`OciRegistry`] (what the source and the
//! sink are), and the process's pool of oci-client `Client`s, keyed by
//! what each is built from ([`ClientKey`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use image_syncer_core::context::{Credentials, Registries};
use image_syncer_core::digest::Digest;
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::StageError;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::errors::SetupError;
use crate::quirks::RegistryKind;
use crate::OciConfig;

/// A connection to registries: source and sink share this.
pub struct OciRegistry {
    pub(crate) client: Client,
    /// `maxManifestBytes`.
    pub(crate) max_manifest: usize,
    /// How long a registry may stay silent (`readTimeoutSeconds`).
    pub(crate) idle: Duration,
    /// How each registry is reached (endpoints, plain HTTP, credentials).
    pub(crate) registries: Registries,
    /// Credentials found in Docker's or containers' config, per registry.
    pub(crate) discovered: Mutex<HashMap<String, RegistryAuth>>,
    /// Per registry, the generation of the cloud login last given to the
    /// client (`cloud.rs`): a renewed one replaces it.
    pub(crate) cloud_given: Mutex<HashMap<String, u64>>,
}

/// Everything an oci-client `Client` is built from, and nothing else: stages
/// whose keys are equal share one client, and with it connections, tokens,
/// the registries' challenges and the (costly) loading of the system's root
/// certificates. Secrets are in it only as digests.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ClientKey {
    /// Every host reached over plain HTTP, as connected to (after endpoint
    /// mapping).
    insecure: BTreeSet<String>,
    monolithic_push: bool,
    max_manifest_bytes: usize,
    connect_timeout_seconds: u64,
    /// The target registry and a digest of the credentials given for it:
    /// a client keeps the tokens it got with them.
    target: Option<(String, Digest)>,
    /// Digests of the extra CA certificates, in the order given.
    ca_certificates: Vec<Digest>,
}

impl ClientKey {
    /// The key of the client for `config` and `cx`.
    pub(crate) fn of(config: &OciConfig, cx: &Registries) -> ClientKey {
        let mut insecure = BTreeSet::new();
        for host in cx.known_hosts() {
            let (endpoint, is_insecure) = cx.endpoint_for(host);
            if is_insecure {
                insecure.insert(endpoint);
            }
        }
        let target = cx.target.as_ref().map(|(host, credentials)| {
            let secret = match credentials {
                Credentials::Basic { username, password } => {
                    format!("basic\0{username}\0{}", password.expose())
                }
                Credentials::Bearer { token } => format!("bearer\0{}", token.expose()),
            };
            (host.clone(), Digest::sha256_of(secret.as_bytes()))
        });
        ClientKey {
            insecure,
            monolithic_push: config.monolithic_push,
            max_manifest_bytes: config.max_manifest_bytes,
            connect_timeout_seconds: config.connect_timeout_seconds,
            target,
            ca_certificates: cx
                .ca_certificates
                .iter()
                .map(|(_, pem)| Digest::sha256_of(pem))
                .collect(),
        }
    }
}

/// Clients by [`ClientKey`]. The source and the sink of a run are built
/// apart, from their own contexts, so the pool the plugin uses is the
/// process's ([`CLIENTS`]).
pub(crate) struct ClientPool {
    clients: Mutex<BTreeMap<ClientKey, Client>>,
}

impl ClientPool {
    pub(crate) const fn new() -> ClientPool {
        ClientPool {
            clients: Mutex::new(BTreeMap::new()),
        }
    }

    /// The client for `key`: the pool's, else the one `build` makes, which
    /// the pool then keeps (a failed build is not kept).
    pub(crate) fn get_or_build<E>(
        &self,
        key: ClientKey,
        build: impl FnOnce() -> Result<Client, E>,
    ) -> Result<Client, E> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = build()?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// How many clients the pool holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.clients.lock().unwrap().len()
    }
}

/// The process's clients.
static CLIENTS: ClientPool = ClientPool::new();

/// A new client for `config` and `cx`.
fn build_client(
    config: &OciConfig,
    cx: &Registries,
    key: &ClientKey,
) -> Result<Client, SetupError> {
    let client_config = ClientConfig {
        protocol: ClientProtocol::HttpsExcept(key.insecure.iter().cloned().collect()),
        use_monolithic_push: config.monolithic_push,
        connect_timeout: Some(Duration::from_secs(config.connect_timeout_seconds.max(1))),
        // No `read_timeout` here: reqwest counts it from the start of a
        // request until its answer, so it would cut every upload longer
        // than the limit. Silence is watched per operation instead
        // (`transfer.rs`: `answered`, `idle_limited`, `upload`).
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
    let mut client = Client::try_from(client_config).map_err(|source| SetupError::Client {
        ca_files: cx.ca_certificates.iter().map(|(f, _)| f.clone()).collect(),
        source,
    })?;
    client.max_manifest_bytes = Some(config.max_manifest_bytes);
    Ok(client)
}

impl OciRegistry {
    /// The source or sink for `config`, reaching registries as `cx` says,
    /// on the process's client for them (one per distinct `ClientKey`: what
    /// the client is built from).
    pub fn new(config: &OciConfig, cx: &Registries) -> Result<OciRegistry, SetupError> {
        let key = ClientKey::of(config, cx);
        let client = CLIENTS.get_or_build(key.clone(), || build_client(config, cx, &key))?;
        Ok(OciRegistry {
            client,
            max_manifest: config.max_manifest_bytes,
            idle: Duration::from_secs(config.read_timeout_seconds.max(1)),
            registries: cx.clone(),
            discovered: Default::default(),
            cloud_given: Default::default(),
        })
    }

    /// The kind of the software answering for `registry`: that of the host
    /// connected to (its `registries:` endpoint, else itself).
    pub fn kind(&self, registry: &str) -> RegistryKind {
        RegistryKind::of(&self.registries.endpoint_for(registry).0)
    }

    /// The oci-client reference for `r` (tag or digest as given), connected
    /// through the configured endpoint, else to the host serving the
    /// registry's API ([`RegistryKind::api_host`]).
    pub(crate) fn reference(&self, r: &ImageRef) -> Reference {
        let registry = r.registry().to_string();
        let repository = r.repository();
        let (endpoint, _) = self.registries.endpoint_for(&registry);
        let host = if endpoint == registry {
            RegistryKind::of(&registry).api_host(&registry).to_string()
        } else {
            registry
        };
        let mut reference = match (r.digest(), r.tag()) {
            (Some(d), _) => Reference::with_digest(host, repository, d.to_string()),
            (None, Some(t)) => Reference::with_tag(host, repository, t.to_string()),
            (None, None) => Reference::with_tag(host, repository, "latest".into()),
        };
        if endpoint != r.registry() {
            // Requests then carry `?ns=<registry>`.
            reference.set_mirror_registry(endpoint);
        }
        reference
    }

    /// [`OciRegistry::reference`], with the registry's credentials handed
    /// to the client.
    pub(crate) async fn prepare(&self, r: &ImageRef) -> Result<Reference, StageError> {
        Ok(self.prepare_authed(r).await?.0)
    }

    /// [`OciRegistry::prepare`], and the credentials handed over, for the
    /// client calls that take them. A cloud login the client has not been
    /// given yet (the first, or a renewed one) replaces what it holds, and
    /// the tokens it got with it.
    pub(crate) async fn prepare_authed(
        &self,
        r: &ImageRef,
    ) -> Result<(Reference, RegistryAuth), StageError> {
        let reference = self.reference(r);
        let found = self.auth_for(r.registry()).await?;
        let registry = reference.resolve_registry();
        match found.cloud_generation {
            Some(generation) => {
                let given = {
                    let mut given = self.cloud_given.lock().unwrap_or_else(|e| e.into_inner());
                    given.insert(registry.to_string(), generation) == Some(generation)
                };
                if !given {
                    self.client
                        .replace_auth(registry, found.auth.clone())
                        .await;
                }
            }
            None => {
                self.client
                    .store_auth_if_needed(registry, &found.auth)
                    .await
            }
        }
        Ok((reference, found.auth))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_syncer_core::context::{RegistryAccess, Secret};

    fn registries() -> Registries {
        let mut cx = Registries::default();
        cx.hosts.insert(
            "docker.io".into(),
            RegistryAccess::new()
                .with_endpoint("127.0.0.1:5001")
                .with_insecure(true),
        );
        cx.insecure.push("127.0.0.1:5000".into());
        cx
    }

    #[test]
    fn a_client_key_holds_what_the_client_is_built_from_and_no_secret() {
        let config = OciConfig::default();
        let cx = registries();
        let key = ClientKey::of(&config, &cx);
        assert_eq!(
            key.insecure.iter().map(String::as_str).collect::<Vec<_>>(),
            ["127.0.0.1:5000", "127.0.0.1:5001"]
        );
        assert_eq!(ClientKey::of(&config, &cx), key);
        // The read timeout is watched per operation, not by the client.
        let quieter = OciConfig {
            read_timeout_seconds: 5,
            ..OciConfig::default()
        };
        assert_eq!(ClientKey::of(&quieter, &cx), key);
        // Anything the client is built from makes another key.
        let chunked = OciConfig {
            monolithic_push: false,
            ..OciConfig::default()
        };
        assert_ne!(ClientKey::of(&chunked, &cx), key);
        let smaller = OciConfig {
            max_manifest_bytes: 1000,
            ..OciConfig::default()
        };
        assert_ne!(ClientKey::of(&smaller, &cx), key);
        let mut with_target = cx.clone();
        with_target.target = Some((
            "r.example".into(),
            Credentials::Basic {
                username: "bob".into(),
                password: Secret::new("s3cret-password"),
            },
        ));
        let target_key = ClientKey::of(&config, &with_target);
        assert_ne!(target_key, key);
        let mut other_password = with_target.clone();
        other_password.target = Some((
            "r.example".into(),
            Credentials::Basic {
                username: "bob".into(),
                password: Secret::new("another"),
            },
        ));
        assert_ne!(ClientKey::of(&config, &other_password), target_key);
        assert!(!format!("{target_key:?}").contains("s3cret-password"));
        let mut with_ca = cx.clone();
        with_ca.ca_certificates = vec![("ca.pem".into(), b"not a certificate".to_vec())];
        assert_ne!(ClientKey::of(&config, &with_ca), key);
    }

    #[test]
    fn the_pool_builds_one_client_per_key() {
        let pool = ClientPool::new();
        let config = OciConfig::default();
        let cx = registries();
        let key = ClientKey::of(&config, &cx);
        let mut built = 0;
        for _ in 0..3 {
            pool.get_or_build(key.clone(), || {
                built += 1;
                build_client(&config, &cx, &key)
            })
            .unwrap();
        }
        assert_eq!((built, pool.len()), (1, 1));
        // A failed build is not kept: the next asks again.
        let other = ClientKey::of(
            &OciConfig {
                monolithic_push: false,
                ..OciConfig::default()
            },
            &cx,
        );
        let failed: Result<Client, &str> = pool.get_or_build(other.clone(), || Err("no"));
        assert_eq!(failed.err(), Some("no"));
        assert_eq!(pool.len(), 1);
        pool.get_or_build(other.clone(), || build_client(&config, &cx, &other))
            .unwrap();
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn an_unusable_ca_is_a_setup_error_naming_the_file() {
        let mut cx = registries();
        cx.ca_certificates = vec![(
            "ca.pem".into(),
            b"-----BEGIN CERTIFICATE-----\nnot base64 !\n-----END CERTIFICATE-----\n".to_vec(),
        )];
        let e = build_client(
            &OciConfig::default(),
            &cx,
            &ClientKey::of(&OciConfig::default(), &cx),
        )
        .err()
        .expect("refused");
        assert!(
            e.to_string()
                .starts_with("cannot set up the registry client (CA files: ca.pem): "),
            "{e}"
        );
    }

    #[test]
    fn a_reference_connects_to_the_endpoint_or_the_api_host() {
        let config = OciConfig::default();
        let registry = OciRegistry::new(&config, &Registries::default()).unwrap();
        let hub = registry.reference(&ImageRef::parse("busybox:1.36").unwrap());
        assert_eq!(hub.resolve_registry(), "index.docker.io");
        assert_eq!(hub.repository(), "library/busybox");
        let other = registry.reference(&ImageRef::parse("quay.io/p/q@sha256:31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab").unwrap());
        assert_eq!(other.resolve_registry(), "quay.io");
        assert_eq!(registry.kind("quay.io"), RegistryKind::Quay);
        // Through an endpoint: that host, and the kind of what answers there.
        let mirrored = OciRegistry::new(&config, &registries()).unwrap();
        let hub = mirrored.reference(&ImageRef::parse("busybox:1.36").unwrap());
        assert_eq!(hub.resolve_registry(), "127.0.0.1:5001");
        assert_eq!(mirrored.kind("docker.io"), RegistryKind::Unknown);
    }
}
