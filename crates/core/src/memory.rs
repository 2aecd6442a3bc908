//! An in-memory registry implementing [`Source`] and [`Sink`], for unit tests of
//! the orchestrator and of plugins. Not a product stage: it is compiled only for
//! tests or with the `testing` feature.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::digest::{ByteStream, Digest};
use crate::manifest::{Descriptor, RawManifest};
use crate::reference::ImageRef;
use crate::stage::{ManifestTarget, Sink, Source, StageError};

#[derive(Default)]
struct Repo {
    tags: HashMap<String, Digest>,
    manifests: HashMap<Digest, RawManifest>,
    blobs: HashMap<Digest, Bytes>,
}

/// A registry held in memory. Counts writes so tests can assert "nothing written".
#[derive(Default)]
pub struct MemoryRegistry {
    repos: Mutex<HashMap<String, Repo>>,
    writes: AtomicUsize,
}

impl MemoryRegistry {
    pub fn new() -> MemoryRegistry {
        Self::default()
    }

    /// Number of blob and manifest writes so far.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    /// Stores a blob directly (test set-up), returning its descriptor.
    pub fn add_blob(&self, repo: &ImageRef, media_type: &str, data: &[u8]) -> Descriptor {
        let digest = Digest::sha256_of(data);
        self.repos
            .lock()
            .unwrap()
            .entry(repo.repository_name())
            .or_default()
            .blobs
            .insert(digest.clone(), Bytes::copy_from_slice(data));
        Descriptor::new(media_type, digest, data.len() as u64)
    }

    /// Replaces a stored blob's bytes without changing its digest (tampering).
    pub fn corrupt_blob(&self, repo: &ImageRef, digest: &Digest, data: &[u8]) {
        self.repos
            .lock()
            .unwrap()
            .entry(repo.repository_name())
            .or_default()
            .blobs
            .insert(digest.clone(), Bytes::copy_from_slice(data));
    }

    /// Stores a manifest directly (test set-up), tagged when `tag` is given.
    pub fn add_manifest(&self, repo: &ImageRef, manifest: &RawManifest, tag: Option<&str>) {
        let mut repos = self.repos.lock().unwrap();
        let r = repos.entry(repo.repository_name()).or_default();
        r.manifests
            .insert(manifest.digest.clone(), manifest.clone());
        if let Some(t) = tag {
            r.tags.insert(t.to_string(), manifest.digest.clone());
        }
    }

    fn lookup(&self, reference: &ImageRef) -> Option<RawManifest> {
        let repos = self.repos.lock().unwrap();
        let r = repos.get(&reference.repository_name())?;
        let digest = match (reference.digest(), reference.tag()) {
            (Some(d), _) => d.clone(),
            (None, Some(t)) => r.tags.get(t)?.clone(),
            (None, None) => return None,
        };
        r.manifests.get(&digest).cloned()
    }

    fn blob(&self, repo: &ImageRef, digest: &Digest) -> Option<Bytes> {
        let repos = self.repos.lock().unwrap();
        repos
            .get(&repo.repository_name())?
            .blobs
            .get(digest)
            .cloned()
    }
}

fn stream_of(data: Bytes) -> ByteStream {
    // Two chunks, so consumers see a real stream.
    let mid = data.len() / 2;
    let parts = vec![Ok(data.slice(..mid)), Ok(data.slice(mid..))];
    Box::pin(futures_util::stream::iter(parts))
}

#[async_trait]
impl Source for MemoryRegistry {
    async fn resolve(&self, reference: &ImageRef) -> Result<RawManifest, StageError> {
        self.lookup(reference)
            .ok_or_else(|| StageError::not_found(format!("{reference}: manifest unknown")))
    }

    async fn fetch_manifest(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<RawManifest, StageError> {
        self.lookup(&repository.with_digest(descriptor.digest.clone()))
            .ok_or_else(|| {
                StageError::not_found(format!("{repository}: {} unknown", descriptor.digest))
            })
    }

    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        self.blob(repository, &descriptor.digest)
            .map(stream_of)
            .ok_or_else(|| {
                StageError::not_found(format!("{repository}: blob {} unknown", descriptor.digest))
            })
    }

    /// The repository's tags, sorted.
    async fn list_tags(&self, repository: &ImageRef) -> Result<Vec<String>, StageError> {
        let repos = self.repos.lock().unwrap();
        let mut tags: Vec<String> = repos
            .get(&repository.repository_name())
            .map(|r| r.tags.keys().cloned().collect())
            .unwrap_or_default();
        tags.sort();
        Ok(tags)
    }
}

#[async_trait]
impl Sink for MemoryRegistry {
    async fn manifest_digest(&self, target: &ImageRef) -> Result<Option<Digest>, StageError> {
        Ok(self.lookup(target).map(|m| m.digest))
    }

    async fn fetch_manifest(&self, target: &ImageRef) -> Result<Option<RawManifest>, StageError> {
        Ok(self.lookup(target))
    }

    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        Source::fetch_blob(self, repository, descriptor).await
    }

    async fn has_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<bool, StageError> {
        Ok(self.blob(repository, &descriptor.digest).is_some())
    }

    async fn put_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        mut content: ByteStream,
    ) -> Result<(), StageError> {
        let mut buf = Vec::new();
        while let Some(chunk) = content.next().await {
            let chunk = chunk.map_err(|e| StageError::from_io("blob upload", &e))?;
            buf.extend_from_slice(&chunk);
        }
        // Committed only after the stream ended cleanly.
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.repos
            .lock()
            .unwrap()
            .entry(repository.repository_name())
            .or_default()
            .blobs
            .insert(descriptor.digest.clone(), Bytes::from(buf));
        Ok(())
    }

    async fn put_manifest(
        &self,
        repository: &ImageRef,
        target: &ManifestTarget,
        manifest: &RawManifest,
    ) -> Result<(), StageError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        let tag = match target {
            ManifestTarget::Tag(t) => Some(t.as_str()),
            ManifestTarget::Digest => None,
        };
        self.add_manifest(repository, manifest, tag);
        Ok(())
    }
}
