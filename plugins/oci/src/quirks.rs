//! Registry kinds: the one place where provider-specific behaviour goes.
//!
//! Every registry is spoken to as the OCI distribution spec says, except
//! where a [`RegistryKind`] method says otherwise. A behaviour that differs
//! by provider is a method here, with what is known about each provider in
//! its doc, and the code that acts on it asks the method (never a host name
//! of its own). Cloud credentials ([`RegistryKind::cloud_login`]) hook in
//! here too (the oci plugin's `cloud` module makes them).
//!
//! A kind is chosen from the host only ([`RegistryKind::of`]): the host a
//! reference names for the naming rules ([`RegistryKind::api_host`],
//! [`RegistryKind::credential_keys`]), the host connected to (its
//! `registries:` endpoint, if any) for the behaviour of the software that
//! answers ([`crate::OciRegistry::kind`]).

use image_syncer_core::reference::is_docker_hub;

/// The software or service behind a registry host, as far as image-syncer
/// treats it in any way differently.
///
/// [`RegistryKind::of`] classifies a host by the host names each provider
/// documents. [`Distribution`](RegistryKind::Distribution) and
/// [`Harbor`](RegistryKind::Harbor) run on any host, so a host never says
/// that it is one of them: they are known only from an explicit setting,
/// and there is none yet, so such registries are
/// [`Unknown`](RegistryKind::Unknown) today. Every method answers for
/// `Unknown` what the OCI distribution spec (and so the CNCF distribution
/// registry) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegistryKind {
    /// The CNCF distribution registry (`registry`, Debian's
    /// `docker-registry`), the spec's reference implementation. Never
    /// inferred from a host.
    Distribution,
    /// Docker Hub: `docker.io`, `index.docker.io`, `registry-1.docker.io`.
    /// Official images are `library/<name>` (the core's
    /// `ImageRef::repository` adds `library/`); it sends
    /// `ratelimit-remaining` with manifest answers (read from any registry
    /// that sends it, by the flow control).
    DockerHub,
    /// GitHub Container Registry: `ghcr.io`.
    Ghcr,
    /// Amazon ECR: `<account>.dkr.ecr.<region>.amazonaws.com` (also
    /// `dkr.ecr-fips`, and `.amazonaws.com.cn` in the China regions), and
    /// ECR Public, `public.ecr.aws`.
    Ecr,
    /// Google Artifact Registry: `<location>-docker.pkg.dev`, and Container
    /// Registry's `gcr.io` and `<region>.gcr.io`, which Artifact Registry
    /// now serves.
    Gar,
    /// Azure Container Registry: `<name>.azurecr.io` (`.azurecr.cn`,
    /// `.azurecr.us` in the sovereign clouds).
    Acr,
    /// Red Hat Quay: `quay.io`.
    Quay,
    /// Harbor. Never inferred from a host.
    Harbor,
    /// Any other host: the OCI distribution spec's behaviour.
    Unknown,
}

/// How a cloud registry's own credentials are made: what
/// [`RegistryKind::cloud_login`] answers. The oci plugin's `cloud` module
/// makes them, the last place credentials are looked for (`auth.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudLogin {
    /// ECR's `GetAuthorizationToken` (with AWS credentials) answers a
    /// base64 `AWS:<password>` pair, valid for 12 hours: basic
    /// authentication as user `AWS`.
    EcrAuthorizationToken,
    /// An OAuth 2 access token of Google credentials, as the password of
    /// user `oauth2accesstoken` (GAR and GCR).
    GoogleAccessToken,
    /// An Entra ID (Azure AD) access token, exchanged at the registry's
    /// `POST /oauth2/exchange` for an ACR refresh token, the password of
    /// user `00000000-0000-0000-0000-000000000000`.
    AcrRefreshToken,
}

impl CloudLogin {
    /// The provider's name, as errors and logs give it.
    pub fn provider(self) -> &'static str {
        match self {
            CloudLogin::EcrAuthorizationToken => RegistryKind::Ecr.name(),
            CloudLogin::GoogleAccessToken => RegistryKind::Gar.name(),
            CloudLogin::AcrRefreshToken => RegistryKind::Acr.name(),
        }
    }
}

