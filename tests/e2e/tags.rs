//! Tag selection (`tags:`): a repository entry expanded into one image per
//! selected tag, against real registries.

use crate::support::*;
use image_syncer_testkit::faults::{FaultProxy, Faults, TagPages};

/// A pair of registries whose source holds `prom/prometheus` with tags
/// covering the rules, each tag a different image.
struct Repo(Pair);

impl std::ops::Deref for Repo {
    type Target = Pair;
    fn deref(&self) -> &Pair {
        &self.0
    }
}

/// The upstream tags: releases (with and without `v`), release candidates,
/// suffixed variants, moving tags, and a signature tag.
const TAGS: &[&str] = &[
    "v2.49.0",
    "v2.50.0",
    "v2.51.2",
    "v2.52.0-rc.0",
    "v2.52.0",
    "v2.53.1",
    "v3.0.0",
    "2.53",
    "latest",
    "main",
    "2.53-alpine",
];

impl Repo {
    fn new() -> Repo {
        // Logged: a test counts the requests the source was asked.
        let repo = Repo(Pair::logged());
        for tag in TAGS {
            repo.push(tag, tag);
        }
        repo
    }

    /// Pushes an image whose content is seeded by `seed` under `tag`.
    fn push(&self, tag: &str, seed: &str) -> String {
        let img = fixtures::image(&format!("prom-{seed}"), 1, 64);
        block_on(self.source.push(&format!("prom/prometheus:{tag}"), &img));
        img.digest.to_string()
    }

    /// The tags the target holds of the mirrored repository, sorted.
    fn mirrored(&self) -> Vec<String> {
        let mut tags = block_on(self.target.tags("mirror/prom/prometheus"));
        tags.sort();
        tags
    }
}

const RULE: &str = "- source: prom/prometheus\n  tags:\n    semver: \">=2.50, <3\"\n    exclude: [\".*-rc.*\"]\n    newest: 3\n";

#[test]
fn a_rule_mirrors_the_tags_it_selects_and_a_rerun_writes_nothing() {
    let r = Repo::new();
    let run1 = r.sync(RULE, &[]);
    assert_eq!(run1.code, 0, "{}", run1.all());
    // >=2.50 <3 without pre-releases: v2.50.0 v2.51.2 v2.52.0 v2.53.1 2.53
    // (2.53.0); the three highest.
    assert_eq!(
        r.mirrored(),
        ["2.53", "v2.52.0", "v2.53.1"],
        "{}",
        run1.stdout
    );
    for tag in ["v2.53.1", "2.53", "v2.52.0"] {
        assert_eq!(
            block_on(r.target.digest(&format!("mirror/prom/prometheus:{tag}"))),
            block_on(r.source.digest(&format!("prom/prometheus:{tag}"))),
            "{tag}"
        );
    }
    let before = r.target.storage_snapshot();
    let run2 = r.sync(RULE, &["--output", "json"]);
    assert_eq!(run2.code, 0, "{}", run2.all());
    let report: serde_json::Value = serde_json::from_str(&run2.stdout).unwrap();
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), 3, "{}", run2.stdout);
    assert!(
        images.iter().all(|i| i["action"] == "in-sync"),
        "{}",
        run2.stdout
    );
    // Highest first, in the report as in the run.
    let sources: Vec<&str> = images
        .iter()
        .map(|i| i["source"].as_str().unwrap())
        .collect();
    assert!(sources[0].ends_with(":v2.53.1"), "{sources:?}");
    assert_eq!(r.target.storage_snapshot(), before, "a re-run wrote");
}

