//! Conformance checks for stage plugins, run the way the built-ins are tested:
//! through the real orchestrator, against real registries from [`Registry`].
//!
//! A plugin author loads their library (or passes a registry with their
//! stages) and calls [`check_sink_and_source`] or [`check_signer`]; each
//! panics with a precise message on the first violation.

use std::path::Path;

use image_syncer_core::catalogue::StageRegistry;
use image_syncer_core::context::RunContext;
use image_syncer_core::definition;
use image_syncer_core::orchestrator::Orchestrator;
use image_syncer_core::report::{Action, Report};
use image_syncer_core::stage::SignOutcome;

use crate::fixtures::{self, TestImage};
use crate::Registry;

// The built-in stages the checks compose with.
use image_syncer_immutable as _;
use image_syncer_oci as _;
use image_syncer_retag as _;

/// The built-in stages plus those of the plugin library at `path`.
pub fn registry_with(path: &Path) -> StageRegistry {
    let mut registry = StageRegistry::builtin().expect("built-in stages");
    image_syncer_plugin::host::load_into(&mut registry, path)
        .unwrap_or_else(|e| panic!("loading the plugin: {e}"));
    registry
}

/// Runs a definition (text) with `registry`, as the CLI does.
pub fn run(registry: &StageRegistry, dir: &Path, text: &str, key_ref: Option<&str>) -> Report {
    let transports = registry.transports();
    let t: Vec<&str> = transports.iter().map(String::as_str).collect();
    let def = definition::parse(text, &dir.join("conformance.yaml"), &t)
        .unwrap_or_else(|e| panic!("conformance definition: {e}"));
    let mut cx = RunContext::default();
    cx.registries.hosts = def
        .registry_access()
        .unwrap_or_else(|e| panic!("conformance definition: {e}"));
    cx.base_dir = dir.to_path_buf();
    cx.transports = transports.clone();
    cx.signing_key = key_ref.map(str::to_string);
    let orchestrator = Orchestrator::new(registry.clone(), cx);
    let prepared = orchestrator
        .prepare(&def, false)
        .unwrap_or_else(|e| panic!("conformance definition does not prepare: {e}"));
    // Plugin stages may block in place: a multi-thread runtime, as the CLI's.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(prepared.run())
}

fn images() -> Vec<(&'static str, TestImage)> {
    vec![
        (
            "library/busybox:1.36",
            fixtures::image("conformance-single", 3, 70_000),
        ),
        (
            "team/app:2",
            fixtures::docker_image("conformance-docker", 2, 1000),
        ),
        (
            "team/multi:1.0",
            fixtures::index("conformance-multi", &["linux/amd64", "linux/arm64"]),
        ),
    ]
}

fn registries_yaml(hosts: &[&Registry]) -> String {
    let mut s = String::from("registries:\n");
    for h in hosts {
        s.push_str(&format!("  \"{}\":\n    insecure: true\n", h.host()));
    }
    s
}

fn assert_all(report: &Report, action: Action, what: &str) {
    assert!(
        !report.images.is_empty(),
        "{what}: the run reported no image at all"
    );
    for i in &report.images {
        assert_eq!(
            i.action,
            action,
            "{what}: {} -> {}: {:?} ({})",
            i.source,
            i.target,
            i.action,
            i.message.as_deref().unwrap_or("")
        );
    }
}

/// Pushes the conformance images to `origin`; returns them with the
/// definition's `images:` entries naming them there.
fn seed(origin: &Registry) -> (Vec<(&'static str, TestImage)>, String) {
    let imgs = images();
    crate::block_on(async {
        for (r, img) in &imgs {
            origin.push(r, img).await;
        }
    });
    let entries = imgs
        .iter()
        .map(|(r, _)| format!("- source: \"{}/{r}\"\n", origin.host()))
        .collect();
    (imgs, entries)
}

/// A sink and source pair serving `transport` (`dir` for `dir:PATH`):
/// 1. three images (single-platform OCI, Docker schema 2, a two-platform
///    index) are copied from a real registry into the plugin's sink under
///    `<transport>:<dir>/`;
/// 2. a second run finds them all in sync;
/// 3. they are copied back out through the plugin's source into a second
///    registry, and every digest equals the original.
pub fn check_sink_and_source(registry: &StageRegistry, transport: &str, sink: &str, source: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = Registry::start();
    let back = Registry::start();
    let (imgs, entries) = seed(&origin);
    let to_plugin = format!(
        "targetRepoPrefix: \"{transport}:out/\"\n{}images:\n{entries}pipeline:\n  sink: {{ plugin: {sink} }}\n",
        registries_yaml(&[&origin])
    );
    let first = run(registry, dir.path(), &to_plugin, None);
    assert_all(&first, Action::Copied, "copy into the plugin's sink");
    let second = run(registry, dir.path(), &to_plugin, None);
    assert_all(&second, Action::InSync, "second run into the plugin's sink");
    let host_path = origin.host().replace(':', "_");
    let entries: String = imgs
        .iter()
        .map(|(r, _)| format!("- source: \"{transport}:out/{host_path}/{r}\"\n"))
        .collect();
    let from_plugin = format!(
        "targetRepoPrefix: \"{}/back/\"\n{}images:\n{entries}pipeline:\n  source: {{ plugin: {source} }}\n",
        back.host(),
        registries_yaml(&[&back])
    );
    let third = run(registry, dir.path(), &from_plugin, None);
    assert_all(&third, Action::Copied, "copy out of the plugin's source");
    crate::block_on(async {
        for (r, img) in &imgs {
            let (repo, tag) = r.rsplit_once(':').unwrap();
            let last = repo.rsplit('/').next().unwrap();
            let got = back.digest(&format!("back/{last}:{tag}")).await;
            assert_eq!(
                got,
                Some(img.digest.to_string()),
                "{r}: digest changed through the plugin"
            );
        }
    });
}

/// A signer with its config (YAML flow map): signs a single image and an index
/// in a real registry, then a second run finds the signatures and writes
/// nothing. `key_ref` is passed as `--kms-key` would be.
pub fn check_signer(registry: &StageRegistry, signer: &str, config: &str, key_ref: Option<&str>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = Registry::start();
    let target = Registry::start();
    let (_, entries) = seed(&origin);
    let text = format!(
        "targetRepoPrefix: \"{}/signed/\"\nsign: true\n{}images:\n{entries}pipeline:\n  signer: {{ plugin: {signer}, config: {config} }}\n",
        target.host(),
        registries_yaml(&[&origin, &target])
    );
    let first = run(registry, dir.path(), &text, key_ref);
    assert_all(&first, Action::Copied, "first run");
    for i in &first.images {
        assert_eq!(
            i.signature,
            Some(SignOutcome::Signed),
            "{}: not signed",
            i.source
        );
    }
    let before = target.storage_snapshot();
    let second = run(registry, dir.path(), &text, key_ref);
    assert_all(&second, Action::InSync, "second run");
    for i in &second.images {
        assert_eq!(
            i.signature,
            Some(SignOutcome::AlreadySigned),
            "{}: its own signature was not recognised",
            i.source
        );
    }
    assert_eq!(
        target.storage_snapshot(),
        before,
        "the second run wrote to the target"
    );
}
