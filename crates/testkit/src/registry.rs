use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::token::TokenAuth;

const MISSING: &str =
    "Debian's `docker-registry` (CNCF distribution) is needed by the tests and was not found.\n\
Install it with `apt-get install -y docker-registry` (scripts/test.sh does this), or point \
IMAGE_SYNCER_REGISTRY_BIN at a distribution `registry` binary.";

/// How to start a registry.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// htpasswd auth with this user and password (bcrypt; the registry compares
    /// the first 72 bytes of the password).
    pub htpasswd: Option<(String, String)>,
    /// Token authentication with a [`TokenServer`](crate::TokenServer)
    /// ([`TokenServer::registry_auth`](crate::TokenServer::registry_auth)):
    /// clients get their tokens from its realm. Not with `htpasswd`.
    pub token: Option<TokenAuth>,
    /// Keep the registry's access log, for [`Registry::requests`].
    pub access_log: bool,
    /// Serve HTTPS with a certificate for 127.0.0.1 signed by a CA made for
    /// this registry ([`Registry::ca_file`]).
    pub tls: bool,
}

/// Runs the `openssl` CLI with `args` in `dir`; its standard output, or
/// what it said on failure.
pub(crate) fn openssl(dir: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Makes a CA and a server certificate for 127.0.0.1 with openssl in `dir`;
/// returns (CA certificate, server certificate, server key).
pub(crate) fn make_tls(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let run = |args: &[&str]| openssl(dir, args).map(drop);
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=image-syncer test CA",
    ])?;
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ])?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ])?;
    Ok((
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    ))
}

/// A running CNCF distribution registry on 127.0.0.1, stopped on drop.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    options: RegistryOptions,
}

