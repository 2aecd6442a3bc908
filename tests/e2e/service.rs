//! Running as a service (`--watch`, `--listen`) against real registries:
//! cycles that pick up a changed definition, keep the last good one when
//! it breaks, stop cleanly on SIGTERM; `/healthz`, `/readyz`, and
//! `/metrics` read with a Prometheus text-format parser and checked against
//! the JSON reports of the same cycles; the Kubernetes manifests of
//! `deploy/kubernetes/` checked against the Kubernetes schemas.
//!
//! No test waits for time to pass: the fault proxy holds a chosen request
//! of a chosen cycle until the test lets it go, so each check happens at a
//! known point of the loop.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use image_syncer_testkit::faults::{Faults, Hold};

use crate::faults::{interrupt_mid_copy, proxied, send, slow, tag_is_sound, wait_until, Proxied};
use crate::plugins::workspace;
use crate::support::*;

/// A free port on 127.0.0.1 (bound, then let go for the binary to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// An HTTP answer: status, headers (names in lower case) and body.
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// `GET path` from 127.0.0.1:`port` (one request, `Connection: close`).
pub fn get(port: u16, path: &str) -> Answer {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to --listen");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// `/metrics`, parsed by `prometheus-parse`. Every line must be a comment
/// or a sample it reads (it skips what it cannot parse: a line it skipped
/// fails here), and the text ends with OpenMetrics' `# EOF`.
pub fn scrape(port: u16) -> Scrape {
    let a = get(port, "/metrics");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.headers.get("content-type").map(String::as_str),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(a.body.ends_with("# EOF\n"), "{}", a.body);
    for line in a.body.lines() {
        let info = prometheus_parse::LineInfo::parse(line);
        assert!(
            !matches!(info, prometheus_parse::LineInfo::Ignored)
                || line.starts_with("# UNIT ")
                || line == "# EOF",
            "a line the parser cannot read: {line}"
        );
    }
    let lines = a.body.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text scrape");
    Scrape {
        parsed,
        text: a.body,
    }
}

/// A scrape of `/metrics`.
pub struct Scrape {
    pub parsed: prometheus_parse::Scrape,
    pub text: String,
}

impl Scrape {
    /// The value of the one sample `name{labels}`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .parsed
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| s.labels.len() == labels.len())
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("{name}: not a plain value"),
            })
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?} in\n{}", self.text);
        found[0]
    }

    /// The label values of `label` among `name`'s samples.
    pub fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.parsed
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| s.labels.get(label).map(str::to_string))
            .collect()
    }

    /// Each metric family's `# HELP` text and `# TYPE`, by family name.
    pub fn described(&self) -> BTreeMap<String, (String, String)> {
        let mut out = BTreeMap::new();
        for line in self.text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                out.entry(name.to_string())
                    .or_insert_with(|| (String::new(), String::new()))
                    .0 = help.to_string();
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').unwrap();
                out.entry(name.to_string())
                    .or_insert_with(|| (String::new(), String::new()))
                    .1 = ty.to_string();
            }
        }
        out
    }

    /// The label names `name`'s samples carry.
    pub fn label_names(&self, name: &str) -> BTreeSet<String> {
        self.parsed
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .flat_map(|s| s.labels.keys().map(|k| k.to_string()))
            .collect()
    }
}

/// The next JSON report on a `--output json` run's stdout (bounded: 120 s).
pub fn next_report(stdout: &Receiver<String>) -> serde_json::Value {
    let mut doc = String::new();
    loop {
        let line = stdout
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("no report within 120 s ({e}); so far:\n{doc}"));
        doc.push_str(&line);
        doc.push('\n');
        // A pretty-printed report ends with its closing brace alone.
        if line == "}" {
            return serde_json::from_str(&doc).unwrap_or_else(|e| panic!("{e}:\n{doc}"));
        }
    }
}

