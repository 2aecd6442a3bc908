//! The OCI image-layout path: the README quick start and air-gapped copies.

use std::path::PathBuf;

use crate::support::*;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn quickstart_syncs_offline_and_is_idempotent() {
    // The shipped quick start, with its target redirected into a temp copy.
    let dir = tempfile::tempdir().unwrap();
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("examples/quickstart.yaml")).unwrap();
    let source_dir = root.join("examples/quickstart");
    let text = text
        .replace("oci:quickstart/", &format!("oci:{}/", source_dir.display()))
        .replace(
            "oci:../target/quickstart-mirror/",
            &format!("oci:{}/mirror/", dir.path().display()),
        );
    let def = write(dir.path(), "quickstart.yaml", &text);
    let r = run(&["-i", def.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("copied"), "{}", r.stdout);
    let again = run(&["-i", def.to_str().unwrap()]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(again.stdout.contains("already in sync"), "{}", again.stdout);
    assert!(!again.stdout.contains(" copied "), "{}", again.stdout);
    insta::assert_snapshot!(again
        .stdout
        .replace(&dir.path().display().to_string(), "[TMP]")
        .replace(&source_dir.display().to_string(), "[EXAMPLES]"));
}

#[test]
fn layout_to_registry_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo_root();
    let target = Registry::start();
    let host = target.host();
    // Layout → registry.
    let def = write(
        dir.path(),
        "up.yaml",
        &format!(
            "targetRepoPrefix: \"{host}/airgap/\"\nimages:\n- source: \"oci:{}/examples/quickstart/hello:1.0\"\n",
            root.display()
        ),
    );
    let r = run(&["-i", def.to_str().unwrap(), "--insecure-registry", &host]);
    assert_eq!(r.code, 0, "{}", r.all());
    let digest = block_on(target.digest("airgap/hello:1.0")).expect("pushed");
    // Registry → a new layout; digests equal all the way.
    let def = write(
        dir.path(),
        "down.yaml",
        &format!(
            "targetRepoPrefix: \"oci:out/\"\nregistries:\n  \"{host}\":\n    insecure: true\nimages:\n- source: \"{host}/airgap/hello:1.0\"\n"
        ),
    );
    let r = run(&["-i", def.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!(
            "out/{}/airgap/hello/index.json",
            host.replace(':', "_")
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        index["manifests"][0]["digest"].as_str(),
        Some(digest.as_str())
    );
}

#[test]
fn a_dry_run_into_a_layout_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo_root();
    let def = write(
        dir.path(),
        "dry.yaml",
        &format!(
            "targetRepoPrefix: \"oci:mirror/\"\nimages:\n- source: \"oci:{}/examples/quickstart/hello:1.0\"\n  tag: \"2.0\"\n",
            root.display()
        ),
    );
    let listing = || {
        let mut names: Vec<String> = walk(dir.path());
        names.sort();
        names
    };
    let before = listing();
    let r = run(&["-i", def.to_str().unwrap(), "--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("would copy"), "{}", r.stdout);
    assert_eq!(
        listing(),
        before,
        "a dry run wrote into the layout's folder"
    );
    assert!(!dir.path().join("mirror").exists());
    // The same definition for real writes the layout (the check above can fail).
    let r = run(&["-i", def.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(dir.path().join("mirror/hello/index.json").exists());
}

/// Every file and folder below `dir`, as paths relative to it.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    // Bounded by the tree: each folder is read once.
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                todo.push(p);
            }
        }
    }
    out
}
