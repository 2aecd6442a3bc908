//! Credentials from the cloud identity the run has: ECR's authorization
//! token, a Google access token, an ACR refresh token ([`CloudLogin`]).
//!
//! They are the last place credentials are looked for (`auth.rs` has the
//! order), for a registry whose [`RegistryKind::cloud_login`] names a way
//! and whose `registries:` entry does not say `cloudAuth: false`. Each
//! provider is behind its cargo feature (`ecr`, `gar`, `acr`); a build
//! without it says so when such a registry needs credentials.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use image_syncer_core::context::{Registries, Secret};
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::{RepositoryUse, StageError};

use crate::errors::SetupError;
use crate::quirks::{CloudLogin, EcrRegistry, RegistryKind};
use crate::OciRegistry;

#[cfg(feature = "acr")]
mod azure;
#[cfg(feature = "ecr")]
pub(crate) mod ecr;
#[cfg(feature = "gar")]
mod google;
#[cfg(all(test, any(feature = "gar", feature = "acr")))]
mod isolated;

/// Registry credentials made from the cloud identity: basic
/// authentication, valid until `expires` (`None`: no end known).
#[derive(Clone, Debug)]
pub(crate) struct CloudCredential {
    pub(crate) username: String,
    pub(crate) password: Secret,
    /// When the registry stops accepting it, as the provider says (ECR's
    /// `expiresAt`), passed on unchanged. A time already past when the
    /// credential is made (moto's ECR tokens expire in 2015) means "use it
    /// for this run": the cache then keeps it for [`FALLBACK_LIFETIME`],
    /// never renewing it in a loop ([`renewal_at`]).
    pub(crate) expires: Option<SystemTime>,
}

/// Why no cloud credential was made. Messages name the provider and what
/// was missing; they never hold a secret.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The run has no identity of that cloud.
    #[error("{provider}: no {what} found ({looked})")]
    NoIdentity {
        provider: &'static str,
        /// What was looked for: "AWS credentials", "Google credentials", …
        what: &'static str,
        /// Where it was looked for, e.g. "env, profile, web identity, container, IMDS".
        looked: &'static str,
    },
    /// The provider refused or failed (a token endpoint's answer, an API error).
    #[error("{provider}: {message}")]
    Refused {
        provider: &'static str,
        message: String,
        /// Whether trying again later may succeed (a timeout, a 5xx).
        transient: bool,
    },
    /// This build has no support for the provider.
    #[error("{provider}: this image-syncer was built without the `{feature}` feature, so it cannot log in with the cloud identity; give credentials for the registry another way")]
    NotBuilt {
        provider: &'static str,
        feature: &'static str,
    },
}

impl CloudError {
    /// Whether a registry of `kind` is then read anonymously rather than
    /// failed: when the run has no identity of that cloud (or no support
    /// for it), Artifact Registry and ACR may still serve public images;
    /// a private ECR registry never does. A provider that refused fails
    /// the request everywhere: the run has an identity, and it is wrong.
    pub(crate) fn reads_anonymously(&self, kind: RegistryKind) -> bool {
        match self {
            CloudError::NoIdentity { .. } | CloudError::NotBuilt { .. } => {
                kind != RegistryKind::Ecr
            }
            CloudError::Refused { .. } => false,
        }
    }
}

/// What a cloud login needs to know of the registry.
#[derive(Clone, Debug)]
pub(crate) struct LoginTarget<'a> {
    /// The registry host as references name it (`<account>.dkr.ecr.<region>.amazonaws.com`).
    pub(crate) host: &'a str,
    /// Where it is connected to (its `registries:` endpoint, else the host).
    pub(crate) endpoint: &'a str,
    /// Whether `endpoint` is reached over plain HTTP.
    pub(crate) insecure: bool,
    /// Extra CA certificates (PEM) trusted for the registry (`--ca-file`),
    /// each with the file it came from: for requests sent to the registry
    /// itself (ACR's token exchange).
    #[cfg_attr(not(feature = "acr"), allow(dead_code))]
    pub(crate) ca_certificates: &'a [(String, Vec<u8>)],
}

