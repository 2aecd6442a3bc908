//! The source a guard reads from: the image's source with every call passing
//! its registry's gate and retried on its own, as the orchestrator's own
//! reads are. A guard that verifies a signature makes a handful of reads per
//! image; without this, one dropped connection among them would fail the
//! image through a registry that answers the next try.

use async_trait::async_trait;

use crate::digest::{ByteStream, Digest};
use crate::manifest::{Descriptor, RawManifest};
use crate::reference::ImageRef;
use crate::retry::Retry;
use crate::stage::{Source, StageError};

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
