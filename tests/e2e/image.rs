//! The container image built without a daemon by `scripts/image.sh`: a valid
//! and deterministic OCI image layout, whose entrypoint runs in a chroot of its
//! unpacked layers, pushed to a registry by image-syncer itself.
//!
//! The image is built from the debug binary of this test run, so no release
//! build is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_image-syncer");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `scripts/image.sh` with `args`, with the same clean environment as the binary.
fn image_sh(args: &[&str]) -> Run {
    let mut c = Command::new(repo_root().join("scripts/image.sh"));
    let _home = clean_env(&mut c);
    let out = c.args(args).output().expect("run scripts/image.sh");
    // The script runs the binary (`--push`): its output is scanned too.
    Run::scanned(args, &out)
}

/// Builds the layout at `out` from the test binary; returns the manifest digest.
fn build(out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["--binary", BIN, "--output", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = image_sh(&args);
    assert_eq!(r.code, 0, "{}", r.all());
    layout_line_digest(&r.stdout, out)
}

/// The digest from the script's first stdout line, `oci:<layout>:<tag> <digest>`.
fn layout_line_digest(stdout: &str, out: &Path) -> String {
    let line = stdout.lines().next().unwrap_or_default();
    let expected = format!("oci:{}:{VERSION} ", out.display());
    assert!(line.starts_with(&expected), "{stdout}");
    let digest = line[expected.len()..].to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{stdout}"
    );
    digest
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

fn skopeo(args: &[&str]) -> Run {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo is installed (scripts/test.sh installs it)");
    Run::of(&out)
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no OCI name known for {other}"),
    }
}

fn workspace_repository() -> String {
    let text = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("repository = "))
        .expect("[workspace.package] repository");
    line["repository = ".len()..].trim_matches('"').to_string()
}

#[test]
fn layout_is_a_valid_oci_image_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a/image-syncer");
    let b = dir.path().join("b/image-syncer");
    let digest = build(&a, &[]);
    // Built again elsewhere, from the same binary: the same bytes everywhere.
    assert_eq!(build(&b, &[]), digest);
    for file in ["index.json", "oci-layout"] {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{file}"
        );
    }
    let blobs = |l: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(l.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(blobs(&a), blobs(&b));
    assert_eq!(blobs(&a).len(), 3, "a manifest, a config, one layer");

    let index = json(&a.join("index.json"));
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        VERSION
    );
    assert_eq!(json(&a.join("oci-layout"))["imageLayoutVersion"], "1.0.0");

    // skopeo reads it as an image, with the entrypoint, user, env and labels.
    let src = format!("oci:{}:{VERSION}", a.display());
    let r = skopeo(&["inspect", &src]);
    assert_eq!(r.code, 0, "{}", r.all());
    let inspect: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());
    let r = skopeo(&["inspect", "--config", &src]);
    assert_eq!(r.code, 0, "{}", r.all());
    let config: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], oci_arch());
    let c = &config["config"];
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/local/bin/image-syncer"])
    );
    assert_eq!(c["User"], "65532:65532");
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"),
        "{env:?}"
    );
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert_eq!(
        labels["org.opencontainers.image.source"],
        workspace_repository().as_str()
    );

    // The layer holds what the binary needs, in a fixed order with fixed owners and times.
    let manifest = json(&blob(&a, &digest));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let layer = blob(&a, layers[0]["digest"].as_str().unwrap());
    let out = Command::new("tar")
        .args(["--numeric-owner", "-tvzf"])
        .arg(&layer)
        .env("TZ", "UTC")
        .output()
        .expect("tar");
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_by_key(|n| n.trim_end_matches('/'));
    assert_eq!(names, sorted, "entries sorted");
    for wanted in [
        "usr/local/bin/image-syncer",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "tmp/",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing:\n{listing}");
    }
    // ldd's libraries (libc at least) and the loader named in the binary.
    assert!(names.iter().any(|n| n.contains("/libc.so.")), "{listing}");
    assert!(names.iter().any(|n| n.contains("/ld-linux")), "{listing}");
    for line in listing.lines() {
        assert!(line.contains(" 1970-01-01 00:00 "), "fixed mtime: {line}");
        assert!(
            line.contains(" 0/0 ") || line.contains(" 65532/65532 "),
            "fixed owner: {line}"
        );
    }

    // Another tag: the same image, named differently in the index only.
    let c_dir = dir.path().join("c/image-syncer");
    let r = image_sh(&[
        "--binary",
        BIN,
        "--output",
        c_dir.to_str().unwrap(),
        "--tag",
        "edge",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        r.stdout.lines().next().unwrap(),
        format!("oci:{}:edge {digest}", c_dir.display())
    );

    // skopeo copies it into a registry unchanged.
    let registry = Registry::start();
    let dest = format!("docker://{}/tools/image-syncer:{VERSION}", registry.host());
    let r = skopeo(&["copy", "--dest-tls-verify=false", &src, &dest]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        block_on(registry.digest(&format!("tools/image-syncer:{VERSION}"))),
        Some(digest)
    );
}

