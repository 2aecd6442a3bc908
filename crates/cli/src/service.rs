//! Running as a service: the `--watch` loop, and the `--listen` endpoints
//! (`/healthz`, `/readyz`, `/metrics`) over hyper's HTTP/1 server.
//!
//! The loop runs on the main thread: each cycle loads its [`Setup`] (the
//! definition read again) and builds its stages there, outside the
//! runtime, then runs in it; cycles never overlap. The server runs on the
//! runtime's workers, so it answers while a cycle runs or sleeps.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use image_syncer_core::report::Report;
use tracing::{debug, error, info, warn};

use crate::args::Args;
use crate::metrics::Metrics;
use crate::run::{input_error, print_report, run_cycle, Exit, Setup, Stop};

/// What the endpoints read: the metrics, and whether a run has finished.
pub struct Service {
    pub metrics: Metrics,
    ready: AtomicBool,
}

impl Service {
    pub fn new(watch: Option<Duration>) -> Service {
        Service {
            metrics: Metrics::new(watch),
            ready: AtomicBool::new(false),
        }
    }

    /// A run ended with `report` after `took`: counted, and the process is
    /// ready from now on.
    pub fn finished(&self, report: &Report, took: Duration) {
        self.metrics.record(report, took, SystemTime::now());
        self.cycle_ended();
    }

    /// A cycle ended, whatever its result: `/readyz` answers 200 from now on.
    fn cycle_ended(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
}

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;

/// A client gets this long to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` now (an address in use is an input error, before any
/// registry is contacted) and serves the endpoints on `runtime` for the
/// life of the process.
pub fn listen(
    addr: SocketAddr,
    service: Arc<Service>,
    runtime: &tokio::runtime::Runtime,
) -> Result<(), String> {
    let bound = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("--listen {addr}: cannot listen: {e}"))?;
    let listener = {
        let _in_runtime = runtime.enter();
        tokio::net::TcpListener::from_std(bound)
            .map_err(|e| format!("--listen {addr}: cannot listen: {e}"))?
    };
    info!(%addr, "serving /healthz, /readyz and /metrics");
    runtime.spawn(serve(listener, service));
    Ok(())
}

async fn serve(listener: tokio::net::TcpListener, service: Arc<Service>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: try again shortly.
                warn!(error = %e, "--listen: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let answer = hyper::service::service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(answer(&req, &service)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), answer);
            if let Err(e) = connection.await {
                debug!(error = %e, "--listen: connection ended");
            }
            drop(slot);
        });
    }
}

fn text(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// The answer to one request (hyper leaves out the body of a HEAD's).
fn answer(req: &Request<Incoming>, service: &Service) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET and HEAD\n");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" if service.ready.load(Ordering::SeqCst) => text(StatusCode::OK, PLAIN, "ready\n"),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "not ready: the first run has not finished\n",
        ),
        "/metrics" => text(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            service.metrics.render(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /healthz, /readyz or /metrics\n",
        ),
    }
}

/// `--watch`: runs `first`, sleeps `every`, loads the setup again and runs
/// it, until a signal. A definition (or a file it names) that no longer
/// validates is logged and counted, and the last good setup runs instead;
/// a failed or stopped run does not end the loop. A signal stops the run in
/// progress as a one-shot run stops (no new write starts, writes in flight
/// finish), or ends the sleep; then the process exits 0. Only the first
/// cycle's input error ends the loop (exit 2): there is no good setup yet.
pub fn watch(
    args: &Args,
    first: Setup,
    every: Duration,
    runtime: &tokio::runtime::Runtime,
    stop: &Stop,
    service: &Service,
) -> Result<Exit, Exit> {
    let mut good = first;
    let mut cycle: u64 = 0;
    loop {
        cycle += 1;
        let started = Instant::now();
        let ran = if cycle == 1 {
            Some(run_cycle(args, &good, runtime, stop).map_err(input_error)?)
        } else {
            let candidate = Setup::reload(args);
            let fresh = match candidate {
                Ok(setup) => match run_cycle(args, &setup, runtime, stop) {
                    Ok(report) => {
                        good = setup;
                        Some(report)
                    }
                    Err(e) => {
                        rejected(service, &e);
                        None
                    }
                },
                Err(e) => {
                    rejected(service, &e);
                    None
                }
            };
            match fresh {
                Some(report) => Some(report),
                None if stop.stopped() => None,
                None => match run_cycle(args, &good, runtime, stop) {
                    Ok(report) => Some(report),
                    Err(e) => {
                        // The last good definition's tag rules now select
                        // what does not validate (two sources for one
                        // target): nothing was written. Counted once, above.
                        error!("the last good definition does not validate either; no run this cycle: {e}");
                        None
                    }
                },
            }
        };
        match &ran {
            Some(report) => {
                // Counted first: once the report is out, /metrics has it.
                service.finished(report, started.elapsed());
                print_report(args, &good, report);
                info!(cycle, status = ?report.status(), seconds = started.elapsed().as_secs_f64(), "run finished");
            }
            None => service.cycle_ended(),
        }
        if stop.stopped() {
            info!("stopped by a signal");
            return Ok(Exit::Ok);
        }
        info!(seconds = every.as_secs(), "next run after a pause");
        runtime.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.woken.notified() => {}
            }
        });
        if stop.stopped() {
            info!("stopped by a signal");
            return Ok(Exit::Ok);
        }
    }
}

/// A definition (or a file it names) that did not validate: said on stderr
/// and counted; the last good one runs.
fn rejected(service: &Service, message: &str) {
    service.metrics.definition_error();
    error!("the definition no longer validates; the last good one runs instead: {message}");
}
