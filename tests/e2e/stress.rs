//! Behaviour under stress (issue 11): a registry where one request in five
//! fails, our own tasks racing on shared manifests under CPU load, a
//! registry that throttles everything for a while, a registry refusing our
//! writes as inconsistent, and credentials of a mirror endpoint.

use image_syncer_testkit::faults::{Faults, Hold, Refuse, Throttle};

use crate::faults::{proxied, Proxied};
use crate::plugins::workspace;
use crate::support::*;

/// Source and target registries, each behind a fault proxy, the source
/// holding `images`; the definition syncs each of them (`source: <repo:tag>`),
/// followed by `extra` (top-level YAML).
fn behind(
    images: &[(String, fixtures::TestImage)],
    sf: Faults,
    tf: Faults,
    extra: &str,
) -> Proxied {
    let pushed: Vec<(&str, &fixtures::TestImage)> =
        images.iter().map(|(r, i)| (r.as_str(), i)).collect();
    let entries: String = images
        .iter()
        .map(|(r, _)| format!("- source: \"{r}\"\n"))
        .collect();
    proxied(&pushed, sf, tf, &entries, extra)
}

impl Proxied {
    /// Every image is in the target exactly: tag → source digest, every
    /// child manifest and blob present.
    fn assert_exact(&self, images: &[(String, fixtures::TestImage)]) {
        block_on(async {
            for (r, img) in images {
                let (repo, _) = r.rsplit_once(':').unwrap();
                let repo = format!("mirror/{}", repo.trim_start_matches("docker.io/"));
                assert_eq!(
                    self.target.digest(&format!("mirror/{r}")).await,
                    Some(img.digest.to_string()),
                    "{r}"
                );
                for c in &img.children {
                    assert_eq!(
                        self.target.digest(&format!("{repo}@{}", c.digest)).await,
                        Some(c.digest.to_string()),
                        "{r}: child {}",
                        c.digest
                    );
                }
                for b in img.all_blobs() {
                    assert!(
                        self.target.has_blob(&repo, &b.digest.to_string()).await,
                        "{r}: blob {}",
                        b.digest
                    );
                }
            }
        });
    }
}

/// Eight images: plain and Docker-format ones, two sharing a base layer,
/// and two multi-arch indexes.
fn eight_images(seed: u64) -> Vec<(String, fixtures::TestImage)> {
    let s = |n: &str| format!("stress{seed}-{n}");
    let mut v = vec![
        (
            "library/busybox:1.36".into(),
            fixtures::image(&s("a"), 3, 40_000),
        ),
        (
            "team/app:2".into(),
            fixtures::docker_image(&s("b"), 2, 30_000),
        ),
        ("team/tool:3".into(), fixtures::image(&s("c"), 2, 20_000)),
        (
            "team/multi:1.0".into(),
            fixtures::index(&s("d"), &["linux/amd64", "linux/arm64"]),
        ),
        (
            "team/multi2:1.0".into(),
            fixtures::index(&s("e"), &["linux/amd64", "linux/arm64", "linux/s390x"]),
        ),
        ("team/small:1".into(), fixtures::image(&s("f"), 1, 5_000)),
    ];
    let shared = fixtures::images_sharing_a_layer(&[&s("g"), &s("h")], 30_000);
    v.push(("team/base-one:1".into(), shared[0].clone()));
    v.push(("team/base-two:1".into(), shared[1].clone()));
    v
}

/// One request in five fails: 10% answer 500, 5% 429 with `Retry-After: 1`,
/// 5% drop the connection; at most 50 faults per registry.
fn one_in_five(seed: u64) -> Faults {
    Faults {
        seed,
        server_error: 0.10,
        too_many_requests: 0.05,
        drop_connection: 0.05,
        max_faults: 50,
        ..Default::default()
    }
}