#[test]
fn regex_and_exclude_select_by_name_and_signature_tags_are_never_images() {
    let r = Repo::new();
    // A signature tag upstream: `regex: [".*"]` still does not take it.
    let digest = block_on(r.source.digest("prom/prometheus:latest")).unwrap();
    let sig_tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    r.push(&sig_tag, "sig");
    let run = r.sync(
        "- source: prom/prometheus\n  tags:\n    regex: [\".*\"]\n    exclude: [\"v.*\", \".*-alpine\"]\n",
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(r.mirrored(), ["2.53", "latest", "main"], "{}", run.stdout);
}

#[test]
fn a_new_upstream_tag_is_copied_on_the_next_run_and_a_moved_one_stops_it() {
    let r = Repo::new();
    assert_eq!(r.sync(RULE, &[]).code, 0);
    // A new release enters the newest three.
    r.push("v2.54.0", "v2.54.0");
    let run = r.sync(RULE, &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        r.mirrored(),
        ["2.53", "v2.52.0", "v2.53.1", "v2.54.0"],
        "{}",
        run.stdout
    );
    // A tag mirrored before now names other content upstream: safety stop,
    // nothing written in the run (not even the new tag).
    r.push("v2.53.1", "moved");
    r.push("v2.55.0", "v2.55.0");
    let before = r.target.storage_snapshot();
    let run = r.sync(RULE, &[]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(run.stdout.contains("v2.53.1"), "{}", run.stdout);
    assert_eq!(r.target.storage_snapshot(), before, "a safety stop wrote");
}

#[test]
fn an_entry_selecting_nothing_fails_alone_naming_the_rule() {
    let r = Repo::new();
    let busybox = fixtures::image("busybox", 1, 100);
    block_on(r.source.push("library/busybox:1.36", &busybox));
    let run = r.sync(
        "- source: prom/prometheus\n  tags:\n    semver: \">=9\"\n- source: busybox:1.36\n- source: team/nothere\n  tags: { newest: 1 }\n",
        &[],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout
            .contains("the rule selected no tag of the 11 listed (semver \">=9\")"),
        "{}",
        run.stdout
    );
    // A repository that cannot be listed fails alone too, naming it.
    assert!(
        run.stdout.contains("listing the tags of team/nothere:"),
        "{}",
        run.stdout
    );
    assert!(r.mirrored().is_empty());
    assert_eq!(
        block_on(r.target.digest("mirror/library/busybox:1.36")),
        Some(busybox.digest.to_string()),
        "the other image was not copied"
    );
}

#[test]
fn bad_rules_are_input_errors_before_any_registry_is_asked() {
    let r = Repo::new();
    let source_before = r.source.requests().len();
    let target_before = r.target.storage_snapshot();
    for (entry, says) in [
        (
            "  tags: { regex: [\"v2.(\"] }\n",
            "invalid regex pattern `v2.(`",
        ),
        (
            "  tags: { semver: \">=two\" }\n",
            "invalid semver requirement `>=two`",
        ),
        ("  tags: { newest: 0 }\n", "`newest: 0` would select no tag"),
        ("  tags: { newst: 3 }\n", "unknown field `newst`"),
        (
            "  tags: {}\n",
            "a tags rule needs `semver`, `regex` or `newest`",
        ),
        (
            "  tag: v1\n  tags: { newest: 1 }\n",
            "`tag:` and `tags:` cannot both be given",
        ),
    ] {
        let run = r.sync(&format!("- source: prom/prometheus\n{entry}"), &[]);
        assert_eq!(run.code, 2, "{entry}: {}", run.all());
        assert!(run.stderr.contains(says), "{entry}: {}", run.stderr);
        assert!(
            run.stderr.contains("images.yaml:"),
            "{entry}: {}",
            run.stderr
        );
    }
    let run = r.sync(
        "- source: prom/prometheus:v3.0.0\n  tags: { newest: 1 }\n",
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains("remove its tag or digest"),
        "{}",
        run.stderr
    );
    assert_eq!(
        r.source.requests().len(),
        source_before,
        "the source was asked"
    );
    assert_eq!(r.target.storage_snapshot(), target_before);
}

#[test]
fn a_dry_run_lists_and_plans_and_writes_nothing() {
    let r = Repo::new();
    let before = r.target.storage_snapshot();
    let run = r.sync(RULE, &["--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        run.stdout.matches("  would copy  prom/prometheus:").count(),
        3,
        "{}",
        run.stdout
    );
    assert_eq!(r.target.storage_snapshot(), before);
}

#[test]
fn shards_split_the_selected_tags_between_them() {
    let r = Repo::new();
    let rule = "- source: prom/prometheus\n  tags:\n    regex: [\"v.*\"]\n";
    let mut copied = Vec::new();
    for shard in ["0/2", "1/2"] {
        let run = r.sync(rule, &["--shard", shard, "--output", "json"]);
        assert_eq!(run.code, 0, "{shard}: {}", run.all());
        let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        for i in report["images"].as_array().unwrap() {
            assert_eq!(i["action"], "copied", "{shard}: {}", run.stdout);
            copied.push(i["source"].as_str().unwrap().to_string());
        }
    }
    // Every `v` tag once, by one shard or the other.
    copied.sort();
    let mut expected: Vec<String> = TAGS
        .iter()
        .filter(|t| t.starts_with('v'))
        .map(|t| format!("prom/prometheus:{t}"))
        .collect();
    expected.sort();
    assert_eq!(copied, expected);
}

#[test]
fn hundreds_of_tags_are_listed_in_pages_with_one_request_each() {
    let r = Repo::new();
    // 260 more tags of one image, listed through a proxy answering in pages
    // of at most 100 tags with `Link` headers, as distribution 3 does.
    let img = fixtures::image("many", 1, 16);
    block_on(async {
        r.source.push("team/many:t000", &img).await;
        for i in 1..260 {
            r.source
                .push_manifest(
                    &format!("team/many:t{i:03}"),
                    &img.media_type,
                    &img.manifest,
                )
                .await;
        }
    });
    let proxy = FaultProxy::start(
        &r.source.host(),
        Faults {
            tag_pages: Some(TagPages::Relative),
            tag_page_max: Some(100),
            ..Default::default()
        },
    );
    let text = format!(
        "targetRepoPrefix: \"{}/mirror/\"\nregistries:\n  docker.io:\n    endpoint: \"{}\"\n    insecure: true\nimages:\n- source: team/many\n  tags:\n    regex: [\"t\\\\d+\"]\n    newest: 2\n",
        r.target.host(),
        proxy.host()
    );
    let def = write(r.dir.path(), "many.yaml", &text);
    let host = r.target.host();
    let run = run(&[
        "-i",
        def.to_str().unwrap(),
        "--insecure-registry",
        &host,
        "--output",
        "json",
    ]);
    assert_eq!(run.code, 0, "{}", run.all());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let sources: Vec<&str> = report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["source"].as_str().unwrap())
        .collect();
    // Not versions: ordered by name, descending; the newest two.
    assert_eq!(sources, ["team/many:t259", "team/many:t258"]);
    let listings: Vec<String> = proxy
        .injected
        .log()
        .into_iter()
        .filter(|(_, path)| path.contains("/tags/list"))
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    // 1000 asked per page; the proxy answers at most 100: three pages.
    assert_eq!(listings.len(), 3, "{listings:#?}");
}
