//! Artifact Registry and GCR (`*-docker.pkg.dev`, `gcr.io`, `*.gcr.io`):
//! Application Default Credentials, through `google-cloud-auth`.
//!
//! ADC is, in this order: the file `GOOGLE_APPLICATION_CREDENTIALS` names;
//! gcloud's `~/.config/gcloud/application_default_credentials.json`
//! (`gcloud auth application-default login`); else the metadata server
//! (GCE, Cloud Run, GKE Workload Identity), which `GCE_METADATA_HOST` moves.
//! An access token of scope `cloud-platform` is the password of user
//! `oauth2accesstoken`.
//!
//! A service-account key file is the exception: `google-cloud-auth` turns
//! one into a self-signed JWT rather than an OAuth access token, which
//! Google documents for its APIs, not for the registry's Docker login. Such
//! a file logs in as Google documents for keys and as `-t` does: user
//! `_json_key`, the file's content as password.

use std::error::Error as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use google_cloud_auth::credentials::Builder;
use image_syncer_core::context::Secret;
use image_syncer_core::stage::error_chain;

use super::{CloudCredential, CloudError, LoginTarget};
use crate::quirks::RegistryKind;

/// The scope asked for: Artifact Registry's Docker login takes any token
/// that may use the Cloud Platform.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The user an access token is sent with.
pub(crate) const USERNAME: &str = "oauth2accesstoken";
/// The user a service-account key is sent with.
pub(crate) const KEY_USERNAME: &str = "_json_key";
/// Where ADC was looked for, for [`CloudError::NoIdentity`].
pub(crate) const LOOKED: &str =
    "GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default credentials, the metadata server";
/// The longest a login may take (the metadata server's client has no
/// timeout of its own).
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a token from the metadata server is used. `google-cloud-auth`
/// does not tell its expiry; the metadata server renews its tokens 5
/// minutes before they end, so one it hands out has at least that left.
const METADATA_TOKEN_USE: Duration = Duration::from_secs(4 * 60);
/// How long a token minted for this login (user credentials, workload
/// identity federation, impersonation) is used: they last an hour.
const MINTED_TOKEN_USE: Duration = Duration::from_secs(50 * 60);

fn provider() -> &'static str {
    RegistryKind::Gar.name()
}

/// Where Application Default Credentials come from, as `google-cloud-auth`
/// decides it (AIP-4110).
#[derive(Debug, PartialEq, Eq)]
enum Source {
    /// `GOOGLE_APPLICATION_CREDENTIALS`.
    Env(PathBuf),
    /// gcloud's well-known file, which exists.
    Gcloud(PathBuf),
    /// Neither: the metadata server.
    MetadataServer,
}

impl Source {
    fn find() -> Source {
        if let Some(path) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
            return Source::Env(path.into());
        }
        if let Some(home) = std::env::var_os("HOME") {
            let path =
                PathBuf::from(home).join(".config/gcloud/application_default_credentials.json");
            if path.exists() {
                return Source::Gcloud(path);
            }
        }
        Source::MetadataServer
    }

    fn describe(&self) -> String {
        match self {
            Source::Env(p) => format!(
                "the credentials file {} (GOOGLE_APPLICATION_CREDENTIALS)",
                p.display()
            ),
            Source::Gcloud(p) => {
                format!("gcloud's application default credentials {}", p.display())
            }
            Source::MetadataServer => match std::env::var("GCE_METADATA_HOST") {
                Ok(host) => format!("the metadata server at {host} (GCE_METADATA_HOST)"),
                Err(_) => "the metadata server".to_string(),
            },
        }
    }
}

/// An access token from Application Default Credentials for `target`, or,
/// for a service-account key file, the key itself (see the module's
/// documentation).
pub(super) async fn login(target: &LoginTarget<'_>) -> Result<CloudCredential, CloudError> {
    let source = Source::find();
    tracing::debug!(registry = %target.host, source = %source.describe(), "Google application default credentials");
    let refused = |message: String, transient: bool| CloudError::Refused {
        provider: provider(),
        message,
        transient,
    };
    if let Source::Env(path) | Source::Gcloud(path) = &source {
        let content = std::fs::read_to_string(path)
            .map_err(|e| refused(format!("cannot read {}: {e}", source.describe()), false))?;
        let kind = serde_json::from_str::<serde_json::Value>(&content)
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string));
        if kind.as_deref() == Some("service_account") {
            return Ok(CloudCredential {
                username: KEY_USERNAME.to_string(),
                password: Secret::new(content),
                expires: None,
            });
        }
    }
    let credentials = Builder::default()
        .with_scopes([SCOPE])
        .build_access_token_credentials()
        .map_err(|e| {
            refused(
                format!("{} cannot be used: {}", source.describe(), error_chain(&e)),
                false,
            )
        })?;
    let token = match tokio::time::timeout(TIMEOUT, credentials.access_token()).await {
        Ok(Ok(token)) => token,
        Ok(Err(e)) => {
            if source == Source::MetadataServer && unreachable(&e) {
                return Err(CloudError::NoIdentity {
                    provider: provider(),
                    what: "Google credentials",
                    looked: LOOKED,
                });
            }
            return Err(refused(
                format!(
                    "no access token from {}: {}",
                    source.describe(),
                    innermost(&e)
                ),
                e.is_transient(),
            ));
        }
        Err(_) => {
            return Err(refused(
                format!(
                    "no access token from {} within {} s",
                    source.describe(),
                    TIMEOUT.as_secs()
                ),
                true,
            ))
        }
    };
    let lasts = match source {
        Source::MetadataServer => METADATA_TOKEN_USE,
        Source::Env(_) | Source::Gcloud(_) => MINTED_TOKEN_USE,
    };
    Ok(CloudCredential {
        username: USERNAME.to_string(),
        password: Secret::new(token.token),
        expires: Some(SystemTime::now() + lasts),
    })
}

