//! `oci`: source and sink over the OCI distribution API (Docker Hub, GCR/GAR,
//! ECR, Harbor, CNCF distribution, ...), on `oci-client`.
//!
//! - Connections follow the definition's `registries:` settings: `endpoint`
//!   replaces the host connected to (names are unchanged), `insecure` and
//!   `--insecure-registry` select plain HTTP. Everything else is HTTPS.
//! - Each registry is read and written with the credentials found for it:
//!   the target credentials given to the run (for the target registry, and a
//!   source on it), the definition's `registries:` entry, Docker's or
//!   containers' config, the cloud identity the run has (ECR, Artifact
//!   Registry and GCR, ACR: module `cloud`); else anonymously. Bearer-token
//!   and basic flows are negotiated from the registry's challenge.
//! - Tags are listed (`tags/list`) following the registry's `Link` pages,
//!   for entries that select tags by a rule.
//! - Referrers are read through the OCI 1.1 referrers API
//!   (`GET /v2/<name>/referrers/<digest>`); a registry answering 404 has no
//!   such API (`None`: the engine reads the referrers tag schema instead).
//! - Manifests are verified against their digest on pull (here and again by
//!   the orchestrator); blobs stream both ways and are verified on the fly.
//!
//! Modules, one concern each: `config` (the settings), `client` (the
//! connection and the process's client pool), `auth` (which credentials, in
//! which order), `cloud` (logins with the cloud identity, cached and
//! renewed), `manifests`, `tags` (listing and paging), `referrers`,
//! `transfer` (blobs, mounts, uploads, manifest pushes and the timeouts on
//! them), `errors` (what an answer means to the orchestrator), `quirks`
//! (the only place a registry provider is special-cased, [`RegistryKind`]).
//! This file holds the stage traits' implementations and the registration.

mod auth;
mod client;
mod cloud;
mod config;
mod errors;
mod manifests;
pub mod quirks;
mod referrers;
mod tags;
mod transfer;

use std::sync::Arc;

use image_syncer_core::async_trait;
use image_syncer_core::catalogue::{
    typed_config, BuildError, ConfigDoc, ConfigValue, Factory, StagePlugin,
};
use image_syncer_core::context::{Registries, SinkContext, SourceContext};
use image_syncer_core::digest::{ByteStream, Digest};
use image_syncer_core::manifest::{Descriptor, RawManifest};
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::{
    ErrorKind, ManifestTarget, Sink, Source, StageError, StageKind, Upload,
};

pub use client::OciRegistry;
pub use cloud::CloudError;
pub use config::OciConfig;
pub use errors::SetupError;
pub use quirks::RegistryKind;
pub use tags::{MAX_TAGS, MAX_TAG_PAGES, TAGS_PAGE_SIZE};

#[async_trait]
impl Source for OciRegistry {
    async fn list_tags(&self, repository: &ImageRef) -> Result<Vec<String>, StageError> {
        OciRegistry::list_tags(self, repository).await
    }

    async fn resolve(&self, reference: &ImageRef) -> Result<RawManifest, StageError> {
        self.pull_manifest(reference, None, None).await
    }

    async fn digest(&self, reference: &ImageRef) -> Result<Digest, StageError> {
        self.head_manifest(reference)
            .await?
            .ok_or_else(|| StageError::not_found(format!("{reference}: manifest unknown")))
    }

    async fn fetch_manifest(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<RawManifest, StageError> {
        let r = repository.with_digest(descriptor.digest.clone());
        self.pull_manifest(&r, Some(&descriptor.media_type), Some(&descriptor.digest))
            .await
    }

    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        self.stream_blob(repository, descriptor).await
    }

    fn max_manifest_bytes(&self) -> usize {
        self.max_manifest
    }

    async fn referrers(
        &self,
        repository: &ImageRef,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, StageError> {
        OciRegistry::referrers(self, repository, digest).await
    }
}

#[async_trait]
impl Sink for OciRegistry {
    async fn referrers(
        &self,
        repository: &ImageRef,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, StageError> {
        OciRegistry::referrers(self, repository, digest).await
    }

    async fn manifest_digest(&self, target: &ImageRef) -> Result<Option<Digest>, StageError> {
        self.head_manifest(target).await
    }

    async fn fetch_manifest(&self, target: &ImageRef) -> Result<Option<RawManifest>, StageError> {
        match self.pull_manifest(target, None, None).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        self.stream_blob(repository, descriptor).await
    }

    async fn has_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<bool, StageError> {
        self.blob_exists(repository, descriptor).await
    }

    async fn mount_blob(
        &self,
        from: &ImageRef,
        to: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<bool, StageError> {
        self.mount(from, to, descriptor).await
    }

    async fn begin_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<Upload, StageError> {
        self.open_upload(repository, descriptor).await
    }

    async fn put_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        content: ByteStream,
    ) -> Result<(), StageError> {
        self.upload(repository, descriptor, Upload(None), content)
            .await
    }

    async fn put_blob_into(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        upload: Upload,
        content: ByteStream,
    ) -> Result<(), StageError> {
        self.upload(repository, descriptor, upload, content).await
    }

    async fn put_manifest(
        &self,
        repository: &ImageRef,
        target: &ManifestTarget,
        manifest: &RawManifest,
    ) -> Result<(), StageError> {
        self.push_manifest(repository, target, manifest).await
    }
}

fn build(
    kind: StageKind,
    config: &ConfigValue,
    registries: &Registries,
) -> Result<Arc<OciRegistry>, BuildError> {
    let config: OciConfig = typed_config(kind, "oci", config)?;
    OciRegistry::new(&config, registries)
        .map(Arc::new)
        .map_err(|e| BuildError::Setup {
            kind,
            plugin: "oci".into(),
            message: e.to_string(),
        })
}

fn build_source(config: &ConfigValue, cx: &SourceContext) -> Result<Arc<dyn Source>, BuildError> {
    Ok(build(StageKind::Source, config, &cx.registries)?)
}

fn build_sink(config: &ConfigValue, cx: &SinkContext) -> Result<Arc<dyn Sink>, BuildError> {
    Ok(build(StageKind::Sink, config, &cx.registries)?)
}

image_syncer_core::inventory::submit! {
    StagePlugin {
        name: "oci",
        description: "Pulls from OCI/Docker registries, with the credentials found for each (definition, Docker or containers config), else anonymously",
        config: ConfigDoc::of::<OciConfig>(),
        transport: None,
        factory: || Factory::source(build_source),
    }
}

image_syncer_core::inventory::submit! {
    StagePlugin {
        name: "oci",
        description: "Pushes to an OCI/Docker registry with the target credentials: blobs first, manifests last",
        config: ConfigDoc::of::<OciConfig>(),
        transport: None,
        factory: || Factory::sink(build_sink),
    }
}
