//! Dynamic plugins: the examples built by the suite, loaded through
//! `--plugin` and `plugins:`, the conformance harness, and every refusal.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use image_syncer_testkit::conformance;

use crate::support::*;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/debug`, from this test binary's path (`target/debug/deps/e2e-…`).
fn target_debug() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

/// Builds a plugin package with cargo (the same toolchain and target dir as
/// this suite) and returns a copy of its library named after `variant`. Each
/// variant is built once per test process; the copy is put in place by
/// rename, so a library already loaded by another test is never overwritten.
pub fn build_plugin(package: &str, features: &[&str], variant: &str) -> PathBuf {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(v, _)| v == variant) {
        return p.clone();
    }
    if built.is_empty() {
        remove_copies_of_ended_runs();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace())
        .args(["build", "--quiet", "-p", package]);
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "building {package} {features:?} failed");
    let lib = target_debug().join(format!("lib{}.so", package.replace('-', "_")));
    let out = target_debug().join(format!("plugin-{variant}-{}.so", std::process::id()));
    let tmp = out.with_extension("tmp");
    std::fs::copy(&lib, &tmp).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    std::fs::rename(&tmp, &out).unwrap();
    built.push((variant.to_string(), out.clone()));
    out
}

/// Removes the library copies (`plugin-<variant>-<pid>.so`) of test
/// processes that have ended (no `/proc/<pid>`), so that the target dir does
/// not grow by a set of copies per run. A live process's copies stay: its
/// libraries are loaded.
fn remove_copies_of_ended_runs() {
    let Ok(entries) = std::fs::read_dir(target_debug()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name
            .strip_prefix("plugin-")
            .and_then(|n| n.strip_suffix(".so"))
        else {
            continue;
        };
        let Some((_, pid)) = stem.rsplit_once('-') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn dir_plugin() -> PathBuf {
    build_plugin("image-syncer-example-dir", &[], "dir")
}

pub fn exec_plugin() -> PathBuf {
    build_plugin("image-syncer-example-exec-signer", &[], "exec")
}

#[test]
fn dir_plugin_passes_the_conformance_harness() {
    let registry = conformance::registry_with(&dir_plugin());
    conformance::check_sink_and_source(&registry, "dir", "dir", "dir");
}

#[test]
fn dir_plugin_round_trips_with_skopeo() {
    let skopeo = Command::new("skopeo").arg("--version").output();
    assert!(
        skopeo.is_ok_and(|o| o.status.success()),
        "skopeo is needed by this test: apt-get install skopeo (scripts/test.sh does this)"
    );
    let plugin = dir_plugin();
    let source = Registry::start();
    let back = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = fixtures::image("skopeo-dir", 2, 5000);
    block_on(source.push("library/busybox:1.36", &img));
    // Registry → dir: through `--plugin`, composed in `pipeline:`.
    let def = write(
        dir.path(),
        "to-dir.yaml",
        &format!(
            "targetRepoPrefix: \"dir:out/\"\nregistries:\n  \"{h}\":\n    insecure: true\nimages:\n- source: \"{h}/library/busybox:1.36\"\n",
            h = source.host()
        ),
    );
    // A dry run into `dir:` writes nothing.
    let r = run(&[
        "-i",
        def.to_str().unwrap(),
        "--plugin",
        plugin.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("would copy"), "{}", r.stdout);
    // The sink's repository hook crosses the plugin boundary, dry run included.
    let created = format!(
        "directory dir:out/{}/library/busybox",
        source.host().replace(':', "_")
    );
    assert!(
        r.stdout.contains(&format!("would create {created}\n")),
        "{}",
        r.stdout
    );
    assert!(
        !dir.path().join("out").exists(),
        "a dry run wrote into the dir: target"
    );
    let r = run(&[
        "-i",
        def.to_str().unwrap(),
        "--plugin",
        plugin.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains(&format!("created {created}\n")),
        "{}",
        r.stdout
    );
    let image_dir = dir.path().join(format!(
        "out/{}/library/busybox/1.36",
        source.host().replace(':', "_")
    ));
    // skopeo reads what the plugin wrote: same manifest bytes.
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", &format!("dir:{}", image_dir.display())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, img.manifest.to_vec());
    // skopeo writes a dir; the plugin (from `plugins:` in the definition) reads it.
    let skopeo_dir = dir.path().join("from-skopeo");
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{}/library/busybox:1.36", source.host()),
            &format!("dir:{}", skopeo_dir.display()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let def = write(
        dir.path(),
        "from-dir.yaml",
        &format!(
            "targetRepoPrefix: \"{h}/back/\"\nplugins: [\"{p}\"]\nregistries:\n  \"{h}\":\n    insecure: true\nimages:\n- source: \"dir:from-skopeo\"\n  tag: \"1.36\"\n",
            h = back.host(),
            p = plugin.display()
        ),
    );
    let r = run(&["-i", def.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        block_on(back.digest("back/from-skopeo:1.36")),
        Some(img.digest.to_string())
    );
}

#[test]
fn plugin_logs_reach_the_host_under_its_filter() {
    let plugin = dir_plugin();
    let source = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = fixtures::image("plugin-logs", 1, 5000);
    block_on(source.push("team/app:1", &img));
    let def = |out: &str| {
        write(
            dir.path(),
            &format!("{out}.yaml"),
            &format!(
                "targetRepoPrefix: \"dir:{out}/\"\nregistries:\n  \"{h}\":\n    insecure: true\nimages:\n- source: \"{h}/team/app:1\"\n",
                h = source.host()
            ),
        )
        .display()
        .to_string()
    };
    let plugin = plugin.to_str().unwrap();
    // The plugin logs each blob at debug level: not shown by default...
    let r = run(&["-i", &def("quiet"), "--plugin", plugin]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stderr.contains("blob written"), "{}", r.stderr);
    // ...shown with --debug, through the host's subscriber, naming the plugin.
    let r = run(&["-i", &def("loud"), "--plugin", plugin, "--debug"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("blob written"))
        .collect();
    assert_eq!(lines.len(), img.all_blobs().len(), "{}", r.stderr);
    for b in img.all_blobs() {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("digest={}", b.digest)))
            .unwrap_or_else(|| panic!("no log line for {}: {}", b.digest, r.stderr));
        assert!(line.contains(" DEBUG "), "{line}");
        assert!(line.contains(&format!("plugin={plugin}")), "{line}");
        assert!(line.contains("origin=image_syncer_example_dir"), "{line}");
    }
}

#[test]
fn exec_signer_passes_the_conformance_harness() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = p256_keypair(dir.path(), "key");
    let registry = conformance::registry_with(&exec_plugin());
    let config = format!(
        "{{ sign: [openssl, dgst, -sha256, -sign, \"{}\"], verify: [openssl, dgst, -sha256, -verify, \"{}\", -signature, \"{{signature}}\"] }}",
        key.display(),
        public.display()
    );
    conformance::check_signer(&registry, "exec", &config, None);
}

fn tag_suffix_plugin() -> PathBuf {
    build_plugin("image-syncer-example-tag-suffix", &[], "tag-suffix")
}

#[test]
fn tag_suffix_transform_appends_its_suffix_to_target_tags() {
    let plugin = tag_suffix_plugin();
    let (source, target) = (Registry::start(), Registry::start());
    let busybox = fixtures::image("tag-suffix-busybox", 1, 1000);
    let app = fixtures::image("tag-suffix-app", 1, 1000);
    block_on(source.push("library/busybox:1.36", &busybox));
    block_on(source.push("team/app:2", &app));
    let dir = tempfile::tempdir().unwrap();
    let def = write(
        dir.path(),
        "images.yaml",
        &format!(
            "{}images:\n- source: busybox:1.36\n- source: team/app:2\npipeline:\n  transforms:\n  - plugin: retag\n  - plugin: tag-suffix\n    config:\n      suffix: \"-mirror\"\n      onlyFor: [\"docker.io/library/\"]\n",
            header(&source, &target)
        ),
    );
    let host = target.host();
    let r = run(&[
        "-i",
        def.to_str().unwrap(),
        "--insecure-registry",
        &host,
        "--plugin",
        plugin.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains(&format!(
            "busybox:1.36 -> {host}/mirror/library/busybox:1.36-mirror ({})",
            busybox.digest
        )),
        "{}",
        r.stdout
    );
    // The suffixed tag holds the source's digest; the plain one was not written.
    assert_eq!(
        block_on(target.digest("mirror/library/busybox:1.36-mirror")),
        Some(busybox.digest.to_string())
    );
    assert_eq!(block_on(target.digest("mirror/library/busybox:1.36")), None);
    // `team/app` is `docker.io/team/app`, not under `docker.io/library/`: no suffix.
    assert_eq!(
        block_on(target.digest("mirror/team/app:2")),
        Some(app.digest.to_string())
    );
    assert_eq!(block_on(target.digest("mirror/team/app:2-mirror")), None);

    // An unknown key, from the definition's `plugins:`: an input error naming
    // the file and the line of the stage, before anything is touched.
    let before = target.storage_snapshot();
    let bad = write(
        dir.path(),
        "bad.yaml",
        &format!(
            "{}plugins: [\"{}\"]\nimages:\n- source: team/app:3\npipeline:\n  transforms:\n  - plugin: retag\n  - plugin: tag-suffix\n    config:\n      suffix: \"-mirror\"\n      onlyfor: [\"docker.io/library/\"]\n",
            header(&source, &target),
            plugin.display()
        ),
    );
    let r = run(&["-i", bad.to_str().unwrap(), "--insecure-registry", &host]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert_eq!(
        messages(&r.stderr).replace(&dir.path().display().to_string(), "[DIR]"),
        "error: [DIR]/bad.yaml:12: pipeline.transforms[1]: transform plugin `tag-suffix`: invalid config: unknown field `onlyfor`, expected `suffix` or `onlyFor`\n"
    );
    assert_eq!(target.storage_snapshot(), before);
}

#[test]
fn plugin_stages_are_listed_with_their_origin() {
    let plugin = dir_plugin();
    let r = run(&["--list-stages", "--plugin", plugin.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    insta::assert_snapshot!(r.stdout.replace(&plugin.display().to_string(), "[PLUGIN]"));
}

/// `--print-schema` with a plugin that declares its config schema (the
/// tag-suffix example) checks that plugin's `config:` too; a plugin without
/// one (the dir transport) keeps the free-form branch.
#[test]
fn print_schema_includes_a_plugins_declared_config_schema() {
    let tag_suffix = tag_suffix_plugin();
    let dir = dir_plugin();
    let r = run(&[
        "--print-schema",
        "--plugin",
        tag_suffix.to_str().unwrap(),
        "--plugin",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    let schema: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let branches = schema["$defs"]["TransformStage"]["anyOf"]
        .as_array()
        .unwrap();
    let tag = branches
        .iter()
        .find(|b| b["properties"]["plugin"]["const"] == "tag-suffix")
        .expect("a tag-suffix branch");
    let config = &tag["properties"]["config"]["anyOf"][0];
    assert_eq!(config["required"], serde_json::json!(["suffix"]));
    assert_eq!(config["additionalProperties"], false);
    assert!(config["properties"]["onlyFor"].is_object(), "{config:#}");
    let others = &branches.last().unwrap()["properties"]["plugin"]["not"]["enum"];
    assert_eq!(others, &serde_json::json!(["retag", "tag-suffix"]));
    // The dir transport declares no schema: not narrowed by name.
    let sinks = schema["$defs"]["SinkStage"]["anyOf"].as_array().unwrap();
    assert!(sinks
        .iter()
        .all(|b| b["properties"]["plugin"]["const"] != "dir"));
    assert_eq!(
        sinks.last().unwrap()["properties"]["plugin"]["not"]["enum"],
        serde_json::json!(["oci", "oci-layout"])
    );
}

#[test]
fn refusals_exit_2_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let def = write(
        dir.path(),
        "images.yaml",
        "targetRepoPrefix: \"127.0.0.1:9/x/\"\nimages: []\n",
    );
    let def = def.to_str().unwrap();
    let mut cases: Vec<(String, Vec<String>)> = Vec::new();
    for (variant, feature) in [
        ("wrong ABI version", "wrong-abi"),
        ("wrong core version", "wrong-core"),
        ("wrong compiler", "wrong-rustc"),
        ("other type layouts", "wrong-layout"),
        ("missing symbol", "no-declaration"),
        ("no stages", "no-stages"),
        ("duplicate stage name", "duplicate"),
        ("config schema not JSON", "bad-schema"),
    ] {
        let lib = build_plugin("image-syncer-test-misdeclared", &[feature], feature);
        cases.push((
            variant.into(),
            vec![
                "-i".into(),
                def.into(),
                "--plugin".into(),
                lib.display().to_string(),
            ],
        ));
    }
    let dir_lib = dir_plugin();
    cases.push((
        "the same plugin twice".into(),
        vec![
            "-i".into(),
            def.into(),
            "--plugin".into(),
            dir_lib.display().to_string(),
            "--plugin".into(),
            dir_lib.display().to_string(),
        ],
    ));
    cases.push((
        "not a library".into(),
        vec!["-i".into(), def.into(), "--plugin".into(), def.into()],
    ));
    cases.push((
        "no such file".into(),
        vec![
            "-i".into(),
            def.into(),
            "--plugin".into(),
            "/nonexistent/libx.so".into(),
        ],
    ));
    let bad_config = write(
        dir.path(),
        "bad-config.yaml",
        &format!(
            "targetRepoPrefix: \"dir:out/\"\nplugins: [\"{}\"]\nimages:\n- source: \"dir:in:1\"\npipeline:\n  sink:\n    plugin: dir\n    config:\n      compress: true\n",
            dir_lib.display()
        ),
    );
    cases.push((
        "bad plugin config".into(),
        vec!["-i".into(), bad_config.display().to_string()],
    ));
    let unknown = write(
        dir.path(),
        "unknown.yaml",
        "targetRepoPrefix: \"127.0.0.1:9/x/\"\nimages:\n- source: \"a:1\"\npipeline:\n  sink: { plugin: tarball }\n",
    );
    cases.push((
        "unknown plugin name".into(),
        vec!["-i".into(), unknown.display().to_string()],
    ));
    let mut out = String::new();
    for (name, args) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = run(&args);
        assert_eq!(r.code, 2, "{name}: {}", r.all());
        let msg = redact_loader_reason(&messages(&r.stderr))
            .replace(&target_debug().display().to_string(), "[TARGET]")
            .replace(&format!("-{}.so", std::process::id()), ".so")
            .replace(&dir.path().display().to_string(), "[DIR]")
            .replace(image_syncer_plugin::RUSTC_VERSION, "[RUSTC]")
            .replace(&format!("{:#x}", image_syncer_plugin::LAYOUT), "[LAYOUT]")
            .replace(
                &format!("{:#x}", image_syncer_plugin::LAYOUT ^ 1),
                "[OTHER LAYOUT]",
            );
        out.push_str(&format!("## {name}\n{msg}\n"));
    }
    insta::assert_snapshot!(out);
}

/// A sync from a source registry holding busybox:1.36 into a fresh target,
/// with the test plugin built with `feature` loaded and `body` (the images
/// and pipeline, YAML) after the registries' header. Returns the target, its
/// storage before the run, and the run.
fn with_test_plugin(
    feature: &str,
    body: &str,
    extra: &[&str],
) -> (
    Registry,
    std::collections::BTreeMap<PathBuf, (u64, std::time::SystemTime)>,
    Run,
) {
    let (source, target) = (Registry::start(), Registry::start());
    block_on(source.push("library/busybox:1.36", &fixtures::image("panic", 1, 100)));
    let lib = build_plugin("image-syncer-test-misdeclared", &[feature], feature);
    let dir = tempfile::tempdir().unwrap();
    let def = write(
        dir.path(),
        "images.yaml",
        &format!("{}{body}", header(&source, &target)),
    );
    let host = target.host();
    let before = target.storage_snapshot();
    let mut args = vec![
        "-i",
        def.to_str().unwrap(),
        "--insecure-registry",
        &host,
        "--plugin",
        lib.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let r = run(&args);
    (target, before, r)
}

#[test]
fn a_panicking_plugin_stage_fails_its_image_without_taking_the_process_down() {
    let (target, _, r) = with_test_plugin(
        "panicking-guard",
        "images:\n- source: busybox:1.36\npipeline:\n  guards: [ { plugin: immutable }, { plugin: pass } ]\n",
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout
            .contains("plugin guard `pass` panicked in check: this guard always panics (a bug in the plugin; not retried)"),
        "{}",
        r.stdout
    );
    assert_eq!(block_on(target.digest("mirror/library/busybox:1.36")), None);
}

#[test]
fn a_panicking_plugin_source_is_an_internal_error_and_not_retried() {
    let (target, before, r) = with_test_plugin(
        "panicking-source",
        "images:\n- source: busybox:1.36\n- source: team/app:2\npipeline:\n  source: { plugin: panicky }\n",
        &["--retries", "5"],
    );
    assert_eq!(r.code, 1, "{}", r.all());
    for image in ["busybox:1.36", "team/app:2"] {
        let line = r
            .stdout
            .lines()
            .skip_while(|l| !l.contains(&format!("FAILED  {image} ")))
            .nth(1)
            .unwrap_or_else(|| panic!("{image} did not fail: {}", r.stdout));
        assert!(
            line.contains("plugin source `panicky` panicked in resolve: this source always panics (resolve) (a bug in the plugin; not retried)"),
            "{line}"
        );
    }
    // One call per image: a bug is not retried like a network glitch. (This
    // plugin writes its declaration by hand, without the log bridge; each
    // panic shows once in stderr through the plugin's panic hook.)
    assert_eq!(
        r.stderr.matches("this source always panics").count(),
        2,
        "{}",
        r.stderr
    );
    assert_eq!(target.storage_snapshot(), before);
}

/// The system loader's own words after `dlopen failed: <path>: ` (glibc's,
/// which differ between C libraries and versions) become a placeholder.
fn redact_loader_reason(text: &str) -> String {
    text.lines()
        .map(|l| {
            let marker = "dlopen failed: ";
            let Some(at) = l.find(marker) else {
                return format!("{l}\n");
            };
            let after = at + marker.len();
            match l[after..].find(": ") {
                Some(end) => format!("{}: [THE LOADER'S REASON]\n", &l[..after + end]),
                None => format!("{l}\n"),
            }
        })
        .collect()
}

fn tag_prefix_plugin() -> PathBuf {
    build_plugin("image-syncer-example-tag-prefix", &[], "tag-prefix")
}

/// A selector from a library chooses the tags of a repository entry
/// (`images[].pipeline.selector`); the core never hands it a signature tag.
#[test]
fn a_plugin_selector_chooses_the_tags_of_a_repository_entry() {
    let plugin = tag_prefix_plugin();
    // The source keeps its access log: the requests it was asked are counted.
    let (source, target) = (Registry::start_logged(), Registry::start());
    let mut digests = Vec::new();
    for tag in ["v1.9", "v2.0", "v2.1", "beta"] {
        let img = fixtures::image(&format!("tag-prefix-{tag}"), 1, 200);
        block_on(source.push(&format!("team/app:{tag}"), &img));
        digests.push((tag, img.digest.to_string()));
    }
    let dir = tempfile::tempdir().unwrap();
    let def = write(
        dir.path(),
        "images.yaml",
        &format!(
            "{}plugins: [\"{}\"]\nimages:\n- source: team/app\n  pipeline:\n    selector: {{ plugin: tag-prefix, config: {{ prefixes: [\"v2.\"], max: 1 }} }}\n",
            header(&source, &target),
            plugin.display()
        ),
    );
    let host = target.host();
    let r = run(&["-i", def.to_str().unwrap(), "--insecure-registry", &host]);
    assert_eq!(r.code, 0, "{}", r.all());
    let mut mirrored = block_on(target.tags("mirror/team/app"));
    mirrored.sort();
    assert_eq!(mirrored, ["v2.1"], "{}", r.stdout);
    assert_eq!(
        block_on(target.digest("mirror/team/app:v2.1")),
        Some(digests[2].1.clone())
    );
    // Listed with its kind and origin.
    let r = run(&["--list-stages", "--plugin", plugin.to_str().unwrap()]);
    assert!(r.stdout.contains("selector tag-prefix"), "{}", r.stdout);
    // A bad config is an input error before the source is asked.
    let asked = source.requests().len();
    let bad = write(
        dir.path(),
        "bad.yaml",
        &format!(
            "{}plugins: [\"{}\"]\nimages:\n- source: team/app\n  pipeline:\n    selector: {{ plugin: tag-prefix, config: {{ prefixes: [] }} }}\n",
            header(&source, &target),
            plugin.display()
        ),
    );
    let r = run(&["-i", bad.to_str().unwrap(), "--insecure-registry", &host]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("at least one prefix"), "{}", r.stderr);
    assert_eq!(source.requests().len(), asked, "the source was asked");
}

/// A source from a library lists tags too: the `dir:` example's tags are the
/// image directories under its path, selected with the built-in `tags` rule.
#[test]
fn a_plugin_source_lists_the_tags_of_a_repository_entry() {
    let plugin = dir_plugin();
    let (source, target) = (Registry::start(), Registry::start());
    let dir = tempfile::tempdir().unwrap();
    let h = source.host();
    let mut digests = Vec::new();
    for tag in ["1.36", "1.37"] {
        let img = fixtures::image(&format!("dir-tags-{tag}"), 1, 300);
        block_on(source.push(&format!("library/busybox:{tag}"), &img));
        digests.push(img.digest.to_string());
    }
    // Registry → dir:out/library/busybox/{1.36,1.37}.
    let to_dir = write(
        dir.path(),
        "to-dir.yaml",
        &format!(
            "targetRepoPrefix: \"dir:out/\"\nplugins: [\"{p}\"]\nregistries:\n  \"{h}\":\n    insecure: true\nimages:\n- source: \"{h}/library/busybox:1.36\"\n- source: \"{h}/library/busybox:1.37\"\n",
            p = plugin.display()
        ),
    );
    let r = run(&["-i", to_dir.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    // dir:out/<host>/library/busybox → the registry, every tag the rule selects.
    let path = format!("out/{}/library/busybox", h.replace(':', "_"));
    assert!(dir.path().join(&path).join("1.37/manifest.json").is_file());
    let t = target.host();
    let back = write(
        dir.path(),
        "back.yaml",
        &format!(
            "targetRepoPrefix: \"{t}/back/\"\nplugins: [\"{p}\"]\nregistries:\n  \"{t}\":\n    insecure: true\nimages:\n- source: \"dir:{path}\"\n  tags: {{ semver: \">=1.37\" }}\n",
            p = plugin.display()
        ),
    );
    let r = run(&["-i", back.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        block_on(target.tags("back/busybox")),
        ["1.37"],
        "{}",
        r.stdout
    );
    assert_eq!(
        block_on(target.digest("back/busybox:1.37")),
        Some(digests[1].clone())
    );
}
