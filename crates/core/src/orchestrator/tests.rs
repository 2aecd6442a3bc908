//! Unit tests of the orchestrator, with in-memory stages: a `MemoryRegistry`
//! source, a recording sink over another `MemoryRegistry`, and test doubles of
//! the default pipeline's transform (`retag`), guard (`immutable`) and signer
//! (`cosign`), registered under those names.

use crate::catalogue::ConfigValue;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::catalogue::{ContextInput, Factory, RegisteredStage};
use crate::context::{GuardContext, SignerContext, SinkContext, SourceContext, TransformContext};
use crate::definition::{self, Definition};
use crate::digest::ByteStream;
use crate::digest::Digest;
use crate::manifest::RawManifest;
use crate::manifest::{Descriptor, OCI_INDEX, OCI_MANIFEST};
use crate::memory::MemoryRegistry;
use crate::report::Status;
use crate::report::{Action, Report};
use crate::stage::SignOutcome;
use crate::stage::{
    ErrorKind, Guard, GuardInput, ManifestTarget, RepositoryUse, SignRequest, Signer, Sink, Source,
    StageError, StageKind, Transform, TransformInput, Verdict,
};
use futures_util::StreamExt;

// ---------------------------------------------------------------------------
// Test doubles
// ---------------------------------------------------------------------------

/// `<prefix><repository()>:<entry tag or source tag>`.
struct PrefixTransform;

impl Transform for PrefixTransform {
    fn apply(&self, input: TransformInput<'_>) -> Result<ImageRef, StageError> {
        let spec = input.image;
        let tag = match (&spec.tag, spec.source.tag()) {
            (Some(t), _) => t.clone(),
            (None, Some(t)) => t.to_string(),
            (None, None) => return Err(StageError::config("no tag for the target")),
        };
        let target = format!("{}{}:{}", spec.target_prefix, spec.source.repository(), tag);
        ImageRef::parse(&target).map_err(|e| StageError::config(e.to_string()))
    }
}

/// The immutable rule: absent → copy, equal → skip, different → stop.
struct ImmutableGuard;

#[async_trait]
impl Guard for ImmutableGuard {
    async fn check(&self, input: GuardInput<'_>) -> Result<Verdict, StageError> {
        Ok(match input.target_digest {
            None => Verdict::Copy,
            Some(d) if d == input.source_digest => Verdict::Skip {
                reason: "equal".into(),
            },
            Some(d) => Verdict::Stop {
                reason: format!(
                    "target {} holds {d} but the source is {}",
                    input.target, input.source_digest
                ),
            },
        })
    }
}

/// A sign call as the signer saw it.
#[derive(Clone, Debug)]
struct SignCall {
    request: SignRequest,
    /// What the target tag resolved to (through the sink) when the signer ran.
    target_digest_then: Option<Digest>,
}

/// Records requests; answers per target (string form), else `Ok(Signed)`.
#[derive(Default)]
struct RecordingSigner {
    calls: Mutex<Vec<SignCall>>,
    outcomes: Mutex<HashMap<String, Result<SignOutcome, StageError>>>,
}

impl RecordingSigner {
    fn answer(&self, target: &str, outcome: Result<SignOutcome, StageError>) {
        self.outcomes
            .lock()
            .unwrap()
            .insert(target.to_string(), outcome);
    }
    fn calls(&self) -> Vec<SignCall> {
        self.calls.lock().unwrap().clone()
    }
    fn signed_targets(&self) -> Vec<String> {
        self.calls()
            .iter()
            .map(|c| c.request.target.to_string())
            .collect()
    }
}

#[async_trait]
impl Signer for RecordingSigner {
    async fn sign(
        &self,
        request: &SignRequest,
        sink: &Arc<dyn Sink>,
    ) -> Result<SignOutcome, StageError> {
        let target_digest_then = sink.manifest_digest(&request.target).await?;
        self.calls.lock().unwrap().push(SignCall {
            request: request.clone(),
            target_digest_then,
        });
        self.outcomes
            .lock()
            .unwrap()
            .get(&request.target.to_string())
            .cloned()
            .unwrap_or(Ok(SignOutcome::Signed))
    }
}

/// A committed write, as the recording sink saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Blob {
        repo: String,
        digest: Digest,
    },
    Manifest {
        repo: String,
        target: ManifestTarget,
        digest: Digest,
    },
}

impl Event {
    fn repo(&self) -> &str {
        match self {
            Event::Blob { repo, .. } | Event::Manifest { repo, .. } => repo,
        }
    }
}

/// Delegates to a `MemoryRegistry`, logging committed writes in order. When
/// `intruder` is set, the first `put_blob` first moves that tag to that
/// manifest (someone else writing the target during the run).
struct RecordingSink {
    inner: Arc<MemoryRegistry>,
    log: Mutex<Vec<Event>>,
    intruder: Mutex<Option<(ImageRef, RawManifest)>>,
    /// The next this many lookups and writes fail with a transient error.
    flaky: Mutex<u32>,
    /// Operations (by method name) whose first call fails with a transient
    /// error; every call is counted in `calls`.
    fail_once: Mutex<std::collections::BTreeSet<&'static str>>,
    calls: Mutex<std::collections::BTreeMap<&'static str, u32>>,
    /// Each `put_blob` of a large blob takes this long (a slow transfer),
    /// if set.
    put_delay: Mutex<Option<std::time::Duration>>,
    /// Large `put_blob`s running now, and the most that ran at once.
    puts_running: std::sync::atomic::AtomicUsize,
    puts_peak: std::sync::atomic::AtomicUsize,
    /// Operations (by method name) that every call refuses with this error.
    refuse: Mutex<std::collections::BTreeMap<&'static str, StageError>>,
    /// Each `prepare_repository` call: the repository, how, and how many
    /// writes into that repository were logged before it.
    prepared: Mutex<Vec<(String, RepositoryUse, usize)>>,
    /// Whether `prepare_repository` takes a while (so that other images
    /// for the repository come while it runs) and says what it did (else
    /// it answers `None` at once).
    prepare_notes: std::sync::atomic::AtomicBool,
}

impl RecordingSink {
    /// Counts a call of `op`; fails it if it is to fail once.
    fn call(&self, op: &'static str) -> Result<(), StageError> {
        *self.calls.lock().unwrap().entry(op).or_default() += 1;
        if self.fail_once.lock().unwrap().remove(op) {
            return Err(StageError::transient(format!("{op}: 503 (injected once)")));
        }
        if let Some(e) = self.refuse.lock().unwrap().get(op) {
            return Err(e.clone());
        }
        Ok(())
    }

    fn flake(&self) -> Result<(), StageError> {
        let mut n = self.flaky.lock().unwrap();
        if *n > 0 {
            *n -= 1;
            return Err(StageError::transient("503 Service Unavailable (injected)"));
        }
        Ok(())
    }

    fn log(&self) -> Vec<Event> {
        self.log.lock().unwrap().clone()
    }
    fn blob_puts(&self) -> Vec<Digest> {
        self.log()
            .into_iter()
            .filter_map(|e| match e {
                Event::Blob { digest, .. } => Some(digest),
                _ => None,
            })
            .collect()
    }
}

#[async_trait]
impl Sink for RecordingSink {
    async fn manifest_digest(&self, target: &ImageRef) -> Result<Option<Digest>, StageError> {
        self.call("manifest_digest")?;
        self.flake()?;
        self.inner.manifest_digest(target).await
    }

    async fn fetch_manifest(&self, target: &ImageRef) -> Result<Option<RawManifest>, StageError> {
        Sink::fetch_manifest(self.inner.as_ref(), target).await
    }

    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        Sink::fetch_blob(self.inner.as_ref(), repository, descriptor).await
    }

    async fn has_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<bool, StageError> {
        self.call("has_blob")?;
        self.inner.has_blob(repository, descriptor).await
    }

    async fn put_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        content: ByteStream,
    ) -> Result<(), StageError> {
        self.call("put_blob")?;
        self.flake()?;
        let delay = *self.put_delay.lock().unwrap();
        if let (Some(d), true) = (delay, descriptor.size >= crate::flow::LARGE_BLOB) {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.puts_running.fetch_add(1, SeqCst) + 1;
            self.puts_peak.fetch_max(now, SeqCst);
            tokio::time::sleep(d).await;
            self.puts_running.fetch_sub(1, SeqCst);
        }
        let intruder = self.intruder.lock().unwrap().take();
        if let Some((r, m)) = intruder {
            self.inner.add_manifest(&r, &m, r.tag());
        }
        self.inner.put_blob(repository, descriptor, content).await?;
        self.log.lock().unwrap().push(Event::Blob {
            repo: repository.repository_name(),
            digest: descriptor.digest.clone(),
        });
        Ok(())
    }

    /// See `prepare_notes`.
    async fn prepare_repository(
        &self,
        repository: &ImageRef,
        how: &RepositoryUse,
    ) -> Result<Option<String>, StageError> {
        let repo = repository.repository_name();
        let before = self.log().iter().filter(|e| e.repo() == repo).count();
        self.prepared
            .lock()
            .unwrap()
            .push((repo.clone(), how.clone(), before));
        if !self.prepare_notes.load(std::sync::atomic::Ordering::SeqCst) {
            return self.call("prepare_repository").map(|()| None);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        self.call("prepare_repository")?;
        Ok(Some(if how.dry_run {
            format!("would prepare {repo}")
        } else {
            format!("prepared {repo}")
        }))
    }

    async fn put_manifest(
        &self,
        repository: &ImageRef,
        target: &ManifestTarget,
        manifest: &RawManifest,
    ) -> Result<(), StageError> {
        self.call("put_manifest")?;
        self.flake()?;
        self.inner
            .put_manifest(repository, target, manifest)
            .await?;
        self.log.lock().unwrap().push(Event::Manifest {
            repo: repository.repository_name(),
            target: target.clone(),
            digest: manifest.digest.clone(),
        });
        Ok(())
    }
}

