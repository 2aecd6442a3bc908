//! Credentials for private sources: Docker's config.json (auths, credHelpers
//! running docker-credential-<name>), containers' auth.json, and the
//! definition's `registries:` (from env or file).

use base64::Engine as _;

use crate::support::*;

struct Private {
    source: Registry,
    target: Registry,
    dir: tempfile::TempDir,
    image: fixtures::TestImage,
}

fn private() -> Private {
    never_shown("s3cr3t-pass");
    let source = Registry::start_with(RegistryOptions {
        htpasswd: Some(("puller".into(), "s3cr3t-pass".into())),
        ..Default::default()
    });
    let image = fixtures::image("private", 1, 500);
    block_on(source.push("team/secret:1", &image));
    Private {
        source,
        target: Registry::start(),
        dir: tempfile::tempdir().unwrap(),
        image,
    }
}

impl Private {
    fn definition(&self, extra: &str) -> String {
        write(
            self.dir.path(),
            "images.yaml",
            &format!(
                "targetRepoPrefix: \"{t}/mirror/\"\nregistries:\n  \"{s}\":\n    insecure: true\n{extra}  \"{t}\":\n    insecure: true\nimages:\n- source: \"{s}/team/secret:1\"\n",
                s = self.source.host(),
                t = self.target.host()
            ),
        )
        .display()
        .to_string()
    }

    fn copied(&self) -> bool {
        let host = self.source.host().replace(':', "_");
        block_on(self.target.digest(&format!("mirror/{host}/team/secret:1")))
            == Some(self.image.digest.to_string())
    }
}

#[test]
fn without_credentials_a_private_source_is_refused() {
    let p = private();
    let def = p.definition("");
    let r = run_with(
        &["-i", &def],
        &[("DOCKER_CONFIG", p.dir.path().to_str().unwrap())],
    );
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("refused access"), "{}", r.stdout);
}

#[test]
fn docker_config_auths_entry() {
    let p = private();
    let auth = base64::engine::general_purpose::STANDARD.encode("puller:s3cr3t-pass");
    let config = p.dir.path().join("docker");
    std::fs::create_dir(&config).unwrap();
    write(
        &config,
        "config.json",
        &format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"{auth}\"}}}}}}",
            p.source.host()
        ),
    );
    let def = p.definition("");
    let r = run_with(
        &["-i", &def, "--debug"],
        &[("DOCKER_CONFIG", config.to_str().unwrap())],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(p.copied());
    assert!(
        !r.all().contains("s3cr3t-pass"),
        "a password reached the output"
    );
}