/// How to get into the unpacked root: `chroot` as root, else `unshare -r
/// chroot`; else why neither can be used.
fn chroot_prefix(user: &str) -> Result<Vec<String>, String> {
    let chroot = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("chroot"))
        .find(|p| p.is_file())
        .ok_or("no `chroot` on PATH, /usr/sbin or /sbin")?;
    let chroot = chroot.display().to_string();
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("`id -u`: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        return Ok(vec![chroot, format!("--userspec={user}")]);
    }
    let unshare = Command::new("unshare").args(["-r", "true"]).output();
    match unshare {
        Ok(out) if out.status.success() => Ok(vec!["unshare".into(), "-r".into(), chroot]),
        Ok(out) => Err(format!(
            "not root, and `unshare -r true` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("not root, and `unshare` cannot run: {e}")),
    }
}

/// The opt-out for machines where the image's root cannot be entered
/// (README, "Test it"; scripts/test.sh reports it when set).
const NO_CHROOT: &str = "IMAGE_SYNCER_TEST_NO_CHROOT";

#[test]
fn image_runs_in_a_chroot_of_its_layers() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("image-syncer");
    let digest = build(&layout, &[]);
    let manifest = json(&blob(&layout, &digest));
    let config = json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let status = Command::new("tar")
            .args(["--no-same-owner", "-xzf"])
            .arg(blob(&layout, layer["digest"].as_str().unwrap()))
            .arg("-C")
            .arg(&root)
            .status()
            .expect("tar");
        assert!(status.success());
    }
    let user = config["config"]["User"].as_str().unwrap();
    let prefix = match chroot_prefix(user) {
        Ok(prefix) => prefix,
        // Opted out: the layout and its layers were checked above; the
        // entrypoint is not run (scripts/test.sh says so).
        Err(_) if std::env::var(NO_CHROOT).as_deref() == Ok("1") => return,
        Err(why) => panic!(
            "the image's root cannot be entered, so its entrypoint cannot be run: {why}. \
             Run the tests as root or where `unshare -r` works, or opt out with {NO_CHROOT}=1"
        ),
    };
    let entrypoint: Vec<&str> = config["config"]["Entrypoint"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // The entrypoint with the image's environment only.
    let in_image = |args: &[&str]| -> Run {
        let mut c = Command::new(&prefix[0]);
        c.args(&prefix[1..]).arg(&root).args(&entrypoint).args(args);
        c.env_clear();
        for kv in config["config"]["Env"].as_array().unwrap() {
            let (k, v) = kv.as_str().unwrap().split_once('=').unwrap();
            c.env(k, v);
        }
        c.env("NO_COLOR", "1");
        Run::scanned(args, &c.output().expect("run the entrypoint in the chroot"))
    };

    let r = in_image(&["-V"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.stdout.trim(), format!("image-syncer {VERSION}"));

    // A dry run against a registry on 127.0.0.1 (the chroot shares the network).
    let registry = Registry::start();
    let host = registry.host();
    let image = fixtures::image("in-chroot", 2, 4096);
    block_on(registry.push("team/app:1.0", &image));
    let work = root.join("work");
    std::fs::create_dir(&work).unwrap();
    write(
        &work,
        "images.yaml",
        &format!(
            "targetRepoPrefix: \"{host}/mirror/\"\nregistries:\n  \"{host}\":\n    insecure: true\nimages:\n- source: \"{host}/team/app:1.0\"\n"
        ),
    );
    let before = registry.storage_snapshot();
    let r = in_image(&["--images-file", "/work/images.yaml", "--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let port = registry.port();
    assert!(
        r.stdout.contains(&format!(
            "would copy  {host}/team/app:1.0 -> {host}/mirror/127.0.0.1_{port}/team/app:1.0 ({})",
            image.digest
        )),
        "{}",
        r.all()
    );
    assert!(
        r.stdout.contains("1 image(s): 1 would copy"),
        "{}",
        r.stdout
    );
    assert_eq!(
        registry.storage_snapshot(),
        before,
        "a dry run writes nothing"
    );
}

#[test]
fn pushed_by_image_syncer_itself_and_a_second_push_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("out");
    let registry = Registry::start();
    let host = registry.host();
    let reference = format!("{host}/tools/image-syncer:{VERSION}");
    let push = || {
        image_sh(&[
            "--binary",
            BIN,
            "--output",
            layout.to_str().unwrap(),
            "--push",
            &reference,
            "--",
            "--insecure-registry",
            &host,
        ])
    };
    let r = push();
    assert_eq!(r.code, 0, "{}", r.all());
    let digest = layout_line_digest(&r.stdout, &layout);
    assert!(
        r.stdout.contains(&format!(
            "copied  oci:src/image-syncer:{VERSION} -> {reference} ({digest})"
        )),
        "{}",
        r.all()
    );
    let repo = format!("tools/image-syncer:{VERSION}");
    assert_eq!(block_on(registry.digest(&repo)), Some(digest.clone()));
    let manifest = json(&blob(&layout, &digest));
    for d in [
        manifest["config"]["digest"].as_str().unwrap(),
        manifest["layers"][0]["digest"].as_str().unwrap(),
    ] {
        assert!(block_on(registry.has_blob("tools/image-syncer", d)), "{d}");
    }

    let before = registry.storage_snapshot();
    let r = push();
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(layout_line_digest(&r.stdout, &layout), digest);
    assert!(r.stdout.contains("already in sync"), "{}", r.all());
    assert!(r.stdout.contains("0 copied"), "{}", r.stdout);
    assert_eq!(registry.storage_snapshot(), before, "the second push wrote");

    // Another tag for the same image: only the tag is new.
    let r = image_sh(&[
        "--binary",
        BIN,
        "--output",
        layout.to_str().unwrap(),
        "--push",
        &format!("{host}/tools/image-syncer:latest"),
        "--",
        "--insecure-registry",
        &host,
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        block_on(registry.digest("tools/image-syncer:latest")),
        Some(digest)
    );
}

#[test]
fn script_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-binary");
    let r = image_sh(&["--binary", missing.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains(&format!("binary not found: {}", missing.display())),
        "{}",
        r.stderr
    );
    let r = image_sh(&["--binary", BIN, "--push"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("--push needs a reference"),
        "{}",
        r.stderr
    );
    let r = image_sh(&[
        "--binary",
        BIN,
        "--output",
        dir.path().join("x").to_str().unwrap(),
        "--push",
        "127.0.0.1:1/app@sha256:00",
    ]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("not a digest"), "{}", r.stderr);
    // An existing directory that is not a layout is never replaced.
    let precious = dir.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    write(&precious, "keep.txt", "mine");
    let r = image_sh(&["--binary", BIN, "--output", precious.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("is not an OCI image layout; refusing to replace it"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(precious.join("keep.txt")).unwrap(),
        "mine"
    );
}

/// The Dockerfile cannot be built here (no daemon, no base images): its
/// labels, user and entrypoint are checked against the workspace and the
/// daemon-less image instead, so the two ways do not drift apart.
#[test]
fn dockerfile_matches_the_workspace_and_the_script() {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    for wanted in [
        format!("ARG VERSION={VERSION}\n"),
        format!(
            "org.opencontainers.image.source=\"{}\"",
            workspace_repository()
        ),
        "org.opencontainers.image.version=\"${VERSION}\"".to_string(),
        "org.opencontainers.image.licenses=\"Apache-2.0\"".to_string(),
        "cargo build --release --locked -p image-syncer-cli".to_string(),
        "USER 65532:65532\n".to_string(),
        "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\n".to_string(),
        "ENTRYPOINT [\"/usr/local/bin/image-syncer\"]\n".to_string(),
    ] {
        assert!(text.contains(&wanted), "Dockerfile lacks {wanted:?}");
    }
    let license = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    assert!(license.contains("license = \"Apache-2.0\"\n"));
}
