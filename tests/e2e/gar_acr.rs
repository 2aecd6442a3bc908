//! Artifact Registry and ACR logins from the cloud identity, through the
//! binary: a real registry with token authentication (the testkit's
//! `TokenServer`, checked by the registry) reached as
//! `europe-docker.pkg.dev` or `myregistry.azurecr.io` through its
//! `endpoint`, and the testkit's **stand-ins** of the identity services:
//! the GCE metadata server (`GCE_METADATA_HOST`), Entra ID
//! (`AZURE_AUTHORITY_HOST`, over TLS) and ACR's `/oauth2/exchange` (served
//! in front of the registry, which has no such route). No real Google or
//! Microsoft service can run here.

use image_syncer_testkit::cloud::ACR_REFRESH_USER;
use image_syncer_testkit::faults::{FaultProxy, Faults};
use image_syncer_testkit::{AcrExchange, Entra, GceMetadata, TokenServer};

use crate::support::*;

const GAR: &str = "europe-docker.pkg.dev";
const ACR: &str = "myregistry.azurecr.io";

/// A source with one image, and a target with token authentication whose
/// token server knows only its admin until a test says otherwise.
struct Setup {
    source: Registry,
    tokens: TokenServer,
    target: Registry,
    dir: tempfile::TempDir,
    digest: String,
}

impl Setup {
    fn new(seed: &str) -> Setup {
        let source = Registry::start();
        let img = fixtures::image(seed, 2, 512);
        block_on(source.push("team/app:1.0", &img));
        let tokens = TokenServer::start("admin", "admin-password-0a9s");
        let target = Registry::start_with(RegistryOptions {
            token: Some(tokens.registry_auth()),
            ..Default::default()
        });
        Setup {
            source,
            tokens,
            target,
            dir: tempfile::tempdir().unwrap(),
            digest: img.digest.to_string(),
        }
    }

    /// A definition copying the image to `host` (`prefix`), reached at
    /// `endpoint` over plain HTTP, with `more` settings for `host`.
    fn definition(&self, host: &str, prefix: &str, endpoint: &str, more: &str) -> String {
        let text = format!(
            "targetRepoPrefix: \"{host}/{prefix}/\"\nregistries:\n  \"{src}\":\n    insecure: true\n  {host}:\n    endpoint: \"{endpoint}\"\n    insecure: true\n{more}images:\n- source: \"{src}/team/app:1.0\"\n",
            src = self.source.host(),
        );
        write(self.dir.path(), "images.yaml", &text)
            .display()
            .to_string()
    }

    /// What the target holds for the image under `prefix` (the source's
    /// host is part of the target's name).
    fn copied(&self, prefix: &str) -> Option<String> {
        let source = self.source.host().replace(':', "_");
        block_on(
            self.target
                .digest(&format!("{prefix}/{source}/team/app:1.0")),
        )
    }

    /// The users the token server saw after the first `from` requests.
    fn users(&self, from: usize) -> Vec<Option<String>> {
        self.tokens
            .requests()
            .into_iter()
            .skip(from)
            .map(|r| r.user)
            .collect()
    }
}

#[test]
fn artifact_registry_logs_in_with_the_metadata_servers_access_token() {
    let s = Setup::new("gar-login");
    let metadata = GceMetadata::start();
    never_shown(&metadata.access_token());
    s.tokens
        .accept("oauth2accesstoken", &metadata.access_token());
    let def = s.definition(GAR, "proj/mirror", &s.target.host(), "");
    let env = [("GCE_METADATA_HOST", metadata.host())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let before = s.tokens.requests().len();
    let r = run_with(&["-i", &def], &env);
    assert_eq!(r.code, 0, "{}", r.all());
    // (Before the test's own look at the target, as admin.)
    let users = s.users(before);
    assert_eq!(
        s.copied("proj/mirror"),
        Some(s.digest.clone()),
        "{}",
        r.all()
    );
    assert!(!users.is_empty());
    assert!(
        users
            .iter()
            .all(|u| u.as_deref() == Some("oauth2accesstoken")),
        "{users:?}"
    );
    let asked: Vec<_> = metadata
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/service-accounts/default/token"))
        .collect();
    // One login for the run, however many requests needed it.
    assert_eq!(asked.len(), 1, "{:?}", metadata.requests());
    assert!(asked[0].flavor && asked[0].granted);
    // Again with --debug: in sync, logged in again, no token shown.
    let r = run_with(&["-i", &def, "--debug"], &env);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("already in sync"), "{}", r.all());
}

#[test]
fn artifact_registry_without_its_login_is_read_anonymously_and_refused() {
    let s = Setup::new("gar-anonymous");
    let metadata = GceMetadata::start();
    never_shown(&metadata.access_token());
    s.tokens
        .accept("oauth2accesstoken", &metadata.access_token());
    let before = s.target.storage_snapshot();
    // cloudAuth: false: the metadata server is not asked, the registry
    // refuses an anonymous push.
    let def = s.definition(
        GAR,
        "proj/mirror",
        &s.target.host(),
        "    cloudAuth: false\n",
    );
    let env = [("GCE_METADATA_HOST", metadata.host())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = run_with(&["-i", &def], &env);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(metadata.requests().is_empty(), "{:?}", metadata.requests());
    assert_eq!(s.target.storage_snapshot(), before);
    // No identity at all (no credentials file, no metadata server): read
    // anonymously, refused, and the error says what was missing.
    let def = s.definition(GAR, "proj/mirror", &s.target.host(), "");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let r = run_with(&["-i", &def], &[("GCE_METADATA_HOST", closed.as_str())]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all().contains("GAR: no Google credentials found (GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default credentials, the metadata server)"),
        "{}",
        r.all()
    );
    assert_eq!(s.target.storage_snapshot(), before);
    // A metadata server that refuses: the image fails, nothing written.
    metadata.refuse(Some(403));
    let r = run_with(&["-i", &def], &env);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all()
            .contains("GAR: no access token from the metadata server at"),
        "{}",
        r.all()
    );
    assert_eq!(s.target.storage_snapshot(), before);
}