/// `(source, action)` of each image of a JSON report.
fn actions(report: &serde_json::Value) -> Vec<(String, String)> {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["source"].as_str().unwrap().to_string(),
                i["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// How many images of a report have `field` equal to `value`.
fn count(report: &serde_json::Value, field: &str, value: &str) -> f64 {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i[field] == value)
        .count() as f64
}

/// The bytes of a report's images, summed.
fn bytes(report: &serde_json::Value) -> f64 {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["bytes"].as_u64().unwrap())
        .sum::<u64>() as f64
}

/// A figure of one registry in a report (0 when the report lacks it).
fn figure(report: &serde_json::Value, registry: &str, name: &str) -> f64 {
    report["registries"][registry][name].as_f64().unwrap_or(0.0)
}

/// Holds the source's `HEAD` of `busybox:1.36`'s manifest in the cycles
/// listed (1 for the first): planning a cycle sends exactly one, so a held
/// one stops that cycle before it decides anything, and the test lets it go
/// with [`image_syncer_testkit::faults::Injected::release`] (hold `i` for
/// the `i`-th cycle listed).
fn cycle_gates(cycles: &[u32]) -> Faults {
    Faults {
        holds: cycles
            .iter()
            .map(|c| Hold {
                method: Some("HEAD"),
                path: "/v2/library/busybox/manifests/1.36".into(),
                after: c - 1,
                times: 1,
                // A bound only: the test releases it.
                ms: 120_000,
            })
            .collect(),
        ..Default::default()
    }
}

/// Source `HEAD`s of `busybox:1.36` seen so far: the cycles that reached
/// planning.
fn cycles_planned(p: &Proxied) -> u64 {
    p.sp.injected.held_by(0)
}

