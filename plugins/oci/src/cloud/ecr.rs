//! Amazon ECR through the AWS SDK (`aws-config`, `aws-sdk-ecr`): the
//! registry's authorization token made from the run's AWS identity
//! ([`login`]), and repositories created before their first push
//! ([`Repositories`], `registries.<host>.ecr.createRepositories`).
//!
//! - **Identity**: the SDK's default credential chain, in its order:
//!   environment (`AWS_ACCESS_KEY_ID`, …), the shared config and credentials
//!   files (profiles, SSO, `credential_process`), web identity (IRSA:
//!   `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`), container
//!   credentials (ECS, EKS Pod Identity: `AWS_CONTAINER_CREDENTIALS_*`),
//!   then the EC2 instance metadata service (IMDS). The IMDS probe is
//!   bounded (two attempts, one second to connect and one to read), so that
//!   a run outside AWS without credentials is told so within seconds;
//!   `AWS_EC2_METADATA_DISABLED=true` skips it.
//! - **Region and account** come from the registry's host
//!   (`<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`), never from
//!   `AWS_REGION`: a run can reach registries of several regions and
//!   accounts. A `dkr.ecr-fips` host is managed through the FIPS endpoint.
//! - **Endpoints**: the SDK's own overrides, `AWS_ENDPOINT_URL_ECR` and
//!   `AWS_ENDPOINT_URL` (the tests point them at moto).
//! - **The token**: `GetAuthorizationToken` for the registry's account
//!   answers base64 `AWS:<password>`, valid 12 hours: user `AWS`, and an
//!   expiry passed on as ECR says it ([`CloudCredential::expires`]). moto
//!   answers an expiry in 2015, already past: it is passed on as such, and
//!   the caller's cache treats a credential that is already expired when it
//!   is made as good for the run, not as one to renew at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_ecr::config::{Region, SharedCredentialsProvider};
use aws_sdk_ecr::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ecr::types::{
    ImageScanningConfiguration, ImageTagMutability, ImageTagMutabilityExclusionFilter,
    ImageTagMutabilityExclusionFilterType,
};
use base64::Engine as _;
use image_syncer_core::context::Secret;
use image_syncer_core::context::{EcrSettings, TagMutability};
use image_syncer_core::stage::{error_chain, RepositoryUse};
use tokio::sync::OnceCell;
use tracing::{debug, info};

use super::{CloudCredential, CloudError, LoginTarget};
use crate::quirks::EcrRegistry;

const PROVIDER: &str = "ECR";

/// What the credential chain looks at, in order, for the "no credentials"
/// message.
const LOOKED: &str = "env, profile, web identity, container, IMDS";

/// How long one API call (all its attempts) may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The tag filter excluded from an `IMMUTABLE` repository's immutability
/// when the run writes attached tags into it: cosign's
/// `sha256-<hex>.sig`/`.att`/`.sbom` tags and the referrers tag
/// `sha256-<hex>`, which move when a signature or referrer is added.
pub(crate) const ATTACHED_TAGS_FILTER: &str = "sha256-*";

/// The registry `host` names, or the error saying it names none.
fn registry_of(host: &str) -> Result<EcrRegistry, CloudError> {
    EcrRegistry::of(host).ok_or_else(|| CloudError::Refused {
        provider: PROVIDER,
        message: format!(
            "{host} is not an ECR registry host (<account>.dkr.ecr.<region>.amazonaws.com)"
        ),
        transient: false,
    })
}

/// The run's AWS identity, for `registry`'s region: the default credential
/// chain with a bounded IMDS probe (see the module's doc).
async fn credential_chain(region: &Region) -> DefaultCredentialsChain {
    let imds = aws_config::imds::Client::builder()
        .max_attempts(2)
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(1))
        .build();
    DefaultCredentialsChain::builder()
        .region(region.clone())
        .imds_client(imds)
        .build()
        .await
}

