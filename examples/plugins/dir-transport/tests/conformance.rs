//! The conformance harness on this plugin, as a plugin's own crate runs it
//! (docs/plugins.md, "Testing with the conformance harness", quotes this file).

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::path::PathBuf;
use std::process::Command;

use image_syncer_testkit::conformance;

/// Builds this crate's library and returns its path: target/debug/, next to
/// target/debug/deps/ where the test binary runs.
fn plugin_library() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--manifest-path", manifest])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the plugin failed");
    let debug = std::env::current_exe().unwrap();
    let debug = debug.parent().unwrap().parent().unwrap();
    debug.join(format!(
        "{DLL_PREFIX}{}{DLL_SUFFIX}",
        env!("CARGO_PKG_NAME").replace('-', "_")
    ))
}

#[test]
fn dir_sink_and_source_conform() {
    let registry = conformance::registry_with(&plugin_library());
    conformance::check_sink_and_source(&registry, "dir", "dir", "dir");
}