/// Entra, and ACR's exchange in front of the setup's target.
struct Azure {
    entra: Entra,
    exchange: AcrExchange,
    front: FaultProxy,
}

impl Azure {
    fn new(s: &Setup) -> Azure {
        let entra = Entra::start();
        never_shown(entra.client_secret());
        never_shown(entra.federated_token());
        let exchange = entra.acr_exchange(ACR, &s.tokens);
        let front = FaultProxy::start(
            &s.target.host(),
            Faults {
                acr_exchange: Some(exchange.clone()),
                ..Default::default()
            },
        );
        Azure {
            entra,
            exchange,
            front,
        }
    }

    /// A service principal's environment, Entra being the stand-in.
    fn service_principal(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_AUTHORITY_HOST", self.entra.authority()),
            ("SSL_CERT_FILE", self.entra.ca_file().display().to_string()),
            ("AZURE_TENANT_ID", self.entra.tenant().to_string()),
            ("AZURE_CLIENT_ID", self.entra.client_id().to_string()),
            (
                "AZURE_CLIENT_SECRET",
                self.entra.client_secret().to_string(),
            ),
        ]
    }

    /// Checks the run's output again, now that the tokens the stand-ins
    /// issued during it are known.
    fn scan(&self, args: &[&str], r: &Run) {
        for token in self
            .entra
            .issued()
            .into_iter()
            .chain(self.exchange.refresh_tokens())
        {
            never_shown(&token);
        }
        scan_for_secrets(args, &r.all());
    }
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn acr_logs_in_with_an_entra_token_exchanged_for_a_refresh_token() {
    let s = Setup::new("acr-login");
    let azure = Azure::new(&s);
    let def = s.definition(ACR, "mirror", &azure.front.host(), "");
    let before = s.tokens.requests().len();
    let env = azure.service_principal();
    let args = ["-i", def.as_str()];
    let r = run_with(&args, &env_refs(&env));
    azure.scan(&args, &r);
    assert_eq!(r.code, 0, "{}", r.all());
    // (Before the test's own look at the target, as admin.)
    let users = s.users(before);
    assert_eq!(s.copied("mirror"), Some(s.digest.clone()), "{}", r.all());
    // Entra gave one token, the exchange one refresh token for it...
    let entra = azure.entra.requests();
    assert_eq!(entra.len(), 1, "{entra:?}");
    assert!(entra[0].granted && entra[0].credential == "client_secret");
    let exchanged = azure.exchange.requests();
    assert_eq!(exchanged.len(), 1, "{exchanged:?}");
    assert_eq!(exchanged[0].service.as_deref(), Some(ACR));
    assert!(exchanged[0].granted);
    // ...and the registry's token flow took it as the refresh token user's
    // password for every access token.
    assert!(!users.is_empty());
    assert!(
        users.iter().all(|u| u.as_deref() == Some(ACR_REFRESH_USER)),
        "{users:?}"
    );
    // Workload identity (AKS), with --debug: in sync, no token shown.
    let file = s.dir.path().join("azure-identity-token");
    std::fs::write(&file, azure.entra.federated_token()).unwrap();
    let env = [
        ("AZURE_AUTHORITY_HOST", azure.entra.authority()),
        ("SSL_CERT_FILE", azure.entra.ca_file().display().to_string()),
        ("AZURE_TENANT_ID", azure.entra.tenant().to_string()),
        ("AZURE_CLIENT_ID", azure.entra.client_id().to_string()),
        ("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()),
    ];
    let args = ["-i", def.as_str(), "--debug"];
    let r = run_with(&args, &env_refs(&env));
    azure.scan(&args, &r);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("already in sync"), "{}", r.all());
    let entra = azure.entra.requests();
    assert_eq!(entra.len(), 2, "{entra:?}");
    assert!(entra[1].granted && entra[1].credential == "client_assertion");
    assert_eq!(azure.exchange.refresh_tokens().len(), 2);
}

#[test]
fn acr_without_its_login_or_with_a_refused_exchange_writes_nothing() {
    let s = Setup::new("acr-refused");
    let azure = Azure::new(&s);
    let before = s.target.storage_snapshot();
    let env = azure.service_principal();
    // cloudAuth: false: anonymous, refused; Entra is not asked.
    let def = s.definition(ACR, "mirror", &azure.front.host(), "    cloudAuth: false\n");
    let args = ["-i", def.as_str()];
    let r = run_with(&args, &env_refs(&env));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(azure.entra.requests().is_empty());
    assert!(azure.exchange.requests().is_empty());
    assert_eq!(s.target.storage_snapshot(), before);
    // The registry refuses the exchange: the image fails, with --debug too,
    // and no token is shown.
    azure.exchange.refuse(Some(401));
    let def = s.definition(ACR, "mirror", &azure.front.host(), "");
    let args = ["-i", def.as_str(), "--debug"];
    let r = run_with(&args, &env_refs(&env));
    azure.scan(&args, &r);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all().contains(&format!(
            "ACR: exchange at http://{}/oauth2/exchange: refused (401 Unauthorized)",
            azure.front.host()
        )),
        "{}",
        r.all()
    );
    assert_eq!(azure.exchange.requests().len(), 1);
    assert_eq!(s.target.storage_snapshot(), before);
}
