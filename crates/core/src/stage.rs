//! The six stage traits the orchestrator drives, one per `StageKind`, and the
//! error every stage returns.
//!
//! Stages are built by the factories of [`crate::catalogue`] from a typed
//! config and their kind's context ([`crate::context`]); they never see the
//! definition file itself: what they learn of an image is an [`ImageEntry`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::digest::{ByteStream, Digest};
use crate::manifest::{Descriptor, RawManifest};
use crate::reference::ImageRef;

/// What went wrong in a stage, classified for the orchestrator's decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The image, manifest or blob does not exist.
    NotFound,
    /// The registry refused our credentials (or we had none).
    Unauthorized,
    /// Content does not match its digest or size: a safety stop.
    Integrity,
    /// Content is malformed or unsupported (bad manifest, schema 1, ...).
    Invalid,
    /// Network, I/O or server failure; trying again later may succeed.
    Transient,
    /// The stage's configuration is wrong.
    Config,
    /// Not attempted: the run stopped (a safety stop elsewhere, or an
    /// interruption) before this operation started. Never retried.
    Cancelled,
    /// The far side refused one of our writes as inconsistent with what it
    /// holds: a manifest naming a blob or child it does not have yet, a blob
    /// whose digest it computed otherwise than we did (we verified the bytes
    /// we sent). Never a safety stop: the writer checks again what the write
    /// references, puts what is missing and retries; if it persists the image
    /// fails with the registry's words.
    Consistency,
    /// A bug in a stage (a plugin panicked): not retried, fails the image,
    /// naming the plugin.
    Internal,
}

/// How the far side pushed back on a request, for per-registry flow control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pushback {
    /// It answered "slow down" (429, 503): every request to it waits (its
    /// `Retry-After`, else a backoff) and fewer run at once.
    Busy,
    /// It did not answer in time: fewer requests run at once.
    Silent,
}

/// An error from a stage: a kind the orchestrator acts on, a message for people.
/// The message must never contain secrets.
#[derive(Debug, Clone)]
pub struct StageError {
    pub kind: ErrorKind,
    pub message: String,
    /// How long the far side asked to be left alone before the next try (a
    /// registry's `Retry-After` on 429 or 503). Retries wait at least this
    /// long, and give up at once when it reaches past the retry budget.
    pub retry_after: Option<Duration>,
    /// Set when the failure says the far side is overloaded (see
    /// [`Pushback`]); the orchestrator slows every request to it.
    pub pushback: Option<Pushback>,
    /// The registry (its host as the image reference names it) that refused
    /// access, on an [`ErrorKind::Unauthorized`] error of a registry source
    /// or sink. The orchestrator copies it into the image's report, where the
    /// CLI reads it to name its credential flags when that registry is the
    /// target; nothing reads the message for it.
    pub refused_by: Option<String>,
}

