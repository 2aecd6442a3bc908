//! Credentials from the cloud identity the run has: ECR's authorization
//! token, a Google access token, an ACR refresh token ([`CloudLogin`]).
//!
//! They are the last place credentials are looked for (`auth.rs` has the
//! order), for a registry whose [`RegistryKind::cloud_login`] names a way
//! and whose `registries:` entry does not say `cloudAuth: false`. Each
//! provider is behind its cargo feature (`ecr`, `gar`, `acr`); a build
//! without it says so when such a registry needs credentials.

use std::time::SystemTime;

use image_syncer_core::context::Secret;

use crate::quirks::{CloudLogin, RegistryKind};

#[cfg(feature = "acr")]
mod azure;
#[cfg(feature = "ecr")]
mod ecr;
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
    /// When the registry stops accepting it. A time already past (moto's
    /// ECR tokens expire in 2015) means "use it for this run".
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

/// What a cloud login needs to know of the registry.
#[derive(Clone, Debug)]
pub(crate) struct LoginTarget<'a> {
    /// The registry host as references name it (`<account>.dkr.ecr.<region>.amazonaws.com`).
    pub(crate) host: &'a str,
    /// Where it is connected to (its `registries:` endpoint, else the host).
    pub(crate) endpoint: &'a str,
    /// Whether `endpoint` is reached over plain HTTP.
    pub(crate) insecure: bool,
}

/// Makes the cloud credential `login` names for `target`.
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
