//! One image's copy: the walk over what a manifest references, blobs
//! through the run's ledger, manifests put with a re-check on refusal.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures_util::future::BoxFuture;
use futures_util::{stream, FutureExt, StreamExt};
use tracing::{debug, warn};

use super::execute::Run;
use super::prepare::Item;
use super::registry_of;
use crate::digest::{Digest, VerifyingStream};
use crate::manifest::{Descriptor, Manifest, RawManifest, MAX_INDEX_DEPTH};
use crate::reference::ImageRef;
use crate::retry::Retry;
use crate::stage::{ErrorKind, ManifestTarget, StageError};

/// How a copy walks what a manifest references: through the run's ledger
/// (the first walk), or past it, asking the target about everything (after
/// the registry refused a manifest as inconsistent).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Walk {
    Ledger,
    Recheck,
}

/// One image's copy.
pub(super) struct ImageCopy<'a> {
    pub(super) item: &'a Item,
    pub(super) repo: &'a ImageRef,
    pub(super) run: &'a Run<'a>,
    pub(super) jobs: usize,
    pub(super) retry: Retry<'a>,
    pub(super) bytes: &'a AtomicU64,
    pub(super) progress: &'a dyn crate::report::Progress,
}

impl ImageCopy<'_> {
    pub(super) fn source_registry(&self) -> String {
        registry_of(&self.item.spec.source)
    }

    pub(super) fn target_registry(&self) -> String {
        registry_of(self.repo)
    }

    /// The blobs of an image manifest that are copied (not foreign layers).
    pub(super) fn blobs(config: Descriptor, layers: Vec<Descriptor>) -> Vec<Descriptor> {
        std::iter::once(config)
            .chain(layers)
            .filter(|b| {
                let foreign = b.is_non_distributable();
                if foreign {
                    debug!(digest = %b.digest, "non-distributable layer not copied");
                }
                !foreign
            })
            .collect()
    }

    /// Copies everything `manifest` references (not the manifest itself).
    /// `depth` is how many indexes enclose it (0 for the tagged manifest);
    /// an index nested deeper than [`MAX_INDEX_DEPTH`] fails the image.
    pub(super) fn children<'b>(
        &'b self,
        manifest: &'b RawManifest,
        depth: usize,
        walk: Walk,
    ) -> BoxFuture<'b, Result<(), StageError>> {
        async move {
            let parsed = manifest
                .parse()
                .map_err(|e| StageError::invalid(format!("{}: {e}", manifest.digest)))?;
            match parsed {
                Manifest::Index { manifests } => {
                    too_deep(manifest, depth)?;
                    for child in manifests {
                        if walk == Walk::Recheck {
                            self.child(&child, depth + 1, walk).await?;
                            continue;
                        }
                        // Pushed once per repository in the run; the others
                        // wait for the registry's confirmed answer.
                        let cell =
                            self.run
                                .ledger
                                .manifest(&self.item.sink, self.repo, &child.digest);
                        cell.get_or_try_init(|| self.child(&child, depth + 1, walk))
                            .await?;
                    }
                }
                Manifest::Image { config, layers } => {
                    // Every blob is attempted; the first error is reported.
                    let results: Vec<Result<(), StageError>> =
                        stream::iter(Self::blobs(config, layers))
                            .map(|b| async move {
                                match walk {
                                    Walk::Ledger => self.blob(&b).await,
                                    Walk::Recheck => self.transfer(&b).await,
                                }
                            })
                            .buffer_unordered(self.jobs)
                            .collect()
                            .await;
                    results.into_iter().collect::<Result<Vec<()>, _>>()?;
                }
            }
            Ok(())
        }
        .boxed()
    }

    /// One child manifest of an index, with what it references, unless the
    /// target has it.
    pub(super) async fn child(
        &self,
        child: &Descriptor,
        depth: usize,
        walk: Walk,
    ) -> Result<(), StageError> {
        let child_ref = self.repo.with_digest(child.digest.clone());
        let present = self
            .retry
            .at(&self.target_registry(), "child digest", || {
                self.item.sink.manifest_digest(&child_ref)
            })
            .await?;
        if present.is_some() {
            debug!(digest = %child.digest, "child manifest present in target");
            return Ok(());
        }
        let m = self.fetch_child(child).await?;
        self.children(&m, depth, walk).await?;
        self.put_manifest(&ManifestTarget::Digest, &m, depth, "child manifest")
            .await
    }

    /// A child manifest from the source, verified against its descriptor.
    pub(super) async fn fetch_child(&self, child: &Descriptor) -> Result<RawManifest, StageError> {
        let m = self
            .retry
            .at(&self.source_registry(), "child manifest", || {
                self.item
                    .source
                    .fetch_manifest(&self.item.spec.source, child)
            })
            .await?;
        check_manifest(
            &m,
            Some(&child.digest),
            self.item.source.max_manifest_bytes(),
        )?;
        Ok(m)
    }

    /// Puts a manifest whose references are in the target. A registry that
    /// refuses it as inconsistent (a blob or child it does not see, a digest
    /// it computed otherwise) is not a safety stop: what the manifest
    /// references is checked again, what is missing put again, and the put
    /// retried; if the refusal persists the image fails with its words.
    pub(super) async fn put_manifest(
        &self,
        target: &ManifestTarget,
        manifest: &RawManifest,
        depth: usize,
        what: &str,
    ) -> Result<(), StageError> {
        let registry = self.target_registry();
        self.retry
            .then_write(
                &registry,
                what,
                |previous: Option<&StageError>| {
                    let recheck = previous.is_some_and(|e| e.kind == ErrorKind::Consistency);
                    async move {
                        if recheck {
                            warn!(digest = %manifest.digest, target = %self.repo, "the registry refused a manifest as inconsistent; checking what it references");
                            self.children(manifest, depth, Walk::Recheck).await?;
                        }
                        self.run.check()
                    }
                },
                // Checked again right before the write: a stop that came
                // while this waited at the registry's gate holds it back.
                |()| async move {
                    self.run.check()?;
                    self.item.sink.put_manifest(self.repo, target, manifest).await
                },
            )
            .await
    }

    /// One blob: transferred by the first image of the run that needs it;
    /// the others find it, mount it from where it went, or transfer it.
    pub(super) async fn blob(&self, blob: &Descriptor) -> Result<(), StageError> {
        let cell = self.run.ledger.cell(&self.item.sink, &blob.digest);
        let mine = AtomicBool::new(false);
        let home = cell
            .get_or_try_init(|| async {
                mine.store(true, Ordering::SeqCst);
                self.transfer(blob).await?;
                Ok::<_, StageError>(self.repo.clone())
            })
            .await?;
        if mine.load(Ordering::SeqCst) || home == self.repo {
            return Ok(());
        }
        let registry = self.target_registry();
        if self
            .retry
            .at(&registry, "blob check", || {
                self.item.sink.has_blob(self.repo, blob)
            })
            .await?
        {
            return Ok(());
        }
        self.run.check()?;
        if self
            .retry
            .at(&registry, "blob mount", || {
                self.item.sink.mount_blob(home, self.repo, blob)
            })
            .await?
        {
            debug!(digest = %blob.digest, from = %home, to = %self.repo, "blob mounted");
            return Ok(());
        }
        // Just found absent: copy without asking the target again.
        self.copy(blob).await
    }

    /// Copies a blob unless the target has it.
    pub(super) async fn transfer(&self, blob: &Descriptor) -> Result<(), StageError> {
        let present = self
            .retry
            .at(&self.target_registry(), "blob check", || {
                self.item.sink.has_blob(self.repo, blob)
            })
            .await?;
        if present {
            debug!(digest = %blob.digest, "blob present in target");
            return Ok(());
        }
        self.copy(blob).await
    }

    /// One verified stream from the source into the target, a large blob
    /// in one of the target's transfer slots (`flow`). Each try opens
    /// an upload and the download (each retried on its own), then sends the
    /// bytes; a send that fails starts a new try (the stream is spent, so the
    /// source is read again). Nothing is committed by a failed try.
    pub(super) async fn copy(&self, blob: &Descriptor) -> Result<(), StageError> {
        let (item, repo) = (self.item, self.repo);
        let (source, target) = (self.source_registry(), self.target_registry());
        let (source, target) = (source.as_str(), target.as_str());
        // Taken before the upload and the download are opened, held through
        // every try: no stream waits open for a slot.
        let _slot = if blob.size >= crate::flow::LARGE_BLOB {
            self.retry.transfer_slot(target).await?
        } else {
            None
        };
        self.retry
            .then_write(
                target,
                "blob upload",
                |_| async move {
                    self.run.check()?;
                    let upload = self
                        .retry
                        .at(target, "blob upload start", || async {
                            self.run.check()?;
                            item.sink.begin_blob(repo, blob).await
                        })
                        .await?;
                    let stream = self
                        .retry
                        .at(source, "blob download", || {
                            item.source.fetch_blob(&item.spec.source, blob)
                        })
                        .await?;
                    Ok((upload, stream))
                },
                |(upload, stream)| async move {
                    self.run.check()?;
                    let verified =
                        VerifyingStream::new(stream, blob.digest.clone(), Some(blob.size));
                    item.sink
                        .put_blob_into(repo, blob, upload, Box::pin(verified))
                        .await
                },
            )
            .await?;
        self.bytes.fetch_add(blob.size, Ordering::SeqCst);
        self.progress
            .transferred(item.spec.index, &item.spec.source.to_string(), blob.size);
        Ok(())
    }
}

