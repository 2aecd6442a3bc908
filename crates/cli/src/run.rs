//! One run: definition → orchestrator → report → exit code. With
//! `--watch`, [`crate::service::watch`] repeats the run's cycle
//! ([`Setup::load`], then [`run_cycle`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use image_syncer_core::catalogue::StageRegistry;
use image_syncer_core::context::{Credentials, RunContext, Secret};
use image_syncer_core::definition::{self, Definition};
use image_syncer_core::orchestrator::{Concurrency, Orchestrator, PrepareError};
use image_syncer_core::report::{Report, Status};
use image_syncer_core::retry::RetryPolicy;
use image_syncer_core::shard::Shard;
use tracing::{info, warn};

use crate::args::Args;

/// Exit codes, as documented in `--help` and the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    SyncFailure = 1,
    InvalidInput = 2,
    SafetyStop = 3,
}

fn init_logging(debug: bool) {
    use tracing_subscriber::EnvFilter;
    // Debug applies to image-syncer's own crates only: HTTP libraries below
    // log request details we do not control.
    // The AWS SDK's own warnings (a credential source that failed, with a
    // dump of the answer) are left out: the error the run reports says
    // what was missing, in a line of its own.
    let filter = if debug {
        "warn,aws_config=error,aws_smithy_runtime=error,aws_runtime=error,image_syncer=debug,image_syncer_core=debug,image_syncer_oci=debug,image_syncer_oci_layout=debug,image_syncer_retag=debug,image_syncer_immutable=debug,image_syncer_cosign=debug,image_syncer_plugin=debug"
    } else {
        "warn,aws_config=error,aws_smithy_runtime=error,aws_runtime=error,image_syncer_core=info,image_syncer_cosign=info,image_syncer_plugin=info"
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_target(false)
        .try_init();
}

/// A preparation error in the CLI's words: a missing signing key names the
/// flags that give one (the core says only what is missing).
fn with_flags(e: PrepareError) -> String {
    use image_syncer_core::catalogue::{BuildError, ContextInput};
    let needs_key = matches!(
        &e,
        PrepareError::SigningWithoutKey { .. }
            | PrepareError::Build(BuildError::MissingInput {
                input: ContextInput::SigningKey,
                ..
            })
            | PrepareError::Stage {
                source: BuildError::MissingInput {
                    input: ContextInput::SigningKey,
                    ..
                },
                ..
            }
    );
    if needs_key {
        let or_not = if matches!(e, PrepareError::SigningWithoutKey { .. }) {
            ", or set `sign: false`"
        } else {
            ""
        };
        format!("{e}: set --kms-key (or --key-ref, SYNCER_KMS_KEY){or_not}")
    } else {
        e.to_string()
    }
}

pub fn input_error(message: impl std::fmt::Display) -> Exit {
    eprintln!("error: {message}");
    Exit::InvalidInput
}

/// Reads the target key file. A JSON object with string `username` and
/// `password` logs in with those; any other JSON (a GCP service-account key)
/// logs in as `_json_key` with the whole file as password.
fn read_key_file(path: &Path) -> Result<Credentials, String> {
    let shown = path.display();
    let content = std::fs::read_to_string(path)
        .map_err(|e| format!("{shown}: cannot read the target key file: {e}"))?;
    if content.trim().is_empty() {
        return Err(format!("{shown}: the target key file is empty"));
    }
    let value: serde_json::Value = serde_json::from_str(&content).map_err(|e| {
        format!(
            "{shown}: the target key file is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    warn_if_readable_by_others(path);
    if let (Some(u), Some(p)) = (
        value.get("username").and_then(|v| v.as_str()),
        value.get("password").and_then(|v| v.as_str()),
    ) {
        return Ok(Credentials::Basic {
            username: u.to_string(),
            password: Secret::new(p),
        });
    }
    Ok(Credentials::Basic {
        username: "_json_key".into(),
        password: Secret::new(content),
    })
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o044 != 0 {
            warn!(file = %path.display(), "the key file is readable by group or others; consider chmod 600");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// The stage list, sorted by kind then name (the registry's order).
pub fn render_stages(registry: &StageRegistry) -> String {
    let mut out = String::new();
    for s in registry.iter() {
        out.push_str(&format!("{} {}\n", s.kind(), s.name));
        out.push_str(&format!("  {}\n", s.description));
        if let Some(t) = &s.transport {
            out.push_str(&format!("  serves references written `{t}:...`\n"));
        }
        out.push_str(&format!("  origin: {}\n  example config:\n", s.origin));
        for line in s.example_config.lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

/// SIGINT/SIGTERM: no new work starts, writes in flight finish, the report
/// is printed, and the exit code is non-zero. A second signal exits at once
/// (a tag is never written before its content, so that is safe too).
/// SIGINT and SIGTERM, listened to from the moment this is made (inside the
/// runtime): a signal that comes before the run starts, or between the first
/// and the second, is not lost.
struct Signals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn listen() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                int: signal(SignalKind::interrupt()).ok(),
                term: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = recv(&mut self.int) => {}
                _ = recv(&mut self.term) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// What a signal sets: the interrupt flag the run's every phase looks at,
/// and a wake-up for the sleep between `--watch` cycles.
#[derive(Clone, Default)]
pub struct Stop {
    pub interrupt: Arc<AtomicBool>,
    pub woken: Arc<tokio::sync::Notify>,
}

impl Stop {
    pub fn stopped(&self) -> bool {
        self.interrupt.load(Ordering::SeqCst)
    }
}

async fn watch_signals(mut signals: Signals, stop: Stop) {
    signals.next().await;
    stop.interrupt.store(true, Ordering::SeqCst);
    // A stored permit: a sleep that starts after this still wakes at once.
    stop.woken.notify_one();
    warn!(
        "interrupted: no new work starts; writes in flight finish (signal again to exit at once)"
    );
    signals.next().await;
    eprintln!("error: interrupted twice; exiting at once");
    std::process::exit(Exit::SyncFailure as i32);
}

pub fn run(args: Args) -> Exit {
    match run_steps(&args) {
        Ok(exit) | Err(exit) => exit,
    }
}

/// The run, step by step; an early end (a listing printed, an input error
/// reported) is `Err` with its exit code.
fn run_steps(args: &Args) -> Result<Exit, Exit> {
    if print_generated(args) {
        return Ok(Exit::Ok);
    }
    init_logging(args.debug);
    let registry = load_registry(args).map_err(input_error)?;
    if print_registry(args, &registry) {
        return Ok(Exit::Ok);
    }
    let setup = Setup::load(args, registry).map_err(input_error)?;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Err(Exit::SyncFailure);
        }
    };
    let stop = Stop::default();
    // Listening starts here, before any registry is contacted.
    let signals = {
        let _in_runtime = runtime.enter();
        Signals::listen()
    };
    runtime.spawn(watch_signals(signals, stop.clone()));
    let service = Arc::new(crate::service::Service::new(args.watch));
    if let Some(addr) = args.listen {
        crate::service::listen(addr, service.clone(), &runtime).map_err(input_error)?;
    }
    if let Some(every) = args.watch {
        return crate::service::watch(args, setup, every, &runtime, &stop, &service);
    }
    let started = std::time::Instant::now();
    let report = run_cycle(args, &setup, &runtime, &stop).map_err(input_error)?;
    // Counted first: once the report is out, /metrics has it.
    service.finished(&report, started.elapsed());
    print_report(args, &setup, &report);
    Ok(exit_code(&report))
}

/// What a run is made of, from the flags and the files they name: the
/// definition, the stage registry and the run's context, checked. Made
/// once for a run, and again for each cycle of `--watch` (the definition,
/// key and CA files read again).
pub struct Setup {
    orchestrator: Orchestrator,
    def: Definition,
    target: Target,
    shard: Option<Shard>,
    settings: Settings,
}

impl Setup {
    /// Reads the definition (and the files the flags name) with the stages
    /// `registry` knows; an input error is its message.
    pub fn load(args: &Args, registry: StageRegistry) -> Result<Setup, String> {
        let def = load_definition(args, &registry)?;
        let (cx, target) = run_context(args, &def, registry.transports())?;
        let shard = shard(args)?;
        let settings = Settings::of(args, &def);
        Ok(Setup {
            orchestrator: Orchestrator::new(registry, cx),
            def,
            target,
            shard,
            settings,
        })
    }

    /// [`Setup::load`] with the stage registry loaded again (the built-ins,
    /// then the plugin libraries the flags and the definition name).
    pub fn reload(args: &Args) -> Result<Setup, String> {
        Setup::load(args, load_registry(args)?)
    }
}

/// One run of `setup`: the definition checked and its stages built (on this
/// thread, outside the runtime), repository entries expanded, the images
/// synced; its report, to be counted and then printed ([`print_report`]).
/// An input error found on the way (a bad tag rule, two sources for one
/// target) is `Err` with its message: nothing was written then.
pub fn run_cycle(
    args: &Args,
    setup: &Setup,
    runtime: &tokio::runtime::Runtime,
    stop: &Stop,
) -> Result<Report, String> {
    // The definition is checked and its stages built here, before anything
    // is read: entries selecting tags by a rule are expanded later.
    let expansion = setup
        .orchestrator
        .expansion(&setup.def, args.dry_run, setup.shard)
        .map_err(with_flags)?;
    let settings = &setup.settings;
    info!(
        images = setup.def.images.len(),
        dry_run = args.dry_run,
        jobs = settings.jobs,
        shard = ?setup.shard.map(|s| s.to_string()),
        "starting"
    );
    // Expanding reads each repository's tags; the images selected are then
    // prepared with the stages already built.
    let prepared = runtime
        .block_on(expansion.expand(&settings.policy, settings.concurrency, &stop.interrupt))
        .map_err(with_flags)?;
    let prepared = prepared
        .with_jobs_cap(settings.jobs)
        .with_retry(settings.policy)
        .with_interrupt(stop.interrupt.clone());
    Ok(run_with_progress(args, runtime, prepared))
}

/// `--completions` and `--man`: printed before anything else is done.
fn print_generated(args: &Args) -> bool {
    use std::io::Write as _;
    if let Some(shell) = args.completions {
        let _ = std::io::stdout().write_all(&crate::args::completions(shell));
        return true;
    }
    if args.man {
        let _ = std::io::stdout().write_all(&crate::args::man_page());
        return true;
    }
    false
}

/// The built-in stages, then the plugin libraries' (from flags, then from
/// the definition's `plugins:` list).
fn load_registry(args: &Args) -> Result<StageRegistry, String> {
    let mut registry = StageRegistry::builtin().map_err(|e| e.to_string())?;
    let mut libraries = args.plugins.clone();
    if let Some(f) = args.images_file.as_deref() {
        libraries.extend(definition::plugin_list(f));
    }
    for lib in &libraries {
        match image_syncer_plugin::host::load_into(&mut registry, lib) {
            Ok(n) => info!(plugin = %lib.display(), stages = n, "plugin loaded"),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(registry)
}

/// `--print-schema` and `--list-stages`: what the registry knows, printed.
fn print_registry(args: &Args, registry: &StageRegistry) -> bool {
    if args.print_schema {
        print!("{}", registry.definition_schema());
        return true;
    }
    if args.list_stages {
        print!("{}", render_stages(registry));
        return true;
    }
    false
}

/// The definition file, read with the transports the registry serves.
fn load_definition(args: &Args, registry: &StageRegistry) -> Result<Definition, String> {
    let Some(images_file) = args.images_file.as_deref() else {
        return Err("--images-file is required".into());
    };
    let transports = registry.transports();
    let transport_refs: Vec<&str> = transports.iter().map(String::as_str).collect();
    definition::load(images_file, &transport_refs).map_err(|e| e.to_string())
}

/// The target registry, and whether the command line gave credentials for
/// it (for the hint after a refusal).
struct Target {
    registry: Option<String>,
    credentials: bool,
}

/// The run's context: registries (the definition's, the target's
/// credentials from the command line, `--insecure-registry`, `--ca-file`s),
/// the base directory, the transports and the signing key.
fn run_context(
    args: &Args,
    def: &Definition,
    transports: Vec<String>,
) -> Result<(RunContext, Target), String> {
    let transport_refs: Vec<&str> = transports.iter().map(String::as_str).collect();
    let credentials = match (&args.target_repo_auth_key, &args.access_token) {
        (Some(p), _) => Some(read_key_file(p)?),
        (None, Some(token)) => Some(Credentials::Bearer {
            token: Secret::new(token.clone()),
        }),
        (None, None) => None,
    };
    let target_registry = image_syncer_core::reference::ImageRef::parse_with_transports(
        &format!("{}x:1", def.target_repo_prefix),
        &transport_refs,
    )
    .ok()
    .filter(|r| r.transport().is_none())
    .map(|r| r.registry().to_string());
    let mut ca_certificates = Vec::new();
    for f in &args.ca_files {
        let shown = f.display().to_string();
        match std::fs::read(f) {
            Ok(pem) if String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") => {
                ca_certificates.push((shown, pem))
            }
            Ok(_) => return Err(format!("{shown}: not a PEM certificate file")),
            Err(e) => return Err(format!("{shown}: cannot read the CA file: {e}")),
        }
    }
    let mut cx = RunContext::default();
    cx.registries.hosts = def.registry_access().map_err(|e| e.to_string())?;
    cx.registries.insecure = args.insecure_registries.clone();
    let target = Target {
        registry: target_registry.clone(),
        credentials: credentials.is_some(),
    };
    cx.registries.target = target_registry.zip(credentials);
    cx.registries.ca_certificates = ca_certificates;
    cx.base_dir = def.base_dir();
    cx.transports = transports;
    cx.signing_key = args.kms_key.as_ref().map(|k| k.to_string());
    Ok((cx, target))
}

/// The shard to run: `--shard`, or `--shard-count` with a Kubernetes
/// Indexed Job's `JOB_COMPLETION_INDEX`.
fn shard(args: &Args) -> Result<Option<Shard>, String> {
    match (args.shard, args.shard_count) {
        (Some(s), _) => Ok(Some(s)),
        (None, Some(count)) => {
            let index = std::env::var("JOB_COMPLETION_INDEX").ok();
            match index.as_deref().map(|i| Shard::new(i.trim().parse().unwrap_or(u32::MAX), count)) {
                Some(Ok(s)) => Ok(Some(s)),
                Some(Err(_)) => Err(format!(
                    "JOB_COMPLETION_INDEX=`{}` is not an index below --shard-count {count}",
                    index.unwrap_or_default()
                )),
                None => Err("--shard-count needs JOB_COMPLETION_INDEX (set by a Kubernetes Indexed Job), or use --shard INDEX/COUNT".into()),
            }
        }
        (None, None) => Ok(None),
    }
}

/// How much runs at once and how requests are retried.
struct Settings {
    /// `--jobs` (else `jobs:`); without either the engine adapts to each
    /// registry.
    jobs: Option<usize>,
    concurrency: Concurrency,
    policy: RetryPolicy,
}

impl Settings {
    fn of(args: &Args, def: &Definition) -> Settings {
        let jobs: Option<usize> = args.jobs.map(|j| j as usize).or(def.jobs);
        let concurrency = match jobs {
            Some(n) => Concurrency::Fixed(n.max(1)),
            None => Concurrency::Adaptive,
        };
        let mut policy = RetryPolicy::from_settings(&def.retry);
        if let Some(n) = args.retries {
            policy.retries = n;
        }
        Settings {
            jobs,
            concurrency,
            policy,
        }
    }
}

/// Runs the prepared definition (with a live line on a terminal; nothing
/// extra when stderr is a file or pipe).
fn run_with_progress(
    args: &Args,
    runtime: &tokio::runtime::Runtime,
    mut prepared: image_syncer_core::orchestrator::Prepared,
) -> Report {
    let display = (std::io::IsTerminal::is_terminal(&std::io::stderr()) && !args.debug)
        .then(|| Arc::new(crate::progress::TtyProgress::new()));
    if let Some(d) = &display {
        prepared = prepared.with_progress(d.clone());
    }
    let report = runtime.block_on(prepared.run());
    if let Some(d) = &display {
        d.clear();
    }
    report
}

/// Prints a run's report on stdout (text or JSON), then the hint of a
/// refusal, if any, on stderr.
pub fn print_report(args: &Args, setup: &Setup, report: &Report) {
    use std::io::Write as _;
    if args.output == "json" {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render_text());
    }
    // With --watch, the next report may be long in coming.
    let _ = std::io::stdout().flush();
    hint_auth(&setup.target, report);
}

/// The core says what was refused; which flag gives it is the CLI's to say.
/// Which registry refused is a field of the error (`StageError::refused_by`),
/// not read from its message.
fn hint_auth(target: &Target, report: &Report) {
    let (target_registry, target_credentials) = (target.registry.clone(), target.credentials);
    if let Some(target) = target_registry.filter(|_| !target_credentials) {
        if report.refused_by(&target) {
            eprintln!("hint: the target registry {target} refused access: give its credentials with --target-repo-auth-key or --access-token (or in the definition's registries:, or Docker's config.json; ECR, Artifact Registry and ACR also take the cloud identity, see the README's Cloud registries)");
        }
    }
}

/// The exit code of a finished run (a stop wins over a failure).
pub fn exit_code(report: &Report) -> Exit {
    match report.status() {
        Status::Ok => Exit::Ok,
        Status::Failed => Exit::SyncFailure,
        Status::SafetyStop => {
            warn!("safety stop: see the summary");
            Exit::SafetyStop
        }
    }
}
