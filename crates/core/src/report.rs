//! The outcome of a run, per image, and its text rendering.

use std::fmt::Write as _;

use serde::Serialize;

use crate::digest::Digest;
use crate::stage::SignOutcome;

/// What happened to one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Copied to the target in this run.
    Copied,
    /// Dry run: would be copied.
    WouldCopy,
    /// The target already holds the source digest: nothing written.
    InSync,
    /// A safety stop: the target or the content is not what it must be.
    Stopped,
    /// A registry, network or input failure for this image.
    Failed,
    /// Not attempted because a safety stop halted all writing.
    NotRun,
}

impl Action {
    pub fn label(self) -> &'static str {
        match self {
            Action::Copied => "copied",
            Action::WouldCopy => "would copy",
            Action::InSync => "already in sync",
            Action::Stopped => "STOPPED",
            Action::Failed => "FAILED",
            Action::NotRun => "not run",
        }
    }
}

/// One image's line in the report.
#[derive(Clone, Debug, Serialize)]
pub struct ImageReport {
    pub index: usize,
    pub source: String,
    pub target: String,
    /// The digest the source resolved to.
    pub digest: Option<Digest>,
    /// What the target tag held before the run, when it differs from `digest`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_digest: Option<Digest>,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignOutcome>,
    /// Bytes of blobs transferred for this image.
    pub bytes: u64,
    /// Time spent on this image (planning, copying, signing), in milliseconds.
    pub duration_ms: u64,
    /// Tags carried along from the source (signatures, attestations, SBOMs, referrers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub carried: Vec<String>,
    /// What the sink did (or, in a dry run, would do) to make the target
    /// repository ready ("created repository X", "would create repository
    /// X"): [`crate::stage::Sink::prepare_repository`]'s note.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The kind of the error that ended this image, when one did: what the
    /// CLI turns into a hint about its flags.
    #[serde(skip)]
    pub error: Option<crate::stage::ErrorKind>,
    /// The registry that refused access, when that ended this image
    /// ([`crate::stage::StageError::refused_by`]).
    #[serde(skip)]
    pub refused_by: Option<String>,
}

impl ImageReport {
    /// The report of image `index`, from `source` to `target`, before
    /// anything is known: failed until planning says otherwise.
    pub fn new(index: usize, source: String, target: String) -> ImageReport {
        ImageReport {
            index,
            source,
            target,
            digest: None,
            target_digest: None,
            action: Action::Failed,
            signature: None,
            bytes: 0,
            duration_ms: 0,
            carried: Vec::new(),
            notes: Vec::new(),
            message: None,
            error: None,
            refused_by: None,
        }
    }
}

/// Live progress of a run, for a display. Called from the run's tasks; an
/// implementation must be cheap and must not block.
pub trait Progress: Send + Sync {
    /// Planning is done: `to_copy` of `total` images will be copied.
    fn planned(&self, total: usize, to_copy: usize);
    /// A blob of `bytes` was transferred for image `index`.
    fn transferred(&self, index: usize, source: &str, bytes: u64);
    /// An image is finished.
    fn finished(&self, image: &ImageReport);
}

/// No display.
pub struct NoProgress;

impl Progress for NoProgress {
    fn planned(&self, _: usize, _: usize) {}
    fn transferred(&self, _: usize, _: &str, _: u64) {}
    fn finished(&self, _: &ImageReport) {}
}

/// How the run ended, in exit-code order of precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Every image is in sync (or would be, in a dry run).
    Ok,
    /// At least one image failed (registry, network).
    Failed,
    /// A safety stop happened.
    SafetyStop,
}

/// The report of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// The run was interrupted (SIGINT/SIGTERM): images not finished are `not run`.
    pub interrupted: bool,
    pub images: Vec<ImageReport>,
    /// Per registry (host, or `<transport>:`): operations, retries,
    /// pushbacks, seconds paused, the lowest concurrency limit reached.
    pub registries: std::collections::BTreeMap<String, crate::flow::RegistryFigures>,
}

impl Report {
    /// The machine-readable report: `{"status", "dry_run", "images": [...]}`.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            status: Status,
            #[serde(flatten)]
            report: &'a Report,
        }
        serde_json::to_string_pretty(&Out {
            status: self.status(),
            report: self,
        })
        .expect("the report serializes")
    }

    pub fn status(&self) -> Status {
        if self.images.iter().any(|i| i.action == Action::Stopped) {
            Status::SafetyStop
        } else if self.interrupted || self.images.iter().any(|i| i.action == Action::Failed) {
            Status::Failed
        } else {
            Status::Ok
        }
    }

    /// Whether an image failed because `registry` refused access (an
    /// [`crate::stage::ErrorKind::Unauthorized`] error naming it in
    /// [`ImageReport::refused_by`]): the CLI's cue to name its credential
    /// flags when `registry` is the target.
    pub fn refused_by(&self, registry: &str) -> bool {
        self.images.iter().any(|i| {
            i.error == Some(crate::stage::ErrorKind::Unauthorized)
                && i.refused_by.as_deref() == Some(registry)
        })
    }

    fn count(&self, a: Action) -> usize {
        self.images.iter().filter(|i| i.action == a).count()
    }

    /// The human summary: one line per image, then totals.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let width = self
            .images
            .iter()
            .map(|i| i.action.label().len())
            .max()
            .unwrap_or(0);
        if self.dry_run {
            out.push_str("Plan (dry run, nothing is written):\n");
        } else {
            out.push_str("Summary:\n");
        }
        for i in &self.images {
            let _ = write!(out, "  {:width$}  {}", i.action.label(), i.source);
            // An entry that failed before it had a target (a tag rule's).
            if !i.target.is_empty() {
                let _ = write!(out, " -> {}", i.target);
            }
            if let Some(d) = &i.digest {
                let _ = write!(out, " ({d})");
            }
            out.push('\n');
            for note in &i.notes {
                let _ = writeln!(out, "  {:width$}  {note}", "");
            }
            if !i.carried.is_empty() {
                let _ = writeln!(out, "  {:width$}  carried: {}", "", i.carried.join(", "));
            }
            if let Some(s) = &i.signature {
                let what = match s {
                    SignOutcome::AlreadySigned => "signature: already signed",
                    SignOutcome::AlreadySignedBundle => {
                        "signature: already signed (Sigstore bundle)"
                    }
                    SignOutcome::Signed => "signature: signed",
                    SignOutcome::WouldSign => "signature: would sign",
                };
                let _ = writeln!(out, "  {:width$}  {what}", "");
            }
            if let Some(m) = &i.message {
                let _ = writeln!(out, "  {:width$}  {m}", "");
            }
        }
        let copied = if self.dry_run {
            format!("{} would copy", self.count(Action::WouldCopy))
        } else {
            format!("{} copied", self.count(Action::Copied))
        };
        if self.interrupted {
            out.push_str("Interrupted: images not finished were left as they were; run again to complete them.\n");
        }
        let _ = writeln!(
            out,
            "{} image(s): {copied}, {} already in sync, {} stopped, {} failed, {} not run",
            self.images.len(),
            self.count(Action::InSync),
            self.count(Action::Stopped),
            self.count(Action::Failed),
            self.count(Action::NotRun),
        );
        out
    }
}
