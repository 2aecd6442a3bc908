//! The figures `/metrics` serves (`--listen`), in the OpenMetrics text
//! format of `prometheus-client`, made from each run's [`Report`].
//!
//! Labels stay bounded: an outcome, a status, a signature outcome, and the
//! registry (a host, or `<transport>:`) of the definition. No image name
//! and no digest is ever a label.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use image_syncer_core::report::{Action, Report, Status};
use image_syncer_core::stage::SignOutcome;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunStatus {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OfRegistry {
    registry: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Limit {
    registry: String,
    bound: &'static str,
}

type Seconds = Gauge<f64, AtomicU64>;

/// Every metric, registered once; updated after each run.
pub struct Metrics {
    registry: Registry,
    images: Family<Outcome, Gauge>,
    runs: Family<RunStatus, Counter>,
    copied_bytes: Counter,
    duration: Seconds,
    last_run: Seconds,
    last_success: Seconds,
    safety_stops: Counter,
    signatures: Family<Outcome, Counter>,
    definition_errors: Counter,
    limit: Family<Limit, Gauge>,
    requests: Family<OfRegistry, Counter>,
    retries: Family<OfRegistry, Counter>,
    pauses: Family<OfRegistry, Counter>,
    paused: Family<OfRegistry, Counter<f64, AtomicU64>>,
}

/// Each [`Action`] as an `outcome` label.
fn outcome(a: Action) -> &'static str {
    match a {
        Action::Copied => "copied",
        Action::WouldCopy => "would_copy",
        Action::InSync => "in_sync",
        Action::Stopped => "stopped",
        Action::Failed => "failed",
        Action::NotRun => "not_run",
    }
}

const ACTIONS: [Action; 6] = [
    Action::Copied,
    Action::WouldCopy,
    Action::InSync,
    Action::Stopped,
    Action::Failed,
    Action::NotRun,
];

fn status(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Failed => "failed",
        Status::SafetyStop => "safety_stop",
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Metrics {
    /// The metrics of a process started now; `watch` is the `--watch`
    /// interval, if any.
    pub fn new(watch: Option<Duration>) -> Metrics {
        let mut registry = Registry::with_prefix("image_syncer");
        let m = Metrics {
            images: Family::default(),
            runs: Family::default(),
            copied_bytes: Counter::default(),
            duration: Seconds::default(),
            last_run: Seconds::default(),
            last_success: Seconds::default(),
            safety_stops: Counter::default(),
            signatures: Family::default(),
            definition_errors: Counter::default(),
            limit: Family::default(),
            requests: Family::default(),
            retries: Family::default(),
            pauses: Family::default(),
            paused: Family::default(),
            registry: Registry::default(),
        };
        // Series with fixed labels exist from the start, at 0 (a family
        // without a series is not rendered at all); the registries' come
        // with the first run that reaches them.
        for a in ACTIONS {
            let _ = m.images.get_or_create(&Outcome {
                outcome: outcome(a),
            });
        }
        for s in [Status::Ok, Status::Failed, Status::SafetyStop] {
            let _ = m.runs.get_or_create(&RunStatus { status: status(s) });
        }
        for outcome in ["verified", "written"] {
            let _ = m.signatures.get_or_create(&Outcome { outcome });
        }
        let interval = Seconds::default();
        interval.set(watch.map_or(0.0, |d| d.as_secs_f64()));
        let started = Seconds::default();
        started.set(unix_seconds(SystemTime::now()));
        let r = &mut registry;
        r.register(
            "run_images",
            "Images of the last run by outcome: copied, would_copy (dry run), in_sync, stopped (a safety stop), failed, not_run",
            m.images.clone(),
        );
        r.register(
            "runs",
            "Runs finished, by status: ok (exit code 0), failed (1), safety_stop (3)",
            m.runs.clone(),
        );
        r.register_with_unit(
            "copied",
            "Bytes of blobs copied, over all runs (the sum of the reports' image bytes)",
            Unit::Bytes,
            m.copied_bytes.clone(),
        );
        r.register_with_unit(
            "run_duration",
            "How long the last run took, from its start to its report",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register_with_unit(
            "last_run_timestamp",
            "When the last run ended (Unix time; 0 before the first)",
            Unit::Seconds,
            m.last_run.clone(),
        );
        r.register_with_unit(
            "last_success_timestamp",
            "When the last run whose status was ok ended (Unix time; 0 before the first)",
            Unit::Seconds,
            m.last_success.clone(),
        );
        r.register(
            "safety_stops",
            "Runs that ended in a safety stop: a target tag holding another digest, content not matching its digest, or a failing signature",
            m.safety_stops.clone(),
        );
        r.register(
            "signatures",
            "Signatures by outcome, over all runs: verified (a valid one was already there) or written",
            m.signatures.clone(),
        );
        r.register(
            "definition_errors",
            "Cycles of --watch whose definition (or a file it names) did not validate: the last good one ran instead",
            m.definition_errors.clone(),
        );
        r.register(
            "registry_limit",
            "Each registry's flow-control limit (requests in flight) in the last run: the lowest and the highest it reached",
            m.limit.clone(),
        );
        r.register(
            "registry_requests",
            "Requests sent to each registry, over all runs",
            m.requests.clone(),
        );
        r.register(
            "registry_retries",
            "Requests sent again to each registry after a transient failure, over all runs",
            m.retries.clone(),
        );
        r.register(
            "registry_pauses",
            "Answers of each registry that pushed back (429 or 503, no answer in time), each halving its limit, over all runs",
            m.pauses.clone(),
        );
        r.register_with_unit(
            "registry_paused",
            "Time each registry was paused because it asked to be left alone (Retry-After), over all runs",
            Unit::Seconds,
            m.paused.clone(),
        );
        r.register_with_unit(
            "watch_interval",
            "The --watch interval (0 for a one-shot run)",
            Unit::Seconds,
            interval,
        );
        r.register_with_unit(
            "start_timestamp",
            "When the process started (Unix time)",
            Unit::Seconds,
            started,
        );
        Metrics { registry, ..m }
    }

    /// Counts a finished run: `report`, which took `took` and ended at `ended`.
    pub fn record(&self, report: &Report, took: Duration, ended: SystemTime) {
        for a in ACTIONS {
            let n = report.images.iter().filter(|i| i.action == a).count();
            self.images
                .get_or_create(&Outcome {
                    outcome: outcome(a),
                })
                .set(n as i64);
        }
        let st = report.status();
        self.runs
            .get_or_create(&RunStatus { status: status(st) })
            .inc();
        if st == Status::SafetyStop {
            self.safety_stops.inc();
        }
        self.copied_bytes
            .inc_by(report.images.iter().map(|i| i.bytes).sum());
        for i in &report.images {
            let signature = match i.signature {
                Some(SignOutcome::Signed) => "written",
                Some(SignOutcome::AlreadySigned | SignOutcome::AlreadySignedBundle) => "verified",
                Some(SignOutcome::WouldSign) | None => continue,
            };
            self.signatures
                .get_or_create(&Outcome { outcome: signature })
                .inc();
        }
        // The limits are the last run's: registries it did not reach go.
        self.limit.clear();
        for (name, f) in &report.registries {
            let of = OfRegistry {
                registry: name.clone(),
            };
            for (bound, value) in [("lowest", f.lowest_limit), ("highest", f.highest_limit)] {
                self.limit
                    .get_or_create(&Limit {
                        registry: name.clone(),
                        bound,
                    })
                    .set(value as i64);
            }
            self.requests.get_or_create(&of).inc_by(f.requests);
            self.retries.get_or_create(&of).inc_by(f.retries);
            self.pauses.get_or_create(&of).inc_by(f.pushbacks);
            self.paused.get_or_create(&of).inc_by(f.throttled_seconds);
        }
        let at = unix_seconds(ended);
        self.duration.set(took.as_secs_f64());
        self.last_run.set(at);
        if st == Status::Ok {
            self.last_success.set(at);
        }
    }

    /// Counts a definition that did not validate (`--watch`).
    pub fn definition_error(&self) {
        self.definition_errors.inc();
    }

    /// The OpenMetrics text of every metric, ending with `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing into a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_syncer_core::report::ImageReport;

    fn image(index: usize, action: Action, bytes: u64, sig: Option<SignOutcome>) -> ImageReport {
        let mut i = ImageReport::new(
            index,
            format!("team/secret-name-{index}:1"),
            format!("mirror.example/team/secret-name-{index}:1"),
        );
        i.action = action;
        i.bytes = bytes;
        i.signature = sig;
        i
    }

    fn report() -> Report {
        let mut registries = std::collections::BTreeMap::new();
        registries.insert(
            "registry.example:5000".to_string(),
            image_syncer_core::flow::RegistryFigures {
                requests: 12,
                retries: 2,
                pushbacks: 1,
                throttled_seconds: 1.5,
                lowest_limit: 4,
                highest_limit: 9,
                ratelimit_remaining: None,
            },
        );
        Report {
            dry_run: false,
            interrupted: false,
            images: vec![
                image(0, Action::Copied, 1000, Some(SignOutcome::Signed)),
                image(1, Action::InSync, 0, Some(SignOutcome::AlreadySigned)),
                image(2, Action::Failed, 24, None),
            ],
            registries,
        }
    }

    fn sample(text: &str, line_start: &str) -> String {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no `{line_start}` in\n{text}"))
            .to_string()
    }

    #[test]
    fn a_run_is_counted_and_the_last_run_replaces_the_gauges() {
        let m = Metrics::new(Some(Duration::from_secs(600)));
        let before = m.render();
        assert!(before.ends_with("# EOF\n"), "{before}");
        assert_eq!(
            sample(&before, "image_syncer_watch_interval_seconds "),
            "image_syncer_watch_interval_seconds 600.0"
        );
        m.record(
            &report(),
            Duration::from_millis(2500),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
        );
        m.record(
            &report(),
            Duration::from_millis(1500),
            SystemTime::UNIX_EPOCH + Duration::from_secs(2000),
        );
        let text = m.render();
        for (start, want) in [
            ("image_syncer_run_images{outcome=\"copied\"}", "1"),
            ("image_syncer_run_images{outcome=\"failed\"}", "1"),
            ("image_syncer_run_images{outcome=\"not_run\"}", "0"),
            ("image_syncer_runs_total{status=\"failed\"}", "2"),
            ("image_syncer_copied_bytes_total ", "2048"),
            ("image_syncer_run_duration_seconds ", "1.5"),
            ("image_syncer_last_run_timestamp_seconds ", "2000.0"),
            // A failed image: never a success.
            ("image_syncer_last_success_timestamp_seconds ", "0.0"),
            ("image_syncer_signatures_total{outcome=\"written\"}", "2"),
            ("image_syncer_signatures_total{outcome=\"verified\"}", "2"),
            (
                "image_syncer_registry_limit{registry=\"registry.example:5000\",bound=\"highest\"}",
                "9",
            ),
            (
                "image_syncer_registry_requests_total{registry=\"registry.example:5000\"}",
                "24",
            ),
            (
                "image_syncer_registry_pauses_total{registry=\"registry.example:5000\"}",
                "2",
            ),
            (
                "image_syncer_registry_paused_seconds_total{registry=\"registry.example:5000\"}",
                "3.0",
            ),
        ] {
            assert_eq!(
                sample(&text, start),
                format!("{start} {want}").replace("  ", " ")
            );
        }
        // Bounded labels: no image name, no digest.
        assert!(!text.contains("secret-name"), "{text}");
        assert!(!text.contains("sha256"), "{text}");
    }

    #[test]
    fn a_run_with_every_image_in_sync_is_a_success_and_a_stop_is_counted() {
        let m = Metrics::new(None);
        let mut ok = report();
        ok.images.truncate(2);
        m.record(
            &ok,
            Duration::from_secs(1),
            SystemTime::UNIX_EPOCH + Duration::from_secs(50),
        );
        let mut stopped = report();
        stopped.images[2].action = Action::Stopped;
        m.record(
            &stopped,
            Duration::from_secs(1),
            SystemTime::UNIX_EPOCH + Duration::from_secs(60),
        );
        let text = m.render();
        assert_eq!(
            sample(&text, "image_syncer_last_success_timestamp_seconds "),
            "image_syncer_last_success_timestamp_seconds 50.0"
        );
        assert_eq!(
            sample(&text, "image_syncer_safety_stops_total "),
            "image_syncer_safety_stops_total 1"
        );
        assert_eq!(
            sample(&text, "image_syncer_runs_total{status=\"safety_stop\"}"),
            "image_syncer_runs_total{status=\"safety_stop\"} 1"
        );
        m.definition_error();
        assert_eq!(
            sample(&m.render(), "image_syncer_definition_errors_total "),
            "image_syncer_definition_errors_total 1"
        );
    }

    fn described(text: &str) -> (usize, usize) {
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        (helps, types)
    }

    #[test]
    fn every_metric_has_help_and_a_type_from_the_start() {
        let m = Metrics::new(None);
        // All but the five per registry, which come with a run.
        let text = m.render();
        assert_eq!(described(&text), (11, 11), "{text}");
        assert!(
            text.contains("image_syncer_runs_total{status=\"safety_stop\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("image_syncer_signatures_total{outcome=\"verified\"} 0\n"),
            "{text}"
        );
        m.record(&report(), Duration::from_secs(1), SystemTime::now());
        let text = m.render();
        assert_eq!(described(&text), (16, 16), "{text}");
    }
}