impl StageError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> StageError {
        StageError {
            kind,
            message: message.into(),
            retry_after: None,
            pushback: None,
            refused_by: None,
        }
    }

    /// This error, saying that `registry` refused access (see
    /// [`StageError::refused_by`]).
    pub fn with_refused_by(mut self, registry: impl Into<String>) -> StageError {
        self.refused_by = Some(registry.into());
        self
    }

    /// This error, saying how the far side pushed back.
    pub fn with_pushback(mut self, pushback: Pushback) -> StageError {
        self.pushback = Some(pushback);
        self
    }

    /// Whether the retry policy tries this again: transient failures, and
    /// writes the far side found inconsistent (after a re-check).
    pub fn is_retried(&self) -> bool {
        matches!(self.kind, ErrorKind::Transient | ErrorKind::Consistency)
    }

    /// This error, with the wait the far side asked for before a retry.
    pub fn with_retry_after(mut self, wait: Duration) -> StageError {
        self.retry_after = Some(wait);
        self
    }
    pub fn not_found(message: impl Into<String>) -> StageError {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn integrity(message: impl Into<String>) -> StageError {
        Self::new(ErrorKind::Integrity, message)
    }
    pub fn transient(message: impl Into<String>) -> StageError {
        Self::new(ErrorKind::Transient, message)
    }
    pub fn invalid(message: impl Into<String>) -> StageError {
        Self::new(ErrorKind::Invalid, message)
    }
    pub fn config(message: impl Into<String>) -> StageError {
        Self::new(ErrorKind::Config, message)
    }
    pub fn consistency(message: impl Into<String>) -> StageError {
        Self::new(ErrorKind::Consistency, message)
    }
    pub fn internal(message: impl Into<String>) -> StageError {
        Self::new(ErrorKind::Internal, message)
    }

    /// Classifies an I/O error, recognising content mismatches raised by
    /// [`crate::digest::VerifyingStream`].
    pub fn from_io(context: &str, err: &std::io::Error) -> StageError {
        if let Some(m) = crate::digest::ContentMismatch::from_io(err) {
            return StageError::integrity(format!("{context}: {m}"));
        }
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::InvalidData => ErrorKind::Invalid,
            _ => ErrorKind::Transient,
        };
        StageError::new(kind, format!("{context}: {}", error_chain(err)))
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StageError {}

/// An error with its causes, `: `-separated, each said once: "error decoding
/// response body" says why ("operation timed out"), and "error sending
/// request" names the refused connection or the untrusted certificate.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    // Bounded: error chains are short, and a cyclic one stops here.
    for _ in 0..16 {
        let Some(s) = cur else { break };
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Where images come from: resolves references and serves manifests and blobs.
#[async_trait]
pub trait Source: Send + Sync {
    /// Fetches the manifest `reference` points at (by tag or digest). When the
    /// reference carries a digest the returned manifest must match it.
    async fn resolve(&self, reference: &ImageRef) -> Result<RawManifest, StageError>;

    /// The digest `reference` resolves to, as cheaply as the source can tell
    /// (a registry: one HEAD request, which Docker Hub does not count as a
    /// pull). It is not verified here: before anything is copied or signed the
    /// orchestrator fetches the manifest and checks it against this digest.
    async fn digest(&self, reference: &ImageRef) -> Result<Digest, StageError> {
        Ok(self.resolve(reference).await?.digest)
    }

    /// Fetches a manifest of `repository` by digest (children of an index).
    async fn fetch_manifest(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<RawManifest, StageError>;

    /// Streams a blob of `repository`. The orchestrator verifies the bytes
    /// against the descriptor; sources may verify too.
    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError>;

    /// The tags of `repository` (its tag or digest, if any, is ignored), in
    /// the source's order, for entries that select tags by a rule. A source
    /// that cannot list returns a [`ErrorKind::Config`] error (the default).
    async fn list_tags(&self, repository: &ImageRef) -> Result<Vec<String>, StageError> {
        Err(StageError::config(format!(
            "{repository}: this source cannot list tags, so its entries cannot select tags by a rule"
        )))
    }

    /// The referrers of `digest` in `repository` through the OCI 1.1
    /// referrers API (`GET /v2/<name>/referrers/<digest>`): the descriptors
    /// of the index it answers, or `None` when the source has no such API
    /// (then the referrers tag schema, `sha256-<hex>`, is read instead).
    async fn referrers(
        &self,
        repository: &ImageRef,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, StageError> {
        let _ = (repository, digest);
        Ok(None)
    }

    /// The largest manifest this source serves. The orchestrator refuses a
    /// larger one whatever the source does; a source should refuse it before
    /// reading it whole (a registry can answer with gigabytes).
    fn max_manifest_bytes(&self) -> usize {
        crate::manifest::DEFAULT_MAX_MANIFEST_BYTES
    }
}

/// Where a manifest is put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestTarget {
    /// Under its digest only (children of an index).
    Digest,
    /// Under a tag.
    Tag(String),
}

/// An upload a sink opened with [`Sink::begin_blob`]: where the bytes go (a
/// registry's upload location), or nothing for a sink that opens none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upload(pub Option<String>);

/// What the orchestrator says of a target repository when it asks the sink
/// to make it ready ([`Sink::prepare_repository`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepositoryUse {
    /// A dry run: say what would be done, change nothing.
    pub dry_run: bool,
    /// The run may write attached tags into it (`sha256-<hex>.sig`, `.att`,
    /// `.sbom` and the referrers tag `sha256-<hex>`, see
    /// [`crate::digest::AttachedTag`]), which move when signatures or
    /// referrers are added: some image going there has `sign: true` or
    /// `carrySignatures: true`.
    pub attached_tags: bool,
}

impl RepositoryUse {
    /// A use that writes (`dry_run` false) no attached tags.
    pub fn new() -> RepositoryUse {
        RepositoryUse::default()
    }

    /// This use, in a dry run or not.
    pub fn with_dry_run(mut self, dry_run: bool) -> RepositoryUse {
        self.dry_run = dry_run;
        self
    }

    /// This use, writing attached tags or not.
    pub fn with_attached_tags(mut self, attached_tags: bool) -> RepositoryUse {
        self.attached_tags = attached_tags;
        self
    }
}

/// Where images go: says what exists and receives blobs and manifests.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Makes the repository of `repository` (a reference into it; its tag
    /// or digest is not the point) ready to be written, for a target that
    /// needs more than a push: ECR's repositories created on demand. The
    /// orchestrator calls it once per target repository per run, before
    /// its first write there (in a dry run too, with
    /// [`RepositoryUse::dry_run`]: then nothing may change), only for
    /// images it copies; an error fails the image, and the next image for
    /// that repository asks again. Returns a note for people, shown in the
    /// report and logged ("created repository X"; in a dry run "would
    /// create repository X"), or `None` when nothing was (or would be)
    /// done. The default does nothing.
    async fn prepare_repository(
        &self,
        repository: &ImageRef,
        how: &RepositoryUse,
    ) -> Result<Option<String>, StageError> {
        let _ = (repository, how);
        Ok(None)
    }

    /// The digest the target tag (or digest) currently resolves to, `None` if absent.
    async fn manifest_digest(&self, target: &ImageRef) -> Result<Option<Digest>, StageError>;

    /// Fetches a manifest of the target by tag or digest, `None` if absent
    /// (used by signers to read existing signatures).
    async fn fetch_manifest(&self, target: &ImageRef) -> Result<Option<RawManifest>, StageError>;

    /// Streams a blob already stored in the target repository.
    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError>;

    /// Whether the target repository already holds this blob.
    async fn has_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<bool, StageError>;

    /// Stores a blob. The stream is already verified against the descriptor by
    /// the orchestrator and fails before its end on a mismatch: a sink must
    /// commit the blob only after the stream ended without error.
    async fn put_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        content: ByteStream,
    ) -> Result<(), StageError>;

    /// Opens an upload of a blob (a registry's upload session), so that
    /// opening it is retried on its own and a failed upload does not open
    /// twice for nothing. The default opens none: [`Sink::put_blob_into`]
    /// then does it all through [`Sink::put_blob`].
    async fn begin_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<Upload, StageError> {
        let _ = (repository, descriptor);
        Ok(Upload::default())
    }

    /// Stores a blob into the upload [`Sink::begin_blob`] opened, on the
    /// same terms as [`Sink::put_blob`]. After a failure the upload is not
    /// used again.
    async fn put_blob_into(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        upload: Upload,
        content: ByteStream,
    ) -> Result<(), StageError> {
        let _ = upload;
        self.put_blob(repository, descriptor, content).await
    }

    /// Makes a blob present in `to` by mounting it from `from`, another
    /// repository of the same target (a cross-repository mount). `Ok(false)`
    /// when the target cannot (the orchestrator then transfers the blob).
    async fn mount_blob(
        &self,
        from: &ImageRef,
        to: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<bool, StageError> {
        let _ = (from, to, descriptor);
        Ok(false)
    }

    /// The referrers of `digest` in the target `repository` through the OCI
    /// 1.1 referrers API, or `None` when the target has no such API (then
    /// referrers are written to the referrers tag schema's index).
    async fn referrers(
        &self,
        repository: &ImageRef,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, StageError> {
        let _ = (repository, digest);
        Ok(None)
    }

    /// Stores a manifest whose blobs (or children) are all present.
    async fn put_manifest(
        &self,
        repository: &ImageRef,
        target: &ManifestTarget,
        manifest: &RawManifest,
    ) -> Result<(), StageError>;
}

/// One image of the run as transforms and guards see it: what the definition
/// says of the image itself, nothing of other stages' settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImageEntry {
    /// The source, as written (by tag or digest).
    pub source: ImageRef,
    /// The entry's `tag:`, a re-tag (required for digest sources).
    pub tag: Option<String>,
    /// The target prefix that applies to this image (`targetRepoPrefix`).
    pub target_prefix: String,
}

impl ImageEntry {
    /// An entry for `source`, under `target_prefix`, without a re-tag.
    pub fn new(source: ImageRef, target_prefix: impl Into<String>) -> ImageEntry {
        ImageEntry {
            source,
            tag: None,
            target_prefix: target_prefix.into(),
        }
    }

    /// This entry, re-tagged to `tag`.
    pub fn with_tag(mut self, tag: impl Into<String>) -> ImageEntry {
        self.tag = Some(tag.into());
        self
    }
}

/// What the transform chain works on: one image of the run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TransformInput<'a> {
    pub image: &'a ImageEntry,
    /// The target computed by the previous transform, if any.
    pub target: Option<ImageRef>,
}

