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

    /// What a finished process printed, and its exit code (-1 for a signal).
    pub fn of(out: &std::process::Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// [`Run::of`] a run of the binary (`args`), its output scanned for
    /// secrets ([`scan_for_secrets`]).
    pub fn scanned(args: &[&str], out: &std::process::Output) -> Run {
        let run = Run::of(out);
        scan_for_secrets(args, &run.all());
        run
    }
}

/// The binary with a clean environment ([`clean_env`]); hold the [`Home`]
/// until the run has ended.
pub fn command() -> (Command, Home) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_image-syncer"));
    let home = clean_env(&mut c);
    (c, home)
}

/// The one HOME a run sees: a fresh, empty directory, removed when this is
/// dropped (so held until the run has ended).
#[must_use = "the run's HOME is removed when this is dropped"]
pub struct Home(pub tempfile::TempDir);

/// What a run keeps of the caller's environment: the search path, the
/// temporary directory, the locale and time zone, and what Rust's
/// backtraces and coverage runs read. Nothing else: no `HOME` (a
/// developer's `~/.docker/config.json`, gcloud or Azure CLI login), no
/// `XDG_*` (podman's `auth.json` under `XDG_RUNTIME_DIR`), no proxy
/// (`HTTP(S)_PROXY`, `ALL_PROXY`, `NO_PROXY`, in either case), no
/// provider or registry configuration (`SYNCER_*`, `AWS_*`, `AZURE_*`,
/// `GOOGLE_*`, `VAULT_*`, `COSIGN_*`, `DOCKER_CONFIG`, `SSL_CERT_FILE`, …).
/// A test that wants one of those sets it on the run.
const KEPT: &[&str] = &[
    "PATH",
    "TMPDIR",
    "LANG",
    "TZ",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
    "LLVM_PROFILE_FILE",
];

/// Gives `c` a clean environment: only [`KEPT`] (and `LC_*`) of the
/// caller's, a fresh empty `HOME` (the returned [`Home`]: hold it until the
/// run has ended) and `NO_COLOR=1`.
pub fn clean_env(c: &mut Command) -> Home {
    clean_env_from(c, std::env::vars_os())
}