/// Makes the cloud credential `login` names for `target`.
#[cfg_attr(
    not(all(feature = "ecr", feature = "gar", feature = "acr")),
    allow(unused_variables)
)]
pub(crate) async fn login(
    login: CloudLogin,
    target: &LoginTarget<'_>,
) -> Result<CloudCredential, CloudError> {
    match login {
        #[cfg(feature = "ecr")]
        CloudLogin::EcrAuthorizationToken => ecr::login(target).await,
        #[cfg(not(feature = "ecr"))]
        CloudLogin::EcrAuthorizationToken => Err(CloudError::NotBuilt {
            provider: RegistryKind::Ecr.name(),
            feature: "ecr",
        }),
        #[cfg(feature = "gar")]
        CloudLogin::GoogleAccessToken => google::login(target).await,
        #[cfg(not(feature = "gar"))]
        CloudLogin::GoogleAccessToken => Err(CloudError::NotBuilt {
            provider: RegistryKind::Gar.name(),
            feature: "gar",
        }),
        #[cfg(feature = "acr")]
        CloudLogin::AcrRefreshToken => azure::login(target).await,
        #[cfg(not(feature = "acr"))]
        CloudLogin::AcrRefreshToken => Err(CloudError::NotBuilt {
            provider: RegistryKind::Acr.name(),
            feature: "acr",
        }),
    }
}

impl CloudError {
    /// This error as a stage's: transient when the provider may succeed
    /// later, else a configuration problem (no identity, a refusal).
    #[cfg(feature = "ecr")]
    pub(crate) fn to_stage_error(&self, context: &str) -> StageError {
        use image_syncer_core::stage::ErrorKind;
        let kind = match self {
            CloudError::Refused {
                transient: true, ..
            } => ErrorKind::Transient,
            _ => ErrorKind::Config,
        };
        StageError::new(kind, format!("{context}: {self}"))
    }
}

/// Checks the `registries:` settings that only a cloud registry takes:
/// `ecr` on a host that is not a private ECR registry's is an input error
/// naming `registries.<host>.ecr`, and so is `createRepositories` in a
/// build without the `ecr` feature.
pub(crate) fn check_settings(cx: &Registries) -> Result<(), SetupError> {
    for (host, access) in &cx.hosts {
        let Some(ecr) = &access.ecr else {
            continue;
        };
        if EcrRegistry::of(host).is_none() {
            return Err(SetupError::NotEcr { host: host.clone() });
        }
        if ecr.create_repositories && !cfg!(feature = "ecr") {
            return Err(SetupError::EcrNotBuilt { host: host.clone() });
        }
    }
    Ok(())
}

impl OciRegistry {
    /// [`image_syncer_core::stage::Sink::prepare_repository`]: on an ECR
    /// registry with `ecr.createRepositories`, the repository created when
    /// missing (`cloud/ecr.rs`); elsewhere nothing to do.
    pub(crate) async fn prepare_repository(
        &self,
        repository: &ImageRef,
        how: &RepositoryUse,
    ) -> Result<Option<String>, StageError> {
        let host = repository.registry();
        let Some(settings) = self.registries.ecr(host) else {
            return Ok(None);
        };
        if !settings.create_repositories {
            return Ok(None);
        }
        #[cfg(feature = "ecr")]
        {
            let name = repository.repository();
            self.ecr_repositories
                .prepare(host, &name, settings, how)
                .await
                .map_err(|e| e.to_stage_error(&format!("{host}/{name}: preparing the repository")))
        }
        #[cfg(not(feature = "ecr"))]
        {
            // Refused when the stage was built (`check_settings`).
            let _ = how;
            Err(StageError::config(format!(
                "registries.{host}.ecr.createRepositories needs the `ecr` feature"
            )))
        }
    }
}

/// How long a credential is used when its provider gave no end, or an end
/// already past when it was made (moto's ECR tokens "expire" in 2015): for
/// this run, and in watch mode until it is made again an hour later,
/// never in a loop.
pub(crate) const FALLBACK_LIFETIME: Duration = Duration::from_secs(3600);

/// How long before its end a credential is made again: five minutes, at
/// most half its life.
pub(crate) const RENEWAL_MARGIN: Duration = Duration::from_secs(300);

/// How long a failed login is remembered before the next request tries
/// again: the images of a run that wait on it do not each ask the
/// provider (and each wait out an unreachable metadata service).
const FAILURE_MEMORY: Duration = Duration::from_secs(30);

/// When a credential made `now`, ending at `expires`, is made again.
pub(crate) fn renewal_at(now: (Instant, SystemTime), expires: Option<SystemTime>) -> Instant {
    let life = expires
        .and_then(|end| end.duration_since(now.1).ok())
        .filter(|life| !life.is_zero())
        .unwrap_or(FALLBACK_LIFETIME);
    now.0 + life - RENEWAL_MARGIN.min(life / 2)
}

/// One registry's cloud login in the process's cache.
#[derive(Default)]
struct Slot {
    state: Option<Made>,
    /// Bumped on every credential made, so clients given an older one
    /// replace it ([`crate::OciRegistry`]'s `prepare`).
    generation: u64,
}