/// Factories handing out one prebuilt stage.
fn fixed_source(s: Arc<dyn Source>) -> Factory {
    Factory::source(move |_: &ConfigValue, _: &SourceContext| Ok(s.clone()))
}
fn fixed_sink(s: Arc<dyn Sink>) -> Factory {
    Factory::sink(move |_: &ConfigValue, _: &SinkContext| Ok(s.clone()))
}
fn fixed_transform(t: Arc<dyn Transform>) -> Factory {
    Factory::transform(move |_: &ConfigValue, _: &TransformContext| Ok(t.clone()))
}
fn fixed_guard(g: Arc<dyn Guard>) -> Factory {
    Factory::guard(move |_: &ConfigValue, _: &GuardContext| Ok(g.clone()))
}
fn fixed_signer(s: Arc<dyn Signer>) -> Factory {
    Factory::signer(move |_: &ConfigValue, cx: &SignerContext| {
        // Like the built-in cosign signer: a signer needs a key.
        match cx.signing_key {
            None => Err(BuildError::MissingInput {
                kind: StageKind::Signer,
                plugin: "cosign".into(),
                input: ContextInput::SigningKey,
            }),
            Some(_) => Ok(s.clone()),
        }
    })
}

// ---------------------------------------------------------------------------
// Harness and fixtures
// ---------------------------------------------------------------------------

struct Harness {
    source: Arc<MemoryRegistry>,
    target: Arc<MemoryRegistry>,
    sink: Arc<RecordingSink>,
    signer: Arc<RecordingSigner>,
}

impl Harness {
    fn new() -> Harness {
        let target = Arc::new(MemoryRegistry::new());
        Harness {
            source: Arc::new(MemoryRegistry::new()),
            sink: Arc::new(RecordingSink {
                inner: target.clone(),
                log: Mutex::new(Vec::new()),
                intruder: Mutex::new(None),
                flaky: Mutex::new(0),
                fail_once: Mutex::default(),
                calls: Mutex::default(),
                put_delay: Mutex::default(),
                puts_running: Default::default(),
                puts_peak: Default::default(),
                refuse: Default::default(),
                prepared: Default::default(),
                prepare_notes: Default::default(),
            }),
            target,
            signer: Arc::new(RecordingSigner::default()),
        }
    }

    fn registry(&self, with_signer: bool) -> StageRegistry {
        let mut r = StageRegistry::default();
        let mut add = |s| r.insert(s).unwrap();
        add(RegisteredStage::new(
            "memory",
            fixed_source(self.source.clone()),
        ));
        add(RegisteredStage::new(
            "memory",
            fixed_sink(self.sink.clone()),
        ));
        add(RegisteredStage::new(
            "retag",
            fixed_transform(Arc::new(PrefixTransform)),
        ));
        add(RegisteredStage::new(
            "immutable",
            fixed_guard(Arc::new(ImmutableGuard)),
        ));
        if with_signer {
            add(RegisteredStage::new(
                "cosign",
                fixed_signer(self.signer.clone()),
            ));
        }
        r
    }

    fn orchestrator(&self, key: bool, with_signer: bool) -> Orchestrator {
        let context = RunContext {
            signing_key: key.then(|| "env://KEY".to_string()),
            ..RunContext::default()
        };
        Orchestrator::new(self.registry(with_signer), context)
    }

    async fn run(&self, yaml: &str, dry_run: bool) -> Report {
        self.orchestrator(true, true)
            .prepare(&def(yaml), dry_run)
            .unwrap()
            .run()
            .await
    }

    async fn target_tag(&self, reference: &str) -> Option<Digest> {
        self.target.manifest_digest(&r(reference)).await.unwrap()
    }

    async fn target_has_blob(&self, repo: &str, d: &Descriptor) -> bool {
        self.target.has_blob(&r(repo), d).await.unwrap()
    }

    fn events_for(&self, repo: &str) -> Vec<Event> {
        let name = r(repo).repository_name();
        self.sink
            .log()
            .into_iter()
            .filter(|e| e.repo() == name)
            .collect()
    }
}

fn r(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}

fn def(yaml: &str) -> Definition {
    definition::parse(yaml, Path::new("t.yaml"), &[]).unwrap()
}

/// A definition with prefix `dst.io/mirror/` and these image entries (YAML list items).
fn yaml(entries: &str) -> String {
    format!("targetRepoPrefix: dst.io/mirror/\nimages:\n{entries}")
}

/// A single-platform image in a registry: its manifest and its blobs.
struct Img {
    manifest: RawManifest,
    config: Descriptor,
    layer: Descriptor,
}

impl Img {
    fn blobs(&self) -> [&Descriptor; 2] {
        [&self.config, &self.layer]
    }
}

fn desc_json(d: &Descriptor) -> String {
    serde_json::to_string(d).unwrap()
}

/// Stores an image built from `seed` (same seed, same bytes, same digests)
/// in `reg` under `reference`'s repository, tagged with its tag if any.
fn add_image(reg: &MemoryRegistry, reference: &str, seed: &str) -> Img {
    add_image_with_layer(
        reg,
        reference,
        seed,
        format!("layer bytes of {seed}").as_bytes(),
    )
}

/// [`add_image`] with these layer bytes.
fn add_image_with_layer(reg: &MemoryRegistry, reference: &str, seed: &str, layer: &[u8]) -> Img {
    let at = r(reference);
    let config = reg.add_blob(
        &at,
        "application/vnd.oci.image.config.v1+json",
        format!("{{\"seed\":\"{seed}\"}}").as_bytes(),
    );
    let layer = reg.add_blob(&at, "application/vnd.oci.image.layer.v1.tar", layer);
    let json = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\"config\":{},\"layers\":[{}]}}",
        desc_json(&config),
        desc_json(&layer)
    );
    let manifest = RawManifest::new(None, Bytes::from(json), None).unwrap();
    reg.add_manifest(&at, &manifest, at.tag());
    Img {
        manifest,
        config,
        layer,
    }
}

/// Stores an index over `children` (already stored by digest) under `reference`.
fn add_index(reg: &MemoryRegistry, reference: &str, children: &[&RawManifest]) -> RawManifest {
    let at = r(reference);
    let entries: Vec<String> = children
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut d = m.descriptor();
            d.platform = Some(crate::manifest::Platform {
                architecture: format!("arch{i}"),
                os: "linux".into(),
                variant: None,
            });
            desc_json(&d)
        })
        .collect();
    let json = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_INDEX}\",\"manifests\":[{}]}}",
        entries.join(",")
    );
    let index = RawManifest::new(None, Bytes::from(json), None).unwrap();
    reg.add_manifest(&at, &index, at.tag());
    index
}

fn image_of(report: &Report, source: &str) -> crate::report::ImageReport {
    report
        .images
        .iter()
        .find(|i| i.source == source)
        .unwrap_or_else(|| panic!("{source} not in report:\n{}", report.render_text()))
        .clone()
}

// ---------------------------------------------------------------------------
// 1. Single image
// ---------------------------------------------------------------------------

#[tokio::test]
async fn copies_single_image_then_is_in_sync() {
    let h = Harness::new();
    let img = add_image(&h.source, "src.io/team/app:1.0", "app");
    let y = yaml("- source: src.io/team/app:1.0\n");

    let report = h.run(&y, false).await;
    let rep = image_of(&report, "src.io/team/app:1.0");
    assert_eq!(rep.action, Action::Copied, "{}", report.render_text());
    assert_eq!(rep.target, "dst.io/mirror/team/app:1.0");
    assert_eq!(rep.digest.as_ref(), Some(&img.manifest.digest));
    assert_eq!(rep.bytes, img.config.size + img.layer.size);
    assert_eq!(report.status(), Status::Ok);
    assert_eq!(
        h.target_tag("dst.io/mirror/team/app:1.0").await,
        Some(img.manifest.digest.clone())
    );
    for b in img.blobs() {
        assert!(h.target_has_blob("dst.io/mirror/team/app", b).await);
    }
    // config, layer, tagged manifest.
    assert_eq!(h.target.writes(), 3);

    let again = h.run(&y, false).await;
    let rep = image_of(&again, "src.io/team/app:1.0");
    assert_eq!(rep.action, Action::InSync);
    assert_eq!(rep.bytes, 0);
    assert_eq!(again.status(), Status::Ok);
    assert_eq!(h.target.writes(), 3, "an in-sync run writes nothing");
}