/// Whether the chain finds credentials: `NoIdentity` when no source has
/// any, `Refused` when one has them and fails (a web identity that STS
/// refuses, a profile that cannot be read).
///
/// The instance metadata service is the chain's last source, so an error
/// of its own means that no other source had credentials: IMDS refusing
/// (403, what IMDSv2 answers when it is turned off, or what an egress
/// proxy answers for its address) is no identity too, not a refusal to
/// retry.
async fn check_identity(chain: &DefaultCredentialsChain) -> Result<(), CloudError> {
    let no_identity = || CloudError::NoIdentity {
        provider: PROVIDER,
        what: "AWS credentials",
        looked: LOOKED,
    };
    match chain.provide_credentials().await {
        Ok(_) => Ok(()),
        Err(e @ CredentialsError::CredentialsNotLoaded(_)) => {
            debug!(error = %error_chain(&e), "no AWS credentials");
            Err(no_identity())
        }
        Err(e) if error_chain(&e).contains("IMDS") => {
            debug!(error = %error_chain(&e), "no AWS credentials (the instance metadata service refused)");
            Err(no_identity())
        }
        Err(e) => Err(CloudError::Refused {
            provider: PROVIDER,
            message: format!("AWS credentials: {}", error_chain(&e)),
            transient: matches!(e, CredentialsError::ProviderTimedOut(_)),
        }),
    }
}

/// An ECR API client for `registry`, with the run's AWS identity, after
/// checking that it has one.
async fn client(registry: &EcrRegistry) -> Result<aws_sdk_ecr::Client, CloudError> {
    let region = Region::new(registry.region.clone());
    let chain = credential_chain(&region).await;
    check_identity(&chain).await?;
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .credentials_provider(SharedCredentialsProvider::new(chain))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .load()
        .await;
    let mut config = aws_sdk_ecr::config::Builder::from(&shared);
    if registry.fips {
        config = config.use_fips(true);
    }
    Ok(aws_sdk_ecr::Client::from_conf(config.build()))
}

/// An API error as a [`CloudError`]: transient for timeouts, connection
/// failures and 5xx answers. The message is the service's, never a request
/// detail or a credential.
fn api_error<E>(what: &str, e: SdkError<E>) -> CloudError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    let transient = matches!(
        e,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
    ) || e
        .raw_response()
        .is_some_and(|r| r.status().is_server_error());
    // ECR's own answer by its code and message; anything else by its
    // chain of causes (no debug dump of the raw response).
    let said = match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => error_chain(&e),
    };
    CloudError::Refused {
        provider: PROVIDER,
        message: format!("{what}: {said}"),
        transient,
    }
}

/// The registry credential of `target`: `GetAuthorizationToken` for its
/// account, in its region, with the run's AWS identity.
pub(crate) async fn login(target: &LoginTarget<'_>) -> Result<CloudCredential, CloudError> {
    let registry = registry_of(target.host)?;
    let client = client(&registry).await?;
    // `registryIds` is deprecated (a token opens every registry the
    // identity may use, whatever the account asked), and still honoured:
    // asked for the registry's own account, as a token is for it.
    #[allow(deprecated)]
    let answer = client
        .get_authorization_token()
        .registry_ids(&registry.account)
        .send()
        .await
        .map_err(|e| api_error("GetAuthorizationToken", e))?;
    let data = answer
        .authorization_data()
        .first()
        .ok_or_else(|| refused("GetAuthorizationToken answered no authorization data"))?;
    let token = data
        .authorization_token()
        .ok_or_else(|| refused("GetAuthorizationToken answered no token"))?;
    let (username, password) = decode_token(token)?;
    let expires = data
        .expires_at()
        .and_then(|t| SystemTime::try_from(*t).ok());
    debug!(registry = %target.host, ?expires, "ECR authorization token");
    Ok(CloudCredential {
        username,
        password,
        expires,
    })
}

fn refused(message: &str) -> CloudError {
    CloudError::Refused {
        provider: PROVIDER,
        message: message.to_string(),
        transient: false,
    }
}