impl<'a> TransformInput<'a> {
    pub fn new(image: &'a ImageEntry, target: Option<ImageRef>) -> TransformInput<'a> {
        TransformInput { image, target }
    }
}

/// Computes (or rewrites) the target reference of an image.
pub trait Transform: Send + Sync {
    fn apply(&self, input: TransformInput<'_>) -> Result<ImageRef, StageError>;
}

/// What a guard decides from.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GuardInput<'a> {
    pub image: &'a ImageEntry,
    pub source_digest: &'a Digest,
    pub target: &'a ImageRef,
    /// What the target tag holds now, `None` when absent.
    pub target_digest: Option<&'a Digest>,
    /// What the source reference itself resolves to, when a platform filter
    /// made `source_digest` the digest of a manifest of our making (what
    /// upstream signatures sign); `None` when they are the same.
    pub upstream_digest: Option<&'a Digest>,
    /// The image's source, for guards that read more of it than its digest
    /// (signatures, referrers). Reads only. `None` for guards from plugin
    /// libraries (the blocking boundary does not carry it).
    pub source: Option<&'a dyn Source>,
}

impl std::fmt::Debug for dyn Source + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Source")
    }
}

impl<'a> GuardInput<'a> {
    pub fn new(
        image: &'a ImageEntry,
        source_digest: &'a Digest,
        target: &'a ImageRef,
        target_digest: Option<&'a Digest>,
    ) -> GuardInput<'a> {
        GuardInput {
            image,
            source_digest,
            target,
            target_digest,
            upstream_digest: None,
            source: None,
        }
    }

    /// The digest the source itself resolves to: `upstream_digest` when a
    /// platform filter is at work, else `source_digest`.
    pub fn upstream(&self) -> &'a Digest {
        self.upstream_digest.unwrap_or(self.source_digest)
    }

    /// This input, saying what the source itself resolves to (see
    /// [`GuardInput::upstream_digest`]).
    pub fn with_upstream_digest(mut self, digest: &'a Digest) -> GuardInput<'a> {
        self.upstream_digest = Some(digest);
        self
    }

    /// This input, with the image's source to read from.
    pub fn with_source(mut self, source: &'a dyn Source) -> GuardInput<'a> {
        self.source = Some(source);
        self
    }
}

/// A guard's decision. When several guards run, the strictest wins
/// (`Stop` over `Skip` over `Copy`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Copy,
    Skip { reason: String },
    Stop { reason: String },
}