/// Appends `text` to the definition file (its `images:` list is last).
fn append(def: &str, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(def).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The images of the two-cycle tests: `busybox:1.36` at first, `team/app:2`
/// added while the first cycle runs.
fn two_images() -> (fixtures::TestImage, fixtures::TestImage) {
    (
        fixtures::image("watch-a", 2, 30_000),
        fixtures::image("watch-b", 3, 20_000),
    )
}

/// The first cycle's entries of the two-cycle test: `team/missing:1` is
/// not in the source (that image fails, the cycle fails, the loop goes on).
const MISSING: &str = "- source: team/missing:1\n  sign: true\n";

#[test]
fn watch_copies_an_image_added_between_cycles_and_metrics_match_the_reports() {
    let (a, b) = two_images();
    let p = proxied(
        &[("library/busybox:1.36", &a), ("team/app:2", &b)],
        cycle_gates(&[1, 3]),
        Faults::default(),
        &format!("- source: busybox:1.36\n  sign: true\n{MISSING}"),
        "",
    );
    let keys = tempfile::tempdir().unwrap();
    let (key, _public) = p256_keypair(keys.path(), "ours");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Watched::spawn(&[
        "-i",
        &p.def,
        "--watch",
        "1s",
        "--listen",
        &listen,
        "--output",
        "json",
        "--kms-key",
        key.to_str().unwrap(),
    ]);
    let stdout = child.run().stdout_lines();
    wait_until("the first cycle is planning", || cycles_planned(&p) >= 1);
    // Alive at once; not ready before the first cycle has finished.
    assert_eq!(get(port, "/healthz").status, 200);
    let not_ready = get(port, "/readyz");
    assert_eq!(not_ready.status, 503, "{}", not_ready.body);
    let before = scrape(port);
    assert_eq!(
        before.value("image_syncer_runs_total", &[("status", "ok")]),
        0.0
    );
    assert_eq!(get(port, "/nothing").status, 404);
    // The definition changes while the first cycle runs: the second reads
    // it (the missing image gone, team/app:2 added).
    let text = std::fs::read_to_string(&p.def).unwrap();
    std::fs::write(
        &p.def,
        text.replace(MISSING, "- source: team/app:2\n  sign: true\n"),
    )
    .unwrap();
    p.sp.injected.release(0);

    let first = next_report(&stdout);
    assert_eq!(
        actions(&first),
        vec![
            ("busybox:1.36".to_string(), "copied".to_string()),
            ("team/missing:1".to_string(), "failed".to_string()),
        ]
    );
    // A failed cycle does not end the loop.
    assert_eq!(first["status"], "failed");
    let second = next_report(&stdout);
    assert_eq!(
        actions(&second),
        vec![
            ("busybox:1.36".to_string(), "in-sync".to_string()),
            ("team/app:2".to_string(), "copied".to_string()),
        ]
    );
    assert_eq!(second["status"], "ok");
    assert_eq!(p.synced("team/app:2"), Some(b.digest.to_string()));
    assert_eq!(p.synced("library/busybox:1.36"), Some(a.digest.to_string()));

    // The third cycle is held: the metrics are the first two cycles'.
    wait_until("the third cycle is planning", || cycles_planned(&p) >= 3);
    assert_eq!(get(port, "/readyz").status, 200);
    let m = scrape(port);
    let outcomes = [
        ("copied", "copied"),
        ("would_copy", "would-copy"),
        ("in_sync", "in-sync"),
        ("stopped", "stopped"),
        ("failed", "failed"),
        ("not_run", "not-run"),
    ];
    for (label, action) in outcomes {
        assert_eq!(
            m.value("image_syncer_run_images", &[("outcome", label)]),
            count(&second, "action", action),
            "{label}"
        );
    }
    assert_eq!(m.value("image_syncer_runs_total", &[("status", "ok")]), 1.0);
    assert_eq!(
        m.value("image_syncer_runs_total", &[("status", "failed")]),
        1.0
    );
    assert_eq!(
        m.value("image_syncer_runs_total", &[("status", "safety_stop")]),
        0.0
    );
    assert_eq!(
        m.value("image_syncer_copied_bytes_total", &[]),
        bytes(&first) + bytes(&second)
    );
    assert!(bytes(&second) > 0.0 && bytes(&first) > 0.0);
    // Signed in the first cycle: a; in the second: b, and a's verified.
    assert_eq!(
        m.value("image_syncer_signatures_total", &[("outcome", "written")]),
        count(&first, "signature", "signed") + count(&second, "signature", "signed")
    );
    assert_eq!(
        m.value("image_syncer_signatures_total", &[("outcome", "verified")]),
        count(&first, "signature", "already-signed")
            + count(&second, "signature", "already-signed")
    );
    assert_eq!(
        m.value("image_syncer_signatures_total", &[("outcome", "written")]),
        2.0
    );
    assert_eq!(
        m.value("image_syncer_signatures_total", &[("outcome", "verified")]),
        1.0
    );
    assert_eq!(m.value("image_syncer_safety_stops_total", &[]), 0.0);
    assert_eq!(m.value("image_syncer_definition_errors_total", &[]), 0.0);
    assert_eq!(m.value("image_syncer_watch_interval_seconds", &[]), 1.0);
    // Per registry: the same registries as the reports, counters summed
    // over both cycles, the limits the second cycle's.
    let registries: BTreeSet<String> = second["registries"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(registries.len(), 2, "{second}");
    assert_eq!(
        m.label_values("image_syncer_registry_requests_total", "registry"),
        registries
    );
    for r in &registries {
        let of = [("registry", r.as_str())];
        for (metric, name) in [
            ("image_syncer_registry_requests_total", "requests"),
            ("image_syncer_registry_retries_total", "retries"),
            ("image_syncer_registry_pauses_total", "pushbacks"),
            (
                "image_syncer_registry_paused_seconds_total",
                "throttled_seconds",
            ),
        ] {
            assert_eq!(
                m.value(metric, &of),
                figure(&first, r, name) + figure(&second, r, name),
                "{metric} {r}"
            );
        }
        assert!(m.value("image_syncer_registry_requests_total", &of) > 0.0);
        for (bound, name) in [("lowest", "lowest_limit"), ("highest", "highest_limit")] {
            assert_eq!(
                m.value(
                    "image_syncer_registry_limit",
                    &[("registry", r.as_str()), ("bound", bound)]
                ),
                figure(&second, r, name),
                "{bound} limit of {r}"
            );
        }
    }
    // Times: the process started, then the last run ended, successfully.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = m.value("image_syncer_start_timestamp_seconds", &[]);
    let last = m.value("image_syncer_last_run_timestamp_seconds", &[]);
    assert!(
        started > 0.0 && started <= last && last <= now,
        "{}",
        m.text
    );
    assert_eq!(
        m.value("image_syncer_last_success_timestamp_seconds", &[]),
        last
    );
    let longest_image = second["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["duration_ms"].as_u64().unwrap())
        .max()
        .unwrap() as f64
        / 1000.0;
    assert!(
        m.value("image_syncer_run_duration_seconds", &[]) >= longest_image,
        "{}",
        m.text
    );
    // Bounded labels: no image name, no digest.
    for name in ["busybox", "team/app", "sha256"] {
        assert!(!m.text.contains(name), "{name} in\n{}", m.text);
    }

    // SIGTERM while the third cycle runs: it stops, the process exits 0.
    send(child.run(), "-TERM");
    p.sp.injected.release(1);
    drop(stdout);
    let (status, out) = child.wait();
    assert_eq!(status.code(), Some(0), "{}", out.all());
}

#[test]
fn a_broken_definition_keeps_the_last_good_one_and_is_counted() {
    let (a, b) = two_images();
    let p = proxied(
        &[("library/busybox:1.36", &a), ("team/app:2", &b)],
        cycle_gates(&[1, 3, 4]),
        Faults::default(),
        "- source: busybox:1.36\n",
        "",
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Watched::spawn(&[
        "-i", &p.def, "--watch", "1s", "--listen", &listen, "--output", "json",
    ]);
    let stdout = child.run().stdout_lines();
    wait_until("the first cycle is planning", || cycles_planned(&p) >= 1);
    // An invalid reference (upper case in a repository) breaks the file.
    let good = std::fs::read_to_string(&p.def).unwrap();
    append(&p.def, "- source: Team/App:2\n");
    p.sp.injected.release(0);
    let first = next_report(&stdout);
    assert_eq!(
        actions(&first),
        vec![("busybox:1.36".to_string(), "copied".to_string())]
    );
    // The second cycle ran the last good definition.
    let second = next_report(&stdout);
    assert_eq!(
        actions(&second),
        vec![("busybox:1.36".to_string(), "in-sync".to_string())]
    );
    assert_eq!(p.synced("team/app:2"), None);
    wait_until("the third cycle is planning", || cycles_planned(&p) >= 3);
    // The second and the third cycle each found it broken.
    let m = scrape(port);
    assert_eq!(m.value("image_syncer_definition_errors_total", &[]), 2.0);
    assert_eq!(m.value("image_syncer_runs_total", &[("status", "ok")]), 2.0);
    assert_eq!(
        m.value("image_syncer_run_images", &[("outcome", "in_sync")]),
        1.0
    );
    // Now a file that reads well but cannot be prepared: an image to sign
    // and no signing key. The fourth cycle finds it so.
    std::fs::write(
        &p.def,
        format!("{good}- source: team/app:2\n  sign: true\n"),
    )
    .unwrap();
    p.sp.injected.release(1);
    let third = next_report(&stdout);
    assert_eq!(
        actions(&third),
        vec![("busybox:1.36".to_string(), "in-sync".to_string())]
    );
    wait_until("the fourth cycle is planning", || cycles_planned(&p) >= 4);
    let m = scrape(port);
    assert_eq!(m.value("image_syncer_definition_errors_total", &[]), 3.0);
    assert_eq!(m.value("image_syncer_runs_total", &[("status", "ok")]), 3.0);
    send(child.run(), "-TERM");
    p.sp.injected.release(2);
    drop(stdout);
    let (status, out) = child.wait();
    assert_eq!(status.code(), Some(0), "{}", out.all());
    assert_eq!(p.synced("team/app:2"), None);
    // Said on stderr, with the file, the line and the entry.
    let said: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("the definition no longer validates"))
        .collect();
    assert_eq!(said.len(), 3, "{}", out.stderr);
    for line in &said[..2] {
        assert!(
            line.contains(&format!("{}:", p.def)) && line.contains("Team/App:2"),
            "{line}"
        );
    }
    assert!(
        said[2].contains("no signing key was given") && said[2].contains("--kms-key"),
        "{}",
        said[2]
    );
}

#[test]
fn a_safety_stop_does_not_end_the_loop_and_each_is_counted() {
    let (a, b) = two_images();
    let p = proxied(
        &[("library/busybox:1.36", &a)],
        cycle_gates(&[3]),
        Faults::default(),
        "- source: busybox:1.36\n",
        "",
    );
    // The target tag holds another image: each cycle stops.
    block_on(p.target.push("mirror/library/busybox:1.36", &b));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Watched::spawn(&[
        "-i", &p.def, "--watch", "1s", "--listen", &listen, "--output", "json",
    ]);
    let stdout = child.run().stdout_lines();
    for _ in 0..2 {
        let report = next_report(&stdout);
        assert_eq!(report["status"], "safety-stop", "{report}");
    }
    wait_until("the third cycle is planning", || cycles_planned(&p) >= 3);
    let m = scrape(port);
    assert_eq!(m.value("image_syncer_safety_stops_total", &[]), 2.0);
    assert_eq!(
        m.value("image_syncer_runs_total", &[("status", "safety_stop")]),
        2.0
    );
    assert_eq!(
        m.value("image_syncer_run_images", &[("outcome", "stopped")]),
        1.0
    );
    assert_eq!(
        m.value("image_syncer_last_success_timestamp_seconds", &[]),
        0.0
    );
    assert!(m.value("image_syncer_last_run_timestamp_seconds", &[]) > 0.0);
    send(child.run(), "-TERM");
    p.sp.injected.release(0);
    drop(stdout);
    let (status, out) = child.wait();
    assert_eq!(status.code(), Some(0), "{}", out.all());
    // Nothing was overwritten.
    assert_eq!(p.synced("library/busybox:1.36"), Some(b.digest.to_string()));
}

#[test]
fn sigterm_mid_copy_in_watch_mode_exits_0_without_a_partial_tag() {
    let s = slow();
    let mut child = Watched::spawn(&["-i", &s.p.def, "--jobs", "1", "--watch", "1h"]);
    interrupt_mid_copy(&s, child.run(), "-TERM");
    let (status, out) = child.wait();
    assert_eq!(status.code(), Some(0), "{}", out.all());
    assert!(out.stdout.contains("Interrupted"), "{}", out.stdout);
    assert!(tag_is_sound(&s));
    assert_eq!(
        block_on(s.p.target.digest("mirror/library/busybox:1.36")),
        None,
        "interrupted mid-copy, the tag must not be written"
    );
    // One cycle only: the signal ended the loop.
    assert_eq!(out.stdout.matches("Summary:").count(), 1, "{}", out.stdout);
    crate::faults::rerun_completes(&s);
}

#[test]
fn a_one_shot_run_serves_health_while_it_runs() {
    let image = fixtures::image("one-shot-listen", 1, 10_000);
    let p = proxied(
        &[("library/busybox:1.36", &image)],
        cycle_gates(&[1]),
        Faults::default(),
        "- source: busybox:1.36\n",
        "",
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Watched::spawn(&["-i", &p.def, "--listen", &listen]);
    wait_until("the run is planning", || cycles_planned(&p) >= 1);
    assert_eq!(get(port, "/healthz").body, "ok\n");
    assert_eq!(get(port, "/readyz").status, 503);
    assert_eq!(
        scrape(port).value("image_syncer_watch_interval_seconds", &[]),
        0.0
    );
    p.sp.injected.release(0);
    let (status, out) = child.wait();
    assert_eq!(status.code(), Some(0), "{}", out.all());
    assert_eq!(
        p.synced("library/busybox:1.36"),
        Some(image.digest.to_string())
    );
}

#[test]
fn watch_mode_syncs_only_its_shard() {
    let source = Registry::start();
    let target = Registry::start();
    let names = [
        "team/a:1", "team/b:1", "team/c:1", "team/d:1", "team/e:1", "team/f:1",
    ];
    block_on(async {
        for (i, n) in names.iter().enumerate() {
            source
                .push(n, &fixtures::image(&format!("shard-watch-{i}"), 1, 500))
                .await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let entries: String = names.iter().map(|n| format!("- source: {n}\n")).collect();
    let def = write(
        dir.path(),
        "images.yaml",
        &format!("{}images:\n{entries}", header(&source, &target)),
    );
    let def = def.to_str().unwrap();
    let host = target.host();
    // What each shard owns, as a one-shot dry run plans it.
    let planned = |shard: &str| -> BTreeSet<String> {
        let r = run(&[
            "-i",
            def,
            "--insecure-registry",
            &host,
            "--shard",
            shard,
            "--dry-run",
            "--output",
            "json",
        ]);
        assert_eq!(r.code, 0, "{}", r.all());
        let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        actions(&report).into_iter().map(|(s, _)| s).collect()
    };
    let (zero, one) = (planned("0/2"), planned("1/2"));
    assert!(!zero.is_empty() && !one.is_empty(), "{zero:?} {one:?}");
    let mut child = Watched::spawn(&[
        "-i",
        def,
        "--insecure-registry",
        &host,
        "--shard",
        "0/2",
        "--watch",
        "1h",
        "--output",
        "json",
    ]);
    let stdout = child.run().stdout_lines();
    let report = next_report(&stdout);
    let copied: BTreeSet<String> = actions(&report)
        .into_iter()
        .filter(|(_, a)| a == "copied")
        .map(|(s, _)| s)
        .collect();
    assert_eq!(copied, zero);
    send(child.run(), "-TERM");
    drop(stdout);
    let (status, out) = child.wait();
    assert_eq!(status.code(), Some(0), "{}", out.all());
    block_on(async {
        for n in names {
            let held = target.digest(&format!("mirror/{n}")).await.is_some();
            assert_eq!(held, zero.contains(n), "{n}");
        }
    });
}

#[test]
fn bad_watch_and_listen_input_exits_2_before_anything_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let def = write(
        dir.path(),
        "images.yaml",
        "targetRepoPrefix: \"127.0.0.1:1/mirror/\"\nimages:\n- source: busybox:1.36\n",
    );
    let def = def.to_str().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let broken = write(
        dir.path(),
        "broken.yaml",
        "targetRepoPrefix: \"127.0.0.1:1/mirror/\"\nimages:\n- source: Team/App:2\n",
    );
    let broken = broken.to_str().unwrap();
    let mut shown = String::new();
    for args in [
        vec!["-i", def, "--watch", "10"],
        vec!["-i", def, "--watch", "0s"],
        vec!["-i", def, "--listen", "localhost"],
        vec!["-i", def, "--watch", "1h", "--listen", &taken_addr],
        vec!["-i", broken, "--watch", "1h"],
    ] {
        let r = run(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.all());
        assert_eq!(r.stdout, "", "{args:?}");
        shown.push_str(&format!(
            "$ {}\n{}\n",
            args[2..].join(" "),
            messages(&r.stderr)
        ));
    }
    let shown = shown
        .replace(&taken_addr, "[ADDR]")
        .replace(dir.path().to_str().unwrap(), "[DIR]");
    insta::assert_snapshot!(shown);
}

/// The manifests of `deploy/kubernetes/` (one document each), by file
/// name, as JSON values.
fn manifests() -> Vec<(String, serde_json::Value)> {
    let dir = workspace().join("deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let value = image_syncer_core::definition::parse_config_yaml(&text)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, value)
        })
        .collect()
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas_offline() {
    let dir = workspace().join("deploy/kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "{files:?}");
    let out = std::process::Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubernetes-validate cannot run ({e}): install it with `pip install kubernetes-validate` (scripts/test.sh does)")
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert_eq!(said.matches(" passed for resource ").count(), 5, "{said}");
}

#[test]
fn kubernetes_manifests_run_non_root_read_only_from_the_config_map() {
    let docs = manifests();
    let kinds: BTreeMap<String, String> = docs
        .iter()
        .map(|(f, d)| (f.clone(), d["kind"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        kinds.values().cloned().collect::<BTreeSet<_>>(),
        [
            "ConfigMap",
            "CronJob",
            "Deployment",
            "Job",
            "ServiceAccount"
        ]
        .map(String::from)
        .into(),
    );
    let config_map = &docs
        .iter()
        .find(|(_, d)| d["kind"] == "ConfigMap")
        .unwrap()
        .1;
    let config_name = config_map["metadata"]["name"].as_str().unwrap();
    // The definition it holds is one the parser and the schema accept.
    let definition = config_map["data"]["images.yaml"].as_str().unwrap();
    let problems = crate::docs::check_definition(
        definition,
        "deploy/kubernetes/definition.yaml",
        &crate::docs::schema(),
    );
    assert!(
        problems.is_empty(),
        "the ConfigMap's definition: {problems:?}"
    );
    let account = &docs
        .iter()
        .find(|(_, d)| d["kind"] == "ServiceAccount")
        .unwrap()
        .1;
    for (file, d) in &docs {
        let pod = match d["kind"].as_str().unwrap() {
            "Deployment" | "Job" => &d["spec"]["template"]["spec"],
            "CronJob" => &d["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            _ => continue,
        };
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{file}");
        // Runs as the ServiceAccount that carries the cloud identity.
        assert_eq!(
            pod["serviceAccountName"], account["metadata"]["name"],
            "{file}"
        );
        let volumes = pod["volumes"].as_array().unwrap();
        let config_volume = volumes
            .iter()
            .find(|v| v["configMap"]["name"] == config_name)
            .unwrap_or_else(|| panic!("{file}: no volume of the ConfigMap"));
        let containers = pod["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{file}");
        let c = &containers[0];
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{file}"
        );
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"], false,
            "{file}"
        );
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == config_volume["name"])
            .unwrap_or_else(|| panic!("{file}: the ConfigMap is not mounted"));
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let images_file = format!(
            "--images-file={}/images.yaml",
            mount["mountPath"].as_str().unwrap()
        );
        assert!(args.contains(&images_file.as_str()), "{file}: {args:?}");
        // The flags parse: --help with them is still a usage the binary takes.
        let mut check: Vec<&str> = args.clone();
        check.push("--help");
        let r = run(&check);
        assert_eq!(r.code, 0, "{file}: {args:?}: {}", r.all());
        match d["kind"].as_str().unwrap() {
            "Deployment" => {
                assert!(args.iter().any(|a| a.starts_with("--watch=")), "{file}");
                let listen = args
                    .iter()
                    .find_map(|a| a.strip_prefix("--listen="))
                    .unwrap();
                let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
                let ports = c["ports"].as_array().unwrap();
                let named = ports
                    .iter()
                    .find(|p| p["containerPort"] == port)
                    .unwrap_or_else(|| panic!("{file}: port {port} not declared"));
                for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]
                {
                    let get = &c[probe]["httpGet"];
                    assert_eq!(get["path"], path, "{file}: {probe}");
                    assert!(
                        get["port"] == port || get["port"] == named["name"],
                        "{file}: {probe} on another port"
                    );
                }
                assert_eq!(d["spec"]["replicas"], 1, "{file}");
                assert_eq!(d["spec"]["strategy"]["type"], "Recreate", "{file}");
            }
            "CronJob" => {
                assert_eq!(d["spec"]["concurrencyPolicy"], "Forbid", "{file}");
                assert!(!args.iter().any(|a| a.starts_with("--watch")), "{file}");
            }
            "Job" => {
                assert_eq!(d["spec"]["completionMode"], "Indexed", "{file}");
                let count = d["spec"]["completions"].as_u64().unwrap();
                assert!(
                    args.contains(&format!("--shard-count={count}").as_str()),
                    "{file}: {args:?}"
                );
            }
            _ => unreachable!(),
        }
    }
}