/// [`clean_env`] with `caller` as the caller's environment.
fn clean_env_from(
    c: &mut Command,
    caller: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Home {
    c.env_clear();
    for (k, v) in caller {
        let name = k.to_string_lossy();
        if KEPT.contains(&name.as_ref()) || name.starts_with("LC_") {
            c.env(&k, v);
        }
    }
    let home = tempfile::Builder::new()
        .prefix("e2e-home-")
        .tempdir()
        .expect("a fresh HOME");
    c.env("HOME", home.path());
    c.env("NO_COLOR", "1");
    Home(home)
}

/// A run sees a fresh, empty HOME and none of the caller's proxies,
/// provider credentials or XDG directories, whatever the caller has set.
#[test]
fn a_run_sees_a_fresh_home_and_none_of_the_callers_environment() {
    let caller = [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("LC_ALL", "C.UTF-8"),
        ("HOME", "/home/developer"),
        ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ("XDG_CONFIG_HOME", "/home/developer/.config"),
        ("HTTP_PROXY", "http://proxy.corp:3128"),
        ("https_proxy", "http://proxy.corp:3128"),
        ("ALL_PROXY", "socks5://proxy.corp:1080"),
        ("NO_PROXY", "corp"),
        ("AZURE_CLIENT_SECRET", "developer-secret"),
        ("AWS_SECRET_ACCESS_KEY", "developer-secret"),
        ("SYNCER_KMS_KEY", "awskms:///alias/prod"),
        ("DOCKER_CONFIG", "/home/developer/.docker"),
        ("REGISTRY_AUTH_FILE", "/home/developer/auth.json"),
        ("SSL_CERT_FILE", "/home/developer/ca.pem"),
    ];
    let mut c = Command::new("sh");
    c.args(["-c", "env; echo ---; ls -A \"$HOME\" 2>&1"]);
    let home = clean_env_from(&mut c, caller.iter().map(|(k, v)| (k.into(), v.into())));
    let out = c.output().expect("sh runs");
    let out = String::from_utf8(out.stdout).unwrap();
    let (vars, listing) = out.split_once("---\n").expect("both parts");
    let mut seen: Vec<&str> = vars
        .lines()
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
        .collect();
    seen.sort();
    let home_line = format!("HOME={}", home.0.path().display());
    assert_eq!(
        seen,
        [
            home_line.as_str(),
            "LC_ALL=C.UTF-8",
            "NO_COLOR=1",
            "PATH=/usr/local/bin:/usr/bin:/bin"
        ],
        "{out}"
    );
    assert_eq!(listing, "", "the HOME is not empty");
    let path = home.0.path().to_path_buf();
    drop(home);
    assert!(!path.exists(), "the HOME outlives the run");
}

/// Secrets no run may show: every run of the binary in this test process,
/// with or without `--debug`, is scanned for each (see [`never_shown`]).
static SECRETS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Marks `secret` (a password, a token, key material) as never to appear in
/// any output: every later run in this process fails if it does.
pub fn never_shown(secret: &str) {
    assert!(
        secret.len() >= 8,
        "too short to be told apart from other output: {secret:?}"
    );
    SECRETS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(secret.to_string());
}

/// What of a PEM EC private key (PKCS#8 or SEC1) no output may show: its
/// private scalar in every form a program could print it in.
///
/// - Base64, as in the PEM itself or re-encoded (another container puts the
///   scalar at another offset, so each of the three alignments is taken):
///   the characters that encode scalar bytes only, in pieces of 16. A run
///   broken once (a PEM line break, `\n` in `{:?}`) still holds a whole
///   piece, so the key is found printed verbatim, with `{:?}` or as one
///   unbroken line; each piece also in URL-safe base64 (a JWK's `d`).
/// - Hex (lower and upper case), and the bytes as `{:?}` prints a byte
///   slice (`12, 200, 3, …`, the first 12 bytes).
///
/// The DER bytes themselves are not text: a program writing them raw to
/// its output is caught only by those forms.
pub fn key_material(pem_file: &Path) -> Vec<String> {
    key_secrets(&std::fs::read_to_string(pem_file).unwrap())
}

/// [`key_material`] of PEM text.
pub fn key_secrets(pem: &str) -> Vec<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = b64.decode(&body).expect("a PEM key's body is base64");
    // ECPrivateKey: version 1, then the scalar as an OCTET STRING of 32 bytes.
    let at = der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("an EC P-256 private key (PKCS#8 or SEC1)")
        + 5;
    let scalar = &der[at..at + 32];
    let mut out = Vec::new();
    for shift in 0..3 {
        let mut shifted = vec![0u8; shift];
        shifted.extend_from_slice(scalar);
        let encoded = b64.encode(&shifted);
        // Characters [first, last) encode scalar bytes only.
        let (first, last) = (shift.div_ceil(3) * 4, (shift + 32) / 3 * 4);
        let run = &encoded.as_bytes()[first..last];
        for piece in run.chunks(16).filter(|p| p.len() >= 8) {
            let piece = String::from_utf8(piece.to_vec()).unwrap();
            let url_safe = piece.replace('+', "-").replace('/', "_");
            if url_safe != piece {
                out.push(url_safe);
            }
            out.push(piece);
        }
    }
    let hex: String = scalar.iter().map(|b| format!("{b:02x}")).collect();
    out.push(hex.to_uppercase());
    out.push(hex);
    let debug = format!("{:?}", &scalar[..12]);
    out.push(debug[1..debug.len() - 1].to_string());
    out
}

/// The secrets registered so far that `out` shows (their first characters).
fn secrets_in(out: &str, secrets: &[String]) -> Vec<String> {
    secrets
        .iter()
        .filter(|s| out.contains(s.as_str()))
        .map(|s| format!("{}…", &s[..4]))
        .collect()
}

/// Checks a run's whole output against every secret marked so far. Every
/// run of the binary goes through it: [`run_with`], [`spawn`] (when the run
/// is waited for), and the runs made another way (through
/// `scripts/image.sh`, in a chroot, under `script`) call it themselves.
pub fn scan_for_secrets(args: &[&str], out: &str) {
    let found = secrets_in(out, &SECRETS.lock().unwrap_or_else(|e| e.into_inner()));
    assert!(
        found.is_empty(),
        "secrets ({}) reached the output of image-syncer {args:?}:\n{out}",
        found.join(", ")
    );
}

