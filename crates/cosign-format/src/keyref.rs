//! Signing key references (`--kms-key` / `--key-ref`), validated up front.

use std::fmt;
use std::str::FromStr;

/// A signing key reference, by provider.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// `gcpkms://projects/P/locations/L/keyRings/R/cryptoKeys/K[/cryptoKeyVersions/V]`
    GcpKms { resource: String },
    /// `awskms://[host:port]/{key-id|arn|alias/name}`
    AwsKms {
        endpoint: Option<String>,
        key_id: String,
    },
    /// `azurekms://<vault>.vault.azure.net/<key>[/<version>]`
    AzureKms {
        vault: String,
        key: String,
        version: Option<String>,
    },
    /// `hashivault://<key>`
    HashiVault { key: String },
    /// `env://VAR`: a PEM private key in an environment variable.
    Env { var: String },
    /// A private key file: PEM or cosign's encrypted `cosign.key`.
    File { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key reference `{reference}`: {why}")]
pub struct KeyRefError {
    pub reference: String,
    pub why: String,
}

fn err(reference: &str, why: impl Into<String>) -> KeyRefError {
    KeyRefError {
        reference: reference.to_string(),
        why: why.into(),
    }
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl FromStr for KeyRef {
    type Err = KeyRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(err(s, "it is empty"));
        }
        if let Some(rest) = s.strip_prefix("gcpkms://") {
            let parts: Vec<&str> = rest.split('/').collect();
            let shape_ok = (parts.len() == 8 || parts.len() == 10)
                && parts[0] == "projects"
                && parts[2] == "locations"
                && parts[4] == "keyRings"
                && parts[6] == "cryptoKeys"
                && (parts.len() == 8 || parts[8] == "cryptoKeyVersions")
                && parts.iter().skip(1).step_by(2).all(|p| segment_ok(p));
            if !shape_ok {
                return Err(err(s, "expected gcpkms://projects/P/locations/L/keyRings/R/cryptoKeys/K[/cryptoKeyVersions/V]"));
            }
            return Ok(KeyRef::GcpKms {
                resource: rest.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix("awskms://") {
            let (host, key) = rest
                .split_once('/')
                .ok_or_else(|| err(s, "expected awskms://[host:port]/{key-id|arn|alias/name}"))?;
            if key.is_empty() {
                return Err(err(s, "the key id, ARN or alias is missing"));
            }
            let key_ok = if let Some(alias) = key.strip_prefix("alias/") {
                segment_ok(alias) || alias.split('/').all(segment_ok)
            } else if key.starts_with("arn:") {
                let f: Vec<&str> = key.splitn(6, ':').collect();
                f.len() == 6
                    && f[2] == "kms"
                    && (f[5].starts_with("key/") || f[5].starts_with("alias/"))
            } else {
                key.len() == 36
                    && key.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
                    && key.matches('-').count() == 4
            };
            if !key_ok {
                return Err(err(
                    s,
                    "the key must be a key id (UUID), a key or alias ARN, or alias/NAME",
                ));
            }
            return Ok(KeyRef::AwsKms {
                endpoint: (!host.is_empty()).then(|| host.to_string()),
                key_id: key.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix("azurekms://") {
            let parts: Vec<&str> = rest.split('/').collect();
            if !(parts.len() == 2 || parts.len() == 3)
                || !parts[0].contains('.')
                || !parts.iter().all(|p| segment_ok(p))
            {
                return Err(err(
                    s,
                    "expected azurekms://<vault>.vault.azure.net/<key>[/<version>]",
                ));
            }
            return Ok(KeyRef::AzureKms {
                vault: parts[0].to_string(),
                key: parts[1].to_string(),
                version: parts.get(2).map(|v| v.to_string()),
            });
        }
        if let Some(rest) = s.strip_prefix("hashivault://") {
            if !segment_ok(rest) {
                return Err(err(s, "expected hashivault://<key name>"));
            }
            return Ok(KeyRef::HashiVault {
                key: rest.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix("env://") {
            let ok = !rest.is_empty()
                && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !rest.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                return Err(err(s, "expected env://VARIABLE_NAME"));
            }
            return Ok(KeyRef::Env {
                var: rest.to_string(),
            });
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(err(
                s,
                format!("unknown key provider `{scheme}://` (supported: gcpkms://, awskms://, azurekms://, hashivault://, env://, or a key file path)"),
            ));
        }
        Ok(KeyRef::File {
            path: s.to_string(),
        })
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::GcpKms { resource } => write!(f, "gcpkms://{resource}"),
            KeyRef::AwsKms { endpoint, key_id } => {
                write!(f, "awskms://{}/{key_id}", endpoint.as_deref().unwrap_or(""))
            }
            KeyRef::AzureKms {
                vault,
                key,
                version,
            } => {
                write!(f, "azurekms://{vault}/{key}")?;
                if let Some(v) = version {
                    write!(f, "/{v}")?;
                }
                Ok(())
            }
            KeyRef::HashiVault { key } => write!(f, "hashivault://{key}"),
            KeyRef::Env { var } => write!(f, "env://{var}"),
            KeyRef::File { path } => f.write_str(path),
        }
    }
}

impl fmt::Debug for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyRef({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_provider() {
        for ok in [
            "gcpkms://projects/p/locations/global/keyRings/r/cryptoKeys/k",
            "gcpkms://projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/3",
            "awskms:///alias/signing",
            "awskms://127.0.0.1:4566/1234abcd-12ab-34cd-56ef-1234567890ab",
            "awskms:///arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "azurekms://myvault.vault.azure.net/mykey",
            "hashivault://mykey",
            "env://COSIGN_KEY",
            "cosign.key",
        ] {
            let k: KeyRef = ok.parse().unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(k.to_string(), ok);
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let msgs: Vec<String> = [
            "gcpkms://path/to/key",
            "awskms://",
            "awskms:///not-a-key",
            "azurekms://vault/key",
            "hashivault://",
            "env://1BAD",
            "s3://bucket/key",
            "",
        ]
        .iter()
        .map(|s| s.parse::<KeyRef>().unwrap_err().to_string())
        .collect();
        insta::assert_yaml_snapshot!(msgs);
    }
}