/// ECR's token: base64 of `<user>:<password>` (the user is `AWS`).
fn decode_token(token: &str) -> Result<(String, Secret), CloudError> {
    let bad =
        || refused("GetAuthorizationToken answered a token that is not base64 of `user:password`");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (user, password) = text.split_once(':').ok_or_else(bad)?;
    if user.is_empty() || password.is_empty() {
        return Err(bad());
    }
    Ok((user.to_string(), Secret::new(password)))
}

/// ECR repositories made ready for their first push, once per repository
/// for a sink (so once per run): looked up with `DescribeRepositories`,
/// created with `CreateRepository` when ECR says it does not exist; one
/// that exists is left as it is. Concurrent asks for one repository share
/// one lookup.
#[derive(Default)]
pub(crate) struct Repositories {
    /// An API client per registry host, made once (identity checked).
    clients: Mutex<HashMap<String, Arc<OnceCell<aws_sdk_ecr::Client>>>>,
    /// Per `host/repository` (and dry run or not): the note of what was
    /// done, once it is done.
    done: Mutex<HashMap<(String, bool), Arc<Done>>>,
}

/// What was done to one repository, once it is done: its note.
type Done = OnceCell<Option<String>>;

impl Repositories {
    /// Makes `repository` of registry `host` ready for its first push as
    /// `settings` say (only with `createRepositories`): a note of what was
    /// (or, in a dry run, would be) done, `None` when it exists.
    pub(crate) async fn prepare(
        &self,
        host: &str,
        repository: &str,
        settings: &EcrSettings,
        how: &RepositoryUse,
    ) -> Result<Option<String>, CloudError> {
        if !settings.create_repositories {
            return Ok(None);
        }
        let cell = self
            .done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((format!("{host}/{repository}"), how.dry_run))
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.ensure(host, repository, settings, how))
            .await
            .cloned()
    }

    async fn client(&self, host: &str) -> Result<aws_sdk_ecr::Client, CloudError> {
        let cell = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host.to_string())
            .or_default()
            .clone();
        let registry = registry_of(host)?;
        cell.get_or_try_init(|| client(&registry)).await.cloned()
    }

    async fn ensure(
        &self,
        host: &str,
        repository: &str,
        settings: &EcrSettings,
        how: &RepositoryUse,
    ) -> Result<Option<String>, CloudError> {
        let registry = registry_of(host)?;
        let client = self.client(host).await?;
        let name = format!("{host}/{repository}");
        let found = client
            .describe_repositories()
            .registry_id(&registry.account)
            .repository_names(repository)
            .send()
            .await;
        match found {
            Ok(_) => {
                debug!(repository = %name, "ECR repository exists");
                return Ok(None);
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_not_found_exception()) => {}
            Err(e) => return Err(api_error(&format!("DescribeRepositories {name}"), e)),
        }
        let shape = shape(settings, how);
        if how.dry_run {
            return Ok(Some(format!("would create repository {name} ({shape})")));
        }
        let (mutability, filters) = mutability(settings, how);
        let created = client
            .create_repository()
            .registry_id(&registry.account)
            .repository_name(repository)
            .image_tag_mutability(mutability)
            .set_image_tag_mutability_exclusion_filters(filters)
            .image_scanning_configuration(
                ImageScanningConfiguration::builder()
                    .scan_on_push(settings.scan_on_push)
                    .build(),
            )
            .send()
            .await;
        match created {
            Ok(_) => {
                info!(repository = %name, settings = %shape, "created ECR repository");
                Ok(Some(format!("created repository {name} ({shape})")))
            }
            // Made by someone else since the lookup: left as it is.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_already_exists_exception()) =>
            {
                debug!(repository = %name, "ECR repository created by someone else meanwhile");
                Ok(None)
            }
            Err(e) => Err(api_error(&format!("CreateRepository {name}"), e)),
        }
    }
}

