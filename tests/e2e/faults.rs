//! Syncs through a fault-injecting proxy (500s, 429s, dropped connections,
//! truncated bodies at set rates, deterministically seeded) in front of real
//! registries.

use std::time::Duration;

use image_syncer_testkit::faults::{FaultProxy, Faults, Hold, ProxyTokenRealm, RateLimit};

use crate::support::*;

fn faulty(seed: u64) -> Faults {
    Faults {
        seed,
        server_error: 0.05,
        too_many_requests: 0.05,
        drop_connection: 0.05,
        truncate_body: 0.05,
        ..Default::default()
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

/// Source and target registries, each behind a fault proxy: the source holds
/// `images`; `def` syncs `entries` (followed by `extra`, top-level YAML)
/// through the proxies.
pub struct Proxied {
    /// The source registry itself (the proxy is in front of it).
    pub source: Registry,
    pub target: Registry,
    pub sp: FaultProxy,
    pub tp: FaultProxy,
    pub def: String,
    _dir: tempfile::TempDir,
}

pub fn proxied(
    images: &[(&str, &fixtures::TestImage)],
    source_faults: Faults,
    target_faults: Faults,
    entries: &str,
    extra: &str,
) -> Proxied {
    let source = Registry::start();
    let target = Registry::start();
    block_on(async {
        for (r, img) in images {
            source.push(r, img).await;
        }
    });
    let sp = FaultProxy::start(&source.host(), source_faults);
    let tp = FaultProxy::start(&target.host(), target_faults);
    let dir = tempfile::tempdir().unwrap();
    let def = definition(dir.path(), &sp, &tp, &format!("{entries}{extra}"));
    Proxied {
        source,
        target,
        sp,
        tp,
        def,
        _dir: dir,
    }
}

impl Proxied {
    /// The digest the target holds for `mirror/<reference>`.
    pub fn synced(&self, reference: &str) -> Option<String> {
        block_on(self.target.digest(&format!("mirror/{reference}")))
    }
}

/// Faults that refuse the first `times` requests matching `method` and `path`
/// with `status` and `Retry-After: retry_after`.
fn rate_limited(
    method: Option<&'static str>,
    path: &str,
    times: u32,
    status: u16,
    retry_after: &str,
) -> Faults {
    Faults {
        rate_limit: Some(RateLimit {
            method,
            path: path.into(),
            times,
            status,
            retry_after: retry_after.into(),
        }),
        ..Default::default()
    }
}

/// Starts a sync of `def` in the background, its output captured (and
/// scanned for secrets when it is waited for).
fn spawn_sync(def: &str) -> Background {
    spawn(&["-i", def, "--jobs", "1"])
}

/// Sends `signal` (`-INT`, `-TERM`, `-9`) to `child`.
pub fn send(child: &Background, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &child.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn syncs_under_injected_faults_end_exact_and_write_nothing_else() {
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
    let pushed: Vec<(&str, &fixtures::TestImage)> = images.iter().map(|(r, i)| (*r, i)).collect();
    let p = proxied(
        &pushed,
        faulty(7),
        faulty(11),
        "- source: busybox:1.36\n- source: team/app:2\n- source: team/multi:1.0\n",
        "",
    );
    let (target, def, sp, tp) = (&p.target, &p.def, &p.sp, &p.tp);
    let r = run(&["-i", def, "--retries", "10"]);
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
    let r = run(&["-i", def, "--retries", "10"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        r.stdout.matches("  already in sync  ").count(),
        3,
        "{}",
        r.stdout
    );
}

#[test]
fn stalled_answers_time_out_and_are_retried() {
    let image = fixtures::image("stalls", 3, 120_000);
    // A fifth of the answers hold their body back for 5 s; the registries
    // may stay silent for 1 s. Seeds 4 and 6 stall answers whose body is
    // read (seeds 3 and 5 stall only the `/v2/` probe's, which is not read,
    // since faults are keyed by request identity, not by arrival order).
    let stalls = |seed| Faults {
        seed,
        stall: 0.2,
        stall_ms: 5_000,
        ..Default::default()
    };
    let p = proxied(
        &[("team/app:1", &image)],
        stalls(4),
        stalls(6),
        "- source: team/app:1\n",
        "pipeline:\n  source: { plugin: oci, config: { readTimeoutSeconds: 1 } }\n  sink: { plugin: oci, config: { readTimeoutSeconds: 1 } }\n",
    );
    let r = run(&["-i", &p.def, "--retries", "10", "--debug"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let stalled =
        p.sp.injected
            .stalled
            .load(std::sync::atomic::Ordering::SeqCst)
            + p.tp
                .injected
                .stalled
                .load(std::sync::atomic::Ordering::SeqCst);
    assert!(stalled >= 1, "no answer was stalled");
    assert!(r.stderr.contains("retrying"), "{}", r.stderr);
    assert!(r.stderr.contains("(readTimeoutSeconds)"), "{}", r.stderr);
    assert_eq!(p.synced("team/app:1"), Some(image.digest.to_string()));
    block_on(async {
        for b in image.all_blobs() {
            assert!(
                p.target
                    .has_blob("mirror/team/app", &b.digest.to_string())
                    .await
            );
        }
    });
}

#[test]
fn a_slow_upload_longer_than_the_idle_limit_is_not_cut() {
    // One 9 MB layer, read by the target at 1.5 MB/s (about 6 s), with a
    // 5 s limit on silence: the upload makes progress throughout and must
    // go through in one try.
    let image = fixtures::image("slow-upload", 1, 9_000_000);
    let p = proxied(
        &[("team/app:1", &image)],
        Faults::default(),
        Faults {
            upload_bytes_per_sec: 1_500_000,
            ..Default::default()
        },
        "- source: team/app:1\n",
        "pipeline:\n  sink: { plugin: oci, config: { readTimeoutSeconds: 5 } }\n",
    );
    let started = std::time::Instant::now();
    let r = run(&["-i", &p.def, "--debug"]);
    assert_eq!(r.code, 0, "{}", r.all());
    // One upload per blob (config, layer), none tried again (other requests
    // may be, on a busy machine).
    assert_eq!(uploads(&p), image.all_blobs().len(), "{}", r.stderr);
    assert!(
        !r.stderr
            .lines()
            .any(|l| l.contains("retrying") && l.contains("blob upload")),
        "{}",
        r.stderr
    );
    // The throttle did hold the upload longer than the limit.
    assert!(started.elapsed() > Duration::from_secs(5));
    assert_eq!(p.synced("team/app:1"), Some(image.digest.to_string()));
}

#[test]
fn an_upload_left_unanswered_times_out_and_is_retried() {
    // The target takes the first blob upload's last request whole and then
    // says nothing for 30 s; with a 1 s limit the upload is tried again.
    let image = fixtures::image("unanswered", 1, 50_000);
    let p = proxied(
        &[("team/app:1", &image)],
        Faults::default(),
        Faults {
            hold: Some(Hold {
                method: Some("PUT"),
                path: "/blobs/uploads/".into(),
                after: 0,
                times: 1,
                ms: 30_000,
            }),
            ..Default::default()
        },
        "- source: team/app:1\n",
        "pipeline:\n  sink: { plugin: oci, config: { readTimeoutSeconds: 1 } }\n",
    );
    let r = run(&["-i", &p.def, "--debug"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr
            .contains("upload: no answer from the registry 1 s after the last byte"),
        "{}",
        r.stderr
    );
    assert!(p.tp.injected.held.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(p.synced("team/app:1"), Some(image.digest.to_string()));
}

#[test]
fn a_busy_token_server_is_retried_not_taken_as_a_refusal() {
    // The source wants a bearer token from its realm (as Docker Hub does);
    // the realm answers its first two requests 503 with `Retry-After: 1`.
    let image = fixtures::image("token-busy", 1, 20_000);
    let p = proxied(
        &[("team/app:1", &image)],
        Faults {
            token_server: Some(ProxyTokenRealm {
                token: "t0ken-for-anyone".into(),
                busy_first: 2,
            }),
            ..Default::default()
        },
        Faults::default(),
        "- source: team/app:1\n",
        "",
    );
    let r = run(&["-i", &p.def, "--debug"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let retried = r
        .stderr
        .lines()
        .find(|l| l.contains("retrying") && l.contains("/token"))
        .unwrap_or_else(|| panic!("no retry of the token request: {}", r.stderr));
    assert!(retried.contains("code: 503"), "{retried}");
    assert!(retried.contains("retry_after_ms=1000"), "{retried}");
    assert!(
        p.sp.injected
            .token_requests
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 3
    );
    assert_eq!(p.synced("team/app:1"), Some(image.digest.to_string()));
}

#[test]
fn the_proxy_named_by_http_proxy_is_used_and_no_proxy_is_honoured() {
    // The source is named by a host that does not resolve; only the HTTP
    // proxy from the environment (a proxy in front of the real source) can
    // reach it. The target is reached directly: NO_PROXY names it.
    let source = Registry::start();
    let target = Registry::start();
    let image = fixtures::image("via-proxy", 1, 20_000);
    block_on(source.push("team/app:1", &image));
    let proxy = FaultProxy::start(&source.host(), Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let def = write(
        dir.path(),
        "images.yaml",
        &format!(
            "targetRepoPrefix: \"{t}/mirror/\"\nregistries:\n  \"registry.invalid:5000\":\n    insecure: true\n  \"{t}\":\n    insecure: true\nimages:\n- source: registry.invalid:5000/team/app:1\n",
            t = target.host()
        ),
    );
    let proxy_url = format!("http://{}", proxy.host());
    let r = run_with(
        &["-i", def.to_str().unwrap()],
        &[("HTTP_PROXY", &proxy_url), ("NO_PROXY", "127.0.0.1")],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        proxy
            .injected
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );
    assert_eq!(
        block_on(target.digest("mirror/registry.invalid_5000/team/app:1")),
        Some(image.digest.to_string())
    );
    // Without the proxy the source cannot be reached at all.
    let r = run(&["-i", def.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.all());
}

#[test]
fn a_fault_beyond_the_retry_budget_fails_that_image_only() {
    let good = fixtures::image("budget-good", 2, 50_000);
    let broken = fixtures::image("budget-broken", 2, 50_000);
    let p = proxied(
        &[("team/good:1", &good), ("team/broken:1", &broken)],
        Faults::default(),
        Faults {
            always_fail: Some("/mirror/team/broken/".into()),
            ..Default::default()
        },
        "- source: team/broken:1\n- source: team/good:1\n",
        // Limits from the definition's `retry:` section.
        "retry: { retries: 2, baseDelayMs: 10, maxDelayMs: 20, budgetSeconds: 30 }\n",
    );
    let r = run(&["-i", &p.def]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("(after 2 retries)"), "{}", r.stdout);
    assert_eq!(p.synced("team/good:1"), Some(good.digest.to_string()));
    assert_eq!(p.synced("team/broken:1"), None);
}

/// How long after each refused request the next matching one came.
fn waits_after_refusals(p: &FaultProxy) -> Vec<Duration> {
    let seen = p.injected.rate_limited();
    seen.windows(2)
        .filter(|w| w[0].refused)
        .map(|w| w[1].at - w[0].at)
        .collect()
}

#[test]
fn a_retry_after_on_429_or_503_is_waited_out() {
    let image = fixtures::image("retry-after", 2, 50_000);
    // The source's first manifest request (the digest HEAD) gets a 429 asking
    // for 2 s; the target's tag PUT a 503 asking for 1 s. The backoff alone
    // would retry after 100-200 ms.
    let p = proxied(
        &[("team/app:1", &image)],
        rate_limited(None, "/team/app/manifests/", 1, 429, "2"),
        rate_limited(Some("PUT"), "/mirror/team/app/manifests/1", 1, 503, "1"),
        "- source: team/app:1\n",
        "",
    );
    let r = run(&["-i", &p.def, "--debug"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("retry_after_ms=2000"), "{}", r.stderr);
    assert!(r.stderr.contains("retry_after_ms=1000"), "{}", r.stderr);
    for (proxy, asked) in [(&p.sp, 2), (&p.tp, 1)] {
        let waits = waits_after_refusals(proxy);
        assert_eq!(waits.len(), 1, "{:?}", proxy.injected.rate_limited());
        assert!(waits[0] >= Duration::from_secs(asked), "{waits:?}");
    }
    assert_eq!(p.synced("team/app:1"), Some(image.digest.to_string()));
}

#[test]
fn a_retry_after_past_the_retry_budget_fails_that_image_at_once() {
    let good = fixtures::image("patient-good", 1, 20_000);
    let limited = fixtures::image("patient-limited", 1, 20_000);
    let p = proxied(
        &[("team/good:1", &good), ("team/limited:1", &limited)],
        rate_limited(None, "/team/limited/", 1000, 429, "3600"),
        Faults::default(),
        "- source: team/limited:1\n- source: team/good:1\n",
        "",
    );
    let r = run(&["-i", &p.def]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout.contains(
            "(the registry asks to wait 3600 s before trying again, past the retry budget of 120 s)"
        ),
        "{}",
        r.stdout
    );
    // Asked once, not retried early, not waited out.
    assert_eq!(p.sp.injected.rate_limited().len(), 1);
    assert_eq!(p.synced("team/good:1"), Some(good.digest.to_string()));
    assert_eq!(p.synced("team/limited:1"), None);
}

#[test]
fn sigint_during_a_retry_after_wait_ends_the_wait() {
    let image = fixtures::image("patient-sigint", 1, 20_000);
    let p = proxied(
        &[("team/app:1", &image)],
        rate_limited(None, "/team/app/manifests/", 1, 429, "60"),
        Faults::default(),
        "- source: team/app:1\n",
        "",
    );
    let child = spawn_sync(&p.def);
    // Once the 429 is answered, the run waits 60 s before it asks again;
    // the signal (heard from the start of the run) ends that wait.
    wait_until("the 429", || !p.sp.injected.rate_limited().is_empty());
    assert_eq!(p.sp.injected.rate_limited().len(), 1);
    let signalled = std::time::Instant::now();
    send(&child, "-INT");
    let (status, out) = child.wait();
    let stdout = out.stdout;
    // Ended by the signal, not by the 60 s the registry asked for.
    assert!(signalled.elapsed() < Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("Interrupted"), "{stdout}");
    assert!(
        stdout.contains("(not retried: the run was interrupted)"),
        "{stdout}"
    );
    assert_eq!(p.sp.injected.rate_limited().len(), 1, "retried after all");
    assert_eq!(p.synced("team/app:1"), None);
}

/// A sync that is interrupted mid-copy: ten 400 kB layers copied one at a
/// time; the target holds the second blob upload until the test releases
/// it, so the signal lands mid-copy however slow the machine is.
pub struct Slow {
    pub p: Proxied,
    pub image: fixtures::TestImage,
}

pub fn slow() -> Slow {
    let image = fixtures::image("interrupt", 10, 400_000);
    let p = proxied(
        &[("library/busybox:1.36", &image)],
        Faults::default(),
        Faults {
            // A bound only: the test releases it.
            hold: Some(Hold {
                method: Some("PUT"),
                path: "/blobs/uploads/".into(),
                after: 1,
                times: 1,
                ms: 120_000,
            }),
            ..Default::default()
        },
        "- source: busybox:1.36\n",
        "",
    );
    Slow { p, image }
}

/// Waits (bounded: 60 s) until `ready` holds, polling every 20 ms.
pub fn wait_until(what: &str, ready: impl Fn() -> bool) {
    for _ in 0..3000 {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("gave up waiting (60 s) until {what}");
}

/// Blob uploads the target proxy has seen (their final PUT).
pub fn uploads(p: &Proxied) -> usize {
    p.tp.injected
        .log()
        .iter()
        .filter(|(m, path)| m == "PUT" && path.contains("/blobs/uploads/"))
        .count()
}

/// Runs the slow sync and sends `signal` mid-copy ([`interrupt_mid_copy`]).
fn interrupted(s: &Slow, signal: &str) -> (std::process::ExitStatus, Run) {
    let mut child = spawn_sync(&s.p.def);
    interrupt_mid_copy(s, &mut child, signal);
    child.wait()
}

/// Sends `signal` to `child` (a run of the slow sync) while the second blob
/// upload is held by the target (mid-copy: one blob in, eight more to
/// come); once the binary acknowledges the signal, the held upload is let
/// go, to finish as writes in flight do.
pub fn interrupt_mid_copy(s: &Slow, child: &mut Background, signal: &str) {
    let stderr = child.stderr_lines();
    wait_until("the second blob upload is held", || {
        s.p.tp
            .injected
            .held
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    });
    assert_eq!(uploads(&s.p), 2, "not mid-copy");
    send(child, signal);
    let acknowledged = stderr
        .iter()
        .any(|line| line.contains("interrupted: no new work starts"));
    assert!(
        acknowledged,
        "the binary ended without acknowledging the signal"
    );
    s.p.tp.injected.release_hold();
}

/// Whether the tag, if present, points at complete content.
pub fn tag_is_sound(s: &Slow) -> bool {
    block_on(async {
        match s.p.target.digest("mirror/library/busybox:1.36").await {
            None => true,
            Some(d) => {
                let mut ok = d == s.image.digest.to_string();
                for b in s.image.all_blobs() {
                    ok &=
                        s.p.target
                            .has_blob("mirror/library/busybox", &b.digest.to_string())
                            .await;
                }
                ok
            }
        }
    })
}

/// A re-run after an interruption copies the image exactly.
pub fn rerun_completes(s: &Slow) {
    let r = run(&["-i", &s.p.def]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(tag_is_sound(s));
    assert_eq!(
        block_on(s.p.target.digest("mirror/library/busybox:1.36")),
        Some(s.image.digest.to_string())
    );
}

/// One signal mid-copy: the run stops cleanly (exit 1, "Interrupted", no tag
/// written), and a re-run completes the image exactly.
fn a_signal_mid_copy_stops_cleanly_and_a_rerun_completes(signal: &str) {
    let s = slow();
    let (status, out) = interrupted(&s, signal);
    let stdout = &out.stdout;
    assert_eq!(status.code(), Some(1), "{stdout}{}", out.stderr);
    assert!(stdout.contains("Interrupted"), "{stdout}");
    assert!(tag_is_sound(&s));
    assert_eq!(
        block_on(s.p.target.digest("mirror/library/busybox:1.36")),
        None,
        "interrupted mid-copy, the tag must not be written"
    );
    rerun_completes(&s);
}

#[test]
fn sigint_mid_copy_stops_cleanly_and_a_rerun_completes() {
    a_signal_mid_copy_stops_cleanly_and_a_rerun_completes("-INT");
}

#[test]
fn sigterm_mid_copy_stops_cleanly_and_a_rerun_completes() {
    a_signal_mid_copy_stops_cleanly_and_a_rerun_completes("-TERM");
}

#[test]
fn a_second_signal_exits_at_once() {
    // The source holds every request (a bound only: never released): both
    // signals land while the first one is still in flight.
    let image = fixtures::image("second-signal", 1, 20_000);
    let p = proxied(
        &[("team/app:1", &image)],
        Faults {
            hold: Some(Hold {
                method: None,
                path: "/".into(),
                after: 0,
                times: 1_000,
                ms: 120_000,
            }),
            ..Default::default()
        },
        Faults::default(),
        "- source: team/app:1\n",
        "",
    );
    let mut child = spawn_sync(&p.def);
    // Signals are listened to before any registry is contacted: once the
    // source has the first request, the first signal is heard; the second
    // goes once the first is acknowledged.
    wait_until("the first source request is held", || {
        p.sp.injected.held.load(std::sync::atomic::Ordering::SeqCst) >= 1
    });
    send(&child, "-INT");
    let stderr_lines = child.stderr_lines();
    let mut stderr = String::new();
    for line in stderr_lines.iter() {
        stderr.push_str(&line);
        stderr.push('\n');
        if line.contains("interrupted: no new work starts") {
            break;
        }
    }
    send(&child, "-TERM");
    stderr.extend(stderr_lines.iter().map(|l| l + "\n"));
    let (status, out) = child.wait();
    let stdout = out.stdout;
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("error: interrupted twice; exiting at once"),
        "{stderr}"
    );
    // No report: the process left without finishing anything.
    assert!(!stdout.contains("team/app"), "{stdout}");
    assert_eq!(p.synced("team/app:1"), None);
}

#[test]
fn kill_9_mid_copy_then_a_rerun_yields_the_exact_image() {
    // The target holds the third blob upload until the process is gone: the
    // kill lands mid-copy, with two blobs in and the tag not yet written.
    let image = fixtures::image("interrupt-9", 10, 100_000);
    let p = proxied(
        &[("library/busybox:1.36", &image)],
        Faults::default(),
        Faults {
            // Until the process is gone (a bound only).
            hold: Some(Hold {
                method: Some("PUT"),
                path: "/blobs/uploads/".into(),
                after: 2,
                times: 1,
                ms: 120_000,
            }),
            ..Default::default()
        },
        "- source: busybox:1.36\n",
        "",
    );
    let s = Slow { p, image };
    let child = spawn_sync(&s.p.def);
    wait_until("the third upload is held", || {
        s.p.tp
            .injected
            .held
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 3
    });
    // Partial content: some blobs are in, the tag is not.
    let present = block_on(async {
        let mut n = 0;
        for b in s.image.all_blobs() {
            if s.p
                .target
                .has_blob("mirror/library/busybox", &b.digest.to_string())
                .await
            {
                n += 1;
            }
        }
        n
    });
    assert!(
        (2..s.image.all_blobs().len()).contains(&present),
        "{present} blobs present when killed"
    );
    send(&child, "-KILL");
    let (status, _) = child.wait();
    assert_eq!(status.code(), None, "killed by a signal");
    assert_eq!(
        block_on(s.p.target.digest("mirror/library/busybox:1.36")),
        None,
        "killed mid-copy, the tag must not be written"
    );
    assert!(
        tag_is_sound(&s),
        "a tag points at missing or other content after kill -9"
    );
    rerun_completes(&s);
}

#[test]
fn redirected_blob_downloads_work() {
    let img = fixtures::image("redirect", 3, 100_000);
    let p = proxied(
        &[("library/busybox:1.36", &img)],
        Faults {
            redirect_blobs: true,
            ..Default::default()
        },
        Faults::default(),
        "- source: busybox:1.36\n",
        "",
    );
    let r = run(&["-i", &p.def]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        p.synced("library/busybox:1.36"),
        Some(img.digest.to_string())
    );
}

#[test]
fn a_digest_header_that_disagrees_with_the_content_is_not_trusted() {
    let img = fixtures::image("liar", 1, 1000);
    let p = proxied(
        &[("library/busybox:1.36", &img)],
        Faults {
            wrong_digest_header: true,
            ..Default::default()
        },
        Faults::default(),
        "- source: busybox:1.36\n",
        "",
    );
    let before = p.target.storage_snapshot();
    let r = run(&["-i", &p.def]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(
        p.target.storage_snapshot(),
        before,
        "nothing may be written from an untrusted registry"
    );
}
