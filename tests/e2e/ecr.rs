//! Amazon ECR: repositories created on demand through ECR's API (moto's
//! server, reached through the AWS SDK's standard `AWS_ENDPOINT_URL`), the
//! registry protocol served by a real distribution registry reached as the
//! ECR host's `endpoint`, and ECR's own behaviour (monolithic uploads, no
//! cross-repository mounts by default, the refusal of an immutable tag)
//! played by the fault proxy in front of it.

use base64::Engine as _;
use image_syncer_testkit::faults::{FaultProxy, Faults, Hold, Refuse};

use crate::support::*;

/// The AWS account of the registry: not moto's default account, so that a
/// token asked for another account would not open the registry.
const ACCOUNT: &str = "210987654321";
const REGION: &str = "eu-west-1";
/// moto's ECR token password for [`ACCOUNT`] (`AWS:<account>-auth-token`).
const TOKEN_PASSWORD: &str = "210987654321-auth-token";
/// The test's AWS secret access key (a secret: never printed).
const SECRET_KEY: &str = "ecr-e2e-secret-access-key";

fn ecr_host() -> String {
    format!("{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com")
}

/// A source (reached as `docker.io`), an ECR registry (a distribution
/// registry behind htpasswd user `AWS` and moto's token password, reached
/// as the ECR host's endpoint) and moto's ECR API.
struct Ecr {
    source: Registry,
    registry: Registry,
    moto: Moto,
    dir: tempfile::TempDir,
}