/// The last error of `e`'s chain: what went wrong, without the library's
/// layers of "failed to fetch" around it.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    // Bounded: error chains are short.
    for _ in 0..16 {
        match last.source() {
            Some(s) => last = s,
            None => break,
        }
    }
    last.to_string()
}

/// Whether `e` says nothing answered at all (no such host, connection
/// refused): no metadata server, so no identity, rather than a refusal.
fn unreachable(e: &google_cloud_auth::errors::CredentialsError) -> bool {
    let mut cur = e.source();
    // Bounded: error chains are short.
    for _ in 0..16 {
        let Some(s) = cur else { return false };
        if let Some(r) = s.downcast_ref::<reqwest::Error>() {
            return r.is_connect();
        }
        cur = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    //! Against the testkit's stand-in metadata server (and OAuth endpoint),
    //! each login in a process of its own ([`isolated`]).

    use image_syncer_testkit::GceMetadata;

    use super::*;
    use crate::cloud::isolated::{child, closed_port, run, Outcome};

    const HOST: &str = "europe-docker.pkg.dev";

    /// The login each test's child runs.
    async fn login_to_gar() -> Result<CloudCredential, CloudError> {
        login(&LoginTarget {
            host: HOST,
            endpoint: HOST,
            insecure: false,
            ca_certificates: &[],
        })
        .await
    }

    #[test]
    fn the_metadata_servers_token_is_the_password_of_oauth2accesstoken() {
        if child(
            module_path!(),
            "the_metadata_servers_token_is_the_password_of_oauth2accesstoken",
            login_to_gar,
        ) {
            return;
        }
        let metadata = GceMetadata::start();
        let env = [("GCE_METADATA_HOST", metadata.host())];
        let outcome = run(
            module_path!(),
            "the_metadata_servers_token_is_the_password_of_oauth2accesstoken",
            &env,
        );
        let Outcome::Credential {
            username,
            password,
            expires_in,
        } = outcome
        else {
            panic!("no credential: {outcome:?}")
        };
        assert_eq!(username, "oauth2accesstoken");
        assert_eq!(password, metadata.access_token());
        // Used for 4 minutes, then asked again.
        let expires_in = expires_in.expect("an expiry");
        assert!((200..=240).contains(&expires_in), "{expires_in}");
        let asked: Vec<_> = metadata
            .requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/service-accounts/default/token"))
            .collect();
        assert_eq!(asked.len(), 1, "{:?}", metadata.requests());
        assert!(asked[0].flavor && asked[0].granted, "{asked:?}");
        assert_eq!(asked[0].scopes.as_deref(), Some(SCOPE));
    }

    #[test]
    fn without_application_default_credentials_there_is_no_identity() {
        if child(
            module_path!(),
            "without_application_default_credentials_there_is_no_identity",
            login_to_gar,
        ) {
            return;
        }
        // No credentials file, no gcloud login, and no metadata server.
        let env = [("GCE_METADATA_HOST", closed_port())];
        let outcome = run(
            module_path!(),
            "without_application_default_credentials_there_is_no_identity",
            &env,
        );
        assert!(matches!(outcome, Outcome::NoIdentity { .. }), "{outcome:?}");
        insta::assert_snapshot!(outcome.message(), @"GAR: no Google credentials found (GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default credentials, the metadata server)");
    }

    #[test]
    fn a_metadata_server_that_refuses_is_a_refusal_not_a_missing_identity() {
        if child(
            module_path!(),
            "a_metadata_server_that_refuses_is_a_refusal_not_a_missing_identity",
            login_to_gar,
        ) {
            return;
        }
        let metadata = GceMetadata::start();
        // A metadata server with no service account for the instance.
        metadata.refuse(Some(404));
        let env = [("GCE_METADATA_HOST", metadata.host())];
        let outcome = run(
            module_path!(),
            "a_metadata_server_that_refuses_is_a_refusal_not_a_missing_identity",
            &env,
        );
        let Outcome::Refused { message, transient } = &outcome else {
            panic!("not refused: {outcome:?}")
        };
        assert!(!transient, "{message}");
        assert!(!message.contains(&metadata.access_token()), "{message}");
        let message = message.replace(&metadata.host(), "127.0.0.1:PORT");
        insta::assert_snapshot!(message, @r#"GAR: no access token from the metadata server at 127.0.0.1:PORT (GCE_METADATA_HOST): the HTTP transport reports a [404] error: failed to fetch access token :b"stand-in: refused""#);
    }

    #[test]
    fn gclouds_user_credentials_are_refreshed_into_an_access_token() {
        if child(
            module_path!(),
            "gclouds_user_credentials_are_refreshed_into_an_access_token",
            login_to_gar,
        ) {
            return;
        }
        let metadata = GceMetadata::start();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), metadata.authorized_user().to_string()).unwrap();
        let env = [
            // gcloud's file is found under HOME; GOOGLE_APPLICATION_CREDENTIALS
            // names the same kind of file: the one tested here.
            (
                "GOOGLE_APPLICATION_CREDENTIALS",
                file.path().display().to_string(),
            ),
            // Not asked: the file comes first.
            ("GCE_METADATA_HOST", closed_port()),
        ];
        let outcome = run(
            module_path!(),
            "gclouds_user_credentials_are_refreshed_into_an_access_token",
            &env,
        );
        let Outcome::Credential {
            username,
            password,
            expires_in,
        } = outcome
        else {
            panic!("no credential: {outcome:?}")
        };
        assert_eq!(username, "oauth2accesstoken");
        assert_eq!(password, metadata.access_token());
        assert!(expires_in.is_some_and(|s| s > 45 * 60), "{expires_in:?}");
        let refreshed: Vec<_> = metadata
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == "/token")
            .collect();
        assert_eq!(refreshed.len(), 1, "{:?}", metadata.requests());
        assert!(refreshed[0].granted, "{refreshed:?}");
        assert_eq!(refreshed[0].scopes.as_deref(), Some(SCOPE));
    }

    #[test]
    fn gclouds_well_known_file_is_found_under_home() {
        if child(
            module_path!(),
            "gclouds_well_known_file_is_found_under_home",
            login_to_gar,
        ) {
            return;
        }
        let metadata = GceMetadata::start();
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".config/gcloud");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("application_default_credentials.json"),
            metadata.authorized_user().to_string(),
        )
        .unwrap();
        let env = [
            ("HOME", home.path().display().to_string()),
            ("GCE_METADATA_HOST", closed_port()),
        ];
        let outcome = run(
            module_path!(),
            "gclouds_well_known_file_is_found_under_home",
            &env,
        );
        assert!(
            matches!(&outcome, Outcome::Credential { username, password, .. }
                if username == "oauth2accesstoken" && *password == metadata.access_token()),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_service_account_key_logs_in_as_json_key() {
        if child(
            module_path!(),
            "a_service_account_key_logs_in_as_json_key",
            login_to_gar,
        ) {
            return;
        }
        let key = serde_json::json!({
            "type": "service_account",
            "project_id": "standin",
            "private_key_id": "0123456789abcdef",
            "private_key": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
            "client_email": "syncer@standin.iam.gserviceaccount.com",
            "client_id": "1234567890",
            "token_uri": "https://oauth2.googleapis.com/token",
        })
        .to_string();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &key).unwrap();
        let env = [
            (
                "GOOGLE_APPLICATION_CREDENTIALS",
                file.path().display().to_string(),
            ),
            ("GCE_METADATA_HOST", closed_port()),
        ];
        let outcome = run(
            module_path!(),
            "a_service_account_key_logs_in_as_json_key",
            &env,
        );
        assert_eq!(
            outcome,
            Outcome::Credential {
                username: "_json_key".into(),
                password: key,
                expires_in: None
            }
        );
    }

    #[test]
    fn a_credentials_file_that_cannot_be_read_is_refused() {
        if child(
            module_path!(),
            "a_credentials_file_that_cannot_be_read_is_refused",
            login_to_gar,
        ) {
            return;
        }
        let env = [
            (
                "GOOGLE_APPLICATION_CREDENTIALS",
                "/nonexistent/key.json".to_string(),
            ),
            ("GCE_METADATA_HOST", closed_port()),
        ];
        let outcome = run(
            module_path!(),
            "a_credentials_file_that_cannot_be_read_is_refused",
            &env,
        );
        assert!(
            matches!(
                outcome,
                Outcome::Refused {
                    transient: false,
                    ..
                }
            ),
            "{outcome:?}"
        );
        insta::assert_snapshot!(outcome.message(), @"GAR: cannot read the credentials file /nonexistent/key.json (GOOGLE_APPLICATION_CREDENTIALS): No such file or directory (os error 2)");
    }
}