#[test]
fn docker_credential_helper_is_run() {
    let p = private();
    let bin = p.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let helper = bin.join("docker-credential-testhelper");
    // A helper as Docker runs it: `get` with the server on stdin, JSON on stdout.
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\necho \"$1 $server\" >> {log}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"puller\",\"Secret\":\"s3cr3t-pass\"}}' \"$server\"\n",
            log = p.dir.path().join("helper.log").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = p.dir.path().join("docker");
    std::fs::create_dir(&config).unwrap();
    write(
        &config,
        "config.json",
        &format!(
            "{{\"credHelpers\": {{\"{}\": \"testhelper\"}}}}",
            p.source.host()
        ),
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let def = p.definition("");
    let r = run_with(
        &["-i", &def],
        &[("DOCKER_CONFIG", config.to_str().unwrap()), ("PATH", &path)],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(p.copied());
    let log = std::fs::read_to_string(p.dir.path().join("helper.log")).unwrap();
    assert!(
        log.starts_with(&format!("get {}", p.source.host())),
        "{log}"
    );
    // The same helper as the default store (`credsStore`): the run finds the image in sync.
    write(&config, "config.json", "{\"credsStore\": \"testhelper\"}");
    let r = run_with(
        &["-i", &def],
        &[("DOCKER_CONFIG", config.to_str().unwrap()), ("PATH", &path)],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("already in sync"), "{}", r.stdout);
    let log = std::fs::read_to_string(p.dir.path().join("helper.log")).unwrap();
    // Asked for the source again (and, as the default store, for the target too).
    let source_host = p.source.host();
    assert_eq!(
        log.lines().filter(|l| l.ends_with(&source_host)).count(),
        2,
        "{log}"
    );
}

#[test]
fn containers_auth_json_via_registry_auth_file() {
    let p = private();
    let auth = base64::engine::general_purpose::STANDARD.encode("puller:s3cr3t-pass");
    let file = write(
        p.dir.path(),
        "auth.json",
        &format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"{auth}\"}}}}}}",
            p.source.host()
        ),
    );
    let empty = p.dir.path().join("no-docker");
    std::fs::create_dir(&empty).unwrap();
    let def = p.definition("");
    let r = run_with(
        &["-i", &def],
        &[
            ("DOCKER_CONFIG", empty.to_str().unwrap()),
            ("REGISTRY_AUTH_FILE", file.to_str().unwrap()),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(p.copied());
}

#[test]
fn definition_credentials_from_env_and_file() {
    let p = private();
    let empty = p.dir.path().join("no-docker");
    std::fs::create_dir(&empty).unwrap();
    let env = [
        ("DOCKER_CONFIG", empty.to_str().unwrap()),
        ("PULL_PASSWORD", "s3cr3t-pass"),
    ];
    let def = p.definition("    username: puller\n    passwordEnv: PULL_PASSWORD\n");
    let r = run_with(&["-i", &def], &env);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(p.copied());
    // From a file, trailing newline ignored: the run finds the image in sync.
    write(p.dir.path(), "pass.txt", "s3cr3t-pass\n");
    let def = p.definition("    username: puller\n    passwordFile: pass.txt\n");
    let r = run_with(&["-i", &def], &[("DOCKER_CONFIG", empty.to_str().unwrap())]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("already in sync"), "{}", r.stdout);
    // An env variable that is not set: input error before anything, naming it.
    let def = p.definition("    username: puller\n    passwordEnv: NOT_SET_ANYWHERE\n");
    let r = run(&["-i", &def]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("NOT_SET_ANYWHERE"), "{}", r.stderr);
}

#[test]
fn access_token_is_sent_to_the_target_as_a_bearer() {
    never_shown("tok-9f8e7d6c5b");
    use image_syncer_testkit::faults::{FaultProxy, Faults};
    let source = Registry::start();
    let target = Registry::start();
    let img = fixtures::image("bearer", 1, 300);
    block_on(source.push("library/busybox:1.36", &img));
    // The target only answers requests carrying the token.
    let proxy = FaultProxy::start(
        &target.host(),
        Faults {
            require_bearer: Some("tok-9f8e7d6c5b".into()),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let def = write(
        dir.path(),
        "images.yaml",
        &format!(
            "targetRepoPrefix: \"{t}/mirror/\"\nregistries:\n  docker.io:\n    endpoint: \"{s}\"\n    insecure: true\n  \"{t}\":\n    insecure: true\nimages:\n- source: busybox:1.36\n",
            s = source.host(),
            t = proxy.host()
        ),
    );
    let def = def.to_str().unwrap();
    let r = run(&["-i", def]);
    assert_eq!(r.code, 1, "{}", r.all());
    let r = run(&["-i", def, "--access-token", "tok-9f8e7d6c5b"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        block_on(target.digest("mirror/library/busybox:1.36")),
        Some(img.digest.to_string())
    );
    assert!(!r.all().contains("tok-9f8e7d6c5b"));
    // The environment variable works the same, and the token never shows in --help.
    let r = run_with(
        &["-i", def, "--debug"],
        &[("SYNCER_ACCESS_TOKEN", "tok-9f8e7d6c5b")],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.all().contains("tok-9f8e7d6c5b"));
}
