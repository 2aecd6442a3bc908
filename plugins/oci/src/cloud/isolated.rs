//! Tests of the cloud logins run each login in a process of its own: the
//! cloud SDKs read the process's environment (`GCE_METADATA_HOST`,
//! `GOOGLE_APPLICATION_CREDENTIALS`, `HOME`, `AZURE_*`, `SSL_CERT_FILE`),
//! which tests running side by side in one process must not change.
//!
//! [`run`] runs the test binary again for the one test, with only the
//! environment the test gives (and a fresh, empty `HOME`). In that child,
//! the test's first call, [`child`], runs the login and writes what it gave
//! to a file; the parent reads it back as an [`Outcome`]. The stand-ins the
//! login talks to run in the parent; the child learns where they are from
//! its environment only.

use std::future::Future;
use std::process::Command;
use std::time::SystemTime;

use super::{CloudCredential, CloudError};

/// Set in the child: the test it runs the login of.
const CHILD: &str = "IMAGE_SYNCER_CLOUD_TEST_CHILD";
/// Set in the child: where it writes the [`Outcome`].
const OUT: &str = "IMAGE_SYNCER_CLOUD_TEST_OUT";

/// What a login gave, as the parent sees it.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Outcome {
    Credential {
        username: String,
        /// The secret itself: the test compares it with what the stand-in issued.
        password: String,
        /// Seconds from the login to `expires`.
        expires_in: Option<i64>,
    },
    NoIdentity {
        message: String,
    },
    Refused {
        message: String,
        transient: bool,
    },
    NotBuilt {
        message: String,
    },
}

impl Outcome {
    fn of(result: Result<CloudCredential, CloudError>) -> Outcome {
        match result {
            Ok(c) => Outcome::Credential {
                username: c.username,
                password: c.password.expose().to_string(),
                expires_in: c
                    .expires
                    .map(|e| match e.duration_since(SystemTime::now()) {
                        Ok(d) => d.as_secs() as i64,
                        Err(past) => -(past.duration().as_secs() as i64),
                    }),
            },
            Err(e) => {
                let message = e.to_string();
                match e {
                    CloudError::NoIdentity { .. } => Outcome::NoIdentity { message },
                    CloudError::Refused { transient, .. } => {
                        Outcome::Refused { message, transient }
                    }
                    CloudError::NotBuilt { .. } => Outcome::NotBuilt { message },
                }
            }
        }
    }

    /// The message of a failed login; panics on a credential.
    pub(crate) fn message(&self) -> &str {
        match self {
            Outcome::NoIdentity { message }
            | Outcome::Refused { message, .. }
            | Outcome::NotBuilt { message } => message,
            Outcome::Credential { username, .. } => {
                panic!("expected a failed login, got a credential for {username}")
            }
        }
    }
}

/// The test's name as the test harness filters it (without the crate):
/// `module` is the test's `module_path!()`, `test` its name.
fn test_name(module: &str, test: &str) -> String {
    match module.split_once("::") {
        Some((_, rest)) => format!("{rest}::{test}"),
        None => test.to_string(),
    }
}

/// In the child [`run`] starts for this test: runs `login` and writes what
/// it gave for the parent, then says `true` (the test then returns at
/// once). In any other process: `false`, and nothing runs. A test calls
/// this first, before it starts any stand-in: the child's only inputs are
/// its environment.
pub(crate) fn child<F, Fut>(module: &str, test: &str, login: F) -> bool
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<CloudCredential, CloudError>>,
{
    if std::env::var(CHILD).ok() != Some(test_name(module, test)) {
        return false;
    }
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(login());
    let out = std::env::var(OUT).expect("the parent names the outcome file");
    std::fs::write(out, serde_json::to_vec(&Outcome::of(result)).expect("JSON"))
        .expect("outcome file");
    true
}

/// Runs the test again in a child process, with `env` only (and an empty
/// `HOME`, unless `env` names one), where its [`child`] call logs in; what
/// that gave.
pub(crate) fn run(module: &str, test: &str, env: &[(&str, String)]) -> Outcome {
    let name = test_name(module, test);
    let dir = tempfile::tempdir().expect("temporary directory");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).expect("HOME");
    let out = dir.path().join("outcome.json");
    let mut child = Command::new(std::env::current_exe().expect("the test binary"));
    child
        .args([name.as_str(), "--exact", "--test-threads=1"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env(CHILD, &name)
        .env(OUT, &out);
    for (k, v) in env {
        child.env(k, v);
    }
    let ran = child.output().expect("the test binary runs");
    assert!(
        ran.status.success() && out.exists(),
        "the login's process failed ({}):\n{}{}",
        ran.status,
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    let written = std::fs::read(&out).expect("outcome file");
    serde_json::from_slice(&written).expect("the outcome the child wrote")
}

/// A 127.0.0.1 port nothing listens on (it was free a moment ago).
pub(crate) fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let address = listener.local_addr().expect("address");
    drop(listener);
    address.to_string()
}