impl RegistryKind {
    /// Every kind, in declaration order.
    pub const ALL: [RegistryKind; 9] = [
        RegistryKind::Distribution,
        RegistryKind::DockerHub,
        RegistryKind::Ghcr,
        RegistryKind::Ecr,
        RegistryKind::Gar,
        RegistryKind::Acr,
        RegistryKind::Quay,
        RegistryKind::Harbor,
        RegistryKind::Unknown,
    ];

    /// The kind of `host` (`name[:port]`, any case), from the host names
    /// each provider documents (see each variant). Never
    /// [`Distribution`](RegistryKind::Distribution) or
    /// [`Harbor`](RegistryKind::Harbor): those run on any host.
    pub fn of(host: &str) -> RegistryKind {
        let host = host.to_ascii_lowercase();
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host.as_str(),
        };
        let labels: Vec<&str> = name.split('.').collect();
        // `<prefix><suffix>`, with a prefix of one non-empty label.
        let one_label_before = |suffix: &str| {
            name.strip_suffix(suffix)
                .is_some_and(|p| !p.is_empty() && !p.contains('.'))
        };
        if is_docker_hub(name) {
            RegistryKind::DockerHub
        } else if name == "ghcr.io" {
            RegistryKind::Ghcr
        } else if name == "quay.io" {
            RegistryKind::Quay
        } else if name == "public.ecr.aws"
            || matches!(
                labels.as_slice(),
                [account, "dkr", "ecr" | "ecr-fips", region, "amazonaws", "com"]
                | [account, "dkr", "ecr" | "ecr-fips", region, "amazonaws", "com", "cn"]
                    if !account.is_empty() && !region.is_empty()
            )
        {
            RegistryKind::Ecr
        } else if one_label_before("-docker.pkg.dev")
            || name == "gcr.io"
            || one_label_before(".gcr.io")
        {
            RegistryKind::Gar
        } else if [".azurecr.io", ".azurecr.cn", ".azurecr.us"]
            .iter()
            .any(|s| one_label_before(s))
        {
            RegistryKind::Acr
        } else {
            RegistryKind::Unknown
        }
    }

    /// The kind's name, as logged.
    pub fn name(self) -> &'static str {
        match self {
            RegistryKind::Distribution => "distribution",
            RegistryKind::DockerHub => "Docker Hub",
            RegistryKind::Ghcr => "GHCR",
            RegistryKind::Ecr => "ECR",
            RegistryKind::Gar => "GAR",
            RegistryKind::Acr => "ACR",
            RegistryKind::Quay => "Quay",
            RegistryKind::Harbor => "Harbor",
            RegistryKind::Unknown => "unknown",
        }
    }

    /// The host that serves the API of `host` (a host as references name
    /// it, without a `registries:` endpoint): Docker Hub's `docker.io` is
    /// served at `index.docker.io`; every other host serves itself. Token
    /// caches and the flow control's `ratelimit-remaining` are keyed by the
    /// host so reached. (oci-client's `Reference::resolve_registry` maps
    /// `docker.io` the same way; the tests check that the two agree.)
    pub fn api_host(self, host: &str) -> &str {
        match self {
            RegistryKind::DockerHub if host == "docker.io" => "index.docker.io",
            RegistryKind::DockerHub => host,
            RegistryKind::Distribution
            | RegistryKind::Ghcr
            | RegistryKind::Ecr
            | RegistryKind::Gar
            | RegistryKind::Acr
            | RegistryKind::Quay
            | RegistryKind::Harbor
            | RegistryKind::Unknown => host,
        }
    }

    /// The keys under which Docker's `config.json` and containers'
    /// `auth.json` may hold credentials for `host`, in the order tried:
    /// `host`, and for Docker Hub also `https://index.docker.io/v1/`, the
    /// key `docker login` writes for it.
    pub fn credential_keys(self, host: &str) -> Vec<String> {
        match self {
            RegistryKind::DockerHub => {
                vec![host.to_string(), "https://index.docker.io/v1/".to_string()]
            }
            RegistryKind::Distribution
            | RegistryKind::Ghcr
            | RegistryKind::Ecr
            | RegistryKind::Gar
            | RegistryKind::Acr
            | RegistryKind::Quay
            | RegistryKind::Harbor
            | RegistryKind::Unknown => vec![host.to_string()],
        }
    }

    /// Whether blobs are uploaded in one streamed PUT, given the
    /// `monolithicPush` setting: today the setting, for every kind (one
    /// client, and so one upload mode, serves every registry of a stage; a
    /// kind that overrides the setting needs a client of its own from the
    /// pool, `client.rs`).
    ///
    /// What is known: ECR refuses chunked uploads (the first PATCH answers
    /// 201 and later PATCHes are dropped): upload monolithically. GAR has no
    /// PATCH uploads. ACR refuses streaming PUTs over about 20 MB, so large
    /// blobs go there in chunks. The default (`monolithicPush: true`) suits
    /// ECR and GAR.
    pub fn monolithic_push(self, configured: bool) -> bool {
        match self {
            RegistryKind::Distribution
            | RegistryKind::DockerHub
            | RegistryKind::Ghcr
            | RegistryKind::Ecr
            | RegistryKind::Gar
            | RegistryKind::Acr
            | RegistryKind::Quay
            | RegistryKind::Harbor
            | RegistryKind::Unknown => configured,
        }
    }

    /// Whether a blob the target registry already holds in another
    /// repository is mounted (`POST ...?mount=&from=`) before it is
    /// uploaded: today yes, for every kind. A refused mount (answered 202,
    /// an upload opened instead) costs one round trip, then the blob is
    /// uploaded.
    ///
    /// What is known: ECR mounts across repositories only with the
    /// registry's `BLOB_MOUNTING` account setting enabled; GAR never
    /// fulfils a mount (every mount there is a wasted round trip).
    pub fn tries_mounts(self) -> bool {
        match self {
            RegistryKind::Distribution
            | RegistryKind::DockerHub
            | RegistryKind::Ghcr
            | RegistryKind::Ecr
            | RegistryKind::Gar
            | RegistryKind::Acr
            | RegistryKind::Quay
            | RegistryKind::Harbor
            | RegistryKind::Unknown => true,
        }
    }

    /// How this kind's own cloud credentials are made, where it has them
    /// (ECR's `GetAuthorizationToken`, GAR's access tokens as
    /// `oauth2accesstoken`, ACR's refresh-token exchange): used when nothing
    /// else gives credentials for the registry (`auth.rs`).
    pub fn cloud_login(self) -> Option<CloudLogin> {
        match self {
            RegistryKind::Ecr => Some(CloudLogin::EcrAuthorizationToken),
            RegistryKind::Gar => Some(CloudLogin::GoogleAccessToken),
            RegistryKind::Acr => Some(CloudLogin::AcrRefreshToken),
            RegistryKind::Distribution
            | RegistryKind::DockerHub
            | RegistryKind::Ghcr
            | RegistryKind::Quay
            | RegistryKind::Harbor
            | RegistryKind::Unknown => None,
        }
    }
}

