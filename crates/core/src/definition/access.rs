//! The definition's `registries:` resolved for the run: how each registry is
//! reached, with its credentials read.

use super::*;
use crate::context::{Credentials, RegistryAccess, Secret};

impl Definition {
    /// How each registry of `registries:` is reached, credentials read from
    /// their environment variable or file (relative to the definition). A
    /// credential that cannot be read is an input error naming the registry.
    pub fn registry_access(&self) -> Result<BTreeMap<String, RegistryAccess>, DefinitionError> {
        let mut out = BTreeMap::new();
        for (host, s) in &self.registries {
            let invalid = |message: String| DefinitionError::Invalid {
                path: self.path.display().to_string(),
                line: None,
                what: format!("registries.{host}"),
                message,
            };
            let env = |var: &str| {
                std::env::var(var)
                    .map_err(|_| invalid(format!("the environment variable {var} is not set")))
            };
            let credentials = match (&s.username, &s.password_env, &s.password_file, &s.token_env) {
                (None, None, None, None) => None,
                (None, None, None, Some(var)) => Some(Credentials::Bearer {
                    token: Secret::new(env(var)?),
                }),
                (Some(user), Some(var), None, None) => Some(Credentials::Basic {
                    username: user.clone(),
                    password: Secret::new(env(var)?),
                }),
                (Some(user), None, Some(file), None) => {
                    let path = crate::context::resolve_path(&self.base_dir(), file);
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        invalid(format!("cannot read passwordFile {}: {e}", path.display()))
                    })?;
                    Some(Credentials::Basic {
                        username: user.clone(),
                        password: Secret::new(text.trim_end_matches(['\n', '\r'])),
                    })
                }
                _ => return Err(invalid(
                    "give `username` with one of `passwordEnv`/`passwordFile`, or `tokenEnv` alone"
                        .into(),
                )),
            };
            let mut access = RegistryAccess::new().with_insecure(s.insecure.unwrap_or(false));
            access.endpoint = s.endpoint.clone();
            access.credentials = credentials;
            access.cloud_auth = s.cloud_auth;
            access.mount = s.mount;
            access.ecr = s.ecr.clone();
            out.insert(host.clone(), access);
        }
        Ok(out)
    }
}
