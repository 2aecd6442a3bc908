use std::path::{Path, PathBuf};
use std::process::Command;

pub use image_syncer_testkit::{block_on, fixtures, Moto, Registry, RegistryOptions, StandIn};

/// The outcome of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// The binary with a clean environment (no SYNCER_* from the caller).
pub fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_image-syncer"));
    clean_env(&mut c);
    c
}

/// Removes the caller's provider and registry configuration from `c`'s
/// environment and sets `NO_COLOR=1`.
pub fn clean_env(c: &mut Command) {
    for (k, _) in std::env::vars() {
        // Nothing of the caller's provider or registry configuration leaks in.
        if k.starts_with("SYNCER_")
            || k.starts_with("AWS_")
            || k.starts_with("VAULT_")
            || k.starts_with("GOOGLE_")
            || k.starts_with("GCE_")
            || k.starts_with("COSIGN_")
            || k == "RUST_LOG"
            || k == "JOB_COMPLETION_INDEX"
            || k == "SSL_CERT_FILE"
            || k == "DOCKER_CONFIG"
            || k == "REGISTRY_AUTH_FILE"
            || k == "SSL_CERT_DIR"
        {
            c.env_remove(k);
        }
    }
    c.env("NO_COLOR", "1");
}

pub fn run_with(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = command();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run image-syncer");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn run(args: &[&str]) -> Run {
    run_with(args, &[])
}

/// Writes a definition file into `dir`.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Source registry reached as `docker.io` through an endpoint mapping, target
/// registry as itself: a definition header for both.
pub fn header(source: &Registry, target: &Registry) -> String {
    format!(
        "targetRepoPrefix: \"{}/mirror/\"\nregistries:\n  docker.io:\n    endpoint: \"{}\"\n    insecure: true\n",
        target.host(),
        source.host()
    )
}

/// Replaces registry ports so output can be snapshotted.
pub fn redact(text: &str, regs: &[(&Registry, &str)]) -> String {
    let mut t = text.to_string();
    for (r, name) in regs {
        t = t.replace(&r.host(), name);
    }
    t
}

/// Runs openssl, failing the test with its message when it fails.
pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A P-256 key pair made by openssl in `dir`: `<stem>.pem` (PKCS#8) and `<stem>.pub`.
pub fn p256_keypair(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{stem}.pem"));
    let public = dir.join(format!("{stem}.pub"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        key.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (key, public)
}