enum Made {
    Credential {
        credential: CloudCredential,
        renew_at: Instant,
    },
    Failed {
        error: Arc<CloudError>,
        until: Instant,
    },
}

/// The key of a registry's login: host, endpoint, plain HTTP.
type SlotKey = (String, String, bool);

/// The process's cloud logins, per registry: shared by a run's sources and
/// sinks and by the cycles of watch mode. A lock per registry makes the
/// login single-flight (many images waiting on one registry make one).
static SLOTS: Mutex<Option<HashMap<SlotKey, Arc<tokio::sync::Mutex<Slot>>>>> = Mutex::new(None);

/// Why a registry is read anonymously, per registry host, for the error a
/// refusal then gives ([`missing_identity`]).
static MISSING: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

/// The credential `login` makes for `target`, from the process's cache
/// while it is fresh, and its generation. A failure is remembered for
/// [`FAILURE_MEMORY`]; an answer that says the run has no identity is also
/// remembered for [`missing_identity`].
pub(crate) async fn credential(
    login_as: CloudLogin,
    target: &LoginTarget<'_>,
) -> Result<(CloudCredential, u64), Arc<CloudError>> {
    let key = (
        target.host.to_string(),
        target.endpoint.to_string(),
        target.insecure,
    );
    let slot = {
        let mut slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .get_or_insert_with(HashMap::new)
            .entry(key)
            .or_default()
            .clone()
    };
    let made = cached(&slot, || login(login_as, target)).await;
    if let Err(error) = &made {
        if matches!(
            **error,
            CloudError::NoIdentity { .. } | CloudError::NotBuilt { .. }
        ) {
            let mut missing = MISSING.lock().unwrap_or_else(|e| e.into_inner());
            missing
                .get_or_insert_with(HashMap::new)
                .insert(target.host.to_string(), error.to_string());
        }
    }
    if let Ok((_, generation)) = &made {
        tracing::trace!(
            registry = target.host,
            provider = login_as.provider(),
            generation,
            "cloud login"
        );
    }
    made
}

/// `slot`'s credential while it is fresh (or its failure while it is
/// remembered), else the one `login` makes now. Callers wait on the slot's
/// lock, so one login is made however many ask at once.
async fn cached<F, Fut>(
    slot: &tokio::sync::Mutex<Slot>,
    login: F,
) -> Result<(CloudCredential, u64), Arc<CloudError>>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<CloudCredential, CloudError>>,
{
    let mut slot = slot.lock().await;
    let now = Instant::now();
    match &slot.state {
        Some(Made::Credential {
            credential,
            renew_at,
        }) if now < *renew_at => return Ok((credential.clone(), slot.generation)),
        Some(Made::Failed { error, until }) if now < *until => return Err(error.clone()),
        _ => {}
    }
    match login().await {
        Ok(credential) => {
            let renew_at = renewal_at((Instant::now(), SystemTime::now()), credential.expires);
            // A provider that hands out the same token again (Google's
            // library caches its own) changes nothing: the client keeps it,
            // and the registry tokens it got with it.
            let same = matches!(
                &slot.state,
                Some(Made::Credential { credential: old, .. })
                    if old.username == credential.username && old.password == credential.password
            );
            if !same {
                slot.generation += 1;
            }
            slot.state = Some(Made::Credential {
                credential: credential.clone(),
                renew_at,
            });
            Ok((credential, slot.generation))
        }
        Err(error) => {
            let error = Arc::new(error);
            slot.state = Some(Made::Failed {
                error: error.clone(),
                until: Instant::now() + FAILURE_MEMORY,
            });
            Err(error)
        }
    }
}

