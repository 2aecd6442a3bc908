//! What guards and signers are handed: the image's source (for guards) and
//! sink (for signers) with every call passing its registry's gate and
//! retried on its own, as the orchestrator's own requests are. A guard that
//! verifies a signature, or a signer that verifies and then writes one,
//! makes a handful of requests per image; without this, one dropped
//! connection among them would fail the image through a registry that
//! answers the next try.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::digest::{ByteStream, Digest};
use crate::flow::FlowControl;
use crate::manifest::{Descriptor, RawManifest};
use crate::reference::ImageRef;
use crate::retry::{Retry, RetryPolicy};
use crate::stage::{ManifestTarget, RepositoryUse, Sink, Source, StageError, Upload};

use super::registry_of;

/// `inner`, each call through [`Retry::at`] at the registry of the
/// reference it is about.
pub(super) struct RetriedSource<'a> {
    pub(super) inner: &'a dyn Source,
    pub(super) retry: Retry<'a>,
}

#[async_trait]
impl Source for RetriedSource<'_> {
    async fn resolve(&self, reference: &ImageRef) -> Result<RawManifest, StageError> {
        self.retry
            .at(&registry_of(reference), "guard: manifest", || {
                self.inner.resolve(reference)
            })
            .await
    }

    async fn digest(&self, reference: &ImageRef) -> Result<Digest, StageError> {
        self.retry
            .at(&registry_of(reference), "guard: digest", || {
                self.inner.digest(reference)
            })
            .await
    }

    async fn fetch_manifest(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<RawManifest, StageError> {
        self.retry
            .at(&registry_of(repository), "guard: manifest", || {
                self.inner.fetch_manifest(repository, descriptor)
            })
            .await
    }

    /// Opening the stream is retried; a stream that breaks after it opened
    /// fails the read (the guard's own bounded read sees the error).
    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        self.retry
            .at(&registry_of(repository), "guard: blob", || {
                self.inner.fetch_blob(repository, descriptor)
            })
            .await
    }

    async fn list_tags(&self, repository: &ImageRef) -> Result<Vec<String>, StageError> {
        self.retry
            .at(&registry_of(repository), "guard: tag list", || {
                self.inner.list_tags(repository)
            })
            .await
    }

    async fn referrers(
        &self,
        repository: &ImageRef,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, StageError> {
        self.retry
            .at(&registry_of(repository), "guard: referrers", || {
                self.inner.referrers(repository, digest)
            })
            .await
    }

    fn max_manifest_bytes(&self) -> usize {
        self.inner.max_manifest_bytes()
    }
}

/// A blob a signer writes is read into memory (to send it again after a
/// failed try) when it is no larger than this: signature payloads, bundles
/// and empty configs are a few KiB. A larger one is sent once, as given.
const REPLAYABLE: u64 = 4 << 20;

/// `inner`, each call through [`Retry::at`] at the registry of the
/// reference it is about; owned, as signers take an `Arc<dyn Sink>`.
pub(super) struct RetriedSink {
    pub(super) inner: Arc<dyn Sink>,
    pub(super) policy: RetryPolicy,
    pub(super) halt: Arc<AtomicBool>,
    pub(super) flow: Arc<FlowControl>,
}

impl RetriedSink {
    fn retry(&self) -> Retry<'_> {
        Retry {
            policy: &self.policy,
            halt: &self.halt,
            flow: Some(&self.flow),
        }
    }

    /// `write` through `repository`'s gate, tried once: its stream cannot be
    /// read twice.
    async fn once<Fut>(
        &self,
        repository: &ImageRef,
        what: &str,
        write: impl FnOnce() -> Fut,
    ) -> Result<(), StageError>
    where
        Fut: std::future::Future<Output = Result<(), StageError>>,
    {
        let write = std::sync::Mutex::new(Some(write));
        let none = RetryPolicy::none();
        let retry = Retry {
            policy: &none,
            ..self.retry()
        };
        retry
            .at(&registry_of(repository), what, || {
                let write = write.lock().unwrap_or_else(|e| e.into_inner()).take();
                async move {
                    match write {
                        Some(w) => w().await,
                        None => Err(StageError::internal("a one-shot write was tried twice")),
                    }
                }
            })
            .await
    }
}

