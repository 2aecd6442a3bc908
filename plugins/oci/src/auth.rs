//! Credentials: which are used for a registry, in which order.

use image_syncer_core::context::Credentials;
use oci_client::secrets::RegistryAuth;
use tracing::debug;

use crate::quirks::RegistryKind;
use crate::OciRegistry;

impl OciRegistry {
    /// The credentials for `registry`, in this order: the target key file or
    /// token (for the target registry), the definition's `registries:` entry,
    /// Docker's `config.json` (`auths`, `credHelpers`, `credsStore`, running
    /// `docker-credential-<name>`) or containers' `auth.json`, else anonymous.
    /// A registry reached through an `endpoint` (a mirror) is looked up under
    /// the endpoint's host first, then under its own name, in each of the
    /// two places: a mirror is authenticated with its own credentials, as in
    /// containers-registries.conf. The two configs are asked under each of
    /// the host's [`RegistryKind::credential_keys`] (Docker Hub has two).
    ///
    /// A cloud registry's own credentials ([`RegistryKind::cloud_login`]:
    /// ECR's authorization token, a Google access token, an ACR refresh
    /// token) are not made here yet; a Docker credential helper for that
    /// cloud (`credHelpers`) gives them today. The issue that adds them
    /// decides their place in this order.
    pub(crate) fn auth_for(&self, registry: &str) -> RegistryAuth {
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