/// With default settings only, every image of a run against registries
/// where one request in five fails ends exact, exit 0.
fn completes_under_one_in_five_faults(seed: u64) {
    let images = eight_images(seed);
    let b = behind(&images, one_in_five(seed), one_in_five(seed + 1000), "");
    let r = run(&["-i", &b.def]);
    assert_eq!(r.code, 0, "seed {seed}: {}", r.all());
    let injected = b.sp.injected.random_faults() + b.tp.injected.random_faults();
    assert!(
        injected >= 20,
        "seed {seed}: too few faults to mean anything: {injected}"
    );
    b.assert_exact(&images);
    assert_eq!(
        r.stdout.matches("  copied  ").count(),
        images.len(),
        "{}",
        r.stdout
    );
}

#[test]
fn one_request_in_five_failing_completes_with_defaults_seed_1() {
    completes_under_one_in_five_faults(1);
}

#[test]
fn one_request_in_five_failing_completes_with_defaults_seed_2() {
    completes_under_one_in_five_faults(2);
}

#[test]
fn one_request_in_five_failing_completes_with_defaults_seed_3() {
    completes_under_one_in_five_faults(3);
}

#[test]
fn one_request_in_five_failing_completes_with_defaults_seed_4() {
    completes_under_one_in_five_faults(4);
}

#[test]
fn one_request_in_five_failing_completes_with_defaults_seed_5() {
    completes_under_one_in_five_faults(5);
}

/// Two busy processes for as long as the value lives (at most 10 minutes).
struct CpuLoad(Vec<std::process::Child>);

impl CpuLoad {
    fn start() -> CpuLoad {
        CpuLoad(
            (0..2)
                .map(|_| {
                    std::process::Command::new("timeout")
                        .args(["600", "sh", "-c", "while :; do :; done"])
                        .spawn()
                        .expect("a busy process starts")
                })
                .collect(),
        )
    }
}

impl Drop for CpuLoad {
    /// SIGTERM to `timeout`, which passes it on to its busy child (a SIGKILL
    /// would leave the child running).
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

/// The quick-start index listed under three tags, plus its two children
/// listed by digest under tags of their own, synced into a fresh registry
/// 30 times while two busy processes load the machine: never a safety
/// stop, every tag holds the source digest, every child is fetchable.
#[test]
fn shared_children_pushed_by_several_tasks_never_cause_a_false_stop() {
    let layout = workspace().join("examples/quickstart/hello");
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("index.json")).expect("the quick-start layout"),
    )
    .unwrap();
    let top = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let (algo, hex) = top.split_once(':').unwrap();
    let top_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs").join(algo).join(hex)).unwrap())
            .unwrap();
    let children: Vec<String> = top_manifest["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(children.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    let _load = CpuLoad::start();
    for round in 0..30 {
        let target = Registry::start();
        let src = format!("oci:{}", layout.display());
        let mut entries = String::new();
        for tag in ["1.0", "2.0", "3.0"] {
            entries.push_str(&format!("- source: \"{src}:1.0\"\n  tag: \"{tag}\"\n"));
        }
        for (i, c) in children.iter().enumerate() {
            entries.push_str(&format!("- source: \"{src}@{c}\"\n  tag: \"child-{i}\"\n"));
        }
        let def = write(
            dir.path(),
            "race.yaml",
            &format!(
                "targetRepoPrefix: \"{t}/race/\"\nregistries:\n  \"{t}\":\n    insecure: true\nimages:\n{entries}",
                t = target.host()
            ),
        );
        let r = run(&["-i", def.to_str().unwrap(), "--jobs", "8"]);
        assert_ne!(r.code, 3, "round {round}: a false safety stop: {}", r.all());
        assert_eq!(r.code, 0, "round {round}: {}", r.all());
        // A healthy registry never refuses our writes: no re-check hid a race.
        assert!(
            !r.stderr.contains("refused a manifest as inconsistent"),
            "round {round}: {}",
            r.stderr
        );
        block_on(async {
            for tag in ["1.0", "2.0", "3.0"] {
                assert_eq!(
                    target.digest(&format!("race/hello:{tag}")).await,
                    Some(top.clone()),
                    "round {round}: tag {tag}"
                );
            }
            for (i, c) in children.iter().enumerate() {
                assert_eq!(
                    target.digest(&format!("race/hello@{c}")).await,
                    Some(c.clone()),
                    "round {round}: child {c}"
                );
                assert_eq!(
                    target.digest(&format!("race/hello:child-{i}")).await,
                    Some(c.clone())
                );
            }
        });
    }
}