impl Ecr {
    fn new() -> Ecr {
        never_shown(TOKEN_PASSWORD);
        never_shown(SECRET_KEY);
        // The token as ECR hands it out, before it is decoded.
        never_shown(
            &base64::engine::general_purpose::STANDARD.encode(format!("AWS:{TOKEN_PASSWORD}")),
        );
        Ecr {
            source: Registry::start(),
            registry: Registry::start_with(RegistryOptions {
                htpasswd: Some(("AWS".into(), TOKEN_PASSWORD.into())),
                ..Default::default()
            }),
            moto: Moto::start(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A definition mirroring `images` into the ECR registry, whose entry
    /// has `settings` besides its endpoint (indented as its keys).
    fn definition(&self, settings: &str, images: &str) -> String {
        write(
            self.dir.path(),
            "images.yaml",
            &format!(
                "targetRepoPrefix: \"{ecr}/mirror/\"\nregistries:\n  docker.io:\n    endpoint: \"{s}\"\n    insecure: true\n  {ecr}:\n    endpoint: \"{t}\"\n    insecure: true\n{settings}images:\n{images}",
                ecr = ecr_host(),
                s = self.source.host(),
                t = self.registry.host(),
            ),
        )
        .display()
        .to_string()
    }

    /// The AWS SDK's environment: moto's endpoint and test credentials
    /// (the region comes from the host: `AWS_REGION` names another).
    fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.moto.endpoint()),
            ("AWS_ACCESS_KEY_ID", "AKIAECRE2ETEST".into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    fn run(&self, args: &[&str], env: &[(&'static str, String)]) -> Run {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_with(args, &env)
    }

    /// moto's `DescribeRepositories` of the registry: name → the
    /// repository's description.
    fn repositories(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        let (status, answer) = self.moto.ecr(
            REGION,
            "DescribeRepositories",
            serde_json::json!({"registryId": ACCOUNT}),
        );
        assert_eq!(status, 200, "{answer}");
        answer["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["repositoryName"].as_str().unwrap().to_string(), r.clone()))
            .collect()
    }

    fn redact(&self, text: &str) -> String {
        redact(
            text,
            &[(&self.source, "[SOURCE]"), (&self.registry, "[REGISTRY]")],
        )
    }
}

const CREATE: &str = "    ecr:\n      createRepositories: true\n";

/// The copy creates each missing repository once, before its first push,
/// IMMUTABLE (the default) and without scan on push; an existing one is
/// left as it is; a later run into the same repositories creates nothing.
#[test]
fn repositories_are_created_before_their_first_push_and_left_alone_after() {
    let e = Ecr::new();
    let (app1, app2, tool, kept) = (
        fixtures::image("ecr-app-1", 1, 300),
        fixtures::image("ecr-app-2", 1, 300),
        fixtures::image("ecr-tool", 1, 300),
        fixtures::image("ecr-kept", 1, 300),
    );
    block_on(async {
        e.source.push("team/app:1", &app1).await;
        e.source.push("team/app:2", &app2).await;
        e.source.push("team/tool:1", &tool).await;
        e.source.push("team/kept:1", &kept).await;
    });
    // A repository that exists already, MUTABLE.
    let (status, answer) = e.moto.ecr(
        REGION,
        "CreateRepository",
        serde_json::json!({"registryId": ACCOUNT, "repositoryName": "mirror/team/kept", "imageTagMutability": "MUTABLE"}),
    );
    assert_eq!(status, 200, "{answer}");
    let def = e.definition(
        CREATE,
        "- source: team/app:1\n- source: team/app:2\n- source: team/tool:1\n- source: team/kept:1\n",
    );
    let r = e.run(&["-i", &def], &e.aws_env());
    assert_eq!(r.code, 0, "{}", r.all());
    insta::assert_snapshot!("created", e.redact(&r.stdout));
    let repos = e.repositories();
    assert_eq!(
        repos.keys().collect::<Vec<_>>(),
        ["mirror/team/app", "mirror/team/kept", "mirror/team/tool"]
    );
    for name in ["mirror/team/app", "mirror/team/tool"] {
        assert_eq!(repos[name]["imageTagMutability"], "IMMUTABLE", "{name}");
        assert_eq!(
            repos[name]["imageScanningConfiguration"]["scanOnPush"], false,
            "{name}"
        );
    }
    assert_eq!(repos["mirror/team/kept"]["imageTagMutability"], "MUTABLE");
    block_on(async {
        for (tag, image) in [
            ("mirror/team/app:1", &app1),
            ("mirror/team/app:2", &app2),
            ("mirror/team/tool:1", &tool),
            ("mirror/team/kept:1", &kept),
        ] {
            assert_eq!(
                e.registry.digest(tag).await,
                Some(image.digest.to_string()),
                "{tag}"
            );
        }
    });

    // A later run with a new tag into an existing repository: looked up,
    // not created again.
    let app3 = fixtures::image("ecr-app-3", 1, 300);
    block_on(e.source.push("team/app:3", &app3));
    let def = e.definition(
        CREATE,
        "- source: team/app:1\n- source: team/app:3\n- source: team/tool:1\n",
    );
    // With --debug: its logs hold no credential either (every run is
    // scanned for the secret key, the token and its password).
    let again = e.run(&["-i", &def, "--debug"], &e.aws_env());
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(!again.stdout.contains("repository"), "{}", again.stdout);
    assert!(
        again.stderr.contains("ECR repository exists"),
        "{}",
        again.stderr
    );
    let after = e.repositories();
    assert_eq!(after, repos, "a later run changed the repositories");
    assert_eq!(
        block_on(e.registry.digest("mirror/team/app:3")),
        Some(app3.digest.to_string())
    );
}

/// `imageTagMutability` and `scanOnPush` shape the repositories created;
/// with `carrySignatures`, an IMMUTABLE repository excludes the attached
/// tags (`sha256-*`) from immutability, as they move.
#[test]
fn created_repositories_follow_the_settings() {
    let e = Ecr::new();
    block_on(async {
        e.source
            .push("team/open:1", &fixtures::image("ecr-open", 1, 200))
            .await;
        e.source
            .push("team/signed:1", &fixtures::image("ecr-signed", 1, 200))
            .await;
    });
    let def = e.definition(
        "    ecr:\n      createRepositories: true\n      imageTagMutability: MUTABLE\n      scanOnPush: true\n",
        "- source: team/open:1\n",
    );
    let r = e.run(&["-i", &def], &e.aws_env());
    assert_eq!(r.code, 0, "{}", r.all());
    let def = e.definition(CREATE, "- source: team/signed:1\n  carrySignatures: true\n");
    let r2 = e.run(&["-i", &def], &e.aws_env());
    assert_eq!(r2.code, 0, "{}", r2.all());
    insta::assert_snapshot!(
        "shaped",
        format!("{}{}", e.redact(&r.stdout), e.redact(&r2.stdout))
    );
    let repos = e.repositories();
    assert_eq!(repos["mirror/team/open"]["imageTagMutability"], "MUTABLE");
    assert_eq!(
        repos["mirror/team/open"]["imageScanningConfiguration"]["scanOnPush"],
        true
    );
    assert_eq!(
        repos["mirror/team/signed"]["imageTagMutability"],
        "IMMUTABLE_WITH_EXCLUSION"
    );
    assert_eq!(
        repos["mirror/team/signed"]["imageTagMutabilityExclusionFilters"],
        serde_json::json!([{"filterType": "WILDCARD", "filter": "sha256-*"}])
    );
}

/// A dry run looks the repositories up, says which it would create, and
/// creates none (nor writes anything to the registry).
#[test]
fn a_dry_run_says_which_repositories_it_would_create_and_creates_none() {
    let e = Ecr::new();
    block_on(
        e.source
            .push("team/app:1", &fixtures::image("ecr-dry", 1, 300)),
    );
    let before = e.registry.storage_snapshot();
    let def = e.definition(CREATE, "- source: team/app:1\n");
    let r = e.run(&["-i", &def, "--dry-run"], &e.aws_env());
    assert_eq!(r.code, 0, "{}", r.all());
    insta::assert_snapshot!("dry_run", e.redact(&r.stdout));
    assert!(e.repositories().is_empty());
    assert_eq!(e.registry.storage_snapshot(), before);
}

/// Without AWS credentials (none in the environment, no profile, no web
/// identity or container credentials, and an instance metadata service
/// that does not answer), a repository cannot be created: the image fails
/// with a message naming the provider and where it looked, nothing is
/// written, and the run ends within the bounds of the IMDS probe.
#[test]
fn without_aws_credentials_a_repository_cannot_be_created_and_nothing_is_written() {
    let e = Ecr::new();
    block_on(
        e.source
            .push("team/app:1", &fixtures::image("ecr-noid", 1, 300)),
    );
    let before = e.registry.storage_snapshot();
    // Nothing listens there: the IMDS probe is refused at once, on
    // 127.0.0.1 rather than the link-local address of a real instance.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nothing = format!("http://127.0.0.1:{closed}");
    let env = vec![
        ("AWS_ENDPOINT_URL", e.moto.endpoint()),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", nothing),
    ];
    let def = e.definition(CREATE, "- source: team/app:1\n");
    let r = e.run(&["-i", &def], &env);
    assert_eq!(r.code, 1, "{}", r.all());
    insta::assert_snapshot!("no_credentials", e.redact(&r.stdout));
    assert!(e.repositories().is_empty());
    assert_eq!(e.registry.storage_snapshot(), before);

    // An instance metadata service that refuses (403: IMDSv2 turned off,
    // or an egress proxy denying its address) is no identity either: the
    // same message at once, not a refusal retried, and none of the SDK's
    // own warnings with their dump of the answer.
    let imds = FaultProxy::start(
        &e.registry.host(),
        Faults {
            refuse: Some(Refuse {
                method: Some("PUT"),
                path: "/latest/api/token".into(),
                times: 1000,
                status: 403,
                code: "DENIED".into(),
            }),
            ..Default::default()
        },
    );
    let refusing = vec![
        ("AWS_ENDPOINT_URL", e.moto.endpoint()),
        (
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://{}", imds.host()),
        ),
    ];
    let r = e.run(&["-i", &def], &refusing);
    assert_eq!(r.code, 1, "{}", r.all());
    insta::assert_snapshot!("no_credentials", e.redact(&r.stdout));
    assert!(
        imds.injected
            .refused
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1,
        "IMDS was not asked"
    );
    assert!(!r.stderr.contains("provider failed"), "{}", r.stderr);
    assert!(!r.stdout.contains("retries"), "{}", r.stdout);
    assert!(e.repositories().is_empty());
    assert_eq!(e.registry.storage_snapshot(), before);

    // With registry credentials of its own (the definition's), the image
    // still needs the AWS identity to create the repository: it fails
    // before anything is written.
    let mut env = env;
    env.push(("ECR_PASSWORD", TOKEN_PASSWORD.to_string()));
    let def = e.definition(
        &format!("    username: AWS\n    passwordEnv: ECR_PASSWORD\n{CREATE}"),
        "- source: team/app:1\n",
    );
    let r = e.run(&["-i", &def], &env);
    assert_eq!(r.code, 1, "{}", r.all());
    insta::assert_snapshot!("no_credentials_to_create", e.redact(&r.stdout));
    assert!(e.repositories().is_empty());
    assert_eq!(e.registry.storage_snapshot(), before);
}

/// `ecr:` on a host that is not an ECR registry is an input error naming
/// the setting: exit 2, nothing asked of any registry.
#[test]
fn ecr_settings_on_another_registry_are_an_input_error() {
    let p = Pair::new();
    let def = write(
        p.dir.path(),
        "images.yaml",
        &format!(
            "targetRepoPrefix: \"{t}/mirror/\"\nregistries:\n  \"{t}\":\n    insecure: true\n    ecr:\n      createRepositories: true\nimages:\n- source: \"{s}/team/app:1\"\n",
            t = p.target.host(),
            s = p.source.host(),
        ),
    );
    let r = run(&["-i", def.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.all());
    insta::assert_snapshot!(
        "not_ecr",
        p.redact(&r.stderr.replace(p.dir.path().to_str().unwrap(), "[DIR]"))
    );
}

// ---------------------------------------------------------------------------
// ECR's behaviour, played in front of a distribution registry
// ---------------------------------------------------------------------------

/// A source reached as `docker.io` and a target registry reached as the
/// ECR host (through `endpoint`: the registry itself, or a fault proxy in
/// front of it), read anonymously (`cloudAuth: false`).
struct Played {
    source: Registry,
    target: Registry,
    dir: tempfile::TempDir,
}

impl Played {
    fn new() -> Played {
        Played {
            source: Registry::start(),
            target: Registry::start_logged(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A definition into `host` (the ECR host or another), reached at
    /// `endpoint`, its entry with `settings`, and `sink` as the pipeline's
    /// sink config (empty: none).
    fn definition(
        &self,
        host: &str,
        endpoint: &str,
        settings: &str,
        sink: &str,
        images: &str,
    ) -> String {
        let pipeline = if sink.is_empty() {
            String::new()
        } else {
            format!("pipeline:\n  sink: {{ plugin: oci, config: {sink} }}\n")
        };
        write(
            self.dir.path(),
            "images.yaml",
            &format!(
                "targetRepoPrefix: \"{host}/mirror/\"\nregistries:\n  docker.io:\n    endpoint: \"{s}\"\n    insecure: true\n  \"{host}\":\n    endpoint: \"{endpoint}\"\n    insecure: true\n    cloudAuth: false\n{settings}{pipeline}images:\n{images}",
                s = self.source.host(),
            ),
        )
        .display()
        .to_string()
    }
}

/// Chunked uploads are broken on ECR: an ECR registry gets monolithic
/// uploads even with `monolithicPush: false`, which another registry
/// honours (PATCH requests).
#[test]
fn uploads_to_ecr_are_monolithic_whatever_the_setting() {
    let p = Played::new();
    block_on(async {
        p.source
            .push("team/app:1", &fixtures::image("ecr-mono", 2, 3000))
            .await;
        p.source
            .push("team/other:1", &fixtures::image("ecr-chunked", 2, 3000))
            .await;
    });
    let target = p.target.host();
    let uploads = |host: &str, image: &str| {
        let before = p.target.requests().len();
        let def = p.definition(
            host,
            &target,
            "",
            "{ monolithicPush: false }",
            &format!("- source: {image}\n"),
        );
        let r = run(&["-i", &def]);
        assert_eq!(r.code, 0, "{}", r.all());
        let requests = p.target.requests()[before..].to_vec();
        let puts = requests
            .iter()
            .filter(|r| r.starts_with("PUT") && r.contains("/blobs/uploads/"))
            .count();
        let patches = requests.iter().filter(|r| r.starts_with("PATCH")).count();
        (puts, patches)
    };
    // Three blobs (config and two layers), each in one PUT.
    assert_eq!(uploads(&ecr_host(), "team/app:1"), (3, 0));
    // The same into a registry that is not ECR: in chunks.
    let (_, chunks) = uploads(&target, "team/other:1");
    assert!(chunks >= 3, "{chunks} PATCH requests");
}

/// Cross-repository mounts are not tried on ECR (they need the account's
/// `BLOB_MOUNTING` setting) unless `mount: true`; `mount: false` turns them
/// off on any registry.
#[test]
fn mounts_follow_the_kind_and_the_mount_setting() {
    let p = Played::new();
    let imgs = fixtures::images_sharing_a_layer(&["ecr-m0", "ecr-m1"], 2000);
    block_on(async {
        for (i, img) in imgs.iter().enumerate() {
            p.source.push(&format!("team/app{i}:1"), img).await;
        }
    });
    let target = p.target.host();
    let images = "- source: team/app0:1\n- source: team/app1:1\n";
    let mut seen = Vec::new();
    for (n, (host, settings)) in [
        (ecr_host(), ""),
        (ecr_host(), "    mount: true\n"),
        (target.clone(), ""),
        (target.clone(), "    mount: false\n"),
    ]
    .iter()
    .enumerate()
    {
        // A fresh prefix each time, so that every run copies.
        let images = images.replace("app", &format!("run{n}/app"));
        block_on(async {
            for (i, img) in imgs.iter().enumerate() {
                p.source.push(&format!("team/run{n}/app{i}:1"), img).await;
            }
        });
        let before = p.target.requests().len();
        let def = p.definition(host, &target, settings, "", &images);
        let r = run(&["-i", &def, "--jobs", "1"]);
        assert_eq!(r.code, 0, "{}", r.all());
        let mounts = p.target.requests()[before..]
            .iter()
            .filter(|r| r.starts_with("POST") && r.contains("mount="))
            .count();
        seen.push(format!(
            "{} {settings:?}: {mounts} mount(s)",
            if *host == target { "registry" } else { "ECR" }
        ));
    }
    assert_eq!(
        seen,
        [
            "ECR \"\": 0 mount(s)",
            "ECR \"    mount: true\\n\": 1 mount(s)",
            "registry \"\": 1 mount(s)",
            "registry \"    mount: false\\n\": 0 mount(s)",
        ]
    );
}

/// An immutable ECR repository refuses a tag it has, even with the same
/// manifest: the tag holding the source digest is in sync; holding another
/// is a safety stop. Each time the tag appears while the run holds its push
/// (the test pushes it meanwhile).
#[test]
fn an_immutable_tag_refusal_is_in_sync_or_a_stop_by_what_the_tag_holds() {
    for (case, same) in [("same", true), ("other", false)] {
        let p = Played::new();
        let image = fixtures::image(&format!("ecr-imm-{case}"), 1, 300);
        let squatter = fixtures::image(&format!("ecr-imm-squatter-{case}"), 1, 300);
        block_on(p.source.push("team/app:1", &image));
        let proxy = FaultProxy::start(
            &p.target.host(),
            Faults {
                immutable_tags: true,
                holds: vec![Hold {
                    method: Some("PUT"),
                    path: "/manifests/1".into(),
                    after: 0,
                    times: 1,
                    ms: 120_000,
                }],
                ..Default::default()
            },
        );
        let def = p.definition(&ecr_host(), &proxy.host(), "", "", "- source: team/app:1\n");
        let child = spawn(&["-i", &def]);
        // Bounded: 60 s.
        let mut arrived = false;
        for _ in 0..3000 {
            if proxy.injected.held_by(0) >= 1 {
                arrived = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(arrived, "the tag push never came");
        let pushed = if same { &image } else { &squatter };
        block_on(p.target.push("mirror/team/app:1", pushed));
        proxy.injected.release(0);
        let (_, r) = child.wait();
        let out = redact(&r.stdout, &[(&p.source, "[SOURCE]")]);
        if same {
            assert_eq!(r.code, 0, "{}", r.all());
            assert!(out.contains("copied  team/app:1 -> "), "{out}");
        } else {
            assert_eq!(r.code, 3, "{}", r.all());
            insta::assert_snapshot!("immutable_other", out);
        }
        assert_eq!(
            block_on(p.target.digest("mirror/team/app:1")),
            Some(pushed.digest.to_string())
        );
    }
}

/// ECR creates no repository on push: a push into a missing one is refused
/// (`NAME_UNKNOWN`), and without `createRepositories` the image fails with
/// a message saying how to have it created.
#[test]
fn a_missing_repository_without_create_repositories_says_how_to_create_it() {
    let p = Played::new();
    block_on(
        p.source
            .push("team/app:1", &fixtures::image("ecr-missing", 1, 300)),
    );
    let proxy = FaultProxy::start(
        &p.target.host(),
        Faults {
            refuse: Some(Refuse {
                method: Some("POST"),
                path: "/blobs/uploads/".into(),
                times: 1000,
                status: 404,
                code: "NAME_UNKNOWN".into(),
            }),
            ..Default::default()
        },
    );
    let def = p.definition(&ecr_host(), &proxy.host(), "", "", "- source: team/app:1\n");
    let r = run(&["-i", &def]);
    assert_eq!(r.code, 1, "{}", r.all());
    // Whichever blob's upload came first.
    let blob = regex::Regex::new("blob sha256:[0-9a-f]{64}").unwrap();
    let out = redact(&r.stdout, &[(&p.source, "[SOURCE]")]).replace(&proxy.host(), "[PROXY]");
    insta::assert_snapshot!("missing_repository", blob.replace_all(&out, "blob [BLOB]"));
    assert_eq!(block_on(p.target.digest("mirror/team/app:1")), None);
}
