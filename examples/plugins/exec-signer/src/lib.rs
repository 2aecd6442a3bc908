//! Example dynamic plugin: a signer that hands each payload to an external
//! command, for keys that live behind a CLI (an HSM's tool, `pkcs11-tool`,
//! `openssl` with an engine, a signing service's client).
//!
//! The signatures are cosign-compatible (the format and verify-then-sign
//! flow of `image-syncer-cosign-format`, shared with the built-in `cosign`
//! signer): an existing valid signature → nothing written;
//! signatures none of which the `verify` command accepts → safety stop.
//!
//! ```yaml
//! signer:
//!   plugin: exec
//!   config:
//!     sign: [openssl, dgst, -sha256, -sign, key.pem]          # payload on stdin → DER signature on stdout
//!     verify: [openssl, dgst, -sha256, -verify, pub.pem, -signature, "{signature}"]  # exit 0 = valid
//! ```
//! `{signature}` is replaced by the path of a temporary file holding the raw
//! signature (created private, removed after use). A bare program name is
//! looked up on `PATH`; arguments are passed as is (no shell). Messages name
//! the program only, never its arguments (they may hold secrets).

use std::io::Write;
use std::process::{Command, Stdio};

use image_syncer_cosign_format::{sign_request, SignatureKey};
use image_syncer_plugin::core::async_trait;
use image_syncer_plugin::core::catalogue::{typed_config, BuildError, ConfigValue};
use image_syncer_plugin::core::context::SignerContext;
use image_syncer_plugin::core::stage::{SignOutcome, SignRequest, StageError, StageKind};
use image_syncer_plugin::{
    block_on, BlockingSigner, BlockingSink, PluginFactory, Registrar, StageDeclaration, SyncSink,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExecConfig {
    /// Command that reads the payload on stdin and writes the raw signature on stdout.
    sign: Vec<String>,
    /// Command that exits 0 when the signature (file `{signature}`) is valid for the payload on stdin.
    verify: Vec<String>,
    /// Also sign each child of a multi-arch index.
    #[serde(default)]
    recursive: bool,
    /// Working directory of the commands; relative to the definition file. Default: its directory.
    #[serde(default)]
    dir: Option<String>,
}

struct ExecKey {
    sign: Vec<String>,
    verify: Vec<String>,
    dir: std::path::PathBuf,
}

impl ExecKey {
    fn run(&self, argv: &[String], stdin: &[u8]) -> Result<std::process::Output, StageError> {
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                StageError::config(format!("exec signer: cannot run `{}`: {e}", argv[0]))
            })?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(stdin)
            .map_err(|e| StageError::transient(format!("exec signer: `{}`: {e}", argv[0])))?;
        child
            .wait_with_output()
            .map_err(|e| StageError::transient(format!("exec signer: `{}`: {e}", argv[0])))
    }
}

#[async_trait]
impl SignatureKey for ExecKey {
    fn describe(&self) -> String {
        format!("exec:{}", self.sign[0])
    }

    async fn verify(&self, payload: &[u8], signature: &[u8]) -> Result<bool, StageError> {
        // A new private file (O_EXCL, mode 0600), removed when dropped.
        let mut file = tempfile::NamedTempFile::new()
            .map_err(|e| StageError::transient(format!("exec signer: temporary file: {e}")))?;
        file.write_all(signature)
            .and_then(|_| file.flush())
            .map_err(|e| StageError::transient(format!("exec signer: temporary file: {e}")))?;
        let path = file.path().display().to_string();
        let argv: Vec<String> = self
            .verify
            .iter()
            .map(|a| a.replace("{signature}", &path))
            .collect();
        Ok(self.run(&argv, payload)?.status.success())
    }

    async fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, StageError> {
        let out = self.run(&self.sign, payload)?;
        if !out.status.success() || out.stdout.is_empty() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(StageError::config(format!(
                "exec signer: `{}` failed ({}): {}",
                self.sign[0],
                out.status,
                stderr.trim().chars().take(300).collect::<String>()
            )));
        }
        Ok(out.stdout)
    }
}

struct ExecSigner {
    key: ExecKey,
    recursive: bool,
}

impl BlockingSigner for ExecSigner {
    fn sign(
        &self,
        request: &SignRequest,
        sink: &dyn BlockingSink,
    ) -> Result<SignOutcome, StageError> {
        // The core's flow is async but does no I/O of its own: drive it here.
        block_on(sign_request(
            &self.key,
            self.recursive,
            request,
            &SyncSink(sink),
        ))
    }
}

struct Factory;

impl image_syncer_plugin::SignerFactory for Factory {
    fn build(
        &self,
        config: &ConfigValue,
        cx: &SignerContext,
    ) -> Result<Box<dyn BlockingSigner>, BuildError> {
        let c: ExecConfig = typed_config(StageKind::Signer, "exec", config)?;
        let invalid = |message: &str| BuildError::Config {
            kind: StageKind::Signer,
            plugin: "exec".into(),
            message: message.into(),
        };
        if c.sign.is_empty() {
            return Err(invalid("`sign` must name a command"));
        }
        if c.verify.is_empty() || !c.verify.iter().any(|a| a.contains("{signature}")) {
            return Err(invalid(
                "`verify` must name a command and pass `{signature}`",
            ));
        }
        let dir = c
            .dir
            .as_deref()
            .map(|d| cx.resolve_path(d))
            .unwrap_or_else(|| cx.base_dir.clone());
        Ok(Box::new(ExecSigner {
            key: ExecKey {
                sign: c.sign,
                verify: c.verify,
                dir,
            },
            recursive: c.recursive,
        }))
    }
}

fn register(r: &mut Registrar) {
    r.register(StageDeclaration {
        name: "exec".into(),
        description: "cosign-compatible signatures made and checked by external commands (example plugin)".into(),
        example_config: "sign: [openssl, dgst, -sha256, -sign, key.pem]\nverify: [openssl, dgst, -sha256, -verify, pub.pem, -signature, \"{signature}\"]\nrecursive: false\n".into(),
        config_schema: None,
        transport: None,
        factory: PluginFactory::signer(Factory),
    });
}

image_syncer_plugin::declare_plugin!(register);