/// The scan finds a private key printed in any of the forms
/// [`key_material`] covers, and nothing in the output of another key.
#[test]
fn the_secret_scan_finds_a_private_key_in_every_printed_form() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = p256_keypair(dir.path(), "scanned");
    let (other, _) = p256_keypair(dir.path(), "other");
    let pem = std::fs::read_to_string(&key).unwrap();
    let secrets = key_material(&key);
    let der = base64::engine::general_purpose::STANDARD
        .decode(
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let scalar = &der[36..68];
    let sec1 = dir.path().join("scanned.sec1.pem");
    openssl(&[
        "ec",
        "-in",
        key.to_str().unwrap(),
        "-out",
        sec1.to_str().unwrap(),
    ]);
    let sec1 = std::fs::read_to_string(&sec1).unwrap();
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
    let printed = [
        ("verbatim", format!("loaded key:\n{pem}\n")),
        ("debug", format!("key: {pem:?}")),
        (
            "one line",
            format!(
                "{{\"key\":\"{}\"}}",
                pem.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>()
            ),
        ),
        ("SEC1 re-encoded", sec1),
        (
            "scalar base64",
            base64::engine::general_purpose::STANDARD.encode(scalar),
        ),
        (
            "JWK d",
            format!(
                "\"d\":\"{}\"",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(scalar)
            ),
        ),
        ("hex", scalar.iter().map(|b| format!("{b:02x}")).collect()),
        ("bytes debug", format!("{scalar:?}")),
        ("DER debug", format!("{der:?}")),
    ];
    for (form, out) in &printed {
        assert!(
            !secrets_in(out, &secrets).is_empty(),
            "a key printed as {form} is not found: {out}"
        );
    }
    // Neither another key nor the public key is taken for this one.
    let innocent = format!(
        "{}{}",
        std::fs::read_to_string(other).unwrap(),
        std::fs::read_to_string(public).unwrap()
    );
    assert_eq!(secrets_in(&innocent, &secrets), Vec::<String>::new());
}

pub fn run_with(args: &[&str], env: &[(&str, &str)]) -> Run {
    let (mut c, _home) = command();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    Run::scanned(args, &c.output().expect("run image-syncer"))
}

pub fn run(args: &[&str]) -> Run {
    run_with(args, &[])
}

/// A run of the binary in the background (for tests that signal or kill
/// it, or act while it runs), its output captured. Its output is scanned
/// for secrets when it is waited for ([`Background::wait`]), including the
/// lines read while it ran ([`Background::stderr_lines`]).
pub struct Background {
    pub child: std::process::Child,
    _home: Home,
    args: Vec<String>,
    /// The stderr lines handed out by [`Background::stderr_lines`], and the
    /// thread that reads them.
    read: Option<Lines>,
    /// The same for stdout ([`Background::stdout_lines`]).
    read_out: Option<Lines>,
}

/// The lines a thread read from a pipe, kept for the scan at
/// [`Background::wait`], and that thread.
type Lines = (
    std::sync::Arc<std::sync::Mutex<String>>,
    std::thread::JoinHandle<()>,
);

/// Reads `pipe` line by line on a thread: each line is sent to the
/// receiver returned and kept.
fn read_lines(
    pipe: impl std::io::Read + Send + 'static,
) -> (std::sync::mpsc::Receiver<String>, Lines) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let keep = seen.clone();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            keep.lock().unwrap().push_str(&format!("{line}\n"));
            // The test may stop listening; the rest is still kept.
            let _ = tx.send(line);
        }
    });
    (rx, (seen, reader))
}

/// Starts the binary with `args` (clean environment, output piped).
pub fn spawn(args: &[&str]) -> Background {
    spawn_with(args, &[])
}

/// [`spawn`] with environment variables.
pub fn spawn_with(args: &[&str], env: &[(&str, &str)]) -> Background {
    let (mut c, home) = command();
    c.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    Background {
        child: c.spawn().expect("start image-syncer"),
        _home: home,
        args: args.iter().map(|a| a.to_string()).collect(),
        read: None,
        read_out: None,
    }
}

impl Background {
    /// The lines of the run's stderr as they come (a thread reads them);
    /// each is kept for the scan at [`Background::wait`].
    pub fn stderr_lines(&mut self) -> std::sync::mpsc::Receiver<String> {
        let err = self.child.stderr.take().expect("stderr not taken yet");
        let (rx, lines) = read_lines(err);
        self.read = Some(lines);
        rx
    }

    /// The lines of the run's stdout as they come, as
    /// [`Background::stderr_lines`] hands out stderr's.
    pub fn stdout_lines(&mut self) -> std::sync::mpsc::Receiver<String> {
        let out = self.child.stdout.take().expect("stdout not taken yet");
        let (rx, lines) = read_lines(out);
        self.read_out = Some(lines);
        rx
    }

