//! Syncs through a fault-injecting proxy (500s, 429s, dropped connections,
//! truncated bodies at set rates, deterministically seeded) in front of real
//! registries.

use image_syncer_testkit::faults::{FaultProxy, Faults};

use crate::support::*;

fn faulty(seed: u64) -> Faults {
    Faults {
        seed,
        server_error: 0.05,
        too_many_requests: 0.05,
        drop_connection: 0.05,
        truncate_body: 0.05,
        always_fail: None,
    }
}

/// Source and target behind proxies; the definition reaches both through them.
fn definition(
    dir: &std::path::Path,
    source: &FaultProxy,
    target: &FaultProxy,
    images: &str,
) -> String {
    write(
        dir,
        "images.yaml",
        &format!(
            "targetRepoPrefix: \"{t}/mirror/\"\nregistries:\n  docker.io:\n    endpoint: \"{s}\"\n    insecure: true\n  \"{t}\":\n    insecure: true\nimages:\n{images}",
            s = source.host(),
            t = target.host()
        ),
    )
    .display()
    .to_string()
}

#[test]
fn syncs_under_injected_faults_end_exact_and_write_nothing_else() {
    let source = Registry::start();
    let target = Registry::start();
    let images = [
        (
            "library/busybox:1.36",
            fixtures::image("faults-a", 3, 150_000),
        ),
        ("team/app:2", fixtures::docker_image("faults-b", 2, 90_000)),
        (
            "team/multi:1.0",
            fixtures::index("faults-c", &["linux/amd64", "linux/arm64"]),
        ),
    ];
    block_on(async {
        for (r, img) in &images {
            source.push(r, img).await;
        }
    });
    let sp = FaultProxy::start(&source.host(), faulty(7));
    let tp = FaultProxy::start(&target.host(), faulty(11));
    let dir = tempfile::tempdir().unwrap();
    let def = definition(
        dir.path(),
        &sp,
        &tp,
        "- source: busybox:1.36\n- source: team/app:2\n- source: team/multi:1.0\n",
    );
    let r = run(&["-i", &def, "--retries", "10"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let injected = sp.injected.random_faults() + tp.injected.random_faults();
    assert!(
        injected >= 5,
        "too few faults were injected to mean anything: {injected}"
    );
    // Every target digest equals its source; no tag exists but the synced ones.
    block_on(async {
        for (r, img) in &images {
            let (repo, tag) = r.rsplit_once(':').unwrap();
            assert_eq!(
                target.digest(&format!("mirror/{repo}:{tag}")).await,
                Some(img.digest.to_string()),
                "{r}"
            );
            assert_eq!(
                target.tags(&format!("mirror/{repo}")).await,
                vec![tag.to_string()],
                "{r}"
            );
            for b in img.all_blobs() {
                assert!(
                    target
                        .has_blob(&format!("mirror/{repo}"), &b.digest.to_string())
                        .await
                );
            }
        }
    });
    // A re-run under faults finds everything in sync.
    let r = run(&["-i", &def, "--retries", "10"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        r.stdout.matches("  already in sync  ").count(),
        3,
        "{}",
        r.stdout
    );
}

#[test]
fn a_fault_beyond_the_retry_budget_fails_that_image_only() {
    let source = Registry::start();
    let target = Registry::start();
    let good = fixtures::image("budget-good", 2, 50_000);
    let broken = fixtures::image("budget-broken", 2, 50_000);
    block_on(async {
        source.push("team/good:1", &good).await;
        source.push("team/broken:1", &broken).await;
    });
    let sp = FaultProxy::start(&source.host(), Faults::default());
    let tp = FaultProxy::start(
        &target.host(),
        Faults {
            always_fail: Some("/mirror/team/broken/".into()),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let def = definition(
        dir.path(),
        &sp,
        &tp,
        "- source: team/broken:1\n- source: team/good:1\n",
    );
    let r = run(&["-i", &def, "--retries", "2"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("(after 2 retries)"), "{}", r.stdout);
    block_on(async {
        assert_eq!(
            target.digest("mirror/team/good:1").await,
            Some(good.digest.to_string())
        );
        assert_eq!(target.digest("mirror/team/broken:1").await, None);
    });
}