/// The stream's bytes, if it is no longer than `limit`, else `None` with
/// what was read put back in front of the rest.
async fn read_small(
    mut content: ByteStream,
    limit: u64,
) -> Result<Result<Vec<Bytes>, ByteStream>, StageError> {
    let mut chunks = Vec::new();
    let mut size = 0u64;
    while let Some(chunk) = content.next().await {
        let chunk = chunk.map_err(|e| StageError::transient(e.to_string()))?;
        size += chunk.len() as u64;
        chunks.push(chunk);
        if size > limit {
            let head = futures_util::stream::iter(chunks.into_iter().map(Ok));
            return Ok(Err(Box::pin(head.chain(content))));
        }
    }
    Ok(Ok(chunks))
}

fn replay(chunks: &[Bytes]) -> ByteStream {
    Box::pin(futures_util::stream::iter(
        chunks.iter().cloned().map(Ok).collect::<Vec<_>>(),
    ))
}

#[async_trait]
impl Sink for RetriedSink {
    async fn manifest_digest(&self, target: &ImageRef) -> Result<Option<Digest>, StageError> {
        self.retry()
            .at(&registry_of(target), "signer: digest", || {
                self.inner.manifest_digest(target)
            })
            .await
    }

    async fn fetch_manifest(&self, target: &ImageRef) -> Result<Option<RawManifest>, StageError> {
        self.retry()
            .at(&registry_of(target), "signer: manifest", || {
                self.inner.fetch_manifest(target)
            })
            .await
    }

    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        self.retry()
            .at(&registry_of(repository), "signer: blob", || {
                self.inner.fetch_blob(repository, descriptor)
            })
            .await
    }

    async fn has_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<bool, StageError> {
        self.retry()
            .at(&registry_of(repository), "signer: blob check", || {
                self.inner.has_blob(repository, descriptor)
            })
            .await
    }

    /// A small blob is sent again from memory after a failed try; a larger
    /// one once, through the gate (its stream cannot be read twice).
    async fn put_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        content: ByteStream,
    ) -> Result<(), StageError> {
        let chunks = match read_small(content, REPLAYABLE).await? {
            Ok(chunks) => chunks,
            Err(stream) => {
                return self
                    .once(repository, "signer: blob upload", || {
                        self.inner.put_blob(repository, descriptor, stream)
                    })
                    .await
            }
        };
        self.retry()
            .at(&registry_of(repository), "signer: blob upload", || {
                self.inner.put_blob(repository, descriptor, replay(&chunks))
            })
            .await
    }

    async fn begin_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<Upload, StageError> {
        self.retry()
            .at(
                &registry_of(repository),
                "signer: blob upload start",
                || self.inner.begin_blob(repository, descriptor),
            )
            .await
    }

    /// Into the upload given, once (through the gate): an upload is not used
    /// again after a failure (a signer wanting retries uses [`Sink::put_blob`]).
    async fn put_blob_into(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        upload: Upload,
        content: ByteStream,
    ) -> Result<(), StageError> {
        self.once(repository, "signer: blob upload", || {
            self.inner
                .put_blob_into(repository, descriptor, upload, content)
        })
        .await
    }

    async fn mount_blob(
        &self,
        from: &ImageRef,
        to: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<bool, StageError> {
        self.retry()
            .at(&registry_of(to), "signer: blob mount", || {
                self.inner.mount_blob(from, to, descriptor)
            })
            .await
    }

    async fn referrers(
        &self,
        repository: &ImageRef,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, StageError> {
        self.retry()
            .at(&registry_of(repository), "signer: referrers", || {
                self.inner.referrers(repository, digest)
            })
            .await
    }

    async fn prepare_repository(
        &self,
        repository: &ImageRef,
        how: &RepositoryUse,
    ) -> Result<Option<String>, StageError> {
        self.retry()
            .at(&registry_of(repository), "signer: repository", || {
                self.inner.prepare_repository(repository, how)
            })
            .await
    }

    /// A put of the same bytes again after a failed try: the same result
    /// whether or not the failed one reached the registry.
    async fn put_manifest(
        &self,
        repository: &ImageRef,
        target: &ManifestTarget,
        manifest: &RawManifest,
    ) -> Result<(), StageError> {
        self.retry()
            .at(&registry_of(repository), "signer: manifest put", || {
                self.inner.put_manifest(repository, target, manifest)
            })
            .await
    }
}