fn registry_bin() -> PathBuf {
    if let Ok(p) = std::env::var("IMAGE_SYNCER_REGISTRY_BIN") {
        return PathBuf::from(p);
    }
    for candidate in ["/usr/bin/docker-registry", "/usr/local/bin/registry"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from("docker-registry")
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl Registry {
    /// Starts an anonymous registry. Panics with install instructions when the
    /// registry binary is missing.
    pub fn start() -> Registry {
        Self::start_with(RegistryOptions::default())
    }

    /// Starts an anonymous registry that keeps its access log, for
    /// [`Registry::requests`].
    pub fn start_logged() -> Registry {
        Self::start_with(RegistryOptions {
            access_log: true,
            ..Default::default()
        })
    }

    pub fn start_with(options: RegistryOptions) -> Registry {
        // A port taken between probing and binding: try again, a bounded number of times.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(&options) {
                Ok(r) => return r,
                Err(e) => last = e,
            }
        }
        panic!("could not start the test registry: {last}");
    }

    fn try_start(options: &RegistryOptions) -> Result<Registry, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).map_err(|e| e.to_string())?;
        let mut auth = String::new();
        assert!(
            options.htpasswd.is_none() || options.token.is_none(),
            "RegistryOptions: htpasswd and token auth cannot be used together (the registry has one access controller)"
        );
        if let Some(token) = &options.token {
            let bundle = dir.path().join("token-roots.pem");
            std::fs::write(&bundle, &token.root_certificates).map_err(|e| e.to_string())?;
            auth = format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                token.realm,
                token.service,
                token.issuer,
                bundle.display()
            );
        }
        if let Some((user, password)) = &options.htpasswd {
            let hash = bcrypt::hash(password.as_bytes(), 4).map_err(|e| e.to_string())?;
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{user}:{hash}\n")).map_err(|e| e.to_string())?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: image-syncer-test\n    path: {}\n",
                file.display()
            );
        }
        let config = format!(
            "version: 0.1\n\
             log:\n  level: error\n  accesslog:\n    disabled: {}\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: image-syncer-test-secret\n\
             {auth}",
            !options.access_log,
            storage.display()
        );
        let tls = if options.tls {
            let (_, cert, key) = make_tls(dir.path())?;
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            )
        } else {
            String::new()
        };
        let config = config.replacen(
            "  secret: image-syncer-test-secret\n",
            &format!("  secret: image-syncer-test-secret\n{tls}"),
            1,
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let bin = registry_bin();
        let log =
            std::fs::File::create(dir.path().join("registry.log")).map_err(|e| e.to_string())?;
        let mut child = Command::new(&bin)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    panic!("{MISSING}")
                }
                format!("{}: {e}", bin.display())
            })?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
                return Err(format!("registry exited with {status}: {log}"));
            }
            // Any answer means it is up (401 with auth, 400 with TLS).
            if http_status(port, "/v2/").is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("registry did not answer within 15 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Registry {
            child,
            dir,
            port,
            options: options.clone(),
        })
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The registry's storage root (for tests that tamper with content on disk).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Every file under storage with its size and modification time: equal
    /// snapshots before and after a run mean the run wrote nothing.
    pub fn storage_snapshot(&self) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.storage_dir()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(p.clone());
                }
                let rel = p
                    .strip_prefix(self.storage_dir())
                    .unwrap_or(&p)
                    .to_path_buf();
                out.insert(
                    rel,
                    (meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH)),
                );
            }
        }
        out
    }

    /// The CA certificate of a TLS registry.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.options.tls.then(|| self.dir.path().join("ca.pem"))
    }

    /// An oci-client for this registry (plain HTTP, or HTTPS trusting its CA),
    /// authenticated when the registry has htpasswd, or token auth (with the
    /// token server's user and password: oci-client gets the tokens).
    pub fn client(&self) -> (Client, RegistryAuth) {
        let client = Client::new(match self.ca_file() {
            None => ClientConfig {
                protocol: ClientProtocol::Http,
                ..Default::default()
            },
            Some(ca) => ClientConfig {
                protocol: ClientProtocol::Https,
                extra_root_certificates: vec![oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: std::fs::read(ca).expect("CA file"),
                }],
                ..Default::default()
            },
        });
        let credentials = self.options.htpasswd.as_ref().or(self
            .options
            .token
            .as_ref()
            .map(|t| &t.credentials));
        let auth = match credentials {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        };
        (client, auth)
    }

    /// `127.0.0.1:PORT/<repo_and_tag>` as an oci-client reference.
    pub fn reference(&self, repo_and_tag: &str) -> Reference {
        format!("{}/{repo_and_tag}", self.host())
            .parse()
            .expect("valid reference")
    }

    /// The digest `repo:tag` (or `repo@digest`) resolves to, `None` when absent.
    pub async fn digest(&self, repo_and_tag: &str) -> Option<String> {
        self.pull_manifest(repo_and_tag).await.map(|(_, d)| d)
    }

    /// The manifest bytes at `repo:tag` / `repo@digest`.
    pub async fn manifest(&self, repo_and_tag: &str) -> Option<bytes::Bytes> {
        self.pull_manifest(repo_and_tag).await.map(|(b, _)| b)
    }

    /// The manifest at `repo_and_tag`: `None` only when the registry says it
    /// is not there (404); any other failure fails the test, so that an
    /// "absent" check cannot pass on a registry or auth error.
    async fn pull_manifest(&self, repo_and_tag: &str) -> Option<(bytes::Bytes, String)> {
        let (client, auth) = self.client();
        match client
            .pull_manifest_raw(
                &self.reference(repo_and_tag),
                &auth,
                image_syncer_core::manifest::ACCEPTED_MANIFEST_TYPES,
            )
            .await
        {
            Ok(found) => Some(found),
            Err(e) if absent(&e) => None,
            Err(e) => panic!("reading manifest {repo_and_tag} from {}: {e}", self.host()),
        }
    }

    /// Whether the blob exists in `repo` (a refused or failed check fails
    /// the test).
    pub async fn has_blob(&self, repo: &str, digest: &str) -> bool {
        let (client, auth) = self.client();
        let r = self.reference(&format!("{repo}:x"));
        client
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
        client
            .blob_exists(&r, digest)
            .await
            .unwrap_or_else(|e| panic!("checking blob {digest} in {repo} at {}: {e}", self.host()))
    }

    /// A blob's bytes.
    pub async fn blob(&self, repo: &str, digest: &str) -> Option<Vec<u8>> {
        let (client, auth) = self.client();
        let r = self.reference(&format!("{repo}:x"));
        client
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
        let desc = oci_client::manifest::OciDescriptor {
            digest: digest.to_string(),
            ..Default::default()
        };
        let mut out = Vec::new();
        match client.pull_blob(&r, &desc, &mut out).await {
            Ok(()) => Some(out),
            Err(e) if absent(&e) => None,
            Err(e) => panic!("reading blob {digest} of {repo} from {}: {e}", self.host()),
        }
    }

    /// Pushes raw bytes as a blob of `repo`.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let (client, auth) = self.client();
        let r = self.reference(&format!("{repo}:x"));
        client
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
        let digest = image_syncer_core::digest::Digest::sha256_of(data).to_string();
        client
            .push_blob(&r, data.to_vec(), &digest)
            .await
            .expect("push blob");
        digest
    }

    /// Pushes raw manifest bytes under `repo:tag`.
    pub async fn push_manifest(&self, repo_and_tag: &str, media_type: &str, bytes: &[u8]) {
        let (client, auth) = self.client();
        let r = self.reference(repo_and_tag);
        client
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
        client
            .push_manifest_raw(&r, bytes.to_vec(), media_type.parse().unwrap())
            .await
            .expect("push manifest");
    }

    /// Tags of a repository, sorted.
    pub async fn tags(&self, repo: &str) -> Vec<String> {
        let (client, auth) = self.client();
        let r = self.reference(&format!("{repo}:x"));
        let mut tags = match client.list_tags(&r, &auth, None, None).await {
            Ok(t) => t.tags,
            // A repository that does not exist has no tags.
            Err(e) if absent(&e) => Vec::new(),
            Err(e) => panic!("listing tags of {repo} at {}: {e}", self.host()),
        };
        tags.sort();
        tags
    }

    /// The requests served so far, as `METHOD /path`.
    ///
    /// Reads the registry's access log, so it panics on a registry started
    /// without one (`access_log: false`, as [`Registry::start`] does): there
    /// it would always answer "none", and a check that "nothing was asked"
    /// would compare 0 with 0. On a plain-HTTP registry it first sends a
    /// marker request (outside `/v2/`, so not counted) and waits until the
    /// log shows it, so that every request answered before the call is in
    /// the answer, however late the registry writes its log line.
    pub fn requests(&self) -> Vec<String> {
        assert!(
            self.options.access_log,
            "Registry::requests() reads the access log, and the registry at {} was started \
             without it: start it with RegistryOptions {{ access_log: true, .. }} \
             (Registry::start_logged)",
            self.host()
        );
        if !self.options.tls {
            self.flush_log();
        }
        self.log()
            .lines()
            .filter_map(|l| {
                let start = l.find('"')? + 1;
                let rest = &l[start..];
                let end = rest.find(" HTTP/")?;
                Some(rest[..end].to_string())
            })
            .filter(|r| r.contains(" /v2/"))
            .collect()
    }

    /// Sends a marker request and waits until the access log shows it.
    fn flush_log(&self) {
        static MARKERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let marker = format!(
            "/image-syncer-testkit-log-marker-{}",
            MARKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let line = format!("\"GET {marker} HTTP/");
        // A bound only so that a broken registry fails the test instead of
        // hanging it; the wait ends as soon as the line is written.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut asked = false;
        loop {
            if !asked {
                asked = http_status(self.port, &marker).is_some();
            }
            if asked && self.log().contains(&line) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the registry at {} did not log the request {marker} within 60 s:\n{}",
                self.host(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The registry's own log (for diagnosing test failures).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status code of a plain HTTP GET to 127.0.0.1:port, if anything answered.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().ok()?,
        Duration::from_millis(200),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Whether an oci-client error is the registry saying "not there" (404, or
/// the distribution codes for an unknown manifest, blob or repository).
fn absent(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    match e {
        E::RetryAfter { .. } => false,
        E::ImageManifestNotFoundError(_) => true,
        E::ServerError { code: 404, .. } => true,
        E::RegistryError { envelope, .. } => envelope.errors.iter().all(|x| {
            matches!(
                x.code,
                C::ManifestUnknown | C::BlobUnknown | C::NameUnknown | C::NotFound
            )
        }),
        _ => false,
    }
}