/// A child manifest several tasks need is pushed once per repository in a
/// run: the ledger makes the other tasks wait for that push, rather than
/// each pushing its own (which the registry accepts, and a "refused as
/// inconsistent" re-check would hide). One multi-arch index under four
/// tags, in two repositories, `--jobs 8`; the target holds the first child
/// pushes for a moment, so that every task needs the children while the
/// first push of each is still in flight.
#[test]
fn a_shared_child_manifest_is_pushed_once_per_repository() {
    let index = fixtures::index("ledger-once", &["linux/amd64", "linux/arm64"]);
    let repos = ["team/multi", "team/other"];
    let pushed: Vec<(String, fixtures::TestImage)> = repos
        .iter()
        .map(|r| (format!("{r}:1.0"), index.clone()))
        .collect();
    let pushed: Vec<(&str, &fixtures::TestImage)> =
        pushed.iter().map(|(r, i)| (r.as_str(), i)).collect();
    let tags = ["a", "b", "c", "d"];
    let entries: String = repos
        .iter()
        .flat_map(|r| {
            tags.iter()
                .map(move |t| format!("- source: \"{r}:1.0\"\n  tag: \"{t}\"\n"))
        })
        .collect();
    let hold = Faults {
        hold: Some(Hold {
            method: Some("PUT"),
            path: "/manifests/sha256:".into(),
            after: 0,
            times: 2,
            ms: 1_000,
        }),
        ..Default::default()
    };
    let p = proxied(&pushed, Faults::default(), hold, &entries, "");
    let r = run(&["-i", &p.def, "--jobs", "8"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        !r.stderr.contains("refused a manifest as inconsistent"),
        "{}",
        r.stderr
    );
    let log = p.tp.injected.log();
    let puts = |path: &str| log.iter().filter(|(m, p)| m == "PUT" && p == path).count();
    assert_eq!(index.children.len(), 2);
    for repo in repos {
        for child in &index.children {
            let path = format!("/v2/mirror/{repo}/manifests/{}", child.digest);
            assert_eq!(puts(&path), 1, "{path} in {log:?}");
        }
        for tag in tags {
            let path = format!("/v2/mirror/{repo}/manifests/{tag}");
            assert_eq!(puts(&path), 1, "{path} in {log:?}");
            assert_eq!(
                block_on(p.target.digest(&format!("mirror/{repo}:{tag}"))),
                Some(index.digest.to_string())
            );
        }
    }
}

/// A target answering 429 (`Retry-After: 1`) to every request until it has
/// refused 14 (about 6 s, well within each operation's 6 retries): every image completes, and the gate held: after the first
/// burst the registry saw one request per pause, not one per task per
/// retry. The throttle ends on a count and the check is on the gaps between
/// refused requests, so a machine too busy to send for a while cannot make
/// it pass (a silence only widens gaps) or fail (the gate's pause is a
/// lower bound).
#[test]
fn a_throttled_registry_slows_every_task_and_every_image_completes() {
    let images: Vec<(String, fixtures::TestImage)> = (0..6)
        .map(|i| {
            (
                format!("team/img{i}:1"),
                fixtures::image(&format!("throttle-{i}"), 2, 10_000),
            )
        })
        .collect();
    let throttle = Faults {
        throttle: Some(Throttle {
            refusals: 14,
            retry_after: "1".into(),
        }),
        ..Default::default()
    };
    let b = behind(&images, Faults::default(), throttle, "");
    let r = run(&["-i", &b.def, "--jobs", "4", "--output", "json", "--debug"]);
    assert_eq!(r.code, 0, "{}", r.all());
    b.assert_exact(&images);
    let seen = b.tp.injected.throttled();
    let refused = seen.iter().filter(|s| s.refused).count();
    assert_eq!(refused, 14, "the throttle never ended");
    // The first burst is up to --jobs operations, each of which may start
    // with the client's `/v2/` probe: 8 requests. After it, four tasks
    // retrying each on its own would come within moments of each other,
    // four per second; held at the gate, one comes per pause of 1 s. At
    // most one close pair is allowed (a probe and its operation).
    let at: Vec<std::time::Duration> = seen
        .iter()
        .filter(|s| s.refused)
        .map(|s| s.at.duration_since(seen[0].at))
        .collect();
    let close = at[8..]
        .windows(2)
        .filter(|w| w[1] - w[0] < std::time::Duration::from_millis(500))
        .count();
    let log = b.tp.injected.log();
    assert!(
        close <= 1,
        "{close} refused requests came within 0.5 s of the one before, after the first burst, at {at:?}: {log:?}\n{}",
        r.stderr
    );
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let figures = &report["registries"][b.tp.host()];
    // Every 429 reached an operation, except the probes that opened some.
    let pushbacks = figures["pushbacks"].as_u64().unwrap();
    assert!(
        pushbacks + 4 >= refused as u64 && pushbacks <= refused as u64,
        "{pushbacks} pushbacks, {refused} refused: {figures}"
    );
    assert_eq!(figures["lowest_limit"].as_u64(), Some(1), "{figures}");
    assert!(
        figures["throttled_seconds"].as_f64().unwrap() >= 1.0,
        "{figures}"
    );
    assert!(figures["retries"].as_u64().unwrap() >= 1, "{figures}");
    assert_eq!(
        report["registries"]["docker.io"]["pushbacks"].as_u64(),
        Some(0)
    );
    // --debug shows the gate at work.
    assert!(
        r.stderr.contains("concurrency limit changed") && r.stderr.contains("from=4 to=2"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("registry asked to slow down: every request to it waits"),
        "{}",
        r.stderr
    );
}

/// A source that says how many requests it has left (Docker Hub's
/// `ratelimit-remaining`) is held to at most that many at once, and the
/// report says what it said.
#[test]
fn ratelimit_remaining_from_a_registry_reaches_the_flow_control() {
    let images: Vec<(String, fixtures::TestImage)> = (0..3)
        .map(|i| {
            (
                format!("team/rl{i}:1"),
                fixtures::image(&format!("ratelimit-{i}"), 1, 1000),
            )
        })
        .collect();
    let hub = Faults {
        ratelimit_remaining: Some("1;w=21600".into()),
        ..Default::default()
    };
    let b = behind(&images, hub, Faults::default(), "");
    let r = run(&["-i", &b.def, "--output", "json", "--debug"]);
    assert_eq!(r.code, 0, "{}", r.all());
    b.assert_exact(&images);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let hub = &report["registries"]["docker.io"];
    assert_eq!(hub["ratelimit_remaining"].as_u64(), Some(1), "{hub}");
    assert_eq!(hub["lowest_limit"].as_u64(), Some(1), "{hub}");
    assert!(
        r.stderr
            .contains("registry reports few requests left; fewer at once"),
        "{}",
        r.stderr
    );
    // The target said nothing of the kind.
    assert!(report["registries"][b.tp.host()]
        .get("ratelimit_remaining")
        .is_none());
}

/// A registry refusing our manifest or blob put as inconsistent (as the
/// distribution registry does when an index arrives before a child it names)
/// is checked again and retried: never a safety stop.
#[test]
fn a_registry_refusing_our_writes_as_inconsistent_is_retried_not_a_stop() {
    let images = vec![(
        "team/multi:1.0".to_string(),
        fixtures::index("refused", &["linux/amd64", "linux/arm64"]),
    )];
    for (path, code) in [
        ("/manifests/", "MANIFEST_BLOB_UNKNOWN"),
        ("/manifests/", "DIGEST_INVALID"),
        ("/blobs/uploads/", "DIGEST_INVALID"),
        ("/blobs/uploads/", "BLOB_UNKNOWN"),
    ] {
        let refuse = Faults {
            refuse: Some(Refuse {
                method: Some("PUT"),
                path: path.into(),
                times: 2,
                status: 400,
                code: code.into(),
            }),
            ..Default::default()
        };
        let b = behind(&images, Faults::default(), refuse, "");
        let r = run(&["-i", &b.def]);
        assert_eq!(r.code, 0, "{path} {code}: {}", r.all());
        assert!(
            b.tp.injected
                .refused
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 2,
            "{path} {code}: nothing was refused"
        );
        b.assert_exact(&images);
        if path == "/manifests/" {
            assert!(
                r.stderr.contains(
                    "the registry refused a manifest as inconsistent; checking what it references"
                ),
                "{}",
                r.stderr
            );
        }
    }
}

/// A refusal that persists fails the image with the registry's words (exit
/// 1), and the target tag is not written.
#[test]
fn a_persistent_refusal_of_our_write_fails_the_image_not_the_run() {
    let images = vec![
        (
            "team/multi:1.0".to_string(),
            fixtures::index("refused-always", &["linux/amd64"]),
        ),
        (
            "team/other:1".to_string(),
            fixtures::image("refused-other", 1, 1000),
        ),
    ];
    let refuse = Faults {
        refuse: Some(Refuse {
            method: Some("PUT"),
            path: "/mirror/team/multi/manifests/".into(),
            times: 1000,
            status: 400,
            code: "MANIFEST_BLOB_UNKNOWN".into(),
        }),
        ..Default::default()
    };
    let b = behind(
        &images,
        Faults::default(),
        refuse,
        "retry:\n  retries: 2\n  baseDelayMs: 10\n",
    );
    let r = run(&["-i", &b.def]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(!r.stdout.contains("STOPPED"), "{}", r.stdout);
    assert!(r.stdout.contains("MANIFEST_BLOB_UNKNOWN"), "{}", r.stdout);
    assert!(r.stdout.contains("(after 2 retries)"), "{}", r.stdout);
    assert_eq!(block_on(b.target.digest("mirror/team/multi:1.0")), None);
    assert_eq!(
        block_on(b.target.digest("mirror/team/other:1")),
        Some(images[1].1.digest.to_string())
    );
}

/// A private source reached through a mirror endpoint: credentials stored
/// under the endpoint's host are used, then those under the registry's own
/// name; with both, the endpoint's win.
#[test]
fn credentials_of_a_mirror_endpoint_come_first() {
    use base64::Engine as _;
    never_shown("mirr0r-pass");
    let source = Registry::start_with(RegistryOptions {
        htpasswd: Some(("puller".into(), "mirr0r-pass".into())),
        ..Default::default()
    });
    let image = fixtures::image("mirror-creds", 1, 500);
    block_on(source.push("team/secret:1", &image));
    let auth = |password: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("puller:{password}"))
    };
    // (name, docker config `auths` entries, expected exit code)
    type Case<'a> = (&'a str, Vec<(String, String)>, i32);
    let cases: [Case; 4] = [
        ("none", vec![], 1),
        ("endpoint", vec![(source.host(), auth("mirr0r-pass"))], 0),
        (
            "logical",
            vec![("https://index.docker.io/v1/".into(), auth("mirr0r-pass"))],
            0,
        ),
        (
            "both",
            vec![
                (source.host(), auth("mirr0r-pass")),
                ("https://index.docker.io/v1/".into(), auth("wrong-pass")),
            ],
            0,
        ),
    ];
    for (name, auths, code) in cases {
        let target = Registry::start();
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<String> = auths
            .iter()
            .map(|(h, a)| format!("\"{h}\": {{\"auth\": \"{a}\"}}"))
            .collect();
        write(
            dir.path(),
            "config.json",
            &format!("{{\"auths\": {{{}}}}}", entries.join(", ")),
        );
        let def = write(
            dir.path(),
            "images.yaml",
            &format!(
                "{}images:\n- source: team/secret:1\n",
                header(&source, &target)
            ),
        );
        let r = run_with(
            &[
                "-i",
                def.to_str().unwrap(),
                "--insecure-registry",
                &target.host(),
            ],
            &[("DOCKER_CONFIG", dir.path().to_str().unwrap())],
        );
        assert_eq!(r.code, code, "{name}: {}", r.all());
        let copied = block_on(target.digest("mirror/team/secret:1"));
        assert_eq!(copied.is_some(), code == 0, "{name}: copied {copied:?}");
        assert!(
            !r.all().contains("mirr0r-pass"),
            "{name}: a password reached the output"
        );
    }
}

