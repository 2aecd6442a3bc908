//! Moving bytes, and how long a registry may stay silent: blob downloads,
//! existence checks, cross-repository mounts, uploads (opened on their own or
//! not), manifest pushes; the `readTimeoutSeconds` limits on all of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use image_syncer_core::digest::{AttachedTag, ByteStream, ContentMismatch, Digest};
use image_syncer_core::manifest::{Descriptor, RawManifest};
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::{ManifestTarget, Pushback, StageError, Upload};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::OciDescriptor;
use tracing::debug;

use crate::errors::{classify, classify_write, registry_errors};
use crate::OciRegistry;

impl OciRegistry {
    /// [`classify_write`] for a write into `r`, saying how to have the
    /// repository created when the registry refused it as missing and does
    /// not create repositories on push
    /// ([`crate::RegistryKind::refuses_missing_repository`]).
    pub(crate) fn write_error(
        &self,
        context: &str,
        e: OciDistributionError,
        r: &ImageRef,
    ) -> StageError {
        let host = r.registry();
        let kind = self.kind(host);
        let missing = registry_errors(&e)
            .iter()
            .any(|(code, _)| kind.refuses_missing_repository(code));
        let error = classify_write(context, e, r);
        let creates = self
            .registries
            .ecr(host)
            .is_some_and(|s| s.create_repositories);
        if !missing || creates {
            return error;
        }
        StageError::config(format!(
            "{}: the repository {} does not exist, and {kind} creates none on push; `registries.{host}.ecr.createRepositories: true` has image-syncer create it",
            error.message,
            r.repository()
        ))
    }

    /// `op`, a request with a short answer, failed as transient when the
    /// registry has not answered it in full within the idle limit.
    pub(crate) async fn answered<T>(
        &self,
        what: impl FnOnce() -> String,
        op: impl std::future::Future<Output = Result<T, StageError>>,
    ) -> Result<T, StageError> {
        match tokio::time::timeout(self.idle, op).await {
            Ok(r) => r,
            Err(_) => Err(StageError::transient(format!(
                "{}: no answer from the registry within {} s (readTimeoutSeconds)",
                what(),
                self.idle.as_secs()
            ))
            .with_pushback(Pushback::Silent)),
        }
    }