/// Decides whether an image is copied, skipped or stops the run.
#[async_trait]
pub trait Guard: Send + Sync {
    async fn check(&self, input: GuardInput<'_>) -> Result<Verdict, StageError>;
}

/// What a signer is asked to do for one image in the target.
#[derive(Clone, Debug)]
pub struct SignRequest {
    /// The target reference (tagged) the image was synced to.
    pub target: ImageRef,
    /// The verified digest the target holds (equal to the source's).
    pub digest: Digest,
    /// The manifest at that digest.
    pub manifest: RawManifest,
    /// Report what would happen, write nothing.
    pub dry_run: bool,
    /// Signature layers carried verbatim from the source's `.sig`, and the
    /// referrer manifests carried from the source (upstream provenance): not
    /// a conflict when they do not verify with our key.
    pub upstream: Vec<Descriptor>,
}

/// What a signer did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignOutcome {
    /// A signature valid for the key was already there: nothing written.
    AlreadySigned,
    /// A signature valid for the key was already there, found only as a
    /// Sigstore bundle (cosign v3's format): nothing written.
    AlreadySignedBundle,
    /// A signature was written.
    Signed,
    /// Dry run: a signature would be written.
    WouldSign,
}

/// Signs images in the target after they are verified there. A signer reads
/// and writes signatures through the target's sink. Returning an
/// [`ErrorKind::Integrity`] error (for example: signatures present, none valid
/// for the key) is a safety stop.
#[async_trait]
pub trait Signer: Send + Sync {
    async fn sign(
        &self,
        request: &SignRequest,
        sink: &Arc<dyn Sink>,
    ) -> Result<SignOutcome, StageError>;
}