/// The tag mutability of a repository created for `settings` and `how`:
/// `IMMUTABLE` excludes the attached tags ([`ATTACHED_TAGS_FILTER`]) when
/// the run writes some there.
fn mutability(
    settings: &EcrSettings,
    how: &RepositoryUse,
) -> (
    ImageTagMutability,
    Option<Vec<ImageTagMutabilityExclusionFilter>>,
) {
    match (settings.image_tag_mutability, how.attached_tags) {
        (TagMutability::Mutable, _) => (ImageTagMutability::Mutable, None),
        (TagMutability::Immutable, false) => (ImageTagMutability::Immutable, None),
        (TagMutability::Immutable, true) => (
            ImageTagMutability::ImmutableWithExclusion,
            ImageTagMutabilityExclusionFilter::builder()
                .filter_type(ImageTagMutabilityExclusionFilterType::Wildcard)
                .filter(ATTACHED_TAGS_FILTER)
                .build()
                .ok()
                .map(|f| vec![f]),
        ),
    }
}

/// How a created repository is set up, for people: "IMMUTABLE, scan on
/// push off".
fn shape(settings: &EcrSettings, how: &RepositoryUse) -> String {
    let (mutability, filters) = mutability(settings, how);
    let except = match filters {
        Some(_) => format!(" except {ATTACHED_TAGS_FILTER}"),
        None => String::new(),
    };
    let mutability = match mutability {
        ImageTagMutability::ImmutableWithExclusion => "IMMUTABLE".to_string(),
        other => other.as_str().to_string(),
    };
    let scan = if settings.scan_on_push { "on" } else { "off" };
    format!("tags {mutability}{except}, scan on push {scan}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_user_and_password() {
        let token = base64::engine::general_purpose::STANDARD.encode("AWS:123456789012-auth-token");
        let (user, password) = decode_token(&token).unwrap();
        assert_eq!(user, "AWS");
        assert_eq!(password.expose(), "123456789012-auth-token");
        // A password may hold colons; only the first one splits.
        let token = base64::engine::general_purpose::STANDARD.encode("AWS:a:b");
        assert_eq!(decode_token(&token).unwrap().1.expose(), "a:b");
        for bad in ["not base64!", "QVdT", "OnBhc3M=", ""] {
            let e = decode_token(bad).unwrap_err().to_string();
            assert_eq!(
                e,
                "ECR: GetAuthorizationToken answered a token that is not base64 of `user:password`",
                "{bad}"
            );
        }
    }

    #[test]
    fn created_repositories_are_shaped_by_the_settings() {
        let settings = |m, scan| EcrSettings {
            create_repositories: true,
            image_tag_mutability: m,
            scan_on_push: scan,
        };
        let plain = RepositoryUse::new();
        let attached = RepositoryUse::new().with_attached_tags(true);
        let table: Vec<String> = [
            (settings(TagMutability::Immutable, false), &plain),
            (settings(TagMutability::Immutable, true), &plain),
            (settings(TagMutability::Immutable, false), &attached),
            (settings(TagMutability::Mutable, false), &attached),
        ]
        .iter()
        .map(|(s, how)| {
            let (m, f) = mutability(s, how);
            let filters: Vec<String> = f
                .unwrap_or_default()
                .iter()
                .map(|f| format!("{}:{}", f.filter_type().as_str(), f.filter()))
                .collect();
            format!("{:<26} {filters:?} {}", m.as_str(), shape(s, how))
        })
        .collect();
        insta::assert_snapshot!(table.join("\n"), @r#"
        IMMUTABLE                  [] tags IMMUTABLE, scan on push off
        IMMUTABLE                  [] tags IMMUTABLE, scan on push on
        IMMUTABLE_WITH_EXCLUSION   ["WILDCARD:sha256-*"] tags IMMUTABLE except sha256-*, scan on push off
        MUTABLE                    [] tags MUTABLE, scan on push off
        "#);
    }

    #[test]
    fn a_host_that_is_not_a_private_ecr_registry_is_refused() {
        for host in [
            "public.ecr.aws",
            "registry.example",
            "dkr.ecr.eu-west-1.amazonaws.com",
        ] {
            let e = registry_of(host).unwrap_err().to_string();
            assert_eq!(
                e,
                format!("ECR: {host} is not an ECR registry host (<account>.dkr.ecr.<region>.amazonaws.com)")
            );
        }
    }
}