    /// Streams blob `d` of `r`, verified on the fly, failed as transient when
    /// the registry sends nothing for `readTimeoutSeconds`.
    pub(crate) async fn stream_blob(
        &self,
        r: &ImageRef,
        d: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        let what = format!("{r}: fetching blob {}", d.digest);
        let stream = self
            .answered(|| what.clone(), async {
                let reference = self.prepare(r).await?;
                self.client(r.registry())
                    .pull_blob_stream(&reference, &oci_descriptor(d))
                    .await
                    .map_err(|e| classify(&what, e, r))
            })
            .await?;
        let expected = d.digest.clone();
        // oci-client verifies on the fly too; its verdict becomes core's
        // ContentMismatch so that it is a safety stop like ours.
        let stream = Box::pin(stream.stream.map(move |item| {
            item.map_err(|e| {
                let actual = match e.get_ref().and_then(|i| i.downcast_ref::<DigestError>()) {
                    Some(DigestError::VerificationError { actual, .. }) => {
                        actual.parse::<Digest>().ok()
                    }
                    _ => None,
                };
                match actual {
                    Some(actual) => std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        ContentMismatch::Digest {
                            expected: expected.clone(),
                            actual,
                        },
                    ),
                    None => e,
                }
            })
        }));
        Ok(idle_limited(stream, self.idle, what))
    }

    /// Whether the registry holds blob `descriptor` in `repository`.
    pub(crate) async fn blob_exists(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<bool, StageError> {
        let what = || format!("{repository}: checking blob {}", descriptor.digest);
        self.answered(what, async {
            let reference = self.prepare(repository).await?;
            self.client(repository.registry())
                .blob_exists(&reference, &descriptor.digest.to_string())
                .await
                .map_err(|e| classify(&what(), e, repository))
        })
        .await
    }

    /// Mounts blob `descriptor` from repository `from` into `to`, on the
    /// same registry and where its kind and its `mount` setting say to try
    /// ([`crate::RegistryKind::tries_mounts`]): whether it is there now.
    pub(crate) async fn mount(
        &self,
        from: &ImageRef,
        to: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<bool, StageError> {
        if from.registry() != to.registry()
            || !self
                .kind(to.registry())
                .tries_mounts(self.registries.mount(to.registry()))
        {
            return Ok(false);
        }
        let what = || format!("{to}: mounting blob {} from {from}", descriptor.digest);
        let mounted = self
            .answered(what, async {
                let target = self.prepare(to).await?;
                let source = self.reference(from);
                Ok(self
                    .client(to.registry())
                    .mount_blob(&target, &source, &descriptor.digest.to_string())
                    .await)
            })
            .await?;
        match mounted {
            Ok(()) => Ok(true),
            // A registry that does not mount (or not across these repositories)
            // answers 202 and opens an upload instead: transfer the blob.
            Err(e) => {
                debug!(error = %e, digest = %descriptor.digest, "cross-repository mount refused");
                Ok(false)
            }
        }
    }

    /// Opens an upload into `repository` (the POST), on its own so that it
    /// is retried on its own.
    pub(crate) async fn open_upload(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<Upload, StageError> {
        let what = || {
            format!(
                "{repository}: blob {}: opening an upload",
                descriptor.digest
            )
        };
        self.answered(what, async {
            let reference = self.prepare(repository).await?;
            self.client(repository.registry())
                .begin_push_session(&reference)
                .await
                .map(|location| Upload(Some(location)))
                .map_err(|e| self.write_error(&what(), e, repository))
        })
        .await
    }

    /// Uploads `content`, blob `descriptor`, into `upload` (else a new
    /// upload), failed as transient when the registry stops taking bytes or
    /// answering for longer than [`upload_stalled`] allows.
    pub(crate) async fn upload(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        upload: Upload,
        content: ByteStream,
    ) -> Result<(), StageError> {
        let context = format!("{repository}: blob {}", descriptor.digest);
        let reference = self
            .answered(|| format!("{context}: upload"), async {
                self.prepare(repository).await
            })
            .await?;
        // Remember a content error of the stream: oci-client wraps it.
        let failure: Arc<Mutex<Option<StageError>>> = Arc::default();
        let seen = failure.clone();
        let ctx2 = context.clone();
        // When the client last took a chunk (ms since `started`), and how
        // many bytes it took: see `upload_stalled`.
        let started = tokio::time::Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let (last_w, sent_w) = (last.clone(), sent.clone());
        let stream = content.map(move |item: std::io::Result<Bytes>| {
            last_w.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            if let Ok(chunk) = &item {
                sent_w.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            item.map_err(|e| {
                *seen.lock().unwrap() = Some(StageError::from_io(&ctx2, &e));
                OciDistributionError::IoError(e)
            })
        });
        let digest = descriptor.digest.to_string();
        let size = Some(descriptor.size);
        let push = async {
            match upload.0 {
                Some(location) => {
                    self.client(repository.registry())
                        .push_blob_stream_at(location, &reference, stream, &digest, size)
                        .await
                }
                None => {
                    self.client(repository.registry())
                        .push_blob_stream(&reference, stream, &digest, size)
                        .await
                }
            }
        };
        tokio::pin!(push);
        let check = (self.idle / 4).max(Duration::from_millis(100));
        // Bounded: each turn either ends the upload or finds it moved within
        // the idle limit.
        let result = loop {
            tokio::select! {
                r = &mut push => break r,
                _ = tokio::time::sleep(check) => {
                    let quiet = started.elapsed().saturating_sub(Duration::from_millis(
                        last.load(Ordering::Relaxed),
                    ));
                    let sent = sent.load(Ordering::Relaxed);
                    if let Some(why) = upload_stalled(quiet, sent, descriptor.size, self.idle) {
                        return Err(StageError::transient(format!("{context}: upload: {why}"))
                            .with_pushback(Pushback::Silent));
                    }
                }
            }
        };
        if let Some(e) = failure.lock().unwrap().take() {
            return Err(e);
        }
        result
            .map(|url| debug!(%url, "blob pushed"))
            .map_err(|e| self.write_error(&format!("{context}: upload"), e, repository))
    }

    /// Pushes `manifest` into `repository`, by tag or by digest.
    pub(crate) async fn push_manifest(
        &self,
        repository: &ImageRef,
        target: &ManifestTarget,
        manifest: &RawManifest,
    ) -> Result<(), StageError> {
        let r = match target {
            ManifestTarget::Tag(t) => repository.with_tag(t),
            ManifestTarget::Digest => repository.with_digest(manifest.digest.clone()),
        };
        let content_type = manifest.media_type.parse().map_err(|_| {
            StageError::invalid(format!(
                "{r}: media type `{}` is not a valid header",
                manifest.media_type
            ))
        })?;
        let what = || format!("{r}: pushing manifest {}", manifest.digest);
        let pushed = self
            .answered(what, async {
                let reference = self.prepare(&r).await?;
                Ok(self
                    .client(r.registry())
                    .push_manifest_raw(&reference, manifest.bytes.clone(), content_type)
                    .await)
            })
            .await?;
        let e = match pushed {
            Ok(url) => {
                debug!(%url, "manifest pushed");
                return Ok(());
            }
            Err(e) => e,
        };
        let kind = self.kind(r.registry());
        let existing = matches!(target, ManifestTarget::Tag(_))
            && registry_errors(&e)
                .iter()
                .any(|(code, message)| kind.refuses_existing_tag(code, message));
        let error = self.write_error(&what(), e, &r);
        if existing {
            return self.existing_tag(&r, manifest, error).await;
        }
        Err(error)
    }

    /// The registry refused to put `manifest` under tag `r` because the tag
    /// exists and cannot be moved (an immutable repository,
    /// [`crate::RegistryKind::refuses_existing_tag`]): what the tag holds
    /// decides. The same digest is in sync (the put had nothing to do);
    /// another digest is a safety stop, as when the re-check before the put
    /// finds one; no tag (the refusal meant something else) keeps `refusal`.
    async fn existing_tag(
        &self,
        r: &ImageRef,
        manifest: &RawManifest,
        refusal: StageError,
    ) -> Result<(), StageError> {
        match self.head_manifest(r).await? {
            Some(held) if held == manifest.digest => {
                debug!(target = %r, digest = %held, "the registry refused to move a tag that already holds this manifest: in sync");
                Ok(())
            }
            // A cosign or referrers tag (`sha256-<hex>.sig`, …) is meant
            // to move as signatures are added: its refusal is the
            // repository's setting, not a tag that changed under us.
            Some(held) if r.tag().is_some_and(|t| AttachedTag::parse(t).is_some()) => {
                Err(StageError::config(format!(
                    "target {r} holds {held}, and the registry refuses to move it to {} (an immutable repository); signature and referrers tags move as signatures are added: exclude `sha256-*` from tag immutability (ECR: IMMUTABLE_WITH_EXCLUSION) or make the repository MUTABLE",
                    manifest.digest
                )))
            }
            Some(held) => Err(StageError::integrity(format!(
                "target {r} holds {held}, not {}, and the registry refuses to move it (an immutable tag); not overwritten",
                manifest.digest
            ))),
            None => Err(refusal),
        }
    }
}

/// Whether an upload that has sent `sent` of `size` bytes, the last of them
/// `quiet` ago, is stalled, and why. While bytes remain, the client can hand
/// over nothing only when the registry stopped reading (the socket buffers
/// are full): `idle` of that is a stall. Once everything is handed over, the
/// socket buffers (megabytes) still drain to the registry, which may then
/// move the blob into storage before it answers; that wait is allowed `idle`
/// plus a second per MiB of the blob.
fn upload_stalled(quiet: Duration, sent: u64, size: u64, idle: Duration) -> Option<String> {
    if sent < size {
        (quiet >= idle).then(|| {
            format!(
                "the registry took no byte for {} s (readTimeoutSeconds)",
                idle.as_secs()
            )
        })
    } else {
        let allowed = idle + Duration::from_secs(size / (1 << 20));
        (quiet >= allowed).then(|| {
            format!(
                "no answer from the registry {} s after the last byte (readTimeoutSeconds + 1 s per MiB)",
                allowed.as_secs()
            )
        })
    }
}

/// `stream`, ended by a `TimedOut` error when no chunk comes for `limit`.
fn idle_limited(stream: ByteStream, limit: Duration, what: String) -> ByteStream {
    Box::pin(futures_util::stream::unfold(Some(stream), move |state| {
        let what = what.clone();
        async move {
            let mut stream = state?;
            match tokio::time::timeout(limit, stream.next()).await {
                Ok(Some(item)) => Some((item, Some(stream))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "{what}: the registry sent nothing for {} s (readTimeoutSeconds)",
                            limit.as_secs()
                        ),
                    )),
                    None,
                )),
            }
        }
    }))
}

fn oci_descriptor(d: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size as i64,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_stalls_on_silence_with_room_for_the_buffered_tail() {
        let idle = Duration::from_secs(60);
        let s = Duration::from_secs;
        // Bytes remain: silence up to the limit is fine, at it a stall.
        assert_eq!(upload_stalled(s(59), 10, 100, idle), None);
        assert_eq!(
            upload_stalled(s(60), 10, 100, idle).as_deref(),
            Some("the registry took no byte for 60 s (readTimeoutSeconds)")
        );
        // All handed over: a 100 MiB blob may take 60 + 100 s to be answered.
        let size = 100 << 20;
        assert_eq!(upload_stalled(s(159), size, size, idle), None);
        assert_eq!(
            upload_stalled(s(160), size, size, idle).as_deref(),
            Some("no answer from the registry 160 s after the last byte (readTimeoutSeconds + 1 s per MiB)")
        );
    }
}