/// By default a registry has half its limit in transfer slots: however
/// many large blobs wait, at most half the cap upload at once, and lookups
/// are not held up behind them. With `--jobs N`, N transfers at once.
#[tokio::test(start_paused = true)]
async fn transfers_take_at_most_half_the_adaptive_limit() {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::Duration;
    for jobs in [None, Some(3)] {
        let h = Harness::new();
        *h.sink.put_delay.lock().unwrap() = Some(Duration::from_secs(2));
        let mut entries = String::new();
        for i in 0..24 {
            let at = format!("src.io/team/app{i}:1.0");
            let layer = vec![i as u8; crate::flow::LARGE_BLOB as usize];
            add_image_with_layer(&h.source, &at, &format!("s{i}"), &layer);
            entries.push_str(&format!("- source: src.io/team/app{i}:1.0\n"));
        }
        let report = h
            .orchestrator(true, false)
            .prepare(&def(&yaml(&entries)), false)
            .unwrap()
            .with_jobs_cap(jobs)
            .run()
            .await;
        assert_eq!(report.status(), Status::Ok, "{}", report.render_text());
        assert_eq!(h.sink.blob_puts().len(), 48);
        let peak = h.sink.puts_peak.load(SeqCst);
        match jobs {
            // 24 large layers of 24 images (32 at once) could all upload at
            // once; the target's 16 transfer slots (its cap of 32, reached
            // by the good answers of planning) let 16. (The small configs
            // take no slot.)
            None => assert_eq!(peak, crate::flow::ADAPTIVE_CAP / 2),
            Some(n) => assert_eq!(peak, n),
        }
    }
}

// ---------------------------------------------------------------------------
// 2 and 3. Index
// ---------------------------------------------------------------------------

