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

/// A private ECR registry, from its host:
/// `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]` (ECR's own naming
/// rule; ECR Public, `public.ecr.aws`, is not one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcrRegistry {
    /// The AWS account id (the registry id of ECR's API).
    pub account: String,
    /// The AWS region, whose ECR API manages the registry.
    pub region: String,
    /// A FIPS endpoint (`dkr.ecr-fips`): its API is reached at the FIPS
    /// endpoint too.
    pub fips: bool,
}

impl EcrRegistry {
    /// The registry `host` (`name[:port]`, any case) names, if it is a
    /// private ECR registry's host.
    pub fn of(host: &str) -> Option<EcrRegistry> {
        let host = host.to_ascii_lowercase();
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host.as_str(),
        };
        let labels: Vec<&str> = name.split('.').collect();
        match labels.as_slice() {
            [account, "dkr", ecr @ ("ecr" | "ecr-fips"), region, "amazonaws", "com"]
            | [account, "dkr", ecr @ ("ecr" | "ecr-fips"), region, "amazonaws", "com", "cn"]
                if !account.is_empty() && !region.is_empty() =>
            {
                Some(EcrRegistry {
                    account: account.to_string(),
                    region: region.to_string(),
                    fips: *ecr == "ecr-fips",
                })
            }
            _ => None,
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
        } else if name == "public.ecr.aws" || EcrRegistry::of(name).is_some() {
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

    /// The kind of the software that answers for `host` when it is reached
    /// at `endpoint` (its `registries:` endpoint, else `host` itself): the
    /// endpoint's kind, except that a cloud registry's host (ECR, GAR, ACR:
    /// those with a [`RegistryKind::cloud_login`]) reached through an
    /// endpoint that names no provider keeps its own kind. Such a host names
    /// one registry of one service, so another endpoint for it is a private
    /// way into that same service (an AWS PrivateLink endpoint, a proxy),
    /// not other software; a mirror of Docker Hub or Quay, on the other
    /// hand, is other software (a distribution registry, Harbor).
    pub fn answering(host: &str, endpoint: &str) -> RegistryKind {
        let reached = RegistryKind::of(endpoint);
        let named = RegistryKind::of(host);
        if reached == RegistryKind::Unknown && named.cloud_login(host).is_some() {
            named
        } else {
            reached
        }
    }

    /// Whether blobs are uploaded in one streamed PUT, given the
    /// `monolithicPush` setting: the setting, except on ECR, which always
    /// gets monolithic uploads (an ECR registry gets a client of its own
    /// from the pool when the setting is `false`, `client.rs`).
    ///
    /// What is known: ECR breaks chunked uploads (the first PATCH answers
    /// 201 and later PATCHes are dropped): upload monolithically, whatever
    /// the setting. GAR has no PATCH uploads. ACR refuses streaming PUTs
    /// over about 20 MB, so large blobs go there in chunks. The default
    /// (`monolithicPush: true`) suits GAR.
    pub fn monolithic_push(self, configured: bool) -> bool {
        match self {
            RegistryKind::Ecr => true,
            RegistryKind::Distribution
            | RegistryKind::DockerHub
            | RegistryKind::Ghcr
            | RegistryKind::Gar
            | RegistryKind::Acr
            | RegistryKind::Quay
            | RegistryKind::Harbor
            | RegistryKind::Unknown => configured,
        }
    }

    /// Whether a blob the target registry already holds in another
    /// repository is mounted (`POST ...?mount=&from=`) before it is
    /// uploaded, given the registry's `mount` setting (`None`: not set):
    /// the setting when there is one, else yes, except on ECR and GAR. A
    /// refused mount (answered 202, an upload opened instead) costs one
    /// round trip, then the blob is uploaded.
    ///
    /// What is known: ECR mounts across repositories only with the
    /// registry's `BLOB_MOUNTING` account setting enabled (say `mount:
    /// true` then); GAR never fulfils a mount (every mount there is a
    /// wasted round trip).
    pub fn tries_mounts(self, configured: Option<bool>) -> bool {
        let default = match self {
            RegistryKind::Ecr | RegistryKind::Gar => false,
            RegistryKind::Distribution
            | RegistryKind::DockerHub
            | RegistryKind::Ghcr
            | RegistryKind::Acr
            | RegistryKind::Quay
            | RegistryKind::Harbor
            | RegistryKind::Unknown => true,
        };
        configured.unwrap_or(default)
    }

    /// Whether a registry's refusal of a manifest pushed by tag (its error
    /// `code` and `message`) says that the tag already exists and cannot be
    /// moved: then what the tag holds decides (the same digest is in sync,
    /// another is a safety stop). The spec has no such refusal.
    ///
    /// What is known: an ECR repository with `IMMUTABLE` tags refuses a
    /// manifest PUT onto an existing tag, even with the same manifest, with
    /// `TAG_INVALID` and "The image tag '…' already exists in the '…'
    /// repository and cannot be overwritten because the repository is
    /// immutable." (the `ImageTagAlreadyExistsException` of its API).
    pub fn refuses_existing_tag(self, code: &str, message: &str) -> bool {
        match self {
            RegistryKind::Ecr => code == "TAG_INVALID" && message.contains("already exists"),
            RegistryKind::Distribution
            | RegistryKind::DockerHub
            | RegistryKind::Ghcr
            | RegistryKind::Gar
            | RegistryKind::Acr
            | RegistryKind::Quay
            | RegistryKind::Harbor
            | RegistryKind::Unknown => false,
        }
    }

    /// Whether a registry's refusal of a write with error `code` means that
    /// the repository does not exist and is not made by a push: then the
    /// error says how to have it created. The spec's registries create a
    /// repository on its first push.
    ///
    /// What is known: ECR refuses a push into a repository that does not
    /// exist with `NAME_UNKNOWN` ("The repository with name '…' does not
    /// exist in the registry with id '…'"); image-syncer creates it with
    /// `registries.<host>.ecr.createRepositories: true`.
    pub fn refuses_missing_repository(self, code: &str) -> bool {
        match self {
            RegistryKind::Ecr => code == "NAME_UNKNOWN",
            RegistryKind::Distribution
            | RegistryKind::DockerHub
            | RegistryKind::Ghcr
            | RegistryKind::Gar
            | RegistryKind::Acr
            | RegistryKind::Quay
            | RegistryKind::Harbor
            | RegistryKind::Unknown => false,
        }
    }

    /// How this kind's own cloud credentials are made for `host` (as
    /// references name it), where it has them: ECR's
    /// `GetAuthorizationToken`, GAR's access tokens as `oauth2accesstoken`,
    /// ACR's refresh-token exchange (`cloud.rs`; `auth.rs` decides when).
    /// ECR Public (`public.ecr.aws`) has none: it is read anonymously
    /// unless credentials are configured for it.
    pub fn cloud_login(self, host: &str) -> Option<CloudLogin> {
        match self {
            RegistryKind::Ecr if EcrRegistry::of(host).is_none() => None,
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

    /// A host of each kind, for the answers that depend on the host.
    fn example_host(kind: RegistryKind) -> &'static str {
        match kind {
            RegistryKind::DockerHub => "docker.io",
            RegistryKind::Ghcr => "ghcr.io",
            RegistryKind::Ecr => "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            RegistryKind::Gar => "europe-docker.pkg.dev",
            RegistryKind::Acr => "myregistry.azurecr.io",
            RegistryKind::Quay => "quay.io",
            RegistryKind::Distribution | RegistryKind::Harbor | RegistryKind::Unknown => {
                "registry.example"
            }
        }
    }

    #[test]
    fn each_kind_behaves_as_documented() {
        let table: Vec<String> = RegistryKind::ALL
            .iter()
            .map(|k| {
                format!(
                    "{:<12} api_host(docker.io)={:<15} credential_keys(h)={:?} monolithic_push(true/false)={}/{} tries_mounts(unset/true/false)={}/{}/{} refuses_existing_tag={} refuses_missing_repository={} cloud_login={:?}",
                    k.name(),
                    k.api_host("docker.io"),
                    k.credential_keys("h"),
                    k.monolithic_push(true),
                    k.monolithic_push(false),
                    k.tries_mounts(None),
                    k.tries_mounts(Some(true)),
                    k.tries_mounts(Some(false)),
                    k.refuses_existing_tag(
                        "TAG_INVALID",
                        "The image tag 'v1' already exists in the 'team/app' repository and cannot be overwritten because the repository is immutable."
                    ),
                    k.refuses_missing_repository("NAME_UNKNOWN"),
                    k.cloud_login(example_host(*k)),
                )
            })
            .collect();
        insta::assert_snapshot!(table.join("\n"), @r#"
        distribution api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/false tries_mounts(unset/true/false)=true/true/false refuses_existing_tag=false refuses_missing_repository=false cloud_login=None
        Docker Hub   api_host(docker.io)=index.docker.io credential_keys(h)=["h", "https://index.docker.io/v1/"] monolithic_push(true/false)=true/false tries_mounts(unset/true/false)=true/true/false refuses_existing_tag=false refuses_missing_repository=false cloud_login=None
        GHCR         api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/false tries_mounts(unset/true/false)=true/true/false refuses_existing_tag=false refuses_missing_repository=false cloud_login=None
        ECR          api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/true tries_mounts(unset/true/false)=false/true/false refuses_existing_tag=true refuses_missing_repository=true cloud_login=Some(EcrAuthorizationToken)
        GAR          api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/false tries_mounts(unset/true/false)=false/true/false refuses_existing_tag=false refuses_missing_repository=false cloud_login=Some(GoogleAccessToken)
        ACR          api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/false tries_mounts(unset/true/false)=true/true/false refuses_existing_tag=false refuses_missing_repository=false cloud_login=Some(AcrRefreshToken)
        Quay         api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/false tries_mounts(unset/true/false)=true/true/false refuses_existing_tag=false refuses_missing_repository=false cloud_login=None
        Harbor       api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/false tries_mounts(unset/true/false)=true/true/false refuses_existing_tag=false refuses_missing_repository=false cloud_login=None
        unknown      api_host(docker.io)=docker.io       credential_keys(h)=["h"] monolithic_push(true/false)=true/false tries_mounts(unset/true/false)=true/true/false refuses_existing_tag=false refuses_missing_repository=false cloud_login=None
        "#);
    }

    #[test]
    fn ecr_public_has_no_cloud_login_and_is_read_anonymously() {
        assert_eq!(RegistryKind::of("public.ecr.aws"), RegistryKind::Ecr);
        assert_eq!(RegistryKind::Ecr.cloud_login("public.ecr.aws"), None);
        assert_eq!(
            RegistryKind::Ecr.cloud_login("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            Some(CloudLogin::EcrAuthorizationToken)
        );
    }

    #[test]
    fn an_ecr_host_names_its_account_region_and_fips() {
        let table: Vec<String> = HOSTS
            .iter()
            .filter_map(|h| EcrRegistry::of(h).map(|r| format!("{h:<52} {r:?}")))
            .collect();
        insta::assert_snapshot!(table.join("\n"), @r#"
        123456789012.dkr.ecr.eu-west-1.amazonaws.com         EcrRegistry { account: "123456789012", region: "eu-west-1", fips: false }
        123456789012.dkr.ecr-fips.us-east-1.amazonaws.com    EcrRegistry { account: "123456789012", region: "us-east-1", fips: true }
        123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn     EcrRegistry { account: "123456789012", region: "cn-north-1", fips: false }
        "#);
        // Ports and case are as for `RegistryKind::of`.
        assert_eq!(
            EcrRegistry::of("123456789012.DKR.ECR.eu-west-1.amazonaws.com:443"),
            EcrRegistry::of("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
        );
    }

    #[test]
    fn only_ecr_takes_an_existing_tag_refusal_for_what_it_is() {
        let ecr = RegistryKind::Ecr;
        let immutable = "The image tag 'v1' already exists in the 'team/app' repository and cannot be overwritten because the repository is immutable.";
        assert!(ecr.refuses_existing_tag("TAG_INVALID", immutable));
        // Another refusal of a tag, or another code, is not one.
        assert!(!ecr.refuses_existing_tag("TAG_INVALID", "invalid tag name"));
        assert!(!ecr.refuses_existing_tag("MANIFEST_INVALID", immutable));
        assert!(!RegistryKind::Unknown.refuses_existing_tag("TAG_INVALID", immutable));
    }

    #[test]
    fn a_cloud_host_through_an_unknown_endpoint_keeps_its_kind() {
        let ecr = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";
        let table: Vec<String> = [
            (ecr, ecr),
            (ecr, "127.0.0.1:5000"),
            (ecr, "vpce-0abc.dkr.ecr.eu-west-1.vpce.amazonaws.com"),
            ("europe-docker.pkg.dev", "127.0.0.1:5000"),
            ("myregistry.azurecr.io", "proxy.example"),
            // Mirrors of other registries are other software.
            ("docker.io", "127.0.0.1:5000"),
            ("quay.io", "mirror.example"),
            ("public.ecr.aws", "mirror.example"),
            // An endpoint that names a provider: that provider answers.
            ("registry.example", "ghcr.io"),
            (ecr, "quay.io"),
        ]
        .iter()
        .map(|(h, e)| format!("{h:<46} via {e:<48} {}", RegistryKind::answering(h, e)))
        .collect();
        insta::assert_snapshot!(table.join("\n"), @r"
        123456789012.dkr.ecr.eu-west-1.amazonaws.com   via 123456789012.dkr.ecr.eu-west-1.amazonaws.com     ECR
        123456789012.dkr.ecr.eu-west-1.amazonaws.com   via 127.0.0.1:5000                                   ECR
        123456789012.dkr.ecr.eu-west-1.amazonaws.com   via vpce-0abc.dkr.ecr.eu-west-1.vpce.amazonaws.com   ECR
        europe-docker.pkg.dev                          via 127.0.0.1:5000                                   GAR
        myregistry.azurecr.io                          via proxy.example                                    ACR
        docker.io                                      via 127.0.0.1:5000                                   unknown
        quay.io                                        via mirror.example                                   unknown
        public.ecr.aws                                 via mirror.example                                   unknown
        registry.example                               via ghcr.io                                          GHCR
        123456789012.dkr.ecr.eu-west-1.amazonaws.com   via quay.io                                          Quay
        ");
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