/// Chooses which tags of a repository to mirror, for an entry naming a
/// repository instead of an image (`tags:`). It sees every tag the source
/// listed except those attaching artifacts to a digest
/// ([`crate::digest::AttachedTag`]), and returns those to mirror in the
/// order they are to be worked on. Reads nothing itself.
pub trait Selector: Send + Sync {
    fn select(&self, tags: &[String]) -> Result<Vec<String>, StageError>;
    /// The rule in one line, for messages ("selected no tag of 37 with …").
    fn describe(&self) -> String;
}

/// Every kind of stage, declared once. Calls the macro `$m` with one entry
/// per kind: `Variant { ctor, build, position, context, factory }` — the
/// variant of [`StageKind`] (and of the core's `Factory`, the plugin kit's
/// `PluginFactory`), its lowercase name (the definition's key, the
/// constructor `Factory::source`), the registry's builder, its place in the
/// pipeline (what [`StageKind`] orders by), its context type and its factory
/// trait. The core's factories, [`StageKind`] and its name, the kit's
/// factories and panic fences, the host's adapters and the schema's stage
/// entries are generated from it; a new kind added here fails to compile
/// wherever something about it must still be written (docs/ARCHITECTURE.md,
/// "Add a stage kind").
///
/// The entries' order is that of the plugin ABI's `PluginFactory` variants:
/// append, never reorder (that is an ABI change).
#[macro_export]
macro_rules! stage_kinds {
    ($m:ident) => {
        $m! {
            Source { ctor: source, build: build_source, position: 0, context: SourceContext, factory: SourceFactory }
            Selector { ctor: selector, build: build_selector, position: 1, context: SelectorContext, factory: SelectorFactory }
            Sink { ctor: sink, build: build_sink, position: 4, context: SinkContext, factory: SinkFactory }
            Transform { ctor: transform, build: build_transform, position: 2, context: TransformContext, factory: TransformFactory }
            Guard { ctor: guard, build: build_guard, position: 3, context: GuardContext, factory: GuardFactory }
            Signer { ctor: signer, build: build_signer, position: 5, context: SignerContext, factory: SignerFactory }
        }
    };
}

macro_rules! stage_kind_enum {
    ($($variant:ident { ctor: $ctor:ident, build: $build:ident, position: $pos:literal, context: $cx:ident, factory: $factory:ident })*) => {
        /// The kinds of stage ([`stage_kinds!`]), ordered as in the pipeline.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(rename_all = "lowercase")]
        pub enum StageKind {
            $($variant = $pos,)*
        }

        impl StageKind {
            /// Every kind, in declaration order ([`stage_kinds!`]).
            pub const ALL: &'static [StageKind] = &[$(StageKind::$variant,)*];

            /// The kind's name, as the definition writes it (`source`, …).
            pub fn name(self) -> &'static str {
                match self {
                    $(StageKind::$variant => stringify!($ctor),)*
                }
            }
        }
    };
}

stage_kinds!(stage_kind_enum);

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