#[tokio::test]
async fn copies_index_children_before_tag() {
    let h = Harness::new();
    let a = add_image(&h.source, "src.io/team/multi", "amd64");
    let b = add_image(&h.source, "src.io/team/multi", "arm64");
    let index = add_index(
        &h.source,
        "src.io/team/multi:2.0",
        &[&a.manifest, &b.manifest],
    );

    let report = h
        .run(&yaml("- source: src.io/team/multi:2.0\n"), false)
        .await;
    let rep = image_of(&report, "src.io/team/multi:2.0");
    assert_eq!(rep.action, Action::Copied, "{}", report.render_text());
    assert_eq!(rep.digest.as_ref(), Some(&index.digest));
    assert_eq!(
        rep.bytes,
        a.config.size + a.layer.size + b.config.size + b.layer.size
    );
    assert_eq!(
        h.target_tag("dst.io/mirror/team/multi:2.0").await,
        Some(index.digest.clone())
    );
    let repo = "dst.io/mirror/team/multi";
    for child in [&a, &b] {
        let by_digest = r(repo).with_digest(child.manifest.digest.clone());
        assert_eq!(
            h.target.manifest_digest(&by_digest).await.unwrap(),
            Some(child.manifest.digest.clone())
        );
        for blob in child.blobs() {
            assert!(h.target_has_blob(repo, blob).await);
        }
    }

    // Order: every blob before the manifest referencing it, every child before
    // the index, the tagged put last and only once.
    let log = h.sink.log();
    assert_eq!(log.len(), 4 + 2 + 1, "{log:#?}");
    let pos = |ev: &Event| log.iter().position(|e| e == ev).unwrap();
    let name = r(repo).repository_name();
    for child in [&a, &b] {
        let m = pos(&Event::Manifest {
            repo: name.clone(),
            target: ManifestTarget::Digest,
            digest: child.manifest.digest.clone(),
        });
        for blob in child.blobs() {
            let bp = pos(&Event::Blob {
                repo: name.clone(),
                digest: blob.digest.clone(),
            });
            assert!(
                bp < m,
                "blob {} put after its manifest: {log:#?}",
                blob.digest
            );
        }
    }
    assert_eq!(
        log.last().unwrap(),
        &Event::Manifest {
            repo: name,
            target: ManifestTarget::Tag("2.0".into()),
            digest: index.digest.clone(),
        }
    );
    let tagged = log
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Manifest {
                    target: ManifestTarget::Tag(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(tagged, 1);
}

#[tokio::test]
async fn skips_blobs_and_children_already_in_target() {
    let h = Harness::new();
    let a = add_image(&h.source, "src.io/team/multi", "amd64");
    let b = add_image(&h.source, "src.io/team/multi", "arm64");
    let index = add_index(
        &h.source,
        "src.io/team/multi:2.0",
        &[&a.manifest, &b.manifest],
    );

    // The target already holds child `a` (by digest, with its blobs) and `b`'s layer.
    let a_in_target = add_image(&h.target, "dst.io/mirror/team/multi", "amd64");
    assert_eq!(a_in_target.manifest.digest, a.manifest.digest);
    h.target.add_blob(
        &r("dst.io/mirror/team/multi"),
        "application/vnd.oci.image.layer.v1.tar",
        b"layer bytes of arm64",
    );

    let report = h
        .run(&yaml("- source: src.io/team/multi:2.0\n"), false)
        .await;
    let rep = image_of(&report, "src.io/team/multi:2.0");
    assert_eq!(rep.action, Action::Copied, "{}", report.render_text());
    assert_eq!(rep.bytes, b.config.size, "only b's config is transferred");
    assert_eq!(h.sink.blob_puts(), vec![b.config.digest.clone()]);
    let manifests: Vec<(ManifestTarget, Digest)> = h
        .sink
        .log()
        .into_iter()
        .filter_map(|e| match e {
            Event::Manifest { target, digest, .. } => Some((target, digest)),
            _ => None,
        })
        .collect();
    assert_eq!(
        manifests,
        vec![
            (ManifestTarget::Digest, b.manifest.digest.clone()),
            (ManifestTarget::Tag("2.0".into()), index.digest.clone()),
        ]
    );
    assert_eq!(h.target.writes(), 3);
}

// ---------------------------------------------------------------------------
// 4. Target tag holds another digest
// ---------------------------------------------------------------------------

#[tokio::test]
async fn other_digest_in_target_stops_everything() {
    let h = Harness::new();
    add_image(&h.source, "src.io/team/before:1", "before");
    let moved = add_image(&h.source, "src.io/team/moved:1", "moved-new");
    add_image(&h.source, "src.io/team/after:1", "after");
    let synced = add_image(&h.source, "src.io/team/synced:1", "synced");
    let old = add_image(&h.target, "dst.io/mirror/team/moved:1", "moved-old");
    add_image(&h.target, "dst.io/mirror/team/synced:1", "synced");

    let report = h
        .run(
            &yaml(
                "- source: src.io/team/before:1\n  sign: true\n\
                 - source: src.io/team/moved:1\n\
                 - source: src.io/team/after:1\n\
                 - source: src.io/team/synced:1\n  sign: true\n",
            ),
            false,
        )
        .await;
    let text = report.render_text();
    assert_eq!(report.status(), Status::SafetyStop, "{text}");

    let stopped = image_of(&report, "src.io/team/moved:1");
    assert_eq!(stopped.action, Action::Stopped);
    assert_eq!(stopped.digest.as_ref(), Some(&moved.manifest.digest));
    assert_eq!(stopped.target_digest.as_ref(), Some(&old.manifest.digest));
    let msg = stopped.message.unwrap();
    assert!(msg.contains(&moved.manifest.digest.to_string()), "{msg}");
    assert!(msg.contains(&old.manifest.digest.to_string()), "{msg}");

    for s in ["src.io/team/before:1", "src.io/team/after:1"] {
        let i = image_of(&report, s);
        assert_eq!(i.action, Action::NotRun, "{text}");
        assert!(i.message.is_some());
    }
    let in_sync = image_of(&report, "src.io/team/synced:1");
    assert_eq!(in_sync.action, Action::InSync);
    assert_eq!(in_sync.digest.as_ref(), Some(&synced.manifest.digest));
    assert_eq!(in_sync.signature, None);
    assert!(in_sync.message.unwrap().contains("not signed"));

    assert_eq!(h.target.writes(), 0, "{:#?}", h.sink.log());
    assert!(h.sink.log().is_empty());
    assert!(
        h.signer.calls().is_empty(),
        "nothing is signed after a stop"
    );
    assert_eq!(
        h.target_tag("dst.io/mirror/team/moved:1").await,
        Some(old.manifest.digest.clone()),
        "the target tag is not moved"
    );
    assert_eq!(h.target_tag("dst.io/mirror/team/before:1").await, None);
    assert_eq!(h.target_tag("dst.io/mirror/team/after:1").await, None);
}

// ---------------------------------------------------------------------------
// 5. Integrity failures in the source
// ---------------------------------------------------------------------------

#[tokio::test]
async fn corrupted_source_blob_stops_the_rest() {
    let h = Harness::new();
    let first = add_image(&h.source, "src.io/team/first:1", "first");
    let bad = add_image(&h.source, "src.io/team/bad:1", "bad");
    add_image(&h.source, "src.io/team/later:1", "later");
    h.source.corrupt_blob(
        &r("src.io/team/bad:1"),
        &bad.layer.digest,
        b"layer bytes of BAD", // same length, other bytes
    );

    let report = h
        .run(
            &yaml(
                "- source: src.io/team/first:1\n\
                 - source: src.io/team/bad:1\n  sign: true\n\
                 - source: src.io/team/later:1\n  sign: true\n",
            ),
            false,
        )
        .await;
    let text = report.render_text();
    assert_eq!(report.status(), Status::SafetyStop, "{text}");
    assert_eq!(
        image_of(&report, "src.io/team/first:1").action,
        Action::Copied
    );
    assert_eq!(
        h.target_tag("dst.io/mirror/team/first:1").await,
        Some(first.manifest.digest.clone())
    );

    let stopped = image_of(&report, "src.io/team/bad:1");
    assert_eq!(stopped.action, Action::Stopped, "{text}");
    let msg = stopped.message.unwrap();
    assert!(msg.contains("does not match its digest"), "{msg}");
    assert!(msg.contains(&bad.layer.digest.to_string()), "{msg}");
    assert_eq!(stopped.signature, None);
    assert_eq!(h.target_tag("dst.io/mirror/team/bad:1").await, None);
    assert!(
        !h.target_has_blob("dst.io/mirror/team/bad", &bad.layer)
            .await
    );
    assert!(h
        .events_for("dst.io/mirror/team/bad")
        .iter()
        .all(|e| matches!(e, Event::Blob { .. })));

    let later = image_of(&report, "src.io/team/later:1");
    assert_eq!(later.action, Action::NotRun, "{text}");
    assert!(h.events_for("dst.io/mirror/team/later").is_empty());
    assert_eq!(h.target_tag("dst.io/mirror/team/later:1").await, None);
    assert!(h.signer.calls().is_empty());
}

#[tokio::test]
async fn source_manifest_not_matching_its_digest_stops_before_writing() {
    let h = Harness::new();
    add_image(&h.source, "src.io/team/first:1", "first");
    let img = add_image(&h.source, "src.io/team/bad:1", "bad");
    // Served bytes that do not hash to the digest the source claims.
    let forged = RawManifest {
        digest: img.manifest.digest.clone(),
        bytes: Bytes::from(String::from_utf8(img.manifest.bytes.to_vec()).unwrap() + " "),
        media_type: img.manifest.media_type.clone(),
    };
    h.source
        .add_manifest(&r("src.io/team/bad:1"), &forged, Some("1"));

    let report = h
        .run(
            &yaml("- source: src.io/team/first:1\n- source: src.io/team/bad:1\n"),
            false,
        )
        .await;
    assert_eq!(report.status(), Status::SafetyStop);
    let bad = image_of(&report, "src.io/team/bad:1");
    assert_eq!(bad.action, Action::Stopped);
    assert!(bad.message.unwrap().contains("does not match its digest"));
    assert_eq!(
        image_of(&report, "src.io/team/first:1").action,
        Action::NotRun
    );
    assert_eq!(h.target.writes(), 0);
}

#[tokio::test]
async fn corrupted_index_child_stops_without_tagging() {
    let h = Harness::new();
    let a = add_image(&h.source, "src.io/team/multi", "amd64");
    let b = add_image(&h.source, "src.io/team/multi", "arm64");
    add_index(
        &h.source,
        "src.io/team/multi:2.0",
        &[&a.manifest, &b.manifest],
    );
    let forged = RawManifest {
        bytes: Bytes::from(String::from_utf8(b.manifest.bytes.to_vec()).unwrap() + " "),
        ..b.manifest.clone()
    };
    h.source
        .add_manifest(&r("src.io/team/multi"), &forged, None);

    let report = h
        .run(&yaml("- source: src.io/team/multi:2.0\n"), false)
        .await;
    let rep = image_of(&report, "src.io/team/multi:2.0");
    assert_eq!(rep.action, Action::Stopped, "{}", report.render_text());
    assert_eq!(h.target_tag("dst.io/mirror/team/multi:2.0").await, None);
    let by_digest = r("dst.io/mirror/team/multi").with_digest(b.manifest.digest.clone());
    assert_eq!(h.target.manifest_digest(&by_digest).await.unwrap(), None);
}

// ---------------------------------------------------------------------------
// 6. Missing source
// ---------------------------------------------------------------------------

#[tokio::test]
async fn missing_source_fails_that_image_only() {
    let h = Harness::new();
    let a = add_image(&h.source, "src.io/team/a:1", "a");
    let c = add_image(&h.source, "src.io/team/c:1", "c");

    let report = h
        .run(
            &yaml(
                "- source: src.io/team/a:1\n\
                 - source: src.io/team/missing:1\n  sign: true\n\
                 - source: src.io/team/c:1\n",
            ),
            false,
        )
        .await;
    let text = report.render_text();
    assert_eq!(report.status(), Status::Failed, "{text}");
    let missing = image_of(&report, "src.io/team/missing:1");
    assert_eq!(missing.action, Action::Failed);
    assert_eq!(missing.digest, None);
    assert!(missing.message.unwrap().starts_with("source: "));
    assert!(h.signer.calls().is_empty());
    for (s, t, img) in [
        ("src.io/team/a:1", "dst.io/mirror/team/a:1", &a),
        ("src.io/team/c:1", "dst.io/mirror/team/c:1", &c),
    ] {
        assert_eq!(image_of(&report, s).action, Action::Copied, "{text}");
        assert_eq!(h.target_tag(t).await, Some(img.manifest.digest.clone()));
    }
}

// ---------------------------------------------------------------------------
// 7. Dry run
// ---------------------------------------------------------------------------

#[tokio::test]
async fn dry_run_writes_nothing_and_signs_only_in_sync_images_as_dry_run() {
    let h = Harness::new();
    add_image(&h.source, "src.io/team/new:1", "new");
    let synced = add_image(&h.source, "src.io/team/synced:1", "synced");
    add_image(&h.target, "dst.io/mirror/team/synced:1", "synced");
    h.signer
        .answer("dst.io/mirror/team/synced:1", Ok(SignOutcome::WouldSign));

    let report = h
        .run(
            &yaml(
                "- source: src.io/team/new:1\n  sign: true\n\
                 - source: src.io/team/synced:1\n  sign: true\n",
            ),
            true,
        )
        .await;
    let text = report.render_text();
    assert!(report.dry_run);
    assert!(text.starts_with("Plan (dry run"), "{text}");
    assert_eq!(report.status(), Status::Ok);

    let new = image_of(&report, "src.io/team/new:1");
    assert_eq!(new.action, Action::WouldCopy);
    assert_eq!(new.signature, Some(SignOutcome::WouldSign));
    assert_eq!(new.bytes, 0);
    let in_sync = image_of(&report, "src.io/team/synced:1");
    assert_eq!(in_sync.action, Action::InSync);
    assert_eq!(in_sync.signature, Some(SignOutcome::WouldSign));

    assert_eq!(h.target.writes(), 0);
    assert!(h.sink.log().is_empty());
    assert_eq!(h.target_tag("dst.io/mirror/team/new:1").await, None);
    let calls = h.signer.calls();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(
        calls[0].request.target.to_string(),
        "dst.io/mirror/team/synced:1"
    );
    assert!(calls[0].request.dry_run);
    assert_eq!(calls[0].request.digest, synced.manifest.digest);
}

/// The sink prepares each target repository once per run, before the first
/// write into it, however many images go there at once; its note goes into
/// the report of the image that asked. Images in sync need nothing.
#[tokio::test]
async fn each_target_repository_is_prepared_once_before_its_first_write() {
    let h = Harness::new();
    h.sink
        .prepare_notes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for tag in ["1", "2", "3", "4"] {
        add_image(
            &h.source,
            &format!("src.io/team/app:{tag}"),
            &format!("app{tag}"),
        );
    }
    add_image(&h.source, "src.io/team/other:1", "other");
    let synced = add_image(&h.source, "src.io/team/synced:1", "synced");
    h.target.add_manifest(
        &r("dst.io/mirror/team/synced:1"),
        &synced.manifest,
        Some("1"),
    );
    let y = yaml(
        "- source: src.io/team/app:1\n- source: src.io/team/app:2\n\
         - source: src.io/team/app:3\n- source: src.io/team/app:4\n  sign: true\n\
         - source: src.io/team/other:1\n- source: src.io/team/synced:1\n",
    );
    let report = h.run(&y, false).await;
    assert_eq!(report.status(), Status::Ok, "{}", report.render_text());
    let prepared = h.sink.prepared.lock().unwrap().clone();
    let repos: Vec<&str> = prepared.iter().map(|(r, _, _)| r.as_str()).collect();
    assert_eq!(
        {
            let mut r = repos.clone();
            r.sort();
            r
        },
        ["dst.io/mirror/team/app", "dst.io/mirror/team/other"],
        "{prepared:#?}"
    );
    for (repo, how, before) in &prepared {
        assert_eq!(*before, 0, "{repo}: prepared after a write into it");
        assert!(!how.dry_run);
        // An image going to app is signed: its repository gets attached tags.
        assert_eq!(
            how.attached_tags,
            repo == "dst.io/mirror/team/app",
            "{repo}"
        );
    }
    let notes: Vec<String> = report.images.iter().flat_map(|i| i.notes.clone()).collect();
    assert_eq!(
        {
            let mut n = notes.clone();
            n.sort();
            n
        },
        [
            "prepared dst.io/mirror/team/app",
            "prepared dst.io/mirror/team/other"
        ]
    );
    assert!(
        report
            .render_text()
            .contains("prepared dst.io/mirror/team/app\n"),
        "{}",
        report.render_text()
    );
    // A run with everything in sync prepares nothing.
    let again = h.run(&y, false).await;
    assert_eq!(again.status(), Status::Ok);
    assert_eq!(h.sink.prepared.lock().unwrap().len(), 2);
}

/// A dry run asks the sink too, saying it is one; the note says what would
/// be done, and nothing is written.
#[tokio::test]
async fn a_dry_run_asks_the_sink_what_preparing_would_do() {
    let h = Harness::new();
    h.sink
        .prepare_notes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    add_image(&h.source, "src.io/team/new:1", "new");
    let report = h.run(&yaml("- source: src.io/team/new:1\n"), true).await;
    let new = image_of(&report, "src.io/team/new:1");
    assert_eq!(new.action, Action::WouldCopy);
    assert_eq!(new.notes, ["would prepare dst.io/mirror/team/new"]);
    let prepared = h.sink.prepared.lock().unwrap().clone();
    assert_eq!(prepared.len(), 1);
    assert!(prepared[0].1.dry_run);
    assert_eq!(h.target.writes(), 0);
    assert!(
        report
            .render_text()
            .contains("would copy  src.io/team/new:1 -> dst.io/mirror/team/new:1"),
        "{}",
        report.render_text()
    );
}

/// A repository the sink cannot prepare fails the images going there
/// (nothing is written into it), each of which asks again; other
/// repositories go on.
#[tokio::test]
async fn a_repository_that_cannot_be_prepared_fails_its_images_only() {
    let h = Harness::new();
    add_image(&h.source, "src.io/team/app:1", "app1");
    add_image(&h.source, "src.io/team/app:2", "app2");
    add_image(&h.source, "src.io/team/other:1", "other");
    h.sink.refuse.lock().unwrap().insert(
        "prepare_repository",
        StageError::config("mirror/team/app: the repository does not exist"),
    );
    let y = yaml(
        "- source: src.io/team/app:1\n- source: src.io/team/app:2\n- source: src.io/team/other:1\n",
    );
    let report = h.run(&y, false).await;
    assert_eq!(report.status(), Status::Failed);
    for source in ["src.io/team/app:1", "src.io/team/app:2"] {
        let rep = image_of(&report, source);
        assert_eq!(rep.action, Action::Failed);
        assert_eq!(
            rep.message.as_deref(),
            Some("mirror/team/app: the repository does not exist")
        );
    }
    assert!(h.events_for("dst.io/mirror/team/app").is_empty());
    // Refused for app (each image asked), then refused for other too:
    // the refusal here is by operation, not by repository.
    assert_eq!(
        h.sink.calls.lock().unwrap().get("prepare_repository"),
        Some(&3)
    );
}

// ---------------------------------------------------------------------------
// 8. Signing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn signs_after_copy_or_in_sync_with_the_source_digest() {
    let h = Harness::new();
    let a = add_image(&h.source, "src.io/team/a:1", "a");
    add_image(&h.source, "src.io/team/b:1", "b");
    let c = add_image(&h.source, "src.io/team/c:1", "c");
    add_image(&h.target, "dst.io/mirror/team/c:1", "c");
    h.signer
        .answer("dst.io/mirror/team/c:1", Ok(SignOutcome::AlreadySigned));

    let report = h
        .run(
            &yaml(
                "- source: src.io/team/a:1\n  sign: true\n\
                 - source: src.io/team/b:1\n  sign: false\n\
                 - source: src.io/team/c:1\n  sign: true\n",
            ),
            false,
        )
        .await;
    let text = report.render_text();
    assert_eq!(report.status(), Status::Ok, "{text}");
    assert_eq!(
        h.signer.signed_targets(),
        vec!["dst.io/mirror/team/a:1", "dst.io/mirror/team/c:1"]
    );
    for (call, img) in h.signer.calls().iter().zip([&a, &c]) {
        assert_eq!(call.request.digest, img.manifest.digest);
        assert_eq!(call.request.manifest, img.manifest);
        assert!(!call.request.dry_run);
        assert_eq!(
            call.target_digest_then.as_ref(),
            Some(&img.manifest.digest),
            "the signer runs once the target holds the digest"
        );
    }
    let ra = image_of(&report, "src.io/team/a:1");
    assert_eq!(ra.action, Action::Copied);
    assert_eq!(ra.signature, Some(SignOutcome::Signed));
    let rb = image_of(&report, "src.io/team/b:1");
    assert_eq!(rb.action, Action::Copied);
    assert_eq!(rb.signature, None);
    let rc = image_of(&report, "src.io/team/c:1");
    assert_eq!(rc.action, Action::InSync);
    assert_eq!(rc.signature, Some(SignOutcome::AlreadySigned));
}

#[tokio::test]
async fn signer_integrity_error_stops_the_rest() {
    let h = Harness::new();
    let a = add_image(&h.source, "src.io/team/a:1", "a");
    add_image(&h.source, "src.io/team/b:1", "b");
    h.signer.answer(
        "dst.io/mirror/team/a:1",
        Err(StageError::integrity(
            "signatures present, none valid for the key",
        )),
    );

    let report = h
        .run(
            &yaml("- source: src.io/team/a:1\n  sign: true\n- source: src.io/team/b:1\n  sign: true\n"),
            false,
        )
        .await;
    let text = report.render_text();
    assert_eq!(report.status(), Status::SafetyStop, "{text}");
    let ra = image_of(&report, "src.io/team/a:1");
    assert_eq!(ra.action, Action::Stopped);
    assert_eq!(
        ra.message.as_deref(),
        Some("signatures present, none valid for the key")
    );
    // The copy itself had completed before signing.
    assert_eq!(
        h.target_tag("dst.io/mirror/team/a:1").await,
        Some(a.manifest.digest.clone())
    );
    assert_eq!(image_of(&report, "src.io/team/b:1").action, Action::NotRun);
    assert!(h.events_for("dst.io/mirror/team/b").is_empty());
    assert_eq!(h.signer.signed_targets(), vec!["dst.io/mirror/team/a:1"]);
}

#[tokio::test]
async fn signer_transient_error_fails_that_image_only() {
    let h = Harness::new();
    add_image(&h.source, "src.io/team/a:1", "a");
    add_image(&h.source, "src.io/team/b:1", "b");
    h.signer.answer(
        "dst.io/mirror/team/a:1",
        Err(StageError::transient("KMS unreachable")),
    );

    let report = h
        .run(
            &yaml("- source: src.io/team/a:1\n  sign: true\n- source: src.io/team/b:1\n  sign: true\n"),
            false,
        )
        .await;
    assert_eq!(report.status(), Status::Failed);
    let ra = image_of(&report, "src.io/team/a:1");
    assert_eq!(ra.action, Action::Failed);
    assert_eq!(ra.message.as_deref(), Some("KMS unreachable"));
    let rb = image_of(&report, "src.io/team/b:1");
    assert_eq!(rb.action, Action::Copied);
    assert_eq!(rb.signature, Some(SignOutcome::Signed));
}

#[tokio::test]
async fn signing_without_key_is_refused_before_anything() {
    let h = Harness::new();
    add_image(&h.source, "src.io/team/a:1", "a");
    let d = def(&yaml(
        "- source: src.io/team/a:1\n- source: src.io/team/b:1\n  sign: true\n- source: src.io/team/c:1\n  sign: true\n",
    ));
    let err = h
        .orchestrator(false, true)
        .prepare(&d, false)
        .err()
        .unwrap();
    match &err {
        PrepareError::SigningWithoutKey {
            count,
            first,
            first_source,
            ..
        } => {
            assert_eq!(*count, 2);
            assert_eq!(*first, 1);
            assert_eq!(first_source, "src.io/team/b:1");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err
        .to_string()
        .starts_with("t.yaml: signing is enabled for 2 image(s)"));

    // Without signing, no key is needed.
    let d = def(&yaml("- source: src.io/team/a:1\n"));
    assert!(h.orchestrator(false, false).prepare(&d, false).is_ok());
}

#[tokio::test]
async fn signing_without_signer_plugin_is_refused() {
    let h = Harness::new();
    let d = def(&yaml("- source: src.io/team/a:1\n  sign: true\n"));
    let err = h.orchestrator(true, false).prepare(&d, true).err().unwrap();
    match &err {
        PrepareError::SignerUnavailable { count, message, .. } => {
            assert_eq!(*count, 1);
            assert!(message.contains("`cosign`"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// 9. Duplicates
// ---------------------------------------------------------------------------

#[tokio::test]
async fn duplicate_targets_from_different_sources_are_refused() {
    let h = Harness::new();
    let d = def(&yaml(
        "- source: src.io/team/a:1\n\
         - source: src.io/team/a:2\n  tag: \"1\"\n",
    ));
    let err = h.orchestrator(true, true).prepare(&d, false).err().unwrap();
    match &err {
        PrepareError::DuplicateTarget {
            first,
            second,
            first_source,
            second_source,
            target,
            line,
            ..
        } => {
            assert_eq!((*first, *second), (0, 1));
            assert_eq!(first_source, "src.io/team/a:1");
            assert_eq!(second_source, "src.io/team/a:2");
            assert_eq!(target, "dst.io/mirror/team/a:1");
            assert_eq!(*line, Some(4));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn same_entry_twice_is_synced_once() {
    let h = Harness::new();
    add_image(&h.source, "src.io/team/a:1", "a");
    let d = def(&yaml(
        "- source: src.io/team/a:1\n- source: src.io/team/a:1\n",
    ));
    let prepared = h.orchestrator(true, true).prepare(&d, false).unwrap();
    assert_eq!(prepared.targets().len(), 1);
    let report = prepared.run().await;
    assert_eq!(report.images.len(), 1, "{}", report.render_text());
    assert_eq!(report.images[0].action, Action::Copied);
    assert_eq!(h.target.writes(), 3);
}

// ---------------------------------------------------------------------------
// 10. Race: the target tag moves during the run
// ---------------------------------------------------------------------------

#[tokio::test]
async fn target_moved_during_run_is_not_overwritten() {
    let h = Harness::new();
    let a = add_image(&h.source, "src.io/team/a:1", "a");
    add_image(&h.source, "src.io/team/b:1", "b");
    // Someone else's manifest, stored in the target repo by digest only for now.
    let intruder = add_image(&h.target, "dst.io/mirror/team/a", "intruder");
    *h.sink.intruder.lock().unwrap() =
        Some((r("dst.io/mirror/team/a:1"), intruder.manifest.clone()));

    let report = h
        .run(
            &yaml("- source: src.io/team/a:1\n  sign: true\n- source: src.io/team/b:1\n"),
            false,
        )
        .await;
    let text = report.render_text();
    assert_eq!(report.status(), Status::SafetyStop, "{text}");
    let ra = image_of(&report, "src.io/team/a:1");
    assert_eq!(ra.action, Action::Stopped);
    let msg = ra.message.unwrap();
    assert!(msg.contains("changed during the run"), "{msg}");
    assert!(msg.contains(&intruder.manifest.digest.to_string()), "{msg}");
    assert!(msg.contains(&a.manifest.digest.to_string()), "{msg}");
    assert_eq!(
        h.target_tag("dst.io/mirror/team/a:1").await,
        Some(intruder.manifest.digest.clone()),
        "the intruder's tag is kept"
    );
    assert!(!h
        .sink
        .log()
        .iter()
        .any(|e| matches!(e, Event::Manifest { .. })));
    assert_eq!(image_of(&report, "src.io/team/b:1").action, Action::NotRun);
    assert!(h.events_for("dst.io/mirror/team/b").is_empty());
    assert!(h.signer.calls().is_empty());
}

// ---------------------------------------------------------------------------
// 11. Rendered report
// ---------------------------------------------------------------------------

#[tokio::test]
async fn renders_mixed_run() {
    let h = Harness::new();
    add_image(&h.source, "src.io/team/a:1", "a");
    add_image(&h.source, "src.io/team/b:1", "b");
    add_image(&h.target, "dst.io/mirror/team/b:1", "b");
    let c = add_image(&h.source, "src.io/team/c:1", "c");
    h.source
        .corrupt_blob(&r("src.io/team/c:1"), &c.layer.digest, b"layer bytes of C");
    add_image(&h.source, "src.io/team/d:1", "d");
    add_image(&h.source, "src.io/team/e:1", "e");
    add_image(&h.target, "dst.io/mirror/team/e:1", "e");
    h.signer
        .answer("dst.io/mirror/team/b:1", Ok(SignOutcome::AlreadySigned));

    let report = h
        .run(
            &yaml(
                "- source: src.io/team/a:1\n  sign: true\n\
                 - source: src.io/team/b:1\n  sign: true\n\
                 - source: src.io/team/missing:1\n\
                 - source: src.io/team/c:1\n\
                 - source: src.io/team/d:1\n  sign: true\n\
                 - source: src.io/team/e:1\n  sign: true\n",
            ),
            false,
        )
        .await;
    insta::assert_snapshot!(report.render_text());
}

#[tokio::test]
async fn same_entry_twice_is_signed_if_either_listing_asks() {
    let h = Harness::new();
    let a = add_image(&h.source, "src.io/team/a:1", "a");
    let report = h
        .run(
            &yaml("- source: src.io/team/a:1\n- source: src.io/team/a:1\n  sign: true\n"),
            false,
        )
        .await;
    assert_eq!(report.images.len(), 1, "{}", report.render_text());
    assert_eq!(report.images[0].action, Action::Copied);
    assert_eq!(report.images[0].signature, Some(SignOutcome::Signed));
    let calls = h.signer.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].request.digest, a.manifest.digest);
}

fn quick_retries(retries: u32) -> crate::retry::RetryPolicy {
    crate::retry::RetryPolicy {
        retries,
        base_delay: std::time::Duration::from_millis(1),
        max_delay: std::time::Duration::from_millis(2),
        budget: std::time::Duration::from_secs(10),
    }
}

#[tokio::test]
async fn transient_failures_are_retried_and_the_copy_is_exact() {
    let h = Harness::new();
    let img = add_image(&h.source, "busybox:1.36", "flaky");
    // The first call of each kind of target operation fails once: the tag
    // lookup, the blob check, the blob upload, the manifest put; then the
    // next two operations fail whatever they are.
    *h.sink.fail_once.lock().unwrap() =
        ["manifest_digest", "has_blob", "put_blob", "put_manifest"].into();
    *h.sink.flaky.lock().unwrap() = 2;
    let report = h
        .orchestrator(true, true)
        .prepare(&def(&yaml("- source: busybox:1.36\n")), false)
        .unwrap()
        .with_retry(quick_retries(3))
        .run()
        .await;
    assert_eq!(report.status(), Status::Ok, "{}", report.render_text());
    assert_eq!(
        h.target_tag("dst.io/mirror/library/busybox:1.36").await,
        Some(img.manifest.digest.clone())
    );
    assert_eq!(
        *h.sink.flaky.lock().unwrap(),
        0,
        "all injected failures were hit"
    );
    assert!(h.sink.fail_once.lock().unwrap().is_empty());
    // Each kind of operation was retried after its failure.
    let calls = h.sink.calls.lock().unwrap().clone();
    for op in ["manifest_digest", "has_blob", "put_blob", "put_manifest"] {
        assert!(calls[op] >= 2, "{op} not retried: {calls:?}");
    }
    // The blobs and the tag went in once each, whatever failed on the way.
    assert_eq!(h.sink.blob_puts().len(), 2, "config and layer, once each");
}

#[tokio::test]
async fn failures_beyond_the_budget_fail_that_image_only() {
    let h = Harness::new();
    add_image(&h.source, "busybox:1.36", "first");
    let second = add_image(&h.source, "alpine:3", "second");
    // More failures than one image's retries can absorb; then the registry heals.
    *h.sink.flaky.lock().unwrap() = 3;
    let report = h
        .orchestrator(true, true)
        .prepare(
            &def(&yaml("- source: busybox:1.36\n- source: alpine:3\n")),
            false,
        )
        .unwrap()
        .with_jobs(1)
        .with_retry(quick_retries(2))
        .run()
        .await;
    assert_eq!(report.status(), Status::Failed, "{}", report.render_text());
    let first = image_of(&report, "busybox:1.36");
    assert_eq!(first.action, Action::Failed);
    assert!(
        first
            .message
            .as_deref()
            .unwrap()
            .contains("(after 2 retries)"),
        "{:?}",
        first.message
    );
    assert_eq!(
        h.target_tag("dst.io/mirror/library/busybox:1.36").await,
        None
    );
    assert_eq!(image_of(&report, "alpine:3").action, Action::Copied);
    assert_eq!(
        h.target_tag("dst.io/mirror/library/alpine:3").await,
        Some(second.manifest.digest.clone())
    );
}

#[tokio::test]
async fn a_refusal_names_the_registry_that_refused_in_the_report() {
    let h = Harness::new();
    add_image(&h.source, "busybox:1.36", "first");
    add_image(&h.source, "alpine:3", "second");
    let refused = || {
        StageError::new(
            ErrorKind::Unauthorized,
            "denied (registry dst.io refused access)",
        )
        .with_refused_by("dst.io")
    };
    // Planning (the tag lookup) refused: the report says by whom.
    h.sink
        .refuse
        .lock()
        .unwrap()
        .insert("manifest_digest", refused());
    let run = || async {
        h.orchestrator(true, true)
            .prepare(&def(&yaml("- source: busybox:1.36\n")), false)
            .unwrap()
            .with_retry(quick_retries(0))
            .run()
            .await
    };
    let report = run().await;
    let image = image_of(&report, "busybox:1.36");
    assert_eq!(image.action, Action::Failed);
    assert_eq!(image.refused_by.as_deref(), Some("dst.io"));
    assert!(report.refused_by("dst.io"));
    assert!(!report.refused_by("src.io"));
    // A write refused while copying: the same.
    h.sink.refuse.lock().unwrap().clear();
    h.sink.refuse.lock().unwrap().insert("put_blob", refused());
    let report = run().await;
    assert_eq!(
        image_of(&report, "busybox:1.36").refused_by.as_deref(),
        Some("dst.io")
    );
    assert!(report.refused_by("dst.io"));
    // Another failure names no registry, whatever its message says.
    h.sink.refuse.lock().unwrap().insert(
        "put_blob",
        StageError::new(ErrorKind::Transient, "registry dst.io refused access"),
    );
    let report = run().await;
    assert_eq!(image_of(&report, "busybox:1.36").refused_by, None);
    assert!(!report.refused_by("dst.io"));
}

/// `levels` indexes nested in `repo`, each over the one below, the last over
/// an image; tagged `level1` (innermost) to `level<levels>`.
fn nested(reg: &MemoryRegistry, repo: &str, levels: usize) -> RawManifest {
    let img = add_image(reg, &format!("{repo}:leaf"), repo);
    let mut child = img.manifest;
    for level in 1..=levels {
        child = add_index(reg, &format!("{repo}:level{level}"), &[&child]);
    }
    child
}

#[tokio::test]
async fn indexes_nest_at_most_eight_deep() {
    let h = Harness::new();
    // Eight levels of index copy; nine fail that image, past the limit.
    let eight = nested(&h.source, "eight", 8);
    nested(&h.source, "nine", 9);
    let report = h
        .orchestrator(true, true)
        .prepare(
            &def(&yaml(
                "- source: eight:level8
- source: nine:level9
",
            )),
            false,
        )
        .unwrap()
        .run()
        .await;
    let copied = image_of(&report, "eight:level8");
    assert_eq!(copied.action, Action::Copied, "{}", report.render_text());
    assert_eq!(
        h.target_tag("dst.io/mirror/library/eight:level8").await,
        Some(eight.digest)
    );
    let refused = image_of(&report, "nine:level9");
    assert_eq!(refused.action, Action::Failed, "{}", report.render_text());
    assert!(
        refused
            .message
            .as_deref()
            .unwrap()
            .ends_with("is nested 9 levels deep, past the limit of 8"),
        "{:?}",
        refused.message
    );
    assert_eq!(
        h.target_tag("dst.io/mirror/library/nine:level9").await,
        None
    );
}

#[tokio::test]
async fn a_manifest_over_the_sources_limit_fails_that_image() {
    let h = Harness::new();
    let small = add_image(&h.source, "busybox:1.36", "small");
    // A valid index padded past 4 MiB.
    let at = r("alpine:3");
    let json = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_INDEX}\",\"manifests\":[],\"annotations\":{{\"pad\":\"{}\"}}}}",
        "x".repeat(crate::manifest::DEFAULT_MAX_MANIFEST_BYTES)
    );
    let big = RawManifest::new(None, Bytes::from(json), None).unwrap();
    h.source.add_manifest(&at, &big, at.tag());
    let report = h
        .orchestrator(true, true)
        .prepare(
            &def(&yaml("- source: busybox:1.36\n- source: alpine:3\n")),
            false,
        )
        .unwrap()
        .run()
        .await;
    let failed = image_of(&report, "alpine:3");
    assert_eq!(failed.action, Action::Failed, "{}", report.render_text());
    assert_eq!(
        failed.message.as_deref(),
        Some(
            format!(
                "source: manifest {} is {} bytes, over the 4 MiB limit",
                big.digest,
                big.bytes.len()
            )
            .as_str()
        )
    );
    assert_eq!(h.target_tag("dst.io/mirror/library/alpine:3").await, None);
    assert_eq!(
        h.target_tag("dst.io/mirror/library/busybox:1.36").await,
        Some(small.manifest.digest)
    );
}

/// A transform that appends `suffix` to the tag it is given, as a plugin
/// might, without checking the result.
struct Suffix(&'static str);

impl Transform for Suffix {
    fn apply(&self, input: TransformInput<'_>) -> Result<ImageRef, StageError> {
        let target = input.target.expect("after retag");
        let tag = format!("{}{}", target.tag().unwrap_or_default(), self.0);
        Ok(target.with_tag(&tag))
    }
}

#[tokio::test]
async fn a_transform_making_an_invalid_target_is_an_input_error() {
    let h = Harness::new();
    add_image(&h.source, "busybox:1.36", "t");
    for (suffix, says) in [
        (
            " final!",
            "t.yaml:3: images[0] (source `busybox:1.36`): the transforms made an invalid target: `dst.io/mirror/library/busybox:1.36 final!`: tag `1.36 final!` is invalid: a tag is 1 to 128 characters of [A-Za-z0-9_.-] and does not start with `.` or `-`",
        ),
        ("", "PASS"),
    ] {
        let mut registry = h.registry(true);
        registry
            .insert(RegisteredStage::new("suffix", fixed_transform(Arc::new(Suffix(suffix)))))
            .unwrap();
        let orchestrator = Orchestrator::new(registry, RunContext::default());
        let prepared = orchestrator.prepare(
            &def(&yaml(
                "- source: busybox:1.36\npipeline:\n  transforms: [ { plugin: retag }, { plugin: suffix } ]\n",
            )),
            false,
        );
        match prepared {
            Err(e) => assert_eq!(e.to_string(), says, "{suffix:?}"),
            Ok(p) => {
                assert_eq!(says, "PASS", "{suffix:?} was accepted");
                let report = p.run().await;
                assert_eq!(report.status(), Status::Ok, "{}", report.render_text());
            }
        }
    }
    // The refused definition touched nothing; the accepted one wrote its
    // blobs and its tag.
    assert_eq!(h.sink.log().len(), 3, "{:?}", h.sink.log());
}

/// A source whose first `failing` calls of `fetch_blob` fail with a
/// transient error (a dropped connection); every call is counted.
struct FlakyBlobSource {
    inner: Arc<MemoryRegistry>,
    failing: std::sync::atomic::AtomicU32,
    calls: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl Source for FlakyBlobSource {
    async fn resolve(&self, reference: &ImageRef) -> Result<RawManifest, StageError> {
        self.inner.resolve(reference).await
    }
    async fn fetch_manifest(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<RawManifest, StageError> {
        Source::fetch_manifest(self.inner.as_ref(), repository, descriptor).await
    }
    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.calls.fetch_add(1, SeqCst);
        if self
            .failing
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StageError::transient("connection reset (injected)"));
        }
        Source::fetch_blob(self.inner.as_ref(), repository, descriptor).await
    }
}

/// A guard that reads a blob of the image from the source (as a signature
/// check reads its signatures) and lets it be copied when the read works.
struct ReadingGuard {
    blob: Descriptor,
}

#[async_trait]
impl Guard for ReadingGuard {
    async fn check(&self, input: GuardInput<'_>) -> Result<Verdict, StageError> {
        let source = input.source.expect("built-in guards get the source");
        let repo = input.image.source.clone();
        let mut stream = source.fetch_blob(&repo, &self.blob).await?;
        while let Some(chunk) = stream.next().await {
            chunk.map_err(|e| StageError::transient(e.to_string()))?;
        }
        Ok(Verdict::Copy)
    }
}

/// A guard's reads from the source pass the registry's gate and are retried
/// on their own, like the orchestrator's: a read that fails twice and then
/// works lets the image be copied; one that keeps failing fails that image
/// alone, after the retry budget, as a transient failure.
#[tokio::test(start_paused = true)]
async fn a_guards_source_reads_are_retried() {
    use std::sync::atomic::Ordering::SeqCst;
    for (failing, copied) in [(2, true), (u32::MAX, false)] {
        let h = Harness::new();
        let img = add_image(&h.source, "src.io/team/app:1.0", "app");
        let source = Arc::new(FlakyBlobSource {
            inner: h.source.clone(),
            failing: failing.into(),
            calls: 0.into(),
        });
        let mut stages = h.registry(false);
        stages
            .insert(RegisteredStage::new("flaky", fixed_source(source.clone())))
            .unwrap();
        stages
            .insert(RegisteredStage::new(
                "reads",
                fixed_guard(Arc::new(ReadingGuard {
                    blob: img.config.clone(),
                })),
            ))
            .unwrap();
        let y = "targetRepoPrefix: dst.io/mirror/\npipeline:\n  source: { plugin: flaky }\n  guards: [ { plugin: reads } ]\nimages:\n- source: src.io/team/app:1.0\n";
        let report = Orchestrator::new(stages, RunContext::default())
            .prepare(&def(y), false)
            .unwrap()
            .run()
            .await;
        let rep = image_of(&report, "src.io/team/app:1.0");
        if copied {
            assert_eq!(rep.action, Action::Copied, "{}", report.render_text());
            // Two failed reads, the third works; then the copy reads the
            // config and the layer.
            assert_eq!(source.calls.load(SeqCst), 3 + 2);
        } else {
            assert_eq!(report.status(), Status::Failed, "{}", report.render_text());
            assert_eq!(rep.action, Action::Failed, "{}", report.render_text());
            // The default policy: 7 tries, then the image fails; nothing written.
            assert_eq!(source.calls.load(SeqCst), 7);
            assert_eq!(h.target.writes(), 0);
        }
    }
}

/// A signer that writes a small blob and a manifest tagged `signed` next to
/// the image, through the sink it is handed.
struct WritingSigner {
    blob: &'static [u8],
}

#[async_trait]
impl Signer for WritingSigner {
    async fn sign(
        &self,
        request: &SignRequest,
        sink: &Arc<dyn Sink>,
    ) -> Result<SignOutcome, StageError> {
        let desc = Descriptor::new(
            "application/octet-stream",
            Digest::sha256_of(self.blob),
            self.blob.len() as u64,
        );
        let chunks: Vec<std::io::Result<Bytes>> = self
            .blob
            .chunks(3)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        sink.put_blob(
            &request.target,
            &desc,
            Box::pin(futures_util::stream::iter(chunks)),
        )
        .await?;
        sink.put_manifest(
            &request.target,
            &ManifestTarget::Tag("signed".into()),
            &request.manifest,
        )
        .await?;
        Ok(SignOutcome::Signed)
    }
}

/// A signer's requests through the sink pass the gate and are retried on
/// their own: its blob upload and its manifest put each fail once, and the
/// image is signed, the blob stored whole (sent again from memory).
#[tokio::test(start_paused = true)]
async fn a_signers_writes_are_retried() {
    let h = Harness::new();
    let img = add_image(&h.source, "src.io/team/app:1.0", "app");
    let y = yaml("- source: src.io/team/app:1.0\n  sign: true\n");
    // Copied first, without a signer: the signer's writes are the only ones.
    let report = h
        .orchestrator(false, false)
        .prepare(&def(&yaml("- source: src.io/team/app:1.0\n")), false)
        .unwrap()
        .run()
        .await;
    assert_eq!(report.status(), Status::Ok, "{}", report.render_text());
    let blob: &'static [u8] = b"a signature payload, sent in chunks";
    let mut stages = h.registry(false);
    stages
        .insert(RegisteredStage::new(
            "cosign",
            fixed_signer(Arc::new(WritingSigner { blob })),
        ))
        .unwrap();
    h.sink
        .fail_once
        .lock()
        .unwrap()
        .extend(["put_blob", "put_manifest"]);
    let context = RunContext {
        signing_key: Some("env://KEY".to_string()),
        ..RunContext::default()
    };
    let report = Orchestrator::new(stages, context)
        .prepare(&def(&y), false)
        .unwrap()
        .run()
        .await;
    let rep = image_of(&report, "src.io/team/app:1.0");
    assert_eq!(
        rep.signature,
        Some(SignOutcome::Signed),
        "{}",
        report.render_text()
    );
    assert_eq!(report.status(), Status::Ok, "{}", report.render_text());
    let calls = h.sink.calls.lock().unwrap().clone();
    assert_eq!(calls.get("put_blob"), Some(&(2 + 2)), "{calls:?}");
    assert_eq!(calls.get("put_manifest"), Some(&(1 + 2)), "{calls:?}");
    let repo = r("dst.io/mirror/team/app");
    let desc = Descriptor::new(
        "application/octet-stream",
        Digest::sha256_of(blob),
        blob.len() as u64,
    );
    let mut stored = Vec::new();
    let mut stream = Sink::fetch_blob(h.target.as_ref(), &repo, &desc)
        .await
        .unwrap();
    while let Some(chunk) = stream.next().await {
        stored.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(stored, blob);
    assert_eq!(
        h.target_tag("dst.io/mirror/team/app:signed").await,
        Some(img.manifest.digest.clone())
    );
}

/// A signer's blob larger than what is kept in memory to send again goes
/// through once, whole (the bytes read to find out are sent in front of the
/// rest), and a failure of it is not retried.
#[tokio::test(start_paused = true)]
async fn a_signers_large_blob_is_sent_once_and_whole() {
    for fail in [false, true] {
        let h = Harness::new();
        add_image(&h.source, "src.io/team/app:1.0", "app");
        let report = h
            .orchestrator(false, false)
            .prepare(&def(&yaml("- source: src.io/team/app:1.0\n")), false)
            .unwrap()
            .run()
            .await;
        assert_eq!(report.status(), Status::Ok, "{}", report.render_text());
        let blob: &'static [u8] = Box::leak(
            (0..(5u32 << 20))
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>()
                .into_boxed_slice(),
        );
        let mut stages = h.registry(false);
        stages
            .insert(RegisteredStage::new(
                "cosign",
                fixed_signer(Arc::new(WritingSigner { blob })),
            ))
            .unwrap();
        if fail {
            h.sink.fail_once.lock().unwrap().insert("put_blob");
        }
        let context = RunContext {
            signing_key: Some("env://KEY".to_string()),
            ..RunContext::default()
        };
        let report = Orchestrator::new(stages, context)
            .prepare(
                &def(&yaml("- source: src.io/team/app:1.0\n  sign: true\n")),
                false,
            )
            .unwrap()
            .run()
            .await;
        let rep = image_of(&report, "src.io/team/app:1.0");
        let calls = h.sink.calls.lock().unwrap().clone();
        // The copy's two blobs, then the signer's one try.
        assert_eq!(calls.get("put_blob"), Some(&3), "{calls:?}");
        let repo = r("dst.io/mirror/team/app");
        let desc = Descriptor::new(
            "application/octet-stream",
            Digest::sha256_of(blob),
            blob.len() as u64,
        );
        if fail {
            assert_eq!(report.status(), Status::Failed, "{}", report.render_text());
            assert!(!h.target_has_blob("dst.io/mirror/team/app", &desc).await);
        } else {
            assert_eq!(
                rep.signature,
                Some(SignOutcome::Signed),
                "{}",
                report.render_text()
            );
            let mut stored = Vec::new();
            let mut stream = Sink::fetch_blob(h.target.as_ref(), &repo, &desc)
                .await
                .unwrap();
            while let Some(chunk) = stream.next().await {
                stored.extend_from_slice(&chunk.unwrap());
            }
            assert!(stored == blob, "the large blob was not stored whole");
        }
    }
}

/// docs/definition.md (`carrySignatures`): "At most 256 referrers of one
/// digest are carried." Of 300 listed in the source's referrers tag, the
/// first 256 referrer manifests are put in the target, and no other.
#[tokio::test]
async fn at_most_256_referrers_of_one_digest_are_carried() {
    let h = Harness::new();
    let img = add_image(&h.source, "src.io/team/app:1.0", "app");
    let at = r("src.io/team/app");
    let empty = h
        .source
        .add_blob(&at, "application/vnd.oci.empty.v1+json", b"{}");
    let subject = desc_json(&img.manifest.descriptor());
    let referrers: Vec<RawManifest> = (0..300)
        .map(|i| {
            let json = format!(
                "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\"artifactType\":\"application/example\",\"config\":{},\"layers\":[],\"subject\":{subject},\"annotations\":{{\"n\":\"{i}\"}}}}",
                desc_json(&empty)
            );
            let m = RawManifest::new(None, Bytes::from(json), None).unwrap();
            h.source.add_manifest(&at, &m, None);
            m
        })
        .collect();
    let tag = crate::digest::AttachedTag::Referrers.of(&img.manifest.digest);
    let refs: Vec<&RawManifest> = referrers.iter().collect();
    add_index(&h.source, &format!("src.io/team/app:{tag}"), &refs);

    let y = yaml("- source: src.io/team/app:1.0\n  carrySignatures: true\n");
    let report = h.run(&y, false).await;
    assert_eq!(report.status(), Status::Ok, "{}", report.render_text());
    let target = r("dst.io/mirror/team/app");
    let mut carried = Vec::new();
    for m in &referrers {
        let pinned = target.with_digest(m.digest.clone());
        if h.target.manifest_digest(&pinned).await.unwrap().is_some() {
            carried.push(m.digest.clone());
        }
    }
    let first: Vec<Digest> = referrers[..256].iter().map(|m| m.digest.clone()).collect();
    assert_eq!(carried.len(), 256);
    assert_eq!(carried, first);
    // The target's referrers tag lists those 256, not the source's 300.
    let index = Sink::fetch_manifest(h.target.as_ref(), &target.with_tag(&tag))
        .await
        .unwrap()
        .unwrap();
    let Ok(crate::manifest::Manifest::Index { manifests }) = index.parse() else {
        panic!("the referrers tag is not an index");
    };
    let mut listed: Vec<String> = manifests.iter().map(|d| d.digest.to_string()).collect();
    let mut want: Vec<String> = first.iter().map(|d| d.to_string()).collect();
    listed.sort();
    want.sort();
    assert_eq!(listed, want);
}