    /// Waits for the run to end and scans all its output; the exit status
    /// (`code()` is `None` when a signal ended it) and the output. `stderr`
    /// and `stdout` hold the lines [`Background::stderr_lines`] and
    /// [`Background::stdout_lines`] handed out, too.
    pub fn wait(self) -> (std::process::ExitStatus, Run) {
        let out = self
            .child
            .wait_with_output()
            .expect("wait for image-syncer");
        let mut stderr = String::new();
        if let Some((seen, reader)) = self.read {
            reader.join().expect("the stderr reader");
            stderr.push_str(&seen.lock().unwrap());
        }
        stderr.push_str(&String::from_utf8_lossy(&out.stderr));
        let mut stdout = String::new();
        if let Some((seen, reader)) = self.read_out {
            reader.join().expect("the stdout reader");
            stdout.push_str(&seen.lock().unwrap());
        }
        stdout.push_str(&String::from_utf8_lossy(&out.stdout));
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout,
            stderr,
        };
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        scan_for_secrets(&args, &run.all());
        (out.status, run)
    }
}

/// A run in the background that does not end by itself (`--watch`): killed
/// if the test ends before waiting for it (a failed assertion), so that no
/// process outlives its test.
pub struct Watched(Option<Background>);

impl Watched {
    /// Starts the binary with `args`, as [`spawn`] does.
    pub fn spawn(args: &[&str]) -> Watched {
        Watched(Some(spawn(args)))
    }

    pub fn run(&mut self) -> &mut Background {
        self.0.as_mut().expect("not waited for yet")
    }

    /// [`Background::wait`].
    pub fn wait(mut self) -> (std::process::ExitStatus, Run) {
        self.0.take().expect("not waited for yet").wait()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(b) = &mut self.0 {
            let _ = b.child.kill();
            let _ = b.child.wait();
        }
    }
}

/// Whether `line` is a log line: it starts with the RFC 3339 timestamp
/// tracing writes (`2026-11-27T12:00:00.000000Z`).
pub fn is_log_line(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
}

/// `stderr` without its log lines: the error messages, for snapshots.
pub fn messages(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !is_log_line(l))
        .map(|l| format!("{l}\n"))
        .collect()
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

/// `data` signed with the private key `key` by `openssl dgst -sha256
/// -sign` (DER for ECDSA), through files named after `stem` in `dir`.
pub fn openssl_sign(dir: &Path, stem: &str, key: &Path, data: &[u8]) -> Vec<u8> {
    let (data_file, sig_file) = (
        dir.join(format!("{stem}.data")),
        dir.join(format!("{stem}.sig")),
    );
    std::fs::write(&data_file, data).unwrap();
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        key.to_str().unwrap(),
        "-out",
        sig_file.to_str().unwrap(),
        data_file.to_str().unwrap(),
    ]);
    std::fs::read(&sig_file).unwrap()
}

/// Checks with `openssl dgst -sha256 -verify` alone that `sig` is valid
/// for `data` with the public key `public` (the test fails if not),
/// through files named after `stem` in `dir`.
pub fn openssl_verify(dir: &Path, stem: &str, public: &Path, data: &[u8], sig: &[u8]) {
    let (data_file, sig_file) = (
        dir.join(format!("{stem}.data")),
        dir.join(format!("{stem}.sig")),
    );
    std::fs::write(&data_file, data).unwrap();
    std::fs::write(&sig_file, sig).unwrap();
    openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        public.to_str().unwrap(),
        "-signature",
        sig_file.to_str().unwrap(),
        data_file.to_str().unwrap(),
    ]);
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
    for secret in key_material(&key) {
        never_shown(&secret);
    }
    (key, public)
}

/// Two real registries (source reached as `docker.io`, see [`header`]) and
/// a directory for definitions.
pub struct Pair {
    pub source: Registry,
    pub target: Registry,
    pub dir: tempfile::TempDir,
}

impl Pair {
    pub fn new() -> Pair {
        Pair {
            source: Registry::start(),
            target: Registry::start(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Like [`Pair::new`], with both registries keeping their access log,
    /// for tests that count requests ([`Registry::requests`]).
    pub fn logged() -> Pair {
        Pair {
            source: Registry::start_logged(),
            target: Registry::start_logged(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn definition(&self, images: &str) -> String {
        let text = format!("{}images:\n{images}", header(&self.source, &self.target));
        write(self.dir.path(), "images.yaml", &text)
            .display()
            .to_string()
    }

    /// Runs the definition with `images:` against the pair, and `extra` flags.
    pub fn sync(&self, images: &str, extra: &[&str]) -> Run {
        let def = self.definition(images);
        let host = self.target.host();
        let mut args = vec![
            "--images-file",
            def.as_str(),
            "--insecure-registry",
            host.as_str(),
        ];
        args.extend_from_slice(extra);
        run(&args)
    }

    pub fn redact(&self, s: &str) -> String {
        redact(s, &[(&self.source, "[SOURCE]"), (&self.target, "[TARGET]")])
    }
}