/// Refuses an index enclosed by [`MAX_INDEX_DEPTH`] others or more: real
/// images nest one level, sometimes two, and a registry serving thousands of
/// levels would keep the run walking.
pub(super) fn too_deep(index: &RawManifest, depth: usize) -> Result<(), StageError> {
    if depth >= MAX_INDEX_DEPTH {
        return Err(StageError::invalid(format!(
            "index {} is nested {} levels deep, past the limit of {MAX_INDEX_DEPTH}",
            index.digest,
            depth + 1
        )));
    }
    Ok(())
}

/// Verifies a manifest's bytes against its digest (and the digest asked for),
/// and that it is no larger than `limit` (the source's).
pub(super) fn check_manifest(
    m: &RawManifest,
    expected: Option<&Digest>,
    limit: usize,
) -> Result<(), StageError> {
    if m.bytes.len() > limit {
        return Err(StageError::invalid(crate::manifest::too_large(
            &m.digest.to_string(),
            m.bytes.len() as u64,
            limit,
        )));
    }
    if let Err(actual) = m.digest.verify(&m.bytes) {
        return Err(StageError::integrity(format!(
            "manifest content does not match its digest: expected {}, got {actual}",
            m.digest
        )));
    }
    if let Some(e) = expected {
        if &m.digest != e {
            return Err(StageError::integrity(format!(
                "manifest digest {} differs from the digest asked for {e}",
                m.digest
            )));
        }
    }
    Ok(())
}