/// A safety stop while several images are being written: the target tag of
/// one is moved by someone else while another image's upload is in flight.
/// The upload in flight completes; no write starts after the stop; images
/// not yet started are `not run`.
///
/// Every step waits for an event, never for a time: the target holds A's
/// first blob check and B's one upload until the test releases them. B's
/// other blobs are in the target already, so that the held upload is B's
/// only write until its manifest, which waits for it: when A stops the run,
/// no write of B's can be on its way. The test releases B's upload only
/// once the binary has said the stop flag is set.
#[test]
fn a_safety_stop_mid_write_halts_every_later_write_across_images() {
    let images: Vec<(String, fixtures::TestImage)> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| {
            (
                format!("team/{n}:1"),
                fixtures::image(&format!("midwrite-{n}"), 3, 5_000),
            )
        })
        .collect();
    // Bounds only: each hold is released by the test.
    let holds = Faults {
        holds: vec![
            // A's first blob check, while the test moves A's tag.
            Hold {
                method: Some("HEAD"),
                path: "/mirror/team/a/blobs/".into(),
                after: 0,
                times: 1,
                ms: 120_000,
            },
            // B's upload: still in flight when A stops the run.
            Hold {
                method: Some("PUT"),
                path: "/mirror/team/b/blobs/uploads/".into(),
                after: 0,
                times: 1,
                ms: 120_000,
            },
        ],
        ..Default::default()
    };
    let b = behind(&images, Faults::default(), holds, "");
    // All of B's blobs but its last layer are in the target already.
    let b_blobs = images[1].1.all_blobs();
    let (b_uploaded, b_present) = b_blobs.split_last().unwrap();
    block_on(async {
        for blob in b_present {
            b.target.push_blob("mirror/team/b", &blob.data).await;
        }
    });
    let squatter = fixtures::image("midwrite-squatter", 1, 100);
    let mut child = spawn(&["-i", &b.def, "--jobs", "2"]);
    let stderr = child.stderr_lines();
    // Bounded: 60 s.
    let mut arrived = false;
    for _ in 0..3000 {
        if b.tp.injected.held_by(0) >= 1 && b.tp.injected.held_by(1) >= 1 {
            arrived = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if !arrived {
        let _ = child.child.kill();
        panic!("A's first blob check and B's upload were not both held");
    }
    // Someone else writes A's target tag, straight to the registry; then A
    // goes on, and finds it when it looks at its tag again.
    block_on(b.target.push("mirror/team/a:1", &squatter));
    b.tp.injected.release(0);
    let mut said = String::new();
    for line in stderr.iter() {
        said.push_str(&line);
        said.push('\n');
        if line.contains("safety stop: no new write starts") {
            break;
        }
    }
    assert!(
        said.contains("safety stop: no new write starts"),
        "the binary ended without saying it stopped:\n{said}"
    );
    b.tp.injected.release(1);
    drop(stderr);
    let (_, out) = child.wait();
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert_eq!(out.code, 3, "{stdout}{stderr}");
    assert!(
        stdout.contains("STOPPED") && stdout.contains("changed during the run"),
        "{stdout}"
    );
    // A's tag is the other writer's, not overwritten.
    assert_eq!(
        block_on(b.target.digest("mirror/team/a:1")),
        Some(squatter.digest.to_string())
    );
    // The run stopped at A's last look at its tag (its second manifest HEAD):
    // after it, no upload was opened, no bytes sent, no manifest put,
    // anywhere (B's held upload arrived before).
    let log = b.tp.injected.log();
    let stop = log
        .iter()
        .enumerate()
        .filter(|(_, (m, p))| m == "HEAD" && p.ends_with("/mirror/team/a/manifests/1"))
        .map(|(i, _)| i)
        .nth(1)
        .unwrap_or_else(|| panic!("A never looked at its tag again: {log:?}"));
    for (m, p) in &log[stop + 1..] {
        assert!(
            m != "POST" && m != "PUT" && m != "PATCH",
            "a write started after the stop: {m} {p}\n{log:?}"
        );
    }
    // B's upload that was in flight at the stop completed: its blob is in.
    let in_flight = log
        .iter()
        .position(|(m, p)| m == "PUT" && p.contains("/mirror/team/b/blobs/uploads/"))
        .expect("B's held upload");
    assert!(
        in_flight < stop,
        "B's upload was not in flight before the stop"
    );
    assert!(
        block_on(
            b.target
                .has_blob("mirror/team/b", &b_uploaded.digest.to_string())
        ),
        "B's in-flight upload did not complete"
    );
    assert_eq!(block_on(b.target.digest("mirror/team/b:1")), None);
    // C and D never started: not run, nothing of theirs in the target.
    for n in ["c", "d"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("not run") && l.contains(&format!("team/{n}:1"))),
            "{stdout}"
        );
        assert!(
            !log.iter()
                .any(|(_, p)| p.contains(&format!("/mirror/team/{n}/blobs/"))),
            "{n} touched the target: {log:?}"
        );
    }
}

