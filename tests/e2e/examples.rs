//! Every example definition under examples/ runs as its comments say
//! (outputs redirected into a temp dir).

use std::path::{Path, PathBuf};

use crate::plugins::build_plugin;
use crate::support::*;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// The example, with `oci:quickstart/` pointing at the shipped layout and
/// `../target/` at `out`.
fn adapted(name: &str, out: &Path) -> String {
    std::fs::read_to_string(examples().join(name))
        .unwrap()
        .replace(
            "oci:quickstart/",
            &format!("oci:{}/quickstart/", examples().display()),
        )
        .replace(":../target/", &format!(":{}/", out.display()))
}

#[test]
fn airgap_to_dir_example() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = build_plugin("image-syncer-example-dir", &[], "dir");
    let def = write(
        dir.path(),
        "airgap.yaml",
        &adapted("airgap-to-dir.yaml", dir.path()),
    );
    let r = run(&[
        "--plugin",
        plugin.to_str().unwrap(),
        "-i",
        def.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    let manifest = std::fs::read(dir.path().join("airgap/hello/1.0/manifest.json")).unwrap();
    assert_eq!(
        image_syncer_core::digest::Digest::sha256_of(&manifest).to_string(),
        "sha256:dd90cc3468cdb76b8da410c880fcf9f70bc6c8f8332b52cf00d86eeee96df9e5"
    );
}

#[test]
fn composed_pipeline_example_signs_recursively() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = p256_keypair(dir.path(), "key");
    let def = write(
        dir.path(),
        "composed.yaml",
        &adapted("composed-pipeline.yaml", dir.path()),
    );
    let r = run(&[
        "-i",
        def.to_str().unwrap(),
        "--kms-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("signature: signed"), "{}", r.stdout);
    // The index and both children carry a signature tag in the layout.
    let tags: Vec<String> = layout_tags(&dir.path().join("composed/hello"))
        .into_iter()
        .filter(|t| t.ends_with(".sig"))
        .collect();
    assert_eq!(tags.len(), 3, "{tags:?}");
    let again = run(&[
        "-i",
        def.to_str().unwrap(),
        "--kms-key",
        key.to_str().unwrap(),
    ]);
    assert!(
        again.stdout.contains("signature: already signed"),
        "{}",
        again.stdout
    );
}

#[test]
fn sign_with_exec_example() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = build_plugin("image-syncer-example-exec-signer", &[], "exec");
    p256_keypair(dir.path(), "exec-key");
    let def = write(
        dir.path(),
        "exec.yaml",
        &adapted("sign-with-exec.yaml", dir.path()),
    );
    let r = run(&[
        "--plugin",
        plugin.to_str().unwrap(),
        "-i",
        def.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("signature: signed"), "{}", r.stdout);
    let again = run(&[
        "--plugin",
        plugin.to_str().unwrap(),
        "-i",
        def.to_str().unwrap(),
    ]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(
        again.stdout.contains("signature: already signed"),
        "{}",
        again.stdout
    );
}

#[test]
fn tag_suffix_example() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = build_plugin("image-syncer-example-tag-suffix", &[], "tag-suffix");
    let def = write(
        dir.path(),
        "suffix.yaml",
        &adapted("tag-suffix.yaml", dir.path()),
    );
    let args = [
        "--plugin",
        plugin.to_str().unwrap(),
        "-i",
        def.to_str().unwrap(),
    ];
    let r = run(&args);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains(&format!(
            "-> oci:{}/suffixed/hello:1.0-mirror (sha256:dd90cc3468cdb76b8da410c880fcf9f70bc6c8f8332b52cf00d86eeee96df9e5)",
            dir.path().display()
        )),
        "{}",
        r.stdout
    );
    // The layout holds the suffixed tag only.
    assert_eq!(
        layout_tags(&dir.path().join("suffixed/hello")),
        ["1.0-mirror"]
    );
    let again = run(&args);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(
        again.stdout.contains("1 already in sync"),
        "{}",
        again.stdout
    );
}

/// The tags of an OCI layout: its `index.json` entries' ref names.
fn layout_tags(layout: &std::path::Path) -> Vec<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(str::to_string)
        .collect()
}
