//! Syncing between two real registries.

use crate::support::*;

const THREE: &str = "- source: \"busybox:1.36\"\n- source: \"bitnami/multi:1.0\"\n- source: \"docker.io/team/app:2\"\n";

fn populate(
    p: &Pair,
) -> (
    fixtures::TestImage,
    fixtures::TestImage,
    fixtures::TestImage,
) {
    let busybox = fixtures::image("busybox", 3, 4096);
    let multi = fixtures::index("multi", &["linux/amd64", "linux/arm64"]);
    let app = fixtures::docker_image("app", 2, 1000);
    block_on(async {
        p.source.push("library/busybox:1.36", &busybox).await;
        p.source.push("bitnami/multi:1.0", &multi).await;
        p.source.push("team/app:2", &app).await;
    });
    (busybox, multi, app)
}

#[test]
fn copies_single_and_multi_arch_images_with_digests_preserved() {
    let p = Pair::new();
    let (busybox, multi, app) = populate(&p);
    let r = p.sync(THREE, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    block_on(async {
        assert_eq!(
            p.target.digest("mirror/library/busybox:1.36").await,
            Some(busybox.digest.to_string())
        );
        assert_eq!(
            p.target.digest("mirror/bitnami/multi:1.0").await,
            Some(multi.digest.to_string())
        );
        assert_eq!(
            p.target.digest("mirror/docker.io/team/app:2").await,
            Some(app.digest.to_string())
        );
        // Manifests are byte-identical and every child and blob is there.
        assert_eq!(
            p.target.manifest("mirror/bitnami/multi:1.0").await.unwrap(),
            multi.manifest
        );
        for child in &multi.children {
            assert_eq!(
                p.target
                    .digest(&format!("mirror/bitnami/multi@{}", child.digest))
                    .await,
                Some(child.digest.to_string())
            );
        }
        for b in multi.all_blobs() {
            assert!(
                p.target
                    .has_blob("mirror/bitnami/multi", &b.digest.to_string())
                    .await
            );
        }
        for b in busybox.all_blobs() {
            assert!(
                p.target
                    .has_blob("mirror/library/busybox", &b.digest.to_string())
                    .await
            );
        }
    });
    insta::assert_snapshot!("first_sync", p.redact(&r.stdout));

    // A second run finds everything in sync and writes nothing.
    let before = p.target.storage_snapshot();
    let again = p.sync(THREE, &[]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(
        p.target.storage_snapshot(),
        before,
        "a run in sync wrote to the target"
    );
    insta::assert_snapshot!("second_sync", p.redact(&again.stdout));
}

#[test]
fn digest_source_is_retagged() {
    let p = Pair::new();
    let img = fixtures::image("pinned", 1, 512);
    block_on(p.source.push("library/busybox:whatever", &img));
    let images = format!(
        "- source: \"busybox@{}\"\n  tag: \"1.32.0-v1\"\n",
        img.digest
    );
    let r = p.sync(&images, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    block_on(async {
        assert_eq!(
            p.target.digest("mirror/library/busybox:1.32.0-v1").await,
            Some(img.digest.to_string())
        );
        assert_eq!(
            p.target.tags("mirror/library/busybox").await,
            vec!["1.32.0-v1"]
        );
    });
}

#[test]
fn tag_source_is_retagged_with_tag_key() {
    let p = Pair::new();
    let img = fixtures::image("cypress", 1, 256);
    block_on(p.source.push("cypress/included:9.5.0", &img));
    let r = p.sync("- source: \"cypress/included:9.5.0\"\n  tag: latest\n", &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    block_on(async {
        assert_eq!(
            p.target.tags("mirror/cypress/included").await,
            vec!["latest"]
        );
    });
}

#[test]
fn target_tag_holding_another_image_is_a_safety_stop_and_nothing_is_written() {
    let p = Pair::new();
    populate(&p);
    let squatter = fixtures::image("squatter", 1, 100);
    block_on(p.target.push("mirror/bitnami/multi:1.0", &squatter));
    let before = p.target.storage_snapshot();
    let r = p.sync(THREE, &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(
        p.target.storage_snapshot(),
        before,
        "a safety stop wrote to the target"
    );
    block_on(async {
        assert_eq!(
            p.target.digest("mirror/bitnami/multi:1.0").await,
            Some(squatter.digest.to_string())
        );
        // Other images were not written either.
        assert_eq!(p.target.digest("mirror/library/busybox:1.36").await, None);
    });
    insta::assert_snapshot!(p.redact(&r.stdout));
}

#[test]
fn source_changed_after_a_sync_is_a_safety_stop() {
    let p = Pair::new();
    let first = fixtures::image("v1", 1, 100);
    block_on(p.source.push("library/busybox:1.36", &first));
    let images = "- source: busybox:1.36\n";
    assert_eq!(p.sync(images, &[]).code, 0);
    let second = fixtures::image("v2", 1, 100);
    block_on(p.source.push("library/busybox:1.36", &second));
    let before = p.target.storage_snapshot();
    let r = p.sync(images, &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(
        r.stdout.contains(&first.digest.to_string())
            && r.stdout.contains(&second.digest.to_string()),
        "{}",
        r.stdout
    );
    assert_eq!(p.target.storage_snapshot(), before);
    block_on(async {
        assert_eq!(
            p.target.digest("mirror/library/busybox:1.36").await,
            Some(first.digest.to_string())
        );
    });
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let p = Pair::new();
    populate(&p);
    let before = p.target.storage_snapshot();
    let source_before = p.source.storage_snapshot();
    let r = p.sync(THREE, &["--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(p.target.storage_snapshot(), before);
    assert_eq!(p.source.storage_snapshot(), source_before);
    insta::assert_snapshot!(p.redact(&r.stdout));
    // The env var form, and `--dry-run=false` runs for real.
    let def = p.definition(THREE);
    let host = p.target.host();
    let r = run_with(
        &["--insecure-registry", &host],
        &[("SYNCER_IMAGES_FILE", &def), ("SYNCER_DRY_RUN", "1")],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(p.target.storage_snapshot(), before);
    let r = p.sync(THREE, &["--dry-run=false"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_ne!(p.target.storage_snapshot(), before);
}

#[test]
fn missing_source_fails_that_image_only() {
    let p = Pair::new();
    populate(&p);
    let r = p.sync("- source: \"nothere:1\"\n- source: \"busybox:1.36\"\n", &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("FAILED"), "{}", r.stdout);
    block_on(async {
        assert!(p
            .target
            .digest("mirror/library/busybox:1.36")
            .await
            .is_some());
    });
}

#[test]
fn corrupted_source_blob_is_a_safety_stop_and_no_tag_is_written() {
    let p = Pair::new();
    let img = fixtures::image("tampered", 2, 4096);
    block_on(p.source.push("library/busybox:1.36", &img));
    // Rewrite one layer's bytes on the registry's disk, keeping its digest path.
    let layer = &img.blobs[1].digest;
    let data = p
        .source
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&layer.hex()[..2])
        .join(layer.hex())
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let r = p.sync("- source: busybox:1.36\n", &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(
        r.stdout.contains("does not match its digest"),
        "{}",
        r.stdout
    );
    block_on(async {
        assert_eq!(p.target.digest("mirror/library/busybox:1.36").await, None);
        assert!(
            !p.target
                .has_blob("mirror/library/busybox", &layer.to_string())
                .await
        );
    });
}

#[test]
fn authenticated_target_with_json_key_file() {
    let source = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let key = r#"{"type": "service_account", "project_id": "p", "private_key_id": "k1", "client_email": "syncer@p.iam.gserviceaccount.com"}"#;
    let target = Registry::start_with(RegistryOptions {
        htpasswd: Some(("_json_key".into(), key.into())),
        ..Default::default()
    });
    let key_file = write(dir.path(), "key.json", key);
    never_shown("syncer@p.iam.gserviceaccount.com");
    let img = fixtures::image("auth", 1, 300);
    block_on(source.push("library/busybox:1.36", &img));
    let def = write(
        dir.path(),
        "images.yaml",
        &format!(
            "{}images:\n- source: busybox:1.36\n",
            header(&source, &target)
        ),
    );
    let host = target.host();
    // Without the key: the registry refuses, the error says what to pass.
    let r = run(&["-i", def.to_str().unwrap(), "--insecure-registry", &host]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("refused access"), "{}", r.stdout);
    // Which flag gives the credentials is the CLI's to say, once.
    assert_eq!(
        r.stderr
            .matches(&format!(
                "hint: the target registry {host} refused access: give its credentials with --target-repo-auth-key"
            ))
            .count(),
        1,
        "{}",
        r.stderr
    );
    // With it: copied.
    let r = run(&[
        "-i",
        def.to_str().unwrap(),
        "-t",
        key_file.to_str().unwrap(),
        "--insecure-registry",
        &host,
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    block_on(async {
        assert_eq!(
            target.digest("mirror/library/busybox:1.36").await,
            Some(img.digest.to_string())
        );
    });
    // The key never shows up in any output.
    assert!(!r.all().contains("service_account"));
    let r = run(&[
        "-i",
        def.to_str().unwrap(),
        "-t",
        key_file.to_str().unwrap(),
        "--insecure-registry",
        &host,
        "--debug",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.all().contains("service_account"), "{}", r.all());
}

#[test]
fn shards_split_the_images_without_overlap_and_cover_them_all() {
    let p = Pair {
        source: Registry::start(),
        target: Registry::start_with(RegistryOptions {
            access_log: true,
            ..Default::default()
        }),
        dir: tempfile::tempdir().unwrap(),
    };
    let mut lines = String::new();
    let mut digests = Vec::new();
    block_on(async {
        for i in 0..12 {
            let img = fixtures::image(&format!("shard-{i}"), 1, 64);
            p.source.push(&format!("team/app{i}:1"), &img).await;
            lines.push_str(&format!("- source: \"team/app{i}:1\"\n"));
            digests.push(img.digest.to_string());
        }
    });
    let all: std::collections::BTreeSet<String> = (0..12).map(|i| format!("team/app{i}")).collect();
    let mut owned: Vec<std::collections::BTreeSet<String>> = Vec::new();
    for (i, how) in [(0, "flag"), (1, "flag"), (2, "job-index")].iter() {
        let def = p.definition(&lines);
        let host = p.target.host();
        let seen_before = p.target.requests().len();
        let r = if *how == "flag" {
            run(&[
                "-i",
                &def,
                "--insecure-registry",
                &host,
                "--shard",
                &format!("{i}/3"),
                "--output",
                "json",
            ])
        } else {
            run_with(
                &[
                    "-i",
                    &def,
                    "--insecure-registry",
                    &host,
                    "--shard-count",
                    "3",
                    "--output",
                    "json",
                ],
                &[("JOB_COMPLETION_INDEX", "2")],
            )
        };
        assert_eq!(r.code, 0, "{}", r.all());
        // What the shard reports: its own images, each copied.
        let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let mut mine = std::collections::BTreeSet::new();
        for image in report["images"].as_array().unwrap() {
            assert_eq!(image["action"], "copied", "shard {i}: {image}");
            let target = image["target"].as_str().unwrap();
            let repo = target
                .split("/mirror/")
                .nth(1)
                .and_then(|t| t.strip_suffix(":1"))
                .unwrap_or_else(|| panic!("shard {i}: unexpected target {target}"));
            mine.insert(repo.to_string());
        }
        // (A shard may own none: the partition hashes targets, which carry
        // the registry's random port.)
        // What the shard touched in the target: its own repositories only.
        for request in &p.target.requests()[seen_before..] {
            let touched = all
                .iter()
                .find(|repo| request.contains(&format!("/mirror/{repo}/")));
            if let Some(repo) = touched {
                assert!(
                    mine.contains(repo),
                    "shard {i} touched {repo}, which it does not own: {request}"
                );
            }
        }
        owned.push(mine);
    }
    // Disjoint and complete.
    for (a, x) in owned.iter().enumerate() {
        for (b, y) in owned.iter().enumerate().skip(a + 1) {
            assert!(
                x.is_disjoint(y),
                "shards {a} and {b} share {:?}",
                x.intersection(y)
            );
        }
    }
    let union: std::collections::BTreeSet<String> = owned.iter().flatten().cloned().collect();
    assert_eq!(union, all);
    block_on(async {
        for (i, d) in digests.iter().enumerate() {
            assert_eq!(
                p.target
                    .digest(&format!("mirror/team/app{i}:1"))
                    .await
                    .as_ref(),
                Some(d)
            );
        }
    });
    // After all shards ran, an unsharded run finds everything in sync.
    let r = p.sync(&lines, &[]);
    assert_eq!(
        r.stdout.matches("  already in sync  ").count(),
        12,
        "{}",
        r.stdout
    );
    // Bad shard input is refused before anything.
    let def = p.definition(&lines);
    assert_eq!(run(&["-i", &def, "--shard", "3/3"]).code, 2);
    assert_eq!(run(&["-i", &def, "--shard-count", "3"]).code, 2);
    assert_eq!(
        run_with(
            &["-i", &def, "--shard-count", "3"],
            &[("JOB_COMPLETION_INDEX", "7")]
        )
        .code,
        2
    );
}

#[test]
fn warm_run_costs_one_manifest_head_per_registry_and_image() {
    let logged = RegistryOptions {
        access_log: true,
        ..Default::default()
    };
    let p = Pair {
        source: Registry::start_with(logged.clone()),
        target: Registry::start_with(logged),
        dir: tempfile::tempdir().unwrap(),
    };
    populate(&p);
    assert_eq!(p.sync(THREE, &[]).code, 0);
    let (source_before, target_before) = (p.source.requests().len(), p.target.requests().len());
    let r = p.sync(THREE, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let source: Vec<String> = p.source.requests()[source_before..].to_vec();
    let target: Vec<String> = p.target.requests()[target_before..].to_vec();
    // `GET /v2/` is the client's auth probe; everything else is counted.
    let work = |reqs: &[String]| -> Vec<String> {
        let mut v: Vec<String> = reqs
            .iter()
            .filter(|r| r.as_str() != "GET /v2/")
            .cloned()
            .collect();
        v.sort();
        v
    };
    insta::assert_debug_snapshot!((work(&source), work(&target)));
}

#[test]
fn a_blob_shared_by_images_is_transferred_once_and_mounted_elsewhere() {
    let logged = RegistryOptions {
        access_log: true,
        ..Default::default()
    };
    let p = Pair {
        source: Registry::start_with(logged.clone()),
        target: Registry::start_with(logged),
        dir: tempfile::tempdir().unwrap(),
    };
    let imgs = fixtures::images_sharing_a_layer(&["one", "two", "three"], 200_000);
    let shared = imgs[0].blobs[1].digest.to_string();
    block_on(async {
        for (i, img) in imgs.iter().enumerate() {
            p.source.push(&format!("team/app{i}:1"), img).await;
        }
    });
    let (sb, tb) = (p.source.requests().len(), p.target.requests().len());
    let r = p.sync(
        "- source: team/app0:1\n- source: team/app1:1\n- source: team/app2:1\n",
        &["--jobs", "3"],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    let source = p.source.requests()[sb..].to_vec();
    let target = p.target.requests()[tb..].to_vec();
    // The shared layer left the source once.
    let pulls = source
        .iter()
        .filter(|r| r.starts_with("GET") && r.contains(&shared))
        .count();
    assert_eq!(pulls, 1, "{source:#?}");
    // It was uploaded once and mounted into the two other repositories.
    let uploads = target
        .iter()
        .filter(|r| {
            r.starts_with("PUT") && r.contains(&format!("digest={}", shared.replace(':', "%3A")))
        })
        .count()
        + target
            .iter()
            .filter(|r| r.starts_with("PUT") && r.contains(&format!("digest={shared}")))
            .count();
    let mounts = target
        .iter()
        .filter(|r| {
            r.starts_with("POST")
                && r.contains("mount=")
                && (r.contains(&shared) || r.contains(&shared.replace(':', "%3A")))
        })
        .count();
    assert_eq!((uploads, mounts), (1, 2), "{target:#?}");
    block_on(async {
        for (i, img) in imgs.iter().enumerate() {
            assert_eq!(
                p.target.digest(&format!("mirror/team/app{i}:1")).await,
                Some(img.digest.to_string())
            );
            assert!(
                p.target
                    .has_blob(&format!("mirror/team/app{i}"), &shared)
                    .await
            );
        }
    });
}

#[test]
fn json_report_is_machine_readable() {
    let p = Pair::new();
    populate(&p);
    let squatter = fixtures::image("squatter-json", 1, 100);
    block_on(p.target.push("mirror/team/app2:1", &squatter));
    let images = format!("{THREE}- source: \"team/app2:1\"\n- source: \"nothere:1\"\n");
    block_on(
        p.source
            .push("team/app2:1", &fixtures::image("app2-json", 1, 100)),
    );
    let r = p.sync(&images, &["--output", "json"]);
    assert_eq!(r.code, 3, "{}", r.all());
    let mut report: serde_json::Value =
        serde_json::from_str(&p.redact(&r.stdout)).expect("stdout is JSON");
    for image in report["images"].as_array_mut().unwrap() {
        assert!(image["duration_ms"].is_u64());
        image["duration_ms"] = serde_json::json!("[ms]");
    }
    insta::assert_json_snapshot!(report);
}

#[test]
fn corrupted_source_manifest_is_a_safety_stop() {
    let p = Pair::new();
    let img = fixtures::image("tampered-manifest", 1, 1000);
    block_on(p.source.push("library/busybox:1.36", &img));
    let data = p
        .source
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&img.digest.hex()[..2])
        .join(img.digest.hex())
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let i = bytes.iter().position(|b| *b == b'2').unwrap();
    bytes[i] = b'3'; // schemaVersion 2 → 3: still JSON, other bytes
    std::fs::write(&data, bytes).unwrap();
    let before = p.target.storage_snapshot();
    let r = p.sync("- source: busybox:1.36\n", &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(p.target.storage_snapshot(), before);
}

#[test]
fn a_key_file_readable_by_others_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let p = Pair::new();
    populate(&p);
    let key = write(
        p.dir.path(),
        "key.json",
        "{\"username\": \"u\", \"password\": \"p\"}",
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = p.sync(
        "- source: busybox:1.36\n",
        &["--dry-run", "-t", key.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("readable by group or others"),
        "{}",
        r.stderr
    );
    // The warning names the file.
    assert!(
        r.stderr
            .contains(&format!("file={}", key.to_str().unwrap())),
        "{}",
        r.stderr
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = p.sync(
        "- source: busybox:1.36\n",
        &["--dry-run", "-t", key.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        !r.stderr.contains("readable by group or others"),
        "{}",
        r.stderr
    );
}

#[test]
fn platform_filters_and_kyma_amd64_only() {
    let p = Pair::new();
    let idx = fixtures::index("plat", &["linux/amd64", "linux/arm64", "linux/s390x"]);
    let single = fixtures::image("plat-single", 1, 100);
    block_on(async {
        p.source.push("team/multi:1", &idx).await;
        p.source.push("team/multi:2", &idx).await;
        p.source.push("library/busybox:1", &single).await;
    });
    // kyma's definition format: `amd64Only: true` per image.
    let images = "- source: team/multi:1\n  amd64Only: true\n- source: team/multi:2\n  platforms: [linux/amd64, linux/arm64]\n- source: busybox:1\n  amd64Only: true\n";
    let r = p.sync(images, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    block_on(async {
        // One platform asked for: the tag holds that platform's manifest itself.
        assert_eq!(
            p.target.digest("mirror/team/multi:1").await,
            Some(idx.children[0].digest.to_string())
        );
        // Several: a new index with exactly those children, all present.
        let m: serde_json::Value =
            serde_json::from_slice(&p.target.manifest("mirror/team/multi:2").await.unwrap())
                .unwrap();
        let archs: Vec<&str> = m["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["platform"]["architecture"].as_str().unwrap())
            .collect();
        assert_eq!(archs, vec!["amd64", "arm64"]);
        for child in &idx.children[..2] {
            assert!(p
                .target
                .digest(&format!("mirror/team/multi@{}", child.digest))
                .await
                .is_some());
        }
        assert_eq!(
            p.target
                .digest(&format!("mirror/team/multi@{}", idx.children[2].digest))
                .await,
            None,
            "a filtered-out platform was copied"
        );
        // A single-platform image is copied as it is.
        assert_eq!(
            p.target.digest("mirror/library/busybox:1").await,
            Some(single.digest.to_string())
        );
    });
    // The filtered results are deterministic: a second run is in sync and writes nothing.
    let before = p.target.storage_snapshot();
    let r = p.sync(images, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        r.stdout.matches("  already in sync  ").count(),
        3,
        "{}",
        r.stdout
    );
    assert_eq!(p.target.storage_snapshot(), before);
    // A changed source still stops the run, through the filter.
    block_on(p.source.push(
        "team/multi:1",
        &fixtures::index("plat-v2", &["linux/amd64", "linux/arm64"]),
    ));
    let r = p.sync(images, &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(p.target.storage_snapshot(), before);
    // A platform the index lacks is a clear failure of that image.
    let r = p.sync(
        "- source: team/multi:2\n  platforms: [windows/amd64]\n",
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout
            .contains("none of the platforms asked for (windows/amd64)"),
        "{}",
        r.stdout
    );
}

#[test]
fn progress_shows_on_a_terminal_only() {
    let p = Pair::new();
    populate(&p);
    let def = p.definition(THREE);
    let host = p.target.host();
    let bin = env!("CARGO_BIN_EXE_image-syncer");
    // `script` gives the command a terminal.
    let mut script = std::process::Command::new("script");
    let _home = clean_env(&mut script);
    let out = script
        .args([
            "-qec",
            &format!("{bin} -i {def} --insecure-registry {host}"),
            "/dev/null",
        ])
        .output()
        .expect("script (util-linux) runs");
    let tty = String::from_utf8_lossy(&out.stdout);
    scan_for_secrets(&["-i", &def, "--insecure-registry", &host], &tty);
    assert!(tty.contains("[3/3 images] 3 to copy"), "{tty}");
    assert!(tty.contains("MiB copied"), "{tty}");
    // Not a terminal: no progress line, only the summary.
    let r = p.sync(THREE, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("3 image(s)"), "{}", r.stdout);
    assert!(!r.all().contains("images]"), "{}", r.all());
}