/// A token-protected source (as Docker Hub is) whose first `/v2/` probe
/// fails with a 500: the failure says nothing about authentication, so the
/// probe is asked again and the image is copied (it was taken for "no
/// authentication needed", and every request then went without a token).
#[test]
fn a_failed_v2_probe_is_asked_again_not_taken_for_an_open_registry() {
    let image = fixtures::image("probe-500", 1, 2_000);
    let source_faults = Faults {
        token_server: Some(image_syncer_testkit::faults::ProxyTokenRealm {
            token: "t0ken-for-anyone".into(),
            busy_first: 0,
        }),
        refuse: Some(Refuse {
            method: Some("GET"),
            path: "/v2/".into(),
            times: 1,
            status: 500,
            code: "UNKNOWN".into(),
        }),
        ..Default::default()
    };
    let p = proxied(
        &[("team/app:1", &image)],
        source_faults,
        Faults::default(),
        "- source: team/app:1\n",
        "",
    );
    let r = run(&["-i", &p.def, "--debug"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let log = p.sp.injected.log();
    assert_eq!(
        log.first().map(|(m, p)| (m.as_str(), p.as_str())),
        Some(("GET", "/v2/")),
        "{log:?}"
    );
    assert!(
        p.sp.injected
            .token_requests
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1,
        "no token was asked for: {log:?}"
    );
    assert_eq!(
        block_on(p.target.digest("mirror/team/app:1")),
        Some(image.digest.to_string())
    );
}
