//! Credentials: which are used for a registry, in which order.

use image_syncer_core::context::Credentials;
use image_syncer_core::stage::StageError;
use oci_client::secrets::RegistryAuth;
use tracing::debug;

use crate::cloud::{self, CloudError, LoginTarget};
use crate::quirks::RegistryKind;
use crate::OciRegistry;

/// The credentials for a registry, and where they came from.
pub(crate) struct Found {
    pub(crate) auth: RegistryAuth,
    /// For a cloud login: its generation in the process's cache, which
    /// changes when it is renewed (the client is then given the new one).
    pub(crate) cloud_generation: Option<u64>,
}

impl OciRegistry {
    /// The credentials for `registry`, in this order: the target key file or
    /// token (for the target registry), the definition's `registries:` entry,
    /// Docker's `config.json` (`auths`, `credHelpers`, `credsStore`, running
    /// `docker-credential-<name>`) or containers' `auth.json`, then the cloud
    /// identity the run has, for a registry of a cloud
    /// ([`RegistryKind::cloud_login`]: ECR, Artifact Registry and GCR, ACR)
    /// whose entry does not say `cloudAuth: false`; else anonymous.
    ///
    /// A registry reached through an `endpoint` (a mirror) is looked up under
    /// the endpoint's host first, then under its own name, in each of the
    /// two places: a mirror is authenticated with its own credentials, as in
    /// containers-registries.conf. The two configs are asked under each of
    /// the host's [`RegistryKind::credential_keys`] (Docker Hub has two).
    ///
    /// The cloud login is made for the registry as references name it (its
    /// account, region or name), sent where it is connected to. When the
    /// run has no identity of that cloud, ECR (which has no anonymous
    /// access) fails the request; Artifact Registry and ACR are read
    /// anonymously (public images such as `gcr.io/distroless` need no
    /// login) and, should the registry refuse, its error says which
    /// identity was missing ([`cloud::missing_identity`]).
    pub(crate) async fn auth_for(&self, registry: &str) -> Result<Found, StageError> {
        let plain = |auth| {
            Ok(Found {
                auth,
                cloud_generation: None,
            })
        };
        if let Some((t, c)) = &self.registries.target {
            if t == registry {
                return plain(to_auth(c));
            }
        }
        let (endpoint, insecure) = self.registries.endpoint_for(registry);
        let hosts: Vec<&str> = if endpoint == registry {
            vec![registry]
        } else {
            vec![endpoint.as_str(), registry]
        };
        if let Some(c) = hosts
            .iter()
            .find_map(|h| self.registries.configured_credentials(h))
        {
            return plain(to_auth(c));
        }
        {
            let mut found = self.discovered.lock().unwrap_or_else(|e| e.into_inner());
            for host in &hosts {
                let auth = found
                    .entry(host.to_string())
                    .or_insert_with(|| docker_config_auth(host))
                    .clone();
                if !matches!(auth, RegistryAuth::Anonymous) {
                    return plain(auth);
                }
            }
        }
        let kind = RegistryKind::of(registry);
        let Some(login) = kind.cloud_login(registry) else {
            return plain(RegistryAuth::Anonymous);
        };
        if !self.registries.cloud_auth(registry) {
            debug!(%registry, "cloudAuth: false; reading anonymously");
            return plain(RegistryAuth::Anonymous);
        }
        let target = LoginTarget {
            host: registry,
            endpoint: &endpoint,
            insecure,
            ca_certificates: &self.registries.ca_certificates,
        };
        match cloud::credential(login, &target).await {
            Ok((credential, generation)) => Ok(Found {
                auth: RegistryAuth::Basic(
                    credential.username.clone(),
                    credential.password.expose().to_string(),
                ),
                cloud_generation: Some(generation),
            }),
            Err(e) if e.reads_anonymously(kind) => {
                debug!(%registry, reason = %e, "no cloud identity; reading anonymously");
                plain(RegistryAuth::Anonymous)
            }
            Err(e) => Err(cloud_error(registry, &e)),
        }
    }
}

/// A cloud login that failed, as the request's error: the image fails (a
/// provider that may answer later is retried), nothing is written.
fn cloud_error(registry: &str, e: &CloudError) -> StageError {
    let message = format!("{registry}: cannot log in with the cloud identity: {e}");
    match e {
        CloudError::Refused {
            transient: true, ..
        } => StageError::transient(message),
        // Its message already says to give credentials another way.
        CloudError::NotBuilt { .. } => {
            StageError::new(image_syncer_core::stage::ErrorKind::Unauthorized, message)
                .with_refused_by(registry)
        }
        _ => StageError::new(
            image_syncer_core::stage::ErrorKind::Unauthorized,
            format!("{message}; give credentials for it (README: Cloud registries)"),
        )
        .with_refused_by(registry),
    }
}

/// Credentials given to the run, as oci-client takes them.
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
    for server in &RegistryKind::of(registry).credential_keys(registry) {
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