impl std::fmt::Display for RegistryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hosts of every documented pattern, and near misses.
    const HOSTS: &[&str] = &[
        "docker.io",
        "index.docker.io",
        "registry-1.docker.io",
        "Docker.IO",
        "docker.io:443",
        "hub.docker.com",
        "ghcr.io",
        "ghcr.io.example",
        "quay.io",
        "quay.io:443",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com",
        "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
        "public.ecr.aws",
        "dkr.ecr.eu-west-1.amazonaws.com",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com.example",
        "s3.eu-west-1.amazonaws.com",
        "europe-west1-docker.pkg.dev",
        "us-docker.pkg.dev",
        "-docker.pkg.dev",
        "evil.example/europe-docker.pkg.dev",
        "a.b-docker.pkg.dev",
        "gcr.io",
        "eu.gcr.io",
        "mirror.gcr.io",
        "notgcr.io",
        "myregistry.azurecr.io",
        "myregistry.azurecr.cn",
        "myregistry.azurecr.us",
        "azurecr.io",
        "mcr.microsoft.com",
        "registry.example",
        "127.0.0.1:5000",
        "localhost:5000",
        "[::1]:5000",
        "harbor.example",
    ];

    #[test]
    fn hosts_are_classified_by_their_documented_patterns() {
        let table: Vec<String> = HOSTS
            .iter()
            .map(|h| format!("{h:<52} {}", RegistryKind::of(h)))
            .collect();
        insta::assert_snapshot!(table.join("\n"), @r"
        docker.io                                            Docker Hub
        index.docker.io                                      Docker Hub
        registry-1.docker.io                                 Docker Hub
        Docker.IO                                            Docker Hub
        docker.io:443                                        Docker Hub
        hub.docker.com                                       unknown
        ghcr.io                                              GHCR
        ghcr.io.example                                      unknown
        quay.io                                              Quay
        quay.io:443                                          Quay
        123456789012.dkr.ecr.eu-west-1.amazonaws.com         ECR
        123456789012.dkr.ecr-fips.us-east-1.amazonaws.com    ECR
        123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn     ECR
        public.ecr.aws                                       ECR
        dkr.ecr.eu-west-1.amazonaws.com                      unknown
        123456789012.dkr.ecr.eu-west-1.amazonaws.com.example unknown
        s3.eu-west-1.amazonaws.com                           unknown
        europe-west1-docker.pkg.dev                          GAR
        us-docker.pkg.dev                                    GAR
        -docker.pkg.dev                                      unknown
        evil.example/europe-docker.pkg.dev                   unknown
        a.b-docker.pkg.dev                                   unknown
        gcr.io                                               GAR
        eu.gcr.io                                            GAR
        mirror.gcr.io                                        GAR
        notgcr.io                                            unknown
        myregistry.azurecr.io                                ACR
        myregistry.azurecr.cn                                ACR
        myregistry.azurecr.us                                ACR
        azurecr.io                                           unknown
        mcr.microsoft.com                                    unknown
        registry.example                                     unknown
        127.0.0.1:5000                                       unknown
        localhost:5000                                       unknown
        [::1]:5000                                           unknown
        harbor.example                                       unknown
        ");
    }

    #[test]
    fn distribution_and_harbor_are_never_inferred_from_a_host() {
        for h in HOSTS {
            assert!(
                !matches!(
                    RegistryKind::of(h),
                    RegistryKind::Distribution | RegistryKind::Harbor
                ),
                "{h}"
            );
        }
    }

    #[test]
    fn each_kind_behaves_as_documented() {
        let table: Vec<String> = RegistryKind::ALL
            .iter()
            .map(|k| {
                format!(
                    "{:<12} api_host(docker.io)={:<15} credential_keys(h)={:?} monolithic_push(true/false)={}/{} tries_mounts={} cloud_login={:?}",
                    k.name(),
                    k.api_host("docker.io"),
                    k.credential_keys("h"),
                    k.monolithic_push(true),
                    k.monolithic_push(false),
                    k.tries_mounts(),
                    k.cloud_login(),
                )
            })
            .collect();
        insta::assert_snapshot!(table.join("\n"), @r#"
        distribution api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/false tries_mounts=true cloud_login=None
        Docker Hub   api_host(docker.io)=index.docker.io credential_keys(h)=["h", "https://index.docker.io/v1/"] monolithic_push(true/false)=true/false tries_mounts=true cloud_login=None
        GHCR         api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/false tries_mounts=true cloud_login=None
        ECR          api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/false tries_mounts=true cloud_login=Some(EcrAuthorizationToken)
        GAR          api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/false tries_mounts=true cloud_login=Some(GoogleAccessToken)
        ACR          api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/false tries_mounts=true cloud_login=Some(AcrRefreshToken)
        Quay         api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/false tries_mounts=true cloud_login=None
        Harbor       api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/false tries_mounts=true cloud_login=None
        unknown      api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/false tries_mounts=true cloud_login=None
        "#);
    }

    /// `api_host` is ours; oci-client maps `docker.io` in
    /// `Reference::resolve_registry` too. The two must agree, or requests
    /// and the token cache would look for different hosts.
    #[test]
    fn the_api_host_agrees_with_oci_client() {
        for h in HOSTS.iter().filter(|h| !h.contains('/')) {
            let kind = RegistryKind::of(h);
            let reference = oci_client::Reference::with_tag(h.to_string(), "r".into(), "t".into());
            assert_eq!(kind.api_host(h), reference.resolve_registry(), "{h}");
        }
        assert_eq!(
            RegistryKind::DockerHub.api_host("docker.io"),
            "index.docker.io"
        );
    }
}