/// For a registry read anonymously because the run has no identity of its
/// cloud: what was missing, for the error its refusal gives.
pub(crate) fn missing_identity(registry: &str) -> Option<String> {
    let missing = MISSING.lock().unwrap_or_else(|e| e.into_inner());
    missing.as_ref()?.get(registry).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn made(expires: Option<SystemTime>) -> CloudCredential {
        CloudCredential {
            username: "AWS".into(),
            password: Secret::new("p"),
            expires,
        }
    }

    #[test]
    fn a_credential_is_made_again_five_minutes_before_its_end_or_at_half_its_life() {
        let now = (Instant::now(), SystemTime::now());
        let at = |expires| renewal_at(now, expires) - now.0;
        let hours = |h: u64| Duration::from_secs(h * 3600);
        // ECR: 12 hours.
        assert_eq!(at(Some(now.1 + hours(12))), hours(12) - RENEWAL_MARGIN);
        // A short life: at half of it.
        assert_eq!(
            at(Some(now.1 + Duration::from_secs(60))),
            Duration::from_secs(30)
        );
        // moto's end in 2015, and no end at all: the fallback, not now.
        let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_420_070_400);
        assert_eq!(at(Some(past)), FALLBACK_LIFETIME - RENEWAL_MARGIN);
        assert_eq!(at(None), FALLBACK_LIFETIME - RENEWAL_MARGIN);
    }

    #[tokio::test(start_paused = true)]
    async fn one_login_serves_everyone_until_it_is_renewed_and_a_past_end_is_no_loop() {
        let slot = Arc::new(tokio::sync::Mutex::new(Slot::default()));
        let logins = Arc::new(AtomicUsize::new(0));
        // Already expired when made (moto): used, not made again at once.
        let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_420_070_400);
        let ask = || {
            let (slot, logins) = (slot.clone(), logins.clone());
            async move {
                cached(&slot, || async {
                    logins.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(made(Some(past)))
                })
                .await
                .map(|(_, generation)| generation)
                .map_err(|e| e.to_string())
            }
        };
        let asked: Vec<_> = futures_util::future::join_all((0..8).map(|_| ask())).await;
        assert_eq!(asked, vec![Ok(1); 8]);
        assert_eq!(logins.load(Ordering::SeqCst), 1);
        for _ in 0..100 {
            assert_eq!(ask().await, Ok(1));
        }
        assert_eq!(logins.load(Ordering::SeqCst), 1, "a past end made a loop");
        // Past the fallback lifetime (less the margin): asked again; the
        // same token again is the same generation.
        tokio::time::advance(FALLBACK_LIFETIME - RENEWAL_MARGIN).await;
        assert_eq!(ask().await, Ok(1));
        assert_eq!(logins.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_token_is_a_new_generation() {
        let slot = tokio::sync::Mutex::new(Slot::default());
        let made_so_far = AtomicUsize::new(0);
        let ask = || {
            cached(&slot, || async {
                let n = made_so_far.fetch_add(1, Ordering::SeqCst);
                let mut credential = made(Some(SystemTime::now() + Duration::from_secs(3600)));
                credential.password = Secret::new(format!("token-{n}"));
                Ok(credential)
            })
        };
        let (first, generation) = ask().await.unwrap();
        assert_eq!((first.password.expose(), generation), ("token-0", 1));
        tokio::time::advance(Duration::from_secs(3000)).await;
        assert_eq!(ask().await.unwrap().1, 1, "renewed too early");
        // 55 minutes in: five minutes before the end.
        tokio::time::advance(Duration::from_secs(300)).await;
        let (renewed, generation) = ask().await.unwrap();
        assert_eq!((renewed.password.expose(), generation), ("token-1", 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_login_is_remembered_for_a_while_then_tried_again() {
        let slot = tokio::sync::Mutex::new(Slot::default());
        let logins = AtomicUsize::new(0);
        let ask = || {
            cached(&slot, || async {
                logins.fetch_add(1, Ordering::SeqCst);
                Err(CloudError::NoIdentity {
                    provider: "ECR",
                    what: "AWS credentials",
                    looked: "env, profile, web identity, container, IMDS",
                })
            })
        };
        let first = ask().await.unwrap_err();
        assert_eq!(
            first.to_string(),
            "ECR: no AWS credentials found (env, profile, web identity, container, IMDS)"
        );
        assert!(ask().await.is_err());
        assert_eq!(logins.load(Ordering::SeqCst), 1);
        tokio::time::advance(FAILURE_MEMORY).await;
        assert!(ask().await.is_err());
        assert_eq!(logins.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn without_an_identity_only_ecr_fails_and_a_refusal_fails_everywhere() {
        let none = CloudError::NoIdentity {
            provider: "GAR",
            what: "Google credentials",
            looked: "x",
        };
        let refused = CloudError::Refused {
            provider: "ACR",
            message: "the exchange was refused".into(),
            transient: false,
        };
        let not_built = CloudError::NotBuilt {
            provider: "ECR",
            feature: "ecr",
        };
        for kind in [RegistryKind::Gar, RegistryKind::Acr] {
            assert!(none.reads_anonymously(kind));
            assert!(!refused.reads_anonymously(kind));
        }
        assert!(!none.reads_anonymously(RegistryKind::Ecr));
        assert!(!not_built.reads_anonymously(RegistryKind::Ecr));
        assert!(!refused.reads_anonymously(RegistryKind::Ecr));
    }
}
