//! Bad input: exit code 2, a message naming what is wrong, nothing touched.

use crate::support::*;

const DIGEST: &str = "sha256:31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab";

#[test]
fn bad_inputs_exit_2_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = write(
        d,
        "good.yaml",
        "targetRepoPrefix: \"127.0.0.1:1/mirror/\"\nimages:\n- source: busybox:1.36\n",
    );
    let signed = write(d, "signed.yaml", "targetRepoPrefix: \"127.0.0.1:1/mirror/\"\nsign: true\nimages:\n- source: busybox:1.36\n  sign: false\n- source: alpine:3\n");
    let defs = [
        ("malformed.yaml", "targetRepoPrefix: 127.0.0.1:9/x/\nimages:\n  - source: a:1\n - source: b:1\n"),
        ("empty.yaml", ""),
        ("unknown-key.yaml", "targetRepoPrefix: 127.0.0.1:9/x/\nimages:\n- source: a:1\n  amd64only: true\n"),
        ("wrong-type.yaml", "targetRepoPrefix: 127.0.0.1:9/x/\nimages:\n- source: a:1\n  sign: \"yes please\"\n"),
        ("digest-no-tag.yaml", &format!("targetRepoPrefix: 127.0.0.1:9/x/\nimages:\n- source: a:1\n- source: \"busybox@{DIGEST}\"\n")),
        ("bad-ref.yaml", "targetRepoPrefix: 127.0.0.1:9/x/\nimages:\n- source: \"UPPER/case:1\"\n"),
        ("duplicate-target.yaml", "targetRepoPrefix: 127.0.0.1:9/x/\nimages:\n- source: \"busybox:1.36\"\n- source: \"library/busybox:1.36\"\n- source: \"docker.io/library/busybox:1.0\"\n  tag: \"1.36\"\n- source: \"busybox:1.0\"\n  tag: \"1.36\"\n"),
        ("bad-prefix.yaml", "targetRepoPrefix: \"127.0.0.1:9/UPPER/\"\nimages:\n- source: a:1\n"),
        ("pipeline-unknown-plugin.yaml", "targetRepoPrefix: 127.0.0.1:9/x/\nimages:\n- source: a:1\npipeline:\n  guards:\n  - plugin: immutable\n  - plugin: nope\n"),
        ("pipeline-bad-config.yaml", "targetRepoPrefix: 127.0.0.1:9/x/\nimages:\n- source: a:1\npipeline:\n  sink:\n    plugin: oci\n    config:\n      monolithic: true\n"),
        ("pipeline-flattened-config.yaml", "targetRepoPrefix: 127.0.0.1:9/x/\nimages:\n- source: a:1\npipeline:\n  sink:\n    plugin: oci\n    monolithicPush: true\n"),
        ("pipeline-wrong-kind.yaml", "targetRepoPrefix: 127.0.0.1:9/x/\nimages:\n- source: a:1\npipeline:\n  transforms:\n  - plugin: immutable\n"),
        ("pipeline-unknown-stage.yaml", "targetRepoPrefix: 127.0.0.1:9/x/\nimages:\n- source: a:1\npipeline:\n  filters: []\n"),
        ("bad-platform.yaml", "targetRepoPrefix: 127.0.0.1:9/x/\nimages:\n- source: a:1\n  platforms: [amd64]\n"),
        ("amd64only-and-platforms.yaml", "targetRepoPrefix: 127.0.0.1:9/x/\nimages:\n- source: a:1\n  amd64Only: true\n  platforms: [linux/arm64]\n"),
        ("bad-retry.yaml", "targetRepoPrefix: 127.0.0.1:9/x/\nimages: []\nretry:\n  attempts: 3\n"),
        ("bad-registry.yaml", "targetRepoPrefix: 127.0.0.1:9/x/\nimages: []\nregistries:\n  docker.io:\n    insecure: \"very\"\n"),
    ];
    for (name, text) in defs {
        write(d, name, text);
    }
    // Deeply nested and huge inputs: refused with a message, never a crash.
    write(
        d,
        "deep.yaml",
        &format!(
            "targetRepoPrefix: {}{}\nimages: []\n",
            "[".repeat(2000),
            "]".repeat(2000)
        ),
    );
    let many: String = (0..20000)
        .map(|i| format!("- source: \"a{i}:1\"\n  tag: \"1\"\n  sign: false\n  bogus: {i}\n"))
        .collect();
    write(
        d,
        "huge.yaml",
        &format!("targetRepoPrefix: \"127.0.0.1:9/x/\"\nimages:\n{many}"),
    );
    write(d, "not-json.json", "this is not json");
    write(d, "empty.json", "");
    let p = |n: &str| d.join(n).display().to_string();
    let good = good.display().to_string();
    let signed = signed.display().to_string();
    // (name, arguments, environment)
    type Case<'a> = (String, Vec<String>, Vec<(&'a str, &'a str)>);
    let mut cases: Vec<Case> = vec![
        ("no arguments".into(), vec![], vec![]),
        (
            "missing file".into(),
            vec!["-i".into(), p("nope.yaml")],
            vec![],
        ),
        (
            "bad kms key".into(),
            vec![
                "-i".into(),
                good.clone(),
                "-k".into(),
                "gcpkms://path/to/key".into(),
            ],
            vec![],
        ),
        (
            "unknown key provider".into(),
            vec![
                "-i".into(),
                good.clone(),
                "--key-ref".into(),
                "vault://x".into(),
            ],
            vec![],
        ),
        (
            "key file missing".into(),
            vec!["-i".into(), good.clone(), "-t".into(), p("missing.json")],
            vec![],
        ),
        (
            "key file not json".into(),
            vec!["-i".into(), good.clone(), "-t".into(), p("not-json.json")],
            vec![],
        ),
        (
            "key file empty".into(),
            vec!["-i".into(), good.clone(), "-t".into(), p("empty.json")],
            vec![],
        ),
        (
            "bad dry-run value".into(),
            vec!["-i".into(), good.clone(), "--dry-run=maybe".into()],
            vec![],
        ),
        (
            "bad env bool".into(),
            vec!["-i".into(), good.clone()],
            vec![("SYNCER_DEBUG", "yes")],
        ),
        (
            "bad insecure registry".into(),
            vec![
                "-i".into(),
                good.clone(),
                "--insecure-registry".into(),
                "http://127.0.0.1:5000".into(),
            ],
            vec![],
        ),
        (
            "signing without key".into(),
            vec!["-i".into(), signed.clone()],
            vec![],
        ),
        (
            "unknown flag".into(),
            vec!["-i".into(), good.clone(), "--images".into(), "x".into()],
            vec![],
        ),
    ];
    for name in defs
        .iter()
        .map(|(n, _)| *n)
        .chain(["deep.yaml", "huge.yaml"])
    {
        cases.push((name.into(), vec!["-i".into(), p(name)], vec![]));
    }
    let mut out = String::new();
    for (name, args, env) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = run_with(&args, env);
        assert_eq!(r.code, 2, "{name}: {}", r.all());
        assert!(r.stdout.is_empty(), "{name}: printed a plan: {}", r.stdout);
        // Log lines carry timestamps; the error message is what is pinned.
        let msg = messages(&r.stderr).replace(&d.display().to_string(), "[DIR]");
        out.push_str(&format!("## {name}\n{msg}\n"));
    }
    insta::assert_snapshot!(out);
}

#[test]
fn version_and_help() {
    let r = run(&["-V"]);
    assert_eq!(r.code, 0);
    assert_eq!(
        r.stdout.trim(),
        format!("image-syncer {}", env!("CARGO_PKG_VERSION"))
    );
    // The long form adds what a plugin library must match to be loaded.
    let r = run(&["--version"]);
    assert_eq!(r.code, 0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("image-syncer {}", env!("CARGO_PKG_VERSION")),
            format!("built with {}", image_syncer_plugin::RUSTC_VERSION),
            format!("plugin ABI {}", image_syncer_plugin::ABI_VERSION),
        ],
        "{}",
        r.stdout
    );
    assert!(
        image_syncer_plugin::RUSTC_VERSION.starts_with("rustc 1."),
        "{}",
        image_syncer_plugin::RUSTC_VERSION
    );
    let r = run(&["--help"]);
    assert_eq!(r.code, 0);
    for flag in [
        "--images-file",
        "--target-repo-auth-key",
        "--dry-run",
        "--debug",
        "--kms-key",
        "--insecure-registry",
        "SYNCER_IMAGES_FILE",
        "Exit codes",
    ] {
        assert!(r.stdout.contains(flag), "help lacks {flag}");
    }
}
